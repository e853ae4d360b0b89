//! One worker process as the server sees it: spawn and handshake, send a line, read a line,
//! kill, retire.
//!
//! The child gets its own process group (so a kill reaches everything it may have started) and
//! `kill_on_drop`, which only matters if the pool itself is torn down without a clean
//! shutdown: handlers never hold a worker, so a client that hangs up cannot drop one.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::protocol::{decode, HelloLine, LineReader, ProtocolError};

/// How long a new worker may take to say hello before it counts as a failed start.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a retiring worker may take to exit after its stdin closes.
const RETIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything needed to start a worker; built once by the pool.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    pub program: PathBuf,
    /// Arguments after the program: `worker --kind ... --parent-pid ...`.
    pub args: Vec<String>,
    pub kind: &'static str,
    pub max_line: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot start {program}: {source}")]
    Exec {
        program: String,
        source: std::io::Error,
    },
    #[error("no hello within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("exited before its hello: {0}")]
    DiedEarly(String),
    #[error("bad hello: {0}")]
    BadHello(#[from] ProtocolError),
}

pub struct WorkerProcess {
    child: Child,
    pub pid: u32,
    stdin: ChildStdin,
    stdout: LineReader<ChildStdout>,
    pub started: Instant,
}

impl WorkerProcess {
    /// Starts a worker and waits for a hello that matches our version, job kind and its pid.
    pub async fn spawn(spec: &SpawnSpec) -> Result<WorkerProcess, SpawnError> {
        let mut child = Command::new(&spec.program)
            .args(&spec.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| SpawnError::Exec {
                program: spec.program.display().to_string(),
                source,
            })?;
        let pid = child.id().unwrap_or_default();
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            unreachable!("stdin and stdout are piped above");
        };
        let mut worker = WorkerProcess {
            child,
            pid,
            stdin,
            stdout: LineReader::new(stdout, spec.max_line),
            started: Instant::now(),
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, worker.handshake(spec)).await {
            Ok(Ok(())) => Ok(worker),
            Ok(Err(SpawnError::DiedEarly(_))) => {
                let cause = describe(worker.child.wait().await.ok());
                Err(SpawnError::DiedEarly(cause))
            }
            Ok(Err(e)) => {
                worker.kill().await;
                Err(e)
            }
            Err(_) => {
                worker.kill().await;
                Err(SpawnError::HandshakeTimeout(HANDSHAKE_TIMEOUT))
            }
        }
    }

    async fn handshake(&mut self, spec: &SpawnSpec) -> Result<(), SpawnError> {
        let line = self
            .stdout
            .next_line()
            .await?
            .ok_or_else(|| SpawnError::DiedEarly(String::new()))?;
        let hello = decode::<HelloLine>(&line)?.hello;
        let expected = (env!("CARGO_PKG_VERSION"), spec.kind, self.pid);
        if (hello.version.as_str(), hello.kind.as_str(), hello.pid) != expected {
            return Err(ProtocolError::Unexpected(format!(
                "hello {hello:?} does not match version {}, kind {}, pid {}",
                expected.0, expected.1, expected.2
            ))
            .into());
        }
        Ok(())
    }

    /// Writes one protocol line (newline included).
    pub async fn send(&mut self, line: &[u8]) -> std::io::Result<()> {
        self.stdin.write_all(line).await
    }

    /// Reads the next protocol line; cancel-safe (see [`LineReader`]).
    pub async fn next_line(&mut self) -> Result<Option<Vec<u8>>, ProtocolError> {
        self.stdout.next_line().await
    }

    /// SIGKILLs the worker's process group and reaps it. Returns how it ended.
    pub async fn kill(&mut self) -> String {
        kill_group(self.pid);
        describe(self.child.wait().await.ok())
    }

    /// The exit of a worker whose stdout hit EOF: reaps it, killing it if it lingers.
    pub async fn exit_cause(&mut self) -> String {
        match tokio::time::timeout(RETIRE_TIMEOUT, self.child.wait()).await {
            Ok(status) => describe(status.ok()),
            Err(_) => self.kill().await,
        }
    }

    /// Closes stdin so the worker exits by itself; kills it if it does not within a few seconds.
    pub async fn retire(self) {
        let WorkerProcess {
            mut child,
            stdin,
            pid,
            ..
        } = self;
        // Our end of the pipe closing is the worker's signal to exit.
        drop(stdin);
        if tokio::time::timeout(RETIRE_TIMEOUT, child.wait())
            .await
            .is_err()
        {
            tracing::warn!(pid, "worker ignored EOF on stdin; killing it");
            kill_group(pid);
            let _ = child.wait().await;
        }
    }
}

/// SIGKILL to the process group led by `pid`. ESRCH only means it is already gone: the caller
/// reaps it either way.
fn kill_group(pid: u32) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process_group(pid, Signal::KILL);
    }
}

/// Human-readable end of a process: "exited with code 3", "killed by signal 9 (SIGKILL)".
pub fn describe(status: Option<ExitStatus>) -> String {
    let Some(status) = status else {
        return "exit status unavailable".into();
    };
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}{}", signal_name(signal)),
        _ => format!("ended with status {status}"),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        6 => " (SIGABRT)",
        9 => " (SIGKILL)",
        11 => " (SIGSEGV)",
        15 => " (SIGTERM)",
        _ => "",
    }
}
