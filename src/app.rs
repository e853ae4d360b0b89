//! The one place the application is assembled: turns the settings into the running parts (the
//! /ls runner, the worker pool, the metrics recorder), the shared [`AppState`] and the
//! routers, then hands them to the server. `main` calls [`serve`]; a test that wants a
//! handler without a process builds an `AppState` from parts (`AppState::from_parts`) and calls
//! `routes::routers` itself.
//!
//! # Failure modes
//! Everything that can stop a start-up fails here, before the server accepts a connection or
//! prints anything: the /ls root or `ls` missing, a worker program that cannot be run, a
//! descriptor limit too low for the connection cap. Each is a [`StartError`] naming its flag.

use std::io;
use std::path::{Path, PathBuf};

use crate::cli::WorkerArgs;
use crate::jobs::IsPrimeJob;
use crate::pool::{PoolConfigError, Job, PoolConfig, WorkerPool};
use crate::routes::ls::{self, Ls};
use crate::routes::routers;
use crate::routes::state::AppState;
use crate::server::{self, BudgetError, Listeners, Signals};
use crate::settings::Settings;
use crate::telemetry;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `/ls` cannot be served: the root cannot be opened, no `ls` is found, or its thread
    /// cannot start.
    #[error(transparent)]
    Ls(#[from] ls::SetupError),
    /// `--worker-program` is not set and this process cannot find its own executable
    /// (`current_exe`: `/proc/self/exe` unreadable).
    #[error("cannot find this executable to start workers from (set --worker-program): {0}")]
    WorkerProgram(io::Error),
    /// The worker program (given, or this executable) is not a file this user may execute:
    /// every worker start would fail.
    #[error("--worker-program {path}: cannot run it: {source}")]
    WorkerNotExecutable {
        /// The program given.
        path: PathBuf,
        /// Why: it does not exist, is not a regular file, or has no execute permission.
        source: io::Error,
    },
    /// RLIMIT_NOFILE leaves no descriptors for connections once workers, `ls` and the
    /// listeners have theirs.
    #[error("--max-connections: {0}")]
    Connections(#[from] BudgetError),
    /// Serving on the listening sockets failed (`server::run`'s I/O error: making them tokio
    /// listeners, or another error the server cannot serve on after).
    #[error("the listening sockets: {0}")]
    Listeners(io::Error),
    /// The settings make a [`PoolConfig`] the pool refuses; the command line checks the same
    /// bounds first, so this means a flag's range and the pool disagree (a bug).
    #[error("the worker pool's settings: {0}")]
    Pool(#[from] PoolConfigError),
}

/// Builds the application on `listeners` and serves it until `signals` say stop (see
/// `server::run`).
/// Must run inside the Tokio runtime.
pub async fn serve(
    listeners: Listeners,
    settings: Settings,
    signals: Signals,
) -> Result<(), StartError> {
    let state = build(&listeners, settings)?;
    let routers = routers(state.clone());
    server::run(listeners, state, routers, signals)
        .await
        .map_err(StartError::Listeners)
}

/// The shared state under `settings` as in force: the connection cap sized from the descriptors
/// (counted before the pool opens its pipes) and the addresses actually listened on.
pub fn build(listeners: &Listeners, settings: Settings) -> Result<AppState, StartError> {
    let cap = server::connection_cap(&settings)?;
    let bound = |l: &tokio::net::TcpListener| l.local_addr().map_err(StartError::Listeners);
    let settings = Settings {
        listen: bound(&listeners.public)?,
        admin_listen: listeners.admin.as_ref().map(bound).transpose()?,
        max_connections: Some(cap),
        ..settings
    };
    let ls = Ls::open(&settings.ls_root, ls_limits(&settings))?;
    let program = match &settings.worker_program {
        Some(program) => executable(program)?,
        None => std::env::current_exe().map_err(StartError::WorkerProgram)?,
    };
    // Before the pool: it registers metric handles, which need the recorder in place.
    let metrics = telemetry::recorder();
    let pool = start_pool(&settings, program)?;
    Ok(AppState::from_parts(settings, pool, ls, metrics))
}

/// The `/isprime` pool under `settings`, whose workers are `program` in worker mode (the server's
/// own binary, or another build of it). Install the recorder first (`telemetry::recorder`),
/// or the pool's metrics go nowhere.
pub fn start_pool(
    settings: &Settings,
    program: PathBuf,
) -> Result<WorkerPool<IsPrimeJob>, PoolConfigError> {
    let args = WorkerArgs::for_server(settings, IsPrimeJob::KIND).to_args();
    WorkerPool::try_start(pool_config(settings), move || {
        let mut command = std::process::Command::new(&program);
        command.args(&args);
        command
    })
}

/// `program` if it is a file this process may execute (a bare name is looked up on `PATH`, as
/// the pool's `Command` will): a missing or unrunnable worker program is a start-up error, not
/// a server that is never ready. (One that runs but never says hello is found out by the pool,
/// which backs off and, after a few tries, answers 503 at once.)
fn executable(program: &Path) -> Result<PathBuf, StartError> {
    let error = |source| StartError::WorkerNotExecutable {
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

/// The bounds of `/ls` under `settings`.
pub fn ls_limits(settings: &Settings) -> ls::Limits {
    ls::Limits {
        timeout: settings.ls_timeout,
        max_concurrent: settings.ls_max_concurrent,
        idle: Some(settings.ls_idle_timeout).filter(|idle| !idle.is_zero()),
    }
}

/// The pool's `PoolConfig` under `settings`; its metrics are the server's `forkpool_*`.
fn pool_config(settings: &Settings) -> PoolConfig {
    PoolConfig {
        workers: settings.workers,
        workers_min: settings.workers_min,
        worker_idle_timeout: settings.worker_idle_timeout,
        worker_release_after: Some(settings.worker_release_after).filter(|after| !after.is_zero()),
        queue: settings.queue as usize,
        job_timeout: settings.job_timeout,
        max_line: settings.max_line as usize,
        max_jobs_per_worker: settings.max_jobs_per_worker,
        max_rss_per_worker: settings.max_rss_per_worker,
        job_slow: Some(settings.job_slow).filter(|slow| !slow.is_zero()),
        max_batch: settings.max_batch,
        metrics_prefix: "forkpool".into(),
        broken_after_failed_starts: settings.worker_start_failures,
    }
}
