//! Agent loss and per-connection isolation.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn http_status(addr: SocketAddr, path: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect health port");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_lost_mid_transfer_closes_every_client_and_a_new_agent_is_used() {
    // Detection bound: the QUIC idle timeout (1.5 s here; keep-alive 300 ms).
    let idle = Duration::from_millis(1500);
    let lab = Lab::with(|raw| raw.quic = Some(quic_fast())).await;
    let relay = Relay::start(lab.server.agent_addr).await;
    let agent = lab
        .agent_with(|raw| {
            raw.proxy_server_port = Some(relay.addr.port());
            raw.quic = Some(quic_fast());
        })
        .await;
    within(Duration::from_secs(10), lab.server.wait_for_agents(1)).await;
    // The server registers the agent before the agent has the server's
    // welcome: wait for both ends.
    within(Duration::from_secs(10), agent.wait_connected(true)).await;
    assert_eq!(http_status(lab.server.health_addr, "/readyz").await, 200);
    assert_eq!(http_status(agent.health_addr, "/readyz").await, 200);

    let (target, _) = firehose().await;
    let mut streams = Vec::new();
    for _ in 0..5 {
        let mut client = lab.channel().await;
        let mut s = Stream::dial(&mut client, &target.to_string()).await;
        s.read_exact(256 * 1024).await;
        streams.push(s);
    }

    // A dial pending on the agent when it vanishes (its target never
    // completes the handshake): it must get a DIAL_RSP error at once too,
    // not wait for the 5 s backend dial timeout.
    let hang = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    hang.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    hang.listen(0).unwrap();
    let hang_addr = hang.local_addr().unwrap().as_socket().unwrap();
    let _fill: Vec<_> = (0..2)
        .filter_map(|_| std::net::TcpStream::connect_timeout(&hang_addr, Duration::from_millis(300)).ok())
        .collect();
    let mut pending_client = lab.channel().await;
    let mut pending = Stream::open(&mut pending_client, &hang_addr.to_string(), 77).await;
    eventually("the dial is pending on the agent", Duration::from_secs(5), || agent.metrics.pending_dials.get() == 1)
        .await;

    relay.cut.store(true, Ordering::SeqCst);
    let cut_at = Instant::now();
    let pending_answer = tokio::spawn(async move { (pending.next().await, cut_at.elapsed()) });
    let mut tasks = tokio::task::JoinSet::new();
    for mut s in streams {
        tasks.spawn(async move {
            let (_, err) = s.read_to_close().await;
            (cut_at.elapsed(), err)
        });
    }
    while let Some(r) = within(idle + Duration::from_secs(5), tasks.join_next()).await {
        let (after, err) = r.unwrap();
        assert!(!err.is_empty(), "CLOSE_RSP says why");
        assert!(after < idle + Duration::from_secs(2), "CLOSE_RSP came {after:?} after the agent vanished");
    }
    let (answer, after) = within(Duration::from_secs(10), pending_answer).await.unwrap();
    match answer {
        Event::DialRsp { random: 77, connect_id: 0, error } => assert!(!error.is_empty()),
        other => panic!("pending dial got {other:?}"),
    }
    assert!(after < idle + Duration::from_secs(2), "pending dial answered {after:?} after the agent vanished");
    // The agent, on its side, notices the dead path too.
    within(Duration::from_secs(5), agent.wait_connected(false)).await;
    assert_eq!(http_status(agent.health_addr, "/readyz").await, 503, "agent not ready without a server");
    let from_server = konnq_agent::metrics::Direction::FromServer;
    assert_eq!(agent.metrics.server_failures(from_server), 1, "the lost connection is a failure from the server");
    eventually("server reports no agent", Duration::from_secs(5), || *lab.server.backend.ready_agents().borrow() == 0)
        .await;
    assert_eq!(http_status(lab.server.health_addr, "/readyz").await, 500, "upstream's not-ready status");
    assert_eq!(http_status(lab.server.health_addr, "/healthz").await, 200);
    // Still serving: dials fail cleanly while no agent is connected.
    let mut client = lab.channel().await;
    let mut s = Stream::open(&mut client, &target.to_string(), 5).await;
    assert!(matches!(s.next().await, Event::DialRsp { connect_id: 0, .. }));
    agent.shutdown().await;

    // The agent comes back (restarted) and is used again.
    let _agent = lab.ready_agent().await;
    assert_eq!(http_status(lab.server.health_addr, "/readyz").await, 200);
    let echo = echo_target().await;
    let mut s = Stream::dial(&mut client, &echo.to_string()).await;
    assert_eq!(echo_through(&mut s, b"back again").await, b"back again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_closes_what_is_still_open_after_the_grace_period() {
    // The Lab's graceful shutdown timeout is 1 s.
    let lab = Lab::new().await;
    let _agent = lab.ready_agent().await;
    let echo = echo_target().await;
    let mut client = lab.channel().await;
    let mut open = Stream::dial(&mut client, &echo.to_string()).await;
    assert_eq!(echo_through(&mut open, b"before").await, b"before");
    let socket = lab.socket.clone();
    let Lab { server, dir: _dir, .. } = lab;
    let stopping = tokio::spawn(server.shutdown());
    let (_, err) = within(Duration::from_secs(10), open.read_to_close()).await;
    assert!(err.is_empty() || err == "server shutting down", "CLOSE_RSP: {err}");
    within(Duration::from_secs(10), stopping).await.unwrap();
    assert!(tokio::net::UnixStream::connect(&socket).await.is_err(), "no longer accepting");
}
