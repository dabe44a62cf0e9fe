//! Per-stream state, and the ring of streams closed lately.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use super::message::Partial;
use super::STREAM_WINDOW;

pub(crate) struct StreamState {
    /// A session reads the client's side: messages go to it. False once the
    /// client's side ended or we stopped reading it.
    pub reading: bool,
    /// What the client may still send before our next WINDOW_UPDATE.
    pub recv_window: i64,
    /// Received bytes not yet credited back.
    pub owed: u32,
    /// A gRPC message being reassembled from DATA frames.
    pub partial: Partial,
    /// Our send window on this stream.
    pub send_window: i64,
    /// Encoded response bytes the windows did not let out yet, in order
    /// (a message's head, then its payload as the session's buffers).
    pub pending: VecDeque<Bytes>,
    /// Bytes in `pending`.
    pub pending_len: usize,
    /// The windows held bytes back: [`super::Event::Writable`] once out.
    pub blocked: bool,
    /// Trailers sent: the response is complete.
    pub done: bool,
    /// The client's side ended (END_STREAM): anything but WINDOW_UPDATE,
    /// PRIORITY or RST_STREAM from it on this stream is a STREAM_CLOSED error.
    pub client_ended: bool,
    /// A request we do not serve: no session; the response goes out as the
    /// windows allow while the request's body, if any, is read and dropped.
    pub refused: bool,
    /// The request's content-length, checked against its DATA.
    pub content_length: Option<u64>,
    /// DATA payload bytes received, padding excluded.
    pub data_received: u64,
}

impl StreamState {
    pub fn new(send_window: i64, end_stream: bool, content_length: Option<u64>) -> StreamState {
        StreamState {
            reading: false,
            recv_window: STREAM_WINDOW as i64,
            owed: 0,
            partial: Partial::default(),
            send_window,
            pending: VecDeque::new(),
            pending_len: 0,
            blocked: false,
            done: false,
            client_ended: end_stream,
            refused: false,
            content_length,
            data_received: 0,
        }
    }
}

/// Streams closed lately, and whether the client's side had ended (END_STREAM
/// or its RST_STREAM): a frame the client sends on such a stream after that
/// is its error (STREAM_CLOSED), while frames on a stream we reset may have
/// crossed our RST_STREAM and are ignored (RFC 9113 §5.1). Bounded: a stream
/// older than the last [`CLOSED_REMEMBERED`] is no longer told apart.
#[derive(Default)]
pub(crate) struct ClosedStreams {
    order: VecDeque<u32>,
    peer_done: HashMap<u32, bool>,
}

/// How many closed streams a connection remembers.
pub const CLOSED_REMEMBERED: usize = 1024;

impl ClosedStreams {
    pub fn record(&mut self, id: u32, peer_done: bool) {
        if self.peer_done.insert(id, peer_done).is_none() {
            self.order.push_back(id);
            if self.order.len() > CLOSED_REMEMBERED {
                if let Some(old) = self.order.pop_front() {
                    self.peer_done.remove(&old);
                }
            }
        }
    }

    /// `Some(true)`: closed after the client's side ended; `Some(false)`:
    /// closed by us while it was open; `None`: not a stream closed lately.
    pub fn get(&self, id: u32) -> Option<bool> {
        self.peer_done.get(&id).copied()
    }

    pub fn client_ended(&mut self, id: u32) {
        if let Some(done) = self.peer_done.get_mut(&id) {
            *done = true;
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_remembers_the_last_streams_only() {
        let mut closed = ClosedStreams::default();
        for id in (1..).step_by(2).take(CLOSED_REMEMBERED + 10) {
            closed.record(id, false);
        }
        assert_eq!(closed.len(), CLOSED_REMEMBERED);
        assert_eq!(closed.get(1), None, "forgotten");
        let last = 2 * (CLOSED_REMEMBERED as u32 + 10) - 1;
        assert_eq!(closed.get(last), Some(false));
        closed.client_ended(last);
        assert_eq!(closed.get(last), Some(true));
        closed.record(last, false);
        assert_eq!(closed.get(last), Some(false), "updated, not added twice");
        assert_eq!(closed.len(), CLOSED_REMEMBERED);
    }
}
