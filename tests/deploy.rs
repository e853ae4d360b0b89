//! Beyond one machine, against real processes: Debian's nginx, started from
//! `deploy/nginx/forkpool.conf`, in front of two forkpool replicas on loopback ports; the
//! systemd unit checked by `systemd-analyze verify`; and the drain that makes a rolling restart
//! lose nothing (`Connection: close` from SIGTERM on, jobs served until the listener closes).
//!
//! The nginx tests change only the ports of the shipped file, and run nginx as the current user
//! with its pid, logs and temp files in a temp directory; every other directive is the one an
//! operator installs. The replicas drain with the shipped `deploy/systemd/forkpool.env` values.
//! The tests print their figures (`cargo test --test deploy -- --nocapture`).
//!
//! The tests that need nginx or systemd-analyze are `#[ignore]`d, so that `cargo test` on a
//! machine without them says it did not run them; `.ci/run` installs both and runs them
//! (`cargo test -- --ignored`), and run without the tool they fail, naming it.
//! The nginx tests take one lock, so that their figures are not measured against each other.
//! Traffic goes to 127.0.0.1 only, and every loop is bounded in time.

use crate::common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::load::{Kind, Load};
use common::{require_tool, send_to, signal, try_request, wait_until, Response, Server};

const SHIPPED_CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx/forkpool.conf");
const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/systemd/forkpool.service"
);
const ENV_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/systemd/forkpool.env");
/// The socket units that pass forkpool.service its listeners.
const SOCKETS: [&str; 2] = [
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/systemd/forkpool.socket"
    ),
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/systemd/forkpool-admin.socket"
    ),
];

/// The replica addresses and the public listener as the shipped nginx file has them; the tests
/// replace exactly these.
const SHIPPED_REPLICAS: [&str; 2] = ["server 127.0.0.1:3636 ", "server 127.0.0.1:3637 "];
const SHIPPED_LISTEN: [&str; 2] = ["listen 80;", "listen [::]:80;"];

/// Serialises the nginx tests: each starts three servers and loads them.
static HEAVY: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------------
// The shipped files, checked by their own tools

#[test]
#[ignore = "needs systemd-analyze (Debian's systemd); .ci/run installs it and runs the ignored tests"]
fn the_systemd_units_pass_systemd_analyze_verify_without_a_warning() {
    require_tool("systemd-analyze", "--version");
    // verify insists that ExecStart exists and is executable: point it at the built binary.
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let unit = replace_once(
        &unit,
        "ExecStart=/usr/local/bin/forkpool",
        &format!("ExecStart={}", common::BIN),
    );
    let path = dir.path().join("forkpool.service");
    std::fs::write(&path, unit).unwrap();
    let mut units = vec![path];
    for socket in SOCKETS {
        let copy = dir.path().join(Path::new(socket).file_name().unwrap());
        std::fs::copy(socket, &copy).unwrap();
        units.push(copy);
    }
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect("run systemd-analyze");
    let said = String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
    println!(
        "systemd-analyze verify: exit {:?}, {said:?}",
        output.status.code()
    );
    // verify exits 0 even for an unknown key or a bad value (it only warns), so silence is the
    // pass mark.
    assert!(output.status.success() && said.trim().is_empty(), "{said}");
}

#[test]
fn the_unit_lets_forkpool_drain_its_workers_and_its_env_file_names_only_real_flags() {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let key = |name: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("the unit sets no {name}"))
            .to_owned()
    };
    assert_eq!(
        key("KillMode"),
        "mixed",
        "workers must not get systemd's SIGTERM"
    );
    assert_eq!(key("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(
        key("OOMPolicy"),
        "continue",
        "a worker's OOM kill must not stop the service"
    );
    // READY=1 comes from forkpool itself, once a worker said hello.
    assert_eq!(key("Type"), "notify");
    // The socket units name their sockets the way forkpool tells them apart.
    let names: Vec<String> = SOCKETS
        .iter()
        .map(|socket| std::fs::read_to_string(socket).unwrap())
        .filter_map(|text| {
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix("FileDescriptorName="));
            name.map(str::to_owned)
        })
        .collect();
    assert_eq!(
        names,
        [
            forkpool::systemd::PUBLIC_SOCKET_NAME,
            forkpool::systemd::ADMIN_SOCKET_NAME
        ]
    );
    let env = shipped_env();
    let stop = parse_duration(&key("TimeoutStopSec"));
    let grace = parse_duration(&env["FORKPOOL_SHUTDOWN_GRACE"]);
    assert!(stop > grace, "TimeoutStopSec {stop:?} <= grace {grace:?}");
    // A typo in the env file would be ignored silently by forkpool: every key must be a flag.
    let known: Vec<String> = <forkpool::cli::Cli as clap::CommandFactory>::command()
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    for name in env.keys() {
        assert!(known.contains(name), "{name} is not a forkpool variable");
    }
}

#[test]
#[ignore = "needs Debian's nginx; .ci/run installs it and runs the ignored tests"]
fn the_shipped_nginx_conf_passes_nginx_t_as_it_is() {
    require_tool("nginx", "-v");
    let dir = tempfile::tempdir().unwrap();
    write_main_conf(dir.path(), Path::new(SHIPPED_CONF));
    let output = nginx_command(dir.path())
        .arg("-t")
        .stderr(Stdio::piped())
        .output()
        .expect("run nginx -t");
    let said = String::from_utf8_lossy(&output.stderr);
    println!("nginx -t on the shipped file: {said}");
    assert!(output.status.success(), "{said}");
    assert!(said.contains("test is successful"), "{said}");
}

// ---------------------------------------------------------------------------------------------
// The drain, on one replica without nginx

#[test]
fn after_sigterm_every_response_says_connection_close_and_jobs_are_still_served() {
    let server = Server::start(&["--workers", "1", "--shutdown-delay", "2s"]);
    server.wait_for_workers(1);
    let mut kept = TcpStream::connect(server.addr).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let before = exchange(&mut kept, "/testrequest");
    assert_eq!(before.status, 200);
    assert_eq!(before.header("connection"), None, "{:?}", before.headers);

    server.terminate();
    let readyz = wait_until(Duration::from_secs(2), || {
        try_request(server.addr, "GET", "/readyz", &[], b"")
            .ok()
            .filter(|r| r.status == 503)
    });
    assert!(readyz.is_some(), "/readyz did not turn 503");
    // The same kept-alive connection, during --shutdown-delay: a job is served, and the
    // answer retires the connection.
    let during = exchange(&mut kept, "/isprime?number=97");
    assert_eq!(during.status, 200, "{}", during.text());
    assert_eq!(during.json()["isPrime"], true);
    assert_eq!(during.header("connection"), Some("close"));
    let mut rest = Vec::new();
    let read = kept.read_to_end(&mut rest);
    assert!(
        matches!(read, Ok(0)),
        "the server kept the connection open: {read:?}"
    );
    // A fresh connection is answered the same way until the listener closes.
    let fresh = try_request(server.addr, "GET", "/testrequest", &[], b"").unwrap();
    assert_eq!(fresh.header("connection"), Some("close"));
}

/// One GET on a kept-alive connection, read by its Content-Length.
fn exchange(stream: &mut TcpStream, path: &str) -> Response {
    let head = format!("GET {path} HTTP/1.1\r\nhost: forkpool\r\n\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "closed mid-head");
        raw.push(byte[0]);
    }
    let length: usize = Response::parse(&raw)
        .header("content-length")
        .expect("a content-length")
        .parse()
        .unwrap();
    let mut body = vec![0; length];
    stream.read_exact(&mut body).unwrap();
    raw.extend(body);
    Response::parse(&raw)
}

// ---------------------------------------------------------------------------------------------
// Two replicas behind nginx

#[test]
#[ignore = "needs Debian's nginx; .ci/run installs it and runs the ignored tests"]
fn requests_through_nginx_reach_both_replicas() {
    let cluster = Cluster::start(&[]);
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for _ in 0..40 {
        let status = cluster.get("/status");
        assert_eq!(status.status, 200, "{}", status.text());
        *seen
            .entry(status.json()["pid"].as_u64().unwrap())
            .or_default() += 1;
    }
    println!("40 GET /status through nginx, by replica pid: {seen:?}");
    for replica in &cluster.replicas {
        let served = seen.get(&u64::from(replica.pid())).copied().unwrap_or(0);
        assert!(
            served >= 10,
            "replica {} served {served} of 40",
            replica.pid()
        );
    }
    // nginx's own errors keep forkpool's JSON shape; forkpool's pass through untouched.
    cluster.get("/isprime?number=-1").assert_error(400);
    let huge = vec![b'1'; 100 << 10];
    let response = try_request(cluster.nginx.addr, "POST", "/isprime", &[], &huge).unwrap();
    assert!(response.assert_error(413).contains("nginx"));
}

#[test]
#[ignore = "needs Debian's nginx; .ci/run installs it and runs the ignored tests"]
fn a_large_listing_streams_through_nginx() {
    // tmpfs when there is one: 100,000 files take two seconds there, and up to 30 s on a busy disk.
    let root = match Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm").unwrap(),
        false => tempfile::tempdir().unwrap(),
    };
    let files = 100_000;
    let made = Instant::now();
    let big = root.path().join("big");
    std::fs::create_dir(&big).unwrap();
    for n in 0..files {
        std::fs::File::create(big.join(format!("file-{n:06}"))).unwrap();
    }
    println!("{files} files created in {:.1?}", made.elapsed());
    let root_arg = root.path().to_str().unwrap();
    let cluster = Cluster::start(&["--ls-root", root_arg]);
    let direct = Listing::read(cluster.replicas[0].addr, &cluster.replicas, Duration::ZERO);
    let pause = Duration::from_millis(300);
    let proxied = Listing::read(cluster.nginx.addr, &cluster.replicas, pause);
    println!("/ls?directory=/big ({files} files; ls sorts, so it prints only after reading all):");
    println!("  direct to a replica: {direct}");
    println!("  through nginx      : {proxied}, then the client paused {pause:?}");
    for listing in [&direct, &proxied] {
        assert_eq!(listing.lines, files + 3, "total, ., .. and the files");
    }
    // The first chunk reached the client while `ls` was still writing the listing.
    assert!(proxied.ls_running_at_first_chunk, "{proxied}");
    // Buffered, nginx would have spooled what the paused client did not take to a file.
    let log = cluster.nginx.error_log();
    assert!(!log.contains("buffered to a temporary file"), "{log}");
}

/// One streamed /ls as a client saw it.
struct Listing {
    /// From the request to ls's first line (the head comes before it, at once).
    first_chunk: Duration,
    /// Whether a replica's `ls` was still running when that first line arrived.
    ls_running_at_first_chunk: bool,
    /// From the request to the end of the listing.
    total: Duration,
    /// Lines of the listing.
    lines: usize,
    /// Bytes of the listing (the decoded body).
    bytes: usize,
}

impl Listing {
    /// Reads /ls?directory=/big from `addr`, pausing `pause` after the first chunk.
    fn read(addr: SocketAddr, replicas: &[Server], pause: Duration) -> Listing {
        let started = Instant::now();
        let mut stream = send_to(addr, "GET", "/ls?directory=/big", &[], b"").unwrap();
        let mut raw = Vec::new();
        let mut buffer = vec![0; 16 << 10];
        while !raw.windows(6).any(|w| w == b"total ") {
            let n = stream.read(&mut buffer).unwrap();
            assert!(n > 0, "the listing ended before it began");
            raw.extend_from_slice(&buffer[..n]);
        }
        let first_chunk = started.elapsed();
        let ls_running_at_first_chunk = replicas
            .iter()
            .flat_map(Server::children)
            .any(|p| p.name == "ls" && p.state != 'Z');
        // Not a wait for an event: a slow client, which nginx must not spool to disk for.
        std::thread::sleep(pause);
        stream.read_to_end(&mut raw).unwrap();
        let total = started.elapsed();
        let response = Response::parse(&raw);
        assert_eq!(response.status, 200);
        assert!(
            response.complete,
            "the listing ended without its last chunk"
        );
        Listing {
            first_chunk,
            ls_running_at_first_chunk,
            total,
            lines: response.body.split(|&b| b == b'\n').count() - 1,
            bytes: response.body.len(),
        }
    }
}

impl std::fmt::Display for Listing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "first chunk {:>6.1} ms (ls still running: {}), end {:>6.1} ms, {} lines, {:.2} MB",
            self.first_chunk.as_secs_f64() * 1e3,
            self.ls_running_at_first_chunk,
            self.total.as_secs_f64() * 1e3,
            self.lines,
            self.bytes as f64 / 1e6
        )
    }
}

#[test]
#[ignore = "needs Debian's nginx; .ci/run installs it and runs the ignored tests"]
fn a_rolling_restart_under_load_fails_no_request() {
    let mut cluster = Cluster::start(&[]);
    let load = Load::start(cluster.nginx.addr);
    // Enough answers before the rolls that each of the three kinds has its 100 (the clients
    // take the kinds in turn).
    load.wait_answered(360);
    for replica in 0..2 {
        let roll = cluster.roll(replica);
        println!(
            "replica {replica}: SIGTERM -> exited {:.2?} -> fresh replica ready {:.2?} -> back in rotation {:.2?}",
            roll.exited, roll.ready, roll.in_rotation
        );
    }
    // Served by the rolled replicas too.
    load.wait_answered(100);
    let tally = load.finish();
    println!("rolling restart of both replicas under load, through nginx:\n{tally}");
    assert!(tally.failed.is_empty(), "{tally}");
    assert!(
        tally.ok.values().all(|&n| n >= 100),
        "too little load: {tally}"
    );
}

#[test]
#[ignore = "needs Debian's nginx; .ci/run installs it and runs the ignored tests"]
fn a_replica_killed_under_load_fails_only_requests_nginx_must_not_retry() {
    let cluster = Cluster::start(&[]);
    let load = Load::start(cluster.nginx.addr);
    load.wait_answered(100);
    let killed = cluster.replicas[0].addr;
    signal(cluster.replicas[0].pid(), "KILL");
    // Load on through the kill, served by the other replica, until nginx has moved a request
    // from the dead one: the first failure takes it out of rotation for fail_timeout (2 s), so
    // the move may come only once nginx tries it again (a refused connection, moved on).
    load.wait_answered(300);
    let moved = wait_until(Duration::from_secs(30), || {
        let retried = cluster.nginx.retried_requests(killed);
        (!retried.is_empty()).then_some(retried)
    });
    let tally = load.finish();
    let retried = moved.unwrap_or_default();
    println!("replica {killed} SIGKILLed under load, through nginx:\n{tally}");
    println!("  requests nginx moved from the killed replica to the other: {retried:?}");
    for (kind, failure) in &tally.failed {
        assert_eq!(*kind, Kind::IsPrimePost, "{failure}");
        assert!(failure.starts_with("502"), "{failure}");
    }
    // Whatever was sent to the dead replica first moved on: a GET in flight, or any request
    // whose connection was refused (nothing sent yet, so a POST too).
    assert!(
        !retried.is_empty(),
        "nginx moved no request to the other replica"
    );
}

// ---------------------------------------------------------------------------------------------
// The cluster: two replicas on fixed loopback ports, nginx in front

/// Two replicas behind nginx, for one test at a time.
struct Cluster {
    /// First, so that it stops before the replicas do.
    nginx: Nginx,
    /// The replicas, in the order of the upstream's `server` lines.
    replicas: Vec<Server>,
    /// The replicas' flags: one worker each, and the shipped env file's drain settings.
    args: Vec<String>,
    /// Held while the cluster lives: the nginx tests run one at a time.
    _lock: MutexGuard<'static, ()>,
}

/// How long each step of one replica's restart took, from its SIGTERM.
struct Roll {
    /// Until the old replica had exited (its delay, then what was in flight).
    exited: Duration,
    /// Until the fresh replica on the same port was ready (`/readyz` 200).
    ready: Duration,
    /// Until nginx sent a request to the fresh replica.
    in_rotation: Duration,
}

impl Cluster {
    /// Two replicas with `extra` flags behind nginx.
    fn start(extra: &[&str]) -> Cluster {
        require_tool("nginx", "-v");
        let lock = HEAVY
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let env = shipped_env();
        let mut args: Vec<String> = ["--workers", "1", "--shutdown-delay"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        args.push(env["FORKPOOL_SHUTDOWN_DELAY"].clone());
        args.push("--shutdown-grace".into());
        args.push(env["FORKPOOL_SHUTDOWN_GRACE"].clone());
        args.extend(extra.iter().map(|a| a.to_string()));
        let replicas: Vec<Server> = (0..2).map(|_| start_replica(free_port(), &args)).collect();
        let nginx = Nginx::start([replicas[0].addr, replicas[1].addr]);
        Cluster {
            nginx,
            replicas,
            args,
            _lock: lock,
        }
    }

    fn get(&self, path: &str) -> Response {
        try_request(self.nginx.addr, "GET", path, &[], b"").expect("through nginx")
    }

    /// SIGTERM to replica `i`, a fresh replica on its port once it has exited, and a wait
    /// until nginx sends it requests again (after `fail_timeout`).
    fn roll(&mut self, i: usize) -> Roll {
        let addr = self.replicas[i].addr;
        let signalled = Instant::now();
        self.replicas[i].terminate();
        let exit = wait_until(Duration::from_secs(20), || {
            self.replicas[i].child.try_wait().unwrap()
        })
        .expect("the replica did not exit within 20 s of SIGTERM");
        assert!(exit.success(), "{exit:?}: {}", self.replicas[i].log());
        let exited = signalled.elapsed();
        self.replicas[i] = start_replica(addr, &self.args);
        let ready = signalled.elapsed();
        let pid = u64::from(self.replicas[i].pid());
        let back = wait_until(Duration::from_secs(10), || {
            let status = try_request(self.nginx.addr, "GET", "/status", &[], b"").ok()?;
            (status.status == 200 && status.json()["pid"] == pid).then_some(())
        });
        assert!(back.is_some(), "nginx never sent to the fresh replica");
        Roll {
            exited,
            ready,
            in_rotation: signalled.elapsed(),
        }
    }
}

fn start_replica(addr: SocketAddr, args: &[String]) -> Server {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::with(&args).on(addr).start();
    server.wait_for_workers(1);
    server
}

/// A loopback port that was free a moment ago.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// nginx running `daemon off` as the current user, its files in a temp dir, serving the
/// shipped conf with the test's ports.
struct Nginx {
    /// The master process (`daemon off`).
    child: Child,
    /// Where it listens: the shipped `listen 80` with the test's port.
    addr: SocketAddr,
    /// Its confs, pid file, logs and temp files.
    dir: tempfile::TempDir,
}

impl Nginx {
    fn start(replicas: [SocketAddr; 2]) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let addr = free_port();
        let conf = dir.path().join("forkpool.conf");
        std::fs::write(&conf, shipped_conf_with(addr, replicas)).unwrap();
        write_main_conf(dir.path(), &conf);
        let child = nginx_command(dir.path()).spawn().expect("start nginx");
        let nginx = Nginx { child, addr, dir };
        let up = wait_until(Duration::from_secs(10), || TcpStream::connect(addr).ok());
        assert!(up.is_some(), "nginx did not listen:\n{}", nginx.error_log());
        nginx
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// Requests that nginx sent to `from` first and then to another replica, by method, from
    /// its access log (`$upstream_addr` lists every replica tried, comma-separated).
    fn retried_requests(&self, from: SocketAddr) -> HashMap<String, usize> {
        let log = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap();
        let mut retried = HashMap::new();
        for line in log.lines() {
            let fields: Vec<&str> = line.split('|').collect();
            if let [method, _, upstreams, _] = fields[..] {
                if upstreams.starts_with(&format!("{from}, ")) {
                    *retried.entry(method.to_owned()).or_default() += 1;
                }
            }
        }
        retried
    }
}

impl Drop for Nginx {
    /// SIGTERM is nginx's fast shutdown; its workers follow the master.
    fn drop(&mut self) {
        signal(self.child.id(), "TERM");
        if wait_until(Duration::from_secs(5), || self.child.try_wait().unwrap()).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The shipped conf with the test's public port and replica ports; each replaced text must
/// occur exactly once, so the test cannot drift from the file.
fn shipped_conf_with(listen: SocketAddr, replicas: [SocketAddr; 2]) -> String {
    let mut conf = std::fs::read_to_string(SHIPPED_CONF).unwrap();
    conf = replace_once(&conf, SHIPPED_LISTEN[0], &format!("listen {listen};"));
    conf = replace_once(&conf, SHIPPED_LISTEN[1], "");
    for (shipped, addr) in SHIPPED_REPLICAS.iter().zip(replicas) {
        conf = replace_once(&conf, shipped, &format!("server {addr} "));
    }
    conf
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "`{from}` must occur once");
    text.replacen(from, to, 1)
}

/// The main nginx.conf of a test instance: everything nginx would otherwise put in /var or
/// /run goes to `dir`, and `include` is the forkpool file. As root, `user root` keeps the
/// workers as the current user (nginx would switch them to `nobody`).
fn write_main_conf(dir: &Path, include: &Path) {
    let d = dir.display();
    let user = match rustix::process::geteuid().is_root() {
        true => "user root;",
        false => "",
    };
    let conf = format!(
        "daemon off;\n{user}\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\nevents {{ worker_connections 1024; }}\nhttp {{\n\
         log_format forkpool '$request_method|$status|$upstream_addr|$upstream_status';\n\
         access_log {d}/access.log forkpool;\n\
         client_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n\
         include {};\n}}\n",
        include.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
}

fn nginx_command(dir: &Path) -> Command {
    let mut command = Command::new("nginx");
    command
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    command
}

/// `KEY=value` lines of the shipped env file.
fn shipped_env() -> HashMap<String, String> {
    std::fs::read_to_string(ENV_FILE)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn parse_duration(text: &str) -> Duration {
    forkpool::units::parse_duration(text).unwrap()
}
