//! The batch exchange: a job event hands the worker a batch, one heavy job or light ones that
//! it runs in order. The driver then answers each job as its reply comes in and, while the
//! worker runs only light jobs, tops its pipe up with queued light ones, so that a busy worker
//! seldom waits for the driver. It writes and reads at once (see
//! `WorkerProcess::write_and_read`), so a batch larger than a pipe's buffer cannot stall both
//! sides. Once the batch is answered (or every `max_batch` answers while it is topped up), the
//! worker's resident memory is read against the pool's limit (`Driver::measure`).
//!
//! Guarantees: every job handed over is answered exactly once, or goes back to the queue
//! (never both, never neither); at most `max_batch` jobs sit with a worker, and none is sent
//! ahead while it is due for replacement or runs a heavy job.
//!
//! Failure modes: a worker lost mid-job (deadline, the submitter gone, a crash, a protocol
//! error) fails that job, is killed or reaped here, and its slot starts another; the jobs sent
//! ahead to it go back to the front of the queue (see `on_died_mid_batch` for a worker that
//! dies holding several: none fails, each runs again alone). A worker with no job that writes
//! or closes its stdout is lost the same way (`on_idle_output`).

use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};

use super::super::estimate::Sample;
use super::super::inspect::rss_bytes;
use super::super::lifecycle::{JobOutcome, WorkerExit};
use super::super::process::WorkerProcess;
use super::super::protocol::{decode, encode_into, Outcome, ProtocolError, Reply, Request, Weight};
use super::super::queue::Pending;
use super::slow::SlowWatch;
use super::{Driver, Step, Tenure};
use super::super::{Answer, Done, Job, PoolError};

/// How a job's exchange with its worker ended.
enum RunEnd<J: Job> {
    Replied(Reply<J::Output, J::Error>),
    /// The submitter stopped waiting at the deadline.
    Deadline,
    /// The submitter stopped waiting before the deadline.
    Cancelled,
    /// The worker's pipes closed: it died.
    Died,
    Protocol(ProtocolError),
}

impl<J: Job> RunEnd<J> {
    /// What the run says about the job's run time (see `estimate`); nothing after a crash or a
    /// hang-up.
    fn sample(&self, run: Duration) -> Option<Sample> {
        match self {
            RunEnd::Replied(_) => Some(Sample::Finished(run)),
            RunEnd::Deadline => Some(Sample::AtLeast(run)),
            RunEnd::Cancelled | RunEnd::Died | RunEnd::Protocol(_) => None,
        }
    }
}

/// What a finished run leaves behind.
struct Settled<J: Job> {
    /// For the submitter; `None` when it has stopped waiting.
    answer: Option<Answer<J>>,
    outcome: JobOutcome,
    /// `Some` when the worker is gone (killed or reaped).
    exit: Option<WorkerExit>,
}

impl<J: Job> Driver<J> {
    /// Hands the worker `batch` and answers each job as its reply comes in; while the worker
    /// runs light jobs, queued light ones are sent after them. Its memory is read once the
    /// batch is answered, or every `max_batch` answers while it is kept topped up.
    pub(super) async fn on_batch(&mut self, t: &mut Tenure, batch: Vec<Pending<J>>) -> Step {
        let light = batch[0].travels_light();
        let mut outbox = BytesMut::new();
        self.hand_over(batch, &mut outbox);
        // The running job started when the one before it answered (or when the batch left).
        let mut started = Instant::now();
        while let Some(head) = self.running.front_mut() {
            self.pool.slots[self.slot].lock().unwrap().busy(head.id);
            let slow = self.pool.config.job_slow.map(|after| SlowWatch {
                slot: self.slot,
                started,
                after,
                counter: &self.pool.metrics.slow_jobs,
            });
            let end = exchange::<J>(&mut t.worker, &mut outbox, head, slow).await;
            if matches!(end, RunEnd::Died) && self.running.len() > 1 {
                return self.on_died_mid_batch(&mut t.worker).await;
            }
            let job = self.running.pop_front().expect("the running job is the front one");
            let now = Instant::now();
            self.pool.metrics.run_time.record((now - started).as_secs_f64());
            self.pool.ran(self.slot, &job, end.sample(now - started), &self.running);
            started = now;
            if let Some(exit) = self.answer(&mut t.worker, end, job).await {
                self.requeue_sent_ahead(false);
                return Step::Lost(exit);
            }
            self.on_served(t);
            if self.running.is_empty() || t.unmeasured >= self.pool.config.max_batch as u64 {
                self.measure(t);
            }
            if light {
                self.top_up(t, &mut outbox);
            }
        }
        Step::Continue
    }

    /// Reads the worker's resident memory if the pool has a limit; one over it is due for
    /// replacement (the next step starts it), and is not read again.
    fn measure(&self, t: &mut Tenure) {
        let limit = self.pool.config.max_rss_per_worker;
        if limit == 0 || t.over_rss {
            return;
        }
        t.unmeasured = 0;
        let pid = t.worker.pid;
        let Some(rss) = rss_bytes(pid).filter(|&rss| rss > limit) else {
            return;
        };
        t.over_rss = true;
        tracing::info!(slot = self.slot, pid, rss, limit, served = t.served,
            "worker's resident memory is over the limit: it retires once its replacement said hello");
    }

    /// The worker died holding several unanswered jobs. It writes its answers when it runs
    /// out of input, so the first unanswered job may have finished: which one crashed it is
    /// unknown. None is failed; all go back to the queue to run alone, where a crash is the
    /// job's own. (Light jobs take microseconds, so running a finished one again costs little;
    /// a job that kills every worker fails on its first run alone.)
    async fn on_died_mid_batch(&mut self, worker: &mut WorkerProcess) -> Step {
        let cause = worker.exit_cause().await;
        tracing::warn!(pid = worker.pid, jobs = self.running.len(), %cause,
            "worker died holding several jobs; each runs again alone");
        self.requeue_sent_ahead(true);
        Step::Lost(WorkerExit::Crashed(cause))
    }

    /// Answers `job` with how its run ended; `Some` when the worker is gone. (`&mut self`
    /// because a shared `Driver` is not `Sync`, and this future must be `Send`.)
    async fn answer(
        &mut self,
        worker: &mut WorkerProcess,
        end: RunEnd<J>,
        job: Pending<J>,
    ) -> Option<WorkerExit> {
        let settled = settle(worker, end, job.id, &job.tag).await;
        self.pool.metrics.job(settled.outcome);
        if let Some(answer) = settled.answer {
            // The submitter may have left meanwhile; then nobody needs the answer.
            let _ = job.reply.send(answer);
        }
        settled.exit
    }

    /// Moves `jobs` to `running` and their lines to `outbox`.
    fn hand_over(&mut self, jobs: Vec<Pending<J>>, outbox: &mut BytesMut) {
        let now = Instant::now();
        for job in jobs {
            let waited = now - job.enqueued;
            self.pool.metrics.queue_wait.record(waited.as_secs_f64());
            let request = Request {
                id: job.id,
                tag: job.tag.as_str(),
                job: &job.job,
            };
            encode_into((&mut *outbox).writer(), &request);
            self.running.push_back(job);
        }
        self.pool.hold(self.slot, &self.running);
    }

    /// Sends queued light jobs after the light ones the worker has, up to `max_batch` in all,
    /// once at most half of them are left unanswered: writes of several jobs each, which
    /// `write_and_read` sends before the driver works through the answers it already holds.
    /// None while the worker is due for replacement, or it would never be free to hand over.
    fn top_up(&mut self, t: &Tenure, outbox: &mut BytesMut) {
        let max = self.pool.config.max_batch;
        // A change of the pool's life may be a roll: the next step looks (without a lock here,
        // which runs once per light job).
        let rolling = self.life.has_changed().unwrap_or(false);
        let due = rolling || t.replacement.is_some() || t.due(t.generation).is_some();
        if self.running.len() > max / 2 || due {
            return;
        }
        let room = max.saturating_sub(self.running.len());
        let jobs = self.pool.more_light(room);
        self.hand_over(jobs, outbox);
    }

    /// The worker was lost with jobs sent ahead and not answered. They may have run (a worker
    /// writes its answers when it runs out of input), but nobody got an answer, so they go
    /// back to the front of the queue for another worker; `alone` when each must run alone
    /// from now on.
    pub(super) fn requeue_sent_ahead(&mut self, alone: bool) {
        if self.running.is_empty() {
            return;
        }
        tracing::info!(slot = self.slot, jobs = self.running.len(),
            "jobs sent ahead to a lost worker go back to the queue");
        self.pool.requeue(self.running.drain(..).map(|job| Pending {
            alone: alone || job.alone,
            ..job
        }));
    }

    /// The worker answered and stays: count it. (Its replacement, once due, is started by the
    /// next step.)
    fn on_served(&mut self, t: &mut Tenure) {
        t.served += 1;
        t.unmeasured += 1;
        if t.served == 1 {
            // A new worker that answers a job works: the slot's next start need not wait. Only
            // its first job resets, so that a worker serving on while its replacement keeps
            // failing does not cut the replacement's backoff short at every job.
            self.backoff.reset();
        }
        self.pool.slots[self.slot].lock().unwrap().jobs_served += 1;
    }
}

/// Writes what is left of `outbox` and reads the reply of `head`, the job running now, unless
/// its submitter stops waiting first. With `slow`, a job still running after its time is
/// reported once, and waited for as before.
async fn exchange<J: Job>(
    worker: &mut WorkerProcess,
    outbox: &mut BytesMut,
    head: &mut Pending<J>,
    slow: Option<SlowWatch<'_>>,
) -> RunEnd<J> {
    let (id, deadline, enqueued, pid) = (head.id, head.deadline, head.enqueued, worker.pid);
    let light = head.weight == Weight::Light;
    let Pending { reply, tag, .. } = head;
    let talk = read_reply::<J>(worker, outbox, id);
    // At the deadline `submit` stops waiting and drops the receiver, which is what `closed`
    // reports, so one timer per job serves both. A light job whose submitter left is let
    // finish: its answer is microseconds away, while a kill would cost a fresh worker and
    // send every job behind it round again (a client hanging up over and over could make
    // the pool do nothing else). Its own deadline still holds, should it not be light after
    // all. Biased: an answer already in the pipe wins over a submitter that left a moment ago.
    let abandoned = async {
        reply.closed().await;
        if light {
            tokio::time::sleep_until(deadline.into()).await;
        }
    };
    let is_slow = async {
        match &slow {
            Some(slow) => {
                tokio::time::sleep_until((slow.started + slow.after).into()).await;
                slow
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(talk, abandoned, is_slow);
    let mut reported = false;
    loop {
        tokio::select! {
            biased;
            end = &mut talk => return end,
            () = &mut abandoned => return match Instant::now() >= deadline {
                true => RunEnd::Deadline,
                false => RunEnd::Cancelled,
            },
            slow = &mut is_slow, if !reported => {
                reported = true;
                slow.report(pid, id, tag, enqueued);
            }
        }
    }
}

/// Writes what is left of `outbox` and reads the reply of job `id` (cancel-safe, see
/// `WorkerProcess::write_and_read`).
async fn read_reply<J: Job>(
    worker: &mut WorkerProcess,
    outbox: &mut BytesMut,
    id: u64,
) -> RunEnd<J> {
    match worker.write_and_read(outbox).await {
        Ok(Some(line)) => match decode::<Reply<J::Output, J::Error>>(&line) {
            Ok(answer) if answer.id == id => RunEnd::Replied(answer),
            Ok(other) => RunEnd::Protocol(ProtocolError::Unexpected(format!(
                "reply for job {} while job {id} runs",
                other.id
            ))),
            Err(error) => RunEnd::Protocol(error),
        },
        Ok(None) => RunEnd::Died,
        Err(error) => RunEnd::Protocol(error),
    }
}

/// Turns a run's end into the submitter's answer, the outcome and the worker's fate, killing
/// or reaping the worker when it has to go.
async fn settle<J: Job>(
    worker: &mut WorkerProcess,
    end: RunEnd<J>,
    job: u64,
    tag: &str,
) -> Settled<J> {
    let pid = worker.pid;
    let settled = |answer, outcome, exit| Settled {
        answer,
        outcome,
        exit,
    };
    match end {
        RunEnd::Replied(Reply { ms, result, .. }) => match result {
            Outcome::Ok(output) => {
                let done = Done {
                    output,
                    compute_ms: ms,
                };
                settled(Some(Ok(done)), JobOutcome::Ok, None)
            }
            Outcome::Err(e) => settled(Some(Err(PoolError::JobFailed(e))), JobOutcome::Error, None),
        },
        RunEnd::Deadline => {
            let cause = worker.kill().await;
            tracing::warn!(pid, job, tag, %cause, "job passed its deadline; worker killed");
            // `submit` has answered with the timeout itself: it is the one that stopped waiting.
            settled(None, JobOutcome::Timeout, Some(WorkerExit::KilledTimeout))
        }
        RunEnd::Cancelled => {
            let cause = worker.kill().await;
            tracing::info!(pid, job, tag, %cause, "submitter went away; worker killed");
            settled(None, JobOutcome::Cancelled, Some(WorkerExit::KilledCancel))
        }
        RunEnd::Died => {
            let cause = worker.exit_cause().await;
            tracing::warn!(pid, job, tag, %cause, "worker died mid-job");
            let error = PoolError::WorkerDied { pid, cause };
            let exit = WorkerExit::Crashed(cause);
            settled(Some(Err(error)), JobOutcome::Crashed, Some(exit))
        }
        RunEnd::Protocol(error) => {
            let cause = worker.kill().await;
            tracing::warn!(pid, job, tag, %error, %cause, "worker broke the protocol; killed");
            let error = PoolError::Protocol { pid, error };
            settled(
                Some(Err(error)),
                JobOutcome::Crashed,
                Some(WorkerExit::Protocol),
            )
        }
    }
}

/// A worker with no job wrote something or closed its stdout: it goes.
pub(super) async fn on_idle_output(
    worker: &mut WorkerProcess,
    line: Result<Option<Vec<u8>>, ProtocolError>,
) -> Step {
    let (why, exit) = match line {
        Ok(None) => ("exited while idle".to_owned(), worker.exit_cause().await),
        Ok(Some(_)) => (
            "unexpected output while idle".to_owned(),
            worker.kill().await,
        ),
        Err(e) => (e.to_string(), worker.kill().await),
    };
    tracing::warn!(pid = worker.pid, why, cause = %exit, "idle worker lost");
    Step::Lost(WorkerExit::Crashed(exit))
}
