//! Translation between OpenAI Chat Completions and Anthropic Messages: requests, responses
//! and streams, so a client of either API can be served by a provider of the other.
//!
//! What maps, both ways: system and developer messages ⇄ `system`; string and array content;
//! images (a base64 `data:` URL ⇄ a `base64` source, an `http(s)` URL ⇄ a `url` source); PDF
//! files (`file.file_data` ⇄ a `document` block); assistant `tool_calls` ⇄ `tool_use` blocks
//! (the arguments JSON string ⇄ the input object); `tool` messages ⇄ `tool_result` blocks in
//! a user message; `tools` and `tool_choice` (`auto`/`none`/`required`/a function ⇄
//! `auto`/`none`/`any`/a tool) with `parallel_tool_calls: false` ⇄
//! `disable_parallel_tool_use`; the output cap; `temperature`; `top_p`; `stop` ⇄
//! `stop_sequences`; `user` ⇄ `metadata.user_id`; `stream`; `finish_reason` ⇄ `stop_reason`;
//! and usage (OpenAI's `prompt_tokens` counts cached tokens, Anthropic's `input_tokens` does
//! not: the cached part moves to and from `cache_read_input_tokens`).
//!
//! What is refused (a [`TranslateError`], for the caller to answer with a 400): what the other
//! API cannot express and silently dropping would change the answer: `n` > 1, log
//! probabilities, `response_format` other than text, audio, the legacy `functions`, Anthropic
//! server tools, images inside tool results, unparsable tool arguments.
//!
//! What is dropped: knobs with no counterpart that only tune sampling or bookkeeping
//! (`presence_penalty`, `frequency_penalty`, `seed`, `logit_bias`, `top_k`, `thinking`,
//! `service_tier`, `store`, OpenAI `metadata`, `cache_control` markers, `is_error` on a tool
//! result) and reasoning content in answers (`thinking` blocks).
//!
//! Anthropic has a single `system`, so OpenAI system messages found later in a conversation
//! move to it, in order. Anthropic wants alternating roles, so consecutive messages of one role
//! are merged (tool results and the user text after them become one user message).
//!
//! Never does: I/O, ids or clocks of its own (the provider's id is kept; `created` and the
//! model name the client asked for are passed in), or buffering of streams (each event in
//! yields its events out at once).

use std::fmt;

use serde_json::{Map, Value, json};

use super::api::{self, Api, Usage};

/// Why a body could not be translated; the message names the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateError {
    /// What is wrong, for the client.
    pub message: String,
}

impl fmt::Display for TranslateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TranslateError {}

fn err(message: impl Into<String>) -> TranslateError {
    TranslateError {
        message: message.into(),
    }
}

type Result<T> = std::result::Result<T, TranslateError>;

fn str_of<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// A block's or part's `type` for an error message.
fn type_name(kind: Option<&str>) -> String {
    kind.map_or_else(|| "(missing)".to_owned(), |kind| format!("{kind:?}"))
}

fn text_block(text: &str) -> Value {
    json!({"type": "text", "text": text})
}

/// Copies `key` from `from` to `to` (as `to_key`) when present and not null.
fn copy_field(from: &Map<String, Value>, key: &str, to: &mut Map<String, Value>, to_key: &str) {
    if let Some(value) = from.get(key).filter(|v| !v.is_null()) {
        to.insert(to_key.to_owned(), value.clone());
    }
}

// ---------------------------------------------------------------------------------------------
// Usage
// ---------------------------------------------------------------------------------------------

/// Token counts in Anthropic's terms (`input` excludes the cache), which hold OpenAI's too:
/// OpenAI's `prompt_tokens` is `input + cache_read` (OpenAI bills no cache writes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tokens {
    input: u64,
    cache_creation: u64,
    cache_read: u64,
    output: u64,
}

impl Tokens {
    fn from_openai(usage: &Value) -> Option<Tokens> {
        let prompt = usage.get("prompt_tokens").and_then(Value::as_u64);
        let completion = usage.get("completion_tokens").and_then(Value::as_u64);
        if prompt.is_none() && completion.is_none() {
            return None;
        }
        let prompt = prompt.unwrap_or(0);
        let cached = usage
            .get("prompt_tokens_details")
            .and_then(|d| d.get("cached_tokens"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .min(prompt);
        Some(Tokens {
            input: prompt - cached,
            cache_creation: 0,
            cache_read: cached,
            output: completion.unwrap_or(0),
        })
    }

    /// Takes every count `usage` states (Anthropic reports running totals, so a later figure
    /// replaces an earlier one); returns whether it stated any.
    fn absorb_anthropic(&mut self, usage: &Value) -> bool {
        let mut any = false;
        for (field, slot) in [
            ("input_tokens", &mut self.input),
            ("cache_creation_input_tokens", &mut self.cache_creation),
            ("cache_read_input_tokens", &mut self.cache_read),
            ("output_tokens", &mut self.output),
        ] {
            if let Some(n) = usage.get(field).and_then(Value::as_u64) {
                *slot = n;
                any = true;
            }
        }
        any
    }

    fn prompt(&self) -> u64 {
        self.input
            .saturating_add(self.cache_creation)
            .saturating_add(self.cache_read)
    }

    fn usage(&self) -> Usage {
        Usage {
            prompt: self.prompt(),
            completion: self.output,
        }
    }

    fn anthropic_json(&self) -> Value {
        json!({
            "input_tokens": self.input,
            "cache_creation_input_tokens": self.cache_creation,
            "cache_read_input_tokens": self.cache_read,
            "output_tokens": self.output,
        })
    }

    fn openai_json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt(),
            "completion_tokens": self.output,
            "total_tokens": self.prompt().saturating_add(self.output),
            "prompt_tokens_details": {"cached_tokens": self.cache_read},
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Stop reasons
// ---------------------------------------------------------------------------------------------

/// OpenAI `finish_reason` → Anthropic `stop_reason`. OpenAI does not say which stop sequence
/// ended the text, so `stop` is always `end_turn`.
fn stop_reason_of(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
fn finish_reason_of(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn and whatever comes next.
        _ => "stop",
    }
}

// ---------------------------------------------------------------------------------------------
// Content pieces shared by both directions
// ---------------------------------------------------------------------------------------------

/// `data:<media type>[;params];base64,<data>` → (media type, data).
fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let (header, data) = url.strip_prefix("data:")?.split_once(',')?;
    let header = header.strip_suffix(";base64")?;
    let media_type = header.split(';').next().unwrap_or(header);
    Some((media_type, data))
}

/// An OpenAI image URL as an Anthropic image source.
fn image_source(url: &str, at: &str) -> Result<Value> {
    if url.starts_with("data:") {
        let (media_type, data) = parse_data_url(url)
            .ok_or_else(|| err(format!("{at}: an image data URL must be base64-encoded")))?;
        Ok(json!({"type": "base64", "media_type": media_type, "data": data}))
    } else if url.starts_with("https://") || url.starts_with("http://") {
        Ok(json!({"type": "url", "url": url}))
    } else {
        Err(err(format!(
            "{at}: an image URL must be an http(s) URL or a base64 data URL"
        )))
    }
}

/// An Anthropic image source as an OpenAI image URL.
fn image_url(source: &Value, at: &str) -> Result<String> {
    match str_of(source, "type") {
        Some("base64") => {
            let media_type = str_of(source, "media_type")
                .ok_or_else(|| err(format!("{at}: source.media_type is missing")))?;
            let data = str_of(source, "data")
                .ok_or_else(|| err(format!("{at}: source.data is missing")))?;
            Ok(format!("data:{media_type};base64,{data}"))
        }
        Some("url") => str_of(source, "url")
            .map(str::to_owned)
            .ok_or_else(|| err(format!("{at}: source.url is missing"))),
        _ => Err(err(format!(
            "{at}: only base64 and url image sources can be sent to an OpenAI model"
        ))),
    }
}

/// Tool arguments as OpenAI sends them (a JSON string) → the input object Anthropic wants.
/// An empty string is a call without arguments, which some clients send.
fn parse_arguments(arguments: &str, at: &str) -> Result<Value> {
    if arguments.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(input @ Value::Object(_)) => Ok(input),
        Ok(_) => Err(err(format!("{at}: the arguments must be a JSON object"))),
        Err(e) => Err(err(format!("{at}: the arguments are not valid JSON ({e})"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Requests: OpenAI → Anthropic
// ---------------------------------------------------------------------------------------------

/// An OpenAI Chat Completions request as an Anthropic Messages request for `model`.
/// `max_tokens` is `max_completion_tokens`, else `max_tokens`, else `default_max_tokens`
/// (Anthropic requires one).
pub fn openai_to_anthropic_request(
    req: &Value,
    model: &str,
    default_max_tokens: u64,
) -> Result<Value> {
    let req = req
        .as_object()
        .ok_or_else(|| err("the request body must be a JSON object"))?;
    refuse_openai_only(req)?;
    let Some(Value::Array(messages)) = req.get("messages") else {
        return Err(err("`messages` must be an array"));
    };

    let mut system = Vec::new();
    let mut system_string: Option<&str> = None;
    let mut system_messages = 0usize;
    let mut out: Vec<Value> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = str_of(message, "role").ok_or_else(|| err(format!("{at}.role is missing")))?;
        match role {
            "system" | "developer" => {
                system_messages += 1;
                let content = message.get("content");
                if let Some(Value::String(text)) = content {
                    system_string = Some(text);
                }
                system.extend(system_blocks(content, &at)?);
            }
            "user" => push_message(&mut out, "user", user_content(message, &at)?),
            "assistant" => push_message(&mut out, "assistant", assistant_content(message, &at)?),
            "tool" => push_message(&mut out, "user", json!([tool_result(message, &at)?])),
            "function" => {
                return Err(err(format!(
                    "{at}: the legacy `function` role cannot be translated; use tools"
                )));
            }
            other => return Err(err(format!("{at}: unknown role {other:?}"))),
        }
    }

    let mut out_req = Map::new();
    out_req.insert("model".into(), model.into());
    // As `api::max_tokens` reads it, without a copy of the request to call it.
    let cap = |field: &str| req.get(field).and_then(Value::as_u64);
    let max_tokens = cap("max_completion_tokens")
        .or_else(|| cap("max_tokens"))
        .unwrap_or(default_max_tokens);
    out_req.insert("max_tokens".into(), max_tokens.into());
    match (system_messages, system_string) {
        // One system message with plain string content stays a plain string.
        (1, Some(text)) if !text.is_empty() => {
            out_req.insert("system".into(), text.into());
        }
        _ if !system.is_empty() => {
            out_req.insert("system".into(), Value::Array(system));
        }
        _ => {}
    }
    out_req.insert("messages".into(), Value::Array(out));
    copy_field(req, "temperature", &mut out_req, "temperature");
    copy_field(req, "top_p", &mut out_req, "top_p");
    match req.get("stop") {
        Some(Value::String(stop)) => {
            out_req.insert("stop_sequences".into(), json!([stop]));
        }
        Some(Value::Array(stops)) if !stops.is_empty() => {
            out_req.insert("stop_sequences".into(), Value::Array(stops.clone()));
        }
        _ => {}
    }
    if let Some(user) = req.get("user").and_then(Value::as_str) {
        out_req.insert("metadata".into(), json!({"user_id": user}));
    }
    copy_field(req, "stream", &mut out_req, "stream");

    let tools = match req.get("tools") {
        Some(Value::Array(tools)) if !tools.is_empty() => Some(tools),
        _ => None,
    };
    if let Some(tools) = tools {
        let tools = tools
            .iter()
            .enumerate()
            .map(|(i, tool)| tool_to_anthropic(tool, &format!("tools[{i}]")))
            .collect::<Result<Vec<_>>>()?;
        out_req.insert("tools".into(), Value::Array(tools));
    }
    let parallel = req.get("parallel_tool_calls").and_then(Value::as_bool);
    let choice = match req.get("tool_choice").filter(|c| !c.is_null()) {
        Some(choice) => Some(tool_choice_to_anthropic(choice)?),
        // Only a tool choice can carry "no parallel calls".
        None if parallel == Some(false) && tools.is_some() => Some(json!({"type": "auto"})),
        None => None,
    };
    if let Some(mut choice) = choice {
        if parallel == Some(false)
            && str_of(&choice, "type") != Some("none")
            && let Some(choice) = choice.as_object_mut()
        {
            choice.insert("disable_parallel_tool_use".into(), true.into());
        }
        out_req.insert("tool_choice".into(), choice);
    }
    Ok(Value::Object(out_req))
}

/// OpenAI options an Anthropic model cannot honour, where dropping them would silently give
/// the client something else than it asked for.
fn refuse_openai_only(req: &Map<String, Value>) -> Result<()> {
    if req.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(err(
            "`n` greater than 1 is not supported by Anthropic models",
        ));
    }
    if req.get("logprobs").and_then(Value::as_bool) == Some(true)
        || req.get("top_logprobs").is_some_and(|v| !v.is_null())
    {
        return Err(err(
            "log probabilities are not supported by Anthropic models",
        ));
    }
    if let Some(format) = req.get("response_format").filter(|v| !v.is_null())
        && str_of(format, "type") != Some("text")
    {
        return Err(err(
            "`response_format` other than text is not supported by Anthropic models",
        ));
    }
    let wants_audio = req.get("audio").is_some_and(|v| !v.is_null())
        || req
            .get("modalities")
            .and_then(Value::as_array)
            .is_some_and(|m| m.iter().any(|m| m.as_str() == Some("audio")));
    if wants_audio {
        return Err(err("audio output is not supported by Anthropic models"));
    }
    if req.get("functions").is_some_and(|v| !v.is_null())
        || req.get("function_call").is_some_and(|v| !v.is_null())
    {
        return Err(err(
            "the legacy `functions` and `function_call` cannot be translated; use tools",
        ));
    }
    Ok(())
}

/// Appends a message, merging it into the previous one when the role repeats (Anthropic
/// wants user and assistant turns to alternate). Empty content is dropped: Anthropic refuses
/// empty messages and empty text blocks.
fn push_message(out: &mut Vec<Value>, role: &str, content: Value) {
    let is_empty = match &content {
        Value::String(text) => text.is_empty(),
        Value::Array(blocks) => blocks.is_empty(),
        _ => true,
    };
    if is_empty {
        return;
    }
    if let Some(last) = out.last_mut()
        && str_of(last, "role") == Some(role)
        && let Some(previous) = last.get_mut("content")
    {
        let mut blocks = into_blocks(previous.take());
        blocks.extend(into_blocks(content));
        *previous = Value::Array(blocks);
        return;
    }
    out.push(json!({"role": role, "content": content}));
}

fn into_blocks(content: Value) -> Vec<Value> {
    match content {
        Value::String(text) if text.is_empty() => Vec::new(),
        Value::String(text) => vec![text_block(&text)],
        Value::Array(blocks) => blocks,
        _ => Vec::new(),
    }
}

/// A system or developer message's text as Anthropic system blocks.
fn system_blocks(content: Option<&Value>, at: &str) -> Result<Vec<Value>> {
    match content {
        Some(Value::String(text)) if text.is_empty() => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(vec![text_block(text)]),
        Some(Value::Array(parts)) => {
            let mut blocks = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                match (str_of(part, "type"), str_of(part, "text")) {
                    (Some("text"), Some("")) => {}
                    (Some("text"), Some(text)) => blocks.push(text_block(text)),
                    _ => {
                        return Err(err(format!(
                            "{at}.content[{j}]: a system message may only hold text"
                        )));
                    }
                }
            }
            Ok(blocks)
        }
        _ => Err(err(format!("{at}.content must be a string or an array"))),
    }
}

fn user_content(message: &Value, at: &str) -> Result<Value> {
    match message.get("content") {
        Some(Value::String(text)) => Ok(Value::String(text.clone())),
        Some(Value::Array(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                if let Some(block) = user_part(part, &format!("{at}.content[{j}]"))? {
                    blocks.push(block);
                }
            }
            Ok(Value::Array(blocks))
        }
        _ => Err(err(format!("{at}.content must be a string or an array"))),
    }
}

/// One OpenAI user content part as an Anthropic block (`None` for an empty text).
fn user_part(part: &Value, at: &str) -> Result<Option<Value>> {
    match str_of(part, "type") {
        Some("text") => {
            let text = str_of(part, "text").ok_or_else(|| err(format!("{at}.text is missing")))?;
            Ok((!text.is_empty()).then(|| text_block(text)))
        }
        Some("image_url") => {
            // `image_url` is an object with `url`; some clients send the URL string itself.
            let url = match part.get("image_url") {
                Some(Value::String(url)) => Some(url.as_str()),
                Some(image) => str_of(image, "url"),
                None => None,
            }
            .ok_or_else(|| err(format!("{at}.image_url.url is missing")))?;
            Ok(Some(
                json!({"type": "image", "source": image_source(url, at)?}),
            ))
        }
        Some("file") => {
            let file = part
                .get("file")
                .ok_or_else(|| err(format!("{at}.file is missing")))?;
            let Some(file_data) = str_of(file, "file_data") else {
                return Err(err(format!(
                    "{at}: only inline files (file_data) can be sent to an Anthropic model"
                )));
            };
            match parse_data_url(file_data) {
                Some(("application/pdf", data)) => Ok(Some(json!({
                    "type": "document",
                    "source": {"type": "base64", "media_type": "application/pdf", "data": data}
                }))),
                _ => Err(err(format!(
                    "{at}: only base64 PDF data URLs can be sent to an Anthropic model as files"
                ))),
            }
        }
        Some("input_audio") => Err(err(format!(
            "{at}: audio input is not supported by Anthropic models"
        ))),
        other => Err(err(format!(
            "{at}: content part type {} cannot be translated",
            type_name(other)
        ))),
    }
}

fn assistant_content(message: &Value, at: &str) -> Result<Value> {
    if message.get("function_call").is_some_and(|v| !v.is_null()) {
        return Err(err(format!(
            "{at}: the legacy `function_call` cannot be translated; use tool_calls"
        )));
    }
    let calls: &[Value] = match message.get("tool_calls") {
        Some(Value::Array(calls)) => calls,
        None | Some(Value::Null) => &[],
        Some(_) => return Err(err(format!("{at}.tool_calls must be an array"))),
    };
    let mut blocks = Vec::new();
    match message.get("content") {
        None | Some(Value::Null) => {}
        // Text alone keeps its plain-string form.
        Some(Value::String(text)) if calls.is_empty() => return Ok(Value::String(text.clone())),
        Some(Value::String(text)) => {
            if !text.is_empty() {
                blocks.push(text_block(text));
            }
        }
        Some(Value::Array(parts)) => {
            for (j, part) in parts.iter().enumerate() {
                let text = match str_of(part, "type") {
                    Some("text") => str_of(part, "text"),
                    Some("refusal") => str_of(part, "refusal"),
                    _ => None,
                }
                .ok_or_else(|| {
                    err(format!(
                        "{at}.content[{j}]: an assistant message may only hold text"
                    ))
                })?;
                if !text.is_empty() {
                    blocks.push(text_block(text));
                }
            }
        }
        Some(_) => return Err(err(format!("{at}.content must be a string or an array"))),
    }
    for (j, call) in calls.iter().enumerate() {
        let at = format!("{at}.tool_calls[{j}]");
        if let Some(kind) = str_of(call, "type")
            && kind != "function"
        {
            return Err(err(format!(
                "{at}: tool call type {kind:?} cannot be translated"
            )));
        }
        let id = str_of(call, "id").ok_or_else(|| err(format!("{at}.id is missing")))?;
        let function = call
            .get("function")
            .ok_or_else(|| err(format!("{at}.function is missing")))?;
        let name = str_of(function, "name")
            .ok_or_else(|| err(format!("{at}.function.name is missing")))?;
        let arguments = str_of(function, "arguments").unwrap_or("");
        let input = parse_arguments(arguments, &format!("{at}.function"))?;
        blocks.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
    }
    Ok(Value::Array(blocks))
}

fn tool_result(message: &Value, at: &str) -> Result<Value> {
    let id = str_of(message, "tool_call_id")
        .ok_or_else(|| err(format!("{at}.tool_call_id is missing")))?;
    let mut block = Map::new();
    block.insert("type".into(), "tool_result".into());
    block.insert("tool_use_id".into(), id.into());
    let content = match message.get("content") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => (!text.is_empty()).then(|| Value::String(text.clone())),
        Some(Value::Array(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                match (str_of(part, "type"), str_of(part, "text")) {
                    (Some("text"), Some("")) => {}
                    (Some("text"), Some(text)) => blocks.push(text_block(text)),
                    _ => {
                        return Err(err(format!(
                            "{at}.content[{j}]: a tool message may only hold text"
                        )));
                    }
                }
            }
            (!blocks.is_empty()).then_some(Value::Array(blocks))
        }
        Some(_) => return Err(err(format!("{at}.content must be a string or an array"))),
    };
    // Anthropic's tool_result content is optional; an empty one is left out.
    if let Some(content) = content {
        block.insert("content".into(), content);
    }
    Ok(Value::Object(block))
}

fn tool_to_anthropic(tool: &Value, at: &str) -> Result<Value> {
    match str_of(tool, "type") {
        Some("function") | None => {}
        Some(other) => {
            return Err(err(format!(
                "{at}: tool type {other:?} cannot be sent to an Anthropic model"
            )));
        }
    }
    let function = tool
        .get("function")
        .ok_or_else(|| err(format!("{at}.function is missing")))?;
    let name =
        str_of(function, "name").ok_or_else(|| err(format!("{at}.function.name is missing")))?;
    let mut out = Map::new();
    out.insert("name".into(), name.into());
    if let Some(description) = function.get("description").filter(|d| d.is_string()) {
        out.insert("description".into(), description.clone());
    }
    // A function without parameters takes none; Anthropic requires an object schema.
    let schema = function
        .get("parameters")
        .filter(|p| p.is_object())
        .cloned()
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    out.insert("input_schema".into(), schema);
    Ok(Value::Object(out))
}

fn tool_choice_to_anthropic(choice: &Value) -> Result<Value> {
    match choice {
        Value::String(mode) => match mode.as_str() {
            "auto" => Ok(json!({"type": "auto"})),
            "none" => Ok(json!({"type": "none"})),
            "required" => Ok(json!({"type": "any"})),
            other => Err(err(format!("tool_choice {other:?} cannot be translated"))),
        },
        Value::Object(_) if str_of(choice, "type") == Some("function") => {
            let name = choice
                .get("function")
                .and_then(|f| str_of(f, "name"))
                .ok_or_else(|| err("tool_choice.function.name is missing"))?;
            Ok(json!({"type": "tool", "name": name}))
        }
        _ => Err(err("tool_choice cannot be translated")),
    }
}

// ---------------------------------------------------------------------------------------------
// Requests: Anthropic → OpenAI
// ---------------------------------------------------------------------------------------------

/// An Anthropic Messages request as an OpenAI Chat Completions request for `model`. The cap
/// goes to `max_completion_tokens` (what current OpenAI models accept; `max_tokens` is
/// deprecated and refused by reasoning models). A streamed request also asks for
/// `stream_options.include_usage`, so the usage arrives for the gateway to count and report.
pub fn anthropic_to_openai_request(req: &Value, model: &str) -> Result<Value> {
    let req = req
        .as_object()
        .ok_or_else(|| err("the request body must be a JSON object"))?;
    let Some(Value::Array(messages)) = req.get("messages") else {
        return Err(err("`messages` must be an array"));
    };
    let mut out: Vec<Value> = Vec::with_capacity(messages.len() + 1);
    match req.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => {
            if !text.is_empty() {
                out.push(json!({"role": "system", "content": text}));
            }
        }
        Some(Value::Array(blocks)) => {
            let mut parts = Vec::with_capacity(blocks.len());
            for (j, block) in blocks.iter().enumerate() {
                match (str_of(block, "type"), str_of(block, "text")) {
                    (Some("text"), Some(text)) => parts.push(text_block(text)),
                    _ => return Err(err(format!("system[{j}]: only text blocks are allowed"))),
                }
            }
            if !parts.is_empty() {
                out.push(json!({"role": "system", "content": parts}));
            }
        }
        Some(_) => return Err(err("`system` must be a string or an array")),
    }
    for (i, message) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        match str_of(message, "role") {
            Some("user") => user_to_openai(message, &at, &mut out)?,
            Some("assistant") => out.push(assistant_to_openai(message, &at)?),
            Some(other) => return Err(err(format!("{at}: unknown role {other:?}"))),
            None => return Err(err(format!("{at}.role is missing"))),
        }
    }

    let mut out_req = Map::new();
    out_req.insert("model".into(), model.into());
    out_req.insert("messages".into(), Value::Array(out));
    copy_field(req, "max_tokens", &mut out_req, "max_completion_tokens");
    copy_field(req, "temperature", &mut out_req, "temperature");
    copy_field(req, "top_p", &mut out_req, "top_p");
    if let Some(Value::Array(stops)) = req.get("stop_sequences")
        && !stops.is_empty()
    {
        out_req.insert("stop".into(), Value::Array(stops.clone()));
    }
    if let Some(user) = req
        .get("metadata")
        .and_then(|m| str_of(m, "user_id"))
        .filter(|u| !u.is_empty())
    {
        out_req.insert("user".into(), user.into());
    }
    copy_field(req, "stream", &mut out_req, "stream");
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        out_req.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let has_tools = match req.get("tools") {
        Some(Value::Array(tools)) if !tools.is_empty() => {
            let tools = tools
                .iter()
                .enumerate()
                .map(|(i, tool)| tool_to_openai(tool, &format!("tools[{i}]")))
                .collect::<Result<Vec<_>>>()?;
            out_req.insert("tools".into(), Value::Array(tools));
            true
        }
        _ => false,
    };
    if let Some(choice) = req.get("tool_choice").filter(|c| !c.is_null()) {
        out_req.insert("tool_choice".into(), tool_choice_to_openai(choice)?);
        if has_tools
            && choice
                .get("disable_parallel_tool_use")
                .and_then(Value::as_bool)
                == Some(true)
        {
            out_req.insert("parallel_tool_calls".into(), false.into());
        }
    }
    Ok(Value::Object(out_req))
}

/// A user message: its tool results become `tool` messages first (OpenAI wants them right
/// after the assistant's calls), then whatever else it holds becomes one user message.
fn user_to_openai(message: &Value, at: &str, out: &mut Vec<Value>) -> Result<()> {
    let blocks = match message.get("content") {
        Some(Value::String(text)) => {
            out.push(json!({"role": "user", "content": text}));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => return Err(err(format!("{at}.content must be a string or an array"))),
    };
    let mut parts = Vec::with_capacity(blocks.len());
    for (j, block) in blocks.iter().enumerate() {
        let at = format!("{at}.content[{j}]");
        match str_of(block, "type") {
            Some("text") => {
                let text =
                    str_of(block, "text").ok_or_else(|| err(format!("{at}.text is missing")))?;
                parts.push(text_block(text));
            }
            Some("image") => {
                let source = block
                    .get("source")
                    .ok_or_else(|| err(format!("{at}.source is missing")))?;
                parts.push(
                    json!({"type": "image_url", "image_url": {"url": image_url(source, &at)?}}),
                );
            }
            Some("document") => parts.push(document_to_openai(block, &at)?),
            Some("tool_result") => out.push(tool_result_to_openai(block, &at)?),
            other => {
                return Err(err(format!(
                    "{at}: content block type {} cannot be sent to an OpenAI model",
                    type_name(other)
                )));
            }
        }
    }
    if !parts.is_empty() {
        out.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

fn document_to_openai(block: &Value, at: &str) -> Result<Value> {
    let source = block
        .get("source")
        .ok_or_else(|| err(format!("{at}.source is missing")))?;
    match (str_of(source, "type"), str_of(source, "media_type")) {
        (Some("base64"), Some("application/pdf")) => {
            let data = str_of(source, "data")
                .ok_or_else(|| err(format!("{at}.source.data is missing")))?;
            let mut file = Map::new();
            if let Some(title) = str_of(block, "title") {
                file.insert("filename".into(), title.into());
            }
            file.insert(
                "file_data".into(),
                format!("data:application/pdf;base64,{data}").into(),
            );
            Ok(json!({"type": "file", "file": file}))
        }
        // A plain-text document is text to an OpenAI model.
        (Some("text"), _) => {
            let data = str_of(source, "data")
                .ok_or_else(|| err(format!("{at}.source.data is missing")))?;
            Ok(text_block(data))
        }
        _ => Err(err(format!(
            "{at}: only base64 PDF and plain-text documents can be sent to an OpenAI model"
        ))),
    }
}

fn tool_result_to_openai(block: &Value, at: &str) -> Result<Value> {
    let id =
        str_of(block, "tool_use_id").ok_or_else(|| err(format!("{at}.tool_use_id is missing")))?;
    let content = match block.get("content") {
        None | Some(Value::Null) => Value::String(String::new()),
        Some(Value::String(text)) => Value::String(text.clone()),
        Some(Value::Array(inner)) => {
            let mut parts = Vec::with_capacity(inner.len());
            for (k, part) in inner.iter().enumerate() {
                match (str_of(part, "type"), str_of(part, "text")) {
                    (Some("text"), Some(text)) => parts.push(text_block(text)),
                    _ => {
                        return Err(err(format!(
                            "{at}.content[{k}]: only text tool results can be sent to an OpenAI model"
                        )));
                    }
                }
            }
            Value::Array(parts)
        }
        Some(_) => return Err(err(format!("{at}.content must be a string or an array"))),
    };
    Ok(json!({"role": "tool", "tool_call_id": id, "content": content}))
}

fn assistant_to_openai(message: &Value, at: &str) -> Result<Value> {
    let blocks = match message.get("content") {
        Some(Value::String(text)) => return Ok(json!({"role": "assistant", "content": text})),
        Some(Value::Array(blocks)) => blocks,
        _ => return Err(err(format!("{at}.content must be a string or an array"))),
    };
    let mut texts: Vec<&str> = Vec::new();
    let mut calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let at = format!("{at}.content[{j}]");
        match str_of(block, "type") {
            Some("text") => texts
                .push(str_of(block, "text").ok_or_else(|| err(format!("{at}.text is missing")))?),
            Some("tool_use") => calls.push(tool_use_to_call(block, &at)?),
            // Reasoning is the provider's own; an OpenAI model has no place for it.
            Some("thinking" | "redacted_thinking") => {}
            other => {
                return Err(err(format!(
                    "{at}: content block type {} cannot be sent to an OpenAI model",
                    type_name(other)
                )));
            }
        }
    }
    let mut out = Map::new();
    out.insert("role".into(), "assistant".into());
    let content = match texts.as_slice() {
        [] => Value::Null,
        [text] => Value::String((*text).to_owned()),
        many => Value::Array(many.iter().map(|text| text_block(text)).collect()),
    };
    out.insert("content".into(), content);
    if !calls.is_empty() {
        out.insert("tool_calls".into(), Value::Array(calls));
    }
    Ok(Value::Object(out))
}

/// A `tool_use` block as an OpenAI tool call (the input object serialized as the arguments).
fn tool_use_to_call(block: &Value, at: &str) -> Result<Value> {
    let id = str_of(block, "id").ok_or_else(|| err(format!("{at}.id is missing")))?;
    let name = str_of(block, "name").ok_or_else(|| err(format!("{at}.name is missing")))?;
    let arguments = match block.get("input") {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(input) => input.to_string(),
    };
    Ok(json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}))
}

fn tool_to_openai(tool: &Value, at: &str) -> Result<Value> {
    // Client tools have no type (or "custom"); anything else is a server tool Anthropic runs
    // itself (web search, code execution…), which an OpenAI model cannot.
    match str_of(tool, "type") {
        None | Some("custom") => {}
        Some(other) => {
            return Err(err(format!(
                "{at}: server tool {other:?} cannot be sent to an OpenAI model"
            )));
        }
    }
    let name = str_of(tool, "name").ok_or_else(|| err(format!("{at}.name is missing")))?;
    let mut function = Map::new();
    function.insert("name".into(), name.into());
    if let Some(description) = tool.get("description").filter(|d| d.is_string()) {
        function.insert("description".into(), description.clone());
    }
    let schema = tool
        .get("input_schema")
        .cloned()
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    function.insert("parameters".into(), schema);
    Ok(json!({"type": "function", "function": function}))
}

fn tool_choice_to_openai(choice: &Value) -> Result<Value> {
    match str_of(choice, "type") {
        Some("auto") => Ok("auto".into()),
        Some("none") => Ok("none".into()),
        Some("any") => Ok("required".into()),
        Some("tool") => {
            let name = str_of(choice, "name").ok_or_else(|| err("tool_choice.name is missing"))?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(err("tool_choice cannot be translated")),
    }
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// An OpenAI chat completion as an Anthropic message, named `model` (the model the client
/// asked for). The first choice is the answer; tool arguments that are not a JSON object are
/// an error (there is no `tool_use` to build from them).
pub fn openai_to_anthropic_response(resp: &Value, model: &str) -> Result<Value> {
    let choice = resp
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|choices| choices.first())
        .ok_or_else(|| err("the provider's response has no choices"))?;
    let message = choice
        .get("message")
        .ok_or_else(|| err("the provider's response has no message"))?;
    let mut content = Vec::new();
    match message.get("content") {
        Some(Value::String(text)) if !text.is_empty() => content.push(text_block(text)),
        Some(Value::Array(parts)) => {
            for text in parts.iter().filter_map(|p| str_of(p, "text")) {
                if !text.is_empty() {
                    content.push(text_block(text));
                }
            }
        }
        _ => {}
    }
    if let Some(refusal) = str_of(message, "refusal").filter(|r| !r.is_empty()) {
        content.push(text_block(refusal));
    }
    if let Some(Value::Array(calls)) = message.get("tool_calls") {
        for (j, call) in calls.iter().enumerate() {
            let at = format!("choices[0].message.tool_calls[{j}]");
            let id = str_of(call, "id").unwrap_or_default();
            let function = call.get("function");
            let name = function.and_then(|f| str_of(f, "name")).unwrap_or_default();
            let arguments = function
                .and_then(|f| str_of(f, "arguments"))
                .unwrap_or_default();
            let input = parse_arguments(arguments, &at)?;
            content.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
        }
    }
    let stop_reason = str_of(choice, "finish_reason").map(stop_reason_of);
    let usage = resp
        .get("usage")
        .and_then(Tokens::from_openai)
        .unwrap_or_default();
    Ok(json!({
        "id": str_of(resp, "id").unwrap_or_default(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": usage.anthropic_json(),
    }))
}

/// An Anthropic message as an OpenAI chat completion, named `model` and dated `created` (unix
/// seconds). Text blocks are concatenated into `content`; `tool_use` blocks become
/// `tool_calls`; thinking and server-tool blocks, which Chat Completions cannot carry, are
/// left out.
pub fn anthropic_to_openai_response(resp: &Value, model: &str, created: i64) -> Result<Value> {
    let Some(Value::Array(blocks)) = resp.get("content") else {
        return Err(err("the provider's response has no content"));
    };
    let mut text: Option<String> = None;
    let mut calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        match str_of(block, "type") {
            Some("text") => text
                .get_or_insert_with(String::new)
                .push_str(str_of(block, "text").unwrap_or_default()),
            Some("tool_use") => calls.push(tool_use_to_call(block, &format!("content[{j}]"))?),
            _ => {}
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), "assistant".into());
    message.insert("content".into(), text.map_or(Value::Null, Value::String));
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    message.insert("refusal".into(), Value::Null);
    let finish_reason = str_of(resp, "stop_reason").map(finish_reason_of);
    let mut usage = Tokens::default();
    if let Some(u) = resp.get("usage") {
        usage.absorb_anthropic(u);
    }
    Ok(json!({
        "id": str_of(resp, "id").unwrap_or_default(),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
        "usage": usage.openai_json(),
    }))
}

/// Whether an OpenAI chunk is the usage-only chunk `stream_options.include_usage` adds at the
/// end (empty `choices`, a `usage` object): a caller that asked the provider for usage on the
/// client's behalf hides it from a client that did not.
pub fn strip_usage_chunk(chunk: &Value) -> bool {
    chunk
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
        && chunk.get("usage").is_some_and(Value::is_object)
}

// ---------------------------------------------------------------------------------------------
// Streams: OpenAI chunks → Anthropic events
// ---------------------------------------------------------------------------------------------

/// The Anthropic content block being streamed.
#[derive(Debug)]
enum OpenBlock {
    Text {
        index: u64,
    },
    Tool {
        index: u64,
        openai_index: u64,
        id: String,
    },
}

/// Turns an OpenAI chunk stream into an Anthropic event stream, chunk by chunk.
///
/// Sequence out: `message_start` at the first chunk (input usage 0: OpenAI reports usage at
/// the end), then per block `content_block_start`, `content_block_delta`s (`text_delta`, or
/// `input_json_delta` for a tool call) and `content_block_stop`, and at
/// [`finish`](Self::finish) `message_delta` (stop reason, usage) and `message_stop`. The last
/// two wait for `finish` because OpenAI's usage-only chunk comes after the finish reason. An
/// OpenAI `{"error": …}` chunk becomes an Anthropic `error` event and ends the stream.
#[derive(Debug)]
pub struct OpenAiToAnthropicStream {
    model: String,
    started: bool,
    ended: bool,
    next_index: u64,
    open: Option<OpenBlock>,
    stop_reason: Option<&'static str>,
    usage: Option<Tokens>,
}

impl OpenAiToAnthropicStream {
    /// A translator whose events name `model` (the model the client asked for).
    pub fn new(model: &str) -> Self {
        OpenAiToAnthropicStream {
            model: model.to_owned(),
            started: false,
            ended: false,
            next_index: 0,
            open: None,
            stop_reason: None,
            usage: None,
        }
    }

    /// Translates one OpenAI chunk (the JSON of a `data:` line other than `[DONE]`),
    /// appending `(event name, data)` pairs to `out`.
    pub fn push(&mut self, chunk: &Value, out: &mut Vec<(&'static str, Value)>) {
        if self.ended {
            return;
        }
        if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
            let message = match error {
                Value::String(message) => message.as_str(),
                _ => str_of(error, "message").unwrap_or("the provider's stream failed"),
            };
            out.push(("error", api::error_body(Api::Anthropic, 500, message)));
            self.ended = true;
            return;
        }
        if let Some(usage) = chunk.get("usage").and_then(Tokens::from_openai) {
            self.usage = Some(usage);
        }
        if !self.started {
            self.started = true;
            let usage = self.usage.unwrap_or_default();
            out.push((
                "message_start",
                json!({"type": "message_start", "message": {
                    "id": str_of(chunk, "id").unwrap_or_default(),
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    // Output so far is nothing; OpenAI tells the input only at the end.
                    "usage": {"input_tokens": usage.input,
                              "cache_creation_input_tokens": usage.cache_creation,
                              "cache_read_input_tokens": usage.cache_read,
                              "output_tokens": 0},
                }}),
            ));
        }
        // One answer is all an Anthropic message holds; requests with n > 1 are refused.
        let Some(choice) = chunk
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|choices| {
                choices
                    .iter()
                    .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
            })
        else {
            return;
        };
        if let Some(delta) = choice.get("delta") {
            for text in [str_of(delta, "content"), str_of(delta, "refusal")]
                .into_iter()
                .flatten()
                .filter(|t| !t.is_empty())
            {
                self.text(text, out);
            }
            if let Some(Value::Array(calls)) = delta.get("tool_calls") {
                for call in calls {
                    self.tool_call(call, out);
                }
            }
        }
        if let Some(reason) = str_of(choice, "finish_reason") {
            self.stop_reason = Some(stop_reason_of(reason));
            self.close_block(out);
        }
    }

    /// Emits what is still owed at `[DONE]` or the upstream's end: the open block's stop,
    /// `message_delta` with the stop reason (null if the provider never gave one) and the
    /// usage, then `message_stop`. Nothing if no chunk ever came (the caller reports that
    /// failure itself) or after an error; calling it again emits nothing.
    pub fn finish(&mut self, out: &mut Vec<(&'static str, Value)>) {
        if self.ended || !self.started {
            self.ended = true;
            return;
        }
        self.ended = true;
        self.close_block(out);
        let usage = match self.usage {
            Some(usage) => usage.anthropic_json(),
            None => json!({"output_tokens": 0}),
        };
        out.push((
            "message_delta",
            json!({"type": "message_delta",
                   "delta": {"stop_reason": self.stop_reason, "stop_sequence": null},
                   "usage": usage}),
        ));
        out.push(("message_stop", json!({"type": "message_stop"})));
    }

    /// The usage the provider reported, once it has.
    pub fn usage(&self) -> Option<Usage> {
        self.usage.map(|tokens| tokens.usage())
    }

    fn text(&mut self, text: &str, out: &mut Vec<(&'static str, Value)>) {
        let index = match self.open {
            Some(OpenBlock::Text { index }) => index,
            _ => {
                self.close_block(out);
                let index = self.start_block(json!({"type": "text", "text": ""}), out);
                self.open = Some(OpenBlock::Text { index });
                index
            }
        };
        out.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index,
                   "delta": {"type": "text_delta", "text": text}}),
        ));
    }

    /// One entry of a chunk's `delta.tool_calls`: the first fragment of a call carries its id
    /// and name (a new `tool_use` block), the rest carry pieces of the arguments.
    fn tool_call(&mut self, call: &Value, out: &mut Vec<(&'static str, Value)>) {
        let openai_index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let id = str_of(call, "id");
        let function = call.get("function");
        let name = function.and_then(|f| str_of(f, "name"));
        let arguments = function
            .and_then(|f| str_of(f, "arguments"))
            .unwrap_or_default();
        let continues_open = match &self.open {
            Some(OpenBlock::Tool {
                openai_index: open_index,
                id: open_id,
                ..
            }) => *open_index == openai_index && id.is_none_or(|id| id == open_id),
            _ => false,
        };
        let index = if continues_open {
            match self.open {
                Some(OpenBlock::Tool { index, .. }) => index,
                _ => return,
            }
        } else {
            if id.is_none() && name.is_none() {
                // More arguments for a call whose block is already closed (OpenAI streams
                // calls one after another, so this does not happen): Anthropic blocks cannot
                // be reopened.
                return;
            }
            self.close_block(out);
            let id = id.unwrap_or_default();
            let index = self.start_block(
                json!({"type": "tool_use", "id": id, "name": name.unwrap_or_default(),
                       "input": {}}),
                out,
            );
            self.open = Some(OpenBlock::Tool {
                index,
                openai_index,
                id: id.to_owned(),
            });
            index
        };
        if !arguments.is_empty() {
            out.push((
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index,
                       "delta": {"type": "input_json_delta", "partial_json": arguments}}),
            ));
        }
    }

    fn start_block(&mut self, block: Value, out: &mut Vec<(&'static str, Value)>) -> u64 {
        let index = self.next_index;
        self.next_index += 1;
        out.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": block}),
        ));
        index
    }

    fn close_block(&mut self, out: &mut Vec<(&'static str, Value)>) {
        let index = match self.open.take() {
            Some(OpenBlock::Text { index } | OpenBlock::Tool { index, .. }) => index,
            None => return,
        };
        out.push((
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Streams: Anthropic events → OpenAI chunks
// ---------------------------------------------------------------------------------------------

/// Turns an Anthropic event stream into OpenAI `chat.completion.chunk`s, event by event.
///
/// Sequence out: a first chunk with `delta.role = "assistant"` (at `message_start`), a chunk
/// per text delta, tool-call chunks (the first with index, id, type and name, then argument
/// fragments), a chunk with the `finish_reason` (at `message_delta`), and, only when the
/// client asked with `include_usage`, a last chunk with `choices: []` and the usage (at
/// `message_stop`). `ping` and thinking deltas yield nothing. An `error` event becomes
/// OpenAI's `{"error": …}` chunk and ends the stream. The caller writes `data: [DONE]`.
#[derive(Debug)]
pub struct AnthropicToOpenAiStream {
    model: String,
    created: i64,
    include_usage: bool,
    id: String,
    started: bool,
    ended: bool,
    /// (Anthropic block index, OpenAI tool call index) of each `tool_use` block.
    tools: Vec<(u64, u64)>,
    finish_sent: bool,
    usage: Option<Tokens>,
    usage_sent: bool,
}

impl AnthropicToOpenAiStream {
    /// A translator whose chunks name `model` (the model the client asked for) and are dated
    /// `created`; `include_usage` is the client's `stream_options.include_usage`.
    pub fn new(model: &str, created: i64, include_usage: bool) -> Self {
        AnthropicToOpenAiStream {
            model: model.to_owned(),
            created,
            include_usage,
            id: String::new(),
            started: false,
            ended: false,
            tools: Vec::new(),
            finish_sent: false,
            usage: None,
            usage_sent: false,
        }
    }

    /// Translates one event (`event` is the SSE event name; the data's own `type` wins when
    /// present), appending chunks to `out`.
    pub fn push(&mut self, event: &str, data: &Value, out: &mut Vec<Value>) {
        if self.ended {
            return;
        }
        let kind = str_of(data, "type").unwrap_or(event);
        match kind {
            "message_start" => {
                if let Some(message) = data.get("message") {
                    if let Some(id) = str_of(message, "id") {
                        id.clone_into(&mut self.id);
                    }
                    if let Some(usage) = message.get("usage") {
                        self.absorb_usage(usage);
                    }
                }
                self.start(out);
            }
            "content_block_start" => {
                self.start(out);
                let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                let Some(block) = data.get("content_block") else {
                    return;
                };
                match str_of(block, "type") {
                    Some("text") => {
                        if let Some(text) = str_of(block, "text").filter(|t| !t.is_empty()) {
                            out.push(self.chunk(json!({"content": text}), None));
                        }
                    }
                    Some("tool_use") => {
                        let tool_index = self.tools.len() as u64;
                        self.tools.push((index, tool_index));
                        // In a stream the input comes as deltas; a non-empty one here is
                        // sent as the first fragment.
                        let arguments = match block.get("input") {
                            Some(Value::Object(input)) if !input.is_empty() => {
                                Value::Object(input.clone()).to_string()
                            }
                            _ => String::new(),
                        };
                        let call = json!({
                            "index": tool_index,
                            "id": str_of(block, "id").unwrap_or_default(),
                            "type": "function",
                            "function": {"name": str_of(block, "name").unwrap_or_default(),
                                         "arguments": arguments},
                        });
                        out.push(self.chunk(json!({"tool_calls": [call]}), None));
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                let Some(delta) = data.get("delta") else {
                    return;
                };
                match str_of(delta, "type") {
                    Some("text_delta") => {
                        if let Some(text) = str_of(delta, "text").filter(|t| !t.is_empty()) {
                            self.start(out);
                            out.push(self.chunk(json!({"content": text}), None));
                        }
                    }
                    Some("input_json_delta") => {
                        let fragment = str_of(delta, "partial_json").unwrap_or_default();
                        let tool = self.tools.iter().find(|(block, _)| *block == index);
                        if let (Some(&(_, tool_index)), false) = (tool, fragment.is_empty()) {
                            out.push(self.chunk(
                                json!({"tool_calls": [{"index": tool_index,
                                                       "function": {"arguments": fragment}}]}),
                                None,
                            ));
                        }
                    }
                    // thinking_delta, signature_delta, citations_delta: nothing to carry.
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(usage) = data.get("usage") {
                    self.absorb_usage(usage);
                }
                if let Some(reason) = data.get("delta").and_then(|d| str_of(d, "stop_reason"))
                    && !self.finish_sent
                {
                    self.start(out);
                    self.finish_sent = true;
                    out.push(self.chunk(json!({}), Some(finish_reason_of(reason))));
                }
            }
            "message_stop" => self.send_usage(out),
            "error" => {
                let message = data
                    .get("error")
                    .and_then(|e| str_of(e, "message"))
                    .unwrap_or("the provider's stream failed");
                out.push(api::error_body(Api::OpenAi, 500, message));
                self.ended = true;
            }
            // ping, content_block_stop, and event types yet to come.
            _ => {}
        }
    }

    /// Emits what is still owed at the upstream's end: the usage chunk (when the client asked
    /// for it and `message_stop` never came). A missing finish reason is not made up: the
    /// client sees the stream end without one, as it would from OpenAI. Calling it again
    /// emits nothing.
    pub fn finish(&mut self, out: &mut Vec<Value>) {
        if !self.ended {
            self.send_usage(out);
        }
        self.ended = true;
    }

    /// The usage the provider reported so far (`message_start`, then `message_delta`).
    pub fn usage(&self) -> Option<Usage> {
        self.usage.map(|tokens| tokens.usage())
    }

    fn absorb_usage(&mut self, usage: &Value) {
        let mut tokens = self.usage.unwrap_or_default();
        if tokens.absorb_anthropic(usage) {
            self.usage = Some(tokens);
        }
    }

    /// The role chunk, once, before anything else.
    fn start(&mut self, out: &mut Vec<Value>) {
        if !self.started {
            self.started = true;
            out.push(self.chunk(json!({"role": "assistant", "content": ""}), None));
        }
    }

    fn send_usage(&mut self, out: &mut Vec<Value>) {
        if !self.include_usage || self.usage_sent {
            return;
        }
        let Some(usage) = self.usage else {
            return;
        };
        self.usage_sent = true;
        out.push(json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage.openai_json(),
        }));
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        let mut chunk = Map::new();
        chunk.insert("id".into(), self.id.clone().into());
        chunk.insert("object".into(), "chat.completion.chunk".into());
        chunk.insert("created".into(), self.created.into());
        chunk.insert("model".into(), self.model.clone().into());
        chunk.insert(
            "choices".into(),
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]),
        );
        // What OpenAI does: with include_usage, every chunk but the last says "usage": null.
        if self.include_usage {
            chunk.insert("usage".into(), Value::Null);
        }
        Value::Object(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::sse::{SseParser, write_event};

    const CREATED: i64 = 1_741_569_952;

    fn o2a(req: Value) -> Value {
        openai_to_anthropic_request(&req, "claude-sonnet-4-5", 4096).expect("translates")
    }

    fn a2o(req: Value) -> Value {
        anthropic_to_openai_request(&req, "gpt-4.1").expect("translates")
    }

    fn o2a_err(req: Value) -> String {
        openai_to_anthropic_request(&req, "claude-sonnet-4-5", 4096)
            .expect_err("refused")
            .message
    }

    fn a2o_err(req: Value) -> String {
        anthropic_to_openai_request(&req, "gpt-4.1")
            .expect_err("refused")
            .message
    }

    // ---- requests: OpenAI → Anthropic ----

    #[test]
    fn a_plain_openai_request_becomes_an_anthropic_request() {
        let req = json!({
            "model": "my-alias",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Hi!"}
            ],
            "max_completion_tokens": 300,
            "temperature": 0.2,
            "top_p": 0.9,
            "stop": "END",
            "user": "user-42",
            "stream": true,
            "stream_options": {"include_usage": true},
            "presence_penalty": 0.5,
            "seed": 7
        });
        assert_eq!(
            o2a(req),
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 300,
                "system": "You are terse.",
                "messages": [{"role": "user", "content": "Hi!"}],
                "temperature": 0.2,
                "top_p": 0.9,
                "stop_sequences": ["END"],
                "metadata": {"user_id": "user-42"},
                "stream": true
            })
        );
    }

    #[test]
    fn max_tokens_is_max_completion_tokens_then_max_tokens_then_the_default() {
        let base = |extra: Value| {
            let mut req = json!({"messages": [{"role": "user", "content": "x"}]});
            if let (Some(req), Value::Object(extra)) = (req.as_object_mut(), extra) {
                req.extend(extra);
            }
            o2a(req)["max_tokens"].clone()
        };
        assert_eq!(
            base(json!({"max_completion_tokens": 10, "max_tokens": 20})),
            10
        );
        assert_eq!(base(json!({"max_tokens": 20})), 20);
        assert_eq!(base(json!({})), 4096);
    }

    #[test]
    fn system_and_developer_messages_anywhere_become_system_blocks_in_order() {
        let req = json!({"messages": [
            {"role": "developer", "content": "first"},
            {"role": "user", "content": "question"},
            {"role": "system", "content": [{"type": "text", "text": "second"}, {"type": "text", "text": "third"}]},
        ]});
        let out = o2a(req);
        assert_eq!(
            out["system"],
            json!([
                {"type": "text", "text": "first"},
                {"type": "text", "text": "second"},
                {"type": "text", "text": "third"}
            ])
        );
        assert_eq!(
            out["messages"],
            json!([{"role": "user", "content": "question"}])
        );
        // A single system message given as parts stays parts.
        let parts = o2a(json!({"messages": [
            {"role": "system", "content": [{"type": "text", "text": "only"}]},
            {"role": "user", "content": "q"}
        ]}));
        assert_eq!(parts["system"], json!([{"type": "text", "text": "only"}]));
        // No system message, no system field.
        assert!(
            o2a(json!({"messages": [{"role": "user", "content": "q"}]}))
                .get("system")
                .is_none()
        );
    }

    #[test]
    fn stop_as_string_or_array_becomes_stop_sequences() {
        let with_stop = |stop: Value| {
            o2a(json!({"messages": [{"role": "user", "content": "x"}], "stop": stop}))
                .get("stop_sequences")
                .cloned()
        };
        assert_eq!(with_stop(json!("a")), Some(json!(["a"])));
        assert_eq!(with_stop(json!(["a", "b"])), Some(json!(["a", "b"])));
        assert_eq!(with_stop(json!(null)), None);
        assert_eq!(with_stop(json!([])), None);
    }

    #[test]
    fn image_and_pdf_parts_become_anthropic_sources() {
        let req = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "Compare:"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            {"type": "image_url", "image_url": "https://example.com/legacy.gif"},
            {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}}
        ]}]});
        assert_eq!(
            o2a(req)["messages"][0]["content"],
            json!([
                {"type": "text", "text": "Compare:"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/legacy.gif"}},
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}
            ])
        );
    }

    #[test]
    fn parts_an_anthropic_model_cannot_take_are_refused_with_their_path() {
        let user = |part: Value| json!({"messages": [{"role": "user", "content": [part]}]});
        let cases = [
            (
                user(json!({"type": "image_url", "image_url": {"url": "data:image/png,raw"}})),
                "messages[0].content[0]: an image data URL must be base64-encoded",
            ),
            (
                user(json!({"type": "image_url", "image_url": {"url": "ftp://x/y.png"}})),
                "messages[0].content[0]: an image URL must be an http(s) URL or a base64 data URL",
            ),
            (
                user(json!({"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}})),
                "messages[0].content[0]: audio input is not supported by Anthropic models",
            ),
            (
                user(json!({"type": "file", "file": {"file_id": "file-abc"}})),
                "messages[0].content[0]: only inline files (file_data) can be sent to an Anthropic model",
            ),
            (
                user(json!({"type": "file", "file": {"file_data": "data:text/csv;base64,YQ=="}})),
                "messages[0].content[0]: only base64 PDF data URLs can be sent to an Anthropic model as files",
            ),
        ];
        for (req, message) in cases {
            assert_eq!(o2a_err(req), message);
        }
    }

    /// A full tool round: the assistant calls two tools, both answer, the user follows up.
    fn openai_tool_conversation() -> Value {
        json!({
            "model": "gpt-4.1",
            "messages": [
                {"role": "system", "content": "Use tools."},
                {"role": "user", "content": "Weather and time in Paris?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"c\"}"}},
                    {"id": "call_2", "type": "function",
                     "function": {"name": "get_time", "arguments": "{\"tz\":\"Europe/Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18°C, cloudy"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "14:05"}]},
                {"role": "user", "content": "Thanks. Umbrella?"}
            ],
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "description": "Current weather",
                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                                "required": ["city"]}}},
                {"type": "function", "function": {"name": "get_time"}}
            ],
            "tool_choice": "auto",
            "max_tokens": 500
        })
    }

    #[test]
    fn tool_calls_become_tool_use_and_tool_messages_one_user_message() {
        let out = o2a(openai_tool_conversation());
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": "Weather and time in Paris?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather",
                     "input": {"city": "Paris", "unit": "c"}},
                    {"type": "tool_use", "id": "call_2", "name": "get_time",
                     "input": {"tz": "Europe/Paris"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18°C, cloudy"},
                    {"type": "tool_result", "tool_use_id": "call_2",
                     "content": [{"type": "text", "text": "14:05"}]},
                    {"type": "text", "text": "Thanks. Umbrella?"}
                ]}
            ])
        );
        assert_eq!(
            out["tools"],
            json!([
                {"name": "get_weather", "description": "Current weather",
                 "input_schema": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                                  "required": ["city"]}},
                {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
            ])
        );
        assert_eq!(out["tool_choice"], json!({"type": "auto"}));
        assert_eq!(out["system"], "Use tools.");
    }

    #[test]
    fn tool_call_arguments_must_be_a_json_object_and_empty_means_none() {
        let call = |arguments: &str| {
            json!({"messages": [
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}]}
            ]})
        };
        assert!(
            o2a_err(call("{\"city\": \"Par")).starts_with(
                "messages[1].tool_calls[0].function: the arguments are not valid JSON"
            )
        );
        assert_eq!(
            o2a_err(call("[1]")),
            "messages[1].tool_calls[0].function: the arguments must be a JSON object"
        );
        assert_eq!(
            o2a(call(""))["messages"][1]["content"],
            json!([{"type": "tool_use", "id": "c", "name": "f", "input": {}}])
        );
    }

    #[test]
    fn consecutive_messages_of_one_role_are_merged_and_empty_ones_dropped() {
        let out = o2a(json!({"messages": [
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "text", "text": "two"}]},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "three"},
            {"role": "assistant", "content": "a"},
            {"role": "assistant", "content": "b"}
        ]}));
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": [
                    {"type": "text", "text": "one"},
                    {"type": "text", "text": "two"},
                    {"type": "text", "text": "three"}
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "a"},
                    {"type": "text", "text": "b"}
                ]}
            ])
        );
    }

    #[test]
    fn tool_choice_maps_to_anthropic_and_parallel_false_disables_parallel_use() {
        let with = |choice: Value, parallel: Value| {
            let mut req = json!({"messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f"}}]});
            if let Some(req) = req.as_object_mut() {
                if !choice.is_null() {
                    req.insert("tool_choice".into(), choice);
                }
                if !parallel.is_null() {
                    req.insert("parallel_tool_calls".into(), parallel);
                }
            }
            o2a(req).get("tool_choice").cloned()
        };
        assert_eq!(
            with(json!("auto"), json!(null)),
            Some(json!({"type": "auto"}))
        );
        assert_eq!(
            with(json!("none"), json!(null)),
            Some(json!({"type": "none"}))
        );
        assert_eq!(
            with(json!("required"), json!(null)),
            Some(json!({"type": "any"}))
        );
        assert_eq!(
            with(
                json!({"type": "function", "function": {"name": "f"}}),
                json!(null)
            ),
            Some(json!({"type": "tool", "name": "f"}))
        );
        assert_eq!(
            with(json!("required"), json!(false)),
            Some(json!({"type": "any", "disable_parallel_tool_use": true}))
        );
        assert_eq!(
            with(json!(null), json!(false)),
            Some(json!({"type": "auto", "disable_parallel_tool_use": true}))
        );
        assert_eq!(
            with(json!("none"), json!(false)),
            Some(json!({"type": "none"}))
        );
        assert_eq!(with(json!(null), json!(true)), None);
        assert_eq!(
            o2a_err(json!({"messages": [], "tool_choice": "sometimes"})),
            "tool_choice \"sometimes\" cannot be translated"
        );
    }

    #[test]
    fn options_an_anthropic_model_cannot_honour_are_refused() {
        let msgs = json!([{"role": "user", "content": "x"}]);
        let cases = [
            (
                json!({"messages": msgs, "n": 2}),
                "`n` greater than 1 is not supported by Anthropic models",
            ),
            (
                json!({"messages": msgs, "logprobs": true}),
                "log probabilities are not supported by Anthropic models",
            ),
            (
                json!({"messages": msgs, "response_format": {"type": "json_object"}}),
                "`response_format` other than text is not supported by Anthropic models",
            ),
            (
                json!({"messages": msgs, "modalities": ["text", "audio"]}),
                "audio output is not supported by Anthropic models",
            ),
            (
                json!({"messages": msgs, "functions": [{"name": "f"}]}),
                "the legacy `functions` and `function_call` cannot be translated; use tools",
            ),
            (
                json!({"messages": [{"role": "function", "name": "f", "content": "x"}]}),
                "messages[0]: the legacy `function` role cannot be translated; use tools",
            ),
            (
                json!({"messages": [{"role": "robot", "content": "x"}]}),
                "messages[0]: unknown role \"robot\"",
            ),
            (
                json!({"messages": [{"content": "x"}]}),
                "messages[0].role is missing",
            ),
            (
                json!({"messages": [{"role": "user"}]}),
                "messages[0].content must be a string or an array",
            ),
            (json!({"model": "x"}), "`messages` must be an array"),
            (json!([1]), "the request body must be a JSON object"),
            (
                json!({"messages": msgs, "tools": [{"type": "custom", "custom": {"name": "g"}}]}),
                "tools[0]: tool type \"custom\" cannot be sent to an Anthropic model",
            ),
        ];
        for (req, message) in cases {
            assert_eq!(o2a_err(req), message);
        }
        // What changes nothing is accepted.
        o2a(json!({"messages": msgs, "n": 1, "logprobs": false,
                   "response_format": {"type": "text"}, "modalities": ["text"]}));
    }

    // ---- requests: Anthropic → OpenAI ----

    fn anthropic_tool_conversation() -> Value {
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "system": [{"type": "text", "text": "Use tools.", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
                    {"type": "text", "text": "Where is this? Weather there?"}
                ]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "Looks like Paris.", "signature": "EqQB"},
                    {"type": "text", "text": "Paris. Checking."},
                    {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18°C", "is_error": false},
                    {"type": "text", "text": "Umbrella?"}
                ]}
            ],
            "tools": [{"name": "get_weather", "description": "Current weather",
                       "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
                       "cache_control": {"type": "ephemeral"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "stop_sequences": ["\n\nHuman:"],
            "temperature": 0.7,
            "top_k": 40,
            "metadata": {"user_id": "u-1"},
            "stream": true,
            "thinking": {"type": "enabled", "budget_tokens": 2000}
        })
    }

    #[test]
    fn an_anthropic_request_becomes_an_openai_request() {
        assert_eq!(
            a2o(anthropic_tool_conversation()),
            json!({
                "model": "gpt-4.1",
                "messages": [
                    {"role": "system", "content": [{"type": "text", "text": "Use tools."}]},
                    {"role": "user", "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
                        {"type": "text", "text": "Where is this? Weather there?"}
                    ]},
                    {"role": "assistant", "content": "Paris. Checking.", "tool_calls": [
                        {"id": "toolu_01", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "toolu_01", "content": "18°C"},
                    {"role": "user", "content": [{"type": "text", "text": "Umbrella?"}]}
                ],
                "max_completion_tokens": 1024,
                "temperature": 0.7,
                "stop": ["\n\nHuman:"],
                "user": "u-1",
                "stream": true,
                "stream_options": {"include_usage": true},
                "tools": [{"type": "function", "function": {
                    "name": "get_weather", "description": "Current weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
                "tool_choice": "required",
                "parallel_tool_calls": false
            })
        );
    }

    #[test]
    fn a_string_system_and_string_messages_stay_strings() {
        let out = a2o(json!({"system": "Be nice.", "max_tokens": 5, "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "bye"}
        ]}));
        assert_eq!(
            out["messages"],
            json!([
                {"role": "system", "content": "Be nice."},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "bye"}
            ])
        );
        assert!(out.get("stream_options").is_none());
    }

    #[test]
    fn tool_results_become_tool_messages_before_the_rest_of_the_user_turn() {
        let out = a2o(json!({"max_tokens": 5, "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "t1", "name": "a", "input": {}},
                {"type": "tool_use", "id": "t2", "name": "b", "input": {"x": [1, 2]}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "A"}]},
                {"type": "tool_result", "tool_use_id": "t2"}
            ]}
        ]}));
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "t1", "type": "function", "function": {"name": "a", "arguments": "{}"}},
                    {"id": "t2", "type": "function", "function": {"name": "b", "arguments": "{\"x\":[1,2]}"}}
                ]},
                {"role": "tool", "tool_call_id": "t1", "content": [{"type": "text", "text": "A"}]},
                {"role": "tool", "tool_call_id": "t2", "content": ""}
            ])
        );
    }

    #[test]
    fn documents_become_files_or_text() {
        let out = a2o(
            json!({"max_tokens": 5, "messages": [{"role": "user", "content": [
                {"type": "document", "title": "report.pdf",
                 "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain words"}}
            ]}]}),
        );
        assert_eq!(
            out["messages"][0]["content"],
            json!([
                {"type": "file", "file": {"filename": "report.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
                {"type": "text", "text": "plain words"}
            ])
        );
    }

    #[test]
    fn tool_choice_maps_to_openai() {
        let with = |choice: Value| {
            a2o(json!({"max_tokens": 5, "messages": [],
                       "tools": [{"name": "f", "input_schema": {"type": "object"}}],
                       "tool_choice": choice}))
        };
        assert_eq!(with(json!({"type": "auto"}))["tool_choice"], "auto");
        assert_eq!(with(json!({"type": "none"}))["tool_choice"], "none");
        assert_eq!(with(json!({"type": "any"}))["tool_choice"], "required");
        let named = with(json!({"type": "tool", "name": "f"}));
        assert_eq!(
            named["tool_choice"],
            json!({"type": "function", "function": {"name": "f"}})
        );
        assert!(named.get("parallel_tool_calls").is_none());
        assert_eq!(
            with(json!({"type": "auto", "disable_parallel_tool_use": true}))["parallel_tool_calls"],
            false
        );
    }

    #[test]
    fn what_an_openai_model_cannot_take_is_refused() {
        let cases = [
            (
                json!({"max_tokens": 5, "messages": [],
                       "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
                "tools[0]: server tool \"web_search_20250305\" cannot be sent to an OpenAI model",
            ),
            (
                json!({"max_tokens": 5, "messages": [{"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t", "content": [
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x"}}]}]}]}),
                "messages[0].content[0].content[0]: only text tool results can be sent to an OpenAI model",
            ),
            (
                json!({"max_tokens": 5, "messages": [{"role": "user", "content": [
                    {"type": "image", "source": {"type": "file", "file_id": "file_1"}}]}]}),
                "messages[0].content[0]: only base64 and url image sources can be sent to an OpenAI model",
            ),
            (
                json!({"max_tokens": 5, "messages": [{"role": "assistant", "content": [
                    {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}]}]}),
                "messages[0].content[0]: content block type \"server_tool_use\" cannot be sent to an OpenAI model",
            ),
            (
                json!({"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}),
                "messages[0]: unknown role \"system\"",
            ),
            (json!({"max_tokens": 5}), "`messages` must be an array"),
        ];
        for (req, message) in cases {
            assert_eq!(a2o_err(req), message);
        }
    }

    // ---- request round trips ----

    /// (id, name, parsed arguments) of every tool call in an OpenAI request.
    fn openai_calls(req: &Value) -> Vec<(String, String, Value)> {
        req["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m.get("tool_calls").and_then(Value::as_array))
            .flatten()
            .map(|call| {
                let arguments = call["function"]["arguments"].as_str().unwrap_or_default();
                (
                    call["id"].as_str().unwrap_or_default().to_owned(),
                    call["function"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    serde_json::from_str(arguments).expect("arguments are JSON"),
                )
            })
            .collect()
    }

    fn tool_message_ids(req: &Value) -> Vec<&str> {
        req["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["role"] == "tool")
            .filter_map(|m| m["tool_call_id"].as_str())
            .collect()
    }

    #[test]
    fn an_openai_request_survives_a_round_trip_through_anthropic() {
        let mut original = openai_tool_conversation();
        if let Some(messages) = original["messages"].as_array_mut() {
            messages.push(json!({"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklGRg=="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/b.png"}}
            ]}));
        }
        original["temperature"] = json!(0.5);
        original["stop"] = json!(["x", "y"]);
        original["user"] = json!("u");
        original["parallel_tool_calls"] = json!(false);
        let anthropic = o2a(original.clone());
        let back = anthropic_to_openai_request(&anthropic, "gpt-4.1").expect("back");

        assert_eq!(
            api::request_texts(Api::OpenAi, &back),
            api::request_texts(Api::OpenAi, &original)
        );
        assert_eq!(openai_calls(&back), openai_calls(&original));
        assert_eq!(tool_message_ids(&back), ["call_1", "call_2"]);
        assert_eq!(back["tools"][0], original["tools"][0]);
        assert_eq!(back["tools"][1]["function"]["name"], "get_time");
        assert_eq!(back["tool_choice"], "auto");
        assert_eq!(back["parallel_tool_calls"], false);
        assert_eq!(back["max_completion_tokens"], 500);
        assert_eq!(back["temperature"], 0.5);
        assert_eq!(back["stop"], json!(["x", "y"]));
        assert_eq!(back["user"], "u");
        let images: Vec<&Value> = back["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["content"].as_array())
            .flatten()
            .filter(|p| p["type"] == "image_url")
            .map(|p| &p["image_url"]["url"])
            .collect();
        assert_eq!(
            images,
            [
                &json!("data:image/webp;base64,UklGRg=="),
                &json!("https://example.com/b.png")
            ]
        );
    }

    #[test]
    fn an_anthropic_request_survives_a_round_trip_through_openai() {
        let original = anthropic_tool_conversation();
        let openai = a2o(original.clone());
        let back = openai_to_anthropic_request(&openai, "claude-sonnet-4-5", 1).expect("back");
        assert_eq!(
            api::request_texts(Api::Anthropic, &back),
            api::request_texts(Api::Anthropic, &original)
        );
        // Thinking is dropped on the way; everything else of the assistant turn comes back.
        assert_eq!(
            back["messages"][1]["content"],
            json!([
                {"type": "text", "text": "Paris. Checking."},
                {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}
            ])
        );
        assert_eq!(
            back["messages"][0]["content"][0],
            original["messages"][0]["content"][0]
        );
        assert_eq!(back["tool_choice"], original["tool_choice"]);
        assert_eq!(back["max_tokens"], 1024);
        assert_eq!(back["stop_sequences"], original["stop_sequences"]);
        assert_eq!(back["metadata"], original["metadata"]);
        assert_eq!(
            back["tools"][0]["input_schema"],
            original["tools"][0]["input_schema"]
        );
    }

    // ---- responses ----

    fn openai_completion() -> Value {
        json!({
            "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
            "object": "chat.completion",
            "created": 1_741_570_283,
            "model": "gpt-4.1-2025-04-14",
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Let me check.",
                    "refusal": null,
                    "tool_calls": [{"id": "call_abc", "type": "function",
                                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}],
                    "annotations": []
                },
                "logprobs": null,
                "finish_reason": "tool_calls"
            }],
            "usage": {"prompt_tokens": 1117, "completion_tokens": 46, "total_tokens": 1163,
                      "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 0}},
            "service_tier": "default",
            "system_fingerprint": "fp_fc9f1d7035"
        })
    }

    fn anthropic_message() -> Value {
        json!({
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [
                {"type": "thinking", "thinking": "The user wants weather.", "signature": "EqQB"},
                {"type": "text", "text": "Let me "},
                {"type": "text", "text": "check."},
                {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
                 "input": {"city": "Paris"}}
            ],
            "stop_reason": "tool_use",
            "stop_sequence": null,
            "usage": {"input_tokens": 93, "cache_creation_input_tokens": 10,
                      "cache_read_input_tokens": 1024, "output_tokens": 46,
                      "service_tier": "standard"}
        })
    }

    #[test]
    fn an_openai_completion_becomes_an_anthropic_message() {
        assert_eq!(
            openai_to_anthropic_response(&openai_completion(), "claude-alias").expect("ok"),
            json!({
                "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
                "type": "message",
                "role": "assistant",
                "model": "claude-alias",
                "content": [
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "call_abc", "name": "get_weather", "input": {"city": "Paris"}}
                ],
                "stop_reason": "tool_use",
                "stop_sequence": null,
                "usage": {"input_tokens": 93, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 1024, "output_tokens": 46}
            })
        );
    }

    #[test]
    fn an_anthropic_message_becomes_an_openai_completion() {
        assert_eq!(
            anthropic_to_openai_response(&anthropic_message(), "gpt-alias", CREATED).expect("ok"),
            json!({
                "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
                "object": "chat.completion",
                "created": CREATED,
                "model": "gpt-alias",
                "choices": [{
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "Let me check.",
                        "tool_calls": [{"id": "toolu_01A09q90qw90lq917835lq9", "type": "function",
                                        "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}],
                        "refusal": null
                    },
                    "logprobs": null,
                    "finish_reason": "tool_calls"
                }],
                "usage": {"prompt_tokens": 1127, "completion_tokens": 46, "total_tokens": 1173,
                          "prompt_tokens_details": {"cached_tokens": 1024}}
            })
        );
    }

    #[test]
    fn usage_means_the_same_in_both_shapes() {
        let openai = openai_completion();
        let anthropic = openai_to_anthropic_response(&openai, "m").expect("ok");
        assert_eq!(
            api::usage_of(Api::Anthropic, &anthropic),
            api::usage_of(Api::OpenAi, &openai)
        );
        let anthropic = anthropic_message();
        let openai = anthropic_to_openai_response(&anthropic, "m", CREATED).expect("ok");
        assert_eq!(
            api::usage_of(Api::OpenAi, &openai),
            api::usage_of(Api::Anthropic, &anthropic)
        );
    }

    #[test]
    fn finish_and_stop_reasons_map_both_ways() {
        let openai_with = |reason: Value| {
            let mut resp = openai_completion();
            resp["choices"][0]["finish_reason"] = reason;
            resp["choices"][0]["message"]["tool_calls"] = Value::Null;
            openai_to_anthropic_response(&resp, "m").expect("ok")["stop_reason"].clone()
        };
        assert_eq!(openai_with(json!("stop")), "end_turn");
        assert_eq!(openai_with(json!("length")), "max_tokens");
        assert_eq!(openai_with(json!("tool_calls")), "tool_use");
        assert_eq!(openai_with(json!("content_filter")), "refusal");
        assert_eq!(openai_with(json!(null)), Value::Null);

        let anthropic_with = |reason: &str| {
            let mut resp = anthropic_message();
            resp["stop_reason"] = json!(reason);
            anthropic_to_openai_response(&resp, "m", CREATED).expect("ok")["choices"][0]
                ["finish_reason"]
                .clone()
        };
        for (stop, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("pause_turn", "stop"),
            ("max_tokens", "length"),
            ("model_context_window_exceeded", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
        ] {
            assert_eq!(anthropic_with(stop), finish, "{stop}");
        }
    }

    #[test]
    fn a_response_survives_a_round_trip() {
        let original = openai_completion();
        let anthropic = openai_to_anthropic_response(&original, "claude").expect("ok");
        let back = anthropic_to_openai_response(&anthropic, "gpt-4.1-2025-04-14", 1_741_570_283)
            .expect("ok");
        assert_eq!(back["id"], original["id"]);
        assert_eq!(back["choices"][0]["message"]["content"], "Let me check.");
        assert_eq!(
            back["choices"][0]["message"]["tool_calls"],
            original["choices"][0]["message"]["tool_calls"]
        );
        assert_eq!(back["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            back["usage"],
            json!({"prompt_tokens": 1117, "completion_tokens": 46, "total_tokens": 1163,
                   "prompt_tokens_details": {"cached_tokens": 1024}})
        );
    }

    #[test]
    fn a_text_only_answer_has_no_tool_calls_and_a_refusal_is_text() {
        let resp = json!({"id": "msg_1", "type": "message", "role": "assistant", "content": [],
                          "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 0}});
        let out = anthropic_to_openai_response(&resp, "m", CREATED).expect("ok");
        assert_eq!(
            out["choices"][0]["message"],
            json!({"role": "assistant", "content": null, "refusal": null})
        );
        let refused = json!({"id": "c", "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": null, "refusal": "I can't help with that."}}]});
        let out = openai_to_anthropic_response(&refused, "m").expect("ok");
        assert_eq!(
            out["content"],
            json!([{"type": "text", "text": "I can't help with that."}])
        );
        assert_eq!(
            out["usage"],
            json!({"input_tokens": 0, "cache_creation_input_tokens": 0,
                   "cache_read_input_tokens": 0, "output_tokens": 0})
        );
    }

    #[test]
    fn malformed_responses_are_errors() {
        assert_eq!(
            openai_to_anthropic_response(&json!({"choices": []}), "m")
                .expect_err("no choices")
                .message,
            "the provider's response has no choices"
        );
        let mut bad_arguments = openai_completion();
        bad_arguments["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] =
            json!("{\"city\": ");
        assert!(
            openai_to_anthropic_response(&bad_arguments, "m")
                .expect_err("bad arguments")
                .message
                .starts_with("choices[0].message.tool_calls[0]: the arguments are not valid JSON")
        );
        assert_eq!(
            anthropic_to_openai_response(&json!({"id": "x"}), "m", CREATED)
                .expect_err("no content")
                .to_string(),
            "the provider's response has no content"
        );
    }

    // ---- streams: OpenAI → Anthropic ----

    fn openai_chunk(delta: Value, finish_reason: Value) -> Value {
        json!({
            "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
            "object": "chat.completion.chunk",
            "created": 1_741_569_952,
            "model": "gpt-4.1-2025-04-14",
            "service_tier": "default",
            "system_fingerprint": "fp_b376dfbbd5",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
            "usage": null
        })
    }

    fn openai_usage_chunk() -> Value {
        json!({
            "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
            "object": "chat.completion.chunk",
            "created": 1_741_569_952,
            "model": "gpt-4.1-2025-04-14",
            "choices": [],
            "usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
                      "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                    "accepted_prediction_tokens": 0,
                                                    "rejected_prediction_tokens": 0}}
        })
    }

    /// What OpenAI streams for a short answer with `stream_options.include_usage`.
    fn openai_text_stream() -> Vec<Value> {
        vec![
            openai_chunk(
                json!({"role": "assistant", "content": "", "refusal": null}),
                json!(null),
            ),
            openai_chunk(json!({"content": "Hello"}), json!(null)),
            openai_chunk(json!({"content": " there!"}), json!(null)),
            openai_chunk(json!({}), json!("stop")),
            openai_usage_chunk(),
        ]
    }

    /// What OpenAI streams for two parallel tool calls.
    fn openai_tool_stream() -> Vec<Value> {
        vec![
            openai_chunk(
                json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                    {"index": 0, "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "type": "function",
                     "function": {"name": "get_weather", "arguments": ""}}]}),
                json!(null),
            ),
            openai_chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"ci"}}]}),
                json!(null),
            ),
            openai_chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "ty\": \"Paris\"}"}}]}),
                json!(null),
            ),
            openai_chunk(
                json!({"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                                       "function": {"name": "get_time", "arguments": ""}}]}),
                json!(null),
            ),
            openai_chunk(
                json!({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
                json!(null),
            ),
            openai_chunk(json!({}), json!("tool_calls")),
            openai_usage_chunk(),
        ]
    }

    /// Pushes each chunk and returns the events each produced, then those of `finish`.
    fn o2a_stream(chunks: &[Value]) -> (Vec<Vec<(&'static str, Value)>>, OpenAiToAnthropicStream) {
        let mut stream = OpenAiToAnthropicStream::new("claude-alias");
        let mut per_chunk = Vec::new();
        for chunk in chunks {
            let mut out = Vec::new();
            stream.push(chunk, &mut out);
            per_chunk.push(out);
        }
        let mut out = Vec::new();
        stream.finish(&mut out);
        per_chunk.push(out);
        (per_chunk, stream)
    }

    fn message_start(id: &str) -> (&'static str, Value) {
        (
            "message_start",
            json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": "claude-alias",
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0, "output_tokens": 0}}}),
        )
    }

    fn block_start(index: u64, block: Value) -> (&'static str, Value) {
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": block}),
        )
    }

    fn block_delta(index: u64, delta: Value) -> (&'static str, Value) {
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": delta}),
        )
    }

    fn block_stop(index: u64) -> (&'static str, Value) {
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        )
    }

    #[test]
    fn an_openai_text_stream_becomes_anthropic_events_chunk_by_chunk() {
        let (events, stream) = o2a_stream(&openai_text_stream());
        let id = "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT";
        assert_eq!(
            events,
            vec![
                // The role chunk starts the message; its empty text opens no block.
                vec![message_start(id)],
                vec![
                    block_start(0, json!({"type": "text", "text": ""})),
                    block_delta(0, json!({"type": "text_delta", "text": "Hello"})),
                ],
                vec![block_delta(
                    0,
                    json!({"type": "text_delta", "text": " there!"})
                )],
                vec![block_stop(0)],
                // The usage-only chunk yields nothing by itself…
                vec![],
                // …and lands in the message_delta that finish() sends.
                vec![
                    (
                        "message_delta",
                        json!({"type": "message_delta",
                               "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                               "usage": {"input_tokens": 19, "cache_creation_input_tokens": 0,
                                         "cache_read_input_tokens": 0, "output_tokens": 10}})
                    ),
                    ("message_stop", json!({"type": "message_stop"})),
                ],
            ]
        );
        assert_eq!(
            stream.usage(),
            Some(Usage {
                prompt: 19,
                completion: 10
            })
        );
    }

    #[test]
    fn openai_parallel_tool_calls_stream_as_consecutive_tool_use_blocks() {
        let (events, _) = o2a_stream(&openai_tool_stream());
        let events: Vec<(&str, Value)> = events.into_iter().flatten().collect();
        let id = "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT";
        assert_eq!(
            events[..10],
            [
                message_start(id),
                block_start(
                    0,
                    json!({"type": "tool_use", "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA",
                           "name": "get_weather", "input": {}})
                ),
                block_delta(
                    0,
                    json!({"type": "input_json_delta", "partial_json": "{\"ci"})
                ),
                block_delta(
                    0,
                    json!({"type": "input_json_delta", "partial_json": "ty\": \"Paris\"}"})
                ),
                block_stop(0),
                block_start(
                    1,
                    json!({"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}})
                ),
                block_delta(1, json!({"type": "input_json_delta", "partial_json": "{}"})),
                block_stop(1),
                (
                    "message_delta",
                    json!({"type": "message_delta",
                           "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                           "usage": {"input_tokens": 19, "cache_creation_input_tokens": 0,
                                     "cache_read_input_tokens": 0, "output_tokens": 10}})
                ),
                ("message_stop", json!({"type": "message_stop"})),
            ]
        );
        assert_eq!(events.len(), 10);
    }

    #[test]
    fn text_before_a_tool_call_is_closed_before_the_tool_block_opens() {
        let chunks = [
            openai_chunk(
                json!({"role": "assistant", "content": "Let me look."}),
                json!(null),
            ),
            openai_chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                       "function": {"name": "look", "arguments": "{}"}}]}),
                json!(null),
            ),
            openai_chunk(json!({}), json!("tool_calls")),
        ];
        let (events, stream) = o2a_stream(&chunks);
        let names: Vec<&str> = events.iter().flatten().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        // No usage chunk came: the message_delta still has the output count Anthropic
        // clients require, and the stream reports no usage.
        let delta = &events.iter().flatten().nth(7).expect("message_delta").1;
        assert_eq!(delta["usage"], json!({"output_tokens": 0}));
        assert_eq!(stream.usage(), None);
    }

    #[test]
    fn an_openai_error_chunk_becomes_an_anthropic_error_event_and_ends_the_stream() {
        let chunks = [
            openai_chunk(json!({"role": "assistant", "content": "Hel"}), json!(null)),
            json!({"error": {"message": "The server had an error while processing your request.",
                             "type": "server_error", "param": null, "code": null}}),
            openai_chunk(json!({"content": "lo"}), json!(null)),
        ];
        let (events, _) = o2a_stream(&chunks);
        assert_eq!(
            events[1],
            vec![(
                "error",
                json!({"type": "error", "error": {"type": "api_error",
                       "message": "The server had an error while processing your request."}})
            )]
        );
        assert!(events[2].is_empty(), "nothing after the error");
        assert!(events[3].is_empty(), "finish owes nothing after an error");
    }

    #[test]
    fn a_cut_openai_stream_closes_with_a_null_stop_reason_and_finish_is_idempotent() {
        let mut stream = OpenAiToAnthropicStream::new("m");
        let mut out = Vec::new();
        stream.finish(&mut out);
        assert!(out.is_empty(), "no chunk ever came: the caller reports it");

        let mut stream = OpenAiToAnthropicStream::new("m");
        stream.push(
            &openai_chunk(json!({"content": "partial"}), json!(null)),
            &mut out,
        );
        out.clear();
        stream.finish(&mut out);
        let names: Vec<&str> = out.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            ["content_block_stop", "message_delta", "message_stop"]
        );
        assert_eq!(out[1].1["delta"]["stop_reason"], Value::Null);
        out.clear();
        stream.finish(&mut out);
        stream.push(
            &openai_chunk(json!({"content": "late"}), json!(null)),
            &mut out,
        );
        assert!(out.is_empty());
    }

    #[test]
    fn cached_prompt_tokens_become_cache_reads() {
        let mut usage = openai_usage_chunk();
        usage["usage"]["prompt_tokens_details"]["cached_tokens"] = json!(16);
        let (events, stream) = o2a_stream(&[openai_chunk(json!({}), json!("stop")), usage]);
        let delta = &events[2][0].1;
        assert_eq!(
            delta["usage"],
            json!({"input_tokens": 3, "cache_creation_input_tokens": 0,
                   "cache_read_input_tokens": 16, "output_tokens": 10})
        );
        assert_eq!(
            stream.usage(),
            Some(Usage {
                prompt: 19,
                completion: 10
            })
        );
    }

    // ---- streams: Anthropic → OpenAI ----

    /// Anthropic's stream for a text answer, as the bytes arrive (ping included).
    const ANTHROPIC_TEXT_SSE: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5-20250929\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"!\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );

    /// Anthropic's stream for extended thinking followed by a tool call.
    fn anthropic_tool_events() -> Vec<(&'static str, Value)> {
        vec![
            (
                "message_start",
                json!({"type": "message_start", "message": {
                "id": "msg_014p7gG3wDgGV9EUtLvnow3U", "type": "message", "role": "assistant",
                "model": "claude-sonnet-4-5-20250929", "content": [], "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": 472, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 100, "output_tokens": 2}}}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "thinking", "thinking": ""}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "Need the weather tool."}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM"}}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 1,
                "content_block": {"type": "text", "text": ""}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1,
                "delta": {"type": "text_delta", "text": "Checking."}}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 1}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 2,
                "content_block": {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                                  "name": "get_weather", "input": {}}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": ""}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": "{\"location\":"}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": " \"San Francisco, CA\"}"}}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 2}),
            ),
            (
                "message_delta",
                json!({"type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                "usage": {"output_tokens": 89}}),
            ),
            ("message_stop", json!({"type": "message_stop"})),
        ]
    }

    fn sse_events(raw: &str) -> Vec<(String, Value)> {
        let mut parser = SseParser::new(1 << 16);
        parser.push(raw.as_bytes()).expect("valid stream");
        std::iter::from_fn(|| parser.next_event())
            .map(|event| {
                (
                    event.event.unwrap_or_default(),
                    serde_json::from_str(&event.data).expect("json data"),
                )
            })
            .collect()
    }

    fn a2o_stream(
        events: &[(String, Value)],
        include_usage: bool,
    ) -> (Vec<Vec<Value>>, AnthropicToOpenAiStream) {
        let mut stream = AnthropicToOpenAiStream::new("gpt-alias", CREATED, include_usage);
        let mut per_event = Vec::new();
        for (name, data) in events {
            let mut out = Vec::new();
            stream.push(name, data, &mut out);
            per_event.push(out);
        }
        let mut out = Vec::new();
        stream.finish(&mut out);
        per_event.push(out);
        (per_event, stream)
    }

    fn owned(events: Vec<(&'static str, Value)>) -> Vec<(String, Value)> {
        events
            .into_iter()
            .map(|(name, data)| (name.to_owned(), data))
            .collect()
    }

    fn chunk(delta: Value, finish_reason: Value) -> Value {
        json!({"id": "msg_01XFDUDYJgAACzvnptvVoYEL", "object": "chat.completion.chunk",
               "created": CREATED, "model": "gpt-alias",
               "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
               "usage": null})
    }

    #[test]
    fn an_anthropic_text_stream_becomes_openai_chunks_event_by_event() {
        let events = sse_events(ANTHROPIC_TEXT_SSE);
        let (chunks, stream) = a2o_stream(&events, true);
        assert_eq!(
            chunks,
            vec![
                vec![chunk(
                    json!({"role": "assistant", "content": ""}),
                    json!(null)
                )],
                vec![],
                vec![],
                vec![chunk(json!({"content": "Hello"}), json!(null))],
                vec![chunk(json!({"content": "!"}), json!(null))],
                vec![],
                vec![chunk(json!({}), json!("stop"))],
                vec![
                    json!({"id": "msg_01XFDUDYJgAACzvnptvVoYEL", "object": "chat.completion.chunk",
                            "created": CREATED, "model": "gpt-alias", "choices": [],
                            "usage": {"prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40,
                                      "prompt_tokens_details": {"cached_tokens": 0}}})
                ],
                vec![],
            ]
        );
        assert_eq!(
            stream.usage(),
            Some(Usage {
                prompt: 25,
                completion: 15
            })
        );
        assert!(strip_usage_chunk(&chunks[7][0]));
    }

    #[test]
    fn without_include_usage_there_is_no_usage_chunk_but_usage_is_still_counted() {
        let events = sse_events(ANTHROPIC_TEXT_SSE);
        let (chunks, stream) = a2o_stream(&events, false);
        let all: Vec<Value> = chunks.into_iter().flatten().collect();
        assert_eq!(all.len(), 4);
        assert!(all.iter().all(|c| c.get("usage").is_none()));
        assert!(all.iter().all(|c| !strip_usage_chunk(c)));
        assert_eq!(stream.usage().map(|u| u.total()), Some(40));
    }

    #[test]
    fn an_anthropic_tool_stream_with_thinking_becomes_tool_call_chunks() {
        let (chunks, stream) = a2o_stream(&owned(anthropic_tool_events()), false);
        let with_id = |mut c: Value| {
            c["id"] = json!("msg_014p7gG3wDgGV9EUtLvnow3U");
            if let Some(c) = c.as_object_mut() {
                c.remove("usage");
            }
            c
        };
        let all: Vec<Value> = chunks.into_iter().flatten().collect();
        assert_eq!(
            all,
            vec![
                with_id(chunk(
                    json!({"role": "assistant", "content": ""}),
                    json!(null)
                )),
                with_id(chunk(json!({"content": "Checking."}), json!(null))),
                with_id(chunk(
                    json!({"tool_calls": [{"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                                           "type": "function",
                                           "function": {"name": "get_weather", "arguments": ""}}]}),
                    json!(null)
                )),
                with_id(chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"location\":"}}]}),
                    json!(null)
                )),
                with_id(chunk(
                    json!({"tool_calls": [{"index": 0,
                                           "function": {"arguments": " \"San Francisco, CA\"}"}}]}),
                    json!(null)
                )),
                with_id(chunk(json!({}), json!("tool_calls"))),
            ]
        );
        assert_eq!(
            stream.usage(),
            Some(Usage {
                prompt: 572,
                completion: 89
            })
        );
    }

    #[test]
    fn a_newer_message_delta_with_input_tokens_updates_the_prompt() {
        let mut events = owned(anthropic_tool_events());
        events[13].1["usage"] = json!({"input_tokens": 500, "cache_creation_input_tokens": 0,
                                        "cache_read_input_tokens": 100, "output_tokens": 89});
        let (_, stream) = a2o_stream(&events, true);
        assert_eq!(
            stream.usage(),
            Some(Usage {
                prompt: 600,
                completion: 89
            })
        );
    }

    #[test]
    fn an_anthropic_error_event_becomes_an_openai_error_chunk_and_ends_the_stream() {
        let mut events = owned(anthropic_tool_events());
        events.truncate(2);
        events.push((
            "error".to_owned(),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ));
        events.push(("message_stop".to_owned(), json!({"type": "message_stop"})));
        let (chunks, _) = a2o_stream(&events, true);
        assert_eq!(
            chunks[2],
            vec![
                json!({"error": {"message": "Overloaded", "type": "server_error",
                                  "param": null, "code": null}})
            ]
        );
        assert!(chunks[3].is_empty() && chunks[4].is_empty());
    }

    #[test]
    fn a_cut_anthropic_stream_gets_its_usage_at_finish_but_no_invented_finish_reason() {
        let mut events = owned(anthropic_tool_events());
        events.truncate(7);
        let (chunks, _) = a2o_stream(&events, true);
        let last = chunks.last().expect("finish output");
        assert_eq!(last.len(), 1);
        assert!(strip_usage_chunk(&last[0]));
        assert_eq!(last[0]["usage"]["prompt_tokens"], 572);
        assert!(
            chunks
                .iter()
                .flatten()
                .all(|c| c["choices"][0]["finish_reason"].is_null())
        );
        // finish again: nothing more.
        let mut stream = AnthropicToOpenAiStream::new("m", CREATED, true);
        let mut out = Vec::new();
        stream.finish(&mut out);
        stream.finish(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn the_event_type_falls_back_to_the_sse_event_name() {
        let mut stream = AnthropicToOpenAiStream::new("m", CREATED, false);
        let mut out = Vec::new();
        stream.push(
            "content_block_delta",
            &json!({"index": 0,
            "delta": {"type": "text_delta", "text": "x"}}),
            &mut out,
        );
        assert_eq!(out.len(), 2, "role chunk, then the text");
        assert_eq!(out[1]["choices"][0]["delta"]["content"], "x");
    }

    // ---- streams: round trips and guardrail access ----

    /// (text, [(id, name, arguments)], finish_reason, usage) of an OpenAI chunk stream.
    type StreamSummary = (String, Vec<(String, String, String)>, Value, Option<Value>);

    fn summarize_openai(chunks: &[Value]) -> StreamSummary {
        let mut text = String::new();
        let mut calls: Vec<(String, String, String)> = Vec::new();
        let mut finish = Value::Null;
        let mut usage = None;
        for chunk in chunks {
            if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
                usage = Some(
                    json!({"prompt": u["prompt_tokens"], "completion": u["completion_tokens"]}),
                );
            }
            let Some(choice) = chunk["choices"].get(0) else {
                continue;
            };
            text.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
            for call in choice["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let index = call["index"].as_u64().expect("index") as usize;
                if calls.len() <= index {
                    calls.resize(index + 1, Default::default());
                }
                if let Some(id) = call["id"].as_str() {
                    calls[index].0 = id.to_owned();
                }
                if let Some(name) = call["function"]["name"].as_str() {
                    calls[index].1 = name.to_owned();
                }
                calls[index]
                    .2
                    .push_str(call["function"]["arguments"].as_str().unwrap_or_default());
            }
            if !choice["finish_reason"].is_null() {
                finish = choice["finish_reason"].clone();
            }
        }
        (text, calls, finish, usage)
    }

    #[test]
    fn streams_survive_openai_to_anthropic_to_openai() {
        for original in [openai_text_stream(), openai_tool_stream()] {
            let mut there = OpenAiToAnthropicStream::new("claude");
            let mut back = AnthropicToOpenAiStream::new("gpt-4.1-2025-04-14", CREATED, true);
            let mut events = Vec::new();
            let mut chunks = Vec::new();
            // Event by event, as a proxy relays them: nothing waits for the end.
            for chunk in &original {
                events.clear();
                there.push(chunk, &mut events);
                for (name, data) in &events {
                    back.push(name, data, &mut chunks);
                }
            }
            events.clear();
            there.finish(&mut events);
            for (name, data) in &events {
                back.push(name, data, &mut chunks);
            }
            back.finish(&mut chunks);
            assert_eq!(summarize_openai(&chunks), summarize_openai(&original));
            assert_eq!(there.usage(), back.usage());
        }
    }

    #[test]
    fn streams_survive_anthropic_to_openai_to_anthropic_through_sse_bytes() {
        // Anthropic bytes → events → OpenAI chunks written as SSE → parsed → Anthropic events.
        let mut to_openai = AnthropicToOpenAiStream::new("gpt", CREATED, true);
        let mut wire = Vec::new();
        let mut chunks = Vec::new();
        for (name, data) in sse_events(ANTHROPIC_TEXT_SSE) {
            chunks.clear();
            to_openai.push(&name, &data, &mut chunks);
            for chunk in &chunks {
                write_event(&mut wire, None, &chunk.to_string());
            }
        }
        write_event(&mut wire, None, "[DONE]");
        let mut parser = SseParser::new(1 << 16);
        parser.push(&wire).expect("valid");
        let mut to_anthropic = OpenAiToAnthropicStream::new("claude");
        let mut events = Vec::new();
        while let Some(event) = parser.next_event() {
            if event.data == "[DONE]" {
                to_anthropic.finish(&mut events);
                break;
            }
            let chunk: Value = serde_json::from_str(&event.data).expect("json");
            to_anthropic.push(&chunk, &mut events);
        }
        let text: String = events
            .iter()
            .filter_map(|(_, data)| data["delta"]["text"].as_str())
            .collect();
        assert_eq!(text, "Hello!");
        let stop = events
            .iter()
            .find(|(name, _)| *name == "message_delta")
            .expect("delta");
        assert_eq!(stop.1["delta"]["stop_reason"], "end_turn");
        assert_eq!(to_anthropic.usage(), to_openai.usage());
        assert_eq!(events.last().map(|(name, _)| *name), Some("message_stop"));
    }

    #[test]
    fn translated_events_expose_their_text_to_guardrails() {
        let (events, _) = o2a_stream(&openai_text_stream());
        let mut masked = String::new();
        for (_, mut data) in events.into_iter().flatten() {
            if let Some(text) = api::text_delta_mut(Api::Anthropic, &mut data) {
                masked.push_str(text);
            }
        }
        assert_eq!(masked, "Hello there!");
        let (chunks, _) = a2o_stream(&sse_events(ANTHROPIC_TEXT_SSE), true);
        let mut seen = String::new();
        let mut ended = false;
        for mut chunk in chunks.into_iter().flatten() {
            if let Some(text) = api::text_delta_mut(Api::OpenAi, &mut chunk) {
                seen.push_str(text);
            }
            ended |= api::ends_text(Api::OpenAi, &chunk);
        }
        assert_eq!(seen, "Hello!");
        assert!(ended);
    }

    #[test]
    fn strip_usage_chunk_recognises_only_the_usage_only_chunk() {
        assert!(strip_usage_chunk(&openai_usage_chunk()));
        assert!(!strip_usage_chunk(&openai_chunk(
            json!({"content": "x"}),
            json!(null)
        )));
        assert!(!strip_usage_chunk(&json!({"choices": [], "usage": null})));
        assert!(!strip_usage_chunk(&json!({"usage": {"prompt_tokens": 1}})));
        let mut with_usage = openai_chunk(json!({}), json!("stop"));
        with_usage["usage"] = json!({"prompt_tokens": 1, "completion_tokens": 1});
        assert!(!strip_usage_chunk(&with_usage), "a choice is still there");
    }
}
