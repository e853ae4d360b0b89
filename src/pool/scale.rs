//! The elastic pool's growth: one task on the pool's thread that wakes a dormant slot when
//! every wanted slot's worker is busy and jobs wait. (Shrinking is each driver's own: a
//! worker idle for `PoolConfig::worker_idle_timeout` retires while the pool is above its
//! minimum, see `Life::shrink`.)
//!
//! Guarantees: at most one start per [`GROW_INTERVAL`], and none while a wanted slot is
//! starting, idle or backing off (so a burst never forks a herd, and a pool whose starts fail
//! does not try on more slots: the breaker sees the failures of one); never beyond the pool's
//! effective maximum (its slots). A job queued at an idle pool with no worker (`workers_min`
//! 0) starts one at once: `submit` wakes the task.
//!
//! Failure modes: a slot woken while the jobs were already served starts a worker that idles
//! and retires after the idle timeout: the cost of one start, not an error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::cpus::{self, MaxLimit};
use super::status::WorkerState;
use super::{Inner, Job};

/// The least time between two starts that grow the pool. A worker's start (fork, exec,
/// hello) takes a few milliseconds, so by then the previous one has said hello and taken a
/// job, and the next decision sees it; 100 ms keeps a burst from forking a herd while a pool
/// still reaches 8 workers in under a second (PHP-FPM's dynamic mode starts at most 32 a
/// second, uWSGI's cheaper one a worker per cycle of a second).
pub const GROW_INTERVAL: Duration = Duration::from_millis(100);

/// How many workers a pool runs: between `min` and its effective `max` (the slots).
#[derive(Debug, Clone)]
pub(super) struct PoolSize {
    /// `PoolConfig::workers_min`.
    pub(super) min: usize,
    /// `PoolConfig::workers`, capped by the CPUs for an elastic pool (see `cpus`).
    pub(super) max: usize,
    /// What set `max`.
    pub(super) limited_by: MaxLimit,
}

impl PoolSize {
    /// The size of a pool of `min` to `max` workers on this machine, logged when elastic.
    pub(super) fn new(min: usize, max: usize) -> PoolSize {
        let (effective, limited_by) = cpus::effective_max(min, max);
        let size = PoolSize {
            min,
            max: effective,
            limited_by,
        };
        if min < max {
            tracing::info!(workers_min = min, workers_max = max, effective_max = effective,
                limited_by = limited_by.as_str(),
                "elastic pool: it grows while every worker is busy and jobs wait, up to the \
                 effective maximum, and shrinks back as workers idle out");
        }
        size
    }

    /// Whether the pool grows and shrinks.
    pub(super) fn elastic(&self) -> bool {
        self.min < self.max
    }
}

/// Starts the scaler of an elastic pool on the pool's thread; it ends when the pool closes.
pub(super) fn start<J: Job>(pool: Arc<Inner<J>>) -> JoinHandle<()> {
    let runtime = pool.dispatcher.runtime.clone();
    runtime.spawn(async move {
        let mut last_start: Option<Instant> = None;
        loop {
            // Registered before looking, so that a job queued in between still wakes it.
            let nudged = pool.pressure.notified();
            tokio::pin!(nudged);
            nudged.as_mut().enable();
            if pool.life.borrow().closed {
                return;
            }
            let waits = pool.queue.lock().unwrap().len() > 0;
            let due = last_start.map_or(Instant::now(), |at| at + GROW_INTERVAL);
            if waits && Instant::now() >= due && pool.all_busy() {
                if let Some(slot) = pool.grow() {
                    last_start = Some(Instant::now());
                    tracing::info!(slot, "every worker is busy and jobs wait: the pool grows");
                }
            }
            // While jobs wait, look again once a start is allowed; else at the next job.
            let again = due.max(Instant::now() + GROW_INTERVAL);
            tokio::select! {
                () = &mut nudged => {}
                () = tokio::time::sleep_until(again.into()), if waits => {}
            }
        }
    })
}

impl<J: Job> Inner<J> {
    /// Whether every wanted slot has a worker running a job: none idle, starting or down.
    fn all_busy(&self) -> bool {
        let life = self.life.borrow();
        let wanted = life.wanted.clone();
        drop(life);
        (self.slots.iter().zip(wanted))
            .filter(|&(_, wanted)| wanted)
            .all(|(slot, _)| slot.lock().unwrap().state == WorkerState::Busy)
    }

    /// Wants one more slot, if there is one left; its driver starts a worker.
    fn grow(&self) -> Option<usize> {
        let mut slot = None;
        self.change_life(|life| slot = life.grow());
        slot
    }
}
