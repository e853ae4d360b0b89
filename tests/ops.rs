//! Operating the service: /readyz, /metrics, /status, request ids in worker logs,
//! --log-format json, --config FILE, SIGHUP rolling restarts.
//!
//! Tests marked "needs the real src/prime.rs" hold a worker busy with `common::slow_prime()`;
//! on the placeholder that job returns at once, and they fail saying so.

use crate::common;

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{
    alive, busy_jobs, run_to_exit, signal, slow_prime, status, temp_file, wait_until, Http,
    Response, Server,
};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Helpers

/// One sample line of the Prometheus text format.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict parser of the Prometheus text exposition format (0.0.4): every line is a comment
/// (`# HELP name text`, `# TYPE name kind`, or another `# ...`), blank, or
/// `name{label="value",...} value [timestamp]`. Panics naming the first line that is none,
/// and on a sample whose family lacks TYPE or HELP.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut types = BTreeMap::new();
    let mut helps = HashSet::new();
    for (number, line) in text.lines().enumerate() {
        let fail = |why: &str| -> ! { panic!("/metrics line {}: {why}: {line:?}", number + 1) };
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.split_whitespace().collect();
            match words.first().copied() {
                Some("TYPE") => {
                    let [_, name, kind] = words[..] else {
                        fail("bad TYPE line")
                    };
                    if !is_metric_name(name) {
                        fail("bad metric name in TYPE");
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        fail("unknown metric type");
                    }
                    if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                        fail("second TYPE line for one metric");
                    }
                }
                Some("HELP") if words.len() >= 3 && is_metric_name(words[1]) => {
                    helps.insert(words[1].to_owned());
                }
                Some("HELP") => fail("bad HELP line"),
                _ => {}
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| fail("no value"));
        let name = &line[..name_end];
        if !is_metric_name(name) {
            fail("bad metric name");
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(after) = rest.strip_prefix('{') {
            rest = after;
            loop {
                if let Some(after) = rest.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let eq = rest.find('=').unwrap_or_else(|| fail("label without `=`"));
                let label = &rest[..eq];
                if !is_label_name(label) {
                    fail("bad label name");
                }
                rest = rest[eq + 1..]
                    .strip_prefix('"')
                    .unwrap_or_else(|| fail("label value not quoted"));
                let mut value = String::new();
                let mut chars = rest.char_indices();
                let close = loop {
                    match chars.next() {
                        Some((i, '"')) => break i,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => value.push('\\'),
                            Some((_, '"')) => value.push('"'),
                            Some((_, 'n')) => value.push('\n'),
                            _ => fail("bad escape in label value"),
                        },
                        Some((_, c)) => value.push(c),
                        None => fail("unterminated label value"),
                    }
                };
                if labels.insert(label.to_owned(), value).is_some() {
                    fail("label given twice");
                }
                rest = &rest[close + 1..];
                if let Some(after) = rest.strip_prefix(',') {
                    rest = after;
                } else if !rest.starts_with('}') {
                    fail("expected `,` or `}` after a label");
                }
            }
        }
        let rest = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| fail("no space before the value"));
        let mut fields = rest.split(' ');
        let value = match fields.next().unwrap_or_default() {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| fail("value is not a number")),
        };
        if let Some(timestamp) = fields.next() {
            timestamp
                .parse::<i64>()
                .unwrap_or_else(|_| fail("bad timestamp"));
        }
        if fields.next().is_some() {
            fail("trailing fields");
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    // Each sample belongs to a declared family, and counters and histograms look the part.
    for sample in &samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = sample.name.strip_suffix(suffix)?;
                (types.get(base)? == "histogram").then_some(base)
            })
            .unwrap_or(&sample.name);
        let kind = types
            .get(family)
            .unwrap_or_else(|| panic!("{} has no TYPE line", sample.name));
        match kind.as_str() {
            "counter" => assert!(family.ends_with("_total"), "counter {family} lacks _total"),
            "histogram" if sample.name.ends_with("_bucket") => {
                assert!(sample.labels.contains_key("le"), "{sample:?}")
            }
            _ => {}
        }
        // promtool check metrics fails a family without HELP.
        assert!(helps.contains(family), "{family} has no HELP line");
        // Ours, or the standard process_* families that every Prometheus client exports.
        assert!(
            family.starts_with("forkpool_") || family.starts_with("process_"),
            "{family} is not namespaced"
        );
    }
    samples
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Scrapes and parses /metrics.
fn scrape(server: &Server) -> Vec<Sample> {
    let response = server.get("/metrics");
    assert_eq!(response.status, 200);
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    parse_prometheus(&response.text())
}

/// The value of the sample `name` whose labels include `labels`; 0 if there is none (a
/// counter that never moved is not rendered).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(
        matching.len() <= 1,
        "{name} {labels:?} is ambiguous: {matching:?}"
    );
    matching.first().map_or(0.0, |s| s.value)
}

/// Waits until a counter reaches `at_least` (metrics of a finished job are recorded by the
/// pool's driver just after the reply is sent, so a scrape can race them by a hair).
fn wait_counter(server: &Server, name: &str, labels: &[(&str, &str)], at_least: f64) -> f64 {
    let mut last = 0.0;
    wait_until(Duration::from_secs(10), || {
        last = value(&scrape(server), name, labels);
        (last >= at_least).then_some(last)
    })
    .unwrap_or_else(|| panic!("{name} {labels:?} stayed at {last}, expected {at_least}"))
}

/// Waits until exactly one job is counted with `outcome` and one worker exit with `exit`'s
/// labels.
fn assert_one_job_and_worker_exit(server: &Server, outcome: &str, exit: &[(&str, &str)]) {
    let jobs = [("outcome", outcome)];
    assert_eq!(wait_counter(server, "forkpool_jobs_total", &jobs, 1.0), 1.0);
    assert_eq!(
        wait_counter(server, "forkpool_worker_exits_total", exit, 1.0),
        1.0
    );
}

/// GET on a fresh connection; `None` if the connection is refused or cut (listener closed).
fn try_get(addr: SocketAddr, path: &str) -> Option<Response> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let head = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    raw.windows(4)
        .any(|w| w == b"\r\n\r\n")
        .then(|| Response::parse(&raw))
}

fn slow_body() -> String {
    format!("{{\"number\": \"{}\"}}", slow_prime())
}

/// Polls /status until a worker is busy and returns its pid and job id. Panics if the request
/// (`finished` says whether it is done) ended first: then the job was never seen running.
fn wait_busy(server: &Server, finished: impl Fn() -> bool) -> (u32, u64) {
    let seen = wait_until(Duration::from_secs(30), || {
        match busy_jobs(server).first() {
            Some(&(job, pid)) => Some(Some((pid, job))),
            None if finished() => Some(None),
            None => None,
        }
    });
    seen.flatten()
        .expect("the slow job was never seen running (is src/prime.rs still the placeholder?)")
}

/// Runs a server that must refuse to start: (exit code, stderr).
fn refuse_start(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let args = [&["--listen", "127.0.0.1:0", "--workers", "1"], args].concat();
    let (code, _, stderr) = run_to_exit(&args, env);
    (code, stderr)
}

// ---------------------------------------------------------------------------------------------
// /healthz and /readyz

#[test]
fn readyz_is_200_with_live_workers_and_healthz_always_200() {
    let server = common::App::start(&["--workers", "2", "--ls-root", "/"]);
    let both = wait_until(Duration::from_secs(20), || {
        let ready = server.get("/readyz");
        (ready.status == 200 && ready.json()["live_workers"] == 2).then_some(())
    });
    assert!(both.is_some(), "{}", server.get("/readyz").text());
    let ready = server.get("/readyz");
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["live_workers"], 2);
    assert_eq!(server.get("/healthz").status, 200);
}

#[test]
fn readyz_is_503_when_no_worker_can_start() {
    let flags = ["--workers", "2", "--ls-root", "/"];
    let server = common::App::with_worker(&flags, "/bin/false");
    // After a few failed starts it still must not report ready.
    let failed = wait_until(Duration::from_secs(20), || {
        let pool = server.get("/status").json()["pool"].clone();
        (pool["failed_starts_in_a_row"].as_u64() >= Some(2)).then_some(())
    });
    assert!(failed.is_some(), "{}", server.get("/status").text());
    let message = server.get("/readyz").assert_error(503);
    assert!(message.contains("no worker"), "{message}");
    assert_eq!(server.get("/healthz").status, 200);
    let workers = server.get("/status").json()["workers"].clone();
    assert_eq!(workers.as_array().unwrap().len(), 2);
    for w in workers.as_array().unwrap() {
        assert!(
            ["starting", "down"].contains(&w["state"].as_str().unwrap()),
            "{w}"
        );
    }
}

#[test]
fn readyz_flips_to_503_during_shutdown_and_jobs_are_served_until_the_listener_closes() {
    let mut server = Server::start(&["--workers", "1", "--shutdown-delay", "5s"]);
    server.wait_for_workers(1);
    assert_eq!(server.get("/readyz").status, 200);
    let signalled = Instant::now();
    server.terminate();
    // Every check below must land within the 5 s delay: a listener closed under them (on a
    // machine too slow for that) fails the `expect`s, saying so, rather than passing.
    let readyz = wait_until(Duration::from_secs(5), || {
        try_get(server.addr, "/readyz").filter(|r| r.status == 503)
    })
    .expect("/readyz did not turn 503 during the 5 s delay");
    let message = readyz.assert_error(503);
    assert!(message.contains("shutting down"), "{message}");
    // Still alive and still serving, jobs included: a load balancer that has not noticed the
    // drain yet (open-source nginx never reads /readyz) must not see its requests fail.
    let healthz = try_get(server.addr, "/healthz").expect("still accepting during the delay");
    assert_eq!(healthz.status, 200);
    let job = try_get(server.addr, "/isprime?number=97").expect("still accepting");
    assert_eq!(job.status, 200, "{}", job.text());
    assert_eq!(job.json()["isPrime"], true);
    assert_eq!(status(&server)["shutting_down"], true);
    let exit = server
        .wait_exit(Duration::from_secs(30))
        .expect("server exits");
    assert_eq!(exit.code(), Some(0), "{}", server.log());
    // A lower bound only, which load cannot break.
    assert!(
        signalled.elapsed() >= Duration::from_secs(5),
        "exited before --shutdown-delay"
    );
}

// ---------------------------------------------------------------------------------------------
// /metrics

#[test]
fn metrics_parse_and_move_with_requests() {
    let server = Server::start(&["--workers", "2"]);
    server.wait_for_workers(2);
    let before = scrape(&server);
    let testrequest = [("route", "/testrequest"), ("status", "200")];
    let not_found = [("route", "unmatched"), ("status", "404")];
    let requests_before = value(&before, "forkpool_http_requests_total", &testrequest);
    for _ in 0..3 {
        assert_eq!(server.get("/testrequest").status, 200);
    }
    server.get("/no/such/path").assert_error(404);
    server.get("/another/unknown/path").assert_error(404);
    for n in ["97", "100"] {
        assert_eq!(server.get(&format!("/isprime?number={n}")).status, 200);
    }
    server.get("/isprime?number=12x").assert_error(400);

    let after = scrape(&server);
    let moved =
        |name, labels: &[(&str, &str)]| value(&after, name, labels) - value(&before, name, labels);
    assert_eq!(
        value(&after, "forkpool_http_requests_total", &testrequest),
        requests_before + 3.0
    );
    // Unknown paths share one label value: a scanner cannot blow up the series count.
    assert_eq!(moved("forkpool_http_requests_total", &not_found), 2.0);
    assert_eq!(
        moved(
            "forkpool_http_requests_total",
            &[("route", "/isprime"), ("status", "200")]
        ),
        2.0
    );
    assert_eq!(
        moved(
            "forkpool_http_requests_total",
            &[("route", "/isprime"), ("status", "400")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "forkpool_http_request_duration_seconds_count",
            &[("route", "/testrequest")]
        ),
        3.0
    );
    let inf = [("route", "/testrequest"), ("le", "+Inf")];
    assert_eq!(
        value(
            &after,
            "forkpool_http_request_duration_seconds_bucket",
            &inf
        ),
        3.0
    );
    assert_eq!(
        wait_counter(&server, "forkpool_jobs_total", &[("outcome", "ok")], 2.0),
        2.0
    );
    let after = scrape(&server);
    assert_eq!(value(&after, "forkpool_job_run_seconds_count", &[]), 2.0);
    assert_eq!(
        value(&after, "forkpool_job_queue_wait_seconds_count", &[]),
        2.0
    );
    assert_eq!(value(&after, "forkpool_worker_spawns_total", &[]), 2.0);
    assert_eq!(
        value(&after, "forkpool_pool_workers", &[("state", "idle")]),
        2.0
    );
    assert_eq!(
        value(&after, "forkpool_pool_workers", &[("state", "busy")]),
        0.0
    );
    assert_eq!(
        value(&after, "forkpool_pool_workers", &[("state", "starting")]),
        0.0
    );
    assert_eq!(value(&after, "forkpool_queue_depth", &[]), 0.0);
    // The scrape counts itself too, under its own route.
    assert!(
        value(
            &after,
            "forkpool_http_requests_total",
            &[("route", "/metrics")]
        ) >= 2.0
    );
}

#[test]
fn a_killed_idle_worker_counts_as_crashed_by_signal_9_and_is_replaced() {
    let server = Server::start(&["--workers", "1"]);
    let [old] = server.wait_for_workers(1)[..] else {
        unreachable!()
    };
    signal(old, "KILL");
    let new = wait_until(Duration::from_secs(10), || {
        let pids = server.worker_pids();
        (pids.len() == 1 && pids[0] != old && server.get("/readyz").status == 200).then(|| pids[0])
    })
    .expect("the killed worker was not replaced");
    assert_ne!(new, old);
    let exits = [("reason", "crashed"), ("signal", "9")];
    assert_eq!(
        wait_counter(&server, "forkpool_worker_exits_total", &exits, 1.0),
        1.0
    );
    let samples = scrape(&server);
    assert_eq!(value(&samples, "forkpool_worker_spawns_total", &[]), 2.0);
    assert_eq!(server.get("/isprime?number=7").status, 200);
    server.assert_no_zombies();
}

/// Serves a bit of everything: jobs (GET and POST), a bad number, a listing, a refused
/// listing, a 404 and a 405; then kills the idle worker and waits for its replacement, so that
/// the exit and spawn counters have moved. Returns the scrape that follows, as text.
fn scrape_after_traffic(server: &Server) -> String {
    let [old] = server.wait_for_workers(1)[..] else {
        unreachable!()
    };
    assert_eq!(server.get("/isprime?number=97").status, 200);
    assert_eq!(
        server.post_json("/isprime", "{\"number\": \"98\"}").status,
        200
    );
    server.get("/isprime?number=12x").assert_error(400);
    assert_eq!(server.get("/ls?directory=/").status, 200);
    server.get("/ls?directory=/no-such-dir").assert_error(404);
    server.get("/no/such/path").assert_error(404);
    server
        .request("PUT", "/healthz", &[], b"")
        .assert_error(405);
    signal(old, "KILL");
    wait_until(Duration::from_secs(10), || {
        let pids = server.worker_pids();
        (pids.len() == 1 && pids[0] != old && server.get("/readyz").status == 200).then_some(())
    })
    .expect("the killed worker was not replaced");
    wait_counter(server, "forkpool_worker_spawns_total", &[], 2.0);
    let response = server.get("/metrics");
    assert_eq!(response.status, 200);
    response.text()
}

#[test]
fn every_metric_family_has_help_and_type_with_build_info_and_process_metrics() {
    let server = Server::start(&["--workers", "1"]);
    let text = scrape_after_traffic(&server);
    // The parser fails on any family without TYPE or HELP.
    let samples = parse_prometheus(&text);
    // The two that had no HELP before, and one of each kind the pool records.
    for family in [
        "forkpool_ls_running",
        "forkpool_ls_total",
        "forkpool_worker_exits_total",
        "forkpool_job_run_seconds",
        "forkpool_slow_jobs_total",
    ] {
        let help = format!("# HELP {family} ");
        assert!(text.contains(&help), "{family} has no HELP:\n{text}");
    }
    let version = [("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(value(&samples, "forkpool_build_info", &version), 1.0);
    assert!(
        text.contains("# TYPE process_cpu_seconds_total counter\n"),
        "{text}"
    );
    // `value` reads a missing sample as 0: these must be there.
    let process = |name: &str| {
        let sample = samples.iter().find(|s| s.name == name);
        sample.unwrap_or_else(|| panic!("no {name}:\n{text}")).value
    };
    assert!(process("process_resident_memory_bytes") > 1e6, "{text}");
    assert!(process("process_virtual_memory_bytes") >= process("process_resident_memory_bytes"));
    assert!(process("process_open_fds") >= 3.0, "{text}");
    assert!(
        process("process_max_fds") >= process("process_open_fds"),
        "{text}"
    );
    // Counted in clock ticks (10 ms): a server this young may show 0.
    assert!(process("process_cpu_seconds_total") >= 0.0, "{text}");
    // The server's own start, as /proc records it: within a minute before now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = process("process_start_time_seconds");
    assert!(
        (now - 60.0..=now + 1.0).contains(&started),
        "{started} vs {now}"
    );
}

#[test]
#[ignore = "needs promtool (Debian's prometheus); .ci/run installs it and runs the ignored tests"]
fn promtool_check_metrics_passes_on_a_live_server_after_traffic() {
    common::require_tool("promtool", "--version");
    let server = Server::start(&["--workers", "1"]);
    let text = scrape_after_traffic(&server);
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool check metrics:\n{said}\non:\n{text}"
    );
    // Lint findings also fail it with a non-zero status; say so if a version ever only warns.
    assert!(said.trim().is_empty(), "promtool check metrics:\n{said}");
}

/// Needs the real src/prime.rs (a job that outlives 200 ms).
#[test]
fn a_job_that_times_out_is_504_and_counted() {
    let server = Server::start(&["--workers", "1", "--job-timeout", "200ms"]);
    let [old] = server.wait_for_workers(1)[..] else {
        unreachable!()
    };
    let response = server.post_json("/isprime", &slow_body());
    let message = response.assert_error(504);
    assert!(message.contains("200ms"), "{message}");
    assert_one_job_and_worker_exit(&server, "timeout", &[("reason", "killed_timeout")]);
    // The worker running it was killed and replaced.
    let replaced = wait_until(Duration::from_secs(10), || {
        let pids = server.worker_pids();
        (pids.len() == 1 && pids[0] != old).then_some(())
    });
    assert!(
        replaced.is_some(),
        "the timed-out worker {old} was not replaced"
    );
    assert!(!alive(old));
    assert_eq!(server.get("/isprime?number=7").status, 200);
    server.assert_no_zombies();
}

/// Needs the real src/prime.rs (a job that is still running when its worker is killed).
#[test]
fn a_worker_killed_mid_job_is_502_naming_the_signal_and_counted() {
    let server = Server::start(&["--workers", "1"]);
    server.wait_for_workers(1);
    let body = slow_body();
    let response = std::thread::scope(|s| {
        let request = s.spawn(|| server.post_json("/isprime", &body));
        let (pid, job) = wait_busy(&server, || request.is_finished());
        // While it runs, /status shows the job and its age.
        let row = status(&server)["workers"][0].clone();
        assert_eq!(row["pid"], pid);
        assert_eq!(row["job"], job);
        assert!(row["job_age_ms"].as_f64().unwrap() >= 0.0, "{row}");
        signal(pid, "KILL");
        request.join().unwrap()
    });
    let message = response.assert_error(502);
    assert!(message.contains("signal 9"), "{message}");
    let killed = [("reason", "crashed"), ("signal", "9")];
    assert_one_job_and_worker_exit(&server, "crashed", &killed);
    server.wait_for_workers(1);
    assert_eq!(server.get("/isprime?number=7").status, 200);
    server.assert_no_zombies();
}

// ---------------------------------------------------------------------------------------------
// /status

#[test]
fn status_lists_exactly_the_workers_with_live_pids() {
    let server = Server::start(&["--workers", "3", "--job-timeout", "7s"]);
    let pids = server.wait_for_workers(3);
    let jobs = 5;
    for n in 0..jobs {
        assert_eq!(
            server.get(&format!("/isprime?number={}", 1000 + n)).status,
            200
        );
    }
    let started_before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let status = wait_until(Duration::from_secs(10), || {
        let status = status(&server);
        let served: u64 = status["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["jobs_served"].as_u64().unwrap())
            .sum();
        (served == jobs).then_some(status)
    })
    .expect("jobs_served does not add up to the jobs run");
    assert_eq!(status["pid"], server.pid());
    assert_eq!(status["shutting_down"], false);
    assert_eq!(status["queue_depth"], 0);
    assert_eq!(status["config"]["workers"], 3);
    assert_eq!(status["config"]["job_timeout"], 7.0);
    assert!(
        status["config"]["ls_root"].is_string(),
        "{}",
        status["config"]
    );
    let workers = status["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 3, "{status}");
    let mut listed = HashSet::new();
    for w in workers {
        let pid = w["pid"].as_u64().expect("pid") as u32;
        assert!(alive(pid), "worker {pid} is listed but not alive");
        assert!(listed.insert(pid), "pid {pid} listed twice");
        assert_eq!(w["state"], "idle", "{w}");
        assert!(w["job"].is_null() && w["job_age_ms"].is_null(), "{w}");
        assert!(w["rss_bytes"].as_u64().unwrap() > 0, "{w}");
        let started = w["started_at"].as_f64().unwrap();
        assert!(
            started <= started_before + 1.0 && started > started_before - 120.0,
            "{w}"
        );
    }
    assert_eq!(listed, pids.into_iter().collect::<HashSet<_>>());
}

// ---------------------------------------------------------------------------------------------
// Logs

#[test]
fn the_client_request_id_reaches_the_worker_log_line_of_its_job() {
    // A worker logs each finished job at debug (the server's request line is the info one).
    let server = Server::with(&["--workers", "1"])
        .env(&[("RUST_LOG", "debug")])
        .start();
    let [worker] = server.wait_for_workers(1)[..] else {
        unreachable!()
    };
    let id = "rid-from-client-7f3a";
    let response = server.request(
        "GET",
        "/isprime?number=1000003",
        &[("x-request-id", id)],
        b"",
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-request-id"), Some(id));
    // The worker's `job done` line and the server's own request line both carry the id.
    let job_done = |l: &&str| l.contains("job done") && l.contains(&format!("request_id={id}"));
    let request_line = |l: &&str| l.contains("/isprime") && l.contains("status=200");
    let log = server.wait_for_log("`job done` and request lines", |log| {
        log.lines().any(|l| job_done(&l)) && log.lines().any(|l| request_line(&l))
    });
    let line = log.lines().find(job_done).unwrap();
    assert!(
        line.contains(&format!("pid={worker}")),
        "not the worker's line: {line}"
    );
    let line = log.lines().find(request_line).unwrap();
    assert!(line.contains(&format!("request_id={id}")), "{line}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a captured log:\n{log}"
    );
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    let server = Server::with(&["--workers", "1", "--log-format", "json"])
        .env(&[("RUST_LOG", "debug")])
        .start();
    server.wait_for_workers(1);
    let id = "json-rid-1";
    let response = server.request("GET", "/isprime?number=101", &[("x-request-id", id)], b"");
    assert_eq!(response.status, 200);
    server.get("/nope").assert_error(404);
    let log = server.wait_for_log("`job done` and request lines", |log| {
        log.contains("job done") && log.contains("\"path\":\"/isprime\"")
    });
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    assert!(lines.iter().all(Value::is_object));
    let job_done = lines
        .iter()
        .find(|l| l["fields"]["message"] == "job done")
        .expect("job done line");
    assert_eq!(job_done["fields"]["request_id"], id, "{job_done}");
    let request = lines
        .iter()
        .find(|l| l["fields"]["message"] == "request" && l["fields"]["path"] == "/isprime")
        .expect("request line");
    assert_eq!(request["span"]["request_id"], id, "{request}");
}

// ---------------------------------------------------------------------------------------------
// --config FILE

#[test]
fn config_file_values_are_in_force() {
    let file = temp_file(
        "forkpool-ops-",
        ".toml",
        "workers = 1\njob-timeout = \"5s\"\nmax-digits = 50\n",
    );
    let server = Server::start(&["--config", file.to_str().unwrap()]);
    server.wait_for_workers(1);
    let status = status(&server);
    assert_eq!(status["config"]["workers"], 1);
    assert_eq!(status["config"]["job_timeout"], 5.0);
    assert_eq!(status["config"]["max_digits"], 50);
    assert_eq!(status["workers"].as_array().unwrap().len(), 1);
    // The file's max-digits really applies, not only shows.
    server
        .get(&format!("/isprime?number={}", "1".repeat(51)))
        .assert_error(413);
}

#[test]
fn env_beats_the_config_file() {
    let file = temp_file("forkpool-ops-", ".toml", "workers = 1\n");
    let server = Server::with(&["--config", file.to_str().unwrap()])
        .env(&[("FORKPOOL_WORKERS", "2")])
        .start();
    server.wait_for_workers(2);
    assert_eq!(status(&server)["workers"].as_array().unwrap().len(), 2);
}

#[test]
fn flags_beat_env_and_the_config_file() {
    let file = temp_file("forkpool-ops-", ".toml", "workers = 1\nqueue = 5\n");
    let server = Server::with(&["--config", file.to_str().unwrap(), "--workers", "3"])
        .env(&[("FORKPOOL_WORKERS", "2")])
        .start();
    server.wait_for_workers(3);
    let status = status(&server);
    assert_eq!(status["workers"].as_array().unwrap().len(), 3);
    assert_eq!(status["config"]["queue"], 5);
}

#[test]
fn config_file_from_the_environment() {
    let file = temp_file(
        "forkpool-ops-",
        ".toml",
        "workers = 1\njob-timeout = \"9s\"\n",
    );
    let server = Server::with(&[])
        .env(&[("FORKPOOL_CONFIG", file.to_str().unwrap())])
        .start();
    server.wait_for_workers(1);
    assert_eq!(status(&server)["config"]["job_timeout"], 9.0);
}

#[test]
fn config_file_errors_exit_2_naming_the_problem() {
    let cases: [(&str, &str, &[&str]); 6] = [
        (
            "unknown",
            "workers = 1\nwrkers = 2\n",
            &["wrkers", "unknown key"],
        ),
        ("many", "workers = \"many\"\n", &["--workers", "many"]),
        ("negative", "workers = -1\n", &["--workers"]),
        (
            "duration",
            "job-timeout = \"soon\"\n",
            &["--job-timeout", "soon"],
        ),
        (
            "snake",
            "job_timeout = \"5s\"\n",
            &["job_timeout", "job-timeout"],
        ),
        ("table", "[pool]\nworkers = 1\n", &["pool"]),
    ];
    for (name, text, expected) in cases {
        let file = temp_file("forkpool-ops-", ".toml", text);
        // A valid flag for the same key does not excuse a bad value in the file.
        let (code, stderr) = refuse_start(&["--config", file.to_str().unwrap()], &[]);
        assert_eq!(code, Some(2), "{name}: {stderr}");
        for word in expected {
            assert!(
                stderr.contains(word),
                "{name}: stderr lacks {word:?}: {stderr}"
            );
        }
        assert!(
            stderr.contains(file.to_str().unwrap()),
            "{name}: the file is not named: {stderr}"
        );
    }
    let (code, stderr) = refuse_start(&["--config", "/nonexistent/forkpool.toml"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/forkpool.toml"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// SIGHUP

/// Needs the real src/prime.rs (a job that is still running when SIGHUP arrives).
#[test]
fn sighup_replaces_every_worker_without_failing_the_running_job() {
    let workers = 2;
    // Its job runs until released: in flight when the roll starts, on any machine.
    let held = common::HeldWorker::new();
    let server = Server::start(&["--workers", "2", "--worker-program", held.program()]);
    let before = server.wait_for_workers(workers);
    let done = AtomicBool::new(false);
    // Every pid the sampler has seen, shared so that the test can wait until it has seen the
    // roll under way.
    let seen = std::sync::Mutex::new(HashSet::new());
    let (response, most) = std::thread::scope(|s| {
        // Samples the live workers as often as it can while the roll runs.
        let sampler = s.spawn(|| {
            let mut most = 0;
            while !done.load(Ordering::Relaxed) {
                let pids = server.worker_pids();
                most = most.max(pids.len());
                seen.lock().unwrap().extend(pids);
                // The sampling pace, not a wait for an event.
                std::thread::sleep(Duration::from_millis(2));
            }
            most
        });
        let request = s.spawn(|| server.post_json("/isprime", r#"{"number": "7"}"#));
        wait_busy(&server, || request.is_finished());
        signal(server.pid(), "HUP");
        // The idle worker is replaced; the busy one waits for its job.
        let half = wait_until(Duration::from_secs(30), || {
            (status(&server)["pool"]["roll"]["pending_slots"] == 1).then_some(())
        });
        // Held until the sampler has seen the roll half-way (a new worker next to the busy
        // old one), so that its count of live workers covers the roll.
        let sampled = wait_until(Duration::from_secs(30), || {
            let seen = seen.lock().unwrap();
            seen.iter().any(|p| !before.contains(p)).then_some(())
        });
        held.release();
        let rolled = wait_until(Duration::from_secs(30), || {
            let pids = server.worker_pids();
            (pids.len() == workers && pids.iter().all(|p| !before.contains(p))).then_some(pids)
        });
        let response = request.join().unwrap();
        done.store(true, Ordering::Relaxed);
        let most = sampler.join().unwrap();
        assert!(
            half.is_some(),
            "the roll never replaced the idle worker alone: {}",
            status(&server)["pool"]
        );
        assert!(
            sampled.is_some(),
            "the sampler never saw the roll under way"
        );
        assert!(
            rolled.is_some(),
            "not every worker was replaced: before {before:?}, now {:?}",
            server.worker_pids()
        );
        (response, most)
    });
    assert_eq!(
        response.status,
        200,
        "the running job failed: {}",
        response.text()
    );
    assert_eq!(response.json()["isPrime"], true);
    assert!(
        most <= workers + 1,
        "{most} workers alive at once during the roll (limit {})",
        workers + 1
    );
    let after = server.wait_for_workers(workers);
    assert!(after.iter().all(|p| !before.contains(p)));
    assert!(before.iter().all(|&p| !alive(p)), "old workers still alive");
    let exits = [("reason", "recycled")];
    assert_eq!(
        wait_counter(&server, "forkpool_worker_exits_total", &exits, 2.0),
        2.0
    );
    assert!(!server.log().contains("panicked"), "{}", server.log());
    assert_eq!(server.get("/isprime?number=7").status, 200);
    server.assert_no_zombies();
}

/// The roll itself, independent of any job in flight (runs on the placeholder too).
#[test]
fn sighup_on_an_idle_pool_replaces_every_worker() {
    let server = Server::start(&["--workers", "2"]);
    let before = server.wait_for_workers(2);
    signal(server.pid(), "HUP");
    let rolled = wait_until(Duration::from_secs(20), || {
        let pids = server.worker_pids();
        (pids.len() == 2 && pids.iter().all(|p| !before.contains(p))).then_some(pids)
    });
    assert!(
        rolled.is_some(),
        "before {before:?}, now {:?}\n{}",
        server.worker_pids(),
        server.log()
    );
    server.wait_for_log("`rolling restart done`", |log| {
        log.contains("rolling restart done")
    });
    assert_eq!(server.get("/readyz").status, 200);
    assert_eq!(server.get("/isprime?number=7").status, 200);
    server.assert_no_zombies();
}

/// EXPOSES A POOL BUG (src/pool/mod.rs, `drive`): after a worker dies, its slot keeps the state
/// (idle/busy) and pid of the dead worker while the driver sleeps its respawn backoff, so
/// /readyz says ready and /status lists a dead pid while no worker is alive. The backoff
/// doubles with each early crash; four quick kills make it 0.8 s, a window wide enough to see.
#[test]
fn a_dead_worker_is_not_reported_live_during_the_respawn_backoff() {
    let server = Server::start(&["--workers", "1"]);
    let [mut pid] = server.wait_for_workers(1)[..] else {
        unreachable!()
    };
    for kill in 1..=4 {
        signal(pid, "KILL");
        if kill == 4 {
            break;
        }
        // Kill each replacement as soon as it has said hello (a kill before that is a failed
        // start, not a worker exit) and well within its first second, so that every crash
        // counts as an early one and the backoff grows.
        let old = pid;
        pid = wait_until(Duration::from_secs(20), || {
            let row = status(&server)["workers"][0].clone();
            let new = row["pid"]
                .as_u64()
                .map(|p| p as u32)
                .filter(|&p| p != old)?;
            (row["state"] == "idle").then_some(new)
        })
        .expect("the killed worker was not replaced");
    }
    let exits = [("reason", "crashed"), ("signal", "9")];
    wait_counter(&server, "forkpool_worker_exits_total", &exits, 4.0);
    // Now, until the next spawn, no worker process exists.
    let mut checked = 0;
    while server.worker_pids().is_empty() && checked < 20 {
        let readyz = server.get("/readyz");
        let rows = status(&server)["workers"].clone();
        if !server.worker_pids().is_empty() {
            break; // the replacement came up between the two looks
        }
        assert_eq!(
            readyz.status,
            503,
            "ready with no worker alive: {}; /status {rows}",
            readyz.text()
        );
        for row in rows.as_array().unwrap() {
            if let Some(listed) = row["pid"].as_u64() {
                assert!(
                    alive(listed as u32),
                    "/status lists dead pid {listed} as {}",
                    row["state"]
                );
            }
        }
        checked += 1;
        // The polling pace through the backoff window, not a wait for an event.
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(checked > 0, "the backoff window was never observed");
    server.wait_for_workers(1);
    server.assert_no_zombies();
}
