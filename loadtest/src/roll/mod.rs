//! `konnq-loadtest roll`: rolling restarts and crashes of an HA control
//! plane, konnq and upstream side by side in the same run.
//!
//! ```text
//!  client s0 ─UDS─▶ server s0 ◀─┐
//!  client s1 ─UDS─▶ server s1 ◀─┼─ nginx (konnq: UDP/QUIC, upstream: TCP) ◀── agent 0, 1, 2 ──TCP──▶ echo target
//!  client s2 ─UDS─▶ server s2 ◀─┘
//! ```
//!
//! Per peer, on fresh processes: every agent holds a connection to every
//! server; one client per server (its apiserver) dials through that
//! server's socket at a fixed rate, webhook-like, and every dial is
//! recorded ([`load`]). Then, phase by phase ([`scenario`]): steady; every
//! agent rolled (SIGTERM, exit, start, holds every server again); every
//! server rolled the same way, its own client sending no new dials while
//! it restarts; one server SIGKILLed and started again (time until every
//! agent is back); one agent SIGKILLed for good (when its connections end
//! at the clients, how the next dials fare). [`report`] turns the records
//! into figures and [`summary`] into text; [`cluster`] and [`nginx`] run
//! the processes.

pub mod cluster;
pub mod load;
pub mod nginx;
pub mod report;
pub mod scenario;
pub mod summary;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser};
use serde::Serialize;

use crate::child::Program;
use crate::cli::{Cli, Command, PeerBinArgs};
use crate::conn::Frontend;
use crate::peers::{Env, PeerKind};
use crate::progress::Progress;
use crate::report::model::ScenarioError;
use crate::settings::KonnqBin;
use report::RollReport;

#[derive(Debug, Args)]
pub struct RollArgs {
    /// Output directory for results.json, summary.txt, dials.csv and logs/.
    #[arg(long, default_value = "target/loadtest/roll")]
    pub out: PathBuf,
    /// konnq binaries: a directory with konnq-server and konnq-agent, "builtin", or "auto".
    #[arg(long, default_value = "auto")]
    pub konnq_bin: KonnqBin,
    #[arg(long, value_delimiter = ',', default_value = "konnq,upstream")]
    pub peers: Vec<PeerKind>,
    /// Servers behind the load balancer, and agents (as many).
    #[arg(long, default_value_t = 3)]
    pub servers: usize,
    /// Webhook-like dials per second through each server (open loop).
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Size of each dial's request and of its reply.
    #[arg(long, default_value_t = 100)]
    pub bytes: usize,
    /// Traffic before anything is restarted.
    #[arg(long, default_value_t = 5.0)]
    pub steady_secs: f64,
    /// Pause after each restart, once everything is connected again.
    #[arg(long, default_value_t = 2.0)]
    pub settle_secs: f64,
    /// How long to watch after the agent's SIGKILL (konnq notices a dead
    /// agent at its QUIC idle timeout, 5 s by default).
    #[arg(long, default_value_t = 10.0)]
    pub observe_secs: f64,
    /// Long-lived connections per server open across the agent's SIGKILL.
    #[arg(long, default_value_t = 4)]
    pub hold_conns: usize,
    /// After SIGTERM, SIGKILL if still running after this (a kubelet's
    /// terminationGracePeriodSeconds; Kubernetes' default is 30).
    #[arg(long, default_value_t = 30.0)]
    pub termination_grace_secs: f64,
    /// Both peers' servers: --graceful-shutdown-timeout (konnq's default;
    /// upstream's default 0 stops at once).
    #[arg(long, default_value_t = 15.0)]
    pub server_graceful_secs: f64,
    /// Most time for a restarted process to be connected again.
    #[arg(long, default_value_t = 60.0)]
    pub rejoin_timeout_secs: f64,
    /// A dial not finished after this failed (kube-apiserver's webhook default is 10 s).
    #[arg(long, default_value_t = 10.0)]
    pub dial_timeout_secs: f64,
    /// Most dials in flight per client; a dial due beyond it is counted, not sent.
    #[arg(long, default_value_t = 200)]
    pub max_in_flight: usize,
    /// nginx's `max_fails` for each server. 0 (as deploy/README.md
    /// recommends for QUIC) turns nginx's passive health check off; nginx's
    /// own default, 1 with `fail_timeout` 10 s, gives a server that refused
    /// one datagram or connect no new sessions for 10 s, even once it is
    /// back.
    #[arg(long, default_value_t = 0)]
    pub nginx_max_fails: u32,
    /// Tiny sizes, konnq only: proves the benchmark works, figures not meaningful.
    #[arg(long)]
    pub smoke: bool,
    #[command(flatten)]
    pub peer_bins: PeerBinArgs,
}

/// Validated settings.
#[derive(Debug, Clone, Serialize)]
pub struct RollSettings {
    pub peers: Vec<&'static str>,
    #[serde(skip)]
    pub peer_kinds: Vec<PeerKind>,
    pub servers: usize,
    pub rate: f64,
    pub bytes: usize,
    pub steady_secs: f64,
    pub settle_secs: f64,
    pub observe_secs: f64,
    pub hold_conns: usize,
    pub termination_grace_secs: f64,
    pub server_graceful_secs: f64,
    pub rejoin_timeout_secs: f64,
    pub dial_timeout_secs: f64,
    pub max_in_flight: usize,
    pub nginx_max_fails: u32,
    pub smoke: bool,
    pub out: PathBuf,
    /// Extra flags for konnq's processes (--konnq-server-flag, --konnq-agent-flag, and the smoke run's).
    pub konnq_server_flags: Vec<String>,
    pub konnq_agent_flags: Vec<String>,
    #[serde(skip)]
    run: crate::settings::Settings,
}

impl RollArgs {
    pub fn settings(self) -> anyhow::Result<RollSettings> {
        let mut p = Vec::new();
        let in_range = |name: &str, v: f64, lo: f64, hi: f64, p: &mut Vec<String>| {
            if !(v.is_finite() && v >= lo && v <= hi) {
                p.push(format!("--{name} {v}: expected {lo}..={hi}"));
            }
        };
        in_range("servers", self.servers as f64, 2.0, 5.0, &mut p);
        in_range("rate", self.rate, 1.0, 500.0, &mut p);
        in_range("bytes", self.bytes as f64, 1.0, 65536.0, &mut p);
        in_range("steady-secs", self.steady_secs, 0.0, 600.0, &mut p);
        in_range("settle-secs", self.settle_secs, 0.0, 60.0, &mut p);
        in_range("observe-secs", self.observe_secs, 1.0, 120.0, &mut p);
        in_range("hold-conns", self.hold_conns as f64, 1.0, 100.0, &mut p);
        in_range("termination-grace-secs", self.termination_grace_secs, 1.0, 300.0, &mut p);
        in_range("server-graceful-secs", self.server_graceful_secs, 0.0, 300.0, &mut p);
        in_range("rejoin-timeout-secs", self.rejoin_timeout_secs, 1.0, 600.0, &mut p);
        in_range("dial-timeout-secs", self.dial_timeout_secs, 0.5, 60.0, &mut p);
        in_range("max-in-flight", self.max_in_flight as f64, 1.0, 10_000.0, &mut p);
        if self.peers.contains(&PeerKind::Direct) {
            p.push("--peers: direct has no servers or agents to restart (konnq, upstream)".into());
        }
        if !p.is_empty() {
            bail!("invalid options:\n  {}", p.join("\n  "));
        }
        let cli = Cli::try_parse_from(["konnq-loadtest", "run"]).map_err(|e| anyhow::anyhow!("{e}"))?;
        let Command::Run(run) = cli.command else { unreachable!("parsed a run command") };
        let mut run = run.settings()?;
        run.konnq_bin = self.konnq_bin;
        self.peer_bins.apply(&mut run);
        let mut peer_kinds = Vec::new();
        for k in self.peers {
            if !peer_kinds.contains(&k) {
                peer_kinds.push(k);
            }
        }
        let mut s = RollSettings {
            peers: peer_kinds.iter().map(|k| k.name()).collect(),
            peer_kinds,
            servers: self.servers,
            rate: self.rate,
            bytes: self.bytes,
            steady_secs: self.steady_secs,
            settle_secs: self.settle_secs,
            observe_secs: self.observe_secs,
            hold_conns: self.hold_conns,
            termination_grace_secs: self.termination_grace_secs,
            server_graceful_secs: self.server_graceful_secs,
            rejoin_timeout_secs: self.rejoin_timeout_secs,
            dial_timeout_secs: self.dial_timeout_secs,
            max_in_flight: self.max_in_flight,
            nginx_max_fails: self.nginx_max_fails,
            smoke: self.smoke,
            out: self.out,
            konnq_server_flags: Vec::new(),
            konnq_agent_flags: Vec::new(),
            run,
        };
        if s.smoke {
            s.peer_kinds = vec![PeerKind::Konnq];
            s.peers = vec!["konnq"];
            s.rate = 20.0;
            s.steady_secs = 1.0;
            s.settle_secs = 0.2;
            s.observe_secs = 2.0;
            s.hold_conns = 2;
            // Agents find a restarted server sooner: the smoke run proves
            // the benchmark works, it measures nothing.
            s.run.konnq_agent_flags.extend(["--sync-interval=200ms".to_owned(), "--sync-interval-cap=1s".to_owned()]);
        }
        s.konnq_server_flags.clone_from(&s.run.konnq_server_flags);
        s.konnq_agent_flags.clone_from(&s.run.konnq_agent_flags);
        Ok(s)
    }
}

impl RollSettings {
    fn secs(v: f64) -> Duration {
        Duration::from_secs_f64(v)
    }

    /// The longest one peer may take; its clients stop dialing by then.
    pub fn peer_budget(&self) -> Duration {
        let n = self.servers as f64;
        let step = self.termination_grace_secs + 5.0 + 2.0 * self.rejoin_timeout_secs + self.settle_secs;
        let secs = self.steady_secs
            + 2.0 * n * step
            + step
            + 1.0
            + self.observe_secs
            + self.dial_timeout_secs
            + 2.0 * self.rejoin_timeout_secs;
        Self::secs(secs)
    }
}

/// Runs every peer; returns the report and every dial as CSV (files not yet written).
pub async fn run(s: &RollSettings, command: Vec<String>) -> anyhow::Result<(RollReport, String)> {
    let wall = std::time::Instant::now();
    let loadavg_start = crate::machine::loadavg();
    crate::procfs::raise_fd_limit();
    let log_dir = s.out.join("logs");
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    // Unix socket paths must stay short: keep them in /tmp.
    let work = tempfile::Builder::new().prefix("konnq-roll-").tempdir_in(std::env::temp_dir())?;
    let certs = konnq_shared::certs::generate(&work.path().join("pki"), &[])?;
    let exe = std::env::current_exe().context("locating this executable")?;
    let progress = Progress::new();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let printer = tokio::spawn(progress.clone().run(stopped));
    let budget = s.peer_budget() + Duration::from_secs(120);
    let max = budget * s.peer_kinds.len() as u32;
    let (target_proc, targets) =
        crate::target::start(&Program::plain(exe.clone()), &log_dir, max, std::net::Ipv4Addr::LOCALHOST.into()).await?;
    let env = Env { socket_dir: work.path().to_owned(), log_dir, certs, targets, frontend: Frontend::Grpc, lab: None };
    let mut report = RollReport::default();
    let mut csv = String::new();
    for &kind in &s.peer_kinds {
        let (bins, info) = crate::runner::peer_binaries(kind, &s.run, &exe, &progress).await;
        let available = if info.available { "" } else { "UNAVAILABLE: " };
        progress.note(&format!("{:<9} {available}{}", kind.name(), info.detail));
        report.peers.push(info);
        let Some(bins) = bins else { continue };
        let error = |e: String| ScenarioError { scenario: "roll".into(), peer: kind.name().into(), error: e };
        match tokio::time::timeout(budget, scenario::run_peer(kind, &bins, &env, s, &progress)).await {
            Ok(Ok((roll, records, notes))) => {
                report::dials_csv(kind.name(), &records, &mut csv);
                report.errors.extend(notes.into_iter().map(error));
                report.results.push(roll);
            }
            Ok(Err(e)) => report.errors.push(error(format!("{e:#}"))),
            Err(_) => report.errors.push(error(format!("abandoned after {budget:?}"))),
        }
    }
    stop.send_replace(true);
    let _ = printer.await;
    target_proc.stop(Duration::from_secs(2)).await;
    report.meta = report::RollMeta {
        date_utc: crate::machine::now_utc(),
        command,
        machine: crate::machine::describe(),
        revision: crate::machine::revision(),
        smoke: s.smoke,
        settings: serde_json::to_value(s)?,
        wall_secs: wall.elapsed().as_secs_f64(),
        loadavg_start,
        loadavg_end: crate::machine::loadavg(),
    };
    Ok((report, csv))
}

/// `roll`, then the files and the summary on stdout; for a smoke run, an
/// error unless every figure was produced.
pub async fn main(s: RollSettings, command: Vec<String>) -> anyhow::Result<()> {
    nginx::check_installed()?;
    let (report, csv) = run(&s, command).await?;
    let files = report::write(&report, &csv, &s.out)?;
    println!("{}", summary::render(&report));
    println!("wrote {}", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "));
    if s.smoke {
        let problems = smoke_problems(&report, s.servers);
        if !problems.is_empty() {
            bail!("roll smoke run incomplete:\n  {}", problems.join("\n  "));
        }
        println!("roll smoke: every figure was produced");
    }
    Ok(())
}

/// What a smoke run must have produced (empty = the benchmark works).
pub fn smoke_problems(r: &RollReport, servers: usize) -> Vec<String> {
    let mut p: Vec<String> = r.errors.iter().map(|e| format!("{} {}: {}", e.peer, e.scenario, e.error)).collect();
    let Some(k) = r.results.iter().find(|x| x.peer == "konnq") else {
        p.push("konnq: no figures".into());
        return p;
    };
    for phase in load::Phase::ALL {
        match k.phases.iter().find(|f| f.phase == phase.name()) {
            Some(f) if f.dials > 0 => {}
            _ => p.push(format!("{}: no dials", phase.name())),
        }
    }
    for (what, steps) in [("agent", &k.agent_rolls), ("server", &k.server_rolls)] {
        if steps.len() != servers || steps.iter().any(|st| st.back_secs.is_none()) {
            p.push(format!("{what} roll: not every {what} was rolled and back"));
        }
    }
    if k.crash_server.as_ref().and_then(|c| c.all_agents_secs).is_none() {
        p.push("server crash: its agents never came back".into());
    }
    if k.crash_agent.as_ref().is_none_or(|c| c.held == 0 || c.next_dials == 0) {
        p.push("agent crash: no held connections or no dials after it".into());
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roll(args: &[&str]) -> anyhow::Result<RollSettings> {
        let cli = Cli::try_parse_from(["konnq-loadtest", "roll"].iter().chain(args))?;
        match cli.command {
            Command::Roll(a) => a.settings(),
            other => bail!("unexpected {other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_benchmark_of_the_docs() {
        let s = roll(&[]).unwrap();
        assert_eq!(s.peers, ["konnq", "upstream"]);
        assert_eq!((s.servers, s.rate, s.bytes), (3, 50.0, 100));
        assert_eq!((s.termination_grace_secs, s.server_graceful_secs), (30.0, 15.0));
        assert!(s.peer_budget() > Duration::from_secs(60) && s.peer_budget() < Duration::from_secs(3600));
    }

    #[test]
    fn bad_options_are_named() {
        for (args, key) in [
            (&["--peers", "konnq,direct"][..], "--peers"),
            (&["--servers", "1"], "--servers"),
            (&["--rate", "0"], "--rate"),
            (&["--observe-secs", "0"], "--observe-secs"),
        ] {
            let err = roll(args).unwrap_err().to_string();
            assert!(err.contains(key), "{args:?}: {err}");
        }
    }

    #[test]
    fn smoke_is_small_and_konnq_only() {
        let s = roll(&["--smoke", "--peers", "konnq,upstream"]).unwrap();
        assert_eq!(s.peers, ["konnq"]);
        assert!(s.rate <= 20.0 && s.observe_secs <= 2.0 && s.steady_secs <= 1.0);
    }

    #[test]
    fn smoke_problems_name_what_is_missing() {
        let p = smoke_problems(&RollReport::default(), 3);
        assert_eq!(p, ["konnq: no figures"]);
        let r = RollReport {
            results: vec![report::PeerRoll { peer: "konnq".into(), ..Default::default() }],
            ..Default::default()
        };
        let p = smoke_problems(&r, 3);
        assert!(p.iter().any(|x| x.starts_with("steady: no dials")), "{p:?}");
        assert!(p.iter().any(|x| x.starts_with("server crash")), "{p:?}");
    }
}
