//! A stand-in konnq-server for the agent's integration tests: a QUIC
//! endpoint that answers the agent's Hello and opens dial streams as
//! konnq-server does, so the tests need only the agent's own crate.

use konnq_protocol::wire::{self, Control, DialHeader, DialResult, Hello};
use konnq_shared::certs::GeneratedCerts;
use konnq_shared::quic::read_frame;

/// A QUIC server endpoint on 127.0.0.1 with the generated server certificate.
pub fn server_endpoint(certs: &GeneratedCerts) -> quinn::Endpoint {
    let alpn = [konnq_shared::tls::ALPN_KONNQ];
    let tls = konnq_shared::tls::server_config(&certs.server_cert, &certs.server_key, None, &alpn).expect("tls");
    let config = quinn::ServerConfig::with_crypto(konnq_shared::quic::server_crypto(tls).expect("quic crypto"));
    quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("addr")).expect("server endpoint")
}

/// Accepts one agent, reads its Hello and welcomes it with `server_count`.
/// The control stream halves are returned because dropping them would end
/// the agent's session.
pub async fn accept_agent(
    endpoint: &quinn::Endpoint,
    server_count: u32,
) -> (quinn::Connection, Hello, quinn::SendStream, quinn::RecvStream) {
    let conn = endpoint.accept().await.expect("an agent connects").await.expect("QUIC handshake");
    let (mut send, mut recv) = conn.accept_bi().await.expect("control stream");
    let (kind, body) = read_frame(&mut recv, wire::MAX_CONTROL_BODY, "hello").await.expect("hello");
    let hello = match Control::from_frame(kind, &body) {
        Ok(Control::Hello(h)) => h,
        other => panic!("expected a Hello, got {other:?}"),
    };
    let welcome = Control::Welcome { server_id: "test-server".into(), server_count };
    send.write_all(&welcome.encode()).await.expect("welcome");
    (conn, hello, send, recv)
}

/// Dials `target` through the agent as the server does; returns the
/// agent's answer and the stream.
pub async fn dial(conn: &quinn::Connection, target: &str) -> (DialResult, quinn::SendStream, quinn::RecvStream) {
    let (mut send, mut recv) = conn.open_bi().await.expect("dial stream");
    let header = DialHeader { protocol: "tcp".into(), address: target.into(), timeout_ms: 5000, connect_id: 1 };
    send.write_all(&header.encode()).await.expect("dial header");
    let (kind, body) = read_frame(&mut recv, wire::MAX_DIAL_BODY, "dial result").await.expect("dial result");
    (DialResult::from_frame(kind, &body).expect("a dial result"), send, recv)
}
