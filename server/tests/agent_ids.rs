//! Two live connections with one agent ID: the newest takes the dials; a
//! reconnect whose old connection goes away within the grace is not a
//! conflict, two live agents with one ID are (logged and counted); when the
//! newest goes, the other takes the dials again.

mod common;

use std::time::Duration;

use common::*;
use konnq_shared::wire::{Control, Hello};

const LIMIT: Duration = Duration::from_secs(15);

/// Dials the echo target through the server and checks the echo.
async fn dial_echo(lab: &Lab) {
    let target = echo_target().await;
    let mut client = lab.channel().await;
    let mut stream = within(LIMIT, Stream::dial(&mut client, &target.to_string())).await;
    assert_eq!(within(LIMIT, echo_through(&mut stream, b"ping")).await, b"ping");
    stream.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_agents_with_one_id_are_a_conflict_and_the_newest_takes_dials() {
    let lab = Lab::new().await;
    let first = lab.agent_with(|raw| raw.agent_id = Some("node-x".into())).await;
    within(LIMIT, lab.server.wait_for_agents(1)).await;
    let second = lab.agent_with(|raw| raw.agent_id = Some("node-x".into())).await;
    within(LIMIT, second.wait_connected(true)).await;
    eventually("both registered", LIMIT, || lab.server.backend.agent_count() == 2).await;
    let m = &lab.server.metrics;
    assert_eq!(m.ready_backends(), 1, "one agent ID takes dials once");
    eventually("the conflict is counted after the grace", LIMIT, || m.agent_id_conflicts.get() == 1).await;

    dial_echo(&lab).await;
    assert_eq!(second.metrics.dial_duration.count(), 1, "the newest connection took the dial");
    assert_eq!(first.metrics.dial_duration.count(), 0);

    second.shutdown().await;
    eventually("the newest is gone", LIMIT, || lab.server.backend.agent_count() == 1).await;
    assert_eq!(m.ready_backends(), 1, "the other one takes dials again");
    dial_echo(&lab).await;
    assert_eq!(first.metrics.dial_duration.count(), 1);
    assert!(lab.server.metrics.render().contains("konnq_server_agent_id_conflicts_total 1\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_whose_old_connection_goes_away_is_not_a_conflict() {
    let lab = Lab::new().await;
    let old = raw_agent(&lab, Hello { agent_id: "node-y".into(), ..Hello::default() }, true).await;
    assert!(matches!(old.answer, Control::Welcome { .. }), "{:?}", old.answer);
    within(LIMIT, lab.server.wait_for_agents(1)).await;
    let agent = lab.agent_with(|raw| raw.agent_id = Some("node-y".into())).await;
    within(LIMIT, agent.wait_connected(true)).await;
    eventually("both registered", LIMIT, || lab.server.backend.agent_count() == 2).await;
    assert_eq!(lab.server.metrics.ready_backends(), 1);
    dial_echo(&lab).await;
    assert_eq!(agent.metrics.dial_duration.count(), 1, "the reconnected agent took the dial");
    old.conn.close(0u32.into(), b"gone");
    eventually("the old connection is gone", LIMIT, || lab.server.backend.agent_count() == 1).await;
    // Nothing marks the end of the grace (idle timeout 1.5 s + 1 s) but
    // time: wait past it, then check that no conflict was counted.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(lab.server.metrics.agent_id_conflicts.get(), 0);
    assert_eq!(lab.server.metrics.ready_backends(), 1);
}
