//! The rolling-restart benchmark end to end at a tiny size (`konnq-loadtest
//! roll --smoke`): nginx in front of three konnq servers, three agents,
//! every agent and every server restarted, a server and an agent
//! SIGKILLed. Asserts that every figure was produced, never how fast.
//!
//! nginx comes from Debian's `nginx-light` and `libnginx-mod-stream`
//! (`scripts/test.sh` installs them); without it this test fails and says so.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn roll_smoke_produces_every_figure() {
    for needed in ["/usr/sbin/nginx", "/usr/lib/nginx/modules/ngx_stream_module.so"] {
        assert!(
            Path::new(needed).exists(),
            "{needed} is missing: the roll benchmark needs nginx with its stream module \
             (apt-get install nginx-light libnginx-mod-stream; scripts/test.sh installs them)"
        );
    }
    let out = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_konnq-loadtest"))
        .args(["roll", "--smoke", "--konnq-bin", "builtin", "--out"])
        .arg(out.path())
        .output()
        .expect("konnq-loadtest runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "roll smoke failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}", output.status);
    assert!(stdout.contains("roll smoke: every figure was produced"), "{stdout}");
    // A hang guard, not a performance assertion.
    assert!(started.elapsed() < Duration::from_secs(180), "roll smoke took {:?}", started.elapsed());

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).expect("results.json"))
            .expect("results.json parses");
    assert_eq!(json["meta"]["smoke"], true);
    assert_eq!(json["errors"].as_array().map(Vec::len), Some(0), "{}", json["errors"]);
    let konnq = &json["results"][0];
    assert_eq!(konnq["peer"], "konnq");
    let phases: Vec<&str> =
        konnq["phases"].as_array().expect("phases").iter().filter_map(|p| p["phase"].as_str()).collect();
    assert_eq!(phases, ["steady", "agent-roll", "server-roll", "crash-server", "crash-agent"]);
    for p in konnq["phases"].as_array().expect("phases") {
        assert!(p["dials"].as_u64().unwrap_or(0) > 0, "{p}");
    }
    for rolls in ["agent_rolls", "server_rolls"] {
        let steps = konnq[rolls].as_array().expect(rolls);
        assert_eq!(steps.len(), 3, "{rolls}");
        assert!(steps.iter().all(|s| s["back_secs"].as_f64().is_some()), "{rolls}: {steps:?}");
    }
    assert!(konnq["crash_server"]["all_agents_secs"].as_f64().is_some(), "{}", konnq["crash_server"]);
    assert!(konnq["crash_agent"]["held"].as_u64().unwrap_or(0) > 0, "{}", konnq["crash_agent"]);
    let summary = std::fs::read_to_string(out.path().join("summary.txt")).expect("summary.txt");
    for section in ["DIALS PER PHASE", "ROLLS", "SERVER CRASH", "AGENT CRASH"] {
        assert!(summary.contains(section), "{section} missing:\n{summary}");
    }
    let csv = std::fs::read_to_string(out.path().join("dials.csv")).expect("dials.csv");
    assert!(csv.lines().count() > 100, "every dial is listed");
    for log in ["konnq-nginx.log", "konnq-server-s0.log", "konnq-agent-2.log", "target.log"] {
        assert!(out.path().join("logs").join(log).is_file(), "{log} missing");
    }
}
