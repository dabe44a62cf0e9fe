//! Uploads into targets that stop reading: the uploading clients are
//! pushed back, and what the server holds stays within its windows however
//! much the clients try to send. Checked with the server's gauge of bytes
//! it holds for sessions, QUIC's own flow-control signal (the server's
//! STREAM_DATA_BLOCKED frames) and the server's and agent's byte counters,
//! not with timing. Kept in a test binary of its own.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use konnq_protocol::konnectivity::data;
use konnq_shared::config::QuicConfig;

/// Uploading connections.
const CONNS: usize = 8;
/// Bytes per DATA packet: larger than one HTTP/2 frame, as kube-apiserver's
/// 32 KiB copy buffers are.
const CHUNK: usize = 32 * 1024;
/// Most each client tries to write: far more than every buffer on the path.
const PER_CONN: usize = 64 * 1024 * 1024;
/// The frontend's HTTP/2 stream window (what one client may have sent
/// that the server has not yet forwarded).
const STREAM_WINDOW: f64 = 256.0 * 1024.0;

/// A target that accepts connections and never reads from them. Its small
/// receive buffer keeps what the kernel absorbs small; the accepted
/// sockets live until the test ends.
async fn stalled_target() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
    socket.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let listener = socket.listen(64).expect("listen");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_into_stalled_targets_are_held_back_within_the_windows() {
    let lab = Lab::new().await;
    let agent = lab.ready_agent().await;
    let target = stalled_target().await;
    let wrote = Arc::new(AtomicU64::new(0));
    let mut writers = tokio::task::JoinSet::new();
    let mut keep = Vec::new();
    for _ in 0..CONNS {
        // One HTTP/2 connection per proxied connection, as kube-apiserver opens them.
        let mut client = lab.channel().await;
        let stream = Stream::dial(&mut client, &target.to_string()).await;
        let (tx, id, wrote) = (stream.tx.clone(), stream.connect_id, Arc::clone(&wrote));
        writers.spawn(async move {
            let chunk = Bytes::from(vec![0x75u8; CHUNK]);
            for _ in 0..PER_CONN / CHUNK {
                if tx.send(data(id, chunk.clone())).await.is_err() {
                    return;
                }
                wrote.fetch_add(CHUNK as u64, Ordering::Relaxed);
            }
        });
        keep.push((client, stream));
    }

    // The frontend stops taking bytes it cannot forward: each client gets
    // at most its HTTP/2 stream window (plus the message its session holds)
    // into the server. Wait until the clients have filled their windows,
    // or the frontend holds more than that.
    let bound = CONNS as f64 * (STREAM_WINDOW + CHUNK as f64);
    let buffered = || metric(&lab.server.metrics.render(), "konnq_server_frontend_buffered_bytes");
    eventually("the clients to fill their HTTP/2 windows", Duration::from_secs(60), || {
        buffered() >= CONNS as f64 * STREAM_WINDOW / 4.0 || buffered() > bound
    })
    .await;
    let held = buffered();
    assert!(held <= bound, "the frontend holds {held} bytes for {CONNS} stalled uploads; at most {bound} expected");

    // Behind the frontend, QUIC flow control holds each stream to its
    // window: bytes the server wrote into QUIC that the agent has not yet
    // written to its targets (the server's send buffers, packets in flight,
    // the agent's receive buffers and the few frames it holds per stream).
    let in_quic = || {
        let to_agent = metric(&lab.server.metrics.render(), "konnq_server_bytes_total{direction=\"to_agent\"}");
        let to_target = metric(&agent.metrics.render(), "konnq_agent_bytes_total{direction=\"to_target\"}");
        to_agent - to_target
    };
    let windows = (CONNS as u64 * QuicConfig::default().stream_receive_window) as f64;
    let slack = (CONNS * 64 * 1024) as f64;
    let quic = in_quic();
    assert!(quic <= windows + slack, "{quic} bytes in QUIC for {CONNS} stalled streams of {windows} bytes' windows");
    let conns = lab.server.backend.agent_connections();
    assert_eq!(conns.len(), 1, "one agent connection");
    eventually("the server to tell the agent its streams are blocked", Duration::from_secs(60), || {
        conns[0].stats().frame_tx.stream_data_blocked > 0
    })
    .await;
    let written = wrote.load(Ordering::Relaxed) as f64;
    assert!(written < (CONNS * PER_CONN) as f64, "every client got all its {PER_CONN} bytes accepted");
    println!("stalled uploads: clients wrote {written} bytes, the frontend holds {held}, QUIC {quic}");
    writers.abort_all();
    drop(keep);
}
