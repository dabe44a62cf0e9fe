//! How the load generator reaches a target: straight over TCP (the `direct`
//! baseline) or through a tunnel's Unix socket the way kube-apiserver does:
//! gRPC with a new HTTP/2 connection per dial (single-use tunnel, the
//! default), gRPC with many streams on one HTTP/2 connection, or HTTP CONNECT.
//! Reads only count bytes: the figures need how much arrived, not what.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use konnq_shared::client::{connect_uds, ConnWriter, ProxyConn};
use konnq_shared::proto::proxy_service_client::ProxyServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{tcp, unix, TcpStream, UnixStream};
use tonic::transport::Channel;

/// How long closing one connection may take (the Konnectivity client's close timeout).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest HTTP CONNECT response head accepted.
const MAX_CONNECT_HEAD: usize = 8192;

/// The client side of a tunnel frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frontend {
    /// gRPC, a new Unix-socket HTTP/2 connection per dial (kube-apiserver today).
    Grpc,
    /// gRPC, every dial a new stream on one shared HTTP/2 connection.
    GrpcShared,
    /// HTTP CONNECT on a new Unix-socket connection per dial.
    HttpConnect,
}

impl std::str::FromStr for Frontend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "grpc" => Ok(Frontend::Grpc),
            "grpc-shared" => Ok(Frontend::GrpcShared),
            "http-connect" => Ok(Frontend::HttpConnect),
            _ => Err(format!("unknown frontend {s:?} (grpc, grpc-shared, http-connect)")),
        }
    }
}

impl Frontend {
    pub fn name(self) -> &'static str {
        match self {
            Frontend::Grpc => "grpc",
            Frontend::GrpcShared => "grpc-shared",
            Frontend::HttpConnect => "http-connect",
        }
    }

    /// The server's `--mode` for this frontend.
    pub fn server_mode(self) -> &'static str {
        match self {
            Frontend::HttpConnect => "http-connect",
            _ => "grpc",
        }
    }
}

/// Opens connections to targets.
#[derive(Clone)]
pub enum Dialer {
    Direct,
    Grpc { socket: PathBuf },
    GrpcShared { client: ProxyServiceClient<Channel> },
    HttpConnect { socket: PathBuf },
}

/// Where the time of one dial went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    /// Unix socket + HTTP/2 set-up (zero when nothing new is connected).
    pub connect: Duration,
    /// DIAL_REQ → DIAL_RSP; CONNECT → 200; TCP connect for `direct`.
    pub dial: Duration,
}

impl Dialer {
    /// A dialer for `frontend` on the server socket `socket`.
    pub async fn tunnel(frontend: Frontend, socket: PathBuf) -> anyhow::Result<Dialer> {
        Ok(match frontend {
            Frontend::Grpc => Dialer::Grpc { socket },
            Frontend::HttpConnect => Dialer::HttpConnect { socket },
            Frontend::GrpcShared => Dialer::GrpcShared { client: connect_uds(&socket).await? },
        })
    }

    pub async fn dial(&self, target: SocketAddr) -> anyhow::Result<(Conn, Timing)> {
        let addr = target.to_string();
        match self {
            Dialer::Direct => {
                let t = Instant::now();
                let s = tcp_connect(target).await.with_context(|| format!("connect {target}"))?;
                let _ = s.set_nodelay(true);
                let (r, w) = s.into_split();
                Ok((
                    Conn::new(Reader::Tcp(r), Writer::Tcp(shared(w)), None),
                    Timing { connect: Duration::ZERO, dial: t.elapsed() },
                ))
            }
            Dialer::Grpc { socket } => {
                let t = Instant::now();
                let mut client = connect_uds(socket).await?;
                let connect = t.elapsed();
                let t = Instant::now();
                let conn = ProxyConn::dial(&mut client, &addr).await?;
                let dial = t.elapsed();
                let w = conn.writer();
                Ok((Conn::new(Reader::Grpc(Box::new(conn)), Writer::Grpc(w), Some(client)), Timing { connect, dial }))
            }
            Dialer::GrpcShared { client } => {
                let mut client = client.clone();
                let t = Instant::now();
                let conn = ProxyConn::dial(&mut client, &addr).await?;
                let timing = Timing { connect: Duration::ZERO, dial: t.elapsed() };
                let w = conn.writer();
                Ok((Conn::new(Reader::Grpc(Box::new(conn)), Writer::Grpc(w), None), timing))
            }
            Dialer::HttpConnect { socket } => {
                let t = Instant::now();
                let mut s =
                    UnixStream::connect(socket).await.with_context(|| format!("connect {}", socket.display()))?;
                let connect = t.elapsed();
                let t = Instant::now();
                http_connect(&mut s, &addr).await?;
                let (r, w) = s.into_split();
                Ok((Conn::new(Reader::Unix(r), Writer::Unix(shared(w)), None), Timing { connect, dial: t.elapsed() }))
            }
        }
    }
}

/// Sends `CONNECT addr` and reads the response head byte by byte, so that no
/// byte after it is consumed (kube-apiserver requires none to be buffered).
async fn http_connect(s: &mut UnixStream, addr: &str) -> anyhow::Result<()> {
    s.write_all(format!("CONNECT {addr} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut head = Vec::with_capacity(128);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_CONNECT_HEAD {
            bail!("CONNECT response head longer than {MAX_CONNECT_HEAD} bytes");
        }
        let b = s.read_u8().await.context("reading the CONNECT response")?;
        head.push(b);
    }
    match connect_status(&head)? {
        200 => Ok(()),
        code => bail!("CONNECT {addr}: HTTP {code}"),
    }
}

/// The network namespace the runner's plain TCP connections (the `direct`
/// peer's, the sink counter's) open their sockets in; unset, the runner's own.
/// Set once by a run whose targets sit across a veth link (`--veth-mtu`).
static CLIENT_NETNS: OnceLock<Arc<OwnedFd>> = OnceLock::new();

/// Makes [`tcp_connect`] open its sockets in `ns` from now on (once per process).
pub fn set_client_netns(ns: Arc<OwnedFd>) -> anyhow::Result<()> {
    CLIENT_NETNS.set(ns).map_err(|_| anyhow::anyhow!("the client namespace is already set"))
}

/// A TCP connection to `addr` from the runner's client namespace (see
/// [`set_client_netns`]). In a namespace, a short thread makes the socket
/// there, then this runtime connects it.
pub async fn tcp_connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let Some(ns) = CLIENT_NETNS.get().cloned() else {
        return TcpStream::connect(addr).await;
    };
    let fd = tokio::task::spawn_blocking(move || konnq_netlab::netns::tcp_socket_in(&ns))
        .await
        .map_err(std::io::Error::other)??;
    tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd)).connect(addr).await
}

/// The status code of an HTTP/1.x response head.
pub fn connect_status(head: &[u8]) -> anyhow::Result<u16> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(line).context("response line is not UTF-8")?.trim_end();
    let mut parts = line.split(' ');
    match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some(v), Some(Ok(code))) if v.starts_with("HTTP/1.") => Ok(code),
        _ => bail!("not an HTTP/1.x response: {line:?}"),
    }
}

pub enum Reader {
    Tcp(tcp::OwnedReadHalf),
    Unix(unix::OwnedReadHalf),
    Grpc(Box<ProxyConn>),
}

#[derive(Clone)]
pub enum Writer {
    Tcp(std::sync::Arc<tokio::sync::Mutex<tcp::OwnedWriteHalf>>),
    Unix(std::sync::Arc<tokio::sync::Mutex<unix::OwnedWriteHalf>>),
    Grpc(ConnWriter),
}

impl Writer {
    pub async fn write(&self, data: Bytes) -> anyhow::Result<()> {
        match self {
            Writer::Tcp(w) => w.lock().await.write_all(&data).await?,
            Writer::Unix(w) => w.lock().await.write_all(&data).await?,
            Writer::Grpc(w) => w.write(data).await?,
        }
        Ok(())
    }
}

impl Reader {
    /// Reads what is available; returns how many bytes, 0 at the end.
    pub async fn read_some(&mut self, scratch: &mut [u8]) -> anyhow::Result<usize> {
        Ok(match self {
            Reader::Tcp(r) => r.read(scratch).await?,
            Reader::Unix(r) => r.read(scratch).await?,
            Reader::Grpc(c) => c.read().await?.map_or(0, |b| b.len()),
        })
    }
}

/// One connection to a target, whichever way it goes.
pub struct Conn {
    pub reader: Reader,
    pub writer: Writer,
    /// Keeps a single-use tunnel's HTTP/2 connection for the life of the conn.
    client: Option<ProxyServiceClient<Channel>>,
    /// Bytes read beyond what the last `read_exact` needed.
    surplus: usize,
    scratch: Vec<u8>,
}

impl Conn {
    fn new(reader: Reader, writer: Writer, client: Option<ProxyServiceClient<Channel>>) -> Conn {
        Conn { reader, writer, client, surplus: 0, scratch: vec![0; 64 * 1024] }
    }

    pub async fn write(&self, data: Bytes) -> anyhow::Result<()> {
        self.writer.write(data).await
    }

    /// Reads at least `n` more bytes (bytes beyond `n` count for the next call).
    pub async fn read_exact(&mut self, n: usize) -> anyhow::Result<()> {
        while self.surplus < n {
            let got = self.reader.read_some(&mut self.scratch).await?;
            if got == 0 {
                bail!("connection ended after {} of {n} bytes", self.surplus);
            }
            self.surplus += got;
        }
        self.surplus -= n;
        Ok(())
    }

    /// Reads what is available; 0 at the end.
    pub async fn read_some(&mut self) -> anyhow::Result<usize> {
        self.reader.read_some(&mut self.scratch).await
    }

    /// Closes the connection: CLOSE_REQ and wait for CLOSE_RSP on a tunnel,
    /// shutdown on TCP; bounded by [`CLOSE_TIMEOUT`].
    pub async fn close(self) -> anyhow::Result<()> {
        let Conn { reader, writer, client, .. } = self;
        let result = tokio::time::timeout(CLOSE_TIMEOUT, async move {
            match (reader, writer) {
                (Reader::Grpc(c), _) => c.close().await.map_err(anyhow::Error::from),
                (_, Writer::Tcp(w)) => Ok(w.lock().await.shutdown().await?),
                (_, Writer::Unix(w)) => Ok(w.lock().await.shutdown().await?),
                _ => Ok(()),
            }
        })
        .await;
        drop(client);
        result.context("close timed out")?
    }
}

/// Wraps a TCP or Unix write half so echo writers can share it with the conn.
fn shared<T>(w: T) -> std::sync::Arc<tokio::sync::Mutex<T>> {
    std::sync::Arc::new(tokio::sync::Mutex::new(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontend_names_round_trip() {
        for f in [Frontend::Grpc, Frontend::GrpcShared, Frontend::HttpConnect] {
            assert_eq!(f.name().parse::<Frontend>(), Ok(f));
        }
        assert!("quic".parse::<Frontend>().is_err());
        assert_eq!(Frontend::HttpConnect.server_mode(), "http-connect");
        assert_eq!(Frontend::GrpcShared.server_mode(), "grpc");
    }

    #[test]
    fn connect_status_lines() {
        assert_eq!(connect_status(b"HTTP/1.1 200 Connection established\r\n\r\n").unwrap(), 200);
        assert_eq!(connect_status(b"HTTP/1.0 503 Service Unavailable\r\nX: y\r\n\r\n").unwrap(), 503);
        assert!(connect_status(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(connect_status(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(connect_status(b"").is_err());
    }

    #[tokio::test]
    async fn direct_conn_reads_exact_counts_across_reads() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 10];
            s.read_exact(&mut buf).await.unwrap();
            for _ in 0..3 {
                s.write_all(&buf).await.unwrap();
            }
        });
        let (mut conn, timing) = Dialer::Direct.dial(addr).await.unwrap();
        assert_eq!(timing.connect, Duration::ZERO);
        conn.write(Bytes::from_static(b"0123456789")).await.unwrap();
        conn.read_exact(15).await.unwrap();
        conn.read_exact(15).await.unwrap();
        assert!(conn.read_exact(1).await.is_err(), "the peer closed after 30 bytes");
        conn.close().await.unwrap();
    }
}
