//! Prometheus metrics of the server, under upstream's names
//! (`konnectivity_network_proxy_server_*`) so existing dashboards carry over,
//! plus konnq's own under `konnq_server_*` (agent authentication).

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// Every metric the server exports. Cheap to clone (all handles are shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Agents connected and not draining.
    pub ready_backends: Gauge,
    /// Dials sent to an agent and not yet answered.
    pub pending_dials: Gauge,
    /// Proxied connections established and not yet closed.
    pub established: Gauge,
    /// Frontend Proxy streams currently open.
    pub frontend_streams: Gauge,
    /// DIAL_REQ → agent's answer, successful dials only.
    pub dial_duration: Histogram,
    dial_failures: Family<Labels, Counter>,
    bytes: Family<Labels, Counter>,
    frontend_errors: Family<Labels, Counter>,
    /// TokenReviews waiting for the rate limit.
    pub token_review_queue: Gauge,
    token_reviews: Family<Labels, Counter>,
    agent_auth_failures: Family<Labels, Counter>,
}

/// Why a dial failed (the `reason` label of the dial failure counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialFailure {
    NoAgent,
    /// The agent answered with an error (target refused, unresolvable, ...).
    Endpoint,
    /// `--backend-dial-timeout` expired.
    Timeout,
    /// The agent connection broke or the agent misbehaved.
    Backend,
    /// The client sent DIAL_CLS or went away before the answer.
    Cancelled,
}

impl DialFailure {
    pub fn label(self) -> &'static str {
        match self {
            DialFailure::NoAgent => "no_agent",
            DialFailure::Endpoint => "endpoint",
            DialFailure::Timeout => "timeout",
            DialFailure::Backend => "backend",
            DialFailure::Cancelled => "cancelled",
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("konnectivity_network_proxy_server");
        let ready_backends = Gauge::default();
        let pending_dials = Gauge::default();
        let established = Gauge::default();
        let frontend_streams = Gauge::default();
        let dial_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let dial_failures = Family::<Labels, Counter>::default();
        let bytes = Family::<Labels, Counter>::default();
        let frontend_errors = Family::<Labels, Counter>::default();
        registry.register("ready_backend_connections", "Agents connected and accepting dials", ready_backends.clone());
        registry.register("pending_backend_dials", "Dials waiting for an agent's answer", pending_dials.clone());
        registry.register("established_connections", "Proxied connections currently open", established.clone());
        registry.register("grpc_connections", "Frontend Proxy streams currently open", frontend_streams.clone());
        registry.register(
            "dial_duration_seconds",
            "Time from DIAL_REQ to the agent's successful answer",
            dial_duration.clone(),
        );
        registry.register("dial_failure_count", "Failed dials by reason", dial_failures.clone());
        registry.register("bytes", "Bytes proxied, by direction (to_agent, to_client)", bytes.clone());
        registry.register(
            "frontend_errors",
            "Protocol violations by frontend clients, by kind",
            frontend_errors.clone(),
        );
        let token_review_queue = Gauge::default();
        let token_reviews = Family::<Labels, Counter>::default();
        let agent_auth_failures = Family::<Labels, Counter>::default();
        let konnq = root.sub_registry_with_prefix("konnq_server");
        konnq.register(
            "token_review_queue",
            "TokenReviews waiting for the kubeconfig-qps / kubeconfig-burst rate limit",
            token_review_queue.clone(),
        );
        konnq.register(
            "token_reviews",
            "TokenReviews sent to kube-apiserver, by result (authenticated, rejected, error)",
            token_reviews.clone(),
        );
        konnq.register(
            "agent_auth_failures",
            "Agents refused by token authentication, by reason (no_token, invalid_token, wrong_account, unreachable)",
            agent_auth_failures.clone(),
        );
        Metrics {
            registry: Arc::new(root),
            ready_backends,
            pending_dials,
            established,
            frontend_streams,
            dial_duration,
            dial_failures,
            bytes,
            frontend_errors,
            token_review_queue,
            token_reviews,
            agent_auth_failures,
        }
    }

    pub fn dial_failed(&self, why: DialFailure) {
        self.dial_failures.get_or_create(&vec![("reason", why.label())]).inc();
    }

    pub fn dial_failures(&self, why: DialFailure) -> u64 {
        self.dial_failures.get_or_create(&vec![("reason", why.label())]).get()
    }

    pub fn bytes_to_agent(&self, n: usize) {
        self.bytes.get_or_create(&vec![("direction", "to_agent")]).inc_by(n as u64);
    }

    pub fn bytes_to_client(&self, n: usize) {
        self.bytes.get_or_create(&vec![("direction", "to_client")]).inc_by(n as u64);
    }

    pub fn frontend_error(&self, kind: &'static str) {
        self.frontend_errors.get_or_create(&vec![("kind", kind)]).inc();
    }

    pub fn frontend_errors(&self, kind: &'static str) -> u64 {
        self.frontend_errors.get_or_create(&vec![("kind", kind)]).get()
    }

    /// `result`: authenticated, rejected or error.
    pub fn token_reviewed(&self, result: &'static str) {
        self.token_reviews.get_or_create(&vec![("result", result)]).inc();
    }

    pub fn token_reviews(&self, result: &'static str) -> u64 {
        self.token_reviews.get_or_create(&vec![("result", result)]).get()
    }

    /// `reason`: the [`AuthError`](crate::auth::AuthError) label.
    pub fn agent_auth_failed(&self, reason: &'static str) {
        self.agent_auth_failures.get_or_create(&vec![("reason", reason)]).inc();
    }

    pub fn agent_auth_failures(&self, reason: &'static str) -> u64 {
        self.agent_auth_failures.get_or_create(&vec![("reason", reason)]).get()
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
