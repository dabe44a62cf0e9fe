//! `konnq-loadtest fleet`: thousands of agents on one server. N agents are
//! simulated from this process, each with its own connection and socket
//! (see [`sim`]), against a konnq-server and an upstream proxy-server in
//! turn. For each server and N it reports:
//!
//! - the server's RSS per agent: RSS with N idle agents held for
//!   `--idle-secs`, minus RSS before any agent, over N;
//! - the server's CPU while the agents sit idle (keep-alives only), in % of
//!   one core, over the same `--idle-secs`;
//! - how long until all N are admitted at the start (a reconnect storm),
//!   and again after the server is restarted (SIGTERM, then the same
//!   command), timed from the new process's start.
//!
//! The simulated agents run in this process, so their own CPU is not the
//! server's: the server's figures come from `/proc/<pid>` alone.

pub mod sim;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use tokio::sync::watch;

use crate::child::ChildProc;
use crate::peers::{server_common_args, Binaries, Env, PeerKind, Ports};
use crate::settings::KonnqBin;
use sim::{Fleet, Kind, Target};

#[derive(Debug, Args)]
pub struct FleetArgs {
    /// Output directory for fleet.json and the servers' logs.
    #[arg(long, default_value = "target/loadtest/fleet")]
    pub out: PathBuf,
    /// Agent counts, one run each per server.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    pub agents: Vec<usize>,
    /// Servers: konnq and/or upstream.
    #[arg(long, value_delimiter = ',', default_value = "konnq,upstream")]
    pub peers: Vec<PeerKind>,
    /// Seconds the agents sit idle while the server's CPU and RSS are measured.
    #[arg(long, default_value_t = 20)]
    pub idle_secs: u64,
    /// Seconds after the last admission before the idle window starts.
    #[arg(long, default_value_t = 5)]
    pub settle_secs: u64,
    /// Give up on the fleet being admitted after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub deadline_secs: u64,
    /// konnq's agents' keep-alive interval (QUIC PINGs); the server's follows
    /// its own flags (e.g. --konnq-server-flag=--keepalive-time=5s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub agent_keepalive: Option<Duration>,
    /// konnq binaries: a directory with konnq-server, "builtin" or "auto".
    #[arg(long, default_value = "auto")]
    pub konnq_bin: KonnqBin,
    /// Extra flag for konnq-server (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    pub konnq_server_flag: Vec<String>,
    /// Directory with a prebuilt upstream proxy-server (skips go build).
    #[arg(long)]
    pub upstream_bin: Option<PathBuf>,
}

/// One server with one fleet size.
#[derive(Debug, Serialize)]
pub struct Cell {
    pub peer: String,
    pub agents: usize,
    pub rss_before_bytes: u64,
    pub rss_idle_bytes: u64,
    pub rss_per_agent_bytes: f64,
    pub idle_cpu_percent: f64,
    pub idle_secs: f64,
    pub first_ready_secs: Option<f64>,
    pub restart_ready_secs: Option<f64>,
    pub last_error: Option<String>,
}

pub async fn main(args: FleetArgs) -> anyhow::Result<()> {
    crate::procfs::raise_fd_limit();
    let log_dir = args.out.join("logs");
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let work = tempfile::Builder::new().prefix("konnq-fleet-").tempdir_in(std::env::temp_dir())?;
    let certs = konnq_shared::certs::generate(&work.path().join("pki"), &[])?;
    let exe = std::env::current_exe()?;
    // No traffic goes through the tunnel here: the targets are never dialed.
    let unused: std::net::SocketAddr = "127.0.0.1:9".parse()?;
    let targets = crate::target::Targets { echo: unused, source: unused, sink: unused, count: unused, pid: None };
    let frontend = crate::conn::Frontend::Grpc;
    let env = Env { socket_dir: work.path().to_owned(), log_dir, certs, targets, frontend, lab: None };
    let mut cells = Vec::new();
    for &peer in &args.peers {
        let (bins, kind) = binaries(peer, &args, &exe).await?;
        for &n in &args.agents {
            println!("{} server, {n} agents...", peer.name());
            let cell = run_cell(peer, kind, &bins, n, &args, &env).await?;
            println!("{}", line(&cell));
            cells.push(cell);
        }
    }
    let json = serde_json::to_string_pretty(&cells)?;
    std::fs::write(args.out.join("fleet.json"), json)?;
    println!("\n{}", table(&cells));
    anyhow::ensure!(
        cells.iter().all(|c| c.first_ready_secs.is_some() && c.restart_ready_secs.is_some()),
        "not every fleet was admitted"
    );
    Ok(())
}

async fn binaries(peer: PeerKind, args: &FleetArgs, exe: &Path) -> anyhow::Result<(Binaries, Kind)> {
    match peer {
        PeerKind::Konnq => {
            let (mut b, detail) = crate::runner::konnq_binaries(&args.konnq_bin, exe)?;
            println!("konnq: {detail}");
            b.server_flags.clone_from(&args.konnq_server_flag);
            Ok((b, Kind::Konnq))
        }
        PeerKind::Upstream => {
            let b = crate::upstream::prepare(
                args.upstream_bin.as_deref(),
                &crate::upstream::module_dir(),
                &crate::upstream::default_build_dir(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("upstream: {e}"))?;
            Ok((b, Kind::Upstream))
        }
        other => anyhow::bail!("fleet runs konnq and upstream servers, not {}", other.name()),
    }
}

async fn run_cell(
    peer: PeerKind,
    kind: Kind,
    bins: &Binaries,
    n: usize,
    args: &FleetArgs,
    env: &Env,
) -> anyhow::Result<Cell> {
    let ports = Ports::pick()?;
    let mut server = start_server(peer, bins, n, env, &ports).await?;
    let rss_before = server.sample()?.rss_bytes;
    let mut quic = konnq_shared::config::QuicConfig::default();
    if let Some(k) = args.agent_keepalive {
        quic.keep_alive_interval = k;
        quic.idle_timeout = quic.idle_timeout.max(k * 3);
    }
    let target = Target {
        server: format!("127.0.0.1:{}", ports.agent).parse()?,
        ca_cert: env.certs.ca_cert.clone(),
        agent_cert: env.certs.agent_cert.clone(),
        agent_key: env.certs.agent_key.clone(),
        quic,
    };
    let fleet = Arc::new(Fleet::default());
    let (stop, stopped) = watch::channel(false);
    let deadline = Duration::from_secs(args.deadline_secs);
    let start = Instant::now();
    let agents: Vec<_> = (0..n)
        .map(|i| tokio::spawn(sim::agent(kind, i, target.clone(), Arc::clone(&fleet), stopped.clone())))
        .collect();
    let first_ready = fleet.wait_connected(n, n, start, deadline).await;
    let (mut rss_idle, mut idle_cpu) = (0, 0.0);
    let mut restart_ready = None;
    if first_ready.is_some() {
        tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
        let before = server.sample()?;
        tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
        let after = server.sample()?;
        rss_idle = after.rss_bytes;
        idle_cpu = 100.0 * (after.cpu_secs - before.cpu_secs) / args.idle_secs as f64;
        restart_ready = restart(&mut server, &fleet, n, deadline).await?;
    }
    let last_error = fleet.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
    stop.send_replace(true);
    for a in agents {
        let _ = a.await;
    }
    server.stop(Duration::from_secs(5)).await;
    Ok(Cell {
        peer: peer.name().into(),
        agents: n,
        rss_before_bytes: rss_before,
        rss_idle_bytes: rss_idle,
        rss_per_agent_bytes: rss_idle.saturating_sub(rss_before) as f64 / n as f64,
        idle_cpu_percent: idle_cpu,
        idle_secs: args.idle_secs as f64,
        first_ready_secs: first_ready.map(|d| d.as_secs_f64()),
        restart_ready_secs: restart_ready.map(|d| d.as_secs_f64()),
        last_error,
    })
}

/// SIGTERM, wait for the exit, start the same command again; how long from
/// that start until all `n` agents are admitted again.
async fn restart(
    server: &mut ChildProc,
    fleet: &Fleet,
    n: usize,
    deadline: Duration,
) -> anyhow::Result<Option<Duration>> {
    let admitted = fleet.admissions.load(std::sync::atomic::Ordering::SeqCst);
    server.signal(libc::SIGTERM);
    anyhow::ensure!(server.wait_exit(Duration::from_secs(30)).await, "{} did not exit on SIGTERM", server.name);
    let start = Instant::now();
    server.respawn()?;
    Ok(fleet.wait_connected(n, admitted + n, start, deadline).await)
}

async fn start_server(
    peer: PeerKind,
    bins: &Binaries,
    n: usize,
    env: &Env,
    ports: &Ports,
) -> anyhow::Result<ChildProc> {
    let socket = env.socket_dir.join(format!("fleet-{}-{n}.sock", peer.name()));
    let mut args = server_common_args(env, &socket, ports);
    if peer == PeerKind::Konnq {
        args.extend(["--graceful-shutdown-timeout".into(), "1s".into()]);
    } else {
        args.extend(["--server-port".into(), "0".into(), "--server-count".into(), "1".into()]);
    }
    args.extend(bins.server_flags.iter().cloned());
    let log = env.log_dir.join(format!("fleet-{}-{n}-server.log", peer.name()));
    let mut server = ChildProc::spawn(&format!("{} server", peer.name()), &bins.server, &args, &log)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = server.exited() {
            anyhow::bail!("{} exited during start-up ({status}):\n{}", server.name, server.log_tail(15));
        }
        if crate::peers::http_status(ports.health, "/healthz").await.ok() == Some(200) {
            return Ok(server);
        }
        anyhow::ensure!(Instant::now() < deadline, "{} not healthy after 30 s", server.name);
        // /healthz is the server's readiness signal; it is polled, as
        // `peers::ready` polls /readyz.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn secs(v: Option<f64>) -> String {
    v.map_or("not all".into(), |s| format!("{s:.2} s"))
}

fn line(c: &Cell) -> String {
    format!(
        "{} N={}: {:.1} KiB RSS per agent ({:.1} → {:.1} MiB), idle CPU {:.1}% of a core, all admitted after {}, after a restart {}{}",
        c.peer,
        c.agents,
        c.rss_per_agent_bytes / 1024.0,
        c.rss_before_bytes as f64 / 1048576.0,
        c.rss_idle_bytes as f64 / 1048576.0,
        c.idle_cpu_percent,
        secs(c.first_ready_secs),
        secs(c.restart_ready_secs),
        c.last_error.as_ref().map_or(String::new(), |e| format!(" (last refusal: {e})")),
    )
}

fn table(cells: &[Cell]) -> String {
    let mut t = String::from("| server | agents | RSS per agent | idle CPU (% of a core) | all admitted | after restart |\n|---|---:|---:|---:|---:|---:|\n");
    for c in cells {
        t += &format!(
            "| {} | {} | {:.1} KiB | {:.1} | {} | {} |\n",
            c.peer,
            c.agents,
            c.rss_per_agent_bytes / 1024.0,
            c.idle_cpu_percent,
            secs(c.first_ready_secs),
            secs(c.restart_ready_secs)
        );
    }
    t
}
