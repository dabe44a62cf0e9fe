//! The connection: its state, and what a driver calls — bytes and time in,
//! events and bytes out, and the streams' outbound operations.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};

use super::event::{ConnectionError, Event};
use super::frame::{ErrorCode, Flags, FrameHead, FrameType, SettingId};
use super::streams::{ClosedStreams, StreamState};
use super::transmit::Transmit;
use super::{streams, *};
use crate::hpack::Decoder;

/// Per-connection settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Largest gRPC message accepted.
    pub max_message_bytes: usize,
    /// PING a connection idle this long.
    pub keepalive_time: Duration,
}

/// A header block waiting for CONTINUATION frames.
pub(crate) struct PendingBlock {
    pub stream_id: u32,
    pub end_stream: bool,
    /// The HEADERS frame made the stream depend on itself.
    pub self_dependent: bool,
    pub block: Vec<u8>,
}

/// One HTTP/2 server connection serving `/ProxyService/Proxy`, without IO.
pub struct Connection {
    pub(crate) config: Config,
    pub(crate) preface_seen: bool,
    pub(crate) write_buf: Transmit,
    pub(crate) decoder: Decoder,
    /// A header block waiting for CONTINUATION.
    pub(crate) header_block: Option<PendingBlock>,
    pub(crate) streams: HashMap<u32, StreamState>,
    pub(crate) closed: ClosedStreams,
    pub(crate) events: VecDeque<Event>,
    pub(crate) last_stream_id: u32,
    pub(crate) conn_recv_window: i64,
    pub(crate) conn_owed: u32,
    pub(crate) conn_send_window: i64,
    pub(crate) peer_initial_window: i64,
    pub(crate) peer_max_frame: usize,
    /// The final GOAWAY was sent: no new streams.
    pub(crate) stopped: bool,
    /// A graceful shutdown began (see [`Connection::go_away`]): until this
    /// time, or the client's ACK of our PING, requests are still served.
    pub(crate) going_away: Option<Instant>,
    /// A connection error was reported: nothing more is read.
    pub(crate) failed: bool,
    /// The time the driver passed in last.
    pub(crate) now: Instant,
    /// Keep-alive: when to ping next, or by when the PING must be answered.
    pub(crate) deadline: Instant,
    pub(crate) ping_outstanding: bool,
}

impl Connection {
    /// A connection accepted at `now`; our SETTINGS and the connection
    /// window's increase are queued to go out at once.
    pub fn new(config: Config, now: Instant) -> Connection {
        let deadline = now + config.keepalive_time;
        let mut conn = Connection {
            config,
            preface_seen: false,
            write_buf: Transmit::default(),
            decoder: Decoder::new(HEADER_TABLE_SIZE),
            header_block: None,
            streams: HashMap::new(),
            closed: ClosedStreams::default(),
            events: VecDeque::new(),
            last_stream_id: 0,
            conn_recv_window: CONN_WINDOW as i64,
            conn_owed: 0,
            conn_send_window: DEFAULT_WINDOW,
            peer_initial_window: DEFAULT_WINDOW,
            peer_max_frame: MAX_FRAME,
            stopped: false,
            going_away: None,
            failed: false,
            now,
            deadline,
            ping_outstanding: false,
        };
        let mut settings = Vec::with_capacity(24);
        for (id, value) in [
            (SettingId::MaxConcurrentStreams, MAX_CONCURRENT_STREAMS),
            (SettingId::InitialWindowSize, STREAM_WINDOW),
            (SettingId::MaxHeaderListSize, MAX_HEADER_BLOCK as u32),
            (SettingId::EnablePush, 0),
        ] {
            settings.extend_from_slice(&u16::from(id).to_be_bytes());
            settings.extend_from_slice(&value.to_be_bytes());
        }
        conn.frame(FrameType::Settings, Flags::NONE, 0, &settings);
        conn.window_update(0, CONN_WINDOW - DEFAULT_WINDOW as u32);
        conn
    }

    /// Handles every complete frame at the start of `buf` (received at
    /// `now`), leaving an incomplete one there for the next call. A
    /// connection error queues GOAWAY naming it and is returned; the
    /// connection then reads nothing more.
    pub fn recv(&mut self, now: Instant, buf: &mut BytesMut) -> Result<(), ConnectionError> {
        if self.failed {
            buf.clear();
            return Ok(());
        }
        self.now = now;
        let result = self.recv_frames(buf);
        if !self.ping_outstanding {
            self.deadline = now + self.config.keepalive_time;
        }
        if let Err(ConnectionError::Protocol { code, reason }) = &result {
            let mut payload = Vec::with_capacity(8 + reason.len());
            payload.extend_from_slice(&self.last_stream_id.to_be_bytes());
            payload.extend_from_slice(&code.0.to_be_bytes());
            payload.extend_from_slice(reason.as_bytes());
            self.frame(FrameType::GoAway, Flags::NONE, 0, &payload);
            self.failed = true;
            buf.clear();
        }
        result
    }

    fn recv_frames(&mut self, buf: &mut BytesMut) -> Result<(), ConnectionError> {
        if !self.preface_seen {
            let n = buf.len().min(PREFACE.len());
            if buf[..n] != PREFACE[..n] {
                return Err(proto_err(ErrorCode::PROTOCOL_ERROR, "not an HTTP/2 connection preface"));
            }
            if n < PREFACE.len() {
                return Ok(());
            }
            buf.advance(PREFACE.len());
            self.preface_seen = true;
        }
        while let Some(head) = FrameHead::parse(buf) {
            if head.len > MAX_FRAME {
                let reason = format!("frame of {} bytes exceeds {MAX_FRAME}", head.len);
                return Err(proto_err(ErrorCode::FRAME_SIZE_ERROR, reason));
            }
            if buf.len() < HEAD_LEN + head.len {
                break;
            }
            buf.advance(HEAD_LEN);
            let payload = buf.split_to(head.len).freeze();
            self.on_frame(head, payload)?;
        }
        Ok(())
    }

    /// The client closed its side of the connection: every stream it was
    /// still sending on is cancelled, and all are forgotten.
    pub fn handle_eof(&mut self) {
        let mut ids: Vec<u32> = self.streams.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(st) = self.streams.remove(&id) {
                if st.reading {
                    let reason = "the client closed the connection".to_owned();
                    self.events.push_back(Event::Cancel { stream: id, reason });
                }
                self.events.push_back(Event::Closed { stream: id });
            }
        }
    }

    /// When [`Connection::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let drain = self.going_away.filter(|_| !self.stopped);
        (!self.failed).then(|| drain.map_or(self.deadline, |at| at.min(self.deadline)))
    }

    /// Keep-alive: PINGs an idle connection; fails one whose PING went
    /// unanswered. Ends a graceful shutdown's wait for its PING's ACK.
    /// Does nothing before [`Connection::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ConnectionError> {
        self.now = now;
        if self.failed {
            return Ok(());
        }
        if self.going_away.is_some_and(|at| now >= at) {
            self.final_go_away();
        }
        if now < self.deadline {
            return Ok(());
        }
        if self.ping_outstanding {
            self.failed = true;
            return Err(ConnectionError::KeepAlive(KEEPALIVE_TIMEOUT));
        }
        self.frame(FrameType::Ping, Flags::NONE, 0, KEEPALIVE_PING);
        self.ping_outstanding = true;
        self.deadline = now + KEEPALIVE_TIMEOUT;
        Ok(())
    }

    /// Graceful shutdown at `now`, in two steps as RFC 9113 §6.8 advises:
    /// GOAWAY naming the largest stream ID and a PING; requests the client
    /// sent before it saw them are still served. At the PING's ACK (or
    /// after [`GOAWAY_PING_WAIT`]), GOAWAY names the last stream taken and
    /// later ones are refused. Open streams finish either way.
    pub fn go_away(&mut self, now: Instant) {
        if self.stopped || self.going_away.is_some() {
            return;
        }
        self.now = now;
        self.going_away = Some(now + GOAWAY_PING_WAIT);
        let mut payload = [0u8; 8];
        payload[..4].copy_from_slice(&MAX_STREAM_ID.to_be_bytes());
        self.frame(FrameType::GoAway, Flags::NONE, 0, &payload);
        self.frame(FrameType::Ping, Flags::NONE, 0, GOAWAY_PING);
    }

    /// The second GOAWAY: names the last stream taken; no new streams.
    pub(crate) fn final_go_away(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let mut payload = [0u8; 8];
        payload[..4].copy_from_slice(&self.last_stream_id.to_be_bytes());
        self.frame(FrameType::GoAway, Flags::NONE, 0, &payload);
    }

    /// The next event, in the order they happened.
    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front();
        // Drained: give the buffer back, as the write buffer is (an idle
        // connection keeps no event-sized buffers).
        if event.is_none() && self.events.capacity() > 0 {
            self.events = VecDeque::new();
        }
        event
    }

    /// The first of the buffers to write to the client (empty when there is
    /// nothing to write); [`Connection::transmit_slices`] gives them all.
    pub fn transmit(&self) -> &[u8] {
        self.write_buf.first()
    }

    /// Fills `out` with the buffers to write to the client, in order, for a
    /// vectored write; returns how many it filled. DATA payloads are the
    /// buffers the driver handed in, not copies.
    pub fn transmit_slices<'a>(&'a self, out: &mut [std::io::IoSlice<'a>]) -> usize {
        self.write_buf.slices(out)
    }

    /// Bytes waiting to be written to the client.
    pub fn transmit_len(&self) -> usize {
        self.write_buf.len()
    }

    /// `n` bytes of the transmit buffers were written. A drained queue is
    /// freed, so an idle connection holds none.
    pub fn advance_transmit(&mut self, n: usize) {
        self.write_buf.advance(n);
    }

    /// The final GOAWAY was sent (see [`Connection::go_away`]): no new
    /// streams.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// A graceful shutdown began (see [`Connection::go_away`]).
    pub fn is_going_away(&self) -> bool {
        self.stopped || self.going_away.is_some()
    }

    /// Streams open (served, or refused and still answering).
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Our send window on the connection has room.
    pub fn can_send(&self) -> bool {
        self.conn_send_window > 0
    }

    /// The largest frame payload the client accepts (its MAX_FRAME_SIZE).
    pub fn peer_max_frame(&self) -> usize {
        self.peer_max_frame
    }

    /// The stream has response bytes the windows hold back: it should not
    /// be given more until [`Event::Writable`].
    pub fn is_blocked(&self, stream: u32) -> bool {
        self.streams.get(&stream).is_some_and(|st| st.pending_len > 0)
    }

    pub(crate) fn frame(&mut self, kind: FrameType, flags: Flags, stream_id: u32, payload: &[u8]) {
        self.write_buf.put_slice(&FrameHead { len: payload.len(), kind, flags, stream_id }.to_bytes());
        self.write_buf.put_slice(payload);
    }

    pub(crate) fn window_update(&mut self, stream_id: u32, n: u32) {
        self.frame(FrameType::WindowUpdate, Flags::NONE, stream_id, &n.to_be_bytes());
    }

    pub(crate) fn rst(&mut self, stream_id: u32, code: ErrorCode) {
        self.frame(FrameType::RstStream, Flags::NONE, stream_id, &code.0.to_be_bytes());
    }
}

impl Connection {
    /// Panics if a bound the connection keeps is broken: windows within
    /// RFC 9113's limits (a stream's send window may go negative only by a
    /// smaller INITIAL_WINDOW_SIZE), streams and the closed ring within
    /// their limits, queued bytes counted right. For tests and fuzzing.
    #[doc(hidden)]
    pub fn assert_invariants(&self) {
        assert!((0..=MAX_WINDOW).contains(&self.conn_send_window), "connection send window {}", self.conn_send_window);
        assert!((0..=CONN_WINDOW as i64).contains(&self.conn_recv_window), "connection receive window");
        assert!(self.streams.len() <= MAX_CONCURRENT_STREAMS as usize, "{} streams", self.streams.len());
        assert!(self.closed.len() <= streams::CLOSED_REMEMBERED, "closed ring of {}", self.closed.len());
        assert!(self.header_block.as_ref().is_none_or(|b| b.block.len() <= MAX_HEADER_BLOCK), "header block");
        for (id, st) in &self.streams {
            assert!(id % 2 == 1 && *id <= self.last_stream_id, "stream {id}");
            assert!((0..=STREAM_WINDOW as i64).contains(&st.recv_window), "stream {id} receive window");
            assert!(st.send_window <= MAX_WINDOW && st.send_window >= -MAX_WINDOW, "stream {id} send window");
            assert_eq!(st.pending_len, st.pending.iter().map(|b| b.len()).sum::<usize>(), "stream {id} pending");
            assert!(st.partial.buf.len() <= 5 + self.config.max_message_bytes, "stream {id} partial message");
        }
    }
}
