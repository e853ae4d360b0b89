//! What the load tester's tests share: the command that runs it, with the spawned server's
//! workers in the normal scheduling class.
//!
//! A server's default worker class is SCHED_IDLE; on a machine busy with other work (CI, a
//! shared 2-core box, the busy loops of the README's flakiness check) its workers get almost
//! no CPU, and heavy jobs outlasted their 60 s deadline. The server's own tests decide the same
//! way (`tests/common`, `WORKERS_IN_NORMAL_CLASS`) and check the default class themselves.

use std::process::Command;

/// The load tester built with these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_forkpool-loadtest");

/// The environment variable that puts the spawned server's workers in the normal class (the
/// server reads it; `--server-arg=--worker-sched=...` would override it).
const WORKER_SCHED: &str = "FORKPOOL_WORKER_SCHED";

/// `forkpool-loadtest` with [`WORKER_SCHED`] set to `other`, inherited by a `--spawn`ed server.
pub fn loadtest() -> Command {
    let mut command = Command::new(BIN);
    command.env(WORKER_SCHED, "other");
    command
}
