//! Simulated agents: each holds its own connection to the server on its own
//! socket, as a node's agent does, and comes back with the real agent's
//! backoff (1 s doubling to 10 s, jittered) whenever it loses the server.
//!
//! - konnq: a QUIC connection from its own UDP socket, the agent's
//!   transport settings (keep-alive included), Hello → Welcome on the
//!   control stream.
//! - upstream: a gRPC `AgentService.Connect` stream over its own TCP+mTLS
//!   connection, with upstream's `agentID` metadata; admitted once the server
//!   answers with its headers (`serverID`, `serverCount`), as upstream's
//!   agent waits for them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use konnq_protocol::proto::Packet;
use konnq_protocol::wire::{self, Hello};
use konnq_shared::config::QuicConfig;
use konnq_shared::quic::read_frame;
use tokio::sync::{watch, Notify};

/// How the simulated agents reach and authenticate to the server.
#[derive(Clone)]
pub struct Target {
    pub server: SocketAddr,
    pub ca_cert: PathBuf,
    pub agent_cert: PathBuf,
    pub agent_key: PathBuf,
    /// konnq only: the agents' QUIC settings (keep-alive, idle timeout).
    pub quic: QuicConfig,
}

/// What the fleet has done so far, shared by every simulated agent.
#[derive(Default)]
pub struct Fleet {
    /// Agents holding an admitted connection right now.
    pub connected: AtomicUsize,
    /// Admissions in all (first connections and reconnections).
    pub admissions: AtomicUsize,
    pub changed: Notify,
    /// The last refusal or connect error, for the report.
    pub last_error: std::sync::Mutex<Option<String>>,
}

impl Fleet {
    /// Waits until `connected` reaches `n` (and `admissions` at least
    /// `min_admissions`); how long that took from `since`, or `None` at the
    /// deadline.
    pub async fn wait_connected(
        &self,
        n: usize,
        min_admissions: usize,
        since: Instant,
        limit: Duration,
    ) -> Option<Duration> {
        let deadline = tokio::time::Instant::from_std(since + limit);
        loop {
            let notified = self.changed.notified();
            if self.connected.load(Ordering::SeqCst) >= n && self.admissions.load(Ordering::SeqCst) >= min_admissions {
                return Some(since.elapsed());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    fn admitted(&self) {
        self.connected.fetch_add(1, Ordering::SeqCst);
        self.admissions.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    fn lost(&self) {
        self.connected.fetch_sub(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    fn refused(&self, why: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }
}

/// Which server the agents speak to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Konnq,
    Upstream,
}

/// Runs agent `index` until `stop` turns true: connect, hold, reconnect.
pub async fn agent(kind: Kind, index: usize, target: Target, fleet: Arc<Fleet>, mut stop: watch::Receiver<bool>) {
    let id = format!("fleet-{index}");
    let mut backoff = konnq_agent::sync::Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
    let mut konnq_endpoint = None;
    while !*stop.borrow() {
        let attempt = async {
            match kind {
                Kind::Konnq => hold_konnq(&mut konnq_endpoint, &id, &target, &fleet).await,
                Kind::Upstream => hold_upstream(&id, &target, &fleet).await,
            }
        };
        let outcome = tokio::select! {
            r = attempt => r,
            _ = stop.changed() => return,
        };
        match outcome {
            // Held a connection until the server went away: start over.
            Ok(()) => backoff.reset(),
            Err(e) => fleet.refused(format!("{e:#}")),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One konnq connection, from this agent's own UDP socket: admitted, then
/// held until it closes. `Err` when it was never admitted.
async fn hold_konnq(endpoint: &mut Option<quinn::Endpoint>, id: &str, t: &Target, fleet: &Fleet) -> anyhow::Result<()> {
    if endpoint.is_none() {
        *endpoint = Some(konnq_endpoint(t)?);
    }
    let endpoint = endpoint.as_ref().context("endpoint")?;
    let hello = Hello { agent_id: id.to_owned(), identifiers: Vec::new(), token: String::new() };
    let (conn, (_send, mut recv)) = crate::agents::attempt(endpoint, t.server, &t.server.ip().to_string(), &hello)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    fleet.admitted();
    // Control messages (DRAIN) are read and dropped; the connection's end
    // is what counts.
    while read_frame(&mut recv, wire::MAX_CONTROL_BODY, "control").await.is_ok() {}
    conn.closed().await;
    fleet.lost();
    Ok(())
}

fn konnq_endpoint(t: &Target) -> anyhow::Result<quinn::Endpoint> {
    let tls = konnq_shared::tls::client_config(
        &t.ca_cert,
        Some((&t.agent_cert, &t.agent_key)),
        &[konnq_shared::tls::ALPN_KONNQ],
    )?;
    let mut client = quinn::ClientConfig::new(konnq_shared::quic::client_crypto(tls)?);
    // The real agent's transport, except the credit for dial streams: quinn
    // allocates state for every stream it allows the peer up front (10,000
    // per agent), which would cost this process, not the server, gigabytes.
    // No dial is made here, and the server's own state does not depend on it.
    client.transport_config(Arc::new(konnq_shared::quic::transport_config(&t.quic, false)?));
    // quinn sizes an endpoint's receive buffer from the largest datagram
    // it accepts (64 KiB by default, times its batch): with thousands of
    // endpoints in one process that is gigabytes. Agent traffic here is
    // keep-alives; an Ethernet-sized datagram is plenty.
    let mut config = quinn::EndpointConfig::default();
    config.max_udp_payload_size(1472)?;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let runtime = quinn::default_runtime().context("no async runtime")?;
    let mut endpoint = quinn::Endpoint::new(config, None, socket, runtime)?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// One upstream `AgentService.Connect` stream on its own TCP+mTLS
/// connection: admitted once the server's headers arrive, held until the
/// stream ends.
async fn hold_upstream(id: &str, t: &Target, fleet: &Fleet) -> anyhow::Result<()> {
    let channel = upstream_channel(t).await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.context("channel")?;
    // The request stream stays open (and empty) while the agent is connected.
    let (_tx, rx) = tokio::sync::mpsc::channel::<Packet>(1);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request.metadata_mut().insert("agentid", id.parse()?);
    request.metadata_mut().insert("agentidentifiers", "".parse()?);
    let path = http::uri::PathAndQuery::from_static("/AgentService/Connect");
    let codec = tonic_prost::ProstCodec::<Packet, Packet>::default();
    let response = grpc.streaming(request, path, codec).await.context("Connect")?;
    anyhow::ensure!(response.metadata().get("serverid").is_some(), "no serverID header");
    fleet.admitted();
    let mut packets = response.into_inner();
    while let Ok(Some(_)) = packets.message().await {}
    fleet.lost();
    Ok(())
}

async fn upstream_channel(t: &Target) -> anyhow::Result<tonic::transport::Channel> {
    let tls = konnq_shared::tls::client_config(&t.ca_cert, Some((&t.agent_cert, &t.agent_key)), &[b"h2"])?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let server = t.server;
    let name = rustls::pki_types::ServerName::from(server.ip());
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{server}"))?
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let (connector, name) = (connector.clone(), name.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(server).await?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .context("TCP+TLS connect")?;
    Ok(channel)
}
