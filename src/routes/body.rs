//! Request bodies, read under a size limit and a deadline.
//!
//! A body is only ever a number in JSON, so its limit is small ([`Settings::max_body_bytes`]),
//! and a client that declares more in `Content-Length` is answered 413 before a byte of the body
//! is read (a client sending `Expect: 100-continue` never has to send it). A chunked body is cut
//! off at the limit with 413. A body that has not arrived in full within `--body-timeout` of the
//! handler starting to read it gets 408, and its connection is closed: what is left of the body
//! would otherwise be read as the next request. Without these a few hundred stalled uploads
//! could hold hundreds of megabytes (axum's default limit is 2 MiB per request).
//!
//! [`Settings::max_body_bytes`]: crate::settings::Settings::max_body_bytes

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::error::{AppError, ErrorCode, HttpError};
use crate::routes::state::AppState;

/// Why a request body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is over the limit, by its `Content-Length` or once read that far (413); the
    /// connection is closed, as the rest of the body may still be coming.
    #[error("the request body is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The largest body accepted, in bytes (room for `--max-digits` digits and JSON).
        limit: usize,
    },
    /// The whole body did not arrive within `--body-timeout` (the value) of the handler starting
    /// to read it (408); the connection is closed.
    #[error("the request body did not arrive within {0:?}")]
    Timeout(Duration),
    /// The body could not be read: the connection failed or its framing is broken (bad
    /// chunked encoding) (400); the value is hyper's error.
    #[error("cannot read the request body: {0}")]
    Read(String),
}

impl HttpError for BodyError {
    fn code(&self) -> ErrorCode {
        match self {
            BodyError::TooLarge { .. } => ErrorCode::BodyTooLarge,
            BodyError::Timeout(_) => ErrorCode::BodyTimeout,
            BodyError::Read(_) => ErrorCode::BodyUnreadable,
        }
    }
}

impl IntoResponse for BodyError {
    fn into_response(self) -> Response {
        let mut response = AppError::from(self).into_response();
        // The rest of the body may still be on its way: the connection cannot carry another
        // request.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }
}

/// The whole request body, read under the server's limit and `--body-timeout`.
pub struct BoundedBody(pub Bytes);

impl FromRequest<AppState> for BoundedBody {
    type Rejection = BodyError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, BodyError> {
        let limit = state.settings.max_body_bytes();
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(BodyError::TooLarge { limit });
        }
        let timeout = state.settings.body_timeout;
        read(request.into_body(), limit, timeout).await.map(Self)
    }
}

/// Reads `body` to its end, at most `limit` bytes, within `timeout`.
async fn read(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, BodyError> {
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect())
        .await
        .map_err(|_| BodyError::Timeout(timeout))?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(BodyError::TooLarge { limit }),
        Err(e) => Err(BodyError::Read(e.to_string())),
    }
}
