//! Tests of the server configuration: defaults, every problem with its key,
//! overlay and the key table.

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
    assert_eq!(c.proxy_strategies, ProxyStrategies::default());
    assert_eq!(c.backend_dial_timeout, Some(Duration::from_secs(10)));
    assert_eq!(c.graceful_shutdown_timeout, Duration::from_secs(15));
    assert_eq!(c.frontend_keepalive_time, Duration::from_secs(30));
    assert_eq!(c.max_message_bytes, 16 * 1024 * 1024);
    assert_eq!(c.quic, QuicConfig::default());
    assert_eq!(c.log, LogConfig { verbosity: 0, format: LogFormat::Text });
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
    assert_eq!(c.frontend_keepalive_time, Duration::from_secs(30), "0 = the default");
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
    let with =
        |n: usize| minimal().overlay(RawServerConfig { max_message_bytes: Some(n), ..Default::default() }).validate();
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

#[test]
fn log_format_from_toml_and_its_bad_values() {
    let with = |line: &str| ServerConfig::from_toml_str(&format!("{line}\n{MINIMAL}"));
    assert_eq!(with("log-format = \"json\"").unwrap().log.format, LogFormat::Json);
    assert_eq!(with("log-format = \"text\"").unwrap().log.format, LogFormat::Text);
    let err = with("log-format = \"xml\"").unwrap_err().to_string();
    assert!(err.contains("log-format = \"xml\"") && err.contains("`text` or `json`"), "{err}");
}

#[test]
fn proxy_strategies_from_toml_and_their_bad_values() {
    use crate::config::ProxyStrategy as P;
    let with = |line: &str| ServerConfig::from_toml_str(&format!("{line}\n{MINIMAL}"));
    let strategies = |line: &str| with(line).unwrap().proxy_strategies.as_slice().to_vec();
    assert_eq!(strategies(""), [P::Default]);
    assert_eq!(strategies("proxy-strategies = \"destHost,default\""), [P::DestHost, P::Default]);
    assert_eq!(strategies("proxy-strategies = [\"defaultRoute\", \"destHost\"]"), [P::DefaultRoute, P::DestHost]);
    let err = with("proxy-strategies = \"destHost,nearest\"").unwrap_err().to_string();
    assert!(err.contains("proxy-strategies") && err.contains("unknown proxy strategy: nearest"), "{err}");
    let err = with("proxy-strategies = []").unwrap_err().to_string();
    assert!(err.contains("proxy strategies cannot be empty"), "{err}");
    let flags = RawServerConfig { proxy_strategies: Some("destHost".parse().unwrap()), ..Default::default() };
    let file = RawServerConfig::from_toml_str("proxy-strategies = \"defaultRoute\"").unwrap();
    assert_eq!(file.overlay(flags).proxy_strategies.map(|p| p.as_slice().to_vec()), Some(vec![P::DestHost]));
}

#[test]
fn key_table_follows_the_declaration() {
    let keys = RawServerConfig::keys();
    let find = |name: &str| keys.iter().find(|k| k.key == name).unwrap_or_else(|| panic!("{name} declared"));
    assert_eq!(find("health-port").default.as_ref().map(|d| d.toml()), Some("8092".to_owned()));
    assert_eq!(find("backend-dial-timeout").default.as_ref().map(|d| d.toml()), Some("\"10s\"".to_owned()));
    assert_eq!(find("mode").default.as_ref().map(|d| d.text.as_str()), Some("grpc"));
    assert_eq!(find("server-bind-address").default.as_ref().map(|d| d.toml()), Some("\"127.0.0.1\"".to_owned()));
    assert_eq!(find("uds-name").default, None, "unset until given");
    assert_eq!(find("quic.idle-timeout").default.as_ref().map(|d| d.text.as_str()), Some("5s"));
    assert_eq!(find("log-format").doc, "Log line format: text or json.");
    let mut names: Vec<&str> = keys.iter().map(|k| k.key.as_str()).collect();
    let n = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), n, "a key is declared twice");
    assert!(keys.iter().all(|k| !k.doc.is_empty()), "every key has a doc line");
}

#[test]
fn declared_defaults_are_the_validated_defaults() {
    let d = RawServerConfig::defaults();
    let c = ServerConfig::from_toml_str(MINIMAL).expect("valid");
    assert_eq!((c.health_port, c.admin_port, c.agent_port), (d.health_port, d.admin_port, d.agent_port));
    assert_eq!(c.backend_dial_timeout, Some(d.backend_dial_timeout));
    assert_eq!(c.token_auth, None);
    assert_eq!((d.kubeconfig_qps, d.kubeconfig_burst, d.token_review_cache_ttl), (0.0, 0, Duration::from_secs(120)));
}
