//! konnq-agent: keeps a QUIC connection to a konnq server and dials TCP
//! targets for it, one QUIC stream per proxied connection.
//!
//! - [`session`]: connect (TLS 1.3, optional client certificate), identify
//!   on the control stream, then accept dial streams until the connection
//!   ends; reconnect forever with jittered exponential backoff.
//! - [`dial`]: one dial stream (header, TCP dial, answer, byte copy).
//! - [`admin`]: `/healthz`, `/readyz` and `/ready` (connected to a server),
//!   `/metrics`; with `--enable-profiling`, `/debug/pprof/`.
//!
//! One QUIC endpoint (one UDP socket) carries the agent's server connection.
//! [`AgentHandle::rebind`] (SIGUSR1 in the binary) moves it to a new local
//! socket; QUIC connection migration keeps every proxied connection alive
//! when the node's address or NAT mapping changed.

pub mod admin;
pub mod cli;
pub mod dial;
pub mod metrics;
pub mod session;

use std::net::SocketAddr;

use konnq_shared::config::AgentConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info};

pub use metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("TLS: {0}")]
    Tls(#[from] konnq_shared::tls::TlsError),
    #[error("QUIC endpoint: {0}")]
    Quic(#[from] konnq_shared::quic::QuicSetupError),
    #[error("{key} {addr}: {source}")]
    Bind { key: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("moving the QUIC endpoint to a new local UDP socket: {0}")]
    Rebind(#[from] session::RebindError),
    #[error("listening for SIGUSR1: {0}")]
    Signal(#[source] std::io::Error),
}

/// The agent's bound sockets (health and admin HTTP).
pub struct Listeners {
    pub health: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(cfg: &AgentConfig) -> Result<Self, AgentError> {
        let bind = |key, addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|source| AgentError::Bind { key, addr, source })
        };
        Ok(Listeners {
            health: bind("health-server-port", SocketAddr::new(cfg.health_bind_address, cfg.health_server_port))
                .await?,
            admin: bind("admin-server-port", SocketAddr::new(cfg.admin_bind_address, cfg.admin_server_port)).await?,
        })
    }
}

/// A running agent.
pub struct AgentHandle {
    pub metrics: Metrics,
    pub health_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    connected: watch::Receiver<bool>,
    tasks: JoinSet<()>,
    endpoint: quinn::Endpoint,
    udp_buffer_bytes: usize,
}

impl AgentHandle {
    /// Waits until the agent is (or is not) connected to a server.
    pub async fn wait_connected(&self, want: bool) {
        let mut rx = self.connected.clone();
        let _ = rx.wait_for(|&c| c == want).await;
    }

    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// The local address of the QUIC endpoint's UDP socket.
    pub fn quic_local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Moves the QUIC endpoint, with every server connection and proxied
    /// connection on it, to a new UDP socket: same local IP, new ephemeral
    /// port, same buffer sizes. Use it after the node's address or NAT
    /// mapping changed. Returns the new local address; on error the old
    /// socket stays in use.
    pub fn rebind(&self) -> Result<SocketAddr, AgentError> {
        let (old, new) = session::rebind(&self.endpoint, self.udp_buffer_bytes)?;
        self.metrics.socket_rebinds.inc();
        info!(%old, %new, "moved QUIC endpoint to a new local socket");
        Ok(new)
    }

    /// Stops the agent: closes the QUIC connection (the server answers every
    /// affected client at once) and every target connection.
    pub async fn shutdown(mut self) {
        self.endpoint.close(quinn::VarInt::from_u32(konnq_shared::quic::codes::SHUTDOWN), b"agent shutting down");
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.endpoint.wait_idle()).await;
        info!("agent stopped");
    }
}

/// Starts the agent: the server connection loop and the HTTP endpoints.
pub async fn start(cfg: AgentConfig, listeners: Listeners) -> Result<AgentHandle, AgentError> {
    let metrics = Metrics::new();
    let endpoint = session::endpoint(&cfg)?;
    let (udp_buffer_bytes, profiling) = (cfg.quic.udp_buffer_bytes, cfg.enable_profiling);
    let (connected_tx, connected) = watch::channel(false);
    let health_addr = listeners.health.local_addr().map_err(|e| AgentError::Quic(e.into()))?;
    let admin_addr = listeners.admin.local_addr().map_err(|e| AgentError::Quic(e.into()))?;
    let mut tasks = JoinSet::new();
    let connector = session::Connector::new(cfg, endpoint.clone(), metrics.clone(), connected_tx)?;
    tasks.spawn(connector.run());
    let (rx, m) = (connected.clone(), metrics.clone());
    tasks.spawn(async move {
        if let Err(e) = admin::serve_health(listeners.health, rx, m).await {
            error!("health server failed: {e}");
        }
    });
    let m = metrics.clone();
    tasks.spawn(async move {
        if let Err(e) = admin::serve_admin(listeners.admin, m, profiling).await {
            error!("admin server failed: {e}");
        }
    });
    info!(%health_addr, %admin_addr, profiling, workers = tokio::runtime::Handle::current().metrics().num_workers(), "konnq-agent started");
    Ok(AgentHandle { metrics, health_addr, admin_addr, connected, tasks, endpoint, udp_buffer_bytes })
}

/// Runs until `shutdown` resolves; each SIGUSR1 meanwhile moves the QUIC
/// connections to a new local UDP socket ([`AgentHandle::rebind`]).
pub async fn run(
    cfg: AgentConfig,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(AgentError::Signal)?;
    let handle = start(cfg, listeners).await?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(()) = usr1.recv() => {
                info!("SIGUSR1: moving the QUIC connections to a new local UDP socket");
                if let Err(e) = handle.rebind() {
                    error!("SIGUSR1: {e}; still on the old socket");
                }
            }
        }
    }
    handle.shutdown().await;
    Ok(())
}
