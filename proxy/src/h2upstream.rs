//! HTTP/2 to upstreams: services of type `grpc`, and upstreams with `http2: true`.
//!
//! An HTTP/2 client's stream is relayed frame for frame: the request as the flow prepared
//! it (path, Host, forwarding headers, plugin transforms) becomes the upstream stream's
//! HEADERS; request DATA and response DATA flow at the same time, each at the pace of the
//! other side's window (so bidirectional gRPC streams work), and trailers pass through
//! untouched. Connections are per worker and per target, multiplexing streams up to what
//! the upstream allows (SETTINGS_MAX_CONCURRENT_STREAMS: a stream beyond it waits for a
//! free one). A connect failure moves on to another target, as on HTTP/1.1; nothing is
//! retried once a stream was opened (its body may be half sent).
//!
//! `grpc-timeout` bounds the request like a service `timeout` (the smaller wins): before
//! the response head it is a 504 (DEADLINE_EXCEEDED to a gRPC client), after it the
//! stream ends with `grpc-status: 4`.
//!
//! Targets: h2c with prior knowledge to `http` ones, TLS with ALPN `h2` (and the upstream's
//! `tls` settings: roots, server name, client certificate) to `https` ones; a target that
//! does not choose `h2` is a TLS failure, and the next target is tried.
//!
//! Not done: HTTP/1.1 clients to such services (answered 502 with a message saying to use
//! HTTP/2).

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
use shardgate_core::model::ServiceType;
use shardgate_core::snapshot::{CompiledService, CompiledTarget};

use crate::downstream::Downstream;
use crate::exchange::{Client, Outcome, UpstreamRequest};
use crate::h2io::H2Io;
use crate::h2stream::{H2Stream, h2_error, send_flow_controlled};
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

/// Whether `service`'s requests go upstream over HTTP/2.
pub fn speaks_h2(service: &CompiledService) -> bool {
    service.spec.spec.kind == ServiceType::Grpc
        || service.upstreams.first().is_some_and(|u| u.spec.spec.http2)
}

/// Relays one request to `service` over HTTP/2 and its answer back.
pub async fn forward(
    client: &mut Client,
    req: &UpstreamRequest,
    service: &CompiledService,
    ctx: &WorkerContext,
    effects: &Effects,
) -> io::Result<Outcome> {
    let Downstream::H2(stream) = &mut client.stream else {
        client.consume(client.buf.len());
        respond::refuse(client, Refusal::NeedsHttp2, effects, true, req.is_head).await?;
        return Ok(Outcome::Done { keep_alive: false });
    };
    let deadline = match (req.deadline, stream.grpc_timeout) {
        (Some(d), Some(t)) => Some(d.min(Instant::now() + t)),
        (d, t) => d.or(t.map(|t| Instant::now() + t)),
    };
    let body = stream.take_body();
    let plane = ctx.plane();
    let max_attempts = 1 + service.spec.spec.retries as usize;
    let mut attempts = 0;
    let mut last = UpstreamFailure::NoHealthyTarget;
    let mut opened = None;
    'upstreams: for upstream in &service.upstreams {
        let mut tried = Vec::new();
        while attempts < max_attempts {
            let Some(i) = plane.picker.target(upstream, req.hash, &tried) else {
                continue 'upstreams;
            };
            tried.push(i);
            attempts += 1;
            let Some(target) = upstream.targets.get(i) else {
                continue;
            };
            let connect_timeout =
                bounded(upstream.spec.spec.connect_timeout.as_duration(), deadline);
            let dial = tls::dial(plane.upstream_tls.as_ref(), upstream, target, i);
            match sender(ctx, &dial, connect_timeout).await {
                Ok(sender) => {
                    opened = Some((upstream.clone(), i, sender));
                    break 'upstreams;
                }
                Err(failure) => {
                    plane.picker.report(upstream, i, false);
                    last = failure;
                }
            }
        }
    }
    let Some((upstream, i, sender)) = opened else {
        return refuse(client, last, effects, req).await;
    };
    let request = match upstream.targets.get(i).map(|t| upstream_request(req, t)) {
        Some(Ok(request)) => request,
        other => {
            tracing::debug!(error = ?other.map(|r| r.err()), "request not expressible in HTTP/2");
            return refuse(client, UpstreamFailure::InvalidResponse, effects, req).await;
        }
    };
    plane.picker.started(&upstream, i);
    let spec = &upstream.spec.spec;
    let read_timeout = spec.read_timeout.as_duration();
    let exchange = relay(client, sender, request, body, effects, read_timeout);
    let result = match deadline {
        Some(deadline) => match monoio::time::timeout_at(deadline, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Relayed::Failed(UpstreamFailure::DeadlineExceeded)),
        },
        None => exchange.await,
    };
    plane.picker.finished(&upstream, i);
    match result {
        Ok(()) => {
            plane.picker.report(&upstream, i, true);
            Ok(Outcome::Done { keep_alive: false })
        }
        Err(Relayed::ClientGone) => Ok(Outcome::Done { keep_alive: false }),
        Err(Relayed::Failed(failure)) => {
            if failure != UpstreamFailure::DeadlineExceeded {
                plane.picker.report(&upstream, i, false);
            }
            // Before the response head: the gateway answers (trailers-only for gRPC);
            // after it, the stream ends with the matching grpc-status or a reset.
            let started = match &client.stream {
                Downstream::H2(stream) => stream.responding(),
                _ => true,
            };
            if !started {
                return refuse(client, failure, effects, req).await;
            }
            if let Downstream::H2(stream) = &mut client.stream {
                stream.abort(failure == UpstreamFailure::DeadlineExceeded);
            }
            Ok(Outcome::Done { keep_alive: false })
        }
    }
}

/// How a relay ended short of success.
enum Relayed {
    ClientGone,
    Failed(UpstreamFailure),
}

async fn refuse(
    client: &mut Client,
    failure: UpstreamFailure,
    effects: &Effects,
    req: &UpstreamRequest,
) -> io::Result<Outcome> {
    client.consume(client.buf.len());
    respond::refuse(
        client,
        Refusal::Upstream(failure),
        effects,
        true,
        req.is_head,
    )
    .await?;
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
async fn sender(
    ctx: &WorkerContext,
    dial: &tls::Dial<'_>,
    connect_timeout: Duration,
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
    let (sender, connection) = match connected {
        Ok(Ok(pair)) => pair,
        Ok(Err(failure)) => return Err(failure),
        Err(_) => return Err(UpstreamFailure::ConnectFailed),
    };
    monoio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(%addr, error = %e, "HTTP/2 upstream connection ended");
        }
    });
    pool.insert(target.key, sender.clone());
    sender.ready().await.map_err(|e| {
        tracing::debug!(%addr, error = %e, "HTTP/2 upstream refused a stream");
        UpstreamFailure::ConnectFailed
    })
}

/// The upstream's HTTP/2 request for the flow's prepared HTTP/1.1 one, to `target`.
fn upstream_request(req: &UpstreamRequest, target: &CompiledTarget) -> Result<Request<()>, String> {
    let line = String::from_utf8_lossy(&req.request_line);
    let mut parts = line.splitn(3, ' ');
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return Err(format!("request line {line:?}"));
    };
    let mut builder = Request::builder()
        .method(method)
        .version(http::Version::HTTP_2);
    let mut headers = HeaderMap::new();
    let mut host = Some(
        req.preserved_host
            .clone()
            .unwrap_or_else(|| target.host_header.as_bytes().to_vec()),
    );
    for line in req.headers.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii().to_ascii_lowercase();
        let value = line[colon + 1..].trim_ascii();
        if name == b"host" {
            host.get_or_insert_with(|| value.to_vec());
        }
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
    builder = builder.uri(path);
    let mut request = builder.body(()).map_err(|e| e.to_string())?;
    *request.headers_mut() = headers;
    if let Some(host) = host {
        // The :authority the target is asked for (its Host, or the client's when preserved).
        let authority = String::from_utf8_lossy(&host).into_owned();
        let uri = http::Uri::builder()
            .scheme(if target.https { "https" } else { "http" })
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|e| e.to_string())?;
        *request.uri_mut() = uri;
    }
    Ok(request)
}

/// Sends the request, pumps its body up while the answer comes down, and relays the answer
/// (head, data, trailers) to the client.
async fn relay(
    client: &mut Client,
    sender: SendRequest<Bytes>,
    mut request: Request<()>,
    body: Option<RecvStream>,
    effects: &Effects,
    read_timeout: Duration,
) -> Result<(), Relayed> {
    let Downstream::H2(stream) = &mut client.stream else {
        return Err(Relayed::ClientGone);
    };
    if request.uri().authority().is_none() {
        return Err(Relayed::Failed(UpstreamFailure::InvalidResponse));
    }
    let _ = &mut request;
    let mut sender = sender;
    let end = body.is_none();
    let (response, up_body) = sender
        .send_request(request, end)
        .map_err(|e| failed(e, UpstreamFailure::ConnectFailed))?;
    let up = pump_up(body, up_body);
    let down = async {
        let response = monoio::time::timeout(read_timeout, response)
            .await
            .map_err(|_| Relayed::Failed(UpstreamFailure::TimedOut))?
            .map_err(|e| failed(e, UpstreamFailure::ClosedWithoutAnswer))?;
        relay_response(stream, response, effects).await
    };
    let mut up = pin!(up);
    let mut down = pin!(down);
    let mut up_done = end;
    poll_fn(|cx| {
        if !up_done {
            match up.as_mut().poll(cx) {
                Poll::Ready(Ok(())) => up_done = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        // The answer decides: once it is complete, what the client still sends is moot.
        down.as_mut().poll(cx)
    })
    .await
}

/// The client's request body (and trailers) to the upstream stream.
async fn pump_up(body: Option<RecvStream>, mut up: SendStream<Bytes>) -> Result<(), Relayed> {
    let Some(mut body) = body else {
        return Ok(());
    };
    loop {
        match poll_fn(|cx| body.poll_data(cx)).await {
            Some(Ok(data)) => {
                let len = data.len();
                send_flow_controlled(&mut up, data, false)
                    .await
                    .map_err(|_| Relayed::Failed(UpstreamFailure::FailedReceivingBody))?;
                // Credit back to the client only once the upstream took the bytes.
                let _ = body.flow_control().release_capacity(len);
            }
            Some(Err(_)) => {
                up.send_reset(h2::Reason::CANCEL);
                return Err(Relayed::ClientGone);
            }
            None => break,
        }
    }
    match poll_fn(|cx| body.poll_trailers(cx)).await {
        Ok(Some(trailers)) => up.send_trailers(trailers),
        Ok(None) => up.send_data(Bytes::new(), true),
        Err(_) => {
            up.send_reset(h2::Reason::CANCEL);
            return Err(Relayed::ClientGone);
        }
    }
    .map_err(|_| Relayed::Failed(UpstreamFailure::FailedReceivingBody))
}

/// The upstream's answer to the client: head (with the plugins' headers), data, trailers.
async fn relay_response(
    stream: &mut H2Stream,
    response: Response<RecvStream>,
    effects: &Effects,
) -> Result<(), Relayed> {
    let (parts, mut body) = response.into_parts();
    let mut head = Response::new(());
    *head.status_mut() = parts.status;
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 4);
    for (name, value) in &parts.headers {
        if HOP_BY_HOP[..6].contains(&name.as_str()) {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    for (name, value) in effects.header_pairs() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.insert(name, value);
        }
    }
    *head.headers_mut() = headers;
    let end = body.is_end_stream();
    stream
        .send_head(head, end)
        .map_err(|_| Relayed::ClientGone)?;
    if end {
        return Ok(());
    }
    loop {
        match poll_fn(|cx| body.poll_data(cx)).await {
            Some(Ok(data)) => {
                let len = data.len();
                stream
                    .send_body(data)
                    .await
                    .map_err(|_| Relayed::ClientGone)?;
                // Credit back to the upstream only once the client took the bytes.
                let _ = body.flow_control().release_capacity(len);
            }
            Some(Err(e)) => return Err(failed(e, UpstreamFailure::FailedWhileAnswering)),
            None => break,
        }
    }
    let trailers = poll_fn(|cx| body.poll_trailers(cx))
        .await
        .map_err(|e| failed(e, UpstreamFailure::FailedWhileAnswering))?;
    stream.end_body(trailers).map_err(|_| Relayed::ClientGone)
}

fn failed(e: h2::Error, failure: UpstreamFailure) -> Relayed {
    tracing::debug!(error = %e, "HTTP/2 upstream stream failed");
    Relayed::Failed(failure)
}
