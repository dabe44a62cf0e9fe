//! `proxy-strategies` with real agents: which agent serves a dial follows the
//! strategies and the identifiers the agents sent; a dial no strategy finds
//! an agent for fails with upstream's "No agent available"; `/readyz` and
//! `ready_backends` follow the strategies.
//!
//! Every agent runs on loopback and reaches every target, so the test asks
//! the agents which of them made the TCP connection (their successful-dial
//! count). Each check dials several times: the server picks at random among
//! the agents a strategy finds, so a misrouted dial would show.

mod common;

use std::time::Duration;

use common::*;
use konnq_shared::config::ProxyStrategy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(15);
/// Dials per check: with two agents, a strategy that did not tell them apart
/// would send all of them to the expected one with probability 1/2^8.
const DIALS: usize = 8;

/// A server with `strategies`.
async fn lab(strategies: &str) -> Lab {
    Lab::with(|raw| raw.proxy_strategies = Some(strategies.parse().expect("valid strategies"))).await
}

/// Starts an agent with `identifiers` and waits until the server counts it.
async fn agent(lab: &Lab, id: &str, identifiers: &str) -> konnq_agent::AgentHandle {
    let before = lab.server.backend.agent_count();
    let agent = lab
        .agent_with(|raw| {
            raw.agent_id = Some(id.to_owned());
            raw.agent_identifiers = Some(identifiers.to_owned());
        })
        .await;
    within(LIMIT, agent.wait_connected(true)).await;
    within(LIMIT, lab.server.wait_for_agents(before + 1)).await;
    agent
}

/// Dials `address` [`DIALS`] times through the gRPC frontend, each time
/// checking the echo.
async fn dial_echo(lab: &Lab, address: &str) {
    for _ in 0..DIALS {
        let mut client = lab.channel().await;
        let mut stream = within(LIMIT, Stream::dial(&mut client, address)).await;
        assert_eq!(within(LIMIT, echo_through(&mut stream, b"ping")).await, b"ping");
        stream.close().await;
    }
}

/// The error of a dial to `address` that fails.
async fn dial_error(lab: &Lab, address: &str) -> String {
    let mut client = lab.channel().await;
    let mut stream = within(LIMIT, Stream::open(&mut client, address, 7)).await;
    match within(LIMIT, stream.next()).await {
        Event::DialRsp { error, .. } => error,
        other => panic!("expected DIAL_RSP, got {other:?}"),
    }
}

/// Target connections each agent made.
fn served(agents: &[&konnq_agent::AgentHandle]) -> Vec<u64> {
    agents.iter().map(|a| a.metrics.dial_duration.count()).collect()
}

/// `/readyz` of the server: status and body.
async fn readyz(lab: &Lab) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(lab.server.health_addr).await.expect("connect");
    s.write_all(b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n").await.expect("send request");
    let mut out = String::new();
    within(LIMIT, s.read_to_string(&mut out)).await.expect("read response");
    let (head, body) = out.split_once("\r\n\r\n").expect("a response head");
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("a status code");
    (status, body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dest_host_takes_the_agent_that_names_the_host() {
    let lab = lab("destHost,defaultRoute").await;
    let a = agent(&lab, "node-a", "host=localhost&ipv4=127.0.0.2").await;
    let b = agent(&lab, "node-b", "default-route=true").await;
    let (two, one) = (echo_on("127.0.0.2").await, echo_on("127.0.0.1").await);

    dial_echo(&lab, &two.to_string()).await;
    assert_eq!(served(&[&a, &b]), [DIALS as u64, 0], "ipv4=127.0.0.2 names the host");
    dial_echo(&lab, &format!("LocalHost:{}", one.port())).await;
    assert_eq!(served(&[&a, &b]), [2 * DIALS as u64, 0], "host=localhost names it, whatever the case");
    dial_echo(&lab, &one.to_string()).await;
    assert_eq!(served(&[&a, &b]), [2 * DIALS as u64, DIALS as u64], "no agent names 127.0.0.1: defaultRoute");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dest_host_takes_an_agent_whose_cidr_holds_the_address_after_exact_matches() {
    let lab = lab("destHost").await;
    let wide = agent(&lab, "node-wide", "cidr=127.0.0.0/8").await;
    let exact = agent(&lab, "node-exact", "ipv4=127.0.0.3").await;
    let narrow = agent(&lab, "node-narrow", "cidr=127.0.0.4/30").await;
    let (three, five, one) = (echo_on("127.0.0.3").await, echo_on("127.0.0.5").await, echo_on("127.0.0.1").await);

    dial_echo(&lab, &three.to_string()).await;
    assert_eq!(served(&[&wide, &exact, &narrow]), [0, DIALS as u64, 0], "an exact address beats every block");
    dial_echo(&lab, &five.to_string()).await;
    assert_eq!(served(&[&wide, &exact, &narrow]), [0, DIALS as u64, DIALS as u64], "the /30 beats the /8");
    dial_echo(&lab, &one.to_string()).await;
    let n = DIALS as u64;
    assert_eq!(served(&[&wide, &exact, &narrow]), [n, n, n], "only the /8 holds 127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategies_fall_through_dest_host_default_route_default() {
    let lab = lab("destHost,defaultRoute,default").await;
    let a = agent(&lab, "node-a", "ipv4=127.0.0.2").await;
    let plain = agent(&lab, "node-plain", "").await;
    let target = echo_on("127.0.0.1").await.to_string();

    dial_echo(&lab, &target).await;
    let to_default = served(&[&a, &plain]);
    assert_eq!(to_default.iter().sum::<u64>(), DIALS as u64, "neither destHost nor defaultRoute finds one: default");

    let b = agent(&lab, "node-b", "default-route=true").await;
    dial_echo(&lab, &target).await;
    assert_eq!(served(&[&a, &plain]), to_default, "defaultRoute found node-b: default is not tried");
    assert_eq!(served(&[&b]), [DIALS as u64]);

    dial_echo(&lab, &echo_on("127.0.0.2").await.to_string()).await;
    assert_eq!(served(&[&a]), [to_default[0] + DIALS as u64], "destHost first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_no_strategy_finds_an_agent_for_fails_with_no_agent_available() {
    let lab = lab("destHost").await;
    let a = agent(&lab, "node-a", "host=node-a&default-route=true").await;
    let target = echo_on("127.0.0.1").await;

    assert_eq!(dial_error(&lab, &target.to_string()).await, "No agent available");
    assert_eq!(dial_error(&lab, &format!("node-b:{}", target.port())).await, "No agent available");
    assert_eq!(served(&[&a]), [0], "the connected agent was not asked");
    let text = lab.server.metrics.render();
    assert!(text.contains("konnectivity_network_proxy_server_dial_failure_count{reason=\"no_agent\"} 2\n"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_ready_backends_follow_the_strategies() {
    let lab = lab("destHost,default").await;
    let m = &lab.server.metrics;
    let not_ready = (500, "no connection to any proxy agent".to_owned());
    assert_eq!(readyz(&lab).await, not_ready);
    assert_eq!(m.ready_backends_of(ProxyStrategy::DestHost), Some(0), "set from the start");
    assert_eq!(m.ready_backends_of(ProxyStrategy::Default), Some(0), "set from the start");
    assert_eq!(m.ready_backends_of(ProxyStrategy::DefaultRoute), None, "not configured");

    let routed = agent(&lab, "node-route", "default-route=true").await;
    assert_eq!(readyz(&lab).await, not_ready, "destHost, the first strategy, has no agent");
    assert_eq!(
        (m.ready_backends_of(ProxyStrategy::DestHost), m.ready_backends_of(ProxyStrategy::Default)),
        (Some(0), Some(1))
    );
    dial_echo(&lab, &echo_on("127.0.0.1").await.to_string()).await;
    assert_eq!(served(&[&routed]), [DIALS as u64], "not ready, yet dials go through by default");

    let named = agent(&lab, "node-a", "cidr=10.0.0.0/8").await;
    assert_eq!(readyz(&lab).await, (200, "ok".to_owned()), "a block is something destHost routes to");
    assert_eq!(
        (m.ready_backends_of(ProxyStrategy::DestHost), m.ready_backends_of(ProxyStrategy::Default)),
        (Some(1), Some(2))
    );
    assert_eq!(m.ready_backends(), 2);

    named.shutdown().await;
    eventually("node-a is gone", LIMIT, || lab.server.backend.agent_count() == 1).await;
    assert_eq!(readyz(&lab).await, not_ready);
    assert_eq!(m.ready_backends_of(ProxyStrategy::DestHost), Some(0));
}
