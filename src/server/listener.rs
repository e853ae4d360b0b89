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
//!   their `draining` signal and the [`Registry`]).

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

/// Pause after an accept error that says the process or the system is out of a resource.
const RESOURCE_BACKOFF: Duration = Duration::from_millis(100);
/// At the cap with no idle connection, how often to look again for one that has become idle.
const CAP_RECHECK: Duration = Duration::from_millis(50);

/// One listening socket and the connections taken from it.
pub struct Listener {
    /// Where connections come from; closed when `run` returns.
    pub listener: TcpListener,
    /// What every connection serves.
    pub router: Router,
    /// One permit per connection that may be held: the cap.
    pub slots: Arc<Semaphore>,
    /// The connections held, for evicting idle ones and for the drain.
    pub registry: Arc<Registry>,
    pub timeouts: Timeouts,
    /// Turns true when the server drains: each connection answers what it is serving and closes.
    pub draining: watch::Receiver<bool>,
    /// `public` or `admin`, for the log.
    pub name: &'static str,
}

impl Listener {
    /// Accepts until `stop` resolves. Connection tasks outlive this; see the module doc.
    pub async fn run(self, stop: impl Future<Output = ()>) {
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
            let slot = tokio::select! {
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
            self.draining.clone(),
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
