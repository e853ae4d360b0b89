//! The worker pool: a fixed number of worker processes, a bounded FIFO queue in front of them,
//! one deadline per job, and a driver task per worker slot that owns its process.
//!
//! ```text
//!   handler --submit--> [ queue (bounded) ] --pop--> driver 0 --pipe--> worker process
//!      ^                                     --pop--> driver 1 --pipe--> worker process
//!      +------------- oneshot reply <----------------+
//! ```
//!
//! Why a driver per slot: the request handler's future is dropped by axum when its client hangs
//! up. If the handler held the worker, that drop would lose the worker mid-protocol. Here the
//! driver alone talks to its process; the handler only waits on a oneshot. The driver notices a
//! dropped receiver (`Sender::closed`) and kills the worker, so an abandoned job never keeps a
//! core busy, and the slot gets a fresh worker.
//!
//! Failure modes and what happens:
//! - queue full: `QueueFull` (503) at once; nothing queues without bound.
//! - deadline (queue wait + run): dropped from the queue, or the worker is killed and replaced.
//! - worker dies mid-job: that job fails with the exit code or signal; the slot respawns.
//! - worker dies at start: respawned with exponential backoff, never a busy loop.
//! - worker breaks the protocol (overlong or malformed line): killed and replaced.
//! - recycling (`max_jobs_per_worker`, SIGHUP roll): the replacement is started and has said
//!   hello before the old worker retires, so capacity never dips.

mod process;
pub mod protocol;
pub mod worker;

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::future::Future;
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::sleep;

use clap::ValueEnum;

use crate::config::{LogFormat, WorkerSched};
use process::{SpawnError, SpawnSpec, WorkerProcess};
use protocol::{decode, encode, Job, Outcome, ProtocolError, Reply, Request};

/// Pool settings, taken from the server [`Config`](crate::config::Config).
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub program: PathBuf,
    pub workers: usize,
    pub queue: usize,
    pub job_timeout: Duration,
    pub max_line: usize,
    pub max_jobs_per_worker: u64,
    pub worker_memory: u64,
    pub worker_nice: i32,
    pub worker_sched: WorkerSched,
    pub log_format: LogFormat,
}

/// Why a job did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("all workers are busy and the queue is full ({0} jobs waiting); retry later")]
    QueueFull(usize),
    #[error("the server is shutting down and takes no new jobs")]
    ShuttingDown,
    #[error("the job did not finish within the {0:?} deadline")]
    Timeout(Duration),
    #[error("worker {pid} died mid-job: {cause}")]
    WorkerDied { pid: u32, cause: String },
    #[error("worker {pid} broke the protocol: {error}")]
    Protocol { pid: u32, error: ProtocolError },
    #[error("the job failed: {0}")]
    JobFailed(String),
}

/// A finished job.
#[derive(Debug)]
pub struct Done<O> {
    pub output: O,
    /// Compute time measured inside the worker.
    pub compute_ms: f64,
}

/// A job waiting in the queue, with everything the driver needs to run and answer it.
struct Pending<J: Job> {
    id: u64,
    request_id: String,
    job: J,
    deadline: Instant,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Done<J::Output>, PoolError>>,
}

struct Queue<J: Job> {
    jobs: VecDeque<Pending<J>>,
    /// Set at shutdown: no new jobs; drivers finish what is queued, then retire.
    closed: bool,
}

/// What `/status` and `/metrics` show of one worker slot.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerStatus {
    pub slot: usize,
    pub pid: Option<u32>,
    pub state: WorkerState,
    pub job: Option<u64>,
    pub job_age_ms: Option<f64>,
    pub jobs_served: u64,
    pub rss_bytes: Option<u64>,
    /// Unix time in seconds.
    pub started_at: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    Starting,
    Idle,
    Busy,
    /// Waiting out a backoff after failed starts.
    Down,
    Stopped,
}

impl WorkerState {
    pub const ALL: [WorkerState; 5] = [
        WorkerState::Starting,
        WorkerState::Idle,
        WorkerState::Busy,
        WorkerState::Down,
        WorkerState::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Idle => "idle",
            WorkerState::Busy => "busy",
            WorkerState::Down => "down",
            WorkerState::Stopped => "stopped",
        }
    }
}

/// Live bookkeeping of one slot, updated by its driver.
struct Slot {
    pid: Option<u32>,
    state: WorkerState,
    job: Option<(u64, Instant)>,
    jobs_served: u64,
    started_at: Option<SystemTime>,
}

struct Inner<J: Job> {
    config: PoolConfig,
    spec: SpawnSpec,
    queue: Mutex<Queue<J>>,
    /// Wakes an idle driver when a job is queued (and all of them at shutdown).
    job_ready: Notify,
    slots: Vec<Mutex<Slot>>,
    /// One per driver: a roll request, answered once that slot's new worker replaced the old.
    rolls: Vec<mpsc::UnboundedSender<oneshot::Sender<()>>>,
    drivers: Mutex<Vec<JoinHandle<()>>>,
    dispatcher: Dispatcher,
    metrics: HotMetrics,
    next_id: AtomicU64,
}

/// Metric handles used on every job, registered once so that dispatch does no registry
/// lookups (the rarer outcomes use the `metrics` macros directly). Built after the recorder is
/// installed, or they would be no-ops.
struct HotMetrics {
    queue_wait: metrics::Histogram,
    run_time: metrics::Histogram,
    jobs_ok: metrics::Counter,
}

/// A pool of worker processes running jobs of type `J`. Cheap to clone.
pub struct WorkerPool<J: Job> {
    inner: Arc<Inner<J>>,
}

impl<J: Job> Clone for WorkerPool<J> {
    fn clone(&self) -> Self {
        WorkerPool {
            inner: self.inner.clone(),
        }
    }
}

impl<J: Job> WorkerPool<J> {
    /// Starts one driver per worker slot; each spawns its worker in the background, so this
    /// returns at once and `/readyz` says when the first worker is up.
    pub fn start(config: PoolConfig) -> Self {
        let spec = SpawnSpec {
            program: config.program.clone(),
            args: worker_args::<J>(&config),
            kind: J::KIND,
            max_line: config.max_line,
        };
        let (rolls, receivers): (Vec<_>, Vec<_>) = (0..config.workers)
            .map(|_| mpsc::unbounded_channel())
            .unzip();
        let inner = Arc::new(Inner {
            slots: (0..config.workers)
                .map(|_| {
                    Mutex::new(Slot {
                        pid: None,
                        state: WorkerState::Starting,
                        job: None,
                        jobs_served: 0,
                        started_at: None,
                    })
                })
                .collect(),
            queue: Mutex::new(Queue {
                jobs: VecDeque::with_capacity(config.queue),
                closed: false,
            }),
            config,
            spec,
            job_ready: Notify::new(),
            rolls,
            drivers: Mutex::new(Vec::new()),
            dispatcher: Dispatcher::start(),
            metrics: HotMetrics {
                queue_wait: metrics::histogram!("forkpool_job_queue_wait_seconds"),
                run_time: metrics::histogram!("forkpool_job_run_seconds"),
                jobs_ok: metrics::counter!("forkpool_jobs_total", "outcome" => "ok"),
            },
            next_id: AtomicU64::new(1),
        });
        let drivers = receivers
            .into_iter()
            .enumerate()
            .map(|(slot, rolls)| {
                inner
                    .dispatcher
                    .runtime
                    .spawn(inner.clone().drive(slot, rolls))
            })
            .collect();
        *inner.drivers.lock().unwrap() = drivers;
        WorkerPool { inner }
    }

    /// Queues `job` and waits for its answer, its deadline, or a failure. Dropping the returned
    /// future (the client hung up) cancels the job: it leaves the queue, or its worker is killed.
    pub async fn submit(&self, job: J, request_id: &str) -> Result<Done<J::Output>, PoolError> {
        let inner = &self.inner;
        let now = Instant::now();
        let deadline = now + inner.config.job_timeout;
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        {
            let mut queue = inner.queue.lock().unwrap();
            if queue.closed {
                return Err(PoolError::ShuttingDown);
            }
            if queue.jobs.len() >= inner.config.queue {
                metrics::counter!("forkpool_jobs_total", "outcome" => "rejected_full").increment(1);
                return Err(PoolError::QueueFull(queue.jobs.len()));
            }
            queue.jobs.push_back(Pending {
                id,
                request_id: request_id.to_owned(),
                job,
                deadline,
                enqueued: now,
                reply,
            });
        }
        inner.job_ready.notify_one();
        let mut guard = Unqueue {
            inner,
            id,
            armed: true,
        };
        let result = match tokio::time::timeout_at(deadline.into(), answer).await {
            Ok(Ok(result)) => result,
            // The driver dropped the job without answering: only when the pool is torn down.
            Ok(Err(_)) => Err(PoolError::ShuttingDown),
            Err(_) => {
                guard.remove_if_queued("timeout");
                Err(PoolError::Timeout(inner.config.job_timeout))
            }
        };
        guard.armed = false;
        result
    }

    /// One row per worker slot, for `/status` and `/metrics`.
    pub fn status(&self) -> Vec<WorkerStatus> {
        let now = Instant::now();
        self.inner
            .slots
            .iter()
            .enumerate()
            .map(|(slot, s)| {
                let s = s.lock().unwrap();
                WorkerStatus {
                    slot,
                    pid: s.pid,
                    state: s.state,
                    job: s.job.map(|(id, _)| id),
                    job_age_ms: s.job.map(|(_, t)| (now - t).as_secs_f64() * 1e3),
                    jobs_served: s.jobs_served,
                    rss_bytes: s.pid.and_then(rss_bytes),
                    started_at: s
                        .started_at
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs_f64())),
                }
            })
            .collect()
    }

    /// Workers that are up and able to take a job (idle or busy).
    pub fn live_workers(&self) -> usize {
        self.inner
            .slots
            .iter()
            .filter(|s| {
                matches!(
                    s.lock().unwrap().state,
                    WorkerState::Idle | WorkerState::Busy
                )
            })
            .count()
    }

    /// Jobs waiting for a worker.
    pub fn queue_depth(&self) -> usize {
        self.inner.queue.lock().unwrap().jobs.len()
    }

    /// Rolling restart: one slot at a time, start a new worker, then retire the old one once its
    /// running job is done. At most one extra worker is alive at any moment.
    pub async fn roll(&self) {
        for roll in &self.inner.rolls {
            let (done, replaced) = oneshot::channel();
            if roll.send(done).is_ok() {
                // An error only means the slot lost its worker meanwhile; it respawns anyway.
                let _ = replaced.await;
            }
        }
    }

    /// Stops admitting jobs; queued and running jobs may still finish.
    pub fn close(&self) {
        self.inner.queue.lock().unwrap().closed = true;
        self.inner.job_ready.notify_waiters();
    }

    /// Closes the pool, lets queued and running jobs finish within `grace`, then kills what is
    /// left. When this returns, every worker has exited.
    pub async fn shutdown(&self, grace: Duration) {
        self.close();
        let drivers = std::mem::take(&mut *self.inner.drivers.lock().unwrap());
        let aborts: Vec<_> = drivers.iter().map(JoinHandle::abort_handle).collect();
        let all = futures_util::future::join_all(drivers);
        tokio::pin!(all);
        if tokio::time::timeout(grace, &mut all).await.is_err() {
            tracing::warn!(?grace, "grace period over; killing the remaining workers");
            // Dropping a driver drops its `WorkerProcess`, whose child is `kill_on_drop`.
            aborts.iter().for_each(|a| a.abort());
            all.await;
        }
        self.inner.dispatcher.stop();
    }
}

/// The pool's own runtime: one thread, `current_thread`, that runs every driver.
///
/// Why not the server's runtime: under HTTP load its threads are saturated with connection
/// tasks, and a driver that waits its turn behind them leaves its worker idle between jobs
/// (measured at full dispatch load: workers busy about 5% of the time). On a thread of its own
/// a driver runs as soon as its pipe is readable. It is also the thread that spawns every
/// worker, which matters for `PR_SET_PDEATHSIG`: the signal fires when the *thread* that
/// forked the child exits, and this thread lives exactly as long as the pool.
struct Dispatcher {
    runtime: tokio::runtime::Handle,
    /// Dropping or sending ends the thread, and with it its runtime.
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

impl Dispatcher {
    fn start() -> Dispatcher {
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

    fn stop(&self) {
        if let Some(stop) = self.stop.lock().unwrap().take() {
            let _ = stop.send(());
        }
    }
}

/// Removes a job from the queue when its submitter goes away before a driver took it.
struct Unqueue<'a, J: Job> {
    inner: &'a Inner<J>,
    id: u64,
    armed: bool,
}

impl<J: Job> Unqueue<'_, J> {
    fn remove_if_queued(&mut self, outcome: &'static str) {
        self.armed = false;
        let mut queue = self.inner.queue.lock().unwrap();
        if let Some(pos) = queue.jobs.iter().position(|p| p.id == self.id) {
            queue.jobs.remove(pos);
            metrics::counter!("forkpool_jobs_total", "outcome" => outcome).increment(1);
        }
    }
}

impl<J: Job> Drop for Unqueue<'_, J> {
    fn drop(&mut self) {
        if self.armed {
            self.remove_if_queued("cancelled");
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
    Replacement(Result<WorkerProcess, SpawnError>),
}

type Spawning = Pin<Box<dyn Future<Output = Result<WorkerProcess, SpawnError>> + Send>>;

impl<J: Job> Inner<J> {
    /// The life of one worker slot: start a worker, feed it jobs, replace it when it is lost or
    /// due for recycling, until the pool closes.
    async fn drive(
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
                                    spawning = Some(Box::pin(self.spawn_replacement()));
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
                        let cause = match line {
                            Ok(None) => worker.exit_cause().await,
                            Ok(Some(_)) => {
                                format!("unexpected output while idle; {}", worker.kill().await)
                            }
                            Err(e) => format!("{e}; {}", worker.kill().await),
                        };
                        tracing::warn!(pid = worker.pid, %cause, "idle worker lost");
                        break Some(crash_reason(&cause));
                    }
                    Event::Roll(done) => {
                        roll_done = Some(done);
                        if spawning.is_none() {
                            spawning = Some(Box::pin(self.spawn_replacement()));
                        }
                    }
                    Event::Replacement(Ok(new)) => {
                        let old = std::mem::replace(&mut worker, new);
                        let done = roll_done.take();
                        count_exit("recycled".into());
                        tokio::spawn(async move {
                            old.retire().await;
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
                Ok(Done {
                    output,
                    compute_ms: ms,
                }),
                "ok",
                None,
            ),
            Ok(Reply {
                result: Outcome::Err(e),
                ..
            }) => (Err(PoolError::JobFailed(e)), "error", None),
            Err(Stop::Deadline) => {
                let cause = worker.kill().await;
                tracing::warn!(pid, job = job.id, request_id = %job.request_id, %cause, "job passed its deadline; worker killed");
                let error = PoolError::Timeout(self.config.job_timeout);
                (Err(error), "timeout", Some("killed_timeout".into()))
            }
            Err(Stop::Cancelled) => {
                let cause = worker.kill().await;
                tracing::info!(pid, job = job.id, request_id = %job.request_id, %cause, "client went away; worker killed");
                (
                    Err(PoolError::ShuttingDown),
                    "cancelled",
                    Some("killed_cancel".into()),
                )
            }
            Err(Stop::Died) => {
                let cause = worker.exit_cause().await;
                tracing::warn!(pid, job = job.id, request_id = %job.request_id, %cause, "worker died mid-job");
                let exit = crash_reason(&cause);
                (
                    Err(PoolError::WorkerDied { pid, cause }),
                    "crashed",
                    Some(exit),
                )
            }
            Err(Stop::Protocol(error)) => {
                let cause = worker.kill().await;
                tracing::warn!(pid, job = job.id, request_id = %job.request_id, %error, %cause, "worker broke the protocol; killed");
                let error = PoolError::Protocol { pid, error };
                (Err(error), "crashed", Some("protocol".into()))
            }
        };
        match outcome {
            "ok" => self.metrics.jobs_ok.increment(1),
            _ => metrics::counter!("forkpool_jobs_total", "outcome" => outcome).increment(1),
        }
        // The receiver may be gone (timeout, hang-up); then nobody needs the answer.
        let _ = job.reply.send(answer);
        exit.map_or(Ok(()), Err)
    }

    fn set_busy(&self, slot: usize, job: u64) {
        let mut s = self.slots[slot].lock().unwrap();
        s.state = WorkerState::Busy;
        s.job = Some((job, Instant::now()));
    }

    fn set_state(&self, slot: usize, state: WorkerState, worker: Option<&WorkerProcess>) {
        let mut s = self.slots[slot].lock().unwrap();
        s.state = state;
        s.job = None;
        let pid = worker.map(|w| w.pid);
        if s.pid != pid {
            s.pid = pid;
            s.started_at = worker.map(|_| SystemTime::now());
        }
    }
}

/// Arguments of `forkpool worker` for job type `J`.
fn worker_args<J: Job>(config: &PoolConfig) -> Vec<String> {
    /// The command-line spelling of a clap value enum.
    fn flag(value: impl ValueEnum) -> String {
        let value = value.to_possible_value().expect("no variant is skipped");
        value.get_name().to_owned()
    }
    [
        "worker",
        "--kind",
        J::KIND,
        "--parent-pid",
        &std::process::id().to_string(),
        "--memory",
        &config.worker_memory.to_string(),
        "--nice",
        &config.worker_nice.to_string(),
        "--sched",
        &flag(config.worker_sched),
        "--max-line",
        &config.max_line.to_string(),
        "--log-format",
        &flag(config.log_format),
    ]
    .map(String::from)
    .to_vec()
}

/// Metric label for a worker that died by itself: `crashed_signal_9`, `crashed_exit_101`.
fn crash_reason(cause: &str) -> String {
    let number = cause
        .split_whitespace()
        .find(|w| w.parse::<i32>().is_ok())
        .unwrap_or("unknown");
    match cause.starts_with("killed") {
        true => format!("crashed_signal_{number}"),
        false => format!("crashed_exit_{number}"),
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

/// Resident set size of a process, from `/proc/PID/statm`.
fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
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

    #[test]
    fn crash_reasons() {
        assert_eq!(
            crash_reason("killed by signal 9 (SIGKILL)"),
            "crashed_signal_9"
        );
        assert_eq!(
            crash_reason("killed by signal 11 (SIGSEGV)"),
            "crashed_signal_11"
        );
        assert_eq!(crash_reason("exited with code 101"), "crashed_exit_101");
    }
}
