//! The HTTP-CONNECT frontend (`--mode http-connect`), as kube-apiserver's
//! HTTPConnect egress dialer expects: per proxied connection it opens a
//! socket, sends `CONNECT host:port HTTP/1.1`, requires `200` and then uses
//! the raw socket. The 200 is sent only once the agent has connected to the
//! target, and nothing follows the response headers until the target sends
//! a byte.
//!
//! Errors get upstream's statuses and texts: 500 `currently no tunnels
//! available` (no agent); for a dial the agent could not make, 504 when its
//! error names a timeout, 503 for exhausted file descriptors, else 502, with
//! the agent's error as the body; 502 `Backend context error` (the agent
//! connection failed during the dial); 504 `Backend dial timeout`
//! (`--backend-dial-timeout`); 405 (not CONNECT). konnq adds 400 (malformed
//! request) and 431 (request head too large), where upstream's Go HTTP
//! server answers the same.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use konnq_protocol::konnectivity::{check_dial, DialReq};
use konnq_shared::logging::untrusted;
use konnq_shared::quic::{codes, read_coalesced};
use quinn::VarInt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info, warn};

use super::session::SessionCtx;
use crate::backend::{DialError, Dialed};
use crate::metrics::{DialFailure, Metrics};
use konnq_shared::gauge::GaugeGuard;

/// Largest request head accepted.
pub(crate) const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes a client may send after its CONNECT head before the 200.
const MAX_EARLY_DATA: usize = 64 * 1024;
/// Largest read handed to QUIC at once.
const CHUNK: usize = 64 * 1024;
/// How long after the client's EOF we wait for the agent to close.
const CLOSE_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// What a CONNECT request head amounts to.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// CONNECT to this authority; `consumed` bytes were the head.
    Connect { target: String, consumed: usize },
    /// A complete request that is not CONNECT.
    NotConnect { method: String },
}

/// Why a request head was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("request head larger than {MAX_HEAD} bytes")]
    TooLarge,
}

/// Parses a request head (sans-IO). `Ok(None)`: incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(consumed)) => {
            let method = req.method.unwrap_or_default();
            if !method.eq_ignore_ascii_case("CONNECT") {
                return Ok(Some(Head::NotConnect { method: method.to_owned() }));
            }
            let target = req.path.unwrap_or_default().to_owned();
            Ok(Some(Head::Connect { target, consumed }))
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

fn response(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Status line and body for a failed dial, as upstream answers.
fn dial_error_response(e: &DialError) -> (&'static str, String) {
    match e {
        DialError::NoAgent => ("500 Internal Server Error", format!("currently no tunnels available: {e}")),
        DialError::Endpoint(reason) => (endpoint_status(reason), reason.clone()),
        DialError::Backend { .. } => ("502 Bad Gateway", format!("Backend context error: {e}\r\n")),
        DialError::Timeout(_) | DialError::NoFreeStream { .. } => {
            ("504 Gateway Timeout", format!("Backend dial timeout: {e}\r\n"))
        }
    }
}

/// Status for a dial the agent could not make, judged by its error text as
/// upstream does: a timeout 504, exhausted file descriptors 503, anything
/// else (refused, unreachable, unresolvable, TLS) 502.
fn endpoint_status(reason: &str) -> &'static str {
    let reason = reason.to_ascii_lowercase();
    if reason.contains("timeout") || reason.contains("deadline exceeded") {
        "504 Gateway Timeout"
    } else if reason.contains("too many open files") {
        "503 Service Unavailable"
    } else {
        "502 Bad Gateway"
    }
}

/// Lets the frontend tell whether the client has read what was written to
/// it. kube-apiserver's dialer reads the CONNECT response through a
/// buffered reader and refuses the connection if any byte is buffered behind
/// the headers; on a Unix socket the 200 and a target's first bytes (a
/// server-first protocol) would otherwise arrive in one read.
pub trait ReadProbe {
    /// A descriptor whose `SIOCOUTQ` counts bytes the peer has not read yet.
    fn unread_fd(&self) -> Option<std::os::fd::RawFd>;
}

impl ReadProbe for tokio::net::UnixStream {
    fn unread_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(std::os::fd::AsRawFd::as_raw_fd(self))
    }
}

/// TLS: each write is its own record, and Go's TLS client returns one record
/// per read, so the response head is never read together with target bytes.
impl ReadProbe for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    fn unread_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

/// Bytes written on a Unix stream socket that its peer has not read yet.
fn unread_bytes(fd: std::os::fd::RawFd) -> Option<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one c_int; `fd` belongs to a
    // socket owned by the connection that is alive for this call.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    (rc == 0).then_some(n.max(0) as usize)
}

/// How long the first target bytes wait for the client to read the 200.
const HEAD_READ_WAIT: Duration = Duration::from_secs(1);

/// Waits (bounded) until the client has read everything written so far.
async fn wait_head_read(fd: Option<std::os::fd::RawFd>) {
    let Some(fd) = fd else { return };
    let deadline = tokio::time::Instant::now() + HEAD_READ_WAIT;
    while unread_bytes(fd).is_some_and(|n| n > 0) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Accepts connections until `stop` resolves; each is served on its own task.
pub async fn serve_all<I, IO, E>(incoming: I, ctx: SessionCtx, stop: impl std::future::Future<Output = ()>)
where
    I: futures::Stream<Item = Result<IO, E>>,
    IO: AsyncRead + AsyncWrite + ReadProbe + Unpin + Send + 'static,
    E: std::fmt::Display,
{
    use futures::StreamExt;
    let incoming = super::accept::with_backoff(incoming, "HTTP-CONNECT frontend");
    tokio::pin!(incoming, stop);
    // Counted before the task starts: graceful shutdown waits for it.
    let spawn = |io: IO| {
        let open = GaugeGuard::inc(&ctx.metrics.frontend_connections);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            serve(io, ctx).await;
            drop(open);
        });
    };
    loop {
        tokio::select! {
            _ = &mut stop => {
                super::accept::backlog(&mut incoming).into_iter().for_each(spawn);
                return;
            }
            next = incoming.next() => match next {
                Some(io) => spawn(io),
                None => return,
            },
        }
    }
}

/// Serves one client connection to its end.
pub async fn serve<S>(mut io: S, ctx: SessionCtx)
where
    S: AsyncRead + AsyncWrite + ReadProbe + Unpin + Send,
{
    let _connection_gauge = GaugeGuard::inc(&ctx.metrics.http_connections);
    let mut buf = BytesMut::with_capacity(1024);
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut io, &mut buf)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            ctx.metrics.frontend_error("bad_connect_request");
            warn!("refusing HTTP-CONNECT request: {e}");
            let status =
                if e == HeadError::TooLarge { "431 Request Header Fields Too Large" } else { "400 Bad Request" };
            answer_and_close(&mut io, &response(status, &format!("{e}\n"))).await;
            return;
        }
        Err(_) => {
            debug!("no request head within {HEAD_TIMEOUT:?}; closing");
            return;
        }
    };
    let (target, consumed) = match head {
        Head::Connect { target, consumed } => (target, consumed),
        Head::NotConnect { method } => {
            ctx.metrics.frontend_error("not_connect");
            warn!(method = %untrusted(&method), "refusing a non-CONNECT request");
            let body = "this proxy only supports CONNECT passthrough\n";
            answer_and_close(&mut io, &response("405 Method Not Allowed", body)).await;
            return;
        }
    };
    let mut early = buf.split_off(consumed);
    let req = DialReq { protocol: "tcp".into(), address: target, random: 0 };
    if let Err(reason) = check_dial(&req) {
        ctx.metrics.frontend_error("bad_dial_request");
        answer_and_close(&mut io, &response("400 Bad Request", &format!("{reason}\n"))).await;
        return;
    }
    let dial = ctx.backend.dial_timed("tcp", &req.address);
    let dialed = tokio::select! {
        r = dial => r,
        _ = watch_client(&mut io, &mut early) => {
            ctx.metrics.dial_failed(DialFailure::FrontendClose);
            debug!(address = %untrusted(&req.address), "client went away during the dial");
            return;
        }
    };
    match dialed {
        Ok(dialed) => {
            if write_flushed(&mut io, b"HTTP/1.1 200 Connection Established\r\n\r\n").await.is_err() {
                return;
            }
            debug!(connect_id = dialed.connect_id, address = %untrusted(&req.address), "CONNECT established");
            splice(io, early.freeze(), dialed, &ctx.metrics).await;
        }
        Err(e) => {
            info!(address = %untrusted(&req.address), "CONNECT dial failed: {}", untrusted(&e.to_string()));
            let (status, body) = dial_error_response(&e);
            answer_and_close(&mut io, &response(status, &body)).await;
        }
    }
}

/// Writes `bytes` and flushes them. A TLS stream can accept bytes into its
/// record buffer without writing them to a full socket; without the flush
/// they would wait there for a later write that may never come.
async fn write_flushed<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

/// Sends a final response and closes the connection (for TLS, with
/// close_notify after the response is out), bounded in time so a client
/// that does not read cannot hold the task.
async fn answer_and_close<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) {
    let _ = tokio::time::timeout(HEAD_TIMEOUT, async {
        write_flushed(w, bytes).await?;
        w.shutdown().await
    })
    .await;
}

async fn read_head<S: AsyncRead + Unpin>(io: &mut S, buf: &mut BytesMut) -> Result<Option<Head>, HeadError> {
    loop {
        if let Some(head) = parse_head(buf)? {
            return Ok(Some(head));
        }
        buf.reserve(1024);
        match io.read_buf(buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// Resolves when the client closes or fails during the dial. Bytes it sends
/// meanwhile are kept (bounded) for the target; past the bound we stop
/// reading and let TCP push back.
async fn watch_client<S: AsyncRead + Unpin>(io: &mut S, early: &mut BytesMut) {
    loop {
        if early.len() >= MAX_EARLY_DATA {
            return std::future::pending().await;
        }
        early.reserve(4096);
        match io.read_buf(early).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Copies bytes both ways until either side ends; no half-close, as in the
/// gRPC protocol: the client's EOF closes the connection.
async fn splice<S>(io: S, early: Bytes, dialed: Dialed, metrics: &Metrics)
where
    S: AsyncRead + AsyncWrite + ReadProbe + Unpin + Send,
{
    let _established = GaugeGuard::inc(&metrics.established);
    // The halves below keep the socket open for as long as `down` uses this.
    let probe = io.unread_fd();
    // `_slot` keeps the agent's stream slot taken until the splice ends.
    let Dialed { connect_id, mut send, mut recv, slot: _slot, agent } = dialed;
    let (mut rd, mut wr) = tokio::io::split(io);
    let from_agent = std::sync::Arc::clone(&agent);
    let up = async move {
        let mut share = konnq_shared::quic::SendShare::new(agent.send_clock.clone());
        if !early.is_empty() {
            let n = early.len();
            if konnq_shared::quic::write_shared(&mut send, &mut share, early).await.is_err() {
                return (send, false);
            }
            metrics.bytes_to_agent(n);
            agent.expect_answer();
        }
        loop {
            let mut buf = BytesMut::with_capacity(CHUNK);
            match rd.read_buf(&mut buf).await {
                Ok(0) => return (send, true),
                Ok(n) => {
                    if konnq_shared::quic::write_shared(&mut send, &mut share, buf.freeze()).await.is_err() {
                        return (send, false);
                    }
                    metrics.bytes_to_agent(n);
                    agent.expect_answer();
                }
                Err(_) => return (send, false),
            }
        }
    };
    let down = async move {
        let mut first = true;
        loop {
            match read_coalesced(&mut recv).await {
                Ok(Some(bytes)) => {
                    from_agent.heard_data();
                    if std::mem::take(&mut first) {
                        wait_head_read(probe).await;
                    }
                    let n = bytes.len();
                    let started = std::time::Instant::now();
                    let written = write_flushed(&mut wr, &bytes).await;
                    metrics.frontend_write_duration.observe_duration(started.elapsed());
                    if written.is_err() {
                        let _ = recv.stop(VarInt::from_u32(codes::FRONTEND_GONE));
                        return;
                    }
                    metrics.bytes_to_client(n);
                }
                Ok(None) => break,
                Err(e) => {
                    debug!(connect_id, "agent side ended: {e}");
                    break;
                }
            }
        }
        let _ = wr.shutdown().await;
    };
    tokio::pin!(up, down);
    tokio::select! {
        _ = &mut down => {}
        (mut send, clean) = &mut up => {
            if clean {
                // Client EOF: the agent closes the target and finishes.
                let _ = send.finish();
                if tokio::time::timeout(CLOSE_CONFIRM_TIMEOUT, &mut down).await.is_err() {
                    let _ = send.reset(VarInt::from_u32(codes::FRONTEND_GONE));
                }
            } else {
                let _ = send.reset(VarInt::from_u32(codes::FRONTEND_GONE));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_head_is_parsed_with_what_follows_left_alone() {
        let req = b"CONNECT 10.0.0.1:10250 HTTP/1.1\r\nHost: 10.0.0.1:10250\r\nUser-Agent: x\r\n\r\nEARLY";
        let head = parse_head(req).unwrap().unwrap();
        let consumed = req.len() - 5;
        assert_eq!(head, Head::Connect { target: "10.0.0.1:10250".into(), consumed });
    }

    #[test]
    fn partial_heads_need_more_at_every_split() {
        let req = b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n\r\n";
        for n in 0..req.len() {
            assert_eq!(parse_head(&req[..n]), Ok(None), "prefix {n}");
        }
    }

    #[test]
    fn other_methods_and_garbage_are_refused() {
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap(),
            Some(Head::NotConnect { method: "GET".into() })
        );
        assert!(matches!(parse_head(b"\x16\x03\x01garbage\r\n\r\n"), Err(HeadError::Malformed(_))));
        let huge = [b"CONNECT a:1 HTTP/1.1\r\nX: ".as_slice(), &vec![b'a'; MAX_HEAD]].concat();
        assert_eq!(parse_head(&huge), Err(HeadError::TooLarge));
    }

    #[test]
    fn dial_errors_map_to_upstream_statuses_and_texts() {
        let answer = |e: DialError| dial_error_response(&e);
        assert_eq!(
            answer(DialError::NoAgent),
            ("500 Internal Server Error", "currently no tunnels available: No agent available".to_owned())
        );
        let refused = "dial tcp 10.0.0.1:80: Connection refused (os error 111)";
        assert_eq!(answer(DialError::Endpoint(refused.into())), ("502 Bad Gateway", refused.to_owned()));
        let agent_gone = DialError::Backend { agent: "a".into(), reason: "connection lost".into() };
        assert_eq!(
            answer(agent_gone),
            ("502 Bad Gateway", "Backend context error: agent a: connection lost\r\n".into())
        );
        let (status, body) = answer(DialError::Timeout(Duration::from_secs(1)));
        assert_eq!(status, "504 Gateway Timeout");
        assert!(body.starts_with("Backend dial timeout: "), "{body}");
        let busy = DialError::NoFreeStream { agent: "a".into(), limit: 1, timeout: Duration::from_secs(1) };
        assert_eq!(answer(busy).0, "504 Gateway Timeout");
    }

    #[test]
    fn agent_dial_errors_are_judged_by_their_text() {
        let cases = [
            ("dial tcp 10.0.0.1:80: i/o timeout after 5s", "504"),
            ("context deadline exceeded", "504"),
            ("dial tcp: Too many open files (os error 24)", "503"),
            ("dial tcp 10.0.0.1:80: Connection refused (os error 111)", "502"),
            ("dial tcp no-such-host.invalid:80: failed to lookup address information", "502"),
            ("Network is unreachable (os error 101)", "502"),
            ("anything else", "502"),
        ];
        for (reason, status) in cases {
            assert!(endpoint_status(reason).starts_with(status), "{reason}: {}", endpoint_status(reason));
        }
    }
}
