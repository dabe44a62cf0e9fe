//! RFC 9113 conformance of the gRPC frontend's HTTP/2 server, table-driven:
//! each case sends raw frames on a fresh connection over the Unix socket and
//! names the answer the RFC requires of a server, a connection error
//! (GOAWAY with its code, then the connection closes) or a stream error
//! (RST_STREAM with its code, and the connection goes on: a PING is still
//! answered). The cases follow the server MUSTs of RFC 9113 §5.1 (stream
//! states), §5.1.1-5.1.2 (identifiers, concurrency), §5.3.1, §6.1, §6.9 and
//! §8.1-8.3 (malformed requests).

mod common;

use std::time::Duration;

use common::h2frames::*;
use common::*;
use loona_hpack::Encoder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const LIMIT: Duration = Duration::from_secs(10);

/// What the server must answer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// GOAWAY with this code, then the connection closes.
    Conn(u32),
    /// RST_STREAM with this code on this stream; the connection stays.
    Stream(u32, u32),
    /// A frame of this type on this stream, and no error.
    Frame(u8, u32),
}

/// Request fields the cases start from: a GET, which the server answers
/// with a plain HTTP refusal (405) whose body keeps the stream open while
/// the client grants no window.
const GET: [(&[u8], &[u8]); 4] =
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/ProxyService/Proxy"), (b":authority", b"localhost")];

struct Case {
    name: &'static str,
    /// The client's SETTINGS_INITIAL_WINDOW_SIZE (0: the server can send
    /// no DATA, so a response with a body cannot complete).
    initial_window: u32,
    /// Frames sent first; `then`, if any, after the server ended stream 1.
    first: fn(&mut Encoder<'static>) -> Vec<u8>,
    then: Option<fn(&mut Encoder<'static>) -> Vec<u8>>,
    expect: Expect,
}

fn headers(e: &mut Encoder<'static>, id: u32, flags: u8, fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    frame(HEADERS, flags | END_HEADERS, id, &e.encode(fields.iter().copied()))
}

/// GET with `fields` instead of (or, when not in it, besides) its own.
fn get_with(e: &mut Encoder<'static>, flags: u8, change: &[(&[u8], Option<&[u8]>)]) -> Vec<u8> {
    let mut fields: Vec<(&[u8], &[u8])> = GET.to_vec();
    for (name, value) in change {
        match (fields.iter().position(|(n, _)| n == name), value) {
            (Some(i), Some(v)) => fields[i].1 = v,
            (Some(i), None) => {
                fields.remove(i);
            }
            (None, Some(v)) => fields.push((name, v)),
            (None, None) => {}
        }
    }
    headers(e, 1, flags, &fields)
}

fn window_update(id: u32, inc: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, id, &inc.to_be_bytes())
}

fn priority(id: u32, depends_on: u32) -> Vec<u8> {
    let mut p = depends_on.to_be_bytes().to_vec();
    p.push(15);
    frame(PRIORITY_FRAME, 0, id, &p)
}

fn cases() -> Vec<Case> {
    use Expect::*;
    macro_rules! case {
        ($name:expr, $window:expr, $first:expr, $expect:expr) => {
            Case { name: $name, initial_window: $window, first: $first, then: None, expect: $expect }
        };
        ($name:expr, $window:expr, $first:expr, then $then:expr, $expect:expr) => {
            Case { name: $name, initial_window: $window, first: $first, then: Some($then), expect: $expect }
        };
    }
    vec![
        // §5.1 stream states.
        case!("5.1 idle: DATA", 65_535, |_| frame(DATA, END_STREAM, 1, b"test"), Conn(PROTOCOL_ERROR)),
        case!("5.1 idle: RST_STREAM", 65_535, |_| frame(RST_STREAM, 0, 1, &8u32.to_be_bytes()), Conn(PROTOCOL_ERROR)),
        case!("5.1 idle: WINDOW_UPDATE", 65_535, |_| window_update(1, 100), Conn(PROTOCOL_ERROR)),
        case!(
            "5.1 half-closed (remote): DATA",
            0,
            |e| [get_with(e, END_STREAM, &[]), frame(DATA, END_STREAM, 1, b"test")].concat(),
            Stream(1, STREAM_CLOSED)
        ),
        case!(
            "5.1 half-closed (remote): HEADERS",
            0,
            |e| [get_with(e, END_STREAM, &[]), headers(e, 1, END_STREAM, &[(b"x-trailer", b"1")])].concat(),
            Stream(1, STREAM_CLOSED)
        ),
        case!(
            "5.1 closed after the client's RST_STREAM: DATA",
            65_535,
            |e| [get_with(e, 0, &[]), frame(RST_STREAM, 0, 1, &8u32.to_be_bytes()), frame(DATA, END_STREAM, 1, b"x")]
                .concat(),
            Stream(1, STREAM_CLOSED)
        ),
        case!(
            "5.1 closed after the client's RST_STREAM: HEADERS",
            65_535,
            |e| [get_with(e, 0, &[]), frame(RST_STREAM, 0, 1, &8u32.to_be_bytes()), get_with(e, END_STREAM, &[])]
                .concat(),
            Conn(STREAM_CLOSED)
        ),
        case!(
            "5.1 closed: DATA",
            65_535,
            |e| get_with(e, END_STREAM, &[]),
            then | _ | frame(DATA, END_STREAM, 1, b"test"),
            Stream(1, STREAM_CLOSED)
        ),
        case!(
            "5.1 closed: HEADERS",
            65_535,
            |e| get_with(e, END_STREAM, &[]),
            then | e | get_with(e, END_STREAM, &[]),
            Conn(STREAM_CLOSED)
        ),
        // §5.1.1 stream identifiers.
        case!("5.1.1 even stream identifier", 65_535, |e| headers(e, 2, END_STREAM, &GET), Conn(PROTOCOL_ERROR)),
        case!(
            "5.1.1 identifier smaller than the previous one",
            65_535,
            |e| [headers(e, 5, END_STREAM, &GET), headers(e, 3, END_STREAM, &GET)].concat(),
            Conn(PROTOCOL_ERROR)
        ),
        // §5.1.2: the server advertises 1024.
        case!(
            "5.1.2 concurrent streams beyond SETTINGS_MAX_CONCURRENT_STREAMS",
            0,
            |e| (0..=1024u32).flat_map(|i| headers(e, 1 + 2 * i, END_STREAM, &GET)).collect(),
            Stream(1 + 2 * 1024, REFUSED_STREAM)
        ),
        // §5.3.1 and §6.3 priority.
        case!("6.3 PRIORITY on stream 0", 65_535, |_| priority(0, 1), Conn(PROTOCOL_ERROR)),
        case!(
            "5.3.1 PRIORITY making a stream depend on itself",
            65_535,
            |e| [get_with(e, 0, &[]), priority(1, 1)].concat(),
            Stream(1, PROTOCOL_ERROR)
        ),
        case!(
            "5.3.1 HEADERS making a stream depend on itself",
            65_535,
            |e| {
                let mut p = 1u32.to_be_bytes().to_vec();
                p.push(15);
                p.extend(e.encode(GET.iter().copied()));
                frame(HEADERS, END_HEADERS | END_STREAM | PRIORITY, 1, &p)
            },
            Stream(1, PROTOCOL_ERROR)
        ),
        case!(
            "5.1 PRIORITY on a half-closed (remote) stream is accepted",
            0,
            |e| [get_with(e, END_STREAM, &[]), priority(1, 0), window_update(1, 1)].concat(),
            Frame(DATA, 1)
        ),
        // §6.9 WINDOW_UPDATE.
        case!(
            "5.1 WINDOW_UPDATE on a half-closed (remote) stream is accepted",
            0,
            |e| [get_with(e, END_STREAM, &[]), window_update(1, 1)].concat(),
            Frame(DATA, 1)
        ),
        case!("6.9 WINDOW_UPDATE of 0 on the connection", 65_535, |_| window_update(0, 0), Conn(PROTOCOL_ERROR)),
        case!(
            "6.9 WINDOW_UPDATE of 0 on a stream",
            0,
            |e| [get_with(e, END_STREAM, &[]), window_update(1, 0)].concat(),
            Stream(1, PROTOCOL_ERROR)
        ),
        case!(
            "6.9.1 stream window above 2^31-1",
            65_535,
            |e| [get_with(e, 0, &[]), window_update(1, 0x7fff_ffff), window_update(1, 0x7fff_ffff)].concat(),
            Stream(1, FLOW_CONTROL_ERROR)
        ),
        // §8.2-8.3 malformed requests: stream errors.
        case!(
            "8.2 uppercase field name",
            0,
            |e| get_with(e, END_STREAM, &[(b"X-Test", Some(b"ok"))]),
            Stream(1, PROTOCOL_ERROR)
        ),
        case!(
            "8.2.2 connection-specific field",
            0,
            |e| get_with(e, END_STREAM, &[(b"connection", Some(b"keep-alive"))]),
            Stream(1, PROTOCOL_ERROR)
        ),
        case!(
            "8.2.2 TE other than trailers",
            0,
            |e| get_with(e, END_STREAM, &[(b"te", Some(b"gzip"))]),
            Stream(1, PROTOCOL_ERROR)
        ),
        case!(
            "8.3 unknown pseudo-header",
            0,
            |e| get_with(e, END_STREAM, &[(b":test", Some(b"ok"))]),
            Stream(1, PROTOCOL_ERROR)
        ),
        case!(
            "8.3 response pseudo-header in a request",
            0,
            |e| get_with(e, END_STREAM, &[(b":status", Some(b"200"))]),
            Stream(1, PROTOCOL_ERROR)
        ),
        case!(
            "8.3 pseudo-header after a regular field",
            0,
            |e| headers(
                e,
                1,
                END_STREAM,
                &[(b":method", b"GET"), (b":scheme", b"http"), (b"x-a", b"1"), (b":path", b"/")]
            ),
            Stream(1, PROTOCOL_ERROR)
        ),
        case!("8.3.1 empty :path", 0, |e| get_with(e, END_STREAM, &[(b":path", Some(b""))]), Stream(1, PROTOCOL_ERROR)),
        case!("8.3.1 no :method", 0, |e| get_with(e, END_STREAM, &[(b":method", None)]), Stream(1, PROTOCOL_ERROR)),
        case!("8.3.1 no :scheme", 0, |e| get_with(e, END_STREAM, &[(b":scheme", None)]), Stream(1, PROTOCOL_ERROR)),
        case!("8.3.1 no :path", 0, |e| get_with(e, END_STREAM, &[(b":path", None)]), Stream(1, PROTOCOL_ERROR)),
        case!(
            "8.3.1 :method twice",
            0,
            |e| headers(e, 1, END_STREAM, &[GET[0], GET[0], GET[1], GET[2]]),
            Stream(1, PROTOCOL_ERROR)
        ),
        case!(
            "8.3.1 :scheme twice",
            0,
            |e| headers(e, 1, END_STREAM, &[GET[0], GET[1], GET[1], GET[2]]),
            Stream(1, PROTOCOL_ERROR)
        ),
        case!(
            "8.3.1 :path twice",
            0,
            |e| headers(e, 1, END_STREAM, &[GET[0], GET[1], GET[2], GET[2]]),
            Stream(1, PROTOCOL_ERROR)
        ),
        case!(
            "8.1.1 content-length above the DATA received",
            65_535,
            |e| [
                get_with(e, 0, &[(b":method", Some(b"POST")), (b"content-length", Some(b"1"))]),
                frame(DATA, END_STREAM, 1, b"test"),
            ]
            .concat(),
            Stream(1, PROTOCOL_ERROR)
        ),
        case!(
            "8.1.1 content-length other than the sum of DATA",
            65_535,
            |e| [
                get_with(e, 0, &[(b":method", Some(b"POST")), (b"content-length", Some(b"10"))]),
                frame(DATA, 0, 1, b"test"),
                frame(DATA, END_STREAM, 1, b"test"),
            ]
            .concat(),
            Stream(1, PROTOCOL_ERROR)
        ),
        case!(
            "8.1 pseudo-header in trailers",
            65_535,
            |e| [get_with(e, 0, &[(b":method", Some(b"POST"))]), headers(e, 1, END_STREAM, &[(b":path", b"/")]),]
                .concat(),
            Stream(1, PROTOCOL_ERROR)
        ),
    ]
}

fn code(payload: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(payload[at..at + 4].try_into().expect("4 bytes"))
}

/// Runs one case on a new connection; returns what went wrong, if anything.
async fn run(socket: &std::path::Path, case: &Case) -> Result<(), String> {
    let mut io = UnixStream::connect(socket).await.map_err(|e| format!("connect: {e}"))?;
    let mut encoder = Encoder::new();
    let mut hello = PREFACE.to_vec();
    let mut settings = SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes().to_vec();
    settings.extend(case.initial_window.to_be_bytes());
    hello.extend(frame(SETTINGS, 0, 0, &settings));
    hello.extend((case.first)(&mut encoder));
    // The server may stop reading at the bad frame: a failed write is fine.
    let _ = io.write_all(&hello).await;
    let mut then = case.then;
    let mut pinged = false;
    loop {
        let Some((kind, flags, id, payload)) = try_read_frame(&mut io).await.map_err(|e| format!("read: {e}"))? else {
            return Err("the connection closed without the expected answer".into());
        };
        match (kind, case.expect) {
            (GOAWAY, Expect::Conn(want)) => {
                let got = code(&payload, 4);
                let debug = String::from_utf8_lossy(&payload[8..]).into_owned();
                if got != want {
                    return Err(format!("GOAWAY code {got} ({debug}), expected {want}"));
                }
                let mut rest = Vec::new();
                let _ = io.read_to_end(&mut rest).await;
                return Ok(());
            }
            (GOAWAY, _) => {
                let debug = String::from_utf8_lossy(&payload[8..]).into_owned();
                return Err(format!("GOAWAY code {} ({debug}), expected {:?}", code(&payload, 4), case.expect));
            }
            (RST_STREAM, Expect::Stream(want_id, want)) if id == want_id => {
                let got = code(&payload, 0);
                if got != want {
                    return Err(format!("RST_STREAM code {got} on stream {id}, expected {want}"));
                }
                // A stream error leaves the connection serving.
                let _ = io.write_all(&frame(PING, 0, 0, b"conform!")).await;
                pinged = true;
            }
            (RST_STREAM, _) => {
                return Err(format!(
                    "RST_STREAM code {} on stream {id}, expected {:?}",
                    code(&payload, 0),
                    case.expect
                ));
            }
            (PING, _) if flags & ACK != 0 && pinged => return Ok(()),
            (PING, _) if flags & ACK != 0 => {}
            (k, Expect::Frame(want, want_id)) if k == want && id == want_id => return Ok(()),
            (HEADERS | DATA, _) if id == 1 && flags & END_STREAM != 0 => {
                if let Some(next) = then.take() {
                    let _ = io.write_all(&next(&mut encoder)).await;
                }
            }
            // SETTINGS, its ack, WINDOW_UPDATE, response HEADERS and DATA.
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_musts_of_rfc_9113() {
    let lab = Lab::new().await;
    let _agent = lab.ready_agent().await;
    let all = cases();
    // All at once, each on its own connection: a server that never answers
    // a case costs the limit once, not once per case.
    let outcomes = futures::future::join_all(all.iter().map(|case| async {
        match tokio::time::timeout(LIMIT, run(&lab.socket, case)).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("{}: {e}", case.name)),
            Err(_) => Some(format!("{}: no answer within {LIMIT:?} (expected {:?})", case.name, case.expect)),
        }
    }))
    .await;
    let failed: Vec<String> = outcomes.into_iter().flatten().collect();
    assert!(failed.is_empty(), "{} of {} cases failed:\n{}", failed.len(), all.len(), failed.join("\n"));
    // Every connection above ended or was dropped; the server still serves.
    let target = echo_target().await;
    let mut client = lab.channel().await;
    let mut s = within(LIMIT, Stream::dial(&mut client, &target.to_string())).await;
    assert_eq!(
        within(LIMIT, echo_through(&mut s, b"after the conformance cases")).await,
        b"after the conformance cases"
    );
}

/// Requests that are no gRPC call get a plain HTTP answer with a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_are_no_grpc_call_get_a_plain_http_refusal() {
    let lab = Lab::new().await;
    for (method, content_type, status) in
        [(&b"GET"[..], &b"text/html"[..], "405"), (b"POST", b"application/json", "415")]
    {
        let mut io = UnixStream::connect(&lab.socket).await.expect("connect");
        let mut encoder = Encoder::new();
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        hello.extend(headers(
            &mut encoder,
            1,
            END_STREAM,
            &[(b":method", method), (b":scheme", b"http"), (b":path", b"/"), (b"content-type", content_type)],
        ));
        io.write_all(&hello).await.expect("request");
        let mut decoder = loona_hpack::Decoder::new();
        let (mut fields, mut body) = (Vec::new(), Vec::new());
        loop {
            let (kind, flags, id, payload) =
                within(LIMIT, try_read_frame(&mut io)).await.expect("read").expect("the response");
            match kind {
                HEADERS if id == 1 => fields = decoder.decode(&payload).expect("hpack"),
                DATA if id == 1 => body.extend(payload),
                RST_STREAM | GOAWAY => panic!("error frame {kind} instead of a response"),
                _ => continue,
            }
            if flags & END_STREAM != 0 {
                break;
            }
        }
        assert!(fields.contains(&(b":status".to_vec(), status.as_bytes().to_vec())), "{fields:?}");
        let body = String::from_utf8(body).expect("utf-8 body");
        assert!(body.contains("application/grpc"), "{body}");
    }
}
