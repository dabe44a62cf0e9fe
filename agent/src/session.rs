//! The agent's connection to a server: connect, identify on the control
//! stream, serve dial streams until the connection ends, reconnect forever
//! with jittered exponential backoff.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use konnq_shared::config::{AgentConfig, AgentIdentifiers};
use konnq_shared::quic::{self, codes, read_frame};
use konnq_shared::wire::{self, Control, Hello, SecretToken};
use quinn::VarInt;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics::{Direction, Metrics};
use crate::AgentError;

/// How long connecting plus the Hello/Welcome exchange may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that lasted this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// How often a connected agent looks at its token file: kubelet rewrites a
/// projected token at 80% of its lifetime (an hour or more), so this is
/// early enough, and cheap.
const TOKEN_POLL: Duration = Duration::from_secs(5);

/// A connection's control stream, and the token sent in its Hello.
type Connected = (quinn::Connection, quinn::RecvStream, quinn::SendStream, Option<String>);

/// Builds the client QUIC endpoint (TLS 1.3 trusting `ca-cert`, presenting
/// `agent-cert`/`agent-key` when given) on a dual-stack UDP socket, or an
/// IPv4 one on hosts without IPv6. Every server connection shares it.
pub fn endpoint(cfg: &AgentConfig) -> Result<quinn::Endpoint, AgentError> {
    let client_cert = cfg.agent_tls.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    // Upstream's --alpn-proto first (for what sits in front of the server),
    // then konnq's own, the only one a konnq server accepts.
    let mut alpn: Vec<&[u8]> = cfg.alpn_proto.iter().map(|p| p.as_bytes()).collect();
    alpn.push(konnq_shared::tls::ALPN_KONNQ);
    let tls = konnq_shared::tls::client_config(&cfg.ca_cert, client_cert, &alpn)?;
    let mut client = quinn::ClientConfig::new(quic::client_crypto(tls)?);
    client.transport_config(Arc::new(quic::transport_config(&cfg.quic, true)?));
    let buffer = cfg.quic.udp_buffer_bytes;
    let socket = match udp_socket(Ipv6Addr::UNSPECIFIED.into(), buffer) {
        Ok(s) => s,
        // Hosts without IPv6.
        Err(_) => udp_socket(Ipv4Addr::UNSPECIFIED.into(), buffer)?,
    };
    let runtime = quinn::default_runtime()
        .ok_or_else(|| quic::QuicSetupError::Socket(std::io::Error::other("no async runtime")))?;
    let mut endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
        .map_err(quic::QuicSetupError::Socket)?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
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

/// Jittered exponential backoff between `start` and `cap`.
#[derive(Debug)]
pub struct Backoff {
    start: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(start: Duration, cap: Duration) -> Self {
        Backoff { start, cap, next: start }
    }

    /// The next delay: uniformly random in [next/2, next], then `next` doubles up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.cap);
        let half = base / 2;
        half + base.mul_f64(fastrand::f64()) / 2
    }

    pub fn reset(&mut self) {
        self.next = self.start;
    }
}

/// Whether a server connection that ended for `reason` failed (counted as
/// upstream counts a failed receive from the server), as opposed to being
/// closed on purpose by the server (its shutdown, a refusal) or by us.
fn lost(reason: Option<&quinn::ConnectionError>) -> bool {
    !matches!(reason, Some(quinn::ConnectionError::ApplicationClosed(_) | quinn::ConnectionError::LocallyClosed))
}

pub struct Connector {
    cfg: AgentConfig,
    endpoint: quinn::Endpoint,
    metrics: Metrics,
    connected: watch::Sender<bool>,
    hello: Hello,
}

impl Connector {
    pub fn new(
        cfg: AgentConfig,
        endpoint: quinn::Endpoint,
        metrics: Metrics,
        connected: watch::Sender<bool>,
    ) -> Result<Self, AgentError> {
        konnq_shared::tls::server_name(cfg.tls_server_name())?;
        let hello = Hello {
            agent_id: cfg.agent_id.clone(),
            identifiers: identifier_pairs(&cfg.agent_identifiers),
            token: String::new(),
        };
        Ok(Connector { cfg, endpoint, metrics, connected, hello })
    }

    /// Connects, serves, reconnects; never returns.
    pub async fn run(self) {
        let mut backoff = Backoff::new(self.cfg.sync_interval, self.cfg.sync_interval_cap);
        loop {
            let began = Instant::now();
            match tokio::time::timeout(CONNECT_TIMEOUT, self.connect()).await {
                Ok(Ok(conn)) => {
                    let reason = self.serve(conn).await;
                    warn!("disconnected from server: {reason}");
                    if began.elapsed() >= STABLE_AFTER {
                        backoff.reset();
                    }
                }
                Ok(Err(e)) => {
                    self.metrics.connect_failures.inc();
                    warn!(server = %self.target(), "cannot connect: {e}");
                }
                Err(_) => {
                    self.metrics.connect_failures.inc();
                    warn!(server = %self.target(), "cannot connect: no answer within {CONNECT_TIMEOUT:?}");
                }
            }
            let delay = backoff.next_delay();
            info!("reconnecting in {delay:?}");
            tokio::time::sleep(delay).await;
        }
    }

    fn target(&self) -> String {
        format!("{}:{}", self.cfg.proxy_server_host, self.cfg.proxy_server_port)
    }

    async fn connect(&self) -> Result<Connected, String> {
        let addr = tokio::net::lookup_host(self.target())
            .await
            .map_err(|e| format!("resolving {}: {e}", self.target()))?
            .next()
            .ok_or_else(|| format!("{} resolves to no address", self.target()))?;
        let conn = self
            .endpoint
            .connect(addr, self.cfg.tls_server_name())
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| format!("QUIC handshake with {addr}: {e}"))?;
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
                info!(%addr, server_id, server_count, agent_id = %self.cfg.agent_id, "connected to server");
                Ok((conn, recv, send, token))
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

    /// Sends the token again each time its file changes (kubelet rotates
    /// projected tokens), so the server keeps checking a current one.
    /// Returns only if the control stream fails.
    async fn send_rotated_tokens(&self, control: &mut quinn::SendStream, sent: Option<String>) -> String {
        let Some(mut sent) = sent else { return std::future::pending().await };
        let mut failing: Option<String> = None;
        loop {
            tokio::time::sleep(TOKEN_POLL).await;
            let token = match self.read_token().await {
                Ok(Some(token)) if !token.is_empty() => token,
                Ok(_) => continue,
                Err(e) => {
                    // Once per distinct error: the file may be mid-rotation.
                    if failing.as_ref() != Some(&e) {
                        warn!("cannot read the new token, the server keeps the last one: {e}");
                        failing = Some(e);
                    }
                    continue;
                }
            };
            failing = None;
            if token == sent {
                continue;
            }
            if let Err(e) = control.write_all(&Control::Token(SecretToken(token.clone())).encode()).await {
                return format!("control stream: {e}");
            }
            info!("service-account token changed; sent the new one to the server");
            sent = token;
        }
    }

    /// Serves dial streams until the connection ends; returns why it ended.
    async fn serve(&self, (conn, mut control, mut control_send, token): Connected) -> String {
        self.metrics.open_server_connections.set(1);
        self.connected.send_replace(true);
        let watch_control = async {
            loop {
                match read_frame(&mut control, wire::MAX_CONTROL_BODY, "control message").await {
                    Ok((kind, body)) => match Control::from_frame(kind, &body) {
                        Ok(Control::Drain) => info!("server is draining"),
                        Ok(other) => tracing::debug!("ignoring control message {other:?}"),
                        Err(e) => {
                            conn.close(VarInt::from_u32(codes::PROTOCOL), b"malformed control message");
                            return format!("malformed control message: {e}");
                        }
                    },
                    Err(e) => return format!("control stream: {e}"),
                }
            }
        };
        let accept = async {
            let send_clock = Arc::new(konnq_shared::quic::ShareClock::default());
            loop {
                match conn.accept_bi().await {
                    Ok((send, recv)) => {
                        let (timeout, metrics) = (self.cfg.dial_timeout, self.metrics.clone());
                        let clock = Arc::clone(&send_clock);
                        tokio::spawn(crate::dial::handle(send, recv, timeout, metrics, clock));
                    }
                    Err(e) => return e.to_string(),
                }
            }
        };
        let reason = tokio::select! {
            r = watch_control => r,
            r = accept => r,
            r = self.send_rotated_tokens(&mut control_send, token) => r,
        };
        self.metrics.open_server_connections.set(0);
        if lost(conn.close_reason().as_ref()) {
            self.metrics.server_failure(Direction::FromServer);
        }
        self.connected.send_replace(false);
        match conn.close_reason() {
            Some(why) => format!("{reason} ({why})"),
            None => reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let expected_bases = [100, 200, 400, 800, 800];
        for base in expected_bases {
            let d = b.next_delay();
            let base = Duration::from_millis(base);
            assert!(d >= base / 2 && d <= base, "{d:?} outside [{:?}, {base:?}]", base / 2);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

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
