//! `konnq-server` configuration: every key declared once in
//! [`RawServerConfig`] (TOML / flags), validated into [`ServerConfig`].

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::leases::{LeaseControllerConfig, RawLeases};
use super::proxy_strategies::ProxyStrategies;
use super::settings::{settings, DefaultValue, Shown};
use super::token_auth::{RawTokenAuth, TokenAuthConfig};
use super::transport::AgentTransports;
use super::{
    non_empty_path, non_empty_string, parse_bind_address, parse_duration, parse_go_bool, parse_klog_level, parse_path,
    parse_toml, random_id, read_toml, ConfigError, LogConfig, LogFormat, Problems, QuicConfig, RawQuicConfig, TlsFiles,
    DEFAULT_WORKER_THREADS, MIB,
};

/// How kube-apiserver talks to the frontend (upstream's `--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FrontendMode {
    /// Konnectivity gRPC `ProxyService` (`proxyProtocol: GRPC`).
    Grpc,
    /// HTTP `CONNECT` per dial (`proxyProtocol: HTTPConnect`).
    HttpConnect,
}

impl FrontendMode {
    pub fn name(self) -> &'static str {
        match self {
            FrontendMode::Grpc => "grpc",
            FrontendMode::HttpConnect => "http-connect",
        }
    }
}

impl FromStr for FrontendMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "grpc" => Ok(FrontendMode::Grpc),
            "http-connect" => Ok(FrontendMode::HttpConnect),
            _ => Err(format!("invalid mode {s:?} (expected grpc or http-connect)")),
        }
    }
}

impl DefaultValue for FrontendMode {
    fn shown(&self) -> Shown {
        Shown { text: self.name().to_owned(), quoted: true }
    }
}

/// Validated server configuration; see `conf/server.toml` for every key.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub server_id: String,
    pub server_count: u32,
    pub mode: FrontendMode,
    /// Frontend Unix socket.
    pub uds_name: Option<PathBuf>,
    pub delete_existing_uds_file: bool,
    pub server_bind_address: IpAddr,
    /// TCP frontend port; 0 = no TCP frontend.
    pub server_port: u16,
    /// Frontend TLS; `Some` exactly when `server_port > 0` (then `ca` is `Some`).
    pub server_tls: Option<TlsFiles>,
    pub agent_bind_address: IpAddr,
    /// UDP (QUIC) and TCP port agents connect to; 0 = ephemeral.
    pub agent_port: u16,
    /// Which transports agents may use on `agent_port`.
    pub agent_transports: AgentTransports,
    /// QUIC TLS towards agents; `ca: Some` means agents must present a client cert.
    pub cluster_tls: TlsFiles,
    /// `Some`: the secret that seeds the QUIC stateless-reset and
    /// connection-ID keys; `None`: they are derived from the cluster key.
    pub stateless_reset_key: Option<PathBuf>,
    /// `Some`: agents must present a ServiceAccount token (TokenReview).
    pub token_auth: Option<TokenAuthConfig>,
    /// `Some`: publish this server's Lease and delete expired ones.
    pub lease_controller: Option<LeaseControllerConfig>,
    pub health_bind_address: IpAddr,
    pub health_port: u16,
    pub admin_bind_address: IpAddr,
    pub admin_port: u16,
    /// Serve `/debug/pprof/` (CPU profiles) on the admin port.
    pub enable_profiling: bool,
    /// How a dial's agent is chosen: strategies tried in order; `/readyz`
    /// follows the first.
    pub proxy_strategies: ProxyStrategies,
    /// How long a dial may wait for the agent; `None` = no limit (upstream's 0).
    pub backend_dial_timeout: Option<Duration>,
    pub graceful_shutdown_timeout: Duration,
    /// gRPC frontend: PING a connection idle this long (upstream's
    /// `--frontend-keepalive-time`).
    pub frontend_keepalive_time: Duration,
    pub max_message_bytes: usize,
    pub quic: QuicConfig,
    pub log: LogConfig,
    /// Tokio worker threads; 0 = one per CPU.
    pub worker_threads: u16,
}

impl ServerConfig {
    /// Parses and validates a TOML document.
    pub fn from_toml_str(s: &str) -> Result<ServerConfig, ConfigError> {
        RawServerConfig::from_toml_str(s)?.validate()
    }

    /// Reads, parses and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<ServerConfig, ConfigError> {
        RawServerConfig::from_file(path)?.validate()
    }
}

// The keys in `--help` order. Defaults that differ from upstream's say why
// in conf/server.toml.
settings! {
    /// Server settings as given in TOML or on the command line; `None` = not
    /// given. Keys are the flag names: `uds-name` ↔ `--uds-name`.
    RawServerConfig, defaults ServerDefaults {
        /// Unix socket for kube-apiserver.
        #[arg(long, value_name = "PATH", value_parser = parse_path)]
        uds_name: PathBuf,
        /// Remove a stale socket file first.
        #[arg(long, value_name = "BOOL", value_parser = parse_go_bool)]
        #[arg(num_args = 0..=1, default_missing_value = "true")] // a Go bool: the flag alone is true
        delete_existing_uds_file: bool = true,
        /// Frontend protocol: grpc or http-connect.
        #[arg(long, value_name = "MODE")]
        mode: FrontendMode = FrontendMode::Grpc,
        /// TCP mTLS frontend port, 0 = none.
        #[arg(long, value_name = "PORT")]
        server_port: u16 = 0,
        /// Address of the TCP frontend; empty = all.
        #[arg(long, value_name = "IP", value_parser = parse_bind_address)]
        server_bind_address: IpAddr = Ipv4Addr::LOCALHOST.into(),
        /// Frontend certificate (required with --server-port).
        #[arg(long, value_name = "FILE", value_parser = parse_path)]
        server_cert: PathBuf,
        /// Frontend key (required with --server-port).
        #[arg(long, value_name = "FILE", value_parser = parse_path)]
        server_key: PathBuf,
        /// CA of kube-apiserver's client certificate (required with --server-port).
        #[arg(long, value_name = "FILE", value_parser = parse_path)]
        server_ca_cert: PathBuf,
        /// Port for agents: UDP (QUIC) and TCP (where UDP is blocked).
        #[arg(long, value_name = "PORT")]
        agent_port: u16 = 8091,
        /// Agent transports accepted on --agent-port: quic, tcp or both.
        #[arg(long, value_name = "LIST")]
        agent_transports: AgentTransports = AgentTransports::default(),
        /// Address for agents; empty = all.
        #[arg(long, value_name = "IP", value_parser = parse_bind_address)]
        agent_bind_address: IpAddr = Ipv4Addr::UNSPECIFIED.into(),
        /// Certificate presented to agents (required).
        #[arg(long, value_name = "FILE", value_parser = parse_path)]
        cluster_cert: PathBuf,
        /// Key of --cluster-cert (required).
        #[arg(long, value_name = "FILE", value_parser = parse_path)]
        cluster_key: PathBuf,
        /// CA of agents' client certificates; set = mTLS required.
        #[arg(long, value_name = "FILE", value_parser = parse_path)]
        cluster_ca_cert: PathBuf,
        /// Secret (32+ bytes) shared by the servers behind one load balancer, for QUIC resets; empty = from --cluster-key.
        #[arg(long, value_name = "FILE", value_parser = parse_path)]
        stateless_reset_key_file: PathBuf,
        /// Admin / metrics port.
        #[arg(long, value_name = "PORT")]
        admin_port: u16 = 8095,
        /// Admin / metrics address; empty = all.
        #[arg(long, value_name = "IP", value_parser = parse_bind_address)]
        admin_bind_address: IpAddr = Ipv4Addr::LOCALHOST.into(),
        /// Serve /debug/pprof/ (CPU profiles for go tool pprof) on the admin port.
        #[arg(long, value_name = "BOOL", value_parser = parse_go_bool)]
        #[arg(num_args = 0..=1, default_missing_value = "true")] // a Go bool: the flag alone is true
        enable_profiling: bool = false,
        /// /healthz and /readyz port.
        #[arg(long, value_name = "PORT")]
        health_port: u16 = 8092,
        /// /healthz and /readyz address; empty = all.
        #[arg(long, value_name = "IP", value_parser = parse_bind_address)]
        health_bind_address: IpAddr = Ipv4Addr::UNSPECIFIED.into(),
        /// Id of this server; when not given, $PROXY_SERVER_ID if set [default: random].
        #[arg(long, value_name = "ID")]
        server_id: String,
        /// Number of servers behind the load balancer.
        #[arg(long, value_name = "N")]
        server_count: u32 = 1,
        /// How a dial's agent is chosen, tried in order: destHost, defaultRoute, default.
        #[arg(long, value_name = "LIST")]
        proxy_strategies: ProxyStrategies = ProxyStrategies::default(),
        /// How long a dial waits for the agent, e.g. 10s; 0 = no limit.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        #[serde(default, with = "humantime_serde")]
        backend_dial_timeout: Duration = Duration::from_secs(10),
        /// gRPC frontend: PING a connection idle this long; 0 = default.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        #[serde(default, with = "humantime_serde")]
        frontend_keepalive_time: Duration = Duration::from_secs(30),
        /// Drain time on shutdown, e.g. 15s.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        #[serde(default, with = "humantime_serde")]
        graceful_shutdown_timeout: Duration = Duration::from_secs(15),
        /// Largest gRPC message from kube-apiserver, bytes.
        #[arg(long, value_name = "BYTES")]
        max_message_bytes: usize = 16 * MIB as usize,
        /// Runtime worker threads; 0 = one per CPU.
        #[arg(long, value_name = "N")]
        worker_threads: u16 = DEFAULT_WORKER_THREADS,
        /// Log verbosity (-v=4 and --v=4 work too).
        #[arg(short = 'v', long = "v", value_name = "LEVEL", value_parser = parse_klog_level)]
        v: u8 = 0,
        /// Log line format: text or json.
        #[arg(long, value_name = "FORMAT")]
        log_format: LogFormat = LogFormat::Text,
        /// Agents' ServiceAccount namespace; set = agents must send a token (TokenReview).
        #[arg(long, value_name = "NAMESPACE")]
        agent_namespace: String,
        /// Agents' ServiceAccount name (required with token authentication).
        #[arg(long, value_name = "NAME")]
        agent_service_account: String,
        /// Audience agents' tokens must carry (required with token authentication).
        #[arg(long, value_name = "AUDIENCE")]
        authentication_audience: String,
        /// kubeconfig for kube-apiserver (TokenReviews, leases); empty = in-cluster config.
        #[arg(long, value_name = "FILE", value_parser = parse_path)]
        kubeconfig: PathBuf,
        /// TokenReviews per second; 0 = 5, negative = no limit.
        #[arg(long, value_name = "QPS", allow_negative_numbers = true)]
        kubeconfig_qps: f64 = 0.0,
        /// TokenReview burst; 0 = 10.
        #[arg(long, value_name = "N")]
        kubeconfig_burst: u32 = 0,
        /// How long an accepted token is reused without a new review; 0 = never.
        // As long as kube-apiserver's own cache of TokenReview answers
        // (--authentication-token-webhook-cache-ttl).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        #[serde(default, with = "humantime_serde")]
        token_review_cache_ttl: Duration = Duration::from_secs(120),
        /// Publish this server's Lease and delete expired server Leases (upstream's lease controller).
        #[arg(long, value_name = "BOOL", value_parser = parse_go_bool)]
        #[arg(num_args = 0..=1, default_missing_value = "true")] // a Go bool: the flag alone is true
        enable_lease_controller: bool = false,
        /// Namespace of the server Leases.
        #[arg(long, value_name = "NAMESPACE")]
        lease_namespace: String = "kube-system".into(),
        /// Labels of the server Leases: comma-separated key=value pairs.
        // Newer upstream releases spell it --lease-label-selector; both are accepted.
        #[arg(long, value_name = "LABELS", visible_alias = "lease-label-selector")]
        #[serde(alias = "lease-label-selector")]
        lease_label: String = "k8s-app=konnectivity-server".into(),
        /// Accepted for upstream parity and ignored: TokenReviews are sent as JSON.
        // TOML only: the flag is in upstream::SERVER, with its warning.
        #[arg(skip)]
        kube_api_content_type: String,
        /// Accepted for upstream parity and ignored: konnq always logs to stderr.
        // TOML only: the flag is in upstream::KLOG, with its warning.
        #[arg(skip)]
        logtostderr: bool,
    }
    tables { quic: RawQuicConfig }
}

const MIN_MESSAGE_BYTES: usize = 4 * MIB as usize;
const MAX_MESSAGE_BYTES: usize = 256 * MIB as usize;

impl RawServerConfig {
    /// Parses TOML (unknown keys are errors); does not validate.
    pub fn from_toml_str(s: &str) -> Result<RawServerConfig, ConfigError> {
        parse_toml(s, "string")
    }

    /// Reads and parses a TOML file; does not validate.
    pub fn from_file(path: &Path) -> Result<RawServerConfig, ConfigError> {
        read_toml(path)
    }

    /// Fills defaults and checks every value; all problems are reported.
    /// (Long: one line per field of [`ServerConfig`].)
    pub fn validate(self) -> Result<ServerConfig, ConfigError> {
        let d = RawServerConfig::defaults();
        let mut p = Problems::default();
        let (uds_name, server_port, server_tls) = self.frontend(&mut p, &d);
        let cluster_tls = TlsFiles {
            cert: p.required_path("cluster-cert", self.cluster_cert),
            key: p.required_path("cluster-key", self.cluster_key),
            ca: non_empty_path(self.cluster_ca_cert),
        };
        let lease_controller = RawLeases {
            enabled: self.enable_lease_controller.unwrap_or(d.enable_lease_controller),
            namespace: self.lease_namespace.unwrap_or(d.lease_namespace),
            label: self.lease_label.unwrap_or(d.lease_label),
            kubeconfig: self.kubeconfig.clone(),
        }
        .controller(&mut p);
        let token_auth = RawTokenAuth {
            agent_namespace: self.agent_namespace,
            agent_service_account: self.agent_service_account,
            authentication_audience: self.authentication_audience,
            kubeconfig: self.kubeconfig,
            kubeconfig_qps: self.kubeconfig_qps.unwrap_or(d.kubeconfig_qps),
            kubeconfig_burst: self.kubeconfig_burst.unwrap_or(d.kubeconfig_burst),
            token_review_cache_ttl: self.token_review_cache_ttl.unwrap_or(d.token_review_cache_ttl),
        }
        .check(&mut p);
        let health_port = self.health_port.unwrap_or(d.health_port);
        let admin_port = self.admin_port.unwrap_or(d.admin_port);
        check_distinct_tcp_ports(
            &mut p,
            &[("server-port", server_port), ("health-port", health_port), ("admin-port", admin_port)],
        );
        let max_message_bytes = self.max_message_bytes.unwrap_or(d.max_message_bytes);
        let config = ServerConfig {
            server_id: non_empty_string(self.server_id).unwrap_or_else(random_id),
            server_count: p.in_range("server-count", self.server_count.unwrap_or(d.server_count), 1, u32::MAX),
            mode: self.mode.unwrap_or(d.mode),
            uds_name,
            delete_existing_uds_file: self.delete_existing_uds_file.unwrap_or(d.delete_existing_uds_file),
            server_bind_address: self.server_bind_address.unwrap_or(d.server_bind_address),
            server_port,
            server_tls,
            agent_bind_address: self.agent_bind_address.unwrap_or(d.agent_bind_address),
            agent_port: self.agent_port.unwrap_or(d.agent_port),
            agent_transports: self.agent_transports.unwrap_or(d.agent_transports),
            cluster_tls,
            stateless_reset_key: non_empty_path(self.stateless_reset_key_file),
            token_auth,
            lease_controller,
            health_bind_address: self.health_bind_address.unwrap_or(d.health_bind_address),
            health_port,
            admin_bind_address: self.admin_bind_address.unwrap_or(d.admin_bind_address),
            admin_port,
            enable_profiling: self.enable_profiling.unwrap_or(d.enable_profiling),
            proxy_strategies: self.proxy_strategies.unwrap_or(d.proxy_strategies),
            // 0 = no limit, upstream's meaning.
            backend_dial_timeout: Some(self.backend_dial_timeout.unwrap_or(d.backend_dial_timeout))
                .filter(|t| !t.is_zero()),
            graceful_shutdown_timeout: self.graceful_shutdown_timeout.unwrap_or(d.graceful_shutdown_timeout),
            // 0 = the default.
            frontend_keepalive_time: self
                .frontend_keepalive_time
                .filter(|t| !t.is_zero())
                .unwrap_or(d.frontend_keepalive_time),
            max_message_bytes: p.in_range("max-message-bytes", max_message_bytes, MIN_MESSAGE_BYTES, MAX_MESSAGE_BYTES),
            quic: self.quic.unwrap_or_default().check(&mut p),
            log: LogConfig { verbosity: self.v.unwrap_or(d.v), format: self.log_format.unwrap_or(d.log_format) },
            worker_threads: p.worker_threads(self.worker_threads.unwrap_or(d.worker_threads)),
        };
        p.finish(config)
    }

    /// The frontend kube-apiserver connects to: `uds-name`, or `server-port`
    /// with its TLS files, never both (upstream's rule).
    fn frontend(&self, p: &mut Problems, d: &ServerDefaults) -> (Option<PathBuf>, u16, Option<TlsFiles>) {
        let uds_name = non_empty_path(self.uds_name.clone());
        let server_port = self.server_port.unwrap_or(d.server_port);
        if uds_name.is_none() && server_port == 0 {
            p.push("uds-name", "no frontend: set uds-name or server-port");
        }
        if uds_name.is_some() {
            let tls_files = [&self.server_key, &self.server_cert, &self.server_ca_cert];
            refuse_tcp_frontend_for_uds(p, server_port, tls_files);
        }
        let server_tls = (uds_name.is_none() && server_port > 0).then(|| TlsFiles {
            cert: p.required_path("server-cert", self.server_cert.clone()),
            key: p.required_path("server-key", self.server_key.clone()),
            ca: Some(p.required_path("server-ca-cert", self.server_ca_cert.clone())),
        });
        (uds_name, server_port, server_tls)
    }
}

/// Upstream's rule, with upstream's words: the frontend is the Unix socket or
/// TCP with TLS, never both, so the TCP frontend's settings are refused next
/// to `uds-name`.
/// `tls_files`: server-key, server-cert, server-ca-cert.
fn refuse_tcp_frontend_for_uds(p: &mut Problems, server_port: u16, tls_files: [&Option<PathBuf>; 3]) {
    if server_port != 0 {
        p.push("server-port", format!("server port should be set to 0 not {server_port} for UDS"));
    }
    let names = [("server-key", "server key"), ("server-cert", "server cert"), ("server-ca-cert", "server ca cert")];
    for ((key, what), value) in names.into_iter().zip(tls_files) {
        if value.as_ref().is_some_and(|v| !v.as_os_str().is_empty()) {
            p.push(key, format!("{what} should not be set for UDS"));
        }
    }
}

/// Two TCP listeners on the same non-zero port cannot both bind (0.0.0.0
/// overlaps every address), so report it now rather than after binding.
fn check_distinct_tcp_ports(p: &mut Problems, ports: &[(&str, u16)]) {
    for (i, &(key, port)) in ports.iter().enumerate() {
        if port == 0 {
            continue;
        }
        if let Some((other, _)) = ports[..i].iter().find(|(_, q)| *q == port) {
            p.push(key, format!("port {port} is already used by {other}"));
        }
    }
}

#[cfg(test)]
mod tests;
