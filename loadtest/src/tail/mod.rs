//! The `tail` scenario: the server's own latency tail, measured with the lean probe
//! ([`lean`]): `--tail-probes` probes `--tail-spacing` apart on a new connection each, first
//! against a trivial responder in this process (what the probe and the loopback cost alone),
//! then against the server idle, then with each of `--tail-jobs` heavy jobs kept in flight (a
//! new one sent as each is answered, so the workers never run dry). Connect, first byte and
//! total are reported with p50/p90/p99/p99.9/max, and for each phase the run-queue wait of
//! every thread of the server, its workers and this program ([`sched`]).
//!
//! Failure modes: probe errors are counted (the first few kept, with their reason) and left
//! out of the percentiles; a phase whose workers never all became busy says so
//! (`all_busy: false`); the responder failing to start leaves the calibration row out.

mod lean;
pub mod plot;
mod sched;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::StatusCode;
use serde::Serialize;
use tokio::task::JoinSet;

use super::client::Call;
use super::report::nearest_rank;
use super::scenarios::Run;
use forkpool::prime::mersenne;
use lean::{probe, thread_cpu, Responder, Timing};
use sched::{OwnWait, Owner, Snapshot, ThreadWait};

/// Longest wait for one probe's response.
const PROBE_LIMIT: Duration = Duration::from_secs(5);
/// Longest wait for one heavy job.
const HEAVY_LIMIT: Duration = Duration::from_secs(120);
/// Probe errors whose reason is kept per phase.
const ERRORS_KEPT: usize = 5;
/// Threads listed per phase in the table (the JSON has all).
const THREADS_SHOWN: usize = 8;
/// A probe slower than this is listed on its own in the JSON (`slow`), with when it started,
/// for `benches/sched_delays.py --probes` to name who waited during it: about twice the idle
/// worst case on a quiet machine, half a scheduler tick at HZ=250.
const SLOW: Duration = Duration::from_millis(2);

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

/// What the scenario measured.
#[derive(Debug, Serialize)]
pub struct Tail {
    /// Probes per phase.
    pub probes: usize,
    /// Spacing between probe starts, ms.
    pub spacing_ms: f64,
    /// Digits of the heavy job.
    pub heavy_digits: usize,
    /// The probe against the in-process responder: its own cost plus loopback.
    pub probe_alone: Option<TailPhase>,
    /// Idle, then one phase per entry of `--tail-jobs`.
    pub phases: Vec<TailPhase>,
}

/// One phase of probes.
#[derive(Debug, Serialize)]
pub struct TailPhase {
    /// `probe alone`, `idle` or `N heavy jobs`.
    pub label: String,
    /// Heavy jobs kept in flight.
    pub jobs: usize,
    /// Whether every worker was busy when probing began (always true without jobs).
    pub all_busy: bool,
    /// Heavy jobs answered 200 during the phase.
    pub heavy_ok: usize,
    /// Heavy jobs that failed or were refused.
    pub heavy_failed: usize,
    /// Time to `connect` returning.
    pub connect: Tail99,
    /// Time to the first response byte.
    pub first_byte: Tail99,
    /// Time to the whole response.
    pub total: Tail99,
    /// Probes without a whole 200.
    pub errors: usize,
    /// Reasons of the first few errors.
    pub error_reasons: Vec<String>,
    /// Probes that started more than one spacing late (the probe thread itself was delayed).
    pub late: usize,
    /// The probe thread's CPU time per probe, µs.
    pub probe_cpu_us: f64,
    /// The probe thread's run-queue wait over the phase, ms (part of the figures above).
    pub probe_wait_ms: f64,
    /// CPU time the hypervisor took from the machine's CPUs during the phase, ms (all CPUs, in
    /// 10 ms ticks; `None` without a steal count): stalls no thread's run-queue wait shows.
    pub steal_ms: Option<f64>,
    /// The probe thread's id (gone by the time the thread table is read), for a trace.
    pub probe_tid: u32,
    /// Every total, in probe order, ms (for the plot).
    pub totals_ms: Vec<f64>,
    /// The probe thread's own run-queue wait during each probe, in probe order, ms. An upper
    /// bound of what the probe itself added, not a part to subtract: it counts from just
    /// before the probe to just after it (so it can exceed the total), and it includes the
    /// time the probe thread was preempted by the server's thread answering it on the same
    /// CPU (on loopback the woken server often runs on the probe's CPU). Which of the two a
    /// slow probe's wait was, only a scheduler trace tells (`benches/sched_delays.py --probes`).
    pub own_wait_ms: Vec<f64>,
    /// The probes slower than [`SLOW`], in probe order.
    pub slow: Vec<SlowProbe>,
    /// What each thread of the server, its workers and this program did meanwhile.
    pub threads: Vec<ThreadWait>,
}

/// One probe slower than [`SLOW`].
#[derive(Debug, Clone, Serialize)]
pub struct SlowProbe {
    /// Its position in the phase, from 0.
    pub index: usize,
    /// When it began, `CLOCK_MONOTONIC` in ns: the clock of `perf sched record -k mono`.
    pub start_ns: u64,
    /// Time to `connect` returning, ms.
    pub connect_ms: f64,
    /// Time to the first response byte, ms.
    pub first_byte_ms: f64,
    /// Time to the whole response, ms.
    pub total_ms: f64,
    /// The probe thread's own run-queue wait around it, ms (an upper bound, see
    /// [`TailPhase::own_wait_ms`]).
    pub own_wait_ms: f64,
}

/// Nearest-rank percentiles, ms.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tail99 {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
}

impl Tail99 {
    fn of(mut ms: Vec<f64>) -> Tail99 {
        ms.sort_by(f64::total_cmp);
        Tail99 {
            p50: nearest_rank(&ms, 50.0),
            p90: nearest_rank(&ms, 90.0),
            p99: nearest_rank(&ms, 99.0),
            p999: nearest_rank(&ms, 99.9),
            max: ms.last().copied().unwrap_or(0.0),
        }
    }
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

impl Tail {
    /// The scenario's part of the printed table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\ntail: lean probe, /testrequest on a new connection, {} probes {:.1} ms apart; heavy job {} digits (ms)\n  {:<14} {:>5} {:>4}  {:>23}  {:>23}  {:>37}  {:>7} {:>8}  {:>5} {:>6} {:>6}",
            self.probes, self.spacing_ms, self.heavy_digits, "phase", "ok", "err",
            "connect p50 p99 max", "first byte p50 p99 max", "total p50 p90 p99 p99.9 max",
            "cpu/µs", "wait ms", "slow", "own", "steal"
        );
        for p in self.probe_alone.iter().chain(&self.phases) {
            let (c, f, t) = (&p.connect, &p.first_byte, &p.total);
            let busy = if p.all_busy {
                ""
            } else {
                "  (workers NOT all busy)"
            };
            let own = p.slow.iter().filter(|s| s.own_wait_ms * 2.0 > s.total_ms);
            let _ = writeln!(
                out,
                "  {:<14} {:>5} {:>4}  {:>7.3} {:>7.3} {:>7.3}  {:>7.3} {:>7.3} {:>7.3}  {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>7.3}  {:>7.1} {:>8.2}  {:>5} {:>6} {:>6}{busy}",
                p.label, p.totals_ms.len(), p.errors, c.p50, c.p99, c.max, f.p50, f.p99, f.max,
                t.p50, t.p90, t.p99, t.p999, t.max, p.probe_cpu_us, p.probe_wait_ms,
                p.slow.len(), own.count(), p.steal_ms.map_or("-".into(), |ms| format!("{ms:.0}"))
            );
        }
        let _ = writeln!(
            out,
            "  (cpu/µs and wait ms: the probe thread's own CPU time per probe and its run-queue wait over the phase;\n   slow: probes over {} ms; own: those of them during which the probe thread was runnable but not running for\n   more than half the total, whether behind another task or preempted by the server thread answering it;\n   steal: ms the hypervisor took from this machine's CPUs during the phase, in 10 ms ticks)",
            SLOW.as_millis()
        );
        for p in &self.phases {
            thread_rows(&mut out, p);
        }
        out
    }
}

/// The threads that waited longest for a CPU during a phase.
fn thread_rows(out: &mut String, p: &TailPhase) {
    let _ = writeln!(
        out,
        "  run-queue wait during \"{}\" (heavy jobs answered {}, failed {}):\n    {:<9} {:>7}  {:<16} {:<6} {:>4} {:<5} {:>9} {:>9} {:>7} {:>11}",
        p.label, p.heavy_ok, p.heavy_failed, "process", "tid", "thread", "class", "nice", "cpus",
        "run ms", "wait ms", "slices", "wait/slice"
    );
    for t in p.threads.iter().take(THREADS_SHOWN) {
        let per_slice = t.wait_ms * 1e3 / t.slices.max(1) as f64;
        let owner = match t.owner {
            Owner::Server => "server",
            Owner::Worker => "worker",
            Owner::Loadtest => "loadtest",
        };
        let _ = writeln!(
            out,
            "    {owner:<9} {:>7}  {:<16} {:<6} {:>4} {:<5} {:>9.2} {:>9.2} {:>7} {:>9.1}µs",
            t.tid, t.name, t.class, t.nice, t.cpus, t.run_ms, t.wait_ms, t.slices, per_slice
        );
    }
}
