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

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use shardgate_core::ai::api::{self, Api, Usage};
use shardgate_core::ai::event::{EventView, with_text};
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
    /// An event's data with masked text, reused from event to event.
    scratch: String,
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

    /// Writes an event of the client's own API, read by [`EventView`] instead of as a
    /// document: the provider's bytes pass through as they are, or with just the text's
    /// JSON string replaced when the masks changed it. Exactly what [`emit`](Self::emit)
    /// does with the parsed document, in fewer steps.
    fn emit_view(&mut self, event: Option<&str>, data: &str, view: EventView<'_>) {
        if self.ingress == Api::OpenAi && view.usage_only && !self.client_usage {
            return;
        }
        if self.masks.is_empty() {
            write_event(&mut self.buf, event, data);
            return;
        }
        if view.ends_text {
            // Once per block: the held text goes into (OpenAI) or before (Anthropic) this
            // event, which the document path builds.
            match serde_json::from_str::<Value>(data) {
                Ok(doc) => self.emit(event, doc),
                Err(_) => write_event(&mut self.buf, event, data),
            }
            return;
        }
        let Some(delta) = view.text else {
            write_event(&mut self.buf, event, data);
            return;
        };
        let mut text = delta.text;
        for m in &mut self.masks {
            text = Cow::Owned(m.push(&text));
        }
        if let Some(i) = view.index {
            self.text_block = i;
        }
        with_text(&mut self.scratch, data, &delta.span, &text);
        write_event(&mut self.buf, event, &self.scratch);
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
                    // The event's own (released) text comes first: the held text follows it.
                    delta["content"] = Value::from(before + &tail);
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
        scratch: String::new(),
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
    let mut spare = Vec::with_capacity(4096);
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
            let name = event.event.as_deref();
            // An event in the client's own API (no translation) is read without building a
            // document, unless it is the provider's error event (told in our words below).
            if matches!(translator, Translator::None)
                && !(relay.provider_api == Api::Anthropic && name == Some("error"))
                && let Some(view) = EventView::parse(relay.provider_api, &event.data)
            {
                if let Some(u) = view.usage {
                    metered.usage.absorb(u);
                    saw_usage = true;
                }
                if let Some(t) = &view.text {
                    metered.streamed_text += t.text.len();
                }
                if relay.provider_api == Api::Anthropic && name == Some("message_stop") {
                    ended = true;
                }
                out.emit_view(name, &event.data, view);
                continue;
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
            // One buffer for every write of the stream: the write gives it back.
            let mut chunk = std::mem::take(&mut spare);
            chunk.clear();
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
            if !chunk.is_empty() {
                let (res, back) = client.write_returning(chunk).await;
                if res.is_err() {
                    return StreamEnd::ClientGone(metered);
                }
                spare = back;
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use shardgate_core::ai::pii::PiiSettings;

    fn out(ingress: Api, window: usize) -> Out {
        let settings = PiiSettings::parse(&json!({"stream_window": window})).expect("settings");
        let masker = Arc::new(PiiMasker::new(&settings).expect("masker"));
        Out {
            ingress,
            buf: Vec::new(),
            masks: vec![StreamMasker::new(masker)],
            text_block: 0,
            client_usage: false,
            scratch: String::new(),
        }
    }

    /// What a client reads: each event (name, parsed data) and the text of its deltas.
    fn read(api: Api, buf: &[u8]) -> (Vec<(Option<String>, Value)>, String) {
        let mut parser = SseParser::new(MAX_EVENT_BYTES);
        parser.push(buf).expect("valid SSE");
        let (mut events, mut text) = (Vec::new(), String::new());
        while let Some(e) = parser.next_event() {
            let data: Value = serde_json::from_str(&e.data).expect("JSON");
            if let Some(t) = api::text_delta(api, &data) {
                text.push_str(t);
            }
            events.push((e.event, data));
        }
        (events, text)
    }

    /// The same events through the document path and through the view: the client reads
    /// the same events and the same masked text, however the window cuts it.
    fn both_paths(api: Api, events: &[(Option<&str>, String)], want: &str) {
        for window in [16, 256] {
            let (mut doc, mut fast) = (out(api, window), out(api, window));
            for (name, data) in events {
                doc.emit(*name, serde_json::from_str(data).expect("JSON"));
                let view = EventView::parse(api, data).expect("the fast path reads it");
                fast.emit_view(*name, data, view);
            }
            doc.flush_masks(None);
            fast.flush_masks(None);
            let (doc_events, doc_text) = read(api, &doc.buf);
            let (fast_events, fast_text) = read(api, &fast.buf);
            assert_eq!(doc_text, want, "window {window}");
            assert_eq!(fast_text, want, "window {window}");
            assert_eq!(doc_events, fast_events, "window {window}");
        }
    }

    #[test]
    fn openai_chunks_relay_the_same_through_the_view_and_the_document() {
        let words = [
            "Reach me at bob",
            "@example",
            ".com or 4111 1111",
            " 1111 1111 now",
        ];
        let mut events: Vec<(Option<&str>, String)> = words
            .iter()
            .map(|w| {
                let chunk = json!({"id": "c", "object": "chat.completion.chunk", "created": 1,
                    "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": null}]});
                (None, chunk.to_string())
            })
            .collect();
        // The last text arrives with the finish reason: what the masks released from it
        // comes before what they still held.
        events.push((
            None,
            r#"{"id":"c","choices":[{"index":0,"delta":{"content":" and then \"bye\" to you all."},"finish_reason":"stop"}]}"#
                .into(),
        ));
        events.push((
            None,
            r#"{"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":9}}"#.into(),
        ));
        both_paths(
            Api::OpenAi,
            &events,
            "Reach me at [EMAIL] or [CREDIT_CARD] now and then \"bye\" to you all.",
        );
        // The usage chunk the client did not ask for is hidden on both paths.
        let mut fast = out(Api::OpenAi, 16);
        let (name, data) = &events[5];
        fast.emit_view(
            *name,
            data,
            EventView::parse(Api::OpenAi, data).expect("read"),
        );
        assert!(fast.buf.is_empty());
    }

    #[test]
    fn anthropic_events_relay_the_same_through_the_view_and_the_document() {
        let mut events = vec![
            (
                Some("message_start"),
                r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":5}}}"#
                    .to_string(),
            ),
            (
                Some("content_block_start"),
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#
                    .into(),
            ),
        ];
        for w in [
            "mail alice",
            "@example.org",
            " or call +44 20 7946",
            " 0958 today",
        ] {
            let e = json!({"type": "content_block_delta", "index": 0,
                           "delta": {"type": "text_delta", "text": w}});
            events.push((Some("content_block_delta"), e.to_string()));
        }
        events.push((
            Some("content_block_stop"),
            r#"{"type":"content_block_stop","index":0}"#.into(),
        ));
        events.push((
            Some("message_delta"),
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":12}}"#
                .into(),
        ));
        events.push((Some("message_stop"), r#"{"type":"message_stop"}"#.into()));
        both_paths(
            Api::Anthropic,
            &events,
            "mail [EMAIL] or call [PHONE] today",
        );
    }
}
