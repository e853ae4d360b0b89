//! HTTP endpoints, one file per family: `isprime` (jobs for the worker pool), `ls` (streamed
//! directory listings) and `ops` (index, health, readiness, metrics, status, /testrequest).
//! `state` holds [`AppState`](state::AppState), what every handler shares; the server builds it.

pub mod body;
pub mod isprime;
pub mod ls;
pub mod ops;
pub mod state;

use std::borrow::Cow;

use axum::http::Uri;
use percent_encoding::percent_decode;

use crate::error::{ErrorCode, HttpError};

/// The id of the current request, put into request extensions by the server's middleware.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The longest request id kept from a client's `x-request-id` (ours are shorter); it travels
/// to the worker as the job's tag, so `--max-line` must leave room for it.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// What is wrong with a query parameter, whatever the endpoint.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("query parameter `{0}` is given more than once")]
    Repeated(String),
    #[error("query parameter `{0}` is not valid UTF-8")]
    NotUtf8(String),
}

impl HttpError for ParamError {
    fn code(&self) -> ErrorCode {
        match self {
            ParamError::Repeated(_) => ErrorCode::ParamRepeated,
            ParamError::NotUtf8(_) => ErrorCode::ParamNotUtf8,
        }
    }
}

/// The value of query parameter `name` as UTF-8 text; `None` if absent. See
/// [`single_param_bytes`].
pub fn single_param(uri: &Uri, name: &str) -> Result<Option<String>, ParamError> {
    single_param_bytes(uri, name)?
        .map(|value| String::from_utf8(value).map_err(|_| ParamError::NotUtf8(name.to_owned())))
        .transpose()
}

/// The value of query parameter `name`, decoded as a form does (`%XX` escapes, `+` for a
/// space) to bytes, not text: a file name need not be UTF-8, and a lossy decoding would turn
/// it into a name that does not exist. `None` if absent. A parameter given twice is a 400:
/// which one to believe would be a guess.
pub fn single_param_bytes(uri: &Uri, name: &str) -> Result<Option<Vec<u8>>, ParamError> {
    let query = uri.query().unwrap_or_default();
    let mut values = query.split('&').filter_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (*form_decode(key) == *name.as_bytes()).then(|| form_decode(value).into_owned())
    });
    let first = values.next();
    if values.next().is_some() {
        return Err(ParamError::Repeated(name.to_owned()));
    }
    Ok(first)
}

/// One key or value of a query string, decoded; borrowed when there is nothing to decode.
fn form_decode(text: &str) -> Cow<'_, [u8]> {
    match text.contains('+') {
        true => Cow::Owned(percent_decode(text.replace('+', " ").as_bytes()).collect()),
        false => percent_decode(text.as_bytes()).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(query: &str) -> Result<Option<Vec<u8>>, ParamError> {
        single_param_bytes(&format!("/x?{query}").parse().unwrap(), "d")
    }

    #[test]
    fn params_decode_to_bytes() {
        assert_eq!(param("d=a%20b+c").unwrap().unwrap(), b"a b c");
        assert_eq!(param("d=caf%E9").unwrap().unwrap(), b"caf\xe9");
        assert_eq!(param("x=1&%64=2&&y").unwrap().unwrap(), b"2");
        assert_eq!(param("d").unwrap().unwrap(), b"");
        assert_eq!(param("dd=1").unwrap(), None);
        assert!(param("d=1&d=2").is_err());
        let uri = "/x?d=%FF".parse().unwrap();
        assert!(single_param(&uri, "d").is_err());
    }
}
