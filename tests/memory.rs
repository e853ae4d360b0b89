//! Memory (issue 24): what a burst of kept-alive connections made the server allocate goes
//! back to the kernel once the burst is over, and a live worker's resident memory is what its
//! jobs run, not what its start ran. The tests wait for those events (RSS under a bound) and
//! assert no time: how soon and how far, in the release build, is
//! `benches/memory_after_burst.py`'s figure (README, Performance). The server is a process of
//! its own, so the other tests' load cannot keep it from going quiet.

use crate::common;

use std::time::Duration;

use common::load::{Connection, Kind, Load};
use common::{rss_kib, status, wait_until, Http, Server};

/// Jobs the burst sends, over 64 kept-alive connections.
const BURST_JOBS: u64 = 20_000;

/// Anonymous resident memory of `pid` in KiB (RssAnon: the heap, stacks and other private
/// memory, not the binary's code pages, which a burst also pages in and no trim gives back).
fn anon_kib(pid: u32) -> u64 {
    common::status_kib(pid, "RssAnon").expect("RssAnon in /proc/PID/status")
}

#[test]
fn the_server_gives_a_bursts_memory_back_once_it_is_over() {
    let server = Server::start(&["--workers", "2"]);
    let idle = anon_kib(server.pid());
    let load = Load::start_with(
        server.addr,
        &[Kind::IsPrimeGet],
        &[Connection::KeptAlive; 64],
    );
    let sent = wait_until(Duration::from_secs(120), || {
        (server.outcome_count("forkpool_jobs_total", "ok") >= BURST_JOBS).then_some(())
    });
    let tally = load.finish();
    assert!(
        sent.is_some(),
        "the burst did not reach {BURST_JOBS} jobs:\n{tally}"
    );
    assert!(tally.failed.is_empty(), "{tally}");
    let peak = anon_kib(server.pid());
    // Without growth the rest would pass for any server: the burst must be big enough.
    assert!(
        peak >= idle + 2048,
        "the burst grew the heap by less than 2 MiB ({idle} -> {peak} KiB): make it bigger"
    );
    // A third of the growth at least goes back: glibc alone returns none of it, and the rest
    // is pages that live objects pin (about half of it here, two thirds in the release build).
    let bound = peak - (peak - idle) / 3;
    let back = wait_until(Duration::from_secs(30), || {
        let now = anon_kib(server.pid());
        (now <= bound).then_some(now)
    });
    assert!(
        back.is_some(),
        "anonymous RSS {idle} KiB idle, {peak} KiB after the burst, still {} KiB 30 s later (bound {bound} KiB)",
        anon_kib(server.pid())
    );
}

#[test]
fn a_live_worker_holds_a_fraction_of_what_the_server_does_and_still_serves() {
    let server = Server::start(&["--workers", "2"]);
    server.wait_for_workers(2);
    // A worker is the same binary; its start maps as much of it as the server's start did
    // (about 70% of the server's RSS in this debug build, 50% in the release build) unless
    // it lets go of those pages after its hello.
    let bound = rss_kib(server.pid()) / 3;
    let rows = wait_until(Duration::from_secs(30), || {
        let rows = status(&server)["workers"].as_array()?.clone();
        let kib: Vec<u64> = rows
            .iter()
            .filter_map(|w| w["rss_bytes"].as_u64())
            .map(|b| b / 1024)
            .collect();
        (kib.len() == 2 && kib.iter().all(|&k| k <= bound)).then_some(kib)
    });
    assert!(
        rows.is_some(),
        "worker RSS in /status above a third of the server's ({bound} KiB) for 30 s: {}",
        status(&server)["workers"]
    );
    // The code a job runs comes back on demand.
    for number in ["7", "1000000007", "170141183460469231731687303715884105727"] {
        assert_eq!(
            server.get(&format!("/isprime?number={number}")).json()["isPrime"],
            true
        );
    }
}
