//! A dial the server gives up before its dial header reaches the agent (its
//! stream reset first) is a cancelled dial, counted and answered as one,
//! not a malformed dial stream. The agent runs in-process against a
//! stand-in server over real QUIC.

use std::time::Duration;

use konnq_protocol::wire::DialResult;
use konnq_shared::config::RawAgentConfig;
use konnq_shared::quic::codes;
use quinn::VarInt;

mod common;

use common::{accept_agent, dial, server_endpoint};

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_stream_reset_before_its_header_counts_as_cancelled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = konnq_shared::certs::generate(&dir.path().join("pki"), &[]).expect("certs");
    let server = server_endpoint(&certs);
    let raw = RawAgentConfig {
        agent_id: Some("cancelled-dial-test".into()),
        proxy_server_host: Some("127.0.0.1".into()),
        proxy_server_port: Some(server.local_addr().expect("server addr").port()),
        ca_cert: Some(certs.ca_cert.clone()),
        health_bind_address: Some("127.0.0.1".parse().unwrap()),
        health_server_port: Some(0),
        admin_bind_address: Some("127.0.0.1".parse().unwrap()),
        admin_server_port: Some(0),
        ..Default::default()
    };
    let cfg = raw.validate().expect("valid agent config");
    let listeners = konnq_agent::Listeners::bind(&cfg).await.expect("bind");
    let agent = konnq_agent::start(cfg, listeners).await.expect("agent starts");
    let (conn, _hello, _control_send, _control_recv) =
        tokio::time::timeout(LIMIT, accept_agent(&server, 1)).await.expect("agent");

    // The stream reaches the agent only as RESET_STREAM: no header byte.
    let (mut send, mut recv) = conn.open_bi().await.expect("dial stream");
    send.reset(VarInt::from_u32(codes::DIAL_ABANDONED)).expect("reset");
    // The agent answers by resetting its side: the signal it is done.
    let mut buf = [0u8; 16];
    let answer = tokio::time::timeout(LIMIT, recv.read(&mut buf)).await.expect("the agent answers");
    assert!(
        matches!(answer, Err(quinn::ReadError::Reset(code)) if code == VarInt::from_u32(codes::DIAL_ABANDONED)),
        "the agent gives the dial up as abandoned, not as a protocol error: {answer:?}"
    );
    assert_eq!(agent.metrics.stream_errors("cancelled"), 1);
    assert_eq!(agent.metrics.stream_errors("malformed_dial_header"), 0);

    // The connection goes on serving dials.
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind target");
    let (result, _send, _recv) =
        tokio::time::timeout(LIMIT, dial(&conn, &target.local_addr().unwrap().to_string())).await.expect("dial");
    assert!(matches!(result, DialResult::Connected), "{result:?}");
    assert_eq!(agent.metrics.stream_errors("malformed_dial_header"), 0);
    agent.shutdown().await;
}
