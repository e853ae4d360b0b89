//! Shared by the integration tests: start the real `forkpool` binary on 127.0.0.1 port 0, talk
//! HTTP/1.1 to it over plain sockets, and look at its processes in /proc.
//!
//! The client is deliberately tiny and blocking: tests must be able to do what real clients do
//! badly (hang up mid-response, read chunk by chunk), which a full client library hides.

// The test files are modules of one crate (tests/integration.rs) that reach these items as
// `common::...`: `pub` is this module's interface to them, and `pub(crate)` on each would say
// the same thing again.
#![allow(unreachable_pub)]

pub mod app;
pub mod load;

pub use app::App;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_forkpool");

/// A running server. Killed (SIGKILL) and reaped on drop; its workers die with it.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The `--admin-listen` address, when one was asked for.
    pub admin: Option<SocketAddr>,
    /// Everything the server (and its workers) wrote to stderr so far.
    pub log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `forkpool --listen 127.0.0.1:0 ARGS...` and waits until it is ready (a worker
    /// said hello). Anything else: [`Server::with`].
    pub fn start(args: &[&str]) -> Server {
        Server::with(args).start()
    }

    /// A server to start with `args` and the options of [`Launch`].
    pub fn with<'a>(args: &[&'a str]) -> Launch<'a> {
        Launch {
            program: BIN.as_ref(),
            args: args.to_vec(),
            env: Vec::new(),
            listen: "127.0.0.1:0".to_owned(),
            until: Until::Ready,
            nofile: None,
            bound_by_permissions: false,
            cgroup: None,
            one_cpu: false,
            idle_workers: false,
        }
    }

    fn launch_until(mut command: Command, until: Until) -> Server {
        let wants_admin = command.get_args().any(|a| a == "--admin-listen");
        let mut child = command.spawn().expect("start forkpool");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (addr, admin, mut stdout) = match until {
            Until::Ready => ready_addresses(stdout, wants_admin, &log),
            Until::Accepting => {
                let find = |listener| accepting_address(&log, listener);
                (find("public"), wants_admin.then(|| find("admin")), stdout)
            }
        };
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        Server {
            child,
            addr,
            admin,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The value of the /metrics sample `family{outcome="OUTCOME"}`, 0 while it is absent.
    pub fn outcome_count(&self, family: &str, outcome: &str) -> u64 {
        let metrics = self.get("/metrics").text();
        let sample = format!("{family}{{outcome=\"{outcome}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&sample)?.parse().ok())
            .unwrap_or(0)
    }

    /// A GET on the `--admin-listen` address; panics if there is none.
    pub fn get_admin(&self, path: &str) -> Response {
        let admin = self.admin.expect("the server has an admin listener");
        try_request(admin, "GET", path, &[], b"").unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Sends a request and returns the open connection, for tests that read slowly or hang up.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> TcpStream {
        send_to(self.addr, method, path, headers, body).expect("connect and send")
    }

    /// POSTs a primality job for `number` and returns the open connection, unread: drop it to
    /// hang up, or read it for the answer.
    pub fn send_job(&self, number: &str) -> TcpStream {
        let body = format!("{{\"number\": \"{number}\"}}");
        self.send(
            "POST",
            "/isprime",
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
    }

    /// Children of the server, zombies included: its workers and any `ls`.
    pub fn children(&self) -> Vec<Proc> {
        children_of(self.pid())
    }

    /// Pids of the server's worker processes (the real binary, or a fake `forkpool-*` script).
    pub fn worker_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .children()
            .into_iter()
            .filter(|p| p.name.starts_with("forkpool") && p.state != 'Z')
            .map(|p| p.pid)
            .collect();
        pids.sort_unstable();
        pids
    }

    /// Waits until exactly `n` workers are up and idle per /status, the same pids as /proc
    /// shows, so that counts are exact; panics after 20 s. Returns their pids, sorted.
    pub fn wait_for_workers(&self, n: usize) -> Vec<u32> {
        wait_until(Duration::from_secs(20), || {
            let rows = status(self)["workers"].as_array()?.clone();
            let mut pids: Vec<u32> = rows
                .iter()
                .filter(|w| w["state"] == "idle")
                .filter_map(|w| w["pid"].as_u64())
                .map(|p| p as u32)
                .collect();
            pids.sort_unstable();
            (rows.len() == n && pids.len() == n && self.worker_pids() == pids).then_some(pids)
        })
        .unwrap_or_else(|| {
            panic!(
                "{n} idle workers did not come up: /status {}, children {:?}",
                status(self)["workers"],
                self.children()
            )
        })
    }

    /// Waits up to `limit` for the server process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_until(limit, || self.child.try_wait().expect("try_wait"))
    }

    /// Asserts that within 20 s no child of the server is a zombie: every worker or `ls` that
    /// ended was reaped.
    pub fn assert_no_zombies(&self) {
        let reaped = wait_until(Duration::from_secs(20), || {
            let zombies = self.children().into_iter().filter(|p| p.state == 'Z');
            (zombies.count() == 0).then_some(())
        });
        assert!(reaped.is_some(), "zombies: {:?}", self.children());
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        signal(self.pid(), "TERM");
    }

    /// The captured stderr so far.
    ///
    /// A thread copies stderr into it, so a line written before a response was sent may still
    /// be in the pipe when the response arrives: to assert on a line, use `wait_for_log`.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits up to 10 s until the captured log satisfies `ready`, and returns it; panics with
    /// the log and `what` otherwise.
    pub fn wait_for_log(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        wait_until(Duration::from_secs(10), || {
            let log = self.log();
            ready(&log).then_some(log)
        })
        .unwrap_or_else(|| panic!("no {what} in the log:\n{}", self.log()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a test sends requests to: the real binary over a socket ([`Server`]) or the router in
/// the test process ([`App`]). A helper that only reads answers takes `&impl Http`, so one
/// helper serves tests of both kinds.
pub trait Http {
    /// One request, its response read to the end; panics when there is none.
    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response;

    /// `GET path`, no body.
    fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    /// `POST path` with `body` as `application/json`.
    fn post_json(&self, path: &str, body: &str) -> Response {
        let json = [("content-type", "application/json")];
        self.request("POST", path, &json, body.as_bytes())
    }
}

impl Http for Server {
    /// On a fresh connection (`Connection: close`).
    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        try_request(self.addr, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }
}

/// How a test starts a server: [`Server::with`], the options below, then [`Launch::start`].
pub struct Launch<'a> {
    /// The binary: `forkpool` as built, unless [`Launch::program`] names a copy.
    program: &'a std::ffi::OsStr,
    /// Flags after `--listen`.
    args: Vec<&'a str>,
    /// Environment added (`RUST_LOG` is removed unless given).
    env: Vec<(&'a str, &'a str)>,
    /// `--listen`: a free port unless [`Launch::on`].
    listen: String,
    /// What `start` waits for.
    until: Until,
    /// `RLIMIT_NOFILE` (soft and hard) of the server, if set.
    nofile: Option<u64>,
    /// Whether root's permission-bypassing capabilities are dropped.
    bound_by_permissions: bool,
    /// The `cgroup.procs` of a cgroup the server joins before it execs, if any.
    cgroup: Option<std::ffi::CString>,
    /// Whether the server's affinity mask is cut down to one CPU before it execs.
    one_cpu: bool,
    /// Whether the workers keep the binary's default class, SCHED_IDLE (see
    /// [`Launch::idle_workers`]).
    idle_workers: bool,
}

/// The environment variable every test's server gets unless the test asks otherwise: workers
/// in the normal scheduling class (a flag or the test's own environment overrides it). On a
/// machine busy with other work (CI, a shared 2-core box, the busy loops of the README's
/// flakiness check) a worker in the binary's default class, SCHED_IDLE, gets almost no CPU,
/// and a job the test waits for, such as `slow_prime`, took minutes instead of a second, past
/// the client's read timeout. Servers a test launches without [`Launch`] set it themselves.
pub const WORKERS_IN_NORMAL_CLASS: (&str, &str) = ("FORKPOOL_WORKER_SCHED", "other");

impl<'a> Launch<'a> {
    /// Adds `env` to the server's environment.
    pub fn env(mut self, env: &[(&'a str, &'a str)]) -> Self {
        self.env.extend_from_slice(env);
        self
    }

    /// Runs `program`, a copy of the binary installed elsewhere, instead of the build.
    pub fn program(mut self, program: &'a std::path::Path) -> Self {
        self.program = program.as_os_str();
        self
    }

    /// Listens on `addr`, e.g. a replica restarted on the port its load balancer knows.
    pub fn on(mut self, addr: SocketAddr) -> Self {
        self.listen = addr.to_string();
        self
    }

    /// Waits only until the server accepts connections, not until it is ready: for a server
    /// whose workers may never say hello.
    pub fn unready(mut self) -> Self {
        self.until = Until::Accepting;
        self
    }

    /// Sets the server's descriptor limit (soft and hard `RLIMIT_NOFILE`), as `prlimit --nofile`
    /// would.
    pub fn nofile_limit(mut self, limit: u64) -> Self {
        self.nofile = Some(limit);
        self
    }

    /// Makes file permissions bind the server even when the tests run as root:
    /// CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (which let root read any directory) leave the
    /// bounding set before exec, so the server, its workers and `ls` never get them.
    pub fn bound_by_permissions(mut self) -> Self {
        self.bound_by_permissions = true;
        self
    }

    /// Leaves the workers in the binary's default scheduling class, SCHED_IDLE. Without this,
    /// a test's server runs them in the normal class ([`WORKERS_IN_NORMAL_CLASS`]).
    pub fn idle_workers(mut self) -> Self {
        self.idle_workers = true;
        self
    }

    /// Makes the server a member of the cgroup whose `cgroup.procs` is `procs` before it execs,
    /// so that every worker it starts is in the cgroup too.
    pub fn in_cgroup(mut self, procs: &std::path::Path) -> Self {
        let procs = std::ffi::CString::new(procs.as_os_str().as_encoded_bytes()).unwrap();
        self.cgroup = Some(procs);
        self
    }

    /// Pins the server (and so its workers) to one CPU, the first it may use now, as `taskset`
    /// would: its affinity mask holds that CPU alone.
    pub fn on_one_cpu(mut self) -> Self {
        self.one_cpu = true;
        self
    }

    /// Starts the server and waits for what [`Launch::unready`] says.
    pub fn start(self) -> Server {
        use std::os::unix::process::CommandExt;
        let args = [&["--listen", self.listen.as_str()], &self.args[..]].concat();
        let mut env = self.env.clone();
        if !self.idle_workers
            && !env
                .iter()
                .any(|(name, _)| *name == WORKERS_IN_NORMAL_CLASS.0)
        {
            env.insert(0, WORKERS_IN_NORMAL_CLASS);
        }
        let mut command = command_of(self.program, &args, &env);
        let (nofile, bound, cgroup) = (self.nofile, self.bound_by_permissions, self.cgroup);
        let one_cpu = self.one_cpu;
        if nofile.is_some() || bound || cgroup.is_some() || one_cpu {
            // SAFETY: between fork and exec this only makes setrlimit, prctl, open, write and
            // sched_{get,set}affinity system calls on memory allocated before the fork or on
            // the stack, which neither allocate nor take locks.
            unsafe {
                command.pre_exec(move || {
                    limit_child(nofile, bound, cgroup.as_deref())?;
                    if one_cpu {
                        pin_to_one_cpu()?;
                    }
                    Ok(())
                })
            };
        }
        Server::launch_until(command, self.until)
    }
}

/// In the child, before exec: its affinity mask cut down to the first CPU in it.
fn pin_to_one_cpu() -> std::io::Result<()> {
    use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};
    let allowed = sched_getaffinity(None)?;
    let first = (0..CpuSet::MAX_CPU).find(|&cpu| allowed.is_set(cpu));
    let mut one = CpuSet::new();
    one.set(first.expect("a process may use at least one CPU"));
    sched_setaffinity(None, &one)?;
    Ok(())
}

/// In the child, before exec: the descriptor limit, root's capabilities dropped, the cgroup
/// joined (by writing `0`, the writer itself, to its `cgroup.procs`).
fn limit_child(
    nofile: Option<u64>,
    bound_by_permissions: bool,
    cgroup: Option<&std::ffi::CStr>,
) -> std::io::Result<()> {
    use rustix::process::{setrlimit, Resource, Rlimit};
    use rustix::thread::{remove_capability_from_bounding_set, CapabilitySet};
    if let Some(limit) = nofile {
        let rlimit = Rlimit {
            current: Some(limit),
            maximum: Some(limit),
        };
        setrlimit(Resource::Nofile, rlimit)?;
    }
    if bound_by_permissions && rustix::process::geteuid().is_root() {
        remove_capability_from_bounding_set(CapabilitySet::DAC_OVERRIDE)?;
        remove_capability_from_bounding_set(CapabilitySet::DAC_READ_SEARCH)?;
    }
    if let Some(procs) = cgroup {
        use rustix::fs::{Mode, OFlags};
        let file = rustix::fs::open(procs, OFlags::WRONLY, Mode::empty())?;
        rustix::io::write(&file, b"0")?;
    }
    Ok(())
}

/// What a test waits for when it starts a server.
enum Until {
    /// Ready: a worker said hello, and stdout says `listening on http://ADDR`.
    Ready,
    /// Accepting connections: the log says `accepting on http://ADDR`.
    Accepting,
}

/// The addresses in the `listening on` lines a ready server prints; panics (with the log) if
/// they do not come within 30 s: a server that never becomes ready is started with
/// `Server::with(..).unready()`.
fn ready_addresses(
    stdout: BufReader<std::process::ChildStdout>,
    wants_admin: bool,
    log: &Mutex<String>,
) -> (
    SocketAddr,
    Option<SocketAddr>,
    BufReader<std::process::ChildStdout>,
) {
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut stdout = stdout;
        let mut read = || {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("read listening line");
            line
        };
        let addr = listening_address(&read(), "listening on http://");
        let admin = wants_admin.then(|| listening_address(&read(), "admin listening on http://"));
        let _ = sender.send((addr, admin, stdout));
    });
    lines
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("not ready within 30 s:\n{}", log.lock().unwrap()))
}

/// The address of `listener` (`public` or `admin`) in the log's `accepting on http://ADDR`
/// line, in either log format; waits up to 20 s for it.
fn accepting_address(log: &Mutex<String>, listener: &str) -> SocketAddr {
    let found = wait_until(Duration::from_secs(20), || {
        let log = log.lock().unwrap();
        log.lines()
            .filter(|l| {
                l.contains(&format!("listener=\"{listener}\""))
                    || l.contains(&format!("\"listener\":\"{listener}\""))
            })
            .find_map(|l| l.split("accepting on http://").nth(1))
            .and_then(|rest| rest.split([' ', '"']).next()?.parse().ok())
    });
    found.unwrap_or_else(|| {
        panic!(
            "no `accepting on` line for {listener} in:\n{}",
            log.lock().unwrap()
        )
    })
}

/// The address in a `listening on http://ADDR` line that starts with `prefix`.
fn listening_address(line: &str, prefix: &str) -> SocketAddr {
    line.trim()
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
        .parse()
        .expect("address")
}

/// Sends one request on a fresh connection (`Connection: close`) to any HTTP server (forkpool,
/// or nginx in front of it) and returns the connection, unread. A 60 s read timeout bounds a
/// test that would otherwise hang.
pub fn send_to(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.write_all(&request_bytes(addr, method, path, headers, body))?;
    Ok(stream)
}

/// [`send_to`], then reads the response to the end. An error, not a panic, when the
/// connection fails or no complete response head arrives: load tests count those.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut stream = send_to(addr, method, path, headers, body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    match raw.windows(4).any(|w| w == b"\r\n\r\n") {
        true => Ok(Response::parse(&raw)),
        false => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("no response head in {} bytes", raw.len()),
        )),
    }
}

/// `forkpool ARGS` with `env` added (and `RUST_LOG` removed unless given), stdout and stderr
/// piped.
fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    command_of(BIN.as_ref(), args, env)
}

/// [`command`] for another copy of the binary, at `program`.
fn command_of(program: &std::ffi::OsStr, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(program);
    command
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs `forkpool ARGS` that is expected to exit on its own (a start-up error, `--help`);
/// kills it and panics if it still runs after 20 s. Returns (exit code, stdout, stderr).
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut child = command(args, env).spawn().expect("start forkpool");
    if wait_until(Duration::from_secs(20), || child.try_wait().unwrap()).is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("forkpool {args:?} did not exit");
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// One HTTP/1.1 request as sent on the wire: `Connection: close`, a `Content-Length` for `body`,
/// then `headers`.
pub fn request_bytes(
    host: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Panics, naming the tool and how to get it, unless `program ARG` runs and exits 0. The tests
/// that call this are `#[ignore]`d (a machine without the tool says so instead of passing);
/// `.ci/run` installs every such tool and runs them.
pub fn require_tool(program: &str, arg: &str) {
    let runs = Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        runs,
        "`{program} {arg}` does not run: install it (`.ci/run` does)"
    );
}

/// Held by every test that starts a pool in this process (`in_process_state` holds it while
/// the pool starts), so that a test that looks for the thread its own pool started finds
/// only that one: the tests of every file share one process.
pub static POOL_THREADS: Mutex<()> = Mutex::new(());

/// The state of a server built from parts in the test process, as `app::build` builds one:
/// the settings the binary resolves from `flags` (with the connection cap in force; the
/// listen addresses stay as given, since nothing is bound), a pool whose workers are `worker`, `/ls` on
/// the settings' root, the process-wide recorder. Call it inside a Tokio runtime; a handler is
/// then called with `routes::routers(state).public` and `tower::ServiceExt::oneshot`.
pub fn in_process_state(flags: &[&str], worker: &str) -> forkpool::routes::state::AppState {
    use forkpool::routes::state::AppState;
    let args = [&["forkpool"], flags].concat();
    let cli = <forkpool::cli::Cli as clap::Parser>::try_parse_from(args).unwrap();
    let settings = cli.flags.resolve().unwrap();
    // The cap in force, as `app::build` sets it, so that /status shows what the binary's does.
    // (It raises this process's soft descriptor limit to the hard one, as the binary does.)
    let cap = forkpool::server::connection_cap(&settings).unwrap();
    let settings = forkpool::settings::Settings {
        max_connections: Some(cap),
        ..settings
    };
    // Before the pool: it registers metric handles, which need the recorder in place.
    let metrics = forkpool::telemetry::recorder();
    let pool = {
        let _alone = POOL_THREADS.lock().unwrap_or_else(|e| e.into_inner());
        forkpool::app::start_pool(&settings, worker.into()).unwrap()
    };
    let limits = forkpool::app::ls_limits(&settings);
    let ls = forkpool::routes::ls::Ls::open(&settings.ls_root, limits).unwrap();
    AppState::from_parts(settings, pool, ls, metrics)
}

/// Sends a signal by name with `kill(1)`, e.g. `signal(pid, "KILL")`.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// A parsed HTTP/1.1 response (chunked bodies are decoded).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// False when a chunked body ended without its final zero-size chunk, or a body is shorter
    /// than its `Content-Length`.
    pub complete: bool,
}

impl Response {
    /// Parses a response; panics, showing the bytes, when it is not one.
    pub fn parse(raw: &[u8]) -> Response {
        Self::try_parse(raw).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Parses a response, or says why the bytes are not one (no head end, no status line).
    /// A body shorter than its `Content-Length`, or a chunked body without its last chunk,
    /// parses with `complete` false.
    pub fn try_parse(raw: &[u8]) -> Result<Response, String> {
        let shown = || String::from_utf8_lossy(&raw[..raw.len().min(300)]).into_owned();
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| format!("no header end in {:?}", shown()))?;
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|line| line.strip_prefix("HTTP/1.1 "))
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("no HTTP/1.1 status line in {:?}", shown()))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let rest = &raw[split + 4..];
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        let declared = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        let (body, complete) = match (chunked, declared) {
            (true, _) => dechunk(rest),
            (false, Some(length)) => (rest.to_vec(), rest.len() >= length),
            (false, None) => (rest.to_vec(), true),
        };
        Ok(Response {
            status,
            headers,
            body,
            complete,
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }

    /// Asserts the service's error shape: JSON `{"error": "...", "code": "...", "status": N}`
    /// with status N and one of the documented codes, whose status is N. Returns the message.
    pub fn assert_error(&self, status: u16) -> String {
        self.assert_error_code(status).0
    }

    /// [`Response::assert_error`], returning the message and the code.
    pub fn assert_error_code(&self, status: u16) -> (String, String) {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"));
        let json = self.json();
        assert_eq!(json["status"], status, "{json}");
        assert_eq!(json.as_object().map(|o| o.len()), Some(3), "{json}");
        let message = json["error"].as_str().expect("error message").to_owned();
        assert!(!message.is_empty());
        let code = json["code"].as_str().expect("error code");
        let known = forkpool::error::ErrorCode::ALL
            .iter()
            .find(|c| c.as_str() == code)
            .unwrap_or_else(|| panic!("unknown code {code:?}: {json}"));
        assert_eq!(known.status().as_u16(), status, "{json}");
        (message, code.to_owned())
    }
}

fn dechunk(mut data: &[u8]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        let Some(end) = data.windows(2).position(|w| w == b"\r\n") else {
            return (body, false);
        };
        let size_text = String::from_utf8_lossy(&data[..end]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
        else {
            return (body, false);
        };
        data = &data[end + 2..];
        if size == 0 {
            return (body, true);
        }
        if data.len() < size + 2 {
            body.extend_from_slice(&data[..data.len().min(size)]);
            return (body, false);
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// A process as seen in /proc/PID/stat.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    /// Its process group.
    pub pgrp: u32,
    pub state: char,
    pub name: String,
}

pub fn proc_info(pid: u32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat[open + 1..close].to_owned();
    let mut rest = stat[close + 2..].split(' ');
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    let pgrp = rest.next()?.parse().ok()?;
    Some(Proc {
        pid,
        ppid,
        pgrp,
        state,
        name,
    })
}

/// All processes whose parent is `parent`, zombies included.
pub fn children_of(parent: u32) -> Vec<Proc> {
    processes().filter(|p| p.ppid == parent).collect()
}

/// Every process in /proc.
pub fn processes() -> impl Iterator<Item = Proc> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(proc_info)
}

/// Resident memory of `pid` in KiB (VmRSS, as `ps` shows it), or 0 once it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS").unwrap_or(0)
}

/// The `field` of `/proc/PID/status` in KiB (`VmRSS`, `RssAnon`...), or `None` once `pid` is
/// gone.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Descriptors `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    proc_info(pid).is_some_and(|p| p.state != 'Z')
}

/// A file under the temp dir named `{prefix}XXXXXX{suffix}`, holding `text`, closed (so that it
/// can be executed) and removed on drop.
pub fn temp_file(prefix: &str, suffix: &str, text: &str) -> tempfile::TempPath {
    let mut file = tempfile::Builder::new()
        .prefix(prefix)
        .suffix(suffix)
        .tempfile()
        .expect("create a temporary file");
    file.write_all(text.as_bytes())
        .expect("write a temporary file");
    file.into_temp_path()
}

/// Writes `text` to `path` as an executable (mode 755), through a child (`sh -c 'cat > ...'`)
/// so that the test process itself never has the file open for writing. The tests of this
/// binary start servers from several threads at once, and a child forked while another thread
/// held the file open keeps that descriptor (close-on-exec, but open until the child's exec):
/// meanwhile running the file fails with ETXTBSY, "Text file busy". That failed an upgrade test
/// in the 20-run check (README, Testing); a worker or `ls` script would fail the same way.
pub fn write_executable(path: &std::path::Path, text: &[u8]) {
    let mut writer = Command::new("sh")
        .args(["-c", r#"cat > "$0" && chmod 755 "$0""#])
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()
        .expect("start sh to write an executable");
    let mut stdin = writer.stdin.take().unwrap();
    stdin.write_all(text).expect("write an executable");
    drop(stdin);
    assert!(writer.wait().unwrap().success(), "cannot write {path:?}");
}

/// A script in a new temporary file named `prefix`, a unique part and `suffix`, written by
/// [`write_executable`]; removed when dropped.
pub fn temp_executable(prefix: &str, suffix: &str, text: &str) -> tempfile::TempPath {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{}-{n}{suffix}", std::process::id());
    let path = std::env::temp_dir().join(name);
    write_executable(&path, text.as_bytes());
    tempfile::TempPath::try_from_path(path).expect("an absolute path")
}

/// The server's /status, which must answer 200.
pub fn status(server: &Server) -> serde_json::Value {
    // With `--admin-listen`, /status is served there only.
    let response = match server.admin {
        Some(_) => server.get_admin("/status"),
        None => server.get("/status"),
    };
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

/// (job id, worker pid) of every busy worker per /status.
pub fn busy_jobs(server: &Server) -> Vec<(u64, u32)> {
    status(server)["workers"]
        .as_array()
        .expect("/status lists workers")
        .iter()
        .filter(|w| w["state"] == "busy")
        .filter_map(|w| Some((w["job"].as_u64()?, w["pid"].as_u64()? as u32)))
        .collect()
}

/// Waits until `pid` is gone or a zombie; panics after 30 s.
pub fn wait_gone(pid: u32) {
    wait_until(Duration::from_secs(30), || (!alive(pid)).then_some(()))
        .unwrap_or_else(|| panic!("{pid} still alive after 30 s: {:?}", proc_info(pid)));
}

/// Waits until `pid` sleeps in `write` on a full pipe (its wait channel is `pipe_write`), as
/// a child whose output nobody reads ends up doing; panics after 30 s.
pub fn wait_writing_to_full_pipe(pid: u32) {
    let wchan = || std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    wait_until(Duration::from_secs(30), || {
        wchan().contains("pipe_write").then_some(())
    })
    .unwrap_or_else(|| panic!("{pid} never blocked on a full pipe: wchan {:?}", wchan()));
}

/// A fake `isprime` worker (for `--worker-program`) that answers "prime" to every job, but
/// holds the jobs the test says until the test releases them: a job in flight for exactly as
/// long as the test needs, on any machine. (A real `slow_prime` job takes a second on an idle
/// machine and many on a loaded one, and a test cannot know which.) Jobs are answered in the
/// order the worker reads them, so a held job also holds the jobs behind it in its batch.
pub struct HeldWorker {
    /// The script, named `forkpool-held-*` so that [`Server::worker_pids`] counts it. A job
    /// for N waits while `SCRIPT.hold-K` (K: N's first 16 digits) or `SCRIPT.hold-all` exists.
    script: tempfile::TempPath,
}

impl HeldWorker {
    /// Holds every job until [`HeldWorker::release`].
    pub fn new() -> HeldWorker {
        let held = HeldWorker::holding(&[]);
        held.hold_all();
        held
    }

    /// Holds every job from now on, as [`HeldWorker::new`] does, until the next release.
    pub fn hold_all(&self) {
        self.hold("all");
    }

    /// Holds the jobs for each of `numbers` until [`HeldWorker::release_number`]; answers the
    /// others at once.
    pub fn holding(numbers: &[&str]) -> HeldWorker {
        let hello = format!(
            r#"{{\"hello\":{{\"protocol\":{},\"version\":\"{}\",\"pid\":$$,\"kind\":\"isprime\"}}}}"#,
            forkpool::pool::PROTOCOL_VERSION,
            env!("CARGO_PKG_VERSION")
        );
        let script = format!(
            r#"#!/bin/sh
echo "{hello}"
while read -r line; do
  id=${{line#*\"id\":}}; id=${{id%%,*}}
  n=${{line#*\"n\":\"}}; n=$(printf '%s' "${{n%%\"*}}" | cut -c1-16)
  while [ -e "$0.hold-all" ] || [ -e "$0.hold-$n" ]; do sleep 0.01; done
  echo "{{\"id\":$id,\"ms\":0.1,\"ok\":{{\"is_prime\":true,\"method\":\"deterministic\"}}}}"
done
"#
        );
        let script = temp_executable("forkpool-held-", ".sh", &script);
        let held = HeldWorker { script };
        numbers.iter().for_each(|n| held.hold(n));
        held
    }

    /// The path to give `--worker-program`.
    pub fn program(&self) -> &str {
        self.script.to_str().expect("a UTF-8 temporary path")
    }

    /// Lets every job that [`HeldWorker::new`] holds be answered, now and later.
    pub fn release(&self) {
        self.release_number("all");
    }

    /// Lets the jobs for `number` be answered, now and later.
    pub fn release_number(&self, number: &str) {
        std::fs::remove_file(self.hold_file(number)).expect("release a held number");
    }

    fn hold(&self, number: &str) {
        std::fs::write(self.hold_file(number), "").expect("hold a number");
    }

    /// The file that holds `number`'s jobs: named by its first 16 digits, as the script
    /// reads them (a whole `slow_prime` would be too long a file name).
    fn hold_file(&self, number: &str) -> std::path::PathBuf {
        let key = &number[..number.len().min(16)];
        format!("{}.hold-{key}", self.script.display()).into()
    }
}

impl Drop for HeldWorker {
    /// Removes the hold files still there.
    fn drop(&mut self) {
        let prefix = format!("{}.hold-", self.script.display());
        let dir = self.script.parent().expect("a temporary directory");
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.path().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Polls `check` every 20 ms until it returns `Some`, or gives up after `limit`.
pub fn wait_until<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The Mersenne number 2^p - 1 in decimal.
pub use forkpool::prime::mersenne;

/// A prime whose test keeps a worker busy for a good while (around a second or more), to catch
/// it mid-job: the Mersenne prime 2^21701 - 1 (6533 digits).
pub fn slow_prime() -> String {
    mersenne(21701)
}

/// SplitMix64 (Steele, Lea & Flood 2014): a tiny deterministic PRNG, so that a randomised test
/// can print its seed and be replayed.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0; the modulo bias is negligible for small `n`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A duration between `low` and `high`.
    pub fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let span = (high - low).as_micros() as u64;
        low + Duration::from_micros(self.below(span + 1))
    }

    /// One of `items` (not empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Reads one response off a kept-alive connection, framed by its `Content-Length` or its
/// chunks, and returns its bytes; what came before the server closed if it was cut short.
pub fn read_framed_response(reader: &mut impl BufRead) -> Result<Vec<u8>, String> {
    let mut raw = Vec::new();
    while !raw.ends_with(b"\r\n\r\n") {
        match reader.read_until(b'\n', &mut raw) {
            Ok(0) if raw.is_empty() => return Err("closed without an answer".into()),
            Ok(0) => return Ok(raw),
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse::<u64>().ok());
    match (length, head.contains("transfer-encoding: chunked")) {
        (Some(length), _) => take(reader, length, &mut raw).map(|_| raw),
        (None, true) => read_chunks(reader, &mut raw).map(|()| raw),
        (None, false) => Err(format!("a response without framing: {head}")),
    }
}

/// Appends the chunks of a chunked body to `raw`, up to and with the last one.
fn read_chunks(reader: &mut impl BufRead, raw: &mut Vec<u8>) -> Result<(), String> {
    loop {
        let start = raw.len();
        if reader.read_until(b'\n', raw).unwrap_or(0) == 0 {
            return Ok(());
        }
        let line = String::from_utf8_lossy(&raw[start..]).trim().to_owned();
        let size = u64::from_str_radix(&line, 16).map_err(|_| format!("chunk size {line:?}"))?;
        // The data and its CRLF; the last (empty) chunk has just the CRLF (no trailers here).
        if !take(reader, size + 2, raw)? || size == 0 {
            return Ok(());
        }
    }
}

/// Appends `n` bytes from `reader` to `raw`; false if the connection ended first.
fn take(reader: &mut impl BufRead, n: u64, raw: &mut Vec<u8>) -> Result<bool, String> {
    let read = reader.by_ref().take(n).read_to_end(raw);
    match read {
        Ok(got) => Ok(got as u64 == n),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Err("no answer before the read timeout: the server hangs".into())
        }
        Err(_) => Ok(false),
    }
}
