//! Auth: the API key of a request, from `X-TG-API-Key`, `X-API-Key` or
//! `Authorization: Bearer`, checked against the gateway's key table (SHA-256 of the
//! presented key; see `shardgate_core::keys`). The first of those headers present decides:
//! a wrong `X-TG-API-Key` is a 401 even when a valid key follows in `Authorization`.

use shardgate_core::http1::RequestHead;
use shardgate_core::keys::{KEY_PREFIX, KeyEntry, KeyTable, hash_key};
use uuid::Uuid;

/// Which header carried the key: it is stripped before forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    TgApiKey,
    ApiKey,
    Bearer,
}

/// The outcome of checking a request's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCheck<'t> {
    Valid {
        key_id: Uuid,
        source: KeySource,
        entry: &'t KeyEntry,
    },
    Missing,
    Unknown,
    Expired,
    /// The secret was replaced by a rotation and its grace period has ended.
    RotatedOut,
    Inactive,
}

impl KeyCheck<'_> {
    /// The 401 message for a failed check.
    pub fn failure(&self) -> Option<&'static str> {
        match self {
            KeyCheck::Valid { .. } => None,
            KeyCheck::Missing => Some("API key required: send X-API-Key or Authorization: Bearer"),
            KeyCheck::Unknown => Some("invalid API key"),
            KeyCheck::Expired => Some("API key expired"),
            KeyCheck::RotatedOut => {
                Some("API key was rotated and its grace period has ended; use the new key")
            }
            KeyCheck::Inactive => Some("API key is disabled"),
        }
    }
}

fn bearer(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| value[7..].trim_ascii())
}

/// Whether a request header carries a gateway credential, which is removed before the
/// request goes upstream: a tenant's key must never reach its backend, whichever header it
/// came in and whether or not it was the one checked.
///
/// - `X-TG-API-Key` is shardgate's own header: always removed.
/// - The header that authenticated the request (`key_source`) is removed, every occurrence.
/// - `X-API-Key` or `Authorization` any of whose words (split at whitespace and commas:
///   `Bearer sgk_…`, `Token sgk_…`, `foo, sgk_…`) starts with `sgk_`, the prefix of every key
///   shardgate issues, is removed even when another header was checked or the rule is public.
///
/// Any other `Authorization` or `X-API-Key` (an upstream's own credential) passes.
pub fn is_gateway_credential(name: &[u8], value: &[u8], key_source: Option<KeySource>) -> bool {
    let carries_key = |v: &[u8]| {
        v.split(|b| b.is_ascii_whitespace() || *b == b',')
            .any(|word| word.starts_with(KEY_PREFIX.as_bytes()))
    };
    if name.eq_ignore_ascii_case(b"x-tg-api-key") {
        return true;
    }
    if name.eq_ignore_ascii_case(b"x-api-key") {
        return key_source == Some(KeySource::ApiKey) || carries_key(value);
    }
    if name.eq_ignore_ascii_case(b"authorization") {
        return carries_key(value)
            || (key_source == Some(KeySource::Bearer) && bearer(value).is_some());
    }
    false
}

/// Finds the key in the request and checks it. `now`: unix seconds.
pub fn check<'t>(head: &RequestHead, buf: &[u8], keys: &'t KeyTable, now: i64) -> KeyCheck<'t> {
    let presented = head
        .header(buf, "x-tg-api-key")
        .map(|k| (k, KeySource::TgApiKey))
        .or_else(|| {
            head.header(buf, "x-api-key")
                .map(|k| (k, KeySource::ApiKey))
        })
        .or_else(|| {
            head.header(buf, "authorization")
                .and_then(bearer)
                .map(|k| (k, KeySource::Bearer))
        });
    let Some((key, source)) = presented else {
        return KeyCheck::Missing;
    };
    let key = key.trim_ascii();
    if key.is_empty() {
        return KeyCheck::Missing;
    }
    match keys.get(&hash_key(key)) {
        None => KeyCheck::Unknown,
        Some(entry) if !entry.active => KeyCheck::Inactive,
        Some(entry) if !entry.admits(now) => {
            let key_expired = entry.key_expires_at.is_some_and(|at| now >= at);
            if entry.rotated_out && !key_expired {
                KeyCheck::RotatedOut
            } else {
                KeyCheck::Expired
            }
        }
        Some(entry) => KeyCheck::Valid {
            key_id: entry.id,
            source,
            entry,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardgate_core::http1::{Limits, Parse, parse_request};

    fn check_raw<'t>(raw: &str, table: &'t KeyTable, now: i64) -> KeyCheck<'t> {
        let buf = raw.as_bytes();
        let Ok(Parse::Complete(head)) = parse_request(buf, &Limits::default()) else {
            panic!("test request must parse");
        };
        check(&head, buf, table, now)
    }

    #[test]
    fn gateway_credentials_are_recognised_in_every_header_that_can_carry_them() {
        let key = b"sgk_0123456789";
        let bearer_key = b"Bearer sgk_0123456789";
        for source in [None, Some(KeySource::ApiKey), Some(KeySource::Bearer)] {
            assert!(is_gateway_credential(b"X-TG-API-Key", b"anything", source));
            assert!(is_gateway_credential(b"x-api-key", key, source));
            assert!(is_gateway_credential(b"Authorization", bearer_key, source));
            assert!(is_gateway_credential(b"authorization", key, source));
            assert!(!is_gateway_credential(
                b"authorization",
                b"Basic dXA6cHc=",
                source
            ));
            assert!(!is_gateway_credential(b"x-other", key, source));
            assert!(is_gateway_credential(
                b"authorization",
                b"Bearer\tsgk_1",
                source
            ));
            assert!(is_gateway_credential(
                b"authorization",
                b"Token sgk_1",
                source
            ));
            assert!(is_gateway_credential(b"x-api-key", b"foo, sgk_1", source));
        }
        // The header that authenticated goes, whatever its value looks like.
        assert!(is_gateway_credential(
            b"x-api-key",
            b"k",
            Some(KeySource::ApiKey)
        ));
        assert!(!is_gateway_credential(
            b"x-api-key",
            b"k",
            Some(KeySource::Bearer)
        ));
        assert!(is_gateway_credential(
            b"authorization",
            b"Bearer k",
            Some(KeySource::Bearer)
        ));
        assert!(!is_gateway_credential(b"authorization", b"Bearer k", None));
    }

    #[test]
    fn each_header_form_is_accepted_and_failures_are_told_apart() {
        let id = Uuid::from_u128(7);
        let table = KeyTable::from_entries([
            (hash_key(b"good"), KeyEntry::new(id, Some(100), true)),
            (hash_key(b"off"), KeyEntry::new(id, None, false)),
        ]);
        let good = table.get(&hash_key(b"good")).expect("inserted");
        let req = |h: &str| format!("GET / HTTP/1.1\r\nHost: a\r\n{h}\r\n\r\n");
        assert_eq!(
            check_raw(&req("X-TG-API-Key: good"), &table, 50),
            KeyCheck::Valid {
                key_id: id,
                source: KeySource::TgApiKey,
                entry: good,
            }
        );
        assert_eq!(
            check_raw(&req("x-api-key: good"), &table, 50),
            KeyCheck::Valid {
                key_id: id,
                source: KeySource::ApiKey,
                entry: good,
            }
        );
        assert_eq!(
            check_raw(&req("Authorization: Bearer good"), &table, 50),
            KeyCheck::Valid {
                key_id: id,
                source: KeySource::Bearer,
                entry: good,
            }
        );
        assert_eq!(
            check_raw(&req("Authorization: Basic Zm9v"), &table, 50),
            KeyCheck::Missing
        );
        assert_eq!(
            check_raw(&req("X-API-Key: nope"), &table, 50),
            KeyCheck::Unknown
        );
        assert_eq!(
            check_raw(&req("X-API-Key: good"), &table, 100),
            KeyCheck::Expired
        );
        assert_eq!(
            check_raw(&req("X-API-Key: off"), &table, 50),
            KeyCheck::Inactive
        );
        assert_eq!(check_raw(&req("X-Other: 1"), &table, 50), KeyCheck::Missing);
    }

    #[test]
    fn a_rotated_out_secret_is_told_apart_once_its_grace_ends() {
        let id = Uuid::from_u128(9);
        let old = KeyEntry {
            rotated_out: true,
            key_expires_at: Some(1_000),
            ..KeyEntry::new(id, Some(100), true)
        };
        let table = KeyTable::from_entries([(hash_key(b"old"), old)]);
        let req = "GET / HTTP/1.1\r\nHost: a\r\nX-API-Key: old\r\n\r\n";
        assert!(matches!(
            check_raw(req, &table, 99),
            KeyCheck::Valid { key_id, .. } if key_id == id
        ));
        assert_eq!(check_raw(req, &table, 100), KeyCheck::RotatedOut);
        // Past the key's own expiry it is simply expired.
        assert_eq!(check_raw(req, &table, 1_000), KeyCheck::Expired);
    }
}
