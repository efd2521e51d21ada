//! One request, from its parsed head to a decision: the table of contents of the request
//! flow. [`handle`] reads top to bottom as the stages a request meets:
//!
//! 1. [`resolve`] the gateway from Host — 404 unknown, 503 inactive or broken;
//! 2. [`route`]: normalize the path (400 when it cannot be) and look up the rule;
//! 3. CORS preflights are answered before the key check ([`plugins::answer_preflight`]);
//! 4. [`auth`]: the API key, unless the rule is public — 401;
//! 5. the gateway's `pre_request` [`plugins`], then the route decision (404/405/501), the
//!    key's scopes (403) and expiry warning, then the rule's plugins, then `pre_response`
//!    plugins that shape the answer's headers;
//! 6. the body limit (413), and [`pick`](crate::pick) a service — 503;
//! 7. [`rewrite`] the request for the upstream and [`forward`] it; [`respond`] relays the
//!    answer, or sends the [`Refusal`] of whichever step refused. A request to an `ai`
//!    service goes to [`crate::ai`] instead, which speaks the providers' APIs.
//!
//! Ordering is a security property: the gateway is resolved first (no gateway, no keys),
//! the route is looked up before authentication only to learn whether it is `public`, and
//! every answer that reveals which paths exist (404, 405) is given only to callers with a
//! valid key.

use std::io;
use std::sync::Arc;

use monoio::time::Instant;
use shardgate_core::http1::{BodyKind, RequestHead};
use shardgate_core::keys::KeyEntry;
use shardgate_core::model::{ServiceType, Stage};
use shardgate_core::path::NormalPath;
use shardgate_core::plugins::Rejection;
use shardgate_core::ratelimit::Dimension;
use shardgate_core::router::{Lookup, Method, RouteMatch};
use shardgate_core::snapshot::{CompiledGateway, CompiledRule, CompiledService, Snapshot};

use crate::auth::{self, KeyCheck, KeySource};
use crate::exchange::{Client, Outcome, UpstreamRequest};
use crate::forward;
use crate::observe::RequestId;
use crate::plane::WorkerContext;
use crate::plugins::{self, Effects, Facts};
use crate::refusal::Refusal;
use crate::resolve;
use crate::respond;
use crate::rewrite::{self, Forwarding};
use crate::route;

/// What the request flow decided: the upstream request, where it goes, and what plugins
/// promised for the answer.
struct Decision {
    request: UpstreamRequest,
    service: Arc<CompiledService>,
    body_limit: u64,
    /// A request to an `ai` service: its AI plugins and budget.
    ai: Option<Box<crate::ai::AiPlan>>,
}

/// The refusal of the step that refused (what earlier plugins promised for the answer is in
/// the caller's `Effects`, filled in place). Boxed: refusals are the rare path, and the
/// decision stays small on the common one.
type Refused = Box<Refusal>;

/// Handles one request whose head is at the start of `client.buf`.
pub async fn handle(
    client: &mut Client,
    head: &RequestHead,
    ctx: &WorkerContext,
) -> io::Result<Outcome> {
    let snapshot = ctx.snapshot();
    let logged = ctx.plane().access_log.is_some();
    let given = head
        .header(&client.buf, "x-request-id")
        .and_then(RequestId::parse);
    client.note(|t| {
        t.id = given.unwrap_or_else(RequestId::generate);
        if logged {
            t.snapshot = Some(snapshot.clone());
        }
    });
    // Filled in place by `decide` (a few hundred bytes: moved, it was a `memcpy` per request).
    let mut effects = Effects::default();
    match decide(client, head, &snapshot, ctx, &mut effects) {
        Ok(mut d) => {
            let outcome = if let Some(plan) = d.ai.take() {
                let (req, service) = (&d.request, &d.service);
                crate::ai::serve(client, req, service, ctx, &effects, d.body_limit, plan).await
            } else if crate::h2upstream::speaks_h2(&d.service) {
                let (req, service) = (&d.request, &d.service);
                crate::h2upstream::forward(client, req, service, ctx, &effects, d.body_limit).await
            } else {
                forward::forward(client, &d.request, &d.service, ctx, &effects, d.body_limit).await
            };
            let lines = &ctx.plane().lines;
            lines.give(d.request.request_line);
            lines.give(d.request.headers);
            outcome
        }
        Err(no) => {
            if let Refusal::Plugin {
                rejection: Rejection::RateLimited { exceeded, .. },
                ..
            } = &*no
            {
                let dimension = Dimension::ALL.iter().position(|d| *d == exceeded.dimension);
                client.note(|t| t.obs.rate_limited = dimension.map(|d| d as u8));
            }
            respond::reject(client, head, *no, &effects).await
        }
    }
}

/// Steps 1–7 up to the upstream: everything that needs no I/O.
fn decide(
    client: &Client,
    head: &RequestHead,
    snapshot: &Snapshot,
    ctx: &WorkerContext,
    effects: &mut Effects,
) -> Result<Decision, Refused> {
    let plane = ctx.plane();
    let settings = &plane.settings;
    let buf = &client.buf[..];

    let gateway = gateway(snapshot, head, buf, &settings.base_domain).map_err(Box::new)?;
    client.note(|t| t.obs.gateway = gateway.id);
    let normal = path(head, buf, settings.encoded_slashes).map_err(Box::new)?;
    let lookup = head
        .method
        .map(|method| route::lookup(&gateway.router, method, &normal, head, buf));
    let client_ip = plugins::client_ip(client.peer.ip(), head, buf, &settings.trusted_proxies);

    if let Some(answer) = preflight(gateway, head, buf, &normal, client_ip) {
        return Err(Box::new(answer));
    }

    let public = matches!(&lookup, Some(Lookup::Matched(m))
        if gateway.rules.get(m.id as usize).is_some_and(|r| r.spec.public));
    client.note(|t| t.client_ip = Some(client_ip));
    let (key_source, key) = if public {
        (None, None)
    } else {
        key(gateway, head, buf).map_err(|refusal| {
            client.note(|t| t.unauthenticated = true);
            Box::new(refusal)
        })?
    };
    let key_id = key.map(|entry| entry.id.into_bytes());
    client.note(|t| t.key_id = key_id);
    // The gateway's plugins run before routing answers, the rule's after.
    let facts = Facts {
        head,
        buf,
        client_ip,
        key_id,
    };
    if let Err(refusal) = plugins::pre_request(
        plane,
        gateway.plugins.stage(Stage::PreRequest),
        &facts,
        effects,
    ) {
        // The rejecting plugin's answer carries its own headers (rate limits), without
        // what the plugins before it added.
        *effects = Effects::default();
        return Err(Box::new(refusal));
    }
    let (route, rule) = match matched(gateway, lookup) {
        Ok(found) => found,
        Err(refusal) => return Err(Box::new(refusal)),
    };
    client.note(|t| {
        t.obs.rule = rule.id;
        t.rule_index = Some(route.id);
    });
    if let Some(entry) = key {
        if let Some(scope) = &entry.scope
            && !scope.admits(rule.id, rule.spec.service_ids(), head.method)
        {
            return Err(Box::new(Refusal::KeyOutOfScope));
        }
        expiry_warning(gateway, entry, effects);
    }
    if let Err(refusal) = plugins::pre_request(
        plane,
        rule.plugins.stage(Stage::PreRequest),
        &facts,
        effects,
    ) {
        return Err(Box::new(refusal));
    }
    plugins::pre_response(gateway.plugins.stage(Stage::PreResponse), &facts, effects);
    plugins::pre_response(rule.plugins.stage(Stage::PreResponse), &facts, effects);

    let body_limit = effects
        .body_limit
        .map_or(settings.max_body, |l| l.min(settings.max_body));
    if let BodyKind::Length(n) = head.body
        && n > body_limit
    {
        return Err(Box::new(Refusal::BodyTooLarge { limit: body_limit }));
    }
    let Some(service) = plane.picker.service(rule).cloned() else {
        return Err(Box::new(Refusal::NoService));
    };
    let mut request_id = RequestId::default();
    client.note(|t| {
        t.obs.service = service.id;
        request_id = t.id().clone();
    });

    let forward_path = if rule.spec.strip_path {
        normal.forward_after(route.matched_prefix_len)
    } else {
        &normal.forward
    };
    let ai = (service.spec.spec.kind == ServiceType::Ai)
        .then(|| crate::ai::plan(gateway, rule, key, client_ip, (head, buf), forward_path));
    let request = rewrite::prepare(
        head,
        buf,
        Forwarding {
            path: forward_path,
            preserve_host: rule.spec.preserve_host,
            key_source,
            peer: client.peer.ip(),
            https: client.stream.is_tls(),
            hash_header: service
                .upstreams
                .first()
                .and_then(|u| u.spec.spec.hash_header.as_deref()),
            transforms: &effects.request_transforms,
            request_id,
            deadline: service
                .spec
                .spec
                .timeout
                .as_ref()
                .map(|t| Instant::now() + t.as_duration()),
        },
        (plane.lines.take(), plane.lines.take()),
    );
    Ok(Decision {
        request,
        service,
        body_limit,
        ai,
    })
}

/// Step 1: the gateway the Host names, if it may serve.
fn gateway<'s>(
    snapshot: &'s Snapshot,
    head: &RequestHead,
    buf: &[u8],
    base_domain: &str,
) -> Result<&'s Arc<CompiledGateway>, Refusal> {
    let gateway = resolve::gateway(snapshot, head.effective_authority(buf), base_domain)
        .ok_or(Refusal::GatewayNotFound)?;
    if !gateway.active {
        return Err(Refusal::GatewayInactive);
    }
    if gateway.broken.is_some() {
        return Err(Refusal::GatewayBroken);
    }
    Ok(gateway)
}

/// Step 2: the path in normal form (routed and forwarded).
fn path<'b>(
    head: &RequestHead,
    buf: &'b [u8],
    policy: shardgate_core::path::EncodedSlashes,
) -> Result<NormalPath<'b>, Refusal> {
    let raw = std::str::from_utf8(head.path(buf)).map_err(|_| Refusal::TargetNotText)?;
    route::normalize(raw, policy).map_err(Refusal::BadPath)
}

/// Step 3: a CORS preflight carries no credentials, so it is answered before the key check,
/// by the gateway's CORS plugin or that of the rule the actual request would match.
fn preflight(
    gateway: &CompiledGateway,
    head: &RequestHead,
    buf: &[u8],
    normal: &NormalPath<'_>,
    client_ip: std::net::IpAddr,
) -> Option<Refusal> {
    if !plugins::is_preflight(head, buf) {
        return None;
    }
    let requested = head
        .header(buf, "access-control-request-method")
        .and_then(Method::from_bytes);
    let rule_chain = requested
        .and_then(
            |m| match route::lookup(&gateway.router, m, normal, head, buf) {
                Lookup::Matched(found) => gateway.rules.get(found.id as usize),
                _ => None,
            },
        )
        .map_or(&[][..], |rule| rule.plugins.stage(Stage::PreRequest));
    let chains = [gateway.plugins.stage(Stage::PreRequest), rule_chain];
    plugins::answer_preflight(&chains, head, buf, client_ip)
}

/// Step 4: the request's API key; which header carried it, and the key.
fn key<'g>(
    gateway: &'g CompiledGateway,
    head: &RequestHead,
    buf: &[u8],
) -> Result<(Option<KeySource>, Option<&'g KeyEntry>), Refusal> {
    match auth::check(head, buf, &gateway.keys, crate::plane::unix_now()) {
        KeyCheck::Valid { source, entry, .. } => Ok((Some(source), Some(entry))),
        failed => Err(Refusal::Key {
            missing: matches!(failed, KeyCheck::Missing),
            why: failed.failure().unwrap_or("invalid API key"),
        }),
    }
}

/// A key that expires within the gateway's `key_expiry_warning` says so in every answer:
/// `X-API-Key-Expires-In: <seconds>`.
fn expiry_warning(gateway: &CompiledGateway, entry: &KeyEntry, effects: &mut Effects) {
    let Some(at) = entry.key_expires_at else {
        return;
    };
    let left = at - crate::plane::unix_now();
    if left <= gateway.key_expiry_warning {
        effects
            .response_headers
            .push(("X-API-Key-Expires-In", left.max(0).to_string()));
    }
}

/// Step 5: the route decision, told only now that the caller is known.
fn matched<'g>(
    gateway: &'g CompiledGateway,
    lookup: Option<Lookup<'g>>,
) -> Result<(RouteMatch<'g>, &'g CompiledRule), Refusal> {
    let route = match lookup {
        None => return Err(Refusal::MethodNotSupported),
        Some(Lookup::NotFound) => return Err(Refusal::NoRoute),
        Some(Lookup::MethodNotAllowed { allow }) => {
            return Err(Refusal::MethodNotAllowed {
                allow: allow.to_string(),
            });
        }
        Some(Lookup::Matched(m)) => m,
    };
    let rule = gateway
        .rules
        .get(route.id as usize)
        .ok_or(Refusal::NoRoute)?;
    Ok((route, rule))
}
