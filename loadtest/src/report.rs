//! What a load test measured (serialized as `--json`) and the table printed on stdout.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// Everything one run measured. Scenarios that were not asked for stay `None`; a scenario that
/// could not run records why in `errors` and leaves the rest of the report intact.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub url: String,
    pub spawned: bool,
    pub server_pid: Option<u32>,
    pub worker_pids: Vec<u32>,
    pub workers: usize,
    /// How the workers yield the CPU (`nice 10`, `SCHED_IDLE`), from the server's /status.
    pub worker_priority: Option<String>,
    /// Extra flags given to a spawned server with `--server-arg`.
    pub server_args: Vec<String>,
    /// Unix time in seconds at the start of the run.
    pub started_at: f64,
    pub duration_s: f64,
    pub memory: Option<Memory>,
    pub idle: Option<ProbePair>,
    pub saturated: Option<Saturated>,
    pub dispatch: Option<Dispatch>,
    pub mixed: Option<Mixed>,
    pub ls: Option<Ls>,
    pub errors: Vec<String>,
    /// Every /testrequest probe, in order, for the plot.
    pub samples: Vec<Sample>,
}

/// Resident memory of the server and its workers, taken while idle.
#[derive(Debug, Serialize)]
pub struct Memory {
    pub server_kib: u64,
    pub workers_kib: Vec<u64>,
    pub total_kib: u64,
}

/// One probe: when it started (seconds since the run began), how long it took, how it
/// connected, in which phase, and whether it got a 200.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub ms: f64,
    pub conn: ConnKind,
    pub phase: String,
    pub ok: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnKind {
    /// Connect, request, hang up.
    New,
    /// One connection reused for every probe of the phase.
    KeptAlive,
}

/// Probe latency of one phase, for both kinds of connection.
#[derive(Debug, Serialize)]
pub struct ProbePair {
    pub new_conn: Stats,
    pub kept_alive: Stats,
}

/// Latency summary in milliseconds. `errors` counts probes without a 200 (not in the
/// percentiles).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub count: usize,
    pub errors: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Stats {
    /// Nearest-rank percentiles of `times`.
    pub fn of(times: &[Duration], errors: usize) -> Stats {
        let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let rank = |p: f64| -> f64 {
            if ms.is_empty() {
                return 0.0;
            }
            let index = ((p / 100.0) * ms.len() as f64).ceil() as usize;
            ms[index.clamp(1, ms.len()) - 1]
        };
        Stats {
            count: ms.len(),
            errors,
            p50_ms: rank(50.0),
            p99_ms: rank(99.0),
            max_ms: ms.last().copied().unwrap_or(0.0),
            mean_ms: match ms.len() {
                0 => 0.0,
                n => ms.iter().sum::<f64>() / n as f64,
            },
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Saturated {
    /// The heavy job: 2^exponent - 1.
    pub exponent: u32,
    pub digits: usize,
    pub phases: Vec<SaturatedPhase>,
}

/// K heavy jobs in flight, and the probes while every worker was busy.
#[derive(Debug, Serialize)]
pub struct SaturatedPhase {
    pub k: usize,
    /// K as a multiple of the worker count.
    pub multiple: usize,
    /// Seconds since the run began: the span that was probed (shaded in the plot).
    pub start_s: f64,
    pub end_s: f64,
    /// Whether /status showed every worker busy before probing began.
    pub all_workers_busy: bool,
    pub probes: ProbePair,
    pub heavy: Heavy,
}

#[derive(Debug, Serialize)]
pub struct Heavy {
    pub sent: usize,
    pub ok: usize,
    /// 503: the queue was full.
    pub rejected: usize,
    pub errors: usize,
    /// Time from send to answer of each job that got a 200.
    pub completion: Stats,
    /// Mean `compute_ms` reported by the server (time inside the worker).
    pub compute_mean_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Dispatch {
    pub concurrency: usize,
    pub duration_s: f64,
    pub isprime: Throughput,
    pub testrequest: Throughput,
    /// isprime requests/s over testrequest requests/s.
    pub ratio: f64,
}

/// Short jobs next to a heavy one (the `mixed` scenario).
#[derive(Debug, Serialize)]
pub struct Mixed {
    /// Short-job requests in flight.
    pub concurrency: usize,
    pub duration_s: f64,
    /// Digits of the heavy job's number.
    pub heavy_digits: usize,
    /// Heavy jobs answered 200, one in flight at a time.
    pub heavy_ok: u64,
    pub heavy_errors: u64,
    /// The short jobs.
    pub short: Throughput,
}

/// Closed-loop throughput of one endpoint.
#[derive(Debug, Serialize)]
pub struct Throughput {
    pub path: String,
    pub ok: u64,
    pub errors: u64,
    pub requests_per_s: f64,
    pub latency: Stats,
}

#[derive(Debug, Serialize)]
pub struct Ls {
    pub files: usize,
    pub runs: usize,
    pub body_bytes: usize,
    /// Median time of a whole /ls response, body included.
    pub server_ms: f64,
    /// Median time of `ls -lash DIR > /dev/null` run directly.
    pub raw_ms: f64,
    pub ratio: f64,
    pub rss_before_kib: u64,
    pub rss_peak_kib: u64,
    pub rss_growth_kib: u64,
}

impl Report {
    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let nice = self
            .worker_priority
            .as_ref()
            .map_or_else(String::new, |p| format!(", workers at {p}"));
        let how = if self.spawned { "spawned" } else { "running" };
        let _ = writeln!(
            out,
            "forkpool-loadtest  {}  ({how} server, {} workers{nice}{})  {:.1} s",
            self.url,
            self.workers,
            match self.server_args.is_empty() {
                true => String::new(),
                false => format!(", {}", self.server_args.join(" ")),
            },
            self.duration_s
        );
        if let Some(m) = &self.memory {
            let workers: Vec<String> = m.workers_kib.iter().map(|k| mib(*k)).collect();
            let _ = writeln!(
                out,
                "\nidle memory (RSS)  server {} + workers {} = {} MiB",
                mib(m.server_kib),
                workers.join(" + "),
                mib(m.total_kib)
            );
        }
        if self.idle.is_some() || self.saturated.is_some() {
            let _ = writeln!(
                out,
                "\n/testrequest probes (ms)   conn        n    p50    p99    max  errors"
            );
            if let Some(idle) = &self.idle {
                probe_rows(&mut out, "idle", idle);
            }
            if let Some(s) = &self.saturated {
                for phase in &s.phases {
                    let label = format!("saturated K={} ({}x)", phase.k, phase.multiple);
                    probe_rows(&mut out, &label, &phase.probes);
                }
            }
        }
        if let Some(s) = &self.saturated {
            let _ = writeln!(
                out,
                "\nheavy jobs: 2^{}-1 ({} digits)\n   K  sent   ok  503  err  all busy  done p50  done max  compute mean",
                s.exponent, s.digits
            );
            for p in &s.phases {
                let h = &p.heavy;
                let _ = writeln!(
                    out,
                    "{:>4}  {:>4} {:>4} {:>4} {:>4}  {:>8}  {:>7.2}s  {:>7.2}s  {:>11.2}s",
                    p.k,
                    h.sent,
                    h.ok,
                    h.rejected,
                    h.errors,
                    if p.all_workers_busy { "yes" } else { "NO" },
                    h.completion.p50_ms / 1e3,
                    h.completion.max_ms / 1e3,
                    h.compute_mean_ms / 1e3
                );
            }
        }
        if let Some(d) = &self.dispatch {
            let _ = writeln!(
                out,
                "\ndispatch (closed loop, concurrency {}, {:.1} s each)\n  endpoint              req/s        ok  errors  p50 ms  p99 ms",
                d.concurrency, d.duration_s
            );
            for t in [&d.isprime, &d.testrequest] {
                let _ = writeln!(
                    out,
                    "  {:<18} {:>8.0}  {:>8}  {:>6}  {:>6.2}  {:>6.2}",
                    t.path, t.requests_per_s, t.ok, t.errors, t.latency.p50_ms, t.latency.p99_ms
                );
            }
            let _ = writeln!(out, "  ratio isprime/testrequest: {:.2}", d.ratio);
        }
        if let Some(m) = &self.mixed {
            let t = &m.short;
            let _ = writeln!(
                out,
                "\nmixed (short jobs in a closed loop, concurrency {}, {:.1} s, next to one {}-digit job at a time)\n  endpoint                    req/s        ok  errors  p50 ms  p99 ms  max ms\n  {:<26} {:>6.0}  {:>8}  {:>6}  {:>6.2}  {:>6.2}  {:>6.2}\n  heavy jobs answered: {}, errors: {}",
                m.concurrency, m.duration_s, m.heavy_digits, t.path, t.requests_per_s, t.ok,
                t.errors, t.latency.p50_ms, t.latency.p99_ms, t.latency.max_ms, m.heavy_ok,
                m.heavy_errors
            );
        }
        if let Some(ls) = &self.ls {
            let _ = writeln!(
                out,
                "\nls ({} files, {:.1} MB listing, median of {} runs)\n  server /ls {:.0} ms, raw ls {:.0} ms, ratio {:.2}\n  server RSS {} MiB before, {} MiB peak, growth {} KiB",
                ls.files,
                ls.body_bytes as f64 / 1e6,
                ls.runs,
                ls.server_ms,
                ls.raw_ms,
                ls.ratio,
                mib(ls.rss_before_kib),
                mib(ls.rss_peak_kib),
                ls.rss_growth_kib
            );
        }
        if !self.errors.is_empty() {
            let _ = writeln!(out, "\nerrors");
            for e in &self.errors {
                let _ = writeln!(out, "  {e}");
            }
        }
        out
    }
}

fn probe_rows(out: &mut String, label: &str, pair: &ProbePair) {
    for (kind, s) in [("new", &pair.new_conn), ("kept-alive", &pair.kept_alive)] {
        let _ = writeln!(
            out,
            "  {label:<24} {kind:<10} {:>5} {:>6.2} {:>6.2} {:>6.2}  {:>6}",
            s.count, s.p50_ms, s.p99_ms, s.max_ms, s.errors
        );
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let times: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Stats::of(&times, 2);
        assert_eq!((s.count, s.errors), (100, 2));
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
        assert_eq!(Stats::of(&[], 0).p99_ms, 0.0);
        assert_eq!(Stats::of(&[Duration::from_millis(3)], 0).p50_ms, 3.0);
    }
}
