//! Two live connections with one agent ID: the newest takes the dials; a
//! reconnect whose old connection goes away within the grace is not a
//! conflict, two live agents with one ID are (logged and counted); when the
//! newest goes, the other takes the dials again.

mod common;

use std::time::Duration;

use common::*;
use konnq_protocol::wire::{Control, Hello};

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
    // The signal that node-y's grace check has run: a real conflict
    // (node-z) registered after it, whose check runs after node-y's, is
    // counted. Only that one may be.
    let z1 = raw_agent(&lab, Hello { agent_id: "node-z".into(), ..Hello::default() }, true).await;
    let z2 = raw_agent(&lab, Hello { agent_id: "node-z".into(), ..Hello::default() }, true).await;
    assert!(matches!((&z1.answer, &z2.answer), (Control::Welcome { .. }, Control::Welcome { .. })));
    let conflicts = &lab.server.metrics.agent_id_conflicts;
    eventually("node-z's conflict is counted", LIMIT, || conflicts.get() >= 1).await;
    assert_eq!(conflicts.get(), 1, "node-y's reconnect is not a conflict");
    assert_eq!(lab.server.metrics.ready_backends(), 2, "node-y and node-z take dials once each");
}
