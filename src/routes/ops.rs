//! Operations endpoints, all served from the async runtime so that they answer while every
//! worker is busy: `/`, `/testrequest`, `/healthz`, `/readyz`, `/metrics`, `/status`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use crate::error::AppError;
use crate::pool::WorkerState;
use crate::server::AppState;

const INDEX: &str = "\
forkpool: CPU work in a pool of worker processes, behind HTTP.

GET  /testrequest                   answers at once, however busy the workers are
     curl http://127.0.0.1:3636/testrequest
GET  /isprime?number=N              primality of N, computed in a worker
     curl 'http://127.0.0.1:3636/isprime?number=1000000007'
POST /isprime {\"number\": \"N\"}       the same, for long numbers
     curl -d '{\"number\": \"170141183460469231731687303715884105727\"}' http://127.0.0.1:3636/isprime
GET  /ls?directory=D                streams `ls -lash` of D inside the configured root
     curl 'http://127.0.0.1:3636/ls?directory=/'
GET  /healthz                       200 while the process lives
     curl http://127.0.0.1:3636/healthz
GET  /readyz                        200 when a worker is up and the server is not shutting down
     curl http://127.0.0.1:3636/readyz
GET  /metrics                       Prometheus metrics
     curl http://127.0.0.1:3636/metrics
GET  /status                        config in force and one row per worker, as JSON
     curl http://127.0.0.1:3636/status
";

pub async fn index() -> &'static str {
    INDEX
}

pub async fn testrequest() -> &'static str {
    "I am unblocked now"
}

pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

pub async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, AppError> {
    if state.is_shutting_down() {
        return Err(AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down",
        ));
    }
    match state.pool.live_workers() {
        0 => Err(AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no worker is alive",
        )),
        live => Ok(Json(json!({ "status": "ready", "live_workers": live }))),
    }
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let workers = state.pool.status();
    for s in WorkerState::ALL {
        let count = workers.iter().filter(|w| w.state == s).count();
        metrics::gauge!("forkpool_pool_workers", "state" => s.as_str()).set(count as f64);
    }
    metrics::gauge!("forkpool_queue_depth").set(state.pool.queue_depth() as f64);
    state.metrics.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

pub async fn status(State(state): State<AppState>) -> impl IntoResponse {
    // The config in force: defaults that are resolved at start-up show their resolved value.
    let mut config = serde_json::to_value(&state.config).unwrap_or_default();
    config["workers"] = json!(state.config.worker_count());
    config["ls_root"] = json!(state.ls_root);
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
        "shutting_down": state.is_shutting_down(),
        "queue_depth": state.pool.queue_depth(),
        "config": config,
        "workers": state.pool.status(),
    }))
}
