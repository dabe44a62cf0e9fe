//! Command line of `konnq-server`: upstream proxy-server's flag names, an
//! optional `--config` TOML file under them, and the `certs` subcommand.
//!
//! Flags and TOML keys are the same words (`--uds-name` ↔ `uds-name`); both
//! become a [`RawServerConfig`], flags overlaid on the file, then validated.
//! Every flag of upstream's proxy-server (v0.36.0) and klog is accepted:
//! those konnq has no use for are declared once, in
//! [`konnq_shared::config::upstream`], and each one set to a value that would
//! matter upstream gives one start-up warning.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use konnq_shared::config::{
    describe_for_cli, help_line, parse_duration, upstream, ConfigError, DefaultValue, RawQuicConfig, RawServerConfig,
    ServerConfig,
};

/// Environment variable upstream reads the server id from when `--server-id`
/// is not given.
pub const SERVER_ID_ENV: &str = "PROXY_SERVER_ID";

/// konnq-server: Konnectivity proxy server with QUIC agents.
#[derive(Debug, Parser)]
#[command(name = "konnq-server", version, args_conflicts_with_subcommands = true, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// TOML config file (see conf/server.toml); flags override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The settings given as flags; each is declared, with its TOML key, in
    /// [`RawServerConfig`].
    #[command(flatten)]
    pub flags: RawServerConfig,

    /// Upstream's keep-alive of the agent connections: `quic.keep-alive-interval`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help = keepalive_time_help())]
    pub keepalive_time: Option<Duration>,

    /// Warnings for upstream flags given that have no effect (see `upstream`).
    #[arg(skip)]
    pub no_effect: upstream::Given,
}

fn keepalive_time_help() -> String {
    let doc = "QUIC keep-alive PING interval towards agents (quic.keep-alive-interval); 0 = default";
    help_line(doc, Some(RawQuicConfig::defaults().keep_alive_interval.shown()))
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Write a development CA plus server and agent certificates into DIR.
    Certs {
        /// Output directory (created 0700 if missing); existing files are never overwritten.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Extra subject alternative name of the server certificate (IP or DNS); repeatable.
        #[arg(long, value_name = "NAME")]
        san: Vec<String>,
    },
}

impl Cli {
    /// Parses `std::env::args`, accepting Go-style `-flag=value` spellings;
    /// prints help / errors and exits like `Cli::parse`.
    pub fn parse_go_style() -> Cli {
        Cli::try_parse_go_style(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// [`Cli::parse_go_style`] on the given arguments (first = program name).
    pub fn try_parse_go_style<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let tables = [upstream::KLOG, upstream::SERVER];
        let (mut cli, no_effect) = konnq_shared::config::try_parse_go_style_with::<Cli, _, _>(args, &tables)?;
        cli.no_effect = no_effect;
        Ok(cli)
    }

    /// Loads `--config` if given, overlays the flags and validates. Returns
    /// the configuration and the warnings to log once logging is set up;
    /// the error lists every problem, each naming its flag (or config key).
    pub fn into_config(self) -> anyhow::Result<(ServerConfig, Vec<String>)> {
        self.into_config_with_env(|name| std::env::var(name).ok())
    }

    /// [`Cli::into_config`] reading environment variables through `env`.
    pub fn into_config_with_env(
        mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<(ServerConfig, Vec<String>)> {
        let given = std::mem::take(&mut self.no_effect);
        let warnings = given.warnings();
        let config_file = self.config.clone();
        let file = match &config_file {
            Some(path) => RawServerConfig::from_file(path)?,
            None => RawServerConfig::default(),
        };
        let checked = file.overlay(self.into_raw(env)).validate();
        match checked.and_then(|config| given.check(config.enable_profiling).map(|()| config)) {
            Ok(config) => Ok((config, warnings)),
            Err(ConfigError::Invalid(problems)) => {
                let lines = describe_for_cli(&problems, config_file.as_deref());
                anyhow::bail!("invalid configuration:\n  {}", lines.join("\n  "))
            }
            Err(other) => Err(other.into()),
        }
    }

    /// The flags as a raw config layer (`None` = flag not given). As
    /// upstream does, a non-empty `PROXY_SERVER_ID` stands in for an absent
    /// `--server-id`.
    fn into_raw(self, env: impl Fn(&str) -> Option<String>) -> RawServerConfig {
        let server_id = self.flags.server_id.or_else(|| env(SERVER_ID_ENV).filter(|id| !id.is_empty()));
        let quic = RawQuicConfig::from_keepalive_time(self.keepalive_time);
        RawServerConfig { server_id, quic, ..self.flags }
    }
}

#[cfg(test)]
mod upstream_tests;

#[cfg(test)]
mod tests {
    use konnq_shared::config::FrontendMode;

    use super::*;

    pub(super) const REQUIRED: [&str; 3] =
        ["--uds-name=/run/k.sock", "--cluster-cert=/p/c.crt", "--cluster-key=/p/c.key"];

    /// No environment: tests never read the process's (it is shared).
    pub(super) fn no_env(_: &str) -> Option<String> {
        None
    }

    pub(super) fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_go_style(std::iter::once("konnq-server").chain(args.iter().copied()))
    }

    /// `REQUIRED` plus `args`: the configuration and its warnings.
    pub(super) fn config_warnings(args: &[&str]) -> anyhow::Result<(ServerConfig, Vec<String>)> {
        let all: Vec<&str> = REQUIRED.iter().chain(args).copied().collect();
        parse(&all).expect("flags parse").into_config_with_env(no_env)
    }

    fn config(args: &[&str]) -> anyhow::Result<ServerConfig> {
        config_warnings(args).map(|(c, _)| c)
    }

    #[test]
    fn flags_override_file_values() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        let toml_text = "uds-name = \"/file.sock\"\nadmin-port = 1000\nhealth-port = 1001\n\
                         cluster-cert = \"/f.crt\"\ncluster-key = \"/f.key\"\nworker-threads = 3\n\
                         [quic]\nidle-timeout = \"9s\"\n";
        std::fs::write(&file, toml_text).unwrap();
        let cli = parse(&[
            "--config",
            file.to_str().unwrap(),
            "--admin-port=2000",
            "--mode",
            "http-connect",
            "-worker-threads=2",
        ])
        .unwrap();
        let (c, _) = cli.into_config_with_env(no_env).expect("valid");
        assert_eq!(c.admin_port, 2000, "flag wins");
        assert_eq!(c.health_port, 1001, "file value kept");
        assert_eq!(c.uds_name, Some(PathBuf::from("/file.sock")));
        assert_eq!(c.mode, FrontendMode::HttpConnect);
        assert_eq!(c.quic.idle_timeout, Duration::from_secs(9));
        assert_eq!(c.worker_threads, 2, "flag wins");
    }

    #[test]
    fn bad_flag_value_names_the_flag() {
        let err = parse(&["--server-port=http"]).unwrap_err().to_string();
        assert!(err.contains("--server-port"), "{err}");
        let err = parse(&["--backend-dial-timeout=soon"]).unwrap_err().to_string();
        assert!(err.contains("--backend-dial-timeout") && err.contains("invalid duration"), "{err}");
        let err = parse(&["--mode=tcp"]).unwrap_err().to_string();
        assert!(err.contains("--mode") && err.contains("http-connect"), "{err}");
    }

    #[test]
    fn validation_errors_name_flags() {
        let tcp = ["--uds-name=", "--server-count=0", "--server-port=8090", "--server-cert=/s.crt"];
        let err = config(&tcp).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("--server-count: must be between 1"), "{text}");
        assert!(text.contains("--server-key: required"), "{text}");
        assert!(text.contains("--server-ca-cert: required"), "{text}");
        let err = parse(&[]).unwrap().into_config_with_env(no_env).unwrap_err().to_string();
        assert!(err.contains("--cluster-cert: required"), "{err}");
    }

    #[test]
    fn verbosity_go_style() {
        for spelling in [&["-v=4"][..], &["--v=4"], &["-v", "4"], &["-v4"], &["--v", "4"]] {
            let cli = parse(spelling).unwrap_or_else(|e| panic!("{spelling:?}: {e}"));
            assert_eq!(cli.flags.v, Some(4), "{spelling:?}");
        }
        assert_eq!(config(&["-v=4"]).unwrap().log.verbosity, 4);
    }

    #[test]
    fn go_bool_flags_and_single_dash_longs() {
        let c = config(&["--delete-existing-uds-file=false", "-logtostderr=true", "-server-id=abc"]).unwrap();
        assert!(!c.delete_existing_uds_file);
        assert_eq!(c.server_id, "abc");
        assert!(parse(&["--logtostderr"]).unwrap().no_effect.warnings().is_empty(), "true is what konnq does");
        assert!(parse(&["--delete-existing-uds-file=maybe"]).is_err());
        let c = config(&["--agent-port=1", "--agent-port=8132"]).unwrap();
        assert_eq!(c.agent_port, 8132, "a repeated flag: the last wins, as in Go");
    }

    #[test]
    fn proxy_strategies_are_a_setting_checked_as_upstream_checks_them() {
        use konnq_shared::config::ProxyStrategy as P;
        let (c, warnings) = config_warnings(&["--proxy-strategies=destHost,defaultRoute,default"]).unwrap();
        assert!(warnings.is_empty(), "a setting, not a flag without effect: {warnings:?}");
        assert_eq!(c.proxy_strategies.as_slice(), [P::DestHost, P::DefaultRoute, P::Default]);
        assert_eq!(config(&[]).unwrap().proxy_strategies.as_slice(), [P::Default]);
        let c = config(&["--proxy-strategies=default", "-proxy-strategies", "destHost"]).unwrap();
        assert_eq!(c.proxy_strategies.as_slice(), [P::DestHost], "a repeated flag: the last wins, as in Go");
        let err = parse(&["--proxy-strategies=nearest"]).unwrap_err().to_string();
        assert!(err.contains("--proxy-strategies") && err.contains("unknown proxy strategy: nearest"), "{err}");
        let err = parse(&["--proxy-strategies=,"]).unwrap_err().to_string();
        assert!(err.contains("proxy strategies cannot be empty"), "{err}");
    }

    /// The args of the official konnectivity-server static pod, verbatim.
    const MANIFEST_ARGS: [&str; 14] = [
        "--logtostderr=true",
        "--uds-name=/etc/kubernetes/konnectivity-server/konnectivity-server.socket",
        "--delete-existing-uds-file",
        "--cluster-cert=/etc/kubernetes/pki/apiserver.crt",
        "--cluster-key=/etc/kubernetes/pki/apiserver.key",
        "--mode=grpc",
        "--server-port=0",
        "--agent-port=8132",
        "--admin-port=8133",
        "--health-port=8134",
        "--agent-namespace=kube-system",
        "--agent-service-account=konnectivity-agent",
        "--kubeconfig=/etc/kubernetes/konnectivity-server.conf",
        "--authentication-audience=system:konnectivity-server",
    ];

    #[test]
    fn upstream_manifest_args_parse_and_validate() {
        let (c, warnings) = parse(&MANIFEST_ARGS).expect("flags parse").into_config_with_env(no_env).expect("valid");
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!((c.agent_port, c.admin_port, c.health_port, c.server_port), (8132, 8133, 8134, 0));
        assert_eq!(c.cluster_tls.ca, None, "no client certificates: tokens instead");
        let auth = c.token_auth.expect("token authentication on");
        assert_eq!(auth.agent_namespace, "kube-system");
        assert_eq!(auth.agent_service_account, "konnectivity-agent");
        assert_eq!(auth.audience, "system:konnectivity-server");
        assert_eq!(auth.kubeconfig, Some(PathBuf::from("/etc/kubernetes/konnectivity-server.conf")));
        assert_eq!(auth.review_rate, Some(konnq_shared::config::ReviewRate { qps: 5.0, burst: 10 }));
    }

    #[test]
    fn token_auth_flags() {
        let text = config(&["--agent-namespace=kube-system", "--agent-service-account=konnectivity-agent"])
            .unwrap_err()
            .to_string();
        assert!(text.contains("--authentication-audience: required"), "{text}");
        assert!(!text.contains("--agent-service-account"), "{text}");
        let c = config(&[
            "--agent-namespace=ns",
            "--agent-service-account=sa",
            "--authentication-audience=aud",
            "--kubeconfig-qps",
            "-1",
            "-kubeconfig-burst=4",
            "--kube-api-content-type=application/vnd.kubernetes.protobuf",
            "--token-review-cache-ttl=30s",
        ])
        .expect("valid");
        let auth = c.token_auth.expect("on");
        assert_eq!(auth.review_rate, None, "negative qps: no limit, as in client-go");
        assert_eq!(auth.kubeconfig, None, "in-cluster config");
        assert_eq!(auth.cache_ttl, Duration::from_secs(30));
    }

    #[test]
    fn certs_subcommand_parses_without_other_flags() {
        let cli = parse(&["certs", "--dir", "/tmp/pki", "--san", "konnq.example", "--san=10.0.0.1"]).unwrap();
        assert_eq!(
            cli.command,
            Some(Command::Certs { dir: "/tmp/pki".into(), san: vec!["konnq.example".into(), "10.0.0.1".into()] })
        );
        assert!(parse(&["certs"]).is_err(), "--dir is required");
    }

    #[test]
    fn defaults_via_cli() {
        let c = config(&[]).unwrap();
        assert_eq!(c.agent_port, 8091);
        assert_eq!(c.backend_dial_timeout, Some(Duration::from_secs(10)));
    }

    #[test]
    fn log_format_flag() {
        use konnq_shared::config::LogFormat;
        assert_eq!(config(&[]).unwrap().log.format, LogFormat::Text);
        assert_eq!(config(&["--log-format=json"]).unwrap().log.format, LogFormat::Json);
        assert_eq!(config(&["-log-format", "text"]).unwrap().log.format, LogFormat::Text);
        let err = parse(&["--log-format=xml"]).unwrap_err().to_string();
        assert!(err.contains("--log-format") && err.contains("\"xml\"") && err.contains("text or json"), "{err}");
    }

    #[test]
    fn help_shows_the_declared_defaults() {
        let command = <Cli as clap::CommandFactory>::command();
        let flags = konnq_shared::config::check_help_defaults(&command, &RawServerConfig::keys());
        assert_eq!(flags, Ok(40), "declared keys that are flags");
        let long = parse(&["--help"]).unwrap_err().to_string();
        assert!(long.contains("(quic.keep-alive-interval); 0 = default [default: 1s]"), "{long}");
    }
}
