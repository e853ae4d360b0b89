//! The flags resolved into the [`Settings`] in force ([`Flags::resolve`]), and
//! [`ResolveError`]: a setting that cannot be resolved (an `--ls-root` that does not exist) or
//! two flags that contradict each other. Every message names the flags involved and, for a
//! value that did not come from its flag, where it came from.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{Flags, Sources};
use crate::jobs::IsPrimeJob;
use crate::routes::MAX_REQUEST_ID_LEN;
use crate::settings::Settings;

/// A setting that cannot be resolved, or two that contradict each other; the message names
/// every flag involved, and for a value that did not come from its flag, the environment
/// variable or config file key it came from.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// `--ls-root` (or the working directory, its default) cannot be made canonical: it does
    /// not exist, or a component cannot be searched.
    #[error("--ls-root {path}{from}: {source}", path = path.display(), from = sources.from("ls-root"))]
    LsRoot {
        /// The root as given.
        path: PathBuf,
        /// Where its value came from, for the message.
        sources: Sources,
        /// Why it cannot be made canonical.
        source: std::io::Error,
    },
    /// `--max-line` is too short for the job line of a `--max-digits` number: such numbers
    /// would kill their worker (502), and if not even the hello fits, no worker starts.
    #[error(
        "--max-line {max_line} is too small for --max-digits {max_digits}: the job line of the \
         largest number takes up to {needed} bytes, so such numbers would kill their worker; \
         raise --max-line to at least {needed} or lower --max-digits"
    )]
    LineTooShort {
        /// `--max-line`, in bytes.
        max_line: u64,
        /// `--max-digits`.
        max_digits: u32,
        /// The longest job line under `--max-digits`.
        needed: u64,
    },
    /// `--shutdown-delay` is not shorter than `--shutdown-grace`: the grace would be over by the
    /// time the listener closes, cutting off every request in flight.
    #[error(
        "--shutdown-delay {delay:?} is not shorter than --shutdown-grace {grace:?}: the grace \
         counts from the signal and includes the delay, so requests still in flight when the \
         listener closes would get no time to finish; raise --shutdown-grace above the delay"
    )]
    DelayOutlastsGrace {
        /// `--shutdown-delay`.
        delay: Duration,
        /// `--shutdown-grace`.
        grace: Duration,
    },
    #[error(
        "--workers-min {min} is above --workers-max {max} (each defaults to --workers, else the \
         cores): the pool could never shrink to its minimum; lower --workers-min or raise \
         --workers-max"
    )]
    /// `--workers-min` is above `--workers-max` (each the value or its default): the pool
    /// could never shrink to its minimum.
    MinAboveMax {
        /// `--workers-min`, or its default.
        min: usize,
        /// `--workers-max`, or its default.
        max: usize,
    },
    /// `--admin-listen` is the `--listen` address (the value), port 0 aside: the second bind
    /// would fail.
    #[error("--admin-listen {0} is also the --listen address; give the admin listener its own")]
    SameAddress(SocketAddr),
    /// `--job-slow` is set but not below `--job-timeout`: a job is killed at its deadline, so it
    /// would never be logged as slow.
    #[error(
        "--job-slow {slow:?} must be below --job-timeout {timeout:?}: a job is killed at its \
         deadline, so it would never be logged as slow"
    )]
    JobSlow {
        /// `--job-slow`.
        slow: Duration,
        /// `--job-timeout`.
        timeout: Duration,
    },
}

impl Flags {
    /// The pool's bounds, (`--workers-min`, `--workers-max`): each `--workers` when not given,
    /// itself the cores when not given; a minimum above the maximum is refused.
    fn pool_size(&self) -> Result<(usize, usize), ResolveError> {
        let workers = self.workers.map(usize::from).unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        let min = self.workers_min.map_or(workers, usize::from);
        let max = self.workers_max.map_or(workers, usize::from);
        match min > max {
            true => Err(ResolveError::MinAboveMax { min, max }),
            false => Ok((min, max)),
        }
    }

    /// The settings in force: the worker count from the cores when not given, `--ls-root`
    /// (default: the working directory) made canonical, so that it must exist. Flags that
    /// contradict each other are refused (see `Flags::check_pairs`, below).
    pub fn resolve(self) -> Result<Settings, ResolveError> {
        self.check_pairs()?;
        let (workers_min, workers_max) = self.pool_size()?;
        let sources = &self.sources;
        let root = match self.ls_root {
            Some(root) => root,
            None => std::env::current_dir().map_err(|source| ResolveError::LsRoot {
                path: ".".into(),
                sources: sources.clone(),
                source,
            })?,
        };
        let ls_root = root.canonicalize().map_err(|source| ResolveError::LsRoot {
            path: root,
            sources: sources.clone(),
            source,
        })?;
        Ok(Settings {
            listen: self.listen,
            workers: workers_max,
            workers_min,
            worker_idle_timeout: self.worker_idle_timeout,
            worker_release_after: self.worker_release_after,
            queue: self.queue,
            job_timeout: self.job_timeout,
            job_slow: self.job_slow,
            max_line: self.max_line,
            max_digits: self.max_digits,
            max_jobs_per_worker: self.max_jobs_per_worker,
            max_rss_per_worker: self.max_rss_per_worker,
            max_batch: self.max_batch as usize,
            worker_memory: self.worker_memory,
            worker_nice: self.worker_nice,
            worker_sched: self.worker_sched,
            worker_program: self.worker_program,
            worker_start_failures: self.worker_start_failures,
            ls_root,
            ls_timeout: self.ls_timeout,
            ls_idle_timeout: self.ls_idle_timeout,
            ls_max_concurrent: self.ls_max_concurrent,
            shutdown_grace: self.shutdown_grace,
            shutdown_delay: self.shutdown_delay,
            upgrade_timeout: self.upgrade_timeout,
            pid_file: self.pid_file,
            header_timeout: self.header_timeout,
            keepalive_timeout: self.keepalive_timeout,
            body_timeout: self.body_timeout,
            send_timeout: self.send_timeout,
            max_connections: self.max_connections,
            admin_listen: self.admin_listen,
            log_format: self.log_format,
            config_file: self.config_file,
        })
    }
}

impl Flags {
    /// Refuses the flags that contradict each other, each of which would otherwise give a
    /// server that starts but cannot do what it was told:
    /// - `--max-line` below the job line of a `--max-digits` number: the worker refuses the
    ///   line and dies, so such numbers get 502, and `/readyz` stays 503 if even the hello
    ///   does not fit.
    /// - `--shutdown-delay` not shorter than `--shutdown-grace` (when there is a delay): the
    ///   grace is over when the listener closes, so every request in flight is cut off.
    /// - `--admin-listen` on the `--listen` address: the second bind fails.
    fn check_pairs(&self) -> Result<(), ResolveError> {
        let needed = IsPrimeJob::max_line_bytes(self.max_digits, MAX_REQUEST_ID_LEN);
        if self.max_line < needed {
            return Err(ResolveError::LineTooShort {
                max_line: self.max_line,
                max_digits: self.max_digits,
                needed,
            });
        }
        let (delay, grace) = (self.shutdown_delay, self.shutdown_grace);
        if !delay.is_zero() && delay >= grace {
            return Err(ResolveError::DelayOutlastsGrace { delay, grace });
        }
        let (slow, timeout) = (self.job_slow, self.job_timeout);
        if !slow.is_zero() && slow >= timeout {
            return Err(ResolveError::JobSlow { slow, timeout });
        }
        match self.admin_listen {
            Some(admin) if admin == self.listen && admin.port() != 0 => {
                Err(ResolveError::SameAddress(admin))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Cli;

    /// The error `forkpool ARGS` resolves to, as the message printed at start.
    fn resolve_error(args: &[&str]) -> String {
        let cli = Cli::try_parse_from([&["forkpool"], args].concat()).unwrap();
        cli.flags.resolve().expect_err("refused").to_string()
    }

    #[test]
    fn flags_that_contradict_each_other_are_refused_naming_both() {
        let needed = IsPrimeJob::max_line_bytes(250, MAX_REQUEST_ID_LEN);
        let short = (needed - 1).to_string();
        let e = resolve_error(&["--max-line", &short, "--max-digits", "250"]);
        assert!(
            e.contains("--max-line") && e.contains("--max-digits") && e.contains(&needed.to_string()),
            "{e}"
        );
        let e = resolve_error(&["--max-digits", "2000000"]);
        assert!(e.contains("--max-line 1048576"), "the default is too short: {e}");
        let e = resolve_error(&["--shutdown-delay", "10s", "--shutdown-grace", "10s"]);
        assert!(e.contains("--shutdown-delay") && e.contains("--shutdown-grace"), "{e}");
        let e = resolve_error(&["--listen", "127.0.0.1:3636", "--admin-listen", "127.0.0.1:3636"]);
        assert!(e.contains("--admin-listen") && e.contains("--listen"), "{e}");
        // At the limits, and where the flags do not meet, they are accepted.
        let fits = needed.to_string();
        for args in [
            &["--max-line", &fits, "--max-digits", "250"][..],
            &["--shutdown-delay", "0s", "--shutdown-grace", "0s"],
            &["--shutdown-delay", "9s", "--shutdown-grace", "10s"],
            &["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        ] {
            let cli = Cli::try_parse_from([&["forkpool"], args].concat()).unwrap();
            assert!(cli.flags.resolve().is_ok(), "{args:?}");
        }
    }
}
