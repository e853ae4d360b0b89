//! The bounded FIFO queue in front of the drivers, and how a job leaves it early: its
//! submitter went away or its deadline passed (both seen by the dropped reply channel), or, for
//! a submitter with a deadline of its own, too little of it is left for the job's run time
//! when a driver would take it (refused then, see `estimate`, rather than started to be
//! killed). A job taken by a driver has been checked for all three at that moment, so no job
//! whose submitter has gone is ever started.
//!
//! The queue is a `VecDeque` behind a mutex, held only for a push or a pop: a driver wakes
//! (the idle one of the lowest slot, see `wakers`) and takes the front job itself, together
//! with the light jobs right behind it when it is light (see [`Weight`]). A driver never
//! takes more than its fair share of what waits (the queue split evenly between the slots),
//! so that a burst is spread over the workers instead of lining up in one.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::estimate::{RunTime, Sample, Wait};
use super::lifecycle::JobOutcome;
use super::protocol::Weight;
use super::{Answer, Inner, Job, PoolError};

/// A job waiting in the queue, with everything the driver needs to run and answer it.
pub(super) struct Pending<J: Job> {
    /// The pool's number for it.
    pub(super) id: u64,
    /// The submitter's opaque tag.
    pub(super) tag: String,
    pub(super) job: J,
    /// `submit` time plus the job timeout.
    pub(super) deadline: Instant,
    /// When it was queued, for the queue-wait histogram.
    pub(super) enqueued: Instant,
    /// Where the answer goes; closed once the submitter stops waiting.
    pub(super) reply: oneshot::Sender<Answer<J>>,
    /// [`Job::weight`], asked once in `submit`: outside the queue's lock, so that a
    /// panicking `weight` fails only its own submitter.
    pub(super) weight: Weight,
    /// Sent to a worker that died while it held several jobs: which one crashed it is
    /// unknown, so this one runs alone from now on, and a crash then is its own.
    pub(super) alone: bool,
    /// Its cost class ([`Job::cost_hint`], asked once in `submit`, see `estimate`).
    pub(super) class: usize,
    /// Its class's mean run time when it was queued: what it adds to the queue's work while
    /// it waits, and to its slot's once taken.
    pub(super) expected: Duration,
    /// Submitted with a deadline of its own ([`WorkerPool::submit_with_timeout`]): refused
    /// rather than queued, or taken, to miss it. Without one, the pool's deadline applies as
    /// it always did: 504 at the deadline.
    ///
    /// [`WorkerPool::submit_with_timeout`]: super::WorkerPool::submit_with_timeout
    pub(super) admit: bool,
}

impl<J: Job> Pending<J> {
    /// Whether it may share a worker with other light jobs.
    pub(super) fn travels_light(&self) -> bool {
        !self.alone && self.weight == Weight::Light
    }
}

pub(super) struct Queue<J: Job> {
    /// Oldest first. Changed only through `push_back`, `push_front`, `pop_front`, `remove` and
    /// the drain in `set_unavailable`, which keep `work` its sum.
    jobs: VecDeque<Pending<J>>,
    /// The expected run times of the queued jobs ([`Pending::expected`]), summed.
    work: Duration,
    /// Most jobs waiting at once.
    capacity: usize,
    /// Set at shutdown: no new jobs; drivers finish what is queued, then retire.
    closed: bool,
    /// Set while no worker can be started (the breaker, see `health`): failed starts in a row
    /// and the latest error. Jobs are refused with [`PoolError::Unavailable`] meanwhile.
    unavailable: Option<(u32, String)>,
}

impl<J: Job> Queue<J> {
    pub(super) fn new(capacity: usize) -> Queue<J> {
        Queue {
            jobs: VecDeque::with_capacity(capacity),
            work: Duration::ZERO,
            capacity,
            closed: false,
            unavailable: None,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.jobs.len()
    }

    /// The expected run times of the queued jobs, summed.
    pub(super) fn work(&self) -> Duration {
        self.work
    }

    fn push_back(&mut self, job: Pending<J>) {
        self.work = self.work.saturating_add(job.expected);
        self.jobs.push_back(job);
    }

    fn push_front(&mut self, job: Pending<J>) {
        self.work = self.work.saturating_add(job.expected);
        self.jobs.push_front(job);
    }

    fn pop_front(&mut self) -> Option<Pending<J>> {
        let job = self.jobs.pop_front()?;
        self.work = self.work.saturating_sub(job.expected);
        Some(job)
    }

    /// Takes out the job numbered `id`, if it is queued.
    fn remove(&mut self, id: u64) -> Option<Pending<J>> {
        let pos = self.jobs.iter().position(|p| p.id == id)?;
        let job = self.jobs.remove(pos)?;
        self.work = self.work.saturating_sub(job.expected);
        Some(job)
    }

    pub(super) fn close(&mut self) {
        self.closed = true;
    }

    /// Why jobs are refused, while no worker can be started.
    pub(super) fn unavailable(&self) -> Option<&(u32, String)> {
        self.unavailable.as_ref()
    }

    /// Refuses jobs from now on for `why` (failed starts in a row, the latest error), or admits
    /// them again with `None`. Returns the jobs that were waiting when refusal starts: their
    /// submitters are answered with the refusal rather than left to their deadline.
    pub(super) fn set_unavailable(&mut self, why: Option<(u32, String)>) -> Vec<Pending<J>> {
        let refusing = why.is_some();
        self.unavailable = why;
        match refusing {
            true => {
                self.work = Duration::ZERO;
                self.jobs.drain(..).collect()
            }
            false => Vec::new(),
        }
    }

    /// Closed, and nothing left for a driver to run.
    pub(super) fn is_closed_and_empty(&self) -> bool {
        self.closed && self.jobs.is_empty()
    }
}

impl<J: Job> Inner<J> {
    /// Queues a job, or says why not (closed, no worker can start, full, or, for a job with a
    /// deadline of its own, `timeout`, the predicted wait and run already past it: see
    /// `estimate`), and wakes one idle driver.
    pub(super) fn enqueue(
        &self,
        mut job: Pending<J>,
        timeout: Duration,
    ) -> Result<(), PoolError<J::Error>> {
        // Read before the queue's lock, which nothing holds while it changes the pool's life.
        let live = self.life.borrow().serving();
        {
            let mut queue = self.queue.lock().unwrap();
            if queue.closed {
                return Err(PoolError::ShuttingDown);
            }
            if let Some((failed_starts, last_error)) = &queue.unavailable {
                self.metrics.job(JobOutcome::Unavailable);
                return Err(PoolError::Unavailable {
                    failed_starts: *failed_starts,
                    last_error: last_error.clone(),
                });
            }
            if queue.jobs.len() >= queue.capacity {
                self.metrics.job(JobOutcome::RejectedFull);
                return Err(PoolError::QueueFull(queue.jobs.len()));
            }
            // Only a job with a deadline of its own is predicted (under the lock: the queue's
            // work is read there).
            let wait = job.admit.then(|| self.predict(&queue, job.class, live)).flatten();
            if let Some(wait) = wait.filter(|w| w.total() > timeout) {
                // Refused by its own run time alone, it is its class's estimate that may be out
                // of date; a queue that is too long refreshes it by running.
                let probe = wait.run > timeout && self.probe(&mut job);
                if !probe {
                    self.metrics.job(JobOutcome::RejectedDeadline);
                    return Err(PoolError::WontFinish { wait, timeout });
                }
            }
            queue.push_back(job);
        }
        self.wakers.wake_one();
        Ok(())
    }

    /// Whether `job`, which the prediction refuses, runs anyway as its class's probe (see
    /// `estimate`); if so it is checked no more, and keeps only its deadline.
    fn probe(&self, job: &mut Pending<J>) -> bool {
        if !self.estimate.probe(job.class) {
            return false;
        }
        tracing::info!(job = job.id, tag = %job.tag, class = job.class,
            "no run of this job's size for a while: it runs against the prediction, to refresh it");
        job.admit = false;
        true
    }

    /// The prediction for a job of `class` queued now behind everything in `queue`.
    pub(super) fn predict(&self, queue: &Queue<J>, class: usize, live: usize) -> Option<Wait> {
        self.estimate.wait(class, queue.work(), queue.len(), live)
    }

    /// Waits for work: the next live job and, when it is light, the light jobs right behind
    /// it (see [`Inner::take_light`]). `None` once the pool is closed and the queue is empty.
    /// Jobs whose submitter has stopped waiting are counted and skipped. Slot `slot` counts
    /// idle meanwhile (see `wakers`); cancel-safe: a dropped wait hands its wake-up on.
    pub(super) async fn next_batch(&self, slot: usize) -> Option<Vec<Pending<J>>> {
        let look = || self.take_batch();
        self.wakers.wait_for(slot, look, || self.jobs_waiting()).await
    }

    /// The next batch from the queue: one heavy job, or light ones (see `take_light`);
    /// `Some(None)` once the queue is closed and empty, `None` while it is open and empty.
    fn take_batch(&self) -> Option<Option<Vec<Pending<J>>>> {
        let mut queue = self.queue.lock().unwrap();
        while let Some(job) = queue.pop_front() {
            let Some(job) = self.take(job) else {
                continue;
            };
            let light = job.travels_light();
            let mut batch = vec![job];
            if light {
                self.take_light(&mut queue, &mut batch, self.config.max_batch);
            }
            return Some(Some(batch));
        }
        queue.closed.then_some(None)
    }

    /// Whether jobs wait in the queue.
    pub(super) fn jobs_waiting(&self) -> bool {
        !self.queue.lock().unwrap().jobs.is_empty()
    }

    /// More light jobs for a worker that runs only light ones, never waiting: at most `room`.
    pub(super) fn more_light(&self, room: usize) -> Vec<Pending<J>> {
        let mut batch = Vec::new();
        if room > 0 {
            self.take_light(&mut self.queue.lock().unwrap(), &mut batch, room);
        }
        batch
    }

    /// Moves the live light jobs at the front of the queue into `batch` until it holds `most`,
    /// or this slot's fair share of the queue (what waits, `batch` included, split evenly
    /// between the slots: an elastic pool's effective maximum, read without a lock, since the
    /// queue's is held), or a heavy job is next, whichever comes first.
    fn take_light(&self, queue: &mut Queue<J>, batch: &mut Vec<Pending<J>>, most: usize) {
        let share = (queue.jobs.len() + batch.len()).div_ceil(self.size.max);
        while batch.len() < most.min(share) {
            match queue.jobs.front() {
                Some(next) if next.travels_light() => {}
                _ => return,
            }
            let job = queue.pop_front().expect("the front was just seen");
            batch.extend(self.take(job));
        }
    }

    /// The job, if a driver may start it now: `None` when its submitter has stopped waiting
    /// (counted here, once), or when it has a deadline of its own with less left than its run
    /// time (answered [`PoolError::TooLate`] and counted).
    fn take(&self, mut job: Pending<J>) -> Option<Pending<J>> {
        let now = Instant::now();
        if job.reply.is_closed() {
            self.metrics.job(JobOutcome::abandoned(now >= job.deadline));
            return None;
        }
        if !job.admit {
            return Some(job);
        }
        let run = self.estimate.run_time(job.class).map(RunTime::with_margin);
        let left = job.deadline.saturating_duration_since(now);
        match run.filter(|&run| left < run) {
            Some(_) if self.probe(&mut job) => Some(job),
            Some(run) => {
                self.metrics.job(JobOutcome::RejectedDispatch);
                let _ = job.reply.send(Err(PoolError::TooLate { left, run }));
                None
            }
            None => Some(job),
        }
    }

    /// Puts jobs back at the front of the queue, in their order: they were sent ahead to a
    /// worker that was lost before it started them. They were admitted once, so the capacity
    /// does not apply. Wakes every idle driver, since there may be more than one job.
    pub(super) fn requeue(&self, jobs: impl DoubleEndedIterator<Item = Pending<J>>) {
        {
            let mut queue = self.queue.lock().unwrap();
            for job in jobs.rev() {
                queue.push_front(job);
            }
        }
        self.wakers.wake_all();
    }
}

impl<J: Job> Inner<J> {
    /// Slot `slot` is done with `job`: what its run says about its class's run time is
    /// recorded, and the slot holds `running` now.
    pub(super) fn ran(
        &self,
        slot: usize,
        job: &Pending<J>,
        sample: Option<Sample>,
        running: &VecDeque<Pending<J>>,
    ) {
        if let Some(sample) = sample {
            self.estimate.record(job.class, sample);
        }
        self.hold(slot, running);
    }

    /// Slot `slot` holds `running` (its running job first), expected to take their expected
    /// run times, summed, from now.
    pub(super) fn hold(&self, slot: usize, running: &VecDeque<Pending<J>>) {
        let work = running
            .iter()
            .fold(Duration::ZERO, |sum, job| sum.saturating_add(job.expected));
        self.estimate.holds(slot, work);
    }
}

/// Removes a job from the queue when its submitter goes away before a driver took it.
pub(super) struct Unqueue<'a, J: Job> {
    inner: &'a Inner<J>,
    id: u64,
    armed: bool,
}

impl<'a, J: Job> Unqueue<'a, J> {
    pub(super) fn new(inner: &'a Inner<J>, id: u64) -> Self {
        Unqueue {
            inner,
            id,
            armed: true,
        }
    }

    /// The submitter got its answer: nothing to remove.
    pub(super) fn disarm(&mut self) {
        self.armed = false;
    }

    /// Takes the job out of the queue if no driver has it yet, counting it as `outcome`.
    pub(super) fn remove_if_queued(&mut self, outcome: JobOutcome) {
        self.armed = false;
        let mut queue = self.inner.queue.lock().unwrap();
        if queue.remove(self.id).is_some() {
            self.inner.metrics.job(outcome);
        }
    }
}

impl<J: Job> Drop for Unqueue<'_, J> {
    fn drop(&mut self) {
        if self.armed {
            self.remove_if_queued(JobOutcome::Cancelled);
        }
    }
}
