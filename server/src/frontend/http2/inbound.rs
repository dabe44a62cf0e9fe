//! The queues between the connection driver and its streams' sessions:
//! [`Inbound`], what a session reads, releasing each message's credit and
//! budget reservation once the session has forwarded it; and the bounded
//! outbound channel a session writes its response into.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures::task::AtomicWaker;
use futures::{Stream, StreamExt};
use konnq_shared::proto::Packet;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::super::budget::Reservation;
use super::super::session::Out;

/// What one Proxy stream's session reads: decoded packets in order, then the
/// end of the client's side (or an error naming its violation).
pub struct Inbound {
    pub(super) shared: Arc<InboundShared>,
}

pub(super) struct InboundShared {
    pub(super) state: Mutex<InboundState>,
    pub(super) conn: Arc<ConnShared>,
    pub(super) stream_id: u32,
}

#[derive(Default)]
pub(super) struct InboundState {
    pub(super) queue: VecDeque<Queued>,
    /// What the packet the session took last holds. The session asks for
    /// the next packet only after it has forwarded that one (written it
    /// into QUIC), so it is released then: the client never has more than
    /// about a stream window of bytes between itself and QUIC, and a
    /// stalled agent side stops the client instead of filling the server.
    taken: Held,
    ended: bool,
    waker: Option<Waker>,
}

/// A packet (or the status ending the stream) for the session.
pub(super) struct Queued {
    pub(super) item: Result<Packet, Status>,
    pub(super) held: Held,
}

/// What a received message holds until its session has forwarded it.
#[derive(Default)]
pub(super) struct Held {
    /// Bytes to credit back to the client's stream window.
    pub(super) credit: u32,
    /// Message bytes, counted in `konnq_server_frontend_buffered_bytes`.
    pub(super) bytes: u32,
    /// The message's partial-message budget reservation, if it had one.
    pub(super) reservation: Option<Reservation>,
}

impl InboundShared {
    pub(super) fn push(&self, item: Result<Packet, Status>, held: Held) {
        self.conn.buffered.inc_by(i64::from(held.bytes));
        let mut st = self.state.lock().unwrap();
        if st.ended {
            // The session is gone (the connection stops pushing once it
            // ends the stream itself): nothing will take the packet.
            drop(st);
            self.conn.release(self.stream_id, held);
            return;
        }
        st.queue.push_back(Queued { item, held });
        if let Some(w) = st.waker.take() {
            w.wake();
        }
    }

    pub(super) fn end(&self) {
        let mut st = self.state.lock().unwrap();
        st.ended = true;
        if let Some(w) = st.waker.take() {
            w.wake();
        }
    }

    /// Ends a stream the client abandoned while it was still sending: the
    /// session reads `CANCELLED`, what a gRPC server reports for a stream
    /// reset by its client or lost with its connection.
    pub(super) fn cancel(&self, why: &str) {
        self.push(Err(Status::cancelled(why)), Held::default());
        self.end();
    }
}

impl Stream for Inbound {
    type Item = Result<Packet, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let shared = &self.shared;
        let mut st = shared.state.lock().unwrap();
        let forwarded = std::mem::take(&mut st.taken);
        let poll = match st.queue.pop_front() {
            Some(Queued { item, held }) => {
                st.taken = held;
                if st.queue.is_empty() {
                    st.queue = VecDeque::new();
                }
                Poll::Ready(Some(item))
            }
            None if st.ended => Poll::Ready(None),
            None => {
                st.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        };
        drop(st);
        shared.conn.release(shared.stream_id, forwarded);
        poll
    }
}

impl Drop for Inbound {
    /// Packets the session never took (or did not forward) still release
    /// what they hold, or a long-lived connection would shrink its windows
    /// and budget away.
    fn drop(&mut self) {
        let held: Vec<Held> = {
            let mut st = self.shared.state.lock().unwrap();
            st.ended = true;
            let taken = std::mem::take(&mut st.taken);
            std::iter::once(taken).chain(st.queue.drain(..).map(|q| q.held)).collect()
        };
        for held in held {
            self.shared.conn.release(self.shared.stream_id, held);
        }
    }
}

/// Shared between a connection and its streams' inbound queues: bytes the
/// sessions forwarded, to be credited back with WINDOW_UPDATE.
pub(super) struct ConnShared {
    pub(super) consumed: Mutex<Vec<(u32, u32)>>,
    pub(super) waker: AtomicWaker,
    /// `konnq_server_frontend_buffered_bytes`: message bytes received and
    /// not yet forwarded, of every connection.
    pub(super) buffered: Gauge,
}

impl ConnShared {
    pub(super) fn new(buffered: Gauge) -> ConnShared {
        ConnShared { consumed: Mutex::new(Vec::new()), waker: AtomicWaker::new(), buffered }
    }

    /// A session is done with a message of `stream_id` (or never will take
    /// it): its bytes leave the gauge, its reservation goes back to the
    /// budgets and its credit to the connection task.
    pub(super) fn release(&self, stream_id: u32, held: Held) {
        let Held { credit, bytes, reservation } = held;
        drop(reservation);
        if bytes > 0 {
            self.buffered.dec_by(i64::from(bytes));
        }
        if credit > 0 {
            self.consumed.lock().unwrap().push((stream_id, credit));
            self.waker.wake();
        }
    }
}

/// One packet from a session, or the error status that ends its stream.
pub(super) type Item = Result<Out, Status>;

/// The outbound side of a stream as the connection polls it: the session's
/// packets, then `None` once every sender is gone.
pub(super) type Outbound = futures::stream::Chain<
    futures::stream::Map<ReceiverStream<Item>, fn(Item) -> Option<Item>>,
    futures::stream::Once<futures::future::Ready<Option<Item>>>,
>;

pub(super) fn outbound(rx: mpsc::Receiver<Item>) -> Outbound {
    let wrap: fn(Item) -> Option<Item> = Some;
    ReceiverStream::new(rx).map(wrap).chain(futures::stream::once(futures::future::ready(None)))
}
