//! One Konnectivity Proxy stream: DIAL_REQ, the dial, then the established
//! connection until CLOSE_REQ, remote EOF, agent loss or frontend loss.
//!
//! Phases:
//! 1. `await_dial`: the first DIAL_REQ starts a dial; anything else that
//!    names a connection is answered as an unknown connection.
//! 2. `dial`: the backend dial races the dial timeout, DIAL_CLS and the
//!    frontend stream ending. Losing the race drops the dial future, which
//!    resets the QUIC stream so the agent abandons the dial: no late
//!    DIAL_RSP, nothing left open on the agent.
//! 3. `Tunnel::run`: bytes both ways; exactly one CLOSE_RSP at the end.
//!
//! Outgoing packets go through a bounded channel to the gRPC response
//! stream; incoming packets are pulled only after the previous one was
//! written to QUIC, so flow control holds end to end.

use std::time::Duration;

use bytes::Bytes;

use futures::{Stream, StreamExt};
use konnq_protocol::konnectivity::{self as k, FrontendPacket};
use konnq_shared::gauge::GaugeGuard;
use konnq_shared::logging::untrusted;
use konnq_shared::proto::{Packet, PacketType};
use konnq_shared::quic::{codes, read_chunks};
use quinn::VarInt;
use tokio::sync::mpsc;
use tonic::Status;
use tracing::{debug, info, warn};

use crate::backend::{AgentConn, Backend, Dialed};
use crate::metrics::{DialFailure, Metrics, Segment};

/// How long after CLOSE_REQ we wait for the agent to confirm the close.
const CLOSE_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

pub type Outbound = mpsc::Sender<Result<Out, Status>>;

/// What a session sends its client.
#[derive(Debug)]
pub enum Out {
    Packet(Packet),
    /// A DATA packet whose payload is `chunks`, in order. The frontend
    /// encodes the packet's head ([`k::data_head`]) and copies the chunks
    /// straight into its frames: bytes from the agent are copied once on
    /// their way to the client, not joined and encoded first.
    Data {
        connect_id: i64,
        chunks: Vec<Bytes>,
    },
}

/// Everything a session needs from the server.
#[derive(Clone)]
pub struct SessionCtx {
    pub backend: std::sync::Arc<Backend>,
    pub metrics: Metrics,
}

/// Serves one Proxy stream to its end.
pub async fn run<S>(mut inbound: S, out: Outbound, ctx: SessionCtx)
where
    S: Stream<Item = Result<Packet, Status>> + Unpin,
{
    let _stream_gauge = GaugeGuard::inc(&ctx.metrics.proxy_streams);
    let Some(req) = await_dial(&mut inbound, &out, &ctx.metrics).await else {
        return;
    };
    let Some(dialed) = dial(&mut inbound, &out, &ctx, &req).await else {
        return;
    };
    Tunnel { inbound, out, ctx, dialed, random: req.random }.run().await;
}

async fn send(out: &Outbound, metrics: &Metrics, packet: Packet) -> bool {
    let packet_type = packet.r#type;
    deliver(out, metrics, packet_type, Out::Packet(packet)).await
}

/// Hands a packet to the frontend connection's writer, counted as sent to
/// the client and timed: the wait is the client's back-pressure.
async fn deliver(out: &Outbound, metrics: &Metrics, packet_type: i32, item: Out) -> bool {
    metrics.packet(Segment::ToClient, packet_type);
    let started = std::time::Instant::now();
    let sent = out.send(Ok(item)).await.is_ok();
    metrics.frontend_write_duration.observe_duration(started.elapsed());
    sent
}

/// Phase 1: wait for the DIAL_REQ.
async fn await_dial<S>(inbound: &mut S, out: &Outbound, metrics: &Metrics) -> Option<k::DialReq>
where
    S: Stream<Item = Result<Packet, Status>> + Unpin,
{
    loop {
        match next_packet(inbound, out, metrics).await? {
            FrontendPacket::DialReq(req) => return Some(req),
            FrontendPacket::Data { connect_id, .. } | FrontendPacket::CloseReq { connect_id } => {
                metrics.frontend_error("unknown_connection");
                warn!(connect_id, "packet for an unknown connection before any dial");
                send(out, metrics, k::close_rsp(connect_id, &format!("unknown connectID {connect_id}"))).await;
            }
            FrontendPacket::DialCls { random } => debug!(random, "DIAL_CLS before any dial; ignored"),
            FrontendPacket::Other(kind) => debug!(kind, "ignoring packet"),
        }
    }
}

/// Pulls the next packet; `None` when the frontend stream ended or failed.
/// A stream that fails because of what the client sent (an oversize or
/// undecodable message, a packet whose type and payload disagree) is ended
/// with an error status naming the violation, so the client learns why.
async fn next_packet<S>(inbound: &mut S, out: &Outbound, metrics: &Metrics) -> Option<FrontendPacket>
where
    S: Stream<Item = Result<Packet, Status>> + Unpin,
{
    let violation = match inbound.next().await? {
        Ok(packet) => {
            metrics.packet(Segment::FromClient, packet.r#type);
            match FrontendPacket::try_from(packet) {
                Ok(p) => return Some(p),
                Err(e) => {
                    metrics.frontend_error("malformed_packet");
                    Status::invalid_argument(format!("malformed packet: {e}"))
                }
            }
        }
        Err(status) if is_client_violation(&status) => {
            metrics.stream_error(Segment::FromClient, status.code());
            metrics.frontend_error("bad_message");
            status
        }
        Err(status) => {
            metrics.stream_error(Segment::FromClient, status.code());
            debug!("frontend stream failed: {}", untrusted(status.message()));
            return None;
        }
    };
    warn!("closing a Proxy stream: {}", untrusted(violation.message()));
    // Bounded: a client that stopped reading does not hold the session.
    let _ = tokio::time::timeout(Duration::from_secs(1), out.send(Err(violation))).await;
    None
}

/// Errors tonic reports for bytes the client sent, as opposed to the
/// connection going away.
fn is_client_violation(status: &Status) -> bool {
    use tonic::Code;
    matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument | Code::Internal)
}

/// Phase 2: dial through an agent, answering DIAL_RSP.
async fn dial<S>(inbound: &mut S, out: &Outbound, ctx: &SessionCtx, req: &k::DialReq) -> Option<Dialed>
where
    S: Stream<Item = Result<Packet, Status>> + Unpin,
{
    let metrics = &ctx.metrics;
    if let Err(reason) = k::check_dial(req) {
        metrics.frontend_error("bad_dial_request");
        warn!(random = req.random, address = %untrusted(&req.address), "rejected dial: {}", untrusted(&reason));
        send(out, metrics, k::dial_rsp_err(req.random, &reason)).await;
        return None;
    }
    let dial = ctx.backend.dial_timed(&req.protocol, &req.address);
    tokio::pin!(dial);
    let result = loop {
        tokio::select! {
            r = &mut dial => break r,
            p = next_packet(inbound, out, metrics) => match p {
                Some(FrontendPacket::DialCls { random }) if random == req.random => {
                    metrics.dial_failed(DialFailure::FrontendClose);
                    info!(random, address = %untrusted(&req.address), "client cancelled the dial (DIAL_CLS)");
                    return None;
                }
                Some(other) => reject_during_dial(other, out, metrics, req.random).await,
                None => {
                    metrics.dial_failed(DialFailure::FrontendClose);
                    debug!(random = req.random, "frontend stream ended during the dial");
                    return None;
                }
            },
        }
    };
    match result {
        Ok(dialed) => {
            debug!(
                random = req.random,
                connect_id = dialed.connect_id,
                address = %untrusted(&req.address),
                agent = %untrusted(&dialed.agent.agent_id),
                "dial succeeded"
            );
            if send(out, metrics, k::dial_rsp_ok(req.random, dialed.connect_id)).await {
                Some(dialed)
            } else {
                metrics.dial_failed(DialFailure::SendResponse);
                None
            }
        }
        Err(e) => {
            info!(random = req.random, address = %untrusted(&req.address), "dial failed: {}", untrusted(&e.to_string()));
            send(out, metrics, k::dial_rsp_err(req.random, &e.to_string())).await;
            None
        }
    }
}

async fn reject_during_dial(packet: FrontendPacket, out: &Outbound, metrics: &Metrics, random: i64) {
    match packet {
        FrontendPacket::DialReq(second) => {
            metrics.frontend_error("second_dial");
            warn!(random = second.random, "second DIAL_REQ on a stream refused");
            send(out, metrics, k::dial_rsp_err(second.random, k::ONE_DIAL_PER_STREAM)).await;
        }
        FrontendPacket::Data { connect_id, .. } | FrontendPacket::CloseReq { connect_id } => {
            metrics.frontend_error("unknown_connection");
            warn!(connect_id, "packet for an unknown connection during a dial");
            send(out, metrics, k::close_rsp(connect_id, &format!("unknown connectID {connect_id}"))).await;
        }
        FrontendPacket::DialCls { random: other } => debug!(random, other, "DIAL_CLS for another dial; ignored"),
        FrontendPacket::Other(kind) => debug!(kind, "ignoring packet during dial"),
    }
}

/// Phase 3: an established connection.
struct Tunnel<S> {
    inbound: S,
    out: Outbound,
    ctx: SessionCtx,
    dialed: Dialed,
    /// The dial's `random`: a DIAL_CLS naming it that crossed our DIAL_RSP
    /// means the client gave up, so the connection must not live on.
    random: i64,
}

impl<S> Tunnel<S>
where
    S: Stream<Item = Result<Packet, Status>> + Unpin,
{
    async fn run(self) {
        let Tunnel { mut inbound, out, ctx, dialed, random } = self;
        // `_slot` keeps the agent's stream slot taken until the tunnel ends.
        let Dialed { connect_id, mut send, recv, agent, slot: _slot } = dialed;
        let metrics = ctx.metrics.clone();
        let _established = GaugeGuard::inc(&metrics.established);
        // Agent → client runs on its own task so a slow client write never
        // blocks reading CLOSE_REQ, and vice versa.
        let mut downstream =
            tokio::spawn(to_client(recv, out.clone(), connect_id, metrics.clone(), std::sync::Arc::clone(&agent)));
        let mut send_open = true;
        let mut share = konnq_shared::quic::SendShare::new(agent.send_clock.clone());
        loop {
            tokio::select! {
                _ = &mut downstream => return,
                p = next_packet(&mut inbound, &out, &metrics) => match p {
                    Some(FrontendPacket::Data { connect_id: id, data }) if id == connect_id => {
                        if send_open {
                            let n = data.len();
                            if konnq_shared::quic::write_shared(&mut send, &mut share, data).await.is_ok() {
                                metrics.bytes_to_agent(n);
                            } else {
                                // The agent side is gone; `to_client` reports it.
                                send_open = false;
                            }
                        }
                    }
                    Some(FrontendPacket::CloseReq { connect_id: id }) if id == connect_id => {
                        debug!(connect_id, agent = %untrusted(&agent.agent_id), "CLOSE_REQ");
                        let _ = send.finish();
                        break;
                    }
                    Some(FrontendPacket::DialCls { random: r }) if r == random => {
                        info!(connect_id, random, "DIAL_CLS crossed DIAL_RSP: closing the abandoned connection");
                        let _ = send.reset(VarInt::from_u32(codes::DIAL_ABANDONED));
                        downstream.abort();
                        return;
                    }
                    Some(other) => reject_established(other, &out, &metrics, connect_id).await,
                    None => {
                        // The client went away without CLOSE_REQ: tear down.
                        debug!(connect_id, "frontend stream ended; resetting the agent stream");
                        let _ = send.reset(VarInt::from_u32(codes::FRONTEND_GONE));
                        downstream.abort();
                        return;
                    }
                },
            }
        }
        // After CLOSE_REQ the agent closes the target and finishes its side;
        // `to_client` then sends CLOSE_RSP. Bound the wait.
        if tokio::time::timeout(CLOSE_CONFIRM_TIMEOUT, &mut downstream).await.is_err() {
            warn!(connect_id, "agent did not confirm the close within {CLOSE_CONFIRM_TIMEOUT:?}; resetting");
            downstream.abort();
            let _ = send.reset(VarInt::from_u32(codes::FRONTEND_GONE));
            send_close(&out, &metrics, connect_id, "").await;
        }
    }
}

async fn reject_established(packet: FrontendPacket, out: &Outbound, metrics: &Metrics, connect_id: i64) {
    match packet {
        FrontendPacket::DialReq(second) => {
            metrics.frontend_error("second_dial");
            warn!(connect_id, random = second.random, "second DIAL_REQ on a stream refused");
            send(out, metrics, k::dial_rsp_err(second.random, k::ONE_DIAL_PER_STREAM)).await;
        }
        FrontendPacket::Data { connect_id: id, .. } | FrontendPacket::CloseReq { connect_id: id } => {
            metrics.frontend_error("unknown_connection");
            warn!(connect_id, unknown = id, "packet for an unknown connection");
            send(out, metrics, k::close_rsp(id, &format!("unknown connectID {id}"))).await;
        }
        FrontendPacket::DialCls { random } => debug!(connect_id, random, "late DIAL_CLS ignored"),
        FrontendPacket::Other(kind) => debug!(connect_id, kind, "ignoring packet"),
    }
}

async fn send_close(out: &Outbound, metrics: &Metrics, connect_id: i64, error: &str) {
    send(out, metrics, k::close_rsp(connect_id, error)).await;
}

/// Agent → client: every byte as DATA, then exactly one CLOSE_RSP.
async fn to_client(
    mut recv: quinn::RecvStream,
    out: Outbound,
    connect_id: i64,
    metrics: Metrics,
    agent: std::sync::Arc<AgentConn>,
) {
    let error = loop {
        match read_chunks(&mut recv).await {
            Ok(Some(chunks)) => {
                let n = chunks.iter().map(Bytes::len).sum();
                let data = Out::Data { connect_id, chunks };
                if !deliver(&out, &metrics, PacketType::Data as i32, data).await {
                    // Client gone: stop the agent side too.
                    let _ = recv.stop(VarInt::from_u32(codes::FRONTEND_GONE));
                    return;
                }
                metrics.bytes_to_client(n);
            }
            Ok(None) => break String::new(),
            Err(quinn::ReadError::Reset(code)) => break format!("agent reset the connection (code {code})"),
            Err(quinn::ReadError::ConnectionLost(e)) => break agent.lost_reason(&e),
            Err(e) => break format!("agent connection lost: {e}"),
        }
    };
    if !error.is_empty() {
        debug!(connect_id, "{error}");
    }
    send_close(&out, &metrics, connect_id, &error).await;
}
