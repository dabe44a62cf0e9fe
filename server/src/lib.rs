//! konnq-server: the Konnectivity proxy server.
//!
//! ```text
//! kube-apiserver ──gRPC Proxy stream (UDS)──▶ frontend::session ──QUIC stream──▶ konnq-agent ──TCP──▶ target
//! ```
//!
//! - [`frontend`]: the gRPC `ProxyService` on konnq's own HTTP/2 server
//!   (`frontend::http2`, one session per Proxy stream), and HTTP-CONNECT.
//! - [`backend`]: the QUIC endpoint agents connect to, the agent registry and
//!   the per-dial stream handshake.
//! - [`auth`]: agent authentication by ServiceAccount token (TokenReview).
//! - [`leases`]: the lease controller (`--enable-lease-controller`): this
//!   server's Lease, renewed, and expired server Leases deleted.
//! - [`admin`]: `/healthz`, `/readyz` (and `/ready`) and `/metrics`; with
//!   `--enable-profiling`, `/debug/pprof/`.
//!
//! [`start`] takes a validated config and already bound [`Listeners`] (tests
//! pass port 0 and temp-dir sockets) and returns a [`ServerHandle`].

pub mod admin;
pub mod auth;
pub mod backend;
pub mod cli;
pub mod frontend;
#[doc(hidden)]
pub mod fuzzing;
pub mod leases;
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
    #[error("agent token authentication: {0}")]
    Kube(auth::KubeSetupError),
    #[error("lease controller: {0}")]
    Leases(konnq_shared::kube::KubeSetupError),
    #[error("stateless-reset-key-file {}: {reason}", path.display())]
    ResetKey { path: PathBuf, reason: String },
}

/// Shortest secret accepted in `stateless-reset-key-file`.
const MIN_RESET_SECRET: usize = 32;

/// The secret the QUIC reset and connection-ID keys are derived from: the
/// shared file when one is given (servers behind one load balancer can then
/// reset each other's connections), else the cluster TLS key.
fn reset_secret(cfg: &ServerConfig) -> Result<Vec<u8>, ServerError> {
    let Some(path) = &cfg.stateless_reset_key else {
        return std::fs::read(&cfg.cluster_tls.key).map_err(|e| {
            ServerError::ClusterTls(konnq_shared::tls::TlsError::Read { path: cfg.cluster_tls.key.clone(), source: e })
        });
    };
    let fail = |reason: String| ServerError::ResetKey { path: path.clone(), reason };
    let secret = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    if secret.len() < MIN_RESET_SECRET {
        return Err(fail(format!(
            "{} bytes; at least {MIN_RESET_SECRET} random bytes are needed (e.g. head -c 32 /dev/urandom)",
            secret.len()
        )));
    }
    Ok(secret)
}

/// A running server.
pub struct ServerHandle {
    pub metrics: Metrics,
    pub backend: Arc<Backend>,
    pub agent_addr: SocketAddr,
    pub health_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub uds_path: Option<PathBuf>,
    pub tcp_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// The frontends' accept loops: each ends at shutdown, once it has
    /// taken the connections already waiting in its listen backlog.
    frontends: JoinSet<()>,
    endpoint: quinn::Endpoint,
    grace: std::time::Duration,
    leases: Option<leases::LeaseController>,
}

impl ServerHandle {
    /// Waits until at least `n` agents are connected and take dials.
    pub async fn wait_for_agents(&self, n: usize) {
        let mut rx = self.backend.ready_agents();
        let _ = rx.wait_for(|&count| count >= n).await;
    }

    /// Graceful shutdown: stop accepting, report not-ready, delete this
    /// server's Lease, let established connections and dials still waiting
    /// for their agent's answer finish for up to the graceful shutdown
    /// timeout, then close every agent connection (clients get CLOSE_RSP)
    /// and return.
    pub async fn shutdown(mut self) {
        info!(agents = self.backend.agent_count(), "shutting down: no new frontend connections; telling the agents");
        self.shutdown.send_replace(true);
        self.backend.begin_shutdown();
        let m = &self.metrics;
        let established = m.established.clone();
        // Client connections count too: one accepted just before the
        // shutdown may not have sent its dial yet. Every connection taken
        // is counted once the accept loops have ended.
        let busy = [&m.established, &m.pending_dials, &m.frontend_connections];
        let frontends = &mut self.frontends;
        let drained = async {
            while frontends.join_next().await.is_some() {}
            while busy.iter().any(|g| g.get() > 0) {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        let lease_deleted = async {
            if let Some(leases) = self.leases.take() {
                leases.stop().await;
            }
        };
        let (drain, ()) = tokio::join!(tokio::time::timeout(self.grace, drained), lease_deleted);
        if drain.is_err() {
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
    let metrics = Metrics::new();
    let tls = konnq_shared::tls::server_config(
        &cfg.cluster_tls.cert,
        &cfg.cluster_tls.key,
        cfg.cluster_tls.ca.as_deref(),
        &[konnq_shared::tls::ALPN_KONNQ],
    )
    .map_err(ServerError::ClusterTls)?;
    let secret = reset_secret(&cfg)?;
    let backend::AgentEndpoint { endpoint, tcp_config, icmp_errors, tcp_links } =
        backend::endpoint(listeners.agent_udp, tls, &cfg.quic, &secret, cfg.agent_transports.quic)?;
    drop(secret);
    let agent_addr = endpoint.local_addr().map_err(konnq_shared::quic::QuicSetupError::Socket)?;
    let auth = auth::from_config(&cfg, &metrics).await.map_err(ServerError::Kube)?;
    let backend = Backend::new(
        cfg.server_id.clone(),
        cfg.server_count,
        cfg.backend_dial_timeout,
        cfg.proxy_strategies.clone(),
        &cfg.quic,
        metrics.clone(),
        auth,
    );
    let (shutdown, shutdown_rx) = watch::channel(false);
    let ctx = SessionCtx { backend: Arc::clone(&backend), metrics: metrics.clone() };
    let mut tasks = JoinSet::new();
    let mut frontends = JoinSet::new();
    tasks.spawn(Arc::clone(&backend).serve(endpoint.clone(), tcp_config));
    tasks.spawn(Arc::clone(&backend).watch_unreachable(icmp_errors));
    if let Some(listener) = listeners.agent_tcp {
        // Twice the idle timeout: a live agent's keep-alives cross it sooner.
        let idle = cfg.quic.idle_timeout * 2;
        tasks.spawn(backend::tcp::serve(listener, tcp_links, Arc::clone(&backend), idle));
    }

    let mode = cfg.mode;
    let limits = frontend::http2::Limits::new(cfg.max_message_bytes, cfg.frontend_keepalive_time, &metrics);
    let mut uds_path = None;
    if let Some((listener, path)) = listeners.uds {
        info!(path = %path.display(), ?mode, "frontend on Unix socket");
        uds_path = Some(path);
        let incoming = UnixListenerStream::new(listener);
        frontends.spawn(serve_frontend(mode, incoming, ctx.clone(), limits.clone(), stopped(shutdown_rx.clone())));
    }
    let mut tcp_addr = None;
    if let (Some(listener), Some(files)) = (listeners.tcp, &cfg.server_tls) {
        let alpn: &[&[u8]] = match mode {
            FrontendMode::Grpc => &[b"h2"],
            FrontendMode::HttpConnect => &[b"http/1.1"],
        };
        let tls = konnq_shared::tls::server_config(&files.cert, &files.key, files.ca.as_deref(), alpn)
            .map_err(ServerError::ServerTls)?;
        let addr = listener.local_addr().map_err(konnq_shared::quic::QuicSetupError::Socket)?;
        info!(%addr, ?mode, "frontend on TCP with mutual TLS");
        tcp_addr = Some(addr);
        let (incoming, accept_loop) = frontend::tls::incoming(listener, tls, stopped(shutdown_rx.clone()));
        tasks.spawn(accept_loop);
        frontends.spawn(serve_frontend(mode, incoming, ctx.clone(), limits, stopped(shutdown_rx.clone())));
    }
    let health_addr = listeners.health.local_addr().map_err(konnq_shared::quic::QuicSetupError::Socket)?;
    let admin_addr = listeners.admin.local_addr().map_err(konnq_shared::quic::QuicSetupError::Socket)?;
    let (ready, down, m) = (backend.routable_agents(), shutdown_rx.clone(), metrics.clone());
    tasks.spawn(async move {
        if let Err(e) = admin::serve_health(listeners.health, ready, down, m).await {
            error!("health server failed: {e}");
        }
    });
    let (m, profiling) = (metrics.clone(), cfg.enable_profiling);
    tasks.spawn(async move {
        if let Err(e) = admin::serve_admin(listeners.admin, m, profiling).await {
            error!("admin server failed: {e}");
        }
    });
    // Last: a failure above leaves no Lease behind.
    let leases = match &cfg.lease_controller {
        Some(lc) => Some(leases::from_config(lc, &cfg.server_id, &metrics).await.map_err(ServerError::Leases)?),
        None => None,
    };
    info!(
        %agent_addr,
        %health_addr,
        %admin_addr,
        profiling = cfg.enable_profiling,
        server_id = %cfg.server_id,
        workers = tokio::runtime::Handle::current().metrics().num_workers(),
        "konnq-server started"
    );
    Ok(ServerHandle {
        metrics,
        backend,
        agent_addr,
        health_addr,
        admin_addr,
        uds_path,
        tcp_addr,
        shutdown,
        tasks,
        frontends,
        endpoint,
        grace: cfg.graceful_shutdown_timeout,
        leases,
    })
}

/// Resolves once shutdown has begun.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|&s| s).await;
}

/// Serves one frontend (gRPC or HTTP-CONNECT) on a stream of accepted
/// connections until `stop` resolves.
async fn serve_frontend<I, IO, E>(
    mode: FrontendMode,
    incoming: I,
    ctx: SessionCtx,
    limits: frontend::http2::Limits,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) where
    I: futures::Stream<Item = Result<IO, E>> + Send + 'static,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + frontend::connect::ReadProbe
        + Unpin
        + Send
        + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + std::fmt::Display + Send + 'static,
{
    match mode {
        FrontendMode::Grpc => {
            if let Err(e) = frontend::http2::serve(incoming, ctx, limits, stop).await {
                error!("gRPC frontend failed: {e}");
            }
        }
        FrontendMode::HttpConnect => frontend::connect::serve_all(incoming, ctx, stop).await,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with_reset_key(dir: &std::path::Path, key: &[u8]) -> ServerConfig {
        let path = dir.join("reset.key");
        std::fs::write(&path, key).expect("write key");
        konnq_shared::config::RawServerConfig {
            uds_name: Some(dir.join("s.sock")),
            cluster_cert: Some(dir.join("c.crt")),
            cluster_key: Some(dir.join("c.key")),
            stateless_reset_key_file: Some(path),
            ..Default::default()
        }
        .validate()
        .expect("valid config")
    }

    #[test]
    fn a_reset_key_file_replaces_the_cluster_key_and_must_be_long_enough() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = [7u8; 32];
        assert_eq!(reset_secret(&with_reset_key(dir.path(), &key)).expect("32 bytes"), key);
        let err = reset_secret(&with_reset_key(dir.path(), b"short")).expect_err("5 bytes");
        assert!(err.to_string().contains("reset.key: 5 bytes; at least 32"), "{err}");
    }
}
