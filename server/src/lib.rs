//! konnq-server: the Konnectivity proxy server.
//!
//! ```text
//! kube-apiserver ──gRPC Proxy stream (UDS)──▶ frontend::session ──QUIC stream──▶ konnq-agent ──TCP──▶ target
//! ```
//!
//! - [`frontend`]: the gRPC `ProxyService` (one session per Proxy stream);
//!   accepted connections pass through `AuthorityFixIo` so real clients'
//!   Unix-socket `:authority` values are accepted.
//! - [`backend`]: the QUIC endpoint agents connect to, the agent registry and
//!   the per-dial stream handshake.
//! - [`admin`]: `/healthz`, `/readyz` and `/metrics`.
//!
//! [`start`] takes a validated config and already bound [`Listeners`] (tests
//! pass port 0 and temp-dir sockets) and returns a [`ServerHandle`].

pub mod admin;
pub mod backend;
pub mod cli;
pub mod frontend;
pub mod listeners;
pub mod metrics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use konnq_shared::config::{FrontendMode, ServerConfig};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::{error, info, warn};

pub use listeners::{BindError, Listeners};

use backend::Backend;
use frontend::session::SessionCtx;
use metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cluster TLS: {0}")]
    ClusterTls(konnq_shared::tls::TlsError),
    #[error("server TLS: {0}")]
    ServerTls(konnq_shared::tls::TlsError),
    #[error("QUIC endpoint: {0}")]
    Quic(#[from] konnq_shared::quic::QuicSetupError),
    #[error("{0}: not served by this build")]
    Unsupported(&'static str),
}

/// A running server.
pub struct ServerHandle {
    pub metrics: Metrics,
    pub backend: Arc<Backend>,
    pub agent_addr: SocketAddr,
    pub health_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub uds_path: Option<PathBuf>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    endpoint: quinn::Endpoint,
    grace: std::time::Duration,
}

impl ServerHandle {
    /// Waits until at least `n` agents are connected and take dials.
    pub async fn wait_for_agents(&self, n: usize) {
        let mut rx = self.backend.ready_agents();
        let _ = rx.wait_for(|&count| count >= n).await;
    }

    /// Graceful shutdown: stop accepting, report not-ready, let established
    /// connections finish for up to the graceful shutdown timeout, then close
    /// every agent connection (clients get CLOSE_RSP) and return.
    pub async fn shutdown(mut self) {
        info!("shutting down: no new frontend connections");
        self.shutdown.send_replace(true);
        let established = self.metrics.established.clone();
        let drained = async {
            while established.get() > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        };
        if tokio::time::timeout(self.grace, drained).await.is_err() {
            warn!(open = established.get(), "graceful shutdown timeout reached; closing open connections");
        }
        self.backend.close_all("server shutting down");
        self.endpoint.close(quinn::VarInt::from_u32(konnq_shared::quic::codes::SHUTDOWN), b"server shutting down");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.endpoint.wait_idle()).await;
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        if let Some(path) = &self.uds_path {
            let _ = std::fs::remove_file(path);
        }
        info!("server stopped");
    }
}

/// Starts every part of the server on the given listeners.
pub async fn start(cfg: ServerConfig, listeners: Listeners) -> Result<ServerHandle, ServerError> {
    if cfg.mode == FrontendMode::HttpConnect {
        return Err(ServerError::Unsupported("mode http-connect"));
    }
    let metrics = Metrics::new();
    let tls = konnq_shared::tls::server_config(
        &cfg.cluster_tls.cert,
        &cfg.cluster_tls.key,
        cfg.cluster_tls.ca.as_deref(),
        &[konnq_shared::tls::ALPN_KONNQ],
    )
    .map_err(ServerError::ClusterTls)?;
    let endpoint = backend::endpoint(listeners.agent_udp, tls, &cfg.quic)?;
    let agent_addr = endpoint.local_addr().map_err(konnq_shared::quic::QuicSetupError::Socket)?;
    let backend = Backend::new(cfg.server_id.clone(), cfg.server_count, cfg.backend_dial_timeout, metrics.clone());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let ctx = SessionCtx { backend: Arc::clone(&backend), metrics: metrics.clone() };
    let mut tasks = JoinSet::new();
    tasks.spawn(Arc::clone(&backend).serve(endpoint.clone()));

    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|&s| s).await;
    };
    let mut uds_path = None;
    if let Some((listener, path)) = listeners.uds {
        info!(path = %path.display(), "gRPC frontend on Unix socket");
        uds_path = Some(path);
        let (ctx, max, stop) = (ctx.clone(), cfg.max_message_bytes, stopped(shutdown_rx.clone()));
        tasks.spawn(async move {
            if let Err(e) = frontend::grpc::serve(UnixListenerStream::new(listener), ctx, max, stop).await {
                error!("Unix socket frontend failed: {e}");
            }
        });
    }
    if listeners.tcp.is_some() {
        return Err(ServerError::Unsupported("server-port (gRPC over TCP with mTLS)"));
    }
    let health_addr = listeners.health.local_addr().map_err(konnq_shared::quic::QuicSetupError::Socket)?;
    let admin_addr = listeners.admin.local_addr().map_err(konnq_shared::quic::QuicSetupError::Socket)?;
    let (ready, down) = (backend.ready_agents(), shutdown_rx.clone());
    tasks.spawn(async move {
        if let Err(e) = admin::serve_health(listeners.health, ready, down).await {
            error!("health server failed: {e}");
        }
    });
    let m = metrics.clone();
    tasks.spawn(async move {
        if let Err(e) = admin::serve_admin(listeners.admin, m).await {
            error!("admin server failed: {e}");
        }
    });
    info!(%agent_addr, %health_addr, %admin_addr, server_id = %cfg.server_id, "konnq-server started");
    Ok(ServerHandle {
        metrics,
        backend,
        agent_addr,
        health_addr,
        admin_addr,
        uds_path,
        shutdown,
        tasks,
        endpoint,
        grace: cfg.graceful_shutdown_timeout,
    })
}

/// Runs until `signal` resolves, then shuts down gracefully.
pub async fn run(
    cfg: ServerConfig,
    listeners: Listeners,
    signal: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    let handle = start(cfg, listeners).await?;
    signal.await;
    handle.shutdown().await;
    Ok(())
}
