//! One Konnectivity Proxy stream: the async driver around
//! [`konnq_protocol::session::Session`], which holds the stream's rules
//! (one dial, one DIAL_RSP, exactly one CLOSE_RSP, DIAL_CLS crossing
//! DIAL_RSP). The driver feeds it what the client, the dial and the agent
//! stream do, and carries out the actions it answers with.
//!
//! Phases, as the machine's states:
//! 1. `await_dial`: client packets until the machine starts a dial.
//! 2. `dial`: the backend dial races the next client packet; when the
//!    machine cancels the dial, dropping the dial future resets the QUIC
//!    stream so the agent abandons it: no late DIAL_RSP, nothing left open.
//! 3. [`tunnel`]: bytes both ways; agent → client runs on its own task so a
//!    slow client write never blocks reading CLOSE_REQ. Both tasks feed the
//!    one machine, behind a mutex held only while it takes an input.
//!
//! Outgoing packets go through a bounded channel to the gRPC response
//! stream; incoming packets are pulled only after the previous one was
//! written to QUIC, so flow control holds end to end.

mod events;
mod tunnel;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;

use futures::{Stream, StreamExt};
use konnq_protocol::konnectivity::FrontendPacket;
use konnq_protocol::session::{Action, Event, Session, Violation};
use konnq_shared::gauge::GaugeGuard;
use konnq_shared::logging::untrusted;
use konnq_shared::proto::Packet;
use tokio::sync::mpsc;
use tonic::Status;
use tracing::{debug, warn};

use crate::backend::{Backend, DialError, Dialed};
use crate::metrics::{DialFailure, Metrics, Segment};

pub type Outbound = mpsc::Sender<Result<Out, Status>>;

/// What a session sends its client.
#[derive(Debug)]
pub enum Out {
    Packet(Packet),
    /// A DATA packet whose payload is `chunks`, in order. The frontend
    /// encodes the packet's head ([`konnq_protocol::konnectivity::data_head`])
    /// and copies the chunks straight into its frames: bytes from the agent
    /// are copied once on their way to the client, not joined and encoded
    /// first.
    Data {
        connect_id: i64,
        chunks: Vec<Bytes>,
    },
}

/// Everything a session needs from the server.
#[derive(Clone)]
pub struct SessionCtx {
    pub backend: Arc<Backend>,
    pub metrics: Metrics,
}

/// Serves one Proxy stream to its end.
pub async fn run<S>(mut inbound: S, out: Outbound, ctx: SessionCtx)
where
    S: Stream<Item = Result<Packet, Status>> + Unpin,
{
    let _stream_gauge = GaugeGuard::inc(&ctx.metrics.proxy_streams);
    let mut client = Client {
        out,
        metrics: ctx.metrics.clone(),
        session: Arc::new(Mutex::new(Session::new())),
        log: events::LogCtx::default(),
    };
    let Some((protocol, address)) = client.await_dial(&mut inbound).await else {
        return;
    };
    client.log.address = address.clone();
    let Some(dialed) = client.dial(&mut inbound, &ctx, &protocol, &address).await else {
        return;
    };
    tunnel::run(client, inbound, dialed).await;
}

/// The client side of a session and the machine: what both the stream's
/// task and its agent → client task use.
#[derive(Clone)]
struct Client {
    out: Outbound,
    metrics: Metrics,
    session: Arc<Mutex<Session>>,
    log: events::LogCtx,
}

impl Client {
    /// Feeds one input to the machine; counts and logs its events and
    /// returns its actions.
    fn step(&self, input: impl FnOnce(&mut Session)) -> Vec<Action> {
        let (actions, events): (Vec<Action>, Vec<Event>) = {
            let mut session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
            input(&mut session);
            (
                std::iter::from_fn(|| session.poll_action()).collect(),
                std::iter::from_fn(|| session.poll_event()).collect(),
            )
        };
        for event in events {
            events::record(&self.metrics, &self.log, event);
        }
        actions
    }

    /// Feeds what the client stream yielded: a packet, a violation, its end.
    fn feed(&self, item: Option<Result<Packet, Status>>) -> Vec<Action> {
        match item {
            None => self.step(Session::handle_client_ended),
            Some(Ok(packet)) => {
                self.metrics.packet(Segment::FromClient, packet.r#type);
                match FrontendPacket::try_from(packet) {
                    Ok(p) => self.step(|s| s.handle_packet(p)),
                    Err(e) => self.step(|s| s.handle_malformed(e)),
                }
            }
            Some(Err(status)) if is_client_violation(&status) => {
                self.metrics.stream_error(Segment::FromClient, status.code());
                self.metrics.frontend_error("bad_message");
                let violation = Violation { code: status.code() as i32, message: status.message().to_owned() };
                self.step(|s| s.handle_violation(violation))
            }
            Some(Err(status)) => {
                self.metrics.stream_error(Segment::FromClient, status.code());
                debug!("frontend stream failed: {}", untrusted(status.message()));
                self.step(Session::handle_client_ended)
            }
        }
    }

    /// Carries out an action toward the client; `false` when the client can
    /// no longer be written to. Actions for the dial or the agent are the
    /// phase's own and are passed over here.
    async fn to_client(&self, action: Action) -> bool {
        match action {
            Action::Send(packet) => {
                let packet_type = packet.r#type;
                self.deliver(packet_type, Out::Packet(packet)).await
            }
            Action::SendData { connect_id, chunks } => {
                let n = chunks.iter().map(Bytes::len).sum();
                let data = Out::Data { connect_id, chunks };
                let sent = self.deliver(konnq_shared::proto::PacketType::Data as i32, data).await;
                if sent {
                    self.metrics.bytes_to_client(n);
                }
                sent
            }
            Action::EndClient(violation) => {
                warn!("closing a Proxy stream: {}", untrusted(&violation.message));
                let status = Status::new(tonic::Code::from_i32(violation.code), violation.message);
                // Bounded: a client that stopped reading does not hold the session.
                let _ = tokio::time::timeout(Duration::from_secs(1), self.out.send(Err(status))).await;
                true
            }
            _ => true,
        }
    }

    /// Hands a packet to the frontend connection's writer, counted as sent
    /// to the client and timed: the wait is the client's back-pressure.
    async fn deliver(&self, packet_type: i32, item: Out) -> bool {
        self.metrics.packet(Segment::ToClient, packet_type);
        let started = std::time::Instant::now();
        let sent = self.out.send(Ok(item)).await.is_ok();
        self.metrics.frontend_write_duration.observe_duration(started.elapsed());
        sent
    }

    /// Phase 1: client packets until the machine starts a dial (its protocol
    /// and address) or ends the session (`None`).
    async fn await_dial<S>(&self, inbound: &mut S) -> Option<(String, String)>
    where
        S: Stream<Item = Result<Packet, Status>> + Unpin,
    {
        loop {
            for action in self.feed(inbound.next().await) {
                match action {
                    Action::StartDial { protocol, address } => return Some((protocol, address)),
                    Action::Done => return None,
                    other => drop(self.to_client(other).await),
                }
            }
        }
    }

    /// Phase 2: dial through an agent, answering DIAL_RSP; `None` when the
    /// session ended instead (dropping the dial abandons it on the agent).
    async fn dial<S>(&self, inbound: &mut S, ctx: &SessionCtx, protocol: &str, address: &str) -> Option<Dialed>
    where
        S: Stream<Item = Result<Packet, Status>> + Unpin,
    {
        let dial = ctx.backend.dial_timed(protocol, address);
        tokio::pin!(dial);
        loop {
            let actions = tokio::select! {
                result = &mut dial => return self.dialed(result).await,
                item = inbound.next() => self.feed(item),
            };
            for action in actions {
                match action {
                    // Returning drops the dial future: that cancels it.
                    Action::Done => return None,
                    other => drop(self.to_client(other).await),
                }
            }
        }
    }

    /// The dial's outcome, answered with DIAL_RSP.
    async fn dialed(&self, result: Result<Dialed, DialError>) -> Option<Dialed> {
        let actions = match &result {
            Ok(dialed) => {
                debug!(
                    connect_id = dialed.connect_id,
                    address = %untrusted(&self.log.address),
                    agent = %untrusted(&dialed.agent.agent_id),
                    "dial succeeded"
                );
                self.step(|s| s.handle_dial_ok(dialed.connect_id))
            }
            Err(e) => self.step(|s| s.handle_dial_failed(&e.to_string())),
        };
        let mut delivered = true;
        for action in actions {
            delivered &= self.to_client(action).await;
        }
        match result {
            Ok(dialed) if delivered => Some(dialed),
            Ok(_) => {
                self.metrics.dial_failed(DialFailure::SendResponse);
                None
            }
            Err(_) => None,
        }
    }
}

/// Errors tonic reports for bytes the client sent, as opposed to the
/// connection going away.
fn is_client_violation(status: &Status) -> bool {
    use tonic::Code;
    matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument | Code::Internal)
}
