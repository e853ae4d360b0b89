//! What the tail scenario reports: the phases' percentiles, the slow probes, the threads that
//! waited, and the table printed from them. Data only (the scenario in `tail` fills it), so
//! that the load tester's report can hold it without depending on the scenario's code.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::sched::{Owner, ThreadWait};
use crate::percentile::nearest_rank;

/// Threads listed per phase in the table (the JSON has all).
const THREADS_SHOWN: usize = 8;

/// A probe slower than this is listed on its own in the JSON (`slow`), with when it started,
/// for `benches/sched_delays.py --probes` to name who waited during it: about twice the idle
/// worst case on a quiet machine, half a scheduler tick at HZ=250.
pub(super) const SLOW: Duration = Duration::from_millis(2);

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
    pub(super) fn of(mut ms: Vec<f64>) -> Tail99 {
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
