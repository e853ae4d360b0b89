//! The latency probe: `GET /testrequest` with a plain blocking socket.
//!
//! Why not the hyper client the other scenarios use: a probe on the load generator's async
//! runtime hops between its threads (the connection task on one, the request on another), and
//! under a saturated CPU each hop waits to be scheduled, so the figure would include the load
//! generator's own scheduling. A blocking exchange on one thread times what a client of the
//! server sees: connect (for a new connection), write the request, read the whole response.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const REQUEST_KEEP_ALIVE: &[u8] = b"GET /testrequest HTTP/1.1\r\nhost: forkpool\r\n\r\n";

/// A kept-alive connection for probes.
pub struct ProbeConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl ProbeConn {
    pub fn open(addr: SocketAddr, limit: Duration) -> std::io::Result<ProbeConn> {
        let stream = TcpStream::connect_timeout(&addr, limit)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(limit))?;
        stream.set_write_timeout(Some(limit))?;
        Ok(ProbeConn {
            stream,
            buf: Vec::with_capacity(1024),
        })
    }

    /// One probe on this connection: the time from writing the request to the last body byte.
    pub fn probe(&mut self) -> Result<Duration, String> {
        let started = Instant::now();
        self.stream
            .write_all(REQUEST_KEEP_ALIVE)
            .map_err(|e| format!("write: {e}"))?;
        self.read_response()?;
        Ok(started.elapsed())
    }

    /// Reads one response with a `content-length` body and checks that it is a 200.
    fn read_response(&mut self) -> Result<(), String> {
        self.buf.clear();
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                if !head.starts_with("http/1.1 200") {
                    return Err(format!(
                        "unexpected response: {}",
                        head.lines().next().unwrap_or("")
                    ));
                }
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or("response without content-length")?;
                if self.buf.len() >= end + 4 + length {
                    return Ok(());
                }
            }
            let n = self
                .stream
                .read(&mut chunk)
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed mid-response".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// One probe on a new connection: connect, request, whole response, hang up.
pub fn probe_new(addr: SocketAddr, limit: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let mut conn = ProbeConn::open(addr, limit).map_err(|e| format!("connect: {e}"))?;
    conn.probe()?;
    Ok(started.elapsed())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
