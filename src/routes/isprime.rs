//! `/isprime`: validates the number in the handler, then runs the test in a worker process.
//!
//! Only well-formed numbers within the digit cap reach a worker; everything else is answered
//! here with a 400 or 413 that says what is wrong.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::Uri;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::body::BoundedBody;
use super::{single_param, RequestId};
use crate::error::{AppError, ErrorCode, HttpError, RETRY_WHEN_BUSY};

/// `Retry-After` of a job refused because no worker can be started: the pool retries its
/// starts with a backoff of up to about 10 s, and a fix takes at least that long to show.
const RETRY_WHEN_NO_WORKER: Duration = Duration::from_secs(5);
use crate::jobs::IsPrimeJob;
use crate::pool::PoolError;
use crate::prime::Method;
use crate::routes::state::AppState;

/// The 200 body. `number` is a string so that no client loses precision.
#[derive(Debug, Serialize)]
pub struct IsPrimeResponse {
    pub number: String,
    #[serde(rename = "isPrime")]
    pub is_prime: bool,
    pub method: Method,
    /// Server round trip, e.g. `1.23ms`.
    pub time: String,
    pub compute_ms: f64,
}

/// What is wrong with a submitted number.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    #[error("missing `number`: use /isprime?number=N or POST {{\"number\": \"N\"}}")]
    Missing,
    #[error("`number` is empty")]
    Empty,
    #[error("`number` is negative; only non-negative integers are tested")]
    Negative,
    #[error("`number` has a fractional part; only integers are tested")]
    Fractional,
    #[error("`number` is in exponent form; write out every digit")]
    Exponent,
    #[error("`number` looks hexadecimal; use decimal digits")]
    Hex,
    #[error(
        "`number` has an invalid character {ch:?} at position {position}; use decimal digits only"
    )]
    InvalidCharacter { ch: char, position: usize },
    #[error("`number` has {digits} digits; the limit is {max}")]
    TooLong { digits: usize, max: usize },
    #[error("the body must be JSON like {{\"number\": \"N\"}}: {0}")]
    BadBody(String),
}

impl HttpError for NumberError {
    fn code(&self) -> ErrorCode {
        match self {
            NumberError::Missing => ErrorCode::NumberMissing,
            NumberError::Empty => ErrorCode::NumberEmpty,
            NumberError::Negative => ErrorCode::NumberNegative,
            NumberError::Fractional => ErrorCode::NumberFractional,
            NumberError::Exponent => ErrorCode::NumberExponent,
            NumberError::Hex => ErrorCode::NumberHex,
            NumberError::InvalidCharacter { .. } => ErrorCode::NumberInvalidCharacter,
            NumberError::TooLong { .. } => ErrorCode::NumberTooLong,
            NumberError::BadBody(_) => ErrorCode::BodyInvalid,
        }
    }
}

/// The pool knows nothing of HTTP: the codes (and so statuses) of its errors are chosen here,
/// by the route that submits the jobs.
impl<E: std::fmt::Display> HttpError for PoolError<E> {
    fn code(&self) -> ErrorCode {
        match self {
            PoolError::QueueFull(_) => ErrorCode::QueueFull,
            PoolError::ShuttingDown => ErrorCode::ShuttingDown,
            PoolError::Unavailable { .. } => ErrorCode::WorkersUnavailable,
            PoolError::Timeout(_) => ErrorCode::JobTimeout,
            PoolError::WorkerDied { .. } => ErrorCode::WorkerDied,
            PoolError::Protocol { .. } => ErrorCode::WorkerProtocolError,
            PoolError::JobFailed(_) => ErrorCode::JobFailed,
            PoolError::DriverPanic => ErrorCode::InternalError,
        }
    }

    /// A full queue is worth retrying shortly, a pool with no worker a little later; a server
    /// shutting down is not.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            PoolError::QueueFull(_) => Some(RETRY_WHEN_BUSY),
            PoolError::Unavailable { .. } => Some(RETRY_WHEN_NO_WORKER),
            _ => None,
        }
    }
}

/// Checks a submitted number and returns it in canonical form (no sign, no leading zeros).
/// Accepts surrounding whitespace, one leading `+` and leading zeros; the cap counts
/// significant digits.
pub fn canonical_number(raw: &str, max_digits: usize) -> Result<String, NumberError> {
    let text = raw.trim();
    let unsigned = text.strip_prefix('+').unwrap_or(text);
    if unsigned.is_empty() {
        return Err(NumberError::Empty);
    }
    if let Some(position) = unsigned.find(|c: char| !c.is_ascii_digit()) {
        let ch = unsigned[position..].chars().next().unwrap_or_default();
        return Err(match ch {
            '-' if position == 0 && text == unsigned => NumberError::Negative,
            '.' => NumberError::Fractional,
            'e' | 'E' => NumberError::Exponent,
            'x' | 'X' if unsigned.starts_with('0') && position == 1 => NumberError::Hex,
            _ => NumberError::InvalidCharacter {
                ch,
                position: position + (text.len() - unsigned.len()),
            },
        });
    }
    let significant = unsigned.trim_start_matches('0');
    if significant.len() > max_digits {
        return Err(NumberError::TooLong {
            digits: significant.len(),
            max: max_digits,
        });
    }
    Ok(match significant.is_empty() {
        true => "0".to_owned(),
        false => significant.to_owned(),
    })
}

/// `GET /isprime?number=N`
pub async fn get(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    uri: Uri,
) -> Result<Json<IsPrimeResponse>, AppError> {
    let raw = single_param(&uri, "number")?.ok_or(NumberError::Missing)?;
    check(&state, &request_id, &raw).await
}

/// `POST /isprime` with `{"number": "N"}`; `N` may also be a bare JSON integer of any length.
pub async fn post(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    BoundedBody(body): BoundedBody,
) -> Result<Json<IsPrimeResponse>, AppError> {
    let raw = number_from_json(&body)?;
    check(&state, &request_id, &raw).await
}

/// A POST body. `number` is kept as raw JSON, so that a long integer keeps every digit
/// instead of going through a float. serde's derive decodes escaped keys (`"num\u0062er"`) and
/// refuses a duplicate `number`: with two, which one to test would be a guess.
#[derive(Deserialize)]
struct NumberBody<'a> {
    #[serde(borrow)]
    number: Option<&'a RawValue>,
}

/// The text of `number` in a JSON body.
fn number_from_json(body: &[u8]) -> Result<String, NumberError> {
    // serde also accepts a struct written as an array (`[7]`); a body must be an object.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(NumberError::BadBody("expected a JSON object".to_owned()));
    }
    let body: NumberBody =
        serde_json::from_slice(body).map_err(|e| NumberError::BadBody(e.to_string()))?;
    let raw = body.number.ok_or(NumberError::Missing)?.get();
    match raw.starts_with('"') {
        true => serde_json::from_str(raw).map_err(|e| NumberError::BadBody(e.to_string())),
        false => Ok(raw.to_owned()),
    }
}

async fn check(
    state: &AppState,
    request_id: &RequestId,
    raw: &str,
) -> Result<Json<IsPrimeResponse>, AppError> {
    let started = Instant::now();
    let number = canonical_number(raw, state.config.max_digits as usize)?;
    let job = IsPrimeJob { n: number.clone() };
    let done = state.pool.submit(job, &request_id.0).await?;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    Ok(Json(IsPrimeResponse {
        number,
        is_prime: done.output.is_prime,
        method: done.output.method,
        time: format!("{elapsed_ms:.2}ms"),
        compute_ms: done.compute_ms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        assert_eq!(canonical_number(" +007 ", 10).unwrap(), "7");
        assert_eq!(canonical_number("000", 10).unwrap(), "0");
        assert_eq!(canonical_number("0012345", 5).unwrap(), "12345");
    }

    #[test]
    fn each_bad_form_says_what_is_wrong() {
        let cases = [
            ("", NumberError::Empty),
            ("  ", NumberError::Empty),
            ("+", NumberError::Empty),
            ("-7", NumberError::Negative),
            ("7.5", NumberError::Fractional),
            ("1e9", NumberError::Exponent),
            ("0x1f", NumberError::Hex),
            (
                "12a",
                NumberError::InvalidCharacter {
                    ch: 'a',
                    position: 2,
                },
            ),
            (
                "+-7",
                NumberError::InvalidCharacter {
                    ch: '-',
                    position: 1,
                },
            ),
            (
                "1 2",
                NumberError::InvalidCharacter {
                    ch: ' ',
                    position: 1,
                },
            ),
            (
                "١٢",
                NumberError::InvalidCharacter {
                    ch: '١',
                    position: 0,
                },
            ),
            ("123456", NumberError::TooLong { digits: 6, max: 5 }),
        ];
        for (raw, expected) in cases {
            assert_eq!(canonical_number(raw, 5), Err(expected), "{raw:?}");
        }
    }

    #[test]
    fn json_numbers_keep_every_digit() {
        let big = "123456789012345678901234567890123456789";
        let body = format!("{{\"number\": {big}}}");
        assert_eq!(number_from_json(body.as_bytes()).unwrap(), big);
        assert_eq!(number_from_json(br#"{"number": "42"}"#).unwrap(), "42");
        assert_eq!(number_from_json(br#"{"number": 1.5}"#).unwrap(), "1.5");
        assert_eq!(number_from_json(br#"{}"#), Err(NumberError::Missing));
        assert!(matches!(
            number_from_json(b"[7]"),
            Err(NumberError::BadBody(_))
        ));
        assert!(matches!(
            number_from_json(b"{"),
            Err(NumberError::BadBody(_))
        ));
        assert_eq!(number_from_json(br#"{"num\u0062er": "7"}"#).unwrap(), "7");
        assert!(matches!(
            number_from_json(br#"{"number": "7", "number": "8"}"#),
            Err(NumberError::BadBody(_))
        ));
    }
}
