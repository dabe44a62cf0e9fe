//! The QUIC send window bounds what one connection buffers, however many
//! streams write to it: the server opens dial streams toward the agent and
//! writes uploads into them, and every written byte stays in the server's
//! memory until the agent acknowledges it.
//!
//! Deterministic without timing: on a current-thread runtime the test's
//! writes run back to back without yielding, so the connection's driver
//! never runs between them. No packet leaves and no acknowledgement
//! arrives; the bytes quinn accepts are exactly what it lets the writers
//! buffer before anything is acknowledged.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use konnq_shared::config::QuicConfig;
use konnq_shared::quic::{client_crypto, send_window, server_crypto, transport_config};
use konnq_shared::tls;

/// Streams written at once: their stream windows together are twice the send window.
const STREAMS: u64 = 8;
const CHUNK: usize = 64 * 1024;

/// Polls `f` once with a waker that does nothing: `Some` if it was ready.
fn poll_once<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// A server endpoint (konnq-server's role: it opens the dial streams) and a
/// client endpoint (the agent's), with konnq's transport settings on both.
fn endpoints(cfg: &QuicConfig, dir: &std::path::Path) -> (quinn::Endpoint, quinn::Endpoint, SocketAddr) {
    let certs = konnq_shared::certs::generate(dir, &[]).expect("certs");
    let alpn = [tls::ALPN_KONNQ];
    let server_tls = tls::server_config(&certs.server_cert, &certs.server_key, None, &alpn).expect("server tls");
    let mut server_config = quinn::ServerConfig::with_crypto(server_crypto(server_tls).expect("server crypto"));
    server_config.transport_config(Arc::new(transport_config(cfg, false).expect("server transport")));
    let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().expect("addr")).expect("server");
    let client_tls = tls::client_config(&certs.ca_cert, None, &alpn).expect("client tls");
    let mut client_config = quinn::ClientConfig::new(client_crypto(client_tls).expect("client crypto"));
    client_config.transport_config(Arc::new(transport_config(cfg, true).expect("agent transport")));
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
    client.set_default_client_config(client_config);
    let addr = server.local_addr().expect("server addr");
    (server, client, addr)
}

#[tokio::test(flavor = "current_thread")]
async fn a_connection_buffers_at_most_its_send_window_across_streams() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = QuicConfig::default();
    let (server, client, addr) = endpoints(&cfg, dir.path());
    let connecting = client.connect(addr, "localhost").expect("connect");
    let incoming = async { server.accept().await.expect("an incoming connection").await.expect("handshake") };
    let (server_conn, agent_conn) = tokio::join!(incoming, connecting);
    let (server_conn, _agent_conn) = (server_conn, agent_conn.expect("agent handshake"));

    assert!(
        STREAMS * cfg.stream_receive_window >= 2 * send_window(cfg.stream_receive_window),
        "the streams' flow-control credit alone must exceed the send window"
    );
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let (send, _recv) = poll_once(server_conn.open_bi()).expect("stream credit").expect("open");
        streams.push(send);
    }
    // Round robin, one chunk per stream per pass, until quinn takes no more
    // from any stream. Bounded: each pass accepts at least one byte or ends.
    let chunk = vec![0x5au8; CHUNK];
    let mut accepted = vec![0u64; streams.len()];
    let most_passes = (STREAMS * cfg.stream_receive_window) as usize / CHUNK + 1;
    for _ in 0..=most_passes {
        let mut progress = false;
        for (send, total) in streams.iter_mut().zip(&mut accepted) {
            if let Some(n) = poll_once(send.write(&chunk)) {
                *total += n.expect("the stream is open") as u64;
                progress = true;
            }
        }
        if !progress {
            break;
        }
    }
    let total: u64 = accepted.iter().sum();
    assert_eq!(
        total,
        send_window(cfg.stream_receive_window),
        "bytes buffered for {STREAMS} streams before any acknowledgement: {accepted:?}"
    );
    assert!(accepted.iter().all(|&n| n > 0 && n <= cfg.stream_receive_window), "{accepted:?}");
}
