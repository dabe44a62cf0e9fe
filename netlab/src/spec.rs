//! The compact spec's value parsers and the canonical spec printer (grammar in
//! [`crate::settings`]).

use std::fmt;
use std::time::Duration;

use crate::settings::{DirectionSettings, GilbertElliott, SettingsError, DEFAULT_LIMIT, MAX_DELAY, MAX_RATE_BPS};

/// Splits `k=v,k=v` into pairs, gluing `ge=`'s colon tokens back together.
pub(crate) fn split_items(body: &str) -> Result<Vec<(String, String)>, SettingsError> {
    let mut items: Vec<(String, String)> = Vec::new();
    for token in body.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        match token.split_once('=') {
            Some((k, v)) => items.push((k.trim().to_ascii_lowercase(), v.trim().to_string())),
            None => match items.last_mut() {
                Some((k, v)) if k == "ge" && token.contains(':') => {
                    v.push(',');
                    v.push_str(token);
                }
                _ => return Err(SettingsError::NotKeyValue { item: token.into() }),
            },
        }
    }
    Ok(items)
}

pub(crate) fn apply(dir: &mut DirectionSettings, key: &str, value: &str) -> Result<(), SettingsError> {
    match key {
        "delay" => dir.delay = parse_duration(key, value)?,
        "jitter" => dir.jitter = parse_duration(key, value)?,
        "reorder" => dir.reorder = parse_bool(key, value)?,
        "loss" => dir.loss = parse_probability(key, value)?,
        "ge" => dir.gilbert_elliott = parse_ge(value)?,
        "rate" => dir.rate_bps = Some(parse_rate(key, value)?),
        "queue" => dir.queue_bytes = Some(parse_bytes(key, value)?),
        "limit" => dir.limit = parse_u64(key, value)? as usize,
        _ => return Err(SettingsError::UnknownKey { key: key.into() }),
    }
    Ok(())
}

fn bad(key: &str, value: &str, reason: &'static str) -> SettingsError {
    SettingsError::BadValue { key: key.into(), value: value.into(), reason }
}

/// Splits `12.5ms` into (12.5, "ms").
fn number_and_unit<'a>(key: &str, value: &'a str) -> Result<(f64, &'a str), SettingsError> {
    let split = value.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(value.len());
    let (num, unit) = value.split_at(split);
    let num: f64 = num.parse().map_err(|_| bad(key, value, "expected a number"))?;
    if !num.is_finite() || num < 0.0 {
        return Err(bad(key, value, "expected a non-negative number"));
    }
    Ok((num, unit.trim()))
}

fn parse_duration(key: &str, value: &str) -> Result<Duration, SettingsError> {
    let (num, unit) = number_and_unit(key, value)?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "s" => 1e9,
        "ms" => 1e6,
        "us" | "µs" => 1e3,
        "ns" => 1.0,
        "" if num == 0.0 => 0.0,
        _ => return Err(bad(key, value, "expected a duration with unit s, ms, us or ns")),
    };
    let nanos = num * scale;
    if nanos > MAX_DELAY.as_nanos() as f64 * 10.0 {
        return Err(bad(key, value, "duration too large"));
    }
    Ok(Duration::from_nanos(nanos.round() as u64))
}

fn parse_probability(key: &str, value: &str) -> Result<f64, SettingsError> {
    let (num, unit) = number_and_unit(key, value)?;
    let p = match unit {
        "%" => num / 100.0,
        "" => num,
        _ => return Err(bad(key, value, "expected a fraction like 0.01 or a percentage like 1%")),
    };
    if p > 1.0 {
        return Err(bad(key, value, "a probability cannot exceed 1 (100%)"));
    }
    Ok(p)
}

fn parse_rate(key: &str, value: &str) -> Result<u64, SettingsError> {
    let (num, unit) = number_and_unit(key, value)?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        _ => return Err(bad(key, value, "expected a rate with unit bit, kbit, mbit or gbit")),
    };
    let bps = num * scale;
    if bps > MAX_RATE_BPS as f64 {
        return Err(bad(key, value, "rate above 100gbit"));
    }
    Ok(bps.round() as u64)
}

fn parse_bytes(key: &str, value: &str) -> Result<u64, SettingsError> {
    let (num, unit) = number_and_unit(key, value)?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "kib" => 1024.0,
        "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        _ => return Err(bad(key, value, "expected bytes, optionally with unit b, kb, kib, mb or mib")),
    };
    let bytes = num * scale;
    if bytes > 1e12 {
        return Err(bad(key, value, "byte count too large"));
    }
    Ok(bytes.round() as u64)
}

pub(crate) fn parse_u64(key: &str, value: &str) -> Result<u64, SettingsError> {
    value.parse().map_err(|_| bad(key, value, "expected a non-negative integer"))
}

fn parse_bool(key: &str, value: &str) -> Result<bool, SettingsError> {
    match value.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(bad(key, value, "expected on or off")),
    }
}

fn parse_ge(value: &str) -> Result<Option<GilbertElliott>, SettingsError> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let mut ge = GilbertElliott { p: f64::NAN, r: f64::NAN, loss_bad: 1.0, loss_good: 0.0 };
    for part in value.split(',') {
        let (k, v) = part.split_once(':').ok_or_else(|| bad("ge", value, "expected p:P,r:R[,h:H][,k:K]"))?;
        let key = format!("ge.{}", k.trim());
        let prob = parse_probability(&key, v.trim())?;
        match k.trim() {
            "p" => ge.p = prob,
            "r" => ge.r = prob,
            "h" => ge.loss_bad = prob,
            "k" => ge.loss_good = prob,
            _ => return Err(SettingsError::UnknownKey { key }),
        }
    }
    if ge.p.is_nan() || ge.r.is_nan() {
        return Err(bad("ge", value, "both p and r are required"));
    }
    Ok(Some(ge))
}

impl fmt::Display for DirectionSettings {
    /// The canonical spec of these settings; `parse` reads it back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dur = |d: Duration| {
            if d.subsec_nanos().is_multiple_of(1_000_000) {
                format!("{}ms", d.as_millis())
            } else {
                format!("{}ns", d.as_nanos())
            }
        };
        write!(f, "delay={}", dur(self.delay))?;
        if !self.jitter.is_zero() {
            write!(f, ",jitter={}", dur(self.jitter))?;
        }
        if self.reorder {
            write!(f, ",reorder=on")?;
        }
        if self.loss > 0.0 {
            write!(f, ",loss={}", self.loss)?;
        }
        if let Some(g) = &self.gilbert_elliott {
            write!(f, ",ge=p:{},r:{},h:{},k:{}", g.p, g.r, g.loss_bad, g.loss_good)?;
        }
        if let Some(r) = self.rate_bps {
            let (value, unit) = [(1_000_000_000, "gbit"), (1_000_000, "mbit"), (1_000, "kbit")]
                .into_iter()
                .find(|(scale, _)| r.is_multiple_of(*scale))
                .map_or((r, "bit"), |(scale, unit)| (r / scale, unit));
            write!(f, ",rate={value}{unit}")?;
        }
        if let Some(q) = self.queue_bytes {
            write!(f, ",queue={q}")?;
        }
        if self.limit != DEFAULT_LIMIT {
            write!(f, ",limit={}", self.limit)?;
        }
        Ok(())
    }
}
