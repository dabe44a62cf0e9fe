//! Hand-written SVG charts: grouped bars (throughput, dial rate, memory) and
//! latency CDFs with a "nines" axis so the tail is readable.

use std::fmt::Write;

const W: f64 = 760.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 70.0;

/// Fixed colours so every chart shows a peer the same way.
pub fn colour(peer: &str) -> &'static str {
    match peer {
        "konnq" => "#1f77b4",
        "upstream" => "#ff7f0e",
        "direct" => "#2ca02c",
        // The lab's baselines beside their peer's main series.
        "konnq baseline" => "#aec7e8",
        "upstream baseline" => "#ffbb78",
        _ => "#7f7f7f",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn open(title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        W / 2.0,
        esc(title)
    )
}

fn legend(out: &mut String, peers: &[&str]) {
    for (i, p) in peers.iter().enumerate() {
        let x = LEFT + 10.0 + i as f64 * 110.0;
        let y = H - 18.0;
        let _ = writeln!(
            out,
            "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{y}\">{}</text>",
            y - 10.0,
            colour(p),
            x + 16.0,
            esc(p)
        );
    }
}

/// A "nice" axis maximum at or above `v` (1, 2 or 5 times a power of ten).
pub fn nice_max(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * p).find(|&m| m >= v).unwrap_or(10.0 * p)
}

/// Grouped bars: one group per label, one bar per peer (missing values are
/// left out). `groups`: (label, [(peer, value)]).
pub fn bars(title: &str, y_label: &str, groups: &[(String, Vec<(String, f64)>)]) -> String {
    let mut peers: Vec<&str> = Vec::new();
    for (_, vals) in groups {
        for (p, _) in vals {
            if !peers.contains(&p.as_str()) {
                peers.push(p);
            }
        }
    }
    let max = nice_max(groups.iter().flat_map(|(_, v)| v.iter().map(|x| x.1)).fold(0.0, f64::max));
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let mut out = open(title);
    axis_y_linear(&mut out, max, y_label);
    let gw = pw / groups.len().max(1) as f64;
    let bw = (gw * 0.8 / peers.len().max(1) as f64).min(60.0);
    for (gi, (label, vals)) in groups.iter().enumerate() {
        let gx = LEFT + gi as f64 * gw;
        let start = gx + (gw - bw * peers.len() as f64) / 2.0;
        for (p, v) in vals {
            let pi = peers.iter().position(|x| x == p).unwrap_or(0);
            let h = (v / max * ph).max(0.0);
            let x = start + pi as f64 * bw;
            let _ = writeln!(
                out,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"><title>{} {}: {v:.3}</title></rect>",
                TOP + ph - h,
                bw - 2.0,
                colour(p),
                esc(p),
                esc(label)
            );
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"9\">{}</text>",
                x + bw / 2.0 - 1.0,
                TOP + ph - h - 3.0,
                short(*v)
            );
        }
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            gx + gw / 2.0,
            TOP + ph + 16.0,
            esc(label)
        );
    }
    legend(&mut out, &peers);
    out + "</svg>\n"
}

fn short(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn axis_y_linear(out: &mut String, max: f64, label: &str) {
    let ph = H - TOP - BOTTOM;
    for i in 0..=5 {
        let v = max * i as f64 / 5.0;
        let y = TOP + ph - ph * i as f64 / 5.0;
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            short(v)
        );
    }
    let _ = writeln!(
        out,
        "<text transform=\"translate(16,{:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        TOP + ph / 2.0,
        esc(label)
    );
}

/// Position of quantile `q` on the nines axis (0 → 0, 0.9 → 1, 0.99 → 2, ...), capped at 4 nines.
pub fn nines(q: f64) -> f64 {
    let tail = (1.0 - q).max(1e-4);
    -tail.log10()
}

/// Latency CDFs: x = latency (µs, log scale), y = quantile on a nines
/// scale. `series`: (peer, [(quantile, µs)]).
pub fn cdf(title: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let all = series.iter().flat_map(|(_, pts)| pts.iter().map(|p| p.1)).filter(|&v| v > 0.0);
    let (lo, hi) = all.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if hi > 0.0 { (10f64.powf(lo.log10().floor()), nice_max(hi)) } else { (1.0, 10.0) };
    let (lx, hx) = (lo.log10(), hi.log10().max(lo.log10() + 1.0));
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let x_of = |us: f64| LEFT + (us.max(lo).log10() - lx) / (hx - lx) * pw;
    let y_of = |q: f64| TOP + ph - nines(q) / 4.0 * ph;
    let mut out = open(title);
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%"].iter().enumerate() {
        let y = TOP + ph - ph * i as f64 / 4.0;
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0
        );
    }
    let mut decade = lx.floor() as i32;
    while f64::from(decade) <= hx + 1e-9 {
        let us = 10f64.powi(decade);
        let x = x_of(us);
        let label = if us >= 1000.0 { format!("{} ms", us / 1000.0) } else { format!("{us} µs") };
        let _ = writeln!(
            out,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{TOP}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
            TOP + ph,
            TOP + ph + 16.0
        );
        decade += 1;
    }
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">latency (log scale)</text>",
        LEFT + pw / 2.0,
        TOP + ph + 34.0
    );
    for (peer, pts) in series {
        let path: Vec<String> = pts.iter().map(|&(q, us)| format!("{:.1},{:.1}", x_of(us), y_of(q))).collect();
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            colour(peer),
            path.join(" ")
        );
    }
    let peers: Vec<&str> = series.iter().map(|(p, _)| p.as_str()).collect();
    legend(&mut out, &peers);
    out + "</svg>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_maxima() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(f64::NAN), 1.0);
        assert_eq!(nice_max(3.2), 5.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(10.0), 10.0);
        assert_eq!(nice_max(0.013), 0.02);
        assert_eq!(nice_max(1500.0), 2000.0);
    }

    #[test]
    fn nines_axis() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(0.9) - 1.0).abs() < 1e-9);
        assert!((nines(0.999) - 3.0).abs() < 1e-9);
        assert_eq!(nines(1.0), 4.0);
    }

    #[test]
    fn bar_chart_has_a_bar_per_value() {
        let groups = vec![
            ("oneway 1".to_owned(), vec![("konnq".to_owned(), 3.0), ("upstream".to_owned(), 1.0)]),
            ("oneway 64".to_owned(), vec![("konnq".to_owned(), 5.0)]),
        ];
        let svg = bars("Throughput <Gbit/s>", "Gbit/s", &groups);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<title>").count(), 3);
        assert!(svg.contains("Throughput &lt;Gbit/s&gt;"));
        assert!(svg.contains(colour("upstream")));
    }

    #[test]
    fn cdf_chart_has_a_line_per_series() {
        let s = vec![
            ("konnq".to_owned(), vec![(0.0, 50.0), (0.5, 80.0), (0.99, 300.0), (1.0, 900.0)]),
            ("direct".to_owned(), vec![(0.0, 10.0), (1.0, 40.0)]),
        ];
        let svg = cdf("Latency", &s);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("99.9%") && svg.contains("1 ms"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        let empty = cdf("Latency", &[]);
        assert!(!empty.contains("NaN"));
    }
}
