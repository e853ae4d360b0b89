//! The state every handler shares: the settings in force, the worker pool, what /ls runs on,
//! the metrics recorder and the shutdown flags. Built once at start-up by `crate::app` (or
//! from parts by a test); routes only read it (the pool, semaphore and channels inside it do
//! their own locking).

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{watch, Semaphore};

use super::ls;
use crate::jobs::IsPrimeJob;
use crate::pool::WorkerPool;
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

impl AppState {
    /// The state of a server made of these parts: what `crate::app` builds at start-up, or
    /// what a test puts together to call a router in its own process.
    pub fn from_parts(
        config: Settings,
        pool: WorkerPool<IsPrimeJob>,
        ls: ls::Ls,
        metrics: PrometheusHandle,
    ) -> AppState {
        AppState(Arc::new(State {
            ls_slots: Arc::new(Semaphore::new(config.ls_max_concurrent as usize)),
            config,
            pool,
            ls,
            metrics,
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
            grace_over: watch::Sender::new(false),
        }))
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
