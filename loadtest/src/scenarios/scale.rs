//! Idle connections at scale: ramp to `conns` proxied connections (each
//! makes one small exchange, then stays open and idle), let the processes
//! settle, and divide the server's and agent's RSS and fd growth by the
//! number of connections. Then close them all and sample once more.

use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;

use crate::peers::Peer;
use crate::procfs::ProcSample;
use crate::progress::Progress;
use crate::report::ScaleResult;
use crate::settings::Scale;
use crate::stats::per_conn;
use crate::target::Targets;

const EXCHANGE_BYTES: usize = 16;

fn samples(peer: &Peer) -> anyhow::Result<(ProcSample, ProcSample)> {
    let (server, agent) = peer.sample();
    Ok((server.context("server figures unreadable")?, agent.context("agent figures unreadable")?))
}

pub async fn run(peer: &mut Peer, targets: Targets, s: &Scale, progress: &Progress) -> anyhow::Result<ScaleResult> {
    let label = format!("{} scale to {}", peer.kind.name(), s.conns);
    let counters = progress.stage(label, Duration::from_secs_f64(s.max_ramp_secs));
    tokio::time::sleep(Duration::from_secs_f64(s.settle_secs)).await;
    let (server_before, agent_before) = samples(peer)?;

    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(s.max_ramp_secs);
    // Stops early (and reports how far it got) if the peer refuses more connections.
    let (conns, errors) = ramp(peer, targets, s, deadline, &counters).await;
    let ramp_secs = start.elapsed().as_secs_f64();
    let reached = conns.len() as u64;
    tokio::time::sleep(Duration::from_secs_f64(s.settle_secs)).await;
    peer.check_alive()?;
    let (server_after, agent_after) = samples(peer)?;

    counters.open.store(0, std::sync::atomic::Ordering::Relaxed);
    let close_errors = super::close_many(conns, s.parallel).await;
    tokio::time::sleep(Duration::from_secs_f64(s.settle_secs)).await;
    let (server_closed, agent_closed) = peer.sample();

    let server_rss = per_conn(server_before.rss_bytes, server_after.rss_bytes, reached);
    let agent_rss = per_conn(agent_before.rss_bytes, agent_after.rss_bytes, reached);
    let fds = per_conn(server_before.fds + agent_before.fds, server_after.fds + agent_after.fds, reached);
    Ok(ScaleResult {
        peer: peer.kind.name().to_owned(),
        target_conns: s.conns,
        reached,
        ramp_secs,
        errors: errors + close_errors,
        server_before,
        server_after,
        agent_before,
        agent_after,
        server_rss_per_conn: server_rss,
        agent_rss_per_conn: agent_rss,
        rss_bytes_per_conn: server_rss + agent_rss,
        fds_per_conn: fds,
        server_closed,
        agent_closed,
    })
}

/// Consecutive failed batches after which the ramp stops where it is.
const MAX_FAILED_BATCHES: u32 = 3;

/// Opens connections `parallel` at a time until `conns` are open, the
/// deadline passes or [`MAX_FAILED_BATCHES`] batches in a row failed.
async fn ramp(
    peer: &Peer,
    targets: Targets,
    s: &Scale,
    deadline: Instant,
    counters: &crate::progress::Counters,
) -> (Vec<crate::conn::Conn>, u64) {
    let mut conns = Vec::with_capacity(s.conns as usize);
    let (mut errors, mut failed_in_a_row) = (0u64, 0);
    while (conns.len() as u64) < s.conns && failed_in_a_row < MAX_FAILED_BATCHES && Instant::now() < deadline {
        let batch = (s.conns as usize - conns.len()).min(s.parallel * 4);
        let open = super::open_some(&peer.dialer, targets.echo, batch, s.parallel, Some(EXCHANGE_BYTES));
        let Ok((opened, failed)) = tokio::time::timeout_at(deadline, open).await else { break };
        errors += failed.len() as u64;
        for _ in &failed {
            counters.error();
        }
        failed_in_a_row = if opened.is_empty() { failed_in_a_row + 1 } else { 0 };
        for _ in &opened {
            counters.op();
        }
        conns.extend(opened);
        counters.open.store(conns.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }
    (conns, errors)
}
