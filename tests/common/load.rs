//! Steady load for the tests that restart, upgrade or replace servers under it: closed-loop
//! clients that send a fixed mix of requests with a short pause, each on a fresh connection or
//! on one kept alive, and count every request that did not get its right answer.
//!
//! A kept-alive client reconnects only when an answer says `Connection: close`. A connection
//! closed under a request (reset, or closed before the answer) is a failure, not a retry: a
//! server that drains or hands over must never do that to a client that did nothing wrong.

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{read_framed_response, try_request, Response};

/// What the load clients send, in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    IsPrimeGet,
    IsPrimePost,
    TestRequest,
    /// `/ls` of the server's root, which must hold a file named [`LISTED`].
    Listing,
}

/// A file that the root listed by [`Kind::Listing`] holds.
pub const LISTED: &str = "listed-by-the-load";

impl Kind {
    /// The jobs and the event-loop probe: what any server or balancer in front of one serves.
    pub const ALL: [Kind; 3] = [Kind::IsPrimeGet, Kind::IsPrimePost, Kind::TestRequest];
    /// [`Kind::ALL`] and a listing.
    pub const MIXED: [Kind; 4] = [
        Kind::IsPrimeGet,
        Kind::IsPrimePost,
        Kind::TestRequest,
        Kind::Listing,
    ];

    /// Method, path, headers and body.
    fn request(
        self,
    ) -> (
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static [u8],
    ) {
        const JSON: &[(&str, &str)] = &[("content-type", "application/json")];
        match self {
            Kind::IsPrimeGet => ("GET", "/isprime?number=1000000007", &[], b""),
            Kind::IsPrimePost => (
                "POST",
                "/isprime",
                JSON,
                br#"{"number": "170141183460469231731687303715884105727"}"#,
            ),
            Kind::TestRequest => ("GET", "/testrequest", &[], b""),
            Kind::Listing => ("GET", "/ls?directory=.", &[], b""),
        }
    }

    /// `Err` says what is wrong with the answer (its status and body).
    fn judge(self, response: &Response) -> Result<(), String> {
        let answer = response.text();
        let good = match self {
            Kind::TestRequest => answer == "I am unblocked now",
            Kind::Listing => answer.starts_with("total ") && answer.contains(LISTED),
            Kind::IsPrimeGet | Kind::IsPrimePost => {
                serde_json::from_slice::<serde_json::Value>(&response.body)
                    .is_ok_and(|json| json["isPrime"] == true)
            }
        };
        match response.status == 200 && good {
            true => Ok(()),
            false => Err(format!("{} {}", response.status, answer.trim())),
        }
    }

    /// One request on a fresh connection; `Err` says what went wrong.
    fn send(self, addr: SocketAddr) -> Result<(), String> {
        let (method, path, headers, body) = self.request();
        let response = try_request(addr, method, path, headers, body)
            .map_err(|e| format!("connection: {e}"))?;
        self.judge(&response)
    }
}

/// How a client connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// A new connection per request (`Connection: close`).
    Fresh,
    /// One connection for as long as the server keeps it.
    KeptAlive,
}

/// A client's connection kept alive between requests.
struct KeptAlive {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
}

impl KeptAlive {
    /// One request on the kept connection (a new one if there is none); `Err` says what went
    /// wrong. The connection is dropped when the answer says `Connection: close`, or on error.
    fn send(&mut self, kind: Kind) -> Result<(), String> {
        let result = self.exchange(kind);
        let keep = matches!(&result, Ok(r) if !r.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")));
        if !keep {
            self.stream = None;
        }
        kind.judge(&result?)
    }

    fn exchange(&mut self, kind: Kind) -> Result<Response, String> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.addr).map_err(|e| format!("connect: {e}"))?;
            stream
                .set_read_timeout(Some(Duration::from_secs(60)))
                .map_err(|e| e.to_string())?;
            self.stream = Some(BufReader::new(stream));
        }
        let reader = self.stream.as_mut().expect("connected above");
        let (method, path, headers, body) = kind.request();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n",
            self.addr,
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let stream = reader.get_mut();
        stream
            .write_all(&[head.as_bytes(), body].concat())
            .map_err(|e| format!("kept-alive connection, write: {e}"))?;
        let raw =
            read_framed_response(reader).map_err(|e| format!("kept-alive connection: {e}"))?;
        Response::try_parse(&raw)
    }
}

/// Closed-loop clients, each sending its kinds in turn with a short pause.
pub struct Load {
    /// Set by `finish`: each client stops after its current request.
    stop: Arc<AtomicBool>,
    /// The client threads, each returning its own tally.
    clients: Vec<JoinHandle<Tally>>,
    /// When the load began, for the failures' timestamps and the rate.
    started: Instant,
    /// Requests answered successfully so far, by every client together.
    answered: Arc<AtomicU64>,
}

/// Outcomes of a load run.
#[derive(Default)]
pub struct Tally {
    /// Successful requests by kind.
    pub ok: HashMap<Kind, u64>,
    /// Each failed request: its kind, and when (from the start of the load) and how it failed.
    pub failed: Vec<(Kind, String)>,
    /// Length of the run.
    pub elapsed: Duration,
    /// Clients that ran.
    pub clients: usize,
}

impl Load {
    const PAUSE: Duration = Duration::from_millis(4);

    /// Four clients on fresh connections, sending [`Kind::ALL`].
    pub fn start(addr: SocketAddr) -> Load {
        Self::start_with(addr, &Kind::ALL, &[Connection::Fresh; 4])
    }

    /// Two clients on fresh connections and two on kept-alive ones, sending [`Kind::MIXED`].
    pub fn start_mixed(addr: SocketAddr) -> Load {
        use Connection::{Fresh, KeptAlive};
        Self::start_with(addr, &Kind::MIXED, &[Fresh, KeptAlive, Fresh, KeptAlive])
    }

    /// One client per entry of `connections`, each sending `kinds` in turn (client `i` from
    /// the `i`-th).
    pub fn start_with(
        addr: SocketAddr,
        kinds: &'static [Kind],
        connections: &[Connection],
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let clients = connections
            .iter()
            .enumerate()
            .map(|(i, &connection)| {
                let (stop, answered) = (stop.clone(), answered.clone());
                std::thread::spawn(move || {
                    run_client(addr, kinds, i, connection, &stop, &answered, started)
                })
            })
            .collect();
        Load {
            stop,
            clients,
            started,
            answered,
        }
    }

    /// Waits until the clients have had `n` more requests answered successfully than when
    /// called (a load under way, however slow the machine); panics after 60 s.
    pub fn wait_answered(&self, n: u64) {
        let target = self.answered.load(Ordering::Relaxed) + n;
        super::wait_until(Duration::from_secs(60), || {
            (self.answered.load(Ordering::Relaxed) >= target).then_some(())
        })
        .unwrap_or_else(|| panic!("the load got fewer than {n} answers in 60 s"));
    }

    pub fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally {
            elapsed: self.started.elapsed(),
            clients: self.clients.len(),
            ..Tally::default()
        };
        for client in self.clients {
            let tally = client.join().expect("load client panicked");
            for (kind, n) in tally.ok {
                *total.ok.entry(kind).or_default() += n;
            }
            total.failed.extend(tally.failed);
        }
        total
    }
}

/// One client's loop, until `stop`; each success also counts in `answered`.
fn run_client(
    addr: SocketAddr,
    kinds: &[Kind],
    first: usize,
    connection: Connection,
    stop: &AtomicBool,
    answered: &AtomicU64,
    started: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut kept = KeptAlive { addr, stream: None };
    for &kind in kinds.iter().cycle().skip(first) {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let result = match connection {
            Connection::Fresh => kind.send(addr),
            Connection::KeptAlive => kept.send(kind),
        };
        match result {
            Ok(()) => {
                *tally.ok.entry(kind).or_default() += 1;
                answered.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tally.failed.push((
                kind,
                format!("{e} ({connection:?}, at {:.2?})", started.elapsed()),
            )),
        }
        // The clients' pace, not a wait for an event.
        std::thread::sleep(Load::PAUSE);
    }
    tally
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        for kind in Kind::MIXED {
            let ok = self.ok.get(&kind).copied().unwrap_or(0);
            let failed = self.failed.iter().filter(|(k, _)| *k == kind).count();
            writeln!(f, "  {kind:<12?} ok {ok:>6}  failed {failed:>3}")?;
        }
        let ok: u64 = self.ok.values().sum();
        write!(
            f,
            "  all          ok {ok:>6}  failed {:>3}  in {secs:.1} s ({:.0} req/s, {} clients)",
            self.failed.len(),
            (ok as f64 + self.failed.len() as f64) / secs,
            self.clients
        )?;
        for (kind, failure) in self.failed.iter().take(10) {
            write!(f, "\n  failed {kind:?}: {failure}")?;
        }
        if self.failed.len() > 10 {
            write!(f, "\n  ... and {} more", self.failed.len() - 10)?;
        }
        Ok(())
    }
}
