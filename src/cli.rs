//! The command line, for the binary only (nothing else in the crate imports it): flags, env
//! vars and the config file, resolved into [`Settings`].
//!
//! Every serve flag can also come from an env var `FORKPOOL_<NAME>` or from a TOML file named by
//! `--config`. Precedence is flag > env > file > default. The file is merged by turning each of
//! its keys into the matching `--flag value` and parsing again, but only for flags that still
//! hold their default; that way a file value is checked by exactly the same parser (and gets the
//! same error message) as the flag, and there is one source of truth for names and defaults.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::jobs::IsPrimeJob;
use crate::logging::LogFormat;
use crate::pool::worker::WorkerSettings;
use crate::routes::MAX_REQUEST_ID_LEN;
use crate::settings::{Settings, WorkerSched};
use crate::units::{parse_duration, parse_positive_duration, parse_size};

/// The whole command line: serve flags at the top level, or a subcommand.
#[derive(Debug, Parser)]
#[command(name = "forkpool", version, about, long_about = None, after_long_help = UNITS)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub flags: Flags,
}

/// How durations and sizes are written: at the end of `--help`, and a section of the man page.
const UNITS: &str = "\
Durations: a number and a unit, ms, s, m or h (`500ms`, `10s`, `2m`), several of them from the
largest unit down (`1m30s`, `1h 15m`), or a number alone for seconds.

Sizes: a number of bytes (`4096`), or a number and a unit: KiB, MiB, GiB, TiB for powers of
1024 (`512MiB`), kB, MB, GB, TB for powers of 1000 (`500MB`); K, M, G alone are refused as
ambiguous.";

/// The subcommands people run. (`forkpool worker ...`, which only the server runs, is not one
/// of them: `main` hands it to [`WorkerArgs::parse`] before clap sees the command line.)
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Prints a shell completion script on stdout (e.g. `forkpool completions bash`).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Prints the man page (roff) on stdout: `forkpool man > forkpool.1; man ./forkpool.1`.
    Man,
}

/// The serve flags as given; [`Flags::resolve`] turns them into the [`Settings`] in force.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct Flags {
    /// Address to listen on; port 0 picks a free port (printed as `listening on http://...` once
    /// a worker is up and the server ready).
    #[arg(long, env = "FORKPOOL_LISTEN", default_value = "127.0.0.1:3636")]
    pub listen: SocketAddr,

    /// Number of worker processes [default: available cores].
    #[arg(long, env = "FORKPOOL_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,

    /// Jobs that may wait for a worker; beyond that a request gets 503 with Retry-After.
    #[arg(long, env = "FORKPOOL_QUEUE", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue: u32,

    /// Deadline of one job, queue wait plus run time (e.g. `60s`, `500ms`, `1m30s`); more than
    /// zero.
    #[arg(long, env = "FORKPOOL_JOB_TIMEOUT", default_value = "60s", value_parser = parse_positive_duration)]
    pub job_timeout: Duration,

    /// Log a job still running this long after it started on its worker (once, at warn, with
    /// what the worker is doing) and count it; it runs on to its deadline. Below
    /// `--job-timeout`; 0 means off.
    #[arg(long, env = "FORKPOOL_JOB_SLOW", default_value = "0s", value_parser = parse_duration)]
    pub job_slow: Duration,

    /// Largest protocol line (job or reply), e.g. `1MiB` (1,048,576 bytes) or `1MB`
    /// (1,000,000); a worker that sends more is replaced.
    #[arg(long, env = "FORKPOOL_MAX_LINE", default_value = "1MiB", value_parser = parse_size)]
    pub max_line: u64,

    /// Largest number /isprime accepts, in decimal digits (leading zeros not counted).
    #[arg(long, env = "FORKPOOL_MAX_DIGITS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_digits: u32,

    /// Retire a worker after about this many jobs (±10% jitter); 0 means never.
    #[arg(long, env = "FORKPOOL_MAX_JOBS_PER_WORKER", default_value_t = 0)]
    pub max_jobs_per_worker: u64,

    /// Retire a worker whose resident memory is above this after a job (e.g. `512MiB`), once
    /// its replacement is up; 0 means never.
    #[arg(long, env = "FORKPOOL_MAX_RSS_PER_WORKER", default_value = "0", value_parser = parse_size)]
    pub max_rss_per_worker: u64,

    /// Most light jobs (numbers below 2^64) sent to one worker at once; 1 sends each alone.
    #[arg(long, env = "FORKPOOL_MAX_BATCH", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_batch: u32,

    /// Address-space limit of each worker (RLIMIT_AS), e.g. `1GiB` (2^30 bytes) or `2GB`
    /// (2*10^9); 0 means no limit.
    #[arg(long, env = "FORKPOOL_WORKER_MEMORY", default_value = "1GiB", value_parser = parse_size)]
    pub worker_memory: u64,

    /// Nice value of the workers. It sets their CPU share under `--worker-sched other`; under
    /// `idle` the class alone decides, and the value only shows in `ps` and `top`.
    #[arg(long, env = "FORKPOOL_WORKER_NICE", default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub worker_nice: i32,

    /// Scheduling class of the workers: `idle` (SCHED_IDLE: they run only on CPU time nothing
    /// else wants, and yield it at once) or `other` (the normal class, at `--worker-nice`; use
    /// it on a machine shared with other busy programs, where idle workers could starve).
    #[arg(long, env = "FORKPOOL_WORKER_SCHED", value_enum, default_value_t = WorkerSched::Idle)]
    pub worker_sched: WorkerSched,

    /// Program started as a worker [default: this executable].
    #[arg(long, env = "FORKPOOL_WORKER_PROGRAM")]
    pub worker_program: Option<PathBuf>,

    /// After this many failed worker starts in a row with no worker alive (a deleted or broken
    /// program, no memory left), `/readyz` answers 503 with the reason and jobs are refused at
    /// once (503) instead of waiting for their deadline; starts go on with backoff, and the
    /// first that succeeds clears it.
    #[arg(long, env = "FORKPOOL_WORKER_START_FAILURES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub worker_start_failures: u32,

    /// Directory that /ls is confined to [default: the working directory at start-up].
    #[arg(long, env = "FORKPOOL_LS_ROOT")]
    pub ls_root: Option<PathBuf>,

    /// Time limit of one whole /ls listing; more than zero.
    #[arg(long, env = "FORKPOOL_LS_TIMEOUT", default_value = "60s", value_parser = parse_positive_duration)]
    pub ls_timeout: Duration,

    /// Kill an `ls` that has written nothing for this long (from its start, then between two
    /// outputs), under the whole `--ls-timeout`; a listing that keeps writing is never cut by
    /// it. 0 means off.
    #[arg(long, env = "FORKPOOL_LS_IDLE_TIMEOUT", default_value = "0s", value_parser = parse_duration)]
    pub ls_idle_timeout: Duration,

    /// Most `ls` processes running at once; beyond that a request gets 503 with Retry-After.
    #[arg(long, env = "FORKPOOL_LS_MAX_CONCURRENT", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub ls_max_concurrent: u32,

    /// On SIGINT/SIGTERM, time for in-flight requests and jobs to finish before workers are killed.
    #[arg(long, env = "FORKPOOL_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// On SIGINT/SIGTERM, keep serving (jobs included) for this long with /readyz at 503 and
    /// `Connection: close` on every response, so that a load balancer sees the drain and stops
    /// reusing connections before the listener closes.
    #[arg(long, env = "FORKPOOL_SHUTDOWN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,

    /// On SIGUSR2 (in-place upgrade), how long the new server may take to be ready (a worker of
    /// its own said hello) before it is killed and this one keeps serving.
    #[arg(long, env = "FORKPOOL_UPGRADE_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub upgrade_timeout: Duration,

    /// Write the pid of the server that is serving to this file once it is ready; after a
    /// SIGUSR2 upgrade, the new server rewrites it. Removed at exit by the server it names.
    #[arg(long, env = "FORKPOOL_PID_FILE")]
    pub pid_file: Option<PathBuf>,

    /// Close a connection that has not sent a complete request head within this time, counted
    /// from the accept or, on a kept-alive connection, from the first byte of the next request.
    #[arg(long, env = "FORKPOOL_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub header_timeout: Duration,

    /// Close a kept-alive connection idle for this long between requests; 0 turns keep-alive off.
    #[arg(long, env = "FORKPOOL_KEEPALIVE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,

    /// Answer 408 and close the connection when a request body has not arrived in full within
    /// this time of the handler starting to read it.
    #[arg(long, env = "FORKPOOL_BODY_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub body_timeout: Duration,

    /// Close a connection whose response write has made no progress for this long: the client
    /// stopped reading (nginx's `send_timeout`).
    #[arg(long, env = "FORKPOOL_SEND_TIMEOUT", default_value = "60s", value_parser = parse_positive_duration)]
    pub send_timeout: Duration,

    /// Most client connections held at once on `--listen` [default: 1024, less if
    /// RLIMIT_NOFILE leaves less room]. At the cap the oldest idle kept-alive connection is
    /// closed to admit a new one; with none idle, new connections wait in the listen backlog.
    #[arg(long, env = "FORKPOOL_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,

    /// Serve `/metrics` and `/status` only on this address (the public port answers them 404);
    /// `/healthz` and `/readyz` answer on both. Set it when `--listen` faces untrusted clients.
    #[arg(long, env = "FORKPOOL_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// Log format on stderr.
    #[arg(long, env = "FORKPOOL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// TOML file with any of these flags as keys (e.g. `workers = 4`, `job-timeout = "30s"`).
    #[arg(long, env = "FORKPOOL_CONFIG")]
    pub config: Option<PathBuf>,

    /// Where the values that did not come from a flag came from (an environment variable, a
    /// key of the `--config` file), so that a message about a value names its source. Not a
    /// flag; filled by [`Cli::load_from`].
    #[arg(skip)]
    pub sources: Sources,
}

/// Where a setting's value came from, when not from its flag; keyed by the flag's long name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources(std::collections::BTreeMap<String, String>);

impl Sources {
    /// ` (from the environment variable FORKPOOL_LS_ROOT)` or ` (from key `ls-root` of FILE)`
    /// for `ls-root` (a flag's long name), to follow the flag and its value in a message; empty
    /// when the value came from the flag itself or is the default.
    pub fn from(&self, flag: &str) -> String {
        match self.0.get(flag) {
            Some(source) => format!(" (from {source})"),
            None => String::new(),
        }
    }
}

/// A setting that cannot be resolved, or two that contradict each other; the message names
/// every flag involved, and for a value that did not come from its flag, the environment
/// variable or config file key it came from.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("--ls-root {path}{from}: {source}", path = path.display(), from = sources.from("ls-root"))]
    LsRoot {
        /// The root as given.
        path: PathBuf,
        /// Where its value came from, for the message.
        sources: Sources,
        /// Why it cannot be made canonical.
        source: std::io::Error,
    },
    #[error(
        "--max-line {max_line} is too small for --max-digits {max_digits}: the job line of the \
         largest number takes up to {needed} bytes, so such numbers would kill their worker; \
         raise --max-line to at least {needed} or lower --max-digits"
    )]
    LineTooShort {
        /// `--max-line`, in bytes.
        max_line: u64,
        /// `--max-digits`.
        max_digits: u32,
        /// The longest job line under `--max-digits`.
        needed: u64,
    },
    #[error(
        "--shutdown-delay {delay:?} is not shorter than --shutdown-grace {grace:?}: the grace \
         counts from the signal and includes the delay, so requests still in flight when the \
         listener closes would get no time to finish; raise --shutdown-grace above the delay"
    )]
    DelayOutlastsGrace {
        /// `--shutdown-delay`.
        delay: Duration,
        /// `--shutdown-grace`.
        grace: Duration,
    },
    #[error("--admin-listen {0} is also the --listen address; give the admin listener its own")]
    SameAddress(SocketAddr),
    #[error(
        "--job-slow {slow:?} must be below --job-timeout {timeout:?}: a job is killed at its \
         deadline, so it would never be logged as slow"
    )]
    JobSlow {
        /// `--job-slow`.
        slow: Duration,
        /// `--job-timeout`.
        timeout: Duration,
    },
}

/// `forkpool worker ...`: the flags the server passes to a worker it starts. Built by
/// [`WorkerArgs::for_server`], spelled by [`WorkerArgs::to_args`] and parsed back by
/// [`WorkerArgs::parse`], side by side so that the two cannot drift apart (a test round-trips
/// them).
///
/// Parsed by hand, not by clap: every worker the server starts (one per slot, again after each
/// crash or recycle) would otherwise build the grammar of the whole command line (every serve
/// flag, its env var, the subcommands) and run clap's parser over it, and the code and heap
/// that touches stay resident in the worker for its whole life (issue 11: idle RSS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerArgs {
    /// Which job type to serve (`Job::KIND`); `--kind`, required.
    pub kind: String,
    /// The server's pid; the worker exits at once if its parent is someone else.
    /// `--parent-pid`, required.
    pub parent_pid: i32,
    /// Address-space limit in bytes; 0 means none. `--memory`, default 0.
    pub memory: u64,
    /// Nice value to run at. `--nice`, default 0.
    pub nice: i32,
    /// Scheduling class to run in. `--sched`, default `other`.
    pub sched: WorkerSched,
    /// Largest job line accepted, in bytes. `--max-line`, default 1 MiB.
    pub max_line: u64,
    /// Log format on stderr (the server's own). `--log-format`, default `text`.
    pub log_format: LogFormat,
}

/// Why the flags of `forkpool worker` do not parse. Only a worker started by hand can see one:
/// the server spells the flags with [`WorkerArgs::to_args`].
#[derive(Debug, thiserror::Error)]
pub enum WorkerArgsError {
    #[error("forkpool worker: unknown flag `{0}`")]
    Unknown(String),
    #[error("forkpool worker: {0} needs a value")]
    NoValue(String),
    #[error("forkpool worker: {flag} {value:?}: {reason}")]
    BadValue {
        flag: String,
        value: String,
        reason: String,
    },
    #[error("forkpool worker: {0} is required")]
    Missing(&'static str),
    #[error("forkpool worker: argument {0:?} is not UTF-8")]
    NotUtf8(OsString),
}

impl WorkerArgs {
    /// The flags of a worker for job type `kind`, started by this process under `config`.
    pub fn for_server(settings: &Settings, kind: &str) -> WorkerArgs {
        WorkerArgs {
            kind: kind.to_owned(),
            parent_pid: std::process::id() as i32,
            memory: settings.worker_memory,
            nice: settings.worker_nice,
            sched: settings.worker_sched,
            max_line: settings.max_line,
            log_format: settings.log_format,
        }
    }

    /// The command line after the program: `worker --kind ... --parent-pid ...`.
    pub fn to_args(&self) -> Vec<String> {
        /// The command-line spelling of a clap value enum.
        fn flag(value: impl ValueEnum) -> String {
            let value = value.to_possible_value().expect("no variant is skipped");
            value.get_name().to_owned()
        }
        [
            "worker",
            "--kind",
            &self.kind,
            "--parent-pid",
            &self.parent_pid.to_string(),
            "--memory",
            &self.memory.to_string(),
            "--nice",
            &self.nice.to_string(),
            "--sched",
            &flag(self.sched),
            "--max-line",
            &self.max_line.to_string(),
            "--log-format",
            &flag(self.log_format),
        ]
        .map(String::from)
        .to_vec()
    }

    /// Parses the flags after `worker` (`--flag value` pairs, as [`WorkerArgs::to_args`] spells
    /// them, in any order). `--kind` and `--parent-pid` are required; the others default to
    /// [`WorkerSettings::new`]'s values, the `other` class and text logs, so that a worker
    /// started by hand needs only the two.
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<WorkerArgs, WorkerArgsError> {
        let defaults = WorkerSettings::new(0);
        let (mut kind, mut parent_pid) = (None, None);
        let mut parsed = WorkerArgs {
            kind: String::new(),
            parent_pid: defaults.parent_pid,
            memory: defaults.memory,
            nice: defaults.nice,
            sched: WorkerSched::Other,
            max_line: defaults.max_line,
            log_format: LogFormat::Text,
        };
        let mut args = args
            .into_iter()
            .map(|a| a.into_string().map_err(WorkerArgsError::NotUtf8));
        while let Some(flag) = args.next().transpose()? {
            let Some(value) = args.next().transpose()? else {
                return Err(WorkerArgsError::NoValue(flag));
            };
            match flag.as_str() {
                "--kind" => kind = Some(value),
                "--parent-pid" => parent_pid = Some(worker_value(&flag, &value, str::parse)?),
                "--memory" => parsed.memory = worker_value(&flag, &value, str::parse)?,
                "--nice" => parsed.nice = worker_value(&flag, &value, str::parse)?,
                "--sched" => parsed.sched = worker_value(&flag, &value, choice)?,
                "--max-line" => parsed.max_line = worker_value(&flag, &value, str::parse)?,
                "--log-format" => parsed.log_format = worker_value(&flag, &value, choice)?,
                _ => return Err(WorkerArgsError::Unknown(flag)),
            }
        }
        parsed.kind = kind.ok_or(WorkerArgsError::Missing("--kind"))?;
        parsed.parent_pid = parent_pid.ok_or(WorkerArgsError::Missing("--parent-pid"))?;
        Ok(parsed)
    }

    /// What the pool's worker side needs of these flags.
    pub fn settings(&self) -> WorkerSettings {
        WorkerSettings {
            parent_pid: self.parent_pid,
            memory: self.memory,
            nice: self.nice,
            sched: self.sched.into(),
            max_line: self.max_line,
        }
    }
}

/// One worker flag's value through `parse`, or an error naming the flag and the value.
fn worker_value<T, E: std::fmt::Display>(
    flag: &str,
    value: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, WorkerArgsError> {
    parse(value).map_err(|reason| WorkerArgsError::BadValue {
        flag: flag.to_owned(),
        value: value.to_owned(),
        reason: reason.to_string(),
    })
}

/// A value-enum flag's value, spelled as [`WorkerArgs::to_args`] spells it.
fn choice<T: ValueEnum>(value: &str) -> Result<T, String> {
    T::from_str(value, false)
}

impl Flags {
    /// The settings in force: the worker count from the cores when not given, `--ls-root`
    /// (default: the working directory) made canonical, so that it must exist. Flags that
    /// contradict each other are refused (see `Config::check_pairs`).
    pub fn resolve(self) -> Result<Settings, ResolveError> {
        self.check_pairs()?;
        let workers = self.workers.map(usize::from).unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        let sources = &self.sources;
        let root = match self.ls_root {
            Some(root) => root,
            None => std::env::current_dir().map_err(|source| ResolveError::LsRoot {
                path: ".".into(),
                sources: sources.clone(),
                source,
            })?,
        };
        let ls_root = root.canonicalize().map_err(|source| ResolveError::LsRoot {
            path: root,
            sources: sources.clone(),
            source,
        })?;
        Ok(Settings {
            listen: self.listen,
            workers,
            queue: self.queue,
            job_timeout: self.job_timeout,
            job_slow: self.job_slow,
            max_line: self.max_line,
            max_digits: self.max_digits,
            max_jobs_per_worker: self.max_jobs_per_worker,
            max_rss_per_worker: self.max_rss_per_worker,
            max_batch: self.max_batch as usize,
            worker_memory: self.worker_memory,
            worker_nice: self.worker_nice,
            worker_sched: self.worker_sched,
            worker_program: self.worker_program,
            worker_start_failures: self.worker_start_failures,
            ls_root,
            ls_timeout: self.ls_timeout,
            ls_idle_timeout: self.ls_idle_timeout,
            ls_max_concurrent: self.ls_max_concurrent,
            shutdown_grace: self.shutdown_grace,
            shutdown_delay: self.shutdown_delay,
            upgrade_timeout: self.upgrade_timeout,
            pid_file: self.pid_file,
            header_timeout: self.header_timeout,
            keepalive_timeout: self.keepalive_timeout,
            body_timeout: self.body_timeout,
            send_timeout: self.send_timeout,
            max_connections: self.max_connections,
            admin_listen: self.admin_listen,
            log_format: self.log_format,
            config: self.config,
        })
    }
}

impl Flags {
    /// Refuses the flags that contradict each other, each of which would otherwise give a
    /// server that starts but cannot do what it was told:
    /// - `--max-line` below the job line of a `--max-digits` number: the worker refuses the
    ///   line and dies, so such numbers get 502, and `/readyz` stays 503 if even the hello
    ///   does not fit.
    /// - `--shutdown-delay` not shorter than `--shutdown-grace` (when there is a delay): the
    ///   grace is over when the listener closes, so every request in flight is cut off.
    /// - `--admin-listen` on the `--listen` address: the second bind fails.
    fn check_pairs(&self) -> Result<(), ResolveError> {
        let needed = IsPrimeJob::max_line_bytes(self.max_digits, MAX_REQUEST_ID_LEN);
        if self.max_line < needed {
            return Err(ResolveError::LineTooShort {
                max_line: self.max_line,
                max_digits: self.max_digits,
                needed,
            });
        }
        let (delay, grace) = (self.shutdown_delay, self.shutdown_grace);
        if !delay.is_zero() && delay >= grace {
            return Err(ResolveError::DelayOutlastsGrace { delay, grace });
        }
        let (slow, timeout) = (self.job_slow, self.job_timeout);
        if !slow.is_zero() && slow >= timeout {
            return Err(ResolveError::JobSlow { slow, timeout });
        }
        match self.admin_listen {
            Some(admin) if admin == self.listen && admin.port() != 0 => {
                Err(ResolveError::SameAddress(admin))
            }
            _ => Ok(()),
        }
    }
}

impl Cli {
    /// Parses `args` (the process arguments, program name first), merging `--config FILE`
    /// under flags and env vars. Errors (a bad flag, an unknown key in the file) print and exit
    /// with code 2, as clap does; a bad value names where it came from (the flag, the
    /// environment variable, or the file and its key).
    pub fn load_from(args: Vec<OsString>) -> Cli {
        let matches = matches_or_exit(&args);
        let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        let mut sources = environment_sources(&matches);
        let Some(path) = cli.flags.config.clone().filter(|_| cli.command.is_none()) else {
            cli.flags.sources = Sources(sources);
            return cli;
        };
        let mut args = args;
        let label = format!("--config {}{}", path.display(), Sources(sources.clone()).from("config"));
        match file_args(&path, &label, &matches) {
            Ok(extra) => {
                for (key, arg) in extra {
                    sources.insert(key.clone(), format!("key `{key}` of {}", path.display()));
                    args.push(arg);
                }
            }
            Err(message) => Cli::command()
                .error(clap::error::ErrorKind::InvalidValue, message)
                .exit(),
        }
        let matches = matches_or_exit(&args);
        let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        cli.flags.sources = Sources(sources);
        cli
    }
}

/// `forkpool man`: the man page (roff), generated from the clap grammar by clap_mangen, with
/// each option's environment variable, then two sections of ours before VERSION: UNITS (how
/// durations and sizes are written) and ENVIRONMENT (every `FORKPOOL_*` variable with its flag,
/// the precedence, and the other variables the server reads).
pub fn man_page() -> std::io::Result<Vec<u8>> {
    // Without the after-help text, which clap_mangen would render as a section named EXTRA.
    let command = Cli::command().after_long_help(None::<&str>);
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut page)?;
    let mut sections = format!(".SH UNITS\n{}\n", roff_text(UNITS));
    sections.push_str(".SH ENVIRONMENT\n");
    sections.push_str(&roff_text(
        "Every option can also be set by its environment variable and, but for --config \
         itself, by its key in the --config file: an option beats its variable, a variable \
         beats the file, and the file beats the default.",
    ));
    sections.push('\n');
    for arg in command.get_arguments() {
        let (Some(variable), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        let variable = variable.to_string_lossy();
        sections.push_str(&format!(
            ".TP\n\\fB{}\\fR\n{}\n",
            roff_text(&variable),
            roff_text(&format!("Same as --{long}."))
        ));
    }
    for (names, meaning) in [
        (
            &["RUST_LOG"][..],
            "The log level and filters (default: info).",
        ),
        (
            &["LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID"][..],
            "Listening sockets passed by systemd (socket activation) or by the server that \
             started this one on SIGUSR2; a passed socket replaces --listen (or, named admin, \
             --admin-listen).",
        ),
        (
            &["NOTIFY_SOCKET", "WATCHDOG_USEC"][..],
            "systemd's readiness notification and watchdog.",
        ),
    ] {
        let names: Vec<String> = names
            .iter()
            .map(|name| format!("\\fB{}\\fR", roff_text(name)))
            .collect();
        sections.push_str(&format!(
            ".TP\n{}\n{}\n",
            names.join(", "),
            roff_text(meaning)
        ));
    }
    let at = find(&page, b"\n.SH VERSION").map_or(page.len(), |i| i + 1);
    page.splice(at..at, sections.into_bytes());
    Ok(page)
}

/// Plain text as roff: `-` and `\\` escaped, no line starting with a control character, an
/// empty line a new paragraph.
fn roff_text(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    escaped
        .lines()
        .map(|line| match line {
            "" => ".PP".to_owned(),
            line if line.starts_with(['.', '\'']) => format!("\\&{line}"),
            line => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The grammar without its environment variables: what the command line alone says.
fn command_without_env() -> clap::Command {
    Cli::command().mut_args(|arg| arg.env(None::<&'static str>))
}

/// Parses `args`, or exits as clap does (code 2). A bad value that came from an environment
/// variable (the flag itself is not on the command line) is reported with the variable named:
/// clap's own message names only the flag.
fn matches_or_exit(args: &[OsString]) -> ArgMatches {
    let error = match Cli::command().try_get_matches_from(args) {
        Ok(matches) => return matches,
        Err(error) => error,
    };
    let from_env = || {
        let flag = invalid_flag(&error)?;
        let command = Cli::command();
        let arg = command.get_arguments().find(|a| a.get_long() == Some(flag))?;
        let variable = arg.get_env()?.to_string_lossy().into_owned();
        // Without the environment the command line parses: the bad value is the variable's.
        command_without_env().try_get_matches_from(args).ok()?;
        Some(attributed(
            &error,
            &format!("the environment variable {variable}"),
        ))
    };
    match from_env() {
        Some(message) => Cli::command().error(error.kind(), message).exit(),
        None => error.exit(),
    }
}

/// The long name of the flag whose value a clap error is about (`workers` for
/// `invalid value 'x' for '--workers <WORKERS>'`).
fn invalid_flag(error: &clap::Error) -> Option<&str> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        error.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation | ErrorKind::InvalidUtf8
    ) {
        return None;
    }
    let ContextValue::String(arg) = error.get(ContextKind::InvalidArg)? else {
        return None;
    };
    arg.split_whitespace().next()?.strip_prefix("--")
}

/// The variables that set a value (their flags not given): flag's long name -> description.
fn environment_sources(matches: &ArgMatches) -> std::collections::BTreeMap<String, String> {
    let command = Cli::command();
    command
        .get_arguments()
        .filter(|arg| matches.value_source(arg.get_id().as_str()) == Some(ValueSource::EnvVariable))
        .filter_map(|arg| {
            let variable = arg.get_env()?.to_string_lossy();
            Some((
                arg.get_long()?.to_owned(),
                format!("the environment variable {variable}"),
            ))
        })
        .collect()
}

/// Turns each key of the TOML file into `--key=value`, for flags not set by flag or env;
/// returns each with its key.
///
/// Keys are the long flag names (`job-timeout`, not `job_timeout`). Every value is checked by
/// its flag's own parser, also when a flag or env var overrides it: a file with a bad value is
/// wrong whatever else is set, and the message names the file, the key and the flag.
///
/// `label` names the file in messages about the whole file: `--config FILE`, and where that
/// came from when not from the flag.
fn file_args(
    path: &std::path::Path,
    label: &str,
    matches: &ArgMatches,
) -> Result<Vec<(String, OsString)>, String> {
    let file = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {label}: {e}"))?;
    let table: toml::Table = text.parse().map_err(|e| format!("{label}: {e}"))?;
    let command = Cli::command();
    let mut args = Vec::new();
    for (key, value) in table {
        let flags = || file_flags(&command);
        let Some(arg) = flags().find(|a| a.get_long() == Some(key.as_str())) else {
            let kebab = key.replace('_', "-");
            let hint = match flags().any(|a| a.get_long() == Some(kebab.as_str())) {
                true => format!(" (did you mean `{kebab}`?)"),
                false => String::new(),
            };
            return Err(format!("{label}: unknown key `{key}`{hint}"));
        };
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(format!(
                    "{label}: key `{key}` must be a string or a number, not {}",
                    other.type_str()
                ))
            }
        };
        // `--key=value` in one word, so that a value starting with `-` is not taken for a flag.
        let flag = format!("--{key}={value}");
        if let Err(e) = command_without_env().try_get_matches_from(["forkpool", flag.as_str()]) {
            return Err(attributed(&e, &format!("key `{key}` of {file}")));
        }
        let id = arg.get_id().as_str();
        if matches!(
            matches.value_source(id),
            None | Some(ValueSource::DefaultValue)
        ) {
            args.push((key, flag.into()));
        }
    }
    Ok(args)
}

/// The flags that a `--config` file may set: every top-level flag but `--config` itself.
fn file_flags(command: &clap::Command) -> impl Iterator<Item = &clap::Arg> {
    command
        .get_arguments()
        .filter(|a| a.get_long().is_some() && a.get_id() != "config")
}

/// A clap error about a value, as clap words it but without its `error: ` prefix and its
/// closing `For more information` line, with ` (from SOURCE)` after the flag it names:
/// `invalid value 'x' for '--workers <WORKERS>' (from the environment variable
/// FORKPOOL_WORKERS): invalid digit found in string`. The lines after the first (the possible
/// values of an enum, a tip) are kept.
fn attributed(error: &clap::Error, source: &str) -> String {
    use clap::error::{ContextKind, ContextValue};
    let text = error.render().to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    let text = match text.rfind("\n\nFor more information") {
        Some(end) => &text[..end],
        None => text.trim_end(),
    };
    let from = format!(" (from {source})");
    match error.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) if text.contains(&format!("'{arg}'")) => {
            let quoted = format!("'{arg}'");
            text.replacen(&quoted, &format!("{quoted}{from}"), 1)
        }
        _ => match text.split_once('\n') {
            Some((first, rest)) => format!("{first}{from}\n{rest}"),
            None => format!("{text}{from}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("forkpool-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn file_error(name: &str, text: &str) -> String {
        let path = temp_file(name, text);
        let matches = Cli::command().get_matches_from(["forkpool"]);
        let result = file_args(&path, "--config FILE", &matches);
        std::fs::remove_file(&path).unwrap();
        result.expect_err("the file should be refused")
    }

    #[test]
    fn config_file_errors_name_the_key_and_the_flag() {
        let e = file_error("unknown", "wrkers = 3\n");
        assert!(e.contains("unknown key `wrkers`"), "{e}");
        let e = file_error("snake", "job_timeout = \"5s\"\n");
        assert!(
            e.contains("`job_timeout`") && e.contains("did you mean `job-timeout`"),
            "{e}"
        );
        let e = file_error("config", "config = \"other.toml\"\n");
        assert!(e.contains("unknown key `config`"), "{e}");
        let e = file_error("many", "workers = \"many\"\n");
        assert!(
            e.contains("key `workers` of ") && e.contains("'--workers <WORKERS>' (from key"),
            "{e}"
        );
        // An enum's possible values are kept.
        let e = file_error("sched", "worker-sched = \"fast\"\n");
        assert!(e.contains("[possible values: other, idle]"), "{e}");
        let e = file_error("negative", "workers = -1\n");
        assert!(
            e.contains("key `workers`") && e.contains("--workers"),
            "{e}"
        );
        let e = file_error("array", "workers = [1]\n");
        assert!(e.contains("key `workers`") && e.contains("array"), "{e}");
        let e = file_error("syntax", "workers = \n");
        assert!(e.contains("--config"), "{e}");
    }

    #[test]
    fn worker_flags_parse_back_to_what_the_server_passed() {
        let cli =
            Cli::try_parse_from(["forkpool", "--worker-sched", "other", "--worker-nice", "3"])
                .unwrap();
        let args = WorkerArgs::for_server(&cli.flags.resolve().unwrap(), "isprime");
        let line = args.to_args();
        assert_eq!(line[0], "worker");
        let parsed = WorkerArgs::parse(line[1..].iter().map(OsString::from)).unwrap();
        assert_eq!(parsed, args);
        assert_eq!((parsed.nice, parsed.sched), (3, WorkerSched::Other));
    }

    /// The error `forkpool ARGS` resolves to, as the message printed at start.
    fn resolve_error(args: &[&str]) -> String {
        let cli = Cli::try_parse_from([&["forkpool"], args].concat()).unwrap();
        cli.flags.resolve().expect_err("refused").to_string()
    }

    #[test]
    fn flags_that_contradict_each_other_are_refused_naming_both() {
        let needed = IsPrimeJob::max_line_bytes(250, MAX_REQUEST_ID_LEN);
        let short = (needed - 1).to_string();
        let e = resolve_error(&["--max-line", &short, "--max-digits", "250"]);
        assert!(
            e.contains("--max-line") && e.contains("--max-digits") && e.contains(&needed.to_string()),
            "{e}"
        );
        let e = resolve_error(&["--max-digits", "2000000"]);
        assert!(e.contains("--max-line 1048576"), "the default is too short: {e}");
        let e = resolve_error(&["--shutdown-delay", "10s", "--shutdown-grace", "10s"]);
        assert!(e.contains("--shutdown-delay") && e.contains("--shutdown-grace"), "{e}");
        let e = resolve_error(&["--listen", "127.0.0.1:3636", "--admin-listen", "127.0.0.1:3636"]);
        assert!(e.contains("--admin-listen") && e.contains("--listen"), "{e}");
        // At the limits, and where the flags do not meet, they are accepted.
        let fits = needed.to_string();
        for args in [
            &["--max-line", &fits, "--max-digits", "250"][..],
            &["--shutdown-delay", "0s", "--shutdown-grace", "0s"],
            &["--shutdown-delay", "9s", "--shutdown-grace", "10s"],
            &["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        ] {
            let cli = Cli::try_parse_from([&["forkpool"], args].concat()).unwrap();
            assert!(cli.flags.resolve().is_ok(), "{args:?}");
        }
    }

    fn parse_worker(args: &[&str]) -> Result<WorkerArgs, String> {
        WorkerArgs::parse(args.iter().map(OsString::from)).map_err(|e| e.to_string())
    }

    #[test]
    fn a_hand_started_worker_needs_only_its_kind_and_parent() {
        let parsed = parse_worker(&["--parent-pid", "7", "--kind", "isprime"]).unwrap();
        let defaults = WorkerSettings::new(7);
        assert_eq!((parsed.kind.as_str(), parsed.parent_pid), ("isprime", 7));
        assert_eq!(
            (parsed.memory, parsed.nice, parsed.max_line),
            (defaults.memory, defaults.nice, defaults.max_line)
        );
        assert_eq!(
            (parsed.sched, parsed.log_format),
            (WorkerSched::Other, LogFormat::Text)
        );
    }

    #[test]
    fn bad_worker_flags_are_refused_with_the_flag_named() {
        let e = parse_worker(&["--kind", "isprime"]).unwrap_err();
        assert!(e.contains("--parent-pid is required"), "{e}");
        let e = parse_worker(&["--parent-pid", "1"]).unwrap_err();
        assert!(e.contains("--kind is required"), "{e}");
        let e = parse_worker(&["--kind", "isprime", "--parent-pid", "x"]).unwrap_err();
        assert!(e.contains("--parent-pid \"x\""), "{e}");
        let e = parse_worker(&["--kind", "isprime", "--parent-pid", "1", "--sched", "fast"]);
        assert!(e.unwrap_err().contains("--sched \"fast\""));
        let e = parse_worker(&["--kind", "isprime", "--parent-pid", "1", "--color", "no"]);
        assert!(e.unwrap_err().contains("unknown flag `--color`"));
        let e = parse_worker(&["--kind", "isprime", "--parent-pid"]).unwrap_err();
        assert!(e.contains("--parent-pid needs a value"), "{e}");
    }

    #[test]
    fn flags_beat_the_config_file_and_the_file_beats_defaults() {
        let path = temp_file("merge", "workers = 1\njob-timeout = \"5s\"\nqueue = 7\n");
        let cli = Cli::load_from(
            ["forkpool", "--queue", "9", "--config"]
                .iter()
                .map(OsString::from)
                .chain([path.clone().into_os_string()])
                .collect(),
        );
        std::fs::remove_file(&path).unwrap();
        assert_eq!(cli.flags.workers, Some(1));
        assert_eq!(cli.flags.job_timeout, Duration::from_secs(5));
        assert_eq!(cli.flags.queue, 9);
        assert_eq!(cli.flags.max_digits, 10_000);
    }

    /// The example file, read through `--config` exactly as an operator would use it.
    const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/forkpool.example.toml");

    fn load(args: &[&str]) -> Cli {
        Cli::load_from(args.iter().map(OsString::from).collect())
    }

    #[test]
    fn the_example_config_loads_to_exactly_the_defaults() {
        // Checked first so that a bad key fails with its message, not with clap's exit(2).
        let matches = Cli::command().get_matches_from(["forkpool"]);
        file_args(std::path::Path::new(EXAMPLE), EXAMPLE, &matches)
            .expect("the example should parse");
        let mut example = load(&["forkpool", "--config", EXAMPLE]).flags;
        assert_eq!(example.config, Some(PathBuf::from(EXAMPLE)));
        assert_eq!(
            example.sources.from("queue"),
            format!(" (from key `queue` of {EXAMPLE})")
        );
        example.config = None;
        example.sources = Sources::default();
        assert_eq!(example, load(&["forkpool"]).flags);
    }

    #[test]
    fn the_example_config_names_every_flag_and_its_commented_out_values_parse() {
        let text = std::fs::read_to_string(EXAMPLE).unwrap();
        // `key = value` lines, active or commented out (`# key = value`), without the `# `.
        let settings: Vec<&str> = text
            .lines()
            .map(|line| line.strip_prefix("# ").unwrap_or(line))
            .filter(|line| {
                line.split_once(" = ")
                    .is_some_and(|(key, _)| key.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
            })
            .collect();
        let keys: std::collections::BTreeSet<&str> = settings
            .iter()
            .filter_map(|line| Some(line.split_once(" = ")?.0))
            .collect();
        let command = Cli::command();
        let flags = file_flags(&command).filter_map(clap::Arg::get_long).collect();
        assert_eq!(keys, flags, "the example's keys against the flags");
        // With every key active, the file still parses: the example values are valid too.
        let path = temp_file("example-all", &settings.join("\n"));
        let matches = Cli::command().get_matches_from(["forkpool"]);
        let result = file_args(&path, "--config FILE", &matches);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(result.map(|args| args.len()), Ok(settings.len()));
    }
}
