//! Request/response latency at a fixed offered rate, open loop. Requests
//! are due at `i / rate` and shared round-robin by `conns` connections (each
//! carries one request at a time, like HTTP/1.1 to a kubelet); latency is
//! taken from [`measure_origin`], so queueing behind a slow answer counts
//! (coordinated omission corrected). Requests due during the warm-up are
//! sent but not recorded.

use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use super::{cpu_mark, cpu_split, ns};
use crate::conn::Conn;
use crate::peers::Peer;
use crate::progress::{Counters, Progress};
use crate::report::{CpuSplit, LatencyResult};
use crate::schedule::{intended_offset, measure_origin, total_requests, worker_requests};
use crate::settings::Latency;
use crate::stats::{histogram, record, LatencySummary};
use crate::target::Targets;

/// Answers later than this after the end of the schedule are abandoned.
const DRAIN: Duration = Duration::from_secs(30);

struct Worker {
    latency: Histogram<u64>,
    lag: Histogram<u64>,
    errors: u64,
    conn: Option<Conn>,
}

/// What one or more rounds measured for a peer, before summarising.
pub struct Measured {
    latency: Histogram<u64>,
    lag: Histogram<u64>,
    errors: u64,
    secs: f64,
    cpu: CpuSplit,
    /// p99 of each round, in order.
    round_p99_us: Vec<f64>,
}

impl Measured {
    /// Adds another round's figures (CPU weighted by duration).
    pub fn merge(&mut self, other: Measured) -> anyhow::Result<()> {
        self.latency.add(&other.latency)?;
        self.lag.add(&other.lag)?;
        self.errors += other.errors;
        self.round_p99_us.extend(other.round_p99_us);
        self.cpu = super::cpu_weighted(self.cpu, self.secs, other.cpu, other.secs);
        self.secs += other.secs;
        Ok(())
    }

    pub fn result(&self, peer: &str, s: &Latency) -> LatencyResult {
        LatencyResult {
            peer: peer.to_owned(),
            rate: s.rate,
            conns: s.conns,
            request_bytes: s.bytes,
            secs: self.secs,
            requests: self.latency.len(),
            errors: self.errors,
            achieved_rate: self.latency.len() as f64 / self.secs,
            latency: LatencySummary::from_histogram(&self.latency),
            schedule_lag: LatencySummary::from_histogram(&self.lag),
            round_p99_us: self.round_p99_us.clone(),
            cpu: self.cpu,
        }
    }
}

/// One round: `s.warmup_secs` unrecorded, then `s.secs` recorded.
pub async fn measure(peer: &Peer, targets: Targets, s: &Latency, progress: &Progress) -> anyhow::Result<Measured> {
    let conns = super::open_many(&peer.dialer, targets.echo, s.conns, s.conns, Some(s.bytes)).await?;
    let total = total_requests(s.rate, s.warmup_secs + s.secs, 100_000_000);
    let label = format!("{} latency {} req/s", peer.kind.name(), s.rate);
    let counters = progress.stage(label, Duration::from_secs_f64(s.warmup_secs + s.secs));
    let start = Instant::now() + Duration::from_millis(10);
    let hard_end = start + Duration::from_secs_f64(s.warmup_secs + s.secs) + DRAIN;
    let record_from = total_requests(s.rate, s.warmup_secs, total);
    let mut set = JoinSet::new();
    for (k, conn) in conns.into_iter().enumerate() {
        let job = Job { k, workers: s.conns, total, record_from, rate: s.rate, bytes: s.bytes, start, hard_end };
        let c = std::sync::Arc::clone(&counters);
        set.spawn(async move { job.run(conn, &c).await });
    }
    sleep_until(start + Duration::from_secs_f64(s.warmup_secs)).await;
    let mark0 = cpu_mark(peer, targets);
    sleep_until(start + Duration::from_secs_f64(s.warmup_secs + s.secs)).await;
    let cpu = cpu_split(&mark0, &cpu_mark(peer, targets));
    let (mut latency, mut lag, mut errors, mut open) = (histogram(), histogram(), 0, Vec::new());
    while let Some(r) = set.join_next().await {
        let w = r?;
        latency.add(&w.latency)?;
        lag.add(&w.lag)?;
        errors += w.errors;
        open.extend(w.conn);
    }
    errors += super::close_many(open, s.conns).await;
    let round_p99_us = vec![LatencySummary::from_histogram(&latency).p99_us];
    Ok(Measured { latency, lag, errors, secs: s.secs, cpu, round_p99_us })
}

/// One connection's share of the schedule.
struct Job {
    k: usize,
    workers: usize,
    total: u64,
    record_from: u64,
    rate: f64,
    bytes: usize,
    start: Instant,
    hard_end: Instant,
}

impl Job {
    async fn run(self, mut conn: Conn, c: &Counters) -> Worker {
        let mut w = Worker { latency: histogram(), lag: histogram(), errors: 0, conn: None };
        let payload = Bytes::from(vec![0x4cu8; self.bytes]);
        let mut prev_done = Duration::ZERO;
        let mut requests = worker_requests(self.k, self.workers, self.total);
        while let Some(i) = requests.next() {
            let intended = intended_offset(i, self.rate);
            sleep_until(self.start + intended).await;
            let sent = self.start.elapsed();
            let exchange = async {
                conn.write(payload.clone()).await?;
                conn.read_exact(self.bytes).await
            };
            match tokio::time::timeout_at(self.hard_end, exchange).await {
                Ok(Ok(())) => {}
                _ => {
                    // The connection is unusable: this and every later request of it failed.
                    w.errors += 1 + requests.count() as u64;
                    c.error();
                    return w;
                }
            }
            let done = self.start.elapsed();
            if i >= self.record_from {
                record(&mut w.latency, ns(done - measure_origin(intended, prev_done, sent)));
                record(&mut w.lag, ns(sent.saturating_sub(intended)));
            }
            c.op();
            prev_done = done;
        }
        w.conn = Some(conn);
        w
    }
}
