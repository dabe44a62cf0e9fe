//! `konnq-loadtest agents`: a reconnect storm. Many agents, simulated from
//! one process, connect to one konnq-server at once, each with its own
//! ServiceAccount token, the way every node's agent reconnects after a
//! server restart or a network partition. Each agent retries with the
//! real agent's backoff until the server welcomes it; the report says how
//! long the whole fleet took and what the server refused on the way.
//!
//! With `--waves 2` the fleet disconnects after the first wave and
//! reconnects at once: the second wave shows what a storm costs when the
//! server still knows the tokens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use konnq_protocol::wire::{self, Control, Hello};
use konnq_shared::config::QuicConfig;
use konnq_shared::quic::read_frame;

#[derive(Debug, Args)]
pub struct AgentsArgs {
    /// The server's agent address (UDP), e.g. 10.0.0.1:8132.
    #[arg(long)]
    pub server: SocketAddr,
    /// Name to verify in the server's certificate [default: the address].
    #[arg(long)]
    pub server_name: Option<String>,
    /// CA that signed the server's certificate.
    #[arg(long)]
    pub ca_cert: PathBuf,
    /// File with one token per line; one agent per token.
    #[arg(long)]
    pub tokens: PathBuf,
    /// Connect the fleet this many times in a row (each wave closes every
    /// connection of the previous one first).
    #[arg(long, default_value_t = 1)]
    pub waves: u32,
    /// Give up on a wave after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub deadline_secs: u64,
}

/// One agent's way into the server: when it was welcomed, and the reasons
/// it was turned away before that.
struct Admission {
    ready_after: Duration,
    refusals: Vec<String>,
    conn: quinn::Connection,
    /// Held while the agent stays admitted: dropping the control stream
    /// would end its session.
    _control: (quinn::SendStream, quinn::RecvStream),
}

pub async fn main(args: AgentsArgs) -> anyhow::Result<()> {
    let tokens: Vec<String> = std::fs::read_to_string(&args.tokens)
        .with_context(|| format!("--tokens {}", args.tokens.display()))?
        .lines()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    anyhow::ensure!(!tokens.is_empty(), "--tokens {}: no token", args.tokens.display());
    let endpoint = client_endpoint(&args)?;
    let name = args.server_name.clone().unwrap_or_else(|| args.server.ip().to_string());
    let mut failed = false;
    for wave in 1..=args.waves {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(args.deadline_secs);
        let tasks: Vec<_> = tokens
            .iter()
            .enumerate()
            .map(|(i, token)| {
                let hello = Hello { agent_id: format!("storm-{i}"), identifiers: Vec::new(), token: token.clone() };
                tokio::spawn(admit(endpoint.clone(), args.server, name.clone(), hello, start, deadline))
            })
            .collect();
        let mut admitted = Vec::new();
        let mut errors = Vec::new();
        for task in tasks {
            match task.await {
                Ok(Ok(a)) => admitted.push(a),
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(format!("task: {e}")),
            }
        }
        println!("{}", report(wave, tokens.len(), &admitted, start.elapsed()));
        for e in errors.iter().take(5) {
            println!("wave {wave}: not admitted: {e}");
        }
        failed |= !errors.is_empty();
        for a in &admitted {
            a.conn.close(0u32.into(), b"wave over");
        }
    }
    endpoint.wait_idle().await;
    anyhow::ensure!(!failed, "not every agent was admitted");
    Ok(())
}

/// The summary line of one wave.
fn report(wave: u32, n: usize, admitted: &[Admission], took: Duration) -> String {
    let mut times: Vec<Duration> = admitted.iter().map(|a| a.ready_after).collect();
    times.sort();
    let pct = |p: f64| times.get(((times.len() as f64 * p).ceil() as usize).saturating_sub(1)).copied();
    let secs = |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()));
    let mut reasons: Vec<(String, usize)> = Vec::new();
    for r in admitted.iter().flat_map(|a| &a.refusals) {
        // The reason without what differs per agent (long texts cut).
        let kind: String = r.chars().take(90).collect();
        match reasons.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, count)) => *count += 1,
            None => reasons.push((kind, 1)),
        }
    }
    let refused: usize = reasons.iter().map(|(_, c)| c).sum();
    format!(
        "wave {wave}: {}/{n} agents admitted; last after {} (p50 {}, p99 {}); wave took {:.2} s; \
         {refused} refusals on the way {reasons:?}",
        admitted.len(),
        secs(times.last().copied()),
        secs(pct(0.5)),
        secs(pct(0.99)),
        took.as_secs_f64(),
    )
}

/// Connects and says hello until welcomed, with the agent's backoff
/// (1 s doubling to 10 s, jittered) between refusals.
async fn admit(
    endpoint: quinn::Endpoint,
    server: SocketAddr,
    name: String,
    hello: Hello,
    start: Instant,
    deadline: Instant,
) -> Result<Admission, String> {
    let mut backoff = konnq_agent::sync::Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
    let mut refusals = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline.into(), attempt(&endpoint, server, &name, &hello)).await {
            Ok(Ok((conn, control))) => {
                return Ok(Admission { ready_after: start.elapsed(), refusals, conn, _control: control })
            }
            Ok(Err(why)) => refusals.push(why),
            Err(_) => return Err(format!("{}: not admitted before the deadline", hello.agent_id)),
        }
        let pause = backoff.next_delay();
        if Instant::now() + pause > deadline {
            return Err(format!("{}: refused until the deadline: {:?}", hello.agent_id, refusals.last()));
        }
        tokio::time::sleep(pause).await;
    }
}

/// The connection and its control stream.
pub(crate) type Session = (quinn::Connection, (quinn::SendStream, quinn::RecvStream));

/// One connection and Hello; Ok once the server sends its Welcome.
pub(crate) async fn attempt(
    endpoint: &quinn::Endpoint,
    server: SocketAddr,
    name: &str,
    hello: &Hello,
) -> Result<Session, String> {
    let conn = endpoint
        .connect(server, name)
        .map_err(|e| format!("connect: {e}"))?
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| format!("control stream: {e}"))?;
    send.write_all(&Control::Hello(hello.clone()).encode()).await.map_err(|e| format!("hello: {e}"))?;
    let (kind, body) = read_frame(&mut recv, wire::MAX_CONTROL_BODY, "welcome")
        .await
        .map_err(|e| format!("closed: {}", conn.close_reason().map_or(e.to_string(), |r| r.to_string())))?;
    match Control::from_frame(kind, &body) {
        Ok(Control::Welcome { .. }) => Ok((conn, (send, recv))),
        Ok(Control::Reject { reason }) => Err(format!("refused: {reason}")),
        other => Err(format!("protocol: expected a welcome, got {other:?}")),
    }
}

fn client_endpoint(args: &AgentsArgs) -> anyhow::Result<quinn::Endpoint> {
    let tls = konnq_shared::tls::client_config(&args.ca_cert, None, &[konnq_shared::tls::ALPN_KONNQ])?;
    let mut client = quinn::ClientConfig::new(konnq_shared::quic::client_crypto(tls)?);
    let quic = QuicConfig { idle_timeout: Duration::from_secs(30), ..QuicConfig::default() };
    // These agents take no dials: no stream credit for the server, whose
    // per-stream state quinn would otherwise allocate for each connection.
    client.transport_config(Arc::new(konnq_shared::quic::transport_config(&quic, false)?));
    // One socket carries every simulated agent: give it the receive and
    // send buffers a real agent's socket gets (quic.udp-buffer-bytes), or
    // synchronized keep-alive bursts overflow the kernel's default buffer.
    let (socket, rcv, snd) = konnq_shared::quic::udp_socket("0.0.0.0:0".parse()?, quic.udp_buffer_bytes)?;
    println!("simulated agents' UDP socket: receive buffer {rcv} B, send buffer {snd} B");
    let runtime = quinn::default_runtime().context("no async runtime")?;
    let mut endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}
