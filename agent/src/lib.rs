//! konnq-agent: holds QUIC connections to konnq servers and dials TCP
//! targets for them, one QUIC stream per proxied connection.
//!
//! - [`sync`]: when to open another server connection (the agent holds one
//!   to each server behind `proxy-server-host`), and the backoff.
//! - [`pool`]: the held connections, one per server ID, each on its own
//!   UDP socket.
//! - [`session`]: the sync loop and each connection's life: connect (TLS
//!   1.3, optional client certificate), identify on the control stream,
//!   accept dial streams until the connection ends.
//! - [`dial`]: one dial stream (header, TCP dial, answer, byte copy).
//! - [`admin`]: `/healthz`, `/readyz` and `/ready` (connected to a server),
//!   `/metrics`; with `--enable-profiling`, `/debug/pprof/`.
//!
//! [`AgentHandle::rebind`] (SIGUSR1 in the binary) moves every connection to
//! a new local socket; QUIC connection migration keeps every proxied
//! connection alive when the node's address or NAT mapping changed.
//! [`AgentHandle::drain`] (SIGTERM) tells the servers to send no new dials
//! and lets the proxied connections finish.

pub mod admin;
pub mod cli;
pub mod dial;
pub mod leases;
pub mod metrics;
pub mod pool;
pub mod session;
pub mod sync;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use konnq_shared::config::AgentConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

pub use metrics::Metrics;
use pool::Pool;

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
    #[error("server lease counting: {0}")]
    Leases(#[from] konnq_shared::kube::KubeSetupError),
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

/// A draining agent exits once its open proxied connections moved no byte
/// for this long.
pub const QUIET: Duration = Duration::from_secs(2);

/// Beyond two round trips, how long a draining agent waits for dials the
/// servers sent before they read its drain notice.
const DRAIN_SETTLE_MARGIN: Duration = Duration::from_millis(100);

/// A running agent.
pub struct AgentHandle {
    pub metrics: Metrics,
    pub health_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pool: Arc<Pool>,
    /// Valid server Leases counted (`None`: not counting, or not yet counted).
    pub server_leases: Option<watch::Receiver<Option<usize>>>,
    tasks: JoinSet<()>,
    draining: watch::Sender<bool>,
    udp_buffer_bytes: usize,
    grace: Duration,
}

impl AgentHandle {
    /// Waits until the agent is (or is not) connected to a server.
    pub async fn wait_connected(&self, want: bool) {
        let mut rx = self.pool.open();
        let _ = rx.wait_for(|&n| (n > 0) == want).await;
    }

    /// Waits until the agent holds connections to exactly `n` servers.
    pub async fn wait_servers(&self, n: usize) {
        let mut rx = self.pool.open();
        let _ = rx.wait_for(|&open| open == n).await;
    }

    pub fn is_connected(&self) -> bool {
        *self.pool.open().borrow() > 0
    }

    /// IDs of the servers the agent holds a connection to, sorted.
    pub fn server_ids(&self) -> Vec<String> {
        self.pool.server_ids()
    }

    /// IDs of the servers that said they are shutting down, sorted.
    pub fn draining_servers(&self) -> Vec<String> {
        self.pool.draining_ids()
    }

    /// The local addresses of the server connections' UDP sockets.
    pub fn quic_local_addrs(&self) -> Vec<SocketAddr> {
        self.pool.local_addrs()
    }

    /// Moves every server connection, with every proxied connection on it,
    /// to a new UDP socket: same local IP, new ephemeral port, same buffer
    /// sizes. Use it after the node's address or NAT mapping changed.
    /// Returns the new local addresses; a socket that could not move stays
    /// in use, and the first such error is returned after trying them all.
    pub fn rebind(&self) -> Result<Vec<SocketAddr>, AgentError> {
        let mut moved = Vec::new();
        let mut failed = None;
        for endpoint in self.pool.udp_endpoints() {
            match session::rebind(&endpoint, self.udp_buffer_bytes) {
                Ok((old, new)) => {
                    self.metrics.socket_rebinds.inc();
                    info!(%old, %new, "moved a server connection to a new local socket");
                    moved.push(new);
                }
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        let over_tcp = self.pool.tcp_count();
        if over_tcp > 0 {
            info!(
                connections = over_tcp,
                "connections over TCP stay as they are: a TCP connection cannot move to a new address \
                 (if the old one stopped working, the agent reconnects when the connection breaks)"
            );
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(moved),
        }
    }

    /// Starts draining: no new server connections, and every server is
    /// told to send this agent no new dials. Proxied connections go on.
    pub fn drain(&self) {
        if !self.draining.send_replace(true) {
            info!(
                servers = ?self.pool.server_ids(),
                open = self.metrics.open_endpoint_connections.get(),
                "draining: the servers send no new dials; open connections may finish"
            );
        }
    }

    /// Graceful stop: [`AgentHandle::drain`], then wait until no proxied
    /// connection or dial is left, or the ones left have moved no byte for
    /// [`QUIET`] (idle keep-alive connections, which kube-apiserver keeps
    /// to kubelets and would otherwise hold every agent for the whole
    /// timeout), at most the graceful shutdown timeout or until `now`
    /// resolves; then [`AgentHandle::shutdown`].
    pub async fn drain_and_shutdown(self, now: impl std::future::Future<Output = ()>) {
        self.drain();
        let m = self.metrics.clone();
        // A dial a server sent before it read the drain notice arrives up to
        // a round trip after the notice went out: wait for those first.
        let in_flight = self.pool.max_rtt() * 2 + DRAIN_SETTLE_MARGIN;
        let settled = async {
            tokio::time::sleep(in_flight).await;
            let (mut moved, mut since) = (m.bytes_moved(), tokio::time::Instant::now());
            loop {
                if m.open_endpoint_connections.get() == 0 && m.pending_dials.get() == 0 {
                    return "no proxied connection left";
                }
                if m.pending_dials.get() == 0 && since.elapsed() >= QUIET {
                    return "the open connections are idle";
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                let now = m.bytes_moved();
                if now != moved {
                    (moved, since) = (now, tokio::time::Instant::now());
                }
            }
        };
        let open = || m.open_endpoint_connections.get();
        tokio::select! {
            r = tokio::time::timeout(self.grace, settled) => match r {
                Ok(why) => info!(open = open(), "drained: {why}"),
                Err(_) => warn!(open = open(), "graceful shutdown timeout reached; closing open connections"),
            },
            _ = now => warn!(open = open(), "second signal: closing open connections now"),
        }
        self.shutdown().await;
    }

    /// Stops the agent now: closes every server connection (each server
    /// answers the affected clients at once) and every target connection.
    pub async fn shutdown(mut self) {
        self.draining.send_replace(true);
        self.pool.close_all(konnq_shared::quic::codes::SHUTDOWN, b"agent shutting down");
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        let endpoints = self.pool.endpoints();
        let idle = futures::future::join_all(endpoints.iter().map(|e| e.wait_idle()));
        let _ = tokio::time::timeout(Duration::from_secs(2), idle).await;
        info!("agent stopped");
    }
}

/// Starts the agent: the server connections and the HTTP endpoints.
pub async fn start(cfg: AgentConfig, listeners: Listeners) -> Result<AgentHandle, AgentError> {
    let metrics = Metrics::new();
    let setup = session::ClientSetup::new(&cfg)?;
    let (udp_buffer_bytes, profiling, grace) =
        (setup.udp_buffer_bytes(), cfg.enable_profiling, cfg.graceful_shutdown_timeout);
    let health_addr = listeners.health.local_addr().map_err(|e| AgentError::Quic(e.into()))?;
    let admin_addr = listeners.admin.local_addr().map_err(|e| AgentError::Quic(e.into()))?;
    let pool = Pool::new(metrics.clone());
    let (draining, draining_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let server_leases = leases::spawn(&cfg, &metrics, &mut tasks).await?;
    let connector =
        session::Connector::new(cfg, setup, metrics.clone(), Arc::clone(&pool), draining_rx, server_leases.clone())?;
    tasks.spawn(Arc::new(connector).run());
    let (rx, m) = (pool.open(), metrics.clone());
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
    Ok(AgentHandle { metrics, health_addr, admin_addr, pool, server_leases, tasks, draining, udp_buffer_bytes, grace })
}

/// Runs until the first `signal` resolves, then drains
/// ([`AgentHandle::drain_and_shutdown`]) until the next one or the graceful
/// shutdown timeout; each SIGUSR1 meanwhile moves the server connections to
/// new local UDP sockets ([`AgentHandle::rebind`]).
pub async fn run<F>(cfg: AgentConfig, listeners: Listeners, mut signal: impl FnMut() -> F) -> Result<(), AgentError>
where
    F: std::future::Future<Output = ()>,
{
    use tokio::signal::unix::{signal as unix_signal, SignalKind};
    let mut usr1 = unix_signal(SignalKind::user_defined1()).map_err(AgentError::Signal)?;
    // Before start-up: a SIGTERM meanwhile is a graceful stop.
    let first = signal();
    let handle = start(cfg, listeners).await?;
    tokio::pin!(first);
    loop {
        tokio::select! {
            _ = &mut first => break,
            Some(()) = usr1.recv() => {
                info!("SIGUSR1: moving the server connections to new local UDP sockets");
                if let Err(e) = handle.rebind() {
                    error!("SIGUSR1: {e}");
                }
            }
        }
    }
    handle.drain_and_shutdown(signal()).await;
    Ok(())
}
