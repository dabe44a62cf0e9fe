//! The konnq-agent binary on SIGUSR1: its QUIC connection moves to a new
//! local UDP port (the server sees the same connection arrive from it), a
//! proxied connection opened before the signal keeps working, and the agent
//! keeps running until SIGTERM. On SIGTERM it drains: it tells the server
//! on the control stream, its open connection carries on, and a second
//! SIGTERM makes it exit at once.
//!
//! The server here is a minimal one speaking konnq's agent protocol (the
//! Hello/Welcome exchange and one dial stream), so that the test needs only
//! the agent's own crate.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use konnq_protocol::wire::{self, Control, DialResult};
use konnq_shared::quic::read_frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

use common::{accept_agent, dial, server_endpoint};

const BIN: &str = env!("CARGO_BIN_EXE_konnq-agent");
const LIMIT: Duration = Duration::from_secs(20);

/// The agent's stderr so far (colour codes removed), and whether it ended
/// (the process exited).
#[derive(Default)]
struct Log {
    lines: Vec<String>,
    closed: bool,
}

/// The agent process and its log; killed on drop so a failed assertion
/// leaves no process behind.
struct Agent {
    child: Child,
    log: tokio::sync::watch::Receiver<Log>,
}

impl Agent {
    fn spawn(args: &[String]) -> Agent {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn konnq-agent");
        let stderr = child.stderr.take().expect("piped stderr");
        let (sink, log) = tokio::sync::watch::channel(Log::default());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.send_modify(|l| l.lines.push(strip_ansi(&line)));
            }
            sink.send_modify(|l| l.closed = true);
        });
        Agent { child, log }
    }

    /// Waits (bounded) for a log line containing `needle` and returns it.
    async fn log_line(&self, needle: &str) -> String {
        let mut rx = self.log.clone();
        let found =
            tokio::time::timeout(LIMIT, rx.wait_for(|l| l.lines.iter().any(|line| line.contains(needle)))).await;
        match found {
            Ok(Ok(log)) => log.lines.iter().find(|l| l.contains(needle)).cloned().unwrap_or_default(),
            _ => panic!("no log line with {needle:?}; log:\n{}", self.log.borrow().lines.join("\n")),
        }
    }

    /// Waits (bounded) for the process to exit: its stderr closes.
    async fn exited(&mut self) -> std::process::ExitStatus {
        let mut rx = self.log.clone();
        let closed = tokio::time::timeout(LIMIT, rx.wait_for(|l| l.closed)).await;
        assert!(matches!(closed, Ok(Ok(_))), "the agent did not exit");
        self.child.wait().expect("wait")
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill").args([format!("-{name}"), self.child.id().to_string()]).status();
        assert!(status.expect("run kill").success(), "kill -{name}");
    }

    fn still_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI sequence: ESC [ ... final byte in '@'..='~'.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of `key=` in a log line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line.find(&format!("{key}=")).unwrap_or_else(|| panic!("no {key}= in {line:?}")) + key.len() + 1;
    line[start..].split_whitespace().next().unwrap_or_default()
}

/// The stream of a dial the agent completed.
fn connected(
    (result, send, recv): (DialResult, quinn::SendStream, quinn::RecvStream),
    target: &str,
) -> (quinn::SendStream, quinn::RecvStream) {
    assert!(matches!(result, DialResult::Connected), "dial to {target}: {result:?}");
    (send, recv)
}

async fn echo_target() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("echo addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn echo(stream: &mut (quinn::SendStream, quinn::RecvStream), payload: &[u8]) {
    stream.0.write_all(payload).await.expect("write to the dial stream");
    let mut back = vec![0u8; payload.len()];
    stream.1.read_exact(&mut back).await.expect("read the echo");
    assert!(back == payload, "echo differs");
}

/// One echo round trip; false once the stream is gone.
async fn try_echo(stream: &mut (quinn::SendStream, quinn::RecvStream), payload: &[u8]) -> bool {
    let mut back = vec![0u8; payload.len()];
    stream.0.write_all(payload).await.is_ok() && stream.1.read_exact(&mut back).await.is_ok() && back == payload
}

async fn http_get(addr: &str, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect admin");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.expect("send request");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("read response");
    body
}

/// The agent's arguments for `server`, on ephemeral local ports, plus `extra`.
fn agent_args(server: &quinn::Endpoint, certs: &konnq_shared::certs::GeneratedCerts, extra: &[&str]) -> Vec<String> {
    let port = server.local_addr().expect("server addr").port();
    let mut args = vec![
        "--proxy-server-host=127.0.0.1".to_owned(),
        format!("--proxy-server-port={port}"),
        format!("--ca-cert={}", certs.ca_cert.display()),
        "--health-bind-address=127.0.0.1".to_owned(),
        "--health-server-port=0".to_owned(),
        "--admin-server-port=0".to_owned(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

#[tokio::test]
async fn sigusr1_moves_the_quic_connection_and_the_agent_keeps_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = konnq_shared::certs::generate(&dir.path().join("pki"), &[]).expect("certs");
    let server = server_endpoint(&certs);
    let args = agent_args(&server, &certs, &["--agent-id=sigusr1-test", "--sync-interval=100ms"]);
    let mut agent = Agent::spawn(&args);
    let started = agent.log_line("konnq-agent started").await;
    let admin = field(&started, "admin_addr").to_owned();
    // The agent listens for SIGUSR1 before it starts, so once connected a
    // SIGUSR1 cannot hit the default action (terminate).
    let (conn, hello, _control_send, _control_recv) =
        tokio::time::timeout(LIMIT, accept_agent(&server, 1)).await.expect("agent connects in time");
    assert_eq!(hello.agent_id, "sigusr1-test");
    let old_port = conn.remote_address().port();
    let target = echo_target().await;
    let mut proxied = connected(dial(&conn, &target).await, &target);
    echo(&mut proxied, b"before the move").await;

    agent.signal("USR1");
    let moved = agent.log_line("moved a server connection to a new local socket").await;
    let new_port: u16 = field(&moved, "new").rsplit(':').next().and_then(|p| p.parse().ok()).expect("new port");
    let logged_old: u16 = field(&moved, "old").rsplit(':').next().and_then(|p| p.parse().ok()).expect("old port");
    assert_eq!(logged_old, old_port, "the log names the socket the server saw: {moved}");
    assert_ne!(new_port, old_port, "{moved}");

    // Traffic after the move arrives from the new port, on the same connection.
    let payload: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
    tokio::time::timeout(LIMIT, echo(&mut proxied, &payload)).await.expect("echo after the move in time");
    assert_eq!(conn.remote_address().port(), new_port, "the server's view of the agent moved");
    assert!(conn.close_reason().is_none(), "the agent's QUIC connection is still open");
    let mut second = connected(dial(&conn, &target).await, &target);
    echo(&mut second, b"a new proxied connection").await;

    assert!(agent.still_running(), "SIGUSR1 does not stop the agent");
    let metrics = http_get(&admin, "/metrics").await;
    assert!(metrics.contains("\nkonnq_agent_socket_rebinds_total 1\n"), "{metrics}");
    assert!(metrics.contains("\nkonnq_agent_server_connect_failures_total 0\n"), "{metrics}");

    // No proxied connection left: SIGTERM's drain has nothing to wait for.
    drop((proxied, second));
    agent.signal("TERM");
    let exit = agent.exited().await;
    assert!(exit.success(), "exit status {exit:?}");
}

#[tokio::test]
async fn sigterm_drains_and_a_second_sigterm_exits_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = konnq_shared::certs::generate(&dir.path().join("pki"), &[]).expect("certs");
    let server = server_endpoint(&certs);
    // Far longer than the test's limit: only the second signal ends it.
    let args = agent_args(&server, &certs, &["--graceful-shutdown-timeout=10m"]);
    let mut agent = Agent::spawn(&args);
    let (conn, _hello, _control_send, mut control) =
        tokio::time::timeout(LIMIT, accept_agent(&server, 1)).await.expect("agent connects in time");
    let target = echo_target().await;
    let mut proxied = connected(dial(&conn, &target).await, &target);

    agent.signal("TERM");
    let (kind, body) = tokio::time::timeout(LIMIT, read_frame(&mut control, wire::MAX_CONTROL_BODY, "control"))
        .await
        .expect("a control message in time")
        .expect("a control message");
    assert_eq!(Control::from_frame(kind, &body).expect("valid control message"), Control::Drain);
    agent.log_line("draining").await;
    echo(&mut proxied, b"after the first SIGTERM").await;
    // Keep the connection busy, so the drain cannot end on its own as idle
    // (after `QUIET`) however long the machine takes to deliver the second
    // signal; the traffic ends when the agent closes the connection.
    let busy = tokio::spawn(async move {
        let mut rounds = 0u32;
        while rounds < 2_000 && try_echo(&mut proxied, b"still busy").await {
            rounds += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    tokio::time::sleep(konnq_agent::QUIET + Duration::from_millis(500)).await;
    assert!(agent.still_running(), "the agent waits for its busy connection");

    agent.signal("TERM");
    let exit = agent.exited().await;
    assert!(exit.success(), "exit status {exit:?}");
    agent.log_line("second signal").await;
    tokio::time::timeout(LIMIT, busy).await.expect("the proxied connection ends with the agent").expect("echo task");
}
