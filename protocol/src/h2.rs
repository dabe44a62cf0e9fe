//! The HTTP/2 server connection (RFC 9113) of the gRPC frontend, serving
//! `/ProxyService/Proxy` only, as a state machine without IO.
//!
//! Shaped like quinn-proto: the driver (konnq-server's
//! `frontend::http2`) owns the socket and the clock and calls
//!
//! - [`Connection::recv`] with the bytes it read (complete frames are taken
//!   from its buffer, an incomplete one is left there) and the time;
//! - [`Connection::handle_timeout`] when [`Connection::poll_timeout`] is due
//!   (keep-alive PINGs, and the connection's end when one goes unanswered);
//! - [`Connection::poll_event`] for what happened: a Proxy call opened, a
//!   message for a stream's session, the client's side ended or was
//!   abandoned, a stream forgotten, a partial message wanting a
//!   reservation, a stream writable again;
//! - [`Connection::transmit`] / [`Connection::advance_transmit`] for the
//!   bytes to write;
//! - a stream's outbound operations — [`Connection::send_packet`],
//!   [`Connection::send_data`], [`Connection::finish`] — subject to flow
//!   control, and [`Connection::release`] once a session has forwarded a
//!   message, which credits its bytes back to the client: end-to-end
//!   back-pressure, a slow session stalls only its own stream.
//!
//! A message larger than half the stream window would never complete
//! that way; it asks the driver for a reservation of its size
//! ([`Event::WantBudget`]), and is credited as it arrives once the driver
//! has one ([`Connection::grant_budget`]); the driver keeps the budgets.
//!
//! Everything RFC 9113 asks of a server is here: stream states and the
//! ring of streams closed lately ([`streams`]), header validation
//! ([`fields`]), refusals (405/415 for what is no gRPC call, a
//! trailers-only `UNIMPLEMENTED` for other methods), the concurrent-stream
//! limit, CONTINUATION, SETTINGS, PING, WINDOW_UPDATE and GOAWAY. HPACK
//! blocks are decoded with [`crate::hpack::Decoder`]; what we encode never
//! uses the dynamic table, so the client's decoder holds nothing for us.
//! A connection error queues GOAWAY naming it and is returned as
//! [`ConnectionError`]; a stream error resets only its stream.

mod conn;
mod data;
mod event;
mod fields;
pub mod frame;
mod message;
mod recv;
mod send;
mod streams;
#[cfg(test)]
mod tests;
mod transmit;

use std::time::Duration;

pub use self::conn::{Config, Connection};
pub use self::event::{ConnectionError, Event, GrpcStatus, MessageError};
pub use self::frame::{wanted_bytes, ErrorCode, Flags, FrameHead, FrameType, SettingId, HEAD_LEN, PREFACE};
pub use self::streams::CLOSED_REMEMBERED;

use self::event::proto_err;
pub(crate) use self::fields::literal as fields_literal;
use self::send::Refusal;

/// The one method served.
pub const PROXY_PATH: &[u8] = b"/ProxyService/Proxy";
/// Stream receive window we advertise: what one client may have sent that
/// its session has not yet forwarded. 256 KiB keeps a Unix-socket or
/// loopback client at full speed, and 64 uploading clients whose agent side
/// is slower hold 16 MiB in the server, not 64 MiB.
pub const STREAM_WINDOW: u32 = 256 * 1024;
/// Larger messages are credited as they arrive, within the partial-message
/// budgets. One no larger than half the window completes within it once the
/// messages before it are forwarded: credit not yet sent back is always
/// under a quarter window (WINDOW_UPDATEs go out a quarter window at a time).
pub const EARLY_CREDIT_ABOVE: usize = STREAM_WINDOW as usize / 2;
/// Connection receive window we advertise (credited as frames arrive).
pub const CONN_WINDOW: u32 = 4 * 1024 * 1024;
/// Concurrent streams per connection we allow.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Largest frame payload we accept (the protocol default; we advertise no other).
pub const MAX_FRAME: usize = 16_384;
/// Largest header block (HEADERS + CONTINUATION) we accept.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// HPACK dynamic table size the client's encoder may use.
pub const HEADER_TABLE_SIZE: usize = 4096;
/// Keep-alive: close a connection whose PING is not answered this soon.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Our keep-alive PING's payload.
const KEEPALIVE_PING: &[u8; 8] = b"konnq-ka";
/// The PING that follows a graceful shutdown's first GOAWAY: its ACK
/// means the client has seen that GOAWAY, so no request it sent before
/// can still be on its way.
const GOAWAY_PING: &[u8; 8] = b"konnq-ga";
/// How long a graceful shutdown waits for [`GOAWAY_PING`]'s ACK before
/// it names the last stream anyway.
pub const GOAWAY_PING_WAIT: Duration = Duration::from_secs(1);
/// The initial window of RFC 9113 §6.9.2.
const DEFAULT_WINDOW: i64 = 65_535;
/// Largest stream identifier (RFC 9113 §5.1.1).
const MAX_STREAM_ID: u32 = (1 << 31) - 1;
/// Largest flow-control window (RFC 9113 §6.9.1).
const MAX_WINDOW: i64 = (1 << 31) - 1;
