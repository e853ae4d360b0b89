//! The `tail` scenario: the server's own latency tail, measured with the lean probe
//! ([`lean`]): `--tail-probes` probes `--tail-spacing` apart on a new connection each, first
//! against a trivial responder in this process (what the probe and the loopback cost alone),
//! then against the server idle, then with each of `--tail-jobs` heavy jobs kept in flight (a
//! new one sent as each is answered, so the workers never run dry). Connect, first byte and
//! total are reported with p50/p90/p99/p99.9/max, and for each phase the run-queue wait of
//! every thread of the server, its workers and this program ([`sched`]); the figures and their
//! table are [`report`]'s, data the load tester's report holds without this scenario's code.
//!
//! Failure modes: probe errors are counted (the first few kept, with their reason) and left
//! out of the percentiles; a phase whose workers never all became busy says so
//! (`all_busy: false`); the responder failing to start leaves the calibration row out.

mod lean;
pub mod plot;
pub mod report;
mod sched;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::StatusCode;
use tokio::task::JoinSet;

use super::client::Call;
use super::scenarios::Run;
use forkpool::prime::mersenne;
use lean::{probe, thread_cpu, Responder, Timing};
use report::{SlowProbe, Tail, Tail99, TailPhase, SLOW};
use sched::{OwnWait, Owner, Snapshot, ThreadWait};

/// Longest wait for one probe's response.
const PROBE_LIMIT: Duration = Duration::from_secs(5);
/// Longest wait for one heavy job.
const HEAVY_LIMIT: Duration = Duration::from_secs(120);
/// Probe errors whose reason is kept per phase.
const ERRORS_KEPT: usize = 5;

/// The scenario's settings (from the command line).
#[derive(Debug, Clone)]
pub struct TailPlan {
    /// Probes per phase.
    pub probes: usize,
    /// Time from the start of one probe to the start of the next.
    pub spacing: Duration,
    /// Heavy jobs in flight in each saturated phase.
    pub jobs: Vec<usize>,
    /// The worker processes, whose threads are listed with the server's.
    pub worker_pids: Vec<u32>,
}

/// One probe as the probe thread saw it.
struct Sample {
    /// When it began, `CLOCK_MONOTONIC` ns.
    start_ns: u64,
    timing: Timing,
    /// The probe thread's run-queue wait from just before the probe to just after it.
    own_wait: Duration,
}

/// One series of probes as the probe thread saw it.
struct Series {
    samples: Vec<Sample>,
    errors: usize,
    reasons: Vec<String>,
    late: usize,
    cpu: Duration,
    own_wait_ns: u64,
    tid: u32,
}

/// `n` probes of `addr`, started `spacing` apart on a fixed schedule (a late probe does not
/// shift the ones after it). Runs on the calling (blocking) thread.
fn series(addr: SocketAddr, n: usize, spacing: Duration) -> Series {
    let own = OwnWait::open();
    let waited = || own.as_ref().and_then(OwnWait::ns).unwrap_or(0);
    let (cpu0, wait0) = (thread_cpu(), waited());
    let mut s = Series {
        samples: Vec::with_capacity(n),
        errors: 0,
        reasons: Vec::new(),
        late: 0,
        cpu: Duration::ZERO,
        own_wait_ns: 0,
        tid: rustix::thread::gettid().as_raw_nonzero().get() as u32,
    };
    let start = Instant::now();
    for i in 0..n {
        let due = start + spacing * i as u32;
        match due.checked_duration_since(Instant::now()) {
            Some(wait) => std::thread::sleep(wait),
            None => s.late += usize::from(due.elapsed() > spacing),
        }
        let (start_ns, before) = (monotonic_ns(), waited());
        match probe(addr, PROBE_LIMIT) {
            Ok(timing) => s.samples.push(Sample {
                start_ns,
                timing,
                own_wait: Duration::from_nanos(waited().saturating_sub(before)),
            }),
            Err(e) => {
                s.errors += 1;
                if s.reasons.len() < ERRORS_KEPT {
                    s.reasons.push(e.to_string());
                }
            }
        }
    }
    s.cpu = thread_cpu().saturating_sub(cpu0);
    s.own_wait_ns = waited().saturating_sub(wait0);
    s
}

/// `CLOCK_MONOTONIC` now, ns (the clock `Instant` reads, and `perf record -k mono`'s).
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Runs [`series`] on a thread of its own named `lean-probe`, so that its run-queue wait shows
/// by name in the thread table (and in `perf sched`).
async fn probe_series(addr: SocketAddr, plan: &TailPlan) -> Series {
    let (n, spacing) = (plan.probes, plan.spacing);
    let thread = std::thread::Builder::new()
        .name("lean-probe".into())
        .spawn(move || series(addr, n, spacing))
        .expect("a thread can be started");
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .expect("the joining thread does not panic")
        .expect("the probe thread does not panic")
}

impl TailPhase {
    fn of(
        label: String,
        jobs: usize,
        s: Series,
        threads: Vec<ThreadWait>,
        steal_ms: Option<f64>,
    ) -> TailPhase {
        let ms = |f: fn(&Sample) -> Duration| -> Vec<f64> {
            s.samples.iter().map(|t| f(t).as_secs_f64() * 1e3).collect()
        };
        let attempts = (s.samples.len() + s.errors).max(1);
        TailPhase {
            label,
            jobs,
            all_busy: true,
            heavy_ok: 0,
            heavy_failed: 0,
            connect: Tail99::of(ms(|t| t.timing.connect)),
            first_byte: Tail99::of(ms(|t| t.timing.first_byte)),
            totals_ms: ms(|t| t.timing.total),
            total: Tail99::of(ms(|t| t.timing.total)),
            own_wait_ms: ms(|t| t.own_wait),
            slow: slow_probes(&s.samples),
            probe_tid: s.tid,
            steal_ms,
            errors: s.errors,
            error_reasons: s.reasons,
            late: s.late,
            probe_cpu_us: s.cpu.as_secs_f64() * 1e6 / attempts as f64,
            probe_wait_ms: s.own_wait_ns as f64 / 1e6,
            threads,
        }
    }
}

/// The probes slower than [`SLOW`].
fn slow_probes(samples: &[Sample]) -> Vec<SlowProbe> {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    samples
        .iter()
        .enumerate()
        .filter(|(_, p)| p.timing.total > SLOW)
        .map(|(index, p)| SlowProbe {
            index,
            start_ns: p.start_ns,
            connect_ms: ms(p.timing.connect),
            first_byte_ms: ms(p.timing.first_byte),
            total_ms: ms(p.timing.total),
            own_wait_ms: ms(p.own_wait),
        })
        .collect()
}

impl Run {
    /// The `tail` scenario (see the module doc).
    pub async fn tail(&mut self, plan: &TailPlan) -> Tail {
        let number = mersenne(self.plan.heavy_exponent);
        let body = Bytes::from(format!("{{\"number\":\"{number}\"}}"));
        self.bar.set_message("tail: the probe alone");
        let probe_alone = self.probe_alone(plan).await;
        let mut phases = Vec::new();
        for jobs in std::iter::once(0).chain(plan.jobs.iter().copied()) {
            self.bar.set_message(format!(
                "tail: {} probes with {jobs} heavy jobs",
                plan.probes
            ));
            phases.push(self.tail_phase(plan, jobs, body.clone()).await);
        }
        Tail {
            probes: plan.probes,
            spacing_ms: plan.spacing.as_secs_f64() * 1e3,
            heavy_digits: number.len(),
            probe_alone,
            phases,
        }
    }

    async fn probe_alone(&self, plan: &TailPlan) -> Option<TailPhase> {
        let responder = Responder::start(plan.probes).ok()?;
        let procs = [(Owner::Loadtest, std::process::id())];
        let snapshot = Snapshot::take(&procs);
        let s = probe_series(responder.addr, plan).await;
        let (threads, steal) = (snapshot.since(), snapshot.stolen_ms());
        // Connections the probe never made (errors) leave the responder waiting: let it go.
        for _ in 0..s.errors {
            let _ = std::net::TcpStream::connect(responder.addr);
        }
        tokio::task::spawn_blocking(move || responder.join())
            .await
            .ok()?;
        Some(TailPhase::of("probe alone".into(), 0, s, threads, steal))
    }

    /// One phase: `jobs` heavy jobs kept in flight (none: idle) while the probes run.
    async fn tail_phase(&mut self, plan: &TailPlan, jobs: usize, body: Bytes) -> TailPhase {
        let stop = Arc::new(AtomicBool::new(false));
        let loops = self.keep_in_flight(jobs, body, stop.clone());
        let in_flight = AtomicUsize::new(jobs);
        let all_busy = jobs == 0 || self.wait_busy(jobs.min(self.workers), &in_flight).await;
        let mut procs = vec![(Owner::Loadtest, std::process::id())];
        procs.extend(self.server_pid.map(|p| (Owner::Server, p)));
        procs.extend(plan.worker_pids.iter().map(|&p| (Owner::Worker, p)));
        let snapshot = Snapshot::take(&procs);
        let s = probe_series(self.target.addr, plan).await;
        let (threads, steal) = (snapshot.since(), snapshot.stolen_ms());
        stop.store(true, Ordering::Relaxed);
        let label = match jobs {
            0 => "idle".to_owned(),
            n => format!("{n} heavy jobs"),
        };
        let mut phase = TailPhase::of(label, jobs, s, threads, steal);
        phase.all_busy = all_busy;
        for (ok, failed) in loops.join_all().await {
            phase.heavy_ok += ok;
            phase.heavy_failed += failed;
        }
        phase
    }

    /// `jobs` loops, each sending the heavy job again as soon as it is answered, until `stop`.
    /// Each returns its answered and failed counts.
    fn keep_in_flight(
        &self,
        jobs: usize,
        body: Bytes,
        stop: Arc<AtomicBool>,
    ) -> JoinSet<(usize, usize)> {
        let mut loops = JoinSet::new();
        for _ in 0..jobs {
            let (target, body, stop) = (self.target, body.clone(), stop.clone());
            loops.spawn(async move {
                let (mut ok, mut failed) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let call = Call::post_json("/isprime", body.clone());
                    match target.fresh(&call, HEAVY_LIMIT).await {
                        Ok(r) if r.status == StatusCode::OK => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            });
        }
        loops
    }
}
