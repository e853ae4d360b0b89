//! The HTTP front end: /testrequest, the JSON error shape, request ids (the router, in the
//! test process: [`common::App`]); graceful shutdown on SIGTERM, start-up errors, --help and
//! the index (the real binary).
//!
//! (A panicking handler is tested in-process, in `src/server.rs`: no route panics.)

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use clap::CommandFactory;
use common::{alive, run_to_exit, status, wait_until, App, HeldWorker, Http, Server};
use forkpool::routes::MAX_REQUEST_ID_LEN;

/// The router in the test process, for what a handler or a layer of the router answers.
fn app() -> App {
    App::start(&["--workers", "1", "--ls-root", "/"])
}

#[test]
fn testrequest_answers_plain_text() {
    let server = app();
    let response = server.get("/testrequest");
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "I am unblocked now");
    let content_type = response.header("content-type").expect("content-type");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
}

#[test]
fn unknown_paths_and_methods_get_the_json_error_shape() {
    let server = app();
    for path in ["/nope", "/testrequest/extra", "/isprime/7", "/%ff"] {
        let (message, code) = server.get(path).assert_error_code(404);
        assert!(message.contains("GET /"), "{path}: {message}");
        assert_eq!(code, "not_found");
    }
    for (method, path) in [
        ("POST", "/testrequest"),
        ("DELETE", "/isprime"),
        ("PUT", "/status"),
    ] {
        let response = server.request(method, path, &[], b"");
        let (message, code) = response.assert_error_code(405);
        assert!(message.contains("method"), "{method} {path}: {message}");
        assert_eq!(code, "method_not_allowed");
    }
}

#[test]
fn request_ids_are_echoed_or_generated() {
    let server = app();
    let given = server.request(
        "GET",
        "/testrequest",
        &[("x-request-id", "client-id-42")],
        b"",
    );
    assert_eq!(given.header("x-request-id"), Some("client-id-42"));
    // Also on errors, which are made by a different code path.
    let error = server.request("GET", "/nope", &[("x-request-id", "client-id-43")], b"");
    assert_eq!(error.header("x-request-id"), Some("client-id-43"));

    let mut generated = HashSet::new();
    for _ in 0..5 {
        let response = server.get("/testrequest");
        let id = response
            .header("x-request-id")
            .expect("generated id")
            .to_owned();
        assert!(
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_graphic()),
            "{id:?}"
        );
        generated.insert(id);
    }
    assert_eq!(generated.len(), 5, "ids repeat: {generated:?}");

    // An id that would not read as one log token is replaced, not echoed.
    let odd = server.request("GET", "/testrequest", &[("x-request-id", "two words")], b"");
    let id = odd.header("x-request-id").expect("replacement id");
    assert_ne!(id, "two words");
    assert!(!id.contains(' '));
}

#[test]
fn sigterm_kills_a_job_that_outlasts_the_grace_period_and_still_exits_0() {
    // Never released: the job outlasts any grace.
    let held = HeldWorker::new();
    let args = ["--workers", "1", "--shutdown-grace", "300ms"];
    let mut server = Server::start(&[&args[..], &["--worker-program", held.program()]].concat());
    let workers = server.wait_for_workers(1);
    let request = server.send_job("7");
    wait_busy(&server);
    server.terminate();
    let status = server
        .wait_exit(Duration::from_secs(20))
        .expect("server exits");
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", server.log());
    let gone = wait_until(Duration::from_secs(20), || {
        workers.iter().all(|&pid| !alive(pid)).then_some(())
    });
    assert!(gone.is_some(), "a worker outlived the server");
    server.wait_for_log("`grace period over`", |log| {
        log.contains("grace period over")
    });
    drop(request);
}

/// Was flaky under load while its job was a real `slow_prime`: the workers' SCHED_IDLE class
/// starved it past the client's 60 s read timeout. The job is now held until the server is
/// seen draining, so it is in flight at SIGTERM, and still running after it, on any machine.
#[test]
fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let held = HeldWorker::new();
    let args = ["--workers", "1", "--shutdown-grace", "1h"];
    let mut server = Server::start(&[&args[..], &["--worker-program", held.program()]].concat());
    let workers = server.wait_for_workers(1);
    let response = std::thread::scope(|s| {
        let request = s.spawn(|| server.post_json("/isprime", r#"{"number": "7"}"#));
        wait_busy(&server);
        server.terminate();
        server.wait_for_log("`shutting down`", |log| log.contains("shutting down"));
        held.release();
        request.join().expect("request thread")
    });
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["isPrime"], true);
    let status = server
        .wait_exit(Duration::from_secs(60))
        .expect("server exits");
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", server.log());
    assert!(
        workers.iter().all(|&pid| !alive(pid)),
        "workers outlived the server"
    );
}

/// Waits until the one worker of `server` is busy per /status.
fn wait_busy(server: &Server) {
    wait_until(Duration::from_secs(20), || {
        (status(server)["workers"][0]["state"] == "busy").then_some(())
    })
    .unwrap_or_else(|| panic!("the job never ran: {}", status(server)));
}

#[test]
fn sigterm_when_idle_exits_0_promptly() {
    // A grace far longer than the wait below: nothing is in flight, so a server that exits
    // at all did not wait for it.
    let mut server = Server::start(&["--workers", "2", "--shutdown-grace", "1h"]);
    let workers = server.wait_for_workers(2);
    server.terminate();
    let status = server
        .wait_exit(Duration::from_secs(60))
        .expect("server exits without waiting out its grace");
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", server.log());
    assert!(
        workers.iter().all(|&pid| !alive(pid)),
        "workers outlived the server"
    );
}

#[test]
fn workers_die_with_a_killed_server() {
    let mut server = Server::start(&["--workers", "2"]);
    let workers = server.wait_for_workers(2);
    assert!(workers.iter().all(|&pid| alive(pid)));
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let gone = wait_until(Duration::from_secs(20), || {
        workers.iter().all(|&pid| !alive(pid)).then_some(())
    });
    assert!(
        gone.is_some(),
        "workers {workers:?} outlived a SIGKILLed server by 20 s"
    );
}

#[test]
fn a_bad_listen_address_exits_2_naming_the_flag() {
    for address in ["nope", "127.0.0.1", "127.0.0.1:99999", ""] {
        let (code, _, stderr) = run_to_exit(&["--listen", address, "--workers", "1"], &[]);
        assert_eq!(code, Some(2), "--listen {address:?}: {stderr}");
        assert!(
            stderr.contains("--listen"),
            "--listen {address:?}: {stderr}"
        );
    }
    // Well formed but taken: also a start-up error that names the flag.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let (code, stdout, stderr) = run_to_exit(&["--listen", &address, "--workers", "1"], &[]);
    assert_eq!(code, Some(2), "--listen {address}: {stderr}");
    assert!(
        stderr.contains("--listen") && stderr.contains(&address),
        "{stderr}"
    );
    assert!(!stdout.contains("listening"), "{stdout}");
}

#[test]
fn every_start_up_failure_exits_2_with_one_line_naming_its_cause_and_never_claims_to_listen() {
    let file = common::temp_file("forkpool-not-a-dir-", ".txt", "x");
    let file = file.to_str().unwrap();
    /// Extra flags, environment, and the cause the error line must name.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 5] = [
        (
            &["--worker-program", "/nonexistent/worker"],
            &[],
            "--worker-program /nonexistent/worker: cannot run it",
        ),
        (
            &["--worker-program", file],
            &[],
            "cannot run it: Permission denied",
        ),
        (&[], &[("PATH", "/nonexistent")], "`ls`"),
        (
            &["--job-slow", "2s", "--job-timeout", "1500ms"],
            &[],
            "--job-slow 2s must be below --job-timeout 1.5s",
        ),
        (
            &["--job-timeout", "1s"],
            &[("FORKPOOL_JOB_SLOW", "1s")],
            "--job-slow 1s must be below --job-timeout 1s",
        ),
    ];
    for (args, env, cause) in cases {
        let args = [&["--listen", "127.0.0.1:0", "--workers", "1"], args].concat();
        let (code, stdout, stderr) = run_to_exit(&args, env);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert!(
            lines.len() == 1 && lines[0].contains(cause),
            "{args:?}: {stderr}"
        );
        assert!(stdout.is_empty(), "{args:?} claimed to listen: {stdout}");
    }
}

#[test]
fn listening_is_printed_once_a_worker_has_said_hello() {
    // A worker that takes half a second to start: the line must wait for it.
    let script = format!("#!/bin/sh\nsleep 0.5\nexec {} \"$@\"\n", common::BIN);
    let slow = common::temp_file("forkpool-slow-worker-", ".sh", &script);
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let server = Server::start(&["--workers", "1", "--worker-program", slow.to_str().unwrap()]);
    let ready = server.get("/readyz");
    assert_eq!(
        ready.status,
        200,
        "listening before ready: {}",
        ready.text()
    );
    assert!(
        server.log().contains("accepting on http://"),
        "{}",
        server.log()
    );
}

#[test]
fn help_mentions_every_serve_flag() {
    let (code, help, _) = run_to_exit(&["--help"], &[]);
    assert_eq!(code, Some(0));
    let expected = [
        "--listen",
        "--workers",
        "--queue",
        "--job-timeout",
        "--max-line",
        "--max-digits",
        "--max-jobs-per-worker",
        "--worker-memory",
        "--worker-nice",
        "--worker-program",
        "--ls-root",
        "--ls-timeout",
        "--ls-max-concurrent",
        "--shutdown-grace",
        "--shutdown-delay",
        "--log-format",
        "--config",
    ];
    // Whatever flags exist by the time this runs, not only the ones listed above.
    let declared: Vec<String> = forkpool::cli::Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect();
    for flag in expected
        .iter()
        .copied()
        .chain(declared.iter().map(String::as_str))
    {
        assert!(
            help.contains(&format!("{flag} ")),
            "--help does not mention {flag}:\n{help}"
        );
    }
    assert!(
        help.contains("FORKPOOL_WORKERS"),
        "env vars are not shown:\n{help}"
    );
}

#[test]
fn the_index_lists_the_endpoints() {
    let server = Server::start(&["--workers", "1"]);
    let response = server.get("/");
    assert_eq!(response.status, 200);
    assert!(response
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    let index = response.text();
    for endpoint in [
        "GET  /testrequest",
        "GET  /isprime",
        "POST /isprime",
        "GET  /ls",
        "GET  /healthz",
        "GET  /readyz",
        "GET  /metrics",
        "GET  /status",
    ] {
        assert!(index.contains(endpoint), "index lacks {endpoint}:\n{index}");
    }
    // Its examples call the port actually bound (the server was asked for port 0).
    let here = format!("http://{}/", server.addr);
    assert!(
        index.contains(&format!("curl {here}testrequest")),
        "{index}"
    );
    assert!(!index.contains(":3636"), "{index}");
}

#[test]
fn with_an_admin_listener_each_index_lists_what_its_own_port_serves() {
    let server = Server::start(&["--workers", "1", "--admin-listen", "127.0.0.1:0"]);
    let admin = server.admin.unwrap();
    let public = server.get("/").text();
    let (served, elsewhere) = public
        .split_once("On the admin address")
        .unwrap_or_else(|| panic!("the public index does not say where /metrics is:\n{public}"));
    let isprime = format!("http://{}/isprime", server.addr);
    assert!(served.contains(&isprime), "{public}");
    assert!(!served.contains("/metrics"), "{public}");
    assert!(
        elsewhere.contains(&format!("curl http://{admin}/metrics")),
        "{public}"
    );
    let response = server.get_admin("/");
    assert_eq!(response.status, 200, "{}", response.text());
    let admin_index = response.text();
    for on_admin in ["/metrics", "/status", "/readyz", "/openapi.json"] {
        let example = format!("curl http://{admin}{on_admin}");
        assert!(
            admin_index.contains(&example),
            "no {example}:\n{admin_index}"
        );
    }
    assert!(!admin_index.contains("/isprime"), "{admin_index}");
    assert_eq!(status(&server)["config"]["listen"], server.addr.to_string());
}

#[test]
fn flags_that_contradict_each_other_exit_2_naming_both_before_printing_anything() {
    let needed = forkpool::jobs::IsPrimeJob::max_line_bytes(250, MAX_REQUEST_ID_LEN);
    let short = (needed - 1).to_string();
    let cases: [(&[&str], [&str; 2]); 3] = [
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--max-line",
                &short,
                "--max-digits",
                "250",
            ],
            ["--max-line", "--max-digits"],
        ),
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--shutdown-delay",
                "5s",
                "--shutdown-grace",
                "2s",
            ],
            ["--shutdown-delay", "--shutdown-grace"],
        ),
        (
            &[
                "--listen",
                "127.0.0.1:39999",
                "--admin-listen",
                "127.0.0.1:39999",
            ],
            ["--admin-listen", "--listen"],
        ),
    ];
    for (args, flags) in cases {
        let args = [&["--workers", "1"], args].concat();
        let (code, stdout, stderr) = run_to_exit(&args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert!(
            lines.len() == 1 && flags.iter().all(|flag| lines[0].contains(flag)),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn a_max_line_just_long_enough_serves_the_largest_number_with_the_longest_request_id() {
    // The limit the start-up check computes is exact: one byte less is refused (above), and
    // with exactly that much a worker takes the longest job line there can be.
    let needed = forkpool::jobs::IsPrimeJob::max_line_bytes(250, MAX_REQUEST_ID_LEN);
    let needed = needed.to_string();
    let server = Server::start(&[
        "--workers",
        "1",
        "--max-digits",
        "250",
        "--max-line",
        &needed,
    ]);
    let number = format!("1{}", "0".repeat(249));
    let id = "i".repeat(MAX_REQUEST_ID_LEN);
    let path = format!("/isprime?number={number}");
    let response = server.request("GET", &path, &[("x-request-id", &id)], b"");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("x-request-id"), Some(id.as_str()));
    assert_eq!(response.json()["isPrime"], false);
    assert_eq!(server.get("/readyz").status, 200);
}
