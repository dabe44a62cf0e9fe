//! The CI smoke run: `konnq-loadtest smoke` against konnq, every scenario
//! at a tiny size, must produce figures from every scenario (never checks
//! how fast they are).
//!
//! konnq runs as `--konnq-bin builtin`: this package's own binary re-runs
//! itself as konnq-server and konnq-agent from the konnq libraries it links
//! (`builtin-server` / `builtin-agent`, the same flags and code paths as the
//! real mains). Cargo gives an integration test only its own package's
//! binaries (`CARGO_BIN_EXE_*`), so this is the one way that works on a
//! fresh clone with any `cargo test` invocation: no stale target/ binaries,
//! no nested `cargo build` contending for the build lock, and still separate
//! server and agent processes measured through /proc.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn smoke_run_produces_every_figure() {
    let out = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_konnq-loadtest"))
        .args(["smoke", "--konnq-bin", "builtin", "--out"])
        .arg(out.path())
        .output()
        .expect("konnq-loadtest runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "smoke failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}", output.status);
    assert!(stdout.contains("smoke: every scenario produced figures"), "{stdout}");
    // A hang guard, not a performance assertion.
    assert!(started.elapsed() < Duration::from_secs(120), "smoke took {:?}", started.elapsed());

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).expect("results.json"))
            .expect("results.json parses");
    assert_eq!(json["meta"]["smoke"], true);
    assert_eq!(json["peers"][0]["name"], "konnq");
    assert_eq!(json["errors"].as_array().map(Vec::len), Some(0), "{}", json["errors"]);
    for section in ["throughput", "latency", "dial", "scale", "soak"] {
        let rows = json[section].as_array().unwrap_or_else(|| panic!("{section} missing"));
        assert!(!rows.is_empty(), "{section} has no rows");
        assert!(rows.iter().all(|r| r["peer"] == "konnq"), "{section}: konnq only");
    }
    let first_tp = &json["throughput"][0];
    assert!(first_tp["bytes"].as_u64().unwrap_or(0) > 0, "{first_tp}");
    assert!(first_tp["cpu_secs_per_gb"].as_f64().is_some(), "CPU from /proc of the server and agent processes");
    assert!(json["latency"][0]["latency"]["p99_us"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(json["scale"][0]["server_after"]["fds"].as_u64().unwrap_or(0) > 0);
    for chart in ["throughput.svg", "latency_cdf.svg", "dial_latency_cdf.svg", "dial_rate.svg", "scale_memory.svg"] {
        let svg = std::fs::read_to_string(out.path().join(chart)).unwrap_or_else(|e| panic!("{chart}: {e}"));
        assert!(svg.starts_with("<svg") && svg.contains("konnq"), "{chart}");
    }
    assert!(stdout.contains("TARGETS"), "the table lists the targets");
}
