//! The pool as a whole, beyond any one slot: roll generations, failed starts and the
//! crash-loop breaker they feed, the one backoff policy every start goes through, and what
//! waits on them (a [`Roll`]'s end, `WorkerPool::wait_live`).
//!
//! Drivers and handles share one [`Life`] through a watch channel. A driver writes to it when
//! its slot gains or loses a worker or a start fails, `WorkerPool::roll` when it bumps the
//! generation; whoever waits on it (a roll's end, the first live worker, a driver watching for
//! rolls) is woken by the change itself, never by polling.
//!
//! **Generations.** Each roll bumps the pool's generation, and each worker keeps the generation
//! that was current when its start began. A slot whose worker is older starts a replacement and
//! keeps serving with the old one until the replacement said hello; the roll is done once every
//! slot runs a worker at least as new as the roll. A newer roll supersedes an older one still
//! under way: a replacement on its way for the older generation is dropped (killed and reaped)
//! and a fresh one started at once.
//!
//! **The breaker.** After [`PoolConfig::broken_after_failed_starts`] failed starts in a row,
//! pool-wide, with no worker live, the pool is unavailable ([`PoolHealth::Unavailable`]): jobs
//! are refused at once and queued ones answered the same way, instead of waiting for their
//! deadline. The drivers keep trying, each after its backoff; the first hello resets the count,
//! and with it the breaker.
//!
//! [`PoolConfig::broken_after_failed_starts`]: super::PoolConfig::broken_after_failed_starts

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use super::cpus::MaxLimit;
use super::lifecycle::{JobOutcome, StartReason};
use super::process::SpawnError;
use super::queue::Pending;
use super::scale::PoolSize;
use super::{Inner, Job, PoolError};

/// What the pool as a whole is doing; the payload of the pool's watch channel.
#[derive(Debug)]
pub(super) struct Life {
    /// The roll generation: 0 at start, bumped by each `WorkerPool::roll`.
    pub(super) generation: u64,
    /// Per slot, the generation its live worker was started at; `None` while it has none.
    pub(super) slots: Vec<Option<u64>>,
    /// Failed starts since the last hello, all slots together (the breaker's count).
    pub(super) failed_in_a_row: u32,
    /// The error of the latest failed start, for the breaker's reason.
    pub(super) last_error: Option<String>,
    /// Failed starts since the current generation began.
    pub(super) roll_failures: u64,
    /// The error of the latest of them.
    pub(super) roll_error: Option<String>,
    /// [`PoolConfig::broken_after_failed_starts`](super::PoolConfig::broken_after_failed_starts).
    pub(super) broken_after: u32,
    /// Workers replaced (recycled or rolled) that have not exited yet.
    pub(super) retiring: usize,
    /// The pool is closed: it takes no new jobs, and no roll will complete.
    pub(super) closed: bool,
    /// Per slot, whether it should hold a worker: the first `min` at start; an elastic pool
    /// grows by setting one (`scale`) and shrinks when an idle worker's driver clears its own.
    pub(super) wanted: Vec<bool>,
    /// [`PoolConfig::workers_min`](super::PoolConfig::workers_min): the pool never shrinks
    /// below it.
    pub(super) min: usize,
}

impl Life {
    /// A pool of `slots` slots, the first `min` of them wanted at start.
    pub(super) fn new(slots: usize, min: usize, broken_after: u32) -> Life {
        Life {
            generation: 0,
            slots: vec![None; slots],
            wanted: (0..slots).map(|slot| slot < min).collect(),
            min,
            failed_in_a_row: 0,
            last_error: None,
            roll_failures: 0,
            roll_error: None,
            broken_after,
            retiring: 0,
            closed: false,
        }
    }

    /// Slots with a live worker (it said hello and is not known to be gone).
    pub(super) fn live(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// Wanted slots that do not run a worker of the current generation yet. A dormant slot is
    /// not pending: whatever it starts later is of the generation current then.
    pub(super) fn pending(&self) -> usize {
        let current = Some(self.generation);
        self.slots
            .iter()
            .zip(&self.wanted)
            .filter(|&(&s, &wanted)| wanted && s < current)
            .count()
    }

    /// Slots that should hold a worker: the pool's target size.
    pub(super) fn target(&self) -> usize {
        self.wanted.iter().filter(|&&w| w).count()
    }

    /// The workers the admission estimate divides the queue by: the live ones, or all the
    /// slots while the pool has room to grow, since it starts a worker when every live one is
    /// busy and jobs wait, and a job that the grown pool would serve in time is not refused.
    pub(super) fn serving(&self) -> usize {
        match self.target() < self.slots.len() {
            true => self.slots.len(),
            false => self.live(),
        }
    }

    /// Marks the lowest dormant slot wanted, for the pool to grow; its index, or `None` at
    /// the maximum.
    pub(super) fn grow(&mut self) -> Option<usize> {
        let slot = self.wanted.iter().position(|&w| !w)?;
        self.wanted[slot] = true;
        Some(slot)
    }

    /// Lets `slot`'s idle worker go, unless the pool would drop below its minimum: the slot
    /// is then dormant and its worker no longer live. True when it may go.
    pub(super) fn shrink(&mut self, slot: usize) -> bool {
        if self.target() <= self.min || !self.wanted[slot] {
            return false;
        }
        self.wanted[slot] = false;
        self.slots[slot] = None;
        true
    }

    pub(super) fn health(&self) -> PoolHealth {
        if self.closed {
            PoolHealth::Closed
        } else if self.live() > 0 {
            PoolHealth::Live
        } else if self.failed_in_a_row >= self.broken_after {
            PoolHealth::Unavailable {
                failed_starts: self.failed_in_a_row,
                last_error: self.last_error.clone().unwrap_or_default(),
            }
        } else if self.target() == 0 {
            PoolHealth::Standby
        } else {
            PoolHealth::Starting
        }
    }

    /// How the roll to `generation` ended, or `None` while it is under way. It is done once
    /// every slot runs a worker at least as new and the workers they replaced have exited.
    fn outcome(&self, generation: u64) -> Option<RollOutcome> {
        let replaced = (self.slots.iter().zip(&self.wanted))
            .all(|(&s, &wanted)| !wanted || s >= Some(generation));
        if replaced && self.retiring == 0 {
            Some(RollOutcome::Done)
        } else if self.generation > generation {
            Some(RollOutcome::Superseded {
                by: self.generation,
            })
        } else {
            self.closed.then_some(RollOutcome::Closed)
        }
    }

    /// The pool as `/status` shows it, for a pool of `size` with `busy` workers running a job.
    pub(super) fn overview(&self, size: &PoolSize, busy: usize) -> PoolOverview {
        PoolOverview {
            health: self.health(),
            live_workers: self.live(),
            workers: WorkerCounts {
                min: size.min,
                max: size.max,
                max_limited_by: size.limited_by,
                target: self.target(),
                live: self.live(),
                busy,
            },
            failed_starts_in_a_row: self.failed_in_a_row,
            roll: RollStatus {
                generation: self.generation,
                pending_slots: self.pending(),
                failed_starts: self.roll_failures,
                last_error: self.roll_error.clone(),
            },
        }
    }
}

/// Whether the pool can run jobs ([`WorkerPool::health`](super::WorkerPool::health)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PoolHealth {
    /// At least one worker is live.
    Live,
    /// No worker is live and none is wanted: an elastic pool with
    /// [`PoolConfig::workers_min`](super::PoolConfig::workers_min) 0, idle. It can serve: the
    /// next job starts a worker and waits for its hello.
    Standby,
    /// No worker is live (none said hello yet, or all were lost) and starts are under way;
    /// jobs queue up meanwhile.
    Starting,
    /// No worker is live and the last `failed_starts` starts failed: jobs are refused at once
    /// with [`PoolError::Unavailable`] until a start succeeds (the drivers keep trying).
    Unavailable {
        /// Failed starts in a row, all slots together.
        failed_starts: u32,
        /// The error of the latest one.
        last_error: String,
    },
    /// The pool is closed (shutting down): it takes no new jobs.
    Closed,
}

/// The pool as a whole, for `/status` ([`WorkerPool::overview`](super::WorkerPool::overview)).
#[derive(Debug, Clone, Serialize)]
pub struct PoolOverview {
    /// Whether the pool can run jobs.
    pub health: PoolHealth,
    /// Slots with a live worker (as `workers.live`).
    pub live_workers: usize,
    /// The pool's size: its bounds and where it is between them.
    pub workers: WorkerCounts,
    /// Failed starts since the last hello, all slots together: the breaker trips at
    /// `broken_after_failed_starts` with no worker live.
    pub failed_starts_in_a_row: u32,
    /// The latest roll.
    pub roll: RollStatus,
}

/// The pool's size, as `/status` shows it: fixed when `min` equals `max`.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerCounts {
    /// Workers kept even when idle ([`PoolConfig::workers_min`](super::PoolConfig::workers_min)).
    pub min: usize,
    /// The most workers the pool runs: [`PoolConfig::workers`](super::PoolConfig::workers),
    /// capped for an elastic pool by the CPUs this process may use.
    pub max: usize,
    /// What set `max`.
    pub max_limited_by: MaxLimit,
    /// Workers the pool wants now: live, starting, or waiting out a backoff to start.
    pub target: usize,
    /// Workers that said hello and serve.
    pub live: usize,
    /// Workers running a job.
    pub busy: usize,
}

/// The latest roll (generation 0: the pool's start), as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RollStatus {
    /// The current generation: how many rolls were asked for.
    pub generation: u64,
    /// Slots whose worker is older than this generation, or that have none: 0 once the roll
    /// is done.
    pub pending_slots: usize,
    /// Worker starts that failed since this generation began (any slot, any reason).
    pub failed_starts: u64,
    /// The error of the latest of them.
    pub last_error: Option<String>,
}

/// A roll asked for by [`WorkerPool::roll`](super::WorkerPool::roll). Dropping it does not
/// stop the roll; await [`finished`](Roll::finished) to learn how it ended.
pub struct Roll {
    /// The generation this roll brings every slot to.
    generation: u64,
    /// The pool's life, to wait on.
    life: watch::Receiver<Life>,
}

/// How a [`Roll`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollOutcome {
    /// Every slot runs a worker started at or after the roll's generation, and the workers
    /// they replaced have exited.
    Done,
    /// A newer roll (generation `by`) began first; it carries on from where this one was.
    Superseded {
        /// The newer roll's generation.
        by: u64,
    },
    /// The pool closed first.
    Closed,
}

impl Roll {
    /// The generation this roll brings every slot to (1 for the pool's first roll).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Waits until the roll is done, superseded by a newer one, or the pool closed.
    pub async fn finished(mut self) -> RollOutcome {
        let generation = self.generation;
        let ended = self
            .life
            .wait_for(|life| life.outcome(generation).is_some())
            .await;
        ended
            .ok()
            .and_then(|life| life.outcome(generation))
            .unwrap_or(RollOutcome::Closed)
    }
}

impl<J: Job> Inner<J> {
    /// Changes the pool's life, republishes its gauges, and brings the queue in line with its
    /// health, all under the watch's lock: whoever sees the new life finds the queue already
    /// admitting (or refusing) jobs accordingly. Jobs that were waiting when refusal began are
    /// answered once the lock is released.
    pub(super) fn change_life(&self, change: impl FnOnce(&mut Life)) {
        let mut admission = None;
        self.life.send_modify(|life| {
            change(life);
            self.metrics.publish(life);
            admission = Some(self.admit(life.health()));
        });
        if let Some(admission) = admission {
            self.answer_refused(admission);
        }
    }

    /// Starts a new roll: bumps the generation, which every driver watches.
    pub(super) fn roll(&self) -> Roll {
        let mut generation = 0;
        self.change_life(|life| {
            life.generation += 1;
            life.roll_failures = 0;
            life.roll_error = None;
            generation = life.generation;
        });
        tracing::info!(generation, "rolling restart of the workers begins");
        Roll {
            generation,
            life: self.life.subscribe(),
        }
    }

    /// `slot` has a live worker now, started at `generation`: it said hello, which resets the
    /// breaker's count.
    pub(super) fn worker_up(&self, slot: usize, generation: u64) {
        self.change_life(|life| {
            life.slots[slot] = Some(generation);
            life.failed_in_a_row = 0;
        });
    }

    /// `slot` has no live worker any more.
    pub(super) fn worker_gone(&self, slot: usize) {
        self.change_life(|life| life.slots[slot] = None);
    }

    /// A start for `slot` failed: logged, counted, and fed to the breaker. `retry_in` is the
    /// slot's backoff before its next try.
    pub(super) fn start_failed(
        &self,
        slot: usize,
        reason: StartReason,
        error: &SpawnError,
        retry_in: Duration,
    ) {
        let message = error.to_string();
        // Only the pool's thread counts failures, so this is the count once this one is in;
        // logged first, so that the breaker's line (if this trips it) comes after it.
        let failed_in_a_row = self.life.borrow().failed_in_a_row.saturating_add(1);
        tracing::warn!(slot, reason = reason.label(), error = %message, ?retry_in, failed_in_a_row,
            "worker failed to start");
        self.metrics.start_failed(reason);
        self.change_life(|life| {
            life.failed_in_a_row = life.failed_in_a_row.saturating_add(1);
            life.roll_failures += 1;
            life.roll_error = Some(message.clone());
            life.last_error = Some(message);
        });
    }

    /// Makes the queue refuse jobs while the pool is unavailable, and admit them otherwise.
    fn admit(&self, health: PoolHealth) -> Admission<J> {
        let live = health == PoolHealth::Live;
        let refusal = match health {
            PoolHealth::Unavailable {
                failed_starts,
                last_error,
            } => Some((failed_starts, last_error)),
            _ => None,
        };
        let mut queue = self.queue.lock().unwrap();
        Admission {
            was_refusing: queue.unavailable().is_some(),
            live,
            refusal: refusal.clone(),
            refused: queue.set_unavailable(refusal),
        }
    }

    /// Logs a change of admission, and answers the jobs that were waiting when refusal began.
    fn answer_refused(&self, admission: Admission<J>) {
        let Admission {
            was_refusing,
            live,
            refusal,
            refused,
        } = admission;
        match (was_refusing, &refusal) {
            (false, Some((failed_starts, last_error))) => tracing::error!(failed_starts, %last_error,
                "no worker is alive and none can be started: jobs are refused until a start succeeds"),
            (true, None) if live => tracing::info!("a worker started: the pool takes jobs again"),
            _ => {}
        }
        let Some((failed_starts, last_error)) = refusal else {
            return;
        };
        for job in refused {
            self.metrics.job(JobOutcome::Unavailable);
            let last_error = last_error.clone();
            let _ = job.reply.send(Err(PoolError::Unavailable {
                failed_starts,
                last_error,
            }));
        }
    }
}

/// What bringing the queue in line with the pool's health did.
struct Admission<J: Job> {
    /// The queue refused jobs before.
    was_refusing: bool,
    /// A worker is live now.
    live: bool,
    /// Why it refuses them now (failed starts in a row, the latest error), if it does.
    refusal: Option<(u32, String)>,
    /// The jobs that were waiting, taken out of the queue when refusal began.
    refused: Vec<Pending<J>>,
}

/// The one backoff policy of every worker start, whatever it is for (an empty slot after a
/// crash, a deadline kill or a driver panic; recycling; a roll): no wait while starts succeed;
/// after each failure, 100 ms doubling up to 10 s, each delay spread by ±20% at random so that
/// slots failing together do not retry in step.
#[derive(Debug, Default)]
pub(super) struct Backoff {
    /// Failures since the last reset.
    failures: u32,
    /// The wait before the next start: zero until a failure.
    delay: Duration,
}

/// The first delay, before jitter.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// The longest delay, before jitter.
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// Each delay is spread by this fraction either way.
const BACKOFF_JITTER: f64 = 0.2;

impl Backoff {
    /// Records a failure; returns the wait before the next start.
    pub(super) fn fail(&mut self) -> Duration {
        let base = BACKOFF_FIRST * 2u32.saturating_pow(self.failures.min(16));
        let spread = 1.0 + BACKOFF_JITTER * (2.0 * random_unit() - 1.0);
        self.delay = base.min(BACKOFF_CAP).mul_f64(spread);
        self.failures = self.failures.saturating_add(1);
        self.delay
    }

    /// The wait before the next start.
    pub(super) fn delay(&self) -> Duration {
        self.delay
    }

    /// A worker proved itself (or a new roll asks for a fresh try): no wait before the next.
    pub(super) fn reset(&mut self) {
        *self = Backoff::default();
    }
}

/// A number in `[0, 1]`, different at each call; not for anything that needs good randomness.
pub(super) fn random_unit() -> f64 {
    RandomState::new().hash_one(Instant::now()) as f64 / u64::MAX as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_within_twenty_percent() {
        let mut delays = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let mut backoff = Backoff::default();
            assert_eq!(backoff.delay(), Duration::ZERO);
            for n in 0..12 {
                let base = (100u64 << n).min(10_000) as f64;
                let delay = backoff.fail();
                assert_eq!(delay, backoff.delay());
                let ms = delay.as_secs_f64() * 1e3;
                assert!((0.8 * base..=1.2 * base).contains(&ms), "failure {n}: {ms} ms");
                delays.insert(delay);
            }
            backoff.reset();
            assert_eq!(backoff.delay(), Duration::ZERO);
        }
        // Spread, not 12 fixed steps: slots failing together retry apart.
        assert!(delays.len() > 100, "{} distinct delays", delays.len());
    }

    #[test]
    fn a_roll_ends_done_once_every_slot_is_as_new_and_superseded_by_a_newer_one_first() {
        let mut life = Life::new(2, 2, 5);
        life.slots = vec![Some(0), Some(0)];
        life.generation = 1;
        assert_eq!((life.outcome(1), life.pending()), (None, 2));
        life.slots[0] = Some(1);
        assert_eq!((life.outcome(1), life.pending()), (None, 1));
        life.generation = 2;
        assert_eq!(life.outcome(1), Some(RollOutcome::Superseded { by: 2 }));
        life.slots[1] = Some(2);
        life.retiring = 1;
        assert_eq!(life.outcome(1), Some(RollOutcome::Superseded { by: 2 }));
        life.retiring = 0;
        assert_eq!(life.outcome(1), Some(RollOutcome::Done));
        assert_eq!(life.outcome(2), None);
        life.closed = true;
        assert_eq!(life.outcome(2), Some(RollOutcome::Closed));
    }

    #[test]
    fn the_breaker_trips_on_failed_starts_only_with_no_worker_live() {
        let mut life = Life::new(2, 2, 3);
        assert_eq!(life.health(), PoolHealth::Starting);
        life.failed_in_a_row = 3;
        life.last_error = Some("boom".into());
        let unavailable = PoolHealth::Unavailable {
            failed_starts: 3,
            last_error: "boom".into(),
        };
        assert_eq!(life.health(), unavailable);
        life.slots[1] = Some(0);
        assert_eq!(life.health(), PoolHealth::Live);
        life.closed = true;
        assert_eq!(life.health(), PoolHealth::Closed);
    }

    #[test]
    fn an_elastic_pool_grows_to_its_slots_shrinks_to_its_minimum_and_is_standby_at_zero() {
        let mut life = Life::new(3, 0, 5);
        assert_eq!((life.target(), life.health()), (0, PoolHealth::Standby));
        // With room to grow the estimate counts every slot, not the live workers.
        assert_eq!(life.serving(), 3);
        assert_eq!((life.grow(), life.grow(), life.grow(), life.grow()), (Some(0), Some(1), Some(2), None));
        assert_eq!((life.health(), life.serving()), (PoolHealth::Starting, 0));
        life.slots = vec![Some(0); 3];
        life.min = 1;
        assert!(life.shrink(2) && life.shrink(0));
        assert!(!life.shrink(1), "never below the minimum");
        assert!(!life.shrink(2), "a dormant slot has nothing to let go");
        assert_eq!((life.target(), life.live()), (1, 1));
        // A roll waits only for the wanted slots.
        life.generation = 1;
        assert_eq!(life.pending(), 1);
        life.slots[1] = Some(1);
        assert_eq!((life.pending(), life.outcome(1)), (0, Some(RollOutcome::Done)));
    }
}
