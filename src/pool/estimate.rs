//! How long a new job would wait in the queue, for admission by deadline: a job whose
//! submitter's deadline the expected wait already passes is refused at once
//! ([`PoolError::WontFinish`](super::PoolError::WontFinish)) instead of being queued to time
//! out.
//!
//! The estimate is deliberately simple, and errs on the side of admitting: the mean run time
//! of recent jobs (an exponential moving average, [`ALPHA`] the weight of the newest) times the
//! jobs waiting ahead, divided by the live workers. The time left of the jobs running now is
//! not counted, nor is the job's own run time: a job is refused only when the jobs queued
//! before it alone would, on average, outlast its deadline. Before any job has finished, or
//! while no worker is live, there is no estimate and every job is admitted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Weight of the newest run time in the moving average: about the last ten jobs count.
const ALPHA: f64 = 0.2;

/// The moving average of recent jobs' run times, shared by every driver (lock-free).
#[derive(Debug, Default)]
pub(super) struct RunTimes {
    /// The mean in seconds, as `f64` bits; 0 (no bits set) until the first job is recorded.
    mean_bits: AtomicU64,
}

impl RunTimes {
    /// Folds one job's run time into the average.
    pub(super) fn record(&self, run: Duration) {
        let sample = run.as_secs_f64();
        let _ = self
            .mean_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some(moving_average(mean_of(bits), sample).to_bits())
            });
    }

    /// The average so far; `None` before the first job.
    pub(super) fn mean(&self) -> Option<Duration> {
        mean_of(self.mean_bits.load(Ordering::Relaxed)).map(Duration::from_secs_f64)
    }
}

/// The mean stored as `bits`, if any.
fn mean_of(bits: u64) -> Option<f64> {
    (bits != 0).then(|| f64::from_bits(bits))
}

/// The average after `sample`: the sample itself when it is the first.
fn moving_average(previous: Option<f64>, sample: f64) -> f64 {
    match previous {
        Some(mean) => mean + ALPHA * (sample - mean),
        None => sample,
    }
}

/// What the estimate says about a job submitted now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Wait {
    /// The expected wait before a worker takes the job.
    pub expected: Duration,
    /// The mean run time it was computed from.
    pub mean_run: Duration,
    /// Jobs queued ahead.
    pub ahead: usize,
    /// Live workers.
    pub live: usize,
}

/// The expected wait of a job with `ahead` jobs queued before it and `live` workers, each
/// job taking `mean_run` on average; `None` without a live worker.
pub(super) fn expected_wait(mean_run: Duration, ahead: usize, live: usize) -> Option<Wait> {
    if live == 0 {
        return None;
    }
    let jobs = u32::try_from(ahead).unwrap_or(u32::MAX);
    let live_u32 = u32::try_from(live).unwrap_or(u32::MAX);
    Some(Wait {
        expected: mean_run.saturating_mul(jobs) / live_u32,
        mean_run,
        ahead,
        live,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_average_starts_at_the_first_sample_and_moves_by_alpha() {
        let times = RunTimes::default();
        assert_eq!(times.mean(), None);
        times.record(ms(1000));
        assert_eq!(times.mean(), Some(ms(1000)));
        times.record(ms(0));
        let mean = times.mean().unwrap().as_secs_f64();
        assert!((mean - 0.8).abs() < 1e-9, "{mean}");
        // Ten fast jobs after a slow one: the slow one's weight is down to 0.8^10, about 11%.
        for _ in 0..10 {
            times.record(ms(10));
        }
        let mean = times.mean().unwrap();
        assert!(mean > ms(10) && mean < ms(110), "{mean:?}");
    }

    #[test]
    fn the_wait_is_the_jobs_ahead_times_the_mean_over_the_live_workers() {
        let table = [
            // (mean, ahead, live, expected)
            (ms(1000), 0, 1, Some(ms(0))),
            (ms(1000), 2, 1, Some(ms(2000))),
            (ms(1000), 3, 2, Some(ms(1500))),
            (ms(10), 100, 4, Some(ms(250))),
            (ms(1000), 5, 0, None),
        ];
        for (mean, ahead, live, expected) in table {
            let wait = expected_wait(mean, ahead, live).map(|w| w.expected);
            assert_eq!(wait, expected, "{mean:?} x {ahead} / {live}");
        }
        let huge = expected_wait(Duration::MAX, usize::MAX, 1).unwrap();
        assert_eq!(huge.expected, Duration::MAX, "saturates, never panics");
    }
}
