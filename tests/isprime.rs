//! `/isprime` over HTTP: answers, the reply's shape, and every kind of bad input.
//! (The primality vectors themselves are in tests/prime.rs.) Also the regression guard for a
//! blocked event loop: probes while every worker is busy, with a loose bound.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{busy_jobs, mersenne, slow_prime, wait_until, Server};

fn server() -> Server {
    let server = Server::start(&["--workers", "2", "--max-digits", "50"]);
    server.wait_for_workers(2);
    server
}

#[test]
fn answers_get_and_post_with_the_documented_shape() {
    let server = server();
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
    let server = server();
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
    let server = server();
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
        ("{\"number\": 1e3}", "exponent"),
        ("{\"number\": \"twelve\"}", "invalid character"),
        ("{}", "missing"),
        ("{\"number\": ", "JSON"),
        ("[7]", "JSON"),
    ] {
        let message = server.post_json("/isprime", body).assert_error(400);
        assert!(message.contains(expected), "{body}: {message}");
    }
    // The server keeps serving after all that.
    assert_eq!(server.get("/isprime?number=7").json()["isPrime"], true);
}

#[test]
fn numbers_over_the_digit_cap_get_413() {
    let server = server();
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
    // Two heavy jobs per worker, so that both stay busy for the whole probe run.
    let jobs: Vec<TcpStream> = (0..4).map(|_| server.send_job(&number)).collect();
    let busy = wait_until(Duration::from_secs(10), || {
        (busy_jobs(&server).len() == 2).then_some(())
    });
    assert!(
        busy.is_some(),
        "workers never all busy: {}",
        server.get("/status").text()
    );

    let mut times = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        let response = server.get("/testrequest");
        times.push(started.elapsed());
        assert_eq!(response.status, 200);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        busy_jobs(&server).len() == 2,
        "a worker went idle during the probes, so they did not measure saturation; use a \
         slower heavy job"
    );
    times.sort();
    let p99 = times[(times.len() * 99).div_ceil(100) - 1];
    assert!(
        p99 < Duration::from_millis(100),
        "/testrequest p99 {p99:?} with every worker busy: is the event loop blocked? {times:?}"
    );
    // The heavy jobs are abandoned; the server is killed when it drops.
    drop(jobs);
}
