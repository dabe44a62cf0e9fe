//! QUIC transport settings derived from [`QuicConfig`], identical on both
//! ends so that keep-alive and idle detection agree.

use std::sync::Arc;

use crate::config::{CongestionControl, QuicConfig};

#[derive(Debug, thiserror::Error)]
pub enum QuicSetupError {
    #[error("quic.idle-timeout: {0}")]
    IdleTimeout(String),
    #[error("QUIC TLS: {0}")]
    Tls(String),
    #[error("UDP socket: {0}")]
    Socket(#[from] std::io::Error),
}

/// Application error codes used when closing QUIC connections and streams.
pub mod codes {
    /// Normal shutdown.
    pub const SHUTDOWN: u32 = 0;
    /// The dial was abandoned (client gave up, frontend stream gone, timeout).
    pub const DIAL_ABANDONED: u32 = 1;
    /// The stream violated konnq's protocol (malformed dial header, ...).
    pub const PROTOCOL: u32 = 2;
    /// The agent could not reach or lost the target.
    pub const TARGET_ERROR: u32 = 3;
    /// The control handshake was refused.
    pub const REJECTED: u32 = 4;
    /// The frontend connection ended abruptly.
    pub const FRONTEND_GONE: u32 = 5;
    /// The agent's ServiceAccount token was missing, invalid or of another account.
    pub const UNAUTHENTICATED: u32 = 6;
    /// The server could not check the agent's token (kube-apiserver unreachable,
    /// or the TokenReview rate limit held it past the handshake deadline).
    pub const AUTH_UNAVAILABLE: u32 = 7;
}

/// Transport settings: keep-alive and idle timeout so a dead path is noticed
/// within `idle_timeout`, per-stream windows sized by configuration, and
/// bidirectional stream credit for the dial streams the server opens.
pub fn transport_config(
    cfg: &QuicConfig,
    accepts_dial_streams: bool,
) -> Result<quinn::TransportConfig, QuicSetupError> {
    let mut t = quinn::TransportConfig::default();
    let idle =
        quinn::IdleTimeout::try_from(cfg.idle_timeout).map_err(|e| QuicSetupError::IdleTimeout(e.to_string()))?;
    t.max_idle_timeout(Some(idle));
    t.keep_alive_interval(Some(cfg.keep_alive_interval));
    let window = quinn::VarInt::from_u64(cfg.stream_receive_window).unwrap_or(quinn::VarInt::MAX);
    t.stream_receive_window(window);
    // Connection-wide flow control: 64 stream windows, so that up to 64
    // streams whose readers stall (each holding its window of unread data)
    // never hold back the others' data or a dial's answer.
    let conn_window = cfg.stream_receive_window.saturating_mul(64);
    t.receive_window(quinn::VarInt::from_u64(conn_window).unwrap_or(quinn::VarInt::MAX));
    t.send_window(send_window(cfg.stream_receive_window));
    // Only the agent accepts bidirectional streams (one per dial); the
    // server accepts exactly one (the control stream) from each agent.
    let bidi = if accepts_dial_streams { stream_credit(cfg.max_concurrent_streams) } else { 1 };
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u64(bidi).unwrap_or(quinn::VarInt::MAX));
    t.max_concurrent_uni_streams(0u32.into());
    // Datagrams serve only as liveness probes (empty, never read): a small
    // buffer bounds what the probes of a long-lived connection leave behind.
    t.datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER));
    let cc: Arc<dyn quinn::congestion::ControllerFactory + Send + Sync> = match cfg.congestion_control {
        CongestionControl::Cubic => Arc::new(quinn::congestion::CubicConfig::default()),
        CongestionControl::Bbr => Arc::new(crate::cc::BbrConfig::default()),
        CongestionControl::NewReno => Arc::new(quinn::congestion::NewRenoConfig::default()),
        CongestionControl::QuinnBbr => Arc::new(quinn::congestion::BbrConfig::default()),
    };
    t.congestion_controller_factory(cc);
    Ok(t)
}

/// [`transport_config`] for a connection whose datagrams go over TCP
/// ([`crate::stream_socket`]). TCP recovers every loss itself, so the only
/// datagram QUIC ever loses there is one its link queue had no room for:
/// congestion. Cubic backs off on it; the loss-tolerant controllers, meant
/// for lossy UDP paths, would keep a standing queue that every stream on
/// the connection waits behind (seconds, in the lossy-link lab).
pub fn tcp_transport_config(
    cfg: &QuicConfig,
    accepts_dial_streams: bool,
) -> Result<quinn::TransportConfig, QuicSetupError> {
    let mut t = transport_config(cfg, accepts_dial_streams)?;
    t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()));
    Ok(t)
}

/// Bytes of unread datagrams a connection keeps, counted as quinn counts
/// them (an empty datagram takes a few dozen): the newest probes.
pub const DATAGRAM_RECEIVE_BUFFER: usize = 4096;

/// Stream bytes one QUIC connection keeps written but not yet
/// acknowledged, across all its streams: quinn's send window, what the
/// sending side buffers. Sized for the bandwidth-delay product of the links
/// agents sit behind, with room for loss recovery (lost data stays
/// buffered about two more round trips): 100 Mbit/s at 200 ms is 2.5 MB,
/// 1 Gbit/s at 50 ms 6.25 MB.
///
/// It bounds memory, not isolation: acknowledgements free it whether or
/// not the receiving side reads. A send window of 64 stream windows
/// (256 MiB) lets the sender hold that much while 64 connections push data
/// faster than the path takes it: the agent reached 341 MiB RSS during 64
/// one-way downloads on loopback (docs/benchmarks.md, "Uploads").
pub const SEND_WINDOW: u64 = 16 * 1024 * 1024;

/// The send window for a given per-stream receive window: [`SEND_WINDOW`],
/// or one stream window where that is larger, so that a single stream can
/// always fill the window its peer gives it.
pub fn send_window(stream_receive_window: u64) -> u64 {
    stream_receive_window.max(SEND_WINDOW)
}

/// The bidirectional stream limit to advertise so that the peer can always
/// have `streams` open at once.
///
/// A stream the peer opened is freed once both ends are done with it, but
/// quinn tells the peer (MAX_STREAMS) only when more than 1/8 of the limit
/// has been freed since it last did: up to `limit / 8` closed streams may
/// still count against the peer. Advertising exactly `streams` therefore
/// left one stream short after a single closed connection, and up to 1/8
/// short in general. With `limit = streams + streams / 7`, `limit - limit / 8`
/// is exactly `streams`. The server enforces `streams` itself (its own
/// `quic.max-concurrent-streams`), so the margin only absorbs the delay.
pub fn stream_credit(streams: u64) -> u64 {
    streams.saturating_add(streams / 7)
}

/// Wraps a rustls config for QUIC.
pub fn server_crypto(
    tls: rustls::ServerConfig,
) -> Result<Arc<quinn::crypto::rustls::QuicServerConfig>, QuicSetupError> {
    quinn::crypto::rustls::QuicServerConfig::try_from(tls).map(Arc::new).map_err(|e| QuicSetupError::Tls(e.to_string()))
}

pub fn client_crypto(
    tls: rustls::ClientConfig,
) -> Result<Arc<quinn::crypto::rustls::QuicClientConfig>, QuicSetupError> {
    quinn::crypto::rustls::QuicClientConfig::try_from(tls).map(Arc::new).map_err(|e| QuicSetupError::Tls(e.to_string()))
}

/// Creates a UDP socket bound to `addr` with the configured buffer sizes
/// (the kernel may clamp them; the achieved sizes are returned for logging).
pub fn udp_socket(
    addr: std::net::SocketAddr,
    buffer: usize,
) -> Result<(std::net::UdpSocket, usize, usize), QuicSetupError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into())?;
    let rcv = socket.recv_buffer_size().unwrap_or(0);
    let snd = socket.send_buffer_size().unwrap_or(0);
    Ok((socket.into(), rcv, snd))
}

/// Bytes written per priority step (see [`ShareClock`]). Priorities are
/// `i32`: a connection's streams are ordered this way for their first
/// 32 TiB, then share packet by packet as quinn does by default.
pub const SHARE_UNIT: u64 = 16 * 1024;
/// How far behind the stream furthest ahead a stream that was idle or slow
/// resumes (see [`ShareClock`]).
pub const SHARE_SLACK: u64 = 128 * 1024;

/// Send scheduling across the streams of one QUIC connection.
///
/// quinn sends the streams of the highest priority that have data, one
/// packet each in turn. With 64 busy streams at one priority the receiver
/// wakes for every ~1.4 KB of each stream, and every layer behind it (gRPC
/// messages, target writes) pays per 1.4 KB: echo through 64 connections
/// moved 0.31 Gbit/s at 31 CPU s/GB. konnq instead gives streams
/// priorities in the manner of start-time fair queueing:
/// - every stream has a tag, the bytes it has written, and its priority is
///   minus its tag in [`SHARE_UNIT`]s: the stream that has written least
///   goes first, so busy streams take turns write by write (a write is up
///   to 64 KiB) instead of packet by packet;
/// - a stream that was idle or slow resumes at the connection's clock,
///   [`SHARE_SLACK`] behind the stream furthest ahead, so it neither banks
///   credit nor waits behind others' backlog: a request/response or a dial
///   header is sent ahead of bulk streams, and nothing starves.
///
/// The same order decides which stream writes first into the connection's
/// send window when it is full (see [`write_shared`]).
#[derive(Debug, Default)]
pub struct ShareClock {
    clock: std::sync::atomic::AtomicU64,
    turns: Turns,
}

/// One stream's place in its connection's [`ShareClock`].
#[derive(Debug)]
pub struct SendShare {
    clock: std::sync::Arc<ShareClock>,
    tag: u64,
    priority: i32,
    /// Records quinn's wake-up of a blocked write (see [`write_shared`]);
    /// made at the stream's first write and kept for the rest.
    woken: Option<std::sync::Arc<Woken>>,
}

impl SendShare {
    pub fn new(clock: std::sync::Arc<ShareClock>) -> SendShare {
        SendShare { clock, tag: 0, priority: 0, woken: None }
    }

    /// Records `n` bytes written; returns the stream's new priority when it
    /// changed.
    pub fn wrote(&mut self, n: usize) -> Option<i32> {
        use std::sync::atomic::Ordering::Relaxed;
        self.tag = self.tag.max(self.clock.clock.load(Relaxed)) + n as u64;
        self.clock.clock.fetch_max(self.tag.saturating_sub(SHARE_SLACK), Relaxed);
        let priority = -((self.tag / SHARE_UNIT).min(i32::MAX as u64) as i32);
        (priority != self.priority).then(|| {
            self.priority = priority;
            priority
        })
    }
}

/// Writes `data` to a stream whose priority `share` keeps (see [`ShareClock`]).
///
/// When the connection's send window is full, quinn wakes every stream
/// waiting for room at once, and whichever task runs first takes the room
/// an acknowledgement freed. Left to the order in which they run, the same
/// few streams win every round: with 24 downloads filling a 40 Mbit/s
/// link, 18 moved nothing for seconds, and a dial's answer written on a new
/// stream could wait past the dial timeout. So a bulk write that found no
/// room waits for quinn's wake-up, then takes its turn in the connection's
/// order (least written first, as for sending): each turn is one attempt
/// that never waits, so a stream held back by its own reader does not hold
/// up the others. Other writes on the connection (dial headers and answers,
/// control messages) do not take turns: they try as soon as they are woken,
/// before the bulk writers that woke with them.
pub async fn write_shared(
    send: &mut quinn::SendStream,
    share: &mut SendShare,
    data: bytes::Bytes,
) -> Result<(), quinn::WriteError> {
    if let Some(priority) = share.wrote(data.len()) {
        // Fails only on a stream that is already closed; the write reports it.
        let _ = send.set_priority(priority);
    }
    let woken = &*share.woken.get_or_insert_with(Default::default);
    let mut bufs = [data];
    let mut turn = None;
    while !bufs[0].is_empty() {
        let attempt = try_write_chunks(send, &mut bufs, woken);
        drop(turn.take());
        match attempt {
            std::task::Poll::Ready(r) => r?,
            std::task::Poll::Pending => {
                // A wake-up left over from an earlier write only costs one
                // more attempt, which waits again if there is still no room.
                woken.0.notified().await;
                turn = Some(share.clock.turns.take(share.tag).await);
            }
        }
    }
    Ok(())
}

/// Polls one `write_chunks` once, with a waker that only records quinn's
/// wake-up: nothing is written later behind the caller's back.
fn try_write_chunks(
    send: &mut quinn::SendStream,
    bufs: &mut [bytes::Bytes],
    woken: &std::sync::Arc<Woken>,
) -> std::task::Poll<Result<(), quinn::WriteError>> {
    use std::future::Future;
    let waker = std::task::Waker::from(std::sync::Arc::clone(woken));
    let mut cx = std::task::Context::from_waker(&waker);
    let write = std::pin::pin!(send.write_chunks(bufs));
    write.poll(&mut cx).map(|r| r.map(drop))
}

/// quinn's wake-up of a blocked write, kept until it is awaited.
#[derive(Debug, Default)]
struct Woken(tokio::sync::Notify);

impl std::task::Wake for Woken {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.notify_one();
    }
}

/// The bulk writers of one connection waiting for their turn to write
/// into a full send window, least written first (see [`write_shared`]).
/// Waiting writers by (tag, arrival), each with the waker to call when it
/// becomes first.
type Queue = std::collections::BTreeMap<(u64, u64), Option<std::task::Waker>>;

#[derive(Debug, Default)]
struct Turns {
    waiting: std::sync::Mutex<Queue>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Turns {
    /// Waits until no writer with less written (or, at equal, that came
    /// earlier) is waiting. Writers woken together all register before any
    /// of them goes: each yields once after registering. Only the writer
    /// that becomes first is woken.
    async fn take(&self, tag: u64) -> Turn<'_> {
        let key = (tag, self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        self.lock().insert(key, None);
        // From here on the key is removed however this future ends.
        let turn = Turn { turns: self, key };
        tokio::task::yield_now().await;
        std::future::poll_fn(|cx| {
            let mut waiting = self.lock();
            if waiting.keys().next() == Some(&key) {
                return std::task::Poll::Ready(());
            }
            if let Some(slot) = waiting.get_mut(&key) {
                *slot = Some(cx.waker().clone());
            }
            std::task::Poll::Pending
        })
        .await;
        turn
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A writer's place in [`Turns`]; leaving it wakes the writer now first.
struct Turn<'a> {
    turns: &'a Turns,
    key: (u64, u64),
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let next = {
            let mut waiting = self.turns.lock();
            waiting.remove(&self.key);
            waiting.values_mut().next().and_then(Option::take)
        };
        if let Some(w) = next {
            w.wake();
        }
    }
}

/// Reading one konnq frame from a QUIC stream.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("stream ended before a complete {0}")]
    Eof(&'static str),
    #[error("reading {what}: {source}")]
    Read { what: &'static str, source: quinn::ReadError },
    #[error(transparent)]
    Wire(#[from] konnq_protocol::wire::WireError),
}

/// Reads exactly one frame (header, then body) and never a byte beyond it,
/// so raw payload that follows a dial header stays in the stream.
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
    max: usize,
    what: &'static str,
) -> Result<(u8, Vec<u8>), FrameError> {
    let mut header = [0u8; konnq_protocol::wire::HEADER_LEN];
    read_exact(recv, &mut header, what).await?;
    let (kind, len) = konnq_protocol::wire::decode_header(&header, max, what)?;
    let mut body = vec![0u8; len];
    read_exact(recv, &mut body, what).await?;
    Ok((kind, body))
}

async fn read_exact(recv: &mut quinn::RecvStream, buf: &mut [u8], what: &'static str) -> Result<(), FrameError> {
    recv.read_exact(buf).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => FrameError::Eof(what),
        quinn::ReadExactError::ReadError(source) => FrameError::Read { what, source },
    })
}

/// Chunks gathered per [`read_coalesced`] call (each is one received STREAM
/// frame, typically ~1.2 KB, so some 20 KB are joined at most; the array lives in every idle connection's future, so it stays small).
const COALESCE_CHUNKS: usize = 16;

/// Waits for data and returns everything the stream has buffered (up to
/// [`COALESCE_CHUNKS`] frames) as one buffer; `None` at the end of the
/// stream. A single frame is handed over without a copy; several are joined
/// so that many small QUIC frames become one DATA packet or one write
/// instead of one each.
pub async fn read_coalesced(recv: &mut quinn::RecvStream) -> Result<Option<bytes::Bytes>, quinn::ReadError> {
    let Some(mut chunks) = read_chunks(recv).await? else {
        return Ok(None);
    };
    if chunks.len() == 1 {
        return Ok(chunks.pop());
    }
    let total = chunks.iter().map(|c| c.len()).sum();
    let mut joined = bytes::BytesMut::with_capacity(total);
    for c in &chunks {
        joined.extend_from_slice(c);
    }
    Ok(Some(joined.freeze()))
}

/// Waits for data and returns what the stream has buffered (up to
/// [`COALESCE_CHUNKS`] frames) as the received buffers themselves, in
/// order, for a writer that can take them without joining them; `None` at
/// the end of the stream.
pub async fn read_chunks(recv: &mut quinn::RecvStream) -> Result<Option<Vec<bytes::Bytes>>, quinn::ReadError> {
    let mut chunks: [bytes::Bytes; COALESCE_CHUNKS] = std::array::from_fn(|_| bytes::Bytes::new());
    Ok(recv.read_chunks(&mut chunks).await?.map(|n| chunks.into_iter().take(n).collect()))
}

/// Writes `chunks` in order with vectored writes: what [`read_chunks`]
/// returned reaches a socket in as few system calls as a joined buffer
/// would, without the copy.
pub async fn write_all_chunks<W>(w: &mut W, mut chunks: Vec<bytes::Bytes>) -> std::io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use bytes::Buf;
    use tokio::io::AsyncWriteExt;
    let mut start = 0;
    loop {
        while chunks.get(start).is_some_and(|c| c.is_empty()) {
            start += 1;
        }
        if start == chunks.len() {
            return Ok(());
        }
        let mut slices = [std::io::IoSlice::new(&[]); COALESCE_CHUNKS];
        let k = (chunks.len() - start).min(COALESCE_CHUNKS);
        for (slice, chunk) in slices.iter_mut().zip(&chunks[start..start + k]) {
            *slice = std::io::IoSlice::new(chunk);
        }
        let mut n = w.write_vectored(&slices[..k]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let chunk = &mut chunks[start];
            let taken = chunk.len().min(n);
            chunk.advance(taken);
            n -= taken;
            if chunk.is_empty() {
                start += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn turns_go_least_written_first_and_a_dropped_waiter_leaves_its_place() {
        use std::sync::{Arc, Mutex};
        let turns = Arc::new(Turns::default());
        // The first holds the turn; three more wait, registered out of order.
        let first = turns.take(0).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for tag in [300u64, 100, 200] {
            let (turns, order) = (Arc::clone(&turns), Arc::clone(&order));
            waiters.push(tokio::spawn(async move {
                let _turn = turns.take(tag).await;
                order.lock().unwrap().push(tag);
            }));
        }
        // One more that gives up while waiting: it must not block the rest.
        let quitter = {
            let turns = Arc::clone(&turns);
            tokio::spawn(async move {
                let _turn = turns.take(50).await;
                unreachable!("aborted before its turn");
            })
        };
        while turns.lock().len() < 5 {
            tokio::task::yield_now().await;
        }
        quitter.abort();
        let _ = quitter.await;
        assert_eq!(turns.lock().len(), 4, "the aborted waiter's place is gone");
        drop(first);
        for w in waiters {
            // A hang guard: a turn that is never handed on fails here.
            tokio::time::timeout(std::time::Duration::from_secs(10), w).await.expect("turn handed on").expect("waiter");
        }
        assert_eq!(*order.lock().unwrap(), [100, 200, 300]);
        assert!(turns.lock().is_empty());
    }

    #[tokio::test]
    async fn chunks_arrive_whole_and_in_order_through_short_writes() {
        use tokio::io::AsyncReadExt;
        let sizes = [5usize, 0, 1, 300, 2, 0, 17, 40, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 9];
        let chunks: Vec<bytes::Bytes> =
            sizes.iter().enumerate().map(|(i, &n)| bytes::Bytes::from(vec![i as u8; n])).collect();
        let expected: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        // A 7-byte pipe takes at most 7 bytes per write.
        let (mut w, mut r) = tokio::io::duplex(7);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.map(|_| got)
        });
        write_all_chunks(&mut w, chunks).await.unwrap();
        drop(w);
        assert_eq!(reader.await.unwrap().unwrap(), expected);
    }

    #[tokio::test]
    async fn chunks_arrive_whole_and_in_order_through_a_socket() {
        use tokio::io::AsyncReadExt;
        // Vectored writes that take several chunks at once (the pipe above
        // takes part of one at a time): about 2.5 MB in chunks of
        // 1..=3000 bytes.
        let mut rng = fastrand::Rng::with_seed(3);
        let mut batches = Vec::new();
        let mut expected = Vec::new();
        for _ in 0..200 {
            let batch: Vec<bytes::Bytes> = (0..rng.usize(1..=COALESCE_CHUNKS))
                .map(|_| bytes::Bytes::from((0..rng.usize(1..=3000)).map(|_| rng.u8(..)).collect::<Vec<u8>>()))
                .collect();
            expected.extend(batch.iter().flat_map(|c| c.iter().copied()));
            batches.push(batch);
        }
        let (mut w, mut r) = tokio::net::UnixStream::pair().unwrap();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.map(|_| got)
        });
        for batch in batches {
            write_all_chunks(&mut w, batch).await.unwrap();
        }
        drop(w);
        assert_eq!(reader.await.unwrap().unwrap(), expected);
    }

    /// Streams always ready to write; each step the highest priority one
    /// (ties: round robin, as quinn) sends `chunk` bytes, except stream 0,
    /// which writes `small` bytes every `every` steps (from step 100) and
    /// otherwise idles.
    /// Returns bytes sent per stream, the shortest and longest run of a bulk
    /// stream and the most steps stream 0 waited for its turn.
    fn schedule(
        streams: usize,
        steps: usize,
        chunk: usize,
        small: usize,
        every: usize,
    ) -> (Vec<usize>, (usize, usize), usize) {
        let clock = std::sync::Arc::new(ShareClock::default());
        let mut shares: Vec<SendShare> = (0..streams).map(|_| SendShare::new(clock.clone())).collect();
        let mut prio = vec![0i32; streams];
        let mut sent = vec![0usize; streams];
        let (mut current, mut run, mut longest, mut rr) = (usize::MAX, 0, 0, 0);
        let mut shortest = usize::MAX;
        let (mut waiting_since, mut longest_wait) = (None::<usize>, 0);
        for step in 0..steps {
            // From step 100 on: every stream has written by then.
            if step >= 100 && step % every == 0 && waiting_since.is_none() {
                // Stream 0 has a small write ready.
                if let Some(p) = shares[0].wrote(small) {
                    prio[0] = p;
                }
                waiting_since = Some(step);
            }
            let ready: Vec<usize> = (0..streams).filter(|&i| i != 0 || waiting_since.is_some()).collect();
            let best = ready.iter().map(|&i| prio[i]).max().unwrap();
            let tied: Vec<usize> = ready.into_iter().filter(|&i| prio[i] == best).collect();
            rr += 1;
            let i = tied[rr % tied.len()];
            if i == 0 {
                longest_wait = longest_wait.max(step - waiting_since.take().unwrap());
                sent[0] += small;
                continue;
            }
            if i != current {
                if current != usize::MAX && run > 0 {
                    shortest = shortest.min(run);
                }
                current = i;
                run = 0;
            }
            run += chunk;
            longest = longest.max(run);
            sent[i] += chunk;
            if let Some(p) = shares[i].wrote(chunk) {
                prio[i] = p;
            }
        }
        (sent, (shortest, longest), longest_wait)
    }

    #[test]
    fn busy_streams_share_evenly_write_by_write() {
        let chunk = 64 * 1024;
        for streams in [3, 9, 65] {
            let (sent, (shortest, longest), _) = schedule(streams, 20_000, chunk, 1, usize::MAX);
            let bulk = &sent[1..];
            let (min, max) = (bulk.iter().min().unwrap(), bulk.iter().max().unwrap());
            assert!(*max - *min <= 2 * chunk, "{streams} streams: uneven {bulk:?}");
            assert!(longest <= 2 * chunk, "{streams} streams: a run of {longest} bytes");
            assert_eq!(shortest, chunk, "{streams} streams: writes interleaved below one chunk");
        }
    }

    #[test]
    fn a_small_writer_goes_ahead_of_bulk_backlog() {
        // Stream 0 writes 1 KiB every 50 steps among 8 bulk streams.
        let (sent, _, longest_wait) = schedule(9, 20_000, 64 * 1024, 1024, 50);
        assert_eq!(sent[0], 1024 * (20_000 - 100) / 50, "every small write was sent");
        assert!(longest_wait <= 1, "a small write waited {longest_wait} steps behind bulk data");
    }

    #[test]
    fn a_late_stream_neither_starves_others_nor_waits() {
        let clock = std::sync::Arc::new(ShareClock::default());
        let mut early = SendShare::new(clock.clone());
        for _ in 0..1_000 {
            early.wrote(64 * 1024);
        }
        // A stream that starts after 64 MB were sent starts at most
        // SHARE_SLACK ahead of the early one, not 64 MB ahead (which would
        // let it send alone for 64 MB), and not behind it.
        let mut late = SendShare::new(clock.clone());
        let p = late.wrote(1).expect("a new priority");
        let lead = (p - early.priority) as u64 * SHARE_UNIT;
        assert!(lead > 0 && lead <= SHARE_SLACK, "late stream {lead} bytes ahead");
    }

    #[test]
    fn send_window_is_a_bdp_not_a_multiple_of_the_stream_window() {
        const MIB: u64 = 1024 * 1024;
        // 100 Mbit/s x 200 ms and 1 Gbit/s x 50 ms fit twice (a loss holds
        // data about two more round trips).
        const { assert!(SEND_WINDOW >= 2 * (100_000_000 / 8 / 5)) };
        const { assert!(SEND_WINDOW >= 2 * (1_000_000_000 / 8 / 20)) };
        assert_eq!(send_window(4 * MIB), 16 * MIB, "the default stream window");
        assert_eq!(send_window(64 * 1024), 16 * MIB);
        assert_eq!(send_window(16 * MIB), 16 * MIB);
        // One stream can always fill its own window.
        assert_eq!(send_window(64 * MIB), 64 * MIB);
        assert_eq!(send_window(256 * MIB), 256 * MIB);
    }

    #[test]
    fn stream_credit_covers_credit_quinn_holds_back() {
        for streams in (1..=2_000).chain([9_999, 10_000, 10_001, 65_536, 1_000_000]) {
            let limit = stream_credit(streams);
            // quinn announces freed credit once more than limit / 8 is back.
            assert_eq!(limit - limit / 8, streams, "{streams} -> {limit}");
        }
        assert_eq!(stream_credit(8), 9);
        assert_eq!(stream_credit(10_000), 11_428);
    }
}
