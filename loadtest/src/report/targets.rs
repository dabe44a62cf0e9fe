//! The targets for konnq, evaluated against the figures of a run.
//! Ratios compare konnq with upstream measured in the same run; a target
//! whose figures are missing is `not-measured`, never met.

use super::model::{Report, TargetCheck, Verdict};

const KONNQ: &str = "konnq";
const UPSTREAM: &str = "upstream";

/// Conditions the targets are defined at.
pub const LATENCY_RATE: f64 = 2000.0;
pub const DIAL_CONCURRENCY: usize = 32;
pub const SCALE_CONNS: u64 = 10_000;
pub const SOAK_DIAL_RATE: f64 = 300.0;
pub const SOAK_SECS: f64 = 600.0;
/// Send lag beyond which the latency figures are flagged as disturbed.
pub const LAG_WARN_US: f64 = 5000.0;
/// Uploading connections the upload targets are defined at.
pub const UPLOAD_CONNS: usize = 64;
/// Most server + agent RSS growth while 64 connections upload, MiB.
pub const UPLOAD_GROWTH_MIB: f64 = 64.0;
/// Upload throughput at least this fraction of one-way (download) throughput.
pub const UPLOAD_VS_DOWNLOAD: f64 = 0.9;

/// Every target check for `report`.
pub fn evaluate(report: &Report) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    for mode in ["oneway", "echo"] {
        for conns in [1, 64] {
            out.push(throughput(report, mode, conns));
        }
    }
    out.push(latency_p99(report));
    out.extend(dial(report));
    out.extend(memory(report));
    out.extend(soak(report));
    out.extend(upload(report));
    out
}

/// `value >= factor * reference` (higher is better) or `value <= factor * reference`.
pub(crate) fn relative(
    id: &str,
    target: String,
    unit: &str,
    konnq: Option<f64>,
    upstream: Option<f64>,
    factor: f64,
    higher_is_better: bool,
) -> TargetCheck {
    let (verdict, note) = match (konnq, upstream) {
        (Some(k), Some(u)) if u > 0.0 => {
            let ok = if higher_is_better { k >= factor * u } else { k <= factor * u };
            (if ok { Verdict::Met } else { Verdict::Missed }, format!("konnq/upstream = {:.2}", k / u))
        }
        (None, _) => (Verdict::NotMeasured, "no konnq figure".to_owned()),
        _ => (Verdict::NotMeasured, "no upstream figure".to_owned()),
    };
    TargetCheck { id: id.to_owned(), target, konnq, upstream, unit: unit.to_owned(), verdict, note }
}

pub(crate) fn absolute(id: &str, target: String, unit: &str, konnq: Option<f64>, limit: f64) -> TargetCheck {
    let (verdict, note) = match konnq {
        Some(k) if k <= limit => (Verdict::Met, String::new()),
        Some(_) => (Verdict::Missed, String::new()),
        None => (Verdict::NotMeasured, "no konnq figure".to_owned()),
    };
    TargetCheck { id: id.to_owned(), target, konnq, upstream: None, unit: unit.to_owned(), verdict, note }
}

fn with_condition(mut c: TargetCheck, differs: Option<String>) -> TargetCheck {
    if let Some(d) = differs {
        c.note = if c.note.is_empty() { d } else { format!("{}; {d}", c.note) };
    }
    c
}

fn throughput(r: &Report, mode: &str, conns: usize) -> TargetCheck {
    let get = |peer: &str| {
        r.throughput.iter().find(|t| t.peer == peer && t.mode == mode && t.conns == conns).map(|t| t.gbit_per_s)
    };
    relative(
        &format!("throughput-{mode}-{conns}"),
        format!("{mode} throughput, {conns} conn(s) >= 1.5x upstream"),
        "Gbit/s",
        get(KONNQ),
        get(UPSTREAM),
        1.5,
        true,
    )
}

fn latency_p99(r: &Report) -> TargetCheck {
    let get = |peer: &str| r.latency.iter().find(|l| l.peer == peer);
    let c = relative(
        "latency-p99",
        "1 KiB req/resp p99 at 2,000 req/s <= 0.7x upstream".to_owned(),
        "µs",
        get(KONNQ).map(|l| l.latency.p99_us),
        get(UPSTREAM).map(|l| l.latency.p99_us),
        0.7,
        false,
    );
    let rate = get(KONNQ).map(|l| l.rate).filter(|&x| x != LATENCY_RATE);
    let c = with_condition(c, rate.map(|x| format!("measured at {x} req/s")));
    // Round by round (the peers alternate): whether one round decided it.
    let rounds = match (get(KONNQ), get(UPSTREAM)) {
        (Some(k), Some(u)) if k.round_p99_us.len() > 1 && k.round_p99_us.len() == u.round_p99_us.len() => {
            let ratios: Vec<String> =
                k.round_p99_us.iter().zip(&u.round_p99_us).map(|(k, u)| format!("{:.2}", k / u)).collect();
            Some(format!("by round {}", ratios.join(", ")))
        }
        _ => None,
    };
    let c = with_condition(c, rounds);
    // The generator sends late only when it is starved of CPU: other load on the machine.
    let lagged: Vec<String> = [KONNQ, UPSTREAM]
        .iter()
        .filter_map(|p| get(p).filter(|l| l.schedule_lag.p99_us > LAG_WARN_US).map(|l| (p, l.schedule_lag.p99_us)))
        .map(|(p, lag)| format!("{p} send lag p99 {:.1} ms", lag / 1000.0))
        .collect();
    with_condition(c, (!lagged.is_empty()).then(|| format!("generator lagged ({}): machine busy", lagged.join(", "))))
}

fn dial(r: &Report) -> Vec<TargetCheck> {
    let get = |peer: &str| r.dial.iter().find(|d| d.peer == peer);
    if let Some(rate) = get(KONNQ).and_then(|d| d.rate) {
        return open_loop_dial(r, rate);
    }
    let concurrency =
        get(KONNQ).map(|d| d.concurrency).filter(|&c| c != DIAL_CONCURRENCY).map(|c| format!("at concurrency {c}"));
    // The Go client (kube-apiserver's) takes more CPU per dial than the
    // Rust one: its figures are what kube-apiserver sees, not the capacity.
    let client = get(KONNQ)
        .filter(|d| d.client == crate::settings::DialClient::Go.name())
        .map(|d| format!("client {}", d.client));
    let parts: Vec<String> = concurrency.into_iter().chain(client).collect();
    let cond = (!parts.is_empty()).then(|| format!("measured {}", parts.join(", ")));
    let rate = relative(
        "dial-rate",
        "dials/s at concurrency 32 >= 2x upstream".to_owned(),
        "dials/s",
        get(KONNQ).map(|d| d.dials_per_s),
        get(UPSTREAM).map(|d| d.dials_per_s),
        2.0,
        true,
    );
    let p99 = absolute(
        "dial-p99",
        "DIAL_REQ→DIAL_RSP p99 <= 2 ms".to_owned(),
        "µs",
        get(KONNQ).map(|d| d.dial.p99_us),
        2000.0,
    );
    vec![with_condition(rate, cond.clone()), with_condition(p99, cond)]
}

/// Open-loop dials: DIAL_REQ→DIAL_RSP p99 ≤ 1 ms and ≤ 0.5× upstream's at
/// the same rate; the machine's load during the window is in the note.
fn open_loop_dial(r: &Report, rate: f64) -> Vec<TargetCheck> {
    let get = |peer: &str| r.dial.iter().find(|d| d.peer == peer && d.rate == Some(rate));
    let p99 = |peer: &str| get(peer).map(|d| d.dial.p99_us);
    // Cores busy in the window: the tunnel, the load generator, the target.
    let busy = |peer: &str| {
        get(peer).map(|d| d.cpu.runner + d.cpu.target + d.cpu.server.unwrap_or(0.0) + d.cpu.agent.unwrap_or(0.0))
    };
    let cores = r.meta.machine.nproc.max(1) as f64;
    let note = busy(KONNQ).map(|b| format!("konnq's cell kept {:.0}% of the {cores} cores busy", 100.0 * b / cores));
    let abs = absolute(
        "dial-open-p99",
        format!("open loop at {rate}/s: DIAL_REQ→DIAL_RSP p99 <= 1 ms"),
        "µs",
        p99(KONNQ),
        1000.0,
    );
    let rel = relative(
        "dial-open-p99-vs-upstream",
        format!("open loop at {rate}/s: DIAL_REQ→DIAL_RSP p99 <= 0.5x upstream"),
        "µs",
        p99(KONNQ),
        p99(UPSTREAM),
        0.5,
        false,
    );
    vec![with_condition(abs, note.clone()), with_condition(rel, note)]
}

fn memory(r: &Report) -> Vec<TargetCheck> {
    let get = |peer: &str| r.scale.iter().find(|s| s.peer == peer && s.reached > 0);
    let kib = |peer: &str| get(peer).map(|s| s.rss_bytes_per_conn / 1024.0);
    let cond = get(KONNQ).filter(|s| s.reached != SCALE_CONNS).map(|s| format!("measured at N = {}", s.reached));
    let abs = absolute(
        "memory-abs",
        "server + agent RSS per idle connection at N = 10,000 <= 32 KiB".to_owned(),
        "KiB",
        kib(KONNQ),
        32.0,
    );
    let rel = relative(
        "memory-rel",
        "RSS per idle connection <= 0.5x upstream".to_owned(),
        "KiB",
        kib(KONNQ),
        kib(UPSTREAM),
        0.5,
        false,
    );
    vec![with_condition(abs, cond.clone()), with_condition(rel, cond)]
}

fn soak(r: &Report) -> Vec<TargetCheck> {
    let s = r.soak.iter().find(|s| s.peer == KONNQ);
    let cond = s
        .filter(|s| s.secs < SOAK_SECS || s.dial_rate != SOAK_DIAL_RATE)
        .map(|s| format!("{:.0} s at {} dials/s (target: 600 s at 300)", s.secs, s.dial_rate));
    let rss = s.and_then(|s| s.growth.total_rss.as_ref()).map(|g| g.growth_pct);
    let fds = s.and_then(|s| s.growth.total_fds.as_ref()).map(|g| g.growth_pct);
    let check = |id: &str, what: &str, v: Option<f64>| {
        let mut c = absolute(id, format!("soak: {what} growth < 5%"), "%", v, 5.0);
        if c.verdict == Verdict::Met && v.is_some_and(|v| v >= 5.0) {
            c.verdict = Verdict::Missed;
        }
        with_condition(c, cond.clone())
    };
    vec![check("soak-rss", "server + agent RSS", rss), check("soak-fds", "server + agent fd count", fds)]
}

/// konnq's uploads: bounded memory, and as fast as downloads in the same run.
fn upload(r: &Report) -> Vec<TargetCheck> {
    let cell = |mode: &str| r.throughput.iter().find(|t| t.peer == KONNQ && t.mode == mode && t.conns == UPLOAD_CONNS);
    let growth = |peer: &str| {
        r.throughput
            .iter()
            .find(|t| t.peer == peer && t.mode == "upload" && t.conns == UPLOAD_CONNS)
            .and_then(|t| t.memory?.growth())
            .map(|b| b as f64 / f64::from(1 << 20))
    };
    let mut mem = absolute(
        "upload-memory-64",
        format!("server + agent RSS growth, {UPLOAD_CONNS} uploading conns <= {UPLOAD_GROWTH_MIB} MiB"),
        "MiB",
        growth(KONNQ),
        UPLOAD_GROWTH_MIB,
    );
    mem.upstream = growth(UPSTREAM);
    let (up, down) = (cell("upload").map(|t| t.gbit_per_s), cell("oneway").map(|t| t.gbit_per_s));
    let (verdict, note) = match (up, down) {
        (Some(u), Some(d)) if d > 0.0 => {
            let v = if u >= UPLOAD_VS_DOWNLOAD * d { Verdict::Met } else { Verdict::Missed };
            (v, format!("upload/one-way = {:.2} (one-way {d:.2} Gbit/s)", u / d))
        }
        (None, _) => (Verdict::NotMeasured, "no konnq upload figure".to_owned()),
        _ => (Verdict::NotMeasured, "no konnq one-way figure".to_owned()),
    };
    let speed = TargetCheck {
        id: "upload-vs-download-64".to_owned(),
        target: format!("upload throughput, {UPLOAD_CONNS} conns >= {UPLOAD_VS_DOWNLOAD}x one-way in the same run"),
        konnq: up,
        upstream: None,
        unit: "Gbit/s".to_owned(),
        verdict,
        note,
    };
    vec![mem, speed]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::model::*;
    use crate::report::testdata::sample_report;

    fn find<'a>(checks: &'a [TargetCheck], id: &str) -> &'a TargetCheck {
        checks.iter().find(|c| c.id == id).unwrap_or_else(|| panic!("no check {id}"))
    }

    #[test]
    fn dials_by_the_go_client_say_so() {
        let mut r = sample_report();
        for d in &mut r.dial {
            d.client = crate::settings::DialClient::Go.name().to_owned();
        }
        let checks = evaluate(&r);
        let rate = find(&checks, "dial-rate");
        assert!(rate.note.contains("client konnectivity-client (Go)"), "{rate:?}");
        let plain = evaluate(&sample_report());
        assert!(!find(&plain, "dial-rate").note.contains("client"), "the Rust client is the default");
    }

    #[test]
    fn open_loop_dials_get_their_own_targets() {
        let mut r = sample_report();
        r.meta.machine.nproc = 2;
        for d in &mut r.dial {
            d.rate = Some(2000.0);
            d.cpu = CpuSplit { runner: 0.3, target: 0.1, server: Some(0.2), agent: Some(0.2) };
        }
        let checks = evaluate(&r);
        assert!(checks.iter().all(|c| c.id != "dial-p99" && c.id != "dial-rate"), "no closed-loop targets");
        let abs = find(&checks, "dial-open-p99");
        let konnq_p99 = r.dial.iter().find(|d| d.peer == KONNQ).unwrap().dial.p99_us;
        assert_eq!(abs.konnq, Some(konnq_p99));
        assert_eq!(abs.verdict, if konnq_p99 <= 1000.0 { Verdict::Met } else { Verdict::Missed });
        assert!(abs.note.contains("40% of the 2 cores"), "{}", abs.note);
        let rel = find(&checks, "dial-open-p99-vs-upstream");
        assert!(rel.upstream.is_some(), "{rel:?}");
    }

    #[test]
    fn evaluates_every_target() {
        let checks = evaluate(&sample_report());
        assert_eq!(checks.len(), 13);
        // konnq 3.0 vs upstream 1.0 Gbit/s one-way with 1 connection.
        let t = find(&checks, "throughput-oneway-1");
        assert_eq!(t.verdict, Verdict::Met, "{t:?}");
        assert_eq!(t.note, "konnq/upstream = 3.00");
        // konnq p99 900 µs vs upstream 1000 µs: 0.9 > 0.7.
        assert_eq!(find(&checks, "latency-p99").verdict, Verdict::Missed);
        assert_eq!(find(&checks, "dial-p99").verdict, Verdict::Met);
        assert_eq!(find(&checks, "memory-abs").verdict, Verdict::Met);
        assert_eq!(find(&checks, "soak-rss").verdict, Verdict::Met);
        assert_eq!(find(&checks, "soak-fds").verdict, Verdict::Missed);
        // Sample konnq: server +1 MiB per conn, agent flat: 64 MiB at 64 conns.
        let m = find(&checks, "upload-memory-64");
        assert_eq!((m.verdict, m.konnq, m.upstream), (Verdict::Met, Some(64.0), Some(128.0)), "{m:?}");
        let u = find(&checks, "upload-vs-download-64");
        assert_eq!(u.verdict, Verdict::Met, "{u:?}");
        assert!(u.note.starts_with("upload/one-way = 1.00"), "{u:?}");
    }

    #[test]
    fn upload_targets_can_miss() {
        let mut r = sample_report();
        for t in r.throughput.iter_mut().filter(|t| t.peer == "konnq" && t.mode == "upload" && t.conns == 64) {
            t.gbit_per_s *= 0.85;
            if let Some(s) = t.memory.as_mut().and_then(|m| m.server.as_mut()) {
                s.peak += 1 << 20;
            }
        }
        let checks = evaluate(&r);
        assert_eq!(find(&checks, "upload-memory-64").verdict, Verdict::Missed);
        assert_eq!(find(&checks, "upload-vs-download-64").verdict, Verdict::Missed);
        r.throughput.retain(|t| t.mode != "oneway");
        assert_eq!(find(&evaluate(&r), "upload-vs-download-64").verdict, Verdict::NotMeasured);
    }

    #[test]
    fn missing_upstream_is_not_measured() {
        let mut r = sample_report();
        r.throughput.retain(|t| t.peer != "upstream");
        let checks = evaluate(&r);
        let t = find(&checks, "throughput-oneway-64");
        assert_eq!(t.verdict, Verdict::NotMeasured);
        assert_eq!(t.note, "no upstream figure");
    }

    #[test]
    fn latency_rounds_are_listed() {
        let mut r = sample_report();
        r.latency[0].round_p99_us = vec![900.0, 3000.0, 800.0];
        r.latency[1].round_p99_us = vec![1000.0, 1000.0, 1000.0];
        let c = find(&evaluate(&r), "latency-p99").clone();
        assert!(c.note.ends_with("by round 0.90, 3.00, 0.80"), "{c:?}");
        assert!(crate::report::table::render(&r).contains("900/3000/800"));
        // Rounds that do not pair up are not listed.
        r.latency[1].round_p99_us.pop();
        assert!(!find(&evaluate(&r), "latency-p99").note.contains("by round"));
    }

    #[test]
    fn generator_lag_is_flagged() {
        let mut r = sample_report();
        r.latency[1].schedule_lag.p99_us = 80_000.0;
        let c = find(&evaluate(&r), "latency-p99").clone();
        assert!(c.note.contains("upstream send lag p99 80.0 ms"), "{c:?}");
    }

    #[test]
    fn conditions_that_differ_are_noted() {
        let mut r = sample_report();
        r.scale[0].reached = 50;
        let c = find(&evaluate(&r), "memory-abs").clone();
        assert!(c.note.contains("N = 50"), "{c:?}");
        let empty = evaluate(&Report::default());
        assert!(empty.iter().all(|c| c.verdict == Verdict::NotMeasured));
    }
}
