//! Frames from the client, by type (RFC 9113 §6), and the stream states
//! they move (§5.1).

use bytes::{Buf, Bytes};

use super::conn::{Connection, PendingBlock};
use super::event::{ConnectionError, Event};
use super::fields::FieldCheck;
use super::frame::{ErrorCode, Flags, FrameHead, FrameType, SettingId};
use super::streams::StreamState;
use super::*;

type Result<T = ()> = std::result::Result<T, ConnectionError>;

impl Connection {
    pub(crate) fn on_frame(&mut self, head: FrameHead, payload: Bytes) -> Result {
        let FrameHead { kind, flags, stream_id, .. } = head;
        if let Some(pending) = &self.header_block {
            if kind != FrameType::Continuation || stream_id != pending.stream_id {
                return Err(proto_err(ErrorCode::PROTOCOL_ERROR, "header block interrupted before END_HEADERS"));
            }
        }
        match kind {
            FrameType::Data => self.on_data(flags, stream_id, payload),
            FrameType::Headers => self.on_headers(flags, stream_id, payload),
            FrameType::Continuation => self.on_continuation(flags, payload),
            FrameType::Priority => self.on_priority(stream_id, &payload),
            FrameType::RstStream => self.on_rst_stream(stream_id, &payload),
            FrameType::Settings => self.on_settings(flags, stream_id, &payload),
            FrameType::PushPromise => Err(proto_err(ErrorCode::PROTOCOL_ERROR, "clients must not send PUSH_PROMISE")),
            FrameType::Ping => self.on_ping(flags, stream_id, &payload),
            FrameType::GoAway => {
                if stream_id != 0 || payload.len() < 8 {
                    return Err(proto_err(ErrorCode::PROTOCOL_ERROR, "malformed GOAWAY"));
                }
                // The client opens no more streams; the open ones finish.
                self.events.push_back(Event::PeerGoAway);
                Ok(())
            }
            FrameType::WindowUpdate => self.on_window_update(stream_id, &payload),
            // Unknown frame types are ignored (RFC 9113 §4.1).
            FrameType::Unknown(_) => Ok(()),
        }
    }

    fn on_continuation(&mut self, flags: Flags, payload: Bytes) -> Result {
        let Some(mut pending) = self.header_block.take() else {
            return Err(proto_err(ErrorCode::PROTOCOL_ERROR, "CONTINUATION without HEADERS"));
        };
        if pending.block.len() + payload.len() > MAX_HEADER_BLOCK {
            return Err(proto_err(ErrorCode::PROTOCOL_ERROR, format!("header block over {MAX_HEADER_BLOCK} bytes")));
        }
        pending.block.extend_from_slice(&payload);
        if flags.has(Flags::END_HEADERS) {
            self.on_header_block(pending)
        } else {
            self.header_block = Some(pending);
            Ok(())
        }
    }

    fn on_priority(&mut self, stream_id: u32, payload: &[u8]) -> Result {
        if stream_id == 0 {
            return Err(proto_err(ErrorCode::PROTOCOL_ERROR, "PRIORITY on stream 0"));
        }
        if payload.len() != 5 {
            return Err(proto_err(ErrorCode::FRAME_SIZE_ERROR, "PRIORITY frame not 5 bytes"));
        }
        if depends_on(payload) == stream_id {
            // A stream error (RFC 9113 §5.3.1); priorities are otherwise ignored.
            self.reset_stream(stream_id, ErrorCode::PROTOCOL_ERROR, "stream depends on itself");
        }
        Ok(())
    }

    fn on_rst_stream(&mut self, stream_id: u32, payload: &[u8]) -> Result {
        if stream_id == 0 || payload.len() != 4 {
            return Err(proto_err(ErrorCode::PROTOCOL_ERROR, "malformed RST_STREAM"));
        }
        if stream_id > self.last_stream_id {
            return Err(proto_err(ErrorCode::PROTOCOL_ERROR, "RST_STREAM on an idle stream"));
        }
        if let Some(st) = self.streams.get_mut(&stream_id) {
            st.client_ended = true;
            if st.reading {
                let reason = "stream reset by the client".to_owned();
                self.events.push_back(Event::Cancel { stream: stream_id, reason });
            }
        }
        self.close_stream(stream_id);
        self.closed.client_ended(stream_id);
        Ok(())
    }

    fn on_ping(&mut self, flags: Flags, stream_id: u32, payload: &[u8]) -> Result {
        if stream_id != 0 || payload.len() != 8 {
            return Err(proto_err(ErrorCode::FRAME_SIZE_ERROR, "malformed PING"));
        }
        if !flags.has(Flags::ACK) {
            self.frame(FrameType::Ping, Flags::ACK, 0, payload);
        } else if self.going_away.is_some() && payload == GOAWAY_PING {
            self.final_go_away();
        } else if self.ping_outstanding {
            self.ping_outstanding = false;
            self.deadline = self.now + self.config.keepalive_time;
        }
        Ok(())
    }

    fn on_settings(&mut self, flags: Flags, stream_id: u32, payload: &[u8]) -> Result {
        if stream_id != 0 {
            return Err(proto_err(ErrorCode::PROTOCOL_ERROR, "SETTINGS on a stream"));
        }
        if flags.has(Flags::ACK) {
            if !payload.is_empty() {
                return Err(proto_err(ErrorCode::FRAME_SIZE_ERROR, "SETTINGS ACK with a payload"));
            }
            return Ok(());
        }
        if !payload.len().is_multiple_of(6) {
            return Err(proto_err(ErrorCode::FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6"));
        }
        for entry in payload.chunks_exact(6) {
            let id = SettingId::from(u16::from_be_bytes([entry[0], entry[1]]));
            self.on_setting(id, u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]))?;
        }
        self.frame(FrameType::Settings, Flags::ACK, 0, &[]);
        self.flush_pending();
        Ok(())
    }

    fn on_setting(&mut self, id: SettingId, value: u32) -> Result {
        match id {
            SettingId::InitialWindowSize => {
                if value as i64 > MAX_WINDOW {
                    return Err(proto_err(ErrorCode::FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE above 2^31-1"));
                }
                let delta = value as i64 - self.peer_initial_window;
                self.peer_initial_window = value as i64;
                for st in self.streams.values_mut() {
                    st.send_window += delta;
                    if st.send_window > MAX_WINDOW {
                        return Err(proto_err(ErrorCode::FLOW_CONTROL_ERROR, "stream window above 2^31-1"));
                    }
                }
            }
            SettingId::MaxFrameSize => {
                if !(16_384..=(1 << 24) - 1).contains(&value) {
                    let reason = format!("MAX_FRAME_SIZE {value} out of range");
                    return Err(proto_err(ErrorCode::PROTOCOL_ERROR, reason));
                }
                self.peer_max_frame = value as usize;
            }
            SettingId::EnablePush if value > 1 => {
                return Err(proto_err(ErrorCode::PROTOCOL_ERROR, "ENABLE_PUSH not 0 or 1"));
            }
            // HEADER_TABLE_SIZE: our encoder never uses the dynamic table.
            // Others: nothing to adjust.
            _ => {}
        }
        Ok(())
    }

    fn on_window_update(&mut self, stream_id: u32, payload: &[u8]) -> Result {
        let Ok(bytes) = <[u8; 4]>::try_from(payload) else {
            return Err(proto_err(ErrorCode::FRAME_SIZE_ERROR, "WINDOW_UPDATE not 4 bytes"));
        };
        let inc = (u32::from_be_bytes(bytes) & 0x7fff_ffff) as i64;
        if stream_id == 0 {
            if inc == 0 {
                return Err(proto_err(ErrorCode::PROTOCOL_ERROR, "connection WINDOW_UPDATE of 0"));
            }
            // Checked before it is applied: the window never leaves its
            // range, even on a connection that is about to close.
            if self.conn_send_window + inc > MAX_WINDOW {
                return Err(proto_err(ErrorCode::FLOW_CONTROL_ERROR, "connection window above 2^31-1"));
            }
            self.conn_send_window += inc;
        } else if stream_id > self.last_stream_id {
            return Err(proto_err(ErrorCode::PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream"));
        } else if inc == 0 {
            // A stream error whatever the stream's state (RFC 9113 §6.9).
            self.reset_stream(stream_id, ErrorCode::PROTOCOL_ERROR, "stream WINDOW_UPDATE of 0");
            return Ok(());
        } else if let Some(st) = self.streams.get_mut(&stream_id) {
            st.send_window += inc;
            if st.send_window > MAX_WINDOW {
                self.reset_stream(stream_id, ErrorCode::FLOW_CONTROL_ERROR, "stream window above 2^31-1");
                return Ok(());
            }
        }
        self.flush_pending();
        Ok(())
    }

    fn on_headers(&mut self, flags: Flags, stream_id: u32, mut payload: Bytes) -> Result {
        if stream_id == 0 {
            return Err(proto_err(ErrorCode::PROTOCOL_ERROR, "HEADERS on stream 0"));
        }
        if flags.has(Flags::PADDED) {
            payload = unpad(payload)?;
        }
        let mut self_dependent = false;
        if flags.has(Flags::PRIORITY) {
            if payload.len() < 5 {
                return Err(proto_err(ErrorCode::PROTOCOL_ERROR, "HEADERS too short for its priority"));
            }
            self_dependent = depends_on(&payload) == stream_id;
            payload.advance(5);
        }
        let end_stream = flags.has(Flags::END_STREAM);
        let pending = PendingBlock { stream_id, end_stream, self_dependent, block: payload.to_vec() };
        if flags.has(Flags::END_HEADERS) {
            self.on_header_block(pending)
        } else {
            self.header_block = Some(pending);
            Ok(())
        }
    }

    fn on_header_block(&mut self, pending: PendingBlock) -> Result {
        let PendingBlock { stream_id, end_stream, self_dependent, block } = pending;
        // Every block is decoded, even for streams we refuse, so the HPACK
        // table stays in step with the client's.
        let mut check = FieldCheck::default();
        self.decoder
            .decode(&block, |name, value| check.field(name, value))
            .map_err(|e| proto_err(ErrorCode::COMPRESSION_ERROR, format!("bad header block: {e}")))?;
        if stream_id <= self.last_stream_id {
            return self.on_trailers(stream_id, end_stream, &check);
        }
        if stream_id.is_multiple_of(2) {
            return Err(proto_err(ErrorCode::PROTOCOL_ERROR, "client stream with an even id"));
        }
        self.last_stream_id = stream_id;
        if self_dependent {
            self.refuse_stream(stream_id, end_stream, ErrorCode::PROTOCOL_ERROR, "stream depends on itself".into());
            return Ok(());
        }
        if self.stopped || self.streams.len() >= MAX_CONCURRENT_STREAMS as usize {
            self.rst(stream_id, ErrorCode::REFUSED_STREAM);
            self.closed.record(stream_id, end_stream);
            return Ok(());
        }
        if let Some(problem) = check.request_problem() {
            // A malformed request: a stream error (RFC 9113 §8.1.1).
            let reason = format!("malformed request: {problem}");
            self.refuse_stream(stream_id, end_stream, ErrorCode::PROTOCOL_ERROR, reason);
            return Ok(());
        }
        self.on_request(stream_id, end_stream, check);
        Ok(())
    }

    /// A well-formed request on a new stream: served if it is a Proxy call.
    fn on_request(&mut self, stream_id: u32, end_stream: bool, check: FieldCheck) {
        let post = check.method.as_deref() == Some(b"POST");
        if !post || !check.grpc {
            // Not a gRPC call (a browser, curl, a scanner): a plain HTTP
            // answer saying what is served.
            let status: &[u8] = if post { b"415" } else { b"405" };
            self.refuse(stream_id, end_stream, check.content_length, Refusal::Http(status));
            return;
        }
        if check.path.as_deref() != Some(PROXY_PATH) {
            let path = String::from_utf8_lossy(check.path.as_deref().unwrap_or_default()).into_owned();
            let status = GrpcStatus::new(GrpcStatus::UNIMPLEMENTED, format!("unknown method {path}"));
            self.refuse(stream_id, end_stream, check.content_length, Refusal::Grpc(status));
            return;
        }
        let mut st = StreamState::new(self.peer_initial_window, end_stream, check.content_length);
        st.reading = !end_stream;
        self.streams.insert(stream_id, st);
        self.events.push_back(Event::Open { stream: stream_id });
        if end_stream {
            self.events.push_back(Event::End { stream: stream_id });
        }
        // Headers at once, as clients that wait for them before sending
        // (tonic's) expect.
        self.response_headers(stream_id);
    }

    /// A header block on a stream opened before: trailers, which end the
    /// client's side. Without END_STREAM it is no trailer; on a stream we
    /// never opened it opens a stream whose identifier is not greater than
    /// the last one (RFC 9113 §5.1.1); after the client's side ended, it is
    /// a STREAM_CLOSED error (§5.1).
    fn on_trailers(&mut self, stream_id: u32, end_stream: bool, check: &FieldCheck) -> Result {
        let Some(st) = self.streams.get_mut(&stream_id) else {
            return match self.closed.get(stream_id) {
                Some(true) => Err(proto_err(ErrorCode::STREAM_CLOSED, format!("HEADERS on closed stream {stream_id}"))),
                // Trailers that crossed our end of the stream.
                Some(false) if end_stream => Ok(()),
                _ => {
                    let last = self.last_stream_id;
                    let reason = format!(
                        "stream identifier went backwards: {stream_id} is not greater than the last one, {last}"
                    );
                    Err(proto_err(ErrorCode::PROTOCOL_ERROR, reason))
                }
            };
        };
        if st.client_ended {
            self.reset_stream(stream_id, ErrorCode::STREAM_CLOSED, "HEADERS after the client's END_STREAM");
            return Ok(());
        }
        if !end_stream {
            return Err(proto_err(ErrorCode::PROTOCOL_ERROR, "second HEADERS without END_STREAM"));
        }
        st.client_ended = true;
        let problem = if check.pseudo {
            Some("pseudo-header in trailers".to_owned())
        } else if let Some(m) = &check.malformed {
            Some(m.clone())
        } else {
            st.content_length
                .filter(|&n| n != st.data_received)
                .map(|n| format!("content-length {n} but {} bytes of DATA", st.data_received))
        };
        if let Some(problem) = problem {
            self.reset_stream(stream_id, ErrorCode::PROTOCOL_ERROR, &format!("malformed request: {problem}"));
            return Ok(());
        }
        if std::mem::take(&mut st.reading) {
            self.events.push_back(Event::End { stream: stream_id });
        }
        if st.refused && st.done {
            self.close_stream(stream_id);
        }
        Ok(())
    }
}

/// The stream a PRIORITY frame's (or a HEADERS frame's priority) payload
/// makes its stream depend on (the payload holds at least 4 bytes).
fn depends_on(payload: &[u8]) -> u32 {
    u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff
}

pub(crate) fn unpad(mut payload: Bytes) -> Result<Bytes> {
    let Some(&pad) = payload.first() else {
        return Err(proto_err(ErrorCode::PROTOCOL_ERROR, "PADDED frame without a pad length"));
    };
    payload.advance(1);
    if pad as usize > payload.len() {
        return Err(proto_err(ErrorCode::PROTOCOL_ERROR, "padding longer than the frame"));
    }
    payload.truncate(payload.len() - pad as usize);
    Ok(payload)
}
