//! `/ls?directory=D`: streams `ls -lash -- <path>` of a directory confined to `--ls-root`.
//!
//! # Design
//!
//! The request is decided in two phases.
//!
//! 1. **Before the response starts** (everything here is a JSON error): `D` is checked (one
//!    value, at most [`MAX_DIRECTORY_LEN`] bytes, no NUL), resolved inside the canonical root
//!    (`/x` means `<root>/x`, empty or missing means the root), canonicalized with symlinks
//!    followed, and must still lie inside the root. A directory must also be readable and
//!    searchable. These filesystem calls block, so they run on the blocking pool. Then one
//!    permit of the `ls` semaphore is taken without waiting (none left: 503 + `Retry-After`)
//!    and `ls` is spawned directly, no shell, with the canonical absolute path after `--`, so
//!    no value of `D` can become an option.
//! 2. **While the body streams**: the response body *is* the listing. A `Listing` owns the
//!    child, its stdout, the permit and the deadline. Each poll of the body reads what the
//!    pipe holds into a reusable 64 KiB buffer (after a small read, once more `COALESCE`
//!    later, so that `ls`'s 4 KiB writes travel as fewer, larger chunks) and hands the bytes on
//!    as one chunk: no per-line work, no accumulation. Backpressure is end to end: when the client reads slowly,
//!    hyper stops polling, the pipe fills and `ls` blocks in `write`.
//!
//! # Failure modes
//!
//! Once the 200 head is sent, a status can no longer change, so a failure must still never look
//! like a complete listing. Every failure after that point makes the body stream yield an error,
//! on which hyper drops the connection without the final zero-size chunk: the client sees an
//! incomplete transfer.
//! - `ls` exits non-zero (even after all its output): abort. Exit 0 ends the body cleanly.
//! - `--ls-timeout` expires (counted from the spawn): `ls` is killed and reaped, then abort.
//! - The client hangs up: hyper drops the body, and `Listing`'s `Drop` kills `ls` and hands
//!   it to a task that reaps it at once. `kill_on_drop` alone would kill too, but would leave
//!   the reaping to tokio's orphan queue: no exit status for the log, and no moment at which
//!   the process is known to be gone, which is when the gauge and the permit must be released.
//!   It stays set as the last resort for a runtime that is shutting down.
//! - The server dies (even by SIGKILL): `ls` gets SIGKILL through `PR_SET_PDEATHSIG`. A broken
//!   pipe would end it only at its next write, and `ls -l` of a huge directory writes nothing
//!   until it has read and sorted every entry. The signal fires when the *thread* that forked
//!   the child exits; that is one of the runtime's worker threads (handlers are async tasks,
//!   and nothing here calls `block_in_place`), which live as long as the server.
//!
//! The permit travels with the child and is released only once the child is reaped, so the cap
//! counts processes that really exist. stderr is drained by its own task into a buffer capped at
//! [`STDERR_CAP`] (the rest is read and discarded, so `ls` can never block on a full stderr
//! pipe) and logged with the exit status. `ls` gets its own process group, so that a terminal's
//! Ctrl-C reaches the server, which then decides what happens to its children.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue, Uri};
use axum::response::Response;
use axum::Extension;
use bytes::BytesMut;
use futures_util::{stream, FutureExt};
use rustix::io::Errno;
use rustix::process::Signal;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;
use tokio::time::Sleep;

use super::{single_param_bytes, RequestId};
use crate::error::AppError;
use crate::server::AppState;

/// Longest accepted `directory`, in bytes (PATH_MAX on Linux).
pub const MAX_DIRECTORY_LEN: usize = 4096;
/// Size of the read buffer for `ls`'s stdout; one read becomes one body chunk.
const CHUNK: usize = 64 * 1024;
/// How long a small read waits for more output to join its chunk.
const COALESCE: Duration = Duration::from_millis(2);
/// Capacity asked for the pipe from `ls` (Linux's default ceiling for unprivileged users).
const PIPE_SIZE: usize = 1 << 20;
/// A new buffer is taken when less than this is left in the current one. Chunks already handed
/// to hyper share the old buffer until written, so it is freed (or reused) once they are.
const MIN_READ: usize = 16 * 1024;
/// How much of `ls`'s stderr is kept for the log.
pub const STDERR_CAP: usize = 4 * 1024;
/// Environment variables that change what `ls -lash` prints; removed so that the output has
/// the documented format whatever the server's environment.
const LS_ENV: [&str; 8] = [
    "QUOTING_STYLE",
    "TIME_STYLE",
    "BLOCK_SIZE",
    "LS_BLOCK_SIZE",
    "BLOCKSIZE",
    "POSIXLY_CORRECT",
    "COLUMNS",
    "TABSIZE",
];

/// Why a listing is refused or broken off. The HTTP status of each is in `crate::error`.
#[derive(Debug, thiserror::Error)]
pub enum LsError {
    #[error("`directory` is {len} bytes long; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("`directory` contains a NUL byte")]
    NulByte,
    #[error("`directory` {0:?} is outside the listing root")]
    OutsideRoot(String),
    #[error("`directory` {0:?} does not exist")]
    NotFound(String),
    #[error("`directory` {0:?}: permission denied")]
    PermissionDenied(String),
    /// A name too long for the filesystem, or a symlink loop.
    #[error("`directory` {shown:?} cannot be resolved: {source}")]
    Unresolvable { shown: String, source: io::Error },
    #[error("too many listings are running (at most {0}); retry shortly")]
    Busy(u32),
    #[error("cannot list {shown:?}: {source}")]
    Io { shown: String, source: io::Error },
    #[error("cannot start `ls`: {0}")]
    Spawn(io::Error),
    #[error("`ls` did not finish within {0:?}")]
    Timeout(Duration),
    #[error("`ls` failed: {0}")]
    Failed(ExitStatus),
    #[error("cannot read the output of `ls`: {0}")]
    Read(io::Error),
}

impl LsError {
    /// The `outcome` label of `forkpool_ls_total` for this error.
    fn outcome(&self) -> &'static str {
        match self {
            LsError::TooLong { .. } | LsError::NulByte | LsError::Unresolvable { .. } => {
                "bad_request"
            }
            LsError::OutsideRoot(_) | LsError::PermissionDenied(_) => "forbidden",
            LsError::NotFound(_) => "not_found",
            LsError::Busy(_) => "rejected_busy",
            LsError::Timeout(_) => "timeout",
            LsError::Io { .. } | LsError::Spawn(_) | LsError::Failed(_) | LsError::Read(_) => {
                "failed"
            }
        }
    }
}

/// `GET /ls?directory=D`
pub async fn list(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    uri: Uri,
) -> Result<Response, AppError> {
    let directory = single_param_bytes(&uri, "directory").inspect_err(|_| count("bad_request"))?;
    start(
        &state,
        request_id,
        OsString::from_vec(directory.unwrap_or_default()),
    )
    .await
    .map_err(|e| {
        count(e.outcome());
        tracing::debug!(error = %e, "ls refused");
        e.into()
    })
}

fn count(outcome: &'static str) {
    metrics::counter!("forkpool_ls_total", "outcome" => outcome).increment(1);
}

/// Phase 1: resolve, take a slot, spawn; the response head is built only if all of it worked.
async fn start(
    state: &AppState,
    request_id: RequestId,
    directory: OsString,
) -> Result<Response, LsError> {
    let root = state.ls_root.clone();
    let shown = directory.to_string_lossy().into_owned();
    let path = tokio::task::spawn_blocking(move || resolve(&root, &directory))
        .await
        .map_err(|e| LsError::Io {
            shown: shown.clone(),
            source: io::Error::other(e),
        })??;
    let permit = state
        .ls_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| LsError::Busy(state.config.ls_max_concurrent))?;
    let mut command = Command::new("ls");
    command.args(["-lash", "--"]).arg(&path);
    for name in LS_ENV {
        command.env_remove(name);
    }
    let listing = Listing::spawn(
        command,
        permit,
        state.config.ls_timeout,
        request_id.0,
        shown,
    )?;
    let mut response = Response::new(Body::from_stream(listing.into_stream()));
    let headers = response.headers_mut();
    let text = HeaderValue::from_static("text/plain; charset=utf-8");
    headers.insert(header::CONTENT_TYPE, text);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}

/// The canonical path that `directory` names inside the canonical `root`, checked to be
/// listable. Blocking.
fn resolve(root: &Path, directory: &OsStr) -> Result<PathBuf, LsError> {
    let bytes = directory.as_bytes();
    if bytes.len() > MAX_DIRECTORY_LEN {
        return Err(LsError::TooLong {
            len: bytes.len(),
            max: MAX_DIRECTORY_LEN,
        });
    }
    if bytes.contains(&0) {
        return Err(LsError::NulByte);
    }
    let shown = || directory.to_string_lossy().into_owned();
    let start = bytes.iter().position(|&b| b != b'/').unwrap_or(bytes.len());
    let relative = Path::new(OsStr::from_bytes(&bytes[start..]));
    // A `..` that climbs above the root is refused before the filesystem is asked anything,
    // so that nothing outside the root is even looked up. This is only the cheap first line:
    // `a/..` where `a` is a symlink goes elsewhere, which the check after canonicalize catches.
    let mut depth = 0usize;
    for component in relative.components() {
        depth = match component {
            Component::Normal(_) => depth + 1,
            Component::CurDir => depth,
            Component::ParentDir => depth
                .checked_sub(1)
                .ok_or_else(|| LsError::OutsideRoot(shown()))?,
            Component::RootDir | Component::Prefix(_) => return Err(LsError::OutsideRoot(shown())),
        };
    }
    let joined = root.join(relative);
    let canonical = joined
        .canonicalize()
        .map_err(|e| unresolved(root, &joined, &shown(), e))?;
    if !canonical.starts_with(root) {
        return Err(LsError::OutsideRoot(shown()));
    }
    let error = |e: io::Error| classify(&shown(), e);
    let metadata = std::fs::metadata(&canonical).map_err(error)?;
    if metadata.is_dir() {
        // `ls -l` of a directory needs read (to list names) and search (to stat each entry)
        // permission; a mode-000 directory would otherwise give a 200 head and then a failed
        // listing. Opening it checks read; stat of one entry through the open directory checks
        // search. Other errors on that entry (it was just deleted, say) are left to `ls`.
        let mut entries = std::fs::read_dir(&canonical).map_err(error)?;
        if let Some(Ok(entry)) = entries.next() {
            if let Err(e) = entry.metadata() {
                if e.kind() == io::ErrorKind::PermissionDenied {
                    return Err(LsError::PermissionDenied(shown()));
                }
            }
        }
    }
    // A file (or device, fifo, socket) is listed as `ls -l` lists it: that needs only the stat
    // that just worked.
    Ok(canonical)
}

/// The error for a `joined` path that does not canonicalize. When its deepest existing
/// ancestor already lies outside the root (through a symlink), the answer is 403 whatever the
/// error: a 404 there would tell the client what exists outside the root.
fn unresolved(root: &Path, joined: &Path, directory: &str, error: io::Error) -> LsError {
    let outside = joined
        .ancestors()
        .skip(1)
        .find_map(|ancestor| ancestor.canonicalize().ok())
        .is_some_and(|ancestor| !ancestor.starts_with(root));
    match outside {
        true => LsError::OutsideRoot(directory.to_owned()),
        false => classify(directory, error),
    }
}

fn classify(directory: &str, error: io::Error) -> LsError {
    let shown = directory.to_owned();
    match Errno::from_io_error(&error) {
        Some(Errno::NOENT | Errno::NOTDIR) => LsError::NotFound(shown),
        Some(Errno::ACCESS | Errno::PERM) => LsError::PermissionDenied(shown),
        Some(Errno::LOOP | Errno::NAMETOOLONG) => LsError::Unresolvable {
            shown,
            source: error,
        },
        _ => LsError::Io {
            shown,
            source: error,
        },
    }
}

/// How a listing ended, for the log and the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Failed,
    Timeout,
    Cancelled,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Timeout => "timeout",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// One `ls` process until it is reaped, with what is needed to account for it afterwards.
struct Run {
    child: Child,
    stderr: JoinHandle<Vec<u8>>,
    /// Released when the `Run` is dropped, i.e. after the child is reaped.
    _permit: OwnedSemaphorePermit,
    request_id: String,
    directory: String,
    started: Instant,
    bytes: u64,
}

impl Run {
    /// Metrics and the log line of a reaped child. Metrics first: they must not be lost if the
    /// caller is dropped while the stderr task is awaited.
    async fn finish(self, outcome: Outcome, status: io::Result<ExitStatus>) {
        metrics::gauge!("forkpool_ls_running").decrement(1.0);
        count(outcome.label());
        let Run {
            stderr,
            request_id,
            directory,
            started,
            bytes,
            ..
        } = self;
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
            Outcome::Cancelled => log!(info, "ls killed: client went away"),
            Outcome::Timeout => log!(warn, "ls killed: --ls-timeout expired"),
            Outcome::Failed => log!(warn, "ls failed"),
        }
    }
}

/// The response body: a running `ls` and its stdout. See the module doc.
struct Listing {
    /// `Some` until the child is reaped; whoever takes it reaps it, `Drop` if nobody else.
    run: Option<Run>,
    stdout: ChildStdout,
    buffer: BytesMut,
    /// `--ls-timeout` from the spawn. One timer for the whole listing, not one per chunk.
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl Listing {
    fn spawn(
        mut command: Command,
        permit: OwnedSemaphorePermit,
        timeout: Duration,
        request_id: String,
        directory: String,
    ) -> Result<Listing, LsError> {
        // SAFETY: between fork and exec the closure makes one prctl system call, which neither
        // allocates nor takes a lock.
        unsafe {
            command.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
                Ok(())
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
        metrics::gauge!("forkpool_ls_running").increment(1.0);
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            unreachable!("both are piped above");
        };
        // A 1 MiB pipe instead of 64 KiB: `ls` rarely waits for us, and each wake-up finds
        // more to read, so a big listing costs fewer, larger chunks. Best effort.
        let _ = rustix::pipe::fcntl_setpipe_size(&stdout, PIPE_SIZE);
        tracing::debug!(request_id, directory, pid = child.id(), "ls started");
        Ok(Listing {
            run: Some(Run {
                child,
                stderr: tokio::spawn(drain(stderr)),
                _permit: permit,
                request_id,
                directory,
                started,
                bytes: 0,
            }),
            stdout,
            buffer: BytesMut::new(),
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
        })
    }

    /// The body stream: chunks of stdout, then either the end (exit 0) or one error.
    fn into_stream(self) -> impl futures_util::Stream<Item = Result<Bytes, LsError>> + Send {
        stream::unfold(Some(self), |listing| async move {
            let mut listing = listing?;
            match listing.next_chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(listing))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
    }

    /// The next piece of output; `None` after a clean exit. The child is reaped before this
    /// returns anything but a chunk.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, LsError> {
        if self.buffer.capacity() - self.buffer.len() < MIN_READ {
            self.buffer.reserve(CHUNK);
        }
        let read = tokio::select! {
            biased;
            () = &mut self.deadline => None,
            read = self.stdout.read_buf(&mut self.buffer) => Some(read),
        };
        match read {
            None => {
                self.kill(Outcome::Timeout).await;
                Err(LsError::Timeout(self.timeout))
            }
            Some(Ok(0)) => self.exit().await,
            Some(Ok(mut n)) => {
                // `ls` writes 4 KiB at a time, and each write would wake us for a chunk of its
                // own. Gathering what it writes in the next two milliseconds into the same chunk
                // cuts wake-ups, syscalls and chunk headers several-fold on a big listing, for
                // at most that delay. `read_buf` is cancel-safe, so polling it
                // once and dropping it loses nothing.
                if n < MIN_READ {
                    tokio::time::sleep(COALESCE).await;
                    if let Some(Ok(more)) = self.stdout.read_buf(&mut self.buffer).now_or_never() {
                        n += more;
                    }
                }
                if let Some(run) = &mut self.run {
                    run.bytes += n as u64;
                }
                Ok(Some(self.buffer.split().freeze()))
            }
            Some(Err(e)) => {
                self.kill(Outcome::Failed).await;
                Err(LsError::Read(e))
            }
        }
    }

    /// stdout is at EOF: the exit status decides how the body ends.
    async fn exit(&mut self) -> Result<Option<Bytes>, LsError> {
        let run = self.run.as_mut().expect("not reaped before EOF");
        let status = tokio::select! {
            biased;
            () = &mut self.deadline => None,
            status = run.child.wait() => Some(status),
        };
        let Some(status) = status else {
            self.kill(Outcome::Timeout).await;
            return Err(LsError::Timeout(self.timeout));
        };
        let run = self.run.take().expect("checked above");
        match status {
            Ok(code) if code.success() => {
                run.finish(Outcome::Ok, status).await;
                Ok(None)
            }
            Ok(code) => {
                run.finish(Outcome::Failed, status).await;
                Err(LsError::Failed(code))
            }
            Err(e) => {
                let error = LsError::Read(io::Error::new(e.kind(), e.to_string()));
                run.finish(Outcome::Failed, Err(e)).await;
                Err(error)
            }
        }
    }

    /// Kills and reaps the child. If this is dropped halfway, `Drop` still finds the child.
    async fn kill(&mut self, outcome: Outcome) {
        let Some(run) = self.run.as_mut() else {
            return;
        };
        // An error means the child has exited already; `wait` reaps it either way.
        let _ = run.child.start_kill();
        let status = run.child.wait().await;
        if let Some(run) = self.run.take() {
            run.finish(outcome, status).await;
        }
    }
}

impl Drop for Listing {
    /// The body was dropped with `ls` not yet reaped: the client hung up (or the server is
    /// going down). Kill now, and reap in a task of its own, since `Drop` cannot wait.
    fn drop(&mut self) {
        let Some(mut run) = self.run.take() else {
            return;
        };
        let _ = run.child.start_kill();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let status = run.child.wait().await;
                    run.finish(Outcome::Cancelled, status).await;
                });
            }
            // No runtime (it is shutting down): `kill_on_drop` and tokio's orphan reaper are
            // all that is left; account for the child now.
            Err(_) => {
                metrics::gauge!("forkpool_ls_running").decrement(1.0);
                count(Outcome::Cancelled.label());
            }
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

    fn root() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("forkpool-ls-unit-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        dir.canonicalize().unwrap()
    }

    #[test]
    fn lexical_climbs_are_refused_without_a_lookup() {
        let root = Path::new("/nonexistent-root");
        for d in ["..", "../", "/..", "a/../..", "./../x", "//../etc"] {
            assert!(
                matches!(resolve(root, d.as_ref()), Err(LsError::OutsideRoot(_))),
                "{d}"
            );
        }
        assert!(matches!(
            resolve(root, "a\0b".as_ref()),
            Err(LsError::NulByte)
        ));
        let long = "a".repeat(MAX_DIRECTORY_LEN + 1);
        assert!(matches!(
            resolve(root, long.as_ref()),
            Err(LsError::TooLong { .. })
        ));
    }

    #[test]
    fn resolves_inside_the_root() {
        let root = root();
        assert_eq!(resolve(&root, "".as_ref()).unwrap(), root);
        assert_eq!(resolve(&root, "/".as_ref()).unwrap(), root);
        assert_eq!(resolve(&root, "/sub/".as_ref()).unwrap(), root.join("sub"));
        assert_eq!(resolve(&root, "sub/..".as_ref()).unwrap(), root);
        assert!(matches!(
            resolve(&root, "nope".as_ref()),
            Err(LsError::NotFound(_))
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    async fn collect(command: Command, timeout: Duration) -> (Vec<u8>, Option<LsError>) {
        use futures_util::StreamExt;
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
        let permit = slots.clone().try_acquire_owned().unwrap();
        let listing = Listing::spawn(command, permit, timeout, "t".into(), "d".into()).unwrap();
        let mut body = Vec::new();
        let mut stream = std::pin::pin!(listing.into_stream());
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(e) => {
                    assert!(stream.next().await.is_none(), "nothing after an error");
                    return (body, Some(e));
                }
            }
        }
        assert_eq!(
            slots.available_permits(),
            1,
            "the permit is back once reaped"
        );
        (body, None)
    }

    fn sh(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    }

    #[test]
    fn exit_status_decides_how_the_body_ends() {
        runtime().block_on(async {
            let long = Duration::from_secs(10);
            let (body, error) = collect(sh("echo hello"), long).await;
            assert_eq!(body, b"hello\n");
            assert!(error.is_none());

            let (body, error) = collect(sh("echo partial; exit 2"), long).await;
            assert_eq!(body, b"partial\n");
            assert!(matches!(error, Some(LsError::Failed(_))), "{error:?}");

            let (_, error) =
                collect(sh("echo start; exec sleep 30"), Duration::from_millis(200)).await;
            assert!(matches!(error, Some(LsError::Timeout(_))), "{error:?}");
        });
    }

    #[test]
    fn stderr_is_drained_past_the_cap() {
        runtime().block_on(async {
            // 1 MiB on stderr would block a child whose stderr nobody reads.
            let script = "head -c 1048576 /dev/zero >&2; echo done";
            let (body, error) = collect(sh(script), Duration::from_secs(10)).await;
            assert_eq!(body, b"done\n");
            assert!(error.is_none());
        });
    }
}
