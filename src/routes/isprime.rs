//! `/isprime`: validates the number in the handler, then runs the test in a worker process.
//!
//! A client may give its own deadline, `timeout` (see `routes::timeout`).
//!
//! Only well-formed numbers within the digit cap reach a worker; everything else is answered
//! here with a 400 or 413 that says what is wrong (`routes::number` reads and checks them).

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::Uri;
use axum::{Extension, Json};
use serde::Serialize;

use super::body::BoundedBody;
use super::number::{canonical_number, number_from_json, number_from_query, NumberError};
use super::timeout::{timeout_from_json, timeout_from_text};
use super::{single_param, RequestId};
use crate::error::{AppError, ErrorCode, HttpError, RETRY_WHEN_BUSY};
use crate::jobs::IsPrimeJob;
use crate::pool::PoolError;
use crate::prime::Method;
use crate::routes::state::AppState;

/// `Retry-After` of a job refused because no worker can be started: the pool retries its
/// starts with a backoff of up to about 10 s, and a fix takes at least that long to show.
const RETRY_WHEN_NO_WORKER: Duration = Duration::from_secs(5);

/// The query parameter `GET /isprime` reads; [`super::ops::ENDPOINTS`] lists it for the
/// document's checks.
pub const NUMBER: &str = "number";
/// The query parameter (and JSON field) of the client's own deadline.
pub const TIMEOUT: &str = "timeout";

/// Every error code `/isprime` can answer with, beyond those of every route (404, 405, 500
/// `internal_error`, 503 `shutting_down`, and the refusals before any route): tests/openapi.rs
/// requires each under the endpoint's documented responses, with its status.
pub const ERRORS: &[ErrorCode] = &[
    ErrorCode::ParamRepeated,
    ErrorCode::ParamNotUtf8,
    ErrorCode::BodyTooLarge,
    ErrorCode::BodyTimeout,
    ErrorCode::BodyUnreadable,
    ErrorCode::BodyInvalid,
    ErrorCode::NumberMissing,
    ErrorCode::NumberEmpty,
    ErrorCode::NumberNoDigits,
    ErrorCode::NumberNegative,
    ErrorCode::NumberMinusZero,
    ErrorCode::NumberFractional,
    ErrorCode::NumberExponent,
    ErrorCode::NumberHex,
    ErrorCode::NumberInvalidCharacter,
    ErrorCode::NumberInvalidEscape,
    ErrorCode::NumberTooLong,
    ErrorCode::TimeoutInvalid,
    ErrorCode::QueueFull,
    ErrorCode::DeadlineUnreachable,
    ErrorCode::WorkersUnavailable,
    ErrorCode::JobTimeout,
    ErrorCode::WorkerDied,
    ErrorCode::WorkerProtocolError,
    ErrorCode::JobFailed,
];

/// The 200 body. `number` is a string so that no client loses precision.
#[derive(Debug, Serialize)]
pub struct IsPrimeResponse {
    /// The number tested, in canonical form.
    pub number: String,
    /// The verdict.
    #[serde(rename = "isPrime")]
    pub is_prime: bool,
    /// Which test decided.
    pub method: Method,
    /// Server round trip, e.g. `1.23ms`.
    pub time: String,
    /// Time the worker spent on the test.
    pub compute_ms: f64,
}

/// The pool knows nothing of HTTP: the codes (and so statuses) of its errors are chosen here,
/// by the route that submits the jobs.
impl<E: std::fmt::Display> HttpError for PoolError<E> {
    fn code(&self) -> ErrorCode {
        match self {
            PoolError::QueueFull(_) => ErrorCode::QueueFull,
            PoolError::WontFinish { .. } | PoolError::TooLate { .. } => {
                ErrorCode::DeadlineUnreachable
            }
            PoolError::ShuttingDown => ErrorCode::ShuttingDown,
            PoolError::Unavailable { .. } => ErrorCode::WorkersUnavailable,
            PoolError::Timeout(_) => ErrorCode::JobTimeout,
            PoolError::WorkerDied { .. } => ErrorCode::WorkerDied,
            PoolError::Protocol { .. } => ErrorCode::WorkerProtocolError,
            PoolError::JobFailed(_) => ErrorCode::JobFailed,
            PoolError::DriverPanic => ErrorCode::InternalError,
        }
    }

    /// A full queue is worth retrying shortly, a pool with no worker a little later, a job
    /// that would miss its deadline once the wait has shrunk by the difference (at submission,
    /// or at dispatch); a server shutting down is not.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            PoolError::QueueFull(_) => Some(RETRY_WHEN_BUSY),
            PoolError::WontFinish { wait, timeout } => {
                Some(whole_seconds(wait.total().saturating_sub(*timeout)))
            }
            PoolError::TooLate { left, run } => Some(whole_seconds(run.saturating_sub(*left))),
            PoolError::Unavailable { .. } => Some(RETRY_WHEN_NO_WORKER),
            _ => None,
        }
    }
}

/// `excess` rounded up to whole seconds, at least one: the `Retry-After` of a deadline that
/// cannot be met.
fn whole_seconds(excess: Duration) -> Duration {
    Duration::from_secs((excess.as_secs_f64().ceil() as u64).max(1))
}

/// `GET /isprime?number=N`
pub async fn get(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    uri: Uri,
) -> Result<Json<IsPrimeResponse>, AppError> {
    let started = Instant::now();
    let value = single_param(&uri, NUMBER)?.ok_or(NumberError::Missing)?;
    let number = number_from_query(&value, state.settings.max_digits as usize)?;
    let timeout = single_param(&uri, TIMEOUT)?;
    let timeout = timeout.map(|t| timeout_from_text(&t.text)).transpose()?;
    test(&state, &request_id, number, timeout, started).await
}

/// `POST /isprime` with `{"number": "N"}`; `N` may also be a bare JSON integer of any length.
pub async fn post(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    BoundedBody(body): BoundedBody,
) -> Result<Json<IsPrimeResponse>, AppError> {
    let started = Instant::now();
    let raw = number_from_json(&body, state.settings.max_digits as usize)?;
    let number = canonical_number(&raw, state.settings.max_digits as usize)?;
    let timeout = timeout_from_json(&body)?;
    test(&state, &request_id, number, timeout, started).await
}

/// Tests `number` (canonical) in a worker, within the client's `timeout` if it gave one (see
/// `routes::timeout`); `started` is when the handler began.
async fn test(
    state: &AppState,
    request_id: &RequestId,
    number: String,
    timeout: Option<Duration>,
    started: Instant,
) -> Result<Json<IsPrimeResponse>, AppError> {
    let job = IsPrimeJob { n: number.clone() };
    let tag = &request_id.0;
    let done = match timeout {
        Some(timeout) => state.pool.submit_with_timeout(job, tag, timeout).await?,
        None => state.pool.submit(job, tag).await?,
    };
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    Ok(Json(IsPrimeResponse {
        number,
        is_prime: done.output.is_prime,
        method: done.output.method,
        time: format!("{elapsed_ms:.2}ms"),
        compute_ms: done.compute_ms,
    }))
}
