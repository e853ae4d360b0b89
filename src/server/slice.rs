//! The time slice of the server's own threads under Linux's EEVDF scheduler (`--runtime-slice`).
//!
//! Since Linux 6.12 a normal (`SCHED_OTHER`) thread may ask for a slice of its own with
//! `sched_setattr`'s `sched_runtime` (0.1 to 100 ms; the default is the kernel's base slice,
//! 1.4 ms on a 2-CPU machine). A shorter slice gives the thread an earlier virtual deadline each
//! time it becomes runnable, so the scheduler picks it sooner among the eligible threads, and a
//! thread that wakes with a shorter slice than the running one preempts it at once (the
//! kernel's `PREEMPT_SHORT`) instead of waiting for the running one's slice to end, which the
//! kernel only checks at a tick (4 ms at HZ=250). The HTTP threads run for microseconds per
//! request, so a short slice costs them nothing; what they gain is a shorter wait behind other
//! normal threads (another program's, or the load tester's) on the same CPU.
//!
//! Failure modes: before 6.12 the kernel accepts the call and ignores the value; a kernel or a
//! seccomp policy that refuses `sched_setattr` leaves the kernel's slice, and the error is
//! returned for the caller to log. The nice value is kept (read first and passed along).

use std::time::Duration;

/// `struct sched_attr` of `sched_setattr(2)`, its first version (48 bytes), which every kernel
/// since 3.14 accepts. Neither libc nor rustix defines it.
#[repr(C)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// Sets the calling thread's slice to `slice` (kept in the normal class, at its nice value).
pub fn set_thread_slice(slice: Duration) -> std::io::Result<()> {
    let tid = rustix::thread::gettid();
    let nice = rustix::process::getpriority_process(Some(tid))?;
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: 0,
        nice,
        priority: 0,
        runtime: slice.as_nanos() as u64,
        deadline: 0,
        period: 0,
    };
    // SAFETY: `attr` is an initialised `sched_attr` of the size it states, which outlives the
    // call; pid 0 names the calling thread and flags must be 0.
    match unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slice the kernel holds for this thread, from `/proc/thread-self/sched` (present with
    /// the scheduler's debug statistics), ns.
    fn slice_ns() -> Option<u64> {
        let text = std::fs::read_to_string("/proc/thread-self/sched").ok()?;
        let line = text.lines().find(|l| l.starts_with("se.slice"))?;
        line.split(':').nth(1)?.trim().parse().ok()
    }

    /// Whether this kernel (6.12 or newer) takes a slice per thread.
    fn slices_per_thread() -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut parts = release.split(|c: char| !c.is_ascii_digit());
        let major: u32 = parts.next().unwrap().parse().unwrap();
        let minor: u32 = parts.next().unwrap().parse().unwrap();
        (major, minor) >= (6, 12)
    }

    #[test]
    fn a_thread_gets_its_slice_and_keeps_its_nice_value() {
        std::thread::spawn(|| {
            rustix::process::setpriority_process(None, 3).ok();
            let nice = rustix::process::getpriority_process(None).unwrap();
            set_thread_slice(Duration::from_micros(200)).unwrap();
            assert_eq!(rustix::process::getpriority_process(None).unwrap(), nice);
            // Kernels before 6.12 ignore the value; without the statistics none is shown.
            if let (true, Some(ns)) = (slices_per_thread(), slice_ns()) {
                assert_eq!(ns, 200_000);
            }
        })
        .join()
        .unwrap();
    }
}
