//! Agents whose network drops UDP: QUIC datagrams framed over TCP on the
//! agent port, chosen by `transport = tcp` or found by `auto`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use konnq_shared::config::{AgentTransport, AgentTransports};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(20);

const TCP_AGENTS: &str = "konnq_server_agent_connections{transport=\"tcp\"}";
const QUIC_AGENTS: &str = "konnq_server_agent_connections{transport=\"quic\"}";

#[tokio::test]
async fn an_agent_over_tcp_proxies_as_one_over_udp_does() {
    let lab = Lab::new().await;
    let agent = lab.agent_with(|raw| raw.transport = Some(AgentTransport::Tcp)).await;
    within(LIMIT, lab.server.wait_for_agents(1)).await;
    assert_eq!(lab.metric(TCP_AGENTS).await, 1.0);
    assert_eq!(lab.metric(QUIC_AGENTS).await, 0.0);
    assert_eq!(agent.metrics.connections_on("tcp").get(), 1);

    let target = echo_target().await;
    let mut client = lab.channel().await;
    let mut streams = Vec::new();
    for _ in 0..4 {
        streams.push(within(LIMIT, Stream::dial(&mut client, &target.to_string())).await);
    }
    let payload = random_bytes(2 * 1024 * 1024);
    for s in &mut streams {
        assert!(within(LIMIT, echo_through(s, &payload)).await == payload, "2 MiB echoed intact over TCP");
    }
    // SIGUSR1's move: a TCP connection has no UDP socket to move, and stays.
    assert_eq!(agent.rebind().expect("rebind"), Vec::<SocketAddr>::new());
    assert_eq!(agent.metrics.socket_rebinds.get(), 0);
    assert_eq!(within(LIMIT, echo_through(&mut streams[0], b"after the move")).await, b"after the move");
    assert_eq!(lab.metric(TCP_AGENTS).await, 1.0);
    agent.shutdown().await;
}

#[tokio::test]
async fn auto_falls_back_to_tcp_when_udp_gets_no_answer() {
    // A server that drops every UDP datagram unanswered, as a firewall does.
    let lab = Lab::with(|raw| raw.agent_transports = Some(AgentTransports { quic: false, tcp: true })).await;
    let agent = lab
        .agent_with(|raw| {
            raw.transport = Some(AgentTransport::Auto);
            raw.transport_fallback_after = Some(Duration::from_millis(300));
        })
        .await;
    within(LIMIT, lab.server.wait_for_agents(1)).await;
    assert_eq!(agent.metrics.tcp_fallbacks.get(), 1);
    assert_eq!(lab.metric(TCP_AGENTS).await, 1.0);
    let target = echo_target().await;
    let mut client = lab.channel().await;
    let mut s = within(LIMIT, Stream::dial(&mut client, &target.to_string())).await;
    assert_eq!(within(LIMIT, echo_through(&mut s, b"over tcp")).await, b"over tcp");
    agent.shutdown().await;
}

#[tokio::test]
async fn quic_alone_gets_no_answer_from_a_tcp_only_server() {
    let lab = Lab::with(|raw| raw.agent_transports = Some(AgentTransports { quic: false, tcp: true })).await;
    let agent = lab.agent_with(|raw| raw.transport = Some(AgentTransport::Quic)).await;
    eventually("a failed attempt", LIMIT, || agent.metrics.connect_failures.get() >= 1).await;
    assert_eq!(lab.server.backend.agent_count(), 0);
    assert_eq!(agent.metrics.tcp_fallbacks.get(), 0);
    agent.shutdown().await;
}

#[tokio::test]
async fn a_tcp_only_server_binds_no_twin_and_a_udp_only_one_refuses_tcp() {
    let lab = Lab::with(|raw| raw.agent_transports = Some(AgentTransports { quic: true, tcp: false })).await;
    let refused = TcpStream::connect(lab.server.agent_addr).await;
    assert!(refused.is_err(), "no TCP listener on the agent port with agent-transports = quic");
    let agent = lab.agent_with(|raw| raw.transport = Some(AgentTransport::Auto)).await;
    within(LIMIT, lab.server.wait_for_agents(1)).await;
    assert_eq!(lab.metric(QUIC_AGENTS).await, 1.0);
    assert_eq!(agent.metrics.tcp_fallbacks.get(), 0);
    agent.shutdown().await;
}

/// Connects to the agent port over TCP, sends `bytes`, and reads until the
/// server closes; returns what the server sent.
async fn send_and_wait_for_close(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut got = Vec::new();
    let _ = within(LIMIT, s.read_to_end(&mut got)).await;
    got
}

#[tokio::test]
async fn garbage_on_the_agent_tcp_port_is_refused_and_changes_nothing() {
    let lab = Lab::new().await;
    let agent = lab.agent().await;
    within(LIMIT, lab.server.wait_for_agents(1)).await;
    let target = echo_target().await;
    let mut client = lab.channel().await;
    let mut open = within(LIMIT, Stream::dial(&mut client, &target.to_string())).await;

    let addr = lab.server.agent_addr;
    let tls_hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
    assert!(send_and_wait_for_close(addr, &tls_hello).await.is_empty());
    assert!(send_and_wait_for_close(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.is_empty());
    assert!(send_and_wait_for_close(addr, b"KQDG\x09\0\0\0").await.is_empty(), "another version");
    assert_eq!(lab.metric("konnq_server_agent_tcp_refused_total").await, 3.0);
    // A konnq preamble, then frames of random bytes (no QUIC packet), then
    // an empty frame: the datagrams are dropped, the empty frame ends it.
    let mut bad = konnq_protocol::stream_datagrams::PREAMBLE.to_vec();
    for n in [1usize, 17, 1200, 65535] {
        bad.extend((n as u16).to_be_bytes());
        bad.extend(random_bytes(n));
    }
    bad.extend([0, 0]);
    assert!(send_and_wait_for_close(addr, &bad).await.is_empty());
    assert_eq!(lab.server.backend.agent_count(), 1);
    assert_eq!(within(LIMIT, echo_through(&mut open, b"still here")).await, b"still here");
    agent.shutdown().await;
}

/// Forwards TCP connections to `server` until killed: dropping it closes
/// every forwarded connection at once, as a killed agent process's would be.
struct TcpRelay {
    addr: SocketAddr,
    tasks: tokio::task::JoinSet<()>,
}

impl TcpRelay {
    async fn start(server: SocketAddr) -> TcpRelay {
        Self::on(TcpListener::bind("127.0.0.1:0").await.expect("bind"), server)
    }

    fn on(listener: TcpListener, server: SocketAddr) -> TcpRelay {
        let addr = listener.local_addr().expect("addr");
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                conns.spawn(async move {
                    let mut outbound = TcpStream::connect(server).await.expect("connect server");
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        TcpRelay { addr, tasks }
    }

    async fn kill(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

#[tokio::test]
async fn a_dead_agent_over_tcp_has_its_clients_told_when_its_connection_ends() {
    // Idle timeout 30 s: only the end of the TCP connection can close the
    // agent's connection within the test's limit.
    let quic = quic_long_idle();
    let lab = Lab::with(|raw| raw.quic = Some(quic.clone())).await;
    let relay = TcpRelay::start(lab.server.agent_addr).await;
    let agent = lab
        .agent_with(|raw| {
            raw.transport = Some(AgentTransport::Tcp);
            raw.proxy_server_port = Some(relay.addr.port());
            raw.quic = Some(quic.clone());
        })
        .await;
    let (_client, mut open) = held_connection(&lab).await;

    relay.kill().await;
    let told = told_closed(&mut open, std::time::Instant::now(), LIMIT).await;
    eprintln!("the client was told {} ms after the agent's TCP connection closed", told.as_millis());
    eventually("the server forgot the agent", LIMIT, || lab.server.backend.agent_count() == 0).await;
    agent.shutdown().await;
}

/// A UDP relay and a TCP relay on the same port, both to the server's
/// agent port: the agent's way to the server, UDP and TCP.
async fn relay_pair(server: SocketAddr) -> (Relay, TcpRelay) {
    for _ in 0..20 {
        let udp = Relay::start(server).await;
        if let Ok(listener) = TcpListener::bind(udp.addr).await {
            return (udp, TcpRelay::on(listener, server));
        }
    }
    panic!("no port free for both UDP and TCP");
}

#[tokio::test]
async fn auto_moves_back_to_udp_when_it_answers_again_and_open_transfers_finish() {
    let lab = Lab::new().await;
    let (udp, _tcp) = relay_pair(lab.server.agent_addr).await;
    udp.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    // sync-interval is 100 ms here: UDP is probed again after 1 s.
    let agent = lab
        .agent_with(|raw| {
            raw.proxy_server_port = Some(udp.addr.port());
            raw.transport = Some(AgentTransport::Auto);
            raw.transport_fallback_after = Some(Duration::from_millis(300));
        })
        .await;
    within(LIMIT, lab.server.wait_for_agents(1)).await;
    assert_eq!(lab.metric(TCP_AGENTS).await, 1.0);
    let target = echo_target().await;
    let mut client = lab.channel().await;
    let mut open = within(LIMIT, Stream::dial(&mut client, &target.to_string())).await;
    assert_eq!(within(LIMIT, echo_through(&mut open, b"over tcp")).await, b"over tcp");

    udp.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    eventually("the agent is on UDP", LIMIT, || agent.metrics.connections_on("quic").get() == 1).await;
    // The transfer that began over TCP goes on there; new dials take UDP.
    assert_eq!(within(LIMIT, echo_through(&mut open, b"still over tcp")).await, b"still over tcp");
    eventually("the server has both", LIMIT, || lab.server.backend.agent_count() == 2).await;
    let mut fresh = within(LIMIT, Stream::dial(&mut client, &target.to_string())).await;
    assert_eq!(within(LIMIT, echo_through(&mut fresh, b"over udp")).await, b"over udp");
    // Once its last transfer ends, the TCP connection closes.
    open.close().await;
    drop(open);
    eventually("the TCP connection closed", LIMIT, || agent.metrics.connections_on("tcp").get() == 0).await;
    eventually("the server forgot it", LIMIT, || lab.server.backend.agent_count() == 1).await;
    assert_eq!(lab.metric(TCP_AGENTS).await, 0.0);
    assert_eq!(lab.metric(QUIC_AGENTS).await, 1.0);
    assert_eq!(lab.metric("konnq_server_agent_id_conflicts_total").await, 0.0);
    assert_eq!(agent.metrics.tcp_fallbacks.get(), 1);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_over_tcp_without_a_trusted_client_certificate_are_refused() {
    let lab = Lab::new().await;
    let other = konnq_shared::certs::generate(&lab.dir.path().join("other-pki"), &[]).expect("second CA");
    let over_tcp = |raw: &mut konnq_shared::config::RawAgentConfig| {
        raw.transport = Some(AgentTransport::Tcp);
        raw.sync_interval = Some(Duration::from_millis(100));
    };
    let untrusted = lab
        .agent_with(|raw| {
            over_tcp(raw);
            raw.agent_cert = Some(other.agent_cert.clone());
            raw.agent_key = Some(other.agent_key.clone());
        })
        .await;
    let anonymous = lab
        .agent_with(|raw| {
            over_tcp(raw);
            raw.agent_cert = None;
            raw.agent_key = None;
        })
        .await;
    let failures = |a: &konnq_agent::AgentHandle| a.metrics.connect_failures.get();
    eventually("both agents refused several times", LIMIT, || failures(&untrusted) >= 3 && failures(&anonymous) >= 3)
        .await;
    assert_eq!(lab.server.backend.agent_count(), 0);
    assert_eq!(lab.metric(TCP_AGENTS).await, 0.0);

    // A trusted agent over TCP is admitted meanwhile and carries a dial.
    let good = lab.agent_with(over_tcp).await;
    within(LIMIT, lab.server.wait_for_agents(1)).await;
    assert_eq!(lab.metric(TCP_AGENTS).await, 1.0);
    let target = echo_target().await;
    let mut client = lab.channel().await;
    let mut s = within(LIMIT, Stream::dial(&mut client, &target.to_string())).await;
    assert_eq!(within(LIMIT, echo_through(&mut s, b"trusted, over tcp")).await, b"trusted, over tcp");
    let (u, a) = (failures(&untrusted), failures(&anonymous));
    eventually("refused again", LIMIT, || failures(&untrusted) > u && failures(&anonymous) > a).await;
    assert_eq!(lab.server.backend.agent_count(), 1);
    for agent in [untrusted, anonymous, good] {
        agent.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_peer_over_tcp_is_closed_and_changes_nothing_for_other_agents() {
    let lab = Lab::new().await;
    let agent = lab.agent_with(|raw| raw.transport = Some(AgentTransport::Tcp)).await;
    within(LIMIT, lab.server.wait_for_agents(1)).await;
    let target = echo_target().await;
    let mut client = lab.channel().await;
    let mut open = within(LIMIT, Stream::dial(&mut client, &target.to_string())).await;

    // A peer with a trusted certificate, over the TCP transport, that opens
    // its control stream and sends bytes that are no Hello.
    let link = konnq_shared::stream_socket::StreamSocket::connect(lab.server.agent_addr).await.expect("TCP link");
    let socket: std::sync::Arc<dyn quinn::AsyncUdpSocket> = link.clone();
    let runtime = quinn::default_runtime().expect("runtime");
    let mut endpoint =
        quinn::Endpoint::new_with_abstract_socket(quinn::EndpointConfig::default(), None, socket, runtime)
            .expect("endpoint over TCP");
    let cert = Some((lab.certs.agent_cert.as_path(), lab.certs.agent_key.as_path()));
    let tls = konnq_shared::tls::client_config(&lab.certs.ca_cert, cert, &[konnq_shared::tls::ALPN_KONNQ])
        .expect("client TLS");
    endpoint
        .set_default_client_config(quinn::ClientConfig::new(konnq_shared::quic::client_crypto(tls).expect("QUIC TLS")));
    let conn = within(LIMIT, async { endpoint.connect(lab.server.agent_addr, "localhost").expect("connect").await })
        .await
        .expect("handshake over TCP");
    let (mut send, _recv) = within(LIMIT, conn.open_bi()).await.expect("control stream");
    send.write_all(&[0xff; 64]).await.expect("write garbage");
    let _ = send.finish();
    let why = within(LIMIT, conn.closed()).await;
    assert!(matches!(why, quinn::ConnectionError::ApplicationClosed(_)), "closed by the server: {why:?}");

    // Nothing changed for the agent and its open connection.
    assert_eq!(lab.server.backend.agent_count(), 1);
    assert_eq!(within(LIMIT, echo_through(&mut open, b"after the rogue peer")).await, b"after the rogue peer");
    assert!(agent.is_connected());
    agent.shutdown().await;
}
