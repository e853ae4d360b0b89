//! The worker side: a plain blocking loop that reads jobs on stdin and writes replies on stdout.
//!
//! A program's worker mode calls [`run`] with its job type and the [`WorkerSettings`] its
//! parent passed it (the server: this same binary started as `forkpool worker ...`). Before it
//! says hello the worker makes itself safe to kill and hard to leak:
//! - `PR_SET_PDEATHSIG(SIGKILL)`, then a check that its parent is still the process that
//!   started it (the parent may have died before the prctl took effect). So a worker dies with
//!   the pool's process even when that process is SIGKILLed.
//! - `RLIMIT_AS`, so a runaway job fails inside the worker instead of swapping the machine.
//!   A failed allocation then ends the worker with [`EXIT_OUT_OF_MEMORY`] (see
//!   [`ExitOnOutOfMemory`]), so that the submitter's error says "ran out of memory".
//! - A nice value, and SCHED_IDLE when asked ([`SchedClass::Idle`]), so that the parent's
//!   front end wins the CPU when both want it. Under SCHED_IDLE the worker also yields the CPU
//!   every [`YIELD_EVERY`] while it runs a heavy job (`YieldTimer`): the kernel's EEVDF scheduler
//!   gives SCHED_IDLE a tiny weight, not a strict priority, so it can pick the worker over a
//!   normal thread that is already queued on that CPU (one whose lag is negative), and nothing
//!   then preempts the worker before the next scheduler tick (4 ms at HZ=250): the saturated
//!   worst case of the front end was that tick (README, Performance).
//!
//! The parent-pid check compares with the pid the parent passed, not with the thread: the
//! death signal fires when the parent's *thread* that spawned us exits, which is why the pool
//! spawns workers from its own long-lived thread.
//!
//! Once it has said hello, the worker unmaps the code pages its start-up mapped, and again
//! whenever the pool sends the release line (it has been idle a while after jobs): the
//! `code_pages` module. Its RSS then holds what its next jobs run, not what its start or a
//! past burst ran.
//!
//! (Its own process group is set by the pool at spawn time, so that a kill reaches anything a
//! job might start.) It exits when stdin reaches EOF. stdout is the protocol channel: logs go
//! to stderr only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Display;
use std::io::{BufRead, Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Resource, Rlimit, Signal};

use super::protocol::{
    decode, encode, encode_into, Hello, HelloLine, Job, Outcome, Reply, Request, Weight,
    EXIT_OUT_OF_MEMORY, PROTOCOL_VERSION, RELEASE,
};

/// The scheduling class a worker runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchedClass {
    /// The normal class (`SCHED_OTHER`), at the nice value.
    #[default]
    Other,
    /// `SCHED_IDLE`: only CPU time that no normal task wants, yielded at once when one wakes.
    Idle,
}

/// How a worker process sets itself up; passed by the parent (on the command line, in the
/// server) and given to [`run`].
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The pid of the process that runs the pool; the worker exits at once if its parent is
    /// someone else (the pool's process died before the worker armed its death signal).
    pub parent_pid: i32,
    /// Address-space limit in bytes; 0 means none.
    pub memory: u64,
    /// Nice value to run at; 0 leaves it alone.
    pub nice: i32,
    /// Scheduling class to run in.
    pub sched: SchedClass,
    /// Largest job line accepted, in bytes (the pool's `max_line`).
    pub max_line: u64,
}

impl WorkerSettings {
    /// No memory limit, no nice value, the normal class, 1 MiB lines: only the parent to check.
    pub fn new(parent_pid: i32) -> WorkerSettings {
        WorkerSettings {
            parent_pid,
            memory: 0,
            nice: 0,
            sched: SchedClass::Other,
            max_line: 1 << 20,
        }
    }
}

/// What a worker logs about each job, on stderr. Tracing field names are fixed at compile
/// time, so the embedding program chooses how the job's tag is named: [`TagLog`] names it
/// `tag`; the server names it `request_id`, as its own request lines do.
pub trait JobLog {
    /// A job that ended with its own error (at `warn`: someone asked for something that failed).
    fn failed(&self, tag: &str, job: u64, error: &dyn Display);
    /// A job that produced its output.
    fn done(&self, tag: &str, job: u64, compute_ms: f64);
}

/// The default [`JobLog`]: the tag is logged as `tag`.
pub struct TagLog;

impl JobLog for TagLog {
    fn failed(&self, tag: &str, job: u64, error: &dyn Display) {
        tracing::warn!(tag, job, pid = std::process::id(), %error, "job failed");
    }

    fn done(&self, tag: &str, job: u64, compute_ms: f64) {
        // Debug, not info: a line per job costs a quarter of the dispatch throughput.
        tracing::debug!(tag, job, pid = std::process::id(), compute_ms, "job done");
    }
}

/// Why a worker stopped other than by a clean EOF on stdin.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The server that started this worker is gone (its parent pid changed): the worker
    /// exits rather than serve no one. Checked at start, as `PR_SET_PDEATHSIG` only covers a
    /// parent that dies after it is set.
    #[error("parent {expected} is gone (parent is now {actual:?})")]
    Orphaned {
        /// The pid of the server, from `--parent-pid`.
        expected: i32,
        /// The parent pid found instead; `None` when `getppid` gives 0 (the parent is outside
        /// this pid namespace).
        actual: Option<i32>,
    },
    /// A system call of the set-up failed (the parent-death signal, the nice value, the
    /// address-space limit); the worker exits before its hello, so the pool sees a failed start.
    #[error("cannot set up the worker process: {0}")]
    Setup(#[from] rustix::io::Errno),
    /// Switching to SCHED_IDLE was refused by the kernel (e.g. a seccomp or container policy);
    /// `--worker-sched other` avoids the call.
    #[error("cannot switch to SCHED_IDLE: {0}")]
    SchedIdle(std::io::Error),
    /// A job line ran past `--max-line` (the value, in bytes): the worker exits, as the pipe
    /// cannot be resynchronised.
    #[error("job line longer than {0} bytes")]
    LineTooLong(u64),
    /// A job line is not the JSON of a request for this job type; the value is serde's error.
    #[error("bad job line: {0}")]
    BadLine(String),
    /// Reading stdin or writing stdout failed (the server closed the pipe or died).
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
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on unchanged.
        Self::check(unsafe { System.alloc(layout) })
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc_zeroed`'s contract, passed on unchanged.
        Self::check(unsafe { System.alloc_zeroed(layout) })
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract (`ptr` came from this
        // allocator, hence from `System`, with `layout`), passed on unchanged.
        Self::check(unsafe { System.realloc(ptr, layout, new_size) })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract (`ptr` came from this
        // allocator, hence from `System`, with `layout`), passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Applies the process hygiene described in the module docs.
fn harden(args: &WorkerSettings) -> Result<(), WorkerError> {
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
    if args.sched == SchedClass::Idle {
        set_sched_idle().map_err(WorkerError::SchedIdle)?;
    }
    Ok(())
}

/// Moves this (single-threaded) process to SCHED_IDLE: the smallest weight, and a normal task
/// that wakes on its CPU preempts it at once. Not a strict priority: a normal task already
/// queued can still wait behind it (see [`YieldTimer`]).
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

/// How often a SCHED_IDLE worker with jobs to run gives the scheduler a chance to pick a
/// waiting normal thread. Short against the tick (4 ms) and the front end's idle worst case
/// (about 1 ms); long against the cost of a signal and a `sched_yield` (about 2 µs: under 1%
/// of a job's time).
pub const YIELD_EVERY: Duration = Duration::from_micros(250);

/// A `SIGALRM` every [`YIELD_EVERY`] (an `ITIMER_REAL` timer, so high-resolution) whose
/// handler calls `sched_yield`; armed only while the worker has a heavy job (light ones take
/// microseconds), so an idle worker is never woken. The handler is installed with `SA_RESTART`: the worker's reads and writes
/// resume after it. A job that itself waits on a syscall without `SA_RESTART` semantics
/// (`nanosleep`, `poll`) would see `EINTR`; the server's jobs compute only.
struct YieldTimer {
    armed: bool,
}

impl YieldTimer {
    /// Installs the handler; the timer starts disarmed.
    fn install() -> std::io::Result<YieldTimer> {
        extern "C" fn on_alarm(_: libc::c_int) {
            // SAFETY: `sched_yield` has no preconditions and is async-signal-safe.
            unsafe { libc::sched_yield() };
        }
        // SAFETY: an all-zero `sigaction` is a valid value (empty mask, no flags) that the
        // fields below complete; the handler is an `extern "C" fn(c_int)` that only makes an
        // async-signal-safe call.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_alarm as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: `action` is initialised and outlives the call; the old action is not wanted.
        match unsafe { libc::sigaction(libc::SIGALRM, &action, std::ptr::null_mut()) } {
            0 => Ok(YieldTimer { armed: false }),
            _ => Err(std::io::Error::last_os_error()),
        }
    }

    /// Starts (`true`) or stops the periodic alarm, unless it already is in that state.
    fn set(&mut self, on: bool) -> std::io::Result<()> {
        if self.armed == on {
            return Ok(());
        }
        let every = match on {
            true => libc::timeval {
                tv_sec: 0,
                tv_usec: YIELD_EVERY.as_micros() as libc::suseconds_t,
            },
            false => libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
        };
        let timer = libc::itimerval {
            it_interval: every,
            it_value: every,
        };
        // SAFETY: `timer` is initialised and outlives the call; the old value is not wanted.
        match unsafe { libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut()) } {
            0 => {
                self.armed = on;
                Ok(())
            }
            _ => Err(std::io::Error::last_os_error()),
        }
    }
}

/// The worker's main loop for job type `J`: harden, hello, then one reply per job line until
/// EOF on stdin (a clean exit: the pool retired this worker).
pub fn run<J: Job>(settings: &WorkerSettings, log: &dyn JobLog) -> Result<(), WorkerError> {
    harden(settings)?;
    let mut yields = match settings.sched {
        SchedClass::Idle => Some(YieldTimer::install().map_err(WorkerError::SchedIdle)?),
        SchedClass::Other => None,
    };
    // Our own buffer on stdin rather than `Stdin`'s, whose fill level is not public: answers
    // are written when it is empty (see `protocol`).
    let stdin = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let mut input = std::io::BufReader::new(stdin);
    let mut replies = Vec::new();
    let stdout = std::io::stdout();
    let mut output = stdout.lock();
    say_hello::<J>(&mut output)?;
    release_code_pages("start-up");
    let mut line = Vec::new();
    loop {
        // About to block for more jobs: no alarms while there is nothing to yield.
        if let (Some(timer), true) = (&mut yields, input.buffer().is_empty()) {
            timer.set(false)?;
        }
        let request = match read_message::<J>(&mut input, &mut line, settings.max_line)? {
            Some(Message::Job(request)) => request,
            Some(Message::Release) => {
                release_code_pages("idle");
                continue;
            }
            None => break,
        };
        // Light jobs take microseconds: arming for them would only add two system calls to
        // each batch (measured: +50% of a worker's calls per request on /isprime?number=7).
        if let (Some(timer), Weight::Heavy) = (&mut yields, request.job.weight()) {
            timer.set(true)?;
        }
        let started = Instant::now();
        let result = request.job.run();
        let ms = started.elapsed().as_secs_f64() * 1e3;
        match &result {
            Ok(_) => log.done(&request.tag, request.id, ms),
            Err(error) => log.failed(&request.tag, request.id, error),
        }
        let result = match result {
            Ok(output) => Outcome::Ok(output),
            Err(error) => Outcome::Err(error),
        };
        let reply = Reply {
            id: request.id,
            ms,
            result,
        };
        encode_into(&mut replies, &reply);
        // More jobs already read: their answers go with this one, in one write that wakes the
        // pool once. None: answer now, before waiting for more.
        if input.buffer().is_empty() {
            output.write_all(&replies)?;
            output.flush()?;
            replies.clear();
        }
    }
    tracing::debug!(pid = std::process::id(), "stdin closed, exiting");
    Ok(())
}

fn say_hello<J: Job>(output: &mut impl Write) -> Result<(), WorkerError> {
    let pid = std::process::id();
    let hello = HelloLine {
        hello: Hello {
            protocol: Some(PROTOCOL_VERSION),
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid,
            kind: J::KIND.to_string(),
            release: true,
        },
    };
    output.write_all(&encode(&hello))?;
    output.flush()?;
    tracing::debug!(pid, kind = J::KIND, "worker ready");
    Ok(())
}

/// What the pool sends a worker.
enum Message<J> {
    /// A job to run and answer.
    Job(Request<J>),
    /// The protocol's release line: the worker is idle, its last jobs some time past.
    Release,
}

/// Lets go of the code pages mapped since the last time (see the `code_pages` module), at
/// start-up (`when`: "start-up") or when the pool says the worker is idle ("idle").
fn release_code_pages(when: &str) {
    let released = super::code_pages::release();
    tracing::debug!(released, when, "code pages unmapped");
}

/// The next message, or `None` at EOF. `line` is the caller's buffer, reused across jobs.
fn read_message<J: Job>(
    input: &mut impl BufRead,
    line: &mut Vec<u8>,
    max_line: u64,
) -> Result<Option<Message<J>>, WorkerError> {
    line.clear();
    let read = input.take(max_line + 1).read_until(b'\n', line)?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(match read as u64 > max_line {
            true => WorkerError::LineTooLong(max_line),
            false => WorkerError::BadLine("stream ended mid-line".into()),
        });
    }
    line.pop();
    if line == RELEASE {
        return Ok(Some(Message::Release));
    }
    decode(line)
        .map(|request| Some(Message::Job(request)))
        .map_err(|e| WorkerError::BadLine(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval_us() -> i64 {
        // SAFETY: an all-zero `itimerval` is valid; `getitimer` fills it.
        let mut timer: libc::itimerval = unsafe { std::mem::zeroed() };
        // SAFETY: `timer` is a valid, writable `itimerval` that outlives the call.
        assert_eq!(unsafe { libc::getitimer(libc::ITIMER_REAL, &mut timer) }, 0);
        timer.it_interval.tv_sec * 1_000_000 + timer.it_interval.tv_usec
    }

    #[test]
    fn the_yield_timer_runs_only_while_armed_and_its_alarms_are_harmless() {
        let mut timer = YieldTimer::install().unwrap();
        assert_eq!(interval_us(), 0, "installed disarmed");
        timer.set(true).unwrap();
        assert_eq!(interval_us(), YIELD_EVERY.as_micros() as i64);
        // Work through a few dozen alarms: without the handler SIGALRM ends the process.
        let started = Instant::now();
        while started.elapsed() < 40 * YIELD_EVERY {
            std::hint::spin_loop();
        }
        timer.set(false).unwrap();
        assert_eq!(interval_us(), 0, "disarmed");
    }
}
