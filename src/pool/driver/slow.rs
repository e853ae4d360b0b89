//! The slow-job watch: a job still running at the pool's slow-job threshold is reported once
//! (counted, and logged at `warn` with what its worker is doing, from `/proc`) while the
//! driver goes on waiting for it; it runs on to its deadline.
//!
//! Failure modes: a worker whose `/proc` cannot be read (it just exited, or `/proc` is not
//! mounted) is still reported, without its activity; the watch never kills or delays a job.

use std::time::{Duration, Instant};

use metrics::Counter;

use super::super::inspect::Activity;

/// The slow-job log's watch on the job running now.
pub(super) struct SlowWatch<'a> {
    /// The slot it runs in.
    pub(super) slot: usize,
    /// When it started on its worker.
    pub(super) started: Instant,
    /// How long it may run before it is slow.
    pub(super) after: Duration,
    /// `<prefix>_slow_jobs_total`.
    pub(super) counter: &'a Counter,
}

impl SlowWatch<'_> {
    /// Counts the job and logs it at `warn`, with what its worker is doing now.
    pub(super) fn report(&self, pid: u32, job: u64, tag: &str, enqueued: Instant) {
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
