//! The gRPC `ProxyService` frontend (on the Unix socket, or TCP with mTLS).
//!
//! Every accepted connection is wrapped in [`AuthorityFixIo`] so that the
//! `:authority` real clients send for a Unix socket target (the socket path,
//! raw or percent-encoded) reaches h2 as a valid authority instead of making
//! it reset the stream.

use std::time::Duration;

use futures::Stream;
use konnq_shared::proto::proxy_service_server::{ProxyService, ProxyServiceServer};
use konnq_shared::proto::Packet;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status, Streaming};

use super::authority_io::AuthorityFixIo;
use super::session::{self, SessionCtx};

/// Packets buffered toward one client before the session waits: bounded, so
/// a client that stops reading stalls only its own connection.
const OUTBOUND_PACKETS: usize = 4;

pub struct ProxySvc {
    ctx: SessionCtx,
}

#[tonic::async_trait]
impl ProxyService for ProxySvc {
    type ProxyStream = ReceiverStream<Result<Packet, Status>>;

    async fn proxy(&self, request: Request<Streaming<Packet>>) -> Result<Response<Self::ProxyStream>, Status> {
        let (tx, rx) = mpsc::channel(OUTBOUND_PACKETS);
        tokio::spawn(session::run(request.into_inner(), tx, self.ctx.clone()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves the Proxy service on a stream of accepted connections until
/// `shutdown` resolves.
pub async fn serve<I, IO, E>(
    incoming: I,
    ctx: SessionCtx,
    max_message_bytes: usize,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error>
where
    I: Stream<Item = Result<IO, E>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    AuthorityFixIo<IO>: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    <AuthorityFixIo<IO> as Connected>::ConnectInfo: Clone + Send + Sync + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use futures::StreamExt;
    let svc = ProxyServiceServer::new(ProxySvc { ctx })
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let incoming = incoming.map(|r| r.map(AuthorityFixIo::new));
    tonic::transport::Server::builder()
        .initial_stream_window_size(Some(1024 * 1024))
        .initial_connection_window_size(Some(4 * 1024 * 1024))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
