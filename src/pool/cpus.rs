//! The CPUs this process may use, which caps how far an elastic pool grows: a worker beyond
//! them only competes for the same cores and costs memory.
//!
//! Three limits, the lowest wins: the cores online, the affinity mask (`sched_getaffinity`:
//! `taskset`, a container's cpuset, systemd's `CPUAffinity=`) and the cgroup v2 CPU quota
//! (`cpu.max` of this process's cgroup and its ancestors, as set by systemd's `CPUQuota=` or a
//! container's `--cpus`; "max" means none, a quota of 1.5 CPUs rounds up to 2). Read once, at
//! the pool's start.
//!
//! Failure modes: an unreadable `/proc/self/cgroup` or `cpu.max` (cgroup v1, no cgroup fs
//! mounted) means no quota is known, and a failed `sched_getaffinity` no mask: the limit is
//! then the next one, never zero. A quota or mask changed after start is not seen.

use std::path::Path;

use serde::Serialize;

/// What set an elastic pool's effective maximum, as `/status` and the start-up log name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxLimit {
    /// [`PoolConfig::workers`](super::PoolConfig::workers) itself: the CPUs allow more, or
    /// the pool is not elastic (a fixed pool is never capped).
    Configured,
    /// The cores online.
    Cores,
    /// The affinity mask.
    Affinity,
    /// The cgroup v2 CPU quota.
    CgroupQuota,
    /// [`PoolConfig::workers_min`](super::PoolConfig::workers_min), above what the CPUs
    /// allow: the minimum is kept as asked.
    Minimum,
}

impl MaxLimit {
    /// The snake_case name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            MaxLimit::Configured => "configured",
            MaxLimit::Cores => "cores",
            MaxLimit::Affinity => "affinity",
            MaxLimit::CgroupQuota => "cgroup_quota",
            MaxLimit::Minimum => "minimum",
        }
    }
}

/// The CPUs this process may use now, and which limit says so.
pub(super) fn usable() -> (usize, MaxLimit) {
    let cores = online_cores();
    let mut best = (cores, MaxLimit::Cores);
    for (cpus, limit) in [
        (affinity(), MaxLimit::Affinity),
        (cgroup_quota(Path::new("/sys/fs/cgroup")), MaxLimit::CgroupQuota),
    ] {
        if let Some(cpus) = cpus.filter(|&cpus| cpus <= best.0) {
            best = (cpus, limit);
        }
    }
    best
}

/// The effective maximum of a pool of `min` to `max` workers, and what set it: `max` for a
/// fixed pool (`min == max`), else capped by the CPUs, but never below `min`.
pub(super) fn effective_max(min: usize, max: usize) -> (usize, MaxLimit) {
    if min >= max {
        return (max, MaxLimit::Configured);
    }
    let (cpus, limit) = usable();
    if max <= cpus {
        (max, MaxLimit::Configured)
    } else if min > cpus {
        (min, MaxLimit::Minimum)
    } else {
        (cpus, limit)
    }
}

fn online_cores() -> usize {
    // SAFETY: sysconf reads a system value and has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(1)
}

/// CPUs in this thread's affinity mask (the process's, inherited by every thread and worker).
fn affinity() -> Option<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes at most
    // `size_of::<cpu_set_t>()` bytes into it, and CPU_COUNT only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        usize::try_from(libc::CPU_COUNT(&set)).ok().filter(|&n| n > 0)
    }
}

/// The lowest CPU quota of this process's cgroup v2 and its ancestors under `root`, rounded
/// up to whole CPUs; `None` when none is set or none can be read.
fn cgroup_quota(root: &Path) -> Option<usize> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    // cgroup v2 has one line, `0::/path`; a v1 hierarchy has no quota file of this form.
    let path = cgroup.lines().find_map(|line| line.strip_prefix("0::"))?;
    let mut dir = root.join(path.trim_start_matches('/'));
    let mut lowest: Option<usize> = None;
    while dir.starts_with(root) {
        if let Some(cpus) = quota_of(&dir.join("cpu.max")) {
            lowest = Some(lowest.map_or(cpus, |l| l.min(cpus)));
        }
        if !dir.pop() {
            break;
        }
    }
    lowest
}

/// `cpu.max` ("QUOTA PERIOD" in microseconds, or "max PERIOD") as whole CPUs, rounded up.
fn quota_of(file: &Path) -> Option<usize> {
    parse_cpu_max(&std::fs::read_to_string(file).ok()?)
}

fn parse_cpu_max(text: &str) -> Option<usize> {
    let mut fields = text.split_whitespace();
    let quota: u64 = fields.next()?.parse().ok()?;
    let period: u64 = fields.next()?.parse().ok().filter(|&p| p > 0)?;
    usize::try_from(quota.div_ceil(period).max(1)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_rounds_a_quota_up_to_whole_cpus_and_max_is_no_quota() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("100000 100000\n"), Some(1));
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(2));
        assert_eq!(parse_cpu_max("10000 100000\n"), Some(1));
        assert_eq!(parse_cpu_max("400000 100000"), Some(4));
        assert_eq!(parse_cpu_max("garbage"), None);
    }

    #[test]
    fn a_fixed_pool_is_never_capped_and_an_elastic_one_never_below_its_minimum() {
        assert_eq!(effective_max(64, 64), (64, MaxLimit::Configured));
        let (cpus, _) = usable();
        assert_eq!(effective_max(0, 1), (1, MaxLimit::Configured));
        let (max, _) = effective_max(0, cpus + 10);
        assert_eq!(max, cpus);
        assert_eq!(effective_max(cpus + 1, cpus + 10), (cpus + 1, MaxLimit::Minimum));
    }
}
