//! `--spawn`: runs the `forkpool` next to this executable as a server on 127.0.0.1 port 0, with
//! `--ls-root` in a temporary directory, and stops it (SIGTERM, then SIGKILL if it lingers) when
//! dropped. A missing server is named with the command that builds it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};
use tempfile::TempDir;

use super::LoadtestError;

/// A server started by the load test. Stopped on drop, together with its temporary directory.
pub struct SpawnedServer {
    child: Child,
    pub addr: SocketAddr,
    /// `--ls-root` of the server; the ls scenario creates its directory in here.
    root: TempDir,
}

impl SpawnedServer {
    pub fn start(workers: Option<u16>, extra: &[String]) -> Result<SpawnedServer, LoadtestError> {
        let failed = |what: &str, e: std::io::Error| LoadtestError::Spawn(format!("{what}: {e}"));
        let root = tempfile::Builder::new()
            .prefix("forkpool-loadtest-")
            .tempdir()
            .map_err(|e| failed("cannot create a temporary directory", e))?;
        let program = server_program().map_err(|e| failed("cannot find this executable", e))?;
        if !program.is_file() {
            return Err(LoadtestError::Spawn(format!(
                "no server at {} (build it with `cargo build --release`)",
                program.display()
            )));
        }
        let mut command = Command::new(program);
        command
            .args(["--listen", "127.0.0.1:0", "--ls-root"])
            .arg(root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(n) = workers {
            command.args(["--workers", &n.to_string()]);
        }
        command.args(extra);
        let mut child = command
            .spawn()
            .map_err(|e| failed("cannot start the server", e))?;
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
        // Drain stdout so that the server never blocks writing to it.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        Ok(SpawnedServer { child, addr, root })
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then up to `grace` for a clean exit, then SIGKILL. Idempotent.
    pub fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Some(pid) = Pid::from_raw(self.child.id() as i32) {
            let _ = kill_process(pid, Signal::TERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
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

/// The `forkpool` server built next to this program (Cargo puts every binary of the workspace
/// in the same directory).
fn server_program() -> std::io::Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name("forkpool"))
}

/// Waits up to `limit` for each of `pids` to be gone (or a zombie), then SIGKILLs any left.
/// Used for the workers of a spawned server, which exit once the server closes their stdin.
pub fn reap_leftovers(pids: &[u32], limit: Duration) {
    let deadline = Instant::now() + limit;
    // A live (non-zombie) forkpool process; the name check guards against a reused pid.
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let (open, close) = (s.find('(')?, s.rfind(')')?);
                let live = &s[open + 1..close] == "forkpool" && !s[close + 2..].starts_with('Z');
                Some(live)
            })
            .unwrap_or(false)
    };
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &pid in pids.iter().filter(|&&p| alive(p)) {
        if let Some(pid) = Pid::from_raw(pid as i32) {
            let _ = kill_process(pid, Signal::KILL);
        }
    }
}
