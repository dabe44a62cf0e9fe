//! The whole tunnel on one machine, on an embedded default configuration:
//! generates certificates, starts konnq-server (gRPC on a Unix socket,
//! QUIC for agents), a konnq-agent and local TCP targets, pushes traffic
//! through the Unix-socket frontend the way kube-apiserver does (a new
//! HTTP/2 connection and Proxy stream per dial), and prints what happened.
//!
//! Run: `cargo run --release -p konnq-server --example demo`

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use konnq_shared::client::{connect_uds, ProxyConn};
use konnq_shared::config::{RawAgentConfig, RawServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const CONNECTIONS: usize = 16;
const BYTES_PER_CONNECTION: usize = 16 * 1024 * 1024;
/// Dials timed one at a time, on an otherwise idle tunnel.
const TIMED_DIALS: usize = 64;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into())).init();
    let dir = tempfile::tempdir()?;
    let certs = konnq_shared::certs::generate(&dir.path().join("pki"), &[])?;
    println!("certificates   {}", certs.dir.display());

    let server_cfg = RawServerConfig {
        uds_name: Some(dir.path().join("konnq.sock")),
        agent_bind_address: Some("127.0.0.1".parse()?),
        agent_port: Some(0),
        health_bind_address: Some("127.0.0.1".parse()?),
        health_port: Some(0),
        admin_port: Some(0),
        cluster_cert: Some(certs.server_cert.clone()),
        cluster_key: Some(certs.server_key.clone()),
        cluster_ca_cert: Some(certs.ca_cert.clone()),
        ..Default::default()
    }
    .validate()?;
    let socket = server_cfg.uds_name.clone().context("uds")?;
    let server = konnq_server::start(server_cfg.clone(), konnq_server::Listeners::bind(&server_cfg).await?).await?;
    println!(
        "konnq-server   gRPC on {}  QUIC on {}  /metrics on http://{}",
        socket.display(),
        server.agent_addr,
        server.admin_addr
    );

    let agent_cfg = RawAgentConfig {
        proxy_server_host: Some("127.0.0.1".into()),
        proxy_server_port: Some(server.agent_addr.port()),
        ca_cert: Some(certs.ca_cert.clone()),
        agent_cert: Some(certs.agent_cert.clone()),
        agent_key: Some(certs.agent_key.clone()),
        health_bind_address: Some("127.0.0.1".parse()?),
        health_server_port: Some(0),
        admin_server_port: Some(0),
        ..Default::default()
    }
    .validate()?;
    let agent = konnq_agent::start(agent_cfg.clone(), konnq_agent::Listeners::bind(&agent_cfg).await?).await?;
    tokio::time::timeout(Duration::from_secs(10), server.wait_for_agents(1)).await.context("agent did not connect")?;
    println!("konnq-agent    connected (agent id {})", agent_cfg.agent_id);

    let echo = echo_target().await?;
    let web = web_target().await?;

    // 1. An HTTP request through the tunnel, as for `kubectl logs`.
    let mut client = connect_uds(&socket).await?;
    let mut conn = ProxyConn::dial(&mut client, &web.to_string()).await?;
    conn.write(Bytes::from_static(b"GET /healthz HTTP/1.1\r\nHost: kubelet\r\nConnection: close\r\n\r\n")).await?;
    let mut response = Vec::new();
    while let Some(chunk) = conn.read().await? {
        response.extend_from_slice(&chunk);
    }
    let status = String::from_utf8_lossy(&response).lines().next().unwrap_or_default().to_owned();
    println!("http via tunnel  {status}");

    // 2. A dial to a closed port fails cleanly.
    let closed = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    match ProxyConn::dial(&mut connect_uds(&socket).await?, &closed.to_string()).await {
        Err(e) => println!("closed port      {e}"),
        Ok(_) => bail!("a dial to a closed port succeeded"),
    }

    // 3. Echo traffic on concurrent single-use tunnels.
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CONNECTIONS {
        let socket = socket.clone();
        tasks.spawn(async move { echo_one(&socket, echo, i as u8).await });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let secs = started.elapsed().as_secs_f64();
    let moved = (2 * CONNECTIONS * BYTES_PER_CONNECTION) as f64;
    println!(
        "echo             {CONNECTIONS} connections x {} MiB each way, every byte checked, in {secs:.2} s ({:.2} Gbit/s through the tunnel)",
        BYTES_PER_CONNECTION >> 20,
        moved * 8.0 / secs / 1e9
    );

    // 4. Dial latency: single-use tunnels one after another, each timed
    // from DIAL_REQ to DIAL_RSP, then closed.
    let mut dial_times = Vec::with_capacity(TIMED_DIALS);
    for _ in 0..TIMED_DIALS {
        let mut client = connect_uds(&socket).await?;
        let t = Instant::now();
        let conn = ProxyConn::dial(&mut client, &echo.to_string()).await?;
        dial_times.push(t.elapsed());
        conn.close().await?;
    }
    dial_times.sort();
    println!(
        "dial latency     {TIMED_DIALS} dials one at a time: min {:?}  median {:?}  max {:?}",
        dial_times[0],
        dial_times[TIMED_DIALS / 2],
        dial_times[TIMED_DIALS - 1]
    );
    let text = server.metrics.render();
    println!("server metrics:");
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.contains("_bucket")) {
        println!("  {line}");
    }
    agent.shutdown().await;
    server.shutdown().await;
    println!("done: server and agent stopped cleanly");
    Ok(())
}

/// Dials, echoes BYTES_PER_CONNECTION bytes, checks them, closes.
async fn echo_one(socket: &std::path::Path, target: std::net::SocketAddr, seed: u8) -> anyhow::Result<()> {
    let mut client = connect_uds(socket).await?;
    let mut conn = ProxyConn::dial(&mut client, &target.to_string()).await?;
    let payload: Vec<u8> = (0..BYTES_PER_CONNECTION).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    let writer = conn.writer();
    let p = Bytes::from(payload.clone());
    let send = tokio::spawn(async move {
        for off in (0..p.len()).step_by(256 * 1024) {
            writer.write(p.slice(off..(off + 256 * 1024).min(p.len()))).await?;
        }
        anyhow::Ok(())
    });
    let echoed = conn.read_exact(payload.len()).await?;
    send.await??;
    if echoed != payload {
        bail!("connection {seed}: echoed bytes differ");
    }
    conn.close().await?;
    Ok(())
}

async fn echo_target() -> anyhow::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

/// A minimal HTTP/1.1 server standing in for a kubelet endpoint.
async fn web_target() -> anyhow::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "ok";
                let resp =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    Ok(addr)
}
