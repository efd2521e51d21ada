//! Human durations as users write them in JSON: `500ms`, `30s`, `1m`, `1h`, `1d`.
//!
//! A [`Span`] keeps the text the user wrote (so a GET returns what was PUT) next to the parsed
//! value, and serializes as that text in every format.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration parsed from `<integer><unit>` with unit `ms`, `s`, `m`, `h` or `d`.
#[derive(Clone, PartialEq, Eq)]
pub struct Span {
    text: Box<str>,
    value: Duration,
}

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadSpan(pub String);

impl fmt::Display for BadSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid duration {:?}: expected an integer and a unit (ms, s, m, h, d), like \"30s\" or \"1m\"",
            self.0
        )
    }
}

impl std::error::Error for BadSpan {}

impl Span {
    /// Parses `30s`, `1m`, `1h`, `1d`, `250ms`. Zero and overflowing values are refused.
    pub fn parse(text: &str) -> Result<Span, BadSpan> {
        let bad = || BadSpan(text.to_owned());
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(bad)?;
        let (digits, unit) = trimmed.split_at(split);
        if digits.is_empty() {
            return Err(bad());
        }
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        let millis = n.checked_mul(millis_per_unit).ok_or_else(bad)?;
        if millis == 0 {
            return Err(BadSpan(text.to_owned()));
        }
        Ok(Span {
            text: trimmed.into(),
            value: Duration::from_millis(millis),
        })
    }

    /// A span from a whole number of seconds (used for defaults).
    pub fn from_secs(secs: u64) -> Span {
        Span {
            text: format!("{secs}s").into(),
            value: Duration::from_secs(secs),
        }
    }

    /// A span from milliseconds (used for defaults).
    pub fn from_millis(ms: u64) -> Span {
        Span {
            text: format!("{ms}ms").into(),
            value: Duration::from_millis(ms),
        }
    }

    pub fn as_duration(&self) -> Duration {
        self.value
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Span::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_unit_parses() {
        let cases = [
            ("250ms", 250),
            ("30s", 30_000),
            ("1m", 60_000),
            ("1h", 3_600_000),
            ("1d", 86_400_000),
        ];
        for (text, ms) in cases {
            let span = Span::parse(text).expect(text);
            assert_eq!(span.as_duration(), Duration::from_millis(ms), "{text}");
            assert_eq!(span.as_str(), text);
        }
    }

    #[test]
    fn malformed_durations_are_refused_with_the_input_in_the_message() {
        for text in [
            "",
            "1x",
            "m",
            "-1s",
            "1.5s",
            "0s",
            "1 m",
            "s1",
            "99999999999999999999d",
        ] {
            let err = Span::parse(text).expect_err(text);
            assert!(err.to_string().contains(&format!("{text:?}")), "{err}");
        }
    }
}
