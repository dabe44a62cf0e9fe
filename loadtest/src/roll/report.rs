//! The roll benchmark's results: the data model (`results.json`) and the
//! figures computed from the dial records (pure functions); the text
//! summary is [`super::summary`].

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cluster::Stopped;
use super::load::{DialRecord, Held, NotSent, Phase};
use crate::report::model::{Machine, PeerInfo, ScenarioError};

/// Failed dials listed one by one in results.json (per peer); all of them are in dials.csv.
const MAX_LISTED: usize = 200;
/// A held connection with no answer since this long after the kill hung.
pub const HUNG_AFTER: f64 = 1.0;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RollReport {
    pub meta: RollMeta,
    pub peers: Vec<PeerInfo>,
    pub results: Vec<PeerRoll>,
    pub errors: Vec<ScenarioError>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RollMeta {
    pub date_utc: String,
    pub command: Vec<String>,
    pub machine: Machine,
    pub revision: String,
    pub smoke: bool,
    pub settings: serde_json::Value,
    pub wall_secs: f64,
    pub loadavg_start: String,
    pub loadavg_end: String,
}

/// Everything measured for one peer. Times are seconds; `at` fields count
/// from when the clients started.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeerRoll {
    pub peer: String,
    /// Start of the processes until every server had every agent.
    pub start_secs: f64,
    pub phases: Vec<PhaseFigures>,
    pub agent_rolls: Vec<RollStep>,
    pub server_rolls: Vec<RollStep>,
    pub crash_server: Option<CrashServer>,
    pub crash_agent: Option<CrashAgent>,
    /// The first failed dials, in the order they began.
    pub failed_dials: Vec<DialRecord>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseFigures {
    pub phase: String,
    pub secs: f64,
    /// Dials that began in the phase.
    pub dials: u64,
    pub failed: u64,
    /// Failure reason → count.
    pub reasons: BTreeMap<String, u64>,
    /// Due but not sent: the client's server was restarting (the rule).
    pub not_sent_paused: u64,
    /// Due but not sent: the client had its most dials in flight.
    pub not_sent_capped: u64,
}

/// One agent or server stopped and started again.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RollStep {
    pub index: usize,
    /// When the SIGTERM went out.
    pub at: f64,
    pub stopped: Stopped,
    /// Start → back: an agent holds a connection to every server; a server has every agent.
    pub back_secs: Option<f64>,
    /// (agents) start → every server counts every agent again.
    pub all_servers_see_it_secs: Option<f64>,
    /// (servers) how long its client sent no new dials.
    pub paused_secs: Option<f64>,
    /// Failed dials that ended from this step's SIGTERM until the next step's.
    pub failed_dials: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CrashServer {
    pub server: usize,
    /// When the SIGKILL went out.
    pub at: f64,
    /// Its client's dials in flight at the SIGKILL, and how many failed.
    pub in_flight: u64,
    pub in_flight_failed: u64,
    /// Restart → its first agent back / every agent back.
    pub first_agent_secs: Option<f64>,
    pub all_agents_secs: Option<f64>,
    /// Failed dials of the other clients from the SIGKILL until every agent was back.
    pub others_failed: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CrashAgent {
    pub agent: usize,
    pub at: f64,
    /// SIGKILL → every server counts one agent fewer (`None`: not within the observation).
    pub servers_noticed_secs: Option<f64>,
    pub observe_secs: f64,
    /// Long-lived connections open across the kill (request every 100 ms).
    pub held: u64,
    /// Of those, the ones that were on the killed agent: ended with an error, or hung.
    pub held_ended: u64,
    pub held_hung: u64,
    /// SIGKILL → each ended one's error at the client.
    pub held_end_min_secs: Option<f64>,
    pub held_end_max_secs: Option<f64>,
    pub held_reasons: BTreeMap<String, u64>,
    /// Webhook dials in flight at the SIGKILL (all clients), how many failed, and when the last one failed.
    pub in_flight: u64,
    pub in_flight_failed: u64,
    pub in_flight_last_end_secs: Option<f64>,
    /// Dials begun after the SIGKILL, how many failed, the last failed one's start after the kill.
    pub next_dials: u64,
    pub next_failed: u64,
    pub next_last_failure_secs: Option<f64>,
    pub next_reasons: BTreeMap<String, u64>,
}

/// Dial figures per phase; `spans` gives each phase's (start, end).
pub fn phase_figures(
    records: &[DialRecord],
    not_sent: &[(usize, Phase, NotSent)],
    spans: &[(Phase, f64, f64)],
) -> Vec<PhaseFigures> {
    let mut out = Vec::new();
    for &(phase, from, to) in spans {
        let mut f = PhaseFigures { phase: phase.name().into(), secs: to - from, ..PhaseFigures::default() };
        for r in records.iter().filter(|r| r.phase == phase) {
            f.dials += 1;
            if let Some(e) = &r.error {
                f.failed += 1;
                *f.reasons.entry(e.clone()).or_default() += 1;
            }
        }
        for (_, _, n) in not_sent.iter().filter(|n| n.1 == phase) {
            f.not_sent_paused += n.paused;
            f.not_sent_capped += n.capped;
        }
        out.push(f);
    }
    out
}

/// Failed dials that ended in [from, to).
pub fn failed_between(records: &[DialRecord], from: f64, to: f64) -> u64 {
    records.iter().filter(|r| r.error.is_some() && r.end >= from && r.end < to).count() as u64
}

/// Dials in flight at `at` (of `client`, or all): (count, failed, last failure's end − at).
pub fn in_flight_at(records: &[DialRecord], at: f64, client: Option<usize>) -> (u64, u64, Option<f64>) {
    let hit: Vec<&DialRecord> =
        records.iter().filter(|r| r.start <= at && r.end > at && client.is_none_or(|c| r.client == c)).collect();
    let failed: Vec<&&DialRecord> = hit.iter().filter(|r| r.error.is_some()).collect();
    let last = failed.iter().map(|r| r.end - at).reduce(f64::max);
    (hit.len() as u64, failed.len() as u64, last)
}

/// The held connections' and the dials' figures around an agent's SIGKILL at `at`.
pub fn crash_agent(agent: usize, at: f64, observe: f64, records: &[DialRecord], held: &[Held]) -> CrashAgent {
    let mut c = CrashAgent { agent, at, observe_secs: observe, held: held.len() as u64, ..CrashAgent::default() };
    let mut ends = Vec::new();
    for h in held {
        match (h.ended, &h.error) {
            (Some(end), Some(e)) => {
                c.held_ended += 1;
                ends.push(end - at);
                *c.held_reasons.entry(e.clone()).or_default() += 1;
            }
            _ if h.last_ok.is_none_or(|t| t < at + HUNG_AFTER) => c.held_hung += 1,
            _ => {}
        }
    }
    c.held_end_min_secs = ends.iter().copied().reduce(f64::min);
    c.held_end_max_secs = ends.iter().copied().reduce(f64::max);
    (c.in_flight, c.in_flight_failed, c.in_flight_last_end_secs) = in_flight_at(records, at, None);
    for r in records.iter().filter(|r| r.start > at) {
        c.next_dials += 1;
        if let Some(e) = &r.error {
            c.next_failed += 1;
            *c.next_reasons.entry(e.clone()).or_default() += 1;
            c.next_last_failure_secs = Some(c.next_last_failure_secs.unwrap_or(0.0).max(r.start - at));
        }
    }
    c
}

/// The first failed dials, by start.
pub fn first_failures(records: &[DialRecord]) -> Vec<DialRecord> {
    let mut failed: Vec<DialRecord> = records.iter().filter(|r| r.error.is_some()).cloned().collect();
    failed.sort_by(|a, b| a.start.total_cmp(&b.start));
    failed.truncate(MAX_LISTED);
    failed
}

/// Every dial as CSV: client, phase, start, end, ok, reason.
pub fn dials_csv(peer: &str, records: &[DialRecord], out: &mut String) {
    if out.is_empty() {
        out.push_str("peer,server,phase,start_s,end_s,ok,reason\n");
    }
    let mut sorted: Vec<&DialRecord> = records.iter().collect();
    sorted.sort_by(|a, b| a.start.total_cmp(&b.start));
    for r in sorted {
        let reason = r.error.as_deref().unwrap_or("").replace('"', "'");
        let _ = writeln!(
            out,
            "{peer},s{},{},{:.4},{:.4},{},\"{reason}\"",
            r.client,
            r.phase.name(),
            r.start,
            r.end,
            r.error.is_none()
        );
    }
}

/// Writes results.json, summary.txt and dials.csv into `dir`.
pub fn write(r: &RollReport, csv: &str, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let files = vec![
        ("results.json".to_owned(), serde_json::to_string_pretty(r)?),
        ("summary.txt".to_owned(), super::summary::render(r)),
        ("dials.csv".to_owned(), csv.to_owned()),
    ];
    crate::report::write_files(dir, &files)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn rec(client: usize, phase: Phase, start: f64, end: f64, error: Option<&str>) -> DialRecord {
        DialRecord { client, phase, start, end, error: error.map(str::to_owned) }
    }

    pub(crate) fn records() -> Vec<DialRecord> {
        vec![
            rec(0, Phase::Steady, 0.0, 0.1, None),
            rec(1, Phase::Steady, 0.5, 0.6, None),
            rec(0, Phase::AgentRoll, 1.0, 1.2, Some("DIAL_RSP error: No agent available")),
            rec(1, Phase::AgentRoll, 1.1, 3.0, Some("timeout waiting for DIAL_RSP")),
            rec(2, Phase::AgentRoll, 1.15, 1.25, None),
            rec(2, Phase::CrashAgent, 2.5, 2.6, Some("DIAL_RSP error: No agent available")),
        ]
    }

    #[test]
    fn phases_count_dials_failures_and_what_was_not_sent() {
        let not_sent = vec![
            (0, Phase::AgentRoll, NotSent { paused: 3, capped: 1 }),
            (1, Phase::AgentRoll, NotSent { paused: 2, capped: 0 }),
        ];
        let spans = [(Phase::Steady, 0.0, 1.0), (Phase::AgentRoll, 1.0, 2.0), (Phase::ServerRoll, 2.0, 2.0)];
        let f = phase_figures(&records(), &not_sent, &spans);
        assert_eq!(f.len(), 3);
        assert_eq!((f[0].dials, f[0].failed), (2, 0));
        assert_eq!((f[1].dials, f[1].failed, f[1].not_sent_paused, f[1].not_sent_capped), (3, 2, 5, 1));
        assert_eq!(f[1].reasons["timeout waiting for DIAL_RSP"], 1);
        assert_eq!(f[2].dials, 0, "a phase without dials is still listed");
    }

    #[test]
    fn in_flight_is_begun_before_and_ended_after() {
        assert_eq!(in_flight_at(&records(), 1.18, None), (3, 2, Some(3.0 - 1.18)));
        assert_eq!(in_flight_at(&records(), 1.18, Some(2)), (1, 0, None));
        assert_eq!(failed_between(&records(), 1.0, 2.0), 1);
    }

    #[test]
    fn agent_crash_splits_held_connections() {
        let h = |last_ok: Option<f64>, ended: Option<f64>, error: Option<&str>| Held {
            client: 0,
            last_ok,
            ended,
            error: error.map(str::to_owned),
        };
        let held = [
            h(Some(9.9), None, None),                // on a live agent
            h(Some(2.0), Some(7.0), Some("closed")), // ended 5 s after the kill
            h(Some(2.0), Some(2.5), Some("closed")), // ended at once
            h(Some(2.1), None, None),                // hung
        ];
        let c = crash_agent(1, 2.0, 8.0, &records(), &held);
        assert_eq!((c.held, c.held_ended, c.held_hung), (4, 2, 1));
        assert_eq!((c.held_end_min_secs, c.held_end_max_secs), (Some(0.5), Some(5.0)));
        assert_eq!(c.held_reasons["closed"], 2);
        assert_eq!((c.in_flight, c.in_flight_failed), (1, 1));
        assert_eq!((c.next_dials, c.next_failed), (1, 1));
        assert_eq!(c.next_last_failure_secs, Some(0.5));
    }
}
