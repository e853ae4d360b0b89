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
    /// The server's flags, with `ls_root` as its `--ls-root`. Each `--server-arg` may hold a
    /// flag and its value in any spelling the server takes: `--queue=4`, or `--queue 4` as
    /// one argument (split at whitespace), or the two as two `--server-arg`s.
    pub fn args(&self, ls_root: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--ls-root".into(), ls_root.into()];
        if let Some(n) = self.workers {
            args.extend(["--workers".into(), n.to_string().into()]);
        }
        args.extend(self.extra().map(OsString::from));
        args
    }

    /// The `--server-arg`s, split at whitespace.
    fn extra(&self) -> impl Iterator<Item = &str> {
        self.extra.iter().flat_map(|a| a.split_whitespace())
    }

    /// Whether a `--server-arg` sets `--listen` (either spelling): then the load test does not
    /// add its own `--listen 127.0.0.1:0`, which would make the server refuse a flag given twice.
    pub fn sets_listen(&self) -> bool {
        self.extra()
            .any(|a| a == "--listen" || a.starts_with("--listen="))
    }

    /// The server's stderr: `log` opened for appending, or nothing.
    pub fn stderr(&self) -> std::io::Result<Stdio> {
        match &self.log {
            Some(path) => Ok(append(path)?.into()),
            None => Ok(Stdio::null()),
        }
    }

    /// The server's stderr, kept where a failed start can be read back: `log`, or `fallback`.
    fn stderr_kept(&self, fallback: &Path) -> std::io::Result<(Stdio, PathBuf)> {
        let path = self.log.clone().unwrap_or_else(|| fallback.to_owned());
        Ok((append(&path)?.into(), path))
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

/// `path` opened for appending, created if missing.
fn append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
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
                "no server at {} (build it with `cargo dist`, or `cargo build --release`)",
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
        let (stderr, log) = setup
            .stderr_kept(&dir.path().join("server.log"))
            .map_err(|e| failed("cannot open the server's log", e))?;
        let mut command = Command::new(&program);
        if !setup.sets_listen() {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command
            .args(setup.args(&dir.path().join("ls")))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        if let Some(path) = &pid_file {
            command.arg("--pid-file").arg(path);
        }
        let (child, addr) = start_listening(command, &log)?;
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
/// pipe) never block writing to it. A server that exits (or says something else) instead is
/// reported with its command line, how it ended and the end of its stderr (`log`).
fn start_listening(mut command: Command, log: &Path) -> Result<(Child, SocketAddr), LoadtestError> {
    let mut child = command
        .spawn()
        .map_err(|e| LoadtestError::Spawn(format!("cannot start {}: {e}", shown(&command))))?;
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let mut line = String::new();
    let _ = stdout.read_line(&mut line);
    let addr = line.trim().strip_prefix("listening on http://");
    let Some(addr) = addr.and_then(|a| a.parse().ok()) else {
        let _ = child.kill();
        let ended = match child.wait() {
            Ok(status) => status.to_string(),
            Err(e) => format!("status unknown: {e}"),
        };
        let said = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = said.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(LoadtestError::Spawn(format!(
            "the server did not start ({ended}; its stdout said {line:?})\n  command: {}\n  its stderr ({}):\n    {}",
            shown(&command),
            log.display(),
            tail.join("\n    ")
        )));
    };
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    Ok((child, addr))
}

/// `command` as one would type it (arguments quoted where needed).
fn shown(command: &Command) -> String {
    let quote = |arg: &std::ffi::OsStr| {
        let arg = arg.to_string_lossy();
        match arg.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') || arg.is_empty() {
            true => format!("'{}'", arg.replace('\'', "'\\''")),
            false => arg.into_owned(),
        }
    };
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ")
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
