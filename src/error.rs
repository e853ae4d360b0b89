//! Typed errors become JSON responses here, in one shape: `{"error": "...", "status": 404}`.
//!
//! Each module keeps its own error type (`PoolError`, `NumberError`, `LsError`); the mapping to
//! an HTTP status lives in one place, below, so that the same failure always gets the same code.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::pool::PoolError;
use crate::routes::isprime::NumberError;
use crate::routes::ls::LsError;

/// An error as the client sees it.
#[derive(Debug)]
pub struct AppError {
    pub status: StatusCode,
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

    /// 503 with `Retry-After`, for a server that is busy right now.
    pub fn busy(message: impl Into<String>) -> Self {
        AppError {
            retry_after: Some(Duration::from_secs(1)),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
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

impl<E: std::fmt::Display> From<PoolError<E>> for AppError {
    fn from(e: PoolError<E>) -> Self {
        let message = e.to_string();
        match e {
            PoolError::QueueFull(_) => AppError::busy(message),
            PoolError::ShuttingDown => AppError::new(StatusCode::SERVICE_UNAVAILABLE, message),
            PoolError::Timeout(_) => AppError::new(StatusCode::GATEWAY_TIMEOUT, message),
            PoolError::WorkerDied { .. } | PoolError::Protocol { .. } => {
                AppError::new(StatusCode::BAD_GATEWAY, message)
            }
            PoolError::JobFailed(_) | PoolError::DriverPanic => {
                AppError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
            }
        }
    }
}

impl From<NumberError> for AppError {
    fn from(e: NumberError) -> Self {
        let status = match e {
            NumberError::TooLong { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        AppError::new(status, e.to_string())
    }
}

impl From<LsError> for AppError {
    fn from(e: LsError) -> Self {
        let message = e.to_string();
        let status = match e {
            LsError::TooLong { .. } | LsError::NulByte | LsError::Unresolvable { .. } => {
                StatusCode::BAD_REQUEST
            }
            LsError::OutsideRoot(_) | LsError::PermissionDenied(_) => StatusCode::FORBIDDEN,
            LsError::NotFound(_) => StatusCode::NOT_FOUND,
            LsError::Busy(_) => return AppError::busy(message),
            LsError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            LsError::Io { .. }
            | LsError::Spawn(_)
            | LsError::Failed(_)
            | LsError::Read(_)
            | LsError::Lost => StatusCode::INTERNAL_SERVER_ERROR,
        };
        AppError::new(status, message)
    }
}
