//! One HTTP/2 stream as the request flow sees it: a client connection that carries exactly
//! one HTTP/1.1 exchange.
//!
//! Every stream goes through the same flow as an HTTP/1.1 request — gateway by
//! `:authority`, key, plugins, routing, balancing, retries, every error status — because
//! the flow is handed an [`H2Stream`] as its client: reading it yields the request as
//! HTTP/1.1 (a head built from the pseudo-headers and fields, then the body as the client's
//! DATA frames arrive, chunked unless the client sent `content-length`), and what the flow
//! writes back (an HTTP/1.1 response: relayed or the gateway's own) is parsed and sent as
//! HEADERS, DATA and trailers. Nothing is buffered whole: a read takes one DATA frame and
//! releases its flow-control credit only once the flow has taken it; a write waits for the
//! client's window before it returns, so a slow client slows the upstream read, as on
//! HTTP/1.1.
//!
//! gRPC: an error the gateway (or an upstream) answers for a request with
//! `content-type: application/grpc*` with a non-200 status and no `grpc-status` becomes a
//! trailers-only response ([`grpc_code`]). Services whose upstream speaks HTTP/2 take the
//! request body from the stream directly ([`H2Stream::take_body`], [`crate::h2upstream`]);
//! their answers come back through this stream's writes like any other (trailers as
//! chunked trailers, sent on as HTTP/2 trailers).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::rc::Rc;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response};
use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use shardgate_core::http1::{BodyKind, ChunkedScanner, Limits, Parse, Scanned, parse_response};

use crate::h2rent as rent;
use crate::wire::push_header;

/// Headers that belong to one HTTP/1.1 connection and never cross into HTTP/2.
const CONNECTION_SPECIFIC: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// The largest gateway error body read to find its message for `grpc-message`.
const GRPC_ERROR_BODY: usize = 4096;

/// An HTTP/2 stream as a one-request client connection (see the module docs).
pub struct H2Stream {
    /// Came over TLS (`X-Forwarded-Proto`).
    pub tls: bool,
    /// `content-type: application/grpc*`.
    pub grpc: bool,
    /// The request was HEAD: the response has no body.
    is_head: bool,
    /// The request's body, until its end; `None` after it (or when the stream is taken
    /// over by the HTTP/2 upstream relay).
    body: Option<RecvStream>,
    /// The body is chunked on the HTTP/1.1 side (no `content-length` from the client).
    chunked: bool,
    /// Request bytes encoded but not yet read by the flow.
    pending: VecDeque<Bytes>,
    /// The response handle until the response head is written (shared with the stream's
    /// task, which watches it for the client's reset).
    respond: Rc<RefCell<Option<SendResponse<Bytes>>>>,
    /// The response body's stream, once the head is sent (shared with the task too, which
    /// watches it for the client's reset while the body is awaited).
    send: SharedSend,
    out: Out,
    limits: Limits,
    /// The response ended (end of stream sent).
    complete: bool,
    /// The client reset the stream.
    pub peer_reset: bool,
    /// The gRPC call's `grpc-timeout`.
    pub grpc_timeout: Option<std::time::Duration>,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("tls", &self.tls)
            .field("grpc", &self.grpc)
            .finish_non_exhaustive()
    }
}

/// Where the response the flow writes stands.
enum Out {
    /// Collecting the head.
    Head(Vec<u8>),
    /// Body bytes still to come, framed as the head said.
    Length(u64),
    Chunked {
        scanner: ChunkedScanner,
        trailers: Vec<u8>,
    },
    /// Until the flow shuts the stream down.
    Close,
    /// A gRPC request's error answer: its body is collected for `grpc-message`.
    GrpcError {
        status: u16,
        headers: HeaderMap,
        body: Vec<u8>,
        framing: Box<Out>,
    },
    /// The response is complete (or was abandoned).
    Done,
}

impl H2Stream {
    /// The stream for `request`, whose head is queued for the flow's first read.
    pub fn new(
        request: Request<RecvStream>,
        respond: SharedRespond,
        send: SharedSend,
        tls: bool,
        limits: Limits,
    ) -> H2Stream {
        let (parts, body) = request.into_parts();
        let grpc = is_grpc(&parts.headers);
        let grpc_timeout = parts
            .headers
            .get("grpc-timeout")
            .and_then(|v| grpc_timeout(v.as_bytes()));
        let is_head = parts.method == http::Method::HEAD;
        let mut head = Vec::with_capacity(512);
        let chunked = encode_request_head(&parts, body.is_end_stream(), &mut head);
        let mut pending = VecDeque::with_capacity(4);
        pending.push_back(Bytes::from(head));
        H2Stream {
            tls,
            grpc,
            is_head,
            body: (!body.is_end_stream()).then_some(body),
            chunked,
            pending,
            respond,
            send,
            out: Out::Head(Vec::new()),
            limits,
            complete: false,
            peer_reset: false,
            grpc_timeout,
        }
    }

    /// Hands the request body (unread: the flow read only the head) to the relay that
    /// speaks HTTP/2 upstream; its answer comes back through this stream's writes, like any
    /// other.
    pub fn take_body(&mut self) -> Option<RecvStream> {
        self.pending.clear();
        self.body.take()
    }

    /// Whether the response head has gone to the client.
    pub fn responding(&self) -> bool {
        self.respond.borrow().is_none()
    }

    /// Ends a relayed response that failed after its head: a gRPC call past its deadline
    /// gets `grpc-status: 4` trailers, anything else a reset stream.
    pub fn abort(&mut self, deadline: bool) {
        if self.complete {
            return;
        }
        self.out = Out::Done;
        let mut cell = self.send.borrow_mut();
        let Some(send) = cell.as_mut() else {
            return;
        };
        if self.grpc && deadline {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("4"));
            trailers.insert(
                "grpc-message",
                HeaderValue::from_static("service deadline exceeded"),
            );
            self.complete = send.send_trailers(trailers).is_ok();
        } else {
            send.send_reset(h2::Reason::CANCEL);
            self.complete = true;
        }
    }

    /// Ends the stream after the flow is done with it: a close-delimited body ends here;
    /// a response left incomplete (or never begun) resets the stream.
    pub fn finish(&mut self) {
        if self.complete {
            self.out = Out::Done;
            return;
        }
        // A gRPC error answer whose body ran until close: complete now.
        if matches!(&self.out, Out::GrpcError { framing, .. } if matches!(**framing, Out::Close)) {
            let _ = self.send_grpc_error();
            return;
        }
        match std::mem::replace(&mut self.out, Out::Done) {
            Out::Done => {
                if let Some(send) = self.send.borrow_mut().as_mut() {
                    send.send_reset(h2::Reason::INTERNAL_ERROR);
                }
            }
            Out::Close => {
                if let Some(send) = self.send.borrow_mut().as_mut() {
                    self.complete = send.send_data(Bytes::new(), true).is_ok();
                }
            }
            _ => {
                if let Some(send) = self.send.borrow_mut().as_mut() {
                    send.send_reset(h2::Reason::INTERNAL_ERROR);
                } else if let Some(respond) = self.respond.borrow_mut().as_mut() {
                    respond.send_reset(h2::Reason::INTERNAL_ERROR);
                }
            }
        }
    }

    /// `e` as an I/O error, noting a reset by the client.
    fn failed(&mut self, e: h2::Error) -> io::Error {
        if e.is_reset() && e.is_remote() {
            self.peer_reset = true;
        }
        h2_error(e)
    }

    /// The next request bytes for the flow (the head, then the body), at most `max` of
    /// them; `None` after the end.
    async fn next_piece(&mut self, max: usize) -> io::Result<Option<Bytes>> {
        loop {
            if let Some(front) = self.pending.front_mut() {
                let piece = front.split_to(front.len().min(max));
                if front.is_empty() {
                    self.pending.pop_front();
                }
                return Ok(Some(piece));
            }
            let Some(body) = self.body.as_mut() else {
                return Ok(None);
            };
            match poll_fn(|cx| body.poll_data(cx)).await {
                Some(Ok(data)) => {
                    // The credit goes back as the flow takes the frame: the client may send
                    // the next while this one travels upstream, and no more.
                    let _ = body.flow_control().release_capacity(data.len());
                    if data.is_empty() {
                        continue;
                    }
                    if self.chunked {
                        self.pending
                            .push_back(Bytes::from(format!("{:x}\r\n", data.len())));
                        self.pending.push_back(data);
                        self.pending.push_back(Bytes::from_static(b"\r\n"));
                    } else {
                        self.pending.push_back(data);
                    }
                }
                Some(Err(e)) => return Err(self.failed(e)),
                None => {
                    let trailers = poll_fn(|cx| body.poll_trailers(cx)).await;
                    self.body = None;
                    if self.chunked {
                        let mut end = b"0\r\n".to_vec();
                        if let Ok(Some(trailers)) = trailers {
                            for (name, value) in &trailers {
                                push_header(&mut end, name.as_str().as_bytes(), value.as_bytes());
                            }
                        }
                        end.extend_from_slice(b"\r\n");
                        self.pending.push_back(Bytes::from(end));
                    }
                }
            }
        }
    }

    /// Takes response bytes the flow wrote (all of them, or an error).
    async fn write_all_of(&mut self, mut src: &[u8]) -> io::Result<()> {
        while !src.is_empty() {
            // The common case: the whole head in one write, parsed where it lies.
            if matches!(&self.out, Out::Head(buf) if buf.is_empty())
                && let Ok(Parse::Complete(head)) = parse_response(src, self.is_head, &self.limits)
            {
                let (this, rest) = src.split_at(head.head_len.min(src.len()));
                if !head.is_interim() {
                    self.begin(&head, this)?;
                }
                src = rest;
                continue;
            }
            match &mut self.out {
                Out::Head(buf) => {
                    buf.extend_from_slice(src);
                    src = &[];
                    let mut buf = std::mem::take(buf);
                    loop {
                        match parse_response(&buf, self.is_head, &self.limits) {
                            Ok(Parse::Partial) => {
                                self.out = Out::Head(buf);
                                break;
                            }
                            Ok(Parse::Complete(head)) if head.is_interim() => {
                                buf.drain(..head.head_len);
                                if buf.is_empty() {
                                    self.out = Out::Head(buf);
                                    break;
                                }
                            }
                            Ok(Parse::Complete(head)) => {
                                let rest = buf.split_off(head.head_len.min(buf.len()));
                                self.begin(&head, &buf)?;
                                // What followed the head is body: taken below.
                                if !rest.is_empty() {
                                    Box::pin(self.write_all_of(&rest)).await?;
                                }
                                break;
                            }
                            Err(e) => {
                                return Err(io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    format!("response head for an HTTP/2 client: {e}"),
                                ));
                            }
                        }
                    }
                }
                Out::Length(left) => {
                    let n = (*left).min(src.len() as u64) as usize;
                    *left -= n as u64;
                    let end = *left == 0;
                    if end {
                        self.out = Out::Done;
                    }
                    self.send_data(Bytes::copy_from_slice(&src[..n]), end)
                        .await?;
                    src = &src[n..];
                    if end {
                        src = &[];
                    }
                }
                Out::Chunked { scanner, trailers } => {
                    let mut data = Vec::new();
                    let scanned = unchunk(scanner, src, &mut data, trailers)?;
                    let ended = scanned.done.then(|| std::mem::take(trailers));
                    // All of `src` unless the body ended in it (what follows is not ours).
                    src = &[];
                    if !data.is_empty() {
                        self.send_data(Bytes::from(data), false).await?;
                    }
                    if let Some(trailers) = ended {
                        self.out = Out::Done;
                        self.end_with(&trailers)?;
                    }
                }
                Out::Close => {
                    let data = Bytes::copy_from_slice(src);
                    src = &[];
                    self.send_data(data, false).await?;
                }
                Out::GrpcError { body, framing, .. } => {
                    // The body is kept (up to a bound) for grpc-message; the framing says
                    // where it ends. A close-delimited one ends in `finish`.
                    let room = GRPC_ERROR_BODY.saturating_sub(body.len());
                    let (consumed, done) = match framing.as_mut() {
                        Out::Length(left) => {
                            let n = (*left).min(src.len() as u64) as usize;
                            *left -= n as u64;
                            body.extend_from_slice(&src[..n.min(room)]);
                            (n, *left == 0)
                        }
                        Out::Chunked { scanner, trailers } => {
                            let mut data = Vec::new();
                            let scanned = unchunk(scanner, src, &mut data, trailers)?;
                            body.extend_from_slice(&data[..data.len().min(room)]);
                            (scanned.consumed, scanned.done)
                        }
                        _ => {
                            body.extend_from_slice(&src[..src.len().min(room)]);
                            (src.len(), false)
                        }
                    };
                    src = &src[consumed..];
                    if done {
                        self.send_grpc_error()?;
                        src = &[];
                    }
                }
                Out::Done => src = &[],
            }
        }
        Ok(())
    }

    /// Sends the response head for `head` (in `buf`), or starts collecting a gRPC error.
    fn begin(&mut self, head: &shardgate_core::http1::ResponseHead, buf: &[u8]) -> io::Result<()> {
        let mut headers = HeaderMap::with_capacity(head.headers.len());
        let connection = head.connection_tokens(buf);
        // The head copied once, each value a slice of that copy: one allocation, not one
        // per value (`from_bytes` copies; measured 2.3 % of the worker in an h2 profile).
        let shared = Bytes::copy_from_slice(buf.get(..head.head_len).unwrap_or(buf));
        for span in head.headers.as_slice() {
            let (name, value) = (span.name.get(buf), span.value.range());
            if CONNECTION_SPECIFIC
                .iter()
                .any(|c| c.as_bytes().eq_ignore_ascii_case(name))
                || name.eq_ignore_ascii_case(b"te")
                || connection.iter().any(|t| t.eq_ignore_ascii_case(name))
                || value.end > shared.len()
            {
                continue;
            }
            // `from_bytes` lowercases (HTTP/2 field names are lowercase).
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name),
                HeaderValue::from_maybe_shared(Bytes::slice(&shared, value)),
            ) else {
                continue;
            };
            headers.append(name, value);
        }
        let framing = match head.body {
            BodyKind::None | BodyKind::Length(0) => Out::Done,
            BodyKind::Length(n) => Out::Length(n),
            BodyKind::Chunked => Out::Chunked {
                scanner: ChunkedScanner::default(),
                trailers: Vec::new(),
            },
            BodyKind::CloseDelimited => Out::Close,
        };
        if self.grpc && head.status != 200 && !headers.contains_key("grpc-status") {
            self.out = Out::GrpcError {
                status: head.status,
                headers,
                body: Vec::new(),
                framing: Box::new(framing),
            };
            if matches!(&self.out, Out::GrpcError { framing, .. } if matches!(**framing, Out::Done))
            {
                self.send_grpc_error()?;
            }
            return Ok(());
        }
        let mut response = Response::new(());
        *response.status_mut() =
            http::StatusCode::from_u16(head.status).map_err(io::Error::other)?;
        *response.headers_mut() = headers;
        let end = matches!(framing, Out::Done);
        let Some(mut respond) = self.respond.borrow_mut().take() else {
            return Err(io::Error::other("HTTP/2 response already sent"));
        };
        let send = respond
            .send_response(response, end)
            .map_err(|e| self.failed(e))?;
        *self.send.borrow_mut() = Some(send);
        self.out = framing;
        self.complete = end;
        Ok(())
    }

    /// The trailers-only answer for a gRPC request the gateway refused.
    fn send_grpc_error(&mut self) -> io::Result<()> {
        let Out::GrpcError {
            status,
            mut headers,
            body,
            ..
        } = std::mem::replace(&mut self.out, Out::Done)
        else {
            return Ok(());
        };
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str().map(str::to_owned)))
            .unwrap_or_else(|| crate::wire::reason(status).to_owned());
        headers.remove(http::header::CONTENT_LENGTH);
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(grpc_code(status)));
        if let Ok(value) = HeaderValue::from_str(&percent_encode(&message)) {
            headers.insert("grpc-message", value);
        }
        let mut response = Response::new(());
        *response.headers_mut() = headers;
        let Some(mut respond) = self.respond.borrow_mut().take() else {
            return Err(io::Error::other("HTTP/2 response already sent"));
        };
        respond
            .send_response(response, true)
            .map_err(|e| self.failed(e))?;
        self.complete = true;
        Ok(())
    }

    /// Sends `data` as the client's window allows, waiting for credit.
    async fn send_data(&mut self, data: Bytes, end: bool) -> io::Result<()> {
        let cell = self.send.clone();
        match send_shared(&cell, data, end).await {
            Ok(()) => {
                self.complete |= end;
                Ok(())
            }
            Err(e) => {
                if cell.borrow_mut().as_mut().is_some_and(send_was_reset) {
                    self.peer_reset = true;
                }
                Err(e)
            }
        }
    }

    /// Ends the body: with trailers when the chunked body carried some.
    fn end_with(&mut self, trailers: &[u8]) -> io::Result<()> {
        let map = trailer_map(trailers);
        let sent = match self.send.borrow_mut().as_mut() {
            None => return Err(io::Error::other("HTTP/2 response body before its head")),
            Some(send) if map.is_empty() => send.send_data(Bytes::new(), true),
            Some(send) => send.send_trailers(map),
        };
        sent.map_err(|e| self.failed(e))?;
        self.complete = true;
        Ok(())
    }
}

/// A stream's response handle, shared by the stream and its task.
pub type SharedRespond = Rc<RefCell<Option<SendResponse<Bytes>>>>;

/// A stream's response body, shared by the stream and its task.
pub type SharedSend = Rc<RefCell<Option<SendStream<Bytes>>>>;

/// [`send_flow_controlled`] on a shared stream, borrowing it only inside each poll (the
/// task watching it for a reset borrows it between polls).
async fn send_shared(
    cell: &RefCell<Option<SendStream<Bytes>>>,
    mut data: Bytes,
    end: bool,
) -> io::Result<()> {
    let closed = || {
        io::Error::new(
            io::ErrorKind::BrokenPipe,
            "HTTP/2 stream closed by the peer",
        )
    };
    if data.is_empty() {
        if end {
            let mut cell = cell.borrow_mut();
            let send = cell.as_mut().ok_or_else(closed)?;
            send.send_data(data, true).map_err(h2_error)?;
        }
        return Ok(());
    }
    while !data.is_empty() {
        if let Some(send) = cell.borrow_mut().as_mut() {
            send.reserve_capacity(data.len());
        }
        let granted = poll_fn(|cx| match cell.borrow_mut().as_mut() {
            Some(send) => send.poll_capacity(cx),
            None => std::task::Poll::Ready(None),
        })
        .await;
        let granted = match granted {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(h2_error(e)),
            None => return Err(closed()),
        };
        if granted == 0 {
            continue;
        }
        let piece = data.split_to(granted.min(data.len()));
        let mut cell = cell.borrow_mut();
        let send = cell.as_mut().ok_or_else(closed)?;
        send.send_data(piece, end && data.is_empty())
            .map_err(h2_error)?;
    }
    Ok(())
}

/// Whether the peer has reset `send` (polled once, without waiting).
fn send_was_reset(send: &mut SendStream<Bytes>) -> bool {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    matches!(send.poll_reset(&mut cx), std::task::Poll::Ready(Ok(_)))
}

/// Sends `data` on `send` in pieces the peer's window allows; `end` ends the stream with
/// the last piece (or alone, for empty `data`).
pub async fn send_flow_controlled(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
) -> io::Result<()> {
    if data.is_empty() {
        if end {
            send.send_data(data, true).map_err(h2_error)?;
        }
        return Ok(());
    }
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(h2_error(e)),
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "HTTP/2 stream closed by the peer",
                ));
            }
        };
        if granted == 0 {
            continue;
        }
        let piece = data.split_to(granted.min(data.len()));
        send.send_data(piece, end && data.is_empty())
            .map_err(h2_error)?;
    }
    Ok(())
}

/// The most trailer bytes a chunked body may end with (each line is bounded by the scanner;
/// this bounds how many).
const MAX_TRAILERS: usize = 16 * 1024;

/// Takes the chunk data (appended to `data`) and trailer bytes out of `src`: how many bytes
/// of `src` belong to the body, and whether it ended. The strict scanner every HTTP/1.1 body
/// passes validates the framing.
pub fn unchunk(
    scanner: &mut ChunkedScanner,
    src: &[u8],
    data: &mut Vec<u8>,
    trailers: &mut Vec<u8>,
) -> io::Result<Scanned> {
    let bad = |what: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("chunked body to re-frame for HTTP/2: {what}"),
        )
    };
    let scanned = scanner
        .decode_with_trailers(src, data, trailers)
        .map_err(|e| bad(e.to_string()))?;
    if trailers.len() > MAX_TRAILERS {
        return Err(bad("trailers too large".into()));
    }
    Ok(scanned)
}

/// Chunked trailer lines as HTTP/2 trailers (names lowercased; connection-specific fields
/// and malformed lines dropped).
pub fn trailer_map(lines: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in lines.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length")
            || CONNECTION_SPECIFIC
                .iter()
                .any(|c| c.as_bytes().eq_ignore_ascii_case(name))
        {
            continue;
        }
        // `from_bytes` lowercases.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) {
            map.append(name, value);
        }
    }
    map
}

impl monoio::io::AsyncReadRent for H2Stream {
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let max = buf.bytes_total();
        match self.next_piece(max).await {
            Ok(Some(piece)) => {
                let n = rent::fill(&mut buf, &piece);
                (Ok(n), buf)
            }
            Ok(None) => (Ok(0), buf),
            Err(e) => (Err(e), buf),
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        (
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "vectored reads from an HTTP/2 stream",
            )),
            buf,
        )
    }
}

impl monoio::io::AsyncWriteRent for H2Stream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let len = buf.bytes_init();
        let res = self.write_all_of(rent::bytes(&buf)).await;
        (res.map(|()| len), buf)
    }

    /// A response head and the body bytes that came with it (`respond::send_head`): each
    /// slice is taken where it lies, not copied into one buffer first.
    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let mut written = Ok(0);
        for slice in rent::slices(&buf) {
            if let Err(e) = self.write_all_of(slice).await {
                written = Err(e);
                break;
            }
            written = written.map(|len| len + slice.len());
        }
        (written, buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.finish();
        Ok(())
    }
}

/// A `grpc-timeout` value: at most 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(value: &[u8]) -> Option<std::time::Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    use std::time::Duration;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Whether a request is a gRPC call (`content-type: application/grpc`, `+proto`, ...).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Writes the HTTP/1.1 head of an HTTP/2 request into `out`; returns whether its body is
/// sent chunked (it has one, and no `content-length`).
fn encode_request_head(parts: &http::request::Parts, end_stream: bool, out: &mut Vec<u8>) -> bool {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    if parts.method == http::Method::CONNECT {
        if let Some(authority) = parts.uri.authority() {
            out.extend_from_slice(authority.as_str().as_bytes());
        }
    } else {
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        out.extend_from_slice(if target.is_empty() {
            b"/"
        } else {
            target.as_bytes()
        });
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // `:authority` is the Host (RFC 9113 §8.3.1); a `host` field is used only without it.
    let authority = parts.uri.authority().map(|a| a.as_str().as_bytes());
    if let Some(host) =
        authority.or_else(|| parts.headers.get(http::header::HOST).map(|h| h.as_bytes()))
    {
        push_header(out, b"host", host);
    }
    let mut cookies: Vec<&[u8]> = Vec::new();
    for (name, value) in &parts.headers {
        let name = name.as_str();
        if CONNECTION_SPECIFIC.contains(&name) {
            continue;
        }
        // HTTP/2 may split cookies into several fields; HTTP/1.1 wants one (§8.2.3).
        if name == "cookie" {
            cookies.push(value.as_bytes());
            continue;
        }
        push_header(out, name.as_bytes(), value.as_bytes());
    }
    if !cookies.is_empty() {
        push_header(out, b"cookie", &cookies.join(&b"; "[..]));
    }
    let chunked = !end_stream && !parts.headers.contains_key(http::header::CONTENT_LENGTH);
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    chunked
}

/// An `h2` error as an I/O error (a client's reset reads as a reset connection).
pub fn h2_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"));
    }
    let kind = if e.is_reset() || e.is_go_away() {
        io::ErrorKind::ConnectionReset
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, e)
}

/// The gRPC status for an HTTP status the gateway (or an upstream) answered a gRPC request
/// with (issue 12's table; the rest as gRPC's own HTTP mapping).
pub fn grpc_code(status: u16) -> u16 {
    match status {
        200 => 0,
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 | 405 | 501 => 12, // UNIMPLEMENTED
        408 | 504 => 4,        // DEADLINE_EXCEEDED
        413 | 429 => 8,        // RESOURCE_EXHAUSTED
        502 | 503 => 14,       // UNAVAILABLE
        500 => 13,             // INTERNAL
        _ => 2,                // UNKNOWN
    }
}

/// `grpc-message`'s encoding: percent-encoded outside printable ASCII, and `%` itself.
pub fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], split: usize) -> io::Result<(Vec<u8>, Option<HeaderMap>)> {
        let mut scanner = ChunkedScanner::default();
        let (mut data, mut trailers) = (Vec::new(), Vec::new());
        for piece in input.chunks(split.max(1)) {
            if unchunk(&mut scanner, piece, &mut data, &mut trailers)?.done {
                return Ok((data, Some(trailer_map(&trailers))));
            }
        }
        Ok((data, None))
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_write_boundaries() -> io::Result<()> {
        let body =
            b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\n\r\n";
        for split in [1, 2, 3, 7, body.len()] {
            let (data, trailers) = decode_all(body, split)?;
            assert_eq!(data, b"hello, world", "split {split}");
            let trailers = trailers.unwrap_or_default();
            assert_eq!(trailers.len(), 2, "split {split}");
            assert_eq!(trailers["grpc-status"], "0", "split {split}");
            assert_eq!(trailers["grpc-message"], "ok", "split {split}");
        }
        let (data, trailers) = decode_all(b"3\r\nabc\r\n0\r\n\r\n", 2)?;
        assert_eq!(data, b"abc");
        assert_eq!(trailers.map(|t| t.len()), Some(0));
        // Connection-specific fields never become HTTP/2 trailers.
        let (_, trailers) = decode_all(b"0\r\nConnection: x\r\nX-Ok: 1\r\n\r\n", 64)?;
        let trailers = trailers.unwrap_or_default();
        assert_eq!(
            (trailers.len(), trailers.get("x-ok").map(|v| v.as_bytes())),
            (1, Some(&b"1"[..]))
        );
        Ok(())
    }

    #[test]
    fn broken_chunked_framing_is_an_error() {
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"3\r\nabcd\r\n",
            b"1234567890abcdef0\r\n",
            b"5\nhello\r\n",
        ] {
            assert!(
                decode_all(bad, 64).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn gateway_statuses_map_to_the_grpc_codes_issue_12_names() {
        let table = [
            (401, 16),
            (403, 7),
            (404, 12),
            (405, 12),
            (429, 8),
            (502, 14),
            (503, 14),
            (504, 4),
            (413, 8),
        ];
        for (status, code) in table {
            assert_eq!(grpc_code(status), code, "{status}");
        }
        assert_eq!(percent_encode("no key: 100%\n"), "no key: 100%25%0A");
        assert_eq!(
            grpc_timeout(b"250m"),
            Some(std::time::Duration::from_millis(250))
        );
        assert_eq!(grpc_timeout(b"2S"), Some(std::time::Duration::from_secs(2)));
        assert_eq!(grpc_timeout(b"123456789S"), None);
        assert_eq!(grpc_timeout(b"5x"), None);
    }

    #[test]
    fn request_heads_join_cookies_and_frame_bodies() {
        let request = Request::builder()
            .method("POST")
            .uri("https://api.localhost/v1/x?q=1")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("x-api-key", "k")
            .body(())
            .map_err(|e| e.to_string());
        let Ok(request) = request else {
            panic!("request: {request:?}");
        };
        let (parts, ()) = request.into_parts();
        let mut out = Vec::new();
        assert!(encode_request_head(&parts, false, &mut out));
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("POST /v1/x?q=1 HTTP/1.1\r\nhost: api.localhost\r\n"),
            "{text}"
        );
        assert!(text.contains("cookie: a=1; b=2\r\n"), "{text}");
        assert!(
            text.ends_with("transfer-encoding: chunked\r\n\r\n"),
            "{text}"
        );
        let mut out = Vec::new();
        assert!(!encode_request_head(&parts, true, &mut out));
    }
}
