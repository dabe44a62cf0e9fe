//! Async adapter that runs [`AuthorityRewriter`] on what a client sends.
//!
//! [`AuthorityFixIo`] wraps an accepted connection before it is handed to the
//! HTTP/2 server: reads come from the inner stream through the rewriter (so
//! h2 never sees grpc-go's Unix-socket `:authority`), writes go straight
//! through. A protocol violation found by the rewriter surfaces as an
//! [`io::ErrorKind::InvalidData`] read error carrying the [`RewriteError`],
//! which makes the HTTP/2 server drop the connection.
//!
//! Memory per connection is bounded: a read buffer exists only during a read,
//! and the output buffer is drained completely before the inner stream is
//! read again, so an idle connection holds no buffer at all.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use konnq_shared::h2authority::{AuthorityRewriter, Limits, RewriteError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Bytes read from the inner stream at a time.
pub const READ_CHUNK: usize = 16 * 1024;

/// A client connection whose incoming HTTP/2 header blocks are fixed up.
pub struct AuthorityFixIo<S> {
    inner: S,
    rewriter: AuthorityRewriter,
    /// Rewritten bytes not yet handed to the reader; holds no memory while
    /// the connection is idle.
    out: BytesMut,
    /// Whether a rewriter error was already logged.
    reported: bool,
}

impl<S> AuthorityFixIo<S> {
    /// Wraps `inner` for an HTTP/2 server with default settings.
    pub fn new(inner: S) -> Self {
        Self::with_limits(inner, Limits::default())
    }

    /// Wraps `inner` for an HTTP/2 server advertising `limits`
    /// (SETTINGS_MAX_FRAME_SIZE, SETTINGS_HEADER_TABLE_SIZE).
    pub fn with_limits(inner: S, limits: Limits) -> Self {
        AuthorityFixIo { inner, rewriter: AuthorityRewriter::new(limits), out: BytesMut::new(), reported: false }
    }

    /// How many header blocks had their `:authority` replaced so far.
    pub fn rewritten_blocks(&self) -> u64 {
        self.rewriter.rewritten_blocks()
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// The rewriter's error as the read error the HTTP/2 server sees.
fn invalid_data(err: RewriteError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFixIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() || buf.remaining() == 0 {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            // A read buffer lives only for this poll: thousands of idle
            // connections hold none.
            this.out = BytesMut::new();
            let mut storage = vec![0u8; READ_CHUNK];
            let mut chunk = ReadBuf::new(&mut storage);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
            if chunk.filled().is_empty() {
                return Poll::Ready(Ok(())); // EOF
            }
            // May produce nothing (a partial frame header): then read again.
            if let Err(err) = this.rewriter.feed(chunk.filled(), &mut this.out) {
                // The rewriter's errors are sticky; say it once per connection.
                if !this.reported {
                    this.reported = true;
                    tracing::warn!("closing a frontend connection: {err}");
                }
                return Poll::Ready(Err(invalid_data(err)));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFixIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Connection info (peer address, credentials) is the inner stream's; this
/// covers `tokio::net::UnixStream` and `tokio::net::TcpStream`.
impl<S: Connected> Connected for AuthorityFixIo<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
