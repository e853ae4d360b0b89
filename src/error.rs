//! Errors become JSON responses here, in one shape: `{"error": "...", "status": 404}`.
//!
//! Each module keeps its own error type (`NumberError`, `LsError`, and `PoolError` for the
//! pool) and says its own status by implementing [`HttpError`]; this module only knows
//! [`AppError`], the response, and imports nothing else of the crate.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error as the client sees it.
#[derive(Debug)]
pub struct AppError {
    /// The response status, also in the body as `status`.
    pub status: StatusCode,
    /// The body's `error`: what went wrong, in words a client can act on.
    pub message: String,
    /// Sent as `Retry-After` (whole seconds) on 503s that are worth retrying.
    pub retry_after: Option<Duration>,
}

impl AppError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        AppError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message, "status": self.status.as_u16() });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(after) = self.retry_after {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(after.as_secs().max(1)),
            );
        }
        response
    }
}

/// An error that knows how it looks over HTTP. Each module's error type implements it next to
/// its definition, so that the same failure always gets the same code; `?` in a handler turns
/// any of them into an [`AppError`] through the one `From` below.
pub trait HttpError: std::fmt::Display {
    /// The status of the response.
    fn status(&self) -> StatusCode;

    /// `Retry-After` of a 503 worth retrying shortly; none by default.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// `Retry-After` of a server that is busy right now (a full queue, every `ls` slot taken).
pub const RETRY_WHEN_BUSY: Duration = Duration::from_secs(1);

impl<E: HttpError> From<E> for AppError {
    fn from(e: E) -> Self {
        AppError {
            status: e.status(),
            message: e.to_string(),
            retry_after: e.retry_after(),
        }
    }
}
