//! The bytes under an HTTP/2 connection, as the `h2` crate reads and writes them (tokio's
//! poll-based I/O traits, served by monoio without a tokio runtime).
//!
//! - Plain (h2c, prior knowledge): the socket in monoio's poll mode ([`TcpStreamPoll`]: a
//!   readiness wait then a non-blocking `recv`/`send`), after the bytes the HTTP/1.1
//!   reader had already taken (the connection preface, perhaps more). What h2 writes waits
//!   in an [`Outbox`] until it flushes, and goes out in one `send` per loop turn.
//! - TLS from a client (ALPN `h2`): the socket in poll mode under the rustls session the
//!   handshake left ([`PollTls`]). rustls reads ciphertext from the socket into its own
//!   buffer and writes its records to the socket, so the only copies are rustls's own
//!   (plaintext out of its buffer into h2's, h2's frames into a record as it encrypts).
//!   Records wait in the session until h2 flushes, then leave in one `writev`.
//! - TLS to an upstream (ALPN `h2`): the rustls stream split into its read and write
//!   halves, each behind monoio's completion-to-poll adapter ([`StreamWrapper`]), so a read
//!   waits while frames are written (h2 always keeps a read pending). The adapter copies
//!   once each way; the decisions and their costs are in docs/RUNTIME.md.

use std::io::{self, BufRead, IoSlice, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use monoio::io::poll_io::{AsyncRead, AsyncWrite, ReadBuf};
use monoio::io::{IntoPollIo, Splitable};
use monoio::net::TcpStream;
use monoio::net::tcp::stream_poll::TcpStreamPoll;
use monoio_compat::StreamWrapper;
use monoio_rustls::ClientTlsStream;
use rustls::ServerConnection;

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
        /// What h2 wrote, until its flush.
        out: Outbox,
    },
    /// A client's TLS connection. Boxed: the session is kilobytes.
    Tls(Box<PollTls>),
    /// An upstream's TLS stream, split.
    TlsSplit {
        read: Pin<Box<dyn AsyncRead>>,
        write: Pin<Box<dyn AsyncWrite>>,
    },
}

impl std::fmt::Debug for H2Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            H2Io::Plain { .. } => "H2Io::Plain",
            H2Io::Tls(_) => "H2Io::Tls",
            H2Io::TlsSplit { .. } => "H2Io::TlsSplit",
        })
    }
}

impl H2Io {
    /// A plain connection whose first bytes (`prefix`) were already read.
    pub fn plain(tcp: TcpStream, prefix: Vec<u8>) -> io::Result<H2Io> {
        Ok(H2Io::Plain {
            prefix: Bytes::from(prefix),
            tcp: Some(tcp.into_poll_io()?),
            out: Outbox::default(),
        })
    }

    /// A client's TLS connection that negotiated `h2`, its handshake done: every byte the
    /// client sent so far is in `session` (none may be left in another buffer).
    pub fn tls(tcp: TcpStream, session: ServerConnection) -> io::Result<H2Io> {
        Ok(H2Io::Tls(Box::new(PollTls {
            tcp: tcp.into_poll_io()?,
            session,
            deferred: false,
        })))
    }

    /// A TLS connection to an upstream that agreed to `h2`.
    pub fn tls_upstream(stream: ClientTlsStream<TcpStream>) -> H2Io {
        let (read, write) = stream.into_split();
        H2Io::TlsSplit {
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
            H2Io::Plain { prefix, tcp, .. } => {
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
            H2Io::Tls(tls) => tls.poll_read(cx, buf),
            H2Io::TlsSplit { read, .. } => read.as_mut().poll_read(cx, buf),
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
            H2Io::Plain {
                tcp: Some(tcp),
                out,
                ..
            } => out.poll_write(tcp, cx, buf),
            H2Io::Plain { tcp: None, .. } => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
            H2Io::Tls(tls) => tls.poll_write(cx, buf),
            H2Io::TlsSplit { write, .. } => write.as_mut().poll_write(cx, buf),
        }
    }

    // Not vectored (no `is_write_vectored`, so no `poll_write_vectored`): to a vectored
    // writer h2 chains every DATA payload over 256 bytes behind its buffer (over 1 KiB to
    // any other), and a chained payload flushes the connection before the next frame: a
    // write per 1 KiB response where a buffer of them went at once.

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            H2Io::Plain {
                tcp: Some(tcp),
                out,
                ..
            } => out.poll_flush(tcp, cx),
            H2Io::Plain { tcp: None, .. } => Poll::Ready(Ok(())),
            H2Io::Tls(tls) => tls.poll_flush(cx),
            H2Io::TlsSplit { write, .. } => write.as_mut().poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            H2Io::Plain {
                tcp: Some(tcp),
                out,
                ..
            } => {
                ready!(out.poll_send(tcp, cx))?;
                Pin::new(tcp).poll_shutdown(cx)
            }
            H2Io::Plain { tcp: None, .. } => Poll::Ready(Ok(())),
            H2Io::Tls(tls) => tls.poll_shutdown(cx),
            H2Io::TlsSplit { write, .. } => write.as_mut().poll_shutdown(cx),
        }
    }
}

/// The bytes h2 wrote to a plain connection, kept until it flushes (a poll-mode write is a
/// `send` at once), then sent after the rest of the loop turn ([`defer_once`]). Freed when
/// sent, so an idle connection holds none.
#[derive(Debug, Default)]
pub struct Outbox {
    buf: Vec<u8>,
    /// This flush already let the rest of the loop turn run.
    deferred: bool,
}

/// An outbox holding this much sends before it takes more.
const OUTBOX_LIMIT: usize = 64 * 1024;

impl Outbox {
    fn poll_write(
        &mut self,
        tcp: &mut TcpStreamPoll,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.buf.len() >= OUTBOX_LIMIT {
            ready!(self.poll_send(tcp, cx))?;
        }
        let n = buf.len().min(OUTBOX_LIMIT - self.buf.len());
        if self.buf.capacity() == 0 {
            self.buf.reserve(n.max(16 * 1024));
        }
        self.buf.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(
        &mut self,
        tcp: &mut TcpStreamPoll,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(defer_once(&mut self.deferred, !self.buf.is_empty(), cx));
        self.poll_send(tcp, cx)
    }

    fn poll_send(&mut self, tcp: &mut TcpStreamPoll, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut sent = 0;
        while sent < self.buf.len() {
            match Pin::new(&mut *tcp).poll_write(cx, &self.buf[sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.buf.drain(..sent);
                    return Poll::Pending;
                }
            }
        }
        self.buf = Vec::new();
        Poll::Ready(Ok(()))
    }
}

/// A flush's first call with something to `send`: `Pending` once, the task woken, so the
/// other tasks this turn of the loop woke run first. h2 flushes each time its connection
/// is polled, about once per stream that answered; the streams answered in one turn then
/// share one write (the completion adapter got the same from io_uring, whose send waits
/// for the turn's end). `deferred` says this flush already waited.
fn defer_once(deferred: &mut bool, to_send: bool, cx: &mut Context<'_>) -> Poll<()> {
    if to_send && !*deferred {
        *deferred = true;
        cx.waker().wake_by_ref();
        return Poll::Pending;
    }
    *deferred = false;
    Poll::Ready(())
}

/// A client's TLS session over its socket in poll mode.
pub struct PollTls {
    tcp: TcpStreamPoll,
    session: ServerConnection,
    /// This flush already let the rest of the loop turn run ([`defer_once`]).
    deferred: bool,
}

impl std::fmt::Debug for PollTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollTls")
            .field("deferred", &self.deferred)
            .finish_non_exhaustive()
    }
}

/// The socket as the blocking `Read` and `Write` rustls reads from and writes to: not ready
/// is `WouldBlock`, and the task is woken when it is.
struct SyncSocket<'a, 'b> {
    tcp: &'a mut TcpStreamPoll,
    cx: &'a mut Context<'b>,
}

impl Read for SyncSocket<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.tcp).poll_read(self.cx, &mut buf) {
            Poll::Ready(Ok(())) => Ok(buf.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for SyncSocket<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl PollTls {
    fn io<'a, 'b>(tcp: &'a mut TcpStreamPoll, cx: &'a mut Context<'b>) -> SyncSocket<'a, 'b> {
        SyncSocket { tcp, cx }
    }

    /// Plaintext the session holds, else ciphertext from the socket until a record opens.
    /// The end: `Ok` with nothing read after the client's close_notify, `UnexpectedEof`
    /// when the socket closed without one.
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut reader = self.session.reader();
            match reader.fill_buf() {
                Ok(plain) => {
                    let n = plain.len().min(buf.remaining());
                    buf.put_slice(&plain[..n]);
                    reader.consume(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            match self.session.read_tls(&mut Self::io(&mut self.tcp, cx)) {
                // The socket's end: rustls knows it now, and its reader says which end.
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
            if let Err(e) = self.session.process_new_packets() {
                // The alert rustls queued for the client, if the socket takes it now.
                let _ = self.session.write_tls(&mut Self::io(&mut self.tcp, cx));
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
    }

    /// Takes plaintext into records that wait in the session (up to rustls's buffer limit,
    /// 64 KiB) for [`PollTls::poll_flush`]; only a full session writes to the socket here.
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = self.session.writer().write(buf)?;
        if n > 0 {
            return Poll::Ready(Ok(n));
        }
        // The session's buffer is full: empty it, then it takes the bytes (or never will).
        ready!(self.poll_send(cx))?;
        match self.session.writer().write(buf)? {
            0 => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the TLS session takes no more data",
            ))),
            n => Poll::Ready(Ok(n)),
        }
    }

    /// Writes every record the session holds to the socket.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.session.wants_write() {
            match self.session.write_tls(&mut Self::io(&mut self.tcp, cx)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Writes the records out, after the rest of the loop turn ([`defer_once`]).
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(defer_once(
            &mut self.deferred,
            self.session.wants_write(),
            cx
        ));
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    /// close_notify, then the socket's write side.
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Queued once however often this is polled (rustls sends one alert at most).
        self.session.send_close_notify();
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.tcp).poll_shutdown(cx)
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
