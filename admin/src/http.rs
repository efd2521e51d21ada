//! The admin REST API's HTTP/1.1 server: one accept loop and one task per connection on the
//! admin thread's monoio runtime, handing each complete request to a synchronous handler.
//!
//! Lifecycle of a connection: wait for a request (idle timeout) → read the head (header
//! timeout, size limits) → decide the body framing (Content-Length or chunked, limit checked
//! before reading) → send `100 Continue` if asked → read the body → call the handler → write
//! the response → loop for keep-alive, or half-close and drain the socket briefly so the
//! client reads the final response instead of a reset.
//!
//! Framing is not ours: request heads are parsed by [`shardgate_core::http1::parse_request`]
//! and chunked bodies validated by [`ChunkedScanner`], the codec the proxy uses, so both
//! listeners refuse the same malformed and smuggling shapes (bare LF, obs-fold, duplicate
//! Host, CL+TE, differing Content-Lengths, ...) with the same status codes. What this file
//! adds is what a *server* (not a forwarder) needs: turning the parsed head and the decoded
//! body into an owned [`Request`], the body limit (413), `Expect` handling, and the JSON
//! error answer for every refusal.
//!
//! What it deliberately does not do: it is not the data-plane proxy; no TLS, HTTP/2,
//! upgrades, response streaming or compression; it never percent-decodes the path (routes
//! see the raw target, ids are UUIDs); and it never runs two handler calls at once — the
//! admin thread serializes all mutations.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt::Display;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use serde::Serialize;
use shardgate_core::http1::{
    self, BodyKind, ChunkError, ChunkedScanner, HEADER_CAPACITY, HeadError, Parse, RequestHead,
};

/// Bytes asked of the kernel per read.
const READ_CHUNK: usize = 16 * 1024;
/// After a response that closes the connection, how long and how much unread input we
/// drain before closing: closing with unread data makes the kernel send a reset, which can
/// destroy the response (e.g. a 413) before the client has read it.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 * 1024 * 1024;
/// Pause after an accept error caused by resource exhaustion (EMFILE & co.), so the loop
/// does not spin while the process is out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long [`serve`] waits, after `shutdown`, for in-flight requests to be answered.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
const JSON: &str = "application/json";

/// A complete request, body included, as handed to the handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// As sent (methods are case-sensitive): `GET`, `POST`, ...
    pub method: String,
    /// The raw path, not percent-decoded, without the query. An absolute-form target
    /// (`http://host/path`) is reduced to its path.
    pub path: String,
    /// The raw query string after `?`, if the target had one.
    pub query: Option<String>,
    /// Header fields in arrival order, names lowercased, values as sent.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The decoded body (chunked framing removed); empty when the request had none.
    pub body: Vec<u8>,
    pub peer: SocketAddr,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of query parameter `name`, percent-decoded (`+` as space); a
    /// parameter without `=` yields `""`. Invalid escapes are kept literally, invalid UTF-8
    /// is replaced.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.query.as_deref()?;
        query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .find(|(key, _)| percent_decode(key) == name)
            .map(|(_, value)| percent_decode(value))
    }
}

/// What the handler answers. The server adds `Content-Length` and `Connection` itself and
/// drops any the handler set, along with any header whose name or value could split the
/// response (CR, LF, NUL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// 200..=599; anything else is replaced by a 500.
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Not sent for HEAD requests, 204 and 304.
    pub body: Vec<u8>,
}

impl Response {
    /// `value` serialized as the JSON body, with `Content-Type: application/json`. Should
    /// serialization fail (e.g. a map with non-string keys), the answer is a logged 500.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response::bytes(status, JSON, body),
            Err(e) => {
                tracing::error!(error = %e, "admin response failed to serialize");
                Response::error(500, "internal error: response failed to serialize")
            }
        }
    }

    /// `{"error": msg}` with `status`; every error answer of the admin API has this shape.
    pub fn error(status: u16, msg: impl Display) -> Response {
        let body = serde_json::json!({ "error": msg.to_string() });
        Response::bytes(status, JSON, body.to_string().into_bytes())
    }

    /// No body, no `Content-Type` (e.g. 204 after a delete).
    pub fn empty(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A non-JSON body, e.g. the Prometheus text of `/metrics`.
    pub fn bytes(status: u16, content_type: &str, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".to_owned(), content_type.to_owned())],
            body,
        }
    }

    /// Sets header `name`, replacing any header of the same name (case-insensitive).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into();
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
        self.headers.push((name, value.into()));
        self
    }
}

/// Limits that bound what one client can make the admin thread hold or wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Largest request body, after chunked decoding. Default 1 MiB: far above any entity
    /// the API accepts, small enough that a client cannot balloon the admin thread. Larger
    /// bodies get 413 and the connection is closed. The proxy has no such default (its
    /// bodies stream and cost no memory); this server holds the whole body for the handler.
    pub max_body: usize,
    /// Request head limits, enforced by core's parser. Default: core's
    /// [`http1::Limits::default`], the proxy's too — 16 KiB head (431), 8 KiB request target
    /// (414), 100 header fields (431) — so a head one listener accepts the other does not
    /// refuse for size. A chunked body's framing (size lines, CRLFs, trailers) may exceed
    /// its data by at most `head.max_head`, so a client cannot stream endless framing
    /// around a small body; beyond that is a 400.
    pub head: http1::Limits,
    /// Time allowed to receive a whole request head once its first byte arrived. Default
    /// 10 s: generous for humans with `nc`, short enough to shed slowloris clients. On
    /// expiry the client gets 408 and the connection is closed.
    pub header_timeout: Duration,
    /// Time a keep-alive connection may sit between requests, and the longest a body read
    /// or response write may go without progress. Default 60 s; on expiry the connection
    /// is closed silently.
    pub idle_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_body: 1024 * 1024,
            head: http1::Limits::default(),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Serves HTTP/1.1 on `listener` until `shutdown` resolves, calling `handler` once per
/// complete request, in arrival order per connection.
///
/// Must run inside a monoio runtime built with `enable_timer()`. `shutdown` is polled on
/// this thread; monoio is built without its `sync` feature, so a future woken from another
/// thread panics — to stop from another thread, pass [`until_flag_set`]. A listener made
/// with `TcpListener::from_std` needs `set_nonblocking(true)` first (the epoll driver
/// requires it).
///
/// Client errors never end the loop: they are logged with `tracing::debug!` and close that
/// connection only; accept errors are logged and retried, after a 100 ms pause when
/// the process is out of descriptors or memory. A panicking handler is caught and answered
/// with 500, so one bad request cannot take down the admin thread.
///
/// After `shutdown`: no new connections, idle keep-alive connections are closed, and
/// requests already being read are answered (with `Connection: close`) for up to
/// 5 s (`DRAIN_GRACE`); then this returns, and dropping the runtime drops any stragglers.
pub async fn serve<H, S>(listener: TcpListener, limits: ServerLimits, handler: H, shutdown: S)
where
    H: FnMut(Request) -> Response + 'static,
    S: Future<Output = ()>,
{
    let handler = Rc::new(RefCell::new(handler));
    let connections = Rc::new(Connections::default());
    let mut shutdown = pin!(shutdown);
    loop {
        match race(shutdown.as_mut(), listener.accept()).await {
            Either::Left(()) => break,
            Either::Right(Ok((stream, peer))) => {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(%peer, error = %e, "admin connection: set_nodelay failed");
                }
                let connection = Connection {
                    stream,
                    peer,
                    limits,
                    handler: Rc::clone(&handler),
                    slot: Connections::open(&connections),
                };
                monoio::spawn(connection.run());
            }
            Either::Right(Err(e)) => {
                tracing::warn!(error = %e, "admin listener: accept failed");
                if is_resource_exhaustion(&e) {
                    let backoff = monoio::time::sleep(ACCEPT_BACKOFF);
                    if let Either::Left(()) = race(shutdown.as_mut(), backoff).await {
                        break;
                    }
                }
            }
        }
    }
    drop(listener);
    connections.start_draining();
    let deadline = Instant::now() + DRAIN_GRACE;
    while connections.active.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A `shutdown` signal for [`serve`] that another thread can raise: resolves once `flag`
/// is true, checking every `poll_every` (polling, because a cross-thread wake-up is not
/// available in this monoio build; 50–100 ms is plenty for a shutdown).
pub async fn until_flag_set(flag: Arc<AtomicBool>, poll_every: Duration) {
    while !flag.load(Ordering::Acquire) {
        monoio::time::sleep(poll_every).await;
    }
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Book-keeping shared by the accept loop and its connection tasks (all on one thread).
#[derive(Default)]
struct Connections {
    next_id: Cell<u64>,
    active: Cell<usize>,
    draining: Cell<bool>,
    /// Wakers of connections waiting between requests, woken when draining starts.
    idle: RefCell<HashMap<u64, Waker>>,
}

impl Connections {
    fn open(this: &Rc<Self>) -> ConnectionSlot {
        let id = this.next_id.get();
        this.next_id.set(id.wrapping_add(1));
        this.active.set(this.active.get() + 1);
        ConnectionSlot {
            connections: Rc::clone(this),
            id,
        }
    }

    fn start_draining(&self) {
        self.draining.set(true);
        let wakers = std::mem::take(&mut *self.idle.borrow_mut());
        for waker in wakers.into_values() {
            waker.wake();
        }
    }
}

/// One connection's membership in [`Connections`]; leaving is done on drop.
struct ConnectionSlot {
    connections: Rc<Connections>,
    id: u64,
}

impl ConnectionSlot {
    fn is_draining(&self) -> bool {
        self.connections.draining.get()
    }

    /// Resolves when the server starts draining.
    async fn draining(&self) {
        poll_fn(|cx| {
            if self.is_draining() {
                return Poll::Ready(());
            }
            self.connections
                .idle
                .borrow_mut()
                .insert(self.id, cx.waker().clone());
            Poll::Pending
        })
        .await;
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let active = &self.connections.active;
        active.set(active.get().saturating_sub(1));
        self.connections.idle.borrow_mut().remove(&self.id);
    }
}

/// Why a connection ended; logged once per connection.
#[derive(Debug)]
enum End {
    PeerClosed,
    PeerClosedMidRequest,
    IdleTimeout,
    Draining,
    /// A response carrying `Connection: close` was written.
    Responded,
    Io(io::Error),
}

/// A request refused before the handler sees it; the connection closes after the answer.
/// This is the one place where the codec's typed errors become statuses and messages.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reject {
    status: u16,
    message: String,
    /// The `Allow` field of a 405 (RFC 9110 §15.5.6 requires one).
    allow: Option<&'static str>,
}

impl Reject {
    fn new(status: u16, message: impl Into<String>) -> Reject {
        Reject {
            status,
            message: message.into(),
            allow: None,
        }
    }

    fn malformed(detail: impl Display) -> Reject {
        Reject::new(400, format!("malformed request: {detail}"))
    }

    fn too_large(max_body: usize) -> Reject {
        Reject::new(413, format!("request body exceeds {max_body} bytes"))
    }

    /// A head core's parser refused, with the status it assigns ([`HeadError::status`]);
    /// limit errors name the limit, so a client knows what to shrink.
    fn head(e: HeadError, limits: &http1::Limits) -> Reject {
        let status = e.status();
        let message = match e {
            HeadError::UriTooLong => format!("request target exceeds {} bytes", limits.max_uri),
            HeadError::HeadTooLarge => format!("request head exceeds {} bytes", limits.max_head),
            HeadError::TooManyHeaders => format!(
                "too many header fields (at most {})",
                limits.max_headers.min(HEADER_CAPACITY)
            ),
            e if status == 400 => format!("malformed request: {e}"),
            e => e.to_string(),
        };
        Reject {
            status,
            message,
            // Every method the admin API routes; CONNECT is the only one refused here.
            allow: (e == HeadError::ConnectUnsupported).then_some("GET, HEAD, POST, PUT, DELETE"),
        }
    }

    fn chunked(e: ChunkError) -> Reject {
        Reject::new(e.status(), format!("malformed request: {e}"))
    }
}

struct Connection<H> {
    stream: TcpStream,
    peer: SocketAddr,
    limits: ServerLimits,
    handler: Rc<RefCell<H>>,
    slot: ConnectionSlot,
}

impl<H: FnMut(Request) -> Response> Connection<H> {
    async fn run(mut self) {
        let end = self.serve_requests().await;
        match &end {
            End::Io(e) => tracing::debug!(peer = %self.peer, error = %e, "admin connection failed"),
            end => tracing::debug!(peer = %self.peer, reason = ?end, "admin connection closed"),
        }
        if let End::Responded = end {
            linger(&mut self.stream).await;
        }
    }

    async fn serve_requests(&mut self) -> End {
        let limits = self.limits;
        let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        loop {
            if buf.is_empty() {
                if self.slot.is_draining() {
                    return End::Draining;
                }
                let read = read_more(&mut self.stream, buf, limits.idle_timeout);
                buf = match race(self.slot.draining(), read).await {
                    Either::Left(()) => return End::Draining,
                    Either::Right(Ok(buf)) => buf,
                    Either::Right(Err(ReadEnd::Eof)) => return End::PeerClosed,
                    Either::Right(Err(ReadEnd::TimedOut)) => return End::IdleTimeout,
                    Either::Right(Err(ReadEnd::Io(e))) => return End::Io(e),
                };
            }

            let head_deadline = Instant::now() + limits.header_timeout;
            let head = loop {
                match http1::parse_request(&buf, &limits.head) {
                    // Owned at once: core's head holds offsets into `buf`, which is drained
                    // and read into below.
                    Ok(Parse::Complete(parsed)) => break Head::from_parsed(&parsed, &buf),
                    Err(e) => return self.reject(Reject::head(e, &limits.head)).await,
                    Ok(Parse::Partial) => {
                        let left = head_deadline.saturating_duration_since(Instant::now());
                        buf = match read_more(&mut self.stream, buf, left).await {
                            Ok(buf) => buf,
                            Err(ReadEnd::Eof) => return End::PeerClosedMidRequest,
                            Err(ReadEnd::TimedOut) => {
                                let reject = Reject::new(408, "timed out reading request head");
                                return self.reject(reject).await;
                            }
                            Err(ReadEnd::Io(e)) => return End::Io(e),
                        };
                    }
                }
            };
            buf.drain(..head.head_len);

            let framing = match body_framing(head.body, limits.max_body) {
                Ok(framing) => framing,
                Err(reject) => return self.reject(reject).await,
            };
            if head.unsupported_expectation() {
                let reject = Reject::new(417, "only Expect: 100-continue is supported");
                return self.reject(reject).await;
            }
            // The client may have sent the body without waiting; then 100 is pointless.
            if head.expect_continue && framing != Framing::None && buf.is_empty() {
                let interim = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
                if let Err(e) = write_within(&mut self.stream, interim, limits.idle_timeout).await {
                    return End::Io(e);
                }
            }

            let body = match framing {
                Framing::None => Vec::new(),
                Framing::Length(len) => {
                    while buf.len() < len {
                        buf = match read_more(&mut self.stream, buf, limits.idle_timeout).await {
                            Ok(buf) => buf,
                            Err(end) => return end.mid_request(),
                        };
                    }
                    let rest = buf.split_off(len);
                    std::mem::replace(&mut buf, rest)
                }
                Framing::Chunked => {
                    let mut body = ChunkedBody::new(limits);
                    loop {
                        match body.decode(&buf) {
                            Ok(consumed) => {
                                buf.drain(..consumed);
                            }
                            Err(reject) => return self.reject(reject).await,
                        }
                        if body.is_done() {
                            break body.into_data();
                        }
                        buf = match read_more(&mut self.stream, buf, limits.idle_timeout).await {
                            Ok(buf) => buf,
                            Err(end) => return end.mid_request(),
                        };
                    }
                }
            };

            let head_only = head.method == "HEAD";
            let version = head.version;
            let mut keep_alive = head.keep_alive && !self.slot.is_draining();
            let request = head.into_request(body, self.peer);
            let response = call_handler(&self.handler, request);
            keep_alive &= !response
                .headers
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case("connection") && has_token(v, "close"));
            let connection = match (keep_alive, version) {
                (false, _) => ConnectionHeader::Close,
                // HTTP/1.0 keep-alive must be confirmed; for HTTP/1.1 it is the default.
                (true, 0) => ConnectionHeader::KeepAlive,
                (true, _) => ConnectionHeader::Omit,
            };
            let bytes = encode_response(&response, head_only, connection);
            if let Err(e) = write_within(&mut self.stream, bytes, limits.idle_timeout).await {
                return End::Io(e);
            }
            if !keep_alive {
                return End::Responded;
            }
        }
    }

    /// Answers `reject` with `Connection: close`; the caller then ends the connection.
    async fn reject(&mut self, reject: Reject) -> End {
        tracing::debug!(peer = %self.peer, status = reject.status, message = %reject.message,
            "admin request rejected");
        let mut response = Response::error(reject.status, &reject.message);
        if let Some(allow) = reject.allow {
            response = response.with_header("Allow", allow);
        }
        let bytes = encode_response(&response, false, ConnectionHeader::Close);
        match write_within(&mut self.stream, bytes, self.limits.idle_timeout).await {
            Ok(()) => End::Responded,
            Err(e) => End::Io(e),
        }
    }
}

/// Runs the handler, turning a panic or an impossible status into a 500.
fn call_handler<H: FnMut(Request) -> Response>(handler: &RefCell<H>, request: Request) -> Response {
    let Ok(mut handler) = handler.try_borrow_mut() else {
        // Unreachable while the handler is synchronous: no await happens during a call.
        tracing::error!("admin handler re-entered");
        return Response::error(500, "internal error");
    };
    let (method, path) = (request.method.clone(), request.path.clone());
    match catch_unwind(AssertUnwindSafe(|| (*handler)(request))) {
        Ok(response) if (200..=599).contains(&response.status) => response,
        Ok(response) => {
            tracing::error!(%method, %path, status = response.status,
                "admin handler returned an invalid status");
            Response::error(500, "internal error")
        }
        Err(_) => {
            tracing::error!(%method, %path, "admin handler panicked");
            Response::error(500, "internal error")
        }
    }
}

#[derive(Debug)]
enum ReadEnd {
    Eof,
    TimedOut,
    Io(io::Error),
}

impl ReadEnd {
    fn mid_request(self) -> End {
        match self {
            ReadEnd::Eof => End::PeerClosedMidRequest,
            ReadEnd::TimedOut => End::IdleTimeout,
            ReadEnd::Io(e) => End::Io(e),
        }
    }
}

/// Appends at least one byte read from `stream` to `buf` within `limit`. The buffer is
/// moved into the read (monoio's ownership-passing I/O), so on error it is gone — every
/// caller closes the connection then anyway.
async fn read_more(
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
    limit: Duration,
) -> Result<Vec<u8>, ReadEnd> {
    if buf.capacity() - buf.len() < READ_CHUNK / 2 {
        buf.reserve(READ_CHUNK);
    }
    loop {
        let (len, cap) = (buf.len(), buf.capacity());
        match monoio::time::timeout(limit, stream.read(buf.slice_mut(len..cap))).await {
            Err(_elapsed) => return Err(ReadEnd::TimedOut),
            Ok((Ok(0), _)) => return Err(ReadEnd::Eof),
            Ok((Ok(_), slice)) => return Ok(slice.into_inner()),
            Ok((Err(e), slice)) if e.kind() == io::ErrorKind::Interrupted => {
                buf = slice.into_inner();
            }
            Ok((Err(e), _)) => return Err(ReadEnd::Io(e)),
        }
    }
}

async fn write_within(stream: &mut TcpStream, bytes: Vec<u8>, limit: Duration) -> io::Result<()> {
    match monoio::time::timeout(limit, stream.write_all(bytes)).await {
        Ok((result, _)) => result.map(|_| ()),
        Err(_elapsed) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "response write timed out",
        )),
    }
}

/// Half-closes and discards what the client still sends, so that the close that follows
/// does not turn into a reset that destroys the response we just wrote.
async fn linger(stream: &mut TcpStream) {
    if let Err(e) = stream.shutdown().await {
        tracing::debug!(error = %e, "admin connection: shutdown failed");
        return;
    }
    let deadline = Instant::now() + LINGER_TIME;
    let mut discarded = 0;
    let mut buf = Vec::with_capacity(READ_CHUNK);
    while discarded < LINGER_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match monoio::time::timeout(left, stream.read(buf)).await {
            Ok((Ok(n), returned)) if n > 0 => {
                discarded += n;
                buf = returned;
            }
            _ => break,
        }
    }
}

/// The owned-request adapter: what the server needs of a head core parsed, copied out of
/// the read buffer (core's head is offsets into it) so the buffer can be drained and reused.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    /// Bytes of the head in the read buffer (leading empty lines included).
    head_len: usize,
    method: String,
    /// The path without the query, as sent; `/` for an absolute-form target without one.
    path: String,
    query: Option<String>,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    version: u8,
    /// Names lowercased, values as sent.
    headers: Vec<(String, Vec<u8>)>,
    body: BodyKind,
    keep_alive: bool,
    expect_continue: bool,
}

impl Head {
    fn from_parsed(parsed: &RequestHead, buf: &[u8]) -> Head {
        // Core admits only tokens in the method and field names and visible ASCII in the
        // target, so these conversions are lossless; `lossy` merely avoids a panic path.
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let path = match parsed.path(buf) {
            b"" => "/".to_owned(),
            path => text(path),
        };
        Head {
            head_len: parsed.head_len,
            method: text(parsed.method_bytes(buf)),
            path,
            query: parsed.query.map(|query| text(query.get(buf))),
            version: parsed.version_minor,
            headers: parsed
                .headers(buf)
                .map(|(name, value)| (text(name).to_ascii_lowercase(), value.to_vec()))
                .collect(),
            body: parsed.body,
            keep_alive: parsed.keep_alive,
            expect_continue: parsed.expect_continue,
        }
    }

    /// An `Expect` other than `100-continue`. Not a framing question, so not core's: we meet
    /// no other expectation, and RFC 9110 §10.1.1 lets a server say so with 417 rather than
    /// ignore it (the proxy, which answers no request itself, ignores it).
    fn unsupported_expectation(&self) -> bool {
        self.headers
            .iter()
            .filter(|(name, _)| name == "expect")
            .any(|(_, value)| !value.trim_ascii().eq_ignore_ascii_case(b"100-continue"))
    }

    fn into_request(self, body: Vec<u8>, peer: SocketAddr) -> Request {
        Request {
            method: self.method,
            path: self.path,
            query: self.query,
            headers: self.headers,
            body,
            peer,
        }
    }
}

/// How the request body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    /// Exact length, already checked against `max_body`.
    Length(usize),
    Chunked,
}

/// The body framing core decided, held to `max_body`: a Content-Length over it is refused
/// from the head alone, before any body byte is read (or `100 Continue` sent).
fn body_framing(body: BodyKind, max_body: usize) -> Result<Framing, Reject> {
    match body {
        BodyKind::None | BodyKind::Length(0) => Ok(Framing::None),
        BodyKind::Length(len) => match usize::try_from(len) {
            Ok(len) if len <= max_body => Ok(Framing::Length(len)),
            _ => Err(Reject::too_large(max_body)),
        },
        BodyKind::Chunked => Ok(Framing::Chunked),
        // Core only gives this for responses; never guess a request's length.
        BodyKind::CloseDelimited => Err(Reject::malformed("body without framing")),
    }
}

/// A chunked body being read: core's [`ChunkedScanner`] validates and de-chunks it; this
/// adds the server's limits on what it is willing to hold and to scan.
#[derive(Debug)]
struct ChunkedBody {
    scanner: ChunkedScanner,
    data: Vec<u8>,
    /// Body bytes consumed so far, framing included.
    consumed: usize,
    max_body: usize,
    max_framing: usize,
}

impl ChunkedBody {
    fn new(limits: ServerLimits) -> ChunkedBody {
        ChunkedBody {
            scanner: ChunkedScanner::default(),
            data: Vec::new(),
            consumed: 0,
            max_body: limits.max_body,
            max_framing: limits.max_body.saturating_add(limits.head.max_head),
        }
    }

    fn is_done(&self) -> bool {
        self.scanner.is_done()
    }

    fn into_data(self) -> Vec<u8> {
        self.data
    }

    /// Decodes from the start of `input`; returns how many bytes belong to the body. Stops
    /// at its end, leaving what follows (a pipelined request) unconsumed.
    fn decode(&mut self, input: &[u8]) -> Result<usize, Reject> {
        let scanned = self
            .scanner
            .decode(input, &mut self.data)
            .map_err(Reject::chunked)?;
        // `declared_len` counts a chunk from its size line, so a huge chunk is refused
        // before its data arrives; what was decoded meanwhile is at most one read.
        if self.scanner.declared_len() > self.max_body as u64 {
            return Err(Reject::too_large(self.max_body));
        }
        self.consumed = self.consumed.saturating_add(scanned.consumed);
        let framing = (self.consumed as u64).saturating_sub(self.scanner.data_len());
        if framing > self.max_framing as u64 {
            return Err(Reject::malformed("chunked framing overhead too large"));
        }
        Ok(scanned.consumed)
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn has_token(value: impl AsRef<[u8]>, token: &str) -> bool {
    value
        .as_ref()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectionHeader {
    Close,
    KeepAlive,
    Omit,
}

/// Serializes `response` for the wire. The server owns framing and connection headers;
/// handler headers that could smuggle a second response (CR/LF/NUL) are dropped.
fn encode_response(response: &Response, head_only: bool, connection: ConnectionHeader) -> Vec<u8> {
    let status = response.status;
    // RFC 9110: 204 and 304 carry neither body nor (for 204, must not) Content-Length.
    let bodiless = matches!(status, 204 | 304);
    let mut out = Vec::with_capacity(128 + response.body.len());
    out.extend_from_slice(format!("HTTP/1.1 {status} {}\r\n", reason(status)).as_bytes());
    for (name, value) in &response.headers {
        let owned = [
            "content-length",
            "transfer-encoding",
            "connection",
            "keep-alive",
        ]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h));
        if owned {
            continue;
        }
        if !is_token(name) || value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
            tracing::debug!(header = %name.escape_debug(), "admin response: unsafe header dropped");
            continue;
        }
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if !bodiless {
        out.extend_from_slice(format!("Content-Length: {}\r\n", response.body.len()).as_bytes());
    }
    match connection {
        ConnectionHeader::Close => out.extend_from_slice(b"Connection: close\r\n"),
        ConnectionHeader::KeepAlive => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        ConnectionHeader::Omit => {}
    }
    out.extend_from_slice(b"\r\n");
    if !bodiless && !head_only {
        out.extend_from_slice(&response.body);
    }
    out
}

fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn reason(status: u16) -> &'static str {
    shardgate_core::http1::reason_phrase(status)
}

/// `application/x-www-form-urlencoded`-style decoding: `%XX` escapes and `+` as space.
fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let escaped = match bytes.get(i + 1..i + 3) {
                    Some(&[hi, lo]) => hex_value(hi).zip(hex_value(lo)).map(|(h, l)| h * 16 + l),
                    _ => None,
                };
                if let Some(byte) = escaped {
                    out.push(byte);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

enum Either<L, R> {
    Left(L),
    Right(R),
}

/// Polls both futures (left first) and returns the first output; the other is dropped.
async fn race<L: Future, R: Future>(left: L, right: R) -> Either<L::Output, R::Output> {
    let mut left = pin!(left);
    let mut right = pin!(right);
    poll_fn(|cx| {
        if let Poll::Ready(value) = left.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(value));
        }
        if let Poll::Ready(value) = right.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(value));
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream as StdStream;
    use std::sync::mpsc;
    use std::thread;

    use super::*;

    /// Every client socket read/write gives up after this, so no test can hang.
    const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

    #[derive(Debug, Clone, Copy)]
    enum Driver {
        /// io_uring where the kernel allows it, epoll otherwise — what the admin thread uses.
        Fusion,
        /// epoll only, so that path is covered even where io_uring is available.
        Legacy,
    }

    /// `serve` with the echo handler on a monoio runtime on its own thread.
    struct TestServer {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        done: mpsc::Receiver<()>,
        thread: Option<thread::JoinHandle<()>>,
    }

    impl TestServer {
        fn start() -> TestServer {
            TestServer::with(ServerLimits::default(), Driver::Fusion)
        }

        fn with(limits: ServerLimits, driver: Driver) -> TestServer {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
            listener
                .set_nonblocking(true)
                .expect("nonblocking listener");
            let addr = listener.local_addr().expect("listener address");
            let stop = Arc::new(AtomicBool::new(false));
            let flag = Arc::clone(&stop);
            let (finished, done) = mpsc::channel();
            let thread = thread::spawn(move || {
                let server = async move {
                    let listener = TcpListener::from_std(listener).expect("register listener");
                    let shutdown = until_flag_set(flag, Duration::from_millis(10));
                    serve(listener, limits, echo, shutdown).await;
                };
                match driver {
                    Driver::Fusion => monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                        .enable_timer()
                        .build()
                        .expect("fusion runtime")
                        .block_on(server),
                    Driver::Legacy => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                        .enable_timer()
                        .build()
                        .expect("legacy runtime")
                        .block_on(server),
                }
                finished.send(()).expect("test thread waits for the server");
            });
            TestServer {
                addr,
                stop,
                done,
                thread: Some(thread),
            }
        }

        fn client(&self) -> Client {
            Client::connect(self.addr)
        }

        /// Raises the shutdown flag; true when `serve` returned within `within`.
        fn stop(&mut self, within: Duration) -> bool {
            self.stop.store(true, Ordering::Release);
            let stopped = self.done.recv_timeout(within).is_ok();
            if let (true, Some(thread)) = (stopped, self.thread.take()) {
                thread.join().expect("server thread exits cleanly");
            }
            stopped
        }
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            if self.thread.is_some() {
                self.stop(Duration::from_secs(10));
            }
        }
    }

    /// Echoes the request as JSON; `/panic` panics, `/empty` answers 204.
    fn echo(request: Request) -> Response {
        match request.path.as_str() {
            "/panic" => panic!("handler bug provoked by a test"),
            "/empty" => Response::empty(204),
            _ => Response::json(
                200,
                &serde_json::json!({
                    "method": request.method,
                    "path": request.path,
                    "query": request.query,
                    "name": request.query_param("name"),
                    "body": String::from_utf8_lossy(&request.body),
                }),
            ),
        }
    }

    /// A blocking client that writes raw bytes and parses raw responses.
    struct Client {
        reader: BufReader<StdStream>,
    }

    #[derive(Debug)]
    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).expect("body is JSON")
        }

        fn error(&self) -> String {
            self.json()["error"]
                .as_str()
                .expect("body is {\"error\": string}")
                .to_owned()
        }
    }

    impl Client {
        fn connect(addr: SocketAddr) -> Client {
            let stream = StdStream::connect(addr).expect("connect to test server");
            stream
                .set_read_timeout(Some(CLIENT_TIMEOUT))
                .expect("read timeout");
            stream
                .set_write_timeout(Some(CLIENT_TIMEOUT))
                .expect("write timeout");
            Client {
                reader: BufReader::new(stream),
            }
        }

        fn send(&mut self, bytes: impl AsRef<[u8]>) {
            self.reader
                .get_mut()
                .write_all(bytes.as_ref())
                .expect("send request bytes");
        }

        fn line(&mut self) -> String {
            let mut line = Vec::new();
            self.reader
                .read_until(b'\n', &mut line)
                .expect("read response line");
            String::from_utf8(line).expect("response head is UTF-8")
        }

        /// Status line and headers only (for HEAD, or before a body is due).
        fn reply_head(&mut self) -> Reply {
            let status_line = self.line();
            let status = status_line
                .strip_prefix("HTTP/1.1 ")
                .and_then(|rest| rest.get(..3))
                .and_then(|code| code.parse().ok())
                .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
            let mut headers = Vec::new();
            loop {
                let line = self.line();
                let line = line
                    .strip_suffix("\r\n")
                    .expect("header line ends with CRLF");
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').expect("header has a colon");
                headers.push((name.to_owned(), value.trim().to_owned()));
            }
            Reply {
                status,
                headers,
                body: Vec::new(),
            }
        }

        fn reply(&mut self) -> Reply {
            let mut reply = self.reply_head();
            let len: usize = reply
                .header("content-length")
                .map_or(0, |v| v.parse().expect("numeric Content-Length"));
            reply.body = vec![0; len];
            self.reader
                .read_exact(&mut reply.body)
                .expect("read response body");
            reply
        }

        /// True once the server closed its side (EOF or reset) within the read timeout.
        fn closed(&mut self) -> bool {
            let mut byte = [0u8; 1];
            match self.reader.read(&mut byte) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
            }
        }
    }

    fn post(path: &str, body: &str) -> String {
        format!(
            "POST {path} HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    const GET: &str = "GET / HTTP/1.1\r\nHost: admin\r\n\r\n";

    fn short_timeouts() -> ServerLimits {
        ServerLimits {
            header_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(200),
            ..ServerLimits::default()
        }
    }

    #[test]
    fn get_is_answered_with_json_content_type_and_content_length() {
        let server = TestServer::start();
        let mut client = server.client();
        client.send("GET /api/v1/version?name=a%20b HTTP/1.1\r\nHost: admin\r\n\r\n");
        let reply = client.reply();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(
            reply.header("content-length"),
            Some(reply.body.len().to_string().as_str())
        );
        assert_eq!(reply.header("connection"), None);
        let json = reply.json();
        assert_eq!(json["method"], "GET");
        assert_eq!(json["path"], "/api/v1/version");
        assert_eq!(json["query"], "name=a%20b");
        assert_eq!(json["name"], "a b");
    }

    #[test]
    fn post_body_is_delivered_by_content_length() {
        let server = TestServer::start();
        let mut client = server.client();
        client.send(post("/api/v1/gateways", r#"{"name":"a"}"#));
        let reply = client.reply();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["method"], "POST");
        assert_eq!(reply.json()["body"], r#"{"name":"a"}"#);
    }

    #[test]
    fn chunked_body_is_decoded_ignoring_extensions_and_trailers() {
        let server = TestServer::start();
        let mut client = server.client();
        client.send(
            "POST / HTTP/1.1\r\nHost: admin\r\nTransfer-Encoding: chunked\r\n\r\n\
             5;name=value\r\nhello\r\n7 ; x\r\n, world\r\n0\r\nX-Checksum: 1\r\n\r\n",
        );
        let reply = client.reply();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["body"], "hello, world");
        // The trailer section was consumed: the connection is ready for the next request.
        client.send(GET);
        assert_eq!(client.reply().status, 200);
    }

    #[test]
    fn expect_100_continue_gets_interim_response_before_body_is_sent() {
        let server = TestServer::start();
        let mut client = server.client();
        client.send(
            "POST / HTTP/1.1\r\nHost: admin\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        );
        assert_eq!(client.line(), "HTTP/1.1 100 Continue\r\n");
        assert_eq!(client.line(), "\r\n");
        client.send("hello");
        let reply = client.reply();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["body"], "hello");
    }

    #[test]
    fn content_length_over_limit_gets_413_instead_of_100_and_closes() {
        let server = TestServer::start();
        let mut client = server.client();
        // No body is sent: the answer must come from the head alone.
        client.send(
            "POST / HTTP/1.1\r\nHost: admin\r\nContent-Length: 2000000\r\n\
             Expect: 100-continue\r\n\r\n",
        );
        let reply = client.reply();
        assert_eq!(reply.status, 413);
        assert_eq!(
            reply.body,
            br#"{"error":"request body exceeds 1048576 bytes"}"#
        );
        assert_eq!(reply.header("connection"), Some("close"));
        assert!(client.closed());
    }

    #[test]
    fn chunked_body_gets_413_as_soon_as_total_exceeds_limit_and_closes() {
        let server = TestServer::start();
        let mut client = server.client();
        let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
        // 17 × 64 KiB = 1 MiB + 64 KiB, and no terminating chunk: the server must not wait.
        let mut request =
            b"POST / HTTP/1.1\r\nHost: admin\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..17 {
            request.extend_from_slice(chunk.as_bytes());
        }
        client.send(request);
        let reply = client.reply();
        assert_eq!(reply.status, 413);
        assert_eq!(reply.error(), "request body exceeds 1048576 bytes");
        assert_eq!(reply.header("connection"), Some("close"));
        assert!(client.closed());
    }

    #[test]
    fn chunk_declaring_more_than_limit_gets_413_before_its_data() {
        let server = TestServer::start();
        let mut client = server.client();
        client.send(
            "POST / HTTP/1.1\r\nHost: admin\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFF\r\n",
        );
        assert_eq!(client.reply().status, 413);
        assert!(client.closed());
    }

    #[test]
    fn content_length_with_transfer_encoding_is_rejected_with_400_and_closes() {
        let server = TestServer::start();
        let mut client = server.client();
        client.send(
            "POST / HTTP/1.1\r\nHost: admin\r\nContent-Length: 5\r\n\
             Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        );
        let reply = client.reply();
        assert_eq!(reply.status, 400);
        assert!(
            reply.error().starts_with("malformed request: "),
            "{reply:?}"
        );
        assert_eq!(reply.header("connection"), Some("close"));
        assert!(client.closed());
    }

    #[test]
    fn conflicting_duplicate_content_lengths_are_rejected_with_400() {
        let server = TestServer::start();
        let mut client = server.client();
        client.send(
            "POST / HTTP/1.1\r\nHost: admin\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n\
             hello!",
        );
        let reply = client.reply();
        assert_eq!(reply.status, 400);
        assert_eq!(
            reply.error(),
            "malformed request: conflicting Content-Length values"
        );
        assert!(client.closed());
    }

    #[test]
    fn identical_duplicate_content_lengths_are_accepted() {
        let server = TestServer::start();
        let mut client = server.client();
        client.send(
            "POST / HTTP/1.1\r\nHost: admin\r\nContent-Length: 5\r\nContent-Length: 5, 5\r\n\r\n\
             hello",
        );
        let reply = client.reply();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["body"], "hello");
    }

    #[test]
    fn non_numeric_content_length_is_rejected_with_400() {
        for value in ["5x", "-1", "+5", ""] {
            let server = TestServer::start();
            let mut client = server.client();
            client.send(format!(
                "POST / HTTP/1.1\r\nHost: admin\r\nContent-Length: {value}\r\n\r\nhello"
            ));
            let reply = client.reply();
            assert_eq!(reply.status, 400, "Content-Length {value:?}");
            assert!(client.closed());
        }
    }

    #[test]
    fn unsupported_transfer_coding_is_rejected_with_501() {
        let server = TestServer::start();
        let mut client = server.client();
        client.send(
            "POST / HTTP/1.1\r\nHost: admin\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        );
        assert_eq!(client.reply().status, 501);
        assert!(client.closed());
    }

    #[test]
    fn transfer_encoding_not_ending_in_chunked_is_rejected_with_400() {
        let server = TestServer::start();
        let mut client = server.client();
        client.send("POST / HTTP/1.1\r\nHost: admin\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
        assert_eq!(client.reply().status, 400);
        assert!(client.closed());
    }

    #[test]
    fn pipelined_requests_are_answered_in_order() {
        let server = TestServer::start();
        let mut client = server.client();
        let mut bytes = String::from("GET /first HTTP/1.1\r\nHost: admin\r\n\r\n");
        bytes.push_str(&post("/second", "two"));
        bytes.push_str(
            "POST /third HTTP/1.1\r\nHost: admin\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nthree\r\n0\r\n\r\n",
        );
        bytes.push_str("GET /fourth HTTP/1.1\r\nHost: admin\r\n\r\n");
        client.send(bytes);
        for (path, body) in [
            ("/first", ""),
            ("/second", "two"),
            ("/third", "three"),
            ("/fourth", ""),
        ] {
            let reply = client.reply();
            assert_eq!(reply.status, 200);
            assert_eq!(reply.json()["path"], path);
            assert_eq!(reply.json()["body"], body);
        }
    }

    #[test]
    fn epoll_driver_answers_pipelined_requests_in_order() {
        let server = TestServer::with(ServerLimits::default(), Driver::Legacy);
        let mut client = server.client();
        client.send(format!(
            "GET /first HTTP/1.1\r\nHost: admin\r\n\r\n{}",
            post("/second", "two")
        ));
        assert_eq!(client.reply().json()["path"], "/first");
        assert_eq!(client.reply().json()["body"], "two");
    }

    #[test]
    fn keep_alive_connection_is_reused_for_several_requests() {
        let server = TestServer::start();
        let mut client = server.client();
        for i in 0..3 {
            client.send(post("/", &format!("request {i}")));
            let reply = client.reply();
            assert_eq!(reply.status, 200);
            assert_eq!(reply.json()["body"], format!("request {i}"));
            assert_eq!(reply.header("connection"), None);
        }
    }

    #[test]
    fn connection_close_is_honored_and_socket_is_closed() {
        let server = TestServer::start();
        let mut client = server.client();
        client.send("GET / HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        let reply = client.reply();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("connection"), Some("close"));
        assert!(client.closed());
    }

    #[test]
    fn http10_closes_unless_keep_alive_is_requested() {
        let server = TestServer::start();
        let mut plain = server.client();
        plain.send("GET / HTTP/1.0\r\n\r\n");
        let reply = plain.reply();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("connection"), Some("close"));
        assert!(plain.closed());

        let mut keep = server.client();
        for _ in 0..2 {
            keep.send("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
            let reply = keep.reply();
            assert_eq!(reply.status, 200);
            assert_eq!(reply.header("connection"), Some("keep-alive"));
        }
    }

    #[test]
    fn head_bigger_than_max_head_is_rejected_with_431() {
        let server = TestServer::start();
        let mut client = server.client();
        client.send(format!(
            "GET / HTTP/1.1\r\nHost: admin\r\nX-Big: {}\r\n\r\n",
            "a".repeat(20_000)
        ));
        let reply = client.reply();
        assert_eq!(reply.status, 431);
        assert_eq!(reply.error(), "request head exceeds 16384 bytes");
        assert!(client.closed());
    }

    #[test]
    fn more_than_100_headers_are_rejected_with_431() {
        let server = TestServer::start();
        let mut client = server.client();
        // Host plus 100 more: one over core's (and the proxy's) field limit.
        let headers: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
        client.send(format!("GET / HTTP/1.1\r\nHost: admin\r\n{headers}\r\n"));
        let reply = client.reply();
        assert_eq!(reply.status, 431);
        assert_eq!(reply.error(), "too many header fields (at most 100)");
        assert!(client.closed());
    }

    #[test]
    fn smuggling_shapes_core_refuses_get_its_status_as_json_and_close() {
        // The admin-only view of the table in tests/tests/malformed_heads.rs: what the old
        // hand-written parser let through now gets core's answer.
        for (raw, status, error) in [
            (
                &b"GET / HTTP/1.1\nHost: admin\n\n"[..],
                400,
                "malformed request: bare LF where CRLF is required",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: admin\r\nHost: other\r\n\r\n",
                400,
                "malformed request: multiple Host headers",
            ),
            (
                b"GET / HTTP/1.1\r\n\r\n",
                400,
                "malformed request: missing Host header",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: admin\r\nX-A: a\r\n b\r\n\r\n",
                400,
                "malformed request: obsolete line folding is not allowed",
            ),
            (
                b"GET / HTTP/1.2\r\nHost: admin\r\n\r\n",
                505,
                "HTTP version not supported",
            ),
        ] {
            let server = TestServer::start();
            let mut client = server.client();
            client.send(raw);
            let reply = client.reply();
            let shape = String::from_utf8_lossy(raw);
            assert_eq!(
                (reply.status, reply.error().as_str()),
                (status, error),
                "{shape:?}"
            );
            assert_eq!(reply.header("connection"), Some("close"), "{shape:?}");
            assert!(client.closed(), "{shape:?}");
        }
    }

    #[test]
    fn connect_is_405_with_allow() {
        let server = TestServer::start();
        let mut client = server.client();
        client.send("CONNECT admin:443 HTTP/1.1\r\nHost: admin:443\r\n\r\n");
        let reply = client.reply();
        assert_eq!(reply.status, 405);
        assert_eq!(reply.header("allow"), Some("GET, HEAD, POST, PUT, DELETE"));
        assert!(client.closed());
    }

    #[test]
    fn expectation_other_than_100_continue_is_417() {
        let server = TestServer::start();
        let mut client = server.client();
        client
            .send("POST / HTTP/1.1\r\nHost: admin\r\nContent-Length: 5\r\nExpect: 200-ok\r\n\r\n");
        let reply = client.reply();
        assert_eq!(reply.status, 417);
        assert!(client.closed());
    }

    #[test]
    fn uri_longer_than_8_kib_is_rejected_with_414() {
        let server = TestServer::start();
        let mut client = server.client();
        client.send(format!(
            "GET /{} HTTP/1.1\r\nHost: admin\r\n\r\n",
            "a".repeat(9_000)
        ));
        assert_eq!(client.reply().status, 414);
        assert!(client.closed());
    }

    #[test]
    fn malformed_head_is_rejected_with_400_and_closes() {
        let server = TestServer::start();
        let mut client = server.client();
        client.send("GET / HTTP/1.1\r\nHost: admin\r\nno colon here\r\n\r\n");
        let reply = client.reply();
        assert_eq!(reply.status, 400);
        assert!(
            reply.error().starts_with("malformed request: "),
            "{reply:?}"
        );
        assert_eq!(reply.header("connection"), Some("close"));
        assert!(client.closed());
    }

    #[test]
    fn head_request_gets_headers_with_length_but_no_body() {
        let server = TestServer::start();
        let mut client = server.client();
        client.send("HEAD / HTTP/1.1\r\nHost: admin\r\n\r\n");
        let reply = client.reply_head();
        assert_eq!(reply.status, 200);
        let len: usize = reply
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .expect("HEAD reply carries the GET length");
        assert!(len > 0);
        // Were body bytes sent, they would be read here instead of the next status line.
        client.send(GET);
        assert_eq!(client.reply().status, 200);
    }

    #[test]
    fn no_content_response_has_neither_body_nor_length() {
        let server = TestServer::start();
        let mut client = server.client();
        client.send("DELETE /empty HTTP/1.1\r\nHost: admin\r\n\r\n");
        let reply = client.reply_head();
        assert_eq!(reply.status, 204);
        assert_eq!(reply.header("content-length"), None);
        client.send(GET);
        assert_eq!(client.reply().status, 200);
    }

    #[test]
    fn incomplete_head_past_header_timeout_gets_408_and_closes() {
        let server = TestServer::with(short_timeouts(), Driver::Fusion);
        let mut client = server.client();
        client.send("GET / HTTP/1.1\r\nHost: adm");
        let reply = client.reply();
        assert_eq!(reply.status, 408);
        assert!(client.closed());
    }

    #[test]
    fn idle_keep_alive_connection_is_closed_after_idle_timeout() {
        let server = TestServer::with(short_timeouts(), Driver::Fusion);
        let mut client = server.client();
        client.send(GET);
        assert_eq!(client.reply().status, 200);
        let idle_since = Instant::now();
        assert!(client.closed());
        assert!(idle_since.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn epoll_driver_enforces_idle_timeout() {
        let server = TestServer::with(short_timeouts(), Driver::Legacy);
        let mut client = server.client();
        client.send(GET);
        assert_eq!(client.reply().status, 200);
        assert!(client.closed());
    }

    #[test]
    fn panicking_handler_gets_500_and_connection_keeps_serving() {
        let server = TestServer::start();
        let mut client = server.client();
        client.send("GET /panic HTTP/1.1\r\nHost: admin\r\n\r\n");
        let reply = client.reply();
        assert_eq!(reply.status, 500);
        assert_eq!(reply.error(), "internal error");
        client.send(GET);
        assert_eq!(client.reply().status, 200);
    }

    #[test]
    fn shutdown_stops_accepting_and_closes_idle_connections() {
        let mut server = TestServer::start();
        let mut client = server.client();
        client.send(GET);
        assert_eq!(client.reply().status, 200);
        assert!(server.stop(Duration::from_secs(3)), "serve returned");
        assert!(client.closed());
        assert!(StdStream::connect(server.addr).is_err());
    }

    fn request(query: Option<&str>) -> Request {
        Request {
            method: "GET".to_owned(),
            path: "/".to_owned(),
            query: query.map(str::to_owned),
            headers: vec![("x-token".to_owned(), b"secret".to_vec())],
            body: Vec::new(),
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
        }
    }

    #[test]
    fn query_param_is_percent_decoded() {
        let req = request(Some("name=a%2Fb+c&flag&bad=%zz%4&limit=10&limit=20"));
        assert_eq!(req.query_param("name").as_deref(), Some("a/b c"));
        assert_eq!(req.query_param("flag").as_deref(), Some(""));
        assert_eq!(req.query_param("bad").as_deref(), Some("%zz%4"));
        assert_eq!(req.query_param("limit").as_deref(), Some("10"));
        assert_eq!(req.query_param("missing"), None);
        assert_eq!(request(None).query_param("name"), None);
    }

    #[test]
    fn header_lookup_is_case_insensitive() {
        let req = request(None);
        assert_eq!(req.header("X-Token"), Some(&b"secret"[..]));
        assert_eq!(req.header("authorization"), None);
    }

    #[test]
    fn with_header_replaces_header_of_same_name() {
        let resp = Response::json(201, &serde_json::json!({}))
            .with_header("content-type", "application/problem+json")
            .with_header("Location", "/api/v1/gateways/1");
        assert_eq!(
            resp.headers,
            vec![
                (
                    "content-type".to_owned(),
                    "application/problem+json".to_owned()
                ),
                ("Location".to_owned(), "/api/v1/gateways/1".to_owned()),
            ]
        );
    }

    #[test]
    fn error_response_is_a_json_error_object() {
        let resp = Response::error(404, "gateway \"x\" not found");
        assert_eq!(resp.status, 404);
        assert_eq!(
            resp.headers,
            vec![("Content-Type".to_owned(), JSON.to_owned())]
        );
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&resp.body).expect("JSON"),
            serde_json::json!({ "error": "gateway \"x\" not found" })
        );
    }

    #[test]
    fn encoded_response_drops_splitting_headers_and_owns_framing() {
        let resp = Response::bytes(200, "text/plain", b"ok".to_vec())
            .with_header("X-Evil", "a\r\nSet-Cookie: stolen=1")
            .with_header("Content-Length", "999")
            .with_header("Bad Name", "v");
        let wire = encode_response(&resp, false, ConnectionHeader::Close);
        assert_eq!(
            String::from_utf8(wire).expect("ASCII"),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\
             Connection: close\r\n\r\nok"
        );
    }

    /// Feeds `wire` to the server's chunked reader `step` bytes at a time, as it is with
    /// reads; returns the body and what followed it.
    fn decode_in_steps(
        wire: &[u8],
        step: usize,
        limits: ServerLimits,
    ) -> Result<(Vec<u8>, Vec<u8>), Reject> {
        let mut body = ChunkedBody::new(limits);
        let mut pending = Vec::new();
        let mut input = wire.chunks(step);
        while !body.is_done() {
            let Some(piece) = input.next() else {
                return Err(Reject::new(0, "ran out of input"));
            };
            pending.extend_from_slice(piece);
            let consumed = body.decode(&pending)?;
            pending.drain(..consumed);
        }
        pending.extend(input.flatten());
        Ok((body.into_data(), pending))
    }

    #[test]
    fn chunked_body_is_the_same_whatever_the_read_boundaries() {
        let wire = b"4\r\nWiki\r\n6;a=b\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nT: 1\r\n\r\nGET /next";
        for step in 1..wire.len() {
            let (body, rest) =
                decode_in_steps(wire, step, ServerLimits::default()).expect("valid chunked body");
            assert_eq!(body, b"Wikipedia in \r\n\r\nchunks.", "step {step}");
            assert_eq!(rest, b"GET /next", "step {step}");
        }
    }

    #[test]
    fn bad_chunked_framing_is_rejected_with_core_reason_and_400() {
        for (wire, reason) in [
            (
                &b"5\r\nhelloX\r\n0\r\n\r\n"[..],
                "chunked body: CRLF required",
            ),
            (b"g\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
            (b"5\nhello\r\n0\r\n\r\n", "chunked body: CRLF required"),
            (b"5 x\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
            (b"\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
            (b"0x5\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
            (b"0\r\nX : a\r\n\r\n", "invalid trailer field"),
        ] {
            let rejected = decode_in_steps(wire, wire.len(), ServerLimits::default())
                .expect_err("bad framing");
            assert_eq!(
                (rejected.status, rejected.message.as_str()),
                (400, format!("malformed request: {reason}").as_str()),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn chunked_body_is_held_to_max_body_from_the_size_line() {
        let limits = ServerLimits {
            max_body: 8,
            ..ServerLimits::default()
        };
        // Exactly the limit is fine.
        let (body, _) =
            decode_in_steps(b"8\r\n12345678\r\n0\r\n\r\n", 1, limits).expect("body at the limit");
        assert_eq!(body, b"12345678");
        // A size line declaring more is refused before any of its data.
        let rejected = decode_in_steps(b"9\r\n", 3, limits).expect_err("over the limit");
        assert_eq!(rejected, Reject::too_large(8));
        // So is a total over the limit spread across chunks.
        let rejected =
            decode_in_steps(b"5\r\n12345\r\n4\r\n", 64, limits).expect_err("over in total");
        assert_eq!(rejected.status, 413);
    }

    #[test]
    fn chunked_framing_beyond_max_body_plus_max_head_is_400() {
        let limits = ServerLimits {
            max_body: 1024,
            head: http1::Limits {
                max_head: 1024,
                ..http1::Limits::default()
            },
            ..ServerLimits::default()
        };
        // One-byte chunks with long extensions: little data, endless framing.
        let chunk = format!("1;{}\r\nx\r\n", "e".repeat(100));
        let wire = chunk.repeat(30);
        let rejected =
            decode_in_steps(wire.as_bytes(), wire.len(), limits).expect_err("framing bound");
        assert_eq!(
            rejected,
            Reject::malformed("chunked framing overhead too large")
        );
    }

    /// The owned head the adapter makes of what core parses from `raw`.
    fn adapted(raw: &[u8]) -> Head {
        match http1::parse_request(raw, &http1::Limits::default()) {
            Ok(Parse::Complete(parsed)) => Head::from_parsed(&parsed, raw),
            other => panic!("{:?} should parse: {other:?}", String::from_utf8_lossy(raw)),
        }
    }

    #[test]
    fn adapter_copies_method_path_query_version_and_lowercased_headers() {
        let raw = b"POST /api/v1/gateways?limit=5&offset=0 HTTP/1.1\r\nHost: admin\r\n\
                    Content-Type: application/json\r\nX-Admin-Token: Secret\r\n\
                    Content-Length: 2\r\n\r\n{}";
        let head = adapted(raw);
        assert_eq!(head.head_len, raw.len() - 2);
        assert_eq!(head.method, "POST");
        assert_eq!(head.path, "/api/v1/gateways");
        assert_eq!(head.query.as_deref(), Some("limit=5&offset=0"));
        assert_eq!(head.version, 1);
        assert_eq!(head.body, BodyKind::Length(2));
        assert!(head.keep_alive && !head.expect_continue);
        let request = head.into_request(b"{}".to_vec(), SocketAddr::from(([127, 0, 0, 1], 9)));
        assert_eq!(
            request.headers,
            vec![
                ("host".to_owned(), b"admin".to_vec()),
                ("content-type".to_owned(), b"application/json".to_vec()),
                ("x-admin-token".to_owned(), b"Secret".to_vec()),
                ("content-length".to_owned(), b"2".to_vec()),
            ]
        );
        assert_eq!(request.header("X-Admin-Token"), Some(&b"Secret"[..]));
        assert_eq!(request.body, b"{}");
    }

    #[test]
    fn absolute_form_target_is_reduced_to_path_and_query() {
        let head = adapted(
            b"GET http://admin:8080/api/v1/gateways?limit=5 HTTP/1.1\r\nHost: admin\r\n\r\n",
        );
        assert_eq!(head.path, "/api/v1/gateways");
        assert_eq!(head.query.as_deref(), Some("limit=5"));
        let head = adapted(b"GET HTTP://admin HTTP/1.1\r\nHost: admin\r\n\r\n");
        assert_eq!((head.path.as_str(), head.query), ("/", None));
        let head = adapted(b"GET /health? HTTP/1.1\r\nHost: admin\r\n\r\n");
        assert_eq!(
            (head.path.as_str(), head.query.as_deref()),
            ("/health", Some(""))
        );
    }

    #[test]
    fn empty_lines_before_request_line_are_ignored() {
        let head = adapted(b"\r\n\r\nGET / HTTP/1.1\r\nHost: admin\r\n\r\n");
        assert_eq!((head.method.as_str(), head.path.as_str()), ("GET", "/"));
        assert_eq!(head.head_len, 35);
    }

    #[test]
    fn http10_keep_alive_and_expectations_come_from_the_head() {
        let head =
            adapted(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nExpect: 100-continue\r\n\r\n");
        assert_eq!(head.version, 0);
        assert!(head.keep_alive);
        // RFC 9110 §10.1.1: no 100 Continue for an HTTP/1.0 client.
        assert!(!head.expect_continue && !head.unsupported_expectation());
        let head = adapted(
            b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        );
        assert!(head.expect_continue && !head.keep_alive);
        assert!(
            adapted(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: later\r\n\r\n")
                .unsupported_expectation()
        );
    }

    #[test]
    fn body_framing_refuses_a_length_over_max_body_from_the_head() {
        assert_eq!(body_framing(BodyKind::None, 10), Ok(Framing::None));
        assert_eq!(body_framing(BodyKind::Length(0), 10), Ok(Framing::None));
        assert_eq!(
            body_framing(BodyKind::Length(10), 10),
            Ok(Framing::Length(10))
        );
        assert_eq!(
            body_framing(BodyKind::Length(11), 10),
            Err(Reject::too_large(10))
        );
        assert_eq!(
            body_framing(BodyKind::Length(u64::MAX), 10),
            Err(Reject::too_large(10))
        );
        assert_eq!(body_framing(BodyKind::Chunked, 10), Ok(Framing::Chunked));
    }

    #[test]
    fn head_errors_keep_core_status_and_name_the_limit() {
        let limits = http1::Limits::default();
        for (e, status, message) in [
            (
                HeadError::BareLf,
                400,
                "malformed request: bare LF where CRLF is required",
            ),
            (
                HeadError::UriTooLong,
                414,
                "request target exceeds 8192 bytes",
            ),
            (
                HeadError::HeadTooLarge,
                431,
                "request head exceeds 16384 bytes",
            ),
            (
                HeadError::UnsupportedTransferCoding,
                501,
                "unsupported transfer coding",
            ),
            (
                HeadError::UnsupportedVersion,
                505,
                "HTTP version not supported",
            ),
        ] {
            let reject = Reject::head(e, &limits);
            assert_eq!((reject.status, reject.message.as_str()), (status, message));
            assert_eq!(reject.status, e.status());
            assert_eq!(reject.allow, None);
        }
        assert!(
            Reject::head(HeadError::ConnectUnsupported, &limits)
                .allow
                .is_some()
        );
    }
}
