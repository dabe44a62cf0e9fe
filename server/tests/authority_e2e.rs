//! The real server accepts the `:authority` grpc-go sends for a Unix socket
//! target: the socket path, percent-encoded (recent grpc-go) or raw (older
//! ones), with `localhost` as the control.
//!
//! `h2`'s client cannot send such an authority, so this test speaks HTTP/2
//! by hand over the Unix socket: one Proxy stream per form, each dialing an
//! echo target through a real agent, echoing bytes and closing cleanly —
//! several streams on one connection, and one connection per form.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::h2frames::*;
use common::*;
use konnq_protocol::konnectivity::{client, data};
use konnq_shared::proto::{packet::Payload, Packet, PacketType};
use loona_hpack::{Decoder, Encoder};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const LIMIT: Duration = Duration::from_secs(15);

/// What the server sent on one stream so far.
#[derive(Default)]
struct Inbound {
    header_blocks: Vec<Fields>,
    body: Vec<u8>,
    ended: bool,
}

/// A hand-written HTTP/2 client connection.
struct RawH2 {
    io: UnixStream,
    encoder: Encoder<'static>,
    decoder: Decoder<'static>,
    streams: HashMap<u32, Inbound>,
    /// A header block still waiting for its CONTINUATION frames.
    partial: Option<(u32, u8, Vec<u8>)>,
}

impl RawH2 {
    async fn connect(socket: &std::path::Path) -> RawH2 {
        let mut io = UnixStream::connect(socket).await.expect("connect to the Unix socket");
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        io.write_all(&hello).await.expect("preface");
        RawH2 { io, encoder: Encoder::new(), decoder: Decoder::new(), streams: HashMap::new(), partial: None }
    }

    /// Starts a Proxy request as grpc-go does, with the given `:authority`.
    async fn open(&mut self, stream_id: u32, authority: &str) {
        let headers: [(&[u8], &[u8]); 6] = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/ProxyService/Proxy"),
            (b":authority", authority.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ];
        let block = self.encoder.encode(headers);
        self.write(&frame(HEADERS, END_HEADERS, stream_id, &block)).await;
    }

    async fn send(&mut self, stream_id: u32, packet: &Packet) {
        self.write(&frame(DATA, 0, stream_id, &grpc_message(packet))).await;
    }

    async fn end_stream(&mut self, stream_id: u32) {
        self.write(&frame(DATA, END_STREAM, stream_id, &[])).await;
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("write to the server");
    }

    async fn read_frame(&mut self) -> (u8, u8, u32, Vec<u8>) {
        let mut head = [0u8; 9];
        self.io.read_exact(&mut head).await.expect("frame header");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream_id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0; len];
        self.io.read_exact(&mut payload).await.expect("frame payload");
        (head[3], head[4], stream_id, payload)
    }

    /// Reads one frame and handles it: SETTINGS acked, PINGs answered, flow
    /// control credit returned, stream data and header blocks recorded.
    async fn pump(&mut self) {
        let (kind, flags, stream_id, payload) = self.read_frame().await;
        match kind {
            SETTINGS if flags & ACK == 0 => self.write(&frame(SETTINGS, ACK, 0, &[])).await,
            PING if flags & ACK == 0 => self.write(&frame(PING, ACK, 0, &payload)).await,
            DATA => {
                if !payload.is_empty() {
                    let credit = (payload.len() as u32).to_be_bytes();
                    let mut updates = frame(WINDOW_UPDATE, 0, 0, &credit);
                    updates.extend(frame(WINDOW_UPDATE, 0, stream_id, &credit));
                    self.write(&updates).await;
                }
                let inbound = self.streams.entry(stream_id).or_default();
                inbound.body.extend(unpad(kind, flags, payload));
                inbound.ended |= flags & END_STREAM != 0;
            }
            HEADERS => self.header_fragment(stream_id, flags, unpad(kind, flags, payload)),
            CONTINUATION => {
                let (id, first_flags, mut block) = self.partial.take().expect("CONTINUATION without HEADERS");
                assert_eq!(id, stream_id, "CONTINUATION on another stream");
                block.extend(payload);
                self.header_fragment(stream_id, first_flags | (flags & END_HEADERS), block);
            }
            RST_STREAM => {
                // NO_ERROR after a complete response only says "stop sending".
                let code = u32::from_be_bytes(payload[..4].try_into().expect("4 bytes"));
                let ended = self.streams.get(&stream_id).is_some_and(|s| s.ended);
                assert!(code == 0 && ended, "server reset stream {stream_id}: error code {code}");
            }
            GOAWAY => panic!("server sent GOAWAY: {payload:?}"),
            _ => {}
        }
    }

    fn header_fragment(&mut self, stream_id: u32, flags: u8, block: Vec<u8>) {
        if flags & END_HEADERS == 0 {
            self.partial = Some((stream_id, flags & !END_HEADERS, block));
            return;
        }
        let fields = self.decoder.decode(&block).expect("server HPACK");
        let inbound = self.streams.entry(stream_id).or_default();
        inbound.header_blocks.push(fields);
        inbound.ended |= flags & END_STREAM != 0;
    }

    /// The next gRPC message on `stream_id`, decoded as a Packet.
    async fn next_packet(&mut self, stream_id: u32) -> Packet {
        loop {
            let inbound = self.streams.entry(stream_id).or_default();
            if let Some(msg) = take_message(&mut inbound.body) {
                return Packet::decode(msg.as_slice()).expect("a Packet");
            }
            assert!(!inbound.ended, "stream {stream_id} ended while a packet was expected");
            self.pump().await;
        }
    }

    /// Reads until the server ends `stream_id`; returns its last header block.
    async fn trailers(&mut self, stream_id: u32) -> Fields {
        while !self.streams.get(&stream_id).is_some_and(|s| s.ended) {
            self.pump().await;
        }
        self.streams[&stream_id].header_blocks.last().cloned().unwrap_or_default()
    }

    fn response_headers(&self, stream_id: u32) -> &Fields {
        self.streams[&stream_id].header_blocks.first().expect("response headers")
    }
}

/// Sends DIAL_REQ on a new stream; returns the random to expect back.
async fn start_dial(h2: &mut RawH2, stream_id: u32, authority: &str, target: SocketAddr) -> i64 {
    let random = fastrand::i64(1..);
    h2.open(stream_id, authority).await;
    h2.send(stream_id, &client::dial_req(&target.to_string(), random)).await;
    random
}

/// Expects the successful DIAL_RSP for `random`; returns the connectID.
async fn dial_rsp(h2: &mut RawH2, stream_id: u32, authority: &str, random: i64) -> i64 {
    let p = h2.next_packet(stream_id).await;
    let headers = h2.response_headers(stream_id);
    assert_eq!(field(headers, ":status"), Some("200"), "{authority}: response status");
    assert_eq!(field(headers, "content-type"), Some("application/grpc"), "{authority}");
    match (PacketType::try_from(p.r#type), p.payload) {
        (Ok(PacketType::DialRsp), Some(Payload::DialResponse(d))) => {
            assert_eq!(d.random, random, "{authority}: DIAL_RSP echoes the random");
            assert_eq!(d.error, "", "{authority}: dial failed");
            assert_ne!(d.connect_id, 0, "{authority}: DIAL_RSP without a connectID");
            d.connect_id
        }
        (t, payload) => panic!("{authority}: expected DIAL_RSP, got {t:?} {payload:?}"),
    }
}

/// Sends bytes as one DATA packet and reads them back echoed.
async fn echo(h2: &mut RawH2, stream_id: u32, connect_id: i64, authority: &str) {
    let payload = format!("echo through the server for :authority {authority} on stream {stream_id}");
    h2.send(stream_id, &data(connect_id, payload.clone().into_bytes().into())).await;
    let mut echoed = Vec::new();
    while echoed.len() < payload.len() {
        match h2.next_packet(stream_id).await.payload {
            Some(Payload::Data(d)) => {
                assert_eq!(d.connect_id, connect_id, "{authority}: DATA names the connection");
                echoed.extend_from_slice(&d.data);
            }
            other => panic!("{authority}: expected DATA, got {other:?}"),
        }
    }
    assert_eq!(echoed, payload.as_bytes(), "{authority}: echoed bytes");
}

/// CLOSE_REQ, CLOSE_RSP without error, then the response ends with grpc-status 0.
async fn close(h2: &mut RawH2, stream_id: u32, connect_id: i64, authority: &str) {
    h2.send(stream_id, &client::close_req(connect_id)).await;
    match h2.next_packet(stream_id).await.payload {
        Some(Payload::CloseResponse(c)) => {
            assert_eq!(c.connect_id, connect_id, "{authority}");
            assert_eq!(c.error, "", "{authority}: clean close");
        }
        other => panic!("{authority}: expected CLOSE_RSP, got {other:?}"),
    }
    h2.end_stream(stream_id).await;
    let trailers = h2.trailers(stream_id).await;
    assert_eq!(field(&trailers, "grpc-status"), Some("0"), "{authority}: trailers {trailers:?}");
}

/// The three forms of `:authority` real clients send for a Unix socket.
fn authorities(socket: &std::path::Path) -> Vec<(&'static str, String)> {
    let raw = socket.to_str().expect("utf-8 socket path").to_owned();
    assert!(raw.starts_with('/'), "absolute socket path");
    vec![("percent-encoded path", raw.replace('/', "%2F")), ("raw path", raw), ("localhost", "localhost".into())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_authorities_on_one_connection() {
    let lab = Lab::new().await;
    let _agent = lab.ready_agent().await;
    let target = echo_target().await;
    let mut forms = authorities(&lab.socket);
    // Stream 7 repeats the first form: HPACK now sends it as a reference
    // into the dynamic table, which must be fixed up as well.
    forms.push(("percent-encoded path again", forms[0].1.clone()));

    within(LIMIT, async {
        let mut h2 = RawH2::connect(&lab.socket).await;
        let ids: Vec<u32> = (0..forms.len() as u32).map(|i| 2 * i + 1).collect();
        // All dials in flight at once, then each stream served in turn.
        let mut randoms = Vec::new();
        for (id, (_, authority)) in ids.iter().zip(&forms) {
            randoms.push(start_dial(&mut h2, *id, authority, target).await);
        }
        let mut connect_ids = Vec::new();
        for ((id, (what, _)), random) in ids.iter().zip(&forms).zip(randoms) {
            connect_ids.push(dial_rsp(&mut h2, *id, what, random).await);
        }
        let distinct: std::collections::HashSet<_> = connect_ids.iter().collect();
        assert_eq!(distinct.len(), forms.len(), "one connectID per stream");
        for ((id, (what, _)), connect_id) in ids.iter().zip(&forms).zip(&connect_ids) {
            echo(&mut h2, *id, *connect_id, what).await;
        }
        for ((id, (what, _)), connect_id) in ids.iter().zip(&forms).zip(&connect_ids) {
            close(&mut h2, *id, *connect_id, what).await;
        }
    })
    .await;
    eventually("every connection closed", LIMIT, || lab.server.metrics.established.get() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_authorities_one_connection_each() {
    let lab = Lab::new().await;
    let _agent = lab.ready_agent().await;
    let target = echo_target().await;
    for (what, authority) in authorities(&lab.socket) {
        within(LIMIT, async {
            let mut h2 = RawH2::connect(&lab.socket).await;
            let random = start_dial(&mut h2, 1, &authority, target).await;
            let connect_id = dial_rsp(&mut h2, 1, what, random).await;
            echo(&mut h2, 1, connect_id, what).await;
            close(&mut h2, 1, connect_id, what).await;
        })
        .await;
    }
    let bytes = lab.metric("konnq_server_bytes_total{direction=\"to_agent\"}").await;
    assert!(bytes > 0.0, "the bytes went through the agent");
    eventually("every connection closed", LIMIT, || lab.server.metrics.established.get() == 0).await;
}
