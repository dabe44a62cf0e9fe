//! Log setup shared by the binaries: klog's `-v` levels mapped onto tracing
//! levels, plain text or JSON lines on stderr; `RUST_LOG`, when set, wins.
//!
//! klog prints a message logged at `V(n)` when `-v` is at least `n`.
//! konnq's messages have tracing levels instead, which take the place of
//! upstream's klog levels for the same kind of message:
//!
//! | `-v` | printed | upstream logs at that level |
//! |---|---|---|
//! | 0–1 | INFO, WARN, ERROR | start-up, agents connecting and leaving, refusals |
//! | 2–4 | + konnq's DEBUG | per dial and per control message (upstream: V(2)–V(4)) |
//! | 5–8 | + konnq's TRACE, the libraries' DEBUG | per packet (upstream: V(5) and up) |
//! | 9+ | everything at TRACE | |
//!
//! Strings a peer chose (dial addresses, agent IDs and identifiers, close
//! and refusal reasons, request lines) reach the log only through
//! [`untrusted`]: bounded in length and with control characters escaped, so
//! a peer can neither grow the log without bound nor forge log lines.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the process's log subscriber on stderr: `-v` (`log.verbosity`)
/// and `log-format` (text, or one JSON object per line). Text has colour
/// codes only when stderr is a terminal: a log file or a container
/// runtime's pipe gets plain text.
pub fn init(log: &LogConfig) {
    let ansi = std::io::stderr().is_terminal();
    let json = log.format == LogFormat::Json;
    tracing::subscriber::set_global_default(subscriber(log.verbosity, json, ansi, std::io::stderr))
        .expect("the log subscriber is installed once, first thing in main");
}

/// The subscriber [`init`] installs, writing to `writer`.
pub fn subscriber<W>(v: u8, json: bool, ansi: bool, writer: W) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter_for_verbosity(v)));
    build(filter, json, ansi, writer)
}

fn build<W>(filter: EnvFilter, json: bool, ansi: bool, writer: W) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    if json {
        // Message and fields at the top level, beside timestamp, level and
        // target: what log pipelines index without configuration.
        Box::new(builder.json().flatten_event(true).with_current_span(false).with_span_list(false).finish())
    } else {
        Box::new(builder.with_ansi(ansi).finish())
    }
}

/// Logs each start-up warning of the configuration (e.g. upstream flags that
/// have no effect) at WARN; call it after [`init`].
pub fn warn_each(warnings: &[String]) {
    for w in warnings {
        tracing::warn!(target: "konnq_shared::config", "{w}");
    }
}

/// The filter for a klog verbosity; see the table in the module docs.
pub fn filter_for_verbosity(v: u8) -> String {
    match v {
        0..=1 => "info".to_owned(),
        2..=4 => "info,konnq_server=debug,konnq_agent=debug,konnq_shared=debug,konnq_loadtest=debug".to_owned(),
        5..=8 => "debug,konnq_server=trace,konnq_agent=trace,konnq_shared=trace,konnq_loadtest=trace".to_owned(),
        _ => "trace".to_owned(),
    }
}

/// Bytes of an untrusted string a log line shows; the rest is counted.
pub const UNTRUSTED_MAX: usize = 256;

/// A peer-provided string as the log shows it: at most [`UNTRUSTED_MAX`]
/// bytes (cut at a character boundary, then `…(N bytes)` with the full
/// length), control and line- or direction-changing characters escaped
/// (`\n`, `\u{1b}`). Use it as a field (`address = %untrusted(&a)`) or
/// in a message (`"{}", untrusted(&a)`).
pub fn untrusted(s: &str) -> Untrusted<'_> {
    Untrusted(s)
}

/// See [`untrusted`].
#[derive(Clone, Copy)]
pub struct Untrusted<'a>(&'a str);

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let mut cut = s.len().min(UNTRUSTED_MAX);
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        for c in s[..cut].chars() {
            if needs_escape(c) {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        if cut < s.len() {
            write!(f, "…({} bytes)", s.len())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Control characters, line and paragraph separators, and bidirectional
/// overrides and isolates (which reorder what a terminal shows).
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Buffer {
            self.clone()
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()).expect("UTF-8 log")
        }
    }

    /// What the binaries log at `v` (without `RUST_LOG`).
    fn logged(v: u8, json: bool) -> String {
        let out = Buffer::default();
        let sub = build(EnvFilter::new(filter_for_verbosity(v)), json, false, out.clone());
        tracing::subscriber::with_default(sub, || {
            tracing::info!(target: "konnq_server::backend", agent_id = "node-1", "agent connected");
            tracing::debug!(target: "konnq_server::backend", "per dial");
            tracing::trace!(target: "konnq_agent::dial", "per packet");
            tracing::debug!(target: "quinn::connection", "library detail");
            tracing::trace!(target: "quinn::connection", "library packet");
        });
        out.text()
    }

    #[test]
    fn verbosity_follows_klog_levels() {
        let cases: [(u8, &[&str]); 5] = [
            (0, &["agent connected"]),
            (1, &["agent connected"]),
            (4, &["agent connected", "per dial"]),
            (5, &["agent connected", "per dial", "per packet", "library detail"]),
            (9, &["agent connected", "per dial", "per packet", "library detail", "library packet"]),
        ];
        let all = ["agent connected", "per dial", "per packet", "library detail", "library packet"];
        for (v, shown) in cases {
            let text = logged(v, false);
            for m in all {
                assert_eq!(text.contains(m), shown.contains(&m), "-v={v}: {m:?} in\n{text}");
            }
        }
    }

    #[test]
    fn json_lines_carry_level_target_message_and_fields() {
        let text = logged(0, true);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let line: serde_json::Value = serde_json::from_str(lines[0]).expect("one JSON object per line");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["target"], "konnq_server::backend");
        assert_eq!(line["message"], "agent connected");
        assert_eq!(line["agent_id"], "node-1");
        assert!(line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{line}");
    }

    #[test]
    fn untrusted_strings_are_bounded_and_escaped() {
        assert_eq!(untrusted("10.0.0.1:443").to_string(), "10.0.0.1:443");
        assert_eq!(untrusted("a\nb\r\u{1b}[31m\u{202e}c").to_string(), "a\\nb\\r\\u{1b}[31m\\u{202e}c");
        assert_eq!(format!("{:?}", untrusted("x\ty")), "\"x\\ty\"");
        let long = "a".repeat(1 << 20);
        assert_eq!(untrusted(&long).to_string(), format!("{}…(1048576 bytes)", "a".repeat(UNTRUSTED_MAX)));
        let exact = "b".repeat(UNTRUSTED_MAX);
        assert_eq!(untrusted(&exact).to_string(), exact, "nothing cut at the limit");
    }

    #[test]
    fn untrusted_strings_are_cut_at_a_character_boundary() {
        // 'é' is two bytes: the limit falls inside the last one shown.
        let s = format!("{}{}", "x", "é".repeat(UNTRUSTED_MAX));
        let shown = untrusted(&s).to_string();
        let (head, tail) = shown.split_once('…').expect("cut");
        assert_eq!(head, format!("x{}", "é".repeat((UNTRUSTED_MAX - 1) / 2)));
        assert_eq!(tail, format!("({} bytes)", s.len()));
    }

    #[test]
    fn a_huge_untrusted_field_gives_a_bounded_log_line() {
        let out = Buffer::default();
        let sub = build(EnvFilter::new("info"), false, false, out.clone());
        let address = format!("{}\nFAKE LINE", "h".repeat(1 << 20));
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(target: "konnq_server", address = %untrusted(&address), "rejected dial: {}", untrusted(&address));
        });
        let text = out.text();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.len() < 1024, "a {}-byte log line", text.len());
        assert!(text.contains(&format!("…({} bytes)", address.len())), "{text}");
    }

    #[test]
    fn text_has_no_colour_codes_off_a_terminal() {
        let out = Buffer::default();
        let sub = build(EnvFilter::new("info"), false, false, out.clone());
        tracing::subscriber::with_default(sub, || tracing::warn!(target: "konnq_agent", "plain"));
        let text = out.text();
        assert!(text.contains("plain") && !text.contains('\u{1b}'), "{text:?}");
    }
}
