//! The HTTP/2 connection ([`crate::h2`]) driven as the server's driver
//! drives it, from fuzzer input read as (a) arbitrary bytes after the
//! client preface, or (b) a script of well-formed frames and driver steps,
//! so that deep states (open streams, partial messages, held-back
//! responses, budgets, keep-alive) are reached.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::Chunks;
use crate::h2::{self, Config, Connection, Event, Flags, FrameHead, FrameType, GrpcStatus, HEAD_LEN, PREFACE};

/// Fuzz body: the first byte picks the input's reading and seeds the
/// chunk sizes the bytes are fed in.
pub fn h2(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else { return };
    let mut harness = Harness::new(first);
    if first & 1 == 0 {
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(rest);
        harness.feed(&input);
    } else {
        harness.feed(PREFACE);
        harness.feed(&frame(FrameType::Settings, Flags::NONE, 0, &[]));
        let mut script = Script(rest);
        while let Some(step) = script.step() {
            match step {
                Step::Bytes(bytes) => harness.feed(&bytes),
                Step::Driver(op, arg) => harness.driver(op, arg),
            }
            if harness.failed {
                break;
            }
        }
    }
    harness.driver(2, 0);
}

/// A frame as a client sends it.
pub fn frame(kind: FrameType, flags: Flags, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    FrameHead { len: payload.len(), kind, flags, stream_id }.encode(&mut buf);
    buf.extend_from_slice(payload);
    buf.to_vec()
}

/// A request's header block: literal fields without indexing.
pub fn request_block(method: &str, path: &str, content_type: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in
        [(":method", method), (":scheme", "http"), (":path", path), (":authority", "x"), ("content-type", content_type)]
    {
        crate::h2::fields_literal(&mut block, name.as_bytes(), value.as_bytes());
    }
    block
}

/// A gRPC message holding a DATA packet of `len` bytes.
pub fn message(connect_id: i64, len: usize) -> Vec<u8> {
    use prost::Message;
    let body = crate::konnectivity::data(connect_id, Bytes::from(vec![0x5a; len])).encode_to_vec();
    let mut m = vec![0];
    m.extend_from_slice(&(body.len() as u32).to_be_bytes());
    m.extend_from_slice(&body);
    m
}

/// Takes everything the connection has to write, as a driver's vectored
/// writes take it (a few buffers at a time).
pub fn transmitted(conn: &mut crate::h2::Connection) -> Vec<u8> {
    let mut out = Vec::new();
    while conn.transmit_len() > 0 {
        let mut slots = [std::io::IoSlice::new(&[]); 3];
        let k = conn.transmit_slices(&mut slots);
        let n: usize = slots[..k].iter().map(|s| s.len()).sum();
        assert!(n > 0, "transmit_len {} but no buffer", conn.transmit_len());
        slots[..k].iter().for_each(|s| out.extend_from_slice(s));
        conn.advance_transmit(n);
    }
    assert!(conn.transmit().is_empty(), "nothing left once drained");
    out
}

/// Splits what the connection wrote into frames; panics unless it is a
/// whole number of well-formed frames within our peer's frame size.
pub fn parse_frames(mut out: &[u8]) -> Vec<(FrameHead, Vec<u8>)> {
    let mut frames = Vec::new();
    while !out.is_empty() {
        let head = FrameHead::parse(out).expect("a whole frame header");
        assert!(head.len < (1 << 24) && out.len() >= HEAD_LEN + head.len, "a whole frame: {head:?}");
        assert!(!matches!(head.kind, FrameType::Unknown(_) | FrameType::PushPromise), "we send {head:?}");
        if head.kind == FrameType::Data {
            assert!(head.stream_id % 2 == 1, "DATA {head:?}");
        }
        frames.push((head, out[HEAD_LEN..HEAD_LEN + head.len].to_vec()));
        out = &out[HEAD_LEN + head.len..];
    }
    frames
}

struct Harness {
    conn: Connection,
    now: Instant,
    chunks: Chunks,
    buf: BytesMut,
    /// Streams open with a session, and credit their messages hold.
    open: Vec<(u32, u32)>,
    wanting: Vec<u32>,
    failed: bool,
}

impl Harness {
    fn new(seed: u8) -> Harness {
        let now = Instant::now();
        let config = Config { max_message_bytes: 1 << 20, keepalive_time: Duration::from_secs(30) };
        let conn = Connection::new(config, now);
        Harness {
            conn,
            now,
            chunks: Chunks::new(seed),
            buf: BytesMut::new(),
            open: Vec::new(),
            wanting: Vec::new(),
            failed: false,
        }
    }

    /// Feeds `bytes` in fuzzer-sized pieces, as reads would deliver them.
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.failed {
            let n = self.chunks.next_len().min(bytes.len());
            self.buf.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if let Err(e) = self.conn.recv(self.now, &mut self.buf) {
                drop(e.to_string());
                self.failed = true;
            }
            self.settle();
        }
    }

    /// What the driver does between reads.
    fn driver(&mut self, op: u8, arg: u8) {
        match op % 6 {
            0 => {
                self.now += Duration::from_secs(u64::from(arg % 64));
                let due = self.conn.poll_timeout();
                if due.is_some_and(|due| due <= self.now) && self.conn.handle_timeout(self.now).is_err() {
                    self.failed = true;
                }
            }
            1 => {
                for (id, credit) in &mut self.open {
                    self.conn.release(*id, std::mem::take(credit));
                }
            }
            2 => self.drain(),
            3 => {
                if let Some(&(id, _)) = self.open.get(usize::from(arg) % self.open.len().max(1)) {
                    if arg & 0x80 == 0 {
                        self.conn.send_data(id, i64::from(arg), vec![Bytes::from(vec![1; usize::from(arg) * 300])]);
                    } else {
                        self.conn.finish(id, &GrpcStatus::new(i32::from(arg % 17), "done \u{e9}%"));
                    }
                }
            }
            4 => {
                for id in std::mem::take(&mut self.wanting) {
                    if self.conn.budget_wanted(id).is_some() && arg & 1 == 0 {
                        self.conn.grant_budget(id);
                    } else if self.conn.budget_wanted(id).is_some() {
                        self.wanting.push(id);
                    }
                }
            }
            _ => self.conn.go_away(self.now),
        }
        self.settle();
    }

    /// Takes the events as the driver does and checks what the connection
    /// holds and wrote.
    fn settle(&mut self) {
        while let Some(event) = self.conn.poll_event() {
            match event {
                Event::Open { stream } => self.open.push((stream, 0)),
                Event::Packet { stream, credit, .. } | Event::Failed { stream, credit, .. } => {
                    match self.open.iter_mut().find(|(id, _)| *id == stream) {
                        Some((_, held)) => *held += credit,
                        None => panic!("a message for stream {stream}, which is not open"),
                    }
                }
                Event::Closed { stream } => self.open.retain(|(id, _)| *id != stream),
                Event::WantBudget { stream, size } => {
                    assert!(size > h2::EARLY_CREDIT_ABOVE);
                    self.wanting.push(stream);
                }
                Event::Cancel { reason, .. } | Event::Refused { reason, .. } | Event::Reset { reason, .. } => {
                    assert!(!reason.is_empty());
                }
                Event::End { .. } | Event::Writable { .. } | Event::PeerGoAway => {}
            }
        }
        self.conn.assert_invariants();
        self.drain();
    }

    fn drain(&mut self) {
        let max = self.conn.peer_max_frame();
        for (head, _) in parse_frames(&transmitted(&mut self.conn)) {
            assert!(head.kind != FrameType::Data || head.len <= max, "DATA over the client's {max}: {head:?}");
        }
    }
}

/// Fuzzer input read as frames and driver steps.
struct Script<'a>(&'a [u8]);

enum Step {
    Bytes(Vec<u8>),
    Driver(u8, u8),
}

impl Script<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let (taken, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        taken
    }

    fn step(&mut self) -> Option<Step> {
        let op = self.byte()?;
        let (a, b) = (self.byte().unwrap_or(0), self.byte().unwrap_or(0));
        let id = if a & 0x80 == 0 { 1 + 2 * u32::from(a % 16) } else { u32::from(a & 0x7f) };
        let end = if b & 1 == 1 { Flags::END_STREAM } else { Flags::NONE };
        let bytes = match op % 16 {
            0 => frame(
                FrameType::Headers,
                Flags::END_HEADERS | end,
                id,
                &request_block("POST", "/ProxyService/Proxy", "application/grpc"),
            ),
            1 => frame(
                FrameType::Headers,
                Flags::END_HEADERS | end,
                id,
                &request_block(if b & 2 == 0 { "GET" } else { "POST" }, "/x", "text/plain"),
            ),
            2 => frame(FrameType::Data, end, id, &message(i64::from(b), usize::from(b) * 8)),
            3 => {
                // A message too large for the window: its prefix and a first part.
                let mut m = vec![0, 0, 4, 0, 0];
                m.extend_from_slice(&vec![0; usize::from(b) * 64]);
                frame(FrameType::Data, Flags::NONE, id, &m)
            }
            4 => frame(
                FrameType::WindowUpdate,
                Flags::NONE,
                if b & 1 == 0 { 0 } else { id },
                &(u32::from(b) << 12).to_be_bytes(),
            ),
            5 => {
                let value = u32::from_be_bytes([0, b, 0, 0]);
                frame(
                    FrameType::Settings,
                    Flags::NONE,
                    0,
                    &[
                        0,
                        a % 8,
                        value.to_be_bytes()[0],
                        value.to_be_bytes()[1],
                        value.to_be_bytes()[2],
                        value.to_be_bytes()[3],
                    ],
                )
            }
            6 => frame(FrameType::Ping, Flags(b & 1), 0, b"konnq-ka"),
            7 => frame(FrameType::RstStream, Flags::NONE, id, &u32::from(b).to_be_bytes()),
            8..=13 => return Some(Step::Driver(op % 16 - 8, b)),
            _ => {
                let len = usize::from(self.byte().unwrap_or(0));
                let payload = self.take(len).to_vec();
                frame(FrameType::from(b % 12), Flags(a), u32::from(b >> 4), &payload)
            }
        };
        Some(Step::Bytes(bytes))
    }
}
