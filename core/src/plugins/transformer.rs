//! `request_transformer` and `response_transformer`: edit headers (and the request's query)
//! on the way through.
//!
//! Both share [`HeaderTransform`], applied in one fixed order whatever the JSON order of its
//! keys: **remove → rename → set → add**, header names compared without case. So `remove`
//! sees the headers as they arrived, `rename` cannot resurrect a removed header, `set`
//! overrides whatever the first two left, and `add` only fills gaps.
//!
//! Headers the gateway itself owns cannot be transformed, and are refused when the settings
//! are validated: the framing headers (`Content-Length`, `Transfer-Encoding`), whose wrong
//! value truncates bodies or smuggles requests; the hop-by-hop headers (`Connection`,
//! `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Upgrade`), which the proxy strips and
//! regenerates on each hop; and `Host`, which the proxy derives from the rule's
//! `preserve_host` and the target after routing has already used it.

use serde::Deserialize;

use super::{PluginDef, SettingDoc, field_value_problem, string_pairs, typed};
use crate::model::{Invalid, Stage, is_header_name};

/// Header names no transformation may touch (lower-case); see the module documentation.
const PROTECTED: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "host",
];

const REMOVE_DOC: &str = "Headers to delete, every occurrence; applied first.";
const RENAME_DOC: &str = "Renames, {\"from\": \"to\"}, applied second to every occurrence. Each \
                          header is renamed at most once, by its name before renaming: with \
                          {\"a\": \"b\", \"b\": \"c\"}, a becomes b and b becomes c (a never \
                          becomes c). Renaming to the same name in other letter case changes \
                          only the case.";
const SET_DOC: &str = "Headers to set, {\"name\": \"value\"}, applied third: the first \
                       occurrence is replaced, further ones removed, or the header is appended \
                       when absent.";
const ADD_DOC: &str = "Headers to add only when absent after the steps before, {\"name\": \
                       \"value\"}; applied last, so it never overrides what the client or \
                       upstream sent (use set_headers for that).";
const NAMES_TYPE: &str = "array of header names";
const PAIRS_TYPE: &str = "object of header name → value";

pub(super) const REQUEST_DEF: PluginDef = PluginDef {
    name: "request_transformer",
    description: "Edits the request before it goes upstream: removes, renames, sets and adds \
                  headers (in that order; names without case) and appends query parameters. \
                  Content-Length, Transfer-Encoding, Host and hop-by-hop headers cannot be \
                  transformed. Header values must not contain control characters.",
    stages: &[Stage::PreRequest],
    settings: &[
        SettingDoc {
            path: "remove_headers",
            ty: NAMES_TYPE,
            default: "[]",
            description: REMOVE_DOC,
        },
        SettingDoc {
            path: "rename_headers",
            ty: "object of header name → new header name",
            default: "{}",
            description: RENAME_DOC,
        },
        SettingDoc {
            path: "set_headers",
            ty: PAIRS_TYPE,
            default: "{}",
            description: SET_DOC,
        },
        SettingDoc {
            path: "add_headers",
            ty: PAIRS_TYPE,
            default: "{}",
            description: ADD_DOC,
        },
        SettingDoc {
            path: "add_query",
            ty: "object of parameter name → value (strings)",
            default: "{}",
            description: "Query parameters appended to the upstream request's query string, \
                          percent-encoded (a=1&b=x%20y), in configuration order. Parameters the \
                          client sent are kept, even with the same name, so an upstream that \
                          reads the first occurrence sees the client's value: pair with a \
                          rule the client cannot shape if that matters.",
        },
    ],
};

pub(super) const RESPONSE_DEF: PluginDef = PluginDef {
    name: "response_transformer",
    description: "Edits the upstream's response headers before they reach the client: \
                  removes, renames, sets and adds headers (in that order; names without case). \
                  Content-Length, Transfer-Encoding and hop-by-hop headers cannot be \
                  transformed. Header values must not contain control characters.",
    stages: &[Stage::PreResponse],
    settings: &[
        SettingDoc {
            path: "remove_headers",
            ty: NAMES_TYPE,
            default: "[]",
            description: REMOVE_DOC,
        },
        SettingDoc {
            path: "rename_headers",
            ty: "object of header name → new header name",
            default: "{}",
            description: RENAME_DOC,
        },
        SettingDoc {
            path: "set_headers",
            ty: PAIRS_TYPE,
            default: "{}",
            description: SET_DOC,
        },
        SettingDoc {
            path: "add_headers",
            ty: PAIRS_TYPE,
            default: "{}",
            description: ADD_DOC,
        },
    ],
};

/// The raw JSON shape of both transformers (`add_query` only for the request one).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    #[serde(default)]
    remove_headers: Vec<String>,
    #[serde(default, deserialize_with = "string_pairs")]
    rename_headers: Vec<(String, String)>,
    #[serde(default, deserialize_with = "string_pairs")]
    set_headers: Vec<(String, String)>,
    #[serde(default, deserialize_with = "string_pairs")]
    add_headers: Vec<(String, String)>,
    #[serde(default, deserialize_with = "string_pairs")]
    add_query: Vec<(String, String)>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResponse {
    #[serde(default)]
    remove_headers: Vec<String>,
    #[serde(default, deserialize_with = "string_pairs")]
    rename_headers: Vec<(String, String)>,
    #[serde(default, deserialize_with = "string_pairs")]
    set_headers: Vec<(String, String)>,
    #[serde(default, deserialize_with = "string_pairs")]
    add_headers: Vec<(String, String)>,
}

/// Header edits, validated; [`apply`](HeaderTransform::apply) runs them in the fixed order.
/// Lists keep configuration order; names are as configured (matching ignores case).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderTransform {
    pub remove_headers: Vec<String>,
    /// `(from, to)`.
    pub rename_headers: Vec<(String, String)>,
    pub set_headers: Vec<(String, String)>,
    pub add_headers: Vec<(String, String)>,
}

fn check_name(name: &str, path: impl Fn() -> String) -> Result<(), Invalid> {
    if !is_header_name(name) {
        return Err(Invalid::new(
            path(),
            format!("{name:?} is not an HTTP header name"),
        ));
    }
    if PROTECTED.iter().any(|p| p.eq_ignore_ascii_case(name)) {
        return Err(Invalid::new(
            path(),
            format!(
                "{name} is managed by the gateway (framing, hop-by-hop or Host) and cannot be \
                 transformed"
            ),
        ));
    }
    Ok(())
}

/// Refuses a name given twice in one object (JSON keys differing only in case).
fn check_unique(pairs: &[(String, String)], field: &str) -> Result<(), Invalid> {
    for (i, (name, _)) in pairs.iter().enumerate() {
        if pairs[..i].iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            return Err(Invalid::new(
                format!("{field}.{name}"),
                "given twice (header names ignore case)",
            ));
        }
    }
    Ok(())
}

impl HeaderTransform {
    fn new(
        remove_headers: Vec<String>,
        rename_headers: Vec<(String, String)>,
        set_headers: Vec<(String, String)>,
        add_headers: Vec<(String, String)>,
    ) -> Result<HeaderTransform, Invalid> {
        for (i, name) in remove_headers.iter().enumerate() {
            check_name(name, || format!("remove_headers[{i}]"))?;
        }
        for (from, to) in &rename_headers {
            let path = || format!("rename_headers.{from}");
            check_name(from, path)?;
            check_name(to, path)?;
        }
        check_unique(&rename_headers, "rename_headers")?;
        for (field, pairs) in [("set_headers", &set_headers), ("add_headers", &add_headers)] {
            for (name, value) in pairs {
                let path = || format!("{field}.{name}");
                check_name(name, path)?;
                if let Some(problem) = field_value_problem(value) {
                    return Err(Invalid::new(path(), problem));
                }
            }
            check_unique(pairs, field)?;
        }
        Ok(HeaderTransform {
            remove_headers,
            rename_headers,
            set_headers,
            add_headers,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.remove_headers.is_empty()
            && self.rename_headers.is_empty()
            && self.set_headers.is_empty()
            && self.add_headers.is_empty()
    }

    /// Applies the edits in order remove → rename → set → add, names compared without case.
    /// Headers not named keep their order; a set header takes its first occurrence's place;
    /// added (and absent set) headers go at the end in configuration order.
    pub fn apply(&self, headers: &mut Vec<(String, String)>) {
        if !self.remove_headers.is_empty() {
            headers.retain(|(name, _)| {
                !self
                    .remove_headers
                    .iter()
                    .any(|r| r.eq_ignore_ascii_case(name))
            });
        }
        for (name, _) in headers.iter_mut() {
            if let Some((_, to)) = self
                .rename_headers
                .iter()
                .find(|(from, _)| from.eq_ignore_ascii_case(name))
            {
                name.clone_from(to);
            }
        }
        for (name, value) in &self.set_headers {
            match headers
                .iter()
                .position(|(n, _)| n.eq_ignore_ascii_case(name))
            {
                Some(first) => {
                    headers[first] = (name.clone(), value.clone());
                    let mut i = 0;
                    headers.retain(|(n, _)| {
                        let keep = i <= first || !n.eq_ignore_ascii_case(name);
                        i += 1;
                        keep
                    });
                }
                None => headers.push((name.clone(), value.clone())),
            }
        }
        for (name, value) in &self.add_headers {
            if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                headers.push((name.clone(), value.clone()));
            }
        }
    }
}

/// `request_transformer` settings. Each setting's default and trade-off are
/// documented in its [`CATALOGUE`](super::CATALOGUE) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTransformerSettings {
    pub headers: HeaderTransform,
    add_query: Vec<(String, String)>,
    query_suffix: Option<String>,
}

/// Percent-encodes everything but RFC 3986 unreserved characters (so a space is `%20`, not
/// `+`, and `&`, `=`, `#` cannot break out of the parameter).
fn percent_encode(text: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

impl RequestTransformerSettings {
    pub(super) fn parse(settings: &serde_json::Value) -> Result<Self, Invalid> {
        let raw: RawRequest = typed(settings)?;
        let headers = HeaderTransform::new(
            raw.remove_headers,
            raw.rename_headers,
            raw.set_headers,
            raw.add_headers,
        )?;
        for (name, _) in &raw.add_query {
            if name.is_empty() {
                return Err(Invalid::new(
                    "add_query",
                    "a parameter name cannot be empty",
                ));
            }
        }
        if headers.is_empty() && raw.add_query.is_empty() {
            return Err(Invalid::new(
                "",
                "set at least one of remove_headers, rename_headers, set_headers, add_headers, \
                 add_query",
            ));
        }
        let query_suffix = (!raw.add_query.is_empty()).then(|| {
            let mut q = String::new();
            for (i, (name, value)) in raw.add_query.iter().enumerate() {
                if i > 0 {
                    q.push('&');
                }
                percent_encode(name, &mut q);
                q.push('=');
                percent_encode(value, &mut q);
            }
            q
        });
        Ok(RequestTransformerSettings {
            headers,
            add_query: raw.add_query,
            query_suffix,
        })
    }

    /// See [`HeaderTransform::apply`].
    pub fn apply(&self, headers: &mut Vec<(String, String)>) {
        self.headers.apply(headers);
    }

    /// The parameters to append, in configuration order, as configured (not encoded).
    pub fn add_query(&self) -> &[(String, String)] {
        &self.add_query
    }

    /// The encoded parameters to append (`a=1&b=x%20y`), computed once at parse time; None
    /// when there are none. The caller joins it with `&` to an existing query, else with `?`.
    pub fn query_suffix(&self) -> Option<&str> {
        self.query_suffix.as_deref()
    }
}

/// `response_transformer` settings. Each setting's default and trade-off are
/// documented in its [`CATALOGUE`](super::CATALOGUE) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseTransformerSettings {
    pub headers: HeaderTransform,
}

impl ResponseTransformerSettings {
    pub(super) fn parse(settings: &serde_json::Value) -> Result<Self, Invalid> {
        let raw: RawResponse = typed(settings)?;
        let headers = HeaderTransform::new(
            raw.remove_headers,
            raw.rename_headers,
            raw.set_headers,
            raw.add_headers,
        )?;
        if headers.is_empty() {
            return Err(Invalid::new(
                "",
                "set at least one of remove_headers, rename_headers, set_headers, add_headers",
            ));
        }
        Ok(ResponseTransformerSettings { headers })
    }

    /// See [`HeaderTransform::apply`].
    pub fn apply(&self, headers: &mut Vec<(String, String)>) {
        self.headers.apply(headers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::{PluginSettings, parse_settings};
    use serde_json::json;

    fn request(v: serde_json::Value) -> Result<RequestTransformerSettings, Invalid> {
        match parse_settings("request_transformer", &v)? {
            PluginSettings::RequestTransformer(s) => Ok(s),
            other => panic!("parsed as another plugin: {other:?}"),
        }
    }

    fn response(v: serde_json::Value) -> Result<ResponseTransformerSettings, Invalid> {
        match parse_settings("response_transformer", &v)? {
            PluginSettings::ResponseTransformer(s) => Ok(s),
            other => panic!("parsed as another plugin: {other:?}"),
        }
    }

    fn headers(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn settings_parse_in_configuration_order_with_defaults() {
        let s = request(json!({
            "set_headers": {"X-B": "2", "X-A": "1"},
            "add_query": {"z": "1", "a": "x y"}
        }))
        .expect("valid");
        assert_eq!(
            s.headers.set_headers,
            headers(&[("X-B", "2"), ("X-A", "1")])
        );
        assert!(s.headers.remove_headers.is_empty());
        assert!(s.headers.add_headers.is_empty());
        assert_eq!(s.query_suffix(), Some("z=1&a=x%20y"));
        let s = response(json!({"remove_headers": ["Server"]})).expect("valid");
        assert_eq!(s.headers.remove_headers, vec!["Server".to_owned()]);
    }

    #[test]
    fn invalid_settings_are_refused_at_their_path() {
        let cases = [
            (json!({}), ""),
            (json!({"remove_headers": []}), ""),
            (
                json!({"remove_headers": ["X-Ok", "bad name"]}),
                "remove_headers[1]",
            ),
            (
                json!({"remove_headers": ["Content-Length"]}),
                "remove_headers[0]",
            ),
            (
                json!({"set_headers": {"Transfer-Encoding": "chunked"}}),
                "set_headers.Transfer-Encoding",
            ),
            (
                json!({"add_headers": {"connection": "close"}}),
                "add_headers.connection",
            ),
            (json!({"set_headers": {"Host": "evil"}}), "set_headers.Host"),
            (
                json!({"rename_headers": {"X-A": "Upgrade"}}),
                "rename_headers.X-A",
            ),
            (
                json!({"rename_headers": {"TE": "X-TE"}}),
                "rename_headers.TE",
            ),
            (
                json!({"set_headers": {"X-A": "a\r\nX-Injected: 1"}}),
                "set_headers.X-A",
            ),
            (
                json!({"add_headers": {"X-A": "a\u{0}b"}}),
                "add_headers.X-A",
            ),
            (json!({"add_headers": {"X-A": 1}}), "add_headers.X-A"),
            (
                json!({"set_headers": {"X-A": "1", "x-a": "2"}}),
                "set_headers.x-a",
            ),
            (json!({"set_headers": ["X-A: 1"]}), "set_headers"),
            (json!({"add_query": {"": "1"}}), "add_query"),
            (json!({"add_query": {"a": 1}}), "add_query.a"),
            (json!({"add_querystring": {"a": "1"}}), "add_querystring"),
        ];
        for (settings, path) in cases {
            let err = request(settings.clone()).expect_err(&settings.to_string());
            assert_eq!(err.path, path, "{settings}: {err}");
        }
        let err = response(json!({"add_query": {"a": "1"}})).expect_err("request only");
        assert!(err.message.contains("unknown field `add_query`"), "{err}");
        assert_eq!(response(json!({})).expect_err("no-op").path, "");
    }

    #[test]
    fn transformations_run_remove_rename_set_add_whatever_the_json_order() {
        let s = response(json!({
            "add_headers": {"X-Added": "new", "X-Kept": "ignored", "X-Old": "filled"},
            "set_headers": {"X-Set": "set", "x-renamed": "overridden"},
            "rename_headers": {"X-Old": "X-Renamed", "X-Gone": "X-Back"},
            "remove_headers": ["x-gone", "X-Multi"]
        }))
        .expect("valid");
        let mut h = headers(&[
            ("Server", "up"),
            ("X-Gone", "1"),
            ("X-Old", "o"),
            ("x-kept", "k"),
            ("X-Multi", "1"),
            ("X-Set", "a"),
            ("X-Multi", "2"),
            ("X-Set", "b"),
        ]);
        s.apply(&mut h);
        assert_eq!(
            h,
            headers(&[
                ("Server", "up"),
                ("x-renamed", "overridden"),
                ("x-kept", "k"),
                ("X-Set", "set"),
                ("X-Added", "new"),
                ("X-Old", "filled"),
            ])
        );
    }

    #[test]
    fn renames_apply_once_per_header_by_its_original_name() {
        let s = request(json!({"rename_headers": {"a": "b", "b": "c"}})).expect("valid");
        let mut h = headers(&[("A", "1"), ("B", "2")]);
        s.apply(&mut h);
        assert_eq!(h, headers(&[("b", "1"), ("c", "2")]));
    }

    #[test]
    fn set_replaces_every_occurrence_and_add_fills_only_gaps() {
        let s = request(json!({
            "set_headers": {"Accept": "application/json"},
            "add_headers": {"X-Tenant": "t1", "User-Agent": "gw"}
        }))
        .expect("valid");
        let mut h = headers(&[("accept", "a"), ("User-Agent", "curl"), ("ACCEPT", "b")]);
        s.apply(&mut h);
        assert_eq!(
            h,
            headers(&[
                ("Accept", "application/json"),
                ("User-Agent", "curl"),
                ("X-Tenant", "t1"),
            ])
        );
        let mut empty = Vec::new();
        s.apply(&mut empty);
        assert_eq!(
            empty,
            headers(&[
                ("Accept", "application/json"),
                ("X-Tenant", "t1"),
                ("User-Agent", "gw"),
            ])
        );
    }

    #[test]
    fn query_parameters_are_percent_encoded() {
        let s =
            request(json!({"add_query": {"a": "1", "b": "x y", "c&d": "é=#/+"}})).expect("valid");
        assert_eq!(
            s.query_suffix(),
            Some("a=1&b=x%20y&c%26d=%C3%A9%3D%23%2F%2B")
        );
        let s = request(json!({"add_query": {"empty": ""}})).expect("valid");
        assert_eq!(s.query_suffix(), Some("empty="));
        let s = request(json!({"remove_headers": ["X-A"]})).expect("valid");
        assert_eq!(s.query_suffix(), None);
    }
}
