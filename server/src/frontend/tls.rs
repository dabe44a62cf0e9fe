//! The TCP frontend: TLS with client certificates required (kube-apiserver
//! presents one signed by `--server-ca-cert`). Handshakes run concurrently,
//! each bounded in time, and only completed ones reach the protocol layer.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tracing::warn;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Completed handshakes queued for the protocol layer.
const READY_QUEUE: usize = 64;

pub type Incoming = ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>>;

/// Accepts TCP connections and yields those that completed mutual TLS.
/// The returned future is the accept loop; it ends when `stop` resolves.
pub fn incoming(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> (Incoming, impl std::future::Future<Output = ()> + Send + 'static) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let (tx, rx) = mpsc::channel(READY_QUEUE);
    let accept_loop = async move {
        tokio::pin!(stop);
        loop {
            let accepted = tokio::select! {
                _ = &mut stop => return,
                a = listener.accept() => a,
            };
            let (tcp, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    warn!("accepting on the TCP frontend: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => warn!(%peer, "TLS handshake on the frontend failed: {e}"),
                    Err(_) => warn!(%peer, "TLS handshake on the frontend timed out after {HANDSHAKE_TIMEOUT:?}"),
                }
            });
        }
    };
    (ReceiverStream::new(rx), accept_loop)
}
