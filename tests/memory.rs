//! Memory (issue 24): what a burst of kept-alive connections made the server allocate goes
//! back to the kernel once the burst is over, and a live worker's resident memory is what its
//! jobs run, not what its start ran, nor, once it has been idle a while, what a past burst ran. The tests wait for those events (RSS under a bound) and
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

/// File-backed resident memory of `pid` in KiB (RssFile: the pages of the binary it has
/// mapped, its code and constants).
fn file_kib(pid: u32) -> u64 {
    common::status_kib(pid, "RssFile").expect("RssFile in /proc/PID/status")
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

#[test]
fn a_worker_idle_after_a_burst_lets_go_of_the_code_its_jobs_mapped() {
    let server = Server::start(&["--workers", "2", "--worker-release-after", "1s"]);
    let workers = server.wait_for_workers(2);
    // Each worker lets go of its start's pages just after its hello: wait for that first.
    let half_the_server = file_kib(server.pid()) / 2;
    let idle = wait_until(Duration::from_secs(30), || {
        let idle: Vec<u64> = workers.iter().map(|&pid| file_kib(pid)).collect();
        idle.iter()
            .all(|&kib| kib <= half_the_server)
            .then_some(idle)
    })
    .expect("the workers let go of their start-up pages");
    let load = Load::start_with(
        server.addr,
        &[Kind::IsPrimeGet, Kind::IsPrimePost],
        &[Connection::KeptAlive; 8],
    );
    load.wait_answered(2_000);
    // Read while the burst runs: the workers are busy, so nothing has been released yet.
    let busy: Vec<u64> = workers.iter().map(|&pid| file_kib(pid)).collect();
    let tally = load.finish();
    assert!(tally.failed.is_empty(), "{tally}");
    // Without growth the rest would pass for any server: the jobs must map code of their own.
    for (before, during) in idle.iter().zip(&busy) {
        assert!(
            *during >= before + 256,
            "a worker's jobs mapped less than 256 KiB ({before} -> {during} KiB): {workers:?}"
        );
    }
    // Two thirds of what the jobs mapped at least goes (without the release line, none does:
    // a worker keeps every page it ran until it exits).
    let bounds: Vec<u64> = idle
        .iter()
        .zip(&busy)
        .map(|(i, b)| i + (b - i) / 3)
        .collect();
    let back = wait_until(Duration::from_secs(30), || {
        let now: Vec<u64> = workers.iter().map(|&pid| file_kib(pid)).collect();
        now.iter().zip(&bounds).all(|(n, b)| n <= b).then_some(now)
    });
    let now: Vec<u64> = workers.iter().map(|&pid| file_kib(pid)).collect();
    assert!(
        back.is_some(),
        "workers' RssFile {idle:?} KiB idle, {busy:?} during the burst, still {now:?} 30 s \
         later (bounds {bounds:?})"
    );
    // What a job runs comes back on demand, in the same workers.
    assert_eq!(
        server.get("/isprime?number=1000000007").json()["isPrime"],
        true
    );
    assert_eq!(server.worker_pids(), workers, "the workers were replaced");
}
