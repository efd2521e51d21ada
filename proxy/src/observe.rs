//! Observe: what the gateway records about each request — its id ([`RequestId`]), the
//! facts the stages note on the way ([`Trace`]), and at the end one count in this worker's
//! metrics and, when the access log is on, one JSON line ([`finish`]).
//!
//! A trace lives in the request slot (`connection::RequestSlot`) and is reused request
//! after request; the client holds a handle to it while a request runs, so every stage
//! that has the client can note what it learns (the status it sent, the bytes it moved)
//! without another parameter.
//!
//! Request ids: a client's `X-Request-Id` is kept when it is 1 to
//! [`MAX_REQUEST_ID`] bytes of `A-Z a-z 0-9 - _ . : + = / @`; otherwise (absent, too long,
//! other bytes) the gateway makes one, 32 hex digits from a per-worker random generator.
//! The id goes upstream as `X-Request-Id`, back to the client as `X-Request-Id` (replacing
//! an upstream's own), into every error body the gateway writes (`"request_id"`), and into
//! the access log.

use std::cell::{Cell, RefCell};
use std::io::Write as _;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use shardgate_core::fxhash::FxMap;
use shardgate_core::metrics::{Cause, Observation};
use shardgate_core::snapshot::Snapshot;
use shardgate_core::usage;
use uuid::Uuid;

use crate::plane::WorkerContext;
use crate::wire::{push_decimal, sixteen_hex};

/// Longest client-chosen request id kept.
pub const MAX_REQUEST_ID: usize = 128;

/// A request id: up to [`MAX_REQUEST_ID`] bytes that need no escaping in a header, a JSON
/// string or a log line.
#[derive(Clone)]
pub struct RequestId {
    bytes: [u8; MAX_REQUEST_ID],
    len: u8,
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId {
            bytes: [0; MAX_REQUEST_ID],
            len: 0,
        }
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'+' | b'=' | b'/' | b'@')
}

impl RequestId {
    /// A client's id, when it is acceptable.
    pub fn parse(value: &[u8]) -> Option<RequestId> {
        if value.is_empty() || value.len() > MAX_REQUEST_ID || !value.iter().all(|&b| allowed(b)) {
            return None;
        }
        let mut id = RequestId::default();
        id.bytes[..value.len()].copy_from_slice(value);
        id.len = value.len() as u8;
        Some(id)
    }

    /// A new id: 128 random bits as 32 hex digits.
    pub fn generate() -> RequestId {
        let mut id = RequestId::default();
        id.bytes[..16].copy_from_slice(&sixteen_hex(next_random()).to_le_bytes());
        id.bytes[16..32].copy_from_slice(&sixteen_hex(next_random()).to_le_bytes());
        id.len = 32;
        id
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn as_str(&self) -> &str {
        // Only allowed (ASCII) bytes are ever stored.
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

thread_local! {
    /// wyrand state of this worker thread, seeded from the OS once.
    static RANDOM: Cell<u64> = Cell::new({
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        u64::from_le_bytes(seed) | 1
    });
}

/// wyrand: fast, and unpredictable enough for ids (they are not secrets).
pub(crate) fn next_random() -> u64 {
    // `try_with`: a request recorded while its thread is being torn down still gets an id.
    RANDOM
        .try_with(|state| {
            let s = state.get().wrapping_add(0xa076_1d64_78bd_642f);
            state.set(s);
            let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
            ((t >> 64) as u64) ^ (t as u64)
        })
        .unwrap_or(0x9e37_79b9_7f4a_7c15)
}

/// What one request's stages noted.
#[derive(Debug)]
pub struct Trace {
    pub start: Instant,
    /// Empty until a stage needs it (then taken from the request or generated).
    pub id: RequestId,
    pub obs: Observation,
    /// A request head was read (else nothing is recorded unless an error was sent).
    pub head_seen: bool,
    pub rule_index: Option<u32>,
    /// When the current upstream attempt began (taken when its response head arrives or
    /// it fails: see [`Trace::upstream_head`]).
    pub attempt_began: Option<Instant>,
    pub target_index: Option<u32>,
    pub key_id: Option<[u8; 16]>,
    /// The key check refused the request (401): usage counts it as `unauthenticated`.
    pub unauthenticated: bool,
    /// The client's address as the plugins see it (after `trusted_proxies`).
    pub client_ip: Option<std::net::IpAddr>,
    /// The gateway's own answer: why (its error message).
    pub reason: String,
    /// For the access log: the path (no query) and the snapshot the request ran on.
    pub path: Vec<u8>,
    #[allow(
        clippy::redundant_allocation,
        reason = "the worker's per-core snapshot handle"
    )]
    pub snapshot: Option<Rc<Arc<Snapshot>>>,
}

impl Default for Trace {
    fn default() -> Self {
        Trace {
            start: Instant::now(),
            id: RequestId::default(),
            obs: Observation::default(),
            head_seen: false,
            rule_index: None,
            attempt_began: None,
            target_index: None,
            key_id: None,
            unauthenticated: false,
            client_ip: None,
            reason: String::new(),
            path: Vec::new(),
            snapshot: None,
        }
    }
}

impl Trace {
    /// Ready for the next request (buffers kept).
    pub fn reset(&mut self) {
        self.start = crate::clock::now();
        self.id.len = 0;
        self.obs = Observation::default();
        self.head_seen = false;
        self.rule_index = None;
        self.attempt_began = None;
        self.target_index = None;
        self.key_id = None;
        self.unauthenticated = false;
        self.client_ip = None;
        self.reason.clear();
        self.path.clear();
        self.snapshot = None;
    }

    /// The request id, generated now if no stage has set one.
    pub fn id(&mut self) -> &RequestId {
        if self.id.is_empty() {
            self.id = RequestId::generate();
        }
        &self.id
    }

    /// An attempt at target `index` of `upstream` begins.
    pub fn attempt(&mut self, upstream: Uuid, index: usize) {
        self.obs.upstream = upstream;
        self.target_index = Some(index as u32);
        if self.obs.attempts > 0 {
            self.obs.retries = self.obs.retries.saturating_add(1);
        }
        self.obs.attempts = self.obs.attempts.saturating_add(1);
        self.attempt_began = Some(crate::clock::now());
    }

    /// The current attempt's response head arrived, or it ended without one: its time
    /// counts toward the upstream time (once per attempt).
    pub fn upstream_head(&mut self) {
        if let Some(began) = self.attempt_began.take() {
            let us = crate::clock::now()
                .saturating_duration_since(began)
                .as_micros() as u64;
            self.obs.upstream_us = Some(self.obs.upstream_us.unwrap_or(0) + us);
        }
    }

    /// The client went away before its answer reached it: 499, like nginx (an answer
    /// already partly sent keeps its status).
    pub fn client_left(&mut self) {
        if self.obs.bytes_out == 0 {
            self.obs.status = 499;
        }
    }

    /// An upstream attempt failed for `cause`.
    pub fn failed(&mut self, cause: Cause) {
        if let Some(i) = Cause::ALL.iter().position(|c| *c == cause) {
            self.obs.failures[i] = self.obs.failures[i].saturating_add(1);
        }
    }
}

/// The client's handle on its request's trace (see the module docs).
pub type TraceHandle = Rc<RefCell<Trace>>;

/// Records the finished request: metrics, and the access-log line.
pub fn finish(trace: &mut Trace, ctx: &WorkerContext, peer: std::net::SocketAddr) {
    if !trace.head_seen && trace.obs.status == 0 {
        // The connection closed (or idled out) between requests: no request to count.
        return;
    }
    if trace.obs.status == 0 {
        // Like nginx: the client closed before it was answered.
        trace.obs.status = 499;
    }
    let now = crate::clock::now();
    trace.obs.total_us = now.saturating_duration_since(trace.start).as_micros() as u64;
    let plane = ctx.plane();
    let (metrics, usage) = (plane.settings.request_metrics, plane.settings.usage);
    if metrics || usage {
        trace.obs.key = match trace.key_id {
            Some(id) => Uuid::from_bytes(id),
            None if trace.unauthenticated => usage::UNAUTHENTICATED,
            None => usage::ANONYMOUS,
        };
        trace.obs.client_ip = Some(trace.client_ip.unwrap_or(peer.ip()));
        plane.metrics.record(&trace.obs, metrics, usage);
    }
    if let Some(log) = &plane.access_log {
        log.push(
            |out| write_line(out, trace, ctx.id(), peer, now),
            &plane.metrics,
        );
    }
}

/// Appends `key` (`,"name":`) and `value` as a JSON string, or `null`. Values that need
/// no escaping (the usual names and paths) are copied as they are; others (not UTF-8 too,
/// as a path may be) are escaped, invalid bytes replaced.
#[inline]
fn json(out: &mut Vec<u8>, key: &[u8], value: Option<&[u8]>) {
    out.extend_from_slice(key);
    match value {
        Some(v)
            if v.iter()
                .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') =>
        {
            out.push(b'"');
            out.extend_from_slice(v);
            out.push(b'"');
        }
        Some(v) => {
            let _ = serde_json::to_writer(&mut *out, &String::from_utf8_lossy(v));
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// Appends `key` (`,"name":`) and microseconds as seconds with six decimals (no float
/// formatting).
#[inline]
fn seconds(out: &mut Vec<u8>, key: &[u8], us: u64) {
    out.extend_from_slice(key);
    push_decimal(out, us / 1_000_000);
    // `.` and the fraction's six digits as one 8-byte store ("00dddddd" moved down a
    // byte, its remaining `0` made the `.`), the last byte cut off.
    let frac = crate::wire::eight_digits((us % 1_000_000) as u32);
    let start = out.len();
    out.extend_from_slice(&(((frac >> 8) & !0xff) | u64::from(b'.')).to_le_bytes());
    out.truncate(start + 7);
}

/// Appends `key` (`,"name":`) and `n`.
#[inline]
fn number(out: &mut Vec<u8>, key: &[u8], n: u64) {
    out.extend_from_slice(key);
    push_decimal(out, n);
}

/// A worker's wall clock for log lines: the second it is in, as the monotonic instant that
/// second began and its text. The system clock is read when a line falls outside that
/// second (so at most once a second, and a step of the clock shows within a second); within
/// it, a line's milliseconds are the monotonic time since the second began.
struct Clock {
    /// The instant the current second began (none before the first line).
    second_began: Option<Instant>,
    /// That second's date and time (`2026-11-24T04:21:25.`).
    prefix: Vec<u8>,
}

thread_local! {
    static CLOCK: RefCell<Clock> = const {
        RefCell::new(Clock { second_began: None, prefix: Vec::new() })
    };
}

/// The system time at the monotonic instant `at` (read now, moved by how far `at` is from
/// now).
fn system_time_at(at: Instant) -> std::time::Duration {
    let (mono, wall) = (Instant::now(), system_time());
    match at.checked_duration_since(mono) {
        Some(ahead) => wall + ahead,
        None => wall.saturating_sub(mono.duration_since(at)),
    }
}

fn system_time() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Appends `secs`'s date and time to the second, then `.` (RFC 3339, UTC).
fn push_prefix(buf: &mut Vec<u8>, secs: u64) {
    let t = time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let _ = write!(
        buf,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
}

/// Appends the UTC time at `now` as RFC 3339 with milliseconds, quoted. The system clock
/// is read at most once a second per worker (a step of the clock shows within a second).
fn timestamp(out: &mut Vec<u8>, now: Instant) {
    out.push(b'"');
    let cached = CLOCK.try_with(|clock| {
        let mut clock = clock.borrow_mut();
        let into_second = clock
            .second_began
            .and_then(|began| now.checked_duration_since(began))
            .filter(|into| into.as_secs() == 0);
        let ms = match into_second {
            Some(into) => into.subsec_millis(),
            None => {
                let wall = system_time_at(now);
                let into = std::time::Duration::from_nanos(u64::from(wall.subsec_nanos()));
                clock.second_began = now.checked_sub(into);
                clock.prefix.clear();
                push_prefix(&mut clock.prefix, wall.as_secs());
                wall.subsec_millis()
            }
        };
        out.extend_from_slice(&clock.prefix);
        ms
    });
    let ms = cached.unwrap_or_else(|_| {
        let wall = system_time();
        push_prefix(out, wall.as_secs());
        wall.subsec_millis()
    });
    out.extend_from_slice(&[
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
        b'"',
    ]);
}

/// Appends `ip:port` (`[ip]:port` for IPv6); IPv4, the usual case, without the
/// formatting machinery.
fn socket_addr(out: &mut Vec<u8>, peer: std::net::SocketAddr) {
    match peer {
        std::net::SocketAddr::V4(v4) => {
            crate::wire::push_ip(out, std::net::IpAddr::V4(*v4.ip()));
            out.push(b':');
            push_decimal(out, u64::from(v4.port()));
        }
        std::net::SocketAddr::V6(_) => {
            let _ = write!(out, "{peer}");
        }
    }
}

/// Appends `key` (`,"name":`) and a UUID as a quoted hyphenated lowercase string, or
/// `null`: its two halves made hex digits at once ([`sixteen_hex`]) and laid out as
/// `8-4-4-4-12` in one buffer.
#[inline]
fn uuid(out: &mut Vec<u8>, key: &[u8], id: Option<Uuid>) {
    out.extend_from_slice(key);
    match id {
        Some(id) => {
            let (high, low) = id.as_u64_pair();
            let (high, low) = (
                sixteen_hex(high).to_le_bytes(),
                sixteen_hex(low).to_le_bytes(),
            );
            let mut text = [b'-'; 38];
            text[0] = b'"';
            text[1..9].copy_from_slice(&high[..8]);
            text[10..14].copy_from_slice(&high[8..12]);
            text[15..19].copy_from_slice(&high[12..]);
            text[20..24].copy_from_slice(&low[..4]);
            text[25..37].copy_from_slice(&low[4..]);
            text[37] = b'"';
            out.extend_from_slice(&text);
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// Where a request went: what the `gateway` to `method` fields of its line say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Route {
    gateway: Uuid,
    /// `u32::MAX`: none (also for `target`; `method`: `u8::MAX`, no head read).
    rule: u32,
    service: Uuid,
    upstream: Uuid,
    target: u32,
    method: u8,
}

/// Rendered `gateway` … `method` fields by route, for one snapshot version: most traffic
/// takes a few routes, and one copy of a cached fragment costs less than rendering its
/// names, ids and escapes again.
struct Fragments {
    version: u64,
    rendered: FxMap<Route, Box<[u8]>>,
}

/// Routes remembered per worker at most (then the cache starts over).
const MAX_FRAGMENTS: usize = 4096;

thread_local! {
    static FRAGMENTS: RefCell<Fragments> = RefCell::new(Fragments {
        version: u64::MAX,
        rendered: FxMap::default(),
    });
}

/// Appends the route's fields, from the worker's cache when it has them.
fn route_cached(out: &mut Vec<u8>, snap: &Snapshot, route: Route) {
    let cached = FRAGMENTS.try_with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.version != snap.version || cache.rendered.len() >= MAX_FRAGMENTS {
            cache.rendered.clear();
            cache.version = snap.version;
        }
        let fragment = cache.rendered.entry(route).or_insert_with(|| {
            let mut fields = Vec::new();
            route_fields(&mut fields, Some(snap), route);
            fields.into_boxed_slice()
        });
        out.extend_from_slice(fragment);
    });
    if cached.is_err() {
        route_fields(out, Some(snap), route);
    }
}

/// Renders `,"gateway":…,"rule":…,"rule_id":…,"service":…,"target":…,"method":…`.
fn route_fields(out: &mut Vec<u8>, snap: Option<&Snapshot>, route: Route) {
    let gateway = snap.and_then(|snap| snap.gateway_by_id(route.gateway));
    json(
        out,
        b",\"gateway\":",
        gateway.map(|g| g.subdomain.as_bytes()),
    );
    let rule = gateway.and_then(|g| g.rules.get(route.rule as usize));
    json(out, b",\"rule\":", rule.map(|r| r.spec.path.as_bytes()));
    uuid(out, b",\"rule_id\":", rule.map(|r| r.id));
    let service = gateway.and_then(|g| g.services.get(&route.service));
    json(
        out,
        b",\"service\":",
        service.map(|sv| sv.spec.spec.name.as_bytes()),
    );
    let target = gateway
        .and_then(|g| g.upstreams.get(&route.upstream))
        .and_then(|u| u.targets.get(route.target as usize));
    json(
        out,
        b",\"target\":",
        target.map(|t| t.host_header.as_bytes()),
    );
    let method = shardgate_core::metrics::METHODS
        .get(usize::from(route.method))
        .copied();
    json(out, b",\"method\":", method.map(str::as_bytes));
}

/// Appends one JSON access-log line (ending in `\n`).
fn write_line(
    out: &mut Vec<u8>,
    trace: &mut Trace,
    worker: usize,
    peer: std::net::SocketAddr,
    now: Instant,
) {
    out.extend_from_slice(b"{\"time\":");
    timestamp(out, now);
    trace.id();
    out.extend_from_slice(b",\"request_id\":\"");
    out.extend_from_slice(trace.id.as_bytes());
    out.push(b'"');
    number(out, b",\"worker\":", worker as u64);
    out.extend_from_slice(b",\"client\":\"");
    socket_addr(out, peer);
    out.push(b'"');
    let snapshot = trace.snapshot.take();
    let route = Route {
        gateway: trace.obs.gateway,
        rule: trace.rule_index.unwrap_or(u32::MAX),
        service: trace.obs.service,
        upstream: trace.obs.upstream,
        target: trace.target_index.unwrap_or(u32::MAX),
        method: if trace.head_seen {
            trace.obs.method
        } else {
            u8::MAX
        },
    };
    match snapshot.as_deref() {
        Some(snap) => route_cached(out, snap, route),
        None => route_fields(out, None, route),
    }
    json(out, b",\"path\":", Some(&trace.path));
    let o = &trace.obs;
    number(out, b",\"status\":", u64::from(o.status));
    number(out, b",\"bytes_in\":", o.bytes_in);
    number(out, b",\"bytes_out\":", o.bytes_out);
    match o.upstream_us {
        Some(us) => seconds(out, b",\"upstream_time\":", us),
        None => out.extend_from_slice(b",\"upstream_time\":null"),
    }
    seconds(out, b",\"total_time\":", o.total_us);
    uuid(out, b",\"key_id\":", trace.key_id.map(Uuid::from_bytes));
    let reason = (!trace.reason.is_empty()).then_some(trace.reason.as_bytes());
    json(out, b",\"reason\":", reason);
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_kept_only_when_safe_and_bounded() {
        assert_eq!(
            RequestId::parse(b"abc-123_x.y:z").map(|i| i.as_str().to_owned()),
            Some("abc-123_x.y:z".to_owned())
        );
        assert!(RequestId::parse(b"").is_none());
        assert!(RequestId::parse(b"has space").is_none());
        assert!(RequestId::parse(b"quote\"").is_none());
        assert!(RequestId::parse(&[b'a'; MAX_REQUEST_ID]).is_some());
        assert!(RequestId::parse(&[b'a'; MAX_REQUEST_ID + 1]).is_none());
    }

    #[test]
    fn client_addresses_read_as_rust_writes_them() {
        for peer in [
            "127.0.0.1:42952",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.20.3.4:8081",
            "[::1]:443",
            "[2001:db8::7]:1",
        ] {
            let addr: std::net::SocketAddr = peer.parse().expect("an address");
            let mut out = Vec::new();
            socket_addr(&mut out, addr);
            assert_eq!(String::from_utf8(out).expect("ASCII"), addr.to_string());
        }
    }

    #[test]
    fn log_strings_are_valid_json_whatever_their_bytes() {
        let values: [&[u8]; 7] = [
            b"/plain/path-1.2_3~x",
            b"/with \"quote\"",
            b"/back\\slash",
            b"/tab\there\x01",
            b"/del\x7f",
            "/caf\u{e9}".as_bytes(),
            b"/not-utf8-\xff\xfe",
        ];
        for v in values {
            let mut out = b"{\"x\":1".to_vec();
            json(&mut out, b",\"path\":", Some(v));
            out.push(b'}');
            let parsed: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
            assert_eq!(parsed["path"], *String::from_utf8_lossy(v), "{v:?}");
        }
        let mut out = Vec::new();
        json(&mut out, b",\"reason\":", None);
        assert_eq!(out, b",\"reason\":null");
    }

    #[test]
    fn durations_are_seconds_with_six_decimals() {
        for us in [
            0,
            1,
            999,
            999_999,
            1_000_000,
            1_234_567,
            12_000_001,
            987_654_321_012,
        ] {
            let mut out = Vec::new();
            seconds(&mut out, b",\"t\":", us);
            let want = format!(",\"t\":{}.{:06}", us / 1_000_000, us % 1_000_000);
            assert_eq!(String::from_utf8(out).expect("ASCII"), want);
        }
    }

    #[test]
    fn log_times_follow_the_system_clock() {
        let parse = |out: &[u8]| {
            let text = std::str::from_utf8(out).expect("ASCII");
            let text = text.trim_matches('"');
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .expect("RFC 3339")
        };
        let now = Instant::now();
        let before = time::OffsetDateTime::now_utc();
        let mut first = Vec::new();
        timestamp(&mut first, now);
        // The same instant again, and one later within the second the base is kept.
        let mut again = Vec::new();
        timestamp(&mut again, now);
        assert_eq!(first, again);
        let mut later = Vec::new();
        timestamp(&mut later, now + std::time::Duration::from_millis(500));
        let (first, later) = (parse(&first), parse(&later));
        assert!((first - before).abs() < time::Duration::milliseconds(50));
        let step = later - first;
        assert!(
            step >= time::Duration::milliseconds(499) && step <= time::Duration::milliseconds(501),
            "{step}"
        );
    }

    /// A gateway `tenant` with one upstream, one REST service and one rule at `path`
    /// (the same ids every call, so two states differ only in the path).
    fn tenant(path: &str, ids: [Uuid; 4]) -> shardgate_core::state::State {
        use shardgate_core::model::Record;
        use shardgate_core::state::{Child, Mutation, State};
        fn record<T: serde::de::DeserializeOwned>(id: Uuid, spec: serde_json::Value) -> Record<T> {
            Record {
                id,
                created_at: time::OffsetDateTime::UNIX_EPOCH,
                updated_at: time::OffsetDateTime::UNIX_EPOCH,
                spec: serde_json::from_value(spec).expect("a valid spec"),
            }
        }
        let [g, u, sv, r] = ids;
        let mut state = State::default();
        for m in [
            Mutation::PutGateway(record(
                g,
                serde_json::json!({"name": "t", "subdomain": "tenant"}),
            )),
            Mutation::Put {
                gateway_id: g,
                entity: Child::Upstream(record(
                    u,
                    serde_json::json!({"name": "u", "targets": [{"host": "127.0.0.1", "port": 9000}]}),
                )),
            },
            Mutation::Put {
                gateway_id: g,
                entity: Child::Service(record(
                    sv,
                    serde_json::json!({"name": "svc", "upstream_id": u}),
                )),
            },
            Mutation::Put {
                gateway_id: g,
                entity: Child::Rule(record(
                    r,
                    serde_json::json!({"path": path, "service_id": sv}),
                )),
            },
        ] {
            state.apply(&m).expect("apply");
        }
        state
    }

    #[test]
    fn cached_route_fields_follow_the_snapshot_they_were_rendered_for() {
        use shardgate_core::snapshot::LiteralOnly;
        let ids = [
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        ];
        let route = Route {
            gateway: ids[0],
            rule: 0,
            service: ids[2],
            upstream: ids[1],
            target: 0,
            method: 0,
        };
        let render = |snap: &Snapshot| {
            let (mut cached, mut direct) = (Vec::new(), Vec::new());
            route_cached(&mut cached, snap, route);
            route_fields(&mut direct, Some(snap), route);
            assert_eq!(cached, direct, "the cache renders what route_fields does");
            String::from_utf8(cached).expect("UTF-8")
        };
        let v1 = Snapshot::compile(1, &tenant("/v1/*", ids), &LiteralOnly);
        let first = render(&v1);
        assert!(
            first.contains(r#""gateway":"tenant","rule":"/v1/*""#),
            "{first}"
        );
        assert!(
            first.contains(r#""service":"svc","target":"127.0.0.1:9000","method":"GET""#),
            "{first}"
        );
        // Cached now: the same again.
        assert_eq!(render(&v1), first);
        // The same ids and indices in a later snapshot whose rule changed its path.
        let v2 = Snapshot::compile(2, &tenant("/v2/*", ids), &LiteralOnly);
        let second = render(&v2);
        assert!(second.contains(r#""rule":"/v2/*""#), "{second}");
    }

    #[test]
    fn uuids_are_written_as_the_uuid_crate_writes_them() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mixed = (0..1000).map(|_| Uuid::from_u64_pair(next(), next()));
        let edges = [
            Uuid::nil(),
            Uuid::max(),
            Uuid::from_u128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210),
        ];
        for id in mixed.chain(edges) {
            let mut out = Vec::new();
            uuid(&mut out, b",\"id\":", Some(id));
            assert_eq!(
                String::from_utf8(out).expect("ASCII"),
                format!(",\"id\":\"{id}\"")
            );
        }
        let mut out = Vec::new();
        uuid(&mut out, b",\"id\":", None);
        assert_eq!(out, b",\"id\":null");
    }

    #[test]
    fn generated_ids_are_32_hex_digits_and_differ() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.as_str(), b.as_str());
    }
}
