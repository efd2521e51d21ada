//! Respond: what the client receives. The upstream's response, relayed
//! ([`relay_response`]: its head rewritten — hop-by-hop fields dropped, `pre_response`
//! plugin headers applied, `Via` appended — then its body streamed one read at a time, a
//! close-delimited body re-framed as chunked so the client connection can be kept), or the
//! gateway's own answer ([`reject`], from a [`Refusal`]).

use std::io;

use shardgate_core::http1::{BodyKind, ChunkedScanner, RequestHead, ResponseHead, is_hop_by_hop};
use shardgate_core::plugins::PluginSettings;
use shardgate_core::router::Method;
use shardgate_core::snapshot::{CompiledTarget, CompiledUpstream};

use crate::exchange::{Client, Outcome, Tunnel, UpstreamRequest};
use crate::plane::{Plane, WorkerContext};
use crate::plugins::Effects;
use crate::refusal::Refusal;
use crate::timed;
use crate::tls::Conn;
use crate::vectored::HeadAndBody;
use crate::wire;

/// Why relaying a response failed before the client saw any of it, or could be told more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relay {
    /// The client went away or stalled.
    ClientGone,
    /// The start of the response body is malformed (nothing was sent yet).
    InvalidResponse,
}

/// An upstream's answer whose head has been read: its connection, the bytes read so far
/// (the head and perhaps the start of the body) and the parsed head.
#[derive(Debug)]
pub struct Answer<'h> {
    pub up: Conn,
    pub rbuf: Vec<u8>,
    pub head: &'h ResponseHead,
}

/// Answers with the gateway's own response for `refusal`, with the headers earlier plugins
/// promised (rate-limit, CORS). The connection is kept only when the request had no body
/// left to read (it would otherwise be taken for the next request).
pub async fn reject(
    client: &mut Client,
    head: &RequestHead,
    refusal: Refusal,
    effects: &Effects,
) -> io::Result<Outcome> {
    let bodyless = matches!(head.body, BodyKind::None | BodyKind::Length(0));
    let keep_alive = head.keep_alive && bodyless;
    let is_head = head.method == Some(Method::Head);
    client.consume(head.head_len);
    refuse(client, refusal, effects, !keep_alive, is_head).await?;
    if !keep_alive {
        client.linger().await;
    }
    Ok(Outcome::Done { keep_alive })
}

/// Writes the response for `refusal` with `effects`' headers. `close`: the connection ends
/// after it. `head_only`: the request was HEAD.
pub async fn refuse(
    client: &mut Client,
    refusal: Refusal,
    effects: &Effects,
    close: bool,
    head_only: bool,
) -> io::Result<()> {
    let mut error = refusal.response();
    error.headers.extend(effects.header_pairs());
    client.send_error(&error, close, head_only).await
}

/// Writes the client's response head for `head` into `out` (also for answers of HTTP/2
/// upstreams, whose head `crate::h2upstream` writes as HTTP/1.1 first).
pub(crate) fn client_head(
    out: &mut Vec<u8>,
    head: &ResponseHead,
    rbuf: &[u8],
    req: &UpstreamRequest,
    effects: &Effects,
    keep_alive: bool,
    rechunk: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    wire::push_decimal(out, u64::from(head.status));
    out.push(b' ');
    let reason = head.reason.get(rbuf);
    if reason.is_empty() {
        out.extend_from_slice(wire::reason(head.status).as_bytes());
    } else {
        out.extend_from_slice(reason);
    }
    out.extend_from_slice(b"\r\n");
    let connection = head.connection_tokens(rbuf);
    let mut via: Option<&[u8]> = None;
    let mut upgrade_value: Option<&[u8]> = None;
    // Headers the plugins set replace the upstream's (Vary is merged instead).
    let overridden = |name: &[u8]| {
        (effects.owns_cors
            && name.len() > 15
            && name[..15].eq_ignore_ascii_case(b"access-control-"))
            || (!name.eq_ignore_ascii_case(b"vary")
                && effects
                    .response_headers
                    .iter()
                    .any(|(n, _)| name.eq_ignore_ascii_case(n.as_bytes())))
    };
    let mut listed: Option<Vec<(String, String)>> =
        (!effects.response_transforms.is_empty()).then(Vec::new);
    for (name, value) in head.headers(rbuf) {
        if name.eq_ignore_ascii_case(b"via") {
            via = Some(value);
            continue;
        }
        // The gateway's id replaces one the upstream sent back (the same one, usually).
        if name.eq_ignore_ascii_case(b"x-request-id") {
            continue;
        }
        if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade_value = Some(value);
        }
        let keep_length =
            name.eq_ignore_ascii_case(b"content-length") && head.body == BodyKind::None;
        if (is_hop_by_hop(name, &connection) || name.eq_ignore_ascii_case(b"content-length"))
            && !keep_length
        {
            continue;
        }
        if overridden(name) {
            continue;
        }
        match &mut listed {
            Some(list) => list.push((
                String::from_utf8_lossy(name).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            )),
            None => wire::push_header(out, name, value),
        }
    }
    if listed.is_none() {
        effects.rate_limit.write(out);
    }
    for (name, value) in &effects.response_headers {
        match &mut listed {
            Some(list) => list.push(((*name).to_owned(), value.clone())),
            None => wire::push_header(out, name.as_bytes(), value.as_bytes()),
        }
    }
    if let Some(mut list) = listed {
        list.extend(
            effects
                .rate_limit
                .pairs()
                .into_iter()
                .map(|(n, v)| (n.to_owned(), v)),
        );
        for t in &effects.response_transforms {
            if let PluginSettings::ResponseTransformer(t) = &**t {
                t.apply(&mut list);
            }
        }
        for (name, value) in &list {
            wire::push_header(out, name.as_bytes(), value.as_bytes());
        }
    }
    if !req.request_id.is_empty() {
        wire::push_header(out, b"X-Request-Id", req.request_id.as_bytes());
    }
    out.extend_from_slice(b"Via: ");
    if let Some(v) = via {
        out.extend_from_slice(v);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(b"1.1 shardgate\r\n");
    match head.body {
        BodyKind::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            wire::push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyKind::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        BodyKind::CloseDelimited if rechunk => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        BodyKind::CloseDelimited | BodyKind::None => {}
    }
    if head.status == 101 {
        out.extend_from_slice(b"Connection: Upgrade\r\n");
        if let Some(v) = upgrade_value {
            out.extend_from_slice(b"Upgrade: ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
    } else if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if req.http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the client's head `out` and then `rbuf[send]` (body bytes that came with the
/// upstream's head), and gives both buffers back to their pools. On plain TCP that is one
/// vectored write from the buffers as they are; otherwise the head buffer takes what fits
/// of the body bytes and the rest follows in a second write, so a big first read never
/// grows the buffer out of its pool.
async fn send_head(
    client: &mut Client,
    mut out: Vec<u8>,
    rbuf: Vec<u8>,
    send: std::ops::Range<usize>,
    plane: &Plane,
) -> std::io::Result<()> {
    if client.takes_vectored() && !send.is_empty() {
        let write = HeadAndBody::new(&plane.vectors, out, rbuf, send);
        let (written, back) = client.write_head_and_body(write).await;
        if let Some(back) = back {
            let (out, rbuf) = back.into_parts(&plane.vectors);
            plane.replies.give(out);
            plane.heads.give(rbuf);
        }
        return written;
    }
    let fit = send.len().min(out.capacity() - out.len());
    out.extend_from_slice(&rbuf[send.start..send.start + fit]);
    let spill = send.start + fit..send.end;
    let (mut written, mut out) = client.write_returning(out).await;
    if written.is_ok() && !spill.is_empty() {
        out.clear();
        out.extend_from_slice(&rbuf[spill]);
        (written, out) = client.write_returning(out).await;
    }
    plane.heads.give(rbuf);
    plane.replies.give(out);
    written
}

/// Streams the response to the client and parks the upstream connection when it is clean.
pub async fn relay_response(
    client: &mut Client,
    answer: Answer<'_>,
    req: &UpstreamRequest,
    (upstream, target): (&CompiledUpstream, &CompiledTarget),
    ctx: &WorkerContext,
    effects: &Effects,
) -> Result<Outcome, Relay> {
    let Answer { mut up, rbuf, head } = answer;
    client.note(|t| t.obs.status = head.status);
    let plane = ctx.plane();
    let spec = &upstream.spec.spec;
    let read_timeout = spec.read_timeout.as_duration();
    let upgraded = head.status == 101 && req.upgrade;
    let rechunk = head.body == BodyKind::CloseDelimited && !req.http10;
    let framed = !matches!(head.body, BodyKind::CloseDelimited) || rechunk;
    let keep_alive = !upgraded && framed && req.client_keep_alive && !ctx.shutdown().is_triggered();

    // A reply buffer: a head buffer's worth of read plus room for the head to grow (the
    // gateway's own headers), so a full first read goes out in one write.
    let mut out = plane.replies.take();
    client_head(&mut out, head, &rbuf, req, effects, keep_alive, rechunk);
    let prefix = &rbuf[head.head_len..];

    if upgraded {
        out.clear();
        client_head(&mut out, head, &rbuf, req, effects, false, false);
        let to_client = prefix.to_vec();
        plane.heads.give(rbuf);
        client.write(out).await.map_err(|_| Relay::ClientGone)?;
        return Ok(Outcome::Upgrade(Tunnel {
            upstream: up,
            to_client,
        }));
    }

    // What of the prefix belongs to this body (`send`, a range of `rbuf` that goes out
    // right behind the head), and how the rest is read.
    let mut send = 0..0;
    let mut clean;
    let mut scanner = ChunkedScanner::default();
    let mut remaining: u64 = 0;
    let mut body_done;
    match head.body {
        BodyKind::None => {
            clean = prefix.is_empty();
            body_done = true;
        }
        BodyKind::Length(n) => {
            let take = (prefix.len() as u64).min(n) as usize;
            clean = take == prefix.len();
            remaining = n - take as u64;
            send = head.head_len..head.head_len + take;
            body_done = remaining == 0;
        }
        BodyKind::Chunked => match scanner.scan(prefix) {
            Ok(scanned) => {
                clean = scanned.consumed == prefix.len();
                send = head.head_len..head.head_len + scanned.consumed;
                body_done = scanned.done;
            }
            Err(_) => {
                plane.replies.give(out);
                plane.heads.give(rbuf);
                return Err(Relay::InvalidResponse);
            }
        },
        BodyKind::CloseDelimited => {
            clean = false;
            if !prefix.is_empty() {
                if rechunk {
                    wire::push_chunk_size(&mut out, prefix.len());
                    out.extend_from_slice(prefix);
                    out.extend_from_slice(b"\r\n");
                } else {
                    send = head.head_len..rbuf.len();
                }
            }
            body_done = false;
        }
    }
    let written = send_head(client, out, rbuf, send, plane).await;
    written.map_err(|_| Relay::ClientGone)?;

    let mut chunk = plane.bodies.take();
    let mut framed_out = Vec::new();
    while !body_done {
        chunk.clear();
        // The service deadline bounds every read: past it, the client connection is closed.
        let (res, returned) =
            timed::read(&mut up, chunk, req.bounded(read_timeout), &client.timer).await;
        chunk = returned;
        let n = match res {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, target = %target.host_header, "upstream failed mid-body; closing the client connection");
                return Ok(Outcome::Done { keep_alive: false });
            }
        };
        if n == 0 {
            if head.body == BodyKind::CloseDelimited {
                if rechunk {
                    client
                        .write(b"0\r\n\r\n".to_vec())
                        .await
                        .map_err(|_| Relay::ClientGone)?;
                }
                plane.bodies.give(chunk);
                return Ok(Outcome::Done { keep_alive });
            }
            tracing::debug!(target = %target.host_header, "upstream closed mid-body; closing the client connection");
            return Ok(Outcome::Done { keep_alive: false });
        }
        match head.body {
            BodyKind::Length(_) => {
                let take = (n as u64).min(remaining) as usize;
                clean &= take == n;
                remaining -= take as u64;
                chunk.truncate(take);
                body_done = remaining == 0;
            }
            BodyKind::Chunked => match scanner.scan(&chunk) {
                Ok(scanned) => {
                    clean &= scanned.consumed == n;
                    chunk.truncate(scanned.consumed);
                    body_done = scanned.done;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "invalid chunked body from upstream");
                    return Ok(Outcome::Done { keep_alive: false });
                }
            },
            _ if rechunk => {
                framed_out.clear();
                wire::push_chunk_size(&mut framed_out, n);
                framed_out.extend_from_slice(&chunk);
                framed_out.extend_from_slice(b"\r\n");
                std::mem::swap(&mut framed_out, &mut chunk);
            }
            _ => {}
        }
        let (res, returned) = client.write_returning(chunk).await;
        chunk = returned;
        if res.is_err() {
            return Err(Relay::ClientGone);
        }
    }
    plane.bodies.give(chunk);

    if clean && head.keep_alive && !req.http10 {
        let pool = &spec.pool;
        plane.upstreams.put(
            target.key,
            up,
            pool.max_idle as usize,
            pool.idle_timeout.as_duration(),
        );
    }
    Ok(Outcome::Done { keep_alive })
}
