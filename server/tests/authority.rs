//! `AuthorityFixIo` in front of a real `h2` server on a Unix socket.
//!
//! grpc-go sends the socket path as `:authority` (percent-encoded or raw);
//! `h2`'s client cannot produce such requests, so those are written as raw
//! HTTP/2 frames. The control runs the same requests without the wrapper and
//! expects h2 to reset them, which shows the wrapper is what makes them pass.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use konnq_server::frontend::authority_io::AuthorityFixIo;
use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PROTOCOL_ERROR: u32 = 0x1;
const TIMEOUT: Duration = Duration::from_secs(10);

/// An h2 server on a Unix socket in a temp dir; `_dir` keeps it alive.
struct TestServer {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

/// Starts the server; the socket is bound (ready) when this returns.
fn start_server(wrap: bool) -> TestServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("konnectivity-server.socket");
    let listener = UnixListener::bind(&path).expect("bind");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            if wrap {
                tokio::spawn(serve_connection(AuthorityFixIo::new(stream)));
            } else {
                tokio::spawn(serve_connection(stream));
            }
        }
    });
    TestServer { _dir: dir, path }
}

/// Answers every request with 200, the authority h2 saw in `x-authority`
/// and the request body length in `x-body-len`.
async fn serve_connection<T: AsyncRead + AsyncWrite + Unpin>(io: T) {
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = conn.accept().await {
        tokio::spawn(async move {
            let authority = request.uri().authority().map(|a| a.to_string());
            let mut body = request.into_body();
            let mut body_len = 0;
            while let Some(Ok(chunk)) = body.data().await {
                body_len += chunk.len();
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            let response = http::Response::builder()
                .status(200)
                .header("x-authority", authority.unwrap_or_default())
                .header("x-body-len", body_len)
                .body(())
                .expect("response");
            let _ = respond.send_response(response, true);
        });
    }
}

fn percent_encode_path(path: &Path) -> String {
    path.to_str().expect("utf-8 path").replace('/', "%2F")
}

#[derive(Debug, PartialEq)]
enum Outcome {
    /// `:status` and `x-authority` of the response.
    Response(String, String),
    /// RST_STREAM error code.
    Reset(u32),
}

fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

async fn read_frame(stream: &mut UnixStream) -> (u8, u8, u32, Vec<u8>) {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await.expect("frame header");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream_id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload).await.expect("frame payload");
    (head[3], head[4], stream_id, payload)
}

/// Sends one grpc-go-like request per authority (streams 1, 3, 5, ...) on a
/// single hand-written HTTP/2 connection, all HPACK-encoded with one encoder
/// so later requests use dynamic-table references, and collects how the
/// server answered each stream.
async fn raw_requests(path: &Path, authorities: &[String]) -> Vec<(u32, Outcome)> {
    let mut stream = UnixStream::connect(path).await.expect("connect");
    let mut encoder = Encoder::new();
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    for (i, authority) in authorities.iter().enumerate() {
        let headers: [(&[u8], &[u8]); 6] = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/ProxyService/Proxy"),
            (b":authority", authority.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ];
        let block = encoder.encode(headers);
        out.extend(frame(HEADERS, END_HEADERS | END_STREAM, 2 * i as u32 + 1, &block));
    }
    stream.write_all(&out).await.expect("write requests");

    let mut decoder = Decoder::new();
    let mut outcomes = Vec::new();
    let mut block = Vec::new();
    while outcomes.len() < authorities.len() {
        let (kind, flags, stream_id, payload) = read_frame(&mut stream).await;
        match kind {
            SETTINGS if flags & 0x1 == 0 => {
                stream.write_all(&frame(SETTINGS, 0x1, 0, &[])).await.expect("ack");
            }
            HEADERS | CONTINUATION => {
                block.extend_from_slice(&payload);
                if flags & END_HEADERS != 0 {
                    let fields = decoder.decode(&block).expect("server HPACK");
                    block.clear();
                    outcomes.push((stream_id, response_outcome(&fields)));
                }
            }
            RST_STREAM => {
                let code = u32::from_be_bytes(payload[..4].try_into().expect("4 bytes"));
                outcomes.push((stream_id, Outcome::Reset(code)));
            }
            GOAWAY => panic!("server sent GOAWAY: {payload:?}"),
            _ => {}
        }
    }
    outcomes.sort_by_key(|(id, _)| *id);
    outcomes
}

fn response_outcome(fields: &[(Vec<u8>, Vec<u8>)]) -> Outcome {
    let get = |name: &[u8]| {
        fields.iter().find(|(n, _)| n == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned()).unwrap_or_default()
    };
    Outcome::Response(get(b":status"), get(b"x-authority"))
}

fn ok(authority: &str) -> Outcome {
    Outcome::Response("200".into(), authority.into())
}

fn grpc_go_authorities(path: &Path) -> Vec<String> {
    let raw = path.to_str().expect("utf-8 path").to_owned();
    vec![
        percent_encode_path(path),
        raw,
        "localhost".into(),
        "konnq.test:8090".into(),
        percent_encode_path(path), // a dynamic-table reference this time
    ]
}

#[tokio::test]
async fn grpc_go_unix_socket_authorities_are_accepted_with_wrapper() {
    let server = start_server(true);
    let authorities = grpc_go_authorities(&server.path);
    let outcomes =
        tokio::time::timeout(TIMEOUT, raw_requests(&server.path, &authorities)).await.expect("server answered in time");
    let expected = vec![
        (1, ok("localhost")),
        (3, ok("localhost")),
        (5, ok("localhost")),
        (7, ok("konnq.test:8090")),
        (9, ok("localhost")),
    ];
    assert_eq!(outcomes, expected);
}

#[tokio::test]
async fn grpc_go_unix_socket_authorities_are_reset_without_wrapper() {
    let server = start_server(false);
    let authorities = grpc_go_authorities(&server.path);
    let outcomes =
        tokio::time::timeout(TIMEOUT, raw_requests(&server.path, &authorities)).await.expect("server answered in time");
    let expected = vec![
        (1, Outcome::Reset(PROTOCOL_ERROR)),
        (3, Outcome::Reset(PROTOCOL_ERROR)),
        (5, ok("localhost")),
        (7, ok("konnq.test:8090")),
        (9, Outcome::Reset(PROTOCOL_ERROR)),
    ];
    assert_eq!(outcomes, expected);
}

/// A stock h2 client (valid authorities, request bodies, flow control)
/// works unchanged through the wrapper, several requests on one connection.
#[tokio::test]
async fn h2_client_requests_pass_through_wrapper() {
    let server = start_server(true);
    let stream = UnixStream::connect(&server.path).await.expect("connect");
    let (client, conn) = h2::client::handshake(stream).await.expect("handshake");
    tokio::spawn(conn);
    let sizes = [0usize, 10, 70_000, 200_000];
    let mut tasks = Vec::new();
    for size in sizes {
        let mut client = client.clone().ready().await.expect("ready");
        tasks.push(tokio::spawn(async move {
            let request = http::Request::post("http://localhost/ProxyService/Proxy")
                .header("content-type", "application/grpc")
                .body(())
                .expect("request");
            let (response, mut body) = client.send_request(request, false).expect("send");
            body.reserve_capacity(size);
            let mut data = Bytes::from(vec![0x5a; size]);
            while !data.is_empty() {
                let room =
                    std::future::poll_fn(|cx| body.poll_capacity(cx)).await.expect("capacity open").expect("capacity");
                body.send_data(data.split_to(room.min(data.len())), false).expect("data");
            }
            body.send_data(Bytes::new(), true).expect("end");
            response.await.expect("response")
        }));
    }
    for (task, size) in tasks.into_iter().zip(sizes) {
        let response = tokio::time::timeout(TIMEOUT, task).await.expect("in time").expect("task");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-authority"], "localhost");
        assert_eq!(response.headers()["x-body-len"], size.to_string().as_str());
    }
}

/// A rewriter error reaches the reader as InvalidData carrying the cause.
#[tokio::test]
async fn garbage_preface_is_an_invalid_data_read_error() {
    let (mut client, server) = tokio::io::duplex(1024);
    let mut wrapped = AuthorityFixIo::new(server);
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
    let mut buf = [0u8; 64];
    let err = wrapped.read(&mut buf).await.expect_err("garbage rejected");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    let cause = err.get_ref().and_then(|e| e.downcast_ref::<konnq_shared::h2authority::RewriteError>());
    assert!(matches!(cause, Some(konnq_shared::h2authority::RewriteError::BadPreface { offset: 0, .. })), "{err}");
}
