//! The HTTP endpoints as probes, dashboards and alerts written for upstream
//! use them: paths, statuses and bodies of the health and admin ports, and
//! the metric families `/metrics` serves after real traffic, under
//! upstream's names and label values.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::h2frames::*;
use common::*;
use konnq_shared::prom::{parse, ParsedFamily};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const P: &str = "konnectivity_network_proxy_server_";

/// Status, `Content-Type` and body of a GET.
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.expect("send request");
    let mut out = String::new();
    within(Duration::from_secs(10), s.read_to_string(&mut out)).await.expect("read response");
    let (head, body) = out.split_once("\r\n\r\n").expect("a response head");
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("a status code");
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: ").or_else(|| l.strip_prefix("Content-Type: ")))
        .unwrap_or_default();
    (status, content_type.to_owned(), body.to_owned())
}

async fn status_and_body(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = get(addr, path).await;
    (status, body)
}

/// The value of the sample `name{labels}` (labels in any order), if exposed.
fn sample(families: &BTreeMap<String, ParsedFamily>, family: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let f = families.get(family)?;
    let matches = |l: &[(String, String)]| {
        l.len() == labels.len() && labels.iter().all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
    };
    f.samples.iter().find(|s| s.name == name && matches(&s.labels)).map(|s| s.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_admin_ports_answer_as_upstream() {
    let lab = Lab::new().await;
    let (health, admin) = (lab.server.health_addr, lab.server.admin_addr);
    assert_eq!(status_and_body(health, "/healthz").await, (200, "ok".to_owned()));
    for path in ["/readyz", "/ready"] {
        let not_ready = (500, "no connection to any proxy agent".to_owned());
        assert_eq!(status_and_body(health, path).await, not_ready, "{path} without an agent");
    }
    for addr in [health, admin] {
        let (status, content_type, body) = get(addr, "/metrics").await;
        assert_eq!((status, content_type.as_str()), (200, "text/plain; version=0.0.4; charset=utf-8"));
        assert!(body.contains(&format!("\n{P}ready_backend_connections 0\n")), "{body}");
    }
    assert_eq!(get(health, "/no-such-path").await.0, 404);

    let _agent = lab.ready_agent().await;
    for path in ["/readyz", "/ready"] {
        assert_eq!(status_and_body(health, path).await, (200, "ok".to_owned()), "{path} with an agent");
    }

    // Graceful shutdown waits for the open connection: not ready meanwhile.
    let echo = echo_target().await;
    let mut client = lab.channel().await;
    let _open = Stream::dial(&mut client, &echo.to_string()).await;
    let Lab { dir: _dir, server, .. } = lab;
    let stopping = tokio::spawn(server.shutdown());
    let draining = async {
        while status_and_body(health, "/readyz").await != (500, "shutting down".to_owned()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    within(Duration::from_secs(5), draining).await;
    within(Duration::from_secs(15), stopping).await.expect("shutdown");
}

/// Opens a Proxy stream frame by frame, then resets it before any packet,
/// as a client that gives up does.
async fn open_and_reset(socket: &std::path::Path) {
    let mut io = UnixStream::connect(socket).await.expect("connect");
    let mut encoder = loona_hpack::Encoder::new();
    let headers: [(&[u8], &[u8]); 5] = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/ProxyService/Proxy"),
        (b":authority", b"localhost"),
        (b"content-type", b"application/grpc"),
    ];
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frame(HEADERS, END_HEADERS, 1, &encoder.encode(headers)));
    out.extend(frame(RST_STREAM, 0, 1, &8u32.to_be_bytes())); // CANCEL
    io.write_all(&out).await.expect("write frames");
    // Wait for the server's answer to our SETTINGS, so the frames were read.
    let mut buf = [0u8; 64];
    let _ = within(Duration::from_secs(5), io.read(&mut buf)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_traffic_have_upstream_names_and_labels() {
    let lab = Lab::new().await;
    // A dial without an agent.
    let mut client = lab.channel().await;
    let mut s = Stream::open(&mut client, "127.0.0.1:9", 1).await;
    assert!(matches!(s.next().await, Event::DialRsp { connect_id: 0, .. }));
    // A client that resets its stream.
    open_and_reset(&lab.socket).await;

    let agent = lab.ready_agent().await;
    // A dial, bytes both ways, CLOSE_REQ.
    let echo = echo_target().await;
    let mut client = lab.channel().await;
    let mut s = Stream::dial(&mut client, &echo.to_string()).await;
    assert_eq!(echo_through(&mut s, b"ping").await, b"ping");
    s.close().await;
    assert!(matches!(s.read_to_close().await, (_, e) if e.is_empty()));
    // A dial the agent cannot make.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let mut client = lab.channel().await;
    let mut s = Stream::open(&mut client, &closed.to_string(), 2).await;
    assert!(matches!(s.next().await, Event::DialRsp { connect_id: 0, .. }));
    let m = &lab.server.metrics;
    eventually("sessions over", Duration::from_secs(5), || m.proxy_streams.get() == 0 && m.established.get() == 0)
        .await;

    let (status, _, text) = get(lab.server.admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    let families = parse(&text).expect("a readable exposition");
    let value = |family: &str, suffix: &str, labels: &[(&str, &str)]| {
        let family = format!("{P}{family}");
        sample(&families, &family, &format!("{family}{suffix}"), labels)
    };
    assert_eq!(value("dial_failure_count", "", &[("reason", "no_agent")]), Some(1.0), "{text}");
    assert_eq!(value("dial_failure_count", "", &[("reason", "error_response")]), Some(1.0), "{text}");
    assert_eq!(value("dial_duration_seconds", "_count", &[]), Some(1.0), "{text}");
    assert_eq!(value("ready_backend_connections", "", &[]), Some(1.0));
    assert_eq!(value("ready_backends", "", &[("proxy_strategy", "default")]), Some(1.0));
    assert_eq!(value("grpc_connections", "", &[("service_method", "Connect")]), Some(1.0));
    assert_eq!(value("grpc_connections", "", &[("service_method", "Proxy")]), Some(0.0));
    assert_eq!(value("http_connections", "", &[]), Some(0.0));
    assert_eq!(value("pending_backend_dials", "", &[]), Some(0.0));
    assert_eq!(value("established_connections", "", &[]), Some(0.0));
    let packets =
        |segment, packet_type| value("stream_packets_total", "", &[("segment", segment), ("packet_type", packet_type)]);
    assert_eq!(packets("from_client", "DIAL_REQ"), Some(3.0), "{text}");
    assert_eq!(packets("from_client", "DATA"), Some(1.0));
    assert_eq!(packets("from_client", "CLOSE_REQ"), Some(1.0));
    assert_eq!(packets("to_client", "DIAL_RSP"), Some(3.0));
    assert_eq!(packets("to_client", "DATA"), Some(1.0));
    assert_eq!(packets("to_client", "CLOSE_RSP"), Some(1.0));
    let reset = [("segment", "from_client"), ("code", "Canceled"), ("packet_type", "Unknown")];
    assert_eq!(value("stream_errors_total", "", &reset), Some(1.0), "{text}");
    assert!(value("frontend_write_duration_seconds", "_count", &[]).unwrap_or(0.0) >= 5.0, "{text}");
    assert_eq!(
        sample(&families, "konnq_server_bytes_total", "konnq_server_bytes_total", &[("direction", "to_agent")]),
        Some(4.0)
    );
    assert!(!text.contains("dial_failure_count_total") && !text.contains("_total_total"), "{text}");
    drop(agent);
}
