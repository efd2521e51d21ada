//! `token_rate_limiter`: exact LLM-token limits across all workers, for `ai` services.
//!
//! Settings in `rate_limiter`'s style (`limits.{global,per_ip,per_user}.{limit,window}`,
//! `user_header`); the limits count tokens instead of requests. Admission reserves an
//! upper bound of the request's cost on the shared counters and settles to the provider's
//! count when the response ends (see [`crate::ratelimit`], "Token reservations").

use serde::Deserialize;

use super::{Limits, PluginDef, SettingDoc, typed};
use crate::model::{Invalid, Stage};

pub(super) const DEF: PluginDef = PluginDef {
    name: "token_rate_limiter",
    description: "Exact sliding-window limits on AI tokens (prompt + completion) across all \
                  workers, globally, per client IP and per user, for `ai` services. Admission \
                  reserves an upper bound of the request's tokens (its prompt bytes plus \
                  max_tokens) and settles to the provider's count when the response ends, so \
                  concurrent requests cannot overshoot the limit; 429 with Retry-After and \
                  X-RateLimit-*-Tokens. Does nothing on services of other types.",
    stages: &[Stage::PreRequest],
    settings: &[
        SettingDoc {
            path: "limits.global.limit",
            ty: "integer > 0",
            default: "none (dimension off)",
            description: "Tokens admitted per window for the whole gateway (or rule).",
        },
        SettingDoc {
            path: "limits.global.window",
            ty: "duration (30s, 1m, 1h, 1d)",
            default: "required with limit",
            description: "Length of the sliding window.",
        },
        SettingDoc {
            path: "limits.per_ip.limit",
            ty: "integer > 0",
            default: "none (dimension off)",
            description: "Tokens per client IP per window.",
        },
        SettingDoc {
            path: "limits.per_ip.window",
            ty: "duration",
            default: "required with limit",
            description: "Length of the sliding window.",
        },
        SettingDoc {
            path: "limits.per_user.limit",
            ty: "integer > 0",
            default: "none (dimension off)",
            description: "Tokens per user per window: the API key, or `user_header`'s value.",
        },
        SettingDoc {
            path: "limits.per_user.window",
            ty: "duration",
            default: "required with limit",
            description: "Length of the sliding window.",
        },
        SettingDoc {
            path: "user_header",
            ty: "header name",
            default: "none (the API key is the user)",
            description: "Take the per_user identity from this request header instead of the key.",
        },
    ],
};

/// `token_rate_limiter` settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRateLimiterSettings {
    pub limits: Limits,
    #[serde(default)]
    pub user_header: Option<String>,
}

impl TokenRateLimiterSettings {
    pub fn parse(value: &serde_json::Value) -> Result<TokenRateLimiterSettings, Invalid> {
        let settings: TokenRateLimiterSettings = typed(value)?;
        // Same bounds and messages as rate_limiter: the two read alike.
        super::rate_limiter::validate_limits(&settings.limits)?;
        if let Some(h) = &settings.user_header
            && !crate::model::is_header_name(h)
        {
            return Err(Invalid::new(
                "user_header",
                format!("{h:?} is not an HTTP header name"),
            ));
        }
        Ok(settings)
    }
}
