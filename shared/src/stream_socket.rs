//! QUIC over TCP: the IO around [`konnq_protocol::stream_datagrams`].
//!
//! - [`pump`] moves frames between a TCP connection and two channels;
//!   both sides use it.
//! - [`StreamSocket`] is the agent's end: a quinn socket whose datagrams go
//!   to one server over one TCP connection ([`StreamSocket::connect`]).
//!
//! A full outbound queue drops the datagram, as a full UDP buffer would:
//! QUIC sees a loss and slows down, and nothing queues without bound. The
//! queue is bounded in bytes ([`QUEUE_BYTES`]; datagrams over TCP may be
//! as large as 64 KiB once QUIC has probed the path), and the kernel keeps
//! little unsent data ([`NOTSENT_LOWAT`]), so a bulk transfer cannot build
//! a queue that every other proxied connection on the link waits behind.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use konnq_protocol::stream_datagrams::{self, StreamDatagramError, PREAMBLE};

/// Datagrams queued per direction of one TCP connection, at most.
pub const QUEUE: usize = 1024;

/// Bytes queued toward one TCP connection, at most (about 20 ms at
/// 100 Mbit/s).
pub const QUEUE_BYTES: usize = 256 * 1024;

/// `TCP_NOTSENT_LOWAT`: the kernel takes more only while less than this is
/// waiting to be sent (its buffer for data in flight still grows).
pub const NOTSENT_LOWAT: u32 = 128 * 1024;

/// Bytes gathered into one write.
const WRITE_BATCH: usize = 256 * 1024;

/// Why a TCP link ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Framing(#[from] StreamDatagramError),
    #[error("nothing received for {0:?}")]
    Idle(Duration),
    #[error("closed by the peer")]
    Eof,
}

/// Moves frames until the connection or a channel ends: datagrams from
/// `outbound` are written to `stream`; datagrams read from it go through
/// `deliver` (awaited: a slow consumer slows the reader, which TCP's flow
/// control passes back to the sender). With `idle`, a connection silent
/// that long ends (QUIC keep-alives make a live one talk).
pub async fn pump<S, T>(
    stream: S,
    outbound: OutboundRx,
    deliver: mpsc::Sender<T>,
    wrap: impl Fn(Bytes) -> T,
    idle: Option<Duration>,
) -> LinkError
where
    S: AsyncRead + AsyncWrite,
{
    let (r, w) = tokio::io::split(stream);
    tokio::select! {
        e = write_frames(w, outbound) => e,
        e = read_frames(r, deliver, wrap, idle) => e,
    }
}

async fn write_frames<W: AsyncWrite>(w: W, mut outbound: OutboundRx) -> LinkError {
    tokio::pin!(w);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(d) = outbound.recv().await {
        if let Err(e) = stream_datagrams::encode_into(&d, &mut buf) {
            return e.into();
        }
        while buf.len() < WRITE_BATCH {
            let Some(d) = outbound.try_recv() else { break };
            if let Err(e) = stream_datagrams::encode_into(&d, &mut buf) {
                return e.into();
            }
        }
        if let Err(e) = w.write_all_buf(&mut buf).await {
            return e.into();
        }
    }
    // Our side is done (the endpoint went away): close politely.
    let _ = w.shutdown().await;
    LinkError::Eof
}

async fn read_frames<R: AsyncRead, T>(
    r: R,
    deliver: mpsc::Sender<T>,
    wrap: impl Fn(Bytes) -> T,
    idle: Option<Duration>,
) -> LinkError {
    tokio::pin!(r);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        loop {
            match stream_datagrams::decode(&mut buf) {
                Ok(Some(d)) => {
                    if deliver.send(wrap(d)).await.is_err() {
                        return LinkError::Eof;
                    }
                }
                Ok(None) => break,
                Err(e) => return e.into(),
            }
        }
        let read = r.read_buf(&mut buf);
        let n = match idle {
            Some(limit) => match tokio::time::timeout(limit, read).await {
                Ok(n) => n,
                Err(_) => return LinkError::Idle(limit),
            },
            None => read.await,
        };
        match n {
            Ok(0) => return LinkError::Eof,
            Ok(_) => {}
            Err(e) => return e.into(),
        }
    }
}

/// The queue of datagrams toward one TCP connection, bounded in datagrams
/// and in bytes.
pub fn outbound() -> (OutboundTx, OutboundRx) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let room = Arc::new(Room::default());
    (OutboundTx { tx, room: Arc::clone(&room) }, OutboundRx { rx, room })
}

/// Bytes queued.
#[derive(Debug, Default)]
struct Room {
    queued: AtomicUsize,
}

impl Room {
    fn taken(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
    }

    fn has_room(&self, n: usize) -> bool {
        self.queued.load(Ordering::Relaxed).saturating_add(n) <= QUEUE_BYTES
    }
}

/// The sending end of [`outbound`].
#[derive(Debug, Clone)]
pub struct OutboundTx {
    tx: mpsc::Sender<Bytes>,
    room: Arc<Room>,
}

impl OutboundTx {
    /// Queues each segment of `transmit`; one that does not fit (or a
    /// closed link) is dropped (see the module).
    pub fn enqueue(&self, transmit: &Transmit) {
        let size = transmit.segment_size.unwrap_or(transmit.contents.len()).max(1);
        for segment in transmit.contents.chunks(size) {
            if !self.room.has_room(segment.len()) {
                continue;
            }
            // Counted before it is queued: the writer may take it at once.
            self.room.queued.fetch_add(segment.len(), Ordering::Relaxed);
            if self.tx.try_send(Bytes::copy_from_slice(segment)).is_err() {
                self.room.taken(segment.len());
            }
        }
    }
}

/// The receiving end of [`outbound`], for [`pump`].
#[derive(Debug)]
pub struct OutboundRx {
    rx: mpsc::Receiver<Bytes>,
    room: Arc<Room>,
}

impl OutboundRx {
    async fn recv(&mut self) -> Option<Bytes> {
        let d = self.rx.recv().await?;
        self.room.taken(d.len());
        Some(d)
    }

    fn try_recv(&mut self) -> Option<Bytes> {
        let d = self.rx.try_recv().ok()?;
        self.room.taken(d.len());
        Some(d)
    }
}

/// Sets `TCP_NOTSENT_LOWAT` (see [`NOTSENT_LOWAT`]) and `TCP_NODELAY`.
pub fn tune(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let value = NOTSENT_LOWAT as libc::c_int;
    // SAFETY: a valid socket descriptor and a c_int option value of the
    // size passed.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(stream),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Copies queued datagrams into quinn's receive buffers, one per buffer,
/// each from `from`.
pub fn fill(
    first: Bytes,
    more: &mut impl FnMut() -> Option<(SocketAddr, Bytes)>,
    from: SocketAddr,
    bufs: &mut [IoSliceMut<'_>],
    meta: &mut [RecvMeta],
) -> usize {
    let mut next = Some((from, first));
    let mut n = 0;
    while let Some((addr, d)) = next.take() {
        if d.len() <= bufs[n].len() {
            bufs[n][..d.len()].copy_from_slice(&d);
            meta[n] = RecvMeta { addr, len: d.len(), stride: d.len(), ecn: None, dst_ip: None };
            n += 1;
        }
        if n == bufs.len().min(meta.len()) {
            break;
        }
        next = more();
    }
    n
}

/// A socket that is always writable: [`OutboundTx::enqueue`] never blocks.
#[derive(Debug)]
pub struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The agent's end of QUIC over TCP: every datagram goes to the one server
/// at the other end of the TCP connection.
pub struct StreamSocket {
    outbound: OutboundTx,
    inbound: Mutex<mpsc::Receiver<Bytes>>,
    /// The server's address as quinn names it (learnt from the first
    /// datagram it sends); received datagrams are reported from it.
    peer: Mutex<Option<SocketAddr>>,
    local: SocketAddr,
    ended: watch::Receiver<Option<String>>,
}

impl fmt::Debug for StreamSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSocket").field("local", &self.local).finish_non_exhaustive()
    }
}

impl StreamSocket {
    /// Connects to `server` over TCP and sends the preamble; the link runs
    /// on its own task until either side closes.
    pub async fn connect(server: SocketAddr) -> io::Result<Arc<StreamSocket>> {
        let mut stream = TcpStream::connect(server).await?;
        tune(&stream)?;
        let local = stream.local_addr()?;
        stream.write_all(&PREAMBLE).await?;
        let (out_tx, out_rx) = outbound();
        let (in_tx, in_rx) = mpsc::channel(QUEUE);
        let (end_tx, ended) = watch::channel(None);
        tokio::spawn(async move {
            let why = pump(stream, out_rx, in_tx, |d| d, None).await;
            end_tx.send_replace(Some(why.to_string()));
        });
        Ok(Arc::new(StreamSocket {
            outbound: out_tx,
            inbound: Mutex::new(in_rx),
            peer: Mutex::new(None),
            local,
            ended,
        }))
    }

    /// Resolves with the reason once the TCP connection has ended.
    pub async fn ended(&self) -> String {
        let mut ended = self.ended.clone();
        let why = match ended.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => "link task ended".to_owned(),
        };
        why
    }
}

impl AsyncUdpSocket for StreamSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let mut peer = self.peer.lock().unwrap_or_else(|p| p.into_inner());
        peer.get_or_insert(transmit.destination);
        drop(peer);
        self.outbound.enqueue(transmit);
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let Some(from) = *self.peer.lock().unwrap_or_else(|p| p.into_inner()) else {
            // Nothing sent yet, so nothing can be expected.
            let mut inbound = self.inbound.lock().unwrap_or_else(|p| p.into_inner());
            // Register the waker; a datagram before our first is dropped.
            return match inbound.poll_recv(cx) {
                Poll::Ready(Some(_)) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                _ => Poll::Pending,
            };
        };
        let mut inbound = self.inbound.lock().unwrap_or_else(|p| p.into_inner());
        match inbound.poll_recv(cx) {
            Poll::Ready(Some(first)) => {
                let mut more = || inbound.try_recv().ok().map(|d| (from, d));
                Poll::Ready(Ok(fill(first, &mut more, from, bufs, meta)))
            }
            // The link ended; the agent closes the connection (see `ended`).
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn may_fragment(&self) -> bool {
        false
    }
}
