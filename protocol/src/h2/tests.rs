//! The connection fed from a scripted client: the same exchange whole,
//! split and byte at a time; garbage; RFC 9113 cases; flow control, credit,
//! budgets and keep-alive.

use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::*;
use crate::fuzzing::h2::{frame, message, parse_frames, request_block, transmitted};

const KEEPALIVE: Duration = Duration::from_secs(30);

struct Client {
    conn: Connection,
    now: Instant,
    buf: BytesMut,
}

impl Client {
    /// A connection past the client's preface and empty SETTINGS, with our
    /// SETTINGS, window update and SETTINGS ack already taken.
    fn new() -> Client {
        let now = Instant::now();
        let config = Config { max_message_bytes: 1 << 20, keepalive_time: KEEPALIVE };
        let mut client = Client { conn: Connection::new(config, now), now, buf: BytesMut::new() };
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(FrameType::Settings, Flags::NONE, 0, &[]));
        client.send(&hello).expect("a valid preface");
        let kinds: Vec<_> = client.frames().iter().map(|(h, _)| (h.kind, h.flags)).collect();
        assert_eq!(
            kinds,
            [
                (FrameType::Settings, Flags::NONE),
                (FrameType::WindowUpdate, Flags::NONE),
                (FrameType::Settings, Flags::ACK)
            ]
        );
        client
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), ConnectionError> {
        self.buf.extend_from_slice(bytes);
        let r = self.conn.recv(self.now, &mut self.buf);
        self.conn.assert_invariants();
        r
    }

    fn frames(&mut self) -> Vec<(FrameHead, Vec<u8>)> {
        parse_frames(&transmitted(&mut self.conn))
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.conn.poll_event()).collect()
    }

    /// Opens a Proxy stream.
    fn open(&mut self, id: u32) {
        let block = request_block("POST", "/ProxyService/Proxy", "application/grpc");
        self.send(&frame(FrameType::Headers, Flags::END_HEADERS, id, &block)).expect("a request");
        assert!(matches!(self.events()[..], [Event::Open { stream }] if stream == id));
        let frames = self.frames();
        assert_eq!(frames.len(), 1);
        assert_eq!((frames[0].0.kind, frames[0].0.stream_id), (FrameType::Headers, id), "response headers");
    }
}

/// The GOAWAY code the connection sent, if it sent one.
fn goaway(frames: &[(FrameHead, Vec<u8>)]) -> Option<ErrorCode> {
    let (_, payload) = frames.iter().find(|(h, _)| h.kind == FrameType::GoAway)?;
    Some(ErrorCode(u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]])))
}

fn rst(frames: &[(FrameHead, Vec<u8>)], id: u32) -> Option<ErrorCode> {
    let (_, p) = frames.iter().find(|(h, _)| h.kind == FrameType::RstStream && h.stream_id == id)?;
    Some(ErrorCode(u32::from_be_bytes([p[0], p[1], p[2], p[3]])))
}

/// A whole exchange: preface, SETTINGS, a Proxy call with two messages,
/// END_STREAM, a PING.
fn exchange() -> Vec<u8> {
    let mut wire = PREFACE.to_vec();
    wire.extend(frame(FrameType::Settings, Flags::NONE, 0, &[0, 4, 0, 1, 0, 0]));
    let block = request_block("POST", "/ProxyService/Proxy", "application/grpc");
    wire.extend(frame(FrameType::Headers, Flags::END_HEADERS, 1, &block));
    let mut body = message(7, 100);
    body.extend(message(8, 3));
    wire.extend(frame(FrameType::Data, Flags::END_STREAM, 1, &body));
    wire.extend(frame(FrameType::Ping, Flags::NONE, 0, b"12345678"));
    wire
}

/// What the connection does with `wire` fed in `pieces`: its frames and a
/// summary of its events.
fn outcome(wire: &[u8], pieces: impl Iterator<Item = usize>) -> (Vec<(FrameHead, Vec<u8>)>, Vec<String>) {
    let now = Instant::now();
    let mut conn = Connection::new(Config { max_message_bytes: 1 << 20, keepalive_time: KEEPALIVE }, now);
    let mut buf = BytesMut::new();
    let mut at = 0;
    for n in pieces {
        buf.extend_from_slice(&wire[at..at + n]);
        at += n;
        conn.recv(now, &mut buf).expect("a valid exchange");
    }
    assert_eq!(at, wire.len());
    assert!(buf.is_empty(), "everything taken");
    let events = std::iter::from_fn(|| conn.poll_event()).map(|e| format!("{e:?}")).collect();
    (parse_frames(&transmitted(&mut conn)), events)
}

#[test]
fn an_exchange_split_anywhere_or_byte_at_a_time_has_the_same_outcome() {
    let wire = exchange();
    let whole = outcome(&wire, std::iter::once(wire.len()));
    assert_eq!(whole.1.len(), 4, "open, two packets, end: {:?}", whole.1);
    assert!(whole.1[1].contains("Packet { stream: 1") && whole.1[3] == "End { stream: 1 }", "{:?}", whole.1);
    let pong = whole.0.iter().find(|(h, _)| h.kind == FrameType::Ping).expect("PING answered");
    assert_eq!((pong.0.flags, &pong.1[..]), (Flags::ACK, &b"12345678"[..]));
    assert_eq!(outcome(&wire, std::iter::repeat_n(1, wire.len())), whole, "byte at a time");
    for split in 0..=wire.len() {
        assert_eq!(outcome(&wire, [split, wire.len() - split].into_iter()), whole, "split at {split}");
    }
}

#[test]
fn garbage_is_answered_with_goaway() {
    for garbage in [&b"GET / HTTP/1.1\r\n\r\n"[..], b"PRI * HTTP/2.0\r\n\r\nXX", &[0xff; 64]] {
        let mut conn = Connection::new(Config { max_message_bytes: 1, keepalive_time: KEEPALIVE }, Instant::now());
        let err = conn.recv(Instant::now(), &mut BytesMut::from(garbage)).expect_err("garbage");
        assert!(matches!(err, ConnectionError::Protocol { code: ErrorCode::PROTOCOL_ERROR, .. }), "{err}");
        assert_eq!(goaway(&parse_frames(&transmitted(&mut conn))), Some(ErrorCode::PROTOCOL_ERROR));
        assert_eq!(conn.poll_timeout(), None, "a failed connection wants no timer");
        conn.recv(Instant::now(), &mut BytesMut::from(&b"more"[..])).expect("then ignored");
    }
}

#[test]
fn connection_errors_of_rfc_9113_send_goaway_with_their_code() {
    let block = request_block("POST", "/ProxyService/Proxy", "application/grpc");
    let cases: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
        ("frame over 16384", frame(FrameType::Data, Flags::NONE, 1, &[0; 16_385]), ErrorCode::FRAME_SIZE_ERROR),
        ("DATA on stream 0", frame(FrameType::Data, Flags::NONE, 0, &[]), ErrorCode::PROTOCOL_ERROR),
        ("DATA on an idle stream", frame(FrameType::Data, Flags::NONE, 3, &[]), ErrorCode::PROTOCOL_ERROR),
        ("even stream", frame(FrameType::Headers, Flags::END_HEADERS, 2, &block), ErrorCode::PROTOCOL_ERROR),
        ("SETTINGS ACK with payload", frame(FrameType::Settings, Flags::ACK, 0, &[0; 6]), ErrorCode::FRAME_SIZE_ERROR),
        ("SETTINGS on a stream", frame(FrameType::Settings, Flags::NONE, 1, &[]), ErrorCode::PROTOCOL_ERROR),
        (
            "bad INITIAL_WINDOW_SIZE",
            frame(FrameType::Settings, Flags::NONE, 0, &[0, 4, 0x80, 0, 0, 0]),
            ErrorCode::FLOW_CONTROL_ERROR,
        ),
        ("PING of 7 bytes", frame(FrameType::Ping, Flags::NONE, 0, &[0; 7]), ErrorCode::FRAME_SIZE_ERROR),
        ("PUSH_PROMISE", frame(FrameType::PushPromise, Flags::NONE, 1, &[0; 4]), ErrorCode::PROTOCOL_ERROR),
        (
            "connection WINDOW_UPDATE of 0",
            frame(FrameType::WindowUpdate, Flags::NONE, 0, &[0; 4]),
            ErrorCode::PROTOCOL_ERROR,
        ),
        ("CONTINUATION alone", frame(FrameType::Continuation, Flags::END_HEADERS, 1, &[]), ErrorCode::PROTOCOL_ERROR),
        ("bad HPACK", frame(FrameType::Headers, Flags::END_HEADERS, 1, &[0xff; 8]), ErrorCode::COMPRESSION_ERROR),
        (
            "RST_STREAM on an idle stream",
            frame(FrameType::RstStream, Flags::NONE, 5, &[0; 4]),
            ErrorCode::PROTOCOL_ERROR,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut client = Client::new();
        assert!(client.send(&bytes).is_err(), "{what}");
        assert_eq!(goaway(&client.frames()), Some(code), "{what}");
    }
    let mut client = Client::new();
    let mut interrupted = frame(FrameType::Headers, Flags::NONE, 1, &block);
    interrupted.extend(frame(FrameType::Ping, Flags::NONE, 0, &[0; 8]));
    assert!(client.send(&interrupted).is_err(), "header block interrupted");
}

#[test]
fn a_header_block_may_come_in_continuation_frames() {
    let mut client = Client::new();
    let block = request_block("POST", "/ProxyService/Proxy", "application/grpc");
    let (a, b) = block.split_at(block.len() / 2);
    let mut wire = frame(FrameType::Headers, Flags::NONE, 1, a);
    wire.extend(frame(FrameType::Continuation, Flags::END_HEADERS, 1, b));
    client.send(&wire).unwrap();
    assert!(matches!(client.events()[..], [Event::Open { stream: 1 }]));
}

#[test]
fn requests_we_do_not_serve_are_refused() {
    let mut client = Client::new();
    let get = request_block("GET", "/", "text/html");
    client.send(&frame(FrameType::Headers, Flags::END_HEADERS | Flags::END_STREAM, 1, &get)).unwrap();
    let frames = client.frames();
    let kinds: Vec<_> = frames.iter().map(|(h, _)| (h.kind, h.flags)).collect();
    assert_eq!(
        kinds,
        [
            (FrameType::Headers, Flags::END_HEADERS),
            (FrameType::Data, Flags::NONE),
            (FrameType::Data, Flags::END_STREAM)
        ]
    );
    assert!(frames[0].1.windows(3).any(|w| w == b"405"));

    let other = request_block("POST", "/Other/Method", "application/grpc");
    client.send(&frame(FrameType::Headers, Flags::END_HEADERS, 3, &other)).unwrap();
    let frames = client.frames();
    assert_eq!(frames[0].0.flags, Flags::END_HEADERS | Flags::END_STREAM, "trailers only");
    assert!(frames[0].1.windows(2).any(|w| w == b"12"), "UNIMPLEMENTED");
    assert_eq!(rst(&frames, 3), Some(ErrorCode::NO_ERROR), "a client still sending is asked to stop");
    let events = client.events();
    assert!(events.iter().all(|e| matches!(e, Event::Refused { .. } | Event::Closed { .. })), "{events:?}");
    assert_eq!(client.conn.stream_count(), 0);
}

#[test]
fn stream_errors_reset_only_their_stream() {
    let mut client = Client::new();
    client.open(1);
    client.send(&frame(FrameType::WindowUpdate, Flags::NONE, 1, &[0; 4])).unwrap();
    assert_eq!(rst(&client.frames(), 1), Some(ErrorCode::PROTOCOL_ERROR));
    let events = client.events();
    assert!(
        matches!(events[..], [Event::Reset { .. }, Event::Cancel { stream: 1, .. }, Event::Closed { stream: 1 }]),
        "{events:?}"
    );
    client.send(&frame(FrameType::Data, Flags::NONE, 1, &[1])).expect("DATA that crossed our reset");
    assert_eq!(client.frames(), [], "ignored");
}

#[test]
fn responses_wait_for_the_windows_and_the_stream_is_writable_after() {
    let mut client = Client::new();
    // The client allows 100 bytes per stream.
    client.send(&frame(FrameType::Settings, Flags::NONE, 0, &[0, 4, 0, 0, 0, 100])).unwrap();
    client.frames();
    client.open(1);
    client.conn.send_data(1, 9, vec![bytes::Bytes::from(vec![3; 250])]);
    let sent: usize = client.frames().iter().map(|(h, _)| h.len).sum();
    assert_eq!(sent, 100);
    assert!(client.conn.is_blocked(1));
    client.send(&frame(FrameType::WindowUpdate, Flags::NONE, 1, &1000u32.to_be_bytes())).unwrap();
    let sent: usize = client.frames().iter().filter(|(h, _)| h.kind == FrameType::Data).map(|(h, _)| h.len).sum();
    assert!(sent > 150 && !client.conn.is_blocked(1), "{sent}");
    assert!(matches!(client.events()[..], [Event::Writable { stream: 1 }]));
    client.conn.finish(1, &GrpcStatus::new(GrpcStatus::OK, ""));
    let frames = client.frames();
    assert_eq!(frames[0].0.flags, Flags::END_HEADERS | Flags::END_STREAM);
    assert_eq!(rst(&frames, 1), Some(ErrorCode::NO_ERROR));
}

#[test]
fn credit_returns_once_released_and_large_messages_wait_for_a_reservation() {
    let mut client = Client::new();
    client.open(1);
    let m = message(1, 40_000);
    for _ in 0..2 {
        client.send(&frame(FrameType::Data, Flags::NONE, 1, &m[..16_000])).unwrap();
        client.send(&frame(FrameType::Data, Flags::NONE, 1, &m[16_000..32_000])).unwrap();
        client.send(&frame(FrameType::Data, Flags::NONE, 1, &m[32_000..])).unwrap();
    }
    let credit: u32 =
        client.events().iter().map(|e| if let Event::Packet { credit, .. } = e { *credit } else { 0 }).sum();
    assert_eq!(credit, 2 * m.len() as u32);
    assert_eq!(client.frames(), [], "nothing credited before the session forwarded");
    client.conn.release(1, credit);
    let update = client.frames();
    assert_eq!((update[0].0.kind, update[0].0.stream_id), (FrameType::WindowUpdate, 1));

    let big = [0, 0, 3, 0, 0]; // a message of 196,608 bytes
    client.send(&frame(FrameType::Data, Flags::NONE, 1, &big)).unwrap();
    client.send(&frame(FrameType::Data, Flags::NONE, 1, &[0; 16_000])).unwrap();
    assert!(matches!(client.events()[..], [Event::WantBudget { stream: 1, size: 196_613 }]), "asked once");
    assert_eq!(client.conn.budget_wanted(1), Some(196_613));
    assert!(client.conn.grant_budget(1));
    for _ in 0..4 {
        client.send(&frame(FrameType::Data, Flags::NONE, 1, &[0; 16_000])).unwrap();
    }
    let updates = client.frames().iter().filter(|(h, _)| h.kind == FrameType::WindowUpdate && h.stream_id == 1).count();
    assert_eq!(updates, 1, "credited as it arrives");
    assert_eq!(client.conn.budget_wanted(1), None);
}

#[test]
fn keep_alive_pings_an_idle_connection_and_ends_an_unanswering_one() {
    let mut client = Client::new();
    let due = client.conn.poll_timeout().expect("a keep-alive timer");
    assert_eq!(due, client.now + KEEPALIVE);
    client.conn.handle_timeout(due - Duration::from_secs(1)).unwrap();
    assert_eq!(client.frames(), [], "not yet");
    client.conn.handle_timeout(due).unwrap();
    let ping = client.frames();
    assert_eq!((ping[0].0.kind, &ping[0].1[..]), (FrameType::Ping, &b"konnq-ka"[..]));
    assert_eq!(client.conn.poll_timeout(), Some(due + KEEPALIVE_TIMEOUT));
    client.now = due + Duration::from_secs(1);
    client.send(&frame(FrameType::Ping, Flags::ACK, 0, b"konnq-ka")).unwrap();
    assert_eq!(client.conn.poll_timeout(), Some(client.now + KEEPALIVE), "answered: idle again");
    let due = client.now + KEEPALIVE;
    client.conn.handle_timeout(due).unwrap();
    let err = client.conn.handle_timeout(due + KEEPALIVE_TIMEOUT).expect_err("unanswered");
    assert_eq!(err, ConnectionError::KeepAlive(KEEPALIVE_TIMEOUT));
}

/// The last stream ID of every GOAWAY among `frames`, in order.
fn goaway_last_ids(frames: &[(FrameHead, Vec<u8>)]) -> Vec<u32> {
    let goaways = frames.iter().filter(|(h, _)| h.kind == FrameType::GoAway);
    goaways.map(|(_, p)| u32::from_be_bytes([p[0], p[1], p[2], p[3]])).collect()
}

#[test]
fn goaway_refuses_new_streams_and_eof_cancels_open_ones() {
    let mut client = Client::new();
    client.open(1);
    client.conn.go_away(client.now);
    let first = client.frames();
    assert_eq!(goaway(&first), Some(ErrorCode::NO_ERROR));
    client.send(&frame(FrameType::Ping, Flags::ACK, 0, GOAWAY_PING)).unwrap();
    assert_eq!(goaway_last_ids(&client.frames()), [1], "the final GOAWAY names stream 1");
    let block = request_block("POST", "/ProxyService/Proxy", "application/grpc");
    client.send(&frame(FrameType::Headers, Flags::END_HEADERS, 3, &block)).unwrap();
    assert_eq!(rst(&client.frames(), 3), Some(ErrorCode::REFUSED_STREAM));
    client.conn.handle_eof();
    let events = client.events();
    assert!(matches!(events[..], [Event::Cancel { stream: 1, .. }, Event::Closed { stream: 1 }]), "{events:?}");
    assert_eq!(client.conn.stream_count(), 0);
}

#[test]
fn pending_chunks_leave_in_order_whatever_the_frame_sizes() {
    use bytes::Bytes;
    use std::collections::VecDeque;
    let chunks: Vec<Bytes> =
        [3usize, 1, 5, 2].iter().enumerate().map(|(i, &n)| Bytes::from(vec![i as u8; n])).collect();
    let whole: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    for step in 1..=whole.len() {
        let mut queue: VecDeque<Bytes> = chunks.iter().cloned().collect();
        let (mut out, mut left) = (transmit::Transmit::default(), whole.len());
        while left > 0 {
            let n = step.min(left);
            send::move_front(&mut queue, n, &mut out);
            left -= n;
        }
        let mut slots = [std::io::IoSlice::new(&[]); 8];
        let k = out.slices(&mut slots);
        let got: Vec<u8> = slots[..k].iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(got, whole, "frames of {step}");
        assert!(queue.is_empty(), "frames of {step}: {queue:?}");
    }
}

#[test]
fn a_graceful_shutdown_serves_requests_sent_before_the_client_saw_it() {
    let mut client = Client::new();
    client.conn.go_away(client.now);
    let frames = client.frames();
    assert_eq!(goaway_last_ids(&frames), [MAX_STREAM_ID], "first GOAWAY: any stream may still come");
    assert!(frames.iter().any(|(h, p)| h.kind == FrameType::Ping && p[..] == GOAWAY_PING[..]), "{frames:?}");
    assert!(client.conn.is_going_away() && !client.conn.is_stopped());
    // A request the client sent before it read the GOAWAY is served.
    client.open(1);
    client.send(&frame(FrameType::Ping, Flags::ACK, 0, GOAWAY_PING)).unwrap();
    assert_eq!(goaway_last_ids(&client.frames()), [1], "at the PING's ACK: stream 1 was the last");
    assert!(client.conn.is_stopped());
    let block = request_block("POST", "/ProxyService/Proxy", "application/grpc");
    client.send(&frame(FrameType::Headers, Flags::END_HEADERS, 3, &block)).unwrap();
    assert_eq!(rst(&client.frames(), 3), Some(ErrorCode::REFUSED_STREAM), "later ones are refused");
    client.conn.go_away(client.now);
    assert_eq!(client.frames(), [], "a second call sends nothing");
}

#[test]
fn a_client_that_never_acks_gets_the_final_goaway_after_the_wait() {
    let mut client = Client::new();
    client.conn.go_away(client.now);
    client.frames();
    let due = client.now + GOAWAY_PING_WAIT;
    assert_eq!(client.conn.poll_timeout(), Some(due), "the wait is due before the keep-alive");
    client.conn.handle_timeout(due - Duration::from_millis(1)).unwrap();
    assert!(!client.conn.is_stopped(), "not yet");
    client.conn.handle_timeout(due).unwrap();
    assert!(client.conn.is_stopped());
    assert_eq!(goaway_last_ids(&client.frames()), [0], "no stream was taken");
    assert_eq!(client.conn.poll_timeout(), Some(client.now + KEEPALIVE), "back to the keep-alive timer");
}
