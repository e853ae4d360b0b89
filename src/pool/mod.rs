//! A pool of worker processes for CPU work that must never stall an async program: a fixed
//! number of workers (or an elastic one, between two bounds), a bounded FIFO queue in front of
//! them, one deadline per job, and a
//! driver per worker slot that owns its process.
//!
//! This module is a library of its own: it imports nothing from the rest of the crate. A
//! program defines a [`Job`] type, says how a worker is started ([`WorkerCommand`]: usually
//! the program itself, re-executed in a worker mode that calls [`worker::run`]), and submits
//! jobs to a [`WorkerPool`]. The forkpool server is one such program; `examples/factor.rs` is
//! another.
//!
//! # Guarantees
//! - **One deadline covers queue and run.** [`PoolConfig::job_timeout`] starts at
//!   [`WorkerPool::submit`]: a job still queued at the deadline leaves the queue, a running one
//!   has its worker killed, and the caller gets [`PoolError::Timeout`] either way.
//! - **A caller's own deadline, and no job started to miss it.**
//!   [`WorkerPool::submit_with_timeout`] takes the earlier of the caller's timeout and the
//!   pool's. When the predicted wait plus the job's own run time ([`Wait`]: the work the
//!   workers hold and the queue holds, over the live workers, and a run-time estimate per
//!   class of [`Job::cost_hint`]; see the `estimate` module for the model and where it fails)
//!   is already longer, the job is refused at once with [`PoolError::WontFinish`]; and when a
//!   driver would take it with less of its deadline left than its run time, it is refused then
//!   with [`PoolError::TooLate`], never started.
//! - **Hanging up kills.** Dropping the future returned by `submit` (an HTTP client went away)
//!   takes the job out of the queue, or kills the worker running it; the slot gets a fresh one.
//!   An abandoned job never keeps a core busy. A light job already handed to a worker is the
//!   exception: it is let finish (it takes microseconds) and its answer dropped, since a kill
//!   would cost a fresh worker and run every job sent after it again.
//! - **No orphans.** Each worker runs in its own process group, arms `PR_SET_PDEATHSIG` and
//!   checks its parent before saying hello, so it dies with the pool's process even on SIGKILL.
//!   Every path that lets go of a worker (kill, crash, retirement, a panicking driver, dropping
//!   the last pool handle) kills its group and reaps it.
//! - **At most `workers + 1` alive.** A recycled or rolled worker's replacement is started and
//!   has said hello before the old one retires, so capacity never dips, and one spare permit
//!   for the whole pool caps the overlap at one process.
//! - **An elastic size, never a herd.** With [`PoolConfig::workers_min`] below
//!   [`PoolConfig::workers`], the pool starts one more worker when every worker it wants is
//!   busy and jobs wait, at most one start per [`GROW_INTERVAL`] and none while another is
//!   starting, up to `workers` but never past the CPUs this process may use (the affinity mask
//!   and the cgroup v2 CPU quota, read at start, shown as [`WorkerCounts::max`] with the
//!   [`MaxLimit`] that set it); a worker idle for [`PoolConfig::worker_idle_timeout`] retires,
//!   never below the minimum. At minimum 0 the pool is [`PoolHealth::Standby`] with no worker:
//!   ready ([`WorkerPool::wait_ready`]), the first job starting one. A fixed pool is never
//!   capped.
//! - **Rolls never wedge.** [`WorkerPool::roll`] bumps the pool's roll generation and returns
//!   at once (with a [`Roll`] to await if the caller wants its end). Each slot whose worker is
//!   older starts a replacement, make-before-break: the old worker serves until the new one
//!   said hello. A replacement that fails to start is retried after the backoff, logged,
//!   counted and shown in [`WorkerPool::overview`]; a later roll supersedes a stuck one, drops
//!   (kills and reaps) whatever is on its way for the older generation and starts afresh at
//!   once. A worker due for recycling likewise keeps serving while its replacement cannot
//!   start.
//! - **Workers that grow are recycled, make-before-break.** With
//!   [`PoolConfig::max_rss_per_worker`], the driver reads the worker's resident memory from
//!   `/proc` after a job (after a batch of light jobs: once per batch, or every
//!   [`PoolConfig::max_batch`] answers while it keeps the worker topped up, so no light job
//!   pays a read of its own). A worker over the limit has its job answered first, then retires
//!   exactly as one that served [`PoolConfig::max_jobs_per_worker`] jobs does: one mechanism,
//!   with the reason ([`Retirement`]) in the exit metric.
//! - **An OOM kill says so.** A worker that dies of a SIGKILL the pool did not send while the
//!   oom_kill count of the pool's cgroup rose (cgroup v2 `memory.events`, or v1
//!   `memory.oom_control`; read only when a worker dies) ends as [`Exit::OomKilled`]: its job
//!   fails with "killed by the OOM killer", not "signal 9". Without a readable count (the pool
//!   logs which at start) it reads as signal 9, as before.
//! - **Slow jobs are seen, not cut short.** With [`PoolConfig::job_slow`], a job still running
//!   that long after it started on its worker is logged once at `warn` (job id, tag, pid,
//!   elapsed and queue time, and what the worker is doing: [`Activity`], from `/proc`) and
//!   counted; it runs on to its deadline.
//! - **One backoff for every start.** Whatever a worker is started for (an empty slot after a
//!   crash, a deadline kill or a driver panic; recycling; a roll), its slot waits nothing while
//!   starts succeed and, after failures, 100 ms doubling to 10 s with ±20% jitter: a broken
//!   worker program costs a handful of fork/execs a minute, never a busy loop. A worker that
//!   says hello and then dies by itself within a second, before any job, counts as a failure
//!   too.
//! - **Fails fast when no worker can start.** After
//!   [`PoolConfig::broken_after_failed_starts`] failed starts in a row (all slots together,
//!   reset by any hello) with no worker live, the pool is [`PoolHealth::Unavailable`]: `submit`
//!   fails at once with [`PoolError::Unavailable`] and queued jobs are answered the same way,
//!   instead of waiting for their deadline. The slots keep trying; the first hello clears it.
//!   [`WorkerPool::wait_live`] waits for the first hello without polling.
//! - **Workers of another release are accepted.** The hello is checked for the
//!   [`PROTOCOL_VERSION`] (changed only when the lines change), the job kind and the pid, never
//!   for the package version, which is shown per slot ([`WorkerStatus::version`]) so that a
//!   roll onto a new binary can be followed.
//! - **Bounded everything.** A full queue answers [`PoolError::QueueFull`] at once; protocol
//!   lines are capped at [`PoolConfig::max_line`] both ways.
//! - **Supervised drivers.** A driver that panics (a bug, or a [`Job::Output`] whose decoding
//!   panics) is restarted: its worker is killed, its job fails with [`PoolError::DriverPanic`],
//!   the panic is logged at `error` and counted.
//!
//! - **No head-of-line blocking.** A job waits inside a worker only behind light jobs (see
//!   [`Weight`]), at most [`PoolConfig::max_batch`]` - 1` of them: a heavy job is sent alone to
//!   a worker with nothing else to do, and nothing is sent ahead to a worker running one.
//!
//! Failure of a single job never affects another: a worker that dies mid-job fails that job
//! with [`PoolError::WorkerDied`] (naming the exit code, the signal, "ran out of memory" or
//! "killed by the OOM killer"),
//! one that breaks the protocol with [`PoolError::Protocol`]. Light jobs sent ahead to that
//! worker go back to the front of the queue and run on another worker, as they do when a
//! worker is killed because its running job passed its deadline or lost its submitter. A
//! worker writes its answers once it has run all it was sent, so when it dies holding several
//! jobs, which one crashed it is unknown: none fails, and each runs again alone, where a crash
//! is its own. So a light job may run twice; it never fails for another job's crash.
//!
//! # Example
//! A program that is its own worker: run plainly, it starts a pool whose workers are itself
//! started with a `worker` argument.
//!
//! ```
//! use std::process::Command;
//!
//! use forkpool::pool::worker::{self, TagLog, WorkerSettings};
//! use forkpool::pool::{Job, PoolConfig, PoolError, WorkerPool};
//! use serde::{Deserialize, Serialize};
//!
//! /// The integer square root of a perfect square, computed in a worker process.
//! #[derive(Serialize, Deserialize)]
//! struct Sqrt(u64);
//!
//! #[derive(Debug, thiserror::Error, Serialize, Deserialize)]
//! #[error("{0} is not a perfect square")]
//! struct NotASquare(u64);
//!
//! impl Job for Sqrt {
//!     const KIND: &'static str = "sqrt";
//!     type Output = u64;
//!     type Error = NotASquare;
//!     fn run(self) -> Result<u64, NotASquare> {
//!         let root = self.0.isqrt();
//!         if root * root == self.0 { Ok(root) } else { Err(NotASquare(self.0)) }
//!     }
//! }
//!
//! fn main() {
//!     let mut args = std::env::args().skip(1);
//!     if args.next().as_deref() == Some("worker") {
//!         // Worker mode: started by the pool below, with the pool's pid to check.
//!         let parent = args.next().unwrap().parse().unwrap();
//!         worker::run::<Sqrt>(&WorkerSettings::new(parent), &TagLog).unwrap();
//!         return;
//!     }
//!     let program = std::env::current_exe().unwrap();
//!     let parent = std::process::id().to_string();
//!     let pool = WorkerPool::<Sqrt>::start(PoolConfig::new(2), move || {
//!         let mut command = Command::new(&program);
//!         command.args(["worker", &parent]);
//!         command
//!     });
//!     let runtime = tokio::runtime::Runtime::new().unwrap();
//!     runtime.block_on(async {
//!         assert_eq!(pool.submit(Sqrt(144), "first").await.unwrap().output, 12);
//!         let failed = pool.submit(Sqrt(7), "second").await.unwrap_err();
//!         assert!(matches!(failed, PoolError::JobFailed(NotASquare(7))));
//!     });
//!     // Dropping the last handle closes the pool, stops its thread and kills its workers.
//!     drop(pool);
//! }
//! ```
//!
//! # How it works
//! ```text
//!   submit --> [ queue (bounded) ] --pop--> driver 0 --pipe--> worker process
//!      ^                            --pop--> driver 1 --pipe--> worker process
//!      +------------- oneshot reply <-------+
//! ```
//!
//! Why batches: a microsecond job costs far less than the two wake-ups (worker, then driver)
//! of a round trip. When light jobs queue up, a driver writes several in one go and keeps the
//! worker's pipe topped up as replies come in, so a busy worker seldom sleeps between jobs.
//!
//! Why a driver per slot: the submitter's future is dropped when its caller gives up (axum
//! drops a handler whose client hung up). If the submitter held the worker, that drop would
//! lose the worker mid-protocol. Here the driver alone talks to its process; the submitter only
//! waits on a oneshot. The driver notices a dropped receiver (`Sender::closed`) and kills the
//! worker, and the slot gets a fresh one.
//!
//! The drivers run on a thread of their own (see `dispatch`), so load on the embedding
//! program's runtime never delays the next job, and the workers' parent thread lives exactly as
//! long as the pool. Its files are listed, with the crate's, in one place: the Layout section
//! of the crate documentation (`src/lib.rs`).

mod cpus;
mod dispatch;
mod driver;
mod estimate;
mod health;
mod inspect;
mod lifecycle;
mod metrics;
mod oom;
mod process;
pub mod protocol;
mod queue;
mod scale;
mod code_pages;
mod status;
mod wakers;
pub mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch, Notify, Semaphore};
use tokio::task::JoinHandle;

use dispatch::Dispatcher;
use estimate::{class_of, Estimator};
pub use estimate::Wait;
use health::Life;
use oom::OomWatch;
pub use cpus::MaxLimit;
pub use health::{PoolHealth, PoolOverview, Roll, RollOutcome, RollStatus, WorkerCounts};
pub use inspect::{rss_bytes, Activity, StatFields};
pub use lifecycle::{Exit, JobOutcome, Retirement, StartReason, WorkerExit};
pub use process::SpawnError;
use process::SpawnSpec;
pub use protocol::{Job, ProtocolError, Weight, PROTOCOL_VERSION};
use queue::{Pending, Queue, Unqueue};
pub use scale::GROW_INTERVAL;
use scale::PoolSize;
use status::Slot;
use wakers::Wakers;
pub use status::{WorkerState, WorkerStatus};

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The most worker processes the pool runs (its slots; `--workers-max` in the server).
    /// Above [`workers_min`](Self::workers_min) the pool is elastic, and then never grows
    /// beyond the CPUs this process may use (the affinity mask and the cgroup v2 CPU quota,
    /// read at start); a fixed pool runs exactly this many.
    pub workers: usize,
    /// The fewest workers the pool keeps, even idle; 0 starts none until the first job, which
    /// then waits for a worker's start. Equal to [`workers`](Self::workers): a fixed pool.
    /// Below it, the pool starts a worker when every live one is busy and jobs wait (at most
    /// one start per [`GROW_INTERVAL`]), and retires one idle for
    /// [`worker_idle_timeout`](Self::worker_idle_timeout).
    pub workers_min: usize,
    /// How long a worker of an elastic pool may idle before it retires, down to
    /// [`workers_min`](Self::workers_min). At most [`LONGEST_DURATION`], like every duration
    /// here.
    pub worker_idle_timeout: Duration,
    /// How long a worker that has run jobs may sit idle before the pool tells it to let go
    /// of the code pages those jobs mapped (the protocol's release line; its next jobs map
    /// them again, a few dozen minor faults). `None`: never after its start. Default
    /// [`DEFAULT_RELEASE_AFTER`].
    pub worker_release_after: Option<Duration>,
    /// Jobs that may wait for a worker; one more is refused with [`PoolError::QueueFull`].
    pub queue: usize,
    /// Deadline of one job, from `submit` to its answer: queue wait plus run time.
    pub job_timeout: Duration,
    /// Longest protocol line read from a worker, in bytes; a worker that sends more is killed
    /// and replaced. Pass the same cap to the worker ([`worker::WorkerSettings::max_line`]).
    pub max_line: usize,
    /// Retire a worker after about this many jobs (±10% jitter, so that workers started
    /// together do not retire together); 0 means never.
    pub max_jobs_per_worker: u64,
    /// Retire a worker whose resident memory, read after a job (once per batch of light jobs),
    /// is above this many bytes; 0 means never. Make-before-break, like
    /// [`max_jobs_per_worker`](Self::max_jobs_per_worker): the job is answered first, and the
    /// worker serves on until its replacement said hello.
    pub max_rss_per_worker: u64,
    /// A job still running this long after it started on its worker is logged once at `warn`,
    /// with what its worker is doing (see [`Activity`]), and counted in
    /// `<prefix>_slow_jobs_total`; it runs on to its deadline. `None`: no slow-job log. Only
    /// useful below [`job_timeout`](Self::job_timeout).
    pub job_slow: Option<Duration>,
    /// Most light jobs ([`Weight::Light`]) a worker is handed at once: while it runs one, the
    /// next ones are already in its pipe, so neither side wakes up for each one. 1 sends every
    /// job alone. Heavy jobs are always sent alone.
    pub max_batch: usize,
    /// Metric names start with this and `_` (see the `metrics` module's table).
    pub metrics_prefix: String,
    /// Failed worker starts in a row (all slots together, reset by any hello) after which a
    /// pool with no live worker is unavailable: jobs are refused at once with
    /// [`PoolError::Unavailable`] instead of waiting for their deadline, until a start succeeds.
    pub broken_after_failed_starts: u32,
}

impl PoolConfig {
    /// `workers` slots, a fixed pool (with a 10 s idle timeout, should it be made elastic),
    /// workers told to release their jobs' code pages after 1 s idle, a queue of 256, a 60 s
    /// deadline, 1 MiB lines, no recycling (by jobs or memory), no slow-job log, batches of up to 32 light jobs, metrics named `forkpool_*`, unavailable
    /// after 5 failed starts.
    pub fn new(workers: usize) -> PoolConfig {
        PoolConfig {
            workers,
            workers_min: workers,
            worker_idle_timeout: DEFAULT_IDLE_TIMEOUT,
            worker_release_after: Some(DEFAULT_RELEASE_AFTER),
            queue: 256,
            job_timeout: Duration::from_secs(60),
            max_line: 1 << 20,
            max_jobs_per_worker: 0,
            max_rss_per_worker: 0,
            job_slow: None,
            max_batch: 32,
            metrics_prefix: "forkpool".into(),
            broken_after_failed_starts: 5,
        }
    }

    /// Refuses the settings a pool cannot run with, each named: `WorkerPool::try_start` calls
    /// it, and so does the server at start-up, so that the library and the command line cannot
    /// disagree on what is possible.
    pub fn validate(&self) -> Result<(), PoolConfigError> {
        let problem = if self.workers == 0 {
            PoolConfigError::NoWorkers
        } else if self.workers_min > self.workers {
            PoolConfigError::MinAboveMax {
                min: self.workers_min,
                max: self.workers,
            }
        } else if self.worker_idle_timeout.is_zero() && self.workers_min < self.workers {
            PoolConfigError::NoIdleTimeout
        } else if self.queue == 0 {
            PoolConfigError::NoQueue
        } else if self.job_timeout.is_zero() {
            PoolConfigError::NoDeadline
        } else if self.max_line < MIN_LINE {
            PoolConfigError::LineTooShort(self.max_line)
        } else if self.max_batch == 0 {
            PoolConfigError::NoBatch
        } else if self.broken_after_failed_starts == 0 {
            PoolConfigError::BreakerAtZero
        } else if self.job_slow.is_some_and(|slow| slow >= self.job_timeout) {
            PoolConfigError::SlowNotBelowDeadline
        } else if let Some(setting) = self.too_long() {
            PoolConfigError::TooLong(setting)
        } else {
            return Ok(());
        };
        Err(problem)
    }

    /// The first duration above [`LONGEST_DURATION`], by its name: each one is added to an
    /// `Instant` (a job's deadline at every `submit`, a driver's next idle deadline after
    /// every batch), which would panic that far out.
    fn too_long(&self) -> Option<&'static str> {
        let durations = [
            ("job_timeout", Some(self.job_timeout)),
            ("worker_idle_timeout", Some(self.worker_idle_timeout)),
            ("worker_release_after", self.worker_release_after),
        ];
        durations
            .into_iter()
            .find(|(_, duration)| duration.is_some_and(|d| d > LONGEST_DURATION))
            .map(|(setting, _)| setting)
    }
}

/// The longest duration a [`PoolConfig`] takes (100 years). Every duration in it ends up
/// added to `Instant::now()`, and an `Instant` that far out overflows: a `job_timeout` of
/// `Duration::MAX` panicked every `submit`, a `worker_idle_timeout` or `worker_release_after`
/// that long (a natural way to write "never") panicked the drivers. A century is longer than
/// any deadline means, and far from the overflow.
pub const LONGEST_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// [`PoolConfig::worker_idle_timeout`] by default: PHP-FPM's `pm.process_idle_timeout`, which
/// operators of an elastic pool know.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// [`PoolConfig::worker_release_after`] by default: long against the gaps between the jobs
/// of a burst, so that a busy worker is never told, and short against the seconds after a
/// burst in which its memory is read (issue 24: within 1.5x of idle 5 s after a burst).
pub const DEFAULT_RELEASE_AFTER: Duration = Duration::from_secs(1);

/// Shortest protocol line a pool accepts as `max_line`: a worker's hello must fit.
pub const MIN_LINE: usize = 256;

/// A [`PoolConfig`] a pool cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolConfigError {
    /// `workers` (the maximum) is 0: no worker would ever take a job, so each would wait out
    /// its deadline.
    #[error("workers (the maximum) must be at least 1: with none, every job would wait for its deadline")]
    NoWorkers,
    /// `workers_min` is above `workers`: the pool could never shrink to its minimum.
    #[error("workers_min {min} is above workers (the maximum) {max}")]
    MinAboveMax {
        /// `workers_min`.
        min: usize,
        /// `workers`.
        max: usize,
    },
    /// `worker_idle_timeout` is zero in an elastic pool: every worker above the minimum would
    /// retire between two jobs.
    #[error("worker_idle_timeout must be more than zero: every worker above the minimum would retire between two jobs")]
    NoIdleTimeout,
    /// `queue` is 0: every job would be refused as `QueueFull` before it could wait.
    #[error("queue must hold at least 1 job")]
    NoQueue,
    /// `job_timeout` is zero: every job would time out as it is submitted.
    #[error("job_timeout must be more than zero: every job would time out at once")]
    NoDeadline,
    /// `max_line` (the value, in bytes) is below [`MIN_LINE`]: a worker's hello would not fit,
    /// so every start would fail as a protocol error.
    #[error("max_line {0} is below {MIN_LINE} bytes: no worker's hello would fit")]
    LineTooShort(usize),
    /// `max_batch` is 0: the driver could never hand a worker a job.
    #[error("max_batch must be at least 1")]
    NoBatch,
    /// `broken_after_failed_starts` is 0: the pool would count as unavailable before its first
    /// start, and refuse every job.
    #[error("broken_after_failed_starts must be at least 1: the pool would refuse jobs at once")]
    BreakerAtZero,
    /// `job_slow` is set but not below `job_timeout`: the job is killed at its deadline before it
    /// could be logged as slow.
    #[error("job_slow must be below job_timeout: a job is killed at its deadline")]
    SlowNotBelowDeadline,
    /// A duration (the value: its field's name) is above [`LONGEST_DURATION`]: the deadline
    /// it makes would overflow the clock and panic.
    #[error("{0} is longer than 100 years, the longest duration a pool takes")]
    TooLong(&'static str),
}

/// How the pool starts a worker: a fresh [`Command`](std::process::Command) per worker, whose
/// program calls [`worker::run`] for the pool's job type. The pool adds the pipes (stdin,
/// stdout) and the process group; stderr is left as the command has it (inherited by default),
/// so that worker logs land with the program's.
///
/// Any `Fn() -> Command` is one. The command is built on the pool's own thread.
pub trait WorkerCommand: Send + Sync + 'static {
    /// The command line of one new worker.
    fn command(&self) -> std::process::Command;
}

impl<F: Fn() -> std::process::Command + Send + Sync + 'static> WorkerCommand for F {
    fn command(&self) -> std::process::Command {
        self()
    }
}

/// Why a job did not produce an answer. `E` is the job's own error ([`Job::Error`]).
#[derive(Debug, thiserror::Error)]
pub enum PoolError<E> {
    /// Refused at submission: every worker is busy and `queue` jobs (the value) already wait.
    /// Nothing ran; worth retrying shortly.
    #[error("all workers are busy and the queue is full ({0} jobs waiting); retry later")]
    QueueFull(usize),
    /// Refused at submission: the estimated queue wait is already past the job's deadline, so
    /// it would only time out. Nothing ran; worth retrying once the queue has shrunk.
    #[error(
        "the queue's expected wait, {:?} ({} jobs ahead, {} live workers), plus this job's \
         expected run time, {:?}, is already longer than its {timeout:?} deadline; retry later \
         or allow more time",
        wait.expected, wait.ahead, wait.live, wait.run
    )]
    WontFinish {
        /// The estimate that refused it.
        wait: Wait,
        /// The job's deadline, from submission.
        timeout: Duration,
    },
    /// At dispatch: when a worker was free for the job, less of its client's deadline was
    /// left than its expected run time, so it was not started (never a job started only to be
    /// killed at its deadline).
    #[error(
        "when a worker was free for this job, {left:?} of its deadline was left, less than its \
         expected run time of {run:?}; it was not started; retry later or allow more time"
    )]
    TooLate {
        /// What was left of the deadline.
        left: Duration,
        /// The job's expected run time, with the margin for its class's spread (see [`Wait::run`]).
        run: Duration,
    },
    /// The pool is closing (or closed): refused at submission, or torn down before the job
    /// was answered. Not worth retrying against this pool.
    #[error("the server is shutting down and takes no new jobs")]
    ShuttingDown,
    /// The job's deadline (the value, counted from submission: queue wait plus run time)
    /// passed; a job still queued is taken out, one running has its worker killed and replaced.
    #[error("the job did not finish within the {0:?} deadline")]
    Timeout(Duration),
    /// The worker running the job ended mid-job (a crash, a signal, the OOM killer, the
    /// address-space limit); the job is not retried, since it may be what killed it.
    #[error("worker {pid} died mid-job: {cause}")]
    WorkerDied {
        /// The worker's pid.
        pid: u32,
        /// How it ended.
        cause: Exit,
    },
    /// The worker running the job sent something the protocol does not allow (an over-long or
    /// malformed line, a reply to another job) and was killed; the job has no answer.
    #[error("worker {pid} broke the protocol: {error}")]
    Protocol {
        /// The worker's pid (killed since).
        pid: u32,
        /// What it sent, or failed to.
        error: ProtocolError,
    },
    /// The job ran and its worker reported the job's own error ([`Job::Error`]): the worker is
    /// fine and keeps serving.
    #[error("the job failed: {0}")]
    JobFailed(E),
    /// A bug: the driver thread of the job's slot panicked (logged). The job is abandoned and
    /// the slot restarts with a new worker.
    #[error("internal error: the pool's driver running this job panicked (logged); the job was abandoned and its worker replaced")]
    DriverPanic,
    /// Refused at submission: no worker is alive and the last `broken_after_failed_starts`
    /// starts failed (the crash-loop breaker is open); starts go on with backoff.
    #[error("no worker is alive and none can be started ({failed_starts} starts failed in a row, the last: {last_error}); retry later")]
    Unavailable {
        /// Failed starts in a row when the job was refused.
        failed_starts: u32,
        /// The error of the latest one.
        last_error: String,
    },
}

/// A finished job.
#[derive(Debug)]
pub struct Done<O> {
    /// What the job returned.
    pub output: O,
    /// Compute time measured inside the worker.
    pub compute_ms: f64,
}

/// What a submitter waits on: the answer to its job.
type Answer<J> = Result<Done<<J as Job>::Output>, PoolError<<J as Job>::Error>>;

/// Everything the drivers and the handles share.
struct Inner<J: Job> {
    config: PoolConfig,
    spec: SpawnSpec,
    queue: Mutex<Queue<J>>,
    /// Wakes the idle driver of the lowest slot when a job is queued (and all of them at
    /// shutdown).
    wakers: Wakers,
    /// What each slot shows (`/status`), updated by its driver.
    slots: Vec<Mutex<Slot>>,
    /// The pool as a whole (roll generation, live slots, failed starts; see `health`), which
    /// drivers and waiters watch.
    life: watch::Sender<Life>,
    /// One permit: a worker started while the one it replaces still lives (recycling, a roll)
    /// holds it until the old one has exited, so that at most `workers + 1` are ever alive,
    /// however recycling and a roll overlap.
    spare: Arc<Semaphore>,
    /// The slots' supervisor tasks, awaited by `shutdown`.
    supervisors: Mutex<Vec<JoinHandle<()>>>,
    dispatcher: Dispatcher,
    metrics: metrics::Metrics,
    /// Run times per cost class and the work each slot holds, for admission by deadline (see
    /// `estimate`).
    estimate: Estimator,
    /// How many workers the pool runs: its bounds, the effective maximum being its slots.
    size: PoolSize,
    /// Wakes an elastic pool's scaler when a job is queued (see `scale`).
    pressure: Notify,
    /// Next job id (ids are unique per pool, for the protocol and the status rows).
    next_id: AtomicU64,
}

/// A pool of worker processes running jobs of type `J`. Cheap to clone; dropping the last
/// clone closes the pool, stops its thread and kills its workers (use [`shutdown`] first to
/// let queued and running jobs finish).
///
/// [`shutdown`]: WorkerPool::shutdown
pub struct WorkerPool<J: Job> {
    guard: Arc<PoolGuard<J>>,
}

/// Held only by [`WorkerPool`] handles (the drivers hold `Inner` itself), so that its drop
/// marks the last handle going away (as mini-redis's `DbDropGuard` does).
struct PoolGuard<J: Job> {
    inner: Arc<Inner<J>>,
}

impl<J: Job> Drop for PoolGuard<J> {
    fn drop(&mut self) {
        self.inner.close();
        // Ends the pool's thread; its runtime drops every driver, and with them every worker
        // (see `process::GroupChild`). Joined, so that no worker outlives this call.
        self.inner.dispatcher.stop_and_join();
    }
}

impl<J: Job> Clone for WorkerPool<J> {
    fn clone(&self) -> Self {
        WorkerPool {
            guard: self.guard.clone(),
        }
    }
}

impl<J: Job> WorkerPool<J> {
    /// [`start`](Self::start), for a `config` that [`PoolConfig::validate`] accepts.
    pub fn try_start(config: PoolConfig, command: impl WorkerCommand) -> Result<Self, PoolConfigError> {
        config.validate()?;
        Ok(Self::start(config, command))
    }

    /// Starts the pool's thread and one driver per slot; each spawns its worker in the
    /// background, so this returns at once ([`wait_live`](Self::wait_live) waits for the first
    /// one). Needs no runtime of the caller's.
    ///
    /// # Panics
    /// If [`PoolConfig::validate`] refuses `config` (use [`try_start`](Self::try_start) to get
    /// the error instead).
    pub fn start(config: PoolConfig, command: impl WorkerCommand) -> Self {
        if let Err(error) = config.validate() {
            panic!("WorkerPool::start: {error}");
        }
        let spec = SpawnSpec {
            command: Arc::new(command),
            kind: J::KIND,
            max_line: config.max_line,
            oom: Arc::new(OomWatch::find()),
        };
        let size = PoolSize::new(config.workers_min, config.workers);
        let life = Life::new(size.max, size.min, config.broken_after_failed_starts);
        let inner = Arc::new(Inner {
            slots: (0..size.max)
                .map(|slot| match slot < size.min {
                    true => Mutex::new(Slot::new(WorkerState::Starting)),
                    false => Mutex::new(Slot::new(WorkerState::Dormant)),
                })
                .collect(),
            wakers: Wakers::new(size.max),
            size,
            pressure: Notify::new(),
            queue: Mutex::new(Queue::new(config.queue)),
            metrics: metrics::Metrics::new(&config.metrics_prefix),
            estimate: Estimator::new(config.workers),
            config,
            spec,
            life: watch::Sender::new(life),
            spare: Arc::new(Semaphore::new(1)),
            supervisors: Mutex::new(Vec::new()),
            dispatcher: Dispatcher::start(),
            next_id: AtomicU64::new(1),
        });
        inner.metrics.publish(&inner.life.borrow());
        let supervisors = (0..inner.size.max)
            .map(|slot| driver::supervise(inner.clone(), slot))
            .collect();
        *inner.supervisors.lock().unwrap() = supervisors;
        if inner.size.elastic() {
            // Detached: it ends when the pool closes, or with the pool's thread.
            drop(scale::start(inner.clone()));
        }
        WorkerPool {
            guard: Arc::new(PoolGuard { inner }),
        }
    }

    fn inner(&self) -> &Inner<J> {
        &self.guard.inner
    }

    /// Queues `job` and waits for its answer, its deadline, or a failure. `tag` is opaque to
    /// the pool: it travels with the job and shows in the logs on both sides (the server passes
    /// the HTTP request id). Dropping the returned future cancels the job: it leaves the queue,
    /// or its worker is killed. While no worker can be started ([`PoolHealth::Unavailable`]) it
    /// fails at once with [`PoolError::Unavailable`].
    pub async fn submit(&self, job: J, tag: &str) -> Answer<J> {
        self.run(job, tag, self.inner().config.job_timeout, false)
            .await
    }

    /// [`submit`](Self::submit) for a caller with a deadline of its own, `timeout` from now:
    /// the job's deadline is the earlier of it and [`PoolConfig::job_timeout`] (a job past it
    /// is taken out of the queue or has its worker killed, and fails with
    /// [`PoolError::Timeout`] naming it). When the predicted wait plus the job's own run time
    /// (see [`Wait`], and [`Job::cost_hint`]) is already longer than that deadline, the job is
    /// not queued at all: it fails at once with [`PoolError::WontFinish`]. When a driver would
    /// take it with less of the deadline left than its run time, it fails then with
    /// [`PoolError::TooLate`]. So no worker starts a job that is predicted not to finish in
    /// time (a prediction can be wrong: the `estimate` module says where).
    pub async fn submit_with_timeout(&self, job: J, tag: &str, timeout: Duration) -> Answer<J> {
        let timeout = timeout.min(self.inner().config.job_timeout);
        self.run(job, tag, timeout, true).await
    }

    /// The prediction for `job` if it were submitted now, if there is one (a job has run and a
    /// worker is live).
    pub fn expected_wait(&self, job: &J) -> Option<Wait> {
        let inner = self.inner();
        let serving = inner.life.borrow().serving();
        let queue = inner.queue.lock().unwrap();
        inner.predict(&queue, class_of(job.cost_hint()), serving)
    }

    /// Queues `job` with a deadline `timeout` from now (refused by the prediction first, and
    /// checked again at dispatch, when `admit` is set) and waits for its answer.
    async fn run(&self, job: J, tag: &str, timeout: Duration, admit: bool) -> Answer<J> {
        let inner = self.inner();
        let now = Instant::now();
        let deadline = now + timeout;
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        let class = class_of(job.cost_hint());
        let pending = Pending {
            id,
            tag: tag.to_owned(),
            weight: job.weight(),
            job,
            deadline,
            enqueued: now,
            reply,
            alone: false,
            class,
            expected: inner.estimate.expected_run(class),
            admit,
        };
        inner.enqueue(pending, timeout)?;
        if inner.size.elastic() {
            inner.pressure.notify_one();
        }
        let mut guard = Unqueue::new(inner, id);
        let result = match tokio::time::timeout_at(deadline.into(), answer).await {
            Ok(Ok(result)) => result,
            // The driver dropped the job without answering: only when the pool is torn down.
            Ok(Err(_)) => Err(PoolError::ShuttingDown),
            Err(_) => {
                guard.remove_if_queued(JobOutcome::Timeout);
                Err(PoolError::Timeout(timeout))
            }
        };
        guard.disarm();
        result
    }

    /// One row per worker slot, for `/status` and `/metrics`.
    pub fn status(&self) -> Vec<WorkerStatus> {
        status::rows(&self.inner().slots)
    }

    /// Workers that are up and able to take a job (idle or busy).
    pub fn live_workers(&self) -> usize {
        self.inner().life.borrow().live()
    }

    /// Whether the pool can run jobs: a worker is live, workers are starting, or none can be
    /// started (the breaker: jobs are refused), or the pool is closed.
    pub fn health(&self) -> PoolHealth {
        self.inner().life.borrow().health()
    }

    /// The pool as a whole: its health, failed starts, and the latest roll.
    pub fn overview(&self) -> PoolOverview {
        let inner = self.inner();
        let busy = (inner.slots.iter())
            .filter(|slot| slot.lock().unwrap().state == WorkerState::Busy)
            .count();
        inner.life.borrow().overview(&inner.size, busy)
    }

    /// Resolves once at least one worker has said hello (at once if one is live now), woken by
    /// the hello itself rather than by polling: the moment a server is ready to serve. It
    /// keeps waiting while no worker ever starts, so that a caller races it against its own
    /// shutdown.
    pub async fn wait_live(&self) {
        let mut life = self.inner().life.subscribe();
        // An error only means the pool is gone, which a handle prevents.
        let _ = life.wait_for(|life| life.live() > 0).await;
    }

    /// Resolves once the pool can serve: a worker is live, or none is wanted (an elastic pool
    /// with [`PoolConfig::workers_min`] 0, whose first job starts one: [`PoolHealth::Standby`]).
    /// Like [`wait_live`](Self::wait_live) it keeps waiting while no start succeeds.
    pub async fn wait_ready(&self) {
        let mut life = self.inner().life.subscribe();
        let ready = |life: &Life| matches!(life.health(), PoolHealth::Live | PoolHealth::Standby);
        // An error only means the pool is gone, which a handle prevents.
        let _ = life.wait_for(ready).await;
    }

    /// Jobs waiting for a worker.
    pub fn queue_depth(&self) -> usize {
        self.inner().queue.lock().unwrap().len()
    }

    /// Rolling restart, to pick up a new worker program: bumps the pool's roll generation and
    /// returns at once. Every slot whose worker is older starts a replacement (through the one
    /// spare permit, so at most `workers + 1` processes are alive), and the old worker keeps
    /// serving until the replacement said hello, then retires once its running job is done. A
    /// replacement that fails to start is retried after the slot's backoff; a later roll
    /// supersedes this one, replacing what is still on its way at once. Await
    /// [`Roll::finished`] on the result to learn when every slot runs a worker of this
    /// generation (or that a newer roll superseded it); dropping it leaves the roll running.
    pub fn roll(&self) -> Roll {
        self.inner().roll()
    }

    /// Stops admitting jobs; queued and running jobs may still finish.
    pub fn close(&self) {
        self.inner().close();
    }

    /// Closes the pool, lets queued and running jobs finish within `grace`, then kills what is
    /// left. When this returns, every worker has exited.
    pub async fn shutdown(&self, grace: Duration) {
        let inner = self.inner();
        inner.close();
        let supervisors = std::mem::take(&mut *inner.supervisors.lock().unwrap());
        let aborts: Vec<_> = supervisors.iter().map(JoinHandle::abort_handle).collect();
        let all = futures_util::future::join_all(supervisors);
        tokio::pin!(all);
        if tokio::time::timeout(grace, &mut all).await.is_err() {
            tracing::warn!(?grace, "grace period over; killing the remaining workers");
            // Dropping a driver drops its worker, whose process group is killed and reaped.
            aborts.iter().for_each(|a| a.abort());
            all.await;
        }
        inner.dispatcher.stop();
    }
}

impl<J: Job> Inner<J> {
    /// No new jobs; drivers finish what is queued, then retire.
    fn close(&self) {
        self.queue.lock().unwrap().close();
        self.wakers.wake_all();
        self.change_life(|life| life.closed = true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_pool_settings_are_refused_each_by_name() {
        assert_eq!(PoolConfig::new(2).validate(), Ok(()));
        let refused = |change: fn(&mut PoolConfig)| {
            let mut config = PoolConfig::new(2);
            change(&mut config);
            config.validate().unwrap_err()
        };
        assert_eq!(refused(|c| c.workers = 0), PoolConfigError::NoWorkers);
        assert_eq!(
            refused(|c| c.workers_min = 3),
            PoolConfigError::MinAboveMax { min: 3, max: 2 }
        );
        assert_eq!(
            refused(|c| {
                c.workers_min = 0;
                c.worker_idle_timeout = Duration::ZERO
            }),
            PoolConfigError::NoIdleTimeout
        );
        assert_eq!(refused(|c| c.queue = 0), PoolConfigError::NoQueue);
        assert_eq!(refused(|c| c.job_timeout = Duration::ZERO), PoolConfigError::NoDeadline);
        assert_eq!(refused(|c| c.max_line = 100), PoolConfigError::LineTooShort(100));
        assert_eq!(refused(|c| c.max_batch = 0), PoolConfigError::NoBatch);
        assert_eq!(
            refused(|c| c.broken_after_failed_starts = 0),
            PoolConfigError::BreakerAtZero
        );
        assert_eq!(
            refused(|c| c.job_slow = Some(c.job_timeout)),
            PoolConfigError::SlowNotBelowDeadline
        );
    }

    #[test]
    fn durations_too_long_for_the_clock_are_refused_by_name() {
        // `Duration::MAX` is how a library user writes "never": it made `submit` (a job's
        // deadline) or the drivers (the next idle deadline) panic on `Instant` overflow.
        let refused = |change: fn(&mut PoolConfig)| {
            let mut config = PoolConfig::new(2);
            change(&mut config);
            config.validate()
        };
        assert_eq!(
            refused(|c| c.job_timeout = Duration::MAX),
            Err(PoolConfigError::TooLong("job_timeout"))
        );
        assert_eq!(
            refused(|c| c.worker_idle_timeout = Duration::MAX),
            Err(PoolConfigError::TooLong("worker_idle_timeout"))
        );
        assert_eq!(
            refused(|c| c.worker_release_after = Some(Duration::MAX)),
            Err(PoolConfigError::TooLong("worker_release_after"))
        );
        let mut config = PoolConfig::new(2);
        config.job_timeout = LONGEST_DURATION;
        config.worker_idle_timeout = LONGEST_DURATION;
        config.worker_release_after = Some(LONGEST_DURATION);
        assert_eq!(config.validate(), Ok(()), "the longest is still a deadline");
        assert!(Instant::now().checked_add(LONGEST_DURATION).is_some());
    }

    /// A job type for pools that never run one.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Nothing;

    #[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
    #[error("nothing")]
    struct NoError;

    impl Job for Nothing {
        const KIND: &'static str = "nothing";
        type Output = ();
        type Error = NoError;
        fn run(self) -> Result<(), NoError> {
            Ok(())
        }
    }

    #[test]
    fn try_start_refuses_a_pool_without_workers() {
        let started = WorkerPool::<Nothing>::try_start(PoolConfig::new(0), || {
            std::process::Command::new("/bin/false")
        });
        assert_eq!(started.err(), Some(PoolConfigError::NoWorkers));
    }
}
