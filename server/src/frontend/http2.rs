//! The gRPC `ProxyService` frontend's HTTP/2 server (RFC 9113), serving
//! `/ProxyService/Proxy` only.
//!
//! Why konnq has its own: kube-apiserver opens one HTTP/2 connection per
//! proxied connection, so per-connection memory is what a busy server holds.
//! A general-purpose HTTP/2 server allocates fixed read, write and HPACK
//! buffers (about 28 KiB) for every connection up front; this one sizes its
//! read buffer to the traffic (a few hundred bytes on an idle connection),
//! writes through a buffer that is freed whenever it drains, and never adds
//! to the HPACK dynamic table. It also accepts any `:authority`: real clients
//! send the Unix socket path there, raw or percent-encoded, which stricter
//! servers reset.
//!
//! One task per connection runs everything: frame parsing, flow control both
//! ways, HPACK decoding, keep-alive pings and graceful GOAWAY. Each Proxy
//! stream is served by [`session::run`] on its own task, connected by an
//! inbound queue and a bounded outbound channel. A message's bytes are
//! credited back to the client once its session has forwarded it into QUIC,
//! so a slow session or a stalled agent side stalls only its own stream and
//! client; a message larger than half the stream window is credited as it
//! arrives, and only within the partial-message budgets of [`super::budget`].
//!
//! Every protocol violation closes the connection with GOAWAY naming the
//! error (or resets just the stream, where RFC 9113 says a stream error),
//! counts `konnq_server_frontend_errors_total{kind="http2"}` and is logged;
//! other connections are untouched. A stream the client resets, or loses
//! with its connection, while still sending ends with `CANCELLED`, which
//! the session counts as upstream's stream error.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::task::AtomicWaker;
use futures::{Stream, StreamExt};
use konnq_protocol::hpack::Decoder;
use konnq_protocol::konnectivity::data_head;
use konnq_shared::proto::Packet;
use prometheus_client::metrics::gauge::Gauge;
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamMap;
use tonic::Status;
use tracing::{debug, warn};

use super::budget::{PartialBudget, Reservation, PROCESS_BUDGET};
use super::session::{self, Out, SessionCtx};

/// The one method served.
pub const PROXY_PATH: &[u8] = b"/ProxyService/Proxy";
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Packets buffered toward one client before the session waits: bounded, so
/// a client that stops reading stalls only its own connection.
const OUTBOUND_PACKETS: usize = 4;
/// Stream receive window we advertise: what one client may have sent that
/// its session has not yet written into QUIC. 256 KiB keeps a Unix-socket
/// or loopback client at full speed, and 64 uploading clients whose agent
/// side is slower hold 16 MiB in the server, not 64 MiB.
const STREAM_WINDOW: u32 = 256 * 1024;
/// Larger messages are credited as they arrive, within the partial-message
/// budgets. One no larger than half the window completes within it once the
/// messages before it are forwarded: credit not yet sent back is always
/// under a quarter window (WINDOW_UPDATEs go out a quarter window at a time).
const EARLY_CREDIT_ABOVE: usize = STREAM_WINDOW as usize / 2;
/// Connection receive window we advertise (credited as frames arrive; see
/// [`Connection::conn_credit`]).
const CONN_WINDOW: u32 = 4 * 1024 * 1024;
/// Concurrent streams per connection we allow.
const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Largest frame payload we accept (the protocol default; we advertise no other).
const MAX_FRAME: usize = 16_384;
/// Largest header block (HEADERS + CONTINUATION) we accept.
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// HPACK dynamic table size the client's encoder may use.
const HEADER_TABLE_SIZE: usize = 4096;
/// Smallest and largest read buffer; reads adapt between the two.
const READ_MIN: usize = 512;
const READ_MAX: usize = 64 * 1024;
/// Stop taking outbound packets while this much is waiting to be written.
const WRITE_HIGH: usize = 64 * 1024;
/// Stop reading while this much is waiting to be written (PING and
/// SETTINGS acks cannot pile up without bound).
const WRITE_STOP_READ: usize = 256 * 1024;
/// Keep-alive: close a connection whose PING is not answered this soon.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-connection settings from the configuration, and the process-wide
/// budget for partly received messages that clones share.
#[derive(Clone)]
pub struct Limits {
    /// Largest gRPC message accepted (`max-message-bytes`).
    pub max_message_bytes: usize,
    /// PING a connection idle this long (`frontend-keepalive-time`).
    pub keepalive_time: Duration,
    /// Bytes of partly received messages all connections may hold with
    /// early credit (see [`super::budget`]); each connection may hold one
    /// message of `max_message_bytes`.
    pub partial_budget: Arc<PartialBudget>,
}

impl Limits {
    /// With a process-wide budget of [`PROCESS_BUDGET`] (at least one
    /// message of the largest size), shown by `metrics`.
    pub fn new(max_message_bytes: usize, keepalive_time: Duration, metrics: &crate::metrics::Metrics) -> Limits {
        let limit = PROCESS_BUDGET.max(max_message_bytes + 5);
        let partial_budget = PartialBudget::new(limit, metrics.partial_message_bytes.clone());
        Limits { max_message_bytes, keepalive_time, partial_budget }
    }
}

// Frame types (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
// Flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;
// Error codes (RFC 9113 §7).
const NO_ERROR: u32 = 0x0;
const PROTOCOL_ERROR: u32 = 0x1;
const FLOW_CONTROL_ERROR: u32 = 0x3;
const STREAM_CLOSED: u32 = 0x5;
const FRAME_SIZE_ERROR: u32 = 0x6;
const REFUSED_STREAM: u32 = 0x7;
const COMPRESSION_ERROR: u32 = 0x9;
// Settings identifiers.
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;
const SETTINGS_ENABLE_PUSH: u16 = 0x2;
const MAX_WINDOW: i64 = (1 << 31) - 1;

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A connection error we reported to the client with GOAWAY.
    #[error("{reason} (GOAWAY code {code:#x})")]
    Protocol { code: u32, reason: String },
    #[error("no PING acknowledgement within {0:?}")]
    KeepAlive(Duration),
}

fn proto_err(code: u32, reason: impl Into<String>) -> ConnError {
    ConnError::Protocol { code, reason: reason.into() }
}

/// Serves the Proxy service on a stream of accepted connections until
/// `shutdown` resolves; then every connection gets GOAWAY and lives on until
/// its streams are done.
pub async fn serve<I, IO, E>(
    incoming: I,
    ctx: SessionCtx,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> Result<(), std::io::Error>
where
    I: Stream<Item = Result<IO, E>>,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    E: std::fmt::Display,
{
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut incoming = std::pin::pin!(super::accept::with_backoff(incoming, "gRPC frontend"));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            next = incoming.next() => match next {
                Some(io) => {
                    let (ctx, limits) = (ctx.clone(), limits.clone());
                    let mut stop = stop_rx.clone();
                    tokio::spawn(async move {
                        let stopping = Box::pin(async move {
                            let _ = stop.wait_for(|s| *s).await;
                        });
                        let metrics = ctx.metrics.clone();
                        if let Err(e) = Connection::new(io, ctx, limits, stopping).run().await {
                            match e {
                                ConnError::Io(e) => debug!("frontend connection ended: {e}"),
                                e => {
                                    metrics.frontend_error("http2");
                                    warn!("frontend HTTP/2 connection closed: {e}");
                                }
                            }
                        }
                    });
                }
                None => break,
            },
        }
    }
    stop_tx.send_replace(true);
    Ok(())
}

/// What one Proxy stream's session reads: decoded packets in order, then the
/// end of the client's side (or an error naming its violation).
pub struct Inbound {
    shared: Arc<InboundShared>,
}

struct InboundShared {
    state: Mutex<InboundState>,
    conn: Arc<ConnShared>,
    stream_id: u32,
}

#[derive(Default)]
struct InboundState {
    queue: VecDeque<Queued>,
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
struct Queued {
    item: Result<Packet, Status>,
    held: Held,
}

/// What a received message holds until its session has forwarded it.
#[derive(Default)]
struct Held {
    /// Bytes to credit back to the client's stream window.
    credit: u32,
    /// Message bytes, counted in `konnq_server_frontend_buffered_bytes`.
    bytes: u32,
    /// The message's partial-message budget reservation, if it had one.
    reservation: Option<Reservation>,
}

impl InboundShared {
    fn push(&self, item: Result<Packet, Status>, held: Held) {
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

    fn end(&self) {
        let mut st = self.state.lock().unwrap();
        st.ended = true;
        if let Some(w) = st.waker.take() {
            w.wake();
        }
    }

    /// Ends a stream the client abandoned while it was still sending: the
    /// session reads `CANCELLED`, what a gRPC server reports for a stream
    /// reset by its client or lost with its connection.
    fn cancel(&self, why: &str) {
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
struct ConnShared {
    consumed: Mutex<Vec<(u32, u32)>>,
    waker: AtomicWaker,
    /// `konnq_server_frontend_buffered_bytes`: message bytes received and
    /// not yet forwarded, of every connection.
    buffered: Gauge,
}

impl ConnShared {
    fn new(buffered: Gauge) -> ConnShared {
        ConnShared { consumed: Mutex::new(Vec::new()), waker: AtomicWaker::new(), buffered }
    }

    /// A session is done with a message of `stream_id` (or never will take
    /// it): its bytes leave the gauge, its reservation goes back to the
    /// budgets and its credit to the connection task.
    fn release(&self, stream_id: u32, held: Held) {
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
type Item = Result<Out, Status>;

/// The outbound side of a stream as the connection polls it: the session's
/// packets, then `None` once every sender is gone.
type Outbound = futures::stream::Chain<
    futures::stream::Map<ReceiverStream<Item>, fn(Item) -> Option<Item>>,
    futures::stream::Once<futures::future::Ready<Option<Item>>>,
>;

fn outbound(rx: mpsc::Receiver<Item>) -> Outbound {
    let wrap: fn(Item) -> Option<Item> = Some;
    ReceiverStream::new(rx).map(wrap).chain(futures::stream::once(futures::future::ready(None)))
}

struct StreamState {
    /// `None` once the client's side ended or we stopped reading it.
    inbound: Option<Arc<InboundShared>>,
    /// What the client may still send before our next WINDOW_UPDATE.
    recv_window: i64,
    /// Received bytes not yet credited back.
    owed: u32,
    /// A gRPC message being reassembled from DATA frames.
    partial: Partial,
    /// Our send window on this stream.
    send_window: i64,
    /// Encoded response bytes the windows did not let out yet, in order
    /// (a message's head, then its payload as the session's buffers).
    pending: VecDeque<Bytes>,
    /// Bytes in `pending`.
    pending_len: usize,
    /// The outbound receiver while it is out of the poll set because the
    /// stream has pending bytes.
    parked: Option<Outbound>,
    /// Trailers sent: the response is complete.
    done: bool,
    /// The client's side ended (END_STREAM): anything but WINDOW_UPDATE,
    /// PRIORITY or RST_STREAM from it on this stream is a STREAM_CLOSED error.
    client_ended: bool,
    /// A request we do not serve: no session; the response (see
    /// [`Connection::refuse`]) goes out as the windows allow while the
    /// request's body, if any, is read and dropped.
    refused: bool,
    /// The request's content-length, checked against its DATA.
    content_length: Option<u64>,
    /// DATA payload bytes received, padding excluded.
    data_received: u64,
}

impl StreamState {
    fn new(send_window: i64, end_stream: bool, content_length: Option<u64>) -> StreamState {
        StreamState {
            inbound: None,
            recv_window: STREAM_WINDOW as i64,
            owed: 0,
            partial: Partial::default(),
            send_window,
            pending: VecDeque::new(),
            pending_len: 0,
            parked: None,
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
struct ClosedStreams {
    order: VecDeque<u32>,
    peer_done: HashMap<u32, bool>,
}

/// How many closed streams a connection remembers.
const CLOSED_REMEMBERED: usize = 1024;

impl ClosedStreams {
    fn record(&mut self, id: u32, peer_done: bool) {
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
    fn get(&self, id: u32) -> Option<bool> {
        self.peer_done.get(&id).copied()
    }

    fn client_ended(&mut self, id: u32) {
        if let Some(done) = self.peer_done.get_mut(&id) {
            *done = true;
        }
    }
}

/// Fields of a header block checked as RFC 9113 §8.2-8.3 require of a
/// request (and §8.1 of trailers): the first problem found, if any.
#[derive(Default)]
struct FieldCheck {
    method: Option<Vec<u8>>,
    path: Option<Vec<u8>>,
    /// How many of :method, :scheme, :path, :authority were seen.
    counts: [u8; 4],
    pseudo: bool,
    regular_seen: bool,
    grpc: bool,
    content_length: Option<u64>,
    malformed: Option<String>,
}

impl FieldCheck {
    fn field(&mut self, name: &[u8], value: &[u8]) {
        if self.malformed.is_some() {
            return;
        }
        self.malformed = self.problem(name, value);
    }

    fn problem(&mut self, name: &[u8], value: &[u8]) -> Option<String> {
        let shown = || konnq_shared::logging::untrusted(&String::from_utf8_lossy(name)).to_string();
        if let Some(pseudo) = name.strip_prefix(b":") {
            self.pseudo = true;
            if self.regular_seen {
                return Some(format!("pseudo-header {} after a regular field", shown()));
            }
            let slot = match pseudo {
                b"method" => 0,
                b"scheme" => 1,
                b"path" => 2,
                b"authority" => 3,
                _ => return Some(format!("pseudo-header {} is not one of a request", shown())),
            };
            self.counts[slot] += 1;
            if self.counts[slot] > 1 {
                return Some(format!("pseudo-header {} repeated", shown()));
            }
            match slot {
                0 => self.method = Some(value.to_vec()),
                2 if value.is_empty() => return Some("empty :path".into()),
                2 => self.path = Some(value.to_vec()),
                _ => {}
            }
            return None;
        }
        self.regular_seen = true;
        if name.is_empty() || name.iter().any(|b| b.is_ascii_uppercase()) {
            return Some(format!("field name {} is empty or has uppercase letters", shown()));
        }
        match name {
            b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding" | b"upgrade" => {
                Some(format!("connection-specific field {}", shown()))
            }
            b"te" if value != b"trailers" => Some("te other than \"trailers\"".into()),
            b"content-type" => {
                self.grpc = value.starts_with(b"application/grpc");
                None
            }
            b"content-length" => {
                let n = std::str::from_utf8(value).ok().and_then(|v| v.parse::<u64>().ok());
                match (n, self.content_length) {
                    (None, _) => Some("content-length not a number".into()),
                    (Some(n), Some(before)) if n != before => Some("content-length given twice, differently".into()),
                    (Some(n), _) => {
                        self.content_length = Some(n);
                        None
                    }
                }
            }
            _ => None,
        }
    }

    /// A request's problem: a malformed field, or a pseudo-header missing.
    fn request_problem(&self) -> Option<String> {
        if let Some(m) = &self.malformed {
            return Some(m.clone());
        }
        // CONNECT carries no :scheme or :path (RFC 9113 §8.5).
        let connect = self.method.as_deref() == Some(b"CONNECT");
        let needed: &[(usize, &str)] =
            if connect { &[(0, ":method")] } else { &[(0, ":method"), (1, ":scheme"), (2, ":path")] };
        needed.iter().find(|(slot, _)| self.counts[*slot] == 0).map(|(_, name)| format!("no {name}"))
    }
}

enum Event {
    Read(std::io::Result<usize>),
    Wrote(std::io::Result<usize>),
    Flushed(std::io::Result<()>),
    Out(u32, Option<Item>),
    Credit,
    /// A partial-message budget has room for a stream that waits for it.
    Budget,
    Timer,
    Stop,
}

/// A gRPC message being reassembled from DATA frames.
#[derive(Default)]
struct Partial {
    buf: BytesMut,
    /// Bytes of `buf` credited back before the message was complete.
    credited: u32,
    /// The whole message's reservation, once it has one.
    reservation: Option<Reservation>,
}

impl Partial {
    /// The whole message's size, prefix included, once the prefix is in.
    fn size(&self) -> Option<usize> {
        let b = &self.buf;
        (b.len() >= 5).then(|| 5 + u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize)
    }

    /// The whole message's size if it is too large to complete within the
    /// stream window without early credit.
    fn early_credit_size(&self) -> Option<usize> {
        self.size().filter(|&size| size > EARLY_CREDIT_ABOVE)
    }

    fn uncredited(&self) -> u32 {
        self.buf.len() as u32 - self.credited
    }
}

/// A header block waiting for CONTINUATION frames.
struct PendingBlock {
    stream_id: u32,
    end_stream: bool,
    /// The HEADERS frame made the stream depend on itself.
    self_dependent: bool,
    block: Vec<u8>,
}

struct Connection<IO> {
    io: IO,
    ctx: SessionCtx,
    max_message_bytes: usize,
    keepalive_time: Duration,
    stopping: Pin<Box<dyn Future<Output = ()> + Send>>,
    stopped: bool,
    read_buf: BytesMut,
    /// Next read's buffer size; grows while reads fill it, shrinks when idle.
    read_hint: usize,
    preface_seen: bool,
    eof: bool,
    write_buf: BytesMut,
    /// Written bytes may sit in a TLS layer until flushed.
    needs_flush: bool,
    decoder: Decoder,
    /// A header block waiting for CONTINUATION.
    header_block: Option<PendingBlock>,
    streams: HashMap<u32, StreamState>,
    closed: ClosedStreams,
    outbound: StreamMap<u32, Outbound>,
    shared: Arc<ConnShared>,
    last_stream_id: u32,
    conn_recv_window: i64,
    conn_owed: u32,
    conn_send_window: i64,
    peer_initial_window: i64,
    peer_max_frame: usize,
    /// Partial-message budgets: this connection's and the process's.
    conn_budget: Arc<PartialBudget>,
    process_budget: Arc<PartialBudget>,
    /// Streams whose partial message waits for a reservation, oldest first.
    starved: VecDeque<u32>,
    /// Woken when a budget gets bytes back, while `starved` is not empty.
    budget_waker: Arc<AtomicWaker>,
    /// Keep-alive: when to ping next, or by when the PING must be answered.
    timer: Pin<Box<Sleep>>,
    ping_outstanding: bool,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Connection<IO> {
    fn new(io: IO, ctx: SessionCtx, limits: Limits, stopping: Pin<Box<dyn Future<Output = ()> + Send>>) -> Self {
        let shared = Arc::new(ConnShared::new(ctx.metrics.frontend_buffered.clone()));
        Connection {
            io,
            ctx,
            max_message_bytes: limits.max_message_bytes,
            keepalive_time: limits.keepalive_time,
            stopping,
            stopped: false,
            read_buf: BytesMut::new(),
            read_hint: READ_MIN,
            preface_seen: false,
            eof: false,
            write_buf: BytesMut::new(),
            needs_flush: false,
            decoder: Decoder::new(HEADER_TABLE_SIZE),
            header_block: None,
            streams: HashMap::new(),
            closed: ClosedStreams::default(),
            outbound: StreamMap::new(),
            shared,
            last_stream_id: 0,
            conn_recv_window: CONN_WINDOW as i64,
            conn_owed: 0,
            conn_send_window: 65_535,
            peer_initial_window: 65_535,
            peer_max_frame: MAX_FRAME,
            conn_budget: PartialBudget::new(limits.max_message_bytes + 5, Default::default()),
            process_budget: limits.partial_budget,
            starved: VecDeque::new(),
            budget_waker: Arc::new(AtomicWaker::new()),
            timer: Box::pin(tokio::time::sleep(limits.keepalive_time)),
            ping_outstanding: false,
        }
    }

    async fn run(mut self) -> Result<(), ConnError> {
        // Our SETTINGS and the connection window, sent at once.
        let mut settings = Vec::with_capacity(24);
        for (id, value) in [
            (SETTINGS_MAX_CONCURRENT_STREAMS, MAX_CONCURRENT_STREAMS),
            (SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
            (SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_BLOCK as u32),
            (SETTINGS_ENABLE_PUSH, 0),
        ] {
            settings.extend_from_slice(&id.to_be_bytes());
            settings.extend_from_slice(&value.to_be_bytes());
        }
        self.frame(SETTINGS, 0, 0, &settings);
        self.window_update(0, CONN_WINDOW - 65_535);
        let result = self.serve().await;
        if let Err(ConnError::Protocol { code, ref reason }) = result {
            // Best effort: tell the client why, then close.
            let mut payload = Vec::with_capacity(8 + reason.len());
            payload.extend_from_slice(&self.last_stream_id.to_be_bytes());
            payload.extend_from_slice(&code.to_be_bytes());
            payload.extend_from_slice(reason.as_bytes());
            self.frame(GOAWAY, 0, 0, &payload);
            let _ = tokio::time::timeout(Duration::from_secs(1), self.flush()).await;
        }
        for st in self.streams.values() {
            if let Some(inbound) = &st.inbound {
                inbound.cancel("connection closed");
            }
        }
        result
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.io.write_all(&self.write_buf).await?;
        self.write_buf = BytesMut::new();
        self.io.flush().await
    }

    async fn serve(&mut self) -> Result<(), ConnError> {
        loop {
            if self.eof && self.write_buf.is_empty() && !self.needs_flush {
                return Ok(());
            }
            if self.stopped && self.streams.is_empty() && self.write_buf.is_empty() {
                return Ok(());
            }
            match std::future::poll_fn(|cx| self.poll_event(cx)).await {
                Event::Read(Ok(0)) => {
                    self.eof = true;
                    for st in self.streams.values_mut() {
                        if let Some(inbound) = st.inbound.take() {
                            inbound.cancel("the client closed the connection");
                        }
                    }
                    self.streams.clear();
                    self.outbound = StreamMap::new();
                }
                Event::Read(Ok(n)) => {
                    self.adapt_read_hint(n);
                    self.process_frames()?;
                    if !self.ping_outstanding {
                        self.timer.as_mut().reset(Instant::now() + self.keepalive_time);
                    }
                }
                Event::Read(Err(e)) => return Err(e.into()),
                Event::Wrote(Ok(0)) => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into()),
                Event::Wrote(Ok(n)) => {
                    self.write_buf.advance(n);
                    if self.write_buf.is_empty() {
                        // Freed, so an idle connection holds no write buffer.
                        self.write_buf = BytesMut::new();
                        self.needs_flush = true;
                    }
                }
                Event::Flushed(r) => {
                    r?;
                    self.needs_flush = false;
                }
                Event::Wrote(Err(e)) => return Err(e.into()),
                Event::Out(id, item) => self.on_outbound(id, item),
                Event::Credit => self.send_credits(),
                Event::Budget => self.retry_starved(),
                Event::Timer => {
                    if self.ping_outstanding {
                        return Err(ConnError::KeepAlive(KEEPALIVE_TIMEOUT));
                    }
                    self.frame(PING, 0, 0, b"konnq-ka");
                    self.ping_outstanding = true;
                    self.timer.as_mut().reset(Instant::now() + KEEPALIVE_TIMEOUT);
                }
                Event::Stop => {
                    self.stopped = true;
                    let mut payload = [0u8; 8];
                    payload[..4].copy_from_slice(&self.last_stream_id.to_be_bytes());
                    self.frame(GOAWAY, 0, 0, &payload);
                }
            }
        }
    }

    /// The next thing to do. Outbound packets are gathered before a write,
    /// so a burst goes out in one system call; reading and gathering stop
    /// while the write buffer is full, so both stay bounded.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        if !self.eof && self.write_buf.len() < WRITE_STOP_READ {
            let spare = self.read_buf.capacity() - self.read_buf.len();
            let wanted = self.wanted_bytes().max(READ_MIN);
            if spare < wanted {
                self.read_buf.reserve(self.read_hint.max(wanted));
            }
            if let Poll::Ready(r) = tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read_buf) {
                return Poll::Ready(Event::Read(r));
            }
        }
        self.shared.waker.register(cx.waker());
        if !self.shared.consumed.lock().unwrap().is_empty() {
            return Poll::Ready(Event::Credit);
        }
        if self.conn_send_window > 0 && self.write_buf.len() < WRITE_HIGH && !self.outbound.is_empty() {
            if let Poll::Ready(Some((id, item))) = self.outbound.poll_next_unpin(cx) {
                return Poll::Ready(Event::Out(id, item));
            }
        }
        if !self.write_buf.is_empty() {
            if let Poll::Ready(r) = Pin::new(&mut self.io).poll_write(cx, &self.write_buf) {
                return Poll::Ready(Event::Wrote(r));
            }
        } else if self.needs_flush {
            if let Poll::Ready(r) = Pin::new(&mut self.io).poll_flush(cx) {
                return Poll::Ready(Event::Flushed(r));
            }
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Event::Timer);
        }
        if !self.stopped && self.stopping.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Event::Stop);
        }
        if let Some(need) = self.starved_need() {
            self.budget_waker.register(cx.waker());
            if self.conn_budget.fits(need) && self.process_budget.fits(need) {
                return Poll::Ready(Event::Budget);
            }
        }
        Poll::Pending
    }

    /// Bytes the frame at the head of the read buffer still needs.
    fn wanted_bytes(&self) -> usize {
        if self.read_buf.len() >= 9 {
            let len = u32::from_be_bytes([0, self.read_buf[0], self.read_buf[1], self.read_buf[2]]) as usize;
            (9 + len).saturating_sub(self.read_buf.len())
        } else {
            0
        }
    }

    fn adapt_read_hint(&mut self, n: usize) {
        if n >= self.read_hint {
            self.read_hint = (self.read_hint * 2).min(READ_MAX);
        } else if n < self.read_hint / 4 {
            self.read_hint = (self.read_hint / 2).max(READ_MIN);
        }
    }

    fn frame(&mut self, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) {
        self.frame_head(kind, flags, stream_id, payload.len());
        self.write_buf.extend_from_slice(payload);
    }

    fn frame_head(&mut self, kind: u8, flags: u8, stream_id: u32, len: usize) {
        put_frame_head(&mut self.write_buf, kind, flags, stream_id, len);
    }

    fn window_update(&mut self, stream_id: u32, n: u32) {
        self.frame(WINDOW_UPDATE, 0, stream_id, &n.to_be_bytes());
    }

    fn rst(&mut self, stream_id: u32, code: u32) {
        self.frame(RST_STREAM, 0, stream_id, &code.to_be_bytes());
    }

    /// Parses every complete frame in the read buffer.
    fn process_frames(&mut self) -> Result<(), ConnError> {
        if !self.preface_seen {
            let n = self.read_buf.len().min(PREFACE.len());
            if self.read_buf[..n] != PREFACE[..n] {
                return Err(proto_err(PROTOCOL_ERROR, "not an HTTP/2 connection preface"));
            }
            if n < PREFACE.len() {
                return Ok(());
            }
            self.read_buf.advance(PREFACE.len());
            self.preface_seen = true;
        }
        while self.read_buf.len() >= 9 {
            let head = &self.read_buf[..9];
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let stream_id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            if len > MAX_FRAME {
                return Err(proto_err(FRAME_SIZE_ERROR, format!("frame of {len} bytes exceeds {MAX_FRAME}")));
            }
            if self.read_buf.len() < 9 + len {
                break;
            }
            self.read_buf.advance(9);
            let payload = self.read_buf.split_to(len).freeze();
            self.on_frame(kind, flags, stream_id, payload)?;
        }
        if self.read_buf.is_empty() && self.read_buf.capacity() > READ_MIN {
            self.read_buf = BytesMut::new();
        }
        Ok(())
    }

    fn on_frame(&mut self, kind: u8, flags: u8, stream_id: u32, payload: Bytes) -> Result<(), ConnError> {
        if let Some(pending) = &self.header_block {
            if kind != CONTINUATION || stream_id != pending.stream_id {
                return Err(proto_err(PROTOCOL_ERROR, "header block interrupted before END_HEADERS"));
            }
        }
        match kind {
            DATA => self.on_data(flags, stream_id, payload),
            HEADERS => self.on_headers(flags, stream_id, payload),
            CONTINUATION => {
                let Some(mut pending) = self.header_block.take() else {
                    return Err(proto_err(PROTOCOL_ERROR, "CONTINUATION without HEADERS"));
                };
                if pending.block.len() + payload.len() > MAX_HEADER_BLOCK {
                    return Err(proto_err(PROTOCOL_ERROR, format!("header block over {MAX_HEADER_BLOCK} bytes")));
                }
                pending.block.extend_from_slice(&payload);
                if flags & END_HEADERS != 0 {
                    self.on_header_block(pending)
                } else {
                    self.header_block = Some(pending);
                    Ok(())
                }
            }
            PRIORITY => {
                if stream_id == 0 {
                    return Err(proto_err(PROTOCOL_ERROR, "PRIORITY on stream 0"));
                }
                if payload.len() != 5 {
                    return Err(proto_err(FRAME_SIZE_ERROR, "PRIORITY frame not 5 bytes"));
                }
                if depends_on(&payload) == stream_id {
                    // A stream error (RFC 9113 §5.3.1); priorities are
                    // otherwise ignored.
                    self.reset_stream(stream_id, PROTOCOL_ERROR, "stream depends on itself");
                }
                Ok(())
            }
            RST_STREAM => {
                if stream_id == 0 || payload.len() != 4 {
                    return Err(proto_err(PROTOCOL_ERROR, "malformed RST_STREAM"));
                }
                if stream_id > self.last_stream_id {
                    return Err(proto_err(PROTOCOL_ERROR, "RST_STREAM on an idle stream"));
                }
                if let Some(st) = self.streams.get_mut(&stream_id) {
                    st.client_ended = true;
                    if let Some(inbound) = &st.inbound {
                        inbound.cancel("stream reset by the client");
                    }
                }
                self.close_stream(stream_id);
                self.closed.client_ended(stream_id);
                Ok(())
            }
            SETTINGS => self.on_settings(flags, stream_id, &payload),
            PUSH_PROMISE => Err(proto_err(PROTOCOL_ERROR, "clients must not send PUSH_PROMISE")),
            PING => {
                if stream_id != 0 || payload.len() != 8 {
                    return Err(proto_err(FRAME_SIZE_ERROR, "malformed PING"));
                }
                if flags & ACK == 0 {
                    self.frame(PING, ACK, 0, &payload);
                } else if self.ping_outstanding {
                    self.ping_outstanding = false;
                    self.timer.as_mut().reset(Instant::now() + self.keepalive_time);
                }
                Ok(())
            }
            GOAWAY => {
                if stream_id != 0 || payload.len() < 8 {
                    return Err(proto_err(PROTOCOL_ERROR, "malformed GOAWAY"));
                }
                // The client opens no more streams; the open ones finish.
                debug!("client sent GOAWAY");
                Ok(())
            }
            WINDOW_UPDATE => self.on_window_update(stream_id, &payload),
            // Unknown frame types are ignored (RFC 9113 §4.1).
            _ => Ok(()),
        }
    }

    fn on_settings(&mut self, flags: u8, stream_id: u32, payload: &[u8]) -> Result<(), ConnError> {
        if stream_id != 0 {
            return Err(proto_err(PROTOCOL_ERROR, "SETTINGS on a stream"));
        }
        if flags & ACK != 0 {
            if !payload.is_empty() {
                return Err(proto_err(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload"));
            }
            return Ok(());
        }
        if !payload.len().is_multiple_of(6) {
            return Err(proto_err(FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6"));
        }
        for entry in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([entry[0], entry[1]]);
            let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
            match id {
                SETTINGS_INITIAL_WINDOW_SIZE => {
                    if value as i64 > MAX_WINDOW {
                        return Err(proto_err(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE above 2^31-1"));
                    }
                    let delta = value as i64 - self.peer_initial_window;
                    self.peer_initial_window = value as i64;
                    for st in self.streams.values_mut() {
                        st.send_window += delta;
                        if st.send_window > MAX_WINDOW {
                            return Err(proto_err(FLOW_CONTROL_ERROR, "stream window above 2^31-1"));
                        }
                    }
                }
                SETTINGS_MAX_FRAME_SIZE => {
                    if !(16_384..=(1 << 24) - 1).contains(&value) {
                        return Err(proto_err(PROTOCOL_ERROR, format!("MAX_FRAME_SIZE {value} out of range")));
                    }
                    self.peer_max_frame = value as usize;
                }
                SETTINGS_ENABLE_PUSH if value > 1 => {
                    return Err(proto_err(PROTOCOL_ERROR, "ENABLE_PUSH not 0 or 1"));
                }
                // HEADER_TABLE_SIZE: our encoder never uses the dynamic
                // table. Others: nothing to adjust.
                _ => {}
            }
        }
        self.frame(SETTINGS, ACK, 0, &[]);
        self.flush_pending();
        Ok(())
    }

    fn on_window_update(&mut self, stream_id: u32, payload: &[u8]) -> Result<(), ConnError> {
        if payload.len() != 4 {
            return Err(proto_err(FRAME_SIZE_ERROR, "WINDOW_UPDATE not 4 bytes"));
        }
        let inc = (u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff) as i64;
        if stream_id == 0 {
            if inc == 0 {
                return Err(proto_err(PROTOCOL_ERROR, "connection WINDOW_UPDATE of 0"));
            }
            self.conn_send_window += inc;
            if self.conn_send_window > MAX_WINDOW {
                return Err(proto_err(FLOW_CONTROL_ERROR, "connection window above 2^31-1"));
            }
        } else if stream_id > self.last_stream_id {
            return Err(proto_err(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream"));
        } else if inc == 0 {
            // A stream error whatever the stream's state (RFC 9113 §6.9).
            self.reset_stream(stream_id, PROTOCOL_ERROR, "stream WINDOW_UPDATE of 0");
            return Ok(());
        } else if let Some(st) = self.streams.get_mut(&stream_id) {
            st.send_window += inc;
            if st.send_window > MAX_WINDOW {
                self.reset_stream(stream_id, FLOW_CONTROL_ERROR, "stream window above 2^31-1");
                return Ok(());
            }
        }
        self.flush_pending();
        Ok(())
    }

    fn on_headers(&mut self, flags: u8, stream_id: u32, mut payload: Bytes) -> Result<(), ConnError> {
        if stream_id == 0 {
            return Err(proto_err(PROTOCOL_ERROR, "HEADERS on stream 0"));
        }
        if flags & PADDED != 0 {
            payload = unpad(payload)?;
        }
        let mut self_dependent = false;
        if flags & PRIORITY_FLAG != 0 {
            if payload.len() < 5 {
                return Err(proto_err(PROTOCOL_ERROR, "HEADERS too short for its priority"));
            }
            self_dependent = depends_on(&payload) == stream_id;
            payload.advance(5);
        }
        let pending =
            PendingBlock { stream_id, end_stream: flags & END_STREAM != 0, self_dependent, block: payload.to_vec() };
        if flags & END_HEADERS != 0 {
            self.on_header_block(pending)
        } else {
            self.header_block = Some(pending);
            Ok(())
        }
    }

    fn on_header_block(&mut self, pending: PendingBlock) -> Result<(), ConnError> {
        let PendingBlock { stream_id, end_stream, self_dependent, block } = pending;
        // Every block is decoded, even for streams we refuse, so the HPACK
        // table stays in step with the client's.
        let mut check = FieldCheck::default();
        self.decoder
            .decode(&block, |name, value| check.field(name, value))
            .map_err(|e| proto_err(COMPRESSION_ERROR, format!("bad header block: {e}")))?;

        if stream_id <= self.last_stream_id {
            return self.on_trailers(stream_id, end_stream, &check);
        }
        if stream_id.is_multiple_of(2) {
            return Err(proto_err(PROTOCOL_ERROR, "client stream with an even id"));
        }
        self.last_stream_id = stream_id;
        if self_dependent {
            self.refuse_stream(stream_id, end_stream, PROTOCOL_ERROR, "stream depends on itself");
            return Ok(());
        }
        if self.stopped || self.streams.len() >= MAX_CONCURRENT_STREAMS as usize {
            self.rst(stream_id, REFUSED_STREAM);
            self.closed.record(stream_id, end_stream);
            return Ok(());
        }
        if let Some(problem) = check.request_problem() {
            // A malformed request: a stream error (RFC 9113 §8.1.1).
            self.refuse_stream(stream_id, end_stream, PROTOCOL_ERROR, &format!("malformed request: {problem}"));
            return Ok(());
        }
        let post = check.method.as_deref() == Some(b"POST");
        if !post || !check.grpc {
            // Not a gRPC call (a browser, curl, a scanner): a plain HTTP
            // answer saying what is served.
            let status: &[u8] = if post { b"415" } else { b"405" };
            self.refuse(stream_id, end_stream, check.content_length, Refusal::Http(status));
            return Ok(());
        }
        if check.path.as_deref() != Some(PROXY_PATH) {
            let path = String::from_utf8_lossy(check.path.as_deref().unwrap_or_default()).into_owned();
            let status = Status::unimplemented(format!("unknown method {path}"));
            self.refuse(stream_id, end_stream, check.content_length, Refusal::Grpc(status));
            return Ok(());
        }

        let inbound = Arc::new(InboundShared {
            state: Mutex::new(InboundState::default()),
            conn: Arc::clone(&self.shared),
            stream_id,
        });
        if end_stream {
            inbound.end();
        }
        let (tx, rx) = mpsc::channel(OUTBOUND_PACKETS);
        self.outbound.insert(stream_id, outbound(rx));
        let mut st = StreamState::new(self.peer_initial_window, end_stream, check.content_length);
        st.inbound = (!end_stream).then(|| Arc::clone(&inbound));
        self.streams.insert(stream_id, st);
        // Headers at once, as clients that wait for them before sending
        // (tonic's) expect.
        self.response_headers(stream_id);
        tokio::spawn(session::run(Inbound { shared: inbound }, tx, self.ctx.clone()));
        Ok(())
    }

    /// Answers a request we do not serve. The stream stays open until the
    /// response is out (a plain HTTP answer has a body, sent as the client's
    /// windows allow) and the client's side has ended; what the client
    /// sends meanwhile is read, checked and dropped.
    fn refuse(&mut self, id: u32, end_stream: bool, content_length: Option<u64>, refusal: Refusal) {
        self.ctx.metrics.frontend_error("http2_request");
        let mut st = StreamState::new(self.peer_initial_window, end_stream, content_length);
        st.refused = true;
        match refusal {
            Refusal::Grpc(status) => {
                debug!(stream_id = id, "refusing request: {}", konnq_shared::logging::untrusted(status.message()));
                self.streams.insert(id, st);
                self.trailers(id, false, &status);
                self.end_refused(id);
                if !end_stream {
                    // A gRPC client still sending is asked to stop, as
                    // after any complete response (RFC 9113 §8.1).
                    self.rst(id, NO_ERROR);
                    self.close_stream(id);
                }
            }
            Refusal::Http(code) => {
                debug!(stream_id = id, status = %String::from_utf8_lossy(code), "refusing a request that is no gRPC call");
                let body = Bytes::from_static(REFUSAL_BODY);
                st.pending_len = body.len();
                st.pending.push_back(body);
                self.streams.insert(id, st);
                let mut block = Vec::with_capacity(48);
                literal(&mut block, b":status", code);
                literal(&mut block, b"content-type", b"text/plain; charset=utf-8");
                self.frame(HEADERS, END_HEADERS, id, &block);
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
    fn refuse_stream(&mut self, id: u32, end_stream: bool, code: u32, why: &str) {
        debug!(stream_id = id, "resetting stream: {why}");
        self.ctx.metrics.frontend_error("http2_request");
        self.rst(id, code);
        self.closed.record(id, end_stream);
    }

    /// A stream error on a stream that may be open or closed: RST_STREAM,
    /// and its session, if any, told.
    fn reset_stream(&mut self, id: u32, code: u32, why: &str) {
        debug!(stream_id = id, "resetting stream: {why}");
        if let Some(inbound) = self.streams.get(&id).and_then(|st| st.inbound.as_ref()) {
            inbound.cancel(why);
        }
        self.rst(id, code);
        self.close_stream(id);
    }

    /// A header block on a stream opened before: trailers, which end the
    /// client's side. Without END_STREAM it is no trailer; on a stream we
    /// never opened it opens a stream whose identifier is not greater than
    /// the last one (RFC 9113 §5.1.1); after the client's side ended, it is
    /// a STREAM_CLOSED error (§5.1).
    fn on_trailers(&mut self, stream_id: u32, end_stream: bool, check: &FieldCheck) -> Result<(), ConnError> {
        let Some(st) = self.streams.get_mut(&stream_id) else {
            return match self.closed.get(stream_id) {
                Some(true) => Err(proto_err(STREAM_CLOSED, format!("HEADERS on closed stream {stream_id}"))),
                // Trailers that crossed our end of the stream.
                Some(false) if end_stream => Ok(()),
                _ => {
                    let last = self.last_stream_id;
                    Err(proto_err(
                        PROTOCOL_ERROR,
                        format!(
                            "stream identifier went backwards: {stream_id} is not greater than the last one, {last}"
                        ),
                    ))
                }
            };
        };
        if st.client_ended {
            self.reset_stream(stream_id, STREAM_CLOSED, "HEADERS after the client's END_STREAM");
            return Ok(());
        }
        if !end_stream {
            return Err(proto_err(PROTOCOL_ERROR, "second HEADERS without END_STREAM"));
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
            self.reset_stream(stream_id, PROTOCOL_ERROR, &format!("malformed request: {problem}"));
            return Ok(());
        }
        if let Some(inbound) = st.inbound.take() {
            inbound.end();
        }
        if st.refused && st.done {
            self.close_stream(stream_id);
        }
        Ok(())
    }

    fn on_data(&mut self, flags: u8, stream_id: u32, mut payload: Bytes) -> Result<(), ConnError> {
        if stream_id == 0 {
            return Err(proto_err(PROTOCOL_ERROR, "DATA on stream 0"));
        }
        let flow_len = payload.len() as u32;
        if flow_len as i64 > self.conn_recv_window {
            return Err(proto_err(FLOW_CONTROL_ERROR, "DATA beyond the connection window"));
        }
        self.conn_recv_window -= flow_len as i64;
        self.conn_credit(flow_len);
        if flags & PADDED != 0 {
            payload = unpad(payload)?;
        }
        let end_stream = flags & END_STREAM != 0;
        let Some(st) = self.streams.get_mut(&stream_id) else {
            if stream_id > self.last_stream_id {
                return Err(proto_err(PROTOCOL_ERROR, "DATA on an idle stream"));
            }
            // A closed stream (its bytes counted on the connection above):
            // the client's error if its side had ended (RFC 9113 §6.1),
            // otherwise sent before our RST_STREAM reached it.
            if self.closed.get(stream_id) == Some(true) {
                self.rst(stream_id, STREAM_CLOSED);
            }
            return Ok(());
        };
        if st.client_ended {
            self.reset_stream(stream_id, STREAM_CLOSED, "DATA after the client's END_STREAM");
            return Ok(());
        }
        if flow_len as i64 > st.recv_window {
            self.reset_stream(stream_id, FLOW_CONTROL_ERROR, "DATA beyond the stream window");
            return Ok(());
        }
        st.recv_window -= flow_len as i64;
        st.data_received += payload.len() as u64;
        st.client_ended = end_stream;
        if let Some(n) = st.content_length {
            if st.data_received > n || (end_stream && st.data_received != n) {
                let why = format!("malformed request: content-length {n} but {} bytes of DATA", st.data_received);
                self.reset_stream(stream_id, PROTOCOL_ERROR, &why);
                return Ok(());
            }
        }
        let Some(inbound) = st.inbound.clone() else {
            // A refused request's body, or one we stopped reading: dropped.
            // A refused stream ends once both sides have; one whose window
            // the client used up without ending is reset.
            let (refused, done, window) = (st.refused, st.done, st.recv_window);
            if refused && done && end_stream {
                self.close_stream(stream_id);
            } else if refused && window == 0 {
                self.reset_stream(stream_id, NO_ERROR, "a refused request's body is too long");
            }
            return Ok(());
        };
        // Credit accounting: padding is credited now; a message's bytes once
        // its session has forwarded it, so a slow session or a stalled agent
        // stalls only its own stream and client; bytes of a message larger
        // than half the window as they arrive if it holds a budget
        // reservation (see `settle`).
        let padding = flow_len - payload.len() as u32;
        let mut close = false;
        match assemble(&mut st.partial, payload, self.max_message_bytes, &inbound) {
            Ok(()) if end_stream => {
                if !st.partial.buf.is_empty() {
                    inbound.push(Err(Status::internal("stream ended inside a message")), Held::default());
                    st.partial = Partial::default();
                }
                inbound.end();
                st.inbound = None;
            }
            Ok(()) => {}
            Err(()) => {
                // The session ends the stream with the status queued; nothing
                // more the client sends on it is read.
                st.partial = Partial::default();
                inbound.end();
                st.inbound = None;
                close = st.done;
            }
        }
        self.credit(stream_id, padding);
        self.settle(stream_id);
        if close {
            self.close_stream(stream_id);
        }
        Ok(())
    }

    /// Early credit for a stream's partial message larger than
    /// [`EARLY_CREDIT_ABOVE`]: once the message holds a reservation of its
    /// whole size (taken here if it fits both budgets), every byte of it is
    /// credited as it arrives; until then the stream waits in `starved`
    /// (see [`super::budget`]). Smaller messages complete within the window.
    fn settle(&mut self, id: u32) {
        let Some(st) = self.streams.get_mut(&id).filter(|st| st.inbound.is_some()) else {
            return;
        };
        let Some(size) = st.partial.early_credit_size() else {
            return;
        };
        if st.partial.reservation.is_none() {
            let Some(reservation) = Reservation::take(&self.conn_budget, &self.process_budget, size) else {
                if !self.starved.contains(&id) {
                    self.starved.push_back(id);
                    self.watch_budgets(true);
                }
                return;
            };
            st.partial.buf.reserve(size - st.partial.buf.len());
            st.partial.reservation = Some(reservation);
        }
        let n = st.partial.uncredited();
        st.partial.credited += n;
        self.credit(id, n);
    }

    /// A budget got bytes back: the waiting streams try again, oldest first.
    fn retry_starved(&mut self) {
        for id in std::mem::take(&mut self.starved) {
            self.settle(id);
        }
        if self.starved.is_empty() {
            self.watch_budgets(false);
        }
    }

    /// What the oldest waiting stream needs from the budgets (0: it waits
    /// no more and only leaves `starved`).
    fn starved_need(&self) -> Option<usize> {
        let id = self.starved.front()?;
        let st = self.streams.get(id).filter(|st| st.inbound.is_some() && st.partial.reservation.is_none());
        Some(st.and_then(|st| st.partial.early_credit_size()).unwrap_or(0))
    }

    fn watch_budgets(&self, watch: bool) {
        for budget in [&self.conn_budget, &self.process_budget] {
            if watch {
                budget.watch(&self.budget_waker);
            } else {
                budget.unwatch(&self.budget_waker);
            }
        }
    }

    /// Records `n` consumed bytes on a stream and sends its WINDOW_UPDATE
    /// once enough have gathered.
    fn credit(&mut self, stream_id: u32, n: u32) {
        if n == 0 {
            return;
        }
        let mut stream_update = None;
        if let Some(st) = self.streams.get_mut(&stream_id) {
            if st.inbound.is_some() {
                st.owed += n;
                if st.owed >= STREAM_WINDOW / 4 {
                    st.recv_window += st.owed as i64;
                    stream_update = Some(std::mem::take(&mut st.owed));
                }
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

    /// Credits back what sessions consumed.
    fn send_credits(&mut self) {
        let consumed = std::mem::take(&mut *self.shared.consumed.lock().unwrap());
        for (id, n) in consumed {
            self.credit(id, n);
        }
    }

    fn on_outbound(&mut self, id: u32, item: Option<Item>) {
        let Some(st) = self.streams.get_mut(&id) else {
            return;
        };
        if st.done {
            return;
        }
        match item {
            Some(Ok(Out::Packet(packet))) => {
                let len = packet.encoded_len();
                let mut buf = BytesMut::with_capacity(5 + len);
                buf.put_u8(0);
                buf.put_u32(len as u32);
                packet.encode(&mut buf).expect("buffer sized by encoded_len");
                st.pending_len += buf.len();
                st.pending.push_back(buf.freeze());
                self.send_pending(id);
            }
            Some(Ok(Out::Data { connect_id, chunks })) => {
                let payload: usize = chunks.iter().map(Bytes::len).sum();
                let head = data_head(connect_id, payload);
                let mut prefix = BytesMut::with_capacity(5 + head.len());
                prefix.put_u8(0);
                prefix.put_u32((head.len() + payload) as u32);
                prefix.put_slice(&head);
                st.pending_len += prefix.len() + payload;
                st.pending.push_back(prefix.freeze());
                st.pending.extend(chunks.into_iter().filter(|c| !c.is_empty()));
                self.send_pending(id);
            }
            Some(Err(status)) => self.finish(id, &status),
            None => self.finish(id, &Status::ok("")),
        }
    }

    /// Writes a stream's pending bytes as far as the windows allow; parks its
    /// outbound receiver while bytes are left, unparks it once none are.
    fn send_pending(&mut self, id: u32) {
        let max_frame = self.peer_max_frame;
        loop {
            let Some(st) = self.streams.get_mut(&id) else {
                return;
            };
            if st.pending_len == 0 {
                break;
            }
            let n = (st.pending_len as i64).min(max_frame as i64).min(self.conn_send_window).min(st.send_window).max(0)
                as usize;
            if n == 0 {
                if let Some(rx) = self.outbound.remove(&id) {
                    st.parked = Some(rx);
                }
                return;
            }
            st.send_window -= n as i64;
            st.pending_len -= n;
            self.conn_send_window -= n as i64;
            put_frame_head(&mut self.write_buf, DATA, 0, id, n);
            move_front(&mut st.pending, n, &mut self.write_buf);
        }
        if let Some(st) = self.streams.get_mut(&id) {
            if let Some(rx) = st.parked.take() {
                self.outbound.insert(id, rx);
            }
            if st.refused && !st.done {
                // A refusal's body is out: end our side.
                self.frame(DATA, END_STREAM, id, &[]);
                self.end_refused(id);
            }
        }
    }

    /// After a window grew: every stream with pending bytes gets its turn.
    fn flush_pending(&mut self) {
        if self.conn_send_window <= 0 {
            return;
        }
        let waiting: Vec<u32> = self.streams.iter().filter(|(_, st)| st.pending_len > 0).map(|(&id, _)| id).collect();
        for id in waiting {
            self.send_pending(id);
            if self.conn_send_window <= 0 {
                break;
            }
        }
    }

    fn response_headers(&mut self, id: u32) {
        let mut block = Vec::with_capacity(32);
        block.push(0x88); // :status 200, static index 8
        block.extend_from_slice(CONTENT_TYPE_GRPC);
        self.frame(HEADERS, END_HEADERS, id, &block);
    }

    /// Ends the response with trailers carrying `status` (its headers went
    /// out when the stream was accepted) and forgets the stream; a client
    /// still sending is asked to stop with RST_STREAM(NO_ERROR).
    fn finish(&mut self, id: u32, status: &Status) {
        let Some(st) = self.streams.get_mut(&id) else {
            return;
        };
        st.done = true;
        let client_open = !st.client_ended;
        self.trailers(id, true, status);
        if client_open {
            self.rst(id, NO_ERROR);
        }
        self.close_stream(id);
    }

    fn trailers(&mut self, id: u32, headers_sent: bool, status: &Status) {
        let mut block = Vec::with_capacity(64);
        if !headers_sent {
            block.push(0x88);
            block.extend_from_slice(CONTENT_TYPE_GRPC);
        }
        literal(&mut block, b"grpc-status", (status.code() as i32).to_string().as_bytes());
        if !status.message().is_empty() {
            literal(&mut block, b"grpc-message", &percent_encode(status.message()));
        }
        self.frame(HEADERS, END_HEADERS | END_STREAM, id, &block);
    }

    /// Forgets a stream: its session sees the end of its inbound packets and
    /// a closed outbound channel.
    fn close_stream(&mut self, id: u32) {
        if let Some(st) = self.streams.remove(&id) {
            self.closed.record(id, st.client_ended);
            if let Some(inbound) = st.inbound {
                inbound.end();
            }
        }
        self.outbound.remove(&id);
    }
}

/// The stream a PRIORITY frame's (or a HEADERS frame's priority) payload
/// makes its stream depend on.
fn depends_on(payload: &[u8]) -> u32 {
    u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff
}

/// How a request we do not serve is answered.
enum Refusal {
    /// A gRPC call to another method: a trailers-only gRPC status.
    Grpc(Status),
    /// Not a gRPC call: this HTTP status with [`REFUSAL_BODY`].
    Http(&'static [u8]),
}

/// The body of a plain HTTP refusal.
const REFUSAL_BODY: &[u8] =
    b"konnq-server serves gRPC only: POST /ProxyService/Proxy with content-type application/grpc\n";

/// Appends a frame header and reserves room for its `len`-byte payload.
fn put_frame_head(buf: &mut BytesMut, kind: u8, flags: u8, stream_id: u32, len: usize) {
    buf.reserve(9 + len);
    buf.put_slice(&(len as u32).to_be_bytes()[1..]);
    buf.put_u8(kind);
    buf.put_u8(flags);
    buf.put_u32(stream_id & 0x7fff_ffff);
}

/// Moves the first `n` bytes of `queue` (which holds at least `n`) to `out`.
fn move_front(queue: &mut VecDeque<Bytes>, mut n: usize, out: &mut BytesMut) {
    while n > 0 {
        let Some(front) = queue.front_mut() else {
            debug_assert!(false, "pending bytes miscounted");
            return;
        };
        let take = front.len().min(n);
        out.put_slice(&front[..take]);
        n -= take;
        if take == front.len() {
            queue.pop_front();
        } else {
            front.advance(take);
        }
    }
}

/// `content-type: application/grpc` as a literal without indexing whose
/// name is static index 31 (RFC 7541 §6.2.2).
const CONTENT_TYPE_GRPC: &[u8] = b"\x0f\x10\x10application/grpc";

/// A literal field without indexing, new name, no Huffman (RFC 7541 §6.2.2).
fn literal(block: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    block.push(0);
    hpack_int(block, 7, name.len());
    block.extend_from_slice(name);
    hpack_int(block, 7, value.len());
    block.extend_from_slice(value);
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1); the prefix's
/// other bits are zero.
fn hpack_int(block: &mut Vec<u8>, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        block.push(v as u8);
        return;
    }
    block.push(max as u8);
    v -= max;
    while v >= 128 {
        block.push((v % 128 + 128) as u8);
        v /= 128;
    }
    block.push(v as u8);
}

/// grpc-message encoding: bytes outside printable ASCII, and '%', as %XX;
/// at most 1 KiB of the message.
fn percent_encode(message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len().min(1024));
    for &b in message.as_bytes().iter().take(1024) {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// Splits DATA payload into gRPC messages, queueing each decoded packet on
/// `inbound` with the bytes of it not yet credited; what is left of an
/// incomplete message stays in `partial`. On a violation the status that
/// ends the stream is queued instead, and the rest of `data` is not read.
fn assemble(partial: &mut Partial, mut data: Bytes, max_message: usize, inbound: &InboundShared) -> Result<(), ()> {
    let refuse = |status: Status| inbound.push(Err(status), Held::default());
    while !data.is_empty() {
        if partial.buf.is_empty() && data.len() >= 5 {
            let len = message_len(&data[..5], max_message).map_err(refuse)?;
            if data.len() >= 5 + len {
                let mut message = data.split_to(5 + len);
                message.advance(5);
                queue(inbound, message, 5 + len as u32, None)?;
                continue;
            }
        }
        if partial.buf.len() < 5 {
            let take = (5 - partial.buf.len()).min(data.len());
            partial.buf.extend_from_slice(&data.split_to(take));
            if partial.buf.len() < 5 {
                return Ok(());
            }
            let len = message_len(&partial.buf[..5], max_message).map_err(refuse)?;
            // One allocation for a message that completes within the window;
            // a larger one gets its buffer with its reservation (`settle`).
            if 5 + len <= EARLY_CREDIT_ABOVE {
                partial.buf.reserve(5 + len - partial.buf.len());
            }
        }
        let need = partial.size().unwrap_or(5) - partial.buf.len();
        let take = need.min(data.len());
        partial.buf.extend_from_slice(&data.split_to(take));
        if take == need {
            let Partial { buf, credited, reservation } = std::mem::take(partial);
            let credit = buf.len() as u32 - credited;
            let mut message = buf.freeze();
            message.advance(5);
            queue(inbound, message, credit, reservation)?;
        }
    }
    Ok(())
}

/// The length a gRPC message prefix announces, if acceptable.
fn message_len(head: &[u8], max_message: usize) -> Result<usize, Status> {
    if head[0] != 0 {
        return Err(Status::internal("compressed messages are not supported (grpc-encoding identity only)"));
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > max_message {
        return Err(Status::resource_exhausted(format!(
            "message of {len} bytes exceeds the limit of {max_message} bytes"
        )));
    }
    Ok(len)
}

/// Queues the packet `message` holds, or (undecodable) the status that
/// ends the stream; either way with the message's credit and reservation.
fn queue(inbound: &InboundShared, message: Bytes, credit: u32, reservation: Option<Reservation>) -> Result<(), ()> {
    let bytes = message.len() as u32;
    match Packet::decode(message) {
        Ok(packet) => {
            inbound.push(Ok(packet), Held { credit, bytes, reservation });
            Ok(())
        }
        Err(e) => {
            let status = Status::internal(format!("undecodable Packet: {e}"));
            inbound.push(Err(status), Held { credit, bytes: 0, reservation });
            Err(())
        }
    }
}

fn unpad(mut payload: Bytes) -> Result<Bytes, ConnError> {
    let Some(&pad) = payload.first() else {
        return Err(proto_err(PROTOCOL_ERROR, "PADDED frame without a pad length"));
    };
    payload.advance(1);
    if pad as usize > payload.len() {
        return Err(proto_err(PROTOCOL_ERROR, "padding longer than the frame"));
    }
    payload.truncate(payload.len() - pad as usize);
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(packet: &Packet) -> Vec<u8> {
        let body = packet.encode_to_vec();
        let mut m = vec![0];
        m.extend_from_slice(&(body.len() as u32).to_be_bytes());
        m.extend_from_slice(&body);
        m
    }

    fn inbound() -> Arc<InboundShared> {
        Arc::new(InboundShared {
            state: Mutex::new(InboundState::default()),
            conn: Arc::new(ConnShared::new(Gauge::default())),
            stream_id: 1,
        })
    }

    fn queued(inbound: &InboundShared) -> Vec<(Result<Packet, Status>, u32)> {
        let mut st = inbound.state.lock().unwrap();
        st.queue.drain(..).map(|q| (q.item, q.held.credit)).collect()
    }

    #[test]
    fn messages_split_at_every_point_reassemble_and_credit_each_byte_once() {
        let packets: Vec<Packet> = (0..3)
            .map(|i| konnq_protocol::konnectivity::data(i + 1, Bytes::from(vec![i as u8; 40 + i as usize])))
            .collect();
        let wire: Vec<u8> = packets.iter().flat_map(message).collect();
        for early_credit in [false, true] {
            for first in 0..=wire.len() {
                for second in first..=wire.len() {
                    let what = format!("split {first}/{second}, early credit {early_credit}");
                    let inbound = inbound();
                    let mut partial = Partial::default();
                    let mut credited_early = 0;
                    for chunk in [&wire[..first], &wire[first..second], &wire[second..]] {
                        assemble(&mut partial, Bytes::copy_from_slice(chunk), 1 << 20, &inbound).unwrap();
                        if early_credit {
                            // What `settle` does for a message with a reservation.
                            credited_early += partial.uncredited();
                            partial.credited = partial.buf.len() as u32;
                        }
                    }
                    assert!(partial.buf.is_empty(), "{what}: bytes left over");
                    let got = queued(&inbound);
                    let got_packets: Vec<Packet> = got.iter().map(|(p, _)| p.clone().expect("a packet")).collect();
                    assert_eq!(got_packets, packets, "{what}");
                    let at_pop: u32 = got.iter().map(|(_, n)| n).sum();
                    assert_eq!(credited_early + at_pop, wire.len() as u32, "{what}: credit");
                }
            }
        }
    }

    #[test]
    fn only_messages_larger_than_half_the_window_ask_for_early_credit() {
        let inbound = inbound();
        for (body, early) in [(32 * 1024, false), (3 * STREAM_WINDOW as usize, true)] {
            let wire = message(&konnq_protocol::konnectivity::data(1, Bytes::from(vec![7u8; body])));
            let mut partial = Partial::default();
            assemble(&mut partial, Bytes::copy_from_slice(&wire[..MAX_FRAME]), 1 << 24, &inbound).unwrap();
            assert_eq!(partial.early_credit_size(), early.then_some(wire.len()), "a message of {body} bytes");
        }
    }

    #[test]
    fn what_a_message_holds_is_released_once_the_session_has_forwarded_it() {
        let metrics = crate::metrics::Metrics::new();
        let process = PartialBudget::new(1000, metrics.partial_message_bytes.clone());
        let conn = PartialBudget::new(1000, Default::default());
        let wire = message(&konnq_protocol::konnectivity::data(1, Bytes::from(vec![7; 100])));
        let (m, bytes) = (wire.len() as u32, wire.len() as i64 - 5);
        let inbound = inbound();
        // Two messages; the first got a reservation, as a large one does.
        let mut partial = Partial::default();
        assemble(&mut partial, Bytes::copy_from_slice(&wire[..50]), 1 << 20, &inbound).unwrap();
        partial.reservation = Reservation::take(&conn, &process, partial.size().expect("the prefix is in"));
        assert_eq!(metrics.partial_message_bytes.get(), wire.len() as i64);
        assemble(&mut partial, Bytes::copy_from_slice(&wire[50..]), 1 << 20, &inbound).unwrap();
        assemble(&mut partial, Bytes::from(wire.clone()), 1 << 20, &inbound).unwrap();
        let held = || {
            let credited = inbound.conn.consumed.lock().unwrap().iter().map(|(_, n)| n).sum::<u32>();
            (credited, inbound.conn.buffered.get(), process.used())
        };
        assert_eq!(held(), (0, 2 * bytes, m as usize), "queued");

        let mut session = Inbound { shared: Arc::clone(&inbound) };
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(Pin::new(&mut session).poll_next(&mut cx), Poll::Ready(Some(Ok(_)))));
        assert_eq!(held(), (0, 2 * bytes, m as usize), "taken, not yet forwarded");
        assert!(matches!(Pin::new(&mut session).poll_next(&mut cx), Poll::Ready(Some(Ok(_)))));
        assert_eq!(held(), (m, bytes, 0), "the first one was forwarded");
        assert!(Pin::new(&mut session).poll_next(&mut cx).is_pending());
        assert_eq!(held(), (2 * m, 0, 0), "both were forwarded");
        assert_eq!(conn.used(), 0);

        // Once the session is gone, what arrives is released at once.
        drop(session);
        assemble(&mut partial, Bytes::from(wire.clone()), 1 << 20, &inbound).unwrap();
        assert_eq!(held(), (3 * m, 0, 0), "nothing is held or credited twice");
    }

    #[test]
    fn pending_chunks_leave_in_order_whatever_the_frame_sizes() {
        let chunks: Vec<Bytes> =
            [3usize, 1, 5, 2].iter().enumerate().map(|(i, &n)| Bytes::from(vec![i as u8; n])).collect();
        let whole: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        for step in 1..=whole.len() {
            let mut queue: VecDeque<Bytes> = chunks.iter().cloned().collect();
            let (mut out, mut left) = (BytesMut::new(), whole.len());
            while left > 0 {
                let n = step.min(left);
                let before = out.len();
                move_front(&mut queue, n, &mut out);
                assert_eq!(out.len() - before, n, "frames of {step}");
                left -= n;
            }
            assert_eq!(&out[..], &whole[..], "frames of {step}");
            assert!(queue.is_empty(), "frames of {step}: {queue:?}");
        }
    }

    #[test]
    fn oversize_and_compressed_messages_are_refused() {
        let refused = |bytes: &'static [u8]| {
            let inbound = inbound();
            assert!(assemble(&mut Partial::default(), Bytes::from_static(bytes), 100, &inbound).is_err());
            let got = queued(&inbound);
            assert_eq!(got.len(), 1, "one status, then nothing more read");
            got[0].0.as_ref().unwrap_err().code()
        };
        assert_eq!(refused(&[0, 0, 0, 1, 0, 9]), tonic::Code::ResourceExhausted);
        assert_eq!(refused(&[1, 0, 0, 0, 0]), tonic::Code::Internal);
        assert_eq!(refused(&[0, 0, 0, 0, 2, 0xff, 0xff, 0]), tonic::Code::Internal, "undecodable protobuf");
    }

    #[test]
    fn header_encoding_round_trips_through_the_decoder() {
        let mut block = vec![0x88];
        block.extend_from_slice(CONTENT_TYPE_GRPC);
        let long = "x".repeat(300);
        literal(&mut block, b"grpc-message", &percent_encode(&format!("{long} 100% \u{e9}")));
        let mut fields = Vec::new();
        Decoder::new(HEADER_TABLE_SIZE).decode(&block, |n, v| fields.push((n.to_vec(), v.to_vec()))).unwrap();
        assert_eq!(fields[0], (b":status".to_vec(), b"200".to_vec()));
        assert_eq!(fields[1], (b"content-type".to_vec(), b"application/grpc".to_vec()));
        assert_eq!(fields[2].1, format!("{long} 100%25 %C3%A9").into_bytes());
    }
}
