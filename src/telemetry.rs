//! The server's own metric families: their names, in one place, each described once, and the
//! process-wide Prometheus recorder that renders `/metrics`. (The pool names and describes its
//! own `forkpool_*` families: see `pool::metrics`.)
//!
//! Every family recorded anywhere in the server is named by a constant here and described in
//! `describe`: a family without `# HELP` fails `promtool check metrics` (tests/ops.rs). The
//! `process_*` families are not recorded but rendered at scrape time (`routes::ops`).
//!
//! Histogram samples are kept raw until an upkeep folds them into their buckets
//! ([`fold_histograms`], the one way the server does it). The exporter frees the folded
//! samples' blocks through crossbeam-epoch's deferred reclamation: they stay allocated until
//! the global epoch has moved on twice, which only a later pin on some thread does. After a
//! burst nothing pins any more (an empty histogram's upkeep does not), so without the extra
//! pins in [`fold_histograms`] the last upkeep's blocks (about 1.4 MB after a 5 s burst of
//! `/isprime`, issue 24) stayed allocated until the next burst, and no `malloc_trim` could
//! return their pages.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Always 1; the label `version` is the running build's version.
pub const BUILD_INFO: &str = "forkpool_build_info";
/// HTTP requests by `route` and `status`.
pub const HTTP_REQUESTS: &str = "forkpool_http_requests_total";
/// HTTP request duration by `route`.
pub const HTTP_REQUEST_DURATION: &str = "forkpool_http_request_duration_seconds";
/// Worker slots by `state`, set at each scrape.
pub const POOL_WORKERS: &str = "forkpool_pool_workers";
/// Workers the pool wants now (live, starting or backing off), set at each scrape: the
/// elastic pool's target, between `POOL_WORKERS_MIN` and `POOL_WORKERS_MAX`.
pub const POOL_WORKERS_TARGET: &str = "forkpool_pool_workers_target";
/// Workers that said hello and serve, set at each scrape.
pub const POOL_WORKERS_LIVE: &str = "forkpool_pool_workers_live";
/// Workers running a job, set at each scrape.
pub const POOL_WORKERS_BUSY: &str = "forkpool_pool_workers_busy";
/// `--workers-min`, set at each scrape.
pub const POOL_WORKERS_MIN: &str = "forkpool_pool_workers_min";
/// The effective maximum (`--workers-max` capped by the CPUs this process may use), set at
/// each scrape.
pub const POOL_WORKERS_MAX: &str = "forkpool_pool_workers_max";
/// Jobs waiting for a worker, set at each scrape.
pub const QUEUE_DEPTH: &str = "forkpool_queue_depth";
/// `ls` processes running for /ls.
pub const LS_RUNNING: &str = "forkpool_ls_running";
/// /ls requests by `outcome`.
pub const LS_TOTAL: &str = "forkpool_ls_total";

/// The buckets of every histogram, in seconds: from half a millisecond (a light job) to the
/// default job deadline.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

/// The process-wide Prometheus recorder, installed (and every family described) on first
/// use. Call it before anything registers a metric handle (the pool does at start): handles
/// taken before the recorder exists go nowhere.
pub fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&BUCKETS)
                .expect("bucket list is not empty")
                .install_recorder()
                .inspect(|_| {
                    describe();
                    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
                })
                .expect("forkpool installs the only metrics recorder")
        })
        .clone()
}

/// Folds every histogram's raw samples into its buckets (the exporter's upkeep), then frees
/// the folded samples' memory at once instead of at some later pin (see the module doc).
///
/// Each pin-and-flush hands this thread's deferred frees to the global queue, tries to advance
/// the global epoch and runs up to eight of the queued batches (crossbeam-epoch's
/// `COLLECT_STEPS`) whose epoch is two behind. `RELEASE_PINS` (32) rounds run a 5 s burst's
/// batches (32 blocks each, one or a few per histogram and upkeep) with room to spare.
/// Failure mode: a thread that stays pinned (recording a sample at that moment) holds the
/// epoch back; the batches then go at a later pin, as without this.
pub fn fold_histograms(handle: &PrometheusHandle) {
    handle.run_upkeep();
    for _ in 0..RELEASE_PINS {
        crossbeam_epoch::pin().flush();
    }
}

/// Pin-and-flush rounds after an upkeep: two advance the epoch past the upkeep's batches, the
/// rest run the global queue eight batches at a time. Each round costs well under a
/// microsecond when there is nothing to run.
const RELEASE_PINS: usize = 32;

/// `# HELP` of every family named above.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the label `version` is the running build's version"
    );
    describe_counter!(HTTP_REQUESTS, "HTTP requests by route and status");
    describe_histogram!(HTTP_REQUEST_DURATION, "HTTP request duration by route");
    describe_gauge!(POOL_WORKERS, "Worker slots by state");
    describe_gauge!(
        POOL_WORKERS_TARGET,
        "Workers the pool wants now: live, starting or backing off"
    );
    describe_gauge!(POOL_WORKERS_LIVE, "Workers that said hello and serve");
    describe_gauge!(POOL_WORKERS_BUSY, "Workers running a job");
    describe_gauge!(POOL_WORKERS_MIN, "Workers kept even when idle (--workers-min)");
    describe_gauge!(
        POOL_WORKERS_MAX,
        "Most workers the pool runs: --workers-max, capped by the CPUs it may use"
    );
    describe_gauge!(QUEUE_DEPTH, "Jobs waiting for a worker");
    describe_gauge!(LS_RUNNING, "`ls` processes running for /ls");
    describe_counter!(LS_TOTAL, "/ls requests by outcome");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes the allocator has handed out and not had back, all arenas.
    fn allocated() -> usize {
        // SAFETY: mallinfo2 only reads the allocator's counters (taking each arena's lock).
        unsafe { libc::mallinfo2() }.uordblks
    }

    #[test]
    fn folding_frees_the_samples_at_once() {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            .unwrap()
            .build_recorder();
        let handle = recorder.handle();
        let histogram = metrics::with_local_recorder(&recorder, || metrics::histogram!("t"));
        // A million samples: about 8 MB of sample blocks, far above what the other tests of
        // this process allocate meanwhile. Without the pins after the upkeep none of it is
        // freed (measured: 0 bytes).
        for i in 0..1_000_000 {
            histogram.record(f64::from(i % 100) / 1000.0);
        }
        let before = allocated();
        fold_histograms(&handle);
        let freed = before.saturating_sub(allocated());
        assert!(
            freed >= 6 << 20,
            "folding freed {freed} bytes of about 8 MB of samples"
        );
        assert!(handle.render().contains("t_count 1000000"));
    }
}
