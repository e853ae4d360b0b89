//! Operations endpoints, all served from the async runtime so that they answer while every
//! worker is busy: `/`, `/testrequest`, `/healthz`, `/readyz`, `/metrics`, `/status`,
//! `/openapi.json`; and [`ENDPOINTS`], the table of every route that the router serves.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, MethodRouter};
use axum::{Extension, Json};
use serde_json::json;

use super::{isprime, ls};
use crate::telemetry;
use crate::systemd;
use crate::error::{AppError, ErrorCode, HttpError};
use crate::pool::{PoolHealth, WorkerState};
use crate::procfs::ProcessStats;
use crate::routes::state::AppState;
use crate::settings::Settings;

/// One endpoint: the routers serve it from this table and `GET /` lists it from the same
/// table, so neither can name a path the other lacks. `docs/openapi.json` is held to it by
/// tests/openapi.rs.
pub struct Endpoint {
    /// The route path, exactly as the router matches it.
    pub path: &'static str,
    /// The handlers by method; the router serves exactly these (and HEAD with every GET).
    pub methods: fn() -> MethodRouter<AppState>,
    /// Which listener serves it.
    pub audience: Audience,
    /// The index entries: one per method or way of calling it.
    pub usage: &'static [Usage],
    /// The query parameters its handlers read: the handlers' own constants, which
    /// tests/openapi.rs holds to the document's parameters (and the source to these constants).
    pub params: &'static [&'static str],
    /// The error codes its handlers can answer with beyond those of every route, from the
    /// handlers' modules; tests/openapi.rs requires each among the documented responses.
    pub errors: &'static [ErrorCode],
}

/// Which listener serves an endpoint, given whether `--admin-listen` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// The public listener only: the service itself.
    Public,
    /// Both listeners: probes and the API description.
    Both,
    /// The admin listener when there is one, else the public one: what operators read.
    Operators,
}

impl Audience {
    /// Whether the public listener serves it; `split` says whether `--admin-listen` is set.
    pub fn on_public(self, split: bool) -> bool {
        self != Audience::Operators || !split
    }

    /// Whether the admin listener (when there is one) serves it.
    pub fn on_admin(self) -> bool {
        self != Audience::Public
    }
}

/// One entry of the index.
pub struct Usage {
    /// Method and path with its parameters, e.g. `GET  /isprime?number=N`.
    pub request: &'static str,
    /// What it answers, in a few words.
    pub what: &'static str,
    /// A command that calls it; `{base}` stands for the listener's URL (`http://ADDR`).
    pub example: &'static str,
}

/// Every endpoint the router serves, in the order `GET /` lists them.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        path: "/",
        methods: || get(index),
        audience: Audience::Both,
        usage: &[Usage {
            request: "GET  /",
            what: "this index",
            example: "curl {base}/",
        }],
        params: &[],
        errors: &[],
    },
    Endpoint {
        path: "/testrequest",
        methods: || get(testrequest),
        audience: Audience::Public,
        usage: &[Usage {
            request: "GET  /testrequest",
            what: "answers at once, however busy the workers are",
            example: "curl {base}/testrequest",
        }],
        params: &[],
        errors: &[],
    },
    Endpoint {
        path: "/isprime",
        methods: || get(isprime::get).post(isprime::post),
        audience: Audience::Public,
        usage: &[
            Usage {
                request: "GET  /isprime?number=N",
                what: "primality of N, computed in a worker",
                example: "curl '{base}/isprime?number=1000000007'",
            },
            Usage {
                request: "POST /isprime {\"number\": \"N\"}",
                what: "the same, for long numbers",
                example: "curl -d '{\"number\": \"170141183460469231731687303715884105727\"}' \
                          {base}/isprime",
            },
        ],
        params: &[isprime::NUMBER, isprime::TIMEOUT],
        errors: isprime::ERRORS,
    },
    Endpoint {
        path: "/ls",
        methods: || get(ls::list),
        audience: Audience::Public,
        usage: &[Usage {
            request: "GET  /ls?directory=D",
            what: "streams `ls -lash` of D inside the configured root",
            example: "curl '{base}/ls?directory=/'",
        }],
        params: &[ls::DIRECTORY],
        errors: ls::ERRORS,
    },
    Endpoint {
        path: "/healthz",
        methods: || get(healthz),
        audience: Audience::Both,
        usage: &[Usage {
            request: "GET  /healthz",
            what: "200 while the process lives",
            example: "curl {base}/healthz",
        }],
        params: &[],
        errors: &[],
    },
    Endpoint {
        path: "/readyz",
        methods: || get(readyz),
        audience: Audience::Both,
        usage: &[Usage {
            request: "GET  /readyz",
            what: "200 when a worker is up and the server is not shutting down, else 503 and why",
            example: "curl {base}/readyz",
        }],
        params: &[],
        errors: NotReady::ERRORS,
    },
    Endpoint {
        path: "/metrics",
        methods: || get(metrics),
        audience: Audience::Operators,
        usage: &[Usage {
            request: "GET  /metrics",
            what: "Prometheus metrics (on the admin address if there is one)",
            example: "curl {base}/metrics",
        }],
        params: &[],
        errors: &[],
    },
    Endpoint {
        path: "/status",
        methods: || get(status),
        audience: Audience::Operators,
        usage: &[Usage {
            request: "GET  /status",
            what: "the settings in force and the workers, as JSON (on the admin address if there is one)",
            example: "curl {base}/status",
        }],
        params: &[],
        errors: &[],
    },
    Endpoint {
        path: "/openapi.json",
        methods: || get(openapi),
        audience: Audience::Both,
        usage: &[Usage {
            request: "GET  /openapi.json",
            what: "OpenAPI 3.1 description of every endpoint",
            example: "curl {base}/openapi.json",
        }],
        params: &[],
        errors: &[],
    },
];

/// The OpenAPI 3.1 document, kept by hand next to the code (see docs/openapi.json's
/// description for why) and checked against the router and real responses by tests.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// Which listener a request came in on; each router carries its own as an extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// `--listen` (or the passed public socket).
    Public,
    /// `--admin-listen` (or the passed `admin` socket).
    Admin,
}

/// `GET /`: a plain-text index of what the listener the request came in on serves, with
/// examples on the address it is bound to; on the public listener with an admin one beside it,
/// also where the operators' endpoints are.
pub async fn index(
    State(state): State<AppState>,
    Extension(port): Extension<Port>,
) -> String {
    index_text(&state.settings, port)
}

/// The index of `port` under `settings` (whose addresses are the ones bound). Outside the
/// handler because [`ENDPOINTS`] names the handler: an `async fn` that read it would need its
/// own future's type to type-check.
fn index_text(settings: &Settings, port: Port) -> String {
    let split = settings.admin_listen.is_some();
    let base = |address: SocketAddr| format!("http://{}", reachable(address));
    let (here, served): (_, &dyn Fn(Audience) -> bool) = match (port, settings.admin_listen) {
        (Port::Admin, Some(admin)) => (base(admin), &Audience::on_admin),
        _ => (base(settings.listen), &|a: Audience| a.on_public(split)),
    };
    let mut text = "forkpool: CPU work in a pool of worker processes, behind HTTP.\n\n".to_owned();
    list(&mut text, entries(served), &here);
    if let (Port::Public, Some(admin)) = (port, settings.admin_listen) {
        let admin = base(admin);
        text.push_str(&format!("\nOn the admin address, {admin}:\n"));
        let only_there = |a: Audience| a == Audience::Operators;
        list(&mut text, entries(&only_there), &admin);
    }
    text
}

/// Appends `usages` to `text`, their examples on `base`.
fn list<'a>(text: &mut String, usages: impl Iterator<Item = &'a Usage>, base: &str) {
    for usage in usages {
        let example = usage.example.replace("{base}", base);
        text.push_str(&format!("{:<36}{}\n     {example}\n", usage.request, usage.what));
    }
}

/// The index entries of the endpoints for which `on` holds.
fn entries(on: &dyn Fn(Audience) -> bool) -> impl Iterator<Item = &'static Usage> + '_ {
    ENDPOINTS
        .iter()
        .filter(move |e| on(e.audience))
        .flat_map(|e| e.usage)
}

/// An address a client on this machine can connect to: an unspecified IP (`0.0.0.0`, `::`)
/// listens on every interface, loopback included.
fn reachable(address: SocketAddr) -> SocketAddr {
    let ip: IpAddr = match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => Ipv4Addr::LOCALHOST.into(),
        IpAddr::V6(ip) if ip.is_unspecified() => Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    SocketAddr::new(ip, address.port())
}

/// The `number` patterns' digit bound in [`OPENAPI`]: the default `--max-digits`.
pub const OPENAPI_MAX_DIGITS: &str = "[0-9]{1,10000}";

/// The document a server with `--max-digits max_digits` serves: [`OPENAPI`] with that bound in
/// the `number` patterns, so that they say exactly what this server accepts.
pub fn openapi_document(max_digits: u32) -> std::borrow::Cow<'static, str> {
    let bound = format!("[0-9]{{1,{max_digits}}}");
    match bound == OPENAPI_MAX_DIGITS {
        true => OPENAPI.into(),
        false => OPENAPI.replace(OPENAPI_MAX_DIGITS, &bound).into(),
    }
}

/// `GET /openapi.json`: the document as kept, with this server's `--max-digits` in the
/// `number` patterns ([`openapi_document`]).
pub async fn openapi(State(state): State<AppState>) -> impl IntoResponse {
    let document = openapi_document(state.settings.max_digits);
    ([(header::CONTENT_TYPE, "application/json")], document.into_owned())
}

/// `GET /testrequest`: a constant answer that needs no worker, so it comes at once however
/// busy the workers are: the proof that the event loop stays free.
pub async fn testrequest() -> &'static str {
    "I am unblocked now"
}

/// `GET /healthz`: 200 `{"status": "ok"}` while the process can answer at all (liveness);
/// it does not look at the workers, `/readyz` does.
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Why the server is not ready (`/readyz` 503).
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    /// A shutdown signal came: the server drains and will close (503 `shutting_down`).
    #[error("shutting down")]
    ShuttingDown,
    /// No worker is live yet (the first is starting, or all are being replaced) (503
    /// `no_worker_alive`).
    #[error("no worker is alive")]
    NoWorker,
    /// No worker is alive and the crash-loop breaker is open: starts keep failing (503
    /// `workers_unavailable`).
    #[error(
        "no worker is alive and none can be started: {failed_starts} starts failed in a row, \
         the last: {last_error}"
    )]
    Unavailable {
        /// Failed starts in a row.
        failed_starts: u32,
        /// The error of the latest one.
        last_error: String,
    },
}

impl NotReady {
    /// Every code of a not-ready `/readyz`.
    pub const ERRORS: &[ErrorCode] = &[
        ErrorCode::ShuttingDown,
        ErrorCode::NoWorkerAlive,
        ErrorCode::WorkersUnavailable,
    ];
}

impl HttpError for NotReady {
    fn code(&self) -> ErrorCode {
        match self {
            NotReady::ShuttingDown => ErrorCode::ShuttingDown,
            NotReady::NoWorker => ErrorCode::NoWorkerAlive,
            NotReady::Unavailable { .. } => ErrorCode::WorkersUnavailable,
        }
    }
}

/// 200 while a worker is live (or none is wanted: an elastic pool with `--workers-min 0` at
/// rest) and the server is not shutting down; 503 otherwise, saying why:
/// shutting down, no worker yet, or none can be started (with the last start error).
pub async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, AppError> {
    if state.is_shutting_down() {
        return Err(NotReady::ShuttingDown.into());
    }
    // One reading of the pool, so that the count agrees with the health.
    let pool = state.pool.overview();
    match pool.health {
        // Standby: no worker is wanted (an elastic pool at `--workers-min 0`), and the next
        // job starts one; a pool whose starts fail is `Unavailable` instead.
        PoolHealth::Live | PoolHealth::Standby => {}
        PoolHealth::Unavailable {
            failed_starts,
            last_error,
        } => {
            return Err(NotReady::Unavailable {
                failed_starts,
                last_error,
            }
            .into())
        }
        PoolHealth::Starting | PoolHealth::Closed => return Err(NotReady::NoWorker.into()),
    }
    Ok(Json(
        json!({ "status": "ready", "live_workers": pool.live_workers }),
    ))
}

/// `GET /metrics`: every metric in the Prometheus text format (the recorder's families, then
/// the process figures read from `/proc/self` at this scrape).
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let workers = state.pool.status();
    for s in WorkerState::ALL {
        let count = workers.iter().filter(|w| w.state == s).count();
        metrics::gauge!(telemetry::POOL_WORKERS, "state" => s.as_str()).set(count as f64);
    }
    let size = state.pool.overview().workers;
    for (name, value) in [
        (telemetry::POOL_WORKERS_TARGET, size.target),
        (telemetry::POOL_WORKERS_LIVE, size.live),
        (telemetry::POOL_WORKERS_BUSY, size.busy),
        (telemetry::POOL_WORKERS_MIN, size.min),
        (telemetry::POOL_WORKERS_MAX, size.max),
    ] {
        metrics::gauge!(name).set(value as f64);
    }
    metrics::gauge!(telemetry::QUEUE_DEPTH).set(state.pool.queue_depth() as f64);
    telemetry::fold_histograms(&state.metrics);
    let mut text = state.metrics.render();
    match ProcessStats::read() {
        Ok(stats) => append_process_metrics(&mut text, &stats),
        // A scrape without them still carries every forkpool_* family.
        Err(e) => tracing::warn!(error = %e, "process_* metrics left out of this scrape"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// The standard `process_*` families, with the names, types and units that the Prometheus
/// client libraries give them, for the server process (not its workers or `ls`). Rendered
/// here rather than recorded: they are a reading taken at the scrape, and the recorder's
/// counters hold whole numbers only, which CPU seconds are not.
fn append_process_metrics(text: &mut String, stats: &ProcessStats) {
    let families = [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds",
            Some(stats.cpu_seconds),
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes",
            Some(stats.resident_memory_bytes as f64),
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes",
            Some(stats.virtual_memory_bytes as f64),
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds",
            Some(stats.start_time_seconds),
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors",
            Some(stats.open_fds as f64),
        ),
        // Left out when unlimited: there is no number to give.
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors",
            stats.max_fds.map(|n| n as f64),
        ),
    ];
    for (name, kind, help, value) in families {
        if let Some(value) = value {
            text.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
            ));
        }
    }
}

/// `GET /status`: the server as JSON: pid, version, phase, the settings in force (`config`),
/// the pool's health and one row per worker slot.
pub async fn status(State(state): State<AppState>) -> impl IntoResponse {
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "upgraded_from": systemd::upgraded_from(),
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
        "shutting_down": state.is_shutting_down(),
        "phase": state.phase(),
        "queue_depth": state.pool.queue_depth(),
        "config": &state.settings,
        "pool": state.pool.overview(),
        "workers": state.pool.status(),
    }))
}
