//! An elastic pool's side of a slot: a slot above the pool's target is dormant (no worker)
//! until the scaler wants it (see `scale`), and a worker idle for
//! `PoolConfig::worker_idle_timeout` retires, the slot going dormant, while the pool is above
//! `PoolConfig::workers_min`. A fixed pool's slots are always wanted and never idle out.
//!
//! Guarantees: the pool never drops below its minimum: the check and the slot's release are
//! one change of the pool's life (`Life::shrink`), so two workers idle at once cannot both
//! take the last place above it. A retiring worker is idle: it has no job to lose.
//!
//! Failure modes: a worker that dies while it retires is reaped as it would be anyway
//! (`WorkerProcess::retire`); the exit still counts as `idle`.

use std::time::Instant;

use super::super::lifecycle::{StartReason, WorkerExit};
use super::super::status::WorkerState;
use super::super::Job;
use super::{Driver, Step, Tenure};

impl<J: Job> Driver<J> {
    /// Waits until the slot is wanted, its row `dormant` meanwhile; what its next start is
    /// for: an empty slot (wanted all along: a minimum slot, or a worker lost) or growth.
    /// `None` once the pool is closed.
    pub(super) async fn wait_wanted(&mut self) -> Option<StartReason> {
        let slot = self.slot;
        if self.life.borrow().wanted[slot] {
            return Some(StartReason::EmptySlot);
        }
        self.set_state(WorkerState::Dormant, None);
        let life = self
            .life
            .wait_for(|life| life.wanted[slot] || life.closed)
            .await
            .ok()?;
        (!life.closed).then_some(StartReason::Grow)
    }

    /// The worker has been idle for the pool's idle timeout: it retires if the pool is above
    /// its minimum; else it stays, and is looked at again after another timeout.
    pub(super) fn on_idle(&mut self, t: &mut Tenure) -> Step {
        let mut shrinks = false;
        self.pool
            .change_life(|life| shrinks = life.shrink(self.slot));
        if shrinks {
            return Step::Shrink;
        }
        t.idle_since = Instant::now();
        Step::Continue
    }

    /// The idle worker goes (the pool already counts it gone), and the slot is dormant.
    pub(super) async fn retire_idle(&mut self, t: Tenure) {
        let (pid, served) = (t.worker.pid, t.served);
        let idle = self.pool.config.worker_idle_timeout;
        let target = self.life.borrow().target();
        tracing::info!(slot = self.slot, pid, served, ?idle, target,
            "worker idle past the idle timeout retires: the pool shrinks");
        self.pool.metrics.worker_exit(WorkerExit::Idle);
        self.dismiss(t, WorkerState::Dormant).await;
    }
}
