//! The exchange: the types every stage of one request shares, in one leaf so that the
//! stages import it and not each other: the client side of the connection ([`Client`]),
//! the request as prepared for the upstream ([`UpstreamRequest`]), how an exchange ended
//! ([`Outcome`]) and a connection that switched protocols ([`Tunnel`]).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::time::Instant;
use shardgate_core::http1::BodyKind;

use crate::deadline::Timer;
use crate::downstream::Downstream;
use crate::observe::{RequestId, Trace, TraceHandle};
use crate::refusal::ErrorResponse;
use crate::timed;
use crate::tls::Conn;
use crate::vectored::HeadAndBody;

/// After a final error answer, how long and how much unread request data is drained
/// before closing, so the close does not become an RST that destroys the response.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// The client side of a connection.
#[derive(Debug)]
pub struct Client {
    pub stream: Downstream,
    pub peer: SocketAddr,
    /// Received bytes not yet consumed: the current head, body bytes, pipelined requests.
    pub buf: Vec<u8>,
    io_timeout: Duration,
    /// The connection's deadline, for every wait on this connection (the client's reads
    /// and writes, and the upstream's while this client's request is served).
    pub timer: Timer,
    /// No request has been read on this connection yet (an HTTP/2 preface may come).
    pub fresh: bool,
    /// Wait for the next request hot (`connection::hot_wait`): the last one came soon
    /// after the response before it.
    pub hot: bool,
    /// When the connection's current idle wait began, in the worker's wrapping
    /// milliseconds (`connection::millis`).
    pub waited_from: u32,
    /// The running request's trace (set by its request slot; `None` between requests).
    pub trace: Option<TraceHandle>,
}

impl Client {
    /// Drops the first `n` buffered bytes (a finished request).
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        self.buf.drain(..n);
        self.note(|t| t.obs.bytes_in += n as u64);
    }

    /// The status the running request was answered with so far (0: none yet).
    pub fn status_sent(&self) -> u16 {
        self.trace.as_ref().map_or(0, |t| t.borrow().obs.status)
    }

    /// Notes something about the running request in its trace.
    pub fn note(&self, f: impl FnOnce(&mut Trace)) {
        if let Some(trace) = &self.trace {
            f(&mut trace.borrow_mut());
        }
    }

    pub fn new(stream: Downstream, peer: SocketAddr, io_timeout: Duration, timer: Timer) -> Client {
        Client {
            stream,
            peer,
            buf: Vec::new(),
            io_timeout,
            timer,
            fresh: true,
            hot: false,
            waited_from: 0,
            trace: None,
        }
    }

    /// Writes all of `bytes` within the client I/O timeout.
    pub async fn write(&mut self, bytes: Vec<u8>) -> io::Result<()> {
        self.write_returning(bytes).await.0
    }

    /// Like [`Client::write`], giving the buffer back for reuse.
    pub async fn write_returning(&mut self, bytes: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let n = bytes.len() as u64;
        let (res, bytes) =
            timed::write_all(&mut self.stream, bytes, self.io_timeout, &self.timer).await;
        if res.is_ok() {
            self.note(|t| t.obs.bytes_out += n);
        }
        (res, bytes)
    }

    /// Whether a vectored write suits the client: on plain TCP it is one `writev`, an
    /// HTTP/2 stream takes each slice where it lies (a TLS stream would take it one buffer,
    /// one record, at a time).
    pub fn takes_vectored(&self) -> bool {
        matches!(self.stream, Downstream::Plain(_) | Downstream::H2(_))
    }

    /// Writes all of `write` within the client I/O timeout; gives it back for reuse
    /// (`None` when the write timed out).
    pub async fn write_head_and_body(
        &mut self,
        write: HeadAndBody,
    ) -> (io::Result<()>, Option<HeadAndBody>) {
        let n = write.len() as u64;
        let (res, write) =
            timed::write_head_and_body(&mut self.stream, write, self.io_timeout, &self.timer).await;
        if res.is_ok() {
            self.note(|t| t.obs.bytes_out += n);
        }
        (res, write)
    }

    /// Reads into `buf` (appending) within the client I/O timeout.
    pub async fn read_into(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        timed::read(&mut self.stream, buf, self.io_timeout, &self.timer).await
    }

    /// Like [`Client::read_into`], but never waiting past `deadline` (a service's
    /// whole-request deadline while its request body streams).
    pub async fn read_into_before(
        &mut self,
        buf: Vec<u8>,
        deadline: Option<Instant>,
    ) -> (io::Result<usize>, Vec<u8>) {
        let timeout = match deadline {
            Some(deadline) => self
                .io_timeout
                .min(deadline.saturating_duration_since(Instant::now())),
            None => self.io_timeout,
        };
        timed::read(&mut self.stream, buf, timeout, &self.timer).await
    }

    /// Writes an error answer of the gateway's own.
    pub async fn send_error(
        &mut self,
        error: &ErrorResponse,
        close: bool,
        head_only: bool,
    ) -> io::Result<()> {
        let mut out = Vec::with_capacity(256);
        // The request's id; one of its own for an answer outside any request (503 at
        // `--max-connections`).
        let id = match &self.trace {
            Some(trace) => {
                let mut t = trace.borrow_mut();
                t.obs.status = error.status;
                t.reason.clear();
                t.reason.push_str(&error.message);
                t.id().clone()
            }
            None => RequestId::generate(),
        };
        error.encode(close, head_only, id.as_bytes(), &mut out);
        self.write(out).await
    }

    /// Half-closes and drains what the client still sends, briefly, before the close. An
    /// HTTP/2 stream only ends: unread request data there never resets a connection.
    pub async fn linger(&mut self) {
        let _ = self.stream.shutdown().await;
        if matches!(self.stream, Downstream::H2(_)) {
            return;
        }
        let deadline = monoio::time::Instant::now() + LINGER_TIME;
        let mut drained = 0;
        let mut scratch = Vec::with_capacity(4096);
        while drained < LINGER_BYTES {
            scratch.clear();
            match monoio::time::timeout_at(deadline, self.stream.read(scratch)).await {
                Ok((Ok(n), buf)) if n > 0 => {
                    drained += n;
                    scratch = buf;
                }
                _ => break,
            }
        }
    }
}

/// How an exchange ended, for the connection loop.
#[derive(Debug)]
pub enum Outcome {
    /// Done; serve the next request on this connection or close it.
    Done { keep_alive: bool },
    /// The upstream switched protocols (101): the connection becomes a byte tunnel.
    Upgrade(Tunnel),
}

/// Everything the upstream request needs, prepared once before the first attempt, so that
/// retries and the client buffer's later reuse do not depend on the parsed head.
#[derive(Debug)]
pub struct UpstreamRequest {
    /// `METHOD SP origin-form-target SP HTTP/1.x` without CRLF; Host is per target.
    pub request_line: Vec<u8>,
    /// The client's Host, when the rule preserves it.
    pub preserved_host: Option<Vec<u8>>,
    /// Every other header line, each ending in CRLF, framing and forwarding headers included.
    pub headers: Vec<u8>,
    pub body: BodyKind,
    /// Where the body starts in the client buffer.
    pub head_len: usize,
    /// Whether the request may be repeated on another target (RFC 9110 §9.2.2).
    pub idempotent: bool,
    pub is_head: bool,
    pub expect_continue: bool,
    pub upgrade: bool,
    /// The protocols the client offered in `Upgrade` (empty unless `upgrade`): a 101 must
    /// switch to one of them.
    pub upgrade_protocols: Vec<u8>,
    /// HTTP/1.0 client: the upstream request is HTTP/1.0 with `Connection: close`, so the
    /// response can never be chunked.
    pub http10: bool,
    /// The client wants to keep the connection.
    pub client_keep_alive: bool,
    /// Consistent-hash input (client IP or the upstream's `hash_header`).
    pub hash: Option<u64>,
    /// The service's whole-request deadline (`timeout`: connect to last response byte).
    pub deadline: Option<Instant>,
    /// `X-Request-Id`, upstream and back to the client.
    pub request_id: RequestId,
}

impl UpstreamRequest {
    /// `timeout`, or less when the request's deadline comes sooner. Whether the deadline is
    /// what bounds it decides between 504 "upstream timed out" and "service timeout
    /// exceeded" (and which one is retried).
    pub fn bounded(&self, timeout: Duration) -> Duration {
        match self.deadline {
            Some(deadline) => timeout.min(deadline.saturating_duration_since(Instant::now())),
            None => timeout,
        }
    }

    /// Whether the service's deadline has passed.
    pub fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// A connection that switched protocols, for the connection loop to tunnel.
#[derive(Debug)]
pub struct Tunnel {
    pub upstream: Conn,
    /// Bytes the upstream sent after its 101 head.
    pub to_client: Vec<u8>,
}
