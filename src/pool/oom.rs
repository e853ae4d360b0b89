//! Telling the kernel's OOM killer apart from any other SIGKILL, without dmesg: the kernel
//! counts the processes its OOM killer took in each memory cgroup (`oom_kill` in cgroup v2's
//! `memory.events`, or in cgroup v1's `memory.oom_control`), and the pool reads the count of its
//! own cgroup, which its workers share (found from `/proc/self/cgroup` under `/sys/fs/cgroup`).
//!
//! The count is read when the pool starts and again whenever a worker turns out to have died
//! of a SIGKILL the pool did not send. If it rose past what the pool has accounted for, that
//! worker was the OOM killer's, and one kill is accounted: two workers taken together each
//! read as OOM kills, and a later `kill -9` reads as signal 9 again. Reading costs nothing
//! while no worker dies, so no job pays for it.
//!
//! Failure modes: no cgroup with a readable count (cgroup v2 without the memory controller,
//! cgroup v1 before Linux 4.13, no `/sys/fs/cgroup`): every SIGKILL reads as signal 9, as
//! before, and the pool says so once at start. The count is the cgroup's, not the worker's:
//! an OOM kill of another process in it (an `ls` of the server, a process a job started)
//! leaves one kill unaccounted, which the next SIGKILL of a worker from outside would be taken
//! for. Under the systemd unit the cgroup holds forkpool alone.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::lifecycle::Exit;

/// Where the kernel mounts the cgroup hierarchies.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// SIGKILL: what the OOM killer sends.
const SIGKILL: i32 = 9;

/// The pool's cgroup's OOM kill count, and how much of it the pool has accounted for.
#[derive(Debug)]
pub(super) struct OomWatch {
    /// The file with the `oom_kill` count; `None` when none is readable.
    file: Option<PathBuf>,
    /// Kills already accounted: the count at start, plus one per worker found OOM-killed.
    accounted: AtomicU64,
}

impl OomWatch {
    /// Finds this process's cgroup and reads its count; says at `info` which file it watches,
    /// or that OOM kills will read as signal 9.
    pub(super) fn find() -> OomWatch {
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let file = candidates(&cgroup, Path::new(CGROUP_ROOT))
            .into_iter()
            .find(|file| read_count(file).is_some());
        match &file {
            Some(file) => tracing::info!(file = %file.display(),
                "workers killed by the OOM killer are told apart by their cgroup's oom_kill count"),
            None => tracing::info!(
                "no cgroup oom_kill count is readable: a worker the OOM killer takes reads as signal 9"
            ),
        }
        OomWatch::at(file)
    }

    /// Watches `file` (`None`: nothing), counting from its value now.
    pub(super) fn at(file: Option<PathBuf>) -> OomWatch {
        let now = file.as_deref().and_then(read_count).unwrap_or(0);
        OomWatch {
            file,
            accounted: AtomicU64::new(now),
        }
    }

    /// How a worker that died by itself ended: a SIGKILL is [`Exit::OomKilled`] when the count
    /// rose past what is accounted for (and one more kill is accounted then).
    pub(super) fn explain(&self, exit: Exit) -> Exit {
        if exit != Exit::Signal(SIGKILL) {
            return exit;
        }
        let Some(now) = self.file.as_deref().and_then(read_count) else {
            return exit;
        };
        let unaccounted = |accounted: u64| (now > accounted).then_some(accounted + 1);
        match self
            .accounted
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, unaccounted)
        {
            Ok(_) => Exit::OomKilled,
            Err(_) => exit,
        }
    }
}

/// The files that may hold the count of the cgroup described by `proc_self_cgroup` (the text
/// of `/proc/self/cgroup`), best first: cgroup v2's `memory.events` (under `root` itself, or
/// under `root/unified` on a hybrid system), then cgroup v1's `memory.oom_control`.
fn candidates(proc_self_cgroup: &str, root: &Path) -> Vec<PathBuf> {
    let mut v2 = Vec::new();
    let mut v1 = Vec::new();
    for line in proc_self_cgroup.lines() {
        // `hierarchy-id:controllers:path`; the path may itself contain `:`.
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let relative = path.trim_start_matches('/');
        if id == "0" && controllers.is_empty() {
            v2.push(root.join(relative).join("memory.events"));
            v2.push(root.join("unified").join(relative).join("memory.events"));
        } else if controllers.split(',').any(|c| c == "memory") {
            v1.push(root.join("memory").join(relative).join("memory.oom_control"));
        }
    }
    v2.extend(v1);
    v2
}

/// The `oom_kill` count in `file`, if it is readable and has one.
fn read_count(file: &Path) -> Option<u64> {
    oom_kills(&std::fs::read_to_string(file).ok()?)
}

/// The `oom_kill` count in the text of `memory.events` or `memory.oom_control` (lines of
/// `key value`).
fn oom_kills(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(key, _)| *key == "oom_kill")
        .and_then(|(_, value)| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_is_read_from_cgroup_v2_events_and_v1_oom_control() {
        let v2 = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(oom_kills(v2), Some(2));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 7\n";
        assert_eq!(oom_kills(v1), Some(7));
        // Before Linux 4.13, v1 has no count; a garbled value is no count either.
        assert_eq!(oom_kills("oom_kill_disable 0\nunder_oom 0\n"), None);
        assert_eq!(oom_kills("oom_kill many\n"), None);
        assert_eq!(oom_kills(""), None);
    }

    #[test]
    fn the_cgroup_is_found_from_proc_self_cgroup_v2_first() {
        let root = Path::new("/cg");
        let v2 = candidates("0::/system.slice/forkpool.service\n", root);
        assert_eq!(
            v2,
            [
                "/cg/system.slice/forkpool.service/memory.events",
                "/cg/unified/system.slice/forkpool.service/memory.events",
            ]
            .map(PathBuf::from)
        );
        // A hybrid system: v1 controllers (memory alone or with others), then the v2 line.
        let hybrid = "9:name=systemd:/\n4:memory:/box/a:b\n2:cpu,cpuacct:/\n0::/\n";
        assert_eq!(
            candidates(hybrid, root),
            [
                "/cg/memory.events",
                "/cg/unified/memory.events",
                "/cg/memory/box/a:b/memory.oom_control",
            ]
            .map(PathBuf::from)
        );
        assert!(candidates("", root).is_empty());
    }

    #[test]
    fn a_sigkill_is_an_oom_kill_only_while_the_count_has_kills_unaccounted() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let set = |n: u64| std::fs::write(file.path(), format!("oom 0\noom_kill {n}\n")).unwrap();
        set(4);
        let watch = OomWatch::at(Some(file.path().to_owned()));
        let kill = Exit::Signal(SIGKILL);
        assert_eq!(watch.explain(kill), kill, "no kill since the start");
        set(6);
        // Two workers taken together: each is one of the two kills.
        assert_eq!(watch.explain(kill), Exit::OomKilled);
        assert_eq!(watch.explain(kill), Exit::OomKilled);
        assert_eq!(watch.explain(kill), kill, "both kills are accounted for");
        // Other ends never consume a kill.
        set(7);
        for other in [Exit::Signal(11), Exit::Code(1), Exit::OutOfMemory] {
            assert_eq!(watch.explain(other), other);
        }
        assert_eq!(watch.explain(kill), Exit::OomKilled);
        // Without a readable count, a SIGKILL stays one.
        assert_eq!(OomWatch::at(None).explain(kill), kill);
    }
}
