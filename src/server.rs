//! The HTTP server: the routers with their layers, and `run`, which serves until a shutdown
//! future resolves and then drains in order (readiness off and `Connection: close`, listeners
//! closed, requests finished, workers retired), all within the configured grace period. A
//! request still waiting when the grace period ends is answered 503 before its connection
//! closes.
//!
//! Connections are accepted by our own loop (`listener`) over hyper's HTTP/1.1 connection
//! (`connection`), not by `axum::serve`, which has no header, body or idle timeouts and no
//! connection cap. `fd_budget` sizes the cap from `RLIMIT_NOFILE`.

mod connection;
mod fd_budget;
mod listener;
mod refusal;

use std::future::Future;
use std::io::Write;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument;

use crate::error::{AppError, ErrorCode, HttpError};
use crate::routes::ops::{Audience, Port};
use crate::routes::state::{AppState, StateError};
use crate::routes::{ops, RequestId, MAX_REQUEST_ID_LEN};
use crate::settings::Settings;
use crate::systemd::{self, NotifyState};
use crate::upgrade::{PidFile, Upgrader};
use connection::{Registry, Timeouts};
use fd_budget::{BudgetError, ADMIN_MAX_CONNECTIONS};
use listener::Listener;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the listening sockets: {0}")]
    Listeners(std::io::Error),
    #[error("--max-connections: {0}")]
    Connections(#[from] BudgetError),
}

/// The routers: the public one, and the admin one when `--admin-listen` is set. Without it
/// the public router serves everything; with it, `/metrics` and `/status` move to the admin
/// router (the public one answers them 404) and `/healthz`, `/readyz` and `/openapi.json`
/// answer on both. Both are built from [`ops::ENDPOINTS`], which says where each route goes.
pub fn routers(state: AppState) -> (Router, Option<Router>) {
    let split = state.config.admin_listen.is_some();
    let serving = |on: &dyn Fn(Audience) -> bool| {
        ops::ENDPOINTS
            .iter()
            .filter(|e| on(e.audience))
            .fold(Router::new(), |router, e| {
                router.route(e.path, (e.methods)())
            })
    };
    let public = serving(&|audience| audience.on_public(split));
    let admin = split.then(|| serving(&Audience::on_admin));
    let finish = |router: Router<AppState>, port: Port| {
        let router = router
            .layer(Extension(port))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(middleware::from_fn_with_state(
                state.clone(),
                answer_before_grace_ends,
            ))
            .layer(middleware::from_fn_with_state(
                state.clone(),
                close_when_draining,
            ))
            .with_state(state.clone());
        with_layers(router)
    };
    let admin = admin.map(|admin| finish(admin, Port::Admin));
    (finish(public, Port::Public), admin)
}

/// Layers shared by every route: panics become 500 JSON, and each request gets an id, a log
/// line and metrics. Separate from [`routers`] so that tests can wrap a router of their own.
pub fn with_layers(router: Router) -> Router {
    router
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn(observe))
}

/// Once shutdown has begun, every response says `Connection: close`, so that a load balancer
/// (nginx keeps connections to its upstreams alive, and open-source nginx never reads /readyz)
/// retires each kept-alive connection after its next answer. By the time the listener closes,
/// no idle connection is left for the server to close while the balancer sends a request on
/// it: a POST lost that way is one nginx will not retry, since the job may have started.
async fn close_when_draining(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    if state.is_shutting_down() {
        let close = HeaderValue::from_static("close");
        response.headers_mut().insert(header::CONNECTION, close);
    }
    response
}

/// A request still waiting when `--shutdown-grace` ends is answered 503 instead of having its
/// connection closed under it. The handler is polled first, so a request that completes at
/// once never registers for the signal.
async fn answer_before_grace_ends(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let mut grace_over = state.grace_over.subscribe();
    tokio::select! {
        biased;
        response = next.run(request) => response,
        _ = grace_over.wait_for(|over| *over) => AppError::from(Refusal::GraceOver).into_response(),
    }
}

/// What the server answers itself, outside every route's own errors.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("no such endpoint; GET / lists them")]
    NotFound,
    #[error("method not allowed for this endpoint; GET / lists them")]
    MethodNotAllowed,
    /// A handler panicked (the panic is logged, not shown).
    #[error("internal error")]
    Panic,
    #[error("the server is shutting down and its grace period is over; retry")]
    GraceOver,
}

impl HttpError for Refusal {
    fn code(&self) -> ErrorCode {
        match self {
            Refusal::NotFound => ErrorCode::NotFound,
            Refusal::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            Refusal::Panic => ErrorCode::InternalError,
            Refusal::GraceOver => ErrorCode::ShuttingDown,
        }
    }
}

async fn not_found() -> AppError {
    Refusal::NotFound.into()
}

async fn method_not_allowed() -> AppError {
    Refusal::MethodNotAllowed.into()
}

fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = detail, "handler panicked");
    AppError::from(Refusal::Panic).into_response()
}

/// Request id (the client's `x-request-id` if sane, else a new one), one log line per request
/// with method, path, status and latency, and the HTTP metrics.
async fn observe(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_sane_request_id(v))
        .map_or_else(new_request_id, str::to_owned);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id);
    let mut response = next.run(request).instrument(span.clone()).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    let status = response.status().as_u16();
    let latency = started.elapsed();
    span.in_scope(|| {
        tracing::info!(%method, path, status, latency_ms = latency.as_secs_f64() * 1e3, "request")
    });
    metrics::counter!("forkpool_http_requests_total", "route" => route.clone(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!("forkpool_http_request_duration_seconds", "route" => route)
        .record(latency.as_secs_f64());
    response
}

/// A client's id is kept if it is 1 to [`MAX_REQUEST_ID_LEN`] (128) of `[A-Za-z0-9._:-]`: it is
/// echoed in a header and
/// written unquoted in log lines, so quotes, `=`, `,` and spaces (which could forge `key=value`
/// fields) are refused, and the request gets an id of our own.
fn is_sane_request_id(id: &str) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A process-unique id: a random prefix per process, then a counter.
fn new_request_id() -> String {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| {
        use std::hash::BuildHasher;
        std::collections::hash_map::RandomState::new().hash_one(std::process::id()) as u32
    });
    format!("{prefix:08x}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The listening sockets the server serves: bound from `--listen` and `--admin-listen`, or
/// passed in (systemd socket activation, or a predecessor's SIGUSR2 upgrade).
pub struct Listeners {
    /// Where clients connect.
    pub public: TcpListener,
    /// Where `/metrics` and `/status` are served alone, if anywhere.
    pub admin: Option<TcpListener>,
}

/// Serves `listeners` until `shutdown` resolves or a SIGUSR2 upgrade hands over to a new
/// server, then drains: readiness goes to 503 and every response says `Connection: close` at
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
    config: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    // Registered before anything else: SIGHUP's and SIGUSR2's default action is to terminate,
    // so a signal sent as soon as we serve must not find the handler missing.
    let hangups = unix_signal(SignalKind::hangup(), "rolling restarts of the workers");
    let upgrades = unix_signal(SignalKind::user_defined2(), "in-place upgrades");
    let upgrader = Upgrader::new(
        listeners.public.as_fd(),
        listeners.admin.as_ref().map(AsFd::as_fd),
        config.upgrade_timeout,
    )
    .map_err(StartError::Listeners)?;
    let state = start_state(&listeners, config)?;
    log_accepting(&state.config);
    if let Some(hangups) = hangups {
        tokio::spawn(roll_on_sighup(state.clone(), hangups));
    }
    tokio::spawn(drain_histograms(state.metrics.clone()));
    tokio::spawn(systemd::keep_watchdog_fed());
    let mut serving = Serving::new(&state);
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

/// The shared state, with the settings as in force: the connection cap sized from the
/// descriptors (counted before the pool starts) and the addresses actually listened on.
fn start_state(listeners: &Listeners, config: Settings) -> Result<AppState, StartError> {
    let cap = fd_budget::connection_cap(&config)?;
    let bound = |l: &TcpListener| l.local_addr().map_err(StartError::Listeners);
    let admin_listen = listeners.admin.as_ref().map(bound).transpose()?;
    Ok(AppState::new(Settings {
        listen: bound(&listeners.public)?,
        admin_listen,
        max_connections: Some(cap),
        ..config
    })?)
}

/// Logs the addresses served, once start-up can no longer fail. The server accepts from now
/// on (a predecessor's successor, once ready); tests that need the address of a server that
/// may never be ready read it here.
fn log_accepting(config: &Settings) {
    let when = match systemd::upgraded_from() {
        Some(_) => "once ready",
        None => "now",
    };
    tracing::info!(listener = "public", when, "accepting on http://{}", config.listen);
    if let Some(admin) = config.admin_listen {
        tracing::info!(listener = "admin", when, "accepting on http://{admin}");
    }
}

/// `listening on http://ADDR` (and `admin listening on ...`) on stdout: the line scripts and
/// supervisors wait for, printed when the server is ready, as `READY=1` is sent.
fn print_listening(config: &Settings) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on http://{}", config.listen);
    if let Some(admin) = config.admin_listen {
        let _ = writeln!(out, "admin listening on http://{admin}");
    }
    let _ = out.flush();
}

/// Waits until a worker has said hello; false if `shutdown` came first.
async fn until_ready(state: &AppState, shutdown: Pin<&mut impl Future<Output = ()>>) -> bool {
    tokio::select! {
        () = state.pool.wait_live() => true,
        () = shutdown => false,
    }
}

/// The server is ready: tells the service manager (or the predecessor waiting for it), prints
/// `listening on` and writes the pid file, which it holds until it exits.
fn announce_ready(state: &AppState) -> Option<PidFile> {
    systemd::notify(&[NotifyState::Ready]);
    print_listening(&state.config);
    let pid_file = state.config.pid_file.as_deref().and_then(|path| {
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
    let grace = state.config.shutdown_grace;
    // After a handover the sockets stay open in the new server: nothing to wait for.
    let delay = match stop {
        Stop::Signal => state.config.shutdown_delay,
        Stop::HandedOver => Duration::ZERO,
    };
    let began = Instant::now();
    tracing::info!(?grace, ?delay, ?stop, "shutting down");
    systemd::notify(&[NotifyState::Stopping]);
    state.begin_shutdown();
    tokio::time::sleep(delay).await;
    if !serving.drain(began + grace).await {
        tracing::warn!("grace period over with requests still in flight; answering them 503");
        state.grace_over.send_replace(true);
        serving.drain(Instant::now() + GRACE_END_FLUSH).await;
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
    /// Stops the accept loops (and so closes the listening sockets).
    stop: watch::Sender<bool>,
    /// Tells every connection to answer what it is serving and close.
    draining: watch::Sender<bool>,
    /// The listeners' accept loops, until they have stopped.
    accepting: Vec<JoinHandle<()>>,
    /// The connections of each listener.
    registries: Vec<Arc<Registry>>,
}

impl Serving {
    fn new(state: &AppState) -> Serving {
        let config = &state.config;
        let (public, admin) = routers(state.clone());
        Serving {
            public,
            admin,
            timeouts: Timeouts {
                header: config.header_timeout,
                keepalive: config.keepalive_timeout,
                send: config.send_timeout,
            },
            cap: config.max_connections.unwrap_or(1),
            stop: watch::Sender::new(false),
            draining: watch::Sender::new(false),
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
            draining: self.draining.subscribe(),
            name,
        };
        let mut stop = self.stop.subscribe();
        let task = tokio::spawn(accept.run(async move {
            let _ = stop.wait_for(|stop| *stop).await;
        }));
        self.accepting.push(task);
        self.registries.push(registry);
    }

    /// Closes the listeners (once) and asks every connection to close after its request;
    /// true if all of them closed by `deadline`.
    async fn drain(&mut self, deadline: Instant) -> bool {
        self.stop.send_replace(true);
        for task in self.accepting.drain(..) {
            let _ = task.await;
        }
        self.draining.send_replace(true);
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
        metrics.run_upkeep();
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn call(router: &Router, path: &str) -> (StatusCode, Option<String>, Vec<u8>) {
        let request = Request::builder().uri(path).body(Body::empty()).unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        assert!(response.headers().contains_key(&X_REQUEST_ID));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, content_type, body.to_vec())
    }

    async fn boom() -> &'static str {
        panic!("boom")
    }

    #[tokio::test]
    async fn a_panicking_handler_is_a_500_json_error_and_the_router_keeps_serving() {
        let router = with_layers(
            Router::new()
                .route("/boom", get(boom))
                .route("/ok", get(|| async { "fine" })),
        );
        for _ in 0..2 {
            let (status, content_type, body) = call(&router, "/boom").await;
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(content_type.as_deref(), Some("application/json"));
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["status"], 500, "{json}");
            assert_eq!(json["error"], "internal error", "{json}");
            assert_eq!(json["code"], "internal_error", "{json}");
            assert_eq!(json.as_object().unwrap().len(), 3, "{json}");
        }
        let (status, _, body) = call(&router, "/ok").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, b"fine");
    }

    #[test]
    fn client_request_ids_are_kept_only_when_sane() {
        assert!(is_sane_request_id("abc-123_x.y:z"));
        assert!(is_sane_request_id(&"a".repeat(128)));
        assert!(!is_sane_request_id(""));
        assert!(!is_sane_request_id(&"a".repeat(129)));
        assert!(!is_sane_request_id("two words"));
        assert!(!is_sane_request_id("caf\u{e9}"));
        assert!(!is_sane_request_id("abc\"def=1,status=500"));
        assert!(!is_sane_request_id("a/b"));
        let (a, b) = (new_request_id(), new_request_id());
        assert_ne!(a, b);
        assert!(is_sane_request_id(&a));
    }
}
