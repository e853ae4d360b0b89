//! The steady mixed load of the lifecycle scenarios: clients that each send a fixed cycle of
//! requests (GET and POST `/isprime` of a light number, now and then of a heavier one,
//! `/testrequest`, `/ls` of a small directory) with a pause between two, half of them on one
//! kept-alive connection (opened again when the server closes it, as any HTTP client does),
//! half on a new connection per request. Every answer is checked and every failure recorded
//! with what the client saw. Bounded: the clients stop when told to, or at a hard limit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::StatusCode;
use serde::Serialize;
use tokio::task::JoinSet;

use super::client::{Call, ClientError, FailureClass, KeptAlive, Response, Target};
use super::report::{ConnKind, Failure, FailureCounts, KindCount, LoadReport, Stats};
use forkpool::prime::mersenne;

/// Longest wait for one answer: far above any handover, so that a slow answer shows as slow,
/// and one that never comes as a failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Failures recorded in detail (all are counted).
const FAILURES_KEPT: usize = 200;
/// The heavier numbers: Mersenne primes of 386 and 664 digits, a few milliseconds of work each.
const HEAVY_EXPONENTS: [u32; 2] = [1279, 2203];
/// A 7-digit prime: microseconds of work.
const LIGHT: &str = "1000003";

/// One kind of request of the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Kind {
    GetIsPrime,
    PostIsPrime,
    GetIsPrimeHeavy,
    PostIsPrimeHeavy,
    TestRequest,
    Ls,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::GetIsPrime => "GET /isprime",
            Kind::PostIsPrime => "POST /isprime",
            Kind::GetIsPrimeHeavy => "GET /isprime (heavy)",
            Kind::PostIsPrimeHeavy => "POST /isprime (heavy)",
            Kind::TestRequest => "GET /testrequest",
            Kind::Ls => "GET /ls (small dir)",
        }
    }
}

/// One request of the cycle and what its 200 body must contain.
struct Step {
    /// What the request is, for the report.
    kind: Kind,
    /// The request.
    call: Call,
    /// Text a 200 body must contain, if any.
    expect: Option<&'static str>,
}

/// The cycle every client goes through, each from its own starting point: 24 requests, two of
/// them heavy (a GET, then a POST), each after eleven light ones.
fn cycle(ls_dir: &str) -> Vec<Step> {
    let prime = Some("\"isPrime\":true");
    let step = |kind, call, expect| Step { kind, call, expect };
    let light_get = || {
        step(
            Kind::GetIsPrime,
            Call::get(format!("/isprime?number={LIGHT}")),
            prime,
        )
    };
    let light_post = || {
        let body = format!("{{\"number\":\"{LIGHT}\"}}");
        step(Kind::PostIsPrime, Call::post_json("/isprime", body), prime)
    };
    let test = || step(Kind::TestRequest, Call::get("/testrequest"), None);
    let ls = || {
        step(
            Kind::Ls,
            Call::get(format!("/ls?directory=/{ls_dir}")),
            None,
        )
    };
    let [small, larger] = HEAVY_EXPONENTS.map(mersenne);
    let heavy_get = step(
        Kind::GetIsPrimeHeavy,
        Call::get(format!("/isprime?number={small}")),
        prime,
    );
    let body = Bytes::from(format!("{{\"number\":\"{larger}\"}}"));
    let heavy_post = step(
        Kind::PostIsPrimeHeavy,
        Call::post_json("/isprime", body),
        prime,
    );
    let mut steps = Vec::new();
    for heavy in [heavy_get, heavy_post] {
        steps.extend([light_get(), test(), light_post(), ls(), light_get(), test()]);
        steps.extend([light_post(), test(), light_get(), ls(), light_post(), heavy]);
    }
    steps
}

/// A client's connection policy.
enum Client {
    /// A new connection for every request.
    New(Target),
    /// One kept-alive connection.
    Kept(KeptAlive),
}

impl Client {
    async fn send(&mut self, call: &Call) -> Result<Response, ClientError> {
        match self {
            Client::New(target) => target.fresh(call, REQUEST_TIMEOUT).await,
            Client::Kept(client) => client.send(call, REQUEST_TIMEOUT).await,
        }
    }

    fn kind(&self) -> ConnKind {
        match self {
            Client::New(_) => ConnKind::New,
            Client::Kept(_) => ConnKind::KeptAlive,
        }
    }
}

/// What one client saw.
#[derive(Default)]
struct Tally {
    /// Requests by kind (their latency is filled in at the end, from `times`).
    kinds: BTreeMap<Kind, KindCount>,
    /// Failures by what the client saw.
    by: FailureCounts,
    /// Latency of the requests answered as expected, by kind.
    times: BTreeMap<Kind, Vec<Duration>>,
    /// The first [`FAILURES_KEPT`] failures, in detail.
    failures: Vec<Failure>,
}

impl Tally {
    /// Counts one exchange; `t` is when it was sent, since the run began.
    fn record(
        &mut self,
        step: &Step,
        conn: ConnKind,
        t: Duration,
        result: Result<Response, ClientError>,
    ) {
        let count = self.kinds.entry(step.kind).or_default();
        count.sent += 1;
        let by = &mut self.by;
        let what = match result {
            Ok(r) if r.status == StatusCode::OK => match step.expect {
                Some(want) if !contains(&r.body, want) => {
                    by.wrong_body += 1;
                    format!("200 without {want}: {}", excerpt(&r.body))
                }
                _ => {
                    count.ok += 1;
                    self.times.entry(step.kind).or_default().push(r.elapsed);
                    return;
                }
            },
            Ok(r) => {
                match r.status {
                    StatusCode::SERVICE_UNAVAILABLE => by.status_503 += 1,
                    _ => by.other_status += 1,
                }
                format!("{}: {}", r.status, excerpt(&r.body))
            }
            Err(e) => {
                match e.class() {
                    FailureClass::Refused => by.refused += 1,
                    FailureClass::Reset => by.resets += 1,
                    FailureClass::ClosedBeforeSend => by.closed_before_send += 1,
                    FailureClass::ClosedBeforeResponse => by.closed_before_response += 1,
                    FailureClass::Timeout => by.timeouts += 1,
                    FailureClass::Other => by.other += 1,
                }
                e.to_string()
            }
        };
        count.failed += 1;
        if self.failures.len() < FAILURES_KEPT {
            let (t_s, kind) = (t.as_secs_f64(), step.kind.label().to_owned());
            self.failures.push(Failure {
                t_s,
                kind,
                conn,
                what,
            });
        }
    }

    fn merge(&mut self, other: Tally) {
        for (kind, c) in other.kinds {
            let mine = self.kinds.entry(kind).or_default();
            (mine.sent, mine.ok, mine.failed) =
                (mine.sent + c.sent, mine.ok + c.ok, mine.failed + c.failed);
        }
        let (a, b) = (&mut self.by, other.by);
        a.refused += b.refused;
        a.resets += b.resets;
        a.closed_before_send += b.closed_before_send;
        a.closed_before_response += b.closed_before_response;
        a.timeouts += b.timeouts;
        a.status_503 += b.status_503;
        a.other_status += b.other_status;
        a.wrong_body += b.wrong_body;
        a.other += b.other;
        for (kind, times) in other.times {
            self.times.entry(kind).or_default().extend(times);
        }
        self.failures.extend(other.failures);
    }
}

fn contains(body: &[u8], want: &str) -> bool {
    body.windows(want.len()).any(|w| w == want.as_bytes())
}

/// The start of a body, for a failure's detail.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    text.trim().to_owned()
}

/// The load while it runs.
pub struct Load {
    /// Set to make every client stop after its current request.
    stop: Arc<AtomicBool>,
    /// The clients' tasks, each ending with what it saw.
    clients: JoinSet<Tally>,
    /// When the load began.
    started: Instant,
    /// How many clients of each kind: kept-alive, new connection.
    counts: (usize, usize),
}

/// Where the load goes and how it is paced.
pub struct LoadPlan {
    /// The server (the same socket throughout the scenario).
    pub target: Target,
    /// Clients in all; half keep their connection alive (the odd one out opens new ones).
    pub clients: usize,
    /// Between two requests of one client.
    pub pause: Duration,
    /// The `/ls` directory, relative to the server's ls root.
    pub ls_dir: String,
    /// The clients stop by themselves this long after the start.
    pub limit: Duration,
    /// The run's clock, which failures are timed against.
    pub clock: Instant,
}

impl Load {
    pub fn start(plan: LoadPlan) -> Load {
        let steps: Arc<[Step]> = cycle(&plan.ls_dir).into();
        let stop = Arc::new(AtomicBool::new(false));
        let until = Instant::now() + plan.limit;
        let kept = plan.clients / 2;
        let mut clients = JoinSet::new();
        for i in 0..plan.clients {
            let client = match i < kept {
                true => Client::Kept(KeptAlive::new(plan.target)),
                false => Client::New(plan.target),
            };
            let (steps, stop, clock, pause) = (steps.clone(), stop.clone(), plan.clock, plan.pause);
            clients.spawn(async move {
                let mut tally = Tally::default();
                let mut client = client;
                let offset = i * steps.len() / plan.clients.max(1);
                for step in steps.iter().cycle().skip(offset) {
                    if stop.load(Ordering::Relaxed) || Instant::now() >= until {
                        break;
                    }
                    let t = clock.elapsed();
                    let result = client.send(&step.call).await;
                    tally.record(step, client.kind(), t, result);
                    tokio::time::sleep(pause).await;
                }
                tally
            });
        }
        Load {
            stop,
            clients,
            started: Instant::now(),
            counts: (kept, plan.clients - kept),
        }
    }

    /// Stops the clients (each after its current request) and sums up what they saw.
    pub async fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Tally::default();
        for tally in self.clients.join_all().await {
            all.merge(tally);
        }
        all.failures.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
        all.failures.truncate(FAILURES_KEPT);
        let kinds: Vec<KindCount> = all
            .kinds
            .iter()
            .map(|(kind, c)| KindCount {
                kind: kind.label().to_owned(),
                latency: Stats::of(all.times.get(kind).map_or(&[][..], Vec::as_slice), 0),
                ..c.clone()
            })
            .collect();
        let (sent, ok, failed) = kinds.iter().fold((0, 0, 0), |(s, o, f), k| {
            (s + k.sent, o + k.ok, f + k.failed)
        });
        LoadReport {
            kept_alive_clients: self.counts.0,
            new_conn_clients: self.counts.1,
            duration_s: self.started.elapsed().as_secs_f64(),
            kinds,
            sent,
            ok,
            failed,
            failures_by: all.by,
            latency: Stats::of(&all.times.into_values().flatten().collect::<Vec<_>>(), 0),
            failures: all.failures,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cycle_mixes_every_kind_with_two_heavy_requests_in_24() {
        let steps = cycle("small");
        assert_eq!(steps.len(), 24);
        for kind in [
            Kind::GetIsPrime,
            Kind::PostIsPrime,
            Kind::TestRequest,
            Kind::Ls,
        ] {
            assert!(
                steps.iter().filter(|s| s.kind == kind).count() >= 4,
                "{kind:?}"
            );
        }
        let heavy = |k| steps.iter().filter(|s| s.kind == k).count();
        assert_eq!(
            (heavy(Kind::GetIsPrimeHeavy), heavy(Kind::PostIsPrimeHeavy)),
            (1, 1)
        );
        assert!(steps.iter().any(|s| s.call.path == "/ls?directory=/small"));
    }

    #[test]
    fn failures_are_counted_by_what_the_client_saw() {
        let mut tally = Tally::default();
        let step = &cycle("d")[0];
        let response = |status, body: &'static str| Response {
            status,
            body: Bytes::from(body),
            elapsed: Duration::from_millis(1),
            close: false,
        };
        let t = Duration::ZERO;
        tally.record(
            step,
            ConnKind::New,
            t,
            Ok(response(StatusCode::OK, "{\"isPrime\":true}")),
        );
        tally.record(
            step,
            ConnKind::New,
            t,
            Ok(response(StatusCode::OK, "{\"isPrime\":false}")),
        );
        tally.record(
            step,
            ConnKind::New,
            t,
            Ok(response(StatusCode::SERVICE_UNAVAILABLE, "busy")),
        );
        let timeout = ClientError::Timeout(Duration::from_secs(1));
        tally.record(step, ConnKind::KeptAlive, t, Err(timeout));
        let count = &tally.kinds[&step.kind];
        assert_eq!((count.sent, count.ok, count.failed), (4, 1, 3));
        assert_eq!(
            (tally.by.wrong_body, tally.by.status_503, tally.by.timeouts),
            (1, 1, 1)
        );
        assert_eq!(tally.failures.len(), 3);
        assert!(
            tally.failures[1].what.contains("503"),
            "{:?}",
            tally.failures[1]
        );
    }
}
