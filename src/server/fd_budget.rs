//! How many client connections fit in the process's file-descriptor limit.
//!
//! Every connection holds a descriptor, and so does everything else the server must still be
//! able to open under a connection flood: worker pipes (to replace a killed worker), `ls`
//! pipes, the listeners. Running out makes `accept` fail with EMFILE and, worse, makes a worker
//! impossible to respawn. So at start the soft `RLIMIT_NOFILE` is raised to the hard limit (as
//! Go's runtime does), a reserve is set aside for the rest, and the connection cap is kept
//! within what remains. The choice is logged.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

use crate::procfs;
use crate::settings::Settings;

/// The cap when `--max-connections` is not given (gunicorn's `worker_connections` is 1000).
pub(super) const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
/// Connections the admin listener may hold: scrapers and operators, not the public.
pub(super) const ADMIN_MAX_CONNECTIONS: u32 = 16;
/// Descriptors one worker costs the server: stdin, stdout and stderr pipes, and one spare for
/// the moment of a spawn.
const FDS_PER_WORKER: u64 = 4;
/// Descriptors one running `ls` costs: stdout and stderr pipes, the directory it lists, and
/// one spare for the moment of a spawn.
const FDS_PER_LS: u64 = 4;
/// Slack for everything else opened after start-up (the runtime, /proc reads, logs).
const MARGIN: u64 = 32;

/// Why the connection cap cannot be chosen.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    /// The descriptors the rest of the server needs already fill RLIMIT_NOFILE: not one
    /// connection could be accepted.
    #[error(
        "RLIMIT_NOFILE is {limit}, and {reserved} descriptors are needed for workers, `ls` and \
         the listeners: no room is left for connections (raise the limit, or lower --workers or \
         --ls-max-concurrent)"
    )]
    NoRoom {
        /// RLIMIT_NOFILE's soft limit.
        limit: u64,
        /// Descriptors set aside for the rest: every worker's pipes, `--ls-max-concurrent` `ls`
        /// processes' and the listeners.
        reserved: u64,
    },
}

/// Raises the soft descriptor limit to the hard one and returns the connection cap for
/// `--listen`: `--max-connections` (or `DEFAULT_MAX_CONNECTIONS`), lowered to what the limit
/// leaves after the reserve.
pub fn connection_cap(settings: &Settings) -> Result<u32, BudgetError> {
    let (before, limit) = raise_nofile_limit();
    // Unreadable /proc: count none open, and let the margin absorb what is.
    let open = procfs::open_fds().unwrap_or(0);
    let workers_fds = FDS_PER_WORKER * (settings.workers as u64 + 1);
    let reserved = open
        + workers_fds
        + FDS_PER_LS * u64::from(settings.ls_max_concurrent)
        + u64::from(ADMIN_MAX_CONNECTIONS)
        + MARGIN;
    let room = limit.saturating_sub(reserved);
    if room == 0 {
        return Err(BudgetError::NoRoom { limit, reserved });
    }
    let asked = settings.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    let cap = asked.min(u32::try_from(room).unwrap_or(u32::MAX));
    if cap < asked && settings.max_connections.is_some() {
        tracing::warn!(
            asked,
            cap,
            nofile = limit,
            reserved,
            "--max-connections lowered to fit RLIMIT_NOFILE"
        );
    }
    tracing::info!(
        max_connections = cap,
        nofile_before = before,
        nofile = limit,
        reserved,
        "connection cap"
    );
    Ok(cap)
}

/// Sets the soft `RLIMIT_NOFILE` to the hard limit; returns (soft before, soft now). When the
/// limit cannot be raised (a seccomp policy, say), the current soft limit is kept.
fn raise_nofile_limit() -> (u64, u64) {
    let current = getrlimit(Resource::Nofile);
    // `None` means unlimited, which the kernel never reports for descriptors; be safe anyway.
    let soft = current.current.unwrap_or(u64::from(u32::MAX));
    let Some(hard) = current.maximum.filter(|&hard| hard > soft) else {
        return (soft, soft);
    };
    let raised = Rlimit {
        current: Some(hard),
        maximum: current.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => (soft, hard),
        Err(e) => {
            tracing::warn!(error = %e, soft, hard, "cannot raise RLIMIT_NOFILE");
            (soft, soft)
        }
    }
}
