//! The state every handler shares: the settings in force, the worker pool, what /ls runs on,
//! the metrics recorder and the shutdown flags. Built once by the server at start-up; routes
//! only read it (the pool, semaphore and channels inside it do their own locking).

use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::{watch, Semaphore};

use super::ls;
use crate::cli::WorkerArgs;
use crate::jobs::IsPrimeJob;
use crate::pool::{Job, PoolConfig, WorkerPool};
use crate::settings::Settings;

/// Shared by every handler. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<State>);

/// What an [`AppState`] points to.
pub struct State {
    /// The settings in force, as `/status` shows them.
    pub config: Settings,
    /// The workers that run `/isprime` jobs.
    pub pool: WorkerPool<IsPrimeJob>,
    /// What /ls runs on: the root held open as an fd, and `ls` found once.
    pub ls: ls::Ls,
    /// One permit per `ls` process allowed to run.
    pub ls_slots: Arc<Semaphore>,
    /// Renders `/metrics`; the recorder behind it is process-wide.
    pub metrics: PrometheusHandle,
    /// Start of the server, for `/status`'s uptime.
    pub started: Instant,
    /// Set once on SIGINT/SIGTERM: `/readyz` says 503 from then on.
    shutting_down: AtomicBool,
    /// Turns true when `--shutdown-grace` ends: requests still waiting are answered 503.
    pub(crate) grace_over: watch::Sender<bool>,
}

impl Deref for AppState {
    type Target = State;
    fn deref(&self) -> &State {
        &self.0
    }
}

/// Why the shared state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Ls(#[from] ls::SetupError),
    #[error("cannot find this executable to start workers from (set --worker-program): {0}")]
    WorkerProgram(std::io::Error),
    #[error("--worker-program {path}: cannot run it: {source}")]
    WorkerNotExecutable {
        /// The program given.
        path: PathBuf,
        source: io::Error,
    },
}

impl AppState {
    /// Opens the /ls root, finds the worker program and starts the worker pool. Must run
    /// inside the Tokio runtime.
    pub fn new(config: Settings) -> Result<AppState, StateError> {
        let ls = ls::Ls::open(&config.ls_root)?;
        let program = match &config.worker_program {
            Some(program) => executable(program)?,
            None => std::env::current_exe().map_err(StateError::WorkerProgram)?,
        };
        // Before the pool: it registers metric handles, which need the recorder in place.
        let metrics = metrics_handle();
        let pool = WorkerPool::start(pool_config(&config), {
            let args = WorkerArgs::for_server(&config, IsPrimeJob::KIND).to_args();
            move || {
                let mut command = std::process::Command::new(&program);
                command.args(&args);
                command
            }
        });
        Ok(AppState(Arc::new(State {
            ls_slots: Arc::new(Semaphore::new(config.ls_max_concurrent as usize)),
            config,
            pool,
            ls,
            metrics,
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
            grace_over: watch::Sender::new(false),
        })))
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// Readiness off and `Connection: close` from now on. Jobs are still taken: whoever sends
    /// here during `--shutdown-delay` (a balancer that has not noticed) or has a request in
    /// flight when the listeners close is served; `WorkerPool::shutdown` closes the pool.
    pub(crate) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }
}

/// `program` if it is a file this process may execute (a bare name is looked up on `PATH`, as
/// the pool's `Command` will): a missing or unrunnable worker program is a start-up error, not
/// a server that is never ready. (One that runs but never says hello is found out by the pool,
/// which backs off and, after a few tries, answers 503 at once.)
fn executable(program: &Path) -> Result<PathBuf, StateError> {
    let error = |source| StateError::WorkerNotExecutable {
        path: program.to_owned(),
        source,
    };
    if program.components().count() == 1 && !program.has_root() {
        let search = std::env::var_os("PATH").unwrap_or_default();
        return ls::find_program(&search, program.as_os_str())
            .ok_or_else(|| error(io::Error::other("not found on PATH")));
    }
    let metadata = std::fs::metadata(program).map_err(error)?;
    if !metadata.is_file() {
        return Err(error(io::Error::other("not a regular file")));
    }
    rustix::fs::access(program, rustix::fs::Access::EXEC_OK).map_err(|e| error(e.into()))?;
    Ok(program.to_owned())
}

/// The pool's settings under `config`; its metrics are the server's `forkpool_*`.
fn pool_config(config: &Settings) -> PoolConfig {
    PoolConfig {
        workers: config.workers,
        queue: config.queue as usize,
        job_timeout: config.job_timeout,
        max_line: config.max_line as usize,
        max_jobs_per_worker: config.max_jobs_per_worker,
        max_rss_per_worker: config.max_rss_per_worker,
        job_slow: Some(config.job_slow).filter(|slow| !slow.is_zero()),
        max_batch: config.max_batch,
        metrics_prefix: "forkpool".into(),
        broken_after_failed_starts: config.worker_start_failures,
    }
}

/// The process-wide Prometheus recorder, installed on first use.
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    const BUCKETS: [f64; 14] = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
    ];
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&BUCKETS)
                .expect("bucket list is not empty")
                .install_recorder()
                .inspect(|_| {
                    describe_metrics();
                    metrics::gauge!("forkpool_build_info", "version" => env!("CARGO_PKG_VERSION"))
                        .set(1.0);
                })
                .expect("forkpool installs the only metrics recorder")
        })
        .clone()
}

/// `# HELP` lines for every metric that the server and `/ls` record (the pool describes its
/// own): a family without one fails `promtool check metrics`. The `process_*` families are not
/// recorded but rendered at scrape time (`routes::ops`), with their own HELP.
fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "forkpool_build_info",
        "Always 1; the label `version` is the running build's version"
    );
    describe_counter!(
        "forkpool_http_requests_total",
        "HTTP requests by route and status"
    );
    describe_histogram!(
        "forkpool_http_request_duration_seconds",
        "HTTP request duration by route"
    );
    describe_gauge!("forkpool_pool_workers", "Worker slots by state");
    describe_gauge!("forkpool_queue_depth", "Jobs waiting for a worker");
    describe_gauge!("forkpool_ls_running", "`ls` processes running for /ls");
    describe_counter!("forkpool_ls_total", "/ls requests by outcome");
}
