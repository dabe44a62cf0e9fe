//! Duration strings, shared by TOML (via `humantime-serde`) and the flags.
//!
//! Accepted: `"10s"`, `"500ms"`, `"1m30s"`, `"1h 2m"`, `"1.5s"`, `"0"`; the same
//! units as Go's `time.ParseDuration` (`ns us µs ms s m h`) plus longer words.

use std::time::Duration;

/// Parses a duration such as `10s`, `500ms` or `1m30s`; the error text is
/// meant for a flag parser (clap prefixes it with the flag name).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?}: {e} (examples: 10s, 500ms, 1m30s)"))
}

/// Formats a duration for messages, e.g. `1m 30s`, `500ms`.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style_durations() {
        let cases = [
            ("10s", Duration::from_secs(10)),
            ("500ms", Duration::from_millis(500)),
            ("1m30s", Duration::from_secs(90)),
            ("1h0m0s", Duration::from_secs(3600)),
            ("1.5s", Duration::from_millis(1500)),
            ("250us", Duration::from_micros(250)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_bad_durations() {
        for bad in ["", "10", "ten seconds", "-1s", "5 parsecs"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("invalid duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn formats_for_messages() {
        assert_eq!(format_duration(Duration::from_secs(90)), "1m 30s");
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
    }
}
