//! Link settings: what one direction of the impaired link does, validation with
//! errors that name the offending field, and a parser for a compact spec string.
//!
//! Spec grammar (whitespace around items is ignored):
//!
//! ```text
//! spec    := segment (';' segment)*
//! segment := [("ab" | "ba") ':'] item (',' item)*
//! item    := key '=' value
//! ```
//!
//! An unprefixed segment sets both directions; `ab:` sets only A→B, `ba:` only
//! B→A; segments apply in order, so `delay=25ms;ba:delay=5ms` is 25 ms one way
//! and 5 ms the other. Keys:
//!
//! | key | value | meaning |
//! |---|---|---|
//! | `delay` | `25ms`, `500us`, `0.2s` | one-way delay added after serialization |
//! | `jitter` | duration, at most `delay` | each packet's delay is `delay ± jitter`, uniform |
//! | `reorder` | `on`/`off` | let jitter reorder packets (default off: release times are monotonic) |
//! | `loss` | `1%` or `0.01` | independent random loss |
//! | `ge` | `p:0.01,r:0.3,h:1,k:0` | Gilbert–Elliott loss, see [`GilbertElliott`] |
//! | `rate` | `100mbit`, `512kbit`, `1gbit`, `9600bit` | serialization rate (IP bytes) |
//! | `queue` | bytes: `625000`, `64kib`, `1mb` | drop-tail bound on bytes waiting for the serializer |
//! | `limit` | packets | bound on packets held by the link at once (default 10000) |
//! | `seed` | integer | RNG seed of the whole link (each direction derives its own) |
//!
//! The `ge` value contains commas; the tokens after `ge=` that have no `=` belong to it.

use std::time::Duration;

use thiserror::Error;

use crate::spec::{apply, parse_u64, split_items};

/// Packets held at once by one direction when the spec does not say (`limit`).
pub const DEFAULT_LIMIT: usize = 10_000;
/// Seed of a link when the spec does not say (`seed`).
pub const DEFAULT_SEED: u64 = 0x6b6f_6e6e_715f_6c61;
/// With a rate and no `queue`, the queue holds this much time's worth of bytes.
pub const DEFAULT_QUEUE_TIME: Duration = Duration::from_millis(100);
/// The smallest accepted queue: one full 1500-byte packet plus headroom.
pub const MIN_QUEUE_BYTES: u64 = 1600;
pub(crate) const MAX_RATE_BPS: u64 = 100_000_000_000;
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(10);

/// A settings problem; every variant names the key or field at fault.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SettingsError {
    /// The spec used a key this parser does not know.
    #[error("unknown setting `{key}` (known: delay, jitter, reorder, loss, ge, rate, queue, limit, seed)")]
    UnknownKey { key: String },
    /// A spec item had no `=`.
    #[error("`{item}` is not `key=value`")]
    NotKeyValue { item: String },
    /// The same key appeared twice in one segment.
    #[error("`{key}` is given twice in one segment")]
    Duplicate { key: String },
    /// A value could not be parsed.
    #[error("`{key}`: cannot parse `{value}`: {reason}")]
    BadValue { key: String, value: String, reason: &'static str },
    /// A parsed value is out of range or inconsistent with another field.
    #[error("`{field}`: {reason}")]
    Invalid { field: String, reason: String },
}

/// Gilbert–Elliott two-state loss: a Markov chain moved once per packet, then the
/// packet is lost with the probability of the state it is in. With `loss_bad` 1 and
/// `loss_good` 0 the mean loss is `p / (p + r)` and a burst lasts `1 / r` packets on
/// average. Spec: `ge=p:P,r:R[,h:LOSS_BAD][,k:LOSS_GOOD]` (defaults h 1, k 0).
/// Careful: `h` and `k` here are *loss* probabilities (netem's `1-h` and `1-k`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GilbertElliott {
    /// P(good → bad) per packet.
    pub p: f64,
    /// P(bad → good) per packet.
    pub r: f64,
    /// Loss probability in the bad state (`h`).
    pub loss_bad: f64,
    /// Loss probability in the good state (`k`).
    pub loss_good: f64,
}

impl GilbertElliott {
    /// Long-run fraction of packets this model drops.
    pub fn mean_loss(&self) -> f64 {
        if self.p + self.r == 0.0 {
            return self.loss_good;
        }
        let bad = self.p / (self.p + self.r);
        bad * self.loss_bad + (1.0 - bad) * self.loss_good
    }
}

/// What one direction of the link does to the packets crossing it.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectionSettings {
    /// Fixed one-way delay, added after serialization.
    pub delay: Duration,
    /// Uniform jitter: each packet gets `delay ± jitter` (at most `delay`).
    pub jitter: Duration,
    /// Let jitter reorder packets; when false release times never go backwards.
    pub reorder: bool,
    /// Independent random loss probability in `[0, 1]`.
    pub loss: f64,
    /// Bursty loss, applied on top of `loss`.
    pub gilbert_elliott: Option<GilbertElliott>,
    /// Serialization rate in bits per second (IP packet bytes); `None` is unlimited.
    pub rate_bps: Option<u64>,
    /// Drop-tail bound in bytes on the serializer backlog; `None` with a rate means
    /// [`DEFAULT_QUEUE_TIME`] worth of bytes. Needs a rate.
    pub queue_bytes: Option<u64>,
    /// Bound on the packets held by this direction at once (delay line included).
    pub limit: usize,
}

impl Default for DirectionSettings {
    fn default() -> Self {
        DirectionSettings {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            reorder: false,
            loss: 0.0,
            gilbert_elliott: None,
            rate_bps: None,
            queue_bytes: None,
            limit: DEFAULT_LIMIT,
        }
    }
}

impl DirectionSettings {
    /// Parses a spec without direction prefixes (`delay=25ms,loss=1%`).
    pub fn parse(spec: &str) -> Result<Self, SettingsError> {
        if spec.split(';').any(|segment| targets(segment).0 != (true, true)) {
            let reason = "direction prefixes (ab:, ba:) are not allowed here".into();
            return Err(SettingsError::Invalid { field: "spec".into(), reason });
        }
        Ok(LinkSettings::parse(spec)?.a_to_b)
    }

    /// Checks every field; `Err` names the first field at fault.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |field: &str, reason: String| Err(SettingsError::Invalid { field: field.into(), reason });
        if self.delay > MAX_DELAY {
            return invalid("delay", format!("{:?} is above the maximum {MAX_DELAY:?}", self.delay));
        }
        if self.jitter > self.delay {
            return invalid("jitter", format!("{:?} is larger than delay {:?}", self.jitter, self.delay));
        }
        check_probability("loss", self.loss)?;
        if let Some(ge) = &self.gilbert_elliott {
            check_probability("ge.p", ge.p)?;
            check_probability("ge.r", ge.r)?;
            check_probability("ge.h", ge.loss_bad)?;
            check_probability("ge.k", ge.loss_good)?;
            if ge.p > 0.0 && ge.r == 0.0 {
                return invalid("ge.r", "must be above 0 when p is (the bad state would never end)".into());
            }
        }
        match self.rate_bps {
            Some(0) => return invalid("rate", "must be above 0".into()),
            Some(r) if r > MAX_RATE_BPS => return invalid("rate", format!("{r} bit/s is above 100 Gbit/s")),
            _ => {}
        }
        match (self.queue_bytes, self.rate_bps) {
            (Some(_), None) => return invalid("queue", "a queue needs a rate".into()),
            (Some(q), Some(_)) if q < MIN_QUEUE_BYTES => {
                return invalid("queue", format!("{q} bytes is below the minimum {MIN_QUEUE_BYTES}"));
            }
            _ => {}
        }
        if self.limit == 0 {
            return invalid("limit", "must be at least 1 packet".into());
        }
        Ok(())
    }

    /// The drop-tail bound in bytes in force, `None` without a rate.
    pub fn effective_queue_bytes(&self) -> Option<u64> {
        let rate = self.rate_bps?;
        Some(self.queue_bytes.unwrap_or_else(|| {
            let bytes = rate as u128 * DEFAULT_QUEUE_TIME.as_nanos() / 8 / 1_000_000_000;
            (bytes as u64).max(16 * 1024)
        }))
    }

    /// Long-run fraction of packets dropped by random and Gilbert–Elliott loss
    /// (queue drops excluded: they depend on the traffic).
    pub fn mean_loss(&self) -> f64 {
        let ge = self.gilbert_elliott.map_or(0.0, |g| g.mean_loss());
        1.0 - (1.0 - self.loss) * (1.0 - ge)
    }
}

fn check_probability(field: &str, value: f64) -> Result<(), SettingsError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(SettingsError::Invalid { field: field.into(), reason: format!("{value} is not within [0, 1]") })
    }
}

/// Both directions of the link and the seed of its random numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkSettings {
    /// Packets from side A to side B.
    pub a_to_b: DirectionSettings,
    /// Packets from side B to side A.
    pub b_to_a: DirectionSettings,
    /// Seed for the loss and jitter RNGs (B→A uses a value derived from it).
    pub seed: u64,
}

impl Default for LinkSettings {
    fn default() -> Self {
        LinkSettings::symmetric(DirectionSettings::default())
    }
}

impl LinkSettings {
    /// The same settings both ways.
    pub fn symmetric(direction: DirectionSettings) -> Self {
        LinkSettings { a_to_b: direction.clone(), b_to_a: direction, seed: DEFAULT_SEED }
    }

    /// Parses a spec (see the module docs), then validates it.
    pub fn parse(spec: &str) -> Result<Self, SettingsError> {
        let mut link = LinkSettings::default();
        for segment in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (dirs, body) = targets(segment);
            let mut seen: Vec<String> = Vec::new();
            for (key, value) in split_items(body)? {
                if seen.contains(&key) {
                    return Err(SettingsError::Duplicate { key });
                }
                if key == "seed" {
                    link.seed = parse_u64(&key, &value)?;
                } else {
                    if dirs.0 {
                        apply(&mut link.a_to_b, &key, &value)?;
                    }
                    if dirs.1 {
                        apply(&mut link.b_to_a, &key, &value)?;
                    }
                }
                seen.push(key);
            }
        }
        link.validate()?;
        Ok(link)
    }

    /// Validates both directions; a field name is prefixed `a_to_b.` or `b_to_a.`.
    pub fn validate(&self) -> Result<(), SettingsError> {
        for (name, dir) in [("a_to_b", &self.a_to_b), ("b_to_a", &self.b_to_a)] {
            dir.validate().map_err(|e| match e {
                SettingsError::Invalid { field, reason } => {
                    SettingsError::Invalid { field: format!("{name}.{field}"), reason }
                }
                other => other,
            })?;
        }
        Ok(())
    }

    /// The seed used by the B→A direction.
    pub fn seed_b_to_a(&self) -> u64 {
        self.seed ^ 0x9e37_79b9_7f4a_7c15
    }
}

/// Which directions a segment sets (A→B, B→A), and the segment without its prefix.
fn targets(segment: &str) -> ((bool, bool), &str) {
    match segment.split_once(':') {
        Some((dir, body)) if dir.trim() == "ab" => ((true, false), body),
        Some((dir, body)) if dir.trim() == "ba" => ((false, true), body),
        _ => ((true, true), segment),
    }
}

impl std::str::FromStr for LinkSettings {
    type Err = SettingsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LinkSettings::parse(s)
    }
}

#[cfg(test)]
#[path = "settings_tests.rs"]
mod tests;
