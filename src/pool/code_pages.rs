//! A worker lets go of the code pages its start-up mapped, once it has said hello, and of
//! those its jobs mapped, when the pool tells it that it has been idle a while after them.
//!
//! Why: a worker is the whole program re-executed. Its start (the program's self-relocation,
//! libc and Rust runtime set-up, argument parsing, logging, the hello) faults in pages of the
//! executable all over its text and read-only data, and the kernel maps 64 KiB around each
//! fault (fault-around) when the file is in the page cache, as it is. Measured on the
//! `cargo dist` build (issue 24): 2.3 MiB of each idle worker's 2.5 MiB RSS were such
//! file-backed pages, of which its job loop runs a fraction. Its jobs fault in more: after a
//! burst of `/isprime` a worker held 1.5 MiB, 1.0 MiB of it the job path's code pages, and
//! held them for as long as it lived, idle or not (the protocol's release line, sent by the
//! pool after `PoolConfig::worker_release_after` idle, now ends that).
//!
//! What: [`release`] reads `/proc/self/smaps` and calls `madvise(MADV_DONTNEED)` on every
//! private, file-backed mapping that is not writable and holds no page of its own
//! (`Anonymous: 0 kB`): the executable's text and read-only data (and a dynamically linked
//! build's libraries). For such a mapping this only drops the page-table entries: every page
//! is still the file's page in the page cache, and the next access maps the same bytes again
//! (a minor fault, as for a page never touched before). What the job loop runs comes back on
//! the first jobs; the rest stays unmapped. The same call after a burst drops the job path's
//! pages too; the worker's next jobs map them again.
//!
//! What it is not: a saving of physical memory while the server runs. The pages stay in the
//! page cache, and the server (the same executable) maps most of them itself; what falls is
//! the worker's RSS, which `ps`, `top`, the OOM killer's score and the pool's own recycling by
//! RSS read. Proportional set size (PSS) moves the other way for the server, by the pages it
//! no longer shares (README, Performance, has both).
//!
//! Guarantees: nothing is lost. A mapping with any anonymous page (a copy-on-write page: the
//! relocated `.data.rel.ro`, which `MADV_DONTNEED` would reset to the file's unrelocated
//! bytes) or with write permission is left alone, and so is everything that is not a file
//! (heap, stacks, `[vdso]`). The worker is single-threaded while this runs, so no mapping
//! changes between the read of `smaps` and the calls.
//!
//! Failure modes: none that stop the worker. An unreadable `smaps` or a refused `madvise`
//! (a locked mapping: `EINVAL`) leaves the pages mapped, as before this existed. Cost: the
//! first jobs after the hello pay the minor faults of the pages they run (each fault maps up
//! to 64 KiB), once per worker and once more after each release by the pool, which comes
//! only after the worker has been idle (1 s by default): a busy worker is never told.

use std::ops::Range;

/// Unmaps this process's clean, private, file-backed mappings (see the module doc); returns
/// how many bytes of address space it covered (resident or not).
pub(super) fn release() -> usize {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    clean_file_mappings(&smaps)
        .into_iter()
        .filter(|range| {
            // SAFETY: `range` is a whole mapping of this process, private, not writable and
            // with no anonymous page (checked by `clean_file_mappings` on the kernel's own
            // list, which nothing changes while this single-threaded worker runs this).
            // MADV_DONTNEED on such a mapping drops page-table entries only; the next access
            // maps the same file bytes again, so no memory the program sees changes.
            let done = unsafe {
                libc::madvise(
                    range.start as *mut libc::c_void,
                    range.end - range.start,
                    libc::MADV_DONTNEED,
                )
            };
            done == 0
        })
        .map(|range| range.end - range.start)
        .sum()
}

/// The address ranges in `smaps` (the text of `/proc/PID/smaps`) of mappings that are
/// private (`p`), not writable, of a file (a path, not `[vdso]` or the like) and hold no
/// anonymous page.
fn clean_file_mappings(smaps: &str) -> Vec<Range<usize>> {
    let mut clean = Vec::new();
    let mut candidate: Option<Range<usize>> = None;
    for line in smaps.lines() {
        if let Some(mapping) = mapping_header(line) {
            candidate = mapping;
        } else if let Some(kib) = line.strip_prefix("Anonymous:") {
            let untouched = kib.trim().trim_end_matches("kB").trim() == "0";
            if let (Some(range), true) = (candidate.take(), untouched) {
                clean.push(range);
            }
        }
    }
    clean
}

/// `Some(_)` when `line` is a mapping's header line (`start-end perms offset dev inode
/// path`): `Some(Some(range))` for a private, non-writable file mapping, `Some(None)` for any
/// other mapping. `None` for the lines of fields under a header.
fn mapping_header(line: &str) -> Option<Option<Range<usize>>> {
    let mut fields = line.split_ascii_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?.as_bytes();
    let path = fields.nth(3);
    let clean_file =
        perms.len() == 4 && perms[1] == b'-' && perms[3] == b'p' && path.is_some_and(|p| p.starts_with('/'));
    Some(clean_file.then_some(start..end))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mappings of a static-pie worker, abridged: text and read-only data are released;
    /// the relocated read-only data (anonymous pages), the writable data, the heap, a
    /// writable file mapping and `[vdso]` are not.
    const SMAPS: &str = "\
55d0a0200000-55d0a03cf000 r--p 00000000 fd:01 1234 /usr/bin/forkpool
Rss:                 640 kB
Anonymous:             0 kB
55d0a03cf000-55d0a0909000 r-xp 001ce000 fd:01 1234 /usr/bin/forkpool
Rss:                1632 kB
Anonymous:             0 kB
55d0a0909000-55d0a0930000 r--p 00707000 fd:01 1234 /usr/bin/forkpool
Rss:                 156 kB
Anonymous:           156 kB
55d0a0930000-55d0a0935000 rw-p 0072d000 fd:01 1234 /usr/bin/forkpool
Rss:                  20 kB
Anonymous:            20 kB
55d0a1000000-55d0a1021000 rw-p 00000000 00:00 0                          [heap]
Anonymous:            52 kB
7f0000000000-7f0000001000 rw-p 00000000 fd:01 99 /tmp/data
Anonymous:             0 kB
7ffd1a3f2000-7ffd1a3f4000 r-xp 00000000 00:00 0                          [vdso]
Anonymous:             0 kB
";

    #[test]
    fn only_clean_read_only_file_mappings_are_released() {
        assert_eq!(
            clean_file_mappings(SMAPS),
            [0x55d0a0200000..0x55d0a03cf000, 0x55d0a03cf000..0x55d0a0909000]
        );
        assert!(clean_file_mappings("not smaps").is_empty());
    }
}
