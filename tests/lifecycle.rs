//! The server's own lifecycle, against the real binary: SIGUSR2 in-place upgrades under load
//! (the listening socket handed over, the new server ready before the old one drains), a new
//! binary that fails to start or never becomes ready, sockets passed the way a systemd socket
//! unit passes them (`LISTEN_FDS`) with restarts on them under load, the readiness, stopping
//! and watchdog notifications, and the pid file.
//!
//! The test process makes itself a child subreaper, as systemd or an init is: a server that
//! handed over and exited leaves its successor to us, and the tests reap it.
//!
//! Counts, not timings, are asserted: no failed request under load (tests/common/load.rs says
//! what counts as one), no process left behind. The README's Lifecycle figures (20 upgrades, 20
//! restarts) come from the load tester.

use crate::common;

use std::io::ErrorKind;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::load::{Load, LISTED};
use common::{alive, open_fds, signal, status, wait_until, Http, Server, BIN};
use forkpool::systemd::command_with_listeners;
use rustix::process::{Pid, WaitOptions};

/// Makes this process the reaper of orphaned descendants (once per test binary).
fn become_subreaper() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .expect("PR_SET_CHILD_SUBREAPER")
    });
}

/// Waits up to `limit` for our child `pid` to exit, and reaps it; false if it still runs.
fn reap(pid: u32, limit: Duration) -> bool {
    let pid = Pid::from_raw(pid as i32).expect("a pid");
    wait_until(limit, || {
        match rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
            Ok(Some(_)) => Some(()),
            Ok(None) => None,
            Err(e) => panic!("waitpid({pid:?}): {e}: not a child of the tests"),
        }
    })
    .is_some()
}

/// Kills and reaps the server `pid` when dropped (the generation a test ends with).
struct Reaped(u32);

impl Drop for Reaped {
    fn drop(&mut self) {
        if alive(self.0) {
            signal(self.0, "KILL");
            reap(self.0, Duration::from_secs(10));
        }
    }
}

/// A copy of the binary in a directory of its own: the path an upgrade starts, which a test
/// can replace, with the pid file and the /ls root beside it.
struct Installed {
    dir: tempfile::TempDir,
}

impl Installed {
    fn new() -> Installed {
        let installed = Installed {
            dir: tempfile::tempdir().unwrap(),
        };
        installed.replace_with(Path::new(BIN));
        std::fs::create_dir(installed.root()).unwrap();
        std::fs::write(installed.root().join(LISTED), "x").unwrap();
        installed
    }

    fn program(&self) -> PathBuf {
        self.dir.path().join("forkpool")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("forkpool.pid")
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Installs `from` as `install(1)` does: a new file, renamed over the old one. `cp` writes
    /// it, so that no child this process forks meanwhile holds it open for writing (see
    /// `common::write_executable`).
    fn replace_with(&self, from: &Path) {
        let new = self.dir.path().join("forkpool.new");
        let copied = Command::new("cp").arg(from).arg(&new).status().unwrap();
        assert!(copied.success(), "cp {from:?} {new:?}: {copied}");
        std::fs::rename(&new, self.program()).unwrap();
    }

    /// Installs a shell script in place of the binary.
    fn replace_with_script(&self, script: &str) {
        let new = self.dir.path().join("forkpool.new");
        common::write_executable(&new, script.as_bytes());
        std::fs::rename(&new, self.program()).unwrap();
    }

    /// The pid in the pid file, once it is there.
    fn serving(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Starts the installed binary with one worker, the pid file, the /ls root and `args`.
    fn start(&self, args: &[&str]) -> Server {
        let (pid_file, root) = (self.pid_file(), self.root());
        let base = [
            "--workers",
            "1",
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--ls-root",
            root.to_str().unwrap(),
        ];
        let server = Server::with(&[&base, args].concat())
            .program(&self.program())
            .start();
        let pid = server.pid();
        wait_until(Duration::from_secs(20), || {
            (self.serving() == Some(pid)).then_some(())
        })
        .expect("the pid file never named the server");
        server
    }

    /// SIGUSR2 to the server `old` (started as `server`, whose log a failure shows); waits until
    /// the pid file names another server and `old` has exited, and returns the new pid.
    fn upgrade(&self, server: &Server, old: u32) -> u32 {
        signal(old, "USR2");
        self.successor(server, old)
    }

    /// Waits until the pid file names a server other than `old` and `old` has exited, and
    /// returns the new pid; a failure shows `server`'s log.
    fn successor(&self, server: &Server, old: u32) -> u32 {
        // Longer than the default --upgrade-timeout (30 s), so that a new server too slow to be
        // ready shows in the log as the old server giving up on it, not as this wait's end.
        let new = wait_until(Duration::from_secs(45), || {
            self.serving().filter(|&p| p != old)
        })
        .unwrap_or_else(|| {
            panic!(
                "no new server named in the pid file after SIGUSR2 to {old}:\n{}",
                server.log()
            )
        });
        assert!(
            reap(old, Duration::from_secs(30)),
            "the old server {old} did not exit"
        );
        new
    }
}

#[test]
fn sigusr2_upgrades_to_the_binary_now_installed_under_load_without_a_failed_request() {
    become_subreaper();
    let installed = Installed::new();
    let server = installed.start(&[]);
    let first = server.pid();
    let idle_fds = open_fds(first);
    let load = Load::start_mixed(server.addr);
    let mut serving = first;
    let mut previous = None;
    let mut last = Reaped(first);
    for _ in 0..3 {
        previous = Some(serving);
        let workers: Vec<u32> = common::children_of(serving).iter().map(|p| p.pid).collect();
        installed.replace_with(Path::new(BIN));
        serving = installed.upgrade(&server, serving);
        assert!(
            workers.iter().all(|&w| !alive(w)),
            "a worker of the old server lives on"
        );
        last = Reaped(serving);
    }
    let tally = load.finish();
    println!("{tally}");
    assert!(tally.failed.is_empty(), "{tally}\n{}", server.log());
    assert_eq!(
        tally.ok.len(),
        4,
        "every kind of request was served:\n{tally}"
    );
    let status = status(&server);
    assert_eq!(status["pid"], serving, "{status}");
    assert_eq!(status["upgraded_from"], previous.unwrap(), "{status}");
    // The load's connections close; the new server holds what the first one held at idle.
    let fds = wait_until(Duration::from_secs(10), || {
        let fds = open_fds(serving);
        (fds <= idle_fds).then_some(fds)
    });
    assert!(
        fds.is_some(),
        "{} fds, {idle_fds} at idle",
        open_fds(serving)
    );
    // No `ls` left over from the listings, no zombie: only the workers of the last server.
    let children = common::children_of(serving);
    assert!(
        children
            .iter()
            .all(|p| p.name == "forkpool" && p.state != 'Z'),
        "{children:?}"
    );
    let log = server.log();
    assert_eq!(log.matches("handing over and draining").count(), 3, "{log}");
    drop(last);
}

#[test]
fn an_upgrade_waits_while_the_new_binary_is_still_open_for_writing() {
    become_subreaper();
    let installed = Installed::new();
    let server = installed.start(&[]);
    let old = server.pid();
    installed.replace_with(Path::new(BIN));
    // A process holding the new binary open for writing, as a child forked while an installer
    // had it open does until it execs: starting the binary fails with ETXTBSY meanwhile.
    let program = installed.program();
    let mut holder = Command::new("sh")
        .args(["-c", r#"exec 3>>"$0"; read -r line"#])
        .arg(&program)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let holds = wait_until(Duration::from_secs(20), || {
        let fd = std::fs::read_link(format!("/proc/{}/fd/3", holder.id())).ok()?;
        (fd == program).then_some(())
    });
    assert!(holds.is_some(), "the holder never opened {program:?}");
    signal(old, "USR2");
    server.wait_for_log("the start retried while the binary is busy", |log| {
        log.contains("open for writing by another process")
    });
    drop(holder.stdin.take()); // the holder reads end of file, exits and closes the binary
    holder.wait().unwrap();
    let new = installed.successor(&server, old);
    assert_eq!(status(&server)["pid"], new);
    drop(Reaped(new));
}

#[test]
fn a_new_binary_that_fails_or_is_not_ready_in_time_is_killed_and_the_old_server_keeps_serving() {
    become_subreaper();
    let installed = Installed::new();
    let server = installed.start(&["--upgrade-timeout", "2s"]);
    let old = server.pid();

    installed.replace_with_script("#!/bin/sh\necho 'new binary: broken' >&2\nexit 3\n");
    signal(old, "USR2");
    server.wait_for_log("a failed start", |log| {
        log.contains("upgrade failed") && log.contains("exited before it was ready: exit status: 3")
    });
    assert_eq!(server.get("/testrequest").status, 200);

    // Never ready, and it started a process of its own: both are killed.
    installed.replace_with_script("#!/bin/sh\nsleep 600 &\nexec sleep 601\n");
    signal(old, "USR2");
    let log = server.wait_for_log("a start that timed out", |log| {
        log.contains("was not ready within 2s")
    });
    let pid: u32 = log
        .split("the new server (pid ")
        .nth(2)
        .and_then(|rest| rest.split(')').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid of the new server in:\n{log}"));
    let group = || common::processes().filter(|p| p.pgrp == pid && p.state != 'Z');
    let group_gone = wait_until(Duration::from_secs(10), || {
        (group().count() == 0).then_some(())
    });
    assert!(
        group_gone.is_some(),
        "left running: {:?}",
        group().collect::<Vec<_>>()
    );
    assert_eq!(server.get("/isprime?number=7").status, 200);
    assert_eq!(installed.serving(), Some(old));

    // Fixed: the next SIGUSR2 hands over.
    installed.replace_with(Path::new(BIN));
    let new = installed.upgrade(&server, old);
    let _new = Reaped(new);
    assert!(common::try_request(server.addr, "GET", "/testrequest", &[], b"").is_ok());
}

/// A `NOTIFY_SOCKET` of our own, as systemd has: what the servers tell their manager.
struct Notifications {
    _dir: tempfile::TempDir,
    path: PathBuf,
    socket: UnixDatagram,
}

impl Notifications {
    fn bind() -> Notifications {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Notifications {
            _dir: dir,
            path,
            socket,
        }
    }

    /// Reads notifications until one has the line `line`; panics after 30 s without one.
    fn wait_for(&self, line: &str) {
        let mut buffer = [0u8; 4096];
        loop {
            let n = match self.socket.recv(&mut buffer) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => panic!("no {line} within 30 s"),
                Err(e) => panic!("notify socket: {e}"),
            };
            let text = String::from_utf8_lossy(&buffer[..n]);
            if text.lines().any(|l| l == line) {
                return;
            }
        }
    }
}

/// A server the test launched itself: killed and reaped when dropped, so that a failing test
/// leaves no server behind (a `Child` alone is not killed on drop).
struct Launched(Child);

impl Drop for Launched {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts the binary as a systemd socket unit's service would be: `listener` passed as fd 3
/// (named after the unit, as systemd names it by default), notifications to `notify`, a
/// watchdog every 200 ms, and a `--listen` that must be ignored.
fn socket_activated(listener: &TcpListener, notify: &Notifications, root: &Path) -> Child {
    // A drain that waits for what is in flight however slow a loaded machine makes it (at the
    // default 10 s grace, a heavy job of the load was answered 503 `shutting_down` under a busy
    // loop on every core), and workers in the normal class as every test's server has them.
    let args = [
        "--workers",
        "1",
        "--shutdown-grace",
        "120s",
        "--listen",
        "127.0.0.1:1",
        "--ls-root",
    ]
    .map(Into::into);
    let args = [&args[..], &[root.as_os_str().to_owned()]].concat();
    let (sched, class) = common::WORKERS_IN_NORMAL_CLASS;
    let env = [
        (sched, std::ffi::OsStr::new(class)),
        ("NOTIFY_SOCKET", notify.path.as_os_str()),
        ("WATCHDOG_USEC", "200000".as_ref()),
    ];
    let passed = [("forkpool", listener.as_fd())];
    command_with_listeners(Path::new(BIN), &args, &env, &passed)
        .unwrap()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start forkpool")
}

#[test]
fn a_socket_passed_as_systemd_passes_it_is_served_and_restarts_on_it_lose_no_request() {
    let installed = Installed::new(); // only for its /ls root
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let notify = Notifications::bind();
    let mut child = Launched(socket_activated(&listener, &notify, &installed.root()));
    notify.wait_for("READY=1");
    // Ready means a worker said hello, and the passed socket is the one served.
    let status = common::try_request(addr, "GET", "/status", &[], b"")
        .unwrap()
        .json();
    assert_eq!(status["config"]["listen"], addr.to_string(), "{status}");
    let live = status["workers"].as_array().unwrap().iter();
    assert!(
        live.filter(|w| w["state"] == "idle" || w["state"] == "busy")
            .count()
            >= 1
    );
    notify.wait_for("WATCHDOG=1");
    notify.wait_for("WATCHDOG=1");

    let load = Load::start_mixed(addr);
    for _ in 0..3 {
        signal(child.0.id(), "TERM");
        notify.wait_for("STOPPING=1");
        let exit = child.0.wait().unwrap();
        assert!(exit.success(), "{exit:?}");
        child = Launched(socket_activated(&listener, &notify, &installed.root()));
        notify.wait_for("READY=1");
    }
    let tally = load.finish();
    println!("{tally}");
    assert!(tally.failed.is_empty(), "{tally}");
    assert_eq!(
        tally.ok.len(),
        4,
        "every kind of request was served:\n{tally}"
    );
    signal(child.0.id(), "TERM");
    assert!(child.0.wait().unwrap().success());
}

/// A launcher (or a service manager) that stops reading its notification socket must not
/// stall the server: with the socket's queue full, a send there blocks, and a server whose
/// runtime thread made it could not finish its drain after SIGTERM (seen under load: the
/// server hung in a `WATCHDOG=1` until the test was killed).
#[test]
fn a_notify_socket_nobody_reads_does_not_keep_the_server_from_stopping() {
    let installed = Installed::new(); // only for its /ls root
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let notify = Notifications::bind();
    let mut child = Launched(socket_activated(&listener, &notify, &installed.root()));
    notify.wait_for("READY=1");
    // From now on nobody reads: fill the queue (the kernel's `max_dgram_qlen`) so that the
    // server's next notification cannot be delivered.
    let probe = UnixDatagram::unbound().unwrap();
    probe.set_nonblocking(true).unwrap();
    let full = wait_until(Duration::from_secs(30), || {
        match probe.send_to(b"FILLER=1\n", &notify.path) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => Some(()),
            Err(e) => panic!("filling the notify socket: {e}"),
            Ok(_) => None,
        }
    });
    assert!(full.is_some(), "the notify socket's queue never filled");
    signal(child.0.id(), "TERM");
    let exit = wait_until(Duration::from_secs(30), || child.0.try_wait().unwrap());
    let exit = exit.expect("the server did not exit within 30 s of SIGTERM");
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn a_passed_descriptor_that_is_not_a_listening_socket_is_a_start_up_error_naming_it() {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let output = command_with_listeners(Path::new(BIN), &[], &[], &[("public", udp.as_fd())])
        .unwrap()
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("LISTEN_FDS: fd 3 (`public`) is not a listening TCP socket"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "nothing may claim to listen");
}
