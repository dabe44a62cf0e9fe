//! `quic.max-concurrent-streams`: N configured admits N concurrent proxied
//! connections per agent, also after earlier connections closed, and the
//! next dial waits for a free stream up to the backend dial timeout.

mod common;

use std::time::Duration;

use common::*;
use konnq_shared::config::RawQuicConfig;

const LIMIT: u64 = 8;
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

fn limited(streams: u64) -> Option<RawQuicConfig> {
    Some(RawQuicConfig { max_concurrent_streams: Some(streams), ..Default::default() })
}

/// A server and an agent both configured for `streams` concurrent streams.
async fn lab_with_limit(streams: u64, dial_timeout: Duration) -> (Lab, konnq_agent::AgentHandle) {
    let lab = Lab::with(|raw| {
        raw.quic = limited(streams);
        raw.backend_dial_timeout = Some(dial_timeout);
    })
    .await;
    let agent = lab.agent_with(|raw| raw.quic = limited(streams)).await;
    agent.wait_connected(true).await;
    within(Duration::from_secs(10), lab.server.wait_for_agents(1)).await;
    (lab, agent)
}

/// A proxied connection that stays open (idle) until closed.
async fn idle_connection(lab: &Lab, target: &str) -> Stream {
    let mut client = lab.channel().await;
    Stream::dial(&mut client, target).await
}

async fn close(mut s: Stream) {
    s.close().await;
    let (_, err) = s.read_to_close().await;
    assert_eq!(err, "", "clean close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_streams_admits_exactly_that_many_connections() {
    let (lab, agent) = lab_with_limit(LIMIT, DIAL_TIMEOUT).await;
    let target = echo_target().await.to_string();

    // One connection opened and closed first, like a readiness probe. quinn
    // returns a closed stream's credit to the server only in batches, which
    // used to leave room for just LIMIT - 1 connections after it.
    let mut probe = idle_connection(&lab, &target).await;
    assert_eq!(echo_through(&mut probe, b"probe").await, b"probe");
    close(probe).await;

    // LIMIT idle connections: every dial succeeds (a dial that found no
    // stream would be answered with the dial timeout error instead).
    let mut open = Vec::new();
    for _ in 0..LIMIT {
        open.push(within(Duration::from_secs(10), idle_connection(&lab, &target)).await);
    }
    let ids: std::collections::HashSet<i64> = open.iter().map(|s| s.connect_id).collect();
    assert_eq!(ids.len(), LIMIT as usize, "distinct non-zero connectIDs");
    eventually("the agent holds every connection", Duration::from_secs(5), || {
        agent.metrics.open_endpoint_connections.get() == LIMIT as i64
    })
    .await;

    // One more waits for a free stream and, none coming, gets the dial
    // timeout.
    let mut client = lab.channel().await;
    let mut extra = Stream::open(&mut client, &target, 7).await;
    match within(DIAL_TIMEOUT * 3, extra.next()).await {
        Event::DialRsp { random: 7, connect_id: 0, error } => {
            assert!(error.starts_with("dial timeout"), "{error}");
            assert!(error.contains(&format!("all {LIMIT} streams")), "{error}");
        }
        other => panic!("expected a failed DIAL_RSP, got {other:?}"),
    }
    assert_eq!(
        lab.metric("konnectivity_network_proxy_server_dial_failure_count{reason=\"backend_dial_timeout\"}").await,
        1.0
    );

    // Another one waits too, and is admitted as soon as a connection closes.
    let mut client = lab.channel().await;
    let mut waiting = Stream::open(&mut client, &target, 8).await;
    eventually("the dial waits for a stream", Duration::from_secs(5), || lab.server.metrics.pending_dials.get() == 1)
        .await;
    close(open.pop().expect("an open connection")).await;
    match within(DIAL_TIMEOUT, waiting.next()).await {
        Event::DialRsp { random: 8, connect_id, error } => {
            assert_eq!(error, "", "admitted once a stream was free");
            assert!(connect_id != 0 && !ids.contains(&connect_id), "a new connectID");
            waiting.connect_id = connect_id;
        }
        other => panic!("expected DIAL_RSP, got {other:?}"),
    }
    open.push(waiting);
    for s in &mut open {
        assert_eq!(echo_through(s, b"still open").await, b"still open");
    }
    assert_eq!(agent.metrics.open_endpoint_connections.get(), LIMIT as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_waiting_for_a_stream_fails_when_the_agent_leaves() {
    let dial_timeout = Duration::from_secs(60);
    let (lab, agent) = lab_with_limit(1, dial_timeout).await;
    let target = echo_target().await.to_string();
    let _open = idle_connection(&lab, &target).await;
    let mut client = lab.channel().await;
    let mut waiting = Stream::open(&mut client, &target, 9).await;
    eventually("the dial waits for a stream", Duration::from_secs(5), || lab.server.metrics.pending_dials.get() == 1)
        .await;
    agent.shutdown().await;
    // Answered when the agent goes, long before the dial timeout.
    match within(Duration::from_secs(10), waiting.next()).await {
        Event::DialRsp { random: 9, connect_id: 0, error } => assert!(error.starts_with("agent "), "{error}"),
        other => panic!("expected a failed DIAL_RSP, got {other:?}"),
    }
}
