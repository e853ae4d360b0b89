//! Errors become JSON responses here, in one shape:
//! `{"error": "...", "code": "not_found", "status": 404}`.
//!
//! `error` is for people and may be reworded; `code` is for programs and never changes once
//! released: every code is a variant of [`ErrorCode`], spelled in snake_case, and each has one
//! HTTP status. Each module keeps its own error type (`NumberError`, `LsError`, and `PoolError`
//! for the pool) and says its code by implementing [`HttpError`]; this module only knows
//! [`AppError`], the response, and imports nothing else of the crate. docs/openapi.json lists
//! every code (tests/openapi.rs holds it to [`ErrorCode::ALL`]), and so does the README.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Defines [`ErrorCode`] from one list of `Variant = ("code", STATUS)`, so that the enum, its
/// spelling, its status and [`ErrorCode::ALL`] cannot drift apart.
macro_rules! error_codes {
    ($($(#[doc = $doc:literal])+ $variant:ident = ($code:literal, $status:ident),)+) => {
        /// The machine-readable kind of an error: the body's `code`. Stable: a code is never
        /// renamed or given another status; new kinds get new codes.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[doc = $doc])+ $variant,)+
        }

        impl ErrorCode {
            /// Every code, in the order the documentation lists them.
            pub const ALL: &[ErrorCode] = &[$(ErrorCode::$variant),+];

            /// The code as the body spells it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)+
                }
            }

            /// The HTTP status of every response with this code.
            pub fn status(self) -> StatusCode {
                match self {
                    $(ErrorCode::$variant => StatusCode::$status,)+
                }
            }
        }
    };
}

error_codes! {
    /// No route has this path.
    NotFound = ("not_found", NOT_FOUND),
    /// The path exists, but not with this method.
    MethodNotAllowed = ("method_not_allowed", METHOD_NOT_ALLOWED),
    /// A bug: a handler panicked, or the pool's driver did (logged); the server keeps serving.
    InternalError = ("internal_error", INTERNAL_SERVER_ERROR),
    /// The server is shutting down (and, for a request still waiting, its grace period ended).
    ShuttingDown = ("shutting_down", SERVICE_UNAVAILABLE),
    /// The request line or a header cannot be parsed (answered before any route).
    MalformedRequest = ("malformed_request", BAD_REQUEST),
    /// The request head is over 64 KiB or has over 100 header fields (before any route).
    HeadTooLarge = ("head_too_large", REQUEST_HEADER_FIELDS_TOO_LARGE),
    /// A query parameter is given more than once.
    ParamRepeated = ("param_repeated", BAD_REQUEST),
    /// A query parameter that must be text is not UTF-8 once percent-decoded.
    ParamNotUtf8 = ("param_not_utf8", BAD_REQUEST),
    /// The request body is over the limit (the connection is closed).
    BodyTooLarge = ("body_too_large", PAYLOAD_TOO_LARGE),
    /// The request body did not arrive within `--body-timeout` (the connection is closed).
    BodyTimeout = ("body_timeout", REQUEST_TIMEOUT),
    /// The request body could not be read (e.g. broken chunked encoding).
    BodyUnreadable = ("body_unreadable", BAD_REQUEST),
    /// The body is not a JSON object like `{"number": "N"}`.
    BodyInvalid = ("body_invalid", BAD_REQUEST),
    /// `number` is not given.
    NumberMissing = ("number_missing", BAD_REQUEST),
    /// `number` is empty or only whitespace.
    NumberEmpty = ("number_empty", BAD_REQUEST),
    /// `number` is a sign without digits.
    NumberNoDigits = ("number_no_digits", BAD_REQUEST),
    /// `number` is negative.
    NumberNegative = ("number_negative", BAD_REQUEST),
    /// `number` is zero with a minus sign.
    NumberMinusZero = ("number_minus_zero", BAD_REQUEST),
    /// `number` has a fractional part.
    NumberFractional = ("number_fractional", BAD_REQUEST),
    /// `number` is in exponent form.
    NumberExponent = ("number_exponent", BAD_REQUEST),
    /// `number` is hexadecimal.
    NumberHex = ("number_hex", BAD_REQUEST),
    /// `number` has a character that is not a decimal digit (a space included, which is what
    /// a `+` in a query string stands for).
    NumberInvalidCharacter = ("number_invalid_character", BAD_REQUEST),
    /// `number`, a JSON string, has an escape that is no character (a lone surrogate).
    NumberInvalidEscape = ("number_invalid_escape", BAD_REQUEST),
    /// `number` has more significant digits than `--max-digits`.
    NumberTooLong = ("number_too_long", PAYLOAD_TOO_LARGE),
    /// `timeout` is not a duration of more than zero (or, in a body, not a JSON string).
    TimeoutInvalid = ("timeout_invalid", BAD_REQUEST),
    /// Every worker is busy and the queue is full (with `Retry-After`).
    QueueFull = ("queue_full", SERVICE_UNAVAILABLE),
    /// The predicted wait and run are already longer than the request's `timeout`, at
    /// submission or when a worker would take the job (with `Retry-After`).
    DeadlineUnreachable = ("deadline_unreachable", SERVICE_UNAVAILABLE),
    /// No worker is alive and none could be started lately (with `Retry-After` on jobs).
    WorkersUnavailable = ("workers_unavailable", SERVICE_UNAVAILABLE),
    /// `/readyz`: no worker is alive yet (one is starting).
    NoWorkerAlive = ("no_worker_alive", SERVICE_UNAVAILABLE),
    /// The job did not finish within `--job-timeout`; its worker was killed.
    JobTimeout = ("job_timeout", GATEWAY_TIMEOUT),
    /// The worker died during the job (the message says how).
    WorkerDied = ("worker_died", BAD_GATEWAY),
    /// The worker broke the protocol and was killed.
    WorkerProtocolError = ("worker_protocol_error", BAD_GATEWAY),
    /// The job failed inside the worker.
    JobFailed = ("job_failed", INTERNAL_SERVER_ERROR),
    /// `directory` is longer than the limit.
    DirectoryTooLong = ("directory_too_long", BAD_REQUEST),
    /// `directory` contains a NUL byte.
    DirectoryNulByte = ("directory_nul_byte", BAD_REQUEST),
    /// `directory` cannot be resolved (a name too long, a symlink loop, a magic link).
    DirectoryUnresolvable = ("directory_unresolvable", BAD_REQUEST),
    /// `directory` leads outside the listing root.
    OutsideRoot = ("outside_root", FORBIDDEN),
    /// `directory` cannot be read or searched by the server.
    PermissionDenied = ("permission_denied", FORBIDDEN),
    /// `directory` does not exist.
    DirectoryNotFound = ("directory_not_found", NOT_FOUND),
    /// `--ls-max-concurrent` listings are running (with `Retry-After`).
    LsBusy = ("ls_busy", SERVICE_UNAVAILABLE),
    /// `ls` wrote nothing within `--ls-timeout` (counted from admission, its turn included),
    /// or nothing for `--ls-idle-timeout` after its start.
    LsTimeout = ("ls_timeout", GATEWAY_TIMEOUT),
    /// `ls` could not be started, or failed before writing anything.
    LsFailed = ("ls_failed", INTERNAL_SERVER_ERROR),
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// An error as the client sees it.
#[derive(Debug)]
pub struct AppError {
    /// The body's `code`, which also decides the status.
    pub code: ErrorCode,
    /// The body's `error`: what went wrong, in words a client can act on.
    pub message: String,
    /// Sent as `Retry-After` (whole seconds) on 503s that are worth retrying.
    pub retry_after: Option<Duration>,
}

/// The JSON body of every error.
#[derive(Serialize)]
struct ErrorBody<'a> {
    /// What went wrong, for people.
    error: &'a str,
    /// What went wrong, for programs.
    code: ErrorCode,
    /// The HTTP status, repeated.
    status: u16,
}

impl AppError {
    /// The status of the response: the code's.
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// The JSON body, as sent.
    pub fn body(&self) -> Vec<u8> {
        let body = ErrorBody {
            error: &self.message,
            code: self.code,
            status: self.status().as_u16(),
        };
        serde_json::to_vec(&body).expect("an error body always serializes")
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let json = HeaderValue::from_static("application/json");
        let mut response = (self.status(), [(header::CONTENT_TYPE, json)], self.body()).into_response();
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
/// its definition, so that the same failure always gets the same code (and so status); `?` in
/// a handler turns any of them into an [`AppError`] through the one `From` below.
pub trait HttpError: std::fmt::Display {
    /// The body's `code`; its status is the response's.
    fn code(&self) -> ErrorCode;

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
            code: e.code(),
            message: e.to_string(),
            retry_after: e.retry_after(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_snake_case_and_errors_only() {
        let mut seen = HashSet::new();
        for code in ErrorCode::ALL {
            let text = code.as_str();
            assert!(seen.insert(text), "{text} twice");
            let snake = text.split('_').all(|word| {
                word.starts_with(|c: char| c.is_ascii_lowercase())
                    && word.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            });
            assert!(snake, "{text} is not snake_case");
            let status = code.status();
            assert!(status.is_client_error() || status.is_server_error(), "{text}");
        }
    }

    #[test]
    fn the_body_has_the_message_the_code_and_the_status() {
        let error = AppError {
            code: ErrorCode::NumberTooLong,
            message: "too long".into(),
            retry_after: None,
        };
        let body: serde_json::Value = serde_json::from_slice(&error.body()).unwrap();
        let expected = serde_json::json!({
            "error": "too long", "code": "number_too_long", "status": 413
        });
        assert_eq!(body, expected);
    }
}
