//! The gRPC `ProxyService` frontend's HTTP/2 server (RFC 9113), serving
//! `/ProxyService/Proxy` only: the async driver around
//! [`konnq_protocol::h2::Connection`], the protocol's state machine.
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
//! The state machine does the protocol: frame parsing, flow control both
//! ways, HPACK decoding, header checks, refusals, keep-alive timing and
//! GOAWAY. One task per connection runs this driver around it: it reads
//! the socket into the machine, writes what the machine queues, arms the
//! keep-alive timer the machine asks for, and acts on its events. Each
//! Proxy stream is served by [`session::run`] on its own task, connected by
//! an inbound queue and a bounded outbound channel ([`inbound`]). A
//! message's bytes are credited back to the client once its session has
//! forwarded it into QUIC, so a slow session or a stalled agent side stalls
//! only its own stream and client; a message larger than half the stream
//! window is credited as it arrives, and only within the partial-message
//! budgets of [`super::budget`], which this driver holds.
//!
//! Every protocol violation closes the connection with GOAWAY naming the
//! error (or resets just the stream, where RFC 9113 says a stream error),
//! counts `konnq_server_frontend_errors_total{kind="http2"}` and is logged;
//! other connections are untouched. A stream the client resets, or loses
//! with its connection, while still sending ends with `CANCELLED`, which
//! the session counts as upstream's stream error.

mod events;
mod inbound;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures::task::AtomicWaker;
use futures::{Stream, StreamExt};
use konnq_protocol::h2::{self, Connection as Machine, ConnectionError, Event, GrpcStatus};
use konnq_shared::gauge::GaugeGuard;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_stream::StreamMap;
use tonic::Status;
use tracing::{debug, warn};

pub use self::inbound::Inbound;
use self::inbound::{outbound, ConnShared, Held, InboundShared, InboundState, Item, Outbound};
use super::budget::{PartialBudget, Reservation, PROCESS_BUDGET};
use super::session::{self, Out, SessionCtx};
use konnq_shared::logging::untrusted;

/// The one method served.
pub const PROXY_PATH: &[u8] = h2::PROXY_PATH;

/// Packets buffered toward one client before the session waits: bounded, so
/// a client that stops reading stalls only its own connection.
const OUTBOUND_PACKETS: usize = 4;
/// Smallest and largest read buffer; reads adapt between the two.
const READ_MIN: usize = 512;
const READ_MAX: usize = 64 * 1024;
/// Stop taking outbound packets while this much is waiting to be written.
const WRITE_HIGH: usize = 64 * 1024;
/// Most buffers per vectored write: [`WRITE_HIGH`] of QUIC-sized chunks
/// goes out in one or two system calls.
const WRITE_SLICES: usize = 64;
/// Stop reading while this much is waiting to be written (PING and
/// SETTINGS acks cannot pile up without bound).
const WRITE_STOP_READ: usize = 256 * 1024;

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

impl From<ConnectionError> for ConnError {
    fn from(e: ConnectionError) -> ConnError {
        match e {
            ConnectionError::Protocol { code, reason } => ConnError::Protocol { code: code.0, reason },
            ConnectionError::KeepAlive(after) => ConnError::KeepAlive(after),
        }
    }
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
    let spawn = |io: IO| {
        let (ctx, limits) = (ctx.clone(), limits.clone());
        let mut stop = stop_rx.clone();
        let open = GaugeGuard::inc(&ctx.metrics.frontend_connections);
        tokio::spawn(async move {
            let _open = open;
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
    };
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                super::accept::backlog(&mut incoming).into_iter().for_each(spawn);
                break;
            }
            next = incoming.next() => match next {
                Some(io) => spawn(io),
                None => break,
            },
        }
    }
    stop_tx.send_replace(true);
    Ok(())
}

/// What woke the driver.
enum Wake {
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

/// The time as the state machine sees it (tokio's clock, so paused-time
/// tests drive keep-alives).
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

struct Connection<IO> {
    io: IO,
    machine: Machine,
    ctx: SessionCtx,
    stopping: Pin<Box<dyn Future<Output = ()> + Send>>,
    read_buf: BytesMut,
    /// Next read's buffer size; grows while reads fill it, shrinks when idle.
    read_hint: usize,
    eof: bool,
    /// Written bytes may sit in a TLS layer until flushed.
    needs_flush: bool,
    /// The inbound queues of streams whose client side is still read.
    inbound: HashMap<u32, Arc<InboundShared>>,
    outbound: StreamMap<u32, Outbound>,
    /// Outbound receivers out of the poll set while their stream's bytes
    /// wait for the windows.
    parked: HashMap<u32, Outbound>,
    shared: Arc<ConnShared>,
    /// Partial-message budgets: this connection's and the process's.
    conn_budget: Arc<PartialBudget>,
    process_budget: Arc<PartialBudget>,
    /// Reservations granted to streams' partial messages, until the
    /// message is complete and its [`Held`] carries it.
    reservations: HashMap<u32, Reservation>,
    /// Streams whose partial message waits for a reservation, oldest first.
    starved: VecDeque<u32>,
    /// Woken when a budget gets bytes back, while `starved` is not empty.
    budget_waker: Arc<AtomicWaker>,
    /// Keep-alive, armed at the machine's `poll_timeout`.
    timer: Pin<Box<Sleep>>,
    armed: Option<std::time::Instant>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Connection<IO> {
    fn new(io: IO, ctx: SessionCtx, limits: Limits, stopping: Pin<Box<dyn Future<Output = ()> + Send>>) -> Self {
        let shared = Arc::new(ConnShared::new(ctx.metrics.frontend_buffered.clone()));
        let config = h2::Config { max_message_bytes: limits.max_message_bytes, keepalive_time: limits.keepalive_time };
        Connection {
            io,
            machine: Machine::new(config, now()),
            ctx,
            stopping,
            read_buf: BytesMut::new(),
            read_hint: READ_MIN,
            eof: false,
            needs_flush: false,
            inbound: HashMap::new(),
            outbound: StreamMap::new(),
            parked: HashMap::new(),
            shared,
            conn_budget: PartialBudget::new(limits.max_message_bytes + 5, Default::default()),
            process_budget: limits.partial_budget,
            reservations: HashMap::new(),
            starved: VecDeque::new(),
            budget_waker: Arc::new(AtomicWaker::new()),
            timer: Box::pin(tokio::time::sleep(limits.keepalive_time)),
            armed: None,
        }
    }

    async fn run(mut self) -> Result<(), ConnError> {
        let result = self.serve().await;
        if let Err(ConnError::Protocol { .. }) = result {
            // Best effort: the machine queued GOAWAY naming the error.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.flush()).await;
        }
        for inbound in self.inbound.values() {
            inbound.cancel("connection closed");
        }
        self.watch_budgets(false);
        result
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        while self.machine.transmit_len() > 0 {
            let n = std::future::poll_fn(|cx| self.poll_write_transmit(cx)).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.machine.advance_transmit(n);
        }
        self.io.flush().await
    }

    async fn serve(&mut self) -> Result<(), ConnError> {
        loop {
            let unwritten = self.machine.transmit_len() > 0;
            if self.eof && !unwritten && !self.needs_flush {
                return Ok(());
            }
            if self.machine.is_stopped() && self.machine.stream_count() == 0 && !unwritten {
                return Ok(());
            }
            self.arm_timer();
            match std::future::poll_fn(|cx| self.poll_wake(cx)).await {
                Wake::Read(Ok(0)) => {
                    self.eof = true;
                    self.machine.handle_eof();
                    self.drain_events();
                    self.outbound = StreamMap::new();
                    self.parked.clear();
                }
                Wake::Read(Ok(n)) => self.on_read(n)?,
                Wake::Read(Err(e)) => return Err(e.into()),
                Wake::Wrote(Ok(0)) => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into()),
                Wake::Wrote(Ok(n)) => {
                    self.machine.advance_transmit(n);
                    self.needs_flush |= self.machine.transmit_len() == 0;
                }
                Wake::Wrote(Err(e)) => return Err(e.into()),
                Wake::Flushed(r) => {
                    r?;
                    self.needs_flush = false;
                }
                Wake::Out(id, item) => self.on_outbound(id, item),
                Wake::Credit => self.send_credits(),
                Wake::Budget => self.retry_starved(),
                Wake::Timer => self.machine.handle_timeout(now())?,
                Wake::Stop => self.machine.go_away(now()),
            }
        }
    }

    fn on_read(&mut self, n: usize) -> Result<(), ConnError> {
        if n >= self.read_hint {
            self.read_hint = (self.read_hint * 2).min(READ_MAX);
        } else if n < self.read_hint / 4 {
            self.read_hint = (self.read_hint / 2).max(READ_MIN);
        }
        let result = self.machine.recv(now(), &mut self.read_buf);
        self.drain_events();
        if self.read_buf.is_empty() && self.read_buf.capacity() > READ_MIN {
            self.read_buf = BytesMut::new();
        }
        Ok(result?)
    }

    fn arm_timer(&mut self) {
        let due = self.machine.poll_timeout();
        if due != self.armed {
            if let Some(due) = due {
                self.timer.as_mut().reset(Instant::from_std(due));
            }
            self.armed = due;
        }
    }

    /// Writes what the connection has for the client: its buffers in one
    /// vectored write where the transport takes one (DATA payloads are the
    /// agents' buffers, not copies), else the first buffer.
    fn poll_write_transmit(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.io.is_write_vectored() {
            let mut slices = [std::io::IoSlice::new(&[]); WRITE_SLICES];
            let k = self.machine.transmit_slices(&mut slices);
            Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..k])
        } else {
            Pin::new(&mut self.io).poll_write(cx, self.machine.transmit())
        }
    }

    /// The next thing to do. Outbound packets are gathered before a write,
    /// so a burst goes out in one system call; reading and gathering stop
    /// while the write buffer is full, so both stay bounded.
    fn poll_wake(&mut self, cx: &mut Context<'_>) -> Poll<Wake> {
        let unwritten = self.machine.transmit_len();
        if !self.eof && unwritten < WRITE_STOP_READ {
            let spare = self.read_buf.capacity() - self.read_buf.len();
            let wanted = h2::wanted_bytes(&self.read_buf).max(READ_MIN);
            if spare < wanted {
                self.read_buf.reserve(self.read_hint.max(wanted));
            }
            if let Poll::Ready(r) = tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read_buf) {
                return Poll::Ready(Wake::Read(r));
            }
        }
        self.shared.waker.register(cx.waker());
        if !self.shared.consumed.lock().unwrap().is_empty() {
            return Poll::Ready(Wake::Credit);
        }
        if self.machine.can_send() && unwritten < WRITE_HIGH && !self.outbound.is_empty() {
            if let Poll::Ready(Some((id, item))) = self.outbound.poll_next_unpin(cx) {
                return Poll::Ready(Wake::Out(id, item));
            }
        }
        if unwritten > 0 {
            if let Poll::Ready(r) = self.poll_write_transmit(cx) {
                return Poll::Ready(Wake::Wrote(r));
            }
        } else if self.needs_flush {
            if let Poll::Ready(r) = Pin::new(&mut self.io).poll_flush(cx) {
                return Poll::Ready(Wake::Flushed(r));
            }
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Wake::Timer);
        }
        if !self.machine.is_going_away() && self.stopping.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Wake::Stop);
        }
        if let Some(need) = self.starved_need() {
            self.budget_waker.register(cx.waker());
            if self.conn_budget.fits(need) && self.process_budget.fits(need) {
                return Poll::Ready(Wake::Budget);
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use prometheus_client::metrics::gauge::Gauge;

    fn inbound() -> Arc<InboundShared> {
        Arc::new(InboundShared {
            state: Mutex::new(InboundState::default()),
            conn: Arc::new(ConnShared::new(Gauge::default())),
            stream_id: 1,
        })
    }

    #[test]
    fn what_a_message_holds_is_released_once_the_session_has_forwarded_it() {
        let metrics = crate::metrics::Metrics::new();
        let process = PartialBudget::new(1000, metrics.partial_message_bytes.clone());
        let conn = PartialBudget::new(1000, Default::default());
        let packet = konnq_protocol::konnectivity::data(1, Bytes::from(vec![7; 100]));
        let (m, bytes) = (120u32, 115u32);
        let inbound = inbound();
        // Two messages; the first holds a reservation, as a large one does.
        let reservation = Reservation::take(&conn, &process, m as usize);
        assert_eq!(metrics.partial_message_bytes.get(), i64::from(m));
        inbound.push(Ok(packet.clone()), Held { credit: m, bytes, reservation });
        inbound.push(Ok(packet.clone()), Held { credit: m, bytes, reservation: None });
        let held = || {
            let credited = inbound.conn.consumed.lock().unwrap().iter().map(|(_, n)| n).sum::<u32>();
            (credited, inbound.conn.buffered.get(), process.used())
        };
        let b = i64::from(bytes);
        assert_eq!(held(), (0, 2 * b, m as usize), "queued");

        let mut session = Inbound { shared: Arc::clone(&inbound) };
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(Pin::new(&mut session).poll_next(&mut cx), Poll::Ready(Some(Ok(_)))));
        assert_eq!(held(), (0, 2 * b, m as usize), "taken, not yet forwarded");
        assert!(matches!(Pin::new(&mut session).poll_next(&mut cx), Poll::Ready(Some(Ok(_)))));
        assert_eq!(held(), (m, b, 0), "the first one was forwarded");
        assert!(Pin::new(&mut session).poll_next(&mut cx).is_pending());
        assert_eq!(held(), (2 * m, 0, 0), "both were forwarded");
        assert_eq!(conn.used(), 0);

        // Once the session is gone, what arrives is released at once.
        drop(session);
        inbound.push(Ok(packet), Held { credit: m, bytes, reservation: None });
        assert_eq!(held(), (3 * m, 0, 0), "nothing is held or credited twice");
    }

    #[test]
    fn machine_errors_keep_their_goaway_code() {
        let e =
            ConnError::from(ConnectionError::Protocol { code: h2::ErrorCode::FLOW_CONTROL_ERROR, reason: "x".into() });
        assert!(matches!(e, ConnError::Protocol { code: 3, .. }));
        assert_eq!(e.to_string(), "x (GOAWAY code 0x3)");
    }
}
