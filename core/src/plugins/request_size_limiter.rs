//! `request_size_limiter`: refuse oversized requests before the upstream spends anything on
//! them.
//!
//! Lifecycle in the proxy: with the head parsed, [`RequestSizeLimiterSettings::check_head`]
//! decides from what the head says ([`Rejection::HeadTooLarge`], [`Rejection::LengthRequired`],
//! [`Rejection::BodyTooLarge`]); then, for a chunked body,
//! [`RequestSizeLimiterSettings::body_limit`] caps the bytes counted while it streams.

use serde::Deserialize;

use super::{PluginDef, Rejection, SettingDoc, typed};
use crate::model::{Invalid, Stage};

pub(super) const DEF: PluginDef = PluginDef {
    name: "request_size_limiter",
    description: "Refuses requests that are too large before the upstream is called: 431 when \
                  the request head is over max_header_bytes, 413 when the body is over \
                  max_body_bytes, and optionally 411 for bodies sent without Content-Length.",
    stages: &[Stage::PreRequest],
    settings: &[
        SettingDoc {
            path: "max_body_bytes",
            ty: "integer >= 0 (bytes)",
            default: "none (no body limit from this plugin)",
            description: "Largest request body. A Content-Length above it is answered 413 \
                          before the upstream is called; a chunked body is counted while it \
                          streams and refused with 413 once it goes over, so the upstream may \
                          already have received the part below the limit (set \
                          require_content_length to decide every body up front). 0 refuses \
                          every request that carries a body.",
        },
        SettingDoc {
            path: "max_header_bytes",
            ty: "integer > 0 (bytes)",
            default: "none (only the proxy's own head limit, 16 KiB by default)",
            description: "Largest request head: the request line, every header line and the \
                          blank line that ends it, as received. Over it: 431. The proxy's head \
                          limit is enforced first, so this can only lower it, per gateway or \
                          rule; large cookies and JWTs are what usually hit it.",
        },
        SettingDoc {
            path: "require_content_length",
            ty: "boolean",
            default: "false",
            description: "Answer 411 to requests that send a body without Content-Length \
                          (Transfer-Encoding: chunked). Lets max_body_bytes decide before any \
                          body byte moves and protects upstreams that cannot read chunked \
                          bodies; breaks clients that stream uploads of unknown length. \
                          Requests without a body (no Content-Length, not chunked) are never \
                          refused by it.",
        },
    ],
};

/// `request_size_limiter` settings. Each setting's default and trade-off are
/// documented in its [`CATALOGUE`](super::CATALOGUE) entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSizeLimiterSettings {
    /// Largest body in bytes ([`Rejection::BodyTooLarge`]). None: no limit. Default none.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// Largest request head in bytes (request line + header lines + blank line)
    /// ([`Rejection::HeadTooLarge`]). None: no limit beyond the proxy's. Default none.
    #[serde(default)]
    pub max_header_bytes: Option<u64>,
    /// Refuse a chunked body (no Content-Length) ([`Rejection::LengthRequired`]). Default
    /// false.
    #[serde(default)]
    pub require_content_length: bool,
}

impl RequestSizeLimiterSettings {
    pub(super) fn parse(settings: &serde_json::Value) -> Result<Self, Invalid> {
        let parsed: Self = typed(settings)?;
        if parsed == Self::default() {
            return Err(Invalid::new(
                "",
                "set at least one of max_body_bytes, max_header_bytes, require_content_length",
            ));
        }
        if parsed.max_header_bytes == Some(0) {
            return Err(Invalid::new("max_header_bytes", "must be greater than 0"));
        }
        Ok(parsed)
    }

    /// Decides from the parsed head alone, in this order: head size
    /// ([`Rejection::HeadTooLarge`]), a chunked body when Content-Length is required
    /// ([`Rejection::LengthRequired`]), the declared body size ([`Rejection::BodyTooLarge`]).
    ///
    /// `head_bytes` is the length of the head as received, blank line included;
    /// `content_length` the parsed Content-Length; `chunked` whether the body is chunked. The
    /// codec refuses a request carrying both, so they are never both set here. A request with
    /// neither has no body and passes the body checks.
    pub fn check_head(
        &self,
        head_bytes: usize,
        content_length: Option<u64>,
        chunked: bool,
    ) -> Result<(), Rejection> {
        if let Some(limit) = self.max_header_bytes
            && u64::try_from(head_bytes).unwrap_or(u64::MAX) > limit
        {
            return Err(Rejection::HeadTooLarge { limit });
        }
        if self.require_content_length && chunked && content_length.is_none() {
            return Err(Rejection::LengthRequired);
        }
        if let (Some(limit), Some(len)) = (self.max_body_bytes, content_length)
            && len > limit
        {
            return Err(Rejection::BodyTooLarge { limit });
        }
        Ok(())
    }

    /// The most body bytes to accept while streaming (for chunked bodies; a Content-Length
    /// over it was already refused by [`check_head`](Self::check_head)). Going over it is
    /// [`Rejection::BodyTooLarge`]. None: no limit.
    pub fn body_limit(&self) -> Option<u64> {
        self.max_body_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::{PluginSettings, parse_settings};
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<RequestSizeLimiterSettings, Invalid> {
        match parse_settings("request_size_limiter", &v)? {
            PluginSettings::RequestSizeLimiter(s) => Ok(s),
            other => panic!("parsed as another plugin: {other:?}"),
        }
    }

    #[test]
    fn settings_parse_with_defaults() {
        let s = parse(json!({"max_body_bytes": 1024})).expect("valid");
        assert_eq!(
            s,
            RequestSizeLimiterSettings {
                max_body_bytes: Some(1024),
                max_header_bytes: None,
                require_content_length: false,
            }
        );
        assert_eq!(s.body_limit(), Some(1024));
        let s = parse(json!({"require_content_length": true})).expect("valid");
        assert_eq!(s.body_limit(), None);
    }

    #[test]
    fn invalid_settings_are_refused_at_their_path() {
        assert_eq!(parse(json!({})).expect_err("no-op").path, "");
        assert_eq!(
            parse(json!({"require_content_length": false}))
                .expect_err("no-op")
                .path,
            ""
        );
        assert_eq!(
            parse(json!({"max_header_bytes": 0}))
                .expect_err("zero")
                .path,
            "max_header_bytes"
        );
        assert_eq!(
            parse(json!({"max_body_bytes": -1}))
                .expect_err("negative")
                .path,
            "max_body_bytes"
        );
        assert_eq!(
            parse(json!({"max_body_bytes": "1MB"}))
                .expect_err("text")
                .path,
            "max_body_bytes"
        );
        assert_eq!(
            parse(json!({"require_content_length": "yes"}))
                .expect_err("not a bool")
                .path,
            "require_content_length"
        );
        let err = parse(json!({"max_body": 1})).expect_err("unknown");
        assert!(err.message.contains("unknown field `max_body`"), "{err}");
    }

    #[test]
    fn an_oversized_head_is_refused_first_even_when_the_body_is_also_too_large() {
        let s = parse(json!({"max_header_bytes": 100, "max_body_bytes": 10})).expect("valid");
        assert_eq!(s.check_head(100, Some(10), false), Ok(()));
        assert_eq!(
            s.check_head(101, None, false),
            Err(Rejection::HeadTooLarge { limit: 100 })
        );
        assert_eq!(
            s.check_head(101, Some(11), false),
            Err(Rejection::HeadTooLarge { limit: 100 })
        );
    }

    #[test]
    fn a_declared_body_over_the_limit_is_too_large_and_at_the_limit_passes() {
        let s = parse(json!({"max_body_bytes": 10})).expect("valid");
        assert_eq!(s.check_head(usize::MAX, Some(10), false), Ok(()));
        assert_eq!(
            s.check_head(50, Some(11), false),
            Err(Rejection::BodyTooLarge { limit: 10 })
        );
        assert_eq!(
            s.check_head(50, None, true),
            Ok(()),
            "chunked is counted later"
        );
        let none = parse(json!({"max_body_bytes": 0})).expect("valid");
        assert_eq!(none.check_head(50, Some(0), false), Ok(()));
        assert_eq!(
            none.check_head(50, Some(1), false),
            Err(Rejection::BodyTooLarge { limit: 0 })
        );
    }

    #[test]
    fn a_chunked_body_needs_a_length_only_when_content_length_is_required() {
        let s = parse(json!({"require_content_length": true})).expect("valid");
        assert_eq!(s.check_head(50, None, true), Err(Rejection::LengthRequired));
        assert_eq!(s.check_head(50, Some(5), false), Ok(()));
        assert_eq!(s.check_head(50, None, false), Ok(()), "no body at all");
        let lax = parse(json!({"max_body_bytes": 5})).expect("valid");
        assert_eq!(lax.check_head(50, None, true), Ok(()));
    }
}
