//! Every figure of a run, as written to `results.json`.

use serde::{Deserialize, Serialize};

use crate::procfs::ProcSample;
use crate::stats::{Growth, LatencySummary};

/// The whole result of one run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub meta: Meta,
    pub peers: Vec<PeerInfo>,
    pub throughput: Vec<ThroughputResult>,
    pub latency: Vec<LatencyResult>,
    pub dial: Vec<DialResult>,
    pub scale: Vec<ScaleResult>,
    pub soak: Vec<SoakResult>,
    pub targets: Vec<TargetCheck>,
    /// Scenarios that failed for a peer (the run goes on without them).
    pub errors: Vec<ScenarioError>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Meta {
    pub date_utc: String,
    pub command: Vec<String>,
    pub machine: Machine,
    pub smoke: bool,
    /// How clients reach the tunnel: grpc (single-use), grpc-shared, http-connect.
    pub frontend: String,
    /// The agent↔server hop: `loopback`, or `veth MTU N` between two
    /// network namespaces (`--veth-mtu`).
    #[serde(default)]
    pub link: String,
    pub settings: serde_json::Value,
    pub wall_secs: f64,
    /// /proc/loadavg (1, 5, 15 min) when the run started and ended: other
    /// work on a shared machine shows here.
    pub loadavg_start: String,
    pub loadavg_end: String,
    /// `git describe --always --dirty` of the source tree this runner was built from.
    pub revision: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub mem_total_kib: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeerInfo {
    pub name: String,
    pub available: bool,
    /// Binaries used, or why the peer is unavailable.
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioError {
    pub scenario: String,
    pub peer: String,
    pub error: String,
}

/// CPU used during a measured window, in cores (CPU seconds per second),
/// per process: the runner (load generator and client), the target
/// process, the peer's server and agent (none for `direct`). On a 2-core
/// machine they compete; this shows who had the CPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuSplit {
    pub runner: f64,
    pub target: f64,
    pub server: Option<f64>,
    pub agent: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ThroughputResult {
    pub peer: String,
    /// "oneway" (target → client), "echo" (client → target → client) or
    /// "upload" (client → target).
    pub mode: String,
    pub conns: usize,
    pub secs: f64,
    /// Payload bytes that arrived in the measured window: at the client
    /// (oneway, echo) or counted by the target as it read them (upload).
    pub bytes: u64,
    pub gbit_per_s: f64,
    pub server_cpu_secs: Option<f64>,
    pub agent_cpu_secs: Option<f64>,
    /// (server + agent) CPU seconds per 10^9 payload bytes.
    pub cpu_secs_per_gb: Option<f64>,
    pub errors: u64,
    pub cpu: CpuSplit,
    /// Server and agent RSS before, at the peak of and after the cell
    /// (`None` for `direct`).
    #[serde(default)]
    pub memory: Option<crate::rss::Memory>,
    /// Upload only: what the client wrote against what arrived.
    #[serde(default)]
    pub upload: Option<UploadFigures>,
    /// With `--perf`: the server's and agent's CPU per GB split by component.
    #[serde(default)]
    pub components: Option<CellComponents>,
    /// How evenly the cell's connections moved their bytes (counted at the
    /// client) in the measured window.
    #[serde(default)]
    pub spread: Option<ConnSpread>,
}

/// The slowest and fastest connection of a cell against an equal share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnSpread {
    pub conns: usize,
    /// Connections that moved no byte in the window.
    pub stalled: usize,
    /// Slowest and fastest connection's bytes, as a fraction of the mean.
    pub min_of_mean: f64,
    pub max_of_mean: f64,
}

#[cfg(test)]
mod spread_tests {
    use super::ConnSpread;

    #[test]
    fn spread_of_connections() {
        let s = ConnSpread::of(&[0, 50, 100, 250]).expect("some bytes");
        assert_eq!((s.conns, s.stalled), (4, 1));
        assert_eq!((s.min_of_mean, s.max_of_mean), (0.0, 2.5));
        assert_eq!(ConnSpread::of(&[]), None);
        assert_eq!(ConnSpread::of(&[0, 0]), None);
    }
}

impl ConnSpread {
    /// The spread of per-connection byte counts (`None` for none, or when
    /// nothing moved at all).
    pub fn of(bytes: &[u64]) -> Option<ConnSpread> {
        let total: u64 = bytes.iter().sum();
        if bytes.is_empty() || total == 0 {
            return None;
        }
        let mean = total as f64 / bytes.len() as f64;
        let (min, max) = (bytes.iter().min().copied()?, bytes.iter().max().copied()?);
        Some(ConnSpread {
            conns: bytes.len(),
            stalled: bytes.iter().filter(|&&b| b == 0).count(),
            min_of_mean: min as f64 / mean,
            max_of_mean: max as f64 / mean,
        })
    }
}

/// A cell's CPU per GB by component, per process (see `crate::perf`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CellComponents {
    /// The server's and the agent's `perf record` files (call graphs included).
    pub recordings: [String; 2],
    pub server: crate::perf::ComponentCosts,
    pub agent: crate::perf::ComponentCosts,
}

/// An upload cell's byte accounting. "Wrote" is what the client's tunnel
/// library accepted; "arrived" is what the target read. The difference at
/// the writers' stop is what sat in buffers on the way; the difference
/// after every connection closed is what never arrived.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct UploadFigures {
    /// Bytes the client wrote in the measured window (`bytes` arrived).
    pub wrote_in_window: u64,
    /// Bytes the client wrote from the first write until the writers stopped.
    pub wrote: u64,
    /// Of those, bytes the target had read when the writers stopped.
    pub arrived_at_stop: u64,
    /// Of those, bytes the target had read once every connection was closed
    /// and the target had seen each one end.
    pub arrived_after_close: u64,
    /// The writers stopped at `--tp-max-bytes` before the time was up.
    pub capped: bool,
}

impl UploadFigures {
    /// Bytes written but not yet arrived when the writers stopped.
    pub fn in_flight_at_stop(&self) -> u64 {
        self.wrote.saturating_sub(self.arrived_at_stop)
    }

    /// Bytes written that never arrived.
    pub fn lost(&self) -> u64 {
        self.wrote.saturating_sub(self.arrived_after_close)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyResult {
    pub peer: String,
    pub rate: f64,
    pub conns: usize,
    pub request_bytes: usize,
    pub secs: f64,
    pub requests: u64,
    pub errors: u64,
    pub achieved_rate: f64,
    /// Coordinated-omission corrected request/response latency.
    pub latency: LatencySummary,
    /// How late the generator sent requests (its own health).
    pub schedule_lag: LatencySummary,
    /// p99 of each round on its own (peers alternate round by round):
    /// shows whether a tail came from one disturbed round.
    #[serde(default)]
    pub round_p99_us: Vec<f64>,
    pub cpu: CpuSplit,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DialResult {
    pub peer: String,
    pub concurrency: usize,
    /// Open loop: connections started per second on a fixed schedule
    /// (None: `concurrency` closed-loop workers).
    #[serde(default)]
    pub rate: Option<f64>,
    pub secs: f64,
    pub dials: u64,
    pub errors: u64,
    pub dials_per_s: f64,
    /// DIAL_REQ → DIAL_RSP (direct: TCP connect; http-connect: CONNECT → 200).
    pub dial: LatencySummary,
    /// Unix socket + HTTP/2 connection set-up before the dial (single-use tunnel).
    pub connect: LatencySummary,
    /// The whole connection: connect, dial, one exchange, close.
    pub total: LatencySummary,
    /// `runner` is the load generator's process: konnq-loadtest itself, or
    /// konnq-dialclient with the Go client.
    pub cpu: CpuSplit,
    /// The load generator ([`crate::settings::DialClient::name`]).
    #[serde(default)]
    pub client: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleResult {
    pub peer: String,
    pub target_conns: u64,
    pub reached: u64,
    pub ramp_secs: f64,
    pub errors: u64,
    pub server_before: ProcSample,
    pub server_after: ProcSample,
    pub agent_before: ProcSample,
    pub agent_after: ProcSample,
    pub server_rss_per_conn: f64,
    pub agent_rss_per_conn: f64,
    /// (server + agent) RSS growth / connections, bytes.
    pub rss_bytes_per_conn: f64,
    pub fds_per_conn: f64,
    /// After every connection was closed again.
    pub server_closed: Option<ProcSample>,
    pub agent_closed: Option<ProcSample>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoakSample {
    pub t: f64,
    pub server: ProcSample,
    pub agent: ProcSample,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SoakGrowth {
    pub total_rss: Option<Growth>,
    pub total_fds: Option<Growth>,
    pub server_rss: Option<Growth>,
    pub agent_rss: Option<Growth>,
    pub server_fds: Option<Growth>,
    pub agent_fds: Option<Growth>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoakResult {
    pub peer: String,
    pub secs: f64,
    pub warmup_secs: f64,
    pub dial_rate: f64,
    pub streams: usize,
    pub dials: u64,
    pub dial_errors: u64,
    /// Dials not started because too many were already in flight.
    pub dials_skipped: u64,
    pub requests: u64,
    pub request_errors: u64,
    pub dial: LatencySummary,
    pub samples: Vec<SoakSample>,
    pub growth: SoakGrowth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Met,
    Missed,
    NotMeasured,
}

/// One of the targets, evaluated on this run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetCheck {
    pub id: String,
    pub target: String,
    pub konnq: Option<f64>,
    pub upstream: Option<f64>,
    pub unit: String,
    pub verdict: Verdict,
    pub note: String,
}
