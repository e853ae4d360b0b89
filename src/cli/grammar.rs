//! The grammar as the command line and the config file both read it: the flags without their
//! environment variables, and clap's messages about a value with where the value came from.
//! Shared by `load` (the command line and the environment) and `config_file`, so that a bad
//! value reads the same wherever it was written.

use clap::CommandFactory;

use super::Cli;

/// The grammar without its environment variables: what the command line alone says.
pub(super) fn command_without_env() -> clap::Command {
    Cli::command().mut_args(|arg| arg.env(None::<&'static str>))
}

/// A clap error about a value, as clap words it but without its `error: ` prefix and its
/// closing `For more information` line, with ` (from SOURCE)` after the flag it names:
/// `invalid value 'x' for '--workers <WORKERS>' (from the environment variable
/// FORKPOOL_WORKERS): invalid digit found in string`. The lines after the first (the possible
/// values of an enum, a tip) are kept.
pub(super) fn attributed(error: &clap::Error, source: &str) -> String {
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
