//! The `nymstr-sim` binary as a user drives it.

use std::io::Write;
use std::process::Command;

fn sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nymstr-sim"))
}

fn scenario_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

const SMALL: &str = r#"
seed = 3
duration = "30s"
[clients]
count = 30
join_spread = "5s"
offline_per_hour = 0
[workload.dm]
rate_per_client_per_min = 4.0
"#;

#[test]
fn json_report_has_the_documented_keys() {
    let f = scenario_file(SMALL);
    let out = sim().args(["run", f.path().to_str().unwrap(), "--json", "--seed", "11"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["seed"], 11);
    for key in ["trace_hash", "sim_time_ms", "wall_time_ms", "events"] {
        assert!(!v[key].is_null(), "missing {key}");
    }
    for key in ["sent", "acked", "delivered", "duplicates", "lost"] {
        assert!(v["dm"][key].is_u64(), "missing dm.{key}");
    }
    for key in ["p50", "p90", "p99", "max"] {
        assert!(v["latency_ms"][key].is_f64() || v["latency_ms"][key].is_u64(), "missing latency_ms.{key}");
    }
    assert!(v["invariants"]["checked"].as_u64().unwrap() > 0);
    assert_eq!(v["invariants"]["violations"].as_array().unwrap().len(), 0);
    assert!(v["dm"]["sent"].as_u64().unwrap() > 0);
}

#[test]
fn bad_scenario_names_key_and_line_and_exits_2() {
    let f = scenario_file("seed = 1\n[mixnet]\nhops = 5\nhop_delay_ms_mean = -3\n");
    let out = sim().args(["run", f.path().to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hop_delay_ms_mean") && err.contains("line 4"), "{err}");

    let f = scenario_file("seed = 1\n[clients]\ncount = 10\nfoo = 2\n");
    let out = sim().args(["run", f.path().to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("foo") && err.contains("line 4"), "{err}");
}

#[test]
fn violation_exits_nonzero_and_prints_the_replay_seed() {
    let text = format!(
        "{SMALL}\n[nodes]\nbuggify_ack_before_flush = true\nbackground_flush_ms = 100000\n\
         [[faults]]\nat = \"20s\"\nkind = \"crash\"\nnode = 0\nrestart_after = \"1s\"\n"
    );
    let text = text.replace("offline_per_hour = 0", "offline_per_hour = 100\noffline_mean = \"20s\"");
    let f = scenario_file(&text);
    let mut failed_seed = None;
    for seed in 1..30 {
        let out = sim().args(["run", f.path().to_str().unwrap(), "--seed", &seed.to_string()]).output().unwrap();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(&format!("--seed {seed}")), "{err}");
            failed_seed = Some(seed);
            break;
        }
    }
    assert!(failed_seed.is_some(), "no seed exposed the buggified node");
}

#[test]
fn check_determinism_passes() {
    let f = scenario_file(SMALL);
    let out = sim().args(["run", f.path().to_str().unwrap(), "--check-determinism"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("same trace hash"));
}
