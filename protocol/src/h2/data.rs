//! DATA from the client, and the credit that flows back: padding at once,
//! a message's bytes once its session has forwarded it
//! ([`Connection::release`]), bytes of a message larger than half the
//! window as they arrive once the driver granted it a partial-message
//! reservation ([`Connection::grant_budget`]).

use bytes::Bytes;

use super::conn::Connection;
use super::event::{ConnectionError, Event, MessageError};
use super::frame::{ErrorCode, Flags};
use super::message::{assemble, Partial, Sink};
use super::recv::unpad;
use super::*;

impl Connection {
    pub(crate) fn on_data(&mut self, flags: Flags, stream_id: u32, mut payload: Bytes) -> Result<(), ConnectionError> {
        if stream_id == 0 {
            return Err(proto_err(ErrorCode::PROTOCOL_ERROR, "DATA on stream 0"));
        }
        let flow_len = payload.len() as u32;
        if flow_len as i64 > self.conn_recv_window {
            return Err(proto_err(ErrorCode::FLOW_CONTROL_ERROR, "DATA beyond the connection window"));
        }
        self.conn_recv_window -= flow_len as i64;
        self.conn_credit(flow_len);
        if flags.has(Flags::PADDED) {
            payload = unpad(payload)?;
        }
        let end_stream = flags.has(Flags::END_STREAM);
        let Some(st) = self.streams.get_mut(&stream_id) else {
            if stream_id > self.last_stream_id {
                return Err(proto_err(ErrorCode::PROTOCOL_ERROR, "DATA on an idle stream"));
            }
            // A closed stream (its bytes counted on the connection above):
            // the client's error if its side had ended (RFC 9113 §6.1),
            // otherwise sent before our RST_STREAM reached it.
            if self.closed.get(stream_id) == Some(true) {
                self.rst(stream_id, ErrorCode::STREAM_CLOSED);
            }
            return Ok(());
        };
        if st.client_ended {
            self.reset_stream(stream_id, ErrorCode::STREAM_CLOSED, "DATA after the client's END_STREAM");
            return Ok(());
        }
        if flow_len as i64 > st.recv_window {
            self.reset_stream(stream_id, ErrorCode::FLOW_CONTROL_ERROR, "DATA beyond the stream window");
            return Ok(());
        }
        st.recv_window -= flow_len as i64;
        st.data_received += payload.len() as u64;
        st.client_ended = end_stream;
        if let Some(n) = st.content_length {
            if st.data_received > n || (end_stream && st.data_received != n) {
                let why = format!("malformed request: content-length {n} but {} bytes of DATA", st.data_received);
                self.reset_stream(stream_id, ErrorCode::PROTOCOL_ERROR, &why);
                return Ok(());
            }
        }
        let padding = flow_len - payload.len() as u32;
        self.on_stream_data(stream_id, payload, end_stream);
        self.credit(stream_id, padding);
        self.settle(stream_id);
        Ok(())
    }

    /// A stream's DATA payload: its messages to the session, or dropped if
    /// no session reads the stream.
    fn on_stream_data(&mut self, stream_id: u32, payload: Bytes, end_stream: bool) {
        let max_message = self.config.max_message_bytes;
        let Some(st) = self.streams.get_mut(&stream_id) else {
            return;
        };
        if !st.reading {
            // A refused request's body, or one we stopped reading: dropped.
            // A refused stream ends once both sides have; one whose window
            // the client used up without ending is reset.
            let (refused, done, window) = (st.refused, st.done, st.recv_window);
            if refused && done && end_stream {
                self.close_stream(stream_id);
            } else if refused && window == 0 {
                self.reset_stream(stream_id, ErrorCode::NO_ERROR, "a refused request's body is too long");
            }
            return;
        }
        let mut sink = Sink { stream: stream_id, events: &mut self.events };
        match assemble(&mut st.partial, payload, max_message, &mut sink) {
            Ok(()) if end_stream => {
                if !st.partial.buf.is_empty() {
                    let error = MessageError::EndedInsideMessage;
                    self.events.push_back(Event::Failed { stream: stream_id, error, credit: 0, reserved: false });
                    st.partial = Partial::default();
                }
                st.reading = false;
                self.events.push_back(Event::End { stream: stream_id });
            }
            Ok(()) => {}
            Err(()) => {
                // The session ends the stream with the error queued; nothing
                // more the client sends on it is read.
                st.partial = Partial::default();
                st.reading = false;
                self.events.push_back(Event::End { stream: stream_id });
                if st.done {
                    self.close_stream(stream_id);
                }
            }
        }
    }

    /// Early credit for a stream's partial message larger than
    /// [`EARLY_CREDIT_ABOVE`]: once the message holds a reservation, every
    /// byte of it is credited as it arrives; until then the driver is asked
    /// for one, once per message.
    fn settle(&mut self, id: u32) {
        let Some(st) = self.streams.get_mut(&id).filter(|st| st.reading) else {
            return;
        };
        let Some(size) = st.partial.early_credit_size() else {
            return;
        };
        if !st.partial.reserved {
            if !std::mem::replace(&mut st.partial.asked, true) {
                self.events.push_back(Event::WantBudget { stream: id, size });
            }
            return;
        }
        let n = st.partial.uncredited();
        st.partial.credited += n;
        self.credit(id, n);
    }

    /// The reservation a stream's partial message waits for, if it still
    /// waits for one.
    pub fn budget_wanted(&self, stream: u32) -> Option<usize> {
        let st = self.streams.get(&stream).filter(|st| st.reading && !st.partial.reserved)?;
        st.partial.early_credit_size()
    }

    /// The driver reserved [`Connection::budget_wanted`] bytes for the
    /// stream's partial message: its bytes are credited from now on, and
    /// the next [`Event::Packet`] or [`Event::Failed`] of the stream with
    /// `reserved` carries it. False (the driver drops the reservation) if
    /// the stream no longer waits.
    pub fn grant_budget(&mut self, stream: u32) -> bool {
        let Some(size) = self.budget_wanted(stream) else {
            return false;
        };
        if let Some(st) = self.streams.get_mut(&stream) {
            st.partial.buf.reserve(size - st.partial.buf.len());
            st.partial.reserved = true;
        }
        self.settle(stream);
        true
    }

    /// A session forwarded (or will never take) a message of `stream`
    /// holding `credit` bytes: they go back to the client's stream window.
    pub fn release(&mut self, stream: u32, credit: u32) {
        self.credit(stream, credit);
    }

    /// Records `n` consumed bytes on a stream and sends its WINDOW_UPDATE
    /// once enough have gathered.
    pub(crate) fn credit(&mut self, stream_id: u32, n: u32) {
        if n == 0 {
            return;
        }
        let mut stream_update = None;
        if let Some(st) = self.streams.get_mut(&stream_id).filter(|st| st.reading) {
            st.owed += n;
            if st.owed >= STREAM_WINDOW / 4 {
                st.recv_window += st.owed as i64;
                stream_update = Some(std::mem::take(&mut st.owed));
            }
        }
        if let Some(inc) = stream_update {
            self.window_update(stream_id, inc);
        }
    }

    /// Records `n` received bytes on the connection window. The connection
    /// credits every DATA frame as it arrives, as grpc-go's server does: the
    /// stream windows alone hold back a slow stream, so a stream whose
    /// session waits never stalls the other streams of its connection.
    fn conn_credit(&mut self, n: u32) {
        self.conn_owed += n;
        if self.conn_owed >= CONN_WINDOW / 4 {
            self.conn_recv_window += self.conn_owed as i64;
            let inc = std::mem::take(&mut self.conn_owed);
            self.window_update(0, inc);
        }
    }
}
