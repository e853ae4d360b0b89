//! The accept loop: takes connections off a listening socket while fewer than the cap are held,
//! and hands each to its own task ([`connection::serve`]).
//!
//! # Guarantees and failure modes
//! - At most `cap` connections are held. At the cap, the connection idle the longest is closed
//!   to admit the new one; when none is idle, the loop stops accepting, so that new connections
//!   wait in the kernel's listen backlog (and a client's connect times out there, not here).
//! - Accept errors never make a busy loop. Running out of file descriptors or kernel memory
//!   (EMFILE, ENFILE, ENOBUFS, ENOMEM) pauses accepting for [`RESOURCE_BACKOFF`], and such errors
//!   are logged at most once a second with the number that were not logged. Other errors
//!   concern one connection (it was reset before we took it) and are skipped.
//! - Stopping the loop first takes what waits in the accept queue (while slots are free), then
//!   closes the listening socket; the connections held go on (the caller drains them through
//!   their `draining` signal and the [`Registry`]). A connection accepted is served, never
//!   dropped, unless the loop is at the cap when it stops.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use futures_util::FutureExt;
use rustix::io::Errno;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::connection::{self, Registry, Timeouts};
use crate::routes::state::Phase;

/// Pause after an accept error that says the process or the system is out of a resource.
const RESOURCE_BACKOFF: Duration = Duration::from_millis(100);
/// At the cap with no idle connection, how often to look again for one that has become idle.
const CAP_RECHECK: Duration = Duration::from_millis(50);

/// One listening socket and the connections taken from it.
pub(super) struct Listener {
    /// Where connections come from; closed when `run` returns.
    pub listener: TcpListener,
    /// What every connection serves.
    pub router: Router,
    /// One permit per connection that may be held: the cap.
    pub slots: Arc<Semaphore>,
    /// The connections held, for evicting idle ones and for the drain.
    pub registry: Arc<Registry>,
    pub timeouts: Timeouts,
    /// The server's phase, for each connection: from [`Phase::Closing`] on, it answers what it
    /// is serving and closes.
    pub phase: watch::Receiver<Phase>,
    /// `public` or `admin`, for the log.
    pub name: &'static str,
}

impl Listener {
    /// Accepts until `stop` resolves. Connection tasks outlive this; see the module doc.
    pub(super) async fn run(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut errors = ErrorLog::default();
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = &mut stop => return self.serve_queued(),
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    let pause = is_resource_exhaustion(&e);
                    errors.record(self.name, &e);
                    if pause {
                        tokio::time::sleep(RESOURCE_BACKOFF).await;
                    }
                    continue;
                }
            };
            // Biased: with a slot free, the connection just accepted is served even when the
            // loop is told to stop at the same moment; dropped, it would be reset under the
            // request its client has sent (seen in the load tester's restart scenario).
            let slot = tokio::select! {
                biased;
                slot = self.slot() => slot,
                () = &mut stop => return,
            };
            self.spawn(stream, slot);
        }
    }

    fn spawn(&self, stream: TcpStream, slot: OwnedSemaphorePermit) {
        // Small responses go out at once instead of waiting for Nagle's timer.
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection::serve(
            stream,
            self.router.clone(),
            self.timeouts,
            self.registry.add(),
            self.phase.clone(),
            slot,
        ));
    }

    /// Takes the connections already waiting in the accept queue, while slots are free, before
    /// the listening socket closes. Closing it resets them, and a balancer that has already
    /// sent a request on one cannot tell whether it was started, so will not retry a POST.
    fn serve_queued(&self) {
        while let Ok(slot) = self.slots.clone().try_acquire_owned() {
            match self.listener.accept().now_or_never() {
                Some(Ok((stream, _))) => self.spawn(stream, slot),
                _ => return,
            }
        }
    }

    /// A connection permit: at once below the cap; at the cap, by closing the oldest idle
    /// connection, or by waiting for any connection to close.
    async fn slot(&self) -> OwnedSemaphorePermit {
        loop {
            if let Ok(slot) = self.slots.clone().try_acquire_owned() {
                return slot;
            }
            self.registry.evict_oldest_idle();
            let wait = self.slots.clone().acquire_owned();
            if let Ok(slot) = tokio::time::timeout(CAP_RECHECK, wait).await {
                return slot.expect("the connection semaphore is never closed");
            }
        }
    }
}

/// True for accept errors that say a resource ran out, after which an immediate retry would
/// fail again and spin.
fn is_resource_exhaustion(error: &io::Error) -> bool {
    matches!(
        Errno::from_io_error(error),
        Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)
    )
}

/// Accept errors logged at most once a second, with a count of those not logged.
#[derive(Default)]
struct ErrorLog {
    /// When an error was last written to the log.
    last: Option<Instant>,
    /// Errors since then that were not written.
    suppressed: u64,
}

impl ErrorLog {
    fn record(&mut self, listener: &str, error: &io::Error) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut self.suppressed);
        tracing::warn!(listener, error = %error, suppressed, "accept failed");
        self.last = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use axum::routing::get;

    use super::*;

    /// A connection accepted just as the loop is told to stop is served, not dropped (which
    /// resets it under its request). The stop is already signalled and the connection already
    /// queued with its request when the loop starts, so its first `select!` may take either;
    /// before the fix, one round in four took the accept and then the stop, and dropped the
    /// connection. The listening socket is kept open by a copy, as a successor's (or a socket
    /// unit's) keeps it, so a connection the loop leaves queued is not reset either.
    #[tokio::test]
    async fn a_connection_accepted_as_the_loop_stops_is_served() {
        for round in 0..40 {
            let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let _successor = std_listener.try_clone().unwrap();
            std_listener.set_nonblocking(true).unwrap();
            let mut client = std::net::TcpStream::connect(std_listener.local_addr().unwrap()).unwrap();
            client
                .write_all(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
                .unwrap();
            let listener = Listener {
                listener: TcpListener::from_std(std_listener).unwrap(),
                router: Router::new().route("/", get(|| async { "served" })),
                slots: Arc::new(Semaphore::new(4)),
                registry: Arc::new(Registry::default()),
                timeouts: Timeouts {
                    header: Duration::from_secs(10),
                    keepalive: Duration::from_secs(60),
                    send: Duration::from_secs(60),
                },
                phase: watch::channel(Phase::Serving).1,
                name: "test",
            };
            // Lets the runtime learn that the listener is readable.
            tokio::time::sleep(Duration::from_millis(5)).await;
            listener.run(std::future::ready(())).await;
            let answer = tokio::task::spawn_blocking(move || {
                client.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
                let mut answer = Vec::new();
                let read = client.read_to_end(&mut answer);
                (read.map_err(|e| e.kind()), String::from_utf8_lossy(&answer).into_owned())
            });
            match answer.await.unwrap() {
                (Ok(_), text) => assert!(text.ends_with("served"), "round {round}: {text:?}"),
                // Still queued: a successor would take it.
                (Err(io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut), text) => {
                    assert!(text.is_empty(), "round {round}: {text:?}")
                }
                (Err(kind), text) => panic!("round {round}: {kind:?} after {text:?}"),
            }
        }
    }
}
