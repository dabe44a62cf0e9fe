//! What a run does: peers, scenarios and their sizes, validated before
//! anything starts. Every scenario is bounded in time and count.

use std::path::PathBuf;

use serde::Serialize;

use crate::conn::Frontend;
use crate::peers::PeerKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    Throughput,
    Latency,
    Dial,
    Scale,
    Soak,
}

impl Scenario {
    pub const ALL: [Scenario; 5] =
        [Scenario::Throughput, Scenario::Latency, Scenario::Dial, Scenario::Scale, Scenario::Soak];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Throughput => "throughput",
            Scenario::Latency => "latency",
            Scenario::Dial => "dial",
            Scenario::Scale => "scale",
            Scenario::Soak => "soak",
        }
    }
}

impl std::str::FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scenario::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| format!("unknown scenario {s:?} (throughput, latency, dial, scale, soak)"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Target → client stream.
    Oneway,
    /// Client → target → client.
    Echo,
    /// Client → target, counted where it arrives (the sink target).
    Upload,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "oneway" => Ok(Mode::Oneway),
            "echo" => Ok(Mode::Echo),
            "upload" => Ok(Mode::Upload),
            _ => Err(format!("unknown throughput mode {s:?} (oneway, echo, upload)")),
        }
    }
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Oneway => "oneway",
            Mode::Echo => "echo",
            Mode::Upload => "upload",
        }
    }
}

/// Which konnq binaries run as the `konnq` peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KonnqBin {
    /// konnq-server / konnq-agent beside this executable if both are there, else built-in.
    Auto,
    /// This executable re-run as `builtin-server` / `builtin-agent` (konnq's libraries linked in).
    Builtin,
    Dir(PathBuf),
}

impl std::str::FromStr for KonnqBin {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => KonnqBin::Auto,
            "builtin" => KonnqBin::Builtin,
            dir => KonnqBin::Dir(PathBuf::from(dir)),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub conns: Vec<usize>,
    pub modes: Vec<Mode>,
    pub secs: f64,
    pub warmup_secs: f64,
    pub chunk_bytes: usize,
    /// Echo: most bytes one connection has in flight.
    pub window_bytes: usize,
    /// Upload: most bytes the clients of one cell write in all.
    pub max_bytes: u64,
    /// Wait this long after a cell's connections closed before reading the
    /// server's and agent's RSS "after" (konnq returns freed memory to the
    /// OS every 10 s).
    pub settle_secs: f64,
    /// Sample the server and agent with `perf record` over each cell's
    /// measured window, keep the recordings here and split the cell's CPU
    /// per GB by component.
    pub perf_dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub rate: f64,
    pub conns: usize,
    pub secs: f64,
    pub warmup_secs: f64,
    pub bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Dial {
    pub concurrency: usize,
    pub secs: f64,
    pub warmup_secs: f64,
    pub bytes: usize,
    /// Open loop at this many connections per second (None: closed loop).
    pub rate: Option<f64>,
    /// Who makes the dials.
    pub client: DialClient,
}

/// The dial scenario's load generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DialClient {
    /// konnq-loadtest's own client (Rust, tonic): the server's capacity,
    /// with the least client CPU in the way.
    Rust,
    /// kube-apiserver's client library (konnectivity-client over grpc-go,
    /// the version the upstream peer is built with), as
    /// `konnq-dialclient` (`loadtest/upstream/dialclient`): what
    /// kube-apiserver sees.
    Go,
}

impl DialClient {
    pub fn name(self) -> &'static str {
        match self {
            DialClient::Rust => "konnq-loadtest (Rust)",
            DialClient::Go => "konnectivity-client (Go)",
        }
    }
}

impl std::str::FromStr for DialClient {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rust" => Ok(DialClient::Rust),
            "go" => Ok(DialClient::Go),
            _ => Err(format!("unknown dial client {s:?} (rust, go)")),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Scale {
    pub conns: u64,
    pub parallel: usize,
    pub settle_secs: f64,
    pub max_ramp_secs: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Soak {
    pub secs: f64,
    pub dial_rate: f64,
    pub streams: usize,
    pub stream_interval_ms: u64,
    pub warmup_secs: f64,
    pub sample_secs: f64,
    pub max_in_flight: usize,
    pub bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub peers: Vec<&'static str>,
    pub scenarios: Vec<Scenario>,
    #[serde(skip)]
    pub peer_kinds: Vec<PeerKind>,
    #[serde(serialize_with = "frontend_name")]
    pub frontend: Frontend,
    pub out: PathBuf,
    pub konnq_bin: KonnqBin,
    pub upstream_bin: Option<PathBuf>,
    pub upstream_module: PathBuf,
    pub upstream_build_dir: PathBuf,
    /// Extra flags appended to konnq-server's / konnq-agent's (tuning experiments).
    pub konnq_server_flags: Vec<String>,
    pub konnq_agent_flags: Vec<String>,
    pub smoke: bool,
    /// Latency and dial run in this many rounds, peers alternating.
    pub rounds: u32,
    /// The agent↔server hop on a veth pair of this MTU; `None`: loopback.
    pub veth_mtu: Option<u32>,
    pub throughput: Throughput,
    pub latency: Latency,
    pub dial: Dial,
    pub scale: Scale,
    pub soak: Soak,
}

fn frontend_name<S: serde::Serializer>(f: &Frontend, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(f.name())
}

/// Upper bounds that keep every run finite and on this machine's scale.
pub const MAX_SCALE_CONNS: u64 = 10_000;
pub const MAX_SECS: f64 = 24.0 * 3600.0;
pub const MAX_CONNS: usize = 1024;
/// Most bytes one upload cell may write (1 TiB).
pub const MAX_UPLOAD_BYTES: u64 = 1 << 40;

impl Settings {
    /// The tiny sizes of the CI smoke run: konnq only, a few seconds in all.
    pub fn smoke_preset(&mut self) {
        self.smoke = true;
        self.peer_kinds = vec![PeerKind::Konnq];
        self.peers = vec!["konnq"];
        self.scenarios = Scenario::ALL.to_vec();
        self.rounds = 1;
        self.throughput = Throughput {
            conns: vec![1, 4],
            modes: vec![Mode::Oneway, Mode::Echo, Mode::Upload],
            secs: 0.4,
            warmup_secs: 0.1,
            settle_secs: 0.0,
            ..self.throughput.clone()
        };
        self.latency = Latency { rate: 200.0, conns: 4, secs: 0.6, warmup_secs: 0.2, bytes: 1024 };
        self.dial = Dial {
            concurrency: 4,
            secs: 0.5,
            warmup_secs: 0.1,
            bytes: 100,
            rate: self.dial.rate,
            client: self.dial.client,
        };
        self.scale = Scale { conns: 50, parallel: 16, settle_secs: 0.3, max_ramp_secs: 20.0 };
        self.soak = Soak {
            secs: 2.0,
            dial_rate: 50.0,
            streams: 2,
            stream_interval_ms: 50,
            warmup_secs: 0.5,
            sample_secs: 0.25,
            max_in_flight: 32,
            bytes: 1024,
        };
    }

    /// Every problem with the settings, each naming its option.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let mut secs = |name: &str, v: f64, zero_ok: bool| {
            if !(v.is_finite() && (v > 0.0 || zero_ok && v == 0.0) && v <= MAX_SECS) {
                p.push(format!("--{name}: {v} is not a duration in (0, {MAX_SECS}] seconds"));
            }
        };
        secs("tp-secs", self.throughput.secs, false);
        secs("tp-warmup-secs", self.throughput.warmup_secs, true);
        secs("tp-settle-secs", self.throughput.settle_secs, true);
        secs("lat-secs", self.latency.secs, false);
        secs("lat-warmup-secs", self.latency.warmup_secs, true);
        secs("dial-secs", self.dial.secs, false);
        secs("dial-warmup-secs", self.dial.warmup_secs, true);
        secs("scale-settle-secs", self.scale.settle_secs, true);
        secs("scale-max-ramp-secs", self.scale.max_ramp_secs, false);
        secs("soak-secs", self.soak.secs, false);
        secs("soak-warmup-secs", self.soak.warmup_secs, true);
        secs("soak-sample-secs", self.soak.sample_secs, false);
        let mut count = |name: &str, v: usize, max: usize| {
            if v == 0 || v > max {
                p.push(format!("--{name}: {v} is not in 1..={max}"));
            }
        };
        for &c in &self.throughput.conns {
            count("tp-conns", c, MAX_CONNS);
        }
        count("tp-chunk-bytes", self.throughput.chunk_bytes, 4 << 20);
        count("tp-window-bytes", self.throughput.window_bytes, 64 << 20);
        count("lat-conns", self.latency.conns, MAX_CONNS);
        count("lat-bytes", self.latency.bytes, 1 << 20);
        count("dial-concurrency", self.dial.concurrency, MAX_CONNS);
        count("dial-bytes", self.dial.bytes, 1 << 20);
        count("scale-conns", self.scale.conns as usize, MAX_SCALE_CONNS as usize);
        count("scale-parallel", self.scale.parallel, MAX_CONNS);
        count("soak-streams", self.soak.streams, MAX_CONNS);
        count("soak-max-in-flight", self.soak.max_in_flight, 10_000);
        count("soak-bytes", self.soak.bytes, 1 << 20);
        for (name, rate) in [("lat-rate", self.latency.rate), ("soak-dial-rate", self.soak.dial_rate)] {
            if !(rate.is_finite() && (0.1..=100_000.0).contains(&rate)) {
                p.push(format!("--{name}: {rate} is not a rate in [0.1, 100000] per second"));
            }
        }
        if !(1 << 20..=MAX_UPLOAD_BYTES).contains(&self.throughput.max_bytes) {
            p.push(format!("--tp-max-bytes: {} is not in {}..={MAX_UPLOAD_BYTES}", self.throughput.max_bytes, 1 << 20));
        }
        if self.throughput.window_bytes < self.throughput.chunk_bytes {
            p.push("--tp-window-bytes must be at least --tp-chunk-bytes".to_owned());
        }
        if let Some(mtu) = self.veth_mtu {
            if !konnq_netlab::VETH_MTU.contains(&mtu) {
                let r = konnq_netlab::VETH_MTU;
                p.push(format!("--veth-mtu: {mtu} is not in {}..={}", r.start(), r.end()));
            }
        }
        if !(1..=20).contains(&self.rounds) {
            p.push(format!("--rounds: {} is not in 1..=20", self.rounds));
        }
        if self.peer_kinds.is_empty() || self.scenarios.is_empty() {
            p.push("--peers and --scenarios need at least one entry each".to_owned());
        }
        p
    }
}

#[cfg(test)]
pub fn example() -> Settings {
    Settings {
        peers: vec!["konnq", "upstream", "direct"],
        peer_kinds: vec![PeerKind::Konnq, PeerKind::Upstream, PeerKind::Direct],
        scenarios: Scenario::ALL.to_vec(),
        frontend: Frontend::Grpc,
        out: "out".into(),
        konnq_bin: KonnqBin::Auto,
        upstream_bin: None,
        upstream_module: "m".into(),
        upstream_build_dir: "b".into(),
        konnq_server_flags: Vec::new(),
        konnq_agent_flags: Vec::new(),
        smoke: false,
        rounds: 3,
        veth_mtu: None,
        throughput: Throughput {
            conns: vec![1, 8, 64],
            modes: vec![Mode::Oneway, Mode::Echo],
            secs: 5.0,
            warmup_secs: 1.0,
            chunk_bytes: 32768,
            window_bytes: 2 << 20,
            max_bytes: 32 << 30,
            settle_secs: 0.0,
            perf_dir: None,
        },
        latency: Latency { rate: 2000.0, conns: 32, secs: 15.0, warmup_secs: 2.0, bytes: 1024 },
        dial: Dial { concurrency: 32, secs: 10.0, warmup_secs: 1.0, bytes: 100, rate: None, client: DialClient::Rust },
        scale: Scale { conns: 10_000, parallel: 64, settle_secs: 3.0, max_ramp_secs: 180.0 },
        soak: Soak {
            secs: 600.0,
            dial_rate: 300.0,
            streams: 8,
            stream_interval_ms: 100,
            warmup_secs: 30.0,
            sample_secs: 1.0,
            max_in_flight: 256,
            bytes: 1024,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_smoke_are_valid() {
        let mut s = example();
        assert_eq!(s.problems(), Vec::<String>::new());
        s.smoke_preset();
        assert_eq!(s.problems(), Vec::<String>::new());
        assert_eq!(s.peer_kinds, [PeerKind::Konnq]);
        assert_eq!(s.scenarios.len(), 5);
    }

    #[test]
    fn every_problem_names_its_option() {
        let mut s = example();
        s.latency.rate = 0.0;
        s.scale.conns = 20_000;
        s.soak.secs = f64::INFINITY;
        s.throughput.conns = vec![0];
        s.throughput.max_bytes = 0;
        s.throughput.settle_secs = -1.0;
        let p = s.problems();
        assert_eq!(p.len(), 6, "{p:?}");
        for name in ["--lat-rate", "--scale-conns", "--soak-secs", "--tp-conns", "--tp-max-bytes", "--tp-settle-secs"] {
            assert!(p.iter().any(|x| x.starts_with(name)), "{name} in {p:?}");
        }
    }

    #[test]
    fn names_parse() {
        for sc in Scenario::ALL {
            assert_eq!(sc.name().parse::<Scenario>(), Ok(sc));
        }
        assert!("bulk".parse::<Scenario>().is_err());
        for m in [Mode::Oneway, Mode::Echo, Mode::Upload] {
            assert_eq!(m.name().parse::<Mode>(), Ok(m));
        }
        assert!("download".parse::<Mode>().is_err());
        assert_eq!("builtin".parse::<KonnqBin>(), Ok(KonnqBin::Builtin));
        assert_eq!("/x".parse::<KonnqBin>(), Ok(KonnqBin::Dir("/x".into())));
        let json = serde_json::to_value(example()).unwrap();
        assert_eq!(json["frontend"], "grpc");
        assert_eq!(json["scenarios"][0], "throughput");
    }
}
