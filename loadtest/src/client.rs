//! A minimal HTTP/1.1 client over hyper's connection API, so that the load test controls
//! exactly when a connection is opened: [`Target::fresh`] connects, sends one request and hangs
//! up; a [`Conn`] is one kept-alive connection reused for many requests.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("no response within {0:?}")]
    Timeout(Duration),
}

/// A finished exchange: status, body and the time from before connect (or send, on a kept-alive
/// connection) to the last byte of the body.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub body: Bytes,
    pub elapsed: Duration,
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
    exchange: impl Future<Output = Result<(StatusCode, Bytes), ClientError>>,
) -> Result<Response, ClientError> {
    let started = Instant::now();
    let (status, body) = tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| ClientError::Timeout(limit))??;
    Ok(Response {
        status,
        body,
        elapsed: started.elapsed(),
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

    async fn send_untimed(&mut self, call: &Call) -> Result<(StatusCode, Bytes), ClientError> {
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
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
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
