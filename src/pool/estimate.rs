//! How long a job would wait for a worker, and how long it would then run: for admission by
//! deadline (a job whose submitter's deadline the prediction already passes is refused at once,
//! [`PoolError::WontFinish`](super::PoolError::WontFinish)) and for the check at dispatch (a
//! job whose deadline has less left than its own run time when a worker would take it is
//! refused then, [`PoolError::TooLate`](super::PoolError::TooLate), instead of being started
//! to be killed).
//!
//! # The model
//! - **Run time, per cost class.** A job's [`Job::cost_hint`](super::Job::cost_hint) (an
//!   estimate proportional to its run time, in any unit) puts it in a class: hints in one half
//!   of a power of two (at most 1.5 apart) share one, so that `/isprime` of 10 digits
//!   (microseconds) and of 3000 digits (a second) are predicted apart. Each class keeps a
//!   moving average of its jobs' run times ([`ALPHA`] the weight of the newest) and of their
//!   deviation from it ([`BETA`]), as TCP estimates a round trip (Jacobson, 1988).
//! - **A class with no sample yet is scaled from the nearest one with a sample** (below or
//!   above, below first at equal distance): its mean and deviation times the ratio of the two
//!   classes' hints (their least hints, [`least_hint`]). So the first 3000-digit job after a
//!   start, after only 10-digit ones have run, is predicted from them at the ratio of their
//!   hints (about 10^4 for `/isprime`), not at a 10-digit job's run time. Class 0 (hint 0: the
//!   type gives none) is never scaled to or from: a type without hints is one class, unknown
//!   until its first run. With no sample anywhere, the job's run time counts as zero.
//! - **A job killed at its deadline is a sample too.** It ran at least that long: when that is
//!   more than its class's mean, it is recorded as a run of that length. Without this, a class
//!   whose every job is killed would never have an estimate and would be admitted forever.
//! - **Wait: the work ahead over the workers.** The work each slot holds (the expected run time
//!   of its running job and of the light ones sent after it, less what has run of it: stored as
//!   the moment it is expected to be free) plus the expected run times of the jobs queued ahead,
//!   divided by the live workers. When run times are as predicted this bounds the job's start
//!   from above: until a worker takes it, every worker is busy with work that was ahead of it.
//! - **What must fit in the deadline.** The wait plus the job's own run time with a margin (the
//!   mean plus [`DEVIATIONS`] deviations): a class whose run times vary is given room for it.
//!   At dispatch the wait is over, and only the margin run time must fit in what is left.
//!
//! Lock-free: a class is one `AtomicU64` (mean and deviation as two `f32`, updated together by
//! compare-and-swap), a slot's expected end one `AtomicU64`. The queued work is summed under the
//! queue's lock, which a submission takes anyway.
//!
//! # Failure modes
//! - **Before any job has finished**, or with no worker live, there is no wait estimate and
//!   every job is admitted, and the first heavy jobs after a start may be admitted and killed.
//! - **A class scaled from another is as good as the hints' ratio.** A hint that grows too
//!   slowly (or a distant class whose run time is mostly fixed overhead, which the ratio
//!   scales too) predicts too short, and the job may be admitted and killed; that kill is the
//!   class's first sample, so it happens once per class. A hint that grows too fast predicts
//!   too long: the class is refused until its probe (below; the first comes [`PROBE_AFTER`]
//!   after the pool's start at most, since a class never sampled counts as sampled then), and
//!   the probe's run replaces the guess. The error grows with the distance between the
//!   classes, so any sample of a nearer class narrows it.
//! - **A job that runs past its estimate** counts as free from then on (its slot's expected end
//!   is past), so the wait is underestimated until it ends: errs towards admitting, and the
//!   check at dispatch is what then keeps a job from starting too late.
//! - **Hints that do not order run times** (two jobs of one class taking 1 ms and 1 s) give a
//!   class a mean between the two and a large deviation: the short ones are refused more than
//!   they need be, the long ones may be admitted and killed. A type without a hint is one class.
//! - **A class that is refused learns nothing new**: if every request of it has a deadline its
//!   estimate refuses, no job of it runs, and a machine that got faster again would refuse it
//!   for ever. So a class whose latest sample is older than [`PROBE_AFTER`] has one job started
//!   against the prediction (a probe), and its run (or its kill at the deadline) refreshes the
//!   estimate: at most one job per class per [`PROBE_AFTER`] is started to be killed this way.
//! - **The machine's load changes run times** (workers at `SCHED_IDLE` on a busy host): the
//!   averages follow within about ten jobs of a class; a job started just as the machine gets
//!   busier may still be killed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Weight of the newest run time in a class's mean: about the last ten jobs count.
const ALPHA: f32 = 0.2;
/// Weight of the newest deviation from the mean in a class's mean deviation.
const BETA: f32 = 0.25;
/// How many mean deviations above the mean a job's own run time is taken to be, where it must
/// fit in a deadline: room for the spread of its class.
const DEVIATIONS: f32 = 2.0;
/// A class with no sample for this long has one job admitted against the prediction, to learn
/// whether its run time has changed (see the failure modes above).
const PROBE_AFTER: Duration = Duration::from_secs(30);
/// Cost classes: two per bit of a `u64` hint, and 0 and 1 (see [`class_of`]).
const CLASSES: usize = 128;

/// The cost class of a job whose [`Job::cost_hint`](super::Job::cost_hint) is `hint`: half
/// powers of two, so that hints of one class are within a factor of 1.5 of each other.
pub(super) fn class_of(hint: u64) -> usize {
    if hint < 2 {
        return hint as usize;
    }
    let top = 63 - hint.leading_zeros() as usize;
    let half = (hint >> (top - 1)) & 1;
    2 * top + half as usize
}

/// The least hint of cost class `class` (the inverse of [`class_of`] on class bounds): what
/// stands for the class's hints when an estimate is scaled from one class to another. Within a
/// class hints differ by less than 1.5, so a scaled estimate is off by that much at most, on
/// top of the hint's own error.
fn least_hint(class: usize) -> u64 {
    if class < 2 {
        return class as u64;
    }
    let (top, half) = (class / 2, (class % 2) as u64);
    (2 + half) << (top - 1)
}

/// A class's run-time estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct RunTime {
    /// Mean run time, seconds.
    mean: f32,
    /// Mean deviation from the mean, seconds.
    deviation: f32,
}

impl RunTime {
    /// The mean run time.
    pub(super) fn mean(self) -> Duration {
        seconds(self.mean)
    }

    /// The run time a deadline must leave room for: the mean plus [`DEVIATIONS`] deviations.
    pub(super) fn with_margin(self) -> Duration {
        seconds(self.mean + DEVIATIONS * self.deviation)
    }

    /// This estimate for a job `ratio` times as costly: mean and deviation alike.
    fn scaled(self, ratio: f32) -> RunTime {
        RunTime {
            mean: self.mean * ratio,
            deviation: self.deviation * ratio,
        }
    }

    /// After a run of `sample` seconds (Jacobson's update: the deviation moves towards the new
    /// error first, with the old mean).
    fn after(previous: Option<RunTime>, sample: f32) -> RunTime {
        match previous {
            Some(RunTime { mean, deviation }) => RunTime {
                deviation: deviation + BETA * ((sample - mean).abs() - deviation),
                mean: mean + ALPHA * (sample - mean),
            },
            None => RunTime {
                mean: sample,
                deviation: sample / 2.0,
            },
        }
    }

    fn to_bits(self) -> u64 {
        (u64::from(self.mean.to_bits()) << 32) | u64::from(self.deviation.to_bits())
    }

    /// `None` for 0, which no recorded run time is (its mean is above zero, see `record`).
    fn from_bits(bits: u64) -> Option<RunTime> {
        (bits != 0).then(|| RunTime {
            mean: f32::from_bits((bits >> 32) as u32),
            deviation: f32::from_bits(bits as u32),
        })
    }
}

/// A non-negative, finite number of seconds as a duration (saturating).
fn seconds(s: f32) -> Duration {
    Duration::try_from_secs_f32(s.max(0.0)).unwrap_or(Duration::MAX)
}

/// What a run says about its job's run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sample {
    /// The job finished (answered, even with an error): it took this long.
    Finished(Duration),
    /// The job was killed at its deadline: it would have taken at least this long.
    AtLeast(Duration),
}

/// Run times per class and the work each slot holds; shared by every driver (lock-free).
#[derive(Debug)]
pub(super) struct Estimator {
    /// Slots' expected ends are stored as nanoseconds since this.
    epoch: Instant,
    /// Per class, a [`RunTime`] as bits; 0 until the class's first sample.
    classes: Box<[AtomicU64]>,
    /// Per class, when it last had a sample or a probe (nanoseconds since `epoch`).
    sampled_at: Box<[AtomicU64]>,
    /// Per slot, when the work it holds is expected to be done (nanoseconds since `epoch`);
    /// 0 when it holds none.
    free_at: Box<[AtomicU64]>,
}

impl Estimator {
    /// An estimator for a pool of `slots` slots, with no sample yet.
    pub(super) fn new(slots: usize) -> Estimator {
        Estimator {
            epoch: Instant::now(),
            classes: (0..CLASSES).map(|_| AtomicU64::new(0)).collect(),
            sampled_at: (0..CLASSES).map(|_| AtomicU64::new(0)).collect(),
            free_at: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Folds what a run of a job of `class` says into that class's estimate.
    pub(super) fn record(&self, class: usize, sample: Sample) {
        let Some(cell) = self.classes.get(class) else {
            return;
        };
        self.sampled_at[class].store(self.nanos(Instant::now()), Ordering::Relaxed);
        // A run of zero would read back as "no sample": a nanosecond is as good.
        let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            let previous = RunTime::from_bits(bits);
            let seconds = match sample {
                Sample::Finished(run) => run.as_secs_f32().max(1e-9),
                Sample::AtLeast(run) => match previous {
                    Some(p) if p.mean >= run.as_secs_f32() => return None,
                    _ => run.as_secs_f32().max(1e-9),
                },
            };
            Some(RunTime::after(previous, seconds).to_bits())
        });
    }

    /// Whether a job of `class` that the prediction refuses is to run anyway, as the class's
    /// probe: its latest sample (or probe) is older than [`PROBE_AFTER`]. True for one caller
    /// per period.
    pub(super) fn probe(&self, class: usize) -> bool {
        let Some(cell) = self.sampled_at.get(class) else {
            return false;
        };
        let now = self.nanos(Instant::now());
        let last = cell.load(Ordering::Relaxed);
        let stale = now.saturating_sub(last) >= PROBE_AFTER.as_nanos() as u64;
        stale
            && cell
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// The estimate for a job of `class`: its class's; else, for a class with a hint, the
    /// nearest class with a sample (below or above, below first at equal distance; never class
    /// 0, which has no hint) scaled by the ratio of their hints; else `None`.
    pub(super) fn run_time(&self, class: usize) -> Option<RunTime> {
        let class = class.min(CLASSES - 1);
        let read = |c: usize| RunTime::from_bits(self.classes[c].load(Ordering::Relaxed));
        if let Some(own) = read(class) {
            return Some(own);
        }
        if class == 0 {
            return None;
        }
        let scaled = |seen: usize| {
            let ratio = least_hint(class) as f32 / least_hint(seen) as f32;
            read(seen).map(|run| run.scaled(ratio))
        };
        (1..CLASSES).find_map(|distance| {
            let below = class.checked_sub(distance).filter(|&c| c > 0);
            let above = Some(class + distance).filter(|&c| c < CLASSES);
            below.and_then(scaled).or_else(|| above.and_then(scaled))
        })
    }

    /// The mean run time of a job of `class`, zero when unknown: what it adds to the queue.
    pub(super) fn expected_run(&self, class: usize) -> Duration {
        self.run_time(class).map_or(Duration::ZERO, RunTime::mean)
    }

    /// Slot `slot` now holds `work` (the expected run times of its jobs, summed): it is
    /// expected to be free that long from now. Zero when it holds nothing.
    pub(super) fn holds(&self, slot: usize, work: Duration) {
        let at = match work.is_zero() {
            true => 0,
            false => self.nanos(Instant::now() + work).max(1),
        };
        self.free_at[slot].store(at, Ordering::Relaxed);
    }

    /// The work the slots still hold at `now`: each one's expected end less `now`, where it is
    /// later.
    fn in_hand(&self, now: Instant) -> Duration {
        let now = self.nanos(now);
        let left: u64 = self
            .free_at
            .iter()
            .map(|at| at.load(Ordering::Relaxed).saturating_sub(now))
            .sum();
        Duration::from_nanos(left)
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The prediction for a job of `class` with `ahead` jobs queued before it, whose expected
    /// run times add up to `queued`, and `live` workers; `None` without a live worker or before
    /// any job has run (every slot free and nothing known: nothing to predict from).
    pub(super) fn wait(
        &self,
        class: usize,
        queued: Duration,
        ahead: usize,
        live: usize,
    ) -> Option<Wait> {
        let live_u32 = u32::try_from(live).ok().filter(|&n| n > 0)?;
        let own = self.run_time(class);
        let known = own.is_some() || self.classes.iter().any(|c| c.load(Ordering::Relaxed) != 0);
        if !known {
            return None;
        }
        let work = self.in_hand(Instant::now()).saturating_add(queued);
        Some(Wait {
            expected: work / live_u32,
            run: own.map_or(Duration::ZERO, RunTime::with_margin),
            ahead,
            live,
        })
    }
}

/// What the estimate says about a job submitted now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Wait {
    /// The expected wait before a worker takes the job.
    pub expected: Duration,
    /// The job's own run time as the deadline must leave room for it: its class's mean plus
    /// two mean deviations (scaled from the nearest class with a sample while its own has
    /// none); zero while no class with a hint has one.
    pub run: Duration,
    /// Jobs queued ahead.
    pub ahead: usize,
    /// Live workers.
    pub live: usize,
}

impl Wait {
    /// The time from submission to the job's expected end (saturating).
    pub fn total(&self) -> Duration {
        self.expected.saturating_add(self.run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn close(a: Duration, b: Duration) -> bool {
        a.abs_diff(b) < Duration::from_micros(100)
    }

    #[test]
    fn classes_are_half_powers_of_two() {
        let table = [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 4), (6, 5), (7, 5), (8, 6)];
        for (hint, class) in table {
            assert_eq!(class_of(hint), class, "{hint}");
        }
        assert_eq!(class_of(u64::MAX), CLASSES - 1);
        // /isprime: 10 digits and 2917 digits are far apart; 2900 and 2917 together.
        assert_ne!(class_of(10), class_of(2917));
        assert_eq!(class_of(2900), class_of(2917));
    }

    #[test]
    fn a_class_averages_its_own_runs() {
        let estimate = Estimator::new(1);
        let (light, heavy) = (class_of(10), class_of(3000));
        assert_eq!(estimate.run_time(heavy), None);
        estimate.record(light, Sample::Finished(ms(1)));
        estimate.record(heavy, Sample::Finished(ms(1000)));
        estimate.record(heavy, Sample::Finished(ms(0)));
        // 1000 + 0.2 x (0 - 1000) = 800; the light class is untouched.
        assert!(close(estimate.expected_run(heavy), ms(800)));
        assert!(close(estimate.expected_run(light), ms(1)));
        // Deviation: 500 at first, then 500 + 0.25 x (1000 - 500) = 625; margin 800 + 1250.
        let margin = estimate.run_time(heavy).unwrap().with_margin();
        assert!(close(margin, ms(2050)), "{margin:?}");
    }

    #[test]
    fn least_hints_are_the_bounds_of_the_classes() {
        for class in 1..CLASSES {
            let least = least_hint(class);
            assert_eq!(class_of(least), class, "{least}");
            assert_eq!(class_of(least - 1), class - 1, "{least}");
        }
    }

    #[test]
    fn an_unseen_class_is_scaled_from_the_nearest_seen_one_by_the_ratio_of_hints() {
        let estimate = Estimator::new(1);
        // Hints 2^10 and 2^20: 1024 times as costly.
        let (light, heavy) = (class_of(1 << 10), class_of(1 << 20));
        estimate.record(light, Sample::Finished(ms(1)));
        let run = estimate.run_time(heavy).unwrap();
        assert!(close(run.mean(), ms(1024)), "{run:?}");
        // The light class's deviation (half its first sample) is scaled alike: 1024 + 2 x 512.
        assert!(close(run.with_margin(), ms(2048)), "{run:?}");
        // From above too, and the nearest seen class wins: 2^15 at 32 ms is nearer to 2^17
        // than 2^10 is.
        estimate.record(class_of(1 << 15), Sample::Finished(ms(32)));
        assert!(close(estimate.expected_run(class_of(1 << 12)), ms(4)), "8 x 1 ms, below");
        assert!(close(estimate.expected_run(class_of(1 << 14)), ms(16)), "32 ms / 2, above");
        assert!(close(estimate.expected_run(class_of(1 << 17)), ms(128)), "32 ms x 4");
        // A class's own sample replaces the scaled guess.
        estimate.record(heavy, Sample::Finished(ms(300)));
        assert!(close(estimate.expected_run(heavy), ms(300)));
    }

    #[test]
    fn a_type_without_hints_is_one_class_never_scaled() {
        let estimate = Estimator::new(1);
        estimate.record(0, Sample::Finished(ms(5)));
        assert_eq!(estimate.run_time(1), None, "not from class 0");
        assert!(close(estimate.expected_run(0), ms(5)));
        let estimate = Estimator::new(1);
        estimate.record(class_of(100), Sample::Finished(ms(5)));
        assert_eq!(estimate.run_time(0), None, "nor to it");
    }

    #[test]
    fn a_kill_at_the_deadline_raises_a_mean_below_it_and_nothing_else() {
        let estimate = Estimator::new(1);
        estimate.record(5, Sample::AtLeast(ms(300)));
        assert!(close(estimate.expected_run(5), ms(300)), "a first sample");
        estimate.record(5, Sample::AtLeast(ms(100)));
        assert!(close(estimate.expected_run(5), ms(300)), "below the mean: no news");
        estimate.record(5, Sample::AtLeast(ms(1300)));
        assert!(close(estimate.expected_run(5), ms(500)), "300 + 0.2 x 1000");
    }

    #[test]
    fn a_class_without_a_sample_for_the_probe_period_gets_one_probe() {
        let estimate = Estimator::new(1);
        estimate.record(7, Sample::Finished(ms(10)));
        assert!(!estimate.probe(7), "just sampled");
        // `probe` reads the clock itself: the epoch moved a period back makes the sample a
        // period old, instead of waiting 30 s.
        let epoch = estimate.epoch.checked_sub(PROBE_AFTER).expect("a monotonic clock 30 s on");
        let estimate = Estimator { epoch, ..estimate };
        assert!(estimate.probe(7), "one probe");
        assert!(!estimate.probe(7), "and only one per period");
        assert!(estimate.probe(9), "another class has its own");
    }

    #[test]
    fn the_wait_is_the_work_in_hand_and_queued_over_the_live_workers() {
        let estimate = Estimator::new(2);
        assert_eq!(estimate.wait(3, ms(0), 0, 2), None, "nothing known yet");
        estimate.record(3, Sample::Finished(ms(100)));
        estimate.holds(0, ms(1000));
        estimate.holds(1, ms(600));
        let wait = estimate.wait(3, ms(400), 4, 2).unwrap();
        // (1000 + 600 + 400) / 2 = 1000, less the microseconds since `holds`.
        assert!(wait.expected <= ms(1000) && wait.expected > ms(990), "{wait:?}");
        assert!(close(wait.run, ms(200)), "100 + 2 x 50: {wait:?}");
        assert_eq!((wait.ahead, wait.live), (4, 2));
        estimate.holds(0, Duration::ZERO);
        estimate.holds(1, Duration::ZERO);
        let idle = estimate.wait(3, Duration::ZERO, 0, 2).unwrap();
        assert_eq!(idle.expected, Duration::ZERO);
        assert_eq!(estimate.wait(3, ms(400), 4, 0), None, "no live worker");
        let huge = estimate.wait(3, Duration::MAX, usize::MAX, 1).unwrap();
        assert_eq!(huge.expected, Duration::MAX, "saturates, never panics");
    }
}
