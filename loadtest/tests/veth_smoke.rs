//! `konnq-loadtest run --veth-mtu 1500 --perf DIR`: the throughput scenario
//! with the agent↔server hop on a veth pair of MTU 1500 between two network
//! namespaces, `direct` crossing the same link, and the server's and agent's
//! CPU split by component from `perf record`. Checks that figures come out
//! and that the namespaces are gone afterwards, never how fast anything is.
//! Needs root (namespaces) and perf (`scripts/test.sh` installs linux-perf).

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn a_run_across_a_veth_link_measures_both_directions_and_splits_the_cpu() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test needs root (network namespaces and a veth pair); run the suite as root");
    }
    let out = tempfile::tempdir().expect("tempdir");
    let perf_dir = out.path().join("perf");
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_konnq-loadtest"))
        .args(["run", "--konnq-bin", "builtin", "--peers", "konnq,direct", "--scenarios", "throughput"])
        .args(["--tp-conns", "1", "--tp-modes", "oneway,upload", "--tp-secs", "0.6", "--tp-warmup-secs", "0.2"])
        .args(["--veth-mtu", "1500", "--perf"])
        .arg(&perf_dir)
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("konnq-loadtest runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "run failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}", output.status);
    // A hang guard, not a performance assertion.
    assert!(started.elapsed() < Duration::from_secs(180), "took {:?}", started.elapsed());

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).expect("results.json"))
            .expect("results.json parses");
    let link = json["meta"]["link"].as_str().unwrap_or_default();
    assert!(link.starts_with("veth MTU 1500"), "{link}");
    assert_eq!(json["errors"].as_array().map(Vec::len), Some(0), "{}", json["errors"]);
    let rows = json["throughput"].as_array().expect("throughput rows");
    for peer in ["konnq", "direct"] {
        for mode in ["oneway", "upload"] {
            let row = rows.iter().find(|r| r["peer"] == peer && r["mode"] == mode).expect("a row per peer and mode");
            assert!(row["bytes"].as_u64().unwrap_or(0) > 0, "{peer} {mode}: {row}");
            let has_split = !row["components"].is_null();
            assert_eq!(has_split, peer == "konnq", "{peer} {mode}: components only for processes we can sample");
            if peer == "konnq" {
                for who in ["server", "agent"] {
                    let c = &row["components"][who];
                    assert!(c["samples"].as_u64().unwrap_or(0) > 0, "{who}: {c}");
                    let sum: f64 =
                        c["secs_per_gb"].as_object().expect("split").values().filter_map(|v| v.as_f64()).sum();
                    let total =
                        row[format!("{who}_cpu_secs")].as_f64().unwrap() / (row["bytes"].as_f64().unwrap() / 1e9);
                    assert!((sum - total).abs() <= 1e-6 * total.max(1.0), "{who}: parts {sum} vs whole {total}");
                }
                for f in row["components"]["recordings"].as_array().expect("recordings") {
                    let path = f.as_str().unwrap_or_default();
                    assert!(std::fs::metadata(path).map(|m| m.len() > 0).unwrap_or(false), "{path}");
                }
            }
        }
    }
    assert!(stdout.contains("THROUGHPUT CPU BY COMPONENT"), "{stdout}");
    let left: Vec<String> =
        String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout)
            .lines()
            .filter(|l| l.starts_with("kqveth-"))
            .map(str::to_owned)
            .collect();
    let ours: Vec<&String> = left.iter().filter(|l| !other_run_alive(l)).collect();
    assert!(ours.is_empty(), "namespaces left behind: {ours:?}");
}

/// Whether a `kqveth-{pid}-…` namespace belongs to a process still running
/// (another run's, left alone).
fn other_run_alive(name: &str) -> bool {
    let pid = name.trim_start_matches("kqveth-").split('-').next().and_then(|p| p.parse::<u32>().ok());
    pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
}
