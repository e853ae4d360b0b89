//! HTTP endpoints, one file per family: `isprime` (jobs for the worker pool), `ls` (streamed
//! directory listings) and `ops` (index, health, readiness, metrics, status, /testrequest).

pub mod isprime;
pub mod ls;
pub mod ops;

use axum::http::Uri;

use crate::error::AppError;

/// The id of the current request, put into request extensions by the server's middleware.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The value of query parameter `name`, decoded; `None` if absent. A parameter given twice is
/// a 400: which one to believe would be a guess.
pub fn single_param(uri: &Uri, name: &str) -> Result<Option<String>, AppError> {
    let query = uri.query().unwrap_or_default();
    let mut values = form_urlencoded::parse(query.as_bytes()).filter(|(key, _)| key == name);
    let first = values.next().map(|(_, value)| value.into_owned());
    if values.next().is_some() {
        return Err(AppError::bad_request(format!(
            "query parameter `{name}` is given more than once"
        )));
    }
    Ok(first)
}
