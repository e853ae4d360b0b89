//! The five measuring scenarios (the two lifecycle ones are in `lifecycle`). Each is bounded in
//! time and request count and only talks to the target, which
//! [`Target::parse`](super::client::Target::parse) restricts to loopback.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::StatusCode;
use indicatif::ProgressBar;
use tokio::task::JoinSet;

use super::client::{Call, ClientError, KeptAlive, Target};
use super::probe::{probe_new, ProbeConn};
use super::report::{
    ConnKind, Dispatch, Heavy, Ls, Memory, Mixed, ProbePair, Sample, Saturated, SaturatedPhase,
    Stats, Throughput,
};
use super::spawn::ServerSetup;
use forkpool::prime::mersenne;

/// Longest wait for one probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for one heavy job (the server's own deadline is 60 s by default).
const HEAVY_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest a saturated phase probes, whatever the jobs do.
const PHASE_LIMIT: Duration = Duration::from_secs(60);
/// Idle probing between saturated phases, so that the plot shows the contrast.
const COOLDOWN: Duration = Duration::from_millis(500);

/// Settings shared by the scenarios (from the command line).
#[derive(Debug, Clone)]
pub struct Plan {
    pub idle_probes: usize,
    pub probe_pause: Duration,
    pub heavy_exponent: u32,
    pub multiples: Vec<usize>,
    pub concurrency: usize,
    pub duration: Duration,
    pub ls_files: usize,
    pub ls_runs: usize,
    /// The lifecycle scenarios' settings.
    pub lifecycle: LifecyclePlan,
}

/// Settings of the `upgrade` and `restart` scenarios.
#[derive(Debug, Clone)]
pub struct LifecyclePlan {
    /// In-place upgrades to perform.
    pub upgrades: usize,
    /// Restarts to perform.
    pub restarts: usize,
    /// The second build that upgrades alternate with (`--upgrade-to`).
    pub upgrade_to: Option<PathBuf>,
    /// Clients of the steady load.
    pub clients: usize,
    /// Load alone before the first event, between two and after the last.
    pub pause: Duration,
    /// How servers are started (with `--spawn` only: the lifecycle scenarios need it).
    pub server: Option<ServerSetup>,
}

/// One run against one server: the clock that samples are timed against, and the samples.
pub struct Run {
    pub target: Target,
    pub plan: Plan,
    pub clock: Instant,
    pub bar: ProgressBar,
    pub server_pid: Option<u32>,
    pub workers: usize,
    pub samples: Vec<Sample>,
}

/// Probes /testrequest on a new connection and on a kept-alive one, alternately.
struct Prober {
    phase: String,
    /// Taken by the blocking probe while it runs, then put back.
    kept: Option<ProbeConn>,
    new: Vec<Duration>,
    new_errors: usize,
    kept_times: Vec<Duration>,
    kept_errors: usize,
}

impl Prober {
    fn new(phase: impl Into<String>) -> Prober {
        Prober {
            phase: phase.into(),
            kept: None,
            new: Vec::new(),
            new_errors: 0,
            kept_times: Vec::new(),
            kept_errors: 0,
        }
    }

    /// One probe of each kind, on a blocking thread (see [`super::probe`]).
    async fn probe(&mut self, run: &mut Run) {
        let addr = run.target.addr;
        let kept = self.kept.take();
        let t = run.clock.elapsed();
        let probes = tokio::task::spawn_blocking(move || {
            let new = probe_new(addr, PROBE_TIMEOUT);
            let mut kept = kept.map_or_else(|| ProbeConn::open(addr, PROBE_TIMEOUT), Ok);
            let reused = kept
                .as_mut()
                .map_err(|e| format!("connect: {e}"))
                .and_then(ProbeConn::probe);
            (new, reused, kept.ok())
        })
        .await;
        let (new, reused, kept) = probes.unwrap_or_else(|e| {
            let failed = || Err(format!("probe thread: {e}"));
            (failed(), failed(), None)
        });
        let t_kept = t + new.as_ref().map_or(Duration::ZERO, |d| *d);
        self.record(t, new, ConnKind::New, run);
        self.kept = kept.filter(|_| reused.is_ok());
        self.record(t_kept, reused, ConnKind::KeptAlive, run);
    }

    fn record(
        &mut self,
        t: Duration,
        result: Result<Duration, String>,
        conn: ConnKind,
        run: &mut Run,
    ) {
        let (times, errors) = match conn {
            ConnKind::New => (&mut self.new, &mut self.new_errors),
            ConnKind::KeptAlive => (&mut self.kept_times, &mut self.kept_errors),
        };
        let ok = result.is_ok();
        let elapsed = result.unwrap_or(PROBE_TIMEOUT);
        match ok {
            true => times.push(elapsed),
            false => *errors += 1,
        }
        run.samples.push(sample(t, elapsed, conn, &self.phase, ok));
    }

    fn finish(self) -> ProbePair {
        ProbePair {
            new_conn: Stats::of(&self.new, self.new_errors),
            kept_alive: Stats::of(&self.kept_times, self.kept_errors),
        }
    }
}

fn sample(t: Duration, elapsed: Duration, conn: ConnKind, phase: &str, ok: bool) -> Sample {
    Sample {
        t_s: t.as_secs_f64(),
        ms: elapsed.as_secs_f64() * 1e3,
        conn,
        phase: phase.to_owned(),
        ok,
    }
}

/// Waits until the server's /status lists its workers, all idle (a fresh server is still
/// starting them), but for an elastic pool's dormant slots, which have no worker. Returns the
/// server pid and the worker pids.
pub async fn wait_idle(target: Target, limit: Duration) -> Result<(u32, Vec<u32>), String> {
    let deadline = Instant::now() + limit;
    loop {
        let status = target.get_json("/status").await;
        if let Ok(status) = &status {
            let workers = status["workers"].as_array().cloned().unwrap_or_default();
            let at_rest = |w: &serde_json::Value| w["state"] == "idle" || w["state"] == "dormant";
            let all_idle = !workers.is_empty() && workers.iter().all(at_rest);
            if all_idle {
                let pid = status["pid"].as_u64().ok_or("/status has no pid")? as u32;
                let pids = workers
                    .iter()
                    .filter_map(|w| w["pid"].as_u64())
                    .map(|p| p as u32);
                return Ok((pid, pids.collect()));
            }
        }
        if Instant::now() > deadline {
            return Err(format!("workers not all idle after {limit:?}: {status:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Run {
    /// [`wait_idle`] on this run's server.
    pub async fn wait_idle(&self, limit: Duration) -> Result<(u32, Vec<u32>), String> {
        wait_idle(self.target, limit).await
    }

    /// RSS of the server and each worker, from /proc.
    pub async fn memory(&self) -> Result<Memory, String> {
        let (pid, workers) = self.wait_idle(Duration::from_secs(10)).await?;
        let server_kib = rss_kib(pid).ok_or_else(|| format!("cannot read /proc/{pid}/statm"))?;
        let workers_kib = workers
            .iter()
            .map(|&p| rss_kib(p).ok_or_else(|| format!("cannot read /proc/{p}/statm")))
            .collect::<Result<Vec<u64>, String>>()?;
        Ok(Memory {
            total_kib: server_kib + workers_kib.iter().sum::<u64>(),
            server_kib,
            workers_kib,
        })
    }

    /// Sequential probes with a small pause, nothing else running.
    pub async fn idle(&mut self) -> ProbePair {
        let mut prober = Prober::new("idle");
        for i in 0..self.plan.idle_probes {
            self.bar
                .set_message(format!("idle: probe {}/{}", i + 1, self.plan.idle_probes));
            prober.probe(self).await;
            tokio::time::sleep(self.plan.probe_pause).await;
        }
        prober.finish()
    }

    /// For each multiple m: m x workers heavy jobs in flight, probed while every worker is busy.
    pub async fn saturated(&mut self) -> Saturated {
        let number = mersenne(self.plan.heavy_exponent);
        let digits = number.len();
        let body = Bytes::from(format!("{{\"number\":\"{number}\"}}"));
        let mut phases = Vec::new();
        for m in self.plan.multiples.clone() {
            phases.push(self.saturated_phase(m, body.clone()).await);
            let mut cooldown = Prober::new("idle");
            let until = Instant::now() + COOLDOWN;
            while Instant::now() < until {
                cooldown.probe(self).await;
                tokio::time::sleep(self.plan.probe_pause).await;
            }
        }
        Saturated {
            exponent: self.plan.heavy_exponent,
            digits,
            phases,
        }
    }

    async fn saturated_phase(&mut self, multiple: usize, body: Bytes) -> SaturatedPhase {
        let k = multiple * self.workers;
        let busy_target = k.min(self.workers);
        let remaining = Arc::new(AtomicUsize::new(k));
        let mut jobs = JoinSet::new();
        for _ in 0..k {
            let target = self.target;
            let call = Call::post_json("/isprime", body.clone());
            let remaining = remaining.clone();
            jobs.spawn(async move {
                let result = target.fresh(&call, HEAVY_TIMEOUT).await;
                remaining.fetch_sub(1, Ordering::Relaxed);
                result
            });
        }
        let label = format!("saturated K={k}");
        self.bar
            .set_message(format!("{label}: waiting for busy workers"));
        let all_workers_busy = self.wait_busy(busy_target, &remaining).await;
        let start = self.clock.elapsed();
        let started = Instant::now();
        let mut prober = Prober::new(&label);
        while remaining.load(Ordering::Relaxed) >= busy_target && started.elapsed() < PHASE_LIMIT {
            let done = k - remaining.load(Ordering::Relaxed);
            let n = prober.new.len() + prober.new_errors;
            self.bar
                .set_message(format!("{label}: {done}/{k} heavy jobs done, {n} probes"));
            prober.probe(self).await;
            tokio::time::sleep(self.plan.probe_pause).await;
        }
        let end = self.clock.elapsed();
        // Keep probing while the last jobs drain (plotted, not counted), so that the plot has
        // no gap. Bounded: every heavy request times out after HEAVY_TIMEOUT.
        let mut draining = Prober::new("draining");
        while remaining.load(Ordering::Relaxed) > 0 {
            let left = remaining.load(Ordering::Relaxed);
            self.bar
                .set_message(format!("{label}: {left} heavy jobs left, draining"));
            draining.probe(self).await;
            tokio::time::sleep(self.plan.probe_pause).await;
        }
        let (mut times, mut ok, mut rejected, mut errors, mut compute) = (vec![], 0, 0, 0, 0.0);
        for result in jobs.join_all().await {
            match result {
                Ok(r) if r.status == StatusCode::OK => {
                    ok += 1;
                    times.push(r.elapsed);
                    let json: serde_json::Value =
                        serde_json::from_slice(&r.body).unwrap_or_default();
                    compute += json["compute_ms"].as_f64().unwrap_or(0.0);
                }
                Ok(r) if r.status == StatusCode::SERVICE_UNAVAILABLE => rejected += 1,
                _ => errors += 1,
            }
        }
        SaturatedPhase {
            k,
            multiple,
            start_s: start.as_secs_f64(),
            end_s: end.as_secs_f64(),
            all_workers_busy,
            probes: prober.finish(),
            heavy: Heavy {
                sent: k,
                ok,
                rejected,
                errors,
                completion: Stats::of(&times, 0),
                compute_mean_ms: if ok > 0 { compute / ok as f64 } else { 0.0 },
            },
        }
    }

    /// Polls /status until `want` workers are busy; false if the jobs finished first or 10 s
    /// passed (e.g. the heavy number is too small to keep a worker busy).
    pub async fn wait_busy(&self, want: usize, remaining: &AtomicUsize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && remaining.load(Ordering::Relaxed) >= want {
            if let Ok(status) = self.target.get_json("/status").await {
                let workers = status["workers"].as_array().cloned().unwrap_or_default();
                if workers.iter().filter(|w| w["state"] == "busy").count() >= want {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Closed-loop throughput of `/isprime?number=7`, then of `/testrequest`.
    pub async fn dispatch(&mut self) -> Dispatch {
        let concurrency = self.plan.concurrency;
        let duration = self.plan.duration;
        self.bar.set_message("dispatch: /isprime?number=7");
        let isprime = closed_loop(self.target, "/isprime?number=7", concurrency, duration).await;
        self.bar.set_message("dispatch: /testrequest");
        let testrequest = closed_loop(self.target, "/testrequest", concurrency, duration).await;
        Dispatch {
            concurrency,
            duration_s: duration.as_secs_f64(),
            ratio: match testrequest.requests_per_s {
                r if r > 0.0 => isprime.requests_per_s / r,
                _ => 0.0,
            },
            isprime,
            testrequest,
        }
    }

    /// Short jobs (a 7-digit prime) in a closed loop while one heavy job is always in flight:
    /// the short jobs' latency shows whether any waits behind the heavy one.
    pub async fn mixed(&mut self) -> Mixed {
        let number = mersenne(self.plan.heavy_exponent);
        let heavy_digits = number.len();
        let body = Bytes::from(format!("{{\"number\":\"{number}\"}}"));
        let (target, duration) = (self.target, self.plan.duration);
        let deadline = Instant::now() + duration;
        self.bar
            .set_message("mixed: short jobs while a heavy one is in flight");
        // One heavy job at a time, the next sent as soon as one is answered, until the end.
        let heavy = tokio::spawn(async move {
            let (mut ok, mut errors) = (0, 0);
            while Instant::now() < deadline {
                let call = Call::post_json("/isprime", body.clone());
                match target.fresh(&call, HEAVY_TIMEOUT).await {
                    Ok(r) if r.status == StatusCode::OK => ok += 1,
                    _ => errors += 1,
                }
            }
            (ok, errors)
        });
        let path = "/isprime?number=1000003";
        let short = closed_loop(target, path, self.plan.concurrency, duration).await;
        let (heavy_ok, heavy_errors) = heavy.await.unwrap_or((0, 1));
        Mixed {
            concurrency: self.plan.concurrency,
            duration_s: duration.as_secs_f64(),
            heavy_digits,
            heavy_ok,
            heavy_errors,
            short,
        }
    }

    /// `/ls` of a directory of `ls_files` empty files inside `root` (the server's ls root),
    /// against `ls -lash` run directly; the server's RSS is sampled throughout.
    pub async fn ls(&mut self, root: &Path) -> Result<Ls, String> {
        let pid = self.server_pid.ok_or("server pid unknown")?;
        let files = self.plan.ls_files;
        self.bar.set_message(format!("ls: creating {files} files"));
        let dir = tokio::task::spawn_blocking({
            let root = root.to_owned();
            move || make_files(&root, files)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot create the ls directory in {}: {e}", root.display()))?;
        let name = dir.path().file_name().expect("a temp dir has a name");
        let call = Call::get(format!("/ls?directory=/{}", name.to_string_lossy()));
        let path: PathBuf = dir.path().to_owned();

        raw_ls(&path).await?; // warms the inode and dentry caches for both sides
        let rss_before_kib = rss_kib(pid).ok_or("cannot read the server's RSS")?;
        let peak = Arc::new(AtomicUsize::new(rss_before_kib as usize));
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = tokio::spawn({
            let (peak, stop) = (peak.clone(), stop.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(kib) = rss_kib(pid) {
                        peak.fetch_max(kib as usize, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        let (mut server, mut raw, mut body_bytes) = (Vec::new(), Vec::new(), 0);
        let mut failure = None;
        for i in 0..self.plan.ls_runs {
            self.bar
                .set_message(format!("ls: run {}/{}", i + 1, self.plan.ls_runs));
            raw.push(raw_ls(&path).await?);
            match self.target.fresh(&call, Duration::from_secs(120)).await {
                Ok(r) if r.status == StatusCode::OK => {
                    server.push(r.elapsed);
                    body_bytes = r.body.len();
                }
                Ok(r) => {
                    let text = String::from_utf8_lossy(&r.body);
                    failure = Some(format!("/ls: status {}: {}", r.status, text.trim()));
                    break;
                }
                Err(e) => {
                    failure = Some(format!("/ls: {e}"));
                    break;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        let _ = sampler.await;
        self.bar.set_message("ls: removing the files");
        let _ = tokio::task::spawn_blocking(move || drop(dir)).await;
        if let Some(failure) = failure {
            return Err(failure);
        }
        let rss_peak_kib = peak.load(Ordering::Relaxed) as u64;
        let (server_ms, raw_ms) = (median_ms(&mut server), median_ms(&mut raw));
        Ok(Ls {
            files,
            runs: server.len(),
            body_bytes,
            server_ms,
            raw_ms,
            ratio: if raw_ms > 0.0 {
                server_ms / raw_ms
            } else {
                0.0
            },
            rss_before_kib,
            rss_peak_kib,
            rss_growth_kib: rss_peak_kib.saturating_sub(rss_before_kib),
        })
    }
}

/// `concurrency` tasks, each on its own kept-alive connection, sending `path` back to back
/// until `duration` is over.
async fn closed_loop(
    target: Target,
    path: &str,
    concurrency: usize,
    duration: Duration,
) -> Throughput {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let call = Call::get(path);
        tasks.spawn(async move {
            let (mut times, mut errors) = (Vec::new(), 0u64);
            let mut client = KeptAlive::new(target);
            while Instant::now() < deadline {
                match client.send(&call, PROBE_TIMEOUT).await {
                    Ok(r) if r.status == StatusCode::OK => times.push(r.elapsed),
                    Ok(_) => errors += 1,
                    Err(ClientError::Connect { .. }) => {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(_) => errors += 1,
                }
            }
            (times, errors)
        });
    }
    let (mut times, mut errors) = (Vec::new(), 0);
    for (t, e) in tasks.join_all().await {
        times.extend(t);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Throughput {
        path: path.to_owned(),
        ok: times.len() as u64,
        errors,
        requests_per_s: times.len() as f64 / elapsed,
        latency: Stats::of(&times, errors as usize),
    }
}

/// A temporary directory of `n` empty files inside `root`; removed when dropped.
pub fn make_files(root: &Path, n: usize) -> std::io::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix("ls-").tempdir_in(root)?;
    for i in 0..n {
        std::fs::File::create(dir.path().join(format!("file-{i:07}")))?;
    }
    Ok(dir)
}

/// Time of `LC_ALL=C.UTF-8 ls -lash --quoting-style=c-maybe DIR > /dev/null`: the command
/// line and locale the server runs `ls` with, so that only the server's own cost differs (the
/// C locale sorts names faster than most others).
async fn raw_ls(dir: &Path) -> Result<Duration, String> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let status = Command::new("ls")
            .env("LC_ALL", "C.UTF-8")
            .args(["-lash", "--quoting-style=c-maybe"])
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run ls: {e}"))?;
        match status.success() {
            true => Ok(started.elapsed()),
            false => Err(format!("ls -lash {} failed: {status}", dir.display())),
        }
    })
    .await
    .map_err(|e| e.to_string())?
}

fn median_ms(times: &mut [Duration]) -> f64 {
    times.sort();
    times
        .get(times.len() / 2)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// Resident set size of a process in KiB, from `/proc/PID/statm` (the reading the server's
/// /status makes too; this program reads it itself because it links nothing of the server).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64 / 1024)
}
