//! The state every handler shares: the settings in force, the worker pool, what /ls runs on,
//! the metrics recorder and the shutdown flags. Built once at start-up by `crate::app` (or
//! from parts by a test); routes only read it (the pool, semaphore and channels inside it do
//! their own locking).

use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use metrics_exporter_prometheus::PrometheusHandle;
use axum::extract::FromRef;
use tokio::sync::watch;

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
    pub settings: Settings,
    /// The workers that run `/isprime` jobs.
    pub pool: WorkerPool<IsPrimeJob>,
    /// What /ls runs on: the root held open as an fd, and `ls` found once.
    pub ls: Arc<ls::Ls>,
    /// Renders `/metrics`; the recorder behind it is process-wide.
    pub metrics: PrometheusHandle,
    /// Start of the server, for `/status`'s uptime.
    pub started: Instant,
    /// Where the server is in its life, the one value that the handlers, the layers, the
    /// accept loops and every connection watch. It only moves forward.
    phase: watch::Sender<Phase>,
}

/// What the `/ls` handler extracts: the runner alone, not the whole state (so that `routes::ls`
/// needs nothing of this module).
impl FromRef<AppState> for Arc<ls::Ls> {
    fn from_ref(state: &AppState) -> Arc<ls::Ls> {
        state.ls.clone()
    }
}

/// Where the server is in its life (see `server::run` for what moves it on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Taking connections and serving them.
    Serving,
    /// Stopping (SIGTERM/SIGINT, or a new server took over): `/readyz` says 503 and every
    /// answer says `Connection: close`, but everything is still served and, during
    /// `--shutdown-delay`, connections are still taken.
    Draining,
    /// The listeners are closed; each connection closes once it has answered its request.
    Closing,
    /// `--shutdown-grace` is over: requests still waiting are answered 503.
    GraceOver,
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
        settings: Settings,
        pool: WorkerPool<IsPrimeJob>,
        ls: ls::Ls,
        metrics: PrometheusHandle,
    ) -> AppState {
        AppState(Arc::new(State {
            settings,
            pool,
            ls: Arc::new(ls),
            metrics,
            started: Instant::now(),
            phase: watch::Sender::new(Phase::Serving),
        }))
    }

    /// The phase now.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// From [`Phase::Draining`] on: readiness off, `Connection: close` on every answer.
    pub fn is_shutting_down(&self) -> bool {
        self.phase() >= Phase::Draining
    }

    /// A receiver that sees every later phase.
    pub fn watch_phase(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Moves on to `phase`; never back. Jobs are still taken in every phase: whoever sends
    /// during `--shutdown-delay` (a balancer that has not noticed) or has a request in flight
    /// when the listeners close is served; `WorkerPool::shutdown` closes the pool.
    pub fn advance(&self, phase: Phase) {
        self.phase.send_if_modified(|now| {
            let later = phase > *now;
            if later {
                *now = phase;
            }
            later
        });
    }
}
