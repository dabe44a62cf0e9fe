//! The TCP frontend: TLS with client certificates required (kube-apiserver
//! presents one signed by `--server-ca-cert`). Handshakes run concurrently,
//! each bounded in time, and only completed ones reach the protocol layer.
//! Failed accepts follow [`super::accept`].

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
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
        let accepted = super::accept::with_backoff(TcpListenerStream::new(listener), "TCP frontend");
        tokio::pin!(stop, accepted);
        loop {
            let tcp = tokio::select! {
                _ = &mut stop => return,
                a = accepted.next() => match a {
                    Some(tcp) => tcp,
                    None => return,
                },
            };
            let peer = tcp.peer_addr().map_or_else(|e| e.to_string(), |a| a.to_string());
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
