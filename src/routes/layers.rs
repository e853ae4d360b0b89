//! The layers every route is served through, and the answers for what no route matches:
//! panics become a 500 JSON error, each request gets an id (the client's if sane), a log line
//! and the HTTP metrics; while the server drains every answer says `Connection: close`, and a
//! request still waiting when the grace period ends is answered 503.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument;

use super::state::{AppState, Phase};
use super::{RequestId, MAX_REQUEST_ID_LEN};
use crate::error::{AppError, ErrorCode, HttpError};
use crate::telemetry;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Layers shared by every route: panics become 500 JSON, and each request gets an id, a log
/// line and metrics. Separate from [`routers`](super::routers) so that tests can wrap a router of their own.
pub fn with_layers(router: Router) -> Router {
    router
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::from_fn(observe))
}

/// Once shutdown has begun, every response says `Connection: close`, so that a load balancer
/// (nginx keeps connections to its upstreams alive, and open-source nginx never reads /readyz)
/// retires each kept-alive connection after its next answer. By the time the listener closes,
/// no idle connection is left for the server to close while the balancer sends a request on
/// it: a POST lost that way is one nginx will not retry, since the job may have started.
pub(super) async fn close_when_draining(
    State(state): State<AppState>,
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
pub(super) async fn answer_before_grace_ends(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let mut phase = state.watch_phase();
    tokio::select! {
        biased;
        response = next.run(request) => response,
        _ = phase.wait_for(|phase| *phase >= Phase::GraceOver) => {
            AppError::from(Refusal::GraceOver).into_response()
        }
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

pub(super) async fn not_found() -> AppError {
    Refusal::NotFound.into()
}

pub(super) async fn method_not_allowed() -> AppError {
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
    metrics::counter!(telemetry::HTTP_REQUESTS, "route" => route.clone(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!(telemetry::HTTP_REQUEST_DURATION, "route" => route)
        .record(latency.as_secs_f64());
    response
}

/// A client's id is kept if it is 1 to [`MAX_REQUEST_ID_LEN`] (128) of `[A-Za-z0-9._:-]`: it is
/// echoed in a header and written unquoted in log lines, so quotes, `=`, `,` and spaces (which
/// could forge `key=value` fields) are refused, and the request gets an id of our own.
fn is_sane_request_id(id: &str) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A process-unique id: a random prefix per process, then a counter.
pub(crate) fn new_request_id() -> String {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| {
        use std::hash::BuildHasher;
        std::collections::hash_map::RandomState::new().hash_one(std::process::id()) as u32
    });
    format!("{prefix:08x}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
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
