//! Pure computation on measured figures: latency summaries from
//! hdrhistogram, rates, per-connection costs and growth over a soak.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency a histogram records (longer values saturate here).
pub const MAX_LATENCY_NS: u64 = 120_000_000_000;

/// A latency histogram in nanoseconds, 3 significant figures.
pub fn histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low, sigfig <= 5).
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds")
}

/// Records `ns`, clamped into the histogram's range.
pub fn record(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.max(1));
}

/// Quantiles at which a CDF is sampled for charts (denser in the tail).
pub const CDF_QUANTILES: &[f64] = &[
    0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 0.99, 0.995, 0.999, 0.9995,
    0.9999, 1.0,
];

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// (quantile, latency µs) pairs for a CDF chart.
    pub cdf: Vec<(f64, f64)>,
}

impl LatencySummary {
    pub fn from_histogram(h: &Histogram<u64>) -> LatencySummary {
        let us = |ns: u64| ns as f64 / 1000.0;
        let empty = h.is_empty();
        let q = |q: f64| if empty { 0.0 } else { us(h.value_at_quantile(q)) };
        LatencySummary {
            count: h.len(),
            mean_us: if empty { 0.0 } else { h.mean() / 1000.0 },
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if empty { 0.0 } else { us(h.max()) },
            cdf: if empty { Vec::new() } else { CDF_QUANTILES.iter().map(|&p| (p, q(p))).collect() },
        }
    }
}

/// Gigabits per second for `bytes` in `secs`.
pub fn gbit_per_s(bytes: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    bytes as f64 * 8.0 / secs / 1e9
}

/// CPU seconds per gigabyte (10^9 bytes) moved; `None` when nothing moved.
pub fn cpu_per_gb(cpu_secs: f64, bytes: u64) -> Option<f64> {
    (bytes > 0).then(|| cpu_secs / (bytes as f64 / 1e9))
}

/// Average cost per connection of a resource that grew from `before` to
/// `after` while `n` connections were opened (negative growth counts as 0).
pub fn per_conn(before: u64, after: u64, n: u64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    after.saturating_sub(before) as f64 / n as f64
}

/// How a sampled value moved over a soak.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Growth {
    /// Median of the first window after warm-up.
    pub first: f64,
    /// Median of the last window.
    pub last: f64,
    /// (last - first) / first, in percent.
    pub growth_pct: f64,
    /// Least-squares slope over the samples after warm-up, per minute.
    pub slope_per_min: f64,
}

/// Growth of `(t_secs, value)` samples: samples before `warmup_secs` are
/// ignored; the first and last windows are each 10% of the rest (at least
/// one sample), compared by their medians so that a momentary burst (fds
/// of dials in flight at a sampling instant) does not count as growth.
/// `None` with fewer than two samples after warm-up.
pub fn growth(samples: &[(f64, f64)], warmup_secs: f64) -> Option<Growth> {
    let kept: Vec<(f64, f64)> = samples.iter().copied().filter(|&(t, _)| t >= warmup_secs).collect();
    if kept.len() < 2 {
        return None;
    }
    let window = (kept.len() / 10).max(1);
    let first = median(&kept[..window]);
    let last = median(&kept[kept.len() - window..]);
    let growth_pct = if first > 0.0 { (last - first) / first * 100.0 } else { 0.0 };
    Some(Growth { first, last, growth_pct, slope_per_min: slope(&kept) * 60.0 })
}

/// Median of the values (mean of the middle two for an even count).
fn median(s: &[(f64, f64)]) -> f64 {
    let mut v: Vec<f64> = s.iter().map(|p| p.1).collect();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

/// Least-squares slope of `v` over `t`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let mt = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mv = points.iter().map(|p| p.1).sum::<f64>() / n;
    let num: f64 = points.iter().map(|&(t, v)| (t - mt) * (v - mv)).sum();
    let den: f64 = points.iter().map(|&(t, _)| (t - mt) * (t - mt)).sum();
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

/// `value / reference`, `None` when the reference is missing or zero.
pub fn ratio(value: f64, reference: Option<f64>) -> Option<f64> {
    reference.filter(|&r| r > 0.0 && r.is_finite()).map(|r| value / r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_known_values() {
        let mut h = histogram();
        for us in 1..=1000u64 {
            record(&mut h, us * 1000);
        }
        let s = LatencySummary::from_histogram(&h);
        assert_eq!(s.count, 1000);
        assert!((s.p50_us - 500.0).abs() < 1.0, "{}", s.p50_us);
        assert!((s.p99_us - 990.0).abs() < 1.0, "{}", s.p99_us);
        assert!((s.max_us - 1000.0).abs() < 1.0, "{}", s.max_us);
        assert_eq!(s.cdf.len(), CDF_QUANTILES.len());
        assert!(s.cdf.windows(2).all(|w| w[0].1 <= w[1].1), "CDF is monotonic");
    }

    #[test]
    fn empty_summary_is_zero() {
        let s = LatencySummary::from_histogram(&histogram());
        assert_eq!(s.count, 0);
        assert_eq!(s.p99_us, 0.0);
        assert!(s.cdf.is_empty());
    }

    #[test]
    fn record_clamps() {
        let mut h = histogram();
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
        assert!(h.max() >= MAX_LATENCY_NS / 2);
    }

    #[test]
    fn rates() {
        assert_eq!(gbit_per_s(1_000_000_000, 8.0), 1.0);
        assert_eq!(gbit_per_s(5, 0.0), 0.0);
        assert_eq!(cpu_per_gb(3.0, 2_000_000_000), Some(1.5));
        assert_eq!(cpu_per_gb(3.0, 0), None);
        assert_eq!(per_conn(1000, 5000, 4), 1000.0);
        assert_eq!(per_conn(5000, 1000, 4), 0.0);
        assert_eq!(per_conn(1, 2, 0), 0.0);
        assert_eq!(ratio(3.0, Some(2.0)), Some(1.5));
        assert_eq!(ratio(3.0, Some(0.0)), None);
        assert_eq!(ratio(3.0, None), None);
    }

    #[test]
    fn flat_series_has_no_growth() {
        let s: Vec<(f64, f64)> = (0..100).map(|t| (t as f64, 50.0)).collect();
        let g = growth(&s, 10.0).unwrap();
        assert_eq!(g.growth_pct, 0.0);
        assert_eq!(g.slope_per_min, 0.0);
    }

    #[test]
    fn linear_growth_is_measured_after_warmup() {
        // A spike during warm-up is ignored; then +1 per second from 100.
        let mut s = vec![(0.0, 1000.0), (1.0, 1000.0)];
        s.extend((10..110).map(|t| (t as f64, 100.0 + (t - 10) as f64)));
        let g = growth(&s, 10.0).unwrap();
        assert!((g.first - 104.5).abs() < 1e-9, "{g:?}");
        assert!((g.last - 194.5).abs() < 1e-9, "{g:?}");
        assert!((g.growth_pct - 86.12).abs() < 0.01, "{g:?}");
        assert!((g.slope_per_min - 60.0).abs() < 1e-9, "{g:?}");
    }

    #[test]
    fn a_momentary_spike_is_not_growth() {
        let mut s: Vec<(f64, f64)> = (0..100).map(|t| (t as f64, 40.0)).collect();
        s[95].1 = 400.0;
        assert_eq!(growth(&s, 0.0).unwrap().growth_pct, 0.0);
    }

    #[test]
    fn too_few_samples() {
        assert!(growth(&[(0.0, 1.0)], 0.0).is_none());
        assert!(growth(&[(0.0, 1.0), (1.0, 2.0)], 5.0).is_none());
    }
}
