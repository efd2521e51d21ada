//! One call to an AI provider over HTTP/1.1: the request in the provider's own terms (its
//! path, its credential header, the body already in its API), the response head, and the
//! response body read piece by piece, framing removed, so that the AI flow can parse JSON
//! or SSE out of it. Connections come from and go back to the worker's pool like any other
//! upstream's.
//!
//! Never here: which provider to call (the AI flow's fallback order), what the body means
//! (translation, metering, masking). Client credentials never reach this module's output:
//! the forwarded header block is filtered of every provider and gateway credential header
//! before the gateway's own is added.

use std::io;
use std::time::Duration;

use shardgate_core::ai::config::{Credentials, Provider};
use shardgate_core::http1::{BodyKind, ChunkedScanner, Parse, parse_response};
use shardgate_core::snapshot::{CompiledTarget, CompiledUpstream};

use crate::deadline::Timer;
use crate::forward::{self, Failure};
use crate::plane::Plane;
use crate::timed;
use crate::tls::{self, Conn, TlsFailure};
use crate::wire;

/// The Anthropic API version the gateway speaks when it translates (and when a native
/// client sent none).
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// The largest provider response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// Why a call failed before a response head arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallFailure {
    Connect,
    Tls(TlsFailure),
    Timeout,
    /// The connection closed or failed before the head.
    Reset,
    /// The head was not HTTP.
    Invalid,
}

/// A provider's answer whose head has been read.
#[derive(Debug)]
pub struct Answer {
    pub up: Conn,
    pub status: u16,
    /// `Content-Type: text/event-stream`.
    pub event_stream: bool,
    /// The provider allows the connection to be kept.
    pub keep_alive: bool,
    /// Body bytes read with the head, not yet decoded.
    raw: Vec<u8>,
    framing: Framing,
    pool_key: u64,
}

#[derive(Debug)]
enum Framing {
    Length(u64),
    Chunked(ChunkedScanner),
    Close,
    Done,
}

/// Where a call goes: one target of one upstream, and how the pool keys it.
#[derive(Debug, Clone, Copy)]
pub struct Dialed<'a> {
    pub upstream: &'a CompiledUpstream,
    pub index: usize,
}

/// What the call sends besides its body.
#[derive(Debug)]
pub struct Outgoing<'a> {
    pub provider: Provider,
    pub credentials: Option<&'a Credentials>,
    /// The provider model (Azure's deployment defaults to it).
    pub model: &'a str,
    pub stream: bool,
    /// The client's forwarded header block (`Name: value\r\n` lines, as `rewrite` prepared
    /// them); filtered here.
    pub forwarded: &'a [u8],
    /// The client's `anthropic-version`, passed on to Anthropic when the client speaks its
    /// API natively.
    pub anthropic_version: Option<&'a [u8]>,
    pub request_id: &'a [u8],
}

/// Headers of the client's request that never go to a provider: credentials (the gateway
/// injects its own), the framing and content negotiation the gateway restates, and
/// provider account selectors that belong to the client's own account.
fn withheld(name: &[u8]) -> bool {
    const WITHHELD: [&[u8]; 14] = [
        b"authorization",
        b"x-api-key",
        b"api-key",
        b"x-tg-api-key",
        b"proxy-authorization",
        b"cookie",
        b"content-length",
        b"content-type",
        b"transfer-encoding",
        b"accept",
        b"accept-encoding",
        b"anthropic-version",
        b"openai-organization",
        b"openai-project",
    ];
    WITHHELD.iter().any(|w| name.eq_ignore_ascii_case(w))
}

/// The request head for `out` (`body_len` bytes of JSON follow).
pub fn request_head(out: &mut Vec<u8>, target: &CompiledTarget, o: &Outgoing<'_>, body_len: usize) {
    out.extend_from_slice(b"POST ");
    match o.provider {
        Provider::OpenAi | Provider::OpenAiCompatible => {
            out.extend_from_slice(b"/v1/chat/completions");
        }
        Provider::Anthropic => out.extend_from_slice(b"/v1/messages"),
        Provider::AzureOpenAi => {
            let c = o.credentials;
            let deployment = c.and_then(|c| c.deployment.as_deref()).unwrap_or(o.model);
            out.extend_from_slice(b"/openai/deployments/");
            // Validation keeps configured deployments to [A-Za-z0-9._-]; a model name used
            // in its place is percent-encoded.
            for b in deployment.bytes() {
                if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                    out.push(b);
                } else {
                    out.extend_from_slice(format!("%{b:02X}").as_bytes());
                }
            }
            out.extend_from_slice(b"/chat/completions?api-version=");
            let version = c.and_then(|c| c.api_version.as_deref()).unwrap_or_default();
            out.extend_from_slice(version.as_bytes());
        }
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    wire::push_header(out, b"Host", target.host_header.as_bytes());
    wire::push_header(out, b"Content-Type", b"application/json");
    out.extend_from_slice(b"Content-Length: ");
    wire::push_decimal(out, body_len as u64);
    out.extend_from_slice(b"\r\n");
    let accept: &[u8] = if o.stream {
        b"text/event-stream"
    } else {
        b"application/json"
    };
    wire::push_header(out, b"Accept", accept);
    let key = o
        .credentials
        .and_then(|c| c.api_key.as_ref())
        .map(|k| k.0.as_bytes());
    match (o.provider, key) {
        (Provider::OpenAi | Provider::OpenAiCompatible, Some(key)) => {
            out.extend_from_slice(b"Authorization: Bearer ");
            out.extend_from_slice(key);
            out.extend_from_slice(b"\r\n");
        }
        (Provider::AzureOpenAi, Some(key)) => wire::push_header(out, b"api-key", key),
        (Provider::Anthropic, Some(key)) => wire::push_header(out, b"x-api-key", key),
        (_, None) => {}
    }
    if o.provider == Provider::Anthropic {
        let version = o
            .anthropic_version
            .filter(|v| v.iter().all(|b| b.is_ascii_graphic()))
            .unwrap_or(ANTHROPIC_VERSION.as_bytes());
        wire::push_header(out, b"anthropic-version", version);
    }
    if !o.request_id.is_empty() {
        wire::push_header(out, b"X-Request-Id", o.request_id);
    }
    for line in o.forwarded.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = &line[..colon];
        if withheld(name) || name.eq_ignore_ascii_case(b"x-request-id") {
            continue;
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Sends `request` (head and body) to the target and reads the response head. A pooled
/// connection that turns out closed is replaced by a fresh one once (nothing was answered,
/// and a chat request sent twice on a dead connection was never received).
pub async fn call(
    plane: &Plane,
    dialed: Dialed<'_>,
    request: Vec<u8>,
    timer: &Timer,
    bound: impl Fn(Duration) -> Duration,
) -> Result<Answer, CallFailure> {
    let upstream = dialed.upstream;
    let Some(configured) = upstream.targets.get(dialed.index) else {
        return Err(CallFailure::Connect);
    };
    let dial = tls::dial(
        plane.upstream_tls.as_ref(),
        upstream,
        configured,
        dialed.index,
    );
    let target = dial.target();
    let spec = &upstream.spec.spec;
    let open = || async {
        let timeout = bound(spec.connect_timeout.as_duration());
        match forward::connect(target, timeout, dial.client()).await {
            Ok(conn) => Ok(conn),
            Err(Failure::Tls(f)) => Err(CallFailure::Tls(f)),
            Err(_) => Err(CallFailure::Connect),
        }
    };
    let mut request = request;
    let mut pooled = plane.upstreams.take(target.key);
    loop {
        let reused = pooled.is_some();
        let mut up = match pooled.take() {
            Some(conn) => conn,
            None => open().await?,
        };
        let write_timeout = bound(spec.write_timeout.as_duration());
        let (res, back) = timed::write_all(&mut up, request, write_timeout, timer).await;
        request = back;
        if res.is_err() {
            if reused && !request.is_empty() {
                continue;
            }
            return Err(CallFailure::Reset);
        }
        match read_head(
            plane,
            &mut up,
            timer,
            &bound,
            spec.read_timeout.as_duration(),
        )
        .await
        {
            Ok((status, raw, head_len, framing, event_stream, keep_alive)) => {
                let mut raw = raw;
                raw.drain(..head_len);
                return Ok(Answer {
                    up,
                    status,
                    event_stream,
                    keep_alive,
                    raw,
                    framing,
                    pool_key: target.key,
                });
            }
            // Nothing came back on a pooled connection: it was closed while idle.
            Err((CallFailure::Reset, true)) if reused && !request.is_empty() => {}
            Err((failure, _)) => return Err(failure),
        }
    }
}

type Head = (u16, Vec<u8>, usize, Framing, bool, bool);

/// Reads a response head (interim 1xx skipped). The error's flag: nothing at all was read.
async fn read_head(
    plane: &Plane,
    up: &mut Conn,
    timer: &Timer,
    bound: &impl Fn(Duration) -> Duration,
    read_timeout: Duration,
) -> Result<Head, (CallFailure, bool)> {
    let limits = &plane.settings.head_limits;
    let mut buf = Vec::with_capacity(4096);
    loop {
        if !buf.is_empty() {
            match parse_response(&buf, false, limits) {
                Ok(Parse::Complete(head)) if head.is_interim() => {
                    buf.drain(..head.head_len);
                    continue;
                }
                Ok(Parse::Complete(head)) => {
                    let framing = match head.body {
                        BodyKind::None | BodyKind::Length(0) => Framing::Done,
                        BodyKind::Length(n) => Framing::Length(n),
                        BodyKind::Chunked => Framing::Chunked(ChunkedScanner::default()),
                        BodyKind::CloseDelimited => Framing::Close,
                    };
                    let event_stream = head.header(&buf, "content-type").is_some_and(|v| {
                        v.len() >= 17 && v[..17].eq_ignore_ascii_case(b"text/event-stream")
                    });
                    let keep_alive = head.keep_alive && !matches!(framing, Framing::Close);
                    let head_len = head.head_len;
                    return Ok((
                        head.status,
                        buf,
                        head_len,
                        framing,
                        event_stream,
                        keep_alive,
                    ));
                }
                Ok(Parse::Partial) if buf.len() > MAX_HEAD => {
                    return Err((CallFailure::Invalid, false));
                }
                Ok(Parse::Partial) => {}
                Err(_) => return Err((CallFailure::Invalid, false)),
            }
        }
        let (res, back) = timed::read(up, buf, bound(read_timeout), timer).await;
        buf = back;
        match res {
            Ok(0) => return Err((CallFailure::Reset, buf.is_empty())),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err((CallFailure::Timeout, false));
            }
            Err(e) => {
                let failure = match tls::failure_in(&e) {
                    Some(tls) if buf.is_empty() => CallFailure::Tls(tls),
                    _ => CallFailure::Reset,
                };
                return Err((failure, buf.is_empty()));
            }
        }
    }
}

impl Answer {
    /// Appends the next body bytes (framing removed) to `out`; `Ok(true)` once the body has
    /// ended. Waits for the provider at most `timeout`.
    pub async fn read_body(
        &mut self,
        out: &mut Vec<u8>,
        timeout: Duration,
        timer: &Timer,
    ) -> io::Result<bool> {
        loop {
            if !self.raw.is_empty() || matches!(self.framing, Framing::Done) {
                let before = out.len();
                let ended = self.decode(out)?;
                if ended || out.len() > before {
                    return Ok(ended);
                }
            }
            let raw = std::mem::take(&mut self.raw);
            let (res, back) = timed::read(&mut self.up, raw, timeout, timer).await;
            self.raw = back;
            match res {
                Ok(0) if matches!(self.framing, Framing::Close) => {
                    self.framing = Framing::Done;
                    return Ok(true);
                }
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads the whole body, at most `max` bytes.
    pub async fn read_all(
        &mut self,
        max: usize,
        timeout: Duration,
        timer: &Timer,
    ) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let ended = self.read_body(&mut body, timeout, timer).await?;
            if body.len() > max {
                return Err(io::Error::other("provider response too large"));
            }
            if ended {
                return Ok(body);
            }
        }
    }

    fn decode(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        match &mut self.framing {
            Framing::Done => {
                self.raw.clear();
                Ok(true)
            }
            Framing::Length(left) => {
                let take = (*left).min(self.raw.len() as u64) as usize;
                out.extend_from_slice(&self.raw[..take]);
                self.raw.drain(..take);
                *left -= take as u64;
                if *left == 0 {
                    self.framing = Framing::Done;
                    return Ok(true);
                }
                Ok(false)
            }
            Framing::Chunked(scanner) => {
                let scanned = scanner
                    .decode(&self.raw, out)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                self.raw.drain(..scanned.consumed);
                if scanned.done {
                    self.framing = Framing::Done;
                    return Ok(true);
                }
                Ok(false)
            }
            Framing::Close => {
                out.extend_from_slice(&self.raw);
                self.raw.clear();
                Ok(false)
            }
        }
    }

    /// Gives the connection back to the pool when its response was read to the end.
    pub fn finish(self, plane: &Plane, upstream: &CompiledUpstream) {
        if matches!(self.framing, Framing::Done) && self.raw.is_empty() && self.keep_alive {
            let pool = &upstream.spec.spec.pool;
            plane.upstreams.put(
                self.pool_key,
                self.up,
                pool.max_idle as usize,
                pool.idle_timeout.as_duration(),
            );
        }
    }
}
