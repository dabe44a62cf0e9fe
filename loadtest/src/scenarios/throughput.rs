//! Bulk throughput: `conns` connections at once, either one-way (the source
//! target streams to the client, like `kubectl logs -f`) or echo (the client
//! streams `chunk_bytes` writes and reads them back, at most `window_bytes`
//! in flight per connection). Bytes received by the client in the measured
//! window give Gbit/s; server and agent CPU from /proc over the same window
//! give CPU seconds per GB.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout_at, Instant};

use super::{cpu_mark, cpu_split};
use crate::conn::Conn;
use crate::peers::Peer;
use crate::progress::Progress;
use crate::report::ThroughputResult;
use crate::settings::{Mode, Throughput};
use crate::stats::{cpu_per_gb, gbit_per_s};
use crate::target::Targets;

pub async fn run(
    peer: &Peer,
    targets: Targets,
    mode: Mode,
    conns: usize,
    s: &Throughput,
    progress: &Progress,
) -> anyhow::Result<ThroughputResult> {
    let target = if mode == Mode::Oneway { targets.source } else { targets.echo };
    let opened = super::open_many(&peer.dialer, target, conns, conns.min(64), None).await?;
    let label = format!("{} throughput {} x{conns}", peer.kind.name(), mode.name());
    let counters = progress.stage(label, Duration::from_secs_f64(s.warmup_secs + s.secs));
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(s.warmup_secs);
    let end = measure_from + Duration::from_secs_f64(s.secs);

    let mut set = JoinSet::new();
    for conn in opened {
        let c = Arc::clone(&counters);
        let (chunk, window) = (s.chunk_bytes, s.window_bytes);
        set.spawn(async move {
            let result = match mode {
                Mode::Oneway => read_until(conn, end, &c).await,
                Mode::Echo => echo_until(conn, end, chunk, window, &c).await,
            };
            match result {
                Ok(conn) => conn.close().await.is_err(),
                Err(_) => true,
            }
        });
    }
    sleep_until(measure_from).await;
    let (bytes0, mark0) = (counters.bytes.load(std::sync::atomic::Ordering::Relaxed), cpu_mark(peer, targets));
    sleep_until(end).await;
    let (bytes1, mark1) = (counters.bytes.load(std::sync::atomic::Ordering::Relaxed), cpu_mark(peer, targets));
    let secs = mark1.at.duration_since(mark0.at).as_secs_f64();
    let mut errors = 0;
    while let Some(r) = set.join_next().await {
        errors += u64::from(r.unwrap_or(true));
    }
    let bytes = bytes1 - bytes0;
    let cpu = cpu_split(&mark0, &mark1);
    let (server_cpu, agent_cpu) = (cpu.server.map(|c| c * secs), cpu.agent.map(|c| c * secs));
    let total_cpu = server_cpu.zip(agent_cpu).map(|(a, b)| a + b);
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
    })
}

/// Counts received bytes until `end`.
async fn read_until(mut conn: Conn, end: Instant, c: &crate::progress::Counters) -> anyhow::Result<Conn> {
    while let Ok(read) = timeout_at(end, conn.read_some()).await {
        match read? {
            0 => anyhow::bail!("the target closed the stream"),
            n => c.add_bytes(n),
        }
    }
    Ok(conn)
}

/// Writes chunks and counts what comes back until `end`, with at most
/// `window` bytes in flight.
async fn echo_until(
    mut conn: Conn,
    end: Instant,
    chunk: usize,
    window: usize,
    c: &crate::progress::Counters,
) -> anyhow::Result<Conn> {
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
                c.add_bytes(n);
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
