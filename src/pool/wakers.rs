//! Which idle driver a queued job wakes: the one of the lowest slot.
//!
//! Why: a single `Notify` wakes its waiters first come, first served, and a driver waits again
//! as soon as its batch is answered, so a light load went round every worker in turn. Two
//! things then fail. An elastic pool never shrinks: a worker retires after
//! `PoolConfig::worker_idle_timeout` without a job, and with jobs dealt round, none ever goes
//! that long while the load lasts (four workers and a job every 2 s: each had one every 8 s,
//! so with the 10 s default none ever retired). And every worker keeps, or keeps mapping
//! again, the code its jobs run, where one warm worker would do (see `code_pages`). Waking the lowest idle
//! slot instead keeps a light load on the fewest workers, the same ones, and leaves the rest
//! idle long enough to be released or retired; a burst still reaches every worker, since
//! each job queued wakes one more.
//!
//! How: one `Notify` per slot, and the set of slots whose driver waits for a job
//! ([`Wakers::wait_for`]). A driver is in the set while it waits (a [`Waiting`] guard, dropped
//! when it stops waiting for any reason, its wait cancelled included). Queuing a job wakes the
//! lowest slot in the set and takes it out, so that the next job queued before that driver
//! runs wakes another; the woken driver looks at the queue and, if it finds nothing (another
//! driver was quicker), goes back into the set.
//!
//! Guarantees: no job is left waiting while a driver idles. A driver enters the set and
//! registers with its `Notify` before it looks at the queue, so a job queued after the look
//! wakes it, or a lower slot. A driver that stops waiting while the queue still holds jobs
//! (it took its share and more is left, or its wait was cancelled after it was woken) wakes
//! the next lowest slot on its way out, so a wake-up never dies with a cancelled wait. One
//! job wakes one driver: a woken driver looks again itself rather than passing the wake-up
//! on. Lock order: neither the idle set's lock nor the queue's is held while the other is
//! taken (the guard's drop takes them one after the other, and is never dropped inside the
//! queue's lock).
//!
//! Failure modes: none of its own. A woken driver may find the queue empty (another took the
//! job first) and waits again. A wake-up whose wait was cancelled after it came stays with
//! the slot's `Notify` (tokio keeps it as a permit): that slot's next wait spends it on one
//! look more, nothing else.

use std::collections::BTreeSet;
use std::sync::Mutex;

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

    /// Waits, as slot `slot`'s driver, until `look` finds something (a batch of jobs, or the
    /// queue closed), and returns it. The slot counts idle while this waits; `jobs_left` is
    /// asked when it stops (found, or its future dropped) and, if the queue still holds jobs,
    /// the next idle slot is woken.
    pub(super) async fn wait_for<T>(
        &self,
        slot: usize,
        mut look: impl FnMut() -> Option<T>,
        jobs_left: impl Fn() -> bool,
    ) -> T {
        // Registered with the `Notify` and counted idle before each look, so that a job
        // queued after the look wakes this slot, or a lower one.
        let notified = self.slots[slot].notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let waiting = self.waiting(slot, jobs_left);
        loop {
            if let Some(found) = look() {
                // Out of the queue's lock (`look` has let go of it): the guard looks again.
                drop(waiting);
                return found;
            }
            notified.as_mut().await;
            // Woken: the wait goes on, without the guard's hand-over (this slot looks next,
            // and passing the wake-up on would wake another slot to find the job gone).
            notified.set(self.slots[slot].notified());
            notified.as_mut().enable();
            waiting.again();
        }
    }

    /// Slot `slot` waits for a job until the guard is dropped; `jobs_left` is asked then,
    /// and if it says the queue still holds jobs, the next idle slot is woken.
    fn waiting<F: Fn() -> bool>(&self, slot: usize, jobs_left: F) -> Waiting<'_, F> {
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

impl<F: Fn() -> bool> Waiting<'_, F> {
    /// The slot waits again after a wake-up, which took it out of the idle set.
    fn again(&self) {
        self.wakers.idle.lock().unwrap().insert(self.slot);
    }
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
    use futures_util::poll;

    /// A queue of `n` jobs as the drivers see it: taking one, and whether any is left.
    struct Jobs(Mutex<usize>);

    impl Jobs {
        fn take(&self) -> Option<()> {
            let mut jobs = self.0.lock().unwrap();
            (*jobs > 0).then(|| *jobs -= 1)
        }
        fn left(&self) -> bool {
            *self.0.lock().unwrap() > 0
        }
        fn push(&self, wakers: &Wakers) {
            *self.0.lock().unwrap() += 1;
            wakers.wake_one();
        }
    }

    fn idle(wakers: &Wakers) -> BTreeSet<usize> {
        wakers.idle.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn a_job_wakes_the_lowest_idle_slot_and_a_cancelled_wait_passes_it_on() {
        let (wakers, jobs) = (Wakers::new(3), Jobs(Mutex::new(0)));
        let mut two = Box::pin(wakers.wait_for(2, || jobs.take(), || jobs.left()));
        let mut one = Box::pin(wakers.wait_for(1, || jobs.take(), || jobs.left()));
        assert!(poll!(two.as_mut()).is_pending());
        assert!(poll!(one.as_mut()).is_pending());
        assert_eq!(idle(&wakers), BTreeSet::from([1, 2]));
        jobs.push(&wakers);
        assert_eq!(idle(&wakers), BTreeSet::from([2]), "slot 1 woken and counted busy");
        // Slot 1's wait is cancelled after it was woken (the driver's `select!` took another
        // branch): slot 2 takes the job instead.
        drop(one);
        assert_eq!(poll!(two.as_mut()), std::task::Poll::Ready(()), "passed on");
        assert!(idle(&wakers).is_empty());
    }

    #[tokio::test]
    async fn a_woken_slot_that_takes_the_job_wakes_no_other() {
        let (wakers, jobs) = (Wakers::new(2), Jobs(Mutex::new(0)));
        let mut zero = Box::pin(wakers.wait_for(0, || jobs.take(), || jobs.left()));
        let mut one = Box::pin(wakers.wait_for(1, || jobs.take(), || jobs.left()));
        assert!(poll!(zero.as_mut()).is_pending());
        assert!(poll!(one.as_mut()).is_pending());
        jobs.push(&wakers);
        assert_eq!(poll!(zero.as_mut()), std::task::Poll::Ready(()), "the lowest slot");
        // One job, one wake-up: slot 1 still waits, not woken to find the queue empty.
        assert_eq!(idle(&wakers), BTreeSet::from([1]));
        jobs.push(&wakers);
        assert_eq!(poll!(one.as_mut()), std::task::Poll::Ready(()), "the next job is its");
    }

    #[tokio::test]
    async fn a_wake_up_left_by_a_cancelled_wait_still_leaves_the_next_wait_counted_idle() {
        let (wakers, jobs) = (Wakers::new(1), Jobs(Mutex::new(0)));
        let mut first = Box::pin(wakers.wait_for(0, || jobs.take(), || jobs.left()));
        assert!(poll!(first.as_mut()).is_pending());
        jobs.push(&wakers);
        // Cancelled once woken: tokio keeps the wake-up as a permit on slot 0's `Notify`.
        drop(first);
        assert_eq!(jobs.take(), Some(()), "taken elsewhere");
        let mut next = Box::pin(wakers.wait_for(0, || jobs.take(), || jobs.left()));
        assert!(poll!(next.as_mut()).is_pending(), "the permit spent on a look");
        assert_eq!(idle(&wakers), BTreeSet::from([0]), "and it waits on, counted idle");
        jobs.push(&wakers);
        assert_eq!(poll!(next.as_mut()), std::task::Poll::Ready(()));
    }
}
