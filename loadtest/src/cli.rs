//! Command line: `run`, `smoke`, `lab`, `roll`, `agents`, `fleet`, and the hidden
//! subcommands the runner uses for its own child processes (`target`,
//! `builtin-server`, `builtin-agent`).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::conn::Frontend;
use crate::peers::PeerKind;
use crate::settings::{self, KonnqBin, Mode, Scenario, Settings};

#[derive(Debug, Parser)]
#[command(name = "konnq-loadtest", about = "Load tests konnq against upstream apiserver-network-proxy and direct TCP")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run scenarios against peers; writes results.json, summary.txt and SVG charts to --out.
    Run(Box<RunArgs>),
    /// Lossy-link lab (needs root): konnq and upstream with the agent across an
    /// impaired link; writes lab.json, lab-summary.txt and SVG charts to --out.
    Lab(Box<crate::lab::LabArgs>),
    /// Rolling restarts and crashes: 3 servers behind nginx, 3 agents, one
    /// client per server; agents then servers restarted one at a time, then
    /// a server and an agent SIGKILLed; every dial recorded. Writes
    /// results.json, summary.txt, dials.csv and logs/ to --out.
    Roll(Box<crate::roll::RollArgs>),
    /// CI smoke run: konnq only, every scenario at a tiny size, a few seconds;
    /// fails unless every scenario produced figures.
    Smoke(SmokeArgs),
    /// Reconnect storm: one agent per token (simulated from this process)
    /// connects to a konnq-server at once; reports how long until every one
    /// is admitted and what the server refused on the way.
    Agents(crate::agents::AgentsArgs),
    /// Thousands of agents on one server: N agents simulated from this
    /// process, each with its own connection and socket, against konnq's
    /// and upstream's server; reports RSS per agent, idle CPU and how long
    /// until all are admitted, at start and after a server restart.
    Fleet(Box<crate::fleet::FleetArgs>),
    /// (internal) Serve the echo and source targets.
    #[command(hide = true)]
    Target {
        #[arg(long, default_value_t = 7200)]
        max_secs: u64,
        /// Address the targets listen on.
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
    },
    /// (internal) Run konnq-server from the linked library, with konnq-server's flags.
    #[command(hide = true, name = "builtin-server")]
    BuiltinServer {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// (internal) Run konnq-agent from the linked library, with konnq-agent's flags.
    #[command(hide = true, name = "builtin-agent")]
    BuiltinAgent {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

#[derive(Debug, Args)]
pub struct Common {
    /// Output directory for results.json, summary.txt, charts and logs.
    #[arg(long, default_value = "target/loadtest")]
    pub out: PathBuf,
    /// konnq binaries: a directory with konnq-server and konnq-agent, "builtin"
    /// (konnq's libraries linked into this executable), or "auto" (beside this executable, else builtin).
    #[arg(long, default_value = "auto")]
    pub konnq_bin: KonnqBin,
    /// Client frontend: grpc (new HTTP/2 connection per dial, as kube-apiserver),
    /// grpc-shared (many streams per HTTP/2 connection), http-connect.
    #[arg(long, default_value = "grpc")]
    pub frontend: Frontend,
}

/// Where the peers' programs come from, and extra flags for konnq's.
#[derive(Debug, Args)]
pub struct PeerBinArgs {
    /// Directory with prebuilt upstream proxy-server and proxy-agent (skips go build).
    #[arg(long)]
    pub upstream_bin: Option<PathBuf>,
    /// Our Go module that requires upstream [default: loadtest/upstream of this source tree].
    #[arg(long)]
    pub upstream_module: Option<PathBuf>,
    /// Where go build puts upstream's binaries [default: target/upstream].
    #[arg(long)]
    pub upstream_build_dir: Option<PathBuf>,
    /// Extra flag for konnq-server, e.g. --konnq-server-flag=--config=tuned.toml (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    pub konnq_server_flag: Vec<String>,
    /// Extra flag for konnq-agent (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    pub konnq_agent_flag: Vec<String>,
}

impl PeerBinArgs {
    /// Puts these choices into `s`.
    pub fn apply(self, s: &mut Settings) {
        s.upstream_bin = self.upstream_bin;
        s.upstream_module = self.upstream_module.unwrap_or_else(crate::upstream::module_dir);
        s.upstream_build_dir = self.upstream_build_dir.unwrap_or_else(crate::upstream::default_build_dir);
        s.konnq_server_flags = self.konnq_server_flag;
        s.konnq_agent_flags = self.konnq_agent_flag;
    }
}

#[derive(Debug, Args)]
pub struct SmokeArgs {
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: Common,
    /// Peers, side by side in the same run.
    #[arg(long, value_delimiter = ',', default_value = "konnq,upstream,direct")]
    pub peers: Vec<PeerKind>,
    #[arg(long, value_delimiter = ',', default_value = "throughput,latency,dial,scale,soak")]
    pub scenarios: Vec<Scenario>,
    /// Use the tiny smoke sizes (and only konnq).
    #[arg(long)]
    pub smoke: bool,
    /// Latency and dial run in this many rounds, peers alternating (each round gets secs / rounds).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    #[command(flatten)]
    pub peer_bins: PeerBinArgs,
    /// Put the agent↔server hop on a veth pair of this MTU between two
    /// network namespaces (needs root): server on one side, agent and
    /// targets on the other, `direct` connecting across the same link. A
    /// realistic MTU (1500, or 9001 for cloud jumbo frames) where loopback's
    /// 64 KiB flatters per-packet costs. Default: loopback.
    #[arg(long, value_name = "MTU")]
    pub veth_mtu: Option<u32>,

    /// Throughput: concurrent connections per cell.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    pub tp_conns: Vec<usize>,
    /// Throughput: oneway (target → client), echo and/or upload (client → target, counted at the target).
    #[arg(long, value_delimiter = ',', default_value = "oneway,echo")]
    pub tp_modes: Vec<Mode>,
    #[arg(long, default_value_t = 5.0)]
    pub tp_secs: f64,
    #[arg(long, default_value_t = 1.0)]
    pub tp_warmup_secs: f64,
    /// Bytes per write (one DATA packet each through a gRPC tunnel).
    #[arg(long, default_value_t = 32 * 1024)]
    pub tp_chunk_bytes: usize,
    /// Echo: most bytes in flight per connection.
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    pub tp_window_bytes: usize,
    /// Upload: most bytes the clients of one cell write in all (the cell also ends at its time).
    #[arg(long, default_value_t = 32 << 30)]
    pub tp_max_bytes: u64,
    /// Throughput: seconds to wait after a cell's connections closed before reading RSS "after".
    #[arg(long, default_value_t = 0.0)]
    pub tp_settle_secs: f64,
    /// Throughput: sample the server and agent with `perf record` (needs
    /// perf and root) over each cell's measured window, keep the recordings
    /// (with call graphs) in this directory and split each cell's CPU per GB
    /// by component (crypto, copies, QUIC, HTTP/2, kernel network stack, ...).
    #[arg(long, value_name = "DIR")]
    pub perf: Option<PathBuf>,

    /// Latency: offered request rate (open loop), requests per second.
    #[arg(long, default_value_t = 2000.0)]
    pub lat_rate: f64,
    #[arg(long, default_value_t = 32)]
    pub lat_conns: usize,
    #[arg(long, default_value_t = 15.0)]
    pub lat_secs: f64,
    #[arg(long, default_value_t = 2.0)]
    pub lat_warmup_secs: f64,
    /// Request and response size.
    #[arg(long, default_value_t = 1024)]
    pub lat_bytes: usize,

    /// Dial: connections in flight at once.
    #[arg(long, default_value_t = 32)]
    pub dial_concurrency: usize,
    #[arg(long, default_value_t = 10.0)]
    pub dial_secs: f64,
    #[arg(long, default_value_t = 1.0)]
    pub dial_warmup_secs: f64,
    /// Size of the one exchange each dialed connection makes.
    #[arg(long, default_value_t = 100)]
    pub dial_bytes: usize,
    /// Dial open loop: start this many connections per second on a fixed
    /// schedule, whatever the answers' latency, instead of
    /// `dial-concurrency` closed-loop workers (at most 4,096 in flight; a
    /// start the cap refuses counts as an error).
    #[arg(long, value_name = "PER_SECOND")]
    pub dial_rate: Option<f64>,
    /// Dial: the load generator. rust (konnq-loadtest's own client: the
    /// server's capacity) or go (kube-apiserver's client library,
    /// konnectivity-client over grpc-go, built from loadtest/upstream:
    /// what kube-apiserver sees; closed loop only).
    #[arg(long, default_value = "rust")]
    pub dial_client: settings::DialClient,

    /// Scale: idle proxied connections to hold (at most 10,000).
    #[arg(long, default_value_t = 10_000)]
    pub scale_conns: u64,
    /// Scale: dials in flight during the ramp.
    #[arg(long, default_value_t = 64)]
    pub scale_parallel: usize,
    #[arg(long, default_value_t = 3.0)]
    pub scale_settle_secs: f64,
    #[arg(long, default_value_t = 180.0)]
    pub scale_max_ramp_secs: f64,

    /// Soak: duration in seconds.
    #[arg(long, default_value_t = 600.0)]
    pub soak_secs: f64,
    /// Soak: webhook-like dials per second (open loop).
    #[arg(long, default_value_t = 300.0)]
    pub soak_dial_rate: f64,
    /// Soak: long-lived connections doing request/response alongside.
    #[arg(long, default_value_t = 8)]
    pub soak_streams: usize,
    #[arg(long, default_value_t = 100)]
    pub soak_stream_interval_ms: u64,
    /// Soak: samples before this are left out of the growth figures (allocators and pools fill up first).
    #[arg(long, default_value_t = 60.0)]
    pub soak_warmup_secs: f64,
    #[arg(long, default_value_t = 1.0)]
    pub soak_sample_secs: f64,
    #[arg(long, default_value_t = 256)]
    pub soak_max_in_flight: usize,
}

impl RunArgs {
    /// The validated settings.
    pub fn settings(self) -> anyhow::Result<Settings> {
        let mut peer_kinds = Vec::new();
        for p in self.peers {
            if !peer_kinds.contains(&p) {
                peer_kinds.push(p);
            }
        }
        let mut s = Settings {
            peers: peer_kinds.iter().map(|p| p.name()).collect(),
            peer_kinds,
            scenarios: self.scenarios,
            frontend: self.common.frontend,
            out: self.common.out,
            konnq_bin: self.common.konnq_bin,
            upstream_bin: None,
            upstream_module: PathBuf::new(),
            upstream_build_dir: PathBuf::new(),
            konnq_server_flags: Vec::new(),
            konnq_agent_flags: Vec::new(),
            smoke: false,
            rounds: self.rounds,
            veth_mtu: self.veth_mtu,
            throughput: settings::Throughput {
                conns: self.tp_conns,
                modes: self.tp_modes,
                secs: self.tp_secs,
                warmup_secs: self.tp_warmup_secs,
                chunk_bytes: self.tp_chunk_bytes,
                window_bytes: self.tp_window_bytes,
                max_bytes: self.tp_max_bytes,
                settle_secs: self.tp_settle_secs,
                perf_dir: self.perf,
            },
            latency: settings::Latency {
                rate: self.lat_rate,
                conns: self.lat_conns,
                secs: self.lat_secs,
                warmup_secs: self.lat_warmup_secs,
                bytes: self.lat_bytes,
            },
            dial: settings::Dial {
                concurrency: self.dial_concurrency,
                secs: self.dial_secs,
                warmup_secs: self.dial_warmup_secs,
                bytes: self.dial_bytes,
                rate: self.dial_rate,
                client: self.dial_client,
            },
            scale: settings::Scale {
                conns: self.scale_conns,
                parallel: self.scale_parallel,
                settle_secs: self.scale_settle_secs,
                max_ramp_secs: self.scale_max_ramp_secs,
            },
            soak: settings::Soak {
                secs: self.soak_secs,
                dial_rate: self.soak_dial_rate,
                streams: self.soak_streams,
                stream_interval_ms: self.soak_stream_interval_ms,
                warmup_secs: self.soak_warmup_secs,
                sample_secs: self.soak_sample_secs,
                max_in_flight: self.soak_max_in_flight,
                bytes: self.lat_bytes,
            },
        };
        self.peer_bins.apply(&mut s);
        if self.smoke {
            s.smoke_preset();
        }
        let problems = s.problems();
        if !problems.is_empty() {
            anyhow::bail!("invalid options:\n  {}", problems.join("\n  "));
        }
        Ok(s)
    }
}

impl SmokeArgs {
    pub fn settings(self) -> anyhow::Result<Settings> {
        let cli = Cli::try_parse_from(["konnq-loadtest", "run", "--smoke"]).map_err(|e| anyhow::anyhow!("{e}"))?;
        let Command::Run(mut run) = cli.command else { unreachable!("parsed a run command") };
        run.common = self.common;
        run.settings()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> anyhow::Result<Settings> {
        let cli = Cli::try_parse_from(std::iter::once("konnq-loadtest").chain(args.iter().copied()))?;
        match cli.command {
            Command::Run(r) => r.settings(),
            Command::Smoke(s) => s.settings(),
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }

    #[test]
    fn dial_client_is_chosen_by_name() {
        assert_eq!(run(&["run"]).unwrap().dial.client, settings::DialClient::Rust);
        assert_eq!(run(&["run", "--dial-client", "go"]).unwrap().dial.client, settings::DialClient::Go);
        let err = run(&["run", "--dial-client", "java"]).unwrap_err().to_string();
        assert!(err.contains("unknown dial client"), "{err}");
    }

    #[test]
    fn defaults_are_the_issue_sizes() {
        let s = run(&["run"]).unwrap();
        assert_eq!(s.peers, ["konnq", "upstream", "direct"]);
        assert_eq!(s.throughput.conns, [1, 8, 64]);
        assert_eq!(s.latency.rate, 2000.0);
        assert_eq!(s.dial.concurrency, 32);
        assert_eq!(s.scale.conns, 10_000);
        assert_eq!((s.soak.secs, s.soak.dial_rate), (600.0, 300.0));
        assert_eq!(s.frontend, Frontend::Grpc);
    }

    #[test]
    fn lists_and_options_parse() {
        let s = run(&[
            "run",
            "--peers",
            "konnq,direct",
            "--scenarios",
            "dial",
            "--soak-secs",
            "120",
            "--frontend",
            "grpc-shared",
        ])
        .unwrap();
        assert_eq!(s.peer_kinds, [PeerKind::Konnq, PeerKind::Direct]);
        assert_eq!(s.scenarios, [Scenario::Dial]);
        assert_eq!(s.soak.secs, 120.0);
        assert_eq!(s.frontend, Frontend::GrpcShared);
        let s = run(&["run", "--konnq-server-flag=--config=/x.toml", "--konnq-agent-flag", "-v=2"]).unwrap();
        assert_eq!(s.konnq_server_flags, ["--config=/x.toml"]);
        assert_eq!(s.konnq_agent_flags, ["-v=2"]);
        assert!(run(&["run", "--peers", "istio"]).is_err());
        let err = run(&["run", "--scale-conns", "50000"]).unwrap_err().to_string();
        assert!(err.contains("--scale-conns"), "{err}");
    }

    #[test]
    fn smoke_is_konnq_only_and_tiny() {
        let s = run(&["smoke", "--konnq-bin", "builtin", "--out", "/tmp/x"]).unwrap();
        assert!(s.smoke);
        assert_eq!(s.peers, ["konnq"]);
        assert_eq!(s.konnq_bin, KonnqBin::Builtin);
        assert_eq!(s.out, PathBuf::from("/tmp/x"));
        assert!(s.soak.secs <= 5.0 && s.scale.conns <= 100);
    }

    #[test]
    fn builtin_takes_raw_flags() {
        let cli = Cli::try_parse_from(["konnq-loadtest", "builtin-server", "--uds-name", "/x.sock", "-v=2"]).unwrap();
        match cli.command {
            Command::BuiltinServer { args } => assert_eq!(args, ["--uds-name", "/x.sock", "-v=2"]),
            other => panic!("{other:?}"),
        }
    }
}
