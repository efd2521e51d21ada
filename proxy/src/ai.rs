//! AI services (`type: "ai"`): the request flow after the route and key checks, for the
//! OpenAI (`POST …/chat/completions`, `GET …/models`) and Anthropic (`POST …/messages`)
//! ingress APIs. It reads as the stages a chat request meets:
//!
//! 1. read the whole request body (bounded by the body limit) and parse it;
//! 2. guardrails on the request: `prompt_guard` (400 naming the rule), `pii_masking`
//!    (mask, or 400 naming the entity);
//! 3. the model: the service's aliases, allow-list and default, then each provider
//!    target's own, which decide the candidates in fallback order (upstreams in the
//!    service's order, each one's targets by `priority`);
//! 4. admission: the key's `budget` and every `token_rate_limiter` reserve the request's
//!    upper bound (prompt bytes + max_tokens) — 429 otherwise;
//! 5. attempts: each candidate in order, in its provider's API (translated when it speaks
//!    the other), with the gateway's credentials; a connect failure, TLS failure, timeout,
//!    reset, 429 or 5xx moves on to the next, always before the client has seen a byte;
//! 6. the answer: relayed (non-streaming: translated and masked as a whole; streaming:
//!    event by event, never buffered — see [`crate::ai_stream`]);
//! 7. metering: the provider's usage, or an estimate marked `estimated` when it reported
//!    none or the client left; it settles the reservations and goes into usage and metrics.
//!
//! Errors of this flow and of providers are told in the ingress API's own error shape.

use std::io;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

use serde_json::Value;
use shardgate_core::ai::api::{self, Api, Usage};
use shardgate_core::ai::budget::{Hold, KeyBudget};
use shardgate_core::ai::config::{AiSettings, ModelRefused, Price, Provider};
use shardgate_core::ai::guard::PromptGuard;
use shardgate_core::ai::pii::{PiiAction, PiiMasker};
use shardgate_core::ai::translate;
use shardgate_core::http1::{BodyKind, ChunkedScanner, RequestHead};
use shardgate_core::keys::KeyEntry;
use shardgate_core::metrics::{AiObservation, AiOutcome};
use shardgate_core::model::Stage;
use shardgate_core::plugins::PluginSettings;
use shardgate_core::ratelimit::{LimiterSet, Quota, Rejected, Reservations, Subjects};
use shardgate_core::router::Method;
use shardgate_core::snapshot::{CompiledGateway, CompiledRule, CompiledService, Guardrail};

use crate::ai_call::{self, CallFailure, Dialed, Outgoing};
use crate::ai_stream::{self, Metered, Relay, StreamEnd, response_head};
use crate::exchange::{Client, Outcome, UpstreamRequest};
use crate::plane::{self, WorkerContext};
use crate::plugins::Effects;
use crate::wire;

/// The largest non-streaming provider response read (a long completion is ~100 KiB).
const MAX_RESPONSE_BYTES: usize = 32 << 20;
/// The largest provider error body read for its message.
const MAX_ERROR_BYTES: usize = 64 << 10;

/// Which API endpoint a request to an AI service is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat(Api),
    Models,
    Unsupported,
}

impl Endpoint {
    /// From the forwarded path (query ignored) and the method.
    pub fn of(path: &str, method: Option<Method>) -> Endpoint {
        let path = path.split('?').next().unwrap_or_default();
        let path = path.trim_end_matches('/');
        match method {
            Some(Method::Post) if path.ends_with("/chat/completions") => {
                Endpoint::Chat(Api::OpenAi)
            }
            Some(Method::Post) if path.ends_with("/messages") => Endpoint::Chat(Api::Anthropic),
            Some(Method::Get) if path.ends_with("/models") => Endpoint::Models,
            _ => Endpoint::Unsupported,
        }
    }

    fn api(self) -> Api {
        match self {
            Endpoint::Chat(api) => api,
            _ => Api::OpenAi,
        }
    }
}

/// A response-side PII masker and what it does on requests.
#[derive(Debug, Clone)]
struct Pii {
    masker: Arc<PiiMasker>,
    reject: bool,
    requests: bool,
    responses: bool,
}

/// One `token_rate_limiter`: its counters and the request's per_user identity.
#[derive(Debug)]
struct TokenLimit {
    set: LimiterSet,
    user: Option<Vec<u8>>,
}

/// What the AI flow needs from the request flow's decision: the AI plugins of the gateway
/// and the rule, the key's budget, the subjects.
#[derive(Debug)]
pub struct AiPlan {
    endpoint: Endpoint,
    limits: Vec<TokenLimit>,
    guards: Vec<Arc<PromptGuard>>,
    pii: Vec<Pii>,
    budget: Option<Arc<KeyBudget>>,
    client_ip: IpAddr,
}

/// Collects the AI plugins and the key's budget for a request to an `ai` service.
pub fn plan(
    gateway: &CompiledGateway,
    rule: &CompiledRule,
    key: Option<&KeyEntry>,
    client_ip: IpAddr,
    (head, buf): (&RequestHead, &[u8]),
    path: &str,
) -> Box<AiPlan> {
    let mut plan = AiPlan {
        endpoint: Endpoint::of(path, head.method),
        limits: Vec::new(),
        guards: Vec::new(),
        pii: Vec::new(),
        budget: key.and_then(|k| gateway.budgets.get(&k.id).cloned()),
        client_ip,
    };
    let chains = [
        gateway.plugins.stage(Stage::PreRequest),
        rule.plugins.stage(Stage::PreRequest),
    ];
    for plugin in chains.into_iter().flatten() {
        match (&*plugin.settings, &plugin.guardrail) {
            (PluginSettings::TokenRateLimiter(settings), _) => {
                let Some(set) = &plugin.limiters else {
                    continue;
                };
                let user = match &settings.user_header {
                    Some(name) => head.header(buf, name).map(<[u8]>::to_vec),
                    None => key.map(|k| k.id.as_bytes().to_vec()),
                };
                plan.limits.push(TokenLimit {
                    set: set.clone(),
                    user,
                });
            }
            (_, Some(Guardrail::Prompt(guard))) => plan.guards.push(guard.clone()),
            (PluginSettings::PiiMasking(settings), Some(Guardrail::Pii(masker))) => {
                plan.pii.push(Pii {
                    masker: masker.clone(),
                    reject: settings.action == PiiAction::Reject,
                    requests: settings.applies_to_requests(),
                    responses: settings.applies_to_responses(),
                })
            }
            _ => {}
        }
    }
    Box::new(plan)
}

/// An answer of the gateway's own in the ingress API's shape.
struct AiError {
    status: u16,
    message: String,
    headers: Vec<(&'static str, String)>,
}

impl AiError {
    fn new(status: u16, message: impl Into<String>) -> AiError {
        AiError {
            status,
            message: message.into(),
            headers: Vec::new(),
        }
    }
}

/// Serves one request to an AI service.
pub async fn serve(
    client: &mut Client,
    req: &UpstreamRequest,
    service: &CompiledService,
    ctx: &WorkerContext,
    effects: &Effects,
    body_limit: u64,
    plan: Box<AiPlan>,
) -> io::Result<Outcome> {
    let ingress = plan.endpoint.api();
    let body = match read_body(client, req, body_limit).await {
        Ok(body) => body,
        Err(BodyError::ClientGone) => return Ok(Outcome::Done { keep_alive: false }),
        Err(BodyError::Refused(error)) => {
            client.buf.clear();
            send_error(client, req, ingress, effects, &error, true).await?;
            return Ok(Outcome::Done { keep_alive: false });
        }
    };
    let keep_alive = req.client_keep_alive && !req.http10;
    let mut exchange = Exchange {
        client,
        req,
        service,
        ctx,
        effects,
        plan: &plan,
        ingress,
        obs: AiObservation::default(),
        keep_alive,
    };
    let result = exchange.run(body).await;
    let obs = exchange.obs;
    // A client that left mid-stream is not kept.
    let keep_alive = exchange.keep_alive;
    client.note(|t| t.obs.ai = Some(obs));
    match result {
        Ok(()) => Ok(Outcome::Done { keep_alive }),
        Err(Failed::Answer(error)) => {
            send_error(client, req, ingress, effects, &error, !keep_alive).await?;
            Ok(Outcome::Done { keep_alive })
        }
        Err(Failed::ClientGone) => {
            client.note(crate::observe::Trace::client_left);
            Ok(Outcome::Done { keep_alive: false })
        }
    }
}

/// How the flow ended when it did not answer normally.
enum Failed {
    /// Answer with this error.
    Answer(AiError),
    /// The client went away.
    ClientGone,
}

impl From<AiError> for Failed {
    fn from(e: AiError) -> Failed {
        Failed::Answer(e)
    }
}

/// One candidate: a provider target and the model it is asked for.
struct Candidate<'s> {
    upstream: usize,
    index: usize,
    provider: Provider,
    model: String,
    price: Option<&'s Price>,
}

struct Exchange<'a> {
    client: &'a mut Client,
    req: &'a UpstreamRequest,
    service: &'a CompiledService,
    ctx: &'a WorkerContext,
    effects: &'a Effects,
    plan: &'a AiPlan,
    ingress: Api,
    obs: AiObservation,
    keep_alive: bool,
}

static DEFAULT_SETTINGS: LazyLock<AiSettings> = LazyLock::new(AiSettings::default);

/// The service's `ai` settings, or the defaults.
fn settings_of(service: &CompiledService) -> &AiSettings {
    service.spec.spec.ai.as_ref().unwrap_or(&DEFAULT_SETTINGS)
}

/// Reservations made at admission, settled when the request ends.
struct Admission {
    limits: Vec<Reservations>,
    budget: Option<Hold>,
    quota: Option<Quota>,
}

impl Exchange<'_> {
    fn settings(&self) -> &AiSettings {
        settings_of(self.service)
    }

    async fn run(&mut self, body: Vec<u8>) -> Result<(), Failed> {
        if self.plan.endpoint == Endpoint::Models {
            return self.models().await;
        }
        if self.plan.endpoint == Endpoint::Unsupported {
            return Err(AiError::new(
                404,
                "this AI service serves POST /v1/chat/completions, POST /v1/messages and GET \
                 /v1/models",
            )
            .into());
        }
        let mut request: Value = serde_json::from_slice(&body)
            .map_err(|e| AiError::new(400, format!("request body is not valid JSON: {e}")))?;
        if !request.is_object() {
            return Err(AiError::new(400, "request body must be a JSON object").into());
        }
        self.guard_request(&mut request)?;

        let settings = self.settings();
        let asked = api::requested_model(&request).map(str::to_owned);
        let model = settings
            .models
            .resolve(asked.as_deref())
            .map_err(|why| model_refused(why, asked.as_deref()))?
            .to_owned();
        let service = self.service;
        let candidates = candidates(service, &model)?;

        // Admission: the request's upper bound in tokens (see the module docs of
        // shardgate_core::ratelimit, "Token reservations").
        let stated = api::max_tokens(self.ingress, &request);
        let cap = stated.unwrap_or(settings.default_max_tokens);
        let bounded = !self.plan.limits.is_empty() || self.plan.budget.is_some();
        if stated.is_none() && (bounded || self.ingress == Api::Anthropic) {
            // The provider enforces the cap the reservation assumed.
            let field = match self.ingress {
                Api::OpenAi => "max_completion_tokens",
                Api::Anthropic => "max_tokens",
            };
            request[field] = Value::from(cap);
        }
        let upper = body.len() as u64 + cap;
        let cost_upper = candidates
            .iter()
            .filter_map(|c| c.price)
            .map(|p| p.cost_nanos(body.len() as u64, cap))
            .max()
            .unwrap_or(0);
        let admission = self.admit(upper, cost_upper)?;
        let prompt_estimate = estimate_tokens(
            api::request_texts(self.ingress, &request)
                .iter()
                .map(|(_, t)| t.len())
                .sum(),
        );

        let result = self.attempts(&request, &candidates, &admission).await;
        // Metering: what the provider reported, or the estimate.
        let spent = match &result {
            Ok(end) => end.usage,
            Err(_) => None,
        };
        let (usage, estimated) = match spent {
            Some(Metered {
                usage, exact: true, ..
            }) => (usage, false),
            Some(Metered {
                usage,
                streamed_text,
                ..
            }) => (
                Usage {
                    prompt: usage.prompt.max(prompt_estimate),
                    completion: usage.completion.max(estimate_tokens(streamed_text)),
                },
                true,
            ),
            None => (Usage::default(), false),
        };
        let served = result.as_ref().ok().map(|end| end.candidate);
        let price = served.and_then(|i| candidates.get(i)).and_then(|c| c.price);
        let cost = price.map_or(0, |p| p.cost_nanos(usage.prompt, usage.completion));
        if let Some(c) = served.and_then(|i| candidates.get(i)) {
            self.obs.provider = Some(provider_index(c.provider));
        }
        self.obs.prompt_tokens = usage.prompt;
        self.obs.completion_tokens = usage.completion;
        self.obs.cost_nanos = cost;
        self.obs.estimated = estimated;
        self.settle(admission, usage.total(), cost);
        result.map(|_| ())
    }

    /// `prompt_guard` and `pii_masking` on the request's message texts.
    fn guard_request(&self, request: &mut Value) -> Result<(), AiError> {
        if !self.plan.guards.is_empty() {
            let texts = api::request_texts(self.ingress, request);
            for guard in &self.plan.guards {
                guard
                    .check(texts.iter().map(|(r, t)| (r.as_str(), t.as_str())))
                    .map_err(|verdict| AiError::new(400, verdict.to_string()))?;
            }
        }
        for pii in self.plan.pii.iter().filter(|p| p.requests) {
            if pii.reject {
                for (_, text) in api::request_texts(self.ingress, request) {
                    if let Some(entity) = pii.masker.find(&text) {
                        return Err(AiError::new(
                            400,
                            format!(
                                "request contains personal data ({entity}) and pii_masking rejects it"
                            ),
                        ));
                    }
                }
            } else {
                for (_, text) in api::request_texts_mut(self.ingress, request) {
                    if let Some(masked) = pii.masker.mask(text) {
                        *text = masked;
                    }
                }
            }
        }
        Ok(())
    }

    /// Reserves the request's upper bound on the key's budget and every token limiter.
    fn admit(&mut self, tokens: u64, cost: u64) -> Result<Admission, AiError> {
        let now = plane::unix_now();
        let budget = match &self.plan.budget {
            Some(b) => Some(b.reserve(tokens, cost, now).map_err(|over| {
                let mut e = AiError::new(
                    429,
                    if over.spent {
                        "API key budget exhausted for this period".to_owned()
                    } else {
                        format!(
                            "this request (up to {tokens} tokens) would exceed the API key's \
                             remaining budget for this period"
                        )
                    },
                );
                let secs = (over.resets_at - now).max(1);
                e.headers.push(("Retry-After", secs.to_string()));
                e
            })?),
            None => None,
        };
        let now_ms = plane::now_ms();
        let mut limits = Vec::with_capacity(self.plan.limits.len());
        for limit in &self.plan.limits {
            let subjects = Subjects {
                ip: Some(self.plan.client_ip),
                user: limit.user.as_deref(),
            };
            match limit.set.reserve_all(subjects, tokens, now_ms) {
                Ok(r) => limits.push(r),
                Err(rejected) => {
                    for r in limits {
                        r.settle(0, now_ms);
                    }
                    if let (Some(b), Some(hold)) = (&self.plan.budget, budget) {
                        b.settle(hold, 0, 0, now);
                    }
                    return Err(token_limited(&rejected));
                }
            }
        }
        let quota = limits
            .iter()
            .filter_map(Reservations::tightest)
            .min_by_key(|q| q.remaining);
        Ok(Admission {
            limits,
            budget,
            quota,
        })
    }

    fn settle(&self, admission: Admission, tokens: u64, cost: u64) {
        let now_ms = plane::now_ms();
        for r in admission.limits {
            r.settle(tokens, now_ms);
        }
        if let (Some(b), Some(hold)) = (&self.plan.budget, admission.budget) {
            b.settle(hold, tokens, cost, plane::unix_now());
        }
    }

    /// Tries the candidates in order until one answers (see the module docs, step 5).
    async fn attempts(
        &mut self,
        request: &Value,
        candidates: &[Candidate<'_>],
        admission: &Admission,
    ) -> Result<Served, Failed> {
        let plane = self.ctx.plane();
        let stream = api::is_stream(request);
        let client_usage = request
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let asked_model = api::requested_model(request).unwrap_or_default().to_owned();
        let mut last: Option<AiError> = None;
        let mut tried_any = false;
        for (n, c) in candidates.iter().enumerate() {
            let Some(upstream) = self.service.upstreams.get(c.upstream) else {
                continue;
            };
            if !plane.picker.available(upstream, c.index) {
                continue;
            }
            tried_any = true;
            let body = self.provider_body(request, c, stream)?;
            let target = &upstream.targets[c.index];
            let spec = &upstream.spec.spec.targets[c.index];
            let mut bytes = Vec::with_capacity(body.len() + 512);
            let outgoing = Outgoing {
                provider: c.provider,
                credentials: spec.credentials.as_ref(),
                model: &c.model,
                stream,
                forwarded: &self.req.headers,
                anthropic_version: None,
                request_id: self.req.request_id.as_bytes(),
            };
            ai_call::request_head(&mut bytes, target, &outgoing, body.len());
            bytes.extend_from_slice(&body);
            let provider = provider_index(c.provider);
            self.client.note(|t| t.attempt(upstream.id, c.index));
            let in_flight = plane.picker.started(upstream, c.index);
            let timer = self.client.timer.clone();
            let req = self.req;
            let called = ai_call::call(
                plane,
                Dialed {
                    upstream,
                    index: c.index,
                },
                bytes,
                &timer,
                |d| req.bounded(d),
            )
            .await;
            self.client.note(|t| t.upstream_head());
            let mut answer = match called {
                Ok(answer) => answer,
                Err(failure) => {
                    drop(in_flight);
                    plane.picker.report(upstream, c.index, false);
                    plane.circuit(upstream, c.index, false);
                    self.obs.attempt(provider, outcome_of(failure));
                    last = Some(call_failed(failure));
                    continue;
                }
            };
            let read_timeout = self
                .req
                .bounded(upstream.spec.spec.read_timeout.as_duration());
            if answer.status == 429 || answer.status >= 500 {
                // The next provider serves it: nothing has gone to the client yet.
                let body = answer
                    .read_all(MAX_ERROR_BYTES, read_timeout, &timer)
                    .await
                    .unwrap_or_default();
                drop(in_flight);
                let ok = answer.status == 429;
                plane.picker.report(upstream, c.index, ok);
                plane.circuit(upstream, c.index, ok);
                self.obs.attempt(
                    provider,
                    if answer.status == 429 {
                        AiOutcome::Status429
                    } else {
                        AiOutcome::Status5xx
                    },
                );
                last = Some(provider_failed(
                    answer.status,
                    &body,
                    spec.credentials.as_ref(),
                ));
                continue;
            }
            plane.picker.report(upstream, c.index, true);
            plane.circuit(upstream, c.index, true);
            let translate_to = (c.provider.speaks_anthropic() != (self.ingress == Api::Anthropic))
                .then_some(self.ingress);
            let relay = Relay {
                provider_api: provider_api(c.provider),
                translate_to,
                model: if asked_model.is_empty() {
                    c.model.clone()
                } else {
                    asked_model.clone()
                },
                client_usage,
                credentials: spec.credentials.as_ref(),
            };
            let metered = if stream && answer.status < 300 && answer.event_stream {
                let end = ai_stream::relay(
                    self.client,
                    self.req,
                    &mut answer,
                    &relay,
                    (&self.plan_pii(), self.effects, admission.quota),
                    read_timeout,
                )
                .await;
                drop(in_flight);
                match end {
                    StreamEnd::Complete(m) => {
                        self.obs.attempt(provider, AiOutcome::Ok);
                        answer.finish(plane, upstream);
                        m
                    }
                    StreamEnd::ProviderFailed(m) => {
                        // The client saw the error event and the end of the response; the
                        // provider's connection is dropped.
                        self.obs.attempt(provider, AiOutcome::FailedMidStream);
                        plane.picker.report(upstream, c.index, false);
                        return Ok(Served {
                            candidate: n,
                            usage: Some(m),
                        });
                    }
                    StreamEnd::ClientGone(m) => {
                        self.obs.attempt(provider, AiOutcome::Ok);
                        self.keep_alive = false;
                        self.client.note(crate::observe::Trace::client_left);
                        return Ok(Served {
                            candidate: n,
                            usage: Some(m),
                        });
                    }
                }
            } else {
                let body = answer
                    .read_all(MAX_RESPONSE_BYTES, read_timeout, &timer)
                    .await;
                drop(in_flight);
                let Ok(body) = body else {
                    self.obs.attempt(provider, AiOutcome::Reset);
                    last = Some(AiError::new(502, "the AI provider's response broke off"));
                    continue;
                };
                let status = answer.status;
                answer.finish(plane, upstream);
                self.obs.attempt(provider, AiOutcome::Ok);
                self.relay_whole(status, body, &relay, admission.quota)
                    .await?
            };
            return Ok(Served {
                candidate: n,
                usage: Some(metered),
            });
        }
        Err(last
            .unwrap_or_else(|| {
                if tried_any {
                    AiError::new(502, "no AI provider could serve the request")
                } else {
                    AiError::new(503, "no AI provider of this service is available")
                }
            })
            .into())
    }

    fn plan_pii(&self) -> Vec<Arc<PiiMasker>> {
        self.plan
            .pii
            .iter()
            .filter(|p| p.responses)
            .map(|p| p.masker.clone())
            .collect()
    }

    /// The request in candidate `c`'s API, for its model.
    fn provider_body(
        &self,
        request: &Value,
        c: &Candidate<'_>,
        stream: bool,
    ) -> Result<Vec<u8>, AiError> {
        let translated = match (self.ingress, c.provider.speaks_anthropic()) {
            (Api::OpenAi, true) => translate::openai_to_anthropic_request(
                request,
                &c.model,
                self.settings().default_max_tokens,
            )
            .map_err(|e| AiError::new(400, e.to_string()))?,
            (Api::Anthropic, false) => translate::anthropic_to_openai_request(request, &c.model)
                .map_err(|e| AiError::new(400, e.to_string()))?,
            _ => {
                let mut native = request.clone();
                native["model"] = Value::from(c.model.as_str());
                if stream && !c.provider.speaks_anthropic() {
                    // Exact metering: the provider reports usage in a last chunk, which
                    // the relay hides from a client that did not ask for it.
                    native["stream_options"]["include_usage"] = Value::Bool(true);
                }
                native
            }
        };
        serde_json::to_vec(&translated)
            .map_err(|e| AiError::new(500, format!("cannot encode the provider request: {e}")))
    }

    /// Relays a whole (non-streaming) provider answer.
    async fn relay_whole(
        &mut self,
        status: u16,
        body: Vec<u8>,
        relay: &Relay<'_>,
        quota: Option<Quota>,
    ) -> Result<Metered, Failed> {
        if !(200..300).contains(&status) {
            let error = provider_failed(status, &body, relay.credentials);
            send_error(
                self.client,
                self.req,
                self.ingress,
                self.effects,
                &error,
                !self.keep_alive,
            )
            .await
            .map_err(|_| Failed::ClientGone)?;
            return Ok(Metered::default());
        }
        let mut value: Value = serde_json::from_slice(&body)
            .map_err(|_| AiError::new(502, "the AI provider's answer is not JSON"))?;
        let usage = api::usage_of(relay.provider_api, &value);
        let mut text_len = 0;
        if let Some(target) = relay.translate_to {
            value = match target {
                Api::Anthropic => translate::openai_to_anthropic_response(&value, &relay.model),
                Api::OpenAi => {
                    translate::anthropic_to_openai_response(&value, &relay.model, plane::unix_now())
                }
            }
            .map_err(|e| {
                AiError::new(502, format!("cannot translate the provider's answer: {e}"))
            })?;
        }
        let maskers = self.plan_pii();
        for text in api::response_texts_mut(self.ingress, &mut value) {
            text_len += text.len();
            for masker in &maskers {
                if let Some(masked) = masker.mask(text) {
                    *text = masked;
                }
            }
        }
        let out = serde_json::to_vec(&value)
            .map_err(|e| AiError::new(500, format!("cannot encode the answer: {e}")))?;
        self.answer_json(&out, quota).await?;
        Ok(Metered {
            usage: usage.unwrap_or_default(),
            exact: usage.is_some(),
            streamed_text: text_len,
        })
    }

    /// `GET …/models`: the models this service offers, in OpenAI's list shape.
    async fn models(&mut self) -> Result<(), Failed> {
        let settings = self.settings();
        let mut names: Vec<&str> = settings.models.allow.iter().map(String::as_str).collect();
        names.extend(settings.models.aliases.keys().map(String::as_str));
        for upstream in &self.service.upstreams {
            for t in &upstream.spec.spec.targets {
                if t.provider.is_some() && settings.models.allow.is_empty() {
                    names.extend(t.models.allow.iter().map(String::as_str));
                    names.extend(t.models.aliases.keys().map(String::as_str));
                    names.extend(t.models.default.as_deref());
                }
            }
        }
        names.extend(settings.models.default.as_deref());
        names.sort_unstable();
        names.dedup();
        let data: Vec<Value> = names
            .iter()
            .map(|m| serde_json::json!({"id": m, "object": "model", "created": 0, "owned_by": "shardgate"}))
            .collect();
        let body = serde_json::json!({"object": "list", "data": data}).to_string();
        self.answer_json(body.as_bytes(), None).await
    }

    /// A 200 with a JSON body, and the quota's headers when there is one.
    async fn answer_json(&mut self, body: &[u8], quota: Option<Quota>) -> Result<(), Failed> {
        let mut out = Vec::with_capacity(512 + body.len());
        response_head(
            &mut out,
            200,
            "application/json",
            Some(body.len()),
            !self.keep_alive,
            self.req,
            self.effects,
            quota,
        );
        out.extend_from_slice(body);
        self.client.write(out).await.map_err(|_| Failed::ClientGone)
    }
}

/// The provider targets that may serve `model`, in fallback order.
fn candidates<'s>(
    service: &'s CompiledService,
    model: &str,
) -> Result<Vec<Candidate<'s>>, AiError> {
    let settings = settings_of(service);
    let mut out = Vec::new();
    let mut providers = 0;
    for (u, upstream) in service.upstreams.iter().enumerate() {
        let targets = &upstream.spec.spec.targets;
        let mut order: Vec<usize> = (0..targets.len())
            .filter(|&i| targets[i].provider.is_some())
            .collect();
        order.sort_by_key(|&i| targets[i].priority);
        for i in order {
            let t = &targets[i];
            let Some(provider) = t.provider else { continue };
            providers += 1;
            let Ok(name) = t.models.resolve(Some(model)) else {
                continue;
            };
            out.push(Candidate {
                upstream: u,
                index: i,
                provider,
                model: name.to_owned(),
                price: settings.prices.get(name),
            });
        }
    }
    if providers == 0 {
        return Err(AiError::new(
            502,
            "this AI service's upstreams have no provider targets (set \"provider\" on a target)",
        ));
    }
    if out.is_empty() {
        return Err(AiError::new(
            400,
            format!("no provider of this service serves the model {model:?}"),
        ));
    }
    Ok(out)
}

/// A served request: which candidate, what it spent.
struct Served {
    candidate: usize,
    usage: Option<Metered>,
}

/// Tokens estimated from text bytes: ~4 bytes per token for English in byte-level BPE
/// tokenizers. An estimate only ever stands in where the provider reported nothing, and is
/// marked `estimated` wherever it is counted.
fn estimate_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}

fn provider_api(p: Provider) -> Api {
    if p.speaks_anthropic() {
        Api::Anthropic
    } else {
        Api::OpenAi
    }
}

fn provider_index(p: Provider) -> u8 {
    match p {
        Provider::OpenAi => 0,
        Provider::Anthropic => 1,
        Provider::AzureOpenAi => 2,
        Provider::OpenAiCompatible => 3,
    }
}

fn outcome_of(f: CallFailure) -> AiOutcome {
    match f {
        CallFailure::Connect => AiOutcome::Connect,
        CallFailure::Tls(_) => AiOutcome::Tls,
        CallFailure::Timeout => AiOutcome::Timeout,
        CallFailure::Reset => AiOutcome::Reset,
        CallFailure::Invalid => AiOutcome::InvalidResponse,
    }
}

fn call_failed(f: CallFailure) -> AiError {
    match f {
        CallFailure::Connect => AiError::new(502, "the AI provider could not be reached"),
        CallFailure::Tls(t) => AiError::new(
            502,
            format!("TLS with the AI provider failed: {}", t.message()),
        ),
        CallFailure::Timeout => AiError::new(504, "the AI provider did not answer in time"),
        CallFailure::Reset => AiError::new(
            502,
            "the AI provider closed the connection without answering",
        ),
        CallFailure::Invalid => AiError::new(502, "the AI provider's answer is not HTTP"),
    }
}

/// A provider's error answer as the gateway tells it: the provider's message (with any
/// trace of the gateway's credential removed) and status, except that the provider
/// refusing the gateway's own credential is the gateway's failure (502), not the client's.
fn provider_failed(
    status: u16,
    body: &[u8],
    credentials: Option<&shardgate_core::ai::config::Credentials>,
) -> AiError {
    if status == 401 || status == 403 {
        return AiError::new(
            502,
            format!("the AI provider refused the gateway's credentials (status {status})"),
        );
    }
    let mut message = api::provider_error_message(body)
        .unwrap_or_else(|| format!("the AI provider answered {status}"));
    if let Some(key) = credentials.and_then(|c| c.api_key.as_ref()) {
        let key = key.0.as_str();
        // Providers echo part of a key ("sk-abc…xyz"): scrub any 8-byte piece of it.
        if key.len() >= 8 {
            for i in 0..=key.len() - 8 {
                if let Some(piece) = key.get(i..i + 8)
                    && message.contains(piece)
                {
                    message = "the AI provider refused the request (its message named the \
                               gateway's credential and is withheld)"
                        .to_owned();
                    break;
                }
            }
        }
    }
    let mut e = AiError::new(status, message);
    if status == 429 {
        e.headers.push(("Retry-After", "1".to_owned()));
    }
    e
}

fn model_refused(why: ModelRefused, asked: Option<&str>) -> AiError {
    match why {
        ModelRefused::Missing => AiError::new(
            400,
            "the request names no model and this service has no default",
        ),
        ModelRefused::NotAllowed => AiError::new(
            400,
            format!(
                "the model {:?} is not allowed on this service",
                asked.unwrap_or_default()
            ),
        ),
    }
}

fn token_limited(r: &Rejected) -> AiError {
    let mut e = AiError::new(429, r.to_string());
    e.headers
        .push(("Retry-After", r.retry_after_secs.to_string()));
    e.headers
        .push(("X-RateLimit-Limit-Tokens", r.limit.to_string()));
    e.headers
        .push(("X-RateLimit-Remaining-Tokens", "0".to_owned()));
    e.headers
        .push(("X-RateLimit-Reset-Tokens", r.reset_secs.to_string()));
    e
}

async fn send_error(
    client: &mut Client,
    req: &UpstreamRequest,
    ingress: Api,
    effects: &Effects,
    error: &AiError,
    close: bool,
) -> io::Result<()> {
    let body = api::error_body(ingress, error.status, &error.message).to_string();
    let mut out = Vec::with_capacity(512 + body.len());
    response_head(
        &mut out,
        error.status,
        "application/json",
        Some(body.len()),
        close,
        req,
        effects,
        None,
    );
    // Headers of the error itself (Retry-After, token limits) go before the blank line.
    out.truncate(out.len() - 2);
    for (name, value) in &error.headers {
        wire::push_header(&mut out, name.as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    client.note(|t| {
        t.obs.status = error.status;
        t.reason.clear();
        t.reason.push_str(&error.message);
    });
    client.write(out).await
}

enum BodyError {
    ClientGone,
    Refused(AiError),
}

/// Reads the whole request body (Content-Length or chunked) and takes it, with the head,
/// off the client buffer.
async fn read_body(
    client: &mut Client,
    req: &UpstreamRequest,
    limit: u64,
) -> Result<Vec<u8>, BodyError> {
    let too_large = || {
        BodyError::Refused(AiError::new(
            413,
            format!("request body larger than {limit} bytes"),
        ))
    };
    let start = req.head_len.min(client.buf.len());
    match req.body {
        BodyKind::Length(n) => {
            if n > limit {
                return Err(too_large());
            }
            let n = n as usize;
            while client.buf.len() - start < n {
                let buf = std::mem::take(&mut client.buf);
                let (res, back) = client.read_into_before(buf, req.deadline).await;
                client.buf = back;
                match res {
                    Ok(0) | Err(_) => return Err(BodyError::ClientGone),
                    Ok(_) => {}
                }
            }
            let body = client.buf[start..start + n].to_vec();
            client.consume(start + n);
            Ok(body)
        }
        BodyKind::Chunked => {
            let mut scanner = ChunkedScanner::default();
            let mut body = Vec::new();
            let mut at = start;
            loop {
                let scanned = scanner.decode(&client.buf[at..], &mut body).map_err(|e| {
                    BodyError::Refused(AiError::new(400, format!("bad chunked body: {e}")))
                })?;
                at += scanned.consumed;
                if body.len() as u64 > limit {
                    return Err(too_large());
                }
                if scanned.done {
                    client.consume(at);
                    return Ok(body);
                }
                let buf = std::mem::take(&mut client.buf);
                let (res, back) = client.read_into_before(buf, req.deadline).await;
                client.buf = back;
                match res {
                    Ok(0) | Err(_) => return Err(BodyError::ClientGone),
                    Ok(_) => {}
                }
            }
        }
        _ => {
            client.consume(start);
            Ok(Vec::new())
        }
    }
}
