//! `cors`: Cross-Origin Resource Sharing, answered at the gateway.
//!
//! Two stages, two helpers:
//! - `pre_request`: a preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
//!   is answered by the gateway without calling the upstream: with
//!   [`CorsSettings::preflight_headers`] when allowed, or refused with the
//!   [`PreflightRejection`] saying why (the proxy picks the status codes). Other requests
//!   pass untouched.
//! - `pre_response`: [`CorsSettings::response_headers`] go on every response, replacing any
//!   `Access-Control-*` header the upstream sent; `Vary: Origin` is appended to the upstream's
//!   `Vary`, not put in its place.
//!
//! Origins are compared as the browser serialises them (`scheme://host[:port]`, lowercase,
//! default port omitted); configuration is brought to that form when it is parsed.

use std::fmt;

use serde::Deserialize;

use super::{PluginDef, SettingDoc, typed};
use crate::model::{Invalid, Stage, is_header_name};

pub(super) const DEF: PluginDef = PluginDef {
    name: "cors",
    description: "Cross-Origin Resource Sharing. In pre_request it answers preflights (OPTIONS \
                  with Origin and Access-Control-Request-Method) at the gateway: 204 with the \
                  Access-Control-Allow-* headers, or 403 when the origin, method or a header is \
                  not allowed; the upstream is not called. In pre_response it adds \
                  Access-Control-Allow-Origin (and Credentials, Expose-Headers) for allowed \
                  origins and Vary: Origin to every response. Configure it in both stages.",
    stages: &[Stage::PreRequest, Stage::PreResponse],
    settings: &[
        SettingDoc {
            path: "allowed_origins",
            ty: "array of origins: \"https://app.example.com\", \"https://*.example.com\", \
                 \"http://localhost:3000\" or \"*\"",
            default: "none: required, at least one",
            description: "Sites whose scripts may read responses. An exact origin is \
                          scheme://host[:port] with no path or trailing slash (a default port \
                          is dropped, case is ignored). \"https://*.example.com\" allows every \
                          subdomain at any depth over https, but neither example.com itself nor \
                          look-alikes such as evil-example.com, and it never crosses scheme or \
                          port; the part after \"*.\" needs two labels or more (no \"*.com\"; \
                          public suffixes like co.uk are not detected). \"*\" allows every \
                          site, must stand alone and cannot be combined with \
                          allow_credentials. \"null\" is refused: any sandboxed page can send it.",
        },
        SettingDoc {
            path: "allowed_methods",
            ty: "array of methods, or [\"*\"]",
            default: "[\"GET\", \"HEAD\", \"POST\", \"PUT\", \"PATCH\", \"DELETE\"]",
            description: "Methods a preflight may ask for (compared without case). \"*\" allows \
                          any and echoes the requested method, which also works with \
                          credentials.",
        },
        SettingDoc {
            path: "allowed_headers",
            ty: "array of header names, or [\"*\"]",
            default: "[\"*\"] (echo what the preflight asks for)",
            description: "Request headers a preflight may ask for (compared without case). The \
                          default echoes the requested headers, Authorization included, so \
                          the origin list is the only gate; list names to narrow it. [] allows \
                          only the CORS-safelisted headers, which browsers never ask about.",
        },
        SettingDoc {
            path: "exposed_headers",
            ty: "array of header names, or [\"*\"]",
            default: "[] (scripts see only the CORS-safelisted response headers)",
            description: "Response headers scripts may read, sent as \
                          Access-Control-Expose-Headers; list X-RateLimit-Remaining and the \
                          like here for browser clients. \"*\" means every header only without \
                          credentials, so it is refused with allow_credentials.",
        },
        SettingDoc {
            path: "allow_credentials",
            ty: "boolean",
            default: "false",
            description: "Send Access-Control-Allow-Credentials: true, letting scripts send \
                          cookies and HTTP authentication and read the answer. The Fetch \
                          standard forbids it with a \"*\" origin, so that combination is \
                          refused.",
        },
        SettingDoc {
            path: "max_age",
            ty: "integer seconds",
            default: "none (header omitted: browsers cache a preflight for 5 seconds)",
            description: "Access-Control-Max-Age: how long a browser may reuse a preflight \
                          answer. Longer means fewer preflight round trips; configuration \
                          changes reach browsers that much later. Browsers cap it (Chromium 2 \
                          hours, Firefox 24 hours).",
        },
    ],
};

/// The raw JSON shape; [`CorsSettings`] is what it compiles to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCors {
    #[serde(default)]
    allowed_origins: Vec<String>,
    #[serde(default = "default_methods")]
    allowed_methods: Vec<String>,
    #[serde(default = "star")]
    allowed_headers: Vec<String>,
    #[serde(default)]
    exposed_headers: Vec<String>,
    #[serde(default)]
    allow_credentials: bool,
    #[serde(default)]
    max_age: Option<u64>,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
        .map(String::from)
        .into()
}

fn star() -> Vec<String> {
    vec!["*".to_owned()]
}

/// One entry of `allowed_origins`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginRule {
    /// `*`.
    Any,
    /// A canonical origin, `https://app.example.com` or `http://localhost:3000`.
    Exact(String),
    /// `https://*.example.com:8443` as `scheme_sep: "https://"`, `tail: ".example.com:8443"`.
    Subdomains { scheme_sep: String, tail: String },
}

/// `cors` settings, compiled: origin rules and the header values they produce, so a request
/// costs comparisons and one small vector. Each setting's default and trade-off are
/// documented in its [`CATALOGUE`](super::CATALOGUE) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsSettings {
    origins: Vec<OriginRule>,
    /// `allowed_origins` is `["*"]`: answers carry `Access-Control-Allow-Origin: *`.
    any_origin: bool,
    /// Upper-case; None: any method (echoed).
    methods: Option<Vec<String>>,
    /// Lower-case; None: any header (echoed).
    headers: Option<Vec<String>>,
    allow_credentials: bool,
    max_age: Option<u64>,
    methods_value: Option<String>,
    headers_value: Option<String>,
    exposed_value: Option<String>,
}

/// Why a preflight is refused: the origin, method or a header it asked for is not allowed.
/// `Display` is the error message; it reaches the proxy as [`super::Rejection::Preflight`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreflightRejection {
    OriginNotAllowed,
    /// The requested method, as sent.
    MethodNotAllowed(String),
    /// The first requested header that is not allowed, as sent.
    HeaderNotAllowed(String),
}

impl fmt::Display for PreflightRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PreflightRejection::OriginNotAllowed => f.write_str("CORS origin not allowed"),
            PreflightRejection::MethodNotAllowed(m) => write!(f, "CORS method {m:?} not allowed"),
            PreflightRejection::HeaderNotAllowed(h) => {
                write!(f, "CORS request header {h:?} not allowed")
            }
        }
    }
}

impl std::error::Error for PreflightRejection {}

const ALLOW_ORIGIN: &str = "Access-Control-Allow-Origin";
const ALLOW_CREDENTIALS: &str = "Access-Control-Allow-Credentials";
const ALLOW_METHODS: &str = "Access-Control-Allow-Methods";
const ALLOW_HEADERS: &str = "Access-Control-Allow-Headers";
const EXPOSE_HEADERS: &str = "Access-Control-Expose-Headers";
const MAX_AGE: &str = "Access-Control-Max-Age";
const VARY: &str = "Vary";

use crate::model::is_dns_name;

/// Why an `allowed_origins` entry is refused. Each case keeps the entry as written, so the
/// message (`Display`, after the field path) shows the user what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginError {
    /// `null`: any sandboxed page or file sends it.
    Null,
    /// Not `scheme://host[:port]`, `scheme://*.domain[:port]` or `*`.
    Shape { entry: String },
    /// A path, query, fragment or user part after the authority.
    HasPath {
        entry: String,
        /// The origin the user probably meant, `scheme://authority`.
        meant: String,
    },
    /// A port that is not 1 to 65535.
    Port { entry: String },
    /// `*.` followed by less than two labels (`https://*.com`).
    WildcardTooWide { entry: String },
    /// A `*` anywhere but as the whole first label.
    MisplacedWildcard { entry: String },
    /// The host is not a DNS name (nor a bracketed IPv6 address).
    Host { entry: String, host: String },
}

impl fmt::Display for OriginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OriginError::Null => {
                f.write_str("\"null\" cannot be allowed: any sandboxed page or file can send it")
            }
            OriginError::Shape { entry } => write!(
                f,
                "{entry:?}: expected an origin like \"https://app.example.com\", \
                 \"https://*.example.com\" or \"*\""
            ),
            OriginError::HasPath { entry, meant } => write!(
                f,
                "{entry:?}: an origin has no path, query or user; write \"{meant}\""
            ),
            OriginError::Port { entry } => write!(f, "{entry:?}: the port must be 1 to 65535"),
            OriginError::WildcardTooWide { entry } => write!(
                f,
                "{entry:?}: a wildcard needs a domain of two labels or more after \"*.\", \
                 like \"https://*.example.com\""
            ),
            OriginError::MisplacedWildcard { entry } => write!(
                f,
                "{entry:?}: a wildcard can only be the whole first label, as in \
                 \"https://*.example.com\""
            ),
            OriginError::Host { entry, host } => {
                write!(f, "{entry:?}: {host:?} is not a host name")
            }
        }
    }
}

impl std::error::Error for OriginError {}

/// Parses one `allowed_origins` entry into its rule, bringing it to the browser's form.
fn parse_origin(entry: &str) -> Result<OriginRule, OriginError> {
    let shape = || OriginError::Shape {
        entry: entry.to_owned(),
    };
    if entry == "*" {
        return Ok(OriginRule::Any);
    }
    if entry.eq_ignore_ascii_case("null") {
        return Err(OriginError::Null);
    }
    let lower = entry.to_ascii_lowercase();
    let Some((scheme, rest)) = lower.split_once("://") else {
        return Err(shape());
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    if !scheme_ok {
        return Err(shape());
    }
    if rest.contains(['/', '?', '#', '@']) {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        return Err(OriginError::HasPath {
            entry: entry.to_owned(),
            meant: format!("{scheme}://{authority}"),
        });
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or_else(shape)?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(shape());
        }
        match after {
            "" => (&rest[..addr.len() + 2], None),
            p => match p.strip_prefix(':') {
                Some(p) => (&rest[..addr.len() + 2], Some(p)),
                None => return Err(shape()),
            },
        }
    } else {
        match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => {
            let n = p
                .parse::<u16>()
                .ok()
                .filter(|n| *n > 0 && p.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| OriginError::Port {
                    entry: entry.to_owned(),
                })?;
            let default = matches!((scheme, n), ("http", 80) | ("https", 443));
            (!default).then_some(n)
        }
    };
    let port_part = port.map(|p| format!(":{p}")).unwrap_or_default();
    if let Some(suffix) = host.strip_prefix("*.") {
        if !is_dns_name(suffix) || !suffix.contains('.') {
            return Err(OriginError::WildcardTooWide {
                entry: entry.to_owned(),
            });
        }
        return Ok(OriginRule::Subdomains {
            scheme_sep: format!("{scheme}://"),
            tail: format!(".{suffix}{port_part}"),
        });
    }
    if host.contains('*') {
        return Err(OriginError::MisplacedWildcard {
            entry: entry.to_owned(),
        });
    }
    if !host.starts_with('[') && !is_dns_name(host) {
        return Err(OriginError::Host {
            entry: entry.to_owned(),
            host: host.to_owned(),
        });
    }
    Ok(OriginRule::Exact(format!("{scheme}://{host}{port_part}")))
}

/// Whether `sub` is one or more DNS labels (`a`, `a.b`): what `*` may stand for.
fn is_subdomain_part(sub: &[u8]) -> bool {
    !sub.is_empty()
        && sub.split(|b| *b == b'.').all(|label| {
            !label.is_empty()
                && label
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        })
}

fn strip_prefix_ignore_case<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

fn strip_suffix_ignore_case<'a>(s: &'a [u8], suffix: &[u8]) -> Option<&'a [u8]> {
    let cut = s.len().checked_sub(suffix.len())?;
    s[cut..].eq_ignore_ascii_case(suffix).then(|| &s[..cut])
}

impl OriginRule {
    fn matches(&self, origin: &[u8]) -> bool {
        match self {
            OriginRule::Any => true,
            OriginRule::Exact(o) => origin.eq_ignore_ascii_case(o.as_bytes()),
            OriginRule::Subdomains { scheme_sep, tail } => {
                strip_prefix_ignore_case(origin, scheme_sep.as_bytes())
                    .and_then(|rest| strip_suffix_ignore_case(rest, tail.as_bytes()))
                    .is_some_and(is_subdomain_part)
            }
        }
    }
}

/// Validates a list of tokens (methods or header names) where `*` stands for "any".
/// Returns None for `*`, else the names with `normalise` applied, without duplicates.
fn token_list(
    list: &[String],
    field: &str,
    what: &str,
    normalise: fn(&str) -> String,
) -> Result<Option<Vec<String>>, Invalid> {
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    let mut any = false;
    for (i, item) in list.iter().enumerate() {
        if item == "*" {
            any = true;
        } else if is_header_name(item) {
            let item = normalise(item);
            if !out.contains(&item) {
                out.push(item);
            }
        } else {
            return Err(Invalid::new(
                format!("{field}[{i}]"),
                format!("{item:?} is not an HTTP {what}"),
            ));
        }
    }
    Ok((!any).then_some(out))
}

impl CorsSettings {
    pub(super) fn parse(settings: &serde_json::Value) -> Result<Self, Invalid> {
        let raw: RawCors = typed(settings)?;
        if raw.allowed_origins.is_empty() {
            return Err(Invalid::new(
                "allowed_origins",
                "list at least one origin (or \"*\" for every site)",
            ));
        }
        let mut origins = Vec::with_capacity(raw.allowed_origins.len());
        for (i, entry) in raw.allowed_origins.iter().enumerate() {
            let rule = parse_origin(entry)
                .map_err(|why| Invalid::new(format!("allowed_origins[{i}]"), why.to_string()))?;
            if !origins.contains(&rule) {
                origins.push(rule);
            }
        }
        let any_origin = origins.contains(&OriginRule::Any);
        if any_origin && origins.len() > 1 {
            return Err(Invalid::new(
                "allowed_origins",
                "\"*\" already allows every origin; list it alone",
            ));
        }
        if any_origin && raw.allow_credentials {
            return Err(Invalid::new(
                "allow_credentials",
                "cannot be true with allowed_origins [\"*\"]: the Fetch standard refuses \
                 credentials on a wildcard origin; list the origins instead",
            ));
        }
        if raw.allowed_methods.is_empty() {
            return Err(Invalid::new(
                "allowed_methods",
                "list at least one method (or \"*\")",
            ));
        }
        let methods = token_list(&raw.allowed_methods, "allowed_methods", "method", |m| {
            m.to_ascii_uppercase()
        })?;
        let headers = token_list(
            &raw.allowed_headers,
            "allowed_headers",
            "header name",
            |h| h.to_ascii_lowercase(),
        )?;
        let exposed = token_list(
            &raw.exposed_headers,
            "exposed_headers",
            "header name",
            str::to_owned,
        )?;
        if exposed.is_none() && raw.allow_credentials {
            return Err(Invalid::new(
                "exposed_headers",
                "\"*\" is not a wildcard on credentialed responses (Fetch standard); list the \
                 headers, or turn allow_credentials off",
            ));
        }
        let join = |names: &Vec<String>| (!names.is_empty()).then(|| names.join(", "));
        Ok(CorsSettings {
            methods_value: methods.as_ref().and_then(join),
            headers_value: headers.as_ref().and_then(join),
            exposed_value: match &exposed {
                None => Some("*".to_owned()),
                Some(names) => join(names),
            },
            origins,
            any_origin,
            methods,
            headers,
            allow_credentials: raw.allow_credentials,
            max_age: raw.max_age,
        })
    }

    pub fn allow_credentials(&self) -> bool {
        self.allow_credentials
    }

    /// Seconds a browser may cache a preflight answer; None: header not sent.
    pub fn max_age(&self) -> Option<u64> {
        self.max_age
    }

    /// Whether the `Origin` request header's value is allowed (case is ignored).
    pub fn origin_allowed(&self, origin: &[u8]) -> bool {
        self.origins.iter().any(|rule| rule.matches(origin))
    }

    /// The value of `Access-Control-Allow-Origin` for an allowed origin: `*` when every
    /// origin is allowed (never with credentials), else the origin as the browser sent it.
    fn allow_origin_value(&self, origin: &[u8]) -> String {
        if self.any_origin {
            "*".to_owned()
        } else {
            String::from_utf8_lossy(origin).into_owned()
        }
    }

    /// The headers of the gateway's answer to an allowed preflight, or why it is refused.
    ///
    /// A preflight is an `OPTIONS` request carrying both `Origin` and
    /// `Access-Control-Request-Method`; `requested_headers` is the
    /// `Access-Control-Request-Headers` value (comma-separated) if present. Allowed methods
    /// and headers are the configured lists (so the browser can cache them all), or the
    /// requested ones echoed when the list is `*`.
    pub fn preflight_headers(
        &self,
        origin: &[u8],
        requested_method: &[u8],
        requested_headers: Option<&[u8]>,
    ) -> Result<Vec<(&'static str, String)>, PreflightRejection> {
        if !self.origin_allowed(origin) {
            return Err(PreflightRejection::OriginNotAllowed);
        }
        let method = std::str::from_utf8(requested_method)
            .ok()
            .filter(|m| is_header_name(m))
            .filter(|m| match &self.methods {
                None => true,
                Some(list) => list.iter().any(|l| l.eq_ignore_ascii_case(m)),
            })
            .ok_or_else(|| {
                PreflightRejection::MethodNotAllowed(
                    String::from_utf8_lossy(requested_method).into_owned(),
                )
            })?;
        let requested: Vec<&[u8]> = requested_headers
            .map(|value| {
                value
                    .split(|b| *b == b',')
                    .map(|name| name.trim_ascii())
                    .filter(|name| !name.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        for name in &requested {
            let ok = std::str::from_utf8(name).is_ok_and(|n| {
                is_header_name(n)
                    && match &self.headers {
                        None => true,
                        Some(list) => list.iter().any(|l| l.eq_ignore_ascii_case(n)),
                    }
            });
            if !ok {
                return Err(PreflightRejection::HeaderNotAllowed(
                    String::from_utf8_lossy(name).into_owned(),
                ));
            }
        }

        let mut out = Vec::with_capacity(6);
        out.push((ALLOW_ORIGIN, self.allow_origin_value(origin)));
        if self.allow_credentials {
            out.push((ALLOW_CREDENTIALS, "true".to_owned()));
        }
        // Browsers compare methods byte for byte and send non-standard ones as written
        // (`patch`); name the requested spelling when the list has it in another case.
        let methods_value = match (&self.methods, &self.methods_value) {
            (Some(list), Some(value)) if list.iter().any(|l| l == method) => value.clone(),
            (Some(_), Some(value)) => format!("{value}, {method}"),
            _ => method.to_owned(),
        };
        out.push((ALLOW_METHODS, methods_value));
        let headers_value = match &self.headers_value {
            Some(v) => Some(v.clone()),
            // Checked above: every requested name is a token, so this is ASCII.
            None if !requested.is_empty() && self.headers.is_none() => Some(
                requested
                    .iter()
                    .map(|n| String::from_utf8_lossy(n))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            None => None,
        };
        if let Some(v) = headers_value {
            out.push((ALLOW_HEADERS, v));
        }
        if let Some(age) = self.max_age {
            out.push((MAX_AGE, age.to_string()));
        }
        if !self.any_origin {
            out.push((VARY, "Origin".to_owned()));
        }
        Ok(out)
    }

    /// The headers to put on a response (`pre_response`), given the request's `Origin`.
    ///
    /// With `allowed_origins: ["*"]`: `Access-Control-Allow-Origin: *` (and Expose-Headers) on
    /// every response, which then does not vary by origin. Otherwise `Vary: Origin` on every
    /// response, allowed or not, with or without an `Origin` (so a cache never serves one
    /// origin's answer to another), plus Allow-Origin, Allow-Credentials and Expose-Headers
    /// when the origin is allowed. Set these replacing the upstream's `Access-Control-*`
    /// headers; append `Origin` to an existing `Vary`.
    pub fn response_headers(&self, origin: Option<&[u8]>) -> Vec<(&'static str, String)> {
        let mut out = Vec::with_capacity(4);
        let allowed = match origin {
            _ if self.any_origin => Some(&b"*"[..]),
            Some(o) if self.origin_allowed(o) => Some(o),
            _ => None,
        };
        if let Some(origin) = allowed {
            out.push((ALLOW_ORIGIN, self.allow_origin_value(origin)));
            if self.allow_credentials {
                out.push((ALLOW_CREDENTIALS, "true".to_owned()));
            }
            if let Some(v) = &self.exposed_value {
                out.push((EXPOSE_HEADERS, v.clone()));
            }
        }
        if !self.any_origin {
            out.push((VARY, "Origin".to_owned()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::{PluginSettings, parse_settings};
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<CorsSettings, Invalid> {
        match parse_settings("cors", &v)? {
            PluginSettings::Cors(s) => Ok(s),
            other => panic!("parsed as another plugin: {other:?}"),
        }
    }

    fn header<'a>(headers: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn settings_parse_with_defaults() {
        let s = parse(json!({"allowed_origins": ["https://App.Example.com:443"]})).expect("valid");
        assert_eq!(
            s.origins,
            vec![OriginRule::Exact("https://app.example.com".into())]
        );
        assert_eq!(
            s.methods_value.as_deref(),
            Some("GET, HEAD, POST, PUT, PATCH, DELETE")
        );
        assert_eq!(s.headers, None, "headers default to echo");
        assert_eq!(s.exposed_value, None);
        assert!(!s.allow_credentials());
        assert_eq!(s.max_age(), None);
    }

    #[test]
    fn invalid_settings_are_refused_at_their_path() {
        let cases = [
            (json!({}), "allowed_origins"),
            (json!({"allowed_origins": []}), "allowed_origins"),
            (
                json!({"allowed_origins": ["https://a.com/"]}),
                "allowed_origins[0]",
            ),
            (
                json!({"allowed_origins": ["https://a.com", "null"]}),
                "allowed_origins[1]",
            ),
            (json!({"allowed_origins": ["a.com"]}), "allowed_origins[0]"),
            (
                json!({"allowed_origins": ["https://*.com"]}),
                "allowed_origins[0]",
            ),
            (
                json!({"allowed_origins": ["https://api-*.a.com"]}),
                "allowed_origins[0]",
            ),
            (
                json!({"allowed_origins": ["https://a.com:0"]}),
                "allowed_origins[0]",
            ),
            (
                json!({"allowed_origins": ["https://a.com:99999"]}),
                "allowed_origins[0]",
            ),
            (
                json!({"allowed_origins": ["https://a b.com"]}),
                "allowed_origins[0]",
            ),
            (
                json!({"allowed_origins": ["*", "https://a.com"]}),
                "allowed_origins",
            ),
            (json!({"allowed_origins": [1]}), "allowed_origins[0]"),
            (
                json!({"allowed_origins": ["*"], "allow_credentials": true}),
                "allow_credentials",
            ),
            (
                json!({"allowed_origins": ["https://a.com"], "allow_credentials": true,
                       "exposed_headers": ["*"]}),
                "exposed_headers",
            ),
            (
                json!({"allowed_origins": ["https://a.com"], "allowed_methods": []}),
                "allowed_methods",
            ),
            (
                json!({"allowed_origins": ["https://a.com"],
                       "allowed_methods": ["GET", "BAD METHOD"]}),
                "allowed_methods[1]",
            ),
            (
                json!({"allowed_origins": ["https://a.com"], "allowed_headers": ["x:y"]}),
                "allowed_headers[0]",
            ),
            (
                json!({"allowed_origins": ["https://a.com"], "exposed_headers": [""]}),
                "exposed_headers[0]",
            ),
            (
                json!({"allowed_origins": ["https://a.com"], "max_age": -1}),
                "max_age",
            ),
            (
                json!({"allowed_origins": ["https://a.com"], "origins": []}),
                "origins",
            ),
        ];
        for (settings, path) in cases {
            let err = parse(settings.clone()).expect_err(&settings.to_string());
            assert_eq!(err.path, path, "{settings}: {err}");
        }
        let err = parse(json!({"allowed_origins": ["https://a.com/app"]})).expect_err("path");
        assert!(err.message.contains("write \"https://a.com\""), "{err}");
    }

    #[test]
    fn origin_entries_are_refused_saying_what_is_wrong_with_the_entry_as_written() {
        let entry = |e: &str| e.to_owned();
        assert_eq!(parse_origin("NULL"), Err(OriginError::Null));
        assert_eq!(
            parse_origin("a.com"),
            Err(OriginError::Shape {
                entry: entry("a.com")
            })
        );
        assert_eq!(
            parse_origin("HTTPS://A.com/app?x"),
            Err(OriginError::HasPath {
                entry: entry("HTTPS://A.com/app?x"),
                meant: entry("https://a.com"),
            })
        );
        assert_eq!(
            parse_origin("https://a.com:0"),
            Err(OriginError::Port {
                entry: entry("https://a.com:0")
            })
        );
        assert_eq!(
            parse_origin("https://*.com"),
            Err(OriginError::WildcardTooWide {
                entry: entry("https://*.com")
            })
        );
        assert_eq!(
            parse_origin("https://api-*.a.com"),
            Err(OriginError::MisplacedWildcard {
                entry: entry("https://api-*.a.com")
            })
        );
        let err = parse_origin("https://a b.com").expect_err("space");
        assert_eq!(
            err.to_string(),
            "\"https://a b.com\": \"a b.com\" is not a host name"
        );
    }

    #[test]
    fn credentials_with_a_wildcard_origin_are_refused() {
        let err = parse(json!({"allowed_origins": ["*"], "allow_credentials": true}))
            .expect_err("Fetch forbids it");
        assert_eq!(err.path, "allow_credentials");
        assert!(err.message.contains("Fetch"), "{err}");
        assert!(parse(json!({"allowed_origins": ["*"], "allow_credentials": false})).is_ok());
    }

    #[test]
    fn exact_origins_match_ignoring_case_and_nothing_else() {
        let s =
            parse(json!({"allowed_origins": ["https://app.example.com", "http://localhost:3000"]}))
                .expect("valid");
        assert!(s.origin_allowed(b"https://app.example.com"));
        assert!(s.origin_allowed(b"HTTPS://APP.example.com"));
        assert!(s.origin_allowed(b"http://localhost:3000"));
        assert!(!s.origin_allowed(b"http://app.example.com"));
        assert!(!s.origin_allowed(b"https://app.example.com:8443"));
        assert!(!s.origin_allowed(b"https://app.example.com.evil.com"));
        assert!(!s.origin_allowed(b"http://localhost"));
        assert!(!s.origin_allowed(b"null"));
        assert!(!s.origin_allowed(b""));
    }

    #[test]
    fn wildcard_subdomains_match_subdomains_only() {
        let s = parse(json!({"allowed_origins": ["https://*.example.com"]})).expect("valid");
        assert!(s.origin_allowed(b"https://a.example.com"));
        assert!(s.origin_allowed(b"https://a.b.example.com"));
        assert!(s.origin_allowed(b"https://A.Example.COM"));
        assert!(!s.origin_allowed(b"https://evil-example.com"));
        assert!(
            !s.origin_allowed(b"https://example.com"),
            "the apex needs its own entry"
        );
        assert!(!s.origin_allowed(b"https://.example.com"));
        assert!(!s.origin_allowed(b"https://a..example.com"));
        assert!(
            !s.origin_allowed(b"http://a.example.com"),
            "scheme is part of the origin"
        );
        assert!(
            !s.origin_allowed(b"https://a.example.com:8443"),
            "so is the port"
        );
        assert!(!s.origin_allowed(b"https://a.example.com.evil.com"));
        assert!(!s.origin_allowed(b"https://evil.com/.example.com"));
        assert!(!s.origin_allowed(b"https://evil.com?.example.com"));
        assert!(!s.origin_allowed(b"https://u@a.example.com"));
        let both = parse(
            json!({"allowed_origins": ["https://*.example.com:8443", "https://example.com"]}),
        )
        .expect("valid");
        assert!(both.origin_allowed(b"https://example.com"));
        assert!(both.origin_allowed(b"https://a.example.com:8443"));
        assert!(!both.origin_allowed(b"https://a.example.com"));
    }

    #[test]
    fn a_preflight_from_an_allowed_origin_gets_the_configured_lists() {
        let s = parse(json!({
            "allowed_origins": ["https://*.example.com"],
            "allowed_methods": ["GET", "put"],
            "allowed_headers": ["Content-Type", "Authorization"],
            "allow_credentials": true,
            "max_age": 600
        }))
        .expect("valid");
        let h = s
            .preflight_headers(
                b"https://app.example.com",
                b"PUT",
                Some(b"content-type, authorization"),
            )
            .expect("allowed");
        assert_eq!(
            h,
            vec![
                (
                    "Access-Control-Allow-Origin",
                    "https://app.example.com".to_owned()
                ),
                ("Access-Control-Allow-Credentials", "true".to_owned()),
                ("Access-Control-Allow-Methods", "GET, PUT".to_owned()),
                (
                    "Access-Control-Allow-Headers",
                    "content-type, authorization".to_owned()
                ),
                ("Access-Control-Max-Age", "600".to_owned()),
                ("Vary", "Origin".to_owned()),
            ]
        );
    }

    #[test]
    fn a_preflight_is_refused_for_origin_method_or_header() {
        let s = parse(json!({
            "allowed_origins": ["https://app.example.com"],
            "allowed_methods": ["GET", "POST"],
            "allowed_headers": ["content-type"]
        }))
        .expect("valid");
        assert_eq!(
            s.preflight_headers(b"https://evil.com", b"GET", None),
            Err(PreflightRejection::OriginNotAllowed)
        );
        assert_eq!(
            s.preflight_headers(b"https://app.example.com", b"DELETE", None),
            Err(PreflightRejection::MethodNotAllowed("DELETE".into()))
        );
        let err = s
            .preflight_headers(
                b"https://app.example.com",
                b"POST",
                Some(b"Content-Type,X-Debug"),
            )
            .expect_err("header");
        assert_eq!(err, PreflightRejection::HeaderNotAllowed("X-Debug".into()));
        assert_eq!(
            err.to_string(),
            "CORS request header \"X-Debug\" not allowed"
        );
        assert!(
            s.preflight_headers(
                b"https://app.example.com",
                b"post",
                Some(b" , content-type ,")
            )
            .is_ok(),
            "method case and empty list elements are tolerated"
        );
    }

    #[test]
    fn wildcard_methods_and_headers_echo_the_request() {
        let s = parse(json!({
            "allowed_origins": ["*"],
            "allowed_methods": ["*"]
        }))
        .expect("valid");
        let h = s
            .preflight_headers(
                b"https://anyone.test",
                b"PURGE",
                Some(b"X-A, Authorization"),
            )
            .expect("allowed");
        assert_eq!(header(&h, "Access-Control-Allow-Origin"), Some("*"));
        assert_eq!(header(&h, "Access-Control-Allow-Methods"), Some("PURGE"));
        assert_eq!(
            header(&h, "Access-Control-Allow-Headers"),
            Some("X-A, Authorization")
        );
        assert_eq!(header(&h, "Access-Control-Allow-Credentials"), None);
        assert_eq!(
            header(&h, "Vary"),
            None,
            "the answer does not depend on the origin"
        );
        let h = s
            .preflight_headers(b"https://anyone.test", b"GET", None)
            .expect("allowed");
        assert_eq!(header(&h, "Access-Control-Allow-Headers"), None);
    }

    #[test]
    fn responses_vary_on_origin_and_name_only_allowed_origins() {
        let s = parse(json!({
            "allowed_origins": ["https://app.example.com"],
            "exposed_headers": ["X-RateLimit-Remaining", "X-Request-Id"],
            "allow_credentials": true
        }))
        .expect("valid");
        assert_eq!(
            s.response_headers(Some(b"https://app.example.com")),
            vec![
                (
                    "Access-Control-Allow-Origin",
                    "https://app.example.com".to_owned()
                ),
                ("Access-Control-Allow-Credentials", "true".to_owned()),
                (
                    "Access-Control-Expose-Headers",
                    "X-RateLimit-Remaining, X-Request-Id".to_owned()
                ),
                ("Vary", "Origin".to_owned()),
            ]
        );
        assert_eq!(
            s.response_headers(Some(b"https://evil.com")),
            vec![("Vary", "Origin".to_owned())]
        );
        assert_eq!(
            s.response_headers(None),
            vec![("Vary", "Origin".to_owned())]
        );
    }

    #[test]
    fn a_wildcard_origin_answers_star_on_every_response_without_vary() {
        let s = parse(json!({"allowed_origins": ["*"], "exposed_headers": ["*"]})).expect("valid");
        let expected = vec![
            ("Access-Control-Allow-Origin", "*".to_owned()),
            ("Access-Control-Expose-Headers", "*".to_owned()),
        ];
        assert_eq!(s.response_headers(Some(b"https://a.test")), expected);
        assert_eq!(s.response_headers(None), expected);
    }
}
