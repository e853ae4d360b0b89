//! Which idle driver a queued job wakes: the one of the lowest slot.
//!
//! Why: a single `Notify` wakes its waiters first come, first served, and a driver waits again
//! as soon as its batch is answered, so a light load went round every worker in turn. Two
//! things then fail. An elastic pool never shrinks: a worker retires after
//! `PoolConfig::worker_idle_timeout` without a job, and with jobs dealt round, none ever goes
//! that long while the load lasts (four workers and a job every 2 s: each had one every 8 s,
//! so with the 10 s default none ever retired). And every worker keeps, or keeps mapping again, the code
//! its jobs run, where one warm worker would do (see `code_pages`). Waking the lowest idle
//! slot instead keeps a light load on the fewest workers, the same ones, and leaves the rest
//! idle long enough to be released or retired; a burst still reaches every worker, since
//! each job queued wakes one more.
//!
//! How: one `Notify` per slot, and the set of slots whose driver waits for a job. A driver is
//! in the set while it waits (a [`Waiting`] guard, dropped when it stops waiting for any
//! reason, its wait cancelled included). Queuing a job wakes the lowest slot in the set and
//! takes it out, so that the next job queued before that driver runs wakes another.
//!
//! Guarantees: no job is left waiting while a driver idles. A driver enters the set and
//! registers with its `Notify` before it looks at the queue, so a job queued after the look
//! wakes it, or a lower slot. A driver that leaves the set while the queue still holds jobs
//! (it took its share and more is left, or its wait was cancelled after it was woken) wakes
//! the next lowest slot on its way out, so a wake-up never dies with a cancelled wait.
//!
//! Failure modes: none of its own. A woken driver may find the queue empty (another took the
//! job first) and waits again.

use std::collections::BTreeSet;
use std::sync::Mutex;

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// The drivers' wake-ups, one per slot.
pub(super) struct Wakers {
    /// Slot `i`'s driver waits on `slots[i]` while it has nothing to do.
    slots: Vec<Notify>,
    /// The slots whose driver waits for a job now, lowest first.
    idle: Mutex<BTreeSet<usize>>,
}

impl Wakers {
    /// Wake-ups for `slots` drivers, none of them waiting yet.
    pub(super) fn new(slots: usize) -> Wakers {
        Wakers {
            slots: (0..slots).map(|_| Notify::new()).collect(),
            idle: Mutex::new(BTreeSet::new()),
        }
    }

    /// Slot `slot`'s wake-up, to enable before [`waiting`](Self::waiting) and the look at the
    /// queue that follows.
    pub(super) fn notified(&self, slot: usize) -> Notified<'_> {
        self.slots[slot].notified()
    }

    /// Slot `slot` waits for a job until the guard is dropped; `jobs_left` is asked then,
    /// and if it says the queue still holds jobs, the next idle slot is woken.
    pub(super) fn waiting<F: Fn() -> bool>(&self, slot: usize, jobs_left: F) -> Waiting<'_, F> {
        self.idle.lock().unwrap().insert(slot);
        Waiting {
            wakers: self,
            slot,
            jobs_left,
        }
    }

    /// A job was queued: wakes the driver of the lowest idle slot, if any waits, and counts
    /// it busy. (A driver that does not wait looks at the queue before it waits again.)
    pub(super) fn wake_one(&self) {
        let lowest = self.idle.lock().unwrap().pop_first();
        if let Some(slot) = lowest {
            self.slots[slot].notify_one();
        }
    }

    /// Wakes every waiting driver: several jobs came back, or the pool closes.
    pub(super) fn wake_all(&self) {
        self.slots.iter().for_each(Notify::notify_waiters);
    }
}

/// A slot's driver waits for a job while this lives (see [`Wakers::waiting`]).
pub(super) struct Waiting<'a, F: Fn() -> bool> {
    wakers: &'a Wakers,
    slot: usize,
    /// Whether the queue still holds jobs, asked when the wait ends.
    jobs_left: F,
}

impl<F: Fn() -> bool> Drop for Waiting<'_, F> {
    fn drop(&mut self) {
        self.wakers.idle.lock().unwrap().remove(&self.slot);
        if (self.jobs_left)() {
            self.wakers.wake_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_job_wakes_the_lowest_idle_slot_and_a_cancelled_wait_passes_it_on() {
        let wakers = Wakers::new(3);
        let (mut two, mut one) = (Box::pin(wakers.notified(2)), Box::pin(wakers.notified(1)));
        two.as_mut().enable();
        one.as_mut().enable();
        let waiting_two = wakers.waiting(2, || false);
        let waiting_one = wakers.waiting(1, || true);
        wakers.wake_one();
        assert!(futures_util::poll!(one.as_mut()).is_ready(), "the lowest idle slot");
        assert!(futures_util::poll!(two.as_mut()).is_pending());
        assert_eq!(*wakers.idle.lock().unwrap(), BTreeSet::from([2]), "slot 1 counted busy");
        // Slot 1 stops waiting with jobs left (cancelled, or it took its share): slot 2 wakes.
        drop(waiting_one);
        assert!(futures_util::poll!(two.as_mut()).is_ready(), "passed on");
        drop(waiting_two);
        assert!(wakers.idle.lock().unwrap().is_empty());
    }
}
