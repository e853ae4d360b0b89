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

use super::protocol::{decode, HelloLine, LineReader, ProtocolError, EXIT_OUT_OF_MEMORY};

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
                let exit = Exit::from(worker.child.wait().await.ok());
                Err(SpawnError::DiedEarly(exit.to_string()))
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
    pub async fn kill(&mut self) -> Exit {
        kill_group(self.pid);
        Exit::from(self.child.wait().await.ok())
    }

    /// The exit of a worker whose stdout hit EOF: reaps it, killing it if it lingers.
    pub async fn exit_cause(&mut self) -> Exit {
        match tokio::time::timeout(RETIRE_TIMEOUT, self.child.wait()).await {
            Ok(status) => Exit::from(status.ok()),
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

/// How a worker process ended, as the 502 message, the log and the exit metric tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// An allocation failed, which under `--worker-memory` means the job needed more address
    /// space than the limit allows (the worker exits with [`EXIT_OUT_OF_MEMORY`]).
    OutOfMemory,
    /// The status could not be read (`wait` failed).
    Unknown,
}

impl Exit {
    /// Metric label for a worker that ended by itself: `crashed_exit_101`, `crashed_signal_11`,
    /// `crashed_out_of_memory`.
    pub fn crash_label(self) -> String {
        match self {
            Exit::Code(code) => format!("crashed_exit_{code}"),
            Exit::Signal(signal) => format!("crashed_signal_{signal}"),
            Exit::OutOfMemory => "crashed_out_of_memory".into(),
            Exit::Unknown => "crashed_unknown".into(),
        }
    }
}

impl From<Option<ExitStatus>> for Exit {
    fn from(status: Option<ExitStatus>) -> Exit {
        match status.map(|s| (s.code(), s.signal())) {
            Some((Some(EXIT_OUT_OF_MEMORY), _)) => Exit::OutOfMemory,
            Some((Some(code), _)) => Exit::Code(code),
            Some((None, Some(signal))) => Exit::Signal(signal),
            _ => Exit::Unknown,
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Exit::Code(code) => write!(f, "exited with code {code}"),
            Exit::Signal(signal) => write!(f, "killed by signal {signal}{}", signal_name(signal)),
            Exit::OutOfMemory => write!(f, "ran out of memory (see --worker-memory)"),
            Exit::Unknown => write!(f, "exit status unavailable"),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_read_and_label_alike() {
        let cases = [
            (
                ExitStatus::from_raw(9),
                "killed by signal 9 (SIGKILL)",
                "crashed_signal_9",
            ),
            (
                ExitStatus::from_raw(11),
                "killed by signal 11 (SIGSEGV)",
                "crashed_signal_11",
            ),
            (
                ExitStatus::from_raw(101 << 8),
                "exited with code 101",
                "crashed_exit_101",
            ),
            (
                ExitStatus::from_raw(EXIT_OUT_OF_MEMORY << 8),
                "ran out of memory (see --worker-memory)",
                "crashed_out_of_memory",
            ),
        ];
        for (status, text, label) in cases {
            let exit = Exit::from(Some(status));
            assert_eq!(
                (exit.to_string().as_str(), exit.crash_label().as_str()),
                (text, label)
            );
        }
        assert_eq!(Exit::from(None).crash_label(), "crashed_unknown");
    }
}
