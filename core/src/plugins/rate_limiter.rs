//! `rate_limiter`: exact sliding-window limits across all workers (DESIGN.md §5).
//!
//! This module holds the settings and their catalogue entry; the limiter itself (leased
//! per-core buckets over one shared budget) runs in the proxy.

use serde::{Deserialize, Deserializer};

use super::{PluginDef, Rejection, SettingDoc, typed};
use crate::duration::Span;
use crate::model::{Invalid, Stage};
use crate::ratelimit::Rejected;

pub(super) const DEF: PluginDef = PluginDef {
    name: "rate_limiter",
    description: "Exact sliding-window request limits across all workers, globally, per client IP \
                  and per user (API key). All dimensions are checked before any is charged; a \
                  rejected request never reaches the upstream.",
    stages: &[Stage::PreRequest],
    settings: &[
        SettingDoc {
            path: "limits.global.limit",
            ty: "integer > 0",
            default: "none (dimension off)",
            description: "Requests admitted per window for the whole gateway (or rule).",
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
            description: "Requests per client IP per window. The client IP is the socket peer, \
                          or the X-Forwarded-For client when the peer is a trusted proxy.",
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
            description: "Requests per user per window. The user is the authenticated API key, \
                          or the value of `user_header` when set; requests without a user \
                          identity skip this dimension.",
        },
        SettingDoc {
            path: "limits.per_user.window",
            ty: "duration",
            default: "required with limit",
            description: "Length of the sliding window.",
        },
        SettingDoc {
            path: "actions.type",
            ty: "\"reject\"",
            default: "reject",
            description: "What happens over the limit: answer 429 without calling the upstream.",
        },
        SettingDoc {
            path: "actions.retry_after",
            ty: "integer seconds (number or string)",
            default: "seconds until a slot frees",
            description: "Value of the Retry-After header and `retry_after` field on a 429.",
        },
        SettingDoc {
            path: "user_header",
            ty: "header name",
            default: "none (the API key is the user)",
            description: "Take the per_user identity from this request header instead of the key.",
        },
    ],
};

/// `rate_limiter` settings (the seed's shape).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterSettings {
    pub limits: Limits,
    #[serde(default)]
    pub actions: Actions,
    #[serde(default)]
    pub user_header: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default)]
    pub global: Option<Limit>,
    #[serde(default)]
    pub per_ip: Option<Limit>,
    #[serde(default)]
    pub per_user: Option<Limit>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub limit: u64,
    pub window: Span,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actions {
    #[serde(rename = "type", default)]
    pub kind: ActionKind,
    #[serde(default, deserialize_with = "seconds_number_or_string")]
    pub retry_after: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    #[default]
    Reject,
}

/// The seed writes `"retry_after": "60"`; users also write `60`. Both mean 60 seconds.
fn seconds_number_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Number(n)) => Ok(Some(n)),
        Some(Raw::Text(t)) => t.trim().parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!("{t:?} is not a whole number of seconds"))
        }),
    }
}

impl RateLimiterSettings {
    pub(super) fn parse(settings: &serde_json::Value) -> Result<RateLimiterSettings, Invalid> {
        let parsed: RateLimiterSettings = typed(settings)?;
        parsed.validate()?;
        Ok(parsed)
    }

    /// The plugin's verdict when its limiters refused a request: which dimension ran out,
    /// and when the client may come back (`actions.retry_after` when set, else when a slot
    /// frees).
    pub fn rejection(&self, exceeded: Rejected) -> Rejection {
        Rejection::RateLimited {
            exceeded,
            retry_after_secs: self
                .actions
                .retry_after
                .unwrap_or(exceeded.retry_after_secs),
        }
    }

    fn validate(&self) -> Result<(), Invalid> {
        validate_limits(&self.limits)?;
        if let Some(h) = &self.user_header
            && !crate::model::is_header_name(h)
        {
            return Err(Invalid::new(
                "user_header",
                format!("{h:?} is not an HTTP header name"),
            ));
        }
        Ok(())
    }
}

/// At least one dimension, none with a zero limit (shared with `token_rate_limiter`).
pub(super) fn validate_limits(limits: &Limits) -> Result<(), Invalid> {
    let dims = [
        ("global", &limits.global),
        ("per_ip", &limits.per_ip),
        ("per_user", &limits.per_user),
    ];
    if dims.iter().all(|(_, l)| l.is_none()) {
        return Err(Invalid::new(
            "limits",
            "set at least one of global, per_ip, per_user",
        ));
    }
    for (dim, limit) in dims {
        if let Some(l) = limit
            && l.limit == 0
        {
            return Err(Invalid::new(
                format!("limits.{dim}.limit"),
                "must be greater than 0",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::plugins::{PluginSettings, Rejection, parse_settings};
    use crate::ratelimit::{Dimension, RejectReason, Rejected};
    use serde_json::json;

    fn limiter(settings: serde_json::Value) -> super::RateLimiterSettings {
        match parse_settings("rate_limiter", &settings).expect("valid") {
            PluginSettings::RateLimiter(s) => s,
            other => panic!("parsed as another plugin: {other:?}"),
        }
    }

    #[test]
    fn the_seed_settings_parse_including_string_retry_after() {
        let s = parse_settings(
            "rate_limiter",
            &json!({
                "limits": {
                    "global": {"limit": 15, "window": "1m"},
                    "per_ip": {"limit": 5, "window": "1m"},
                    "per_user": {"limit": 5, "window": "1m"}
                },
                "actions": {"type": "reject", "retry_after": "60"}
            }),
        )
        .expect("seed settings are valid");
        let PluginSettings::RateLimiter(s) = s else {
            panic!("parsed as another plugin: {s:?}")
        };
        assert_eq!(s.actions.retry_after, Some(60));
        assert_eq!(s.limits.per_ip.map(|l| l.limit), Some(5));
    }

    #[test]
    fn zero_limit_and_string_limit_are_refused_at_their_path() {
        let err = parse_settings(
            "rate_limiter",
            &json!({"limits": {"per_ip": {"limit": 0, "window": "1m"}}}),
        )
        .expect_err("zero");
        assert_eq!(err.path, "limits.per_ip.limit");
        let err = parse_settings(
            "rate_limiter",
            &json!({"limits": {"per_ip": {"limit": "5", "window": "1m"}}}),
        )
        .expect_err("string limit");
        assert_eq!(err.path, "limits.per_ip.limit");
    }

    #[test]
    fn no_dimension_at_all_is_refused() {
        let err = parse_settings("rate_limiter", &json!({"limits": {}})).expect_err("empty");
        assert_eq!(err.path, "limits");
    }

    #[test]
    fn a_rejection_tells_the_configured_retry_after_or_when_a_slot_frees() {
        let exceeded = Rejected {
            dimension: Dimension::Global,
            reason: RejectReason::Limited,
            limit: 15,
            retry_after_secs: 12,
            reset_secs: 12,
            window_secs: 60,
        };
        let limits = json!({"global": {"limit": 15, "window": "1m"}});
        let configured = limiter(json!({"limits": limits, "actions": {"retry_after": "60"}}));
        assert_eq!(
            configured.rejection(exceeded),
            Rejection::RateLimited {
                exceeded,
                retry_after_secs: 60
            }
        );
        let unset = limiter(json!({"limits": limits}));
        assert_eq!(
            unset.rejection(exceeded),
            Rejection::RateLimited {
                exceeded,
                retry_after_secs: 12
            }
        );
    }
}
