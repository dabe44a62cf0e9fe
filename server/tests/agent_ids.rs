//! Two live connections with one agent ID: the newest takes the dials; a
//! reconnect whose old connection goes away within the grace is not a
//! conflict, two live agents with one ID are (logged and counted); when the
//! newest goes, the other takes the dials again.

mod common;

use std::time::Duration;

use common::*;
use konnq_shared::quic::read_frame;
use konnq_shared::wire::{self, Control, Hello};

const LIMIT: Duration = Duration::from_secs(15);

/// A bare agent connection that says Hello as `agent_id` and is welcomed;
/// the control stream stays open as long as its halves are kept.
async fn raw_agent(
    lab: &Lab,
    agent_id: &str,
) -> (quinn::Endpoint, quinn::Connection, quinn::SendStream, quinn::RecvStream) {
    let tls = konnq_shared::tls::client_config(
        &lab.certs.ca_cert,
        Some((&lab.certs.agent_cert, &lab.certs.agent_key)),
        &[konnq_shared::tls::ALPN_KONNQ],
    )
    .expect("client TLS");
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let crypto = konnq_shared::quic::client_crypto(tls).expect("QUIC TLS");
    endpoint.set_default_client_config(quinn::ClientConfig::new(crypto));
    let conn = endpoint.connect(lab.server.agent_addr, "localhost").expect("connect").await.expect("handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("control stream");
    let hello = Hello { agent_id: agent_id.into(), ..Hello::default() };
    send.write_all(&Control::Hello(hello).encode()).await.expect("hello");
    let (kind, body) = read_frame(&mut recv, wire::MAX_CONTROL_BODY, "answer").await.expect("an answer");
    let answer = Control::from_frame(kind, &body).expect("answer decodes");
    assert!(matches!(answer, Control::Welcome { .. }), "{answer:?}");
    (endpoint, conn, send, recv)
}

/// Dials the echo target through the server and checks the echo.
async fn dial_echo(lab: &Lab) {
    let target = echo_target().await;
    let mut client = lab.channel().await;
    let mut stream = within(LIMIT, Stream::dial(&mut client, &target.to_string())).await;
    assert_eq!(within(LIMIT, echo_through(&mut stream, b"ping")).await, b"ping");
    stream.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_agents_with_one_id_are_a_conflict_and_the_newest_takes_dials() {
    let lab = Lab::new().await;
    let first = lab.agent_with(|raw| raw.agent_id = Some("node-x".into())).await;
    within(LIMIT, lab.server.wait_for_agents(1)).await;
    let second = lab.agent_with(|raw| raw.agent_id = Some("node-x".into())).await;
    within(LIMIT, second.wait_connected(true)).await;
    eventually("both registered", LIMIT, || lab.server.backend.agent_count() == 2).await;
    let m = &lab.server.metrics;
    assert_eq!(m.ready_backends(), 1, "one agent ID takes dials once");
    eventually("the conflict is counted after the grace", LIMIT, || m.agent_id_conflicts.get() == 1).await;

    dial_echo(&lab).await;
    assert_eq!(second.metrics.dial_duration.count(), 1, "the newest connection took the dial");
    assert_eq!(first.metrics.dial_duration.count(), 0);

    second.shutdown().await;
    eventually("the newest is gone", LIMIT, || lab.server.backend.agent_count() == 1).await;
    assert_eq!(m.ready_backends(), 1, "the other one takes dials again");
    dial_echo(&lab).await;
    assert_eq!(first.metrics.dial_duration.count(), 1);
    assert!(lab.server.metrics.render().contains("konnq_server_agent_id_conflicts_total 1\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_whose_old_connection_goes_away_is_not_a_conflict() {
    let lab = Lab::new().await;
    let (_endpoint, old, _send, _recv) = raw_agent(&lab, "node-y").await;
    within(LIMIT, lab.server.wait_for_agents(1)).await;
    let agent = lab.agent_with(|raw| raw.agent_id = Some("node-y".into())).await;
    within(LIMIT, agent.wait_connected(true)).await;
    eventually("both registered", LIMIT, || lab.server.backend.agent_count() == 2).await;
    assert_eq!(lab.server.metrics.ready_backends(), 1);
    dial_echo(&lab).await;
    assert_eq!(agent.metrics.dial_duration.count(), 1, "the reconnected agent took the dial");
    old.close(0u32.into(), b"gone");
    eventually("the old connection is gone", LIMIT, || lab.server.backend.agent_count() == 1).await;
    // Nothing marks the end of the grace (idle timeout 1.5 s + 1 s) but
    // time: wait past it, then check that no conflict was counted.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(lab.server.metrics.agent_id_conflicts.get(), 0);
    assert_eq!(lab.server.metrics.ready_backends(), 1);
}
