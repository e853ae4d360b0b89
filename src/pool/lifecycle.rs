//! The lifecycle of jobs and workers as types: why a worker was started ([`StartReason`]), how
//! a worker process ended ([`Exit`]), why a worker left its slot ([`WorkerExit`]) and how a job
//! ended ([`JobOutcome`]). Each knows its
//! metric labels and answers the questions the driver asks of it; nothing is decided by
//! reading a label back.

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use super::protocol::EXIT_OUT_OF_MEMORY;

/// Why a worker is being started: the `reason` label of
/// `<prefix>_worker_start_failures_total`, and a field of the log line of a failed start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartReason {
    /// The slot has no worker: at pool start, or after its worker was lost.
    EmptySlot,
    /// The slot's worker served its quota of jobs; it keeps serving until this one said hello.
    Recycle,
    /// A roll asked for a worker of a newer generation; the old one keeps serving meanwhile.
    Roll,
}

impl StartReason {
    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            StartReason::EmptySlot => "empty_slot",
            StartReason::Recycle => "recycle",
            StartReason::Roll => "roll",
        }
    }
}

/// How a worker process ended, as the error message, the log and the exit metric tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited by itself with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
    /// An allocation failed, which under a memory limit means the job needed more address
    /// space than the limit allows (the worker exits with [`EXIT_OUT_OF_MEMORY`]).
    OutOfMemory,
    /// The kernel's OOM killer took it (a SIGKILL the pool did not send, while the oom_kill
    /// count of the pool's cgroup rose; see `oom`).
    OomKilled,
    /// The status could not be read (`wait` failed).
    Unknown,
}

impl From<Option<ExitStatus>> for Exit {
    fn from(status: Option<ExitStatus>) -> Exit {
        match status.map(|s| (s.code(), s.signal())) {
            Some((Some(EXIT_OUT_OF_MEMORY), _)) => Exit::OutOfMemory,
            Some((Some(code), _)) => Exit::Code(code),
            Some((None, Some(signal))) => Exit::Signal(signal),
            _ => Exit::Unknown,
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Exit::Code(code) => write!(f, "exited with code {code}"),
            Exit::Signal(signal) => write!(f, "killed by signal {signal}{}", signal_name(signal)),
            Exit::OutOfMemory => write!(f, "ran out of memory (see the worker memory limit)"),
            Exit::OomKilled => write!(
                f,
                "killed by the OOM killer (memory ran out in its cgroup or on the machine)"
            ),
            Exit::Unknown => write!(f, "exit status unavailable"),
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        6 => " (SIGABRT)",
        9 => " (SIGKILL)",
        11 => " (SIGSEGV)",
        15 => " (SIGTERM)",
        _ => "",
    }
}

/// Why a worker left its slot: the `reason` (and, for a crash, `signal` or `code`) labels of
/// `<prefix>_worker_exits_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerExit {
    /// Replaced by a fresh worker (recycling after its job quota, or a roll) and retired.
    Recycled,
    /// Ended by itself, mid-job or while idle.
    Crashed(Exit),
    /// Killed because its job passed the deadline.
    KilledTimeout,
    /// Killed because the job's submitter went away.
    KilledCancel,
    /// Killed because it broke the protocol (overlong, malformed or unexpected line).
    Protocol,
    /// Killed because the driver that owned it panicked (a bug in the pool or in a `Job`'s
    /// output decoding); the slot was restarted.
    DriverPanic,
}

impl WorkerExit {
    /// The `reason` label.
    pub fn reason(self) -> &'static str {
        match self {
            WorkerExit::Recycled => "recycled",
            WorkerExit::Crashed(Exit::OutOfMemory) => "out_of_memory",
            WorkerExit::Crashed(Exit::OomKilled) => "oom_killed",
            WorkerExit::Crashed(_) => "crashed",
            WorkerExit::KilledTimeout => "killed_timeout",
            WorkerExit::KilledCancel => "killed_cancel",
            WorkerExit::Protocol => "protocol",
            WorkerExit::DriverPanic => "driver_panic",
        }
    }

    /// Every label of the exit counter: the reason, and for a crash the signal or exit code
    /// as a label of its own (one fact per label, so that a query can sum over either).
    pub fn labels(self) -> Vec<(&'static str, String)> {
        let mut labels = vec![("reason", self.reason().to_owned())];
        match self {
            WorkerExit::Crashed(Exit::Signal(signal)) => {
                labels.push(("signal", signal.to_string()))
            }
            WorkerExit::Crashed(Exit::Code(code)) => labels.push(("code", code.to_string())),
            _ => {}
        }
        labels
    }

    /// The worker failed by itself (rather than being killed by us or retired): when that
    /// happens again and again right after start, the driver backs off instead of respawning in
    /// a busy loop (a broken binary, a bad limit).
    pub fn is_failure(self) -> bool {
        matches!(self, WorkerExit::Crashed(_) | WorkerExit::Protocol)
    }
}

/// How a job ended: the `outcome` label of `<prefix>_jobs_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    /// The worker answered with the job's output.
    Ok,
    /// The worker answered with the job's own error.
    Error,
    /// The deadline passed, in the queue or while running.
    Timeout,
    /// The submitter went away, in the queue or while running.
    Cancelled,
    /// The worker died or broke the protocol mid-job.
    Crashed,
    /// The queue was full.
    RejectedFull,
    /// Refused, or dropped from the queue, because no worker can be started (the breaker).
    Unavailable,
    /// The driver running it panicked.
    DriverPanic,
}

impl JobOutcome {
    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            JobOutcome::Ok => "ok",
            JobOutcome::Error => "error",
            JobOutcome::Timeout => "timeout",
            JobOutcome::Cancelled => "cancelled",
            JobOutcome::Crashed => "crashed",
            JobOutcome::RejectedFull => "rejected_full",
            JobOutcome::Unavailable => "unavailable",
            JobOutcome::DriverPanic => "driver_panic",
        }
    }

    /// A job that its submitter stopped waiting for ended this way: past its deadline, or
    /// given up early.
    pub fn abandoned(past_deadline: bool) -> JobOutcome {
        match past_deadline {
            true => JobOutcome::Timeout,
            false => JobOutcome::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_read_and_label_alike() {
        let cases = [
            (
                9,
                "killed by signal 9 (SIGKILL)",
                vec![("reason", "crashed"), ("signal", "9")],
            ),
            (
                11,
                "killed by signal 11 (SIGSEGV)",
                vec![("reason", "crashed"), ("signal", "11")],
            ),
            (
                101 << 8,
                "exited with code 101",
                vec![("reason", "crashed"), ("code", "101")],
            ),
            (
                EXIT_OUT_OF_MEMORY << 8,
                "ran out of memory (see the worker memory limit)",
                vec![("reason", "out_of_memory")],
            ),
        ];
        for (raw, text, labels) in cases {
            let exit = Exit::from(Some(ExitStatus::from_raw(raw)));
            let got = WorkerExit::Crashed(exit).labels();
            let got: Vec<_> = got.iter().map(|(k, v)| (*k, v.as_str())).collect();
            assert_eq!((exit.to_string().as_str(), got), (text, labels));
        }
        let unknown = WorkerExit::Crashed(Exit::from(None)).labels();
        assert_eq!(unknown, [("reason", "crashed".to_owned())]);
        // Told apart from the SIGKILL it is by the cgroup's count (see `oom`), never by status.
        let oom = Exit::OomKilled;
        assert!(oom.to_string().starts_with("killed by the OOM killer"), "{oom}");
        let labels = WorkerExit::Crashed(oom).labels();
        assert_eq!(labels, [("reason", "oom_killed".to_owned())]);
    }

    #[test]
    fn only_failures_of_the_worker_itself_call_for_a_backoff() {
        let failures = [WorkerExit::Crashed(Exit::Signal(11)), WorkerExit::Protocol];
        let ours = [
            WorkerExit::Recycled,
            WorkerExit::KilledTimeout,
            WorkerExit::KilledCancel,
            WorkerExit::DriverPanic,
        ];
        assert!(failures.iter().all(|e| e.is_failure()));
        assert!(ours.iter().all(|e| !e.is_failure()));
    }
}
