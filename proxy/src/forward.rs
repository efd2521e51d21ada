//! Forward: send the request to a target, stream its body up, stream the response back.
//!
//! Attempts and retries: a target is picked by the upstream's balancer among those that
//! are up, not behind an open circuit and under their `max_connections` (when every one is
//! only full, the request waits up to `connect_timeout` for a place, then 503). The
//! service's `retry_policy` decides what moves on to another target: a connect failure
//! (any method: nothing was sent, so no budget and no backoff), or a timeout, reset or
//! listed 5xx before the response head for idempotent requests (or any method with
//! `non_idempotent`) whose whole body is still in hand, within the retry budget and after
//! a jittered backoff, and only while attempts remain — the last attempt's answer is
//! relayed as it is. When every target of the service's upstream is down or tried, its
//! fallback upstreams are tried in order. Each attempt's outcome goes to passive health
//! and to the target's circuit breaker, and into the request's trace (metrics).
//!
//! Bodies are never buffered whole: request bodies stream client → upstream and responses
//! upstream → client one read at a time (so SSE events pass as they are produced), chunked
//! framing passes through byte-exact after [`ChunkedScanner`] validation, and a
//! close-delimited upstream body is re-framed as chunked for HTTP/1.1 clients so their
//! connection can be kept.
//!
//! A service `timeout` is a whole-request deadline (connect to last response byte): every
//! connect, write and read is bounded by what is left of it, a deadline that passes before
//! the response head is a 504 and is not retried, and one that passes mid-body closes the
//! client connection (the status is already sent).

use std::io;
use std::time::Duration;

use monoio::net::TcpStream;
use shardgate_core::http1::{BodyKind, ChunkedScanner, Parse, ResponseHead, parse_response_into};
use shardgate_core::metrics::Cause;
use shardgate_core::model::{RetryCondition, RetryPolicy};
use shardgate_core::snapshot::{CompiledService, CompiledTarget, CompiledUpstream};

use crate::exchange::{Client, Outcome, UpstreamRequest};
use crate::observe::Trace;
use crate::plane::WorkerContext;
use crate::plugins::Effects;
use crate::refusal::{Refusal, UpstreamFailure};
use crate::respond::{self, Answer, Relay};
use crate::retry::{backoff, policy_retries};
use crate::timed;
use crate::tls::{self, Conn, TlsFailure};
use crate::wire;

/// Why an attempt failed.
pub(crate) enum Failure {
    /// Nothing reached the upstream (connect failed or timed out).
    Connect,
    /// The TLS handshake failed: nothing was sent either.
    Tls(TlsFailure),
    /// The upstream failed before its response head reached the client.
    Upstream {
        failure: UpstreamFailure,
        retryable: bool,
    },
    /// The client went away or stalled; nothing more can be told to it.
    ClientGone,
    /// The streamed request body passed the body limit (413).
    BodyTooLarge,
}

impl From<Relay> for Failure {
    fn from(relay: Relay) -> Failure {
        match relay {
            Relay::ClientGone => Failure::ClientGone,
            Relay::InvalidResponse => Failure::Upstream {
                failure: UpstreamFailure::InvalidResponse,
                retryable: false,
            },
        }
    }
}

/// Where the request body stands before the first attempt, and whether any of it has been
/// streamed (then the request can no longer be repeated or answered with a clean error).
struct BodyPlan {
    /// Body bytes available in the client buffer right after the head.
    in_buffer: usize,
    /// The whole body is in the buffer, so the request can be sent again.
    replayable: bool,
    /// Chunked: the scanner's state after the buffered bytes.
    scanner: Option<ChunkedScanner>,
    /// Content-Length: bytes still to read from the client.
    remaining: u64,
    /// Some of the body went upstream from the client connection.
    streamed: bool,
    /// The request's bytes already left the client buffer (its answer was being relayed).
    consumed: bool,
}

fn plan_body(body: BodyKind, available: &[u8], limit: u64) -> Result<BodyPlan, Refusal> {
    match body {
        BodyKind::None | BodyKind::CloseDelimited | BodyKind::Length(0) => Ok(BodyPlan {
            in_buffer: 0,
            replayable: true,
            scanner: None,
            remaining: 0,
            streamed: false,
            consumed: false,
        }),
        BodyKind::Length(n) => {
            let have = (available.len() as u64).min(n);
            Ok(BodyPlan {
                in_buffer: have as usize,
                replayable: have == n,
                scanner: None,
                remaining: n - have,
                streamed: false,
                consumed: false,
            })
        }
        BodyKind::Chunked => {
            let mut scanner = ChunkedScanner::default();
            let scanned = scanner.scan(available).map_err(Refusal::BadChunkedBody)?;
            // A chunked body already in hand is held to the limit here: it is never streamed.
            if scanner.data_len() > limit {
                return Err(Refusal::BodyTooLarge { limit });
            }
            Ok(BodyPlan {
                in_buffer: scanned.consumed,
                replayable: scanned.done,
                scanner: Some(scanner),
                remaining: 0,
                streamed: false,
                consumed: false,
            })
        }
    }
}

/// One try: which target (entry `index`) of which upstream, and whether another may follow.
#[derive(Clone, Copy)]
struct Leg<'a> {
    upstream: &'a CompiledUpstream,
    target: &'a CompiledTarget,
    index: usize,
    last: bool,
    policy: &'a RetryPolicy,
}

/// Forwards one prepared request to `service`, with retries and fallbacks.
pub async fn forward(
    client: &mut Client,
    req: &UpstreamRequest,
    service: &CompiledService,
    ctx: &WorkerContext,
    effects: &Effects,
    body_limit: u64,
) -> io::Result<Outcome> {
    let plane = ctx.plane();
    let body_start = req.head_len.min(client.buf.len());
    let mut plan = match plan_body(req.body, &client.buf[body_start..], body_limit) {
        Ok(plan) => plan,
        Err(refusal) => {
            client.consume(client.buf.len());
            respond::refuse(client, refusal, effects, true, req.is_head).await?;
            client.linger().await;
            return Ok(Outcome::Done { keep_alive: false });
        }
    };
    let max_attempts = 1 + service.spec.spec.retries as usize;
    let policy = &service.spec.spec.retry_policy;
    plane
        .picker
        .budget(service.id, policy, false, crate::plane::now_ms());
    let mut attempts = 0usize;
    let mut last: Option<UpstreamFailure> = None;
    // The previous attempt failed after its request was sent.
    let mut sent_before = false;

    'upstreams: for upstream in &service.upstreams {
        // A fallback that speaks HTTP/2 serves only services whose primary does.
        if crate::h2upstream::upstream_speaks_h2(service, upstream) {
            continue;
        }
        let mut tried = [usize::MAX; 12];
        let mut tried_len = 0;
        while attempts < max_attempts && tried_len < tried.len() {
            if req.past_deadline() {
                last = Some(UpstreamFailure::DeadlineExceeded);
                break 'upstreams;
            }
            let i = match plane.picker.target(upstream, req.hash, &tried[..tried_len]) {
                Some(i) => i,
                None => {
                    match wait_for_target(client, req, upstream, &tried[..tried_len], ctx).await {
                        Ok(i) => i,
                        Err(Some(blocked)) => {
                            last = last.or(Some(blocked));
                            continue 'upstreams;
                        }
                        Err(None) => continue 'upstreams,
                    }
                }
            };
            // A retry after the request reached an upstream: only within the service's
            // budget, and after a jittered backoff. One after a failed connect sent
            // nothing, so it adds no load to a struggling upstream and goes at once.
            if sent_before {
                if !plane
                    .picker
                    .budget(service.id, policy, true, crate::plane::now_ms())
                {
                    client.note(|t| t.obs.budget_exhausted = true);
                    break 'upstreams;
                }
                backoff(policy, attempts, req).await;
            }
            tried[tried_len] = i;
            tried_len += 1;
            attempts += 1;
            let Some(target) = upstream.targets.get(i) else {
                continue;
            };
            let leg = Leg {
                upstream,
                target,
                index: i,
                last: attempts >= max_attempts,
                policy,
            };
            let in_flight = plane.picker.started(upstream, i);
            client.note(|t| t.attempt(upstream.id, i));
            let result = attempt(client, req, &mut plan, leg, ctx, (effects, body_limit)).await;
            drop(in_flight);
            client.note(|t| {
                t.upstream_head();
                match &result {
                    Ok(_) if t.obs.status >= 500 => t.failed(Cause::Status5xx),
                    Ok(_) | Err(Failure::ClientGone | Failure::BodyTooLarge) => {}
                    Err(Failure::Connect) => t.failed(Cause::Connect),
                    Err(Failure::Tls(_)) => t.failed(Cause::Tls),
                    Err(Failure::Upstream { failure, .. }) => t.failed(failure.cause()),
                }
            });
            // The circuit breaker counts 5xx answers as failures; passive health does not.
            let circuit_ok = match &result {
                Ok(_) => Some(client.status_sent() < 500),
                Err(Failure::ClientGone | Failure::BodyTooLarge) => None,
                Err(Failure::Upstream {
                    failure: UpstreamFailure::DeadlineExceeded,
                    ..
                }) => None,
                Err(Failure::Connect) if req.past_deadline() => None,
                Err(_) => Some(false),
            };
            if let Some(ok) = circuit_ok {
                plane.circuit(upstream, i, ok);
            }
            match result {
                Ok(outcome) => {
                    plane.picker.report(upstream, i, true);
                    return Ok(outcome);
                }
                // A failure the service's deadline caused says nothing about the target's
                // health: it is not reported (a tight timeout must not drain a shared upstream).
                Err(Failure::Connect) => {
                    sent_before = false;
                    if !req.past_deadline() {
                        plane.picker.report(upstream, i, false);
                    }
                    last = Some(UpstreamFailure::ConnectFailed);
                    if !policy.retries_on(RetryCondition::ConnectFailure) {
                        break 'upstreams;
                    }
                }
                // Another target may present a valid certificate: like a connect failure,
                // nothing was sent, so any method moves on.
                Err(Failure::Tls(failure)) => {
                    sent_before = false;
                    plane.picker.report(upstream, i, false);
                    last = Some(UpstreamFailure::Tls(failure));
                    if !policy.retries_on(RetryCondition::ConnectFailure) {
                        break 'upstreams;
                    }
                }
                Err(Failure::Upstream { failure, retryable }) => {
                    sent_before = true;
                    if failure != UpstreamFailure::DeadlineExceeded {
                        plane.picker.report(upstream, i, false);
                    }
                    last = Some(failure);
                    if !(retryable && policy_retries(policy, failure)) {
                        break 'upstreams;
                    }
                }
                Err(Failure::ClientGone) => {
                    client.note(Trace::client_left);
                    return Ok(Outcome::Done { keep_alive: false });
                }
                Err(Failure::BodyTooLarge) => {
                    client.buf.clear();
                    let refusal = Refusal::BodyTooLarge { limit: body_limit };
                    respond::refuse(client, refusal, effects, true, req.is_head).await?;
                    return Ok(Outcome::Done { keep_alive: false });
                }
            }
        }
        if attempts >= max_attempts {
            break;
        }
    }

    let failure = match last {
        Some(UpstreamFailure::ConnectFailed) if req.past_deadline() => {
            UpstreamFailure::DeadlineExceeded
        }
        Some(failure) => failure,
        None => UpstreamFailure::NoHealthyTarget,
    };
    let keep_alive = !plan.streamed && req.client_keep_alive && !req.http10 && plan.replayable;
    if !plan.consumed {
        let consumed = body_start + if plan.streamed { 0 } else { plan.in_buffer };
        client.consume(consumed.min(client.buf.len()));
    }
    let refusal = Refusal::Upstream(failure);
    respond::refuse(client, refusal, effects, !keep_alive, req.is_head).await?;
    Ok(Outcome::Done { keep_alive })
}

/// No target of `upstream` is usable now: when that is because each is at its
/// `max_connections`, waits (up to the upstream's `connect_timeout`, within the request's
/// deadline) for one to free a place. `Err(Some(why))` when the targets are blocked (open
/// circuits, or full until the wait ran out), `Err(None)` when they are down or tried.
async fn wait_for_target(
    client: &Client,
    req: &UpstreamRequest,
    upstream: &CompiledUpstream,
    tried: &[usize],
    ctx: &WorkerContext,
) -> Result<usize, Option<UpstreamFailure>> {
    let picker = &ctx.plane().picker;
    match picker.blocked(upstream, tried) {
        None => return Err(None),
        Some(true) => {
            client.note(|t| t.failed(Cause::CircuitOpen));
            return Err(Some(UpstreamFailure::CircuitOpen));
        }
        Some(false) => {}
    }
    let wait = req.bounded(upstream.spec.spec.connect_timeout.as_duration());
    let until = monoio::time::Instant::now() + wait;
    loop {
        if monoio::time::timeout_at(until, picker.freed())
            .await
            .is_err()
        {
            client.note(|t| t.failed(Cause::Saturated));
            return Err(Some(UpstreamFailure::Saturated));
        }
        if let Some(i) = picker.target(upstream, req.hash, tried) {
            return Ok(i);
        }
        match picker.blocked(upstream, tried) {
            Some(false) => {}
            Some(true) => return Err(Some(UpstreamFailure::CircuitOpen)),
            None => return Err(None),
        }
    }
}

/// Opens a connection to `target` within `timeout`: TCP, then the TLS handshake with
/// `tls` (the upstream's client) for an `https` target.
pub(crate) async fn connect(
    target: &CompiledTarget,
    timeout: Duration,
    tls: Option<&tls::Client>,
) -> Result<Conn, Failure> {
    let addr = target.addr.ok_or(Failure::Connect)?;
    let opened = monoio::time::timeout(timeout, async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| {
            tracing::debug!(%addr, error = %e, "upstream connect failed");
            Failure::Connect
        })?;
        let _ = tcp.set_nodelay(true);
        if target.https {
            tls::connect(tls, &target.host, tcp)
                .await
                .map_err(Failure::Tls)
        } else {
            Ok(Conn::Plain(tcp))
        }
    })
    .await;
    opened.unwrap_or_else(|_| {
        tracing::debug!(%addr, "upstream connect timed out");
        Err(Failure::Connect)
    })
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

/// One try at one target: send the request (head and buffered body, then the rest of a
/// streamed body), read the response head, and relay the response.
async fn attempt(
    client: &mut Client,
    req: &UpstreamRequest,
    plan: &mut BodyPlan,
    leg: Leg<'_>,
    ctx: &WorkerContext,
    (effects, body_limit): (&Effects, u64),
) -> Result<Outcome, Failure> {
    let plane = ctx.plane();
    let Leg {
        upstream, index, ..
    } = leg;
    // The upstream's TLS client, and the target under the pool key that goes with it.
    let dial = tls::dial(plane.upstream_tls.as_ref(), upstream, leg.target, index);
    let target = dial.target();
    let spec = &upstream.spec.spec;
    // Bounded by the service deadline at each use, not once per attempt.
    let connect_timeout = || req.bounded(spec.connect_timeout.as_duration());
    let write_timeout = spec.write_timeout.as_duration();
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
        None => connect(target, connect_timeout(), dial.client()).await?,
    };
    let timer = client.timer.clone();
    let (res, returned) = timed::write_all(&mut up, out, req.bounded(write_timeout), &timer).await;
    out = returned;
    if res.is_err() {
        if !reused {
            plane.heads.give(out);
            return Err(Failure::Connect);
        }
        reused = false;
        up = connect(target, connect_timeout(), dial.client()).await?;
        let (res, returned) =
            timed::write_all(&mut up, out, req.bounded(write_timeout), &timer).await;
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
                .write(wire::CONTINUE.to_vec())
                .await
                .map_err(|_| Failure::ClientGone)?;
        }
        plan.streamed = true;
        stream_request_body(client, &mut up, plan, req, write_timeout, body_limit, ctx).await?;
    }

    // The response head; interim 1xx answers are relayed (100 is ours to send, not theirs).
    let retryable = plan.replayable && (req.idempotent || leg.policy.non_idempotent) && !leg.last;
    let mut rbuf = plane.heads.take();
    let limits = &plane.settings.head_limits;
    // Parsed in place and lent to the relay: a head is ~2 KiB (its field spans inline), and
    // returning it by value copied it two or three times per request.
    let mut head = ResponseHead::default();
    loop {
        if !rbuf.is_empty() {
            match parse_response_into(&rbuf, req.is_head, limits, &mut head) {
                Ok(Parse::Complete(())) if head.is_interim() => {
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
                Ok(Parse::Complete(())) => break,
                Ok(Parse::Partial) => {}
                Err(e) => {
                    tracing::debug!(error = %e, target = %target.host_header, "invalid upstream response head");
                    plane.heads.give(rbuf);
                    return Err(Failure::Upstream {
                        failure: UpstreamFailure::InvalidResponse,
                        retryable: false,
                    });
                }
            }
        }
        let read_timeout = req.bounded(spec.read_timeout.as_duration());
        let (res, returned) = timed::read(&mut up, rbuf, read_timeout, &timer).await;
        rbuf = returned;
        let res = match res {
            Err(e)
                if reused
                    && rbuf.is_empty()
                    && matches!(
                        e.kind(),
                        io::ErrorKind::UnexpectedEof
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::BrokenPipe
                    ) =>
            {
                Ok(0)
            }
            other => other,
        };
        match res {
            // A pooled connection closed under us: TCP reads 0, TLS without close_notify
            // reports an unexpected EOF or a reset.
            Ok(0) if rbuf.is_empty() && reused => {
                // The pooled connection was closed under us: one fresh try, same target.
                reused = false;
                up = connect(target, connect_timeout(), dial.client()).await?;
                let mut again = plane.heads.take();
                let body = &client.buf[body_start..body_start + plan.in_buffer];
                request_bytes(&mut again, req, target, body);
                let (res, returned) =
                    timed::write_all(&mut up, again, req.bounded(write_timeout), &timer).await;
                plane.heads.give(returned);
                if res.is_err() {
                    return Err(Failure::Connect);
                }
            }
            Ok(0) => {
                return Err(Failure::Upstream {
                    failure: UpstreamFailure::ClosedWithoutAnswer,
                    retryable,
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut && req.past_deadline() => {
                return Err(Failure::Upstream {
                    failure: UpstreamFailure::DeadlineExceeded,
                    retryable: false,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(Failure::Upstream {
                    failure: UpstreamFailure::TimedOut,
                    retryable,
                });
            }
            Err(e) => {
                // A TLS alert before any answer: the upstream refused the handshake late
                // (TLS 1.3 judges the client certificate after the client's side is done).
                let failure = match tls::failure_in(&e) {
                    Some(tls) if rbuf.is_empty() => UpstreamFailure::Tls(tls),
                    _ => UpstreamFailure::FailedWhileAnswering,
                };
                return Err(Failure::Upstream { failure, retryable });
            }
        }
    }

    client.note(|t| t.upstream_head());
    if head.status == 101 && !switch_was_asked_for(req, &mut head.headers.get_all(&rbuf, "upgrade"))
    {
        // Relaying it would desynchronise the client's connection: its next request would be
        // read by whatever the upstream now speaks. `up` is dropped, never pooled.
        plane.heads.give(rbuf);
        return Err(Failure::Upstream {
            failure: UpstreamFailure::UnsolicitedSwitch,
            retryable: false,
        });
    }
    if retryable && head.status >= 500 && leg.policy.retries_status(head.status) {
        plane.heads.give(rbuf);
        return Err(Failure::Upstream {
            failure: UpstreamFailure::AnsweredWithError(head.status),
            retryable: true,
        });
    }
    if plan.replayable {
        // The request is answered: its bytes leave the client buffer.
        client.consume(body_start + plan.in_buffer);
        plan.consumed = true;
    }
    let answer = Answer {
        up,
        rbuf,
        head: &head,
    };
    Ok(respond::relay_response(client, answer, req, (upstream, target), ctx, effects).await?)
}

/// Whether a `101` switches to a protocol the client offered (RFC 9110 §7.8): the client
/// sent `Upgrade`, the upstream names its protocols in exactly one `Upgrade` field (the one
/// relayed), and every protocol it names is among those offered.
fn switch_was_asked_for<'b>(
    req: &UpstreamRequest,
    fields: &mut impl Iterator<Item = &'b [u8]>,
) -> bool {
    let tokens = |list: &[u8]| -> Vec<Vec<u8>> {
        list.split(|&b| b == b',')
            .map(|t| t.trim_ascii().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    };
    let (Some(chosen), None) = (fields.next(), fields.next()) else {
        return false;
    };
    let offered = tokens(&req.upgrade_protocols);
    let chosen = tokens(chosen);
    req.upgrade && !chosen.is_empty() && chosen.iter().all(|c| offered.contains(c))
}

/// Streams the rest of the request body from the client to the upstream.
async fn stream_request_body(
    client: &mut Client,
    up: &mut Conn,
    plan: &mut BodyPlan,
    req: &UpstreamRequest,
    write_timeout: Duration,
    max_body: u64,
    ctx: &WorkerContext,
) -> Result<(), Failure> {
    let plane = ctx.plane();
    let body_start = req.head_len.min(client.buf.len());
    let deadline_passed = || Failure::Upstream {
        failure: UpstreamFailure::DeadlineExceeded,
        retryable: false,
    };
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
            let (res, returned) = client.read_into_before(chunk, req.deadline).await;
            chunk = returned;
            match res {
                Err(_) if req.past_deadline() => return Err(deadline_passed()),
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
        client.note(|t| t.obs.bytes_in += take as u64);
        // The limit is on body data: chunk framing does not count.
        let data = plan.scanner.as_ref().map_or(sent, ChunkedScanner::data_len);
        if data > max_body {
            plane.bodies.give(chunk);
            return Err(Failure::BodyTooLarge);
        }
        // Bytes after the body are the next pipelined request.
        leftover.extend_from_slice(&chunk[take..]);
        chunk.truncate(take);
        let (res, returned) =
            timed::write_all(up, chunk, req.bounded(write_timeout), &client.timer).await;
        chunk = returned;
        if res.is_err() {
            plane.bodies.give(chunk);
            if req.past_deadline() {
                return Err(deadline_passed());
            }
            return Err(Failure::Upstream {
                failure: UpstreamFailure::FailedReceivingBody,
                retryable: false,
            });
        }
    }
    plane.bodies.give(chunk);
    client.buf = leftover;
    Ok(())
}
