//! The worker side: a plain blocking loop that reads jobs on stdin and writes replies on stdout.
//!
//! A worker is this same binary started as `forkpool worker`. Before it says hello it makes
//! itself safe to kill and hard to leak:
//! - `PR_SET_PDEATHSIG(SIGKILL)`, then a check that its parent is still the server that started
//!   it (the server may have died before the prctl took effect). So a worker dies with the
//!   server even when the server is SIGKILLed.
//! - `RLIMIT_AS`, so a runaway job fails inside the worker instead of swapping the machine.
//!   A failed allocation then ends the worker with [`EXIT_OUT_OF_MEMORY`] (see
//!   [`ExitOnOutOfMemory`]), so that the client's 502 says "ran out of memory".
//! - A nice value, and SCHED_IDLE unless `--worker-sched other`, so that the HTTP front end
//!   wins the CPU when both want it.
//!
//! The parent-pid check compares with the pid the server passed, not with the thread: the
//! death signal fires when the server's *thread* that spawned us exits, which is why the pool
//! spawns workers from its own long-lived thread.
//!
//! (Its own process group is set by the server at spawn time, so that a kill reaches anything a
//! job might start.) It exits when stdin reaches EOF. stdout is the protocol channel: logs go to
//! stderr only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use clap::Args;
use rustix::process::{Pid, Resource, Rlimit, Signal};

use super::protocol::{
    decode, encode, Hello, HelloLine, Job, Outcome, Reply, Request, EXIT_OUT_OF_MEMORY,
};
use crate::config::{LogFormat, WorkerSched};

/// Flags the server passes to a worker it starts.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Which job type to serve ([`Job::KIND`]).
    #[arg(long)]
    pub kind: String,
    /// The server's pid; the worker exits at once if its parent is someone else.
    #[arg(long)]
    pub parent_pid: i32,
    /// Address-space limit in bytes; 0 means none.
    #[arg(long, default_value_t = 0)]
    pub memory: u64,
    /// Nice value to run at.
    #[arg(long, default_value_t = 0)]
    pub nice: i32,
    /// Scheduling class to run in.
    #[arg(long, value_enum, default_value_t = WorkerSched::Other)]
    pub sched: WorkerSched,
    /// Largest job line accepted, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_line: u64,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Why a worker stopped other than by a clean EOF on stdin.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("parent {expected} is gone (parent is now {actual:?})")]
    Orphaned { expected: i32, actual: Option<i32> },
    #[error("cannot set up the worker process: {0}")]
    Setup(#[from] rustix::io::Errno),
    #[error("cannot switch to SCHED_IDLE: {0}")]
    SchedIdle(std::io::Error),
    #[error("job line longer than {0} bytes")]
    LineTooLong(u64),
    #[error("bad job line: {0}")]
    BadLine(String),
    #[error("pipe error: {0}")]
    Io(#[from] std::io::Error),
}

/// The binary's global allocator (set in `main`, since a library should not impose one): the
/// system allocator, except that in a worker a failed allocation exits with
/// [`EXIT_OUT_OF_MEMORY`] instead of aborting. The check sits on the failure path only, so the
/// server pays nothing for it.
pub struct ExitOnOutOfMemory;

/// Set once a worker starts; the server keeps Rust's own abort on a failed allocation.
static IN_WORKER: AtomicBool = AtomicBool::new(false);

impl ExitOnOutOfMemory {
    fn check(ptr: *mut u8) -> *mut u8 {
        if ptr.is_null() && IN_WORKER.load(Ordering::Relaxed) {
            // Neither may allocate: stderr is unbuffered, and `_exit` skips exit handlers.
            let _ = std::io::stderr().write_all(b"worker: memory allocation failed, exiting\n");
            // The libc crate's binding: rustix has `exit_group` only in its experimental,
            // hidden `runtime` module, whose API is not stable.
            // SAFETY: `_exit` has no preconditions; it ends the process at once.
            unsafe { libc::_exit(EXIT_OUT_OF_MEMORY) }
        }
        ptr
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, and only
// looks at the returned pointer.
unsafe impl GlobalAlloc for ExitOnOutOfMemory {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::check(System.alloc(layout))
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::check(System.alloc_zeroed(layout))
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::check(System.realloc(ptr, layout, new_size))
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

/// Applies the process hygiene described in the module docs.
fn harden(args: &WorkerArgs) -> Result<(), WorkerError> {
    IN_WORKER.store(true, Ordering::Relaxed);
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
    let parent = rustix::process::getppid().map(Pid::as_raw_nonzero);
    if parent.map(|p| p.get()) != Some(args.parent_pid) {
        return Err(WorkerError::Orphaned {
            expected: args.parent_pid,
            actual: parent.map(|p| p.get()),
        });
    }
    if args.memory > 0 {
        let limit = Rlimit {
            current: Some(args.memory),
            maximum: Some(args.memory),
        };
        rustix::process::setrlimit(Resource::As, limit)?;
    }
    if args.nice > 0 {
        rustix::process::setpriority_process(None, args.nice)?;
    }
    if args.sched == WorkerSched::Idle {
        set_sched_idle().map_err(WorkerError::SchedIdle)?;
    }
    Ok(())
}

/// Moves this (single-threaded) process to SCHED_IDLE: it runs only on CPU time that no
/// normal task wants, and a waking normal task preempts it at once instead of at the next tick.
/// Neither rustix nor nix wraps `sched_setscheduler`, so this is the one direct libc call.
fn set_sched_idle() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is an initialised `sched_param` that outlives the call, and pid 0 names
    // the calling thread, the only one this process has at this point.
    match unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// The worker's main loop for job type `J`: hello, then one reply per job line until EOF.
pub fn serve<J: Job>(args: &WorkerArgs) -> Result<(), WorkerError> {
    harden(args)?;
    let pid = std::process::id();
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let stdout = std::io::stdout();
    let mut output = stdout.lock();
    let hello = HelloLine {
        hello: Hello {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid,
            kind: J::KIND.to_string(),
        },
    };
    output.write_all(&encode(&hello))?;
    output.flush()?;
    tracing::debug!(pid, kind = J::KIND, "worker ready");

    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut input)
            .take(args.max_line + 1)
            .read_until(b'\n', &mut line)?;
        if read == 0 {
            tracing::debug!(pid, "stdin closed, exiting");
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            return Err(match read as u64 > args.max_line {
                true => WorkerError::LineTooLong(args.max_line),
                false => WorkerError::BadLine("stream ended mid-line".into()),
            });
        }
        line.pop();
        let request: Request<J> = decode(&line).map_err(|e| WorkerError::BadLine(e.to_string()))?;
        let started = Instant::now();
        let result = match request.job.run() {
            Ok(output) => Outcome::Ok(output),
            Err(message) => {
                tracing::warn!(request_id = %request.rid, job = request.id, pid, error = %message, "job failed");
                Outcome::Err(message)
            }
        };
        let ms = started.elapsed().as_secs_f64() * 1e3;
        // Debug, not info: the server already logs every request at info, and a line per job
        // here would cost a quarter of the dispatch throughput for no new information.
        tracing::debug!(request_id = %request.rid, job = request.id, pid, compute_ms = ms, "job done");
        let reply = Reply {
            id: request.id,
            ms,
            result,
        };
        output.write_all(&encode(&reply))?;
        output.flush()?;
    }
}
