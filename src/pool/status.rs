//! What the pool shows of its worker slots: the live bookkeeping each driver updates, and the
//! rows `/status` and `/metrics` are built from.

use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::inspect::rss_bytes;

/// What `/status` and `/metrics` show of one worker slot.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerStatus {
    /// Index of the slot, stable for the pool's life.
    pub slot: usize,
    /// The worker now in the slot; `None` while starting or down.
    pub pid: Option<u32>,
    /// Where the slot's worker is in its life: starting, idle, busy, down or stopped.
    pub state: WorkerState,
    /// Id of the job running now.
    pub job: Option<u64>,
    /// How long that job has been running.
    pub job_age_ms: Option<f64>,
    /// Jobs this worker (not the slot) has answered.
    pub jobs_served: u64,
    /// Resident memory of the worker, from `/proc`.
    pub rss_bytes: Option<u64>,
    /// Unix time in seconds.
    pub started_at: Option<f64>,
    /// The package version the worker reported in its hello: which binary it runs, so that
    /// a roll onto a new release can be followed slot by slot.
    pub version: Option<String>,
    /// The roll generation the worker was started at (see [`RollStatus`]).
    ///
    /// [`RollStatus`]: super::RollStatus
    pub generation: Option<u64>,
}

/// Where a slot's worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Spawned, hello not yet received.
    Starting,
    /// Up, waiting for a job.
    Idle,
    /// Running a job.
    Busy,
    /// Waiting out a backoff after failed starts.
    Down,
    /// Retired: the pool is closed.
    Stopped,
    /// No worker wanted: an elastic pool below its maximum (never started, or its worker
    /// retired idle). It starts one when the pool grows.
    Dormant,
}

impl WorkerState {
    /// Every state, in the order of a worker's life; `/metrics` reports a count for each, zeros
    /// included, so that a series never disappears.
    pub const ALL: [WorkerState; 6] = [
        WorkerState::Starting,
        WorkerState::Idle,
        WorkerState::Busy,
        WorkerState::Down,
        WorkerState::Stopped,
        WorkerState::Dormant,
    ];

    /// The state as `/status` and the `state` label of `/metrics` spell it (lowercase).
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Idle => "idle",
            WorkerState::Busy => "busy",
            WorkerState::Down => "down",
            WorkerState::Stopped => "stopped",
            WorkerState::Dormant => "dormant",
        }
    }
}

/// Live bookkeeping of one slot, updated by its driver.
pub(super) struct Slot {
    /// The worker now in the slot.
    pub(super) pid: Option<u32>,
    pub(super) state: WorkerState,
    /// The running job's id and start.
    pub(super) job: Option<(u64, Instant)>,
    /// Jobs the current worker has answered.
    pub(super) jobs_served: u64,
    /// When the current worker said hello.
    pub(super) started_at: Option<SystemTime>,
    /// The current worker's package version, from its hello.
    pub(super) version: Option<String>,
    /// The roll generation the current worker was started at.
    pub(super) generation: Option<u64>,
}

/// What a slot's row shows of the worker in it.
pub(super) struct SlotWorker<'a> {
    pub(super) pid: u32,
    pub(super) version: &'a str,
    pub(super) generation: u64,
}

impl Slot {
    /// A slot with no worker yet, `state` `starting` or (an elastic pool's spare) `dormant`.
    pub(super) fn new(state: WorkerState) -> Slot {
        Slot {
            pid: None,
            state,
            job: None,
            jobs_served: 0,
            started_at: None,
            version: None,
            generation: None,
        }
    }

    pub(super) fn busy(&mut self, job: u64) {
        self.state = WorkerState::Busy;
        self.job = Some((job, Instant::now()));
    }

    /// Any state but busy; `worker` is the worker now in the slot, if any. A new worker starts
    /// its own row: start time now, no job served yet.
    pub(super) fn set(&mut self, state: WorkerState, worker: Option<SlotWorker>) {
        self.state = state;
        self.job = None;
        let pid = worker.as_ref().map(|w| w.pid);
        if self.pid != pid {
            self.pid = pid;
            self.started_at = pid.map(|_| SystemTime::now());
            self.jobs_served = 0;
            self.version = worker.as_ref().map(|w| w.version.to_owned());
            self.generation = worker.map(|w| w.generation);
        }
    }
}

/// One row per slot.
pub(super) fn rows(slots: &[Mutex<Slot>]) -> Vec<WorkerStatus> {
    let now = Instant::now();
    slots
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
                version: s.version.clone(),
                generation: s.generation,
            }
        })
        .collect()
}
