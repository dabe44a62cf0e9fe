//! The scenarios. Each takes a ready peer and returns its figures; each is
//! bounded in time and count and stops by itself. The drivers are thin: the
//! schedule, statistics and report logic they use are pure and tested apart.

pub mod dial;
pub mod dial_go;
pub mod latency;
pub mod scale;
pub mod soak;
pub mod throughput;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use tokio::task::JoinSet;

use crate::conn::{Conn, Dialer, Timing};
use crate::peers::Peer;
use crate::procfs;
use crate::report::CpuSplit;
use crate::target::Targets;

/// How long opening one connection may take.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Dials with [`DIAL_TIMEOUT`].
pub async fn dial(dialer: &Dialer, target: SocketAddr) -> anyhow::Result<(Conn, Timing)> {
    tokio::time::timeout(DIAL_TIMEOUT, dialer.dial(target)).await.context("dial timed out")?
}

/// Opens `n` connections to `target`, `parallel` at a time; each makes one
/// `bytes`-sized exchange with the echo target first when `exchange` is set.
/// Fails (closing what it opened) if any of them fails.
pub async fn open_many(
    dialer: &Dialer,
    target: SocketAddr,
    n: usize,
    parallel: usize,
    exchange: Option<usize>,
) -> anyhow::Result<Vec<Conn>> {
    let (conns, errors) = open_some(dialer, target, n, parallel, exchange).await;
    match errors.into_iter().next() {
        None => Ok(conns),
        Some(e) => {
            close_many(conns, parallel).await;
            Err(e)
        }
    }
}

/// Like [`open_many`], but keeps what opened: (connections, errors of the others).
pub async fn open_some(
    dialer: &Dialer,
    target: SocketAddr,
    n: usize,
    parallel: usize,
    exchange: Option<usize>,
) -> (Vec<Conn>, Vec<anyhow::Error>) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..parallel.clamp(1, n.max(1)) {
        let (dialer, next) = (dialer.clone(), Arc::clone(&next));
        set.spawn(async move {
            let (mut conns, mut errors) = (Vec::new(), Vec::new());
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let one = async {
                    let (mut conn, _) = dial(&dialer, target).await?;
                    if let Some(bytes) = exchange {
                        one_exchange(&mut conn, bytes).await?;
                    }
                    anyhow::Ok(conn)
                };
                match one.await {
                    Ok(conn) => conns.push(conn),
                    Err(e) => errors.push(e),
                }
            }
            (conns, errors)
        });
    }
    let (mut all, mut errors) = (Vec::with_capacity(n), Vec::new());
    while let Some(r) = set.join_next().await {
        match r {
            Ok((c, e)) => {
                all.extend(c);
                errors.extend(e);
            }
            Err(e) => errors.push(anyhow::anyhow!("dial task failed: {e}")),
        }
    }
    (all, errors)
}

/// Writes `bytes` and reads them back (the echo target).
pub async fn one_exchange(conn: &mut Conn, bytes: usize) -> anyhow::Result<()> {
    conn.write(Bytes::from(vec![0x42u8; bytes])).await?;
    tokio::time::timeout(DIAL_TIMEOUT, conn.read_exact(bytes)).await.context("exchange timed out")?
}

/// Closes every connection, `parallel` at a time; returns how many failed.
pub async fn close_many(conns: Vec<Conn>, parallel: usize) -> u64 {
    let queue = Arc::new(std::sync::Mutex::new(conns));
    let mut set = JoinSet::new();
    for _ in 0..parallel.max(1) {
        let queue = Arc::clone(&queue);
        set.spawn(async move {
            let mut failed = 0u64;
            loop {
                let next = queue.lock().ok().and_then(|mut q| q.pop());
                let Some(conn) = next else { break };
                failed += u64::from(conn.close().await.is_err());
            }
            failed
        });
    }
    let mut failed = 0;
    while let Some(r) = set.join_next().await {
        failed += r.unwrap_or(0);
    }
    failed
}

/// CPU seconds of every process involved, at one instant.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    pub at: std::time::Instant,
    pub runner: f64,
    pub target: f64,
    pub server: Option<f64>,
    pub agent: Option<f64>,
}

/// Reads the runner's, target's, server's and agent's CPU time now.
pub fn cpu_mark(peer: &Peer, targets: Targets) -> CpuMark {
    let cpu = |pid: Option<u32>| pid.and_then(|p| procfs::sample(p).ok()).map(|s| s.cpu_secs);
    let (server, agent) = peer.sample();
    CpuMark {
        at: std::time::Instant::now(),
        runner: cpu(Some(std::process::id())).unwrap_or(0.0),
        target: cpu(targets.pid).unwrap_or(0.0),
        server: server.map(|s| s.cpu_secs),
        agent: agent.map(|s| s.cpu_secs),
    }
}

/// Cores used by each process between two marks.
pub fn cpu_split(a: &CpuMark, b: &CpuMark) -> CpuSplit {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    let d = |x: Option<f64>, y: Option<f64>| x.zip(y).map(|(x, y)| (y - x) / secs);
    CpuSplit {
        runner: (b.runner - a.runner) / secs,
        target: (b.target - a.target) / secs,
        server: d(a.server, b.server),
        agent: d(a.agent, b.agent),
    }
}

/// The average of two CPU splits measured over `a_secs` and `b_secs`.
pub fn cpu_weighted(a: CpuSplit, a_secs: f64, b: CpuSplit, b_secs: f64) -> CpuSplit {
    let total = (a_secs + b_secs).max(1e-9);
    let w = |x: f64, y: f64| (x * a_secs + y * b_secs) / total;
    CpuSplit {
        runner: w(a.runner, b.runner),
        target: w(a.target, b.target),
        server: a.server.zip(b.server).map(|(x, y)| w(x, y)),
        agent: a.agent.zip(b.agent).map(|(x, y)| w(x, y)),
    }
}

/// Elapsed nanoseconds as u64 for histograms.
pub fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_split_is_cores() {
        let at = std::time::Instant::now();
        let a = CpuMark { at, runner: 1.0, target: 0.0, server: Some(2.0), agent: None };
        let b =
            CpuMark { at: at + Duration::from_secs(2), runner: 2.0, target: 0.5, server: Some(4.0), agent: Some(1.0) };
        let s = cpu_split(&a, &b);
        assert_eq!((s.runner, s.target, s.server, s.agent), (0.5, 0.25, Some(1.0), None));
    }

    #[test]
    fn cpu_weighted_by_duration() {
        let a = CpuSplit { runner: 1.0, target: 0.0, server: Some(1.0), agent: Some(0.0) };
        let b = CpuSplit { runner: 0.0, target: 1.0, server: Some(0.0), agent: None };
        let m = cpu_weighted(a, 3.0, b, 1.0);
        assert_eq!((m.runner, m.target, m.server, m.agent), (0.75, 0.25, Some(0.75), None));
    }
}
