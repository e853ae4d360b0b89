//! `/ls?directory=D`: streams an `ls -lash` listing of what `D` names inside `--ls-root`.
//!
//! Four parts: this file (the handler, the `ls` command line, the response headers and the
//! metrics), [`confine`] (the security policy: what `D` may name, resolved by fd; read it on
//! its own to audit confinement), [`child`] (supervision of the `ls` process: streaming,
//! deadline, hang-up, reaping) and [`symlinks`] (how a row's symlink target is shown, so that
//! no listing names the root's absolute path).
//!
//! # What a request does
//!
//! Before the response starts (every failure here is a JSON error): `D` is resolved by
//! [`confine::Root::resolve`] on the blocking pool (400, 403, 404), one permit of the `ls`
//! semaphore is taken without waiting (none left: 503 + `Retry-After`), the listing waits for
//! its turn to run (see below), `ls` is spawned directly, no shell, from the absolute path
//! found once at start ([`Ls::open`]), with its working directory set to the fd that was
//! resolved, and the handler waits for `ls`'s first output, which the 200 head goes out with
//! ([`first_output`]): so a listing that fails or runs out of time before writing anything is
//! a JSON error too (500, 504). `ls` runs:
//! - a directory: `ls -lash --quoting-style=c-maybe -- .`, the same rows as `ls -lash DIR`.
//!   For the root itself `--ignore=..` is added: the root's `..` row would describe a
//!   directory outside the root (its owner, mode, size and time), so the root listing has no
//!   `..` row. Every other directory's `..` is inside the root and is listed.
//! - anything else: `ls -lashd --quoting-style=c-maybe -- NAME` from its parent directory, one
//!   row naming only `NAME`.
//!
//! The rows `ls` writes therefore never contain the root's absolute path, but for symlink
//! targets, which [`symlinks`] rewrites on their way to the client where they would show it
//! (an absolute symlink into the root, for one). Nothing after `--` can be an option. `--quoting-style=c-maybe` writes a name that needs escaping (a newline or
//! other control character, a byte that is not UTF-8, a `"`) as a C string in double quotes
//! (`"new\nline"`) and every other name as it is, so no file name can forge a row. The
//! locale is `C.UTF-8` (so UTF-8 names are printable and dates have one format whatever the
//! server's environment), and the variables that change `ls`'s format are removed.
//!
//! While the body streams, [`child`] owns everything; see its doc for the failure modes.
//!
//! # Turns: at most [`RUNNING_PER_CPU`] `ls` per CPU at once
//!
//! `ls` runs under `SCHED_IDLE` at nice 19, yet that alone does not keep the server prompt:
//! with dozens of runnable idle-class tasks per CPU, Linux's scheduler (EEVDF) lets a waking
//! normal-priority thread wait several ticks behind them (measured: 32 `SCHED_IDLE` busy
//! loops on 2 CPUs delay a nice-0 wake-up by up to 31 ms, 8 of them by at most 6 ms; see
//! the README). So of the `--ls-max-concurrent` listings admitted, only [`RUNNING_PER_CPU`]
//! per available CPU run `ls` at once; the others wait, in arrival order and before their
//! response head, for a running one to be reaped. `ls -l` of a big directory is CPU-bound, so
//! more processes than that would not finish the listings sooner anyway. The wait counts
//! towards `--ls-timeout`: a listing still waiting at its deadline, or whose turn came with
//! too little of it left for `ls` to write anything, is answered 504, and its client's hang-up
//! while waiting ends it there.

// The module doc is a map for maintainers and links to the private parts it describes;
// `cargo doc --document-private-items` renders those links.
#![allow(rustdoc::private_intra_doc_links)]

mod child;
mod confine;
mod symlinks;

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::Response;
use axum::Extension;
use futures_util::{stream, Stream, StreamExt};
use tokio::process::Command;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{single_param_bytes, RequestId};
use crate::error::{AppError, ErrorCode, HttpError, RETRY_WHEN_BUSY};
use crate::telemetry;
use confine::{Root, Target};

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
/// Escapes only names that need it; see the module doc.
const QUOTING: &str = "--quoting-style=c-maybe";
/// `ls` processes running at once per available CPU; see the module doc.
const RUNNING_PER_CPU: usize = 4;

/// The query parameter `/ls` reads; [`super::ops::ENDPOINTS`] lists it for the document's
/// checks.
pub const DIRECTORY: &str = "directory";

/// Every error code `/ls` can answer with, beyond those of every route; see
/// [`super::isprime::ERRORS`].
pub const ERRORS: &[ErrorCode] = &[
    ErrorCode::ParamRepeated,
    ErrorCode::DirectoryTooLong,
    ErrorCode::DirectoryNulByte,
    ErrorCode::DirectoryUnresolvable,
    ErrorCode::OutsideRoot,
    ErrorCode::PermissionDenied,
    ErrorCode::DirectoryNotFound,
    ErrorCode::LsBusy,
    ErrorCode::LsTimeout,
    ErrorCode::LsFailed,
];

/// Why `/ls` cannot be served at all; reported at start-up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `--ls-root` cannot be opened as a directory to resolve beneath, or the kernel has no
    /// `openat2` (before 5.6, or a seccomp filter that refuses it).
    #[error(
        "--ls-root {path}: cannot open it for confined lookups (openat2, Linux 5.6+): {source}"
    )]
    Root {
        /// The root, canonical.
        path: PathBuf,
        /// Why it cannot be opened (`O_PATH | O_DIRECTORY`), or `ENOSYS` from a kernel without
        /// `openat2`.
        source: io::Error,
    },
    /// No executable `ls` in PATH's absolute directories (relative ones are skipped: they would
    /// move with the working directory); the value is the PATH searched.
    #[error(
        "`ls` is not an executable file in any absolute directory of PATH ({0}); /ls needs it"
    )]
    NoLs(String),
    /// The low-priority thread that starts and watches the `ls` processes could not be spawned
    /// (out of memory or of threads).
    #[error("cannot start the thread that runs `ls`: {0}")]
    Supervisors(io::Error),
}

/// The bounds of `/ls` (its flags), fixed at start-up.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `--ls-timeout`: of one whole listing, its wait for a turn included.
    pub timeout: Duration,
    /// `--ls-max-concurrent`: listings admitted at once; one more is answered 503.
    pub max_concurrent: u32,
    /// `--ls-idle-timeout`: how long `ls` may write nothing before it is killed; `None` when
    /// off (`0s`).
    pub idle: Option<Duration>,
}

/// What `/ls` needs from start-up, and all it needs (the handler's state: `AppState` gives it
/// by `FromRef`): the root held open, `ls` found once, its bounds and its admissions.
#[derive(Debug)]
pub struct Ls {
    /// The listing root, as an fd.
    root: Root,
    /// The root's canonical path, which symlink targets must not show (see [`symlinks`]).
    root_path: PathBuf,
    /// Absolute path of `ls`, looked up on `PATH` once at start, never per request.
    program: PathBuf,
    /// The thread that runs every `ls`.
    supervisors: child::Supervisors,
    /// Turns to run `ls`: [`RUNNING_PER_CPU`] per available CPU (FIFO, as tokio's semaphore
    /// is), taken after the `--ls-max-concurrent` slot and held until `ls` is reaped.
    turns: Arc<Semaphore>,
    /// One permit per listing admitted (`--ls-max-concurrent`).
    slots: Arc<Semaphore>,
    /// The flags that bound a listing.
    limits: Limits,
}

impl Ls {
    /// Opens the (canonical) root and finds `ls`. Fails when either is impossible, so that a
    /// server that starts can serve `/ls`.
    pub fn open(root: &Path, limits: Limits) -> Result<Ls, SetupError> {
        let root_path = root.to_owned();
        let root = Root::open(root).map_err(|source| SetupError::Root {
            path: root_path.clone(),
            source,
        })?;
        let search = std::env::var_os("PATH").unwrap_or_default();
        let program = find_program(&search, OsStr::new("ls"))
            .ok_or_else(|| SetupError::NoLs(search.to_string_lossy().into_owned()))?;
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let turns = Arc::new(Semaphore::new(RUNNING_PER_CPU * cpus));
        tracing::debug!(program = %program.display(), running = RUNNING_PER_CPU * cpus, "ls found");
        let supervisors = child::Supervisors::start().map_err(SetupError::Supervisors)?;
        Ok(Ls {
            root,
            root_path,
            program,
            supervisors,
            turns,
            slots: Arc::new(Semaphore::new(limits.max_concurrent as usize)),
            limits,
        })
    }
}

impl Ls {
    /// How the rows of a listing of `target` are rewritten: relative to the directory whose
    /// entries they are (see [`symlinks`]). Blocking: it asks `/proc`.
    fn rows(&self, target: &Target) -> io::Result<symlinks::Rows> {
        let dir = match target {
            Target::Directory { fd, .. } => fd,
            Target::Entry { parent, .. } => parent,
        };
        let position = self.root.position(dir.as_fd())?;
        let root = self.root_path.as_os_str().as_bytes();
        Ok(symlinks::Rows::new(symlinks::Place::new(root, &position)))
    }
}

/// The first executable regular file called `name` in an absolute directory of `search`.
/// Relative entries are skipped: they would depend on the server's working directory.
pub(crate) fn find_program(search: &OsStr, name: &OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(search)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|path| {
            std::fs::metadata(path)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Why a listing is refused or broken off; each knows its HTTP status ([`HttpError`]).
#[derive(Debug, thiserror::Error)]
pub enum LsError {
    /// `directory` is longer than any path the kernel resolves (400 `directory_too_long`);
    /// refused before any lookup.
    #[error("`directory` is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Its length in bytes, percent-decoded.
        len: usize,
        /// The longest accepted, in bytes (`PATH_MAX`).
        max: usize,
    },
    /// `directory` has a NUL byte, which no path can contain (400 `directory_nul_byte`).
    #[error("`directory` contains a NUL byte")]
    NulByte,
    /// `directory` (the value, as given) climbs out of the root by `..` or by a symlink: the
    /// kernel refused to resolve beyond it (403 `outside_root`).
    #[error("`directory` {0:?} is outside the listing root")]
    OutsideRoot(String),
    /// `directory` (the value, as given) does not exist, or is not a directory (404
    /// `directory_not_found`).
    #[error("`directory` {0:?} does not exist")]
    NotFound(String),
    /// The server's user may not search or read `directory` (the value, as given) (403
    /// `permission_denied`).
    #[error("`directory` {0:?}: permission denied")]
    PermissionDenied(String),
    /// A name too long for the filesystem, a symlink loop or a `/proc` magic link.
    #[error("`directory` {shown:?} cannot be resolved: {source}")]
    Unresolvable {
        /// The directory as the client gave it.
        shown: String,
        /// The lookup's error (`ENAMETOOLONG`, `ELOOP`, `EXDEV`).
        source: io::Error,
    },
    /// `--ls-max-concurrent` listings (the value) are running: refused at once, with
    /// `Retry-After` (503 `ls_busy`).
    #[error("too many listings are running (at most {0}); retry shortly")]
    Busy(u32),
    /// Another error of the lookup or open (an I/O error of the filesystem, out of descriptors)
    /// (500 `ls_failed`).
    #[error("cannot list {shown:?}: {source}")]
    Io {
        /// The directory as the client gave it.
        shown: String,
        /// The lookup's or the open's error, none of the kinds above.
        source: io::Error,
    },
    /// `ls` could not be started (out of memory, of pids or of descriptors) (500 `ls_failed`).
    #[error("cannot start `ls`: {0}")]
    Spawn(io::Error),
    /// The whole listing, its wait for a turn included, took longer than `--ls-timeout` (the
    /// value); `ls` was killed (504 `ls_timeout`, or a truncated body once it had begun).
    #[error("the listing did not finish within --ls-timeout ({0:?}), which counts the wait for its turn to run")]
    Timeout(Duration),
    /// `ls` wrote nothing for `--ls-idle-timeout` (the value) and was killed: a hung filesystem
    /// (504 `ls_timeout`, or a truncated body once it had begun).
    #[error("`ls` wrote nothing for --ls-idle-timeout ({0:?}) and was killed")]
    Stalled(Duration),
    /// `ls` exited unsuccessfully (500 `ls_failed`, or a truncated body once it had begun); the
    /// status says how, and its stderr is in the log.
    #[error("`ls` failed: {0}")]
    Failed(ExitStatus),
    /// Reading `ls`'s output pipe failed (500 `ls_failed`, or a truncated body once it had
    /// begun).
    #[error("cannot read the output of `ls`: {0}")]
    Read(io::Error),
    /// The supervisor stopped without saying how the listing ended (a panic, or the runtime
    /// shutting down): the body must not end as if complete.
    #[error("the listing was abandoned")]
    Lost,
}

impl HttpError for LsError {
    fn code(&self) -> ErrorCode {
        match self {
            LsError::TooLong { .. } => ErrorCode::DirectoryTooLong,
            LsError::NulByte => ErrorCode::DirectoryNulByte,
            LsError::Unresolvable { .. } => ErrorCode::DirectoryUnresolvable,
            LsError::OutsideRoot(_) => ErrorCode::OutsideRoot,
            LsError::PermissionDenied(_) => ErrorCode::PermissionDenied,
            LsError::NotFound(_) => ErrorCode::DirectoryNotFound,
            LsError::Busy(_) => ErrorCode::LsBusy,
            LsError::Timeout(_) | LsError::Stalled(_) => ErrorCode::LsTimeout,
            LsError::Io { .. }
            | LsError::Spawn(_)
            | LsError::Failed(_)
            | LsError::Read(_)
            | LsError::Lost => ErrorCode::LsFailed,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        matches!(self, LsError::Busy(_)).then_some(RETRY_WHEN_BUSY)
    }
}

impl LsError {
    /// The `outcome` label of `forkpool_ls_total`: the status, named (one grouping for both).
    fn outcome(&self) -> &'static str {
        match self.code().status() {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::SERVICE_UNAVAILABLE => "rejected_busy",
            StatusCode::GATEWAY_TIMEOUT => "timeout",
            _ => "failed",
        }
    }
}

/// `GET /ls?directory=D`
pub async fn list(
    State(ls): State<Arc<Ls>>,
    Extension(request_id): Extension<RequestId>,
    uri: Uri,
) -> Result<Response, AppError> {
    let directory = single_param_bytes(&uri, DIRECTORY).inspect_err(|_| count("bad_request"))?;
    let directory = OsString::from_vec(directory.unwrap_or_default());
    let body = start(&ls, request_id, directory)
        .await
        .map_err(|e| {
            count(e.outcome());
            tracing::debug!(error = %e, "ls refused");
            AppError::from(e)
        })?;
    // From here on the supervisor counts and logs how the listing ends, errors included.
    Ok(response(first_output(body).await?))
}

fn count(outcome: &'static str) {
    metrics::counter!(telemetry::LS_TOTAL, "outcome" => outcome).increment(1);
}

/// Resolve, take a slot, wait for a turn, spawn: the body of a listing that runs.
async fn start(
    ls: &Arc<Ls>,
    request_id: RequestId,
    directory: OsString,
) -> Result<impl Stream<Item = Result<Bytes, LsError>> + Send + 'static, LsError> {
    let shown = directory.to_string_lossy().into_owned();
    let resolver = ls.clone();
    let shown_there = shown.clone();
    let (target, rows) = tokio::task::spawn_blocking(move || {
        let target = resolver.root.resolve(&directory)?;
        let rows = resolver.rows(&target).map_err(|source| LsError::Io {
            shown: shown_there,
            source,
        })?;
        Ok::<_, LsError>((target, rows))
    })
    .await
    .map_err(|e| LsError::Io {
        shown: shown.clone(),
        source: io::Error::other(e),
    })??;
    let slot = ls
        .slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| LsError::Busy(ls.limits.max_concurrent))?;
    let timeout = ls.limits.timeout;
    let deadline = Instant::now() + timeout;
    let turn = tokio::time::timeout_at(deadline, ls.turns.clone().acquire_owned())
        .await
        .map_err(|_| LsError::Timeout(timeout))?
        .expect("the turns semaphore is never closed");
    let (command, cwd) = command(&ls.program, target);
    let launch = child::Launch {
        command,
        cwd,
        rows,
        admission: child::Admission::new(slot, turn),
        deadline,
        timeout,
        idle: ls.limits.idle,
        request_id: request_id.0,
        directory: shown,
    };
    ls.supervisors.spawn(launch).await
}

/// Waits for the first piece of the listing, so that the 200 head goes out with the first
/// bytes `ls` writes: a listing that ends before any (killed at its deadline because its turn
/// came too late or `ls` got no CPU, or `ls` failing at once) is then a JSON error, never a
/// 200 with an empty, cut body. Returns the whole body, that piece first.
async fn first_output(
    body: impl Stream<Item = Result<Bytes, LsError>> + Send + 'static,
) -> Result<impl Stream<Item = Result<Bytes, LsError>> + Send + 'static, LsError> {
    let mut body = Box::pin(body.fuse());
    match body.next().await {
        Some(Err(e)) => Err(e),
        first => Ok(stream::iter(first).chain(body)),
    }
}

/// `body`, with an error that comes right after data held back for one poll: hyper aborts the
/// connection at a body error without writing out what it has buffered, and when `ls` writes
/// and fails at once, the head and the first data would be lost with it (the client saw no
/// answer at all, where it must see a 200 and a body cut off). While the body is pending,
/// hyper flushes; the error follows on the next poll.
fn flushed_before_error(
    body: impl Stream<Item = Result<Bytes, LsError>> + Send + 'static,
) -> impl Stream<Item = Result<Bytes, LsError>> + Send + 'static {
    let mut body = Box::pin(body);
    let mut held = None;
    stream::poll_fn(move |cx| {
        if let Some(error) = held.take() {
            return Poll::Ready(Some(Err(error)));
        }
        match body.as_mut().poll_next(cx) {
            Poll::Ready(Some(Err(error))) => {
                held = Some(error);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            other => other,
        }
    })
}

/// The 200 response streaming `body`.
fn response(body: impl Stream<Item = Result<Bytes, LsError>> + Send + 'static) -> Response {
    let mut response = Response::new(Body::from_stream(flushed_before_error(body)));
    let headers = response.headers_mut();
    let text = HeaderValue::from_static("text/plain; charset=utf-8");
    headers.insert(header::CONTENT_TYPE, text);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// The `ls` command line for `target`, and the directory fd it runs in (see the module doc).
fn command(program: &Path, target: Target) -> (Command, std::os::fd::OwnedFd) {
    let mut command = Command::new(program);
    for name in LS_ENV {
        command.env_remove(name);
    }
    command.env("LC_ALL", "C.UTF-8");
    match target {
        Target::Directory { fd, is_root } => {
            command.args(["-lash", QUOTING]);
            if is_root {
                command.arg("--ignore=..");
            }
            command.args(["--", "."]);
            (command, fd)
        }
        Target::Entry { parent, name } => {
            command.args(["-lashd", QUOTING, "--"]).arg(name);
            (command, parent)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_is_found_only_in_absolute_directories() {
        let dir = tempfile::tempdir().unwrap();
        let search = std::env::join_paths(["relative/bin".as_ref(), dir.path()]).unwrap();
        assert_eq!(find_program(&search, "tool".as_ref()), None);
        let tool = dir.path().join("tool");
        std::fs::write(&tool, b"").unwrap();
        assert_eq!(
            find_program(&search, "tool".as_ref()),
            None,
            "not executable"
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_program(&search, "tool".as_ref()), Some(tool));
    }
}
