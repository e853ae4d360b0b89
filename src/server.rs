//! The HTTP server: shared state, the router with its layers, and `run`, which serves until a
//! shutdown future resolves and then drains in order (readiness off, listener closed, requests
//! finished, workers retired), all within the configured grace period.

use std::future::{Future, IntoFuture};
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument;

use crate::config::Config;
use crate::error::AppError;
use crate::pool::{PoolConfig, WorkerPool};
use crate::routes::isprime::IsPrimeJob;
use crate::routes::{isprime, ls, ops, RequestId};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Shared by every handler. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<State>);

pub struct State {
    pub config: Config,
    pub pool: WorkerPool<IsPrimeJob>,
    /// Canonical form of `--ls-root`, resolved once at start-up.
    pub ls_root: PathBuf,
    /// One permit per `ls` process allowed to run.
    pub ls_slots: Arc<Semaphore>,
    pub metrics: PrometheusHandle,
    pub started: Instant,
    shutting_down: AtomicBool,
}

impl Deref for AppState {
    type Target = State;
    fn deref(&self) -> &State {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("--ls-root {path}: {source}")]
    LsRoot {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot find this executable to start workers from (set --worker-program): {0}")]
    WorkerProgram(std::io::Error),
}

impl AppState {
    /// Resolves paths and starts the worker pool. Must run inside the Tokio runtime.
    pub fn new(config: Config) -> Result<AppState, StartError> {
        let root = match &config.ls_root {
            Some(root) => root.clone(),
            None => std::env::current_dir().map_err(|source| StartError::LsRoot {
                path: ".".into(),
                source,
            })?,
        };
        let ls_root = root
            .canonicalize()
            .map_err(|source| StartError::LsRoot { path: root, source })?;
        let program = match &config.worker_program {
            Some(program) => program.clone(),
            None => std::env::current_exe().map_err(StartError::WorkerProgram)?,
        };
        // Before the pool: it registers metric handles, which need the recorder in place.
        let metrics = metrics_handle();
        let pool = WorkerPool::start(PoolConfig {
            program,
            workers: config.worker_count(),
            queue: config.queue as usize,
            job_timeout: config.job_timeout,
            max_line: config.max_line as usize,
            max_jobs_per_worker: config.max_jobs_per_worker,
            worker_memory: config.worker_memory,
            worker_nice: config.worker_nice,
            worker_sched: config.worker_sched,
            log_format: config.log_format,
        });
        Ok(AppState(Arc::new(State {
            ls_slots: Arc::new(Semaphore::new(config.ls_max_concurrent as usize)),
            config,
            pool,
            ls_root,
            metrics,
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
        })))
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// Readiness off and no new jobs; what is queued or running may finish.
    fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        self.pool.close();
    }
}

/// The router with every endpoint and the layers that apply to all of them.
pub fn app(state: AppState) -> Router {
    let routes = Router::new()
        .route("/", get(ops::index))
        .route("/testrequest", get(ops::testrequest))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/status", get(ops::status))
        .route("/isprime", get(isprime::get).post(isprime::post))
        .route("/ls", get(ls::list))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);
    with_layers(routes)
}

/// Layers shared by every route: panics become 500 JSON, and each request gets an id, a log
/// line and metrics. Separate from [`app`] so that tests can wrap a router of their own.
pub fn with_layers(router: Router) -> Router {
    router
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn(observe))
}

async fn not_found() -> AppError {
    AppError::new(StatusCode::NOT_FOUND, "no such endpoint; GET / lists them")
}

async fn method_not_allowed() -> AppError {
    AppError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed for this endpoint; GET / lists them",
    )
}

fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = detail, "handler panicked");
    AppError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
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

/// A client's id is kept if it is 1 to 128 visible ASCII characters (no spaces), so that it
/// reads as one token in a `key=value` log line.
fn is_sane_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
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
                .inspect(|_| describe_metrics())
                .expect("forkpool installs the only metrics recorder")
        })
        .clone()
}

/// `# HELP` lines for the metrics that the server and the pool record.
fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
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
    describe_histogram!(
        "forkpool_job_queue_wait_seconds",
        "Time a job waited in the queue"
    );
    describe_histogram!("forkpool_job_run_seconds", "Time a job ran on a worker");
    describe_counter!("forkpool_jobs_total", "Jobs by outcome");
    describe_counter!("forkpool_worker_exits_total", "Worker exits by reason");
    describe_counter!("forkpool_worker_spawns_total", "Worker processes started");
}

/// Serves `listener` until `shutdown` resolves, then drains: readiness goes to 503 and new jobs
/// are refused at once; after `--shutdown-delay` the listener closes; in-flight requests and
/// jobs get what is left of `--shutdown-grace`; then the workers are retired or killed.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let grace = config.shutdown_grace;
    let delay = config.shutdown_delay;
    // Registered here, not in the spawned task: SIGHUP's default action is to terminate, so a
    // roll requested as soon as we serve must not find the handler missing.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let state = AppState::new(config)?;
    match hangups {
        Ok(hangups) => drop(tokio::spawn(roll_on_sighup(state.clone(), hangups))),
        Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP; rolling restarts are off"),
    }
    tokio::spawn(drain_histograms(state.metrics.clone()));
    let (began_tx, mut began) = watch::channel(None::<Instant>);
    let draining = state.clone();
    let serve = axum::serve(listener, app(state.clone())).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!(?grace, ?delay, "shutting down");
        draining.begin_shutdown();
        let _ = began_tx.send(Some(Instant::now()));
        tokio::time::sleep(delay).await;
    });
    let grace_over = async {
        let began = *began
            .wait_for(Option::is_some)
            .await
            .expect("sender lives in serve");
        tokio::time::sleep_until((began.expect("checked") + grace).into()).await;
    };
    tokio::select! {
        result = serve.into_future() => {
            if let Err(e) = result {
                tracing::error!(error = %e, "server error");
            }
        }
        _ = grace_over => tracing::warn!("grace period over with requests still in flight"),
    }
    let left = began.borrow().map_or(Duration::ZERO, |t| {
        (t + grace).saturating_duration_since(Instant::now())
    });
    state.pool.shutdown(left).await;
    tracing::info!("stopped");
    Ok(())
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

/// SIGHUP: rolling restart of the workers, for picking up a new binary.
async fn roll_on_sighup(state: AppState, mut hangups: tokio::signal::unix::Signal) {
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: rolling restart of the workers");
        state.pool.roll().await;
        tracing::info!("rolling restart done");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
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
            assert_eq!(json.as_object().unwrap().len(), 2, "{json}");
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
        let (a, b) = (new_request_id(), new_request_id());
        assert_ne!(a, b);
        assert!(is_sane_request_id(&a));
    }
}
