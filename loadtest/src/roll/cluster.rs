//! One peer's cluster: nginx, three servers (each with its own Unix socket,
//! `--server-id s0..`, `--server-count`) and three agents pointed at nginx;
//! what it takes to stop, start and watch them. Every wait is bounded and
//! polls the processes' own metrics on their health ports.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::nginx::{self, Transport};
use crate::child::{free_port, ChildProc};
use crate::peers::{agent_args, server_common_args, Binaries, Env, PeerKind, Ports};

/// Agents a server has (both peers export it).
pub const READY_BACKENDS: &str = "konnectivity_network_proxy_server_ready_backends";
/// Servers an agent holds a connection to (both peers export it).
pub const OPEN_SERVER_CONNECTIONS: &str = "konnectivity_network_proxy_agent_open_server_connections";
/// Largest /metrics answer read.
const MAX_SCRAPE: u64 = 4 * 1024 * 1024;
/// How often a wait looks again.
pub const POLL: Duration = Duration::from_millis(10);
/// A process that ignores SIGKILL this long is an error.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// A server or an agent: its process and where its metrics are.
pub struct Node {
    pub proc: ChildProc,
    pub health: u16,
}

/// How a SIGTERM ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Stopped {
    /// SIGTERM → exit.
    pub secs: f64,
    /// It did not exit within the termination grace period and was SIGKILLed.
    pub killed_after_grace: bool,
}

pub struct Cluster {
    pub kind: PeerKind,
    pub nginx: ChildProc,
    pub servers: Vec<Node>,
    pub agents: Vec<Node>,
    /// Each server's Unix socket (server i's apiserver dials through it).
    pub sockets: Vec<PathBuf>,
}

/// Flags of server `i` of `count`, on top of [`server_common_args`].
fn server_flags(kind: PeerKind, i: usize, count: usize, graceful: Duration) -> Vec<String> {
    let mut a = vec![
        format!("--server-id=s{i}"),
        format!("--server-count={count}"),
        format!("--graceful-shutdown-timeout={}ms", graceful.as_millis()),
        "--delete-existing-uds-file=true".to_owned(),
    ];
    if kind == PeerKind::Upstream {
        a.push("--server-port=0".to_owned());
    }
    a
}

impl Cluster {
    /// Starts nginx, `count` servers and `count` agents; returns once every
    /// server has every agent and every agent every server.
    pub async fn start(
        kind: PeerKind,
        bins: &Binaries,
        env: &Env,
        count: usize,
        graceful: Duration,
        ready_limit: Duration,
        nginx_max_fails: u32,
    ) -> anyhow::Result<Cluster> {
        let mut taken = Vec::new();
        let mut port = || -> anyhow::Result<u16> {
            let p = free_port(&taken)?;
            taken.push(p);
            Ok(p)
        };
        let lb = SocketAddr::from(([127, 0, 0, 1], port()?));
        let name = kind.name();
        let mut servers = Vec::new();
        let mut sockets = Vec::new();
        let mut agent_ports = Vec::new();
        for i in 0..count {
            let p =
                Ports { agent: port()?, health: port()?, admin: port()?, agent_health: port()?, agent_admin: port()? };
            let socket = env.socket_dir.join(format!("{name}-s{i}.sock"));
            let mut args = server_common_args(env, &socket, &p);
            args.extend(server_flags(kind, i, count, graceful));
            args.extend(bins.server_flags.iter().cloned());
            let log = env.log_dir.join(format!("{name}-server-s{i}.log"));
            let proc = ChildProc::spawn(&format!("{name} server s{i}"), &bins.server, &args, &log)?;
            servers.push(Node { proc, health: p.health });
            sockets.push(socket);
            agent_ports.push(p);
        }
        let transport = if kind == PeerKind::Konnq { Transport::Udp } else { Transport::Tcp };
        let upstreams: Vec<SocketAddr> =
            agent_ports.iter().map(|p| SocketAddr::from(([127, 0, 0, 1], p.agent))).collect();
        let dir = env.socket_dir.join(format!("{name}-nginx"));
        let nginx_log = env.log_dir.join(format!("{name}-nginx.log"));
        let nginx = nginx::start(lb, transport, &upstreams, nginx_max_fails, &dir, &nginx_log)?;
        let mut agents = Vec::new();
        for (i, p) in agent_ports.iter().enumerate() {
            let mut args = agent_args(kind, env, lb.port(), p);
            args.extend(bins.agent_flags.iter().cloned());
            let log = env.log_dir.join(format!("{name}-agent-{i}.log"));
            let proc = ChildProc::spawn(&format!("{name} agent {i}"), &bins.agent, &args, &log)?;
            agents.push(Node { proc, health: p.agent_health });
        }
        let c = Cluster { kind, nginx, servers, agents, sockets };
        if c.wait_full(ready_limit).await.is_none() {
            let state = c.describe().await;
            let tails = c.log_tails();
            c.stop().await;
            bail!("not every server had every agent after {ready_limit:?} ({state})\n{tails}");
        }
        Ok(c)
    }

    /// Waits until every server reports every agent and every agent every
    /// server; how long that took, `None` after `limit`.
    pub async fn wait_full(&self, limit: Duration) -> Option<Duration> {
        let n = self.servers.len() as f64;
        let probes: Vec<(u16, &str)> = (self.servers.iter().map(|s| (s.health, READY_BACKENDS)))
            .chain(self.agents.iter().map(|a| (a.health, OPEN_SERVER_CONNECTIONS)))
            .collect();
        let started = Instant::now();
        let deadline = started + limit;
        loop {
            let mut full = true;
            for &(port, name) in &probes {
                if metric(port, name).await != Some(n) {
                    full = false;
                    break;
                }
            }
            if full {
                return Some(started.elapsed());
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Every server's agent count and every agent's server count, for errors.
    pub async fn describe(&self) -> String {
        let mut out = Vec::new();
        for (i, s) in self.servers.iter().enumerate() {
            out.push(format!("s{i} {:?} agents", metric(s.health, READY_BACKENDS).await));
        }
        for (i, a) in self.agents.iter().enumerate() {
            out.push(format!("agent {i} {:?} servers", metric(a.health, OPEN_SERVER_CONNECTIONS).await));
        }
        out.join(", ")
    }

    fn log_tails(&self) -> String {
        let mut out = String::new();
        for p in self.servers.iter().chain(&self.agents).map(|n| &n.proc).chain([&self.nginx]) {
            out += &format!("--- {} log:\n{}\n", p.name, p.log_tail(8));
        }
        out
    }

    /// Fails if a process that should run has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in self.servers.iter_mut().chain(self.agents.iter_mut()).map(|n| &mut n.proc) {
            if let Some(status) = p.exited() {
                bail!("{} exited ({status}); log tail:\n{}", p.name, p.log_tail(15));
            }
        }
        if let Some(status) = self.nginx.exited() {
            bail!("nginx exited ({status}); log tail:\n{}", self.nginx.log_tail(15));
        }
        Ok(())
    }

    /// Stops everything (agents, servers, nginx), SIGKILL after 5 s each.
    pub async fn stop(self) {
        for n in self.agents.into_iter().chain(self.servers) {
            n.proc.stop(Duration::from_secs(5)).await;
        }
        self.nginx.stop(Duration::from_secs(2)).await;
    }
}

/// SIGTERM, then what a kubelet does: SIGKILL after `grace` if still running.
pub async fn terminate(p: &mut ChildProc, grace: Duration) -> anyhow::Result<Stopped> {
    let started = Instant::now();
    p.signal(libc::SIGTERM);
    let mut killed = false;
    if !p.wait_exit(grace).await {
        killed = true;
        p.signal(libc::SIGKILL);
        if !p.wait_exit(KILL_WAIT).await {
            bail!("{} did not exit after SIGKILL", p.name);
        }
    }
    Ok(Stopped { secs: started.elapsed().as_secs_f64(), killed_after_grace: killed })
}

/// SIGKILL and reap.
pub async fn kill(p: &mut ChildProc) -> anyhow::Result<()> {
    p.signal(libc::SIGKILL);
    if !p.wait_exit(KILL_WAIT).await {
        bail!("{} did not exit after SIGKILL", p.name);
    }
    Ok(())
}

/// Polls `name` on `port` every [`POLL`] until `want` holds; time since
/// `since`, `None` after `deadline`.
pub async fn wait_metric(
    port: u16,
    name: &str,
    want: impl Fn(f64) -> bool,
    since: Instant,
    deadline: Instant,
) -> Option<f64> {
    loop {
        if metric(port, name).await.is_some_and(&want) {
            return Some(since.elapsed().as_secs_f64());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The value of `name` (summed over its label sets) on 127.0.0.1:`port`/metrics;
/// `None` when nothing answers or the metric is absent.
pub async fn metric(port: u16, name: &str) -> Option<f64> {
    scrape(port).await.ok().and_then(|text| metric_sum(&text, name))
}

/// `GET /metrics` on 127.0.0.1:`port`: the body.
pub async fn scrape(port: u16) -> anyhow::Result<String> {
    let get = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await?;
        let mut raw = Vec::new();
        s.take(MAX_SCRAPE).read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(2), get).await.context("timed out")??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no end of the response head")?;
    if !head.starts_with("HTTP/1.") || head.split(' ').nth(1) != Some("200") {
        bail!("/metrics answered {:?}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_owned())
}

/// The sum of every sample of `name` in Prometheus text (`name value` or
/// `name{labels} value`); `None` if there is none.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let value = if let Some(labels) = rest.strip_prefix('{') {
            labels.split_once('}').map(|(_, v)| v)
        } else if rest.starts_with(' ') {
            Some(rest)
        } else {
            None // a longer name with this prefix
        };
        if let Some(v) = value.and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse::<f64>().ok()) {
            sum = Some(sum.unwrap_or(0.0) + v);
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_label_sets_and_skips_longer_names() {
        let text = "# HELP x\n# TYPE konnectivity_network_proxy_server_ready_backends gauge\n\
            konnectivity_network_proxy_server_ready_backends{proxy_strategy=\"default\"} 2\n\
            konnectivity_network_proxy_server_ready_backends{proxy_strategy=\"destHost\"} 1\n\
            konnectivity_network_proxy_server_ready_backends_total 40\n\
            konnectivity_network_proxy_agent_open_server_connections 3\n";
        assert_eq!(metric_sum(text, READY_BACKENDS), Some(3.0));
        assert_eq!(metric_sum(text, OPEN_SERVER_CONNECTIONS), Some(3.0));
        assert_eq!(metric_sum(text, "konnectivity_network_proxy_server_pending_backend_dials"), None);
        assert_eq!(metric_sum("m 1.5e0\n", "m"), Some(1.5));
    }

    #[test]
    fn server_flags_per_peer() {
        let k = server_flags(PeerKind::Konnq, 2, 3, Duration::from_secs(15));
        assert_eq!(
            k,
            [
                "--server-id=s2",
                "--server-count=3",
                "--graceful-shutdown-timeout=15000ms",
                "--delete-existing-uds-file=true"
            ]
        );
        let u = server_flags(PeerKind::Upstream, 0, 3, Duration::from_secs(15));
        assert!(u.contains(&"--server-port=0".to_owned()));
    }
}
