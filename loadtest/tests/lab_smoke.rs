//! The lossy-link lab end to end at a tiny size (`konnq-loadtest lab
//! --smoke`): namespaces, the impaired link, konnq's server and agent on
//! either side, every experiment producing figures, and nothing left behind.
//! Needs root (network namespaces, TUN devices). Never checks how fast.

use std::process::Command;
use std::time::{Duration, Instant};

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("the lab smoke test needs root (network namespaces and TUN devices); run the suite as root");
    }
}

fn lab_namespaces(pid: u32) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("kqlab-{pid}-")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn lab_smoke_runs_every_experiment_and_cleans_up() {
    require_root();
    let out = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_konnq-loadtest"))
        .args(["lab", "--smoke", "--konnq-bin", "builtin", "--out"])
        .arg(out.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("konnq-loadtest runs");
    let pid = child.id();
    let output = child.wait_with_output().expect("lab finishes");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "lab smoke failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}", output.status);
    assert!(stdout.contains("lab smoke: every experiment produced figures"), "{stdout}");
    // A hang guard, not a performance assertion.
    assert!(started.elapsed() < Duration::from_secs(240), "lab smoke took {:?}", started.elapsed());
    assert_eq!(lab_namespaces(pid), Vec::<String>::new(), "namespaces left behind");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("lab.json")).expect("lab.json"))
            .expect("lab.json parses");
    assert_eq!(json["meta"]["smoke"], true);
    let cells = json["cells"].as_array().expect("cells");
    let experiments: Vec<&str> = cells.iter().filter_map(|c| c["experiment"].as_str()).collect();
    for e in ["hol", "slow-reader", "migration", "restart", "fairness", "upload"] {
        assert!(experiments.contains(&e), "{e} missing: {experiments:?}");
    }
    let fair = cells.iter().find(|c| c["experiment"] == "fairness").expect("fairness cell");
    assert!(fair["competitor"]["mbit_per_s"].as_f64().unwrap_or(0.0) > 0.0, "the competing flow moved: {fair}");
    assert!(fair["outcome"]["bulk_mbit_per_s"].as_f64().unwrap_or(0.0) > 0.0, "the tunnel moved: {fair}");
    // Both ways over the link; the upload is what the sink target counted.
    for way in ["download", "upload"] {
        let c = cells.iter().find(|c| c["experiment"] == "upload" && c["variant"] == way).expect("upload cell");
        assert!(c["outcome"]["bulk_mbit_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{way} moved nothing: {c}");
        let counted: u64 =
            c["outcome"]["bulk_timeline"].as_array().expect("bulk timeline").iter().map(|b| b.as_u64().unwrap()).sum();
        assert!(counted > 0, "{way}: nothing on the bulk timeline: {c}");
    }
    // Every cell says when things happened: the link's bytes and the slowest
    // ping per half second.
    for c in cells {
        let timeline = c["timeline"].as_array().expect("timeline");
        let sent: u64 =
            timeline.iter().map(|b| b["a_to_b_bytes"].as_u64().unwrap() + b["b_to_a_bytes"].as_u64().unwrap()).sum();
        assert!(timeline.len() >= 4 && sent > 0, "{c}");
        let pings = c["outcome"]["ping_timeline_max_ms"].as_array().expect("ping timeline");
        assert!(pings.iter().any(|ms| ms.as_f64().unwrap() > 0.0), "{c}");
    }
    let migration = cells.iter().find(|c| c["experiment"] == "migration").expect("migration cell");
    assert!(migration["event"]["action"].as_str().unwrap_or("").contains("SIGUSR1"), "{migration}");
    let restarts = cells.iter().filter(|c| c["experiment"] == "restart");
    for r in restarts {
        assert!(r["event"]["ready_after_secs"].as_f64().is_some(), "{r}");
    }
    for chart in ["lab_ping_cdf_loss1.svg", "lab_goodput.svg", "lab_slow_reader_cdf.svg"] {
        let svg = std::fs::read_to_string(out.path().join(chart)).unwrap_or_else(|e| panic!("{chart}: {e}"));
        assert!(svg.starts_with("<svg") && (svg.contains("polyline") || svg.contains("<rect")), "{chart}");
    }
}

#[test]
fn lab_without_root_says_so() {
    require_root();
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_konnq-loadtest"))
        .args(["lab", "--smoke", "--out", "/tmp/konnq-lab-nonroot"])
        .output()
        .expect("setpriv (util-linux) runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("needs root"), "{stderr}");
}
