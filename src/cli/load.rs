//! [`Cli::load_from`]: the command line, the environment and the config file merged, flag >
//! env > file > default, and [`Sources`], where each value that did not come from its flag came
//! from. A bad value, wherever it came from, is reported with clap's own message and its
//! source named, and the process exits with code 2.

use std::collections::BTreeMap;
use std::ffi::OsString;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

use super::config_file::file_args;
use super::grammar::{attributed, command_without_env};
use super::Cli;

/// Where a setting's value came from, when not from its flag; keyed by the flag's long name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources(BTreeMap<String, String>);

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

impl Cli {
    /// Parses `args` (the process arguments, program name first), merging `--config FILE`
    /// under flags and env vars. Errors (a bad flag, an unknown key in the file) print and exit
    /// with code 2, as clap does; a bad value names where it came from (the flag, the
    /// environment variable, or the file and its key).
    pub fn load_from(args: Vec<OsString>) -> Cli {
        let matches = matches_or_exit(&args);
        let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        let mut sources = environment_sources(&matches);
        let Some(path) = cli.flags.config_file.clone().filter(|_| cli.command.is_none()) else {
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
fn environment_sources(matches: &ArgMatches) -> BTreeMap<String, String> {
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
