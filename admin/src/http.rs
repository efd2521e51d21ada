//! The admin REST API's HTTP/1.1 server: one accept loop and one task per connection on the
//! admin thread's monoio runtime, handing each complete request to a synchronous handler.
//!
//! Lifecycle of a connection: wait for a request (idle timeout) → read the head (header
//! timeout, size limits) → decide the body framing (Content-Length or chunked, limit checked
//! before reading) → send `100 Continue` if asked → read the body → call the handler → write
//! the response → loop for keep-alive, or half-close and drain the socket briefly so the
//! client reads the final response instead of a reset.
//!
//! What it deliberately does not do: it is not the data-plane proxy (that lives in `proxy/`,
//! with its own parser tuned for throughput); no TLS, HTTP/2, upgrades, response streaming or
//! compression; it never percent-decodes the path (routes see the raw target, ids are UUIDs);
//! and it never runs two handler calls at once — the admin thread serializes all mutations.

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

/// httparse parses at most this many header fields; more is answered with 431.
const MAX_HEADERS: usize = 64;
/// Longest request target accepted; longer is answered with 414.
const MAX_URI_LEN: usize = 8 * 1024;
/// Room for method, spaces and version around the target on the request line, used to
/// answer 414 before a huge request line has even ended.
const REQUEST_LINE_OVERHEAD: usize = 64;
/// Bytes asked of the kernel per read.
const READ_CHUNK: usize = 16 * 1024;
/// Longest chunk-size line (size plus ignored extensions) in a chunked body.
const MAX_CHUNK_LINE: usize = 4 * 1024;
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
    /// bodies get 413 and the connection is closed.
    pub max_body: usize,
    /// Largest request head (request line plus headers). Default 16 KiB, like common
    /// proxies; larger gets 431. Trailers of a chunked body share this limit.
    pub max_head: usize,
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
            max_head: 16 * 1024,
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
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reject {
    status: u16,
    message: String,
}

impl Reject {
    fn new(status: u16, message: impl Into<String>) -> Reject {
        Reject {
            status,
            message: message.into(),
        }
    }

    fn malformed(detail: impl Display) -> Reject {
        Reject::new(400, format!("malformed request: {detail}"))
    }

    fn too_large(max_body: usize) -> Reject {
        Reject::new(413, format!("request body exceeds {max_body} bytes"))
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
            let (head, head_len) = loop {
                match parse_head(&buf, limits.max_head) {
                    HeadStatus::Complete(head, len) => break (head, len),
                    HeadStatus::Reject(reject) => return self.reject(reject).await,
                    HeadStatus::Partial => {
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
            buf.drain(..head_len);

            let framing = match body_framing(&head, limits.max_body) {
                Ok(framing) => framing,
                Err(reject) => return self.reject(reject).await,
            };
            let wants_continue = match expects_continue(&head) {
                Ok(wants) => wants,
                Err(reject) => return self.reject(reject).await,
            };
            // The client may have sent the body without waiting; then 100 is pointless.
            if wants_continue && framing != Framing::None && buf.is_empty() {
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
                    let mut decoder = ChunkedDecoder::new(limits);
                    loop {
                        match decoder.feed(&buf) {
                            Ok(consumed) => {
                                buf.drain(..consumed);
                            }
                            Err(reject) => return self.reject(reject).await,
                        }
                        if decoder.is_done() {
                            break decoder.into_body();
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
            let mut keep_alive = head.keep_alive() && !self.slot.is_draining();
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
        let response = Response::error(reject.status, &reject.message);
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

/// The parts of a request head the server needs, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    method: String,
    /// The request target as sent.
    target: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    version: u8,
    headers: Vec<(String, Vec<u8>)>,
}

impl Head {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    fn keep_alive(&self) -> bool {
        let mut tokens = self.values("connection");
        if self.version == 0 {
            tokens.any(|v| has_token(v, "keep-alive"))
        } else {
            !tokens.any(|v| has_token(v, "close"))
        }
    }

    fn into_request(self, body: Vec<u8>, peer: SocketAddr) -> Request {
        let (path, query) = split_target(&self.target);
        Request {
            method: self.method,
            path,
            query,
            headers: self.headers,
            body,
            peer,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum HeadStatus {
    Partial,
    Complete(Head, usize),
    Reject(Reject),
}

fn parse_head(buf: &[u8], max_head: usize) -> HeadStatus {
    // Judge the request line first, so an over-long target is answered with 414 rather
    // than 431 or "malformed".
    let start = buf
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(buf.len());
    let line = &buf[start..];
    match line.iter().position(|&b| b == b'\n') {
        Some(end) => {
            let target_len = line[..end]
                .split(|&b| b == b' ')
                .nth(1)
                .map_or(0, <[u8]>::len);
            if target_len > MAX_URI_LEN {
                return HeadStatus::Reject(uri_too_long());
            }
        }
        None if line.len() > MAX_URI_LEN + REQUEST_LINE_OVERHEAD => {
            return HeadStatus::Reject(uri_too_long());
        }
        None => {}
    }

    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut fields);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len > max_head => {
            HeadStatus::Reject(head_too_large(max_head))
        }
        Ok(httparse::Status::Complete(len)) => {
            let (Some(method), Some(target), Some(version)) =
                (request.method, request.path, request.version)
            else {
                return HeadStatus::Reject(Reject::malformed("incomplete request line"));
            };
            let headers = request
                .headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                .collect();
            let head = Head {
                method: method.to_owned(),
                target: target.to_owned(),
                version,
                headers,
            };
            HeadStatus::Complete(head, len)
        }
        Ok(httparse::Status::Partial) if buf.len() >= max_head => {
            HeadStatus::Reject(head_too_large(max_head))
        }
        Ok(httparse::Status::Partial) => HeadStatus::Partial,
        Err(httparse::Error::TooManyHeaders) => HeadStatus::Reject(Reject::new(
            431,
            format!("too many header fields (at most {MAX_HEADERS})"),
        )),
        Err(e) => HeadStatus::Reject(Reject::malformed(e)),
    }
}

fn uri_too_long() -> Reject {
    Reject::new(414, format!("request target exceeds {MAX_URI_LEN} bytes"))
}

fn head_too_large(max_head: usize) -> Reject {
    Reject::new(431, format!("request head exceeds {max_head} bytes"))
}

/// `(path, query)` of a request target; an absolute-form target is reduced to its path.
fn split_target(target: &str) -> (String, Option<String>) {
    let mut origin = target;
    for scheme in ["http://", "https://"] {
        if target
            .get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
        {
            let rest = &target[scheme.len()..];
            origin = rest.find(['/', '?']).map_or("", |i| &rest[i..]);
        }
    }
    let (path, query) = match origin.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (origin, None),
    };
    let path = if path.is_empty() { "/" } else { path };
    (path.to_owned(), query)
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    /// Exact length, already checked against `max_body`.
    Length(usize),
    Chunked,
}

/// Decides the body framing per RFC 9112 §6, refusing anything ambiguous: a request that
/// two parsers could delimit differently is not worth guessing about.
fn body_framing(head: &Head, max_body: usize) -> Result<Framing, Reject> {
    let has_length = head.values("content-length").next().is_some();
    let codings: Vec<String> = head
        .values("transfer-encoding")
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|c| String::from_utf8_lossy(c.trim_ascii()).to_ascii_lowercase())
        .filter(|c| !c.is_empty())
        .collect();
    let has_te = head.values("transfer-encoding").next().is_some();

    if has_te {
        if has_length {
            return Err(Reject::malformed(
                "both Content-Length and Transfer-Encoding present",
            ));
        }
        if head.version == 0 {
            return Err(Reject::malformed(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        return match codings.as_slice() {
            [only] if only == "chunked" => Ok(Framing::Chunked),
            [.., last] if last == "chunked" => {
                if codings.iter().filter(|c| *c == "chunked").count() > 1 {
                    Err(Reject::malformed("chunked applied more than once"))
                } else {
                    Err(Reject::new(
                        501,
                        format!("unsupported transfer coding: {}", codings.join(", ")),
                    ))
                }
            }
            _ => Err(Reject::malformed("Transfer-Encoding must end with chunked")),
        };
    }

    if !has_length {
        return Ok(Framing::None);
    }
    // Identical repeats ("5, 5" or two equal fields) are tolerated, as RFC 9110 allows.
    let mut length: Option<Option<usize>> = None;
    for value in head
        .values("content-length")
        .flat_map(|v| v.split(|&b| b == b','))
    {
        let parsed = parse_content_length(value.trim_ascii())?;
        match length {
            Some(seen) if seen != parsed => {
                return Err(Reject::malformed("conflicting Content-Length values"));
            }
            _ => length = Some(parsed),
        }
    }
    match length.flatten() {
        Some(len) if len <= max_body => Ok(if len == 0 {
            Framing::None
        } else {
            Framing::Length(len)
        }),
        _ => Err(Reject::too_large(max_body)),
    }
}

/// `Ok(None)` for a well-formed length too big for `usize`: certainly over any limit.
fn parse_content_length(value: &[u8]) -> Result<Option<usize>, Reject> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(Reject::malformed(format!(
            "invalid Content-Length {:?}",
            String::from_utf8_lossy(value)
        )));
    }
    Ok(value.iter().try_fold(0usize, |acc, &d| {
        acc.checked_mul(10)?.checked_add(usize::from(d - b'0'))
    }))
}

/// Whether the client waits for `100 Continue`; other expectations are refused with 417.
fn expects_continue(head: &Head) -> Result<bool, Reject> {
    let mut wants = false;
    for value in head.values("expect") {
        if value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
            wants = true;
        } else {
            return Err(Reject::new(417, "only Expect: 100-continue is supported"));
        }
    }
    // RFC 9110 §10.1.1: never send 100 to an HTTP/1.0 client.
    Ok(wants && head.version == 1)
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

/// Incremental decoder for `Transfer-Encoding: chunked`: fed whatever bytes arrived, it
/// consumes what it can and keeps its place, so a body is never re-scanned.
#[derive(Debug)]
struct ChunkedDecoder {
    state: ChunkState,
    body: Vec<u8>,
    max_body: usize,
    max_trailers: usize,
    /// Bytes of size lines so far, capped so that a client cannot stream endless framing
    /// (tiny chunks with long extensions) around a small body.
    framing: usize,
    trailers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(usize),
    DataEnd,
    Trailers,
    Done,
}

impl ChunkedDecoder {
    fn new(limits: ServerLimits) -> ChunkedDecoder {
        ChunkedDecoder {
            state: ChunkState::Size,
            body: Vec::new(),
            max_body: limits.max_body,
            max_trailers: limits.max_head,
            framing: 0,
            trailers: 0,
        }
    }

    fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// Decodes from the start of `input`; returns how many bytes were consumed. Stops at
    /// the end of the body, leaving what follows (a pipelined request) unconsumed.
    fn feed(&mut self, input: &[u8]) -> Result<usize, Reject> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            match self.state {
                ChunkState::Done => return Ok(pos),
                ChunkState::Size => {
                    let Some((line, used)) = take_line(rest, MAX_CHUNK_LINE)? else {
                        return Ok(pos);
                    };
                    self.framing += used;
                    if self.framing > self.max_body.saturating_add(MAX_CHUNK_LINE) {
                        return Err(Reject::malformed("chunked framing overhead too large"));
                    }
                    let size = parse_chunk_size(line, self.max_body)?;
                    if size > self.max_body - self.body.len() {
                        return Err(Reject::too_large(self.max_body));
                    }
                    pos += used;
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(remaining) => {
                    if rest.is_empty() {
                        return Ok(pos);
                    }
                    let take = remaining.min(rest.len());
                    self.body.extend_from_slice(&rest[..take]);
                    pos += take;
                    self.state = match remaining - take {
                        0 => ChunkState::DataEnd,
                        left => ChunkState::Data(left),
                    };
                }
                ChunkState::DataEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        pos += 2;
                        self.state = ChunkState::Size;
                    }
                    [] | [b'\r'] => return Ok(pos),
                    _ => return Err(Reject::malformed("missing CRLF after chunk data")),
                },
                ChunkState::Trailers => {
                    let Some((line, used)) = take_line(rest, self.max_trailers)? else {
                        return Ok(pos);
                    };
                    self.trailers += used;
                    if self.trailers > self.max_trailers {
                        return Err(Reject::new(
                            431,
                            format!("trailer section exceeds {} bytes", self.max_trailers),
                        ));
                    }
                    pos += used;
                    // Trailers are discarded: nothing in the admin API reads them.
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }
}

/// The CRLF-terminated line at the start of `input` (without CRLF) and its length with it;
/// `None` while incomplete.
fn take_line(input: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, Reject> {
    let Some(lf) = input.iter().position(|&b| b == b'\n') else {
        if input.len() > max {
            return Err(Reject::malformed("chunked body line too long"));
        }
        return Ok(None);
    };
    if lf >= max {
        return Err(Reject::malformed("chunked body line too long"));
    }
    match input[..lf].strip_suffix(b"\r") {
        Some(line) => Ok(Some((line, lf + 1))),
        None => Err(Reject::malformed("chunked body line not ended by CRLF")),
    }
}

/// `chunk-size [ BWS ";" extensions ]`; extensions are ignored. Sizes beyond `max_body`
/// are reported as too large without computing them exactly.
fn parse_chunk_size(line: &[u8], max_body: usize) -> Result<usize, Reject> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(Reject::malformed("invalid chunk size"));
    }
    let mut size: usize = 0;
    for &b in &line[..digits] {
        let digit = usize::from(hex_value(b).unwrap_or(0));
        size = match size.checked_mul(16).and_then(|s| s.checked_add(digit)) {
            Some(size) => size,
            None => return Err(Reject::too_large(max_body)),
        };
    }
    match line[digits..].trim_ascii_start() {
        [] | [b';', ..] => Ok(size),
        _ => Err(Reject::malformed("invalid chunk size")),
    }
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
    fn more_than_64_headers_are_rejected_with_431() {
        let server = TestServer::start();
        let mut client = server.client();
        let headers: String = (0..65).map(|i| format!("X-H{i}: v\r\n")).collect();
        client.send(format!("GET / HTTP/1.1\r\n{headers}\r\n"));
        assert_eq!(client.reply().status, 431);
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

    /// Feeds `wire` to a decoder `step` bytes at a time, as the server does with reads.
    fn decode_in_steps(wire: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>), Reject> {
        let mut decoder = ChunkedDecoder::new(ServerLimits::default());
        let mut pending = Vec::new();
        let mut input = wire.chunks(step);
        while !decoder.is_done() {
            let Some(piece) = input.next() else {
                return Err(Reject::new(0, "ran out of input"));
            };
            pending.extend_from_slice(piece);
            let consumed = decoder.feed(&pending)?;
            pending.drain(..consumed);
        }
        pending.extend(input.flatten());
        Ok((decoder.into_body(), pending))
    }

    #[test]
    fn chunked_decoder_gives_same_body_whatever_the_read_boundaries() {
        let wire = b"4\r\nWiki\r\n6;a=b\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nT: 1\r\n\r\nGET /next";
        for step in 1..wire.len() {
            let (body, rest) = decode_in_steps(wire, step).expect("valid chunked body");
            assert_eq!(body, b"Wikipedia in \r\n\r\nchunks.", "step {step}");
            assert_eq!(rest, b"GET /next", "step {step}");
        }
    }

    #[test]
    fn chunked_decoder_rejects_bad_framing_with_400() {
        for wire in [
            &b"5\r\nhelloX\r\n0\r\n\r\n"[..],
            b"g\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"\r\nhello\r\n0\r\n\r\n",
        ] {
            let rejected = decode_in_steps(wire, wire.len()).expect_err("bad framing");
            assert_eq!(rejected.status, 400, "{:?}", String::from_utf8_lossy(wire));
        }
    }

    #[test]
    fn absolute_form_target_is_reduced_to_path_and_query() {
        assert_eq!(
            split_target("http://admin:8080/api/v1/gateways?limit=5"),
            ("/api/v1/gateways".to_owned(), Some("limit=5".to_owned()))
        );
        assert_eq!(split_target("HTTP://admin"), ("/".to_owned(), None));
        assert_eq!(split_target("/health"), ("/health".to_owned(), None));
    }

    #[test]
    fn empty_lines_before_request_line_are_ignored() {
        let HeadStatus::Complete(head, len) = parse_head(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n", 1024)
        else {
            panic!("head should parse");
        };
        assert_eq!(
            (head.method.as_str(), head.target.as_str(), len),
            ("GET", "/", 22)
        );
    }
}
