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
}

/// The server's bound sockets. Tests bind port 0 and temp-dir sockets.
pub struct Listeners {
    pub uds: Option<(UnixListener, PathBuf)>,
    pub tcp: Option<TcpListener>,
    pub agent_udp: std::net::UdpSocket,
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
        let addr = SocketAddr::new(cfg.agent_bind_address, cfg.agent_port);
        let (agent_udp, rcv, snd) = konnq_shared::quic::udp_socket(addr, cfg.quic.udp_buffer_bytes)
            .map_err(|source| BindError::Udp { addr, source })?;
        tracing::debug!(rcvbuf = rcv, sndbuf = snd, "agent UDP socket buffers");
        let health = bind_tcp("health-port", SocketAddr::new(cfg.health_bind_address, cfg.health_port)).await?;
        let admin = bind_tcp("admin-port", SocketAddr::new(cfg.admin_bind_address, cfg.admin_port)).await?;
        Ok(Listeners { uds, tcp, agent_udp, health, admin })
    }
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
