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
//! The drivers run on a thread of their own (see `driver::Dispatcher`), so HTTP load on the
//! server's runtime never delays the next job, and the workers' parent thread lives exactly as
//! long as the pool. Files: `driver` (the per-slot loop), `process` (one child: spawn,
//! handshake, kill), `protocol` (messages and framing), `status` (what /status shows),
//! `worker` (the worker side).
//!
//! Failure modes and what happens:
//! - queue full: `QueueFull` (503) at once; nothing queues without bound.
//! - deadline (queue wait + run): dropped from the queue, or the worker is killed and replaced.
//! - worker dies mid-job: that job fails with the exit code or signal; the slot respawns.
//! - worker dies at start: respawned with exponential backoff, never a busy loop.
//! - worker breaks the protocol (overlong or malformed line): killed and replaced.
//! - recycling (`max_jobs_per_worker`, SIGHUP roll): the replacement is started and has said
//!   hello before the old worker retires, so capacity never dips.

mod driver;
mod process;
pub mod protocol;
mod status;
pub mod worker;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::config::{LogFormat, WorkerSched};
use driver::Dispatcher;
pub use process::Exit;
use process::SpawnSpec;
use protocol::{Job, ProtocolError};
use status::Slot;
pub use status::{rss_bytes, WorkerState, WorkerStatus};

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
    WorkerDied { pid: u32, cause: Exit },
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

struct Inner<J: Job> {
    config: PoolConfig,
    spec: SpawnSpec,
    queue: Mutex<Queue<J>>,
    /// Wakes an idle driver when a job is queued (and all of them at shutdown).
    job_ready: Notify,
    slots: Vec<Mutex<Slot>>,
    /// One per driver: a roll request, answered once that slot's new worker replaced the old.
    rolls: Vec<mpsc::UnboundedSender<oneshot::Sender<()>>>,
    /// One permit: a worker started while the one it replaces still lives (recycling, a roll)
    /// holds it until the old one has exited, so that at most `workers + 1` are ever alive,
    /// however recycling and a roll overlap.
    spare: Arc<Semaphore>,
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
                .map(|_| Mutex::new(Slot::new()))
                .collect(),
            queue: Mutex::new(Queue {
                jobs: VecDeque::with_capacity(config.queue),
                closed: false,
            }),
            config,
            spec,
            job_ready: Notify::new(),
            rolls,
            spare: Arc::new(Semaphore::new(1)),
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
        status::rows(&self.inner.slots)
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
    /// running job is done. At most one extra worker is alive at any moment (see `spare`).
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
