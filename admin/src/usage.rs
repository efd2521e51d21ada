//! Usage tracking, the admin's half: the durable book of minute, hour and day buckets
//! ([`UsageBook`]), the once-a-second flush that fills it from the workers
//! ([`UsageTracker::flush`]), the anomaly detector ([`Detector`]), and the export
//! (`GET .../usage`, JSON or CSV, [`export`]).
//!
//! # Durability
//!
//! The book is a [`Durable`] state machine in its own [`Store`] (`<data-dir>/usage/`): every
//! flush is one journal record (`UsageRecord::Flush`), fsynced before the flush is applied,
//! and every finding is one more. So a `kill -9` loses at most the requests counted since
//! the last flush (under a second), and a clean shutdown flushes once more after the workers
//! have stopped and loses nothing. A flush carries its time and the retention, so replaying
//! it always gives the same buckets. When an append fails (disk full), its counts stay
//! pending in memory and go with the next flush that succeeds.
//!
//! # Buckets
//!
//! A flush at time `t` adds its counts to the minute, hour and day buckets (UTC) holding
//! `t`: a request is attributed to the second its flush ran, up to a second after it ended.
//! Minute buckets are kept 48 hours, hour buckets 90 days, day buckets `--usage-day-retention`
//! (default 730 days). Only rows with traffic are stored.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shardgate_core::metrics::Telemetry;
use shardgate_core::model::AnomalySettings;
use shardgate_core::usage::{ANONYMOUS, Counts, UNAUTHENTICATED, UsageDelta, UsageKey};
use uuid::Uuid;

use crate::store::{Durable, Store, StoreError, StoreOptions};

/// Minute buckets are kept this long.
pub const MINUTE_RETENTION_SECS: i64 = 48 * 3_600;
/// Hour buckets are kept this long.
pub const HOUR_RETENTION_SECS: i64 = 90 * 86_400;
/// Findings kept (oldest dropped first); `shardgate_anomalies_total` keeps counting.
pub const MAX_FINDINGS: usize = 10_000;
/// The journal is folded into a checkpoint past this many bytes.
const CHECKPOINT_BYTES: u64 = 16 * 1024 * 1024;
/// The same finding (kind, gateway, key or address) is reported at most once per this long
/// (`many_addresses`: once per its window).
const COOLDOWN_SECS: i64 = 600;

/// One bucket's rows. Stored as a list of `[key, counts]` pairs (JSON maps need string keys).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bucket(pub HashMap<UsageKey, Counts>);

impl Serialize for Bucket {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut rows: Vec<(&UsageKey, &Counts)> = self.0.iter().collect();
        rows.sort_by_key(|(k, _)| **k);
        s.collect_seq(rows)
    }
}

impl<'de> Deserialize<'de> for Bucket {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bucket, D::Error> {
        let rows: Vec<(UsageKey, Counts)> = Vec::deserialize(d)?;
        Ok(Bucket(rows.into_iter().collect()))
    }
}

/// The three granularities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

impl Granularity {
    pub fn parse(text: &str) -> Option<Granularity> {
        match text {
            "minute" => Some(Granularity::Minute),
            "hour" => Some(Granularity::Hour),
            "day" => Some(Granularity::Day),
            _ => None,
        }
    }

    pub fn secs(self) -> i64 {
        match self {
            Granularity::Minute => 60,
            Granularity::Hour => 3_600,
            Granularity::Day => 86_400,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }
}

/// What kind of anomaly a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// A key's last 60 seconds far above its trailing hour.
    RequestSpike,
    /// Many 401s from one client address (key guessing).
    UnauthorizedBurst,
    /// A key used from more distinct addresses than usual.
    ManyAddresses,
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; 3] = [
        AnomalyKind::RequestSpike,
        AnomalyKind::UnauthorizedBurst,
        AnomalyKind::ManyAddresses,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::RequestSpike => "request_spike",
            AnomalyKind::UnauthorizedBurst => "unauthorized_burst",
            AnomalyKind::ManyAddresses => "many_addresses",
        }
    }

    fn index(self) -> usize {
        match self {
            AnomalyKind::RequestSpike => 0,
            AnomalyKind::UnauthorizedBurst => 1,
            AnomalyKind::ManyAddresses => 2,
        }
    }
}

/// One anomaly the detector reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Increasing from 1.
    pub id: u64,
    pub gateway: Uuid,
    pub kind: AnomalyKind,
    /// The key, for `request_spike` and `many_addresses`.
    pub key_id: Option<Uuid>,
    /// The client address, for `unauthorized_burst`.
    pub source: Option<IpAddr>,
    /// The window observed, unix seconds (start inclusive, end exclusive).
    pub window_start: i64,
    pub window_end: i64,
    /// What was seen: requests in the window, 401s in the window, distinct addresses.
    pub observed: u64,
    /// What was expected: the key's mean requests per 60 seconds over its trailing hour
    /// (`request_spike`); the threshold (the others).
    pub expected: f64,
    /// The value `observed` had to exceed (or reach, for `unauthorized_burst`).
    pub threshold: f64,
    pub detected_at: i64,
}

/// Retention in seconds per granularity, journaled with each flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    pub minute: i64,
    pub hour: i64,
    pub day: i64,
}

/// One journal record of the usage store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UsageRecord {
    /// Counts flushed at `at` (unix seconds).
    Flush {
        at: i64,
        retention: Retention,
        rows: Vec<(UsageKey, Counts)>,
    },
    Finding(Finding),
}

/// Every bucket and finding.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageBook {
    pub minutes: BTreeMap<i64, Bucket>,
    pub hours: BTreeMap<i64, Bucket>,
    pub days: BTreeMap<i64, Bucket>,
    pub findings: VecDeque<Finding>,
    /// Findings ever reported, per gateway and kind ([`AnomalyKind::ALL`] order).
    pub finding_totals: BTreeMap<Uuid, [u64; 3]>,
    pub last_finding: u64,
}

impl UsageBook {
    pub fn buckets(&self, g: Granularity) -> &BTreeMap<i64, Bucket> {
        match g {
            Granularity::Minute => &self.minutes,
            Granularity::Hour => &self.hours,
            Granularity::Day => &self.days,
        }
    }
}

/// Why a usage record did not apply (never, for records this code wrote).
#[derive(Debug)]
pub struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn add_to(map: &mut BTreeMap<i64, Bucket>, start: i64, rows: &[(UsageKey, Counts)]) {
    let bucket = map.entry(start).or_default();
    for (key, counts) in rows {
        bucket.0.entry(*key).or_default().add(counts);
    }
}

fn prune(map: &mut BTreeMap<i64, Bucket>, before: i64) {
    let kept = map.split_off(&before);
    *map = kept;
}

impl Durable for UsageBook {
    type Mutation = UsageRecord;
    type Error = UsageError;

    fn apply(&mut self, m: &UsageRecord) -> Result<(), UsageError> {
        match m {
            UsageRecord::Flush {
                at,
                retention,
                rows,
            } => {
                for (g, map) in [
                    (Granularity::Minute, &mut self.minutes),
                    (Granularity::Hour, &mut self.hours),
                    (Granularity::Day, &mut self.days),
                ] {
                    if !rows.is_empty() {
                        add_to(map, at.div_euclid(g.secs()) * g.secs(), rows);
                    }
                }
                prune(&mut self.minutes, at - retention.minute);
                prune(&mut self.hours, at - retention.hour);
                prune(&mut self.days, at - retention.day);
            }
            UsageRecord::Finding(f) => {
                if f.id <= self.last_finding {
                    return Err(UsageError(format!(
                        "finding {} is not after finding {}",
                        f.id, self.last_finding
                    )));
                }
                self.last_finding = f.id;
                self.finding_totals.entry(f.gateway).or_default()[f.kind.index()] += 1;
                self.findings.push_back(f.clone());
                while self.findings.len() > MAX_FINDINGS {
                    self.findings.pop_front();
                }
            }
        }
        Ok(())
    }
}

/// Requests (or 401s) per second over the last minutes.
#[derive(Debug, Default)]
struct Seconds(VecDeque<(i64, u64)>);

impl Seconds {
    fn add(&mut self, at: i64, n: u64, keep: i64) {
        match self.0.back_mut() {
            Some((t, total)) if *t == at => *total += n,
            _ => self.0.push_back((at, n)),
        }
        while self.0.front().is_some_and(|(t, _)| *t <= at - keep) {
            self.0.pop_front();
        }
    }

    /// The sum over `(from, to]`.
    fn sum(&self, from: i64, to: i64) -> u64 {
        self.0
            .iter()
            .filter(|(t, _)| *t > from && *t <= to)
            .map(|(_, n)| n)
            .sum()
    }

    fn last(&self) -> Option<i64> {
        self.0.back().map(|(t, _)| *t)
    }
}

/// What the detector remembers of one key.
#[derive(Debug, Default)]
struct KeyWindow {
    /// Requests per second over the last hour and two minutes (the baseline and the
    /// window).
    seconds: Seconds,
    /// Address → last second seen, within `address_window`.
    addresses: HashMap<IpAddr, i64>,
}

/// How far back the baseline reaches, and how far the seconds are kept.
const SPIKE_WINDOW: i64 = 60;
const BASELINE: i64 = 3_600;

/// The anomaly detector: in memory, fed by each flush; seeded from the minute buckets at
/// start-up so a restart does not forget the baselines. Its findings are journaled.
#[derive(Debug, Default)]
pub struct Detector {
    keys: HashMap<(Uuid, Uuid), KeyWindow>,
    unauthorized: HashMap<(Uuid, IpAddr), Seconds>,
    reported: HashMap<(AnomalyKind, Uuid, Uuid, Option<IpAddr>), i64>,
    last_sweep: i64,
}

impl Detector {
    /// Rebuilds the request baselines from the book's last hour of minute buckets (each
    /// minute's requests are spread as if at its first second).
    pub fn seed(&mut self, book: &UsageBook, now: i64) {
        for (start, bucket) in book.minutes.range(now - BASELINE - SPIKE_WINDOW..) {
            for (key, counts) in &bucket.0 {
                if is_key(key.key) {
                    self.keys
                        .entry((key.gateway, key.key))
                        .or_default()
                        .seconds
                        .add(*start, counts.requests, BASELINE + SPIKE_WINDOW);
                }
            }
        }
    }

    /// Takes one flush in and returns what it finds. `settings` gives a gateway's
    /// thresholds (`None`: the gateway is gone, or detection is off for it).
    pub fn observe(
        &mut self,
        at: i64,
        rows: &[(UsageKey, Counts)],
        deltas: &[UsageDelta],
        settings: &dyn Fn(Uuid) -> Option<AnomalySettings>,
    ) -> Vec<Finding> {
        let mut touched_keys = HashSet::new();
        let mut per_key: HashMap<(Uuid, Uuid), u64> = HashMap::new();
        for (k, c) in rows {
            if is_key(k.key) {
                *per_key.entry((k.gateway, k.key)).or_default() += c.requests;
            }
        }
        for (id, n) in per_key {
            self.keys
                .entry(id)
                .or_default()
                .seconds
                .add(at, n, BASELINE + SPIKE_WINDOW);
            touched_keys.insert(id);
        }
        let mut touched_sources = HashSet::new();
        for d in deltas {
            for ((gateway, ip), n) in &d.unauthorized {
                self.unauthorized
                    .entry((*gateway, *ip))
                    .or_default()
                    .add(at, *n, SPIKE_WINDOW);
                touched_sources.insert((*gateway, *ip));
            }
            for (gateway, key, ip) in &d.sources {
                self.keys
                    .entry((*gateway, *key))
                    .or_default()
                    .addresses
                    .insert(*ip, at);
                touched_keys.insert((*gateway, *key));
            }
        }

        let mut found = Vec::new();
        for id in touched_keys {
            let Some(s) = settings(id.0) else { continue };
            let Some(w) = self.keys.get_mut(&id) else {
                continue;
            };
            let last = w.seconds.sum(at - SPIKE_WINDOW, at);
            let mean = w
                .seconds
                .sum(at - SPIKE_WINDOW - BASELINE, at - SPIKE_WINDOW) as f64
                / (BASELINE / SPIKE_WINDOW) as f64;
            let threshold = (mean * f64::from(s.spike_factor)).max(s.spike_floor as f64 - 1.0);
            if last >= s.spike_floor && last as f64 > threshold {
                found.push(Finding {
                    id: 0,
                    gateway: id.0,
                    kind: AnomalyKind::RequestSpike,
                    key_id: Some(id.1),
                    source: None,
                    window_start: at - SPIKE_WINDOW + 1,
                    window_end: at + 1,
                    observed: last,
                    expected: mean,
                    threshold,
                    detected_at: at,
                });
            }
            let window = s.address_window.as_duration().as_secs() as i64;
            w.addresses.retain(|_, seen| *seen > at - window);
            let distinct = w.addresses.len() as u64;
            if distinct > u64::from(s.distinct_addresses) {
                found.push(Finding {
                    id: 0,
                    gateway: id.0,
                    kind: AnomalyKind::ManyAddresses,
                    key_id: Some(id.1),
                    source: None,
                    window_start: at - window + 1,
                    window_end: at + 1,
                    observed: distinct,
                    expected: f64::from(s.distinct_addresses),
                    threshold: f64::from(s.distinct_addresses),
                    detected_at: at,
                });
            }
        }
        for id in touched_sources {
            let Some(s) = settings(id.0) else { continue };
            let Some(w) = self.unauthorized.get(&id) else {
                continue;
            };
            let seen = w.sum(at - SPIKE_WINDOW, at);
            if seen >= s.unauthorized_burst {
                found.push(Finding {
                    id: 0,
                    gateway: id.0,
                    kind: AnomalyKind::UnauthorizedBurst,
                    key_id: None,
                    source: Some(id.1),
                    window_start: at - SPIKE_WINDOW + 1,
                    window_end: at + 1,
                    observed: seen,
                    expected: s.unauthorized_burst as f64,
                    threshold: s.unauthorized_burst as f64,
                    detected_at: at,
                });
            }
        }
        found.retain(|f| {
            let id = (f.kind, f.gateway, f.key_id.unwrap_or_default(), f.source);
            let cooldown = match f.kind {
                AnomalyKind::ManyAddresses => (f.window_end - f.window_start).max(COOLDOWN_SECS),
                _ => COOLDOWN_SECS,
            };
            match self.reported.get(&id) {
                Some(when) if *when > at - cooldown => false,
                _ => {
                    self.reported.insert(id, at);
                    true
                }
            }
        });
        found.sort_by_key(|f| (f.gateway, f.kind.index(), f.key_id, f.source));
        self.sweep(at);
        found
    }

    /// Forgets keys and addresses with nothing left in their windows (once a minute).
    fn sweep(&mut self, at: i64) {
        if at - self.last_sweep < 60 {
            return;
        }
        self.last_sweep = at;
        self.keys.retain(|_, w| {
            let recent = w
                .seconds
                .last()
                .is_some_and(|t| t > at - BASELINE - SPIKE_WINDOW);
            recent || !w.addresses.is_empty()
        });
        self.unauthorized
            .retain(|_, s| s.last().is_some_and(|t| t > at - SPIKE_WINDOW));
        self.reported
            .retain(|_, when| *when > at - COOLDOWN_SECS.max(86_400));
    }
}

/// A real key (not [`ANONYMOUS`] or [`UNAUTHENTICATED`]).
fn is_key(key: Uuid) -> bool {
    key != ANONYMOUS && key != UNAUTHENTICATED
}

/// The admin thread's usage: the store, the book, the detector and the workers' spare
/// deltas.
#[derive(Debug)]
pub struct UsageTracker {
    store: Store<UsageBook>,
    pub book: UsageBook,
    detector: Detector,
    /// One per worker: cleared and swapped for the worker's delta at each flush.
    spares: Vec<UsageDelta>,
    /// Counts not yet journaled (an append failed).
    pending: HashMap<UsageKey, Counts>,
    retention: Retention,
}

impl UsageTracker {
    /// Tokens and cost (nano-dollars) `key` of `gateway` spent from `since` (Unix seconds, a
    /// whole hour) on: the hour buckets from there, and the day buckets before the hours'
    /// retention where the period reaches back further.
    pub fn spent_since(&self, gateway: Uuid, key: Uuid, since: i64) -> (u64, u64) {
        let mut tokens = 0;
        let mut cost = 0;
        let mut add = |bucket: &Bucket| {
            for (k, c) in &bucket.0 {
                if k.gateway == gateway && k.key == key {
                    tokens += c.prompt_tokens + c.completion_tokens;
                    cost += c.cost_nanos;
                }
            }
        };
        let first_hour = self.book.hours.keys().next().copied().unwrap_or(i64::MAX);
        if since < first_hour {
            for (_, bucket) in self
                .book
                .days
                .range(since.div_euclid(86_400) * 86_400..first_hour)
            {
                add(bucket);
            }
        }
        for (_, bucket) in self.book.hours.range(since..) {
            add(bucket);
        }
        (tokens, cost)
    }

    /// Opens (and recovers) `<data_dir>/usage/`.
    pub fn open(
        data_dir: &Path,
        fsync: bool,
        day_retention_secs: i64,
        workers: usize,
        now: i64,
    ) -> Result<UsageTracker, StoreError> {
        let (store, book) = Store::<UsageBook>::open(
            &data_dir.join("usage"),
            StoreOptions {
                checkpoint_bytes: CHECKPOINT_BYTES,
                fsync,
            },
        )?;
        let mut detector = Detector::default();
        detector.seed(&book, now);
        Ok(UsageTracker {
            store,
            book,
            detector,
            spares: (0..workers)
                .map(|_| UsageDelta::with_capacity(64))
                .collect(),
            pending: HashMap::new(),
            retention: Retention {
                minute: MINUTE_RETENTION_SECS,
                hour: HOUR_RETENTION_SECS,
                day: day_retention_secs.max(HOUR_RETENTION_SECS),
            },
        })
    }

    /// How long day buckets are kept, in seconds.
    pub fn day_retention(&self) -> i64 {
        self.retention.day
    }

    /// Takes every worker's counts, journals them (one fsynced record), adds them to the
    /// buckets, and runs the detector. Returns the findings (already journaled).
    pub fn flush(
        &mut self,
        telemetry: &Telemetry,
        at: i64,
        settings: &dyn Fn(Uuid) -> Option<AnomalySettings>,
    ) -> Vec<Finding> {
        let mut rows = std::mem::take(&mut self.pending);
        for (worker, spare) in self.spares.iter_mut().enumerate() {
            spare.clear();
            telemetry.swap_usage(worker, spare);
            for (key, counts) in &spare.rows {
                rows.entry(*key).or_default().add(counts);
            }
            if spare.overflow > 0 {
                tracing::warn!(
                    worker,
                    requests = spare.overflow,
                    "usage rows or addresses past their per-flush bound; rule breakdown or anomaly input lost"
                );
            }
        }
        let record = UsageRecord::Flush {
            at,
            retention: self.retention,
            rows: rows.into_iter().collect(),
        };
        let UsageRecord::Flush { rows, .. } = &record else {
            return Vec::new();
        };
        // An idle second writes nothing (retention is applied by the next busy one, and
        // every export filters by it anyway).
        if !rows.is_empty() {
            if let Err(e) = self.store.append(&record) {
                tracing::error!(error = %e, "usage flush could not be journaled; kept for the next one");
                self.pending = rows.iter().cloned().collect();
                return Vec::new();
            }
            if let Err(e) = self.book.apply(&record) {
                tracing::error!(error = %e, "usage flush did not apply");
            }
        }
        let mut findings = self.detector.observe(at, rows, &self.spares, settings);
        for f in &mut findings {
            f.id = self.book.last_finding + 1;
            let record = UsageRecord::Finding(f.clone());
            if let Err(e) = self
                .store
                .append(&record)
                .map_err(|e| e.to_string())
                .and_then(|()| self.book.apply(&record).map_err(|e| e.to_string()))
            {
                tracing::error!(error = %e, "an anomaly finding could not be journaled");
            }
        }
        if let Err(e) = self.store.maybe_checkpoint(&self.book) {
            tracing::error!(error = %e, "usage checkpoint failed");
        }
        findings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardgate_core::usage::UsageKey;

    fn key(n: u128) -> UsageKey {
        UsageKey {
            gateway: Uuid::from_u128(1),
            key: Uuid::from_u128(n),
            rule: Uuid::from_u128(9),
        }
    }

    fn counts(requests: u64) -> Counts {
        Counts {
            requests,
            bytes_in: requests * 10,
            ..Counts::default()
        }
    }

    fn flush(at: i64, rows: Vec<(UsageKey, Counts)>) -> UsageRecord {
        UsageRecord::Flush {
            at,
            retention: Retention {
                minute: MINUTE_RETENTION_SECS,
                hour: HOUR_RETENTION_SECS,
                day: 730 * 86_400,
            },
            rows,
        }
    }

    #[test]
    fn a_flush_lands_in_its_minute_hour_and_day_and_old_buckets_age_out() {
        let mut book = UsageBook::default();
        let t = 1_800_000_000; // a whole day boundary is not needed: buckets are floored
        book.apply(&flush(t, vec![(key(2), counts(3))]))
            .expect("apply");
        book.apply(&flush(t + 1, vec![(key(2), counts(4))]))
            .expect("apply");
        let minute = t.div_euclid(60) * 60;
        assert_eq!(book.minutes[&minute].0[&key(2)].requests, 7);
        assert_eq!(
            book.hours[&(t.div_euclid(3600) * 3600)].0[&key(2)].bytes_in,
            70
        );
        assert_eq!(book.days.len(), 1);
        // 49 hours later the minute is gone, the hour and day stay.
        book.apply(&flush(t + 49 * 3600, vec![])).expect("apply");
        assert!(!book.minutes.contains_key(&minute));
        assert_eq!(book.hours.len(), 1);
        let json = serde_json::to_string(&book).expect("encode");
        let back: UsageBook = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, book);
    }

    #[test]
    fn a_spike_over_the_floor_and_the_baseline_is_found_once() {
        let settings = AnomalySettings {
            spike_floor: 100,
            ..AnomalySettings::default()
        };
        let get = |_| Some(settings.clone());
        let mut d = Detector::default();
        let t = 1_800_000_000;
        // A quiet hour: 1 request a minute.
        for m in 0..60 {
            let rows = [(key(2), counts(1))];
            assert!(d.observe(t + m * 60, &rows, &[], &get).is_empty());
        }
        let now = t + 3_700;
        let rows = [(key(2), counts(150))];
        let found = d.observe(now, &rows, &[], &get);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].kind, AnomalyKind::RequestSpike);
        assert_eq!(found[0].observed, 150);
        assert!(found[0].expected <= 1.0, "{}", found[0].expected);
        // The same spike a second later is not reported again.
        assert!(d.observe(now + 1, &rows, &[], &get).is_empty());
        // Below the floor, nothing.
        let mut quiet = Detector::default();
        let few = [(key(3), counts(99))];
        assert!(quiet.observe(now, &few, &[], &get).is_empty());
    }

    #[test]
    fn unauthorized_bursts_and_many_addresses_are_found() {
        let settings = AnomalySettings {
            unauthorized_burst: 5,
            distinct_addresses: 3,
            ..AnomalySettings::default()
        };
        let get = |_| Some(settings.clone());
        let mut d = Detector::default();
        let mut delta = UsageDelta::default();
        let gw = Uuid::from_u128(1);
        delta
            .unauthorized
            .insert((gw, IpAddr::from([127, 0, 0, 9])), 5);
        for i in 2..6u8 {
            delta
                .sources
                .insert((gw, Uuid::from_u128(2), IpAddr::from([127, 0, 0, i])));
        }
        let found = d.observe(1_800_000_000, &[], &[delta], &get);
        let kinds: Vec<_> = found.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [AnomalyKind::UnauthorizedBurst, AnomalyKind::ManyAddresses]
        );
        assert_eq!(found[1].observed, 4);
        assert_eq!(found[0].source, Some(IpAddr::from([127, 0, 0, 9])));
    }
}

// -- export ----------------------------------------------------------------------------------

/// What an export asks for. `from` is floored to the granularity; `to` is exclusive.
#[derive(Debug, Clone, Copy)]
pub struct Query {
    pub gateway: Uuid,
    /// One key's usage; `None`: the gateway's, broken down by key.
    pub key: Option<Uuid>,
    pub granularity: Granularity,
    pub from: i64,
    pub to: i64,
}

/// The oldest bucket start a granularity still holds at `now`.
pub fn retained_from(g: Granularity, now: i64, day_retention: i64) -> i64 {
    let keep = match g {
        Granularity::Minute => MINUTE_RETENTION_SECS,
        Granularity::Hour => HOUR_RETENTION_SECS,
        Granularity::Day => day_retention,
    };
    (now - keep).div_euclid(g.secs()) * g.secs()
}

/// The rows a query selects: (bucket start, row key, counts), sorted by bucket, key, rule.
pub fn select<'b>(book: &'b UsageBook, q: &Query) -> Vec<(i64, UsageKey, &'b Counts)> {
    let from = q.from.div_euclid(q.granularity.secs()) * q.granularity.secs();
    let mut out = Vec::new();
    for (start, bucket) in book.buckets(q.granularity).range(from..q.to) {
        let mut rows: Vec<(UsageKey, &Counts)> = bucket
            .0
            .iter()
            .filter(|(k, _)| k.gateway == q.gateway && q.key.is_none_or(|key| k.key == key))
            .map(|(k, c)| (*k, c))
            .collect();
        rows.sort_by_key(|(k, _)| *k);
        out.extend(rows.into_iter().map(|(k, c)| (*start, k, c)));
    }
    out
}

/// A key slot as the export names it.
pub fn key_label(key: Uuid) -> String {
    if key == UNAUTHENTICATED {
        "unauthenticated".to_owned()
    } else if key == ANONYMOUS {
        "anonymous".to_owned()
    } else {
        key.to_string()
    }
}

fn rule_label(rule: Uuid) -> String {
    if rule.is_nil() {
        String::new()
    } else if rule == shardgate_core::usage::OTHER_RULE {
        "_other".to_owned()
    } else {
        rule.to_string()
    }
}

/// RFC 3339 (UTC, seconds) of a unix time.
pub fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn micros_as_seconds(us: u64) -> String {
    format!("{}.{:06}", us / 1_000_000, us % 1_000_000)
}

/// The counts as JSON. `dimensions` names the rate-limit dimensions in order.
pub fn counts_json(c: &Counts, dimensions: &[&str]) -> serde_json::Value {
    use serde_json::{Map, Value, json};
    let status: Map<String, Value> = shardgate_core::usage::STATUS_CLASSES
        .iter()
        .zip(c.status)
        .map(|(name, n)| ((*name).to_owned(), json!(n)))
        .collect();
    let limited: Map<String, Value> = dimensions
        .iter()
        .zip(c.rate_limited)
        .map(|(name, n)| ((*name).to_owned(), json!(n)))
        .collect();
    let buckets: Vec<Value> = latency_labels()
        .zip(c.upstream_latency)
        .map(|(le, n)| json!({"le": le, "count": n}))
        .collect();
    json!({
        "requests": c.requests,
        "status": status,
        "bytes_in": c.bytes_in,
        "bytes_out": c.bytes_out,
        "rate_limited": limited,
        "upstream_latency": {
            "count": c.upstream_requests(),
            "sum_seconds": c.upstream_latency_sum_us as f64 / 1e6,
            "buckets": buckets,
        },
        "tokens": {
            "prompt": c.prompt_tokens,
            "completion": c.completion_tokens,
            "total": c.prompt_tokens + c.completion_tokens,
        },
        "cost": c.cost_nanos as f64 / 1e9,
        "estimated_requests": c.estimated_requests,
    })
}

fn latency_labels() -> impl Iterator<Item = &'static str> {
    shardgate_core::metrics::BUCKET_LABELS
        .into_iter()
        .chain(std::iter::once("+Inf"))
}

/// The JSON export: totals, and per bucket its totals with a per-rule breakdown (one key) or
/// per-key and per-rule breakdowns (a gateway). Only buckets with traffic are listed.
pub fn json(
    rows: &[(i64, UsageKey, &Counts)],
    q: &Query,
    dimensions: &[&str],
) -> serde_json::Value {
    use serde_json::{Value, json};
    let mut totals = Counts::default();
    let mut buckets: Vec<Value> = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let start = rows[i].0;
        let mut end = i;
        while end < rows.len() && rows[end].0 == start {
            end += 1;
        }
        let group = &rows[i..end];
        let mut sum = Counts::default();
        let mut by_rule: BTreeMap<Uuid, Counts> = BTreeMap::new();
        let mut by_key: BTreeMap<Uuid, Counts> = BTreeMap::new();
        for (_, k, c) in group {
            sum.add(c);
            by_rule.entry(k.rule).or_default().add(c);
            by_key.entry(k.key).or_default().add(c);
        }
        totals.add(&sum);
        let mut bucket = counts_json(&sum, dimensions);
        bucket["start"] = json!(rfc3339(start));
        bucket["rules"] = Value::Array(
            by_rule
                .iter()
                .map(|(rule, c)| {
                    let mut v = counts_json(c, dimensions);
                    v["rule_id"] = json!(rule_label(*rule));
                    v
                })
                .collect(),
        );
        if q.key.is_none() {
            bucket["keys"] = Value::Array(
                by_key
                    .iter()
                    .map(|(key, c)| {
                        let mut v = counts_json(c, dimensions);
                        v["key_id"] = json!(key_label(*key));
                        v
                    })
                    .collect(),
            );
        }
        buckets.push(bucket);
        i = end;
    }
    let mut body = json!({
        "gateway_id": q.gateway,
        "granularity": q.granularity.as_str(),
        "from": rfc3339(q.from.div_euclid(q.granularity.secs()) * q.granularity.secs()),
        "to": rfc3339(q.to),
        "totals": counts_json(&totals, dimensions),
        "buckets": buckets,
    });
    if let Some(key) = q.key {
        body["key_id"] = json!(key);
    }
    body
}

/// The CSV header: one stable column order for both exports.
pub fn csv_header(dimensions: &[&str]) -> String {
    let mut cols: Vec<String> = [
        "bucket_start",
        "gateway_id",
        "key_id",
        "rule_id",
        "requests",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    cols.extend(
        shardgate_core::usage::STATUS_CLASSES
            .iter()
            .map(|c| format!("status_{c}")),
    );
    cols.push("bytes_in".into());
    cols.push("bytes_out".into());
    cols.extend(dimensions.iter().map(|d| format!("rate_limited_{d}")));
    cols.push("upstream_requests".into());
    cols.push("upstream_latency_sum_seconds".into());
    cols.extend(latency_labels().map(|le| match le {
        "+Inf" => "upstream_le_inf".to_owned(),
        le => format!("upstream_le_{le}"),
    }));
    for col in [
        "prompt_tokens",
        "completion_tokens",
        "cost",
        "estimated_requests",
    ] {
        cols.push(col.into());
    }
    cols.join(",")
}

/// Nano-dollars as a decimal dollar amount without float rounding (`1.5e-3` → `0.001500000`).
fn nanos_as_dollars(nanos: u64) -> String {
    format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000)
}

/// The CSV export: a header, then one line per bucket, key and rule (every value is an
/// id, a number or a timestamp: nothing needs quoting).
pub fn csv(rows: &[(i64, UsageKey, &Counts)], dimensions: &[&str]) -> String {
    use std::fmt::Write as _;
    let mut out = csv_header(dimensions);
    out.push_str("\r\n");
    for (start, k, c) in rows {
        let _ = write!(
            out,
            "{},{},{},{},{}",
            rfc3339(*start),
            k.gateway,
            key_label(k.key),
            rule_label(k.rule),
            c.requests
        );
        for n in c.status {
            let _ = write!(out, ",{n}");
        }
        let _ = write!(out, ",{},{}", c.bytes_in, c.bytes_out);
        for n in c.rate_limited {
            let _ = write!(out, ",{n}");
        }
        let _ = write!(
            out,
            ",{},{}",
            c.upstream_requests(),
            micros_as_seconds(c.upstream_latency_sum_us)
        );
        for n in c.upstream_latency {
            let _ = write!(out, ",{n}");
        }
        let _ = write!(
            out,
            ",{},{},{},{}",
            c.prompt_tokens,
            c.completion_tokens,
            nanos_as_dollars(c.cost_nanos),
            c.estimated_requests
        );
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod export_tests {
    use super::*;

    #[test]
    fn csv_and_json_list_the_same_rows_with_stable_columns() {
        let mut book = UsageBook::default();
        let gw = Uuid::from_u128(1);
        let row = |key: Uuid, rule: u128| UsageKey {
            gateway: gw,
            key,
            rule: Uuid::from_u128(rule),
        };
        let c = Counts {
            requests: 2,
            status: [0, 1, 0, 1, 0],
            bytes_in: 10,
            bytes_out: 20,
            upstream_latency_sum_us: 1_500,
            ..Counts::default()
        };
        let t = 1_800_000_000;
        book.apply(&UsageRecord::Flush {
            at: t,
            retention: Retention {
                minute: MINUTE_RETENTION_SECS,
                hour: HOUR_RETENTION_SECS,
                day: 730 * 86_400,
            },
            rows: vec![
                (row(Uuid::from_u128(5), 7), c.clone()),
                (row(UNAUTHENTICATED, 0), c.clone()),
            ],
        })
        .expect("apply");
        let q = Query {
            gateway: gw,
            key: None,
            granularity: Granularity::Hour,
            from: t - 3_600,
            to: t + 3_600,
        };
        let dims = ["global", "per_ip", "per_user"];
        let rows = select(&book, &q);
        assert_eq!(rows.len(), 2);
        let text = csv(&rows, &dims);
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert!(lines[0].starts_with("bucket_start,gateway_id,key_id,rule_id,requests,status_1xx"));
        assert!(
            lines[0].ends_with(
                "upstream_le_60,upstream_le_inf,prompt_tokens,completion_tokens,cost,estimated_requests"
            ),
            "{}",
            lines[0]
        );
        assert_eq!(lines[0].split(',').count(), lines[1].split(',').count());
        assert!(text.contains(",unauthenticated,,2,"), "{text}");
        let body = json(&rows, &q, &dims);
        assert_eq!(body["totals"]["requests"], 4);
        assert_eq!(body["buckets"][0]["keys"].as_array().map(Vec::len), Some(2));
        assert_eq!(body["buckets"][0]["upstream_latency"]["sum_seconds"], 0.003);
    }
}
