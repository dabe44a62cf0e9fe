//! `konnq-agent` configuration: every key declared once in
//! [`RawAgentConfig`] (TOML / flags), validated into [`AgentConfig`].

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::identifiers::AgentIdentifiers;
use super::leases::{LeaseCountConfig, RawLeases, ServerCountSource};
use super::settings::settings;
use super::transport::AgentTransport;
use super::{
    format_duration, non_empty_path, non_empty_string, parse_bind_address, parse_duration, parse_go_bool,
    parse_klog_level, parse_path, parse_toml, random_id, read_toml, ConfigError, LogConfig, LogFormat, Problems,
    QuicConfig, RawQuicConfig, DEFAULT_WORKER_THREADS,
};

/// Validated agent configuration; see `conf/agent.toml` for every key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    pub agent_id: String,
    pub agent_identifiers: AgentIdentifiers,
    pub proxy_server_host: String,
    pub proxy_server_port: u16,
    /// TLS name to verify on the server's certificate; `None` = `proxy_server_host`.
    pub server_name: Option<String>,
    pub ca_cert: PathBuf,
    /// Client certificate and key, for servers that require mTLS.
    pub agent_tls: Option<(PathBuf, PathBuf)>,
    /// ALPN protocols offered before konnq's own (upstream's `--alpn-proto`).
    pub alpn_proto: Vec<String>,
    pub health_bind_address: IpAddr,
    pub health_server_port: u16,
    pub admin_bind_address: IpAddr,
    pub admin_server_port: u16,
    /// Serve `/debug/pprof/` (CPU profiles) on the admin port.
    pub enable_profiling: bool,
    /// Reconnect backoff start.
    pub sync_interval: Duration,
    /// Reconnect backoff cap.
    pub sync_interval_cap: Duration,
    /// Keep probing for servers after holding one connection to each.
    pub sync_forever: bool,
    /// How long a draining agent waits for its proxied connections to end.
    pub graceful_shutdown_timeout: Duration,
    /// QUIC over UDP, QUIC datagrams over TCP, or UDP first and TCP when
    /// UDP gets no answer.
    pub transport: AgentTransport,
    /// `auto`: how long a QUIC handshake may go unanswered before TCP.
    pub transport_fallback_after: Duration,
    /// TCP dial timeout to targets.
    pub dial_timeout: Duration,
    /// Service-account token sent to the server (the path, not the secret).
    pub service_account_token_path: Option<PathBuf>,
    /// `Some`: count the valid server Leases.
    pub lease_counting: Option<LeaseCountConfig>,
    /// How the lease count and the servers' announced count combine.
    pub server_count_source: ServerCountSource,
    pub quic: QuicConfig,
    pub log: LogConfig,
    /// Tokio worker threads; 0 = one per CPU.
    pub worker_threads: u16,
}

impl AgentConfig {
    /// Parses and validates a TOML document.
    pub fn from_toml_str(s: &str) -> Result<AgentConfig, ConfigError> {
        RawAgentConfig::from_toml_str(s)?.validate()
    }

    /// Reads, parses and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<AgentConfig, ConfigError> {
        RawAgentConfig::from_file(path)?.validate()
    }

    /// The name the server's certificate must carry.
    pub fn tls_server_name(&self) -> &str {
        self.server_name.as_deref().unwrap_or(&self.proxy_server_host)
    }
}

settings! {
    /// Agent settings as given in TOML or on the command line; `None` = not
    /// given. Keys are the flag names: `proxy-server-host` ↔ `--proxy-server-host`.
    #[derive(Eq)]
    RawAgentConfig, defaults AgentDefaults {
        /// Server host name or address.
        #[arg(long, value_name = "HOST")]
        proxy_server_host: String = "127.0.0.1".into(),
        /// Server UDP (QUIC) port.
        #[arg(long, value_name = "PORT")]
        proxy_server_port: u16 = 8091,
        /// CA that signed the server's certificate (required).
        #[arg(long, value_name = "FILE", value_parser = parse_path)]
        ca_cert: PathBuf,
        /// Client certificate for mTLS (with --agent-key).
        #[arg(long, value_name = "FILE", value_parser = parse_path)]
        agent_cert: PathBuf,
        /// Client key for mTLS (with --agent-cert).
        #[arg(long, value_name = "FILE", value_parser = parse_path)]
        agent_key: PathBuf,
        /// Name to verify in the server certificate [default: --proxy-server-host].
        #[arg(long, value_name = "NAME")]
        server_name: String,
        /// More ALPN protocols to offer the server, before konnq's own; comma-separated, repeatable.
        #[arg(long, value_name = "LIST", value_delimiter = ',')]
        alpn_proto: Vec<String>,
        /// Id of this agent; when not given, $PROXY_AGENT_ID if set [default: random].
        #[arg(long, value_name = "ID")]
        agent_id: String,
        /// Reachability for routing: host=a&ipv4=1.2.3.4&ipv6=::1&cidr=10.0.0.0/8&default-route=true
        #[arg(long, value_name = "IDS")]
        agent_identifiers: String,
        /// Admin / metrics port.
        #[arg(long, value_name = "PORT")]
        admin_server_port: u16 = 8094,
        /// Admin / metrics address; empty = all.
        #[arg(long, value_name = "IP", value_parser = parse_bind_address)]
        admin_bind_address: IpAddr = Ipv4Addr::LOCALHOST.into(),
        /// Serve /debug/pprof/ (CPU profiles for go tool pprof) on the admin port.
        #[arg(long, value_name = "BOOL", value_parser = parse_go_bool)]
        #[arg(num_args = 0..=1, default_missing_value = "true")] // a Go bool: the flag alone is true
        enable_profiling: bool = false,
        /// /healthz and /readyz port.
        #[arg(long, value_name = "PORT")]
        health_server_port: u16 = 8093,
        /// /healthz and /readyz address; empty = all.
        #[arg(long, visible_alias = "health-server-host", value_name = "IP", value_parser = parse_bind_address)]
        health_bind_address: IpAddr = Ipv4Addr::UNSPECIFIED.into(),
        /// Service-account token file sent to the server.
        #[arg(long, value_name = "FILE", value_parser = parse_path)]
        service_account_token_path: PathBuf,
        /// First reconnect delay, e.g. 1s.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        #[serde(default, with = "humantime_serde")]
        sync_interval: Duration = Duration::from_secs(1),
        /// Longest reconnect delay, e.g. 10s.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        #[serde(default, with = "humantime_serde")]
        sync_interval_cap: Duration = Duration::from_secs(10),
        /// Keep probing for more servers after holding a connection to each known one.
        #[arg(long, value_name = "BOOL", value_parser = parse_go_bool)]
        #[arg(num_args = 0..=1, default_missing_value = "true")] // a Go bool: the flag alone is true
        sync_forever: bool = false,
        /// On SIGTERM, how long proxied connections may take to finish, e.g. 15s.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        #[serde(default, with = "humantime_serde")]
        graceful_shutdown_timeout: Duration = Duration::from_secs(15),
        /// How to reach the servers: auto (QUIC, TCP when UDP gets no answer), quic or tcp.
        #[arg(long, value_name = "MODE")]
        transport: AgentTransport = AgentTransport::Auto,
        /// auto: how long a QUIC handshake may go unanswered before TCP is used, e.g. 3s.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        #[serde(default, with = "humantime_serde")]
        transport_fallback_after: Duration = Duration::from_secs(3),
        /// TCP dial timeout to targets, e.g. 5s.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        #[serde(default, with = "humantime_serde")]
        dial_timeout: Duration = Duration::from_secs(5),
        /// Count the valid server Leases to know how many servers there are.
        #[arg(long, value_name = "BOOL", value_parser = parse_go_bool)]
        #[arg(num_args = 0..=1, default_missing_value = "true")] // a Go bool: the flag alone is true
        count_server_leases: bool = false,
        /// Namespace of the server Leases.
        #[arg(long, value_name = "NAMESPACE")]
        lease_namespace: String = "kube-system".into(),
        /// Labels of the server Leases to count: comma-separated key=value pairs.
        // Newer upstream releases spell it --lease-label-selector; both are accepted.
        #[arg(long, value_name = "LABELS", visible_alias = "lease-label-selector")]
        #[serde(alias = "lease-label-selector")]
        lease_label: String = "k8s-app=konnectivity-server".into(),
        /// Server count to aim for: default (the lease count when counting, else the servers' count) or max (the larger).
        #[arg(long, value_name = "SOURCE")]
        server_count_source: ServerCountSource = ServerCountSource::Default,
        /// kubeconfig for counting leases; empty = in-cluster config.
        #[arg(long, value_name = "FILE", value_parser = parse_path)]
        kubeconfig: PathBuf,
        /// Runtime worker threads; 0 = one per CPU.
        #[arg(long, value_name = "N")]
        worker_threads: u16 = DEFAULT_WORKER_THREADS,
        /// Log verbosity (-v=4 and --v=4 work too).
        #[arg(short = 'v', long = "v", value_name = "LEVEL", value_parser = parse_klog_level)]
        v: u8 = 0,
        /// Log line format: text or json.
        #[arg(long, value_name = "FORMAT")]
        log_format: LogFormat = LogFormat::Text,
        /// Accepted for upstream parity and ignored: konnq always logs to stderr.
        // TOML only: the flag is in upstream::KLOG, with its warning.
        #[arg(skip)]
        logtostderr: bool,
    }
    tables { quic: RawQuicConfig }
}

impl RawAgentConfig {
    /// Parses TOML (unknown keys are errors); does not validate.
    pub fn from_toml_str(s: &str) -> Result<RawAgentConfig, ConfigError> {
        parse_toml(s, "string")
    }

    /// Reads and parses a TOML file; does not validate.
    pub fn from_file(path: &Path) -> Result<RawAgentConfig, ConfigError> {
        read_toml(path)
    }

    /// Fills defaults and checks every value; all problems are reported.
    /// (Long: one line per field of [`AgentConfig`].)
    pub fn validate(self) -> Result<AgentConfig, ConfigError> {
        let d = RawAgentConfig::defaults();
        let mut p = Problems::default();
        let agent_identifiers = agent_identifiers(&mut p, self.agent_identifiers.as_deref().unwrap_or(""));
        let proxy_server_host = self.proxy_server_host.unwrap_or(d.proxy_server_host);
        if proxy_server_host.is_empty() {
            p.push("proxy-server-host", "must not be empty");
        }
        let proxy_server_port =
            p.in_range("proxy-server-port", self.proxy_server_port.unwrap_or(d.proxy_server_port), 1, u16::MAX);
        let agent_tls = agent_tls(&mut p, self.agent_cert, self.agent_key);
        let alpn_proto = alpn_protocols(&mut p, self.alpn_proto.unwrap_or_default());
        let sync_interval = p.positive("sync-interval", self.sync_interval.unwrap_or(d.sync_interval));
        let sync_interval_cap = self.sync_interval_cap.unwrap_or(d.sync_interval_cap);
        if sync_interval_cap < sync_interval {
            p.push(
                "sync-interval-cap",
                format!(
                    "must be at least sync-interval ({} < {})",
                    format_duration(sync_interval_cap),
                    format_duration(sync_interval)
                ),
            );
        }
        let health_server_port = self.health_server_port.unwrap_or(d.health_server_port);
        let admin_server_port = self.admin_server_port.unwrap_or(d.admin_server_port);
        if health_server_port != 0 && health_server_port == admin_server_port {
            p.push("admin-server-port", format!("port {admin_server_port} is already used by health-server-port"));
        }
        let lease_counting = RawLeases {
            enabled: self.count_server_leases.unwrap_or(d.count_server_leases),
            namespace: self.lease_namespace.unwrap_or(d.lease_namespace),
            label: self.lease_label.unwrap_or(d.lease_label),
            kubeconfig: self.kubeconfig,
        }
        .counting(&mut p);
        let config = AgentConfig {
            agent_id: non_empty_string(self.agent_id).unwrap_or_else(random_id),
            agent_identifiers,
            proxy_server_host,
            proxy_server_port,
            server_name: non_empty_string(self.server_name),
            ca_cert: p.required_path("ca-cert", self.ca_cert),
            agent_tls,
            alpn_proto,
            health_bind_address: self.health_bind_address.unwrap_or(d.health_bind_address),
            health_server_port,
            admin_bind_address: self.admin_bind_address.unwrap_or(d.admin_bind_address),
            admin_server_port,
            enable_profiling: self.enable_profiling.unwrap_or(d.enable_profiling),
            sync_interval,
            sync_interval_cap,
            sync_forever: self.sync_forever.unwrap_or(d.sync_forever),
            graceful_shutdown_timeout: self.graceful_shutdown_timeout.unwrap_or(d.graceful_shutdown_timeout),
            transport: self.transport.unwrap_or(d.transport),
            transport_fallback_after: p.positive(
                "transport-fallback-after",
                self.transport_fallback_after.unwrap_or(d.transport_fallback_after),
            ),
            dial_timeout: p.positive("dial-timeout", self.dial_timeout.unwrap_or(d.dial_timeout)),
            service_account_token_path: non_empty_path(self.service_account_token_path),
            lease_counting,
            server_count_source: self.server_count_source.unwrap_or(d.server_count_source),
            quic: self.quic.unwrap_or_default().check(&mut p),
            log: LogConfig { verbosity: self.v.unwrap_or(d.v), format: self.log_format.unwrap_or(d.log_format) },
            worker_threads: p.worker_threads(self.worker_threads.unwrap_or(d.worker_threads)),
        };
        p.finish(config)
    }
}

/// Upstream's `host=a&ipv4=1.2.3.4&...`; each problem is one of `agent-identifiers`.
fn agent_identifiers(p: &mut Problems, text: &str) -> AgentIdentifiers {
    AgentIdentifiers::parse(text).unwrap_or_else(|errors| {
        for e in errors {
            p.push("agent-identifiers", e);
        }
        AgentIdentifiers::default()
    })
}

/// ALPN protocol names: empty ones dropped (Go's `--alpn-proto=`), each at
/// most 255 bytes (TLS's limit).
fn alpn_protocols(p: &mut Problems, names: Vec<String>) -> Vec<String> {
    let names: Vec<String> = names.into_iter().filter(|n| !n.is_empty()).collect();
    for long in names.iter().filter(|n| n.len() > 255) {
        p.push("alpn-proto", format!("{long:?} is longer than 255 bytes"));
    }
    names
}

/// `agent-cert` and `agent-key` come as a pair; the problem names the missing one.
fn agent_tls(p: &mut Problems, cert: Option<PathBuf>, key: Option<PathBuf>) -> Option<(PathBuf, PathBuf)> {
    match (non_empty_path(cert), non_empty_path(key)) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => {
            p.push("agent-key", "required when agent-cert is set");
            None
        }
        (None, Some(_)) => {
            p.push("agent-cert", "required when agent-key is set");
            None
        }
    }
}

#[cfg(test)]
mod tests;
