//! Prometheus metrics of the agent, under upstream's names
//! (`konnectivity_network_proxy_agent_*`), plus konnq's own under
//! `konnq_agent_*` (QUIC-only events upstream has no name for).

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// 1 while connected to a server, else 0.
    pub server_connections: Gauge,
    /// TCP connections to targets currently open.
    pub open_endpoint_connections: Gauge,
    /// Dials in progress.
    pub pending_dials: Gauge,
    pub dial_duration: Histogram,
    dial_failures: Family<Labels, Counter>,
    stream_errors: Family<Labels, Counter>,
    bytes: Family<Labels, Counter>,
    pub server_connection_failures: Counter,
    /// Moves of the QUIC endpoint to a new local UDP socket.
    pub socket_rebinds: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            server_connections: Gauge::default(),
            open_endpoint_connections: Gauge::default(),
            pending_dials: Gauge::default(),
            dial_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            dial_failures: Family::default(),
            stream_errors: Family::default(),
            bytes: Family::default(),
            server_connection_failures: Counter::default(),
            socket_rebinds: Counter::default(),
        };
        let registry = root.sub_registry_with_prefix("konnectivity_network_proxy_agent");
        registry.register("server_connections", "Connections to konnq servers", m.server_connections.clone());
        registry.register(
            "open_endpoint_connections",
            "TCP connections to targets currently open",
            m.open_endpoint_connections.clone(),
        );
        registry.register("pending_dials", "Dials to targets in progress", m.pending_dials.clone());
        registry.register("dial_duration_seconds", "Time to dial a target", m.dial_duration.clone());
        registry.register("endpoint_dial_failure", "Failed target dials by reason", m.dial_failures.clone());
        registry.register("stream_errors", "Dial streams refused or broken, by kind", m.stream_errors.clone());
        registry.register("bytes", "Bytes proxied, by direction (to_target, to_server)", m.bytes.clone());
        registry.register(
            "server_connection_failure",
            "Failed attempts to connect to a server",
            m.server_connection_failures.clone(),
        );
        root.sub_registry_with_prefix("konnq_agent").register(
            "socket_rebinds",
            "Moves of the QUIC endpoint to a new local UDP socket (SIGUSR1)",
            m.socket_rebinds.clone(),
        );
        Metrics { registry: Arc::new(root), ..m }
    }

    pub fn dial_failed(&self, reason: &'static str) {
        self.dial_failures.get_or_create(&vec![("reason", reason)]).inc();
    }

    pub fn dial_failures(&self, reason: &'static str) -> u64 {
        self.dial_failures.get_or_create(&vec![("reason", reason)]).get()
    }

    pub fn stream_error(&self, kind: &'static str) {
        self.stream_errors.get_or_create(&vec![("kind", kind)]).inc();
    }

    pub fn stream_errors(&self, kind: &'static str) -> u64 {
        self.stream_errors.get_or_create(&vec![("kind", kind)]).get()
    }

    pub fn bytes_to_target(&self, n: usize) {
        self.bytes.get_or_create(&vec![("direction", "to_target")]).inc_by(n as u64);
    }

    pub fn bytes_to_server(&self, n: usize) {
        self.bytes.get_or_create(&vec![("direction", "to_server")]).inc_by(n as u64);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_names_and_konnq_names() {
        let m = Metrics::new();
        m.server_connection_failures.inc();
        m.socket_rebinds.inc();
        m.socket_rebinds.inc();
        let text = m.render();
        assert!(text.contains("\nkonnectivity_network_proxy_agent_server_connection_failure_total 1\n"), "{text}");
        assert!(text.contains("\nkonnq_agent_socket_rebinds_total 2\n"), "{text}");
        assert!(!text.contains("konnectivity_network_proxy_agent_konnq"), "{text}");
    }
}
