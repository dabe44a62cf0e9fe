//! Bulk throughput: `conns` connections at once, one of
//! - one-way (the source target streams to the client, like `kubectl logs -f`);
//! - echo (the client streams `chunk_bytes` writes and reads them back, at
//!   most `window_bytes` in flight per connection);
//! - upload (the client streams `chunk_bytes` writes to the sink target,
//!   like `kubectl cp` or `exec` with a large stdin).
//!
//! Bytes that arrived in the measured window give Gbit/s: at the client for
//! one-way and echo, counted by the target process as it read them for
//! upload (what a client's tunnel library accepted may still sit in
//! buffers). Server and agent CPU from /proc over the same window give CPU
//! seconds per GB; their RSS is sampled before, during and after the cell.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout_at, Instant};

use super::{cpu_mark, cpu_split};
use crate::conn::Conn;
use crate::peers::Peer;
use crate::progress::{Counters, Progress};
use crate::report::{CellComponents, ConnSpread, ThroughputResult, UploadFigures};
use crate::settings::{Mode, Throughput};
use crate::stats::{cpu_per_gb, gbit_per_s};
use crate::target::{sink_count, SinkCount, Targets};

/// How long, after every upload connection closed, the target may take to
/// see each of them end.
const SINK_DRAIN: Duration = Duration::from_secs(15);

/// One cell, in the order things happen: RSS watch, dials, the writers or
/// readers, the marks at the window's start and end (CPU, and the sink's
/// count for uploads), closing, the upload accounting, RSS after settling.
pub async fn run(
    peer: &Peer,
    targets: Targets,
    mode: Mode,
    conns: usize,
    s: &Throughput,
    progress: &Progress,
) -> anyhow::Result<ThroughputResult> {
    let memory = crate::rss::Watch::start(peer.pids().0, peer.pids().1);
    let target = match mode {
        Mode::Oneway => targets.source,
        Mode::Echo => targets.echo,
        Mode::Upload => targets.sink,
    };
    let opened = super::open_many(&peer.dialer, target, conns, conns.min(64), None).await?;
    let label = format!("{} throughput {} x{conns}", peer.kind.name(), mode.name());
    let counters = progress.stage(label, Duration::from_secs_f64(s.warmup_secs + s.secs));
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(s.warmup_secs);
    let end = measure_from + Duration::from_secs_f64(s.secs);
    let arrived = |c: SinkCount| c.received;
    let sink_base = if mode == Mode::Upload { Some(sink_count(targets.count).await?) } else { None };

    let mut set = JoinSet::new();
    let budget = Arc::new(AtomicU64::new(s.max_bytes));
    let per_conn: Vec<Arc<AtomicU64>> = (0..opened.len()).map(|_| Arc::new(AtomicU64::new(0))).collect();
    for (conn, mine) in opened.into_iter().zip(&per_conn) {
        let c = Tally { all: Arc::clone(&counters), mine: Arc::clone(mine) };
        let (chunk, window, budget) = (s.chunk_bytes, s.window_bytes, Arc::clone(&budget));
        set.spawn(async move {
            let result = match mode {
                Mode::Oneway => read_until(conn, end, &c).await,
                Mode::Echo => echo_until(conn, end, chunk, window, &c).await,
                Mode::Upload => write_until(conn, end, chunk, &budget, &c).await,
            };
            match result {
                Ok(conn) => conn.close().await.is_err(),
                Err(_) => true,
            }
        });
    }
    sleep_until(measure_from).await;
    let recording = match (&s.perf_dir, peer.pids()) {
        (Some(dir), (Some(server), Some(agent))) => {
            let name = |who: &str| dir.join(format!("{}-{}-{conns}-{who}.perf.data", peer.kind.name(), mode.name()));
            let server = crate::perf::Recording::start(server, &name("server"))?;
            Some((server, crate::perf::Recording::start(agent, &name("agent"))?))
        }
        _ => None,
    };
    let window_start = (counters.bytes.load(Ordering::Relaxed), cpu_mark(peer, targets));
    let conn_start: Vec<u64> = per_conn.iter().map(|b| b.load(Ordering::Relaxed)).collect();
    let rx0 = if mode == Mode::Upload { Some(sink_count(targets.count).await?) } else { None };
    sleep_until(end).await;
    let rx1 = if mode == Mode::Upload { Some(sink_count(targets.count).await?) } else { None };
    let (bytes1, mark1) = (counters.bytes.load(Ordering::Relaxed), cpu_mark(peer, targets));
    let conn_window: Vec<u64> =
        per_conn.iter().zip(&conn_start).map(|(b, s0)| b.load(Ordering::Relaxed) - s0).collect();
    let recorded = match recording {
        Some((server, agent)) => Some((server.stop().await?, agent.stop().await?)),
        None => None,
    };
    let (bytes0, mark0) = window_start;
    let secs = mark1.at.duration_since(mark0.at).as_secs_f64();
    let mut errors = 0;
    while let Some(r) = set.join_next().await {
        errors += u64::from(r.unwrap_or(true));
    }
    let (bytes, upload) = match (sink_base, rx0, rx1) {
        (Some(base), Some(rx0), Some(rx1)) => {
            let after_close = sink_drained(targets).await?;
            let wrote = counters.bytes.load(Ordering::Relaxed);
            let figures = UploadFigures {
                wrote_in_window: bytes1 - bytes0,
                wrote,
                arrived_at_stop: arrived(rx1) - arrived(base),
                arrived_after_close: arrived(after_close) - arrived(base),
                capped: budget.load(Ordering::Relaxed) == 0,
            };
            (arrived(rx1) - arrived(rx0), Some(figures))
        }
        _ => (bytes1 - bytes0, None),
    };
    let memory = memory.finish(Duration::from_secs_f64(s.settle_secs)).await;
    let cpu = cpu_split(&mark0, &mark1);
    let (server_cpu, agent_cpu) = (cpu.server.map(|c| c * secs), cpu.agent.map(|c| c * secs));
    let total_cpu = server_cpu.zip(agent_cpu).map(|(a, b)| a + b);
    let components = match recorded {
        Some((server_rec, agent_rec)) => {
            let per_gb = |secs: Option<f64>| secs.and_then(|c| cpu_per_gb(c, bytes)).unwrap_or(0.0);
            let (server, agent) = (crate::perf::profile(&server_rec).await?, crate::perf::profile(&agent_rec).await?);
            Some(CellComponents {
                recordings: [server_rec, agent_rec].map(|p| p.display().to_string()),
                server: crate::perf::ComponentCosts::new(&server, per_gb(server_cpu)),
                agent: crate::perf::ComponentCosts::new(&agent, per_gb(agent_cpu)),
            })
        }
        None => None,
    };
    Ok(ThroughputResult {
        peer: peer.kind.name().to_owned(),
        mode: mode.name().to_owned(),
        conns,
        secs,
        bytes,
        gbit_per_s: gbit_per_s(bytes, secs),
        server_cpu_secs: server_cpu,
        agent_cpu_secs: agent_cpu,
        cpu_secs_per_gb: total_cpu.and_then(|c| cpu_per_gb(c, bytes)),
        errors,
        cpu,
        memory: (memory.server.is_some() || memory.agent.is_some()).then_some(memory),
        upload,
        components,
        spread: ConnSpread::of(&conn_window),
    })
}

/// Bytes of one connection, counted into the cell's total as well.
struct Tally {
    all: Arc<Counters>,
    mine: Arc<AtomicU64>,
}

impl Tally {
    fn add(&self, n: usize) {
        self.all.add_bytes(n);
        self.mine.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The sink's count once it has seen every connection end (everything that
/// will ever arrive has), waiting at most [`SINK_DRAIN`].
async fn sink_drained(targets: Targets) -> anyhow::Result<SinkCount> {
    let deadline = Instant::now() + SINK_DRAIN;
    loop {
        let count = sink_count(targets.count).await?;
        if count.open == 0 {
            return Ok(count);
        }
        if Instant::now() >= deadline {
            return Err(anyhow::anyhow!("{} sink connection(s) still open {SINK_DRAIN:?} after closing", count.open))
                .context("waiting for the upload target to see every connection end");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `chunk`-sized buffers until `end` or until the cell's `budget`
/// of bytes is spent, counting what the client's tunnel library accepted.
async fn write_until(conn: Conn, end: Instant, chunk: usize, budget: &AtomicU64, c: &Tally) -> anyhow::Result<Conn> {
    let data = Bytes::from(vec![0x6bu8; chunk]);
    let take = |n: u64| budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(n)).is_ok();
    while take(chunk as u64) {
        match timeout_at(end, conn.write(data.clone())).await {
            Ok(r) => r?,
            Err(_) => break,
        }
        c.add(chunk);
    }
    Ok(conn)
}

/// Counts received bytes until `end`.
async fn read_until(mut conn: Conn, end: Instant, c: &Tally) -> anyhow::Result<Conn> {
    while let Ok(read) = timeout_at(end, conn.read_some()).await {
        match read? {
            0 => anyhow::bail!("the target closed the stream"),
            n => c.add(n),
        }
    }
    Ok(conn)
}

/// Writes chunks and counts what comes back until `end`, with at most
/// `window` bytes in flight.
async fn echo_until(mut conn: Conn, end: Instant, chunk: usize, window: usize, c: &Tally) -> anyhow::Result<Conn> {
    let credit = Arc::new(Semaphore::new(window / chunk));
    let writer = conn.writer.clone();
    let data = Bytes::from(vec![0x33u8; chunk]);
    let wcredit = Arc::clone(&credit);
    let write = tokio::spawn(async move {
        while let Ok(Ok(permit)) = timeout_at(end, wcredit.acquire()).await {
            permit.forget();
            if timeout_at(end, writer.write(data.clone())).await.is_err() {
                break;
            }
        }
    });
    let mut returned = 0usize;
    let result = loop {
        match timeout_at(end, conn.read_some()).await {
            Err(_) => break Ok(()),
            Ok(Ok(0)) => break Err(anyhow::anyhow!("the echo target closed the stream")),
            Ok(Ok(n)) => {
                c.add(n);
                returned += n;
                credit.add_permits(returned / chunk);
                returned %= chunk;
            }
            Ok(Err(e)) => break Err(e),
        }
    };
    write.abort();
    let _ = write.await;
    result.map(|()| conn)
}
