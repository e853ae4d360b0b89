//! A server built in the test process: the state `in_process_state` builds (a real pool whose
//! workers are a real program, /ls on the settings' root, the process-wide recorder), its
//! public router, and a runtime to call it on with `tower::ServiceExt::oneshot`. It answers
//! with the same [`Response`] as a server process, so a test reads the same either way.
//!
//! What it cannot show: anything the front door adds in `server::run` (connection limits, read
//! timeouts, the HTTP/1 parser), signals, and what crosses a process boundary; tests of those
//! start the binary. Dropping an `App` shuts its pool down (5 s grace); a panic while building
//! one (bad flags, a pool that cannot start) fails the test that asked for it.

use std::time::Duration;

use forkpool::routes::state::AppState;

use super::{in_process_state, Http, Response, BIN};

/// A server in the test process: its runtime, its state, its public router.
pub struct App {
    /// Runs the pool's tasks and the handlers; a request blocks on it.
    pub runtime: tokio::runtime::Runtime,
    /// What the handlers see: settings, pool, /ls runner, metrics.
    pub state: AppState,
    /// `routes::routers(state).public`: every route when there is no `--admin-listen`.
    router: axum::Router,
}

impl App {
    /// The state the binary resolves from `flags`, workers the forkpool binary, once one
    /// worker is live (so that a first job is not refused as "no worker").
    pub fn start(flags: &[&str]) -> App {
        let app = App::with_worker(flags, BIN);
        app.runtime.block_on(app.state.pool.wait_live());
        app
    }

    /// As [`App::start`], with `worker` as the worker program, without waiting for a worker
    /// (one that never starts is what some tests are about).
    pub fn with_worker(flags: &[&str], worker: &str) -> App {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let state = runtime.block_on(async { in_process_state(flags, worker) });
        let router = forkpool::routes::routers(state.clone()).public;
        App {
            runtime,
            state,
            router,
        }
    }
}

impl Http for App {
    /// Through the router, its body read in full.
    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let mut request = axum::http::Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(axum::body::Body::from(body.to_vec())).unwrap();
        self.runtime.block_on(async {
            let response = self.router.clone().oneshot(request).await.unwrap();
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
                .collect();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            Response {
                status,
                headers,
                body: body.to_vec(),
                complete: true,
            }
        })
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.runtime
            .block_on(self.state.pool.shutdown(Duration::from_secs(5)));
    }
}
