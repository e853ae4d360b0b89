//! Handlers called in the test process: an `AppState` built from parts (a real pool whose
//! workers are the forkpool binary, the /ls runner on a temporary root, the metrics recorder)
//! and the routers called with `tower::ServiceExt::oneshot`. No server process, no socket:
//! what these check is what a handler answers, not what crosses a process boundary.

use crate::common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use forkpool::routes::routers;
use forkpool::routes::state::AppState;
use http_body_util::BodyExt;
use tower::ServiceExt;

/// A state whose pool runs `worker` (the forkpool binary unless given), /ls on `root`.
fn state(flags: &[&str], worker: Option<&str>, root: &tempfile::TempDir) -> AppState {
    let root = root.path().to_str().unwrap();
    let flags = [flags, &["--ls-root", root]].concat();
    common::in_process_state(&flags, worker.unwrap_or(common::BIN))
}

/// GET `path` on the public router: status and body.
async fn get(state: &AppState, path: &str) -> (StatusCode, serde_json::Value) {
    let request = Request::builder().uri(path).body(Body::empty()).unwrap();
    let response = routers(state.clone())
        .public
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, json)
}

#[tokio::test]
async fn isprime_answers_from_a_real_worker_and_refuses_bad_input_with_json() {
    let root = tempfile::tempdir().unwrap();
    let state = state(&["--workers", "1"], None, &root);
    let (status, json) = get(&state, "/isprime?number=1000000007").await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["isPrime"], true, "{json}");
    let (status, json) = get(&state, "/isprime?number=12x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    assert!(
        json["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{json}"
    );
    state.pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn readyz_says_why_when_no_worker_can_start_and_isprime_is_refused_at_once() {
    let root = tempfile::tempdir().unwrap();
    let flags = ["--workers", "1", "--worker-start-failures", "2"];
    let state = state(&flags, Some("/bin/false"), &root);
    let says_why = async {
        loop {
            let (status, json) = get(&state, "/readyz").await;
            if status == StatusCode::SERVICE_UNAVAILABLE && json.to_string().contains("failed") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let said = tokio::time::timeout(Duration::from_secs(20), says_why).await;
    assert!(
        said.is_ok(),
        "/readyz never said why: {:?}",
        get(&state, "/readyz").await
    );
    let (status, json) = get(&state, "/isprime?number=7").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{json}");
    state.pool.shutdown(Duration::from_secs(5)).await;
}
