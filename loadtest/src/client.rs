//! A minimal HTTP/1.1 client over hyper's connection API, so that the load test controls
//! exactly when a connection is opened: [`Target::fresh`] connects, sends one request and hangs
//! up; a [`Conn`] is one kept-alive connection reused for many requests, and a [`KeptAlive`]
//! client reopens it when the server closed it (`Connection: close`) or it broke, as any HTTP
//! client does. [`ClientError::class`] names what went wrong in the terms of the lifecycle
//! report (refused, reset, closed before the response).

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting failed (with `source`, e.g. the connection was refused).
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The exchange failed after the connection was open.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// No whole response within the limit.
    #[error("no response within {0:?}")]
    Timeout(Duration),
}

/// What kind of failure a [`ClientError`] is, as a client of the server sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// The connection was refused: nothing listened.
    Refused,
    /// The connection was reset (RST), at connect or during the exchange.
    Reset,
    /// A kept-alive connection was found closed by the server before the request was sent
    /// (nothing of it left the client).
    ClosedBeforeSend,
    /// The server closed the connection after the request was sent, before the whole response.
    ClosedBeforeResponse,
    /// No response within the limit.
    Timeout,
    /// Anything else (a protocol error, another socket error).
    Other,
}

impl ClientError {
    /// Classifies the failure by the socket error under it, if any.
    pub fn class(&self) -> FailureClass {
        let io_kind = |e: &(dyn std::error::Error + 'static)| {
            let mut source = Some(e);
            while let Some(e) = source {
                if let Some(io) = e.downcast_ref::<std::io::Error>() {
                    return Some(io.kind());
                }
                source = e.source();
            }
            None
        };
        let kind = match self {
            ClientError::Connect { source, .. } => Some(source.kind()),
            ClientError::Http(e) => io_kind(e),
            ClientError::Timeout(_) => return FailureClass::Timeout,
        };
        match (kind, self) {
            (Some(std::io::ErrorKind::ConnectionRefused), _) => FailureClass::Refused,
            (Some(std::io::ErrorKind::ConnectionReset), _) => FailureClass::Reset,
            (_, ClientError::Http(e)) if e.is_closed() || e.is_canceled() => {
                FailureClass::ClosedBeforeSend
            }
            (_, ClientError::Http(e)) if e.is_incomplete_message() => {
                FailureClass::ClosedBeforeResponse
            }
            _ => FailureClass::Other,
        }
    }
}

/// A finished exchange: status, body and the time from before connect (or send, on a kept-alive
/// connection) to the last byte of the body.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub body: Bytes,
    pub elapsed: Duration,
    /// The server said `Connection: close`: it closes the connection after this response.
    pub close: bool,
}

/// One request to send: method, path with query, optional JSON body.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub json: Option<Bytes>,
}

impl Call {
    pub fn get(path: impl Into<String>) -> Call {
        Call {
            method: Method::GET,
            path: path.into(),
            json: None,
        }
    }

    pub fn post_json(path: impl Into<String>, body: impl Into<Bytes>) -> Call {
        Call {
            method: Method::POST,
            path: path.into(),
            json: Some(body.into()),
        }
    }
}

/// The server under test: a socket address on loopback.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub addr: SocketAddr,
}

impl Target {
    /// Parses `http://HOST:PORT[/]`. Only plain HTTP to a loopback address is accepted: this
    /// program generates load and must never point it elsewhere.
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("--url {url}: only http:// URLs are supported"))?;
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') {
            return Err(format!("--url {url}: give only scheme, host and port"));
        }
        let authority = authority.replacen("localhost:", "127.0.0.1:", 1);
        let addr: SocketAddr = authority.parse().map_err(|_| {
            format!("--url {url}: expected http://IP:PORT, e.g. http://127.0.0.1:3636")
        })?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "--url {url}: the load test only targets loopback addresses"
            ));
        }
        Ok(Target { addr })
    }

    /// Connect, one request, read the whole body, hang up; timed as a whole.
    pub async fn fresh(&self, call: &Call, limit: Duration) -> Result<Response, ClientError> {
        timed(limit, async {
            let mut conn = Conn::open(*self).await?;
            conn.send_untimed(call).await
        })
        .await
    }

    /// GET on a fresh connection, as JSON.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, String> {
        let response = self
            .fresh(&Call::get(path), Duration::from_secs(10))
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        if response.status != StatusCode::OK {
            return Err(format!("GET {path}: status {}", response.status));
        }
        serde_json::from_slice(&response.body).map_err(|e| format!("GET {path}: not JSON: {e}"))
    }
}

/// Runs one exchange under `limit` and times it as a whole.
async fn timed(
    limit: Duration,
    exchange: impl Future<Output = Result<Response, ClientError>>,
) -> Result<Response, ClientError> {
    let started = Instant::now();
    let response = tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| ClientError::Timeout(limit))??;
    Ok(Response {
        elapsed: started.elapsed(),
        ..response
    })
}

/// One kept-alive HTTP/1.1 connection.
pub struct Conn {
    target: Target,
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn open(target: Target) -> Result<Conn, ClientError> {
        let stream =
            TcpStream::connect(target.addr)
                .await
                .map_err(|source| ClientError::Connect {
                    addr: target.addr,
                    source,
                })?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        // Drives the connection; ends when `sender` is dropped or the server hangs up.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn { target, sender })
    }

    /// Sends `call` and reads the whole body; timed from send to the last byte.
    pub async fn send(&mut self, call: &Call, limit: Duration) -> Result<Response, ClientError> {
        timed(limit, self.send_untimed(call)).await
    }

    /// The exchange; `elapsed` is left zero for [`timed`] to fill in.
    async fn send_untimed(&mut self, call: &Call) -> Result<Response, ClientError> {
        let mut request = hyper::Request::builder()
            .method(call.method.clone())
            .uri(call.path.as_str())
            .header(HOST, self.target.addr.to_string());
        if call.json.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let body = Full::new(call.json.clone().unwrap_or_default());
        let request = request
            .body(body)
            .expect("method, path and headers are valid");
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let close = response
            .headers()
            .get(CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Response {
            status,
            body,
            elapsed: Duration::ZERO,
            close,
        })
    }
}

/// A client on one kept-alive connection, opened when first needed and opened again after the
/// server closed it (`Connection: close`) or the exchange failed.
pub struct KeptAlive {
    /// Where to connect.
    target: Target,
    /// The open connection, if any.
    conn: Option<Conn>,
}

impl KeptAlive {
    pub fn new(target: Target) -> KeptAlive {
        KeptAlive { target, conn: None }
    }

    /// Sends `call` on the kept-alive connection (opening one if needed); timed from send to
    /// the last byte, the connect not included.
    pub async fn send(&mut self, call: &Call, limit: Duration) -> Result<Response, ClientError> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(Conn::open(self.target).await?),
        };
        let result = conn.send(call, limit).await;
        if result.as_ref().map_or(true, |r| r.close) {
            self.conn = None;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_http_urls() {
        assert_eq!(
            Target::parse("http://127.0.0.1:3636").unwrap().addr,
            "127.0.0.1:3636".parse().unwrap()
        );
        assert!(Target::parse("http://localhost:80/").is_ok());
        assert!(Target::parse("http://[::1]:3636").is_ok());
        assert!(Target::parse("https://127.0.0.1:3636").is_err());
        assert!(Target::parse("http://10.0.0.1:3636").is_err());
        assert!(Target::parse("http://127.0.0.1:3636/x").is_err());
    }
}
