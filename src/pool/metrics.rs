//! The pool's metrics, named `<prefix>_...` after [`PoolConfig::metrics_prefix`]
//! (`forkpool` in the server), recorded through the `metrics` facade: with no recorder
//! installed they cost next to nothing and go nowhere.
//!
//! | name | type | labels |
//! | --- | --- | --- |
//! | `<prefix>_job_queue_wait_seconds` | histogram | |
//! | `<prefix>_job_run_seconds` | histogram | |
//! | `<prefix>_jobs_total` | counter | `outcome` ([`JobOutcome::label`]) |
//! | `<prefix>_worker_exits_total` | counter | `reason`, and `cause` or `signal` or `code` ([`WorkerExit::labels`]) |
//! | `<prefix>_worker_spawns_total` | counter | |
//! | `<prefix>_worker_starts_total` | counter | `reason` ([`StartReason::label`]) |
//! | `<prefix>_worker_start_failures_total` | counter | `reason` ([`StartReason::label`]) |
//! | `<prefix>_worker_starts_failed_in_a_row` | gauge | |
//! | `<prefix>_pool_unavailable` | gauge | |
//! | `<prefix>_roll_generation` | gauge | |
//! | `<prefix>_roll_pending_slots` | gauge | |
//! | `<prefix>_driver_panics_total` | counter | |
//! | `<prefix>_slow_jobs_total` | counter | |
//!
//! The gauges follow the pool's life (see `health`): failed starts since the last hello, all
//! slots together; 1 while the breaker refuses jobs, else 0; the current roll generation; and
//! the slots not yet on a worker of that generation (0 once a roll is done).
//!
//! A worker exit's `reason` is `recycled` for every make-before-break replacement, with what
//! the worker retired for as `cause` (`jobs`, `rss`, `roll`); a crash is `crashed` with its
//! `signal` or `code`, but for the two ends that have a reason of their own: `out_of_memory`
//! (an allocation failed under the worker's address-space limit) and `oom_killed` (the
//! kernel's OOM killer, see `oom`). The others: `killed_timeout` (the deadline),
//! `killed_cancel`, `protocol`, `driver_panic`, and `idle` (an elastic pool's worker retired
//! after its idle timeout). A start is counted once it said hello, by what it was for
//! (`empty_slot`, `grow`, and a replacement's `recycle`, `rss` or `roll`). A slow job (see
//! [`PoolConfig::job_slow`](super::PoolConfig::job_slow)) is counted once, when it is logged.
//!
//! A job's run time is counted from the previous answer of its worker (or from its hand-over)
//! to its own answer. Light jobs handed over together are answered in one write, so the
//! batch's time falls on its first job and the others count about zero.
//!
//! [`PoolConfig::metrics_prefix`]: super::PoolConfig::metrics_prefix

use metrics::{Counter, Gauge, Histogram, SharedString};

use super::health::{Life, PoolHealth};
use super::lifecycle::{JobOutcome, StartReason, WorkerExit};

/// Names and handles, built once per pool. Built after the embedding program installs its
/// recorder, or the handles are no-ops.
pub(super) struct Metrics {
    /// `<prefix>_jobs_total`, for the outcomes that are registered on first use.
    jobs_total: SharedString,
    /// `<prefix>_worker_exits_total`.
    worker_exits_total: SharedString,
    /// `<prefix>_worker_start_failures_total`.
    start_failures_total: SharedString,
    /// `<prefix>_worker_starts_total`.
    starts_total: SharedString,
    /// Failed starts since the last hello, all slots together.
    failed_in_a_row: Gauge,
    /// 1 while no worker can be started and jobs are refused.
    unavailable: Gauge,
    /// The current roll generation.
    roll_generation: Gauge,
    /// Slots not yet on a worker of the current generation.
    roll_pending: Gauge,
    /// Time from submit to a driver taking the job.
    pub(super) queue_wait: Histogram,
    /// Time a job spent with its worker.
    pub(super) run_time: Histogram,
    /// The `ok` outcome, held as a handle: it is counted on every job, and a registry lookup
    /// per job shows in the dispatch rate.
    jobs_ok: Counter,
    /// Workers started (hello received).
    pub(super) spawns: Counter,
    /// Drivers that panicked and were restarted.
    pub(super) driver_panics: Counter,
    /// Jobs still running after `PoolConfig::job_slow`, logged.
    pub(super) slow_jobs: Counter,
}

impl Metrics {
    /// Registers the handles and describes every family (`# HELP`).
    pub(super) fn new(prefix: &str) -> Metrics {
        let name = |suffix: &str| SharedString::from_owned(format!("{prefix}_{suffix}"));
        let queue_wait = name("job_queue_wait_seconds");
        let run_time = name("job_run_seconds");
        let jobs_total = name("jobs_total");
        let worker_exits_total = name("worker_exits_total");
        let spawns = name("worker_spawns_total");
        let driver_panics = name("driver_panics_total");
        let start_failures_total = name("worker_start_failures_total");
        let starts_total = name("worker_starts_total");
        let failed_in_a_row = name("worker_starts_failed_in_a_row");
        let unavailable = name("pool_unavailable");
        let roll_generation = name("roll_generation");
        let roll_pending = name("roll_pending_slots");
        let slow_jobs = name("slow_jobs_total");
        metrics::describe_histogram!(queue_wait.clone(), "Time a job waited in the queue");
        metrics::describe_histogram!(run_time.clone(), "Time a job ran on a worker");
        metrics::describe_counter!(jobs_total.clone(), "Jobs by outcome");
        metrics::describe_counter!(
            worker_exits_total.clone(),
            "Worker exits by reason (recycled with its cause: jobs, rss or roll; crashed with its \
             signal or code; out_of_memory, oom_killed, killed_timeout, killed_cancel, protocol, \
             driver_panic, idle)"
        );
        metrics::describe_counter!(
            slow_jobs.clone(),
            "Jobs still running at the slow-job threshold, logged with what their worker was doing"
        );
        metrics::describe_counter!(spawns.clone(), "Worker processes started");
        metrics::describe_counter!(
            starts_total.clone(),
            "Worker processes started, by what for (empty_slot, grow, recycle, rss, roll)"
        );
        metrics::describe_counter!(
            driver_panics.clone(),
            "Slot drivers that panicked and were restarted (a bug)"
        );
        metrics::describe_counter!(
            start_failures_total.clone(),
            "Worker starts that failed (no hello), by what the worker was started for"
        );
        metrics::describe_gauge!(
            failed_in_a_row.clone(),
            "Worker starts failed since the last successful one, all slots together"
        );
        metrics::describe_gauge!(
            unavailable.clone(),
            "1 while no worker is alive and none can be started, so jobs are refused"
        );
        metrics::describe_gauge!(
            roll_generation.clone(),
            "Rolling restarts asked for since the pool started"
        );
        metrics::describe_gauge!(
            roll_pending.clone(),
            "Worker slots not yet running a worker of the latest rolling restart"
        );
        Metrics {
            queue_wait: metrics::histogram!(queue_wait),
            run_time: metrics::histogram!(run_time),
            jobs_ok: metrics::counter!(jobs_total.clone(), "outcome" => JobOutcome::Ok.label()),
            spawns: metrics::counter!(spawns),
            driver_panics: metrics::counter!(driver_panics),
            slow_jobs: metrics::counter!(slow_jobs),
            failed_in_a_row: metrics::gauge!(failed_in_a_row),
            unavailable: metrics::gauge!(unavailable),
            roll_generation: metrics::gauge!(roll_generation),
            roll_pending: metrics::gauge!(roll_pending),
            jobs_total,
            worker_exits_total,
            start_failures_total,
            starts_total,
        }
    }

    /// Sets the gauges that follow the pool's life.
    pub(super) fn publish(&self, life: &Life) {
        self.failed_in_a_row.set(life.failed_in_a_row as f64);
        let unavailable = matches!(life.health(), PoolHealth::Unavailable { .. });
        self.unavailable.set(if unavailable { 1.0 } else { 0.0 });
        self.roll_generation.set(life.generation as f64);
        self.roll_pending.set(life.pending() as f64);
    }

    /// The counter of starts for `reason`, incremented once the worker said hello.
    pub(super) fn starts(&self, reason: StartReason) -> Counter {
        metrics::counter!(self.starts_total.clone(), "reason" => reason.label())
    }

    pub(super) fn start_failed(&self, reason: StartReason) {
        metrics::counter!(self.start_failures_total.clone(), "reason" => reason.label())
            .increment(1);
    }

    pub(super) fn job(&self, outcome: JobOutcome) {
        match outcome {
            JobOutcome::Ok => self.jobs_ok.increment(1),
            _ => metrics::counter!(self.jobs_total.clone(), "outcome" => outcome.label())
                .increment(1),
        }
    }

    pub(super) fn worker_exit(&self, exit: WorkerExit) {
        metrics::counter!(self.worker_exits_total.clone(), &exit.labels()).increment(1);
    }
}
