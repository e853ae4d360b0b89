//! What a load test measured (serialized as `--json`) and the table printed on stdout.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::percentile::nearest_rank;

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
    /// The overload scenario: wasted work under client deadlines.
    pub overload: Option<super::overload::Overload>,
    /// The upgrade scenario: SIGUSR2 in-place upgrades under load.
    pub upgrade: Option<Lifecycle>,
    /// The restart scenario: restarts on a launcher-held socket under load.
    pub restart: Option<Lifecycle>,
    /// The tail scenario: the lean probe idle and saturated.
    pub tail: Option<crate::tail::report::Tail>,
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
        let rank = |p: f64| nearest_rank(&ms, p);
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

/// A lifecycle scenario (`upgrade` or `restart`): servers replaced one after another under a
/// steady mixed load, what the clients saw, and what was left behind.
#[derive(Debug, Serialize)]
pub struct Lifecycle {
    /// `upgrade` or `restart`.
    pub scenario: &'static str,
    /// Upgrades or restarts asked for.
    pub asked: usize,
    /// Those seen through to the end (new server ready, old one gone).
    pub done: usize,
    /// The versions the builds report: the first server's, then the one upgraded to.
    pub versions: Vec<String>,
    /// Each upgrade or restart, in order.
    pub events: Vec<Event>,
    /// Signal to the new server ready, over the events (ms).
    pub ready: Spread,
    /// Signal to the old server gone, over the events (ms).
    pub old_gone: Spread,
    /// What the clients of the steady load saw.
    pub load: LoadReport,
    /// What was left behind.
    pub leaks: Leaks,
    /// Why an event or a check could not be completed.
    pub errors: Vec<String>,
}

/// One upgrade (SIGUSR2) or restart (SIGTERM, then a new server).
#[derive(Debug, Serialize)]
pub struct Event {
    /// 1, 2, ...
    pub index: usize,
    /// When the signal was sent, in seconds since the run began (as failures are timed).
    pub t_s: f64,
    /// The server that was signalled.
    pub from_pid: u32,
    /// The server that took over.
    pub to_pid: u32,
    /// The version the new server reported in /status (upgrade), or `None` (restart).
    pub version: Option<String>,
    /// From the signal until the new server was ready: it wrote the pid file (upgrade) or
    /// said `READY=1` (restart).
    pub ready_ms: f64,
    /// From the signal until the old server had exited and been reaped.
    pub old_gone_ms: f64,
}

/// Smallest, median and largest of a set of times, in ms.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Spread {
    /// The smallest.
    pub min_ms: f64,
    /// The middle one (the lower of the two middle ones for an even count).
    pub median_ms: f64,
    /// The largest.
    pub max_ms: f64,
}

impl Spread {
    pub fn of(ms: impl IntoIterator<Item = f64>) -> Spread {
        let mut ms: Vec<f64> = ms.into_iter().collect();
        ms.sort_by(f64::total_cmp);
        match (ms.first(), ms.last()) {
            (Some(&min_ms), Some(&max_ms)) => Spread {
                min_ms,
                median_ms: ms[(ms.len() - 1) / 2],
                max_ms,
            },
            _ => Spread::default(),
        }
    }
}

/// The steady mixed load of a lifecycle scenario.
#[derive(Debug, Default, Serialize)]
pub struct LoadReport {
    /// Clients that keep one connection alive (and open a new one when it is closed).
    pub kept_alive_clients: usize,
    /// Clients that open a new connection for every request.
    pub new_conn_clients: usize,
    /// How long the load ran.
    pub duration_s: f64,
    /// Requests by kind, in the order of [`KindCount::kind`].
    pub kinds: Vec<KindCount>,
    /// Requests sent, of every kind.
    pub sent: u64,
    /// Answered as expected.
    pub ok: u64,
    /// The others.
    pub failed: u64,
    /// The failures by what the client saw.
    pub failures_by: FailureCounts,
    /// Latency of the requests answered as expected.
    pub latency: Stats,
    /// The first failures, in detail.
    pub failures: Vec<Failure>,
}

/// Requests of one kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KindCount {
    /// E.g. `POST /isprime (heavy)`.
    pub kind: String,
    /// Requests sent.
    pub sent: u64,
    /// Answered as expected (a 200 with the right body).
    pub ok: u64,
    /// The others: `sent - ok`.
    pub failed: u64,
    /// Latency of those answered as expected.
    pub latency: Stats,
}

/// Failed requests by what the client saw; they add up to [`LoadReport::failed`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct FailureCounts {
    /// Connection refused.
    pub refused: u64,
    /// Connection reset.
    pub resets: u64,
    /// A kept-alive connection was found closed before the request was sent (an HTTP client
    /// may send such a request again on a new connection: nothing of it left).
    pub closed_before_send: u64,
    /// The server closed the connection after the request was sent, before a whole response.
    pub closed_before_response: u64,
    /// No response within the request timeout.
    pub timeouts: u64,
    /// Answered 503 (the server's reason is in the failure's detail).
    pub status_503: u64,
    /// Answered with another status than 200.
    pub other_status: u64,
    /// A 200 whose body was not the expected answer.
    pub wrong_body: u64,
    /// Any other client error.
    pub other: u64,
}

/// One failed request.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// When it was sent, in seconds since the run began.
    pub t_s: f64,
    /// The request's kind, as in [`KindCount::kind`].
    pub kind: String,
    /// Whether it was sent on a kept-alive connection or a new one.
    pub conn: ConnKind,
    /// What the client saw: the status and the body, or the error.
    pub what: String,
}

/// What a lifecycle scenario left behind, from every generation of servers.
#[derive(Debug, Default, Serialize)]
pub struct Leaks {
    /// Descriptors of the first server, idle before the load.
    pub fds_baseline: usize,
    /// Descriptors of the last server, idle after the load.
    pub fds_final: usize,
    /// The kinds of descriptor whose count differs, e.g. `socket 4 -> 5`.
    pub fds_diff: Vec<String>,
    /// Zombies anywhere under this program (servers, workers, `ls`), after the load.
    pub zombies: Vec<String>,
    /// `ls` processes still running after the load.
    pub ls: Vec<String>,
    /// Any other process besides the last server and its current workers, after the load.
    pub strays: Vec<String>,
    /// Processes left once the last server was stopped.
    pub left_after_stop: Vec<String>,
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
        if let Some(overload) = &self.overload {
            overload.rows(&mut out);
        }
        if let Some(tail) = &self.tail {
            out.push_str(&tail.table());
        }
        for lifecycle in [&self.upgrade, &self.restart].into_iter().flatten() {
            lifecycle_rows(&mut out, lifecycle);
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

/// How many failures the table details (the JSON has all that were kept).
const FAILURES_SHOWN: usize = 10;

fn lifecycle_rows(out: &mut String, l: &Lifecycle) {
    let (what, signal) = match l.scenario {
        "upgrade" => ("in-place upgrades", "SIGUSR2"),
        _ => ("restarts on the launcher's socket", "SIGTERM"),
    };
    let load = &l.load;
    let _ = writeln!(
        out,
        "\n{}: {}/{} {what}, versions {}; load {:.1} s, {} kept-alive + {} new-connection clients",
        l.scenario,
        l.done,
        l.asked,
        l.versions.join(" <-> "),
        load.duration_s,
        load.kept_alive_clients,
        load.new_conn_clients
    );
    for (label, s) in [
        ("new server ready", l.ready),
        ("old server gone", l.old_gone),
    ] {
        let _ = writeln!(
            out,
            "  {signal} to {label:<17} min {:>7.1}  median {:>7.1}  max {:>7.1} ms",
            s.min_ms, s.median_ms, s.max_ms
        );
    }
    load_rows(out, load);
    leak_rows(out, &l.leaks);
    for e in load.failures.iter().take(FAILURES_SHOWN) {
        let conn = match e.conn {
            ConnKind::New => "new",
            ConnKind::KeptAlive => "kept-alive",
        };
        let _ = writeln!(
            out,
            "    {:>8.3} s  {:<24} {conn:<10} {}",
            e.t_s, e.kind, e.what
        );
    }
    for e in &l.errors {
        let _ = writeln!(out, "  error: {e}");
    }
}

/// The requests of a lifecycle load by kind, and its failures by what the clients saw.
fn load_rows(out: &mut String, load: &LoadReport) {
    let _ = writeln!(
        out,
        "  requests                       sent        ok  failed  p50 ms  p99 ms  max ms"
    );
    let all = ("all", load.sent, load.ok, load.failed, &load.latency);
    let kinds = load
        .kinds
        .iter()
        .map(|k| (&*k.kind, k.sent, k.ok, k.failed, &k.latency));
    for (kind, sent, ok, failed, t) in kinds.chain([all]) {
        let _ = writeln!(
            out,
            "  {kind:<26} {sent:>8}  {ok:>8}  {failed:>6}  {:>6.2}  {:>6.2}  {:>6.2}",
            t.p50_ms, t.p99_ms, t.max_ms
        );
    }
    let f = &load.failures_by;
    let _ = writeln!(
        out,
        "  failed {}: refused {}, reset {}, closed before sending {}, closed before the answer {}, timeout {}, 503 {}, other status {}, wrong body {}, other {}",
        load.failed, f.refused, f.resets, f.closed_before_send, f.closed_before_response, f.timeouts, f.status_503, f.other_status, f.wrong_body, f.other
    );
}

/// What a lifecycle scenario left behind: the counts, then each process.
fn leak_rows(out: &mut String, k: &Leaks) {
    let fds_diff = match k.fds_diff.is_empty() {
        true => String::new(),
        false => format!(" ({})", k.fds_diff.join(", ")),
    };
    let _ = writeln!(
        out,
        "  left after the load: {} zombies, {} ls, {} other strays; server fds {} before the load, {} after{fds_diff}; {} processes left after the last stop",
        k.zombies.len(),
        k.ls.len(),
        k.strays.len(),
        k.fds_baseline,
        k.fds_final,
        k.left_after_stop.len()
    );
    let leftovers = k.zombies.iter().chain(&k.ls).chain(&k.strays);
    for p in leftovers.chain(&k.left_after_stop) {
        let _ = writeln!(out, "    {p}");
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

    #[test]
    fn spreads() {
        let s = Spread::of([30.0, 10.0, 20.0, 40.0]);
        assert_eq!((s.min_ms, s.median_ms, s.max_ms), (10.0, 20.0, 40.0));
        assert_eq!(Spread::of([]).max_ms, 0.0);
    }
}
