//! `forkpool-loadtest --spawn` end to end with tiny bounds: each scenario runs, reports what it
//! says and leaves nothing behind. No figure is judged here: the real targets are measured by
//! the load tester itself in a release build (README, Performance).
//!
//! `--spawn` runs the `forkpool` next to the load tester: `cargo test` at the workspace root
//! builds both (`cargo test -p forkpool-loadtest` alone may find a stale or missing server).

mod common;

use std::io::Read;

use common::loadtest;

/// True while `pid` exists and is not a zombie. The test's own reading of /proc, independent
/// of the load tester's clean-up that it checks.
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|close| stat[close + 2..].chars().next());
    state != Some('Z')
}

#[test]
fn loadtest_spawn_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let (json_path, svg_path) = (dir.path().join("lt.json"), dir.path().join("lt.svg"));
    let output = loadtest()
        .args(["--spawn", "--workers", "2"])
        .args(["--scenarios", "idle,saturated,dispatch,mixed,ls"])
        .args([
            "--idle-probes",
            "20",
            "--multiples",
            "1",
            "--heavy-exponent",
            "9689",
        ])
        .args(["--duration", "1s", "--concurrency", "8"])
        .args(["--ls-files", "300", "--ls-runs", "1"])
        .arg("--server-arg=--queue=64")
        .arg("--json")
        .arg(&json_path)
        .arg("--svg")
        .arg(&svg_path)
        .output()
        .expect("run forkpool-loadtest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{}\n{stdout}\n{stderr}",
        output.status
    );
    for heading in [
        "/testrequest probes",
        "heavy jobs",
        "dispatch",
        "mixed (short jobs",
        "ls (300 files",
    ] {
        assert!(
            stdout.contains(heading),
            "no {heading:?} in the table:\n{stdout}"
        );
    }
    assert!(
        stderr.is_empty(),
        "no progress output when stderr is not a terminal: {stderr}"
    );

    let mut text = String::new();
    std::fs::File::open(&json_path)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["spawned"], true);
    assert_eq!(json["workers"], 2);
    assert_eq!(json["server_args"][0], "--queue=64");
    assert!(
        json["memory"]["total_kib"].as_u64().unwrap() > 0,
        "{}",
        json["memory"]
    );
    for kind in ["new_conn", "kept_alive"] {
        assert_eq!(json["idle"][kind]["count"], 20, "{}", json["idle"]);
        assert!(json["idle"][kind]["p99_ms"].as_f64().unwrap() > 0.0);
    }
    let phase = &json["saturated"]["phases"][0];
    assert_eq!(phase["k"], 2);
    assert_eq!(phase["heavy"]["ok"], 2, "{phase}");
    // The load tool's own saturated scenario: every worker busy while probed, every probe
    // answered (how fast is the load tester's figure, README Performance, not a test's).
    assert_eq!(phase["all_workers_busy"], true, "{phase}");
    for kind in ["new_conn", "kept_alive"] {
        let probes = &phase["probes"][kind];
        assert!(probes["count"].as_u64().unwrap() > 0, "{phase}");
        assert_eq!(probes["errors"], 0, "{phase}");
    }
    assert!(json["saturated"]["digits"].as_u64().unwrap() > 1000);
    for endpoint in ["isprime", "testrequest"] {
        assert!(
            json["dispatch"][endpoint]["ok"].as_u64().unwrap() > 0,
            "{}",
            json["dispatch"]
        );
    }
    assert!(json["dispatch"]["ratio"].as_f64().unwrap() > 0.0);
    let mixed = &json["mixed"];
    assert!(mixed["heavy_ok"].as_u64().unwrap() >= 1, "{mixed}");
    assert!(mixed["short"]["ok"].as_u64().unwrap() > 0, "{mixed}");
    assert_eq!(mixed["short"]["errors"], 0, "{mixed}");
    assert_eq!(json["ls"]["files"], 300, "ls failed: {}", json["errors"]);
    assert!(json["ls"]["body_bytes"].as_u64().unwrap() > 300 * 20);
    assert!(json["samples"].as_array().unwrap().len() >= 40);
    assert_eq!(
        json["errors"].as_array().unwrap().len(),
        0,
        "{}",
        json["errors"]
    );

    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "{svg:.200}"
    );

    // Nothing left behind: the server and its workers are gone.
    let server = json["server_pid"].as_u64().unwrap() as u32;
    let mut pids: Vec<u32> = json["worker_pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap() as u32)
        .collect();
    pids.push(server);
    assert!(pids.iter().all(|&p| !alive(p)), "left behind: {pids:?}");
}

/// The lifecycle scenarios end to end with tiny bounds: two in-place upgrades (to the same
/// build: the mechanics, not the version change, which needs a second build) and two restarts
/// on the load tester's socket, under the steady load. The clients must see no failure, and
/// nothing may be left behind; how long each handover takes is the load tester's figure.
#[test]
fn lifecycle_scenarios_run_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("lt.json");
    let server = std::path::Path::new(common::BIN).with_file_name("forkpool");
    let output = loadtest()
        .args([
            "--spawn",
            "--workers",
            "2",
            "--scenarios",
            "upgrade,restart",
        ])
        .args(["--upgrades", "2", "--restarts", "2", "--upgrade-to"])
        .arg(&server)
        .args(["--load-clients", "4", "--lifecycle-pause", "200ms"])
        // However slow a loaded machine makes the heavy jobs in flight, each drain waits for
        // them: with the default 10 s grace, a machine with a busy loop on every core answered
        // one 503 `shutting_down` and closed two kept-alive requests at the grace's end.
        .arg("--server-arg=--shutdown-grace=120s")
        .arg("--json")
        .arg(&json_path)
        .output()
        .expect("run forkpool-loadtest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}\n{stdout}", output.status);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(json["errors"].as_array().unwrap().len(), 0, "{stdout}");
    for scenario in ["upgrade", "restart"] {
        let report = &json[scenario];
        assert!(stdout.contains(&format!("{scenario}: 2/2")), "{stdout}");
        assert_eq!(report["done"], 2, "{stdout}");
        assert_eq!(report["errors"].as_array().unwrap().len(), 0, "{stdout}");
        let pids: Vec<&serde_json::Value> = report["events"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|e| [&e["from_pid"], &e["to_pid"]])
            .collect();
        assert_ne!(pids[0], pids[1], "{stdout}");
        assert!(pids.iter().all(|p| !alive(p.as_u64().unwrap() as u32)));
        let load = &report["load"];
        assert_eq!(load["kinds"].as_array().unwrap().len(), 6, "{stdout}");
        assert!(load["ok"].as_u64().unwrap() > 0, "{stdout}");
        assert_eq!(load["failed"], 0, "{stdout}");
        let leaks = &report["leaks"];
        for list in ["zombies", "ls", "strays", "fds_diff", "left_after_stop"] {
            assert_eq!(leaks[list].as_array().unwrap().len(), 0, "{list}: {stdout}");
        }
        assert!(leaks["fds_baseline"].as_u64().unwrap() > 0, "{stdout}");
    }
    assert_eq!(
        json["upgrade"]["events"][0]["version"],
        json["upgrade"]["versions"][1]
    );
}

#[test]
fn the_overload_scenario_counts_every_request_once_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("overload.json");
    let output = loadtest()
        .args(["--spawn", "--workers", "1", "--scenarios", "overload"])
        .args(["--duration", "2s", "--overload-rate", "10"])
        .args(["--heavy-exponent", "9689", "--overload-timeout", "300ms"])
        .arg("--json")
        .arg(&json_path)
        .output()
        .expect("run forkpool-loadtest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("overload: 10 requests/s"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let overload = &json["overload"];
    let n = |path: &[&str]| {
        let value = path.iter().fold(overload, |v, key| &v[*key]);
        value
            .as_u64()
            .unwrap_or_else(|| panic!("{path:?}: {overload}"))
    };
    let sent = n(&["sent"]);
    assert!(sent > 0, "{overload}");
    let answered =
        ["ok", "refused", "timed_out", "other", "unanswered"].map(|status| n(&["clients", status]));
    assert_eq!(answered.iter().sum::<u64>(), sent, "{overload}");
    // What the clients saw is what the server counted: 200 served, 503 refused (at admission,
    // at dispatch, or for a full queue), 504 killed at the deadline or expired in the queue.
    assert_eq!(
        n(&["clients", "ok"]),
        n(&["server", "served"]),
        "{overload}"
    );
    let refused = ["refused_admission", "refused_dispatch", "refused_full"]
        .map(|outcome| n(&["server", outcome]));
    assert_eq!(
        n(&["clients", "refused"]),
        refused.iter().sum::<u64>(),
        "{overload}"
    );
    let timed_out = n(&["server", "wasted"]) + n(&["server", "expired_queued"]);
    assert_eq!(n(&["clients", "timed_out"]), timed_out, "{overload}");
}

#[test]
fn a_server_that_cannot_start_is_shown_with_its_command_line_and_its_stderr() {
    let output = loadtest()
        .args(["--spawn", "--workers", "1", "--scenarios", "idle"])
        .arg("--server-arg=--queue=0")
        .output()
        .expect("run forkpool-loadtest");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    // The command as typed, and the server's own words about the flag.
    assert!(
        stderr.contains("command: ") && stderr.contains(" --queue=0"),
        "{stderr}"
    );
    assert!(stderr.contains("'--queue <QUEUE>'"), "{stderr}");
}

#[test]
fn server_args_take_the_server_s_spellings_and_may_set_the_listen_address() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = loadtest()
        .args([
            "--spawn",
            "--workers",
            "1",
            "--scenarios",
            "idle",
            "--idle-probes",
            "5",
        ])
        .args(["--server-arg", "--queue 8"])
        .arg(format!("--server-arg=--listen=127.0.0.1:{port}"))
        .output()
        .expect("run forkpool-loadtest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("127.0.0.1:{port}")), "{stdout}");
}
