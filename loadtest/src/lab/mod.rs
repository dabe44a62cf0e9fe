//! `konnq-loadtest lab`: konnq and upstream across an impaired link.
//!
//! ```text
//!  netns A (control plane)                       netns B (node)
//!  server ◀══ agent↔server over the link ══▶ agent ──TCP──▶ targets (echo, source)
//!    ▲ Unix socket (file system: reachable from the runner in its own namespace)
//!  runner (the kube-apiserver stand-in)
//! ```
//!
//! The link is konnq-netlab's userspace relay between two TUN devices: delay,
//! jitter, random loss, a rate limit and a bounded queue, both directions.
//! Experiments, each on fresh peer processes:
//! - `hol`: per loss rate, one bulk connection saturating the link plus ping-pong
//!   connections whose latency is recorded;
//! - `slow-reader`: the pings alone, then the pings beside a connection whose
//!   client never reads;
//! - `migration`: mid-transfer, the agent's side changes address: konnq's agent
//!   moves its QUIC connection to a new UDP port (SIGUSR1); upstream's TCP
//!   connection cannot move, which is what destroying it (`ss -K`) amounts to;
//! - `restart`: the agent, then the server, restarted (SIGTERM, then started
//!   again) under traffic: time until a new connection works, how clients end;
//! - `fairness`: the bulk download beside a competing kernel TCP flow on the
//!   same link in the same direction (cubic, bbr): each flow's share;
//! - `upload`: per loss rate, the bulk connection downloading, then
//!   uploading (client → target, counted where the target reads): whether
//!   the tunnel moves a link's worth both ways.

pub mod report;
pub mod workload;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser};
use konnq_netlab::{DirectionSettings, Lab, LinkSettings, Side, VerifyConfig};
use serde::Serialize;
use tokio::time::Instant;

use crate::child::{ChildProc, Program};
use crate::cli::{Cli, Command, PeerBinArgs};
use crate::conn::{Dialer, Frontend};
use crate::peers::{Binaries, Env, LabPlacement, Peer, PeerKind};
use crate::progress::Progress;
use crate::report::model::ScenarioError;
use crate::settings::KonnqBin;
use crate::target::Targets;
use report::{Cell, CellSample, Competitor, EventOutcome, LabReport, LinkCheck, LinkInfo};
use workload::{Bulk, Outcome, Plan};

/// Namespace name prefix; a crashed run's leftovers with it are removed at start.
const NS_PREFIX: &str = "kqlab";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Experiment {
    Hol,
    SlowReader,
    Migration,
    Restart,
    Fairness,
    Upload,
}

impl Experiment {
    const ALL: [Experiment; 6] = [
        Experiment::Hol,
        Experiment::SlowReader,
        Experiment::Migration,
        Experiment::Restart,
        Experiment::Fairness,
        Experiment::Upload,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Experiment::Hol => "hol",
            Experiment::SlowReader => "slow-reader",
            Experiment::Migration => "migration",
            Experiment::Restart => "restart",
            Experiment::Fairness => "fairness",
            Experiment::Upload => "upload",
        }
    }
}

impl std::str::FromStr for Experiment {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Experiment::ALL.into_iter().find(|e| e.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Experiment::ALL.iter().map(|e| e.name()).collect();
            format!("unknown experiment {s:?} ({})", names.join(", "))
        })
    }
}

#[derive(Debug, Args)]
pub struct LabArgs {
    /// Output directory for lab.json, lab-summary.txt, charts and logs.
    #[arg(long, default_value = "target/lab")]
    pub out: PathBuf,
    /// konnq binaries: a directory with konnq-server and konnq-agent, "builtin", or "auto".
    #[arg(long, default_value = "auto")]
    pub konnq_bin: KonnqBin,
    /// Client frontend: grpc (new HTTP/2 connection per dial, as kube-apiserver), http-connect.
    #[arg(long, default_value = "grpc")]
    pub frontend: Frontend,
    #[arg(long, value_delimiter = ',', default_value = "konnq,upstream")]
    pub peers: Vec<PeerKind>,
    #[arg(long, value_delimiter = ',', default_value = "hol,slow-reader,migration,restart,fairness,upload")]
    pub experiments: Vec<Experiment>,
    /// Fairness: the competing kernel TCP flow's congestion controls.
    #[arg(long, value_delimiter = ',', default_value = "cubic,bbr")]
    pub fairness_cc: Vec<String>,
    /// Fairness: loss rates (percent, each direction).
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    pub fairness_loss: Vec<f64>,
    /// Upload: loss rates (percent, each direction).
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    pub upload_loss: Vec<f64>,
    /// Random loss rates (percent, each direction) of the head-of-line experiment.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,5")]
    pub loss: Vec<f64>,
    /// Round-trip time of the link (half of it each way).
    #[arg(long, default_value_t = 50.0)]
    pub rtt_ms: f64,
    #[arg(long, default_value_t = 0.0)]
    pub jitter_ms: f64,
    #[arg(long, default_value_t = 100.0)]
    pub rate_mbit: f64,
    /// Drop-tail queue per direction [default: one bandwidth-delay product].
    #[arg(long)]
    pub queue_bytes: Option<u64>,
    /// Loss rate (percent) of the slow-reader experiment.
    #[arg(long, default_value_t = 0.0)]
    pub slow_reader_loss: f64,
    /// Rounds of the slow-reader experiment (a baseline, then a stalled
    /// reader, per peer and round); its target takes the median round, so a
    /// single stall of the host does not decide it.
    #[arg(long, default_value_t = 3)]
    pub slow_reader_rounds: u32,
    /// Loss rate (percent) of the migration and restart experiments.
    #[arg(long, default_value_t = 1.0)]
    pub event_loss: f64,
    /// Measurement window of every cell.
    #[arg(long, default_value_t = 20.0)]
    pub secs: f64,
    /// Traffic before the window (connections open, congestion windows grow).
    #[arg(long, default_value_t = 5.0)]
    pub warmup_secs: f64,
    /// Ping-pong connections.
    #[arg(long, default_value_t = 10)]
    pub pings: usize,
    #[arg(long, default_value_t = 1024)]
    pub ping_bytes: usize,
    /// Each ping-pong connection sends a ping this often.
    #[arg(long, default_value_t = 100)]
    pub ping_interval_ms: u64,
    /// TCP congestion control in both namespaces (upstream's tunnel is TCP);
    /// "inherit" keeps what a new namespace gets from the host.
    #[arg(long, default_value = "inherit")]
    pub tcp_cc: String,
    /// Skip measuring the link itself before the experiments.
    #[arg(long)]
    pub no_link_check: bool,
    /// Tiny sizes, konnq only: proves the lab works (CI), figures not meaningful.
    #[arg(long)]
    pub smoke: bool,
    #[command(flatten)]
    pub peer_bins: PeerBinArgs,
}

/// Validated lab settings.
#[derive(Debug, Clone, Serialize)]
pub struct LabSettings {
    pub peers: Vec<&'static str>,
    #[serde(skip)]
    pub peer_kinds: Vec<PeerKind>,
    pub experiments: Vec<Experiment>,
    pub loss: Vec<f64>,
    pub rtt_ms: f64,
    pub jitter_ms: f64,
    pub rate_mbit: f64,
    pub queue_bytes: u64,
    pub slow_reader_loss: f64,
    pub slow_reader_rounds: u32,
    pub event_loss: f64,
    pub fairness_cc: Vec<String>,
    pub fairness_loss: Vec<f64>,
    pub upload_loss: Vec<f64>,
    pub secs: f64,
    pub warmup_secs: f64,
    pub pings: usize,
    pub ping_bytes: usize,
    pub ping_interval_ms: u64,
    pub tcp_cc: String,
    pub link_check: bool,
    pub smoke: bool,
    pub out: PathBuf,
    #[serde(skip)]
    run: crate::settings::Settings,
}

impl LabArgs {
    pub fn settings(self) -> anyhow::Result<LabSettings> {
        let mut p = Vec::new();
        let pct = |name: &str, v: f64, p: &mut Vec<String>| {
            if !(0.0..=50.0).contains(&v) {
                p.push(format!("--{name} {v}: a loss rate is a percentage in 0..=50"));
            }
        };
        for &l in &self.loss {
            pct("loss", l, &mut p);
        }
        pct("slow-reader-loss", self.slow_reader_loss, &mut p);
        for &l in &self.fairness_loss {
            pct("fairness-loss", l, &mut p);
        }
        for &l in &self.upload_loss {
            pct("upload-loss", l, &mut p);
        }
        for cc in &self.fairness_cc {
            if cc.is_empty() || !cc.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                p.push(format!("--fairness-cc {cc:?}: not a congestion control name"));
            }
        }
        pct("event-loss", self.event_loss, &mut p);
        let in_range = |name: &str, v: f64, lo: f64, hi: f64, p: &mut Vec<String>| {
            if !(v.is_finite() && v >= lo && v <= hi) {
                p.push(format!("--{name} {v}: expected {lo}..={hi}"));
            }
        };
        in_range("rtt-ms", self.rtt_ms, 0.0, 2000.0, &mut p);
        in_range("jitter-ms", self.jitter_ms, 0.0, self.rtt_ms / 2.0, &mut p);
        in_range("rate-mbit", self.rate_mbit, 1.0, 10_000.0, &mut p);
        in_range("secs", self.secs, 0.5, 3600.0, &mut p);
        in_range("warmup-secs", self.warmup_secs, 0.0, 600.0, &mut p);
        in_range("slow-reader-rounds", self.slow_reader_rounds as f64, 1.0, 20.0, &mut p);
        in_range("pings", self.pings as f64, 1.0, 256.0, &mut p);
        in_range("ping-bytes", self.ping_bytes as f64, 1.0, 65536.0, &mut p);
        in_range("ping-interval-ms", self.ping_interval_ms as f64, 1.0, 10_000.0, &mut p);
        if self.peers.contains(&PeerKind::Direct) {
            p.push("--peers: direct has no agent to put across the link (konnq, upstream)".into());
        }
        if !self.tcp_cc.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || self.tcp_cc.is_empty() {
            p.push(format!("--tcp-cc {:?}: not a congestion control name", self.tcp_cc));
        }
        if !p.is_empty() {
            bail!("invalid options:\n  {}", p.join("\n  "));
        }
        let cli = Cli::try_parse_from(["konnq-loadtest", "run"]).map_err(|e| anyhow::anyhow!("{e}"))?;
        let Command::Run(run) = cli.command else { unreachable!("parsed a run command") };
        let mut run = run.settings()?;
        run.konnq_bin = self.konnq_bin;
        run.frontend = self.frontend;
        self.peer_bins.apply(&mut run);
        let bdp = (self.rate_mbit * 1e6 / 8.0 * self.rtt_ms / 1e3) as u64;
        let mut peer_kinds = Vec::new();
        for k in self.peers {
            if !peer_kinds.contains(&k) {
                peer_kinds.push(k);
            }
        }
        let mut s = LabSettings {
            peers: peer_kinds.iter().map(|k| k.name()).collect(),
            peer_kinds,
            experiments: self.experiments,
            loss: self.loss,
            rtt_ms: self.rtt_ms,
            jitter_ms: self.jitter_ms,
            rate_mbit: self.rate_mbit,
            queue_bytes: self.queue_bytes.unwrap_or(bdp).max(16 * 1024),
            slow_reader_loss: self.slow_reader_loss,
            slow_reader_rounds: self.slow_reader_rounds,
            event_loss: self.event_loss,
            fairness_cc: self.fairness_cc,
            fairness_loss: self.fairness_loss,
            upload_loss: self.upload_loss,
            secs: self.secs,
            warmup_secs: self.warmup_secs,
            pings: self.pings,
            ping_bytes: self.ping_bytes,
            ping_interval_ms: self.ping_interval_ms,
            tcp_cc: self.tcp_cc,
            link_check: !self.no_link_check,
            smoke: self.smoke,
            out: self.out,
            run,
        };
        if s.smoke {
            s.peer_kinds = vec![PeerKind::Konnq];
            s.peers = vec!["konnq"];
            s.experiments = Experiment::ALL.to_vec();
            s.loss = vec![1.0];
            s.secs = 2.0;
            s.warmup_secs = 1.0;
            s.pings = 3;
            s.ping_interval_ms = 100;
            s.link_check = false;
            s.slow_reader_rounds = 1;
            s.fairness_cc.truncate(1);
            s.fairness_loss = vec![1.0];
            s.upload_loss = vec![1.0];
        }
        Ok(s)
    }
}

impl LabSettings {
    fn link(&self, loss_pct: f64) -> LinkSettings {
        let d = DirectionSettings {
            delay: Duration::from_secs_f64(self.rtt_ms / 2.0 / 1e3),
            jitter: Duration::from_secs_f64(self.jitter_ms / 1e3),
            loss: loss_pct / 100.0,
            rate_bps: Some((self.rate_mbit * 1e6) as u64),
            queue_bytes: Some(self.queue_bytes),
            ..DirectionSettings::default()
        };
        LinkSettings::symmetric(d)
    }

    fn spec(&self) -> String {
        let mut s = format!("delay={}ms", self.rtt_ms / 2.0);
        if self.jitter_ms > 0.0 {
            s += &format!(",jitter={}ms", self.jitter_ms);
        }
        s + &format!(",rate={}mbit,queue={}", self.rate_mbit, self.queue_bytes)
    }

    fn plan(&self, bulk: Option<Bulk>, stalled: bool) -> Plan {
        Plan {
            pings: self.pings,
            ping_bytes: self.ping_bytes,
            interval: Duration::from_millis(self.ping_interval_ms),
            bulk,
            stalled,
            warmup: Duration::from_secs_f64(self.warmup_secs),
            measure: Duration::from_secs_f64(self.secs),
        }
    }
}

/// What happens in the middle of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    None,
    MoveAgentAddress,
    RestartAgent,
    RestartServer,
}

struct Ctx<'a> {
    s: &'a LabSettings,
    lab: &'a Lab,
    env: &'a Env,
    progress: &'a Progress,
    report: &'a mut LabReport,
    /// Round of a repeated experiment (0: the first or only one).
    round: u32,
    /// A kernel TCP flow with this congestion control competes with the
    /// cell's traffic (fairness).
    competitor: Option<String>,
}

/// Runs the lab; returns the report (files not yet written).
pub async fn run(s: &LabSettings, command: Vec<String>) -> anyhow::Result<LabReport> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("konnq-loadtest lab needs root: it creates network namespaces and TUN devices (run it as root or with sudo)");
    }
    let wall = std::time::Instant::now();
    let loadavg_start = crate::machine::loadavg();
    crate::procfs::raise_fd_limit();
    let removed = konnq_netlab::cleanup_stale(NS_PREFIX)?;
    konnq_netlab::install_signal_cleanup().context("installing the clean-up signal handlers")?;
    let progress = Progress::new();
    if !removed.is_empty() {
        progress.note(&format!("removed namespaces a crashed run left behind: {}", removed.join(" ")));
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let printer = tokio::spawn(progress.clone().run(stopped));

    let first_loss = s.loss.first().copied().unwrap_or(0.0);
    let lab = Lab::create(NS_PREFIX, s.link(first_loss))?;
    let tcp_cc = tcp_congestion_control(&lab, &s.tcp_cc)?;
    let link = LinkInfo {
        spec: s.spec(),
        rtt_ms: s.rtt_ms,
        rate_mbit: s.rate_mbit,
        queue_bytes: s.queue_bytes,
        tcp_congestion_control: tcp_cc,
        check: None,
    };
    let mut report = LabReport { link, ..LabReport::default() };
    if s.link_check {
        let loss = s.loss.iter().copied().find(|&l| l > 0.0).unwrap_or(1.0);
        progress.stage(format!("checking the link at {loss}% loss"), Duration::from_secs(8));
        report.link.check = Some(check_link(&lab, s, loss)?);
    }

    let log_dir = s.out.join("logs");
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let work = tempfile::Builder::new().prefix("konnq-lab-").tempdir_in(std::env::temp_dir())?;
    let server_ip = lab.addr(Side::A);
    let certs = konnq_shared::certs::generate(&work.path().join("pki"), &[server_ip.to_string()])?;
    let exe = std::env::current_exe().context("locating this executable")?;
    let placement = LabPlacement {
        server_ns: Arc::new(lab.namespace_fd(Side::A)?),
        agent_ns: Arc::new(lab.namespace_fd(Side::B)?),
        server_ip,
    };
    // The targets listen on side B's loopback; the sink's count (uploads)
    // is read from there.
    crate::conn::set_client_netns(placement.agent_ns.clone())?;
    let max = Duration::from_secs(6 * 3600);
    let target_prog = Program::plain(exe.clone()).in_netns(placement.agent_ns.clone());
    let (target_proc, targets) =
        crate::target::start(&target_prog, &log_dir, max, std::net::Ipv4Addr::LOCALHOST.into()).await?;
    let env = Env {
        socket_dir: work.path().to_owned(),
        log_dir,
        certs,
        targets,
        frontend: s.run.frontend,
        lab: Some(placement),
    };
    let mut peers: Vec<(PeerKind, Binaries)> = Vec::new();
    for &kind in &s.peer_kinds {
        let (bins, info) = crate::runner::peer_binaries(kind, &s.run, &exe, &progress).await;
        progress.note(&format!(
            "{:<9} {}{}",
            kind.name(),
            if info.available { "" } else { "UNAVAILABLE: " },
            info.detail
        ));
        if let (true, Some(b)) = (info.available, bins) {
            peers.push((kind, b));
        }
        report.peers.push(info);
    }

    let mut ctx = Ctx { s, lab: &lab, env: &env, progress: &progress, report: &mut report, round: 0, competitor: None };
    for &e in &s.experiments {
        match e {
            Experiment::Hol => {
                for &loss in &s.loss {
                    for (kind, bins) in &peers {
                        ctx.cell(e, "", *kind, bins, loss, s.plan(Some(Bulk::Download), false), Action::None).await;
                    }
                }
            }
            Experiment::SlowReader => {
                // Round by round, so that a busy stretch of the host falls
                // on one round rather than on one peer or one variant.
                for round in 0..s.slow_reader_rounds {
                    ctx.round = round;
                    for (kind, bins) in &peers {
                        let loss = s.slow_reader_loss;
                        ctx.cell(e, "baseline", *kind, bins, loss, s.plan(None, false), Action::None).await;
                        ctx.cell(e, "stalled-reader", *kind, bins, loss, s.plan(None, true), Action::None).await;
                    }
                }
                ctx.round = 0;
            }
            Experiment::Migration => {
                for (kind, bins) in &peers {
                    let plan = s.plan(Some(Bulk::Download), false);
                    ctx.cell(e, "rebind", *kind, bins, s.event_loss, plan, Action::MoveAgentAddress).await;
                }
            }
            Experiment::Restart => {
                for (kind, bins) in &peers {
                    let plan = s.plan(None, false);
                    ctx.cell(e, "agent-restart", *kind, bins, s.event_loss, plan.clone(), Action::RestartAgent).await;
                    ctx.cell(e, "server-restart", *kind, bins, s.event_loss, plan, Action::RestartServer).await;
                }
            }
            Experiment::Fairness => {
                for cc in &s.fairness_cc {
                    for &loss in &s.fairness_loss {
                        for (kind, bins) in &peers {
                            ctx.competitor = Some(cc.clone());
                            let variant = format!("vs-{cc}");
                            ctx.cell(e, &variant, *kind, bins, loss, s.plan(Some(Bulk::Download), false), Action::None)
                                .await;
                        }
                    }
                }
                ctx.competitor = None;
            }
            Experiment::Upload => {
                for &loss in &s.upload_loss {
                    for (kind, bins) in &peers {
                        for (variant, way) in [("download", Bulk::Download), ("upload", Bulk::Upload)] {
                            ctx.cell(e, variant, *kind, bins, loss, s.plan(Some(way), false), Action::None).await;
                        }
                    }
                }
            }
        }
    }
    stop.send_replace(true);
    let _ = printer.await;
    target_proc.stop(Duration::from_secs(2)).await;
    drop(lab);

    report.targets = report::evaluate(&report);
    report.meta = report::LabMeta {
        date_utc: crate::machine::now_utc(),
        command,
        machine: crate::machine::describe(),
        revision: crate::machine::revision(),
        smoke: s.smoke,
        frontend: s.run.frontend.name().into(),
        settings: serde_json::to_value(s)?,
        wall_secs: wall.elapsed().as_secs_f64(),
        loadavg_start,
        loadavg_end: crate::machine::loadavg(),
    };
    Ok(report)
}

/// A kernel TCP flow from side B to side A (the direction of the bulk
/// download) with congestion control `cc`, sending as fast as it may until
/// `end`; its goodput in `[window_start, end)`, counted by the receiver.
async fn competing_flow(
    listener: Result<std::io::Result<std::net::TcpListener>, konnq_netlab::LabError>,
    b: std::io::Result<std::os::fd::OwnedFd>,
    cc: String,
    window_start: Instant,
    end: Instant,
) -> anyhow::Result<Competitor> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = listener?.context("listening in side A")?;
    let b = b.context("side B's namespace")?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let to = listener.local_addr()?;
    let fd = tokio::task::spawn_blocking(move || konnq_netlab::netns::tcp_socket_in(&b)).await??;
    socket2::SockRef::from(&fd).set_tcp_congestion(cc.as_bytes()).with_context(|| format!("TCP_CONGESTION {cc}"))?;
    let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
    let (sender, accepted) = tokio::join!(socket.connect(to), listener.accept());
    let (mut sender, (mut receiver, _)) = (sender.context("connecting")?, accepted.context("accepting")?);
    let received = std::sync::Arc::new(AtomicU64::new(0));
    let count = std::sync::Arc::clone(&received);
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 256 * 1024];
        while let Ok(Ok(n)) = tokio::time::timeout_at(end, receiver.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            count.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    let writer = tokio::spawn(async move {
        let chunk = vec![0x42u8; 64 * 1024];
        while let Ok(Ok(())) = tokio::time::timeout_at(end, sender.write_all(&chunk)).await {}
    });
    tokio::time::sleep_until(window_start).await;
    let at_start = received.load(Ordering::Relaxed);
    tokio::time::sleep_until(end).await;
    let bytes = received.load(Ordering::Relaxed) - at_start;
    writer.abort();
    reader.abort();
    let secs = end.duration_since(window_start).as_secs_f64();
    Ok(Competitor { cc, mbit_per_s: bytes as f64 * 8.0 / secs / 1e6 })
}

/// Sets (unless `want` is "inherit") and reads back the TCP congestion
/// control of both namespaces.
fn tcp_congestion_control(lab: &Lab, want: &str) -> anyhow::Result<String> {
    const KEY: &str = "net/ipv4/tcp_congestion_control";
    if want != "inherit" {
        for side in [Side::A, Side::B] {
            lab.set_sysctl(side, KEY, want).with_context(|| {
                let allowed =
                    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_allowed_congestion_control").unwrap_or_default();
                format!(
                    "setting TCP congestion control {want:?} in the lab (a network namespace may only use \
                     what net.ipv4.tcp_allowed_congestion_control of the host allows: {})",
                    allowed.trim()
                )
            })?;
        }
    }
    let read = lab.with_ns(Side::B, move || std::fs::read_to_string(format!("/proc/sys/{KEY}")))?;
    Ok(read.context("reading the lab's TCP congestion control")?.trim().to_owned())
}

/// Samples the link's counters and the machine's steal time every
/// [`workload::TIMELINE_BUCKET`] until `end`.
async fn sample_timeline(lab: &Lab, end: Instant) -> Vec<CellSample> {
    let mut samples = Vec::new();
    let (mut link, mut cpu) = (lab.stats(), crate::machine::cpu_times());
    let mut tick = tokio::time::interval(workload::TIMELINE_BUCKET);
    tick.tick().await;
    while Instant::now() < end {
        tick.tick().await;
        let (link_now, cpu_now) = (lab.stats(), crate::machine::cpu_times());
        samples.push(CellSample {
            a_to_b_bytes: link_now.a_to_b.received_bytes.saturating_sub(link.a_to_b.received_bytes),
            b_to_a_bytes: link_now.b_to_a.received_bytes.saturating_sub(link.b_to_a.received_bytes),
            dropped: link_now.dropped().saturating_sub(link.dropped()),
            steal_pct: crate::machine::steal_pct(cpu, cpu_now),
        });
        (link, cpu) = (link_now, cpu_now);
    }
    samples
}

/// Measures the link (RTT, loss, goodput) at `loss` percent, then restores it.
fn check_link(lab: &Lab, s: &LabSettings, loss: f64) -> anyhow::Result<LinkCheck> {
    lab.set_link(s.link(loss))?;
    let cfg = VerifyConfig { goodput_duration: Duration::from_secs(3), ..VerifyConfig::default() };
    let r = tokio::task::block_in_place(|| lab.verify(&cfg))?;
    Ok(LinkCheck {
        rtt_median_ms: r.rtt.median.as_secs_f64() * 1e3,
        rtt_expected_ms: r.expected_rtt.as_secs_f64() * 1e3,
        loss_set_pct: loss,
        loss_measured_pct: r.loss_a_to_b.loss_rate() * 100.0,
        goodput_mbit: r.goodput_a_to_b.as_ref().map(|g| g.bits_per_sec() / 1e6),
        goodput_expected_mbit: r.expected_goodput_bps.map(|b| b / 1e6),
        text: r.to_string(),
    })
}

impl Ctx<'_> {
    #[allow(clippy::too_many_arguments)]
    async fn cell(
        &mut self,
        e: Experiment,
        variant: &str,
        kind: PeerKind,
        bins: &Binaries,
        loss: f64,
        plan: Plan,
        action: Action,
    ) {
        let (round, tag_round) = match self.round {
            0 => (String::new(), String::new()),
            r => (format!(" #{}", r + 1), format!("-r{}", r + 1)),
        };
        let label = format!("{} {variant}{round} {} at {loss}% loss", e.name(), kind.name());
        let fail = |report: &mut LabReport, error: String| {
            report.errors.push(ScenarioError {
                scenario: format!("{} {variant}", e.name()),
                peer: kind.name().into(),
                error,
            })
        };
        if let Err(err) = self.lab.set_link(self.s.link(loss)) {
            fail(self.report, format!("setting the link: {err}"));
            return;
        }
        self.progress.stage(format!("starting {label}"), Duration::from_secs(30));
        let tag = format!("{}-{}{}-{}{}", e.name(), variant, loss, kind.name(), tag_round).replace('.', "_");
        let mut peer = match Peer::start(kind, Some(bins), self.env, &tag).await {
            Ok(p) => p,
            Err(err) => {
                self.progress.note(&format!("{label}: start failed: {err:#}"));
                fail(self.report, format!("start: {err:#}"));
                return;
            }
        };
        let before = self.lab.stats();
        let cpu_before = crate::machine::cpu_times();
        let planned = plan.warmup + plan.measure;
        self.progress.stage(label.clone(), planned);
        let running = workload::start(&peer.dialer, self.env.targets, &plan);
        let competing = self.competitor.clone().map(|cc| {
            let listener = self.lab.with_ns(Side::A, || std::net::TcpListener::bind((Side::A.addr(), 0)));
            let ns = self.lab.namespace_fd(Side::B);
            tokio::spawn(competing_flow(listener, ns, cc, running.window_start, running.end))
        });
        let sampler = sample_timeline(self.lab, running.end);
        let work = async {
            let event = match action {
                Action::None => None,
                _ => {
                    let at = running.window_start + plan.measure / 3;
                    tokio::time::sleep_until(at).await;
                    Some(self.act(action, &mut peer, running.window_start).await)
                }
            };
            (event, running.finish().await)
        };
        let ((event, outcome), timeline) = tokio::join!(work, sampler);
        let competitor = match competing {
            None => None,
            Some(task) => match task.await.map_err(anyhow::Error::from).and_then(|r| r) {
                Ok(c) => Some(c),
                Err(err) => {
                    fail(self.report, format!("competing TCP flow: {err:#}"));
                    None
                }
            },
        };
        let after = self.lab.stats();
        let steal_pct = crate::machine::steal_pct(cpu_before, crate::machine::cpu_times());
        let offered = (after.a_to_b.received + after.b_to_a.received)
            .saturating_sub(before.a_to_b.received + before.b_to_a.received);
        let dropped = after.dropped().saturating_sub(before.dropped());
        let event = event.map(|ev| summarize_event(ev, &outcome));
        if let Err(err) = peer.check_alive() {
            fail(self.report, format!("{err:#}"));
        }
        peer.stop().await;
        self.progress.note(&format!(
            "{label}: ping p50 {:.1} ms p99 {:.1} ms, {} failed{}",
            outcome.ping.p50_us / 1e3,
            outcome.ping.p99_us / 1e3,
            outcome.pings_failed,
            outcome.bulk_mbit_per_s.map_or(String::new(), |m| format!(", bulk {m:.2} Mbit/s"))
        ));
        self.report.cells.push(Cell {
            experiment: e.name().into(),
            variant: variant.into(),
            peer: kind.name().into(),
            loss_pct: loss,
            link_drop_pct: if offered > 0 { dropped as f64 * 100.0 / offered as f64 } else { 0.0 },
            steal_pct,
            outcome,
            event,
            timeline,
            round: self.round,
            competitor,
        });
    }

    /// Performs `action` on the running peer; returns what it observed.
    async fn act(&mut self, action: Action, peer: &mut Peer, window_start: Instant) -> EventOutcome {
        let at = Instant::now();
        let mut ev = EventOutcome { at_secs: (at - window_start).as_secs_f64(), ..EventOutcome::default() };
        match action {
            Action::None => {}
            Action::MoveAgentAddress => match peer.kind {
                PeerKind::Konnq => {
                    ev.action = "agent moves to a new UDP port (SIGUSR1: QUIC migration)".into();
                    if let Some(a) = peer.agent.as_mut() {
                        a.signal(libc::SIGUSR1);
                    }
                }
                _ => {
                    ev.action =
                        "agent's TCP connection destroyed (ss -K: a TCP connection cannot change address)".into();
                    ev.detail = self.kill_agent_tcp(peer.agent_port);
                }
            },
            Action::RestartAgent | Action::RestartServer => {
                let (who, proc) = if action == Action::RestartAgent {
                    ("agent", peer.agent.as_mut())
                } else {
                    ("server", peer.server.as_mut())
                };
                ev.action = format!("{who} restarted (SIGTERM, then started again)");
                match proc {
                    Some(p) => match restart(p).await {
                        Ok(()) => ev.ready_after_secs = ready_again(&peer.dialer, self.env.targets, at).await,
                        Err(e) => ev.detail = format!("restart failed: {e:#}"),
                    },
                    None => ev.detail = "no process".into(),
                }
            }
        }
        ev
    }

    /// `ss -K` on the agent's connection to the server, inside the agent's namespace.
    fn kill_agent_tcp(&self, port: u16) -> String {
        let mut cmd = std::process::Command::new("ss");
        cmd.args(["-K", "dst", &self.env.lab.as_ref().map_or(Ipv4Addr::LOCALHOST, |l| l.server_ip).to_string()])
            .args(["dport", "=", &port.to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let out = match self.lab.run_in(Side::B, cmd) {
            Ok(child) => child.wait_with_output().map_err(|e| format!("waiting for ss: {e}")),
            Err(e) => Err(e.to_string()),
        };
        match out {
            Ok(out) => {
                let killed = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("tcp")).count();
                format!("ss -K destroyed {killed} socket(s)")
            }
            Err(e) => format!("ss -K failed: {e}"),
        }
    }
}

/// SIGTERM, at most 5 s for a graceful exit (then SIGKILL), then the same
/// command again.
async fn restart(p: &mut ChildProc) -> anyhow::Result<()> {
    p.signal(libc::SIGTERM);
    if !p.wait_exit(Duration::from_secs(5)).await {
        p.signal(libc::SIGKILL);
        if !p.wait_exit(Duration::from_secs(5)).await {
            bail!("{} did not exit", p.name);
        }
    }
    p.respawn()
}

/// Seconds from `since` until a new proxied connection completes an
/// exchange; `None` if that does not happen within a minute.
async fn ready_again(dialer: &Dialer, targets: Targets, since: Instant) -> Option<f64> {
    let deadline = since + Duration::from_secs(60);
    while Instant::now() < deadline {
        if crate::peers::probe_exchange(dialer, targets).await.is_ok() {
            return Some((Instant::now() - since).as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Fills in how the clients fared after the action.
fn summarize_event(mut ev: EventOutcome, o: &Outcome) -> EventOutcome {
    let after: Vec<_> = o.endings.iter().filter(|e| e.at_secs >= ev.at_secs).collect();
    ev.clean_errors = after.iter().filter(|e| !e.timed_out).count();
    ev.hung = after.iter().filter(|e| e.timed_out).count();
    ev.last_error_after_secs = after.iter().map(|e| e.at_secs - ev.at_secs).reduce(f64::max);
    if !o.bulk_timeline.is_empty() {
        // Buckets are counted from the start of warm-up.
        let bucket = workload::TIMELINE_BUCKET.as_secs_f64();
        let first = ((ev.at_secs + o.warmup_secs) / bucket).ceil() as usize;
        let n = (2.0 / bucket).round() as usize;
        ev.bulk_bytes_after = Some(o.bulk_timeline.iter().skip(first).take(n).sum());
    }
    if let Some(e) = after.first() {
        if ev.detail.is_empty() {
            ev.detail = format!("first error: {}", e.error);
        } else {
            ev.detail += &format!("; first error: {}", e.error);
        }
    }
    ev
}

/// `lab`, then the files, the table on stdout; for a smoke run, an error
/// unless every experiment produced figures.
pub async fn main(s: LabSettings, command: Vec<String>) -> anyhow::Result<()> {
    let report = run(&s, command).await?;
    let files = report::write(&report, &s.out)?;
    println!("{}", report::render(&report));
    println!("wrote {}", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "));
    if s.smoke {
        let problems = smoke_problems(&report);
        if !problems.is_empty() {
            bail!("lab smoke run incomplete:\n  {}", problems.join("\n  "));
        }
        println!("lab smoke: every experiment produced figures");
    }
    Ok(())
}

/// What a smoke run must have produced (empty = the lab works).
pub fn smoke_problems(r: &LabReport) -> Vec<String> {
    let mut p = Vec::new();
    let find = |e: &str, v: &str| r.cells.iter().find(|c| c.experiment == e && c.variant == v);
    for (e, v) in [
        ("hol", ""),
        ("slow-reader", "baseline"),
        ("slow-reader", "stalled-reader"),
        ("migration", "rebind"),
        ("restart", "agent-restart"),
        ("restart", "server-restart"),
    ] {
        match find(e, v) {
            None => p.push(format!("{e} {v}: no figures")),
            Some(c) if c.outcome.pings_ok == 0 => p.push(format!("{e} {v}: no ping answered")),
            Some(_) => {}
        }
    }
    let fair = r.cells.iter().find(|c| c.experiment == "fairness");
    match fair {
        None => p.push("fairness: no figures".into()),
        Some(c) if c.competitor.as_ref().is_none_or(|x| x.mbit_per_s <= 0.0) => {
            p.push("fairness: the competing TCP flow moved nothing".into())
        }
        Some(c) if c.outcome.bulk_mbit_per_s.is_none_or(|m| m <= 0.0) => {
            p.push("fairness: no bulk goodput beside the competing flow".into())
        }
        Some(_) => {}
    }
    if find("hol", "").and_then(|c| c.outcome.bulk_mbit_per_s).is_none_or(|m| m <= 0.0) {
        p.push("hol: no bulk goodput".into());
    }
    for v in ["download", "upload"] {
        if find("upload", v).and_then(|c| c.outcome.bulk_mbit_per_s).is_none_or(|m| m <= 0.0) {
            p.push(format!("upload {v}: no bulk goodput"));
        }
    }
    for v in ["agent-restart", "server-restart"] {
        if find("restart", v).and_then(|c| c.event.as_ref()?.ready_after_secs).is_none() {
            p.push(format!("restart {v}: never ready again"));
        }
    }
    for e in &r.errors {
        p.push(format!("{} {}: {}", e.scenario, e.peer, e.error));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab(args: &[&str]) -> anyhow::Result<LabSettings> {
        let cli = Cli::try_parse_from(["konnq-loadtest", "lab"].iter().chain(args))?;
        match cli.command {
            Command::Lab(a) => a.settings(),
            other => bail!("unexpected {other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_experiment_of_the_issue() {
        let s = lab(&[]).unwrap();
        assert_eq!(s.peers, ["konnq", "upstream"]);
        assert_eq!(s.loss, [0.0, 1.0, 2.0, 5.0]);
        assert_eq!((s.rtt_ms, s.rate_mbit, s.pings, s.ping_bytes), (50.0, 100.0, 10, 1024));
        assert_eq!(s.queue_bytes, 625_000, "one bandwidth-delay product");
        assert_eq!(s.experiments, Experiment::ALL);
        let link = s.link(2.0);
        assert_eq!(link.a_to_b.delay, Duration::from_millis(25));
        assert_eq!(link.b_to_a.loss, 0.02);
        assert_eq!(link.a_to_b.rate_bps, Some(100_000_000));
    }

    #[test]
    fn bad_options_are_named() {
        for (args, key) in [
            (&["--loss", "0,120"][..], "--loss"),
            (&["--peers", "konnq,direct"], "--peers"),
            (&["--rtt-ms=-1"], "--rtt-ms"),
            (&["--tcp-cc", "cu bic"], "--tcp-cc"),
            (&["--pings", "0"], "--pings"),
        ] {
            let err = lab(args).unwrap_err().to_string();
            assert!(err.contains(key), "{args:?}: {err}");
        }
        assert!(lab(&["--experiments", "hol,teleport"]).is_err());
    }

    #[test]
    fn smoke_is_small_and_konnq_only() {
        let s = lab(&["--smoke", "--experiments", "hol"]).unwrap();
        assert_eq!(s.peers, ["konnq"]);
        assert_eq!(s.experiments, Experiment::ALL, "a smoke run proves every experiment works");
        assert!(s.secs <= 2.0 && s.loss.len() == 1);
        assert!(!s.link_check);
    }

    #[test]
    fn event_summary_counts_what_ended_after_the_action() {
        use workload::Ending;
        let mut o = report::tests_support::outcome();
        o.endings = vec![
            Ending { at_secs: 1.0, timed_out: false, error: "before".into() },
            Ending { at_secs: 3.5, timed_out: false, error: "closed".into() },
            Ending { at_secs: 8.0, timed_out: true, error: "no answer".into() },
        ];
        o.bulk_timeline = vec![10; 40];
        let ev = summarize_event(EventOutcome { at_secs: 3.0, ..EventOutcome::default() }, &o);
        assert_eq!((ev.clean_errors, ev.hung), (1, 1));
        assert_eq!(ev.last_error_after_secs, Some(5.0));
        assert_eq!(ev.bulk_bytes_after, Some(40), "2 s of 0.5 s buckets");
        assert!(ev.detail.contains("closed"), "{}", ev.detail);
    }
}
