//! `examples/factor.rs` run as a user would run it: a program of its own that embeds the pool
//! with its own job type and its own worker mode. `cargo test` builds the examples before it
//! runs any test; this test finds the binary next to its own.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;

/// `target/<profile>/examples/factor`, from `target/<profile>/deps/example-HASH`.
fn example_binary() -> PathBuf {
    let me = std::env::current_exe().unwrap();
    let profile_dir = me.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir.join("examples").join("factor");
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds it, or `cargo build --example factor`",
        path.display()
    );
    path
}

#[test]
fn the_factor_example_runs_its_own_job_type_in_its_own_worker_processes() {
    let output = Command::new(example_binary())
        .args([
            "600851475143",
            "1000000007",
            "0",
            "1",
            "18446744073709551615",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{:?}\n{stdout}\n{stderr}",
        output.status
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let example_pid = lines[0]
        .strip_prefix("factoring 5 numbers in a pool of 2 workers (pid ")
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("header: {stdout}"));
    let expected = [
        "600851475143 = 71 × 839 × 1471 × 6857",
        "1000000007 = 1000000007",
        "0: the job failed: 0 has no prime factorisation",
        "1 = 1",
        "18446744073709551615 = 3 × 5 × 17 × 257 × 641 × 65537 × 6700417",
    ];
    assert_eq!(lines.len(), 1 + expected.len(), "{stdout}");
    let mut workers = HashSet::new();
    for (line, want) in lines[1..].iter().zip(expected) {
        let (answer, worker) = match line.split_once(" (worker ") {
            Some((answer, pid)) => (answer, pid.strip_suffix(')')),
            None => (*line, None),
        };
        assert_eq!(answer, want, "{stdout}");
        if let Some(pid) = worker {
            assert_ne!(
                pid, example_pid,
                "a job ran in the example itself: {stdout}"
            );
            workers.insert(pid.to_owned());
        }
    }
    assert!(
        (1..=2).contains(&workers.len()),
        "jobs ran on {workers:?}, not in a pool of 2: {stdout}"
    );
}
