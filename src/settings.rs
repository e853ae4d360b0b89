//! The server's settings as they are in force: every flag resolved at start-up (the worker
//! count from the cores, `--ls-root` made canonical), so that the server reads one value per
//! setting and `/status` serialises this type as it is.
//!
//! Built by [`crate::cli`] from the command line, the environment and the config file; nothing
//! here parses or fails. Shown by `/status`, so nothing secret belongs here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;

use crate::logging::LogFormat;
use crate::pool::worker::SchedClass;

/// Scheduling class of the workers (`--worker-sched`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerSched {
    /// The normal class, at `--worker-nice`.
    Other,
    /// SCHED_IDLE: CPU time that nothing else wants.
    Idle,
}

impl From<WorkerSched> for SchedClass {
    fn from(sched: WorkerSched) -> SchedClass {
        match sched {
            WorkerSched::Other => SchedClass::Other,
            WorkerSched::Idle => SchedClass::Idle,
        }
    }
}

/// Every setting of a running server; the flag of each is named in [`crate::cli::Flags`].
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Address asked for (port 0 included; the bound address is printed at start-up).
    pub listen: SocketAddr,
    /// The most worker processes: `--workers-max`, else `--workers`, else one per available
    /// core (an elastic pool is further capped by the CPUs it may use: see `/status`).
    pub workers: usize,
    /// The fewest worker processes, kept even when idle: `--workers-min`, else as `workers`
    /// (a fixed pool). Below `workers` the pool grows and shrinks between the two.
    pub workers_min: usize,
    /// A worker of an elastic pool idle this long retires, down to `workers_min`.
    #[serde(serialize_with = "as_secs")]
    pub worker_idle_timeout: Duration,
    /// A worker idle this long after jobs lets go of the code pages they mapped; 0 means never.
    #[serde(serialize_with = "as_secs")]
    pub worker_release_after: Duration,
    /// Jobs that may wait for a worker.
    pub queue: u32,
    /// Deadline of one job, queue wait plus run time.
    #[serde(serialize_with = "as_secs")]
    pub job_timeout: Duration,
    /// A job still running this long after it started is logged and counted; 0 means off.
    #[serde(serialize_with = "as_secs")]
    pub job_slow: Duration,
    /// Largest protocol line in bytes.
    pub max_line: u64,
    /// Largest number /isprime accepts, in significant decimal digits.
    pub max_digits: u32,
    /// Retire a worker after about this many jobs; 0 means never.
    pub max_jobs_per_worker: u64,
    /// Retire a worker whose resident memory is above this many bytes after a job; 0 means
    /// never.
    pub max_rss_per_worker: u64,
    /// Most light jobs sent to one worker at once.
    pub max_batch: usize,
    /// Address-space limit of each worker in bytes; 0 means none.
    pub worker_memory: u64,
    /// Nice value of the workers.
    pub worker_nice: i32,
    /// Scheduling class of the workers.
    pub worker_sched: WorkerSched,
    /// Program started as a worker; `None` means this executable.
    pub worker_program: Option<PathBuf>,
    /// Failed worker starts in a row, with no worker alive, after which jobs are refused (503)
    /// and `/readyz` answers 503 until a start succeeds.
    pub worker_start_failures: u32,
    /// Canonical directory that /ls is confined to.
    pub ls_root: PathBuf,
    /// Time limit of one whole /ls listing.
    #[serde(serialize_with = "as_secs")]
    pub ls_timeout: Duration,
    /// An `ls` that writes nothing for this long is killed; 0 means off.
    #[serde(serialize_with = "as_secs")]
    pub ls_idle_timeout: Duration,
    /// Most `ls` processes running at once.
    pub ls_max_concurrent: u32,
    /// On SIGINT/SIGTERM, time for in-flight work to finish before workers are killed.
    #[serde(serialize_with = "as_secs")]
    pub shutdown_grace: Duration,
    /// On SIGINT/SIGTERM, time spent draining (readiness off) before the listener closes.
    #[serde(serialize_with = "as_secs")]
    pub shutdown_delay: Duration,
    /// On SIGUSR2, longest wait for the new server to be ready.
    #[serde(serialize_with = "as_secs")]
    pub upgrade_timeout: Duration,
    /// File holding the pid of the server that is serving, if any.
    pub pid_file: Option<PathBuf>,
    /// Longest wait for a complete request head.
    #[serde(serialize_with = "as_secs")]
    pub header_timeout: Duration,
    /// Longest idle time of a kept-alive connection; 0 means no keep-alive.
    #[serde(serialize_with = "as_secs")]
    pub keepalive_timeout: Duration,
    /// Longest wait for a whole request body once the handler reads it.
    #[serde(serialize_with = "as_secs")]
    pub body_timeout: Duration,
    /// Longest a response write may make no progress before the connection is closed.
    #[serde(serialize_with = "as_secs")]
    pub send_timeout: Duration,
    /// Most client connections at once on `listen`: the flag, replaced by the cap in force
    /// (sized from RLIMIT_NOFILE) once the server runs.
    pub max_connections: Option<u32>,
    /// Address that alone serves `/metrics` and `/status`, if any.
    pub admin_listen: Option<SocketAddr>,
    /// Log format on stderr.
    pub log_format: LogFormat,
    /// The config file (`--config`, TOML) the settings were merged from, if any. Shown by
    /// `/status` as `config`, the flag's name.
    #[serde(rename = "config")]
    pub config_file: Option<PathBuf>,
}

impl Settings {
    /// Largest request body accepted: room for a number of `--max-digits` digits, its JSON
    /// syntax and generous whitespace. A body is only ever a number, so anything larger is
    /// refused (413) before it is read, instead of being buffered.
    pub fn max_body_bytes(&self) -> usize {
        self.max_digits as usize + 16 * 1024
    }
}

/// Durations are shown as seconds (a float), as the flags accept them.
fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}
