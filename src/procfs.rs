//! The server's own process figures, read from `/proc/self` at the moment of a scrape: the
//! inputs of the standard Prometheus `process_*` metrics (CPU time, memory, file descriptors,
//! start time). A leaf module: it imports nothing from the crate.
//!
//! Guarantees: every figure is read fresh on each call, nothing is cached, and nothing here
//! blocks on anything but procfs reads (which do not touch a disk).
//!
//! Failure modes: Linux only. A `/proc` that is not mounted, or a file whose format is not the
//! documented one, is a [`ProcfsError`] naming the file; the caller decides whether to leave the
//! figures out. The worker pool reads its workers' RSS on its own (`pool::status`), because the
//! pool is kept free of imports from the rest of the crate.

use std::path::PathBuf;

use crate::pool::StatFields;

/// Why the process figures could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProcfsError {
    /// A `/proc/self` file cannot be read (procfs not mounted, or hidden by `hidepid`).
    #[error("cannot read {path}: {source}")]
    Read {
        /// The procfs file or directory.
        path: PathBuf,
        /// What the read failed with.
        source: std::io::Error,
    },
    /// A `/proc/self` file lacks a field, or has it in a form not understood (another kernel's
    /// format).
    #[error("{path} has no readable {field}")]
    Format {
        /// The procfs file.
        path: PathBuf,
        /// The field that is missing or not a number.
        field: &'static str,
    },
}

/// One reading of this process's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time since the process started, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub resident_memory_bytes: u64,
    /// Size of the virtual address space, in bytes.
    pub virtual_memory_bytes: u64,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
    /// Open file descriptors, counted in `/proc/self/fd` (the descriptor used to list that
    /// directory included, as other Prometheus clients count).
    pub open_fds: u64,
    /// The soft `RLIMIT_NOFILE`; `None` when unlimited.
    pub max_fds: Option<u64>,
}

impl ProcessStats {
    /// Reads `/proc/self/stat`, `/proc/stat` (boot time), `/proc/self/fd` and the fd limit.
    pub fn read() -> Result<ProcessStats, ProcfsError> {
        let stat = SelfStat::read()?;
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        Ok(ProcessStats {
            cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
            resident_memory_bytes: stat.rss_pages * rustix::param::page_size() as u64,
            virtual_memory_bytes: stat.vsize,
            start_time_seconds: boot_time()? as f64 + stat.starttime as f64 / ticks,
            open_fds: open_fds()?,
            max_fds: limit.current,
        })
    }
}

/// The fields of `/proc/self/stat` that the metrics need, in the kernel's units.
#[derive(Debug, PartialEq)]
struct SelfStat {
    /// User CPU time, in clock ticks.
    utime: u64,
    /// System CPU time, in clock ticks.
    stime: u64,
    /// Start time after boot, in clock ticks.
    starttime: u64,
    /// Virtual memory size, in bytes.
    vsize: u64,
    /// Resident set size, in pages.
    rss_pages: u64,
}

const SELF_STAT: &str = "/proc/self/stat";

impl SelfStat {
    fn read() -> Result<SelfStat, ProcfsError> {
        Self::parse(&read(SELF_STAT)?)
    }

    /// Fields as proc(5) numbers them, counted after the command name (see [`StatFields`]).
    fn parse(text: &str) -> Result<SelfStat, ProcfsError> {
        let fields = StatFields::new(text);
        let field = |number: usize, name: &'static str| -> Result<u64, ProcfsError> {
            fields
                .number(number)
                .ok_or_else(|| format_error(SELF_STAT, name))
        };
        Ok(SelfStat {
            utime: field(14, "utime")?,
            stime: field(15, "stime")?,
            starttime: field(22, "starttime")?,
            vsize: field(23, "vsize")?,
            rss_pages: field(24, "rss")?,
        })
    }
}

/// Boot time in seconds since the epoch: the `btime` line of `/proc/stat`.
fn boot_time() -> Result<u64, ProcfsError> {
    const PROC_STAT: &str = "/proc/stat";
    read(PROC_STAT)?
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| format_error(PROC_STAT, "btime"))
}

/// Descriptors this process has open now.
pub fn open_fds() -> Result<u64, ProcfsError> {
    const FD_DIR: &str = "/proc/self/fd";
    let entries = std::fs::read_dir(FD_DIR).map_err(|source| ProcfsError::Read {
        path: FD_DIR.into(),
        source,
    })?;
    Ok(entries.count() as u64)
}

fn read(path: &str) -> Result<String, ProcfsError> {
    std::fs::read_to_string(path).map_err(|source| ProcfsError::Read {
        path: path.into(),
        source,
    })
}

fn format_error(path: &str, field: &'static str) -> ProcfsError {
    ProcfsError::Format {
        path: path.into(),
        field,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_a_command_name_with_spaces_and_parentheses() {
        // A real line's shape (proc(5)), with a hostile command name.
        let line = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 75 0 0 20 0 3 0 12345 987654321 2048 18446744073709551615 1 1 0 0 0";
        let stat = SelfStat::parse(line).unwrap();
        assert_eq!(
            stat,
            SelfStat {
                utime: 250,
                stime: 75,
                starttime: 12345,
                vsize: 987654321,
                rss_pages: 2048,
            }
        );
    }

    #[test]
    fn a_truncated_stat_line_names_the_missing_field() {
        let error = SelfStat::parse("4242 (x) S 1 2 3").unwrap_err();
        assert_eq!(error.to_string(), "/proc/self/stat has no readable utime");
    }

    #[test]
    fn this_process_reads_as_alive_with_memory_fds_and_a_past_start() {
        let stats = ProcessStats::read().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(stats.resident_memory_bytes > 0, "{stats:?}");
        assert!(stats.virtual_memory_bytes >= stats.resident_memory_bytes);
        // At least the descriptor that lists /proc/self/fd (stdio may be closed under CI).
        assert!(stats.open_fds >= 1, "{stats:?}");
        assert!(stats.start_time_seconds <= now + 1.0, "{stats:?}");
        assert!(
            stats.start_time_seconds > now - 86_400.0 * 365.0,
            "{stats:?}"
        );
        assert!(stats.cpu_seconds >= 0.0);
    }
}
