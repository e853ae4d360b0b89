//! `forkpool completions SHELL` and `forkpool man`, run as an operator would: the output must
//! load in the shell and name every flag of the clap grammar, so that a flag added later shows
//! up in both without anyone editing a script by hand.

use crate::common;

use std::process::{Command, Stdio};

use clap::CommandFactory;
use common::BIN;
use forkpool::cli::Cli;

/// Runs `forkpool ARGS` to completion and returns its stdout; panics if it fails.
fn forkpool(args: &[&str]) -> String {
    let output = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run forkpool");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "forkpool {args:?}: {stderr}");
    String::from_utf8(output.stdout).expect("the output is UTF-8")
}

/// Every long flag of the server (`ls-timeout`, `worker-sched`, ...), from the grammar itself.
fn server_flags() -> Vec<String> {
    let flags: Vec<String> = Cli::command()
        .get_arguments()
        .filter_map(|arg| arg.get_long().map(str::to_owned))
        .collect();
    assert!(flags.len() >= 15, "the grammar lost its flags: {flags:?}");
    flags
}

#[test]
fn bash_loads_the_completion_script_and_completes_a_flag_from_its_prefix() {
    let script = forkpool(&["completions", "bash"]);
    for flag in server_flags() {
        assert!(
            script.contains(&format!("--{flag}")),
            "bash misses --{flag}"
        );
    }
    // What bash itself does on `forkpool --ls-t<TAB>`: call the registered function.
    let complete = r#"source /dev/stdin
        COMP_WORDS=(forkpool --ls-t); COMP_CWORD=1; COMP_LINE="forkpool --ls-t"; COMP_POINT=15
        $(complete -p forkpool | sed -n 's/.*-F \([^ ]*\) .*/\1/p') forkpool --ls-t forkpool
        printf '%s\n' "${COMPREPLY[@]}""#;
    let mut bash = Command::new("bash")
        .args(["--norc", "-c", complete])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run bash");
    std::io::Write::write_all(&mut bash.stdin.take().unwrap(), script.as_bytes()).unwrap();
    let output = bash.wait_with_output().unwrap();
    let replies = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "bash failed: {replies}");
    assert_eq!(replies.trim(), "--ls-timeout");
}

#[test]
fn zsh_and_fish_completions_name_every_flag_and_the_man_subcommand() {
    let zsh = forkpool(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef forkpool"), "{zsh}");
    let fish = forkpool(&["completions", "fish"]);
    for flag in server_flags() {
        assert!(zsh.contains(&format!("--{flag}")), "zsh misses --{flag}");
        // fish names long options without their dashes: `complete -c forkpool -l ls-timeout`.
        assert!(
            fish.contains(&format!("-l {flag} ")),
            "fish misses --{flag}"
        );
    }
    for subcommand in ["completions", "man"] {
        assert!(
            zsh.contains(&format!("'{subcommand}:")),
            "zsh misses {subcommand}"
        );
        let fish_line = format!("-a \"{subcommand}\"");
        assert!(fish.contains(&fish_line), "fish misses {subcommand}");
    }
}

#[test]
fn the_man_page_documents_every_flag_with_its_help_text() {
    let page = forkpool(&["man"]);
    assert!(
        page.contains(".TH forkpool 1"),
        "no man page header: {page}"
    );
    // roff writes a hyphen in a flag as `\-`; a reader of `man` sees `--ls-timeout`.
    let text = page.replace("\\-", "-");
    for flag in server_flags() {
        assert!(
            text.contains(&format!("--{flag}")),
            "the man page misses --{flag}"
        );
    }
    assert!(
        text.contains("Time limit of one whole /ls listing"),
        "{text}"
    );
    assert!(
        text.contains("completions"),
        "the man page misses the completions subcommand"
    );
}

#[test]
fn the_man_page_names_every_environment_variable() {
    let page = forkpool(&["man"]);
    let text = page.replace("\\-", "-");
    let environment = text
        .split(".SH ENVIRONMENT")
        .nth(1)
        .expect("the man page has an ENVIRONMENT section");
    let mut variables = 0;
    for arg in Cli::command().get_arguments() {
        let (Some(variable), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        let variable = variable.to_str().unwrap();
        variables += 1;
        // With its option, as --help shows it, and in the ENVIRONMENT section.
        assert!(
            text.contains(&format!("with the \\fB{variable}\\fR environment variable")),
            "the options miss {variable}"
        );
        assert!(
            environment.contains(&format!("\\fB{variable}\\fR\nSame as --{long}.")),
            "ENVIRONMENT misses {variable}: {environment}"
        );
    }
    assert!(variables >= 15, "the grammar lost its variables");
    assert!(environment.contains("RUST_LOG"), "{environment}");
    // How durations and sizes are written has a section of its own.
    assert!(
        text.contains(".SH UNITS") && text.contains("1m30s"),
        "{text}"
    );
}
