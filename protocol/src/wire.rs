//! konnq's own wire format between server and agent (sans-IO).
//!
//! Every message is one frame:
//!
//! ```text
//! +---------+------+----------------+----------------------+
//! | version | kind | body length    | body                 |
//! |   u8    |  u8  | u32 big endian | `length` bytes       |
//! +---------+------+----------------+----------------------+
//! ```
//!
//! The body length is checked against a per-kind maximum *before* anything is
//! buffered, so a peer cannot make us allocate more than [`MAX_CONTROL_BODY`].
//! Strings inside bodies are a `u16` big-endian length followed by UTF-8.
//!
//! Two places use frames:
//! - the first bytes of every dial stream (server → agent: [`DialHeader`];
//!   agent → server: [`DialResult`]); after them the stream carries raw bytes;
//! - the control stream the agent opens ([`Control`] messages both ways).
//!
//! Decoding follows the check-then-parse pattern: [`decode`] returns
//! `Ok(None)` for an incomplete frame (cheap and expected when input arrives
//! in pieces) and an error naming the violation for anything malformed.

use std::fmt;

/// Protocol version carried in every frame. Peers reject frames of another
/// version with [`WireError::UnsupportedVersion`].
pub const VERSION: u8 = 1;
/// Frame header size: version, kind, u32 length.
pub const HEADER_LEN: usize = 6;
/// Largest body a dial header or dial result may have.
pub const MAX_DIAL_BODY: usize = 4096;
/// Largest body a control message may have.
pub const MAX_CONTROL_BODY: usize = 64 * 1024;
/// Longest address ("host:port") accepted in a dial header.
pub const MAX_ADDRESS_LEN: usize = 1024;

/// What went wrong while decoding a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("unsupported frame version {found} (this side speaks {VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("unexpected frame kind {found:#04x}, expected {expected}")]
    UnexpectedKind { found: u8, expected: &'static str },
    #[error("frame body of {len} bytes exceeds the maximum of {max} for {what}")]
    TooLong { len: usize, max: usize, what: &'static str },
    #[error("{what} body is truncated")]
    Truncated { what: &'static str },
    #[error("{what} body has {extra} trailing bytes")]
    TrailingBytes { what: &'static str, extra: usize },
    #[error("{what}: string is not valid UTF-8")]
    BadUtf8 { what: &'static str },
    #[error("{what}: {reason}")]
    Invalid { what: &'static str, reason: &'static str },
}

/// Frame kinds.
mod kind {
    pub const DIAL_HEADER: u8 = 0x01;
    pub const DIAL_RESULT: u8 = 0x02;
    pub const HELLO: u8 = 0x10;
    pub const WELCOME: u8 = 0x11;
    pub const DRAIN: u8 = 0x12;
    pub const REJECT: u8 = 0x13;
    pub const TOKEN: u8 = 0x14;
}

/// First frame on a dial stream, written by the server right after it opens
/// the stream: what the agent must dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialHeader {
    /// Network protocol; only "tcp" is dialed by agents today.
    pub protocol: String,
    /// Target "host:port".
    pub address: String,
    /// How long the agent may spend dialing, in milliseconds.
    pub timeout_ms: u32,
    /// The connection id the server will hand the client (for logs).
    pub connect_id: u64,
}

/// The agent's answer on a dial stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialResult {
    Connected,
    Failed(String),
}

/// Messages on the control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Agent → server, first message: who the agent is.
    Hello(Hello),
    /// Server → agent answer to a Hello that was accepted.
    Welcome { server_id: String, server_count: u32 },
    /// Either way: the sender takes no new dials (agent) / is going away (server).
    Drain,
    /// Server → agent: the Hello was refused; the connection closes next.
    Reject { reason: String },
    /// Agent → server: its ServiceAccount token file changed (projected
    /// tokens rotate); the server reviews the new token and, if it is
    /// accepted, re-checks the connection against it from then on.
    Token(SecretToken),
}

/// A ServiceAccount token; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretToken(pub String);

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "<redacted>" })
    }
}

/// The agent's identity.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Hello {
    pub agent_id: String,
    /// Upstream-style identifiers as (key, value) pairs, e.g. ("host", "node-1").
    pub identifiers: Vec<(String, String)>,
    /// Service-account token, empty when not used.
    pub token: String,
}

impl fmt::Debug for Hello {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hello")
            .field("agent_id", &self.agent_id)
            .field("identifiers", &self.identifiers)
            .field("token", &if self.token.is_empty() { "" } else { "<redacted>" })
            .finish()
    }
}

/// A complete frame found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct RawFrame<'a> {
    pub kind: u8,
    pub body: &'a [u8],
    /// Bytes the frame occupied, header included.
    pub consumed: usize,
}

/// Looks for one frame at the start of `buf`. `Ok(None)`: more bytes needed.
pub fn decode_frame<'a>(buf: &'a [u8], max_body: usize, what: &'static str) -> Result<Option<RawFrame<'a>>, WireError> {
    if let Some(&version) = buf.first() {
        if version != VERSION {
            return Err(WireError::UnsupportedVersion { found: version });
        }
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]) as usize;
    if len > max_body {
        return Err(WireError::TooLong { len, max: max_body, what });
    }
    if buf.len() < HEADER_LEN + len {
        return Ok(None);
    }
    Ok(Some(RawFrame { kind: buf[1], body: &buf[HEADER_LEN..HEADER_LEN + len], consumed: HEADER_LEN + len }))
}

/// Checks a frame header on its own and returns (kind, body length). Used by
/// async readers that read the header, then exactly the body, so they never
/// consume bytes beyond the frame.
pub fn decode_header(header: &[u8; HEADER_LEN], max_body: usize, what: &'static str) -> Result<(u8, usize), WireError> {
    if header[0] != VERSION {
        return Err(WireError::UnsupportedVersion { found: header[0] });
    }
    let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
    if len > max_body {
        return Err(WireError::TooLong { len, max: max_body, what });
    }
    Ok((header[1], len))
}

fn frame(kind: u8, body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Callers bound their strings well below u16::MAX; clamp defensively at a
    // char boundary so encoding can never fail.
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

/// Reads fields out of a frame body.
struct Body<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Body<'a> {
    fn new(rest: &'a [u8], what: &'static str) -> Self {
        Body { rest, what }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.rest.len() < n {
            return Err(WireError::Truncated { what: self.what });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn string(&mut self) -> Result<String, WireError> {
        let b = self.take(2)?;
        let len = u16::from_be_bytes([b[0], b[1]]) as usize;
        let raw = self.take(len)?;
        String::from_utf8(raw.to_vec()).map_err(|_| WireError::BadUtf8 { what: self.what })
    }
    fn finish(self) -> Result<(), WireError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes { what: self.what, extra: self.rest.len() })
        }
    }
}

impl DialHeader {
    const WHAT: &'static str = "dial header";

    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(16 + self.protocol.len() + self.address.len());
        put_str(&mut body, &self.protocol);
        put_str(&mut body, &self.address);
        body.extend_from_slice(&self.timeout_ms.to_be_bytes());
        body.extend_from_slice(&self.connect_id.to_be_bytes());
        frame(kind::DIAL_HEADER, body)
    }

    /// Decodes a dial header at the start of `buf`; `Ok(None)` if incomplete.
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, WireError> {
        let Some(raw) = decode_frame(buf, MAX_DIAL_BODY, Self::WHAT)? else {
            return Ok(None);
        };
        Self::from_frame(raw.kind, raw.body).map(|h| Some((h, raw.consumed)))
    }

    /// Builds a dial header from an already delimited frame.
    pub fn from_frame(kind: u8, body: &[u8]) -> Result<Self, WireError> {
        if kind != kind::DIAL_HEADER {
            return Err(WireError::UnexpectedKind { found: kind, expected: Self::WHAT });
        }
        let mut b = Body::new(body, Self::WHAT);
        let header =
            DialHeader { protocol: b.string()?, address: b.string()?, timeout_ms: b.u32()?, connect_id: b.u64()? };
        b.finish()?;
        header.validate()?;
        Ok(header)
    }

    fn validate(&self) -> Result<(), WireError> {
        let invalid = |reason| Err(WireError::Invalid { what: Self::WHAT, reason });
        if self.protocol.is_empty() {
            return invalid("empty protocol");
        }
        if self.address.is_empty() {
            return invalid("empty address");
        }
        if self.address.len() > MAX_ADDRESS_LEN {
            return invalid("address longer than 1024 bytes");
        }
        if self.timeout_ms == 0 {
            return invalid("zero dial timeout");
        }
        Ok(())
    }
}

impl DialResult {
    const WHAT: &'static str = "dial result";

    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        match self {
            DialResult::Connected => body.push(0),
            DialResult::Failed(reason) => {
                body.push(1);
                // Keep the reason within the frame limit.
                let mut end = reason.len().min(MAX_DIAL_BODY - 3);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                put_str(&mut body, &reason[..end]);
            }
        }
        frame(kind::DIAL_RESULT, body)
    }

    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, WireError> {
        let Some(raw) = decode_frame(buf, MAX_DIAL_BODY, Self::WHAT)? else {
            return Ok(None);
        };
        Self::from_frame(raw.kind, raw.body).map(|r| Some((r, raw.consumed)))
    }

    pub fn from_frame(kind: u8, body: &[u8]) -> Result<Self, WireError> {
        if kind != kind::DIAL_RESULT {
            return Err(WireError::UnexpectedKind { found: kind, expected: Self::WHAT });
        }
        let mut b = Body::new(body, Self::WHAT);
        let result = match b.u8()? {
            0 => DialResult::Connected,
            1 => DialResult::Failed(b.string()?),
            _ => return Err(WireError::Invalid { what: Self::WHAT, reason: "unknown status" }),
        };
        b.finish()?;
        Ok(result)
    }
}

impl Control {
    const WHAT: &'static str = "control message";

    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        let k = match self {
            Control::Hello(h) => {
                put_str(&mut body, &h.agent_id);
                body.extend_from_slice(&(h.identifiers.len().min(u16::MAX as usize) as u16).to_be_bytes());
                for (key, value) in h.identifiers.iter().take(u16::MAX as usize) {
                    put_str(&mut body, key);
                    put_str(&mut body, value);
                }
                put_str(&mut body, &h.token);
                kind::HELLO
            }
            Control::Welcome { server_id, server_count } => {
                put_str(&mut body, server_id);
                body.extend_from_slice(&server_count.to_be_bytes());
                kind::WELCOME
            }
            Control::Drain => kind::DRAIN,
            Control::Reject { reason } => {
                put_str(&mut body, reason);
                kind::REJECT
            }
            Control::Token(token) => {
                put_str(&mut body, &token.0);
                kind::TOKEN
            }
        };
        frame(k, body)
    }

    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, WireError> {
        let Some(raw) = decode_frame(buf, MAX_CONTROL_BODY, Self::WHAT)? else {
            return Ok(None);
        };
        Self::from_frame(raw.kind, raw.body).map(|m| Some((m, raw.consumed)))
    }

    pub fn from_frame(k: u8, body: &[u8]) -> Result<Self, WireError> {
        let mut b = Body::new(body, Self::WHAT);
        let msg = match k {
            kind::HELLO => {
                let agent_id = b.string()?;
                let b2 = b.take(2)?;
                let n = u16::from_be_bytes([b2[0], b2[1]]);
                let mut identifiers = Vec::new();
                for _ in 0..n {
                    identifiers.push((b.string()?, b.string()?));
                }
                let token = b.string()?;
                if agent_id.is_empty() {
                    return Err(WireError::Invalid { what: Self::WHAT, reason: "empty agent id" });
                }
                Control::Hello(Hello { agent_id, identifiers, token })
            }
            kind::WELCOME => Control::Welcome { server_id: b.string()?, server_count: b.u32()? },
            kind::DRAIN => Control::Drain,
            kind::REJECT => Control::Reject { reason: b.string()? },
            kind::TOKEN => {
                let token = b.string()?;
                if token.is_empty() {
                    return Err(WireError::Invalid { what: Self::WHAT, reason: "empty token" });
                }
                Control::Token(SecretToken(token))
            }
            other => return Err(WireError::UnexpectedKind { found: other, expected: Self::WHAT }),
        };
        b.finish()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests;
