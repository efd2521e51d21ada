//! A streamed AI answer, relayed event by event: the provider's SSE parsed as it arrives,
//! each event metered (usage), translated when the client speaks the other API, its text
//! masked by `pii_masking` (a bounded window carries entities split across events), and
//! what one read of the provider produced written to the client at once — never buffered
//! past that read.
//!
//! How a stream ends decides what the client sees and what is counted:
//! - the provider ends it (`[DONE]`, `message_stop`): the relay finishes the translation,
//!   flushes the masks, and ends the response; usage is the provider's (`exact`) when it
//!   reported one;
//! - the provider breaks off or sends garbage: the client gets an error event in its API's
//!   shape and the end of the response — never a silent, truncated 200 — and the tokens
//!   are estimated;
//! - the client leaves: the relay stops reading and the tokens are estimated.
//!
//! OpenAI clients that did not ask for `stream_options.include_usage` never see the usage
//! chunk the gateway asked the provider for.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use shardgate_core::ai::api::{self, Api, Usage};
use shardgate_core::ai::pii::{PiiMasker, StreamMasker};
use shardgate_core::ai::sse::{SseParser, write_event};
use shardgate_core::ai::translate::{
    AnthropicToOpenAiStream, OpenAiToAnthropicStream, strip_usage_chunk,
};
use shardgate_core::ratelimit::Quota;

use crate::ai_call::Answer;
use crate::exchange::{Client, UpstreamRequest};
use crate::plugins::Effects;
use crate::wire;

/// The largest SSE event accepted from a provider.
const MAX_EVENT_BYTES: usize = 1 << 20;

/// How a relayed stream ended.
#[derive(Debug)]
pub enum StreamEnd {
    Complete(Metered),
    /// The provider broke off; the client was told with an error event.
    ProviderFailed(Metered),
    ClientGone(Metered),
}

enum Translator {
    None,
    ToAnthropic(Box<OpenAiToAnthropicStream>),
    ToOpenAi(Box<AnthropicToOpenAiStream>),
}

/// The client-facing side of one stream: what is written, and how.
struct Out {
    ingress: Api,
    buf: Vec<u8>,
    masks: Vec<StreamMasker>,
    /// The index of the last Anthropic text block seen (for a flushed mask's tail).
    text_block: u64,
    client_usage: bool,
}

impl Out {
    /// Masks a client-facing event's text, and writes it.
    fn emit(&mut self, event: Option<&str>, mut data: Value) {
        if !self.masks.is_empty() {
            if let Some(text) = api::text_delta_mut(self.ingress, &mut data) {
                let mut t = std::mem::take(text);
                for m in &mut self.masks {
                    t = m.push(&t);
                }
                *text = t;
                if let Some(i) = data.get("index").and_then(Value::as_u64) {
                    self.text_block = i;
                }
            }
            if api::ends_text(self.ingress, &data) {
                self.flush_masks(Some(&mut data));
            }
        }
        if self.ingress == Api::OpenAi && strip_usage_chunk(&data) && !self.client_usage {
            return;
        }
        write_event(&mut self.buf, event, &data.to_string());
    }

    /// Emits the text the masks still hold: into `ending` when it is an OpenAI chunk (its
    /// delta gets the text), else as an Anthropic text delta before it.
    fn flush_masks(&mut self, ending: Option<&mut Value>) {
        let mut tail = String::new();
        for i in 0..self.masks.len() {
            let mut t = std::mem::take(&mut tail);
            for m in &mut self.masks[..i] {
                t = m.push(&t);
            }
            let held = self.masks[i].finish();
            tail = t + &held;
        }
        if tail.is_empty() {
            return;
        }
        match (self.ingress, ending) {
            (Api::OpenAi, Some(chunk)) => {
                if let Some(choice) = chunk
                    .get_mut("choices")
                    .and_then(|c| c.get_mut(0))
                    .and_then(Value::as_object_mut)
                {
                    let delta = choice
                        .entry("delta")
                        .or_insert_with(|| Value::Object(Default::default()));
                    let before = delta
                        .get("content")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    delta["content"] = Value::from(tail + &before);
                }
            }
            (Api::OpenAi, None) => {
                let chunk = serde_json::json!({
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"content": tail}, "finish_reason": null}],
                });
                write_event(&mut self.buf, None, &chunk.to_string());
            }
            (Api::Anthropic, _) => {
                let delta = serde_json::json!({
                    "type": "content_block_delta",
                    "index": self.text_block,
                    "delta": {"type": "text_delta", "text": tail},
                });
                write_event(
                    &mut self.buf,
                    Some("content_block_delta"),
                    &delta.to_string(),
                );
            }
        }
    }
}

/// How a provider's answer reaches the client.
#[derive(Debug)]
pub struct Relay<'c> {
    /// The API the provider speaks.
    pub provider_api: Api,
    /// The ingress API when it differs from the provider's.
    pub translate_to: Option<Api>,
    /// The model name the client asked for (what translated answers say).
    pub model: String,
    /// An OpenAI client asked for `stream_options.include_usage`.
    pub client_usage: bool,
    pub credentials: Option<&'c shardgate_core::ai::config::Credentials>,
}

/// What a relayed answer spent, as far as the gateway saw it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Metered {
    pub usage: Usage,
    /// `usage` is the provider's own, for the whole answer.
    pub exact: bool,
    /// Bytes of answer text relayed (the estimate's basis when `exact` is false).
    pub streamed_text: usize,
}

/// Writes a response head: status, content type, framing, the request id, the plugins'
/// headers and the token limiter's.
#[allow(
    clippy::too_many_arguments,
    reason = "one response head, written in one place"
)]
pub(crate) fn response_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    length: Option<usize>,
    close: bool,
    req: &UpstreamRequest,
    effects: &Effects,
    quota: Option<Quota>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    wire::push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(wire::reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    wire::push_header(out, b"Content-Type", content_type.as_bytes());
    match length {
        Some(n) => {
            out.extend_from_slice(b"Content-Length: ");
            wire::push_decimal(out, n as u64);
            out.extend_from_slice(b"\r\n");
        }
        None if !req.http10 => wire::push_header(out, b"Transfer-Encoding", b"chunked"),
        None => {}
    }
    if length.is_none() {
        wire::push_header(out, b"Cache-Control", b"no-cache");
    }
    if close || (length.is_none() && req.http10) {
        wire::push_header(out, b"Connection", b"close");
    }
    if !req.request_id.is_empty() {
        wire::push_header(out, b"X-Request-Id", req.request_id.as_bytes());
    }
    for (name, value) in effects.header_pairs() {
        wire::push_header(out, name.as_bytes(), value.as_bytes());
    }
    if let Some(q) = quota {
        for (name, value) in [
            ("X-RateLimit-Limit-Tokens", q.limit),
            ("X-RateLimit-Remaining-Tokens", q.remaining),
            ("X-RateLimit-Reset-Tokens", q.reset_secs),
        ] {
            wire::push_header(out, name.as_bytes(), value.to_string().as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Relays the streamed answer whose head is in `answer`.
pub async fn relay(
    client: &mut Client,
    req: &UpstreamRequest,
    answer: &mut Answer,
    relay: &Relay<'_>,
    (pii, effects, quota): (&[Arc<PiiMasker>], &Effects, Option<Quota>),
    read_timeout: Duration,
) -> StreamEnd {
    let ingress = relay.translate_to.unwrap_or(relay.provider_api);
    let mut translator = match relay.translate_to {
        Some(Api::Anthropic) => {
            Translator::ToAnthropic(Box::new(OpenAiToAnthropicStream::new(&relay.model)))
        }
        Some(Api::OpenAi) => Translator::ToOpenAi(Box::new(AnthropicToOpenAiStream::new(
            &relay.model,
            crate::plane::unix_now(),
            relay.client_usage,
        ))),
        None => Translator::None,
    };
    let mut out = Out {
        ingress,
        buf: Vec::with_capacity(4096),
        masks: pii.iter().map(|m| StreamMasker::new(m.clone())).collect(),
        text_block: 0,
        client_usage: relay.client_usage,
    };
    let mut metered = Metered::default();
    let mut saw_usage = false;
    let chunked = !req.http10;

    let mut head = Vec::with_capacity(512);
    response_head(
        &mut head,
        200,
        "text/event-stream",
        None,
        false,
        req,
        effects,
        quota,
    );
    if client.write(head).await.is_err() {
        return StreamEnd::ClientGone(metered);
    }

    let mut parser = SseParser::new(MAX_EVENT_BYTES);
    let mut decoded = Vec::with_capacity(8192);
    let timer = client.timer.clone();
    let mut ended = false;
    let mut failed = false;
    // The client was told of the failure (the provider's own error event, or ours).
    let mut error_sent = false;
    let mut translated_openai = Vec::new();
    let mut translated_anthropic = Vec::new();
    while !ended && !failed {
        decoded.clear();
        let body_ended = match answer.read_body(&mut decoded, read_timeout, &timer).await {
            Ok(done) => done,
            Err(_) => {
                failed = true;
                true
            }
        };
        if parser.push(&decoded).is_err() {
            failed = true;
        }
        while let Some(event) = parser.next_event() {
            if relay.provider_api == Api::OpenAi && event.data.trim() == "[DONE]" {
                ended = true;
                break;
            }
            let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
                failed = true;
                break;
            };
            if let Some(u) = api::usage_of(relay.provider_api, &data) {
                metered.usage.absorb(u);
                saw_usage = true;
            }
            if let Some(text) = api::text_delta(relay.provider_api, &data) {
                metered.streamed_text += text.len();
            }
            let name = event.event.as_deref();
            if relay.provider_api == Api::Anthropic && name == Some("message_stop") {
                ended = true;
            }
            if relay.provider_api == Api::Anthropic && name == Some("error") {
                // The provider's own mid-stream error: told in the client's API.
                let message = data
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("the AI provider failed mid-stream")
                    .to_owned();
                let (event, body) = api::stream_error_event(ingress, &message);
                write_event(&mut out.buf, event, &body);
                error_sent = true;
                failed = true;
                break;
            }
            match &mut translator {
                Translator::None => out.emit(name, data),
                Translator::ToAnthropic(t) => {
                    t.push(&data, &mut translated_anthropic);
                    for (n, d) in translated_anthropic.drain(..) {
                        out.emit(Some(n), d);
                    }
                }
                Translator::ToOpenAi(t) => {
                    t.push(name.unwrap_or_default(), &data, &mut translated_openai);
                    for d in translated_openai.drain(..) {
                        out.emit(None, d);
                    }
                }
            }
        }
        if body_ended && !ended {
            // The provider ended the body without ending the stream.
            failed = true;
        }
        if ended {
            match &mut translator {
                Translator::None => {}
                Translator::ToAnthropic(t) => {
                    t.finish(&mut translated_anthropic);
                    for (n, d) in translated_anthropic.drain(..) {
                        out.emit(Some(n), d);
                    }
                }
                Translator::ToOpenAi(t) => {
                    t.finish(&mut translated_openai);
                    for d in translated_openai.drain(..) {
                        out.emit(None, d);
                    }
                }
            }
            out.flush_masks(None);
            if ingress == Api::OpenAi {
                out.buf.extend_from_slice(b"data: [DONE]\n\n");
            }
        } else if failed {
            out.flush_masks(None);
            let (event, body) =
                api::stream_error_event(ingress, "the AI provider's stream broke off");
            if !error_sent {
                write_event(&mut out.buf, event, &body);
                error_sent = true;
            }
        }
        if !out.buf.is_empty() || ended || failed {
            let mut chunk = Vec::with_capacity(out.buf.len() + 16);
            if chunked {
                if !out.buf.is_empty() {
                    wire::push_chunk_size(&mut chunk, out.buf.len());
                    chunk.extend_from_slice(&out.buf);
                    chunk.extend_from_slice(b"\r\n");
                }
                if ended || failed {
                    chunk.extend_from_slice(b"0\r\n\r\n");
                }
            } else {
                chunk.extend_from_slice(&out.buf);
            }
            out.buf.clear();
            if !chunk.is_empty() && client.write(chunk).await.is_err() {
                return StreamEnd::ClientGone(metered);
            }
        }
    }
    metered.exact = saw_usage && ended;
    if failed {
        StreamEnd::ProviderFailed(metered)
    } else {
        StreamEnd::Complete(metered)
    }
}
