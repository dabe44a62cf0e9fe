//! `konnq-agent` configuration: [`RawAgentConfig`] (TOML / flags) and the
//! validated [`AgentConfig`].

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::identifiers::AgentIdentifiers;
use super::{
    format_duration, non_empty_path, non_empty_string, overlay_quic, parse_toml, random_id, read_toml, ConfigError,
    LogConfig, Problems, QuicConfig, RawQuicConfig,
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
    /// Reconnect backoff start.
    pub sync_interval: Duration,
    /// Reconnect backoff cap.
    pub sync_interval_cap: Duration,
    /// TCP dial timeout to targets.
    pub dial_timeout: Duration,
    /// Service-account token sent to the server (the path, not the secret).
    pub service_account_token_path: Option<PathBuf>,
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

/// Agent settings as given in TOML or on the command line; `None` = not given.
/// Keys are the flag names: `proxy-server-host` ↔ `--proxy-server-host`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawAgentConfig {
    pub agent_id: Option<String>,
    /// Upstream syntax, `host=a&ipv4=1.2.3.4&...`.
    pub agent_identifiers: Option<String>,
    pub proxy_server_host: Option<String>,
    pub proxy_server_port: Option<u16>,
    pub server_name: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub agent_cert: Option<PathBuf>,
    pub agent_key: Option<PathBuf>,
    pub alpn_proto: Option<Vec<String>>,
    pub health_bind_address: Option<IpAddr>,
    pub health_server_port: Option<u16>,
    pub admin_bind_address: Option<IpAddr>,
    pub admin_server_port: Option<u16>,
    #[serde(default, with = "humantime_serde")]
    pub sync_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub sync_interval_cap: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub dial_timeout: Option<Duration>,
    pub service_account_token_path: Option<PathBuf>,
    pub quic: Option<RawQuicConfig>,
    pub worker_threads: Option<u16>,
    /// Log verbosity (`-v`).
    pub v: Option<u8>,
    /// Accepted for upstream parity and ignored: konnq always logs to stderr.
    pub logtostderr: Option<bool>,
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

    /// Field by field, values set in `other` win (`file.overlay(flags)`).
    pub fn overlay(self, other: RawAgentConfig) -> RawAgentConfig {
        RawAgentConfig {
            agent_id: other.agent_id.or(self.agent_id),
            agent_identifiers: other.agent_identifiers.or(self.agent_identifiers),
            proxy_server_host: other.proxy_server_host.or(self.proxy_server_host),
            proxy_server_port: other.proxy_server_port.or(self.proxy_server_port),
            server_name: other.server_name.or(self.server_name),
            ca_cert: other.ca_cert.or(self.ca_cert),
            agent_cert: other.agent_cert.or(self.agent_cert),
            agent_key: other.agent_key.or(self.agent_key),
            alpn_proto: other.alpn_proto.or(self.alpn_proto),
            health_bind_address: other.health_bind_address.or(self.health_bind_address),
            health_server_port: other.health_server_port.or(self.health_server_port),
            admin_bind_address: other.admin_bind_address.or(self.admin_bind_address),
            admin_server_port: other.admin_server_port.or(self.admin_server_port),
            sync_interval: other.sync_interval.or(self.sync_interval),
            sync_interval_cap: other.sync_interval_cap.or(self.sync_interval_cap),
            dial_timeout: other.dial_timeout.or(self.dial_timeout),
            service_account_token_path: other.service_account_token_path.or(self.service_account_token_path),
            quic: overlay_quic(self.quic, other.quic),
            worker_threads: other.worker_threads.or(self.worker_threads),
            v: other.v.or(self.v),
            logtostderr: other.logtostderr.or(self.logtostderr),
        }
    }

    /// Fills defaults and checks every value; all problems are reported.
    pub fn validate(self) -> Result<AgentConfig, ConfigError> {
        let mut p = Problems::default();
        let agent_identifiers = match AgentIdentifiers::parse(self.agent_identifiers.as_deref().unwrap_or("")) {
            Ok(ids) => ids,
            Err(errors) => {
                for e in errors {
                    p.push("agent-identifiers", e);
                }
                AgentIdentifiers::default()
            }
        };
        let proxy_server_host = self.proxy_server_host.unwrap_or_else(|| "127.0.0.1".to_owned());
        if proxy_server_host.is_empty() {
            p.push("proxy-server-host", "must not be empty");
        }
        let proxy_server_port = p.in_range("proxy-server-port", self.proxy_server_port.unwrap_or(8091), 1, u16::MAX);
        let agent_tls = agent_tls(&mut p, self.agent_cert, self.agent_key);
        let alpn_proto = alpn_protocols(&mut p, self.alpn_proto.unwrap_or_default());
        let sync_interval = p.positive("sync-interval", self.sync_interval.unwrap_or(Duration::from_secs(1)));
        let sync_interval_cap = self.sync_interval_cap.unwrap_or(Duration::from_secs(10));
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
        let (health_server_port, admin_server_port) =
            (self.health_server_port.unwrap_or(8093), self.admin_server_port.unwrap_or(8094));
        if health_server_port != 0 && health_server_port == admin_server_port {
            p.push("admin-server-port", format!("port {admin_server_port} is already used by health-server-port"));
        }
        let config = AgentConfig {
            agent_id: non_empty_string(self.agent_id).unwrap_or_else(random_id),
            agent_identifiers,
            proxy_server_host,
            proxy_server_port,
            server_name: non_empty_string(self.server_name),
            ca_cert: p.required_path("ca-cert", self.ca_cert),
            agent_tls,
            alpn_proto,
            health_bind_address: self.health_bind_address.unwrap_or(Ipv4Addr::UNSPECIFIED.into()),
            health_server_port,
            admin_bind_address: self.admin_bind_address.unwrap_or(Ipv4Addr::LOCALHOST.into()),
            admin_server_port,
            sync_interval,
            sync_interval_cap,
            dial_timeout: p.positive("dial-timeout", self.dial_timeout.unwrap_or(Duration::from_secs(5))),
            service_account_token_path: non_empty_path(self.service_account_token_path),
            quic: self.quic.unwrap_or_default().check(&mut p),
            log: LogConfig { verbosity: self.v.unwrap_or(0) },
            worker_threads: p.worker_threads(self.worker_threads),
        };
        p.finish(config)
    }
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
mod tests {
    use super::*;

    fn keys(err: &ConfigError) -> Vec<&str> {
        err.problems().iter().map(|p| p.key.as_str()).collect()
    }

    fn with_ca(raw: RawAgentConfig) -> RawAgentConfig {
        RawAgentConfig { ca_cert: Some("/pki/ca.crt".into()), ..Default::default() }.overlay(raw)
    }

    #[test]
    fn defaults() {
        let c = AgentConfig::from_toml_str("ca-cert = \"/pki/ca.crt\"").expect("valid");
        assert_eq!(c.agent_id.len(), 16);
        assert_eq!(c.agent_identifiers, AgentIdentifiers::default());
        assert_eq!(c.proxy_server_host, "127.0.0.1");
        assert_eq!(c.proxy_server_port, 8091);
        assert_eq!(c.server_name, None);
        assert_eq!(c.tls_server_name(), "127.0.0.1");
        assert_eq!(c.ca_cert, PathBuf::from("/pki/ca.crt"));
        assert_eq!(c.agent_tls, None);
        assert!(c.alpn_proto.is_empty());
        assert_eq!((c.health_bind_address, c.health_server_port), (IpAddr::from([0, 0, 0, 0]), 8093));
        assert_eq!((c.admin_bind_address, c.admin_server_port), (IpAddr::from([127, 0, 0, 1]), 8094));
        assert_eq!(c.sync_interval, Duration::from_secs(1));
        assert_eq!(c.sync_interval_cap, Duration::from_secs(10));
        assert_eq!(c.dial_timeout, Duration::from_secs(5));
        assert_eq!(c.service_account_token_path, None);
        assert_eq!(c.quic, QuicConfig::default());
        assert_eq!(c.log, LogConfig::default());
        assert_eq!(c.worker_threads, 1);
    }

    #[test]
    fn missing_ca_cert_is_named() {
        let err = RawAgentConfig::default().validate().unwrap_err();
        assert_eq!(keys(&err), ["ca-cert"]);
        assert!(err.to_string().contains("ca-cert: required"), "{err}");
    }

    #[test]
    fn agent_cert_and_key_come_together() {
        let only_cert = with_ca(RawAgentConfig { agent_cert: Some("/a.crt".into()), ..Default::default() });
        assert_eq!(keys(&only_cert.validate().unwrap_err()), ["agent-key"]);
        let only_key = with_ca(RawAgentConfig { agent_key: Some("/a.key".into()), ..Default::default() });
        assert_eq!(keys(&only_key.validate().unwrap_err()), ["agent-cert"]);
        let both = with_ca(RawAgentConfig {
            agent_cert: Some("/a.crt".into()),
            agent_key: Some("/a.key".into()),
            ..Default::default()
        });
        assert_eq!(both.validate().unwrap().agent_tls, Some(("/a.crt".into(), "/a.key".into())));
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
            proxy-server-host = ""
            proxy-server-port = 0
            agent-identifiers = "colour=blue"
            sync-interval = "5s"
            sync-interval-cap = "1s"
            dial-timeout = "0s"
            health-server-port = 7000
            admin-server-port = 7000
            worker-threads = 5000
            alpn-proto = ["h2", ""]
            [quic]
            keep-alive-interval = "10s"
            idle-timeout = "10s"
        "#;
        let err = AgentConfig::from_toml_str(text).unwrap_err();
        assert_eq!(
            keys(&err),
            [
                "agent-identifiers",
                "proxy-server-host",
                "proxy-server-port",
                "sync-interval-cap",
                "admin-server-port",
                "ca-cert",
                "dial-timeout",
                "quic.idle-timeout",
                "worker-threads",
            ]
        );
        let text = err.to_string();
        assert!(text.contains("worker-threads: must be between 0 and 1024, got 5000"), "{text}");
        assert!(text.contains("agent-identifiers: unknown identifier key \"colour\""), "{text}");
        assert!(text.contains("sync-interval-cap: must be at least sync-interval"), "{text}");
    }

    #[test]
    fn alpn_protocols_drop_empty_names_and_check_length() {
        let c = AgentConfig::from_toml_str("ca-cert = \"/ca\"\nalpn-proto = [\"\", \"konnectivity\"]").unwrap();
        assert_eq!(c.alpn_proto, ["konnectivity"]);
        let long = with_ca(RawAgentConfig { alpn_proto: Some(vec!["x".repeat(256)]), ..Default::default() });
        assert_eq!(keys(&long.validate().unwrap_err()), ["alpn-proto"]);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = RawAgentConfig::from_toml_str("proxy-server = \"x\"").unwrap_err();
        assert!(err.to_string().contains("proxy-server"), "{err}");
    }

    #[test]
    fn server_name_overrides_host_for_tls() {
        let c = with_ca(RawAgentConfig {
            proxy_server_host: Some("10.0.0.1".into()),
            server_name: Some("konnq.example".into()),
            ..Default::default()
        })
        .validate()
        .unwrap();
        assert_eq!(c.tls_server_name(), "konnq.example");
    }

    #[test]
    fn overlay_prefers_other() {
        let file = RawAgentConfig::from_toml_str("proxy-server-host = \"a\"\nproxy-server-port = 1").unwrap();
        let flags = RawAgentConfig { proxy_server_port: Some(2), ..Default::default() };
        let merged = file.overlay(flags);
        assert_eq!(merged.proxy_server_host.as_deref(), Some("a"));
        assert_eq!(merged.proxy_server_port, Some(2));
    }
}
