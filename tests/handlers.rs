//! Handlers called in the test process ([`common::App`]: an `AppState` built from parts, a
//! real pool whose workers are the forkpool binary or a given program, /ls on a temporary
//! root, the metrics recorder; the routers called with `tower::ServiceExt::oneshot`). No
//! server process, no socket: what these check is what a handler answers, not what crosses a
//! process boundary.

use crate::common;

use std::time::Duration;

use common::{wait_until, App, Http};

#[test]
fn isprime_answers_from_a_real_worker_and_refuses_bad_input_with_json() {
    let root = tempfile::tempdir().unwrap();
    let app = App::start(&["--workers", "1", "--ls-root", root.path().to_str().unwrap()]);
    let response = app.get("/isprime?number=1000000007");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["isPrime"], true, "{}", response.text());
    let message = app.get("/isprime?number=12x").assert_error(400);
    assert!(!message.is_empty());
}

#[test]
fn readyz_says_why_when_no_worker_can_start_and_isprime_is_refused_at_once() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path().to_str().unwrap();
    let flags = [
        "--workers",
        "1",
        "--worker-start-failures",
        "2",
        "--ls-root",
        root,
    ];
    let app = App::with_worker(&flags, "/bin/false");
    let said = wait_until(Duration::from_secs(20), || {
        let response = app.get("/readyz");
        (response.status == 503 && response.text().contains("failed")).then_some(())
    });
    assert!(
        said.is_some(),
        "/readyz never said why: {}",
        app.get("/readyz").text()
    );
    app.get("/isprime?number=7").assert_error(503);
}
