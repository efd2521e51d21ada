//! The AI part of the configuration model (issue 15): which provider an upstream target is
//! and the credentials the gateway injects for it, the model names a target or service
//! accepts (allow-list, aliases, default), a service's price table, and a key's budget.
//!
//! Like the rest of [`crate::model`] these types are bincode-friendly (no
//! `skip_serializing_if`, no `flatten`) and validate themselves with [`Invalid`] paths
//! relative to the field that holds them. They never do I/O and never decide a status.
//!
//! Secrets: a provider API key is a [`ProviderSecret`], whose `Debug` never prints it, and
//! which the admin API shows as [`REDACTED`] (it takes the placeholder back on a PUT and
//! keeps the stored key; see `UpstreamSpec::restore_redacted_secrets`).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::duration::Span;
use crate::model::{Invalid, REDACTED};

/// At most this many model names in an allow-list, aliases or a price table.
pub const MAX_MODELS: usize = 256;
/// The longest model name accepted (OpenAI's and Anthropic's are under 64 bytes).
const MODEL_NAME_BYTES: usize = 256;
/// The longest provider credential accepted (keys are ~100–200 bytes; JWTs more).
const SECRET_BYTES: usize = 4096;
/// The largest `default_max_tokens` accepted: above every provider's output cap.
const MAX_DEFAULT_MAX_TOKENS: u64 = 1_000_000;

/// Which provider an upstream target is, and so which API it speaks and how it
/// authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// api.openai.com: `POST /v1/chat/completions`, `Authorization: Bearer`.
    #[serde(rename = "openai")]
    OpenAi,
    /// api.anthropic.com: `POST /v1/messages`, `x-api-key`, `anthropic-version`.
    Anthropic,
    /// Azure OpenAI: `POST /openai/deployments/{deployment}/chat/completions?api-version=`,
    /// `api-key`.
    #[serde(rename = "azure_openai")]
    AzureOpenAi,
    /// Any server speaking OpenAI's API (vLLM, Ollama, LM Studio, llama.cpp):
    /// `POST /v1/chat/completions`, `Authorization: Bearer` when a key is set.
    #[serde(rename = "openai_compatible")]
    OpenAiCompatible,
}

impl Provider {
    /// The name used in configuration and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::AzureOpenAi => "azure_openai",
            Provider::OpenAiCompatible => "openai_compatible",
        }
    }

    /// Whether the provider speaks Anthropic's Messages API (else OpenAI's Chat
    /// Completions).
    pub fn speaks_anthropic(self) -> bool {
        self == Provider::Anthropic
    }
}

/// A provider credential: stored (the gateway must present it), never shown, never logged.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProviderSecret(pub String);

impl fmt::Debug for ProviderSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl ProviderSecret {
    pub fn is_redacted(&self) -> bool {
        self.0 == REDACTED
    }
}

/// What the gateway presents to a provider on the client's behalf (`credentials` on a
/// target). Clients' own provider credentials are removed from every request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The provider API key. Required for `openai`, `anthropic` and `azure_openai`;
    /// optional for `openai_compatible` (a local vLLM or Ollama often has none).
    #[serde(default)]
    pub api_key: Option<ProviderSecret>,
    /// Azure: the deployment to call; default: the model name.
    #[serde(default)]
    pub deployment: Option<String>,
    /// Azure: the `api-version` query parameter (required for `azure_openai`).
    #[serde(default)]
    pub api_version: Option<String>,
}

/// Which models a target or service accepts and what it calls them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPolicy {
    /// Allow-list of model names (after aliasing); empty: any model.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Client name → provider model (`{"fast": "gpt-4o-mini"}`).
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    /// The model used when a request names none.
    #[serde(default)]
    pub default: Option<String>,
}

impl ModelPolicy {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.aliases.is_empty() && self.default.is_none()
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        if self.allow.len() > MAX_MODELS {
            return Err(Invalid::new(
                "allow",
                format!("at most {MAX_MODELS} models"),
            ));
        }
        if self.aliases.len() > MAX_MODELS {
            return Err(Invalid::new(
                "aliases",
                format!("at most {MAX_MODELS} aliases"),
            ));
        }
        for (i, m) in self.allow.iter().enumerate() {
            check_model(&format!("allow[{i}]"), m)?;
        }
        for (from, to) in &self.aliases {
            check_model("aliases", from)?;
            check_model(&format!("aliases.{from}"), to)?;
        }
        if let Some(d) = &self.default {
            check_model("default", d)?;
        }
        Ok(())
    }

    /// The model a request for `asked` (or none) goes to under this policy: the alias
    /// applied, the default filled in. `Err` says why the policy refuses it.
    pub fn resolve<'a>(&'a self, asked: Option<&'a str>) -> Result<&'a str, ModelRefused> {
        let name = match asked {
            Some(name) => name,
            None => self.default.as_deref().ok_or(ModelRefused::Missing)?,
        };
        let name = self.aliases.get(name).map_or(name, String::as_str);
        if !self.allow.is_empty() && !self.allow.iter().any(|m| m == name) {
            return Err(ModelRefused::NotAllowed);
        }
        Ok(name)
    }
}

/// Why a model name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelRefused {
    /// The request names no model and there is no default.
    Missing,
    /// The model is not on the allow-list.
    NotAllowed,
}

fn check_model(field: &str, name: &str) -> Result<(), Invalid> {
    if name.is_empty() || name.len() > MODEL_NAME_BYTES {
        return Err(Invalid::new(
            field,
            format!("a model name is 1 to {MODEL_NAME_BYTES} bytes"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Invalid::new(field, "control characters are not allowed"));
    }
    Ok(())
}

/// Validates a target's AI fields (`provider`, `credentials`, `models`); paths are the
/// target's field names.
pub fn validate_target(
    provider: Option<Provider>,
    credentials: Option<&Credentials>,
    models: &ModelPolicy,
) -> Result<(), Invalid> {
    models.validate().map_err(|e| e.under("models"))?;
    let Some(provider) = provider else {
        if credentials.is_some() {
            return Err(Invalid::new(
                "credentials",
                "only a target with a provider has credentials",
            ));
        }
        if !models.is_empty() {
            return Err(Invalid::new(
                "models",
                "only a target with a provider has models",
            ));
        }
        return Ok(());
    };
    let key = credentials.and_then(|c| c.api_key.as_ref());
    if let Some(key) = key {
        if key.0.is_empty() || key.0.len() > SECRET_BYTES {
            return Err(Invalid::new(
                "credentials.api_key",
                format!("1 to {SECRET_BYTES} bytes"),
            ));
        }
        // It becomes a header value: CR, LF or NUL would split the upstream request.
        if !key
            .0
            .bytes()
            .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
        {
            return Err(Invalid::new(
                "credentials.api_key",
                "must be visible ASCII (it is sent as a header value)",
            ));
        }
        if key.is_redacted() {
            return Err(Invalid::new(
                "credentials.api_key",
                format!(
                    "{REDACTED} stands for a stored key and this target has none: send the key"
                ),
            ));
        }
    } else if provider != Provider::OpenAiCompatible {
        return Err(Invalid::new(
            "credentials.api_key",
            format!("required for provider {}", provider.as_str()),
        ));
    }
    let c = credentials;
    let deployment = c.and_then(|c| c.deployment.as_deref());
    let version = c.and_then(|c| c.api_version.as_deref());
    if provider == Provider::AzureOpenAi {
        if version.is_none() {
            return Err(Invalid::new(
                "credentials.api_version",
                "required for azure_openai (e.g. \"2024-10-21\")",
            ));
        }
    } else if deployment.is_some() || version.is_some() {
        return Err(Invalid::new(
            "credentials",
            "deployment and api_version are for azure_openai only",
        ));
    }
    for (field, value) in [
        ("credentials.deployment", deployment),
        ("credentials.api_version", version),
    ] {
        if let Some(v) = value
            && (v.is_empty()
                || v.len() > 128
                || !v
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
        {
            return Err(Invalid::new(
                field,
                "1 to 128 letters, digits, '-', '_' or '.' (it goes into the request path)",
            ));
        }
    }
    Ok(())
}

/// Per-million-token prices of one model, in US dollars.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

impl Price {
    /// The cost of a request in nano-dollars (integers, so sums are exact).
    pub fn cost_nanos(&self, prompt: u64, completion: u64) -> u64 {
        // $/Mtok × tokens = $ × 10⁻⁶ ... × 10⁹ nano-dollars: × 1000 per token.
        let nanos = self.input_per_mtok * 1000.0 * prompt as f64
            + self.output_per_mtok * 1000.0 * completion as f64;
        if nanos.is_finite() && nanos > 0.0 {
            nanos.round().min(u64::MAX as f64) as u64
        } else {
            0
        }
    }
}

/// `ai` on a service of type `ai`: its model policy, price table and token defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiSettings {
    /// Allow-list, aliases and default model, applied before each target's own.
    #[serde(default)]
    pub models: ModelPolicy,
    /// Model → price (`{"gpt-4o": {"input_per_mtok": 2.5, "output_per_mtok": 10}}`), for the
    /// cost in usage, metrics and cost budgets. Keyed by the provider's model name; a model
    /// without a price costs 0.
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
    /// `max_tokens` sent to Anthropic when an OpenAI-API client set none (Anthropic requires
    /// it), and the completion size a token reservation assumes for such a request.
    /// Default 4096.
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u64,
}

fn default_max_tokens() -> u64 {
    4096
}

impl Default for AiSettings {
    fn default() -> Self {
        AiSettings {
            models: ModelPolicy::default(),
            prices: BTreeMap::new(),
            default_max_tokens: default_max_tokens(),
        }
    }
}

impl AiSettings {
    pub fn validate(&self) -> Result<(), Invalid> {
        self.models.validate().map_err(|e| e.under("models"))?;
        if self.prices.len() > MAX_MODELS {
            return Err(Invalid::new(
                "prices",
                format!("at most {MAX_MODELS} models"),
            ));
        }
        for (model, price) in &self.prices {
            check_model("prices", model)?;
            for (field, v) in [
                ("input_per_mtok", price.input_per_mtok),
                ("output_per_mtok", price.output_per_mtok),
            ] {
                if !(v.is_finite() && (0.0..=1_000_000.0).contains(&v)) {
                    return Err(Invalid::new(
                        format!("prices.{model}.{field}"),
                        "a price in dollars per million tokens, 0 to 1000000",
                    ));
                }
            }
        }
        if !(1..=MAX_DEFAULT_MAX_TOKENS).contains(&self.default_max_tokens) {
            return Err(Invalid::new(
                "default_max_tokens",
                format!("1 to {MAX_DEFAULT_MAX_TOKENS}"),
            ));
        }
        Ok(())
    }
}

/// `budget` on an API key: tokens and/or cost per period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Prompt + completion tokens per period.
    #[serde(default)]
    pub tokens: Option<u64>,
    /// US dollars per period (from the services' price tables).
    #[serde(default)]
    pub cost: Option<f64>,
    /// Whole hours (`720h`, `30d`); periods start at the key's creation, rounded down to the
    /// hour, and follow each other.
    pub period: Span,
}

impl Budget {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.tokens.is_none() && self.cost.is_none() {
            return Err(Invalid::new("", "set tokens, cost or both"));
        }
        if self.tokens == Some(0) {
            return Err(Invalid::new("tokens", "must be at least 1"));
        }
        if let Some(cost) = self.cost
            && !(cost.is_finite() && cost > 0.0 && cost <= 1e9)
        {
            return Err(Invalid::new("cost", "dollars, more than 0 and at most 1e9"));
        }
        let secs = self.period.as_duration().as_secs();
        let exact = self.period.as_duration().subsec_nanos() == 0;
        if !exact || !secs.is_multiple_of(3600) || !(3600..=366 * 86_400).contains(&secs) {
            return Err(Invalid::new(
                "period",
                "whole hours, from 1h to 366d (e.g. \"30d\")",
            ));
        }
        Ok(())
    }

    /// The cost limit in nano-dollars.
    pub fn cost_nanos(&self) -> Option<u64> {
        self.cost
            .map(|c| (c * 1e9).round().min(u64::MAX as f64) as u64)
    }

    /// The period `now` falls in, as `[start, end)` Unix seconds, for a key created at
    /// `created` (Unix seconds).
    pub fn period_at(&self, created: i64, now: i64) -> (i64, i64) {
        let len = self.period.as_duration().as_secs().max(3600) as i64;
        let anchor = created - created.rem_euclid(3600);
        let k = (now - anchor).div_euclid(len).max(0);
        let start = anchor + k * len;
        (start, start + len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(s: &str) -> Span {
        Span::parse(s).expect("span")
    }

    #[test]
    fn aliases_apply_before_the_allow_list_and_the_default_fills_a_missing_model() {
        let policy = ModelPolicy {
            allow: vec!["gpt-4o-mini".into()],
            aliases: [("fast".to_owned(), "gpt-4o-mini".to_owned())].into(),
            default: Some("fast".into()),
        };
        assert_eq!(policy.resolve(Some("fast")), Ok("gpt-4o-mini"));
        assert_eq!(policy.resolve(None), Ok("gpt-4o-mini"));
        assert_eq!(
            policy.resolve(Some("gpt-4o")),
            Err(ModelRefused::NotAllowed)
        );
        assert_eq!(
            ModelPolicy::default().resolve(None),
            Err(ModelRefused::Missing)
        );
        assert_eq!(ModelPolicy::default().resolve(Some("x")), Ok("x"));
    }

    #[test]
    fn provider_keys_are_required_printable_and_never_debug_printed() {
        let creds = |key: &str| Credentials {
            api_key: Some(ProviderSecret(key.into())),
            deployment: None,
            api_version: None,
        };
        let none = ModelPolicy::default();
        assert!(validate_target(Some(Provider::OpenAi), Some(&creds("sk-1")), &none).is_ok());
        let e = validate_target(Some(Provider::OpenAi), None, &none).expect_err("no key");
        assert_eq!(e.path, "credentials.api_key");
        assert!(validate_target(Some(Provider::OpenAiCompatible), None, &none).is_ok());
        let e = validate_target(Some(Provider::Anthropic), Some(&creds("a\r\nb")), &none)
            .expect_err("CRLF");
        assert_eq!(e.path, "credentials.api_key");
        let e = validate_target(Some(Provider::AzureOpenAi), Some(&creds("k")), &none)
            .expect_err("no version");
        assert_eq!(e.path, "credentials.api_version");
        let e = validate_target(None, Some(&creds("k")), &none).expect_err("no provider");
        assert_eq!(e.path, "credentials");
        assert!(!format!("{:?}", creds("sk-secret")).contains("sk-secret"));
    }

    #[test]
    fn prices_cost_in_nano_dollars() {
        let p = Price {
            input_per_mtok: 2.5,
            output_per_mtok: 10.0,
        };
        // 1000 × $2.5/M + 500 × $10/M = $0.0025 + $0.005 = 7.5 M nano-dollars.
        assert_eq!(p.cost_nanos(1000, 500), 7_500_000);
    }

    #[test]
    fn budget_periods_follow_each_other_from_the_creation_hour() {
        let b = Budget {
            tokens: Some(10),
            cost: None,
            period: span("30d"),
        };
        assert!(b.validate().is_ok());
        let created = 1_700_000_123; // 1_700_000_123 − 1_700_000_123 mod 3600 = 1_699_999_200
        let (start, end) = b.period_at(created, created + 10);
        assert_eq!(start, 1_699_999_200);
        assert_eq!(end, start + 30 * 86_400);
        let (next, _) = b.period_at(created, end + 5);
        assert_eq!(next, end);
        let bad = Budget {
            period: span("90m"),
            ..b.clone()
        };
        assert_eq!(bad.validate().expect_err("90m").path, "period");
        let empty = Budget {
            tokens: None,
            cost: None,
            period: span("1d"),
        };
        assert!(empty.validate().is_err());
    }
}
