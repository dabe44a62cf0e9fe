//! The dial scenario with kube-apiserver's client library as the load
//! generator (`--dial-client go`): konnq-dialclient is built from
//! `loadtest/upstream` (konnectivity-client over grpc-go, from the Go module
//! proxy) and dials through konnq's built-in server and agent. Checks that
//! real dials were counted and attributed to the Go client, never how fast.

use std::process::Command;

#[test]
fn go_client_dials_through_konnq() {
    assert!(
        Command::new("go").arg("version").output().is_ok_and(|o| o.status.success()),
        "this test builds the Go dial client: install Go (see README)"
    );
    let out = tempfile::tempdir().expect("tempdir");
    let build = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_konnq-loadtest"))
        .args(["run", "--peers", "konnq", "--scenarios", "dial", "--dial-client", "go", "--konnq-bin", "builtin"])
        .args(["--dial-secs", "1", "--dial-warmup-secs", "0.2", "--dial-concurrency", "4", "--rounds", "1"])
        .arg("--upstream-build-dir")
        .arg(build.path())
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("konnq-loadtest runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "run failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}", output.status);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).expect("results.json"))
            .expect("results.json parses");
    assert_eq!(json["errors"].as_array().map(Vec::len), Some(0), "{}", json["errors"]);
    let dial = &json["dial"][0];
    assert_eq!(dial["peer"], "konnq");
    assert_eq!(dial["client"], "konnectivity-client (Go)");
    assert!(dial["dials"].as_u64().unwrap_or(0) > 0, "{dial}");
    assert!(dial["dial"]["p50_us"].as_f64().unwrap_or(0.0) > 0.0, "{dial}");
    assert!(dial["cpu"]["runner"].as_f64().unwrap_or(0.0) > 0.0, "the Go client's own CPU: {dial}");
    assert!(build.path().join("konnq-dialclient").is_file(), "built into --upstream-build-dir");
}
