//! Traffic metrics: what each worker counts per request ([`WorkerMetrics`]) and the
//! Prometheus text (format 0.0.4) the admin thread renders from every worker's counts
//! ([`render`]).
//!
//! Workers count per core: each has its own registry behind its own lock, which only that
//! worker takes per request (uncontended: one acquire and one release on a line no other
//! core writes) and the admin thread takes once per scrape to read it. No counter is shared
//! between workers; the admin thread sums them.
//!
//! Series are keyed by ids (gateway, rule, service, upstream), never by strings on the hot
//! path; [`render`] turns ids into names with the snapshot it is given. An id the snapshot no
//! longer has (a deleted rule) is shown as the id itself.
//!
//! Cardinality is bounded: a worker keeps at most [`MAX_REQUEST_SERIES`] request series
//! (gateway × rule × service × method × status) and [`MAX_SERVICE_SERIES`] per-service
//! series. Past the bound, new label sets are counted in one overflow series per table
//! (`gateway="_overflow"`), and `shardgate_metrics_overflow_total` counts those requests:
//! totals stay exact, only the breakdown is lost. Series live until the process restarts.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use uuid::Uuid;

use crate::fxhash::FxMap;
use crate::snapshot::{CompiledGateway, CompiledUpstream, Snapshot};
use crate::usage::UsageDelta;

/// Upper bounds (`le`) of the duration histograms, in microseconds; `+Inf` follows.
pub const BUCKETS_US: [u64; 16] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];
/// [`BUCKETS_US`] in seconds, as the `le` labels (and the usage export) write them.
pub const BUCKET_LABELS: [&str; 16] = [
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
    "2.5", "5", "10", "30", "60",
];

/// Request series (gateway × rule × service × method × status) one worker keeps.
pub const MAX_REQUEST_SERIES: usize = 50_000;
/// Per-service series (gateway × service, and gateway × upstream) one worker keeps.
pub const MAX_SERVICE_SERIES: usize = 10_000;

/// Method label values, indexed by [`Observation::method`].
pub const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "OTHER",
];

/// The id of the overflow series' gateway.
const OVERFLOW: Uuid = Uuid::max();

/// Why an upstream attempt failed (`cause` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The TCP connect failed or timed out.
    Connect,
    /// The TLS handshake failed.
    Tls,
    /// No response head within the read timeout, or the service deadline passed.
    Timeout,
    /// The connection closed or failed before or while answering.
    Reset,
    /// The response was malformed.
    InvalidResponse,
    /// The upstream answered with a 5xx status.
    Status5xx,
    /// The target's circuit was open (the attempt never reached it).
    CircuitOpen,
    /// Every target was at its `max_connections` for longer than the wait allowed.
    Saturated,
    /// An HTTP/2 upstream refused the stream unprocessed (REFUSED_STREAM, or GOAWAY).
    Refused,
}

impl Cause {
    pub const ALL: [Cause; 9] = [
        Cause::Connect,
        Cause::Tls,
        Cause::Timeout,
        Cause::Reset,
        Cause::InvalidResponse,
        Cause::Status5xx,
        Cause::CircuitOpen,
        Cause::Saturated,
        Cause::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Connect => "connect",
            Cause::Tls => "tls",
            Cause::Timeout => "timeout",
            Cause::Reset => "reset",
            Cause::InvalidResponse => "invalid_response",
            Cause::Status5xx => "status_5xx",
            Cause::CircuitOpen => "circuit_open",
            Cause::Saturated => "max_connections",
            Cause::Refused => "refused",
        }
    }
}

/// Circuit-breaker states (`state` label of `shardgate_circuit_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    Closed,
    Open,
    HalfOpen,
}

impl Circuit {
    pub fn as_str(self) -> &'static str {
        match self {
            Circuit::Closed => "closed",
            Circuit::Open => "open",
            Circuit::HalfOpen => "half_open",
        }
    }
}

/// A fixed-bucket histogram of durations in microseconds (per-bucket counts; rendered
/// cumulatively).
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: [u64; BUCKETS_US.len() + 1],
    sum_us: u64,
}

impl Histogram {
    pub fn observe(&mut self, us: u64) {
        let i = BUCKETS_US.partition_point(|&le| le < us);
        self.counts[i] += 1;
        self.sum_us += us;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.sum_us += other.sum_us;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RequestKey {
    gateway: Uuid,
    rule: Uuid,
    service: Uuid,
    method: u8,
    code: u16,
}

/// Per gateway × service: durations and bytes.
#[derive(Debug, Clone, Default)]
struct ServiceStats {
    duration: Histogram,
    upstream: Histogram,
    bytes_in: u64,
    bytes_out: u64,
}

/// Per gateway × upstream: attempts, retries, failures by cause.
#[derive(Debug, Clone, Default)]
struct UpstreamStats {
    attempts: u64,
    retries: u64,
    failures: [u64; Cause::ALL.len()],
    budget_exhausted: u64,
}

/// What one worker counted.
#[derive(Debug, Default)]
pub struct Registry {
    requests: FxMap<RequestKey, u64>,
    services: FxMap<(Uuid, Uuid), ServiceStats>,
    upstreams: FxMap<(Uuid, Uuid), UpstreamStats>,
    rate_limited: FxMap<(Uuid, u8), u64>,
    /// (gateway, service) of `ai` services.
    ai: FxMap<(Uuid, Uuid), AiStats>,
    /// (upstream, target index) → state, for targets whose breaker left `closed`.
    circuits: FxMap<(Uuid, u32), Circuit>,
    overflow: u64,
    /// Usage since the admin thread last took it ([`Telemetry::swap_usage`]).
    usage: UsageDelta,
}

/// One finished request, as a worker records it.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// Nil: no gateway (unknown Host, malformed head).
    pub gateway: Uuid,
    pub rule: Uuid,
    pub service: Uuid,
    /// Index into [`METHODS`].
    pub method: u8,
    /// The status sent; 499 when the client went away first.
    pub status: u16,
    pub total_us: u64,
    /// Time spent waiting for upstream response heads, over every attempt; `None` when no
    /// attempt was made.
    pub upstream_us: Option<u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The upstream of the attempts (nil when none).
    pub upstream: Uuid,
    pub attempts: u8,
    pub retries: u8,
    /// Failed attempts by [`Cause`] (index in [`Cause::ALL`]).
    pub failures: [u8; Cause::ALL.len()],
    /// A retry was wanted but the service's retry budget was spent.
    pub budget_exhausted: bool,
    /// The rate-limit dimension that refused the request (index in `Dimension::ALL`).
    pub rate_limited: Option<u8>,
    /// The key it counts for in usage: a key id, `usage::ANONYMOUS` (nil) or
    /// `usage::UNAUTHENTICATED`.
    pub key: Uuid,
    /// The client's address (after `trusted_proxies`), for the anomaly detector.
    pub client_ip: Option<IpAddr>,
    /// An `ai` service's request: tokens, cost, provider attempts.
    pub ai: Option<AiObservation>,
}

/// Providers as metrics label them (index: [`AiObservation::provider`], an attempt's
/// provider).
pub const AI_PROVIDERS: [&str; 4] = ["openai", "anthropic", "azure_openai", "openai_compatible"];

/// How one attempt to an AI provider ended (index in [`AiOutcome::ALL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AiOutcome {
    /// Answered and relayed (any status but 429 and 5xx, which move on).
    Ok,
    Connect,
    Tls,
    Timeout,
    Reset,
    InvalidResponse,
    /// 429: the next provider was tried.
    Status429,
    Status5xx,
    /// The stream broke after its first byte went to the client: it ended with an error
    /// event (never a fallback mid-stream).
    FailedMidStream,
}

impl AiOutcome {
    pub const ALL: [AiOutcome; 9] = [
        AiOutcome::Ok,
        AiOutcome::Connect,
        AiOutcome::Tls,
        AiOutcome::Timeout,
        AiOutcome::Reset,
        AiOutcome::InvalidResponse,
        AiOutcome::Status429,
        AiOutcome::Status5xx,
        AiOutcome::FailedMidStream,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AiOutcome::Ok => "ok",
            AiOutcome::Connect => "connect",
            AiOutcome::Tls => "tls",
            AiOutcome::Timeout => "timeout",
            AiOutcome::Reset => "reset",
            AiOutcome::InvalidResponse => "invalid_response",
            AiOutcome::Status429 => "status_429",
            AiOutcome::Status5xx => "status_5xx",
            AiOutcome::FailedMidStream => "failed_mid_stream",
        }
    }

    fn index(self) -> usize {
        AiOutcome::ALL.iter().position(|o| *o == self).unwrap_or(0)
    }
}

/// Attempts kept per request (a fallback chain longer than this counts its first ones).
pub const AI_ATTEMPTS_KEPT: usize = 8;

/// What an `ai` request spent and which providers it tried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AiObservation {
    /// The provider that answered (index in [`AI_PROVIDERS`]); none when no attempt was
    /// answered.
    pub provider: Option<u8>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// From the service's price table, in nano-dollars.
    pub cost_nanos: u64,
    /// The counts are the gateway's estimate (the provider reported no usage, or the client
    /// left mid-stream), not the provider's.
    pub estimated: bool,
    /// (provider, outcome) per attempt, in order.
    pub attempts: [(u8, u8); AI_ATTEMPTS_KEPT],
    pub attempts_len: u8,
}

impl AiObservation {
    /// Notes one attempt.
    pub fn attempt(&mut self, provider: u8, outcome: AiOutcome) {
        if let Some(slot) = self.attempts.get_mut(usize::from(self.attempts_len)) {
            *slot = (provider, outcome.index() as u8);
            self.attempts_len += 1;
        }
    }

    pub fn tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// Per gateway × service, for `ai` services: tokens, cost, requests and attempts by provider.
#[derive(Debug, Clone, Default)]
struct AiStats {
    /// [provider] → (prompt, completion).
    tokens: [(u64, u64); AI_PROVIDERS.len()],
    cost_nanos: u64,
    /// [provider] → (metered exactly, estimated).
    requests: [(u64, u64); AI_PROVIDERS.len()],
    attempts: [[u64; AiOutcome::ALL.len()]; AI_PROVIDERS.len()],
}

impl AiStats {
    fn record(&mut self, ai: &AiObservation) {
        if let Some(p) = ai.provider.map(usize::from)
            && p < AI_PROVIDERS.len()
        {
            self.tokens[p].0 += ai.prompt_tokens;
            self.tokens[p].1 += ai.completion_tokens;
            if ai.estimated {
                self.requests[p].1 += 1;
            } else {
                self.requests[p].0 += 1;
            }
        }
        self.cost_nanos += ai.cost_nanos;
        for &(p, o) in &ai.attempts[..usize::from(ai.attempts_len).min(AI_ATTEMPTS_KEPT)] {
            if let Some(row) = self.attempts.get_mut(usize::from(p))
                && let Some(n) = row.get_mut(usize::from(o))
            {
                *n += 1;
            }
        }
    }

    fn merge(&mut self, other: &AiStats) {
        for (a, b) in self.tokens.iter_mut().zip(other.tokens) {
            a.0 += b.0;
            a.1 += b.1;
        }
        self.cost_nanos += other.cost_nanos;
        for (a, b) in self.requests.iter_mut().zip(other.requests) {
            a.0 += b.0;
            a.1 += b.1;
        }
        for (a, b) in self.attempts.iter_mut().zip(other.attempts) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
    }
}

/// One worker's counters: the registry behind its lock, and gauges the worker stores.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    registry: Mutex<Registry>,
    /// Open client connections.
    pub connections: AtomicU64,
    /// Idle HTTP/1.1 upstream connections in the pool.
    pub pool_idle: AtomicU64,
    /// HTTP/2 upstream connections.
    pub h2_connections: AtomicU64,
    /// Access-log lines this worker dropped because the writer fell behind.
    pub log_dropped: AtomicU64,
}

impl WorkerMetrics {
    /// Counts one finished request: in the traffic metrics when `metrics`, in the usage
    /// delta when `usage` (and the request had a gateway). One lock for both.
    pub fn record(&self, o: &Observation, metrics: bool, usage: bool) {
        let mut r = self.registry.lock();
        if usage && !o.gateway.is_nil() {
            r.usage.record(o);
        }
        if metrics {
            r.record(o);
        }
    }

    /// A target's circuit changed state (`Closed` forgets it).
    pub fn circuit(&self, upstream: Uuid, target: u32, state: Circuit) {
        let mut r = self.registry.lock();
        if state == Circuit::Closed {
            r.circuits.remove(&(upstream, target));
        } else {
            r.circuits.insert((upstream, target), state);
        }
    }
}

impl Registry {
    fn record(&mut self, o: &Observation) {
        let r = self;
        let mut key = RequestKey {
            gateway: o.gateway,
            rule: o.rule,
            service: o.service,
            method: o.method,
            code: o.status,
        };
        let mut overflowed = false;
        if r.requests.len() >= MAX_REQUEST_SERIES && !r.requests.contains_key(&key) {
            key = RequestKey {
                gateway: OVERFLOW,
                rule: Uuid::nil(),
                service: Uuid::nil(),
                method: o.method,
                code: o.status,
            };
            overflowed = true;
        }
        *r.requests.entry(key).or_default() += 1;

        let mut skey = (o.gateway, o.service);
        if r.services.len() >= MAX_SERVICE_SERIES && !r.services.contains_key(&skey) {
            skey = (OVERFLOW, Uuid::nil());
            overflowed = true;
        }
        let s = r.services.entry(skey).or_default();
        s.duration.observe(o.total_us);
        if let Some(us) = o.upstream_us {
            s.upstream.observe(us);
        }
        s.bytes_in += o.bytes_in;
        s.bytes_out += o.bytes_out;

        if o.attempts > 0 || o.budget_exhausted {
            let mut ukey = (o.gateway, o.upstream);
            if r.upstreams.len() >= MAX_SERVICE_SERIES && !r.upstreams.contains_key(&ukey) {
                ukey = (OVERFLOW, Uuid::nil());
                overflowed = true;
            }
            let u = r.upstreams.entry(ukey).or_default();
            u.attempts += u64::from(o.attempts);
            u.retries += u64::from(o.retries);
            for (total, n) in u.failures.iter_mut().zip(o.failures) {
                *total += u64::from(n);
            }
            u.budget_exhausted += u64::from(o.budget_exhausted);
        }
        if let Some(ai) = &o.ai {
            // Bounded like the service series: only services of type `ai` get one.
            if r.ai.len() < MAX_SERVICE_SERIES || r.ai.contains_key(&skey) {
                r.ai.entry(skey).or_default().record(ai);
            } else {
                overflowed = true;
            }
        }
        if let Some(dimension) = o.rate_limited {
            // Bounded by the gateways (three dimensions each).
            *r.rate_limited.entry((o.gateway, dimension)).or_default() += 1;
        }
        r.overflow += u64::from(overflowed);
    }
}

/// Every worker's counters, and the process-wide ones (shared by the workers, the admin
/// thread and the access-log writer).
#[derive(Debug, Default)]
pub struct Telemetry {
    pub workers: Vec<Arc<WorkerMetrics>>,
    /// Access-log lines written to the destination.
    pub log_written: AtomicU64,
    /// Access-log lines lost on a failed write (full disk, closed pipe).
    pub log_write_failed: AtomicU64,
}

impl Telemetry {
    pub fn new(workers: usize) -> Telemetry {
        Telemetry {
            workers: (0..workers).map(|_| Arc::default()).collect(),
            ..Telemetry::default()
        }
    }

    /// Takes worker `worker`'s usage delta into `delta`, leaving the worker `delta`'s old
    /// contents (which the caller has cleared: a swap, so neither side allocates).
    pub fn swap_usage(&self, worker: usize, delta: &mut UsageDelta) {
        if let Some(w) = self.workers.get(worker) {
            std::mem::swap(&mut w.registry.lock().usage, delta);
        }
    }
}

/// The sum over workers, as rendered.
#[derive(Default)]
struct Merged {
    requests: FxMap<RequestKey, u64>,
    services: FxMap<(Uuid, Uuid), ServiceStats>,
    upstreams: FxMap<(Uuid, Uuid), UpstreamStats>,
    rate_limited: FxMap<(Uuid, u8), u64>,
    ai: FxMap<(Uuid, Uuid), AiStats>,
    /// ((upstream, target), worker, state).
    circuits: Vec<((Uuid, u32), usize, Circuit)>,
    overflow: u64,
}

fn merge(telemetry: &Telemetry) -> Merged {
    let mut m = Merged::default();
    for (worker, metrics) in telemetry.workers.iter().enumerate() {
        let r = metrics.registry.lock();
        for (k, v) in &r.requests {
            *m.requests.entry(*k).or_default() += v;
        }
        for (k, v) in &r.services {
            let s = m.services.entry(*k).or_default();
            s.duration.merge(&v.duration);
            s.upstream.merge(&v.upstream);
            s.bytes_in += v.bytes_in;
            s.bytes_out += v.bytes_out;
        }
        for (k, v) in &r.upstreams {
            let u = m.upstreams.entry(*k).or_default();
            u.attempts += v.attempts;
            u.retries += v.retries;
            for (a, b) in u.failures.iter_mut().zip(v.failures) {
                *a += b;
            }
            u.budget_exhausted += v.budget_exhausted;
        }
        for (k, v) in &r.rate_limited {
            *m.rate_limited.entry(*k).or_default() += v;
        }
        for (k, v) in &r.ai {
            m.ai.entry(*k).or_default().merge(v);
        }
        for (k, state) in &r.circuits {
            m.circuits.push((*k, worker, *state));
        }
        m.overflow += r.overflow;
    }
    m
}

/// The `ai` services' series: tokens, cost, metered requests and provider attempts.
fn render_ai(out: &mut String, m: &Merged, names: &Names<'_>) {
    let mut ai: Vec<(String, &AiStats)> =
        m.ai.iter()
            .map(|((g, s), stats)| {
                let mut labels = String::with_capacity(64);
                labels.push_str("gateway=\"");
                names.gateway(*g, &mut labels);
                labels.push_str("\",service=\"");
                Names::label(&names.services, *s, &mut labels);
                labels.push('"');
                (labels, stats)
            })
            .collect();
    ai.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    header(
        out,
        "shardgate_ai_tokens_total",
        "counter",
        "AI tokens by gateway, service, provider and kind (prompt, completion): the provider's counts, or the gateway's estimate where it reported none.",
    );
    for (labels, a) in &ai {
        for (provider, (prompt, completion)) in AI_PROVIDERS.iter().zip(a.tokens) {
            if prompt + completion == 0 {
                continue;
            }
            let _ = writeln!(
                out,
                "shardgate_ai_tokens_total{{{labels},provider=\"{provider}\",kind=\"prompt\"}} {prompt}\n\
                 shardgate_ai_tokens_total{{{labels},provider=\"{provider}\",kind=\"completion\"}} {completion}"
            );
        }
    }
    header(
        out,
        "shardgate_ai_cost_dollars_total",
        "counter",
        "AI cost from the service's price table, in US dollars.",
    );
    for (labels, a) in &ai {
        let _ = writeln!(
            out,
            "shardgate_ai_cost_dollars_total{{{labels}}} {}",
            a.cost_nanos as f64 / 1e9
        );
    }
    header(
        out,
        "shardgate_ai_requests_total",
        "counter",
        "AI requests a provider answered, by metering: exact (the provider's usage) or estimated.",
    );
    for (labels, a) in &ai {
        for (provider, (exact, estimated)) in AI_PROVIDERS.iter().zip(a.requests) {
            if exact + estimated == 0 {
                continue;
            }
            let _ = writeln!(
                out,
                "shardgate_ai_requests_total{{{labels},provider=\"{provider}\",metering=\"exact\"}} {exact}\n\
                 shardgate_ai_requests_total{{{labels},provider=\"{provider}\",metering=\"estimated\"}} {estimated}"
            );
        }
    }
    header(
        out,
        "shardgate_ai_attempts_total",
        "counter",
        "Attempts to AI providers, by provider and outcome (fallbacks are the attempts after a status_429, status_5xx, connect, tls, timeout or reset).",
    );
    for (labels, a) in &ai {
        for (provider, row) in AI_PROVIDERS.iter().zip(&a.attempts) {
            for (outcome, n) in AiOutcome::ALL.iter().zip(row) {
                if *n > 0 {
                    let _ = writeln!(
                        out,
                        "shardgate_ai_attempts_total{{{labels},provider=\"{provider}\",outcome=\"{}\"}} {n}",
                        outcome.as_str()
                    );
                }
            }
        }
    }
}

/// Id → label names, from one snapshot.
struct Names<'s> {
    gateways: HashMap<Uuid, &'s str>,
    rules: HashMap<Uuid, &'s str>,
    services: HashMap<Uuid, &'s str>,
    upstreams: HashMap<Uuid, &'s str>,
    /// Upstream id → its gateway and compiled upstream (circuits are kept by upstream).
    owners: HashMap<Uuid, (&'s CompiledGateway, &'s CompiledUpstream)>,
}

impl<'s> Names<'s> {
    fn of(snapshot: &'s Snapshot) -> Names<'s> {
        let mut names = Names {
            gateways: HashMap::new(),
            rules: HashMap::new(),
            services: HashMap::new(),
            upstreams: HashMap::new(),
            owners: HashMap::new(),
        };
        for g in snapshot.gateways() {
            names.gateways.insert(g.id, &g.subdomain);
            for rule in &g.rules {
                names.rules.insert(rule.id, &rule.spec.path);
            }
            for (id, s) in &g.services {
                names.services.insert(*id, &s.spec.spec.name);
            }
            for (id, u) in &g.upstreams {
                names.upstreams.insert(*id, &u.spec.spec.name);
                names.owners.insert(*id, (&**g, &**u));
            }
        }
        names
    }

    /// The label value for `id` in `table`: its name, `""` for nil, the id when unknown.
    fn label(table: &HashMap<Uuid, &str>, id: Uuid, out: &mut String) {
        if id.is_nil() {
            return;
        }
        if id == OVERFLOW {
            out.push_str("_overflow");
            return;
        }
        match table.get(&id) {
            Some(name) => escape_into(name, out),
            None => {
                let _ = write!(out, "{id}");
            }
        }
    }

    fn gateway(&self, id: Uuid, out: &mut String) {
        Names::label(&self.gateways, id, out);
    }
}

/// Appends `value` as a Prometheus label value: backslash, quote and newline escaped.
pub fn escape_into(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn seconds(us: u64) -> f64 {
    us as f64 / 1e6
}

/// Writes the traffic metrics: every worker's counters summed, labelled by the names in
/// `snapshot`; `dimensions` names the rate-limit dimensions by index.
pub fn render(out: &mut String, telemetry: &Telemetry, snapshot: &Snapshot, dimensions: &[&str]) {
    let m = merge(telemetry);
    let names = Names::of(snapshot);

    // Requests, sorted so that a scrape reads stably.
    let mut rows: Vec<(String, u64)> = Vec::with_capacity(m.requests.len());
    for (k, count) in &m.requests {
        let mut labels = String::with_capacity(96);
        labels.push_str("gateway=\"");
        names.gateway(k.gateway, &mut labels);
        labels.push_str("\",rule=\"");
        Names::label(&names.rules, k.rule, &mut labels);
        labels.push_str("\",rule_id=\"");
        if !k.rule.is_nil() {
            let _ = write!(labels, "{}", k.rule);
        }
        labels.push_str("\",service=\"");
        Names::label(&names.services, k.service, &mut labels);
        let method = METHODS.get(k.method as usize).copied().unwrap_or("OTHER");
        let _ = write!(labels, "\",method=\"{method}\",code=\"{}\"", k.code);
        rows.push((labels, *count));
    }
    rows.sort_unstable();
    header(
        out,
        "shardgate_http_requests_total",
        "counter",
        "Requests answered, by gateway, rule, service, method and status code.",
    );
    for (labels, count) in &rows {
        let _ = writeln!(out, "shardgate_http_requests_total{{{labels}}} {count}");
    }

    let mut services: Vec<(String, &ServiceStats)> = m
        .services
        .iter()
        .map(|((g, s), stats)| {
            let mut labels = String::with_capacity(64);
            labels.push_str("gateway=\"");
            names.gateway(*g, &mut labels);
            labels.push_str("\",service=\"");
            Names::label(&names.services, *s, &mut labels);
            labels.push('"');
            (labels, stats)
        })
        .collect();
    services.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let histogram = |out: &mut String, name: &str, pick: &dyn Fn(&ServiceStats) -> &Histogram| {
        for (labels, stats) in &services {
            let h = pick(stats);
            let mut cumulative = 0;
            for (i, le) in BUCKET_LABELS.iter().enumerate() {
                cumulative += h.counts[i];
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
            }
            cumulative += h.counts[BUCKETS_US.len()];
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", seconds(h.sum_us));
            let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
        }
    };
    header(
        out,
        "shardgate_http_request_duration_seconds",
        "histogram",
        "Time from the start of a request head to the end of its response, by gateway and service.",
    );
    histogram(out, "shardgate_http_request_duration_seconds", &|s| {
        &s.duration
    });
    header(
        out,
        "shardgate_upstream_duration_seconds",
        "histogram",
        "Time from sending a request upstream to its response head, over every attempt, by gateway and service.",
    );
    histogram(out, "shardgate_upstream_duration_seconds", &|s| &s.upstream);
    header(
        out,
        "shardgate_http_request_bytes_total",
        "counter",
        "Request bytes received (head and body), by gateway and service.",
    );
    for (labels, s) in &services {
        let _ = writeln!(
            out,
            "shardgate_http_request_bytes_total{{{labels}}} {}",
            s.bytes_in
        );
    }
    header(
        out,
        "shardgate_http_response_bytes_total",
        "counter",
        "Response bytes sent (head and body), by gateway and service.",
    );
    for (labels, s) in &services {
        let _ = writeln!(
            out,
            "shardgate_http_response_bytes_total{{{labels}}} {}",
            s.bytes_out
        );
    }

    let mut upstreams: Vec<(String, &UpstreamStats)> = m
        .upstreams
        .iter()
        .map(|((g, u), stats)| {
            let mut labels = String::with_capacity(64);
            labels.push_str("gateway=\"");
            names.gateway(*g, &mut labels);
            labels.push_str("\",upstream=\"");
            Names::label(&names.upstreams, *u, &mut labels);
            labels.push('"');
            (labels, stats)
        })
        .collect();
    upstreams.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let counter =
        |out: &mut String, name: &str, help: &str, value: &dyn Fn(&UpstreamStats) -> u64| {
            header(out, name, "counter", help);
            for (labels, u) in &upstreams {
                let _ = writeln!(out, "{name}{{{labels}}} {}", value(u));
            }
        };
    counter(
        out,
        "shardgate_upstream_attempts_total",
        "Attempts to reach an upstream target (first tries and retries).",
        &|u| u.attempts,
    );
    counter(
        out,
        "shardgate_upstream_retries_total",
        "Attempts that were retries.",
        &|u| u.retries,
    );
    counter(
        out,
        "shardgate_upstream_retry_budget_exhausted_total",
        "Retries not made because the service's retry budget was spent.",
        &|u| u.budget_exhausted,
    );
    header(
        out,
        "shardgate_upstream_failures_total",
        "counter",
        "Failed upstream attempts, by cause.",
    );
    for (labels, u) in &upstreams {
        for (cause, n) in Cause::ALL.iter().zip(u.failures) {
            let _ = writeln!(
                out,
                "shardgate_upstream_failures_total{{{labels},cause=\"{}\"}} {n}",
                cause.as_str()
            );
        }
    }

    render_ai(out, &m, &names);

    header(
        out,
        "shardgate_rate_limit_rejections_total",
        "counter",
        "Requests refused by a rate limit, by gateway and dimension.",
    );
    let mut limited: Vec<(String, u64)> = m
        .rate_limited
        .iter()
        .map(|((g, d), n)| {
            let mut labels = String::from("gateway=\"");
            names.gateway(*g, &mut labels);
            let dimension = dimensions.get(*d as usize).copied().unwrap_or("unknown");
            let _ = write!(labels, "\",dimension=\"{dimension}\"");
            (labels, *n)
        })
        .collect();
    limited.sort_unstable();
    for (labels, n) in &limited {
        let _ = writeln!(out, "shardgate_rate_limit_rejections_total{{{labels}}} {n}");
    }

    header(
        out,
        "shardgate_circuit_state",
        "gauge",
        "1 for the state of each target's circuit breaker on each worker (closed unless listed otherwise here).",
    );
    let mut circuits: Vec<String> = Vec::new();
    for ((u, target), worker, state) in &m.circuits {
        let found = names.owners.get(u).copied();
        let mut line = String::from("shardgate_circuit_state{gateway=\"");
        if let Some((g, _)) = found {
            escape_into(&g.subdomain, &mut line);
        }
        line.push_str("\",upstream=\"");
        Names::label(&names.upstreams, *u, &mut line);
        line.push_str("\",target=\"");
        let host = found
            .and_then(|(_, up)| up.targets.get(*target as usize))
            .map(|t| t.host_header.to_string())
            .unwrap_or_else(|| target.to_string());
        escape_into(&host, &mut line);
        let _ = write!(
            line,
            "\",worker=\"{worker}\",state=\"{}\"}} 1",
            state.as_str()
        );
        circuits.push(line);
    }
    circuits.sort_unstable();
    for line in &circuits {
        let _ = writeln!(out, "{line}");
    }

    header(
        out,
        "shardgate_upstream_target_healthy",
        "gauge",
        "1 while an upstream target passes its active health checks (always 1 without them).",
    );
    let mut health: Vec<String> = Vec::new();
    for g in snapshot.gateways() {
        for u in g.upstreams.values() {
            for t in &u.targets {
                let mut line = String::from("shardgate_upstream_target_healthy{gateway=\"");
                escape_into(&g.subdomain, &mut line);
                line.push_str("\",upstream=\"");
                escape_into(&u.spec.spec.name, &mut line);
                line.push_str("\",target=\"");
                escape_into(&t.host_header, &mut line);
                let _ = write!(line, "\"}} {}", u8::from(!t.down));
                health.push(line);
            }
        }
    }
    health.sort_unstable();
    for line in &health {
        let _ = writeln!(out, "{line}");
    }

    let gauge =
        |out: &mut String, name: &str, help: &str, value: &dyn Fn(&WorkerMetrics) -> u64| {
            header(out, name, "gauge", help);
            for (i, w) in telemetry.workers.iter().enumerate() {
                let _ = writeln!(out, "{name}{{worker=\"{i}\"}} {}", value(w));
            }
        };
    gauge(
        out,
        "shardgate_client_connections",
        "Open client connections, per worker.",
        &|w| w.connections.load(Ordering::Relaxed),
    );
    gauge(
        out,
        "shardgate_upstream_pool_idle_connections",
        "Idle HTTP/1.1 upstream connections pooled, per worker.",
        &|w| w.pool_idle.load(Ordering::Relaxed),
    );
    gauge(
        out,
        "shardgate_upstream_h2_connections",
        "HTTP/2 upstream connections, per worker.",
        &|w| w.h2_connections.load(Ordering::Relaxed),
    );
    header(
        out,
        "shardgate_access_log_lines_dropped_total",
        "counter",
        "Access-log lines dropped because the writer could not keep up (never delaying a request), per worker.",
    );
    for (i, w) in telemetry.workers.iter().enumerate() {
        let _ = writeln!(
            out,
            "shardgate_access_log_lines_dropped_total{{worker=\"{i}\"}} {}",
            w.log_dropped.load(Ordering::Relaxed)
        );
    }
    header(
        out,
        "shardgate_access_log_lines_written_total",
        "counter",
        "Access-log lines written to the destination.",
    );
    let _ = writeln!(
        out,
        "shardgate_access_log_lines_written_total {}",
        telemetry.log_written.load(Ordering::Relaxed)
    );
    header(
        out,
        "shardgate_access_log_write_errors_total",
        "counter",
        "Access-log lines lost because writing them failed (e.g. a full disk).",
    );
    let _ = writeln!(
        out,
        "shardgate_access_log_write_errors_total {}",
        telemetry.log_write_failed.load(Ordering::Relaxed)
    );
    header(
        out,
        "shardgate_metrics_overflow_total",
        "counter",
        "Requests counted in an overflow series because a worker's series bound was reached.",
    );
    let _ = writeln!(out, "shardgate_metrics_overflow_total {}", m.overflow);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_upper_bounds() {
        let mut h = Histogram::default();
        h.observe(500);
        h.observe(501);
        h.observe(100_000_000);
        assert_eq!(h.counts[0], 1, "500 µs is <= 0.0005 s");
        assert_eq!(h.counts[1], 1);
        assert_eq!(
            h.counts[BUCKETS_US.len()],
            1,
            "past the last bound: +Inf only"
        );
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn series_past_the_bound_land_in_the_overflow_series() {
        let w = WorkerMetrics::default();
        let mut o = Observation {
            status: 200,
            ..Observation::default()
        };
        for i in 0..MAX_REQUEST_SERIES + 5 {
            o.rule = Uuid::from_u128(i as u128 + 1);
            w.record(&o, true, false);
        }
        let r = w.registry.lock();
        assert_eq!(r.requests.len(), MAX_REQUEST_SERIES + 1);
        assert_eq!(
            r.requests.values().sum::<u64>(),
            (MAX_REQUEST_SERIES + 5) as u64
        );
        assert!(r.overflow >= 5);
    }
}
