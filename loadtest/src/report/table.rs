//! The plain-text summary printed at the end of a run.

use std::fmt::Write;

use super::model::{Report, Verdict};
use crate::stats::ratio;

/// Lays out rows under headers, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, c) in cells.enumerate() {
            let pad = widths.get(i).copied().unwrap_or(0).saturating_sub(c.chars().count());
            let _ = write!(s, "{c}{}  ", " ".repeat(pad));
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out += &line(&mut row.iter().map(String::as_str));
    }
    out
}

/// Header of the CPU columns.
const CPU: &str = "CPU cores runner/target/server/agent";

fn f(v: f64, digits: usize) -> String {
    format!("{v:.digits$}")
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| f(v, digits))
}

fn times(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}x"))
}

/// "runner/target/server/agent" cores.
fn cores(c: &crate::report::CpuSplit) -> String {
    format!("{:.2}/{:.2}/{}/{}", c.runner, c.target, opt(c.server, 2), opt(c.agent, 2))
}

fn kib(bytes: f64) -> String {
    format!("{:.1}", bytes / 1024.0)
}

/// The whole summary.
pub fn render(r: &Report) -> String {
    let m = &r.meta;
    let mut out = format!(
        "konnq-loadtest {} {} | {} CPUs ({}) | kernel {} | load {} → {} | frontend {} | link {}{}\n",
        m.revision,
        m.date_utc,
        m.machine.nproc,
        m.machine.cpu_model,
        m.machine.kernel,
        m.loadavg_start,
        m.loadavg_end,
        m.frontend,
        if m.link.is_empty() { "loopback" } else { &m.link },
        if m.smoke { " | SMOKE (tiny sizes, figures meaningless)" } else { "" }
    );
    for p in &r.peers {
        let state = if p.available { "" } else { "UNAVAILABLE: " };
        let _ = writeln!(out, "  {:<9} {state}{}", p.name, p.detail);
    }
    let sections = [
        throughput(r),
        throughput_memory(r),
        throughput_components(r),
        upload(r),
        latency(r),
        dial(r),
        scale(r),
        soak(r),
    ];
    for section in sections.into_iter().chain([targets(r), errors(r)]) {
        if !section.is_empty() {
            out += "\n";
            out += &section;
        }
    }
    out
}

fn gbps(r: &Report, peer: &str, mode: &str, conns: usize) -> Option<f64> {
    r.throughput.iter().find(|t| t.peer == peer && t.mode == mode && t.conns == conns).map(|t| t.gbit_per_s)
}

/// The tunnels and baselines with cells in `r`, in column order; konnq over
/// its TCP transport only when the run measured it.
fn throughput_peers(r: &Report) -> Vec<&'static str> {
    ["konnq", "konnq-tcp", "upstream", "direct"]
        .into_iter()
        .filter(|p| *p != "konnq-tcp" || r.throughput.iter().any(|t| t.peer == *p))
        .collect()
}

fn throughput(r: &Report) -> String {
    let mut keys: Vec<(String, usize)> = Vec::new();
    for t in &r.throughput {
        if !keys.contains(&(t.mode.clone(), t.conns)) {
            keys.push((t.mode.clone(), t.conns));
        }
    }
    if keys.is_empty() {
        return String::new();
    }
    let peers = throughput_peers(r);
    let find = |peer: &str, mode: &str, conns: usize| {
        r.throughput.iter().find(|t| t.peer == peer && t.mode == mode && t.conns == conns)
    };
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|(mode, conns)| {
            let cell = |peer: &str| {
                find(peer, mode, *conns).map_or_else(
                    || "-".to_owned(),
                    |t| match t.cpu_secs_per_gb {
                        Some(c) => format!("{:.2} ({c:.2} s/GB)", t.gbit_per_s),
                        None => f(t.gbit_per_s, 2),
                    },
                )
            };
            let k = gbps(r, "konnq", mode, *conns).unwrap_or(0.0);
            let mut row = vec![mode.clone(), conns.to_string()];
            row.extend(peers.iter().map(|p| cell(p)));
            row.push(times(ratio(k, gbps(r, "upstream", mode, *conns))));
            row
        })
        .collect();
    let cpu_rows: Vec<Vec<String>> = keys
        .iter()
        .map(|(mode, conns)| {
            let mut row = vec![mode.clone(), conns.to_string()];
            row.extend(peers.iter().map(|p| find(p, mode, *conns).map_or_else(|| "-".to_owned(), |t| cores(&t.cpu))));
            row
        })
        .collect();
    let spread_rows: Vec<Vec<String>> = keys
        .iter()
        .filter(|(_, conns)| *conns > 1)
        .map(|(mode, conns)| {
            let mut row = vec![mode.clone(), conns.to_string()];
            row.extend(peers.iter().map(|p| match find(p, mode, *conns).and_then(|t| t.spread) {
                Some(s) => format!("{:.2}-{:.2} ({} stalled)", s.min_of_mean, s.max_of_mean, s.stalled),
                None => "-".to_owned(),
            }));
            row
        })
        .collect();
    let mut headers = vec!["mode", "conns"];
    headers.extend(&peers);
    let cpu_headers = headers.clone();
    headers.push("konnq/upstream");
    let mut out = "THROUGHPUT  Gbit/s (server + agent CPU seconds per GB moved)\n".to_owned()
        + &table(&headers, &rows)
        + &format!("\nTHROUGHPUT {CPU}\n")
        + &table(&cpu_headers, &cpu_rows);
    if !spread_rows.is_empty() {
        out += "\nTHROUGHPUT PER CONNECTION  slowest-fastest connection's bytes / the mean (connections that moved nothing)\n";
        out += &table(&cpu_headers, &spread_rows);
    }
    out
}

fn mib(bytes: u64) -> String {
    format!("{:.0}", bytes as f64 / f64::from(1 << 20))
}

/// Server + agent RSS per cell: before / peak / after, MiB.
fn throughput_memory(r: &Report) -> String {
    let mut keys: Vec<(String, usize)> = Vec::new();
    for t in r.throughput.iter().filter(|t| t.memory.is_some()) {
        if !keys.contains(&(t.mode.clone(), t.conns)) {
            keys.push((t.mode.clone(), t.conns));
        }
    }
    let Some(settle) = r.throughput.iter().find_map(|t| t.memory).map(|m| m.settle_secs) else {
        return String::new();
    };
    let peers: Vec<&str> = throughput_peers(r).into_iter().filter(|p| *p != "direct").collect();
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|(mode, conns)| {
            let cell = |peer: &str| {
                let t = r.throughput.iter().find(|t| t.peer == peer && &t.mode == mode && t.conns == *conns);
                match t.and_then(|t| t.memory?.total()) {
                    Some(s) => format!("{}/{}/{} (+{})", mib(s.before), mib(s.peak), mib(s.after), mib(s.growth())),
                    None => "-".to_owned(),
                }
            };
            let mut row = vec![mode.clone(), conns.to_string()];
            row.extend(peers.iter().map(|p| cell(p)));
            row
        })
        .collect();
    let mut headers = vec!["mode", "conns"];
    headers.extend(&peers);
    format!("THROUGHPUT MEMORY  server + agent RSS MiB before/peak/after (peak growth); after = {settle:.0} s after closing\n")
        + &table(&headers, &rows)
}

/// With `--perf`: each cell's server + agent CPU per GB by component.
fn throughput_components(r: &Report) -> String {
    use crate::perf::Component;
    let cells: Vec<&crate::report::ThroughputResult> = r.throughput.iter().filter(|t| t.components.is_some()).collect();
    if cells.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = cells
        .iter()
        .flat_map(|t| {
            let c = t.components.as_ref().expect("filtered");
            let row = |who: &str, f: &dyn Fn(Component) -> f64, samples: u64| {
                let mut row = vec![t.peer.clone(), t.mode.clone(), t.conns.to_string(), who.to_owned()];
                row.push(format!("{:.2}", Component::ALL.iter().map(|&k| f(k)).sum::<f64>()));
                row.extend(Component::ALL.iter().map(|&k| format!("{:.2}", f(k))));
                row.push(samples.to_string());
                row
            };
            [
                row("server", &|k| c.server.get(k), c.server.samples),
                row("agent", &|k| c.agent.get(k), c.agent.samples),
                row("both", &|k| c.server.get(k) + c.agent.get(k), c.server.samples + c.agent.samples),
            ]
        })
        .collect();
    let mut headers = vec!["peer", "mode", "conns", "process", "s/GB"];
    headers.extend(Component::ALL.iter().map(|c| c.heading()));
    headers.push("samples");
    "THROUGHPUT CPU BY COMPONENT  CPU seconds per GB (perf self time by function; k: = kernel)\n".to_owned()
        + &table(&headers, &rows)
}

/// Upload accounting: what the client wrote against what the target read.
fn upload(r: &Report) -> String {
    let rows: Vec<Vec<String>> = r
        .throughput
        .iter()
        .filter_map(|t| Some((t, t.upload?)))
        .map(|(t, u)| {
            let pct = |n: u64| format!("{} ({:.1}%)", mib(n), 100.0 * n as f64 / (u.wrote.max(1)) as f64);
            vec![
                t.peer.clone(),
                t.conns.to_string(),
                mib(u.wrote_in_window),
                mib(t.bytes),
                mib(u.wrote),
                pct(u.in_flight_at_stop()),
                pct(u.lost()),
                if u.capped { "capped".to_owned() } else { String::new() },
            ]
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    "UPLOAD  MiB written by the client vs read by the target\n".to_owned()
        + &table(
            &[
                "peer",
                "conns",
                "wrote (window)",
                "arrived (window)",
                "wrote (all)",
                "not arrived at stop",
                "never arrived",
                "",
            ],
            &rows,
        )
}

fn latency(r: &Report) -> String {
    let Some(first) = r.latency.first() else { return String::new() };
    let rows: Vec<Vec<String>> = r
        .latency
        .iter()
        .map(|l| {
            let s = &l.latency;
            vec![
                l.peer.clone(),
                f(s.p50_us, 0),
                f(s.p90_us, 0),
                f(s.p99_us, 0),
                f(s.p999_us, 0),
                f(s.max_us, 0),
                f(l.achieved_rate, 0),
                l.errors.to_string(),
                f(l.schedule_lag.p99_us, 0),
                match l.round_p99_us.len() {
                    0 | 1 => "-".to_owned(),
                    _ => l.round_p99_us.iter().map(|p| f(*p, 0)).collect::<Vec<_>>().join("/"),
                },
                cores(&l.cpu),
            ]
        })
        .collect();
    format!(
        "LATENCY  {} B request/response at {} req/s on {} conns, open loop, µs (coordinated omission corrected)\n",
        first.request_bytes, first.rate, first.conns
    ) + &table(
        &["peer", "p50", "p90", "p99", "p99.9", "max", "req/s", "errors", "send lag p99", "p99 by round", CPU],
        &rows,
    )
}

fn dial(r: &Report) -> String {
    let Some(first) = r.dial.first() else { return String::new() };
    let rows: Vec<Vec<String>> = r
        .dial
        .iter()
        .map(|d| {
            vec![
                d.peer.clone(),
                f(d.dials_per_s, 0),
                f(d.dial.p50_us, 0),
                f(d.dial.p90_us, 0),
                f(d.dial.p99_us, 0),
                f(d.dial.p999_us, 0),
                f(d.connect.p99_us, 0),
                f(d.total.p99_us, 0),
                d.errors.to_string(),
                cores(&d.cpu),
            ]
        })
        .collect();
    let how = match first.rate {
        Some(rate) => format!("open loop, {rate} new connections/s"),
        None => format!("concurrency {}", first.concurrency),
    };
    let client = if first.client.is_empty() { String::new() } else { format!("; client {}", first.client) };
    format!("DIAL  {how}, one small exchange per connection; DIAL_REQ→DIAL_RSP µs{client}; CPU runner = the client\n")
        + &table(
            &["peer", "dials/s", "p50", "p90", "p99", "p99.9", "connect p99", "whole conn p99", "errors", CPU],
            &rows,
        )
}

fn scale(r: &Report) -> String {
    if r.scale.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = r
        .scale
        .iter()
        .map(|s| {
            vec![
                s.peer.clone(),
                format!("{}/{}", s.reached, s.target_conns),
                f(s.ramp_secs, 1),
                kib(s.server_rss_per_conn),
                kib(s.agent_rss_per_conn),
                kib(s.rss_bytes_per_conn),
                f(s.fds_per_conn, 2),
                s.errors.to_string(),
            ]
        })
        .collect();
    "SCALE  idle proxied connections; RSS growth per connection, KiB\n".to_owned()
        + &table(&["peer", "reached", "ramp s", "server", "agent", "total", "fds/conn", "errors"], &rows)
}

fn soak(r: &Report) -> String {
    if r.soak.is_empty() {
        return String::new();
    }
    let g = |v: &Option<crate::stats::Growth>, scale: f64| {
        v.as_ref().map_or_else(
            || "-".to_owned(),
            |g| format!("{:.1} → {:.1} ({:+.1}%)", g.first / scale, g.last / scale, g.growth_pct),
        )
    };
    let rows: Vec<Vec<String>> = r
        .soak
        .iter()
        .map(|s| {
            vec![
                s.peer.clone(),
                f(s.secs, 0),
                s.dials.to_string(),
                (s.dial_errors + s.request_errors).to_string(),
                f(s.dial.p99_us, 0),
                g(&s.growth.total_rss, 1024.0 * 1024.0),
                g(&s.growth.total_fds, 1.0),
            ]
        })
        .collect();
    "SOAK  steady mixed load; server + agent, first vs last window after warm-up\n".to_owned()
        + &table(&["peer", "secs", "dials", "errors", "dial p99 µs", "RSS MiB", "fds"], &rows)
}

fn targets(r: &Report) -> String {
    if r.targets.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = r
        .targets
        .iter()
        .map(|t| {
            let verdict = match t.verdict {
                Verdict::Met => "MET",
                Verdict::Missed => "MISSED",
                Verdict::NotMeasured => "not measured",
            };
            vec![
                t.target.clone(),
                t.konnq.map_or_else(|| "-".to_owned(), |v| format!("{v:.2} {}", t.unit)),
                opt(t.upstream, 2),
                verdict.to_owned(),
                t.note.clone(),
            ]
        })
        .collect();
    "TARGETS (konnq)\n".to_owned() + &table(&["target", "konnq", "upstream", "verdict", "note"], &rows)
}

fn errors(r: &Report) -> String {
    if r.errors.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> =
        r.errors.iter().map(|e| vec![e.scenario.clone(), e.peer.clone(), e.error.clone()]).collect();
    "ERRORS\n".to_owned() + &table(&["scenario", "peer", "error"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::testdata::sample_report;

    #[test]
    fn table_aligns_columns() {
        let t = table(&["a", "bbb"], &[vec!["long".into(), "x".into()], vec!["y".into(), "z".into()]]);
        assert_eq!(t, "a     bbb\nlong  x\ny     z\n");
    }

    #[test]
    fn renders_every_section() {
        let mut r = sample_report();
        r.targets = crate::report::targets::evaluate(&r);
        r.errors.push(crate::report::model::ScenarioError {
            scenario: "dial".into(),
            peer: "upstream".into(),
            error: "boom".into(),
        });
        let text = render(&r);
        for section in ["THROUGHPUT", "LATENCY", "DIAL", "SCALE", "SOAK", "TARGETS", "ERRORS", "boom"] {
            assert!(text.contains(section), "missing {section} in\n{text}");
        }
        // One-way, 1 connection: konnq 3.00 vs upstream 1.00.
        let row = text.lines().find(|l| l.starts_with("oneway  1 ")).expect("oneway row");
        assert!(row.contains("3.00x"), "{row}");
        assert!(text.contains("MISSED") && text.contains("MET"));
        // Sample konnq upload x64: server 20 + 64 MiB at the peak, agent 10.
        let memory = text.split("THROUGHPUT MEMORY").nth(1).expect("memory section");
        let mem = memory.lines().find(|l| l.starts_with("upload  64 ")).expect("upload memory row");
        assert!(mem.contains("30/94/32 (+64)"), "{mem}");
        let up = text.lines().find(|l| l.starts_with("konnq     64 ")).expect("upload accounting row");
        assert!(up.contains("(0.0%)") && up.contains("(0.4%)"), "{up}");
        let spread = text.split("THROUGHPUT PER CONNECTION").nth(1).expect("spread section");
        let row = spread.lines().find(|l| l.starts_with("oneway  64 ")).expect("spread row");
        // 64 connections alternating 100 and 120 bytes: mean 110.
        assert!(row.contains("0.91-1.09 (0 stalled)"), "{row}");
        let by = text.split("THROUGHPUT CPU BY COMPONENT").nth(1).expect("component section");
        let cols = |who: &str| -> Vec<String> {
            let line = by.lines().find(|l| l.contains(&format!(" {who} "))).unwrap_or_else(|| panic!("{who} row"));
            line.split_whitespace().map(str::to_owned).collect()
        };
        // peer mode conns process s/GB crypto copies QUIC ... k:net ... samples
        assert_eq!(cols("server")[4..8], ["1.00", "0.25", "0.00", "0.75"]);
        assert_eq!(cols("agent")[4], "0.50");
        assert_eq!(cols("agent")[14], "0.50", "k:net");
        assert_eq!(cols("both")[4], "1.50");
        assert_eq!(cols("both").last().map(String::as_str), Some("140"));
    }

    #[test]
    fn konnq_over_tcp_gets_its_own_column_when_measured() {
        let mut r = sample_report();
        let without = render(&r);
        assert!(!without.contains("konnq-tcp"), "no column for a peer the run did not measure");
        let mut tcp =
            r.throughput.iter().find(|t| t.peer == "konnq" && t.mode == "oneway" && t.conns == 1).cloned().unwrap();
        tcp.peer = "konnq-tcp".into();
        tcp.gbit_per_s = 2.5;
        r.throughput.push(tcp);
        let text = render(&r);
        let header = text.lines().find(|l| l.starts_with("mode ") && l.contains("konnq/upstream")).expect("header");
        let cols: Vec<&str> = header.split_whitespace().collect();
        assert_eq!(cols, ["mode", "conns", "konnq", "konnq-tcp", "upstream", "direct", "konnq/upstream"]);
        let row = text.lines().find(|l| l.starts_with("oneway  1 ")).expect("oneway row");
        assert!(row.contains("2.50 ("), "the konnq-tcp cell: {row}");
        let memory = text.split("THROUGHPUT MEMORY").nth(1).expect("memory section");
        assert!(memory.lines().nth(1).is_some_and(|h| h.contains("konnq-tcp")), "{memory}");
    }

    #[test]
    fn empty_report_renders_header_only() {
        let text = render(&Report::default());
        assert_eq!(text.lines().count(), 1);
    }
}
