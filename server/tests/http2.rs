//! The gRPC frontend's own HTTP/2 server (`frontend/http2.rs`), spoken to
//! frame by frame over the Unix socket: flow control both ways, refused
//! methods, PING, connection errors, many interleaved streams, messages
//! split across frames and padded frames. Every Proxy stream dials a TCP
//! echo target through a real in-process agent.
//!
//! The client below keeps the books a real HTTP/2 client keeps: it never
//! sends beyond the windows the server granted, and it checks every DATA
//! frame the server sends against the windows it granted itself.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::h2frames::*;
use common::*;
use konnq_protocol::konnectivity::{client, data};
use konnq_shared::proto::{packet::Payload, Packet, PacketType};
use loona_hpack::{Decoder, Encoder};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Hang guard for each test body (not a performance bound).
const LIMIT: Duration = Duration::from_secs(60);
const PROXY_PATH: &str = "/ProxyService/Proxy";

/// A PADDED frame's payload: pad length, `body`, `pad` zero bytes.
fn padded(pad: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![pad];
    out.extend_from_slice(body);
    out.resize(out.len() + pad as usize, 0);
    out
}

/// One stream as the client sees it.
struct StreamState {
    header_blocks: Vec<Fields>,
    /// DATA received and not yet taken as messages.
    body: Vec<u8>,
    ended: bool,
    /// Flow-controlled DATA bytes the server sent on the stream, and the
    /// window we granted in all (initial window plus WINDOW_UPDATEs).
    received: i64,
    granted: i64,
    /// What we may still send on the stream.
    send_window: i64,
}

/// A hand-written HTTP/2 client connection.
struct RawH2 {
    io: UnixStream,
    /// Frames written but not yet flushed to the socket.
    out: Vec<u8>,
    encoder: Encoder<'static>,
    decoder: Decoder<'static>,
    streams: HashMap<u32, StreamState>,
    /// A header block still waiting for its CONTINUATION frames.
    partial: Option<(u32, u8, Vec<u8>)>,
    /// Our SETTINGS_INITIAL_WINDOW_SIZE, and the server's.
    initial_window: i64,
    peer_initial_window: i64,
    conn_send_window: i64,
    conn_received: i64,
    conn_granted: i64,
    /// Return stream credit for every DATA frame received (connection
    /// credit always is).
    credit_streams: bool,
    /// Payloads of the PING acknowledgements received.
    ping_acks: Vec<Vec<u8>>,
}

impl RawH2 {
    async fn connect(socket: &Path) -> RawH2 {
        Self::connect_with(socket, None).await
    }

    /// Connects, sending SETTINGS with the given INITIAL_WINDOW_SIZE.
    async fn connect_with(socket: &Path, initial_window: Option<u32>) -> RawH2 {
        let io = UnixStream::connect(socket).await.expect("connect to the Unix socket");
        let mut settings = Vec::new();
        if let Some(w) = initial_window {
            settings.extend_from_slice(&SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes());
            settings.extend_from_slice(&w.to_be_bytes());
        }
        let mut out = PREFACE.to_vec();
        out.extend(frame(SETTINGS, 0, 0, &settings));
        let mut h2 = RawH2 {
            io,
            out,
            encoder: Encoder::new(),
            decoder: Decoder::new(),
            streams: HashMap::new(),
            partial: None,
            initial_window: initial_window.map_or(DEFAULT_WINDOW, i64::from),
            peer_initial_window: DEFAULT_WINDOW,
            conn_send_window: DEFAULT_WINDOW,
            conn_received: 0,
            conn_granted: DEFAULT_WINDOW,
            credit_streams: true,
            ping_acks: Vec::new(),
        };
        h2.flush().await;
        h2
    }

    fn stream(&self, id: u32) -> &StreamState {
        self.streams.get(&id).unwrap_or_else(|| panic!("stream {id} was never opened"))
    }

    /// A request header block as grpc-go sends it.
    fn request_block(&mut self, path: &str) -> Vec<u8> {
        let headers: [(&[u8], &[u8]); 6] = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.as_bytes()),
            (b":authority", b"localhost"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ];
        self.encoder.encode(headers)
    }

    /// Opens a stream with a HEADERS frame of the given flags and payload.
    fn open_raw(&mut self, id: u32, flags: u8, payload: &[u8]) {
        let st = StreamState {
            header_blocks: Vec::new(),
            body: Vec::new(),
            ended: false,
            received: 0,
            granted: self.initial_window,
            send_window: self.peer_initial_window,
        };
        assert!(self.streams.insert(id, st).is_none(), "stream {id} opened twice");
        self.out.extend(frame(HEADERS, flags, id, payload));
    }

    /// Starts a Proxy request.
    fn open(&mut self, id: u32) {
        let block = self.request_block(PROXY_PATH);
        self.open_raw(id, END_HEADERS, &block);
    }

    /// Queues one DATA frame carrying `data` (padded if `pad` is given),
    /// first reading from the server until its windows allow the frame.
    async fn send_frame(&mut self, id: u32, data: &[u8], pad: Option<u8>, flags: u8) {
        let flow = data.len() as i64 + pad.map_or(0, |p| 1 + i64::from(p));
        assert!(flow as usize <= MAX_FRAME, "a {flow}-byte DATA frame");
        while flow > self.conn_send_window.min(self.stream(id).send_window) {
            self.pump().await;
        }
        self.conn_send_window -= flow;
        self.streams.get_mut(&id).expect("open stream").send_window -= flow;
        match pad {
            Some(p) => self.out.extend(frame(DATA, flags | PADDED, id, &padded(p, data))),
            None => self.out.extend(frame(DATA, flags, id, data)),
        }
        if self.out.len() >= 64 * 1024 {
            self.flush().await;
        }
    }

    /// Sends `bytes` as DATA frames carrying `sizes` bytes each (the last
    /// one what is left), and flushes.
    async fn send_frames(&mut self, id: u32, bytes: &[u8], sizes: impl IntoIterator<Item = usize>, pad: Option<u8>) {
        let mut rest = bytes;
        let mut sizes = sizes.into_iter();
        while !rest.is_empty() {
            let n = sizes.next().expect("frame sizes for every byte").min(rest.len());
            let (chunk, tail) = rest.split_at(n);
            self.send_frame(id, chunk, pad, 0).await;
            rest = tail;
        }
        self.flush().await;
    }

    /// Sends one packet in full-size DATA frames.
    async fn send(&mut self, id: u32, packet: &Packet) {
        self.send_frames(id, &grpc_message(packet), std::iter::repeat(MAX_FRAME), None).await;
    }

    /// Grants the server `n` more bytes on a stream (0: the connection).
    fn grant(&mut self, id: u32, n: u32) {
        if id == 0 {
            self.conn_granted += i64::from(n);
        } else {
            self.streams.get_mut(&id).expect("open stream").granted += i64::from(n);
        }
        self.out.extend(frame(WINDOW_UPDATE, 0, id, &n.to_be_bytes()));
    }

    async fn flush(&mut self) {
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await.expect("write to the server");
            self.out.clear();
        }
    }

    /// Flushes, then reads one frame and handles it: SETTINGS acked, PINGs
    /// answered, windows tracked, credit returned, stream data and header
    /// blocks recorded. Every DATA frame is checked against our windows.
    async fn pump(&mut self) {
        self.flush().await;
        let (kind, flags, id, payload) = match try_read_frame(&mut self.io).await {
            Ok(Some(f)) => f,
            Ok(None) => panic!("the server closed the connection"),
            Err(e) => panic!("reading from the server: {e}"),
        };
        match kind {
            SETTINGS if flags & ACK == 0 => {
                for entry in payload.chunks_exact(6) {
                    let value = i64::from(u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]));
                    if u16::from_be_bytes([entry[0], entry[1]]) == SETTINGS_INITIAL_WINDOW_SIZE {
                        let delta = value - self.peer_initial_window;
                        self.peer_initial_window = value;
                        for st in self.streams.values_mut() {
                            st.send_window += delta;
                        }
                    }
                }
                self.out.extend(frame(SETTINGS, ACK, 0, &[]));
            }
            PING => {
                assert_eq!((id, payload.len()), (0, 8), "malformed PING from the server");
                if flags & ACK == 0 {
                    self.out.extend(frame(PING, ACK, 0, &payload));
                } else {
                    self.ping_acks.push(payload);
                }
            }
            WINDOW_UPDATE => {
                let inc = i64::from(u32::from_be_bytes(payload[..4].try_into().expect("4 bytes")) & 0x7fff_ffff);
                assert_ne!(inc, 0, "WINDOW_UPDATE of 0 on stream {id}");
                if id == 0 {
                    self.conn_send_window += inc;
                } else if let Some(st) = self.streams.get_mut(&id) {
                    st.send_window += inc;
                }
            }
            DATA => {
                let len = payload.len() as i64;
                self.conn_received += len;
                assert!(
                    self.conn_received <= self.conn_granted,
                    "server overran the connection window: {} bytes sent, {} granted",
                    self.conn_received,
                    self.conn_granted
                );
                let st = self.streams.get_mut(&id).unwrap_or_else(|| panic!("DATA on unopened stream {id}"));
                assert!(!st.ended, "DATA on stream {id} after END_STREAM");
                st.received += len;
                assert!(
                    st.received <= st.granted,
                    "server overran stream {id}'s window: {} bytes sent, {} granted",
                    st.received,
                    st.granted
                );
                st.body.extend(unpad(kind, flags, payload));
                st.ended |= flags & END_STREAM != 0;
                if len > 0 {
                    self.grant(0, len as u32);
                    if self.credit_streams {
                        self.grant(id, len as u32);
                    }
                }
            }
            HEADERS => self.header_fragment(id, flags, unpad(kind, flags, payload)),
            CONTINUATION => {
                let (first_id, first_flags, mut block) = self.partial.take().expect("CONTINUATION without HEADERS");
                assert_eq!(first_id, id, "CONTINUATION on another stream");
                block.extend(payload);
                self.header_fragment(id, first_flags | (flags & END_HEADERS), block);
            }
            RST_STREAM => {
                // NO_ERROR after a complete response only says "stop sending".
                let code = u32::from_be_bytes(payload[..4].try_into().expect("4 bytes"));
                let ended = self.streams.get(&id).is_some_and(|s| s.ended);
                assert!(code == 0 && ended, "server reset stream {id}: error code {code}");
            }
            GOAWAY => panic!("server sent GOAWAY: {:?}", String::from_utf8_lossy(&payload[8.min(payload.len())..])),
            _ => {}
        }
    }

    fn header_fragment(&mut self, id: u32, flags: u8, block: Vec<u8>) {
        if flags & END_HEADERS == 0 {
            self.partial = Some((id, flags & !END_HEADERS, block));
            return;
        }
        let fields = self.decoder.decode(&block).expect("server HPACK");
        let st = self.streams.get_mut(&id).unwrap_or_else(|| panic!("HEADERS on unopened stream {id}"));
        st.header_blocks.push(fields);
        st.ended |= flags & END_STREAM != 0;
    }

    /// A complete message already received on `id`, decoded.
    fn try_packet(&mut self, id: u32) -> Option<Packet> {
        let st = self.streams.get_mut(&id).expect("open stream");
        take_message(&mut st.body).map(|msg| Packet::decode(msg.as_slice()).expect("a Packet"))
    }

    /// The next message on `id`, decoded.
    async fn next_packet(&mut self, id: u32) -> Packet {
        loop {
            if let Some(p) = self.try_packet(id) {
                return p;
            }
            assert!(!self.stream(id).ended, "stream {id} ended while a packet was expected");
            self.pump().await;
        }
    }

    /// Reads until the server ends `id`; returns its last header block.
    async fn trailers(&mut self, id: u32) -> Fields {
        while !self.stream(id).ended {
            self.pump().await;
        }
        self.stream(id).header_blocks.last().cloned().unwrap_or_default()
    }
}

/// The bytes of an echoed DATA packet for `connect_id`.
fn data_bytes(p: Packet, connect_id: i64) -> bytes::Bytes {
    match (PacketType::try_from(p.r#type), p.payload) {
        (Ok(PacketType::Data), Some(Payload::Data(d))) => {
            assert_eq!(d.connect_id, connect_id, "DATA names the connection");
            d.data
        }
        (t, payload) => panic!("expected DATA, got {t:?} {payload:?}"),
    }
}

/// Opens a Proxy stream and sends DIAL_REQ; returns the random to expect.
async fn start_dial(h2: &mut RawH2, id: u32, target: SocketAddr) -> i64 {
    let random = fastrand::i64(1..);
    h2.open(id);
    h2.send(id, &client::dial_req(&target.to_string(), random)).await;
    random
}

/// Expects the successful DIAL_RSP for `random`; returns the connectID.
async fn dial_rsp(h2: &mut RawH2, id: u32, random: i64) -> i64 {
    let p = h2.next_packet(id).await;
    let headers = h2.stream(id).header_blocks.first().expect("response headers");
    assert_eq!(field(headers, ":status"), Some("200"), "stream {id}: {headers:?}");
    assert_eq!(field(headers, "content-type"), Some("application/grpc"), "stream {id}");
    match (PacketType::try_from(p.r#type), p.payload) {
        (Ok(PacketType::DialRsp), Some(Payload::DialResponse(d))) => {
            assert_eq!(d.random, random, "DIAL_RSP echoes the random");
            assert_eq!(d.error, "", "stream {id}: dial failed");
            assert_ne!(d.connect_id, 0, "DIAL_RSP without a connectID");
            d.connect_id
        }
        (t, payload) => panic!("stream {id}: expected DIAL_RSP, got {t:?} {payload:?}"),
    }
}

async fn dial(h2: &mut RawH2, id: u32, target: SocketAddr) -> i64 {
    let random = start_dial(h2, id, target).await;
    dial_rsp(h2, id, random).await
}

/// Reads DATA packets on `id` until `n` bytes came back.
async fn read_echo(h2: &mut RawH2, id: u32, connect_id: i64, n: usize) -> Vec<u8> {
    let mut echoed = Vec::with_capacity(n);
    while echoed.len() < n {
        echoed.extend_from_slice(&data_bytes(h2.next_packet(id).await, connect_id));
    }
    assert_eq!(echoed.len(), n, "stream {id}: more bytes echoed than sent");
    echoed
}

/// Sends `payload` as one DATA packet and expects it back.
async fn echo(h2: &mut RawH2, id: u32, connect_id: i64, payload: &[u8]) {
    h2.send(id, &data(connect_id, payload.to_vec().into())).await;
    let echoed = read_echo(h2, id, connect_id, payload.len()).await;
    assert!(echoed == payload, "stream {id}: echoed bytes differ from those sent");
}

/// CLOSE_REQ, CLOSE_RSP without error, the client's END_STREAM, then the
/// response ends with grpc-status 0. Frames padded if `pad` is given.
async fn close_padded(h2: &mut RawH2, id: u32, connect_id: i64, pad: Option<u8>) {
    let close = grpc_message(&client::close_req(connect_id));
    h2.send_frames(id, &close, [close.len()], pad).await;
    match h2.next_packet(id).await.payload {
        Some(Payload::CloseResponse(c)) => {
            assert_eq!(c.connect_id, connect_id, "stream {id}");
            assert_eq!(c.error, "", "stream {id}: clean close");
        }
        other => panic!("stream {id}: expected CLOSE_RSP, got {other:?}"),
    }
    h2.send_frame(id, &[], pad, END_STREAM).await;
    let trailers = h2.trailers(id).await;
    assert_eq!(field(&trailers, "grpc-status"), Some("0"), "stream {id}: trailers {trailers:?}");
}

async fn close(h2: &mut RawH2, id: u32, connect_id: i64) {
    close_padded(h2, id, connect_id, None).await;
}

/// A fresh connection dials, echoes and closes cleanly.
async fn assert_new_connection_works(socket: &Path, target: SocketAddr, what: &str) {
    within(LIMIT, async {
        let mut h2 = RawH2::connect(socket).await;
        let connect_id = dial(&mut h2, 1, target).await;
        echo(&mut h2, 1, connect_id, format!("a new connection after {what}").as_bytes()).await;
        close(&mut h2, 1, connect_id).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_client_window_is_respected() {
    let lab = Lab::new().await;
    let _agent = lab.ready_agent().await;
    let target = echo_target().await;
    within(LIMIT, async {
        // Stream windows of 1000 bytes, grown only by the test below; the
        // connection window is credited as DATA arrives.
        let mut h2 = RawH2::connect_with(&lab.socket, Some(1000)).await;
        h2.credit_streams = false;
        let connect_id = dial(&mut h2, 1, target).await;
        let payload = random_bytes(64 * 1024);
        h2.send(1, &data(connect_id, payload.clone().into())).await;

        let mut steps = [1u32, 10, 100, 1000, 4096, 16_384, 20_000, 7, 333].into_iter().cycle();
        let mut echoed = Vec::new();
        let mut stalls = 0;
        let mut pings = 0u64;
        while echoed.len() < payload.len() {
            if let Some(p) = h2.try_packet(1) {
                echoed.extend_from_slice(&data_bytes(p, connect_id));
                continue;
            }
            let st = h2.stream(1);
            if st.received < st.granted {
                // `pump` fails the test on any DATA beyond the window.
                h2.pump().await;
                continue;
            }
            // The window is used up. A PING round trip flushes out any DATA
            // the server wrote before it read the PING, which must not
            // exceed the window either; only then is more granted.
            pings += 1;
            h2.out.extend(frame(PING, 0, 0, &pings.to_be_bytes()));
            while h2.ping_acks.is_empty() {
                h2.pump().await;
            }
            assert_eq!(h2.ping_acks.remove(0), pings.to_be_bytes());
            stalls += 1;
            h2.grant(1, steps.next().expect("cycle"));
        }
        assert!(echoed == payload, "the echoed 64 KiB differ from those sent");
        let st = h2.stream(1);
        assert!(st.received <= st.granted);
        // 64 KiB through a 1000-byte window grown by the steps above takes
        // 16 grants at least: the server waited for every one of them.
        assert!(stalls >= 16, "the server waited for window only {stalls} times");

        h2.credit_streams = true;
        h2.grant(1, 1 << 20);
        close(&mut h2, 1, connect_id).await;
    })
    .await;
    eventually("every connection closed", LIMIT, || lab.server.metrics.established.get() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_method_gets_unimplemented() {
    let lab = Lab::new().await;
    let _agent = lab.ready_agent().await;
    let target = echo_target().await;
    within(LIMIT, async {
        let mut h2 = RawH2::connect(&lab.socket).await;
        // Stream 1 as a client about to send its request message, stream 3
        // with the request ended at once.
        for (id, flags) in [(1, END_HEADERS), (3, END_HEADERS | END_STREAM)] {
            let block = h2.request_block("/Other/Method");
            h2.open_raw(id, flags, &block);
            let fields = h2.trailers(id).await;
            let st = h2.stream(id);
            assert_eq!(
                st.header_blocks.len(),
                1,
                "stream {id}: a trailers-only response (one HEADERS with END_STREAM)"
            );
            assert_eq!(st.received, 0, "stream {id}: no DATA in a refusal");
            assert_eq!(field(&fields, ":status"), Some("200"), "stream {id}: {fields:?}");
            assert_eq!(field(&fields, "content-type"), Some("application/grpc"), "stream {id}: {fields:?}");
            assert_eq!(field(&fields, "grpc-status"), Some("12"), "stream {id}: UNIMPLEMENTED expected: {fields:?}");
        }
        // The connection goes on serving the Proxy method.
        let connect_id = dial(&mut h2, 5, target).await;
        echo(&mut h2, 5, connect_id, b"proxied after two refused requests").await;
        close(&mut h2, 5, connect_id).await;
    })
    .await;
    assert_eq!(lab.server.metrics.frontend_errors("http2"), 0, "a refused request is no connection error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_is_acknowledged() {
    let lab = Lab::new().await;
    within(LIMIT, async {
        let mut h2 = RawH2::connect(&lab.socket).await;
        for payload in [*b"konnq-t3", [0, 1, 2, 3, 0xfd, 0xfe, 0xff, 0]] {
            h2.out.extend(frame(PING, 0, 0, &payload));
            while h2.ping_acks.is_empty() {
                h2.pump().await;
            }
            // Exactly one acknowledgement per PING, carrying its payload.
            assert_eq!(h2.ping_acks.remove(0), payload);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_is_pinged_after_frontend_keepalive_time() {
    let keepalive = Duration::from_millis(300);
    let lab = Lab::with(|raw| raw.frontend_keepalive_time = Some(keepalive)).await;
    within(LIMIT, async {
        let mut io = UnixStream::connect(&lab.socket).await.expect("connect");
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        io.write_all(&hello).await.expect("preface");
        let idle_since = tokio::time::Instant::now();
        // The default (30 s) would not ping within this bound.
        let ping = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match try_read_frame(&mut io).await.expect("read").expect("connection open") {
                    (PING, flags, 0, payload) if flags & ACK == 0 => return payload,
                    _ => continue,
                }
            }
        })
        .await
        .expect("a keep-alive PING within 10 s");
        assert_eq!(ping.len(), 8);
        assert!(idle_since.elapsed() >= keepalive, "pinged after {:?}", idle_since.elapsed());
    })
    .await;
}

/// How a connection ended after a bad frame.
struct Goaway {
    last_stream_id: u32,
    code: u32,
    /// The debug data: the server's reason.
    debug: String,
}

/// Connects, waits for the server's SETTINGS, sends `bad`, then expects
/// GOAWAY (after nothing but the frames an ordinary start produces)
/// followed by the end of the connection.
async fn provoke_goaway(socket: &Path, bad: &[u8]) -> Goaway {
    let mut io = UnixStream::connect(socket).await.expect("connect");
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    io.write_all(&hello).await.expect("preface");
    let first = try_read_frame(&mut io).await.expect("read").expect("the server's SETTINGS");
    assert_eq!((first.0, first.1 & ACK), (SETTINGS, 0), "the server starts with SETTINGS");
    // The server may stop reading at the bad frame: a failed write is fine.
    let _ = io.write_all(bad).await;
    loop {
        match try_read_frame(&mut io).await {
            Ok(Some((GOAWAY, _, id, payload))) => {
                assert_eq!(id, 0, "GOAWAY on a stream");
                assert!(payload.len() >= 8, "GOAWAY of {} bytes", payload.len());
                let word = |i: usize| u32::from_be_bytes(payload[i..i + 4].try_into().expect("4 bytes"));
                let mut rest = Vec::new();
                match io.read_to_end(&mut rest).await {
                    Ok(_) => {}
                    // Linux reports ECONNRESET to the peer of a Unix socket
                    // closed with unread data (the tail of a rejected frame):
                    // closed all the same.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                    Err(e) => panic!("reading after GOAWAY: {e}"),
                }
                assert!(rest.is_empty(), "the server sent {} bytes after GOAWAY", rest.len());
                let debug = String::from_utf8_lossy(&payload[8..]).into_owned();
                return Goaway { last_stream_id: word(0) & 0x7fff_ffff, code: word(4), debug };
            }
            // Its connection window, the SETTINGS ack, response headers.
            Ok(Some((WINDOW_UPDATE | SETTINGS | HEADERS, ..))) => {}
            Ok(Some((kind, flags, id, _))) => panic!("unexpected frame type {kind} flags {flags} on stream {id}"),
            Ok(None) => panic!("the server closed the connection without GOAWAY"),
            Err(e) => panic!("the connection failed before GOAWAY: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_errors_close_only_that_connection() {
    let lab = Lab::new().await;
    let _agent = lab.ready_agent().await;
    let target = echo_target().await;
    let errors = || lab.server.metrics.frontend_errors("http2");
    let before = errors();

    // A connection established before any of the bad ones.
    let mut established = RawH2::connect(&lab.socket).await;
    let established_id = within(LIMIT, dial(&mut established, 1, target)).await;

    // Request headers from a fresh encoder: each bad connection has its own.
    let request = || {
        let headers: [(&[u8], &[u8]); 5] = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", PROXY_PATH.as_bytes()),
            (b":authority", b"localhost"),
            (b"content-type", b"application/grpc"),
        ];
        Encoder::new().encode(headers)
    };
    let mut push_promise = 2u32.to_be_bytes().to_vec();
    push_promise.extend(request());
    let mut oversize = frame(HEADERS, END_HEADERS, 1, &request());
    oversize.extend(frame(DATA, 0, 1, &vec![0u8; MAX_FRAME + 1]));
    let cases: [(&str, Vec<u8>, u32, u32); 5] = [
        ("a PUSH_PROMISE", frame(PUSH_PROMISE, END_HEADERS, 1, &push_promise), PROTOCOL_ERROR, 0),
        // Stream 1 was opened first: GOAWAY names it as processed.
        ("a frame over 16384 bytes", oversize, FRAME_SIZE_ERROR, 1),
        ("a connection WINDOW_UPDATE of 0", frame(WINDOW_UPDATE, 0, 0, &0u32.to_be_bytes()), PROTOCOL_ERROR, 0),
        ("DATA on stream 0", frame(DATA, 0, 0, b"stray"), PROTOCOL_ERROR, 0),
        ("undecodable HPACK", frame(HEADERS, END_HEADERS, 1, &[0xff; 6]), COMPRESSION_ERROR, 0),
    ];
    let count = cases.len() as u64;
    for (i, (what, bad, code, last_stream_id)) in cases.into_iter().enumerate() {
        let goaway = within(LIMIT, provoke_goaway(&lab.socket, &bad)).await;
        assert_ne!(goaway.code, 0, "{what}: GOAWAY with NO_ERROR");
        assert_eq!(goaway.code, code, "{what}: GOAWAY error code");
        assert_eq!(goaway.last_stream_id, last_stream_id, "{what}: GOAWAY last stream id");
        // Counted once the connection's task ends, just after it closed.
        let expected = before + i as u64 + 1;
        eventually(&format!("{what} counted as an http2 error"), LIMIT, || errors() >= expected).await;
        assert_eq!(errors(), expected, "{what}: counted once");

        let msg = format!("still echoing after {what}");
        within(LIMIT, echo(&mut established, 1, established_id, msg.as_bytes())).await;
        assert_new_connection_works(&lab.socket, target, what).await;
    }
    within(LIMIT, close(&mut established, 1, established_id)).await;
    assert_eq!(errors(), before + count, "good connections add no http2 errors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_identifier_going_backwards_is_a_protocol_error() {
    let lab = Lab::new().await;
    let mut encoder = Encoder::new();
    let request: [(&[u8], &[u8]); 4] = [
        (b":method", b"POST"),
        (b":path", PROXY_PATH.as_bytes()),
        (b":scheme", b"http"),
        (b"content-type", b"application/grpc"),
    ];
    // Stream 3, then a new request on stream 1 (RFC 9113 §5.1.1: each new
    // stream's identifier is greater than all before it).
    let mut bad = frame(HEADERS, END_HEADERS, 3, &encoder.encode(request));
    bad.extend(frame(HEADERS, END_HEADERS, 1, &encoder.encode(request)));
    let goaway = within(LIMIT, provoke_goaway(&lab.socket, &bad)).await;
    assert_eq!((goaway.code, goaway.last_stream_id), (PROTOCOL_ERROR, 3), "{}", goaway.debug);
    assert_eq!(goaway.debug, "stream identifier went backwards: 1 is not greater than the last one, 3");

    // Stream 1 again after the client reset it: a frame on a stream the
    // client closed (RFC 9113 §5.1), STREAM_CLOSED.
    let mut encoder_again = Encoder::new();
    let mut reused = frame(HEADERS, END_HEADERS | END_STREAM, 1, &encoder_again.encode(request));
    reused.extend(frame(RST_STREAM, 0, 1, &0u32.to_be_bytes()));
    reused.extend(frame(HEADERS, END_HEADERS, 1, &encoder_again.encode(request)));
    let goaway = within(LIMIT, provoke_goaway(&lab.socket, &reused)).await;
    assert_eq!((goaway.code, goaway.last_stream_id), (STREAM_CLOSED, 1), "{}", goaway.debug);
    assert_eq!(goaway.debug, "HEADERS on closed stream 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_on_one_connection_with_interleaved_data() {
    const STREAMS: usize = 20;
    const BYTES: usize = 256 * 1024;
    let lab = Lab::new().await;
    let _agent = lab.ready_agent().await;
    let target = echo_target().await;
    within(LIMIT, async {
        let mut h2 = RawH2::connect(&lab.socket).await;
        let ids: Vec<u32> = (0..STREAMS as u32).map(|i| 2 * i + 1).collect();
        let mut randoms = Vec::new();
        for &id in &ids {
            randoms.push(start_dial(&mut h2, id, target).await);
        }
        let mut connect_ids = Vec::new();
        for (&id, random) in ids.iter().zip(randoms) {
            connect_ids.push(dial_rsp(&mut h2, id, random).await);
        }

        // Each stream's payload as DATA packets of assorted sizes, encoded.
        let payloads: Vec<Vec<u8>> = ids.iter().map(|_| random_bytes(BYTES)).collect();
        let encoded: Vec<Vec<u8>> = payloads
            .iter()
            .zip(&connect_ids)
            .map(|(payload, &connect_id)| {
                let mut out = Vec::new();
                let mut rest = &payload[..];
                for size in [1000, 40_000, 7, 16_379, 65_536, 3000].into_iter().cycle() {
                    if rest.is_empty() {
                        break;
                    }
                    let (chunk, tail) = rest.split_at(size.min(rest.len()));
                    out.extend(grpc_message(&data(connect_id, chunk.to_vec().into())));
                    rest = tail;
                }
                out
            })
            .collect();
        // One frame per stream in turn, of sizes that do not line up with
        // the messages: messages of different streams interleave mid-message.
        let frame_sizes = [16_384, 1, 7000, 3, 12_288, 555, 16_000, 2];
        let mut sent = [0usize; STREAMS];
        let mut turn = 0;
        while sent.iter().zip(&encoded).any(|(&s, e)| s < e.len()) {
            for i in 0..STREAMS {
                let rest = &encoded[i][sent[i]..];
                if rest.is_empty() {
                    continue;
                }
                let n = frame_sizes[(turn + i) % frame_sizes.len()].min(rest.len());
                h2.send_frame(ids[i], &rest[..n], None, 0).await;
                sent[i] += n;
            }
            turn += 1;
        }
        h2.flush().await;

        let mut echoed = vec![Vec::new(); STREAMS];
        loop {
            for i in 0..STREAMS {
                while let Some(p) = h2.try_packet(ids[i]) {
                    echoed[i].extend_from_slice(&data_bytes(p, connect_ids[i]));
                }
            }
            if echoed.iter().all(|e| e.len() >= BYTES) {
                break;
            }
            h2.pump().await;
        }
        for i in 0..STREAMS {
            assert_eq!(echoed[i].len(), BYTES, "stream {}: echoed length", ids[i]);
            assert!(echoed[i] == payloads[i], "stream {}: echoed bytes differ from those sent", ids[i]);
        }
        for i in 0..STREAMS {
            close(&mut h2, ids[i], connect_ids[i]).await;
        }
    })
    .await;
    eventually("every connection closed", LIMIT, || lab.server.metrics.established.get() == 0).await;
}

/// Frame sizes covering `total` bytes: an irregular cycle of sizes up to
/// the maximum frame, cut further at `extra_cuts`.
fn frame_sizes(total: usize, extra_cuts: &[usize]) -> Vec<usize> {
    let mut cuts = extra_cuts.to_vec();
    let mut at = 0;
    for size in [16_384, 4097, 1, 12_000, 7, 16_384, 2, 9999, 3, 15_000].into_iter().cycle() {
        at += size;
        if at >= total {
            break;
        }
        cuts.push(at);
    }
    cuts.push(total);
    cuts.sort_unstable();
    cuts.dedup();
    let mut prev = 0;
    cuts.into_iter()
        .map(|cut| {
            let size = cut - prev;
            prev = cut;
            size
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_spanning_many_frames() {
    let lab = Lab::new().await;
    let _agent = lab.ready_agent().await;
    let target = echo_target().await;
    within(LIMIT, async {
        let mut h2 = RawH2::connect(&lab.socket).await;
        let connect_id = dial(&mut h2, 1, target).await;
        // A 3 MiB packet, twelve times the stream window, then a small one.
        let big = random_bytes(3 * 1024 * 1024);
        let small = b"the packet after the big one".to_vec();
        let mut wire = grpc_message(&data(connect_id, big.clone().into()));
        let boundary = wire.len();
        wire.extend(grpc_message(&data(connect_id, small.clone().into())));
        // The big message's 5-byte prefix split 1 + 2 + 2 (the third frame
        // also carries its first body byte); the small message's prefix
        // split across three frames, the first of which ends the big message.
        let sizes = frame_sizes(wire.len(), &[1, 3, 6, boundary - 1, boundary + 1, boundary + 3]);
        assert_eq!(sizes[..3], [1, 2, 3]);
        assert!(sizes.iter().all(|&s| (1..=MAX_FRAME).contains(&s)));
        h2.send_frames(1, &wire, sizes, None).await;

        let echoed = read_echo(&mut h2, 1, connect_id, big.len() + small.len()).await;
        assert!(echoed[..big.len()] == big[..], "the 3 MiB echoed differ from those sent");
        assert_eq!(&echoed[big.len()..], &small[..]);
        close(&mut h2, 1, connect_id).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn padded_frames_are_accepted() {
    let lab = Lab::new().await;
    let _agent = lab.ready_agent().await;
    let target = echo_target().await;
    within(LIMIT, async {
        let mut h2 = RawH2::connect(&lab.socket).await;

        // Stream 1: HEADERS with PADDED; DIAL_REQ in a DATA frame with
        // PADDED and no padding.
        let block = h2.request_block(PROXY_PATH);
        h2.open_raw(1, END_HEADERS | PADDED, &padded(10, &block));
        let random1 = fastrand::i64(1..);
        let dial1 = grpc_message(&client::dial_req(&target.to_string(), random1));
        h2.send_frames(1, &dial1, [dial1.len()], Some(0)).await;
        // Stream 3: HEADERS with PADDED and PRIORITY; DIAL_REQ with the
        // largest padding.
        let block = h2.request_block(PROXY_PATH);
        let mut priority_and_block = vec![0, 0, 0, 0, 15];
        priority_and_block.extend(block);
        h2.open_raw(3, END_HEADERS | PADDED | PRIORITY, &padded(200, &priority_and_block));
        let random3 = fastrand::i64(1..);
        let dial3 = grpc_message(&client::dial_req(&target.to_string(), random3));
        h2.send_frames(3, &dial3, [dial3.len()], Some(255)).await;
        let id1 = dial_rsp(&mut h2, 1, random1).await;
        let id3 = dial_rsp(&mut h2, 3, random3).await;

        // Stream 1: one byte of message per frame with 255 bytes of padding,
        // over 5 MiB of flow-controlled bytes in all, more than the stream
        // and connection windows: this goes through only if the server
        // credits padding back.
        let payload1 = random_bytes(21_000);
        let wire1 = grpc_message(&data(id1, payload1.clone().into()));
        assert!(wire1.len() * 257 > 5 * 1024 * 1024);
        h2.send_frames(1, &wire1, std::iter::repeat(1), Some(255)).await;
        let echoed1 = read_echo(&mut h2, 1, id1, payload1.len()).await;
        assert!(echoed1 == payload1, "stream 1: echoed bytes differ from those sent");

        // Stream 3: full-size frames, 255 bytes of them padding.
        let payload3 = random_bytes(100 * 1024);
        let wire3 = grpc_message(&data(id3, payload3.clone().into()));
        h2.send_frames(3, &wire3, std::iter::repeat(MAX_FRAME - 256), Some(255)).await;
        let echoed3 = read_echo(&mut h2, 3, id3, payload3.len()).await;
        assert!(echoed3 == payload3, "stream 3: echoed bytes differ from those sent");

        close_padded(&mut h2, 1, id1, Some(7)).await;
        close_padded(&mut h2, 3, id3, Some(255)).await;
    })
    .await;
    assert_eq!(lab.server.metrics.frontend_errors("http2"), 0);
}

/// The server's stream window (SETTINGS_INITIAL_WINDOW_SIZE).
const SERVER_STREAM_WINDOW: usize = 256 * 1024;

/// Opens `ids` and sends on each the start of a message of the largest
/// size: its prefix, then as many of its `body` bytes as the server's
/// windows let through. Returns the bytes each stream sent once no window
/// opens any more (or all were sent).
async fn send_until_stalled(h2: &mut RawH2, ids: &[u32], body: usize) -> Vec<usize> {
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&(MAX_MSG as u32).to_be_bytes());
    let total = prefix.len() + body;
    for &id in ids {
        h2.open(id);
    }
    let mut sent = vec![0usize; ids.len()];
    let mut pings = 0u64;
    loop {
        let mut progress = false;
        for (i, &id) in ids.iter().enumerate() {
            loop {
                let window = h2.conn_send_window.min(h2.stream(id).send_window).max(0) as usize;
                let n = window.min(total - sent[i]).min(MAX_FRAME);
                if n == 0 {
                    break;
                }
                let mut payload = vec![0u8; n];
                for (k, byte) in payload.iter_mut().enumerate() {
                    *byte = prefix.get(sent[i] + k).copied().unwrap_or(0);
                }
                h2.send_frame(id, &payload, None, 0).await;
                sent[i] += n;
                progress = true;
            }
        }
        if !progress || sent.iter().all(|&n| n == total) {
            return sent;
        }
        // The PING's acknowledgement follows every WINDOW_UPDATE the server
        // sent for the bytes before it.
        pings += 1;
        h2.out.extend(frame(PING, 0, 0, &pings.to_be_bytes()));
        while h2.ping_acks.is_empty() {
            h2.pump().await;
        }
        h2.ping_acks.clear();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_messages_are_held_to_a_budget_while_other_clients_are_served() {
    // Messages of the largest size (16 MiB), each sent but for its last MiB.
    const BODY: usize = 15 * 1024 * 1024;
    const RESERVED: usize = MAX_MSG + 5;
    const PROCESS_BUDGET: usize = 64 * 1024 * 1024;
    let lab = Lab::new().await;
    let _agent = lab.ready_agent().await;
    let target = echo_target().await;
    let reserved = "konnq_server_frontend_partial_message_bytes";
    within(LIMIT, async {
        // One connection may hold one such message: its second one gets no
        // more than the stream window.
        let mut first = RawH2::connect(&lab.socket).await;
        let sent = send_until_stalled(&mut first, &[1, 3], BODY).await;
        assert_eq!(sent[0], 5 + BODY, "the first message goes through");
        assert!(sent[1] <= SERVER_STREAM_WINDOW, "the second waits within its window: {} bytes sent", sent[1]);
        assert_eq!(lab.metric(reserved).await, RESERVED as f64);

        // The process may hold 64 MiB: three such messages, not four.
        let mut others = Vec::new();
        for expect_through in [true, true, false] {
            let mut h2 = RawH2::connect(&lab.socket).await;
            let sent = send_until_stalled(&mut h2, &[1], BODY).await;
            if expect_through {
                assert_eq!(sent[0], 5 + BODY, "a message within the process's budget goes through");
            } else {
                assert!(sent[0] <= SERVER_STREAM_WINDOW, "past the process's budget: {} bytes sent", sent[0]);
            }
            others.push(h2);
        }
        let held = lab.metric(reserved).await;
        assert_eq!(held, (3 * RESERVED) as f64);
        assert!(held <= PROCESS_BUDGET as f64);

        // Meanwhile a client on another connection is served as ever.
        let mut client = lab.channel().await;
        let mut stream = Stream::dial(&mut client, &target.to_string()).await;
        let payload = random_bytes(4 * 1024 * 1024);
        assert!(echo_through(&mut stream, &payload).await == payload, "echoed bytes differ");
        assert_new_connection_works(&lab.socket, target, "the budget was spent").await;
        drop((first, others));
    })
    .await;
    eventually("every reservation returned", LIMIT, || metric(&lab.server.metrics.render(), reserved) == 0.0).await;
}
