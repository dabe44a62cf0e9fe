//! What the connection tells its driver: events, connection errors, and the
//! gRPC status a response ends with.

use std::time::Duration;

use crate::proto::Packet;

use super::frame::ErrorCode;

/// Something the driver acts on, in the order it happened.
#[derive(Debug)]
pub enum Event {
    /// A Proxy call opened: a session serves it. Its response headers are
    /// already queued.
    Open { stream: u32 },
    /// A message for the stream's session. `credit` bytes go back to the
    /// client ([`Connection::release`](super::Connection::release)) once the
    /// session has forwarded it; `reserved`: the message holds the
    /// partial-message reservation granted to the stream.
    Packet { stream: u32, packet: Packet, credit: u32, bytes: u32, reserved: bool },
    /// The stream's client side is unusable: its session ends the call with
    /// this error's status. Nothing more is read on the stream.
    Failed { stream: u32, error: MessageError, credit: u32, reserved: bool },
    /// The client's side ended: no more messages.
    End { stream: u32 },
    /// The client abandoned the stream while still sending (reset, stream
    /// error, connection lost): its session ends with `CANCELLED`.
    Cancel { stream: u32, reason: String },
    /// The stream is forgotten: nothing more goes out on it.
    Closed { stream: u32 },
    /// A partial message larger than half the stream window wants early
    /// credit: a reservation of `size` bytes, granted with
    /// [`Connection::grant_budget`](super::Connection::grant_budget).
    WantBudget { stream: u32, size: usize },
    /// The stream's queued response bytes are all out: it takes more.
    Writable { stream: u32 },
    /// A request we do not serve, answered or reset (counted, logged).
    Refused { stream: u32, reason: String },
    /// We reset a stream (logged).
    Reset { stream: u32, reason: String },
    /// The client sent GOAWAY: it opens no more streams.
    PeerGoAway,
}

/// Why a stream's inbound messages end in error (the status its session
/// reports to the client).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("compressed messages are not supported (grpc-encoding identity only)")]
    Compressed,
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("undecodable Packet: {0}")]
    Undecodable(String),
    #[error("stream ended inside a message")]
    EndedInsideMessage,
}

impl MessageError {
    /// The gRPC status code (RESOURCE_EXHAUSTED for size, INTERNAL otherwise).
    pub fn grpc_code(&self) -> i32 {
        match self {
            MessageError::TooLarge { .. } => GrpcStatus::RESOURCE_EXHAUSTED,
            _ => GrpcStatus::INTERNAL,
        }
    }
}

/// A gRPC status as trailers carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcStatus {
    pub code: i32,
    pub message: String,
}

impl GrpcStatus {
    pub const OK: i32 = 0;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const INTERNAL: i32 = 13;

    pub fn new(code: i32, message: impl Into<String>) -> GrpcStatus {
        GrpcStatus { code, message: message.into() }
    }
}

/// Why the connection ended early.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    /// A connection error, reported to the client with GOAWAY.
    #[error("{reason} (GOAWAY code {code:#x})")]
    Protocol { code: ErrorCode, reason: String },
    /// Our keep-alive PING went unanswered.
    #[error("no PING acknowledgement within {0:?}")]
    KeepAlive(Duration),
}

pub(crate) fn proto_err(code: ErrorCode, reason: impl Into<String>) -> ConnectionError {
    ConnectionError::Protocol { code, reason: reason.into() }
}
