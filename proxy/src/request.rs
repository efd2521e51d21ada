//! One request, from its parsed head to a decision: resolve the gateway → authenticate →
//! route → pick the service → prepare the upstream request → [`crate::forward`].
//!
//! Ordering is a security property: the gateway is resolved first (no gateway, no keys),
//! the route is looked up before authentication only to learn whether it is `public`, and
//! every answer that reveals which paths exist (404, 405) is given only to callers with a
//! valid key.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use shardgate_core::balance::hash_bytes;
use shardgate_core::http1::{BodyKind, RequestHead, is_hop_by_hop};
use shardgate_core::model::Stage;
use shardgate_core::plugins::PluginSettings;
use shardgate_core::router::{Lookup, Method};

use crate::auth::{self, KeyCheck, KeySource};
use crate::connection::Client;
use crate::forward;
use crate::plane::WorkerContext;
use crate::plugins::{self, Effects, Facts};
use crate::resolve;
use crate::respond::ErrorResponse;
use crate::route;

/// How an exchange ended, for the connection loop.
#[derive(Debug)]
pub enum Outcome {
    /// Done; serve the next request on this connection or close it.
    Done { keep_alive: bool },
    /// The upstream switched protocols (101): the connection becomes a byte tunnel.
    Upgrade(forward::Tunnel),
}

/// Everything the upstream request needs, prepared once before the first attempt, so that
/// retries and the client buffer's later reuse do not depend on the parsed head.
#[derive(Debug)]
pub struct UpstreamRequest {
    /// `METHOD SP origin-form-target SP HTTP/1.x` without CRLF; Host is per target.
    pub request_line: Vec<u8>,
    /// The client's Host, when the rule preserves it.
    pub preserved_host: Option<Vec<u8>>,
    /// Every other header line, each ending in CRLF, framing and forwarding headers included.
    pub headers: Vec<u8>,
    pub body: BodyKind,
    /// Where the body starts in the client buffer.
    pub head_len: usize,
    /// Whether the request may be repeated on another target (RFC 9110 §9.2.2).
    pub idempotent: bool,
    pub is_head: bool,
    pub expect_continue: bool,
    pub upgrade: bool,
    /// The protocols the client offered in `Upgrade` (empty unless `upgrade`): a 101 must
    /// switch to one of them.
    pub upgrade_protocols: Vec<u8>,
    /// HTTP/1.0 client: the upstream request is HTTP/1.0 with `Connection: close`, so the
    /// response can never be chunked.
    pub http10: bool,
    /// The client wants to keep the connection.
    pub client_keep_alive: bool,
    /// Consistent-hash input (client IP or the upstream's `hash_header`).
    pub hash: Option<u64>,
}

fn not_found() -> ErrorResponse {
    ErrorResponse::new(404, "no route matches this request")
}

/// Handles one request whose head is at the start of `client.buf`.
pub async fn handle(
    client: &mut Client,
    head: RequestHead,
    ctx: &WorkerContext,
) -> io::Result<Outcome> {
    let plane = ctx.plane();
    let snapshot = ctx.snapshot();
    let settings = &plane.settings;
    let buf = &client.buf;

    let Some(gateway) = resolve::gateway(
        &snapshot,
        head.effective_authority(buf),
        &settings.base_domain,
    ) else {
        return reject(client, &head, ErrorResponse::new(404, "gateway not found")).await;
    };
    if !gateway.active {
        return reject(
            client,
            &head,
            ErrorResponse::new(503, "gateway is inactive"),
        )
        .await;
    }
    if gateway.broken.is_some() {
        let e = ErrorResponse::new(503, "gateway configuration is invalid; see the admin log");
        return reject(client, &head, e).await;
    }

    let Ok(raw_path) = std::str::from_utf8(head.path(buf)) else {
        return reject(
            client,
            &head,
            ErrorResponse::new(400, "invalid request target"),
        )
        .await;
    };
    let normal = match route::normalize(raw_path, settings.encoded_slashes) {
        Ok(normal) => normal,
        Err(e) => return reject(client, &head, ErrorResponse::new(400, e.to_string())).await,
    };
    let path = &*normal.route;
    let lookup = head.method.map(|method| {
        gateway.router.lookup(method, path, |name| {
            head.header(buf, name)
                .and_then(|v| std::str::from_utf8(v).ok())
        })
    });
    let public = matches!(&lookup, Some(Lookup::Matched(m))
        if gateway.rules.get(m.id as usize).is_some_and(|r| r.spec.public));
    let client_ip = plugins::client_ip(client.peer.ip(), &head, buf, &settings.trusted_proxies);

    // CORS preflights carry no credentials: they are answered before the key check, by the
    // gateway's CORS plugin or the one of the rule the actual request would match.
    if plugins::is_preflight(&head, buf) {
        let requested = head
            .header(buf, "access-control-request-method")
            .and_then(Method::from_bytes);
        let rule_chain = requested
            .and_then(|m| {
                match gateway.router.lookup(m, path, |name| {
                    head.header(buf, name)
                        .and_then(|v| std::str::from_utf8(v).ok())
                }) {
                    Lookup::Matched(found) => gateway.rules.get(found.id as usize),
                    _ => None,
                }
            })
            .map_or(&[][..], |rule| rule.plugins.stage(Stage::PreRequest));
        let chains = [gateway.plugins.stage(Stage::PreRequest), rule_chain];
        if let Some(answer) = plugins::answer_preflight(&chains, &head, buf, client_ip) {
            return reject(client, &head, answer).await;
        }
    }

    let mut key_source = None;
    let mut key_id = None;
    if !public {
        let now = unix_now();
        match auth::check(&head, buf, &gateway.keys, now) {
            KeyCheck::Valid { source, key_id: id } => {
                key_source = Some(source);
                key_id = Some(id.into_bytes());
            }
            failed => {
                let message = failed.failure().unwrap_or("invalid API key");
                let challenge = if matches!(failed, KeyCheck::Missing) {
                    "Bearer realm=\"shardgate\"".to_owned()
                } else {
                    "Bearer realm=\"shardgate\", error=\"invalid_token\"".to_owned()
                };
                let e = ErrorResponse::new(401, message).header("WWW-Authenticate", challenge);
                return reject(client, &head, e).await;
            }
        }
    }

    // The gateway's plugins run before routing answers, the rule's after.
    let facts = Facts {
        head: &head,
        buf,
        client_ip,
        key_id,
    };
    let mut effects = Effects::default();
    let gateway_chain = gateway.plugins.stage(Stage::PreRequest);
    if let Err(e) = plugins::pre_request(plane, gateway_chain, &facts, &mut effects) {
        return reject(client, &head, e).await;
    }
    let route = match lookup {
        None => {
            let e = ErrorResponse::new(501, "request method not supported by this gateway");
            return reject(client, &head, with_effects(e, &effects)).await;
        }
        Some(Lookup::NotFound) => {
            return reject(client, &head, with_effects(not_found(), &effects)).await;
        }
        Some(Lookup::MethodNotAllowed { allow }) => {
            let e = ErrorResponse::new(405, "method not allowed for this path")
                .header("Allow", allow.to_string());
            return reject(client, &head, with_effects(e, &effects)).await;
        }
        Some(Lookup::Matched(m)) => m,
    };
    let Some(rule) = gateway.rules.get(route.id as usize) else {
        return reject(client, &head, with_effects(not_found(), &effects)).await;
    };
    let rule_chain = rule.plugins.stage(Stage::PreRequest);
    if let Err(e) = plugins::pre_request(plane, rule_chain, &facts, &mut effects) {
        return reject(client, &head, with_effects(e, &effects)).await;
    }
    plugins::pre_response(
        gateway.plugins.stage(Stage::PreResponse),
        &facts,
        &mut effects,
    );
    plugins::pre_response(rule.plugins.stage(Stage::PreResponse), &facts, &mut effects);
    let body_limit = effects
        .body_limit
        .map_or(settings.max_body, |l| l.min(settings.max_body));
    if let BodyKind::Length(n) = head.body
        && n > body_limit
    {
        let e = ErrorResponse::new(413, format!("request body exceeds {body_limit} bytes"));
        return reject(client, &head, with_effects(e, &effects)).await;
    }
    let Some(service) = plane.picker.service(rule).cloned() else {
        let e = ErrorResponse::new(503, "no service available for this route");
        return reject(client, &head, with_effects(e, &effects)).await;
    };

    let forward_path = if rule.spec.strip_path {
        normal.forward_after(route.matched_prefix_len)
    } else {
        &normal.forward
    };
    let hash_header = service
        .upstreams
        .first()
        .and_then(|u| u.spec.spec.hash_header.as_deref());
    let prepared = prepare(
        &head,
        buf,
        Forwarding {
            path: forward_path,
            preserve_host: rule.spec.preserve_host,
            key_source,
            peer: client.peer.ip(),
            hash_header,
            transforms: &effects.request_transforms,
        },
    );
    drop(normal);
    forward::forward(client, prepared, &service, ctx, effects, body_limit).await
}

/// Adds the headers earlier plugins promised (rate-limit, CORS) to an error answer.
fn with_effects(mut error: ErrorResponse, effects: &Effects) -> ErrorResponse {
    error.headers.extend(effects.header_pairs());
    error
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Headers the gateway sets or drops itself, besides hop-by-hop ones. Gateway keys never
/// leave the gateway (see [`auth::is_gateway_credential`]).
fn is_rewritten(name: &[u8], value: &[u8], key_source: Option<KeySource>) -> bool {
    const OWN: [&[u8]; 7] = [
        b"host",
        b"content-length",
        b"expect",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"via",
    ];
    OWN.iter().any(|own| name.eq_ignore_ascii_case(own))
        || auth::is_gateway_credential(name, value, key_source)
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Builds the upstream request from the client's head (RFC 9110 §7.6: hop-by-hop fields
/// and those named in Connection are removed; forwarding fields are appended).
/// How the matched rule and the request's plugins shape the upstream request.
struct Forwarding<'a> {
    /// The normalized path, stripped when the rule says so.
    path: &'a str,
    preserve_host: bool,
    key_source: Option<KeySource>,
    /// The socket peer (appended to X-Forwarded-For).
    peer: IpAddr,
    hash_header: Option<&'a str>,
    transforms: &'a [Arc<PluginSettings>],
}

fn prepare(head: &RequestHead, buf: &[u8], fwd: Forwarding<'_>) -> UpstreamRequest {
    let Forwarding {
        path,
        preserve_host,
        key_source,
        peer,
        hash_header,
        transforms,
    } = fwd;
    let http10 = head.version_minor == 0;
    let mut request_line = Vec::with_capacity(path.len() + 32);
    request_line.extend_from_slice(head.method_bytes(buf));
    request_line.push(b' ');
    request_line.extend_from_slice(path.as_bytes());
    if let Some(query) = head.query {
        request_line.push(b'?');
        request_line.extend_from_slice(query.get(buf));
    }
    for t in transforms {
        if let PluginSettings::RequestTransformer(t) = &**t
            && let Some(suffix) = t.query_suffix()
        {
            request_line.push(if head.query.is_some() || request_line.contains(&b'?') {
                b'&'
            } else {
                b'?'
            });
            request_line.extend_from_slice(suffix.as_bytes());
        }
    }
    request_line.extend_from_slice(if http10 { b" HTTP/1.0" } else { b" HTTP/1.1" });

    let connection = head.connection_tokens(buf);
    let mut headers = Vec::with_capacity(head.head_len + 128);
    let mut forwarded_for: Option<Vec<u8>> = None;
    let mut via: Option<Vec<u8>> = None;
    let mut upgrade_value: Option<&[u8]> = None;
    for (name, value) in head.headers(buf) {
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            let list = forwarded_for.get_or_insert_with(Vec::new);
            if !list.is_empty() {
                list.extend_from_slice(b", ");
            }
            list.extend_from_slice(value);
            continue;
        }
        if name.eq_ignore_ascii_case(b"via") {
            let list = via.get_or_insert_with(Vec::new);
            if !list.is_empty() {
                list.extend_from_slice(b", ");
            }
            list.extend_from_slice(value);
            continue;
        }
        if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade_value = Some(value);
        }
        if is_hop_by_hop(name, &connection) || is_rewritten(name, value, key_source) {
            continue;
        }
        push_header(&mut headers, name, value);
    }
    if !transforms.is_empty() {
        headers = transformed(&headers, transforms);
    }

    let mut xff = forwarded_for.unwrap_or_default();
    if !xff.is_empty() {
        xff.extend_from_slice(b", ");
    }
    // Formatted straight into the header value: no intermediate String per request.
    let _ = std::io::Write::write_fmt(&mut xff, format_args!("{peer}"));
    push_header(&mut headers, b"X-Forwarded-For", &xff);
    push_header(&mut headers, b"X-Forwarded-Proto", b"http");
    let client_host = head.effective_authority(buf);
    if let Some(host) = client_host {
        push_header(&mut headers, b"X-Forwarded-Host", host);
    }
    let mut via_value = via.unwrap_or_default();
    if !via_value.is_empty() {
        via_value.extend_from_slice(b", ");
    }
    via_value.extend_from_slice(if http10 {
        b"1.0 shardgate"
    } else {
        b"1.1 shardgate"
    });
    push_header(&mut headers, b"Via", &via_value);

    match head.body {
        BodyKind::Length(n) => {
            headers.extend_from_slice(b"Content-Length: ");
            crate::respond::push_decimal(&mut headers, n);
            headers.extend_from_slice(b"\r\n");
        }
        BodyKind::Chunked => headers.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        BodyKind::None | BodyKind::CloseDelimited => {}
    }
    let upgrade = head.upgrade && upgrade_value.is_some();
    if let (true, Some(value)) = (upgrade, upgrade_value) {
        headers.extend_from_slice(b"Connection: Upgrade\r\n");
        push_header(&mut headers, b"Upgrade", value);
    } else if http10 {
        headers.extend_from_slice(b"Connection: close\r\n");
    }

    let hash = match hash_header {
        Some(name) => head.header(buf, name).map(hash_bytes),
        None => Some(match peer {
            IpAddr::V4(ip) => hash_bytes(&ip.octets()),
            IpAddr::V6(ip) => hash_bytes(&ip.octets()),
        }),
    };
    let method = head.method;
    UpstreamRequest {
        request_line,
        preserved_host: preserve_host
            .then(|| client_host.map(<[u8]>::to_vec))
            .flatten(),
        headers,
        body: head.body,
        head_len: head.head_len,
        idempotent: matches!(
            method,
            Some(
                Method::Get
                    | Method::Head
                    | Method::Options
                    | Method::Put
                    | Method::Delete
                    | Method::Trace
            )
        ),
        is_head: method == Some(Method::Head),
        expect_continue: head.expect_continue,
        upgrade,
        upgrade_protocols: match (upgrade, upgrade_value) {
            (true, Some(value)) => value.to_vec(),
            _ => Vec::new(),
        },
        http10,
        client_keep_alive: head.keep_alive,
        hash,
    }
}

/// Applies `request_transformer`s to serialized header lines (the slow path, taken only when
/// such a plugin runs).
fn transformed(lines: &[u8], transforms: &[Arc<PluginSettings>]) -> Vec<u8> {
    let mut list: Vec<(String, String)> = lines
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let line = line.strip_suffix(b"\r")?;
            let colon = line.iter().position(|&b| b == b':')?;
            let name = String::from_utf8_lossy(&line[..colon]).into_owned();
            let value = String::from_utf8_lossy(line[colon + 1..].trim_ascii()).into_owned();
            Some((name, value))
        })
        .collect();
    for t in transforms {
        if let PluginSettings::RequestTransformer(t) = &**t {
            t.apply(&mut list);
        }
    }
    let mut out = Vec::with_capacity(lines.len() + 64);
    for (name, value) in &list {
        push_header(&mut out, name.as_bytes(), value.as_bytes());
    }
    out
}

/// Answers with an error the gateway produced itself. The connection is kept only when
/// the request had no body left to read (it would otherwise be taken for the next request).
pub async fn reject(
    client: &mut Client,
    head: &RequestHead,
    error: ErrorResponse,
) -> io::Result<Outcome> {
    let bodyless = matches!(head.body, BodyKind::None | BodyKind::Length(0));
    let keep_alive = head.keep_alive && bodyless;
    let is_head = head.method == Some(Method::Head);
    client.consume(head.head_len);
    client.send_error(&error, !keep_alive, is_head).await?;
    if !keep_alive {
        client.linger().await;
    }
    Ok(Outcome::Done { keep_alive })
}
