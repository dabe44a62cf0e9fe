//! A small, fully populated report for unit tests of tables, targets and charts.

use super::model::*;
use crate::procfs::ProcSample;
use crate::stats::{growth, histogram, record, LatencySummary};

fn latency(base_us: u64) -> LatencySummary {
    let mut h = histogram();
    for i in 0..1000 {
        record(&mut h, (base_us + i % 100) * 1000);
    }
    record(&mut h, base_us * 10_000);
    LatencySummary::from_histogram(&h)
}

fn proc(rss_mib: u64, fds: u64) -> ProcSample {
    ProcSample { cpu_secs: 1.0, rss_bytes: rss_mib << 20, fds, threads: 4 }
}

fn cpu(peer: &str) -> CpuSplit {
    let tunnel = (peer != "direct").then_some(0.5);
    CpuSplit { runner: 0.6, target: 0.2, server: tunnel, agent: tunnel }
}

fn memory(peer: &str, conns: usize) -> Option<crate::rss::Memory> {
    let span = |before: u64, per_conn: u64| crate::rss::Span {
        before: before << 20,
        peak: (before + per_conn * conns as u64) << 20,
        after: (before + 1) << 20,
    };
    (peer != "direct").then(|| crate::rss::Memory {
        server: Some(span(20, if peer == "konnq" { 1 } else { 2 })),
        agent: Some(span(10, 0)),
        settle_secs: 12.0,
    })
}

fn upload(gbps: f64) -> UploadFigures {
    let window = (gbps * 5.0e9 / 8.0) as u64;
    UploadFigures {
        wrote_in_window: window + 1000,
        wrote: window * 6 / 5,
        arrived_at_stop: window * 6 / 5 - (8 << 20),
        arrived_after_close: window * 6 / 5,
        capped: false,
    }
}

/// konnq one-way x1 by component: server 1.0 s/GB (crypto 0.25, QUIC 0.75
/// from 100 samples), agent 0.5 s/GB all in the kernel's network stack.
fn components() -> CellComponents {
    use crate::perf::{classify, ComponentCosts, ProcessProfile};
    let profile = |rows: &[(&str, &str, u64)]| {
        let mut p = ProcessProfile::default();
        for &(dso, sym, n) in rows {
            p.samples += n;
            *p.by_component.entry(classify(dso, sym)).or_default() += n;
        }
        p
    };
    let server = profile(&[("konnq-server", "[.] aes_gcm_dec", 25), ("konnq-server", "[.] quinn_proto::x", 75)]);
    let agent = profile(&[("[kernel.kallsyms]", "[k] udp_sendmsg", 40)]);
    CellComponents {
        recordings: ["s.perf.data".into(), "a.perf.data".into()],
        server: ComponentCosts::new(&server, 1.0),
        agent: ComponentCosts::new(&agent, 0.5),
    }
}

pub fn sample_report() -> Report {
    let mut r = Report::default();
    r.meta.frontend = "grpc".into();
    for (peer, gbps) in [("konnq", 3.0), ("upstream", 1.0), ("direct", 20.0)] {
        r.peers.push(PeerInfo { name: peer.into(), available: true, detail: format!("{peer} binaries") });
        for mode in ["oneway", "echo", "upload"] {
            for conns in [1, 8, 64] {
                r.throughput.push(ThroughputResult {
                    peer: peer.into(),
                    mode: mode.into(),
                    conns,
                    secs: 5.0,
                    bytes: (gbps * 5.0e9 / 8.0) as u64,
                    gbit_per_s: gbps,
                    server_cpu_secs: (peer != "direct").then_some(2.0),
                    agent_cpu_secs: (peer != "direct").then_some(2.0),
                    cpu_secs_per_gb: (peer != "direct").then_some(4.0 / (gbps * 5.0 / 8.0)),
                    errors: 0,
                    cpu: cpu(peer),
                    memory: memory(peer, conns),
                    upload: (mode == "upload").then(|| upload(gbps)),
                    components: (peer == "konnq" && mode == "oneway" && conns == 1).then(components),
                    spread: ConnSpread::of(&(0..conns as u64).map(|i| 100 + i % 2 * 20).collect::<Vec<_>>()),
                });
            }
        }
        let base = match peer {
            "konnq" => 90,
            "upstream" => 100,
            _ => 20,
        };
        r.latency.push(LatencyResult {
            peer: peer.into(),
            rate: 2000.0,
            conns: 32,
            request_bytes: 1024,
            secs: 10.0,
            requests: 20_000,
            errors: 0,
            achieved_rate: 1999.0,
            latency: latency(base),
            schedule_lag: latency(5),
            round_p99_us: Vec::new(),
            cpu: cpu(peer),
        });
        r.dial.push(DialResult {
            peer: peer.into(),
            concurrency: 32,
            rate: None,
            secs: 10.0,
            dials: 50_000,
            errors: 0,
            dials_per_s: 5000.0,
            dial: latency(base),
            connect: latency(50),
            total: latency(base * 3),
            cpu: cpu(peer),
            client: "konnq-loadtest (Rust)".into(),
        });
    }
    for (peer, per_conn) in [("konnq", 20.0 * 1024.0), ("upstream", 60.0 * 1024.0)] {
        r.scale.push(ScaleResult {
            peer: peer.into(),
            target_conns: 10_000,
            reached: 10_000,
            ramp_secs: 4.0,
            errors: 0,
            server_before: proc(10, 20),
            server_after: proc(110, 10_020),
            agent_before: proc(10, 20),
            agent_after: proc(110, 10_020),
            server_rss_per_conn: per_conn / 2.0,
            agent_rss_per_conn: per_conn / 2.0,
            rss_bytes_per_conn: per_conn,
            fds_per_conn: 2.0,
            server_closed: Some(proc(20, 20)),
            agent_closed: Some(proc(20, 20)),
        });
        let samples: Vec<SoakSample> = (0..60)
            .map(|t| SoakSample {
                t: t as f64,
                server: proc(10, 20 + if peer == "konnq" { t / 10 } else { 0 }),
                agent: proc(10, 20),
            })
            .collect();
        let series = |f: fn(&SoakSample) -> f64| samples.iter().map(|s| (s.t, f(s))).collect::<Vec<_>>();
        let growth = SoakGrowth {
            total_rss: growth(&series(|s| (s.server.rss_bytes + s.agent.rss_bytes) as f64), 10.0),
            total_fds: growth(&series(|s| (s.server.fds + s.agent.fds) as f64), 10.0),
            ..Default::default()
        };
        r.soak.push(SoakResult {
            peer: peer.into(),
            secs: 600.0,
            warmup_secs: 10.0,
            dial_rate: 300.0,
            streams: 8,
            dials: 180_000,
            dial_errors: 0,
            dials_skipped: 0,
            requests: 96_000,
            request_errors: 0,
            dial: latency(100),
            samples,
            growth,
        });
    }
    r
}
