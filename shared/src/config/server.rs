//! `konnq-server` configuration: [`RawServerConfig`] (TOML / flags) and the
//! validated [`ServerConfig`].

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::token_auth::{RawTokenAuth, TokenAuthConfig};
use super::{
    non_empty_path, non_empty_string, overlay_quic, parse_toml, random_id, read_toml, ConfigError, LogConfig, Problems,
    QuicConfig, RawQuicConfig, TlsFiles, MIB,
};

/// How kube-apiserver talks to the frontend (upstream's `--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FrontendMode {
    /// Konnectivity gRPC `ProxyService` (`proxyProtocol: GRPC`).
    #[default]
    Grpc,
    /// HTTP `CONNECT` per dial (`proxyProtocol: HTTPConnect`).
    HttpConnect,
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
    /// UDP (QUIC) port agents connect to; 0 = ephemeral.
    pub agent_port: u16,
    /// QUIC TLS towards agents; `ca: Some` means agents must present a client cert.
    pub cluster_tls: TlsFiles,
    /// `Some`: agents must present a ServiceAccount token (TokenReview).
    pub token_auth: Option<TokenAuthConfig>,
    pub health_bind_address: IpAddr,
    pub health_port: u16,
    pub admin_bind_address: IpAddr,
    pub admin_port: u16,
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

/// Server settings as given in TOML or on the command line; `None` = not given.
/// Keys are the flag names: `uds-name` ↔ `--uds-name`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawServerConfig {
    pub server_id: Option<String>,
    pub server_count: Option<u32>,
    pub mode: Option<FrontendMode>,
    pub uds_name: Option<PathBuf>,
    pub delete_existing_uds_file: Option<bool>,
    pub server_bind_address: Option<IpAddr>,
    pub server_port: Option<u16>,
    pub server_cert: Option<PathBuf>,
    pub server_key: Option<PathBuf>,
    pub server_ca_cert: Option<PathBuf>,
    pub agent_bind_address: Option<IpAddr>,
    pub agent_port: Option<u16>,
    pub cluster_cert: Option<PathBuf>,
    pub cluster_key: Option<PathBuf>,
    pub cluster_ca_cert: Option<PathBuf>,
    pub agent_namespace: Option<String>,
    pub agent_service_account: Option<String>,
    pub authentication_audience: Option<String>,
    /// Empty or unset: in-cluster config.
    pub kubeconfig: Option<PathBuf>,
    pub kubeconfig_qps: Option<f64>,
    pub kubeconfig_burst: Option<u32>,
    /// Accepted for upstream parity and ignored: TokenReviews are sent as JSON.
    pub kube_api_content_type: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub token_review_cache_ttl: Option<Duration>,
    pub health_bind_address: Option<IpAddr>,
    pub health_port: Option<u16>,
    pub admin_bind_address: Option<IpAddr>,
    pub admin_port: Option<u16>,
    #[serde(default, with = "humantime_serde")]
    pub backend_dial_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub graceful_shutdown_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub frontend_keepalive_time: Option<Duration>,
    pub max_message_bytes: Option<usize>,
    pub quic: Option<RawQuicConfig>,
    pub worker_threads: Option<u16>,
    /// Log verbosity (`-v`).
    pub v: Option<u8>,
    /// Accepted for upstream parity and ignored: konnq always logs to stderr.
    pub logtostderr: Option<bool>,
}

const MIN_MESSAGE_BYTES: usize = 4 * MIB as usize;
/// Default of `backend-dial-timeout` (upstream's is 0, no limit: a dial to a
/// silent agent would then wait as long as the client does).
pub const DEFAULT_BACKEND_DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `frontend-keepalive-time` (upstream's is 1 h): a vanished
/// kube-apiserver connection is noticed within 40 s (PING unanswered for 10 s).
pub const DEFAULT_FRONTEND_KEEPALIVE: Duration = Duration::from_secs(30);
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

    /// Field by field, values set in `other` win (`file.overlay(flags)`).
    pub fn overlay(self, other: RawServerConfig) -> RawServerConfig {
        RawServerConfig {
            server_id: other.server_id.or(self.server_id),
            server_count: other.server_count.or(self.server_count),
            mode: other.mode.or(self.mode),
            uds_name: other.uds_name.or(self.uds_name),
            delete_existing_uds_file: other.delete_existing_uds_file.or(self.delete_existing_uds_file),
            server_bind_address: other.server_bind_address.or(self.server_bind_address),
            server_port: other.server_port.or(self.server_port),
            server_cert: other.server_cert.or(self.server_cert),
            server_key: other.server_key.or(self.server_key),
            server_ca_cert: other.server_ca_cert.or(self.server_ca_cert),
            agent_bind_address: other.agent_bind_address.or(self.agent_bind_address),
            agent_port: other.agent_port.or(self.agent_port),
            cluster_cert: other.cluster_cert.or(self.cluster_cert),
            cluster_key: other.cluster_key.or(self.cluster_key),
            cluster_ca_cert: other.cluster_ca_cert.or(self.cluster_ca_cert),
            agent_namespace: other.agent_namespace.or(self.agent_namespace),
            agent_service_account: other.agent_service_account.or(self.agent_service_account),
            authentication_audience: other.authentication_audience.or(self.authentication_audience),
            kubeconfig: other.kubeconfig.or(self.kubeconfig),
            kubeconfig_qps: other.kubeconfig_qps.or(self.kubeconfig_qps),
            kubeconfig_burst: other.kubeconfig_burst.or(self.kubeconfig_burst),
            kube_api_content_type: other.kube_api_content_type.or(self.kube_api_content_type),
            token_review_cache_ttl: other.token_review_cache_ttl.or(self.token_review_cache_ttl),
            health_bind_address: other.health_bind_address.or(self.health_bind_address),
            health_port: other.health_port.or(self.health_port),
            admin_bind_address: other.admin_bind_address.or(self.admin_bind_address),
            admin_port: other.admin_port.or(self.admin_port),
            backend_dial_timeout: other.backend_dial_timeout.or(self.backend_dial_timeout),
            graceful_shutdown_timeout: other.graceful_shutdown_timeout.or(self.graceful_shutdown_timeout),
            frontend_keepalive_time: other.frontend_keepalive_time.or(self.frontend_keepalive_time),
            max_message_bytes: other.max_message_bytes.or(self.max_message_bytes),
            quic: overlay_quic(self.quic, other.quic),
            worker_threads: other.worker_threads.or(self.worker_threads),
            v: other.v.or(self.v),
            logtostderr: other.logtostderr.or(self.logtostderr),
        }
    }

    /// Fills defaults and checks every value; all problems are reported.
    pub fn validate(self) -> Result<ServerConfig, ConfigError> {
        let mut p = Problems::default();
        let uds_name = non_empty_path(self.uds_name);
        let server_port = self.server_port.unwrap_or(0);
        if uds_name.is_none() && server_port == 0 {
            p.push("uds-name", "no frontend: set uds-name or server-port");
        }
        if uds_name.is_some() {
            let tls_files = [&self.server_key, &self.server_cert, &self.server_ca_cert];
            refuse_tcp_frontend_for_uds(&mut p, server_port, tls_files);
        }
        let server_tls = (uds_name.is_none() && server_port > 0).then(|| TlsFiles {
            cert: p.required_path("server-cert", self.server_cert),
            key: p.required_path("server-key", self.server_key),
            ca: Some(p.required_path("server-ca-cert", self.server_ca_cert)),
        });
        let cluster_tls = TlsFiles {
            cert: p.required_path("cluster-cert", self.cluster_cert),
            key: p.required_path("cluster-key", self.cluster_key),
            ca: non_empty_path(self.cluster_ca_cert),
        };
        let token_auth = RawTokenAuth {
            agent_namespace: self.agent_namespace,
            agent_service_account: self.agent_service_account,
            authentication_audience: self.authentication_audience,
            kubeconfig: self.kubeconfig,
            kubeconfig_qps: self.kubeconfig_qps,
            kubeconfig_burst: self.kubeconfig_burst,
            token_review_cache_ttl: self.token_review_cache_ttl,
        }
        .check(&mut p);
        let health_port = self.health_port.unwrap_or(8092);
        let admin_port = self.admin_port.unwrap_or(8095);
        check_distinct_tcp_ports(
            &mut p,
            &[("server-port", server_port), ("health-port", health_port), ("admin-port", admin_port)],
        );
        let max_message_bytes = self.max_message_bytes.unwrap_or(16 * MIB as usize);
        let config = ServerConfig {
            server_id: non_empty_string(self.server_id).unwrap_or_else(random_id),
            server_count: p.in_range("server-count", self.server_count.unwrap_or(1), 1, u32::MAX),
            mode: self.mode.unwrap_or_default(),
            uds_name,
            delete_existing_uds_file: self.delete_existing_uds_file.unwrap_or(true),
            server_bind_address: self.server_bind_address.unwrap_or(Ipv4Addr::LOCALHOST.into()),
            server_port,
            server_tls,
            agent_bind_address: self.agent_bind_address.unwrap_or(Ipv4Addr::UNSPECIFIED.into()),
            agent_port: self.agent_port.unwrap_or(8091),
            cluster_tls,
            token_auth,
            health_bind_address: self.health_bind_address.unwrap_or(Ipv4Addr::UNSPECIFIED.into()),
            health_port,
            admin_bind_address: self.admin_bind_address.unwrap_or(Ipv4Addr::LOCALHOST.into()),
            admin_port,
            backend_dial_timeout: Some(self.backend_dial_timeout.unwrap_or(DEFAULT_BACKEND_DIAL_TIMEOUT))
                .filter(|t| !t.is_zero()),
            graceful_shutdown_timeout: self.graceful_shutdown_timeout.unwrap_or(Duration::from_secs(15)),
            frontend_keepalive_time: self
                .frontend_keepalive_time
                .filter(|t| !t.is_zero())
                .unwrap_or(DEFAULT_FRONTEND_KEEPALIVE),
            max_message_bytes: p.in_range("max-message-bytes", max_message_bytes, MIN_MESSAGE_BYTES, MAX_MESSAGE_BYTES),
            quic: self.quic.unwrap_or_default().check(&mut p),
            log: LogConfig { verbosity: self.v.unwrap_or(0) },
            worker_threads: p.worker_threads(self.worker_threads),
        };
        p.finish(config)
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
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        uds-name = "/run/konnq.sock"
        cluster-cert = "/pki/cluster.crt"
        cluster-key = "/pki/cluster.key"
    "#;

    fn keys(err: &ConfigError) -> Vec<&str> {
        err.problems().iter().map(|p| p.key.as_str()).collect()
    }

    #[test]
    fn worker_threads_default_zero_and_out_of_range() {
        let with = |line: &str| ServerConfig::from_toml_str(&format!("{line}\n{MINIMAL}"));
        assert_eq!(with("").unwrap().worker_threads, 1);
        assert_eq!(with("worker-threads = 0").unwrap().worker_threads, 0, "0 = one per CPU");
        assert_eq!(with("worker-threads = 8").unwrap().worker_threads, 8);
        let err = with("worker-threads = 1025").unwrap_err();
        assert_eq!(keys(&err), ["worker-threads"]);
        assert!(err.to_string().contains("must be between 0 and 1024, got 1025"), "{err}");
        assert!(with("worker-threads = -1").is_err(), "negative");
    }

    fn minimal() -> RawServerConfig {
        RawServerConfig::from_toml_str(MINIMAL).expect("parses")
    }

    #[test]
    fn defaults() {
        let c = ServerConfig::from_toml_str(MINIMAL).expect("valid");
        assert_eq!(c.server_id.len(), 16);
        assert_eq!(c.server_count, 1);
        assert_eq!(c.mode, FrontendMode::Grpc);
        assert_eq!(c.uds_name, Some(PathBuf::from("/run/konnq.sock")));
        assert!(c.delete_existing_uds_file);
        assert_eq!(c.server_bind_address, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(c.server_port, 0);
        assert_eq!(c.server_tls, None);
        assert_eq!(c.agent_bind_address, IpAddr::from([0, 0, 0, 0]));
        assert_eq!(c.agent_port, 8091);
        assert_eq!(c.cluster_tls.cert, PathBuf::from("/pki/cluster.crt"));
        assert_eq!(c.cluster_tls.ca, None);
        assert_eq!(c.token_auth, None);
        assert_eq!((c.health_bind_address, c.health_port), (IpAddr::from([0, 0, 0, 0]), 8092));
        assert_eq!((c.admin_bind_address, c.admin_port), (IpAddr::from([127, 0, 0, 1]), 8095));
        assert_eq!(c.backend_dial_timeout, Some(Duration::from_secs(10)));
        assert_eq!(c.graceful_shutdown_timeout, Duration::from_secs(15));
        assert_eq!(c.frontend_keepalive_time, Duration::from_secs(30));
        assert_eq!(c.max_message_bytes, 16 * 1024 * 1024);
        assert_eq!(c.quic, QuicConfig::default());
        assert_eq!(c.log.verbosity, 0);
        assert_eq!(c.worker_threads, 1);
    }

    #[test]
    fn empty_config_names_every_missing_key() {
        let err = RawServerConfig::default().validate().unwrap_err();
        assert_eq!(keys(&err), ["uds-name", "cluster-cert", "cluster-key"]);
        let text = err.to_string();
        assert!(text.contains("uds-name: no frontend: set uds-name or server-port"), "{text}");
        assert!(text.contains("cluster-cert: required"), "{text}");
    }

    fn tcp_only() -> RawServerConfig {
        RawServerConfig { uds_name: None, ..minimal() }
    }

    #[test]
    fn tcp_frontend_requires_its_tls_files() {
        let raw = tcp_only().overlay(RawServerConfig {
            server_port: Some(8090),
            server_key: Some("/pki/server.key".into()),
            ..Default::default()
        });
        let err = raw.clone().validate().unwrap_err();
        assert_eq!(keys(&err), ["server-cert", "server-ca-cert"]);

        let ok = raw
            .overlay(RawServerConfig {
                server_cert: Some("/pki/server.crt".into()),
                server_ca_cert: Some("/pki/ca.crt".into()),
                ..Default::default()
            })
            .validate()
            .expect("valid");
        let tls = ok.server_tls.expect("tls set when server-port > 0");
        assert_eq!(tls.ca, Some(PathBuf::from("/pki/ca.crt")));
    }

    #[test]
    fn uds_refuses_the_tcp_frontend_settings_as_upstream_does() {
        let raw = minimal().overlay(RawServerConfig {
            server_port: Some(8090),
            server_cert: Some("/pki/server.crt".into()),
            server_key: Some("/pki/server.key".into()),
            server_ca_cert: Some("/pki/ca.crt".into()),
            ..Default::default()
        });
        let err = raw.validate().unwrap_err();
        assert_eq!(keys(&err), ["server-port", "server-key", "server-cert", "server-ca-cert"]);
        let text = err.to_string();
        assert!(text.contains("server-port: server port should be set to 0 not 8090 for UDS"), "{text}");
        assert!(text.contains("server-cert: server cert should not be set for UDS"), "{text}");
        assert!(text.contains("server-key: server key should not be set for UDS"), "{text}");
        assert!(text.contains("server-ca-cert: server ca cert should not be set for UDS"), "{text}");
        // Empty values are unset, as with Go flags.
        let empty = minimal().overlay(RawServerConfig { server_cert: Some(PathBuf::new()), ..Default::default() });
        assert!(empty.validate().is_ok());
    }

    #[test]
    fn zero_timeouts_mean_what_upstream_means() {
        let with = |raw: RawServerConfig| minimal().overlay(raw).validate().expect("valid");
        let c = with(RawServerConfig { backend_dial_timeout: Some(Duration::ZERO), ..Default::default() });
        assert_eq!(c.backend_dial_timeout, None, "0 = no limit");
        let c = with(RawServerConfig { frontend_keepalive_time: Some(Duration::ZERO), ..Default::default() });
        assert_eq!(c.frontend_keepalive_time, DEFAULT_FRONTEND_KEEPALIVE, "0 = the default");
        let c = with(RawServerConfig { graceful_shutdown_timeout: Some(Duration::ZERO), ..Default::default() });
        assert_eq!(c.graceful_shutdown_timeout, Duration::ZERO, "0 = close at once");
    }

    #[test]
    fn each_range_problem_names_its_key() {
        let text = format!(
            "{MINIMAL}\nserver-count = 0\nmax-message-bytes = 1024\n\
             health-port = 9000\nadmin-port = 9000\n[quic]\nidle-timeout = \"1s\"\n"
        );
        let err = ServerConfig::from_toml_str(&text).unwrap_err();
        assert_eq!(keys(&err), ["admin-port", "server-count", "max-message-bytes", "quic.idle-timeout"]);
        assert!(err.to_string().contains("admin-port: port 9000 is already used by health-port"));
    }

    #[test]
    fn max_message_bytes_bounds() {
        let with = |n: usize| {
            minimal().overlay(RawServerConfig { max_message_bytes: Some(n), ..Default::default() }).validate()
        };
        assert!(with(4 * 1024 * 1024).is_ok());
        assert!(with(256 * 1024 * 1024).is_ok());
        assert!(with(4 * 1024 * 1024 - 1).is_err());
        assert!(with(256 * 1024 * 1024 + 1).is_err());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = RawServerConfig::from_toml_str("uds-nmae = \"/x\"").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }));
        assert!(err.to_string().contains("uds-nmae"), "{err}");
        let err = RawServerConfig::from_toml_str("[quic]\nidle = \"1s\"").unwrap_err();
        assert!(err.to_string().contains("idle"), "{err}");
    }

    #[test]
    fn bad_value_type_names_key() {
        let err = RawServerConfig::from_toml_str("backend-dial-timeout = \"soon\"").unwrap_err();
        assert!(err.to_string().contains("backend-dial-timeout"), "{err}");
        let err = RawServerConfig::from_toml_str("mode = \"http\"").unwrap_err();
        assert!(err.to_string().contains("mode"), "{err}");
    }

    #[test]
    fn overlay_takes_other_values_field_by_field() {
        let file = RawServerConfig::from_toml_str(
            "server-port = 1\nadmin-port = 2\n[quic]\nidle-timeout = \"9s\"\nkeep-alive-interval = \"2s\"",
        )
        .unwrap();
        let flags = RawServerConfig {
            admin_port: Some(3),
            quic: Some(RawQuicConfig { idle_timeout: Some(Duration::from_secs(7)), ..Default::default() }),
            ..Default::default()
        };
        let merged = file.overlay(flags);
        assert_eq!(merged.server_port, Some(1), "kept from the base");
        assert_eq!(merged.admin_port, Some(3), "overridden");
        let quic = merged.quic.expect("quic kept");
        assert_eq!(quic.idle_timeout, Some(Duration::from_secs(7)));
        assert_eq!(quic.keep_alive_interval, Some(Duration::from_secs(2)));
    }

    #[test]
    fn empty_strings_mean_unset() {
        let raw = minimal().overlay(RawServerConfig {
            server_id: Some(String::new()),
            cluster_ca_cert: Some(PathBuf::new()),
            ..Default::default()
        });
        let c = raw.validate().expect("valid");
        assert_eq!(c.server_id.len(), 16);
        assert_eq!(c.cluster_tls.ca, None);
    }

    #[test]
    fn mode_parses_both_ways() {
        assert_eq!("http-connect".parse::<FrontendMode>(), Ok(FrontendMode::HttpConnect));
        assert!("HTTPConnect".parse::<FrontendMode>().is_err());
        let raw = RawServerConfig::from_toml_str("mode = \"http-connect\"\nv = 3\nlogtostderr = true").unwrap();
        assert_eq!(raw.mode, Some(FrontendMode::HttpConnect));
        assert_eq!(raw.v, Some(3));
    }
}
