//! konnq-agent takes every flag of upstream's proxy-agent: each parses and
//! validates, and those without effect say so once.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use konnq_shared::config::upstream;

use super::tests::{config_warnings, no_env, parse};
use super::AGENT_ID_ENV;

/// Upstream v0.36.0's proxy-agent flags (cmd/agent/app/options/options.go,
/// in its order) and the klog v2.140.0 flags cmd/agent/main.go registers
/// (klog.InitFlags, underscores turned into dashes), each with a valid value;
/// `None` = the bare flag (a Go bool). `true`: konnq accepts the flag without
/// effect, so this value gives exactly one warning.
const UPSTREAM_FLAGS: &[upstream::UpstreamFlag] = &[
    ("agent-cert", Some("/p/agent.crt"), false),
    ("agent-key", Some("/p/agent.key"), false),
    ("ca-cert", Some("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"), false),
    ("proxy-server-host", Some("konnectivity.example.com"), false),
    ("proxy-server-port", Some("8132"), false),
    ("alpn-proto", Some("konnectivity,h2"), false),
    ("health-server-host", Some(""), false),
    ("health-server-port", Some("8134"), false),
    ("admin-server-port", Some("8133"), false),
    ("admin-bind-address", Some(""), false),
    ("enable-profiling", None, false),
    ("enable-contention-profiling", Some("true"), true),
    ("agent-id", Some("node-1"), false),
    ("sync-interval", Some("2s"), false),
    ("probe-interval", Some("5s"), true),
    ("sync-interval-cap", Some("30s"), false),
    ("keepalive-time", Some("30s"), false),
    ("service-account-token-path", Some("/var/run/secrets/tokens/konnectivity-agent-token"), false),
    ("agent-identifiers", Some("host=node1&ipv4=10.0.0.5&cidr=10.0.0.0/24&default-route=true"), false),
    ("warn-on-channel-limit", None, true),
    ("sync-forever", None, false),
    ("xfr-channel-size", Some("300"), true),
    ("count-server-leases", None, false),
    ("lease-namespace", Some("konnectivity"), false),
    ("lease-label", Some("app=konnectivity-server"), false),
    ("server-count-source", Some("max"), false),
    ("kubeconfig", Some("/etc/kubernetes/agent.conf"), false),
    ("kube-api-content-type", Some("application/json"), true),
    // klog
    ("log-dir", Some("/var/log/konnectivity"), true),
    ("log-file", Some("/var/log/konnectivity-agent.log"), true),
    ("log-file-max-size", Some("100"), true),
    ("logtostderr", Some("false"), true),
    ("alsologtostderr", None, true),
    ("legacy-stderr-threshold-behavior", Some("false"), true),
    ("v", Some("4"), false),
    ("add-dir-header", None, true),
    ("skip-headers", None, true),
    ("one-output", Some("true"), true),
    ("skip-log-headers", None, true),
    ("stderrthreshold", Some("INFO"), true),
    ("alsologtostderrthreshold", Some("WARNING"), true),
    ("vmodule", Some("client*=4"), true),
    ("log-backtrace-at", Some("client.go:100"), true),
];

/// What `flag` needs beside `--ca-cert` to be valid, upstream too.
fn companions(flag: &str) -> &'static [&'static str] {
    match flag {
        "agent-cert" => &["--agent-key=/p/agent.key"],
        "agent-key" => &["--agent-cert=/p/agent.crt"],
        "enable-contention-profiling" => &["--enable-profiling"],
        _ => &[],
    }
}

#[test]
fn every_upstream_flag_parses_validates_and_warns_only_without_effect() {
    let run = |args: &[&str]| config_warnings(args).map(|(_, warnings)| warnings).map_err(|e| format!("{e:#}"));
    let walked = upstream::walk_flags(UPSTREAM_FLAGS, &[upstream::KLOG, upstream::AGENT], companions, run);
    walked.unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn upstream_defaults_give_no_warning() {
    let defaults = [
        "--agent-cert=",
        "--agent-key=",
        "--service-account-token-path=",
        "--logtostderr",
        "--probe-interval=1s",
        "--sync-forever=false",
        "--warn-on-channel-limit=false",
        "--xfr-channel-size=150",
        "--server-count-source=default",
        "--kubeconfig=",
        "--lease-namespace=kube-system",
        "--kube-api-content-type=application/vnd.kubernetes.protobuf",
    ];
    let (_, warnings) = config_warnings(&defaults).expect("valid");
    assert!(warnings.is_empty(), "{warnings:?}");
}

/// The agent args of the official "Set up Konnectivity service" guide,
/// verbatim (the control-plane address filled in).
const SETUP_GUIDE_ARGS: [&str; 7] = [
    "--logtostderr=true",
    "--ca-cert=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
    "--proxy-server-host=192.0.2.10",
    "--proxy-server-port=8132",
    "--admin-server-port=8133",
    "--health-server-port=8134",
    "--service-account-token-path=/var/run/secrets/tokens/konnectivity-agent-token",
];

#[test]
fn setup_guide_args_parse_and_validate() {
    let (c, warnings) = parse(&SETUP_GUIDE_ARGS).expect("flags parse").into_config_with_env(no_env).expect("valid");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(c.ca_cert, PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"));
    assert_eq!((c.proxy_server_host.as_str(), c.proxy_server_port), ("192.0.2.10", 8132));
    assert_eq!((c.admin_server_port, c.health_server_port), (8133, 8134));
    let token = PathBuf::from("/var/run/secrets/tokens/konnectivity-agent-token");
    assert_eq!(c.service_account_token_path, Some(token));
}

#[test]
fn flags_konnq_acts_on_mean_what_they_mean_upstream() {
    let (c, _) = config_warnings(&[
        "--keepalive-time=30s",
        "--health-server-host=",
        "--admin-bind-address=localhost",
        "--alpn-proto=konnectivity",
        "--alpn-proto=h2,",
    ])
    .expect("valid");
    assert_eq!(c.quic.keep_alive_interval, Duration::from_secs(30), "server keep-alive = QUIC PINGs");
    assert_eq!(c.quic.idle_timeout, Duration::from_secs(90), "idle timeout follows: 3 keep-alives");
    assert_eq!(c.health_bind_address, IpAddr::from([0, 0, 0, 0]), "empty = all addresses");
    assert_eq!(c.admin_bind_address, IpAddr::from([127, 0, 0, 1]));
    assert_eq!(c.alpn_proto, ["konnectivity", "h2"], "repeatable and comma-separated, as a Go string slice");
    let (c, _) = config_warnings(&["--health-server-host=10.0.0.5", "--keepalive-time=0"]).expect("valid");
    assert_eq!(c.health_bind_address, IpAddr::from([10, 0, 0, 5]), "upstream's name for --health-bind-address");
    assert_eq!(c.quic.keep_alive_interval, Duration::from_secs(1), "0 = konnq's default");
}

#[test]
fn agent_id_from_the_environment_when_no_flag() {
    let env = |value: &'static str| move |name: &str| (name == AGENT_ID_ENV).then(|| value.to_owned());
    let cli = |args: &[&str]| parse(&[&["--ca-cert=/ca"][..], args].concat()).expect("flags parse");
    let (c, _) = cli(&[]).into_config_with_env(env("node-7")).unwrap();
    assert_eq!(c.agent_id, "node-7");
    let (c, _) = cli(&["--agent-id=from-flag"]).into_config_with_env(env("node-7")).unwrap();
    assert_eq!(c.agent_id, "from-flag", "the flag wins");
    let (c, _) = cli(&[]).into_config_with_env(env("")).unwrap();
    assert_eq!(c.agent_id.len(), 16, "an empty variable is unset: a random id");
}

#[test]
fn enable_profiling_applies_and_contention_profiling_needs_it_as_upstream() {
    for (args, want) in [
        (&[][..], false),
        (&["--enable-profiling"][..], true),
        (&["-enable-profiling=true"][..], true),
        (&["--enable-profiling=1", "--enable-profiling=F"][..], false),
    ] {
        let (c, warnings) = config_warnings(args).unwrap_or_else(|e| panic!("{args:?}: {e:#}"));
        assert_eq!(c.enable_profiling, want, "{args:?}");
        assert!(warnings.is_empty(), "{args:?}: {warnings:?}");
    }
    assert!(parse(&["--enable-profiling=sometimes"]).is_err(), "Go's bool syntax");
    let err = config_warnings(&["--enable-contention-profiling"]).unwrap_err().to_string();
    assert!(
        err.contains(
            "--enable-contention-profiling: if enable-contention-profiling is set, enable-profiling must also be set"
        ),
        "{err}"
    );
    let (_, warnings) = config_warnings(&["--enable-contention-profiling=false"]).expect("valid");
    assert!(warnings.is_empty(), "{warnings:?}");
    let (c, warnings) = config_warnings(&["--enable-contention-profiling", "--enable-profiling"]).expect("valid");
    assert!(c.enable_profiling);
    assert_eq!(
        warnings,
        ["--enable-contention-profiling has no effect: konnq is not a Go program and has no block (contention) \
          profile; --enable-profiling serves its CPU profile"]
    );
}

#[test]
fn help_lists_the_flags_without_effect_under_their_own_heading() {
    let long = parse(&["--help"]).unwrap_err().to_string();
    assert!(long.contains(upstream::HELP_HEADING) && long.contains("--xfr-channel-size"), "{long}");
    assert!(long.contains("health-server-host"), "the alias is shown: {long}");
    let short = parse(&["-h"]).unwrap_err().to_string();
    assert!(!short.contains("--xfr-channel-size"), "-h stays short: {short}");
}

#[test]
fn lease_flags_mean_what_they_mean_upstream() {
    use konnq_shared::config::ServerCountSource;
    let (c, _) = config_warnings(&[]).expect("valid");
    assert_eq!((c.lease_counting, c.server_count_source), (None, ServerCountSource::Default), "off by default");
    let (c, warnings) = config_warnings(&[
        "--count-server-leases",
        "--lease-namespace=konnectivity",
        "--lease-label=app=konnectivity-server,tier=control-plane",
        "--server-count-source=max",
        "--kubeconfig=/etc/kubernetes/agent.conf",
    ])
    .expect("valid");
    assert!(warnings.is_empty(), "{warnings:?}");
    let counting = c.lease_counting.expect("counting");
    assert_eq!(counting.namespace, "konnectivity");
    assert_eq!(konnq_shared::leases::selector(&counting.labels), "app=konnectivity-server,tier=control-plane");
    assert_eq!(counting.kubeconfig, Some(PathBuf::from("/etc/kubernetes/agent.conf")));
    assert_eq!(c.server_count_source, ServerCountSource::Max);
    let (c, _) = config_warnings(&["--server-count-source="]).expect("valid");
    assert_eq!(c.server_count_source, ServerCountSource::Default, "upstream's empty value");
    let err = parse(&["--ca-cert=/ca", "--server-count-source=min"]).unwrap_err().to_string();
    assert!(err.contains("must be one of '', 'default', 'max', got min"), "{err}");
    let err = config_warnings(&["--count-server-leases", "--lease-label=app"]).unwrap_err().to_string();
    assert!(err.contains("--lease-label: invalid label format: app"), "{err}");
}

#[test]
fn lease_label_selector_is_the_newer_spelling_of_lease_label() {
    let labels = |args: &[&str]| {
        let (c, _) = config_warnings(args).expect("valid");
        konnq_shared::leases::selector(&c.lease_counting.expect("counting").labels)
    };
    assert_eq!(labels(&["--count-server-leases", "--lease-label-selector=app=k,tier=cp"]), "app=k,tier=cp");
    assert_eq!(labels(&["-count-server-leases", "-lease-label-selector", "app=k"]), "app=k", "Go spelling");
    assert_eq!(
        labels(&["--count-server-leases", "--lease-label=a=1", "--lease-label-selector=b=2"]),
        "b=2",
        "last wins"
    );
    let err = config_warnings(&["--count-server-leases", "--lease-label-selector=*notavalidlabel*"]).unwrap_err();
    assert!(err.to_string().contains("invalid label format: *notavalidlabel*"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, "count-server-leases = true\nlease-label-selector = \"app=file\"\n").unwrap();
    assert_eq!(labels(&["--config", file.to_str().unwrap()]), "app=file", "TOML key too");
}
