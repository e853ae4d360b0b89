//! Memory after a burst (issue 24): what a burst of kept-alive connections made the server
//! allocate goes back to the kernel once the burst is over. The test waits for that event (RSS
//! back under a bound) and asserts no time: how soon and how far it comes back, in the release
//! build, is `benches/memory_after_burst.py`'s figure (README, Performance). A file of its own,
//! so that no other test's load shares the server's quiet spell.

mod common;

use std::time::Duration;

use common::load::{Connection, Kind, Load};
use common::{rss_kib, wait_until, Server};

/// Jobs the burst sends, over 64 kept-alive connections.
const BURST_JOBS: u64 = 20_000;

#[test]
fn the_server_gives_a_bursts_memory_back_once_it_is_over() {
    let server = Server::start(&["--workers", "2"]);
    let idle = rss_kib(server.pid());
    let load = Load::start_with(
        server.addr,
        &[Kind::IsPrimeGet],
        &[Connection::KeptAlive; 64],
    );
    let sent = wait_until(Duration::from_secs(120), || {
        (server.outcome_count("forkpool_jobs_total", "ok") >= BURST_JOBS).then_some(())
    });
    let tally = load.finish();
    assert!(sent.is_some(), "the burst did not reach {BURST_JOBS} jobs:\n{tally}");
    assert!(tally.failed.is_empty(), "{tally}");
    let peak = rss_kib(server.pid());
    // Without growth the rest would pass for any server: the burst must be big enough.
    assert!(
        peak >= idle + 2048,
        "the burst grew RSS by less than 2 MiB ({idle} -> {peak} KiB): make it bigger"
    );
    // Two thirds of the growth at least goes back (most of the rest is code paged in).
    let bound = idle + (peak - idle) / 3;
    let back = wait_until(Duration::from_secs(30), || {
        let now = rss_kib(server.pid());
        (now <= bound).then_some(now)
    });
    assert!(
        back.is_some(),
        "RSS {idle} KiB idle, {peak} KiB after the burst, still {} KiB 30 s later (bound {bound} KiB)",
        rss_kib(server.pid())
    );
}
