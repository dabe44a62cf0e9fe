//! Dial rate, webhook-like: `concurrency` workers each loop over "open a
//! connection (a new HTTP/2 connection and DIAL_REQ with the single-use
//! tunnel), one small exchange, close" until the time is up. Counts
//! completed connections per second and the DIAL_REQ→DIAL_RSP latency.

use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use super::{cpu_mark, cpu_split, ns};
use crate::peers::Peer;
use crate::progress::Progress;
use crate::report::{CpuSplit, DialResult};
use crate::settings::Dial;
use crate::stats::{histogram, record, LatencySummary};
use crate::target::Targets;

/// No worker makes more connections than this.
const MAX_PER_WORKER: u64 = 10_000_000;
/// Pause after a failed connection, so a broken peer is not hammered.
const ERROR_BACKOFF: Duration = Duration::from_millis(20);

struct Tally {
    dial: Histogram<u64>,
    connect: Histogram<u64>,
    total: Histogram<u64>,
    dials: u64,
    errors: u64,
}

/// What one or more rounds measured for a peer, before summarising.
pub struct Measured {
    pub(super) dial: Histogram<u64>,
    pub(super) connect: Histogram<u64>,
    pub(super) total: Histogram<u64>,
    pub(super) dials: u64,
    pub(super) errors: u64,
    pub(super) secs: f64,
    pub(super) cpu: CpuSplit,
}

impl Measured {
    /// Adds another round's figures (CPU weighted by duration).
    pub fn merge(&mut self, other: Measured) -> anyhow::Result<()> {
        self.dial.add(&other.dial)?;
        self.connect.add(&other.connect)?;
        self.total.add(&other.total)?;
        self.dials += other.dials;
        self.errors += other.errors;
        self.cpu = super::cpu_weighted(self.cpu, self.secs, other.cpu, other.secs);
        self.secs += other.secs;
        Ok(())
    }

    pub fn result(&self, peer: &str, s: &Dial) -> DialResult {
        DialResult {
            peer: peer.to_owned(),
            concurrency: s.concurrency,
            rate: s.rate,
            secs: self.secs,
            dials: self.dials,
            errors: self.errors,
            dials_per_s: self.dials as f64 / self.secs,
            dial: LatencySummary::from_histogram(&self.dial),
            connect: LatencySummary::from_histogram(&self.connect),
            total: LatencySummary::from_histogram(&self.total),
            cpu: self.cpu,
            client: s.client.name().to_owned(),
        }
    }
}

/// Connections in flight at most in the open loop.
const OPEN_LOOP_IN_FLIGHT: usize = 4096;

/// One round: `s.warmup_secs` unrecorded, then `s.secs` recorded.
pub async fn measure(peer: &Peer, targets: Targets, s: &Dial, progress: &Progress) -> anyhow::Result<Measured> {
    if let Some(rate) = s.rate {
        return open_loop(peer, targets, s, rate, progress).await;
    }
    let label = format!("{} dial c={}", peer.kind.name(), s.concurrency);
    let counters = progress.stage(label, Duration::from_secs_f64(s.warmup_secs + s.secs));
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(s.warmup_secs);
    let end = measure_from + Duration::from_secs_f64(s.secs);
    let mut set = JoinSet::new();
    for _ in 0..s.concurrency {
        let (dialer, c, bytes) = (peer.dialer.clone(), std::sync::Arc::clone(&counters), s.bytes);
        set.spawn(async move {
            let mut t = Tally { dial: histogram(), connect: histogram(), total: histogram(), dials: 0, errors: 0 };
            for _ in 0..MAX_PER_WORKER {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let one = async {
                    let (mut conn, timing) = super::dial(&dialer, targets.echo).await?;
                    super::one_exchange(&mut conn, bytes).await?;
                    conn.close().await?;
                    anyhow::Ok(timing)
                };
                match one.await {
                    Ok(timing) if t0 >= measure_from => {
                        record(&mut t.dial, ns(timing.dial));
                        record(&mut t.connect, ns(timing.connect));
                        record(&mut t.total, ns(t0.elapsed()));
                        t.dials += 1;
                        c.op();
                    }
                    Ok(_) => c.op(),
                    Err(_) => {
                        t.errors += u64::from(t0 >= measure_from);
                        c.error();
                        tokio::time::sleep(ERROR_BACKOFF).await;
                    }
                }
            }
            t
        });
    }
    sleep_until(measure_from).await;
    let mark0 = cpu_mark(peer, targets);
    sleep_until(end).await;
    let cpu = cpu_split(&mark0, &cpu_mark(peer, targets));
    let (mut dial, mut connect, mut total) = (histogram(), histogram(), histogram());
    let (mut dials, mut errors) = (0, 0);
    while let Some(r) = set.join_next().await {
        let t = r?;
        dial.add(&t.dial)?;
        connect.add(&t.connect)?;
        total.add(&t.total)?;
        dials += t.dials;
        errors += t.errors;
    }
    // Connections started in the window, per second of the window.
    Ok(Measured { dial, connect, total, dials, errors, secs: s.secs, cpu })
}

/// Open loop: the i-th connection starts at `i / rate` seconds, whether or
/// not the ones before it were answered, so a slow answer cannot lower the
/// offered load (closed-loop workers wait, and hide the queueing they cause).
async fn open_loop(
    peer: &Peer,
    targets: Targets,
    s: &Dial,
    rate: f64,
    progress: &Progress,
) -> anyhow::Result<Measured> {
    anyhow::ensure!(rate > 0.0 && rate.is_finite(), "dial rate must be positive, not {rate}");
    let label = format!("{} dial {rate}/s open loop", peer.kind.name());
    let counters = progress.stage(label, Duration::from_secs_f64(s.warmup_secs + s.secs));
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(s.warmup_secs);
    let end = measure_from + Duration::from_secs_f64(s.secs);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(OPEN_LOOP_IN_FLIGHT));
    let mut set: JoinSet<Outcome> = JoinSet::new();
    let mut t = Tally { dial: histogram(), connect: histogram(), total: histogram(), dials: 0, errors: 0 };
    let mut mark0 = None;
    for i in 0u64.. {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        if at >= end {
            break;
        }
        sleep_until(at).await;
        let measured = at >= measure_from;
        if measured && mark0.is_none() {
            mark0 = Some(cpu_mark(peer, targets));
        }
        // Finished ones are counted as we go: the set holds only those in flight.
        while let Some(done) = set.try_join_next() {
            t.add(done?);
        }
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            t.errors += u64::from(measured);
            counters.error();
            continue;
        };
        let (dialer, c, bytes) = (peer.dialer.clone(), Arc::clone(&counters), s.bytes);
        set.spawn(async move {
            let _permit = permit;
            let t0 = Instant::now();
            let one = async {
                let (mut conn, timing) = super::dial(&dialer, targets.echo).await?;
                super::one_exchange(&mut conn, bytes).await?;
                conn.close().await?;
                anyhow::Ok(timing)
            };
            let r = one.await;
            match &r {
                Ok(_) => c.op(),
                Err(_) => c.error(),
            }
            Outcome { measured, timing: r.ok(), whole: t0.elapsed() }
        });
    }
    sleep_until(end).await;
    let mark0 = mark0.unwrap_or_else(|| cpu_mark(peer, targets));
    let cpu = cpu_split(&mark0, &cpu_mark(peer, targets));
    // Those still in flight: bounded by the dial's own timeouts.
    while let Some(done) = set.join_next().await {
        t.add(done?);
    }
    Ok(Measured {
        dial: t.dial,
        connect: t.connect,
        total: t.total,
        dials: t.dials,
        errors: t.errors,
        secs: s.secs,
        cpu,
    })
}

/// One open-loop connection: started in the window or not, its timing if it
/// worked, and how long the whole connection took.
struct Outcome {
    measured: bool,
    timing: Option<super::Timing>,
    whole: Duration,
}

impl Tally {
    fn add(&mut self, o: Outcome) {
        if !o.measured {
            return;
        }
        match o.timing {
            Some(timing) => {
                record(&mut self.dial, ns(timing.dial));
                record(&mut self.connect, ns(timing.connect));
                record(&mut self.total, ns(o.whole));
                self.dials += 1;
            }
            None => self.errors += 1,
        }
    }
}
