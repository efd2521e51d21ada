//! The plugin catalogue and typed plugin settings.
//!
//! One definition per plugin feeds three consumers: the validator (names, stages, settings
//! schema), `GET /api/v1/plugins` (the catalogue with each setting's type, default and
//! meaning) and the README. Each plugin's module declares its [`PluginDef`] right above the
//! settings type it documents, so the text users read sits next to the field it describes.
//! Settings are parsed into typed structs once per snapshot, never per request; the pure
//! helpers on them (`check_head`, `check_client`, `apply`, ...) are what the proxy calls per
//! request. A plugin that refuses a request says what happened with a [`Rejection`]; which
//! status code and headers that becomes is the proxy's business, decided in one place.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserializer, Serialize};

use crate::model::{Invalid, Stage};
use crate::ratelimit::Rejected;

mod cors;
mod ip_restriction;
mod rate_limiter;
mod request_size_limiter;
mod token_rate_limiter;
mod transformer;

pub use cors::{CorsSettings, PreflightRejection};
pub use ip_restriction::IpRestrictionSettings;
pub use rate_limiter::{ActionKind, Actions, Limit, Limits, RateLimiterSettings};
pub use request_size_limiter::RequestSizeLimiterSettings;
pub use token_rate_limiter::TokenRateLimiterSettings;
pub use transformer::{HeaderTransform, RequestTransformerSettings, ResponseTransformerSettings};

/// A documented setting of a plugin: its JSON path under `settings`, type, default, meaning.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SettingDoc {
    pub path: &'static str,
    #[serde(rename = "type")]
    pub ty: &'static str,
    pub default: &'static str,
    pub description: &'static str,
}

/// A plugin the gateway knows.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PluginDef {
    pub name: &'static str,
    pub description: &'static str,
    pub stages: &'static [Stage],
    pub settings: &'static [SettingDoc],
}

/// Every plugin the gateway knows, in the order `GET /api/v1/plugins` lists them.
pub static CATALOGUE: &[PluginDef] = &[
    rate_limiter::DEF,
    request_size_limiter::DEF,
    ip_restriction::DEF,
    cors::DEF,
    transformer::REQUEST_DEF,
    transformer::RESPONSE_DEF,
    token_rate_limiter::DEF,
    crate::ai::guard::PROMPT_GUARD_DEF,
    crate::ai::pii::PII_MASKING_DEF,
];

pub fn find(name: &str) -> Option<&'static PluginDef> {
    CATALOGUE.iter().find(|p| p.name == name)
}

pub fn names() -> impl Iterator<Item = &'static str> {
    CATALOGUE.iter().map(|p| p.name)
}

/// Why a plugin refused a request: what happened, in the plugin's terms. `Display` is the
/// message for the client; the status code and headers are chosen at the edge (the proxy
/// maps every case in one function), never here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// `request_size_limiter`: the request head (request line, header lines and the blank
    /// line, as received) is over `max_header_bytes`.
    HeadTooLarge { limit: u64 },
    /// `request_size_limiter`: a chunked body (no Content-Length) while
    /// `require_content_length` is set.
    LengthRequired,
    /// `request_size_limiter`: the declared body is over `max_body_bytes`.
    BodyTooLarge { limit: u64 },
    /// `ip_restriction`: the client address is denied, or missing from a non-empty allow
    /// list.
    IpNotAllowed,
    /// `rate_limiter`: one dimension used its quota. `retry_after_secs` is what the client is
    /// told: `actions.retry_after` when configured, else the seconds until a slot frees.
    RateLimited {
        exceeded: Rejected,
        retry_after_secs: u64,
    },
    /// `cors`: a preflight named an origin, method or header that is not allowed.
    Preflight(PreflightRejection),
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::HeadTooLarge { .. } => f.write_str("request header fields too large"),
            Rejection::LengthRequired => f.write_str("Content-Length required"),
            Rejection::BodyTooLarge { .. } => f.write_str("request body too large"),
            Rejection::IpNotAllowed => f.write_str("client IP not allowed"),
            Rejection::RateLimited { exceeded, .. } => exceeded.fmt(f),
            Rejection::Preflight(why) => why.fmt(f),
        }
    }
}

impl std::error::Error for Rejection {}

impl From<PreflightRejection> for Rejection {
    fn from(why: PreflightRejection) -> Rejection {
        Rejection::Preflight(why)
    }
}

/// A plugin's settings, parsed and validated.
#[derive(Debug, Clone, PartialEq)]
pub enum PluginSettings {
    RateLimiter(RateLimiterSettings),
    RequestSizeLimiter(RequestSizeLimiterSettings),
    IpRestriction(IpRestrictionSettings),
    Cors(CorsSettings),
    RequestTransformer(RequestTransformerSettings),
    ResponseTransformer(ResponseTransformerSettings),
    TokenRateLimiter(TokenRateLimiterSettings),
    PromptGuard(crate::ai::guard::PromptGuardSettings),
    PiiMasking(crate::ai::pii::PiiSettings),
}

/// Parses and validates `settings` for plugin `name`. Paths in errors are relative to
/// `settings` (an empty path means `settings` as a whole).
pub fn parse_settings(name: &str, settings: &serde_json::Value) -> Result<PluginSettings, Invalid> {
    Ok(match name {
        "rate_limiter" => PluginSettings::RateLimiter(RateLimiterSettings::parse(settings)?),
        "request_size_limiter" => {
            PluginSettings::RequestSizeLimiter(RequestSizeLimiterSettings::parse(settings)?)
        }
        "ip_restriction" => PluginSettings::IpRestriction(IpRestrictionSettings::parse(settings)?),
        "cors" => PluginSettings::Cors(CorsSettings::parse(settings)?),
        "request_transformer" => {
            PluginSettings::RequestTransformer(RequestTransformerSettings::parse(settings)?)
        }
        "response_transformer" => {
            PluginSettings::ResponseTransformer(ResponseTransformerSettings::parse(settings)?)
        }
        "token_rate_limiter" => {
            PluginSettings::TokenRateLimiter(TokenRateLimiterSettings::parse(settings)?)
        }
        "prompt_guard" => {
            PluginSettings::PromptGuard(crate::ai::guard::PromptGuardSettings::parse(settings)?)
        }
        "pii_masking" => PluginSettings::PiiMasking(crate::ai::pii::PiiSettings::parse(settings)?),
        other => return Err(Invalid::new("name", format!("unknown plugin {other:?}"))),
    })
}

pub(crate) fn typed<T: serde::de::DeserializeOwned>(
    value: &serde_json::Value,
) -> Result<T, Invalid> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        Invalid::new(path, e.into_inner().to_string())
    })
}

/// A JSON object of strings (`{"X-Name": "value"}`) as ordered pairs: configuration order is
/// application order, and the error path names the key (`add_headers.X-Name`).
fn string_pairs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    struct Pairs;
    impl<'de> Visitor<'de> for Pairs {
        type Value = Vec<(String, String)>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object of strings, like {\"X-Name\": \"value\"}")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0));
            while let Some(pair) = map.next_entry::<String, String>()? {
                pairs.push(pair);
            }
            Ok(pairs)
        }
    }
    d.deserialize_map(Pairs)
}

/// Why `value` cannot be an HTTP field value, if it cannot: control characters other than
/// horizontal tab (CR and LF would split the header and smuggle others; NUL is refused by
/// most parsers) are out.
fn field_value_problem(value: &str) -> Option<&'static str> {
    value
        .bytes()
        .any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
        .then_some("must not contain control characters (CR, LF, NUL, ...)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_catalogued_plugin_parses_settings_and_every_parser_is_catalogued() {
        for def in CATALOGUE {
            let err =
                parse_settings(def.name, &json!({"no_such_setting": 1})).expect_err("unknown");
            assert_ne!(err.path, "name", "{} has no parser", def.name);
            assert!(!def.stages.is_empty(), "{}", def.name);
            assert!(!def.settings.is_empty(), "{}", def.name);
            for s in def.settings {
                assert!(
                    !s.ty.is_empty() && !s.default.is_empty() && !s.description.is_empty(),
                    "{}.{} is documented incompletely",
                    def.name,
                    s.path
                );
            }
        }
        assert_eq!(
            parse_settings("nope", &json!({}))
                .expect_err("unknown")
                .path,
            "name"
        );
    }

    #[test]
    fn every_rejection_reads_as_the_message_clients_get() {
        use crate::ratelimit::{Dimension, RejectReason};
        let exceeded = Rejected {
            dimension: Dimension::PerIp,
            reason: RejectReason::Limited,
            limit: 5,
            retry_after_secs: 7,
            reset_secs: 7,
            window_secs: 60,
        };
        let cases = [
            (
                Rejection::HeadTooLarge { limit: 100 },
                "request header fields too large",
            ),
            (Rejection::LengthRequired, "Content-Length required"),
            (
                Rejection::BodyTooLarge { limit: 10 },
                "request body too large",
            ),
            (Rejection::IpNotAllowed, "client IP not allowed"),
            (
                Rejection::RateLimited {
                    exceeded,
                    retry_after_secs: 60,
                },
                "per_ip rate limit exceeded",
            ),
            (
                PreflightRejection::OriginNotAllowed.into(),
                "CORS origin not allowed",
            ),
        ];
        for (rejection, message) in cases {
            assert_eq!(rejection.to_string(), message, "{rejection:?}");
        }
    }

    #[test]
    fn the_catalogue_serializes_with_type_default_and_stages() {
        let json = serde_json::to_value(CATALOGUE).expect("serialize");
        let cors = json
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == "cors"))
            .expect("cors listed");
        assert_eq!(cors["stages"], json!(["pre_request", "pre_response"]));
        assert_eq!(cors["settings"][0]["path"], "allowed_origins");
        assert!(cors["settings"][0]["type"].is_string());
        assert!(cors["settings"][0]["default"].is_string());
    }
}
