//! The `overload` scenario: `/isprime` requests that carry a client deadline (`timeout`), sent
//! open loop at a fixed rate that is more than the pool can serve, for wasted work: jobs a
//! worker started and the pool then killed at their deadline (issue 20, item 4: the goal is 0).
//!
//! Every second request is heavy (2^P-1 for `--heavy-exponent`), the others light (a 10-digit
//! prime, microseconds), so that a server whose estimate mixes light and heavy jobs shows it.
//! Each request goes on a connection of its own at its slot in the schedule, whatever became
//! of the earlier ones (open loop: a slow server does not slow the offered load down), and
//! waits for its answer up to its deadline plus [`GRACE`]; so no client hangs up before the
//! server's deadline, and every kill the server counts is one at the deadline, not a hang-up.
//!
//! What happened is read from the server's own counters (`/metrics`, before and after: a
//! server that served other clients meanwhile would blur it): served, refused at admission
//! (`rejected_deadline`), refused at dispatch (`rejected_dispatch`, 0 on a server that has no
//! such check), expired in the queue, and wasted (`worker_exits_total{reason="killed_timeout"}`).
//! The clients' statuses are reported next to them, as a cross-check.
//!
//! Bounded: at most `rate x duration` requests (both bounded by the flags), each waiting at
//! most its deadline plus [`GRACE`].

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use indicatif::ProgressBar;
use serde::Serialize;
use tokio::task::JoinSet;

use super::client::{Call, Target};
use forkpool::prime::mersenne;

/// How long a client waits past its own deadline for the server's answer (a 504 at the
/// deadline, or a job answered just then), before it counts the request as unanswered.
const GRACE: Duration = Duration::from_secs(3);

/// The light job: a 10-digit prime, tested in microseconds.
const LIGHT_NUMBER: &str = "1000000007";

/// What the scenario sends.
#[derive(Debug, Clone)]
pub struct OverloadPlan {
    /// Requests per second, light and heavy together.
    pub rate: f64,
    /// How long requests are sent.
    pub duration: Duration,
    /// The heavy job tests 2^P-1.
    pub heavy_exponent: u32,
    /// The `timeout` every request carries.
    pub timeout: Duration,
}

/// What one overload run measured.
#[derive(Debug, Default, Serialize)]
pub struct Overload {
    /// Requests per second offered.
    pub rate: f64,
    pub duration_s: f64,
    /// The client deadline of every request, in milliseconds.
    pub timeout_ms: f64,
    /// Digits of the heavy job's number.
    pub heavy_digits: usize,
    /// Requests sent, half of them heavy.
    pub sent: usize,
    /// What the clients got.
    pub clients: ClientCounts,
    /// What the server counted meanwhile.
    pub server: ServerCounts,
}

/// Responses by status, as the clients saw them.
#[derive(Debug, Default, Serialize)]
pub struct ClientCounts {
    pub ok: usize,
    /// 503, any code (deadline_unreachable, queue_full).
    pub refused: usize,
    /// 504 job_timeout.
    pub timed_out: usize,
    /// Any other status.
    pub other: usize,
    /// No response within the deadline plus the grace, or a broken connection.
    pub unanswered: usize,
}

/// Differences of the server's counters over the run.
#[derive(Debug, Default, Serialize)]
pub struct ServerCounts {
    /// `forkpool_jobs_total{outcome="ok"}`.
    pub served: u64,
    /// `rejected_deadline`: refused at submission by the predicted wait.
    pub refused_admission: u64,
    /// `rejected_dispatch`: refused when a worker would have taken it, too late to finish.
    pub refused_dispatch: u64,
    /// `rejected_full`.
    pub refused_full: u64,
    /// `timeout` minus the kills: deadlines that passed while the job was still queued.
    pub expired_queued: u64,
    /// `worker_exits_total{reason="killed_timeout"}`: started, then killed at the deadline.
    pub wasted: u64,
    /// `worker_exits_total{reason="killed_cancel"}`: started, then killed for a hang-up.
    pub killed_cancel: u64,
}

/// Runs the scenario against `target`.
pub async fn overload(
    target: Target,
    plan: &OverloadPlan,
    bar: &ProgressBar,
) -> Result<Overload, String> {
    let heavy = mersenne(plan.heavy_exponent);
    let timeout = format_ms(plan.timeout);
    let paths = [
        format!("/isprime?number={heavy}&timeout={timeout}"),
        format!("/isprime?number={LIGHT_NUMBER}&timeout={timeout}"),
    ];
    let before = target.metrics().await?;
    bar.set_message(format!(
        "overload: {} requests/s with timeout={timeout}",
        plan.rate
    ));
    let statuses = send_open_loop(target, plan, &paths).await;
    let after = target.metrics().await?;
    let mut clients = ClientCounts::default();
    for status in &statuses {
        match status.map(|s| s.as_u16()) {
            Some(200) => clients.ok += 1,
            Some(503) => clients.refused += 1,
            Some(504) => clients.timed_out += 1,
            Some(_) => clients.other += 1,
            None => clients.unanswered += 1,
        }
    }
    Ok(Overload {
        rate: plan.rate,
        duration_s: plan.duration.as_secs_f64(),
        timeout_ms: plan.timeout.as_secs_f64() * 1000.0,
        heavy_digits: heavy.len(),
        sent: statuses.len(),
        clients,
        server: ServerCounts::between(&before, &after),
    })
}

/// Sends `paths` in turn at `plan.rate` for `plan.duration`, each on a connection of its own,
/// and returns every status (`None`: no answer) once all are answered.
async fn send_open_loop(
    target: Target,
    plan: &OverloadPlan,
    paths: &[String; 2],
) -> Vec<Option<StatusCode>> {
    let period = Duration::from_secs_f64(1.0 / plan.rate);
    let limit = plan.timeout + GRACE;
    let end = Instant::now() + plan.duration;
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut requests = JoinSet::new();
    for path in paths.iter().cycle() {
        ticks.tick().await;
        if Instant::now() >= end {
            break;
        }
        let call = Call::get(path.clone());
        requests.spawn(async move { target.fresh(&call, limit).await.ok().map(|r| r.status) });
    }
    let mut statuses = Vec::with_capacity(requests.len());
    while let Some(status) = requests.join_next().await {
        statuses.push(status.ok().flatten());
    }
    statuses
}

/// `d` in whole milliseconds, as the server's duration syntax spells them (`750ms`).
fn format_ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl Target {
    /// The server's /metrics text.
    async fn metrics(&self) -> Result<String, String> {
        let response = self
            .fresh(&Call::get("/metrics"), Duration::from_secs(10))
            .await
            .map_err(|e| format!("GET /metrics: {e}"))?;
        if response.status != StatusCode::OK {
            return Err(format!("GET /metrics: status {}", response.status));
        }
        Ok(String::from_utf8_lossy(&response.body).into_owned())
    }
}

impl ServerCounts {
    /// The counters' growth from `before` to `after` (two /metrics texts).
    fn between(before: &str, after: &str) -> ServerCounts {
        let grew = |family: &str, label: &str| {
            counter(after, family, label).saturating_sub(counter(before, family, label))
        };
        let job = |outcome: &str| grew("forkpool_jobs_total", &format!("outcome=\"{outcome}\""));
        let exit = |reason: &str| {
            grew(
                "forkpool_worker_exits_total",
                &format!("reason=\"{reason}\""),
            )
        };
        let wasted = exit("killed_timeout");
        ServerCounts {
            served: job("ok"),
            refused_admission: job("rejected_deadline"),
            refused_dispatch: job("rejected_dispatch"),
            refused_full: job("rejected_full"),
            expired_queued: job("timeout").saturating_sub(wasted),
            wasted,
            killed_cancel: exit("killed_cancel"),
        }
    }
}

/// The sum of the samples of counter `family` whose labels include `label` (`name="value"`);
/// 0 when there is none (a counter is only shown once it has counted something).
fn counter(metrics: &str, family: &str, label: &str) -> u64 {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(family)?.strip_prefix('{'))
        .filter_map(|rest| rest.split_once("} "))
        .filter(|(labels, _)| labels.split(',').any(|l| l == label))
        .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
        .sum()
}

impl Overload {
    /// The scenario's rows of the report table.
    pub fn rows(&self, out: &mut String) {
        let (c, s) = (&self.clients, &self.server);
        let _ = writeln!(
            out,
            "\noverload: {} requests/s for {:.0} s, timeout={}ms, half 2^P-1 ({} digits), half {LIGHT_NUMBER}",
            self.rate, self.duration_s, self.timeout_ms, self.heavy_digits
        );
        let _ = writeln!(
            out,
            "  server   served  refused at admission  refused at dispatch  queue full  expired queued  wasted  killed (hang-up)"
        );
        let _ = writeln!(
            out,
            "  {:>6}   {:>6}  {:>20}  {:>19}  {:>10}  {:>14}  {:>6}  {:>16}",
            "",
            s.served,
            s.refused_admission,
            s.refused_dispatch,
            s.refused_full,
            s.expired_queued,
            s.wasted,
            s.killed_cancel
        );
        let _ = writeln!(
            out,
            "  clients  sent {}: 200 {}, 503 {}, 504 {}, other {}, unanswered {}",
            self.sent, c.ok, c.refused, c.timed_out, c.other, c.unanswered
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_over_the_samples_with_the_label() {
        let before = "forkpool_jobs_total{outcome=\"ok\"} 5\n";
        let after = "# TYPE forkpool_jobs_total counter\n\
            forkpool_jobs_total{outcome=\"ok\"} 12\n\
            forkpool_jobs_total{outcome=\"rejected_deadline\"} 7\n\
            forkpool_jobs_total{outcome=\"timeout\"} 4\n\
            forkpool_jobs_total_other{outcome=\"ok\"} 100\n\
            forkpool_worker_exits_total{reason=\"killed_timeout\"} 3\n\
            forkpool_worker_exits_total{reason=\"crashed\",signal=\"9\"} 1\n";
        let counts = ServerCounts::between(before, after);
        assert_eq!(counts.served, 7);
        assert_eq!(counts.refused_admission, 7);
        assert_eq!(counts.refused_dispatch, 0, "absent counts 0");
        assert_eq!((counts.wasted, counts.expired_queued), (3, 1));
        assert_eq!(
            counter(after, "forkpool_worker_exits_total", "signal=\"9\""),
            1
        );
    }
}
