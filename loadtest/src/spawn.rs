//! `--spawn`: runs the `forkpool` next to this executable as a server on 127.0.0.1 port 0, with
//! `--ls-root` in a temporary directory, and stops it (SIGTERM, then SIGKILL if it lingers) when
//! dropped. A missing server is named with the command that builds it.
//!
//! The upgrade scenario's server runs from a copy of the binary in that directory, with
//! `--pid-file` there too, so that the scenario can install another build at the server's path
//! without touching the build directory. [`ServerSetup`] holds what every server the load test
//! starts shares (workers, `--server-arg`, where its log goes), so that the restart scenario's
//! servers are started alike.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};
use tempfile::TempDir;

use super::procs::Proc;
use super::LoadtestError;

/// What every server the load test starts has in common.
#[derive(Debug, Clone, Default)]
pub struct ServerSetup {
    /// `--workers`, when given; else the server's default.
    pub workers: Option<u16>,
    /// More flags for the server (`--server-arg`).
    pub extra: Vec<String>,
    /// Where the servers' stderr (their log) is appended; discarded when `None`.
    pub log: Option<PathBuf>,
}

impl ServerSetup {
    /// The server's flags, with `ls_root` as its `--ls-root`.
    pub fn args(&self, ls_root: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--ls-root".into(), ls_root.into()];
        if let Some(n) = self.workers {
            args.extend(["--workers".into(), n.to_string().into()]);
        }
        args.extend(self.extra.iter().map(OsString::from));
        args
    }

    /// The server's stderr: `log` opened for appending, or nothing.
    pub fn stderr(&self) -> std::io::Result<Stdio> {
        let Some(path) = &self.log else {
            return Ok(Stdio::null());
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(file.into())
    }

    /// A temporary directory for one server: `ls/` (its `--ls-root`) is created in it.
    pub fn temp_dir(&self) -> std::io::Result<TempDir> {
        let dir = tempfile::Builder::new()
            .prefix("forkpool-loadtest-")
            .tempdir()?;
        std::fs::create_dir(dir.path().join("ls"))?;
        Ok(dir)
    }
}

/// Where the server runs from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Install {
    /// The build next to this program, as it is.
    InPlace,
    /// A copy in the server's temporary directory, with `--pid-file` there: the upgrade
    /// scenario replaces the copy.
    Copy,
}

/// A server started by the load test. Stopped on drop, together with its temporary directory.
pub struct SpawnedServer {
    /// The server process (after an in-place upgrade, the first generation only).
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its temporary directory: `ls/`, and for [`Install::Copy`] the binary and the pid file.
    dir: TempDir,
    /// The binary it was started from.
    program: PathBuf,
    /// Its `--pid-file`, for [`Install::Copy`].
    pid_file: Option<PathBuf>,
}

impl SpawnedServer {
    pub fn start(setup: &ServerSetup, install: Install) -> Result<SpawnedServer, LoadtestError> {
        let failed = |what: &str, e: std::io::Error| LoadtestError::Spawn(format!("{what}: {e}"));
        let dir = setup
            .temp_dir()
            .map_err(|e| failed("cannot create a temporary directory", e))?;
        let built = server_program().map_err(|e| failed("cannot find this executable", e))?;
        if !built.is_file() {
            return Err(LoadtestError::Spawn(format!(
                "no server at {} (build it with `cargo build --release`)",
                built.display()
            )));
        }
        let (program, pid_file) = match install {
            Install::InPlace => (built, None),
            Install::Copy => {
                let copy = dir.path().join("forkpool");
                std::fs::copy(&built, &copy).map_err(|e| failed("cannot copy the server", e))?;
                (copy, Some(dir.path().join("forkpool.pid")))
            }
        };
        let mut command = Command::new(&program);
        command
            .args(["--listen", "127.0.0.1:0"])
            .args(setup.args(&dir.path().join("ls")))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(
                setup
                    .stderr()
                    .map_err(|e| failed("cannot open --server-log", e))?,
            );
        if let Some(path) = &pid_file {
            command.arg("--pid-file").arg(path);
        }
        let (child, addr) = start_listening(command, &setup.extra)?;
        Ok(SpawnedServer {
            child,
            addr,
            dir,
            program,
            pid_file,
        })
    }

    /// The server's `--ls-root`.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("ls")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The binary the server was started from (and that an upgrade starts).
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Its `--pid-file`, if it has one.
    pub fn pid_file(&self) -> Option<&Path> {
        self.pid_file.as_deref()
    }

    /// SIGTERM, then up to `grace` for a clean exit, then SIGKILL. Idempotent; does nothing to
    /// a first generation that has exited (and been reaped) after an upgrade.
    pub fn stop(&mut self, grace: Duration) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        if let Some(pid) = Pid::from_raw(self.child.id() as i32) {
            let _ = kill_process(pid, Signal::TERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(15));
    }
}

/// Starts `command` (stdout piped) and reads its first line, `listening on http://ADDR`; then
/// drains its stdout on a thread, so that the server (and its successors, which inherit the
/// pipe) never block writing to it.
fn start_listening(
    mut command: Command,
    extra: &[String],
) -> Result<(Child, SocketAddr), LoadtestError> {
    let mut child = command
        .spawn()
        .map_err(|e| LoadtestError::Spawn(format!("cannot start the server: {e}")))?;
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let mut line = String::new();
    let read = stdout.read_line(&mut line);
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .and_then(|a| a.parse().ok());
    let Some(addr) = addr else {
        let _ = child.kill();
        let status = child.wait().ok();
        return Err(LoadtestError::Spawn(format!(
            "the server did not start (first line {line:?}, {read:?}, {status:?}); run it by hand with the same flags to see why: {extra:?}"
        )));
    };
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    Ok((child, addr))
}

/// The `forkpool` server built next to this program (Cargo puts every binary of the workspace
/// in the same directory).
pub fn server_program() -> std::io::Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name("forkpool"))
}

/// The version a `forkpool` binary reports (`forkpool --version` prints `forkpool X`).
pub fn version_of(program: &Path) -> Result<String, String> {
    let output = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {} --version: {e}", program.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .strip_prefix("forkpool ")
        .map(str::to_owned)
        .ok_or_else(|| format!("{} --version printed {text:?}", program.display()))
}

/// Waits up to `limit` for each of `pids` to be gone (or a zombie), then SIGKILLs any left.
/// Used for the workers of a spawned server, which exit once the server closes their stdin.
pub fn reap_leftovers(pids: &[u32], limit: Duration) {
    let deadline = Instant::now() + limit;
    // A live (non-zombie) forkpool process; the name check guards against a reused pid.
    let alive = |pid: u32| Proc::read(pid).is_some_and(|p| p.name == "forkpool" && !p.is_zombie());
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &pid in pids.iter().filter(|&&p| alive(p)) {
        if let Some(pid) = Pid::from_raw(pid as i32) {
            let _ = kill_process(pid, Signal::KILL);
        }
    }
}
