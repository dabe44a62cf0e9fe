//! Results: the data model ([`model`]), the targets ([`targets`]),
//! the text table ([`table`]) and SVG charts ([`svg`]); [`write`] puts all of
//! them into the output directory.

pub mod model;
pub mod svg;
pub mod table;
pub mod targets;
#[cfg(test)]
pub mod testdata;

use std::path::{Path, PathBuf};

use anyhow::Context;

pub use model::*;

/// Every chart of a report as (file name, SVG); charts without data are left out.
pub fn charts(r: &Report) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut tp: Vec<(String, Vec<(String, f64)>)> = Vec::new();
    for t in &r.throughput {
        let label = format!("{} ×{}", t.mode, t.conns);
        match tp.iter_mut().find(|(l, _)| *l == label) {
            Some((_, v)) => v.push((t.peer.clone(), t.gbit_per_s)),
            None => tp.push((label, vec![(t.peer.clone(), t.gbit_per_s)])),
        }
    }
    if !tp.is_empty() {
        out.push(("throughput.svg", svg::bars("Throughput (Gbit/s, higher is better)", "Gbit/s", &tp)));
    }
    if !r.latency.is_empty() {
        let first = &r.latency[0];
        let series: Vec<_> = r.latency.iter().map(|l| (l.peer.clone(), l.latency.cdf.clone())).collect();
        let title = format!("{} B request/response at {} req/s (CO-corrected)", first.request_bytes, first.rate);
        out.push(("latency_cdf.svg", svg::cdf(&title, &series)));
    }
    if !r.dial.is_empty() {
        let series: Vec<_> = r.dial.iter().map(|d| (d.peer.clone(), d.dial.cdf.clone())).collect();
        let title = format!("DIAL_REQ→DIAL_RSP at concurrency {}", r.dial[0].concurrency);
        out.push(("dial_latency_cdf.svg", svg::cdf(&title, &series)));
        let rate: Vec<_> = r.dial.iter().map(|d| (d.peer.clone(), d.dials_per_s)).collect();
        let groups = vec![(format!("concurrency {}", r.dial[0].concurrency), rate)];
        out.push(("dial_rate.svg", svg::bars("Dials per second (higher is better)", "dials/s", &groups)));
    }
    if !r.scale.is_empty() {
        let mem: Vec<_> = r.scale.iter().map(|s| (s.peer.clone(), s.rss_bytes_per_conn / 1024.0)).collect();
        let groups = vec![(format!("N = {}", r.scale[0].target_conns), mem)];
        out.push((
            "scale_memory.svg",
            svg::bars("Server + agent RSS per idle connection (KiB, lower is better)", "KiB", &groups),
        ));
    }
    out
}

/// Writes results.json, summary.txt and the charts into `dir`; returns the files written.
pub fn write(r: &Report, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = vec![
        ("results.json".to_owned(), serde_json::to_string_pretty(r)?),
        ("summary.txt".to_owned(), table::render(r)),
    ];
    files.extend(charts(r).into_iter().map(|(name, svg)| (name.to_owned(), svg)));
    write_files(dir, &files)
}

/// Writes each (file name, text) into `dir` (created if missing); returns the paths.
pub fn write_files(dir: &Path, files: &[(String, String)]) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// What a smoke run must have produced: a figure from every scenario.
/// Returns the problems found (empty = the runner works).
pub fn smoke_problems(r: &Report, peer: &str) -> Vec<String> {
    let mut p = Vec::new();
    let mut need = |ok: bool, what: &str| {
        if !ok {
            p.push(format!("{peer}: {what}"));
        }
    };
    let tp: Vec<_> = r.throughput.iter().filter(|t| t.peer == peer).collect();
    need(tp.iter().any(|t| t.mode == "oneway" && t.bytes > 0), "no one-way throughput figure");
    need(tp.iter().any(|t| t.mode == "echo" && t.bytes > 0), "no echo throughput figure");
    let uploads: Vec<_> = tp.iter().filter(|t| t.mode == "upload").collect();
    need(uploads.iter().any(|t| t.bytes > 0), "no upload throughput figure");
    need(
        uploads.iter().all(|t| t.upload.is_some_and(|u| u.wrote > 0 && u.lost() == 0)),
        "an upload lost bytes or has no accounting",
    );
    need(tp.iter().all(|t| t.memory.and_then(|m| m.total()).is_some_and(|m| m.peak > 0)), "throughput without RSS");
    need(tp.iter().all(|t| t.gbit_per_s > 0.0 && t.cpu_secs_per_gb.is_some()), "throughput without rate or CPU");
    let lat = r.latency.iter().find(|l| l.peer == peer);
    need(lat.is_some_and(|l| l.latency.count > 0 && l.latency.p99_us > 0.0), "no latency percentiles");
    let dial = r.dial.iter().find(|d| d.peer == peer);
    need(dial.is_some_and(|d| d.dials > 0 && d.dials_per_s > 0.0 && d.dial.p99_us > 0.0), "no dial figures");
    let scale = r.scale.iter().find(|s| s.peer == peer);
    need(scale.is_some_and(|s| s.reached == s.target_conns && s.reached > 0), "scale did not reach its size");
    need(scale.is_some_and(|s| s.server_after.rss_bytes > 0 && s.agent_after.fds > 0), "no scale memory figures");
    let soak = r.soak.iter().find(|s| s.peer == peer);
    need(soak.is_some_and(|s| s.dials > 0 && s.samples.len() >= 2), "no soak samples");
    need(soak.is_some_and(|s| s.growth.total_rss.is_some() && s.growth.total_fds.is_some()), "no soak growth");
    need(r.targets.len() == targets::evaluate(&Report::default()).len(), "targets not evaluated");
    for e in r.errors.iter().filter(|e| e.peer == peer) {
        p.push(format!("{peer}: {} failed: {}", e.scenario, e.error));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_for_a_full_report() {
        let names: Vec<&str> = charts(&testdata::sample_report()).into_iter().map(|c| c.0).collect();
        assert_eq!(
            names,
            ["throughput.svg", "latency_cdf.svg", "dial_latency_cdf.svg", "dial_rate.svg", "scale_memory.svg"]
        );
        assert!(charts(&Report::default()).is_empty());
    }

    #[test]
    fn writes_json_that_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = testdata::sample_report();
        r.targets = targets::evaluate(&r);
        let files = write(&r, dir.path()).unwrap();
        assert_eq!(files.len(), 7);
        let back: Report = serde_json::from_str(&std::fs::read_to_string(dir.path().join("results.json")).unwrap())
            .expect("results.json parses");
        assert_eq!(back.throughput.len(), r.throughput.len());
        assert_eq!(back.latency[0].latency.p99_us, r.latency[0].latency.p99_us);
    }

    #[test]
    fn smoke_check_finds_missing_figures() {
        let mut r = testdata::sample_report();
        r.targets = targets::evaluate(&r);
        assert_eq!(smoke_problems(&r, "konnq"), Vec::<String>::new());
        r.dial.clear();
        r.soak[0].samples.truncate(1);
        let p = smoke_problems(&r, "konnq");
        assert_eq!(p, ["konnq: no dial figures", "konnq: no soak samples"]);
        assert_eq!(smoke_problems(&Report::default(), "konnq").len(), 10);
        let mut lossy = testdata::sample_report();
        lossy.targets = targets::evaluate(&lossy);
        for t in lossy.throughput.iter_mut().filter_map(|t| t.upload.as_mut()) {
            t.arrived_after_close -= 1;
        }
        assert_eq!(smoke_problems(&lossy, "konnq"), ["konnq: an upload lost bytes or has no accounting"]);
    }
}
