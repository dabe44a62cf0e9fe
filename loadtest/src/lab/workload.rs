//! The lab's traffic through one peer: ping-pong connections whose latency
//! is recorded, optionally one bulk connection saturating the link (a
//! download from the source target or an upload to the sink) and one
//! connection whose reader has stopped. Everything is spawned, runs on a
//! fixed schedule and stops by itself at the end of the window; the caller
//! may act on the peer meanwhile (restart it, move the agent's socket).

use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::conn::{Conn, Dialer};
use crate::stats::{self, LatencySummary};
use crate::target::Targets;

/// A ping without its answer after this long has failed; the figure recorded
/// for it (and for every later ping its connection could not send) is this
/// bound: a lower bound on what the caller really waited.
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on a dial.
const DIAL_TIMEOUT: Duration = Duration::from_secs(15);
/// Width of one bucket of the bulk timeline.
pub const TIMELINE_BUCKET: Duration = Duration::from_millis(500);

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Ping-pong connections.
    pub pings: usize,
    /// Request and response size.
    pub ping_bytes: usize,
    /// Each connection sends a ping this often.
    pub interval: Duration,
    /// One connection moving bulk data, in this direction.
    pub bulk: Option<Bulk>,
    /// One connection from the source target that is never read.
    pub stalled: bool,
    /// Traffic before the measurement window (not recorded).
    pub warmup: Duration,
    /// The measurement window.
    pub measure: Duration,
}

/// Which way the bulk connection moves data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bulk {
    /// The client reads the source target (like `kubectl logs -f`); bytes
    /// are counted as the client reads them.
    Download,
    /// The client writes to the sink target (like `kubectl cp` into a pod);
    /// bytes are counted as the target reads them, not as the client's
    /// tunnel library accepts them.
    Upload,
}

/// Bytes per write of an upload (kube-apiserver copies 32 KiB at a time).
const UPLOAD_CHUNK: usize = 32 * 1024;

/// How one connection ended before the window closed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ending {
    /// Seconds since the window opened (negative: during warm-up).
    pub at_secs: f64,
    /// It timed out (no answer, no error) rather than failing with an error.
    pub timed_out: bool,
    pub error: String,
}

/// What the traffic saw.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// Ping round trips in the window, measured from each ping's scheduled
    /// send time (coordinated omission corrected); failed pings count as
    /// [`PING_TIMEOUT`].
    pub ping: LatencySummary,
    pub pings_ok: u64,
    pub pings_failed: u64,
    /// How late the runner itself sent the pings in the window that were
    /// due while their connection was idle (timer granularity, a busy CPU):
    /// part of `ping`, not caused by the tunnel unless the tunnel is what
    /// kept the CPU busy.
    pub ping_send_lag: LatencySummary,
    /// The largest time between two answered pings of one connection, ms.
    pub ping_gap_max_ms: f64,
    /// Connections that could not be opened or ended early.
    pub endings: Vec<Ending>,
    /// Bulk goodput in the window, Mbit/s.
    pub bulk_mbit_per_s: Option<f64>,
    /// Bulk bytes per [`TIMELINE_BUCKET`] from the start of warm-up.
    pub bulk_timeline: Vec<u64>,
    /// The slowest ping round trip (ms) of every connection per
    /// [`TIMELINE_BUCKET`] from the start of warm-up, by scheduled send
    /// time: shows whether a tail is spread out or one episode.
    #[serde(default)]
    pub ping_timeline_max_ms: Vec<f64>,
    /// Length of the warm-up before the window, seconds.
    pub warmup_secs: f64,
    /// Whether the never-read connection was opened (`None`: not planned).
    pub stalled_dialed: Option<bool>,
}

struct PingerResult {
    hist: Histogram<u64>,
    lag: Histogram<u64>,
    ok: u64,
    failed: u64,
    gap_max: Duration,
    /// Slowest round trip per [`TIMELINE_BUCKET`] since the start.
    timeline_max: Vec<Duration>,
    ending: Option<Ending>,
}

struct BulkResult {
    window_bytes: u64,
    timeline: Vec<u64>,
    ending: Option<Ending>,
}

/// Traffic in flight; [`Running::finish`] collects it after the window.
pub struct Running {
    pub started: Instant,
    pub window_start: Instant,
    pub end: Instant,
    pingers: Vec<JoinHandle<PingerResult>>,
    bulk: Option<JoinHandle<BulkResult>>,
    stalled: Option<JoinHandle<bool>>,
    plan: Plan,
}

/// Starts the plan's traffic through `dialer`.
pub fn start(dialer: &Dialer, targets: Targets, plan: &Plan) -> Running {
    let started = Instant::now();
    let window_start = started + plan.warmup;
    let end = window_start + plan.measure;
    let pingers = (0..plan.pings)
        .map(|i| {
            let offset = plan.interval.mul_f64(i as f64 / plan.pings.max(1) as f64);
            let times = PingTimes { started, first: started + offset, window_start, end };
            tokio::spawn(pinger(dialer.clone(), targets, plan.clone(), times))
        })
        .collect();
    let bulk = plan.bulk.map(|direction| {
        let times = BulkTimes { started, window_start, end };
        match direction {
            Bulk::Download => tokio::spawn(bulk(dialer.clone(), targets, times)),
            Bulk::Upload => tokio::spawn(upload(dialer.clone(), targets, times)),
        }
    });
    let stalled = plan.stalled.then(|| tokio::spawn(stalled(dialer.clone(), targets, end)));
    Running { started, window_start, end, pingers, bulk, stalled, plan: plan.clone() }
}

impl Running {
    /// Waits for the window to close and every task to stop (each is bounded).
    pub async fn finish(self) -> Outcome {
        let (mut hist, mut lag) = (stats::histogram(), stats::histogram());
        let (mut ok, mut failed, mut gap) = (0, 0, Duration::ZERO);
        let mut endings = Vec::new();
        let mut timeline_max: Vec<Duration> = Vec::new();
        for p in self.pingers {
            match p.await {
                Ok(r) => {
                    let _ = hist.add(&r.hist);
                    let _ = lag.add(&r.lag);
                    ok += r.ok;
                    failed += r.failed;
                    gap = gap.max(r.gap_max);
                    max_into(&mut timeline_max, &r.timeline_max);
                    endings.extend(r.ending);
                }
                Err(e) => endings.push(Ending { at_secs: 0.0, timed_out: false, error: format!("pinger: {e}") }),
            }
        }
        let (mut bulk_mbit_per_s, mut bulk_timeline) = (None, Vec::new());
        if let Some(b) = self.bulk {
            if let Ok(r) = b.await {
                bulk_mbit_per_s = Some(r.window_bytes as f64 * 8.0 / self.plan.measure.as_secs_f64() / 1e6);
                bulk_timeline = r.timeline;
                endings.extend(r.ending);
            }
        }
        let stalled_dialed = match self.stalled {
            Some(s) => Some(s.await.unwrap_or(false)),
            None => None,
        };
        Outcome {
            ping: LatencySummary::from_histogram(&hist),
            pings_ok: ok,
            pings_failed: failed,
            ping_send_lag: LatencySummary::from_histogram(&lag),
            ping_gap_max_ms: gap.as_secs_f64() * 1e3,
            endings,
            bulk_mbit_per_s,
            bulk_timeline,
            ping_timeline_max_ms: timeline_max.iter().map(|d| d.as_secs_f64() * 1e3).collect(),
            warmup_secs: self.plan.warmup.as_secs_f64(),
            stalled_dialed,
        }
    }
}

fn since(window_start: Instant, t: Instant) -> f64 {
    if t >= window_start {
        (t - window_start).as_secs_f64()
    } else {
        -(window_start - t).as_secs_f64()
    }
}

/// A connection ending now.
fn ending_now(window_start: Instant, timed_out: bool, error: String) -> Option<Ending> {
    Some(Ending { at_secs: since(window_start, Instant::now()), timed_out, error })
}

async fn dial(dialer: &Dialer, target: std::net::SocketAddr) -> Result<Conn, String> {
    match tokio::time::timeout(DIAL_TIMEOUT, dialer.dial(target)).await {
        Ok(Ok((conn, _))) => Ok(conn),
        Ok(Err(e)) => Err(format!("dial: {e:#}")),
        Err(_) => Err(format!("dial: no answer within {DIAL_TIMEOUT:?}")),
    }
}

/// One ping-pong connection: a ping every `plan.interval` from `first`.
/// When a pinger starts, sends its first ping, and when the window opens
/// and closes.
struct PingTimes {
    started: Instant,
    first: Instant,
    window_start: Instant,
    end: Instant,
}

/// Raises `timeline[bucket]` to `value`, growing the timeline as needed.
fn note_max(timeline: &mut Vec<Duration>, bucket: usize, value: Duration) {
    if timeline.len() <= bucket {
        timeline.resize(bucket + 1, Duration::ZERO);
    }
    timeline[bucket] = timeline[bucket].max(value);
}

/// Adds `n` to `timeline[bucket]`, growing the timeline as needed.
fn add_at(timeline: &mut Vec<u64>, bucket: usize, n: u64) {
    if timeline.len() <= bucket {
        timeline.resize(bucket + 1, 0);
    }
    timeline[bucket] += n;
}

/// Element-wise maximum of `other` into `into`.
fn max_into(into: &mut Vec<Duration>, other: &[Duration]) {
    for (bucket, &value) in other.iter().enumerate() {
        note_max(into, bucket, value);
    }
}

async fn pinger(dialer: Dialer, targets: Targets, plan: Plan, times: PingTimes) -> PingerResult {
    let PingTimes { started, first, window_start, end } = times;
    let mut r = PingerResult {
        hist: stats::histogram(),
        lag: stats::histogram(),
        ok: 0,
        failed: 0,
        gap_max: Duration::ZERO,
        timeline_max: Vec::new(),
        ending: None,
    };
    let bucket_of = |intended: Instant| ((intended - started).as_secs_f64() / TIMELINE_BUCKET.as_secs_f64()) as usize;
    let payload = Bytes::from(vec![0x42u8; plan.ping_bytes]);
    let mut conn = match dial(&dialer, targets.echo).await {
        Ok(c) => Some(c),
        Err(error) => {
            r.ending = ending_now(window_start, false, error);
            None
        }
    };
    // The schedule starts once the connection is open: a slow dial is not
    // charged to the pings.
    let first = first.max(Instant::now());
    let mut last_answer: Option<Instant> = None;
    let mut k = 0u32;
    loop {
        let intended = first + plan.interval * k;
        k += 1;
        if intended >= end {
            break;
        }
        let in_window = intended >= window_start;
        let Some(c) = conn.as_mut() else {
            // The connection is gone: every ping it could not send failed.
            note_max(&mut r.timeline_max, bucket_of(intended), PING_TIMEOUT);
            if in_window {
                r.failed += 1;
                stats::record(&mut r.hist, PING_TIMEOUT.as_nanos() as u64);
            }
            continue;
        };
        sleep_precisely_until(intended).await;
        // The runner's own lateness, counted only when the connection was
        // idle at the due time (otherwise the wait is the tunnel's).
        if in_window && last_answer.is_none_or(|a| a <= intended) {
            stats::record(&mut r.lag, (Instant::now() - intended).as_nanos() as u64);
        }
        let exchange = async {
            c.write(payload.clone()).await?;
            c.read_exact(plan.ping_bytes).await
        };
        let result = tokio::time::timeout(PING_TIMEOUT, exchange).await;
        let now = Instant::now();
        let rtt = if matches!(result, Ok(Ok(()))) { now - intended } else { PING_TIMEOUT };
        note_max(&mut r.timeline_max, bucket_of(intended), rtt);
        match result {
            Ok(Ok(())) => {
                if in_window {
                    r.ok += 1;
                    stats::record(&mut r.hist, (now - intended).as_nanos() as u64);
                    if let Some(prev) = last_answer {
                        r.gap_max = r.gap_max.max(now - prev);
                    }
                }
                last_answer = Some(now);
            }
            failure => {
                let (timed_out, error) = match failure {
                    Ok(Err(e)) => (false, format!("{e:#}")),
                    _ => (true, format!("no answer within {PING_TIMEOUT:?}")),
                };
                if in_window {
                    r.failed += 1;
                    stats::record(&mut r.hist, PING_TIMEOUT.as_nanos() as u64);
                }
                r.ending = Some(Ending { at_secs: since(window_start, now), timed_out, error });
                conn = None; // Dropped: a late answer would be taken for the next ping's.
            }
        }
    }
    if let Some(c) = conn {
        let _ = c.close().await;
    }
    r
}

/// Sleeps until `t`, waking within about 0.1 ms of it. tokio's timer wheel
/// ticks in whole milliseconds and rounds a deadline up, so a ping left
/// 1-2 ms after its scheduled time, and its round trip (measured from the
/// schedule) carried that lateness, whichever tunnel it went through. The
/// last stretch is slept on a blocking-pool thread with `nanosleep`.
pub async fn sleep_precisely_until(t: Instant) {
    const TICKS: Duration = Duration::from_millis(3);
    if let Some(coarse) = t.checked_sub(TICKS) {
        tokio::time::sleep_until(coarse).await;
    }
    let rest = t.saturating_duration_since(Instant::now());
    if !rest.is_zero() {
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
    }
}

/// When the bulk connection starts, and when the window opens and closes.
#[derive(Clone, Copy)]
struct BulkTimes {
    started: Instant,
    window_start: Instant,
    end: Instant,
}

/// One connection reading the source target as fast as the tunnel allows.
async fn bulk(dialer: Dialer, targets: Targets, times: BulkTimes) -> BulkResult {
    let BulkTimes { started, window_start, end } = times;
    let mut r = BulkResult { window_bytes: 0, timeline: Vec::new(), ending: None };
    let mut conn = match dial(&dialer, targets.source).await {
        Ok(c) => c,
        Err(error) => {
            r.ending = ending_now(window_start, false, error);
            return r;
        }
    };
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let limit = PING_TIMEOUT.min(end - now);
        match tokio::time::timeout(limit, conn.read_some()).await {
            Ok(Ok(0)) => {
                r.ending = ending_now(window_start, false, "bulk connection ended".into());
                return r;
            }
            Ok(Ok(n)) => {
                let now = Instant::now();
                let bucket = ((now - started).as_secs_f64() / TIMELINE_BUCKET.as_secs_f64()) as usize;
                add_at(&mut r.timeline, bucket, n as u64);
                if now >= window_start && now < end {
                    r.window_bytes += n as u64;
                }
            }
            Ok(Err(e)) => {
                r.ending = ending_now(window_start, false, format!("bulk: {e:#}"));
                return r;
            }
            Err(_) if Instant::now() >= end => break,
            Err(_) => {
                r.ending = ending_now(window_start, true, format!("bulk: no byte for {PING_TIMEOUT:?}"));
                return r;
            }
        }
    }
    // Dropping the connection is enough: a bulk sender never finishes on its own.
    drop(conn);
    r
}

/// One connection writing to the sink target as fast as the tunnel takes
/// the bytes. What counts is what the sink read: its count is sampled at
/// every [`TIMELINE_BUCKET`] from the start, and when the window opens and
/// closes (the cell has no other sink connection).
async fn upload(dialer: Dialer, targets: Targets, times: BulkTimes) -> BulkResult {
    let BulkTimes { started, window_start, end } = times;
    let mut r = BulkResult { window_bytes: 0, timeline: Vec::new(), ending: None };
    let conn = match dial(&dialer, targets.sink).await {
        Ok(c) => c,
        Err(error) => {
            r.ending = ending_now(window_start, false, error);
            return r;
        }
    };
    let writer = async {
        let data = Bytes::from(vec![0x6bu8; UPLOAD_CHUNK]);
        loop {
            let now = Instant::now();
            if now >= end {
                return None;
            }
            match tokio::time::timeout(PING_TIMEOUT.min(end - now), conn.write(data.clone())).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return ending_now(window_start, false, format!("upload: {e:#}")),
                Err(_) if Instant::now() >= end => return None,
                Err(_) => {
                    return ending_now(window_start, true, format!("upload: no write taken for {PING_TIMEOUT:?}"))
                }
            }
        }
    };
    let counter = async {
        let mut marks: Vec<Instant> = Vec::new();
        let mut t = started + TIMELINE_BUCKET;
        while t < end {
            marks.push(t);
            t += TIMELINE_BUCKET;
        }
        marks.extend([window_start, end]);
        marks.sort();
        marks.dedup();
        let (mut last, mut at_window) = (crate::target::sink_count(targets.count).await?.received, None);
        let first = last;
        for mark in marks {
            tokio::time::sleep_until(mark).await;
            let now = crate::target::sink_count(targets.count).await?.received;
            // What arrived since the last mark belongs to the bucket that ends at this one.
            let bucket = ((mark - started).as_secs_f64() / TIMELINE_BUCKET.as_secs_f64()).ceil() as usize;
            if let Some(b) = bucket.checked_sub(1) {
                add_at(&mut r.timeline, b, now - last);
            }
            last = now;
            if mark == window_start {
                at_window = Some(now);
            }
        }
        r.window_bytes = last - at_window.unwrap_or(first);
        anyhow::Ok(())
    };
    let (ending, counted) = tokio::join!(writer, counter);
    r.ending = ending;
    if let Err(e) = counted {
        r.ending.get_or_insert(Ending {
            at_secs: since(window_start, Instant::now()),
            timed_out: false,
            error: format!("upload: counting at the sink: {e:#}"),
        });
    }
    drop(conn);
    r
}

/// One connection from the source target that is never read; held open
/// until the window closes. Returns whether it was dialed.
async fn stalled(dialer: Dialer, targets: Targets, end: Instant) -> bool {
    let Ok(conn) = dial(&dialer, targets.source).await else { return false };
    tokio::time::sleep_until(end).await;
    drop(conn);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn precise_sleep_never_returns_early() {
        for ahead_us in [0u64, 200, 1_500, 2_999, 3_000, 7_250] {
            let t = Instant::now() + Duration::from_micros(ahead_us);
            sleep_precisely_until(t).await;
            assert!(Instant::now() >= t, "woke before a deadline {ahead_us} µs ahead");
        }
        // A deadline in the past returns at once.
        let past = Instant::now() - Duration::from_millis(5);
        sleep_precisely_until(past).await;
    }
}
