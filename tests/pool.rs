//! The worker pool through the real binary: cancellation, deadlines, crashes, a full queue,
//! recycling, broken workers, that no process outlives the server, and the worker side alone.
//! Then the pool as a library in this process: its drop guard, and a driver that panics.

use crate::common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{
    alive, busy_jobs, mersenne, signal, slow_prime, status, temp_executable, wait_until, Http,
    Server,
};
use forkpool::error::AppError;
use forkpool::jobs::IsPrimeJob;
use forkpool::pool::{
    Job, PoolConfig, PoolError, PoolHealth, RollOutcome, WorkerPool, PROTOCOL_VERSION,
};
use serde_json::Value;

/// Starts a slow job on its own connection and waits until a worker is busy with it.
/// Returns the connection (drop it to hang up) and the busy worker's pid.
fn start_slow_job(server: &Server) -> (std::net::TcpStream, u32) {
    // Recognised by its job id, newer than any job shown now; not by a pid, because a worker
    // that has just answered may still show busy with its previous job for a moment.
    let newest = busy_jobs(server).into_iter().map(|(job, _)| job).max();
    let stream = server.send_job(&slow_prime());
    let pid = wait_until(Duration::from_secs(10), || {
        busy_jobs(server)
            .into_iter()
            .find(|&(job, _)| Some(job) > newest)
            .map(|(_, pid)| pid)
    })
    .expect("a worker picks up the slow job");
    (stream, pid)
}

fn assert_serves(server: &Server) {
    let response = server.get("/isprime?number=7");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["isPrime"], true);
}

fn read_response(mut stream: std::net::TcpStream) -> common::Response {
    use std::io::Read;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    common::Response::parse(&raw)
}

#[test]
fn client_hang_up_kills_the_busy_worker_and_a_fresh_one_serves() {
    let server = Server::start(&["--workers", "1"]);
    server.wait_for_workers(1);
    assert_serves(&server);
    let (stream, pid) = start_slow_job(&server);
    drop(stream);
    let gone = wait_until(Duration::from_secs(20), || (!alive(pid)).then_some(()));
    assert!(
        gone.is_some(),
        "worker {pid} still runs after the client left"
    );
    let fresh = server.wait_for_workers(1);
    assert_ne!(fresh, [pid]);
    // The fresh worker's row is its own: the job its predecessor served is not counted.
    let row = status(&server)["workers"][0].clone();
    assert_eq!(
        (row["pid"].as_u64(), row["jobs_served"].as_u64()),
        (Some(fresh[0] as u64), Some(0)),
        "{row}"
    );
    assert_serves(&server);
    server.assert_no_zombies();
}

#[test]
fn deadline_gives_504_and_the_pool_recovers() {
    let server = Server::start(&["--workers", "1", "--job-timeout", "300ms"]);
    let before = server.wait_for_workers(1);
    let body = format!("{{\"number\": \"{}\"}}", slow_prime());
    let response = server.post_json("/isprime", &body);
    let message = response.assert_error(504);
    assert!(message.contains("deadline"), "{message}");
    let replaced = wait_until(Duration::from_secs(20), || {
        let now = server.worker_pids();
        (now.len() == 1 && now != before).then_some(())
    });
    assert!(
        replaced.is_some(),
        "the worker running the expired job is replaced"
    );
    assert!(!alive(before[0]));
    assert_serves(&server);
    server.assert_no_zombies();
}

#[test]
fn worker_killed_mid_job_gives_502_naming_the_signal() {
    let server = Server::start(&["--workers", "2"]);
    server.wait_for_workers(2);
    let (stream, pid) = start_slow_job(&server);
    signal(pid, "KILL");
    let response = read_response(stream);
    let message = response.assert_error(502);
    assert!(message.contains("signal 9"), "{message}");
    assert!(message.contains(&pid.to_string()), "{message}");
    let workers = server.wait_for_workers(2);
    assert!(!workers.contains(&pid));
    assert_serves(&server);
    server.assert_no_zombies();
}

#[test]
fn a_job_over_worker_memory_gives_502_naming_out_of_memory() {
    // 4 MiB is far below what any worker has mapped at start, so every new mapping fails: a
    // number of 100,000 digits (about 100 KiB of job line, more than the heap a worker starts
    // with) cannot be read, let alone tested. It is even, so a worker that did read it would
    // answer at once, and the test would fail on a 200 rather than hang.
    let server = Server::start(&[
        "--workers",
        "2",
        "--worker-memory",
        "4MiB",
        "--max-digits",
        "100000",
    ]);
    let before = server.wait_for_workers(2);
    let number = format!("1{}", "0".repeat(99_999));
    let response = server.post_json("/isprime", &format!("{{\"number\": \"{number}\"}}"));
    let message = response.assert_error(502);
    assert!(message.contains("ran out of memory"), "{message}");
    let dead: Vec<_> = before.iter().filter(|&&p| !alive(p)).collect();
    assert_eq!(dead.len(), 1, "exactly the worker with the job died");
    assert!(message.contains(&dead[0].to_string()), "{message}");
    let after = server.wait_for_workers(2);
    assert!(!after.contains(dead[0]));
    let exits = server.get("/metrics").text();
    assert!(
        exits.contains("forkpool_worker_exits_total{reason=\"out_of_memory\"} 1"),
        "{exits}"
    );
    assert_serves(&server);
    server.assert_no_zombies();
}

#[test]
fn full_queue_gives_503_with_retry_after_and_hang_up_leaves_the_queue() {
    let server = Server::start(&["--workers", "1", "--queue", "1"]);
    server.wait_for_workers(1);
    let (running, _) = start_slow_job(&server);
    let queued = server.send_job(&slow_prime());
    let depth = wait_until(Duration::from_secs(20), || {
        (status(&server)["queue_depth"] == 1).then_some(())
    });
    assert!(depth.is_some(), "the second job waits in the queue");
    let response = server.get("/isprime?number=7");
    let message = response.assert_error(503);
    assert!(message.contains("queue"), "{message}");
    assert_eq!(response.header("retry-after"), Some("1"));

    drop(queued);
    let emptied = wait_until(Duration::from_secs(20), || {
        (status(&server)["queue_depth"] == 0).then_some(())
    });
    assert!(
        emptied.is_some(),
        "a job whose client left is dropped from the queue"
    );
    drop(running);
    server.wait_for_workers(1);
    assert_serves(&server);
    server.assert_no_zombies();
}

/// Waits until the queue holds `n` jobs.
fn wait_queued(server: &Server, n: u64) {
    let queued = wait_until(Duration::from_secs(10), || {
        (status(server)["queue_depth"] == n).then_some(())
    });
    assert!(
        queued.is_some(),
        "{n} jobs never queued: {}",
        status(server)
    );
}

/// Waits until `n` workers are busy.
fn wait_busy(server: &Server, n: usize) {
    let busy = wait_until(Duration::from_secs(10), || {
        (busy_jobs(server).len() == n).then_some(())
    });
    assert!(
        busy.is_some(),
        "{n} workers never got busy: {}",
        status(server)
    );
}

/// Whether the server has not answered on `stream` yet.
fn unanswered(stream: &std::net::TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let waiting =
        matches!(stream.peek(&mut [0]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    stream.set_nonblocking(false).unwrap();
    waiting
}

#[test]
fn short_jobs_queued_behind_a_long_one_never_wait_for_it() {
    // Both workers busy, then a long job and twenty short ones queue up behind it. The first
    // free worker must take the long job alone: short jobs sent along with it would wait the
    // whole long test in its worker while the other worker sat free. The jobs for 3 (busy)
    // and the long one run until released; the others are answered at once. The long job's
    // number is big, so that the pool knows it for a long one.
    let long_number = slow_prime();
    let held = common::HeldWorker::holding(&["3", &long_number]);
    let args = ["--workers", "2", "--max-batch", "32"];
    let server = Server::start(&[&args[..], &["--worker-program", held.program()]].concat());
    server.wait_for_workers(2);
    let busy: Vec<_> = (0..2).map(|_| server.send_job("3")).collect();
    wait_busy(&server, 2);
    let long = server.send_job(&long_number);
    wait_queued(&server, 1);
    let shorts: Vec<_> = (0..20)
        .map(|i| server.send_job(&(1_000_003 + 2 * i).to_string()))
        .collect();
    wait_queued(&server, 21);
    held.release_number("3");
    for (i, short) in shorts.into_iter().enumerate() {
        let response = read_response(short);
        assert_eq!(response.status, 200, "short job {i}: {}", response.text());
    }
    assert!(
        unanswered(&long),
        "the long job ended before every short job was answered: some waited behind it"
    );
    held.release_number(&long_number);
    assert_eq!(read_response(long).json()["isPrime"], true);
    for stream in busy {
        assert_eq!(read_response(stream).status, 200);
    }
    server.assert_no_zombies();
}

/// A fake isprime worker like the real one: it holds its answers until no more jobs arrive
/// for 0.3 s, then writes them at once; a job for 11 runs until the test opens its gate (the
/// file `SCRIPT.go`, which the job removes), one for 13 crashes it, one for 17 gets a line that
/// is not JSON.
fn batching_fake_worker() -> tempfile::TempPath {
    let hello = hello(env!("CARGO_PKG_VERSION"));
    let script = format!(
        r#"#!/bin/bash
echo "{hello}"
held=""
while true; do
  if read -r -t 0.3 line; then
    id=${{line#*\"id\":}}; id=${{id%%,*}}
    case $line in
      *'"n":"13"'*) exit 3;;
      *'"n":"11"'*) until [ -e "$0.go" ]; do sleep 0.01; done; rm -f "$0.go";;
      *'"n":"17"'*) echo garbage; continue;;
    esac
    held+="{{\"id\":$id,\"ms\":0.1,\"ok\":{{\"is_prime\":true,\"method\":\"deterministic\"}}}}"$'\n'
  elif [ $? -gt 128 ]; then
    printf '%s' "$held"; held=""
  else
    exit 0
  fi
done
"#
    );
    temp_executable("forkpool-batching-", ".sh", &script)
}

#[test]
fn a_worker_dying_with_several_jobs_fails_only_the_job_that_crashes_alone() {
    let fake = batching_fake_worker();
    // Handed over together: the worker holds the answer to 2 when 13 crashes it, so the pool
    // cannot tell which job did.
    let (server, first, batch) = batch_behind_a_busy_fake(&fake, &["2", "13", "3"]);
    assert_eq!(read_response(first).status, 200);
    let answers: Vec<_> = batch.into_iter().map(read_response).collect();
    assert_eq!(answers[0].status, 200, "{}", answers[0].text());
    let message = answers[1].assert_error(502);
    assert!(message.contains("exited with code 3"), "{message}");
    assert_eq!(answers[2].status, 200, "{}", answers[2].text());
    let metrics = server.get("/metrics").text();
    for line in [
        "forkpool_jobs_total{outcome=\"crashed\"} 1",
        "forkpool_jobs_total{outcome=\"ok\"} 3",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in\n{metrics}"
        );
    }
    server.wait_for_workers(1);
    server.assert_no_zombies();
}

/// A server with one batching fake worker, busy with a job for 11 (returned, unread) until
/// the streams of `numbers` are queued behind it in that order; then its gate opens.
fn batch_behind_a_busy_fake(
    fake: &tempfile::TempPath,
    numbers: &[&str],
) -> (Server, std::net::TcpStream, Vec<std::net::TcpStream>) {
    let server = Server::start(&["--workers", "1", "--worker-program", fake.to_str().unwrap()]);
    server.wait_for_workers(1);
    let first = server.send_job("11");
    wait_busy(&server, 1);
    let batch = (1..)
        .zip(numbers)
        .map(|(queued, &n)| {
            let stream = server.send_job(n);
            wait_queued(&server, queued);
            stream
        })
        .collect();
    std::fs::write(format!("{}.go", fake.display()), "").expect("open the fake's gate");
    (server, first, batch)
}

#[test]
fn jobs_sent_with_one_that_breaks_the_protocol_run_again_on_a_fresh_worker() {
    let fake = batching_fake_worker();
    let (server, first, batch) = batch_behind_a_busy_fake(&fake, &["17", "2", "3"]);
    assert_eq!(read_response(first).status, 200);
    let answers: Vec<_> = batch.into_iter().map(read_response).collect();
    let message = answers[0].assert_error(502);
    assert!(message.contains("protocol"), "{message}");
    for answer in &answers[1..] {
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    server.wait_for_workers(1);
    server.assert_no_zombies();
}

#[test]
fn a_client_leaving_a_light_job_in_a_batch_does_not_cost_the_worker() {
    let fake = batching_fake_worker();
    let (server, first, mut batch) = batch_behind_a_busy_fake(&fake, &["2", "3", "5"]);
    let pid = server.worker_pids();
    assert_eq!(read_response(first).status, 200);
    // Handed to the worker with the others, whose answers it holds for 0.3 s: its client
    // leaves meanwhile.
    drop(batch.remove(0));
    for stream in batch {
        assert_eq!(read_response(stream).status, 200);
    }
    assert_eq!(
        server.worker_pids(),
        pid,
        "the worker was replaced for a light job whose client left"
    );
    server.assert_no_zombies();
}

#[test]
fn no_worker_survives_a_sigkilled_server() {
    let mut server = Server::start(&["--workers", "2"]);
    let workers = server.wait_for_workers(2);
    let (_stream, _) = start_slow_job(&server);
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let gone = wait_until(Duration::from_secs(20), || {
        workers.iter().all(|&pid| !alive(pid)).then_some(())
    });
    assert!(gone.is_some(), "workers outlived the server: {workers:?}");
}

#[test]
fn abandoned_requests_never_shrink_the_pool() {
    let server = Server::start(&["--workers", "2"]);
    server.wait_for_workers(2);
    let number = common::mersenne(4423);
    // Open and abandon requests in bursts: some are queued, some running, some done.
    for _ in 0..10 {
        let streams: Vec<_> = (0..30).map(|_| server.send_job(&number)).collect();
        // Not a wait for an event: a burst is abandoned at whatever point it has reached.
        std::thread::sleep(Duration::from_millis(20));
        drop(streams);
    }
    server.wait_for_workers(2);
    let idle = wait_until(Duration::from_secs(10), || {
        let s = status(&server);
        let states: Vec<_> = s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["state"].clone())
            .collect();
        (s["queue_depth"] == 0 && states.iter().all(|st| st == "idle")).then_some(())
    });
    assert!(idle.is_some(), "the pool settles: {}", status(&server));
    assert_eq!(server.worker_pids().len(), 2);
    assert_serves(&server);
    server.assert_no_zombies();
}

#[test]
fn recycled_workers_are_replaced_without_failing_a_request() {
    let server = Server::start(&["--workers", "2", "--max-jobs-per-worker", "5"]);
    let first = server.wait_for_workers(2);
    // Two worker processes may exist before both have said hello: wait for both slots.
    let up = |workers: &Value| {
        let workers = workers.as_array().unwrap().iter();
        workers
            .filter(|w| w["state"] == "idle" || w["state"] == "busy")
            .count()
    };
    wait_until(Duration::from_secs(10), || {
        (up(&status(&server)["workers"]) == 2).then_some(())
    })
    .expect("both slots come up");
    for n in 0..40 {
        let response = server.get(&format!("/isprime?number={}", 1000 + n));
        assert_eq!(response.status, 200, "request {n}: {}", response.text());
        let workers = status(&server)["workers"].clone();
        assert_eq!(up(&workers), 2, "capacity dipped at request {n}: {workers}");
    }
    let now = server.wait_for_workers(2);
    // One request at a time goes to the lowest idle slot, so slot 0's workers serve most of
    // the 40 and slot 1's may never get one. A worker due for recycling serves on until its
    // replacement has said hello (make before break), so it serves more than 5.
    assert!(
        now.iter().any(|pid| !first.contains(pid)),
        "{first:?} -> {now:?}"
    );
    let metrics = server.get("/metrics").text();
    let recycled = metrics
        .lines()
        .find_map(|line| {
            let count = line
                .strip_prefix("forkpool_worker_exits_total{reason=\"recycled\",cause=\"jobs\"} ")?;
            count.parse::<u64>().ok()
        })
        .unwrap_or(0);
    assert!(recycled >= 2, "40 jobs, 5 per worker: {recycled} recycled");
    server.assert_no_zombies();
}

/// Polls /status until slot 0 runs an idle worker other than `old`, which has exited; returns
/// the new worker's pid.
fn wait_replaced(server: &Server, old: u32) -> u32 {
    wait_until(Duration::from_secs(20), || {
        let row = status(server)["workers"][0].clone();
        let pid = row["pid"].as_u64().map(|p| p as u32)?;
        (pid != old && row["state"] == "idle" && !alive(old)).then_some(pid)
    })
    .unwrap_or_else(|| panic!("worker {old} was not replaced: {}", status(server)))
}

#[test]
fn a_job_that_takes_its_worker_past_max_rss_is_answered_and_is_the_workers_last() {
    // Small jobs leave a worker at about 6 MiB resident. A number of 4,000,000 digits (even,
    // so it is answered as soon as it is read) leaves it above 20 MiB: the worker keeps the
    // buffer it read the 4 MB job line into, and the heap it parsed the number on.
    let server = Server::start(&[
        "--workers",
        "1",
        "--max-rss-per-worker",
        "12MiB",
        "--max-digits",
        "4000000",
        "--max-line",
        "8MiB",
    ]);
    let [first] = server.wait_for_workers(1)[..] else {
        unreachable!()
    };
    for n in 0..5 {
        assert_serves(&server);
        assert_eq!(status(&server)["workers"][0]["pid"], first, "job {n}");
    }
    let big = format!("1{}", "0".repeat(3_999_999));
    let response = server.post_json("/isprime", &format!("{{\"number\": \"{big}\"}}"));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["isPrime"], false);
    let second = wait_replaced(&server, first);
    let log = server.wait_for_log("the retirement", |log| log.contains("over the limit"));
    let retired: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("over the limit"))
        .collect();
    assert_eq!(retired.len(), 1, "{log}");
    let rss = field(retired[0], "rss").parse::<u64>().unwrap();
    assert!(rss > 12 << 20, "{}", retired[0]);
    assert_eq!(field(retired[0], "pid"), first.to_string());
    assert_eq!(field(retired[0], "served"), "6", "the big job was its last");
    let exits = server.get("/metrics").text();
    let by_rss = "forkpool_worker_exits_total{reason=\"recycled\",cause=\"rss\"} 1";
    assert!(exits.contains(by_rss), "{exits}");
    assert_serves(&server);
    assert_eq!(status(&server)["workers"][0]["pid"], second);
    server.assert_no_zombies();
}

/// The value of `name=value` in a log line (quotes taken off).
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let start = line
        .find(&format!(" {name}="))
        .unwrap_or_else(|| panic!("no {name} in {line}"));
    let rest = &line[start + name.len() + 2..];
    match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next().unwrap(),
        None => rest.split(' ').next().unwrap(),
    }
}

#[test]
fn a_slow_job_is_logged_once_with_what_its_worker_does_and_runs_on_to_its_answer() {
    let server = Server::start(&["--workers", "1", "--job-slow", "200ms"]);
    let [pid] = server.wait_for_workers(1)[..] else {
        unreachable!()
    };
    assert_serves(&server);
    // A Mersenne prime of 3376 digits: a second or more of work in a test build.
    let body = format!("{{\"number\": \"{}\"}}", mersenne(11213));
    let headers = [
        ("content-type", "application/json"),
        ("x-request-id", "slow-job-1"),
    ];
    let response = server.request("POST", "/isprime", &headers, body.as_bytes());
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["isPrime"], true);
    let log = server.wait_for_log("the slow job", |log| log.contains("slow job"));
    let slow: Vec<&str> = log.lines().filter(|l| l.contains("slow job")).collect();
    assert_eq!(slow.len(), 1, "logged once, and only the slow job: {log}");
    let line = slow[0];
    assert!(line.contains("WARN"), "{line}");
    assert_eq!(field(line, "tag"), "slow-job-1");
    assert_eq!(field(line, "pid"), pid.to_string());
    assert!(field(line, "job").parse::<u64>().is_ok(), "{line}");
    let elapsed = field(line, "elapsed_ms").parse::<f64>().unwrap();
    assert!((200.0..5_000.0).contains(&elapsed), "{line}");
    // Computing: running (or runnable), so no wait channel and no sleeping kernel stack.
    assert!(field(line, "state").starts_with("R "), "{line}");
    for name in ["wchan", "stack", "user_cpu_s", "system_cpu_s"] {
        assert!(!field(line, name).is_empty(), "{name}: {line}");
    }
    let metrics = server.get("/metrics").text();
    assert!(
        metrics.contains("forkpool_slow_jobs_total 1\n"),
        "{metrics}"
    );
    // It ran to its answer on the same worker, which serves on.
    assert_eq!(status(&server)["workers"][0]["pid"], pid);
    assert_serves(&server);
}

/// A fake worker: a shell script that says `hello` as told, then answers every job with `reply`.
struct FakeWorker {
    /// The script; removed when the fake worker is dropped.
    path: tempfile::TempPath,
}

impl FakeWorker {
    fn new(name: &str, hello: &str, reply: &str) -> FakeWorker {
        // Named `forkpool-*`, so that `Server::worker_pids` counts it as a worker.
        let script = format!("#!/bin/sh\necho \"{hello}\"\nwhile read line; do {reply}; done\n");
        let path = temp_executable(&format!("forkpool-{name}-"), ".sh", &script);
        FakeWorker { path }
    }
}

/// A memory cgroup made for one test, with a memory limit; removed on drop (once the
/// processes in it are gone).
struct MemoryCgroup {
    /// Its directory.
    dir: PathBuf,
}

impl MemoryCgroup {
    /// A cgroup limited to `limit` bytes and no swap: a child of cgroup v2's root where that
    /// has the memory controller, else of this process's cgroup in v1's memory hierarchy. `Err`
    /// says why neither can be made here (not root, no writable memory controller).
    fn create(limit: u64) -> Result<MemoryCgroup, String> {
        let (parent, limits) = memory_hierarchy(limit)?;
        let dir = parent.join(format!("forkpool-test-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let cgroup = MemoryCgroup { dir };
        let [(memory, limit), (swap, no_swap)] = limits;
        std::fs::write(cgroup.dir.join(memory), limit)
            .map_err(|e| format!("{memory} in {}: {e}", cgroup.dir.display()))?;
        // Missing where the kernel does no swap accounting: then there is no swap to limit.
        let _ = std::fs::write(cgroup.dir.join(swap), no_swap);
        Ok(cgroup)
    }

    /// Its `cgroup.procs`, which a process writes to join it.
    fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }
}

/// The files that set a cgroup's memory limit and its swap limit, each with its value.
type Limits = [(&'static str, String); 2];

/// Where a memory cgroup can be made: the parent directory, and the [`Limits`] for `limit`
/// bytes and no swap.
fn memory_hierarchy(limit: u64) -> Result<(PathBuf, Limits), String> {
    let v2 = PathBuf::from("/sys/fs/cgroup");
    let delegates = std::fs::read_to_string(v2.join("cgroup.subtree_control"));
    if delegates.is_ok_and(|c| c.split_whitespace().any(|c| c == "memory")) {
        let limits = [
            ("memory.max", limit.to_string()),
            ("memory.swap.max", "0".into()),
        ];
        return Ok((v2, limits));
    }
    // `hierarchy:controllers:path` lines; v1's memory controller may share a line.
    let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
    let v1 = own.lines().find_map(|line| {
        let (_, rest) = line.split_once(':')?;
        let (controllers, path) = rest.split_once(':')?;
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then_some(path)
    });
    let Some(path) = v1 else {
        return Err(
            "cgroup v2's root does not delegate the memory controller, and no cgroup \
                    v1 memory hierarchy is mounted"
                .into(),
        );
    };
    let parent = Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
    let limit = limit.to_string();
    let limits = [
        ("memory.limit_in_bytes", limit.clone()),
        ("memory.memsw.limit_in_bytes", limit),
    ];
    Ok((parent, limits))
}

impl Drop for MemoryCgroup {
    /// Waits for what is left in it (a fake worker exits once its stdin closes) to be gone.
    fn drop(&mut self) {
        let removed = wait_until(Duration::from_secs(10), || {
            std::fs::remove_dir(&self.dir).ok()
        });
        if removed.is_none() {
            eprintln!("left behind: the cgroup {}", self.dir.display());
        }
    }
}

#[test]
#[ignore = "needs root and a memory cgroup it may create (cgroup v2 with the memory controller, or v1); .ci/run runs the ignored tests, and fails this one where it cannot"]
fn a_worker_the_oom_killer_takes_reads_as_such_and_a_kill_9_still_as_signal_9() {
    let cgroup = MemoryCgroup::create(64 << 20)
        .unwrap_or_else(|why| panic!("cannot make a memory cgroup to test OOM kills in: {why}"));
    // A worker that, given a job, reads 1 GiB into a shell variable: far past the cgroup's
    // 64 MiB, so the kernel's OOM killer takes it (the largest process there) mid-job.
    let hog = "x=$(head -c 1073741824 /dev/zero | tr '\\0' a); echo \"$x\" | wc -c";
    let hog = FakeWorker::new("hog", &hello(env!("CARGO_PKG_VERSION")), hog);
    let program = hog.path.to_str().unwrap();
    let procs = cgroup.procs();
    let server = Server::with(&["--workers", "1", "--worker-program", program])
        .in_cgroup(&procs)
        .start();
    server.wait_for_log("the cgroup's count being watched", |log| {
        log.contains("told apart by their cgroup's oom_kill count")
    });
    let [pid] = server.wait_for_workers(1)[..] else {
        unreachable!()
    };
    let message = server.get("/isprime?number=7").assert_error(502);
    assert!(message.contains("killed by the OOM killer"), "{message}");
    assert!(message.contains(&pid.to_string()), "{message}");
    assert!(!message.contains("signal 9"), "{message}");
    let log = server.wait_for_log("the OOM kill", |log| log.contains("died mid-job"));
    assert!(
        log.lines()
            .any(|l| l.contains("died mid-job") && l.contains("killed by the OOM killer")),
        "{log}"
    );
    // A SIGKILL from anyone else still reads as one: the OOM kill was accounted for.
    let [second] = server.wait_for_workers(1)[..] else {
        unreachable!()
    };
    signal(second, "KILL");
    wait_replaced(&server, second);
    let lines = [
        "forkpool_worker_exits_total{reason=\"oom_killed\"} 1",
        "forkpool_worker_exits_total{reason=\"crashed\",signal=\"9\"} 1",
    ];
    let metrics = wait_until(Duration::from_secs(10), || {
        let metrics = server.get("/metrics").text();
        let counted = lines.iter().all(|&line| metrics.lines().any(|l| l == line));
        counted.then_some(metrics)
    });
    assert!(
        metrics.is_some(),
        "not {lines:?} in\n{}",
        server.get("/metrics").text()
    );
}

#[test]
fn recycling_and_a_roll_together_keep_at_most_one_spare_worker() {
    let workers = 2;
    let server = Server::start(&["--workers", "2", "--max-jobs-per-worker", "2"]);
    server.wait_for_workers(workers);
    let done = AtomicBool::new(false);
    let most = std::thread::scope(|s| {
        // Counts live workers (retiring ones included) as often as it can.
        let sampler = s.spawn(|| {
            let mut most = 0;
            while !done.load(Ordering::Relaxed) {
                most = most.max(server.worker_pids().len());
                // The sampling pace, not a wait for an event.
                std::thread::sleep(Duration::from_millis(1));
            }
            most
        });
        // Two clients keep both workers busy, so both slots come due for recycling together,
        // and a roll runs across them.
        let clients: Vec<_> = (0..2)
            .map(|client| {
                let server = &server;
                s.spawn(move || {
                    for n in 0..40 {
                        let response = server.get(&format!("/isprime?number={}", 1000 + n));
                        assert_eq!(response.status, 200, "client {client}, request {n}");
                    }
                })
            })
            .collect();
        // Not a wait for an event: the roll starts at some point of the clients' run.
        std::thread::sleep(Duration::from_millis(50));
        signal(server.pid(), "HUP");
        for client in clients {
            client.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
        sampler.join().unwrap()
    });
    assert!(
        most <= workers + 1,
        "{most} workers alive at once (limit {})",
        workers + 1
    );
    server.wait_for_workers(workers);
    server.assert_no_zombies();
}

#[test]
fn a_worker_that_breaks_the_protocol_is_replaced() {
    let overlong = "head -c 5000 /dev/zero | tr '\\0' x; echo";
    let fake = FakeWorker::new("garbage", &hello(env!("CARGO_PKG_VERSION")), overlong);
    let program = fake.path.to_str().unwrap();
    let server = Server::start(&[
        "--workers",
        "1",
        "--worker-program",
        program,
        "--max-line",
        "4KiB",
        // A line that short holds numbers of up to 3916 digits: fewer than the default cap.
        "--max-digits",
        "1000",
    ]);
    let before = server.wait_for_workers(1);
    let message = server.get("/isprime?number=7").assert_error(502);
    assert!(message.contains("protocol"), "{message}");
    assert!(message.contains("longer than 4096"), "{message}");
    let replaced = wait_until(Duration::from_secs(20), || {
        let now = server.worker_pids();
        (now.len() == 1 && now != before).then_some(())
    });
    assert!(replaced.is_some(), "the broken worker is replaced");
    server.assert_no_zombies();
}

/// The hello of a fake worker: `protocol` as given (none when `None`), the package version as
/// given, its own pid.
fn hello_speaking(protocol: Option<u32>, version: &str) -> String {
    let protocol = protocol.map_or(String::new(), |p| format!(r#"\"protocol\":{p},"#));
    format!(
        r#"{{\"hello\":{{{protocol}\"version\":\"{version}\",\"pid\":$$,\"kind\":\"isprime\"}}}}"#
    )
}

fn hello(version: &str) -> String {
    hello_speaking(Some(PROTOCOL_VERSION), version)
}

/// Lines of the log that report a failed worker start, whatever started it.
fn failed_starts_logged(server: &Server) -> usize {
    server.log().matches("worker failed to start").count()
}

/// The most failed starts that `slots` slots can make within `elapsed` when each waits out the
/// backoff (100 ms doubling, less 20% jitter) after each failure: far fewer than a busy loop.
fn most_failed_starts(slots: usize, elapsed: Duration) -> usize {
    let (mut per_slot, mut waited, mut delay) = (1, Duration::ZERO, Duration::from_millis(80));
    while waited + delay <= elapsed {
        waited += delay;
        delay *= 2;
        per_slot += 1;
    }
    slots * per_slot
}

/// Waits until at least `n` failed starts are logged; returns how long that took from `since`,
/// and asserts it is no quicker than the backoff allows.
fn wait_failed_starts(server: &Server, n: usize, slots: usize, since: Instant) -> Duration {
    let seen = wait_until(Duration::from_secs(20), || {
        (failed_starts_logged(server) >= n).then(|| since.elapsed())
    });
    let elapsed = seen.unwrap_or_else(|| {
        panic!(
            "only {} failed starts logged in 20 s: the failed start is never retried\n{}",
            failed_starts_logged(server),
            server.log()
        )
    });
    let logged = failed_starts_logged(server);
    assert!(
        logged <= most_failed_starts(slots, since.elapsed()),
        "{logged} failed starts in {:?}: not spaced by the backoff",
        since.elapsed()
    );
    elapsed
}

/// The pids /status shows, sorted. (Not `Server::worker_pids`: a failing start may be running
/// for a moment, and it counts there.)
fn status_pids(server: &Server) -> Vec<u32> {
    let rows = status(server)["workers"].as_array().unwrap().clone();
    let mut pids: Vec<u32> = rows
        .iter()
        .filter_map(|w| Some(w["pid"].as_u64()? as u32))
        .collect();
    pids.sort_unstable();
    pids
}

/// The sum of a metric over all its label sets (0 when absent).
fn metric_sum(server: &Server, name: &str) -> f64 {
    let text = server.get("/metrics").text();
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A worker program that is the real binary while its switch file exists, and fails at once
/// (exit 1, before any hello) while it does not: a broken deployment, then its fix.
struct SwitchedWorker {
    /// The script, named `forkpool-*` so that `Server::worker_pids` counts it.
    path: tempfile::TempPath,
    /// The switch file's directory; the script runs the real worker while `on` exists in it.
    dir: tempfile::TempDir,
}

impl SwitchedWorker {
    fn new(working: bool) -> SwitchedWorker {
        let dir = tempfile::tempdir().unwrap();
        let on = dir.path().join("on");
        let script = format!(
            "#!/bin/sh\n[ -e '{}' ] && exec '{}' \"$@\"\necho 'worker program switched off' >&2\nexit 1\n",
            on.display(),
            common::BIN
        );
        let path = temp_executable("forkpool-switch-", ".sh", &script);
        let worker = SwitchedWorker { path, dir };
        worker.set(working);
        worker
    }

    fn set(&self, working: bool) {
        let on = self.dir.path().join("on");
        match working {
            true => drop(std::fs::File::create(on).unwrap()),
            false => drop(std::fs::remove_file(on)),
        }
    }

    fn program(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

#[test]
fn a_worker_speaking_another_protocol_or_none_is_refused_and_backs_off() {
    let cases = [
        (
            hello_speaking(Some(999), env!("CARGO_PKG_VERSION")),
            "speaks protocol 999",
        ),
        (
            hello_speaking(None, env!("CARGO_PKG_VERSION")),
            "no protocol version",
        ),
    ];
    for (hello, refusal) in cases {
        let fake = FakeWorker::new("protocol", &hello, "true");
        let started = Instant::now();
        let server = Server::with(&[
            "--workers",
            "1",
            "--worker-program",
            fake.path.to_str().unwrap(),
            "--worker-start-failures",
            "100",
        ])
        .unready()
        .start();
        server.wait_for_log(refusal, |log| log.contains(refusal));
        // Spaced by the backoff: 100 + 200 ms at least (less jitter) before the third.
        let elapsed = wait_failed_starts(&server, 3, 1, started);
        assert!(elapsed >= Duration::from_millis(240), "{elapsed:?}");
        let message = server.get("/readyz").assert_error(503);
        assert!(message.contains("no worker"), "{message}");
        assert!(["down", "starting"]
            .contains(&status(&server)["workers"][0]["state"].as_str().unwrap()));
        server.assert_no_zombies();
    }
}

/// A wrapper around the real worker that rewrites the package version in its hello and keeps
/// everything else, the pid included: it execs the real worker with its stdout into a pipe,
/// and a child it forked first copies the pipe to the real stdout, changing the first line.
fn worker_reporting_version(version: &str) -> tempfile::TempPath {
    let script = format!(
        r#"#!/usr/bin/env python3
import os, re, sys
r, w = os.pipe()
if os.fork() == 0:
    os.close(w)
    os.close(0)
    data, first = b"", True
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            os._exit(0)
        if first:
            data += chunk
            if b"\n" not in data:
                continue
            line, rest = data.split(b"\n", 1)
            line = re.sub(rb'"version":"[^"]*"', b'"version":"{version}"', line)
            chunk, first = line + b"\n" + rest, False
        while chunk:
            chunk = chunk[os.write(1, chunk):]
os.close(r)
os.dup2(w, 1)
os.close(w)
os.execv("{bin}", ["{bin}"] + sys.argv[1:])
"#,
        bin = common::BIN
    );
    temp_executable("forkpool-version-", ".py", &script)
}

#[test]
fn a_worker_of_another_package_version_is_accepted_and_status_shows_its_version() {
    let wrapper = worker_reporting_version("9.9.9-next");
    let server = Server::start(&[
        "--workers",
        "2",
        "--worker-program",
        wrapper.to_str().unwrap(),
    ]);
    server.wait_for_workers(2);
    assert_serves(&server);
    for row in status(&server)["workers"].as_array().unwrap() {
        assert_eq!(row["version"], "9.9.9-next", "{row}");
    }
    server.assert_no_zombies();
}

#[test]
fn sighup_with_a_broken_worker_program_keeps_the_old_workers_and_a_later_sighup_completes() {
    let switch = SwitchedWorker::new(true);
    let server = Server::start(&["--workers", "2", "--worker-program", switch.program()]);
    let old = server.wait_for_workers(2);
    switch.set(false);
    let hup = Instant::now();
    signal(server.pid(), "HUP");
    // Retried, and spaced by the backoff: 4 failures a slot take 80 + 160 + 320 ms at least.
    let elapsed = wait_failed_starts(&server, 8, 2, hup);
    assert!(
        elapsed >= Duration::from_millis(500),
        "8 failed starts in {elapsed:?}"
    );
    // The old workers keep serving meanwhile.
    for _ in 0..3 {
        assert_serves(&server);
    }
    assert_eq!(status_pids(&server), old);
    assert!(old.iter().all(|&p| alive(p)));
    let pool = status(&server)["pool"].clone();
    assert_eq!(pool["health"]["state"], "live", "{pool}");
    let roll = &pool["roll"];
    assert_eq!(
        (roll["generation"].as_u64(), roll["pending_slots"].as_u64()),
        (Some(1), Some(2)),
        "{pool}"
    );
    assert!(roll["failed_starts"].as_u64() >= Some(8), "{pool}");
    assert!(
        roll["last_error"].as_str().unwrap().contains("exited"),
        "{pool}"
    );
    assert!(metric_sum(&server, "forkpool_worker_start_failures_total") >= 8.0);
    assert_eq!(metric_sum(&server, "forkpool_roll_pending_slots"), 2.0);
    // Fixed, and rolled again: the new roll supersedes the stuck one and completes.
    switch.set(true);
    let fixed = Instant::now();
    signal(server.pid(), "HUP");
    let rolled = wait_until(Duration::from_secs(20), || {
        let pool = status(&server)["pool"].clone();
        let pids = server.worker_pids();
        let new = pids.len() == 2 && pids.iter().all(|p| !old.contains(p));
        (new && pool["roll"]["generation"] == 2 && pool["roll"]["pending_slots"] == 0).then_some(())
    });
    assert!(
        rolled.is_some(),
        "the second roll did not complete: {}",
        status(&server)["pool"]
    );
    println!("fixed roll done in {:?}", fixed.elapsed());
    server.wait_for_log("the first roll superseded", |log| {
        log.contains("rolling restart superseded")
    });
    server.wait_for_log("the second roll done", |log| {
        log.contains("rolling restart done")
    });
    assert!(
        old.iter().all(|&p| !alive(p)),
        "old workers {old:?} still run"
    );
    assert_serves(&server);
    server.assert_no_zombies();
}

#[test]
fn a_worker_due_for_recycling_keeps_serving_while_its_replacement_cannot_start() {
    let switch = SwitchedWorker::new(true);
    let server = Server::start(&[
        "--workers",
        "1",
        "--max-jobs-per-worker",
        "3",
        "--worker-program",
        switch.program(),
    ]);
    let old = server.wait_for_workers(1);
    switch.set(false);
    let broken = Instant::now();
    let mut served = 0;
    while broken.elapsed() < Duration::from_millis(1500) {
        assert_serves(&server);
        served += 1;
    }
    let window = broken.elapsed();
    wait_failed_starts(&server, 1, 1, broken);
    let failed = failed_starts_logged(&server);
    println!("{served} jobs served, {failed} failed starts in {window:?}");
    assert!(
        failed <= most_failed_starts(1, window),
        "{failed} failed starts in {window:?}"
    );
    assert_eq!(
        status_pids(&server),
        old,
        "the worker due for recycling was lost"
    );
    assert!(alive(old[0]));
    assert!(metric_sum(&server, "forkpool_worker_start_failures_total") >= 1.0);
    // Fixed: the replacement starts at its next retry, with no job needed to prompt it.
    switch.set(true);
    let replaced = wait_until(Duration::from_secs(20), || {
        let now = server.worker_pids();
        (now.len() == 1 && now != old).then_some(())
    });
    assert!(
        replaced.is_some(),
        "never recycled once fixed: {}",
        status(&server)
    );
    server.wait_for_workers(1);
    assert_serves(&server);
    server.assert_no_zombies();
}

#[test]
fn with_no_worker_startable_jobs_are_refused_at_once_and_the_pool_recovers_by_itself() {
    let switch = SwitchedWorker::new(false);
    let server = Server::with(&[
        "--workers",
        "2",
        "--worker-start-failures",
        "3",
        "--job-timeout",
        "30s",
        "--worker-program",
        switch.program(),
    ])
    .unready()
    .start();
    // Queued before the breaker trips (or refused, if it already has): never left to its deadline.
    let queued = server.send_job("7");
    let unavailable = |server: &Server| {
        wait_until(Duration::from_secs(10), || {
            let readyz = server.get("/readyz");
            (readyz.status == 503 && readyz.text().contains("failed")).then_some(readyz)
        })
        .unwrap_or_else(|| {
            panic!(
                "/readyz never gave the reason: {}",
                server.get("/readyz").text()
            )
        })
    };
    let message = unavailable(&server).assert_error(503);
    assert!(message.contains("exited with code 1"), "{message}");
    let answer = read_response(queued);
    let message = answer.assert_error(503);
    assert!(message.contains("exited with code 1"), "{message}");
    let refused = server.get("/isprime?number=7");
    refused.assert_error(503);
    assert!(refused.header("retry-after").is_some());
    assert_eq!(status(&server)["pool"]["health"]["state"], "unavailable");
    assert_eq!(metric_sum(&server, "forkpool_pool_unavailable"), 1.0);
    // Fixed: the next retry succeeds and everything clears without anyone's help.
    switch.set(true);
    let back = wait_until(Duration::from_secs(20), || {
        (server.get("/readyz").status == 200).then_some(())
    });
    assert!(
        back.is_some(),
        "never ready again: {}",
        status(&server)["pool"]
    );
    assert_serves(&server);
    assert_eq!(status(&server)["pool"]["health"]["state"], "live");
    assert_eq!(metric_sum(&server, "forkpool_pool_unavailable"), 0.0);
    // Broken again with every worker killed: unavailable again, and back again once fixed.
    let workers = server.wait_for_workers(2);
    switch.set(false);
    workers.iter().for_each(|&pid| signal(pid, "KILL"));
    let message = unavailable(&server).assert_error(503);
    assert!(message.contains("exited with code 1"), "{message}");
    server.get("/isprime?number=7").assert_error(503);
    switch.set(true);
    server.wait_for_workers(2);
    assert_serves(&server);
    server.assert_no_zombies();
}

/// Field `n` (1-based, as in proc(5)) of /proc/PID/stat.
fn stat_field(pid: u32, n: usize) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name.split(' ').nth(n - 3).unwrap().parse().unwrap()
}

fn max_address_space(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().to_owned()
}

#[test]
fn workers_run_isolated_at_low_priority_under_a_memory_limit() {
    const SCHED_OTHER: i64 = 0;
    const SCHED_IDLE: i64 = 5;
    let server = Server::with(&["--workers", "1", "--worker-memory", "512MiB"])
        .idle_workers()
        .start();
    let [pid] = server.wait_for_workers(1)[..] else {
        unreachable!()
    };
    assert_eq!(stat_field(pid, 5), pid as i64, "own process group");
    assert_eq!(stat_field(pid, 41), SCHED_IDLE, "scheduling policy");
    assert_eq!(
        stat_field(pid, 19),
        10,
        "nice (the default, shown even under SCHED_IDLE)"
    );
    assert_eq!(max_address_space(pid), (512u64 << 20).to_string());

    let server = Server::start(&[
        "--workers",
        "1",
        "--worker-sched",
        "other",
        "--worker-nice",
        "7",
    ]);
    let [pid] = server.wait_for_workers(1)[..] else {
        unreachable!()
    };
    assert_eq!(stat_field(pid, 41), SCHED_OTHER, "scheduling policy");
    assert_eq!(stat_field(pid, 19), 7, "nice");
    assert_eq!(max_address_space(pid), (1u64 << 30).to_string());
    server.assert_no_zombies();
}

/// The worker side alone, driven over its pipes as the server drives it: a job that fails is
/// answered with `err`, and the worker's log line for it carries the request id even at the
/// default log level.
#[test]
fn a_worker_answers_a_failed_job_and_logs_it_with_the_request_id() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut worker = Command::new(common::BIN)
        .args(["worker", "--kind", "isprime", "--parent-pid"])
        .arg(std::process::id().to_string())
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = worker.stdin.take().unwrap();
    let mut stdout = BufReader::new(worker.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let hello: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(hello["hello"]["pid"], worker.id(), "{line}");

    writeln!(
        stdin,
        r#"{{"id":1,"tag":"rid-bad-job","job":{{"n":"not digits"}}}}"#
    )
    .unwrap();
    line.clear();
    stdout.read_line(&mut line).unwrap();
    let reply: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(reply["id"], 1, "{reply}");
    assert_eq!(reply["err"]["not_a_number"], "not digits", "{reply}");

    // EOF on stdin: the worker exits by itself, cleanly.
    drop(stdin);
    let output = worker.wait_with_output().unwrap();
    assert!(output.status.success(), "{:?}", output.status);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.lines()
            .any(|l| l.contains("job failed") && l.contains("request_id=rid-bad-job")),
        "{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// The pool as a library, in this process, with the real binary's `isprime` worker mode as its
// worker program.

/// `forkpool worker --kind isprime`, started by a pool in this test process.
fn isprime_worker() -> impl Fn() -> std::process::Command + Send + Sync + 'static {
    let parent = std::process::id().to_string();
    move || {
        let mut command = std::process::Command::new(common::BIN);
        command.args(["worker", "--kind", "isprime", "--parent-pid", &parent]);
        command
    }
}

fn pool_config(workers: usize, metrics_prefix: &str) -> PoolConfig {
    PoolConfig {
        metrics_prefix: metrics_prefix.to_owned(),
        ..PoolConfig::new(workers)
    }
}

/// Pids of the pool's workers once `n` are up.
fn wait_live<J: Job>(pool: &WorkerPool<J>, n: usize) -> Vec<u32> {
    wait_until(Duration::from_secs(10), || {
        let pids: Vec<u32> = pool.status().iter().filter_map(|w| w.pid).collect();
        (pool.live_workers() == n && pids.len() == n).then_some(pids)
    })
    .unwrap_or_else(|| panic!("{n} workers never came up: {:?}", pool.status()))
}

/// Gone and reaped: not even a zombie left.
fn reaped(pid: u32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Thread ids of this process's threads named like the pool's.
fn pool_threads() -> std::collections::HashSet<u32> {
    let tasks = std::fs::read_dir("/proc/self/task").unwrap();
    tasks
        .map(|t| t.unwrap().path())
        .filter(|t| {
            std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.trim() == "forkpool-pool")
        })
        .filter_map(|t| t.file_name()?.to_str()?.parse().ok())
        .collect()
}

use common::POOL_THREADS;

#[test]
fn dropping_the_last_pool_handle_stops_its_thread_and_kills_its_workers() {
    let _alone = POOL_THREADS.lock().unwrap_or_else(|e| e.into_inner());
    // Holding POOL_THREADS, no other pool starts meanwhile (pools of other tests may end).
    let before = pool_threads();
    let pool = WorkerPool::<IsPrimeJob>::start(pool_config(2, "dropguard"), isprime_worker());
    let workers = wait_live(&pool, 2);
    let started: Vec<u32> = pool_threads().difference(&before).copied().collect();
    let [thread] = started[..] else {
        panic!("the pool started threads {started:?}, not one")
    };
    let clone = pool.clone();
    drop(pool);
    assert!(
        workers.iter().all(|&pid| alive(pid)),
        "a clone still holds the pool, yet {workers:?} died"
    );
    drop(clone);
    // The drop waits for the pool's thread: when it returns, everything is gone.
    assert!(
        workers.iter().all(|&pid| reaped(pid)),
        "workers {workers:?} outlived the last pool handle"
    );
    assert!(
        !pool_threads().contains(&thread),
        "the pool's thread outlived it"
    );
}

/// The wire shape of an isprime verdict, whose decoding panics when the number is not prime:
/// a stand-in for a bug in a driver. Test-only; the pool has no fault injection of its own.
#[derive(Debug)]
struct PanicsUnlessPrime;

impl<'de> serde::Deserialize<'de> for PanicsUnlessPrime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let verdict = forkpool::jobs::IsPrimeOutput::deserialize(d)?;
        assert!(
            verdict.is_prime,
            "decoding a composite verdict (test-only panic)"
        );
        Ok(PanicsUnlessPrime)
    }
}

impl serde::Serialize for PanicsUnlessPrime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

/// An isprime job on the wire (so that the real worker answers it) with that output type.
#[derive(serde::Serialize, serde::Deserialize)]
struct PanickyJob {
    n: String,
}

impl Job for PanickyJob {
    const KIND: &'static str = "isprime";
    type Output = PanicsUnlessPrime;
    type Error = forkpool::jobs::IsPrimeError;

    fn run(self) -> Result<PanicsUnlessPrime, Self::Error> {
        unreachable!("runs in the forkpool binary's isprime worker, never here")
    }
}

/// Metrics and logs of this test process, captured once for every test that looks.
struct Observed {
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    log: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

fn observed() -> &'static Observed {
    static OBSERVED: std::sync::OnceLock<Observed> = std::sync::OnceLock::new();
    OBSERVED.get_or_init(|| {
        // The process-wide recorder, which in-process servers of other tests share.
        let metrics = forkpool::telemetry::recorder();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = log.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .init();
        Observed { metrics, log }
    })
}

struct LogSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_panicking_driver_fails_its_job_with_a_500_kills_its_worker_and_the_slot_serves_again() {
    let observed = observed();
    let _alone = POOL_THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pool = WorkerPool::<PanickyJob>::start(pool_config(1, "panicky"), isprime_worker());
    let [first] = wait_live(&pool, 1)[..] else {
        unreachable!()
    };
    let job = |n: &str| pool.submit(PanickyJob { n: n.into() }, "tag-7");
    runtime.block_on(async {
        job("7").await.expect("a prime verdict decodes");
        let error = job("8").await.expect_err("the driver panicked");
        assert!(matches!(error, PoolError::DriverPanic), "{error:?}");
        let response = AppError::from(error);
        assert_eq!(response.status(), 500, "{}", response.message);
        assert!(
            response.message.contains("panicked"),
            "{}",
            response.message
        );
    });
    assert!(
        reaped(first),
        "the panicked driver's worker {first} lives on"
    );
    let [second] = wait_live(&pool, 1)[..] else {
        unreachable!()
    };
    assert_ne!(second, first);
    runtime
        .block_on(job("7"))
        .expect("the restarted slot serves");

    let metrics = observed.metrics.render();
    for line in [
        "panicky_driver_panics_total 1",
        "panicky_jobs_total{outcome=\"driver_panic\"} 1",
        "panicky_jobs_total{outcome=\"ok\"} 2",
        "panicky_worker_exits_total{reason=\"driver_panic\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in\n{metrics}"
        );
    }
    let log = String::from_utf8_lossy(&observed.log.lock().unwrap()).into_owned();
    let panicked = log.lines().find(|l| l.contains("slot driver panicked"));
    let panicked = panicked.unwrap_or_else(|| panic!("not logged:\n{log}"));
    assert!(panicked.contains("ERROR"), "{panicked}");
    assert!(panicked.contains("composite verdict"), "{panicked}");
    assert!(panicked.contains(&first.to_string()), "{panicked}");
}

/// `isprime_worker`, or a program that does not exist while `broken` is set.
fn breakable_worker(
    broken: std::sync::Arc<AtomicBool>,
) -> impl Fn() -> std::process::Command + Send + Sync + 'static {
    let working = isprime_worker();
    move || match broken.load(Ordering::Relaxed) {
        true => std::process::Command::new("/nonexistent/forkpool-worker"),
        false => working(),
    }
}

#[test]
fn a_roll_returns_at_once_and_reports_done_or_superseded_and_wait_live_needs_no_polling() {
    let _alone = POOL_THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broken = std::sync::Arc::new(AtomicBool::new(false));
    let pool =
        WorkerPool::<IsPrimeJob>::start(pool_config(2, "rolls"), breakable_worker(broken.clone()));
    let limit = Duration::from_secs(10);
    runtime
        .block_on(async { tokio::time::timeout(limit, pool.wait_live()).await })
        .expect("wait_live never resolved");
    assert!(pool.live_workers() >= 1);
    let old = wait_live(&pool, 2);
    broken.store(true, Ordering::Relaxed);
    let stuck = pool.roll();
    let failing = wait_until(Duration::from_secs(10), || {
        (pool.overview().roll.failed_starts >= 4).then_some(())
    });
    assert!(failing.is_some(), "{:?}", pool.overview());
    assert_eq!(pool.health(), PoolHealth::Live);
    let answer = runtime.block_on(pool.submit(IsPrimeJob { n: "7".into() }, "during-a-stuck-roll"));
    assert!(answer.unwrap().output.is_prime);
    broken.store(false, Ordering::Relaxed);
    let fixed = pool.roll();
    assert_eq!(fixed.generation(), stuck.generation() + 1);
    let outcomes = runtime.block_on(async {
        tokio::time::timeout(limit, async {
            (stuck.finished().await, fixed.finished().await)
        })
        .await
    });
    let (first, second) = outcomes.expect("the rolls never ended");
    assert_eq!(first, RollOutcome::Superseded { by: 2 });
    assert_eq!(second, RollOutcome::Done);
    let new: Vec<u32> = pool.status().iter().filter_map(|w| w.pid).collect();
    assert!(new.iter().all(|p| !old.contains(p)), "{old:?} -> {new:?}");
    assert!(
        old.iter().all(|&p| reaped(p)),
        "old workers {old:?} outlived the roll"
    );
    assert_eq!(pool.overview().roll.pending_slots, 0);
}

#[test]
fn a_pool_that_cannot_start_a_worker_refuses_jobs_at_once_and_recovers_by_itself() {
    let _alone = POOL_THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broken = std::sync::Arc::new(AtomicBool::new(true));
    let config = PoolConfig {
        broken_after_failed_starts: 3,
        job_timeout: Duration::from_secs(60),
        ..pool_config(1, "breaker")
    };
    let pool = WorkerPool::<IsPrimeJob>::start(config, breakable_worker(broken.clone()));
    let tripped = wait_until(Duration::from_secs(10), || match pool.health() {
        PoolHealth::Unavailable {
            failed_starts,
            last_error,
        } => Some((failed_starts, last_error)),
        _ => None,
    });
    let (failed_starts, last_error) = tripped.expect("the breaker never tripped");
    assert!(failed_starts >= 3);
    assert!(
        last_error.contains("/nonexistent/forkpool-worker"),
        "{last_error}"
    );
    let refused = runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(1),
            pool.submit(IsPrimeJob { n: "7".into() }, "refused"),
        )
        .await
    });
    let refused = refused.expect("a job waited although no worker can start");
    assert!(
        matches!(refused, Err(PoolError::Unavailable { .. })),
        "{refused:?}"
    );
    broken.store(false, Ordering::Relaxed);
    let limit = Duration::from_secs(20);
    runtime
        .block_on(async { tokio::time::timeout(limit, pool.wait_live()).await })
        .expect("no worker came up once the program was fixed");
    assert_eq!(pool.health(), PoolHealth::Live);
    let answer = runtime.block_on(pool.submit(IsPrimeJob { n: "7".into() }, "served"));
    assert!(answer.unwrap().output.is_prime);
}

#[test]
fn a_newer_roll_kills_and_reaps_a_replacement_still_starting_for_the_older_one() {
    let _alone = POOL_THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // While `hang` is set, a worker never says hello: `sleep` stands in for a stuck binary. Its
    // odd argument tells it apart from any other `sleep` child of this process (the tests of
    // tests/lifecycle.rs make the shared test process a subreaper, which adopts theirs).
    let hang = std::sync::Arc::new(AtomicBool::new(false));
    let working = isprime_worker();
    let command = {
        let hang = hang.clone();
        move || match hang.load(Ordering::Relaxed) {
            true => {
                let mut sleep = std::process::Command::new("sleep");
                sleep.arg("30.017");
                sleep
            }
            false => working(),
        }
    };
    let pool = WorkerPool::<IsPrimeJob>::start(pool_config(1, "superseded"), command);
    let [old] = wait_live(&pool, 1)[..] else {
        unreachable!()
    };
    hang.store(true, Ordering::Relaxed);
    let stuck = pool.roll();
    let ours = |pid: u32| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        cmdline.ends_with(b"\x0030.017\x00")
    };
    let starting = wait_until(Duration::from_secs(20), || {
        let children = common::children_of(std::process::id());
        let sleeping = children
            .iter()
            .find(|p| p.name == "sleep" && p.state != 'Z' && ours(p.pid));
        sleeping.map(|p| p.pid)
    })
    .expect("the stuck replacement never started");
    hang.store(false, Ordering::Relaxed);
    let fixed = pool.roll();
    // Well within the 10 s the stuck one would get to say hello: the newer roll starts at once.
    let limit = Duration::from_secs(5);
    let outcomes = runtime.block_on(async {
        let both = async { (stuck.finished().await, fixed.finished().await) };
        tokio::time::timeout(limit, both).await
    });
    let (first, second) = outcomes.expect("the newer roll waited for the stuck start");
    assert_eq!(
        (first, second),
        (RollOutcome::Superseded { by: 2 }, RollOutcome::Done)
    );
    assert!(reaped(starting), "the superseded start {starting} lives on");
    assert!(reaped(old), "the old worker {old} outlived the roll");
    assert_eq!(pool.overview().roll.pending_slots, 0);
}

/// An elastic pool of 1 to 2 workers (or to the CPUs this process may use, if fewer), idle
/// workers retiring after 300 ms.
fn elastic_config(metrics_prefix: &str) -> PoolConfig {
    PoolConfig {
        workers_min: 1,
        worker_idle_timeout: Duration::from_millis(300),
        ..pool_config(2, metrics_prefix)
    }
}

/// Waits until the pool's overview shows `live` workers live and as its target.
fn wait_size<J: Job>(pool: &WorkerPool<J>, live: usize) {
    let reached = wait_until(Duration::from_secs(20), || {
        let workers = pool.overview().workers;
        (workers.live == live && workers.target == live).then_some(())
    });
    assert!(
        reached.is_some(),
        "never {live} live: {:?}",
        pool.overview()
    );
}

/// The value of the one sample `line_start` (name and labels) in a rendered exposition.
fn sample(metrics: &str, line_start: &str) -> f64 {
    let line = metrics.lines().find(|l| l.starts_with(line_start));
    let line = line.unwrap_or_else(|| panic!("no `{line_start}` in\n{metrics}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn an_elastic_pool_grows_under_a_burst_and_shrinks_back_when_idle_failing_no_job() {
    let observed = observed();
    let _alone = POOL_THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pool = WorkerPool::<IsPrimeJob>::start(elastic_config("elastic"), isprime_worker());
    wait_size(&pool, 1);
    let size = pool.overview().workers;
    assert_eq!((size.min, size.target), (1, 1), "{size:?}");
    if size.max < 2 {
        eprintln!("this process may use one CPU only: the pool cannot grow; skipped");
        return;
    }
    // More jobs than workers, each of a good fraction of a second: every worker busy and jobs
    // waiting for longer than the pool takes to grow.
    let burst: Vec<_> = (0..6)
        .map(|i| {
            let pool = pool.clone();
            runtime.spawn(async move {
                let job = IsPrimeJob { n: mersenne(4423) };
                pool.submit(job, &format!("burst-{i}")).await
            })
        })
        .collect();
    wait_size(&pool, 2);
    for answer in runtime.block_on(futures_util::future::join_all(burst)) {
        let answer = answer.unwrap();
        assert!(
            answer.is_ok(),
            "a job failed while the pool grew: {answer:?}"
        );
    }
    // Idle for the timeout, the grown worker retires; the minimum stays.
    wait_size(&pool, 1);
    let rows = pool.status();
    let states: Vec<_> = rows.iter().map(|w| w.state.as_str()).collect();
    assert!(states.contains(&"dormant"), "{states:?}");

    let metrics = observed.metrics.render();
    assert!(sample(&metrics, "elastic_worker_starts_total{reason=\"grow\"}") >= 1.0);
    assert!(sample(&metrics, "elastic_worker_exits_total{reason=\"idle\"}") >= 1.0);
    let log = String::from_utf8_lossy(&observed.log.lock().unwrap()).into_owned();
    assert!(log.contains("the pool grows"), "{log}");
    assert!(log.contains("the pool shrinks"), "{log}");
}

#[test]
fn an_elastic_pool_at_minimum_zero_is_ready_with_no_worker_and_its_first_job_starts_one() {
    let _alone = POOL_THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = PoolConfig {
        workers_min: 0,
        ..elastic_config("elastic_zero")
    };
    let pool = WorkerPool::<IsPrimeJob>::start(config, isprime_worker());
    runtime.block_on(pool.wait_ready());
    assert_eq!(pool.health(), PoolHealth::Standby);
    assert_eq!(pool.live_workers(), 0);
    let answer = runtime.block_on(pool.submit(IsPrimeJob { n: "7".into() }, "first"));
    assert!(answer.unwrap().output.is_prime);
    // Idle, it goes back to none, and is ready as before.
    wait_size(&pool, 0);
    assert_eq!(pool.health(), PoolHealth::Standby);
}

#[test]
fn a_minimum_above_the_maximum_is_refused_by_name() {
    let config = PoolConfig {
        workers_min: 3,
        ..PoolConfig::new(2)
    };
    let refused = WorkerPool::<IsPrimeJob>::try_start(config, isprime_worker()).err();
    assert_eq!(
        refused,
        Some(forkpool::pool::PoolConfigError::MinAboveMax { min: 3, max: 2 })
    );
}

// ---------------------------------------------------------------------------------------------
// The elastic pool through the real binary: `--workers-min`, `--workers-max`,
// `--worker-idle-timeout`.

/// `/status`'s `pool.workers` once `check` holds for it.
fn wait_pool_size(server: &Server, check: impl Fn(&Value) -> bool) -> Value {
    wait_until(Duration::from_secs(20), || {
        let workers = status(server)["pool"]["workers"].clone();
        check(&workers).then_some(workers)
    })
    .unwrap_or_else(|| panic!("the pool never got there: {}", status(server)["pool"]))
}

/// A server with an elastic pool of 1 to 2 workers (`idle_timeout` for `--worker-idle-timeout`),
/// grown to 2 by a burst of heavy jobs, each answered 200; `None` (skipped, said on stderr)
/// where it may use one CPU only and so cannot grow.
fn grown_by_a_burst(idle_timeout: &str) -> Option<Server> {
    let server = Server::start(&[
        "--workers-min",
        "1",
        "--workers-max",
        "2",
        "--worker-idle-timeout",
        idle_timeout,
    ]);
    let at_rest = wait_pool_size(&server, |w| w["live"] == 1);
    assert_eq!(
        (at_rest["min"].as_u64(), at_rest["target"].as_u64()),
        (Some(1), Some(1))
    );
    if at_rest["max"] != 2 {
        eprintln!("this server may use one CPU only ({at_rest}): it cannot grow; skipped");
        return None;
    }
    // More jobs of a good fraction of a second than workers, each on its own connection.
    let burst: Vec<_> = (0..6).map(|_| server.send_job(&mersenne(4423))).collect();
    let grown = wait_pool_size(&server, |w| w["live"] == 2 && w["busy"] == 2);
    assert_eq!(grown["target"], 2, "{grown}");
    for stream in burst {
        let response = read_response(stream);
        assert_eq!(
            response.status,
            200,
            "a request failed while the pool grew: {}",
            response.text()
        );
    }
    Some(server)
}

#[test]
fn under_a_burst_the_server_grows_to_its_maximum_and_shrinks_back_failing_no_request() {
    let Some(server) = grown_by_a_burst("500ms") else {
        return;
    };
    wait_pool_size(&server, |w| w["live"] == 1 && w["target"] == 1);
    let states: Vec<Value> = status(&server)["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["state"].clone())
        .collect();
    assert!(states.contains(&Value::from("dormant")), "{states:?}");
    assert_eq!(server.worker_pids().len(), 1, "the retired worker lives on");
    let metrics = server.get("/metrics").text();
    for line in [
        "forkpool_worker_starts_total{reason=\"grow\"} 1",
        "forkpool_worker_exits_total{reason=\"idle\"} 1",
        "forkpool_pool_workers_target 1",
        "forkpool_pool_workers_max 2",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in\n{metrics}"
        );
    }
    server.wait_for_log("the pool shrinking", |log| log.contains("the pool shrinks"));
    server.assert_no_zombies();
}

#[test]
fn under_a_steady_light_load_the_grown_workers_still_retire() {
    let Some(server) = grown_by_a_burst("1s") else {
        return;
    };
    // A job every few tens of milliseconds, for as long as it takes: far more often than the
    // idle timeout. Dealt round both workers (as they were), neither ever idled for 1 s and
    // the pool stayed at its maximum for as long as the load lasted.
    let shrunk = wait_until(Duration::from_secs(30), || {
        let response = server.get("/isprime?number=1000003");
        assert_eq!(response.status, 200, "{}", response.text());
        let workers = status(&server)["pool"]["workers"].clone();
        (workers["live"] == 1 && workers["target"] == 1).then_some(())
    });
    assert!(
        shrunk.is_some(),
        "a steady light load kept the pool grown: {}",
        status(&server)["pool"]
    );
}

#[test]
fn with_workers_min_0_the_server_is_ready_with_no_worker_and_its_first_job_starts_one() {
    let server = Server::start(&["--workers-min", "0", "--workers-max", "1"]);
    let ready = server.get("/readyz");
    assert_eq!(ready.status, 200, "{}", ready.text());
    let pool = status(&server)["pool"].clone();
    assert_eq!(pool["health"]["state"], "standby", "{pool}");
    assert_eq!(pool["workers"]["live"], 0, "{pool}");
    assert!(server.worker_pids().is_empty());
    assert_serves(&server);
    assert_eq!(status(&server)["pool"]["workers"]["live"], 1);
}

#[test]
fn an_elastic_server_pinned_to_one_cpu_never_grows_past_it_and_says_why() {
    let server = Server::with(&["--workers-min", "1", "--workers-max", "4"])
        .on_one_cpu()
        .start();
    let size = status(&server)["pool"]["workers"].clone();
    assert_eq!(
        (size["max"].as_u64(), size["max_limited_by"].as_str()),
        (Some(1), Some("affinity")),
        "{size}"
    );
    let log = server.wait_for_log("the elastic pool's size", |log| {
        log.contains("elastic pool")
    });
    let line = log.lines().find(|l| l.contains("elastic pool")).unwrap();
    assert!(
        line.contains("effective_max=1") && line.contains("affinity"),
        "{line}"
    );
    // A burst finds every worker busy and jobs waiting, yet no second worker starts.
    let burst: Vec<_> = (0..3).map(|_| server.send_job(&mersenne(4423))).collect();
    for stream in burst {
        assert_eq!(read_response(stream).status, 200);
    }
    assert_eq!(status(&server)["pool"]["workers"]["target"], 1);
    assert_eq!(metric_sum(&server, "forkpool_worker_starts_total"), 1.0);
}

#[test]
fn a_minimum_above_the_maximum_is_refused_at_start_naming_both_flags() {
    let (code, stdout, stderr) =
        common::run_to_exit(&["--workers-min", "3", "--workers-max", "2"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("--workers-min 3") && stderr.contains("--workers-max 2"),
        "{stderr}"
    );
}

#[test]
fn at_minimum_zero_a_pool_whose_starts_fail_is_ready_until_a_job_trips_the_breaker() {
    let _alone = POOL_THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = PoolConfig {
        workers_min: 0,
        broken_after_failed_starts: 2,
        ..elastic_config("elastic_broken")
    };
    let pool = WorkerPool::<IsPrimeJob>::start(config, || std::process::Command::new("/bin/false"));
    // Nothing has been tried yet: it can start a worker, as far as anyone knows.
    runtime.block_on(pool.wait_ready());
    assert_eq!(pool.health(), PoolHealth::Standby);
    // The job starts one, which fails, twice: the queued job is refused, not left to its
    // deadline.
    let answer = runtime.block_on(pool.submit(IsPrimeJob { n: "7".into() }, "first"));
    assert!(
        matches!(
            answer,
            Err(PoolError::Unavailable {
                failed_starts: 2,
                ..
            })
        ),
        "{answer:?}"
    );
    assert!(
        matches!(pool.health(), PoolHealth::Unavailable { .. }),
        "{:?}",
        pool.health()
    );
}

#[test]
fn a_roll_of_an_elastic_pool_at_rest_is_done_once_its_live_workers_are_replaced() {
    let _alone = POOL_THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pool = WorkerPool::<IsPrimeJob>::start(elastic_config("elastic_roll"), isprime_worker());
    let [old] = wait_live(&pool, 1)[..] else {
        unreachable!()
    };
    // The dormant slot has nothing to replace: the roll does not wait for it.
    let roll = pool.roll();
    let finished = async { tokio::time::timeout(Duration::from_secs(20), roll.finished()).await };
    let outcome = runtime.block_on(finished);
    assert_eq!(
        outcome.ok(),
        Some(RollOutcome::Done),
        "{:?}",
        pool.overview()
    );
    let [new] = wait_live(&pool, 1)[..] else {
        unreachable!()
    };
    assert_ne!(new, old);
    assert_eq!(pool.overview().workers.target, 1);
}

/// A worker that opts in to the release line and then stops reading its stdin: it shrinks
/// its stdin pipe to one page, reads a job line only as far as its id, answers it, and leaves
/// the rest of the line (a long number) in the pipe, which is then full. It reads nothing
/// more, and answers nothing more; it exits once the server is gone.
fn deaf_worker() -> tempfile::TempPath {
    let script = format!(
        r#"#!/usr/bin/env python3
import fcntl, os, re, time
fcntl.fcntl(0, 1031, 4096)  # F_SETPIPE_SZ: one page
hello = '{{"hello":{{"protocol":{PROTOCOL_VERSION},"version":"{version}","pid":%d,"kind":"isprime","release":true}}}}\n'
os.write(1, (hello % os.getpid()).encode())
head = b""
while b',' not in head:
    head += os.read(0, 1)
job = int(re.search(rb'"id":(\d+)', head).group(1))
os.write(1, b'{{"id":%d,"ms":0.1,"ok":{{"is_prime":false,"method":"deterministic"}}}}\n' % job)
parent = os.getppid()
while os.getppid() == parent:
    time.sleep(0.1)
"#,
        version = env!("CARGO_PKG_VERSION")
    );
    temp_executable("forkpool-deaf-", ".py", &script)
}

#[test]
fn a_worker_that_stops_reading_while_idle_is_replaced_rather_than_holding_its_driver() {
    // The release line went out with a blocking write: to a full pipe it never finished, and
    // the driver, waiting on it, served its slot no more (nor saw a roll or the pool close).
    let fake = deaf_worker();
    let server = Server::start(&[
        "--workers",
        "1",
        "--worker-program",
        fake.to_str().unwrap(),
        "--worker-release-after",
        "10ms",
        "--job-timeout",
        "60s",
    ]);
    let first = status_pids(&server)[0];
    let long = format!("1{}", "0".repeat(8000));
    let answer = server.post_json("/isprime", &format!(r#"{{"number":"{long}"}}"#));
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    // Idle and due for the release line, which its full pipe cannot take: it is replaced.
    let second = wait_replaced(&server, first);
    assert!(server.log().contains("stopped reading"), "{}", server.log());
    let answer = server.get("/isprime?number=7");
    assert_eq!(
        answer.status,
        200,
        "the slot serves again: {}",
        String::from_utf8_lossy(&answer.body)
    );
    assert!(status_pids(&server).contains(&second));
    drop(server);
}
