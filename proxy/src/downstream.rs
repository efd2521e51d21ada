//! The client's side of a connection: plain TCP from the plain listener, or TLS from the
//! HTTPS listener, one type for every stage that reads from or writes to the client.
//!
//! TLS: each worker answers handshakes with a rustls server configuration built from the
//! snapshot's SNI table ([`shardgate_core::certs::ServerCertificates`]) and rebuilt only
//! when that table changes, so a replaced certificate takes effect for new handshakes while
//! open connections keep the configuration they negotiated with. TLS 1.2 and 1.3 with
//! rustls's safe defaults (ring), ALPN `h2` and `http/1.1`. Resumption: session tickets from one
//! process-wide ticketer (a client that comes back on another core resumes too) and a
//! per-worker session-id cache for TLS 1.2 clients without tickets.
//!
//! The handshake is the gateway's own ([`handshake`]), in completion mode: every byte it
//! reads goes into the session, so whatever the client sent right behind its Finished
//! (an HTTP/2 preface, a request) is in the session when ALPN's choice is known, and the
//! session and the socket can be handed over apart (monoio-rustls's handshake may leave
//! such bytes in a buffer of its stream). HTTP/1.1 then drives them with monoio-rustls;
//! HTTP/2 in poll mode ([`crate::h2io`]).
//!
//! monoio-rustls keeps its own read and write buffers and panics if an I/O future is
//! dropped mid-operation and the stream is used again. Timeouts drop futures, so
//! [`TlsClient`] marks an operation as started and refuses (an I/O error, never a panic)
//! every later one on a stream whose previous one was interrupted; such a connection is
//! only ever closed.

use std::cell::RefCell;
use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio_rustls::ServerTlsStream;
use rustls::server::{ProducesTickets, ServerSessionMemoryCache};
use rustls::{ServerConfig, ServerConnection};
use shardgate_core::certs::ServerCertificates;

use crate::h2io::H2Io;
use crate::h2stream::H2Stream;

/// Bytes the handshake reads at once. At most this much arrives behind the client's
/// Finished in the read that ends the handshake, well under the plaintext rustls holds
/// unread (16 KiB), so all of it fits in the session.
const HANDSHAKE_READ: usize = 4096;

/// TLS 1.2 session ids kept per worker.
const SESSIONS_PER_WORKER: usize = 4096;

/// The process's session-ticket key (rotated by rustls), shared by every worker.
static TICKETER: OnceLock<Option<Arc<dyn ProducesTickets>>> = OnceLock::new();

/// Creates the process's ticketer; called once at start-up (before the workers run).
pub fn init() {
    TICKETER.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        match rustls::crypto::ring::Ticketer::new() {
            Ok(ticketer) => Some(ticketer),
            Err(e) => {
                tracing::warn!(error = %e, "no TLS session tickets: resumption by session id only");
                None
            }
        }
    });
}

/// One worker's TLS server: its session cache and the configuration for the SNI table it
/// last saw.
pub struct ListenerTls {
    sessions: Arc<ServerSessionMemoryCache>,
    current: RefCell<Option<(Arc<ServerCertificates>, Arc<ServerConfig>)>>,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ListenerTls")
    }
}

impl Default for ListenerTls {
    fn default() -> Self {
        ListenerTls {
            sessions: ServerSessionMemoryCache::new(SESSIONS_PER_WORKER),
            current: RefCell::new(None),
        }
    }
}

impl ListenerTls {
    /// The server configuration for `certificates`: the cached one while the table is the
    /// same `Arc` (one pointer comparison per connection), else a new one.
    pub fn server_config(&self, certificates: &Arc<ServerCertificates>) -> Arc<ServerConfig> {
        let mut current = self.current.borrow_mut();
        if let Some((table, config)) = current.as_ref()
            && Arc::ptr_eq(table, certificates)
        {
            return config.clone();
        }
        let config = Arc::new(self.config(certificates.clone()));
        *current = Some((certificates.clone(), config.clone()));
        config
    }

    fn config(&self, certificates: Arc<ServerCertificates>) -> ServerConfig {
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(certificates);
        // h2 first: a client offering both gets HTTP/2 (RFC 7301: the server chooses).
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.session_storage = self.sessions.clone();
        if let Some(Some(ticketer)) = TICKETER.get() {
            config.ticketer = ticketer.clone();
        }
        config
    }
}

/// Runs the server handshake on `tcp` within `limit` (the header timeout: a client that
/// stalls mid-handshake costs a timer, not memory for long).
pub async fn handshake(
    config: &Arc<ServerConfig>,
    tcp: TcpStream,
    limit: Duration,
) -> io::Result<Box<Handshaken>> {
    let failed = |e: &dyn std::fmt::Display| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("TLS handshake failed: {e}"),
        )
    };
    let session = ServerConnection::new(config.clone()).map_err(|e| failed(&e))?;
    match monoio::time::timeout(limit, complete(tcp, session)).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(e)) => Err(failed(&e)),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        )),
    }
}

/// Drives `session` through the handshake over `tcp`: the session's flights out, the
/// client's in, every byte read handed to the session before the next read.
async fn complete(
    mut tcp: TcpStream,
    mut session: ServerConnection,
) -> io::Result<Box<Handshaken>> {
    let mut out = Vec::new();
    let mut input = Vec::with_capacity(HANDSHAKE_READ);
    loop {
        // Before the handshake's end is checked: TLS 1.3 tickets follow the last flight.
        if session.wants_write() {
            out.clear();
            while session.wants_write() {
                session.write_tls(&mut out)?;
            }
            let (written, buf) = tcp.write_all(out).await;
            out = buf;
            written?;
            continue;
        }
        if !session.is_handshaking() {
            return Ok(Box::new(Handshaken { tcp, session }));
        }
        input.clear();
        let (read, buf) = tcp.read(input).await;
        input = buf;
        if read? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client closed the connection mid-handshake",
            ));
        }
        let mut rest = &input[..];
        while !rest.is_empty() {
            if session.read_tls(&mut rest)? == 0 {
                return Err(io::Error::other(
                    "the handshake's input did not fit the session",
                ));
            }
            if let Err(e) = session.process_new_packets() {
                // The alert rustls queued, best effort: the handshake failed either way.
                out.clear();
                if session.write_tls(&mut out).is_ok() && !out.is_empty() {
                    let _ = tcp.write_all(out).await;
                }
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }
}

/// A client's TLS connection whose handshake is done: the socket and the session apart,
/// for the protocol ALPN chose to drive. Boxed where it is made: the session is over a
/// kilobyte, and the connection's task never holds it.
pub struct Handshaken {
    tcp: TcpStream,
    session: ServerConnection,
}

impl std::fmt::Debug for Handshaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshaken")
            .field("h2", &self.is_h2())
            .finish_non_exhaustive()
    }
}

impl Handshaken {
    /// Whether the client and the gateway agreed on HTTP/2 (ALPN `h2`).
    pub fn is_h2(&self) -> bool {
        self.session.alpn_protocol() == Some(b"h2")
    }

    /// The connection as HTTP/1.1 reads and writes it.
    pub fn into_http1(self: Box<Self>) -> Box<TlsClient> {
        let Handshaken { tcp, session } = *self;
        Box::new(TlsClient {
            stream: ServerTlsStream::new(tcp, session),
            busy: false,
        })
    }

    /// The connection as HTTP/2 reads and writes it.
    pub fn into_h2(self: Box<Self>) -> io::Result<H2Io> {
        let Handshaken { tcp, session } = *self;
        H2Io::tls(tcp, session)
    }
}

/// A TLS client connection (see the module docs for the interruption guard).
pub struct TlsClient {
    stream: ServerTlsStream<TcpStream>,
    /// An operation is (or was left) in flight. One flag for reads and writes alike: a
    /// monoio-rustls read may write (an alert), so an interrupted read can leave the write
    /// side unusable too.
    busy: bool,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("busy", &self.busy)
            .finish_non_exhaustive()
    }
}

fn interrupted() -> io::Error {
    io::Error::other("an earlier TLS operation on this connection was interrupted")
}

impl TlsClient {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        if self.busy {
            return (Err(interrupted()), buf);
        }
        self.busy = true;
        let out = self.stream.read(buf).await;
        self.busy = false;
        out
    }

    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        if self.busy {
            return (Err(interrupted()), buf);
        }
        self.busy = true;
        let out = self.stream.write(buf).await;
        self.busy = false;
        out
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.busy {
            return Err(interrupted());
        }
        self.busy = true;
        let out = self.stream.flush().await;
        self.busy = false;
        out
    }

    /// Sends close_notify and half-closes.
    async fn shutdown(&mut self) -> io::Result<()> {
        if self.busy {
            return Err(interrupted());
        }
        self.busy = true;
        let out = self.stream.shutdown().await;
        self.busy = false;
        out
    }

    /// The stream for a tunnel; `None` when an earlier operation was interrupted.
    pub fn into_inner(self) -> Option<ServerTlsStream<TcpStream>> {
        (!self.busy).then_some(self.stream)
    }
}

/// The client's stream.
///
/// The TLS arms of its reads and writes are boxed: monoio-rustls's futures are large, and
/// inline they would grow every future that awaits client I/O — the connection task an
/// idle keep-alive connection keeps alive, and the per-request future — for plain
/// connections too. A TLS operation pays one small allocation beside its crypto.
pub enum Downstream {
    Plain(TcpStream),
    /// Boxed: the TLS session and its buffers are tens of kilobytes.
    Tls(Box<TlsClient>),
    /// One stream of an HTTP/2 connection, as a one-request connection.
    H2(Box<H2Stream>),
}

impl std::fmt::Debug for Downstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Downstream::Plain(_) => "Downstream::Plain",
            Downstream::Tls(_) => "Downstream::Tls",
            Downstream::H2(_) => "Downstream::H2",
        })
    }
}

impl Downstream {
    /// Whether the client came over TLS (`X-Forwarded-Proto: https`).
    pub fn is_tls(&self) -> bool {
        match self {
            Downstream::Plain(_) => false,
            Downstream::Tls(_) => true,
            Downstream::H2(stream) => stream.tls,
        }
    }
}

impl AsyncReadRent for Downstream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Downstream::Plain(s) => s.read(buf).await,
            Downstream::Tls(s) => Box::pin(s.read(buf)).await,
            Downstream::H2(s) => Box::pin(s.read(buf)).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Downstream::Plain(s) => s.readv(buf).await,
            Downstream::Tls(s) => {
                if s.busy {
                    return (Err(interrupted()), buf);
                }
                s.busy = true;
                let out = Box::pin(s.stream.readv(buf)).await;
                s.busy = false;
                out
            }
            Downstream::H2(s) => Box::pin(s.readv(buf)).await,
        }
    }
}

impl AsyncWriteRent for Downstream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Downstream::Plain(s) => s.write(buf).await,
            Downstream::Tls(s) => Box::pin(s.write(buf)).await,
            Downstream::H2(s) => Box::pin(s.write(buf)).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Downstream::Plain(s) => s.writev(buf).await,
            Downstream::Tls(s) => {
                if s.busy {
                    return (Err(interrupted()), buf);
                }
                s.busy = true;
                let out = Box::pin(s.stream.writev(buf)).await;
                s.busy = false;
                out
            }
            Downstream::H2(s) => Box::pin(s.writev(buf)).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            Downstream::Plain(s) => s.flush().await,
            Downstream::Tls(s) => Box::pin(s.flush()).await,
            Downstream::H2(s) => s.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Downstream::Plain(s) => s.shutdown().await,
            Downstream::Tls(s) => Box::pin(s.shutdown()).await,
            Downstream::H2(s) => s.shutdown().await,
        }
    }
}
