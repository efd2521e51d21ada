//! Plugins: the compiled chains of a request's gateway and rule, run stage by stage.
//!
//! What each stage means here:
//!
//! - `pre_request` — after the key check, before any upstream is called. A plugin may
//!   reject (a typed [`Refusal`] with the headers it promises — the status is chosen in
//!   [`crate::refusal`]; the chain stops and the upstream never sees the request) or shape the request (`request_transformer`) and the response to come
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

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::Arc;

use shardgate_core::http1::{BodyKind, RequestHead};
use shardgate_core::net::CidrSet;
use shardgate_core::plugins::{CorsSettings, PluginSettings};
use shardgate_core::ratelimit::{Dimension, Quota, Rejected, Subjects};
use shardgate_core::snapshot::CompiledPlugin;

use crate::plane::{Plane, now_ms};
use crate::refusal::Refusal;

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
    /// The quotas of every rate limiter that admitted the request, kept as numbers and
    /// written straight into the response head: no formatting allocation per request.
    pub rate_limit: RateLimitView,
}

/// What the rate-limit headers will say. Several limiters (gateway and rule) merge: the
/// combined and per-dimension headers keep the tightest quota, the policies are all listed.
#[derive(Debug, Default, Clone)]
pub struct RateLimitView {
    tightest: Option<Quota>,
    per_dimension: [Option<Quota>; 3],
    /// Every policy in order (a gateway and a rule limiter with 3 dimensions each fit).
    policies: [Option<Quota>; 6],
}

fn dimension_index(d: Dimension) -> usize {
    match d {
        Dimension::Global => 0,
        Dimension::PerIp => 1,
        Dimension::PerUser => 2,
    }
}

fn tighter(candidate: &Quota, current: Option<&Quota>) -> bool {
    current.is_none_or(|c| {
        (candidate.remaining, std::cmp::Reverse(candidate.reset_secs))
            <= (c.remaining, std::cmp::Reverse(c.reset_secs))
    })
}

impl RateLimitView {
    pub fn is_empty(&self) -> bool {
        self.tightest.is_none()
    }

    /// Adds the quotas of one limiter's admission (or rejection).
    pub fn record(&mut self, quotas: impl IntoIterator<Item = Quota>) {
        for q in quotas {
            if tighter(&q, self.tightest.as_ref()) {
                self.tightest = Some(q);
            }
            let slot = &mut self.per_dimension[dimension_index(q.dimension)];
            if tighter(&q, slot.as_ref()) {
                *slot = Some(q);
            }
            if let Some(free) = self.policies.iter_mut().find(|p| p.is_none()) {
                *free = Some(q);
            }
        }
    }

    /// Writes the header lines (`Name: value\r\n`) into a response head. What depends only
    /// on the policies (names, limits, windows: most of the bytes and half the numbers) is
    /// rendered once per worker for each of the last few sets of policies seen and copied;
    /// only the counts are formatted per response.
    pub fn write(&self, out: &mut Vec<u8>) {
        if self.tightest.is_none() {
            return;
        }
        let key = self.key();
        RENDERED.with_borrow_mut(|memo| memo.get(&key).write(self, out));
    }

    /// What the rendered headers depend on (see [`PolicyKey`]).
    fn key(&self) -> PolicyKey {
        self.policies
            .map(|p| p.map(|q| (q.dimension, q.limit, q.window_secs)))
    }

    /// [`RateLimitView::write`] with every byte formatted: for quotas beyond the six kept
    /// policies, and the reference the rendered form is tested against.
    fn write_direct(&self, out: &mut Vec<u8>) {
        let Some(t) = self.tightest else { return };
        let line = |out: &mut Vec<u8>, name: &str, n: u64| {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            crate::wire::push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        };
        line(out, "X-RateLimit-Limit", t.limit);
        line(out, "X-RateLimit-Remaining", t.remaining);
        line(out, "X-RateLimit-Reset", t.reset_secs);
        for q in self.per_dimension.iter().flatten() {
            let [limit, remaining, reset] = dimension_prefix(q.dimension);
            line(out, limit, q.limit);
            line(out, remaining, q.remaining);
            line(out, reset, q.reset_secs);
        }
        out.extend_from_slice(b"RateLimit-Policy: ");
        for (i, q) in self.policies.iter().flatten().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            out.push(b'"');
            out.extend_from_slice(q.dimension.as_str().as_bytes());
            out.extend_from_slice(b"\";q=");
            crate::wire::push_decimal(out, q.limit);
            out.extend_from_slice(b";w=");
            crate::wire::push_decimal(out, q.window_secs);
        }
        out.extend_from_slice(b"\r\nRateLimit: \"");
        out.extend_from_slice(t.dimension.as_str().as_bytes());
        out.extend_from_slice(b"\";r=");
        crate::wire::push_decimal(out, t.remaining);
        out.extend_from_slice(b";t=");
        crate::wire::push_decimal(out, t.reset_secs);
        out.extend_from_slice(b"\r\n");
    }

    /// The same headers as owned pairs, for the gateway's own (error) answers.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut raw = Vec::new();
        self.write(&mut raw);
        let text = String::from_utf8_lossy(&raw);
        text.split("\r\n")
            .filter_map(|line| line.split_once(": "))
            .filter_map(|(name, value)| static_name(name).map(|n| (n, value.to_owned())))
            .collect()
    }
}

/// The policies of a [`RateLimitView`] as the rendered headers depend on them:
/// dimension, limit and window of each, in order.
type PolicyKey = [Option<(Dimension, u64, u64)>; 6];

/// Sets of policies a worker keeps rendered (a worker serving more limiter configurations
/// than this at once renders again on a miss: what every response cost before).
const RENDERED_SETS: usize = 4;

/// The policy-only parts of the rate-limit headers, for one set of policies: each part
/// ends where a per-response count follows.
#[derive(Debug, Default)]
struct Rendered {
    key: PolicyKey,
    bytes: Vec<u8>,
    /// Per policy: `X-RateLimit-Limit: L\r\nX-RateLimit-Remaining: `.
    generic: [std::ops::Range<usize>; 6],
    /// Per policy: `X-RateLimit-<Dim>-Limit: L\r\nX-RateLimit-<Dim>-Remaining: `.
    dimensional: [std::ops::Range<usize>; 6],
    /// Per policy: `\r\nX-RateLimit-<Dim>-Reset: `.
    reset: [std::ops::Range<usize>; 6],
    /// `RateLimit-Policy: …\r\nRateLimit: "`.
    policy: std::ops::Range<usize>,
}

impl Rendered {
    fn render(&mut self, key: &PolicyKey) {
        self.key = *key;
        let bytes = &mut self.bytes;
        bytes.clear();
        let mark = |bytes: &Vec<u8>, start: usize| start..bytes.len();
        for (i, policy) in key.iter().enumerate() {
            let Some((dimension, limit, _)) = *policy else {
                (self.generic[i], self.dimensional[i], self.reset[i]) = (0..0, 0..0, 0..0);
                continue;
            };
            let [limit_name, remaining_name, reset_name] = dimension_prefix(dimension);
            let start = bytes.len();
            bytes.extend_from_slice(b"X-RateLimit-Limit: ");
            crate::wire::push_decimal(bytes, limit);
            bytes.extend_from_slice(b"\r\nX-RateLimit-Remaining: ");
            self.generic[i] = mark(bytes, start);
            let start = bytes.len();
            for part in [limit_name, ": "] {
                bytes.extend_from_slice(part.as_bytes());
            }
            crate::wire::push_decimal(bytes, limit);
            for part in ["\r\n", remaining_name, ": "] {
                bytes.extend_from_slice(part.as_bytes());
            }
            self.dimensional[i] = mark(bytes, start);
            let start = bytes.len();
            for part in ["\r\n", reset_name, ": "] {
                bytes.extend_from_slice(part.as_bytes());
            }
            self.reset[i] = mark(bytes, start);
        }
        let start = bytes.len();
        bytes.extend_from_slice(b"RateLimit-Policy: ");
        for (i, (dimension, limit, window)) in key.iter().flatten().enumerate() {
            if i > 0 {
                bytes.extend_from_slice(b", ");
            }
            bytes.push(b'"');
            bytes.extend_from_slice(dimension.as_str().as_bytes());
            bytes.extend_from_slice(b"\";q=");
            crate::wire::push_decimal(bytes, *limit);
            bytes.extend_from_slice(b";w=");
            crate::wire::push_decimal(bytes, *window);
        }
        bytes.extend_from_slice(b"\r\nRateLimit: \"");
        self.policy = mark(bytes, start);
    }

    /// Writes `view`'s headers (whose policies are this set's).
    fn write(&self, view: &RateLimitView, out: &mut Vec<u8>) {
        let find = |q: &Quota| {
            self.key
                .iter()
                .position(|p| *p == Some((q.dimension, q.limit, q.window_secs)))
        };
        let Some(t) = view.tightest else { return };
        // Every quota the lines name is one of the kept policies, unless more than six
        // were recorded: those are formatted directly.
        let Some(tightest) = find(&t) else {
            return view.write_direct(out);
        };
        let mut dimensions = [None; 3];
        for (slot, quota) in dimensions.iter_mut().zip(&view.per_dimension) {
            if let Some(q) = quota {
                let Some(i) = find(q) else {
                    return view.write_direct(out);
                };
                *slot = Some((i, q));
            }
        }
        let part = |range: &std::ops::Range<usize>| &self.bytes[range.clone()];
        out.extend_from_slice(part(&self.generic[tightest]));
        crate::wire::push_decimal(out, t.remaining);
        out.extend_from_slice(b"\r\nX-RateLimit-Reset: ");
        crate::wire::push_decimal(out, t.reset_secs);
        out.extend_from_slice(b"\r\n");
        for (i, q) in dimensions.iter().flatten() {
            out.extend_from_slice(part(&self.dimensional[*i]));
            crate::wire::push_decimal(out, q.remaining);
            out.extend_from_slice(part(&self.reset[*i]));
            crate::wire::push_decimal(out, q.reset_secs);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(part(&self.policy));
        out.extend_from_slice(t.dimension.as_str().as_bytes());
        out.extend_from_slice(b"\";r=");
        crate::wire::push_decimal(out, t.remaining);
        out.extend_from_slice(b";t=");
        crate::wire::push_decimal(out, t.reset_secs);
        out.extend_from_slice(b"\r\n");
    }
}

/// One worker's rendered sets, replaced round-robin.
#[derive(Debug)]
struct Memo {
    sets: Vec<Rendered>,
    next: usize,
}

impl Memo {
    fn get(&mut self, key: &PolicyKey) -> &Rendered {
        if let Some(i) = self.sets.iter().position(|r| r.key == *key) {
            return &self.sets[i];
        }
        let i = if self.sets.len() < RENDERED_SETS {
            self.sets.push(Rendered::default());
            self.sets.len() - 1
        } else {
            let i = self.next;
            self.next = (i + 1) % RENDERED_SETS;
            i
        };
        self.sets[i].render(key);
        &self.sets[i]
    }
}

thread_local! {
    /// This worker thread's rendered rate-limit header parts (one runtime per thread: per
    /// worker, nothing shared).
    static RENDERED: RefCell<Memo> = const {
        RefCell::new(Memo { sets: Vec::new(), next: 0 })
    };
}

/// The `&'static` spelling of a rate-limit header name.
fn static_name(name: &str) -> Option<&'static str> {
    const NAMES: [&str; 14] = [
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
        "X-RateLimit-Global-Limit",
        "X-RateLimit-Global-Remaining",
        "X-RateLimit-Global-Reset",
        "X-RateLimit-Per-IP-Limit",
        "X-RateLimit-Per-IP-Remaining",
        "X-RateLimit-Per-IP-Reset",
        "X-RateLimit-Per-User-Limit",
        "X-RateLimit-Per-User-Remaining",
        "X-RateLimit-Per-User-Reset",
        "RateLimit-Policy",
        "RateLimit",
    ];
    NAMES.iter().copied().find(|n| *n == name)
}

impl Effects {
    /// Every header the plugins promised, as owned pairs (for the gateway's own answers).
    pub fn header_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = self.rate_limit.pairs();
        pairs.extend(self.response_headers.iter().cloned());
        pairs
    }

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

fn rejected_quota(r: &Rejected) -> Quota {
    Quota {
        dimension: r.dimension,
        limit: r.limit,
        remaining: 0,
        reset_secs: r.reset_secs,
        window_secs: r.window_secs,
    }
}

/// Runs one `pre_request` chain. `Err` is the refusal of the plugin that rejected (or the
/// answer to a CORS preflight).
pub fn pre_request(
    plane: &Plane,
    chain: &[CompiledPlugin],
    facts: &Facts<'_>,
    effects: &mut Effects,
) -> Result<(), Refusal> {
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
                    Ok(admitted) => effects.rate_limit.record(admitted.iter()),
                    Err(rejected) => {
                        effects.rate_limit.record([rejected_quota(&rejected)]);
                        let refusal = Refusal::Plugin {
                            rejection: settings.rejection(rejected),
                            headers: effects.header_pairs(),
                        };
                        effects.rate_limit = RateLimitView::default();
                        effects.response_headers.clear();
                        return Err(refusal);
                    }
                }
            }
            PluginSettings::RequestSizeLimiter(settings) => {
                let (content_length, chunked) = match facts.head.body {
                    BodyKind::Length(n) => (Some(n), false),
                    BodyKind::Chunked => (None, true),
                    BodyKind::None | BodyKind::CloseDelimited => (None, false),
                };
                if let Err(rejection) =
                    settings.check_head(facts.head.head_len, content_length, chunked)
                {
                    return Err(Refusal::plugin(rejection));
                }
                if let Some(limit) = settings.body_limit() {
                    effects.body_limit = Some(effects.body_limit.map_or(limit, |l| l.min(limit)));
                }
            }
            PluginSettings::IpRestriction(settings) => {
                if let Err(rejection) = settings.check_client(facts.client_ip) {
                    return Err(Refusal::plugin(rejection));
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
            // The AI plugins act on the chat request's body and answer: the AI flow
            // (crate::ai) runs them once the body is read; other services ignore them.
            PluginSettings::TokenRateLimiter(_)
            | PluginSettings::PromptGuard(_)
            | PluginSettings::PiiMasking(_) => {}
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
fn preflight(settings: &CorsSettings, facts: &Facts<'_>) -> Option<Refusal> {
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
            Ok(headers) => Refusal::Preflight { headers },
            Err(rejection) => Refusal::plugin(rejection.into()),
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
) -> Option<Refusal> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(dimension: Dimension, limit: u64, remaining: u64, reset_secs: u64) -> Quota {
        Quota {
            dimension,
            limit,
            remaining,
            reset_secs,
            window_secs: 60,
        }
    }

    fn both(view: &RateLimitView) -> (String, String) {
        let (mut rendered, mut direct) = (Vec::new(), Vec::new());
        view.write(&mut rendered);
        view.write_direct(&mut direct);
        (
            String::from_utf8(rendered).expect("ascii"),
            String::from_utf8(direct).expect("ascii"),
        )
    }

    #[test]
    fn rendered_headers_equal_the_directly_formatted_ones() {
        use Dimension::{Global, PerIp, PerUser};
        let mut views = Vec::new();
        let mut one = RateLimitView::default();
        one.record([quota(PerIp, 5, 4, 60)]);
        views.push(one);
        let mut three = RateLimitView::default();
        three.record([
            quota(Global, 1_000_000_000, 999_999_998, 59),
            quota(PerIp, 100, 7, 3),
            quota(PerUser, 20, 19, 60),
        ]);
        views.push(three.clone());
        // A gateway and a rule limiter: six policies, the same dimension twice.
        let mut six = three.clone();
        six.record([
            quota(Global, 50, 0, 1),
            quota(PerIp, 123_456_789_012, 123_456_789_011, 60),
            quota(PerUser, 3, 2, 12),
        ]);
        views.push(six.clone());
        // A seventh quota is tighter than all but is not among the kept policies.
        let mut seven = six.clone();
        seven.record([quota(PerIp, 1, 0, 9)]);
        views.push(seven);
        // More sets than a worker keeps, twice round, so entries are replaced.
        for limit in 1..=(RENDERED_SETS as u64 + 2) {
            let mut v = RateLimitView::default();
            v.record([quota(Global, limit * 10, limit, 60)]);
            views.push(v);
        }
        for _ in 0..2 {
            for view in &views {
                let (rendered, direct) = both(view);
                assert_eq!(rendered, direct);
                assert!(rendered.contains("RateLimit-Policy: "), "{rendered}");
            }
        }
        let (text, _) = both(&six);
        assert!(
            text.starts_with("X-RateLimit-Limit: 50\r\nX-RateLimit-Remaining: 0\r\n"),
            "{text}"
        );
        // The rendered form is what `write` used: the last sets written are in the memo.
        let key = six.key();
        assert!(RENDERED.with_borrow(|memo| memo.sets.iter().any(|r| r.key == key)));
        assert!(RateLimitView::default().is_empty());
        let mut none = Vec::new();
        RateLimitView::default().write(&mut none);
        assert!(none.is_empty());
    }
}
