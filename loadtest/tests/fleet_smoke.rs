//! `konnq-loadtest fleet` at a tiny size against konnq's built-in server:
//! every simulated agent is admitted, at start and after the server is
//! restarted, and the server's figures come from its process. Never checks
//! how fast or how small (that is what the full run is for).

use std::process::Command;

#[test]
fn fleet_admits_every_agent_and_readmits_them_after_a_restart() {
    let out = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_konnq-loadtest"))
        .args(["fleet", "--peers", "konnq", "--agents", "8", "--idle-secs", "1", "--settle-secs", "0"])
        .args(["--deadline-secs", "60", "--konnq-bin", "builtin", "--out"])
        .arg(out.path())
        .output()
        .expect("konnq-loadtest runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "fleet failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}", output.status);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("fleet.json")).expect("fleet.json"))
            .expect("fleet.json parses");
    let cell = &json[0];
    assert_eq!(cell["peer"], "konnq");
    assert_eq!(cell["agents"], 8);
    assert!(cell["first_ready_secs"].as_f64().is_some(), "{cell}");
    assert!(cell["restart_ready_secs"].as_f64().is_some(), "{cell}");
    assert!(cell["rss_before_bytes"].as_u64().unwrap_or(0) > 0, "{cell}");
    assert!(cell["rss_idle_bytes"].as_u64().unwrap_or(0) > 0, "{cell}");
    assert!(stdout.contains("| konnq | 8 |"), "{stdout}");
}
