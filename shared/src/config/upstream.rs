//! Upstream flags konnq accepts without effect.
//!
//! konnq-server and konnq-agent take every flag upstream's proxy-server and
//! proxy-agent (apiserver-network-proxy v0.36.0) define, plus the klog flags
//! both register, so that an existing manifest never stops the process. Most
//! map onto konnq settings; the ones below have nothing to act on in konnq
//! (QUIC agents, a Rust runtime, logging to stderr). Each table entry is a
//! whole declaration: the flag is registered with clap from it (value syntax
//! checked as upstream checks it, shown under its own heading in `--help`),
//! and a value other than a quiet one gives exactly one start-up warning,
//! "--FLAG has no effect: REASON".

use clap::{Arg, ArgAction, ArgMatches, Command};

use super::{format_duration, parse_duration, parse_go_bool, ConfigError, Problem};

/// Heading of these flags in `--help` (they are left out of `-h`).
pub const HELP_HEADING: &str = "Upstream flags accepted without effect";

/// An upstream flag konnq accepts and ignores.
#[derive(Debug, Clone, Copy)]
pub struct NoEffect {
    /// The flag's name, without dashes.
    pub flag: &'static str,
    /// Its values, as upstream parses and checks them.
    pub syntax: Syntax,
    /// Values (normalised by [`Syntax::normalize`]) that need no warning:
    /// upstream's default, and any value konnq's behaviour already is.
    pub quiet: &'static [&'static str],
    /// What konnq does instead (the warning says it, and `--help`).
    pub reason: &'static str,
}

impl NoEffect {
    /// The start-up warning for this flag.
    pub fn warning(&self) -> String {
        format!("--{} has no effect: {}", self.flag, self.reason)
    }

    fn arg(&self) -> Arg {
        let syntax = self.syntax;
        let arg = Arg::new(self.flag)
            .long(self.flag)
            .value_name(syntax.value_name())
            .help(self.reason)
            .help_heading(HELP_HEADING)
            .hide_short_help(true)
            .value_parser(move |s: &str| syntax.normalize(s));
        match syntax {
            Syntax::Bool => arg.num_args(0..=1).default_missing_value("true"),
            // A Go string slice: comma-separated, and repeatable.
            Syntax::CipherSuites => arg.action(ArgAction::Append).value_delimiter(','),
            _ => arg,
        }
    }

    /// The normalised values given on the command line, if the flag was.
    fn given<'m>(&self, matches: &'m ArgMatches) -> Option<impl Iterator<Item = &'m String>> {
        matches.try_get_many::<String>(self.flag).ok().flatten()
    }
}

/// How a flag's value is written and checked (upstream's rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// Go's `strconv.ParseBool`; `--flag` alone means true.
    Bool,
    /// A signed integer.
    Int,
    /// An integer greater than 0 (upstream refuses others).
    PositiveInt,
    /// A Go duration (`1s`, `500ms`, `1h0m0s`).
    Duration,
    /// Any string.
    Text,
    /// A klog severity: INFO, WARNING, ERROR, FATAL (any case) or a number.
    Severity,
    /// Go's `crypto/tls` cipher suite names, comma-separated.
    CipherSuites,
    /// VersionTLS10 ... VersionTLS13, or empty.
    TlsVersion,
}

/// Names Go's `tls.CipherSuites()` has returned (the ones upstream accepts):
/// TLS 1.3, ECDHE, and the RSA key exchange suites older Go releases list.
const GO_CIPHER_SUITES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
];

const SEVERITIES: [&str; 4] = ["INFO", "WARNING", "ERROR", "FATAL"];

impl Syntax {
    /// Checks `s` and returns it in a canonical spelling (booleans as
    /// `true`/`false`, durations as `1s`, severities by name), so that
    /// [`NoEffect::quiet`] can list one spelling per value.
    pub fn normalize(self, s: &str) -> Result<String, String> {
        let int = |s: &str| s.parse::<i64>().map_err(|_| format!("invalid integer {s:?}"));
        match self {
            Syntax::Bool => parse_go_bool(s).map(|b| b.to_string()),
            Syntax::Int => int(s).map(|n| n.to_string()),
            Syntax::PositiveInt => match int(s)? {
                n if n > 0 => Ok(n.to_string()),
                n => Err(format!("must be greater than 0, got {n}")),
            },
            Syntax::Duration => parse_duration(s).map(format_duration),
            Syntax::Text => Ok(s.to_owned()),
            Syntax::Severity => severity(s),
            Syntax::CipherSuites if s.is_empty() || GO_CIPHER_SUITES.contains(&s) => Ok(s.to_owned()),
            Syntax::CipherSuites => Err(format!("cipher suite {s} not supported, doesn't exist or considered as insecure")),
            Syntax::TlsVersion => match s {
                "" | "VersionTLS10" | "VersionTLS11" | "VersionTLS12" | "VersionTLS13" => Ok(s.to_owned()),
                _ => Err(format!(
                    "unsupported TLS version {s:?}, supported values are: VersionTLS10, VersionTLS11, VersionTLS12, VersionTLS13"
                )),
            },
        }
    }

    fn value_name(self) -> &'static str {
        match self {
            Syntax::Bool => "BOOL",
            Syntax::Int | Syntax::PositiveInt => "N",
            Syntax::Duration => "DURATION",
            Syntax::Severity => "SEVERITY",
            Syntax::CipherSuites => "LIST",
            Syntax::TlsVersion => "VERSION",
            Syntax::Text => "VALUE",
        }
    }
}

fn severity(s: &str) -> Result<String, String> {
    if let Some(name) = SEVERITIES.iter().find(|n| n.eq_ignore_ascii_case(s)) {
        return Ok((*name).to_owned());
    }
    let n: i32 = s.parse().map_err(|_| format!("invalid severity {s:?} (INFO, WARNING, ERROR, FATAL or a number)"))?;
    Ok(usize::try_from(n).ok().and_then(|i| SEVERITIES.get(i)).map_or_else(|| n.to_string(), |n| (*n).to_owned()))
}

/// Adds every flag of `tables` to `command`.
pub fn register(command: Command, tables: &[&[NoEffect]]) -> Command {
    command.args(tables.iter().flat_map(|t| t.iter()).map(NoEffect::arg))
}

/// The flags of some tables given on a command line, in table order, each
/// with its normalised values.
#[derive(Debug, Clone, Default)]
pub struct Given(Vec<(&'static NoEffect, Vec<String>)>);

impl Given {
    /// The flags of `tables` in `matches`.
    pub fn from_matches(matches: &ArgMatches, tables: &[&'static [NoEffect]]) -> Given {
        let given = |e: &'static NoEffect| e.given(matches).map(|values| (e, values.cloned().collect()));
        Given(tables.iter().flat_map(|t| t.iter()).filter_map(given).collect())
    }

    /// One warning per flag given a value that is not quiet, in table order.
    pub fn warnings(&self) -> Vec<String> {
        let loud = |(e, values): &&(&NoEffect, Vec<String>)| {
            values.iter().any(|v| !v.is_empty() && !e.quiet.contains(&v.as_str()))
        };
        self.0.iter().filter(loud).map(|(e, _)| e.warning()).collect()
    }

    /// Upstream's rule, in upstream's words: contention profiling (a Go
    /// block profile, which konnq has not) is refused without profiling.
    pub fn check(&self, enable_profiling: bool) -> Result<(), ConfigError> {
        if self.bool("enable-contention-profiling") == Some(true) && !enable_profiling {
            return Err(ConfigError::Invalid(vec![Problem {
                key: "enable-contention-profiling".to_owned(),
                message: "if enable-contention-profiling is set, enable-profiling must also be set".to_owned(),
            }]));
        }
        Ok(())
    }

    /// The value of the Go bool flag `flag`, if given (the last one, as in
    /// Go). Upstream checks some of these against other settings.
    pub fn bool(&self, flag: &str) -> Option<bool> {
        let (_, values) = self.0.iter().find(|(e, _)| e.flag == flag && e.syntax == Syntax::Bool)?;
        values.last().map(|v| v == "true")
    }
}

/// One flag of an upstream binary as [`walk_flags`] checks it: its name, a
/// valid value (`None` = the bare flag, a Go bool), and whether konnq
/// accepts it without effect.
pub type UpstreamFlag = (&'static str, Option<&'static str>, bool);

/// Checks a binary against the list of its upstream counterpart's flags:
/// each flag, in both of Go's spellings and with the `companions` it needs
/// to be valid, parses and validates through `run` (the args to the
/// warnings, or the error); one without effect gives exactly one warning,
/// naming it, and any other none. Also checks that every flag of `tables`
/// is listed as one without effect. Returns the first problem.
pub fn walk_flags(
    flags: &[UpstreamFlag],
    tables: &[&[NoEffect]],
    companions: impl Fn(&str) -> &'static [&'static str],
    run: impl Fn(&[&str]) -> Result<Vec<String>, String>,
) -> Result<(), String> {
    for &(flag, value, no_effect) in flags {
        for dashes in ["--", "-"] {
            let arg = value.map_or(format!("{dashes}{flag}"), |v| format!("{dashes}{flag}={v}"));
            let mut args: Vec<&str> = companions(flag).to_vec();
            args.push(&arg);
            let warnings = run(&args).map_err(|e| format!("{arg}: {e}"))?;
            let fits = if no_effect {
                warnings.len() == 1 && warnings[0].starts_with(&format!("--{flag} has no effect: "))
            } else {
                warnings.is_empty()
            };
            if !fits {
                return Err(format!("{arg} (without effect: {no_effect}): {warnings:?}"));
            }
        }
    }
    for entry in tables.iter().flat_map(|t| t.iter()) {
        if !flags.iter().any(|&(flag, _, no_effect)| flag == entry.flag && no_effect) {
            return Err(format!("--{} is not an upstream flag without effect", entry.flag));
        }
    }
    Ok(())
}

const NO_LOG_FILES: &str = "konnq writes no log files; it logs to stderr";
const ALL_TO_STDERR: &str = "konnq writes every log line to stderr";
const LOG_FORMAT: &str = "konnq's log lines have one layout per --log-format (text or json)";
const NO_CONTENTION_PROFILE: &str = "konnq is not a Go program and has no block (contention) profile; \
                                     --enable-profiling serves its CPU profile";
const NO_CHANNELS: &str = "konnq has no transfer channels: each connection has its own QUIC stream with flow control";

/// klog's flags, registered by both binaries (`-v` is a konnq setting).
pub const KLOG: &[NoEffect] = &[
    NoEffect { flag: "logtostderr", syntax: Syntax::Bool, quiet: &["true"], reason: "konnq always logs to stderr" },
    NoEffect { flag: "alsologtostderr", syntax: Syntax::Bool, quiet: &["false"], reason: NO_LOG_FILES },
    NoEffect { flag: "log-dir", syntax: Syntax::Text, quiet: &[], reason: NO_LOG_FILES },
    NoEffect { flag: "log-file", syntax: Syntax::Text, quiet: &[], reason: NO_LOG_FILES },
    NoEffect { flag: "log-file-max-size", syntax: Syntax::Int, quiet: &["1800"], reason: NO_LOG_FILES },
    NoEffect { flag: "one-output", syntax: Syntax::Bool, quiet: &["false"], reason: NO_LOG_FILES },
    NoEffect { flag: "skip-log-headers", syntax: Syntax::Bool, quiet: &["false"], reason: NO_LOG_FILES },
    NoEffect { flag: "stderrthreshold", syntax: Syntax::Severity, quiet: &["ERROR"], reason: ALL_TO_STDERR },
    NoEffect { flag: "alsologtostderrthreshold", syntax: Syntax::Severity, quiet: &["INFO"], reason: ALL_TO_STDERR },
    NoEffect {
        flag: "legacy-stderr-threshold-behavior",
        syntax: Syntax::Bool,
        quiet: &["true"],
        reason: ALL_TO_STDERR,
    },
    NoEffect { flag: "add-dir-header", syntax: Syntax::Bool, quiet: &["false"], reason: LOG_FORMAT },
    NoEffect { flag: "skip-headers", syntax: Syntax::Bool, quiet: &["false"], reason: LOG_FORMAT },
    NoEffect {
        flag: "vmodule",
        syntax: Syntax::Text,
        quiet: &[],
        reason: "konnq has one verbosity (-v); RUST_LOG sets levels per module",
    },
    NoEffect { flag: "log-backtrace-at", syntax: Syntax::Text, quiet: &[], reason: "konnq logs no stack traces" },
];

/// proxy-server's flags that konnq-server does not act on.
pub const SERVER: &[NoEffect] = &[
    NoEffect {
        flag: "enable-contention-profiling",
        syntax: Syntax::Bool,
        quiet: &["false"],
        reason: NO_CONTENTION_PROFILE,
    },
    NoEffect {
        flag: "kube-api-content-type",
        syntax: Syntax::Text,
        quiet: &["application/vnd.kubernetes.protobuf"],
        reason: "konnq sends its requests to kube-apiserver (TokenReviews, Leases) as JSON",
    },
    NoEffect {
        flag: "cipher-suites",
        syntax: Syntax::CipherSuites,
        quiet: &[],
        reason: "konnq speaks only TLS 1.3 (QUIC requires it; the TCP frontend too), \
                 and upstream's cipher suites do not apply to TLS 1.3",
    },
    NoEffect {
        flag: "tls-min-version",
        syntax: Syntax::TlsVersion,
        quiet: &["VersionTLS13"],
        reason: "konnq speaks only TLS 1.3 (QUIC requires it; the TCP frontend too), above any minimum",
    },
    NoEffect { flag: "xfr-channel-size", syntax: Syntax::PositiveInt, quiet: &["10"], reason: NO_CHANNELS },
    NoEffect { flag: "warn-on-channel-limit", syntax: Syntax::Bool, quiet: &["true"], reason: NO_CHANNELS },
];

/// proxy-agent's flags that konnq-agent does not act on.
pub const AGENT: &[NoEffect] = &[
    NoEffect {
        flag: "enable-contention-profiling",
        syntax: Syntax::Bool,
        quiet: &["false"],
        reason: NO_CONTENTION_PROFILE,
    },
    NoEffect {
        flag: "probe-interval",
        syntax: Syntax::Duration,
        quiet: &["1s"],
        reason: "/readyz follows the QUIC connection's state as it changes",
    },
    NoEffect { flag: "xfr-channel-size", syntax: Syntax::PositiveInt, quiet: &["150"], reason: NO_CHANNELS },
    NoEffect { flag: "warn-on-channel-limit", syntax: Syntax::Bool, quiet: &["false"], reason: NO_CHANNELS },
    NoEffect {
        flag: "kube-api-content-type",
        syntax: Syntax::Text,
        quiet: &["application/vnd.kubernetes.protobuf"],
        reason: "konnq-agent lists server Leases as JSON",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(tables: &[&'static [NoEffect]], args: &[&str]) -> Result<Vec<String>, clap::Error> {
        let command = register(Command::new("t"), tables);
        let matches = command.try_get_matches_from(std::iter::once("t").chain(args.iter().copied()))?;
        Ok(Given::from_matches(&matches, tables).warnings())
    }

    #[test]
    fn quiet_values_in_any_spelling_give_no_warning() {
        let args = [
            "--logtostderr",
            "--stderrthreshold=2",
            "--alsologtostderrthreshold=info",
            "--probe-interval=1000ms",
            "--xfr-channel-size=150",
            "--log-dir=",
            "--warn-on-channel-limit=F",
        ];
        assert_eq!(parse(&[KLOG, AGENT], &args).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn one_warning_per_flag_even_when_repeated() {
        let w = parse(
            &[SERVER],
            &["--cipher-suites=TLS_AES_128_GCM_SHA256", "--cipher-suites", "TLS_RSA_WITH_AES_128_CBC_SHA"],
        )
        .unwrap();
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("--cipher-suites has no effect: konnq speaks only TLS 1.3"), "{w:?}");
        let w = parse(&[KLOG], &["--vmodule=quic*=3", "--skip-headers"]).unwrap();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("--skip-headers has no effect: "), "table order: {w:?}");
        assert!(w[1].starts_with("--vmodule has no effect: konnq has one verbosity"), "{w:?}");
    }

    #[test]
    fn values_are_checked_as_upstream_checks_them() {
        let err = |tables: &[&'static [NoEffect]], arg: &str| parse(tables, &[arg]).unwrap_err().to_string();
        assert!(err(&[SERVER], "--xfr-channel-size=0").contains("must be greater than 0"));
        assert!(err(&[SERVER], "--cipher-suites=TLS_RSA_WITH_RC4_128_SHA").contains("considered as insecure"));
        assert!(err(&[SERVER], "--tls-min-version=1.2").contains("unsupported TLS version"));
        assert!(err(&[KLOG], "--stderrthreshold=LOUD").contains("invalid severity"));
        assert!(err(&[AGENT], "--warn-on-channel-limit=yes").contains("invalid boolean"));
        assert!(err(&[AGENT], "--probe-interval=soon").contains("invalid duration"));
    }

    #[test]
    fn bool_values_are_read_back_the_last_one_winning() {
        let tables = [SERVER];
        let given = |args: &[&str]| {
            let command = register(Command::new("t").args_override_self(true), &tables);
            let matches = command.try_get_matches_from(std::iter::once("t").chain(args.iter().copied())).unwrap();
            Given::from_matches(&matches, &tables)
        };
        assert_eq!(given(&[]).bool("enable-contention-profiling"), None);
        assert_eq!(given(&["--enable-contention-profiling"]).bool("enable-contention-profiling"), Some(true));
        let g = given(&["--enable-contention-profiling=T", "--enable-contention-profiling=0"]);
        assert_eq!(g.bool("enable-contention-profiling"), Some(false));
        assert!(g.warnings().is_empty(), "false is quiet");
        assert_eq!(given(&["--xfr-channel-size=3"]).bool("xfr-channel-size"), None, "not a bool");
    }

    #[test]
    fn tables_have_unique_flags_and_reasons() {
        for table in [&[KLOG, SERVER][..], &[KLOG, AGENT]] {
            let mut names: Vec<&str> = table.iter().flat_map(|t| t.iter()).map(|e| e.flag).collect();
            let n = names.len();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), n, "a flag is listed twice");
        }
        for e in KLOG.iter().chain(SERVER).chain(AGENT) {
            assert!(!e.reason.is_empty() && !e.reason.ends_with('.'), "{}", e.flag);
            for q in e.quiet {
                assert_eq!(e.syntax.normalize(q).as_deref(), Ok(*q), "{}: quiet values are normalised", e.flag);
            }
        }
    }
}
