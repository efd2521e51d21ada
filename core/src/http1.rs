//! Strict HTTP/1.1 framing: request and response heads, chunked-body scanning and
//! hop-by-hop classification, without I/O and without allocating.
//!
//! The proxy reads bytes into its own buffer and calls [`parse_request`] /
//! [`parse_response`] until they return [`Parse::Complete`]. The result holds **offsets**
//! ([`Span`]) into that buffer, not borrows, so the async caller may move or grow the buffer
//! between reads and between parsing and forwarding. Headers live in a fixed-capacity inline
//! array ([`Headers`], [`HEADER_CAPACITY`] entries, 2 KiB) and `httparse` is given an
//! uninitialised stack array, so a parse never touches the heap, in steady state or
//! otherwise. The hot path uses [`parse_request_into`] / [`parse_response_into`] with a
//! head kept per connection, which also avoids zeroing and moving that table per request
//! ([`parse_request`] / [`parse_response`] return a fresh head by value). Bodies are
//! never decoded: [`BodyKind`] says how the body is framed, and [`ChunkedScanner`] validates a
//! chunked body as it streams through so the original bytes are forwarded unchanged and the
//! end of the body (and so the start of the next pipelined message) is known exactly.
//!
//! # What it guarantees
//!
//! A head that parses has exactly one reading: every line ends in CRLF, every field line is
//! `token ":" OWS value OWS`, the body length is determined by at most one unambiguous rule
//! (RFC 9112 §6.3), and a request has exactly one valid Host (HTTP/1.1) and a request-target
//! the router can use. Whatever a front end and an upstream might disagree on is rejected
//! rather than repaired: that disagreement is what request smuggling exploits. After any
//! [`HeadError`] or [`ChunkError`] the caller answers (request side: [`HeadError::status`];
//! response side: 502) and **closes the connection**, since the message boundary is unknown.
//!
//! # What it rejects, and why
//!
//! - **Bare LF** where CRLF is required, bare CR (RFC 9112 §2.2 allows recognising a lone LF;
//!   we do not, because a peer that does not would see different lines). `httparse` accepts
//!   bare LF, so a complete head has each line ending checked from its line offsets, and an
//!   incomplete or failed one is scanned with `memchr`, which also rejects a bare LF or
//!   obs-fold before the head completes. → 400
//! - **obs-fold** (a field line starting with SP/HT, RFC 9112 §5.2), whitespace between a
//!   field name and its colon (§5.1), invalid field-name bytes, NUL/CR/CTL in values. → 400
//! - **Content-Length** that is empty, signed, non-decimal or overflows `u64`; duplicates or
//!   list members that differ (identical ones are one value, RFC 9110 §8.6). → 400
//! - **Transfer-Encoding** together with Content-Length (RFC 9112 §6.3 allows "TE wins" but
//!   only if the connection is then closed; we refuse), in an HTTP/1.0 message (§6.1: faulty
//!   framing), or whose final coding is not a bare `chunked` (`chunked, gzip`, `identity`,
//!   `chunked;x`, `chunked, chunked`). Multiple TE fields are concatenated first. → 400.
//!   `gzip, chunked` (a coding *before* chunked) → **501**: we forward bytes as received and
//!   do not re-encode, and the upstream's support for transfer codings is unknown (§6.1).
//! - **Request-target** not in origin-form (`/path?query`), absolute-form (`http://` or
//!   `https://` authority, no userinfo; §3.2.2) or asterisk-form (`*`, `OPTIONS` only,
//!   §3.2.4); raw non-ASCII or `#` in it. → 400. `CONNECT` (authority-form, §3.2.3) is not
//!   supported → **405**; the responder adds `Allow`.
//! - **Host** missing in HTTP/1.1, repeated, empty or with bytes an authority cannot hold
//!   (RFC 9112 §3.2, RFC 9110 §7.2). → 400
//! - **Versions** other than HTTP/1.0 and HTTP/1.1, including the HTTP/2 preface. → 505
//! - **Limits** ([`Limits`]): request-target over `max_uri` → 414, detected as soon as the
//!   partial request line proves it; head over `max_head` → 431 (returned by the parser, the
//!   caller need not compare lengths); more than `max_headers` fields → 431.
//!
//! Responses get the same strictness, plus: status outside 100–599 is invalid; a response
//! to HEAD, any 1xx, 204 and 304 has no body whatever its headers say; a response with
//! neither Content-Length nor chunked is close-delimited ([`BodyKind::CloseDelimited`]).
//!
//! # What the caller still does
//!
//! - Write `Content-Length` itself (one value) rather than forwarding received CL fields
//!   verbatim: `Content-Length: 5, 5` is accepted here but not every upstream reads it.
//! - Strip hop-by-hop fields with [`is_hop_by_hop`] and [`ConnectionTokens`]; re-add
//!   `Connection: upgrade` + `Upgrade` when [`RequestHead::upgrade`] is set.
//! - Enforce the body limit (413) on [`Scanned::consumed`] or [`ChunkedScanner::data_len`].
//! - Forward 1xx responses other than 101 and parse the next head (they are interim).
//!
//! Garbage (a TLS ClientHello, an HTTP/2 preface) is rejected as soon as the bytes seen
//! prove it, not when the size limit is reached. Re-parsing a partial head rescans it from
//! the start: quadratic in the number of reads, but bounded by `max_head` and by the
//! caller's header-read timeout (the slowloris defence).

use std::fmt;
use std::mem::MaybeUninit;
use std::ops::Range;

use crate::router::Method;

/// How many header fields a [`Headers`] can hold; [`Limits::max_headers`] is capped to it.
/// 128 × 16 bytes = 2 KiB inline in each head, which is what makes parsing heap-free.
pub const HEADER_CAPACITY: usize = 128;

/// Default bound on one chunk-size line or trailer line, see [`ChunkedScanner::new`].
pub const DEFAULT_MAX_CHUNK_LINE: usize = 4096;

// ---------------------------------------------------------------------------------------
// Limits, results, spans
// ---------------------------------------------------------------------------------------

/// Size limits for one message head. Exceeding them is an error, never a truncation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes from the first byte to the end of the empty line that ends the head.
    /// Default 16 KiB → 431. Larger allows big cookies; every byte is buffered per
    /// connection until the head completes. Capped at `u32::MAX` (spans are `u32`).
    pub max_head: usize,
    /// Length of the request-target. Default 8 KiB → 414 (nginx's default is similar).
    /// Not applied to responses.
    pub max_uri: usize,
    /// Number of header fields. Default 100 → 431. Capped at [`HEADER_CAPACITY`].
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 16 * 1024,
            max_uri: 8 * 1024,
            max_headers: 100,
        }
    }
}

/// Outcome of a parse that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse<T> {
    /// The head is complete; `head_len` bytes of the buffer belong to it.
    Complete(T),
    /// Need more bytes. The buffer is below `max_head` (otherwise the parser returns
    /// [`HeadError::HeadTooLarge`]); read more and call again with the grown buffer.
    Partial,
}

/// A byte range of the caller's buffer (`u32`s keep [`Headers`] small).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub len: u32,
}

impl Span {
    pub const EMPTY: Span = Span { start: 0, len: 0 };

    /// The range as `usize` indices.
    pub fn range(self) -> Range<usize> {
        let start = self.start as usize;
        start..start + self.len as usize
    }

    /// The bytes of this span in `buf` (the buffer that was parsed); empty if `buf` is too
    /// short, which only happens when given the wrong buffer.
    pub fn get(self, buf: &[u8]) -> &[u8] {
        buf.get(self.range()).unwrap_or(&[])
    }

    pub fn len(self) -> usize {
        self.len as usize
    }

    pub fn is_empty(self) -> bool {
        self.len == 0
    }

    fn new(start: usize, len: usize) -> Span {
        // Callers only pass offsets within a head of at most `u32::MAX` bytes.
        Span {
            start: start as u32,
            len: len as u32,
        }
    }
}

/// Where `part` (a sub-slice of `base` handed out by httparse) lies in `base`.
fn span_of(base: &[u8], part: &[u8]) -> Span {
    if part.is_empty() {
        // httparse may hand out a `'static` empty string (e.g. an obs-text reason phrase).
        return Span::EMPTY;
    }
    let start = (part.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
    debug_assert!(
        start + part.len() <= base.len(),
        "httparse slice outside its input"
    );
    Span::new(start, part.len())
}

/// One header field: name and value (value without surrounding whitespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeaderSpan {
    pub name: Span,
    pub value: Span,
}

/// The header fields of a head, in order, as spans into the parsed buffer. Fixed capacity
/// ([`HEADER_CAPACITY`]), stored inline: no heap.
#[derive(Clone)]
pub struct Headers {
    len: usize,
    entries: [HeaderSpan; HEADER_CAPACITY],
}

impl Default for Headers {
    fn default() -> Self {
        Headers {
            len: 0,
            entries: [HeaderSpan::default(); HEADER_CAPACITY],
        }
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Headers {}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl Headers {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[HeaderSpan] {
        &self.entries[..self.len]
    }

    /// `(name, value)` pairs in received order.
    pub fn iter<'b>(&self, buf: &'b [u8]) -> impl Iterator<Item = (&'b [u8], &'b [u8])> {
        self.as_slice()
            .iter()
            .map(move |h| (h.name.get(buf), h.value.get(buf)))
    }

    /// The first value of the field `name` (ASCII case-insensitive).
    pub fn get<'b>(&self, buf: &'b [u8], name: &str) -> Option<&'b [u8]> {
        self.get_all(buf, name).next()
    }

    /// Every value of the field `name`, in received order.
    pub fn get_all<'b>(&self, buf: &'b [u8], name: &str) -> impl Iterator<Item = &'b [u8]> {
        let name = name.as_bytes();
        self.iter(buf)
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    fn push(&mut self, header: HeaderSpan) {
        // httparse is given at most HEADER_CAPACITY slots, so this always fits.
        if let Some(slot) = self.entries.get_mut(self.len) {
            *slot = header;
            self.len += 1;
        }
    }
}

/// How the message body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body: no framing fields on a request, or a response to HEAD, 1xx, 204, 304.
    None,
    /// Exactly this many bytes (may be 0 when `Content-Length: 0` was sent).
    Length(u64),
    /// `Transfer-Encoding: chunked`; run a [`ChunkedScanner`] over the bytes after the head.
    Chunked,
    /// Response only: the body runs until the upstream closes; the response is not
    /// keep-alive.
    CloseDelimited,
}

/// The request-target's form (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`
    Origin,
    /// `http://authority/path?query`; [`RequestHead::authority`] is set.
    Absolute,
    /// `*` (OPTIONS only).
    Asterisk,
}

/// The standard reason phrase for `status` (RFC 9110 §15), or `""` for codes without one
/// here. One table for every response the gateway writes itself, admin and proxy alike.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Why a head was rejected. After any of these the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Request line is not `method SP request-target SP HTTP-version CRLF`. 400
    InvalidRequestLine,
    /// Status line is not `HTTP-version SP 3DIGIT SP reason CRLF`, or status not 100–599.
    InvalidStatusLine,
    /// A LF not preceded by CR. 400
    BareLf,
    /// A CR not followed by LF. 400
    InvalidLineEnding,
    /// A field line starting with SP or HT (obsolete line folding). 400
    ObsFold,
    /// Empty field name, a non-token byte in it, or whitespace before the colon. 400
    InvalidHeaderName,
    /// NUL, CR or another control byte in a field value. 400
    InvalidHeaderValue,
    /// Request-target in no supported form, non-ASCII, or `*` with a method other than
    /// OPTIONS. 400
    InvalidTarget,
    /// HTTP/1.1 request without Host. 400
    MissingHost,
    /// More than one Host field. 400
    DuplicateHost,
    /// Host (or an absolute-form authority) empty or with bytes an authority cannot hold. 400
    InvalidHost,
    /// Content-Length empty, signed, not decimal, or over `u64::MAX`. 400
    InvalidContentLength,
    /// Content-Length values that differ (repeated fields or a list). 400
    ConflictingContentLength,
    /// Both Content-Length and Transfer-Encoding. 400
    ContentLengthWithTransferEncoding,
    /// Transfer-Encoding whose final coding is not a bare `chunked`, chunked twice, or
    /// malformed. 400
    InvalidTransferEncoding,
    /// Transfer-Encoding in an HTTP/1.0 message. 400
    TransferEncodingInHttp10,
    /// CONNECT: we do not tunnel. 405 (the responder adds `Allow`).
    ConnectUnsupported,
    /// Request-target over [`Limits::max_uri`]. 414
    UriTooLong,
    /// Head over [`Limits::max_head`]. 431
    HeadTooLarge,
    /// More than [`Limits::max_headers`] fields. 431
    TooManyHeaders,
    /// A transfer coding other than chunked (e.g. `gzip, chunked`). 501
    UnsupportedTransferCoding,
    /// Not HTTP/1.0 or HTTP/1.1 (includes the HTTP/2 preface). 505
    UnsupportedVersion,
}

impl HeadError {
    /// The status to answer a client with. For upstream responses the proxy answers 502
    /// whatever this says.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::ConnectUnsupported => 405,
            HeadError::UriTooLong => 414,
            HeadError::HeadTooLarge | HeadError::TooManyHeaders => 431,
            HeadError::UnsupportedTransferCoding => 501,
            HeadError::UnsupportedVersion => 505,
            _ => 400,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            HeadError::InvalidRequestLine => "malformed request line",
            HeadError::InvalidStatusLine => "malformed status line",
            HeadError::BareLf => "bare LF where CRLF is required",
            HeadError::InvalidLineEnding => "CR not followed by LF",
            HeadError::ObsFold => "obsolete line folding is not allowed",
            HeadError::InvalidHeaderName => "invalid header name",
            HeadError::InvalidHeaderValue => "invalid header value",
            HeadError::InvalidTarget => "invalid request target",
            HeadError::MissingHost => "missing Host header",
            HeadError::DuplicateHost => "multiple Host headers",
            HeadError::InvalidHost => "invalid Host header",
            HeadError::InvalidContentLength => "invalid Content-Length",
            HeadError::ConflictingContentLength => "conflicting Content-Length values",
            HeadError::ContentLengthWithTransferEncoding => {
                "both Content-Length and Transfer-Encoding"
            }
            HeadError::InvalidTransferEncoding => "Transfer-Encoding must end in chunked",
            HeadError::TransferEncodingInHttp10 => "Transfer-Encoding in an HTTP/1.0 message",
            HeadError::ConnectUnsupported => "CONNECT is not supported",
            HeadError::UriTooLong => "URI too long",
            HeadError::HeadTooLarge => "request header fields too large",
            HeadError::TooManyHeaders => "too many header fields",
            HeadError::UnsupportedTransferCoding => "unsupported transfer coding",
            HeadError::UnsupportedVersion => "HTTP version not supported",
        }
    }
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for HeadError {}

// ---------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------

/// A parsed request head. Spans index the buffer given to [`parse_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the head, including leading empty lines and the final CRLF; the body (or
    /// the next pipelined request) starts here.
    pub head_len: usize,
    /// The method token as received.
    pub method_span: Span,
    /// The method if it is one the router knows; `None` for extension methods.
    pub method: Option<Method>,
    /// The raw request-target.
    pub target: Span,
    pub form: TargetForm,
    /// Absolute-form only: the authority, which takes precedence over Host (RFC 9112 §3.2.2).
    pub authority: Option<Span>,
    /// The path without the query: `/a/b` in all forms, `*` for asterisk-form. Empty only for
    /// absolute-form `http://host`, which means `/`.
    pub path: Span,
    /// The query without its `?`, if there was a `?`.
    pub query: Option<Span>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version_minor: u8,
    pub headers: Headers,
    pub body: BodyKind,
    /// Whether the connection may serve another request after this one: HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive` (RFC 9112 §9.3).
    pub keep_alive: bool,
    /// HTTP/1.1 with `Expect: 100-continue` (ignored for HTTP/1.0, RFC 9110 §10.1.1).
    pub expect_continue: bool,
    /// HTTP/1.1 with an Upgrade field and `upgrade` among the Connection options.
    pub upgrade: bool,
    /// The Host field's value (exactly one, validated), if present.
    pub host: Option<Span>,
}

impl Default for RequestHead {
    /// An empty head to pass to [`parse_request_into`].
    fn default() -> Self {
        RequestHead {
            head_len: 0,
            method_span: Span::EMPTY,
            method: None,
            target: Span::EMPTY,
            form: TargetForm::Origin,
            authority: None,
            path: Span::EMPTY,
            query: None,
            version_minor: 1,
            headers: Headers::default(),
            body: BodyKind::None,
            keep_alive: false,
            expect_continue: false,
            upgrade: false,
            host: None,
        }
    }
}

impl RequestHead {
    /// First value of header `name` (ASCII case-insensitive).
    pub fn header<'b>(&self, buf: &'b [u8], name: &str) -> Option<&'b [u8]> {
        self.headers.get(buf, name)
    }

    /// All `(name, value)` pairs in received order.
    pub fn headers<'b>(&self, buf: &'b [u8]) -> impl Iterator<Item = (&'b [u8], &'b [u8])> {
        self.headers.iter(buf)
    }

    pub fn method_bytes<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        self.method_span.get(buf)
    }

    pub fn path<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        self.path.get(buf)
    }

    /// The target to send upstream in origin-form: path and query; `/` when an
    /// absolute-form target had an empty path; `*` for asterisk-form.
    pub fn origin_form<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        let end = self.target.range().end;
        match buf.get(self.path.range().start..end) {
            Some(b"") | None => b"/",
            Some(rest) => rest,
        }
    }

    /// The authority the request is for: the absolute-form authority if any, else Host.
    pub fn effective_authority<'b>(&self, buf: &'b [u8]) -> Option<&'b [u8]> {
        self.authority.or(self.host).map(|span| span.get(buf))
    }

    /// The options listed in the Connection fields.
    pub fn connection_tokens<'a>(&'a self, buf: &'a [u8]) -> ConnectionTokens<'a> {
        connection_tokens(&self.headers, buf)
    }
}

/// Parses a request head at the start of `buf`.
///
/// `Ok(Partial)`: no complete head yet and nothing wrong so far (obviously bad input such as
/// a TLS handshake, a too-long URI or too many fields is rejected before the head
/// completes). `Ok(Complete(head))`: the first `head.head_len` bytes are the head.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Parse<RequestHead>, HeadError> {
    let mut head = RequestHead::default();
    Ok(match parse_request_into(buf, limits, &mut head)? {
        Parse::Complete(()) => Parse::Complete(head),
        Parse::Partial => Parse::Partial,
    })
}

/// [`parse_request`] into a head the caller keeps (one per connection or worker), so the
/// 2 KiB field table is neither zeroed nor moved per request: what the proxy's hot path
/// uses. On `Partial` or an error, `out` holds unspecified (but valid) contents.
pub fn parse_request_into(
    buf: &[u8],
    limits: &Limits,
    out: &mut RequestHead,
) -> Result<Parse<()>, HeadError> {
    let max_head = limits.max_head.min(u32::MAX as usize);
    let window = &buf[..buf.len().min(max_head)];
    let cap = limits.max_headers.min(HEADER_CAPACITY);

    // Fast path: httparse first. It accepts bare LF, so a complete head has its line endings
    // verified afterwards from the line offsets; the byte-by-byte pre-scan (`find_head_end`)
    // only runs while a head is incomplete or already failed, to diagnose it precisely.
    let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADER_CAPACITY];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(window, &mut raw[..cap]) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            let start = leading_empty_lines(window);
            find_head_end(window, start, HeadError::InvalidRequestLine)?;
            check_partial_request_line(window, start, limits.max_uri)?;
            if buf.len() >= max_head {
                return Err(HeadError::HeadTooLarge);
            }
            return Ok(Parse::Partial);
        }
        Err(e) => {
            let start = leading_empty_lines(window);
            find_head_end(window, start, HeadError::InvalidRequestLine)?;
            return Err(map_request_error(e, window, start));
        }
    };
    let head = &window[..head_len];
    let (Some(method), Some(target), Some(version_minor)) = (req.method, req.path, req.version)
    else {
        return Err(HeadError::InvalidRequestLine);
    };

    // RFC 9112 §2.2: empty lines before the request-line are ignored (some clients send a
    // CRLF after a POST body), but only as CRLF pairs.
    let method_span = span_of(head, method.as_bytes());
    if !head[..method_span.start as usize]
        .chunks(2)
        .all(|pair| pair == b"\r\n")
    {
        return Err(HeadError::BareLf);
    }
    let target_span = span_of(head, target.as_bytes());
    if target_span.len() > limits.max_uri {
        return Err(HeadError::UriTooLong);
    }
    let known_method = Method::from_bytes(method.as_bytes());
    if known_method == Some(Method::Connect) {
        return Err(HeadError::ConnectUnsupported);
    }
    let parsed_target = parse_target(target.as_bytes(), target_span.start as usize)?;
    if parsed_target.form == TargetForm::Asterisk && known_method != Some(Method::Options) {
        return Err(HeadError::InvalidTarget);
    }

    let fields = collect_fields(head, req.headers, &mut out.headers)?;

    if fields.host_count > 1 {
        return Err(HeadError::DuplicateHost);
    }
    if let Some(host) = fields.host {
        if !is_authority(host.get(head)) {
            return Err(HeadError::InvalidHost);
        }
    } else if version_minor == 1 {
        return Err(HeadError::MissingHost);
    }

    let te = fields.transfer_encoding;
    if te.present && version_minor == 0 {
        return Err(HeadError::TransferEncodingInHttp10);
    }
    if te.present && fields.content_length.is_some() {
        return Err(HeadError::ContentLengthWithTransferEncoding);
    }
    let body = if te.present {
        te.judge()?;
        BodyKind::Chunked
    } else if let Some(n) = fields.content_length {
        BodyKind::Length(n)
    } else {
        BodyKind::None
    };

    let http11 = version_minor == 1;
    out.head_len = head_len;
    out.method_span = method_span;
    out.method = known_method;
    out.target = target_span;
    out.form = parsed_target.form;
    out.authority = parsed_target.authority;
    out.path = parsed_target.path;
    out.query = parsed_target.query;
    out.version_minor = version_minor;
    out.body = body;
    out.keep_alive = fields.connection.keep_alive(version_minor);
    out.expect_continue = http11 && fields.expect_continue;
    out.upgrade = http11 && fields.has_upgrade && fields.connection.upgrade;
    out.host = fields.host;
    Ok(Parse::Complete(()))
}

fn leading_empty_lines(window: &[u8]) -> usize {
    let mut start = 0;
    while window[start..].starts_with(b"\r\n") {
        start += 2;
    }
    start
}

/// While the request line is incomplete, reject a target that is already over `max_uri`.
fn check_partial_request_line(
    window: &[u8],
    start: usize,
    max_uri: usize,
) -> Result<(), HeadError> {
    let line = &window[start..];
    let Some(sp) = memchr::memchr(b' ', line) else {
        return Ok(());
    };
    let target = &line[sp + 1..];
    let target_len = memchr::memchr3(b' ', b'\r', b'\n', target).unwrap_or(target.len());
    if target_len > max_uri {
        return Err(HeadError::UriTooLong);
    }
    Ok(())
}

fn map_request_error(e: httparse::Error, head: &[u8], start: usize) -> HeadError {
    match e {
        httparse::Error::HeaderName => HeadError::InvalidHeaderName,
        httparse::Error::HeaderValue => HeadError::InvalidHeaderValue,
        httparse::Error::NewLine => HeadError::InvalidLineEnding,
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        httparse::Error::Version => {
            let line = &head[start..];
            let line = &line[..memchr::memchr2(b'\r', b'\n', line).unwrap_or(line.len())];
            let version = line.rsplit(|&b| b == b' ').next().unwrap_or(&[]);
            version_error(version, HeadError::InvalidRequestLine)
        }
        httparse::Error::Token | httparse::Error::Status => HeadError::InvalidRequestLine,
    }
}

/// `HTTP/<digit>...` is a version we do not speak (505); anything else is malformed.
fn version_error(version: &[u8], malformed: HeadError) -> HeadError {
    match version.strip_prefix(b"HTTP/") {
        Some([d, ..]) if d.is_ascii_digit() => HeadError::UnsupportedVersion,
        _ => malformed,
    }
}

struct Target {
    form: TargetForm,
    authority: Option<Span>,
    path: Span,
    query: Option<Span>,
}

/// Validates the request-target and splits it; `base` is its offset in the buffer.
fn parse_target(target: &[u8], base: usize) -> Result<Target, HeadError> {
    // httparse allows obs-text in the target; RFC 3986 needs it percent-encoded. A fragment
    // is never sent (RFC 9112 §3.2).
    if !target.iter().all(|&b| TARGET_BYTES[b as usize]) {
        return Err(HeadError::InvalidTarget);
    }
    if target == b"*" {
        return Ok(Target {
            form: TargetForm::Asterisk,
            authority: None,
            path: Span::new(base, 1),
            query: None,
        });
    }
    let (form, authority, path_start) = if target.first() == Some(&b'/') {
        (TargetForm::Origin, None, 0)
    } else {
        let scheme_len = if starts_with_ignore_case(target, b"http://") {
            7
        } else if starts_with_ignore_case(target, b"https://") {
            8
        } else {
            return Err(HeadError::InvalidTarget);
        };
        let rest = &target[scheme_len..];
        let authority_len = memchr::memchr2(b'/', b'?', rest).unwrap_or(rest.len());
        if !is_authority(&rest[..authority_len]) {
            return Err(HeadError::InvalidTarget);
        }
        (
            TargetForm::Absolute,
            Some(Span::new(base + scheme_len, authority_len)),
            scheme_len + authority_len,
        )
    };
    let rest = &target[path_start..];
    if form == TargetForm::Absolute && rest.first() == Some(&b'?') {
        // `http://host?q` is valid RFC 3986 but has no origin-form we could forward without
        // building a new string; no real client sends it.
        return Err(HeadError::InvalidTarget);
    }
    let (path_len, query) = match memchr::memchr(b'?', rest) {
        Some(q) => (
            q,
            Some(Span::new(base + path_start + q + 1, rest.len() - q - 1)),
        ),
        None => (rest.len(), None),
    };
    Ok(Target {
        form,
        authority,
        path: Span::new(base + path_start, path_len),
        query,
    })
}

/// `uri-host [ ":" port ]` by character class (RFC 3986 §3.2): unreserved, sub-delims, `%`,
/// `:` and `[]` for IP literals. No userinfo (`@`, deprecated by RFC 9110 §4.2.4), never empty.
fn is_authority(value: &[u8]) -> bool {
    !value.is_empty() && value.iter().all(|&b| AUTHORITY_BYTES[b as usize])
}

const fn byte_table(allowed: &[u8], ranges: &[(u8, u8)]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut i = 0;
    while i < allowed.len() {
        table[allowed[i] as usize] = true;
        i += 1;
    }
    let mut r = 0;
    while r < ranges.len() {
        let mut b = ranges[r].0 as usize;
        while b <= ranges[r].1 as usize {
            table[b] = true;
            b += 1;
        }
        r += 1;
    }
    table
}

const ALNUM: [(u8, u8); 3] = [(b'0', b'9'), (b'A', b'Z'), (b'a', b'z')];

/// Request-target bytes: visible ASCII except `#`.
static TARGET_BYTES: [bool; 256] = byte_table(b"", &[(0x21, 0x22), (0x24, 0x7e)]);

static AUTHORITY_BYTES: [bool; 256] = byte_table(b"-._~!$&'()*+,;=%:[]", &ALNUM);

/// RFC 9110 §5.6.2 `tchar`.
static TCHAR: [bool; 256] = byte_table(b"!#$%&'*+-.^_`|~", &ALNUM);

// ---------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------

/// A parsed response head. Spans index the buffer given to [`parse_response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Bytes of the head including the final CRLF.
    pub head_len: usize,
    /// 100–599.
    pub status: u16,
    /// The reason phrase (empty if absent or containing obs-text).
    pub reason: Span,
    pub version_minor: u8,
    pub headers: Headers,
    /// `None` for responses to HEAD, 1xx, 204 and 304 whatever the headers say.
    pub body: BodyKind,
    /// Whether the upstream connection may be reused after the body; false for
    /// close-delimited bodies.
    pub keep_alive: bool,
    /// 101 Switching Protocols with an Upgrade field: the connection becomes a tunnel.
    pub upgrade: bool,
}

impl Default for ResponseHead {
    /// An empty head to pass to [`parse_response_into`].
    fn default() -> Self {
        ResponseHead {
            head_len: 0,
            status: 200,
            reason: Span::EMPTY,
            version_minor: 1,
            headers: Headers::default(),
            body: BodyKind::None,
            keep_alive: false,
            upgrade: false,
        }
    }
}

impl ResponseHead {
    pub fn header<'b>(&self, buf: &'b [u8], name: &str) -> Option<&'b [u8]> {
        self.headers.get(buf, name)
    }

    pub fn headers<'b>(&self, buf: &'b [u8]) -> impl Iterator<Item = (&'b [u8], &'b [u8])> {
        self.headers.iter(buf)
    }

    /// 1xx other than 101: forward it, then parse the final response that follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    pub fn connection_tokens<'a>(&'a self, buf: &'a [u8]) -> ConnectionTokens<'a> {
        connection_tokens(&self.headers, buf)
    }
}

/// Parses an upstream response head at the start of `buf`. `request_method_was_head`: the
/// request was HEAD, so the response has no body (RFC 9112 §6.3 rule 1).
pub fn parse_response(
    buf: &[u8],
    request_method_was_head: bool,
    limits: &Limits,
) -> Result<Parse<ResponseHead>, HeadError> {
    let mut head = ResponseHead::default();
    Ok(
        match parse_response_into(buf, request_method_was_head, limits, &mut head)? {
            Parse::Complete(()) => Parse::Complete(head),
            Parse::Partial => Parse::Partial,
        },
    )
}

/// [`parse_response`] into a head the caller keeps; see [`parse_request_into`].
pub fn parse_response_into(
    buf: &[u8],
    request_method_was_head: bool,
    limits: &Limits,
    out: &mut ResponseHead,
) -> Result<Parse<()>, HeadError> {
    let max_head = limits.max_head.min(u32::MAX as usize);
    let window = &buf[..buf.len().min(max_head)];
    let cap = limits.max_headers.min(HEADER_CAPACITY);
    // No empty lines before a status line (httparse would skip them).
    if matches!(window.first(), Some(b'\r' | b'\n')) {
        return Err(HeadError::InvalidStatusLine);
    }

    let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADER_CAPACITY];
    let mut res = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let head_len =
        match config.parse_response_with_uninit_headers(&mut res, window, &mut raw[..cap]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                find_head_end(window, 0, HeadError::InvalidStatusLine)?;
                if buf.len() >= max_head {
                    return Err(HeadError::HeadTooLarge);
                }
                return Ok(Parse::Partial);
            }
            Err(e) => {
                find_head_end(window, 0, HeadError::InvalidStatusLine)?;
                return Err(map_response_error(e, window));
            }
        };
    let head = &window[..head_len];
    let (Some(version_minor), Some(status)) = (res.version, res.code) else {
        return Err(HeadError::InvalidStatusLine);
    };
    if !(100..=599).contains(&status) {
        return Err(HeadError::InvalidStatusLine);
    }
    let reason = span_of(head, res.reason.unwrap_or("").as_bytes());
    let fields = collect_fields(head, res.headers, &mut out.headers)?;

    let te = fields.transfer_encoding;
    if te.present && version_minor == 0 {
        return Err(HeadError::TransferEncodingInHttp10);
    }
    if te.present && fields.content_length.is_some() {
        return Err(HeadError::ContentLengthWithTransferEncoding);
    }
    if te.present {
        te.judge()?;
    }
    let no_body =
        request_method_was_head || (100..200).contains(&status) || status == 204 || status == 304;
    let body = if no_body {
        BodyKind::None
    } else if te.present {
        BodyKind::Chunked
    } else if let Some(n) = fields.content_length {
        BodyKind::Length(n)
    } else {
        BodyKind::CloseDelimited
    };

    out.head_len = head_len;
    out.status = status;
    out.reason = reason;
    out.version_minor = version_minor;
    out.body = body;
    out.keep_alive =
        body != BodyKind::CloseDelimited && fields.connection.keep_alive(version_minor);
    out.upgrade = status == 101 && fields.has_upgrade;
    Ok(Parse::Complete(()))
}

fn map_response_error(e: httparse::Error, head: &[u8]) -> HeadError {
    match e {
        httparse::Error::HeaderName => HeadError::InvalidHeaderName,
        httparse::Error::HeaderValue => HeadError::InvalidHeaderValue,
        httparse::Error::NewLine => HeadError::InvalidLineEnding,
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        httparse::Error::Version => {
            let version = head.split(|&b| b == b' ').next().unwrap_or(&[]);
            version_error(version, HeadError::InvalidStatusLine)
        }
        httparse::Error::Token | httparse::Error::Status => HeadError::InvalidStatusLine,
    }
}

// ---------------------------------------------------------------------------------------
// Shared head scanning
// ---------------------------------------------------------------------------------------

/// Finds the end of the head (just past the empty line) in `window[start..]`, rejecting bare
/// LF and obs-fold on the way, including in lines not yet complete. `Ok(None)`: no end yet.
fn find_head_end(
    window: &[u8],
    start: usize,
    empty_start_line: HeadError,
) -> Result<Option<usize>, HeadError> {
    let mut line_start = start;
    let mut first_line = true;
    for lf in memchr::memchr_iter(b'\n', &window[start..]) {
        let lf = start + lf;
        if lf == line_start || window[lf - 1] != b'\r' {
            return Err(HeadError::BareLf);
        }
        if lf - 1 == line_start {
            if first_line {
                return Err(empty_start_line);
            }
            return Ok(Some(lf + 1));
        }
        if !first_line && matches!(window[line_start], b' ' | b'\t') {
            return Err(HeadError::ObsFold);
        }
        first_line = false;
        line_start = lf + 1;
    }
    if !first_line && matches!(window.get(line_start), Some(b' ' | b'\t')) {
        return Err(HeadError::ObsFold);
    }
    Ok(None)
}

/// What the framing-relevant fields say, gathered in one pass.
#[derive(Default)]
struct Fields {
    content_length: Option<u64>,
    transfer_encoding: TransferEncoding,
    host: Option<Span>,
    host_count: usize,
    connection: ConnectionOptions,
    has_upgrade: bool,
    expect_continue: bool,
}

#[derive(Default, Clone, Copy)]
struct ConnectionOptions {
    close: bool,
    keep_alive: bool,
    upgrade: bool,
}

impl ConnectionOptions {
    fn keep_alive(self, version_minor: u8) -> bool {
        !self.close && (version_minor == 1 || self.keep_alive)
    }
}

/// Transfer-Encoding across all its fields, judged at the end (RFC 9112 §6.1).
#[derive(Default, Clone, Copy)]
struct TransferEncoding {
    present: bool,
    /// Some element was malformed, `chunked` had parameters, or came twice.
    malformed: bool,
    chunked_seen: bool,
    last_is_chunked: bool,
    other_coding: bool,
    any_element: bool,
}

impl TransferEncoding {
    fn add(&mut self, value: &[u8]) {
        self.present = true;
        for element in list_elements(value) {
            self.any_element = true;
            let name_len = element
                .iter()
                .position(|&b| matches!(b, b';' | b' ' | b'\t'))
                .unwrap_or(element.len());
            let name = &element[..name_len];
            if name.eq_ignore_ascii_case(b"chunked") {
                if self.chunked_seen || name_len != element.len() {
                    self.malformed = true;
                }
                self.chunked_seen = true;
                self.last_is_chunked = true;
            } else {
                if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
                    self.malformed = true;
                }
                self.other_coding = true;
                self.last_is_chunked = false;
            }
        }
    }

    /// Only a final, single, parameterless `chunked` frames a body; other codings before it
    /// are valid but not something we forward (501).
    fn judge(self) -> Result<(), HeadError> {
        if self.malformed || !self.any_element || !self.last_is_chunked {
            return Err(HeadError::InvalidTransferEncoding);
        }
        if self.other_coding {
            return Err(HeadError::UnsupportedTransferCoding);
        }
        Ok(())
    }
}

/// Copies httparse's fields into spans, checks that every line of a complete head ends in
/// CRLF (httparse also accepts a bare LF), and gathers the framing fields, in one pass.
///
/// Every LF in a head httparse accepted terminates a line (values cannot hold LF or a lone
/// CR), and every field line starts right after a terminator, so checking the two bytes
/// before each field name and before and at the final empty line covers them all.
fn collect_fields(
    head: &[u8],
    parsed: &[httparse::Header<'_>],
    headers: &mut Headers,
) -> Result<Fields, HeadError> {
    let crlf_before = |at: usize| at >= 2 && head.get(at - 2..at) == Some(b"\r\n");
    let end = head.len();
    if !crlf_before(end) || !crlf_before(end - 2) {
        return Err(HeadError::BareLf);
    }
    headers.len = 0;
    let mut fields = Fields::default();
    for h in parsed {
        let name = h.name.as_bytes();
        let header = HeaderSpan {
            name: span_of(head, name),
            value: span_of(head, h.value),
        };
        if !crlf_before(header.name.start as usize) {
            return Err(HeadError::BareLf);
        }
        headers.push(header);
        fields.observe(name, h.value, header.value)?;
    }
    Ok(fields)
}

impl Fields {
    fn observe(&mut self, name: &[u8], value: &[u8], value_span: Span) -> Result<(), HeadError> {
        // Dispatch on length first: most fields are none of these.
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                self.host_count += 1;
                self.host.get_or_insert(value_span);
            }
            6 if name.eq_ignore_ascii_case(b"expect") => {
                self.expect_continue |= value.eq_ignore_ascii_case(b"100-continue");
            }
            7 if name.eq_ignore_ascii_case(b"upgrade") => self.has_upgrade = true,
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for option in list_elements(value) {
                    let c = &mut self.connection;
                    c.close |= option.eq_ignore_ascii_case(b"close");
                    c.keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
                    c.upgrade |= option.eq_ignore_ascii_case(b"upgrade");
                }
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                // An empty field has no list elements; it is still invalid.
                if value.is_empty() {
                    return Err(HeadError::InvalidContentLength);
                }
                for element in value.split(|&b| b == b',') {
                    let n = parse_content_length(trim_ows(element))?;
                    match self.content_length {
                        Some(previous) if previous != n => {
                            return Err(HeadError::ConflictingContentLength);
                        }
                        _ => self.content_length = Some(n),
                    }
                }
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                self.transfer_encoding.add(value);
            }
            _ => {}
        }
        Ok(())
    }
}

/// `1*DIGIT` into a `u64`: no sign, no whitespace, no empty value, no overflow.
fn parse_content_length(digits: &[u8]) -> Result<u64, HeadError> {
    if digits.is_empty() {
        return Err(HeadError::InvalidContentLength);
    }
    digits.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return Err(HeadError::InvalidContentLength);
        }
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(HeadError::InvalidContentLength)
    })
}

/// Non-empty elements of a comma-separated list, trimmed of OWS (RFC 9110 §5.6.1).
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

fn is_tchar(b: u8) -> bool {
    TCHAR[b as usize]
}

// ---------------------------------------------------------------------------------------
// Hop-by-hop fields
// ---------------------------------------------------------------------------------------

/// The options of a message's Connection fields (RFC 9110 §7.6.1), read lazily from the
/// buffer: comma lists across all Connection fields, compared case-insensitively.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionTokens<'a> {
    headers: &'a Headers,
    buf: &'a [u8],
}

impl<'a> ConnectionTokens<'a> {
    /// Every option, in received order (may repeat).
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + use<'a> {
        self.headers
            .get_all(self.buf, "connection")
            .flat_map(list_elements)
    }

    /// Whether `token` is listed (ASCII case-insensitive).
    pub fn contains(&self, token: &[u8]) -> bool {
        self.iter().any(|t| t.eq_ignore_ascii_case(token))
    }
}

/// The Connection options of `headers` (parsed from `buf`).
pub fn connection_tokens<'a>(headers: &'a Headers, buf: &'a [u8]) -> ConnectionTokens<'a> {
    ConnectionTokens { headers, buf }
}

/// Whether a proxy must not forward the field `name`: the fixed hop-by-hop set (RFC 9110
/// §7.6.1, plus `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`, `Trailer`)
/// or a field the message's Connection header names.
pub fn is_hop_by_hop(name: &[u8], connection: &ConnectionTokens<'_>) -> bool {
    const FIXED: [&[u8]; 9] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ];
    FIXED.iter().any(|h| h.eq_ignore_ascii_case(name)) || connection.contains(name)
}

// ---------------------------------------------------------------------------------------
// Chunked bodies
// ---------------------------------------------------------------------------------------

/// Why a chunked body was rejected. Request side → 400; response side → 502. Either way
/// the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// chunk-size not `1*HEXDIG` (empty, `0x`, sign, whitespace before CRLF, ...).
    InvalidSize,
    /// chunk-size over `i64::MAX`.
    SizeOverflow,
    /// chunk-ext not `*( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] )`.
    InvalidExtension,
    /// Missing CRLF after a size line or after chunk data, bare LF, or CR without LF.
    InvalidLineEnding,
    /// A trailer line that is not `token ":" value` (obs-fold, space before colon, CTL).
    InvalidTrailer,
    /// A size line or trailer line longer than the scanner's `max_line`.
    LineTooLong,
}

impl ChunkError {
    pub fn status(&self) -> u16 {
        400
    }
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChunkError::InvalidSize => "invalid chunk size",
            ChunkError::SizeOverflow => "chunk size too large",
            ChunkError::InvalidExtension => "invalid chunk extension",
            ChunkError::InvalidLineEnding => "chunked body: CRLF required",
            ChunkError::InvalidTrailer => "invalid trailer field",
            ChunkError::LineTooLong => "chunk line too long",
        })
    }
}

impl std::error::Error for ChunkError {}

/// What one [`ChunkedScanner::scan`] call found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scanned {
    /// How many bytes at the start of the input belong to the body; forward exactly these.
    pub consumed: usize,
    /// The body ended (last chunk, trailers and final CRLF); bytes after `consumed` are the
    /// next message.
    pub done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    SizeStart,
    Size,
    /// BWS after the size: only more whitespace or `;` may follow.
    SizeWs,
    ExtNameStart,
    ExtName,
    ExtNameWs,
    ExtValueStart,
    ExtToken,
    ExtQuoted,
    ExtQuotedEscape,
    ExtQuotedEnd,
    /// BWS after an extension value: only more whitespace or `;` may follow.
    ExtWs,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
    Failed(ChunkError),
}

/// Validates a chunked body (RFC 9112 §7.1) as it streams through, byte-exactly, without
/// buffering or copying: the caller forwards `input[..consumed]` unchanged.
///
/// Strict where parsers are known to disagree (the chunked smuggling shapes): hex digits
/// only, no `0x`, sign or whitespace except BWS before `;`; extensions by the grammar;
/// CRLF, never bare LF, after size lines, data and trailers; trailer lines as strict as
/// head fields. Lines are bounded by `max_line`, so no state can be held open forever.
#[derive(Debug, Clone)]
pub struct ChunkedScanner {
    state: ChunkState,
    /// Chunk size being read, then the data bytes left in the chunk.
    remaining: u64,
    line_len: usize,
    max_line: usize,
    data_len: u64,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        ChunkedScanner::new(DEFAULT_MAX_CHUNK_LINE)
    }
}

impl ChunkedScanner {
    /// `max_line`: the longest size line (with extensions) or trailer line accepted,
    /// CRLF included. [`DEFAULT_MAX_CHUNK_LINE`] (4 KiB) is far above what clients send.
    pub fn new(max_line: usize) -> ChunkedScanner {
        ChunkedScanner {
            state: ChunkState::SizeStart,
            remaining: 0,
            line_len: 0,
            max_line,
            data_len: 0,
        }
    }

    /// The body has been scanned to its end.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Chunk-data bytes seen so far (framing excluded): what a body limit compares.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// Data bytes the body is already committed to: those seen ([`data_len`](Self::data_len))
    /// plus what the chunk being read still declares. A caller with a body limit compares
    /// this to refuse a chunk whose size line alone exceeds it, before its data arrives.
    pub fn declared_len(&self) -> u64 {
        match self.state {
            ChunkState::Data => self.data_len.saturating_add(self.remaining),
            _ => self.data_len,
        }
    }

    /// Consumes body bytes from the start of `input`. Returns how many belong to the body
    /// (all of them unless the body ends inside `input`) and whether it has ended. After an
    /// error every later call returns the same error; after the end, `consumed` is 0.
    pub fn scan(&mut self, input: &[u8]) -> Result<Scanned, ChunkError> {
        self.scan_with(input, |_| {}, |_| {})
    }

    /// [`scan`](Self::scan), also appending the chunk data (framing, extensions and
    /// trailers removed) to `data`: for a consumer that needs the body itself, such as the
    /// admin API, rather than forwarding the bytes as received. Same validation, same
    /// `Scanned`; on an error `data` may hold part of the rejected body.
    pub fn decode(&mut self, input: &[u8], data: &mut Vec<u8>) -> Result<Scanned, ChunkError> {
        self.scan_with(input, |bytes| data.extend_from_slice(bytes), |_| {})
    }

    /// [`decode`](Self::decode), also appending the trailer section's bytes as received
    /// (its field lines and the empty line that ends it) to `trailers`: for a consumer that
    /// re-frames the body, such as HTTP/2 (DATA, then a trailers HEADERS frame). Same
    /// validation, same `Scanned`.
    pub fn decode_with_trailers(
        &mut self,
        input: &[u8],
        data: &mut Vec<u8>,
        trailers: &mut Vec<u8>,
    ) -> Result<Scanned, ChunkError> {
        self.scan_with(
            input,
            |bytes| data.extend_from_slice(bytes),
            |byte| trailers.push(byte),
        )
    }

    /// The scanning loop, handing each run of chunk data to `on_data` and each byte of the
    /// trailer section to `on_trailer` (no-ops for [`scan`](Self::scan), which the compiler
    /// removes).
    fn scan_with(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(&[u8]),
        mut on_trailer: impl FnMut(u8),
    ) -> Result<Scanned, ChunkError> {
        let mut pos = 0;
        while pos < input.len() {
            match self.state {
                ChunkState::Done => break,
                ChunkState::Failed(e) => return Err(e),
                ChunkState::Data => {
                    let available = (input.len() - pos) as u64;
                    let take = self.remaining.min(available);
                    on_data(&input[pos..pos + take as usize]);
                    pos += take as usize;
                    self.remaining -= take;
                    self.data_len += take;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataCr;
                    }
                }
                state => {
                    if let Err(e) = self.step(input[pos]) {
                        self.state = ChunkState::Failed(e);
                        return Err(e);
                    }
                    if matches!(
                        state,
                        ChunkState::TrailerStart
                            | ChunkState::TrailerName
                            | ChunkState::TrailerValue
                            | ChunkState::TrailerLf
                            | ChunkState::EndLf
                    ) {
                        on_trailer(input[pos]);
                    }
                    pos += 1;
                }
            }
        }
        match self.state {
            ChunkState::Failed(e) => Err(e),
            state => Ok(Scanned {
                consumed: pos,
                done: state == ChunkState::Done,
            }),
        }
    }

    /// One byte of a size line, the CRLF after data, or a trailer line.
    fn step(&mut self, b: u8) -> Result<(), ChunkError> {
        use ChunkState as S;
        if !matches!(self.state, S::DataCr | S::DataLf) {
            self.line_len += 1;
            if self.line_len > self.max_line {
                return Err(ChunkError::LineTooLong);
            }
        }
        let bad_ext = Err(ChunkError::InvalidExtension);
        self.state = match (self.state, b) {
            (S::SizeStart, _) => match hex_value(b) {
                Some(d) => {
                    self.remaining = u64::from(d);
                    S::Size
                }
                None if b == b'\n' => return Err(ChunkError::InvalidLineEnding),
                None => return Err(ChunkError::InvalidSize),
            },
            (S::Size, b';') => S::ExtNameStart,
            (S::Size, b' ' | b'\t') => S::SizeWs,
            (S::Size, b'\r') => S::SizeLf,
            (S::Size, b'\n') => return Err(ChunkError::InvalidLineEnding),
            (S::Size, _) => {
                let d = hex_value(b).ok_or(ChunkError::InvalidSize)?;
                if self.remaining > (i64::MAX as u64) >> 4 {
                    return Err(ChunkError::SizeOverflow);
                }
                self.remaining = (self.remaining << 4) | u64::from(d);
                S::Size
            }
            (S::SizeWs, b' ' | b'\t') => S::SizeWs,
            (S::SizeWs, b';') => S::ExtNameStart,
            (S::SizeWs, _) => return Err(ChunkError::InvalidSize),
            (S::ExtNameStart, b' ' | b'\t') => S::ExtNameStart,
            (S::ExtNameStart, _) if is_tchar(b) => S::ExtName,
            (S::ExtName, _) if is_tchar(b) => S::ExtName,
            (S::ExtName, b'=') | (S::ExtNameWs, b'=') => S::ExtValueStart,
            (S::ExtName, b';') | (S::ExtNameWs, b';') => S::ExtNameStart,
            (S::ExtName, b' ' | b'\t') | (S::ExtNameWs, b' ' | b'\t') => S::ExtNameWs,
            (S::ExtName, b'\r') => S::SizeLf,
            (S::ExtValueStart, b' ' | b'\t') => S::ExtValueStart,
            (S::ExtValueStart, b'"') => S::ExtQuoted,
            (S::ExtValueStart, _) if is_tchar(b) => S::ExtToken,
            (S::ExtToken, _) if is_tchar(b) => S::ExtToken,
            (S::ExtToken, b';') | (S::ExtQuotedEnd, b';') | (S::ExtWs, b';') => S::ExtNameStart,
            (S::ExtToken, b' ' | b'\t') | (S::ExtQuotedEnd, b' ' | b'\t') => S::ExtWs,
            (S::ExtWs, b' ' | b'\t') => S::ExtWs,
            (S::ExtToken, b'\r') | (S::ExtQuotedEnd, b'\r') => S::SizeLf,
            (S::ExtQuoted, b'"') => S::ExtQuotedEnd,
            (S::ExtQuoted, b'\\') => S::ExtQuotedEscape,
            // qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
            (S::ExtQuoted, b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff) => S::ExtQuoted,
            // quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
            (S::ExtQuotedEscape, b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff) => S::ExtQuoted,
            (
                S::ExtNameStart
                | S::ExtName
                | S::ExtNameWs
                | S::ExtValueStart
                | S::ExtToken
                | S::ExtQuoted
                | S::ExtQuotedEscape
                | S::ExtQuotedEnd
                | S::ExtWs,
                _,
            ) => return bad_ext,
            (S::SizeLf, b'\n') => {
                self.line_len = 0;
                if self.remaining == 0 {
                    S::TrailerStart
                } else {
                    S::Data
                }
            }
            (S::DataCr, b'\r') => S::DataLf,
            (S::DataLf, b'\n') => {
                self.line_len = 0;
                S::SizeStart
            }
            (S::SizeLf | S::DataCr | S::DataLf, _) => return Err(ChunkError::InvalidLineEnding),
            (S::TrailerStart, b'\r') => S::EndLf,
            (S::TrailerStart, _) if is_tchar(b) => S::TrailerName,
            (S::TrailerName, _) if is_tchar(b) => S::TrailerName,
            (S::TrailerName, b':') => S::TrailerValue,
            (S::TrailerValue, b'\r') => S::TrailerLf,
            (S::TrailerValue, b'\t' | b' '..=0x7e | 0x80..=0xff) => S::TrailerValue,
            (S::TrailerStart | S::TrailerName | S::TrailerValue, b'\n') => {
                return Err(ChunkError::InvalidLineEnding);
            }
            (S::TrailerStart | S::TrailerName | S::TrailerValue, _) => {
                return Err(ChunkError::InvalidTrailer);
            }
            (S::TrailerLf, b'\n') => {
                self.line_len = 0;
                S::TrailerStart
            }
            (S::EndLf, b'\n') => S::Done,
            (S::TrailerLf | S::EndLf, _) => return Err(ChunkError::InvalidLineEnding),
            (S::Data | S::Done | S::Failed(_), _) => self.state,
        };
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Parse<RequestHead>, HeadError> {
        parse_request(raw, &Limits::default())
    }

    fn accepted(raw: &[u8]) -> RequestHead {
        match parse(raw) {
            Ok(Parse::Complete(head)) => head,
            other => panic!("{:?} not accepted: {other:?}", String::from_utf8_lossy(raw)),
        }
    }

    fn rejected(raw: &[u8]) -> HeadError {
        match parse(raw) {
            Err(e) => e,
            other => panic!("{:?} not rejected: {other:?}", String::from_utf8_lossy(raw)),
        }
    }

    /// A POST head with the given extra field lines.
    fn post_with(fields: &str) -> Vec<u8> {
        format!("POST /upload HTTP/1.1\r\nHost: api.localhost\r\n{fields}\r\n").into_bytes()
    }

    fn response(raw: &[u8], to_head: bool) -> Result<Parse<ResponseHead>, HeadError> {
        parse_response(raw, to_head, &Limits::default())
    }

    fn response_accepted(raw: &[u8], to_head: bool) -> ResponseHead {
        match response(raw, to_head) {
            Ok(Parse::Complete(head)) => head,
            other => panic!("{:?} not accepted: {other:?}", String::from_utf8_lossy(raw)),
        }
    }

    fn response_rejected(raw: &[u8]) -> HeadError {
        match response(raw, false) {
            Err(e) => e,
            other => panic!("{:?} not rejected: {other:?}", String::from_utf8_lossy(raw)),
        }
    }

    const CURL_GET: &[u8] = b"GET /v1/items?limit=10&x=y HTTP/1.1\r\nHost: api.localhost:8081\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\nX-Empty:\r\n\r\n";

    // ---- requests that parse ----

    #[test]
    fn typical_get_is_parsed_into_offsets_of_the_buffer() {
        let head = accepted(CURL_GET);
        assert_eq!(head.head_len, CURL_GET.len());
        assert_eq!(head.method, Some(Method::Get));
        assert_eq!(head.method_bytes(CURL_GET), b"GET");
        assert_eq!(head.target.get(CURL_GET), b"/v1/items?limit=10&x=y");
        assert_eq!(head.form, TargetForm::Origin);
        assert_eq!(head.path(CURL_GET), b"/v1/items");
        assert_eq!(
            head.query.map(|q| q.get(CURL_GET)),
            Some(&b"limit=10&x=y"[..])
        );
        assert_eq!(head.origin_form(CURL_GET), b"/v1/items?limit=10&x=y");
        assert_eq!(head.version_minor, 1);
        assert_eq!(
            head.host.map(|h| h.get(CURL_GET)),
            Some(&b"api.localhost:8081"[..])
        );
        assert_eq!(head.body, BodyKind::None);
        assert!(head.keep_alive && !head.expect_continue && !head.upgrade);
        assert_eq!(
            head.header(CURL_GET, "user-agent"),
            Some(&b"curl/8.5.0"[..])
        );
        assert_eq!(head.header(CURL_GET, "x-empty"), Some(&b""[..]));
        assert_eq!(head.header(CURL_GET, "cookie"), None);
        let names: Vec<&[u8]> = head.headers(CURL_GET).map(|(n, _)| n).collect();
        assert_eq!(names, [&b"Host"[..], b"User-Agent", b"Accept", b"X-Empty"]);
    }

    #[test]
    fn offsets_survive_moving_the_buffer() {
        let head = accepted(CURL_GET);
        let moved = CURL_GET.to_vec();
        assert_eq!(head.path(&moved), b"/v1/items");
    }

    #[test]
    fn every_strict_prefix_of_a_head_is_partial() {
        for end in 0..CURL_GET.len() {
            assert_eq!(
                parse(&CURL_GET[..end]).map(|p| matches!(p, Parse::Partial)),
                Ok(true)
            );
        }
    }

    #[test]
    fn a_reused_head_keeps_nothing_from_the_previous_request() {
        let mut head = RequestHead::default();
        let first = b"POST /a?x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\nX-1: 1\r\n\r\n";
        assert_eq!(
            parse_request_into(first, &Limits::default(), &mut head),
            Ok(Parse::Complete(()))
        );
        assert_eq!(head.headers.len(), 4);
        assert_eq!(
            parse_request_into(CURL_GET, &Limits::default(), &mut head),
            Ok(Parse::Complete(()))
        );
        assert_eq!(head, accepted(CURL_GET));
        let mut response = ResponseHead::default();
        let raw = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(
            parse_response_into(raw, false, &Limits::default(), &mut response),
            Ok(Parse::Complete(()))
        );
        assert_eq!(response, response_accepted(raw, false));
    }

    #[test]
    fn pipelined_bytes_after_the_head_are_not_part_of_it() {
        let mut raw = CURL_GET.to_vec();
        raw.extend_from_slice(b"GET /next HTTP/1.1\r\n");
        assert_eq!(accepted(&raw).head_len, CURL_GET.len());
    }

    #[test]
    fn leading_empty_lines_are_skipped_and_counted() {
        let raw = b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let head = accepted(raw);
        assert_eq!(head.head_len, raw.len());
        assert_eq!(head.path(raw), b"/");
    }

    #[test]
    fn content_length_frames_the_body() {
        let raw = post_with("Content-Length: 42\r\n");
        assert_eq!(accepted(&raw).body, BodyKind::Length(42));
        let raw = post_with("Content-Length: 0\r\n");
        assert_eq!(accepted(&raw).body, BodyKind::Length(0));
    }

    #[test]
    fn identical_duplicate_content_lengths_count_as_one() {
        let raw = post_with("Content-Length: 5\r\nContent-Length: 5\r\n");
        assert_eq!(accepted(&raw).body, BodyKind::Length(5));
        let raw = post_with("Content-Length: 5, 5\r\n");
        assert_eq!(accepted(&raw).body, BodyKind::Length(5));
    }

    #[test]
    fn final_chunked_frames_the_body() {
        let raw = post_with("Transfer-Encoding: chunked\r\n");
        assert_eq!(accepted(&raw).body, BodyKind::Chunked);
        let raw = post_with("transfer-encoding: CHUNKED\r\n");
        assert_eq!(accepted(&raw).body, BodyKind::Chunked);
    }

    #[test]
    fn http10_is_keep_alive_only_when_asked() {
        assert!(!accepted(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
        let head = accepted(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(head.keep_alive);
        assert_eq!(head.version_minor, 0);
        assert_eq!(head.host, None);
    }

    #[test]
    fn connection_close_ends_http11_keep_alive() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, close\r\n\r\n";
        assert!(!accepted(raw).keep_alive);
    }

    #[test]
    fn expect_100_continue_is_reported_for_http11_only() {
        let raw = post_with("Content-Length: 3\r\nExpect: 100-Continue\r\n");
        assert!(accepted(&raw).expect_continue);
        let raw = b"POST / HTTP/1.0\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n";
        assert!(!accepted(raw).expect_continue);
    }

    #[test]
    fn upgrade_needs_the_upgrade_field_and_connection_option() {
        let ws = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n";
        assert!(accepted(ws).upgrade);
        let no_option = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n";
        assert!(!accepted(no_option).upgrade);
        let http10 = b"GET /ws HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
        assert!(!accepted(http10).upgrade);
    }

    #[test]
    fn absolute_form_yields_path_and_authority() {
        let raw = b"GET http://api.localhost:8081/v1/x?q=1 HTTP/1.1\r\nHost: other\r\n\r\n";
        let head = accepted(raw);
        assert_eq!(head.form, TargetForm::Absolute);
        assert_eq!(
            head.authority.map(|a| a.get(raw)),
            Some(&b"api.localhost:8081"[..])
        );
        assert_eq!(
            head.effective_authority(raw),
            Some(&b"api.localhost:8081"[..])
        );
        assert_eq!(head.path(raw), b"/v1/x");
        assert_eq!(head.origin_form(raw), b"/v1/x?q=1");
        let bare = b"GET HTTPS://h HTTP/1.1\r\nHost: h\r\n\r\n";
        let head = accepted(bare);
        assert_eq!(head.path(bare), b"");
        assert_eq!(head.origin_form(bare), b"/");
    }

    #[test]
    fn asterisk_form_is_accepted_with_options() {
        let raw = b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n";
        let head = accepted(raw);
        assert_eq!(head.form, TargetForm::Asterisk);
        assert_eq!(head.origin_form(raw), b"*");
    }

    #[test]
    fn extension_methods_parse_without_a_router_method() {
        let raw = b"PURGE /x HTTP/1.1\r\nHost: a\r\n\r\n";
        let head = accepted(raw);
        assert_eq!(head.method, None);
        assert_eq!(head.method_bytes(raw), b"PURGE");
    }

    // ---- request rejections: framing ----

    #[test]
    fn content_length_with_transfer_encoding_is_400() {
        let raw = post_with("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n");
        assert_eq!(rejected(&raw), HeadError::ContentLengthWithTransferEncoding);
        assert_eq!(rejected(&raw).status(), 400);
    }

    #[test]
    fn differing_duplicate_content_length_is_400() {
        let raw = post_with("Content-Length: 5\r\nContent-Length: 6\r\n");
        assert_eq!(rejected(&raw), HeadError::ConflictingContentLength);
    }

    #[test]
    fn content_length_list_with_differing_values_is_400() {
        let raw = post_with("Content-Length: 5, 6\r\n");
        assert_eq!(rejected(&raw), HeadError::ConflictingContentLength);
    }

    #[test]
    fn malformed_content_length_is_400() {
        for value in [
            "abc",
            "+5",
            "-5",
            "",
            "0x10",
            "5 5",
            "5,",
            "1.0",
            "18446744073709551616",
        ] {
            let raw = post_with(&format!("Content-Length: {value}\r\n"));
            assert_eq!(rejected(&raw), HeadError::InvalidContentLength, "{value:?}");
        }
        // u64::MAX itself is a valid length (the body limit is the caller's).
        let raw = post_with("Content-Length: 18446744073709551615\r\n");
        assert_eq!(accepted(&raw).body, BodyKind::Length(u64::MAX));
    }

    #[test]
    fn transfer_encoding_not_ending_in_bare_chunked_is_400() {
        for value in [
            "chunked, gzip",
            "identity",
            "chunked;x",
            "chunked ;x=1",
            "chunked, chunked",
            "",
            " , ",
        ] {
            let raw = post_with(&format!("Transfer-Encoding: {value}\r\n"));
            assert_eq!(
                rejected(&raw),
                HeadError::InvalidTransferEncoding,
                "{value:?}"
            );
        }
    }

    #[test]
    fn transfer_coding_before_chunked_is_501() {
        let raw = post_with("Transfer-Encoding: gzip, chunked\r\n");
        assert_eq!(rejected(&raw), HeadError::UnsupportedTransferCoding);
        assert_eq!(rejected(&raw).status(), 501);
    }

    #[test]
    fn multiple_transfer_encoding_fields_are_judged_as_one_list() {
        let raw = post_with("Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n");
        assert_eq!(rejected(&raw), HeadError::InvalidTransferEncoding);
        let raw = post_with("Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n");
        assert_eq!(rejected(&raw), HeadError::UnsupportedTransferCoding);
        let raw = post_with("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n");
        assert_eq!(rejected(&raw), HeadError::InvalidTransferEncoding);
    }

    #[test]
    fn transfer_encoding_in_http10_is_400() {
        let raw = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(rejected(raw), HeadError::TransferEncodingInHttp10);
    }

    // ---- request rejections: syntax ----

    #[test]
    fn bare_lf_is_400_wherever_crlf_is_required() {
        for raw in [
            &b"GET / HTTP/1.1\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\n",
            b"GET / HTTP/1.1\r\nHost: a\n\n",
            b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: y \n\r\n",
            b"GET / HTTP/1.0\n\r\n",
        ] {
            assert_eq!(
                rejected(raw),
                HeadError::BareLf,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn bare_lf_is_rejected_before_the_head_completes() {
        assert_eq!(
            rejected(b"GET / HTTP/1.1\r\nHost: a\nX-Fo"),
            HeadError::BareLf
        );
    }

    #[test]
    fn obs_fold_is_400() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: one\r\n two\r\n\r\n";
        assert_eq!(rejected(raw), HeadError::ObsFold);
        let raw = b"GET / HTTP/1.1\r\n\tHost: a\r\n\r\n";
        assert_eq!(rejected(raw), HeadError::ObsFold);
        assert_eq!(
            rejected(b"GET / HTTP/1.1\r\nHost: a\r\n "),
            HeadError::ObsFold
        );
    }

    #[test]
    fn whitespace_between_field_name_and_colon_is_400() {
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n";
        assert_eq!(rejected(raw), HeadError::InvalidHeaderName);
    }

    #[test]
    fn invalid_field_name_bytes_are_400() {
        for raw in [
            &b"GET / HTTP/1.1\r\nHost: a\r\nX(y): z\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nX\x01: z\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n: z\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n",
        ] {
            assert_eq!(rejected(raw), HeadError::InvalidHeaderName);
        }
    }

    #[test]
    fn nul_or_cr_inside_a_value_is_400() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n";
        assert_eq!(rejected(raw), HeadError::InvalidHeaderValue);
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n";
        assert_eq!(rejected(raw), HeadError::InvalidHeaderValue);
    }

    #[test]
    fn cr_without_lf_after_the_request_line_is_400() {
        let raw = b"GET / HTTP/1.1\rHost: a\r\n\r\n";
        assert_eq!(rejected(raw), HeadError::InvalidLineEnding);
    }

    #[test]
    fn missing_host_in_http11_is_400() {
        assert_eq!(rejected(b"GET / HTTP/1.1\r\n\r\n"), HeadError::MissingHost);
    }

    #[test]
    fn more_than_one_host_is_400() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
        assert_eq!(rejected(raw), HeadError::DuplicateHost);
    }

    #[test]
    fn host_that_is_not_an_authority_is_400() {
        for value in ["", "a b", "user@a", "a/b", "a\x7f"] {
            let raw = format!("GET / HTTP/1.1\r\nHost: {value}\r\n\r\n");
            let e = rejected(raw.as_bytes());
            assert!(
                matches!(e, HeadError::InvalidHost | HeadError::InvalidHeaderValue),
                "{value:?}: {e:?}"
            );
        }
        assert_eq!(
            accepted(b"GET / HTTP/1.1\r\nHost: [::1]:8081\r\n\r\n").body,
            BodyKind::None
        );
    }

    #[test]
    fn invalid_request_targets_are_400() {
        for target in [
            &b"foo"[..],
            b"example.com:443",
            b"ftp://h/x",
            b"http://user@h/x",
            b"http:///x",
            b"http://h?q",
            b"/a#frag",
            b"/caf\xc3\xa9",
        ] {
            let mut raw = b"GET ".to_vec();
            raw.extend_from_slice(target);
            raw.extend_from_slice(b" HTTP/1.1\r\nHost: h\r\n\r\n");
            assert_eq!(
                rejected(&raw),
                HeadError::InvalidTarget,
                "{:?}",
                String::from_utf8_lossy(target)
            );
        }
    }

    #[test]
    fn asterisk_form_with_another_method_is_400() {
        assert_eq!(
            rejected(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n"),
            HeadError::InvalidTarget
        );
    }

    #[test]
    fn connect_is_405() {
        let e = rejected(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
        assert_eq!(e, HeadError::ConnectUnsupported);
        assert_eq!(e.status(), 405);
    }

    #[test]
    fn http2_preface_is_505() {
        let e = rejected(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert_eq!(e, HeadError::UnsupportedVersion);
        assert_eq!(e.status(), 505);
        // Known from the first line, before the preface completes.
        assert_eq!(
            rejected(b"PRI * HTTP/2.0\r\n"),
            HeadError::UnsupportedVersion
        );
    }

    #[test]
    fn other_http_versions_are_505() {
        for raw in [
            &b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            b"GET / HTTP/0.9\r\n\r\n",
        ] {
            assert_eq!(rejected(raw), HeadError::UnsupportedVersion);
        }
        assert_eq!(
            rejected(b"GET / FTP/1.1\r\nHost: a\r\n\r\n"),
            HeadError::InvalidRequestLine
        );
    }

    #[test]
    fn garbage_is_rejected_before_a_head_could_complete() {
        // The start of a TLS ClientHello.
        assert_eq!(
            rejected(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
            HeadError::InvalidRequestLine
        );
        assert_eq!(
            rejected(b"GET  / HTTP/1.1\r\n"),
            HeadError::InvalidRequestLine
        );
    }

    // ---- request rejections: limits ----

    #[test]
    fn uri_over_max_uri_is_414() {
        let limits = Limits {
            max_uri: 16,
            ..Limits::default()
        };
        let ok = b"GET /0123456789abcde HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(matches!(parse_request(ok, &limits), Ok(Parse::Complete(_))));
        let long = b"GET /0123456789abcdef HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(
            parse_request(long, &limits).err(),
            Some(HeadError::UriTooLong)
        );
        assert_eq!(HeadError::UriTooLong.status(), 414);
    }

    #[test]
    fn uri_over_max_uri_is_414_before_the_request_line_ends() {
        let limits = Limits {
            max_uri: 16,
            ..Limits::default()
        };
        let partial = b"GET /0123456789abcdef";
        assert_eq!(
            parse_request(partial, &limits).err(),
            Some(HeadError::UriTooLong)
        );
        assert_eq!(parse_request(&partial[..20], &limits), Ok(Parse::Partial));
    }

    #[test]
    fn head_over_max_head_is_431() {
        let limits = Limits {
            max_head: 64,
            ..Limits::default()
        };
        let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        raw.resize(64, b'x');
        assert_eq!(
            parse_request(&raw, &limits).err(),
            Some(HeadError::HeadTooLarge)
        );
        assert_eq!(parse_request(&raw[..63], &limits), Ok(Parse::Partial));
        // A head of exactly max_head bytes is fine.
        raw.truncate(60);
        raw.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(
            parse_request(&raw, &limits),
            Ok(Parse::Complete(_))
        ));
        assert_eq!(HeadError::HeadTooLarge.status(), 431);
    }

    #[test]
    fn more_fields_than_max_headers_is_431() {
        let fields = |n: usize| {
            let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
            for i in 1..n {
                raw.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
            }
            raw
        };
        let mut ok = fields(100);
        ok.extend_from_slice(b"\r\n");
        assert_eq!(accepted(&ok).headers.len(), 100);
        let mut too_many = fields(101);
        assert_eq!(
            rejected(&too_many),
            HeadError::TooManyHeaders,
            "detected while partial"
        );
        too_many.extend_from_slice(b"\r\n");
        assert_eq!(rejected(&too_many), HeadError::TooManyHeaders);
        assert_eq!(HeadError::TooManyHeaders.status(), 431);
    }

    #[test]
    fn every_error_has_a_status_and_a_short_reason() {
        let all = [
            HeadError::InvalidRequestLine,
            HeadError::InvalidStatusLine,
            HeadError::BareLf,
            HeadError::InvalidLineEnding,
            HeadError::ObsFold,
            HeadError::InvalidHeaderName,
            HeadError::InvalidHeaderValue,
            HeadError::InvalidTarget,
            HeadError::MissingHost,
            HeadError::DuplicateHost,
            HeadError::InvalidHost,
            HeadError::InvalidContentLength,
            HeadError::ConflictingContentLength,
            HeadError::ContentLengthWithTransferEncoding,
            HeadError::InvalidTransferEncoding,
            HeadError::TransferEncodingInHttp10,
            HeadError::ConnectUnsupported,
            HeadError::UriTooLong,
            HeadError::HeadTooLarge,
            HeadError::TooManyHeaders,
            HeadError::UnsupportedTransferCoding,
            HeadError::UnsupportedVersion,
        ];
        for e in all {
            assert!([400, 405, 414, 431, 501, 505].contains(&e.status()));
            let reason = e.to_string();
            assert!(
                !reason.is_empty() && reason.len() < 48 && !reason.contains('"'),
                "{reason}"
            );
        }
    }

    // ---- responses ----

    #[test]
    fn response_with_content_length_is_keep_alive() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nhi";
        let head = response_accepted(raw, false);
        assert_eq!(head.status, 200);
        assert_eq!(head.reason.get(raw), b"OK");
        assert_eq!(head.head_len, raw.len() - 2);
        assert_eq!(head.body, BodyKind::Length(2));
        assert!(head.keep_alive);
        assert_eq!(head.header(raw, "content-type"), Some(&b"text/plain"[..]));
    }

    #[test]
    fn chunked_response_is_framed_by_chunks() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(response_accepted(raw, false).body, BodyKind::Chunked);
    }

    #[test]
    fn response_without_framing_is_close_delimited_and_not_reusable() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n";
        let head = response_accepted(raw, false);
        assert_eq!(head.body, BodyKind::CloseDelimited);
        assert!(!head.keep_alive);
    }

    #[test]
    fn responses_to_head_and_1xx_204_304_have_no_body_whatever_the_headers() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
        assert_eq!(response_accepted(raw, true).body, BodyKind::None);
        for status in [100, 103, 204, 304] {
            let raw = format!("HTTP/1.1 {status} X\r\nTransfer-Encoding: chunked\r\n\r\n");
            assert_eq!(
                response_accepted(raw.as_bytes(), false).body,
                BodyKind::None,
                "{status}"
            );
            let raw = format!("HTTP/1.1 {status} X\r\nContent-Length: 7\r\n\r\n");
            assert_eq!(
                response_accepted(raw.as_bytes(), false).body,
                BodyKind::None,
                "{status}"
            );
        }
        assert!(response_accepted(b"HTTP/1.1 100 Continue\r\n\r\n", false).is_interim());
    }

    #[test]
    fn switching_protocols_is_an_upgrade() {
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        let head = response_accepted(raw, false);
        assert!(head.upgrade && !head.is_interim());
        assert_eq!(head.body, BodyKind::None);
    }

    #[test]
    fn http10_response_keep_alive_needs_the_option() {
        let raw = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert!(!response_accepted(raw, false).keep_alive);
        let raw = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n";
        assert!(response_accepted(raw, false).keep_alive);
    }

    #[test]
    fn every_strict_prefix_of_a_response_head_is_partial() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n";
        for end in 0..raw.len() {
            assert_eq!(response(&raw[..end], false), Ok(Parse::Partial));
        }
    }

    #[test]
    fn response_smuggling_shapes_are_rejected() {
        let cases: [(&[u8], HeadError); 10] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                HeadError::ContentLengthWithTransferEncoding,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                HeadError::ConflictingContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                HeadError::InvalidContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                HeadError::InvalidTransferEncoding,
            ),
            (
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                HeadError::TransferEncodingInHttp10,
            ),
            (
                b"HTTP/1.1 200 OK\nContent-Length: 1\r\n\r\n",
                HeadError::BareLf,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\n",
                HeadError::BareLf,
            ),
            (b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", HeadError::ObsFold),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length : 1\r\n\r\n",
                HeadError::InvalidHeaderName,
            ),
            (b"\r\nHTTP/1.1 200 OK\r\n\r\n", HeadError::InvalidStatusLine),
        ];
        for (raw, expected) in cases {
            assert_eq!(
                response_rejected(raw),
                expected,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn response_status_and_version_are_checked() {
        assert_eq!(
            response_rejected(b"HTTP/1.1 600 Nope\r\n\r\n"),
            HeadError::InvalidStatusLine
        );
        assert_eq!(
            response_rejected(b"HTTP/1.1 099 Nope\r\n\r\n"),
            HeadError::InvalidStatusLine
        );
        assert_eq!(
            response_rejected(b"HTTP/1.1 2000 OK\r\n\r\n"),
            HeadError::InvalidStatusLine
        );
        assert_eq!(
            response_rejected(b"HTTP/2 200\r\n\r\n"),
            HeadError::UnsupportedVersion
        );
        assert_eq!(
            response_rejected(b"SSH-2.0-OpenSSH\r\n"),
            HeadError::InvalidStatusLine
        );
    }

    // ---- hop-by-hop ----

    #[test]
    fn connection_tokens_span_all_connection_fields_case_insensitively() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nconnection: ,Upgrade ,\r\nUpgrade: h2c\r\nX-Secret: 1\r\nX-Public: 2\r\n\r\n";
        let head = accepted(raw);
        let tokens = head.connection_tokens(raw);
        let listed: Vec<&[u8]> = tokens.iter().collect();
        assert_eq!(listed, [&b"keep-alive"[..], b"X-Secret", b"Upgrade"]);
        assert!(tokens.contains(b"x-secret"));
        let forwarded: Vec<&[u8]> = head
            .headers(raw)
            .filter(|(name, _)| !is_hop_by_hop(name, &tokens))
            .map(|(name, _)| name)
            .collect();
        assert_eq!(forwarded, [&b"Host"[..], b"X-Public"]);
    }

    #[test]
    fn fixed_hop_by_hop_fields_are_recognised_without_connection() {
        let headers = Headers::default();
        let none = connection_tokens(&headers, b"");
        for name in [
            &b"Connection"[..],
            b"Keep-Alive",
            b"Proxy-Connection",
            b"Proxy-Authenticate",
            b"Proxy-Authorization",
            b"TE",
            b"Trailer",
            b"Transfer-Encoding",
            b"Upgrade",
        ] {
            assert!(is_hop_by_hop(name, &none));
        }
        assert!(!is_hop_by_hop(b"Content-Length", &none));
        assert!(!is_hop_by_hop(b"X-Forwarded-For", &none));
    }

    // ---- chunked bodies ----

    const CHUNKED: &[u8] = b"5\r\nhello\r\n1A ; name = \"quoted \\\" value\" ;flag\r\nabcdefghijklmnopqrstuvwxyz\r\n0;last=yes\r\nX-Checksum: abc\r\nX-Empty:\r\n\r\n";
    const NEXT: &[u8] = b"GET /next HTTP/1.1\r\n";

    fn scan_all(body: &[u8]) -> Result<Scanned, ChunkError> {
        ChunkedScanner::default().scan(body)
    }

    /// Feeds `input` in pieces ending at `cuts`, stopping at the end of the body.
    fn scan_split(input: &[u8], cuts: &[usize]) -> Result<Scanned, ChunkError> {
        let mut scanner = ChunkedScanner::default();
        let mut consumed = 0;
        for &cut in cuts.iter().chain([input.len()].iter()) {
            if cut < consumed {
                continue;
            }
            let scanned = scanner.scan(&input[consumed..cut])?;
            consumed += scanned.consumed;
            if scanned.done {
                return Ok(Scanned {
                    consumed,
                    done: true,
                });
            }
        }
        Ok(Scanned {
            consumed,
            done: false,
        })
    }

    #[test]
    fn chunked_body_ends_exactly_before_pipelined_bytes() {
        let mut input = CHUNKED.to_vec();
        input.extend_from_slice(NEXT);
        let mut scanner = ChunkedScanner::default();
        assert_eq!(
            scanner.scan(&input),
            Ok(Scanned {
                consumed: CHUNKED.len(),
                done: true
            })
        );
        assert_eq!(scanner.data_len(), 5 + 26);
        assert!(scanner.is_done());
        assert_eq!(
            scanner.scan(NEXT),
            Ok(Scanned {
                consumed: 0,
                done: true
            })
        );
    }

    #[test]
    fn chunked_body_split_at_every_boundary_gives_the_same_result() {
        let mut input = CHUNKED.to_vec();
        input.extend_from_slice(NEXT);
        let whole = scan_all(&input);
        for cut in 0..=input.len() {
            assert_eq!(scan_split(&input, &[cut]), whole, "cut at {cut}");
        }
        let every_byte: Vec<usize> = (0..=input.len()).collect();
        assert_eq!(scan_split(&input, &every_byte), whole);
    }

    #[test]
    fn incomplete_chunked_body_is_not_done() {
        for end in 0..CHUNKED.len() {
            assert_eq!(
                scan_all(&CHUNKED[..end]),
                Ok(Scanned {
                    consumed: end,
                    done: false
                })
            );
        }
    }

    fn assert_chunk_error(body: &[u8], expected: ChunkError) {
        assert_eq!(
            scan_all(body),
            Err(expected),
            "{:?}",
            String::from_utf8_lossy(body)
        );
        let every_byte: Vec<usize> = (0..=body.len()).collect();
        assert_eq!(scan_split(body, &every_byte), Err(expected), "1-byte feeds");
    }

    #[test]
    fn chunk_size_must_be_bare_hex() {
        for body in [
            &b"0x5\r\nhello\r\n0\r\n\r\n"[..],
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"+5\r\nhello\r\n0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"\r\n",
            b"g\r\n",
        ] {
            assert_chunk_error(body, ChunkError::InvalidSize);
        }
    }

    #[test]
    fn chunk_size_over_i64_max_is_rejected() {
        assert_chunk_error(b"8000000000000000\r\n", ChunkError::SizeOverflow);
        assert_chunk_error(b"ffffffffffffffffff\r\n", ChunkError::SizeOverflow);
        // i64::MAX is a size we can count down from.
        assert_eq!(
            scan_all(b"7fffffffffffffff\r\nab"),
            Ok(Scanned {
                consumed: 20,
                done: false
            })
        );
    }

    #[test]
    fn chunk_extensions_must_follow_the_grammar() {
        for body in [
            &b"5;\r\nhello\r\n"[..],
            b"5;a=\r\n",
            b"5;a b\r\n",
            b"5;a=b \r\n",
            b"5;a=\"x\r\n",
            b"5;=b\r\n",
            b"5;a=b=c\r\n",
            b"5;a\0\r\n",
            b"5;a=\"\x01\"\r\n",
        ] {
            assert_chunk_error(body, ChunkError::InvalidExtension);
        }
        for ok in [
            &b"5;a\r\n"[..],
            b"5 ;a\r\n",
            b"5; a = b\r\n",
            b"5;a=\"x;y\\\"\";b\r\n",
        ] {
            assert_eq!(
                scan_all(ok).map(|s| s.consumed),
                Ok(ok.len()),
                "{:?}",
                String::from_utf8_lossy(ok)
            );
        }
    }

    #[test]
    fn chunked_framing_requires_crlf() {
        for body in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello\r0\r\n\r\n",
            b"5\rhello",
            b"0\r\n\n",
            b"0\r\n\rX",
            b"0\r\nX: a\n\r\n",
            b"5\r\nhello\r\n\n",
        ] {
            assert_chunk_error(body, ChunkError::InvalidLineEnding);
        }
    }

    #[test]
    fn trailers_are_as_strict_as_header_fields() {
        for body in [
            &b"0\r\nX: a\r\n b\r\n\r\n"[..],
            b"0\r\n X: a\r\n\r\n",
            b"0\r\nX : a\r\n\r\n",
            b"0\r\nX: a\0\r\n\r\n",
            b"0\r\n: a\r\n\r\n",
            b"0\r\nNoColon\r\n\r\n",
        ] {
            assert_chunk_error(body, ChunkError::InvalidTrailer);
        }
    }

    #[test]
    fn chunk_lines_are_bounded() {
        // max_line counts the CRLF.
        assert_eq!(
            ChunkedScanner::new(8)
                .scan(b"000001\r\n")
                .map(|s| s.consumed),
            Ok(8)
        );
        assert_eq!(
            ChunkedScanner::new(8).scan(b"0000001\r\n"),
            Err(ChunkError::LineTooLong)
        );
        let mut long_size = vec![b'0'; DEFAULT_MAX_CHUNK_LINE];
        long_size.extend_from_slice(b"1\r\n");
        assert_chunk_error(&long_size, ChunkError::LineTooLong);
        let mut long_trailer = b"0\r\nX: ".to_vec();
        long_trailer.resize(3 + DEFAULT_MAX_CHUNK_LINE + 1, b'v');
        assert_chunk_error(&long_trailer, ChunkError::LineTooLong);
        // Long chunk *data* is not a line.
        let mut big = b"10000\r\n".to_vec();
        big.resize(7 + 0x10000, b'd');
        big.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(
            scan_all(&big),
            Ok(Scanned {
                consumed: big.len(),
                done: true
            })
        );
    }

    #[test]
    fn decode_yields_the_chunk_data_whatever_the_read_boundaries() {
        let mut input = CHUNKED.to_vec();
        input.extend_from_slice(NEXT);
        for step in 1..=input.len() {
            let mut scanner = ChunkedScanner::default();
            let mut data = Vec::new();
            let mut consumed = 0;
            for piece in input.chunks(step) {
                let scanned = scanner
                    .decode(piece, &mut data)
                    .expect("valid chunked body");
                consumed += scanned.consumed;
                if scanned.done {
                    break;
                }
            }
            assert!(scanner.is_done(), "step {step}");
            assert_eq!(consumed, CHUNKED.len(), "step {step}");
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
            assert_eq!(scanner.data_len(), data.len() as u64, "step {step}");
        }
    }

    #[test]
    fn trailers_come_out_as_received_whatever_the_read_boundaries() {
        let body =
            b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\n\r\n";
        for step in 1..=body.len() {
            let mut scanner = ChunkedScanner::default();
            let (mut data, mut trailers) = (Vec::new(), Vec::new());
            for piece in body.chunks(step) {
                scanner
                    .decode_with_trailers(piece, &mut data, &mut trailers)
                    .expect("valid chunked body");
            }
            assert!(scanner.is_done(), "step {step}");
            assert_eq!(data, b"hello, world", "step {step}");
            assert_eq!(
                trailers, b"grpc-status: 0\r\ngrpc-message: ok\r\n\r\n",
                "step {step}"
            );
        }
        let (mut data, mut trailers) = (Vec::new(), Vec::new());
        let scanned = ChunkedScanner::default()
            .decode_with_trailers(b"3\r\nabc\r\n0\r\n\r\nNEXT", &mut data, &mut trailers)
            .expect("valid chunked body");
        assert!(scanned.done);
        assert_eq!(
            (data.as_slice(), trailers.as_slice()),
            (&b"abc"[..], &b"\r\n"[..])
        );
    }

    #[test]
    fn decode_validates_exactly_like_scan() {
        for body in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"5;a b\r\n",
            b"0\r\nX : a\r\n\r\n",
            b"8000000000000000\r\n",
        ] {
            let mut data = Vec::new();
            assert_eq!(
                ChunkedScanner::default().decode(body, &mut data),
                scan_all(body),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn declared_len_counts_a_chunk_from_its_size_line() {
        let mut scanner = ChunkedScanner::default();
        assert_eq!(scanner.declared_len(), 0);
        // Half a size line declares nothing yet.
        assert!(scanner.scan(b"FFFFF").is_ok());
        assert_eq!(scanner.declared_len(), 0);
        assert!(scanner.scan(b"FFFFF\r\nab").is_ok());
        assert_eq!(scanner.declared_len(), 0xFF_FFFF_FFFF);
        assert_eq!(scanner.data_len(), 2);
        let mut done = ChunkedScanner::default();
        assert!(done.scan(b"2\r\nab\r\n0\r\n\r\n").is_ok());
        assert_eq!((done.declared_len(), done.data_len()), (2, 2));
    }

    #[test]
    fn chunk_errors_are_sticky() {
        let mut scanner = ChunkedScanner::default();
        assert_eq!(scanner.scan(b"z"), Err(ChunkError::InvalidSize));
        assert_eq!(scanner.scan(b"0\r\n\r\n"), Err(ChunkError::InvalidSize));
        assert_eq!(ChunkError::InvalidSize.status(), 400);
    }
}
