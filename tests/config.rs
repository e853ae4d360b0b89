//! Settings given the three ways (flag, `FORKPOOL_*` variable, `--config` file), run through
//! the real binary as an operator would: a bad value stops the start-up with exit code 2 and a
//! message that names where the value came from.

use crate::common;

use common::{run_to_exit, status, temp_file, Server};

/// Runs `forkpool ARGS` with `env`, expecting a start-up refusal; returns its stderr.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let (code, stdout, stderr) = run_to_exit(args, env);
    assert_eq!(code, Some(2), "{args:?} {env:?}: {stderr}");
    assert!(!stdout.contains("listening"), "{stdout}");
    stderr
}

#[test]
fn a_bad_environment_variable_is_named_in_the_message() {
    let stderr = refused(&[], &[("FORKPOOL_WORKERS", "x")]);
    assert!(
        stderr.contains(
            "invalid value 'x' for '--workers <WORKERS>' (from the environment variable \
             FORKPOOL_WORKERS): invalid digit found in string"
        ),
        "{stderr}"
    );
    // A value enum keeps clap's list of possible values.
    let stderr = refused(&[], &[("FORKPOOL_WORKER_SCHED", "fast")]);
    assert!(
        stderr.contains("(from the environment variable FORKPOOL_WORKER_SCHED)")
            && stderr.contains("[possible values:"),
        "{stderr}"
    );
    // A unit parser's own explanation follows.
    let stderr = refused(&[], &[("FORKPOOL_JOB_TIMEOUT", "soon")]);
    assert!(
        stderr.contains("(from the environment variable FORKPOOL_JOB_TIMEOUT): "),
        "{stderr}"
    );
}

#[test]
fn a_bad_flag_is_named_as_a_flag_even_when_its_variable_is_set() {
    // The flag beats the variable, so the bad value is the flag's.
    let stderr = refused(&["--workers", "y"], &[("FORKPOOL_WORKERS", "3")]);
    assert!(
        stderr.contains("invalid value 'y' for '--workers <WORKERS>': invalid digit"),
        "{stderr}"
    );
    assert!(!stderr.contains("environment"), "{stderr}");
    // A bad flag beside a bad variable of another flag: the flag is reported, as the flag's.
    let stderr = refused(&["--queue", "0"], &[("FORKPOOL_WORKERS", "x")]);
    assert!(stderr.contains("'--queue <QUEUE>'"), "{stderr}");
}

#[test]
fn a_bad_value_in_the_config_file_names_the_file_and_the_key() {
    let file = temp_file("forkpool-config", ".toml", "workers = \"many\"\n");
    let path = file.to_str().unwrap();
    let stderr = refused(&["--config", path], &[]);
    assert!(
        stderr.contains(&format!(
            "invalid value 'many' for '--workers <WORKERS>' (from key `workers` of {path})"
        )),
        "{stderr}"
    );
    // Also when the file itself is named by its variable.
    let stderr = refused(&[], &[("FORKPOOL_CONFIG", path)]);
    assert!(
        stderr.contains(&format!("key `workers` of {path}")),
        "{stderr}"
    );
    let missing = format!("{path}.missing");
    let stderr = refused(&[], &[("FORKPOOL_CONFIG", &missing)]);
    assert!(
        stderr.contains(&format!(
            "cannot read --config {missing} (from the environment variable FORKPOOL_CONFIG)"
        )),
        "{stderr}"
    );
}

#[test]
fn a_listing_root_that_does_not_exist_names_where_it_was_set() {
    let stderr = refused(&["--ls-root", "/nonexistent/forkpool"], &[]);
    assert!(
        stderr.contains("--ls-root /nonexistent/forkpool: "),
        "{stderr}"
    );
    let stderr = refused(&[], &[("FORKPOOL_LS_ROOT", "/nonexistent/forkpool")]);
    assert!(
        stderr.contains(
            "--ls-root /nonexistent/forkpool (from the environment variable FORKPOOL_LS_ROOT): "
        ),
        "{stderr}"
    );
    let file = temp_file(
        "forkpool-config",
        ".toml",
        "ls-root = \"/nonexistent/forkpool\"\n",
    );
    let path = file.to_str().unwrap();
    let stderr = refused(&["--config", path], &[]);
    assert!(
        stderr.contains(&format!(
            "--ls-root /nonexistent/forkpool (from key `ls-root` of {path}): "
        )),
        "{stderr}"
    );
}

#[test]
fn compound_durations_and_si_and_iec_sizes_mean_what_they_say() {
    let file = temp_file(
        "forkpool-config",
        ".toml",
        "ls-timeout = \"1h 15m\"\nmax-line = \"1.5MiB\"\n",
    );
    let server = Server::with(&[
        "--workers",
        "1",
        "--job-timeout",
        "1m30s",
        "--config",
        file.to_str().unwrap(),
    ])
    .env(&[("FORKPOOL_WORKER_MEMORY", "1GB")])
    .start();
    let config = &status(&server)["config"];
    assert_eq!(config["job_timeout"], 90.0, "{config}");
    assert_eq!(config["ls_timeout"], 4500.0, "{config}");
    assert_eq!(config["worker_memory"], 1_000_000_000, "{config}");
    assert_eq!(config["max_line"], 1_572_864, "{config}");
}

#[test]
fn unit_errors_say_which_forms_are_accepted() {
    let stderr = refused(&["--job-timeout", "1m30"], &[]);
    assert!(
        stderr.contains("`1m30` has `30` without a unit") && stderr.contains("(`1m30s`"),
        "{stderr}"
    );
    // `M` alone is read as MB by some and MiB by others: refused, with both spelled out.
    let stderr = refused(&["--worker-memory", "512M"], &[]);
    assert!(
        stderr.contains("`512MiB`") && stderr.contains("`512MB`") && stderr.contains("ambiguous"),
        "{stderr}"
    );
}

#[test]
fn a_zero_job_or_listing_timeout_is_refused() {
    // Zero does not mean "no limit": it would answer every job (every listing) 504 at once.
    for (flag, variable) in [
        ("--job-timeout", "FORKPOOL_JOB_TIMEOUT"),
        ("--ls-timeout", "FORKPOOL_LS_TIMEOUT"),
    ] {
        let stderr = refused(&[flag, "0"], &[]);
        assert!(
            stderr.contains(&format!("invalid value '0' for '{flag}"))
                && stderr.contains("must be more than zero")
                && stderr.contains("no value for \"no limit\""),
            "{stderr}"
        );
        let stderr = refused(&[], &[(variable, "0s")]);
        assert!(
            stderr.contains(&format!("(from the environment variable {variable})")),
            "{stderr}"
        );
    }
    // Where zero has a meaning, it is still accepted: keep-alive off, no shutdown delay.
    let server = Server::start(&[
        "--workers",
        "1",
        "--keepalive-timeout",
        "0",
        "--shutdown-delay",
        "0",
    ]);
    assert_eq!(status(&server)["config"]["keepalive_timeout"], 0.0);
}

#[test]
fn an_address_that_cannot_be_listened_on_names_the_variable_it_came_from() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let stderr = refused(&["--workers", "1"], &[("FORKPOOL_LISTEN", &address)]);
    let expected = format!("--listen {address} (from the environment variable FORKPOOL_LISTEN)");
    assert!(stderr.contains(&expected), "{stderr}");
}

#[test]
fn a_timeout_too_long_for_the_clock_is_refused_at_start_rather_than_panicking_later() {
    // 2^63 s: the server started, then `Instant::now() + timeout` panicked: every /isprime was
    // a 500, and the pool's drivers panicked after each batch.
    for flag in [
        "--job-timeout",
        "--worker-release-after",
        "--keepalive-timeout",
    ] {
        let stderr = refused(&[flag, "9223372036854775808"], &[]);
        assert!(stderr.contains("longer than 100 years"), "{flag}: {stderr}");
    }
}
