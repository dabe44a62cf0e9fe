//! konnq-server takes every flag of upstream's proxy-server: each parses and
//! validates, and those without effect say so once.

use std::net::IpAddr;
use std::time::Duration;

use konnq_shared::config::upstream;

use super::tests::{config_warnings, no_env, parse, REQUIRED};
use super::SERVER_ID_ENV;

/// Upstream v0.36.0's proxy-server flags (cmd/server/app/options/options.go,
/// in its order) and the klog v2.140.0 flags cmd/server/main.go registers
/// (klog.InitFlags, underscores turned into dashes), each with a valid value;
/// `None` = the bare flag (a Go bool). `true`: konnq accepts the flag without
/// effect, so this value gives exactly one warning.
const UPSTREAM_FLAGS: &[upstream::UpstreamFlag] = &[
    ("server-cert", Some("/p/server.crt"), false),
    ("server-key", Some("/p/server.key"), false),
    ("server-ca-cert", Some("/p/ca.crt"), false),
    ("cluster-cert", Some("/p/cluster.crt"), false),
    ("cluster-key", Some("/p/cluster.key"), false),
    ("cluster-ca-cert", Some("/p/ca.crt"), false),
    ("mode", Some("http-connect"), false),
    ("uds-name", Some("/run/konnectivity-server.socket"), false),
    ("delete-existing-uds-file", Some("false"), false),
    ("server-port", Some("8090"), false),
    ("server-bind-address", Some(""), false),
    ("agent-port", Some("8132"), false),
    ("agent-bind-address", Some(""), false),
    ("admin-port", Some("8133"), false),
    ("admin-bind-address", Some("127.0.0.1"), false),
    ("health-port", Some("8134"), false),
    ("health-bind-address", Some(""), false),
    ("keepalive-time", Some("30s"), false),
    ("frontend-keepalive-time", Some("1h0m0s"), false),
    ("enable-profiling", None, false),
    ("enable-contention-profiling", Some("true"), true),
    ("server-id", Some("server-0"), false),
    ("server-count", Some("3"), false),
    ("agent-namespace", Some("kube-system"), false),
    ("agent-service-account", Some("konnectivity-agent"), false),
    ("kubeconfig", Some("/etc/kubernetes/konnectivity-server.conf"), false),
    ("kubeconfig-qps", Some("20"), false),
    ("kubeconfig-burst", Some("40"), false),
    ("kube-api-content-type", Some("application/json"), true),
    ("authentication-audience", Some("system:konnectivity-server"), false),
    ("proxy-strategies", Some("destHost,defaultRoute,default"), false),
    ("cipher-suites", Some("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"), true),
    ("tls-min-version", Some("VersionTLS12"), true),
    ("xfr-channel-size", Some("20"), true),
    ("enable-lease-controller", None, false),
    ("lease-namespace", Some("konnectivity"), false),
    ("lease-label", Some("app=konnectivity-server"), false),
    ("graceful-shutdown-timeout", Some("0s"), false),
    ("backend-dial-timeout", Some("0"), false),
    ("warn-on-channel-limit", Some("false"), true),
    // klog
    ("log-dir", Some("/var/log/konnectivity"), true),
    ("log-file", Some("/var/log/konnectivity-server.log"), true),
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
    ("vmodule", Some("server*=4,tunnel=2"), true),
    ("log-backtrace-at", Some("server.go:100"), true),
];

/// The TCP frontend, which upstream allows only without `--uds-name`.
const TCP: [&str; 5] = [
    "--uds-name=",
    "--server-port=8090",
    "--server-cert=/p/server.crt",
    "--server-key=/p/server.key",
    "--server-ca-cert=/p/ca.crt",
];
const TOKEN_AUTH: [&str; 3] = [
    "--agent-namespace=kube-system",
    "--agent-service-account=konnectivity-agent",
    "--authentication-audience=system:konnectivity-server",
];

/// What `flag` needs beside [`REQUIRED`] to be valid, upstream too.
fn companions(flag: &str) -> &'static [&'static str] {
    match flag {
        "server-cert" | "server-key" | "server-ca-cert" | "server-port" => &TCP,
        "agent-namespace" | "agent-service-account" | "authentication-audience" => &TOKEN_AUTH,
        "enable-contention-profiling" => &["--enable-profiling"],
        _ => &[],
    }
}

#[test]
fn every_upstream_flag_parses_validates_and_warns_only_without_effect() {
    let run = |args: &[&str]| config_warnings(args).map(|(_, warnings)| warnings).map_err(|e| format!("{e:#}"));
    let walked = upstream::walk_flags(UPSTREAM_FLAGS, &[upstream::KLOG, upstream::SERVER], companions, run);
    walked.unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn upstream_defaults_give_no_warning() {
    let defaults = [
        "--server-cert=",
        "--server-key=",
        "--server-ca-cert=",
        "--cluster-ca-cert=",
        "--logtostderr=true",
        "--alsologtostderr=false",
        "--stderrthreshold=2",
        "--log-file-max-size=1800",
        "--log-dir=",
        "--vmodule=",
        "--enable-profiling=false",
        "--kube-api-content-type=application/vnd.kubernetes.protobuf",
        "--proxy-strategies=default",
        "--cipher-suites=",
        "--tls-min-version=",
        "--xfr-channel-size=10",
        "--warn-on-channel-limit",
        "--lease-namespace=kube-system",
        "--lease-label=k8s-app=konnectivity-server",
    ];
    let (_, warnings) = config_warnings(&defaults).expect("valid");
    assert!(warnings.is_empty(), "{warnings:?}");
    let (_, warnings) = config_warnings(&["--tls-min-version=VersionTLS13"]).expect("valid");
    assert!(warnings.is_empty(), "konnq speaks exactly TLS 1.3: {warnings:?}");
}

#[test]
fn flags_konnq_acts_on_mean_what_they_mean_upstream() {
    let (c, _) = config_warnings(&[
        "--keepalive-time=30s",
        "--frontend-keepalive-time=2m",
        "--backend-dial-timeout=0",
        "--agent-bind-address=",
        "--admin-bind-address=",
        "--health-bind-address=[::1]",
        "-v=-1",
    ])
    .expect("valid");
    assert_eq!(c.quic.keep_alive_interval, Duration::from_secs(30), "agent keep-alive = QUIC PINGs");
    assert_eq!(c.quic.idle_timeout, Duration::from_secs(90), "idle timeout follows: 3 keep-alives");
    assert_eq!(c.frontend_keepalive_time, Duration::from_secs(120));
    assert_eq!(c.backend_dial_timeout, None, "0 = no limit");
    assert_eq!(c.agent_bind_address, IpAddr::from([0, 0, 0, 0]), "empty = all addresses");
    assert_eq!(c.admin_bind_address, IpAddr::from([0, 0, 0, 0]));
    assert_eq!(c.health_bind_address, "::1".parse::<IpAddr>().unwrap());
    assert_eq!(c.log.verbosity, 0);
    let (c, _) = config_warnings(&["--keepalive-time=0s", "--frontend-keepalive-time=0s"]).expect("valid");
    assert_eq!(c.quic.keep_alive_interval, Duration::from_secs(1), "0 = konnq's default");
    assert_eq!(c.frontend_keepalive_time, Duration::from_secs(30), "0 = konnq's default");
}

#[test]
fn server_id_from_the_environment_when_no_flag() {
    let env = |value: &'static str| move |name: &str| (name == SERVER_ID_ENV).then(|| value.to_owned());
    let cli = |args: &[&str]| parse(&[&REQUIRED[..], args].concat()).expect("flags parse");
    let (c, _) = cli(&[]).into_config_with_env(env("konnq-server-7")).unwrap();
    assert_eq!(c.server_id, "konnq-server-7");
    let (c, _) = cli(&["--server-id=from-flag"]).into_config_with_env(env("konnq-server-7")).unwrap();
    assert_eq!(c.server_id, "from-flag", "the flag wins");
    let (c, _) = cli(&[]).into_config_with_env(env("")).unwrap();
    assert_eq!(c.server_id.len(), 16, "an empty variable is unset: a random id");
    let (c, _) = cli(&[]).into_config_with_env(no_env).unwrap();
    assert_ne!(c.server_id, "konnq-server-7");
}

#[test]
fn server_cert_and_key_with_uds_name_refused_with_upstream_reason() {
    for (flag, reason) in [
        ("server-cert", "server cert should not be set for UDS"),
        ("server-key", "server key should not be set for UDS"),
    ] {
        let arg = format!("--{flag}=/p/x.pem");
        let err = config_warnings(&[arg.as_str()]).unwrap_err().to_string();
        assert!(err.contains(&format!("--{flag}: {reason}")), "{err}");
    }
    let err = config_warnings(&["--server-port=8090"]).unwrap_err().to_string();
    assert!(err.contains("--server-port: server port should be set to 0 not 8090 for UDS"), "{err}");
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
    assert!(long.contains(upstream::HELP_HEADING), "{long}");
    assert!(long.contains("--xfr-channel-size"), "{long}");
    let short = parse(&["-h"]).unwrap_err().to_string();
    assert!(!short.contains("--xfr-channel-size"), "-h stays short: {short}");
}

#[test]
fn lease_flags_mean_what_they_mean_upstream() {
    let (c, _) = config_warnings(&[]).expect("valid");
    assert_eq!(c.lease_controller, None, "off by default");
    let (c, warnings) = config_warnings(&[
        "--enable-lease-controller",
        "--lease-namespace=konnectivity",
        "--lease-label=app=konnectivity-server",
        "--kubeconfig=/etc/kubernetes/konnectivity-server.conf",
    ])
    .expect("valid");
    assert!(warnings.is_empty(), "{warnings:?}");
    let leases = c.lease_controller.expect("on");
    assert_eq!(leases.namespace, "konnectivity");
    assert_eq!(konnq_shared::leases::selector(&leases.labels), "app=konnectivity-server");
    assert_eq!(leases.kubeconfig.as_deref(), Some(std::path::Path::new("/etc/kubernetes/konnectivity-server.conf")));
    let err = config_warnings(&["--enable-lease-controller", "--lease-label="]).unwrap_err().to_string();
    assert!(err.contains("--lease-label: empty string provided"), "upstream's words: {err}");
    let (c, _) = config_warnings(&["--enable-lease-controller=false", "--lease-label="]).expect("unchecked when off");
    assert_eq!(c.lease_controller, None);
    let (c, _) = config_warnings(&["--enable-lease-controller", "-lease-label-selector=k8s-app=konnectivity-server"])
        .expect("newer upstream's spelling");
    assert_eq!(konnq_shared::leases::selector(&c.lease_controller.expect("on").labels), "k8s-app=konnectivity-server");
}
