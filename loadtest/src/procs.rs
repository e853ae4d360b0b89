//! Processes as `/proc` shows them, for the lifecycle scenarios' leak checks and for following
//! servers that are not this program's own children: the process table, a process's
//! descendants, its open descriptors, and reaping or stopping a child by its pid.
//!
//! The lifecycle scenarios make this program a *child subreaper*: a server started by a
//! predecessor (SIGUSR2) is re-parented here when that predecessor exits, as are any workers
//! or `ls` an exiting server left behind. So every process of every generation stays in this
//! program's subtree, where a leak can be seen, and the zombie of each server that exits is
//! this program's to reap (by its pid only; other children are left to whoever waits on them).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, waitpid, Pid, Signal, WaitOptions};

/// How often the waits here look again.
const POLL: Duration = Duration::from_millis(5);

/// One line of the process table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    /// Its process id.
    pub pid: u32,
    /// Its parent's pid.
    pub ppid: u32,
    /// The command name (`comm`), e.g. `forkpool` or `ls`.
    pub name: String,
    /// The state letter: `R`, `S`, `D`, `Z` (zombie), ...
    pub state: char,
}

impl Proc {
    /// `/proc/PID/stat`, or `None` if the process is gone.
    pub fn read(pid: u32) -> Option<Proc> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Proc::parse(pid, &text)
    }

    /// Parses a `stat` line: `pid (comm) state ppid ...`; the name may hold spaces and
    /// parentheses, so it runs to the last `)`.
    fn parse(pid: u32, text: &str) -> Option<Proc> {
        let (open, close) = (text.find('(')?, text.rfind(')')?);
        let mut rest = text.get(close + 2..)?.split_whitespace();
        let state = rest.next()?.chars().next()?;
        let ppid = rest.next()?.parse().ok()?;
        Some(Proc {
            pid,
            ppid,
            name: text[open + 1..close].to_owned(),
            state,
        })
    }

    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }

    /// For a report: `pid 123 forkpool (Z, parent 45)`.
    pub fn describe(&self) -> String {
        format!(
            "pid {} {} ({}, parent {})",
            self.pid, self.name, self.state, self.ppid
        )
    }
}

/// Every process's line, in pid order.
pub fn table() -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut procs: Vec<Proc> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(Proc::read)
        .collect();
    procs.sort_by_key(|p| p.pid);
    procs
}

/// The descendants of `root` (not `root` itself), leaving out the subtrees of `skip`.
pub fn descendants(root: u32, skip: &[u32]) -> Vec<Proc> {
    let procs = table();
    let mut children: BTreeMap<u32, Vec<&Proc>> = BTreeMap::new();
    for p in &procs {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut found = Vec::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        for &child in children.get(&pid).map_or(&[][..], Vec::as_slice) {
            if !skip.contains(&child.pid) {
                found.push(child.clone());
                stack.push(child.pid);
            }
        }
    }
    found.sort_by_key(|p| p.pid);
    found
}

/// The descriptors `pid` has open, counted by kind (`socket`, `pipe`, `anon_inode:[eventpoll]`,
/// a file's path, ...).
pub fn fds(pid: u32) -> Option<BTreeMap<String, usize>> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let mut kinds = BTreeMap::new();
    for entry in entries.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        // `socket:[12345]` and `pipe:[678]` differ by inode only: count them as one kind.
        let kind = match target.split_once(":[") {
            Some((kind, _)) if kind == "socket" || kind == "pipe" => kind.to_owned(),
            _ => target,
        };
        *kinds.entry(kind).or_insert(0) += 1;
    }
    Some(kinds)
}

/// Makes this process the reaper of its orphaned descendants (see the module doc).
pub fn become_subreaper() -> std::io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    Ok(())
}

/// Reaps `pid` if it is a child of this process that has exited; true once it is gone
/// (reaped now or before, or not a child of ours and no longer in `/proc`).
pub fn reap(pid: u32) -> bool {
    let Some(raw) = Pid::from_raw(pid as i32) else {
        return true;
    };
    match waitpid(Some(raw), WaitOptions::NOHANG) {
        Ok(Some(_)) => true,
        Ok(None) => false,
        // Not our child: gone once /proc no longer lists it (or lists its zombie).
        Err(_) => Proc::read(pid).is_none_or(|p| p.is_zombie()),
    }
}

/// Calls `check` every `every` until it gives a value, for up to `limit`.
pub async fn poll_until<T>(
    limit: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// Waits up to `limit` for `pid` to be gone ([`reap`]); how long it took, or `None`.
pub async fn wait_gone(pid: u32, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    poll_until(limit, POLL, || reap(pid).then(|| started.elapsed())).await
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: Signal) -> std::io::Result<()> {
    let pid = Pid::from_raw(pid as i32).ok_or_else(|| std::io::Error::other("pid 0"))?;
    kill_process(pid, signal)?;
    Ok(())
}

/// SIGTERM, up to `grace` for `pid` to be gone, then SIGKILL and a last wait. Returns how long
/// it took to go after SIGTERM, or `None` if it had to be killed.
pub async fn stop(pid: u32, grace: Duration) -> Option<Duration> {
    if reap(pid) {
        return Some(Duration::ZERO);
    }
    let _ = signal(pid, Signal::TERM);
    if let Some(took) = wait_gone(pid, grace).await {
        return Some(took);
    }
    let _ = signal(pid, Signal::KILL);
    wait_gone(pid, Duration::from_secs(5)).await;
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names() {
        let p = Proc::parse(42, "42 (a (b) c) Z 7 42 42 0 -1").unwrap();
        assert_eq!(
            (p.pid, p.ppid, p.name.as_str(), p.state),
            (42, 7, "a (b) c", 'Z')
        );
        assert!(p.is_zombie());
        assert_eq!(Proc::parse(1, "garbage"), None);
    }

    #[test]
    #[allow(clippy::zombie_processes)] // reaped by its pid, through `reap`
    fn this_process_is_seen_with_its_descendants_and_fds() {
        let me = std::process::id();
        let proc = Proc::read(me).unwrap();
        assert_eq!(proc.pid, me);
        assert!(!proc.is_zombie());
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let found = descendants(me, &[]);
        assert!(found.iter().any(|p| p.pid == child.id()), "{found:?}");
        assert!(!descendants(me, &[child.id()])
            .iter()
            .any(|p| p.pid == child.id()));
        assert!(!reap(child.id()));
        child.kill().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !reap(child.id()) && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        assert!(Proc::read(child.id()).is_none());
        assert!(fds(me).unwrap().values().sum::<usize>() >= 3);
    }
}
