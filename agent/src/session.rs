//! The agent's server connections: the sync loop that opens them (see
//! [`crate::sync`] for when), and each connection's life: connect on a new
//! UDP socket, identify on the control stream, serve dial streams until the
//! connection ends.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use konnq_protocol::wire::{self, Control, Hello, SecretToken};
use konnq_shared::config::{AgentConfig, AgentIdentifiers, AgentTransport};
use konnq_shared::logging::untrusted;
use konnq_shared::quic::{self, codes, read_frame};
use konnq_shared::stream_socket::StreamSocket;
use quinn::VarInt;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::metrics::{Direction, Metrics};
use crate::pool::{Added, Duplicate, Pool, Transport};
use crate::sync::{self, Backoff, Outcome};
use crate::AgentError;

/// How long connecting plus the Hello/Welcome exchange may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection lost after living this long is reconnected at once; one
/// lost sooner is reconnected after the backoff (a server that accepts and
/// then drops the agent must not be hammered).
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// How often a connected agent looks at its token file: kubelet rewrites a
/// projected token at 80% of its lifetime (an hour or more), so this is
/// early enough, and cheap.
const TOKEN_POLL: Duration = Duration::from_secs(5);

/// A new connection past the Welcome.
struct Connected {
    conn: quinn::Connection,
    control: quinn::RecvStream,
    control_send: quinn::SendStream,
    /// The token sent in the Hello.
    token: Option<String>,
    server_id: String,
    server_count: u32,
    /// The TCP link under a connection over TCP.
    link: Option<Arc<StreamSocket>>,
}

/// What every server connection's endpoint is made from: the client TLS
/// and transport configuration, and the UDP buffer size.
#[derive(Clone)]
pub struct ClientSetup {
    client: quinn::ClientConfig,
    /// The same over TCP (see [`quic::tcp_transport_config`]).
    tcp_client: quinn::ClientConfig,
    udp_buffer_bytes: usize,
}

impl ClientSetup {
    /// TLS 1.3 trusting `ca-cert`, presenting `agent-cert`/`agent-key` when
    /// given; the QUIC transport settings.
    pub fn new(cfg: &AgentConfig) -> Result<Self, AgentError> {
        let client_cert = cfg.agent_tls.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
        // Upstream's --alpn-proto first (for what sits in front of the server),
        // then konnq's own, the only one a konnq server accepts.
        let mut alpn: Vec<&[u8]> = cfg.alpn_proto.iter().map(|p| p.as_bytes()).collect();
        alpn.push(konnq_shared::tls::ALPN_KONNQ);
        let tls = konnq_shared::tls::client_config(&cfg.ca_cert, client_cert, &alpn)?;
        let crypto = quic::client_crypto(tls)?;
        let mut client = quinn::ClientConfig::new(crypto.clone());
        client.transport_config(Arc::new(quic::transport_config(&cfg.quic, true)?));
        let mut tcp_client = quinn::ClientConfig::new(crypto);
        tcp_client.transport_config(Arc::new(quic::tcp_transport_config(&cfg.quic, true)?));
        Ok(ClientSetup { client, tcp_client, udp_buffer_bytes: cfg.quic.udp_buffer_bytes })
    }

    /// A client endpoint on a new dual-stack UDP socket (an IPv4 one on
    /// hosts without IPv6), with its own ephemeral port.
    pub fn endpoint(&self) -> Result<quinn::Endpoint, AgentError> {
        let buffer = self.udp_buffer_bytes;
        let socket = match udp_socket(Ipv6Addr::UNSPECIFIED.into(), buffer) {
            Ok(s) => s,
            // Hosts without IPv6.
            Err(_) => udp_socket(Ipv4Addr::UNSPECIFIED.into(), buffer)?,
        };
        let runtime = quinn::default_runtime()
            .ok_or_else(|| quic::QuicSetupError::Socket(std::io::Error::other("no async runtime")))?;
        let mut endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
            .map_err(quic::QuicSetupError::Socket)?;
        endpoint.set_default_client_config(self.client.clone());
        Ok(endpoint)
    }

    pub fn udp_buffer_bytes(&self) -> usize {
        self.udp_buffer_bytes
    }

    /// A client endpoint whose datagrams go over a new TCP connection to
    /// `server` (where UDP is blocked); the link, to watch it end.
    pub async fn tcp_endpoint(&self, server: SocketAddr) -> Result<(quinn::Endpoint, Arc<StreamSocket>), String> {
        let link = StreamSocket::connect(server).await.map_err(|e| format!("TCP connection to {server}: {e}"))?;
        let runtime = quinn::default_runtime().ok_or("no async runtime")?;
        let socket: Arc<dyn quinn::AsyncUdpSocket> = link.clone();
        let mut endpoint =
            quinn::Endpoint::new_with_abstract_socket(quinn::EndpointConfig::default(), None, socket, runtime)
                .map_err(|e| format!("QUIC endpoint over TCP: {e}"))?;
        endpoint.set_default_client_config(self.tcp_client.clone());
        Ok((endpoint, link))
    }
}

/// The agent's UDP socket: `ip`, a new ephemeral port, the configured buffers.
fn udp_socket(ip: IpAddr, buffer: usize) -> Result<std::net::UdpSocket, quic::QuicSetupError> {
    quic::udp_socket(SocketAddr::new(ip, 0), buffer).map(|(socket, _, _)| socket)
}

/// Why the endpoint could not move to a new UDP socket (it keeps the old one).
#[derive(Debug, thiserror::Error)]
pub enum RebindError {
    #[error("reading the local address of the {which} socket: {source}")]
    LocalAddr { which: &'static str, source: std::io::Error },
    #[error("creating a UDP socket on {ip}: {source}")]
    Socket { ip: IpAddr, source: quic::QuicSetupError },
    #[error("switching to {new}: {source}")]
    Switch { new: SocketAddr, source: std::io::Error },
}

/// Moves `endpoint`, and with it every connection on it, to a new UDP socket
/// made like the first one: same local IP (unspecified stays unspecified),
/// new ephemeral port, same buffer sizes. The server sees the new address,
/// validates the path and carries on: no stream is lost. Returns (old, new).
pub fn rebind(endpoint: &quinn::Endpoint, buffer: usize) -> Result<(SocketAddr, SocketAddr), RebindError> {
    let old = endpoint.local_addr().map_err(|source| RebindError::LocalAddr { which: "current", source })?;
    let socket = udp_socket(old.ip(), buffer).map_err(|source| RebindError::Socket { ip: old.ip(), source })?;
    let new = socket.local_addr().map_err(|source| RebindError::LocalAddr { which: "new", source })?;
    endpoint.rebind(socket).map_err(|source| RebindError::Switch { new, source })?;
    Ok((old, new))
}

/// Upstream-style identifiers as (key, value) pairs for the Hello.
fn identifier_pairs(ids: &AgentIdentifiers) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    out.extend(ids.host.iter().map(|h| ("host".to_owned(), h.clone())));
    out.extend(ids.ipv4.iter().map(|a| ("ipv4".to_owned(), a.to_string())));
    out.extend(ids.ipv6.iter().map(|a| ("ipv6".to_owned(), a.to_string())));
    out.extend(ids.cidr.iter().map(|c| ("cidr".to_owned(), c.clone())));
    if ids.default_route {
        out.push(("default-route".to_owned(), "true".to_owned()));
    }
    out
}

/// Whether a server connection that ended for `reason` failed (counted as
/// upstream counts a failed receive from the server), as opposed to being
/// closed on purpose by the server (its shutdown, a refusal) or by us.
fn lost(reason: Option<&quinn::ConnectionError>) -> bool {
    !matches!(reason, Some(quinn::ConnectionError::ApplicationClosed(_) | quinn::ConnectionError::LocallyClosed))
}

pub struct Connector {
    cfg: AgentConfig,
    setup: ClientSetup,
    metrics: Metrics,
    pool: Arc<Pool>,
    hello: Hello,
    /// True once the agent drains: no new connections, and each server is
    /// told on its control stream.
    draining: watch::Receiver<bool>,
    /// Valid server leases, when the agent counts them.
    leases: Option<watch::Receiver<Option<usize>>>,
    /// `transport = auto`: UDP went unanswered and TCP worked, so new
    /// connections use TCP.
    on_tcp: AtomicBool,
}

impl Connector {
    pub fn new(
        cfg: AgentConfig,
        setup: ClientSetup,
        metrics: Metrics,
        pool: Arc<Pool>,
        draining: watch::Receiver<bool>,
        leases: Option<watch::Receiver<Option<usize>>>,
    ) -> Result<Self, AgentError> {
        konnq_shared::tls::server_name(cfg.tls_server_name())?;
        let hello = Hello {
            agent_id: cfg.agent_id.clone(),
            identifiers: identifier_pairs(&cfg.agent_identifiers),
            token: String::new(),
        };
        Ok(Connector { cfg, setup, metrics, pool, hello, draining, leases, on_tcp: AtomicBool::new(false) })
    }

    /// The server count to aim for (see [`crate::leases::target_server_count`]).
    fn target(&self) -> Option<usize> {
        let leases = self.leases.as_ref().and_then(|rx| *rx.borrow());
        let target = crate::leases::target_server_count(self.cfg.server_count_source, self.pool.reported(), leases);
        target.map(|n| n as usize)
    }

    /// The sync loop: opens connections until the agent holds one to each
    /// server, then watches for losses and for servers to add; returns when
    /// the agent drains.
    pub async fn run(self: Arc<Self>) {
        if self.cfg.transport == AgentTransport::Auto {
            tokio::spawn(Arc::clone(&self).probe_udp());
        }
        let mut backoff = Backoff::new(self.cfg.sync_interval, self.cfg.sync_interval_cap);
        let mut quick = sync::QUICK_RETRIES;
        let mut draining = self.draining.clone();
        loop {
            let target = self.target();
            self.metrics.known_server_count.set(target.unwrap_or(0) as i64);
            let held = self.pool.held();
            let delay = if sync::wants_more(held, target, self.cfg.sync_forever) {
                let below_count = sync::wants_more(held, target, false);
                let outcome = Arc::clone(&self).attempt().await;
                let delay = sync::after(outcome, below_count, quick > 0, self.cfg.sync_interval, &mut backoff);
                match outcome {
                    Outcome::Added => quick = sync::QUICK_RETRIES,
                    Outcome::Duplicate if below_count => quick = quick.saturating_sub(1),
                    _ => {}
                }
                delay
            } else {
                // At the count: look again after sync-interval, or sooner
                // when a connection ends or a server drains.
                sync::jitter(self.cfg.sync_interval * 9 / 10, self.cfg.sync_interval)
            };
            tokio::select! {
                _ = until_true(&mut draining) => return,
                _ = tokio::time::sleep(delay) => {}
                _ = self.pool.changed.notified() => {}
            }
            // Something ended: back to it soon, unless connections keep
            // ending young.
            let pause = match self.pool.take_loss() {
                Some(true) => {
                    backoff.reset();
                    quick = sync::QUICK_RETRIES;
                    sync::after_loss(self.cfg.sync_interval)
                }
                Some(false) => backoff.next_delay(),
                None => Duration::ZERO,
            };
            if !pause.is_zero() {
                debug!("reconnecting in {pause:?}");
                tokio::select! {
                    _ = until_true(&mut draining) => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }

    fn address(&self) -> String {
        format!("{}:{}", self.cfg.proxy_server_host, self.cfg.proxy_server_port)
    }

    /// One connection attempt on a new endpoint; a new server's connection
    /// is served by its own task from here on.
    async fn attempt(self: Arc<Self>) -> Outcome {
        let via = self.transport_now();
        let fallback = self.cfg.transport == AgentTransport::Auto;
        self.attempt_via(via, fallback).await
    }

    /// An attempt over `via`; with `fallback`, UDP unanswered is tried over
    /// TCP (see [`Connector::connect_udp`]). A UDP connection made while
    /// the agent was on TCP moves it back (see [`Connector::back_to_udp`]).
    async fn attempt_via(self: Arc<Self>, via: Transport, fallback: bool) -> Outcome {
        let attempt = async {
            let addr = self.resolve().await?;
            match via {
                Transport::Udp => self.connect_udp(addr, fallback).await,
                Transport::Tcp => tokio::time::timeout(CONNECT_TIMEOUT, self.connect_tcp(addr))
                    .await
                    .map_err(|_| format!("no answer over TCP within {CONNECT_TIMEOUT:?}"))?,
            }
        };
        let (endpoint, transport, connected) = match attempt.await {
            Ok(c) => c,
            Err(e) => {
                self.metrics.connect_failures.inc();
                if self.on_tcp.load(Ordering::Relaxed) && via == Transport::Udp {
                    debug!(server = %self.address(), "UDP still gets no answer: {}", untrusted(&e));
                } else {
                    warn!(server = %self.address(), "cannot connect: {}", untrusted(&e));
                }
                return Outcome::Failed;
            }
        };
        if transport == Transport::Udp && self.on_tcp.swap(false, Ordering::Relaxed) {
            self.back_to_udp();
        }
        let (id, count) = (connected.server_id.clone(), connected.server_count);
        let remote = connected.conn.remote_address();
        let added = self.pool.add(&id, count, endpoint, connected.conn.clone(), transport);
        // The count the server reported may have changed the target.
        self.metrics.known_server_count.set(self.target().unwrap_or(0) as i64);
        match added {
            Ok(Added { key, retire }) => {
                let transport = transport.label();
                info!(%remote, server_id = %untrusted(&id), server_count = count, agent_id = %self.cfg.agent_id, transport, "connected to server");
                tokio::spawn(self.serve(key, connected, retire));
                Outcome::Added
            }
            Err(Duplicate) => {
                debug!(%remote, server_id = %untrusted(&id), "reached a server this agent is already connected to; closing");
                connected.conn.close(VarInt::from_u32(codes::SHUTDOWN), b"agent already connected to this server");
                Outcome::Duplicate
            }
        }
    }

    async fn resolve(&self) -> Result<SocketAddr, String> {
        tokio::net::lookup_host(self.address())
            .await
            .map_err(|e| format!("resolving {}: {e}", self.address()))?
            .next()
            .ok_or_else(|| format!("{} resolves to no address", self.address()))
    }

    /// What the next attempt goes over: UDP, unless `transport` says TCP or
    /// (`auto`) UDP went unanswered and TCP worked.
    fn transport_now(&self) -> Transport {
        match self.cfg.transport {
            AgentTransport::Quic => Transport::Udp,
            AgentTransport::Tcp => Transport::Tcp,
            AgentTransport::Auto if self.on_tcp.load(Ordering::Relaxed) => Transport::Tcp,
            AgentTransport::Auto => Transport::Udp,
        }
    }

    /// QUIC over UDP. With `transport = auto`, a handshake unanswered for
    /// `transport-fallback-after` is tried over TCP instead; if that works,
    /// UDP is taken as blocked and later attempts use TCP.
    async fn connect_udp(
        &self,
        addr: SocketAddr,
        fallback: bool,
    ) -> Result<(quinn::Endpoint, Transport, Connected), String> {
        let endpoint = match self.pool.take_reset_endpoint() {
            Some(endpoint) => endpoint,
            None => self.setup.endpoint().map_err(|e| e.to_string())?,
        };
        let auto = self.cfg.transport == AgentTransport::Auto;
        let wait = if auto { self.cfg.transport_fallback_after } else { CONNECT_TIMEOUT };
        let connecting = endpoint.connect(addr, self.cfg.tls_server_name()).map_err(|e| e.to_string())?;
        let conn = match tokio::time::timeout(wait, connecting).await {
            Ok(conn) => conn.map_err(|e| format!("QUIC handshake with {addr}: {e}"))?,
            Err(_) if fallback => {
                drop(endpoint);
                let tcp = tokio::time::timeout(CONNECT_TIMEOUT, self.connect_tcp(addr)).await;
                let tcp = tcp.map_err(|_| format!("no answer over UDP within {wait:?}, nor over TCP"))?;
                let tcp = tcp.map_err(|e| format!("no answer over UDP within {wait:?}; over TCP: {e}"))?;
                self.fell_back(addr, wait);
                return Ok(tcp);
            }
            Err(_) => return Err(format!("no QUIC answer from {addr} within {wait:?}")),
        };
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, self.identify(conn))
            .await
            .map_err(|_| format!("no welcome from {addr} within {CONNECT_TIMEOUT:?}"))??;
        Ok((endpoint, Transport::Udp, connected))
    }

    /// QUIC datagrams over a new TCP connection to the same address.
    async fn connect_tcp(&self, addr: SocketAddr) -> Result<(quinn::Endpoint, Transport, Connected), String> {
        let (endpoint, link) = self.setup.tcp_endpoint(addr).await?;
        let conn = endpoint
            .connect(addr, self.cfg.tls_server_name())
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| format!("QUIC handshake over TCP with {addr}: {e}"))?;
        let mut connected = self.identify(conn).await?;
        connected.link = Some(link);
        Ok((endpoint, Transport::Tcp, connected))
    }

    /// UDP got no answer where TCP did: say so once, and use TCP.
    fn fell_back(&self, addr: SocketAddr, waited: Duration) {
        if !self.on_tcp.swap(true, Ordering::Relaxed) {
            self.metrics.tcp_fallbacks.inc();
            warn!(
                server = %addr,
                "no QUIC answer over UDP within {waited:?}, but TCP works: UDP looks blocked on the way to the \
                 server; connecting over TCP (QUIC datagrams on TCP port {}), where a lost packet holds up every \
                 connection behind it",
                addr.port()
            );
        }
    }

    /// UDP answered again while the agent was on TCP: new connections use
    /// UDP, and the TCP ones are retired: each tells its server it drains
    /// (no new dials), its proxied connections finish, then it closes, and
    /// the sync loop replaces it over UDP.
    fn back_to_udp(&self) {
        let retired = self.pool.retire_tcp();
        info!(retired, "UDP answers again: moving to QUIC over UDP; open connections over TCP finish first");
    }

    /// `transport = auto`, while on TCP: tries a connection over UDP after
    /// 10 × `sync-interval`, doubling up to 300 × (10 s to 5 min by
    /// default); one that works moves the agent back to UDP.
    async fn probe_udp(self: Arc<Self>) {
        let (first, cap) = (self.cfg.sync_interval * 10, self.cfg.sync_interval * 300);
        let mut gap = first;
        let mut draining = self.draining.clone();
        loop {
            tokio::select! {
                _ = until_true(&mut draining) => return,
                _ = tokio::time::sleep(gap) => {}
            }
            if !self.on_tcp.load(Ordering::Relaxed) {
                gap = first;
                continue;
            }
            match Arc::clone(&self).attempt_via(Transport::Udp, false).await {
                Outcome::Failed => gap = (gap * 2).min(cap),
                Outcome::Added | Outcome::Duplicate => gap = first,
            }
        }
    }

    /// Hello → Welcome on a new connection's control stream.
    async fn identify(&self, conn: quinn::Connection) -> Result<Connected, String> {
        let mut hello = self.hello.clone();
        // Re-read on every connect: projected tokens rotate.
        let token = self.read_token().await?;
        hello.token = token.clone().unwrap_or_default();
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&Control::Hello(hello).encode()).await.map_err(|e| e.to_string())?;
        let (kind, body) = read_frame(&mut recv, wire::MAX_CONTROL_BODY, "control message").await.map_err(|e| {
            // A server that refuses us closes the connection with the reason.
            match conn.close_reason() {
                Some(why) => format!("waiting for the server's welcome: {e} ({why})"),
                None => format!("waiting for the server's welcome: {e}"),
            }
        })?;
        match Control::from_frame(kind, &body).map_err(|e| e.to_string())? {
            Control::Welcome { server_id, server_count } => {
                Ok(Connected { conn, control: recv, control_send: send, token, server_id, server_count, link: None })
            }
            Control::Reject { reason } => Err(format!("server refused this agent: {reason}")),
            other => Err(format!("unexpected answer to hello: {other:?}")),
        }
    }

    /// The token in `service-account-token-path`, if one is configured.
    async fn read_token(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.cfg.service_account_token_path else { return Ok(None) };
        let token = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| format!("service-account-token-path {}: {e}", path.display()))?;
        Ok(Some(token.trim().to_owned()))
    }

    /// Writes the agent's control messages: a Drain once the agent drains,
    /// and the token again each time its file changes (kubelet rotates
    /// projected tokens), so the server keeps checking a current one.
    /// Returns only if the control stream fails.
    /// A retired connection (`retire`) tells its server the same Drain.
    async fn write_control(
        &self,
        control: &mut quinn::SendStream,
        server_id: &str,
        sent: Option<String>,
        mut retire: watch::Receiver<bool>,
    ) -> String {
        let mut draining = self.draining.clone();
        let mut told = false;
        let mut tokens = TokenWatch { sent, failing: None };
        let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + TOKEN_POLL, TOKEN_POLL);
        loop {
            tokio::select! {
                _ = until_either(&mut draining, &mut retire), if !told => {
                    told = true;
                    if let Err(e) = control.write_all(&Control::Drain.encode()).await {
                        return format!("control stream: {e}");
                    }
                    info!(server_id = %untrusted(server_id), "told the server this connection is draining");
                }
                _ = poll.tick(), if tokens.sent.is_some() => {
                    let Some(token) = tokens.changed(self.read_token().await) else { continue };
                    if let Err(e) = control.write_all(&Control::Token(SecretToken(token)).encode()).await {
                        return format!("control stream: {e}");
                    }
                    info!(server_id = %untrusted(server_id), "service-account token changed; sent the new one to the server");
                }
                else => return std::future::pending().await,
            }
        }
    }

    /// Serves dial streams on one server connection until it ends, then
    /// gives its place up in the pool.
    async fn serve(self: Arc<Self>, key: u64, c: Connected, retire: watch::Receiver<bool>) {
        let Connected { conn, mut control, mut control_send, token, server_id, link, .. } = c;
        let began = Instant::now();
        let watch_control = async {
            loop {
                match read_frame(&mut control, wire::MAX_CONTROL_BODY, "control message").await {
                    Ok((kind, body)) => match Control::from_frame(kind, &body) {
                        Ok(Control::Drain) => {
                            info!(server_id = %untrusted(&server_id), "server is draining; looking for another server");
                            self.pool.set_draining(&server_id, key);
                        }
                        Ok(other) => debug!("ignoring control message {}", untrusted(&format!("{other:?}"))),
                        Err(e) => {
                            conn.close(VarInt::from_u32(codes::PROTOCOL), b"malformed control message");
                            return format!("malformed control message: {e}");
                        }
                    },
                    Err(e) => return format!("control stream: {e}"),
                }
            }
        };
        // Proxied connections open on this server connection.
        let (active, mut idle) = watch::channel(0usize);
        let active = Arc::new(active);
        let accept = async {
            let send_clock = Arc::new(konnq_shared::quic::ShareClock::default());
            loop {
                match conn.accept_bi().await {
                    Ok((send, recv)) => {
                        let (timeout, metrics) = (self.cfg.dial_timeout, self.metrics.clone());
                        let clock = Arc::clone(&send_clock);
                        let open = Open::count(&active);
                        tokio::spawn(async move {
                            crate::dial::handle(send, recv, timeout, metrics, clock).await;
                            drop(open);
                        });
                    }
                    Err(e) => return e.to_string(),
                }
            }
        };
        // Retired: the server was told (write_control); once the proxied
        // connections are done (or after graceful-shutdown-timeout), close.
        let mut retired = retire.clone();
        let wind_down = async {
            until_true(&mut retired).await;
            let grace = self.cfg.graceful_shutdown_timeout;
            let _ = tokio::time::timeout(grace, idle.wait_for(|&n| n == 0)).await;
            conn.close(VarInt::from_u32(codes::SHUTDOWN), b"agent moved this server to QUIC over UDP");
            "moved to QUIC over UDP".to_owned()
        };
        let link_ended = async {
            let Some(link) = &link else { return std::future::pending().await };
            let why = link.ended().await;
            conn.close(VarInt::from_u32(codes::SHUTDOWN), b"TCP connection to the server lost");
            format!("TCP connection to the server: {why}")
        };
        let reason = tokio::select! {
            r = watch_control => r,
            r = accept => r,
            r = self.write_control(&mut control_send, &server_id, token, retire.clone()) => r,
            r = link_ended => r,
            r = wind_down => r,
        };
        let retired = *retire.borrow();
        if lost(conn.close_reason().as_ref()) {
            self.metrics.server_failure(Direction::FromServer);
        }
        let reason = match conn.close_reason().map(|why| why.to_string()) {
            Some(why) if why != reason => format!("{reason} ({why})"),
            _ => reason,
        };
        if retired {
            info!(server_id = %untrusted(&server_id), "retired connection closed: {}", untrusted(&reason));
        } else {
            warn!(server_id = %untrusted(&server_id), "disconnected from server: {}", untrusted(&reason));
        }
        let was_reset = matches!(conn.close_reason(), Some(quinn::ConnectionError::Reset));
        self.pool.remove(&server_id, key, retired || began.elapsed() >= STABLE_AFTER, was_reset);
    }
}

/// Resolves once `rx` holds true (or its sender is gone).
async fn until_true(rx: &mut watch::Receiver<bool>) {
    // The guard wait_for returns is not Send: drop it here.
    let _ = rx.wait_for(|&v| v).await;
}

/// Resolves once either holds true.
async fn until_either(a: &mut watch::Receiver<bool>, b: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = until_true(a) => {}
        _ = until_true(b) => {}
    }
}

/// Counts one open proxied connection while it lives.
struct Open(Arc<watch::Sender<usize>>);

impl Open {
    fn count(active: &Arc<watch::Sender<usize>>) -> Open {
        active.send_modify(|n| *n += 1);
        Open(Arc::clone(active))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// The token last sent, and the last error reading the file.
struct TokenWatch {
    sent: Option<String>,
    failing: Option<String>,
}

impl TokenWatch {
    /// The token to send, if `read` found a new one. A read error is logged
    /// once per distinct error (the file may be mid-rotation): the server
    /// keeps the last token.
    fn changed(&mut self, read: Result<Option<String>, String>) -> Option<String> {
        match read {
            Ok(Some(token)) if !token.is_empty() => {
                self.failing = None;
                if self.sent.as_ref() == Some(&token) {
                    return None;
                }
                self.sent = Some(token.clone());
                Some(token)
            }
            Ok(_) => None,
            Err(e) => {
                if self.failing.as_ref() != Some(&e) {
                    warn!("cannot read the new token, the server keeps the last one: {e}");
                    self.failing = Some(e);
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rebind_keeps_the_ip_and_takes_a_new_port() {
        let mut addrs = vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))];
        if std::net::UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).is_ok() {
            addrs.push(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)));
        }
        for bind in addrs {
            let endpoint = quinn::Endpoint::client(bind).expect("client endpoint");
            let first = endpoint.local_addr().expect("local addr");
            let (old, new) = rebind(&endpoint, 1 << 16).expect("rebind");
            assert_eq!(old, first, "{bind}");
            assert_eq!(new.ip(), bind.ip(), "same IP, unspecified stays unspecified");
            assert_ne!(new.port(), old.port(), "a new ephemeral port");
            assert_eq!(endpoint.local_addr().expect("local addr"), new, "the endpoint uses the new socket");
            let (again, _) = rebind(&endpoint, 1 << 16).expect("second rebind");
            assert_eq!(again, new);
        }
    }

    #[test]
    fn identifiers_become_pairs() {
        let ids = AgentIdentifiers::parse("host=n1&ipv4=10.0.0.1&default-route=true").expect("valid identifiers");
        let pairs = identifier_pairs(&ids);
        assert!(pairs.contains(&("host".into(), "n1".into())));
        assert!(pairs.contains(&("ipv4".into(), "10.0.0.1".into())));
        assert!(pairs.contains(&("default-route".into(), "true".into())));
    }
}
