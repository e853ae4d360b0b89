//! Supervision of one `ls` process: spawn it, stream its stdout as the response body, and make
//! sure it is killed, reaped and accounted for whatever the client does.
//!
//! # Design
//!
//! [`Supervisors::spawn`] starts the child, on a thread and runtime of their own that run
//! every listing's `ls` at a low priority (see [`Supervisors`] for why), and hands it to a
//! *supervisor* task, which owns the child, its stdout, the [`Admission`] (the
//! `--ls-max-concurrent` slot and the turn to run) and the deadline. The response body only
//! receives chunks from the supervisor through a bounded channel ([`CHANNEL`] chunks). So the
//! deadline does not depend on the client: when it passes, the supervisor kills and reaps `ls`
//! and releases the admission at once, even if the client has stopped reading and hyper is
//! not polling the body. Reads are ~64 KiB chunks (after a small read, once more [`COALESCE`]
//! later, so that `ls`'s 4 KiB writes travel as fewer, larger chunks), passed through [`Rows`]
//! (complete lines only, symlink targets rewritten: see `symlinks`). Backpressure is end to
//! end: a slow client leaves the channel full, the supervisor stops reading, the pipe fills and
//! `ls` blocks in `write`.
//!
//! The child runs in the listed directory (`fchdir` to an fd in `pre_exec`, see `confine`),
//! in its own process group (a terminal's Ctrl-C reaches the server, which decides), at nice
//! [`LS_NICE`], in the idle I/O class and under `SCHED_IDLE`: it uses only CPU and disk time
//! that the server and its clients leave over (see the README for the measurement).
//!
//! # Failure modes
//!
//! The handler sends the 200 head with the first piece of the body, so a listing that ends
//! before `ls` has written anything (killed at the deadline, failed at once) is still a JSON
//! error. Once the head is sent, a status can no longer change, so a failure must still never
//! look like a complete listing: every failure makes the body yield an error, on which hyper
//! drops the connection without the final zero-size chunk, and the client sees an incomplete
//! transfer. The body ends cleanly only on an explicit end-of-listing from the supervisor; a
//! supervisor that vanished without one (a panic, a runtime going down) is an error too.
//! - `ls` exits 0, or 1 (GNU's minor trouble: an entry vanished while the directory was
//!   listed, see [`MINOR_TROUBLE`]; logged as a warning and counted as `ok_with_warnings`):
//!   the body ends cleanly. Any other exit, even after all its output: abort.
//! - `--ls-timeout` (counted from the admission, so a wait for a turn counts) expires: `ls`
//!   is killed and reaped and the admission released at that moment; the client gets what
//!   was already queued, then the abort, when (if ever) it reads on (or a 504 if nothing had
//!   been written). A client that never reads keeps only its connection (no process, no slot)
//!   until it leaves or the connection layer closes it.
//! - `--ls-idle-timeout` (when set) passes with nothing read from `ls`, counted from its
//!   start and again from each read: `ls` is killed, reaped and counted as `idle_timeout`,
//!   and the body ends as at the deadline (a 504 if nothing had been written). Only time spent
//!   waiting on `ls` counts: while the client is slow to read (the channel full), `ls` blocked
//!   in `write` is not idle, so a listing that keeps writing is never cut by this bound.
//! - The client hangs up: hyper drops the body, the channel closes, and the supervisor kills
//!   and reaps `ls` at once, with its exit status in the log.
//! - The server dies (even by SIGKILL): `ls` gets SIGKILL through `PR_SET_PDEATHSIG`. A broken
//!   pipe would end it only at its next write, and `ls -l` of a huge directory writes nothing
//!   until it has read and sorted every entry. The signal fires when the *thread* that forked
//!   the child exits; that is the [`Supervisors`] thread, which lives as long as the server.
//!   `kill_on_drop` stays set as the last resort for a runtime shutting down.
//!
//! The slot and the turn are released only once the child is reaped, so the caps count
//! processes that really exist. stderr is drained by its own task into a buffer capped at
//! [`STDERR_CAP`] (the rest is read and discarded, so `ls` can never block on a full stderr
//! pipe) and logged with the exit status.

use std::io;
use std::os::fd::OwnedFd;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use axum::body::Bytes;
use bytes::BytesMut;
use futures_util::{stream, FutureExt, Stream};
use rustix::process::Signal;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::symlinks::Rows;
use crate::telemetry;
use super::{count, LsError};

/// Size of the read buffer for `ls`'s stdout; one read becomes one body chunk.
const CHUNK: usize = 64 * 1024;
/// How long a small read waits for more output to join its chunk.
const COALESCE: Duration = Duration::from_millis(2);
/// Capacity asked for the pipe from `ls` (Linux's default ceiling for unprivileged users).
const PIPE_SIZE: usize = 1 << 20;
/// A new buffer is taken when less than this is left in the current one. Chunks already handed
/// on share the old buffer until written, so it is freed (or reused) once they are.
const MIN_READ: usize = 16 * 1024;
/// Chunks queued between the supervisor and the body: enough to keep both busy, small enough
/// that a stalled client holds little memory.
const CHANNEL: usize = 2;
/// How much of `ls`'s stderr is kept for the log.
const STDERR_CAP: usize = 4 * 1024;
/// GNU `ls`'s exit status for minor problems, "e.g., cannot access subdirectory": an entry
/// that vanished between `readdir` and `lstat` in a directory that changes while listed. The
/// listing of everything else is complete. (2 is serious trouble, e.g. the directory itself.)
const MINOR_TROUBLE: i32 = 1;
/// Nice value of `ls` (the lowest priority).
const LS_NICE: i32 = 19;
/// Nice value of the supervisors' thread: below the front end, above `ls`'s idle class, so
/// that deadlines are kept even while `ls` gets no CPU.
const SUPERVISOR_NICE: i32 = 19;
/// `ioprio_set` constants from linux/ioprio.h (the libc crate does not carry them).
const IOPRIO_WHO_PROCESS: libc::c_int = 1;
const IOPRIO_CLASS_IDLE: libc::c_int = 3;
const IOPRIO_CLASS_SHIFT: libc::c_int = 13;

/// How a listing ended, for the log and the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// `ls` exited 0.
    Ok,
    /// `ls` exited 1, GNU's "minor problems" (an entry vanished or could not be examined
    /// while listed): the listing is complete, with a warning in the log.
    Warned,
    /// `ls` exited otherwise (2: serious trouble, or a signal), or its output was unreadable.
    Failed,
    /// `--ls-timeout` expired.
    Timeout,
    /// `ls` wrote nothing for `--ls-idle-timeout`.
    Stalled,
    /// The client hung up.
    Cancelled,
}

impl Outcome {
    /// The `outcome` label of `forkpool_ls_total`.
    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Warned => "ok_with_warnings",
            Outcome::Failed => "failed",
            Outcome::Timeout => "timeout",
            Outcome::Stalled => "idle_timeout",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// How a listing whose `ls` exited with `status` after all its output ended.
    fn of_exit(status: ExitStatus) -> Outcome {
        match status.code() {
            Some(0) => Outcome::Ok,
            Some(MINOR_TROUBLE) => Outcome::Warned,
            _ => Outcome::Failed,
        }
    }
}

/// What the supervisor sends to the body.
enum Piece {
    Chunk(Bytes),
    /// `ls` exited 0 (or 1: see [`MINOR_TROUBLE`]) after all its output: the body may end
    /// cleanly.
    End,
    /// The listing broke off; the body ends with this error.
    Error(LsError),
}

/// Why the supervisor stopped pumping.
enum Ending {
    /// stdout reached EOF and the child was reaped (or reaping failed).
    Exited(io::Result<ExitStatus>),
    ReadFailed(io::Error),
    Timeout,
    /// Nothing to read for `--ls-idle-timeout`.
    Stalled(Duration),
    /// The body was dropped: the client hung up (or the server is going down).
    HungUp,
}

/// What a listing holds to run `ls`; both are released once `ls` is reaped.
pub(super) struct Admission {
    /// Its `--ls-max-concurrent` slot.
    slot: OwnedSemaphorePermit,
    /// Its turn among the `ls` processes allowed to run at once (see the parent module).
    turn: OwnedSemaphorePermit,
}

impl Admission {
    /// A listing's slot and turn, held together until its `ls` is reaped.
    pub(super) fn new(slot: OwnedSemaphorePermit, turn: OwnedSemaphorePermit) -> Admission {
        Admission { slot, turn }
    }

    /// Frees the slot and the turn (for the next listing waiting for one).
    fn release(self) {
        let Admission { slot, turn } = self;
        drop((slot, turn));
    }
}

/// One `ls` process until it is reaped, with what is needed to account for it afterwards.
struct Run {
    child: Child,
    /// The task draining stderr; yields what it kept.
    stderr: JoinHandle<Vec<u8>>,
    /// Released in `finish`, i.e. after the child is reaped.
    admission: Admission,
    /// For the log line.
    request_id: String,
    /// `directory` as asked, for the log line.
    directory: String,
    /// When `ls` was spawned (its turn came).
    started: Instant,
    /// Bytes of stdout handed to the body so far.
    bytes: u64,
}

/// Everything one listing needs to run `ls`.
pub(super) struct Launch {
    /// The `ls` command line and environment.
    pub command: Command,
    /// The directory `ls` runs in.
    pub cwd: OwnedFd,
    /// What rewrites the rows' symlink targets on their way to the body.
    pub rows: Rows,
    /// Held until `ls` is reaped.
    pub admission: Admission,
    /// When `ls` is killed, whatever the client does.
    pub deadline: Instant,
    /// `--ls-timeout`, which the error at the deadline names.
    pub timeout: Duration,
    /// `--ls-idle-timeout`: longest wait for `ls` to write something, if bounded.
    pub idle: Option<Duration>,
    /// For the log lines.
    pub request_id: String,
    /// `directory` as asked, for the log lines.
    pub directory: String,
}

/// The thread that runs every listing's `ls`: it forks them, reads their pipes and keeps
/// their deadlines, on a single-threaded runtime of its own at nice [`SUPERVISOR_NICE`].
///
/// Why a thread of its own: `ls` writes 4 KiB at a time and every write wakes whichever
/// thread's epoll has the pipe registered, over a thousand times for a 6 MB listing. On the
/// server's runtime those wake-ups were the front end's threads' CPU time, and every
/// millisecond a nice-0 thread runs while idle-class `ls` processes wait is repaid, under
/// EEVDF, as a delay when it next wakes (a new connection then waited 3-5 ms, once 60 ms, for
/// its turn). Here they land on a low-weight thread; the front end only sees one wake-up per
/// chunk of up to [`CHUNK`] bytes, from the channel that feeds the body.
///
/// The thread lives as long as the process: it is the parent thread that
/// `PR_SET_PDEATHSIG` watches, so its exit would kill every `ls`.
#[derive(Debug, Clone)]
pub(super) struct Supervisors {
    /// The runtime on that thread.
    handle: tokio::runtime::Handle,
}

impl Supervisors {
    /// Starts the thread and its runtime.
    pub(super) fn start() -> io::Result<Supervisors> {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("ls-supervisor".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                let runtime = match runtime {
                    Ok(runtime) => runtime,
                    Err(e) => return drop(sender.send(Err(e))),
                };
                // This thread only: on Linux the nice value is per thread, and `None` (0) is
                // the calling one. Best effort: at worst it competes with the front end as
                // the server's own runtime did.
                let _ = rustix::process::setpriority_process(None, SUPERVISOR_NICE);
                let _ = sender.send(Ok(runtime.handle().clone()));
                runtime.block_on(std::future::pending::<()>());
            })?;
        let handle = receiver.recv().map_err(io::Error::other)??;
        Ok(Supervisors { handle })
    }

    /// Spawns `ls` on the supervisors' thread and returns the response body, which a
    /// supervisor task feeds until the deadline at most; see the module doc. An error here
    /// comes before any response.
    pub(super) async fn spawn(
        &self,
        launch: Launch,
    ) -> Result<impl Stream<Item = Result<Bytes, LsError>> + Send + 'static, LsError> {
        // If the handler is dropped meanwhile, the receiver is dropped with the join handle's
        // output, and the supervisor kills `ls` as for any client that hung up.
        let receiver = self
            .handle
            .spawn(async move { spawn(launch) })
            .await
            .map_err(|_| LsError::Lost)??;
        Ok(body(receiver))
    }
}

/// Spawns `ls` and its supervisor task on the current (the supervisors') runtime; returns the
/// channel the supervisor feeds.
fn spawn(launch: Launch) -> Result<mpsc::Receiver<Piece>, LsError> {
    let Launch {
        mut command,
        cwd,
        rows,
        admission,
        deadline,
        timeout,
        idle,
        request_id,
        directory,
    } = launch;
    // SAFETY: between fork and exec the closure makes only system calls (prctl, fchdir,
    // setpriority, ioprio_set, sched_setscheduler) and reads errno; none allocates or takes a
    // lock. `cwd` is owned by the closure, so the fd is open in the forked child.
    unsafe {
        command.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            rustix::process::fchdir(&cwd)?;
            lower_priority()
        });
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
        .map_err(LsError::Spawn)?;
    let started = Instant::now();
    metrics::gauge!(telemetry::LS_RUNNING).increment(1.0);
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        unreachable!("both are piped above");
    };
    // A 1 MiB pipe instead of 64 KiB: `ls` rarely waits for us, and each wake-up finds
    // more to read, so a big listing costs fewer, larger chunks. Best effort.
    let _ = rustix::pipe::fcntl_setpipe_size(&stdout, PIPE_SIZE);
    tracing::debug!(request_id, directory, pid = child.id(), "ls started");
    let run = Run {
        child,
        stderr: tokio::spawn(drain(stderr)),
        admission,
        request_id,
        directory,
        started,
        bytes: 0,
    };
    let (sender, receiver) = mpsc::channel(CHANNEL);
    let limits = Limits {
        deadline,
        timeout,
        idle,
    };
    tokio::spawn(supervise(run, stdout, rows, sender, limits));
    Ok(receiver)
}

/// Lowers the CPU and I/O priority of the calling process; runs between fork and exec, so it
/// only makes system calls.
fn lower_priority() -> io::Result<()> {
    rustix::process::setpriority_process(None, LS_NICE)?;
    let idle = IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT;
    // SAFETY: ioprio_set takes three integers and touches no memory of ours.
    if unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, idle) } == -1 {
        return Err(io::Error::last_os_error());
    }
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call; pid 0 is this process.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The body: chunks until the supervisor says how the listing ended.
fn body(
    receiver: mpsc::Receiver<Piece>,
) -> impl Stream<Item = Result<Bytes, LsError>> + Send + 'static {
    stream::unfold(Some(receiver), |receiver| async move {
        let mut receiver = receiver?;
        match receiver.recv().await {
            Some(Piece::Chunk(chunk)) => Some((Ok(chunk), Some(receiver))),
            Some(Piece::End) => None,
            Some(Piece::Error(e)) => Some((Err(e), None)),
            None => Some((Err(LsError::Lost), None)),
        }
    })
}

/// When the supervisor gives up on `ls`.
struct Limits {
    /// The whole listing's deadline.
    deadline: Instant,
    /// `--ls-timeout`, for the error at the deadline.
    timeout: Duration,
    /// `--ls-idle-timeout`, if set.
    idle: Option<Duration>,
}

/// Owns the listing from spawn to reaping: pumps stdout into the channel until EOF, the
/// deadline or the client's hang-up, whichever comes first, then settles the child.
async fn supervise(
    mut run: Run,
    mut stdout: ChildStdout,
    mut rows: Rows,
    sender: mpsc::Sender<Piece>,
    limits: Limits,
) {
    let ending = tokio::select! {
        biased;
        () = tokio::time::sleep_until(limits.deadline) => Ending::Timeout,
        () = sender.closed() => Ending::HungUp,
        ending = pump(&mut run, &mut stdout, &mut rows, &sender, limits.idle) => ending,
    };
    let (outcome, status, last) = match ending {
        Ending::Exited(Ok(status)) => match Outcome::of_exit(status) {
            Outcome::Failed => (
                Outcome::Failed,
                Ok(status),
                Piece::Error(LsError::Failed(status)),
            ),
            complete => (complete, Ok(status), Piece::End),
        },
        Ending::Exited(Err(e)) => {
            let error = LsError::Read(io::Error::new(e.kind(), e.to_string()));
            (Outcome::Failed, Err(e), Piece::Error(error))
        }
        Ending::ReadFailed(e) => {
            let status = kill(&mut run.child).await;
            (Outcome::Failed, status, Piece::Error(LsError::Read(e)))
        }
        Ending::Timeout => {
            let status = kill(&mut run.child).await;
            let error = LsError::Timeout(limits.timeout);
            (Outcome::Timeout, status, Piece::Error(error))
        }
        Ending::Stalled(idle) => {
            let status = kill(&mut run.child).await;
            (Outcome::Stalled, status, Piece::Error(LsError::Stalled(idle)))
        }
        Ending::HungUp => {
            let status = kill(&mut run.child).await;
            run.finish(Outcome::Cancelled, status).await;
            return;
        }
    };
    run.finish(outcome, status).await;
    // Only now, with `ls` gone and its slot free, wait for room in the channel: a client that
    // does not read keeps this small task, nothing else. It ends when the body is dropped.
    let _ = sender.send(last).await;
}

/// Moves stdout into the channel through `rows` (complete rows, their symlink targets
/// rewritten), one reserved slot per chunk, until EOF (then reaps the child), a failure or,
/// with `idle`, a read that waited that long for anything. Only the read is bounded, not the
/// wait for room in the channel: `ls` blocked on a slow client is not idle.
async fn pump(
    run: &mut Run,
    stdout: &mut ChildStdout,
    rows: &mut Rows,
    sender: &mpsc::Sender<Piece>,
    idle: Option<Duration>,
) -> Ending {
    let mut buffer = BytesMut::new();
    loop {
        let Ok(slot) = sender.reserve().await else {
            return Ending::HungUp;
        };
        let read = read_chunk(stdout, &mut buffer);
        let read = match idle {
            Some(idle) => match tokio::time::timeout(idle, read).await {
                Ok(read) => read,
                Err(_) => return Ending::Stalled(idle),
            },
            None => read.await,
        };
        let (chunk, ending) = match read {
            Ok(Some(chunk)) => (rows.feed(chunk), None),
            Ok(None) => (rows.finish(), Some(Ending::Exited(run.child.wait().await))),
            Err(e) => return Ending::ReadFailed(e),
        };
        if let Some(chunk) = chunk {
            run.bytes += chunk.len() as u64;
            slot.send(Piece::Chunk(chunk));
        }
        if let Some(ending) = ending {
            return ending;
        }
    }
}

/// The next piece of stdout; `None` at EOF.
async fn read_chunk(stdout: &mut ChildStdout, buffer: &mut BytesMut) -> io::Result<Option<Bytes>> {
    if buffer.capacity() - buffer.len() < MIN_READ {
        buffer.reserve(CHUNK);
    }
    let mut n = stdout.read_buf(buffer).await?;
    if n == 0 {
        return Ok(None);
    }
    // `ls` writes 4 KiB at a time, and each write would wake us for a chunk of its own.
    // Gathering what it writes in the next two milliseconds into the same chunk cuts wake-ups,
    // syscalls and chunk headers several-fold on a big listing, for at most that delay.
    // `read_buf` is cancel-safe, so polling it once and dropping it loses nothing.
    if n < MIN_READ {
        tokio::time::sleep(COALESCE).await;
        if let Some(Ok(more)) = stdout.read_buf(buffer).now_or_never() {
            n += more;
        }
    }
    debug_assert_eq!(n, buffer.len());
    Ok(Some(buffer.split().freeze()))
}

/// Kills and reaps the child. An error from the kill means it has exited already; `wait`
/// reaps it either way.
async fn kill(child: &mut Child) -> io::Result<ExitStatus> {
    let _ = child.start_kill();
    child.wait().await
}

impl Run {
    /// Releases the slot, then writes the metrics and the log line of a reaped child.
    async fn finish(self, outcome: Outcome, status: io::Result<ExitStatus>) {
        let Run {
            stderr,
            admission,
            request_id,
            directory,
            started,
            bytes,
            ..
        } = self;
        admission.release();
        metrics::gauge!(telemetry::LS_RUNNING).decrement(1.0);
        count(outcome.label());
        // The child is gone, so its stderr is at EOF; the bound only guards against a
        // grandchild that kept the pipe open.
        let stderr = tokio::time::timeout(Duration::from_secs(1), stderr)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let stderr = String::from_utf8_lossy(&stderr);
        let stderr = stderr.trim_end();
        let status = match &status {
            Ok(status) => status.to_string(),
            Err(e) => format!("unknown ({e})"),
        };
        let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
        macro_rules! log {
            ($level:ident, $message:literal) => {
                tracing::$level!(request_id, directory, %status, bytes, elapsed_ms, stderr, $message)
            };
        }
        match outcome {
            // Info like the rest: the request line is written when the head goes out, so
            // only this line has the exit status, the size and the time of the whole listing.
            Outcome::Ok => log!(info, "ls finished"),
            Outcome::Warned => log!(
                warn,
                "ls finished with warnings (an entry vanished or could not be examined while \
                 listed); the listing is complete"
            ),
            Outcome::Cancelled => log!(info, "ls killed: client went away"),
            Outcome::Timeout => log!(warn, "ls killed: --ls-timeout expired"),
            Outcome::Stalled => log!(warn, "ls killed: wrote nothing for --ls-idle-timeout"),
            Outcome::Failed => log!(warn, "ls failed"),
        }
    }
}

/// Reads `ls`'s stderr to EOF, keeping the first [`STDERR_CAP`] bytes.
async fn drain(mut stderr: ChildStderr) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut scratch = [0u8; 1024];
    loop {
        match stderr.read(&mut scratch).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = STDERR_CAP - kept.len();
                kept.extend_from_slice(&scratch[..n.min(room)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::sync::{Arc, LazyLock};
    use tokio::sync::Semaphore;

    static SUPERVISORS: LazyLock<Supervisors> = LazyLock::new(|| Supervisors::start().unwrap());

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Runs `sh -c script` in a fresh temp dir; returns its output, how it ended and whether
    /// the slot and the turn were both free again by then.
    async fn collect(script: &str, timeout: Duration) -> (Vec<u8>, Option<LsError>, bool) {
        collect_with(script, timeout, None).await
    }

    /// [`collect`] with `--ls-idle-timeout` `idle`.
    async fn collect_with(
        script: &str,
        timeout: Duration,
        idle: Option<Duration>,
    ) -> (Vec<u8>, Option<LsError>, bool) {
        let slots = Arc::new(Semaphore::new(2));
        let admission = Admission::new(
            slots.clone().try_acquire_owned().unwrap(),
            slots.clone().try_acquire_owned().unwrap(),
        );
        let dir = tempfile::tempdir().unwrap();
        let cwd = rustix::fs::open(dir.path(), rustix::fs::OFlags::PATH, 0.into()).unwrap();
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        let launch = Launch {
            command,
            cwd,
            rows: Rows::new(None),
            admission,
            deadline: Instant::now() + timeout,
            timeout,
            idle,
            request_id: "t".into(),
            directory: "d".into(),
        };
        let body = SUPERVISORS.spawn(launch).await.unwrap();
        let mut body = std::pin::pin!(body);
        let mut output = Vec::new();
        while let Some(item) = body.next().await {
            match item {
                Ok(chunk) => output.extend_from_slice(&chunk),
                Err(e) => {
                    assert!(body.next().await.is_none(), "nothing after an error");
                    return (output, Some(e), slots.available_permits() == 2);
                }
            }
        }
        (output, None, slots.available_permits() == 2)
    }

    #[test]
    fn exit_status_decides_how_the_body_ends() {
        runtime().block_on(async {
            let long = Duration::from_secs(10);
            let (body, error, free) = collect("echo hello", long).await;
            assert_eq!(body, b"hello\n");
            assert!(error.is_none() && free);

            // Exit 1 is GNU's minor trouble: the listing is complete.
            let (body, error, free) = collect("echo whole; exit 1", long).await;
            assert_eq!(body, b"whole\n");
            assert!(error.is_none() && free, "{error:?}");

            let (body, error, free) = collect("echo partial; exit 2", long).await;
            assert_eq!(body, b"partial\n");
            assert!(matches!(error, Some(LsError::Failed(_))), "{error:?}");
            assert!(free);

            let (_, error, free) =
                collect("echo start; exec sleep 30", Duration::from_millis(200)).await;
            assert!(matches!(error, Some(LsError::Timeout(_))), "{error:?}");
            assert!(free);
        });
    }

    #[test]
    fn silence_past_the_idle_bound_kills_and_steady_output_does_not() {
        runtime().block_on(async {
            // Far above the gaps: `ls` runs at idle priority, and may wait for a CPU. (At 1 s,
            // a machine busy on every core kept the child from writing `start` in time.)
            let (long, idle) = (Duration::from_secs(10), Some(Duration::from_secs(3)));
            let (body, error, free) = collect_with("echo start; exec sleep 30", long, idle).await;
            assert_eq!(body, b"start\n");
            assert!(matches!(error, Some(LsError::Stalled(_))), "{error:?}");
            assert!(free);

            // Forty gaps of 100 ms: longer than the idle bound in all, never in one gap.
            let steady = "for i in $(seq 40); do echo $i; sleep 0.1; done";
            let (body, error, _) = collect_with(steady, long, idle).await;
            assert!(error.is_none(), "{error:?}");
            assert_eq!(body.iter().filter(|&&b| b == b'\n').count(), 40);
        });
    }

    #[test]
    fn the_child_runs_in_the_given_directory_at_idle_priority() {
        runtime().block_on(async {
            let script = "pwd; cut -d' ' -f19 /proc/self/stat; ionice -p $$ 2>/dev/null || true";
            let (body, error, _) = collect(script, Duration::from_secs(10)).await;
            assert!(error.is_none(), "{error:?}");
            let text = String::from_utf8(body).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            assert!(lines[0].contains("/tmp"), "{text}");
            assert_eq!(lines[1], "19", "nice: {text}");
            if let Some(class) = lines.get(2) {
                assert_eq!(*class, "idle", "{text}");
            }
        });
    }

    #[test]
    fn stderr_is_drained_past_the_cap() {
        runtime().block_on(async {
            // 1 MiB on stderr would block a child whose stderr nobody reads.
            let script = "head -c 1048576 /dev/zero >&2; echo done";
            let (body, error, _) = collect(script, Duration::from_secs(10)).await;
            assert_eq!(body, b"done\n");
            assert!(error.is_none());
        });
    }
}
