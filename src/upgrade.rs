//! In-place upgrade without a service manager, on SIGUSR2 (as gunicorn uses it): the server
//! starts the binary now at its path, with its arguments and its listening sockets, waits until
//! the new server is ready, and only then drains and exits. And the pid file that lets an
//! operator or a script follow the handover.
//!
//! # How the sockets and the readiness travel
//! The new server gets the listening sockets as systemd would pass them (`LISTEN_FDS`, see
//! [`crate::systemd`]) and a private `NOTIFY_SOCKET` on which it says `READY=1` once a worker
//! of its own has said hello. The sockets are the same open sockets, not new ones bound to the
//! same port: a connection queued in the accept queue is taken by whichever server accepts
//! first, and none is refused or reset at any point of the handover, because the socket never
//! closes. The new server accepts only once it is ready, so until then the old one serves
//! everything.
//!
//! # Failure modes
//! - The new server exits before it is ready (a broken binary, a bad setting), or is not ready
//!   within `--upgrade-timeout` (its workers cannot start): it is killed (it has accepted
//!   nothing, so nothing is lost), the log says why, and the old server keeps serving.
//! - The new binary is still open for writing by some process (`ETXTBSY`): the start is
//!   retried every 50 ms for up to `--upgrade-timeout`, then fails as above.
//! - SIGTERM or SIGINT during an upgrade: the new server is killed, and the old one drains.
//! - Under a service manager (`NOTIFY_SOCKET` set by systemd), SIGUSR2 is refused: systemd
//!   would take the old server's exit for the service's end and stop the new one with it. There,
//!   `systemctl restart` with the socket unit (deploy/systemd) is the zero-downtime upgrade.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use rustix::process::{Pid, Signal};
use tokio::net::UnixDatagram;

use crate::systemd::{self, ADMIN_SOCKET_NAME, PUBLIC_SOCKET_NAME, UPGRADED_FROM};

/// Why an upgrade did not happen; the server that was asked keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// SIGUSR2 under systemd (`NOTIFY_SOCKET` set): the new server would be in the old one's
    /// cgroup and stopped with it, so the upgrade is refused.
    #[error(
        "refused under a service manager (NOTIFY_SOCKET is set): systemd would stop the new \
         server with the old one; use `systemctl restart` with the socket unit instead"
    )]
    ServiceManager,
    /// The socket on which the new server says `READY=1` cannot be made or read.
    #[error("cannot make the readiness socket in {dir}: {source}")]
    Socket {
        /// The private directory of the socket, under the temporary directory.
        dir: PathBuf,
        /// Why the directory or the datagram socket could not be made, or reading it failed.
        source: io::Error,
    },
    /// The new server cannot be started (its binary missing or not executable, out of memory
    /// or pids), or waiting for it failed.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program run: this executable as it is now on disk.
        program: PathBuf,
        /// Why it could not be started or waited for.
        source: io::Error,
    },
    /// The new server exited before it said `READY=1` (a bad flag, a port it could not take
    /// over, a failing worker start).
    #[error("the new server (pid {pid}) exited before it was ready: {status}")]
    Exited {
        /// The new server's pid.
        pid: u32,
        /// How it exited (its own error is in the log, on the shared stderr).
        status: ExitStatus,
    },
    /// The new server did not say `READY=1` within `--upgrade-timeout` and was killed.
    #[error("the new server (pid {pid}) was not ready within {timeout:?}; killed it")]
    NotReady {
        /// The new server's pid, killed since.
        pid: u32,
        /// `--upgrade-timeout`.
        timeout: Duration,
    },
}

/// What the server needs to start its successor: recorded at start-up, because by the time of
/// an upgrade the binary has been replaced (and `/proc/self/exe` names the old one "deleted").
pub struct Upgrader {
    /// The binary's path at start-up: where the new binary is installed.
    program: PathBuf,
    /// This server's arguments, given to the successor as they are.
    args: Vec<OsString>,
    /// Copies of the listening sockets with their names; dropped with the upgrader, which must
    /// happen before the listeners close at a plain shutdown, or the sockets would stay open
    /// (and queue connections nobody accepts) until the process exits.
    sockets: Vec<(&'static str, OwnedFd)>,
    /// How long the successor may take to be ready.
    ready_timeout: Duration,
}

impl Upgrader {
    /// Records this process's program and arguments and copies `public` and `admin`.
    pub fn new(
        public: BorrowedFd<'_>,
        admin: Option<BorrowedFd<'_>>,
        ready_timeout: Duration,
    ) -> io::Result<Upgrader> {
        let mut sockets = vec![(PUBLIC_SOCKET_NAME, public.try_clone_to_owned()?)];
        if let Some(admin) = admin {
            sockets.push((ADMIN_SOCKET_NAME, admin.try_clone_to_owned()?));
        }
        Ok(Upgrader {
            program: std::env::current_exe()?,
            args: std::env::args_os().skip(1).collect(),
            sockets,
            ready_timeout,
        })
    }

    /// The binary that an upgrade starts.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Starts the binary at the recorded path and waits until it says it is ready; returns its
    /// pid. On an error it has been killed. Dropping the future kills it too.
    pub async fn hand_over(&self) -> Result<u32, UpgradeError> {
        if systemd::notified_by_service_manager() {
            return Err(UpgradeError::ServiceManager);
        }
        let readiness = Readiness::open()?;
        let mut successor = Successor {
            child: self.spawn_once_not_busy(&readiness).await?,
            ready: false,
        };
        let pid = successor.child.id().unwrap_or_default();
        let outcome = tokio::select! {
            status = successor.child.wait() => match status {
                Ok(status) => Err(UpgradeError::Exited { pid, status }),
                Err(source) => Err(UpgradeError::Spawn { program: self.program.clone(), source }),
            },
            ready = readiness.wait() => match ready {
                Ok(()) => Ok(pid),
                Err(source) => Err(UpgradeError::Socket { dir: readiness.dir.clone(), source }),
            },
            () = tokio::time::sleep(self.ready_timeout) => {
                Err(UpgradeError::NotReady { pid, timeout: self.ready_timeout })
            }
        };
        match outcome {
            Ok(_) => successor.ready = true,
            Err(_) => successor.kill().await,
        }
        outcome
    }

    /// Starts the successor, waiting while its binary is busy (`ETXTBSY`): some process still
    /// has the file open for writing. That is an installer finishing its copy, or any process
    /// that forked while one had it open and has not exec'd yet (a close-on-exec descriptor
    /// lives in the child until its exec): moments, so it is retried every 50 ms for up to
    /// `--upgrade-timeout` instead of failing the upgrade (it did, in a test process that
    /// installed the binary while its other threads started servers).
    async fn spawn_once_not_busy(
        &self,
        readiness: &Readiness,
    ) -> Result<tokio::process::Child, UpgradeError> {
        let give_up = tokio::time::Instant::now() + self.ready_timeout;
        let mut logged = false;
        loop {
            let spawned = self.spawn(readiness);
            let busy = matches!(&spawned, Err(UpgradeError::Spawn { source, .. })
                if source.raw_os_error() == Some(rustix::io::Errno::TXTBSY.raw_os_error()));
            if !busy || tokio::time::Instant::now() >= give_up {
                return spawned;
            }
            if !std::mem::replace(&mut logged, true) {
                tracing::warn!(
                    program = %self.program.display(),
                    "the new binary is open for writing by another process (text file busy); \
                     retrying until --upgrade-timeout"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn spawn(&self, readiness: &Readiness) -> Result<tokio::process::Child, UpgradeError> {
        let our_pid = std::process::id().to_string();
        let env = [
            ("NOTIFY_SOCKET", readiness.path.as_os_str()),
            (UPGRADED_FROM, our_pid.as_ref()),
        ];
        let listeners: Vec<_> = self.sockets.iter().map(|(n, fd)| (*n, fd.as_fd())).collect();
        let spawn_error = |source| UpgradeError::Spawn {
            program: self.program.clone(),
            source,
        };
        let mut command =
            systemd::command_with_listeners(&self.program, &self.args, &env, &listeners)
                .map_err(spawn_error)?;
        // The watchdog is the service manager's, for this process only. A process group of its
        // own, so that a failed start is killed with all it started.
        command.env_remove("WATCHDOG_USEC").env_remove("WATCHDOG_PID");
        command.process_group(0);
        tokio::process::Command::from(command)
            .spawn()
            .map_err(spawn_error)
    }
}

/// The new server, killed when dropped before it was ready.
struct Successor {
    child: tokio::process::Child,
    /// It said `READY=1`: it stays when this is dropped (and tokio reaps it, should it exit
    /// before this process does).
    ready: bool,
}

impl Successor {
    /// SIGKILL to its process group, and reap it. It has accepted no connection (it accepts
    /// once ready); its workers die with it (their parent-death signal).
    async fn kill(&mut self) {
        self.kill_group();
        let _ = self.child.wait().await;
    }

    fn kill_group(&mut self) {
        let group = self.child.id().and_then(|pid| Pid::from_raw(pid as i32));
        match group {
            Some(group) => drop(rustix::process::kill_process_group(group, Signal::KILL)),
            None => drop(self.child.start_kill()),
        }
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        // Dropped unfinished (SIGTERM during an upgrade): tokio reaps it once it is gone.
        if !self.ready {
            self.kill_group();
        }
    }
}

/// The private `NOTIFY_SOCKET` a successor reports its readiness on: a datagram socket in a
/// directory only this user can enter, removed with it.
struct Readiness {
    dir: PathBuf,
    path: PathBuf,
    socket: UnixDatagram,
}

impl Readiness {
    fn open() -> Result<Readiness, UpgradeError> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("forkpool-upgrade-{}-{n}", std::process::id()));
        let error = |source| UpgradeError::Socket {
            dir: dir.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(error)?;
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).map_err(error)?;
        Ok(Readiness { dir, path, socket })
    }

    /// Resolves once a datagram says `READY=1`.
    async fn wait(&self) -> io::Result<()> {
        let mut buffer = [0u8; 4096];
        loop {
            let n = self.socket.recv(&mut buffer).await?;
            if buffer[..n].split(|&b| b == b'\n').any(|line| line == b"READY=1") {
                return Ok(());
            }
        }
    }
}

impl Drop for Readiness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `--pid-file`: holds the pid of the server that is serving now. Written (atomically) when a
/// server becomes ready, so that after an upgrade it names the new one; removed at exit only
/// by the server it names.
pub struct PidFile {
    /// Where the file is.
    path: PathBuf,
}

impl PidFile {
    /// Writes this process's pid to `path` through a temporary file and a rename, so that a
    /// reader never sees it half written.
    pub fn write(path: &Path) -> io::Result<PidFile> {
        let temporary = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&temporary, format!("{}\n", std::process::id()))?;
        std::fs::rename(&temporary, path)?;
        Ok(PidFile {
            path: path.to_owned(),
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|text| text.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
