//! Soak: a steady mixed load for a set time — webhook-like dials at a fixed
//! rate (open loop; a dial due while `max_in_flight` are still running is
//! skipped and counted) plus `streams` long-lived connections doing a
//! request/response every `stream_interval_ms` — while the server's and
//! agent's RSS and fds are sampled every `sample_secs`. Growth compares the
//! first and last windows after the warm-up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use super::ns;
use crate::peers::Peer;
use crate::progress::{Counters, Progress};
use crate::report::{SoakGrowth, SoakResult, SoakSample};
use crate::schedule::{intended_offset, total_requests};
use crate::settings::Soak;
use crate::stats::{growth, histogram, record, LatencySummary};
use crate::target::Targets;

/// The one exchange of each dialed connection.
const DIAL_BYTES: usize = 100;
/// Dials still running this long after the end are abandoned.
const DRAIN: Duration = Duration::from_secs(15);

pub async fn run(peer: &mut Peer, targets: Targets, s: &Soak, progress: &Progress) -> anyhow::Result<SoakResult> {
    let streams = super::open_many(&peer.dialer, targets.echo, s.streams, s.streams, Some(s.bytes)).await?;
    let label = format!("{} soak {} dials/s", peer.kind.name(), s.dial_rate);
    let counters = progress.stage(label, Duration::from_secs_f64(s.secs));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(s.secs);

    let requests = Arc::new(AtomicU64::new(0));
    let request_errors = Arc::new(AtomicU64::new(0));
    let mut stream_tasks = JoinSet::new();
    for mut conn in streams {
        let (requests, request_errors, bytes) = (Arc::clone(&requests), Arc::clone(&request_errors), s.bytes);
        let every = Duration::from_millis(s.stream_interval_ms);
        stream_tasks.spawn(async move {
            let mut tick = tokio::time::interval(every);
            while Instant::now() < end {
                tick.tick().await;
                if let Ok(Ok(())) = tokio::time::timeout_at(end + DRAIN, super::one_exchange(&mut conn, bytes)).await {
                    requests.fetch_add(1, Ordering::Relaxed);
                } else {
                    // The connection is broken: it stops here.
                    request_errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            let _ = conn.close().await;
        });
    }
    let dials = tokio::spawn(dial_load(peer.dialer.clone(), targets, s.clone(), start, end, Arc::clone(&counters)));
    let samples = sample_until(peer, start, end, Duration::from_secs_f64(s.sample_secs)).await;
    let (dial_hist, dials, dial_errors, skipped) = dials.await?;
    while stream_tasks.join_next().await.is_some() {}
    peer.check_alive()?;

    Ok(SoakResult {
        peer: peer.kind.name().to_owned(),
        secs: s.secs,
        warmup_secs: s.warmup_secs,
        dial_rate: s.dial_rate,
        streams: s.streams,
        dials,
        dial_errors,
        dials_skipped: skipped,
        requests: requests.load(Ordering::Relaxed),
        request_errors: request_errors.load(Ordering::Relaxed),
        dial: LatencySummary::from_histogram(&dial_hist),
        growth: soak_growth(&samples, s.warmup_secs),
        samples,
    })
}

/// Growth of every sampled series.
pub fn soak_growth(samples: &[SoakSample], warmup: f64) -> SoakGrowth {
    let series = |f: &dyn Fn(&SoakSample) -> u64| samples.iter().map(|x| (x.t, f(x) as f64)).collect::<Vec<_>>();
    SoakGrowth {
        total_rss: growth(&series(&|x| x.server.rss_bytes + x.agent.rss_bytes), warmup),
        total_fds: growth(&series(&|x| x.server.fds + x.agent.fds), warmup),
        server_rss: growth(&series(&|x| x.server.rss_bytes), warmup),
        agent_rss: growth(&series(&|x| x.agent.rss_bytes), warmup),
        server_fds: growth(&series(&|x| x.server.fds), warmup),
        agent_fds: growth(&series(&|x| x.agent.fds), warmup),
    }
}

async fn sample_until(peer: &Peer, start: Instant, end: Instant, every: Duration) -> Vec<SoakSample> {
    let mut out = Vec::new();
    let mut next = start;
    while next <= end {
        sleep_until(next).await;
        if let (Some(server), Some(agent)) = peer.sample() {
            out.push(SoakSample { t: start.elapsed().as_secs_f64(), server, agent });
        }
        next += every;
    }
    out
}

/// The open-loop dial load: returns (DIAL latency, dials, errors, skipped).
async fn dial_load(
    dialer: crate::conn::Dialer,
    targets: Targets,
    s: Soak,
    start: Instant,
    end: Instant,
    counters: Arc<Counters>,
) -> (hdrhistogram::Histogram<u64>, u64, u64, u64) {
    let in_flight = Arc::new(Semaphore::new(s.max_in_flight));
    let hist = Arc::new(std::sync::Mutex::new(histogram()));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut skipped = 0;
    let mut set = JoinSet::new();
    for i in 0..total_requests(s.dial_rate, s.secs, 100_000_000) {
        sleep_until(start + intended_offset(i, s.dial_rate)).await;
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        let (dialer, hist, ok, failed, c) =
            (dialer.clone(), Arc::clone(&hist), Arc::clone(&ok), Arc::clone(&failed), Arc::clone(&counters));
        set.spawn(async move {
            let one = async {
                let (mut conn, timing) = super::dial(&dialer, targets.echo).await?;
                super::one_exchange(&mut conn, DIAL_BYTES).await?;
                conn.close().await?;
                anyhow::Ok(timing)
            };
            match one.await {
                Ok(timing) => {
                    if let Ok(mut h) = hist.lock() {
                        record(&mut h, ns(timing.dial));
                    }
                    ok.fetch_add(1, Ordering::Relaxed);
                    c.op();
                }
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    c.error();
                }
            }
            drop(permit);
        });
        // Reap finished tasks so the set stays small.
        while set.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout_at(end + DRAIN, async { while set.join_next().await.is_some() {} }).await;
    let abandoned = set.len() as u64;
    set.abort_all();
    let h = hist.lock().map(|h| h.clone()).unwrap_or_else(|_| histogram());
    (h, ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed) + abandoned, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::ProcSample;

    #[test]
    fn growth_of_every_series() {
        let p = |rss: u64, fds: u64| ProcSample { cpu_secs: 0.0, rss_bytes: rss, fds, threads: 1 };
        let samples: Vec<SoakSample> =
            (0..20).map(|t| SoakSample { t: t as f64, server: p(1000 + t * 10, 10), agent: p(1000, 10) }).collect();
        let g = soak_growth(&samples, 0.0);
        assert!(g.server_rss.as_ref().unwrap().growth_pct > 10.0);
        assert_eq!(g.agent_rss.as_ref().unwrap().growth_pct, 0.0);
        assert_eq!(g.total_fds.as_ref().unwrap().growth_pct, 0.0);
        assert!(soak_growth(&samples[..1], 0.0).total_rss.is_none());
    }
}
