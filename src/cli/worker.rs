//! `forkpool worker ...`: the flags the server passes to each worker it starts
//! ([`WorkerArgs`]), spelled and parsed side by side so that they cannot drift apart. Parsed by
//! hand, not by clap (see [`WorkerArgs`] for why); a bad flag is a [`WorkerArgsError`], which
//! only a worker started by hand can see.

use std::ffi::OsString;

use clap::ValueEnum;

use crate::logging::LogFormat;
use crate::pool::worker::WorkerSettings;
use crate::settings::{Settings, WorkerSched};

/// `forkpool worker ...`: the flags the server passes to a worker it starts. Built by
/// [`WorkerArgs::for_server`], spelled by [`WorkerArgs::to_args`] and parsed back by
/// [`WorkerArgs::parse`], side by side so that the two cannot drift apart (a test round-trips
/// them).
///
/// Parsed by hand, not by clap: every worker the server starts (one per slot, again after each
/// crash or recycle) would otherwise build the grammar of the whole command line (every serve
/// flag, its env var, the subcommands) and run clap's parser over it, and the code and heap
/// that touches stay resident in the worker for its whole life (issue 11: idle RSS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerArgs {
    /// Which job type to serve (`Job::KIND`); `--kind`, required.
    pub kind: String,
    /// The server's pid; the worker exits at once if its parent is someone else.
    /// `--parent-pid`, required.
    pub parent_pid: i32,
    /// Address-space limit in bytes; 0 means none. `--memory`, default 0.
    pub memory: u64,
    /// Nice value to run at. `--nice`, default 0.
    pub nice: i32,
    /// Scheduling class to run in. `--sched`, default `other`.
    pub sched: WorkerSched,
    /// Largest job line accepted, in bytes. `--max-line`, default 1 MiB.
    pub max_line: u64,
    /// Log format on stderr (the server's own). `--log-format`, default `text`.
    pub log_format: LogFormat,
}

/// Why the flags of `forkpool worker` do not parse. Only a worker started by hand can see one:
/// the server spells the flags with [`WorkerArgs::to_args`].
#[derive(Debug, thiserror::Error)]
pub enum WorkerArgsError {
    /// A flag (the value) that `forkpool worker` does not take.
    #[error("forkpool worker: unknown flag `{0}`")]
    Unknown(String),
    /// A flag (the value) last on the line, without its value.
    #[error("forkpool worker: {0} needs a value")]
    NoValue(String),
    /// A flag's value that does not parse as its type.
    #[error("forkpool worker: {flag} {value:?}: {reason}")]
    BadValue {
        /// The flag, e.g. `--nice`.
        flag: String,
        /// Its value as given.
        value: String,
        /// The parser's message.
        reason: String,
    },
    /// A required flag (the value: `--kind` or `--parent-pid`) is not given.
    #[error("forkpool worker: {0} is required")]
    Missing(&'static str),
    /// An argument (the value) is not UTF-8; no flag or value of a worker can be.
    #[error("forkpool worker: argument {0:?} is not UTF-8")]
    NotUtf8(OsString),
}

impl WorkerArgs {
    /// The flags of a worker for job type `kind`, started by this process under `settings`.
    pub fn for_server(settings: &Settings, kind: &str) -> WorkerArgs {
        WorkerArgs {
            kind: kind.to_owned(),
            parent_pid: std::process::id() as i32,
            memory: settings.worker_memory,
            nice: settings.worker_nice,
            sched: settings.worker_sched,
            max_line: settings.max_line,
            log_format: settings.log_format,
        }
    }

    /// The command line after the program: `worker --kind ... --parent-pid ...`.
    pub fn to_args(&self) -> Vec<String> {
        /// The command-line spelling of a clap value enum.
        fn flag(value: impl ValueEnum) -> String {
            let value = value.to_possible_value().expect("no variant is skipped");
            value.get_name().to_owned()
        }
        [
            "worker",
            "--kind",
            &self.kind,
            "--parent-pid",
            &self.parent_pid.to_string(),
            "--memory",
            &self.memory.to_string(),
            "--nice",
            &self.nice.to_string(),
            "--sched",
            &flag(self.sched),
            "--max-line",
            &self.max_line.to_string(),
            "--log-format",
            &flag(self.log_format),
        ]
        .map(String::from)
        .to_vec()
    }

    /// Parses the flags after `worker` (`--flag value` pairs, as [`WorkerArgs::to_args`] spells
    /// them, in any order). `--kind` and `--parent-pid` are required; the others default to
    /// [`WorkerSettings::new`]'s values, the `other` class and text logs, so that a worker
    /// started by hand needs only the two.
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<WorkerArgs, WorkerArgsError> {
        let defaults = WorkerSettings::new(0);
        let (mut kind, mut parent_pid) = (None, None);
        let mut parsed = WorkerArgs {
            kind: String::new(),
            parent_pid: defaults.parent_pid,
            memory: defaults.memory,
            nice: defaults.nice,
            sched: WorkerSched::Other,
            max_line: defaults.max_line,
            log_format: LogFormat::Text,
        };
        let mut args = args
            .into_iter()
            .map(|a| a.into_string().map_err(WorkerArgsError::NotUtf8));
        while let Some(flag) = args.next().transpose()? {
            let Some(value) = args.next().transpose()? else {
                return Err(WorkerArgsError::NoValue(flag));
            };
            match flag.as_str() {
                "--kind" => kind = Some(value),
                "--parent-pid" => parent_pid = Some(worker_value(&flag, &value, str::parse)?),
                "--memory" => parsed.memory = worker_value(&flag, &value, str::parse)?,
                "--nice" => parsed.nice = worker_value(&flag, &value, str::parse)?,
                "--sched" => parsed.sched = worker_value(&flag, &value, choice)?,
                "--max-line" => parsed.max_line = worker_value(&flag, &value, str::parse)?,
                "--log-format" => parsed.log_format = worker_value(&flag, &value, choice)?,
                _ => return Err(WorkerArgsError::Unknown(flag)),
            }
        }
        parsed.kind = kind.ok_or(WorkerArgsError::Missing("--kind"))?;
        parsed.parent_pid = parent_pid.ok_or(WorkerArgsError::Missing("--parent-pid"))?;
        Ok(parsed)
    }

    /// What the pool's worker side needs of these flags.
    pub fn settings(&self) -> WorkerSettings {
        WorkerSettings {
            parent_pid: self.parent_pid,
            memory: self.memory,
            nice: self.nice,
            sched: self.sched.into(),
            max_line: self.max_line,
        }
    }
}

/// One worker flag's value through `parse`, or an error naming the flag and the value.
fn worker_value<T, E: std::fmt::Display>(
    flag: &str,
    value: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, WorkerArgsError> {
    parse(value).map_err(|reason| WorkerArgsError::BadValue {
        flag: flag.to_owned(),
        value: value.to_owned(),
        reason: reason.to_string(),
    })
}

/// A value-enum flag's value, spelled as [`WorkerArgs::to_args`] spells it.
fn choice<T: ValueEnum>(value: &str) -> Result<T, String> {
    T::from_str(value, false)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Cli;

    #[test]
    fn worker_flags_parse_back_to_what_the_server_passed() {
        let cli =
            Cli::try_parse_from(["forkpool", "--worker-sched", "other", "--worker-nice", "3"])
                .unwrap();
        let args = WorkerArgs::for_server(&cli.flags.resolve().unwrap(), "isprime");
        let line = args.to_args();
        assert_eq!(line[0], "worker");
        let parsed = WorkerArgs::parse(line[1..].iter().map(OsString::from)).unwrap();
        assert_eq!(parsed, args);
        assert_eq!((parsed.nice, parsed.sched), (3, WorkerSched::Other));
    }

    fn parse_worker(args: &[&str]) -> Result<WorkerArgs, String> {
        WorkerArgs::parse(args.iter().map(OsString::from)).map_err(|e| e.to_string())
    }

    #[test]
    fn a_hand_started_worker_needs_only_its_kind_and_parent() {
        let parsed = parse_worker(&["--parent-pid", "7", "--kind", "isprime"]).unwrap();
        let defaults = WorkerSettings::new(7);
        assert_eq!((parsed.kind.as_str(), parsed.parent_pid), ("isprime", 7));
        assert_eq!(
            (parsed.memory, parsed.nice, parsed.max_line),
            (defaults.memory, defaults.nice, defaults.max_line)
        );
        assert_eq!(
            (parsed.sched, parsed.log_format),
            (WorkerSched::Other, LogFormat::Text)
        );
    }

    #[test]
    fn bad_worker_flags_are_refused_with_the_flag_named() {
        let e = parse_worker(&["--kind", "isprime"]).unwrap_err();
        assert!(e.contains("--parent-pid is required"), "{e}");
        let e = parse_worker(&["--parent-pid", "1"]).unwrap_err();
        assert!(e.contains("--kind is required"), "{e}");
        let e = parse_worker(&["--kind", "isprime", "--parent-pid", "x"]).unwrap_err();
        assert!(e.contains("--parent-pid \"x\""), "{e}");
        let e = parse_worker(&["--kind", "isprime", "--parent-pid", "1", "--sched", "fast"]);
        assert!(e.unwrap_err().contains("--sched \"fast\""));
        let e = parse_worker(&["--kind", "isprime", "--parent-pid", "1", "--color", "no"]);
        assert!(e.unwrap_err().contains("unknown flag `--color`"));
        let e = parse_worker(&["--kind", "isprime", "--parent-pid"]).unwrap_err();
        assert!(e.contains("--parent-pid needs a value"), "{e}");
    }
}
