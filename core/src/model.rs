//! The entities an operator configures over the admin API (DESIGN.md §3), as they are
//! written in JSON and as they are journaled.
//!
//! Each entity has a *spec* (what the client sends: every field has a documented default,
//! unknown fields are refused by name) and is stored as a [`Record`] that adds the
//! server-assigned id and timestamps. The journal stores them as JSON (format 2), so a field
//! added later with `#[serde(default)]` reads old records unchanged. (Specs also stay
//! bincode-friendly: no `skip_serializing_if`, no `flatten`, no internally tagged enums,
//! free-form JSON through [`Json`]. The store no longer reads its format-1 bincode files,
//! but the state's tests still roundtrip through bincode.)
//!
//! Secrets are stored in full, because the proxy needs them: an upstream's
//! `tls.client_key_pem` is a [`PrivateKeyPem`], whose `Debug` hides it; the admin API
//! shows every stored upstream through [`Record::redacted`] and puts a key sent back as
//! [`REDACTED`] back with [`UpstreamSpec::restore_redacted_secrets`].
//!
//! `validate` checks what a spec can check alone and reports the failing field path
//! (`required_plugins[0].settings.limits.global.window: invalid duration "1x"`); what needs the
//! rest of the configuration (uniqueness, references) is checked by [`crate::state`].

use std::collections::BTreeMap;
use std::fmt;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::ai::config::{AiSettings, Budget, Credentials, ModelPolicy, Provider};
use crate::duration::Span;
use crate::keys::KeyHash;
use crate::plugins;
use crate::router::{self, MethodSet};

/// The documented maximum of every field and collection the admin API accepts, in one place:
/// entity validation below, [`crate::state::State::check_capacity`], the admin API's JSON
/// parser and the tests all use these constants, and `docs/SECURITY.md` tabulates them.
///
/// Lengths are UTF-8 bytes (what is stored, journaled and copied into snapshots), not
/// characters. A value over its bound is refused with 400 naming the field path; a
/// collection at its bound refuses one more entity with 409 (see `check_capacity`).
///
/// Bounds only apply to writes through the API: recovery replays the journal without them,
/// so raising or lowering a bound never makes an existing data directory unreadable.
pub mod limits {
    // -- strings --------------------------------------------------------------------------

    /// `name` of a gateway, upstream, service, API key or plugin.
    pub const MAX_NAME_BYTES: usize = 255;
    /// A gateway's `subdomain`: one DNS label (RFC 1035 §2.3.4).
    pub const MAX_SUBDOMAIN_BYTES: usize = 63;
    /// A target's `host`: a DNS name (RFC 1035 §2.3.4: 253 bytes without the root dot) or an
    /// IP literal (at most 45 bytes).
    pub const MAX_HOST_BYTES: usize = 253;
    /// A rule's `path` pattern and an active health check's `path`. Real API paths are far
    /// shorter; 2 KiB leaves room for long parameter patterns while staying well under the
    /// 8 KiB request line a client can send.
    pub const MAX_PATH_BYTES: usize = 2048;
    /// A header name: the keys of a rule's `headers`, an upstream's `hash_header`.
    pub const MAX_HEADER_NAME_BYTES: usize = 256;
    /// A header value a rule matches on (`headers`): 8 KiB, the usual per-header limit of
    /// proxies (nginx's `large_client_header_buffers`), so a longer value could never match.
    pub const MAX_HEADER_VALUE_BYTES: usize = 8 * 1024;
    /// Each entry of a rule's `methods` (the longest method, `CONNECT`/`OPTIONS`, has 7).
    pub const MAX_METHOD_BYTES: usize = 32;
    /// A service's `description`.
    pub const MAX_DESCRIPTION_BYTES: usize = 4 * 1024;
    /// Each entry of an upstream's or a service's `tags`.
    pub const MAX_TAG_BYTES: usize = 128;
    /// The `grpc_service` a gRPC health check asks about (a package-qualified service
    /// name; real ones are far shorter).
    pub const MAX_GRPC_SERVICE_BYTES: usize = 255;

    // -- free-form JSON (plugin `settings`, service `metadata`) ---------------------------

    /// One plugin's `settings`, measured as compact JSON. Generous for long CIDR or origin
    /// lists (about 10 000 IPv4 CIDRs); the admin API's 1 MiB body limit applies as well.
    pub const MAX_SETTINGS_BYTES: usize = 256 * 1024;
    /// A service's `metadata`, measured as compact JSON.
    pub const MAX_METADATA_BYTES: usize = 16 * 1024;
    /// Any object key inside `settings` or `metadata`.
    pub const MAX_JSON_KEY_BYTES: usize = 256;
    /// Any string inside `settings` or `metadata`: the same as a header value, since
    /// transformer settings carry header values.
    pub const MAX_JSON_STRING_BYTES: usize = MAX_HEADER_VALUE_BYTES;
    /// Deepest nesting of objects and arrays in a request body (the body's own object is
    /// level 1) and inside `settings` or `metadata` (their own object is level 1). The
    /// deepest entity field today is at level 6 (`required_plugins[0].settings.limits.global`).
    pub const MAX_JSON_DEPTH: usize = 32;

    // -- lists inside one entity -----------------------------------------------------------

    /// A gateway's `required_plugins`, and a rule's `plugin_chain`.
    pub const MAX_PLUGINS_PER_CHAIN: usize = 32;
    /// An upstream's `targets`. The consistent-hash ring caps itself at 65 536 points, so
    /// each of 1024 targets still gets 64 of them.
    pub const MAX_TARGETS_PER_UPSTREAM: usize = 1024;
    /// A service's `fallback_upstream_ids`.
    pub const MAX_FALLBACK_UPSTREAMS: usize = 8;
    /// A rule's `methods` (there are 9 methods; repeats are harmless but bounded).
    pub const MAX_METHODS_PER_RULE: usize = 16;
    /// Entries of a rule's `headers`.
    pub const MAX_HEADERS_PER_RULE: usize = 32;
    /// A rule's weighted `services`.
    pub const MAX_WEIGHTED_SERVICES: usize = 16;
    /// An upstream's or a service's `tags`.
    pub const MAX_TAGS: usize = 32;
    /// Each list of an API key's `scopes` (`rules`, `services`); `methods` has
    /// [`MAX_METHODS_PER_RULE`].
    pub const MAX_SCOPE_ENTRIES: usize = 1_000;

    // -- collections (checked against the state: 409 when full) ---------------------------

    /// Gateways in one server.
    pub const MAX_GATEWAYS: usize = 10_000;
    /// Upstreams in one gateway.
    pub const MAX_UPSTREAMS_PER_GATEWAY: usize = 1_000;
    /// Services in one gateway.
    pub const MAX_SERVICES_PER_GATEWAY: usize = 1_000;
    /// Rules in one gateway: the router benchmark measures 10 000 (`bench/benches/router.rs`).
    pub const MAX_RULES_PER_GATEWAY: usize = 10_000;
    /// API keys in one gateway: the key-table benchmark measures 1 000 000
    /// (`bench/benches/keys.rs`), the admin write benchmark 100 000.
    pub const MAX_KEYS_PER_GATEWAY: usize = 1_000_000;
}

use limits::*;

/// A validation failure: the JSON path of the offending field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub path: String,
    pub message: String,
}

impl Invalid {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The same failure seen from one level up: `settings` + `limits.x` → `settings.limits.x`.
    pub fn under(mut self, parent: &str) -> Invalid {
        self.path = join_path(parent, &self.path);
        self
    }
}

/// Joins JSON path segments: `a` + `b` → `a.b`, `a` + `[0].b` → `a[0].b`.
pub fn join_path(parent: &str, child: &str) -> String {
    match (parent.is_empty(), child.is_empty()) {
        (true, _) => child.to_owned(),
        (_, true) => parent.to_owned(),
        _ if child.starts_with('[') => format!("{parent}{child}"),
        _ => format!("{parent}.{child}"),
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for Invalid {}

/// Free-form JSON inside an entity (plugin settings, service metadata).
///
/// In JSON it is the value itself; in binary formats it is the JSON text, because bincode
/// cannot encode a self-describing value.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Json(pub serde_json::Value);

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            self.0.serialize(s)
        } else {
            s.serialize_str(&self.0.to_string())
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            serde_json::Value::deserialize(d).map(Json)
        } else {
            let text = String::deserialize(d)?;
            serde_json::from_str(&text)
                .map(Json)
                .map_err(serde::de::Error::custom)
        }
    }
}

/// A stored entity: the spec plus what the server assigns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record<T> {
    pub id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    pub spec: T,
}

// ---------------------------------------------------------------------------------------------
// Gateway and plugins

/// A tenant: one subdomain with its own upstreams, services, rules, keys and plugins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySpec {
    /// A descriptive name, 1 to [`limits::MAX_NAME_BYTES`] bytes, not blank.
    pub name: String,
    /// The DNS label clients reach it at: `<subdomain>.<base-domain>`. Unique.
    pub subdomain: String,
    /// `active` (default) or `inactive` (the proxy answers 503).
    #[serde(default)]
    pub status: GatewayStatus,
    /// Plugins that run for every request of this gateway, before any rule's plugins.
    #[serde(default)]
    pub required_plugins: Vec<PluginConfig>,
    /// A request made with a key that expires within this span gets
    /// `X-API-Key-Expires-In`, and the key counts in `shardgate_api_keys_expiring`.
    /// Default `7d`.
    #[serde(default = "default_key_expiry_warning")]
    pub key_expiry_warning: Span,
    /// Thresholds of the usage anomaly detector (`GET .../anomalies`).
    #[serde(default)]
    pub anomaly_detection: AnomalySettings,
}

fn default_key_expiry_warning() -> Span {
    Span::from_secs(7 * 86_400)
}

/// When the anomaly detector reports a finding (docs/USAGE.md explains each and its
/// trade-offs). Every threshold is per gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalySettings {
    /// Off: nothing is evaluated or reported. Default on.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `request_spike`: a key's requests over the last 60 seconds exceed `spike_factor` ×
    /// its mean per minute over the hour before. Default 10.
    #[serde(default = "default_spike_factor")]
    pub spike_factor: u32,
    /// ... and at least this many requests in those 60 seconds. Default 600 (10/s).
    #[serde(default = "default_spike_floor")]
    pub spike_floor: u64,
    /// `unauthorized_burst`: this many 401s from one client address within 60 seconds.
    /// Default 50.
    #[serde(default = "default_unauthorized_burst")]
    pub unauthorized_burst: u64,
    /// `many_addresses`: a key used from more than this many distinct client addresses
    /// within `address_window`. Default 50.
    #[serde(default = "default_distinct_addresses")]
    pub distinct_addresses: u32,
    /// The window of `many_addresses`. Default `1h`.
    #[serde(default = "default_address_window")]
    pub address_window: Span,
}

impl Default for AnomalySettings {
    fn default() -> Self {
        AnomalySettings {
            enabled: true,
            spike_factor: default_spike_factor(),
            spike_floor: default_spike_floor(),
            unauthorized_burst: default_unauthorized_burst(),
            distinct_addresses: default_distinct_addresses(),
            address_window: default_address_window(),
        }
    }
}

fn default_spike_factor() -> u32 {
    10
}
fn default_spike_floor() -> u64 {
    600
}
fn default_unauthorized_burst() -> u64 {
    50
}
fn default_distinct_addresses() -> u32 {
    50
}
fn default_address_window() -> Span {
    Span::from_secs(3_600)
}

/// The longest `address_window` (the detector keeps a key's addresses that long).
const ADDRESS_WINDOW_LIMIT_SECS: u64 = 86_400;
/// The longest `key_expiry_warning`.
const KEY_EXPIRY_WARNING_LIMIT_SECS: u64 = 365 * 86_400;

impl AnomalySettings {
    fn validate(&self) -> Result<(), Invalid> {
        if self.spike_factor == 0 {
            return Err(Invalid::new(
                "anomaly_detection.spike_factor",
                "must be at least 1",
            ));
        }
        if self.spike_floor == 0 {
            return Err(Invalid::new(
                "anomaly_detection.spike_floor",
                "must be at least 1",
            ));
        }
        if self.unauthorized_burst == 0 {
            return Err(Invalid::new(
                "anomaly_detection.unauthorized_burst",
                "must be at least 1",
            ));
        }
        if self.distinct_addresses == 0 || self.distinct_addresses > 100_000 {
            return Err(Invalid::new(
                "anomaly_detection.distinct_addresses",
                "use 1 to 100000",
            ));
        }
        let window = self.address_window.as_duration();
        if window.as_secs() < 60 || window.as_secs() > ADDRESS_WINDOW_LIMIT_SECS {
            return Err(Invalid::new(
                "anomaly_detection.address_window",
                "use 1m to 24h",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GatewayStatus {
    #[default]
    Active,
    Inactive,
}

/// Where in the request's life a plugin runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Before the upstream is called: may reject or modify the request.
    PreRequest,
    /// After the request has been sent upstream, before its response is read.
    PostRequest,
    /// With the upstream's response headers in hand: may modify or replace the response.
    PreResponse,
    /// After the client has the response: accounting and logging.
    PostResponse,
}

impl Stage {
    pub const ALL: [Stage; 4] = [
        Stage::PreRequest,
        Stage::PostRequest,
        Stage::PreResponse,
        Stage::PostResponse,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::PreRequest => "pre_request",
            Stage::PostRequest => "post_request",
            Stage::PreResponse => "pre_response",
            Stage::PostResponse => "post_response",
        }
    }
}

fn yes() -> bool {
    true
}

/// One plugin in a chain (a gateway's `required_plugins` or a rule's `plugin_chain`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// A plugin from the catalogue (`GET /api/v1/plugins`).
    pub name: String,
    /// Disabled plugins stay in the configuration and cost nothing per request. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The stage it runs in; must be one the plugin allows.
    pub stage: Stage,
    /// Lower runs first within a stage; ties keep configuration order. Default 0.
    #[serde(default)]
    pub priority: i32,
    /// Accepted for compatibility; plugins of one stage run in order regardless.
    #[serde(default)]
    pub parallel: bool,
    /// Plugin-specific settings, validated against the plugin's schema.
    #[serde(default = "empty_object")]
    pub settings: Json,
}

fn empty_object() -> Json {
    Json(serde_json::Value::Object(serde_json::Map::new()))
}

impl PluginConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        check_len("name", &self.name, MAX_NAME_BYTES)?;
        let def = plugins::find(&self.name).ok_or_else(|| {
            Invalid::new(
                "name",
                format!(
                    "unknown plugin {:?}; known plugins: {}",
                    self.name,
                    plugins::names().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        if !def.stages.contains(&self.stage) {
            return Err(Invalid::new(
                "stage",
                format!(
                    "plugin {} cannot run in stage {}; allowed: {}",
                    def.name,
                    self.stage.as_str(),
                    def.stages
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        validate_free_form(&self.settings.0, "settings", MAX_SETTINGS_BYTES)?;
        plugins::parse_settings(&self.name, &self.settings.0)
            .map(drop)
            .map_err(|e| e.under("settings"))
    }
}

fn validate_chain(chain: &[PluginConfig], field: &str) -> Result<(), Invalid> {
    check_count(field, chain.len(), MAX_PLUGINS_PER_CHAIN)?;
    for (i, plugin) in chain.iter().enumerate() {
        plugin
            .validate()
            .map_err(|e| e.under(&format!("{field}[{i}]")))?;
    }
    Ok(())
}

fn validate_name(name: &str, field: &str) -> Result<(), Invalid> {
    check_len(field, name, MAX_NAME_BYTES)?;
    if name.trim().is_empty() {
        return Err(Invalid::new(field, "must not be blank"));
    }
    if name.chars().any(char::is_control) {
        return Err(Invalid::new(field, "must not contain control characters"));
    }
    Ok(())
}

/// Refuses `value` when it is longer than `max` bytes. Checked before anything that
/// echoes the value in an error message, so an error never repeats a megabyte back.
fn check_len(field: impl Into<String>, value: &str, max: usize) -> Result<(), Invalid> {
    if value.len() > max {
        return Err(Invalid::new(
            field,
            format!("too long: {} bytes, the maximum is {max}", value.len()),
        ));
    }
    Ok(())
}

/// Refuses a list or map of `len` entries when it has more than `max`.
fn check_count(field: impl Into<String>, len: usize, max: usize) -> Result<(), Invalid> {
    if len > max {
        return Err(Invalid::new(
            field,
            format!("too many entries: {len}, the maximum is {max}"),
        ));
    }
    Ok(())
}

/// Each entry of `tags` within [`MAX_TAG_BYTES`], at most [`MAX_TAGS`] of them.
fn validate_tags(tags: &[String]) -> Result<(), Invalid> {
    check_count("tags", tags.len(), MAX_TAGS)?;
    for (i, tag) in tags.iter().enumerate() {
        check_len(format!("tags[{i}]"), tag, MAX_TAG_BYTES)?;
    }
    Ok(())
}

/// Bounds free-form JSON (`settings`, `metadata`): at most `max_bytes` as compact JSON, at
/// most [`MAX_JSON_DEPTH`] levels, keys within [`MAX_JSON_KEY_BYTES`] and strings within
/// [`MAX_JSON_STRING_BYTES`]. Errors name the path below `field`.
fn validate_free_form(
    value: &serde_json::Value,
    field: &str,
    max_bytes: usize,
) -> Result<(), Invalid> {
    let size = compact_json_len(value);
    if size > max_bytes {
        return Err(Invalid::new(
            field,
            format!("too large: {size} bytes of JSON, the maximum is {max_bytes}"),
        ));
    }
    check_free_form(value, field, 1)
}

fn check_free_form(value: &serde_json::Value, path: &str, depth: usize) -> Result<(), Invalid> {
    use serde_json::Value;
    let nested = matches!(value, Value::Array(_) | Value::Object(_));
    if nested && depth > MAX_JSON_DEPTH {
        return Err(Invalid::new(
            path,
            format!("nested too deeply: more than {MAX_JSON_DEPTH} levels of objects and arrays"),
        ));
    }
    match value {
        Value::String(s) => check_len(path, s, MAX_JSON_STRING_BYTES),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| check_free_form(item, &format!("{path}[{i}]"), depth + 1)),
        Value::Object(map) => map.iter().try_for_each(|(key, item)| {
            if key.len() > MAX_JSON_KEY_BYTES {
                return Err(Invalid::new(
                    path,
                    format!(
                        "a key is too long: {} bytes, the maximum is {MAX_JSON_KEY_BYTES}",
                        key.len()
                    ),
                ));
            }
            check_free_form(item, &join_path(path, key), depth + 1)
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// The length of `value` written as compact JSON, without building the text.
fn compact_json_len(value: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(bytes.len());
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` into a sink that never fails cannot fail; if it somehow did, the
    // value is treated as too large rather than accepted unmeasured.
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}

/// A DNS label: 1–63 of `[a-z0-9-]`, not starting or ending with `-`.
pub fn is_dns_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_SUBDOMAIN_BYTES
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

impl GatewaySpec {
    pub fn validate(&self) -> Result<(), Invalid> {
        validate_name(&self.name, "name")?;
        check_len("subdomain", &self.subdomain, MAX_SUBDOMAIN_BYTES)?;
        if !is_dns_label(&self.subdomain) {
            return Err(Invalid::new(
                "subdomain",
                format!(
                    "{:?} is not a DNS label: use 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-'",
                    self.subdomain
                ),
            ));
        }
        if self.key_expiry_warning.as_duration().as_secs() > KEY_EXPIRY_WARNING_LIMIT_SECS {
            return Err(Invalid::new("key_expiry_warning", "must be at most 365d"));
        }
        self.anomaly_detection.validate()?;
        validate_chain(&self.required_plugins, "required_plugins")
    }
}

// ---------------------------------------------------------------------------------------------
// Upstreams

/// A pool of targets that services send traffic to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// Unique within the gateway.
    pub name: String,
    /// How a target is picked. Default `round-robin`.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// For `consistent-hash`: hash this request header instead of the client IP.
    #[serde(default)]
    pub hash_header: Option<String>,
    /// At least one.
    pub targets: Vec<Target>,
    #[serde(default)]
    pub health_checks: HealthChecks,
    /// TCP connect timeout per attempt. Default `2s`.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Span,
    /// Longest wait for the upstream's response head, and between body reads. Default `60s`.
    #[serde(default = "default_read_timeout")]
    pub read_timeout: Span,
    /// Longest wait for a write to the upstream to make progress. Default `60s`.
    #[serde(default = "default_read_timeout")]
    pub write_timeout: Span,
    #[serde(default)]
    pub pool: PoolSettings,
    #[serde(default)]
    pub tags: Vec<String>,
    /// How its `https` targets are reached: trusted roots, server name, client certificate,
    /// minimum version. Absent (default): the system's roots, the target's host, no client
    /// certificate, TLS 1.2 or later. Harmless on an upstream without `https` targets.
    /// (Boxed: most upstreams have none, and every stored upstream would carry its size.)
    #[serde(default)]
    pub tls: Option<Box<TlsSettings>>,
    /// Speak HTTP/2 to the targets: h2c (prior knowledge) to `http` targets, ALPN `h2` to
    /// `https` ones, over per-worker connections that multiplex streams. Default `false`
    /// (HTTP/1.1); services of type `grpc` speak HTTP/2 whatever it says.
    #[serde(default)]
    pub http2: bool,
    /// Keep-alive PINGs on the HTTP/2 connections to the targets; off when absent.
    #[serde(default)]
    pub http2_keepalive: Option<Http2Keepalive>,
    /// Per-target circuit breaker; off when absent.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreaker>,
}

/// A circuit breaker per target, kept by each worker: after `failure_threshold`
/// consecutive failures (or, with `error_rate`, too many failures among recent attempts)
/// the circuit opens and the target gets no traffic for `open_duration`; then it is
/// half-open: `half_open_probes` requests go through, and as many successes close it while
/// one failure opens it again. Failures are connect errors, TLS failures, timeouts,
/// connections that fail before an answer, and 5xx answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Consecutive failures that open the circuit. Default 5.
    #[serde(default = "five")]
    pub failure_threshold: u32,
    /// How long an open circuit keeps the target out. Default `30s`.
    #[serde(default = "default_cooldown")]
    pub open_duration: Span,
    /// Requests let through while half-open, and successes needed to close. Default 1.
    #[serde(default = "one")]
    pub half_open_probes: u32,
    /// Also open when the failure rate over a window passes a percentage. Off when absent.
    #[serde(default)]
    pub error_rate: Option<ErrorRate>,
}

/// PINGs on each HTTP/2 connection to a target (an upstream with `http2`, or behind a
/// `grpc` service): every `interval` a worker pings each of its connections, and one whose
/// answer has not come within `timeout` is closed. Its streams fail (502, gRPC
/// UNAVAILABLE) instead of waiting out `read_timeout`, and the next request opens a new
/// connection. gRPC servers limit how often a client may ping (gRPC core: not more than
/// every 5 minutes without calls in flight, unless its keepalive policy allows it), and
/// answer more with a GOAWAY: set `interval` to what the server permits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http2Keepalive {
    /// Time between PINGs on a connection. Default `30s`.
    #[serde(default = "thirty_seconds")]
    pub interval: Span,
    /// How long an answer may take. Default `10s`.
    #[serde(default = "ten_seconds")]
    pub timeout: Span,
}

fn thirty_seconds() -> Span {
    Span::from_secs(30)
}

impl Http2Keepalive {
    fn validate(&self) -> Result<(), Invalid> {
        let min = std::time::Duration::from_millis(100);
        if self.interval.as_duration() < min {
            return Err(Invalid::new(
                "http2_keepalive.interval",
                "must be at least 100ms",
            ));
        }
        if self.timeout.as_duration() < min {
            return Err(Invalid::new(
                "http2_keepalive.timeout",
                "must be at least 100ms",
            ));
        }
        Ok(())
    }
}

/// The error-rate trigger of a [`CircuitBreaker`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorRate {
    /// Failure percentage (1 to 100) that opens the circuit.
    pub percent: u32,
    /// The window attempts are counted over. Default `10s`.
    #[serde(default = "ten_seconds")]
    pub window: Span,
    /// Attempts the window must hold before the rate counts. Default 20.
    #[serde(default = "twenty")]
    pub min_requests: u32,
}

fn one() -> u32 {
    1
}

fn twenty() -> u32 {
    20
}

fn ten_seconds() -> Span {
    Span::from_secs(10)
}

impl CircuitBreaker {
    fn validate(&self) -> Result<(), Invalid> {
        if self.failure_threshold == 0 {
            return Err(Invalid::new(
                "circuit_breaker.failure_threshold",
                "must be at least 1",
            ));
        }
        if self.half_open_probes == 0 || self.half_open_probes > 1000 {
            return Err(Invalid::new(
                "circuit_breaker.half_open_probes",
                "must be between 1 and 1000",
            ));
        }
        if self.open_duration.as_duration().is_zero() {
            return Err(Invalid::new(
                "circuit_breaker.open_duration",
                "must be longer than 0",
            ));
        }
        if let Some(rate) = &self.error_rate {
            if !(1..=100).contains(&rate.percent) {
                return Err(Invalid::new(
                    "circuit_breaker.error_rate.percent",
                    "must be between 1 and 100",
                ));
            }
            if rate.window.as_duration() < std::time::Duration::from_millis(100) {
                return Err(Invalid::new(
                    "circuit_breaker.error_rate.window",
                    "must be at least 100ms",
                ));
            }
            if rate.min_requests == 0 {
                return Err(Invalid::new(
                    "circuit_breaker.error_rate.min_requests",
                    "must be at least 1",
                ));
            }
        }
        Ok(())
    }
}

fn default_connect_timeout() -> Span {
    Span::from_secs(2)
}

fn default_read_timeout() -> Span {
    Span::from_secs(60)
}

/// Per-worker, per-target pool of idle upstream connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSettings {
    /// Idle connections kept per target per worker. Default 64; 0 disables reuse.
    #[serde(default = "default_max_idle")]
    pub max_idle: u32,
    /// An idle connection older than this is closed. Default `60s`; keep it below the
    /// upstream's own keep-alive timeout so the gateway never reuses a connection the
    /// upstream is closing.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Span,
}

fn default_max_idle() -> u32 {
    64
}

fn default_idle_timeout() -> Span {
    Span::from_secs(60)
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_idle: default_max_idle(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Algorithm {
    #[default]
    #[serde(rename = "round-robin")]
    RoundRobin,
    /// Smooth weighted round-robin (nginx's algorithm): even interleaving by weight.
    #[serde(rename = "weighted-round-robin")]
    WeightedRoundRobin,
    /// Fewest in-flight requests on this worker; ties by weight.
    #[serde(rename = "least-connections", alias = "least-conn")]
    LeastConnections,
    /// Weighted random.
    #[serde(rename = "random")]
    Random,
    /// Client IP (or `hash_header`) on a hash ring; adding a target remaps few clients.
    #[serde(rename = "consistent-hash")]
    ConsistentHash,
}

/// One backend address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// A hostname or an IP literal.
    pub host: String,
    /// 1..=65535.
    pub port: u32,
    /// `http` (default) or `https`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Relative share of traffic, 0..=65535; 0 drains the target. Default 100.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Failover tier: targets of the lowest tier with a healthy member get all traffic.
    /// Default 0.
    #[serde(default)]
    pub priority: u32,
    /// Requests in flight to this target at once, per worker (like nginx's `max_conns`
    /// without a shared zone); a request past it goes to another target, or waits up to
    /// the upstream's `connect_timeout` for a free place, then gets 503. Default: no limit.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// The AI provider this target is (`openai`, `anthropic`, `azure_openai`,
    /// `openai_compatible`): `ai` services call it in its own API, translating when needed.
    #[serde(default)]
    pub provider: Option<Provider>,
    /// What the gateway presents to the provider (`api_key`, Azure's `deployment` and
    /// `api_version`). Shown as `<redacted>` by the admin API.
    #[serde(default)]
    pub credentials: Option<Credentials>,
    /// The models this provider target serves: allow-list, aliases, default.
    #[serde(default)]
    pub models: ModelPolicy,
}

fn default_weight() -> u32 {
    100
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Http,
    Https,
}

/// Active probes and passive (traffic-observed) health tracking.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthChecks {
    /// Periodic probes from the admin thread. Off when absent.
    #[serde(default)]
    pub active: Option<ActiveHealthCheck>,
    /// Mark a target down after consecutive failed requests. Off when absent.
    #[serde(default)]
    pub passive: Option<PassiveHealthCheck>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveHealthCheck {
    /// `http` (GET `path`, expect 2xx/3xx), `tcp` (connect only) or `grpc` (the gRPC health
    /// checking protocol over h2c: `grpc.health.v1.Health/Check` for `grpc_service`, expect
    /// SERVING). Default `http`.
    #[serde(default, rename = "type")]
    pub kind: HealthCheckKind,
    /// Default `/health`.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// The service a `grpc` check asks about; default `""`, the server as a whole.
    #[serde(default)]
    pub grpc_service: String,
    /// Default `10s`.
    #[serde(default = "default_health_interval")]
    pub interval: Span,
    /// Default `2s`.
    #[serde(default = "default_health_timeout")]
    pub timeout: Span,
    /// Consecutive successes to mark a target up. Default 2.
    #[serde(default = "two")]
    pub healthy_threshold: u32,
    /// Consecutive failures to mark a target down. Default 3.
    #[serde(default = "three")]
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    #[default]
    Http,
    Tcp,
    Grpc,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealthCheck {
    /// Consecutive connect failures or 5xx answers before the target is taken out. Default 5.
    #[serde(default = "five")]
    pub max_failures: u32,
    /// How long a target stays out before traffic probes it again. Default `30s`.
    #[serde(default = "default_cooldown")]
    pub cooldown: Span,
}

fn default_health_path() -> String {
    "/health".to_owned()
}
fn default_health_interval() -> Span {
    Span::from_secs(10)
}
fn default_health_timeout() -> Span {
    Span::from_secs(2)
}
fn default_cooldown() -> Span {
    Span::from_secs(30)
}
fn two() -> u32 {
    2
}
fn three() -> u32 {
    3
}
fn five() -> u32 {
    5
}

fn is_valid_host(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    is_dns_name(host.strip_suffix('.').unwrap_or(host))
}

/// A DNS name: dot-separated labels of letters, digits, `-` and `_` (1–63 bytes each, not
/// starting or ending with `-`), [`MAX_HOST_BYTES`] (253) bytes at most.
pub fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= MAX_HOST_BYTES
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl UpstreamSpec {
    pub fn validate(&self) -> Result<(), Invalid> {
        validate_name(&self.name, "name")?;
        if self.targets.is_empty() {
            return Err(Invalid::new("targets", "at least one target is required"));
        }
        check_count("targets", self.targets.len(), MAX_TARGETS_PER_UPSTREAM)?;
        for (i, t) in self.targets.iter().enumerate() {
            let at = |field: &str| format!("targets[{i}].{field}");
            check_len(at("host"), &t.host, MAX_HOST_BYTES)?;
            if !is_valid_host(&t.host) {
                return Err(Invalid::new(
                    at("host"),
                    format!("{:?} is not a hostname or IP address", t.host),
                ));
            }
            if !(1..=65535).contains(&t.port) {
                return Err(Invalid::new(
                    at("port"),
                    format!("{} is not a port: use 1 to 65535", t.port),
                ));
            }
            if t.weight > 65535 {
                return Err(Invalid::new(
                    at("weight"),
                    format!("{} is too large: use 0 to 65535", t.weight),
                ));
            }
        }
        for (i, t) in self.targets.iter().enumerate() {
            crate::ai::config::validate_target(t.provider, t.credentials.as_ref(), &t.models)
                .map_err(|e| e.under(&format!("targets[{i}]")))?;
            if t.max_connections == Some(0) {
                return Err(Invalid::new(
                    format!("targets[{i}].max_connections"),
                    "must be at least 1 (leave it out for no limit)",
                ));
            }
        }
        if let Some(breaker) = &self.circuit_breaker {
            breaker.validate()?;
        }
        if let Some(keepalive) = &self.http2_keepalive {
            keepalive.validate()?;
        }
        if let Some(h) = &self.hash_header {
            check_len("hash_header", h, MAX_HEADER_NAME_BYTES)?;
            if self.algorithm != Algorithm::ConsistentHash {
                return Err(Invalid::new(
                    "hash_header",
                    "only applies to the consistent-hash algorithm",
                ));
            }
            if !is_header_name(h) {
                return Err(Invalid::new(
                    "hash_header",
                    format!("{h:?} is not an HTTP header name"),
                ));
            }
        }
        if let Some(active) = &self.health_checks.active {
            check_len("health_checks.active.path", &active.path, MAX_PATH_BYTES)?;
            if !active.path.starts_with('/') {
                return Err(Invalid::new(
                    "health_checks.active.path",
                    "must start with '/'",
                ));
            }
            // The probe writes it into its request line (`GET <path> HTTP/1.1`): a space,
            // CR or LF would let it rewrite the probe request.
            if !active.path.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(Invalid::new(
                    "health_checks.active.path",
                    "must be visible ASCII: no spaces, control characters or non-ASCII \
                     (percent-encode them)",
                ));
            }
            check_len(
                "health_checks.active.grpc_service",
                &active.grpc_service,
                MAX_GRPC_SERVICE_BYTES,
            )?;
            // A protobuf string travels as it is; visible ASCII keeps the log line readable.
            if !active.grpc_service.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(Invalid::new(
                    "health_checks.active.grpc_service",
                    "must be visible ASCII (a gRPC service name such as `pkg.Service`)",
                ));
            }
            if active.healthy_threshold == 0 || active.unhealthy_threshold == 0 {
                return Err(Invalid::new(
                    "health_checks.active",
                    "thresholds must be at least 1",
                ));
            }
        }
        if let Some(passive) = &self.health_checks.passive
            && passive.max_failures == 0
        {
            return Err(Invalid::new(
                "health_checks.passive.max_failures",
                "must be at least 1",
            ));
        }
        validate_tags(&self.tags)?;
        match &self.tls {
            Some(tls) => tls.validate().map_err(|e| e.under("tls")),
            None => Ok(()),
        }
    }

    /// Puts stored secrets back where the admin API's [`REDACTED`] placeholder stands, so
    /// that GET → edit → PUT keeps them: `tls.client_key_pem`, and each provider target's
    /// `credentials.api_key` (taken from the stored target with the same host, port and
    /// provider). `stored` is the upstream this spec replaces (`None` on a create); with no
    /// secret stored the placeholder stays and [`UpstreamSpec::validate`] refuses it. A
    /// secret given in full replaces the stored one, as any other field does.
    pub fn restore_redacted_secrets(&mut self, stored: Option<&UpstreamSpec>) {
        for target in &mut self.targets {
            let Some(key) = target.credentials.as_mut().and_then(|c| c.api_key.as_mut()) else {
                continue;
            };
            if !key.is_redacted() {
                continue;
            }
            let kept = stored
                .into_iter()
                .flat_map(|s| s.targets.iter())
                .find(|t| {
                    t.host == target.host && t.port == target.port && t.provider == target.provider
                })
                .and_then(|t| t.credentials.as_ref())
                .and_then(|c| c.api_key.as_ref());
            if let Some(kept) = kept {
                *key = kept.clone();
            }
        }
        let Some(key) = self.tls.as_mut().and_then(|t| t.client_key_pem.as_mut()) else {
            return;
        };
        if !key.is_redacted() {
            return;
        }
        let kept = stored
            .and_then(|s| s.tls.as_ref())
            .and_then(|t| t.client_key_pem.as_ref());
        if let Some(kept) = kept {
            *key = kept.clone();
        }
    }
}

impl Record<UpstreamSpec> {
    /// The upstream as the admin API shows it: `tls.client_key_pem` and every provider
    /// `credentials.api_key`, when set, as [`REDACTED`]. Borrowed unchanged when there is no
    /// secret to hide.
    pub fn redacted(&self) -> std::borrow::Cow<'_, Record<UpstreamSpec>> {
        use std::borrow::Cow;
        let has_key = self
            .spec
            .tls
            .as_ref()
            .is_some_and(|t| t.client_key_pem.is_some());
        let has_credential = self
            .spec
            .targets
            .iter()
            .any(|t| t.credentials.as_ref().is_some_and(|c| c.api_key.is_some()));
        if !has_key && !has_credential {
            return Cow::Borrowed(self);
        }
        let mut shown = self.clone();
        if let Some(key) = shown
            .spec
            .tls
            .as_mut()
            .and_then(|t| t.client_key_pem.as_mut())
        {
            *key = PrivateKeyPem(REDACTED.to_owned());
        }
        for target in &mut shown.spec.targets {
            if let Some(key) = target.credentials.as_mut().and_then(|c| c.api_key.as_mut()) {
                *key = crate::ai::config::ProviderSecret(REDACTED.to_owned());
            }
        }
        Cow::Owned(shown)
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream TLS

/// What the admin API shows instead of a private key, and takes back in its place.
pub const REDACTED: &str = "<redacted>";

/// How an upstream's `https` targets are reached (`tls` on an upstream). Every field has a
/// default, and the defaults together are what an upstream without `tls` gets.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// Check the target's certificate: a chain to a trusted root, valid now, for the server
    /// name. Default true. `false` accepts any certificate (still the handshake's own
    /// signature), so anyone on the path can read and change the traffic; the proxy warns in
    /// its log each time it picks up a configuration that has it.
    #[serde(default = "yes")]
    pub verify: bool,
    /// PEM bundle of the roots trusted for this upstream, instead of the system's store.
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// The name sent as SNI and verified against the certificate. Default: the target's
    /// host (an IP address is verified as one and sends no SNI).
    #[serde(default)]
    pub server_name: Option<String>,
    /// mTLS: the client certificate (leaf first, then intermediates) presented to the
    /// target. Requires `client_key_pem`.
    #[serde(default)]
    pub client_cert_pem: Option<String>,
    /// mTLS: the private key of `client_cert_pem` (PKCS#8, PKCS#1 or SEC1 PEM). Never
    /// returned by the API (shown as [`REDACTED`]), logged, or quoted in an error.
    #[serde(default)]
    pub client_key_pem: Option<PrivateKeyPem>,
    /// The oldest protocol version accepted: `1.2` (default) or `1.3`.
    #[serde(default)]
    pub min_version: TlsVersion,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            verify: true,
            ca_pem: None,
            server_name: None,
            client_cert_pem: None,
            client_key_pem: None,
            min_version: TlsVersion::default(),
        }
    }
}

/// A private key in PEM. Its `Debug` never shows it, so a spec logged by mistake does not
/// leak it.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PrivateKeyPem(pub String);

impl PrivateKeyPem {
    /// Whether this is the placeholder a GET shows rather than a key.
    pub fn is_redacted(&self) -> bool {
        self.0 == REDACTED
    }
}

impl fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// A TLS protocol version, as `tls.min_version` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

impl TlsSettings {
    /// True when these settings are what an upstream without `tls` gets, so the process's
    /// shared client configuration serves it.
    pub fn is_default(&self) -> bool {
        *self == TlsSettings::default()
    }

    /// Checks what a handshake would trip over: PEM that does not parse, a key that is not
    /// the certificate's, half an mTLS pair, a server name rustls refuses. Paths are
    /// relative to `tls`; no message quotes a byte of the key.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.server_name()?;
        self.trusted_roots()?;
        self.client_identity()?;
        Ok(())
    }

    /// `server_name` as rustls takes it; `None` when the target's host is to be used.
    pub fn server_name(&self) -> Result<Option<ServerName<'static>>, Invalid> {
        let Some(name) = &self.server_name else {
            return Ok(None);
        };
        check_len("server_name", name, MAX_HOST_BYTES)?;
        match ServerName::try_from(name.as_str()) {
            Ok(parsed) if is_valid_host(name) => Ok(Some(parsed.to_owned())),
            _ => Err(Invalid::new(
                "server_name",
                format!("{name:?} is not a DNS name or an IP address"),
            )),
        }
    }

    /// The certificates of `ca_pem`, each checked to be usable as a trust anchor; `None`
    /// when the system's roots are to be used.
    pub fn trusted_roots(&self) -> Result<Option<Vec<CertificateDer<'static>>>, Invalid> {
        let Some(pem) = &self.ca_pem else {
            return Ok(None);
        };
        let certs = parse_certificates(pem, "ca_pem")?;
        let mut store = rustls::RootCertStore::empty();
        for (i, cert) in certs.iter().enumerate() {
            if store.add(cert.clone()).is_err() {
                return Err(Invalid::new(
                    "ca_pem",
                    format!(
                        "certificate {} of the bundle is not a valid X.509 certificate",
                        i + 1
                    ),
                ));
            }
        }
        Ok(Some(certs))
    }

    /// The client certificate chain and its private key, checked to belong together;
    /// `None` without mTLS.
    pub fn client_identity(
        &self,
    ) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, Invalid> {
        let (cert_pem, key_pem) = match (&self.client_cert_pem, &self.client_key_pem) {
            (None, None) => return Ok(None),
            (Some(_), None) => {
                return Err(Invalid::new(
                    "client_key_pem",
                    "required with client_cert_pem: mTLS takes the certificate and its key",
                ));
            }
            (None, Some(_)) => {
                return Err(Invalid::new(
                    "client_cert_pem",
                    "required with client_key_pem: mTLS takes the certificate and its key",
                ));
            }
            (Some(cert), Some(key)) => (cert, key),
        };
        let chain = parse_certificates(cert_pem, "client_cert_pem")?;
        if chain
            .first()
            .is_none_or(|leaf| rustls::server::ParsedCertificate::try_from(leaf).is_err())
        {
            return Err(Invalid::new(
                "client_cert_pem",
                "the first certificate is not a valid X.509 certificate",
            ));
        }
        if key_pem.is_redacted() {
            return Err(Invalid::new(
                "client_key_pem",
                format!(
                    "{REDACTED:?} stands for the stored key, and this upstream has none: \
                     send the PEM key itself"
                ),
            ));
        }
        // Never the parser's message: it may quote a line of the key.
        let key = PrivateKeyDer::from_pem_slice(key_pem.0.as_bytes()).map_err(|_| {
            Invalid::new(
                "client_key_pem",
                "not a PEM private key (PKCS#8, PKCS#1 or SEC1)",
            )
        })?;
        let provider = rustls::crypto::ring::default_provider();
        match CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider) {
            Ok(_) => Ok(Some((chain, key))),
            Err(rustls::Error::InconsistentKeys(_)) => Err(Invalid::new(
                "client_key_pem",
                "does not match the public key of client_cert_pem",
            )),
            Err(_) => Err(Invalid::new(
                "client_key_pem",
                "not a usable private key (RSA, ECDSA P-256/P-384 or Ed25519)",
            )),
        }
    }
}

/// Every certificate in `pem` (other sections, such as keys, are skipped); at least one.
fn parse_certificates(pem: &str, field: &str) -> Result<Vec<CertificateDer<'static>>, Invalid> {
    // A certificate field is shown by GET: a key pasted into it with the certificate would
    // be shown too.
    if crate::certs::holds_private_key(pem) {
        return Err(Invalid::new(
            field,
            "holds a PRIVATE KEY block: certificates only (a client key goes in tls.client_key_pem)",
        ));
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| Invalid::new(field, "not valid PEM"))?;
    if certs.is_empty() {
        return Err(Invalid::new(
            field,
            "no certificate in it: expected PEM (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

/// An RFC 9110 token.
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

// ---------------------------------------------------------------------------------------------
// Services

/// What kind of API a service is; it decides protocol-specific handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceType {
    #[default]
    Rest,
    Grpc,
    Graphql,
    Ai,
}

/// A named backend API, linked to an upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Unique within the gateway.
    pub name: String,
    /// `rest` (default), `grpc`, `graphql` or `ai`.
    #[serde(default, rename = "type")]
    pub kind: ServiceType,
    /// The upstream that serves it; must exist in the same gateway.
    pub upstream_id: Uuid,
    /// Tried in order when every target of `upstream_id` is down.
    #[serde(default)]
    pub fallback_upstream_ids: Vec<Uuid>,
    #[serde(default)]
    pub description: String,
    /// Free-form JSON object for owners, versions, links.
    #[serde(default = "empty_object")]
    pub metadata: Json,
    /// Whole-request deadline (connect to last response byte); none by default.
    #[serde(default)]
    pub timeout: Option<Span>,
    /// Extra attempts on another target after a failure its `retry_policy` retries.
    /// Default 2.
    #[serde(default = "two")]
    pub retries: u32,
    /// Which failures are retried, for which methods, within what budget, after what
    /// backoff.
    #[serde(default)]
    pub retry_policy: RetryPolicy,
    #[serde(default)]
    pub tags: Vec<String>,
    /// For `type: "ai"`: model policy, price table, token defaults (defaults when absent).
    #[serde(default)]
    pub ai: Option<AiSettings>,
}

impl ServiceSpec {
    pub fn validate(&self) -> Result<(), Invalid> {
        validate_name(&self.name, "name")?;
        check_count(
            "fallback_upstream_ids",
            self.fallback_upstream_ids.len(),
            MAX_FALLBACK_UPSTREAMS,
        )?;
        check_len("description", &self.description, MAX_DESCRIPTION_BYTES)?;
        if !self.metadata.0.is_object() {
            return Err(Invalid::new("metadata", "must be a JSON object"));
        }
        validate_free_form(&self.metadata.0, "metadata", MAX_METADATA_BYTES)?;
        validate_tags(&self.tags)?;
        if self.retries > 10 {
            return Err(Invalid::new("retries", "at most 10"));
        }
        self.retry_policy.validate()?;
        if let Some(ai) = &self.ai {
            if self.kind != ServiceType::Ai {
                return Err(Invalid::new(
                    "ai",
                    "only a service of type \"ai\" has ai settings",
                ));
            }
            ai.validate().map_err(|e| e.under("ai"))?;
        }
        if self.fallback_upstream_ids.contains(&self.upstream_id) {
            return Err(Invalid::new(
                "fallback_upstream_ids",
                "must not repeat upstream_id",
            ));
        }
        Ok(())
    }

    /// Every upstream this service may send to.
    pub fn upstream_ids(&self) -> impl Iterator<Item = Uuid> + '_ {
        std::iter::once(self.upstream_id).chain(self.fallback_upstream_ids.iter().copied())
    }
}

/// A failure a [`RetryPolicy`] may retry.
/// In JSON a string (`"timeout"`) or a number (`502`); in binary formats always the string
/// (`"502"`), since bincode cannot deserialize untagged values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    Condition(RetryCondition),
    /// A 5xx status the upstream answered with.
    Status(u16),
}

impl Serialize for RetryOn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RetryOn::Status(status) if s.is_human_readable() => s.serialize_u16(*status),
            RetryOn::Status(status) => s.serialize_str(&status.to_string()),
            RetryOn::Condition(RetryCondition::ConnectFailure) => {
                s.serialize_str("connect-failure")
            }
            RetryOn::Condition(RetryCondition::Timeout) => s.serialize_str("timeout"),
            RetryOn::Condition(RetryCondition::Reset) => s.serialize_str("reset"),
        }
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RetryOn;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"connect-failure\", \"timeout\", \"reset\" or a 5xx status")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RetryOn, E> {
                match v {
                    "connect-failure" => Ok(RetryOn::Condition(RetryCondition::ConnectFailure)),
                    "timeout" => Ok(RetryOn::Condition(RetryCondition::Timeout)),
                    "reset" => Ok(RetryOn::Condition(RetryCondition::Reset)),
                    digits if digits.bytes().all(|b| b.is_ascii_digit()) && !digits.is_empty() => {
                        digits
                            .parse()
                            .map(RetryOn::Status)
                            .map_err(|_| E::custom(format!("{digits} is not an HTTP status")))
                    }
                    other => Err(E::custom(format!(
                        "{other:?} is not a retry condition: use \"connect-failure\", \"timeout\", \"reset\" or a 5xx status"
                    ))),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RetryOn, E> {
                u16::try_from(v)
                    .map(RetryOn::Status)
                    .map_err(|_| E::custom(format!("{v} is not an HTTP status")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RetryOn, E> {
                Err(E::custom(format!("{v} is not an HTTP status")))
            }
        }
        if d.is_human_readable() {
            d.deserialize_any(Visitor)
        } else {
            d.deserialize_str(Visitor)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCondition {
    /// The connection (or TLS handshake) failed: nothing was sent, so every method may
    /// retry it.
    ConnectFailure,
    /// No response head within the upstream's `read_timeout`.
    Timeout,
    /// The connection closed or failed before a response head.
    Reset,
}

/// When a service's request is tried again on another target.
///
/// A retry needs: the failure in `on`; an idempotent method (RFC 9110 §9.2.2), or
/// `non_idempotent`, or a connect failure (nothing was sent); the request body still in
/// hand; an attempt left (`retries`); and room in the budget: retries stay within
/// `budget_percent` of the requests of the last `budget_window` (counted per worker), with
/// `min_retries_per_second` allowed regardless, so retries cannot multiply an outage.
/// Before a retry the worker waits a random time between 0 and
/// `min(backoff_max, backoff_base × 2^(retry−1))` (full jitter). A retry after a failed
/// connect sent nothing: it needs no budget and waits no backoff.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Default `["connect-failure", "timeout", "reset", 502, 503]`.
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOn>,
    /// Also retry non-idempotent methods (POST, PATCH) on failures after the request was
    /// sent. Default `false`.
    #[serde(default)]
    pub non_idempotent: bool,
    /// Retries as a percentage of requests over `budget_window`. Default 20.
    #[serde(default = "twenty")]
    pub budget_percent: u32,
    /// Default `10s`.
    #[serde(default = "ten_seconds")]
    pub budget_window: Span,
    /// Retries per second allowed even when the budget is spent (so a quiet service can
    /// still retry). Default 10.
    #[serde(default = "ten")]
    pub min_retries_per_second: u32,
    /// Default `25ms`.
    #[serde(default = "default_backoff_base")]
    pub backoff_base: Span,
    /// Default `250ms`.
    #[serde(default = "default_backoff_max")]
    pub backoff_max: Span,
}

fn ten() -> u32 {
    10
}

fn default_retry_on() -> Vec<RetryOn> {
    vec![
        RetryOn::Condition(RetryCondition::ConnectFailure),
        RetryOn::Condition(RetryCondition::Timeout),
        RetryOn::Condition(RetryCondition::Reset),
        RetryOn::Status(502),
        RetryOn::Status(503),
    ]
}

fn default_backoff_base() -> Span {
    Span::from_millis(25)
}

fn default_backoff_max() -> Span {
    Span::from_millis(250)
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            on: default_retry_on(),
            non_idempotent: false,
            budget_percent: 20,
            budget_window: ten_seconds(),
            min_retries_per_second: 10,
            backoff_base: default_backoff_base(),
            backoff_max: default_backoff_max(),
        }
    }
}

impl RetryPolicy {
    fn validate(&self) -> Result<(), Invalid> {
        check_count("retry_policy.on", self.on.len(), 16)?;
        for on in &self.on {
            if let RetryOn::Status(status) = on
                && !(500..=599).contains(status)
            {
                return Err(Invalid::new(
                    "retry_policy.on",
                    format!(
                        "{status} is not a 5xx status (or use connect-failure, timeout, reset)"
                    ),
                ));
            }
        }
        if self.budget_percent > 100 {
            return Err(Invalid::new(
                "retry_policy.budget_percent",
                "must be between 0 and 100",
            ));
        }
        let window = self.budget_window.as_duration();
        if window < std::time::Duration::from_secs(1)
            || window > std::time::Duration::from_secs(300)
        {
            return Err(Invalid::new(
                "retry_policy.budget_window",
                "must be between 1s and 300s",
            ));
        }
        if self.backoff_max.as_duration() < self.backoff_base.as_duration() {
            return Err(Invalid::new(
                "retry_policy.backoff_max",
                "must not be shorter than backoff_base",
            ));
        }
        if self.backoff_max.as_duration() > std::time::Duration::from_secs(60) {
            return Err(Invalid::new("retry_policy.backoff_max", "at most 60s"));
        }
        Ok(())
    }

    /// Whether `on` lists the condition.
    pub fn retries_on(&self, condition: RetryCondition) -> bool {
        self.on.contains(&RetryOn::Condition(condition))
    }

    /// Whether `on` lists the status.
    pub fn retries_status(&self, status: u16) -> bool {
        self.on.contains(&RetryOn::Status(status))
    }
}

// ---------------------------------------------------------------------------------------------
// Rules

/// A routing rule: which requests go to which service, with which plugins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Exact `/v1/chat`, parameter `/users/{id}` or prefix `/v1/*`.
    pub path: String,
    /// HTTP methods it accepts; empty (default) accepts all. A GET rule also answers HEAD.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Request headers that must be present with exactly these values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The service requests go to; or use `services` for weighted traffic shifting.
    #[serde(default)]
    pub service_id: Option<Uuid>,
    /// Weighted services (traffic shifting); exclusive with `service_id`.
    #[serde(default)]
    pub services: Vec<WeightedService>,
    /// Remove the matched prefix before forwarding (the query string is kept). Default false.
    #[serde(default)]
    pub strip_path: bool,
    /// Forward the client's Host header instead of the target's. Default false.
    #[serde(default)]
    pub preserve_host: bool,
    /// Among equally specific rules, lower wins. Default 0.
    #[serde(default)]
    pub priority: i32,
    /// Plugins for requests matching this rule, after the gateway's within each stage.
    #[serde(default)]
    pub plugin_chain: Vec<PluginConfig>,
    /// Inactive rules do not route. Default true.
    #[serde(default = "yes")]
    pub active: bool,
    /// Public rules need no API key. Default false.
    #[serde(default)]
    pub public: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedService {
    pub service_id: Uuid,
    /// Relative share, 0..=65535; 0 receives nothing. Default 100.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

impl RuleSpec {
    pub fn validate(&self) -> Result<(), Invalid> {
        check_len("path", &self.path, MAX_PATH_BYTES)?;
        router::parse_rule_path(&self.path).map_err(|e| Invalid::new("path", e.to_string()))?;
        check_count("methods", self.methods.len(), MAX_METHODS_PER_RULE)?;
        for (i, method) in self.methods.iter().enumerate() {
            check_len(format!("methods[{i}]"), method, MAX_METHOD_BYTES)?;
        }
        MethodSet::parse(&self.methods).map_err(|e| Invalid::new("methods", e.to_string()))?;
        check_count("headers", self.headers.len(), MAX_HEADERS_PER_RULE)?;
        for (name, value) in &self.headers {
            if name.len() > MAX_HEADER_NAME_BYTES {
                return Err(Invalid::new(
                    "headers",
                    format!(
                        "a header name is too long: {} bytes, the maximum is {MAX_HEADER_NAME_BYTES}",
                        name.len()
                    ),
                ));
            }
            if !is_header_name(name) {
                return Err(Invalid::new(
                    format!("headers.{name}"),
                    "not an HTTP header name",
                ));
            }
            check_len(format!("headers.{name}"), value, MAX_HEADER_VALUE_BYTES)?;
        }
        check_count("services", self.services.len(), MAX_WEIGHTED_SERVICES)?;
        match (self.service_id.is_some(), self.services.is_empty()) {
            (true, false) => {
                return Err(Invalid::new(
                    "services",
                    "give either service_id or services, not both",
                ));
            }
            (false, true) => {
                return Err(Invalid::new(
                    "service_id",
                    "required (or a non-empty services list)",
                ));
            }
            _ => {}
        }
        for (i, s) in self.services.iter().enumerate() {
            if s.weight > 65535 {
                return Err(Invalid::new(
                    format!("services[{i}].weight"),
                    "use 0 to 65535",
                ));
            }
        }
        if !self.services.is_empty() && self.services.iter().all(|s| s.weight == 0) {
            return Err(Invalid::new(
                "services",
                "at least one service needs a weight above 0",
            ));
        }
        validate_chain(&self.plugin_chain, "plugin_chain")
    }

    /// Every service this rule may send to.
    pub fn service_ids(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.service_id
            .into_iter()
            .chain(self.services.iter().map(|s| s.service_id))
    }
}

// ---------------------------------------------------------------------------------------------
// API keys

/// What a client may set on an API key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// Unique within the gateway.
    pub name: String,
    /// RFC 3339; absent means the key never expires.
    #[serde(default, with = "rfc3339_option")]
    pub expires_at: Option<OffsetDateTime>,
    /// Inactive keys are refused with 401. Default true.
    #[serde(default = "yes")]
    pub active: bool,
    /// What the key may reach; empty lists allow everything.
    #[serde(default)]
    pub scopes: KeyScopes,
    /// AI tokens and/or cost the key may spend per period (`{"tokens": N, "period": "30d"}`);
    /// over it, AI requests get 429. None: no budget.
    #[serde(default)]
    pub budget: Option<Budget>,
}

/// Limits on what a key may reach. Each non-empty list must admit a request: its rule, every
/// service that rule may send to, and its method. An empty list does not restrict.
///
/// Deleting a rule or service removes it from every key's scopes in the same mutation; a key
/// whose `rules` or `services` list that leaves empty is deactivated instead of being
/// widened to everything (see [`crate::state`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyScopes {
    #[serde(default)]
    pub rules: Vec<Uuid>,
    #[serde(default)]
    pub services: Vec<Uuid>,
    #[serde(default)]
    pub methods: Vec<String>,
}

impl KeyScopes {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.services.is_empty() && self.methods.is_empty()
    }

    fn validate(&self) -> Result<(), Invalid> {
        check_count("scopes.rules", self.rules.len(), MAX_SCOPE_ENTRIES)?;
        check_count("scopes.services", self.services.len(), MAX_SCOPE_ENTRIES)?;
        check_count("scopes.methods", self.methods.len(), MAX_METHODS_PER_RULE)?;
        for (i, method) in self.methods.iter().enumerate() {
            check_len(format!("scopes.methods[{i}]"), method, MAX_METHOD_BYTES)?;
            MethodSet::parse(std::slice::from_ref(method))
                .map_err(|e| Invalid::new(format!("scopes.methods[{i}]"), e.to_string()))?;
        }
        Ok(())
    }
}

impl KeySpec {
    /// `now` is passed in so that recovery (replaying old writes) never re-checks expiry.
    pub fn validate(&self, now: OffsetDateTime) -> Result<(), Invalid> {
        validate_name(&self.name, "name")?;
        if let Some(at) = self.expires_at
            && at <= now
        {
            return Err(Invalid::new("expires_at", "must be in the future"));
        }
        if let Some(budget) = &self.budget {
            budget.validate().map_err(|e| e.under("budget"))?;
        }
        self.scopes.validate()
    }
}

/// An API key as stored: never the plaintext, only its hash and a recognisable prefix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredKey {
    pub spec: KeySpec,
    /// The first characters of the plaintext (`sgk_AbCd1234`), to tell keys apart.
    pub prefix: String,
    pub hash: KeyHash,
    /// When the secret was last rotated.
    #[serde(default, with = "rfc3339_option")]
    pub rotated_at: Option<OffsetDateTime>,
    /// The secret before the last rotation, accepted until its `valid_until`.
    #[serde(default)]
    pub previous: Option<PreviousSecret>,
}

/// A rotated-out secret in its grace period (and after it, so that its holder is told the
/// key was rotated rather than that it is unknown).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreviousSecret {
    pub prefix: String,
    pub hash: KeyHash,
    #[serde(with = "time::serde::rfc3339")]
    pub valid_until: OffsetDateTime,
}

/// `Option<OffsetDateTime>` as an RFC 3339 string or null. `time`'s own `rfc3339::option`
/// deserializes through `deserialize_any`, which bincode cannot do.
mod rfc3339_option {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    pub fn serialize<S: Serializer>(
        value: &Option<OffsetDateTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(t) => {
                let text = t.format(&Rfc3339).map_err(serde::ser::Error::custom)?;
                s.serialize_some(&text)
            }
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => OffsetDateTime::parse(&text, &Rfc3339)
                .map(Some)
                .map_err(|e| {
                    // Echo the text only when it is short enough to be a timestamp.
                    let shown = if text.len() <= 64 {
                        format!("{text:?}")
                    } else {
                        format!("a {}-byte string", text.len())
                    };
                    serde::de::Error::custom(format!(
                        "{shown} is not an RFC 3339 timestamp like 2027-12-31T23:59:59Z ({e})"
                    ))
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(settings: serde_json::Value) -> PluginConfig {
        PluginConfig {
            name: "rate_limiter".into(),
            enabled: true,
            stage: Stage::PreRequest,
            priority: 1,
            parallel: false,
            settings: Json(settings),
        }
    }

    fn gateway() -> GatewaySpec {
        GatewaySpec {
            name: "g".into(),
            subdomain: "api".into(),
            status: GatewayStatus::Active,
            required_plugins: vec![plugin(serde_json::json!({
                "limits": {"global": {"limit": 15, "window": "1m"}}
            }))],
            key_expiry_warning: Span::from_secs(7 * 86_400),
            anomaly_detection: AnomalySettings::default(),
        }
    }

    #[test]
    fn dns_labels_follow_the_rfc_shape() {
        for ok in ["a", "api", "my-api-2", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn a_bad_window_is_reported_with_its_full_path() {
        let mut g = gateway();
        g.required_plugins[0].settings = Json(serde_json::json!({
            "limits": {"global": {"limit": 15, "window": "1x"}}
        }));
        let err = g.validate().expect_err("1x is no duration");
        assert_eq!(
            err.path,
            "required_plugins[0].settings.limits.global.window"
        );
        assert!(err.message.contains("invalid duration \"1x\""), "{err}");
    }

    #[test]
    fn unknown_plugin_and_wrong_stage_are_refused() {
        let mut g = gateway();
        g.required_plugins[0].name = "nope".into();
        let err = g.validate().expect_err("unknown plugin");
        assert_eq!(err.path, "required_plugins[0].name");
        let mut g = gateway();
        g.required_plugins[0].stage = Stage::PostResponse;
        let err = g.validate().expect_err("wrong stage");
        assert_eq!(err.path, "required_plugins[0].stage");
    }

    #[test]
    fn the_docs_typo_plugins_chain_is_refused_by_name() {
        let body = r#"{"path":"/v1/*","service_id":"0190b7a4-0000-7000-8000-000000000000","plugins_chain":[]}"#;
        let err = serde_json::from_str::<RuleSpec>(body).expect_err("typo");
        assert!(
            err.to_string().contains("unknown field `plugins_chain`"),
            "{err}"
        );
        assert!(err.to_string().contains("plugin_chain"), "{err}");
    }

    #[test]
    fn upstream_targets_are_checked_field_by_field() {
        let mut u: UpstreamSpec = serde_json::from_value(serde_json::json!({
            "name": "u", "targets": [{"host": "127.0.0.1", "port": 8000}]
        }))
        .expect("valid upstream");
        assert!(u.validate().is_ok());
        u.targets[0].port = 70000;
        assert_eq!(u.validate().expect_err("port").path, "targets[0].port");
        u.targets[0].port = 80;
        u.targets[0].weight = 65536;
        assert_eq!(u.validate().expect_err("weight").path, "targets[0].weight");
        u.targets.clear();
        assert_eq!(u.validate().expect_err("empty").path, "targets");
    }

    #[test]
    fn a_grpc_health_check_names_a_bounded_visible_service() {
        let with = |service: &str| -> UpstreamSpec {
            serde_json::from_value(serde_json::json!({
                "name": "u", "targets": [{"host": "127.0.0.1", "port": 8000}],
                "health_checks": {"active": {"type": "grpc", "grpc_service": service}}
            }))
            .expect("parses")
        };
        assert!(with("").validate().is_ok());
        assert!(with("pkg.v1.Service").validate().is_ok());
        assert!(with(&"s".repeat(MAX_GRPC_SERVICE_BYTES)).validate().is_ok());
        for bad in [
            "has space",
            "tab\there",
            &"s".repeat(MAX_GRPC_SERVICE_BYTES + 1),
        ] {
            let err = with(bad).validate().expect_err("refused");
            assert_eq!(err.path, "health_checks.active.grpc_service", "{bad:?}");
        }
    }

    #[test]
    fn http2_keepalive_defaults_and_its_bounds() {
        let u: UpstreamSpec = serde_json::from_value(serde_json::json!({
            "name": "u", "targets": [{"host": "127.0.0.1", "port": 8000}],
            "http2_keepalive": {}
        }))
        .expect("valid upstream");
        let k = u.http2_keepalive.clone().expect("set");
        assert_eq!(k.interval.as_duration(), std::time::Duration::from_secs(30));
        assert_eq!(k.timeout.as_duration(), std::time::Duration::from_secs(10));
        assert!(u.validate().is_ok());
        for (field, path) in [
            ("interval", "http2_keepalive.interval"),
            ("timeout", "http2_keepalive.timeout"),
        ] {
            let u: UpstreamSpec = serde_json::from_value(serde_json::json!({
                "name": "u", "targets": [{"host": "127.0.0.1", "port": 8000}],
                "http2_keepalive": {field: "10ms"}
            }))
            .expect("parses");
            assert_eq!(u.validate().expect_err("too short").path, path);
        }
        let unknown = serde_json::from_value::<UpstreamSpec>(serde_json::json!({
            "name": "u", "targets": [{"host": "127.0.0.1", "port": 8000}],
            "http2_keepalive": {"intervall": "1s"}
        }));
        assert!(unknown.is_err());
    }

    #[test]
    fn least_conn_is_an_alias_of_least_connections() {
        let a: Algorithm = serde_json::from_str("\"least-conn\"").expect("alias");
        assert_eq!(a, Algorithm::LeastConnections);
        assert_eq!(
            serde_json::to_string(&a).expect("serialize"),
            "\"least-connections\""
        );
    }

    #[test]
    fn records_roundtrip_through_bincode_including_free_form_json() {
        let record = Record {
            id: Uuid::now_v7(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
            spec: gateway(),
        };
        let bytes =
            bincode::serde::encode_to_vec(&record, bincode::config::standard()).expect("encode");
        let (back, _): (Record<GatewaySpec>, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).expect("decode");
        assert_eq!(back, record);
    }

    #[test]
    fn stored_keys_with_an_expiry_roundtrip_through_bincode() {
        let key = StoredKey {
            spec: KeySpec {
                name: "k".into(),
                expires_at: Some(OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000)),
                active: true,
                scopes: Default::default(),
                budget: None,
            },
            prefix: "sgk_x".into(),
            hash: crate::keys::hash_key(b"x"),
            rotated_at: None,
            previous: None,
        };
        let bytes =
            bincode::serde::encode_to_vec(&key, bincode::config::standard()).expect("encode");
        let (back, _): (StoredKey, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).expect("decode");
        assert_eq!(back, key);
        let in_a_year = OffsetDateTime::now_utc() + time::Duration::days(365);
        let stamp = in_a_year
            .format(&time::format_description::well_known::Rfc3339)
            .expect("format");
        let json: KeySpec =
            serde_json::from_value(serde_json::json!({"name": "k", "expires_at": stamp}))
                .expect("json");
        assert_eq!(
            json.expires_at.map(|t| t.unix_timestamp()),
            Some(in_a_year.unix_timestamp())
        );
        let err = serde_json::from_str::<KeySpec>(r#"{"name":"k","expires_at":"tomorrow"}"#)
            .expect_err("not a timestamp");
        assert!(err.to_string().contains("RFC 3339"), "{err}");
    }

    #[test]
    fn key_expiry_must_be_in_the_future() {
        let now = OffsetDateTime::now_utc();
        let spec = KeySpec {
            name: "k".into(),
            expires_at: Some(now - time::Duration::seconds(1)),
            active: true,
            scopes: KeyScopes::default(),
            budget: None,
        };
        assert_eq!(spec.validate(now).expect_err("past").path, "expires_at");
    }

    // -- bounds (limits) ---------------------------------------------------------------------

    fn upstream() -> UpstreamSpec {
        serde_json::from_value(serde_json::json!({
            "name": "u", "targets": [{"host": "127.0.0.1", "port": 8000}]
        }))
        .expect("valid upstream")
    }

    fn service() -> ServiceSpec {
        serde_json::from_value(serde_json::json!({
            "name": "s", "upstream_id": "0190b7a4-0000-7000-8000-000000000000"
        }))
        .expect("valid service")
    }

    fn rule() -> RuleSpec {
        serde_json::from_value(serde_json::json!({
            "path": "/v1/*", "service_id": "0190b7a4-0000-7000-8000-000000000000"
        }))
        .expect("valid rule")
    }

    /// Asserts that `result` refuses `path` as too long or too many, with a short message.
    #[track_caller]
    fn assert_over_bound(result: Result<(), Invalid>, path: &str) {
        let err = result.expect_err("over the bound");
        assert_eq!(err.path, path, "{err}");
        assert!(
            err.message.starts_with("too long")
                || err.message.starts_with("too many")
                || err.message.starts_with("too large")
                || err.message.starts_with("a key is too long")
                || err.message.starts_with("a header name is too long"),
            "{err}"
        );
        assert!(err.message.len() < 200, "never echoes the value: {err}");
    }

    #[test]
    fn names_are_accepted_at_the_maximum_and_refused_one_byte_over() {
        let mut g = gateway();
        g.name = "n".repeat(MAX_NAME_BYTES);
        g.validate().expect("a name at the maximum");
        g.name.push('n');
        assert_over_bound(g.validate(), "name");
        // Bytes, not characters: 128 three-byte characters are 384 bytes.
        g.name = "€".repeat(128);
        assert_over_bound(g.validate(), "name");

        let mut k = KeySpec {
            name: "k".repeat(MAX_NAME_BYTES + 1),
            expires_at: None,
            active: true,
            scopes: KeyScopes::default(),
            budget: None,
        };
        assert_over_bound(k.validate(OffsetDateTime::UNIX_EPOCH), "name");
        k.name.pop();
        k.validate(OffsetDateTime::UNIX_EPOCH)
            .expect("at the maximum");
    }

    #[test]
    fn a_megabyte_rule_path_is_refused_naming_path_without_echoing_it() {
        let mut r = rule();
        r.path = format!("/{}", "a".repeat(1_000_000));
        assert_over_bound(r.validate(), "path");
        r.path = format!("/{}", "a".repeat(MAX_PATH_BYTES - 1));
        r.validate().expect("a path of exactly the maximum");
        r.path.push('a');
        assert_over_bound(r.validate(), "path");
    }

    #[test]
    fn rule_methods_and_headers_are_bounded() {
        let mut r = rule();
        r.methods = vec!["GET".into(); MAX_METHODS_PER_RULE];
        r.validate().expect("repeats up to the maximum");
        r.methods.push("GET".into());
        assert_over_bound(r.validate(), "methods");
        r.methods = vec!["X".repeat(MAX_METHOD_BYTES + 1)];
        assert_over_bound(r.validate(), "methods[0]");

        let mut r = rule();
        r.headers = (0..=MAX_HEADERS_PER_RULE)
            .map(|i| (format!("x-h{i}"), "v".into()))
            .collect();
        assert_over_bound(r.validate(), "headers");
        r.headers = [("x".repeat(MAX_HEADER_NAME_BYTES + 1), "v".into())].into();
        assert_over_bound(r.validate(), "headers");
        r.headers = [("x-v".into(), "v".repeat(MAX_HEADER_VALUE_BYTES))].into();
        r.validate().expect("a value at the maximum");
        r.headers = [("x-v".into(), "v".repeat(MAX_HEADER_VALUE_BYTES + 1))].into();
        assert_over_bound(r.validate(), "headers.x-v");

        let mut r = rule();
        r.service_id = None;
        r.services = (0..=MAX_WEIGHTED_SERVICES)
            .map(|_| WeightedService {
                service_id: Uuid::nil(),
                weight: 1,
            })
            .collect();
        assert_over_bound(r.validate(), "services");
    }

    #[test]
    fn chains_hold_at_most_the_maximum_number_of_plugins() {
        let mut g = gateway();
        g.required_plugins = vec![g.required_plugins[0].clone(); MAX_PLUGINS_PER_CHAIN];
        g.validate().expect("a full chain");
        g.required_plugins.push(g.required_plugins[0].clone());
        assert_over_bound(g.validate(), "required_plugins");

        let mut r = rule();
        r.plugin_chain = vec![gateway().required_plugins[0].clone(); MAX_PLUGINS_PER_CHAIN + 1];
        assert_over_bound(r.validate(), "plugin_chain");

        let mut g = gateway();
        g.required_plugins[0].name = "p".repeat(MAX_NAME_BYTES + 1);
        assert_over_bound(g.validate(), "required_plugins[0].name");
    }

    #[test]
    fn plugin_settings_are_bounded_in_size_and_in_every_string_with_the_full_path() {
        let mut g = gateway();
        g.required_plugins[0].settings = Json(serde_json::json!({
            "limits": {"global": {"limit": 15, "window": "1".repeat(MAX_JSON_STRING_BYTES + 1)}}
        }));
        assert_over_bound(
            g.validate(),
            "required_plugins[0].settings.limits.global.window",
        );

        let mut g = gateway();
        g.required_plugins[0].settings = Json(serde_json::json!({
            "limits": {"global": {"limit": 15, "window": "1m"}},
            "padding": vec!["x".repeat(1000); MAX_SETTINGS_BYTES / 1000],
        }));
        assert_over_bound(g.validate(), "required_plugins[0].settings");

        let mut g = gateway();
        g.required_plugins[0].settings = Json(serde_json::json!({
            "k".repeat(MAX_JSON_KEY_BYTES + 1): 1
        }));
        assert_over_bound(g.validate(), "required_plugins[0].settings");
    }

    #[test]
    fn service_fields_are_bounded() {
        let mut s = service();
        s.description = "d".repeat(MAX_DESCRIPTION_BYTES);
        s.validate().expect("a description at the maximum");
        s.description.push('d');
        assert_over_bound(s.validate(), "description");

        let mut s = service();
        s.tags = vec!["t".into(); MAX_TAGS + 1];
        assert_over_bound(s.validate(), "tags");
        s.tags = vec!["ok".into(), "t".repeat(MAX_TAG_BYTES + 1)];
        assert_over_bound(s.validate(), "tags[1]");

        let mut s = service();
        s.fallback_upstream_ids = (1..=MAX_FALLBACK_UPSTREAMS + 1)
            .map(|i| Uuid::from_u128(i as u128))
            .collect();
        assert_over_bound(s.validate(), "fallback_upstream_ids");

        let mut s = service();
        s.metadata = Json(serde_json::json!({"notes": "n".repeat(MAX_METADATA_BYTES)}));
        assert_over_bound(s.validate(), "metadata");

        let mut deep = serde_json::json!(1);
        for _ in 0..MAX_JSON_DEPTH {
            deep = serde_json::json!({ "a": deep });
        }
        let mut s = service();
        s.metadata = Json(deep.clone());
        s.validate().expect("metadata nested to the maximum");
        s.metadata = Json(serde_json::json!({ "a": deep }));
        let err = s.validate().expect_err("one level deeper");
        assert!(err.path.starts_with("metadata.a.a."), "{err}");
        assert!(err.message.contains("nested too deeply"), "{err}");
    }

    #[test]
    fn upstream_fields_are_bounded() {
        let mut u = upstream();
        u.targets = vec![u.targets[0].clone(); MAX_TARGETS_PER_UPSTREAM];
        u.validate().expect("the maximum number of targets");
        u.targets.push(u.targets[0].clone());
        assert_over_bound(u.validate(), "targets");

        let mut u = upstream();
        let label = "a".repeat(63);
        let host = format!("{label}.{label}.{label}.{}", "a".repeat(61));
        assert_eq!(host.len(), MAX_HOST_BYTES);
        u.targets[0].host = host.clone();
        u.validate().expect("a host name at the maximum");
        u.targets[0].host = format!("{host}a");
        assert_over_bound(u.validate(), "targets[0].host");
        u.targets[0].host = "h".repeat(1_000_000);
        assert_over_bound(u.validate(), "targets[0].host");

        let mut u = upstream();
        u.algorithm = Algorithm::ConsistentHash;
        u.hash_header = Some("x".repeat(MAX_HEADER_NAME_BYTES + 1));
        assert_over_bound(u.validate(), "hash_header");

        let mut u = upstream();
        u.tags = vec!["t".repeat(MAX_TAG_BYTES + 1)];
        assert_over_bound(u.validate(), "tags[0]");
    }

    #[test]
    fn a_health_check_path_is_bounded_and_cannot_rewrite_the_probe_request() {
        let mut u = upstream();
        let mut active: ActiveHealthCheck =
            serde_json::from_value(serde_json::json!({})).expect("defaults");
        active.path = format!("/{}", "h".repeat(MAX_PATH_BYTES));
        u.health_checks.active = Some(active.clone());
        assert_over_bound(u.validate(), "health_checks.active.path");
        for bad in ["/health HTTP/1.1\r\nX-Evil: 1", "/a b", "/caf\u{e9}"] {
            active.path = bad.into();
            u.health_checks.active = Some(active.clone());
            let err = u.validate().expect_err(bad);
            assert_eq!(err.path, "health_checks.active.path", "{bad:?}");
        }
        active.path = "/health?probe=1".into();
        u.health_checks.active = Some(active);
        u.validate().expect("a query is fine");
    }

    #[test]
    fn a_subdomain_over_a_dns_label_is_refused_without_echoing_it() {
        let mut g = gateway();
        g.subdomain = "a".repeat(1_000_000);
        assert_over_bound(g.validate(), "subdomain");
    }

    #[test]
    fn a_long_non_timestamp_expiry_is_not_echoed() {
        let long = "9".repeat(10_000);
        let err =
            serde_json::from_str::<KeySpec>(&format!(r#"{{"name":"k","expires_at":"{long}"}}"#))
                .expect_err("not a timestamp");
        assert!(err.to_string().len() < 300, "{err}");
    }

    // -- upstream TLS settings ---------------------------------------------------------------

    /// A self-signed certificate for `name` and its key, as PEM.
    fn issued(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("generate a key pair");
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .expect("a DNS name")
            .self_signed(&key)
            .expect("self-sign");
        (cert.pem(), key.serialize_pem())
    }

    /// The base64 lines of a PEM key: none may appear in an error.
    fn key_lines(key_pem: &str) -> Vec<&str> {
        key_pem
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .collect()
    }

    fn upstream_with_tls(tls: serde_json::Value) -> Result<UpstreamSpec, serde_json::Error> {
        serde_json::from_value(serde_json::json!({
            "name": "u",
            "targets": [{"host": "127.0.0.1", "port": 443, "protocol": "https"}],
            "tls": tls,
        }))
    }

    #[track_caller]
    fn refused_at(tls: serde_json::Value, path: &str) -> Invalid {
        let spec = upstream_with_tls(tls).expect("parses");
        let err = spec.validate().expect_err("refused");
        assert_eq!(err.path, path, "{err}");
        err
    }

    #[test]
    fn tls_settings_default_to_verified_system_roots_tls_1_2_and_no_client_certificate() {
        assert_eq!(upstream().tls, None, "absent: the process defaults");
        let spec = upstream_with_tls(serde_json::json!({})).expect("an empty tls object");
        let tls = spec.tls.clone().expect("present");
        assert!(tls.verify && tls.is_default(), "{tls:?}");
        assert_eq!(tls.min_version, TlsVersion::Tls12);
        spec.validate().expect("the defaults are valid");
        let lax = upstream_with_tls(serde_json::json!({"verify": false})).expect("parses");
        assert!(!lax.tls.is_some_and(|t| t.is_default()));
    }

    #[test]
    fn valid_tls_settings_are_accepted_and_parsed_for_the_proxy() {
        let (ca, _) = issued("ca.test");
        let (cert, key) = issued("client.test");
        let spec = upstream_with_tls(serde_json::json!({
            "verify": true, "ca_pem": ca, "server_name": "api.example.com",
            "client_cert_pem": cert, "client_key_pem": key, "min_version": "1.3",
        }))
        .expect("parses");
        spec.validate().expect("valid");
        let tls = spec.tls.expect("present");
        assert_eq!(tls.min_version, TlsVersion::Tls13);
        assert_eq!(
            tls.trusted_roots().expect("roots").map(|r| r.len()),
            Some(1)
        );
        let name = tls.server_name().expect("a name").expect("set");
        assert_eq!(name.to_str(), "api.example.com");
        let (chain, _) = tls.client_identity().expect("identity").expect("set");
        assert_eq!(chain.len(), 1);
    }

    #[test]
    fn tls_settings_on_an_upstream_without_https_targets_are_accepted() {
        let (ca, _) = issued("ca.test");
        let mut spec = upstream();
        spec.tls = Some(Box::new(TlsSettings {
            ca_pem: Some(ca),
            ..TlsSettings::default()
        }));
        spec.validate().expect("harmless on plain targets");
    }

    #[test]
    fn a_ca_pem_that_holds_no_usable_certificate_is_refused_naming_tls_ca_pem() {
        let (_, key) = issued("x.test");
        for bad in [
            "not a certificate",
            key.as_str(),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        ] {
            let err = refused_at(serde_json::json!({"ca_pem": bad}), "tls.ca_pem");
            for line in key_lines(&key) {
                assert!(!err.message.contains(line), "{err}");
            }
        }
    }

    #[test]
    fn a_certificate_field_holding_a_private_key_is_refused_without_quoting_it() {
        let (cert, key) = issued("client.test");
        let bundle = format!("{cert}{key}");
        for (field, settings) in [
            ("tls.ca_pem", serde_json::json!({"ca_pem": bundle})),
            (
                "tls.client_cert_pem",
                serde_json::json!({"client_cert_pem": bundle, "client_key_pem": key}),
            ),
        ] {
            let err = refused_at(settings, field);
            assert!(err.message.contains("PRIVATE KEY"), "{err}");
            for line in key_lines(&key) {
                assert!(!err.message.contains(line), "{err}");
            }
        }
    }

    #[test]
    fn half_an_mtls_pair_is_refused_naming_the_missing_half() {
        let (cert, key) = issued("client.test");
        refused_at(
            serde_json::json!({"client_key_pem": key}),
            "tls.client_cert_pem",
        );
        refused_at(
            serde_json::json!({"client_cert_pem": cert}),
            "tls.client_key_pem",
        );
    }

    #[test]
    fn client_key_errors_never_quote_the_key() {
        let (cert, key) = issued("client.test");
        let (_, other_key) = issued("other.test");
        let garbled = "-----BEGIN PRIVATE KEY-----\nTOPSECRETxNOTxAxKEYxTOPSECRET\n-----END PRIVATE KEY-----\n";
        let cases = [
            (other_key.as_str(), "does not match"),
            (garbled, "private key"),
            ("not a key at all", "private key"),
        ];
        for (bad_key, says) in cases {
            let err = refused_at(
                serde_json::json!({"client_cert_pem": cert, "client_key_pem": bad_key}),
                "tls.client_key_pem",
            );
            assert!(err.message.contains(says), "{err}");
            assert!(!err.to_string().contains("TOPSECRET"), "{err}");
            for line in key_lines(bad_key).into_iter().chain(key_lines(&key)) {
                assert!(!err.to_string().contains(line), "{err}");
            }
        }
        refused_at(
            serde_json::json!({"client_cert_pem": "not a certificate", "client_key_pem": key}),
            "tls.client_cert_pem",
        );
    }

    #[test]
    fn a_server_name_that_is_not_a_host_name_is_refused() {
        for bad in ["", "a b", "-bad.example", "exa mple.com", &"a".repeat(300)] {
            refused_at(serde_json::json!({"server_name": bad}), "tls.server_name");
        }
        for good in ["api.example.com", "10.0.0.1", "::1", "localhost"] {
            upstream_with_tls(serde_json::json!({"server_name": good}))
                .expect("parses")
                .validate()
                .unwrap_or_else(|e| panic!("{good}: {e}"));
        }
    }

    #[test]
    fn min_version_is_1_2_or_1_3_and_verify_a_boolean() {
        for bad in [
            serde_json::json!({"min_version": "1.1"}),
            serde_json::json!({"min_version": "1.4"}),
            serde_json::json!({"min_version": 1.3}),
            serde_json::json!({"verify": "yes"}),
            serde_json::json!({"verify": true, "insecure": true}),
        ] {
            upstream_with_tls(bad.clone()).expect_err(&bad.to_string());
        }
    }

    #[test]
    fn the_client_key_is_redacted_for_display_and_hidden_from_debug() {
        let (cert, key) = issued("client.test");
        let mut spec = upstream();
        spec.tls = Some(Box::new(TlsSettings {
            client_cert_pem: Some(cert.clone()),
            client_key_pem: Some(PrivateKeyPem(key.clone())),
            ..TlsSettings::default()
        }));
        let record = Record {
            id: Uuid::now_v7(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
            spec,
        };
        let shown = serde_json::to_value(&*record.redacted()).expect("serialize");
        assert_eq!(shown["spec"]["tls"]["client_key_pem"], REDACTED);
        assert_eq!(shown["spec"]["tls"]["client_cert_pem"], cert.as_str());
        let stored = serde_json::to_string(&record).expect("serialize");
        assert!(
            stored.contains(key_lines(&key)[0]),
            "the journal keeps the key"
        );
        let debug = format!("{record:?}");
        for line in key_lines(&key) {
            assert!(!debug.contains(line), "Debug shows the key");
        }

        let keyless = Record {
            spec: upstream(),
            ..record.clone()
        };
        assert!(matches!(keyless.redacted(), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn a_redacted_key_sent_back_keeps_the_stored_key_and_is_refused_without_one() {
        let (cert, key) = issued("client.test");
        let mut stored = upstream();
        stored.tls = Some(Box::new(TlsSettings {
            client_cert_pem: Some(cert.clone()),
            client_key_pem: Some(PrivateKeyPem(key.clone())),
            ..TlsSettings::default()
        }));
        let mut edited = stored.clone();
        if let Some(tls) = edited.tls.as_mut() {
            tls.client_key_pem = Some(PrivateKeyPem(REDACTED.to_owned()));
        }
        edited.tags = vec!["edited".into()];

        let mut put = edited.clone();
        put.restore_redacted_secrets(Some(&stored));
        put.validate().expect("the stored key is back");
        assert_eq!(put.tls, stored.tls);

        // A create (nothing stored) keeps the placeholder, and validation refuses it.
        let mut created = edited;
        created.restore_redacted_secrets(None);
        let err = created.validate().expect_err("no key to keep");
        assert_eq!(err.path, "tls.client_key_pem", "{err}");
        assert!(err.message.contains(REDACTED), "{err}");
    }
}
