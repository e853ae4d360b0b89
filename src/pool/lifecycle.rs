//! The lifecycle of jobs and workers as types: why a worker was started ([`StartReason`]), why
//! a worker that still serves is replaced ([`Retirement`]), how a worker process ended
//! ([`Exit`]), why a worker left its slot ([`WorkerExit`]) and how a job ended
//! ([`JobOutcome`]). Each knows its
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
    /// An elastic pool grows: every live worker is busy and jobs wait (see
    /// [`PoolConfig::workers_min`](super::PoolConfig::workers_min)).
    Grow,
    /// The slot's worker is due for replacement; it keeps serving until this one said hello.
    Replace(Retirement),
}

impl StartReason {
    /// The `reason` label: `empty_slot`, `grow`, or what the replaced worker retires for (`recycle`
    /// for its job quota, as before there were other reasons; `rss`; `roll`).
    pub fn label(self) -> &'static str {
        match self {
            StartReason::EmptySlot => "empty_slot",
            StartReason::Grow => "grow",
            StartReason::Replace(Retirement::Jobs) => "recycle",
            StartReason::Replace(retirement) => retirement.label(),
        }
    }
}

/// Why a worker that still serves is replaced, make-before-break: its replacement is started,
/// and it retires once that one said hello. One mechanism for every reason; the reason is the
/// `cause` label of its exit (see [`WorkerExit::labels`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retirement {
    /// It served its quota of jobs ([`PoolConfig::max_jobs_per_worker`]).
    ///
    /// [`PoolConfig::max_jobs_per_worker`]: super::PoolConfig::max_jobs_per_worker
    Jobs,
    /// Its resident memory, read after a job, was over
    /// [`PoolConfig::max_rss_per_worker`](super::PoolConfig::max_rss_per_worker).
    Rss,
    /// A roll asked for a worker of a newer generation.
    Roll,
}

impl Retirement {
    /// The `cause` label.
    pub fn label(self) -> &'static str {
        match self {
            Retirement::Jobs => "jobs",
            Retirement::Rss => "rss",
            Retirement::Roll => "roll",
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

/// Why a worker left its slot: the `reason` (and, for a replacement, `cause`; for a crash,
/// `signal` or `code`) labels of `<prefix>_worker_exits_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerExit {
    /// Replaced by a fresh worker, make-before-break, and retired.
    Replaced(Retirement),
    /// Ended by itself, mid-job or while idle.
    Crashed(Exit),
    /// Killed because its job passed the deadline.
    KilledTimeout,
    /// Killed because the job's submitter went away.
    KilledCancel,
    /// Killed because it broke the protocol (overlong, malformed or unexpected line), or
    /// stopped reading its stdin while idle (the release line found its pipe full).
    Protocol,
    /// Retired by an elastic pool, idle for
    /// [`PoolConfig::worker_idle_timeout`](super::PoolConfig::worker_idle_timeout) with more
    /// workers live than [`PoolConfig::workers_min`](super::PoolConfig::workers_min).
    Idle,
    /// Killed because the driver that owned it panicked (a bug in the pool or in a `Job`'s
    /// output decoding); the slot was restarted.
    DriverPanic,
}

impl WorkerExit {
    /// The `reason` label.
    pub fn reason(self) -> &'static str {
        match self {
            WorkerExit::Replaced(_) => "recycled",
            WorkerExit::Crashed(Exit::OutOfMemory) => "out_of_memory",
            WorkerExit::Crashed(Exit::OomKilled) => "oom_killed",
            WorkerExit::Crashed(_) => "crashed",
            WorkerExit::KilledTimeout => "killed_timeout",
            WorkerExit::KilledCancel => "killed_cancel",
            WorkerExit::Protocol => "protocol",
            WorkerExit::DriverPanic => "driver_panic",
            WorkerExit::Idle => "idle",
        }
    }

    /// Every label of the exit counter: the reason, and as a label of its own (one fact per
    /// label, so that a query can sum over either) what a replaced worker retired for
    /// (`cause`: jobs, rss, roll) or the signal or exit code of a crash.
    pub fn labels(self) -> Vec<(&'static str, String)> {
        let mut labels = vec![("reason", self.reason().to_owned())];
        match self {
            WorkerExit::Replaced(retirement) => labels.push(("cause", retirement.label().into())),
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
    /// Refused at submission: the predicted wait and run already passed the submitter's own
    /// deadline.
    RejectedDeadline,
    /// Refused when a driver would have taken it: less of the submitter's own deadline was
    /// left than the job's run time. Never started.
    RejectedDispatch,
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
            JobOutcome::RejectedDeadline => "rejected_deadline",
            JobOutcome::RejectedDispatch => "rejected_dispatch",
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
            assert_eq!((exit.to_string().as_str(), labels_of(exit)), (text, owned(&labels)));
        }
        let unknown = WorkerExit::Crashed(Exit::from(None)).labels();
        assert_eq!(unknown, [("reason", "crashed".to_owned())]);
        // Told apart from the SIGKILL it is by the cgroup's count (see `oom`), never by status.
        let oom = Exit::OomKilled;
        assert!(oom.to_string().starts_with("killed by the OOM killer"), "{oom}");
        assert_eq!(labels_of(oom), owned(&[("reason", "oom_killed")]));
    }

    /// The labels of a crash that ended in `exit`.
    fn labels_of(exit: Exit) -> Vec<(&'static str, String)> {
        WorkerExit::Crashed(exit).labels()
    }

    fn owned(labels: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        labels.iter().map(|&(k, v)| (k, v.to_owned())).collect()
    }

    #[test]
    fn replacements_keep_their_reason_and_say_why_in_a_label_of_their_own() {
        let cases = [
            (Retirement::Jobs, "recycle"),
            (Retirement::Rss, "rss"),
            (Retirement::Roll, "roll"),
        ];
        for (retirement, start) in cases {
            let cause = retirement.label().to_owned();
            let labels = WorkerExit::Replaced(retirement).labels();
            assert_eq!(labels, [("reason", "recycled".into()), ("cause", cause)]);
            assert_eq!(StartReason::Replace(retirement).label(), start);
        }
        assert_eq!(StartReason::EmptySlot.label(), "empty_slot");
    }

    #[test]
    fn only_failures_of_the_worker_itself_call_for_a_backoff() {
        let failures = [WorkerExit::Crashed(Exit::Signal(11)), WorkerExit::Protocol];
        let ours = [
            WorkerExit::Replaced(Retirement::Rss),
            WorkerExit::KilledTimeout,
            WorkerExit::KilledCancel,
            WorkerExit::DriverPanic,
        ];
        assert!(failures.iter().all(|e| e.is_failure()));
        assert!(ours.iter().all(|e| !e.is_failure()));
    }
}
