//! The systems under test. `konnq` and `upstream` are a server and an agent
//! process each, configured alike: the client frontend on a Unix socket,
//! the agent connected over TLS (konnq: QUIC, upstream: gRPC over TCP) on
//! loopback with mutual certificates. `direct` is no tunnel at all.

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use konnq_shared::certs::GeneratedCerts;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::child::{free_port, ChildProc, Program};
use crate::conn::{connect_status, Dialer, Frontend};
use crate::procfs::ProcSample;
use crate::target::Targets;

/// How long a peer may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    Konnq,
    /// konnq with its agent on the TCP transport (`--transport tcp`: QUIC
    /// datagrams over TCP, as where UDP is blocked).
    KonnqTcp,
    Upstream,
    Direct,
}

impl PeerKind {
    pub fn name(self) -> &'static str {
        match self {
            PeerKind::Konnq => "konnq",
            PeerKind::KonnqTcp => "konnq-tcp",
            PeerKind::Upstream => "upstream",
            PeerKind::Direct => "direct",
        }
    }

    /// Whether the peer has server and agent processes to measure.
    pub fn has_processes(self) -> bool {
        self != PeerKind::Direct
    }

    /// konnq's binaries, on either transport.
    pub fn is_konnq(self) -> bool {
        matches!(self, PeerKind::Konnq | PeerKind::KonnqTcp)
    }
}

impl std::str::FromStr for PeerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "konnq" => Ok(PeerKind::Konnq),
            "konnq-tcp" => Ok(PeerKind::KonnqTcp),
            "upstream" => Ok(PeerKind::Upstream),
            "direct" => Ok(PeerKind::Direct),
            _ => Err(format!("unknown peer {s:?} (konnq, konnq-tcp, upstream, direct)")),
        }
    }
}

/// A server and an agent program, with any extra flags to append.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub server: Program,
    pub agent: Program,
    pub server_flags: Vec<String>,
    pub agent_flags: Vec<String>,
}

/// What every peer start needs.
pub struct Env {
    /// Short directory for Unix sockets.
    pub socket_dir: PathBuf,
    pub log_dir: PathBuf,
    pub certs: GeneratedCerts,
    pub targets: Targets,
    pub frontend: Frontend,
    /// Server and agent in the lab's namespaces instead of on loopback.
    pub lab: Option<LabPlacement>,
}

/// Where the lab puts a peer: the server (and the client's Unix socket, which
/// every namespace shares through the file system) on one side of the
/// impaired link, the agent and the targets on the other.
#[derive(Debug, Clone)]
pub struct LabPlacement {
    pub server_ns: Arc<OwnedFd>,
    pub agent_ns: Arc<OwnedFd>,
    /// The server's address on the link: it listens for agents there.
    pub server_ip: Ipv4Addr,
}

impl Env {
    /// The address agents connect to.
    fn agent_facing_ip(&self) -> String {
        self.lab.as_ref().map_or_else(|| "127.0.0.1".to_owned(), |l| l.server_ip.to_string())
    }
}

/// A started peer, ready for traffic.
pub struct Peer {
    pub kind: PeerKind,
    pub dialer: Dialer,
    pub server: Option<ChildProc>,
    pub agent: Option<ChildProc>,
    /// The port the server listens for agents on (0 for `direct`).
    pub agent_port: u16,
}

/// The TCP/UDP ports of one server and one agent.
pub(crate) struct Ports {
    pub agent: u16,
    pub health: u16,
    pub admin: u16,
    pub agent_health: u16,
    pub agent_admin: u16,
}

impl Ports {
    pub(crate) fn pick() -> anyhow::Result<Ports> {
        let mut taken = Vec::new();
        let mut next = || -> anyhow::Result<u16> {
            let p = free_port(&taken)?;
            taken.push(p);
            Ok(p)
        };
        Ok(Ports { agent: next()?, health: next()?, admin: next()?, agent_health: next()?, agent_admin: next()? })
    }
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn server_args(kind: PeerKind, env: &Env, socket: &Path, p: &Ports) -> Vec<String> {
    let mut a = server_common_args(env, socket, p);
    if kind.is_konnq() {
        a.extend([s("--graceful-shutdown-timeout"), s("1s")]);
    } else {
        a.extend([s("--server-port"), s("0"), s("--server-count"), s("1")]);
    }
    a
}

/// The server flags both peers share: the socket, the ports (all on
/// loopback, or the lab's address for agents) and the certificates.
pub(crate) fn server_common_args(env: &Env, socket: &Path, p: &Ports) -> Vec<String> {
    let c = &env.certs;
    vec![
        s("--uds-name"),
        path(socket),
        s("--mode"),
        s(env.frontend.server_mode()),
        s("--agent-port"),
        s(p.agent),
        s("--agent-bind-address"),
        env.agent_facing_ip(),
        s("--health-port"),
        s(p.health),
        s("--health-bind-address"),
        s("127.0.0.1"),
        s("--admin-port"),
        s(p.admin),
        s("--admin-bind-address"),
        s("127.0.0.1"),
        s("--cluster-cert"),
        path(&c.server_cert),
        s("--cluster-key"),
        path(&c.server_key),
        s("--cluster-ca-cert"),
        path(&c.ca_cert),
    ]
}

/// An agent's flags: it connects to `server_port` (the server's agent port,
/// or a load balancer's) and serves its endpoints on `p.agent_health` and
/// `p.agent_admin`.
pub(crate) fn agent_args(kind: PeerKind, env: &Env, server_port: u16, p: &Ports) -> Vec<String> {
    let c = &env.certs;
    let mut a = vec![
        s("--proxy-server-host"),
        env.agent_facing_ip(),
        s("--proxy-server-port"),
        s(server_port),
        s("--ca-cert"),
        path(&c.ca_cert),
        s("--agent-cert"),
        path(&c.agent_cert),
        s("--agent-key"),
        path(&c.agent_key),
        s("--health-server-port"),
        s(p.agent_health),
        s("--admin-server-port"),
        s(p.agent_admin),
        s("--admin-bind-address"),
        s("127.0.0.1"),
    ];
    match kind {
        PeerKind::Konnq => a.extend([s("--health-bind-address"), s("127.0.0.1")]),
        PeerKind::KonnqTcp => a.extend([s("--health-bind-address"), s("127.0.0.1"), s("--transport"), s("tcp")]),
        _ => a.extend([s("--health-server-host"), s("127.0.0.1")]),
    }
    a
}

impl Peer {
    /// Starts `kind` (with `bins` unless direct) and waits until a probe
    /// exchange through it succeeds. `tag` names its socket and log files.
    pub async fn start(kind: PeerKind, bins: Option<&Binaries>, env: &Env, tag: &str) -> anyhow::Result<Peer> {
        let Some(bins) = bins.filter(|_| kind.has_processes()) else {
            return Ok(Peer { kind, dialer: Dialer::Direct, server: None, agent: None, agent_port: 0 });
        };
        let mut last = None;
        // A port picked as free can be taken before the child binds it: retry with new ones.
        for attempt in 0..3 {
            match Self::try_start(kind, bins, env, &format!("{tag}-{attempt}")).await {
                Ok(peer) => return Ok(peer),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("not started")))
    }

    async fn try_start(kind: PeerKind, bins: &Binaries, env: &Env, tag: &str) -> anyhow::Result<Peer> {
        let ports = Ports::pick()?;
        let socket = env.socket_dir.join(format!("{tag}.sock"));
        let log = |role: &str| env.log_dir.join(format!("{tag}-{role}.log"));
        let mut server_a = server_args(kind, env, &socket, &ports);
        server_a.extend(bins.server_flags.iter().cloned());
        let (server_prog, agent_prog) = match &env.lab {
            Some(l) => (bins.server.in_netns(l.server_ns.clone()), bins.agent.in_netns(l.agent_ns.clone())),
            None => (bins.server.clone(), bins.agent.clone()),
        };
        let mut server = ChildProc::spawn(&format!("{} server", kind.name()), &server_prog, &server_a, &log("server"))?;
        let mut agent_a = agent_args(kind, env, ports.agent, &ports);
        agent_a.extend(bins.agent_flags.iter().cloned());
        let agent = ChildProc::spawn(&format!("{} agent", kind.name()), &agent_prog, &agent_a, &log("agent"));
        let mut agent = match agent {
            Ok(a) => a,
            Err(e) => {
                server.stop(STOP_GRACE).await;
                return Err(e);
            }
        };
        match ready(&mut server, &mut agent, ports.health, &socket, env).await {
            Ok(dialer) => Ok(Peer { kind, dialer, server: Some(server), agent: Some(agent), agent_port: ports.agent }),
            Err(e) => {
                let tails = format!(
                    "{e:#}\n--- {} log:\n{}\n--- {} log:\n{}",
                    server.name,
                    server.log_tail(15),
                    agent.name,
                    agent.log_tail(15)
                );
                server.stop(STOP_GRACE).await;
                agent.stop(STOP_GRACE).await;
                bail!(tails)
            }
        }
    }

    /// (server, agent) figures; `None` for `direct` or an unreadable process.
    pub fn sample(&self) -> (Option<ProcSample>, Option<ProcSample>) {
        (self.server.as_ref().and_then(|p| p.sample().ok()), self.agent.as_ref().and_then(|p| p.sample().ok()))
    }

    /// (server, agent) process ids; `None` for `direct`.
    pub fn pids(&self) -> (Option<u32>, Option<u32>) {
        (self.server.as_ref().map(|p| p.pid), self.agent.as_ref().map(|p| p.pid))
    }

    /// Fails if the server or agent has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in [self.server.as_mut(), self.agent.as_mut()].into_iter().flatten() {
            if let Some(status) = p.exited() {
                bail!("{} exited ({status}); log tail:\n{}", p.name, p.log_tail(15));
            }
        }
        Ok(())
    }

    pub async fn stop(self) {
        drop(self.dialer);
        for p in [self.agent, self.server].into_iter().flatten() {
            p.stop(STOP_GRACE).await;
        }
    }
}

/// Waits for /readyz on the server, then for a probe exchange through the tunnel.
async fn ready(
    server: &mut ChildProc,
    agent: &mut ChildProc,
    health: u16,
    socket: &Path,
    env: &Env,
) -> anyhow::Result<Dialer> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::from("not ready");
    loop {
        for p in [&mut *server, &mut *agent] {
            if let Some(status) = p.exited() {
                bail!("{} exited during start-up ({status})", p.name);
            }
        }
        if Instant::now() > deadline {
            bail!("not ready after {READY_TIMEOUT:?}: {last}");
        }
        // In the lab the health port is on the server namespace's loopback,
        // out of the runner's reach: the probe through the tunnel decides.
        let health = if env.lab.is_some() { Ok(200) } else { http_status(health, "/readyz").await };
        match health {
            Ok(200) if socket.exists() => match probe(env.frontend, socket, env.targets).await {
                Ok(dialer) => return Ok(dialer),
                Err(e) => last = format!("probe through the tunnel: {e:#}"),
            },
            Ok(code) => last = format!("/readyz answered {code}"),
            Err(e) => last = format!("/readyz: {e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A dialer for the server's socket, once one exchange through it worked.
async fn probe(frontend: Frontend, socket: &Path, targets: Targets) -> anyhow::Result<Dialer> {
    let dialer = Dialer::tunnel(frontend, socket.to_owned()).await?;
    probe_exchange(&dialer, targets).await?;
    Ok(dialer)
}

/// One small exchange with the echo target through `dialer`, bounded to 5 s.
pub async fn probe_exchange(dialer: &Dialer, targets: Targets) -> anyhow::Result<()> {
    let exchange = async {
        let (mut conn, _) = dialer.dial(targets.echo).await?;
        conn.write(Bytes::from_static(b"probe")).await?;
        conn.read_exact(5).await?;
        conn.close().await
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await.context("probe timed out")?
}

/// Status code of `GET path` on 127.0.0.1:`port`.
pub async fn http_status(port: u16, path: &str) -> anyhow::Result<u16> {
    let get = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).await?;
        let mut head = vec![0u8; 256];
        let mut n = 0;
        while n < head.len() && !head[..n].contains(&b'\n') {
            let got = s.read(&mut head[n..]).await?;
            if got == 0 {
                break;
            }
            n += got;
        }
        connect_status(&head[..n])
    };
    tokio::time::timeout(Duration::from_secs(2), get).await.context("timed out")?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        let p = PathBuf::from;
        Env {
            socket_dir: p("/s"),
            log_dir: p("/l"),
            certs: GeneratedCerts {
                dir: p("/c"),
                ca_cert: p("/c/ca.crt"),
                ca_key: p("/c/ca.key"),
                server_cert: p("/c/server.crt"),
                server_key: p("/c/server.key"),
                agent_cert: p("/c/agent.crt"),
                agent_key: p("/c/agent.key"),
            },
            targets: crate::target::parse_announcement(
                "echo=127.0.0.1:1 source=127.0.0.1:2 sink=127.0.0.1:3 count=127.0.0.1:4",
            )
            .unwrap(),
            frontend: Frontend::Grpc,
            lab: None,
        }
    }

    fn ports() -> Ports {
        Ports { agent: 1, health: 2, admin: 3, agent_health: 4, agent_admin: 5 }
    }

    fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
    }

    #[test]
    fn upstream_gets_its_own_flags() {
        let a = server_args(PeerKind::Upstream, &env(), Path::new("/s/u.sock"), &ports());
        assert_eq!(flag(&a, "--server-port"), Some("0"));
        assert_eq!(flag(&a, "--mode"), Some("grpc"));
        assert_eq!(flag(&a, "--uds-name"), Some("/s/u.sock"));
        assert_eq!(flag(&a, "--cluster-ca-cert"), Some("/c/ca.crt"));
        let g = agent_args(PeerKind::Upstream, &env(), 1, &ports());
        assert_eq!(flag(&g, "--health-server-host"), Some("127.0.0.1"));
        assert_eq!(flag(&g, "--proxy-server-port"), Some("1"));
    }

    #[test]
    fn konnq_binds_loopback_only() {
        let a = server_args(PeerKind::Konnq, &env(), Path::new("/s/k.sock"), &ports());
        for f in ["--agent-bind-address", "--health-bind-address", "--admin-bind-address"] {
            assert_eq!(flag(&a, f), Some("127.0.0.1"), "{f}");
        }
        assert_eq!(flag(&a, "--server-port"), None);
        let g = agent_args(PeerKind::Konnq, &env(), 1, &ports());
        assert_eq!(flag(&g, "--health-bind-address"), Some("127.0.0.1"));
        assert_eq!(flag(&g, "--agent-key"), Some("/c/agent.key"));
        assert_eq!(flag(&g, "--transport"), None);
        let t = agent_args(PeerKind::KonnqTcp, &env(), 1, &ports());
        assert_eq!(flag(&t, "--transport"), Some("tcp"));
        let a = server_args(PeerKind::KonnqTcp, &env(), Path::new("/s/k.sock"), &ports());
        assert_eq!(flag(&a, "--graceful-shutdown-timeout"), Some("1s"));
    }

    #[test]
    fn peer_names() {
        for k in [PeerKind::Konnq, PeerKind::KonnqTcp, PeerKind::Upstream, PeerKind::Direct] {
            assert_eq!(k.name().parse::<PeerKind>(), Ok(k));
        }
        assert!(!PeerKind::Direct.has_processes());
    }
}
