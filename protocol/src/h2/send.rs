//! What goes out on a stream: response headers, messages as the windows
//! allow, trailers, refusals and resets.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use super::conn::Connection;
use super::event::{Event, GrpcStatus};
use super::fields::{literal, percent_encode, CONTENT_TYPE_GRPC, STATUS_200};
use super::frame::{ErrorCode, Flags, FrameHead, FrameType};
use super::streams::StreamState;
use super::transmit::Transmit;
use crate::konnectivity::data_head;
use crate::proto::Packet;

/// How a request we do not serve is answered.
pub(crate) enum Refusal {
    /// A gRPC call to another method: a trailers-only gRPC status.
    Grpc(GrpcStatus),
    /// Not a gRPC call: this HTTP status with [`REFUSAL_BODY`].
    Http(&'static [u8]),
}

/// The body of a plain HTTP refusal.
const REFUSAL_BODY: &[u8] =
    b"konnq-server serves gRPC only: POST /ProxyService/Proxy with content-type application/grpc\n";

impl Connection {
    /// Queues `packet` as a gRPC message on `stream`'s response.
    pub fn send_packet(&mut self, stream: u32, packet: &Packet) {
        let Some(st) = self.streams.get_mut(&stream).filter(|st| !st.done) else {
            return;
        };
        let len = packet.encoded_len();
        let mut buf = BytesMut::with_capacity(5 + len);
        buf.put_u8(0);
        buf.put_u32(len as u32);
        packet.encode_raw(&mut buf);
        st.pending_len += buf.len();
        st.pending.push_back(buf.freeze());
        self.send_pending(stream);
    }

    /// Queues a DATA packet for `connect_id` whose payload is `chunks`, as
    /// one gRPC message on `stream`'s response, without copying the chunks.
    pub fn send_data(&mut self, stream: u32, connect_id: i64, chunks: Vec<Bytes>) {
        let Some(st) = self.streams.get_mut(&stream).filter(|st| !st.done) else {
            return;
        };
        let payload: usize = chunks.iter().map(Bytes::len).sum();
        let head = data_head(connect_id, payload);
        let mut prefix = BytesMut::with_capacity(5 + head.len());
        prefix.put_u8(0);
        prefix.put_u32((head.len() + payload) as u32);
        prefix.put_slice(&head);
        st.pending_len += prefix.len() + payload;
        st.pending.push_back(prefix.freeze());
        st.pending.extend(chunks.into_iter().filter(|c| !c.is_empty()));
        self.send_pending(stream);
    }

    /// Ends the response with trailers carrying `status` (its headers went
    /// out when the stream was accepted) and forgets the stream; a client
    /// still sending is asked to stop with RST_STREAM(NO_ERROR).
    pub fn finish(&mut self, stream: u32, status: &GrpcStatus) {
        let Some(st) = self.streams.get_mut(&stream).filter(|st| !st.done) else {
            return;
        };
        st.done = true;
        let client_open = !st.client_ended;
        self.trailers(stream, true, status);
        if client_open {
            self.rst(stream, ErrorCode::NO_ERROR);
        }
        self.close_stream(stream);
    }

    /// Answers a request we do not serve. The stream stays open until the
    /// response is out (a plain HTTP answer has a body, sent as the client's
    /// windows allow) and the client's side has ended; what the client
    /// sends meanwhile is read, checked and dropped.
    pub(crate) fn refuse(&mut self, id: u32, end_stream: bool, content_length: Option<u64>, refusal: Refusal) {
        let mut st = StreamState::new(self.peer_initial_window, end_stream, content_length);
        st.refused = true;
        match refusal {
            Refusal::Grpc(status) => {
                self.events.push_back(Event::Refused { stream: id, reason: status.message.clone() });
                self.streams.insert(id, st);
                self.trailers(id, false, &status);
                self.end_refused(id);
                if !end_stream {
                    // A gRPC client still sending is asked to stop, as
                    // after any complete response (RFC 9113 §8.1).
                    self.rst(id, ErrorCode::NO_ERROR);
                    self.close_stream(id);
                }
            }
            Refusal::Http(code) => {
                let reason = format!("HTTP {}: not a gRPC call", String::from_utf8_lossy(code));
                self.events.push_back(Event::Refused { stream: id, reason });
                let body = Bytes::from_static(REFUSAL_BODY);
                st.pending_len = body.len();
                st.pending.push_back(body);
                self.streams.insert(id, st);
                let mut block = Vec::with_capacity(48);
                literal(&mut block, b":status", code);
                literal(&mut block, b"content-type", b"text/plain; charset=utf-8");
                self.frame(FrameType::Headers, Flags::END_HEADERS, id, &block);
                self.send_pending(id);
            }
        }
    }

    /// A refused stream whose response is out: closed once the client's
    /// side has ended too.
    fn end_refused(&mut self, id: u32) {
        if let Some(st) = self.streams.get_mut(&id) {
            st.done = true;
            if st.client_ended {
                self.close_stream(id);
            }
        }
    }

    /// A stream error on a stream that opens with it: RST_STREAM, and the
    /// stream is remembered as closed.
    pub(crate) fn refuse_stream(&mut self, id: u32, end_stream: bool, code: ErrorCode, reason: String) {
        self.events.push_back(Event::Refused { stream: id, reason });
        self.rst(id, code);
        self.closed.record(id, end_stream);
    }

    /// A stream error on a stream that may be open or closed: RST_STREAM,
    /// and its session, if any, told.
    pub(crate) fn reset_stream(&mut self, id: u32, code: ErrorCode, why: &str) {
        self.events.push_back(Event::Reset { stream: id, reason: why.to_owned() });
        if self.streams.get(&id).is_some_and(|st| st.reading) {
            self.events.push_back(Event::Cancel { stream: id, reason: why.to_owned() });
        }
        self.rst(id, code);
        self.close_stream(id);
    }

    /// Writes a stream's pending bytes as far as the windows allow; a stream
    /// held back is [`Event::Writable`] again once all are out.
    pub(crate) fn send_pending(&mut self, id: u32) {
        let max_frame = self.peer_max_frame as i64;
        loop {
            let Some(st) = self.streams.get_mut(&id) else {
                return;
            };
            if st.pending_len == 0 {
                break;
            }
            let n =
                (st.pending_len as i64).min(max_frame).min(self.conn_send_window).min(st.send_window).max(0) as usize;
            if n == 0 {
                st.blocked = true;
                return;
            }
            st.send_window -= n as i64;
            st.pending_len -= n;
            self.conn_send_window -= n as i64;
            self.write_buf
                .put_slice(&FrameHead { len: n, kind: FrameType::Data, flags: Flags::NONE, stream_id: id }.to_bytes());
            move_front(&mut st.pending, n, &mut self.write_buf);
        }
        let Some(st) = self.streams.get_mut(&id) else {
            return;
        };
        if std::mem::take(&mut st.blocked) {
            self.events.push_back(Event::Writable { stream: id });
        }
        if st.refused && !st.done {
            // A refusal's body is out: end our side.
            self.frame(FrameType::Data, Flags::END_STREAM, id, &[]);
            self.end_refused(id);
        }
    }

    /// After a window grew: every stream with pending bytes gets its turn.
    pub(crate) fn flush_pending(&mut self) {
        if self.conn_send_window <= 0 {
            return;
        }
        let mut waiting: Vec<u32> =
            self.streams.iter().filter(|(_, st)| st.pending_len > 0).map(|(&id, _)| id).collect();
        waiting.sort_unstable();
        for id in waiting {
            self.send_pending(id);
            if self.conn_send_window <= 0 {
                break;
            }
        }
    }

    pub(crate) fn response_headers(&mut self, id: u32) {
        let mut block = Vec::with_capacity(32);
        block.push(STATUS_200);
        block.extend_from_slice(CONTENT_TYPE_GRPC);
        self.frame(FrameType::Headers, Flags::END_HEADERS, id, &block);
    }

    fn trailers(&mut self, id: u32, headers_sent: bool, status: &GrpcStatus) {
        let mut block = Vec::with_capacity(64);
        if !headers_sent {
            block.push(STATUS_200);
            block.extend_from_slice(CONTENT_TYPE_GRPC);
        }
        literal(&mut block, b"grpc-status", status.code.to_string().as_bytes());
        if !status.message.is_empty() {
            literal(&mut block, b"grpc-message", &percent_encode(&status.message));
        }
        self.frame(FrameType::Headers, Flags::END_HEADERS | Flags::END_STREAM, id, &block);
    }

    /// Forgets a stream: its session sees the end of its inbound messages
    /// and nothing more goes out.
    pub(crate) fn close_stream(&mut self, id: u32) {
        if let Some(st) = self.streams.remove(&id) {
            self.closed.record(id, st.client_ended);
            self.events.push_back(Event::Closed { stream: id });
        }
    }
}

/// Moves the first `n` bytes of `queue` (which holds at least `n`) to `out`,
/// as the buffers they are in.
pub(crate) fn move_front(queue: &mut VecDeque<Bytes>, mut n: usize, out: &mut Transmit) {
    while n > 0 {
        let Some(front) = queue.front_mut() else {
            debug_assert!(false, "pending bytes miscounted");
            return;
        };
        let take = front.len().min(n);
        n -= take;
        if take == front.len() {
            out.put_bytes(queue.pop_front().expect("front exists"));
        } else {
            out.put_bytes(front.split_to(take));
        }
    }
}
