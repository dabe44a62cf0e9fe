//! Configuration of `konnq-server` and `konnq-agent`.
//!
//! Two layers, the same for both binaries:
//!
//! 1. **Raw** structs ([`RawServerConfig`], [`RawAgentConfig`], [`RawQuicConfig`]):
//!    what a TOML file and the command line both produce. Every field is an
//!    `Option`; `None` means "not given here". Unknown TOML keys are rejected
//!    (`deny_unknown_fields`), and TOML keys use the same words as the flags
//!    (`uds-name` ↔ `--uds-name`). `raw.overlay(other)` merges two layers field
//!    by field, `other` winning, so `file.overlay(flags)` gives flags precedence.
//! 2. **Validated** structs ([`ServerConfig`], [`AgentConfig`], [`QuicConfig`]):
//!    defaults filled in, ranges and relations checked, no "always `Some`"
//!    options. `validate` collects *every* problem, each naming its TOML key
//!    path (e.g. `quic.idle-timeout`), into one [`ConfigError`].
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
mod server;
mod token_auth;
pub mod upstream;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use agent::{AgentConfig, RawAgentConfig};
pub use duration::{format_duration, parse_duration};
pub use goflags::{
    normalize_go_flags, parse_bind_address, parse_klog_level, parse_path, try_parse_go_style, try_parse_go_style_with,
};
pub use identifiers::AgentIdentifiers;
pub use server::{FrontendMode, RawServerConfig, ServerConfig};
pub use token_auth::{ReviewRate, TokenAuthConfig, DEFAULT_REVIEW_BURST, DEFAULT_REVIEW_CACHE_TTL, DEFAULT_REVIEW_QPS};

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

    /// `worker-threads`: [`DEFAULT_WORKER_THREADS`] when not given; 0 means
    /// one per CPU.
    pub(crate) fn worker_threads(&mut self, value: Option<u16>) -> u16 {
        self.in_range("worker-threads", value.unwrap_or(DEFAULT_WORKER_THREADS), 0, MAX_WORKER_THREADS)
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

/// Logging settings (upstream's klog flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogConfig {
    /// klog-style verbosity, from `v` / `-v` (0 = info; higher is chattier).
    pub verbosity: u8,
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

/// QUIC transport settings, table `[quic]`, shared by server and agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicConfig {
    /// How often a PING is sent on an idle connection.
    pub keep_alive_interval: Duration,
    /// A connection with no traffic for this long is dead (dead-agent
    /// detection). Default: 5 s, or 3 × `keep_alive_interval` when longer.
    pub idle_timeout: Duration,
    /// Per-stream receive window in bytes (bounds one connection's throughput
    /// to window / RTT; after a loss the receiver holds up to about two
    /// round trips of data until the retransmission fills the gap).
    pub stream_receive_window: u64,
    /// Streams (proxied connections) one agent connection may have open at once.
    pub max_concurrent_streams: u64,
    /// Requested SO_RCVBUF / SO_SNDBUF of the UDP socket, in bytes.
    pub udp_buffer_bytes: usize,
    /// Congestion controller of what this end sends.
    pub congestion_control: CongestionControl,
}

/// QUIC congestion controllers (`quic.congestion-control`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CongestionControl {
    /// Loss-based (RFC 9438); backs off on every loss.
    Cubic,
    /// Model-based (konnq's BBR-style controller, [`crate::cc`]): keeps the
    /// data in flight at the measured bandwidth-delay product, so the
    /// bottleneck queue stays short; random loss does not make it back off.
    Bbr,
    /// Loss-based (RFC 9002's NewReno).
    NewReno,
    /// quinn's experimental BBR (window 2–3 × its BDP estimate), for
    /// comparison.
    QuinnBbr,
}

impl CongestionControl {
    pub fn name(self) -> &'static str {
        match self {
            CongestionControl::Cubic => "cubic",
            CongestionControl::Bbr => "bbr",
            CongestionControl::NewReno => "new-reno",
            CongestionControl::QuinnBbr => "quinn-bbr",
        }
    }

    fn parse(s: &str) -> Option<CongestionControl> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }

    const ALL: [CongestionControl; 4] =
        [CongestionControl::Bbr, CongestionControl::Cubic, CongestionControl::NewReno, CongestionControl::QuinnBbr];
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            keep_alive_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            stream_receive_window: 4 * MIB,
            max_concurrent_streams: 10_000,
            udp_buffer_bytes: 4 * MIB as usize,
            congestion_control: CongestionControl::Bbr,
        }
    }
}

/// `[quic]` as written in TOML; see [`QuicConfig`] for meanings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawQuicConfig {
    #[serde(default, with = "humantime_serde")]
    pub keep_alive_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    pub stream_receive_window: Option<u64>,
    pub max_concurrent_streams: Option<u64>,
    pub udp_buffer_bytes: Option<usize>,
    pub congestion_control: Option<String>,
}

impl RawQuicConfig {
    /// Upstream's `--keepalive-time` (the server↔agent connection's
    /// keep-alive) as a layer setting `keep-alive-interval`; 0 or absent
    /// leaves it to lower layers and the default.
    pub fn from_keepalive_time(keepalive_time: Option<Duration>) -> Option<RawQuicConfig> {
        keepalive_time
            .filter(|t| !t.is_zero())
            .map(|t| RawQuicConfig { keep_alive_interval: Some(t), ..Default::default() })
    }

    /// Field by field, values set in `other` win.
    pub fn overlay(self, other: RawQuicConfig) -> RawQuicConfig {
        RawQuicConfig {
            keep_alive_interval: other.keep_alive_interval.or(self.keep_alive_interval),
            idle_timeout: other.idle_timeout.or(self.idle_timeout),
            stream_receive_window: other.stream_receive_window.or(self.stream_receive_window),
            max_concurrent_streams: other.max_concurrent_streams.or(self.max_concurrent_streams),
            udp_buffer_bytes: other.udp_buffer_bytes.or(self.udp_buffer_bytes),
            congestion_control: other.congestion_control.or(self.congestion_control),
        }
    }

    /// Fills defaults and checks ranges; keys are reported as `quic.<key>`.
    pub fn validate(self) -> Result<QuicConfig, ConfigError> {
        let mut problems = Problems::default();
        let quic = self.check(&mut problems);
        problems.finish(quic)
    }

    pub(crate) fn check(self, outer: &mut Problems) -> QuicConfig {
        let d = QuicConfig::default();
        let mut p = Problems::with_prefix("quic.");
        let keep_alive_interval =
            p.positive("keep-alive-interval", self.keep_alive_interval.unwrap_or(d.keep_alive_interval));
        // Not given: three keep-alive intervals when that is longer than the
        // default, so that a longer keep-alive (upstream's --keepalive-time)
        // never makes the connection time out between two PINGs.
        let idle_timeout =
            self.idle_timeout.unwrap_or_else(|| d.idle_timeout.max(keep_alive_interval.saturating_mul(3)));
        if idle_timeout <= keep_alive_interval {
            p.push(
                "idle-timeout",
                format!(
                    "must be greater than quic.keep-alive-interval ({} <= {})",
                    format_duration(idle_timeout),
                    format_duration(keep_alive_interval)
                ),
            );
        }
        let stream_receive_window = p.in_range(
            "stream-receive-window",
            self.stream_receive_window.unwrap_or(d.stream_receive_window),
            64 * KIB,
            256 * MIB,
        );
        let max_concurrent_streams = p.in_range(
            "max-concurrent-streams",
            self.max_concurrent_streams.unwrap_or(d.max_concurrent_streams),
            1,
            1_000_000,
        );
        let udp_buffer_bytes = p.in_range(
            "udp-buffer-bytes",
            self.udp_buffer_bytes.unwrap_or(d.udp_buffer_bytes),
            64 * KIB as usize,
            256 * MIB as usize,
        );
        let congestion_control = match self.congestion_control.as_deref() {
            None => d.congestion_control,
            Some(name) => CongestionControl::parse(name).unwrap_or_else(|| {
                let names: Vec<String> = CongestionControl::ALL.iter().map(|c| format!("{:?}", c.name())).collect();
                p.push("congestion-control", format!("{name:?} is not one of {}", names.join(", ")));
                d.congestion_control
            }),
        };
        outer.extend(p);
        QuicConfig {
            keep_alive_interval,
            idle_timeout,
            stream_receive_window,
            max_concurrent_streams,
            udp_buffer_bytes,
            congestion_control,
        }
    }
}

/// `Option` overlay for nested raw tables: merge when both are set.
fn overlay_quic(base: Option<RawQuicConfig>, top: Option<RawQuicConfig>) -> Option<RawQuicConfig> {
    match (base, top) {
        (Some(base), Some(top)) => Some(base.overlay(top)),
        (base, top) => top.or(base),
    }
}

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

    fn quic(toml_text: &str) -> Result<QuicConfig, ConfigError> {
        let raw: RawQuicConfig = parse_toml(toml_text, "test").expect("parses");
        raw.validate()
    }

    #[test]
    fn congestion_control_by_name() {
        for c in CongestionControl::ALL {
            let q = quic(&format!("congestion-control = \"{}\"", c.name())).expect("valid");
            assert_eq!(q.congestion_control, c);
            crate::quic::transport_config(&q, true).expect("quinn takes it");
        }
        let err = quic("congestion-control = \"vegas\"").unwrap_err().to_string();
        assert!(err.contains("quic.congestion-control") && err.contains("vegas"), "{err}");
    }

    #[test]
    fn quic_defaults() {
        let q = RawQuicConfig::default().validate().expect("defaults are valid");
        assert_eq!(q, QuicConfig::default());
        assert_eq!(q.keep_alive_interval, Duration::from_secs(1));
        assert_eq!(q.idle_timeout, Duration::from_secs(5));
        assert_eq!(q.stream_receive_window, 4 * 1024 * 1024);
        assert_eq!(q.max_concurrent_streams, 10_000);
        assert_eq!(q.udp_buffer_bytes, 4 * 1024 * 1024);
    }

    #[test]
    fn quic_idle_timeout_must_exceed_keep_alive() {
        let err = quic("keep-alive-interval = \"10s\"\nidle-timeout = \"10s\"").unwrap_err();
        assert_eq!(err.problems().len(), 1);
        assert_eq!(err.problems()[0].key, "quic.idle-timeout");
        assert!(err.to_string().contains("quic.idle-timeout: must be greater than quic.keep-alive-interval"));
    }

    #[test]
    fn idle_timeout_follows_a_long_keep_alive_unless_given() {
        assert_eq!(quic("keep-alive-interval = \"1s\"").unwrap().idle_timeout, Duration::from_secs(5));
        assert_eq!(quic("keep-alive-interval = \"30s\"").unwrap().idle_timeout, Duration::from_secs(90));
        let q = quic("keep-alive-interval = \"30s\"\nidle-timeout = \"40s\"").unwrap();
        assert_eq!(q.idle_timeout, Duration::from_secs(40), "an explicit idle-timeout is kept");
    }

    #[test]
    fn quic_collects_every_problem() {
        let err = quic(
            "keep-alive-interval = \"0s\"\nstream-receive-window = 1\n\
             max-concurrent-streams = 0\nudp-buffer-bytes = 1",
        )
        .unwrap_err();
        let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "quic.keep-alive-interval",
                "quic.stream-receive-window",
                "quic.max-concurrent-streams",
                "quic.udp-buffer-bytes"
            ]
        );
    }

    #[test]
    fn quic_durations_and_overlay() {
        let base: RawQuicConfig = parse_toml("keep-alive-interval = \"500ms\"\nidle-timeout = \"1m30s\"", "t").unwrap();
        let top = RawQuicConfig { idle_timeout: Some(Duration::from_secs(3)), ..Default::default() };
        let q = base.overlay(top).validate().unwrap();
        assert_eq!(q.keep_alive_interval, Duration::from_millis(500));
        assert_eq!(q.idle_timeout, Duration::from_secs(3));
    }

    #[test]
    fn quic_unknown_key_is_named() {
        let err = parse_toml::<RawQuicConfig>("idle-timeot = \"1s\"", "t").unwrap_err();
        assert!(err.to_string().contains("idle-timeot"), "{err}");
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
