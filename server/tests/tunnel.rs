//! End-to-end behaviour of the tunnel: Konnectivity gRPC client over the
//! Unix socket → konnq-server → QUIC → konnq-agent → TCP target.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use konnq_protocol::konnectivity::client;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_connections_echo_one_mib_each() {
    // 200 MiB each way on a 2-core machine: give dials the client's own
    // 30 s budget; this test is about correctness under concurrency.
    let lab = Lab::with(|raw| raw.backend_dial_timeout = Some(Duration::from_secs(30))).await;
    let _agent = lab.ready_agent().await;
    let target = echo_target().await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let socket = lab.socket.clone();
        let payload = random_bytes(1024 * 1024);
        tasks.spawn(async move {
            // Single-use tunnel: a new connection per dial, as kube-apiserver does.
            let mut client = channel(&socket).await;
            let mut s = Stream::dial(&mut client, &target.to_string()).await;
            let echoed = echo_through(&mut s, &payload).await;
            assert!(echoed == payload, "echoed bytes differ");
            s.close().await;
            let (_, err) = s.read_to_close().await;
            assert_eq!(err, "");
        });
    }
    within(Duration::from_secs(240), async {
        while let Some(r) = tasks.join_next().await {
            r.expect("connection task");
        }
    })
    .await;
    eventually("established connections back to 0", Duration::from_secs(10), || {
        lab.server.metrics.established.get() == 0
    })
    .await;
    let text = lab.server.metrics.render();
    assert!(metric(&text, "konnq_server_bytes_total{direction=\"to_agent\"}") >= 200.0 * 1048576.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_use_and_many_streams_on_one_connection() {
    let lab = Lab::new().await;
    let _agent = lab.ready_agent().await;
    let target = echo_target().await;
    // Single-use: one HTTP/2 connection per dial.
    for i in 0..5u8 {
        let mut client = lab.channel().await;
        let mut s = Stream::dial(&mut client, &target.to_string()).await;
        assert_eq!(echo_through(&mut s, &[i; 100]).await, vec![i; 100]);
    }
    // Reusable: many Proxy streams, one dial each, on one HTTP/2 connection.
    let client = lab.channel().await;
    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut c = client.clone();
        streams.push(Stream::dial(&mut c, &target.to_string()).await);
    }
    let ids: std::collections::HashSet<i64> = streams.iter().map(|s| s.connect_id).collect();
    assert_eq!(ids.len(), 20, "every dial gets its own connectID");
    for (i, s) in streams.iter_mut().enumerate() {
        let msg = format!("stream {i}");
        assert_eq!(echo_through(s, msg.as_bytes()).await, msg.as_bytes());
    }
    let text = lab.server.metrics.render();
    assert_eq!(metric(&text, "konnectivity_network_proxy_server_dial_duration_seconds_count"), 25.0);
    assert_eq!(metric(&text, "konnectivity_network_proxy_server_established_connections"), 20.0);
    let agent_text = _agent.metrics.render();
    assert_eq!(metric(&agent_text, "konnectivity_network_proxy_agent_open_endpoint_connections"), 20.0);
    assert_eq!(metric(&agent_text, "konnectivity_network_proxy_agent_dial_duration_seconds_count"), 25.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_failures_answer_with_connect_id_zero_and_a_reason() {
    let lab = Lab::new().await;
    let mut client = lab.channel().await;

    // No agent connected.
    let mut s = Stream::open(&mut client, "127.0.0.1:1", 11).await;
    match s.next().await {
        Event::DialRsp { random: 11, connect_id: 0, error } => assert_eq!(error, "No agent available"),
        other => panic!("{other:?}"),
    }

    let _agent = lab.ready_agent().await;
    // A closed port.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let started = Instant::now();
    let mut s = Stream::open(&mut client, &closed.to_string(), 12).await;
    match s.next().await {
        Event::DialRsp { random: 12, connect_id: 0, error } => {
            assert!(error.contains("refused"), "reason names the failure: {error}")
        }
        other => panic!("{other:?}"),
    }
    // An unresolvable name: answered within the agent's dial timeout (2 s here).
    let mut s = Stream::open(&mut client, "no-such-host.invalid:80", 13).await;
    match within(Duration::from_secs(4), s.next()).await {
        Event::DialRsp { random: 13, connect_id: 0, error } => assert!(!error.is_empty()),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(6));
    let text = lab.server.metrics.render();
    assert_eq!(metric(&text, "konnectivity_network_proxy_server_dial_failure_count{reason=\"no_agent\"}"), 1.0);
    assert_eq!(metric(&text, "konnectivity_network_proxy_server_dial_failure_count{reason=\"error_response\"}"), 2.0);
    assert_eq!(metric(&text, "konnectivity_network_proxy_server_pending_backend_dials"), 0.0);
}

/// A loopback address whose TCP handshake never completes: a listener with
/// a full accept queue drops further SYNs, so a dial to it hangs.
async fn hanging_target() -> (socket2::Socket, Vec<std::net::TcpStream>, std::net::SocketAddr) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    // Fill the accept queue (backlog 0 admits one; a second may sit in SYN_RECV).
    let mut fillers = Vec::new();
    for _ in 0..2 {
        if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            fillers.push(s);
        }
    }
    (sock, fillers, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_cls_abandons_a_pending_dial_everywhere() {
    let lab = Lab::new().await;
    let agent = lab.ready_agent().await;
    let (_listener, _fillers, addr) = hanging_target().await;
    let mut client = lab.channel().await;
    let s = Stream::open(&mut client, &addr.to_string(), 21).await;
    eventually("the agent is dialing", Duration::from_secs(5), || agent.metrics.pending_dials.get() == 1).await;
    assert_eq!(lab.server.metrics.pending_dials.get(), 1);
    s.tx.send(client::dial_cls(21)).await.unwrap();
    eventually("agent pending dials back to 0", Duration::from_secs(5), || agent.metrics.pending_dials.get() == 0)
        .await;
    eventually("server pending dials back to 0", Duration::from_secs(5), || {
        lab.server.metrics.pending_dials.get() == 0
    })
    .await;
    assert_eq!(agent.metrics.dials_abandoned.get(), 1);
    assert_eq!(agent.metrics.open_endpoint_connections.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_cls_right_after_dial_req_leaves_no_target_connection() {
    let lab = Lab::new().await;
    let agent = lab.ready_agent().await;
    // A target that records every connection and whether it was closed.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (a, c) = (accepted.clone(), closed.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                read_all(&mut s).await;
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    for random in 1..=20 {
        let mut client = lab.channel().await;
        let s = Stream::open(&mut client, &addr.to_string(), random).await;
        s.tx.send(client::dial_cls(random)).await.unwrap();
        // Keep the stream open: the abandonment must come from DIAL_CLS itself.
        eventually("dial settled", Duration::from_secs(5), || lab.server.metrics.pending_dials.get() == 0).await;
        eventually("no established connection left", Duration::from_secs(5), || {
            lab.server.metrics.established.get() == 0
        })
        .await;
        drop(s);
    }
    eventually("every target connection closed", Duration::from_secs(5), || {
        closed.load(Ordering::SeqCst) == accepted.load(Ordering::SeqCst)
    })
    .await;
    eventually("agent holds no target connection", Duration::from_secs(5), || {
        agent.metrics.open_endpoint_connections.get() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_req_gets_close_rsp_and_target_sees_eof() {
    let lab = Lab::new().await;
    let _agent = lab.ready_agent().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let target = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_all(&mut s).await
    });
    let mut client = lab.channel().await;
    let mut s = Stream::dial(&mut client, &addr.to_string()).await;
    s.send(b"hello before close").await;
    s.close().await;
    let (_, err) = within(Duration::from_secs(5), s.read_to_close()).await;
    assert_eq!(err, "");
    let seen = within(Duration::from_secs(5), target).await.unwrap();
    assert_eq!(seen, b"hello before close", "target got the bytes, then EOF");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_close_delivers_every_byte_then_close_rsp() {
    let lab = Lab::new().await;
    let _agent = lab.ready_agent().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let payload = random_bytes(8 * 1024 * 1024 + 17);
    let p = payload.clone();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(&p).await.unwrap();
        // Dropping closes the connection right after the last byte.
    });
    let mut client = lab.channel().await;
    let mut s = Stream::dial(&mut client, &addr.to_string()).await;
    let (got, err) = within(Duration::from_secs(30), s.read_to_close()).await;
    assert_eq!(err, "");
    assert!(got == payload, "got {} of {} bytes, content must match", got.len(), payload.len());
    assert!(matches!(s.next().await, Event::End), "the stream ends after CLOSE_RSP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_mib_messages_are_accepted() {
    let lab = Lab::new().await;
    let _agent = lab.ready_agent().await;
    let target = echo_target().await;
    let mut client = lab.channel().await;
    let mut s = Stream::dial(&mut client, &target.to_string()).await;
    let big = random_bytes(4 * 1024 * 1024);
    let tx = s.tx.clone();
    let id = s.connect_id;
    let reader = async { s.read_exact(big.len()).await };
    let b = big.clone();
    tokio::spawn(async move {
        tx.send(konnq_protocol::konnectivity::data(id, b.into())).await.unwrap();
    });
    let echoed = within(Duration::from_secs(30), reader).await;
    assert!(echoed == big);
}
