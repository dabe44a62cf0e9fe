//! Binding every socket the server needs, before anything is served, so
//! that configuration and permission problems fail start-up with a message
//! that names the setting.

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use konnq_shared::config::ServerConfig;
use tokio::net::{TcpListener, UnixListener};

/// Mode of the frontend socket: owner and group (kube-apiserver's), never
/// world-accessible.
pub const UDS_MODE: u32 = 0o660;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("uds-name {path}: {reason}")]
    Uds { path: PathBuf, reason: String },
    #[error("{key} {addr}: {source}")]
    Tcp { key: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("agent-port {addr}: {source}")]
    Udp { addr: SocketAddr, source: konnq_shared::quic::QuicSetupError },
    #[error("agent-port {addr} (TCP, for agents without UDP; agent-transports = \"quic\" turns it off): {source}")]
    AgentTcp { addr: SocketAddr, source: std::io::Error },
}

/// With an ephemeral agent port, how many UDP ports to try before one
/// whose TCP twin is free too.
const EPHEMERAL_TRIES: usize = 20;

/// The server's bound sockets. Tests bind port 0 and temp-dir sockets.
pub struct Listeners {
    pub uds: Option<(UnixListener, PathBuf)>,
    pub tcp: Option<TcpListener>,
    pub agent_udp: std::net::UdpSocket,
    /// The same port over TCP, unless `agent-transports` leaves tcp out.
    pub agent_tcp: Option<TcpListener>,
    pub health: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(cfg: &ServerConfig) -> Result<Self, BindError> {
        let uds = match &cfg.uds_name {
            Some(path) => Some((bind_uds(path, cfg.delete_existing_uds_file)?, path.clone())),
            None => None,
        };
        let tcp = if cfg.server_port > 0 {
            Some(bind_tcp("server-port", SocketAddr::new(cfg.server_bind_address, cfg.server_port)).await?)
        } else {
            None
        };
        let (agent_udp, agent_tcp) = bind_agent_port(cfg)?;
        let health = bind_tcp("health-port", SocketAddr::new(cfg.health_bind_address, cfg.health_port)).await?;
        let admin = bind_tcp("admin-port", SocketAddr::new(cfg.admin_bind_address, cfg.admin_port)).await?;
        Ok(Listeners { uds, tcp, agent_udp, agent_tcp, health, admin })
    }
}

/// The agent port: UDP, and TCP on the same number when agents may use
/// it. Port 0 takes an ephemeral UDP port whose TCP twin is free.
fn bind_agent_port(cfg: &ServerConfig) -> Result<(std::net::UdpSocket, Option<TcpListener>), BindError> {
    let addr = SocketAddr::new(cfg.agent_bind_address, cfg.agent_port);
    let tries = if cfg.agent_port == 0 && cfg.agent_transports.tcp { EPHEMERAL_TRIES } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let (udp, rcv, snd) = konnq_shared::quic::udp_socket(addr, cfg.quic.udp_buffer_bytes)
            .map_err(|source| BindError::Udp { addr, source })?;
        tracing::debug!(rcvbuf = rcv, sndbuf = snd, "agent UDP socket buffers");
        if !cfg.agent_transports.tcp {
            return Ok((udp, None));
        }
        let port = udp.local_addr().map_err(|e| BindError::Udp { addr, source: e.into() })?.port();
        let tcp_addr = SocketAddr::new(cfg.agent_bind_address, port);
        match bind_agent_tcp(tcp_addr) {
            Ok(tcp) => return Ok((udp, Some(tcp))),
            Err(source) => last = Some(BindError::AgentTcp { addr: tcp_addr, source }),
        }
    }
    Err(last.expect("at least one try"))
}

fn bind_agent_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv6() { tokio::net::TcpSocket::new_v6()? } else { tokio::net::TcpSocket::new_v4()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn bind_tcp(key: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|source| BindError::Tcp { key, addr, source })
}

/// Binds the frontend Unix socket. A stale socket file is removed when
/// `delete_existing` is set; any other kind of file is never removed.
pub fn bind_uds(path: &Path, delete_existing: bool) -> Result<UnixListener, BindError> {
    let err = |reason: String| BindError::Uds { path: path.to_owned(), reason };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() && delete_existing => {
            std::fs::remove_file(path).map_err(|e| err(format!("cannot remove the existing socket: {e}")))?;
        }
        Ok(meta) if meta.file_type().is_socket() => {
            return Err(err("a socket file already exists (set delete-existing-uds-file to replace it)".into()));
        }
        Ok(_) => return Err(err("exists and is not a socket; refusing to remove it".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e.to_string())),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(UDS_MODE))
        .map_err(|e| err(format!("cannot restrict permissions: {e}")))?;
    Ok(listener)
}
