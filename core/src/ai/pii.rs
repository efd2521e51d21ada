//! `pii_masking`: finds personal data in chat text and replaces it with placeholders, in
//! whole texts and in streams that arrive a few characters at a time.
//!
//! What it finds. Each built-in entity is a regex that proposes candidates and a check that
//! confirms them, so shapes that merely look alike are left alone:
//!
//! - `email`: `local@domain.tld`, letters of the Latin, Greek and Cyrillic scripts allowed
//!   before the ASCII top-level domain;
//! - `phone`: `+` international forms (`+44 20 7946 0958`), North American forms
//!   (`(555) 123-4567`, `1-555-123-4567`) and national numbers with a trunk `0` and
//!   separators (`030 1234567`, `06 12 34 56 78`); confirmed when it has 7 to 15 digits and
//!   is not shaped like a date (`01.02.2024`);
//! - `credit_card`: 13 to 19 digits, unbroken or grouped by spaces or dashes the way cards
//!   are printed (4-4-4-4, 4-6-5, ...); confirmed by the Luhn checksum ([`luhn_valid`]);
//! - `iban`: country code, check digits and BBAN, unbroken or in groups of 4, either case;
//!   confirmed by the ISO 13616 mod-97 check ([`iban_valid`]);
//! - `ipv4`: dotted quads with every octet at most 255, not part of a longer dotted number
//!   (`1.2.3.4.5`);
//! - `ipv6`: full and `::`-compressed forms, IPv4-mapped tails included; confirmed by std's
//!   `Ipv6Addr` parser;
//! - custom: the operator's regexes, confirmed by the pattern alone.
//!
//! Each match becomes `[EMAIL]`, `[PHONE]`, `[CREDIT_CARD]`, `[IBAN]`, `[IPV4]`, `[IPV6]` or
//! `[<NAME>]` (a custom pattern's name, uppercased). Where matches overlap, the one that starts
//! first wins, then the longest; a check that fails means "not this entity", never "mask
//! anyway", so a Luhn-failing 16-digit order number stays readable.
//!
//! Never does: any I/O, JSON, or HTTP. The caller hands over the text of each chat message
//! (or streamed delta) and decides what a reject becomes (400 naming the entity). It is
//! pattern matching, not understanding: names, postal addresses, numbers written in words,
//! non-ASCII digits, email addresses in CJK scripts or under non-ASCII top-level domains,
//! and a phone number without any separator or `+` (indistinguishable from any other
//! number) are not found. Deliberate trade-offs: version strings shaped like an IPv4 address
//! (`1.2.3.4`) are masked; an IPv6 candidate needs a decimal digit, so `add::` or
//! `dead::beef` in code stay as written; a candidate that fails its check is skipped whole,
//! so an entity that starts inside it is not looked for again.
//!
//! Cost and bounds: clean text costs one pass of a single [`RegexSet`] over it (lazy DFA,
//! linear time, no allocation); only the entities that set reports run their own pass.
//! Every pattern, the operator's included, is matched in linear time (the `regex` crate does
//! not backtrack), so no prompt can stall a worker. Custom patterns: at most
//! [`MAX_CUSTOM_PATTERNS`], each at most [`MAX_CUSTOM_PATTERN_BYTES`] of source and
//! [`REGEX_SIZE_LIMIT`] compiled.
//!
//! Streams ([`StreamMasker`]): an entity of at most `stream_window` bytes is masked however
//! the stream splits it, and the masker holds back at most `stream_window` bytes plus the
//! rest of an entity that straddles that point, so always less than 2 × `stream_window`.

use std::cmp::Reverse;
use std::net::Ipv6Addr;
use std::ops::Range;
use std::sync::Arc;

use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use serde::Deserialize;

use super::guard::regex_problem;
use crate::model::{Invalid, Stage};
use crate::plugins::{PluginDef, SettingDoc, typed};

/// `pii_masking` in the plugin catalogue.
pub const PII_MASKING_DEF: PluginDef = PluginDef {
    name: "pii_masking",
    description: "Masks personal data in the chat requests and responses of `ai` services, \
                  streamed responses included: email addresses, phone numbers, Luhn-valid card \
                  numbers, mod-97-valid IBANs, IPv4 and IPv6 addresses and custom regexes \
                  become placeholders such as [EMAIL] before the upstream (or the client) \
                  sees them. With action \"reject\", a request that contains any of them is \
                  refused with 400 naming the entity instead. Pattern matching, linear time: \
                  names and postal addresses are not detected.",
    stages: &[Stage::PreRequest],
    settings: &[
        SettingDoc {
            path: "entities",
            ty: "array of \"email\", \"phone\", \"credit_card\", \"iban\", \"ipv4\", \"ipv6\"",
            default: "all six",
            description: "Built-in entities to detect. Card numbers must pass the Luhn check \
                          and IBANs the mod-97 check, so look-alike numbers stay readable; \
                          phone numbers need a leading + or separators (a bare run of digits \
                          is any number); dates are never phone numbers. May be empty when \
                          custom patterns are set.",
        },
        SettingDoc {
            path: "custom",
            ty: "array of {name, pattern}, at most 32",
            default: "[]",
            description: "Extra patterns, masked as [NAME] (the name uppercased). They take \
                          part in overlap resolution like the built-ins: the match that \
                          starts first wins, then the longest. Each: `name` (required, 1 to 64 \
                          of A-Z a-z 0-9 _ -, unique, not a built-in entity name) and \
                          `pattern` (required, Rust regex syntax, at most 1024 bytes, must not \
                          match the empty string, compiled to at most 1 MiB).",
        },
        SettingDoc {
            path: "action",
            ty: "\"mask\" | \"reject\"",
            default: "mask",
            description: "What a request containing personal data gets: masked before it is \
                          forwarded, or refused with 400 naming the first entity found. \
                          Responses are always masked (they cannot be refused once the \
                          upstream has answered).",
        },
        SettingDoc {
            path: "apply_to",
            ty: "\"request\" | \"response\" | \"both\"",
            default: "both",
            description: "Which direction is inspected: the messages sent to the model, its \
                          answer (streamed or not), or both.",
        },
        SettingDoc {
            path: "stream_window",
            ty: "integer bytes, 16 to 4096",
            default: "256",
            description: "How much streamed text is held back so an entity split across \
                          chunks is still masked. Any entity up to this many bytes is masked \
                          however it is split; streamed text reaches the client at most this \
                          many bytes later (plus the rest of an entity straddling that point). \
                          Larger: longer custom entities are safe in streams, the first \
                          tokens arrive later.",
        },
    ],
};

/// Most custom patterns one plugin instance may define.
pub const MAX_CUSTOM_PATTERNS: usize = 32;
/// Longest custom pattern source, in bytes.
pub const MAX_CUSTOM_PATTERN_BYTES: usize = 1024;
/// Longest custom pattern name, in characters (all ASCII).
pub const MAX_CUSTOM_NAME_CHARS: usize = 64;
/// Most memory one compiled pattern may take (the `regex` crate's NFA size limit). A
/// pattern like `\w{500}` exceeds it: Unicode classes repeated many times grow fast.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Default `stream_window` in bytes: a long email address or a spaced IBAN (42 bytes) fits
/// several times over, while the first words of an answer are held back only briefly.
pub const DEFAULT_STREAM_WINDOW: usize = 256;
/// Allowed `stream_window` values, in bytes.
pub const STREAM_WINDOW_RANGE: std::ops::RangeInclusive<usize> = 16..=4096;

/// A built-in kind of personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entity {
    /// `email`: an email address.
    Email,
    /// `phone`: a phone number written with `+` or separators.
    Phone,
    /// `credit_card`: a Luhn-valid payment card number.
    CreditCard,
    /// `iban`: a mod-97-valid international bank account number.
    Iban,
    /// `ipv4`: an IPv4 address.
    Ipv4,
    /// `ipv6`: an IPv6 address.
    Ipv6,
}

impl Entity {
    /// Every built-in entity, in the order they break ties between equal matches.
    pub const ALL: [Entity; 6] = [
        Entity::Email,
        Entity::Phone,
        Entity::CreditCard,
        Entity::Iban,
        Entity::Ipv4,
        Entity::Ipv6,
    ];

    /// The name used in settings and in reject messages (`credit_card`).
    pub fn name(self) -> &'static str {
        match self {
            Entity::Email => "email",
            Entity::Phone => "phone",
            Entity::CreditCard => "credit_card",
            Entity::Iban => "iban",
            Entity::Ipv4 => "ipv4",
            Entity::Ipv6 => "ipv6",
        }
    }

    /// What a match is replaced with (`[CREDIT_CARD]`).
    pub fn placeholder(self) -> &'static str {
        match self {
            Entity::Email => "[EMAIL]",
            Entity::Phone => "[PHONE]",
            Entity::CreditCard => "[CREDIT_CARD]",
            Entity::Iban => "[IBAN]",
            Entity::Ipv4 => "[IPV4]",
            Entity::Ipv6 => "[IPV6]",
        }
    }

    /// The candidate pattern. ASCII classes and `(?-u:\b)` only: Unicode `\d`/`\b` would
    /// match Arabic-Indic digits and make the lazy DFA give up on non-ASCII text, falling
    /// back to a slower engine on every non-English prompt.
    fn pattern(self) -> &'static str {
        match self {
            // Letters of the alphabetic scripts (`jürgen@müller.de`), so a non-ASCII local
            // part is masked whole, not as `jü[EMAIL]`. Not CJK or Thai: those are written
            // without spaces, and the preceding words would be masked with the address.
            Entity::Email => concat!(
                r"[\p{Latin}\p{Greek}\p{Cyrillic}0-9._%+\-]+@",
                r"[\p{Latin}\p{Greek}\p{Cyrillic}0-9\-]+(?:\.[\p{Latin}\p{Greek}\p{Cyrillic}0-9\-]+)*",
                r"\.[A-Za-z]{2,}(?-u:\b)",
            ),
            // International (+CC, then up to six groups, a group possibly in parentheses);
            // North American with an optional leading 1; national with a trunk 0 and
            // separators. A bare digit run is never a phone number: it could be anything.
            Entity::Phone => concat!(
                r"\+[0-9]{1,3}(?:[ .\-]?(?:\([0-9]{1,4}\)|[0-9]{1,4})){1,6}",
                r"|(?:(?-u:\b)1[ .\-]?)?(?:\([0-9]{3}\)[ .\-]?|(?-u:\b)[0-9]{3}[ .\-])[0-9]{3}[ .\-][0-9]{4}(?-u:\b)",
                r"|(?:\(0[0-9]{1,4}\)[ ]?|(?-u:\b)0[0-9]{1,4}[ /.\-])[0-9]{2,8}(?:[ .\-][0-9]{2,8}){0,3}(?-u:\b)",
            ),
            Entity::CreditCard => r"(?-u:\b)[0-9](?:[ \-]?[0-9]){12,18}(?-u:\b)",
            Entity::Iban => {
                r"(?-u:\b)[A-Za-z]{2}[0-9]{2}(?:[ ]?[A-Za-z0-9]{4}){2,7}(?:[ ]?[A-Za-z0-9]{1,4})?(?-u:\b)"
            }
            Entity::Ipv4 => concat!(
                r"(?-u:\b)(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}",
                r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(?-u:\b)",
            ),
            // A hex group then 2 to 8 more colon-separated (possibly empty) groups, or a
            // leading `::` that no word character precedes (so `std::fmt` is no candidate);
            // either may end in an IPv4 tail (`::ffff:192.0.2.1`).
            Entity::Ipv6 => concat!(
                r"(?-u:\b)[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{0,4}){2,8}(?:\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})?",
                r"|(?-u:\B)::(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,6}(?:\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})?)?",
            ),
        }
    }
}

/// An operator-defined entity: matches of `pattern` are masked as `[NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomPattern {
    /// 1 to [`MAX_CUSTOM_NAME_CHARS`] of `A-Z a-z 0-9 _ -`; unique, not a built-in name.
    pub name: String,
    /// A `regex` crate pattern, at most [`MAX_CUSTOM_PATTERN_BYTES`] bytes.
    pub pattern: String,
}

/// What a request with personal data gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiAction {
    /// Masked, then forwarded.
    #[default]
    Mask,
    /// Refused (the proxy answers 400 naming the entity [`PiiMasker::find`] reports).
    Reject,
}

/// Which direction `pii_masking` inspects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyTo {
    /// Only the messages sent to the model.
    Request,
    /// Only the model's answer, streamed or not.
    Response,
    /// Both directions.
    #[default]
    Both,
}

/// `pii_masking` settings. Each setting's default and trade-off are documented in
/// [`PII_MASKING_DEF`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiiSettings {
    /// Built-in entities to detect. Default: all of [`Entity::ALL`].
    #[serde(default = "all_entities")]
    pub entities: Vec<Entity>,
    /// Operator-defined entities. Default empty.
    #[serde(default)]
    pub custom: Vec<CustomPattern>,
    /// What a request with personal data gets. Default [`PiiAction::Mask`].
    #[serde(default)]
    pub action: PiiAction,
    /// Requests, responses or both. Default [`ApplyTo::Both`].
    #[serde(default)]
    pub apply_to: ApplyTo,
    /// Bytes a [`StreamMasker`] holds back. Default [`DEFAULT_STREAM_WINDOW`].
    #[serde(default = "default_stream_window")]
    pub stream_window: usize,
}

fn all_entities() -> Vec<Entity> {
    Entity::ALL.to_vec()
}

fn default_stream_window() -> usize {
    DEFAULT_STREAM_WINDOW
}

impl Default for PiiSettings {
    /// What `{}` parses to: every built-in entity masked, both directions.
    fn default() -> PiiSettings {
        PiiSettings {
            entities: all_entities(),
            custom: Vec::new(),
            action: PiiAction::Mask,
            apply_to: ApplyTo::Both,
            stream_window: DEFAULT_STREAM_WINDOW,
        }
    }
}

impl PiiSettings {
    /// Parses and validates `settings` (compiling every pattern once, so a bad regex is
    /// refused when configured, not when the first request arrives). Paths in errors are
    /// relative to `settings`: `custom[1].pattern`.
    pub fn parse(settings: &serde_json::Value) -> Result<PiiSettings, Invalid> {
        let parsed: PiiSettings = typed(settings)?;
        PiiMasker::new(&parsed)?;
        Ok(parsed)
    }

    /// Whether requests are inspected (masked or, with [`PiiAction::Reject`], refused).
    pub fn applies_to_requests(&self) -> bool {
        matches!(self.apply_to, ApplyTo::Request | ApplyTo::Both)
    }

    /// Whether responses (streamed or not) are masked.
    pub fn applies_to_responses(&self) -> bool {
        matches!(self.apply_to, ApplyTo::Response | ApplyTo::Both)
    }

    /// Everything but the patterns, which [`PiiMasker::new`] checks as it compiles them.
    fn check(&self) -> Result<(), Invalid> {
        for (i, entity) in self.entities.iter().enumerate() {
            if self.entities[..i].contains(entity) {
                return Err(Invalid::new(
                    format!("entities[{i}]"),
                    format!("{:?} is listed twice", entity.name()),
                ));
            }
        }
        if self.entities.is_empty() && self.custom.is_empty() {
            return Err(Invalid::new(
                "entities",
                "select at least one entity or add a custom pattern",
            ));
        }
        if self.custom.len() > MAX_CUSTOM_PATTERNS {
            return Err(Invalid::new(
                "custom",
                format!("at most {MAX_CUSTOM_PATTERNS} patterns"),
            ));
        }
        for (i, c) in self.custom.iter().enumerate() {
            if let Some(problem) = name_problem(&c.name) {
                return Err(Invalid::new(format!("custom[{i}].name"), problem));
            }
            let taken = Entity::ALL.iter().any(|e| e.name() == c.name)
                || self.custom[..i].iter().any(|o| o.name == c.name);
            if taken {
                return Err(Invalid::new(
                    format!("custom[{i}].name"),
                    format!("{:?} is already the name of another entity", c.name),
                ));
            }
            if c.pattern.len() > MAX_CUSTOM_PATTERN_BYTES {
                return Err(Invalid::new(
                    format!("custom[{i}].pattern"),
                    format!("at most {MAX_CUSTOM_PATTERN_BYTES} bytes"),
                ));
            }
        }
        if !STREAM_WINDOW_RANGE.contains(&self.stream_window) {
            return Err(Invalid::new(
                "stream_window",
                format!(
                    "use {} to {} bytes",
                    STREAM_WINDOW_RANGE.start(),
                    STREAM_WINDOW_RANGE.end()
                ),
            ));
        }
        Ok(())
    }
}

fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > MAX_CUSTOM_NAME_CHARS {
        return Some(format!("use 1 to {MAX_CUSTOM_NAME_CHARS} characters"));
    }
    let bad = name
        .chars()
        .any(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'));
    bad.then(|| "use only A-Z, a-z, 0-9, _ and -".to_owned())
}

/// The plugin catalogue's parsing, here until `plugins::typed` is shared with this module:
/// serde errors with their JSON path, relative to `settings`.
/// One entity the masker looks for: a built-in (`kind: Some`) or a custom pattern.
#[derive(Debug)]
struct Detector {
    kind: Option<Entity>,
    name: Box<str>,
    placeholder: Box<str>,
    regex: Regex,
}

/// A confirmed match: `text[start..end]` is detector `detector`'s entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
    detector: usize,
}

/// Compiled `pii_masking` detection: immutable, `Send + Sync`, built once per snapshot and
/// shared by every worker (behind an `Arc` for [`StreamMasker`]s).
#[derive(Debug)]
pub struct PiiMasker {
    /// Every detector's pattern, index for index: one pass says which ones can match.
    set: RegexSet,
    detectors: Box<[Detector]>,
    stream_window: usize,
}

impl PiiMasker {
    /// Validates `settings` and compiles its entities and custom patterns. Errors name the
    /// offending setting as [`PiiSettings::parse`] does.
    pub fn new(settings: &PiiSettings) -> Result<PiiMasker, Invalid> {
        settings.check()?;
        let builtin = |e: Entity| {
            RegexBuilder::new(e.pattern())
                .build()
                .map(|regex| Detector {
                    kind: Some(e),
                    name: e.name().into(),
                    placeholder: e.placeholder().into(),
                    regex,
                })
                // Unreachable (the tests compile every built-in), but a bug here must
                // refuse the configuration, not panic a worker.
                .map_err(|err| Invalid::new("entities", regex_problem(err)))
        };
        // Built-ins in Entity::ALL order whatever the settings' order: ties between equal
        // matches break the same way for every configuration.
        let mut detectors = Entity::ALL
            .into_iter()
            .filter(|e| settings.entities.contains(e))
            .map(builtin)
            .collect::<Result<Vec<_>, _>>()?;
        for (i, c) in settings.custom.iter().enumerate() {
            let path = format!("custom[{i}].pattern");
            let regex = RegexBuilder::new(&c.pattern)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|err| Invalid::new(&path, regex_problem(err)))?;
            // An empty match would put a placeholder between every two characters.
            if regex.is_match("") {
                return Err(Invalid::new(path, "must not match the empty string"));
            }
            detectors.push(Detector {
                kind: None,
                placeholder: format!("[{}]", c.name.to_ascii_uppercase()).into(),
                name: c.name.as_str().into(),
                regex,
            });
        }
        let set = RegexSetBuilder::new(detectors.iter().map(|d| d.regex.as_str()))
            .size_limit(REGEX_SIZE_LIMIT * (settings.custom.len() + 1))
            .build()
            .map_err(|err| Invalid::new("custom", regex_problem(err)))?;
        Ok(PiiMasker {
            set,
            detectors: detectors.into_boxed_slice(),
            stream_window: settings.stream_window,
        })
    }

    /// `text` with every entity replaced by its placeholder, or `None` when there is none
    /// (then nothing was allocated).
    pub fn mask(&self, text: &str) -> Option<String> {
        let spans = self.spans(text, 0);
        (!spans.is_empty()).then(|| self.render(text, 0..text.len(), &spans))
    }

    /// The name of the first entity in `text` (`email`, `credit_card`, a custom name), or
    /// `None` when there is none: what a rejecting request is told.
    pub fn find(&self, text: &str) -> Option<&str> {
        let first = self.spans(text, 0).into_iter().next()?;
        Some(&self.detectors[first.detector].name)
    }

    /// The `stream_window` the settings asked for, used by [`StreamMasker::new`].
    pub fn stream_window(&self) -> usize {
        self.stream_window
    }

    /// The winning matches that start at or after `from`, in order and non-overlapping.
    /// Text before `from` is context only: it decides word boundaries and the look-behind
    /// checks, exactly as it would in one pass over the whole text.
    fn spans(&self, text: &str, from: usize) -> Vec<Span> {
        // The common case: one DFA pass, no allocation.
        if from >= text.len() || !self.set.is_match_at(text, from) {
            return Vec::new();
        }
        let mut found = Vec::new();
        for index in self.set.matches_at(text, from).iter() {
            let detector = &self.detectors[index];
            let mut at = from;
            while let Some(m) = detector.regex.find_at(text, at) {
                if m.is_empty() {
                    // Only a custom pattern can match empty here (built-ins never do, and
                    // `new` refuses patterns that match ""); step over it.
                    match text[m.end()..].chars().next() {
                        Some(c) => at = m.end() + c.len_utf8(),
                        None => break,
                    }
                    continue;
                }
                match confirm(detector.kind, text, m.start(), m.end()) {
                    Some(end) => {
                        found.push(Span {
                            start: m.start(),
                            end,
                            detector: index,
                        });
                        at = end;
                    }
                    None => at = m.end(),
                }
            }
        }
        found.sort_unstable_by_key(|s| (s.start, Reverse(s.end), s.detector));
        let mut last_end = 0;
        found.retain(|s| {
            let keep = s.start >= last_end;
            if keep {
                last_end = s.end;
            }
            keep
        });
        found
    }

    /// `text[range]` with `spans` (all inside `range`) replaced by their placeholders.
    fn render(&self, text: &str, range: Range<usize>, spans: &[Span]) -> String {
        let mut out = String::with_capacity(range.len());
        let mut at = range.start;
        for s in spans {
            out.push_str(&text[at..s.start]);
            out.push_str(&self.detectors[s.detector].placeholder);
            at = s.end;
        }
        out.push_str(&text[at..range.end]);
        out
    }
}

/// Where the confirmed entity ends (the candidate's end, or earlier when a trailing group
/// had to go), or `None` when `text[start..end]` is not the entity after all.
fn confirm(kind: Option<Entity>, text: &str, start: usize, end: usize) -> Option<usize> {
    let candidate = &text[start..end];
    match kind {
        None | Some(Entity::Email) => Some(end),
        Some(Entity::Phone) => phone_confirmed(text, start, end).then_some(end),
        // Digits right after a `+` are a phone number (or nothing), never a card.
        Some(Entity::CreditCard) if text[..start].ends_with('+') => None,
        Some(Entity::CreditCard) => card_len(candidate).map(|len| start + len),
        Some(Entity::Iban) => iban_len(candidate).map(|len| start + len),
        Some(Entity::Ipv4) => ipv4_confirmed(text, start, end).then_some(end),
        Some(Entity::Ipv6) => ipv6_end(text, start, end),
    }
}

fn phone_confirmed(text: &str, start: usize, end: usize) -> bool {
    let before = text[..start].chars().next_back();
    let after = text[end..].chars().next();
    // `x+4915...` or `...5678b` is an identifier, not a number someone wrote down.
    if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '+')
        || after.is_some_and(|c| c.is_ascii_alphanumeric())
    {
        return false;
    }
    // `2024-01-15 2024-01-16` holds `01-15 2024-01-16`: a number that a dash, dot or slash
    // joins to more digits is part of something longer. (A space may separate a phone
    // number from a country code or a count, so it does not count.)
    let bytes = text.as_bytes();
    let joined = |b: u8| matches!(b, b'-' | b'.' | b'/');
    if matches!(bytes[..start], [.., d, s] if d.is_ascii_digit() && joined(s))
        || matches!(bytes[end..], [s, d, ..] if d.is_ascii_digit() && joined(s))
    {
        return false;
    }
    let candidate = &text[start..end];
    let digits = candidate.bytes().filter(u8::is_ascii_digit).count();
    (7..=15).contains(&digits) && !looks_like_date(candidate)
}

/// `01.02.2024`, `05-11-2023`, `2024/01/15`: three digit groups with one repeated separator,
/// shaped like day-month-year or year-month-day.
fn looks_like_date(s: &str) -> bool {
    let Some(sep) = s.bytes().find(|b| !b.is_ascii_digit()) else {
        return false;
    };
    if !matches!(sep, b'-' | b'/' | b'.') {
        return false;
    }
    let mut lens = [0usize; 3];
    let mut groups = 0;
    for group in s.split(sep as char) {
        if groups == 3 || !group.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        lens[groups] = group.len();
        groups += 1;
    }
    groups == 3 && matches!(lens, [1..=2, 1..=2, 2 | 4] | [4, 1..=2, 1..=2])
}

/// The length of the card number at the start of `candidate`: the whole candidate, or it
/// without trailing groups (`4111 1111 1111 1111 2031` holds a card and a year), as long as
/// the groups follow a card layout and the digits pass Luhn.
fn card_len(candidate: &str) -> Option<usize> {
    let (ends, count) = group_ends(candidate, b" -")?;
    let ends = &ends[..count];
    (1..=ends.len()).rev().find_map(|k| {
        let prefix = &candidate[..ends[k - 1]];
        let digits = prefix.bytes().filter(u8::is_ascii_digit).count();
        let layout = card_layout(&ends[..k]);
        ((13..=19).contains(&digits) && layout && luhn_valid(prefix)).then_some(prefix.len())
    })
}

/// Card layouts: one unbroken run, 4-4-4-… with a last group of 1 to 4, or Amex/Diners
/// 4-6-5 and 4-6-4. Anything else (`2024-01-15 2024-01-16`) is not how cards are written.
fn card_layout(ends: &[usize]) -> bool {
    let mut lens = [0usize; 19];
    let mut start = 0;
    for (i, &end) in ends.iter().enumerate() {
        lens[i] = end - start;
        start = end + 1;
    }
    let lens = &lens[..ends.len()];
    match lens {
        [_] | [4, 6, 5] | [4, 6, 4] => true,
        [init @ .., last] => init.iter().all(|&l| l == 4) && (1..=4).contains(last),
        [] => false,
    }
}

/// Byte offsets where each group of `s` ends, groups split by one separator from `seps`
/// (mixing two separators in one number is refused: `None`). At most 19 groups, which is
/// all a 19-digit number can have.
fn group_ends(s: &str, seps: &[u8]) -> Option<([usize; 19], usize)> {
    let mut ends = [0usize; 19];
    let mut count = 0;
    let mut sep_used = None;
    for (i, b) in s.bytes().enumerate() {
        if seps.contains(&b) {
            if *sep_used.get_or_insert(b) != b || count == ends.len() {
                return None;
            }
            ends[count] = i;
            count += 1;
        }
    }
    if count == ends.len() {
        return None;
    }
    ends[count] = s.len();
    Some((ends, count + 1))
}

/// Whether the digits of `digits` (spaces and dashes between them are ignored) pass the
/// Luhn checksum that card numbers carry. Needs at least two digits; any other character
/// makes it `false`.
pub fn luhn_valid(digits: &str) -> bool {
    let mut sum = 0u32;
    let mut count = 0usize;
    for b in digits.bytes().rev() {
        match b {
            b'0'..=b'9' => {
                let d = u32::from(b - b'0');
                sum += if count % 2 == 1 {
                    let doubled = d * 2;
                    if doubled > 9 { doubled - 9 } else { doubled }
                } else {
                    d
                };
                count += 1;
            }
            b' ' | b'-' => {}
            _ => return false,
        }
    }
    count >= 2 && sum.is_multiple_of(10)
}

/// The length of the IBAN at the start of `candidate`: all of it, or it without trailing
/// space-separated groups (the pattern may have taken the next word), provided spaced
/// groups are the usual 4 characters (the last 1 to 4) and the mod-97 check passes.
fn iban_len(candidate: &str) -> Option<usize> {
    let (ends, count) = group_ends(candidate, b" ")?;
    let ends = &ends[..count];
    (1..=ends.len()).rev().find_map(|k| {
        let prefix = &candidate[..ends[k - 1]];
        let layout = k == 1 || {
            let mut start = 0;
            ends[..k].iter().enumerate().all(|(i, &end)| {
                let len = end - start;
                start = end + 1;
                if i + 1 == k {
                    (1..=4).contains(&len)
                } else {
                    len == 4
                }
            })
        };
        (layout && iban_valid(prefix)).then_some(prefix.len())
    })
}

/// Whether `s` is an IBAN (ISO 13616): 15 to 34 characters (spaces ignored, letters in
/// either case), two letters, two check digits (02 to 98), then letters and digits, and the
/// whole passes the mod-97 check. The country's own BBAN length is not checked, so a new
/// country's IBANs are recognised without an update.
pub fn iban_valid(s: &str) -> bool {
    let mut chars = [0u8; 34];
    let mut len = 0;
    for b in s.bytes().filter(|&b| b != b' ') {
        if len == chars.len() || !b.is_ascii_alphanumeric() {
            return false;
        }
        chars[len] = b.to_ascii_uppercase();
        len += 1;
    }
    let chars = &chars[..len];
    if len < 15
        || !chars[..2].iter().all(u8::is_ascii_uppercase)
        || !chars[2..4].iter().all(u8::is_ascii_digit)
        || matches!(&chars[2..4], b"00" | b"01" | b"99")
    {
        return false;
    }
    // The country code and check digits move to the end; letters count as 10..=35.
    let remainder = chars[4..].iter().chain(&chars[..4]).fold(0u32, |r, &c| {
        if c.is_ascii_digit() {
            (r * 10 + u32::from(c - b'0')) % 97
        } else {
            (r * 100 + u32::from(c - b'A') + 10) % 97
        }
    });
    remainder == 1
}

fn ipv4_confirmed(text: &str, start: usize, end: usize) -> bool {
    // `1.2.3.4.5` and `9.1.2.3.4` are longer dotted numbers (versions, OIDs), not addresses.
    let before = &text.as_bytes()[..start];
    let after = &text.as_bytes()[end..];
    let dotted_before = matches!(before, [.., d, b'.'] if d.is_ascii_digit());
    let dotted_after = matches!(after, [b'.', d, ..] if d.is_ascii_digit());
    !dotted_before && !dotted_after
}

fn ipv6_end(text: &str, start: usize, end: usize) -> Option<usize> {
    let candidate = &text[start..end];
    // A candidate without a decimal digit is far likelier code (`add::`, `a::b`) than an
    // address; the masking of `dead::beef` is what this gives up.
    if !candidate.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    let free_after = |at: usize| {
        !text
            .as_bytes()
            .get(at)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
    };
    if free_after(end) && candidate.parse::<Ipv6Addr>().is_ok() {
        return Some(end);
    }
    // "fe80::1: link down": the colon after the address is punctuation.
    let trimmed = candidate.strip_suffix(':')?;
    (!trimmed.ends_with(':') && trimmed.parse::<Ipv6Addr>().is_ok()).then_some(end - 1)
}

/// How many characters of already-emitted text a [`StreamMasker`] keeps as context: enough
/// for every look-behind a pattern or check makes (`\b`, `^`, the `9.` before `1.2.3.4`).
const STREAM_CONTEXT_CHARS: usize = 4;

/// Masks one streamed text (one response's content deltas) as it arrives.
///
/// It holds back the last `stream_window` bytes it was given, and more only to keep a
/// match that reaches into them whole; everything before that point can no longer be part
/// of an entity of at most `stream_window` bytes, so it is masked and emitted. Guarantees:
///
/// - an entity of at most `stream_window` bytes is masked however the stream splits it, and
///   the concatenated output equals [`PiiMasker::mask`] of the whole text whenever every
///   entity in it is at most that long;
/// - text is delayed by at most `stream_window` bytes, plus the rest of an entity straddling
///   that point (at most `stream_window` more), so [`held`](Self::held) stays under
///   2 × `stream_window` after every [`push`](Self::push);
/// - a longer (custom) match straddling the point is masked and emitted whole, so what it
///   matched never leaks; text that continues it later becomes a second placeholder, or
///   stays readable if it does not match on its own.
///
/// `push` is a string append until more than `stream_window` bytes are held; after that each
/// push scans the held bytes once (one [`RegexSet`] pass when they are clean).
#[derive(Debug)]
pub struct StreamMasker {
    masker: Arc<PiiMasker>,
    /// Emitted context (`buf[..emitted]`), then the text not emitted yet.
    buf: String,
    emitted: usize,
}

impl StreamMasker {
    /// A masker for one stream, with `masker`'s `stream_window`.
    pub fn new(masker: Arc<PiiMasker>) -> StreamMasker {
        StreamMasker {
            masker,
            buf: String::new(),
            emitted: 0,
        }
    }

    /// Takes the next fragment; returns the masked text that is now final (often empty).
    pub fn push(&mut self, text: &str) -> String {
        self.buf.push_str(text);
        let window = self.masker.stream_window;
        if self.held() <= window {
            return String::new();
        }
        // Rounding up keeps the held text within the window; an entity of at most
        // `window` bytes that is not complete yet starts at or after `len - window`, on a
        // char boundary, so at or after the rounded cut too.
        let mut cut = ceil_char_boundary(&self.buf, self.buf.len() - window);
        let spans = self.masker.spans(&self.buf, self.emitted);
        // Spans are ordered and disjoint: at most one straddles the cut.
        if let Some(s) = spans.iter().find(|s| s.end > cut)
            && s.start < cut
        {
            cut = if s.end - s.start <= window {
                s.start
            } else {
                s.end
            };
        }
        let done = spans.partition_point(|s| s.end <= cut);
        let out = self
            .masker
            .render(&self.buf, self.emitted..cut, &spans[..done]);
        self.keep_from(cut);
        out
    }

    /// Ends the stream: returns the rest, masked. The masker is then empty and may start
    /// another stream.
    pub fn finish(&mut self) -> String {
        let spans = self.masker.spans(&self.buf, self.emitted);
        let out = self
            .masker
            .render(&self.buf, self.emitted..self.buf.len(), &spans);
        self.buf.clear();
        self.emitted = 0;
        out
    }

    /// Bytes received but not emitted yet.
    pub fn held(&self) -> usize {
        self.buf.len() - self.emitted
    }

    /// Drops emitted text up to `cut`, keeping a few characters before it as context.
    fn keep_from(&mut self, cut: usize) {
        let context_start = self.buf[..cut]
            .char_indices()
            .rev()
            .take(STREAM_CONTEXT_CHARS)
            .last()
            .map_or(cut, |(i, _)| i);
        self.buf.drain(..context_start);
        self.emitted = cut - context_start;
    }
}

/// The smallest char boundary of `s` at or above `at` (`str::ceil_char_boundary` is not
/// stable in this crate's minimum Rust).
fn ceil_char_boundary(s: &str, mut at: usize) -> usize {
    while !s.is_char_boundary(at) {
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn masker(settings: serde_json::Value) -> PiiMasker {
        let settings = PiiSettings::parse(&settings).expect("valid settings");
        PiiMasker::new(&settings).expect("compiles")
    }

    fn default_masker() -> PiiMasker {
        masker(json!({}))
    }

    fn masked(text: &str) -> String {
        default_masker()
            .mask(text)
            .unwrap_or_else(|| text.to_owned())
    }

    const CLEAN_PROSE: &str = "The quick brown fox jumps over the lazy dog. Ünïcödé text, \
                               日本語のテキスト, numbers like 42 and 3.14, version 2.0, \
                               the year 2024, 10:30 am, std::fmt::Display and Vec::new().";

    // -- settings --------------------------------------------------------------------------

    #[test]
    fn empty_settings_mask_all_six_entities_in_both_directions() {
        let s = PiiSettings::parse(&json!({})).expect("valid");
        assert_eq!(s, PiiSettings::default());
        assert_eq!(s.entities, Entity::ALL.to_vec());
        assert_eq!(s.action, PiiAction::Mask);
        assert!(s.applies_to_requests() && s.applies_to_responses());
        assert_eq!(s.stream_window, 256);
    }

    #[test]
    fn every_setting_parses_from_its_documented_form() {
        let s = PiiSettings::parse(&json!({
            "entities": ["email", "credit_card"],
            "custom": [{"name": "employee_id", "pattern": "EMP-[0-9]{6}"}],
            "action": "reject",
            "apply_to": "request",
            "stream_window": 64
        }))
        .expect("valid");
        assert_eq!(s.entities, [Entity::Email, Entity::CreditCard]);
        assert_eq!(s.custom[0].name, "employee_id");
        assert_eq!(s.action, PiiAction::Reject);
        assert!(s.applies_to_requests() && !s.applies_to_responses());
        assert_eq!(s.stream_window, 64);
    }

    #[test]
    fn invalid_settings_are_refused_at_their_path() {
        let cases = [
            (json!({"entitiez": []}), "entitiez"),
            (json!({"entities": ["email", "passport"]}), "entities[1]"),
            (json!({"entities": ["email", "email"]}), "entities[1]"),
            (json!({"entities": []}), "entities"),
            (json!({"action": "redact"}), "action"),
            (json!({"apply_to": "all"}), "apply_to"),
            (json!({"stream_window": 15}), "stream_window"),
            (json!({"stream_window": 4097}), "stream_window"),
            (
                json!({"custom": [{"name": "a", "pattern": "x", "flags": "i"}]}),
                "custom[0].flags",
            ),
            (
                json!({"custom": [{"name": "", "pattern": "x"}]}),
                "custom[0].name",
            ),
            (
                json!({"custom": [{"name": "has space", "pattern": "x"}]}),
                "custom[0].name",
            ),
            (
                json!({"custom": [{"name": "email", "pattern": "x"}]}),
                "custom[0].name",
            ),
            (
                json!({"custom": [{"name": "a", "pattern": "x"}, {"name": "a", "pattern": "y"}]}),
                "custom[1].name",
            ),
            (
                json!({"custom": [{"name": "a", "pattern": "x"}, {"name": "b", "pattern": "(x"}]}),
                "custom[1].pattern",
            ),
            (
                json!({"custom": [{"name": "a", "pattern": "x*"}]}),
                "custom[0].pattern",
            ),
            (
                json!({"custom": [{"name": "a", "pattern": "x".repeat(1025)}]}),
                "custom[0].pattern",
            ),
        ];
        for (settings, path) in cases {
            let err = PiiSettings::parse(&settings).expect_err(&settings.to_string());
            assert_eq!(err.path, path, "{settings}: {err}");
        }
    }

    #[test]
    fn too_many_custom_patterns_are_refused() {
        let custom: Vec<_> = (0..=MAX_CUSTOM_PATTERNS)
            .map(|i| json!({"name": format!("p{i}"), "pattern": format!("x{i}y")}))
            .collect();
        let err = PiiSettings::parse(&json!({ "custom": custom })).expect_err("33 patterns");
        assert_eq!(err.path, "custom");
    }

    #[test]
    fn a_custom_pattern_that_compiles_too_big_is_refused_not_built() {
        let err = PiiSettings::parse(&json!({"custom": [{"name": "big", "pattern": r"\w{500}"}]}))
            .expect_err("over the size limit");
        assert_eq!(err.path, "custom[0].pattern");
        assert!(err.message.contains("simpler"), "{err}");
    }

    #[test]
    fn the_catalogue_entry_documents_every_setting() {
        let def = PII_MASKING_DEF;
        assert_eq!(def.name, "pii_masking");
        assert_eq!(def.stages, &[Stage::PreRequest]);
        for field in ["entities", "custom", "action", "apply_to", "stream_window"] {
            assert!(
                def.settings.iter().any(|s| s.path == field),
                "{field} undocumented"
            );
        }
        for s in def.settings {
            assert!(!s.ty.is_empty() && !s.default.is_empty() && !s.description.is_empty());
        }
    }

    // -- detection -------------------------------------------------------------------------

    #[test]
    fn clean_text_is_left_alone_without_allocating_a_copy() {
        assert_eq!(default_masker().mask(CLEAN_PROSE), None);
        assert_eq!(default_masker().find(CLEAN_PROSE), None);
        assert_eq!(default_masker().mask(""), None);
    }

    #[test]
    fn emails_are_masked() {
        for (text, want) in [
            ("mail jane.doe+ai@example.co.uk now", "mail [EMAIL] now"),
            ("<a_b%c@mail-host.io>.", "<[EMAIL]>."),
            ("Contact:bob@x.org", "Contact:[EMAIL]"),
        ] {
            assert_eq!(masked(text), want, "{text}");
        }
        assert_eq!(
            masked("user@localhost and @handle"),
            "user@localhost and @handle"
        );
    }

    #[test]
    fn phone_numbers_are_masked_in_international_and_national_forms() {
        for number in [
            "+1 555 123 4567",
            "+1 (555) 123-4567",
            "+44 20 7946 0958",
            "+4915112345678",
            "+33 6 12 34 56 78",
            "(555) 123-4567",
            "555-123-4567",
            "555.123.4567",
            "1-555-123-4567",
            "030 1234567",
            "(030) 1234567",
            "0171/1234567",
            "06 12 34 56 78",
            "020 7946 0958",
        ] {
            let text = format!("call {number} today");
            assert_eq!(masked(&text), "call [PHONE] today", "{number}");
        }
    }

    #[test]
    fn dates_plain_numbers_and_short_numbers_are_not_phone_numbers() {
        for text in [
            "on 01.02.2024 at 10:30",
            "on 05-11-2023",
            "on 2024-01-15",
            "on 2024/01/15",
            "order 5551234567 shipped",
            "pi is 3.14159",
            "+12 is small",
            "in 1999 200 people",
            "id x+4915112345678",
            "2024-01-15 2024-01-16",
            "v1.2-030.123.4567",
        ] {
            assert_eq!(masked(text), text, "{text}");
        }
    }

    #[test]
    fn luhn_valid_card_numbers_are_masked_in_every_common_layout() {
        for card in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "5500 0000 0000 0004",
            "3782 822463 10005",
            "4222222222222",
            "6011 0009 9013 9424",
        ] {
            let text = format!("card {card}, thanks");
            assert_eq!(masked(&text), "card [CREDIT_CARD], thanks", "{card}");
        }
    }

    #[test]
    fn luhn_failing_numbers_and_odd_groupings_are_not_cards() {
        for text in [
            "order 4111 1111 1111 1112",
            "tracking 1234567890123456",
            "2024-01-15 2024-01-16",
            "4111 1111-1111 1111",
        ] {
            assert_eq!(masked(text), text, "{text}");
        }
    }

    #[test]
    fn a_card_followed_by_another_group_is_masked_without_it() {
        assert_eq!(
            masked("4111 1111 1111 1111 2031 expiry"),
            "[CREDIT_CARD] 2031 expiry"
        );
    }

    #[test]
    fn mod97_valid_ibans_are_masked_plain_spaced_and_lowercase() {
        for iban in [
            "DE89370400440532013000",
            "DE89 3704 0044 0532 0130 00",
            "GB82 WEST 1234 5698 7654 32",
            "gb82west12345698765432",
            "NO9386011117947",
            "FR14 2004 1010 0505 0001 3M02 606",
        ] {
            let text = format!("IBAN: {iban} ABCD please");
            assert_eq!(masked(&text), "IBAN: [IBAN] ABCD please", "{iban}");
        }
    }

    #[test]
    fn ibans_with_a_wrong_check_digit_are_left_alone() {
        for text in ["DE88370400440532013000", "GB82 WEST 1234 5698 7654 33"] {
            assert_eq!(masked(text), text);
        }
    }

    #[test]
    fn ipv4_addresses_are_masked_when_every_octet_fits() {
        assert_eq!(
            masked("from 192.168.1.10, 10.0.0.1 and 255.255.255.255."),
            "from [IPV4], [IPV4] and [IPV4]."
        );
        for text in [
            "256.1.1.1",
            "300.1.1.1",
            "1.2.3.4.5",
            "9.1.2.3.4",
            "192.168.1",
        ] {
            assert_eq!(masked(text), text, "{text}");
        }
    }

    #[test]
    fn ipv6_addresses_are_masked_full_compressed_and_mapped() {
        for addr in [
            "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
            "2001:db8::1",
            "fe80::1",
            "::1",
            "::ffff:192.0.2.1",
            "1:2:3:4:5:6:7::",
        ] {
            let text = format!("host {addr} is up");
            assert_eq!(masked(&text), "host [IPV6] is up", "{addr}");
        }
        assert_eq!(masked("fe80::1: link down"), "[IPV6]: link down");
    }

    #[test]
    fn code_times_and_mac_addresses_are_not_ipv6() {
        for text in [
            "use std::fmt::Display; a::b; x.add::<u8>(); Self::A; i32::MAX",
            "at 12:30:45",
            "mac 00:1a:2b:3c:4d:5e",
            "what :: is",
        ] {
            assert_eq!(masked(text), text, "{text}");
        }
    }

    #[test]
    fn custom_patterns_are_masked_with_their_uppercased_name() {
        let m = masker(json!({
            "entities": [],
            "custom": [{"name": "employee-id", "pattern": "EMP-[0-9]{6}"}]
        }));
        assert_eq!(
            m.mask("ask EMP-123456 or EMP-1").as_deref(),
            Some("ask [EMPLOYEE-ID] or EMP-1")
        );
        assert_eq!(m.find("EMP-000001"), Some("employee-id"));
        // Only what is selected is masked.
        assert_eq!(m.mask("a@b.com"), None);
    }

    #[test]
    fn overlapping_matches_go_to_the_earliest_start_then_the_longest() {
        let m = masker(json!({"custom": [
            {"name": "token", "pattern": "key=[a-z0-9@.]+"},
            {"name": "short", "pattern": "abc"},
            {"name": "long", "pattern": "abcdef"}
        ]}));
        // The custom match starts before the email inside it.
        assert_eq!(m.mask("key=bob@example.com").as_deref(), Some("[TOKEN]"));
        // Same start: the longer wins, whichever was configured first.
        assert_eq!(m.mask("abcdef abc").as_deref(), Some("[LONG] [SHORT]"));
        // The IPv6 address starts before the IPv4 address embedded in it.
        assert_eq!(m.mask("::ffff:10.0.0.1").as_deref(), Some("[IPV6]"));
    }

    #[test]
    fn find_names_the_first_entity_for_a_reject() {
        let m = default_masker();
        assert_eq!(
            m.find("card 4111111111111111 or a@b.io"),
            Some("credit_card")
        );
        assert_eq!(m.find("a@b.io then 4111111111111111"), Some("email"));
        assert_eq!(m.find("DE89370400440532013000"), Some("iban"));
        assert_eq!(m.find("nothing here"), None);
    }

    #[test]
    fn masking_leaves_unicode_text_around_entities_intact() {
        assert_eq!(
            masked("Grüße an jürgen@example.de — 電話 +81 3 1234 5678。"),
            "Grüße an [EMAIL] — 電話 [PHONE]。"
        );
    }

    #[test]
    fn luhn_and_iban_checks_match_their_specifications() {
        assert!(luhn_valid("4111111111111111"));
        assert!(luhn_valid("4111 1111-1111 1111"));
        assert!(luhn_valid("79927398713"));
        assert!(!luhn_valid("79927398710"));
        assert!(!luhn_valid("4111x111111111111"));
        assert!(!luhn_valid("0"));
        assert!(!luhn_valid(""));

        assert!(iban_valid("DE89 3704 0044 0532 0130 00"));
        assert!(iban_valid("be71096123456769"));
        assert!(iban_valid("MT84MALT011000012345MTLCAST001S"));
        assert!(!iban_valid("DE89 3704 0044 0532 0130 01"));
        assert!(!iban_valid("DE8937040044"), "too short");
        assert!(!iban_valid("1289370400440532013000"), "no country code");
        assert!(!iban_valid("DE89-3704-0044-0532-0130-00"), "dashes");
        assert!(!iban_valid(&format!("DE89{}", "0".repeat(31))), "too long");
    }

    #[test]
    fn the_masker_can_be_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<PiiMasker>();
        shared::<Arc<PiiMasker>>();
        shared::<StreamMasker>();
    }

    // -- streaming -------------------------------------------------------------------------

    /// One sample of each entity, in a sentence.
    const ENTITY_SAMPLES: [&str; 7] = [
        "write to jane.doe@example.com soon",
        "call +44 20 7946 0958 now",
        "pay with 4111 1111 1111 1111 ok",
        "send to DE89 3704 0044 0532 0130 00 today",
        "from 192.168.100.200 again",
        "host 2001:db8::8a2e:370:7334 down",
        "grüße an jürgen@example.de, 電話 555-123-4567。",
    ];

    fn stream(masker: &Arc<PiiMasker>, fragments: &[&str]) -> String {
        let mut s = StreamMasker::new(Arc::clone(masker));
        let mut out: String = fragments.iter().map(|f| s.push(f)).collect();
        out.push_str(&s.finish());
        out
    }

    fn boundaries(text: &str) -> Vec<usize> {
        (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect()
    }

    fn streaming_maskers() -> [Arc<PiiMasker>; 2] {
        // The smallest window holds every sample's entity (the spaced IBAN is 27 bytes, so
        // 32) and forces emission mid-sample; the default holds the whole sample.
        [
            Arc::new(masker(json!({"stream_window": 32}))),
            Arc::new(default_masker()),
        ]
    }

    #[test]
    fn an_entity_split_anywhere_into_two_fragments_is_masked_as_in_one_piece() {
        for m in streaming_maskers() {
            for sample in ENTITY_SAMPLES {
                let whole = m.mask(sample).expect("sample has an entity");
                for i in boundaries(sample) {
                    let got = stream(&m, &[&sample[..i], &sample[i..]]);
                    assert_eq!(got, whole, "{sample:?} split at {i}");
                }
            }
        }
    }

    #[test]
    fn an_entity_split_anywhere_into_three_fragments_is_masked_as_in_one_piece() {
        for m in streaming_maskers() {
            for sample in ENTITY_SAMPLES {
                let whole = m.mask(sample).expect("sample has an entity");
                let cuts = boundaries(sample);
                for &i in &cuts {
                    for &j in cuts.iter().filter(|&&j| j >= i) {
                        let got = stream(&m, &[&sample[..i], &sample[i..j], &sample[j..]]);
                        assert_eq!(got, whole, "{sample:?} split at {i} and {j}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_long_stream_of_tiny_deltas_is_emitted_progressively_and_masked_as_a_whole() {
        let m = Arc::new(masker(json!({"stream_window": 32})));
        let text: String = (0..40)
            .map(|i| {
                format!("Zeile {i}: schreib an user{i}@example.org oder ruf 030 123456{i} an. ")
            })
            .collect();
        let whole = m.mask(&text).expect("has entities");
        let mut s = StreamMasker::new(Arc::clone(&m));
        let mut out = String::new();
        let mut emitted_before_finish = 0;
        let chars: Vec<char> = text.chars().collect();
        for delta in chars.chunks(3) {
            let delta: String = delta.iter().collect();
            let part = s.push(&delta);
            emitted_before_finish += part.len();
            out.push_str(&part);
            assert!(s.held() < 2 * 32, "holds {} bytes", s.held());
        }
        out.push_str(&s.finish());
        assert_eq!(out, whole);
        assert!(emitted_before_finish > whole.len() - 64, "emitted too late");
    }

    #[test]
    fn a_mixed_stream_cut_into_irregular_fragments_is_masked_as_a_whole() {
        let text: String = ENTITY_SAMPLES
            .iter()
            .cycle()
            .take(60)
            .enumerate()
            .map(|(i, sample)| format!("{i}. {sample}\n"))
            .collect();
        let chars: Vec<char> = text.chars().collect();
        for m in streaming_maskers() {
            let whole = m.mask(&text).expect("has entities");
            // A fixed linear congruential sequence: irregular sizes, same every run.
            let mut seed = 7u32;
            for _ in 0..20 {
                let mut s = StreamMasker::new(Arc::clone(&m));
                let mut out = String::new();
                let mut at = 0;
                while at < chars.len() {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    let len = 1 + (seed >> 16) as usize % 40;
                    let end = (at + len).min(chars.len());
                    out.push_str(&s.push(&chars[at..end].iter().collect::<String>()));
                    at = end;
                }
                out.push_str(&s.finish());
                assert_eq!(out, whole);
            }
        }
    }

    #[test]
    fn clean_text_is_delayed_by_at_most_the_window() {
        let m = Arc::new(masker(json!({"stream_window": 16})));
        let mut s = StreamMasker::new(m);
        let mut out = String::new();
        for word in CLEAN_PROSE.split_inclusive(' ') {
            out.push_str(&s.push(word));
            assert!(s.held() <= 16, "holds {} bytes of clean text", s.held());
        }
        out.push_str(&s.finish());
        assert_eq!(out, CLEAN_PROSE);
    }

    #[test]
    fn a_match_that_could_still_grow_is_not_emitted_early() {
        // `a@b.co` is an email on its own; the `m` that follows makes it `a@b.com`.
        let m = Arc::new(masker(json!({"stream_window": 16})));
        let padding = "x ".repeat(20);
        let got = stream(&m, &[&padding, "a@b.co", "m", " and more text here"]);
        assert_eq!(got, format!("{padding}[EMAIL] and more text here"));
    }

    #[test]
    fn a_big_fragment_emits_up_to_the_window_and_keeps_a_straddling_entity_whole() {
        let m = Arc::new(masker(json!({"stream_window": 16})));
        let mut s = StreamMasker::new(m);
        // The email ends 10 bytes before the end: inside the held window, but starting
        // before it. It is held back whole rather than cut.
        let text = format!("{}jane@example.com and then", "a ".repeat(30));
        let first = s.push(&text);
        assert_eq!(first, "a ".repeat(30));
        assert_eq!(s.held(), "jane@example.com and then".len());
        assert_eq!(s.finish(), "[EMAIL] and then");
    }

    #[test]
    fn a_match_longer_than_the_window_is_masked_and_emitted_whole() {
        let m = Arc::new(masker(json!({
            "entities": [],
            "stream_window": 16,
            "custom": [{"name": "secret", "pattern": "SECRET-[A-Z]+"}]
        })));
        let mut s = StreamMasker::new(m);
        let first = s.push(&format!("hi SECRET-{} done and more", "A".repeat(30)));
        assert_eq!(first, "hi [SECRET]");
        assert_eq!(s.finish(), " done and more");
    }

    #[test]
    fn finish_resets_the_masker_for_another_stream() {
        let m = Arc::new(default_masker());
        let mut s = StreamMasker::new(m);
        assert_eq!(s.push("mail a@b.io"), "");
        assert_eq!(s.finish(), "mail [EMAIL]");
        assert_eq!(s.held(), 0);
        assert_eq!(s.push("again"), "");
        assert_eq!(s.finish(), "again");
    }
}
