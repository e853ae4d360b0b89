//! The driver side of the pool: one state machine per worker slot that owns the slot's worker
//! process and feeds it jobs, and the supervisor that restarts a driver that panicked.
//!
//! A driver waits for the next [`Event`] and handles it with one method per event; each
//! returns a [`Step`] that says what happens next: carry on, let a replacement take over,
//! start again after losing the worker, or retire. The worker and what is tracked about it
//! live in a [`Tenure`], replaced whole when the worker is.
//!
//! A job event hands the worker a batch: one heavy job, or light ones that it runs in order.
//! The driver then answers each job as its reply comes in and, while the worker runs only light
//! jobs, tops its pipe up with queued light ones, so that a busy worker seldom waits for the
//! driver. It writes and reads at once (see `WorkerProcess::write_and_read`), so a batch larger
//! than a pipe's buffer cannot stall both sides. A job still running at the pool's slow-job
//! threshold is reported once while the driver goes on waiting for it ([`SlowWatch`]). Once the
//! batch is answered (or every `max_batch` answers while it is topped up), the worker's resident
//! memory is read against the pool's limit (`Driver::measure`).
//!
//! Starts: every start, whatever it is for (an empty slot, recycling, a roll), goes through the
//! slot's one [`Backoff`]: none while starts succeed, exponential with jitter after failures,
//! reset once a new worker has answered a job. A failed start is logged, counted and fed to the
//! pool's breaker (see `health`). A worker due for replacement (its job quota served, its
//! memory over the limit, or older than the pool's roll generation: a [`Retirement`]) keeps
//! serving while its [`Replacement`] is on its way or
//! waits out the backoff after a failure; a newer roll drops a replacement started for an older
//! generation (killing and reaping its process) and starts afresh at once.
//!
//! Failure modes: a worker lost mid-job fails that job and is replaced at once, or after the
//! backoff when it dies by itself right after start; the jobs sent ahead to it go back to the
//! front of the queue (see `on_died_mid_batch` for a worker that dies holding several). A panic
//! in the driver (a bug, or a `Job::Output` whose decoding panics) unwinds to [`supervise`],
//! which has the worker killed (by dropping it), fails the running job with
//! `PoolError::DriverPanic`, requeues the jobs sent ahead, counts and logs it, and starts the
//! driver again after the backoff.

use std::any::Any;
use std::collections::VecDeque;
use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::BuildHasher;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use futures_util::FutureExt;
use metrics::Counter;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tokio::time::sleep;

use super::health::{Backoff, Life};
use super::inspect::{rss_bytes, Activity};
use super::lifecycle::{JobOutcome, Retirement, StartReason, WorkerExit};
use super::process::{SpawnError, WorkerProcess};
use super::protocol::{decode, encode_into, Outcome, ProtocolError, Reply, Request, Weight};
use super::queue::Pending;
use super::status::{SlotWorker, WorkerState};
use super::{Answer, Done, Inner, Job, PoolError};

/// A worker that fails by itself within this time of its start, before answering any job,
/// failed to start as far as the backoff is concerned (a broken binary, a bad limit).
const EARLY_FAILURE: Duration = Duration::from_secs(1);

/// Starts the supervisor of `slot` on the pool's thread: it runs the slot's driver and, when
/// the driver panics, recovers and runs it again. Ends when the driver retires.
pub(super) fn supervise<J: Job>(pool: Arc<Inner<J>>, slot: usize) -> JoinHandle<()> {
    let runtime = pool.dispatcher.runtime.clone();
    runtime.spawn(async move {
        let mut driver = Driver::new(pool, slot);
        loop {
            // `run` borrows the driver, so what `recover` needs survives the unwinding. The
            // panicked run itself (its stack, the worker included) is dropped by the time
            // `catch_unwind` returns: the worker is killed and reaped then. `recover` counts a
            // failure in the backoff, which the next start waits out: a driver that panics
            // again and again never restarts in a busy loop.
            let run = AssertUnwindSafe(driver.run()).catch_unwind().await;
            let Err(panic) = run else { return };
            driver.recover(panic.as_ref());
        }
    })
}

/// One slot's driver: what outlives any one worker, and any one panic.
struct Driver<J: Job> {
    /// The pool this slot belongs to.
    pool: Arc<Inner<J>>,
    /// Index of the slot in `pool.slots`.
    slot: usize,
    /// The pool's life, watched for rolls (a newer generation).
    life: watch::Receiver<Life>,
    /// The wait before the slot's next start, after failures.
    backoff: Backoff,
    /// The jobs handed to the worker and not answered yet, the running one first. Kept here
    /// rather than on the run's stack so that `recover` can still answer them after a panic.
    running: VecDeque<Pending<J>>,
}

/// The worker in the slot, and what the driver tracks about it.
struct Tenure {
    /// The worker process.
    worker: WorkerProcess,
    /// The pool's roll generation when the worker's start began.
    generation: u64,
    /// Jobs it has served.
    served: u64,
    /// Jobs after which it is recycled; 0 means never.
    retire_after: u64,
    /// Jobs answered since its resident memory was last read.
    unmeasured: u64,
    /// Its resident memory was found over the pool's limit.
    over_rss: bool,
    /// Its replacement on the way (recycling, a roll), once one is due.
    replacement: Option<Replacement>,
}

impl Tenure {
    fn new(worker: WorkerProcess, generation: u64, max_jobs: u64) -> Tenure {
        Tenure {
            worker,
            generation,
            served: 0,
            retire_after: jitter(max_jobs),
            unmeasured: 0,
            over_rss: false,
            replacement: None,
        }
    }

    /// What the worker is due to be replaced for with the pool at roll generation `current`,
    /// if anything.
    fn due(&self, current: u64) -> Option<Retirement> {
        if self.generation < current {
            Some(Retirement::Roll)
        } else if self.retire_after > 0 && self.served >= self.retire_after {
            Some(Retirement::Jobs)
        } else if self.over_rss {
            Some(Retirement::Rss)
        } else {
            None
        }
    }
}

/// A worker on its way to replace one that keeps serving meanwhile.
struct Replacement {
    /// The roll generation it is started at.
    generation: u64,
    /// What the worker it replaces retires for.
    reason: Retirement,
    /// The start itself: the backoff, the spare permit, then spawn and hello.
    start: Spawning,
}

/// A replacement that said hello: it takes the slot, and the worker it replaces retires.
struct Ready {
    /// The new worker.
    worker: WorkerProcess,
    /// The pool's spare permit, released once the old worker has exited.
    spare: OwnedSemaphorePermit,
    /// The roll generation the new worker was started at.
    generation: u64,
    /// What the old worker retires for.
    reason: Retirement,
}

/// A replacement's start, with the pool's spare permit once it has it. Dropping it kills and
/// reaps a process already started (see `process::GroupChild`).
type Spawning =
    Pin<Box<dyn Future<Output = Result<(WorkerProcess, OwnedSemaphorePermit), SpawnError>> + Send>>;

/// What a driver waits for between jobs. One lives on the driver's stack at a time, so the
/// size gap between variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Event<J: Job> {
    /// One heavy job, or light ones (see `Inner::next_batch`).
    Jobs(Vec<Pending<J>>),
    /// The queue is closed and empty.
    Closed,
    /// Output (or EOF) from a worker that has no job: it died or misbehaves.
    IdleOutput(Result<Option<Vec<u8>>, ProtocolError>),
    /// The pool's life changed: perhaps a roll began.
    LifeChanged,
    /// The replacement on its way is ready, or failed to start.
    Replacement(Result<(WorkerProcess, OwnedSemaphorePermit), SpawnError>),
}

/// What happens after an event. Returned once per event and matched at once, so the size gap
/// between variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Step {
    /// Keep serving with the same worker.
    Continue,
    /// A replacement is ready: it takes the slot, and the old worker retires.
    Replace(Ready),
    /// The worker is gone (already killed or reaped): count it and start another.
    Lost(WorkerExit),
    /// The pool is closed and its queue empty: retire the worker and stop.
    Retire,
}

/// How a job's exchange with its worker ended.
enum RunEnd<J: Job> {
    Replied(Reply<J::Output, J::Error>),
    /// The submitter stopped waiting at the deadline.
    Deadline,
    /// The submitter stopped waiting before the deadline.
    Cancelled,
    /// The worker's pipes closed: it died.
    Died,
    Protocol(ProtocolError),
}

/// What a finished run leaves behind.
struct Settled<J: Job> {
    /// For the submitter; `None` when it has stopped waiting.
    answer: Option<Answer<J>>,
    outcome: JobOutcome,
    /// `Some` when the worker is gone (killed or reaped).
    exit: Option<WorkerExit>,
}

impl<J: Job> Driver<J> {
    fn new(pool: Arc<Inner<J>>, slot: usize) -> Self {
        Driver {
            life: pool.life.subscribe(),
            pool,
            slot,
            backoff: Backoff::default(),
            running: VecDeque::new(),
        }
    }

    /// The life of the slot: start a worker, handle events until it is lost, start another,
    /// until the pool closes.
    async fn run(&mut self) {
        loop {
            let Some((worker, generation)) = self.start_worker().await else {
                return self.set_state(WorkerState::Stopped, None);
            };
            let mut tenure = self.take_slot(worker, generation);
            let exit = loop {
                match self.step(&mut tenure).await {
                    Step::Continue => {}
                    Step::Replace(ready) => tenure = self.on_replacement(tenure, ready),
                    Step::Lost(exit) => break exit,
                    Step::Retire => return self.retire(tenure).await,
                }
            };
            self.on_lost(tenure, exit);
        }
    }

    /// A worker that said hello takes the slot. Its row says idle before the pool counts it
    /// live, so that whoever learns the pool is live (`wait_live`, readiness) finds the worker
    /// in `/status` too.
    fn take_slot(&self, worker: WorkerProcess, generation: u64) -> Tenure {
        let tenure = Tenure::new(worker, generation, self.pool.config.max_jobs_per_worker);
        self.set_state(WorkerState::Idle, Some(&tenure));
        self.pool.worker_up(self.slot, generation);
        tenure
    }

    /// Waits for one event and handles it.
    async fn step(&mut self, t: &mut Tenure) -> Step {
        self.set_state(WorkerState::Idle, Some(t));
        self.ensure_replacement(t);
        match self.next_event(t).await {
            Event::Jobs(batch) => self.on_batch(t, batch).await,
            Event::Closed => Step::Retire,
            Event::IdleOutput(line) => on_idle_output(&mut t.worker, line).await,
            Event::LifeChanged => Step::Continue,
            Event::Replacement(started) => self.on_replacement_started(t, started),
        }
    }

    async fn next_event(&mut self, t: &mut Tenure) -> Event<J> {
        let (worker, replacement) = (&mut t.worker, &mut t.replacement);
        let replacement = async {
            match replacement {
                Some(replacement) => (&mut replacement.start).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            jobs = self.pool.next_batch() => jobs.map_or(Event::Closed, Event::Jobs),
            line = worker.next_line() => Event::IdleOutput(line),
            Ok(()) = self.life.changed() => Event::LifeChanged,
            started = replacement => Event::Replacement(started),
        }
    }

    /// Starts the replacement the worker is due for, after the slot's backoff, unless one for
    /// the current roll generation is on its way already. One for an older generation is
    /// superseded: dropped (its process killed and reaped) for a fresh start at once.
    fn ensure_replacement(&mut self, t: &mut Tenure) {
        let current = self.life.borrow_and_update().generation;
        let Some(reason) = t.due(current) else { return };
        match &t.replacement {
            Some(on_its_way) if on_its_way.generation >= current => return,
            Some(on_its_way) => {
                tracing::info!(slot = self.slot, older = on_its_way.generation, generation = current,
                    "a newer roll supersedes the replacement on its way; starting afresh");
                t.replacement = None;
                self.backoff.reset();
            }
            None => {}
        }
        t.replacement = Some(Replacement {
            generation: current,
            reason,
            start: self.pool.spawn_spare(self.backoff.delay()),
        });
    }

    /// The replacement on its way is ready to take over, or failed: then the old worker keeps
    /// serving, and the next step starts another after the backoff.
    fn on_replacement_started(
        &mut self,
        t: &mut Tenure,
        started: Result<(WorkerProcess, OwnedSemaphorePermit), SpawnError>,
    ) -> Step {
        let Replacement {
            generation, reason, ..
        } = t.replacement.take().expect("only a replacement on its way ends");
        match started {
            Ok((worker, spare)) => Step::Replace(Ready {
                worker,
                spare,
                generation,
                reason,
            }),
            Err(error) => {
                let retry_in = self.backoff.fail();
                let reason = StartReason::Replace(reason);
                self.pool.start_failed(self.slot, reason, &error, retry_in);
                Step::Continue
            }
        }
    }

    /// Hands the worker `batch` and answers each job as its reply comes in; while the worker
    /// runs light jobs, queued light ones are sent after them. Its memory is read once the
    /// batch is answered, or every `max_batch` answers while it is kept topped up.
    async fn on_batch(&mut self, t: &mut Tenure, batch: Vec<Pending<J>>) -> Step {
        let light = batch[0].travels_light();
        let mut outbox = BytesMut::new();
        self.hand_over(batch, &mut outbox);
        // The running job started when the one before it answered (or when the batch left).
        let mut started = Instant::now();
        while let Some(head) = self.running.front_mut() {
            self.pool.slots[self.slot].lock().unwrap().busy(head.id);
            let slow = self.pool.config.job_slow.map(|after| SlowWatch {
                slot: self.slot,
                started,
                after,
                counter: &self.pool.metrics.slow_jobs,
            });
            let end = exchange::<J>(&mut t.worker, &mut outbox, head, slow).await;
            if matches!(end, RunEnd::Died) && self.running.len() > 1 {
                return self.on_died_mid_batch(&mut t.worker).await;
            }
            let job = self.running.pop_front().expect("the running job is the front one");
            let now = Instant::now();
            self.pool.metrics.run_time.record((now - started).as_secs_f64());
            self.pool.run_times.record(now - started);
            started = now;
            if let Some(exit) = self.answer(&mut t.worker, end, job).await {
                self.requeue_sent_ahead(false);
                return Step::Lost(exit);
            }
            self.on_served(t);
            if self.running.is_empty() || t.unmeasured >= self.pool.config.max_batch as u64 {
                self.measure(t);
            }
            if light {
                self.top_up(t, &mut outbox);
            }
        }
        Step::Continue
    }

    /// Reads the worker's resident memory if the pool has a limit; one over it is due for
    /// replacement (the next step starts it), and is not read again.
    fn measure(&self, t: &mut Tenure) {
        let limit = self.pool.config.max_rss_per_worker;
        if limit == 0 || t.over_rss {
            return;
        }
        t.unmeasured = 0;
        let pid = t.worker.pid;
        let Some(rss) = rss_bytes(pid).filter(|&rss| rss > limit) else {
            return;
        };
        t.over_rss = true;
        tracing::info!(slot = self.slot, pid, rss, limit, served = t.served,
            "worker's resident memory is over the limit: it retires once its replacement said hello");
    }

    /// The worker died holding several unanswered jobs. It writes its answers when it runs
    /// out of input, so the first unanswered job may have finished: which one crashed it is
    /// unknown. None is failed; all go back to the queue to run alone, where a crash is the
    /// job's own. (Light jobs take microseconds, so running a finished one again costs little;
    /// a job that kills every worker fails on its first run alone.)
    async fn on_died_mid_batch(&mut self, worker: &mut WorkerProcess) -> Step {
        let cause = worker.exit_cause().await;
        tracing::warn!(pid = worker.pid, jobs = self.running.len(), %cause,
            "worker died holding several jobs; each runs again alone");
        self.requeue_sent_ahead(true);
        Step::Lost(WorkerExit::Crashed(cause))
    }

    /// Answers `job` with how its run ended; `Some` when the worker is gone. (`&mut self`
    /// because a shared `Driver` is not `Sync`, and this future must be `Send`.)
    async fn answer(
        &mut self,
        worker: &mut WorkerProcess,
        end: RunEnd<J>,
        job: Pending<J>,
    ) -> Option<WorkerExit> {
        let settled = settle(worker, end, job.id, &job.tag).await;
        self.pool.metrics.job(settled.outcome);
        if let Some(answer) = settled.answer {
            // The submitter may have left meanwhile; then nobody needs the answer.
            let _ = job.reply.send(answer);
        }
        settled.exit
    }

    /// Moves `jobs` to `running` and their lines to `outbox`.
    fn hand_over(&mut self, jobs: Vec<Pending<J>>, outbox: &mut BytesMut) {
        let now = Instant::now();
        for job in jobs {
            let waited = now - job.enqueued;
            self.pool.metrics.queue_wait.record(waited.as_secs_f64());
            let request = Request {
                id: job.id,
                tag: job.tag.as_str(),
                job: &job.job,
            };
            encode_into((&mut *outbox).writer(), &request);
            self.running.push_back(job);
        }
    }

    /// Sends queued light jobs after the light ones the worker has, up to `max_batch` in all,
    /// once at most half of them are left unanswered: writes of several jobs each, which
    /// `write_and_read` sends before the driver works through the answers it already holds.
    /// None while the worker is due for replacement, or it would never be free to hand over.
    fn top_up(&mut self, t: &Tenure, outbox: &mut BytesMut) {
        let max = self.pool.config.max_batch;
        // A change of the pool's life may be a roll: the next step looks (without a lock here,
        // which runs once per light job).
        let rolling = self.life.has_changed().unwrap_or(false);
        let due = rolling || t.replacement.is_some() || t.due(t.generation).is_some();
        if self.running.len() > max / 2 || due {
            return;
        }
        let room = max.saturating_sub(self.running.len());
        let jobs = self.pool.more_light(room);
        self.hand_over(jobs, outbox);
    }

    /// The worker was lost with jobs sent ahead and not answered. They may have run (a worker
    /// writes its answers when it runs out of input), but nobody got an answer, so they go
    /// back to the front of the queue for another worker; `alone` when each must run alone
    /// from now on.
    fn requeue_sent_ahead(&mut self, alone: bool) {
        if self.running.is_empty() {
            return;
        }
        tracing::info!(slot = self.slot, jobs = self.running.len(),
            "jobs sent ahead to a lost worker go back to the queue");
        self.pool.requeue(self.running.drain(..).map(|job| Pending {
            alone: alone || job.alone,
            ..job
        }));
    }

    /// The worker answered and stays: count it. (Its replacement, once due, is started by the
    /// next step.)
    fn on_served(&mut self, t: &mut Tenure) {
        t.served += 1;
        t.unmeasured += 1;
        if t.served == 1 {
            // A new worker that answers a job works: the slot's next start need not wait. Only
            // its first job resets, so that a worker serving on while its replacement keeps
            // failing does not cut the replacement's backoff short at every job.
            self.backoff.reset();
        }
        self.pool.slots[self.slot].lock().unwrap().jobs_served += 1;
    }

    /// The replacement takes the slot; the old worker retires in the background (finishing
    /// nothing: it is idle) and then frees the spare permit. A roll is done only once it has
    /// exited (see `health::Life::retiring`).
    fn on_replacement(&self, old: Tenure, new: Ready) -> Tenure {
        self.pool.metrics.worker_exit(WorkerExit::Replaced(new.reason));
        let (worker, pool, spare) = (old.worker, self.pool.clone(), new.spare);
        pool.change_life(|life| life.retiring += 1);
        tokio::spawn(async move {
            worker.retire().await;
            drop(spare);
            pool.change_life(|life| life.retiring -= 1);
        });
        self.take_slot(new.worker, new.generation)
    }

    /// The worker is gone: count it. One that failed by itself straight after start (a broken
    /// binary, a bad limit) counts as a failure in the backoff, so that the next start waits
    /// and the slot never respawns in a busy loop; one that lived proved the program works,
    /// and the next start is at once.
    fn on_lost(&mut self, t: Tenure, exit: WorkerExit) {
        // Nothing is alive in this slot until the next worker says hello.
        self.set_state(WorkerState::Down, None);
        self.pool.worker_gone(self.slot);
        self.pool.metrics.worker_exit(exit);
        let early = t.worker.started.elapsed() < EARLY_FAILURE && t.served == 0;
        // A replacement on its way goes too; the empty slot starts its own.
        drop(t);
        if !early {
            self.backoff.reset();
        } else if exit.is_failure() {
            self.backoff.fail();
        }
    }

    async fn retire(&mut self, t: Tenure) {
        self.set_state(WorkerState::Stopped, None);
        self.pool.worker_gone(self.slot);
        // A replacement on its way is not needed any more.
        drop(t.replacement);
        t.worker.retire().await;
    }

    /// After a panic: fail the job it was running, count and log it. Its worker has already
    /// been killed with the run that panicked.
    fn recover(&mut self, panic: &(dyn Any + Send)) {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        let pid = self.pool.slots[self.slot].lock().unwrap().pid;
        // Down before the job is answered: whoever gets the answer must not see the dead
        // worker as live.
        self.set_state(WorkerState::Down, None);
        self.pool.worker_gone(self.slot);
        let metrics = &self.pool.metrics;
        let had_job = match self.running.pop_front() {
            Some(job) => {
                metrics.job(JobOutcome::DriverPanic);
                job.reply.send(Err(PoolError::DriverPanic)).is_ok()
            }
            None => false,
        };
        if pid.is_some() {
            metrics.worker_exit(WorkerExit::DriverPanic);
        }
        metrics.driver_panics.increment(1);
        tracing::error!(slot = self.slot, ?pid, had_job, panic = %message,
            "slot driver panicked; its worker was killed and its job failed; restarting the slot");
        self.requeue_sent_ahead(false);
        self.backoff.fail();
    }

    /// Starts a worker for the empty slot, waiting out the backoff before each try, until one
    /// says hello; returns it with the roll generation its start began at. A newer roll cuts a
    /// wait short, and drops a start still on its way for an older generation. `None` when
    /// the pool closed meanwhile.
    async fn start_worker(&mut self) -> Option<(WorkerProcess, u64)> {
        loop {
            // Closed but not empty: jobs sent ahead to a lost worker came back, and may have
            // no other slot left to run them.
            if self.pool.queue.lock().unwrap().is_closed_and_empty() {
                return None;
            }
            let generation = self.life.borrow_and_update().generation;
            if self.wait_backoff(generation).await {
                self.backoff.reset();
                continue;
            }
            self.set_state(WorkerState::Starting, None);
            let spawn = self.pool.spawn_worker();
            let started = tokio::select! {
                started = spawn => Some(started),
                () = newer_roll(&mut self.life, generation, false) => None,
            };
            match started {
                Some(Ok(worker)) => return Some((worker, generation)),
                Some(Err(error)) => {
                    let retry_in = self.backoff.fail();
                    self.set_state(WorkerState::Down, None);
                    let reason = StartReason::EmptySlot;
                    self.pool.start_failed(self.slot, reason, &error, retry_in);
                }
                None => {
                    tracing::info!(slot = self.slot, older = generation,
                        "a newer roll supersedes the worker starting; starting afresh");
                    self.backoff.reset();
                }
            }
        }
    }

    /// Waits out the backoff before the slot's next start; true when a newer roll than
    /// `generation`, or the pool closing, cut it short.
    async fn wait_backoff(&mut self, generation: u64) -> bool {
        let delay = self.backoff.delay();
        if delay.is_zero() {
            return false;
        }
        self.set_state(WorkerState::Down, None);
        // Once closed, only a roll cuts it short (or it would never be waited out).
        let or_close = !self.life.borrow().closed;
        tokio::select! {
            () = sleep(delay) => false,
            () = newer_roll(&mut self.life, generation, or_close) => true,
        }
    }

    fn set_state(&self, state: WorkerState, tenure: Option<&Tenure>) {
        let worker = tenure.map(|t| SlotWorker {
            pid: t.worker.pid,
            version: &t.worker.version,
            generation: t.generation,
        });
        self.pool.slots[self.slot].lock().unwrap().set(state, worker);
    }
}

/// Resolves once a roll newer than `generation` begins, or (with `or_close`) the pool closes.
async fn newer_roll(life: &mut watch::Receiver<Life>, generation: u64, or_close: bool) {
    // An error only means the pool is gone, which the driver's own handle on it prevents.
    let _ = life
        .wait_for(|life| life.generation > generation || (or_close && life.closed))
        .await;
}

/// The slow-job log's watch on the job running now.
struct SlowWatch<'a> {
    /// The slot it runs in.
    slot: usize,
    /// When it started on its worker.
    started: Instant,
    /// How long it may run before it is slow.
    after: Duration,
    /// `<prefix>_slow_jobs_total`.
    counter: &'a Counter,
}

impl SlowWatch<'_> {
    /// Counts the job and logs it at `warn`, with what its worker is doing now.
    fn report(&self, pid: u32, job: u64, tag: &str, enqueued: Instant) {
        self.counter.increment(1);
        let slot = self.slot;
        let elapsed_ms = self.started.elapsed().as_secs_f64() * 1e3;
        let queued_ms = (self.started - enqueued).as_secs_f64() * 1e3;
        let Some(now) = Activity::read(pid) else {
            return tracing::warn!(slot, pid, job, tag, elapsed_ms, queued_ms,
                "slow job: still running (its worker's /proc is unreadable)");
        };
        let (wchan, stack) = (now.wchan.as_deref(), now.stack.as_deref());
        tracing::warn!(slot, pid, job, tag, elapsed_ms, queued_ms, state = now.state,
            wchan = wchan.unwrap_or("-"), stack = stack.unwrap_or("-"),
            user_cpu_s = now.user_cpu.as_secs_f64(), system_cpu_s = now.system_cpu.as_secs_f64(),
            "slow job: still running; it runs on to its deadline");
    }
}

/// Writes what is left of `outbox` and reads the reply of `head`, the job running now, unless
/// its submitter stops waiting first. With `slow`, a job still running after its time is
/// reported once, and waited for as before.
async fn exchange<J: Job>(
    worker: &mut WorkerProcess,
    outbox: &mut BytesMut,
    head: &mut Pending<J>,
    slow: Option<SlowWatch<'_>>,
) -> RunEnd<J> {
    let (id, deadline, enqueued, pid) = (head.id, head.deadline, head.enqueued, worker.pid);
    let light = head.weight == Weight::Light;
    let Pending { reply, tag, .. } = head;
    let talk = read_reply::<J>(worker, outbox, id);
    // At the deadline `submit` stops waiting and drops the receiver, which is what `closed`
    // reports, so one timer per job serves both. A light job whose submitter left is let
    // finish: its answer is microseconds away, while a kill would cost a fresh worker and
    // send every job behind it round again (a client hanging up over and over could make
    // the pool do nothing else). Its own deadline still holds, should it not be light after
    // all. Biased: an answer already in the pipe wins over a submitter that left a moment ago.
    let abandoned = async {
        reply.closed().await;
        if light {
            tokio::time::sleep_until(deadline.into()).await;
        }
    };
    let is_slow = async {
        match &slow {
            Some(slow) => {
                tokio::time::sleep_until((slow.started + slow.after).into()).await;
                slow
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(talk, abandoned, is_slow);
    let mut reported = false;
    loop {
        tokio::select! {
            biased;
            end = &mut talk => return end,
            () = &mut abandoned => return match Instant::now() >= deadline {
                true => RunEnd::Deadline,
                false => RunEnd::Cancelled,
            },
            slow = &mut is_slow, if !reported => {
                reported = true;
                slow.report(pid, id, tag, enqueued);
            }
        }
    }
}

/// Writes what is left of `outbox` and reads the reply of job `id` (cancel-safe, see
/// `WorkerProcess::write_and_read`).
async fn read_reply<J: Job>(
    worker: &mut WorkerProcess,
    outbox: &mut BytesMut,
    id: u64,
) -> RunEnd<J> {
    match worker.write_and_read(outbox).await {
        Ok(Some(line)) => match decode::<Reply<J::Output, J::Error>>(&line) {
            Ok(answer) if answer.id == id => RunEnd::Replied(answer),
            Ok(other) => RunEnd::Protocol(ProtocolError::Unexpected(format!(
                "reply for job {} while job {id} runs",
                other.id
            ))),
            Err(error) => RunEnd::Protocol(error),
        },
        Ok(None) => RunEnd::Died,
        Err(error) => RunEnd::Protocol(error),
    }
}

/// Turns a run's end into the submitter's answer, the outcome and the worker's fate, killing
/// or reaping the worker when it has to go.
async fn settle<J: Job>(
    worker: &mut WorkerProcess,
    end: RunEnd<J>,
    job: u64,
    tag: &str,
) -> Settled<J> {
    let pid = worker.pid;
    let settled = |answer, outcome, exit| Settled {
        answer,
        outcome,
        exit,
    };
    match end {
        RunEnd::Replied(Reply { ms, result, .. }) => match result {
            Outcome::Ok(output) => {
                let done = Done {
                    output,
                    compute_ms: ms,
                };
                settled(Some(Ok(done)), JobOutcome::Ok, None)
            }
            Outcome::Err(e) => settled(Some(Err(PoolError::JobFailed(e))), JobOutcome::Error, None),
        },
        RunEnd::Deadline => {
            let cause = worker.kill().await;
            tracing::warn!(pid, job, tag, %cause, "job passed its deadline; worker killed");
            // `submit` has answered with the timeout itself: it is the one that stopped waiting.
            settled(None, JobOutcome::Timeout, Some(WorkerExit::KilledTimeout))
        }
        RunEnd::Cancelled => {
            let cause = worker.kill().await;
            tracing::info!(pid, job, tag, %cause, "submitter went away; worker killed");
            settled(None, JobOutcome::Cancelled, Some(WorkerExit::KilledCancel))
        }
        RunEnd::Died => {
            let cause = worker.exit_cause().await;
            tracing::warn!(pid, job, tag, %cause, "worker died mid-job");
            let error = PoolError::WorkerDied { pid, cause };
            let exit = WorkerExit::Crashed(cause);
            settled(Some(Err(error)), JobOutcome::Crashed, Some(exit))
        }
        RunEnd::Protocol(error) => {
            let cause = worker.kill().await;
            tracing::warn!(pid, job, tag, %error, %cause, "worker broke the protocol; killed");
            let error = PoolError::Protocol { pid, error };
            settled(
                Some(Err(error)),
                JobOutcome::Crashed,
                Some(WorkerExit::Protocol),
            )
        }
    }
}

/// A worker with no job wrote something or closed its stdout: it goes.
async fn on_idle_output(
    worker: &mut WorkerProcess,
    line: Result<Option<Vec<u8>>, ProtocolError>,
) -> Step {
    let (why, exit) = match line {
        Ok(None) => ("exited while idle".to_owned(), worker.exit_cause().await),
        Ok(Some(_)) => (
            "unexpected output while idle".to_owned(),
            worker.kill().await,
        ),
        Err(e) => (e.to_string(), worker.kill().await),
    };
    tracing::warn!(pid = worker.pid, why, cause = %exit, "idle worker lost");
    Step::Lost(WorkerExit::Crashed(exit))
}

impl<J: Job> Inner<J> {
    /// A replacement for a worker that stays alive until the new one is ready (recycling, a
    /// roll): after `delay` (the slot's backoff), it waits for the pool's one spare permit,
    /// which travels with it and is released once the old worker has exited. Meanwhile the old
    /// worker keeps serving.
    fn spawn_spare(&self, delay: Duration) -> Spawning {
        let spare = self.spare.clone();
        let spawn = self.spawn_worker();
        Box::pin(async move {
            sleep(delay).await;
            let permit = spare
                .acquire_owned()
                .await
                .expect("the spare semaphore is never closed");
            Ok((spawn.await?, permit))
        })
    }

    /// Spawns a worker and waits for its hello; counted once it said hello.
    fn spawn_worker(&self) -> impl Future<Output = Result<WorkerProcess, SpawnError>> + 'static {
        let spec = self.spec.clone();
        let spawns = self.metrics.spawns.clone();
        async move {
            let worker = WorkerProcess::spawn(&spec).await;
            if let Ok(w) = &worker {
                spawns.increment(1);
                tracing::debug!(pid = w.pid, version = %w.version, "worker started");
            }
            worker
        }
    }
}

/// `n` jobs with ±10% jitter, so that workers started together do not all retire together.
/// Unsigned and saturating: `n` may be any `u64` (`--max-jobs-per-worker`), and near
/// `u64::MAX` the upper half of the range is cut off rather than wrapped.
fn jitter(n: u64) -> u64 {
    let spread = n / 10;
    if spread == 0 {
        return n;
    }
    let random = RandomState::new().hash_one(Instant::now());
    // `2 * spread + 1` cannot overflow: `spread` is at most a tenth of `u64::MAX`.
    let offset = random % (2 * spread + 1);
    (n - spread).saturating_add(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        assert_eq!(jitter(0), 0);
        for _ in 0..100 {
            let n = jitter(1000);
            assert!((900..=1100).contains(&n), "{n}");
        }
    }

    #[test]
    fn jitter_of_the_largest_counts_stays_within_ten_percent() {
        // `--max-jobs-per-worker` takes any u64; above i64::MAX a signed cast wrapped around
        // and retired every worker after its first job.
        for n in [u64::MAX, u64::MAX - 1, i64::MAX as u64 + 1, i64::MAX as u64] {
            for _ in 0..100 {
                let jittered = jitter(n);
                assert!(jittered >= n - n / 10, "jitter({n}) = {jittered}");
            }
        }
        assert_eq!(jitter(1), 1);
        assert_eq!(jitter(9), 9);
    }
}
