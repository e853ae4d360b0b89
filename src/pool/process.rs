//! One worker process as the pool sees it: spawn and handshake, write jobs while reading
//! answers, kill, retire.
//!
//! The child gets its own process group, so that a kill reaches everything it may have
//! started. A `WorkerProcess` that is dropped without being reaped (its driver panicked, or the
//! pool's thread stopped with the last handle) kills that group and reaps the child on the spot
//! (see [`GroupChild`]): no path leaves a worker running or a zombie behind.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};
use bytes::{Buf, BytesMut};
use futures_util::FutureExt;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::lifecycle::Exit;
use super::oom::OomWatch;
use super::protocol::{
    decode, Hello, HelloLine, LineReader, ProtocolError, PROTOCOL_VERSION, RELEASE,
};
use super::WorkerCommand;

/// How long a new worker may take to say hello before it counts as a failed start.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a retiring worker may take to exit after its stdin closes.
const RETIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a dropped worker is waited for after its SIGKILL, blocking: a killed process is
/// normally gone within milliseconds. Past this, tokio's orphan reaper takes over.
const DROP_REAP_TIMEOUT: Duration = Duration::from_secs(1);

/// Everything needed to start a worker; built once by the pool.
#[derive(Clone)]
pub(super) struct SpawnSpec {
    /// The embedding program's recipe for the command line.
    pub(super) command: Arc<dyn WorkerCommand>,
    /// [`Job::KIND`](super::Job::KIND), which the hello must name.
    pub(super) kind: &'static str,
    /// Longest protocol line read from the worker.
    pub(super) max_line: usize,
    /// The pool's cgroup's OOM kills, which tell a worker the OOM killer took.
    pub(super) oom: Arc<OomWatch>,
}

/// Why a worker did not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The program could not be executed (missing, not executable, out of memory or pids);
    /// the slot retries after its backoff.
    #[error("cannot start {program}: {source}")]
    Exec {
        /// The program that could not be executed.
        program: String,
        /// The error of `spawn` (from `execve` or `fork`).
        source: std::io::Error,
    },
    /// The worker said no hello within the handshake time (the value) and was killed: a hung
    /// program or one that is not a forkpool worker.
    #[error("no hello within {0:?}")]
    HandshakeTimeout(Duration),
    /// The worker exited before its hello; the value says how (exit code or signal, and what
    /// it wrote on stderr is in the log).
    #[error("exited before its hello: {0}")]
    DiedEarly(String),
    /// Its first line was not a valid hello (too long, not JSON, another message), or the pipe
    /// failed while reading it.
    #[error("bad hello: {0}")]
    BadHello(#[from] ProtocolError),
    /// The hello names another protocol version (or none): a worker program of another
    /// release, which this pool cannot talk to. Killed; every later start fails the same way
    /// until the program is replaced.
    #[error("{}", incompatible(.protocol, .version))]
    Incompatible {
        /// The protocol version the worker speaks; `None` when its hello names none.
        protocol: Option<u32>,
        /// The package version the worker reported.
        version: String,
    },
}

/// Why a worker that speaks `protocol` is refused, in words an operator can act on.
fn incompatible(protocol: &Option<u32>, version: &str) -> String {
    match protocol {
        Some(theirs) => format!(
            "the worker (version {version}) speaks protocol {theirs}; this pool speaks protocol \
             {PROTOCOL_VERSION}: run a worker program built for it"
        ),
        None => format!(
            "the worker (version {version}) names no protocol version in its hello: it predates \
             protocol versions and cannot talk to this pool (protocol {PROTOCOL_VERSION}); run a \
             worker program built for it"
        ),
    }
}

/// A child process that is killed (its whole group) and reaped when dropped unreaped.
///
/// Why not tokio's `kill_on_drop` alone: it signals only the child itself, not what the
/// child started, and leaves the reaping to whichever runtime next handles a SIGCHLD, which
/// may be none once the pool's thread has stopped.
struct GroupChild(Child);

impl Drop for GroupChild {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(None)) {
            return; // already reaped (or unknowable): nothing of ours to kill
        }
        if let Some(pid) = self.0.id() {
            kill_group(pid);
        }
        let started = Instant::now();
        while matches!(self.0.try_wait(), Ok(None)) && started.elapsed() < DROP_REAP_TIMEOUT {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A running worker that has said hello.
pub(super) struct WorkerProcess {
    child: GroupChild,
    /// Its pid, which is also its process group id.
    pub(super) pid: u32,
    /// Jobs go here; closing it asks the worker to exit.
    stdin: ChildStdin,
    /// Replies come from here.
    stdout: LineReader<ChildStdout>,
    /// When it was spawned.
    pub(super) started: Instant,
    /// The package version it reported in its hello (shown per slot in `/status`).
    pub(super) version: String,
    /// Its hello said it understands the release line ([`RELEASE`]).
    releases: bool,
    /// Tells whether a SIGKILL we did not send was the OOM killer's.
    oom: Arc<OomWatch>,
}

impl WorkerProcess {
    /// Starts a worker and waits for a hello that matches our protocol version, job kind and
    /// its pid.
    pub(super) async fn spawn(spec: &SpawnSpec) -> Result<WorkerProcess, SpawnError> {
        let mut command = Command::from(spec.command.command());
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| SpawnError::Exec {
                program: command
                    .as_std()
                    .get_program()
                    .to_string_lossy()
                    .into_owned(),
                source,
            })?;
        let pid = child.id().unwrap_or_default();
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            unreachable!("stdin and stdout are piped above");
        };
        let mut worker = WorkerProcess {
            child: GroupChild(child),
            pid,
            stdin,
            stdout: LineReader::new(stdout, spec.max_line),
            started: Instant::now(),
            version: String::new(),
            releases: false,
            oom: spec.oom.clone(),
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, worker.handshake(spec)).await {
            Ok(Ok(())) => Ok(worker),
            Ok(Err(SpawnError::DiedEarly(_))) => {
                let exit = worker.died().await;
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
        check_hello(&hello, spec.kind, self.pid)?;
        self.version = hello.version;
        self.releases = hello.release;
        Ok(())
    }

    /// Tells the worker, which has no job, to let go of the memory its last jobs mapped
    /// (see [`RELEASE`]); nothing if its hello did not say it understands. No answer comes.
    /// Never waits: `false` when the worker's stdin does not take the line at once. A worker
    /// with no job has read every line sent to it, so its pipe is empty, and a full one means
    /// it stopped reading (broken, or hostile: it can answer a job from the start of its line
    /// and leave the rest unread); a write waiting on it would hold the driver, deaf to the
    /// pool's close and rolls, for as long as the worker liked. A failed write means the
    /// worker is gone: its stdout's end is the driver's next event.
    pub(super) fn release(&mut self) -> bool {
        if !self.releases {
            return true;
        }
        let mut line = RELEASE.to_vec();
        line.push(b'\n');
        // One write of fewer than PIPE_BUF bytes goes into a pipe whole or not at all: polled
        // once, it is written, or the pipe is full (tokio's pipes are non-blocking).
        match self.stdin.write(&line).now_or_never() {
            Some(Ok(written)) => written == line.len(),
            Some(Err(error)) => {
                tracing::debug!(pid = self.pid, %error, "release line not written");
                true
            }
            None => false,
        }
    }

    /// Writes what is left of `outbox` (whole protocol lines) while waiting for the next line
    /// from the worker, and returns that line; cancel-safe (what is written leaves `outbox`,
    /// what is read stays in the [`LineReader`]). Both at once, because a worker blocked on
    /// writing replies nobody reads would never take the rest of a long outbox. Writing comes
    /// first, so that new jobs reach the worker before the driver works through answers it
    /// already has. A failed write (the worker closed its stdin: it exited) drops the rest of
    /// the outbox; what the worker wrote before it went is still read, then the end.
    pub(super) async fn write_and_read(
        &mut self,
        outbox: &mut BytesMut,
    ) -> Result<Option<Vec<u8>>, ProtocolError> {
        while !outbox.is_empty() {
            tokio::select! {
                biased;
                written = self.stdin.write(outbox) => match written {
                    Ok(n) if n > 0 => outbox.advance(n),
                    _ => outbox.clear(),
                },
                line = self.stdout.next_line() => return line,
            }
        }
        self.stdout.next_line().await
    }

    /// Reads the next protocol line; cancel-safe (see [`LineReader`]).
    pub(super) async fn next_line(&mut self) -> Result<Option<Vec<u8>>, ProtocolError> {
        self.stdout.next_line().await
    }

    /// SIGKILLs the worker's process group and reaps it. Returns how it ended.
    pub(super) async fn kill(&mut self) -> Exit {
        kill_group(self.pid);
        Exit::from(self.child.0.wait().await.ok())
    }

    /// The exit of a worker whose stdout hit EOF: reaps it, killing it if it lingers. A
    /// SIGKILL that the pool did not send may be the OOM killer's (see `oom`).
    pub(super) async fn exit_cause(&mut self) -> Exit {
        match tokio::time::timeout(RETIRE_TIMEOUT, self.died()).await {
            Ok(exit) => exit,
            Err(_) => self.kill().await,
        }
    }

    /// Reaps a worker that ended by itself (or so it seems: nothing of ours killed it).
    async fn died(&mut self) -> Exit {
        let exit = Exit::from(self.child.0.wait().await.ok());
        self.oom.explain(exit)
    }

    /// Closes stdin so the worker exits by itself; kills it if it does not within a few seconds.
    pub(super) async fn retire(self) {
        let WorkerProcess {
            mut child,
            stdin,
            pid,
            ..
        } = self;
        // Our end of the pipe closing is the worker's signal to exit.
        drop(stdin);
        if tokio::time::timeout(RETIRE_TIMEOUT, child.0.wait())
            .await
            .is_err()
        {
            tracing::warn!(pid, "worker ignored EOF on stdin; killing it");
            kill_group(pid);
            let _ = child.0.wait().await;
        }
    }
}

/// Whether `hello` comes from the worker started as `pid`, for job `kind`, speaking our
/// protocol. Its package version is not checked: any release that speaks the protocol will do.
fn check_hello(hello: &Hello, kind: &str, pid: u32) -> Result<(), SpawnError> {
    if hello.protocol != Some(PROTOCOL_VERSION) {
        return Err(SpawnError::Incompatible {
            protocol: hello.protocol,
            version: hello.version.clone(),
        });
    }
    if (hello.kind.as_str(), hello.pid) != (kind, pid) {
        return Err(ProtocolError::Unexpected(format!(
            "hello {hello:?} does not match kind {kind}, pid {pid}"
        ))
        .into());
    }
    Ok(())
}

/// SIGKILL to the process group led by `pid`. ESRCH only means it is already gone: the caller
/// reaps it either way.
fn kill_group(pid: u32) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process_group(pid, Signal::KILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(protocol: Option<u32>, version: &str) -> Hello {
        let line = match protocol {
            Some(p) => format!(r#"{{"hello":{{"protocol":{p},"version":"{version}","pid":7,"kind":"k"}}}}"#),
            None => format!(r#"{{"hello":{{"version":"{version}","pid":7,"kind":"k"}}}}"#),
        };
        decode::<HelloLine>(line.as_bytes()).unwrap().hello
    }

    #[test]
    fn the_hello_is_checked_for_the_protocol_never_for_the_package_version() {
        let current = Some(PROTOCOL_VERSION);
        assert!(check_hello(&hello(current, "99.0.0-other"), "k", 7).is_ok());
        let error = check_hello(&hello(current, "1.0.0"), "k", 8).unwrap_err();
        assert!(error.to_string().contains("pid 8"), "{error}");
        let error = check_hello(&hello(Some(PROTOCOL_VERSION + 1), "2.0.0"), "k", 7).unwrap_err();
        let expected = format!("speaks protocol {}", PROTOCOL_VERSION + 1);
        assert!(error.to_string().contains(&expected), "{error}");
        let error = check_hello(&hello(None, "0.0.9"), "k", 7).unwrap_err();
        assert!(error.to_string().contains("no protocol version"), "{error}");
        assert!(error.to_string().contains("0.0.9"), "{error}");
    }
}
