//! The agent's HTTP endpoints as probes, dashboards and alerts written for
//! upstream use them: paths, statuses and bodies of the health and admin
//! ports, and the metric families `/metrics` serves after real dials, under
//! upstream's names and label values; `/debug/pprof/` with
//! `--enable-profiling`. The agent runs in-process against a
//! stand-in server: a QUIC endpoint that answers the Hello and opens dial
//! streams as konnq-server does.

use std::net::SocketAddr;
use std::time::Duration;

use konnq_protocol::wire::DialResult;
use konnq_shared::config::RawAgentConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

use common::{accept_agent, dial, server_endpoint};

const P: &str = "konnectivity_network_proxy_agent_";
const LIMIT: Duration = Duration::from_secs(10);

/// Status, `Content-Type` and body of a GET.
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.expect("send request");
    let mut out = String::new();
    tokio::time::timeout(LIMIT, s.read_to_string(&mut out)).await.expect("in time").expect("read response");
    let (head, body) = out.split_once("\r\n\r\n").expect("a response head");
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("a status code");
    let content_type = head.lines().find_map(|l| l.strip_prefix("content-type: ")).unwrap_or_default();
    (status, content_type.to_owned(), body.to_owned())
}

async fn status_and_body(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = get(addr, path).await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ports_and_metrics_answer_as_upstream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = konnq_shared::certs::generate(&dir.path().join("pki"), &[]).expect("certs");
    let server = server_endpoint(&certs);
    let raw = RawAgentConfig {
        agent_id: Some("endpoints-test".into()),
        proxy_server_host: Some("127.0.0.1".into()),
        proxy_server_port: Some(server.local_addr().expect("server addr").port()),
        ca_cert: Some(certs.ca_cert.clone()),
        health_bind_address: Some("127.0.0.1".parse().unwrap()),
        health_server_port: Some(0),
        admin_bind_address: Some("127.0.0.1".parse().unwrap()),
        admin_server_port: Some(0),
        sync_interval: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    let cfg = raw.validate().expect("valid agent config");
    let listeners = konnq_agent::Listeners::bind(&cfg).await.expect("bind");
    // Not connected until the stand-in server accepts below.
    let agent = konnq_agent::start(cfg, listeners).await.expect("agent starts");
    let (health, admin) = (agent.health_addr, agent.admin_addr);

    assert_eq!(status_and_body(health, "/healthz").await, (200, "ok".to_owned()));
    let not_ready = "[+]ping ok\n[-]server-connected failed: no servers connected\n".to_owned();
    for path in ["/readyz", "/ready", "/readyz?verbose"] {
        assert_eq!(status_and_body(health, path).await, (503, not_ready.clone()), "{path}");
    }
    for addr in [health, admin] {
        let (status, content_type, body) = get(addr, "/metrics").await;
        assert_eq!((status, content_type.as_str()), (200, "text/plain; version=0.0.4; charset=utf-8"));
        assert!(body.contains(&format!("\n{P}open_server_connections 0\n")), "{body}");
    }

    let (conn, _hello, _control_send, _control_recv) =
        tokio::time::timeout(LIMIT, accept_agent(&server, 3)).await.expect("agent");
    tokio::time::timeout(LIMIT, agent.wait_connected(true)).await.expect("connected");
    for path in ["/readyz", "/ready"] {
        assert_eq!(status_and_body(health, path).await, (200, "ok".to_owned()), "{path}");
    }
    let verbose = "[+]ping ok\n[+]server-connected ok\ncheck passed\n".to_owned();
    assert_eq!(status_and_body(health, "/readyz?verbose").await, (200, verbose));

    // One dial that connects, one to a closed port.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind target");
    let (result, _send, _recv) = dial(&conn, &echo.local_addr().unwrap().to_string()).await;
    assert!(matches!(result, DialResult::Connected));
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let (result, _, _) = dial(&conn, &closed.to_string()).await;
    assert!(matches!(result, DialResult::Failed(_)));

    let (_, _, text) = get(admin, "/metrics").await;
    for line in [
        format!("\n{P}open_server_connections 1\n"),
        // The server said there are 3: the agent aims for 3.
        format!("\n{P}known_server_count 3\n"),
        format!("\n{P}open_endpoint_connections 1\n"),
        format!("\n{P}dial_duration_seconds_count 1\n"),
        format!("\n{P}dial_duration_seconds_bucket{{le=\"30\"}} 1\n"),
        format!("\n{P}endpoint_dial_failure_total{{reason=\"unknown\"}} 1\n"),
    ] {
        assert!(text.contains(&line), "missing {line:?} in\n{text}");
    }
    let families = konnq_shared::prom::parse(&text).expect("a readable exposition");
    assert_eq!(families[&format!("{P}endpoint_dial_failure_total")].kind, "counter");
    assert!(!text.contains(&format!("{P}server_connection_failure_count_total")), "{text}");
    agent.shutdown().await;
}

/// Status, `Content-Type` and raw body of a GET (HTTP/1.0: the body ends with
/// the connection).
async fn get_bytes(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.expect("send request");
    let mut out = Vec::new();
    tokio::time::timeout(LIMIT, s.read_to_end(&mut out)).await.expect("in time").expect("read response");
    let end = out.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&out[..end]).into_owned();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("a status code");
    let content_type = head.lines().find_map(|l| l.strip_prefix("content-type: ")).unwrap_or_default();
    (status, content_type.to_owned(), out[end + 4..].to_vec())
}

/// The admin port as `--enable-profiling` sets it up (`--admin-server-port`,
/// as upstream's agent): `/debug/pprof/` and a CPU profile in the format
/// `go tool pprof` reads; without it, no such paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_profiling_serves_debug_pprof_on_the_admin_port() {
    use pprof::protos::Message;
    use std::io::Read;

    let serve = |profiling| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let addr = listener.local_addr().expect("admin addr");
        tokio::spawn(konnq_agent::admin::serve_admin(listener, konnq_agent::Metrics::new(), profiling));
        addr
    };
    let (on, off) = (serve(true).await, serve(false).await);
    for path in ["/debug/pprof/", "/debug/pprof/profile?seconds=1", "/debug/pprof/heap"] {
        assert_eq!(get_bytes(off, path).await.0, 404, "{path} without --enable-profiling");
    }

    let (status, content_type, index) = get_bytes(on, "/debug/pprof/").await;
    assert_eq!((status, content_type.as_str()), (200, "text/html; charset=utf-8"));
    assert!(String::from_utf8_lossy(&index).contains("href='profile'"));
    let (status, _, text) = get_bytes(on, "/debug/pprof/profile?seconds=0").await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&text));
    let (status, _, text) = get_bytes(on, "/debug/pprof/mutex").await;
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&text).starts_with("konnq is not a Go program: no mutex profile"));

    let (status, content_type, body) = get_bytes(on, "/debug/pprof/profile?seconds=1").await;
    assert_eq!((status, content_type.as_str()), (200, "application/octet-stream"));
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(body.as_slice()).read_to_end(&mut raw).expect("gzip");
    let p = pprof::protos::Profile::decode(raw.as_slice()).expect("profile.proto");
    let s = |i: i64| p.string_table[usize::try_from(i).expect("an index")].as_str();
    let types: Vec<(&str, &str)> = p.sample_type.iter().map(|t| (s(t.ty), s(t.unit))).collect();
    assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
    assert_eq!(p.period, 10_000_000);
    assert!(p.duration_nanos >= 1_000_000_000, "{}", p.duration_nanos);
}
