//! The load balancer in front of the servers: a real nginx with its stream
//! module, as self-managed HA control planes run it. konnq's agents reach it
//! over UDP (QUIC), upstream's over TCP (gRPC over TLS, passed through).
//! Round robin: each new agent connection (a new client address and port)
//! goes to the next server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::child::{ChildProc, Program};

pub const NGINX: &str = "/usr/sbin/nginx";
pub const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
/// The Debian packages that provide [`NGINX`] and [`STREAM_MODULE`].
pub const PACKAGES: &str = "nginx-light libnginx-mod-stream";

/// What the balancer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// An error naming the packages when nginx or its stream module is missing.
pub fn check_installed() -> anyhow::Result<()> {
    check_paths(Path::new(NGINX), Path::new(STREAM_MODULE))
}

fn check_paths(nginx: &Path, module: &Path) -> anyhow::Result<()> {
    for needed in [nginx, module] {
        if !needed.exists() {
            bail!(
                "{} is missing: the roll benchmark puts a real nginx with its stream module in front of the \
                 servers (Debian: apt-get install {PACKAGES}; scripts/test.sh installs them)",
                needed.display()
            );
        }
    }
    Ok(())
}

/// nginx.conf: one process in the foreground, a round-robin stream proxy
/// on `listen` to `servers`, each with `max_fails`; sessions idle for 60 s
/// are dropped (the QUIC keep-alives keep konnq's alive).
pub fn config(listen: SocketAddr, transport: Transport, servers: &[SocketAddr], max_fails: u32, dir: &Path) -> String {
    let upstreams: String = servers.iter().map(|s| format!("server {s} max_fails={max_fails}; ")).collect();
    let udp = if transport == Transport::Udp { " udp" } else { "" };
    format!(
        "daemon off;\nmaster_process off;\npid {pid};\nerror_log stderr notice;\nload_module {STREAM_MODULE};\n\
         events {{ worker_connections 4096; }}\n\
         stream {{\n  upstream servers {{ {upstreams}}}\n  \
         server {{ listen {listen}{udp}; proxy_pass servers; proxy_timeout 60s; }}\n}}\n",
        pid = dir.join("nginx.pid").display(),
    )
}

/// Writes the config into `dir` and starts nginx with its output in `log`.
pub fn start(
    listen: SocketAddr,
    transport: Transport,
    servers: &[SocketAddr],
    max_fails: u32,
    dir: &Path,
    log: &Path,
) -> anyhow::Result<ChildProc> {
    check_installed()?;
    std::fs::create_dir_all(dir)?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, config(listen, transport, servers, max_fails, dir))?;
    let args: Vec<String> =
        ["-c".into(), conf.display().to_string(), "-p".into(), dir.display().to_string(), "-e".into(), "stderr".into()]
            .into();
    ChildProc::spawn("nginx", &Program::plain(PathBuf::from(NGINX)), &args, log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_and_tcp_configs() {
        let servers: Vec<SocketAddr> = vec!["127.0.0.1:20001".parse().unwrap(), "127.0.0.1:20002".parse().unwrap()];
        let lb = "127.0.0.1:20000".parse().unwrap();
        let udp = config(lb, Transport::Udp, &servers, 0, Path::new("/d"));
        assert!(udp.contains("listen 127.0.0.1:20000 udp;"), "{udp}");
        assert!(udp.contains("server 127.0.0.1:20001 max_fails=0; server 127.0.0.1:20002 max_fails=0;"), "{udp}");
        assert!(udp.contains("daemon off;") && udp.contains("master_process off;"));
        assert!(udp.contains(&format!("load_module {STREAM_MODULE};")));
        assert!(udp.contains("pid /d/nginx.pid;"));
        let tcp = config(lb, Transport::Tcp, &servers, 1, Path::new("/d"));
        assert!(tcp.contains("server 127.0.0.1:20001 max_fails=1;"), "{tcp}");
        assert!(tcp.contains("listen 127.0.0.1:20000;"), "{tcp}");
        assert!(!tcp.contains("udp"));
    }

    #[test]
    fn a_missing_nginx_names_the_packages() {
        let err = check_paths(Path::new("/nonexistent/nginx"), Path::new("/")).unwrap_err().to_string();
        assert!(err.contains("nginx-light libnginx-mod-stream"), "{err}");
        assert!(err.contains("/nonexistent/nginx"), "{err}");
    }
}
