//! Where the CPU went during a phase: for every thread of the server, its workers and this
//! program, the run time, the run-queue wait and the number of times it ran, from
//! `/proc/PID/task/TID/schedstat` read before and after; with its name (`comm`), scheduling
//! class and nice value (`stat`) and the CPUs it may run on (`status`).
//!
//! The waits are counts kept by the kernel, so they hold on a noisy machine where the tail
//! latencies do not. Failure modes: a thread that ended during the phase is left out; one
//! that started counts from zero; a kernel without schedstats (`CONFIG_SCHEDSTATS` off leaves
//! the file absent) gives no rows.

use std::collections::HashMap;

use serde::Serialize;

/// Which process a thread belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Owner {
    /// The forkpool server.
    Server,
    /// One of its worker processes.
    Worker,
    /// This load tester (its probe thread among them).
    Loadtest,
}

/// One thread's counters at one moment.
#[derive(Debug, Clone, Copy)]
struct Counters {
    run_ns: u64,
    wait_ns: u64,
    slices: u64,
}

/// What one thread did during a phase.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadWait {
    /// Its process.
    pub owner: Owner,
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// The thread's name (`/proc/.../comm`).
    pub name: String,
    /// Scheduling class: `other`, `fifo`, `rr`, `batch`, `idle` or `deadline`.
    pub class: &'static str,
    /// Nice value.
    pub nice: i32,
    /// CPUs it may run on (`Cpus_allowed_list`).
    pub cpus: String,
    /// CPU time during the phase.
    pub run_ms: f64,
    /// Time runnable but waiting for a CPU during the phase.
    pub wait_ms: f64,
    /// Times it was put on a CPU during the phase.
    pub slices: u64,
}

/// The counters of every thread of the given processes, taken at the start of a phase.
pub struct Snapshot {
    threads: HashMap<u32, Counters>,
    procs: Vec<(Owner, u32)>,
    /// The machine's steal time then, ns (`None` where `/proc/stat` has no steal column).
    steal_ns: Option<u64>,
}

impl Snapshot {
    /// Reads the counters of every thread of `procs` now.
    pub fn take(procs: &[(Owner, u32)]) -> Snapshot {
        let threads = procs
            .iter()
            .flat_map(|&(_, pid)| tids(pid).into_iter().map(move |tid| (pid, tid)))
            .filter_map(|(pid, tid)| Some((tid, counters(pid, tid)?)))
            .collect();
        Snapshot {
            threads,
            procs: procs.to_vec(),
            steal_ns: steal_ns(),
        }
    }

    /// CPU time the hypervisor took from this virtual machine's CPUs since [`Snapshot::take`],
    /// ms, all CPUs together: time a thread seemed to run (or a CPU seemed idle) while its
    /// virtual CPU was not running at all. No thread's run-queue wait shows it. The kernel
    /// counts it in ticks (10 ms at USER_HZ 100), so a phase's figure is that coarse.
    pub fn stolen_ms(&self) -> Option<f64> {
        Some(steal_ns()?.saturating_sub(self.steal_ns?) as f64 / 1e6)
    }

    /// What each thread did since [`Snapshot::take`], busiest waiters first.
    pub fn since(&self) -> Vec<ThreadWait> {
        let mut rows: Vec<ThreadWait> = self
            .procs
            .iter()
            .flat_map(|&(owner, pid)| tids(pid).into_iter().map(move |tid| (owner, pid, tid)))
            .filter_map(|(owner, pid, tid)| self.row(owner, pid, tid))
            .collect();
        rows.sort_by(|a, b| b.wait_ms.total_cmp(&a.wait_ms));
        rows
    }

    fn row(&self, owner: Owner, pid: u32, tid: u32) -> Option<ThreadWait> {
        let now = counters(pid, tid)?;
        let zero = Counters {
            run_ns: 0,
            wait_ns: 0,
            slices: 0,
        };
        let before = self.threads.get(&tid).copied().unwrap_or(zero);
        let (class, nice) = class_and_nice(pid, tid)?;
        let task = format!("/proc/{pid}/task/{tid}");
        Some(ThreadWait {
            owner,
            pid,
            tid,
            name: std::fs::read_to_string(format!("{task}/comm"))
                .ok()?
                .trim()
                .to_owned(),
            class,
            nice,
            cpus: cpus_allowed(&task).unwrap_or_default(),
            run_ms: now.run_ns.saturating_sub(before.run_ns) as f64 / 1e6,
            wait_ms: now.wait_ns.saturating_sub(before.wait_ns) as f64 / 1e6,
            slices: now.slices.saturating_sub(before.slices),
        })
    }
}

/// The steal time of all CPUs so far, ns: the eighth number of `/proc/stat`'s `cpu` line, in
/// USER_HZ ticks.
fn steal_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: u64 = stat
        .lines()
        .next()?
        .split_whitespace()
        .nth(8)?
        .parse()
        .ok()?;
    let per_s = rustix::param::clock_ticks_per_second();
    Some(ticks * 1_000_000_000 / per_s)
}

/// The thread ids of `pid` (none if it is gone).
fn tids(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn counters(pid: u32, tid: u32) -> Option<Counters> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    Some(Counters {
        run_ns: fields.next()??,
        wait_ns: fields.next()??,
        slices: fields.next()??,
    })
}

/// Class and nice from `stat` (fields 41 and 19, counted after the parenthesised name, which
/// may itself hold spaces).
fn class_and_nice(pid: u32, tid: u32) -> Option<(&'static str, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    let rest: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    // `rest[0]` is field 3 (state).
    let nice = rest.get(19 - 3)?.parse().ok()?;
    let class = match rest.get(41 - 3)?.parse::<u32>().ok()? {
        0 => "other",
        1 => "fifo",
        2 => "rr",
        3 => "batch",
        5 => "idle",
        6 => "deadline",
        _ => "?",
    };
    Some((class, nice))
}

fn cpus_allowed(task: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("{task}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_owned())
}

/// The calling thread's own run-queue wait, read as often as wanted from one open
/// `/proc/thread-self/schedstat`: a `pread` each time, one system call and no allocation, so
/// it can bracket every probe. The file names the thread that opened it, wherever it is read.
pub struct OwnWait {
    file: std::fs::File,
}

impl OwnWait {
    /// Opens the calling thread's `schedstat`; `None` without schedstats.
    pub fn open() -> Option<OwnWait> {
        let file = std::fs::File::open("/proc/thread-self/schedstat").ok()?;
        Some(OwnWait { file })
    }

    /// Nanoseconds the thread has spent runnable but not running, so far.
    pub fn ns(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        // Three numbers of at most 20 digits each and their separators.
        let mut buf = [0u8; 64];
        let len = self.file.read_at(&mut buf, 0).ok()?;
        let text = std::str::from_utf8(&buf[..len]).ok()?;
        text.split_whitespace().nth(1)?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_this_process_threads_and_their_cpu_time() {
        let me = std::process::id();
        let snapshot = Snapshot::take(&[(Owner::Loadtest, me)]);
        let (spun, done) = std::sync::mpsc::channel();
        let spin = std::thread::Builder::new()
            .name("spinner".into())
            .spawn(move || {
                // Spins until it has had 30 ms of CPU, however long the machine takes to give it.
                while crate::tail::lean::thread_cpu() < std::time::Duration::from_millis(30) {
                    std::hint::spin_loop();
                }
                spun.send(()).unwrap();
                std::thread::park();
            })
            .unwrap();
        done.recv().unwrap();
        let rows = snapshot.since();
        spin.thread().unpark();
        spin.join().unwrap();
        let spinner = rows.iter().find(|r| r.name == "spinner").expect("listed");
        assert_eq!((spinner.class, spinner.owner), ("other", Owner::Loadtest));
        assert!(spinner.run_ms >= 25.0, "{spinner:?}");
        assert!(spinner.slices >= 1 && !spinner.cpus.is_empty());
    }

    #[test]
    fn own_wait_reads_the_thread_that_opened_it_wherever_it_is_read() {
        let mine = OwnWait::open().expect("schedstats are on");
        let (pid, tid) = (
            std::process::id(),
            rustix::thread::gettid().as_raw_nonzero(),
        );
        // This thread is blocked in `join` while the other one reads, so its counters stand
        // still: both readings must be the same number, this thread's, not the reader's.
        let reader = std::thread::spawn(move || {
            let direct = counters(pid, tid.get() as u32).unwrap().wait_ns;
            (direct, mine.ns().unwrap())
        });
        let (direct, through) = reader.join().unwrap();
        assert_eq!(direct, through);
    }
}
