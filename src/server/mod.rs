//! The HTTP server: `run` serves the routers (`crate::routes`) on the listening sockets until a
//! signal says stop, and then drains in order (readiness off and `Connection: close`, listeners
//! closed, requests finished, workers retired), all within the configured grace period. A
//! request still waiting when the grace period ends is answered 503 before its connection
//! closes.
//!
//! Connections are accepted by our own loop (`listener`) over hyper's HTTP/1.1 connection
//! (`connection`), not by `axum::serve`, which has no header, body or idle timeouts and no
//! connection cap. `fd_budget` sizes the cap from `RLIMIT_NOFILE`. `trim` gives the heap
//! memory of a burst back to the kernel once the burst is over.

mod connection;
mod fd_budget;
mod listener;
mod refusal;
mod trim;

use std::future::Future;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::routes::state::{AppState, Phase};
use crate::routes::Routers;
use crate::settings::Settings;
use crate::systemd::{self, NotifyState};
use crate::telemetry;
use crate::upgrade::{PidFile, Upgrader};
use connection::{Registry, Timeouts};
use fd_budget::ADMIN_MAX_CONNECTIONS;
use listener::Listener;

pub use fd_budget::{connection_cap, BudgetError};

/// The signals the server acts on, with their handlers installed: SIGTERM and SIGINT (drain
/// and exit), SIGHUP (roll the workers), SIGUSR2 (in-place upgrade). Installed by
/// [`Signals::install`] before anyone can know the server's address, so that a signal sent as
/// soon as it listens never meets the default action (which, for all four, is to terminate).
pub struct Signals {
    /// SIGTERM: drain and exit.
    terminate: Signal,
    /// SIGINT: the same, from a terminal.
    interrupt: Signal,
    /// SIGHUP, when its handler could be installed.
    hangups: Option<Signal>,
    /// SIGUSR2, when its handler could be installed.
    upgrades: Option<Signal>,
}

impl Signals {
    /// Installs the handlers; must run inside the Tokio runtime. Only SIGTERM's and SIGINT's
    /// are required: without SIGHUP's or SIGUSR2's, rolls or upgrades are off (and logged).
    pub fn install() -> io::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangups: unix_signal(SignalKind::hangup(), "rolling restarts of the workers"),
            upgrades: unix_signal(SignalKind::user_defined2(), "in-place upgrades"),
        })
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_requested(mut terminate: Signal, mut interrupt: Signal) {
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}

/// The listening sockets the server serves: bound from `--listen` and `--admin-listen`, or
/// passed in (systemd socket activation, or a predecessor's SIGUSR2 upgrade).
pub struct Listeners {
    /// Where clients connect.
    pub public: TcpListener,
    /// Where `/metrics` and `/status` are served alone, if anywhere.
    pub admin: Option<TcpListener>,
}

/// Serves `routers` (on `state`) on `listeners` until SIGTERM or SIGINT, or until a SIGUSR2
/// upgrade hands over to a new server, then drains: readiness goes to 503 and every response says `Connection: close` at
/// once (requests, jobs included, are still served); after `--shutdown-delay` (none after a
/// handover: the sockets stay open in the new server) the listeners close and each connection
/// closes once its request is answered; requests and jobs get what is left of
/// `--shutdown-grace`, after which those still waiting are answered 503; then the workers are
/// retired or killed.
///
/// Start-up can fail before anything is served (the /ls root, the worker program); once this
/// logs `accepting on`, it cannot. The server is *ready* once a worker has said hello: it
/// tells the service manager (`READY=1`), prints `listening on http://ADDR` on stdout, writes
/// `--pid-file`, and logs `ready`. A server started by a predecessor's upgrade accepts only
/// from then on.
pub async fn run(
    listeners: Listeners,
    state: AppState,
    routers: Routers,
    signals: Signals,
) -> io::Result<()> {
    let upgrader = Upgrader::new(
        listeners.public.as_fd(),
        listeners.admin.as_ref().map(AsFd::as_fd),
        state.settings.upgrade_timeout,
    )?;
    log_accepting(&state.settings);
    if let Some(hangups) = signals.hangups {
        tokio::spawn(roll_on_sighup(state.clone(), hangups));
    }
    tokio::spawn(drain_histograms(state.metrics.clone()));
    tokio::spawn(systemd::keep_watchdog_fed());
    tokio::spawn(trim::give_back_after_bursts(state.metrics.clone()));
    let shutdown = shutdown_requested(signals.terminate, signals.interrupt);
    let upgrades = signals.upgrades;
    let mut serving = Serving::new(&state, routers);
    // A predecessor's successor accepts once ready; until then the predecessor serves.
    let mut listeners = Some(listeners);
    if systemd::upgraded_from().is_none() {
        serving.start_all(&mut listeners);
    }
    tokio::pin!(shutdown);
    let mut pid_file = None;
    let stop = match until_ready(&state, shutdown.as_mut()).await {
        false => Stop::Signal,
        true => {
            serving.start_all(&mut listeners);
            pid_file = announce_ready(&state);
            until_stopped(&upgrader, upgrades, shutdown).await
        }
    };
    // Before the listeners close: the upgrader's copies would keep the sockets open.
    drop(upgrader);
    drain(&state, &mut serving, stop).await;
    drop(pid_file);
    Ok(())
}

/// Why the server stops serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGTERM or SIGINT.
    Signal,
    /// A new server took over the listening sockets (SIGUSR2).
    HandedOver,
}

/// The handler of `kind`, or `None` (logged) when it cannot be installed.
fn unix_signal(kind: SignalKind, what: &str) -> Option<Signal> {
    signal(kind)
        .inspect_err(|e| tracing::warn!(error = %e, "cannot listen for a signal; {what} are off"))
        .ok()
}

/// Logs the addresses served, once start-up can no longer fail. The server accepts from now
/// on (a predecessor's successor, once ready); tests that need the address of a server that
/// may never be ready read it here.
fn log_accepting(settings: &Settings) {
    let when = match systemd::upgraded_from() {
        Some(_) => "once ready",
        None => "now",
    };
    tracing::info!(listener = "public", when, "accepting on http://{}", settings.listen);
    if let Some(admin) = settings.admin_listen {
        tracing::info!(listener = "admin", when, "accepting on http://{admin}");
    }
}

/// `listening on http://ADDR` (and `admin listening on ...`) on stdout: the line scripts and
/// supervisors wait for, printed when the server is ready, as `READY=1` is sent.
fn print_listening(settings: &Settings) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on http://{}", settings.listen);
    if let Some(admin) = settings.admin_listen {
        let _ = writeln!(out, "admin listening on http://{admin}");
    }
    let _ = out.flush();
}

/// Waits until the pool can serve (a worker has said hello, or with `--workers-min 0` none is
/// wanted yet); false if `shutdown` came first.
async fn until_ready(state: &AppState, shutdown: Pin<&mut impl Future<Output = ()>>) -> bool {
    tokio::select! {
        () = state.pool.wait_ready() => true,
        () = shutdown => false,
    }
}

/// The server is ready: tells the service manager (or the predecessor waiting for it), prints
/// `listening on` and writes the pid file, which it holds until it exits.
fn announce_ready(state: &AppState) -> Option<PidFile> {
    systemd::notify(&[NotifyState::Ready]);
    print_listening(&state.settings);
    let pid_file = state.settings.pid_file.as_deref().and_then(|path| {
        PidFile::write(path)
            .inspect_err(|e| tracing::error!(error = %e, path = %path.display(), "cannot write the pid file"))
            .ok()
    });
    let upgraded_from = systemd::upgraded_from();
    tracing::info!(pid = std::process::id(), version = env!("CARGO_PKG_VERSION"), upgraded_from, "ready");
    pid_file
}

/// Serves until SIGTERM/SIGINT, or until a SIGUSR2 upgrade has handed over to a new server
/// that is ready. A failed upgrade is logged and serving goes on.
async fn until_stopped(
    upgrader: &Upgrader,
    mut upgrades: Option<Signal>,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> Stop {
    loop {
        let upgrade = async {
            match upgrades.as_mut() {
                Some(upgrades) => upgrades.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.as_mut() => return Stop::Signal,
            Some(()) = upgrade => {}
        }
        let program = upgrader.program().display().to_string();
        tracing::info!(program, "SIGUSR2: starting the new server");
        // Dropping `hand_over` (SIGTERM meanwhile) kills the new server.
        tokio::select! {
            () = shutdown.as_mut() => return Stop::Signal,
            result = upgrader.hand_over() => match result {
                Ok(pid) => {
                    tracing::info!(pid, "the new server is ready; handing over and draining");
                    return Stop::HandedOver;
                }
                Err(error) => tracing::error!(%error, program, "upgrade failed; this server keeps serving"),
            },
        }
    }
}

/// Drains, as `run` describes, and retires the workers.
async fn drain(state: &AppState, serving: &mut Serving, stop: Stop) {
    let grace = state.settings.shutdown_grace;
    // After a handover the sockets stay open in the new server: nothing to wait for.
    let delay = match stop {
        Stop::Signal => state.settings.shutdown_delay,
        Stop::HandedOver => Duration::ZERO,
    };
    let began = Instant::now();
    tracing::info!(?grace, ?delay, ?stop, "shutting down");
    systemd::notify(&[NotifyState::Stopping]);
    state.advance(Phase::Draining);
    tokio::time::sleep(delay).await;
    state.advance(Phase::Closing);
    if !serving.all_closed(began + grace).await {
        tracing::warn!("grace period over with requests still in flight; answering them 503");
        state.advance(Phase::GraceOver);
        serving.all_closed(Instant::now() + GRACE_END_FLUSH).await;
    }
    let left = (began + grace).saturating_duration_since(Instant::now());
    state.pool.shutdown(left).await;
    tracing::info!("stopped");
}

/// After the grace period, how long connections get to write their 503s before the process
/// goes on to kill the workers and exit.
const GRACE_END_FLUSH: Duration = Duration::from_secs(1);

/// The listeners' accept loops and the connections they hold.
struct Serving {
    /// What the public listener serves.
    public: Router,
    /// What the admin listener serves, when `--admin-listen` (or a passed `admin` socket) is
    /// there.
    admin: Option<Router>,
    /// The connection cap of the public listener.
    cap: u32,
    timeouts: Timeouts,
    /// The server's phase: the accept loops stop (and close the listening sockets) at
    /// [`Phase::Closing`], when every connection answers what it is serving and closes.
    phase: watch::Receiver<Phase>,
    /// The listeners' accept loops, until they have stopped.
    accepting: Vec<JoinHandle<()>>,
    /// The connections of each listener.
    registries: Vec<Arc<Registry>>,
}

impl Serving {
    fn new(state: &AppState, routers: Routers) -> Serving {
        let settings = &state.settings;
        Serving {
            public: routers.public,
            admin: routers.admin,
            timeouts: Timeouts {
                header: settings.header_timeout,
                keepalive: settings.keepalive_timeout,
                send: settings.send_timeout,
            },
            cap: settings.max_connections.unwrap_or(1),
            phase: state.watch_phase(),
            accepting: Vec::new(),
            registries: Vec::new(),
        }
    }

    /// Starts accepting on `listeners`, if there (taking them).
    fn start_all(&mut self, listeners: &mut Option<Listeners>) {
        let Some(Listeners { public, admin }) = listeners.take() else {
            return;
        };
        self.start("public", public, self.public.clone(), self.cap);
        if let (Some(admin), Some(router)) = (admin, self.admin.clone()) {
            self.start("admin", admin, router, ADMIN_MAX_CONNECTIONS);
        }
    }

    fn start(&mut self, name: &'static str, listener: TcpListener, router: Router, cap: u32) {
        let registry = Arc::new(Registry::default());
        let accept = Listener {
            listener,
            router,
            slots: Arc::new(Semaphore::new(cap as usize)),
            registry: registry.clone(),
            timeouts: self.timeouts,
            phase: self.phase.clone(),
            name,
        };
        let mut phase = self.phase.clone();
        let task = tokio::spawn(accept.run(async move {
            let _ = phase.wait_for(|phase| *phase >= Phase::Closing).await;
        }));
        self.accepting.push(task);
        self.registries.push(registry);
    }

    /// Once the phase is [`Phase::Closing`]: waits for the accept loops to have stopped (so
    /// that every connection they took is registered), then for every connection to close;
    /// true if all did by `deadline`.
    async fn all_closed(&mut self, deadline: Instant) -> bool {
        for task in self.accepting.drain(..) {
            let _ = task.await;
        }
        let all_closed = async {
            for registry in &self.registries {
                registry.closed().await;
            }
        };
        tokio::time::timeout_at(deadline.into(), all_closed)
            .await
            .is_ok()
    }
}

/// Folds recorded histogram samples into their buckets every few seconds. The exporter keeps
/// raw samples until then, so without this a server that is never scraped would grow by every
/// request it serves.
async fn drain_histograms(metrics: PrometheusHandle) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        every.tick().await;
        telemetry::fold_histograms(&metrics);
    }
}

/// SIGHUP: rolling restart of the workers, for picking up a new binary. Never waits for a roll:
/// each SIGHUP begins a new one at once (superseding one still under way, say when a broken
/// program was fixed), and a task of its own logs how it ended.
async fn roll_on_sighup(state: AppState, mut hangups: Signal) {
    use crate::pool::RollOutcome;
    while hangups.recv().await.is_some() {
        let roll = state.pool.roll();
        let generation = roll.generation();
        tracing::info!(generation, "SIGHUP: rolling restart of the workers");
        tokio::spawn(async move {
            match roll.finished().await {
                RollOutcome::Done => tracing::info!(generation, "rolling restart done"),
                RollOutcome::Superseded { by } => {
                    tracing::info!(generation, by, "rolling restart superseded by a newer one")
                }
                RollOutcome::Closed => {
                    tracing::info!(generation, "rolling restart cut short by the shutdown")
                }
            }
        });
    }
}
