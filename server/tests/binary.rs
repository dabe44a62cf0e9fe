//! The konnq-server binary: certificate generation, start-up validation,
//! the frontend socket's safety rules, and graceful shutdown on SIGTERM.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_konnq-server");

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).env("RUST_LOG", "info").output().expect("run konnq-server")
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn certs_subcommand_writes_keys_private() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let out = run(&["certs", "--dir", pki.to_str().unwrap(), "--san", "konnq.example"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in ["ca.crt", "server.crt", "agent.crt"] {
        assert!(pki.join(f).is_file(), "{f} written");
    }
    for f in ["ca.key", "server.key", "agent.key"] {
        let mode = std::fs::metadata(pki.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f} mode");
    }
}

#[test]
fn invalid_configuration_fails_before_binding_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    // Missing cluster certificate: named, nothing bound.
    let out = run(&["--uds-name", sock.to_str().unwrap(), "--agent-port", "0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--cluster-cert"), "{err}");
    assert!(!sock.exists(), "nothing was bound");
    // Unknown key in the file: named.
    let cfg = dir.path().join("server.toml");
    std::fs::write(&cfg, "uds-name = \"/tmp/x.sock\"\nno-such-key = 1\n").unwrap();
    let out = run(&["--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-key"), "{err}");
    // A bad flag value: named.
    let out = run(&["--uds-name", sock.to_str().unwrap(), "--backend-dial-timeout", "soon"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("backend-dial-timeout"));
}

struct Server {
    child: std::process::Child,
    sock: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn start_server(extra: &[&str], prepare: impl FnOnce(&std::path::Path)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    assert!(run(&["certs", "--dir", pki.to_str().unwrap()]).status.success());
    let sock = dir.path().join("konnq.sock");
    prepare(&sock);
    let p = |f: &str| pki.join(f).to_str().unwrap().to_owned();
    let mut args: Vec<String> = [
        "--uds-name",
        sock.to_str().unwrap(),
        "--agent-port",
        "0",
        "--agent-bind-address",
        "127.0.0.1",
        "--health-port",
        "0",
        "--admin-port",
        "0",
        "--graceful-shutdown-timeout",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(["--cluster-cert".into(), p("server.crt"), "--cluster-key".into(), p("server.key")]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let child = Command::new(BIN).args(&args).stderr(Stdio::piped()).spawn().expect("spawn");
    Server { child, sock, _dir: dir }
}

fn is_socket(path: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).map(|m| m.file_type().is_socket()).unwrap_or(false)
}

#[test]
fn sigterm_shuts_down_cleanly_and_removes_the_socket() {
    let mut server = start_server(&[], |_| {});
    wait_until("the socket exists", Duration::from_secs(20), || is_socket(&server.sock));
    let mode = std::fs::metadata(&server.sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o007, 0, "socket is not world-accessible (mode {mode:o})");
    let status = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "server did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "exit status {exit:?}");
    assert!(!server.sock.exists(), "socket removed on shutdown");
}

#[test]
fn a_stale_socket_is_replaced_but_a_regular_file_is_never_removed() {
    // Stale socket left by a crashed server: replaced.
    let mut server = start_server(&[], |sock| {
        let l = std::os::unix::net::UnixListener::bind(sock).unwrap();
        drop(l);
    });
    wait_until("the new socket accepts", Duration::from_secs(20), || {
        std::os::unix::net::UnixStream::connect(&server.sock).is_ok()
    });
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    // A regular file at that path: refused, left alone.
    let mut server = start_server(&[], |sock| std::fs::write(sock, b"precious").unwrap());
    let out = server.child.wait().unwrap();
    assert!(!out.success());
    let mut err = String::new();
    std::io::Read::read_to_string(server.child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&server.sock).unwrap(), b"precious");

    // delete-existing-uds-file=false keeps a stale socket and says so.
    let mut server = start_server(&["--delete-existing-uds-file=false"], |sock| {
        drop(std::os::unix::net::UnixListener::bind(sock).unwrap());
    });
    assert!(!server.child.wait().unwrap().success());
    let mut err = String::new();
    std::io::Read::read_to_string(server.child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("delete-existing-uds-file"), "{err}");
}

#[test]
fn upstream_flags_without_effect_are_logged_once_at_start_up() {
    let args = ["--xfr-channel-size=20", "-enable-contention-profiling", "--enable-profiling", "--logtostderr=true"];
    let mut server = start_server(&args, |_| {});
    wait_until("the socket exists", Duration::from_secs(20), || is_socket(&server.sock));
    let status = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    assert!(server.child.wait().unwrap().success());
    let mut err = String::new();
    std::io::Read::read_to_string(server.child.stderr.as_mut().unwrap(), &mut err).unwrap();
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("has no effect")).collect();
    assert_eq!(lines.len(), 2, "one line per flag, none for --logtostderr=true or --enable-profiling: {err}");
    assert!(lines[0].contains("WARN") && lines[0].contains("--enable-contention-profiling has no effect: "), "{err}");
    assert!(lines[1].contains("WARN") && lines[1].contains("--xfr-channel-size has no effect: "), "{err}");
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    let mut server = start_server(&["--log-format=json"], |_| {});
    wait_until("the socket exists", Duration::from_secs(20), || is_socket(&server.sock));
    let status = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    assert!(server.child.wait().unwrap().success());
    let mut err = String::new();
    std::io::Read::read_to_string(server.child.stderr.as_mut().unwrap(), &mut err).unwrap();
    let lines: Vec<serde_json::Value> = err
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON object ({e}): {l:?}")))
        .collect();
    assert!(lines.iter().all(|l| l["level"].is_string() && l["message"].is_string()), "{err}");
    assert!(
        lines.iter().any(|l| l["message"] == "frontend on Unix socket" && l["path"].is_string()),
        "the fields of an event are top-level keys: {err}"
    );
    assert!(lines.iter().any(|l| l["message"] == "server stopped"), "{err}");
}
