//! The bytes under an HTTP/2 connection, as the `h2` crate reads and writes them (tokio's
//! poll-based I/O traits, served by monoio without a tokio runtime).
//!
//! - Plain (h2c, prior knowledge): the socket in monoio's poll mode ([`TcpStreamPoll`]: a
//!   readiness wait then a non-blocking `recv`/`send`, no copy), after the bytes the
//!   HTTP/1.1 reader had already taken (the connection preface, perhaps more).
//! - TLS (ALPN `h2`): the rustls stream split into its read and write halves, each behind
//!   monoio's completion-to-poll adapter ([`StreamWrapper`]), so a read waits while frames
//!   are written (h2 always keeps a read pending). The adapter copies once each way; the
//!   decision and its cost are in docs/RUNTIME.md.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use monoio::io::poll_io::{AsyncRead, AsyncWrite, ReadBuf};
use monoio::io::{IntoPollIo, Splitable};
use monoio::net::TcpStream;
use monoio::net::tcp::stream_poll::TcpStreamPoll;
use monoio_compat::StreamWrapper;
use monoio_rustls::{ClientTlsStream, ServerTlsStream};

/// Bytes per adapter buffer on the TLS path: one TLS record's worth of plaintext, the most
/// `h2` writes at once with its default frame size.
const TLS_ADAPTER_BUFFER: usize = 16 * 1024;

/// A client connection that speaks HTTP/2.
pub enum H2Io {
    Plain {
        /// Read before the switch: served before the socket.
        prefix: Bytes,
        /// Always `Some` until drop, which hands it to `linger`.
        tcp: Option<TcpStreamPoll>,
    },
    /// A client's (server side) or an upstream's (client side) TLS stream, split.
    Tls {
        read: Pin<Box<dyn AsyncRead>>,
        write: Pin<Box<dyn AsyncWrite>>,
    },
}

impl std::fmt::Debug for H2Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            H2Io::Plain { .. } => "H2Io::Plain",
            H2Io::Tls { .. } => "H2Io::Tls",
        })
    }
}

impl H2Io {
    /// A plain connection whose first bytes (`prefix`) were already read.
    pub fn plain(tcp: TcpStream, prefix: Vec<u8>) -> io::Result<H2Io> {
        Ok(H2Io::Plain {
            prefix: Bytes::from(prefix),
            tcp: Some(tcp.into_poll_io()?),
        })
    }

    /// A client's TLS connection that negotiated `h2`.
    pub fn tls(stream: ServerTlsStream<TcpStream>) -> H2Io {
        H2Io::split(stream)
    }

    /// A TLS connection to an upstream that agreed to `h2`.
    pub fn tls_upstream(stream: ClientTlsStream<TcpStream>) -> H2Io {
        H2Io::split(stream)
    }

    fn split<S>(stream: S) -> H2Io
    where
        S: monoio::io::Split
            + monoio::io::AsyncReadRent
            + monoio::io::AsyncWriteRent
            + Unpin
            + 'static,
    {
        let (read, write) = stream.into_split();
        H2Io::Tls {
            read: Box::pin(StreamWrapper::new_with_buffer_size(
                read,
                TLS_ADAPTER_BUFFER,
                0,
            )),
            write: Box::pin(StreamWrapper::new_with_buffer_size(
                write,
                0,
                TLS_ADAPTER_BUFFER,
            )),
        }
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            H2Io::Plain { prefix, tcp } => {
                if prefix.has_remaining() {
                    let n = prefix.len().min(buf.remaining());
                    buf.put_slice(&prefix[..n]);
                    prefix.advance(n);
                    return Poll::Ready(Ok(()));
                }
                match tcp {
                    Some(tcp) => Pin::new(tcp).poll_read(cx, buf),
                    None => Poll::Ready(Ok(())),
                }
            }
            H2Io::Tls { read, .. } => read.as_mut().poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            H2Io::Plain { tcp: Some(tcp), .. } => Pin::new(tcp).poll_write(cx, buf),
            H2Io::Plain { tcp: None, .. } => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
            H2Io::Tls { write, .. } => write.as_mut().poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            H2Io::Plain { tcp: Some(tcp), .. } => Pin::new(tcp).poll_flush(cx),
            H2Io::Plain { tcp: None, .. } => Poll::Ready(Ok(())),
            H2Io::Tls { write, .. } => write.as_mut().poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            H2Io::Plain { tcp: Some(tcp), .. } => Pin::new(tcp).poll_shutdown(cx),
            H2Io::Plain { tcp: None, .. } => Poll::Ready(Ok(())),
            H2Io::Tls { write, .. } => write.as_mut().poll_shutdown(cx),
        }
    }
}

/// How long, and how much, a closing plain connection drains before the close.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

impl Drop for H2Io {
    /// A connection closed with unread bytes from the client ends in an RST, which can
    /// destroy the GOAWAY just sent (a rapid-reset client would never learn why): the
    /// socket half-closes and drains briefly in a task of its own, as HTTP/1.1 lingers.
    fn drop(&mut self) {
        if let H2Io::Plain { tcp, .. } = self
            && let Some(tcp) = tcp.take()
        {
            monoio::spawn(linger(tcp));
        }
    }
}

async fn linger(mut tcp: TcpStreamPoll) {
    let _ = std::future::poll_fn(|cx| Pin::new(&mut tcp).poll_shutdown(cx)).await;
    let drain = async {
        let mut scratch = [0u8; 4096];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            let mut buf = ReadBuf::new(&mut scratch);
            match std::future::poll_fn(|cx| Pin::new(&mut tcp).poll_read(cx, &mut buf)).await {
                Ok(()) if !buf.filled().is_empty() => drained += buf.filled().len(),
                _ => break,
            }
        }
    };
    let _ = monoio::time::timeout(LINGER_TIME, drain).await;
}
