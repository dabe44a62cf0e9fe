//! QUIC connection migration: the agent moves its endpoint to a new local
//! UDP socket (`AgentHandle::rebind`, SIGUSR1 in the binary) and every
//! proxied connection carries on over the same QUIC connection.

mod common;

use std::time::Duration;

use common::*;

const SERVER_READY_AGENTS: &str = "konnectivity_network_proxy_server_ready_backend_connections";
const SERVER_ESTABLISHED: &str = "konnectivity_network_proxy_server_established_connections";

/// The agent's QUIC connection as the server sees it, taken from a dial
/// through the backend (the dial's streams are dropped at once).
async fn server_side_agent_connection(lab: &Lab, target: &str) -> quinn::Connection {
    let dialed = within(Duration::from_secs(10), lab.server.backend.dial_timed("tcp", target))
        .await
        .expect("backend dial through the agent");
    dialed.agent.conn.clone()
}

#[tokio::test]
async fn proxied_connection_survives_the_agent_moving_to_a_new_udp_socket() {
    let lab = Lab::new().await;
    let agent = lab.ready_agent().await;
    let echo = echo_target().await.to_string();
    let mut client = lab.channel().await;
    let mut stream = Stream::dial(&mut client, &echo).await;

    let before = random_bytes(64 * 1024);
    assert!(echo_through(&mut stream, &before).await == before, "echo before the move");

    let conn = server_side_agent_connection(&lab, &echo).await;
    let [old] = agent.quic_local_addrs()[..] else { panic!("one server, one socket") };
    assert_eq!(conn.remote_address().port(), old.port(), "the server sees the agent's first socket");
    let mut agents_seen = lab.server.backend.ready_agents();
    agents_seen.mark_unchanged();

    let [new] = agent.rebind().expect("rebind")[..] else { panic!("one socket moved") };
    assert_ne!(new.port(), old.port(), "a new local port");
    assert_eq!(new.ip(), old.ip(), "same local IP");
    assert_eq!(agent.quic_local_addrs(), [new]);

    // Every byte of 1 MiB over the same proxied connection, after the move.
    let after = random_bytes(1024 * 1024);
    let echoed = within(Duration::from_secs(30), echo_through(&mut stream, &after)).await;
    assert_eq!(echoed.len(), after.len());
    if let Some(i) = echoed.iter().zip(&after).position(|(a, b)| a != b) {
        panic!("echo differs at byte {i} of {}", after.len());
    }

    // The server migrated the same QUIC connection to the new address.
    eventually("the server sees the agent's new port", Duration::from_secs(10), || {
        conn.remote_address().port() == new.port()
    })
    .await;
    assert!(conn.close_reason().is_none(), "the agent's QUIC connection is still open");
    let again = server_side_agent_connection(&lab, &echo).await;
    assert_eq!(again.stable_id(), conn.stable_id(), "dials still use the same QUIC connection");

    // A new proxied connection after the move.
    let mut client2 = lab.channel().await;
    let mut fresh = Stream::dial(&mut client2, &echo).await;
    let payload = random_bytes(64 * 1024);
    assert!(echo_through(&mut fresh, &payload).await == payload, "echo on a new connection");

    // No reconnect on either side.
    assert!(!agents_seen.has_changed().expect("server alive"), "the server's agent set never changed");
    assert_eq!(lab.metric(SERVER_READY_AGENTS).await, 1.0);
    assert!(agent.is_connected());
    assert_eq!(agent.metrics.connect_failures.get(), 0);
    assert_eq!(agent.metrics.socket_rebinds.get(), 1);
    assert!(agent.metrics.render().contains("\nkonnq_agent_socket_rebinds_total 1\n"));
    assert_eq!(lab.metric(SERVER_ESTABLISHED).await, 2.0, "both proxied connections open");

    stream.close().await;
    let (_, err) = within(Duration::from_secs(10), stream.read_to_close()).await;
    assert!(err.is_empty(), "clean close: {err}");
}
