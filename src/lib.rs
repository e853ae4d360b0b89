//! forkpool: an HTTP service (axum + tokio) that keeps its event loop free by running CPU work
//! in a pool of worker processes.
//!
//! Linux only (kernel 5.6 or newer): the pool relies on `prctl(PR_SET_PDEATHSIG)`, SCHED_IDLE
//! and `RLIMIT_AS`, and `/ls` on `openat2`. On any other OS the build stops with one
//! `compile_error!` that says so.
//!
//! The server re-executes its own binary in a hidden `worker` mode and talks JSON lines with
//! each worker over stdin/stdout. Workers can be killed at any moment (deadline, client gone,
//! crash) without harm to the server or to other jobs.
//!
//! # Layout
//! `app` sits on top and assembles the rest; imports between these modules form no cycle, and
//! `pool` imports nothing from the crate at all:
//! - [`cli`]: the command line, only for the binary and the worker command line, one concern
//!   a file: `cli::flags` (clap's `Flags`, the flags as given; every flag also `FORKPOOL_*` and
//!   a key of the config file), `cli::load` (`Cli::load_from`: flag > env > config file >
//!   default, and `Sources`, where each value came from), `cli::config_file` (the TOML reader:
//!   each key checked by its flag's parser), `cli::grammar` (the flags without their
//!   environment variables and clap's messages with the value's source, shared by the two
//!   readers), `cli::resolve` (`Flags::resolve() -> Settings`,
//!   refusing flags that contradict each other), `cli::worker` (`WorkerArgs`, the
//!   `forkpool worker` flags the server spells and parses by hand), `cli::man` (`man_page()`,
//!   clap_mangen's, with UNITS and ENVIRONMENT sections).
//! - [`app`]: the one place the application is assembled: `build` turns the settings into the
//!   running parts (the /ls runner, the pool, the metrics recorder) and an `AppState`;
//!   `serve(listeners, settings, signals)` builds it, makes the routers and runs the server.
//! - [`server`]: `run(listeners, state, routers, signals)` (serve, tell readiness, SIGHUP
//!   rolls, SIGUSR2 upgrades, drain), `Signals` (installed before anything listens);
//!   `server::listener` (the accept loop and the connection cap), `server::connection` (one
//!   connection: header, keep-alive and drain handling over hyper), `server::refusal` (hyper's
//!   own answers to heads it cannot parse, given the JSON error body on their way out),
//!   `server::fd_budget` (the cap sized from `RLIMIT_NOFILE`), `server::trim` (the heap memory
//!   of a burst returned to the kernel once it is over).
//! - [`routes`]: `routers(state) -> Routers` (public and admin), pure: nothing in `routes`
//!   starts a process or binds a socket, so a test calls a router in its own process
//!   (tests/handlers.rs). Endpoints, one file per family: `isprime`, `ls`, `ops`;
//!   `routes::layers` (request ids, the log line and HTTP metrics, panics to 500, `Connection:
//!   close` while draining, the 503 at the grace period's end); `routes::body` reads request
//!   bodies under a size limit and a deadline; `routes::number` is what `/isprime` accepts as
//!   a number (from a query or a JSON body) and what it says of the rest; `routes::timeout`
//!   the client's own deadline (`timeout`, the same two ways); `routes::state` holds `AppState`, what every
//!   handler shares (settings, pool, /ls, metrics), built by `app` or from parts. `routes::ls`
//!   is four parts: the handler and its turns (`mod`), `confine` (the security policy:
//!   `openat2` beneath the root fd, auditable alone), `child` (the `ls` process and its
//!   supervisor, on a low-priority thread of their own) and `symlinks` (symlink targets in the
//!   rows, rewritten where they would show the root's path).
//! - [`settings`]: `Settings`, every setting as in force (what `/status` shows as `config`).
//!   One word per thing: *flags* as given, the *config file* (`--config`), the *settings* in
//!   force, and the pool's own `PoolConfig`.
//! - [`pool`]: a library of its own (imports nothing from the crate): `WorkerPool<J: Job>`
//!   (submit with an opaque tag, queue, deadlines, roll, health, `wait_live`, shutdown, drop
//!   guard), `PoolConfig` (`validate`, and `WorkerPool::try_start`, refuse what a pool cannot
//!   run with, by a typed `PoolConfigError`), `WorkerCommand` (how the embedding program starts a
//!   worker);
//!   `pool::driver` (the per-slot state machine on the pool's own thread: events and steps),
//!   `pool::driver::exchange` (dispatch in batches of light jobs, topped up, answered one by
//!   one, memory read after them), `pool::driver::supervise` (every start through the backoff,
//!   make-before-break replacement for recycling and rolls, restart after a panic),
//!   `pool::driver::slow` (the slow-job watch), `pool::driver::elastic` (a slot dormant until
//!   wanted, and an idle worker retired down to the minimum); `pool::scale` (an elastic pool's
//!   growth: a dormant slot woken when every worker is busy and jobs wait, one start per
//!   interval); `pool::cpus` (the CPUs this process may use: affinity mask, cgroup v2
//!   `cpu.max`, which cap the growth); `pool::dispatch` (that thread); `pool::queue`
//!   (fair shares, requeueing, refusal while no worker can start); `pool::wakers` (a queued
//!   job wakes the idle driver of the lowest slot, so a light load stays on the fewest
//!   workers and the others can retire);
//!   `pool::estimate` (run times per cost class and the work each slot holds: the predicted
//!   wait and run that refuse a job, at submission or at dispatch, whose deadline they pass);
//!   `pool::health` (the pool as a whole, watched: roll generations and the `Roll` handle,
//!   failed starts and the crash-loop breaker, `PoolHealth`, the one `Backoff`);
//!   `pool::lifecycle` (`StartReason`, `Exit`, `WorkerExit`, `JobOutcome`: why workers start,
//!   how workers and jobs end, with their metric labels; `Retirement`, why a worker that still
//!   serves is replaced: jobs, rss, roll); `pool::metrics` (`<prefix>_*`); `pool::inspect` (a
//!   worker's `/proc/PID`: RSS for recycling by memory, state, wchan, kernel stack and CPU for
//!   the slow-job log; `StatFields`, the `stat` parser `procfs` shares); `pool::oom` (the
//!   cgroup's `oom_kill` count, which tells an OOM kill from another SIGKILL);
//!   `pool::process` (one child process: spawn, handshake, kill, reap); `pool::protocol`
//!   (JSON-lines messages, framing, `PROTOCOL_VERSION`, the `Job` trait and its `Weight`
//!   hint); `pool::status` (per-worker rows); `pool::worker` (the worker side: `run::<J>()`,
//!   and the allocator that turns a failed allocation in a worker into a recognisable exit);
//!   `pool::code_pages` (a worker unmaps the code pages its start-up mapped once it has said
//!   hello, and those its jobs mapped when the pool's release line says it has been idle).
//! - [`jobs`]: the server's job types (`IsPrimeJob`) and how its workers log them; no HTTP, so
//!   worker mode needs only this and the pool.
//! - [`prime`]: primality, pure functions (and `mersenne`, the heavy job of tests and load);
//!   `prime::montgomery` (schoolbook, up to 100 limbs) and `prime::product_redc` (REDC by
//!   products, above), the two arithmetics BPSW runs on; `prime::plain`, the tests' reference.
//! - [`procfs`]: this process's CPU, memory, fd and start-time figures from `/proc/self` (its
//!   `stat` line split by the pool's `StatFields`).
//! - [`error`]: `AppError`, the one JSON error shape (`error`, `code`, `status`), `ErrorCode`,
//!   every stable code with its status, and `HttpError`, which every typed error implements
//!   next to its definition to say its code.
//! - [`logging`]: tracing to stderr, `LogFormat`.
//! - [`telemetry`]: the server's metric names (constants, described once), the process-wide
//!   Prometheus recorder, and `fold_histograms` (the upkeep, with the folded samples freed).
//! - [`systemd`]: the service manager's protocols (sockets passed by `LISTEN_FDS`, `READY=1`
//!   and the other notifications, the watchdog), and `command_with_listeners`, which passes
//!   sockets the same way to a process we start.
//! - [`upgrade`]: SIGUSR2's in-place upgrade (`Upgrader`: start the new binary with the
//!   sockets, wait for its `READY=1`, kill it on failure) and the `--pid-file`.
//! - [`units`]: parsers of durations (`10s`, `1m30s`) and byte sizes (`1GiB`, `500MB`: IEC and
//!   SI units), for flags and files.
//!
//! The load tester behind the README's figures is a program of its own, `forkpool-loadtest`
//! (the workspace member in `loadtest/`): none of it is linked into this server.

// No `print!`/`eprint!` in the library (Cargo.toml's lints say why only here): a worker's stdout
// is the JSON-lines protocol channel, where a stray line ends the worker's exchange, and every
// message goes through `tracing` so that it has the log format, the level and the request id.
#![warn(clippy::print_stdout, clippy::print_stderr)]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "forkpool runs on Linux only (kernel 5.6 or newer): it needs prctl(PR_SET_PDEATHSIG), \
     SCHED_IDLE, RLIMIT_AS and openat2, which this target does not have"
);

/// Declares the modules for Linux only. Elsewhere the crate is then empty but for the
/// `compile_error!` above, so that it is the one error, not the first of pages of unresolved
/// Linux-only names (rustc goes on to name resolution after a `compile_error!`).
macro_rules! linux_only {
    ($($module:item)*) => { $(#[cfg(target_os = "linux")] $module)* };
}

linux_only! {
    pub mod app;
    pub mod cli;
    pub mod error;
    pub mod jobs;
    pub mod logging;
    pub mod pool;
    pub mod prime;
    pub mod procfs;
    pub mod routes;
    pub mod server;
    pub mod settings;
    pub mod systemd;
    pub mod telemetry;
    pub mod units;
    pub mod upgrade;
}
