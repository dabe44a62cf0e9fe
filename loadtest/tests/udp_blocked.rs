//! An agent whose network drops UDP: the server in one network namespace,
//! the agent in another, and an nftables rule in the agent's namespace that
//! drops every UDP datagram to the server's agent port. The agent
//! (`transport = auto`) connects over TCP, proxies, and moves back to QUIC
//! over UDP once the rule is gone. Needs root (namespaces, TUN, nftables;
//! `scripts/test.sh` installs nftables).

use std::net::SocketAddr;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use konnq_netlab::settings::LinkSettings;
use konnq_netlab::{Lab, Side};
use konnq_shared::client::{connect_uds, ProxyConn};

mod common;

const LIMIT: Duration = Duration::from_secs(30);

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test needs root (network namespaces, TUN devices, nftables); run the suite as root");
    }
}

/// Runs `nft` with `args` inside `side`'s namespace; panics with its stderr.
fn nft(lab: &Lab, side: Side, args: &[&str]) {
    let mut cmd = Command::new("nft");
    cmd.args(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let out = lab.run_in(side, cmd).expect("nft runs (apt-get install nftables)").wait_with_output().expect("nft");
    assert!(out.status.success(), "nft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Waits (bounded) until `cond` holds.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < LIMIT, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn gauge(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn an_agent_behind_a_udp_drop_rule_uses_tcp_and_returns_to_udp() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = konnq_shared::certs::generate(&dir.path().join("pki"), &[Side::A.addr().to_string()]).expect("certs");
    let lab = Lab::create("kqudp", LinkSettings::default()).expect("lab (root, /dev/net/tun)");
    let socket = dir.path().join("konnq.sock");

    // The server, in A.
    let server = common::LabServer::start(&lab, &certs, &socket, LIMIT);
    let server_metrics = server.metrics.clone();
    let port = server.agent_addr.port().to_string();

    // UDP from B to the agent port is dropped, as a firewall would.
    nft(&lab, Side::B, &["add", "table", "inet", "kqudp"]);
    nft(&lab, Side::B, &["add", "chain", "inet", "kqudp", "out", "{ type filter hook output priority 0 ; }"]);
    nft(&lab, Side::B, &["add", "rule", "inet", "kqudp", "out", "udp", "dport", &port, "drop"]);

    // The agent and an echo target, in B.
    let (agent_tx, agent_rx) = mpsc::channel();
    let (stop_agent, agent_stop) = tokio::sync::oneshot::channel::<()>();
    let raw = konnq_shared::config::RawAgentConfig {
        transport_fallback_after: Some(Duration::from_secs(1)),
        ..server.agent_config(&certs)
    };
    let agent = lab
        .spawn_async_in(Side::B, move || async move {
            let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("echo");
            let target = echo.local_addr().expect("addr");
            common::serve_with(echo, konnq_loadtest::target::echo_conn);
            let cfg = raw.validate().expect("agent config");
            let listeners = konnq_agent::Listeners::bind(&cfg).await.expect("agent bind");
            let handle = konnq_agent::start(cfg, listeners).await.expect("agent starts");
            agent_tx.send((target, handle.metrics.clone())).expect("send");
            let _ = agent_stop.await;
            handle.shutdown().await;
        })
        .expect("agent thread");
    let (target, agent_metrics): (SocketAddr, konnq_agent::metrics::Metrics) =
        agent_rx.recv_timeout(LIMIT).expect("agent up");

    let began = Instant::now();
    let tcp_agents = "konnq_server_agent_connections{transport=\"tcp\"}";
    let quic_agents = "konnq_server_agent_connections{transport=\"quic\"}";
    eventually("the server has the agent over TCP", || gauge(&server_metrics.render(), tcp_agents) == 1.0);
    eprintln!("agent connected over TCP {} ms after it started", began.elapsed().as_millis());
    assert_eq!(agent_metrics.tcp_fallbacks.get(), 1);

    // kube-apiserver's side: a dial through the server's socket, echoed by
    // the target next to the agent.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut open = rt.block_on(async {
        let mut client = connect_uds(&socket).await.expect("uds");
        let mut conn = ProxyConn::dial(&mut client, &target.to_string()).await.expect("dial over tcp");
        conn.write(Bytes::from_static(b"over tcp")).await.expect("write");
        assert_eq!(conn.read_exact(8).await.expect("echo"), b"over tcp");
        (client, conn)
    });

    nft(&lab, Side::B, &["delete", "table", "inet", "kqudp"]);
    let lifted = Instant::now();
    eventually("the agent is on UDP", || agent_metrics.connections_on("quic").get() == 1);
    eprintln!("back on QUIC over UDP {} ms after the rule was removed", lifted.elapsed().as_millis());
    // The server takes dials on a new connection a moment after it counts
    // it (two round trips, in case the agent closes it as a duplicate).
    eventually("the server has the agent over UDP", || gauge(&server_metrics.render(), quic_agents) == 1.0);
    rt.block_on(async {
        // The transfer begun over TCP goes on; a new dial takes UDP.
        open.1.write(Bytes::from_static(b"still tcp")).await.expect("write");
        assert_eq!(open.1.read_exact(9).await.expect("echo"), b"still tcp");
        let mut fresh = ProxyConn::dial(&mut open.0, &target.to_string()).await.expect("dial over udp");
        fresh.write(Bytes::from_static(b"udp")).await.expect("write");
        assert_eq!(fresh.read_exact(3).await.expect("echo"), b"udp");
        fresh.close().await.expect("close");
        let (_, conn) = open;
        conn.close().await.expect("close");
    });
    eventually("the TCP connection closed", || gauge(&server_metrics.render(), tcp_agents) == 0.0);
    assert_eq!(gauge(&server_metrics.render(), quic_agents), 1.0);

    let _ = stop_agent.send(());
    agent.join().expect("agent thread");
    server.stop();
}
