//! Configuration of `konnq-server` and `konnq-agent`.
//!
//! Every key is declared once, in a `settings!` table (`server.rs`,
//! `agent.rs`, `quic.rs`): doc line, type, default and flag attributes. From
//! that declaration come two layers, the same for both binaries:
//!
//! 1. **Raw** structs ([`RawServerConfig`], [`RawAgentConfig`], [`RawQuicConfig`]):
//!    what a TOML file and the command line both produce (they are serde's and
//!    clap's at once). Every field is an `Option`; `None` means "not given
//!    here". Unknown TOML keys are rejected (`deny_unknown_fields`), and TOML
//!    keys are the flags' words (`uds-name` ↔ `--uds-name`). `raw.overlay(other)`
//!    merges two layers key by key, `other` winning, so `file.overlay(flags)`
//!    gives flags precedence.
//! 2. **Validated** structs ([`ServerConfig`], [`AgentConfig`], [`QuicConfig`]):
//!    declared defaults filled in, ranges and relations checked, no "always
//!    `Some`" options. `validate` collects *every* problem, each naming its
//!    TOML key path (e.g. `quic.idle-timeout`), into one [`ConfigError`].
//!
//! `keys()` on each raw struct lists the keys with their doc line and
//! default ([`KeyDoc`]); `--help` shows the same default, and tests hold
//! `conf/*.toml` and the README's settings table against the list.
//!
//! Validation never touches the filesystem: certificate files are read (and
//! their existence checked) later, when TLS is set up.
//!
//! Durations are strings such as `"10s"`, `"500ms"`, `"1m30s"` (see
//! [`parse_duration`]).
//!
//! The command lines take every flag of upstream's binaries:
//! [`try_parse_go_style_with`] parses them Go's way, and [`upstream`] declares the ones konnq accepts
//! without effect (flag, value syntax, reason), each of which yields one
//! start-up warning when given a value that would matter upstream.

mod agent;
mod duration;
mod goflags;
mod identifiers;
mod leases;
mod proxy_strategies;
mod quic;
mod server;
mod settings;
mod token_auth;
mod transport;
pub mod upstream;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

pub use agent::{AgentConfig, AgentDefaults, RawAgentConfig};
pub use duration::{format_duration, parse_duration};
pub use goflags::{
    normalize_go_flags, parse_bind_address, parse_klog_level, parse_path, try_parse_go_style, try_parse_go_style_with,
};
pub use identifiers::AgentIdentifiers;
pub use leases::{LeaseControllerConfig, LeaseCountConfig, ServerCountSource};
pub use proxy_strategies::{ProxyStrategies, ProxyStrategy};
pub use quic::{CongestionControl, QuicConfig, QuicDefaults, RawQuicConfig};
pub use server::{FrontendMode, RawServerConfig, ServerConfig, ServerDefaults};
pub use settings::{check_help_defaults, help_line, DefaultValue, KeyDoc, Shown};
pub use token_auth::{ReviewRate, TokenAuthConfig, DEFAULT_REVIEW_BURST, DEFAULT_REVIEW_QPS};
pub use transport::{AgentTransport, AgentTransports};

/// One configuration problem: the TOML key path it concerns and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// TOML key path, e.g. `server-port` or `quic.idle-timeout`. Top-level keys
    /// are also the command-line flag names (without `--`).
    pub key: String,
    /// What is wrong, e.g. `must be greater than quic.keep-alive-interval`.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key or a value of the wrong type.
    /// `message` comes from the TOML parser and names the key and line.
    #[error("cannot parse config {origin}: {message}")]
    Parse { origin: String, message: String },
    /// The values are well-formed but invalid; every problem found is listed.
    #[error("invalid configuration: {}", DisplayProblems(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// The validation problems (empty for read and parse errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(problems) => problems,
            _ => &[],
        }
    }
}

struct DisplayProblems<'a>(&'a [Problem]);

impl fmt::Display for DisplayProblems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// Parses a TOML document into a raw config struct.
fn parse_toml<T: serde::de::DeserializeOwned>(s: &str, origin: &str) -> Result<T, ConfigError> {
    toml::from_str(s).map_err(|e| ConfigError::Parse { origin: origin.to_owned(), message: e.to_string() })
}

/// Reads and parses a TOML file into a raw config struct.
fn read_toml<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    parse_toml(&text, &path.display().to_string())
}

/// Collects problems during validation.
///
/// Helpers that must return a value even when the input is bad return a
/// placeholder; `finish` refuses to hand out the result if any problem was
/// recorded, so placeholders never escape.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    prefix: &'static str,
    list: Vec<Problem>,
}

impl Problems {
    fn with_prefix(prefix: &'static str) -> Self {
        Problems { prefix, list: Vec::new() }
    }

    pub(crate) fn push(&mut self, key: &str, message: impl Into<String>) {
        self.list.push(Problem { key: format!("{}{key}", self.prefix), message: message.into() });
    }

    fn extend(&mut self, other: Problems) {
        self.list.extend(other.list);
    }

    /// `value` if it is in `lo..=hi`, else a problem (and `value` as placeholder).
    pub(crate) fn in_range<T>(&mut self, key: &str, value: T, lo: T, hi: T) -> T
    where
        T: PartialOrd + fmt::Display + Copy,
    {
        if value < lo || value > hi {
            self.push(key, format!("must be between {lo} and {hi}, got {value}"));
        }
        value
    }

    /// `worker-threads`: 0 means one per CPU.
    pub(crate) fn worker_threads(&mut self, value: u16) -> u16 {
        self.in_range("worker-threads", value, 0, MAX_WORKER_THREADS)
    }

    /// A duration that must be greater than zero.
    pub(crate) fn positive(&mut self, key: &str, value: Duration) -> Duration {
        if value.is_zero() {
            self.push(key, "must be greater than 0");
        }
        value
    }

    /// A required path: missing or empty is a problem (placeholder: empty path).
    pub(crate) fn required_path(&mut self, key: &str, value: Option<PathBuf>) -> PathBuf {
        match non_empty_path(value) {
            Some(path) => path,
            None => {
                self.push(key, "required");
                PathBuf::new()
            }
        }
    }

    pub(crate) fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.list.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError::Invalid(self.list))
        }
    }
}

/// Go flags treat an empty string as "not set"; so do we (`--uds-name=""`).
pub(crate) fn non_empty_path(value: Option<PathBuf>) -> Option<PathBuf> {
    value.filter(|p| !p.as_os_str().is_empty())
}

/// See [`non_empty_path`].
pub(crate) fn non_empty_string(value: Option<String>) -> Option<String> {
    value.filter(|s| !s.is_empty())
}

/// A random 16-hex-character id, the default server and agent id.
pub fn random_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// Parses a boolean the way Go's `strconv.ParseBool` does (upstream's flags
/// and `default-route=` identifier): `1 t T TRUE true True 0 f F FALSE false False`.
pub fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("invalid boolean {s:?} (expected true or false)")),
    }
}

/// Certificate, key and optional CA bundle file paths (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA bundle used to verify peers; `None` where peers are not verified.
    pub ca: Option<PathBuf>,
}

/// Logging settings (upstream's klog `-v`, and `log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// klog-style verbosity, from `v` / `-v` (0 = info; higher is chattier).
    pub verbosity: u8,
    /// How each log line is written.
    pub format: LogFormat,
}

/// Log line formats (`log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("invalid log format {s:?} (expected text or json)")),
        }
    }
}

impl DefaultValue for LogFormat {
    fn shown(&self) -> Shown {
        Shown { text: self.name().to_owned(), quoted: true }
    }
}

/// Default of `worker-threads`, for server and agent: one runtime thread.
/// A konnq process's hot work is its QUIC connections, and each of those is
/// driven by one task, so a second worker adds cross-thread wake-ups more
/// often than parallel work; docs/benchmarks.md (finding 7) has the
/// measurements.
pub const DEFAULT_WORKER_THREADS: u16 = 1;
/// Most `worker-threads` a process may ask for.
pub const MAX_WORKER_THREADS: u16 = 1024;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Describes configuration problems for someone who used the command line:
/// flag keys as `--flag: ...` (`-v: ...` for verbosity), keys that exist only
/// in the file (nested ones) with the file they came from.
pub fn describe_for_cli(problems: &[Problem], config_file: Option<&std::path::Path>) -> Vec<String> {
    problems
        .iter()
        .map(|p| {
            let key = &p.key;
            match (key.contains('.'), config_file) {
                (true, Some(file)) => format!("{key} (in {}): {}", file.display(), p.message),
                (true, None) => format!("{key}: {}", p.message),
                (false, _) if key == "v" => format!("-v: {}", p.message),
                (false, _) => format!("--{key}: {}", p.message),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_by_name() {
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        let err = "JSON".parse::<LogFormat>().unwrap_err();
        assert!(err.contains("\"JSON\"") && err.contains("text or json"), "{err}");
        for format in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(format.name().parse::<LogFormat>(), Ok(format));
        }
    }

    #[test]
    fn go_bool() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_go_bool(t), Ok(true));
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_go_bool(f), Ok(false));
        }
        assert!(parse_go_bool("yes").is_err());
    }

    #[test]
    fn random_ids_are_16_hex_and_differ() {
        let (a, b) = (random_id(), random_id());
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
