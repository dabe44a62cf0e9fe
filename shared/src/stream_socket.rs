//! QUIC over TCP: the IO around [`crate::stream_datagrams`].
//!
//! - [`pump`] moves frames between a TCP connection and two channels;
//!   both sides use it.
//! - [`StreamSocket`] is the agent's end: a quinn socket whose datagrams go
//!   to one server over one TCP connection ([`StreamSocket::connect`]).
//!
//! A full outbound queue drops the datagram, as a full UDP buffer would:
//! QUIC sees a loss and slows down, and nothing queues without bound.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::stream_datagrams::{self, StreamDatagramError, PREAMBLE};

/// Datagrams queued per direction of one TCP connection (with 1,452-byte
/// packets, about 1.5 MB; QUIC's congestion window keeps it mostly empty).
pub const QUEUE: usize = 1024;

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
    outbound: mpsc::Receiver<Bytes>,
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

async fn write_frames<W: AsyncWrite>(w: W, mut outbound: mpsc::Receiver<Bytes>) -> LinkError {
    tokio::pin!(w);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(d) = outbound.recv().await {
        if let Err(e) = stream_datagrams::encode_into(&d, &mut buf) {
            return e.into();
        }
        while buf.len() < WRITE_BATCH {
            let Ok(d) = outbound.try_recv() else { break };
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

/// Copies each segment of `transmit` into `queue`; a full or closed queue
/// drops it (see the module).
pub fn enqueue(queue: &mpsc::Sender<Bytes>, transmit: &Transmit) {
    let size = transmit.segment_size.unwrap_or(transmit.contents.len()).max(1);
    for segment in transmit.contents.chunks(size) {
        let _ = queue.try_send(Bytes::copy_from_slice(segment));
    }
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

/// A socket that is always writable: [`enqueue`] never blocks.
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
    outbound: mpsc::Sender<Bytes>,
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
        stream.set_nodelay(true)?;
        let local = stream.local_addr()?;
        stream.write_all(&PREAMBLE).await?;
        let (out_tx, out_rx) = mpsc::channel(QUEUE);
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
        enqueue(&self.outbound, transmit);
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
