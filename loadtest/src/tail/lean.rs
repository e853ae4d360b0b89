//! The lean probe: one `GET /testrequest` on a new connection, timed at three points (connect
//! returned, first response byte read, whole response read), with no allocation and six
//! system calls per probe (socket, connect, setsockopt, write, one or two reads, close).
//!
//! Its own cost is measured, not assumed: [`Responder`] is a trivial HTTP responder on a thread
//! of this process; probing it gives the floor that the probe plus the loopback round trip
//! cost, and the probe thread's CPU time per probe is read from the kernel.
//!
//! Failure modes: a refused or reset connection, a response that is not a 200, and no whole
//! response within the limit are reported as [`ProbeError`]; none panics.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The request: a new connection each time, so the client hangs up after the response.
const REQUEST: &[u8] = b"GET /testrequest HTTP/1.1\r\nhost: forkpool\r\n\r\n";
/// What [`Responder`] answers, shaped like the server's /testrequest answer.
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{\"status\":\"ok\"}";
/// Large enough for the whole /testrequest response, so it is read without allocating.
const BUF: usize = 2048;

/// The three times of one probe, each since the probe began.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// `connect` returned (the handshake; on loopback the server's accept is not part of it).
    pub connect: Duration,
    /// The first byte of the response arrived.
    pub first_byte: Duration,
    /// The whole response arrived (the figure a client sees).
    pub total: Duration,
}

/// Why a probe got no whole 200 response.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Connecting, writing or reading failed (refused, reset, timed out).
    #[error("{step}: {source}")]
    Io {
        /// What the probe was doing.
        step: &'static str,
        /// The socket error.
        source: std::io::Error,
    },
    /// The server closed the connection before the whole response.
    #[error("closed mid-response")]
    Closed,
    /// Not a 200, no `content-length`, or a head larger than the buffer.
    #[error("unexpected response")]
    Unexpected,
}

fn io(step: &'static str) -> impl FnOnce(std::io::Error) -> ProbeError {
    move |source| ProbeError::Io { step, source }
}

/// One probe of `addr` on a new connection; `limit` bounds each read.
pub fn probe(addr: SocketAddr, limit: Duration) -> Result<Timing, ProbeError> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).map_err(io("connect"))?;
    let connect = started.elapsed();
    stream
        .set_read_timeout(Some(limit))
        .map_err(io("setsockopt"))?;
    stream.write_all(REQUEST).map_err(io("write"))?;
    let mut buf = [0u8; BUF];
    let mut len = stream.read(&mut buf).map_err(io("read"))?;
    let first_byte = started.elapsed();
    loop {
        match response_complete(&buf[..len])? {
            true => break,
            false if len == BUF => return Err(ProbeError::Unexpected),
            false => {}
        }
        match stream.read(&mut buf[len..]).map_err(io("read"))? {
            0 => return Err(ProbeError::Closed),
            n => len += n,
        }
    }
    Ok(Timing {
        connect,
        first_byte,
        total: started.elapsed(),
    })
}

/// Whether `bytes` hold a whole 200 response with a `content-length` body; an error for any
/// other status or a head without the length. An empty slice is a closed connection.
fn response_complete(bytes: &[u8]) -> Result<bool, ProbeError> {
    if bytes.is_empty() {
        return Err(ProbeError::Closed);
    }
    let Some(head_end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(false);
    };
    let head = &bytes[..head_end];
    if !head.starts_with(b"HTTP/1.1 200") {
        return Err(ProbeError::Unexpected);
    }
    let length = head
        .split(|&b| b == b'\n')
        .find_map(|line| {
            let (name, value) = line.split_at(line.iter().position(|&b| b == b':')?);
            name.eq_ignore_ascii_case(b"content-length").then(|| {
                std::str::from_utf8(&value[1..])
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            })?
        })
        .ok_or(ProbeError::Unexpected)?;
    Ok(bytes.len() >= head_end + 4 + length)
}

/// A trivial HTTP responder on a thread of this process: accept, read the head, answer
/// [`RESPONSE`], hang up. It serves exactly `count` connections and then its thread ends, so
/// it needs no stop signal; [`Responder::join`] waits for that.
pub struct Responder {
    /// Where it listens (127.0.0.1, a free port).
    pub addr: SocketAddr,
    thread: JoinHandle<()>,
}

impl Responder {
    /// Listens on 127.0.0.1 port 0 and serves `count` connections on a new thread.
    pub fn start(count: usize) -> std::io::Result<Responder> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let thread = std::thread::Builder::new()
            .name("lean-responder".into())
            .spawn(move || {
                for conn in listener.incoming().take(count) {
                    // A failed exchange shows as a probe error on the other side.
                    let _ = conn.and_then(answer);
                }
            })?;
        Ok(Responder { addr, thread })
    }

    /// Waits for the thread, which ends after its `count` connections.
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// Reads up to the end of the request head, then writes [`RESPONSE`].
fn answer(mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let (mut buf, mut len) = ([0u8; 1024], 0);
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
        match conn.read(&mut buf[len..])? {
            0 => return Ok(()),
            n => len += n,
        }
    }
    conn.write_all(RESPONSE)
}

/// CPU time this thread has used so far (user and system).
pub fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_the_responder_and_times_in_order() {
        let responder = Responder::start(3).unwrap();
        for _ in 0..3 {
            let t = probe(responder.addr, Duration::from_secs(5)).unwrap();
            assert!(
                t.connect <= t.first_byte && t.first_byte <= t.total,
                "{t:?}"
            );
        }
        responder.join();
    }

    #[test]
    fn parses_whole_and_partial_responses() {
        assert!(response_complete(RESPONSE).unwrap());
        assert!(!response_complete(&RESPONSE[..RESPONSE.len() - 1]).unwrap());
        assert!(!response_complete(b"HTTP/1.1 200 OK\r\ncontent-le").unwrap());
        let lower = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert!(response_complete(lower).unwrap());
        let busy = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";
        assert!(matches!(
            response_complete(busy),
            Err(ProbeError::Unexpected)
        ));
        assert!(matches!(response_complete(b""), Err(ProbeError::Closed)));
    }

    #[test]
    fn a_closed_port_is_an_io_error() {
        // A port bound but not listening refuses connections, and stays ours while the test
        // runs: a listener dropped at once freed its port for the next test to bind (it did,
        // once, and the probe connected and was reset instead).
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let err = probe(addr, Duration::from_secs(1)).unwrap_err();
        assert!(
            matches!(
                err,
                ProbeError::Io {
                    step: "connect",
                    ..
                }
            ),
            "{err}"
        );
    }
}
