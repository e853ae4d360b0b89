//! HTTP endpoints, one file per family: `isprime` (jobs for the worker pool), `ls` (streamed
//! directory listings) and `ops` (index, health, readiness, metrics, status, /testrequest);
//! [`routers`] puts them together with the `layers` every route shares. `state` holds
//! [`AppState`], what every handler shares (built by `crate::app`, or from
//! parts by a test). Nothing here starts a process or binds a socket: a router can be called
//! in the test process with `tower::ServiceExt::oneshot`.

pub mod body;
pub mod isprime;
pub mod layers;
pub mod ls;
pub mod number;
pub mod ops;
pub mod state;
pub mod timeout;

use axum::http::Uri;
use axum::{middleware, Extension, Router};
use percent_encoding::percent_decode;

use crate::error::{ErrorCode, HttpError};
use layers::{answer_before_grace_ends, close_when_draining, method_not_allowed, not_found};
use ops::{Audience, Port};
use state::AppState;

/// What the server serves: the public router, and the admin one when there is an admin
/// listener.
pub struct Routers {
    /// For `--listen`.
    pub public: Router,
    /// For `--admin-listen`, when set.
    pub admin: Option<Router>,
}

/// The routers: the public one, and the admin one when `--admin-listen` is set. Without it
/// the public router serves everything; with it, `/metrics` and `/status` move to the admin
/// router (the public one answers them 404) and `/healthz`, `/readyz` and `/openapi.json`
/// answer on both. Both are built from [`ops::ENDPOINTS`], which says where each route goes.
pub fn routers(state: AppState) -> Routers {
    let split = state.settings.admin_listen.is_some();
    let serving = |on: &dyn Fn(Audience) -> bool| {
        ops::ENDPOINTS
            .iter()
            .filter(|e| on(e.audience))
            .fold(Router::new(), |router, e| {
                router.route(e.path, (e.methods)())
            })
    };
    let public = serving(&|audience| audience.on_public(split));
    let admin = split.then(|| serving(&Audience::on_admin));
    let finish = |router: Router<AppState>, port: Port| {
        let router = router
            .layer(Extension(port))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(middleware::from_fn_with_state(
                state.clone(),
                answer_before_grace_ends,
            ))
            .layer(middleware::from_fn_with_state(
                state.clone(),
                close_when_draining,
            ))
            .with_state(state.clone());
        layers::with_layers(router)
    };
    Routers {
        admin: admin.map(|admin| finish(admin, Port::Admin)),
        public: finish(public, Port::Public),
    }
}

/// The id of the current request, put into request extensions by the server's middleware.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The longest request id kept from a client's `x-request-id` (ours are shorter); it travels
/// to the worker as the job's tag, so `--max-line` must leave room for it.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// What is wrong with a query parameter, whatever the endpoint.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// The parameter (the value, its name) appears more than once: which one is meant is
    /// ambiguous, so neither is taken (400 `param_repeated`).
    #[error("query parameter `{0}` is given more than once")]
    Repeated(String),
    /// The parameter (the value, its name) is not UTF-8 once percent-decoded (400
    /// `param_not_utf8`).
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

/// A query parameter's value as text, with where the URL rules turned a `+` into a space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryText {
    /// The value, decoded.
    pub text: String,
    /// The positions in `text`, in characters from 0, of the spaces written `+` in the query.
    pub plus_spaces: Vec<usize>,
}

/// The value of query parameter `name` as UTF-8 text; `None` if absent. See
/// [`single_param_bytes`].
pub fn single_param(uri: &Uri, name: &str) -> Result<Option<QueryText>, ParamError> {
    let Some(value) = find_param(uri, name)? else {
        return Ok(None);
    };
    let text = String::from_utf8(value.bytes).map_err(|_| ParamError::NotUtf8(name.to_owned()))?;
    let plus_spaces = value
        .plus_spaces
        .iter()
        .map(|&offset| text[..offset].chars().count())
        .collect();
    Ok(Some(QueryText { text, plus_spaces }))
}

/// The value of query parameter `name`, decoded as a form does (`%XX` escapes, `+` for a
/// space) to bytes, not text: a file name need not be UTF-8, and a lossy decoding would turn
/// it into a name that does not exist. `None` if absent. A parameter given twice is a 400:
/// which one to believe would be a guess.
pub fn single_param_bytes(uri: &Uri, name: &str) -> Result<Option<Vec<u8>>, ParamError> {
    Ok(find_param(uri, name)?.map(|value| value.bytes))
}

/// The one value of query parameter `name`, decoded; see [`single_param_bytes`].
fn find_param(uri: &Uri, name: &str) -> Result<Option<Decoded>, ParamError> {
    let query = uri.query().unwrap_or_default();
    let mut values = query.split('&').filter_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(key).bytes == name.as_bytes()).then(|| form_decode(value))
    });
    let first = values.next();
    if values.next().is_some() {
        return Err(ParamError::Repeated(name.to_owned()));
    }
    Ok(first)
}

/// One key or value of a query string, decoded.
struct Decoded {
    /// The bytes it stands for.
    bytes: Vec<u8>,
    /// Offsets in `bytes` of the spaces that were written `+`.
    plus_spaces: Vec<usize>,
}

/// Decodes a key or value as a form does: `%XX` escapes, and `+` for a space.
fn form_decode(text: &str) -> Decoded {
    let mut decoded = Decoded {
        bytes: Vec::with_capacity(text.len()),
        plus_spaces: Vec::new(),
    };
    for (i, part) in text.split('+').enumerate() {
        if i > 0 {
            decoded.plus_spaces.push(decoded.bytes.len());
            decoded.bytes.push(b' ');
        }
        decoded.bytes.extend(percent_decode(part.as_bytes()));
    }
    decoded
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

    #[test]
    fn text_params_say_which_spaces_were_plus_signs() {
        let text = |query: &str| single_param(&format!("/x?{query}").parse().unwrap(), "d");
        let value = text("d=%C3%A9+a%20b+").unwrap().unwrap();
        assert_eq!(value.text, "é a b ");
        assert_eq!(value.plus_spaces, vec![1, 5], "counted in characters");
        assert_eq!(text("d=%2B1").unwrap().unwrap().plus_spaces, Vec::<usize>::new());
    }
}
