//! Usage tracking, the worker's half: what each worker counts per request for the per-key
//! and per-gateway usage export ([`UsageDelta`]), and the counts themselves ([`Counts`]),
//! which the admin thread adds into minute, hour and day buckets (`shardgate_admin::usage`).
//!
//! A worker counts into its own delta, under the same per-worker lock as its metrics (one
//! uncontended acquire per request, see [`crate::metrics`]). At least once a second the
//! admin thread swaps every worker's delta for an empty one that kept its capacity, so in
//! steady state neither side allocates.
//!
//! Rows are keyed by gateway, key and rule. The key slot is the key's id, [`ANONYMOUS`] (nil:
//! a public rule, or a request refused before its key was looked at) or
//! [`UNAUTHENTICATED`] (the key check refused it: missing, unknown, expired, disabled).
//!
//! Bounds, per worker and flush interval: [`MAX_ROWS`] rows (past it, a row goes to its
//! gateway and key with the rule [`OTHER_RULE`]: per-key totals stay exact, the rule
//! breakdown is lost and counted in `overflow`), and [`MAX_SOURCES`] (gateway, key, address)
//! and (gateway, address) pairs for the anomaly detector (past it, addresses are not
//! recorded, and `overflow` counts them; the detector may then miss a finding).

use std::hash::BuildHasherDefault;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::fxhash::{FxMap, FxSet};
use crate::metrics::{BUCKETS_US, Observation};

/// The key slot of requests without a key: public rules, and requests refused before the
/// key check (a malformed path).
pub const ANONYMOUS: Uuid = Uuid::nil();
/// The key slot of requests the key check refused (401): they count toward the gateway,
/// never toward a key.
pub const UNAUTHENTICATED: Uuid = Uuid::max();
/// The rule slot of rows past [`MAX_ROWS`], and of requests that matched no rule is nil.
pub const OTHER_RULE: Uuid = Uuid::max();

/// Rows (gateway × key × rule) one worker keeps per flush interval.
pub const MAX_ROWS: usize = 200_000;
/// Address pairs one worker keeps per flush interval, for the anomaly detector.
pub const MAX_SOURCES: usize = 65_536;

/// Status classes, `1xx` to `5xx`.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Latency buckets: [`BUCKETS_US`] and `+Inf`.
pub const LATENCY_BUCKETS: usize = BUCKETS_US.len() + 1;

/// Who a row counts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UsageKey {
    pub gateway: Uuid,
    /// A key id, [`ANONYMOUS`] or [`UNAUTHENTICATED`].
    pub key: Uuid,
    /// The matched rule; nil when none matched.
    pub rule: Uuid,
}

/// What a set of requests used. Every field adds; nothing is sampled or estimated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub requests: u64,
    /// By status class ([`STATUS_CLASSES`]; a 499 is a `4xx`).
    pub status: [u64; 5],
    /// Bytes received from the client (head and body, as on the wire for HTTP/1.1; frame
    /// payloads for HTTP/2).
    pub bytes_in: u64,
    /// Bytes sent to the client.
    pub bytes_out: u64,
    /// Rate-limit rejections by dimension (`global`, `per_ip`, `per_user`).
    pub rate_limited: [u64; 3],
    /// Upstream latency (time to the response head, over every attempt) of the requests
    /// that reached an upstream: counts per bucket of [`BUCKETS_US`] and `+Inf`.
    pub upstream_latency: [u64; LATENCY_BUCKETS],
    pub upstream_latency_sum_us: u64,
    /// `ai` services: prompt and completion tokens, cost (nano-dollars), requests whose
    /// counts are the gateway's estimate.
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub cost_nanos: u64,
    #[serde(default)]
    pub estimated_requests: u64,
}

impl Counts {
    /// Adds one finished request.
    pub fn record(&mut self, o: &Observation) {
        self.requests += 1;
        if let Some(class) = (o.status / 100).checked_sub(1)
            && let Some(n) = self.status.get_mut(usize::from(class))
        {
            *n += 1;
        }
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        if let Some(d) = o.rate_limited
            && let Some(n) = self.rate_limited.get_mut(usize::from(d))
        {
            *n += 1;
        }
        if let Some(us) = o.upstream_us {
            let i = BUCKETS_US.partition_point(|&le| le < us);
            self.upstream_latency[i] += 1;
            self.upstream_latency_sum_us += us;
        }
        if let Some(ai) = &o.ai {
            self.prompt_tokens += ai.prompt_tokens;
            self.completion_tokens += ai.completion_tokens;
            self.cost_nanos += ai.cost_nanos;
            self.estimated_requests += u64::from(ai.estimated);
        }
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        for (a, b) in self.status.iter_mut().zip(other.status) {
            *a += b;
        }
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        for (a, b) in self.rate_limited.iter_mut().zip(other.rate_limited) {
            *a += b;
        }
        for (a, b) in self.upstream_latency.iter_mut().zip(other.upstream_latency) {
            *a += b;
        }
        self.upstream_latency_sum_us += other.upstream_latency_sum_us;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.cost_nanos += other.cost_nanos;
        self.estimated_requests += other.estimated_requests;
    }

    /// Requests that reached an upstream (the latency histogram's count).
    pub fn upstream_requests(&self) -> u64 {
        self.upstream_latency.iter().sum()
    }
}

/// One worker's usage since the last flush.
#[derive(Debug, Default)]
pub struct UsageDelta {
    pub rows: FxMap<UsageKey, Counts>,
    /// 401s by (gateway, client address): the detector's `unauthorized_burst`.
    pub unauthorized: FxMap<(Uuid, IpAddr), u64>,
    /// (gateway, key, client address) seen: the detector's `many_addresses`.
    pub sources: FxSet<(Uuid, Uuid, IpAddr)>,
    /// Requests whose rule breakdown or address was lost to the bounds.
    pub overflow: u64,
}

impl UsageDelta {
    /// An empty delta with room for `rows` rows, so the worker that receives it does not
    /// allocate for the first ones.
    pub fn with_capacity(rows: usize) -> UsageDelta {
        UsageDelta {
            rows: FxMap::with_capacity_and_hasher(rows, BuildHasherDefault::default()),
            unauthorized: FxMap::with_capacity_and_hasher(16, BuildHasherDefault::default()),
            sources: FxSet::with_capacity_and_hasher(rows, BuildHasherDefault::default()),
            overflow: 0,
        }
    }

    /// Counts one finished request of a gateway (`o.gateway` is not nil).
    pub fn record(&mut self, o: &Observation) {
        let mut key = UsageKey {
            gateway: o.gateway,
            key: o.key,
            rule: o.rule,
        };
        if self.rows.len() >= MAX_ROWS && !self.rows.contains_key(&key) {
            key.rule = OTHER_RULE;
            self.overflow += 1;
        }
        self.rows.entry(key).or_default().record(o);
        let Some(ip) = o.client_ip else {
            return;
        };
        if o.key == UNAUTHENTICATED && o.status == 401 {
            let k = (o.gateway, ip);
            if let Some(n) = self.unauthorized.get_mut(&k) {
                *n += 1;
            } else if self.unauthorized.len() < MAX_SOURCES {
                self.unauthorized.insert(k, 1);
            } else {
                self.overflow += 1;
            }
        } else if o.key != ANONYMOUS && o.key != UNAUTHENTICATED {
            let k = (o.gateway, o.key, ip);
            if self.sources.len() < MAX_SOURCES {
                self.sources.insert(k);
            } else if !self.sources.contains(&k) {
                self.overflow += 1;
            }
        }
    }

    /// Empties the delta, keeping its capacity.
    pub fn clear(&mut self) {
        self.rows.clear();
        self.unauthorized.clear();
        self.sources.clear();
        self.overflow = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.overflow == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(status: u16, key: Uuid) -> Observation {
        Observation {
            gateway: Uuid::from_u128(1),
            rule: Uuid::from_u128(2),
            key,
            status,
            bytes_in: 100,
            bytes_out: 250,
            upstream_us: Some(700),
            client_ip: Some(IpAddr::from([127, 0, 0, 2])),
            ..Observation::default()
        }
    }

    #[test]
    fn counts_add_up_exactly_by_class_bytes_dimension_and_latency() {
        let key = Uuid::from_u128(3);
        let mut d = UsageDelta::default();
        d.record(&obs(200, key));
        d.record(&obs(204, key));
        d.record(&Observation {
            rate_limited: Some(1),
            upstream_us: None,
            ..obs(429, key)
        });
        d.record(&obs(502, key));
        let row = &d.rows[&UsageKey {
            gateway: Uuid::from_u128(1),
            key,
            rule: Uuid::from_u128(2),
        }];
        assert_eq!(row.requests, 4);
        assert_eq!(row.status, [0, 2, 0, 1, 1]);
        assert_eq!((row.bytes_in, row.bytes_out), (400, 1000));
        assert_eq!(row.rate_limited, [0, 1, 0]);
        assert_eq!(row.upstream_requests(), 3);
        assert_eq!(row.upstream_latency[1], 3, "700 µs is in the 1 ms bucket");
        assert_eq!(row.upstream_latency_sum_us, 2100);
        assert_eq!(d.sources.len(), 1);
        let mut sum = Counts::default();
        sum.add(row);
        sum.add(row);
        assert_eq!(sum.requests, 8);
        assert_eq!(sum.status, [0, 4, 0, 2, 2]);
    }

    #[test]
    fn refused_keys_count_per_address_and_never_as_a_source_of_a_key() {
        let mut d = UsageDelta::default();
        for _ in 0..3 {
            d.record(&obs(401, UNAUTHENTICATED));
        }
        d.record(&obs(200, ANONYMOUS));
        assert_eq!(
            d.unauthorized[&(Uuid::from_u128(1), IpAddr::from([127, 0, 0, 2]))],
            3
        );
        assert!(d.sources.is_empty());
    }

    #[test]
    fn past_the_row_bound_a_key_keeps_exact_totals_under_the_other_rule() {
        let mut d = UsageDelta::default();
        for i in 0..MAX_ROWS as u128 {
            d.rows.insert(
                UsageKey {
                    gateway: Uuid::from_u128(1),
                    key: Uuid::from_u128(i + 10),
                    rule: Uuid::nil(),
                },
                Counts::default(),
            );
        }
        let key = Uuid::from_u128(5);
        d.record(&obs(200, key));
        d.record(&obs(200, key));
        let other = &d.rows[&UsageKey {
            gateway: Uuid::from_u128(1),
            key,
            rule: OTHER_RULE,
        }];
        assert_eq!(other.requests, 2);
        assert_eq!(d.overflow, 2);
    }
}
