//! The service manager's protocols as systemd speaks them: listening sockets passed in
//! (`LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID`), state notifications (`NOTIFY_SOCKET`:
//! `READY=1`, `STOPPING=1`, `WATCHDOG=1`) and the watchdog interval (`WATCHDOG_USEC`), through
//! the `sd-notify` crate. forkpool's own in-place upgrade (`upgrade`) speaks the same protocols
//! to the server it starts, so a server started by systemd, by another forkpool or by any
//! launcher that passes sockets this way runs the same code.
//!
//! Without these variables nothing changes: the server binds `--listen` and notifies no one.
//!
//! # Failure modes
//! - A passed socket that is not a listening TCP socket, or more sockets than forkpool serves,
//!   is a start-up error naming the variable: serving on the wrong socket would be worse.
//! - A notification that cannot be delivered (the service manager, or an upgrading
//!   predecessor, has gone) is logged at debug level and otherwise ignored: nobody is left to
//!   tell.
//! - A manager that does not read its socket never stalls the server: notifications are sent
//!   from a thread of their own, and dropped (logged) once 16 wait (`notify`).

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

pub use sd_notify::NotifyState;

/// The variables of the socket-passing protocol, which a process must not hand on as they are
/// to its own children (they name fds and a pid that are not theirs).
pub const PASSING_VARIABLES: [&str; 3] = ["LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID"];
/// The name that marks the admin listener among passed sockets (`FileDescriptorName=admin` in
/// a socket unit); any other name is the public one.
pub const ADMIN_SOCKET_NAME: &str = "admin";
/// The public listener's name when forkpool passes its sockets on.
pub const PUBLIC_SOCKET_NAME: &str = "public";

/// Listening sockets passed in by the service manager (or a predecessor).
#[derive(Debug)]
pub struct PassedListeners {
    /// Where clients connect: the one socket not named `admin`.
    pub public: TcpListener,
    /// The socket named `admin`, if one was passed.
    pub admin: Option<TcpListener>,
}

/// Why the passed sockets cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum PassedError {
    /// `LISTEN_FDS`, `LISTEN_PID` or `LISTEN_FDNAMES` is malformed (sd-notify's error).
    #[error("LISTEN_FDS: {0}")]
    Environment(io::Error),
    /// The number of sockets passed (the value) is not one, or two with one named `admin`.
    #[error("LISTEN_FDS passes {0} sockets; forkpool serves one, or two with one named `admin`")]
    Count(usize),
    /// A passed descriptor is not a listening TCP socket (a UDP or Unix socket, a file, a socket
    /// not listening): the socket unit is misconfigured.
    #[error("LISTEN_FDS: fd {fd} (`{name}`) is not a listening TCP socket")]
    NotListening {
        /// The passed descriptor.
        fd: RawFd,
        /// Its name in `LISTEN_FDNAMES` (the unit name when none was set).
        name: String,
    },
    /// Every passed socket is named `admin`: there is none to serve the public routes on.
    #[error("LISTEN_FDNAMES: no passed socket is the public one (all are named `admin`)")]
    NoPublic,
}

/// Takes the listening sockets passed by `LISTEN_FDS`, if any are passed to this process, and
/// removes the variables so that the workers and `ls` do not inherit them. The sockets are
/// made close-on-exec and non-blocking.
///
/// # Safety
/// Must run before any other thread exists: it changes the environment.
pub unsafe fn take_listeners() -> Result<Option<PassedListeners>, PassedError> {
    // SAFETY: the caller guarantees that no other thread reads or writes the environment.
    let passed = unsafe { sd_notify::listen_fds_with_names_and_unset_env() }
        .map_err(PassedError::Environment)?;
    let mut public = None;
    let mut admin = None;
    let count = passed.len();
    for (fd, name) in passed {
        let listener = listening_socket(fd, &name)?;
        let place = match name.as_str() {
            ADMIN_SOCKET_NAME => &mut admin,
            _ => &mut public,
        };
        if place.replace(listener).is_some() {
            return Err(PassedError::Count(count));
        }
    }
    match (public, admin) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(PassedError::NoPublic),
        (Some(public), admin) => Ok(Some(PassedListeners { public, admin })),
    }
}

/// Takes ownership of passed descriptor `fd` if it is a listening TCP socket.
fn listening_socket(fd: RawFd, name: &str) -> Result<TcpListener, PassedError> {
    let not_listening = || PassedError::NotListening {
        fd,
        name: name.to_owned(),
    };
    if !accepts_connections(fd) {
        return Err(not_listening());
    }
    // SAFETY: `fd` was passed to this process for it to own (LISTEN_FDS), and is taken once.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    listener.local_addr().map_err(|_| not_listening())?;
    listener.set_nonblocking(true).map_err(|_| not_listening())?;
    Ok(listener)
}

/// True if `fd` is a stream socket in the listening state (`SO_ACCEPTCONN`).
fn accepts_connections(fd: RawFd) -> bool {
    let mut value: libc::c_int = 0;
    let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `length` are valid for writes of the sizes given; an fd that is not a
    // socket makes the call fail with ENOTSOCK, nothing worse.
    let status = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut value as *mut libc::c_int).cast(),
            &mut length,
        )
    };
    status == 0 && value == 1
}

/// Tells the service manager (or the predecessor that started this server) about a state
/// change; without `NOTIFY_SOCKET`, does nothing. Never blocks the caller: see `Notifier`.
pub fn notify(state: &[NotifyState<'static>]) {
    static NOTIFIER: std::sync::OnceLock<Option<Notifier>> = std::sync::OnceLock::new();
    let notifier = NOTIFIER.get_or_init(|| {
        std::env::var_os("NOTIFY_SOCKET")
            .is_some()
            .then(Notifier::start)
            .flatten()
    });
    if let Some(notifier) = notifier {
        notifier.send(state.to_vec());
    }
}

/// The thread that sends notifications, in order, and the queue to it. A send to the
/// manager's datagram socket blocks while that socket's queue is full (`net.unix.max_dgram_qlen`
/// datagrams, 10 by default): a manager that is slow to read, or a launcher that stopped
/// reading. Made on a runtime thread, that send stalled the server: a test's launcher that no
/// longer read left a server unable to finish its drain after SIGTERM, its one runtime thread
/// blocked in a `WATCHDOG=1`. Here only this thread waits; a process that exits does not wait
/// for it; and while it is stuck, at most [`Notifier::QUEUE`] notifications wait, the newer
/// ones are dropped (and logged).
struct Notifier {
    /// The queue to the sending thread.
    queue: std::sync::mpsc::SyncSender<Vec<NotifyState<'static>>>,
}

impl Notifier {
    /// Notifications that may wait while a send is stuck.
    const QUEUE: usize = 16;

    /// Starts the sending thread; `None` (logged) when the thread cannot be started.
    fn start() -> Option<Notifier> {
        let (queue, states) = std::sync::mpsc::sync_channel::<Vec<NotifyState<'static>>>(Self::QUEUE);
        let sender = std::thread::Builder::new().name("sd-notify".into()).spawn(move || {
            for state in states {
                if let Err(error) = sd_notify::notify(&state) {
                    tracing::debug!(%error, ?state, "service manager notification not delivered");
                }
            }
        });
        match sender {
            Ok(_) => Some(Notifier { queue }),
            Err(error) => {
                tracing::warn!(%error, "no thread for service manager notifications; none are sent");
                None
            }
        }
    }

    /// Queues `state` for the thread, or drops it when [`Notifier::QUEUE`] are waiting.
    fn send(&self, state: Vec<NotifyState<'static>>) {
        if let Err(error) = self.queue.try_send(state) {
            let state = match error {
                std::sync::mpsc::TrySendError::Full(state)
                | std::sync::mpsc::TrySendError::Disconnected(state) => state,
            };
            tracing::warn!(?state, "the service manager reads no notifications; this one is dropped");
        }
    }
}

/// True when a service manager (not a forkpool predecessor) asked for notifications.
pub fn notified_by_service_manager() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some() && std::env::var_os(UPGRADED_FROM).is_none()
}

/// Set by a server for the successor it starts on SIGUSR2: its own pid.
pub const UPGRADED_FROM: &str = "FORKPOOL_UPGRADED_FROM";

/// The pid of the server this one took over from on SIGUSR2, if it did.
pub fn upgraded_from() -> Option<u32> {
    static FROM: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *FROM.get_or_init(|| std::env::var(UPGRADED_FROM).ok()?.parse().ok())
}

/// Sends `WATCHDOG=1` at half the interval the service manager asked for (`WATCHDOG_USEC`),
/// for ever; returns at once when it asked for none. It runs on the server's runtime, so a
/// runtime that stops making progress stops the pings and the service manager restarts it.
pub async fn keep_watchdog_fed() {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let mut every = tokio::time::interval(interval / 2);
    loop {
        every.tick().await;
        notify(&[NotifyState::Watchdog]);
    }
}

/// A command for `program` that finds `listeners` the way systemd passes them: as fds 3, 4,
/// ... in the order given, with `LISTEN_FDS`, `LISTEN_FDNAMES` (the names given) and
/// `LISTEN_PID`, the new process's own pid. The rest of its environment is this process's,
/// without the socket-passing variables, with `env` added or replacing.
///
/// `program` must be a path (it is not looked up in `PATH`). Spawn the command with std or
/// tokio; its stdio is inherited unless set.
///
/// `LISTEN_PID` can only be known in the child, between fork and exec, where nothing may
/// allocate (another thread of this process may hold the allocator's lock at the fork). So
/// everything exec needs is built here, with room for the pid's digits, and the child only
/// writes those digits, moves the sockets into place and calls `execve` itself.
pub fn command_with_listeners(
    program: &Path,
    args: &[OsString],
    env: &[(&str, &OsStr)],
    listeners: &[(&str, BorrowedFd<'_>)],
) -> io::Result<std::process::Command> {
    let mut exec = Exec::new(program, args, env, listeners)?;
    let mut command = std::process::Command::new(program);
    // SAFETY: the closure runs in the child between fork and exec and only makes system calls
    // that are async-signal-safe (fcntl, dup2, execve) on memory allocated before the fork;
    // see `Exec::run_in_child`.
    unsafe {
        command.pre_exec(move || exec.run_in_child());
    }
    Ok(command)
}

/// Everything `execve` needs, allocated before the fork.
struct Exec {
    /// Program path, arguments and environment entries; the pointers below point into them.
    _strings: Vec<CString>,
    /// `argv`: the program, the arguments, then null.
    argv: Vec<*const libc::c_char>,
    /// `envp`, null-terminated; one entry is `pid_entry`.
    envp: Vec<*const libc::c_char>,
    /// `LISTEN_PID=` followed by zero bytes, room for any pid's digits and a terminator.
    pid_entry: Vec<u8>,
    /// The sockets to pass, in order, and scratch room for their temporary copies.
    fds: Vec<RawFd>,
    scratch: Vec<RawFd>,
}

// SAFETY: the raw pointers point into the `CString`s and `pid_entry` owned by the same value,
// whose heap buffers do not move when it does.
unsafe impl Send for Exec {}
// SAFETY: as for `Send`; and the one write after construction (the child's pid into
// `pid_entry`) takes `&mut self`, so shared references on several threads only read.
unsafe impl Sync for Exec {}

/// `LISTEN_PID=` and room for the 10 digits of any pid, plus the terminator.
const PID_ENTRY_PREFIX: &[u8] = b"LISTEN_PID=";

impl Exec {
    fn new(
        program: &Path,
        args: &[OsString],
        env: &[(&str, &OsStr)],
        listeners: &[(&str, BorrowedFd<'_>)],
    ) -> io::Result<Exec> {
        let c = |bytes: &[u8]| {
            CString::new(bytes).map_err(|_| io::Error::other("a NUL byte in an argument"))
        };
        let replaced = |key: &OsStr| {
            PASSING_VARIABLES.iter().any(|v| key == OsStr::new(v))
                || env.iter().any(|(k, _)| key == OsStr::new(k))
        };
        let names: Vec<&str> = listeners.iter().map(|(name, _)| *name).collect();
        let passing = [
            ("LISTEN_FDS".to_owned(), listeners.len().to_string()),
            ("LISTEN_FDNAMES".to_owned(), names.join(":")),
        ];
        let mut entries: Vec<Vec<u8>> = std::env::vars_os()
            .filter(|(key, _)| !replaced(key))
            .map(|(key, value)| entry(&key, &value))
            .collect();
        entries.extend(env.iter().map(|(k, v)| entry(OsStr::new(k), v)));
        entries.extend(passing.iter().map(|(k, v)| entry(k.as_ref(), v.as_ref())));
        let mut strings = vec![c(program.as_os_str().as_bytes())?];
        for arg in args {
            strings.push(c(arg.as_bytes())?);
        }
        let argc = strings.len();
        for e in entries {
            strings.push(c(&e)?);
        }
        let mut pid_entry = PID_ENTRY_PREFIX.to_vec();
        pid_entry.resize(PID_ENTRY_PREFIX.len() + 11, 0);
        let pointers = |s: &[CString]| s.iter().map(|s| s.as_ptr()).collect::<Vec<_>>();
        let mut argv = pointers(&strings[..argc]);
        argv.push(std::ptr::null());
        let mut envp = pointers(&strings[argc..]);
        envp.push(pid_entry.as_ptr().cast());
        envp.push(std::ptr::null());
        Ok(Exec {
            _strings: strings,
            argv,
            envp,
            pid_entry,
            fds: listeners.iter().map(|(_, fd)| fd.as_raw_fd()).collect(),
            scratch: vec![-1; listeners.len()],
        })
    }

    /// In the child: the sockets to fds 3, 4, ... (first copied above that range, since a
    /// socket may already sit on a number that another is moved to), the pid's digits into
    /// `LISTEN_PID`, then `execve`. Returns only on failure.
    fn run_in_child(&mut self) -> io::Result<()> {
        let first = 3;
        let above = first + self.fds.len() as RawFd;
        for (copy, &fd) in self.scratch.iter_mut().zip(&self.fds) {
            // SAFETY: fcntl on a descriptor this process holds; the copy is close-on-exec.
            *copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above) };
            if *copy < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        for (i, &copy) in self.scratch.iter().enumerate() {
            // SAFETY: dup2 onto a number of this process; the new descriptor is inherited
            // across exec (dup2 clears close-on-exec on it).
            if unsafe { libc::dup2(copy, first + i as RawFd) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: getpid cannot fail.
        let pid = unsafe { libc::getpid() } as u32;
        write_digits(&mut self.pid_entry[PID_ENTRY_PREFIX.len()..], pid);
        // SAFETY: argv and envp are null-terminated arrays of pointers to NUL-terminated
        // strings that live as long as `self`; execve returns only on failure.
        unsafe { libc::execve(self.argv[0], self.argv.as_ptr(), self.envp.as_ptr()) };
        Err(io::Error::last_os_error())
    }
}

/// `KEY=VALUE` as bytes.
fn entry(key: &OsStr, value: &OsStr) -> Vec<u8> {
    [key.as_bytes(), b"=", value.as_bytes()].concat()
}

/// Writes `n` in decimal at the start of `out`, followed by a zero byte, without allocating.
/// `out` has room for 10 digits and the terminator.
fn write_digits(out: &mut [u8], mut n: u32) {
    let mut digits = [0u8; 10];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for (i, digit) in digits[..len].iter().rev().enumerate() {
        out[i] = *digit;
    }
    out[len] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_digits_are_written_in_place_and_terminated() {
        for (pid, text) in [(0, "0"), (7, "7"), (4242, "4242"), (u32::MAX, "4294967295")] {
            let mut out = [b'x'; 11];
            write_digits(&mut out, pid);
            let end = out.iter().position(|&b| b == 0).unwrap();
            assert_eq!(std::str::from_utf8(&out[..end]).unwrap(), text);
        }
    }
}
