//! A streamed event read without building a document: what the relay needs from one
//! provider event when it passes it on in the same API (usage, the text delta and where it
//! sits in the bytes, whether the text ends, whether it is OpenAI's usage-only chunk).
//!
//! The relay's per-event cost is dominated by building a `serde_json::Value` (every key a
//! map insert) and writing it back out. An event in the client's own API needs neither: the
//! relay reads these few fields with typed, borrowing deserialization (unknown fields are
//! skipped, strings borrowed), passes the provider's bytes through untouched, and when
//! `pii_masking` changes the text, replaces just the text's JSON string in place.
//!
//! [`EventView::parse`] answers exactly what [`api::usage_of`](super::api::usage_of),
//! [`api::text_delta`](super::api::text_delta), [`api::ends_text`](super::api::ends_text)
//! and [`translate::strip_usage_chunk`](super::translate::strip_usage_chunk) answer on the
//! parsed document, or `None` where it cannot be sure (a field of an unexpected type, a
//! duplicate key, invalid JSON): the caller then takes the document path, so the fast path
//! never decides differently (the tests below hold it to that).

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::api::{Api, Usage};

/// What the relay reads from one event.
#[derive(Debug, PartialEq, Eq)]
pub struct EventView<'a> {
    /// The usage the event reports ([`api::usage_of`](super::api::usage_of)).
    pub usage: Option<Usage>,
    /// The text delta ([`api::text_delta`](super::api::text_delta)).
    pub text: Option<TextDelta<'a>>,
    /// No more text of the current block follows ([`api::ends_text`](super::api::ends_text)).
    pub ends_text: bool,
    /// OpenAI's usage-only chunk
    /// ([`strip_usage_chunk`](super::translate::strip_usage_chunk)).
    pub usage_only: bool,
    /// Anthropic: the event's `index` (the content block it belongs to).
    pub index: Option<u64>,
}

/// A text delta: the text, and the byte range of its JSON string (quotes included) in the
/// event's data, which [`with_text`] replaces.
#[derive(Debug, PartialEq, Eq)]
pub struct TextDelta<'a> {
    pub text: Cow<'a, str>,
    pub span: Range<usize>,
}

impl<'a> EventView<'a> {
    /// Reads `data` (one event's `data`, in `api`); `None` when only the document path can
    /// read it the same way.
    pub fn parse(api: Api, data: &'a str) -> Option<EventView<'a>> {
        match api {
            Api::OpenAi => {
                let Obj(chunk): Obj<OpenAiChunk<'_>> = serde_json::from_str(data).ok()?;
                let first = chunk.choices.as_ref().and_then(|c| c.first());
                let text = match first.and_then(|c| c.0.delta.as_ref()?.0.content) {
                    Some(raw) => text_delta(data, raw)?,
                    None => None,
                };
                let usage = chunk.usage.as_ref().and_then(|u| u.0.usage());
                Some(EventView {
                    ends_text: chunk
                        .choices
                        .as_ref()
                        .is_some_and(|c| c.iter().any(|c| c.0.finish_reason.is_some())),
                    usage_only: chunk.choices.as_ref().is_some_and(Vec::is_empty)
                        && chunk.usage.is_some(),
                    usage,
                    text,
                    index: None,
                })
            }
            Api::Anthropic => {
                let Obj(event): Obj<AnthropicEvent<'_>> = serde_json::from_str(data).ok()?;
                let kind = event.kind.as_deref();
                let text = match (kind, event.delta.as_ref().map(|d| &d.0)) {
                    (Some("content_block_delta"), Some(delta))
                        if delta.kind.as_deref() == Some("text_delta") =>
                    {
                        match delta.text {
                            Some(raw) => text_delta(data, raw)?,
                            None => None,
                        }
                    }
                    _ => None,
                };
                let usage = match (&event.usage, &event.message) {
                    (Some(u), _) => u.0.usage(),
                    (None, Some(m)) => m.0.usage.as_ref().and_then(|u| u.0.usage()),
                    (None, None) => None,
                };
                Some(EventView {
                    usage,
                    text,
                    ends_text: matches!(
                        kind,
                        Some("content_block_stop" | "message_delta" | "message_stop")
                    ),
                    usage_only: false,
                    index: event.index,
                })
            }
        }
    }
}

/// `data` with the text delta's JSON string replaced by `text`, written into `out`.
pub fn with_text(out: &mut String, data: &str, span: &Range<usize>, text: &str) {
    out.clear();
    out.reserve(data.len() + text.len());
    out.push_str(&data[..span.start]);
    push_json_string(out, text);
    out.push_str(&data[span.end..]);
}

/// `text` as a JSON string literal (what `serde_json` writes: `"`, `\` and control
/// characters escaped, everything else as is).
fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in text.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&text[start..i]);
        if escape.is_empty() {
            out.push_str(&format!("\\u{b:04x}"));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&text[start..]);
    out.push('"');
}

/// The text of `raw` (a value borrowed from `data`) and its span; `Some(None)` when it is not
/// a string (no text delta, as on the document path), `None` when it cannot be located.
#[allow(clippy::option_option)]
fn text_delta<'a>(data: &'a str, raw: &'a RawValue) -> Option<Option<TextDelta<'a>>> {
    let json = raw.get();
    if !json.starts_with('"') {
        return Some(None);
    }
    let start = (json.as_ptr() as usize).checked_sub(data.as_ptr() as usize)?;
    let span = start..start + json.len();
    if data.get(span.clone()) != Some(json) {
        return None;
    }
    let text = match serde_json::from_str::<&str>(json) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(serde_json::from_str::<String>(json).ok()?),
    };
    Some(Some(TextDelta { text, span }))
}

/// `T`, read only from a JSON object. Derived `Deserialize` also reads a struct from an array
/// (`[a, b]` as its fields in order), where the document path sees no fields at all.
struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Obj<T>, D::Error> {
        struct Only<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Only<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(Obj)
            }
        }
        d.deserialize_map(Only(PhantomData))
    }
}

#[derive(Deserialize)]
struct OpenAiChunk<'a> {
    #[serde(borrow, default)]
    choices: Option<Vec<Obj<OpenAiChoice<'a>>>>,
    #[serde(default)]
    usage: Option<Obj<OpenAiUsage>>,
}

#[derive(Deserialize)]
struct OpenAiChoice<'a> {
    #[serde(borrow, default)]
    delta: Option<Obj<OpenAiDelta<'a>>>,
    #[serde(default)]
    finish_reason: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct OpenAiDelta<'a> {
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct OpenAiUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

impl OpenAiUsage {
    fn usage(&self) -> Option<Usage> {
        Usage::openai(self.prompt_tokens, self.completion_tokens)
    }
}

#[derive(Deserialize)]
struct AnthropicEvent<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    delta: Option<Obj<AnthropicDelta<'a>>>,
    #[serde(default)]
    usage: Option<Obj<AnthropicUsage>>,
    #[serde(default)]
    message: Option<Obj<AnthropicMessage>>,
}

#[derive(Deserialize)]
struct AnthropicDelta<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct AnthropicMessage {
    #[serde(default)]
    usage: Option<Obj<AnthropicUsage>>,
}

#[derive(Deserialize)]
struct AnthropicUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

impl AnthropicUsage {
    fn usage(&self) -> Option<Usage> {
        Usage::anthropic(
            [
                self.input_tokens,
                self.cache_creation_input_tokens,
                self.cache_read_input_tokens,
            ],
            self.output_tokens,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::api::{ends_text, text_delta as dom_text, usage_of};
    use crate::ai::translate::strip_usage_chunk;
    use serde_json::Value;

    /// The fast path agrees with the document path, or declines.
    fn agrees(api: Api, data: &str) -> Option<EventView<'_>> {
        let view = EventView::parse(api, data);
        let Ok(doc) = serde_json::from_str::<Value>(data) else {
            assert!(view.is_none(), "invalid JSON must decline: {data}");
            return None;
        };
        let view = view?;
        assert_eq!(view.usage, usage_of(api, &doc), "usage of {data}");
        assert_eq!(
            view.text.as_ref().map(|t| t.text.as_ref()),
            dom_text(api, &doc),
            "text of {data}"
        );
        assert_eq!(view.ends_text, ends_text(api, &doc), "ends_text of {data}");
        if api == Api::OpenAi {
            assert_eq!(
                view.usage_only,
                strip_usage_chunk(&doc),
                "usage_only {data}"
            );
        } else {
            assert_eq!(view.index, doc.get("index").and_then(Value::as_u64));
        }
        if let Some(t) = &view.text {
            // Replacing the text with itself gives back an equal document.
            let mut out = String::new();
            with_text(&mut out, data, &t.span, &t.text);
            let again: Value = serde_json::from_str(&out).expect("still JSON");
            assert_eq!(again, doc, "{data} → {out}");
        }
        Some(view)
    }

    #[test]
    fn openai_chunks_read_as_the_document_path_reads_them() {
        let cases = [
            r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"a \"quoted\" \\ line\nnext é ✓"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":null},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"x"}},{"index":1,"delta":{"content":"y"},"finish_reason":"length"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":64,"total_tokens":76,"prompt_tokens_details":{"cached_tokens":0}}}"#,
            r#"{"choices":[],"usage":null}"#,
            r#"{"choices":[],"usage":{}}"#,
            r#"{"choices":[{"delta":{"content":"t"},"finish_reason":null}],"usage":{"completion_tokens":3}}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":"}}]}}]}"#,
            r#"{"choices":[{"delta":{"content":[{"type":"text","text":"parts"}]}}]}"#,
            r#"{"object":"chat.completion.chunk"}"#,
            r#"  {  "choices" : [ { "delta" : { "content" : "spaced" } } ] }  "#,
        ];
        for data in cases {
            assert!(agrees(Api::OpenAi, data).is_some(), "fast path for {data}");
        }
        let view = agrees(Api::OpenAi, cases[1]).expect("read");
        assert!(matches!(view.text.map(|t| t.text), Some(Cow::Owned(_))));
        let view = agrees(Api::OpenAi, cases[0]).expect("read");
        assert!(matches!(
            view.text.map(|t| t.text),
            Some(Cow::Borrowed("Hel"))
        ));
    }

    #[test]
    fn anthropic_events_read_as_the_document_path_reads_them() {
        let cases = [
            r#"{"type":"message_start","message":{"id":"m","type":"message","role":"assistant","content":[],"model":"c","usage":{"input_tokens":25,"cache_read_input_tokens":5,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi \"there\""}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\""}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":null,"message":{"usage":{"input_tokens":3}}}"#,
            r#"{"type":"message_stop"}"#,
            r#"{"type":"ping"}"#,
        ];
        for data in cases {
            assert!(
                agrees(Api::Anthropic, data).is_some(),
                "fast path for {data}"
            );
        }
    }

    #[test]
    fn what_only_the_document_path_reads_the_same_way_is_declined() {
        for (api, data) in [
            (
                Api::OpenAi,
                r#"{"choices":[{"delta":{"content":"a"}}],"choices":[]}"#,
            ),
            (
                Api::OpenAi,
                r#"{"choices":[],"usage":{"prompt_tokens":1.5}}"#,
            ),
            (
                Api::OpenAi,
                r#"{"choices":[],"usage":{"prompt_tokens":-1}}"#,
            ),
            (Api::OpenAi, r#"{"choices":{"0":{}}}"#),
            (Api::OpenAi, r#"{"choices":[{"delta":"x"}]}"#),
            (Api::OpenAi, r#"{"choices":[{"delta":{"content":"a"}}"#),
            (Api::OpenAi, "[1,2]"),
            (Api::OpenAi, "[null,null]"),
            (Api::OpenAi, r#"{"choices":[[{"content":"x"}]]}"#),
            (Api::OpenAi, r#"{"choices":[],"usage":[]}"#),
            (Api::OpenAi, r#"{"choices":[],"usage":5}"#),
            (
                Api::Anthropic,
                r#"{"type":"message_start","message":[{"input_tokens":1}]}"#,
            ),
            (Api::Anthropic, r#"{"type":7}"#),
            (
                Api::Anthropic,
                r#"{"type":"content_block_delta","index":0.5}"#,
            ),
            (Api::Anthropic, r#"{"usage":"lots"}"#),
        ] {
            // Declining is always safe; agreeing is checked by `agrees` when it reads.
            let _ = agrees(api, data);
            assert!(
                EventView::parse(api, data).is_none(),
                "{data} must take the document path"
            );
        }
    }

    #[test]
    fn json_strings_are_written_as_serde_json_writes_them() {
        for text in [
            "plain",
            "q\"b\\s",
            "nl\n\r\t\u{8}\u{c}",
            "\u{1}\u{1f} é ✓ 😀",
            "",
        ] {
            let mut out = String::new();
            push_json_string(&mut out, text);
            assert_eq!(out, serde_json::to_string(text).expect("string"));
        }
    }
}
