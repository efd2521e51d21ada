//! The two ingress APIs the AI gateway speaks, OpenAI Chat Completions and Anthropic
//! Messages, as facts read from (and written into) their JSON bodies and stream events.
//!
//! Covers: token usage, error bodies and mid-stream error events in each API's own shape, the
//! texts a guardrail inspects or rewrites (request messages, response bodies, stream deltas),
//! and the request facts routing and limits need (model, max tokens, stream).
//!
//! Never does: I/O, validation of a whole request (the provider does that and its error is
//! re-told with [`provider_error_message`] and [`error_body`]), or translation between the
//! two APIs (that is `ai::translate`). Every reader is total: a body of an unexpected shape
//! yields `None`, `false` or nothing, never a panic.

use serde_json::{Map, Value, json};

/// Which API a body or event is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// OpenAI Chat Completions (`/v1/chat/completions`).
    OpenAi,
    /// Anthropic Messages (`/v1/messages`).
    Anthropic,
}

/// Tokens a request consumed, in the gateway's accounting: `prompt` is every input token,
/// cached or not (Anthropic's cache reads and writes included), `completion` every output one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens, cache reads and cache writes included.
    pub prompt: u64,
    /// Output tokens.
    pub completion: u64,
}

impl Usage {
    /// `prompt + completion`.
    pub fn total(&self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }

    /// Folds in the usage of a later event of the same stream. Both APIs report cumulative
    /// figures (Anthropic's `message_start` the input, its `message_delta` the output and, in
    /// newer versions, the input again; OpenAI's final chunk, or every chunk on some
    /// providers, both), so each figure keeps the larger value: a field an event leaves out
    /// reads 0 and never lowers what an earlier event said.
    pub fn absorb(&mut self, later: Usage) {
        self.prompt = self.prompt.max(later.prompt);
        self.completion = self.completion.max(later.completion);
    }
}

/// The usage a response body or stream event reports, `None` when it carries none.
///
/// OpenAI: `usage.prompt_tokens` and `usage.completion_tokens` (a response, or a chunk with
/// `usage`; a chunk's `"usage": null` is none). Anthropic: `usage` (a response or a
/// `message_delta`) or `message.usage` (a `message_start`), with `input_tokens`,
/// `cache_creation_input_tokens` and `cache_read_input_tokens` summed as the prompt and
/// `output_tokens` as the completion; missing fields count 0 (a `message_delta` often has only
/// `output_tokens`), so combine a stream's events with [`Usage::absorb`].
pub fn usage_of(api: Api, response_or_event: &Value) -> Option<Usage> {
    let count = |usage: &Value, field: &str| usage.get(field).and_then(Value::as_u64);
    match api {
        Api::OpenAi => {
            let usage = response_or_event.get("usage")?;
            Usage::openai(
                count(usage, "prompt_tokens"),
                count(usage, "completion_tokens"),
            )
        }
        Api::Anthropic => {
            let usage = response_or_event
                .get("usage")
                .filter(|u| u.is_object())
                .or_else(|| response_or_event.get("message")?.get("usage"))?;
            Usage::anthropic(
                [
                    count(usage, "input_tokens"),
                    count(usage, "cache_creation_input_tokens"),
                    count(usage, "cache_read_input_tokens"),
                ],
                count(usage, "output_tokens"),
            )
        }
    }
}

impl Usage {
    /// OpenAI's `prompt_tokens` and `completion_tokens`; `None` when both are absent.
    pub(crate) fn openai(prompt: Option<u64>, completion: Option<u64>) -> Option<Usage> {
        if prompt.is_none() && completion.is_none() {
            return None;
        }
        Some(Usage {
            prompt: prompt.unwrap_or(0),
            completion: completion.unwrap_or(0),
        })
    }

    /// Anthropic's `input_tokens`, `cache_creation_input_tokens` and
    /// `cache_read_input_tokens` (summed as the prompt) and `output_tokens`; `None` when all
    /// are absent.
    pub(crate) fn anthropic(input: [Option<u64>; 3], output: Option<u64>) -> Option<Usage> {
        if input.iter().all(Option::is_none) && output.is_none() {
            return None;
        }
        Some(Usage {
            prompt: input
                .iter()
                .flatten()
                .fold(0u64, |sum, n| sum.saturating_add(*n)),
            completion: output.unwrap_or(0),
        })
    }
}

/// The `error.type` (and, for OpenAI, `error.code`) each API uses for an HTTP status.
///
/// Anthropic's are its documented set (400 `invalid_request_error`, also for any other 4xx;
/// 401 `authentication_error`; 402 `billing_error`; 403 `permission_error`; 404
/// `not_found_error`; 413 `request_too_large`; 429 `rate_limit_error`; 500 `api_error`, also
/// for any other 5xx; 504 `timeout_error`; 529 `overloaded_error`). OpenAI documents statuses,
/// not types, so these are the values its API actually sends: `invalid_request_error` for
/// every 4xx but 429 (OpenAI uses it for bad keys and unknown models too), `requests` with
/// code `rate_limit_exceeded` for 429, `server_error` for 5xx.
fn error_kind(api: Api, status: u16) -> (&'static str, Option<&'static str>) {
    match api {
        Api::OpenAi => match status {
            429 => ("requests", Some("rate_limit_exceeded")),
            500.. => ("server_error", None),
            _ => ("invalid_request_error", None),
        },
        Api::Anthropic => (
            match status {
                401 => "authentication_error",
                402 => "billing_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                504 => "timeout_error",
                529 => "overloaded_error",
                500.. => "api_error",
                _ => "invalid_request_error",
            },
            None,
        ),
    }
}

/// An error body in `api`'s shape for an answer with `status`:
/// OpenAI `{"error": {"message", "type", "param": null, "code"}}` and Anthropic
/// `{"type": "error", "error": {"type", "message"}}`. The type per status is in each API's
/// own vocabulary (Anthropic's documented set; for OpenAI what its API sends:
/// `invalid_request_error` for 4xx, `requests` with code `rate_limit_exceeded` for 429,
/// `server_error` for 5xx; `code` is null otherwise).
pub fn error_body(api: Api, status: u16, message: &str) -> Value {
    let (kind, code) = error_kind(api, status);
    match api {
        Api::OpenAi => json!({
            "error": {"message": message, "type": kind, "param": null, "code": code}
        }),
        Api::Anthropic => json!({
            "type": "error",
            "error": {"type": kind, "message": message}
        }),
    }
}

/// The message of a provider's error body, so it can be re-told in the ingress API's shape:
/// `error.message` (both APIs' shapes), `error` when it is a string, or a top-level `message`
/// (what several OpenAI-compatible servers send). `None` for anything else, including an
/// empty message.
pub fn provider_error_message(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let message = match value.get("error") {
        Some(Value::String(message)) => Some(message.as_str()),
        Some(error) => error.get("message").and_then(Value::as_str),
        None => None,
    }
    .or_else(|| value.get("message").and_then(Value::as_str))?;
    (!message.is_empty()).then(|| message.to_owned())
}

/// The event that reports an error after a stream has started (the status line is long
/// gone), as `(event name, data)`: Anthropic's `event: error` with
/// `{"type":"error","error":{"type":"api_error","message":…}}`, and for OpenAI the data-only
/// `{"error": {…}}` chunk its API itself sends mid-stream (type `server_error`).
pub fn stream_error_event(api: Api, message: &str) -> (Option<&'static str>, String) {
    match api {
        Api::OpenAi => (None, error_body(Api::OpenAi, 500, message).to_string()),
        Api::Anthropic => (
            Some("error"),
            error_body(Api::Anthropic, 500, message).to_string(),
        ),
    }
}

/// The text a stream event adds, for rewriting in place (PII masking): an OpenAI chunk's
/// `choices[0].delta.content` when a string; an Anthropic `content_block_delta` whose
/// `delta.type` is `text_delta`, its `delta.text`.
pub fn text_delta_mut(api: Api, event_data: &mut Value) -> Option<&mut String> {
    let text = match api {
        Api::OpenAi => event_data
            .get_mut("choices")?
            .get_mut(0)?
            .get_mut("delta")?
            .get_mut("content")?,
        Api::Anthropic => {
            if event_data.get("type").and_then(Value::as_str) != Some("content_block_delta") {
                return None;
            }
            let delta = event_data.get_mut("delta")?;
            if delta.get("type").and_then(Value::as_str) != Some("text_delta") {
                return None;
            }
            delta.get_mut("text")?
        }
    };
    match text {
        Value::String(text) => Some(text),
        _ => None,
    }
}

/// The text a streamed event carries, read-only ([`text_delta_mut`]'s field).
pub fn text_delta(api: Api, event_data: &Value) -> Option<&str> {
    match api {
        Api::OpenAi => event_data.pointer("/choices/0/delta/content")?.as_str(),
        Api::Anthropic => {
            if event_data.get("type").and_then(Value::as_str) != Some("content_block_delta") {
                return None;
            }
            let delta = event_data.get("delta")?;
            if delta.get("type").and_then(Value::as_str) != Some("text_delta") {
                return None;
            }
            delta.get("text")?.as_str()
        }
    }
}

/// Whether no more text of the current block comes after this event, so text held back for
/// masking must be flushed now: an OpenAI chunk with a choice whose `finish_reason` is set; an
/// Anthropic `content_block_stop`, `message_delta` or `message_stop`.
pub fn ends_text(api: Api, event_data: &Value) -> bool {
    match api {
        Api::OpenAi => event_data
            .get("choices")
            .and_then(Value::as_array)
            .is_some_and(|choices| {
                choices
                    .iter()
                    .any(|choice| choice.get("finish_reason").is_some_and(|r| !r.is_null()))
            }),
        Api::Anthropic => matches!(
            event_data.get("type").and_then(Value::as_str),
            Some("content_block_stop" | "message_delta" | "message_stop")
        ),
    }
}

/// The texts of a non-streamed response, for rewriting in place: OpenAI every
/// `choices[*].message.content` string (and the `text` of any text part, for providers that
/// answer with parts); Anthropic the `text` of every `text` block in `content`.
pub fn response_texts_mut(api: Api, response: &mut Value) -> Vec<&mut String> {
    let mut texts = Vec::new();
    match api {
        Api::OpenAi => {
            let Some(Value::Array(choices)) = response.get_mut("choices") else {
                return texts;
            };
            for choice in choices {
                if let Some(content) = choice
                    .get_mut("message")
                    .and_then(|message| message.get_mut("content"))
                {
                    openai_content_texts_mut(content, &mut |text| texts.push(text));
                }
            }
        }
        Api::Anthropic => {
            if let Some(Value::Array(blocks)) = response.get_mut("content") {
                text_blocks_mut(blocks, "text", &mut |text| texts.push(text));
            }
        }
    }
    texts
}

/// The texts of a request with the role of each, in order, for inspection (prompt guards).
///
/// OpenAI: each message's string content, or the `text` of each `text` part, with the
/// message's role (`developer` reads as `system`). Anthropic: `system` (a string or text
/// blocks) as `system`; each message's string content or text blocks with its role; the
/// content of a `tool_result` block (a string or its text blocks) as `tool`.
pub fn request_texts(api: Api, request: &Value) -> Vec<(String, String)> {
    let mut texts = Vec::new();
    let mut push = |role: &str, text: &str| texts.push((role.to_owned(), text.to_owned()));
    match api {
        Api::OpenAi => {
            for message in array(request.get("messages")) {
                let role = openai_role(message);
                match message.get("content") {
                    Some(Value::String(text)) => push(role, text),
                    Some(Value::Array(parts)) => {
                        for text in parts.iter().filter_map(|p| block_text(p, "text")) {
                            push(role, text);
                        }
                    }
                    _ => {}
                }
            }
        }
        Api::Anthropic => {
            match request.get("system") {
                Some(Value::String(text)) => push("system", text),
                Some(Value::Array(blocks)) => {
                    for text in blocks.iter().filter_map(|b| block_text(b, "text")) {
                        push("system", text);
                    }
                }
                _ => {}
            }
            for message in array(request.get("messages")) {
                let role = message.get("role").and_then(Value::as_str).unwrap_or("");
                match message.get("content") {
                    Some(Value::String(text)) => push(role, text),
                    Some(Value::Array(blocks)) => {
                        for block in blocks {
                            if let Some(text) = block_text(block, "text") {
                                push(role, text);
                            } else if block.get("type").and_then(Value::as_str)
                                == Some("tool_result")
                            {
                                match block.get("content") {
                                    Some(Value::String(text)) => push("tool", text),
                                    Some(Value::Array(inner)) => {
                                        for text in
                                            inner.iter().filter_map(|b| block_text(b, "text"))
                                        {
                                            push("tool", text);
                                        }
                                    }
                                    _ => {}
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    texts
}

/// The same texts as [`request_texts`], in the same order, for rewriting in place (PII
/// masking of prompts).
pub fn request_texts_mut(api: Api, request: &mut Value) -> Vec<(String, &mut String)> {
    let mut texts = Vec::new();
    let Some(request) = request.as_object_mut() else {
        return texts;
    };
    match api {
        Api::OpenAi => {
            let Some(Value::Array(messages)) = request.get_mut("messages") else {
                return texts;
            };
            for message in messages {
                let role = openai_role(message).to_owned();
                if let Some(content) = message.get_mut("content") {
                    openai_content_texts_mut(content, &mut |text| {
                        texts.push((role.clone(), text));
                    });
                }
            }
        }
        Api::Anthropic => {
            // `system` and `messages` are borrowed apart through the map's entries; the
            // order of the result is fixed below, whatever the order of the keys.
            let mut system = Vec::new();
            let mut conversation = Vec::new();
            for (key, value) in request.iter_mut() {
                match (key.as_str(), value) {
                    ("system", Value::String(text)) => system.push(("system".to_owned(), text)),
                    ("system", Value::Array(blocks)) => {
                        text_blocks_mut(blocks, "text", &mut |text| {
                            system.push(("system".to_owned(), text));
                        });
                    }
                    ("messages", Value::Array(messages)) => {
                        for message in messages.iter_mut() {
                            anthropic_message_texts_mut(message, &mut conversation);
                        }
                    }
                    _ => {}
                }
            }
            texts = system;
            texts.append(&mut conversation);
        }
    }
    texts
}

/// The `model` a request names.
pub fn requested_model(request: &Value) -> Option<&str> {
    request.get("model").and_then(Value::as_str)
}

/// The output-token cap a request sets: OpenAI `max_completion_tokens`, else the deprecated
/// `max_tokens`; Anthropic `max_tokens`.
pub fn max_tokens(api: Api, request: &Value) -> Option<u64> {
    let field = |name: &str| request.get(name).and_then(Value::as_u64);
    match api {
        Api::OpenAi => field("max_completion_tokens").or_else(|| field("max_tokens")),
        Api::Anthropic => field("max_tokens"),
    }
}

/// Whether a request asks for a streamed answer (`"stream": true`).
pub fn is_stream(request: &Value) -> bool {
    request.get("stream").and_then(Value::as_bool) == Some(true)
}

/// The elements of an optional JSON array (none when absent or not an array).
fn array(value: Option<&Value>) -> &[Value] {
    value.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// An OpenAI message's role for guardrails: `developer` is the newer name of `system`.
fn openai_role(message: &Value) -> &str {
    match message.get("role").and_then(Value::as_str) {
        Some("developer") => "system",
        Some(role) => role,
        None => "",
    }
}

/// The `text` of a block or part whose `type` is `kind`.
fn block_text<'a>(block: &'a Value, kind: &str) -> Option<&'a str> {
    if block.get("type").and_then(Value::as_str) != Some(kind) {
        return None;
    }
    block.get("text").and_then(Value::as_str)
}

/// The `text` of every block of type `kind`, mutably.
fn text_blocks_mut<'a>(blocks: &'a mut [Value], kind: &str, f: &mut dyn FnMut(&'a mut String)) {
    for block in blocks {
        let Some(block) = block.as_object_mut() else {
            continue;
        };
        if block.get("type").and_then(Value::as_str) != Some(kind) {
            continue;
        }
        if let Some(Value::String(text)) = block.get_mut("text") {
            f(text);
        }
    }
}

/// OpenAI content: the string itself, or the text of each `text` part.
fn openai_content_texts_mut<'a>(content: &'a mut Value, f: &mut dyn FnMut(&'a mut String)) {
    match content {
        Value::String(text) => f(text),
        Value::Array(parts) => text_blocks_mut(parts, "text", f),
        _ => {}
    }
}

fn anthropic_message_texts_mut<'a>(
    message: &'a mut Value,
    out: &mut Vec<(String, &'a mut String)>,
) {
    let Some(message) = message.as_object_mut() else {
        return;
    };
    let role = message
        .get("role")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    match message.get_mut("content") {
        Some(Value::String(text)) => out.push((role, text)),
        Some(Value::Array(blocks)) => {
            for block in blocks {
                let Some(block) = block.as_object_mut() else {
                    continue;
                };
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if let Some(Value::String(text)) = block.get_mut("text") {
                            out.push((role.clone(), text));
                        }
                    }
                    Some("tool_result") => tool_result_texts_mut(block, out),
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

fn tool_result_texts_mut<'a>(
    block: &'a mut Map<String, Value>,
    out: &mut Vec<(String, &'a mut String)>,
) {
    match block.get_mut("content") {
        Some(Value::String(text)) => out.push(("tool".to_owned(), text)),
        Some(Value::Array(inner)) => {
            text_blocks_mut(inner, "text", &mut |text| {
                out.push(("tool".to_owned(), text))
            });
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles_and_texts(texts: &[(String, String)]) -> Vec<(&str, &str)> {
        texts
            .iter()
            .map(|(role, text)| (role.as_str(), text.as_str()))
            .collect()
    }

    // ---- usage ----

    #[test]
    fn openai_usage_comes_from_a_response_or_the_final_chunk() {
        let response = json!({
            "id": "chatcmpl-1", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
                      "prompt_tokens_details": {"cached_tokens": 0}}
        });
        assert_eq!(
            usage_of(Api::OpenAi, &response),
            Some(Usage {
                prompt: 19,
                completion: 10
            })
        );
        let final_chunk = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
                                 "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}});
        assert_eq!(
            usage_of(Api::OpenAi, &final_chunk),
            Some(Usage {
                prompt: 9,
                completion: 12
            })
        );
        // With include_usage every other chunk says "usage": null.
        let chunk = json!({"choices": [{"index": 0, "delta": {"content": "x"}}], "usage": null});
        assert_eq!(usage_of(Api::OpenAi, &chunk), None);
        assert_eq!(usage_of(Api::OpenAi, &json!({})), None);
    }

    #[test]
    fn anthropic_usage_counts_cache_reads_and_writes_as_prompt() {
        let response = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "content": [],
            "usage": {"input_tokens": 10, "cache_creation_input_tokens": 200,
                      "cache_read_input_tokens": 3000, "output_tokens": 42}
        });
        assert_eq!(
            usage_of(Api::Anthropic, &response),
            Some(Usage {
                prompt: 3210,
                completion: 42
            })
        );
    }

    #[test]
    fn anthropic_stream_usage_is_in_message_start_and_message_delta() {
        let start = json!({"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "content": [],
            "usage": {"input_tokens": 25, "cache_read_input_tokens": 5, "output_tokens": 1}}});
        let delta_old = json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": 15}});
        let delta_new = json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"input_tokens": 25, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 5, "output_tokens": 15}});
        let from_start = usage_of(Api::Anthropic, &start).expect("message_start usage");
        assert_eq!(
            from_start,
            Usage {
                prompt: 30,
                completion: 1
            }
        );
        for delta in [delta_old, delta_new] {
            let mut total = from_start;
            total.absorb(usage_of(Api::Anthropic, &delta).expect("message_delta usage"));
            assert_eq!(
                total,
                Usage {
                    prompt: 30,
                    completion: 15
                }
            );
        }
        assert_eq!(
            usage_of(
                Api::Anthropic,
                &json!({"type": "content_block_stop", "index": 0})
            ),
            None
        );
        assert_eq!(usage_of(Api::Anthropic, &json!({"type": "ping"})), None);
    }

    #[test]
    fn usage_absorb_keeps_the_larger_figure_and_total_adds() {
        let mut usage = Usage {
            prompt: 30,
            completion: 1,
        };
        usage.absorb(Usage {
            prompt: 0,
            completion: 15,
        });
        assert_eq!(usage.total(), 45);
    }

    // ---- errors ----

    #[test]
    fn openai_error_bodies_use_openai_types() {
        assert_eq!(
            error_body(Api::OpenAi, 400, "bad"),
            json!({"error": {"message": "bad", "type": "invalid_request_error", "param": null, "code": null}})
        );
        assert_eq!(
            error_body(Api::OpenAi, 429, "slow down"),
            json!({"error": {"message": "slow down", "type": "requests", "param": null,
                             "code": "rate_limit_exceeded"}})
        );
        for (status, kind) in [
            (401, "invalid_request_error"),
            (403, "invalid_request_error"),
            (404, "invalid_request_error"),
            (413, "invalid_request_error"),
            (500, "server_error"),
            (502, "server_error"),
            (529, "server_error"),
        ] {
            assert_eq!(
                error_body(Api::OpenAi, status, "m")["error"]["type"],
                kind,
                "{status}"
            );
        }
    }

    #[test]
    fn anthropic_error_bodies_use_the_documented_types() {
        assert_eq!(
            error_body(Api::Anthropic, 404, "no such model"),
            json!({"type": "error", "error": {"type": "not_found_error", "message": "no such model"}})
        );
        for (status, kind) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (402, "billing_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (405, "invalid_request_error"),
            (413, "request_too_large"),
            (422, "invalid_request_error"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (503, "api_error"),
            (504, "timeout_error"),
            (529, "overloaded_error"),
        ] {
            assert_eq!(
                error_body(Api::Anthropic, status, "m")["error"]["type"],
                kind,
                "{status}"
            );
        }
    }

    #[test]
    fn a_provider_error_message_is_read_from_either_shape() {
        let openai = br#"{"error": {"message": "Incorrect API key provided: sk-...", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}"#;
        let anthropic = br#"{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}, "request_id": "req_1"}"#;
        let plain = br#"{"error": "model not loaded"}"#;
        let top_level =
            br#"{"object": "error", "message": "Rate limit exceeded", "type": "rate_limited"}"#;
        assert_eq!(
            provider_error_message(openai).as_deref(),
            Some("Incorrect API key provided: sk-...")
        );
        assert_eq!(
            provider_error_message(anthropic).as_deref(),
            Some("Overloaded")
        );
        assert_eq!(
            provider_error_message(plain).as_deref(),
            Some("model not loaded")
        );
        assert_eq!(
            provider_error_message(top_level).as_deref(),
            Some("Rate limit exceeded")
        );
        for junk in [
            &b"<html>502 Bad Gateway</html>"[..],
            b"",
            b"{}",
            b"{\"error\": {\"message\": \"\"}}",
            b"{\"error\": {\"code\": 5}}",
            b"[1, 2]",
        ] {
            assert_eq!(provider_error_message(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn a_retold_error_round_trips_through_both_shapes() {
        for api in [Api::OpenAi, Api::Anthropic] {
            let body = error_body(api, 503, "upstream down").to_string();
            assert_eq!(
                provider_error_message(body.as_bytes()).as_deref(),
                Some("upstream down")
            );
        }
    }

    #[test]
    fn stream_error_events_match_what_each_api_sends() {
        let (name, data) = stream_error_event(Api::Anthropic, "boom");
        assert_eq!(name, Some("error"));
        assert_eq!(
            serde_json::from_str::<Value>(&data).expect("json"),
            json!({"type": "error", "error": {"type": "api_error", "message": "boom"}})
        );
        let (name, data) = stream_error_event(Api::OpenAi, "boom");
        assert_eq!(name, None);
        assert_eq!(
            serde_json::from_str::<Value>(&data).expect("json"),
            json!({"error": {"message": "boom", "type": "server_error", "param": null, "code": null}})
        );
    }

    // ---- stream texts ----

    #[test]
    fn an_openai_chunk_text_can_be_rewritten_in_place() {
        let mut chunk = json!({"id": "c", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": "mail bob@example.com"}, "finish_reason": null}]});
        let text = text_delta_mut(Api::OpenAi, &mut chunk).expect("content");
        *text = text.replace("bob@example.com", "[EMAIL]");
        assert_eq!(chunk["choices"][0]["delta"]["content"], "mail [EMAIL]");
        // Role-only, tool-call and usage chunks carry no text.
        for mut other in [
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": null}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}),
        ] {
            assert!(text_delta_mut(Api::OpenAi, &mut other).is_none(), "{other}");
        }
    }

    #[test]
    fn an_anthropic_text_delta_can_be_rewritten_and_others_are_left_alone() {
        let mut event = json!({"type": "content_block_delta", "index": 0,
                               "delta": {"type": "text_delta", "text": "hello"}});
        text_delta_mut(Api::Anthropic, &mut event)
            .expect("text")
            .push('!');
        assert_eq!(event["delta"]["text"], "hello!");
        for mut other in [
            json!({"type": "content_block_delta", "index": 1,
                   "delta": {"type": "input_json_delta", "partial_json": "{\"a\""}}),
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}),
        ] {
            assert!(
                text_delta_mut(Api::Anthropic, &mut other).is_none(),
                "{other}"
            );
        }
    }

    #[test]
    fn text_ends_at_finish_reason_or_block_and_message_end() {
        assert!(ends_text(
            Api::OpenAi,
            &json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        ));
        assert!(!ends_text(
            Api::OpenAi,
            &json!({"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": null}]})
        ));
        assert!(!ends_text(Api::OpenAi, &json!({"choices": []})));
        for kind in ["content_block_stop", "message_delta", "message_stop"] {
            assert!(ends_text(Api::Anthropic, &json!({"type": kind})), "{kind}");
        }
        for kind in ["content_block_delta", "content_block_start", "ping"] {
            assert!(!ends_text(Api::Anthropic, &json!({"type": kind})), "{kind}");
        }
    }

    // ---- response texts ----

    #[test]
    fn response_texts_are_every_message_content_or_text_block() {
        let mut openai = json!({"choices": [
            {"index": 0, "message": {"role": "assistant", "content": "one"}},
            {"index": 1, "message": {"role": "assistant", "content": null,
                                     "tool_calls": [{"id": "c", "type": "function",
                                                     "function": {"name": "f", "arguments": "{}"}}]}},
            {"index": 2, "message": {"role": "assistant", "content": "two"}}
        ]});
        for text in response_texts_mut(Api::OpenAi, &mut openai) {
            text.make_ascii_uppercase();
        }
        assert_eq!(openai["choices"][0]["message"]["content"], "ONE");
        assert_eq!(openai["choices"][2]["message"]["content"], "TWO");

        let mut anthropic = json!({"content": [
            {"type": "thinking", "thinking": "private", "signature": "s"},
            {"type": "text", "text": "a"},
            {"type": "tool_use", "id": "t", "name": "f", "input": {"text": "not prose"}},
            {"type": "text", "text": "b"}
        ]});
        let texts = response_texts_mut(Api::Anthropic, &mut anthropic);
        assert_eq!(texts.len(), 2);
        for text in texts {
            text.push('!');
        }
        assert_eq!(anthropic["content"][1]["text"], "a!");
        assert_eq!(anthropic["content"][3]["text"], "b!");
        assert_eq!(anthropic["content"][2]["input"]["text"], "not prose");
    }

    // ---- request texts ----

    fn openai_request() -> Value {
        json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "system", "content": [{"type": "text", "text": "no secrets"}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "what is in"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    {"type": "text", "text": "this picture?"}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
                {"role": "assistant", "content": "A cat."}
            ]
        })
    }

    fn anthropic_request() -> Value {
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": "what is in this picture?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a cat"},
                    {"type": "tool_result", "tool_use_id": "toolu_2",
                     "content": [{"type": "text", "text": "and a dog"}]},
                    {"type": "text", "text": "so?"}
                ]}
            ]
        })
    }

    #[test]
    fn openai_request_texts_carry_roles_with_developer_as_system() {
        assert_eq!(
            roles_and_texts(&request_texts(Api::OpenAi, &openai_request())),
            vec![
                ("system", "be brief"),
                ("system", "no secrets"),
                ("user", "what is in"),
                ("user", "this picture?"),
                ("tool", "a cat"),
                ("assistant", "A cat."),
            ]
        );
    }

    #[test]
    fn anthropic_request_texts_include_system_and_tool_results() {
        assert_eq!(
            roles_and_texts(&request_texts(Api::Anthropic, &anthropic_request())),
            vec![
                ("system", "be brief"),
                ("user", "what is in this picture?"),
                ("assistant", "Let me look."),
                ("tool", "a cat"),
                ("tool", "and a dog"),
                ("user", "so?"),
            ]
        );
        let string_system = json!({"system": "s", "messages": []});
        assert_eq!(
            roles_and_texts(&request_texts(Api::Anthropic, &string_system)),
            vec![("system", "s")]
        );
    }

    #[test]
    fn mutable_request_texts_match_the_readonly_ones_and_write_through() {
        for (api, mut request) in [
            (Api::OpenAi, openai_request()),
            (Api::Anthropic, anthropic_request()),
        ] {
            let expected = request_texts(api, &request);
            let texts = request_texts_mut(api, &mut request);
            let seen: Vec<(String, String)> = texts
                .iter()
                .map(|(role, text)| (role.clone(), (**text).clone()))
                .collect();
            assert_eq!(seen, expected, "{api:?}");
            for (_, text) in texts {
                text.insert(0, '>');
            }
            assert!(
                request_texts(api, &request)
                    .iter()
                    .all(|(_, text)| text.starts_with('>'))
            );
        }
    }

    #[test]
    fn anthropic_system_comes_first_whatever_the_key_order() {
        let mut request = json!({"messages": [{"role": "user", "content": "u"}], "system": "s"});
        let roles: Vec<String> = request_texts_mut(Api::Anthropic, &mut request)
            .into_iter()
            .map(|(role, _)| role)
            .collect();
        assert_eq!(roles, ["system", "user"]);
        assert_eq!(
            roles_and_texts(&request_texts(Api::Anthropic, &request)),
            vec![("system", "s"), ("user", "u")]
        );
    }

    #[test]
    fn odd_shapes_yield_no_texts() {
        for body in [
            json!(null),
            json!([]),
            json!({"messages": "x"}),
            json!({"messages": [1, null, {"content": 5}]}),
        ] {
            for api in [Api::OpenAi, Api::Anthropic] {
                assert!(request_texts(api, &body).is_empty(), "{body}");
                let mut body = body.clone();
                assert!(request_texts_mut(api, &mut body).is_empty());
                assert!(response_texts_mut(api, &mut body).is_empty());
            }
        }
    }

    // ---- request facts ----

    #[test]
    fn request_facts() {
        let openai = json!({"model": "gpt-4o", "max_tokens": 100, "max_completion_tokens": 50, "stream": true});
        assert_eq!(requested_model(&openai), Some("gpt-4o"));
        assert_eq!(max_tokens(Api::OpenAi, &openai), Some(50));
        assert_eq!(
            max_tokens(Api::OpenAi, &json!({"max_tokens": 100})),
            Some(100)
        );
        assert!(is_stream(&openai));
        let anthropic = json!({"model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": false});
        assert_eq!(max_tokens(Api::Anthropic, &anthropic), Some(1024));
        assert!(!is_stream(&anthropic));
        assert!(!is_stream(&json!({"stream": "true"})));
        assert_eq!(requested_model(&json!({"model": 4})), None);
        assert_eq!(max_tokens(Api::OpenAi, &json!({"max_tokens": -1})), None);
    }
}
