//! Resident memory of the server and agent across one measured cell:
//! before it starts, the peak while it runs (sampled every
//! [`SAMPLE_EVERY`]), and after it ended and settled. [`Span`] is the
//! pure record; [`Watch`] samples `/proc` on a task of its own.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::procfs;

/// How often the peak is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// One process's RSS in bytes before, at its peak during, and after a cell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub before: u64,
    pub peak: u64,
    pub after: u64,
}

impl Span {
    pub fn start(before: u64) -> Span {
        Span { before, peak: before, after: before }
    }

    /// Records one reading taken while the cell runs.
    pub fn sample(&mut self, rss: u64) {
        self.peak = self.peak.max(rss);
    }

    /// Records the reading after the cell (it counts toward the peak too).
    pub fn finish(&mut self, rss: u64) {
        self.sample(rss);
        self.after = rss;
    }

    /// Peak minus before (0 when memory only shrank).
    pub fn growth(&self) -> u64 {
        self.peak.saturating_sub(self.before)
    }
}

/// Server and agent RSS over a cell; `None` where there is no such
/// process (`direct`) or it could not be read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    pub server: Option<Span>,
    pub agent: Option<Span>,
    /// How long after the cell ended `after` was read.
    pub settle_secs: f64,
}

impl Memory {
    /// Server + agent growth (peak - before), when both were read.
    pub fn growth(&self) -> Option<u64> {
        Some(self.server?.growth() + self.agent?.growth())
    }

    /// Server + agent, each of before, peak and after summed.
    pub fn total(&self) -> Option<Span> {
        let (s, a) = (self.server?, self.agent?);
        Some(Span { before: s.before + a.before, peak: s.peak + a.peak, after: s.after + a.after })
    }
}

/// Samples a server and an agent process until [`Watch::finish`].
pub struct Watch {
    stop: watch::Sender<bool>,
    task: JoinHandle<(Option<Span>, Option<Span>)>,
    pids: (Option<u32>, Option<u32>),
}

fn rss(pid: Option<u32>) -> Option<u64> {
    pid.and_then(|p| procfs::sample(p).ok()).map(|s| s.rss_bytes)
}

impl Watch {
    /// Reads `before` now and starts sampling.
    pub fn start(server: Option<u32>, agent: Option<u32>) -> Watch {
        let (stop, mut stopped) = watch::channel(false);
        let mut spans = (rss(server).map(Span::start), rss(agent).map(Span::start));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stopped.wait_for(|s| *s) => break,
                    _ = tick.tick() => {
                        for (span, pid) in [(&mut spans.0, server), (&mut spans.1, agent)] {
                            if let (Some(span), Some(now)) = (span.as_mut(), rss(pid)) {
                                span.sample(now);
                            }
                        }
                    }
                }
            }
            spans
        });
        Watch { stop, task, pids: (server, agent) }
    }

    /// Waits `settle` (the peak is still sampled meanwhile), reads `after`
    /// and returns the figures.
    pub async fn finish(self, settle: Duration) -> Memory {
        tokio::time::sleep(settle).await;
        self.stop.send_replace(true);
        let (mut server, mut agent) = self.task.await.unwrap_or_default();
        for (span, pid) in [(&mut server, self.pids.0), (&mut agent, self.pids.1)] {
            match (span.as_mut(), rss(pid)) {
                (Some(s), Some(now)) => s.finish(now),
                // The process went away: no honest `after`.
                _ => *span = None,
            }
        }
        Memory { server, agent, settle_secs: settle.as_secs_f64() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_keeps_the_peak_and_the_end() {
        let mut s = Span::start(100);
        for r in [120, 400, 90] {
            s.sample(r);
        }
        s.finish(110);
        assert_eq!(s, Span { before: 100, peak: 400, after: 110 });
        assert_eq!(s.growth(), 300);
        let mut shrank = Span::start(100);
        shrank.finish(50);
        assert_eq!((shrank.peak, shrank.growth()), (100, 0));
    }

    #[test]
    fn memory_totals_need_both_processes() {
        let s = Span { before: 10, peak: 30, after: 12 };
        let a = Span { before: 5, peak: 6, after: 5 };
        let m = Memory { server: Some(s), agent: Some(a), settle_secs: 0.0 };
        assert_eq!(m.growth(), Some(21));
        assert_eq!(m.total(), Some(Span { before: 15, peak: 36, after: 17 }));
        assert_eq!(Memory { agent: None, ..m }.growth(), None);
    }

    #[tokio::test]
    async fn watches_this_process() {
        let me = Some(std::process::id());
        let m = Watch::start(me, None).finish(Duration::ZERO).await;
        let s = m.server.expect("this process is readable");
        assert!(s.before > 0 && s.peak >= s.before && s.peak >= s.after, "{s:?}");
        assert_eq!(m.agent, None);
    }
}
