//! The `tail` scenario end to end with tiny bounds: the probe alone, idle and one saturated
//! phase are each reported with their percentiles, the server's threads are listed with their
//! scheduling class, and the side-by-side plot is written. Figures are not judged here (the
//! README's Performance section holds them); only that each phase measured what it says.

mod common;

use common::loadtest;

#[test]
fn tail_scenario_reports_every_phase_and_the_threads_that_waited() {
    let dir = tempfile::tempdir().unwrap();
    let (json_path, svg_path) = (dir.path().join("t.json"), dir.path().join("t.svg"));
    let output = loadtest()
        .args(["--spawn", "--workers", "2", "--scenarios", "tail"])
        .args([
            "--tail-probes",
            "30",
            "--tail-spacing",
            "2ms",
            "--tail-jobs",
            "4",
        ])
        // Heavy enough to keep the workers busy through the phase, light enough to finish on a
        // loaded machine (2^9689-1 jobs of this debug build outlasted their 60 s deadline).
        // The workers run in the normal class (common::loadtest): at SCHED_IDLE, the default,
        // a busy loop on every core starved even these (none answered in 60 s, the 20-run
        // check); that the default is SCHED_IDLE is the server's own test (tests/pool.rs).
        .args(["--heavy-exponent", "3217"])
        .arg("--json")
        .arg(&json_path)
        .arg("--tail-svg")
        .arg(&svg_path)
        .output()
        .expect("run forkpool-loadtest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}\n{stdout}", output.status);
    for line in ["tail: lean probe", "probe alone", "idle", "4 heavy jobs"] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let tail = &json["tail"];
    let alone = &tail["probe_alone"];
    assert_eq!(alone["totals_ms"].as_array().unwrap().len(), 30, "{alone}");
    let phases = tail["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 2, "idle and one saturated phase: {tail}");
    assert_eq!(
        (phases[0]["jobs"].as_u64(), phases[1]["jobs"].as_u64()),
        (Some(0), Some(4))
    );
    let saturated = &phases[1];
    assert_eq!(saturated["all_busy"], true, "{saturated}");
    assert_eq!(saturated["errors"], 0, "{saturated}");
    assert!(saturated["heavy_ok"].as_u64().unwrap() >= 1, "{saturated}");
    for phase in phases {
        assert_eq!(phase["totals_ms"].as_array().unwrap().len(), 30, "{phase}");
        own_waits_are_parts_of_their_probes(phase);
        let (c, f, t) = (&phase["connect"], &phase["first_byte"], &phase["total"]);
        assert!(c["p50"].as_f64().unwrap() > 0.0, "{phase}");
        assert!(f["p50"].as_f64() <= t["p50"].as_f64(), "{phase}");
        assert!(t["p50"].as_f64() <= t["max"].as_f64(), "{phase}");
    }
    // Each thread is listed with its class: the workers' is the one the server was given.
    let threads = saturated["threads"].as_array().unwrap();
    let of = |owner: &'static str| threads.iter().filter(move |t| t["owner"] == owner);
    assert!(of("worker").all(|t| t["class"] == "other"), "{threads:?}");
    assert!(
        of("worker").any(|t| t["run_ms"].as_f64().unwrap() > 0.0),
        "{threads:?}"
    );
    assert!(
        of("server").any(|t| t["name"] == "tokio-rt-worker" && t["class"] == "other"),
        "{threads:?}"
    );
    // The probe thread has ended by then: its own CPU time and wait are reported apart.
    assert!(
        saturated["probe_cpu_us"].as_f64().unwrap() > 0.0,
        "{saturated}"
    );

    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("4 heavy jobs"),
        "{svg:.200}"
    );
}

/// Each probe has its own run-queue wait, and the slow probes listed are exactly those over
/// 2 ms, each with its start on the monotonic clock and the probe thread named for a trace.
fn own_waits_are_parts_of_their_probes(phase: &serde_json::Value) {
    let floats = |key: &str| -> Vec<f64> {
        let list = phase[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key}: {phase}"));
        list.iter().map(|v| v.as_f64().unwrap()).collect()
    };
    let (totals, own) = (floats("totals_ms"), floats("own_wait_ms"));
    assert_eq!(own.len(), totals.len(), "{phase}");
    // Each probe's wait is read around that probe alone: together they are part of the phase's.
    let phase_wait = phase["probe_wait_ms"].as_f64().unwrap();
    assert!(own.iter().sum::<f64>() <= phase_wait + 1e-3, "{phase}");
    let slow = phase["slow"].as_array().unwrap();
    let over: Vec<u64> = (0..totals.len() as u64)
        .filter(|&i| totals[i as usize] > 2.0)
        .collect();
    let listed: Vec<u64> = slow.iter().map(|p| p["index"].as_u64().unwrap()).collect();
    assert_eq!(listed, over, "{phase}");
    for p in slow {
        assert!(p["start_ns"].as_u64().unwrap() > 0, "{p}");
        assert!(p["own_wait_ms"].is_f64(), "{p}");
    }
    assert!(phase["probe_tid"].as_u64().unwrap() > 0, "{phase}");
    assert!(phase["steal_ms"].as_f64().unwrap() >= 0.0, "{phase}");
}
