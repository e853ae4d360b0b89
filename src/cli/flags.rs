//! The serve flags as clap declares them ([`Flags`]): each with its env var `FORKPOOL_<NAME>`,
//! its default and its value parser, which the config file's keys go through too. Nothing here
//! resolves or checks one flag against another: that is `resolve`'s job.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::Sources;
use crate::logging::LogFormat;
use crate::settings::WorkerSched;
use crate::units::{parse_duration, parse_positive_duration, parse_size};

/// The serve flags as given; [`Flags::resolve`] turns them into the
/// [`Settings`](crate::settings::Settings) in force.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct Flags {
    /// Address to listen on; port 0 picks a free port (printed as `listening on http://...` once
    /// a worker is up and the server ready).
    #[arg(long, env = "FORKPOOL_LISTEN", default_value = "127.0.0.1:3636")]
    pub listen: SocketAddr,

    /// Number of worker processes [default: available cores].
    #[arg(long, env = "FORKPOOL_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,

    /// The fewest worker processes, kept even when idle [default: --workers]; 0 starts none
    /// until the first job, which then waits for one to start. Below --workers-max the pool
    /// is elastic.
    #[arg(long, env = "FORKPOOL_WORKERS_MIN", value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub workers_min: Option<u16>,

    /// The most worker processes [default: --workers]. Above --workers-min the pool starts
    /// one more when every worker is busy and jobs wait, never past the CPUs this process may
    /// use (its affinity mask and cgroup CPU quota).
    #[arg(long, env = "FORKPOOL_WORKERS_MAX", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers_max: Option<u16>,

    /// A worker idle this long retires while the pool is above --workers-min; more than zero.
    #[arg(long, env = "FORKPOOL_WORKER_IDLE_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub worker_idle_timeout: Duration,

    /// A worker that has run jobs and then sat idle this long is told to let go of the code
    /// pages those jobs mapped (its next jobs map them again); 0 means never.
    #[arg(long, env = "FORKPOOL_WORKER_RELEASE_AFTER", default_value = "1s", value_parser = parse_duration)]
    pub worker_release_after: Duration,

    /// Jobs that may wait for a worker; beyond that a request gets 503 with Retry-After.
    #[arg(long, env = "FORKPOOL_QUEUE", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue: u32,

    /// Deadline of one job, queue wait plus run time (e.g. `60s`, `500ms`, `1m30s`); more than
    /// zero.
    #[arg(long, env = "FORKPOOL_JOB_TIMEOUT", default_value = "60s", value_parser = parse_positive_duration)]
    pub job_timeout: Duration,

    /// Log a job still running this long after it started on its worker (once, at warn, with
    /// what the worker is doing) and count it; it runs on to its deadline. Below
    /// `--job-timeout`; 0 means off.
    #[arg(long, env = "FORKPOOL_JOB_SLOW", default_value = "0s", value_parser = parse_duration)]
    pub job_slow: Duration,

    /// Largest protocol line (job or reply), e.g. `1MiB` (1,048,576 bytes) or `1MB`
    /// (1,000,000); a worker that sends more is replaced.
    #[arg(long, env = "FORKPOOL_MAX_LINE", default_value = "1MiB", value_parser = parse_size)]
    pub max_line: u64,

    /// Largest number /isprime accepts, in decimal digits (leading zeros not counted).
    #[arg(long, env = "FORKPOOL_MAX_DIGITS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_digits: u32,

    /// Retire a worker after about this many jobs (±10% jitter); 0 means never.
    #[arg(long, env = "FORKPOOL_MAX_JOBS_PER_WORKER", default_value_t = 0)]
    pub max_jobs_per_worker: u64,

    /// Retire a worker whose resident memory is above this after a job (e.g. `512MiB`), once
    /// its replacement is up; 0 means never.
    #[arg(long, env = "FORKPOOL_MAX_RSS_PER_WORKER", default_value = "0", value_parser = parse_size)]
    pub max_rss_per_worker: u64,

    /// Most light jobs (numbers below 2^64) sent to one worker at once; 1 sends each alone.
    #[arg(long, env = "FORKPOOL_MAX_BATCH", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_batch: u32,

    /// Address-space limit of each worker (RLIMIT_AS), e.g. `1GiB` (2^30 bytes) or `2GB`
    /// (2*10^9); 0 means no limit.
    #[arg(long, env = "FORKPOOL_WORKER_MEMORY", default_value = "1GiB", value_parser = parse_size)]
    pub worker_memory: u64,

    /// Nice value of the workers. It sets their CPU share under `--worker-sched other`; under
    /// `idle` the class alone decides, and the value only shows in `ps` and `top`.
    #[arg(long, env = "FORKPOOL_WORKER_NICE", default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub worker_nice: i32,

    /// Scheduling class of the workers: `idle` (SCHED_IDLE: they run only on CPU time nothing
    /// else wants, and yield it at once) or `other` (the normal class, at `--worker-nice`; use
    /// it on a machine shared with other busy programs, where idle workers could starve).
    #[arg(long, env = "FORKPOOL_WORKER_SCHED", value_enum, default_value_t = WorkerSched::Idle)]
    pub worker_sched: WorkerSched,

    /// Program started as a worker [default: this executable].
    #[arg(long, env = "FORKPOOL_WORKER_PROGRAM")]
    pub worker_program: Option<PathBuf>,

    /// After this many failed worker starts in a row with no worker alive (a deleted or broken
    /// program, no memory left), `/readyz` answers 503 with the reason and jobs are refused at
    /// once (503) instead of waiting for their deadline; starts go on with backoff, and the
    /// first that succeeds clears it.
    #[arg(long, env = "FORKPOOL_WORKER_START_FAILURES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub worker_start_failures: u32,

    /// Directory that /ls is confined to [default: the working directory at start-up].
    #[arg(long, env = "FORKPOOL_LS_ROOT")]
    pub ls_root: Option<PathBuf>,

    /// Time limit of one whole /ls listing; more than zero.
    #[arg(long, env = "FORKPOOL_LS_TIMEOUT", default_value = "60s", value_parser = parse_positive_duration)]
    pub ls_timeout: Duration,

    /// Kill an `ls` that has written nothing for this long (from its start, then between two
    /// outputs), under the whole `--ls-timeout`; a listing that keeps writing is never cut by
    /// it. 0 means off.
    #[arg(long, env = "FORKPOOL_LS_IDLE_TIMEOUT", default_value = "0s", value_parser = parse_duration)]
    pub ls_idle_timeout: Duration,

    /// Most `ls` processes running at once; beyond that a request gets 503 with Retry-After.
    #[arg(long, env = "FORKPOOL_LS_MAX_CONCURRENT", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub ls_max_concurrent: u32,

    /// On SIGINT/SIGTERM, time for in-flight requests and jobs to finish before workers are killed.
    #[arg(long, env = "FORKPOOL_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// On SIGINT/SIGTERM, keep serving (jobs included) for this long with /readyz at 503 and
    /// `Connection: close` on every response, so that a load balancer sees the drain and stops
    /// reusing connections before the listener closes.
    #[arg(long, env = "FORKPOOL_SHUTDOWN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,

    /// On SIGUSR2 (in-place upgrade), how long the new server may take to be ready (a worker of
    /// its own said hello) before it is killed and this one keeps serving.
    #[arg(long, env = "FORKPOOL_UPGRADE_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub upgrade_timeout: Duration,

    /// Write the pid of the server that is serving to this file once it is ready; after a
    /// SIGUSR2 upgrade, the new server rewrites it. Removed at exit by the server it names.
    #[arg(long, env = "FORKPOOL_PID_FILE")]
    pub pid_file: Option<PathBuf>,

    /// Close a connection that has not sent a complete request head within this time, counted
    /// from the accept or, on a kept-alive connection, from the first byte of the next request.
    #[arg(long, env = "FORKPOOL_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub header_timeout: Duration,

    /// Close a kept-alive connection idle for this long between requests; 0 turns keep-alive off.
    #[arg(long, env = "FORKPOOL_KEEPALIVE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,

    /// Answer 408 and close the connection when a request body has not arrived in full within
    /// this time of the handler starting to read it.
    #[arg(long, env = "FORKPOOL_BODY_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub body_timeout: Duration,

    /// Close a connection whose response write has made no progress for this long: the client
    /// stopped reading (nginx's `send_timeout`).
    #[arg(long, env = "FORKPOOL_SEND_TIMEOUT", default_value = "60s", value_parser = parse_positive_duration)]
    pub send_timeout: Duration,

    /// Most client connections held at once on `--listen` [default: 1024, less if
    /// RLIMIT_NOFILE leaves less room]. At the cap the oldest idle kept-alive connection is
    /// closed to admit a new one; with none idle, new connections wait in the listen backlog.
    #[arg(long, env = "FORKPOOL_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,

    /// Serve `/metrics` and `/status` only on this address (the public port answers them 404);
    /// `/healthz` and `/readyz` answer on both. Set it when `--listen` faces untrusted clients.
    #[arg(long, env = "FORKPOOL_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// Log format on stderr.
    #[arg(long, env = "FORKPOOL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// TOML file with any of these flags as keys (e.g. `workers = 4`, `job-timeout = "30s"`).
    #[arg(long = "config", value_name = "CONFIG", env = "FORKPOOL_CONFIG")]
    pub config_file: Option<PathBuf>,

    /// Where the values that did not come from a flag came from (an environment variable, a
    /// key of the `--config` file), so that a message about a value names its source. Not a
    /// flag; filled by [`Cli::load_from`](super::Cli::load_from).
    #[arg(skip)]
    pub sources: Sources,
}
