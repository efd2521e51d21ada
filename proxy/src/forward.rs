//! Forward: send the request to a target, stream its body up, stream the response back.
//!
//! Attempts and retries: a target is picked by the upstream's balancer; a connect failure
//! moves on to another target (any method: nothing was sent); a 502/503 answer or a
//! timeout before the response head moves on only for idempotent requests whose whole body
//! is still in hand (RFC 9110 §9.2.2), and only while attempts remain — the last attempt's
//! answer is relayed as it is. When every target of the service's upstream is down or
//! tried, its fallback upstreams are tried in order.
//!
//! Bodies are never buffered whole: request bodies stream client → upstream and responses
//! upstream → client one read at a time (so SSE events pass as they are produced), chunked
//! framing passes through byte-exact after [`ChunkedScanner`] validation, and a
//! close-delimited upstream body is re-framed as chunked for HTTP/1.1 clients so their
//! connection can be kept.

use std::io;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use shardgate_core::http1::{
    BodyKind, ChunkedScanner, Parse, ResponseHead, is_hop_by_hop, parse_response,
};
use shardgate_core::plugins::PluginSettings;
use shardgate_core::snapshot::{CompiledService, CompiledTarget, CompiledUpstream};

use crate::connection::Client;
use crate::plane::WorkerContext;
use crate::plugins::Effects;
use crate::request::{Outcome, UpstreamRequest};
use crate::respond::{self, ErrorResponse};

/// A connection that switched protocols, for the connection loop to tunnel.
#[derive(Debug)]
pub struct Tunnel {
    pub upstream: TcpStream,
    /// Bytes the upstream sent after its 101 head.
    pub to_client: Vec<u8>,
}

/// Why an attempt failed.
enum Failure {
    /// Nothing reached the upstream (connect failed or timed out).
    Connect,
    /// The upstream failed before its response head reached the client.
    Upstream {
        status: u16,
        message: &'static str,
        retryable: bool,
    },
    /// The client went away or stalled; nothing more can be told to it.
    ClientGone,
    /// The streamed request body passed the body limit (413).
    BodyTooLarge,
}

/// Where the request body stands before the first attempt.
struct BodyPlan {
    /// Body bytes available in the client buffer right after the head.
    in_buffer: usize,
    /// The whole body is in the buffer, so the request can be sent again.
    replayable: bool,
    /// Chunked: the scanner's state after the buffered bytes.
    scanner: Option<ChunkedScanner>,
    /// Content-Length: bytes still to read from the client.
    remaining: u64,
}

fn plan_body(body: BodyKind, available: &[u8]) -> Result<BodyPlan, ErrorResponse> {
    match body {
        BodyKind::None | BodyKind::CloseDelimited | BodyKind::Length(0) => Ok(BodyPlan {
            in_buffer: 0,
            replayable: true,
            scanner: None,
            remaining: 0,
        }),
        BodyKind::Length(n) => {
            let have = (available.len() as u64).min(n);
            Ok(BodyPlan {
                in_buffer: have as usize,
                replayable: have == n,
                scanner: None,
                remaining: n - have,
            })
        }
        BodyKind::Chunked => {
            let mut scanner = ChunkedScanner::default();
            let scanned = scanner.scan(available).map_err(|e| {
                ErrorResponse::new(e.status(), format!("invalid chunked body: {e}"))
            })?;
            Ok(BodyPlan {
                in_buffer: scanned.consumed,
                replayable: scanned.done,
                scanner: Some(scanner),
                remaining: 0,
            })
        }
    }
}

/// Forwards one prepared request to `service`, with retries and fallbacks.
pub async fn forward(
    client: &mut Client,
    req: UpstreamRequest,
    service: &CompiledService,
    ctx: &WorkerContext,
    effects: Effects,
    body_limit: u64,
) -> io::Result<Outcome> {
    let plane = ctx.plane();
    let body_start = req.head_len.min(client.buf.len());
    let planned = match plan_body(req.body, &client.buf[body_start..]) {
        // A chunked body already in hand is held to the limit here: it is never streamed.
        Ok(plan)
            if plan
                .scanner
                .as_ref()
                .is_some_and(|s| s.data_len() > body_limit) =>
        {
            Err(ErrorResponse::new(
                413,
                format!("request body exceeds {body_limit} bytes"),
            ))
        }
        other => other,
    }
    .map_err(|mut e| {
        e.headers.extend(effects.header_pairs());
        e
    });
    let mut plan = match planned {
        Ok(plan) => plan,
        Err(e) => {
            client.consume(client.buf.len());
            client.send_error(&e, true, req.is_head).await?;
            client.linger().await;
            return Ok(Outcome::Done { keep_alive: false });
        }
    };
    let max_attempts = 1 + service.spec.spec.retries as usize;
    let mut attempts = 0usize;
    let mut last: Option<(u16, &'static str)> = None;
    let mut streamed = false;

    'upstreams: for upstream in &service.upstreams {
        let mut tried = [usize::MAX; 12];
        let mut tried_len = 0;
        while attempts < max_attempts && tried_len < tried.len() {
            let Some(i) = plane.picker.target(upstream, req.hash, &tried[..tried_len]) else {
                continue 'upstreams;
            };
            tried[tried_len] = i;
            tried_len += 1;
            attempts += 1;
            let Some(target) = upstream.targets.get(i) else {
                continue;
            };
            let last_attempt = attempts >= max_attempts;
            plane.picker.started(upstream, i);
            let result = attempt(
                client,
                &req,
                &mut plan,
                &mut streamed,
                (upstream, target),
                last_attempt,
                ctx,
                (&effects, body_limit),
            )
            .await;
            plane.picker.finished(upstream, i);
            match result {
                Ok(outcome) => {
                    plane.picker.report(upstream, i, true);
                    return Ok(outcome);
                }
                Err(Failure::Connect) => {
                    plane.picker.report(upstream, i, false);
                    last = Some((502, "upstream connection failed"));
                }
                Err(Failure::Upstream {
                    status,
                    message,
                    retryable,
                }) => {
                    plane.picker.report(upstream, i, false);
                    last = Some((status, message));
                    if !retryable {
                        break 'upstreams;
                    }
                }
                Err(Failure::ClientGone) => return Ok(Outcome::Done { keep_alive: false }),
                Err(Failure::BodyTooLarge) => {
                    let mut e =
                        ErrorResponse::new(413, format!("request body exceeds {body_limit} bytes"));
                    e.headers.extend(effects.header_pairs());
                    client.buf.clear();
                    client.send_error(&e, true, req.is_head).await?;
                    return Ok(Outcome::Done { keep_alive: false });
                }
            }
        }
        if attempts >= max_attempts {
            break;
        }
    }

    let (status, message) = last.unwrap_or((503, "no healthy upstream target"));
    let keep_alive = !streamed && req.client_keep_alive && !req.http10 && plan.replayable;
    let consumed = body_start + if streamed { 0 } else { plan.in_buffer };
    client.consume(consumed.min(client.buf.len()));
    let mut error = ErrorResponse::new(status, message);
    error.headers.extend(effects.header_pairs());
    client.send_error(&error, !keep_alive, req.is_head).await?;
    Ok(Outcome::Done { keep_alive })
}

async fn connect(target: &CompiledTarget, timeout: Duration) -> Result<TcpStream, Failure> {
    let addr = target.addr.ok_or(Failure::Connect)?;
    match monoio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "upstream connect failed");
            Err(Failure::Connect)
        }
        Err(_) => {
            tracing::debug!(%addr, "upstream connect timed out");
            Err(Failure::Connect)
        }
    }
}

async fn write_upstream(
    up: &mut TcpStream,
    buf: Vec<u8>,
    timeout: Duration,
) -> (io::Result<()>, Vec<u8>) {
    match monoio::time::timeout(timeout, up.write_all(buf)).await {
        Ok((Ok(_), buf)) => (Ok(()), buf),
        Ok((Err(e), buf)) => (Err(e), buf),
        Err(_) => (Err(io::ErrorKind::TimedOut.into()), Vec::new()),
    }
}

async fn read_upstream(
    up: &mut TcpStream,
    buf: Vec<u8>,
    timeout: Duration,
) -> (io::Result<usize>, Vec<u8>) {
    use monoio::buf::IoBufMut;
    let mut buf = buf;
    if buf.len() == buf.capacity() {
        buf.reserve(4096);
    }
    let len = buf.len();
    let cap = buf.capacity();
    match monoio::time::timeout(timeout, up.read(buf.slice_mut(len..cap))).await {
        Ok((res, slice)) => (res, slice.into_inner()),
        Err(_) => (Err(io::ErrorKind::TimedOut.into()), Vec::new()),
    }
}

/// The upstream request: request line, Host for `target`, headers, buffered body bytes.
fn request_bytes(out: &mut Vec<u8>, req: &UpstreamRequest, target: &CompiledTarget, body: &[u8]) {
    out.extend_from_slice(&req.request_line);
    out.extend_from_slice(b"\r\nHost: ");
    match &req.preserved_host {
        Some(host) => out.extend_from_slice(host),
        None => out.extend_from_slice(target.host_header.as_bytes()),
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&req.headers);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// One try at one target.
#[allow(clippy::too_many_arguments)]
async fn attempt(
    client: &mut Client,
    req: &UpstreamRequest,
    plan: &mut BodyPlan,
    streamed: &mut bool,
    (upstream, target): (&CompiledUpstream, &CompiledTarget),
    last_attempt: bool,
    ctx: &WorkerContext,
    (effects, body_limit): (&Effects, u64),
) -> Result<Outcome, Failure> {
    let plane = ctx.plane();
    let spec = &upstream.spec.spec;
    if target.https {
        return Err(Failure::Upstream {
            status: 502,
            message: "https upstream targets are not supported yet",
            retryable: false,
        });
    }
    let write_timeout = spec.write_timeout.as_duration();
    let read_timeout = spec.read_timeout.as_duration();
    let body_start = req.head_len.min(client.buf.len());

    // The request head and the body bytes already buffered, in one write.
    let mut out = plane.heads.take();
    request_bytes(
        &mut out,
        req,
        target,
        &client.buf[body_start..body_start + plan.in_buffer],
    );

    // A pooled connection may have been closed by the upstream while idle; that is only
    // safe to find out when the request can be sent again, so requests whose body is still
    // streaming always get a fresh connection.
    let pooled = if plan.replayable {
        plane.upstreams.take(target.key)
    } else {
        None
    };
    let mut reused = pooled.is_some();
    let mut up = match pooled {
        Some(stream) => stream,
        None => connect(target, spec.connect_timeout.as_duration()).await?,
    };
    let (res, returned) = write_upstream(&mut up, out, write_timeout).await;
    out = returned;
    if res.is_err() {
        if !reused {
            plane.heads.give(out);
            return Err(Failure::Connect);
        }
        reused = false;
        up = connect(target, spec.connect_timeout.as_duration()).await?;
        let (res, returned) = write_upstream(&mut up, out, write_timeout).await;
        out = returned;
        if res.is_err() {
            plane.heads.give(out);
            return Err(Failure::Connect);
        }
    }
    plane.heads.give(out);

    if !plan.replayable {
        if req.expect_continue {
            client
                .write(respond::CONTINUE.to_vec())
                .await
                .map_err(|_| Failure::ClientGone)?;
        }
        *streamed = true;
        stream_request_body(
            client,
            &mut up,
            plan,
            body_start,
            write_timeout,
            body_limit,
            ctx,
        )
        .await?;
    }

    // The response head; interim 1xx answers are relayed (100 is ours to send, not theirs).
    let retryable = plan.replayable && req.idempotent && !last_attempt;
    let mut rbuf = plane.heads.take();
    let limits = &plane.settings.head_limits;
    let head: ResponseHead = loop {
        if !rbuf.is_empty() {
            match parse_response(&rbuf, req.is_head, limits) {
                Ok(Parse::Complete(head)) if head.is_interim() => {
                    if head.status != 100 {
                        let interim = rbuf[..head.head_len].to_vec();
                        client
                            .write(interim)
                            .await
                            .map_err(|_| Failure::ClientGone)?;
                    }
                    rbuf.drain(..head.head_len);
                    continue;
                }
                Ok(Parse::Complete(head)) => break head,
                Ok(Parse::Partial) => {}
                Err(e) => {
                    tracing::debug!(error = %e, target = %target.host_header, "invalid upstream response head");
                    plane.heads.give(rbuf);
                    return Err(Failure::Upstream {
                        status: 502,
                        message: "invalid response from upstream",
                        retryable: false,
                    });
                }
            }
        }
        let (res, returned) = read_upstream(&mut up, rbuf, read_timeout).await;
        rbuf = returned;
        match res {
            Ok(0) if rbuf.is_empty() && reused => {
                // The pooled connection was closed under us: one fresh try, same target.
                reused = false;
                up = connect(target, spec.connect_timeout.as_duration()).await?;
                let mut again = plane.heads.take();
                let body = &client.buf[body_start..body_start + plan.in_buffer];
                request_bytes(&mut again, req, target, body);
                let (res, returned) = write_upstream(&mut up, again, write_timeout).await;
                plane.heads.give(returned);
                if res.is_err() {
                    return Err(Failure::Connect);
                }
            }
            Ok(0) => {
                return Err(Failure::Upstream {
                    status: 502,
                    message: "upstream closed the connection without answering",
                    retryable,
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(Failure::Upstream {
                    status: 504,
                    message: "upstream timed out",
                    retryable,
                });
            }
            Err(_) => {
                return Err(Failure::Upstream {
                    status: 502,
                    message: "upstream connection failed while answering",
                    retryable,
                });
            }
        }
    };

    if head.status == 101 && !switch_was_asked_for(req, head.header(&rbuf, "upgrade")) {
        // Relaying it would desynchronise the client's connection: its next request would be
        // read by whatever the upstream now speaks. `up` is dropped, never pooled.
        plane.heads.give(rbuf);
        return Err(Failure::Upstream {
            status: 502,
            message: "upstream switched protocols without being asked to",
            retryable: false,
        });
    }
    if retryable && (head.status == 502 || head.status == 503) {
        plane.heads.give(rbuf);
        return Err(Failure::Upstream {
            status: head.status,
            message: "upstream answered with an error",
            retryable: true,
        });
    }
    if plan.replayable {
        // The request is answered: its bytes leave the client buffer.
        client.consume(body_start + plan.in_buffer);
    }
    relay_response(
        client,
        up,
        rbuf,
        head,
        req,
        (upstream, target),
        ctx,
        effects,
    )
    .await
}

/// Whether a `101` switches to a protocol the client offered (RFC 9110 §7.8): the client
/// sent `Upgrade`, and every protocol the upstream names is among those offered.
fn switch_was_asked_for(req: &UpstreamRequest, chosen: Option<&[u8]>) -> bool {
    let tokens = |list: &[u8]| -> Vec<Vec<u8>> {
        list.split(|&b| b == b',')
            .map(|t| t.trim_ascii().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    };
    let Some(chosen) = chosen else {
        return false;
    };
    let offered = tokens(&req.upgrade_protocols);
    let chosen = tokens(chosen);
    req.upgrade && !chosen.is_empty() && chosen.iter().all(|c| offered.contains(c))
}

/// Streams the rest of the request body from the client to the upstream.
async fn stream_request_body(
    client: &mut Client,
    up: &mut TcpStream,
    plan: &mut BodyPlan,
    body_start: usize,
    write_timeout: Duration,
    max_body: u64,
    ctx: &WorkerContext,
) -> Result<(), Failure> {
    let plane = ctx.plane();
    // Everything buffered after the head belongs to the body (it did not end there).
    client.consume(body_start + plan.in_buffer);
    let mut sent = plan.in_buffer as u64;
    let mut chunk = plane.bodies.take();
    let mut leftover: Vec<u8> = std::mem::take(&mut client.buf);
    loop {
        let done = match &plan.scanner {
            Some(scanner) => scanner.is_done(),
            None => plan.remaining == 0,
        };
        if done {
            break;
        }
        chunk.clear();
        if leftover.is_empty() {
            let (res, returned) = client.read_into(chunk).await;
            chunk = returned;
            match res {
                Ok(0) | Err(_) => {
                    plane.bodies.give(chunk);
                    return Err(Failure::ClientGone);
                }
                Ok(_) => {}
            }
        } else {
            chunk.extend_from_slice(&leftover);
            leftover.clear();
        }
        let take = match &mut plan.scanner {
            Some(scanner) => match scanner.scan(&chunk) {
                Ok(scanned) => scanned.consumed,
                Err(e) => {
                    tracing::debug!(error = %e, "invalid chunked request body");
                    plane.bodies.give(chunk);
                    return Err(Failure::ClientGone);
                }
            },
            None => {
                let take = (chunk.len() as u64).min(plan.remaining) as usize;
                plan.remaining -= take as u64;
                take
            }
        };
        sent += take as u64;
        // The limit is on body data: chunk framing does not count.
        let data = plan.scanner.as_ref().map_or(sent, ChunkedScanner::data_len);
        if data > max_body {
            plane.bodies.give(chunk);
            return Err(Failure::BodyTooLarge);
        }
        // Bytes after the body are the next pipelined request.
        leftover.extend_from_slice(&chunk[take..]);
        chunk.truncate(take);
        let (res, returned) = write_upstream(up, chunk, write_timeout).await;
        chunk = returned;
        if res.is_err() {
            plane.bodies.give(chunk);
            return Err(Failure::Upstream {
                status: 502,
                message: "upstream failed while receiving the request body",
                retryable: false,
            });
        }
    }
    plane.bodies.give(chunk);
    client.buf = leftover;
    Ok(())
}

/// Writes the client's response head for `head` into `out`.
fn client_head(
    out: &mut Vec<u8>,
    head: &ResponseHead,
    rbuf: &[u8],
    req: &UpstreamRequest,
    effects: &Effects,
    keep_alive: bool,
    rechunk: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    respond::push_decimal(out, u64::from(head.status));
    out.push(b' ');
    let reason = head.reason.get(rbuf);
    if reason.is_empty() {
        out.extend_from_slice(respond::reason(head.status).as_bytes());
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
            None => push_line(out, name, value),
        }
    }
    if listed.is_none() {
        effects.rate_limit.write(out);
    }
    for (name, value) in &effects.response_headers {
        match &mut listed {
            Some(list) => list.push(((*name).to_owned(), value.clone())),
            None => push_line(out, name.as_bytes(), value.as_bytes()),
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
            push_line(out, name.as_bytes(), value.as_bytes());
        }
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
            respond::push_decimal(out, n);
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

fn push_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Streams the response to the client and parks the upstream connection when it is clean.
#[allow(clippy::too_many_arguments)]
async fn relay_response(
    client: &mut Client,
    mut up: TcpStream,
    rbuf: Vec<u8>,
    head: ResponseHead,
    req: &UpstreamRequest,
    (upstream, target): (&CompiledUpstream, &CompiledTarget),
    ctx: &WorkerContext,
    effects: &Effects,
) -> Result<Outcome, Failure> {
    let plane = ctx.plane();
    let spec = &upstream.spec.spec;
    let read_timeout = spec.read_timeout.as_duration();
    let upgraded = head.status == 101 && req.upgrade;
    let rechunk = head.body == BodyKind::CloseDelimited && !req.http10;
    let framed = !matches!(head.body, BodyKind::CloseDelimited) || rechunk;
    let keep_alive = !upgraded && framed && req.client_keep_alive && !ctx.shutdown().is_triggered();

    let mut out = plane.heads.take();
    client_head(&mut out, &head, &rbuf, req, effects, keep_alive, rechunk);
    let prefix = &rbuf[head.head_len..];

    if upgraded {
        out.clear();
        client_head(&mut out, &head, &rbuf, req, effects, false, false);
        let to_client = prefix.to_vec();
        plane.heads.give(rbuf);
        client.write(out).await.map_err(|_| Failure::ClientGone)?;
        return Ok(Outcome::Upgrade(Tunnel {
            upstream: up,
            to_client,
        }));
    }

    // What of the prefix belongs to this body, and how the rest is read.
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
            out.extend_from_slice(&prefix[..take]);
            body_done = remaining == 0;
        }
        BodyKind::Chunked => match scanner.scan(prefix) {
            Ok(scanned) => {
                clean = scanned.consumed == prefix.len();
                out.extend_from_slice(&prefix[..scanned.consumed]);
                body_done = scanned.done;
            }
            Err(_) => {
                plane.heads.give(out);
                plane.heads.give(rbuf);
                return Err(Failure::Upstream {
                    status: 502,
                    message: "invalid response from upstream",
                    retryable: false,
                });
            }
        },
        BodyKind::CloseDelimited => {
            clean = false;
            if !prefix.is_empty() {
                if rechunk {
                    respond::push_chunk_size(&mut out, prefix.len());
                    out.extend_from_slice(prefix);
                    out.extend_from_slice(b"\r\n");
                } else {
                    out.extend_from_slice(prefix);
                }
            }
            body_done = false;
        }
    }
    plane.heads.give(rbuf);
    // The head buffer goes back to the pool: one buffer per response, not one allocation.
    let (written, out) = client.write_returning(out).await;
    plane.heads.give(out);
    written.map_err(|_| Failure::ClientGone)?;

    let mut chunk = plane.bodies.take();
    let mut framed_out = Vec::new();
    while !body_done {
        chunk.clear();
        let (res, returned) = read_upstream(&mut up, chunk, read_timeout).await;
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
                        .map_err(|_| Failure::ClientGone)?;
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
                respond::push_chunk_size(&mut framed_out, n);
                framed_out.extend_from_slice(&chunk);
                framed_out.extend_from_slice(b"\r\n");
                std::mem::swap(&mut framed_out, &mut chunk);
            }
            _ => {}
        }
        let (res, returned) = client.write_returning(chunk).await;
        chunk = returned;
        if res.is_err() {
            return Err(Failure::ClientGone);
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
