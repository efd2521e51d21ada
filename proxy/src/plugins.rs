//! Plugins: the compiled chains of a request's gateway and rule, run stage by stage.
//!
//! What each stage means here:
//!
//! - `pre_request` — after the key check, before any upstream is called. A plugin may
//!   reject (its own status, headers and JSON body; the chain stops and the upstream never
//!   sees the request) or shape the request (`request_transformer`) and the response to come
//!   (rate-limit and CORS headers). The gateway's chain runs before routing answers 404/405,
//!   so a rate-limited caller is limited whatever path it probes; the rule's chain runs after.
//! - `post_request` — after the whole request has been handed to the upstream and before
//!   its response is read: the place for "dispatched" accounting. No built-in runs there yet.
//! - `pre_response` — the upstream's response head is in hand: headers may be rewritten
//!   (`response_transformer`, `cors`) before anything reaches the client.
//! - `post_response` — after the client has the whole response: accounting and logging. No
//!   built-in runs there yet.
//!
//! Within a stage the gateway's plugins run before the rule's, each list already sorted by
//! priority at compile time (ties keep configuration order). Disabled plugins were dropped
//! at compile time. Plugins that need nothing per request (no chain) cost one empty-slice
//! check; no allocation happens unless a plugin adds headers or transforms.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Instant;

use shardgate_core::http1::{BodyKind, RequestHead};
use shardgate_core::net::CidrSet;
use shardgate_core::plugins::{CorsSettings, PluginSettings};
use shardgate_core::ratelimit::{Dimension, Quota, Rejected, Subjects};
use shardgate_core::snapshot::CompiledPlugin;

use crate::plane::Plane;
use crate::respond::ErrorResponse;

/// Milliseconds of one process-wide monotonic clock: what every worker passes to the rate
/// limiters, so their slots agree.
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The client address for `per_ip` limits and `ip_restriction`: the socket peer, or, when
/// the peer is a trusted proxy, the rightmost `X-Forwarded-For` address that is not one.
pub fn client_ip(peer: IpAddr, head: &RequestHead, buf: &[u8], trusted: &CidrSet) -> IpAddr {
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for value in head.headers.get_all(buf, "x-forwarded-for") {
        for item in value.split(|&b| b == b',') {
            let text = std::str::from_utf8(item.trim_ascii()).unwrap_or("");
            if let Ok(ip) = text.parse::<IpAddr>() {
                hops.push(ip);
            }
        }
    }
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        client = hop;
        if !trusted.contains(hop) {
            break;
        }
    }
    client
}

/// What a request brings to its plugins.
#[derive(Debug)]
pub struct Facts<'a> {
    pub head: &'a RequestHead,
    pub buf: &'a [u8],
    pub client_ip: IpAddr,
    /// The authenticated key's id (16 bytes), the default `per_user` identity.
    pub key_id: Option<[u8; 16]>,
}

/// What the `pre_request` stage decided for the rest of the exchange.
#[derive(Debug, Default)]
pub struct Effects {
    /// Added to whatever the client gets back (rate-limit headers, CORS headers).
    pub response_headers: Vec<(&'static str, String)>,
    /// `request_transformer`s to apply, in chain order.
    pub request_transforms: Vec<Arc<PluginSettings>>,
    /// `response_transformer`s to apply, in chain order.
    pub response_transforms: Vec<Arc<PluginSettings>>,
    /// The smallest body limit of the `request_size_limiter`s that ran.
    pub body_limit: Option<u64>,
    /// A CORS plugin ran: the gateway owns the response's `Access-Control-*` headers and
    /// the upstream's are dropped (an upstream must not re-allow a refused origin).
    pub owns_cors: bool,
}

impl Effects {
    /// Adds response headers, replacing earlier ones of the same name (a plugin configured
    /// in two stages, e.g. CORS, must not send its headers twice).
    pub fn set_response_headers(
        &mut self,
        headers: impl IntoIterator<Item = (&'static str, String)>,
    ) {
        for (name, value) in headers {
            self.response_headers
                .retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            self.response_headers.push((name, value));
        }
    }
}

fn dimension_prefix(dimension: Dimension) -> [&'static str; 3] {
    match dimension {
        Dimension::Global => [
            "X-RateLimit-Global-Limit",
            "X-RateLimit-Global-Remaining",
            "X-RateLimit-Global-Reset",
        ],
        Dimension::PerIp => [
            "X-RateLimit-Per-IP-Limit",
            "X-RateLimit-Per-IP-Remaining",
            "X-RateLimit-Per-IP-Reset",
        ],
        Dimension::PerUser => [
            "X-RateLimit-Per-User-Limit",
            "X-RateLimit-Per-User-Remaining",
            "X-RateLimit-Per-User-Reset",
        ],
    }
}

/// `X-RateLimit-*` (combined = the tightest dimension, then per dimension) and the IETF
/// draft fields (draft-ietf-httpapi-ratelimit-headers-09: `RateLimit-Policy` lists every
/// policy, `RateLimit` reports the tightest). When several limiters ran (gateway and rule),
/// each header keeps the tightest value and the policies are listed together.
fn rate_limit_headers(out: &mut Vec<(&'static str, String)>, quotas: &[Quota]) {
    let Some(tightest) = quotas
        .iter()
        .min_by_key(|q| (q.remaining, std::cmp::Reverse(q.reset_secs)))
    else {
        return;
    };
    let existing_remaining = |out: &Vec<(&'static str, String)>, name: &str| {
        out.iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.parse::<u64>().ok())
    };
    let set = |out: &mut Vec<(&'static str, String)>, name: &'static str, value: String| {
        out.retain(|(n, _)| *n != name);
        out.push((name, value));
    };
    if existing_remaining(out, "X-RateLimit-Remaining").is_none_or(|r| tightest.remaining <= r) {
        set(out, "X-RateLimit-Limit", tightest.limit.to_string());
        set(out, "X-RateLimit-Remaining", tightest.remaining.to_string());
        set(out, "X-RateLimit-Reset", tightest.reset_secs.to_string());
        set(
            out,
            "RateLimit",
            format!(
                "\"{}\";r={};t={}",
                tightest.dimension, tightest.remaining, tightest.reset_secs
            ),
        );
    }
    for q in quotas {
        let [limit, remaining, reset] = dimension_prefix(q.dimension);
        if existing_remaining(out, remaining).is_none_or(|r| q.remaining <= r) {
            set(out, limit, q.limit.to_string());
            set(out, remaining, q.remaining.to_string());
            set(out, reset, q.reset_secs.to_string());
        }
    }
    let mut policy = quotas
        .iter()
        .map(|q| format!("\"{}\";q={};w={}", q.dimension, q.limit, q.window_secs))
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(pos) = out.iter().position(|(n, _)| *n == "RateLimit-Policy") {
        let (_, earlier) = out.remove(pos);
        policy = format!("{earlier}, {policy}");
    }
    out.push(("RateLimit-Policy", policy));
}

fn rejected_quota(r: &Rejected) -> Quota {
    Quota {
        dimension: r.dimension,
        limit: r.limit,
        remaining: 0,
        reset_secs: r.reset_secs,
        window_secs: r.window_secs,
    }
}

/// Runs one `pre_request` chain. `Err` is the answer of the plugin that rejected.
pub fn pre_request(
    plane: &Plane,
    chain: &[CompiledPlugin],
    facts: &Facts<'_>,
    effects: &mut Effects,
) -> Result<(), ErrorResponse> {
    for plugin in chain {
        match &*plugin.settings {
            PluginSettings::RateLimiter(settings) => {
                let Some(set) = &plugin.limiters else {
                    continue;
                };
                let user = match &settings.user_header {
                    Some(name) => facts.head.header(facts.buf, name),
                    None => facts.key_id.as_ref().map(|id| &id[..]),
                };
                let subjects = Subjects {
                    ip: Some(facts.client_ip),
                    user,
                };
                let verdict =
                    plane
                        .rate_limits
                        .borrow_mut()
                        .try_acquire_all(set, subjects, now_ms());
                match verdict {
                    Ok(admitted) => {
                        let quotas: Vec<Quota> = admitted.iter().collect();
                        rate_limit_headers(&mut effects.response_headers, &quotas);
                    }
                    Err(rejected) => {
                        let retry_after = settings
                            .actions
                            .retry_after
                            .unwrap_or(rejected.retry_after_secs);
                        let mut error = ErrorResponse::new(429, rejected.to_string())
                            .header("Retry-After", retry_after.to_string());
                        error.extra_json = format!(",\"retry_after\":{retry_after}");
                        let mut headers = std::mem::take(&mut effects.response_headers);
                        rate_limit_headers(&mut headers, &[rejected_quota(&rejected)]);
                        error.headers.extend(headers);
                        return Err(error);
                    }
                }
            }
            PluginSettings::RequestSizeLimiter(settings) => {
                let (content_length, chunked) = match facts.head.body {
                    BodyKind::Length(n) => (Some(n), false),
                    BodyKind::Chunked => (None, true),
                    BodyKind::None | BodyKind::CloseDelimited => (None, false),
                };
                if let Err((status, message)) =
                    settings.check_head(facts.head.head_len, content_length, chunked)
                {
                    return Err(ErrorResponse::new(status, message));
                }
                if let Some(limit) = settings.body_limit() {
                    effects.body_limit = Some(effects.body_limit.map_or(limit, |l| l.min(limit)));
                }
            }
            PluginSettings::IpRestriction(settings) => {
                if !settings.permits(facts.client_ip) {
                    return Err(ErrorResponse::new(403, "client IP not allowed"));
                }
            }
            PluginSettings::Cors(settings) => {
                if let Some(answer) = preflight(settings, facts) {
                    return Err(answer);
                }
                let origin = facts.head.header(facts.buf, "origin");
                effects.owns_cors = true;
                effects.set_response_headers(settings.response_headers(origin));
            }
            PluginSettings::RequestTransformer(_) => {
                effects.request_transforms.push(plugin.settings.clone());
            }
            PluginSettings::ResponseTransformer(_) => {
                effects.response_transforms.push(plugin.settings.clone());
            }
        }
    }
    Ok(())
}

/// Registers what a `pre_response` chain will do to the upstream's response.
pub fn pre_response(chain: &[CompiledPlugin], facts: &Facts<'_>, effects: &mut Effects) {
    for plugin in chain {
        match &*plugin.settings {
            PluginSettings::ResponseTransformer(_) => {
                effects.response_transforms.push(plugin.settings.clone());
            }
            PluginSettings::Cors(settings) => {
                let origin = facts.head.header(facts.buf, "origin");
                effects.owns_cors = true;
                effects.set_response_headers(settings.response_headers(origin));
            }
            _ => {}
        }
    }
}

/// Whether a request is a CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`.
pub fn is_preflight(head: &RequestHead, buf: &[u8]) -> bool {
    head.method_bytes(buf) == b"OPTIONS"
        && head.header(buf, "origin").is_some()
        && head.header(buf, "access-control-request-method").is_some()
}

/// The gateway's answer to a CORS preflight (204 or 403), or `None` when `facts` is not one.
fn preflight(settings: &CorsSettings, facts: &Facts<'_>) -> Option<ErrorResponse> {
    if !is_preflight(facts.head, facts.buf) {
        return None;
    }
    let origin = facts.head.header(facts.buf, "origin")?;
    let method = facts
        .head
        .header(facts.buf, "access-control-request-method")?;
    let requested = facts
        .head
        .header(facts.buf, "access-control-request-headers");
    Some(
        match settings.preflight_headers(origin, method, requested) {
            Ok(headers) => {
                let mut answer = ErrorResponse::new(204, "");
                answer.headers.extend(headers);
                answer
            }
            Err(rejection) => ErrorResponse::new(rejection.status(), rejection.to_string()),
        },
    )
}

/// The first CORS plugin in `chain`, if any (preflights are answered before the key check:
/// browsers send them without credentials).
pub fn cors_in(chain: &[CompiledPlugin]) -> Option<&CorsSettings> {
    chain.iter().find_map(|p| match &*p.settings {
        PluginSettings::Cors(settings) => Some(settings),
        _ => None,
    })
}

/// Answers a preflight with the first CORS plugin of the given chains, before auth.
pub fn answer_preflight(
    chains: &[&[CompiledPlugin]],
    head: &RequestHead,
    buf: &[u8],
    client_ip: IpAddr,
) -> Option<ErrorResponse> {
    if !is_preflight(head, buf) {
        return None;
    }
    let settings = chains.iter().find_map(|c| cors_in(c))?;
    let facts = Facts {
        head,
        buf,
        client_ip,
        key_id: None,
    };
    preflight(settings, &facts)
}
