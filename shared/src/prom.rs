//! Prometheus pieces both binaries use so that `/metrics` reads exactly as
//! upstream's Go client writes it (text format 0.0.4):
//!
//! - [`PlainCounter`]: a counter whose samples carry exactly the registered
//!   name. prometheus-client writes counters the OpenMetrics way, adding
//!   `_total` to every sample; upstream's `dial_failure_count` has no such
//!   suffix, and its `stream_packets_total` has it in the name (the `# TYPE`
//!   line included).
//! - [`Histogram`]: fixed buckets on atomics, cheap enough to observe once per
//!   packet (prometheus-client's takes a mutex on every observation).
//! - [`CounterSet`]: a counter family over label sets known up front; a child
//!   appears on first use, as with Go's `CounterVec`, then costs one atomic
//!   add and no lock.
//! - [`render`]: the exposition; [`parse`]: its families, and [`compare`]:
//!   them against a list of expected families (tests of both binaries).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The registry in Prometheus text format 0.0.4 (no OpenMetrics `# EOF`),
/// with histogram bounds written as Go writes them (see [`go_float`]).
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode_registry(&mut text, registry);
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        out.push_str(&go_le(line));
        out.push('\n');
    }
    out
}

/// A bucket line with its `le` value rewritten in Go's formatting: Prometheus
/// 2 stores the label value as written, so a selector like `le="10"` from an
/// upstream dashboard must find `10`, not prometheus-client's `10.0`.
fn go_le(line: &str) -> std::borrow::Cow<'_, str> {
    let Some(start) = line.find("_bucket{").and_then(|i| line[i..].find("le=\"").map(|j| i + j + 4)) else {
        return line.into();
    };
    let Some(len) = line[start..].find('"') else {
        return line.into();
    };
    match line[start..start + len].parse::<f64>() {
        Ok(v) => format!("{}{}{}", &line[..start], go_float(v), &line[start + len..]).into(),
        Err(_) => line.into(),
    }
}

/// `v` as Go's `strconv.FormatFloat(v, 'g', -1, 64)`, which client_golang
/// uses for `le`: shortest digits, exponent form below 1e-4 and from 1e6
/// (`1e-06`, `0.0001`, `12.5`, `10`, `1e+06`), `+Inf` for infinity.
pub fn go_float(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    if v.is_nan() || v == 0.0 {
        return format!("{v}");
    }
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    if (-4..6).contains(&exp) {
        format!("{v}")
    } else {
        format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

/// A monotonic counter exposed under exactly its registered name: register
/// `dial_failure_count` to get `dial_failure_count{...} 3`, and
/// `stream_packets_total` for `stream_packets_total{...} 3`.
#[derive(Clone, Debug, Default)]
pub struct PlainCounter(Counter);

impl PlainCounter {
    pub fn inc(&self) {
        self.0.inc();
    }

    pub fn inc_by(&self, n: u64) {
        self.0.inc_by(n);
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl TypedMetric for PlainCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for PlainCounter {
    /// The `# TYPE` line says counter; the sample is written as a gauge's
    /// is, without the suffix the counter encoder would add.
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.0.get())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A histogram with fixed upper bounds, observed with atomic adds only.
#[derive(Clone, Debug)]
pub struct Histogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug)]
struct HistogramInner {
    bounds: &'static [f64],
    /// One count per bound, then the `+Inf` bucket; not cumulative.
    counts: Box<[AtomicU64]>,
    /// The sum of observations, as f64 bits.
    sum: AtomicU64,
}

impl Histogram {
    /// `bounds`: finite upper bounds in increasing order.
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds must increase");
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram { inner: Arc::new(HistogramInner { bounds, counts, sum: AtomicU64::new(0) }) }
    }

    pub fn observe(&self, v: f64) {
        let i = self.inner.bounds.partition_point(|b| *b < v);
        self.inner.counts[i].fetch_add(1, Ordering::Relaxed);
        let _ = self
            .inner
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| Some((f64::from_bits(bits) + v).to_bits()));
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.inner.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &self.inner;
        let upper = inner.bounds.iter().copied().chain(std::iter::once(f64::INFINITY));
        let buckets: Vec<(f64, u64)> = upper.zip(inner.counts.iter().map(|c| c.load(Ordering::Relaxed))).collect();
        // The count is taken from the buckets so that `+Inf` always equals it.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = f64::from_bits(inner.sum.load(Ordering::Relaxed));
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A family of [`PlainCounter`]s over label sets fixed at construction and
/// picked by index (callers map an enum to it).
#[derive(Clone, Debug)]
pub struct CounterSet<L: Clone + std::hash::Hash + Eq> {
    family: Family<L, PlainCounter>,
    labels: Arc<[L]>,
    children: Arc<[OnceLock<PlainCounter>]>,
}

impl<L> CounterSet<L>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    pub fn new(labels: impl IntoIterator<Item = L>) -> Self {
        let labels: Arc<[L]> = labels.into_iter().collect();
        let children = labels.iter().map(|_| OnceLock::new()).collect();
        CounterSet { family: Family::default(), labels, children }
    }

    /// The family to register (shares its counters with this set).
    pub fn family(&self) -> Family<L, PlainCounter> {
        self.family.clone()
    }

    fn child(&self, i: usize) -> &PlainCounter {
        self.children[i].get_or_init(|| self.family.get_or_create(&self.labels[i]).clone())
    }

    pub fn inc(&self, i: usize) {
        self.child(i).inc();
    }

    pub fn inc_by(&self, i: usize, n: u64) {
        self.child(i).inc_by(n);
    }

    /// The count of label set `i` (0, and still not exposed, if never used).
    pub fn get(&self, i: usize) -> u64 {
        self.children[i].get().map_or(0, PlainCounter::get)
    }
}

/// One metric family of an exposition, as [`parse`] reads it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ParsedFamily {
    /// From `# TYPE`: counter, gauge, histogram, ...
    pub kind: String,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's own name (a histogram's carry `_bucket`, `_sum`, `_count`).
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Families of a text-format exposition by name. Each sample belongs to the
/// family of the `# TYPE` line before it. Lines it cannot read are errors.
pub fn parse(text: &str) -> Result<BTreeMap<String, ParsedFamily>, String> {
    let mut families: BTreeMap<String, ParsedFamily> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or_else(|| format!("bad TYPE line {line:?}"))?;
            families.insert(name.to_owned(), ParsedFamily { kind: kind.to_owned(), samples: Vec::new() });
            current = Some(name.to_owned());
        } else if !line.starts_with('#') {
            let sample = parse_sample(line).ok_or_else(|| format!("bad sample line {line:?}"))?;
            let family = current.as_ref().ok_or_else(|| format!("sample before any TYPE line: {line:?}"))?;
            families.get_mut(family).expect("TYPE line seen").samples.push(sample);
        }
    }
    Ok(families)
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after_key) = inner.split_once("=\"")?;
            let (value, after_value) = label_value(after_key)?;
            labels.push((key.trim_start_matches(',').to_owned(), value));
            inner = after_value.strip_prefix(',').unwrap_or(after_value);
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample { name, labels, value })
}

/// Reads an escaped label value up to its closing quote; returns it and the rest.
fn label_value(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// A family an exposition must have: exact name, `# TYPE`, and label names
/// (a histogram's `le` aside), each with the values it may take (empty: any).
pub struct Expected {
    pub name: &'static str,
    pub kind: &'static str,
    pub labels: &'static [(&'static str, &'static [&'static str])],
}

/// Checks an exposition: every `expected` family is there, with samples
/// named exactly as the family (a histogram's `_bucket`, `_sum`, `_count`;
/// so a counter whose samples gained `_total` fails), the right type, label
/// names and values; no `absent` family is there; any other family's name
/// starts with `own_prefix`. Returns every problem found.
pub fn compare(text: &str, expected: &[Expected], absent: &[&str], own_prefix: &str) -> Result<(), Vec<String>> {
    let families = parse(text).map_err(|e| vec![e])?;
    let mut problems = Vec::new();
    for e in expected {
        match families.get(e.name) {
            None => problems.push(format!("{} is not exposed", e.name)),
            Some(f) => problems.extend(check_family(e, f)),
        }
    }
    for name in absent {
        if families.contains_key(*name) || text.lines().any(|l| l.starts_with(name)) {
            problems.push(format!("{name} is exposed"));
        }
    }
    for name in families.keys() {
        if !name.starts_with(own_prefix) && !expected.iter().any(|e| e.name == name) {
            problems.push(format!("{name}: neither an expected name nor under {own_prefix}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn check_family(e: &Expected, f: &ParsedFamily) -> Vec<String> {
    let mut problems = Vec::new();
    if f.kind != e.kind {
        problems.push(format!("{} is a {}, not a {}", e.name, f.kind, e.kind));
    }
    if f.samples.is_empty() {
        problems.push(format!("{} has no sample", e.name));
    }
    let names: Vec<String> = match e.kind {
        "histogram" => ["_bucket", "_sum", "_count"].iter().map(|s| format!("{}{s}", e.name)).collect(),
        _ => vec![e.name.to_owned()],
    };
    for s in &f.samples {
        if !names.contains(&s.name) {
            problems.push(format!("{} has a sample named {}", e.name, s.name));
        }
        let mut got: Vec<&str> = s.labels.iter().map(|(k, _)| k.as_str()).filter(|k| *k != "le").collect();
        let mut want: Vec<&str> = e.labels.iter().map(|(k, _)| *k).collect();
        got.sort_unstable();
        want.sort_unstable();
        if got != want {
            problems.push(format!("{}: labels {got:?}, want {want:?}", s.name));
        }
        for (k, v) in &s.labels {
            let allowed = e.labels.iter().find(|(name, _)| name == k).map(|(_, values)| *values);
            if allowed.is_some_and(|values| !values.is_empty() && !values.contains(&v.as_str())) {
                problems.push(format!("{}: {k}={v:?} is not one of upstream's values", s.name));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    type Reason = [(&'static str, &'static str); 1];

    fn registry() -> (Registry, PlainCounter, CounterSet<Reason>, Histogram) {
        let mut r = Registry::default();
        let plain = PlainCounter::default();
        let set = CounterSet::new([[("reason", "a")], [("reason", "b")]]);
        let hist = Histogram::new(&[0.1, 1.0]);
        r.register("failure_count", "Failures", plain.clone());
        r.register("packets_total", "Packets", set.family());
        r.register("latency_seconds", "Latency", hist.clone());
        (r, plain, set, hist)
    }

    #[test]
    fn counters_keep_their_exact_names() {
        let (r, plain, set, _) = registry();
        plain.inc_by(3);
        set.inc(1);
        let text = render(&r);
        assert!(text.contains("# TYPE failure_count counter\nfailure_count 3\n"), "{text}");
        assert!(text.contains("# TYPE packets_total counter\npackets_total{reason=\"b\"} 1\n"), "{text}");
        assert!(!text.contains("_total_total") && !text.contains("failure_count_total"), "{text}");
        assert!(!text.contains("# EOF"), "text format 0.0.4 has no EOF marker: {text}");
    }

    #[test]
    fn counter_set_children_appear_on_first_use() {
        let (r, _, set, _) = registry();
        assert!(!render(&r).contains("packets_total"), "an unused family is not exposed");
        set.inc_by(0, 5);
        set.inc(0);
        assert_eq!((set.get(0), set.get(1)), (6, 0));
        let families = parse(&render(&r)).unwrap();
        let samples = &families["packets_total"].samples;
        assert_eq!(samples.len(), 1, "{samples:?}");
        assert_eq!(samples[0].labels, [("reason".to_owned(), "a".to_owned())]);
        assert_eq!(samples[0].value, 6.0);
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_the_count() {
        let (r, _, _, hist) = registry();
        for v in [0.05, 0.1, 0.5, 7.0] {
            hist.observe(v);
        }
        assert_eq!(hist.count(), 4);
        let families = parse(&render(&r)).unwrap();
        let f = &families["latency_seconds"];
        assert_eq!(f.kind, "histogram");
        let value = |name: &str, le: Option<&str>| {
            f.samples
                .iter()
                .find(|s| s.name == name && le.is_none_or(|le| s.labels.iter().any(|(k, v)| k == "le" && v == le)))
                .map(|s| s.value)
        };
        assert_eq!(value("latency_seconds_bucket", Some("0.1")), Some(2.0), "le is inclusive");
        assert_eq!(value("latency_seconds_bucket", Some("1")), Some(3.0));
        assert_eq!(value("latency_seconds_bucket", Some("+Inf")), Some(4.0));
        assert_eq!(value("latency_seconds_count", None), Some(4.0));
        assert!((value("latency_seconds_sum", None).unwrap() - 7.65).abs() < 1e-9);
    }

    #[test]
    fn bucket_bounds_are_written_as_go_writes_them() {
        let cases = [(1e-6, "1e-06"), (1e-5, "1e-05"), (0.0001, "0.0001"), (0.005, "0.005"), (12.5, "12.5")];
        for (v, go) in cases.into_iter().chain([(10.0, "10"), (30.0, "30"), (1e6, "1e+06"), (123456.0, "123456")]) {
            assert_eq!(go_float(v), go, "{v}");
        }
        let mut r = Registry::default();
        static BOUNDS: [f64; 3] = [0.000001, 0.1, 10.0];
        r.register("d_seconds", "D", Histogram::new(&BOUNDS));
        let text = render(&r);
        for le in ["1e-06", "0.1", "10", "+Inf"] {
            assert!(text.contains(&format!("d_seconds_bucket{{le=\"{le}\"}} 0\n")), "{le}: {text}");
        }
    }

    #[test]
    fn compare_names_each_difference() {
        let (r, plain, set, _) = registry();
        plain.inc();
        set.inc(0);
        let text = render(&r);
        let expected = |name, kind, labels| Expected { name, kind, labels };
        let fine = [
            expected("failure_count", "counter", &[]),
            expected("packets_total", "counter", &[("reason", &["a", "b"])]),
            expected("latency_seconds", "histogram", &[]),
        ];
        assert_eq!(compare(&text, &fine, &["lease_total"], "own_"), Ok(()));

        let wrong = [
            expected("failure_count_total", "counter", &[]),
            expected("packets_total", "gauge", &[("reason", &["b"])]),
            expected("latency_seconds", "histogram", &[("le", &[])]),
        ];
        let problems = compare(&text, &wrong, &["failure_count"], "own_").unwrap_err();
        assert!(problems.iter().any(|p| p == "failure_count_total is not exposed"), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("is a counter, not a gauge")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("reason=\"a\" is not one of")), "{problems:?}");
        assert!(problems.iter().any(|p| p == "failure_count is exposed"), "{problems:?}");
        assert!(problems.iter().any(|p| p.starts_with("failure_count: neither")), "{problems:?}");

        // The prometheus-client counter, which adds `_total` to its samples.
        let mut r = Registry::default();
        let c: Counter = Counter::default();
        c.inc();
        r.register("failure_count", "Failures", c);
        let problems = compare(&render(&r), &fine[..1], &[], "own_").unwrap_err();
        assert_eq!(problems, ["failure_count has a sample named failure_count_total"]);
    }

    #[test]
    fn parse_reads_labels_with_escapes_and_refuses_garbage() {
        let text = "# HELP x X.\n# TYPE x gauge\nx{a=\"1\",b=\"q\\\"uo\\\\te\"} 2\nx 3\n";
        let families = parse(text).unwrap();
        let samples = &families["x"].samples;
        assert_eq!(samples[0].labels[1], ("b".to_owned(), "q\"uo\\te".to_owned()));
        assert_eq!(samples[1].value, 3.0);
        assert!(parse("x 1\n").is_err(), "a sample needs a TYPE line");
        assert!(parse("# TYPE x gauge\nx{a=\"1} 2\n").is_err());
        assert!(parse("# TYPE x gauge\nx one\n").is_err());
    }
}
