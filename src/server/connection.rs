//! One client connection: hyper serves HTTP/1.1 on it, and this module adds the deadlines that
//! hyper does not enforce by itself plus the bookkeeping the listener needs to evict idle
//! connections and to drain.
//!
//! # Phases and deadlines
//! - [`Phase::Head`]: waiting for a complete request head, from the accept or, on a kept-alive
//!   connection, from the first byte of the next request. Closed `--header-timeout` after the
//!   phase began: a client that trickles a header line every few seconds holds a connection for
//!   at most that long.
//! - [`Phase::Active`]: a request is being served. The handler's own limits apply
//!   (`--body-timeout` while it reads the body, `--job-timeout`, `--ls-timeout`), and one of
//!   the connection's: a response write that has made no progress for `--send-timeout` (the
//!   client stopped reading) closes it, so a client that never reads cannot hold a connection
//!   after its handler is done.
//! - [`Phase::Idle`]: kept alive between requests, no byte of the next one yet. Closed
//!   `--keepalive-timeout` after the phase began, or at once when the listener needs the slot.
//!
//! # Drain
//! When the server drains, every response begun from then on says `Connection: close` (a
//! server layer), and hyper closes the connection once it is written. A connection idle for
//! [`DRAIN_IDLE`] closes (one idle for less may have its next request on the way, which is
//! then answered that way). Nothing else is closed by the drain:
//! - One waiting for its head is left to send it: it may have been accepted a moment ago (or
//!   taken from the accept queue as the listener closed) with its request still in the socket
//!   buffer, and closing it would lose that request, which a load balancer cannot retry for a
//!   POST. A silent one still meets its header deadline.
//! - One serving a request is not shut down after its answer (hyper's graceful shutdown): an
//!   answer whose head was written before the drain began (a streamed `/ls`, or any response
//!   on its way out) says nothing of closing, so the client sends its next request on the same
//!   connection, and a close after the answer would meet that request. The connection becomes
//!   idle instead, and the rule for idle ones applies. (With the shutdown, the load tester's
//!   upgrade and restart scenarios lost about one request per handover: the request after a
//!   `/ls` on a kept-alive connection.)
//!
//! hyper's own `header_read_timeout` is not used: hyper starts that timer whenever it waits for
//! a head, idle kept-alive connections included, so it would cut every idle connection at the
//! header timeout instead of the keep-alive timeout.
//!
//! The phase lives in atomics that the connection's reads (`Watched`) and its service (`Serve`,
//! `Tracked`) update as they happen; the connection's task only looks at them when its timer
//! fires. The timer fires at least once per [`Timeouts::shortest`]: a phase that begins after
//! one check ends no earlier than one such period later, so the next check always comes before
//! its deadline and re-arms for it exactly. No request wakes the task just to move a timer.

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, HttpBody};
use axum::http::{Request, Response};
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit};
use tower::Service;

use crate::routes::state::Phase as ServerPhase;
use super::refusal::{Replacement, MAX_HEAD_BYTES};


/// While the server drains, how often a connection looks whether it has been idle long enough
/// to close, in case its last answer did not close it.
const DRAIN_CHECK: Duration = Duration::from_millis(50);

/// While the server drains, how long a kept-alive connection must have been idle before it is
/// closed. One that became idle a moment ago was answered before the drain began (without
/// `Connection: close`), and its client may be sending the next request right now: closing it
/// under that request loses it. Given this long, such a client has sent its request, which is
/// answered with `Connection: close`. A client idle for longer meets the same race as at any
/// keep-alive timeout, which HTTP clients handle by retrying on a new connection.
const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// The connection timeouts, from the command line.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    /// `--header-timeout`: for a complete request head.
    pub header: Duration,
    /// `--keepalive-timeout`: for an idle kept-alive connection; zero turns keep-alive off.
    pub keepalive: Duration,
    /// `--send-timeout`: for a response write that makes no progress.
    pub send: Duration,
}

impl Timeouts {
    /// The shortest time a phase (or a stalled write) with a deadline can last.
    fn shortest(&self) -> Duration {
        let shortest = self.header.min(self.send);
        match self.keepalive.is_zero() {
            true => shortest,
            false => shortest.min(self.keepalive),
        }
    }
}

/// What a connection is doing, as far as its deadlines are concerned. See the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Phase {
    Head = 0,
    Active = 1,
    Idle = 2,
}

/// Shared between a connection's task, its reads, its service and the listener.
pub(super) struct Tracker {
    /// The current [`Phase`] as its `u8`.
    phase: AtomicU8,
    /// When the current phase began, in microseconds since [`epoch`].
    since_micros: AtomicU64,
    /// When a write last found the socket full with nothing written since, in microseconds
    /// since [`epoch`]; 0 while writes make progress.
    write_stalled_micros: AtomicU64,
    /// Notified by the listener to close this (idle) connection and free its slot.
    evict: Notify,
}

/// A fixed point in time that phase timestamps count from, so that they fit an atomic.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_micros() -> u64 {
    epoch().elapsed().as_micros() as u64
}

impl Tracker {
    fn new() -> Tracker {
        let tracker = Tracker {
            phase: AtomicU8::new(Phase::Head as u8),
            since_micros: AtomicU64::new(0),
            write_stalled_micros: AtomicU64::new(0),
            evict: Notify::new(),
        };
        tracker.enter(Phase::Head);
        tracker
    }

    fn enter(&self, phase: Phase) {
        self.since_micros.store(now_micros(), Ordering::Relaxed);
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Records how a write went: stalled (the socket is full) or made progress.
    fn wrote<T>(&self, result: &Poll<io::Result<T>>) {
        match result {
            Poll::Pending => {
                if self.write_stalled_micros.load(Ordering::Relaxed) == 0 {
                    self.write_stalled_micros
                        .store(now_micros().max(1), Ordering::Relaxed);
                }
            }
            Poll::Ready(_) => self.write_stalled_micros.store(0, Ordering::Relaxed),
        }
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Head,
            1 => Phase::Active,
            _ => Phase::Idle,
        }
    }

    fn since(&self) -> Instant {
        epoch() + Duration::from_micros(self.since_micros.load(Ordering::Relaxed))
    }

    /// When this connection must be closed if nothing changes; `None` while a request is
    /// being served and its writes make progress.
    fn deadline(&self, timeouts: &Timeouts) -> Option<Instant> {
        match self.phase() {
            Phase::Head => Some(self.since() + timeouts.header),
            Phase::Idle => Some(self.since() + timeouts.keepalive),
            Phase::Active => match self.write_stalled_micros.load(Ordering::Relaxed) {
                0 => None,
                stalled => Some(epoch() + Duration::from_micros(stalled) + timeouts.send),
            },
        }
    }

    /// Since when this connection has been idle, if it is.
    fn idle_since(&self) -> Option<Instant> {
        (self.phase() == Phase::Idle).then(|| self.since())
    }

    /// Asks the connection to close at once (it is idle: nothing is lost).
    fn evict(&self) {
        self.evict.notify_one();
    }
}

/// The live connections of one listener, for eviction and for the drain.
#[derive(Default)]
pub(super) struct Registry {
    /// Every connection still open, by a number that is never reused.
    connections: Mutex<HashMap<u64, Arc<Tracker>>>,
    next_id: AtomicU64,
    /// Notified whenever the last connection closes, for the drain.
    emptied: Notify,
}

impl Registry {
    /// Registers a new connection. Called by the accept loop before the connection's task is
    /// spawned, not by the task: a drain that finds no connection open must really have none.
    /// (Registered by its task, a connection taken from the accept queue at stop was not yet
    /// counted when the drain looked, so the pool shut while that connection's request was
    /// still to come, and it got a 503 "shutting down": seen in the rolling-restart test.)
    pub(super) fn add(self: &Arc<Self>) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let tracker = Arc::new(Tracker::new());
        self.connections.lock().unwrap().insert(id, tracker.clone());
        Registered {
            registry: self.clone(),
            id,
            tracker,
        }
    }

    /// Closes the connection that has been idle the longest, if any is idle.
    pub(super) fn evict_oldest_idle(&self) {
        let connections = self.connections.lock().unwrap();
        let oldest = connections
            .values()
            .filter_map(|t| t.idle_since().map(|since| (since, t)))
            .min_by_key(|(since, _)| *since);
        if let Some((_, tracker)) = oldest {
            tracker.evict();
        }
    }

    /// Connections still open.
    fn len(&self) -> usize {
        self.connections.lock().unwrap().len()
    }

    /// Resolves once no connection is open.
    pub(super) async fn closed(&self) {
        loop {
            // Enabled before the count is read, so that a last connection closing in between
            // still wakes us (`notify_waiters` only reaches futures already waiting).
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            emptied.as_mut().enable();
            if self.len() == 0 {
                return;
            }
            emptied.await;
        }
    }
}

/// A connection's entry in its [`Registry`], removed when the connection's task ends.
pub(super) struct Registered {
    registry: Arc<Registry>,
    id: u64,
    tracker: Arc<Tracker>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut connections = self.registry.connections.lock().unwrap();
        connections.remove(&self.id);
        if connections.is_empty() {
            self.registry.emptied.notify_waiters();
        }
    }
}

/// Serves one accepted connection until it ends, a deadline passes, the listener evicts it,
/// or (after `draining` turns true) its last request is answered. `slot` is the listener's
/// connection permit, released when this returns.
pub(super) async fn serve(
    stream: TcpStream,
    router: Router,
    timeouts: Timeouts,
    entry: Registered,
    mut phase: watch::Receiver<ServerPhase>,
    slot: OwnedSemaphorePermit,
) {
    let _slot = slot;
    let tracker = entry.tracker.clone();
    let io = TokioIo::new(Watched {
        io: stream,
        tracker: tracker.clone(),
        replacing: None,
    });
    let service = Serve {
        router,
        tracker: tracker.clone(),
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(!timeouts.keepalive.is_zero())
        .max_buf_size(MAX_HEAD_BYTES)
        .max_header_size(MAX_HEAD_BYTES);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut drain_started = false;
    loop {
        // See the module doc (Drain) for what closes a connection while the server drains.
        drain_started = drain_started || *phase.borrow_and_update() >= ServerPhase::Closing;
        if drain_started && tracker.idle_since().is_some_and(|t| t.elapsed() >= DRAIN_IDLE) {
            return;
        }
        // See the module doc for why this period is enough; while draining, an idle
        // connection is looked for more often, as it must close at once.
        let period = match drain_started {
            true => DRAIN_CHECK,
            false => timeouts.shortest(),
        };
        let check = Instant::now() + period;
        let wake = tracker.deadline(&timeouts).map_or(check, |d| d.min(check));
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(wake.into()) => {
                if tracker.deadline(&timeouts).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!(phase = ?tracker.phase(), "connection closed: timeout");
                    return;
                }
            }
            () = tracker.evict.notified() => {
                tracing::debug!("idle connection closed to admit a new one");
                return;
            }
            _ = phase.changed(), if !drain_started => {}
        }
    }
}

/// The socket, with every read that brings bytes to an idle connection starting its next
/// request head (and so the header deadline), every write noted as stalled or not, and hyper's
/// own refusals of a head it cannot parse given the JSON error body ([`Replacement`]).
struct Watched {
    io: TcpStream,
    tracker: Arc<Tracker>,
    /// hyper's refusal being replaced, until the replacement is written.
    replacing: Option<Replacement>,
}

impl Watched {
    /// Writes the replacement of hyper's refusal, if what hyper writes next is one (looked for
    /// only while no request is being served, and only past a glance at `first`, the first
    /// bytes, before `written`, all of them, is asked for); `None` otherwise.
    fn poll_replacing<'a>(
        &mut self,
        cx: &mut Context<'_>,
        first: &[u8],
        written: impl FnOnce() -> Cow<'a, [u8]>,
    ) -> Option<Poll<io::Result<usize>>> {
        let serving = self.tracker.phase() == Phase::Active;
        if self.replacing.is_none() && !serving && Replacement::may_be_one(first) {
            self.replacing = Replacement::of(&written());
        }
        let replacing = self.replacing.as_mut()?;
        let result = replacing.poll_write_to(Pin::new(&mut self.io), cx);
        self.tracker.wrote(&result);
        if result.is_ready() {
            self.replacing = None;
        }
        Some(result)
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before && self.tracker.phase() == Phase::Idle {
            self.tracker.enter(Phase::Head);
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(result) = self.poll_replacing(cx, buf, || buf.into()) {
            return result;
        }
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        self.tracker.wrote(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
        let all = || bufs.iter().flat_map(|b| b.iter().copied()).collect();
        if let Some(result) = self.poll_replacing(cx, first, all) {
            return result;
        }
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.tracker.wrote(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The router as hyper's service for one connection: a request makes the connection active,
/// and the end of its response body makes it idle.
struct Serve {
    router: Router,
    tracker: Arc<Tracker>,
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Tracked>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Serve {
    type Response = Response<Tracked>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, request: Request<Incoming>) -> ResponseFuture {
        self.tracker.enter(Phase::Active);
        let tracker = self.tracker.clone();
        let response = self.router.clone().call(request.map(Body::new));
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| Tracked { body, tracker }))
        })
    }
}

/// A response body that marks its connection idle once hyper is done with it (written in full,
/// or dropped because the connection broke).
struct Tracked {
    body: Body,
    tracker: Arc<Tracker>,
}

impl HttpBody for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.tracker.enter(Phase::Idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::{mpsc, Semaphore};

    /// Reads from `client` until `end` has arrived, or EOF; everything read.
    async fn read_until(client: &mut TcpStream, end: &[u8]) -> Vec<u8> {
        let mut seen = Vec::new();
        let mut chunk = [0u8; 4096];
        while !seen.windows(end.len()).any(|w| w == end) {
            let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut chunk));
            match read.await.expect("an answer within 5 s") {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
        seen
    }

    /// Serves one connection of a router with `/stream` (a body that ends when the returned
    /// sender sends its last chunk and is dropped) and `/next`; the client, and the drain switch.
    async fn one_connection() -> (TcpStream, mpsc::Sender<&'static str>, watch::Sender<ServerPhase>) {
        let (chunks, receiver) = mpsc::channel(1);
        let receiver = Arc::new(Mutex::new(Some(receiver)));
        let stream = move || {
            let receiver = receiver.lock().unwrap().take().expect("one /stream");
            let body = futures_util::stream::unfold(receiver, |mut r| async move {
                let chunk = r.recv().await?;
                Some((Ok::<_, Infallible>(chunk), r))
            });
            async move { Body::from_stream(body) }
        };
        let router = Router::new()
            .route("/stream", get(stream))
            .route("/next", get(|| async { "next" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (phase, receiver) = watch::channel(ServerPhase::Serving);
        let timeouts = Timeouts {
            header: Duration::from_secs(10),
            keepalive: Duration::from_secs(60),
            send: Duration::from_secs(60),
        };
        let registry = Arc::new(Registry::default());
        let slot = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
        let (stream, _) = accepted.unwrap();
        tokio::spawn(serve(stream, router, timeouts, registry.add(), receiver, slot));
        (client.unwrap(), chunks, phase)
    }

    /// A response whose head went out before the drain began says nothing of closing, so its
    /// client sends its next request on the same connection: that request must be answered,
    /// not met by a close (seen as lost requests after /ls, whose head goes out first, in the
    /// load tester's upgrade and restart scenarios).
    #[tokio::test]
    async fn a_response_under_way_when_the_drain_begins_leaves_the_connection_to_the_next_request() {
        let (mut client, chunks, phase) = one_connection().await;
        client
            .write_all(b"GET /stream HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        let head = read_until(&mut client, b"\r\n\r\n").await;
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
        phase.send_replace(ServerPhase::Closing);
        // The connection sees the drain while its response is under way.
        tokio::time::sleep(Duration::from_millis(100)).await;
        chunks.send("last").await.unwrap();
        drop(chunks);
        let rest = read_until(&mut client, b"0\r\n\r\n").await;
        assert!(rest.ends_with(b"0\r\n\r\n"), "{:?}", String::from_utf8_lossy(&rest));
        client
            .write_all(b"GET /next HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        let next = read_until(&mut client, b"next").await;
        let next = String::from_utf8_lossy(&next);
        assert!(next.starts_with("HTTP/1.1 200") && next.ends_with("next"), "{next:?}");
    }
}
