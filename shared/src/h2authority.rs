//! Client→server HTTP/2 shim that makes grpc-go's Unix-socket `:authority`
//! acceptable to the `h2` server.
//!
//! For a Unix-socket target grpc-go sends the socket path as `:authority`,
//! percent-encoded (`%2Fetc%2F...`) by recent versions and raw (`/etc/...`) by
//! older ones. `h2` parses `:authority` with [`http::uri::Authority`], rejects
//! both and resets the stream with PROTOCOL_ERROR. [`AuthorityRewriter`] sits
//! on the byte stream from the client to the HTTP/2 server and rewrites every
//! header block whose `:authority` is not a valid `Authority` so that it reads
//! [`REPLACEMENT_AUTHORITY`]. Nothing here does I/O: the caller feeds chunks of
//! the client's bytes (split anywhere) and drains the rewritten bytes.
//!
//! How the stream is treated:
//! - the 24-byte connection preface is checked and passed through;
//! - frames other than HEADERS/CONTINUATION are passed through byte-identical
//!   and streamed: their payload is forwarded as it arrives, never buffered;
//! - every header block (HEADERS + CONTINUATION*) is reassembled, decoded with
//!   a [`Decoder`] that tracks the client's HPACK dynamic table, and re-encoded
//!   as "literal without indexing, new name" fields (RFC 7541 §6.2.2, no
//!   Huffman). The re-encoded blocks never touch the dynamic table, so the
//!   server's decoder keeps an empty one and stays consistent with us even
//!   though it never sees the client's original encoding. This is why *every*
//!   block is re-encoded, not only those we change.
//!
//! All errors are the client's (the apiserver's) protocol violations; the
//! caller closes the connection on any of them.

use bytes::{BufMut, BytesMut};

use crate::hpack::{DecodeError, Decoder};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The `:authority` value that replaces an invalid one.
pub const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

/// RFC 9113 default and minimum SETTINGS_MAX_FRAME_SIZE.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;
/// RFC 9113 maximum SETTINGS_MAX_FRAME_SIZE (2^24 - 1).
pub const MAX_MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
/// RFC 9113 default SETTINGS_HEADER_TABLE_SIZE.
pub const DEFAULT_HEADER_TABLE_SIZE: u32 = 4_096;

const FRAME_HEAD_LEN: usize = 9;
const PRIORITY_LEN: usize = 5;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_PUSH_PROMISE: u8 = 0x5;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Per-field overhead in the SETTINGS_MAX_HEADER_LIST_SIZE accounting.
const FIELD_OVERHEAD: usize = 32;

/// Bounds on what the client may send; they mirror the HTTP/2 server's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// SETTINGS_MAX_FRAME_SIZE the server advertises; larger client frames are
    /// an error, and re-encoded blocks are split into frames of at most this.
    pub max_frame_size: u32,
    /// SETTINGS_HEADER_TABLE_SIZE the server advertises. The client may size
    /// its HPACK dynamic table up to this (and up to the protocol default
    /// 4096, which it may use before it has seen the server's SETTINGS).
    pub header_table_size: u32,
    /// Largest compressed header block (all fragments of one block).
    pub max_header_block: usize,
    /// Largest decoded header list, counted as name + value + 32 per field
    /// (RFC 9113 §6.5.2). Bounds the output of a block that references large
    /// dynamic-table entries many times.
    pub max_header_list: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            header_table_size: DEFAULT_HEADER_TABLE_SIZE,
            max_header_block: 64 * 1024,
            max_header_list: 64 * 1024,
        }
    }
}

/// A protocol violation by the client; the connection must be closed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RewriteError {
    #[error("apiserver sent a bad HTTP/2 preface: byte {offset} is {got:#04x}")]
    BadPreface { offset: usize, got: u8 },
    #[error("apiserver sent a {len}-byte frame of type {frame_type:#x} on stream {stream_id}, above SETTINGS_MAX_FRAME_SIZE {max}")]
    FrameTooLarge { frame_type: u8, stream_id: u32, len: usize, max: u32 },
    #[error("apiserver sent a header block above {max} bytes on stream {stream_id}")]
    HeaderBlockTooLarge { stream_id: u32, max: usize },
    #[error("apiserver sent a header list above {max} bytes decoded on stream {stream_id}")]
    HeaderListTooLarge { stream_id: u32, max: usize },
    #[error("apiserver sent an undecodable HPACK block on stream {stream_id}: {source}")]
    Hpack { stream_id: u32, source: DecodeError },
    #[error("apiserver sent CONTINUATION on stream {stream_id} without a preceding HEADERS")]
    ContinuationWithoutHeaders { stream_id: u32 },
    #[error("apiserver interrupted the header block of stream {expected} with a frame of type {frame_type:#x} on stream {stream_id}")]
    InterruptedHeaderBlock { expected: u32, frame_type: u8, stream_id: u32 },
    #[error("apiserver sent HEADERS on stream {stream_id} whose padding ({pad_len} bytes) exceeds its payload")]
    BadPadding { stream_id: u32, pad_len: usize },
    #[error("apiserver sent HEADERS on stream {stream_id} with the PRIORITY flag but no room for priority fields")]
    TruncatedPriority { stream_id: u32 },
    #[error("apiserver sent PUSH_PROMISE on stream {stream_id}; clients must not push")]
    PushPromiseFromClient { stream_id: u32 },
}

/// Where the rewriter is in the client's byte stream.
#[derive(Debug)]
enum State {
    /// Matched this many bytes of the preface so far.
    Preface { matched: usize },
    /// Collecting a 9-byte frame header.
    Head { raw: [u8; FRAME_HEAD_LEN], filled: usize },
    /// Forwarding the payload of a frame without a header block.
    Forward { remaining: usize },
    /// Buffering the payload of a HEADERS or CONTINUATION frame.
    HeaderPayload { head: FrameHead, remaining: usize },
    /// A violation was found; every later call reports it again.
    Failed(RewriteError),
}

impl State {
    fn head() -> State {
        State::Head { raw: [0; FRAME_HEAD_LEN], filled: 0 }
    }
}

#[derive(Debug, Clone, Copy)]
struct FrameHead {
    len: usize,
    kind: u8,
    flags: u8,
    stream_id: u32,
}

impl FrameHead {
    fn parse(raw: &[u8; FRAME_HEAD_LEN]) -> FrameHead {
        FrameHead {
            len: u32::from_be_bytes([0, raw[0], raw[1], raw[2]]) as usize,
            kind: raw[3],
            flags: raw[4],
            stream_id: u32::from_be_bytes([raw[5], raw[6], raw[7], raw[8]]) & 0x7fff_ffff,
        }
    }
}

/// The HEADERS frame that opened the block being collected.
#[derive(Debug, Clone, Copy)]
struct OpenBlock {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
}

/// Rewrites invalid `:authority` values in the client→server HTTP/2 stream.
pub struct AuthorityRewriter {
    state: State,
    limits: Limits,
    decoder: Decoder,
    /// Set between a HEADERS frame and the frame carrying END_HEADERS.
    open: Option<OpenBlock>,
    /// Payload of the HEADERS/CONTINUATION frame being received.
    payload: Vec<u8>,
    /// Header block fragments collected so far.
    block: Vec<u8>,
    /// Scratch space for the re-encoded block.
    encoded: Vec<u8>,
    rewritten_blocks: u64,
}

impl Default for AuthorityRewriter {
    fn default() -> Self {
        AuthorityRewriter::new(Limits::default())
    }
}

impl AuthorityRewriter {
    /// A rewriter expecting the preface first.
    ///
    /// Panics if `limits.max_frame_size` is outside 16384..=2^24-1, like the
    /// `h2` builder given the same value.
    pub fn new(limits: Limits) -> AuthorityRewriter {
        assert!(
            (DEFAULT_MAX_FRAME_SIZE..=MAX_MAX_FRAME_SIZE).contains(&limits.max_frame_size),
            "max_frame_size {} outside the HTTP/2 range",
            limits.max_frame_size
        );
        let allowed = limits.header_table_size.max(DEFAULT_HEADER_TABLE_SIZE);
        let decoder = Decoder::new(allowed as usize);
        AuthorityRewriter {
            state: State::Preface { matched: 0 },
            limits,
            decoder,
            open: None,
            payload: Vec::new(),
            block: Vec::new(),
            encoded: Vec::new(),
            rewritten_blocks: 0,
        }
    }

    /// How many header blocks had their `:authority` replaced.
    pub fn rewritten_blocks(&self) -> u64 {
        self.rewritten_blocks
    }

    /// Consumes all of `input` and appends the bytes to forward to `out`.
    ///
    /// Bytes of an incomplete frame header or header block are held back
    /// until the rest arrives. After an error the rewriter stays failed.
    pub fn feed(&mut self, mut input: &[u8], out: &mut BytesMut) -> Result<(), RewriteError> {
        if let State::Failed(err) = &self.state {
            return Err(err.clone());
        }
        while !input.is_empty() {
            let state = std::mem::replace(&mut self.state, State::head());
            match self.step(state, &mut input, out) {
                Ok(next) => self.state = next,
                Err(err) => {
                    self.state = State::Failed(err.clone());
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// Consumes a prefix of `input` (at least one byte) in `state`.
    fn step(&mut self, state: State, input: &mut &[u8], out: &mut BytesMut) -> Result<State, RewriteError> {
        match state {
            State::Preface { matched } => {
                let taken = take(input, PREFACE.len() - matched);
                if let Some(i) = (0..taken.len()).find(|&i| taken[i] != PREFACE[matched + i]) {
                    return Err(RewriteError::BadPreface { offset: matched + i, got: taken[i] });
                }
                out.extend_from_slice(taken);
                let matched = matched + taken.len();
                Ok(if matched == PREFACE.len() { State::head() } else { State::Preface { matched } })
            }
            State::Head { mut raw, filled } => {
                let taken = take(input, FRAME_HEAD_LEN - filled);
                raw[filled..filled + taken.len()].copy_from_slice(taken);
                let filled = filled + taken.len();
                if filled < FRAME_HEAD_LEN {
                    return Ok(State::Head { raw, filled });
                }
                self.on_frame_head(&raw, out)
            }
            State::Forward { remaining } => {
                let taken = take(input, remaining);
                out.extend_from_slice(taken);
                Ok(match remaining - taken.len() {
                    0 => State::head(),
                    remaining => State::Forward { remaining },
                })
            }
            State::HeaderPayload { head, remaining } => {
                let taken = take(input, remaining);
                self.payload.extend_from_slice(taken);
                match remaining - taken.len() {
                    0 => {
                        self.on_header_payload(&head, out)?;
                        Ok(State::head())
                    }
                    remaining => Ok(State::HeaderPayload { head, remaining }),
                }
            }
            State::Failed(err) => Err(err),
        }
    }

    /// A complete frame header: check it and pick the state for its payload.
    fn on_frame_head(&mut self, raw: &[u8; FRAME_HEAD_LEN], out: &mut BytesMut) -> Result<State, RewriteError> {
        let head = FrameHead::parse(raw);
        if head.len > self.limits.max_frame_size as usize {
            return Err(RewriteError::FrameTooLarge {
                frame_type: head.kind,
                stream_id: head.stream_id,
                len: head.len,
                max: self.limits.max_frame_size,
            });
        }
        if let Some(open) = &self.open {
            if head.kind != TYPE_CONTINUATION || head.stream_id != open.stream_id {
                return Err(RewriteError::InterruptedHeaderBlock {
                    expected: open.stream_id,
                    frame_type: head.kind,
                    stream_id: head.stream_id,
                });
            }
        }
        match head.kind {
            TYPE_HEADERS | TYPE_CONTINUATION => {
                if head.kind == TYPE_CONTINUATION && self.open.is_none() {
                    return Err(RewriteError::ContinuationWithoutHeaders { stream_id: head.stream_id });
                }
                self.payload.clear();
                if head.len == 0 {
                    self.on_header_payload(&head, out)?;
                    return Ok(State::head());
                }
                Ok(State::HeaderPayload { head, remaining: head.len })
            }
            // Its header block would change the HPACK state behind our back.
            TYPE_PUSH_PROMISE => Err(RewriteError::PushPromiseFromClient { stream_id: head.stream_id }),
            _ => {
                out.extend_from_slice(raw);
                Ok(match head.len {
                    0 => State::head(),
                    remaining => State::Forward { remaining },
                })
            }
        }
    }

    /// The whole payload of a HEADERS/CONTINUATION frame is in `self.payload`.
    fn on_header_payload(&mut self, head: &FrameHead, out: &mut BytesMut) -> Result<(), RewriteError> {
        let fragment = if head.kind == TYPE_HEADERS {
            let (fragment, priority) = split_headers_payload(&self.payload, head)?;
            self.open =
                Some(OpenBlock { stream_id: head.stream_id, end_stream: head.flags & FLAG_END_STREAM != 0, priority });
            self.block.clear();
            fragment
        } else {
            &self.payload[..]
        };
        if self.block.len() + fragment.len() > self.limits.max_header_block {
            return Err(RewriteError::HeaderBlockTooLarge {
                stream_id: head.stream_id,
                max: self.limits.max_header_block,
            });
        }
        self.block.extend_from_slice(fragment);
        if head.flags & FLAG_END_HEADERS == 0 {
            return Ok(());
        }
        match self.open.take() {
            Some(open) => self.finish_block(&open, out),
            // on_frame_head only lets a CONTINUATION through with a block open.
            None => Err(RewriteError::ContinuationWithoutHeaders { stream_id: head.stream_id }),
        }
    }

    /// Decodes the complete block, re-encodes it and emits it as frames.
    fn finish_block(&mut self, open: &OpenBlock, out: &mut BytesMut) -> Result<(), RewriteError> {
        let max_list = self.limits.max_header_list;
        let encoded = &mut self.encoded;
        encoded.clear();
        let mut list_size = 0usize;
        let mut rewritten = false;
        self.decoder
            .decode(&self.block, |name, value| {
                list_size = list_size.saturating_add(name.len() + value.len() + FIELD_OVERHEAD);
                if list_size > max_list {
                    return; // reported below; stop growing `encoded`
                }
                let value = if name == b":authority" && !is_valid_authority(value) {
                    rewritten = true;
                    REPLACEMENT_AUTHORITY
                } else {
                    value
                };
                put_literal_field(encoded, name, value);
            })
            .map_err(|source| RewriteError::Hpack { stream_id: open.stream_id, source })?;
        if list_size > max_list {
            return Err(RewriteError::HeaderListTooLarge { stream_id: open.stream_id, max: max_list });
        }
        if rewritten {
            self.rewritten_blocks += 1;
        }
        put_header_frames(out, open, &self.encoded, self.limits.max_frame_size as usize);
        Ok(())
    }
}

/// Takes up to `max` bytes off the front of `input`.
fn take<'a>(input: &mut &'a [u8], max: usize) -> &'a [u8] {
    let (taken, rest) = input.split_at(max.min(input.len()));
    *input = rest;
    taken
}

/// Whether the `h2` server accepts `value` as `:authority`.
pub fn is_valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// Strips padding and priority fields from a HEADERS payload.
fn split_headers_payload<'a>(
    payload: &'a [u8],
    head: &FrameHead,
) -> Result<(&'a [u8], Option<[u8; PRIORITY_LEN]>), RewriteError> {
    let mut body = payload;
    let mut pad_len = 0;
    if head.flags & FLAG_PADDED != 0 {
        let (&pad, rest) =
            body.split_first().ok_or(RewriteError::BadPadding { stream_id: head.stream_id, pad_len: 0 })?;
        pad_len = pad as usize;
        body = rest;
    }
    let mut priority = None;
    if head.flags & FLAG_PRIORITY != 0 {
        if body.len() < PRIORITY_LEN {
            return Err(RewriteError::TruncatedPriority { stream_id: head.stream_id });
        }
        let mut fields = [0; PRIORITY_LEN];
        fields.copy_from_slice(&body[..PRIORITY_LEN]);
        priority = Some(fields);
        body = &body[PRIORITY_LEN..];
    }
    if pad_len > body.len() {
        return Err(RewriteError::BadPadding { stream_id: head.stream_id, pad_len });
    }
    Ok((&body[..body.len() - pad_len], priority))
}

/// Appends an HPACK integer with an N-bit prefix (RFC 7541 §5.1).
fn put_hpack_int(out: &mut Vec<u8>, first_bits: u8, prefix_bits: u32, value: usize) {
    let limit = (1usize << prefix_bits) - 1;
    if value < limit {
        out.push(first_bits | value as u8);
        return;
    }
    out.push(first_bits | limit as u8);
    let mut rest = value - limit;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// Appends a "literal header field without indexing — new name" (RFC 7541
/// §6.2.2) with both strings as plain octets (no Huffman).
fn put_literal_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    for string in [name, value] {
        put_hpack_int(out, 0x00, 7, string.len());
        out.extend_from_slice(string);
    }
}

fn put_frame_head(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream_id: u32) {
    out.put_uint(len as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream_id);
}

/// Emits `block` as one HEADERS frame and as many CONTINUATION frames as
/// `max_frame_size` requires.
fn put_header_frames(out: &mut BytesMut, open: &OpenBlock, block: &[u8], max_frame_size: usize) {
    let mut flags = if open.end_stream { FLAG_END_STREAM } else { 0 };
    let first_room = match open.priority {
        Some(_) => {
            flags |= FLAG_PRIORITY;
            max_frame_size - PRIORITY_LEN
        }
        None => max_frame_size,
    };
    let (first, mut rest) = block.split_at(first_room.min(block.len()));
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    let prio_len = open.priority.map_or(0, |_| PRIORITY_LEN);
    put_frame_head(out, prio_len + first.len(), TYPE_HEADERS, flags, open.stream_id);
    if let Some(fields) = &open.priority {
        out.extend_from_slice(fields);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(max_frame_size.min(rest.len()));
        rest = tail;
        let flags = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
        put_frame_head(out, chunk.len(), TYPE_CONTINUATION, flags, open.stream_id);
        out.extend_from_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loona_hpack::Encoder;

    /// An independent decoder for checking the output.
    fn reference_decoder() -> loona_hpack::Decoder<'static> {
        loona_hpack::Decoder::new()
    }

    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    const PERCENT_PATH: &str = "%2Fetc%2Fkubernetes%2Fkonnectivity-server%2Fkonnectivity-server.socket";
    const RAW_PATH: &str = "/etc/kubernetes/konnectivity-server/konnectivity-server.socket";
    const SETTINGS: [u8; 9] = [0, 0, 0, 0x4, 0, 0, 0, 0, 0];

    fn fields(list: &[(&str, &str)]) -> Fields {
        list.iter().map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
    }

    fn request(authority: &str) -> Fields {
        fields(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/ProxyService/Proxy"),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ])
    }

    fn encode(encoder: &mut Encoder<'static>, list: &Fields) -> Vec<u8> {
        encoder.encode(list.iter().map(|(n, v)| (&n[..], &v[..])))
    }

    fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_frame_head(&mut out, payload.len(), kind, flags, stream_id);
        out.extend_from_slice(payload);
        out.to_vec()
    }

    fn connection(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&SETTINGS);
        frames.iter().for_each(|f| input.extend_from_slice(f));
        input
    }

    fn run(rewriter: &mut AuthorityRewriter, input: &[u8]) -> Result<Vec<u8>, RewriteError> {
        let mut out = BytesMut::new();
        rewriter.feed(input, &mut out)?;
        Ok(out.to_vec())
    }

    fn rewrite(input: &[u8]) -> Vec<u8> {
        run(&mut AuthorityRewriter::default(), input).expect("valid input")
    }

    fn rewrite_err(limits: Limits, input: &[u8]) -> RewriteError {
        run(&mut AuthorityRewriter::new(limits), input).expect_err("invalid input")
    }

    #[derive(Debug, PartialEq)]
    struct Frame {
        kind: u8,
        flags: u8,
        stream_id: u32,
        payload: Vec<u8>,
    }

    /// Splits rewriter output (after preface and SETTINGS) into frames.
    fn frames(out: &[u8]) -> Vec<Frame> {
        assert_eq!(&out[..24], PREFACE);
        assert_eq!(&out[24..33], SETTINGS);
        let mut rest = &out[33..];
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let mut raw = [0; 9];
            raw.copy_from_slice(&rest[..9]);
            let head = FrameHead::parse(&raw);
            frames.push(Frame {
                kind: head.kind,
                flags: head.flags,
                stream_id: head.stream_id,
                payload: rest[9..9 + head.len].to_vec(),
            });
            rest = &rest[9 + head.len..];
        }
        frames
    }

    /// Decodes each header block of the output with a FRESH decoder, which
    /// only works if the re-encoding never relies on the dynamic table.
    fn blocks(out: &[u8]) -> Vec<(u32, u8, Fields)> {
        let mut result = Vec::new();
        let mut current: Option<(u32, u8, Vec<u8>)> = None;
        for f in frames(out) {
            let fragment = match f.kind {
                TYPE_HEADERS => {
                    assert!(current.is_none());
                    assert_eq!(f.flags & (FLAG_PADDED), 0);
                    let skip = if f.flags & FLAG_PRIORITY != 0 { 5 } else { 0 };
                    current = Some((f.stream_id, f.flags, Vec::new()));
                    f.payload[skip..].to_vec()
                }
                TYPE_CONTINUATION => f.payload.clone(),
                _ => continue,
            };
            let (stream_id, flags, mut block) = current.take().expect("open block");
            block.extend_from_slice(&fragment);
            if f.flags & FLAG_END_HEADERS == 0 {
                current = Some((stream_id, flags, block));
                continue;
            }
            assert_no_huffman_no_indexing(&block);
            let list = reference_decoder().decode(&block).expect("output decodes");
            result.push((stream_id, flags, list));
        }
        assert!(current.is_none(), "output ends inside a header block");
        result
    }

    /// Every field must be 0x00, plain name string, plain value string.
    fn assert_no_huffman_no_indexing(mut block: &[u8]) {
        fn read_int(buf: &mut &[u8], prefix: u32) -> usize {
            let limit = (1usize << prefix) - 1;
            let mut value = (buf[0] as usize) & limit;
            *buf = &buf[1..];
            if value == limit {
                let mut shift = 0;
                loop {
                    let b = buf[0];
                    *buf = &buf[1..];
                    value += ((b & 0x7f) as usize) << shift;
                    shift += 7;
                    if b & 0x80 == 0 {
                        break;
                    }
                }
            }
            value
        }
        while !block.is_empty() {
            assert_eq!(block[0], 0x00, "representation is not literal/new name");
            block = &block[1..];
            for _ in 0..2 {
                assert_eq!(block[0] & 0x80, 0, "Huffman-coded string");
                let len = read_int(&mut block, 7);
                block = &block[len..];
            }
        }
    }

    #[test]
    fn preface_passes_through() {
        let mut rewriter = AuthorityRewriter::default();
        let mut out = BytesMut::new();
        for chunk in PREFACE.chunks(5) {
            rewriter.feed(chunk, &mut out).unwrap();
        }
        assert_eq!(&out[..], PREFACE);
        let out = rewrite(&connection(&[]));
        assert_eq!(out, connection(&[]));
    }

    #[test]
    fn garbage_preface_is_rejected_and_stays_failed() {
        let mut rewriter = AuthorityRewriter::default();
        let err = run(&mut rewriter, b"GET / HTTP/1.1\r\n").unwrap_err();
        assert_eq!(err, RewriteError::BadPreface { offset: 0, got: b'G' });
        assert_eq!(run(&mut rewriter, PREFACE).unwrap_err(), err);

        let mut rewriter = AuthorityRewriter::default();
        let mut out = BytesMut::new();
        rewriter.feed(b"PRI * HTTP/2", &mut out).unwrap();
        let err = rewriter.feed(b".1", &mut out).unwrap_err();
        assert_eq!(err, RewriteError::BadPreface { offset: 13, got: b'1' });
    }

    fn assert_rewritten(authority: &str) {
        let block = encode(&mut Encoder::new(), &request(authority));
        let flags = FLAG_END_HEADERS | FLAG_END_STREAM;
        let input = connection(&[frame(TYPE_HEADERS, flags, 1, &block)]);
        let mut rewriter = AuthorityRewriter::default();
        let out = run(&mut rewriter, &input).unwrap();
        assert_eq!(blocks(&out), vec![(1, flags, request("localhost"))]);
        assert_eq!(rewriter.rewritten_blocks(), 1);
    }

    #[test]
    fn percent_encoded_authority_is_rewritten() {
        assert_rewritten(PERCENT_PATH);
    }

    #[test]
    fn raw_path_authority_is_rewritten() {
        assert_rewritten(RAW_PATH);
    }

    #[test]
    fn empty_authority_is_rewritten() {
        assert_rewritten("");
    }

    #[test]
    fn valid_authority_is_kept() {
        let mut encoder = Encoder::new();
        let mut rewriter = AuthorityRewriter::default();
        let authorities = ["localhost", "konnectivity.example:8090", "[::1]:443"];
        let input = connection(
            &authorities
                .iter()
                .zip([1, 3, 5])
                .map(|(a, id)| frame(TYPE_HEADERS, FLAG_END_HEADERS, id, &encode(&mut encoder, &request(a))))
                .collect::<Vec<_>>(),
        );
        let out = run(&mut rewriter, &input).unwrap();
        let expected: Vec<_> =
            authorities.iter().zip([1, 3, 5]).map(|(a, id)| (id, FLAG_END_HEADERS, request(a))).collect();
        assert_eq!(blocks(&out), expected);
        assert_eq!(rewriter.rewritten_blocks(), 0);
    }

    /// RFC 7541 C.4: three requests with Huffman strings and dynamic table use.
    #[test]
    fn huffman_and_dynamic_table_input_is_reencoded_plain() {
        let c41 = hex("828684418cf1e3c2e5f23a6ba0ab90f4ff");
        let c42 = hex("828684be5886a8eb10649cbf");
        let c43 = hex("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf");
        let e = FLAG_END_HEADERS;
        let input = connection(&[
            frame(TYPE_HEADERS, e, 1, &c41),
            frame(TYPE_HEADERS, e, 3, &c42),
            frame(TYPE_HEADERS, e, 5, &c43),
        ]);
        let out = rewrite(&input);
        let base = [(":method", "GET"), (":scheme", "http"), (":path", "/")];
        let authority = (":authority", "www.example.com");
        let expected = vec![
            (1, e, fields(&[base[0], base[1], base[2], authority])),
            (3, e, fields(&[base[0], base[1], base[2], authority, ("cache-control", "no-cache")])),
            (
                5,
                e,
                fields(&[
                    base[0],
                    (":scheme", "https"),
                    (":path", "/index.html"),
                    authority,
                    ("custom-key", "custom-value"),
                ]),
            ),
        ];
        assert_eq!(blocks(&out), expected);
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// Block 1 adds the invalid authority to the dynamic table
    /// (literal with incremental indexing, name index 1); block 2 refers to
    /// it by index 62; block 3 first shrinks the table to 0, evicting it.
    fn dynamic_table_blocks() -> [Vec<u8>; 3] {
        let authority = b"%2Ftmp%2Fk.sock";
        let mut block1 = vec![0x83, 0x86, 0x84, 0x41, authority.len() as u8];
        block1.extend_from_slice(authority);
        // Size update to 4096 (keeps the entry), then :method POST,
        // :scheme http, :path /, :authority by dynamic index 62.
        let block2 = vec![0x3f, 0xe1, 0x1f, 0x83, 0x86, 0x84, 0xbe];
        let block3 = vec![0x20, 0x83, 0x86, 0x84, 0xbe];
        [block1, block2, block3]
    }

    #[test]
    fn dynamic_table_reference_to_invalid_authority_is_rewritten() {
        let [b1, b2, _] = dynamic_table_blocks();
        let e = FLAG_END_HEADERS;
        let input = connection(&[frame(TYPE_HEADERS, e, 1, &b1), frame(TYPE_HEADERS, e, 3, &b2)]);
        let mut rewriter = AuthorityRewriter::default();
        let out = run(&mut rewriter, &input).unwrap();
        let list = fields(&[(":method", "POST"), (":scheme", "http"), (":path", "/"), (":authority", "localhost")]);
        assert_eq!(blocks(&out), vec![(1, e, list.clone()), (3, e, list)]);
        assert_eq!(rewriter.rewritten_blocks(), 2);
    }

    #[test]
    fn evicted_dynamic_entry_is_an_hpack_error() {
        let [b1, _, b3] = dynamic_table_blocks();
        let e = FLAG_END_HEADERS;
        let input = connection(&[frame(TYPE_HEADERS, e, 1, &b1), frame(TYPE_HEADERS, e, 3, &b3)]);
        let err = rewrite_err(Limits::default(), &input);
        assert!(
            matches!(
                err,
                RewriteError::Hpack { stream_id: 3, source: DecodeError::IndexOutOfBounds { index: 62, .. } }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn table_size_update_above_setting_is_an_hpack_error() {
        // Size update to 8192: 0x3f, 8192 - 31 = 8161 = 0x61 | 0x80, 0x3f.
        let block = vec![0x3f, 0xe1, 0x3f, 0x82];
        let input = connection(&[frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block)]);
        let err = rewrite_err(Limits::default(), &input);
        let too_large = DecodeError::TableSizeTooLarge { size: 8192, max: 4096 };
        assert_eq!(err, RewriteError::Hpack { stream_id: 1, source: too_large });
        let limits = Limits { header_table_size: 8192, ..Limits::default() };
        run(&mut AuthorityRewriter::new(limits), &input).unwrap();
    }

    #[test]
    fn bad_huffman_string_is_an_hpack_error() {
        // :authority (name index 1) with a Huffman value of one 0xff byte:
        // eight bits of padding.
        let input = connection(&[frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0x82, 0x41, 0x81, 0xff])]);
        let source = DecodeError::Huffman(crate::hpack::HuffmanError::PaddingTooLong);
        assert_eq!(rewrite_err(Limits::default(), &input), RewriteError::Hpack { stream_id: 1, source });
    }

    /// A connection exercising every code path, for split-feeding tests.
    fn mixed_connection() -> Vec<u8> {
        let mut encoder = Encoder::new();
        let block = encode(&mut encoder, &request(PERCENT_PATH));
        let mut padded = vec![3, 0x80, 0, 0, 1, 200];
        padded.extend_from_slice(&block[..10]);
        padded.extend_from_slice(&[0, 0, 0]);
        let [b1, b2, _] = dynamic_table_blocks();
        connection(&[
            frame(0x8, 0, 0, &[0, 0, 0x10, 0]), // WINDOW_UPDATE
            frame(TYPE_HEADERS, FLAG_PADDED | FLAG_PRIORITY, 1, &padded),
            frame(TYPE_CONTINUATION, 0, 1, &block[10..20]),
            frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &block[20..]),
            frame(0x0, 0, 1, &[7u8; 300]), // DATA
            frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &b1),
            frame(0x0, 0x1, 3, &[]),
            frame(TYPE_HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 5, &b2),
            frame(0x6, 0, 0, &[1, 2, 3, 4, 5, 6, 7, 8]), // PING
        ])
    }

    #[test]
    fn split_at_every_offset_gives_identical_output() {
        let input = mixed_connection();
        let whole = rewrite(&input);
        assert_eq!(blocks(&whole).len(), 3);
        for split in 0..=input.len() {
            let mut rewriter = AuthorityRewriter::default();
            let mut out = BytesMut::new();
            rewriter.feed(&input[..split], &mut out).unwrap();
            rewriter.feed(&input[split..], &mut out).unwrap();
            assert_eq!(&out[..], &whole[..], "split at {split}");
            assert_eq!(rewriter.rewritten_blocks(), 3);
        }
    }

    #[test]
    fn byte_at_a_time_gives_identical_output() {
        let input = mixed_connection();
        let mut rewriter = AuthorityRewriter::default();
        let mut out = BytesMut::new();
        for byte in &input {
            rewriter.feed(std::slice::from_ref(byte), &mut out).unwrap();
        }
        assert_eq!(&out[..], &rewrite(&input)[..]);
    }

    #[test]
    fn continuation_frames_are_reassembled() {
        let block = encode(&mut Encoder::new(), &request(RAW_PATH));
        let input = connection(&[
            frame(TYPE_HEADERS, FLAG_END_STREAM, 1, &block[..5]),
            frame(TYPE_CONTINUATION, 0, 1, &block[5..12]),
            frame(TYPE_CONTINUATION, 0, 1, &[]),
            frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &block[12..]),
        ]);
        let out = rewrite(&input);
        let frames = frames(&out);
        assert_eq!(frames.len(), 1, "one HEADERS frame out");
        assert_eq!(frames[0].flags, FLAG_END_STREAM | FLAG_END_HEADERS);
        assert_eq!(blocks(&out)[0].2, request("localhost"));
    }

    #[test]
    fn padding_is_dropped_and_priority_kept() {
        let block = encode(&mut Encoder::new(), &request(PERCENT_PATH));
        let priority = [0x80, 0, 0, 3, 15];
        let mut payload = vec![7];
        payload.extend_from_slice(&priority);
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&[0; 7]);
        let all = FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM | FLAG_END_HEADERS;
        let mut padded_only = vec![2];
        padded_only.extend_from_slice(&block);
        padded_only.extend_from_slice(&[0; 2]);
        let input = connection(&[
            frame(TYPE_HEADERS, all, 1, &payload),
            frame(TYPE_HEADERS, FLAG_PADDED | FLAG_END_HEADERS, 3, &padded_only),
        ]);
        let out = rewrite(&input);
        let frames = frames(&out);
        assert_eq!(frames[0].flags, FLAG_PRIORITY | FLAG_END_STREAM | FLAG_END_HEADERS);
        assert_eq!(frames[0].payload[..5], priority);
        assert_eq!(frames[1].flags, FLAG_END_HEADERS);
        let lists: Vec<_> = blocks(&out).into_iter().map(|b| b.2).collect();
        assert_eq!(lists, vec![request("localhost"), request("localhost")]);
    }

    #[test]
    fn data_frames_stream_through_unchanged() {
        let payload: Vec<u8> = (0..16_384u32).map(|i| i as u8).collect();
        let data = frame(0x0, 0x1, 1, &payload);
        let input = connection(&[data.clone(), frame(0x3, 0, 1, &[0, 0, 0, 8])]);
        let mut rewriter = AuthorityRewriter::default();
        let mut out = BytesMut::new();
        let start = 33 + 9 + 100;
        rewriter.feed(&input[..start], &mut out).unwrap();
        assert_eq!(&out[..], &input[..start], "partial DATA is forwarded at once");
        rewriter.feed(&input[start..], &mut out).unwrap();
        assert_eq!(&out[..], &input[..]);
    }

    #[test]
    fn oversize_frame_is_rejected_before_its_payload() {
        let mut head = BytesMut::new();
        put_frame_head(&mut head, 16_385, 0x0, 0, 1);
        let input = connection(&[head.to_vec()]);
        let err = rewrite_err(Limits::default(), &input);
        let expected = RewriteError::FrameTooLarge { frame_type: 0, stream_id: 1, len: 16_385, max: 16_384 };
        assert_eq!(err, expected);
        let limits = Limits { max_frame_size: 1 << 20, ..Limits::default() };
        run(&mut AuthorityRewriter::new(limits), &input).unwrap();
    }

    #[test]
    fn large_block_is_split_into_continuations() {
        let big = "x".repeat(20_000);
        let list = fields(&[(":method", "GET"), (":authority", RAW_PATH), ("big", &big)]);
        let block = encode(&mut Encoder::new(), &list);
        let priority = [0, 0, 0, 0, 16];
        let mut first = priority.to_vec();
        first.extend_from_slice(&block[..16_000]);
        let input = connection(&[
            frame(TYPE_HEADERS, FLAG_PRIORITY, 1, &first),
            frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &block[16_000..]),
        ]);
        let out = rewrite(&input);
        let frames = frames(&out);
        assert_eq!(frames.len(), 2);
        assert_eq!((frames[0].kind, frames[0].flags, frames[0].payload.len()), (TYPE_HEADERS, FLAG_PRIORITY, 16_384));
        assert_eq!((frames[1].kind, frames[1].flags), (TYPE_CONTINUATION, FLAG_END_HEADERS));
        let expected = fields(&[(":method", "GET"), (":authority", "localhost"), ("big", &big)]);
        assert_eq!(blocks(&out)[0].2, expected);
    }

    #[test]
    fn header_block_and_list_limits_are_enforced() {
        let block = encode(&mut Encoder::new(), &request(&"a".repeat(150)));
        let input = connection(&[
            frame(TYPE_HEADERS, 0, 1, &block[..100]),
            frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &block[100..]),
        ]);
        let limits = Limits { max_header_block: 120, ..Limits::default() };
        assert_eq!(rewrite_err(limits, &input), RewriteError::HeaderBlockTooLarge { stream_id: 1, max: 120 });

        // 4000-byte entry indexed once, then referenced 20 times: 80 KB decoded.
        let mut block = vec![0x40, 1, b'k'];
        put_hpack_int(&mut block, 0, 7, 4000);
        block.extend_from_slice(&[b'v'; 4000]);
        block.extend_from_slice(&[0xbe; 20]);
        let input = connection(&[frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block)]);
        let err = rewrite_err(Limits::default(), &input);
        assert_eq!(err, RewriteError::HeaderListTooLarge { stream_id: 1, max: 65_536 });
    }

    #[test]
    fn header_block_sequence_violations_are_rejected() {
        let block = encode(&mut Encoder::new(), &request("localhost"));
        let d = Limits::default();
        let cont = connection(&[frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &block)]);
        assert_eq!(rewrite_err(d, &cont), RewriteError::ContinuationWithoutHeaders { stream_id: 1 });

        let interrupted = connection(&[frame(TYPE_HEADERS, 0, 1, &block), frame(0x0, 0, 1, b"x")]);
        let expected = RewriteError::InterruptedHeaderBlock { expected: 1, frame_type: 0, stream_id: 1 };
        assert_eq!(rewrite_err(d, &interrupted), expected);

        let other_stream = connection(&[frame(TYPE_HEADERS, 0, 1, &block), frame(TYPE_CONTINUATION, 4, 3, &[])]);
        let expected = RewriteError::InterruptedHeaderBlock { expected: 1, frame_type: 9, stream_id: 3 };
        assert_eq!(rewrite_err(d, &other_stream), expected);

        let push = connection(&[frame(TYPE_PUSH_PROMISE, FLAG_END_HEADERS, 1, &[0, 0, 0, 2])]);
        assert_eq!(rewrite_err(d, &push), RewriteError::PushPromiseFromClient { stream_id: 1 });
    }

    #[test]
    fn malformed_headers_frames_are_rejected() {
        let d = Limits::default();
        let e = FLAG_END_HEADERS;
        let too_much_padding = connection(&[frame(TYPE_HEADERS, e | FLAG_PADDED, 1, &[5, 0x82, 0])]);
        assert_eq!(rewrite_err(d, &too_much_padding), RewriteError::BadPadding { stream_id: 1, pad_len: 5 });
        let no_pad_length = connection(&[frame(TYPE_HEADERS, e | FLAG_PADDED, 1, &[])]);
        assert_eq!(rewrite_err(d, &no_pad_length), RewriteError::BadPadding { stream_id: 1, pad_len: 0 });
        let short_priority = connection(&[frame(TYPE_HEADERS, e | FLAG_PRIORITY, 1, &[0, 0, 0])]);
        assert_eq!(rewrite_err(d, &short_priority), RewriteError::TruncatedPriority { stream_id: 1 });
    }

    #[test]
    fn hpack_integers_round_trip() {
        for value in [0, 1, 126, 127, 128, 255, 4000, 1 << 20] {
            let mut out = Vec::new();
            put_literal_field(&mut out, b"n", &vec![b'v'; value]);
            let list = reference_decoder().decode(&out).unwrap();
            assert_eq!(list, vec![(b"n".to_vec(), vec![b'v'; value])]);
        }
    }
}
