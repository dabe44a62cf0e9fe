//! The HTTP-CONNECT frontend (Unix socket and TCP+mTLS) and the gRPC
//! frontend over TCP with mutual TLS.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use hyper_util::rt::TokioIo;
use konnq_shared::certs::GeneratedCerts;
use konnq_shared::config::FrontendMode;
use konnq_shared::proto::proxy_service_client::ProxyServiceClient;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tonic::transport::{Endpoint, Uri};

/// Reads exactly the response head (up to and including the blank line),
/// never a byte more, as Go's dialer does before it checks nothing else is
/// buffered.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if s.read(&mut b).await.unwrap_or(0) == 0 {
            break;
        }
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

async fn connect<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, target: &str) -> String {
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes()).await.unwrap();
    read_head(s).await
}

async fn connect_lab() -> Lab {
    Lab::with(|raw| {
        raw.mode = Some(FrontendMode::HttpConnect);
        raw.backend_dial_timeout = Some(Duration::from_secs(1));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connect_over_the_unix_socket() {
    let lab = connect_lab().await;
    let target = echo_target().await.to_string();

    // No agent yet: upstream's 500 and its text.
    let mut s = UnixStream::connect(&lab.socket).await.unwrap();
    let head = connect(&mut s, &target).await;
    assert!(head.starts_with("HTTP/1.1 500 Internal Server Error\r\n"), "{head}");
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    assert_eq!(body, "currently no tunnels available: No agent available");
    assert_eq!(lab.server.metrics.dial_failures(konnq_server::metrics::DialFailure::NoAgent), 1);

    let _agent = lab.ready_agent().await;
    let mut s = UnixStream::connect(&lab.socket).await.unwrap();
    let head = connect(&mut s, &target).await;
    assert_eq!(head, "HTTP/1.1 200 Connection Established\r\n\r\n");
    assert_eq!(lab.server.metrics.http_connections.get(), 1);
    // The first bytes after the head are the target's: the echo of ours.
    s.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");
    let payload = random_bytes(4 * 1024 * 1024);
    let (mut r, mut w) = s.into_split();
    let p = payload.clone();
    let writer = tokio::spawn(async move { w.write_all(&p).await.map(|_| w) });
    let mut echoed = vec![0u8; payload.len()];
    within(Duration::from_secs(30), r.read_exact(&mut echoed)).await.unwrap();
    assert!(echoed == payload);
    // The client closing its side closes the connection.
    let mut w = writer.await.unwrap().unwrap();
    w.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within(Duration::from_secs(10), r.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty());
    eventually("connection torn down", Duration::from_secs(5), || lab.server.metrics.established.get() == 0).await;
    eventually("HTTP connections closed", Duration::from_secs(5), || lab.server.metrics.http_connections.get() == 0)
        .await;
    assert_eq!(lab.server.metrics.proxy_streams.get(), 0, "no gRPC stream in HTTP-CONNECT mode");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connect_errors_use_upstream_statuses() {
    let lab = connect_lab().await;
    let _agent = lab.ready_agent().await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
    let mut s = UnixStream::connect(&lab.socket).await.unwrap();
    assert!(connect(&mut s, &closed).await.starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with(&format!("dial tcp {closed}: ")), "the agent's error: {body}");
    assert!(body.to_lowercase().contains("connection refused"), "{body}");

    let mut s = UnixStream::connect(&lab.socket).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    assert_eq!(body, "this proxy only supports CONNECT passthrough\n");

    let mut s = UnixStream::connect(&lab.socket).await.unwrap();
    s.write_all(b"\x00\x01\x02 garbage\r\n\r\n").await.unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 400"));

    // A dial that hangs longer than the backend dial timeout (1 s): 504.
    let hang = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    hang.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    hang.listen(0).unwrap();
    let addr = hang.local_addr().unwrap().as_socket().unwrap();
    let _fill: Vec<_> =
        (0..2).filter_map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()).collect();
    let mut s = UnixStream::connect(&lab.socket).await.unwrap();
    let head = within(Duration::from_secs(10), connect(&mut s, &addr.to_string())).await;
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    eventually("no dial left pending", Duration::from_secs(5), || lab.server.metrics.pending_dials.get() == 0).await;

    // Still serving.
    let mut s = UnixStream::connect(&lab.socket).await.unwrap();
    assert!(connect(&mut s, &echo_target().await.to_string()).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connect_forwards_early_data_and_the_target_closing() {
    let lab = connect_lab().await;
    let _agent = lab.ready_agent().await;
    // Bytes sent right behind the CONNECT head reach the target after the dial.
    let echo = echo_target().await.to_string();
    let mut s = UnixStream::connect(&lab.socket).await.unwrap();
    s.write_all(format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\nearly bytes").as_bytes()).await.unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 200"));
    let mut back = [0u8; 11];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"early bytes");

    // The target sends, then closes: every byte, then EOF.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let payload = random_bytes(2 * 1024 * 1024);
    let p = payload.clone();
    tokio::spawn(async move {
        let (mut t, _) = listener.accept().await.unwrap();
        t.write_all(&p).await.unwrap();
    });
    let mut s = UnixStream::connect(&lab.socket).await.unwrap();
    assert!(connect(&mut s, &addr).await.starts_with("HTTP/1.1 200"));
    let mut got = Vec::new();
    within(Duration::from_secs(20), s.read_to_end(&mut got)).await.unwrap();
    assert!(got == payload, "{} of {} bytes", got.len(), payload.len());
}

fn client_tls(
    certs: &GeneratedCerts,
    cert: Option<(&std::path::Path, &std::path::Path)>,
    alpn: &[u8],
) -> tokio_rustls::TlsConnector {
    let cfg = konnq_shared::tls::client_config(&certs.ca_cert, cert, &[alpn]).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

async fn tls_lab(mode: FrontendMode) -> Lab {
    Lab::with(|raw| {
        let pki = raw.cluster_cert.as_ref().unwrap().parent().unwrap().to_owned();
        raw.mode = Some(mode);
        // TCP instead of the Unix socket: upstream's rule, never both.
        raw.uds_name = None;
        raw.server_port = Some(0);
        raw.server_cert = Some(pki.join("server.crt"));
        raw.server_key = Some(pki.join("server.key"));
        raw.server_ca_cert = Some(pki.join("ca.crt"));
    })
    .await
}

async fn tls_connect(
    lab: &Lab,
    cert: Option<(&std::path::Path, &std::path::Path)>,
    alpn: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let addr = lab.server.tcp_addr.expect("TCP frontend");
    let tcp = TcpStream::connect(addr).await?;
    let name = konnq_shared::tls::server_name("localhost").unwrap();
    let mut tls = client_tls(&lab.certs, cert, alpn).connect(name, tcp).await?;
    // TLS 1.3: a refused client certificate surfaces on the first read.
    tls.write_all(b"").await?;
    Ok(tls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connect_over_tcp_with_mutual_tls() {
    let lab = tls_lab(FrontendMode::HttpConnect).await;
    let _agent = lab.ready_agent().await;
    let echo = echo_target().await.to_string();
    let cert = Some((lab.certs.agent_cert.as_path(), lab.certs.agent_key.as_path()));
    let mut s = tls_connect(&lab, cert, b"http/1.1").await.unwrap();
    assert!(connect(&mut s, &echo).await.starts_with("HTTP/1.1 200"));
    s.write_all(b"over tls").await.unwrap();
    let mut back = [0u8; 8];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"over tls");

    // Without a client certificate the server never answers a CONNECT.
    if let Ok(mut s) = tls_connect(&lab, None, b"http/1.1").await {
        let _ = s.write_all(format!("CONNECT {echo} HTTP/1.1\r\n\r\n").as_bytes()).await;
        assert!(!read_head(&mut s).await.starts_with("HTTP/1.1 200"));
    }
}

async fn grpc_over_tls(
    lab: &Lab,
    cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
) -> Result<ProxyServiceClient<tonic::transport::Channel>, tonic::transport::Error> {
    let addr = lab.server.tcp_addr.expect("TCP frontend");
    let connector = client_tls(&lab.certs, cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path())), b"h2");
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                let name = konnq_shared::tls::server_name("localhost").unwrap();
                connector.connect(name, tcp).await.map(TokioIo::new)
            }
        }))
        .await?;
    Ok(ProxyServiceClient::new(channel))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tcp_requires_a_client_certificate_from_the_server_ca() {
    let lab = tls_lab(FrontendMode::Grpc).await;
    let _agent = lab.ready_agent().await;
    let echo = echo_target().await.to_string();
    let good = Some((lab.certs.agent_cert.clone(), lab.certs.agent_key.clone()));
    let mut client = grpc_over_tls(&lab, good).await.expect("mTLS client connects");
    let mut s = Stream::dial(&mut client, &echo).await;
    assert_eq!(echo_through(&mut s, b"grpc over mtls").await, b"grpc over mtls");

    // No client certificate, or one from another CA: refused.
    let other = tempfile::tempdir().unwrap();
    let foreign = konnq_shared::certs::generate(other.path(), &[]).unwrap();
    for cert in [None, Some((foreign.agent_cert.clone(), foreign.agent_key.clone()))] {
        let refused = match grpc_over_tls(&lab, cert).await {
            Err(_) => true,
            Ok(mut c) => {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                tx.send(konnq_protocol::konnectivity::client::dial_req(&echo, 1)).await.unwrap();
                c.proxy(tokio_stream::wrappers::ReceiverStream::new(rx)).await.is_err()
            }
        };
        assert!(refused, "a client without a trusted certificate was served");
    }
    // The good client still works.
    let mut s = Stream::dial(&mut client, &echo).await;
    assert_eq!(echo_through(&mut s, b"still").await, b"still");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connect_never_lets_target_bytes_share_a_read_with_the_response_head() {
    // kube-apiserver reads the response through a buffered reader and
    // refuses the connection if anything is buffered behind the headers. A
    // server-first target (a greeting) must not land in that read, even when
    // the client reads late.
    let lab = connect_lab().await;
    let _agent = lab.ready_agent().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut t, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = t.write_all(b"220 greeting\r\n").await;
                let mut sink = Vec::new();
                let _ = t.read_to_end(&mut sink).await;
            });
        }
    });
    for _ in 0..20 {
        let mut s = UnixStream::connect(&lab.socket).await.unwrap();
        s.write_all(format!("CONNECT {addr} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
        // Read late, in one large read, as a buffered reader would.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        let first = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        assert!(first.ends_with("\r\n\r\n"), "target bytes arrived in the same read as the head: {first:?}");
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"220 greeting\r\n");
    }
}

/// A target that sends `payload` as soon as it is connected and then keeps
/// the connection open (like an HTTP server answering on a keep-alive
/// connection) until the client goes away.
async fn sending_target(payload: Arc<Vec<u8>>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let payload = payload.clone();
            tokio::spawn(async move {
                if s.write_all(&payload).await.is_ok() {
                    let mut sink = Vec::new();
                    let _ = s.read_to_end(&mut sink).await;
                }
            });
        }
    });
    addr
}

/// A client that reads late fills the TLS connection's socket buffer; every
/// byte the target sent must still arrive while the connection stays open
/// (nothing may stay behind in the TLS layer's buffer waiting for a flush).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connect_over_tls_delivers_the_tail_to_a_late_reader() {
    let lab = tls_lab(FrontendMode::HttpConnect).await;
    let _agent = lab.ready_agent().await;
    let cert = Some((lab.certs.agent_cert.as_path(), lab.certs.agent_key.as_path()));
    for round in 0..4 {
        let payload = Arc::new(random_bytes(1 << 20));
        let target = sending_target(payload.clone()).await.to_string();
        // A small receive buffer keeps the server's socket full most of the time.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let tcp = sock.connect(lab.server.tcp_addr.unwrap()).await.unwrap();
        let name = konnq_shared::tls::server_name("localhost").unwrap();
        let mut s = client_tls(&lab.certs, cert, b"http/1.1").connect(name, tcp).await.unwrap();
        assert!(connect(&mut s, &target).await.starts_with("HTTP/1.1 200"));
        // Let the server's writes hit a full socket buffer before reading.
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Then read slowly, so the server keeps meeting a full socket.
        let read_slowly = async {
            let mut got = Vec::with_capacity(payload.len());
            let mut buf = vec![0u8; 4096];
            while got.len() < payload.len() {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                got.extend_from_slice(&buf[..n]);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok::<_, std::io::Error>(got)
        };
        let got = match tokio::time::timeout(Duration::from_secs(30), read_slowly).await {
            Ok(Ok(got)) => got,
            Ok(Err(e)) => panic!("round {round}: reading the target's bytes: {e}"),
            Err(_) => panic!("round {round}: the target's last bytes never arrived"),
        };
        assert!(got == *payload, "round {round}: bytes differ");
    }
}
