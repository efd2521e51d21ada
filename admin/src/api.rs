//! The admin REST API (DESIGN.md §3): routes, the status-code contract, and the one write
//! path every mutation takes.
//!
//! A write is: parse (malformed JSON → 400 with the parser's position; a duplicate key or
//! nesting deeper than the bound → 400 naming where, see [`crate::strict_json`]; unknown
//! field → 400 naming it) → validate the spec (400 naming the field path, including every
//! length and count bound of `shardgate_core::model::limits`) → build a [`Mutation`] →
//! [`State::check`] (404/409/400) → [`State::check_capacity`] (409 when the collection is
//! full) → journal + fsync → [`State::apply`] → compile the next
//! [`Snapshot`] incrementally → publish it to every worker and wait for all of them → answer.
//! So an answered write is both durable and live on every worker (read-your-writes).
//!
//! Errors become `{"error": "..."}` responses here and nowhere else.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use shardgate_core::certs::{CertificateInfo, CertificateSpec};
use shardgate_core::duration::Span;
use shardgate_core::keys::{self, hash_key};
use shardgate_core::metrics::{self, Telemetry};
use shardgate_core::model::{
    GatewaySpec, KeySpec, PreviousSecret, Record, RuleSpec, ServiceSpec, StoredKey, UpstreamSpec,
};
use shardgate_core::plugins::CATALOGUE;
use shardgate_core::ratelimit::Dimension;
use shardgate_core::snapshot::Snapshot;
use shardgate_core::state::{ApplyError, Child, Full, Kind, Mutation, State};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::broadcast::Broadcaster;
use crate::http::{Request, Response};
use crate::resolve::CompileEnv;
use crate::store::Store;
use crate::strict_json;
use crate::usage::{self, UsageTracker};

/// Largest `limit` a list accepts, and its default.
pub const MAX_PAGE: usize = 100;
/// How long a write waits for every worker to apply its snapshot.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `error` message, in bytes: messages that quote client input (serde's "unknown
/// variant `…`", a bad duration) are cut here, so an error never echoes a large body back.
const MAX_ERROR_BYTES: usize = 1024;

/// The admin API's state: the configuration, its store, and the link to the workers.
#[derive(Debug)]
pub struct Api {
    state: State,
    store: Store<State>,
    snapshot: Arc<Snapshot>,
    broadcaster: Broadcaster,
    /// SHA-256 of the admin token, so the comparison is constant-time whatever its length.
    token_hash: Option<keys::KeyHash>,
    env: CompileEnv,
    started: Instant,
    telemetry: Arc<Telemetry>,
    usage: UsageTracker,
}

/// An error answer on its way out; `?` turns core errors into it.
struct Fail(Response);

type Reply = Result<Response, Fail>;

impl Fail {
    fn new(status: u16, msg: impl fmt::Display) -> Fail {
        let mut msg = msg.to_string();
        if msg.len() > MAX_ERROR_BYTES {
            let mut cut = MAX_ERROR_BYTES;
            while !msg.is_char_boundary(cut) {
                cut -= 1;
            }
            msg.truncate(cut);
            msg.push('…');
        }
        Fail(Response::error(status, msg))
    }
}

impl From<ApplyError> for Fail {
    fn from(e: ApplyError) -> Fail {
        let status = match e {
            ApplyError::NotFound(_) => 404,
            ApplyError::Conflict(_) => 409,
            ApplyError::Invalid(_) => 400,
        };
        Fail::new(status, e)
    }
}

/// 409, like a duplicate name: the body is valid and the same request succeeds once an
/// entity is deleted; what refuses it is the state, not the request.
impl From<Full> for Fail {
    fn from(e: Full) -> Fail {
        Fail::new(409, e)
    }
}

impl From<shardgate_core::model::Invalid> for Fail {
    fn from(e: shardgate_core::model::Invalid) -> Fail {
        Fail::new(400, e)
    }
}

/// The collections that live inside a gateway, as they appear in URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Collection {
    Upstreams,
    Services,
    Rules,
    Keys,
}

impl Collection {
    fn parse(segment: &str) -> Option<Collection> {
        Some(match segment {
            "upstreams" => Collection::Upstreams,
            "services" => Collection::Services,
            "rules" => Collection::Rules,
            "keys" => Collection::Keys,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Collection::Upstreams => "upstreams",
            Collection::Services => "services",
            Collection::Rules => "rules",
            Collection::Keys => "keys",
        }
    }

    fn kind(self) -> Kind {
        match self {
            Collection::Upstreams => Kind::Upstream,
            Collection::Services => Kind::Service,
            Collection::Rules => Kind::Rule,
            Collection::Keys => Kind::Key,
        }
    }
}

fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    // Millisecond precision reads better in JSON and is plenty for auditing.
    t.replace_nanosecond(t.millisecond() as u32 * 1_000_000)
        .unwrap_or(t)
}

fn rfc3339(t: OffsetDateTime) -> Value {
    t.format(&time::format_description::well_known::Rfc3339)
        .map(Value::String)
        .unwrap_or(Value::Null)
}

/// An entity as the API shows it: the spec's fields plus id, parent and timestamps.
fn entity_json<T: serde::Serialize>(record: &Record<T>, gateway_id: Option<Uuid>) -> Value {
    let mut object = Map::new();
    object.insert("id".into(), json!(record.id));
    if let Some(g) = gateway_id {
        object.insert("gateway_id".into(), json!(g));
    }
    if let Ok(Value::Object(spec)) = serde_json::to_value(&record.spec) {
        object.extend(spec);
    }
    object.insert("created_at".into(), rfc3339(record.created_at));
    object.insert("updated_at".into(), rfc3339(record.updated_at));
    Value::Object(object)
}

/// A certificate as every GET shows it: never the private key. `info` is `None` only for a
/// stored certificate that no longer loads (logged at start-up).
fn certificate_json(record: &Record<CertificateSpec>, info: Option<&CertificateInfo>) -> Value {
    let mut body = json!({
        "id": record.id,
        "name": record.spec.name,
        "sans": info.map(|i| i.sans.clone()),
        "not_before": info.map(|i| rfc3339(i.not_before)),
        "not_after": info.map(|i| rfc3339(i.not_after)),
        "fingerprint_sha256": info.map(|i| i.fingerprint_sha256.clone()),
        "created_at": rfc3339(record.created_at),
        "updated_at": rfc3339(record.updated_at),
    });
    if info.is_none() {
        body["error"] = json!("the stored certificate does not load; replace it");
    }
    body
}

/// An API key as every GET shows it: never the key, never its hash.
fn key_json(record: &Record<StoredKey>, gateway_id: Uuid) -> Value {
    let spec = &record.spec.spec;
    json!({
        "id": record.id,
        "gateway_id": gateway_id,
        "name": spec.name,
        "prefix": record.spec.prefix,
        "expires_at": spec.expires_at.map(rfc3339),
        "active": spec.active,
        "scopes": spec.scopes,
        "budget": spec.budget,
        "rotated_at": record.spec.rotated_at.map(rfc3339),
        "previous_prefix": record.spec.previous.as_ref().map(|p| p.prefix.clone()),
        "previous_valid_until": record.spec.previous.as_ref().map(|p| rfc3339(p.valid_until)),
        "created_at": rfc3339(record.created_at),
        "updated_at": rfc3339(record.updated_at),
    })
}

/// A key's JSON with its plaintext: the only time the plaintext exists outside the client
/// (create and rotate).
fn with_plaintext(mut body: Value, plaintext: String) -> Value {
    if let Value::Object(map) = &mut body {
        map.insert("key".into(), Value::String(plaintext));
        map.insert(
            "warning".into(),
            Value::String("store this key now: it is kept hashed and cannot be shown again".into()),
        );
    }
    body
}

/// Fields the server owns: accepted in a body (so GET → edit → PUT works) but ignored, and
/// `id`/`gateway_id` must match the URL when present.
const READ_ONLY: [&str; 9] = [
    "budget_usage",
    "id",
    "gateway_id",
    "created_at",
    "updated_at",
    "prefix",
    "rotated_at",
    "previous_prefix",
    "previous_valid_until",
];

/// The longest `grace_period` of a rotation.
const MAX_GRACE_SECS: u64 = 90 * 86_400;
/// The grace period of a rotation that names none.
const DEFAULT_GRACE: &str = "24h";
/// Most buckets one usage export may span.
const MAX_EXPORT_BUCKETS: i64 = 10_000;

/// The body of `POST .../keys/{id}/rotate`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateSpec {
    /// How long the replaced secret keeps working: a duration, or `0s` for not at all.
    #[serde(default)]
    grace_period: Option<String>,
}

/// A duration that may be zero (`0`, `0s`, `0ms`...); `Span` refuses zero.
fn span_or_zero(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    if !digits.is_empty()
        && digits.bytes().all(|b| b == b'0')
        && matches!(unit, "" | "ms" | "s" | "m" | "h" | "d")
    {
        return Ok(Duration::ZERO);
    }
    Span::parse(t)
        .map(|s| s.as_duration())
        .map_err(|e| e.to_string())
}

/// An RFC 3339 time from a query parameter, in unix seconds.
fn query_time(req: &Request, name: &str) -> Result<Option<i64>, Fail> {
    let Some(text) = req.query_param(name) else {
        return Ok(None);
    };
    OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
        .map(|t| Some(t.unix_timestamp()))
        .map_err(|_| {
            Fail::new(
                400,
                format!("{name}: {text:?} is not an RFC 3339 time (like 2026-11-24T10:00:00Z)"),
            )
        })
}

fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Parses a request body into a spec: JSON syntax errors keep the parser's position,
/// duplicate keys and too-deep nesting are refused with their path ([`strict_json`]),
/// type errors and unknown fields name the field path.
fn parse_body<T: DeserializeOwned>(req: &Request, ids: &[(&str, Option<Uuid>)]) -> Result<T, Fail> {
    let content_type = req
        .header("content-type")
        .map(|v| String::from_utf8_lossy(v).to_ascii_lowercase())
        .unwrap_or_default();
    let media = content_type.split(';').next().unwrap_or("").trim();
    if media != "application/json" && !media.ends_with("+json") {
        return Err(Fail::new(
            415,
            format!(
                "Content-Type must be application/json (got {:?}); add -H 'Content-Type: application/json'",
                if media.is_empty() { "none" } else { media }
            ),
        ));
    }
    let mut value = strict_json::parse(&req.body).map_err(|e| Fail::new(400, e))?;
    let Value::Object(map) = &mut value else {
        return Err(Fail::new(400, "the request body must be a JSON object"));
    };
    for field in READ_ONLY {
        let Some(given) = map.remove(field) else {
            continue;
        };
        if let Some((_, Some(expected))) = ids.iter().find(|(name, _)| *name == field) {
            let matches = given
                .as_str()
                .and_then(|s| Uuid::parse_str(s).ok())
                .is_some_and(|u| u == *expected);
            if !matches {
                return Err(Fail::new(
                    400,
                    format!("{field}: does not match the URL ({expected}); it cannot be changed"),
                ));
            }
        }
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            Fail::new(400, e.into_inner())
        } else {
            Fail::new(400, format!("{path}: {}", e.into_inner()))
        }
    })
}

struct Page {
    offset: usize,
    limit: usize,
}

fn page(req: &Request) -> Result<Page, Fail> {
    let number = |name: &str, default: usize| -> Result<usize, Fail> {
        match req.query_param(name) {
            None => Ok(default),
            Some(text) => text.trim().parse::<usize>().map_err(|_| {
                Fail::new(
                    400,
                    format!("{name}: {text:?} is not a non-negative integer"),
                )
            }),
        }
    };
    let offset = number("offset", 0)?;
    let limit = number("limit", MAX_PAGE)?;
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Fail::new(400, format!("limit: must be 1 to {MAX_PAGE}")));
    }
    Ok(Page { offset, limit })
}

fn list_json(
    name: &str,
    total: usize,
    page: &Page,
    items: impl Iterator<Item = Value>,
) -> Response {
    let items: Vec<Value> = items.skip(page.offset).take(page.limit).collect();
    Response::json(
        200,
        &json!({ name: items, "count": total, "offset": page.offset, "limit": page.limit }),
    )
}

fn method_not_allowed(allow: &str) -> Reply {
    Err(Fail(
        Response::error(405, format!("method not allowed; allowed: {allow}"))
            .with_header("Allow", allow),
    ))
}

fn parse_id(segment: &str, what: &str) -> Result<Uuid, Fail> {
    Uuid::parse_str(segment).map_err(|_| Fail::new(404, format!("{what} {segment:?} not found")))
}

impl Api {
    pub fn new(
        state: State,
        store: Store<State>,
        snapshot: Arc<Snapshot>,
        broadcaster: Broadcaster,
        token: Option<&str>,
        env: CompileEnv,
        (telemetry, usage): (Arc<Telemetry>, UsageTracker),
    ) -> Api {
        Api {
            usage,
            state,
            store,
            snapshot,
            broadcaster,
            token_hash: token.map(|t| hash_key(t.as_bytes())),
            env,
            started: Instant::now(),
            telemetry,
        }
    }

    /// Answers one request. Never panics on client input.
    pub fn handle(&mut self, req: Request) -> Response {
        let started = Instant::now();
        let response = match self.route(&req) {
            Ok(r) | Err(Fail(r)) => r,
        };
        // Never the body or headers: bodies can carry keys.
        tracing::debug!(
            method = %req.method, path = %req.path, status = response.status,
            micros = started.elapsed().as_micros() as u64, "admin request"
        );
        response
    }

    fn authorized(&self, req: &Request) -> bool {
        let Some(expected) = &self.token_hash else {
            return true;
        };
        let presented = req
            .header("authorization")
            .and_then(|v| {
                v.strip_prefix(b"Bearer ")
                    .or_else(|| v.strip_prefix(b"bearer "))
            })
            .or_else(|| req.header("x-admin-token"));
        match presented {
            Some(token) => hash_key(token.trim_ascii()).0.ct_eq(&expected.0).into(),
            None => false,
        }
    }

    fn route(&mut self, req: &Request) -> Reply {
        let segments: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
        let method = req.method.as_str();
        if segments.as_slice() == ["health"] {
            return match method {
                "GET" | "HEAD" => Ok(Response::json(200, &json!({"status": "ok"}))),
                _ => method_not_allowed("GET, HEAD"),
            };
        }
        if !self.authorized(req) {
            return Err(Fail(
                Response::error(
                    401,
                    "admin token required: send Authorization: Bearer <token>",
                )
                .with_header("WWW-Authenticate", "Bearer realm=\"shardgate-admin\""),
            ));
        }
        match segments.as_slice() {
            ["metrics"] => read_only(method, || Ok(self.metrics())),
            ["api", "v1", "version"] => read_only(method, || {
                Ok(Response::json(
                    200,
                    &json!({
                        "name": "shardgate",
                        "version": env!("CARGO_PKG_VERSION"),
                        "config_version": self.snapshot.version,
                        "workers": self.broadcaster.workers(),
                        "uptime_seconds": self.started.elapsed().as_secs(),
                    }),
                ))
            }),
            ["api", "v1", "plugins"] => read_only(method, || {
                Ok(Response::json(
                    200,
                    &json!({"plugins": CATALOGUE, "count": CATALOGUE.len()}),
                ))
            }),
            ["api", "v1", "certificates"] => match method {
                "GET" | "HEAD" => self.list_certificates(req),
                "POST" => self.create_certificate(req),
                _ => method_not_allowed("GET, HEAD, POST"),
            },
            ["api", "v1", "certificates", id] => {
                let id = parse_id(id, "certificate")?;
                match method {
                    "GET" | "HEAD" => self.get_certificate(id),
                    "PUT" => self.update_certificate(req, id),
                    "DELETE" => self.delete(Mutation::DeleteCertificate { id }),
                    _ => method_not_allowed("GET, HEAD, PUT, DELETE"),
                }
            }
            ["api", "v1", "gateways"] => match method {
                "GET" | "HEAD" => self.list_gateways(req),
                "POST" => self.create_gateway(req),
                _ => method_not_allowed("GET, HEAD, POST"),
            },
            ["api", "v1", "gateways", id] => {
                let id = parse_id(id, "gateway")?;
                match method {
                    "GET" | "HEAD" => self.get_gateway(id),
                    "PUT" => self.update_gateway(req, id),
                    "DELETE" => self.delete(Mutation::DeleteGateway { id }),
                    _ => method_not_allowed("GET, HEAD, PUT, DELETE"),
                }
            }
            ["api", "v1", "gateways", id, "usage"] => {
                let gateway_id = parse_id(id, "gateway")?;
                read_only(method, || self.usage_export(req, gateway_id, None))
            }
            ["api", "v1", "gateways", id, "anomalies"] => {
                let gateway_id = parse_id(id, "gateway")?;
                read_only(method, || self.anomalies(req, gateway_id))
            }
            ["api", "v1", "gateways", id, "keys", key, "usage"] => {
                let gateway_id = parse_id(id, "gateway")?;
                let key_id = parse_id(key, "api key")?;
                read_only(method, || self.usage_export(req, gateway_id, Some(key_id)))
            }
            ["api", "v1", "gateways", id, "keys", key, "rotate"] => {
                let gateway_id = parse_id(id, "gateway")?;
                let key_id = parse_id(key, "api key")?;
                match method {
                    "POST" => self.rotate_key(req, gateway_id, key_id),
                    _ => method_not_allowed("POST"),
                }
            }
            ["api", "v1", "gateways", id, collection] => {
                let gateway_id = parse_id(id, "gateway")?;
                let Some(collection) = Collection::parse(collection) else {
                    return Err(not_found(req));
                };
                match method {
                    "GET" | "HEAD" => self.list_children(req, gateway_id, collection),
                    "POST" => self.create_child(req, gateway_id, collection),
                    _ => method_not_allowed("GET, HEAD, POST"),
                }
            }
            ["api", "v1", "gateways", id, collection, child] => {
                let gateway_id = parse_id(id, "gateway")?;
                let Some(collection) = Collection::parse(collection) else {
                    return Err(not_found(req));
                };
                let id = parse_id(child, collection.kind().as_str())?;
                match method {
                    "GET" | "HEAD" => self.get_child(gateway_id, collection, id),
                    "PUT" => self.update_child(req, gateway_id, collection, id),
                    "DELETE" => self.delete(Mutation::Delete {
                        gateway_id,
                        kind: collection.kind(),
                        id,
                    }),
                    _ => method_not_allowed("GET, HEAD, PUT, DELETE"),
                }
            }
            _ => Err(not_found(req)),
        }
    }

    // -- the write path -----------------------------------------------------------------

    /// Journals, applies, compiles and publishes one mutation. Answers only once every
    /// worker runs the new snapshot.
    fn commit(&mut self, m: Mutation) -> Result<(), Fail> {
        self.state.check(&m)?;
        self.state.check_capacity(&m)?;
        self.store.append(&m).map_err(|e| {
            tracing::error!(error = %e, "journal append failed; the write was not applied");
            Fail::new(500, format!("the write could not be persisted: {e}"))
        })?;
        self.state.apply(&m).map_err(|e| {
            // check() passed, so this is a bug; the journal holds a record apply refuses,
            // which recovery will report.
            tracing::error!(error = %e, "apply refused a checked mutation");
            Fail::new(500, format!("internal error: {e}"))
        })?;
        if let Err(e) = self.store.maybe_checkpoint(&self.state) {
            // The journal still holds every record; a failed checkpoint only delays truncation.
            tracing::error!(error = %e, "checkpoint failed");
        }
        let next = Arc::new(self.snapshot.next(
            self.snapshot.version + 1,
            &self.state,
            m.gateway_id(),
            &self.env,
        ));
        self.snapshot = next.clone();
        self.broadcaster
            .publish(next, PUBLISH_TIMEOUT)
            .map_err(|e| {
                tracing::error!(error = %e, "snapshot publish failed");
                Fail::new(
                    500,
                    format!("the write is persisted but not yet live on every worker: {e}"),
                )
            })
    }

    /// The newest snapshot (for the health checker).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.clone()
    }

    /// Records an active health check's verdict; takes effect at the next compile.
    pub fn set_target_down(&mut self, target_key: u64, down: bool) {
        self.env.set_down(target_key, down);
    }

    /// Recompiles `gateways` (after a health flip) and publishes the result to every worker.
    pub fn republish(&mut self, gateways: impl Iterator<Item = Uuid>) {
        let mut next = None;
        for id in gateways {
            let base = next.as_ref().unwrap_or(&self.snapshot);
            next = Some(Arc::new(base.next(
                base.version + 1,
                &self.state,
                Some(id),
                &self.env,
            )));
        }
        let Some(next) = next else { return };
        self.snapshot = next.clone();
        if let Err(e) = self.broadcaster.publish(next, PUBLISH_TIMEOUT) {
            tracing::error!(error = %e, "publishing a health change failed");
        }
    }

    fn delete(&mut self, m: Mutation) -> Reply {
        self.commit(m)?;
        Ok(Response::empty(204))
    }

    // -- gateways -----------------------------------------------------------------------

    fn gateway_state(&self, id: Uuid) -> Result<&shardgate_core::state::GatewayState, Fail> {
        self.state
            .gateway(id)
            .ok_or_else(|| Fail::new(404, format!("gateway {id} not found")))
    }

    fn list_gateways(&self, req: &Request) -> Reply {
        let page = page(req)?;
        let total = self.state.gateways().len();
        Ok(list_json(
            "gateways",
            total,
            &page,
            self.state.gateways().map(|g| entity_json(&g.gateway, None)),
        ))
    }

    fn get_gateway(&self, id: Uuid) -> Reply {
        let g = self.gateway_state(id)?;
        Ok(Response::json(200, &entity_json(&g.gateway, None)))
    }

    fn create_gateway(&mut self, req: &Request) -> Reply {
        let spec: GatewaySpec = parse_body(req, &[])?;
        spec.validate()?;
        let t = now();
        let record = Record {
            id: Uuid::now_v7(),
            created_at: t,
            updated_at: t,
            spec,
        };
        let body = entity_json(&record, None);
        let location = format!("/api/v1/gateways/{}", record.id);
        self.commit(Mutation::PutGateway(record))?;
        Ok(Response::json(201, &body).with_header("Location", location))
    }

    fn update_gateway(&mut self, req: &Request, id: Uuid) -> Reply {
        let spec: GatewaySpec = parse_body(req, &[("id", Some(id))])?;
        spec.validate()?;
        let created_at = self.gateway_state(id)?.gateway.created_at;
        let record = Record {
            id,
            created_at,
            updated_at: now(),
            spec,
        };
        let body = entity_json(&record, None);
        self.commit(Mutation::PutGateway(record))?;
        Ok(Response::json(200, &body))
    }

    // -- certificates -------------------------------------------------------------------

    fn list_certificates(&self, req: &Request) -> Reply {
        let page = page(req)?;
        Ok(list_json(
            "certificates",
            self.state.certificates().len(),
            &page,
            self.state
                .certificates()
                .map(|r| certificate_json(r, self.state.certificate_info(r.id))),
        ))
    }

    fn get_certificate(&self, id: Uuid) -> Reply {
        let record = self
            .state
            .certificate(id)
            .ok_or_else(|| Fail::new(404, format!("certificate {id} not found")))?;
        Ok(Response::json(
            200,
            &certificate_json(record, self.state.certificate_info(id)),
        ))
    }

    fn create_certificate(&mut self, req: &Request) -> Reply {
        let spec: CertificateSpec = parse_body(req, &[])?;
        let info = spec.validate(OffsetDateTime::now_utc())?;
        let t = now();
        let record = Record {
            id: Uuid::now_v7(),
            created_at: t,
            updated_at: t,
            spec,
        };
        let body = certificate_json(&record, Some(&info));
        let location = format!("/api/v1/certificates/{}", record.id);
        self.commit(Mutation::PutCertificate(record))?;
        Ok(Response::json(201, &body).with_header("Location", location))
    }

    /// Replaces the certificate: new handshakes get the new one at once; connections
    /// already open keep the one they negotiated.
    fn update_certificate(&mut self, req: &Request, id: Uuid) -> Reply {
        let spec: CertificateSpec = parse_body(req, &[("id", Some(id))])?;
        let created_at = self
            .state
            .certificate(id)
            .ok_or_else(|| Fail::new(404, format!("certificate {id} not found")))?
            .created_at;
        let info = spec.validate(OffsetDateTime::now_utc())?;
        let record = Record {
            id,
            created_at,
            updated_at: now(),
            spec,
        };
        let body = certificate_json(&record, Some(&info));
        self.commit(Mutation::PutCertificate(record))?;
        Ok(Response::json(200, &body))
    }

    // -- children -----------------------------------------------------------------------

    fn list_children(&self, req: &Request, gateway_id: Uuid, c: Collection) -> Reply {
        let page = page(req)?;
        let g = self.gateway_state(gateway_id)?;
        let gid = Some(gateway_id);
        Ok(match c {
            Collection::Upstreams => list_json(
                c.name(),
                g.upstreams.len(),
                &page,
                g.upstreams
                    .values()
                    .map(|r| entity_json(&r.redacted(), gid)),
            ),
            Collection::Services => list_json(
                c.name(),
                g.services.len(),
                &page,
                g.services.values().map(|r| entity_json(r, gid)),
            ),
            Collection::Rules => list_json(
                c.name(),
                g.rules.len(),
                &page,
                g.rules.values().map(|r| entity_json(r, gid)),
            ),
            Collection::Keys => match req.query_param("expiring_within") {
                None => list_json(
                    c.name(),
                    g.keys.len(),
                    &page,
                    g.keys
                        .values()
                        .map(|r| self.with_budget_usage(gateway_id, key_json(r, gateway_id))),
                ),
                Some(text) => {
                    let within = span_or_zero(&text)
                        .map_err(|e| Fail::new(400, format!("expiring_within: {e}")))?;
                    let now = OffsetDateTime::now_utc();
                    let until = now + within;
                    let expiring: Vec<&Record<StoredKey>> = g
                        .keys
                        .values()
                        .filter(|r| expiring_between(r, now, until))
                        .collect();
                    list_json(
                        c.name(),
                        expiring.len(),
                        &page,
                        expiring.into_iter().map(|r| key_json(r, gateway_id)),
                    )
                }
            },
        })
    }

    /// Adds `budget_usage` (this period's spending, reservations in flight, when it
    /// resets) to a key with a budget, from the cell the workers charge.
    fn with_budget_usage(&self, gateway_id: Uuid, mut body: Value) -> Value {
        let id = body["id"].as_str().and_then(|t| Uuid::parse_str(t).ok());
        let budget = id.and_then(|id| {
            self.snapshot
                .gateway_by_id(gateway_id)
                .and_then(|g| g.budgets.get(&id).cloned())
        });
        if let Some(b) = budget {
            let (spend, resets) = b.status(OffsetDateTime::now_utc().unix_timestamp());
            let at = |t: i64| {
                OffsetDateTime::from_unix_timestamp(t)
                    .map(rfc3339)
                    .unwrap_or_default()
            };
            body["budget_usage"] = json!({
                "period_start": at(spend.period_start),
                "resets_at": at(resets),
                "tokens": spend.tokens,
                "cost": spend.cost_nanos as f64 / 1e9,
                "reserved_tokens": spend.reserved_tokens,
            });
        }
        body
    }

    fn get_child(&self, gateway_id: Uuid, c: Collection, id: Uuid) -> Reply {
        let g = self.gateway_state(gateway_id)?;
        let gid = Some(gateway_id);
        let found = match c {
            Collection::Upstreams => g
                .upstreams
                .get(&id)
                .map(|r| entity_json(&r.redacted(), gid)),
            Collection::Services => g.services.get(&id).map(|r| entity_json(r, gid)),
            Collection::Rules => g.rules.get(&id).map(|r| entity_json(r, gid)),
            Collection::Keys => g
                .keys
                .get(&id)
                .map(|r| self.with_budget_usage(gateway_id, key_json(r, gateway_id))),
        };
        found.map(|body| Response::json(200, &body)).ok_or_else(|| {
            Fail::new(
                404,
                format!(
                    "{} {id} not found in gateway {gateway_id}",
                    c.kind().as_str()
                ),
            )
        })
    }

    fn create_child(&mut self, req: &Request, gateway_id: Uuid, c: Collection) -> Reply {
        // A missing gateway is a 404 before any body error.
        self.gateway_state(gateway_id)?;
        let ids = [("gateway_id", Some(gateway_id))];
        let t = now();
        let id = Uuid::now_v7();
        let location = format!("/api/v1/gateways/{gateway_id}/{}/{id}", c.name());
        let (entity, body) = match c {
            Collection::Keys => {
                let spec: KeySpec = parse_body(req, &ids)?;
                spec.validate(OffsetDateTime::now_utc())?;
                let new_key = keys::generate().map_err(|e| {
                    Fail::new(500, format!("the system random generator failed: {e}"))
                })?;
                let record = Record {
                    id,
                    created_at: t,
                    updated_at: t,
                    spec: StoredKey {
                        spec,
                        prefix: new_key.prefix,
                        hash: new_key.hash,
                        rotated_at: None,
                        previous: None,
                    },
                };
                let body = with_plaintext(key_json(&record, gateway_id), new_key.plaintext);
                (Child::Key(record), body)
            }
            other => {
                let entity = self.child_from_body(req, other, id, t, t, &ids)?;
                let body = child_json(&entity, gateway_id);
                (entity, body)
            }
        };
        self.commit(Mutation::Put { gateway_id, entity })?;
        Ok(Response::json(201, &body).with_header("Location", location))
    }

    fn update_child(&mut self, req: &Request, gateway_id: Uuid, c: Collection, id: Uuid) -> Reply {
        let g = self.gateway_state(gateway_id)?;
        let missing = || {
            Fail::new(
                404,
                format!(
                    "{} {id} not found in gateway {gateway_id}",
                    c.kind().as_str()
                ),
            )
        };
        let ids = [("gateway_id", Some(gateway_id)), ("id", Some(id))];
        let entity = match c {
            Collection::Keys => {
                let old = g.keys.get(&id).ok_or_else(missing)?;
                let spec: KeySpec = parse_body(req, &ids)?;
                spec.validate(OffsetDateTime::now_utc())?;
                Child::Key(Record {
                    id,
                    created_at: old.created_at,
                    updated_at: now(),
                    spec: StoredKey {
                        spec,
                        prefix: old.spec.prefix.clone(),
                        hash: old.spec.hash,
                        rotated_at: old.spec.rotated_at,
                        previous: old.spec.previous.clone(),
                    },
                })
            }
            other => {
                let created_at = match other {
                    Collection::Upstreams => g.upstreams.get(&id).map(|r| r.created_at),
                    Collection::Services => g.services.get(&id).map(|r| r.created_at),
                    Collection::Rules => g.rules.get(&id).map(|r| r.created_at),
                    Collection::Keys => None,
                }
                .ok_or_else(missing)?;
                self.child_from_body(req, other, id, created_at, now(), &ids)?
            }
        };
        let body = child_json(&entity, gateway_id);
        self.commit(Mutation::Put { gateway_id, entity })?;
        Ok(Response::json(200, &body))
    }

    fn child_from_body(
        &self,
        req: &Request,
        c: Collection,
        id: Uuid,
        created_at: OffsetDateTime,
        updated_at: OffsetDateTime,
        ids: &[(&str, Option<Uuid>)],
    ) -> Result<Child, Fail> {
        Ok(match c {
            Collection::Upstreams => {
                let mut spec: UpstreamSpec = parse_body(req, ids)?;
                // A key sent back as GET showed it: the stored one (ids are unique across
                // gateways, and a create's is new).
                let stored = self.state.gateways().find_map(|g| g.upstreams.get(&id));
                spec.restore_redacted_secrets(stored.map(|r| &r.spec));
                spec.validate()?;
                Child::Upstream(Record {
                    id,
                    created_at,
                    updated_at,
                    spec,
                })
            }
            Collection::Services => {
                let spec: ServiceSpec = parse_body(req, ids)?;
                spec.validate()?;
                Child::Service(Record {
                    id,
                    created_at,
                    updated_at,
                    spec,
                })
            }
            Collection::Rules => {
                let spec: RuleSpec = parse_body(req, ids)?;
                spec.validate()?;
                Child::Rule(Record {
                    id,
                    created_at,
                    updated_at,
                    spec,
                })
            }
            Collection::Keys => {
                return Err(Fail::new(
                    500,
                    "internal error: keys are built by their own path",
                ));
            }
        })
    }

    // -- keys: rotation, usage, anomalies ------------------------------------------------

    /// `POST .../keys/{id}/rotate`: a new secret for the same key (id, scopes and usage
    /// stay); the old one works for `grace_period` more (default 24h). A rotation during a
    /// grace period ends that grace at once: only the secret it replaces stays valid.
    fn rotate_key(&mut self, req: &Request, gateway_id: Uuid, id: Uuid) -> Reply {
        let g = self.gateway_state(gateway_id)?;
        let old = g
            .keys
            .get(&id)
            .ok_or_else(|| {
                Fail::new(
                    404,
                    format!("api key {id} not found in gateway {gateway_id}"),
                )
            })?
            .clone();
        let spec: RotateSpec = if req.body.iter().all(u8::is_ascii_whitespace) {
            RotateSpec::default()
        } else {
            parse_body(req, &[])?
        };
        let text = spec.grace_period.as_deref().unwrap_or(DEFAULT_GRACE);
        let grace = span_or_zero(text).map_err(|e| Fail::new(400, format!("grace_period: {e}")))?;
        if grace.as_secs() > MAX_GRACE_SECS {
            return Err(Fail::new(400, "grace_period: must be at most 90d"));
        }
        let new_key = keys::generate()
            .map_err(|e| Fail::new(500, format!("the system random generator failed: {e}")))?;
        let t = now();
        let previous = (!grace.is_zero()).then(|| PreviousSecret {
            prefix: old.spec.prefix.clone(),
            hash: old.spec.hash,
            valid_until: t + grace,
        });
        let record = Record {
            id,
            created_at: old.created_at,
            updated_at: t,
            spec: StoredKey {
                spec: old.spec.spec.clone(),
                prefix: new_key.prefix,
                hash: new_key.hash,
                rotated_at: Some(t),
                previous,
            },
        };
        let body = with_plaintext(key_json(&record, gateway_id), new_key.plaintext);
        self.commit(Mutation::Put {
            gateway_id,
            entity: Child::Key(record),
        })?;
        Ok(Response::json(200, &body))
    }

    /// `GET .../usage` (a gateway's, per key) and `GET .../keys/{id}/usage` (one key's).
    fn usage_export(&self, req: &Request, gateway_id: Uuid, key: Option<Uuid>) -> Reply {
        let g = self.gateway_state(gateway_id)?;
        if let Some(key) = key {
            // A deleted key's history stays exportable until it ages out.
            let known = g.keys.contains_key(&key)
                || self
                    .usage
                    .book
                    .days
                    .values()
                    .any(|b| b.0.keys().any(|k| k.gateway == gateway_id && k.key == key));
            if !known {
                return Err(Fail::new(
                    404,
                    format!("api key {key} not found in gateway {gateway_id}"),
                ));
            }
        }
        let granularity = match req.query_param("granularity") {
            None => usage::Granularity::Hour,
            Some(text) => usage::Granularity::parse(text.trim()).ok_or_else(|| {
                Fail::new(
                    400,
                    format!("granularity: {text:?} is not one of minute, hour, day"),
                )
            })?,
        };
        let now = unix_now();
        let to = query_time(req, "to")?.unwrap_or(now + 1);
        let default_span = match granularity {
            usage::Granularity::Day => 30 * 86_400,
            _ => 86_400,
        };
        let from = query_time(req, "from")?.unwrap_or(to - default_span);
        if from >= to {
            return Err(Fail::new(400, "from: must be before to"));
        }
        if (to - from) / granularity.secs() > MAX_EXPORT_BUCKETS {
            return Err(Fail::new(
                400,
                format!(
                    "from, to: the range spans more than {MAX_EXPORT_BUCKETS} {} buckets; narrow it or use a coarser granularity",
                    granularity.as_str()
                ),
            ));
        }
        let format = req.query_param("format");
        let csv = match format.as_deref() {
            Some("csv") => true,
            Some("json") => false,
            Some(other) => {
                return Err(Fail::new(
                    400,
                    format!("format: {other:?} is not one of json, csv"),
                ));
            }
            None => req.header("accept").is_some_and(|a| {
                String::from_utf8_lossy(a)
                    .to_ascii_lowercase()
                    .contains("text/csv")
            }),
        };
        let q = usage::Query {
            gateway: gateway_id,
            key,
            granularity,
            from,
            to,
        };
        let dimensions = Dimension::ALL.map(Dimension::as_str);
        let rows = usage::select(&self.usage.book, &q);
        if csv {
            return Ok(Response::bytes(
                200,
                "text/csv; charset=utf-8",
                usage::csv(&rows, &dimensions).into_bytes(),
            ));
        }
        let mut body = usage::json(&rows, &q, &dimensions);
        body["retained_from"] = json!(usage::rfc3339(usage::retained_from(
            granularity,
            now,
            self.usage.day_retention()
        )));
        Ok(Response::json(200, &body))
    }

    /// `GET .../anomalies`: the gateway's findings, newest first (`?kind=` filters).
    fn anomalies(&self, req: &Request, gateway_id: Uuid) -> Reply {
        self.gateway_state(gateway_id)?;
        let page = page(req)?;
        let kind = match req.query_param("kind") {
            None => None,
            Some(text) => Some(
                usage::AnomalyKind::ALL
                    .into_iter()
                    .find(|k| k.as_str() == text.trim())
                    .ok_or_else(|| {
                        Fail::new(
                            400,
                            format!(
                                "kind: {text:?} is not one of request_spike, unauthorized_burst, many_addresses"
                            ),
                        )
                    })?,
            ),
        };
        let found: Vec<&usage::Finding> = self
            .usage
            .book
            .findings
            .iter()
            .rev()
            .filter(|f| f.gateway == gateway_id && kind.is_none_or(|k| f.kind == k))
            .collect();
        Ok(list_json(
            "anomalies",
            found.len(),
            &page,
            found.into_iter().map(finding_json),
        ))
    }

    /// Takes the workers' usage into the book (once a second, and at shutdown), and logs
    /// what the detector finds.
    pub fn flush_usage(&mut self) {
        let state = &self.state;
        let settings = |gateway: Uuid| {
            state
                .gateway(gateway)
                .map(|g| g.gateway.spec.anomaly_detection.clone())
                .filter(|s| s.enabled)
        };
        let findings = self.usage.flush(&self.telemetry, unix_now(), &settings);
        for f in findings {
            let subdomain = state
                .gateway(f.gateway)
                .map(|g| g.gateway.spec.subdomain.as_str())
                .unwrap_or("");
            tracing::warn!(
                gateway = %f.gateway,
                subdomain,
                kind = f.kind.as_str(),
                key_id = ?f.key_id,
                source = ?f.source,
                observed = f.observed,
                expected = f.expected,
                threshold = f.threshold,
                "usage anomaly"
            );
        }
    }

    fn metrics(&self) -> Response {
        use std::fmt::Write as _;
        let stats = self.store.stats();
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        gauge(
            "shardgate_config_version",
            "Version of the newest configuration snapshot.",
            self.snapshot.version,
        );
        gauge(
            "shardgate_gateways",
            "Configured gateways.",
            self.state.gateways().len() as u64,
        );
        gauge(
            "shardgate_store_journal_bytes",
            "Size of the journal file.",
            stats.journal_bytes,
        );
        gauge(
            "shardgate_store_checkpoint_generation",
            "Generation of the newest checkpoint.",
            stats.generation,
        );
        gauge(
            "shardgate_uptime_seconds",
            "Seconds since the admin API started.",
            self.started.elapsed().as_secs(),
        );
        let _ = writeln!(
            out,
            "# HELP shardgate_certificate_expiry_timestamp_seconds When each certificate expires (not_after, Unix seconds).\n# TYPE shardgate_certificate_expiry_timestamp_seconds gauge"
        );
        for record in self.state.certificates() {
            if let Some(info) = self.state.certificate_info(record.id) {
                let _ = writeln!(
                    out,
                    "shardgate_certificate_expiry_timestamp_seconds{{name=\"{}\"}} {}",
                    label(&record.spec.name),
                    info.not_after.unix_timestamp()
                );
            }
        }
        if let Some(default) = self.state.fallback_certificate() {
            let _ = writeln!(
                out,
                "shardgate_certificate_expiry_timestamp_seconds{{name=\"{DEFAULT_CERTIFICATE_LABEL}\"}} {}",
                default.info.not_after.unix_timestamp()
            );
        }
        let _ = writeln!(
            out,
            "# HELP shardgate_worker_config_version Configuration version each worker runs.\n# TYPE shardgate_worker_config_version gauge"
        );
        for (i, v) in self.broadcaster.applied_versions().iter().enumerate() {
            let _ = writeln!(out, "shardgate_worker_config_version{{worker=\"{i}\"}} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP shardgate_config_apply_seconds How long the newest configuration change took from publish to applied by every worker.\n# TYPE shardgate_config_apply_seconds gauge\nshardgate_config_apply_seconds {}",
            self.broadcaster
                .last_apply()
                .map_or(0.0, |d| d.as_secs_f64())
        );
        let now = OffsetDateTime::now_utc();
        let _ = writeln!(
            out,
            "# HELP shardgate_api_keys_expiring Active API keys that expire within their gateway's key_expiry_warning.\n# TYPE shardgate_api_keys_expiring gauge"
        );
        for g in self.state.gateways() {
            let until = now + g.gateway.spec.key_expiry_warning.as_duration();
            let n = g
                .keys
                .values()
                .filter(|r| expiring_between(r, now, until))
                .count();
            let _ = writeln!(
                out,
                "shardgate_api_keys_expiring{{gateway=\"{}\"}} {n}",
                label(&g.gateway.spec.subdomain)
            );
        }
        let _ = writeln!(
            out,
            "# HELP shardgate_anomalies_total Usage anomalies found, by gateway and kind.\n# TYPE shardgate_anomalies_total counter"
        );
        for (gateway, totals) in &self.usage.book.finding_totals {
            let name = self
                .state
                .gateway(*gateway)
                .map_or_else(|| gateway.to_string(), |g| g.gateway.spec.subdomain.clone());
            for (kind, n) in usage::AnomalyKind::ALL.iter().zip(totals) {
                let _ = writeln!(
                    out,
                    "shardgate_anomalies_total{{gateway=\"{}\",kind=\"{}\"}} {n}",
                    label(&name),
                    kind.as_str()
                );
            }
        }
        let dimensions = Dimension::ALL.map(Dimension::as_str);
        metrics::render(&mut out, &self.telemetry, &self.snapshot, &dimensions);
        Response::bytes(200, "text/plain; version=0.0.4", out.into_bytes())
    }
}

/// An active key whose expiry falls in `(now, until]`.
fn expiring_between(r: &Record<StoredKey>, now: OffsetDateTime, until: OffsetDateTime) -> bool {
    r.spec.spec.active
        && r.spec
            .spec
            .expires_at
            .is_some_and(|at| at > now && at <= until)
}

fn finding_json(f: &usage::Finding) -> Value {
    json!({
        "id": f.id,
        "gateway_id": f.gateway,
        "kind": f.kind.as_str(),
        "key_id": f.key_id,
        "source": f.source.map(|ip| ip.to_string()),
        "window_start": usage::rfc3339(f.window_start),
        "window_end": usage::rfc3339(f.window_end),
        "observed": f.observed,
        "expected": f.expected,
        "threshold": f.threshold,
        "detected_at": usage::rfc3339(f.detected_at),
    })
}

fn child_json(entity: &Child, gateway_id: Uuid) -> Value {
    let gid = Some(gateway_id);
    match entity {
        Child::Upstream(r) => entity_json(&r.redacted(), gid),
        Child::Service(r) => entity_json(r, gid),
        Child::Rule(r) => entity_json(r, gid),
        Child::Key(r) => key_json(r, gateway_id),
    }
}

/// A label value in the Prometheus text format (see [`metrics::escape_into`]).
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    metrics::escape_into(value, &mut out);
    out
}

/// The metrics label of the development certificate, which is not an API entity; no
/// uploaded certificate's name starts with `<` (`CertificateSpec::validate`).
const DEFAULT_CERTIFICATE_LABEL: &str = "<development>";

fn read_only(method: &str, answer: impl FnOnce() -> Reply) -> Reply {
    match method {
        "GET" | "HEAD" => answer(),
        _ => method_not_allowed("GET, HEAD"),
    }
}

fn not_found(req: &Request) -> Fail {
    Fail::new(404, format!("no route for {} {}", req.method, req.path))
}
