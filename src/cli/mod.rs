//! The command line, for the binary only (nothing but `main` and `app` imports it): flags, env
//! vars and the config file, resolved into [`Settings`](crate::settings::Settings).
//!
//! Every serve flag can also come from an env var `FORKPOOL_<NAME>` or from a TOML file named by
//! `--config` (the *config file*). Precedence is flag > env > file > default. The file is merged
//! by turning each of its keys into the matching `--flag value` and parsing again, but only for
//! flags that still hold their default; that way a file value is checked by exactly the same
//! parser (and gets the same error message) as the flag, and there is one source of truth for
//! names and defaults.
//!
//! One concern a file: `flags` (the clap grammar of the serve flags), `load` ([`Cli::load_from`]:
//! the command line, the environment and the config file merged, and where each value came
//! from), `config_file` (the TOML reader), `resolve` (`Flags` to `Settings`, refusing flags that
//! contradict each other), `worker` (the `forkpool worker` flags, parsed by hand) and `man` (the
//! man page). Errors in flags, variables or the file print and exit with code 2, as clap's do.

use clap::{Parser, Subcommand};

mod config_file;
mod flags;
mod grammar;
mod load;
mod man;
mod resolve;
mod worker;

pub use flags::Flags;
pub use load::Sources;
pub use man::man_page;
pub use resolve::ResolveError;
pub use worker::{WorkerArgs, WorkerArgsError};

/// The whole command line: serve flags at the top level, or a subcommand.
#[derive(Debug, Parser)]
#[command(name = "forkpool", version, about, long_about = None, after_long_help = UNITS)]
pub struct Cli {
    /// A subcommand (`completions`, `man`); `None` serves.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The serve flags, at the top level (`forkpool --workers 4`).
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
