//! The `forkpool` binary: parses the command line and dispatches to the server, the hidden
//! worker mode, or the shell completion and man page printers (generated from the clap grammar,
//! so they cannot drift from the flags). Nothing else lives here but the choice of global
//! allocator. (The load tester is a program of its own, `forkpool-loadtest`.)
//!
//! `forkpool worker ...` is recognised by its first argument before clap runs, and its flags
//! are parsed by [`WorkerArgs::parse`]: a worker then touches little of the binary besides the
//! job code, which keeps its resident memory low (see `WorkerArgs`).

use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;

use anyhow::{bail, Context};
use clap::CommandFactory;
use forkpool::cli::{Cli, Command, Flags, Sources, WorkerArgs};
use forkpool::jobs::{IsPrimeJob, RequestIdLog};
use forkpool::pool::worker;
use forkpool::pool::Job;
use forkpool::server::{Listeners, Signals};
use forkpool::settings::Settings;
use forkpool::{app, logging, systemd};

/// A worker that runs out of memory exits with a code the server can name in its 502.
#[global_allocator]
static ALLOCATOR: worker::ExitOnOutOfMemory = worker::ExitOnOutOfMemory;

fn main() -> anyhow::Result<()> {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "worker") {
        return run_worker(WorkerArgs::parse(args.into_iter().skip(2))?);
    }
    let cli = Cli::load_from(args);
    match cli.command {
        None => serve(cli.flags),
        Some(Command::Completions { shell }) => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "forkpool", &mut script);
            print_out(&script)
        }
        Some(Command::Man) => print_out(&forkpool::cli::man_page()?),
    }
}

/// The worker mode: serves jobs of `args.kind` on stdin/stdout until EOF.
fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    logging::init(args.log_format);
    match args.kind.as_str() {
        IsPrimeJob::KIND => worker::run::<IsPrimeJob>(&args.settings(), &RequestIdLog)?,
        other => bail!("unknown job kind `{other}`"),
    }
    Ok(())
}

/// Writes a generated text to stdout. Generated into memory first, because clap_complete
/// panics on a failed write; this way `forkpool man | head` ends with an error, not a panic.
fn print_out(text: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text)
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")
}

fn serve(flags: Flags) -> anyhow::Result<()> {
    // SAFETY: no other thread exists yet (the runtime starts below).
    let passed =
        unsafe { systemd::take_listeners() }.unwrap_or_else(|e| start_error(e.to_string()));
    let sources = flags.sources.clone();
    let settings = flags
        .resolve()
        .unwrap_or_else(|e| start_error(e.to_string()));
    logging::init(settings.log_format);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the Tokio runtime")?;
    runtime.block_on(async {
        // Installed before anyone can know our address (see `Signals`).
        let signals = Signals::install().context("cannot install the signal handlers")?;
        let listeners = listeners(passed, &settings, &sources).await;
        if let Err(e) = app::serve(listeners, settings, signals).await {
            start_error(e.to_string());
        }
        Ok(())
    })
}

/// The sockets systemd (or a predecessor) passed, else those bound from `--listen` and
/// `--admin-listen`. A passed socket replaces its flag; an admin socket not passed is bound from
/// `--admin-listen` all the same, so that /metrics and /status never move to the public port.
async fn listeners(
    passed: Option<systemd::PassedListeners>,
    settings: &Settings,
    sources: &Sources,
) -> Listeners {
    let adopt = |listener| {
        tokio::net::TcpListener::from_std(listener)
            .unwrap_or_else(|e| start_error(format!("LISTEN_FDS: {e}")))
    };
    let (public, admin) = passed.map_or((None, None), |p| (Some(p.public), p.admin));
    Listeners {
        public: match public {
            Some(public) => adopt(public),
            None => bind("listen", settings.listen, sources).await,
        },
        admin: match (admin, settings.admin_listen) {
            (Some(admin), _) => Some(adopt(admin)),
            (None, Some(address)) => Some(bind("admin-listen", address, sources).await),
            (None, None) => None,
        },
    }
}

/// Listens on `address`, or exits with a start-up error naming the flag (its long name `flag`)
/// and where its value came from (the flag, an environment variable or the config file).
async fn bind(flag: &str, address: SocketAddr, sources: &Sources) -> tokio::net::TcpListener {
    match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(e) => start_error(format!(
            "--{flag} {address}{}: cannot listen: {e}",
            sources.from(flag)
        )),
    }
}

/// Settings that cannot start (address in use, bad `--ls-root`): exit code 2, like a
/// flag that does not parse, with the flag named in the message.
fn start_error(message: String) -> ! {
    eprintln!("error: {message}");
    std::process::exit(2)
}
