//! The driver side of the pool: one task per worker slot that owns its worker process and
//! feeds it jobs, and the dedicated thread whose runtime runs every driver.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::time::sleep;

use super::process::{SpawnError, WorkerProcess};
use super::protocol::{decode, encode, Job, Outcome, ProtocolError, Reply, Request};
use super::status::WorkerState;
use super::{Done, Inner, Pending, PoolError};

/// The pool's own runtime: one thread, `current_thread`, that runs every driver.
///
/// Why not the server's runtime: under HTTP load its threads are saturated with connection
/// tasks, and a driver that waits its turn behind them leaves its worker idle between jobs
/// (measured at full dispatch load: workers busy about 5% of the time). On a thread of its own
/// a driver runs as soon as its pipe is readable. It is also the thread that spawns every
/// worker, which matters for `PR_SET_PDEATHSIG`: the signal fires when the *thread* that
/// forked the child exits, and this thread lives exactly as long as the pool.
pub(super) struct Dispatcher {
    pub(super) runtime: tokio::runtime::Handle,
    /// Dropping or sending ends the thread, and with it its runtime.
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

impl Dispatcher {
    pub(super) fn start() -> Dispatcher {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("forkpool-pool".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime builds");
                let _ = handle_tx.send(runtime.handle().clone());
                // Both a stop and a dropped sender end the pool.
                let _ = runtime.block_on(stopped);
            })
            .expect("spawn the pool thread");
        Dispatcher {
            runtime: handle_rx.recv().expect("the pool thread sends its handle"),
            stop: Mutex::new(Some(stop)),
        }
    }

    pub(super) fn stop(&self) {
        if let Some(stop) = self.stop.lock().unwrap().take() {
            let _ = stop.send(());
        }
    }
}

/// How a running job ended when it did not end with a reply.
enum Stop {
    Deadline,
    Cancelled,
    Died,
    Protocol(ProtocolError),
}

/// What a driver waits for between jobs. One lives on the driver's stack at a time, so the
/// size gap between variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Event<J: Job> {
    Job(Pending<J>),
    /// The queue is closed and empty: retire.
    Closed,
    /// Output (or EOF) from a worker that has no job: it died or misbehaves.
    IdleOutput(Result<Option<Vec<u8>>, ProtocolError>),
    Roll(oneshot::Sender<()>),
    Replacement(Result<(WorkerProcess, OwnedSemaphorePermit), SpawnError>),
}

/// A replacement on its way, with the pool's spare permit once it has it.
type Spawning =
    Pin<Box<dyn Future<Output = Result<(WorkerProcess, OwnedSemaphorePermit), SpawnError>> + Send>>;

impl<J: Job> Inner<J> {
    /// The life of one worker slot: start a worker, feed it jobs, replace it when it is lost or
    /// due for recycling, until the pool closes.
    pub(super) async fn drive(
        self: Arc<Self>,
        slot: usize,
        mut rolls: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    ) {
        let mut backoff = Backoff::default();
        let mut next: Option<WorkerProcess> = None;
        loop {
            let mut worker = match next.take() {
                Some(worker) => worker,
                None => match self.start_worker(slot, &mut backoff).await {
                    Some(worker) => worker,
                    None => return self.set_state(slot, WorkerState::Stopped, None),
                },
            };
            let retire_after = jitter(self.config.max_jobs_per_worker);
            let mut served = 0u64;
            let mut spawning: Option<Spawning> = None;
            let mut roll_done: Option<oneshot::Sender<()>> = None;
            // `None`: replaced in place by a new worker; `Some(reason)`: the worker is gone.
            let lost: Option<String> = loop {
                self.set_state(slot, WorkerState::Idle, Some(&worker));
                let event = tokio::select! {
                    job = self.next_job() => job.map_or(Event::Closed, Event::Job),
                    line = worker.next_line() => Event::IdleOutput(line),
                    Some(done) = rolls.recv() => Event::Roll(done),
                    new = async { spawning.as_mut().expect("guarded").await }, if spawning.is_some() =>
                        Event::Replacement(new),
                };
                match event {
                    Event::Job(job) => {
                        self.set_busy(slot, job.id);
                        match self.run_job(&mut worker, job).await {
                            Ok(()) => {
                                served += 1;
                                backoff.reset();
                                self.slots[slot].lock().unwrap().jobs_served += 1;
                                if retire_after > 0 && served >= retire_after && spawning.is_none()
                                {
                                    spawning = Some(Box::pin(self.spawn_spare()));
                                }
                            }
                            Err(reason) => break Some(reason),
                        }
                    }
                    Event::Closed => {
                        self.set_state(slot, WorkerState::Stopped, None);
                        worker.retire().await;
                        return;
                    }
                    Event::IdleOutput(line) => {
                        let (why, exit) = match line {
                            Ok(None) => ("exited while idle".into(), worker.exit_cause().await),
                            Ok(Some(_)) => {
                                ("unexpected output while idle".into(), worker.kill().await)
                            }
                            Err(e) => (e.to_string(), worker.kill().await),
                        };
                        tracing::warn!(pid = worker.pid, why, cause = %exit, "idle worker lost");
                        break Some(exit.crash_label());
                    }
                    Event::Roll(done) => {
                        roll_done = Some(done);
                        if spawning.is_none() {
                            spawning = Some(Box::pin(self.spawn_spare()));
                        }
                    }
                    Event::Replacement(Ok((new, spare))) => {
                        let old = std::mem::replace(&mut worker, new);
                        let done = roll_done.take();
                        count_exit("recycled".into());
                        tokio::spawn(async move {
                            old.retire().await;
                            drop(spare);
                            if let Some(done) = done {
                                let _ = done.send(());
                            }
                        });
                        break None;
                    }
                    Event::Replacement(Err(e)) => {
                        tracing::warn!(error = %e, "replacement worker failed to start; keeping the old one");
                        spawning = None;
                    }
                }
            };
            match lost {
                None => next = Some(worker),
                Some(reason) => {
                    // Nothing is alive in this slot until the next worker says hello.
                    self.set_state(slot, WorkerState::Down, None);
                    // A worker that crashes straight after start would otherwise respawn in a
                    // busy loop (a broken binary, a bad limit): back off instead.
                    let crashed = reason.starts_with("crashed") || reason == "protocol";
                    let early = worker.started.elapsed() < Duration::from_secs(1) && served == 0;
                    count_exit(reason);
                    if crashed && early {
                        sleep(backoff.next()).await;
                    }
                }
            }
        }
    }

    /// Spawns workers until one says hello, backing off exponentially between failures.
    /// `None` when the pool closed meanwhile.
    async fn start_worker(&self, slot: usize, backoff: &mut Backoff) -> Option<WorkerProcess> {
        loop {
            if self.queue.lock().unwrap().closed {
                return None;
            }
            self.set_state(slot, WorkerState::Starting, None);
            match self.spawn_replacement().await {
                Ok(worker) => return Some(worker),
                Err(e) => {
                    let delay = backoff.next();
                    tracing::error!(slot, error = %e, ?delay, "worker failed to start");
                    self.set_state(slot, WorkerState::Down, None);
                    sleep(delay).await;
                }
            }
        }
    }

    /// A replacement for a worker that stays alive until the new one is ready (recycling, a
    /// roll). It first waits for the pool's one spare permit, which travels with it and is
    /// released once the old worker has exited. Meanwhile the old worker keeps serving.
    fn spawn_spare(
        &self,
    ) -> impl Future<Output = Result<(WorkerProcess, OwnedSemaphorePermit), SpawnError>> {
        let spare = self.spare.clone();
        let spawn = self.spawn_replacement();
        async move {
            let permit = spare
                .acquire_owned()
                .await
                .expect("the spare semaphore is never closed");
            Ok((spawn.await?, permit))
        }
    }

    fn spawn_replacement(&self) -> impl Future<Output = Result<WorkerProcess, SpawnError>> {
        let spec = self.spec.clone();
        async move {
            let worker = WorkerProcess::spawn(&spec).await;
            if let Ok(w) = &worker {
                metrics::counter!("forkpool_worker_spawns_total").increment(1);
                tracing::debug!(pid = w.pid, "worker started");
            }
            worker
        }
    }

    /// Waits for the next live job. `None` once the pool is closed and the queue is empty.
    async fn next_job(&self) -> Option<Pending<J>> {
        loop {
            // Register interest before looking, so a job queued in between still wakes us.
            let notified = self.job_ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut queue = self.queue.lock().unwrap();
                while let Some(job) = queue.jobs.pop_front() {
                    if job.reply.is_closed() {
                        let outcome = match Instant::now() >= job.deadline {
                            true => "timeout",
                            false => "cancelled",
                        };
                        metrics::counter!("forkpool_jobs_total", "outcome" => outcome).increment(1);
                        continue;
                    }
                    return Some(job);
                }
                if queue.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Sends one job to `worker` and answers it. `Err` names why the worker must go (it has
    /// already been killed or reaped).
    async fn run_job(&self, worker: &mut WorkerProcess, mut job: Pending<J>) -> Result<(), String> {
        let started = Instant::now();
        self.metrics
            .queue_wait
            .record((started - job.enqueued).as_secs_f64());
        let line = encode(&Request {
            id: job.id,
            rid: job.request_id.clone(),
            job: job.job,
        });
        let deadline = job.deadline;
        let exchange = async {
            worker.send(&line).await.map_err(|_| Stop::Died)?;
            match worker.next_line().await {
                Ok(Some(line)) => decode::<Reply<J::Output>>(&line)
                    .and_then(|reply| match reply.id == job.id {
                        true => Ok(reply),
                        false => Err(ProtocolError::Unexpected(format!(
                            "reply for job {} while job {} runs",
                            reply.id, job.id
                        ))),
                    })
                    .map_err(Stop::Protocol),
                Ok(None) => Err(Stop::Died),
                Err(e) => Err(Stop::Protocol(e)),
            }
        };
        // No timer of our own: at the deadline `submit` stops waiting and drops the receiver,
        // which is what `closed` reports, so one timer per job serves both.
        let result = tokio::select! {
            result = exchange => result,
            _ = job.reply.closed() => Err(match Instant::now() >= deadline {
                true => Stop::Deadline,
                false => Stop::Cancelled,
            }),
        };
        self.metrics
            .run_time
            .record(started.elapsed().as_secs_f64());
        let pid = worker.pid;
        let (answer, outcome, exit) = match result {
            Ok(Reply {
                ms,
                result: Outcome::Ok(output),
                ..
            }) => (
                Some(Ok(Done {
                    output,
                    compute_ms: ms,
                })),
                "ok",
                None,
            ),
            Ok(Reply {
                result: Outcome::Err(e),
                ..
            }) => (Some(Err(PoolError::JobFailed(e))), "error", None),
            Err(Stop::Deadline) => {
                let cause = worker.kill().await;
                tracing::warn!(pid, job = job.id, request_id = %job.request_id, %cause, "job passed its deadline; worker killed");
                // `submit` has answered 504 itself: it is the one that stopped waiting.
                (None, "timeout", Some("killed_timeout".into()))
            }
            Err(Stop::Cancelled) => {
                let cause = worker.kill().await;
                tracing::info!(pid, job = job.id, request_id = %job.request_id, %cause, "client went away; worker killed");
                (None, "cancelled", Some("killed_cancel".into()))
            }
            Err(Stop::Died) => {
                let cause = worker.exit_cause().await;
                tracing::warn!(pid, job = job.id, request_id = %job.request_id, %cause, "worker died mid-job");
                let error = PoolError::WorkerDied { pid, cause };
                (Some(Err(error)), "crashed", Some(cause.crash_label()))
            }
            Err(Stop::Protocol(error)) => {
                let cause = worker.kill().await;
                tracing::warn!(pid, job = job.id, request_id = %job.request_id, %error, %cause, "worker broke the protocol; killed");
                let error = PoolError::Protocol { pid, error };
                (Some(Err(error)), "crashed", Some("protocol".into()))
            }
        };
        match outcome {
            "ok" => self.metrics.jobs_ok.increment(1),
            _ => metrics::counter!("forkpool_jobs_total", "outcome" => outcome).increment(1),
        }
        if let Some(answer) = answer {
            // The client may have left meanwhile; then nobody needs the answer.
            let _ = job.reply.send(answer);
        }
        exit.map_or(Ok(()), Err)
    }

    fn set_busy(&self, slot: usize, job: u64) {
        self.slots[slot].lock().unwrap().busy(job);
    }

    fn set_state(&self, slot: usize, state: WorkerState, worker: Option<&WorkerProcess>) {
        self.slots[slot]
            .lock()
            .unwrap()
            .set(state, worker.map(|w| w.pid));
    }
}

fn count_exit(reason: String) {
    metrics::counter!("forkpool_worker_exits_total", "reason" => reason).increment(1);
}

/// `n` jobs with ±10% jitter, so that workers started together do not all retire together.
fn jitter(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let spread = (n / 10) as i64;
    let random = RandomState::new().hash_one(Instant::now()) as i64;
    let offset = if spread == 0 {
        0
    } else {
        random.rem_euclid(2 * spread + 1) - spread
    };
    (n as i64 + offset).max(1) as u64
}

/// Exponential backoff for worker starts: 100 ms doubling up to 10 s.
#[derive(Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let delay = Duration::from_millis(100) * 2u32.saturating_pow(self.failures.min(7));
        self.failures += 1;
        delay.min(Duration::from_secs(10))
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff::default();
        let delays: Vec<_> = (0..9).map(|_| b.next().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000]);
        b.reset();
        assert_eq!(b.next().as_millis(), 100);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        assert_eq!(jitter(0), 0);
        for _ in 0..100 {
            let n = jitter(1000);
            assert!((900..=1100).contains(&n), "{n}");
        }
    }
}
