//! `/isprime`'s `timeout`: the client's own deadline for its job, as a query parameter (GET) or
//! a JSON field (POST), in the flags' duration syntax (`200ms`, `2s`, `1m30s`; see
//! `crate::units`). The pool caps it at `--job-timeout` and refuses a job whose predicted wait
//! and run would outlast it, at once or when a worker would take it (`deadline_unreachable`).

use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{ErrorCode, HttpError};
use crate::units::parse_positive_duration;

/// Why `timeout` is refused; every variant is `timeout_invalid` (400).
#[derive(Debug, thiserror::Error)]
pub enum TimeoutError {
    /// The value is not a duration of more than zero; the value is the parser's message, which
    /// names the forms accepted.
    #[error("`timeout`: {0} (e.g. `200ms`, `2s`, `1m30s`)")]
    Invalid(String),
    /// In a JSON body, `timeout` is not a string (a number, `null`, an object); the value is the
    /// raw JSON, shown cut to 20 characters.
    #[error("`timeout` must be a JSON string such as \"2s\", not {0:.20}")]
    NotAString(String),
}

impl HttpError for TimeoutError {
    fn code(&self) -> ErrorCode {
        ErrorCode::TimeoutInvalid
    }
}

/// A POST body's `timeout`, kept raw so that a value of the wrong type gets its own message.
#[derive(Deserialize)]
struct TimeoutBody<'a> {
    #[serde(borrow)]
    timeout: Option<&'a RawValue>,
}

/// `timeout` as written in a query: a duration of more than zero.
pub fn timeout_from_text(text: &str) -> Result<Duration, TimeoutError> {
    parse_positive_duration(text).map_err(TimeoutError::Invalid)
}

/// The `timeout` field of a JSON body (an object, already read for its `number`), if given
/// (`null` counts as not given).
pub fn timeout_from_json(body: &[u8]) -> Result<Option<Duration>, TimeoutError> {
    let body: TimeoutBody =
        serde_json::from_slice(body).map_err(|e| TimeoutError::Invalid(e.to_string()))?;
    let Some(raw) = body.timeout.map(RawValue::get) else {
        return Ok(None);
    };
    if raw == "null" {
        return Ok(None);
    }
    let text: String = match raw.starts_with('"') {
        true => serde_json::from_str(raw).map_err(|e| TimeoutError::Invalid(e.to_string()))?,
        false => return Err(TimeoutError::NotAString(raw.to_owned())),
    };
    timeout_from_text(&text).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn good_timeouts_in_a_query_and_a_body() {
        let table = [
            ("200ms", 200),
            ("2s", 2000),
            ("1m30s", 90_000),
            ("1.5", 1500),
            (" 2s ", 2000),
        ];
        for (text, ms) in table {
            let expected = Duration::from_millis(ms);
            assert_eq!(timeout_from_text(text).unwrap(), expected, "{text:?}");
            let body = serde_json::json!({ "number": "7", "timeout": text }).to_string();
            let parsed = timeout_from_json(body.as_bytes()).unwrap();
            assert_eq!(parsed, Some(expected), "{body}");
        }
        for absent in [r#"{"number": "7"}"#, r#"{"number": "7", "timeout": null}"#] {
            assert_eq!(timeout_from_json(absent.as_bytes()).unwrap(), None, "{absent}");
        }
    }

    #[test]
    fn bad_timeouts_are_refused_with_a_message_that_says_why() {
        let table = [
            ("", "empty"),
            ("0", "zero"),
            ("0ms", "zero"),
            ("-1s", "does not start with a number"),
            ("2x", "x"),
            ("fast", "fast"),
            ("1s2m", "largest unit down"),
            ("2 s s", "s"),
        ];
        for (text, says) in table {
            let error = timeout_from_text(text).unwrap_err();
            let message = error.to_string();
            assert!(message.contains("`timeout`"), "{text:?}: {message}");
            assert!(message.contains(says), "{text:?}: {message}");
            assert_eq!(error.code(), ErrorCode::TimeoutInvalid);
        }
        for body in [r#"{"number": "7", "timeout": 2}"#, r#"{"number": "7", "timeout": ["2s"]}"#] {
            let error = timeout_from_json(body.as_bytes()).unwrap_err();
            assert!(matches!(error, TimeoutError::NotAString(_)), "{body}: {error}");
        }
    }

    proptest! {
        /// Any text is either a duration of more than zero or a `timeout_invalid` that names
        /// `timeout`; nothing panics.
        #[test]
        fn any_text_parses_or_is_refused_cleanly(text in "\\PC{0,12}") {
            match timeout_from_text(&text) {
                Ok(duration) => prop_assert!(!duration.is_zero()),
                Err(e) => prop_assert!(e.to_string().starts_with("`timeout`: ")),
            }
        }

        /// Letters alone are never a duration.
        #[test]
        fn words_are_refused(text in "[a-zA-Z]{1,8}") {
            prop_assert!(timeout_from_text(&text).is_err());
        }
    }
}
