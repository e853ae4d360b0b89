//! The `restart` scenario's launcher, doing what systemd does on `systemctl restart` of a
//! service with a socket unit: it binds the listening socket once and holds it, so that it
//! outlives every server; starts each server with it the way systemd passes sockets
//! (`LISTEN_FDS`, through [`forkpool::systemd::command_with_listeners`]) and with its own
//! `NOTIFY_SOCKET`, on which the server says `READY=1`; and restarts by SIGTERM, waiting for
//! the old server to exit, starting a new one on the same socket and waiting for its
//! `READY=1`. While no server accepts, connections wait in the socket's backlog.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use tempfile::TempDir;
use tokio::net::{TcpSocket, UnixDatagram};

use super::{stop_last, Replace, EXIT_LIMIT, READY_LIMIT};
use crate::client::Target;
use crate::procs;
use crate::report::Event;
use crate::spawn::{server_program, version_of, ServerSetup};
use forkpool::systemd::command_with_listeners;

/// The listening socket's backlog: room for every connection made while no server accepts.
const BACKLOG: u32 = 1024;
/// How often a starting server is checked for having exited.
const EXIT_POLL: Duration = Duration::from_millis(5);

/// The launcher: the socket, the notification socket, and the server running now.
pub struct Restarts {
    /// The listening socket, bound here and passed to every server.
    listener: std::net::TcpListener,
    /// Where it listens.
    addr: SocketAddr,
    /// The servers' `NOTIFY_SOCKET`.
    notify: UnixDatagram,
    /// Holds `notify` and `ls/` (the servers' `--ls-root`).
    dir: TempDir,
    /// The build next to this program.
    program: PathBuf,
    /// Its version.
    version: String,
    /// How servers are started.
    setup: ServerSetup,
    /// The pid of the server serving now (0 before the first).
    current: u32,
    /// The last server has been stopped.
    stopped: bool,
}

impl Restarts {
    /// Binds the socket and starts the first server on it.
    pub async fn start(setup: &ServerSetup) -> Result<Restarts, String> {
        let program = server_program().map_err(|e| format!("cannot find this executable: {e}"))?;
        let version = version_of(&program)?;
        fn io(what: &'static str) -> impl Fn(std::io::Error) -> String {
            move |e| format!("{what}: {e}")
        }
        let dir = setup.temp_dir().map_err(io("temporary directory"))?;
        let socket = TcpSocket::new_v4().map_err(io("socket"))?;
        socket
            .bind((Ipv4Addr::LOCALHOST, 0).into())
            .map_err(io("bind"))?;
        let listener = socket.listen(BACKLOG).map_err(io("listen"))?;
        let addr = listener.local_addr().map_err(io("listen"))?;
        let listener = listener.into_std().map_err(io("listen"))?;
        let notify = UnixDatagram::bind(dir.path().join("notify")).map_err(io("NOTIFY_SOCKET"))?;
        let mut restarts = Restarts {
            listener,
            addr,
            notify,
            dir,
            program,
            version,
            setup: setup.clone(),
            current: 0,
            stopped: false,
        };
        restarts.current = restarts.launch().await?;
        Ok(restarts)
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// Starts a server on the socket and waits for its `READY=1`; its pid. One that exits
    /// first, or is not ready in time, is killed and reaped.
    async fn launch(&self) -> Result<u32, String> {
        // What is queued came from the server before (its STOPPING=1), not from this one.
        let mut buffer = [0u8; 4096];
        while self.notify.try_recv(&mut buffer).is_ok() {}
        let notify_path = self.dir.path().join("notify");
        let env = [("NOTIFY_SOCKET", notify_path.as_os_str())];
        let args: Vec<OsString> = self.setup.args(&self.ls_root());
        let listeners = [("public", self.listener.as_fd())];
        let failed = |e: std::io::Error| format!("cannot start {}: {e}", self.program.display());
        let mut command =
            command_with_listeners(&self.program, &args, &env, &listeners).map_err(failed)?;
        let stderr = self.setup.stderr().map_err(failed)?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        // Reaped by its pid (`procs`), not through the `Child`.
        let pid = command.spawn().map_err(failed)?.id();
        match self.wait_ready(pid).await {
            Ok(()) => Ok(pid),
            Err(e) => {
                procs::stop(pid, Duration::ZERO).await;
                Err(e)
            }
        }
    }

    /// Resolves once `READY=1` arrives; fails if `pid` exits first or [`READY_LIMIT`] passes.
    async fn wait_ready(&self, pid: u32) -> Result<(), String> {
        let deadline = Instant::now() + READY_LIMIT;
        let mut buffer = [0u8; 4096];
        loop {
            tokio::select! {
                received = self.notify.recv(&mut buffer) => {
                    let n = received.map_err(|e| format!("NOTIFY_SOCKET: {e}"))?;
                    if buffer[..n].split(|&b| b == b'\n').any(|line| line == b"READY=1") {
                        return Ok(());
                    }
                }
                () = tokio::time::sleep(EXIT_POLL) => {
                    if procs::reap(pid) {
                        return Err(format!("the server (pid {pid}) exited before READY=1"));
                    }
                    if Instant::now() >= deadline {
                        return Err(format!("no READY=1 from pid {pid} within {READY_LIMIT:?}"));
                    }
                }
            }
        }
    }
}

impl Replace for Restarts {
    fn target(&self) -> Target {
        Target { addr: self.addr }
    }

    fn current(&self) -> u32 {
        self.current
    }

    fn ls_root(&self) -> PathBuf {
        self.dir.path().join("ls")
    }

    async fn replace(&mut self, index: usize, clock: Instant) -> Result<Event, String> {
        let from = self.current;
        let t_s = clock.elapsed().as_secs_f64();
        let sent = Instant::now();
        procs::signal(from, Signal::TERM).map_err(|e| format!("SIGTERM to {from}: {e}"))?;
        procs::wait_gone(from, EXIT_LIMIT).await.ok_or(format!(
            "pid {from} still runs {EXIT_LIMIT:?} after SIGTERM"
        ))?;
        let old_gone = sent.elapsed();
        let to = self.launch().await?;
        self.current = to;
        Ok(Event {
            index,
            t_s,
            from_pid: from,
            to_pid: to,
            version: None,
            ready_ms: sent.elapsed().as_secs_f64() * 1e3,
            old_gone_ms: old_gone.as_secs_f64() * 1e3,
        })
    }

    async fn stop(&mut self) -> Result<(), String> {
        self.stopped = true;
        stop_last(self.current).await
    }
}

impl Drop for Restarts {
    /// Interrupted: the server serving now is told to stop (it drains and exits by itself).
    fn drop(&mut self) {
        if !self.stopped && self.current != 0 {
            let _ = procs::signal(self.current, Signal::TERM);
        }
    }
}
