//! `forkpool man`: the man page, rendered from the clap grammar by clap_mangen, with two
//! sections of ours (UNITS, ENVIRONMENT). Fails only if writing to the buffer fails.

use clap::CommandFactory;

use super::{Cli, UNITS};

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
