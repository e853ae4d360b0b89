//! `/isprime`: answers, the reply's shape, and every kind of bad input.
//! (The primality vectors themselves are in tests/prime.rs.) Also the regression guard for a
//! blocked event loop: probes while every worker is busy, with a loose bound.
//!
//! The parsing and error-shape tests call the router in the test process ([`common::App`]):
//! what they check is the handler's answer. The documented shape end to end, deadlines and
//! saturation start the binary.

use crate::common;

use std::net::TcpStream;
use std::time::Duration;

use common::{busy_jobs, mersenne, slow_prime, wait_until, App, Http, Server};

/// The router in the test process, with a 50-digit cap and a live worker.
fn app() -> App {
    App::start(&["--workers", "2", "--max-digits", "50", "--ls-root", "/"])
}

#[test]
fn answers_get_and_post_with_the_documented_shape() {
    let server = Server::start(&["--workers", "2", "--max-digits", "50"]);
    server.wait_for_workers(2);
    let response = server.get("/isprime?number=1000000007");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let json = response.json();
    assert_eq!(json["number"], "1000000007");
    assert_eq!(json["isPrime"], true);
    assert_eq!(json["method"], "deterministic");
    let time = json["time"].as_str().unwrap();
    let ms: f64 = time.strip_suffix("ms").unwrap().parse().unwrap();
    assert!(ms > 0.0, "{time}");
    assert!(json["compute_ms"].as_f64().unwrap() >= 0.0);
    assert!(json["compute_ms"].as_f64().unwrap() <= ms);

    // 2^127 - 1 is prime; as a bare JSON integer it must keep every digit.
    let m127 = mersenne(127);
    for body in [
        format!("{{\"number\": {m127}}}"),
        format!("{{\"number\": \"{m127}\"}}"),
    ] {
        let json = server.post_json("/isprime", &body).json();
        assert_eq!(json["number"], m127.as_str());
        assert_eq!(json["isPrime"], true);
        assert_eq!(json["method"], "bpsw");
    }
    let json = server
        .post_json("/isprime", &format!("{{\"number\": \"{}\"}}", mersenne(67)))
        .json();
    assert_eq!(
        json["isPrime"], false,
        "2^67 - 1 = 193707721 × 761838257287"
    );
}

#[test]
fn accepts_whitespace_plus_and_leading_zeros_and_answers_canonically() {
    let server = app();
    for (raw, number, prime) in [
        ("%20%2B0097%20", "97", true),
        ("0000", "0", false),
        ("1", "1", false),
        ("2", "2", true),
        ("18446744073709551557", "18446744073709551557", true), // 2^64 - 59
    ] {
        let response = server.get(&format!("/isprime?number={raw}"));
        assert_eq!(response.status, 200, "{raw}: {}", response.text());
        let json = response.json();
        assert_eq!(json["number"], number, "{raw}");
        assert_eq!(json["isPrime"], prime, "{raw}");
    }
}

#[test]
fn bad_numbers_get_400_saying_what_is_wrong() {
    let server = app();
    for (query, expected) in [
        ("", "missing"),
        ("?number=", "empty"),
        ("?number=%20%20", "empty"),
        ("?number=-7", "negative"),
        ("?number=7.5", "fractional"),
        ("?number=1e9", "exponent"),
        ("?number=0x1f", "hexadecimal"),
        ("?number=12abc", "invalid character 'a' at position 2"),
        ("?number=7&number=11", "more than once"),
    ] {
        let message = server.get(&format!("/isprime{query}")).assert_error(400);
        assert!(message.contains(expected), "{query}: {message}");
    }
    for (body, expected) in [
        ("{\"number\": -7}", "negative"),
        ("{\"number\": 1.5}", "fractional"),
        ("{\"number\": 1e-3}", "fractional"),
        ("{\"number\": \"1e3\"}", "exponent"),
        ("{\"number\": \"twelve\"}", "invalid character"),
        ("{}", "missing"),
        ("{\"number\": ", "JSON"),
        ("[7]", "JSON"),
    ] {
        let message = server.post_json("/isprime", body).assert_error(400);
        assert!(message.contains(expected), "{body}: {message}");
    }
    // A bare JSON number is its value (JSON Schema's `integer` is one): 1e1 is 10, 7.0 is 7.
    assert_eq!(
        server.post_json("/isprime", "{\"number\": 1e1}").json()["number"],
        "10"
    );
    assert_eq!(
        server.post_json("/isprime", "{\"number\": 7.0}").json()["isPrime"],
        true
    );
    // The server keeps serving after all that.
    assert_eq!(server.get("/isprime?number=7").json()["isPrime"], true);
}

#[test]
fn numbers_over_the_digit_cap_get_413() {
    let server = app();
    let fifty = "9".repeat(50);
    assert_eq!(server.get(&format!("/isprime?number={fifty}")).status, 200);
    // Leading zeros do not count towards the cap.
    assert_eq!(
        server.get(&format!("/isprime?number=000{fifty}")).status,
        200
    );
    let message = server
        .get(&format!("/isprime?number=1{fifty}"))
        .assert_error(413);
    assert!(
        message.contains("51 digits") && message.contains("50"),
        "{message}"
    );
    let body = format!("{{\"number\": 1{fifty}}}");
    server.post_json("/isprime", &body).assert_error(413);
}

#[test]
fn testrequest_answers_while_every_worker_is_busy() {
    let server = Server::start(&["--workers", "2"]);
    server.wait_for_workers(2);
    let number = slow_prime();
    // Five heavy jobs per worker, so that both stay busy for the whole probe run.
    let jobs: Vec<TcpStream> = (0..10).map(|_| server.send_job(&number)).collect();
    let busy = wait_until(Duration::from_secs(10), || {
        (busy_jobs(&server).len() == 2).then_some(())
    });
    assert!(
        busy.is_some(),
        "workers never all busy: {}",
        server.get("/status").text()
    );
    // How fast it answers is a benchmark's claim (README, Performance: /testrequest under a
    // saturated pool); here, that it answers at all while no worker is free.
    for _ in 0..20 {
        assert_eq!(server.get("/testrequest").status, 200);
    }
    assert!(
        busy_jobs(&server).len() == 2,
        "a worker went idle during the probes, so they did not run under saturation; use a \
         slower heavy job"
    );
    // The heavy jobs are abandoned; the server is killed when it drops.
    drop(jobs);
}

// -------------------------------------------------------------------------------------------
// In process: the router as the server builds it, called with `tower::ServiceExt::oneshot`, on
// a pool whose one worker is the real binary. No sockets, so a property test can send
// hundreds of requests cheaply.

/// `--max-digits` of the in-process server: small, so that 413 is easy to reach.
const MAX_DIGITS: usize = 30;

/// One in-process server, shared by the property tests here.
fn in_process() -> &'static App {
    static SERVER: std::sync::OnceLock<App> = std::sync::OnceLock::new();
    let digits = MAX_DIGITS.to_string();
    SERVER
        .get_or_init(|| App::start(&["--workers", "1", "--max-digits", &digits, "--ls-root", "/"]))
}

/// A response of the in-process server: status and JSON body.
fn call(response: common::Response) -> (u16, serde_json::Value) {
    let json = serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {:?}", response.status, response.text()));
    (response.status, json)
}

fn get_query(query: &str) -> (u16, serde_json::Value) {
    call(in_process().get(&format!("/isprime?{query}")))
}

fn post_body(body: Vec<u8>) -> (u16, serde_json::Value) {
    let json = [("content-type", "application/json")];
    call(in_process().request("POST", "/isprime", &json, &body))
}

/// Asserts an error answer with `code`; returns its message.
fn error(answer: &(u16, serde_json::Value), code: &str) -> String {
    let (status, json) = answer;
    assert_eq!(json["code"], code, "{status}: {json}");
    assert_eq!(json["status"], *status, "{json}");
    json["error"].as_str().unwrap().to_owned()
}

#[test]
fn parser_messages_tell_the_truth() {
    for (query, code) in [
        ("number=-", "number_no_digits"),
        ("number=-0", "number_minus_zero"),
    ] {
        let message = error(&get_query(query), code);
        assert!(!message.contains("negative"), "{query}: {message}");
    }
    // A `+` in a query is a space by the URL rules, and the message says so.
    let message = error(&get_query("number=1+2"), "number_invalid_character");
    assert!(
        message.contains("`+`") && message.contains("%2B"),
        "{message}"
    );
    let message = error(&get_query("number=1%202"), "number_invalid_character");
    assert!(
        message.contains("' ' at position 1") && !message.contains("%2B"),
        "{message}"
    );
    // Positions count from the value as sent, leading whitespace included.
    let message = error(&get_query("number=%20%2012a"), "number_invalid_character");
    assert!(message.contains("'a' at position 4"), "{message}");
    // A lone surrogate escape is named, not reported as a generic JSON error.
    let message = error(
        &post_body(br#"{"number": "\ud800"}"#.to_vec()),
        "number_invalid_escape",
    );
    assert!(
        message.contains(r"\ud800") && message.contains("surrogate"),
        "{message}"
    );
    let message = error(&post_body(br#"{"number": true}"#.to_vec()), "body_invalid");
    assert!(message.contains("a string or an integer"), "{message}");
}

/// The number `text` stands for in canonical form, by the rule the documentation gives
/// (surrounding whitespace, one leading `+`, leading zeros), written out independently of the
/// server's parser; `Err(true)` if it has too many digits, `Err(false)` if it is no number.
fn expected(text: &str) -> Result<String, bool> {
    let text = text.trim();
    let digits = text.strip_prefix('+').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(false);
    }
    let significant = digits.trim_start_matches('0');
    if significant.len() > MAX_DIGITS {
        return Err(true);
    }
    Ok(match significant {
        "" => "0".to_owned(),
        digits => digits.to_owned(),
    })
}

/// Asserts that `answer` is right for `input` (the value as the server decodes it; `None`
/// when the server cannot know it, e.g. a body that is no JSON): the verdict on the number
/// the rule makes of it, or the refusal the rule predicts, and in any case never a 5xx.
fn check_answer(input: Option<&str>, answer: &(u16, serde_json::Value)) {
    let (status, json) = answer;
    assert!((200..500).contains(status), "{input:?}: {status} {json}");
    let wanted = input.map(expected);
    if *status == 200 {
        let number = json["number"].as_str().expect("a number");
        if let Some(wanted) = &wanted {
            assert_eq!(Ok(number), wanted.as_deref(), "{input:?}: {json}");
        }
        let n: malachite_nz::natural::Natural = number.parse().expect("canonical digits");
        assert_eq!(
            json["isPrime"],
            forkpool::prime::is_prime(&n).is_prime,
            "{json}"
        );
        return;
    }
    let message = json["error"].as_str().unwrap_or_default();
    assert!(
        !message.is_empty() && json["code"].is_string(),
        "{input:?}: {json}"
    );
    match wanted {
        Some(Ok(number)) => panic!("{input:?} is {number}, but the answer is {status} {json}"),
        Some(Err(true)) => assert_eq!(json["code"], "number_too_long", "{input:?}: {json}"),
        Some(Err(false)) => assert_eq!(*status, 400, "{input:?}: {json}"),
        None => assert!(matches!(status, 400 | 413), "{json}"),
    }
}

/// Percent-encodes `bytes` for a query, leaving unreserved characters as they are, and a `+`
/// too when `plus_raw` (which the URL rules make a space); returns the query value and what
/// the server must decode it to.
fn query_value(bytes: &[u8], plus_raw: bool) -> (String, Vec<u8>) {
    let mut encoded = String::new();
    let mut decoded = bytes.to_vec();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'+' if plus_raw => {
                encoded.push('+');
                decoded[i] = b' ';
            }
            b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => encoded.push(b as char),
            b => encoded.push_str(&format!("%{b:02X}")),
        }
    }
    (encoded, decoded)
}

/// Byte strings as `number`: anything at all, any text, text close to a number (signs,
/// whitespace, zeros, points, exponents, hex, digits of other scripts) where the bugs live, and
/// numbers in every accepted form, some over the digit cap.
fn numbers() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let near = "[ \\t\u{a0}]{0,2}[+-]{0,2}[0-9]{0,34}([.eExX ][0-9a-fA-F+-]{0,4})?[ \u{665}]{0,2}";
    let valid = "[ \\t]{0,2}\\+?0{0,3}[0-9]{1,32}[ \\n]{0,2}";
    let regex = |pattern| proptest::string::string_regex(pattern).unwrap();
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        ".{0,12}".prop_map(String::into_bytes),
        regex(near).prop_map(String::into_bytes),
        regex(valid).prop_map(String::into_bytes),
    ]
}

proptest::proptest! {
    #[test]
    fn any_bytes_as_a_query_number_get_the_right_answer_or_a_4xx(
        bytes in numbers(),
        plus_raw in proptest::bool::ANY,
    ) {
        let (encoded, decoded) = query_value(&bytes, plus_raw);
        let answer = get_query(&format!("number={encoded}"));
        match std::str::from_utf8(&decoded) {
            Ok(text) => check_answer(Some(text), &answer),
            Err(_) => assert_eq!(answer.1["code"], "param_not_utf8", "{bytes:?}: {}", answer.1),
        }
    }

    #[test]
    fn any_bytes_as_a_json_number_get_the_right_answer_or_a_4xx(bytes in numbers()) {
        // As a JSON string, escaped as it must be, when the bytes are text.
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let body = serde_json::json!({ "number": text }).to_string();
            check_answer(Some(text), &post_body(body.into_bytes()));
        }
        // Spliced in as they are, inside quotes and bare: mostly no JSON at all.
        for (open, close) in [(&b"{\"number\": \""[..], &b"\"}"[..]), (b"{\"number\": ", b"}")] {
            let body = [open, &bytes[..], close].concat();
            check_answer(None, &post_body(body));
        }
    }
}

// -------------------------------------------------------------------------------------------
// Client deadlines: `timeout` (issue 20, item 4).

#[test]
fn a_deadline_the_queue_already_outlasts_is_refused_at_once() {
    // Every job runs until released, and each is sent to the worker alone (`--max-batch 1`):
    // light jobs sent ahead to a busy worker leave the queue, and the two below were once not
    // both seen queued (in the 20-run check under busy loops).
    let held = common::HeldWorker::new();
    let args = ["--workers", "1", "--job-timeout", "60s", "--max-batch", "1"];
    let server = Server::start(&[&args[..], &["--worker-program", held.program()]].concat());
    server.wait_for_workers(1);
    let body = r#"{"number": "7"}"#;
    // One job run to the end gives the estimate its mean run time: at least 300 ms.
    let first = std::thread::scope(|s| {
        let first = s.spawn(|| server.post_json("/isprime", body));
        wait_until(Duration::from_secs(20), || {
            (busy_jobs(&server).len() == 1).then_some(())
        })
        .expect("the first job runs");
        // Not a wait for an event: how long the job runs is the point.
        std::thread::sleep(Duration::from_millis(300));
        held.release();
        first.join().unwrap()
    });
    assert_eq!(first.status, 200, "{}", first.text());
    // One job running and two queued behind it: the wait is two mean run times, 600 ms or more.
    held.hold_all();
    let running = server.send_job("7");
    wait_until(Duration::from_secs(20), || {
        (busy_jobs(&server).len() == 1).then_some(())
    })
    .expect("the first job runs");
    let queued: Vec<TcpStream> = (0..2).map(|_| server.send_job("7")).collect();
    wait_until(Duration::from_secs(20), || {
        (common::status(&server)["queue_depth"] == 2).then_some(())
    })
    .expect("two jobs wait");

    // Refused at admission, not after waiting: a job that waited out its 200 ms would be a
    // 504 `job_timeout`, and the queue below would have held it.
    let response = server.get("/isprime?number=7&timeout=200ms");
    let (message, code) = response.assert_error_code(503);
    assert_eq!(code, "deadline_unreachable", "{message}");
    assert!(
        message.contains("2 jobs ahead") && message.contains("200ms"),
        "{message}"
    );
    let retry: u64 = response
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry >= 1, "{retry}");
    // The same in a body; and without a deadline of its own, a job still queues.
    let body = r#"{"number": "7", "timeout": "200ms"}"#;
    let (_, code) = server.post_json("/isprime", body).assert_error_code(503);
    assert_eq!(code, "deadline_unreachable");
    assert_eq!(
        server.outcome_count("forkpool_jobs_total", "rejected_deadline"),
        2
    );
    assert_eq!(
        common::status(&server)["queue_depth"],
        2,
        "nothing refused was queued"
    );
    drop((running, queued));
}

/// POSTs a job for `number` with the client deadline `timeout` on a connection of its own and
/// returns it, unread.
fn send_with_timeout(server: &Server, number: &str, timeout: &str) -> TcpStream {
    let body = format!("{{\"number\": \"{number}\", \"timeout\": \"{timeout}\"}}");
    let json = [("content-type", "application/json")];
    server.send("POST", "/isprime", &json, body.as_bytes())
}

/// Reads the whole response from a connection returned by `send_with_timeout` or `send_job`.
fn read_response(mut stream: TcpStream) -> common::Response {
    use std::io::Read;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    common::Response::parse(&raw)
}

#[test]
fn a_job_that_would_start_too_late_is_refused_at_dispatch_not_killed() {
    let server = Server::start(&["--workers", "1", "--job-timeout", "60s"]);
    server.wait_for_workers(1);
    // 2^23209 - 1 (6987 digits) takes far longer than 3 s in a test build: the first job is
    // killed at its deadline, which teaches its class a run time of at least 3 s (mean 3 s,
    // margin 6 s).
    let number = mersenne(23209);
    let first = send_with_timeout(&server, &number, "3s");
    wait_until(Duration::from_secs(10), || {
        (busy_jobs(&server).len() == 1).then_some(())
    })
    .expect("the first job runs");
    // Nothing is known yet, so the second is admitted; it waits behind the first, whose kill
    // leaves it less than its 8 s deadline minus the 3 s the first ran: below the margin.
    let second = send_with_timeout(&server, &number, "8s");
    wait_until(Duration::from_secs(10), || {
        (common::status(&server)["queue_depth"] == 1).then_some(())
    })
    .expect("the second job waits");

    let (message, code) = read_response(first).assert_error_code(504);
    assert_eq!(code, "job_timeout", "{message}");
    let response = read_response(second);
    let (message, code) = response.assert_error_code(503);
    assert_eq!(code, "deadline_unreachable", "{message}");
    assert!(message.contains("was not started"), "{message}");
    assert!(response.header("retry-after").is_some());
    let count = |family, outcome| server.outcome_count(family, outcome);
    assert_eq!(count("forkpool_jobs_total", "rejected_dispatch"), 1);
    // Only the first job was killed: the second never reached a worker.
    let metrics = server.get("/metrics").text();
    assert!(
        metrics.contains("forkpool_worker_exits_total{reason=\"killed_timeout\"} 1\n"),
        "{metrics}"
    );
    assert_eq!(count("forkpool_jobs_total", "timeout"), 1);
}

#[test]
fn a_job_whose_client_hangs_up_while_queued_never_reaches_a_worker() {
    let server = Server::start(&["--workers", "1", "--job-timeout", "60s"]);
    server.wait_for_workers(1);
    let running = server.send_job(&slow_prime());
    wait_until(Duration::from_secs(10), || {
        (busy_jobs(&server).len() == 1).then_some(())
    })
    .expect("the first job runs");
    let queued = send_with_timeout(&server, &slow_prime(), "30s");
    wait_until(Duration::from_secs(10), || {
        (common::status(&server)["queue_depth"] == 1).then_some(())
    })
    .expect("the second job waits");
    drop(queued);
    wait_until(Duration::from_secs(10), || {
        (server.outcome_count("forkpool_jobs_total", "cancelled") == 1).then_some(())
    })
    .expect("the hang-up is counted");
    assert_eq!(common::status(&server)["queue_depth"], 0);
    // The worker is freed (its client hangs up too: it is killed and replaced). Had the second
    // job still been queued, the fresh worker would take it now; it goes idle instead.
    let before = server.worker_pids();
    drop(running);
    wait_until(Duration::from_secs(20), || {
        let row = common::status(&server)["workers"][0].clone();
        let fresh = row["pid"]
            .as_u64()
            .is_some_and(|pid| !before.contains(&(pid as u32)));
        (fresh && row["state"] == "idle").then_some(())
    })
    .expect("a fresh worker goes idle");
    assert_eq!(common::status(&server)["queue_depth"], 0);
    // Every job a worker is handed is timed in the queue-wait histogram: only the first was.
    let metrics = server.get("/metrics").text();
    let handed = "forkpool_job_queue_wait_seconds_count ";
    let handed: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix(handed))
        .collect();
    assert_eq!(handed, ["1"], "{metrics}");
}

#[test]
fn a_job_past_its_clients_deadline_is_killed_at_that_deadline() {
    // Each case on a server of its own whose worker holds every job: the job never finishes,
    // so it runs until a deadline kills it, and no run time or kill seen before can make the
    // admission's prediction refuse it at once (503) instead: this test is about the kill.
    let cases = [
        // (how the request sets its timeout, the deadline in force as the message spells it)
        (Some(r#""timeout": "400ms""#), None, "400ms"),
        // Capped by --job-timeout.
        (Some(r#""timeout": "1h""#), None, "1.5s"),
        // A query's `timeout` too.
        (None, Some("300ms"), "300ms"),
    ];
    for (field, query, spelled) in cases {
        let held = common::HeldWorker::new();
        let args = ["--workers", "1", "--job-timeout", "1500ms"];
        let server = Server::start(&[&args[..], &["--worker-program", held.program()]].concat());
        server.wait_for_workers(1);
        let response = match (field, query) {
            (Some(field), _) => {
                server.post_json("/isprime", &format!(r#"{{"number": "7", {field}}}"#))
            }
            (None, Some(timeout)) => server.get(&format!("/isprime?number=7&timeout={timeout}")),
            (None, None) => unreachable!("every case sets a timeout"),
        };
        let (message, code) = response.assert_error_code(504);
        assert_eq!(code, "job_timeout");
        assert!(message.contains(spelled), "{spelled}: {message}");
        // Counted once the driver has reaped the worker it killed, which may be just after
        // the answer went out.
        let killed = "forkpool_worker_exits_total{reason=\"killed_timeout\"} 1\n";
        let metrics = || server.get("/metrics").text();
        let seen = wait_until(Duration::from_secs(30), || {
            metrics().contains(killed).then_some(())
        });
        assert!(
            seen.is_some(),
            "{spelled}: the held job was not killed at its deadline"
        );
    }
}

#[test]
fn bad_timeouts_are_400_timeout_invalid() {
    let server = app();
    let bad = [
        "", "0", "0s", "-1s", "2x", "soon", "1s2m", "1.2.3s", "%20", "2%00s", "1e3",
    ];
    for value in bad {
        let response = server.get(&format!("/isprime?number=7&timeout={value}"));
        let (message, code) = response.assert_error_code(400);
        assert_eq!(code, "timeout_invalid", "{value:?}: {message}");
        assert!(message.contains("`timeout`"), "{value:?}: {message}");
    }
    let bodies = [
        r#"{"number": "7", "timeout": ""}"#,
        r#"{"number": "7", "timeout": "0ms"}"#,
        r#"{"number": "7", "timeout": 2}"#,
        r#"{"number": "7", "timeout": true}"#,
        r#"{"number": "7", "timeout": "2 seconds"}"#,
    ];
    for body in bodies {
        let (message, code) = server.post_json("/isprime", body).assert_error_code(400);
        assert_eq!(code, "timeout_invalid", "{body}: {message}");
    }
    // Given twice: the query's own rule.
    let response = server.get("/isprime?number=7&timeout=1s&timeout=2s");
    let (_, code) = response.assert_error_code(400);
    assert_eq!(code, "param_repeated");
    // And good ones answer as usual.
    for value in ["200ms", "2s", "1m30s", "5"] {
        let response = server.get(&format!("/isprime?number=7&timeout={value}"));
        assert_eq!(response.status, 200, "{value}: {}", response.text());
    }
    let ok = server.post_json("/isprime", r#"{"number": "7", "timeout": "2s"}"#);
    assert_eq!(ok.status, 200, "{}", ok.text());
}

#[test]
fn a_far_larger_number_than_any_run_yet_is_refused_by_its_scaled_estimate_not_killed() {
    let server = Server::start(&["--workers", "1", "--job-timeout", "60s"]);
    server.wait_for_workers(1);
    // Light jobs run: their class (the exact u64 test) is the only one with a sample.
    for _ in 0..5 {
        let response = server.get("/isprime?number=1000000007");
        assert_eq!(response.status, 200, "{}", response.text());
    }
    // 2^23209 - 1 (6987 digits) has never run: its estimate is the light jobs' scaled by the
    // ratio of hints (about 6 x 10^5), seconds even if a light job took a microsecond. Without
    // the scaling it would borrow a light job's run time, start, and be killed at 500 ms.
    let body = format!(
        "{{\"number\": \"{}\", \"timeout\": \"500ms\"}}",
        mersenne(23209)
    );
    let (message, code) = server.post_json("/isprime", &body).assert_error_code(503);
    assert_eq!(code, "deadline_unreachable", "{message}");
    let count = |outcome| server.outcome_count("forkpool_jobs_total", outcome);
    assert_eq!(count("rejected_deadline"), 1, "refused at admission");
    assert_eq!((count("rejected_dispatch"), count("timeout")), (0, 0));
    let metrics = server.get("/metrics").text();
    let killed = metrics.lines().find_map(|line| {
        line.strip_prefix("forkpool_worker_exits_total{reason=\"killed_timeout\"} ")
    });
    assert!(
        matches!(killed, None | Some("0")),
        "no worker killed: {metrics}"
    );
}
