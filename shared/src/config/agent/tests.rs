//! Tests of the agent configuration: defaults, every problem with its key,
//! overlay and the key table.

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
    assert_eq!(c.log, LogConfig { verbosity: 0, format: LogFormat::Text });
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

#[test]
fn log_format_and_key_table() {
    let c = AgentConfig::from_toml_str("ca-cert = \"/ca\"\nlog-format = \"json\"").unwrap();
    assert_eq!(c.log.format, LogFormat::Json);
    let err = AgentConfig::from_toml_str("ca-cert = \"/ca\"\nlog-format = \"yaml\"").unwrap_err().to_string();
    assert!(err.contains("log-format") && err.contains("`text` or `json`"), "{err}");
    let keys = RawAgentConfig::keys();
    let find = |name: &str| keys.iter().find(|k| k.key == name).unwrap_or_else(|| panic!("{name} declared"));
    assert_eq!(find("proxy-server-host").default.as_ref().map(|d| d.toml()), Some("\"127.0.0.1\"".to_owned()));
    assert_eq!(find("health-server-port").default.as_ref().map(|d| d.toml()), Some("8093".to_owned()));
    assert_eq!(find("log-format").default.as_ref().map(|d| d.toml()), Some("\"text\"".to_owned()));
    assert_eq!(find("ca-cert").default, None, "required, no default");
    assert!(keys.iter().any(|k| k.key == "quic.congestion-control"));
}
