//! What the pool reads of a worker from `/proc/PID`: its resident memory (for `/status` and
//! [`PoolConfig::max_rss_per_worker`]), and what it is doing (for the slow-job log).
//!
//! Every reading is fresh and cheap: procfs files are made by the kernel on read, without a
//! disk. A file that cannot be read (the worker just exited, `/proc/PID/stack` without
//! `CAP_SYS_ADMIN`) leaves its figure out rather than failing the caller.
//!
//! [`StatFields`] splits a `/proc/PID/stat` line; it is public so that the server's own
//! `/proc/self` reader uses the same parser (the pool imports nothing from the crate, so the
//! code that both need lives here).
//!
//! [`PoolConfig::max_rss_per_worker`]: super::PoolConfig::max_rss_per_worker

use std::time::Duration;

/// The fields of a `/proc/PID/stat` line, numbered as in proc(5) (`pid` is 1, `state` 3).
///
/// They are counted after the last `)`: the command name before it may itself contain spaces
/// and parentheses.
pub struct StatFields<'a> {
    /// Fields 3 onwards.
    after_name: Vec<&'a str>,
}

impl<'a> StatFields<'a> {
    /// Splits `line` (the text of a `stat` file).
    pub fn new(line: &'a str) -> StatFields<'a> {
        let after_name = line.rfind(')').map_or("", |close| &line[close + 1..]);
        StatFields {
            after_name: after_name.split_whitespace().collect(),
        }
    }

    /// Field `number` (3 or more) as text.
    pub fn text(&self, number: usize) -> Option<&'a str> {
        self.after_name.get(number.checked_sub(3)?).copied()
    }

    /// Field `number` (3 or more) as a number.
    pub fn number(&self, number: usize) -> Option<u64> {
        self.text(number)?.parse().ok()
    }
}

/// Resident set size of a process, from `/proc/PID/statm`.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

/// What a process is doing at the moment it is read: the slow-job log's fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Activity {
    /// The scheduler state, e.g. `R (running)` or `D (disk sleep)`.
    pub state: String,
    /// The kernel function it sleeps in (`/proc/PID/wchan`); `None` while it runs or when the
    /// kernel hides it.
    pub wchan: Option<String>,
    /// Its kernel stack, innermost function first (`/proc/PID/stack`, offsets left out);
    /// `None` where unreadable (it takes `CAP_SYS_ADMIN`) or empty (a running process).
    pub stack: Option<String>,
    /// User CPU time used so far.
    pub user_cpu: Duration,
    /// System CPU time used so far.
    pub system_cpu: Duration,
}

impl Activity {
    /// Reads `/proc/PID/stat`, `wchan` and `stack`; `None` once the process is gone.
    pub fn read(pid: u32) -> Option<Activity> {
        let proc = |file: &str| std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok();
        let stat = proc("stat")?;
        let fields = StatFields::new(&stat);
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let cpu = |number| Some(Duration::from_secs_f64(fields.number(number)? as f64 / ticks));
        Some(Activity {
            state: state_name(fields.text(3)?),
            wchan: proc("wchan").and_then(|w| wchan(&w)),
            stack: proc("stack").and_then(|s| stack(&s)),
            user_cpu: cpu(14)?,
            system_cpu: cpu(15)?,
        })
    }
}

/// `R` as `R (running)`, in the words of `/proc/PID/status`.
fn state_name(code: &str) -> String {
    let name = match code {
        "R" => "running",
        "S" => "sleeping",
        "D" => "disk sleep",
        "T" => "stopped",
        "t" => "tracing stop",
        "Z" => "zombie",
        "X" => "dead",
        "I" => "idle",
        "P" => "parked",
        _ => return code.to_owned(),
    };
    format!("{code} ({name})")
}

/// The text of `/proc/PID/wchan`: a function name, or `0` while the process runs.
fn wchan(text: &str) -> Option<String> {
    let name = text.trim();
    (!name.is_empty() && name != "0").then(|| name.to_owned())
}

/// The text of `/proc/PID/stack` (`[<0>] pipe_read+0x2d6/0x440` per line) as the function
/// names, innermost first: `pipe_read, vfs_read, ...`.
fn stack(text: &str) -> Option<String> {
    let names: Vec<&str> = text
        .lines()
        .filter_map(|line| {
            let frame = line.split_once("] ").map_or(line, |(_, frame)| frame).trim();
            let name = frame.split_once('+').map_or(frame, |(name, _)| name);
            (!name.is_empty()).then_some(name)
        })
        .collect();
    (!names.is_empty()).then(|| names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_a_command_name_with_spaces_and_parentheses() {
        let line = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0";
        let fields = StatFields::new(line);
        assert_eq!(fields.text(3), Some("S"));
        assert_eq!((fields.number(14), fields.number(15)), (Some(250), Some(75)));
        assert_eq!((fields.number(3), fields.number(40)), (None, None));
        assert_eq!(StatFields::new("garbage").text(3), None);
        assert_eq!(fields.text(2), None, "the name is not a field here");
    }

    #[test]
    fn the_kernel_stack_is_read_as_function_names_innermost_first() {
        let text = "[<0>] pipe_read+0x2d6/0x440\n[<0>] vfs_read+0x2e9/0x330\n\
                    [<0>] ksys_read+0x6c/0xe0\n[<0>] entry_SYSCALL_64_after_hwframe+0x76/0x7e\n";
        assert_eq!(
            stack(text).as_deref(),
            Some("pipe_read, vfs_read, ksys_read, entry_SYSCALL_64_after_hwframe")
        );
        assert_eq!(stack(""), None, "a running process has no sleeping stack");
        assert_eq!(wchan("pipe_read").as_deref(), Some("pipe_read"));
        assert_eq!(wchan("0"), None);
        assert_eq!(state_name("D"), "D (disk sleep)");
        assert_eq!(state_name("?"), "?");
    }

    #[test]
    fn a_process_sleeping_in_a_pipe_read_shows_it() {
        // `sleep` would do as well; a pipe read is what an idle worker does.
        let mut child = std::process::Command::new("cat")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let sleeping = (0..500).find_map(|_| {
            let activity = Activity::read(pid)?;
            let asleep = activity.state.starts_with('S');
            std::thread::sleep(Duration::from_millis(10));
            asleep.then_some(activity)
        });
        let activity = sleeping.expect("cat sleeps on its empty stdin");
        assert!(activity.user_cpu < Duration::from_secs(1), "{activity:?}");
        // The kernel names where it sleeps unless it hides wchan from us.
        if let Some(wchan) = &activity.wchan {
            assert!(!wchan.is_empty(), "{activity:?}");
        }
        drop(child.stdin.take());
        child.wait().unwrap();
        assert_eq!(Activity::read(pid), None, "gone once reaped");
    }
}
