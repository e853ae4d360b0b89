//! forkpool: an HTTP service (axum + tokio) that keeps its event loop free by running CPU work
//! in a pool of worker processes.
//!
//! The server re-executes its own binary in a hidden `worker` mode and talks JSON lines with
//! each worker over stdin/stdout. Workers can be killed at any moment (deadline, client gone,
//! crash) without harm to the server or to other jobs.
//!
//! # Layout
//! - [`config`]: clap `Config` (every flag also `FORKPOOL_*` and a TOML key) and subcommands.
//! - [`server`]: `AppState`, `routers() -> (public, admin)` with their layers,
//!   `run(listener, admin, config, shutdown)`; `server::listener` (the accept loop and the
//!   connection cap), `server::connection` (one connection: header, keep-alive and drain
//!   handling over hyper), `server::fd_budget` (the cap sized from `RLIMIT_NOFILE`).
//! - [`routes`]: endpoints, one file per family: `isprime`, `ls`, `ops`; `routes::body` reads
//!   request bodies under a size limit and a deadline.
//! - [`pool`]: `WorkerPool` (submit, queue, deadlines, roll, shutdown); `pool::driver` (the
//!   per-slot loop on the pool's own thread: dispatch, respawn with backoff, recycle);
//!   `pool::process` (one child process: spawn, handshake, kill, how it ended);
//!   `pool::protocol` (JSON-lines messages, framing, the `Job` trait); `pool::status`
//!   (per-worker rows); `pool::worker` (the worker-side loop, and the allocator that turns a
//!   failed allocation in a worker into a recognisable exit).
//! - [`prime`]: primality, pure functions.
//! - [`error`]: `AppError`, the one JSON error shape, and the status of every typed error.
//! - [`logging`]: tracing to stderr.
//! - [`loadtest`]: the `forkpool loadtest` program behind the README's figures.

pub mod config;
pub mod error;
pub mod loadtest;
pub mod logging;
pub mod pool;
pub mod prime;
pub mod routes;
pub mod server;
