//! A whole run: certificates, the target process, the peers' binaries
//! (building upstream when asked), then every scenario with fresh peer
//! processes, peers interleaved cell by cell so that drift on a shared
//! machine hits them alike; finally the report, its files and the table.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{bail, Context};
use konnq_netlab::{Lab, Side};
use tokio::sync::watch;

use crate::child::Program;
use crate::peers::{Binaries, Env, LabPlacement, Peer, PeerKind};
use crate::progress::Progress;
use crate::report::{self, PeerInfo, Report, ScenarioError};
use crate::scenarios;
use crate::settings::{self, KonnqBin, Scenario, Settings};

/// Slack on top of a scenario's own duration before it is abandoned.
const SCENARIO_SLACK: Duration = Duration::from_secs(180);

/// The konnq binaries `choice` selects, and how to describe them.
pub fn konnq_binaries(choice: &KonnqBin, exe: &Path) -> anyhow::Result<(Binaries, String)> {
    let builtin = || {
        let prog = |sub: &str| Program::with_prefix(exe.to_owned(), vec![sub.to_owned()]);
        let detail = format!("built-in: konnq libraries linked into {}", exe.display());
        let b = Binaries {
            server: prog("builtin-server"),
            agent: prog("builtin-agent"),
            server_flags: Vec::new(),
            agent_flags: Vec::new(),
        };
        (b, detail)
    };
    let in_dir = |dir: &Path| -> Option<(Binaries, String)> {
        let (server, agent) = (dir.join("konnq-server"), dir.join("konnq-agent"));
        if !(server.is_file() && agent.is_file()) {
            return None;
        }
        let modified = std::fs::metadata(&server)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| crate::machine::utc(d.as_secs()))
            .unwrap_or_default();
        let detail = format!("{} and konnq-agent (built {modified})", server.display());
        let b = Binaries {
            server: Program::plain(server),
            agent: Program::plain(agent),
            server_flags: Vec::new(),
            agent_flags: Vec::new(),
        };
        Some((b, detail))
    };
    match choice {
        KonnqBin::Builtin => Ok(builtin()),
        KonnqBin::Dir(d) => in_dir(d).with_context(|| format!("no konnq-server and konnq-agent in {}", d.display())),
        KonnqBin::Auto => Ok(exe.parent().and_then(in_dir).unwrap_or_else(builtin)),
    }
}

/// The longest a scenario may run.
fn budget(s: &Settings, sc: Scenario) -> Duration {
    let cells = (s.throughput.conns.len() * s.throughput.modes.len()) as f64;
    let secs = match sc {
        Scenario::Throughput => {
            cells * (s.throughput.secs + s.throughput.warmup_secs + s.throughput.settle_secs + 30.0)
        }
        Scenario::Latency => s.latency.secs + f64::from(s.rounds) * (s.latency.warmup_secs + 10.0),
        Scenario::Dial => s.dial.secs + f64::from(s.rounds) * (s.dial.warmup_secs + 10.0),
        Scenario::Scale => s.scale.max_ramp_secs + 3.0 * s.scale.settle_secs,
        Scenario::Soak => s.soak.secs,
    };
    Duration::from_secs_f64(secs * s.peer_kinds.len() as f64) + SCENARIO_SLACK
}

/// Runs everything `s` asks for and returns the report (files not yet written).
pub async fn run(s: &Settings, command: Vec<String>) -> anyhow::Result<Report> {
    let wall = Instant::now();
    let loadavg_start = crate::machine::loadavg();
    crate::procfs::raise_fd_limit();
    let log_dir = s.out.join("logs");
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    // Unix socket paths must stay short: keep them in /tmp.
    let work = tempfile::Builder::new().prefix("konnq-lt-").tempdir_in(std::env::temp_dir())?;
    let exe = std::env::current_exe().context("locating this executable")?;
    let progress = Progress::new();
    let (stop, stopped) = watch::channel(false);
    let printer = tokio::spawn(progress.clone().run(stopped));

    if let Some(dir) = &s.throughput.perf_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let veth = s.veth_mtu.map(|mtu| veth_link(mtu, &progress)).transpose()?;
    let (link, placement, target_bind) = match &veth {
        None => ("loopback".to_owned(), None, std::net::Ipv4Addr::LOCALHOST),
        Some(lab) => {
            let placement = LabPlacement {
                server_ns: Arc::new(lab.namespace_fd(Side::A)?),
                agent_ns: Arc::new(lab.namespace_fd(Side::B)?),
                server_ip: lab.addr(Side::A),
            };
            crate::conn::set_client_netns(placement.server_ns.clone())?;
            let link = format!(
                "veth MTU {} (namespaces {} | {})",
                s.veth_mtu.unwrap_or(0),
                lab.namespace(Side::A),
                lab.namespace(Side::B)
            );
            (link, Some(placement), lab.addr(Side::B))
        }
    };
    let san: Vec<String> = placement.iter().map(|p| p.server_ip.to_string()).collect();
    let certs = konnq_shared::certs::generate(&work.path().join("pki"), &san)?;
    let total: Duration = s.scenarios.iter().map(|&sc| budget(s, sc)).sum();
    let mut target_prog = Program::plain(exe.clone());
    if let Some(p) = &placement {
        target_prog = target_prog.in_netns(p.agent_ns.clone());
    }
    let (target_proc, targets) = crate::target::start(&target_prog, &log_dir, total, target_bind.into()).await?;
    let mut report = Report::default();
    let mut peers: Vec<(PeerKind, Option<Binaries>)> = Vec::new();
    for &kind in &s.peer_kinds {
        let (bins, info) = peer_binaries(kind, s, &exe, &progress).await;
        progress.note(&format!(
            "{:<9} {}{}",
            kind.name(),
            if info.available { "" } else { "UNAVAILABLE: " },
            info.detail
        ));
        if info.available {
            peers.push((kind, bins));
        }
        report.peers.push(info);
    }
    let env = Env { socket_dir: work.path().to_owned(), log_dir, certs, targets, frontend: s.frontend, lab: placement };
    for &sc in &s.scenarios {
        let run = scenario(sc, s, &peers, &env, &progress, &mut report);
        if tokio::time::timeout(budget(s, sc), run).await.is_err() {
            report.errors.push(ScenarioError {
                scenario: sc.name().into(),
                peer: "all".into(),
                error: format!("abandoned after {:?}", budget(s, sc)),
            });
        }
    }
    stop.send_replace(true);
    let _ = printer.await;
    target_proc.stop(Duration::from_secs(2)).await;
    drop(veth);

    report.meta = report::Meta {
        date_utc: crate::machine::now_utc(),
        command,
        machine: crate::machine::describe(),
        smoke: s.smoke,
        frontend: s.frontend.name().into(),
        link,
        settings: serde_json::to_value(s)?,
        wall_secs: wall.elapsed().as_secs_f64(),
        loadavg_start,
        loadavg_end: crate::machine::loadavg(),
        revision: crate::machine::revision(),
    };
    // After the meta: some targets read the machine's figures.
    report.targets = report::targets::evaluate(&report);
    Ok(report)
}

/// Namespace name prefix of `--veth-mtu` runs; a crashed run's leftovers with
/// it are removed at start.
const VETH_NS_PREFIX: &str = "kqveth";

/// The two namespaces and the veth pair of a `--veth-mtu` run.
fn veth_link(mtu: u32, progress: &Progress) -> anyhow::Result<Lab> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("--veth-mtu needs root: it creates network namespaces and a veth pair (run as root or with sudo)");
    }
    let removed = konnq_netlab::cleanup_stale(VETH_NS_PREFIX)?;
    if !removed.is_empty() {
        progress.note(&format!("removed namespaces a crashed run left behind: {}", removed.join(" ")));
    }
    konnq_netlab::install_signal_cleanup().context("installing the clean-up signal handlers")?;
    let lab = Lab::create_veth(VETH_NS_PREFIX, mtu)?;
    progress.note(&format!(
        "agent↔server link: veth MTU {mtu}, server in {}, agent and targets in {}",
        lab.namespace(Side::A),
        lab.namespace(Side::B)
    ));
    Ok(lab)
}

pub(crate) async fn peer_binaries(
    kind: PeerKind,
    s: &Settings,
    exe: &Path,
    progress: &Progress,
) -> (Option<Binaries>, PeerInfo) {
    let info = |available, detail: String| PeerInfo { name: kind.name().into(), available, detail };
    match kind {
        PeerKind::Direct => (None, info(true, "no tunnel: TCP straight to the target".into())),
        PeerKind::Konnq | PeerKind::KonnqTcp => match konnq_binaries(&s.konnq_bin, exe) {
            Ok((mut b, mut detail)) => {
                if kind == PeerKind::KonnqTcp {
                    detail += "; agent --transport tcp (QUIC datagrams over TCP)";
                }
                b.server_flags.clone_from(&s.konnq_server_flags);
                b.agent_flags.clone_from(&s.konnq_agent_flags);
                for (who, flags) in [("server", &b.server_flags), ("agent", &b.agent_flags)] {
                    if !flags.is_empty() {
                        detail += &format!("; extra {who} flags {}", flags.join(" "));
                    }
                }
                (Some(b), info(true, detail))
            }
            Err(e) => (None, info(false, format!("{e:#}"))),
        },
        PeerKind::Upstream => {
            progress.note(&format!(
                "preparing upstream {} {} (go build)...",
                crate::upstream::MODULE,
                crate::upstream::VERSION
            ));
            let prepared =
                crate::upstream::prepare(s.upstream_bin.as_deref(), &s.upstream_module, &s.upstream_build_dir).await;
            match prepared {
                Ok(b) => {
                    let d = format!(
                        "{} {}: {} and proxy-agent",
                        crate::upstream::MODULE,
                        crate::upstream::VERSION,
                        b.server.describe()
                    );
                    (Some(b), info(true, d))
                }
                Err(why) => (None, info(false, why)),
            }
        }
    }
}

/// Collects the failures of a scenario (the run goes on without them).
struct Failures<'a> {
    sc: Scenario,
    progress: &'a Progress,
    errors: Vec<ScenarioError>,
}

impl Failures<'_> {
    fn add(&mut self, peer: &str, error: String) {
        self.progress.note(&format!("{peer} {}: {error}", self.sc.name()));
        self.errors.push(ScenarioError { scenario: self.sc.name().into(), peer: peer.into(), error });
    }

    fn peer(&mut self, peer: &Peer, e: anyhow::Error) {
        self.add(peer.kind.name(), format!("{e:#}"));
    }
}

/// Runs one scenario for every peer, each peer freshly started.
async fn scenario(
    sc: Scenario,
    s: &Settings,
    kinds: &[(PeerKind, Option<Binaries>)],
    env: &Env,
    progress: &Progress,
    report: &mut Report,
) {
    let mut failures = Failures { sc, progress, errors: Vec::new() };
    let mut running = Vec::new();
    for (kind, bins) in kinds {
        if matches!(sc, Scenario::Scale | Scenario::Soak) && !kind.has_processes() {
            continue; // Nothing to measure without server and agent processes.
        }
        progress.stage(format!("starting {} for {}", kind.name(), sc.name()), Duration::from_secs(30));
        match Peer::start(*kind, bins.as_ref(), env, &format!("{}-{}", sc.name(), kind.name())).await {
            Ok(p) => running.push(p),
            Err(e) => failures.add(kind.name(), format!("start: {e:#}")),
        }
    }
    let t = env.targets;
    match sc {
        Scenario::Throughput => report.throughput.extend(throughput_cells(s, &mut running, t, &mut failures).await),
        Scenario::Latency => report.latency.extend(latency_rounds(s, &running, t, &mut failures).await),
        Scenario::Dial => report.dial.extend(dial_rounds(s, &running, t, &mut failures).await),
        Scenario::Scale => {
            for p in &mut running {
                match scenarios::scale::run(p, t, &s.scale, progress).await {
                    Ok(r) => report.scale.push(r),
                    Err(e) => failures.peer(p, e),
                }
            }
        }
        Scenario::Soak => {
            for p in &mut running {
                match scenarios::soak::run(p, t, &s.soak, progress).await {
                    Ok(r) => report.soak.push(r),
                    Err(e) => failures.peer(p, e),
                }
            }
        }
    }
    for p in &mut running {
        if let Err(e) = p.check_alive() {
            failures.peer(p, e);
        }
    }
    report.errors.append(&mut failures.errors);
    progress.stage(format!("stopping peers after {}", sc.name()), Duration::from_secs(10));
    for p in running {
        p.stop().await;
    }
}

/// Every (mode, connections) cell, peers one after the other within a cell.
async fn throughput_cells(
    s: &Settings,
    running: &mut [Peer],
    t: crate::target::Targets,
    failures: &mut Failures<'_>,
) -> Vec<report::ThroughputResult> {
    let mut out = Vec::new();
    for &mode in &s.throughput.modes {
        for &conns in &s.throughput.conns {
            for p in running.iter_mut() {
                if p.check_alive().is_err() {
                    continue; // Reported once at the end of the scenario.
                }
                match scenarios::throughput::run(p, t, mode, conns, &s.throughput, failures.progress).await {
                    Ok(r) => out.push(r),
                    Err(e) => failures.peer(p, e),
                }
            }
        }
    }
    out
}

/// Latency in `s.rounds` rounds, peers alternating, so that a burst of other
/// load on a shared machine is spread over all of them.
async fn latency_rounds(
    s: &Settings,
    running: &[Peer],
    t: crate::target::Targets,
    failures: &mut Failures<'_>,
) -> Vec<report::LatencyResult> {
    let round = settings::Latency { secs: s.latency.secs / f64::from(s.rounds), ..s.latency.clone() };
    let mut acc: Vec<Option<scenarios::latency::Measured>> = running.iter().map(|_| None).collect();
    for _ in 0..s.rounds {
        for (p, acc) in running.iter().zip(acc.iter_mut()) {
            let m = scenarios::latency::measure(p, t, &round, failures.progress).await;
            if let Err(e) = m.and_then(|m| accumulate(acc, m, scenarios::latency::Measured::merge)) {
                failures.peer(p, e);
            }
        }
    }
    running.iter().zip(acc).filter_map(|(p, m)| Some(m?.result(p.kind.name(), &s.latency))).collect()
}

/// Dial in `s.rounds` rounds, peers alternating (as [`latency_rounds`]).
async fn dial_rounds(
    s: &Settings,
    running: &[Peer],
    t: crate::target::Targets,
    failures: &mut Failures<'_>,
) -> Vec<report::DialResult> {
    let round = settings::Dial { secs: s.dial.secs / f64::from(s.rounds), ..s.dial.clone() };
    let go_client = match s.dial.client {
        settings::DialClient::Rust => None,
        settings::DialClient::Go => {
            failures.progress.note("building konnq-dialclient (konnectivity-client, go build)...");
            match crate::upstream::prepare_dial_client(&s.upstream_module, &s.upstream_build_dir).await {
                Ok(bin) => Some(bin),
                Err(e) => {
                    failures.add("all", format!("the Go dial client: {e}"));
                    return Vec::new();
                }
            }
        }
    };
    let mut acc: Vec<Option<scenarios::dial::Measured>> = running.iter().map(|_| None).collect();
    for _ in 0..s.rounds {
        for (p, acc) in running.iter().zip(acc.iter_mut()) {
            let m = match &go_client {
                Some(bin) => scenarios::dial_go::measure(p, t, &round, bin, failures.progress).await,
                None => scenarios::dial::measure(p, t, &round, failures.progress).await,
            };
            if let Err(e) = m.and_then(|m| accumulate(acc, m, scenarios::dial::Measured::merge)) {
                failures.peer(p, e);
            }
        }
    }
    running.iter().zip(acc).filter_map(|(p, m)| Some(m?.result(p.kind.name(), &s.dial))).collect()
}

/// Keeps the first round's figures, merges later ones into them.
fn accumulate<M>(acc: &mut Option<M>, m: M, merge: impl FnOnce(&mut M, M) -> anyhow::Result<()>) -> anyhow::Result<()> {
    match acc {
        Some(a) => merge(a, m),
        None => {
            *acc = Some(m);
            Ok(())
        }
    }
}

/// `run`, then results.json, summary.txt and charts in `s.out`, the table on
/// stdout; for a smoke run, an error unless every scenario produced figures.
pub async fn main(s: Settings, command: Vec<String>) -> anyhow::Result<()> {
    let report = run(&s, command).await?;
    let files = report::write(&report, &s.out)?;
    println!("{}", report::table::render(&report));
    println!("wrote {}", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "));
    if s.smoke {
        let problems = report::smoke_problems(&report, "konnq");
        if !problems.is_empty() {
            anyhow::bail!("smoke run incomplete:\n  {}", problems.join("\n  "));
        }
        println!("smoke: every scenario produced figures");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn konnq_binaries_choice() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("konnq-loadtest");
        let (b, d) = konnq_binaries(&KonnqBin::Auto, &exe).unwrap();
        assert_eq!(b.server.prefix, ["builtin-server"], "nothing beside the exe: built-in");
        assert!(d.starts_with("built-in"));
        for f in ["konnq-server", "konnq-agent"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let (b, _) = konnq_binaries(&KonnqBin::Auto, &exe).unwrap();
        assert_eq!(b.server.path, dir.path().join("konnq-server"));
        assert!(b.agent.prefix.is_empty());
        assert!(konnq_binaries(&KonnqBin::Dir("/nonexistent".into()), &exe).is_err());
        let (b, _) = konnq_binaries(&KonnqBin::Builtin, &exe).unwrap();
        assert_eq!(b.agent.prefix, ["builtin-agent"]);
    }

    #[test]
    fn budgets_cover_the_scenarios() {
        let s = crate::settings::example();
        assert!(budget(&s, Scenario::Soak) >= Duration::from_secs(600 * 3));
        assert!(budget(&s, Scenario::Throughput) > Duration::from_secs(6 * 6 * 3));
    }
}
