//! Real upstream servers for the proxy tests: blocking std servers on `127.0.0.1:0`, one
//! thread per connection, each stopped (listener closed, open connections shut down) when
//! dropped.
//!
//! - [`CountingServer`]: records every request it receives (method, target, headers, body,
//!   peer address, time) and answers with a configurable status, body and delay; its
//!   `X-Upstream` header names it, so balancing tests know which target answered. Keeps
//!   connections alive as HTTP/1.1 allows, so upstream connection reuse shows in the peer
//!   ports it records.
//! - [`SseServer`]: a `text/event-stream` of N events with a pause between them, recording
//!   when it sent each one.
//! - [`DownloadServer`]: a big response generated on the fly ([`pattern`]), never held in
//!   memory.
//! - [`UploadSink`]: reads a request body of any size, answers its length and CRC-32.
//! - [`UpgradeEchoServer`]: answers `Upgrade: websocket` with `101 Switching Protocols`,
//!   then echoes every byte.
//! - [`DeadPort`]: a loopback port where connections are refused, held for as long as it
//!   lives; a [`CountingServer`] can be started on it and stopped again
//!   ([`CountingBuilder::start_on`]), so one upstream target goes down and comes back at
//!   the same address.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Read/write timeout of upstream sockets: long enough for any test step, short enough
/// that a stuck test fails instead of hanging.
pub(crate) const UPSTREAM_IO_TIMEOUT: Duration = Duration::from_secs(15);

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------------
// The server skeleton

pub(crate) type Handler = Arc<dyn Fn(TcpStream, SocketAddr) + Send + Sync>;

/// A listener with an accept thread that hands each connection to `handler` on its own
/// thread. Dropping it stops accepting, shuts every open connection down and waits
/// (boundedly) for the connection threads to end.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// A clone of each open connection, to shut it down on drop. The connection's thread
    /// removes (and shuts down) its own when its handler returns, so that the clone never
    /// keeps a connection open that the handler meant to close.
    open: Arc<Mutex<HashMap<u64, TcpStream>>>,
    running: Arc<AtomicUsize>,
    accept: Option<thread::JoinHandle<()>>,
}

/// A listener on a free loopback port with a deep accept queue: an HTTP/2 load test opens
/// a thousand upstream connections at once, and with std's backlog of 128 a slow accept
/// thread on a loaded machine lets the kernel drop SYNs, whose retransmission (1 s, then
/// 3 s) outlasts the gateway's 2 s connect timeout.
fn loopback_listener() -> TcpListener {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .expect("create a socket");
    let addr = SocketAddr::from(([127, 0, 0, 1], 0));
    socket
        .bind(&addr.into())
        .expect("bind an upstream on loopback");
    socket.listen(4096).expect("listen on loopback");
    socket.into()
}

impl Server {
    pub(crate) fn start(name: &str, handler: Handler) -> Server {
        Server::serve(loopback_listener(), name, handler)
    }

    /// Accepts on `listener` until dropped.
    fn serve(listener: TcpListener, name: &str, handler: Handler) -> Server {
        let addr = listener.local_addr().expect("upstream address");
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(HashMap::<u64, TcpStream>::new()));
        let running = Arc::new(AtomicUsize::new(0));
        let accept = {
            let (stop, open, running) = (stop.clone(), open.clone(), running.clone());
            let name = name.to_owned();
            thread::Builder::new()
                .name(format!("upstream-{name}"))
                .spawn(move || {
                    let mut next_id = 0u64;
                    for conn in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(stream) = conn else { continue };
                        let Ok(peer) = stream.peer_addr() else {
                            continue;
                        };
                        let _ = stream.set_read_timeout(Some(UPSTREAM_IO_TIMEOUT));
                        let _ = stream.set_write_timeout(Some(UPSTREAM_IO_TIMEOUT));
                        let _ = stream.set_nodelay(true);
                        next_id += 1;
                        let id = next_id;
                        if let Ok(clone) = stream.try_clone() {
                            lock(&open).insert(id, clone);
                        }
                        let handler = handler.clone();
                        running.fetch_add(1, Ordering::SeqCst);
                        let (done, open) = (running.clone(), open.clone());
                        let spawned = thread::Builder::new()
                            .name(format!("upstream-{name}-conn"))
                            .spawn(move || {
                                handler(stream, peer);
                                if let Some(clone) = lock(&open).remove(&id) {
                                    let _ = clone.shutdown(Shutdown::Both);
                                }
                                done.fetch_sub(1, Ordering::SeqCst);
                            });
                        if spawned.is_err() {
                            running.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                })
                .expect("spawn an upstream accept thread")
        };
        Server {
            addr,
            stop,
            open,
            running,
            accept: Some(accept),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for (_, stream) in lock(&self.open).drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        // Handlers end once their socket is shut down (or their sleep ends); bounded wait.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.running.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading requests

/// A request as an upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The request-target as sent (path and query).
    pub target: String,
    /// In order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body with any chunked framing removed.
    pub body: Vec<u8>,
    /// Whether the body came chunked.
    pub chunked: bool,
    /// The proxy's side of the upstream connection (its port shows connection reuse).
    pub peer: SocketAddr,
    pub at: Instant,
}

impl Seen {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether a header `name` was present.
    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    /// How many `name` fields were present.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }
}

/// A request head parsed by an upstream.
#[derive(Debug, Clone)]
pub struct Head {
    pub method: String,
    pub target: String,
    pub minor_version: u8,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    }

    fn content_length(&self) -> u64 {
        self.header("content-length")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Whether the connection stays open after the answer (HTTP/1.1 default).
    pub fn keep_alive(&self) -> bool {
        let connection = self
            .header("connection")
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        if self.minor_version == 0 {
            connection.contains("keep-alive")
        } else {
            !connection.contains("close")
        }
    }
}

/// Reads requests one after another from a connection, keeping bytes past the current
/// message for the next (pipelining, keep-alive).
#[derive(Debug)]
pub struct RequestReader {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RequestReader {
    pub fn new(stream: TcpStream) -> RequestReader {
        RequestReader {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Bytes read but not consumed.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The next request head; `None` when the peer closed between requests.
    pub fn head(&mut self) -> io::Result<Option<Head>> {
        loop {
            if let Some(end) = crate::connection::find(&self.buf, b"\r\n\r\n") {
                let text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                return parse_head(&text).map(Some);
            }
            if self.fill()? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    /// Streams the body of `head` to `sink` (chunked framing removed); returns its length.
    pub fn body(&mut self, head: &Head, mut sink: impl FnMut(&[u8])) -> io::Result<u64> {
        if head.chunked() {
            return self.chunked_body(sink);
        }
        let mut left = head.content_length();
        let total = left;
        while left > 0 {
            if self.buf.is_empty() && self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let take = (self.buf.len() as u64).min(left) as usize;
            sink(&self.buf[..take]);
            self.buf.drain(..take);
            left -= take as u64;
        }
        Ok(total)
    }

    fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(end) = crate::connection::find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 2);
                return Ok(line);
            }
            if self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    fn chunked_body(&mut self, mut sink: impl FnMut(&[u8])) -> io::Result<u64> {
        let mut total = 0u64;
        loop {
            let line = self.line()?;
            let size_text = line.split(';').next().unwrap_or("").trim();
            let mut left = u64::from_str_radix(size_text, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if left == 0 {
                // Trailers, up to the empty line.
                while !self.line()?.is_empty() {}
                return Ok(total);
            }
            total += left;
            while left > 0 {
                if self.buf.is_empty() && self.fill()? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                let take = (self.buf.len() as u64).min(left) as usize;
                sink(&self.buf[..take]);
                self.buf.drain(..take);
                left -= take as u64;
            }
            if !self.line()?.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "chunk data not followed by CRLF",
                ));
            }
        }
    }
}

fn parse_head(text: &str) -> io::Result<Head> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let mut lines = text.split("\r\n");
    let request_line = lines.next().ok_or_else(|| bad("empty head"))?;
    let mut parts = request_line.split(' ');
    let method = parts.next().ok_or_else(|| bad("no method"))?.to_owned();
    let target = parts.next().ok_or_else(|| bad("no target"))?.to_owned();
    let version = parts.next().ok_or_else(|| bad("no version"))?;
    let minor_version = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        _ => return Err(bad("not HTTP/1.x")),
    };
    let mut headers = Vec::new();
    for line in lines {
        let (n, v) = line.split_once(':').ok_or_else(|| bad("bad header line"))?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    Ok(Head {
        method,
        target,
        minor_version,
        headers,
    })
}

fn write_response(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
    keep_alive: bool,
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    // No body, and no Content-Length, in a 204 or 304 (RFC 9110 §8.6).
    if !matches!(status, 204 | 304) {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    if !matches!(status, 204 | 304) {
        bytes.extend_from_slice(body);
    }
    stream.write_all(&bytes)?;
    stream.flush()
}

/// A response head with exactly `headers` (no framing added), for HEAD answers.
fn write_head_only(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    keep_alive: bool,
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

// ---------------------------------------------------------------------------------------------
// Counting server

/// How a [`CountingServer`] answers.
#[derive(Debug, Clone)]
pub struct CountingBuilder {
    identity: String,
    status: u16,
    body: Option<Vec<u8>>,
    delay: Duration,
    idle_timeout: Option<Duration>,
    headers: Vec<(String, String)>,
    early_hints: bool,
}

impl CountingBuilder {
    /// The status of every answer (default 200).
    pub fn status(mut self, status: u16) -> CountingBuilder {
        self.status = status;
        self
    }

    /// A fixed body (default: `"<identity> <method> <target>"`).
    pub fn body(mut self, body: &[u8]) -> CountingBuilder {
        self.body = Some(body.to_vec());
        self
    }

    /// Sleep this long after reading a request, before answering (a slow upstream).
    pub fn delay(mut self, delay: Duration) -> CountingBuilder {
        self.delay = delay;
        self
    }

    /// One more response header on every answer.
    pub fn header(mut self, name: &str, value: &str) -> CountingBuilder {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Send `103 Early Hints` (with a `Link` header) before each final answer.
    pub fn early_hints(mut self) -> CountingBuilder {
        self.early_hints = true;
        self
    }

    /// Close a kept-alive connection after it was idle this long, without telling the
    /// peer (as servers with a keep-alive timeout shorter than the proxy's pool do).
    pub fn idle_timeout(mut self, idle: Duration) -> CountingBuilder {
        self.idle_timeout = Some(idle);
        self
    }

    pub fn start(self) -> CountingServer {
        self.serve(loopback_listener())
    }

    /// Starts on the port `port` holds instead of a fresh one: the server is that upstream
    /// target. Dropping the server stops it and the port refuses connections again, still
    /// held by `port`; starting another server on it brings the same target back.
    pub fn start_on(self, port: &DeadPort) -> CountingServer {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .expect("create a socket");
        // SO_REUSEPORT to share the port with the socket that holds it (which never
        // listens, so it takes no connections); SO_REUSEADDR past the TIME_WAIT
        // connections of a server that ran on it before.
        socket.set_reuse_port(true).expect("SO_REUSEPORT");
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
        let addr = SocketAddr::from(([127, 0, 0, 1], port.port()));
        socket
            .bind(&addr.into())
            .unwrap_or_else(|e| panic!("bind an upstream on the held port {addr}: {e}"));
        socket.listen(1024).expect("listen on the held port");
        self.serve(socket.into())
    }

    fn serve(self, listener: TcpListener) -> CountingServer {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let handler: Handler = {
            let (seen, in_flight, config) = (seen.clone(), in_flight.clone(), self.clone());
            Arc::new(move |stream, peer| {
                let _ = serve_counting(stream, peer, &config, &seen, &in_flight);
            })
        };
        let server = Server::serve(listener, &self.identity, handler);
        CountingServer {
            identity: self.identity,
            seen,
            in_flight,
            server,
        }
    }
}

fn serve_counting(
    stream: TcpStream,
    peer: SocketAddr,
    config: &CountingBuilder,
    seen: &Mutex<Vec<Seen>>,
    in_flight: &AtomicUsize,
) -> io::Result<()> {
    let mut reader = RequestReader::new(stream);
    loop {
        if let Some(idle) = config.idle_timeout
            && reader.buf.is_empty()
        {
            reader.stream().set_read_timeout(Some(idle))?;
        }
        let head = match reader.head() {
            Ok(Some(head)) => head,
            Ok(None) => break,
            Err(e)
                if config.idle_timeout.is_some()
                    && matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
            {
                // Idle too long: close without a word.
                break;
            }
            Err(e) => return Err(e),
        };
        reader
            .stream()
            .set_read_timeout(Some(UPSTREAM_IO_TIMEOUT))?;
        let mut body = Vec::new();
        reader.body(&head, |bytes| body.extend_from_slice(bytes))?;
        lock(seen).push(Seen {
            method: head.method.clone(),
            target: head.target.clone(),
            headers: head.headers.clone(),
            body,
            chunked: head.chunked(),
            peer,
            at: Instant::now(),
        });
        if !config.delay.is_zero() {
            in_flight.fetch_add(1, Ordering::SeqCst);
            thread::sleep(config.delay);
            in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        let body = config.body.clone().unwrap_or_else(|| {
            format!("{} {} {}", config.identity, head.method, head.target).into_bytes()
        });
        let keep_alive = head.keep_alive();
        let mut headers = vec![
            ("X-Upstream", config.identity.clone()),
            ("Content-Type", "text/plain".to_owned()),
        ];
        headers.extend(config.headers.iter().map(|(n, v)| (n.as_str(), v.clone())));
        if config.early_hints {
            reader.stream().write_all(
                b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
            )?;
        }
        if head.method == "HEAD" {
            // The length the GET would have, and no body.
            headers.push(("Content-Length", body.len().to_string()));
            write_head_only(reader.stream(), config.status, &headers, keep_alive)?;
        } else {
            write_response(reader.stream(), config.status, &headers, &body, keep_alive)?;
        }
        if !keep_alive {
            break;
        }
    }
    Ok(())
}

/// An upstream that records every request and answers `200` with
/// `X-Upstream: <identity>` and the body `"<identity> <method> <target>"` (or what its
/// [`CountingBuilder`] says).
pub struct CountingServer {
    identity: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    in_flight: Arc<AtomicUsize>,
    server: Server,
}

impl std::fmt::Debug for CountingServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountingServer")
            .field("identity", &self.identity)
            .field("addr", &self.server.addr)
            .field("requests", &self.count())
            .finish()
    }
}

impl CountingServer {
    /// A server answering 200 at once.
    pub fn start(identity: &str) -> CountingServer {
        CountingServer::builder(identity).start()
    }

    pub fn builder(identity: &str) -> CountingBuilder {
        CountingBuilder {
            identity: identity.to_owned(),
            status: 200,
            body: None,
            delay: Duration::ZERO,
            idle_timeout: None,
            headers: Vec::new(),
            early_hints: false,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// `{"host": "127.0.0.1", "port": <port>}` plus `extra` fields (weight, priority).
    pub fn target(&self, extra: Value) -> Value {
        target_json(self.addr().port(), extra)
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        lock(&self.seen).clone()
    }

    pub fn count(&self) -> usize {
        lock(&self.seen).len()
    }

    /// The last request received; panics when there was none.
    pub fn last(&self) -> Seen {
        lock(&self.seen)
            .last()
            .cloned()
            .unwrap_or_else(|| panic!("upstream {} received no request", self.identity))
    }

    /// Forgets the requests received so far.
    pub fn clear(&self) {
        lock(&self.seen).clear();
    }

    /// Requests being delayed right now (see [`CountingBuilder::delay`]).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests were received; false after `limit`.
    pub fn wait_for(&self, n: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.count() < n {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(2));
        }
        true
    }
}

/// A target entry for the admin API: `{"host": "127.0.0.1", "port": port}` plus `extra`.
pub fn target_json(port: u16, extra: Value) -> Value {
    let mut target = json!({"host": "127.0.0.1", "port": port});
    if let (Value::Object(t), Value::Object(e)) = (&mut target, extra) {
        t.extend(e);
    }
    target
}

/// A loopback port where connecting is refused, for as long as this value lives: a socket
/// is bound to it but never listens, so the kernel refuses connections and hands the port
/// to no other listener meanwhile (a released port could be reused by a parallel test).
/// The socket has SO_REUSEPORT so that [`CountingBuilder::start_on`] can run a server on
/// the port; only a socket of the same user asking for SO_REUSEPORT on this very port can
/// share it (binding port 0 never picks it).
#[derive(Debug)]
pub struct DeadPort {
    _reserved: socket2::Socket,
    port: u16,
}

impl DeadPort {
    pub fn reserve() -> DeadPort {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .expect("create a socket");
        socket.set_reuse_port(true).expect("SO_REUSEPORT");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("a socket address");
        socket.bind(&any.into()).expect("bind a port to hold");
        let port = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.port())
            .expect("the bound port");
        DeadPort {
            _reserved: socket,
            port,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its target entry for the admin API, with `extra` fields.
    pub fn target(&self, extra: Value) -> Value {
        target_json(self.port, extra)
    }
}

// ---------------------------------------------------------------------------------------------
// SSE

/// A `text/event-stream` upstream: on each request, `events` events (`data: event-<i>`)
/// in one chunked response, `gap` apart. [`SseServer::sent`] tells when each was written
/// (stamped just before the write).
pub struct SseServer {
    sent: Arc<Mutex<Vec<Instant>>>,
    server: Server,
}

impl std::fmt::Debug for SseServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseServer")
            .field("addr", &self.server.addr)
            .finish()
    }
}

impl SseServer {
    /// Events in a chunked response.
    pub fn start(events: usize, gap: Duration) -> SseServer {
        SseServer::start_framed(events, gap, true)
    }

    /// Events in a response with neither length nor chunking, ended by closing the
    /// connection (as many SSE servers do).
    pub fn start_close_delimited(events: usize, gap: Duration) -> SseServer {
        SseServer::start_framed(events, gap, false)
    }

    fn start_framed(events: usize, gap: Duration, chunked: bool) -> SseServer {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = {
            let sent = sent.clone();
            Arc::new(move |stream, _| {
                let _ = serve_sse(stream, events, gap, chunked, &sent);
            })
        };
        SseServer {
            sent,
            server: Server::start("sse", handler),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    pub fn target(&self) -> Value {
        target_json(self.addr().port(), json!({}))
    }

    /// When each event was written to the socket, in order.
    pub fn sent(&self) -> Vec<Instant> {
        lock(&self.sent).clone()
    }
}

/// The text of event `i`, as the client sees it in the stream.
pub fn sse_event(i: usize) -> String {
    format!("data: event-{i}\n\n")
}

fn serve_sse(
    stream: TcpStream,
    events: usize,
    gap: Duration,
    chunked: bool,
    sent: &Mutex<Vec<Instant>>,
) -> io::Result<()> {
    let mut reader = RequestReader::new(stream);
    let Some(head) = reader.head()? else {
        return Ok(());
    };
    reader.body(&head, |_| {})?;
    let stream = reader.stream();
    let framing = if chunked {
        "Transfer-Encoding: chunked\r\n"
    } else {
        "Connection: close\r\n"
    };
    stream.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
             {framing}\r\n"
        )
        .as_bytes(),
    )?;
    for i in 0..events {
        if i > 0 {
            thread::sleep(gap);
        }
        let event = sse_event(i);
        // Stamped before the write, so that a client that sees the event always finds
        // its time here (and the lag it measures is never too small).
        lock(sent).push(Instant::now());
        if chunked {
            stream.write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes())?;
        } else {
            stream.write_all(event.as_bytes())?;
        }
        stream.flush()?;
    }
    if chunked {
        stream.write_all(b"0\r\n\r\n")?;
    }
    stream.flush()
}

// ---------------------------------------------------------------------------------------------
// Big bodies

/// The byte at `offset` of every generated big body: period 251 (a prime, so no buffer
/// size lines up with it), so a lost, repeated or reordered piece changes the CRC.
pub fn pattern_byte(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// A block of the pattern starting at offset 0 whose length is a multiple of the period,
/// so writing it repeatedly continues the pattern.
pub fn pattern_block() -> Vec<u8> {
    (0..251u64 * 261).map(pattern_byte).collect()
}

/// CRC-32 of the first `len` bytes of the pattern.
pub fn pattern_crc(len: u64) -> u32 {
    let block = pattern_block();
    let mut crc = crc32fast::Hasher::new();
    let mut left = len;
    while left > 0 {
        let take = (block.len() as u64).min(left) as usize;
        crc.update(&block[..take]);
        left -= take as u64;
    }
    crc.finalize()
}

/// Writes `len` bytes of the pattern to `w`.
pub fn write_pattern(w: &mut impl Write, len: u64) -> io::Result<()> {
    let block = pattern_block();
    let mut left = len;
    while left > 0 {
        let take = (block.len() as u64).min(left) as usize;
        w.write_all(&block[..take])?;
        left -= take as u64;
    }
    w.flush()
}

/// Answers every request with `len` bytes of [`pattern_byte`] (`Content-Length` framed),
/// generated as it writes.
pub struct DownloadServer {
    server: Server,
}

impl std::fmt::Debug for DownloadServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownloadServer")
            .field("addr", &self.server.addr)
            .finish()
    }
}

impl DownloadServer {
    pub fn start(len: u64) -> DownloadServer {
        let handler: Handler = Arc::new(move |stream, _| {
            let mut reader = RequestReader::new(stream);
            while let Ok(Some(head)) = reader.head() {
                if reader.body(&head, |_| {}).is_err() {
                    return;
                }
                let head_bytes = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                     Content-Length: {len}\r\n\r\n"
                );
                let stream = reader.stream();
                if stream.write_all(head_bytes.as_bytes()).is_err()
                    || write_pattern(stream, len).is_err()
                {
                    return;
                }
            }
        });
        DownloadServer {
            server: Server::start("download", handler),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    pub fn target(&self) -> Value {
        target_json(self.addr().port(), json!({}))
    }
}

/// What an [`UploadSink`] received in one request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upload {
    pub bytes: u64,
    pub crc32: u32,
    pub chunked: bool,
}

/// Reads each request body to the end without keeping it, counting its bytes and CRC-32,
/// and answers `{"bytes": N, "crc32": C}`. With a `stall`, it waits that long after the
/// head before reading the body, so a proxy that does not apply backpressure would have
/// to buffer what the client sends meanwhile.
pub struct UploadSink {
    uploads: Arc<Mutex<Vec<Upload>>>,
    server: Server,
}

impl std::fmt::Debug for UploadSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadSink")
            .field("addr", &self.server.addr)
            .finish()
    }
}

impl UploadSink {
    pub fn start(stall: Duration) -> UploadSink {
        let uploads = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = {
            let uploads = uploads.clone();
            Arc::new(move |stream, _| {
                let mut reader = RequestReader::new(stream);
                while let Ok(Some(head)) = reader.head() {
                    thread::sleep(stall);
                    let mut crc = crc32fast::Hasher::new();
                    let Ok(bytes) = reader.body(&head, |b| crc.update(b)) else {
                        return;
                    };
                    let upload = Upload {
                        bytes,
                        crc32: crc.finalize(),
                        chunked: head.chunked(),
                    };
                    lock(&uploads).push(upload);
                    let body = json!({"bytes": upload.bytes, "crc32": upload.crc32}).to_string();
                    let headers = [("Content-Type", "application/json".to_owned())];
                    if write_response(
                        reader.stream(),
                        200,
                        &headers,
                        body.as_bytes(),
                        head.keep_alive(),
                    )
                    .is_err()
                        || !head.keep_alive()
                    {
                        return;
                    }
                }
            })
        };
        UploadSink {
            uploads,
            server: Server::start("upload", handler),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    pub fn target(&self) -> Value {
        target_json(self.addr().port(), json!({}))
    }

    pub fn uploads(&self) -> Vec<Upload> {
        lock(&self.uploads).clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Upgrade

/// Answers a request with `Upgrade: websocket` by `101 Switching Protocols` (`Upgrade:
/// websocket`, `Connection: Upgrade`; no `Sec-WebSocket-Accept`, which would need SHA-1)
/// and then echoes every byte until the peer closes. Other requests get 400.
pub struct UpgradeEchoServer {
    heads: Arc<Mutex<Vec<Head>>>,
    server: Server,
}

impl std::fmt::Debug for UpgradeEchoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpgradeEchoServer")
            .field("addr", &self.server.addr)
            .finish()
    }
}

impl UpgradeEchoServer {
    pub fn start() -> UpgradeEchoServer {
        let heads = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = {
            let heads = heads.clone();
            Arc::new(move |stream, _| {
                let _ = serve_upgrade(stream, &heads);
            })
        };
        UpgradeEchoServer {
            heads,
            server: Server::start("upgrade", handler),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    pub fn target(&self) -> Value {
        target_json(self.addr().port(), json!({}))
    }

    /// The request heads received.
    pub fn heads(&self) -> Vec<Head> {
        lock(&self.heads).clone()
    }
}

fn serve_upgrade(stream: TcpStream, heads: &Mutex<Vec<Head>>) -> io::Result<()> {
    let mut reader = RequestReader::new(stream);
    let Some(head) = reader.head()? else {
        return Ok(());
    };
    lock(heads).push(head.clone());
    let wants_websocket = head
        .header("upgrade")
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    if !wants_websocket {
        return write_response(reader.stream(), 400, &[], b"upgrade required", false);
    }
    let early = reader.take_buffered();
    let stream = reader.stream();
    stream.write_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )?;
    stream.write_all(&early)?;
    stream.flush()?;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        stream.write_all(&buf[..n])?;
        stream.flush()?;
    }
    stream.shutdown(Shutdown::Write)
}
