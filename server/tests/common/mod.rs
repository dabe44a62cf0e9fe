//! In-process harness: a real konnq-server and konnq-agent on ephemeral
//! ports and a temp-dir Unix socket, real TLS and QUIC, real TCP targets,
//! and a Konnectivity client speaking gRPC over the Unix socket.
#![allow(dead_code)]

pub mod h2frames;
pub mod kube_api;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use konnq_protocol::konnectivity::{client, data};
use konnq_shared::certs::GeneratedCerts;
use konnq_shared::config::{RawAgentConfig, RawQuicConfig, RawServerConfig};
use konnq_shared::proto::proxy_service_client::ProxyServiceClient;
use konnq_shared::proto::{packet::Payload, Packet, PacketType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Streaming;

pub const MAX_MSG: usize = 16 * 1024 * 1024;

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub certs: GeneratedCerts,
    pub server: konnq_server::ServerHandle,
    /// The frontend's Unix socket; empty when the test serves it on TCP.
    pub socket: PathBuf,
}

/// Keep-alives every 500 ms and a 30 s idle timeout: in a test of how a
/// dead agent is noticed, only a faster mechanism than the timeout can end
/// the connection within the test's limit.
pub fn quic_long_idle() -> RawQuicConfig {
    RawQuicConfig {
        keep_alive_interval: Some(Duration::from_millis(500)),
        idle_timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    }
}

/// Waits (at most `limit`) for `open`'s CLOSE_RSP, which must say why;
/// returns how long after `since` it came.
pub async fn told_closed(open: &mut Stream, since: std::time::Instant, limit: Duration) -> Duration {
    match within(limit, open.next()).await {
        Event::Close(why) => assert!(!why.is_empty(), "CLOSE_RSP says why"),
        other => panic!("expected CLOSE_RSP, got {other:?}"),
    }
    since.elapsed()
}

pub fn quic_fast() -> RawQuicConfig {
    RawQuicConfig {
        keep_alive_interval: Some(Duration::from_millis(300)),
        idle_timeout: Some(Duration::from_millis(1500)),
        ..Default::default()
    }
}

pub fn server_raw(dir: &Path, certs: &GeneratedCerts) -> RawServerConfig {
    RawServerConfig {
        uds_name: Some(dir.join("konnq.sock")),
        agent_bind_address: Some("127.0.0.1".parse().unwrap()),
        agent_port: Some(0),
        health_bind_address: Some("127.0.0.1".parse().unwrap()),
        health_port: Some(0),
        admin_port: Some(0),
        cluster_cert: Some(certs.server_cert.clone()),
        cluster_key: Some(certs.server_key.clone()),
        cluster_ca_cert: Some(certs.ca_cert.clone()),
        backend_dial_timeout: Some(Duration::from_secs(5)),
        graceful_shutdown_timeout: Some(Duration::from_secs(1)),
        ..Default::default()
    }
}

pub fn agent_raw(certs: &GeneratedCerts, server: SocketAddr) -> RawAgentConfig {
    RawAgentConfig {
        proxy_server_host: Some(server.ip().to_string()),
        proxy_server_port: Some(server.port()),
        ca_cert: Some(certs.ca_cert.clone()),
        agent_cert: Some(certs.agent_cert.clone()),
        agent_key: Some(certs.agent_key.clone()),
        health_bind_address: Some("127.0.0.1".parse().unwrap()),
        health_server_port: Some(0),
        admin_server_port: Some(0),
        sync_interval: Some(Duration::from_millis(100)),
        sync_interval_cap: Some(Duration::from_millis(500)),
        dial_timeout: Some(Duration::from_secs(2)),
        ..Default::default()
    }
}

impl Lab {
    pub async fn new() -> Lab {
        Self::with(|_| {}).await
    }

    pub async fn with(tweak: impl FnOnce(&mut RawServerConfig)) -> Lab {
        init_tracing();
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = konnq_shared::certs::generate(&dir.path().join("pki"), &[]).expect("certs");
        let mut raw = server_raw(dir.path(), &certs);
        tweak(&mut raw);
        // A TCP frontend on an ephemeral port: bind it here, then configure
        // the port it got (port 0 in the config means "no TCP frontend").
        let tcp = match raw.server_port {
            Some(0) if raw.server_cert.is_some() => {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind tcp frontend");
                raw.server_port = Some(l.local_addr().unwrap().port());
                Some(l)
            }
            _ => None,
        };
        let cfg = raw.validate().expect("valid server config");
        let socket = cfg.uds_name.clone().unwrap_or_default();
        let mut without_tcp = cfg.clone();
        if tcp.is_some() {
            without_tcp.server_port = 0;
        }
        let mut listeners = konnq_server::Listeners::bind(&without_tcp).await.expect("bind");
        if tcp.is_some() {
            listeners.tcp = tcp;
        }
        let server = konnq_server::start(cfg, listeners).await.expect("server starts");
        Lab { dir, certs, server, socket }
    }

    pub async fn agent(&self) -> konnq_agent::AgentHandle {
        self.agent_with(|_| {}).await
    }

    pub async fn agent_with(&self, tweak: impl FnOnce(&mut RawAgentConfig)) -> konnq_agent::AgentHandle {
        let mut raw = agent_raw(&self.certs, self.server.agent_addr);
        tweak(&mut raw);
        start_agent(raw).await
    }

    /// Starts an agent and waits until the server counts it.
    pub async fn ready_agent(&self) -> konnq_agent::AgentHandle {
        let before = *self.server.backend.ready_agents().borrow();
        let agent = self.agent().await;
        agent.wait_connected(true).await;
        within(Duration::from_secs(10), self.server.wait_for_agents(before + 1)).await;
        agent
    }

    /// A new HTTP/2 connection over the Unix socket (kube-apiserver opens
    /// one per dial: the single-use tunnel).
    pub async fn channel(&self) -> ProxyServiceClient<Channel> {
        channel(&self.socket).await
    }

    pub async fn metric(&self, name: &str) -> f64 {
        metric(&self.server.metrics.render(), name)
    }
}

pub async fn start_agent(raw: RawAgentConfig) -> konnq_agent::AgentHandle {
    let cfg = raw.validate().expect("valid agent config");
    let listeners = konnq_agent::Listeners::bind(&cfg).await.expect("agent bind");
    konnq_agent::start(cfg, listeners).await.expect("agent starts")
}

pub async fn channel(socket: &Path) -> ProxyServiceClient<Channel> {
    let socket = socket.to_owned();
    let channel = Endpoint::try_from("http://localhost")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
        .await
        .expect("connect over the Unix socket");
    ProxyServiceClient::new(channel).max_decoding_message_size(MAX_MSG).max_encoding_message_size(MAX_MSG)
}

/// Reads a sample from Prometheus text (first line that starts with `name`).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Fails the test if `f` takes longer than `limit` (a hang guard, not a
/// performance assertion).
pub async fn within<F: std::future::Future>(limit: Duration, f: F) -> F::Output {
    tokio::time::timeout(limit, f).await.expect("operation did not finish in time")
}

/// Polls `cond` until it holds (bounded).
pub async fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One Proxy stream, as the Konnectivity client drives it.
pub struct Stream {
    pub tx: mpsc::Sender<Packet>,
    pub rx: Streaming<Packet>,
    pub connect_id: i64,
}

#[derive(Debug)]
pub enum Event {
    Data(Bytes),
    Close(String),
    DialRsp { random: i64, connect_id: i64, error: String },
    End,
}

impl Stream {
    /// Opens a Proxy stream and sends DIAL_REQ; does not wait for the answer.
    pub async fn open(client: &mut ProxyServiceClient<Channel>, address: &str, random: i64) -> Stream {
        let (tx, rx) = mpsc::channel(16);
        tx.send(client::dial_req(address, random)).await.expect("queue DIAL_REQ");
        let rx = client
            .proxy(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("Proxy stream opens")
            .into_inner();
        Stream { tx, rx, connect_id: 0 }
    }

    /// Dials and expects success.
    pub async fn dial(client: &mut ProxyServiceClient<Channel>, address: &str) -> Stream {
        let random = fastrand::i64(1..);
        let mut s = Stream::open(client, address, random).await;
        match s.next().await {
            Event::DialRsp { random: r, connect_id, error } => {
                assert_eq!(r, random, "DIAL_RSP echoes the random");
                assert!(error.is_empty(), "dial failed: {error}");
                assert_ne!(connect_id, 0);
                s.connect_id = connect_id;
            }
            other => panic!("expected DIAL_RSP, got {other:?}"),
        }
        s
    }

    pub async fn next(&mut self) -> Event {
        match self.rx.message().await {
            Ok(Some(p)) => match (PacketType::try_from(p.r#type), p.payload) {
                (Ok(PacketType::Data), Some(Payload::Data(d))) => Event::Data(d.data),
                (Ok(PacketType::CloseRsp), Some(Payload::CloseResponse(c))) => Event::Close(c.error),
                (Ok(PacketType::DialRsp), Some(Payload::DialResponse(d))) => {
                    Event::DialRsp { random: d.random, connect_id: d.connect_id, error: d.error }
                }
                (t, payload) => panic!("unexpected packet {t:?} {payload:?}"),
            },
            Ok(None) | Err(_) => Event::End,
        }
    }

    pub async fn send(&self, bytes: &[u8]) {
        self.send_as(self.connect_id, bytes).await;
    }

    pub async fn send_as(&self, connect_id: i64, bytes: &[u8]) {
        self.tx.send(data(connect_id, Bytes::copy_from_slice(bytes))).await.expect("stream open");
    }

    pub async fn close(&self) {
        self.tx.send(client::close_req(self.connect_id)).await.expect("stream open");
    }

    /// Reads DATA until `n` bytes arrived (panics on anything else).
    pub async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next().await {
                Event::Data(d) => out.extend_from_slice(&d),
                other => panic!("after {} of {n} bytes: {other:?}", out.len()),
            }
        }
        out
    }

    /// Reads DATA until CLOSE_RSP; returns the bytes and the close error.
    pub async fn read_to_close(&mut self) -> (Vec<u8>, String) {
        let mut out = Vec::new();
        loop {
            match self.next().await {
                Event::Data(d) => out.extend_from_slice(&d),
                Event::Close(e) => return (out, e),
                other => panic!("after {} bytes: {other:?}", out.len()),
            }
        }
    }
}

/// A TCP echo server on loopback; runs until the test ends.
pub async fn echo_target() -> SocketAddr {
    echo_on("127.0.0.1").await
}

/// A TCP echo server on `ip` (any 127.0.0.0/8 address is on loopback);
/// runs until the test ends.
pub async fn echo_on(ip: &str) -> SocketAddr {
    let ip: std::net::IpAddr = ip.parse().expect("an address");
    let listener = TcpListener::bind((ip, 0)).await.expect("bind echo");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    fastrand::Rng::new().fill(&mut buf);
    buf
}

/// Sends `payload` in 32 KiB DATA packets and reads the echo back concurrently.
pub async fn echo_through(stream: &mut Stream, payload: &[u8]) -> Vec<u8> {
    let tx = stream.tx.clone();
    let id = stream.connect_id;
    let owned = payload.to_vec();
    let writer = tokio::spawn(async move {
        for chunk in owned.chunks(32 * 1024) {
            tx.send(data(id, Bytes::copy_from_slice(chunk))).await.expect("stream open");
        }
    });
    let echoed = stream.read_exact(payload.len()).await;
    writer.await.expect("writer");
    echoed
}

/// Reads everything from a TCP stream until EOF.
pub async fn read_all(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = s.read_to_end(&mut v).await;
    v
}

pub async fn write_all(s: &mut tokio::net::TcpStream, b: &[u8]) {
    s.write_all(b).await.expect("target write");
}

/// A target that streams bytes until the peer closes (bounded: 1 GiB), and
/// counts what it managed to write.
pub async fn firehose() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let w = written.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let w = w.clone();
            tokio::spawn(async move {
                let chunk = vec![0x5au8; 64 * 1024];
                while w.load(Ordering::SeqCst) < (1 << 30) {
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                    w.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, written)
}

/// A bare agent connection: QUIC handshake (with the agent's client
/// certificate when `client_cert`), then `hello` on the control stream.
/// Returns the server's answer, the connection, its endpoint and the
/// control stream, which stays open as long as its halves are kept.
pub struct RawAgent {
    pub answer: konnq_protocol::wire::Control,
    pub conn: quinn::Connection,
    pub endpoint: quinn::Endpoint,
    pub control: (quinn::SendStream, quinn::RecvStream),
}

pub async fn raw_agent(lab: &Lab, hello: konnq_protocol::wire::Hello, client_cert: bool) -> RawAgent {
    use konnq_protocol::wire::{self, Control};
    let cert = client_cert.then_some((lab.certs.agent_cert.as_path(), lab.certs.agent_key.as_path()));
    let tls = konnq_shared::tls::client_config(&lab.certs.ca_cert, cert, &[konnq_shared::tls::ALPN_KONNQ])
        .expect("client TLS");
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let crypto = konnq_shared::quic::client_crypto(tls).expect("QUIC TLS");
    endpoint.set_default_client_config(quinn::ClientConfig::new(crypto));
    let conn = endpoint.connect(lab.server.agent_addr, "localhost").expect("connect").await.expect("handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("control stream");
    send.write_all(&Control::Hello(hello).encode()).await.expect("hello");
    let (kind, body) =
        konnq_shared::quic::read_frame(&mut recv, wire::MAX_CONTROL_BODY, "answer").await.expect("an answer");
    let answer = Control::from_frame(kind, &body).expect("answer decodes");
    RawAgent { answer, conn, endpoint, control: (send, recv) }
}

/// A UDP relay between one agent and the server, standing for the agent's
/// socket as the server sees it. Setting `cut` drops every packet both
/// ways: to the server the agent is then as gone as a killed process on a
/// dead node (no close frame, no ICMP). [`Relay::kill`] closes both sockets
/// instead, so the server's next packet is answered by the kernel with ICMP
/// "port unreachable", as for an agent process that died on a live node.
pub struct Relay {
    pub addr: SocketAddr,
    pub cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    back: std::sync::Arc<tokio::net::UdpSocket>,
    tasks: tokio::task::JoinSet<()>,
}

impl Relay {
    pub async fn start(server: SocketAddr) -> Relay {
        use std::sync::atomic::Ordering;
        use std::sync::Arc;
        use tokio::net::UdpSocket;
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        back.connect(server).await.expect("connect");
        let addr = front.local_addr().expect("addr");
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let agent = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
        let mut tasks = tokio::task::JoinSet::new();
        let (f, b, a, c) = (front.clone(), back.clone(), agent.clone(), cut.clone());
        tasks.spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = f.recv_from(&mut buf).await {
                *a.lock().expect("lock") = Some(from);
                if !c.load(Ordering::SeqCst) {
                    let _ = b.send(&buf[..n]).await;
                }
            }
        });
        let (c, b) = (cut.clone(), back.clone());
        tasks.spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = b.recv(&mut buf).await {
                let to = *agent.lock().expect("lock");
                if let (Some(to), false) = (to, c.load(Ordering::SeqCst)) {
                    let _ = front.send_to(&buf[..n], to).await;
                }
            }
        });
        Relay { addr, cut, back, tasks }
    }

    /// Forwards to `server` from now on, from the same socket (as a load
    /// balancer that sends a flow to another backend).
    pub async fn point_at(&self, server: SocketAddr) {
        self.back.connect(server).await.expect("connect");
    }

    /// Closes both sockets (see the type).
    pub async fn kill(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Once one agent is connected: a connection through it to an echo target
/// that has echoed once, and the client it is on.
pub async fn held_connection(lab: &Lab) -> (ProxyServiceClient<Channel>, Stream) {
    within(Duration::from_secs(20), lab.server.wait_for_agents(1)).await;
    let target = echo_target().await;
    let mut client = lab.channel().await;
    let mut open = within(Duration::from_secs(20), Stream::dial(&mut client, &target.to_string())).await;
    assert_eq!(within(Duration::from_secs(20), echo_through(&mut open, b"alive")).await, b"alive");
    (client, open)
}
