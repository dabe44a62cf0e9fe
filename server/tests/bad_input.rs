//! Bad input from either side is answered with a clear error or a closed
//! connection, and everything else keeps being served: every case checks
//! that an already established connection still echoes and that a new dial
//! still works afterwards.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use konnq_protocol::konnectivity::client;
use konnq_protocol::wire::{self, Control, DialHeader, DialResult};
use konnq_shared::proto::proxy_service_client::ProxyServiceClient;
use konnq_shared::proto::{packet::Payload, Packet, PacketType};
use konnq_shared::quic::{codes, read_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tonic::transport::Channel;

const LIMIT: Duration = Duration::from_secs(10);
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A dialed connection plus the client that carries it (kept alive with it).
struct Conn {
    _client: ProxyServiceClient<Channel>,
    stream: Stream,
}

async fn established(lab: &Lab, target: SocketAddr) -> Conn {
    let mut client = lab.channel().await;
    let stream = within(LIMIT, Stream::dial(&mut client, &target.to_string())).await;
    Conn { _client: client, stream }
}

async fn assert_echoes(conn: &mut Conn, what: &str) {
    let msg = format!("still echoing after {what}");
    let echoed = within(LIMIT, echo_through(&mut conn.stream, msg.as_bytes())).await;
    assert_eq!(echoed, msg.as_bytes(), "established connection after {what}");
}

/// A fresh single-use tunnel dials, echoes and closes cleanly.
async fn assert_new_dial_works(lab: &Lab, target: SocketAddr, what: &str) {
    let mut conn = established(lab, target).await;
    assert_echoes(&mut conn, what).await;
    conn.stream.close().await;
    let (_, err) = within(LIMIT, conn.stream.read_to_close()).await;
    assert_eq!(err, "", "clean close of a new connection after {what}");
}

/// The next packet on a stream, raw (the harness' `Event` hides connectIDs).
async fn next_packet(s: &mut Stream) -> Packet {
    match within(LIMIT, s.rx.message()).await {
        Ok(Some(p)) => p,
        other => panic!("expected a packet, got {other:?}"),
    }
}

// ---- a. garbage on the Unix socket ---------------------------------------

/// Writes `bytes` on a new Unix socket connection and reads until the server
/// closes it; returns how many bytes the server wrote before closing.
async fn send_garbage(socket: &std::path::Path, bytes: &[u8]) -> usize {
    let mut conn = UnixStream::connect(socket).await.expect("connect");
    // The server may close before it read everything: a failed write is fine.
    let _ = conn.write_all(bytes).await;
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0;
    loop {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return total,
            Ok(n) => {
                total += n;
                assert!(total < 1 << 20, "the server keeps talking to a garbage client");
            }
        }
    }
}

fn garbage(n: usize) -> Vec<u8> {
    // Deterministic, and the first byte is not the 'P' of the preface.
    (0..n as u32).map(|i| (i.wrapping_mul(131) ^ 0x5a) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_unix_socket_closes_only_that_connection() {
    let lab = Lab::new().await;
    let _agent = lab.ready_agent().await;
    let target = echo_target().await;
    let mut conn = established(&lab, target).await;

    let mut http1 = b"GET /ProxyService/Proxy HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec();
    http1.extend(garbage(4096));
    // A valid preface, then a frame header announcing a 16 MiB DATA frame
    // (far over the 16 KiB maximum frame size), then noise.
    let mut after_preface = PREFACE.to_vec();
    after_preface.extend([0xff, 0xff, 0xff, 0x0, 0x0, 0, 0, 0, 1]);
    after_preface.extend(garbage(4096));
    let cases =
        [("4 KiB of garbage", garbage(4096)), ("an HTTP/1.1 request", http1), ("an oversize frame", after_preface)];

    for (what, bytes) in cases {
        // `within` is the assertion: the server must close the connection.
        within(LIMIT, send_garbage(&lab.socket, &bytes)).await;
        assert_echoes(&mut conn, what).await;
    }
    assert_new_dial_works(&lab, target, "garbage on the socket").await;
    // The new connection's task ends just after its CLOSE_RSP is sent.
    let open = &lab.server.metrics.established;
    eventually("only the long-lived connection is open", LIMIT, || open.get() == 1).await;
}

// ---- b. DATA for an unknown connectID -------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_for_an_unknown_connect_id_gets_close_rsp_naming_it() {
    let lab = Lab::new().await;
    let _agent = lab.ready_agent().await;
    let target = echo_target().await;
    let mut conn = established(&lab, target).await;
    let unknown = conn.stream.connect_id + 1_000_000;

    conn.stream.send_as(unknown, b"for nobody").await;
    let p = next_packet(&mut conn.stream).await;
    assert_eq!(p.r#type, PacketType::CloseRsp as i32, "{p:?}");
    match p.payload {
        Some(Payload::CloseResponse(c)) => {
            assert_eq!(c.connect_id, unknown, "CLOSE_RSP names the unknown connectID");
            assert!(!c.error.is_empty(), "CLOSE_RSP for an unknown connection carries an error");
        }
        other => panic!("CLOSE_RSP without closeResponse: {other:?}"),
    }

    assert_echoes(&mut conn, "DATA for an unknown connectID").await;
    let kind = "konnq_server_frontend_errors_total{kind=\"unknown_connection\"}";
    assert_eq!(lab.metric(kind).await, 1.0);
    assert_new_dial_works(&lab, target, "DATA for an unknown connectID").await;
    // The real connection still closes normally.
    conn.stream.close().await;
    let (_, err) = within(LIMIT, conn.stream.read_to_close()).await;
    assert_eq!(err, "");
}

// ---- c. a second DIAL_REQ on a stream -------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_dial_req_on_an_established_stream_is_refused() {
    let lab = Lab::new().await;
    let agent = lab.ready_agent().await;
    let target = echo_target().await;
    let mut conn = established(&lab, target).await;

    let second = fastrand::i64(1..);
    conn.stream.tx.send(client::dial_req(&target.to_string(), second)).await.expect("stream open");
    match within(LIMIT, conn.stream.next()).await {
        Event::DialRsp { random, connect_id, error } => {
            assert_eq!(random, second, "DIAL_RSP names the second dial");
            assert_eq!(connect_id, 0);
            assert!(!error.is_empty(), "the refusal says why");
        }
        other => panic!("expected DIAL_RSP, got {other:?}"),
    }

    assert_echoes(&mut conn, "a second DIAL_REQ").await;
    assert_eq!(lab.metric("konnq_server_frontend_errors_total{kind=\"second_dial\"}").await, 1.0);
    assert_eq!(lab.server.metrics.established.get(), 1, "the second dial opened nothing");
    assert_eq!(agent.metrics.open_endpoint_connections.get(), 1, "the second dial reached no target");
    assert_new_dial_works(&lab, target, "a second DIAL_REQ").await;
}

// ---- d. malformed dial headers reach a real agent -------------------------

/// A QUIC server endpoint standing in for konnq-server (same TLS and
/// transport settings), so a test can write anything on a dial stream.
fn fake_server(certs: &konnq_shared::certs::GeneratedCerts) -> quinn::Endpoint {
    let tls = konnq_shared::tls::server_config(
        &certs.server_cert,
        &certs.server_key,
        Some(&certs.ca_cert),
        &[konnq_shared::tls::ALPN_KONNQ],
    )
    .expect("server TLS");
    let mut server = quinn::ServerConfig::with_crypto(konnq_shared::quic::server_crypto(tls).expect("QUIC TLS"));
    let transport = konnq_shared::quic::transport_config(&konnq_shared::config::QuicConfig::default(), false);
    server.transport_config(Arc::new(transport.expect("transport")));
    quinn::Endpoint::server(server, "127.0.0.1:0".parse().expect("addr")).expect("endpoint")
}

/// Accepts the agent's connection and answers its Hello with a Welcome;
/// the control stream halves must stay alive for the agent to stay.
async fn accept_agent(endpoint: &quinn::Endpoint) -> (quinn::Connection, quinn::SendStream, quinn::RecvStream) {
    let conn = endpoint.accept().await.expect("incoming").await.expect("handshake");
    let (mut send, mut recv) = conn.accept_bi().await.expect("control stream");
    let (kind, body) = read_frame(&mut recv, wire::MAX_CONTROL_BODY, "hello").await.expect("hello frame");
    let hello = Control::from_frame(kind, &body).expect("hello decodes");
    assert!(matches!(hello, Control::Hello(_)), "{hello:?}");
    let welcome = Control::Welcome { server_id: "fake".into(), server_count: 1 };
    send.write_all(&welcome.encode()).await.expect("welcome");
    (conn, send, recv)
}

/// Opens a dial stream, writes `bytes` (then finishes if asked) and
/// expects the agent to reset and stop it with the protocol error code.
async fn expect_refused(conn: &quinn::Connection, what: &str, bytes: &[u8], finish: bool) {
    let protocol = quinn::VarInt::from_u32(codes::PROTOCOL);
    let (mut send, mut recv) = conn.open_bi().await.expect("open_bi");
    match send.write_all(bytes).await {
        Ok(()) => {}
        Err(quinn::WriteError::Stopped(code)) => assert_eq!(code, protocol, "{what}"),
        Err(e) => panic!("{what}: write failed: {e}"),
    }
    if finish {
        let _ = send.finish();
    }
    let stopped = within(LIMIT, send.stopped()).await.ok().flatten();
    if finish {
        // Everything we sent may be delivered and acknowledged before the
        // agent's STOP_SENDING: then there is nothing left to stop.
        assert!(stopped.is_none() || stopped == Some(protocol), "{what}: {stopped:?}");
    } else {
        assert_eq!(stopped, Some(protocol), "{what}: the agent stops our side");
    }
    let mut buf = [0u8; 64];
    match within(LIMIT, recv.read(&mut buf)).await {
        Err(quinn::ReadError::Reset(code)) => assert_eq!(code, protocol, "{what}"),
        other => panic!("{what}: expected a reset from the agent, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_dial_headers_are_refused_and_the_agent_stays_connected() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = konnq_shared::certs::generate(&dir.path().join("pki"), &[]).expect("certs");
    let endpoint = fake_server(&certs);
    let addr = endpoint.local_addr().expect("addr");
    let agent = start_agent(agent_raw(&certs, addr)).await;
    let (conn, _control_send, _control_recv) = within(LIMIT, accept_agent(&endpoint)).await;
    within(LIMIT, agent.wait_connected(true)).await;
    let target = echo_target().await;

    let valid = DialHeader { protocol: "tcp".into(), address: target.to_string(), timeout_ms: 2000, connect_id: 7 };
    let mut wrong_version = valid.encode();
    wrong_version[0] = wire::VERSION + 1;
    let mut oversize = valid.encode();
    oversize[2..6].copy_from_slice(&u32::MAX.to_be_bytes());
    let mut wrong_kind = valid.encode();
    wrong_kind[1] = 0x10; // a control frame kind (Hello)
                          // A well-framed body whose first string claims more bytes than exist.
    let bad_body = [wire::VERSION, 0x01, 0, 0, 0, 4, 0xff, 0xff, b't', b'c'];
    let truncated = &valid.encode()[..3];
    let cases: [(&str, &[u8], bool); 5] = [
        ("wrong version", &wrong_version, false),
        ("oversize length", &oversize, false),
        ("wrong frame kind", &wrong_kind, false),
        ("truncated body", &bad_body, false),
        ("stream finished mid-header", truncated, true),
    ];
    for (what, bytes, finish) in cases {
        expect_refused(&conn, what, bytes, finish).await;
        assert!(agent.is_connected(), "agent still connected after {what}");
    }
    assert_eq!(agent.metrics.stream_errors("malformed_dial_header"), 5);
    assert!(conn.close_reason().is_none(), "QUIC connection still up: {:?}", conn.close_reason());

    // A valid dial on a new stream still works and echoes.
    let (mut send, mut recv) = conn.open_bi().await.expect("open_bi");
    send.write_all(&valid.encode()).await.expect("header");
    let (kind, body) = within(LIMIT, read_frame(&mut recv, wire::MAX_DIAL_BODY, "dial result")).await.expect("result");
    assert_eq!(DialResult::from_frame(kind, &body).expect("decodes"), DialResult::Connected);
    let msg = b"through a real agent after garbage";
    send.write_all(msg).await.expect("payload");
    let mut echoed = vec![0u8; msg.len()];
    within(LIMIT, recv.read_exact(&mut echoed)).await.expect("echo");
    assert_eq!(&echoed, msg);
    send.finish().expect("finish");
    let rest = within(LIMIT, recv.read_to_end(1024)).await.expect("agent finishes after our finish");
    assert!(rest.is_empty());
    assert_eq!(agent.metrics.stream_errors("malformed_dial_header"), 5, "the valid stream is no error");
    agent.shutdown().await;
}

// ---- e. agents without a trusted client certificate -----------------------

/// Records the highest ready-agent count the server ever published.
fn track_max_ready(lab: &Lab) -> Arc<AtomicUsize> {
    let max = Arc::new(AtomicUsize::new(*lab.server.backend.ready_agents().borrow()));
    let mut rx = lab.server.backend.ready_agents();
    let m = max.clone();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let n = *rx.borrow_and_update();
            m.fetch_max(n, Ordering::SeqCst);
        }
    });
    max
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_without_a_trusted_client_certificate_are_never_admitted() {
    let lab = Lab::new().await;
    let max_ready = track_max_ready(&lab);
    let other = konnq_shared::certs::generate(&lab.dir.path().join("other-pki"), &[]).expect("second CA");
    // Trusts the right CA for the server, presents a cert of another CA.
    let untrusted = lab
        .agent_with(|raw| {
            raw.agent_cert = Some(other.agent_cert.clone());
            raw.agent_key = Some(other.agent_key.clone());
        })
        .await;
    let anonymous = lab
        .agent_with(|raw| {
            raw.agent_cert = None;
            raw.agent_key = None;
        })
        .await;
    let failures = |a: &konnq_agent::AgentHandle| a.metrics.connect_failures.get();
    eventually("both agents refused several times", Duration::from_secs(15), || {
        failures(&untrusted) >= 5 && failures(&anonymous) >= 5
    })
    .await;
    assert_eq!(*lab.server.backend.ready_agents().borrow(), 0);
    assert_eq!(lab.server.backend.agent_count(), 0);
    assert_eq!(max_ready.load(Ordering::SeqCst), 0, "no refused agent was ever counted");
    assert!(!untrusted.is_connected() && !anonymous.is_connected());

    // A correctly configured agent is admitted and carries a dial.
    let _good = lab.ready_agent().await;
    let target = echo_target().await;
    assert_new_dial_works(&lab, target, "refused agents").await;
    // The refused agents keep being refused.
    let (u, a) = (failures(&untrusted), failures(&anonymous));
    eventually("refused again", Duration::from_secs(15), || failures(&untrusted) > u && failures(&anonymous) > a).await;
    assert_eq!(lab.server.backend.agent_count(), 1);
    assert_eq!(max_ready.load(Ordering::SeqCst), 1);
}

// ---- f. a DATA message over the server's maximum message size -------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_message_ends_its_stream_with_an_error() {
    let lab = Lab::with(|raw| raw.max_message_bytes = Some(4 * 1024 * 1024)).await;
    let agent = lab.ready_agent().await;
    let target = echo_target().await;
    let mut bystander = established(&lab, target).await;
    let mut victim = established(&lab, target).await;

    let big = random_bytes(5 * 1024 * 1024);
    victim.stream.send(&big).await;
    // The stream must end with an error: a non-OK gRPC status, or a
    // CLOSE_RSP with an error text. No byte of the message may be echoed.
    let id = victim.stream.connect_id;
    match within(LIMIT, victim.stream.rx.message()).await {
        Ok(Some(p)) => match p.payload {
            Some(Payload::CloseResponse(c)) => {
                assert_eq!(c.connect_id, id, "CLOSE_RSP names the victim connection");
                assert!(!c.error.is_empty(), "CLOSE_RSP after an oversize message carries an error");
            }
            other => panic!("unexpected packet after an oversize message: type {} {other:?}", p.r#type),
        },
        Ok(None) => panic!("the stream ended with grpc-status OK and no CLOSE_RSP: the client is told nothing"),
        Err(status) => assert_ne!(status.code(), tonic::Code::Ok),
    }

    assert_echoes(&mut bystander, "an oversize message").await;
    assert_new_dial_works(&lab, target, "an oversize message").await;
    eventually("the victim's connection is torn down", LIMIT, || {
        lab.server.metrics.established.get() == 1 && agent.metrics.open_endpoint_connections.get() == 1
    })
    .await;
}
