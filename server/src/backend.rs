//! The agent-facing side: a QUIC endpoint that accepts agents, the registry
//! of connected agents, and [`Backend::dial`], which opens one bidirectional
//! QUIC stream per proxied connection and performs the dial handshake.
//!
//! Each agent connection carries at most `quic.max-concurrent-streams` dial
//! streams at once: a dial takes one of the agent's stream slots before it
//! opens its stream and holds it for the life of the connection ([`Dialed`]).
//! A dial that finds every slot taken waits for one, up to the backend dial
//! timeout. The agent advertises enough QUIC stream credit for that many
//! (see [`konnq_shared::quic::stream_credit`]), so `open_bi` does not wait.
//!
//! Which agent takes a dial follows `proxy-strategies` ([`strategy`]): the
//! strategies are tried in order, and the dial goes to a random agent among
//! those the first one with any finds, preferring agents with a free stream
//! slot. The server is ready (`/readyz`) while the first strategy finds at
//! least one agent, as upstream's.
//!
//! Abandoning a dial is done by dropping its future: the stream is wrapped in
//! a [`StreamGuard`] whose `Drop` resets both halves, so the agent aborts the
//! dial (or closes the TCP connection it produced) whatever the reason —
//! DIAL_CLS, the frontend stream going away, or the dial timeout.

mod registry;
pub mod strategy;
pub mod tcp;
mod unreachable;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use konnq_protocol::wire::{self, Control, DialHeader, DialResult, Hello};
use konnq_shared::config::{ProxyStrategies, ProxyStrategy};
use konnq_shared::quic::{codes, read_frame, FrameError};
use quinn::{RecvStream, SendStream, VarInt};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use konnq_shared::gauge::GaugeGuard;
use konnq_shared::logging::untrusted;

use self::registry::Registry;
use self::strategy::{Destination, Reach};
use crate::auth::{AuthError, Authenticator, TOKEN_REVIEW_WAIT};
use crate::metrics::{DialFailure, Metrics};

/// How long an agent may take for the QUIC handshake plus its Hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refusal waits for the agent to receive the Reject message
/// before the connection is closed.
const REJECT_LINGER: Duration = Duration::from_secs(1);
/// Beyond two round trips, how long a new agent connection waits before it
/// takes dials, for the agent to close it if it already holds this server.
const SETTLE_MARGIN: Duration = Duration::from_millis(50);
/// How long past the QUIC idle timeout an agent's superseded connection may
/// live before the two connections count as two agents with one ID.
const CONFLICT_MARGIN: Duration = Duration::from_secs(1);

/// How many acknowledgements an unreachable agent is asked for (one lost
/// request or answer does not cut a live agent).
const PROBES: u32 = 3;

/// Beyond a round trip, how long an answer to a probe may take: the peer's
/// acknowledgement delay (25 ms by default) and scheduling.
const ACK_MARGIN: Duration = Duration::from_millis(50);

/// More agents a dial is tried on when the connection of the agent it was
/// sent to ends before that agent answered (a dead agent cannot have
/// connected the client to anything, and the client sends nothing before
/// DIAL_RSP, so the dial may go elsewhere).
const REDIALS: usize = 2;

/// Why an agent's liveness is checked (see [`probe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Suspicion {
    /// The kernel reported "port unreachable" for its address.
    Icmp,
    /// What was sent to it (a dial, data) drew no packet at all for a few
    /// round trips.
    Unanswered,
}

/// Why a dial did not produce a connection. The text of each variant is what
/// the client sees in DIAL_RSP.error.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// Same text as upstream's server, which clients and operators grep for.
    #[error("No agent available")]
    NoAgent,
    #[error("{0}")]
    Endpoint(String),
    #[error("agent {agent}: {reason}")]
    Backend { agent: String, reason: String },
    #[error("dial timeout: no answer within {0:?}")]
    Timeout(Duration),
    /// Every stream slot of the agent stayed taken for the whole dial timeout.
    #[error("dial timeout: all {limit} streams to agent {agent} stayed busy for {timeout:?}")]
    NoFreeStream { agent: String, limit: usize, timeout: Duration },
}

impl DialError {
    /// The metric label of this failure.
    pub fn failure(&self) -> DialFailure {
        match self {
            DialError::NoAgent => DialFailure::NoAgent,
            DialError::Endpoint(_) => DialFailure::ErrorResponse,
            DialError::Backend { .. } => DialFailure::BackendClose,
            DialError::Timeout(_) | DialError::NoFreeStream { .. } => DialFailure::BackendDialTimeout,
        }
    }
}

/// A connected agent.
pub struct AgentConn {
    /// Unique per connection (an agent id may reconnect while its old
    /// connection is still being torn down).
    key: u64,
    pub agent_id: String,
    pub identifiers: Vec<(String, String)>,
    /// What the identifiers say the agent can reach, for routing.
    pub reach: Reach,
    pub conn: quinn::Connection,
    /// One permit per dial stream the server may have open on `conn`;
    /// closed when the agent disconnects, failing the dials still waiting.
    streams: Arc<Semaphore>,
    /// Send order of the dial streams on `conn` (see `ShareClock`).
    pub send_clock: Arc<konnq_shared::quic::ShareClock>,
    /// The agent's liveness is being checked (see [`probe`]).
    probing: std::sync::atomic::AtomicBool,
    /// ICMP said the agent's port is closed: a check running shortens its
    /// wait to the ICMP one.
    icmp: std::sync::atomic::AtomicBool,
    /// A check that what is sent to the agent draws an answer is running
    /// (see [`AgentConn::expect_answer`]).
    watching: std::sync::atomic::AtomicBool,
    /// Sends [`AgentConn::expect_answer`] was told of.
    sent: std::sync::atomic::AtomicU64,
    /// A watch for the agent's data to stop is running (see
    /// [`AgentConn::heard_data`]).
    quiet_watch: std::sync::atomic::AtomicBool,
    /// For the liveness check: the keep-alive interval, and the metrics.
    keep_alive: Duration,
    metrics: Metrics,
    /// Why this server closed the connection, once it did.
    closed_why: std::sync::OnceLock<String>,
}

impl AgentConn {
    /// Something was just sent to the agent. A live agent acknowledges it
    /// within a round trip and its acknowledgement delay, whatever its
    /// target does; if nothing at all comes from it for three round trips
    /// plus 100 ms, its liveness is checked (see [`probe`]). One watcher
    /// runs at a time, window after window while sends go on.
    pub fn expect_answer(self: &Arc<Self>) {
        // SeqCst here and where the watcher stops: either the watcher sees
        // this send, or this send sees the watcher stopped.
        self.sent.fetch_add(1, Ordering::SeqCst);
        // A plain load first: while a watcher runs, a write costs no
        // second read-modify-write on a line every stream shares.
        if !self.watching.load(Ordering::SeqCst) && !self.watching.swap(true, Ordering::SeqCst) {
            tokio::spawn(Self::watch_answers(Arc::downgrade(self)));
        }
    }

    /// Packets received from the agent so far (any packet: data,
    /// acknowledgements, keep-alives).
    fn packets_heard(&self) -> u64 {
        self.conn.stats().udp_rx.datagrams
    }

    /// Waits one answer window (three round trips plus 100 ms), then gives
    /// the agent back unless it is gone. The watchers hold the connection
    /// only between their waits: a connection handle keeps the endpoint's
    /// UDP socket open, and a server that stopped must free its port at
    /// once (a restart binds it again).
    async fn after_window(agent: &std::sync::Weak<Self>) -> Option<Arc<Self>> {
        let window = agent.upgrade()?.conn.rtt() * 3 + ACK_MARGIN * 2;
        tokio::time::sleep(window).await;
        agent.upgrade()
    }

    async fn watch_answers(agent: std::sync::Weak<Self>) {
        loop {
            let Some(this) = agent.upgrade() else { return };
            let (sent, heard) = (this.sent.load(Ordering::SeqCst), this.packets_heard());
            drop(this);
            let Some(this) = Self::after_window(&agent).await else { return };
            if this.conn.close_reason().is_some() {
                this.watching.store(false, Ordering::Release);
                return;
            }
            if this.packets_heard() == heard {
                this.watching.store(false, Ordering::Release);
                this.check_alive(Suspicion::Unanswered);
                return;
            }
            // Heard from: what was sent before this window is answered or
            // on its way. Watch on only if more was sent meanwhile (also a
            // send that found this watcher still running as it stopped).
            if this.sent.load(Ordering::SeqCst) == sent {
                this.watching.store(false, Ordering::SeqCst);
                if this.sent.load(Ordering::SeqCst) == sent || this.watching.swap(true, Ordering::SeqCst) {
                    return;
                }
            }
        }
    }

    /// Data just came from the agent. When such a flow stops, the agent may
    /// have been killed, and this side would send it nothing until the
    /// next keep-alive (an acknowledgement of its last packets may already
    /// be out). So once nothing at all has come from the agent for three
    /// round trips plus 100 ms, one packet goes to it: a closed port
    /// answers it with ICMP, which starts the liveness check (see
    /// [`BackendPool::watch_unreachable`]), and a packet that draws no
    /// answer starts it too (see [`AgentConn::expect_answer`]); a live
    /// agent only acknowledges it. One watcher at a time; while the flow
    /// goes on a read costs one atomic load, and a burst that ends costs
    /// one packet each way.
    pub fn heard_data(self: &Arc<Self>) {
        if !self.quiet_watch.load(Ordering::Relaxed) && !self.quiet_watch.swap(true, Ordering::AcqRel) {
            tokio::spawn(Self::ping_when_quiet(Arc::downgrade(self)));
        }
    }

    async fn ping_when_quiet(agent: std::sync::Weak<Self>) {
        let Some(mut heard) = agent.upgrade().map(|this| this.packets_heard()) else { return };
        loop {
            let Some(this) = Self::after_window(&agent).await else { return };
            if this.conn.close_reason().is_some() {
                this.quiet_watch.store(false, Ordering::Release);
                return;
            }
            let now = this.packets_heard();
            if now != heard {
                heard = now;
                continue;
            }
            // An empty datagram: ack-eliciting, and nothing the agent
            // reads (its small datagram buffer drops the oldest). Where no
            // ICMP comes back (a balancer in front of the agent), its
            // acknowledgement is expected like that of any send.
            if this.conn.send_datagram(Bytes::new()).is_ok() {
                this.expect_answer();
            }
            this.quiet_watch.store(false, Ordering::Release);
            // Data read after the check above found this watcher still
            // running: watch the new flow.
            heard = this.packets_heard();
            if heard == now || this.quiet_watch.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    }

    /// Starts a liveness check unless one is running.
    fn check_alive(self: &Arc<Self>, why: Suspicion) {
        if why == Suspicion::Icmp {
            self.icmp.store(true, Ordering::Release);
        }
        if !self.probing.swap(true, Ordering::AcqRel) {
            tokio::spawn(probe(Arc::clone(self)));
        }
    }

    /// Closes the connection from this side with `code` and `why`, which
    /// is also what the clients of the connections it cuts are told.
    fn close(&self, code: u32, why: &str) {
        let _ = self.closed_why.set(why.to_owned());
        self.conn.close(VarInt::from_u32(code), why.as_bytes());
    }

    /// What to tell a client whose connection ended because this agent
    /// connection failed with `e`: the reason this server closed it, if it
    /// did (e.g. `server shutting down`), else the failure.
    pub fn lost_reason(&self, e: &quinn::ConnectionError) -> String {
        match (e, self.closed_why.get()) {
            (quinn::ConnectionError::LocallyClosed, Some(why)) => why.clone(),
            _ => format!("agent connection lost: {e}"),
        }
    }
}

/// A successful dial: the stream halves now carry raw bytes.
pub struct Dialed {
    pub connect_id: i64,
    pub send: SendStream,
    pub recv: RecvStream,
    pub agent: Arc<AgentConn>,
    /// The agent's stream slot this connection occupies until it is dropped:
    /// keep it as long as `send` and `recv`.
    pub slot: OwnedSemaphorePermit,
}

/// Owns a dial stream until the dial succeeds; on drop, resets it so the
/// agent gives the dial up.
struct StreamGuard {
    send: Option<SendStream>,
    recv: Option<RecvStream>,
}

impl StreamGuard {
    fn into_parts(mut self) -> (SendStream, RecvStream) {
        match (self.send.take(), self.recv.take()) {
            (Some(s), Some(r)) => (s, r),
            // Both are only taken here, once.
            _ => unreachable!("stream guard emptied twice"),
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(mut s) = self.send.take() {
            let _ = s.reset(VarInt::from_u32(codes::DIAL_ABANDONED));
        }
        if let Some(mut r) = self.recv.take() {
            let _ = r.stop(VarInt::from_u32(codes::DIAL_ABANDONED));
        }
    }
}

/// Registry of agents plus what a dial needs.
pub struct Backend {
    agents: Mutex<Registry<Arc<AgentConn>>>,
    next_agent_key: AtomicU64,
    next_connect_id: AtomicU64,
    ready: watch::Sender<usize>,
    /// True once the server shuts down: agents are told, new ones refused.
    shutting_down: watch::Sender<bool>,
    /// Agents that take dials and that the first proxy strategy routes to.
    routable: watch::Sender<usize>,
    /// `--proxy-strategies`, tried in order.
    strategies: ProxyStrategies,
    metrics: Metrics,
    server_id: String,
    server_count: u32,
    /// `--backend-dial-timeout`; `None` = no limit.
    pub dial_timeout: Option<Duration>,
    /// Dial streams one agent connection may carry at once.
    max_streams: usize,
    /// `Some`: agents must present an accepted ServiceAccount token.
    auth: Option<Authenticator>,
    /// How long a superseded connection may stay alive before its agent ID
    /// counts as shared by two live agents: the QUIC idle timeout, within
    /// which a restarted agent's old connection is noticed dead, plus a margin.
    conflict_grace: Duration,
    /// `quic.keep-alive-interval`: a live agent sends at least this often.
    keep_alive: Duration,
}

impl Backend {
    /// From `quic`: `max-concurrent-streams`, the dial streams one agent
    /// connection may carry at once, and `idle-timeout`. `auth`: token
    /// authentication. The ready-agent gauges of every strategy are set (to
    /// 0) from here on, as upstream's are from its start.
    pub fn new(
        server_id: String,
        server_count: u32,
        dial_timeout: Option<Duration>,
        strategies: ProxyStrategies,
        quic: &konnq_shared::config::QuicConfig,
        metrics: Metrics,
        auth: Option<Authenticator>,
    ) -> Arc<Self> {
        let max_streams =
            usize::try_from(quic.max_concurrent_streams).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        let backend = Arc::new(Backend {
            agents: Mutex::new(Registry::default()),
            next_agent_key: AtomicU64::new(1),
            next_connect_id: AtomicU64::new(1),
            ready: watch::channel(0).0,
            shutting_down: watch::channel(false).0,
            routable: watch::channel(0).0,
            strategies,
            metrics,
            server_id,
            server_count,
            dial_timeout,
            max_streams,
            auth,
            conflict_grace: quic.idle_timeout + CONFLICT_MARGIN,
            keep_alive: quic.keep_alive_interval,
        });
        backend.publish(&backend.agents());
        backend
    }

    /// Number of agents that take dials; watch it to wait for agents.
    pub fn ready_agents(&self) -> watch::Receiver<usize> {
        self.ready.subscribe()
    }

    /// Number of agents that take dials and that the first proxy strategy
    /// routes to: the server is ready while it is above 0.
    pub fn routable_agents(&self) -> watch::Receiver<usize> {
        self.routable.subscribe()
    }

    fn agents(&self) -> std::sync::MutexGuard<'_, Registry<Arc<AgentConn>>> {
        // Every registry update completes under the lock: a panic elsewhere
        // cannot leave it inconsistent.
        self.agents.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Updates the ready-agent counts: in total and per strategy.
    fn publish(&self, agents: &Registry<Arc<AgentConn>>) {
        let ready: Vec<&Arc<AgentConn>> = agents.ready().collect();
        let routable = |s: ProxyStrategy| ready.iter().filter(|a| a.reach.serves(s)).count();
        let by_strategy: Vec<(ProxyStrategy, usize)> =
            self.strategies.as_slice().iter().map(|&s| (s, routable(s))).collect();
        self.metrics.set_ready_backends(ready.len(), &by_strategy);
        self.ready.send_replace(ready.len());
        self.routable.send_replace(routable(self.strategies.first()));
    }

    /// Registers `agent`; returns the connections with its agent ID that it
    /// supersedes.
    fn register(&self, agent: &Arc<AgentConn>) -> Vec<Arc<AgentConn>> {
        let mut agents = self.agents();
        let older = agents.insert(agent.key, &agent.agent_id, Arc::clone(agent)).into_iter().cloned().collect();
        self.publish(&agents);
        older
    }

    fn deregister(&self, key: u64) {
        let mut agents = self.agents();
        agents.remove(key);
        self.publish(&agents);
    }

    fn set_draining(&self, key: u64) {
        let mut agents = self.agents();
        agents.set_draining(key);
        self.publish(&agents);
    }

    /// The agent for a dial to `address`: a random one among those taking
    /// dials that the proxy strategies find for it, preferring those with a
    /// free stream slot.
    fn pick(&self, address: &str, lost: &[u64]) -> Option<Arc<AgentConn>> {
        let dest = Destination::of(address);
        let (strategy, agent) = {
            let agents = self.agents();
            let ready: Vec<&Arc<AgentConn>> = agents.ready().filter(|a| !lost.contains(&a.key)).collect();
            let draining: Vec<&Arc<AgentConn>> = agents.draining().filter(|a| !lost.contains(&a.key)).collect();
            let strategies = self.strategies.as_slice();
            // Draining agents only when no other one will do, as upstream's.
            let (strategy, found) = strategy::route(strategies, &dest, &ready, |a| &a.reach)
                .or_else(|| strategy::route(strategies, &dest, &draining, |a| &a.reach))?;
            let agent = strategy::choose(found, |a| a.streams.available_permits() > 0, |n| fastrand::usize(..n))?;
            (strategy, Arc::clone(agent))
        };
        debug!(address = %untrusted(address), %strategy, agent_id = %untrusted(&agent.agent_id), "dial routed");
        Some(agent)
    }

    /// A dial bounded by `--backend-dial-timeout`, counted in the pending
    /// dials gauge, the dial duration histogram and the failure counter.
    /// Callers race it against the client giving up; dropping the future
    /// abandons the dial on the agent (the caller counts that cancellation).
    pub async fn dial_timed(&self, protocol: &str, address: &str) -> Result<Dialed, DialError> {
        let _pending = GaugeGuard::inc(&self.metrics.pending_dials);
        let started = std::time::Instant::now();
        let result = match self.dial_timeout {
            Some(limit) => {
                let deadline = tokio::time::Instant::now() + limit;
                match tokio::time::timeout_at(deadline, self.dial(protocol, address, Some(deadline))).await {
                    Ok(r) => r,
                    Err(_) => Err(DialError::Timeout(limit)),
                }
            }
            None => self.dial(protocol, address, None).await,
        };
        match &result {
            Ok(_) => self.metrics.dial_duration.observe(started.elapsed().as_secs_f64()),
            Err(e) => self.metrics.dial_failed(e.failure()),
        }
        result
    }

    /// Sends the dial to an agent and waits for its answer; if that
    /// agent's connection ends first, tries up to [`REDIALS`] others. Only
    /// the wait for a stream slot is bounded (by `deadline`, if any), the
    /// caller bounds the rest. See [`Backend::dial_timed`].
    async fn dial(
        &self,
        protocol: &str,
        address: &str,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Dialed, DialError> {
        let mut lost = Vec::new();
        let mut last_error = None;
        loop {
            let Some(agent) = self.pick(address, &lost) else {
                // No other agent takes it: the lost one's error says more.
                return Err(last_error.unwrap_or(DialError::NoAgent));
            };
            match self.dial_on(&agent, protocol, address, deadline).await {
                Err(e) if agent.conn.close_reason().is_some() && lost.len() < REDIALS => {
                    info!(
                        agent_id = %untrusted(&agent.agent_id),
                        address = %untrusted(address),
                        "the agent's connection ended before it answered the dial ({}); trying another agent, if one takes it",
                        untrusted(&e.to_string())
                    );
                    lost.push(agent.key);
                    last_error = Some(e);
                }
                result => return result,
            }
        }
    }

    /// Opens a dial stream on `agent` and waits for its answer (see
    /// [`AgentConn::expect_answer`] for an agent that sends nothing back).
    async fn dial_on(
        &self,
        agent: &Arc<AgentConn>,
        protocol: &str,
        address: &str,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Dialed, DialError> {
        let agent = Arc::clone(agent);
        let slot = self.stream_slot(&agent, deadline).await?;
        let backend_err = |reason: String| DialError::Backend { agent: agent.agent_id.clone(), reason };
        let connect_id = self.next_connect_id.fetch_add(1, Ordering::Relaxed);
        let (send, recv) = agent.conn.open_bi().await.map_err(|e| backend_err(e.to_string()))?;
        let mut guard = StreamGuard { send: Some(send), recv: Some(recv) };
        let header = DialHeader {
            protocol: protocol.to_owned(),
            address: address.to_owned(),
            // No limit here: the agent's own dial-timeout bounds its dial.
            timeout_ms: self.dial_timeout.map_or(u32::MAX, |t| t.as_millis().clamp(1, u32::MAX as u128) as u32),
            connect_id,
        };
        let send = guard.send.as_mut().expect("guard holds the send half");
        send.write_all(&header.encode()).await.map_err(|e| backend_err(e.to_string()))?;
        agent.expect_answer();
        let recv = guard.recv.as_mut().expect("guard holds the recv half");
        let (kind, body) =
            read_frame(recv, wire::MAX_DIAL_BODY, "dial result").await.map_err(|e| backend_err(e.to_string()))?;
        match DialResult::from_frame(kind, &body).map_err(|e| backend_err(e.to_string()))? {
            DialResult::Connected => {
                let (send, recv) = guard.into_parts();
                let connect_id = connect_id as i64;
                Ok(Dialed { connect_id, send, recv, agent, slot })
            }
            // The guard resets the stream: nothing more is expected on it.
            DialResult::Failed(reason) => Err(DialError::Endpoint(reason)),
        }
    }

    /// Takes one of `agent`'s stream slots, waiting until `deadline` (if
    /// any) when all are in use.
    async fn stream_slot(
        &self,
        agent: &AgentConn,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<OwnedSemaphorePermit, DialError> {
        if let Ok(slot) = Arc::clone(&agent.streams).try_acquire_owned() {
            return Ok(slot);
        }
        debug!(agent_id = %untrusted(&agent.agent_id), limit = self.max_streams, "all streams to the agent busy; waiting");
        let wait = Arc::clone(&agent.streams).acquire_owned();
        let acquired = match deadline.zip(self.dial_timeout) {
            Some((deadline, timeout)) => tokio::time::timeout_at(deadline, wait).await.map_err(|_| {
                DialError::NoFreeStream { agent: agent.agent_id.clone(), limit: self.max_streams, timeout }
            })?,
            None => wait.await,
        };
        acquired.map_err(|_closed| DialError::Backend {
            agent: agent.agent_id.clone(),
            reason: "agent disconnected".to_owned(),
        })
    }

    /// Accepts agents until the endpoint is closed; those on TCP links
    /// with `tcp_config`.
    pub async fn serve(self: Arc<Self>, endpoint: quinn::Endpoint, tcp_config: Arc<quinn::ServerConfig>) {
        while let Some(incoming) = endpoint.accept().await {
            let backend = Arc::clone(&self);
            let tcp_config = Arc::clone(&tcp_config);
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                let config = tcp::is_tcp_link(remote).then_some(tcp_config);
                match backend.admit(incoming, config).await {
                    Ok(admitted) => backend.hold(admitted).await,
                    Err(e) => warn!(%remote, "agent refused: {}", untrusted(&e.to_string())),
                }
            });
        }
    }

    /// QUIC handshake (TLS, and the client certificate check when mTLS is
    /// configured) and the agent's Hello on the control stream, within
    /// [`HANDSHAKE_TIMEOUT`]; then, with token authentication, its token,
    /// checked within [`TOKEN_REVIEW_WAIT`].
    async fn admit(
        &self,
        incoming: quinn::Incoming,
        config: Option<Arc<quinn::ServerConfig>>,
    ) -> Result<Admitted, AdmitError> {
        let (conn, mut send, recv, hello) = tokio::time::timeout(HANDSHAKE_TIMEOUT, hello(incoming, config))
            .await
            .map_err(|_| AdmitError::Timeout(HANDSHAKE_TIMEOUT))??;
        let Hello { agent_id, identifiers, token } = hello;
        if *self.shutting_down.borrow() {
            let reason = "server shutting down";
            reject(&conn, &mut send, codes::SHUTDOWN, reason).await;
            return Err(AdmitError::Protocol(reason.to_owned()));
        }
        if let Some(auth) = &self.auth {
            let deadline = tokio::time::Instant::now() + TOKEN_REVIEW_WAIT;
            match auth.check(&token, deadline).await {
                Ok(account) => debug!(agent_id = %untrusted(&agent_id), account, "agent token accepted"),
                Err(e) => {
                    reject(&conn, &mut send, e.close_code(), &e.to_string()).await;
                    return Err(AdmitError::Auth { agent_id, source: e });
                }
            }
        }
        let welcome = Control::Welcome { server_id: self.server_id.clone(), server_count: self.server_count };
        send.write_all(&welcome.encode()).await.map_err(|e| AdmitError::Protocol(e.to_string()))?;
        let key = self.next_agent_key.fetch_add(1, Ordering::Relaxed);
        let streams = Arc::new(Semaphore::new(self.max_streams));
        let (reach, unused) = Reach::from_identifiers(&identifiers);
        if !unused.is_empty() {
            warn!(agent_id = %untrusted(&agent_id), unused = %untrusted(&format!("{unused:?}")), "agent identifiers that konnq cannot route by are ignored");
        }
        let agent = Arc::new(AgentConn {
            key,
            agent_id,
            identifiers,
            reach,
            conn,
            streams,
            send_clock: Arc::default(),
            probing: Default::default(),
            icmp: Default::default(),
            watching: Default::default(),
            sent: Default::default(),
            quiet_watch: Default::default(),
            keep_alive: self.keep_alive,
            metrics: self.metrics.clone(),
            closed_why: Default::default(),
        });
        Ok(Admitted { agent, send, recv, token })
    }

    /// Keeps an admitted agent registered until its connection ends; with
    /// token authentication, keeps its token checked meanwhile and closes
    /// the connection once the token no longer passes.
    async fn hold(&self, admitted: Admitted) {
        let Admitted { agent, mut send, mut recv, token } = admitted;
        let remote = agent.conn.remote_address();
        // An agent that already holds a connection to this server closes the
        // new one as soon as it reads the welcome: give it that long before
        // the connection takes dials (or supersedes one with its agent ID).
        let settle = agent.conn.rtt() * 2 + SETTLE_MARGIN;
        if tokio::time::timeout(settle, agent.conn.closed()).await.is_ok() {
            let why = agent.conn.close_reason().map(|r| r.to_string()).unwrap_or_default();
            debug!(agent_id = %untrusted(&agent.agent_id), %remote, "agent closed its new connection at once: {}", untrusted(&why));
            return;
        }
        let transport = if tcp::is_tcp_link(remote) { "tcp" } else { "quic" };
        info!(agent_id = %untrusted(&agent.agent_id), %remote, transport, identifiers = %untrusted(&format!("{:?}", agent.identifiers)), "agent connected");
        let _connected = GaugeGuard::inc(&self.metrics.agent_connections);
        let _on_transport = GaugeGuard::inc(&self.metrics.agents_on(transport));
        let older = self.register(&agent);
        if !older.is_empty() {
            self.watch_conflict(&agent, older);
        }
        let (tokens, updates) = watch::channel(token);
        let checked = async {
            match &self.auth {
                Some(auth) => auth.keep_checked(&agent.agent_id, updates).await,
                None => std::future::pending().await,
            }
        };
        let tell_drain = async {
            let _ = self.shutting_down.subscribe().wait_for(|&s| s).await;
            match send.write_all(&Control::Drain.encode()).await {
                Ok(()) => debug!(agent_id = %untrusted(&agent.agent_id), "told the agent this server is draining"),
                Err(e) => {
                    debug!(agent_id = %untrusted(&agent.agent_id), "cannot tell the agent this server is draining: {e}")
                }
            }
            std::future::pending::<()>().await
        };
        let reason = tokio::select! {
            reason = self.read_control(&agent, &mut recv, &tokens) => reason,
            () = tell_drain => unreachable!("telling the agent about the drain never ends"),
            refused = checked => {
                agent.close(refused.close_code(), &refused.to_string());
                format!("its token no longer passes: {refused}")
            }
        };
        let reason = match agent.conn.close_reason() {
            Some(why) => format!("{reason} ({why})"),
            None => reason,
        };
        self.deregister(agent.key);
        agent.streams.close();
        agent.close(codes::SHUTDOWN, "control stream ended");
        info!(agent_id = %untrusted(&agent.agent_id), %remote, "agent disconnected: {}", untrusted(&reason));
    }

    /// Reads the agent's control messages until the stream ends; returns why
    /// it ended. Token updates go to `tokens` (latest wins).
    async fn read_control(&self, agent: &AgentConn, recv: &mut RecvStream, tokens: &watch::Sender<String>) -> String {
        loop {
            let (kind, body) = match read_frame(recv, wire::MAX_CONTROL_BODY, "control message").await {
                Ok(frame) => frame,
                Err(e) => return e.to_string(),
            };
            match Control::from_frame(kind, &body) {
                Ok(Control::Drain) => {
                    info!(agent_id = %untrusted(&agent.agent_id), "agent is draining; no new dials go to it");
                    self.set_draining(agent.key);
                }
                Ok(Control::Token(token)) if self.auth.is_some() => {
                    debug!(agent_id = %untrusted(&agent.agent_id), "agent sent a new ServiceAccount token");
                    tokens.send_replace(token.0);
                }
                Ok(other) => {
                    debug!(agent_id = %untrusted(&agent.agent_id), "ignoring control message {}", untrusted(&format!("{other:?}")))
                }
                Err(e) => {
                    agent.close(codes::PROTOCOL, "malformed control message");
                    return format!("malformed control message: {e}");
                }
            }
        }
    }

    /// `agent` took over new dials from `older` connections with its agent
    /// ID. Usually the agent reconnected before its old connection was
    /// noticed dead; if one of them is still alive after the grace (the QUIC
    /// idle timeout), two agents share the ID: logged and counted.
    fn watch_conflict(&self, agent: &Arc<AgentConn>, older: Vec<Arc<AgentConn>>) {
        let from: Vec<SocketAddr> = older.iter().map(|o| o.conn.remote_address()).collect();
        info!(
            agent_id = %untrusted(&agent.agent_id),
            remote = %agent.conn.remote_address(),
            earlier = ?from,
            "agent ID connected again while an earlier connection with it is open; new dials go to the new one"
        );
        let (agent, grace, metrics) = (Arc::clone(agent), self.conflict_grace, self.metrics.clone());
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let alive: Vec<SocketAddr> =
                older.iter().filter(|o| o.conn.close_reason().is_none()).map(|o| o.conn.remote_address()).collect();
            if alive.is_empty() || agent.conn.close_reason().is_some() {
                return;
            }
            metrics.agent_id_conflicts.inc();
            warn!(
                agent_id = %untrusted(&agent.agent_id),
                newest = %agent.conn.remote_address(),
                others = ?alive,
                "two live agents share one agent ID (give each agent its own --agent-id): new dials go only to \
                 the newest connection"
            );
        });
    }

    /// The server begins to shut down: every agent is told on its control
    /// stream (it sends no new dials here and looks for another server),
    /// and agents that connect from now on are refused. Open connections
    /// go on.
    pub fn begin_shutdown(&self) {
        self.shutting_down.send_replace(true);
    }

    /// Checks every agent the kernel reported "port unreachable" for (see
    /// [`unreachable`]); `errors` is a duplicate of the endpoint's socket.
    pub async fn watch_unreachable(self: Arc<Self>, errors: std::net::UdpSocket) {
        let (tx, mut rx) = tokio::sync::mpsc::channel(256);
        // One task: when it is aborted, the duplicate socket closes with it
        // (a restarted server must be able to bind the port again).
        let read = unreachable::watch(errors, tx);
        let check = async {
            while let Some(addr) = rx.recv().await {
                let hit: Vec<Arc<AgentConn>> = self
                    .agents()
                    .all()
                    .filter(|a| unreachable::same_peer(a.conn.remote_address(), addr))
                    .cloned()
                    .collect();
                for agent in hit {
                    agent.check_alive(Suspicion::Icmp);
                }
            }
        };
        tokio::select! {
            result = read => if let Err(e) = result {
                warn!("cannot read ICMP errors of the agent socket (dead agents are noticed at the idle timeout): {e}");
            },
            () = check => {}
        }
    }

    /// Closes the agent connections carried by TCP link `addr`, which
    /// ended: their clients are told now, not at the idle timeout.
    pub fn close_link_agents(&self, addr: SocketAddr, reason: &str) {
        let on_link: Vec<Arc<AgentConn>> =
            self.agents().all().filter(|a| a.conn.remote_address() == addr).cloned().collect();
        for agent in on_link {
            info!(agent_id = %untrusted(&agent.agent_id), "{reason}; closing its connection");
            agent.close(codes::SHUTDOWN, "agent TCP connection ended");
        }
    }

    /// Closes every agent connection (graceful shutdown).
    pub fn close_all(&self, reason: &str) {
        for agent in self.agents().all() {
            agent.close(codes::SHUTDOWN, reason);
        }
    }

    pub fn agent_count(&self) -> usize {
        self.agents().len()
    }

    /// The QUIC connection of every agent connected now (their statistics
    /// show flow control at work).
    pub fn agent_connections(&self) -> Vec<quinn::Connection> {
        self.agents().all().map(|a| a.conn.clone()).collect()
    }
}

/// Asks `agent` for acknowledgements (ack-eliciting empty datagrams), at
/// least [`PROBES`] times, one round trip plus [`ACK_MARGIN`] apart, and
/// closes its connection if nothing at all arrives from it meanwhile, so
/// every client on it is told now rather than at the idle timeout. After
/// an unanswered send (no ICMP to go by) the silence must also last a
/// keep-alive interval plus three round trips: a live agent sends at least
/// its keep-alives, so a few lost packets on a lossy link do not cut it.
/// A peer that takes no datagrams is given that long in any case.
async fn probe(agent: Arc<AgentConn>) {
    let (keep_alive, metrics) = (agent.keep_alive, &agent.metrics);
    let before = agent.packets_heard();
    let heard = || agent.conn.close_reason().is_some() || agent.packets_heard() != before;
    let patience = keep_alive + agent.conn.rtt() * 3 + ACK_MARGIN;
    // An ICMP "port unreachable" (now, or during this check) is evidence
    // enough not to wait for a keep-alive interval.
    let at_least = || if agent.icmp.load(Ordering::Acquire) { Duration::ZERO } else { patience };
    let mut waited = Duration::ZERO;
    let mut sent = 0;
    while (sent < PROBES || waited < at_least()) && !heard() {
        let wait = match agent.conn.send_datagram(Bytes::new()) {
            Ok(()) => (agent.conn.rtt() + ACK_MARGIN).max(at_least() / PROBES),
            Err(_) => patience,
        };
        tokio::time::sleep(wait).await;
        waited += wait;
        sent += 1;
    }
    let agent_id = untrusted(&agent.agent_id);
    if heard() {
        debug!(%agent_id, "the agent is alive");
    } else {
        metrics.agents_unreachable.inc();
        let cause = match agent.icmp.load(Ordering::Acquire) {
            true => "its port answered with ICMP",
            false => "what was sent to it drew no packet",
        };
        let remote = agent.conn.remote_address();
        warn!(%agent_id, %remote, "agent unreachable: {cause}, and nothing came from it for {waited:?}; closing");
        agent.close(codes::SHUTDOWN, "agent unreachable");
    }
    metrics.agents_unreachable_checks.inc();
    agent.icmp.store(false, Ordering::Release);
    agent.probing.store(false, Ordering::Release);
}

/// The QUIC handshake and the agent's Hello (anything else first is refused).
async fn hello(
    incoming: quinn::Incoming,
    config: Option<Arc<quinn::ServerConfig>>,
) -> Result<(quinn::Connection, SendStream, RecvStream, Hello), AdmitError> {
    let connecting = match config {
        Some(config) => incoming.accept_with(config),
        None => incoming.accept(),
    };
    let conn = connecting.map_err(AdmitError::Handshake)?.await.map_err(AdmitError::Handshake)?;
    let (mut send, mut recv) = conn.accept_bi().await.map_err(AdmitError::Handshake)?;
    let (kind, body) = read_frame(&mut recv, wire::MAX_CONTROL_BODY, "control message").await?;
    match Control::from_frame(kind, &body)? {
        Control::Hello(h) => Ok((conn, send, recv, h)),
        other => {
            let reason = format!("expected hello, got {other:?}");
            reject(&conn, &mut send, codes::REJECTED, &reason).await;
            Err(AdmitError::Protocol(reason))
        }
    }
}

/// Tells the agent why (a Reject message, given up to [`REJECT_LINGER`] to
/// arrive), then closes the connection with `code` and the same reason.
async fn reject(conn: &quinn::Connection, send: &mut SendStream, code: u32, reason: &str) {
    let _ = send.write_all(&Control::Reject { reason: reason.to_owned() }.encode()).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(REJECT_LINGER, send.stopped()).await;
    conn.close(VarInt::from_u32(code), reason.as_bytes());
}

/// An agent past its handshake, Hello and token check.
struct Admitted {
    agent: Arc<AgentConn>,
    /// The control stream's send half: dropping it would finish the stream.
    send: SendStream,
    recv: RecvStream,
    /// The token the agent was admitted with (empty without token auth).
    token: String,
}

#[derive(Debug, thiserror::Error)]
enum AdmitError {
    #[error("QUIC handshake: {0}")]
    Handshake(quinn::ConnectionError),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("bad hello: {0}")]
    Wire(#[from] wire::WireError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("agent {agent_id}: {source}")]
    Auth { agent_id: String, source: AuthError },
    #[error("no handshake and hello within {0:?}")]
    Timeout(Duration),
}

/// Shortest time between two stateless resets. A reset answers only a
/// packet whose connection ID this server (or an earlier run of it) issued,
/// and is smaller than that packet, so a short interval risks little; a
/// long one would leave agents waiting after a restart (quinn's default of
/// 20 ms answers 50 agents per second).
const MIN_RESET_INTERVAL: Duration = Duration::from_millis(1);

/// The endpoint's connection-ID and stateless-reset keys, derived from
/// `secret` (the agent-facing TLS key): the same across restarts. A server
/// that restarted lost its connections; when an agent's next packet
/// arrives, it answers with a stateless reset the agent recognises, and
/// the agent reconnects at once instead of waiting for its idle timeout.
fn endpoint_config(secret: &[u8]) -> quinn::EndpointConfig {
    use ring::hmac;
    let derive = |label: &[u8]| hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, label), secret);
    let reset = derive(b"konnq stateless reset key v1");
    let cid = derive(b"konnq connection id key v1");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cid.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = quinn::EndpointConfig::new(Arc::new(hmac::Key::new(hmac::HMAC_SHA256, reset.as_ref())));
    config
        .cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)))
        .min_reset_interval(MIN_RESET_INTERVAL);
    config
}

/// The agent-facing QUIC endpoint, a duplicate of its UDP socket for
/// [`Backend::watch_unreachable`] (the socket reports ICMP errors), and
/// the registry of agent TCP links for [`tcp::serve`].
pub struct AgentEndpoint {
    pub endpoint: quinn::Endpoint,
    /// The server configuration for connections over TCP links (see
    /// [`konnq_shared::quic::tcp_transport_config`]).
    pub tcp_config: Arc<quinn::ServerConfig>,
    pub icmp_errors: std::net::UdpSocket,
    pub tcp_links: Arc<tcp::TcpLinks>,
}

/// Builds the agent-facing QUIC endpoint on an already bound UDP socket;
/// `secret` seeds the keys that must survive restarts ([`endpoint_config`]).
/// Without `udp_open`, UDP datagrams are dropped (agents use TCP only).
pub fn endpoint(
    socket: std::net::UdpSocket,
    tls: rustls::ServerConfig,
    quic: &konnq_shared::config::QuicConfig,
    secret: &[u8],
    udp_open: bool,
) -> Result<AgentEndpoint, konnq_shared::quic::QuicSetupError> {
    let crypto = konnq_shared::quic::server_crypto(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(crypto.clone());
    server.transport_config(Arc::new(konnq_shared::quic::transport_config(quic, false)?));
    let mut tcp_config = quinn::ServerConfig::with_crypto(crypto);
    tcp_config.transport_config(Arc::new(konnq_shared::quic::tcp_transport_config(quic, false)?));
    let runtime = quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime"))?;
    unreachable::report_errors(&socket)?;
    let errors = socket.try_clone()?;
    let inner = runtime.wrap_udp_socket(socket)?;
    let udp = Arc::new(unreachable::ErrorAwareSocket { inner });
    let (socket, tcp_links) = tcp::MuxSocket::new(udp, udp_open)?;
    let endpoint = quinn::Endpoint::new_with_abstract_socket(endpoint_config(secret), Some(server), socket, runtime)?;
    Ok(AgentEndpoint { endpoint, tcp_config: Arc::new(tcp_config), icmp_errors: errors, tcp_links })
}

pub fn local_addr(endpoint: &quinn::Endpoint) -> Option<SocketAddr> {
    endpoint.local_addr().ok()
}
