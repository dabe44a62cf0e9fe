//! One dial stream: read the dial header, dial the target with a timeout
//! (abandoned at once if the server resets the stream; a stream reset before
//! its header is a cancelled dial, counted as
//! `stream_errors_total{kind="cancelled"}`), answer, then copy
//! bytes both ways until either side ends. There is no half-close in the
//! Konnectivity protocol, so the first end closes the whole connection.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use konnq_protocol::wire::{self, DialHeader, DialResult};
use konnq_shared::quic::{codes, read_chunks, read_frame, write_all_chunks, FrameError};
use quinn::{RecvStream, SendStream, VarInt};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use konnq_shared::gauge::GaugeGuard;
use konnq_shared::logging::untrusted;

use crate::metrics::{DialFailure, Direction, Metrics};

/// How long the server has to send the dial header after opening a stream.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest read from a target handed to QUIC at once.
const CHUNK: usize = 64 * 1024;

pub async fn handle(
    mut send: SendStream,
    mut recv: RecvStream,
    dial_timeout: Duration,
    metrics: Metrics,
    send_clock: std::sync::Arc<konnq_shared::quic::ShareClock>,
) {
    let header = match read_header(&mut recv).await {
        Ok(h) => h,
        Err(NoHeader::Cancelled(code)) => {
            metrics.stream_error("cancelled");
            debug!(stream = %send.id(), "dial cancelled by the server before its header (reset, code {code})");
            let _ = send.reset(VarInt::from_u32(codes::DIAL_ABANDONED));
            return;
        }
        Err(NoHeader::ConnectionLost(e)) => {
            debug!(stream = %send.id(), "connection lost before the dial header: {e}");
            return;
        }
        Err(NoHeader::Malformed(reason)) => {
            metrics.stream_error("malformed_dial_header");
            warn!(stream = %send.id(), "refusing dial stream: {}", untrusted(&reason));
            let _ = send.reset(VarInt::from_u32(codes::PROTOCOL));
            let _ = recv.stop(VarInt::from_u32(codes::PROTOCOL));
            return;
        }
    };
    let connect_id = header.connect_id;
    if header.protocol != "tcp" {
        metrics.dial_failed(DialFailure::Unknown);
        answer(&mut send, DialResult::Failed(format!("unsupported protocol {:?}", header.protocol))).await;
        return;
    }
    let timeout = dial_timeout.min(Duration::from_millis(header.timeout_ms.into()));
    let started = Instant::now();
    let pending = GaugeGuard::inc(&metrics.pending_dials);
    let outcome = tokio::select! {
        r = tokio::time::timeout(timeout, TcpStream::connect(&header.address)) => r,
        _ = send.stopped() => {
            metrics.dials_abandoned.inc();
            debug!(connect_id, address = %untrusted(&header.address), "server abandoned the dial");
            let _ = recv.stop(VarInt::from_u32(codes::DIAL_ABANDONED));
            return;
        }
    };
    drop(pending);
    let tcp = match outcome {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            // The kernel's connect timeout is a timeout too, as for upstream.
            let timed_out = e.kind() == std::io::ErrorKind::TimedOut;
            metrics.dial_failed(if timed_out { DialFailure::Timeout } else { DialFailure::Unknown });
            debug!(connect_id, address = %untrusted(&header.address), "dial failed: {e}");
            answer(&mut send, DialResult::Failed(format!("dial tcp {}: {e}", header.address))).await;
            return;
        }
        Err(_) => {
            metrics.dial_failed(DialFailure::Timeout);
            let reason = format!("dial tcp {}: i/o timeout after {timeout:?}", header.address);
            debug!(connect_id, "{}", untrusted(&reason));
            answer(&mut send, DialResult::Failed(reason)).await;
            return;
        }
    };
    metrics.dial_duration.observe(started.elapsed().as_secs_f64());
    let _ = tcp.set_nodelay(true);
    // Counted from the connect on: a scrape after the server has the answer
    // sees the connection.
    let _open = GaugeGuard::inc(&metrics.open_endpoint_connections);
    if send.write_all(&DialResult::Connected.encode()).await.is_err() {
        // The server gave up between our dial and the answer: drop the TCP connection.
        metrics.dials_abandoned.inc();
        return;
    }
    debug!(connect_id, address = %untrusted(&header.address), "connected");
    pump(tcp, send, recv, connect_id, &metrics, send_clock).await;
}

/// Why a dial stream brought no dial header.
enum NoHeader {
    /// The server reset the stream first: it gave the dial up (the client
    /// cancelled or went away, or the dial timed out) before the header
    /// was sent or while it was on its way. Normal, not an error.
    Cancelled(VarInt),
    /// The connection to the server ended (reported by the session).
    ConnectionLost(quinn::ConnectionError),
    /// Anything else is a protocol violation.
    Malformed(String),
}

async fn read_header(recv: &mut RecvStream) -> Result<DialHeader, NoHeader> {
    let read = tokio::time::timeout(HEADER_TIMEOUT, read_frame(recv, wire::MAX_DIAL_BODY, "dial header"))
        .await
        .map_err(|_| NoHeader::Malformed(format!("no dial header within {HEADER_TIMEOUT:?}")))?;
    let (kind, body) = match read {
        Ok(frame) => frame,
        Err(FrameError::Read { source: quinn::ReadError::Reset(code), .. }) => return Err(NoHeader::Cancelled(code)),
        Err(FrameError::Read { source: quinn::ReadError::ConnectionLost(e), .. }) => {
            return Err(NoHeader::ConnectionLost(e))
        }
        Err(e) => return Err(NoHeader::Malformed(e.to_string())),
    };
    DialHeader::from_frame(kind, &body).map_err(|e| NoHeader::Malformed(e.to_string()))
}

async fn answer(send: &mut SendStream, result: DialResult) {
    let _ = send.write_all(&result.encode()).await;
    let _ = send.finish();
}

/// How the copy between target and server ended.
enum End {
    /// Target closed (EOF): finish our side so the server sends CLOSE_RSP.
    TargetEof,
    /// Server finished its side (CLOSE_REQ): close the target, finish ours.
    ServerEof,
    /// Server reset or stopped the stream (client gone): close quietly.
    ServerGone,
    /// Target connection failed.
    TargetError(std::io::Error),
    /// The QUIC connection is gone.
    ConnectionLost,
}

async fn pump(
    tcp: TcpStream,
    mut send: SendStream,
    mut recv: RecvStream,
    connect_id: u64,
    metrics: &Metrics,
    send_clock: std::sync::Arc<konnq_shared::quic::ShareClock>,
) {
    let (tcp_read, mut tcp_write) = tcp.into_split();
    let upstream = async {
        let mut share = konnq_shared::quic::SendShare::new(send_clock);
        loop {
            // Allocate a buffer only once the target has data: idle
            // connections hold no copy buffer.
            if let Err(e) = tcp_read.readable().await {
                return End::TargetError(e);
            }
            let mut buf = BytesMut::with_capacity(CHUNK);
            match tcp_read.try_read_buf(&mut buf) {
                Ok(0) => return End::TargetEof,
                Ok(n) => {
                    if let Err(e) = konnq_shared::quic::write_shared(&mut send, &mut share, buf.freeze()).await {
                        return match e {
                            quinn::WriteError::Stopped(_) => End::ServerGone,
                            _ => {
                                metrics.server_failure(Direction::ToServer);
                                End::ConnectionLost
                            }
                        };
                    }
                    metrics.bytes_to_server(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return End::TargetError(e),
            }
        }
    };
    let downstream = async {
        loop {
            match read_chunks(&mut recv).await {
                Ok(Some(chunks)) => {
                    let n = chunks.iter().map(bytes::Bytes::len).sum();
                    if let Err(e) = write_all_chunks(&mut tcp_write, chunks).await {
                        return End::TargetError(e);
                    }
                    metrics.bytes_to_target(n);
                }
                Ok(None) => return End::ServerEof,
                Err(quinn::ReadError::Reset(_)) => return End::ServerGone,
                Err(_) => return End::ConnectionLost,
            }
        }
    };
    let end = tokio::select! {
        e = upstream => e,
        e = downstream => e,
    };
    match end {
        End::TargetEof | End::ServerEof => {
            let _ = send.finish();
            let _ = recv.stop(VarInt::from_u32(codes::SHUTDOWN));
        }
        End::ServerGone => {
            let _ = send.reset(VarInt::from_u32(codes::FRONTEND_GONE));
            let _ = recv.stop(VarInt::from_u32(codes::FRONTEND_GONE));
        }
        End::TargetError(ref e) => {
            debug!(connect_id, "target connection failed: {e}");
            let _ = send.reset(VarInt::from_u32(codes::TARGET_ERROR));
            let _ = recv.stop(VarInt::from_u32(codes::TARGET_ERROR));
        }
        End::ConnectionLost => {}
    }
    // Dropping both TCP halves closes the target connection.
}
