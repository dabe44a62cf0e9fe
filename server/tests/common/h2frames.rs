//! Raw HTTP/2 pieces for tests that speak to the frontend frame by frame
//! (RFC 9113): frame types, flags and codes, frame building, and gRPC
//! message framing of Konnectivity packets.

use konnq_shared::proto::Packet;
use prost::Message;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types, flags, settings and error codes (RFC 9113).
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY: u8 = 0x20;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const PRIORITY_FRAME: u8 = 0x2;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const FLOW_CONTROL_ERROR: u32 = 0x3;
pub const STREAM_CLOSED: u32 = 0x5;
pub const FRAME_SIZE_ERROR: u32 = 0x6;
pub const REFUSED_STREAM: u32 = 0x7;
pub const COMPRESSION_ERROR: u32 = 0x9;
/// SETTINGS_MAX_FRAME_SIZE's default, which neither side changes.
pub const MAX_FRAME: usize = 16_384;
/// The initial stream and connection window before any SETTINGS.
pub const DEFAULT_WINDOW: i64 = 65_535;

pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// A frame as read: type, flags, stream id, payload.
pub type Frame = (u8, u8, u32, Vec<u8>);

/// Reads one frame; `None` on a clean end of the connection between frames.
/// The server must keep to the default maximum frame size.
pub async fn try_read_frame(io: &mut tokio::net::UnixStream) -> std::io::Result<Option<Frame>> {
    let mut head = [0u8; 9];
    if tokio::io::AsyncReadExt::read(io, &mut head[..1]).await? == 0 {
        return Ok(None);
    }
    tokio::io::AsyncReadExt::read_exact(io, &mut head[1..]).await?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    assert!(len <= MAX_FRAME, "server sent a {len}-byte frame of type {} (limit {MAX_FRAME})", head[3]);
    let stream_id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0; len];
    tokio::io::AsyncReadExt::read_exact(io, &mut payload).await?;
    Ok(Some((head[3], head[4], stream_id, payload)))
}

pub fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Strips padding and priority fields from a HEADERS or DATA payload.
pub fn unpad(kind: u8, flags: u8, mut payload: Vec<u8>) -> Vec<u8> {
    if flags & PADDED != 0 {
        let pad = payload[0] as usize;
        payload.truncate(payload.len() - pad);
        payload.remove(0);
    }
    if kind == HEADERS && flags & PRIORITY != 0 {
        payload.drain(..5);
    }
    payload
}

/// One gRPC length-prefixed message (uncompressed).
pub fn grpc_message(packet: &Packet) -> Vec<u8> {
    let body = packet.encode_to_vec();
    let mut out = vec![0];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend(body);
    out
}

/// Removes one complete gRPC message from the front of `body`.
pub fn take_message(body: &mut Vec<u8>) -> Option<Vec<u8>> {
    if body.len() < 5 {
        return None;
    }
    assert_eq!(body[0], 0, "compressed gRPC message");
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() < 5 + len {
        return None;
    }
    let msg = body[5..5 + len].to_vec();
    body.drain(..5 + len);
    Some(msg)
}

pub fn field<'a>(fields: &'a Fields, name: &str) -> Option<&'a str> {
    fields.iter().find(|(n, _)| n == name.as_bytes()).map(|(_, v)| std::str::from_utf8(v).expect("utf-8 header"))
}
