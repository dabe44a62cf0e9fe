//! A Konnectivity client that drives a server the way kube-apiserver does:
//! gRPC `ProxyService.Proxy` over a Unix socket, one DIAL_REQ per stream,
//! DATA both ways, CLOSE_REQ answered by CLOSE_RSP. Used by the demo and
//! load tools; kube-apiserver itself uses the Go konnectivity-client.

use std::path::Path;

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Streaming;

use crate::proto::proxy_service_client::ProxyServiceClient;
use crate::proto::{packet::Payload, Packet, PacketType};
use konnq_protocol::konnectivity::{client, data};

/// Largest gRPC message the client sends or accepts.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {path}: {source}")]
    Connect { path: String, source: tonic::transport::Error },
    #[error("Proxy stream: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("dial failed: {0}")]
    DialFailed(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("the stream ended without CLOSE_RSP")]
    Ended,
}

/// Opens an HTTP/2 connection over the Unix socket at `path`.
pub async fn connect_uds(path: &Path) -> Result<ProxyServiceClient<Channel>, ClientError> {
    let socket = path.to_owned();
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { tokio::net::UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|source| ClientError::Connect { path: path.display().to_string(), source })?;
    Ok(ProxyServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE))
}

/// One proxied connection on its own Proxy stream.
pub struct ProxyConn {
    tx: mpsc::Sender<Packet>,
    rx: Streaming<Packet>,
    pub connect_id: i64,
    closed: bool,
}

impl ProxyConn {
    /// Opens a Proxy stream, sends DIAL_REQ and waits for DIAL_RSP.
    pub async fn dial(client: &mut ProxyServiceClient<Channel>, address: &str) -> Result<ProxyConn, ClientError> {
        let random = fastrand::i64(1..);
        let (tx, rx) = mpsc::channel(8);
        // The channel is fresh and has room: this cannot fail.
        let _ = tx.send(client::dial_req(address, random)).await;
        let mut rx = client.proxy(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
        match rx.message().await?.and_then(|p| p.payload) {
            Some(Payload::DialResponse(r)) if r.random != random => {
                Err(ClientError::Protocol(format!("DIAL_RSP for random {} instead of {random}", r.random)))
            }
            Some(Payload::DialResponse(r)) if !r.error.is_empty() => Err(ClientError::DialFailed(r.error)),
            Some(Payload::DialResponse(r)) => Ok(ProxyConn { tx, rx, connect_id: r.connect_id, closed: false }),
            Some(other) => Err(ClientError::Protocol(format!("expected DIAL_RSP, got {other:?}"))),
            None => Err(ClientError::Ended),
        }
    }

    /// Sends one DATA packet.
    pub async fn write(&self, bytes: Bytes) -> Result<(), ClientError> {
        self.tx.send(data(self.connect_id, bytes)).await.map_err(|_| ClientError::Ended)
    }

    /// A sender for writing from another task.
    pub fn writer(&self) -> ConnWriter {
        ConnWriter { tx: self.tx.clone(), connect_id: self.connect_id }
    }

    /// The next DATA payload; `None` once CLOSE_RSP arrived.
    pub async fn read(&mut self) -> Result<Option<Bytes>, ClientError> {
        if self.closed {
            return Ok(None);
        }
        loop {
            let packet = self.rx.message().await?.ok_or(ClientError::Ended)?;
            match (PacketType::try_from(packet.r#type), packet.payload) {
                (Ok(PacketType::Data), Some(Payload::Data(d))) => return Ok(Some(d.data)),
                (Ok(PacketType::CloseRsp), _) => {
                    self.closed = true;
                    return Ok(None);
                }
                // Anything else is not for a client; tolerate it.
                _ => continue,
            }
        }
    }

    /// Reads until `n` bytes arrived.
    pub async fn read_exact(&mut self, n: usize) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.read().await? {
                Some(b) => out.extend_from_slice(&b),
                None => return Err(ClientError::Protocol(format!("closed after {} of {n} bytes", out.len()))),
            }
        }
        Ok(out)
    }

    /// CLOSE_REQ, then waits for CLOSE_RSP (discarding remaining DATA).
    pub async fn close(mut self) -> Result<(), ClientError> {
        if !self.closed {
            self.tx.send(client::close_req(self.connect_id)).await.map_err(|_| ClientError::Ended)?;
            while self.read().await?.is_some() {}
        }
        Ok(())
    }
}

/// Writes DATA for a connection from another task.
#[derive(Clone)]
pub struct ConnWriter {
    tx: mpsc::Sender<Packet>,
    connect_id: i64,
}

impl ConnWriter {
    pub async fn write(&self, bytes: Bytes) -> Result<(), ClientError> {
        self.tx.send(data(self.connect_id, bytes)).await.map_err(|_| ClientError::Ended)
    }
}
