//! Command line of `konnq-agent`: upstream proxy-agent's flag names and an
//! optional `--config` TOML file under them.
//!
//! Flags and TOML keys are the same words (`--ca-cert` ↔ `ca-cert`); both
//! become a [`RawAgentConfig`], flags overlaid on the file, then validated.
//! Every flag of upstream's proxy-agent (v0.36.0) and klog is accepted:
//! those konnq has no use for are declared once, in
//! [`konnq_shared::config::upstream`], and each one set to a value that would
//! matter upstream gives one start-up warning.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use konnq_shared::config::{
    describe_for_cli, help_line, parse_duration, upstream, AgentConfig, ConfigError, DefaultValue, RawAgentConfig,
    RawQuicConfig,
};

/// Environment variable upstream reads the agent id from when `--agent-id`
/// is not given.
pub const AGENT_ID_ENV: &str = "PROXY_AGENT_ID";

/// konnq-agent: connects to konnq servers over QUIC and dials cluster targets.
///
/// Signals: SIGTERM or SIGINT stops the agent. SIGUSR1 moves its QUIC
/// connections to a new local UDP port (e.g. after the node's address or NAT
/// mapping changed); proxied connections survive. Connections over the TCP
/// transport cannot move and stay as they are.
#[derive(Debug, Parser)]
#[command(name = "konnq-agent", version, args_override_self = true)]
pub struct Cli {
    /// TOML config file (see conf/agent.toml); flags override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The settings given as flags; each is declared, with its TOML key, in
    /// [`RawAgentConfig`].
    #[command(flatten)]
    pub flags: RawAgentConfig,

    /// Upstream's keep-alive of the server connection: `quic.keep-alive-interval`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help = keepalive_time_help())]
    pub keepalive_time: Option<Duration>,

    /// Warnings for upstream flags given that have no effect (see `upstream`).
    #[arg(skip)]
    pub no_effect: upstream::Given,
}

fn keepalive_time_help() -> String {
    let doc = "QUIC keep-alive PING interval to the server (quic.keep-alive-interval); 0 = default";
    help_line(doc, Some(RawQuicConfig::defaults().keep_alive_interval.shown()))
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
        let tables = [upstream::KLOG, upstream::AGENT];
        let (mut cli, no_effect) = konnq_shared::config::try_parse_go_style_with::<Cli, _, _>(args, &tables)?;
        cli.no_effect = no_effect;
        Ok(cli)
    }

    /// Loads `--config` if given, overlays the flags and validates. Returns
    /// the configuration and the warnings to log once logging is set up;
    /// the error lists every problem, each naming its flag (or config key).
    pub fn into_config(self) -> anyhow::Result<(AgentConfig, Vec<String>)> {
        self.into_config_with_env(|name| std::env::var(name).ok())
    }

    /// [`Cli::into_config`] reading environment variables through `env`.
    pub fn into_config_with_env(
        mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<(AgentConfig, Vec<String>)> {
        let given = std::mem::take(&mut self.no_effect);
        let warnings = given.warnings();
        let config_file = self.config.clone();
        let file = match &config_file {
            Some(path) => RawAgentConfig::from_file(path)?,
            None => RawAgentConfig::default(),
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
    /// upstream does, a non-empty `PROXY_AGENT_ID` stands in for an absent
    /// `--agent-id`.
    fn into_raw(self, env: impl Fn(&str) -> Option<String>) -> RawAgentConfig {
        let agent_id = self.flags.agent_id.or_else(|| env(AGENT_ID_ENV).filter(|id| !id.is_empty()));
        let quic = RawQuicConfig::from_keepalive_time(self.keepalive_time);
        RawAgentConfig { agent_id, quic, ..self.flags }
    }
}

#[cfg(test)]
mod upstream_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use konnq_shared::config::AgentIdentifiers;

    /// No environment: tests never read the process's (it is shared).
    pub(super) fn no_env(_: &str) -> Option<String> {
        None
    }

    pub(super) fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_go_style(std::iter::once("konnq-agent").chain(args.iter().copied()))
    }

    /// `--ca-cert` plus `args`: the configuration and its warnings.
    pub(super) fn config_warnings(args: &[&str]) -> anyhow::Result<(AgentConfig, Vec<String>)> {
        let all: Vec<&str> = std::iter::once("--ca-cert=/p/ca.crt").chain(args.iter().copied()).collect();
        parse(&all).expect("flags parse").into_config_with_env(no_env)
    }

    fn config(args: &[&str]) -> anyhow::Result<AgentConfig> {
        config_warnings(args).map(|(c, _)| c)
    }

    #[test]
    fn flags_override_file_values() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        let toml_text = "ca-cert = \"/file/ca.crt\"\nproxy-server-host = \"file.example\"\nproxy-server-port = 9000\n\
                         [quic]\nkeep-alive-interval = \"2s\"\n";
        std::fs::write(&file, toml_text).unwrap();
        let cli = parse(&[
            "--config",
            file.to_str().unwrap(),
            "--proxy-server-port=9001",
            "--sync-interval=500ms",
            "--worker-threads=0",
        ])
        .unwrap();
        let (c, _) = cli.into_config_with_env(no_env).expect("valid");
        assert_eq!(c.proxy_server_port, 9001, "flag wins");
        assert_eq!(c.proxy_server_host, "file.example", "file value kept");
        assert_eq!(c.ca_cert, PathBuf::from("/file/ca.crt"));
        assert_eq!(c.sync_interval, Duration::from_millis(500));
        assert_eq!(c.quic.keep_alive_interval, Duration::from_secs(2));
        assert_eq!(c.worker_threads, 0);
    }

    #[test]
    fn bad_flag_value_names_the_flag() {
        let err = parse(&["--proxy-server-port=-1"]).unwrap_err().to_string();
        assert!(err.contains("--proxy-server-port"), "{err}");
        let err = parse(&["--sync-interval=often"]).unwrap_err().to_string();
        assert!(err.contains("--sync-interval") && err.contains("invalid duration"), "{err}");
    }

    #[test]
    fn validation_errors_name_flags() {
        let text = config(&["--agent-cert=/a.crt", "--agent-identifiers=colour=blue", "--sync-interval-cap=1ms"])
            .unwrap_err()
            .to_string();
        assert!(text.contains("--agent-key: required when agent-cert is set"), "{text}");
        assert!(text.contains("--agent-identifiers: unknown identifier key \"colour\""), "{text}");
        assert!(text.contains("--sync-interval-cap: must be at least sync-interval"), "{text}");
        let err = parse(&[]).unwrap().into_config_with_env(no_env).unwrap_err().to_string();
        assert!(err.contains("--ca-cert: required"), "{err}");
    }

    #[test]
    fn nested_keys_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, "[quic]\nidle-timeout = \"1s\"\n").unwrap();
        let text = config(&["--config", file.to_str().unwrap()]).unwrap_err().to_string();
        assert!(text.contains(&format!("quic.idle-timeout (in {})", file.display())), "{text}");
    }

    #[test]
    fn long_help_documents_the_signals() {
        let long = parse(&["--help"]).unwrap_err().to_string();
        assert!(long.contains("SIGUSR1 moves its QUIC connections to a new local UDP port"), "{long}");
        let short = parse(&["-h"]).unwrap_err().to_string();
        assert!(!short.contains("SIGUSR1"), "-h stays short: {short}");
    }

    #[test]
    fn verbosity_go_style() {
        for spelling in [&["-v=4"][..], &["--v=4"], &["-v", "4"], &["-v4"]] {
            let cli = parse(spelling).unwrap_or_else(|e| panic!("{spelling:?}: {e}"));
            assert_eq!(cli.flags.v, Some(4), "{spelling:?}");
        }
        assert_eq!(config(&["-v=4"]).unwrap().log.verbosity, 4);
    }

    #[test]
    fn upstream_style_flags() {
        let c = config(&[
            "-logtostderr=true",
            "-proxy-server-host=konnq.kube-system.svc",
            "--agent-identifiers=host=node1&ipv4=10.0.0.5&default-route=true",
            "--agent-cert=/a.crt",
            "--agent-key=/a.key",
            "--server-name=konnq-server",
        ])
        .unwrap();
        assert_eq!(c.proxy_server_host, "konnq.kube-system.svc");
        assert_eq!(c.tls_server_name(), "konnq-server");
        assert_eq!(
            c.agent_identifiers,
            AgentIdentifiers {
                host: vec!["node1".into()],
                ipv4: vec!["10.0.0.5".parse().unwrap()],
                default_route: true,
                ..Default::default()
            }
        );
        assert_eq!(c.agent_tls, Some(("/a.crt".into(), "/a.key".into())));
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
        let flags = konnq_shared::config::check_help_defaults(&command, &RawAgentConfig::keys());
        assert_eq!(flags, Ok(30), "declared keys that are flags");
        let long = parse(&["--help"]).unwrap_err().to_string();
        assert!(long.contains("(quic.keep-alive-interval); 0 = default [default: 1s]"), "{long}");
    }
}
