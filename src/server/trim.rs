//! Gives the memory of a burst back to the kernel once the burst is over.
//!
//! Why: glibc's malloc keeps what a burst freed. The runtime's threads each allocate from an
//! arena of their own, and freed chunks in the middle of an arena (connection buffers, request
//! and response bodies) are never returned; only the top of the main heap is trimmed on `free`.
//! Measured (issue 24, and README, Performance): the server held 5 MiB idle, 10–20 MB after a
//! 5 s burst of 64 connections, and as much 5 s (and, per the issue, 20 s) later.
//!
//! What: every [`TICK`] the server's CPU time is read (`CLOCK_PROCESS_CPUTIME_ID`, one
//! syscall). Once it has used at least [`BUSY`] of CPU since the last trim and
//! then less than [`QUIET`] in one tick, the burst is over: the histogram samples the burst
//! recorded are folded into their buckets first (the exporter keeps each sample until an
//! upkeep, otherwise every 5 s, and a trim before it would leave their pages behind: 0.35 MiB
//! after a 5 s burst here), then `malloc_trim(0)` returns every free page of every arena
//! (`MADV_DONTNEED` inside free chunks, the heap tops shrunk). So one
//! trim follows each burst, one or two ticks after it ends; none runs during a burst, where it
//! would cost page faults on the next allocations, and none while idle.
//!
//! What stays: the pages that hold live objects. After a 5 s burst of 64 connections each
//! runtime arena held about 250 KiB in use spread over 1.3 MiB of pages (malloc_info: a few
//! hundred free chunks of 6 KiB on average between them), which no trim can return.
//!
//! Guarantees: nothing is freed that is in use (malloc_trim only releases free chunks); the
//! trim runs on a runtime thread and takes every arena's lock in turn, once per burst and only
//! after it (its own duration was not measured separately).
//!
//! Failure modes: none that reach a request. A failed clock read skips the tick. Under a
//! steady load that never goes quiet nothing is trimmed (the memory is then in use, at its
//! steady-state size). `malloc_trim` is glibc's: forkpool is built against glibc (Cargo.toml,
//! `cargo dist`), and against another libc this module would not compile.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::telemetry;

/// How often the CPU clock is read.
const TICK: Duration = Duration::from_secs(1);

/// CPU time since the last trim that counts as a burst worth trimming after (a few thousand
/// requests; less leaves too little behind to be worth a trim).
const BUSY: Duration = Duration::from_millis(200);

/// CPU time in one tick below which the server counts as quiet (2% of a core).
const QUIET: Duration = Duration::from_millis(20);

/// The trimming loop; runs for the life of the server, `metrics` being its recorder.
pub(super) async fn give_back_after_bursts(metrics: PrometheusHandle) {
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut burst = Burst::default();
    loop {
        every.tick().await;
        let Some(now) = process_cpu_time() else {
            continue;
        };
        if burst.tick(now) {
            telemetry::fold_histograms(&metrics);
            // SAFETY: malloc_trim only takes the allocator's own locks and releases free
            // pages; it is safe to call from any thread at any time.
            let released = unsafe { libc::malloc_trim(0) } == 1;
            tracing::debug!(released, "burst over: free heap memory returned to the kernel");
        }
    }
}

/// The decision of when a burst is over, apart from the clock and the allocator.
#[derive(Debug, Default)]
struct Burst {
    /// CPU time at the last tick.
    last: Duration,
    /// CPU time used since the last trim (or the start).
    since_trim: Duration,
}

impl Burst {
    /// Takes the process CPU time `now` at a tick; true when a trim is due.
    fn tick(&mut self, now: Duration) -> bool {
        let used = now.saturating_sub(self.last);
        self.last = now;
        self.since_trim += used;
        let due = self.since_trim >= BUSY && used < QUIET;
        if due {
            self.since_trim = Duration::ZERO;
        }
        due
    }
}

/// This process's CPU time, all threads, or `None` if the clock cannot be read.
fn process_cpu_time() -> Option<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec that outlives the call.
    let done = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    (done == 0).then(|| Duration::new(now.tv_sec as u64, now.tv_nsec as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn one_trim_follows_a_burst_once_it_is_quiet() {
        let mut burst = Burst::default();
        // A busy second, another, then quiet: one trim, at the first quiet tick.
        assert!(!burst.tick(ms(900)));
        assert!(!burst.tick(ms(1800)));
        assert!(burst.tick(ms(1805)));
        // Quiet goes on: nothing more to give back.
        assert!(!burst.tick(ms(1810)));
        assert!(!burst.tick(ms(1815)));
    }

    #[test]
    fn light_steady_work_adds_up_to_a_trim_and_idle_does_not() {
        let mut burst = Burst::default();
        let mut now = Duration::ZERO;
        for _ in 0..100 {
            now += ms(1);
            assert!(!burst.tick(now), "idle ticks never trim");
        }
        // 15 ms per tick is quiet; once 200 ms have added up since the last trim, one trim.
        let trims = (0..20)
            .filter(|_| {
                now += ms(15);
                burst.tick(now)
            })
            .count();
        assert_eq!(trims, 1);
    }
}
