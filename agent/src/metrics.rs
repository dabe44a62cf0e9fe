//! Prometheus metrics of the agent. Upstream's families keep upstream's
//! exact names, types, labels and label values
//! (`konnectivity_network_proxy_agent_*`, as client_golang writes them), so
//! dashboards and alerts written for upstream work unchanged; the test at
//! the end lists them, and the upstream families konnq leaves out with the
//! reason. konnq's own are `konnq_agent_*`.

use std::sync::Arc;
use std::time::Duration;

use konnq_shared::prom::{self, CounterSet, Histogram, PlainCounter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Label = [(&'static str, &'static str); 1];
/// `http_response_code` of an answer from kube-apiserver.
type CodeLabel = [(&'static str, String); 1];
/// `http_response_code` and `reason` of an answer from kube-apiserver.
type CodeReasonLabels = [(&'static str, String); 2];

/// Upstream's agent latency buckets, from 5 ms to 30 s.
const LATENCY_BUCKETS: [f64; 7] = [0.005, 0.025, 0.1, 0.5, 2.5, 10.0, 30.0];

fn latency_histogram() -> Histogram {
    Histogram::new(&LATENCY_BUCKETS)
}

fn code_reason(code: u16, reason: &str) -> CodeReasonLabels {
    [("http_response_code", code.to_string()), ("reason", reason.to_owned())]
}

/// Why a target dial failed: upstream's `reason` label of
/// `endpoint_dial_failure_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialFailure {
    /// The dial timeout expired.
    Timeout,
    /// Anything else: refused, unreachable, unresolvable, bad protocol.
    Unknown,
}

/// Upstream's `direction` label of `server_connection_failure_count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Writing toward the server failed.
    ToServer,
    /// The connection to the server failed while the agent was receiving.
    FromServer,
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Server connections open (one per server at most).
    pub open_server_connections: Gauge,
    /// Servers the agent aims to hold a connection to: the server count the
    /// servers report (or the server leases, see `server-count-source`);
    /// 0 until a server has answered.
    pub known_server_count: Gauge,
    /// TCP connections to targets currently open.
    pub open_endpoint_connections: Gauge,
    /// Successful target dials.
    pub dial_duration: Histogram,
    dial_failures: CounterSet<Label>,
    server_failures: CounterSet<Label>,
    /// Dials in progress.
    pub pending_dials: Gauge,
    /// Dials the server gave up before the agent answered.
    pub dials_abandoned: PlainCounter,
    stream_errors: Family<Label, PlainCounter>,
    bytes: CounterSet<Label>,
    /// Failed attempts to connect to the server.
    pub connect_failures: PlainCounter,
    /// Moves of the QUIC endpoint to a new local UDP socket.
    pub socket_rebinds: PlainCounter,
    /// Server connections open, by transport (quic, tcp).
    server_connections: Family<Label, Gauge>,
    /// Times the agent fell back to TCP: no QUIC answer over UDP in time.
    pub tcp_fallbacks: PlainCounter,
    lease_lists: Family<CodeReasonLabels, PlainCounter>,
    lease_watches: Family<CodeReasonLabels, PlainCounter>,
    lease_list_latency: Family<CodeLabel, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Metrics {
            registry: Arc::default(),
            open_server_connections: Gauge::default(),
            known_server_count: Gauge::default(),
            open_endpoint_connections: Gauge::default(),
            dial_duration: Histogram::new(&LATENCY_BUCKETS),
            dial_failures: CounterSet::new([[("reason", "timeout")], [("reason", "unknown")]]),
            server_failures: CounterSet::new([[("direction", "to_server")], [("direction", "from_server")]]),
            pending_dials: Gauge::default(),
            dials_abandoned: PlainCounter::default(),
            stream_errors: Family::default(),
            bytes: CounterSet::new([[("direction", "to_target")], [("direction", "to_server")]]),
            connect_failures: PlainCounter::default(),
            socket_rebinds: PlainCounter::default(),
            server_connections: Family::default(),
            tcp_fallbacks: PlainCounter::default(),
            lease_lists: Family::default(),
            lease_watches: Family::default(),
            lease_list_latency: Family::new_with_constructor(latency_histogram),
        };
        for transport in ["quic", "tcp"] {
            m.connections_on(transport);
        }
        let mut root = Registry::default();
        m.register_upstream(root.sub_registry_with_prefix("konnectivity_network_proxy_agent"));
        m.register_own(root.sub_registry_with_prefix("konnq_agent"));
        Metrics { registry: Arc::new(root), ..m }
    }

    fn register_upstream(&self, r: &mut Registry) {
        r.register("open_server_connections", "Server connections open", self.open_server_connections.clone());
        r.register("known_server_count", "Servers the agent aims to be connected to", self.known_server_count.clone());
        r.register(
            "open_endpoint_connections",
            "TCP connections to targets currently open",
            self.open_endpoint_connections.clone(),
        );
        r.register("dial_duration_seconds", "Time to dial a target, successful dials", self.dial_duration.clone());
        r.register(
            "endpoint_dial_failure_total",
            "Failed target dials by reason (timeout, unknown)",
            self.dial_failures.family(),
        );
        r.register(
            "server_connection_failure_count",
            "Failures to send to or receive from the server, by direction",
            self.server_failures.family(),
        );
        r.register(
            "lease_lists_total",
            "Server lease lists sent to kube-apiserver, by HTTP response code and reason",
            self.lease_lists.clone(),
        );
        r.register(
            "lease_watches_total",
            "Server lease watches sent to kube-apiserver, by HTTP response code and reason",
            self.lease_watches.clone(),
        );
        r.register(
            "lease_list_latency_seconds",
            "Latency of server lease lists, by HTTP response code",
            self.lease_list_latency.clone(),
        );
    }

    fn register_own(&self, r: &mut Registry) {
        r.register("pending_dials", "Dials to targets in progress", self.pending_dials.clone());
        r.register(
            "dials_abandoned_total",
            "Dials the server gave up before the agent answered",
            self.dials_abandoned.clone(),
        );
        r.register(
            "stream_errors_total",
            "Dial streams that brought no dial, by kind (malformed_dial_header; cancelled: reset by the server first)",
            self.stream_errors.clone(),
        );
        r.register("bytes_total", "Bytes proxied, by direction (to_target, to_server)", self.bytes.family());
        r.register(
            "server_connect_failures_total",
            "Failed attempts to connect to the server",
            self.connect_failures.clone(),
        );
        r.register(
            "socket_rebinds_total",
            "Moves of the QUIC endpoint to a new local UDP socket (SIGUSR1)",
            self.socket_rebinds.clone(),
        );
        r.register(
            "server_connections",
            "Server connections open, by transport: quic (over UDP) or tcp (QUIC datagrams over TCP, where UDP is blocked)",
            self.server_connections.clone(),
        );
        r.register(
            "tcp_fallbacks_total",
            "Times no QUIC handshake over UDP completed within transport-fallback-after and the agent used TCP",
            self.tcp_fallbacks.clone(),
        );
    }

    /// The open-connection gauge of `transport` ("quic", "tcp").
    pub fn connections_on(&self, transport: &'static str) -> Gauge {
        self.server_connections.get_or_create(&[("transport", transport)]).clone()
    }

    pub fn dial_failed(&self, why: DialFailure) {
        self.dial_failures.inc(why as usize);
    }

    pub fn dial_failures(&self, why: DialFailure) -> u64 {
        self.dial_failures.get(why as usize)
    }

    pub fn server_failure(&self, direction: Direction) {
        self.server_failures.inc(direction as usize);
    }

    pub fn server_failures(&self, direction: Direction) -> u64 {
        self.server_failures.get(direction as usize)
    }

    pub fn stream_error(&self, kind: &'static str) {
        self.stream_errors.get_or_create(&[("kind", kind)]).inc();
    }

    pub fn stream_errors(&self, kind: &'static str) -> u64 {
        self.stream_errors.get(&[("kind", kind)]).map_or(0, |c| c.get())
    }

    pub fn bytes_to_target(&self, n: usize) {
        self.bytes.inc_by(0, n as u64);
    }

    pub fn bytes_to_server(&self, n: usize) {
        self.bytes.inc_by(1, n as u64);
    }

    /// Bytes proxied so far, both directions.
    pub fn bytes_moved(&self) -> u64 {
        self.bytes.get(0) + self.bytes.get(1)
    }

    /// A server lease list was answered with HTTP `code` and `reason` (200
    /// and "" when it succeeded) after `latency`. A request that got no
    /// answer is not counted.
    pub fn lease_listed(&self, code: u16, reason: &str, latency: Duration) {
        self.lease_lists.get_or_create(&code_reason(code, reason)).inc();
        self.lease_list_latency.get_or_create(&[("http_response_code", code.to_string())]).observe_duration(latency);
    }

    /// A server lease watch was answered (see [`Metrics::lease_listed`]).
    pub fn lease_watched(&self, code: u16, reason: &str) {
        self.lease_watches.get_or_create(&code_reason(code, reason)).inc();
    }

    /// Lease lists answered with `code` and `reason`.
    pub fn lease_lists(&self, code: u16, reason: &str) -> u64 {
        self.lease_lists.get(&code_reason(code, reason)).map_or(0, |c| c.get())
    }

    /// Prometheus text exposition (format 0.0.4, as upstream serves it).
    pub fn render(&self) -> String {
        prom::render(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use konnq_shared::prom::{compare, Expected};

    /// Upstream v0.36.0's agent metrics as client_golang exposes them
    /// (pkg/agent/metrics/metrics.go): name, type, and each label with the
    /// values upstream uses.
    const UPSTREAM_EXPOSED: &[Expected] = &[
        Expected { name: "konnectivity_network_proxy_agent_dial_duration_seconds", kind: "histogram", labels: &[] },
        Expected {
            name: "konnectivity_network_proxy_agent_server_connection_failure_count",
            kind: "counter",
            labels: &[("direction", &["to_server", "from_server"])],
        },
        Expected {
            name: "konnectivity_network_proxy_agent_endpoint_dial_failure_total",
            kind: "counter",
            labels: &[("reason", &["timeout", "unknown"])],
        },
        Expected { name: "konnectivity_network_proxy_agent_open_server_connections", kind: "gauge", labels: &[] },
        Expected { name: "konnectivity_network_proxy_agent_known_server_count", kind: "gauge", labels: &[] },
        Expected { name: "konnectivity_network_proxy_agent_open_endpoint_connections", kind: "gauge", labels: &[] },
        Expected {
            name: "konnectivity_network_proxy_agent_lease_lists_total",
            kind: "counter",
            labels: &[("http_response_code", &[]), ("reason", &[])],
        },
        Expected {
            name: "konnectivity_network_proxy_agent_lease_watches_total",
            kind: "counter",
            labels: &[("http_response_code", &[]), ("reason", &[])],
        },
        Expected {
            name: "konnectivity_network_proxy_agent_lease_list_latency_seconds",
            kind: "histogram",
            labels: &[("http_response_code", &[])],
        },
    ];

    /// Upstream v0.36.0's agent metrics konnq does not expose, and why.
    const UPSTREAM_NOT_EXPOSED: &[(&str, &str)] = &[
        (
            "konnectivity_network_proxy_agent_stream_packets_total",
            "no packets between agent and server: each proxied connection is a QUIC stream of raw bytes",
        ),
        ("konnectivity_network_proxy_agent_stream_errors_total", "no gRPC stream to the server (see above)"),
    ];

    /// Every family gets a sample, through the calls the agent makes.
    fn exercised() -> Metrics {
        let m = Metrics::new();
        m.open_server_connections.set(1);
        m.known_server_count.set(3);
        m.open_endpoint_connections.inc();
        m.dial_duration.observe(0.002);
        m.dial_failed(DialFailure::Timeout);
        m.dial_failed(DialFailure::Unknown);
        m.server_failure(Direction::FromServer);
        m.server_failure(Direction::ToServer);
        m.pending_dials.inc();
        m.dials_abandoned.inc();
        m.stream_error("malformed_dial_header");
        m.bytes_to_target(1);
        m.bytes_to_server(2);
        m.connect_failures.inc();
        m.socket_rebinds.inc();
        m.lease_listed(200, "", Duration::from_millis(4));
        m.lease_listed(403, "Forbidden", Duration::from_millis(2));
        m.lease_watched(200, "");
        m
    }

    #[test]
    fn upstream_families_have_upstream_names_types_and_labels() {
        let text = exercised().render();
        let absent: Vec<&str> = UPSTREAM_NOT_EXPOSED.iter().map(|(name, _)| *name).collect();
        if let Err(problems) = compare(&text, UPSTREAM_EXPOSED, &absent, "konnq_agent_") {
            panic!("{}\n\n{text}", problems.join("\n"));
        }
    }

    #[test]
    fn samples_read_as_upstream_writes_them() {
        let text = exercised().render();
        for line in [
            "konnectivity_network_proxy_agent_server_connection_failure_count{direction=\"from_server\"} 1\n",
            "konnectivity_network_proxy_agent_endpoint_dial_failure_total{reason=\"timeout\"} 1\n",
            "konnectivity_network_proxy_agent_known_server_count 3\n",
            "konnectivity_network_proxy_agent_dial_duration_seconds_bucket{le=\"10\"} 1\n",
            "konnq_agent_socket_rebinds_total 1\n",
            "konnq_agent_server_connect_failures_total 1\n",
            "konnectivity_network_proxy_agent_lease_lists_total{http_response_code=\"403\",reason=\"Forbidden\"} 1\n",
            "konnectivity_network_proxy_agent_lease_watches_total{http_response_code=\"200\",reason=\"\"} 1\n",
            "konnectivity_network_proxy_agent_lease_list_latency_seconds_bucket{le=\"0.005\",http_response_code=\"200\"} 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("failure_count_total") && !text.contains("_total_total"), "{text}");
    }
}
