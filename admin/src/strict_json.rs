//! Strict parsing of admin request bodies: JSON that two parsers could read differently is
//! refused instead of guessed at.
//!
//! `serde_json` (like most parsers) lets the last of two equal keys win, while others keep
//! the first or fail; a proxy or audit log in front of the admin API that reads
//! `{"path": "/public/*", "path": "/admin/*"}` differently from us would approve one
//! configuration and journal another. So before a body becomes a [`Value`], one pass over
//! the bytes checks every object at every depth — free-form plugin `settings` and service
//! `metadata` included — for a key it has already seen (compared after unescaping, so
//! `"name"` and `"n\u0061me"` are the same key), and refuses nesting deeper than
//! [`MAX_JSON_DEPTH`] before `serde_json`'s own recursion limit (128) could be reached.
//! Errors name the object's field path in the style validation uses
//! (`required_plugins[0].settings: duplicate key "limits"`) and the parser's position.
//!
//! The check is a serde [`Visitor`] driven by `serde_json`'s own deserializer, so syntax is
//! judged exactly as before; the body is then parsed again into a [`Value`] (at most 1 MiB,
//! on the admin thread — simpler than re-implementing `Value`'s construction here).

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::error::Category;
use shardgate_core::model::limits::MAX_JSON_DEPTH;

/// Longest key or path segment an error message repeats, in characters.
const SHOWN_CHARS: usize = 64;

/// Why a request body was not accepted as JSON.
#[derive(Debug)]
pub enum BodyError {
    /// Not JSON at all: `serde_json`'s message, with line and column.
    Malformed(serde_json::Error),
    /// Valid JSON, but ambiguous (a duplicate key) or nested too deeply: the field path,
    /// what is wrong, and the line and column.
    Refused(serde_json::Error),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Malformed(e) => write!(f, "malformed JSON: {e}"),
            BodyError::Refused(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for BodyError {}

/// Parses `body` into a [`Value`], refusing duplicate keys and nesting deeper than
/// [`MAX_JSON_DEPTH`] anywhere in it.
pub fn parse(body: &[u8]) -> Result<Value, BodyError> {
    // Only our own refusals are `Category::Data` errors: a `Value` accepts any JSON.
    let classify = |e: serde_json::Error| match e.classify() {
        Category::Data => BodyError::Refused(e),
        Category::Io | Category::Syntax | Category::Eof => BodyError::Malformed(e),
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut path = Vec::new();
    Strict { path: &mut path }
        .deserialize(&mut de)
        .map_err(classify)?;
    de.end().map_err(classify)?;
    serde_json::from_slice(body).map_err(classify)
}

/// One step of a field path: an object key or an array index.
enum Segment {
    Key(String),
    Index(usize),
}

/// `a.b[0].c`, the style of [`shardgate_core::model::Invalid`] paths; long keys are cut.
struct PathDisplay<'a>(&'a [Segment]);

impl fmt::Display for PathDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(&shown(key))?;
                }
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// `text` cut to [`SHOWN_CHARS`] characters, so an error never repeats a huge key.
fn shown(text: &str) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// `"<path>: <message>"`, or just the message at the top level.
fn refusal<E: de::Error>(path: &[Segment], message: fmt::Arguments<'_>) -> E {
    if path.is_empty() {
        E::custom(message)
    } else {
        E::custom(format_args!("{}: {message}", PathDisplay(path)))
    }
}

/// Visits one value at `path`, recursing into objects and arrays; builds nothing.
struct Strict<'p> {
    path: &'p mut Vec<Segment>,
}

impl Strict<'_> {
    /// Called on entering an object or array; the top-level value is level 1.
    fn enter<E: de::Error>(&self) -> Result<(), E> {
        if self.path.len() >= MAX_JSON_DEPTH {
            return Err(refusal(
                self.path,
                format_args!(
                    "nested too deeply: more than {MAX_JSON_DEPTH} levels of objects and arrays"
                ),
            ));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.enter()?;
        let path = self.path;
        for index in 0.. {
            path.push(Segment::Index(index));
            let more = seq.next_element_seed(Strict { path: &mut *path })?;
            path.pop();
            if more.is_none() {
                break;
            }
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.enter()?;
        let path = self.path;
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                return Err(refusal(
                    path,
                    format_args!("duplicate key \"{}\"", shown(&key).escape_debug()),
                ));
            }
            path.push(Segment::Key(key));
            map.next_value_seed(Strict { path: &mut *path })?;
            if let Some(Segment::Key(key)) = path.pop() {
                seen.insert(key);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(body: &str) -> String {
        match parse(body.as_bytes()) {
            Err(BodyError::Refused(e)) => e.to_string(),
            other => panic!("expected a refusal for {body}, got {other:?}"),
        }
    }

    #[test]
    fn a_duplicate_top_level_key_is_refused_by_name() {
        let error = refused(r#"{"name":"a","name":"b"}"#);
        assert!(
            error.starts_with(r#"duplicate key "name" at line 1 column"#),
            "{error}"
        );
    }

    #[test]
    fn a_duplicate_key_inside_plugin_settings_is_refused_with_its_path() {
        let body = r#"{"name":"g","required_plugins":[{"name":"rate_limiter",
            "settings":{"limits":{},"limits":{}}}]}"#;
        let error = refused(body);
        assert!(
            error.starts_with(r#"required_plugins[0].settings: duplicate key "limits""#),
            "{error}"
        );
    }

    #[test]
    fn keys_are_compared_after_unescaping() {
        let error = refused(r#"{"name":"a","n\u0061me":"b"}"#);
        assert!(error.starts_with(r#"duplicate key "name""#), "{error}");
    }

    #[test]
    fn equal_keys_in_different_objects_are_fine_and_the_value_is_unchanged() {
        let body = r#"{"a":{"x":1},"b":{"x":2},"c":[{"x":3},{"x":4}],"d":[1,"s",null,true,-2.5]}"#;
        let value = parse(body.as_bytes()).expect("no duplicates");
        assert_eq!(
            value,
            json!({"a":{"x":1},"b":{"x":2},"c":[{"x":3},{"x":4}],"d":[1,"s",null,true,-2.5]})
        );
    }

    #[test]
    fn nesting_at_the_maximum_depth_is_accepted_and_one_more_level_is_refused() {
        let nested = |levels: usize| format!("{}1{}", "{\"a\":".repeat(levels), "}".repeat(levels));
        parse(nested(MAX_JSON_DEPTH).as_bytes()).expect("at the maximum");
        let error = refused(&nested(MAX_JSON_DEPTH + 1));
        assert!(error.contains("nested too deeply"), "{error}");
        assert!(error.starts_with("a.a.a"), "names the path: {error}");
    }

    #[test]
    fn very_deep_arrays_are_refused_without_exhausting_the_stack() {
        let body = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let error = refused(&body);
        assert!(error.starts_with("[0][0][0]"), "{error}");
        assert!(error.contains("nested too deeply"), "{error}");
    }

    #[test]
    fn syntax_errors_stay_malformed_with_their_position() {
        for body in ["{\"a\": }", "{\"a\": 1} x", "", "{\"a\": 1"] {
            match parse(body.as_bytes()) {
                Err(e @ BodyError::Malformed(_)) => {
                    assert!(e.to_string().starts_with("malformed JSON: "), "{e}")
                }
                other => panic!("{body:?}: expected malformed, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_huge_duplicate_key_is_cut_in_the_message() {
        let key = "k".repeat(10_000);
        let error = refused(&format!(r#"{{"{key}":1,"{key}":2}}"#));
        assert!(error.len() < 200, "{error}");
        assert!(error.contains('…'), "{error}");
    }
}
