//! The `[quic]` table, the same for server and agent: [`RawQuicConfig`] and
//! the validated [`QuicConfig`].

use std::time::Duration;

use super::settings::settings;
use super::{format_duration, ConfigError, Problems, KIB, MIB};

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

    pub(crate) const ALL: [CongestionControl; 4] =
        [CongestionControl::Bbr, CongestionControl::Cubic, CongestionControl::NewReno, CongestionControl::QuinnBbr];
}

impl Default for QuicConfig {
    /// The declared defaults: a `[quic]` table with no keys.
    fn default() -> Self {
        RawQuicConfig::default().check(&mut Problems::default())
    }
}

settings! {
    /// `[quic]` as written in TOML; see [`QuicConfig`] for meanings. TOML
    /// only: no key is a flag (upstream's `--keepalive-time` sets
    /// `keep-alive-interval`, see [`RawQuicConfig::from_keepalive_time`]).
    #[derive(Eq)]
    RawQuicConfig, defaults QuicDefaults {
        /// Interval of keep-alive PINGs on an idle connection.
        #[arg(skip)]
        #[serde(default, with = "humantime_serde")]
        keep_alive_interval: Duration = Duration::from_secs(1),
        /// A connection silent this long is dead; 3 x keep-alive-interval when that is longer and this is not set.
        #[arg(skip)]
        #[serde(default, with = "humantime_serde")]
        idle_timeout: Duration = Duration::from_secs(5),
        /// Receive window of each stream, in bytes.
        #[arg(skip)]
        stream_receive_window: u64 = 4 * MIB,
        /// Streams (proxied connections) one agent connection may have open at once.
        #[arg(skip)]
        max_concurrent_streams: u64 = 10_000,
        /// Requested SO_RCVBUF / SO_SNDBUF of the UDP socket, in bytes.
        #[arg(skip)]
        udp_buffer_bytes: usize = 4 * MIB as usize,
        /// Congestion controller of what this end sends: bbr, cubic, new-reno or quinn-bbr.
        #[arg(skip)]
        congestion_control: String = CongestionControl::Bbr.name().into(),
    }
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

    /// Fills defaults and checks ranges; keys are reported as `quic.<key>`.
    pub fn validate(self) -> Result<QuicConfig, ConfigError> {
        let mut problems = Problems::default();
        let quic = self.check(&mut problems);
        problems.finish(quic)
    }

    pub(crate) fn check(self, outer: &mut Problems) -> QuicConfig {
        let d = RawQuicConfig::defaults();
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
        let window = self.stream_receive_window.unwrap_or(d.stream_receive_window);
        let streams = self.max_concurrent_streams.unwrap_or(d.max_concurrent_streams);
        let udp_buffer = self.udp_buffer_bytes.unwrap_or(d.udp_buffer_bytes);
        let congestion_control = self.congestion_control.unwrap_or(d.congestion_control);
        let quic = QuicConfig {
            keep_alive_interval,
            idle_timeout,
            stream_receive_window: p.in_range("stream-receive-window", window, 64 * KIB, 256 * MIB),
            max_concurrent_streams: p.in_range("max-concurrent-streams", streams, 1, 1_000_000),
            udp_buffer_bytes: p.in_range("udp-buffer-bytes", udp_buffer, 64 * KIB as usize, 256 * MIB as usize),
            congestion_control: congestion_control_by_name(&mut p, &congestion_control),
        };
        outer.extend(p);
        quic
    }
}

/// The controller called `name`, or a problem listing the names (and a
/// placeholder, which [`Problems::finish`] never hands out).
fn congestion_control_by_name(p: &mut Problems, name: &str) -> CongestionControl {
    CongestionControl::parse(name).unwrap_or_else(|| {
        let names: Vec<String> = CongestionControl::ALL.iter().map(|c| format!("{:?}", c.name())).collect();
        p.push("congestion-control", format!("{name:?} is not one of {}", names.join(", ")));
        CongestionControl::ALL[0]
    })
}

#[cfg(test)]
mod tests {
    use super::super::parse_toml;
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
        assert_eq!(q.congestion_control, CongestionControl::Bbr);
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
    fn keys_are_declared_with_defaults() {
        let keys = RawQuicConfig::keys();
        let names: Vec<&str> = keys.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(
            names,
            [
                "keep-alive-interval",
                "idle-timeout",
                "stream-receive-window",
                "max-concurrent-streams",
                "udp-buffer-bytes",
                "congestion-control"
            ]
        );
        let shown: Vec<String> = keys.iter().map(|k| k.default.as_ref().expect("has a default").toml()).collect();
        assert_eq!(shown, ["\"1s\"", "\"5s\"", "4194304", "10000", "4194304", "\"bbr\""]);
    }
}
