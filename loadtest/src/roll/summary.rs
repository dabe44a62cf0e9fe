//! The text summary of a roll run (`summary.txt`, and stdout).

use std::collections::BTreeMap;
use std::fmt::Write;

use super::load::DialRecord;
use super::report::RollReport;
use crate::report::table::table;

/// Failed dials listed in the summary (per peer).
const MAX_SUMMARY_FAILURES: usize = 12;

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "never".to_owned(), |s| format!("{s:.2}"))
}

fn reasons(m: &BTreeMap<String, u64>) -> String {
    m.iter().map(|(r, n)| format!("{n}× {r}")).collect::<Vec<_>>().join("; ")
}

/// The text summary.
pub fn render(r: &RollReport) -> String {
    let mut out = String::new();
    let s = &r.meta.settings;
    let _ = writeln!(
        out,
        "ROLLING RESTARTS AND CRASHES — {} servers behind nginx, {} agents; {} webhook-like dials/s per server \
         (open loop){}",
        s["servers"],
        s["servers"],
        s["rate"],
        if r.meta.smoke { " — SMOKE RUN, figures not meaningful" } else { "" }
    );
    out += "Rule: while a server restarts (SIGTERM or SIGKILL until all its agents are back), its own client \
            sends no new dials (its apiserver restarts with it); dials already in flight must finish.\n\n";
    for p in &r.peers {
        let _ = writeln!(out, "{:<9} {}{}", p.name, if p.available { "" } else { "UNAVAILABLE: " }, p.detail);
    }
    out += "\nDIALS PER PHASE (a dial counts in the phase it began in)\n";
    let mut rows = Vec::new();
    for p in &r.results {
        for f in &p.phases {
            rows.push(vec![
                p.peer.clone(),
                f.phase.clone(),
                format!("{:.1}", f.secs),
                f.dials.to_string(),
                f.failed.to_string(),
                format!("{} / {}", f.not_sent_paused, f.not_sent_capped),
                reasons(&f.reasons),
            ]);
        }
    }
    out += &table(&["peer", "phase", "secs", "dials", "failed", "not sent paused/cap", "failure reasons"], &rows);
    out += "\nROLLS — SIGTERM → exit (SIGKILL after the grace period if still running); started again → back \
            (agent: holds every server; server: has every agent)\n";
    let mut rows = Vec::new();
    for p in &r.results {
        for (what, steps) in [("agent", &p.agent_rolls), ("server", &p.server_rolls)] {
            for st in steps {
                rows.push(vec![
                    p.peer.clone(),
                    format!(
                        "{what} {}",
                        if what == "server" { format!("s{}", st.index) } else { st.index.to_string() }
                    ),
                    format!(
                        "{:.2}{}",
                        st.stopped.secs,
                        if st.stopped.killed_after_grace { " (SIGKILL after grace)" } else { "" }
                    ),
                    secs(st.back_secs),
                    st.all_servers_see_it_secs.map_or_else(String::new, |v| format!("{v:.2}")),
                    st.paused_secs.map_or_else(String::new, |v| format!("{v:.2}")),
                    st.failed_dials.to_string(),
                ]);
            }
        }
    }
    out += &table(
        &["peer", "rolled", "stop s", "back s", "all servers see it s", "client paused s", "failed dials"],
        &rows,
    );
    out += &render_crashes(r);
    for p in &r.results {
        let failed: Vec<&DialRecord> = p.failed_dials.iter().take(MAX_SUMMARY_FAILURES).collect();
        if failed.is_empty() {
            continue;
        }
        let total: u64 = p.phases.iter().map(|f| f.failed).sum();
        let _ = writeln!(out, "\n{} FAILED DIALS (first {} of {total}; all in dials.csv)", p.peer, failed.len());
        for d in failed {
            let _ = writeln!(
                out,
                "  {:>8.3}s → {:>8.3}s  {:<12} s{}  {}",
                d.start,
                d.end,
                d.phase.name(),
                d.client,
                d.error.as_deref().unwrap_or("")
            );
        }
    }
    if !r.errors.is_empty() {
        out += "\nERRORS\n";
        for e in &r.errors {
            let _ = writeln!(out, "  {} {}: {}", e.peer, e.scenario, e.error);
        }
    }
    out
}

fn render_crashes(r: &RollReport) -> String {
    let mut out = String::from(
        "\nSERVER CRASH — one server SIGKILLed and started again at once; its agents polled every 10 ms\n",
    );
    let rows: Vec<Vec<String>> = r
        .results
        .iter()
        .filter_map(|p| {
            let c = p.crash_server.as_ref()?;
            Some(vec![
                p.peer.clone(),
                format!("s{}", c.server),
                secs(c.first_agent_secs),
                secs(c.all_agents_secs),
                format!("{} / {}", c.in_flight_failed, c.in_flight),
                c.others_failed.to_string(),
            ])
        })
        .collect();
    out += &table(
        &["peer", "killed", "restart → 1st agent s", "→ all agents s", "its in-flight dials failed", "others failed"],
        &rows,
    );
    out += "\nAGENT CRASH — one agent SIGKILLed, not started again\n";
    let rows: Vec<Vec<String>> = r
        .results
        .iter()
        .filter_map(|p| {
            let c = p.crash_agent.as_ref()?;
            let on_it = c.held_ended + c.held_hung;
            Some(vec![
                p.peer.clone(),
                secs(c.servers_noticed_secs),
                format!("{on_it} of {}", c.held),
                match (c.held_end_min_secs, c.held_end_max_secs) {
                    (Some(a), Some(b)) => format!("{a:.2}–{b:.2}"),
                    _ => "-".into(),
                },
                c.held_hung.to_string(),
                format!(
                    "{} / {}{}",
                    c.in_flight_failed,
                    c.in_flight,
                    c.in_flight_last_end_secs.map_or_else(String::new, |s| format!(" (last +{s:.2})"))
                ),
                format!(
                    "{} / {}{}",
                    c.next_failed,
                    c.next_dials,
                    c.next_last_failure_secs.map_or_else(String::new, |s| format!(" (last begun +{s:.2})"))
                ),
            ])
        })
        .collect();
    out += &table(
        &[
            "peer",
            "servers noticed s",
            "held conns on it",
            "they ended after s",
            &format!("hung (to the end of {} s)", r.meta.settings["observe_secs"]),
            "in-flight dials failed",
            "next dials failed",
        ],
        &rows,
    );
    for p in &r.results {
        if let Some(c) = &p.crash_agent {
            for (what, m) in [("held connections ended", &c.held_reasons), ("next dials failed", &c.next_reasons)] {
                if !m.is_empty() {
                    let _ = writeln!(out, "  {} {what}: {}", p.peer, reasons(m));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::cluster::Stopped;
    use super::super::load::Phase;
    use super::super::report::tests::records;
    use super::super::report::*;
    use super::*;

    #[test]
    fn summary_names_every_section_and_the_rule() {
        let mut r = RollReport::default();
        r.meta.settings = serde_json::json!({"servers": 3, "rate": 50.0, "observe_secs": 10.0});
        let recs = records();
        r.results.push(PeerRoll {
            peer: "konnq".into(),
            phases: phase_figures(&recs, &[], &Phase::ALL.map(|p| (p, 0.0, 1.0))),
            agent_rolls: vec![RollStep { index: 0, back_secs: Some(0.4), ..RollStep::default() }],
            server_rolls: vec![RollStep {
                index: 1,
                stopped: Stopped { secs: 15.0, killed_after_grace: true },
                ..RollStep::default()
            }],
            crash_server: Some(CrashServer { all_agents_secs: Some(0.3), ..CrashServer::default() }),
            crash_agent: Some(crash_agent(0, 2.0, 10.0, &recs, &[])),
            failed_dials: first_failures(&recs),
            ..PeerRoll::default()
        });
        let text = render(&r);
        for want in [
            "its own client sends no new dials",
            "agent-roll",
            "1× DIAL_RSP error: No agent available",
            "SIGKILL after grace",
            "server s1",
            "SERVER CRASH",
            "AGENT CRASH",
            "konnq FAILED DIALS (first 3 of 3;",
        ] {
            assert!(text.contains(want), "{want:?} missing:\n{text}");
        }
        let mut csv = String::new();
        dials_csv("konnq", &recs, &mut csv);
        assert_eq!(csv.lines().count(), 1 + recs.len());
        assert!(csv.contains("konnq,s1,agent-roll,1.1000,3.0000,false,\"timeout waiting for DIAL_RSP\""), "{csv}");
    }
}
