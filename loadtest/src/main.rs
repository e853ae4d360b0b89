//! `forkpool-loadtest`: measures a running forkpool (or one it spawns) and reports; it does not
//! judge. The README holds the targets; this program produces the figures behind them.
//!
//! A program of its own, not a subcommand of the server: its HTTP client, progress bar and
//! plotting stay out of the binary that every worker execs. `--spawn` starts the `forkpool`
//! found next to this executable (`cargo dist` or `cargo build --release` builds both).
//!
//! Scenarios, each bounded in time and request count, loopback only:
//! - `idle`: sequential /testrequest probes with a small pause.
//! - `saturated`: K = m x workers heavy /isprime jobs in flight (m from `--multiples`), probed
//!   while every worker is busy; the jobs' completion times and any 503.
//! - `dispatch`: closed-loop requests/s of `/isprime?number=7` and of `/testrequest`.
//! - `mixed`: short `/isprime` jobs in a closed loop while one heavy job is always in flight;
//!   their latency shows whether any waits behind it.
//! - `overload` (not run unless asked for): `/isprime` with a client `timeout`, open loop at
//!   `--overload-rate`, more than the pool serves; served, refused at admission and at
//!   dispatch, and wasted jobs (started, then killed at their deadline). See `overload`.
//! - `tail`: the lean probe (raw socket, new connection each, fixed spacing, its own cost
//!   measured against a responder in this process), idle and with `--tail-jobs` heavy jobs in
//!   flight: connect / first byte / total percentiles and every thread's run-queue wait. See
//!   `tail`.
//! - `ls`: a full /ls of a directory of `--ls-files` files against `ls -lash` run directly, and
//!   the server's RSS growth meanwhile.
//! - `upgrade` and `restart` (not run unless asked for; `--spawn` only): `--upgrades` SIGUSR2
//!   in-place upgrades between this build and `--upgrade-to`, or `--restarts` restarts on a
//!   socket this program holds as systemd would, under a steady mixed load; what the clients
//!   saw (failures by kind, resets, refusals, 503s), the time of each handover, and what was
//!   left behind (zombies, stray workers or `ls`, descriptors). See `lifecycle`.
//!
//! Every probe is made twice, on a new connection and on a kept-alive one. The RSS of the server
//! and its workers is read from /proc while idle.
//!
//! Layout: `client` (hyper connections), `scenarios`, `overload`, `tail` (the lean probe),
//! `lifecycle` (with `load`, the steady mixed load, and `procs`, processes in /proc), `report`
//! (data, JSON and table), `plot` (SVG), `spawn` (`--spawn`).

mod client;
mod lifecycle;
mod load;
mod overload;
mod percentile;
mod plot;
mod probe;
mod procs;
mod report;
mod scenarios;
mod spawn;
mod tail;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use client::Target;
use forkpool::units::parse_duration;
use overload::OverloadPlan;
use report::Report;
use scenarios::{LifecyclePlan, Plan, Run};
use spawn::{Install, ServerSetup, SpawnedServer};

/// Measures a running (or self-spawned) forkpool: latency under load, throughput, /ls.
#[derive(Debug, Clone, Parser)]
#[command(name = "forkpool-loadtest", version, about, long_about = None)]
pub struct LoadtestArgs {
    /// Server to measure (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:3636")]
    pub url: String,

    /// Start the `forkpool` next to this executable on 127.0.0.1 port 0 instead, and stop it
    /// afterwards.
    #[arg(long)]
    pub spawn: bool,

    /// With --spawn: number of workers [default: the server's default].
    #[arg(long, requires = "spawn")]
    pub workers: Option<u16>,

    /// With --spawn: one more flag for the server, repeatable, e.g. `--server-arg=--worker-nice=19`.
    #[arg(long = "server-arg", requires = "spawn", allow_hyphen_values = true)]
    pub server_args: Vec<String>,

    /// Scenarios to run, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "idle,saturated,tail,dispatch,mixed,ls"
    )]
    pub scenarios: Vec<Scenario>,

    /// Idle scenario: number of probes of each kind.
    #[arg(long, default_value_t = 200)]
    pub idle_probes: usize,

    /// Pause between two probes.
    #[arg(long, default_value = "5ms", value_parser = parse_duration)]
    pub probe_pause: Duration,

    /// Saturated scenario: the heavy job tests 2^P-1; use a Mersenne prime exponent (4423, 9689,
    /// 11213, 19937, 21701, 23209) so that the test runs to the end. The default (2917 digits)
    /// takes about a second per job in a release build.
    #[arg(long, default_value_t = 9689, value_parser = clap::value_parser!(u32).range(2..=100_000))]
    pub heavy_exponent: u32,

    /// Saturated scenario: heavy jobs in flight, as multiples of the worker count.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub multiples: Vec<usize>,

    /// Dispatch scenario: length of each of its two phases; mixed scenario: its length.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Dispatch and mixed scenarios: requests in flight (one kept-alive connection each).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,

    /// Overload scenario: requests per second (half heavy, half light), sent for `--duration`.
    #[arg(long, default_value_t = 16.0, value_parser = overload_rate)]
    pub overload_rate: f64,

    /// Overload scenario: the `timeout` every request carries.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub overload_timeout: Duration,

    /// Tail scenario: probes in each phase.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub tail_probes: u32,

    /// Tail scenario: time from the start of one probe to the start of the next.
    #[arg(long, default_value = "2ms", value_parser = parse_duration)]
    pub tail_spacing: Duration,

    /// Tail scenario: heavy jobs kept in flight in each saturated phase.
    #[arg(long, value_delimiter = ',', default_value = "4,8")]
    pub tail_jobs: Vec<usize>,

    /// Also write the tail scenario's phases side by side as SVG.
    #[arg(long, value_name = "FILE")]
    pub tail_svg: Option<PathBuf>,

    /// Ls scenario: files in the listed directory.
    #[arg(long, default_value_t = 100_000)]
    pub ls_files: usize,

    /// Ls scenario: timed runs of each side (the median is reported).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub ls_runs: u16,

    /// Upgrade scenario: SIGUSR2 in-place upgrades, each to the other build.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub upgrades: u32,

    /// Upgrade scenario: the second build, which reports another version; upgrades alternate
    /// between the `forkpool` next to this program and this one (README: "Upgrades and restarts
    /// under load" says how to build it).
    #[arg(long, value_name = "PATH", requires = "spawn")]
    pub upgrade_to: Option<PathBuf>,

    /// Restart scenario: restarts (SIGTERM, exit, a new server on the same socket, READY=1).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub restarts: u32,

    /// Upgrade and restart scenarios: clients of the steady load; half keep a connection
    /// alive, half open a new one per request. Each pauses `--probe-pause` between requests.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(2..=256))]
    pub load_clients: u16,

    /// Upgrade and restart scenarios: load alone before the first event, between two, and
    /// after the last.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub lifecycle_pause: Duration,

    /// With --spawn: append the servers' logs (stderr) to this file instead of discarding them.
    #[arg(long, value_name = "FILE", requires = "spawn")]
    pub server_log: Option<PathBuf>,

    /// Also write the report, every probe included, as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Also write a plot of probe latency over time, saturated phases shaded, as SVG.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    Idle,
    Saturated,
    Dispatch,
    Mixed,
    Tail,
    Ls,
    Overload,
    Upgrade,
    Restart,
}

/// Why the load test could not measure at all (a scenario that fails is only reported).
#[derive(Debug, thiserror::Error)]
pub enum LoadtestError {
    /// The message names the flag.
    #[error("{0}")]
    Url(String),
    #[error("cannot start the Tokio runtime: {0}")]
    Runtime(std::io::Error),
    #[error("interrupted")]
    Interrupted,
    #[error("{url} is not ready: {why}")]
    NotReady { url: String, why: String },
    #[error("--spawn: {0}")]
    Spawn(String),
    #[error("cannot write {flag} {path}: {why}")]
    Write {
        flag: &'static str,
        path: PathBuf,
        why: String,
    },
}

fn main() -> ExitCode {
    match run(LoadtestArgs::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the load test and prints the table. Fails only when it could not measure at all (no
/// server, bad flags, an output file that cannot be written); a scenario that fails is
/// reported in the table and the JSON.
pub fn run(args: LoadtestArgs) -> Result<(), LoadtestError> {
    let setup = args.spawn.then(|| ServerSetup {
        workers: args.workers,
        extra: args.server_args.clone(),
        log: args.server_log.clone(),
    });
    let mut spawned = match &setup {
        Some(setup) => Some(SpawnedServer::start(setup, Install::InPlace)?),
        None => None,
    };
    let url = match &spawned {
        Some(server) => format!("http://{}", server.addr),
        None => args.url.clone(),
    };
    let target = Target::parse(&url).map_err(LoadtestError::Url)?;
    let bar = progress_bar();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(LoadtestError::Runtime)?;
    let ls_root = spawned.as_ref().map(SpawnedServer::root);
    let measured = runtime.block_on(async {
        tokio::select! {
            report = measure(&args, setup, target, &url, ls_root.as_deref(), bar.clone()) => report,
            _ = tokio::signal::ctrl_c() => Err(LoadtestError::Interrupted),
        }
    });
    bar.finish_and_clear();
    drop(runtime);
    if let Some(server) = &mut spawned {
        server.stop(Duration::from_secs(15));
    }
    let mut report = measured?;
    if let Some(server) = &spawned {
        report.spawned = true;
        report.server_pid.get_or_insert(server.pid());
    }
    if spawned.is_some() {
        spawn::reap_leftovers(&report.worker_pids, Duration::from_secs(5));
    }
    drop(spawned);

    print!("{}", report.table());
    if let Some(path) = &args.json {
        let text = serde_json::to_vec_pretty(&report).expect("the report serializes");
        std::fs::write(path, text).map_err(|e| LoadtestError::Write {
            flag: "--json",
            path: path.clone(),
            why: e.to_string(),
        })?;
    }
    if let Some(path) = &args.svg {
        plot::write_svg(&report, path)?;
    }
    if let (Some(path), Some(tail)) = (&args.tail_svg, &report.tail) {
        tail::plot::write_svg(tail, path)?;
    }
    Ok(())
}

async fn measure(
    args: &LoadtestArgs,
    server: Option<ServerSetup>,
    target: Target,
    url: &str,
    ls_root: Option<&Path>,
    bar: ProgressBar,
) -> Result<Report, LoadtestError> {
    let mut report = Report {
        url: url.to_owned(),
        server_args: args.server_args.clone(),
        started_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        ..Report::default()
    };
    let mut run = Run {
        target,
        plan: Plan {
            idle_probes: args.idle_probes,
            probe_pause: args.probe_pause,
            heavy_exponent: args.heavy_exponent,
            multiples: args.multiples.clone(),
            concurrency: args.concurrency.into(),
            duration: args.duration,
            ls_files: args.ls_files,
            ls_runs: args.ls_runs.into(),
            lifecycle: LifecyclePlan {
                upgrades: args.upgrades as usize,
                restarts: args.restarts as usize,
                upgrade_to: args.upgrade_to.clone(),
                clients: args.load_clients.into(),
                pause: args.lifecycle_pause,
                server,
            },
        },
        clock: Instant::now(),
        bar,
        server_pid: None,
        workers: 0,
        samples: Vec::new(),
    };
    run.bar
        .set_message("waiting for the server and its workers");
    let not_ready = |why: String| LoadtestError::NotReady {
        url: url.to_owned(),
        why,
    };
    let (pid, worker_pids) = run
        .wait_idle(Duration::from_secs(20))
        .await
        .map_err(not_ready)?;
    let status = target.get_json("/status").await.map_err(not_ready)?;
    report.server_pid = Some(pid);
    report.worker_pids = worker_pids.clone();
    report.workers = worker_pids.len();
    report.worker_priority = match status["config"]["worker_sched"].as_str() {
        Some("idle") => Some("SCHED_IDLE".to_owned()),
        _ => status["config"]["worker_nice"]
            .as_i64()
            .map(|n| format!("nice {n}")),
    };
    run.server_pid = Some(pid);
    run.workers = worker_pids.len();
    run.clock = Instant::now();

    let wants = |s: Scenario| args.scenarios.contains(&s);
    if wants(Scenario::Idle) {
        report.idle = Some(run.idle().await);
    }
    match run.memory().await {
        Ok(memory) => report.memory = Some(memory),
        Err(e) => report.errors.push(format!("idle memory: {e}")),
    }
    if wants(Scenario::Saturated) {
        report.saturated = Some(run.saturated().await);
    }
    if wants(Scenario::Tail) {
        let plan = tail::TailPlan {
            probes: args.tail_probes as usize,
            spacing: args.tail_spacing,
            jobs: args.tail_jobs.clone(),
            worker_pids,
        };
        report.tail = Some(run.tail(&plan).await);
    }
    if wants(Scenario::Dispatch) {
        report.dispatch = Some(run.dispatch().await);
    }
    if wants(Scenario::Mixed) {
        report.mixed = Some(run.mixed().await);
    }
    if wants(Scenario::Ls) {
        let root = match ls_root {
            Some(root) => Ok(root.to_owned()),
            None => server_ls_root(&status, pid),
        };
        match root {
            Ok(root) => match run.ls(&root).await {
                Ok(ls) => report.ls = Some(ls),
                Err(e) => report.errors.push(format!("ls: {e}")),
            },
            Err(e) => report.errors.push(format!("ls: {e}")),
        }
    }
    if wants(Scenario::Overload) {
        let plan = OverloadPlan {
            rate: args.overload_rate,
            duration: args.duration,
            heavy_exponent: args.heavy_exponent,
            timeout: args.overload_timeout,
        };
        match overload::overload(run.target, &plan, &run.bar).await {
            Ok(overload) => report.overload = Some(overload),
            Err(e) => report.errors.push(format!("overload: {e}")),
        }
    }
    run_lifecycle(&mut run, &args.scenarios, &mut report).await;
    report.duration_s = run.clock.elapsed().as_secs_f64();
    report.samples = run.samples;
    Ok(report)
}

/// The upgrade and restart scenarios, those asked for.
async fn run_lifecycle(run: &mut Run, scenarios: &[Scenario], report: &mut Report) {
    if scenarios.contains(&Scenario::Upgrade) {
        match run.upgrade().await {
            Ok(upgrade) => report.upgrade = Some(upgrade),
            Err(e) => report.errors.push(e),
        }
    }
    if scenarios.contains(&Scenario::Restart) {
        match run.restart().await {
            Ok(restart) => report.restart = Some(restart),
            Err(e) => report.errors.push(e),
        }
    }
}

/// The ls root of a server we did not start: `--ls-root` from /status, else its working
/// directory. The ls scenario creates (and then removes) its directory in there.
fn server_ls_root(status: &serde_json::Value, pid: u32) -> Result<PathBuf, String> {
    if let Some(root) = status["config"]["ls_root"].as_str() {
        return Ok(PathBuf::from(root));
    }
    std::fs::read_link(format!("/proc/{pid}/cwd"))
        .map_err(|e| format!("cannot find the server's ls root (its working directory): {e}"))
}

/// `--overload-rate`: requests per second, from 0.1 to 1000 (the scenario sends at most
/// rate x duration requests, each on a connection of its own).
fn overload_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if (0.1..=1000.0).contains(&rate) => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a rate from 0.1 to 1000 requests per second"
        )),
    }
}

/// A spinner with the current step on stderr; nothing at all when stderr is not a terminal.
fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed}] {msg}").expect("the template is valid"),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        let args = LoadtestArgs::parse_from([
            "x",
            "--spawn",
            "--server-arg=--worker-nice=19",
            "--server-arg",
            "--queue=4",
            "--scenarios",
            "idle,dispatch",
            "--duration",
            "1s",
        ]);
        assert_eq!(args.server_args, ["--worker-nice=19", "--queue=4"]);
        assert_eq!(args.scenarios, [Scenario::Idle, Scenario::Dispatch]);
        assert_eq!(args.duration, Duration::from_secs(1));
        assert_eq!(args.multiples, [1, 2, 4]);
        assert!(
            LoadtestArgs::try_parse_from(["x", "--workers", "2"]).is_err(),
            "needs --spawn"
        );
    }
}
