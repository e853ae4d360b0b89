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
//! than a pipe's buffer cannot stall both sides.
//!
//! Failure modes: a worker lost mid-job fails that job and is replaced at once, or after a backoff
//! when it dies again and again right after start; the jobs sent ahead to it go back to the front
//! of the queue (see `on_died_mid_batch` for a worker that dies holding several). A panic in the
//! driver (a bug, or a `Job::Output` whose decoding panics) unwinds to [`supervise`], which has the
//! worker killed (by dropping it), fails the running job with `PoolError::DriverPanic`, requeues
//! the jobs sent ahead, counts and logs it, and starts the driver again.

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
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tokio::time::sleep;

use super::lifecycle::{JobOutcome, WorkerExit};
use super::process::{SpawnError, WorkerProcess};
use super::protocol::{decode, encode_into, Outcome, ProtocolError, Reply, Request, Weight};
use super::queue::Pending;
use super::status::WorkerState;
use super::{Answer, Done, Inner, Job, PoolError, RollRequest};

/// Starts the supervisor of `slot` on the pool's thread: it runs the slot's driver and, when
/// the driver panics, recovers and runs it again. Ends when the driver retires.
pub(super) fn supervise<J: Job>(
    pool: Arc<Inner<J>>,
    slot: usize,
    rolls: mpsc::UnboundedReceiver<RollRequest>,
) -> JoinHandle<()> {
    let runtime = pool.dispatcher.runtime.clone();
    runtime.spawn(async move {
        let mut driver = Driver::new(pool, slot, rolls);
        loop {
            // `run` borrows the driver, so what `recover` needs survives the unwinding. The
            // panicked run itself (its stack, the worker included) is dropped by the time
            // `catch_unwind` returns: the worker is killed and reaped then.
            let run = AssertUnwindSafe(driver.run()).catch_unwind().await;
            let Err(panic) = run else { return };
            driver.recover(panic.as_ref());
            // A driver that panicked without a job would otherwise restart in a busy loop.
            sleep(driver.backoff.next()).await;
        }
    })
}

/// One slot's driver: what outlives any one worker, and any one panic.
struct Driver<J: Job> {
    /// The pool this slot belongs to.
    pool: Arc<Inner<J>>,
    /// Index of the slot in `pool.slots`.
    slot: usize,
    /// Roll requests for this slot, from `WorkerPool::roll`.
    rolls: mpsc::UnboundedReceiver<RollRequest>,
    /// Delay before the next start after failures; reset by a served job.
    backoff: Backoff,
    /// The jobs handed to the worker and not answered yet, the running one first. Kept here
    /// rather than on the run's stack so that `recover` can still answer them after a panic.
    running: VecDeque<Pending<J>>,
}

/// The worker in the slot, and what the driver tracks about it.
struct Tenure {
    worker: WorkerProcess,
    /// Jobs it has served.
    served: u64,
    /// Jobs after which it is recycled; 0 means never.
    retire_after: u64,
    /// Its replacement on the way (recycling, a roll).
    spawning: Option<Spawning>,
    /// A roll request to answer once the replacement has taken over.
    roll_done: Option<RollRequest>,
}

impl Tenure {
    fn new(worker: WorkerProcess, max_jobs: u64) -> Tenure {
        Tenure {
            worker,
            served: 0,
            retire_after: jitter(max_jobs),
            spawning: None,
            roll_done: None,
        }
    }
}

/// A replacement on its way, with the pool's spare permit once it has it.
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
    Roll(RollRequest),
    Replacement(Result<(WorkerProcess, OwnedSemaphorePermit), SpawnError>),
}

/// What happens after an event. Returned once per event and matched at once, so the size gap
/// between variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Step {
    /// Keep serving with the same worker.
    Continue,
    /// A replacement is ready: it takes the slot, and the old worker retires.
    Replace(WorkerProcess, OwnedSemaphorePermit),
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
    fn new(pool: Arc<Inner<J>>, slot: usize, rolls: mpsc::UnboundedReceiver<RollRequest>) -> Self {
        Driver {
            pool,
            slot,
            rolls,
            backoff: Backoff::default(),
            running: VecDeque::new(),
        }
    }

    /// The life of the slot: start a worker, handle events until it is lost, start another,
    /// until the pool closes.
    async fn run(&mut self) {
        loop {
            let Some(worker) = self.start_worker().await else {
                return self.set_state(WorkerState::Stopped, None);
            };
            let mut tenure = Tenure::new(worker, self.pool.config.max_jobs_per_worker);
            let exit = loop {
                match self.step(&mut tenure).await {
                    Step::Continue => {}
                    Step::Replace(new, spare) => tenure = self.on_replacement(tenure, new, spare),
                    Step::Lost(exit) => break exit,
                    Step::Retire => return self.retire(tenure).await,
                }
            };
            self.on_lost(tenure, exit).await;
        }
    }

    /// Waits for one event and handles it.
    async fn step(&mut self, t: &mut Tenure) -> Step {
        self.set_state(WorkerState::Idle, Some(&t.worker));
        match self.next_event(t).await {
            Event::Jobs(batch) => self.on_batch(t, batch).await,
            Event::Closed => Step::Retire,
            Event::IdleOutput(line) => on_idle_output(&mut t.worker, line).await,
            Event::Roll(done) => self.on_roll(t, done),
            Event::Replacement(Ok((new, spare))) => Step::Replace(new, spare),
            Event::Replacement(Err(error)) => {
                tracing::warn!(%error, "replacement worker failed to start; keeping the old one");
                t.spawning = None;
                Step::Continue
            }
        }
    }

    async fn next_event(&mut self, t: &mut Tenure) -> Event<J> {
        let (worker, spawning) = (&mut t.worker, &mut t.spawning);
        let replacement = async {
            match spawning {
                Some(spawning) => spawning.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            jobs = self.pool.next_batch() => jobs.map_or(Event::Closed, Event::Jobs),
            line = worker.next_line() => Event::IdleOutput(line),
            Some(done) = self.rolls.recv() => Event::Roll(done),
            new = replacement => Event::Replacement(new),
        }
    }

    /// Hands the worker `batch` and answers each job as its reply comes in; while the worker
    /// runs light jobs, queued light ones are sent after them.
    async fn on_batch(&mut self, t: &mut Tenure, batch: Vec<Pending<J>>) -> Step {
        let light = batch[0].travels_light();
        let mut outbox = BytesMut::new();
        self.hand_over(batch, &mut outbox);
        // The running job started when the one before it answered (or when the batch left).
        let mut started = Instant::now();
        while let Some(head) = self.running.front_mut() {
            self.pool.slots[self.slot].lock().unwrap().busy(head.id);
            let end = exchange::<J>(&mut t.worker, &mut outbox, head).await;
            if matches!(end, RunEnd::Died) && self.running.len() > 1 {
                return self.on_died_mid_batch(&mut t.worker).await;
            }
            let job = self.running.pop_front().expect("the running job is the front one");
            let now = Instant::now();
            self.pool.metrics.run_time.record((now - started).as_secs_f64());
            started = now;
            if let Some(exit) = self.answer(&mut t.worker, end, job).await {
                self.requeue_sent_ahead(false);
                return Step::Lost(exit);
            }
            self.on_served(t);
            if light {
                self.top_up(t, &mut outbox);
            }
        }
        Step::Continue
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
    /// None while a replacement or a roll waits for the worker to be free, or it never would be.
    fn top_up(&mut self, t: &Tenure, outbox: &mut BytesMut) {
        let max = self.pool.config.max_batch;
        if self.running.len() > max / 2 || t.spawning.is_some() || !self.rolls.is_empty() {
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

    /// The worker answered and stays: count it, and start its replacement once it is due.
    fn on_served(&mut self, t: &mut Tenure) {
        t.served += 1;
        self.backoff.reset();
        self.pool.slots[self.slot].lock().unwrap().jobs_served += 1;
        if t.retire_after > 0 && t.served >= t.retire_after && t.spawning.is_none() {
            t.spawning = Some(self.pool.spawn_spare());
        }
    }

    fn on_roll(&self, t: &mut Tenure, done: RollRequest) -> Step {
        t.roll_done = Some(done);
        if t.spawning.is_none() {
            t.spawning = Some(self.pool.spawn_spare());
        }
        Step::Continue
    }

    /// The replacement takes the slot; the old worker retires in the background (finishing
    /// nothing: it is idle) and then frees the spare permit and answers the roll.
    fn on_replacement(
        &self,
        old: Tenure,
        new: WorkerProcess,
        spare: OwnedSemaphorePermit,
    ) -> Tenure {
        let Tenure {
            worker, roll_done, ..
        } = old;
        self.pool.metrics.worker_exit(WorkerExit::Recycled);
        tokio::spawn(async move {
            worker.retire().await;
            drop(spare);
            if let Some(done) = roll_done {
                let _ = done.send(());
            }
        });
        Tenure::new(new, self.pool.config.max_jobs_per_worker)
    }

    /// The worker is gone: count it, and back off if it failed by itself straight after start
    /// (a broken binary, a bad limit), so that the slot never respawns in a busy loop.
    async fn on_lost(&mut self, t: Tenure, exit: WorkerExit) {
        // Nothing is alive in this slot until the next worker says hello.
        self.set_state(WorkerState::Down, None);
        self.pool.metrics.worker_exit(exit);
        let early = t.worker.started.elapsed() < Duration::from_secs(1) && t.served == 0;
        drop(t);
        if exit.is_failure() && early {
            sleep(self.backoff.next()).await;
        }
    }

    async fn retire(&mut self, t: Tenure) {
        self.set_state(WorkerState::Stopped, None);
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
    }

    /// Spawns workers until one says hello, backing off exponentially between failures.
    /// `None` when the pool closed meanwhile.
    async fn start_worker(&mut self) -> Option<WorkerProcess> {
        loop {
            // Closed but not empty: jobs sent ahead to a lost worker came back, and may have
            // no other slot left to run them.
            if self.pool.queue.lock().unwrap().is_closed_and_empty() {
                return None;
            }
            self.set_state(WorkerState::Starting, None);
            match self.pool.spawn_replacement().await {
                Ok(worker) => return Some(worker),
                Err(error) => {
                    let delay = self.backoff.next();
                    tracing::error!(slot = self.slot, %error, ?delay, "worker failed to start");
                    self.set_state(WorkerState::Down, None);
                    sleep(delay).await;
                }
            }
        }
    }

    fn set_state(&self, state: WorkerState, worker: Option<&WorkerProcess>) {
        let mut slot = self.pool.slots[self.slot].lock().unwrap();
        slot.set(state, worker.map(|w| w.pid));
    }
}

/// Writes what is left of `outbox` and reads the reply of `head`, the job running now, unless
/// its submitter stops waiting first.
async fn exchange<J: Job>(
    worker: &mut WorkerProcess,
    outbox: &mut BytesMut,
    head: &mut Pending<J>,
) -> RunEnd<J> {
    let (id, deadline) = (head.id, head.deadline);
    let light = head.weight == Weight::Light;
    let talk = async {
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
    };
    // At the deadline `submit` stops waiting and drops the receiver, which is what `closed`
    // reports, so one timer per job serves both. A light job whose submitter left is let
    // finish: its answer is microseconds away, while a kill would cost a fresh worker and
    // send every job behind it round again (a client hanging up over and over could make
    // the pool do nothing else). Its own deadline still holds, should it not be light after
    // all. Biased: an answer already in the pipe wins over a submitter that left a moment ago.
    let abandoned = async {
        head.reply.closed().await;
        if light {
            tokio::time::sleep_until(deadline.into()).await;
        }
    };
    tokio::select! {
        biased;
        end = talk => end,
        () = abandoned => match Instant::now() >= deadline {
            true => RunEnd::Deadline,
            false => RunEnd::Cancelled,
        },
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
    /// roll). It first waits for the pool's one spare permit, which travels with it and is
    /// released once the old worker has exited. Meanwhile the old worker keeps serving.
    fn spawn_spare(&self) -> Spawning {
        let spare = self.spare.clone();
        let spawn = self.spawn_replacement();
        Box::pin(async move {
            let permit = spare
                .acquire_owned()
                .await
                .expect("the spare semaphore is never closed");
            Ok((spawn.await?, permit))
        })
    }

    fn spawn_replacement(&self) -> impl Future<Output = Result<WorkerProcess, SpawnError>> {
        let spec = self.spec.clone();
        let spawns = self.metrics.spawns.clone();
        async move {
            let worker = WorkerProcess::spawn(&spec).await;
            if let Ok(w) = &worker {
                spawns.increment(1);
                tracing::debug!(pid = w.pid, "worker started");
            }
            worker
        }
    }
}

/// `n` jobs with ±10% jitter, so that workers started together do not all retire together.
fn jitter(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let spread = (n / 10) as i64;
    let random = RandomState::new().hash_one(Instant::now()) as i64;
    let offset = if spread == 0 {
        0
    } else {
        random.rem_euclid(2 * spread + 1) - spread
    };
    (n as i64 + offset).max(1) as u64
}

/// Exponential backoff for worker starts: 100 ms doubling up to 10 s.
#[derive(Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let delay = Duration::from_millis(100) * 2u32.saturating_pow(self.failures.min(7));
        self.failures += 1;
        delay.min(Duration::from_secs(10))
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff::default();
        let delays: Vec<_> = (0..9).map(|_| b.next().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000]);
        b.reset();
        assert_eq!(b.next().as_millis(), 100);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        assert_eq!(jitter(0), 0);
        for _ in 0..100 {
            let n = jitter(1000);
            assert!((900..=1100).contains(&n), "{n}");
        }
    }
}
