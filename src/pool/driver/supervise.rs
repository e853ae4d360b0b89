//! Supervision and the restart policy: every start of a worker, and the supervisor that runs a
//! slot's driver again after a panic.
//!
//! Starts: every start, whatever it is for (an empty slot, recycling, a roll), goes through the
//! slot's one [`Backoff`]: none while starts succeed, exponential with jitter after failures,
//! reset once a new worker has answered a job. A failed start is logged, counted and fed to the
//! pool's breaker (see `health`). A worker due for replacement (its job quota served, its
//! memory over the limit, or older than the pool's roll generation: a [`Retirement`]) keeps
//! serving while its [`Replacement`] is on its way or waits out the backoff after a failure; a
//! newer roll drops a replacement started for an older generation (killing and reaping its
//! process) and starts afresh at once. A replacement holds the pool's one spare permit until
//! the worker it replaces has exited, so at most `workers + 1` processes are alive.
//!
//! Failure modes: a worker that dies by itself right after start, before any job, counts as a
//! failed start, so a broken worker program never respawns in a busy loop. A panic in the
//! driver (a bug, or a `Job::Output` whose decoding panics) unwinds to [`supervise`], which
//! has the worker killed (by dropping it), fails the running job with
//! `PoolError::DriverPanic`, requeues the jobs sent ahead, counts and logs it, and starts the
//! driver again after the backoff.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tokio::time::sleep;

use super::super::health::Life;
use super::super::lifecycle::{JobOutcome, Retirement, StartReason, WorkerExit};
use super::super::process::{SpawnError, WorkerProcess};
use super::super::status::WorkerState;
use super::{Driver, Step, Tenure};
use super::super::{Inner, Job, PoolError};

/// A worker that fails by itself within this time of its start, before answering any job,
/// failed to start as far as the backoff is concerned (a broken binary, a bad limit).
const EARLY_FAILURE: Duration = Duration::from_secs(1);

/// Starts the supervisor of `slot` on the pool's thread: it runs the slot's driver and, when
/// the driver panics, recovers and runs it again. Ends when the driver retires.
pub(in super::super) fn supervise<J: Job>(pool: Arc<Inner<J>>, slot: usize) -> JoinHandle<()> {
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

/// A worker on its way to replace one that keeps serving meanwhile.
pub(super) struct Replacement {
    /// The roll generation it is started at.
    generation: u64,
    /// What the worker it replaces retires for.
    reason: Retirement,
    /// The start itself: the backoff, the spare permit, then spawn and hello.
    pub(super) start: Spawning,
}

/// A replacement that said hello: it takes the slot, and the worker it replaces retires.
pub(super) struct Ready {
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
pub(super) type Spawning =
    Pin<Box<dyn Future<Output = Result<(WorkerProcess, OwnedSemaphorePermit), SpawnError>> + Send>>;

impl<J: Job> Driver<J> {
    /// Starts the replacement the worker is due for, after the slot's backoff, unless one for
    /// the current roll generation is on its way already. One for an older generation is
    /// superseded: dropped (its process killed and reaped) for a fresh start at once.
    pub(super) fn ensure_replacement(&mut self, t: &mut Tenure) {
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
    pub(super) fn on_replacement_started(
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

    /// The replacement takes the slot; the old worker retires in the background (finishing
    /// nothing: it is idle) and then frees the spare permit. A roll is done only once it has
    /// exited (see `health::Life::retiring`).
    pub(super) fn on_replacement(&self, old: Tenure, new: Ready) -> Tenure {
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
    pub(super) fn on_lost(&mut self, t: Tenure, exit: WorkerExit) {
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
    pub(super) async fn start_worker(&mut self) -> Option<(WorkerProcess, u64)> {
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
}

/// Resolves once a roll newer than `generation` begins, or (with `or_close`) the pool closes.
async fn newer_roll(life: &mut watch::Receiver<Life>, generation: u64, or_close: bool) {
    // An error only means the pool is gone, which the driver's own handle on it prevents.
    let _ = life
        .wait_for(|life| life.generation > generation || (or_close && life.closed))
        .await;
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
