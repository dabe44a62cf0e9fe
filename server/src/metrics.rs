//! Prometheus metrics of the server. Upstream's families keep upstream's
//! exact names, types, labels and label values
//! (`konnectivity_network_proxy_server_*`, as client_golang writes them: no
//! `_total` added to counters), so dashboards and alerts written for
//! upstream work unchanged; the test at the end lists them, and the upstream
//! families konnq leaves out with the reason. konnq's own are
//! `konnq_server_*`.

use std::sync::Arc;
use std::time::Duration;

use konnq_shared::config::ProxyStrategy;
use konnq_shared::prom::{self, CounterSet, Histogram, PlainCounter};
use konnq_shared::proto::PacketType;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Label = [(&'static str, &'static str); 1];
/// `http_status_code` of an answer from kube-apiserver.
type CodeLabel = [(&'static str, String); 1];
/// `http_status_code` and `reason` of an answer from kube-apiserver.
type CodeReasonLabels = [(&'static str, String); 2];
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Upstream's server latency buckets, from 1 µs to 12.5 s.
const LATENCY_BUCKETS: [f64; 9] = [0.000001, 0.00001, 0.0001, 0.005, 0.025, 0.1, 0.5, 2.5, 12.5];

/// client_golang's default buckets (`prometheus.DefBuckets`), which
/// upstream's lease latency histograms keep.
const DEFAULT_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

fn lease_latency_histogram() -> Histogram {
    Histogram::new(&DEFAULT_BUCKETS)
}

/// Every metric the server exports. Cheap to clone (all handles are shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    ready_backend_connections: Gauge,
    /// By `proxy_strategy`: one series per configured strategy.
    ready_backends: Family<Label, Gauge>,
    grpc_connections: Family<Label, Gauge>,
    /// Dials sent to an agent and not yet answered.
    pub pending_dials: Gauge,
    /// Proxied connections established and not yet closed.
    pub established: Gauge,
    /// Frontend Proxy streams open (`grpc_connections{service_method="Proxy"}`).
    pub proxy_streams: Gauge,
    /// Agent connections open (`grpc_connections{service_method="Connect"}`):
    /// where an upstream agent holds a Connect stream, a konnq agent holds a
    /// QUIC connection.
    pub agent_connections: Gauge,
    /// HTTP-CONNECT client connections open.
    pub http_connections: Gauge,
    /// Frontend client connections open (gRPC and HTTP-CONNECT). Not
    /// exported: graceful shutdown waits for them.
    pub frontend_connections: Gauge,
    /// Bytes of gRPC messages the frontend received from clients and has
    /// not yet written into QUIC (queued for, or held by, their sessions).
    pub frontend_buffered: Gauge,
    /// DIAL_REQ → the agent's successful answer.
    pub dial_duration: Histogram,
    /// How long a packet or bytes for the client waited to be handed to
    /// its frontend connection (back-pressure from a slow client).
    pub frontend_write_duration: Histogram,
    dial_failures: CounterSet<Label>,
    stream_packets: CounterSet<[(&'static str, &'static str); 2]>,
    stream_errors: Family<[(&'static str, &'static str); 3], PlainCounter>,
    bytes: CounterSet<Label>,
    frontend_errors: Family<Label, PlainCounter>,
    /// TokenReviews waiting for the rate limit.
    pub token_review_queue: Gauge,
    /// Bytes reserved for partly received gRPC messages (the process-wide
    /// budget's use, see `frontend::budget`).
    pub partial_message_bytes: Gauge,
    token_reviews: Family<Label, PlainCounter>,
    agent_auth_failures: Family<Label, PlainCounter>,
    /// Two live agent connections kept one agent ID past the reconnect grace.
    pub agent_id_conflicts: PlainCounter,
    /// Agent connections closed because the agent's port was unreachable
    /// (ICMP) and the agent stayed silent.
    pub agents_unreachable: PlainCounter,
    /// ICMP "port unreachable" reports for an agent's address that were
    /// checked, whatever the outcome.
    pub agents_unreachable_checks: PlainCounter,
    /// Agent connections open, by `transport` (quic, tcp).
    agents_by_transport: Family<Label, Gauge>,
    /// TCP connections on the agent port refused before any QUIC (a wrong
    /// preamble: not a konnq agent).
    pub agent_tcp_refused: PlainCounter,
    /// Expired Leases the lease garbage collector deleted.
    pub culled_leases: PlainCounter,
    lease_lists: Family<CodeReasonLabels, PlainCounter>,
    lease_list_latency: HistogramFamily<CodeLabel>,
    lease_deletes: Family<CodeReasonLabels, PlainCounter>,
    lease_delete_latency: HistogramFamily<CodeLabel>,
}

/// Why a dial failed: upstream's `reason` label of `dial_failure_count`.
/// (Upstream's `unrecognized_response`, a DIAL_RSP for an unknown dial,
/// cannot happen in konnq: each dial has its own stream.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialFailure {
    /// No agent takes dials.
    NoAgent,
    /// The agent answered with an error (target refused, unresolvable, ...).
    ErrorResponse,
    /// The agent connected, but the DIAL_RSP could not be sent to the client.
    SendResponse,
    /// The agent connection broke or the agent misbehaved before answering.
    BackendClose,
    /// `--backend-dial-timeout` expired.
    BackendDialTimeout,
    /// The client sent DIAL_CLS or went away before the answer.
    FrontendClose,
}

impl DialFailure {
    const ALL: [DialFailure; 6] = [
        DialFailure::NoAgent,
        DialFailure::ErrorResponse,
        DialFailure::SendResponse,
        DialFailure::BackendClose,
        DialFailure::BackendDialTimeout,
        DialFailure::FrontendClose,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DialFailure::NoAgent => "no_agent",
            DialFailure::ErrorResponse => "error_response",
            DialFailure::SendResponse => "send_rsp",
            DialFailure::BackendClose => "backend_close",
            DialFailure::BackendDialTimeout => "backend_dial_timeout",
            DialFailure::FrontendClose => "frontend_close",
        }
    }
}

/// Upstream's `segment` label values that konnq has packets for: the gRPC
/// frontend's. (Between server and agent konnq sends no packets.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    FromClient,
    ToClient,
}

impl Segment {
    fn label(self) -> &'static str {
        match self {
            Segment::FromClient => "from_client",
            Segment::ToClient => "to_client",
        }
    }
}

/// `packet_type` values: the protocol's names, then upstream's `Unknown`.
const PACKET_TYPES: usize = 8;

fn packet_type_label(i: usize) -> &'static str {
    i32::try_from(i).ok().and_then(|t| PacketType::try_from(t).ok()).map_or("Unknown", |t| t.as_str_name())
}

/// A gRPC code as Go's `codes.Code.String()` names it (the `code` label).
fn go_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "Canceled",
        C::Unknown => "Unknown",
        C::InvalidArgument => "InvalidArgument",
        C::DeadlineExceeded => "DeadlineExceeded",
        C::NotFound => "NotFound",
        C::AlreadyExists => "AlreadyExists",
        C::PermissionDenied => "PermissionDenied",
        C::ResourceExhausted => "ResourceExhausted",
        C::FailedPrecondition => "FailedPrecondition",
        C::Aborted => "Aborted",
        C::OutOfRange => "OutOfRange",
        C::Unimplemented => "Unimplemented",
        C::Internal => "Internal",
        C::Unavailable => "Unavailable",
        C::DataLoss => "DataLoss",
        C::Unauthenticated => "Unauthenticated",
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let segments = [Segment::FromClient, Segment::ToClient];
        let packet_labels = segments
            .iter()
            .flat_map(|s| (0..PACKET_TYPES).map(|t| [("segment", s.label()), ("packet_type", packet_type_label(t))]));
        let ready_backends = Family::<Label, Gauge>::default();
        let grpc_connections = Family::<Label, Gauge>::default();
        let child = |f: &Family<Label, Gauge>, label| f.get_or_create(&[label]).clone();
        let m = Metrics {
            registry: Arc::default(),
            ready_backend_connections: Gauge::default(),
            ready_backends,
            proxy_streams: child(&grpc_connections, ("service_method", "Proxy")),
            agent_connections: child(&grpc_connections, ("service_method", "Connect")),
            grpc_connections,
            pending_dials: Gauge::default(),
            established: Gauge::default(),
            frontend_buffered: Gauge::default(),
            http_connections: Gauge::default(),
            frontend_connections: Gauge::default(),
            dial_duration: Histogram::new(&LATENCY_BUCKETS),
            frontend_write_duration: Histogram::new(&LATENCY_BUCKETS),
            dial_failures: CounterSet::new(DialFailure::ALL.map(|f| [("reason", f.label())])),
            stream_packets: CounterSet::new(packet_labels),
            stream_errors: Family::default(),
            bytes: CounterSet::new([[("direction", "to_agent")], [("direction", "to_client")]]),
            frontend_errors: Family::default(),
            token_review_queue: Gauge::default(),
            partial_message_bytes: Gauge::default(),
            token_reviews: Family::default(),
            agent_auth_failures: Family::default(),
            agent_id_conflicts: PlainCounter::default(),
            agents_unreachable: PlainCounter::default(),
            agents_unreachable_checks: PlainCounter::default(),
            agents_by_transport: Family::default(),
            agent_tcp_refused: PlainCounter::default(),
            culled_leases: PlainCounter::default(),
            lease_lists: Family::default(),
            lease_list_latency: Family::new_with_constructor(lease_latency_histogram),
            lease_deletes: Family::default(),
            lease_delete_latency: Family::new_with_constructor(lease_latency_histogram),
        };
        for transport in ["quic", "tcp"] {
            m.agents_on(transport);
        }
        let mut root = Registry::default();
        m.register_upstream(root.sub_registry_with_prefix("konnectivity_network_proxy_server"));
        m.register_own(root.sub_registry_with_prefix("konnq_server"));
        Metrics { registry: Arc::new(root), ..m }
    }

    fn register_upstream(&self, r: &mut Registry) {
        r.register(
            "ready_backend_connections",
            "Agents connected and taking dials",
            self.ready_backend_connections.clone(),
        );
        r.register(
            "ready_backends",
            "Agents connected and taking dials that each proxy strategy routes to",
            self.ready_backends.clone(),
        );
        r.register("pending_backend_dials", "Dials waiting for an agent's answer", self.pending_dials.clone());
        r.register("established_connections", "Proxied connections open (after the dial)", self.established.clone());
        r.register(
            "grpc_connections",
            "Open frontend Proxy streams (Proxy) and agent connections (Connect)",
            self.grpc_connections.clone(),
        );
        r.register("http_connections", "Open HTTP-CONNECT client connections", self.http_connections.clone());
        r.register(
            "dial_duration_seconds",
            "Time from DIAL_REQ to the agent's successful answer",
            self.dial_duration.clone(),
        );
        r.register(
            "frontend_write_duration_seconds",
            "Time a packet for the client waited to be handed to its connection",
            self.frontend_write_duration.clone(),
        );
        r.register("dial_failure_count", "Failed dials by reason", self.dial_failures.family());
        r.register("stream_packets_total", "Frontend packets by segment and packet type", self.stream_packets.family());
        r.register(
            "stream_errors_total",
            "Frontend stream errors by segment, gRPC code and packet type",
            self.stream_errors.clone(),
        );
        r.register(
            "culled_leases_count",
            "Expired leases the lease garbage collector deleted",
            self.culled_leases.clone(),
        );
        r.register(
            "lease_list_total",
            "Lease lists by the lease garbage collector, by HTTP status code and reason",
            self.lease_lists.clone(),
        );
        r.register(
            "lease_list_latency_seconds",
            "Latency of the lease garbage collector's lease lists, by HTTP status code",
            self.lease_list_latency.clone(),
        );
        r.register(
            "lease_delete_total",
            "Lease deletions by the lease garbage collector, by HTTP status code and reason",
            self.lease_deletes.clone(),
        );
        r.register(
            "lease_delete_latency_seconds",
            "Latency of the lease garbage collector's lease deletions, by HTTP status code",
            self.lease_delete_latency.clone(),
        );
    }

    fn register_own(&self, r: &mut Registry) {
        r.register("bytes_total", "Bytes proxied, by direction (to_agent, to_client)", self.bytes.family());
        r.register(
            "frontend_buffered_bytes",
            "Bytes of gRPC messages received from clients and not yet written into QUIC",
            self.frontend_buffered.clone(),
        );
        r.register(
            "frontend_errors_total",
            "Protocol violations by frontend clients, by kind",
            self.frontend_errors.clone(),
        );
        r.register(
            "frontend_partial_message_bytes",
            "Bytes reserved for partly received gRPC messages credited back early (at most 64 MiB)",
            self.partial_message_bytes.clone(),
        );
        r.register(
            "token_review_queue",
            "TokenReviews waiting for the kubeconfig-qps / kubeconfig-burst rate limit",
            self.token_review_queue.clone(),
        );
        r.register(
            "token_reviews_total",
            "TokenReviews sent to kube-apiserver, by result (authenticated, rejected, error)",
            self.token_reviews.clone(),
        );
        r.register(
            "agent_auth_failures_total",
            "Agents refused by token authentication, by reason (no_token, invalid_token, wrong_account, unreachable)",
            self.agent_auth_failures.clone(),
        );
        r.register(
            "agent_id_conflicts_total",
            "Agent connections that shared their agent ID with another live connection past the reconnect grace",
            self.agent_id_conflicts.clone(),
        );
        r.register(
            "agents_unreachable_total",
            "Agent connections closed because ICMP said the agent's port was unreachable and the agent stayed silent",
            self.agents_unreachable.clone(),
        );
        r.register(
            "agents_unreachable_checks_total",
            "ICMP port-unreachable reports for an agent's address that were checked (a live agent answers; a silent one is closed)",
            self.agents_unreachable_checks.clone(),
        );
        r.register(
            "agent_connections",
            "Agent connections open, by transport: quic (over UDP) or tcp (QUIC datagrams over TCP, where UDP is blocked)",
            self.agents_by_transport.clone(),
        );
        r.register(
            "agent_tcp_refused_total",
            "TCP connections on the agent port closed because they did not start as a konnq agent's",
            self.agent_tcp_refused.clone(),
        );
    }

    /// The open-connection gauge of agents on `transport` ("quic", "tcp").
    pub fn agents_on(&self, transport: &'static str) -> Gauge {
        self.agents_by_transport.get_or_create(&[("transport", transport)]).clone()
    }

    /// Agents that take dials (`ready_backend_connections`), and of those
    /// the ones each configured strategy routes to (`ready_backends`).
    pub fn set_ready_backends(&self, connections: usize, by_strategy: &[(ProxyStrategy, usize)]) {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.ready_backend_connections.set(count(connections));
        for &(strategy, n) in by_strategy {
            self.ready_backends.get_or_create(&[("proxy_strategy", strategy.name())]).set(count(n));
        }
    }

    pub fn ready_backends(&self) -> i64 {
        self.ready_backend_connections.get()
    }

    /// `ready_backends{proxy_strategy}`; `None` if the strategy is not configured.
    pub fn ready_backends_of(&self, strategy: ProxyStrategy) -> Option<i64> {
        self.ready_backends.get(&[("proxy_strategy", strategy.name())]).map(|g| g.get())
    }

    pub fn dial_failed(&self, why: DialFailure) {
        self.dial_failures.inc(why as usize);
    }

    pub fn dial_failures(&self, why: DialFailure) -> u64 {
        self.dial_failures.get(why as usize)
    }

    /// A frontend packet of type `packet_type` (the wire value) went by.
    pub fn packet(&self, segment: Segment, packet_type: i32) {
        let t = usize::try_from(packet_type).ok().filter(|&t| t < PACKET_TYPES - 1).unwrap_or(PACKET_TYPES - 1);
        self.stream_packets.inc(segment as usize * PACKET_TYPES + t);
    }

    pub fn packets(&self, segment: Segment, packet_type: PacketType) -> u64 {
        self.stream_packets.get(segment as usize * PACKET_TYPES + packet_type as usize)
    }

    /// The frontend stream failed with `code` before a packet was read.
    pub fn stream_error(&self, segment: Segment, code: tonic::Code) {
        let labels = [("segment", segment.label()), ("code", go_code_name(code)), ("packet_type", "Unknown")];
        self.stream_errors.get_or_create(&labels).inc();
    }

    pub fn stream_errors(&self, segment: Segment, code: tonic::Code) -> u64 {
        let labels = [("segment", segment.label()), ("code", go_code_name(code)), ("packet_type", "Unknown")];
        self.stream_errors.get(&labels).map_or(0, |c| c.get())
    }

    pub fn bytes_to_agent(&self, n: usize) {
        self.bytes.inc_by(0, n as u64);
    }

    pub fn bytes_to_client(&self, n: usize) {
        self.bytes.inc_by(1, n as u64);
    }

    pub fn frontend_error(&self, kind: &'static str) {
        self.frontend_errors.get_or_create(&[("kind", kind)]).inc();
    }

    pub fn frontend_errors(&self, kind: &'static str) -> u64 {
        self.frontend_errors.get(&[("kind", kind)]).map_or(0, |c| c.get())
    }

    /// `result`: authenticated, rejected or error.
    pub fn token_reviewed(&self, result: &'static str) {
        self.token_reviews.get_or_create(&[("result", result)]).inc();
    }

    pub fn token_reviews(&self, result: &'static str) -> u64 {
        self.token_reviews.get(&[("result", result)]).map_or(0, |c| c.get())
    }

    /// `reason`: the [`AuthError`](crate::auth::AuthError) label.
    pub fn agent_auth_failed(&self, reason: &'static str) {
        self.agent_auth_failures.get_or_create(&[("reason", reason)]).inc();
    }

    pub fn agent_auth_failures(&self, reason: &'static str) -> u64 {
        self.agent_auth_failures.get(&[("reason", reason)]).map_or(0, |c| c.get())
    }

    /// The garbage collector's Lease list was answered with HTTP `code` and
    /// `reason` (200 and "" when it succeeded) after `latency`. A request
    /// that got no answer is not counted (upstream's rule).
    pub fn lease_listed(&self, code: u16, reason: &str, latency: Duration) {
        let labels = [("http_status_code", code.to_string()), ("reason", reason.to_owned())];
        self.lease_lists.get_or_create(&labels).inc();
        self.lease_list_latency.get_or_create(&[("http_status_code", code.to_string())]).observe_duration(latency);
    }

    /// Lease lists answered with `code` and `reason`.
    pub fn lease_lists(&self, code: u16, reason: &str) -> u64 {
        let labels = [("http_status_code", code.to_string()), ("reason", reason.to_owned())];
        self.lease_lists.get(&labels).map_or(0, |c| c.get())
    }

    /// The garbage collector's deletion of an expired Lease was answered
    /// (see [`Metrics::lease_listed`]).
    pub fn lease_deleted(&self, code: u16, reason: &str, latency: Duration) {
        let labels = [("http_status_code", code.to_string()), ("reason", reason.to_owned())];
        self.lease_deletes.get_or_create(&labels).inc();
        self.lease_delete_latency.get_or_create(&[("http_status_code", code.to_string())]).observe_duration(latency);
    }

    /// Lease deletions answered with `code` and `reason`.
    pub fn lease_deletes(&self, code: u16, reason: &str) -> u64 {
        let labels = [("http_status_code", code.to_string()), ("reason", reason.to_owned())];
        self.lease_deletes.get(&labels).map_or(0, |c| c.get())
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

    const P: &str = "konnectivity_network_proxy_server_";

    /// Upstream v0.36.0's server metrics as client_golang exposes them
    /// (pkg/server/metrics/metrics.go; the stream metrics come from
    /// konnectivity-client/pkg/common/metrics): name, type, and each label
    /// with the values upstream uses (empty: any).
    const UPSTREAM_EXPOSED: &[Expected] = &[
        Expected { name: "konnectivity_network_proxy_server_dial_duration_seconds", kind: "histogram", labels: &[] },
        Expected {
            name: "konnectivity_network_proxy_server_frontend_write_duration_seconds",
            kind: "histogram",
            labels: &[],
        },
        Expected {
            name: "konnectivity_network_proxy_server_grpc_connections",
            kind: "gauge",
            labels: &[("service_method", &["Proxy", "Connect"])],
        },
        Expected { name: "konnectivity_network_proxy_server_http_connections", kind: "gauge", labels: &[] },
        Expected { name: "konnectivity_network_proxy_server_ready_backend_connections", kind: "gauge", labels: &[] },
        Expected {
            name: "konnectivity_network_proxy_server_ready_backends",
            kind: "gauge",
            labels: &[("proxy_strategy", &["default", "destHost", "defaultRoute"])],
        },
        Expected { name: "konnectivity_network_proxy_server_pending_backend_dials", kind: "gauge", labels: &[] },
        Expected { name: "konnectivity_network_proxy_server_established_connections", kind: "gauge", labels: &[] },
        Expected {
            name: "konnectivity_network_proxy_server_dial_failure_count",
            kind: "counter",
            labels: &[(
                "reason",
                &[
                    "no_agent",
                    "error_response",
                    "unrecognized_response",
                    "send_rsp",
                    "backend_close",
                    "backend_dial_timeout",
                    "frontend_close",
                ],
            )],
        },
        Expected {
            name: "konnectivity_network_proxy_server_stream_packets_total",
            kind: "counter",
            labels: &[("segment", SEGMENTS), ("packet_type", PACKET_TYPE_NAMES)],
        },
        Expected {
            name: "konnectivity_network_proxy_server_stream_errors_total",
            kind: "counter",
            labels: &[("segment", SEGMENTS), ("code", GRPC_CODES), ("packet_type", PACKET_TYPE_NAMES)],
        },
        Expected { name: "konnectivity_network_proxy_server_culled_leases_count", kind: "counter", labels: &[] },
        Expected {
            name: "konnectivity_network_proxy_server_lease_list_total",
            kind: "counter",
            labels: &[("http_status_code", &[]), ("reason", &[])],
        },
        Expected {
            name: "konnectivity_network_proxy_server_lease_list_latency_seconds",
            kind: "histogram",
            labels: &[("http_status_code", &[])],
        },
        Expected {
            name: "konnectivity_network_proxy_server_lease_delete_total",
            kind: "counter",
            labels: &[("http_status_code", &[]), ("reason", &[])],
        },
        Expected {
            name: "konnectivity_network_proxy_server_lease_delete_latency_seconds",
            kind: "histogram",
            labels: &[("http_status_code", &[])],
        },
    ];

    const SEGMENTS: &[&str] = &["from_client", "to_client", "from_agent", "to_agent"];
    const PACKET_TYPE_NAMES: &[&str] =
        &["DIAL_REQ", "DIAL_RSP", "CLOSE_REQ", "CLOSE_RSP", "DATA", "DIAL_CLS", "DRAIN", "Unknown"];
    const GRPC_CODES: &[&str] = &[
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];

    /// Upstream v0.36.0's server metrics konnq does not expose, and why.
    const UPSTREAM_NOT_EXPOSED: &[(&str, &str)] = &[(
        "konnectivity_network_proxy_server_full_receive_channels",
        "no per-stream receive channel: a slow side is pushed back by HTTP/2 and QUIC flow control, \
             and nothing waits on a full channel",
    )];

    /// Every family gets a sample, through the calls the server makes.
    fn exercised() -> Metrics {
        let m = Metrics::new();
        m.set_ready_backends(2, &[(ProxyStrategy::Default, 2)]);
        m.pending_dials.inc();
        m.established.inc();
        m.proxy_streams.inc();
        m.http_connections.inc();
        m.dial_duration.observe(0.003);
        m.frontend_write_duration.observe(0.00002);
        for why in DialFailure::ALL {
            m.dial_failed(why);
        }
        m.packet(Segment::FromClient, PacketType::DialReq as i32);
        m.packet(Segment::FromClient, 42);
        m.packet(Segment::ToClient, PacketType::DialRsp as i32);
        m.stream_error(Segment::FromClient, tonic::Code::Cancelled);
        m.bytes_to_agent(10);
        m.bytes_to_client(20);
        m.frontend_error("second_dial");
        m.token_review_queue.set(1);
        m.token_reviewed("authenticated");
        m.agent_auth_failed("no_token");
        m.culled_leases.inc();
        m.lease_listed(200, "", Duration::from_millis(3));
        m.lease_listed(403, "Forbidden", Duration::from_millis(2));
        m.lease_deleted(409, "Conflict", Duration::from_millis(4));
        m
    }

    #[test]
    fn upstream_families_have_upstream_names_types_and_labels() {
        let text = exercised().render();
        let absent: Vec<&str> = UPSTREAM_NOT_EXPOSED.iter().map(|(name, _)| *name).collect();
        if let Err(problems) = compare(&text, UPSTREAM_EXPOSED, &absent, "konnq_server_") {
            panic!("{}\n\n{text}", problems.join("\n"));
        }
        let names = UPSTREAM_EXPOSED.iter().map(|e| e.name).chain(absent.iter().copied());
        assert_eq!(names.filter(|n| !n.starts_with(P)).count(), 0, "upstream's server prefix");
    }

    #[test]
    fn samples_read_as_upstream_writes_them() {
        let text = exercised().render();
        for line in [
            "konnectivity_network_proxy_server_dial_failure_count{reason=\"backend_dial_timeout\"} 1\n",
            "konnectivity_network_proxy_server_stream_packets_total{segment=\"from_client\",packet_type=\"DIAL_REQ\"} 1\n",
            "konnectivity_network_proxy_server_stream_packets_total{segment=\"from_client\",packet_type=\"Unknown\"} 1\n",
            "konnectivity_network_proxy_server_stream_errors_total{segment=\"from_client\",code=\"Canceled\",packet_type=\"Unknown\"} 1\n",
            "konnectivity_network_proxy_server_ready_backends{proxy_strategy=\"default\"} 2\n",
            "konnectivity_network_proxy_server_grpc_connections{service_method=\"Connect\"} 0\n",
            "konnectivity_network_proxy_server_dial_duration_seconds_bucket{le=\"0.005\"} 1\n",
            "konnectivity_network_proxy_server_frontend_write_duration_seconds_bucket{le=\"1e-05\"} 0\n",
            "konnq_server_bytes_total{direction=\"to_client\"} 20\n",
            "konnq_server_token_review_queue 1\n",
            "konnq_server_frontend_buffered_bytes 0\n",
            "konnectivity_network_proxy_server_culled_leases_count 1\n",
            "konnectivity_network_proxy_server_lease_list_total{http_status_code=\"403\",reason=\"Forbidden\"} 1\n",
            "konnectivity_network_proxy_server_lease_list_total{http_status_code=\"200\",reason=\"\"} 1\n",
            "konnectivity_network_proxy_server_lease_list_latency_seconds_bucket{le=\"0.005\",http_status_code=\"200\"} 1\n",
            "konnectivity_network_proxy_server_lease_delete_latency_seconds_bucket{le=\"10\",http_status_code=\"409\"} 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("dial_failure_count_total"), "{text}");
    }

    #[test]
    fn gauges_that_upstream_sets_at_start_are_there_from_the_start() {
        // The backend sets `ready_backends` of every configured strategy as
        // it starts (see `Backend::new`).
        let text = Metrics::new().render();
        assert!(text.contains("konnectivity_network_proxy_server_ready_backend_connections 0\n"), "{text}");
        assert!(text.contains("konnectivity_network_proxy_server_culled_leases_count 0\n"), "{text}");
        assert!(!text.contains("dial_failure_count"), "no failure yet, no series: {text}");
    }

    #[test]
    fn ready_backends_has_one_series_per_configured_strategy() {
        let m = Metrics::new();
        m.set_ready_backends(3, &[(ProxyStrategy::DestHost, 1), (ProxyStrategy::Default, 3)]);
        let text = m.render();
        for line in [
            "konnectivity_network_proxy_server_ready_backend_connections 3\n",
            "konnectivity_network_proxy_server_ready_backends{proxy_strategy=\"destHost\"} 1\n",
            "konnectivity_network_proxy_server_ready_backends{proxy_strategy=\"default\"} 3\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("defaultRoute"), "not configured, no series: {text}");
        assert_eq!(m.ready_backends_of(ProxyStrategy::DestHost), Some(1));
        assert_eq!(m.ready_backends_of(ProxyStrategy::DefaultRoute), None);
    }
}
