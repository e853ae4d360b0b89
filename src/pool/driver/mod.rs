//! The driver side of the pool: one state machine per worker slot that owns the slot's worker
//! process and feeds it jobs, run under a supervisor that restarts it after a panic.
//!
//! A driver waits for the next [`Event`] and handles it with one method per event; each
//! returns a [`Step`] that says what happens next: carry on, let a replacement take over,
//! start again after losing the worker, or retire. The worker and what is tracked about it
//! live in a [`Tenure`], replaced whole when the worker is. This file is that loop; the
//! concerns it hands work to are files of their own:
//! - `exchange`: a batch of jobs handed to the worker, answered one by one, topped up, and the
//!   worker's memory read after it; output from a worker that has no job.
//! - `supervise`: every start of a worker (the backoff, replacements for recycling and rolls)
//!   and the supervisor that recovers from a panicking driver.
//! - `slow`: the slow-job log's watch on the running job.
//! - `elastic`: an elastic pool's side of a slot: dormant until wanted, and its worker retired
//!   after the idle timeout while the pool is above its minimum.
//!
//! Guarantees: one event at a time per slot, so a slot's worker is only ever talked to by its
//! own driver; the slot's row in `/status` says `idle` before the pool counts a new worker
//! live, and `down` before a lost worker's job is answered. The driver ends (its row
//! `stopped`) only once the pool is closed and its queue empty.
//!
//! Failure modes: output from a worker that has no job (it died, or wrote out of turn) loses
//! the worker, which is counted and replaced, and so does an idle worker whose stdin cannot
//! take the release line at once (it stopped reading); everything else is the concern of the
//! files above, whose own docs name theirs.

mod elastic;
mod exchange;
mod slow;
mod supervise;

use std::collections::VecDeque;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{watch, OwnedSemaphorePermit};

use super::health::{Backoff, Life};
use super::lifecycle::{Retirement, WorkerExit};
use super::process::{SpawnError, WorkerProcess};
use super::protocol::ProtocolError;
use super::queue::Pending;
use super::status::{SlotWorker, WorkerState};
use super::{Inner, Job};

use exchange::on_idle_output;
pub(super) use supervise::supervise;
use supervise::{Ready, Replacement};

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
    /// When it last finished a batch (or said hello): an elastic pool retires it once idle
    /// for `PoolConfig::worker_idle_timeout`.
    idle_since: Instant,
    /// When it finished the batch whose code pages it still holds: it is told to let them go
    /// once idle for `PoolConfig::worker_release_after`. `None` after its hello (it let go of
    /// its start's pages by itself) and once told, until its next batch.
    unreleased_since: Option<Instant>,
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
            idle_since: Instant::now(),
            unreleased_since: None,
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
    /// The worker has been idle until its next deadline (see `Driver::quiet_until`).
    Idle,
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
    /// The pool shrinks: the idle worker retires and the slot goes dormant.
    Shrink,
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
            // A dormant slot (an elastic pool below its maximum) waits until it is wanted.
            let Some(reason) = self.wait_wanted().await else {
                return self.set_state(WorkerState::Stopped, None);
            };
            let Some((worker, generation)) = self.start_worker(reason).await else {
                return self.set_state(WorkerState::Stopped, None);
            };
            let mut tenure = self.take_slot(worker, generation);
            let exit = loop {
                match self.step(&mut tenure).await {
                    Step::Continue => {}
                    Step::Replace(ready) => tenure = self.on_replacement(tenure, ready),
                    Step::Lost(exit) => break Some(exit),
                    Step::Shrink => break None,
                    Step::Retire => return self.retire(tenure).await,
                }
            };
            match exit {
                Some(exit) => self.on_lost(tenure, exit),
                None => self.retire_idle(tenure).await,
            }
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
            Event::Jobs(batch) => {
                let step = self.on_batch(t, batch).await;
                t.idle_since = Instant::now();
                t.unreleased_since = Some(t.idle_since);
                step
            }
            Event::Idle => self.on_quiet(t).await,
            Event::Closed => Step::Retire,
            Event::IdleOutput(line) => on_idle_output(&mut t.worker, line).await,
            Event::LifeChanged => Step::Continue,
            Event::Replacement(started) => self.on_replacement_started(t, started),
        }
    }

    async fn next_event(&mut self, t: &mut Tenure) -> Event<J> {
        let quiet_until = self.quiet_until(t);
        let (worker, replacement) = (&mut t.worker, &mut t.replacement);
        let replacement = async {
            match replacement {
                Some(replacement) => (&mut replacement.start).await,
                None => std::future::pending().await,
            }
        };
        let sleep = tokio::time::sleep_until(quiet_until.unwrap_or_else(Instant::now).into());
        tokio::select! {
            jobs = self.pool.next_batch(self.slot) => jobs.map_or(Event::Closed, Event::Jobs),
            () = sleep, if quiet_until.is_some() => Event::Idle,
            line = worker.next_line() => Event::IdleOutput(line),
            Ok(()) = self.life.changed() => Event::LifeChanged,
            started = replacement => Event::Replacement(started),
        }
    }

    /// When the idle worker is next due for something, if ever: the release of its last jobs'
    /// code pages, or (an elastic pool) its idle timeout.
    fn quiet_until(&self, t: &Tenure) -> Option<Instant> {
        self.release_at(t).into_iter().chain(self.idle_out_at(t)).min()
    }

    /// When the worker is due to be told to release its last jobs' code pages, if it is.
    fn release_at(&self, t: &Tenure) -> Option<Instant> {
        let after = self.pool.config.worker_release_after?;
        Some(t.unreleased_since? + after)
    }

    /// When an elastic pool looks at whether the idle worker retires (a fixed pool: never).
    fn idle_out_at(&self, t: &Tenure) -> Option<Instant> {
        let elastic = self.pool.size.elastic();
        elastic.then(|| t.idle_since + self.pool.config.worker_idle_timeout)
    }

    /// The idle worker reached `quiet_until`: it is told to let go of its last jobs' code
    /// pages if that is due, and an elastic pool sees whether it retires. Neither while jobs
    /// wait: a job queued as the deadline came may have woken this driver (`select!` then
    /// picks either), and with no other driver idle it would wait for a busy worker, or a
    /// new one, while this one retired; the driver takes it instead, and is due again later.
    async fn on_quiet(&mut self, t: &mut Tenure) -> Step {
        let now = Instant::now();
        if self.pool.jobs_waiting() {
            return Step::Continue;
        }
        if self.release_at(t).is_some_and(|at| at <= now) {
            if !t.worker.release() {
                return self.on_deaf(t).await;
            }
            t.unreleased_since = None;
        }
        match self.idle_out_at(t).is_some_and(|at| at <= now) {
            true => self.on_idle(t),
            false => Step::Continue,
        }
    }

    /// The idle worker's stdin is full: it stopped reading (see `WorkerProcess::release`).
    /// It is killed and replaced like any worker that breaks the protocol.
    async fn on_deaf(&mut self, t: &mut Tenure) -> Step {
        let exit = t.worker.kill().await;
        tracing::warn!(pid = t.worker.pid, cause = %exit,
            "idle worker lost: it stopped reading its stdin (the release line found the pipe full)");
        Step::Lost(WorkerExit::Protocol)
    }

    /// The pool is closed and its queue empty: the worker retires, the slot stops.
    async fn retire(&mut self, t: Tenure) {
        self.pool.worker_gone(self.slot);
        self.dismiss(t, WorkerState::Stopped).await;
    }

    /// Lets the worker go while it serves nothing (it exits by itself once its stdin closes),
    /// the slot's row showing `state` from now on.
    async fn dismiss(&mut self, t: Tenure, state: WorkerState) {
        self.set_state(state, None);
        // A replacement on its way is not needed any more.
        drop(t.replacement);
        t.worker.retire().await;
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
