//! Rewrite: the client's request as the upstream will receive it — the normalized (and
//! perhaps stripped) path, hop-by-hop fields and gateway credentials removed,
//! `request_transformer` plugins applied, `X-Forwarded-For/-Proto/-Host` and `Via`
//! appended, framing re-stated — prepared once, before the first attempt, so that retries
//! and the client buffer's later reuse do not depend on the parsed head.

use std::net::IpAddr;
use std::sync::Arc;

use monoio::time::Instant;
use shardgate_core::balance::hash_bytes;
use shardgate_core::http1::{BodyKind, RequestHead, is_hop_by_hop};
use shardgate_core::plugins::PluginSettings;
use shardgate_core::router::Method;

use crate::auth::{self, KeySource};
use crate::exchange::UpstreamRequest;
use crate::observe::RequestId;
use crate::wire;

/// Headers the gateway sets or drops itself, besides hop-by-hop ones. Gateway keys never
/// leave the gateway (see [`auth::is_gateway_credential`]).
fn is_rewritten(name: &[u8], value: &[u8], key_source: Option<KeySource>) -> bool {
    const OWN: [&[u8]; 8] = [
        b"x-request-id",
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

/// How the matched rule and the request's plugins shape the upstream request.
#[derive(Debug)]
pub struct Forwarding<'a> {
    /// The normalized path, stripped when the rule says so.
    pub path: &'a str,
    pub preserve_host: bool,
    pub key_source: Option<KeySource>,
    /// The socket peer (appended to X-Forwarded-For).
    pub peer: IpAddr,
    /// The client came over TLS (`X-Forwarded-Proto: https`).
    pub https: bool,
    pub hash_header: Option<&'a str>,
    pub transforms: &'a [Arc<PluginSettings>],
    /// The service's whole-request deadline, when it has one.
    pub deadline: Option<Instant>,
    /// The request's id (`X-Request-Id` upstream and back to the client).
    pub request_id: RequestId,
}

/// Builds the upstream request from the client's head (RFC 9110 §7.6: hop-by-hop fields
/// and those named in Connection are removed; forwarding fields are appended), into
/// `request_line` and `headers` (cleared first: the worker's pooled buffers, so a request
/// allocates nothing here once they have grown to size).
pub fn prepare(
    head: &RequestHead,
    buf: &[u8],
    fwd: Forwarding<'_>,
    (mut request_line, mut headers): (Vec<u8>, Vec<u8>),
) -> UpstreamRequest {
    let Forwarding {
        path,
        preserve_host,
        key_source,
        peer,
        https,
        hash_header,
        transforms,
        deadline,
        request_id,
    } = fwd;
    let http10 = head.version_minor == 0;
    request_line.clear();
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
    headers.clear();
    let mut upgrade_value: Option<&[u8]> = None;
    for (name, value) in head.headers(buf) {
        if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade_value = Some(value);
        }
        // X-Forwarded-For and Via are re-stated below, the client's values first.
        if name.eq_ignore_ascii_case(b"x-forwarded-for")
            || name.eq_ignore_ascii_case(b"via")
            || is_hop_by_hop(name, &connection)
            || is_rewritten(name, value, key_source)
        {
            continue;
        }
        wire::push_header(&mut headers, name, value);
    }
    if !transforms.is_empty() {
        headers = transformed(&headers, transforms);
    }

    // Each list is written straight into the header block: no intermediate buffer per
    // request (the peer's address is formatted in place).
    headers.extend_from_slice(b"X-Forwarded-For: ");
    push_list(&mut headers, head, buf, "x-forwarded-for");
    wire::push_ip(&mut headers, peer);
    headers.extend_from_slice(b"\r\n");
    let proto: &[u8] = if https { b"https" } else { b"http" };
    wire::push_header(&mut headers, b"X-Forwarded-Proto", proto);
    let client_host = head.effective_authority(buf);
    if let Some(host) = client_host {
        wire::push_header(&mut headers, b"X-Forwarded-Host", host);
    }
    if !request_id.is_empty() {
        wire::push_header(&mut headers, b"X-Request-Id", request_id.as_bytes());
    }
    headers.extend_from_slice(b"Via: ");
    push_list(&mut headers, head, buf, "via");
    headers.extend_from_slice(if http10 {
        b"1.0 shardgate\r\n"
    } else {
        b"1.1 shardgate\r\n"
    });

    match head.body {
        BodyKind::Length(n) => {
            headers.extend_from_slice(b"Content-Length: ");
            wire::push_decimal(&mut headers, n);
            headers.extend_from_slice(b"\r\n");
        }
        BodyKind::Chunked => headers.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        BodyKind::None | BodyKind::CloseDelimited => {}
    }
    let upgrade = head.upgrade && upgrade_value.is_some();
    if let (true, Some(value)) = (upgrade, upgrade_value) {
        headers.extend_from_slice(b"Connection: Upgrade\r\n");
        wire::push_header(&mut headers, b"Upgrade", value);
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
        deadline,
        request_id,
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

/// Appends the values of every `name` field of the client's head, each followed by `, `
/// (a list the gateway then extends with its own member).
fn push_list(out: &mut Vec<u8>, head: &RequestHead, buf: &[u8], name: &str) {
    for value in head.headers.get_all(buf, name) {
        out.extend_from_slice(value);
        out.extend_from_slice(b", ");
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
        // A transform may rename a header into one that carries credentials: the rule that a
        // gateway key never leaves the gateway holds after transforms too.
        if auth::is_gateway_credential(name.as_bytes(), value.as_bytes(), None) {
            continue;
        }
        wire::push_header(&mut out, name.as_bytes(), value.as_bytes());
    }
    out
}
