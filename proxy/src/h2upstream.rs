//! HTTP/2 to upstreams: services of type `grpc`, and upstreams with `http2: true`.
//!
//! An HTTP/2 client's stream is relayed frame for frame: the request as the flow prepared
//! it (path, Host, forwarding headers, plugin transforms) becomes the upstream stream's
//! HEADERS; request DATA and response DATA flow at the same time, each at the pace of the
//! other side's window (so bidirectional gRPC streams work), and trailers pass through
//! untouched. Connections are per worker and per target, multiplexing streams up to what
//! the upstream allows (SETTINGS_MAX_CONCURRENT_STREAMS: a stream beyond it waits for a
//! free one). A connect failure moves on to another target, as on HTTP/1.1. Once a stream
//! is open, the request goes again from the body kept so far ([`Kept`]: until the answer
//! begins, at most [`MAX_RESEND_BODY_BYTES`]):
//! - when the upstream refused the stream unprocessed (REFUSED_STREAM, or a GOAWAY below
//!   it: a server shutting down or shedding load), any method, at most [`REFUSED_RESENDS`]
//!   times, not counted as one of the service's `retries`;
//! - as the service's `retry_policy` says, as on HTTP/1.1: a timeout, a reset or a listed
//!   5xx before the answer's head, for idempotent requests (or any with `non_idempotent`),
//!   to another target, within the retry budget and after a jittered backoff.
//!
//! Both within the retry budget. Once the answer's head went out, nothing is retried.
//!
//! `grpc-timeout` bounds the request like a service `timeout` (the smaller wins): before
//! the response head it is a 504 (DEADLINE_EXCEEDED to a gRPC client), after it the
//! stream ends with `grpc-status: 4`.
//!
//! Targets: h2c with prior knowledge to `http` ones, TLS with ALPN `h2` (and the upstream's
//! `tls` settings: roots, server name, client certificate) to `https` ones; a target that
//! does not choose `h2` is a TLS failure, and the next target is tried.
//!
//! HTTP/1.1 clients reach such services too: their body (Content-Length or chunked, with
//! its trailers) goes up as DATA before the answer comes down, the answer is chunked unless
//! the upstream gave a length (HTTP/1.0 clients: until close), and trailers travel as
//! chunked trailers. gRPC needs HTTP/2 end to end in practice; REST upstreams that prefer
//! HTTP/2 (`http2: true`) serve both kinds of client.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response};
use monoio::net::TcpStream;
use monoio::time::Instant;
use shardgate_core::http1::{BodyKind, ChunkedScanner, Parse, parse_response};
use shardgate_core::metrics::Cause;
use shardgate_core::model::{Http2Keepalive, RetryPolicy, ServiceType};
use shardgate_core::snapshot::{CompiledService, CompiledTarget, CompiledUpstream};

use crate::downstream::Downstream;
use crate::exchange::{Client, Outcome, UpstreamRequest};
use crate::h2io::H2Io;
use crate::h2stream::{h2_error, send_flow_controlled, trailer_map, unchunk};
use crate::observe::Trace;
use crate::plane::WorkerContext;
use crate::plugins::Effects;
use crate::refusal::{Refusal, UpstreamFailure};
use crate::respond;
use crate::tls;

/// Header fields never copied between HTTP/2 hops (the flow's HTTP/1.1 framing included).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// Whether `service`'s requests go upstream over HTTP/2: a `grpc` service, or a primary
/// upstream with `http2: true`. Fallback upstreams are used only when they speak the same
/// protocol as the primary ([`upstream_speaks_h2`]); the others are skipped.
pub fn speaks_h2(service: &CompiledService) -> bool {
    service
        .upstreams
        .first()
        .is_some_and(|u| upstream_speaks_h2(service, u))
}

/// Whether `upstream` is spoken to over HTTP/2 for `service`.
pub fn upstream_speaks_h2(service: &CompiledService, upstream: &CompiledUpstream) -> bool {
    service.spec.spec.kind == ServiceType::Grpc || upstream.spec.spec.http2
}

/// Relays one request to `service` over HTTP/2 and its answer back, to an HTTP/2 client
/// (frames both ways at once) or an HTTP/1.1 one (its body first, then the answer).
pub async fn forward(
    client: &mut Client,
    req: &UpstreamRequest,
    service: &CompiledService,
    ctx: &WorkerContext,
    effects: &Effects,
    body_limit: u64,
) -> io::Result<Outcome> {
    // Where the request body comes from: the HTTP/2 client's stream (taken whole: the flow
    // read only the head), or the HTTP/1.1 connection after the head.
    let (source, grpc_timeout) = match &mut client.stream {
        Downstream::H2(stream) => (
            Source::H2(H2Body {
                body: stream.take_body(),
                taken: 0,
                unreleased: 0,
            }),
            stream.grpc_timeout,
        ),
        _ => (Source::H1(H1Body::new(req)), None),
    };
    let mut upload = Upload::new(source, req);
    let deadline = match (req.deadline, grpc_timeout) {
        (Some(d), Some(t)) => Some(d.min(Instant::now() + t)),
        (d, t) => d.or(t.map(|t| Instant::now() + t)),
    };
    let plane = ctx.plane();
    let policy = &service.spec.spec.retry_policy;
    plane
        .picker
        .budget(service.id, policy, false, crate::plane::now_ms());
    let max_attempts = 1 + service.spec.spec.retries as usize;
    // The service's retry policy, as on HTTP/1.1: another target after a failure the
    // policy lists that came before the answer's head, for an idempotent request (or any
    // with `non_idempotent`) whose body is still kept to send again.
    let retry_method = req.idempotent || policy.non_idempotent;
    let mut attempts = 0;
    let mut last = UpstreamFailure::NoHealthyTarget;
    let mut refusals = 0;
    let mut sent_head = false;
    // Targets tried, per upstream of the service (by position), across retries.
    let mut tried: Vec<Vec<usize>> = vec![Vec::new(); service.upstreams.len()];
    let past_deadline = || deadline.is_some_and(|d| Instant::now() >= d);
    loop {
        let mut opened = None;
        'upstreams: for (u, upstream) in service.upstreams.iter().enumerate() {
            if !upstream_speaks_h2(service, upstream) {
                continue;
            }
            while attempts < max_attempts {
                if past_deadline() {
                    last = UpstreamFailure::DeadlineExceeded;
                    break 'upstreams;
                }
                let Some(i) = plane.picker.target(upstream, req.hash, &tried[u]) else {
                    continue 'upstreams;
                };
                tried[u].push(i);
                attempts += 1;
                let Some(target) = upstream.targets.get(i) else {
                    continue;
                };
                let connect_timeout =
                    bounded(upstream.spec.spec.connect_timeout.as_duration(), deadline);
                let dial = tls::dial(plane.upstream_tls.as_ref(), upstream, target, i);
                client.note(|t| t.attempt(upstream.id, i));
                let keepalive = upstream.spec.spec.http2_keepalive.as_ref();
                match sender(ctx, &dial, connect_timeout, keepalive).await {
                    Ok(sender) => {
                        opened = Some((u, upstream.clone(), i, sender));
                        break 'upstreams;
                    }
                    // A failure the deadline caused (a client's grpc-timeout included) says
                    // nothing about the target: not reported.
                    Err(_) if past_deadline() => {
                        last = UpstreamFailure::DeadlineExceeded;
                        break 'upstreams;
                    }
                    Err(failure) => {
                        plane.picker.report(upstream, i, false);
                        plane.circuit(upstream, i, false);
                        client.note(|t| {
                            t.upstream_head();
                            t.failed(failure.cause());
                        });
                        last = failure;
                    }
                }
            }
        }
        let Some((u, upstream, i, sender)) = opened else {
            return refuse(client, Refusal::Upstream(last), effects, req).await;
        };
        let request = match upstream.targets.get(i).map(|t| upstream_request(req, t)) {
            Some(Ok(request)) => request,
            other => {
                tracing::debug!(error = ?other.map(|r| r.err()), "request not expressible in HTTP/2");
                let failure = Refusal::Upstream(UpstreamFailure::InvalidResponse);
                return refuse(client, failure, effects, req).await;
            }
        };
        let in_flight = plane.picker.started(&upstream, i);
        let spec = &upstream.spec.spec;
        let timeouts = Timeouts {
            read: spec.read_timeout.as_duration(),
            write: spec.write_timeout.as_duration(),
            body_limit,
        };
        // A 5xx the policy lists is handed back unsent while another attempt may follow.
        let retry_status = (retry_method && attempts < max_attempts).then_some(policy);
        let exchange = relay(
            client,
            (sender, request),
            &mut upload,
            req,
            effects,
            timeouts,
            (&mut sent_head, retry_status),
        );
        let result = match deadline {
            Some(deadline) => match monoio::time::timeout_at(deadline, exchange).await {
                Ok(result) => result,
                Err(_) => Err(Relayed::Failed(UpstreamFailure::DeadlineExceeded)),
            },
            None => exchange.await,
        };
        drop(in_flight);
        match result {
            // The upstream did not process the stream (it is shutting down, or shedding
            // load): the request goes again on another stream, whatever its method, as
            // the kept body allows. Not a failure of the target (no passive health, no
            // circuit), and not one of the service's `retries`; within the retry budget,
            // and at most REFUSED_RESENDS times. A connection that sent GOAWAY is not
            // reused: the pool hands out only connections that can open streams.
            Err(Relayed::Refused) => {
                client.note(|t| {
                    t.upstream_head();
                    t.failed(Cause::Refused);
                });
                let spent = refusals == REFUSED_RESENDS || past_deadline();
                if spent
                    || !plane
                        .picker
                        .budget(service.id, policy, true, crate::plane::now_ms())
                {
                    if !spent {
                        client.note(|t| t.obs.budget_exhausted = true);
                    }
                    let failure = Refusal::Upstream(UpstreamFailure::Refused);
                    return refuse(client, failure, effects, req).await;
                }
                refusals += 1;
                attempts -= 1;
                // The same target may take it (on a connection that can open streams).
                tried[u].retain(|&t| t != i);
            }
            Err(Relayed::Failed(failure))
                if retry_method
                    && attempts < max_attempts
                    && !responding(client, sent_head)
                    && !upload.kept.borrow().let_go
                    && crate::retry::policy_retries(policy, failure) =>
            {
                failed_attempt(client, ctx, &upstream, i, failure);
                last = failure;
                if !plane
                    .picker
                    .budget(service.id, policy, true, crate::plane::now_ms())
                {
                    client.note(|t| t.obs.budget_exhausted = true);
                    return refuse(client, Refusal::Upstream(failure), effects, req).await;
                }
                crate::retry::backoff(policy, attempts, req).await;
            }
            result => {
                let context = (effects, req, body_limit, sent_head);
                return settle(client, ctx, (&upstream, i), result, context).await;
            }
        }
    }
}

/// Whether the answer to the client has begun (its head went out).
fn responding(client: &Client, sent_head: bool) -> bool {
    match &client.stream {
        Downstream::H2(stream) => stream.responding(),
        _ => sent_head,
    }
}

/// What a failed attempt at target `i` tells: its cause to the trace, and — unless the
/// failure is not the target's own (a deadline, a refused stream) — passive health and
/// the target's circuit. A connection that failed to answer in time, or closed under the
/// stream, is not offered to the next request.
fn failed_attempt(
    client: &Client,
    ctx: &WorkerContext,
    upstream: &CompiledUpstream,
    i: usize,
    failure: UpstreamFailure,
) {
    let plane = ctx.plane();
    client.note(|t| {
        t.upstream_head();
        t.failed(failure.cause());
    });
    if its_own(failure) {
        plane.picker.report(upstream, i, false);
        plane.circuit(upstream, i, false);
    }
    if matches!(
        failure,
        UpstreamFailure::TimedOut
            | UpstreamFailure::ClosedWithoutAnswer
            | UpstreamFailure::FailedWhileAnswering
    ) && let Some(target) = upstream.targets.get(i)
    {
        let dial = tls::dial(plane.upstream_tls.as_ref(), upstream, target, i);
        plane.h2_upstreams.remove(dial.target().key);
    }
}

/// Whether `failure` says something about the target (a deadline or a refused stream
/// does not).
fn its_own(failure: UpstreamFailure) -> bool {
    !matches!(
        failure,
        UpstreamFailure::DeadlineExceeded | UpstreamFailure::Refused
    )
}

/// The last attempt's outcome: reported, and the client answered when the relay did not.
async fn settle(
    client: &mut Client,
    ctx: &WorkerContext,
    (upstream, i): (&CompiledUpstream, usize),
    result: Result<bool, Relayed>,
    (effects, req, body_limit, sent_head): (&Effects, &UpstreamRequest, u64, bool),
) -> io::Result<Outcome> {
    let plane = ctx.plane();
    let failure = match result {
        Ok(keep_alive) => {
            let ok = client.status_sent() < 500;
            plane.circuit(upstream, i, ok);
            plane.picker.report(upstream, i, true);
            client.note(|t| {
                t.upstream_head();
                if t.obs.status >= 500 {
                    t.failed(Cause::Status5xx);
                }
            });
            return Ok(Outcome::Done { keep_alive });
        }
        Err(Relayed::ClientGone) => {
            client.note(|t| {
                t.upstream_head();
                t.client_left();
            });
            return Ok(Outcome::Done { keep_alive: false });
        }
        Err(Relayed::BodyTooLarge) => {
            client.note(Trace::upstream_head);
            Refusal::BodyTooLarge { limit: body_limit }
        }
        // The caller sends refused streams again, or answers them itself.
        Err(Relayed::Refused) => Refusal::Upstream(UpstreamFailure::Refused),
        Err(Relayed::Failed(failure)) => {
            failed_attempt(client, ctx, upstream, i, failure);
            Refusal::Upstream(failure)
        }
    };
    let deadline_passed = matches!(
        failure,
        Refusal::Upstream(UpstreamFailure::DeadlineExceeded)
    );
    // Before the response head, the gateway answers (trailers-only for gRPC); after it,
    // an HTTP/2 stream ends with grpc-status 4 (deadline) or a reset, an HTTP/1.1
    // connection closes.
    if !responding(client, sent_head) {
        return refuse(client, failure, effects, req).await;
    }
    if let Downstream::H2(stream) = &mut client.stream {
        stream.abort(deadline_passed);
    }
    Ok(Outcome::Done { keep_alive: false })
}

/// The upstream's time limits for one exchange, and the request body limit.
#[derive(Clone, Copy)]
struct Timeouts {
    /// For the answer's head and between its DATA frames.
    read: Duration,
    /// For the upstream's window to take more of the request body.
    write: Duration,
    body_limit: u64,
}

/// The most times one request is sent again after upstreams refused it unprocessed.
const REFUSED_RESENDS: usize = 2;

/// The most request body bytes kept to send again when an upstream refuses a stream
/// unprocessed (docs/SECURITY.md, "HTTP/2"): past it nothing is kept, and a refused stream
/// is answered 503 (UNAVAILABLE to gRPC).
pub const MAX_RESEND_BODY_BYTES: usize = 64 * 1024;

/// The request body's way up, kept across the streams one request may be sent on.
struct Upload {
    source: Source,
    /// The request has no body: its HEADERS end the stream.
    no_body: bool,
    /// What went up on the current stream, to send again on another.
    kept: RefCell<Kept>,
}

impl Upload {
    fn new(source: Source, req: &UpstreamRequest) -> Upload {
        let no_body = match &source {
            Source::H2(h2) => h2.body.is_none(),
            Source::H1(_) => matches!(req.body, BodyKind::None | BodyKind::Length(0)),
        };
        Upload {
            source,
            no_body,
            kept: RefCell::new(Kept::default()),
        }
    }
}

/// Where the request body comes from.
enum Source {
    H2(H2Body),
    H1(H1Body),
}

/// The HTTP/2 client's stream and how much of it went up.
struct H2Body {
    /// `None`: no body.
    body: Option<RecvStream>,
    /// Body bytes taken from the client so far (however many streams carried them).
    taken: u64,
    /// Bytes taken but not yet credited back to the client: the stream they were going
    /// up on was given up before the upstream took them.
    unreleased: usize,
}

/// The HTTP/1.1 client's body, framed as its head says, and where reading it stands.
struct H1Body {
    /// The head left the client buffer (and `100 Continue` went out when asked for).
    began: bool,
    /// Content-Length: bytes still to read.
    left: Option<u64>,
    /// Chunked: the scanner's state and the trailer lines so far.
    scanner: ChunkedScanner,
    trailers: Vec<u8>,
}

impl H1Body {
    fn new(req: &UpstreamRequest) -> H1Body {
        H1Body {
            began: false,
            left: match req.body {
                BodyKind::Length(n) => Some(n),
                _ => None,
            },
            scanner: ChunkedScanner::default(),
            trailers: Vec::new(),
        }
    }
}

/// The request body as sent on the current stream, kept until the upstream answers, so a
/// stream it refuses unprocessed can be sent again (`Bytes` are shared, not copied).
#[derive(Default)]
struct Kept {
    chunks: Vec<Bytes>,
    bytes: usize,
    /// How the body ended on the stream, once it did: END_STREAM, or trailers.
    end: Option<Option<HeaderMap>>,
    /// Nothing is kept any more: the body outgrew [`MAX_RESEND_BODY_BYTES`], or the
    /// upstream answered (so it took the stream).
    let_go: bool,
}

impl Kept {
    fn data(&mut self, data: &Bytes) {
        if self.let_go {
            return;
        }
        if self.bytes + data.len() > MAX_RESEND_BODY_BYTES {
            self.let_go();
            return;
        }
        self.bytes += data.len();
        self.chunks.push(data.clone());
    }

    fn end(&mut self, trailers: Option<HeaderMap>) {
        if !self.let_go {
            self.end = Some(trailers);
        }
    }

    fn let_go(&mut self) {
        *self = Kept {
            let_go: true,
            ..Kept::default()
        };
    }
}

/// How a relay ended short of success.
enum Relayed {
    ClientGone,
    /// An HTTP/1.1 chunked body grew past the body limit.
    BodyTooLarge,
    /// The upstream refused the stream unprocessed, and its body so far is kept: it may
    /// be sent again.
    Refused,
    Failed(UpstreamFailure),
}

/// Whether `e` says the upstream did not process the stream (RFC 9113 §8.7): it reset
/// it with REFUSED_STREAM, or a GOAWAY's last stream id was below it (`h2` fails exactly
/// those streams with the GOAWAY, and refuses new ones on that connection with it).
fn unprocessed(e: &h2::Error) -> bool {
    e.is_remote()
        && (e.is_go_away() || (e.is_reset() && e.reason() == Some(h2::Reason::REFUSED_STREAM)))
}

/// `e` as the relay's outcome: [`Relayed::Refused`] when the upstream did not process the
/// stream and what went up is still kept, a failure that says so when it is not, else
/// `otherwise`.
fn refused_or(e: h2::Error, kept: &RefCell<Kept>, otherwise: UpstreamFailure) -> Relayed {
    if !unprocessed(&e) {
        return failed(e, otherwise);
    }
    tracing::debug!(error = %e, "HTTP/2 upstream refused a stream unprocessed");
    if kept.borrow().let_go {
        Relayed::Failed(UpstreamFailure::Refused)
    } else {
        Relayed::Refused
    }
}

async fn refuse(
    client: &mut Client,
    refusal: Refusal,
    effects: &Effects,
    req: &UpstreamRequest,
) -> io::Result<Outcome> {
    client.consume(client.buf.len());
    respond::refuse(client, refusal, effects, true, req.is_head).await?;
    // An HTTP/1.1 client may still be sending a body: drained briefly, so the close does
    // not become a reset that destroys the answer (an HTTP/2 stream just ends).
    client.linger().await;
    Ok(Outcome::Done { keep_alive: false })
}

fn bounded(timeout: Duration, deadline: Option<Instant>) -> Duration {
    match deadline {
        Some(d) => timeout.min(d.saturating_duration_since(Instant::now())),
        None => timeout,
    }
}

/// A ready sender on a (pooled or new) connection to the target of `dial`: h2c to an
/// `http` target, TLS with ALPN `h2` to an `https` one (with the upstream's `tls` settings).
/// A new connection is driven by a task of its own, which also pings it when the upstream
/// has `http2_keepalive`.
async fn sender(
    ctx: &WorkerContext,
    dial: &tls::Dial<'_>,
    connect_timeout: Duration,
    keepalive: Option<&Http2Keepalive>,
) -> Result<SendRequest<Bytes>, UpstreamFailure> {
    let target = dial.target();
    let pool = &ctx.plane().h2_upstreams;
    let pooled = pool.get(target.key);
    if let Some(sender) = pooled
        && let Ok(ready) = sender.ready().await
    {
        return Ok(ready);
    }
    pool.remove(target.key);
    let addr = target.addr.ok_or(UpstreamFailure::ConnectFailed)?;
    let connected = monoio::time::timeout(connect_timeout, async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|_| UpstreamFailure::ConnectFailed)?;
        let _ = tcp.set_nodelay(true);
        let io = if target.https {
            let stream = tls::connect_h2(dial.client(), &target.host, tcp)
                .await
                .map_err(UpstreamFailure::Tls)?;
            H2Io::tls_upstream(stream)
        } else {
            H2Io::plain(tcp, Vec::new()).map_err(|_| UpstreamFailure::ConnectFailed)?
        };
        h2::client::Builder::new()
            .initial_window_size(256 * 1024)
            .initial_connection_window_size(1024 * 1024)
            .max_send_buffer_size(64 * 1024)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| {
                tracing::debug!(%addr, error = %h2_error(e), "HTTP/2 upstream handshake failed");
                UpstreamFailure::ConnectFailed
            })
    })
    .await;
    let (sender, mut connection) = match connected {
        Ok(Ok(pair)) => pair,
        Ok(Err(failure)) => return Err(failure),
        Err(_) => return Err(UpstreamFailure::ConnectFailed),
    };
    let pings = keepalive.zip(connection.ping_pong()).map(|(k, pings)| {
        let (interval, timeout) = (k.interval.as_duration(), k.timeout.as_duration());
        (pings, interval, timeout)
    });
    monoio::spawn(async move {
        let ended = match pings {
            Some((pings, interval, timeout)) => {
                let mut connection = pin!(connection);
                monoio::select! {
                    ended = &mut connection => ended,
                    () = keep_alive(pings, interval, timeout) => {
                        // Dropping the connection closes it: its streams fail, and the
                        // pooled sender reports it closed to the next request.
                        tracing::warn!(%addr, ?timeout, "HTTP/2 upstream did not answer a PING in time; connection closed");
                        Ok(())
                    }
                }
            }
            None => connection.await,
        };
        if let Err(e) = ended {
            tracing::debug!(%addr, error = %e, "HTTP/2 upstream connection ended");
        }
    });
    pool.insert(target.key, sender.clone());
    sender.ready().await.map_err(|e| {
        tracing::debug!(%addr, error = %e, "HTTP/2 upstream refused a stream");
        UpstreamFailure::ConnectFailed
    })
}

/// Pings the connection every `interval` (PINGs go out as the connection task polls);
/// returns only when an answer has not come within `timeout`. Once the connection has
/// ended it waits for ever, and the connection's own future ends the task.
async fn keep_alive(mut pings: h2::PingPong, interval: Duration, timeout: Duration) {
    loop {
        monoio::time::sleep(interval).await;
        match monoio::time::timeout(timeout, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            // Ended: the connection's own future reports why.
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => return,
        }
    }
}

/// The upstream's HTTP/2 request for the flow's prepared HTTP/1.1 one, to `target`.
fn upstream_request(req: &UpstreamRequest, target: &CompiledTarget) -> Result<Request<()>, String> {
    let line = String::from_utf8_lossy(&req.request_line);
    let mut parts = line.splitn(3, ' ');
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return Err(format!("request line {line:?}"));
    };
    let builder = Request::builder()
        .method(method)
        .version(http::Version::HTTP_2);
    let mut headers = HeaderMap::new();
    // The :authority the target is asked for: its Host, or the client's when preserved.
    let host = match &req.preserved_host {
        Some(host) => String::from_utf8_lossy(host).into_owned(),
        None => target.host_header.to_string(),
    };
    for line in req.headers.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii().to_ascii_lowercase();
        let value = line[colon + 1..].trim_ascii();
        if HOP_BY_HOP.iter().any(|h| h.as_bytes() == name)
            || (name == b"te" && !value.eq_ignore_ascii_case(b"trailers"))
        {
            continue;
        }
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&name),
            HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    // HTTP/1.1 strips TE as hop-by-hop; gRPC servers require `te: trailers` (RFC 9113
    // §8.2.2 allows exactly that value).
    if headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
    {
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    let uri = http::Uri::builder()
        .scheme(if target.https { "https" } else { "http" })
        .authority(host)
        .path_and_query(path)
        .build()
        .map_err(|e| e.to_string())?;
    let mut request = builder.uri(uri).body(()).map_err(|e| e.to_string())?;
    *request.headers_mut() = headers;
    Ok(request)
}

/// Sends the request and its body, and writes the answer to the client. `Ok`: whether an
/// HTTP/1.1 client's connection may be kept. `sent_head`: the answer's head went out. On
/// a second stream for the same request, the kept body goes first.
#[allow(clippy::too_many_arguments)]
async fn relay(
    client: &mut Client,
    (mut sender, request): (SendRequest<Bytes>, Request<()>),
    upload: &mut Upload,
    req: &UpstreamRequest,
    effects: &Effects,
    timeouts: Timeouts,
    (sent_head, retry_status): (&mut bool, Option<&RetryPolicy>),
) -> Result<bool, Relayed> {
    let no_body = upload.no_body;
    let kept = &upload.kept;
    let (response, up_body) = sender
        .send_request(request, no_body)
        .map_err(|e| refused_or(e, kept, UpstreamFailure::ConnectFailed))?;
    let response = async {
        let response = monoio::time::timeout(timeouts.read, response)
            .await
            .map_err(|_| Relayed::Failed(UpstreamFailure::TimedOut))?
            .map_err(|e| refused_or(e, kept, UpstreamFailure::ClosedWithoutAnswer))?;
        Ok(response)
    };
    let retry = (kept, retry_status);
    match &mut upload.source {
        // HTTP/2: both directions at once (bidirectional streams).
        Source::H2(h2) => {
            let taken_before = h2.taken;
            let result = {
                let mut up = pin!(pump_up(h2, up_body, kept, timeouts));
                let mut down = pin!(async {
                    let response = response.await?;
                    answer(client, response, req, effects, timeouts, sent_head, retry).await
                });
                let mut up_done = no_body;
                poll_fn(|cx| {
                    if !up_done {
                        match up.as_mut().poll(cx) {
                            Poll::Ready(Ok(())) => up_done = true,
                            // The upstream stopped taking the body (it may have answered
                            // early and reset the stream with NO_ERROR, or refused it): its
                            // answer decides.
                            Poll::Ready(Err(Relayed::Failed(_))) => up_done = true,
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                            Poll::Pending => {}
                        }
                    }
                    // The answer decides: once it is complete, what the client still sends
                    // is moot.
                    down.as_mut().poll(cx)
                })
                .await
            };
            // The client's bytes this stream took (a resent body counts once).
            let taken = h2.taken - taken_before;
            client.note(|t| t.obs.bytes_in += taken);
            result
        }
        // HTTP/1.1: the body first (its bytes share the client's one buffer), then the
        // answer; the head leaves the buffer either way, and what follows the body stays
        // there for the next request.
        Source::H1(h1) => {
            if !h1.began {
                h1.began = true;
                client.consume(req.head_len);
                if req.expect_continue && !no_body {
                    client
                        .write(crate::wire::CONTINUE.to_vec())
                        .await
                        .map_err(|_| Relayed::ClientGone)?;
                }
            }
            let mut whole_body = true;
            if !no_body {
                whole_body = pump_h1(client, h1, up_body, kept, req, timeouts).await?;
            }
            let response = response.await?;
            let keep_alive =
                answer(client, response, req, effects, timeouts, sent_head, retry).await?;
            // A body the upstream stopped reading is still (partly) in the connection.
            Ok(keep_alive && whole_body)
        }
    }
}

/// Sends `data` on the upstream stream as its window allows, within `timeouts.write`.
async fn send_up(
    up: &mut SendStream<Bytes>,
    data: Bytes,
    end: bool,
    timeouts: Timeouts,
) -> Result<(), Relayed> {
    match monoio::time::timeout(timeouts.write, send_flow_controlled(up, data, end)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(Relayed::Failed(UpstreamFailure::FailedReceivingBody)),
    }
}

/// Ends the upstream stream: with trailers, or an empty END_STREAM DATA frame.
fn end_up(up: &mut SendStream<Bytes>, trailers: Option<HeaderMap>) -> Result<(), Relayed> {
    match trailers {
        Some(trailers) if !trailers.is_empty() => up.send_trailers(trailers),
        _ => up.send_data(Bytes::new(), true),
    }
    .map_err(|_| Relayed::Failed(UpstreamFailure::FailedReceivingBody))
}

/// On a second stream for the same request: the body the first one carried. `Ok(true)`:
/// that was the whole body, and the stream is ended.
async fn resend(
    up: &mut SendStream<Bytes>,
    kept: &RefCell<Kept>,
    timeouts: Timeouts,
) -> Result<bool, Relayed> {
    let (chunks, end) = {
        let kept = kept.borrow();
        (kept.chunks.clone(), kept.end.clone())
    };
    for chunk in chunks {
        send_up(up, chunk, false, timeouts).await?;
    }
    match end {
        Some(trailers) => end_up(up, trailers).map(|()| true),
        None => Ok(false),
    }
}

/// The HTTP/2 client's request body (and trailers) to the upstream stream, each piece
/// kept (see [`Kept`]) before it goes.
async fn pump_up(
    h2: &mut H2Body,
    mut up: SendStream<Bytes>,
    kept: &RefCell<Kept>,
    timeouts: Timeouts,
) -> Result<(), Relayed> {
    let Some(body) = h2.body.as_mut() else {
        return Ok(());
    };
    // Bytes a refused stream was sending when it was given up: credited now.
    if h2.unreleased > 0 {
        let _ = body.flow_control().release_capacity(h2.unreleased);
        h2.unreleased = 0;
    }
    if resend(&mut up, kept, timeouts).await? {
        return Ok(());
    }
    loop {
        match poll_fn(|cx| body.poll_data(cx)).await {
            Some(Ok(data)) => {
                let len = data.len();
                h2.taken += len as u64;
                if h2.taken > timeouts.body_limit {
                    up.send_reset(h2::Reason::CANCEL);
                    return Err(Relayed::BodyTooLarge);
                }
                kept.borrow_mut().data(&data);
                h2.unreleased = len;
                send_up(&mut up, data, false, timeouts).await?;
                // Credit back to the client only once the upstream took the bytes.
                let _ = body.flow_control().release_capacity(len);
                h2.unreleased = 0;
            }
            Some(Err(_)) => {
                up.send_reset(h2::Reason::CANCEL);
                return Err(Relayed::ClientGone);
            }
            None => break,
        }
    }
    match poll_fn(|cx| body.poll_trailers(cx)).await {
        Ok(trailers) => {
            kept.borrow_mut().end(trailers.clone());
            end_up(&mut up, trailers)
        }
        Err(_) => {
            up.send_reset(h2::Reason::CANCEL);
            Err(Relayed::ClientGone)
        }
    }
}

/// The HTTP/1.1 client's request body, framed by Content-Length or chunked (validated by
/// the same strict scanner as every HTTP/1.1 body), to the upstream stream as DATA and
/// trailers, each piece kept (see [`Kept`]) before it goes; the client buffer keeps what
/// follows it. `Ok(false)`: the upstream stopped taking the body before its end (its
/// answer is still relayed, the connection not kept).
async fn pump_h1(
    client: &mut Client,
    h1: &mut H1Body,
    mut up: SendStream<Bytes>,
    kept: &RefCell<Kept>,
    req: &UpstreamRequest,
    timeouts: Timeouts,
) -> Result<bool, Relayed> {
    match resend(&mut up, kept, timeouts).await {
        Ok(true) => return Ok(true),
        Ok(false) => {}
        Err(_) => return Ok(false),
    }
    loop {
        if client.buf.is_empty() {
            let buf = std::mem::take(&mut client.buf);
            let (read, buf) = client.read_into_before(buf, req.deadline).await;
            client.buf = buf;
            match read {
                Ok(n) if n > 0 => {}
                _ => {
                    up.send_reset(h2::Reason::CANCEL);
                    return Err(Relayed::ClientGone);
                }
            }
        }
        let sent = match &mut h1.left {
            Some(left) => {
                let n = (*left).min(client.buf.len() as u64) as usize;
                *left -= n as u64;
                let data = Bytes::copy_from_slice(&client.buf[..n]);
                client.consume(n);
                let end = *left == 0;
                {
                    let mut kept = kept.borrow_mut();
                    kept.data(&data);
                    if end {
                        kept.end(None);
                    }
                }
                match send_up(&mut up, data, end, timeouts).await {
                    Ok(()) if end => return Ok(true),
                    Ok(()) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            None => {
                let mut data = Vec::new();
                let scanned = unchunk(&mut h1.scanner, &client.buf, &mut data, &mut h1.trailers)
                    .map_err(|e| {
                        tracing::debug!(error = %e, "invalid chunked request body");
                        up.send_reset(h2::Reason::CANCEL);
                        Relayed::ClientGone
                    })?;
                if h1.scanner.data_len() > timeouts.body_limit {
                    up.send_reset(h2::Reason::CANCEL);
                    return Err(Relayed::BodyTooLarge);
                }
                client.consume(scanned.consumed);
                let mut outcome = Ok(());
                if !data.is_empty() {
                    let data = Bytes::from(data);
                    kept.borrow_mut().data(&data);
                    outcome = send_up(&mut up, data, false, timeouts).await;
                }
                if outcome.is_ok() && scanned.done {
                    let trailers = trailer_map(&h1.trailers);
                    kept.borrow_mut().end(Some(trailers.clone()));
                    return Ok(end_up(&mut up, Some(trailers)).is_ok());
                }
                outcome
            }
        };
        if sent.is_err() {
            // The upstream stopped taking the body (an early answer, a reset): its answer,
            // if any, is what the client gets.
            return Ok(false);
        }
    }
}
/// The upstream's answer to the client. Its head is written as HTTP/1.1 and handed to the
/// flow's own head writer (`respond::client_head`: the plugins' headers, CORS ownership,
/// response transforms, `Via`), so both client protocols and both upstream protocols get
/// the same headers; to an HTTP/2 client that head becomes HEADERS in [`H2Stream`], and the
/// chunked body and its trailers become DATA and trailers. `Ok`: whether an HTTP/1.1
/// client's connection may be kept.
#[allow(clippy::too_many_arguments)]
async fn answer(
    client: &mut Client,
    response: Response<RecvStream>,
    req: &UpstreamRequest,
    effects: &Effects,
    timeouts: Timeouts,
    sent_head: &mut bool,
    (kept, retry_status): (&RefCell<Kept>, Option<&RetryPolicy>),
) -> Result<bool, Relayed> {
    let (parts, mut body) = response.into_parts();
    // A 5xx the retry policy lists, while another attempt may follow and the body is
    // still kept: handed back unsent (the stream is reset as `body` drops).
    let status = parts.status.as_u16();
    if status >= 500
        && retry_status.is_some_and(|policy| policy.retries_status(status))
        && !kept.borrow().let_go
    {
        return Err(Relayed::Failed(UpstreamFailure::AnsweredWithError(status)));
    }
    // The upstream took the stream and answers it: nothing needs sending again.
    kept.borrow_mut().let_go();
    let h2_client = matches!(client.stream, Downstream::H2(_));
    let keep_alive = !h2_client && req.client_keep_alive && !req.http10;
    // The upstream's head as HTTP/1.1: its length when it gave one, else chunked (the way
    // trailers travel), or close-delimited for an HTTP/1.0 client.
    let mut upstream_head = Vec::with_capacity(512);
    upstream_head.extend_from_slice(b"HTTP/1.1 ");
    upstream_head.extend_from_slice(parts.status.as_str().as_bytes());
    upstream_head.extend_from_slice(b" \r\n");
    for (name, value) in &parts.headers {
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        crate::wire::push_header(
            &mut upstream_head,
            name.as_str().as_bytes(),
            value.as_bytes(),
        );
    }
    let length = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    client.note(|t| {
        t.obs.status = status;
        t.upstream_head();
    });
    let mut push_length = |n: u64| {
        upstream_head.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
    };
    let chunked = if body.is_end_stream() {
        // No body: 1xx and 204 say no length at all (RFC 9110 §8.6), HEAD and 304 the
        // upstream's own (the length the GET would have), anything else 0.
        let never = status == 204 || status < 200;
        match length {
            _ if never => {}
            Some(n) => push_length(n),
            None if req.is_head || status == 304 => {}
            None => push_length(0),
        }
        false
    } else {
        match length {
            Some(n) => {
                push_length(n);
                false
            }
            None if req.http10 => false,
            None => {
                upstream_head.extend_from_slice(b"transfer-encoding: chunked\r\n");
                true
            }
        }
    };
    upstream_head.extend_from_slice(b"\r\n");
    let limits = shardgate_core::http1::Limits::default();
    let head = match parse_response(&upstream_head, req.is_head, &limits) {
        Ok(Parse::Complete(head)) => head,
        _ => return Err(Relayed::Failed(UpstreamFailure::InvalidResponse)),
    };
    let keep_alive = keep_alive && head.body != BodyKind::CloseDelimited;
    let mut out = Vec::with_capacity(upstream_head.len() + 256);
    respond::client_head(
        &mut out,
        &head,
        &upstream_head,
        req,
        effects,
        keep_alive,
        false,
    );
    client.write(out).await.map_err(|_| Relayed::ClientGone)?;
    *sent_head = true;
    if head.body == BodyKind::None || body.is_end_stream() {
        return Ok(keep_alive);
    }
    loop {
        let next = monoio::time::timeout(timeouts.read, poll_fn(|cx| body.poll_data(cx)))
            .await
            .map_err(|_| Relayed::Failed(UpstreamFailure::TimedOut))?;
        match next {
            Some(Ok(data)) => {
                let len = data.len();
                if len == 0 {
                    continue;
                }
                let mut piece = Vec::with_capacity(len + 16);
                if chunked {
                    piece.extend_from_slice(format!("{len:x}\r\n").as_bytes());
                    piece.extend_from_slice(&data);
                    piece.extend_from_slice(b"\r\n");
                } else {
                    piece.extend_from_slice(&data);
                }
                client.write(piece).await.map_err(|_| Relayed::ClientGone)?;
                // Credit back to the upstream only once the client took the bytes.
                let _ = body.flow_control().release_capacity(len);
            }
            Some(Err(e)) => return Err(failed(e, UpstreamFailure::FailedWhileAnswering)),
            None => break,
        }
    }
    let trailers = monoio::time::timeout(timeouts.read, poll_fn(|cx| body.poll_trailers(cx)))
        .await
        .map_err(|_| Relayed::Failed(UpstreamFailure::TimedOut))?
        .map_err(|e| failed(e, UpstreamFailure::FailedWhileAnswering))?;
    if chunked {
        let mut end = b"0\r\n".to_vec();
        for (name, value) in trailers.iter().flatten() {
            crate::wire::push_header(&mut end, name.as_str().as_bytes(), value.as_bytes());
        }
        end.extend_from_slice(b"\r\n");
        client.write(end).await.map_err(|_| Relayed::ClientGone)?;
    }
    Ok(keep_alive)
}

fn failed(e: h2::Error, failure: UpstreamFailure) -> Relayed {
    tracing::debug!(error = %e, "HTTP/2 upstream stream failed");
    Relayed::Failed(failure)
}
