//! Exact cross-core rate limiting: a sliding window of slot counters per subject, shared by
//! all workers, that workers lease tokens from in batches.
//!
//! # Algorithm and error bound
//!
//! A [`Limiter`] is one `(plugin instance, dimension)` with `limit` and window `W`. The
//! window is cut into `N = min(MAX_SLOTS, W in ms)` slots of `d = ⌈W/N⌉` ms. Per subject
//! (the one global subject, an IP, a user) the shared side keeps the admitted count of the
//! last `N + 1` slots, and grants a token only while their sum stays ≤ `limit`.
//!
//! *Never over-admits*: a real window `[a, a + W)` spans at most `N + 1` slots, so when the
//! last token admitted in it was granted, every earlier token of that window was still
//! counted. *Error bound*: capacity comes back when its slot leaves the `N + 1`-slot ring, up
//! to one slot (`d`, plus `< N` ms of rounding) later than an exact sliding log would give it
//! back; never earlier. With `1m` that is 3.75 s; with `1s`, 63 ms. The only other error,
//! tokens leased but not yet used (below), also errs toward under-admission.
//!
//! # Leasing
//!
//! Each worker owns a [`WorkerBuckets`] (one `LeasedBucket` per subject it has seen
//! recently). A request takes a token from its bucket with no shared write; an empty bucket
//! takes a *lease* of `k` tokens from the shared counters, charged in full to the current
//! slot at once (conservative), under one short lock. A lease is good only within the slot it
//! was charged to: on rollover the unused rest goes back to its slot (in the same locked
//! operation as the next lease), so a token is never handed out later than the slot that
//! counts it. `k` starts at 1 for a subject new to the worker, doubles on every lease up to
//! [`Tuning::max_lease`], and is never more than `remaining / lease_divisor` (at least 1): far
//! from the limit a worker touches shared memory once per `max_lease` requests (plus once per
//! slot), near it leases shrink to single tokens so the total admitted reaches exactly
//! `limit`. [`WorkerBuckets::flush_idle`], called from the worker's timer, gives back leases
//! idle for [`Tuning::idle_ms`] and those of past slots, so traffic spread over workers is not
//! under-admitted. Tokens given back to a slot that has left the window are dropped: the
//! window already forgot that slot, so nothing is inflated.
//!
//! Time is `now_ms`, milliseconds of one monotonic clock that every worker reads (say
//! `Instant` since a process-wide epoch); the guarantee is stated in those readings. A
//! worker whose reading lags another's is charged to the newest slot the subject has seen,
//! never to an older one; a reading staler than `N·d − W + 1` ms (1 ms when `N` divides `W`)
//! can let that worker's admissions count up to its staleness early. Read the clock per
//! request or per event-loop turn.
//!
//! # Several dimensions
//!
//! [`WorkerBuckets::try_acquire_all`] takes a token in every configured dimension or in none:
//! it reserves per_user, then per_ip, then global (most specific first, so a single client
//! over its own limit never reserves, and so never strands, a global token) and, if one
//! rejects, puts the tokens already taken back into their local buckets — no shared write.
//!
//! # Token reservations
//!
//! A `token_rate_limiter` counts LLM tokens, whose number is known only once the response
//! has ended. Admission *reserves* an estimate and the end of the request *settles* it:
//!
//! - [`Limiter::reserve`] admits `e` tokens iff `used + e ≤ limit` (`used`: the counted total
//!   of the subject's `N + 1` slots) and charges all `e` to the current slot, in one locked
//!   operation. An estimate above `limit` can never pass and is refused without a lock
//!   ([`RejectReason::ExceedsLimit`], no `Retry-After`). Otherwise a refusal's `Retry-After`
//!   is when enough counted slots, oldest first, will have left the window for `e` to fit.
//! - [`Limiter::settle`] with the real count `a`, in one more locked operation: `a < e` gives
//!   `e − a` back to the reservation's slot (nothing if that slot has left the window: it is
//!   already forgotten); `a > e` charges `a − e` to the *current* slot unconditionally, even
//!   over `limit` and past [`Tuning::max_subjects`] — those tokens were consumed, and
//!   counting them is what makes later admissions pay for them.
//!
//! Reservations go straight to the shared counters, with no per-worker leasing: leasing
//! token counts in batches would strand capacity in one worker, and two short locks are
//! negligible next to an AI request. [`LimiterSet::reserve_all`] reserves in every dimension
//! or in none (per_user, per_ip, then global; on a rejection the reservations already made
//! are settled with 0, a full refund); [`Reservations::settle`] settles them all.
//!
//! *Admission never exceeds the limit*: right after each admission the window's counted
//! total (estimates of requests in flight plus settled counts) is ≤ `limit`. *Overshoot
//! bound*: once settled, the tokens charged to any `N + 1` consecutive slots — so to any
//! real window of length `W` — exceed `limit` by at most `Σ max(0, actual − reserved)` over
//! the requests in flight at the last admission charged to those slots (at their start, if
//! none was). Proof: that admission left them ≤ `limit`; after it only refunds (−) and the
//! extras of settles (+) change them, and an extra lands in the slot current at its settle,
//! so only a request admitted before that admission can put one there. The overshoot is
//! zero when every estimate is an upper bound of its request's real cost, which is what the
//! gateway's estimate is built to be: prompt bytes (a byte-level BPE token spans at least one
//! byte) plus `max_tokens`, which the provider enforces. Prompt tokens the bytes do not
//! bound (a provider-injected system prompt, an image by URL) or a request without
//! `max_tokens` break that premise, and each adds its excess to the sum. A settled overshoot
//! stays counted, so later admissions pay it back. The error bound of requests holds as
//! well: charged capacity comes back when its slot leaves the ring, up to one slot (`d`, plus
//! `< N` ms of rounding) later than an exact sliding log, never earlier; a refund comes back
//! at once. An estimate above the real cost under-admits only while its request is in
//! flight.
//!
//! # Memory
//!
//! Subject state is a fixed 76 bytes (slot counters as `u32`, hence limits above `u32::MAX`
//! per window act as `u32::MAX`). A subject whose counted slots are all empty is removed:
//! shards are swept on insert when their size doubled since the last sweep (amortised O(1)),
//! one shard per limiter on each `flush_idle`, and entirely by [`Limiter::sweep`]. A limiter
//! holds at most [`Tuning::max_subjects`]; when a shard is full of live subjects a *new*
//! subject is refused ([`RejectReason::SubjectTableFull`]) until one expires — live counts
//! are never evicted, because forgetting them would admit over the limit. Worker-side, a
//! worker keeps at most [`Tuning::max_local_subjects`] buckets per limiter; beyond that a
//! request for a new subject is served by a one-token shared operation with no local state.
//!
//! Subjects are keyed by a 64-bit SipHash with a per-process random key ([`SubjectKey`]):
//! fixed-size entries, no attacker-controlled strings stored. Two subjects whose keys
//! collide (≈ n²/2⁶⁵ for n live subjects, not steerable without the key) share one budget:
//! under-admission for both, never over-admission for either.
//!
//! # Concurrency
//!
//! The shared side is a `parking_lot::Mutex<HashMap>` per shard, each on its own cache line.
//! A lease must read `N + 1` counters, compare with `limit`, roll expired slots and add to
//! one: a multi-word read-modify-write that atomics would only do with a CAS loop over a
//! packed word (too small for 17 counters) or a seqlock. Leasing makes the lock rare on the
//! common path, and the critical section is ~20 ns of arithmetic, so a plain lock is the
//! simplest thing that is exact. The [`Registry`] lock is taken only when a snapshot is
//! compiled, never per request.
//!
//! # Lifecycle
//!
//! ```text
//! snapshot compile (admin)  registry.limiter_set(instance_id, &settings.limits) -> LimiterSet
//!                           (same id + limit + window -> same counters; else fresh ones)
//! worker start              let mut buckets = registry.worker();
//! per request               buckets.try_acquire_all(&set, Subjects { ip, user }, now_ms)
//!                             Ok(admitted)  -> X-RateLimit-* from admitted.tightest()/get(dim)
//!                             Err(rejected) -> 429, rejected.retry_after_secs, rejected.dimension
//! worker timer (10–50 ms)   buckets.flush_idle(now_ms)
//!
//! LLM request (tokens)      set.reserve_all(Subjects { ip, user }, estimate, now_ms)
//!                             Ok(reserved)  -> X-RateLimit-* from reserved.tightest()
//!                             Err(rejected) -> ExceedsLimit: no Retry-After; else 429 as above
//! response end              reserved.settle(actual_tokens, now_ms)
//! ```

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::marker::PhantomData;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use crate::plugins::{Limit, Limits};

/// Most slots a window is cut into. Default 16: capacity returns at most `W/16` late (one
/// slot) and a subject costs 76 bytes. More slots return capacity sooner but cost 4 bytes
/// each per subject and force one more lease per worker per active subject per slot.
/// Windows shorter than 16 ms use one slot per millisecond.
pub const MAX_SLOTS: usize = 16;

/// Counters kept per subject: the slots of a window plus the one the window's start falls in.
const RING_MAX: usize = MAX_SLOTS + 1;

/// Knobs of a [`Registry`] and everything it creates. `Tuning::default()` is what the gateway
/// uses; tests shrink the caps to exercise them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Lock shards per limiter, rounded up to a power of two. Default 64. More shards spread
    /// per-IP leasing over more locks (less contention), each costs one cache line (128 B)
    /// plus an empty map; the global dimension has one subject and always uses one shard.
    pub shards: usize,
    /// Hard cap on subjects held by one limiter (split evenly over shards). Default 131 072,
    /// about 12–24 MiB at worst per limiter. When a shard is full of subjects with live
    /// counts, new subjects are refused until one expires (never admitted uncounted).
    /// Raise it for sites that see more distinct clients per window.
    pub max_subjects: usize,
    /// Largest lease, in tokens. Default 256: a subject far below its limit touches shared
    /// memory on ~0.4 % of a worker's requests (plus once per slot). Larger leases cut that
    /// further but hold more budget away from other workers until given back.
    pub max_lease: u64,
    /// A lease is at most `remaining / lease_divisor` tokens (and at least 1). Default 8.
    /// Larger values shrink leases sooner as a subject nears its limit (fewer tokens stranded
    /// in other workers when it is reached) at the cost of more shared operations on the way.
    pub lease_divisor: u64,
    /// A bucket unused for this long gives its lease back on `flush_idle`. Default 10 ms.
    /// Shorter lets spread traffic reclaim budget sooner; longer saves shared operations for
    /// bursty subjects. Call `flush_idle` at least this often (10–50 ms).
    pub idle_ms: u64,
    /// Buckets one worker keeps per limiter. Default 4 096. Beyond it a request for a subject
    /// without a bucket does a one-token shared operation and keeps nothing locally, so a
    /// flood of distinct clients cannot grow a worker's memory.
    pub max_local_subjects: usize,
}

/// How long a worker keeps an empty table of a limiter it no longer uses.
const TABLE_KEEP_MS: u64 = 60_000;

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            shards: 64,
            max_subjects: 131_072,
            max_lease: 256,
            lease_divisor: 8,
            idle_ms: 10,
            max_local_subjects: 4_096,
        }
    }
}

impl Tuning {
    /// The same knobs with every value in its working range.
    fn normalised(self) -> Tuning {
        Tuning {
            shards: self.shards.clamp(1, 1 << 16).next_power_of_two(),
            max_subjects: self.max_subjects.max(1),
            max_lease: self.max_lease.max(1),
            lease_divisor: self.lease_divisor.max(1),
            idle_ms: self.idle_ms,
            max_local_subjects: self.max_local_subjects,
        }
    }
}

/// Which `limits.*` entry of a `rate_limiter` a limiter enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    /// `limits.global`: one budget shared by every request.
    Global,
    /// `limits.per_ip`: one budget per client address.
    PerIp,
    /// `limits.per_user`: one budget per user identity.
    PerUser,
}

impl Dimension {
    /// All dimensions, in the order [`Admitted`] reports them.
    pub const ALL: [Dimension; 3] = [Dimension::Global, Dimension::PerIp, Dimension::PerUser];

    /// The settings name: `global`, `per_ip`, `per_user`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Global => "global",
            Dimension::PerIp => "per_ip",
            Dimension::PerUser => "per_user",
        }
    }

    fn index(self) -> usize {
        match self {
            Dimension::Global => 0,
            Dimension::PerIp => 1,
            Dimension::PerUser => 2,
        }
    }
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is being limited, before hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    /// The one subject of a `global` limit.
    Global,
    /// A client address; IPv4-mapped IPv6 counts as the IPv4 address.
    Ip(IpAddr),
    /// An API key id or the value of the configured user header.
    User(&'a [u8]),
}

/// A subject as the tables store it: a keyed 64-bit hash (see the module doc on collisions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubjectKey(u64);

impl SubjectKey {
    /// The key of [`Subject::Global`] in every limiter.
    pub const GLOBAL: SubjectKey = SubjectKey(0);
}

/// The subjects of one request; `None` skips that dimension (e.g. no user identity).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Subjects<'a> {
    /// The client address, for `per_ip`.
    pub ip: Option<IpAddr>,
    /// The user identity (API key id or user header), for `per_user`.
    pub user: Option<&'a [u8]>,
}

impl<'a> Subjects<'a> {
    /// The subject `dimension` limits, if this request has one.
    fn subject(self, dimension: Dimension) -> Option<Subject<'a>> {
        match dimension {
            Dimension::Global => Some(Subject::Global),
            Dimension::PerIp => self.ip.map(Subject::Ip),
            Dimension::PerUser => self.user.map(Subject::User),
        }
    }
}

/// The numbers for `X-RateLimit-*` / `RateLimit` headers after an admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// The dimension these numbers describe.
    pub dimension: Dimension,
    /// The enforced limit per window.
    pub limit: u64,
    /// After a request token: approximate, `limit` minus what the shared counters held at
    /// this worker's last lease, plus this worker's unused lease. Admissions by other workers
    /// since that lease are not seen (too high), and tokens still leased elsewhere count as
    /// used (too low). After a token reservation: `limit` minus the counted total right after
    /// it (estimates of requests in flight count in full).
    pub remaining: u64,
    /// Seconds until the oldest counted slot leaves the window (as of the last lease or the
    /// reservation).
    pub reset_secs: u64,
    /// The window in whole seconds, rounded up (for `RateLimit-Policy: 5;w=60`).
    pub window_secs: u64,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The subject used its `limit` in the window.
    Limited,
    /// The limiter holds [`Tuning::max_subjects`] subjects with live counts and this one is
    /// new; it is refused rather than admitted uncounted.
    SubjectTableFull,
    /// [`Limiter::reserve`]: the request alone needs more than `limit` (`tokens` is its
    /// estimate), so no wait can admit it. `retry_after_secs` and `reset_secs` are 0 and mean
    /// nothing: answer without `Retry-After`.
    ExceedsLimit {
        /// The tokens the request asked to reserve.
        tokens: u64,
    },
}

/// A refused request: which dimension, and the numbers for `Retry-After` and the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// The dimension that refused.
    pub dimension: Dimension,
    /// Why it refused.
    pub reason: RejectReason,
    /// That dimension's enforced limit per window.
    pub limit: u64,
    /// Seconds until enough capacity comes back (at least 1): for a request token, until
    /// the oldest counted slot leaves the window; for a reservation, until enough counted
    /// slots, oldest first, have left it for the estimate to fit. Use it for `Retry-After`
    /// when `actions.retry_after` is not set. Leases given back by other workers, or refunds
    /// of settled reservations, may free capacity sooner. 0 for
    /// [`RejectReason::ExceedsLimit`], which no wait cures.
    pub retry_after_secs: u64,
    /// Same instant as `retry_after_secs`, for `X-RateLimit-Reset`.
    pub reset_secs: u64,
    /// The window in whole seconds, rounded up.
    pub window_secs: u64,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            RejectReason::ExceedsLimit { tokens } => write!(
                f,
                "{} rate limit: request needs {tokens} tokens, more than the limit {} per \
                 window, so it can never be admitted (retrying does not help)",
                self.dimension, self.limit
            ),
            RejectReason::Limited | RejectReason::SubjectTableFull => {
                write!(f, "{} rate limit exceeded", self.dimension)
            }
        }
    }
}

impl std::error::Error for Rejected {}

/// The quotas of every dimension that admitted a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    quotas: [Option<Quota>; 3],
}

impl Admitted {
    /// The quota of `dimension`, if it was checked.
    pub fn get(&self, dimension: Dimension) -> Option<Quota> {
        self.quotas[dimension.index()]
    }

    /// Every checked dimension, in [`Dimension::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = Quota> + '_ {
        self.quotas.iter().flatten().copied()
    }

    /// The quota with the least remaining, for the combined `X-RateLimit-*` headers.
    pub fn tightest(&self) -> Option<Quota> {
        self.iter()
            .min_by_key(|q| (q.remaining, std::cmp::Reverse(q.reset_secs)))
    }
}

/// A token taken by [`WorkerBuckets::try_acquire`]. Dropping it spends it;
/// [`WorkerBuckets::cancel`] puts it back.
#[derive(Debug)]
#[must_use = "a token is spent when dropped; WorkerBuckets::cancel gives it back"]
pub struct Token {
    serial: u64,
    key: SubjectKey,
    slot: u64,
    /// Taken with no local bucket (the worker's table was full): giving it back is shared.
    direct: bool,
    quota: Quota,
}

impl Token {
    /// The numbers for the response headers, as of this token's admission.
    pub fn quota(&self) -> Quota {
        self.quota
    }
}

/// Tokens reserved by [`Limiter::reserve`] for one request of one subject. Give it to
/// [`Limiter::settle`] once the real count is known; never settled, the whole estimate stays
/// charged (as if the request had cost it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// The slot the estimate is charged to (a refund goes back to it while it is counted).
    pub slot: u64,
    /// The estimate reserved.
    pub tokens: u64,
    /// The subject's counted total right after this reservation (≤ `limit`).
    pub used: u64,
    /// `limit − used`, for the response headers.
    pub remaining: u64,
    /// Seconds until the subject's oldest counted slot leaves the window, as of the
    /// reservation.
    pub reset_secs: u64,
}

// --- hashing -----------------------------------------------------------------------------

/// Hasher for keys that are already uniformly random (`SubjectKey`, limiter serials): one
/// folded multiply, so both the low bits (bucket index) and the high bits (control tag) mix.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        let p = u128::from(self.0 ^ x) * 0x9e37_79b9_7f4a_7c15_u128;
        self.0 = (p as u64) ^ ((p >> 64) as u64);
    }
}

type KeyBuild = BuildHasherDefault<KeyHasher>;

// --- window geometry and per-subject counters --------------------------------------------

/// How a limiter's window is cut into slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    /// `limit`, clamped to what a `u32` slot counter holds.
    limit: u64,
    window_ms: u64,
    slot_ms: u64,
    /// Slots counted: `N + 1`, at most [`RING_MAX`].
    ring: u64,
}

impl Geometry {
    fn new(limit: u64, window_ms: u64) -> Geometry {
        let window_ms = window_ms.max(1);
        let slots = window_ms.min(MAX_SLOTS as u64);
        Geometry {
            limit: limit.min(u64::from(u32::MAX)),
            window_ms,
            slot_ms: window_ms.div_ceil(slots),
            ring: slots + 1,
        }
    }

    fn slot_of(&self, now_ms: u64) -> u64 {
        now_ms / self.slot_ms
    }

    /// When the counts of `slot` stop being counted.
    fn expiry_ms(&self, slot: u64) -> u64 {
        slot.saturating_add(self.ring).saturating_mul(self.slot_ms)
    }

    /// When `slot` ends: a lease charged to it is good until then.
    fn end_ms(&self, slot: u64) -> u64 {
        slot.saturating_add(1).saturating_mul(self.slot_ms)
    }

    fn secs_until(at_ms: u64, now_ms: u64) -> u64 {
        at_ms.saturating_sub(now_ms).div_ceil(1000)
    }

    fn window_secs(&self) -> u64 {
        self.window_ms.div_ceil(1000)
    }

    fn index(&self, slot: u64) -> usize {
        (slot % self.ring) as usize
    }
}

/// One subject's counted slots: `counts[s % ring]` for `s` in `newest + 1 - ring ..= newest`.
#[derive(Debug, Clone, Copy)]
struct Window {
    newest: u64,
    counts: [u32; RING_MAX],
}

impl Window {
    fn new(slot: u64) -> Window {
        Window {
            newest: slot,
            counts: [0; RING_MAX],
        }
    }

    /// Forgets the slots that left the window by slot `cur`.
    fn advance(&mut self, cur: u64, g: &Geometry) {
        if cur <= self.newest {
            return;
        }
        if cur - self.newest >= g.ring {
            self.counts = [0; RING_MAX];
        } else {
            for s in self.newest + 1..=cur {
                self.counts[g.index(s)] = 0;
            }
        }
        self.newest = cur;
    }

    fn used(&self, g: &Geometry) -> u64 {
        self.counts[..g.ring as usize]
            .iter()
            .map(|&c| u64::from(c))
            .sum()
    }

    fn oldest_counted(&self, g: &Geometry) -> Option<u64> {
        let first = self.newest.saturating_sub(g.ring - 1);
        (first..=self.newest).find(|&s| self.counts[g.index(s)] > 0)
    }

    /// When the oldest counted slot leaves the window (`now_ms` if nothing is counted).
    fn reset_at_ms(&self, g: &Geometry, now_ms: u64) -> u64 {
        self.oldest_counted(g)
            .map_or(now_ms, |s| g.expiry_ms(s).max(now_ms))
    }

    /// When enough counted slots, oldest first, have left the window for `tokens` more to fit
    /// under `limit` (`now_ms` if they fit now; the newest slot's expiry if even an empty
    /// window would not hold them).
    fn fits_at_ms(&self, tokens: u64, g: &Geometry, now_ms: u64) -> u64 {
        let mut left = self.used(g);
        let mut at_ms = now_ms;
        for s in self.newest.saturating_sub(g.ring - 1)..=self.newest {
            if left.saturating_add(tokens) <= g.limit {
                break;
            }
            let c = u64::from(self.counts[g.index(s)]);
            if c > 0 {
                left -= c;
                at_ms = g.expiry_ms(s);
            }
        }
        at_ms.max(now_ms)
    }

    fn charge(&mut self, tokens: u64, g: &Geometry) {
        let c = &mut self.counts[g.index(self.newest)];
        *c = c.saturating_add(u32::try_from(tokens).unwrap_or(u32::MAX));
    }

    /// Un-counts `tokens` never handed out. A slot that left the window is not touched: its
    /// counter now belongs to a newer slot.
    fn give_back(&mut self, slot: u64, tokens: u64, g: &Geometry) {
        if slot <= self.newest && slot + g.ring > self.newest {
            let c = &mut self.counts[g.index(slot)];
            *c = c.saturating_sub(u32::try_from(tokens).unwrap_or(u32::MAX));
        }
    }
}

// --- the shared side ---------------------------------------------------------------------

/// The outcome of one locked operation on a subject.
enum Grant {
    Leased {
        slot: u64,
        tokens: u64,
        /// The subject's counted total right after this lease.
        used: u64,
        reset_at_ms: u64,
    },
    Denied {
        reason: RejectReason,
        retry_at_ms: u64,
    },
}

struct Shard {
    subjects: HashMap<SubjectKey, Window, KeyBuild>,
    /// Locked operations served: leases, give-backs, reservations, settlements.
    shared_ops: u64,
    /// Sweep before inserting once the map reaches this size (doubling: amortised O(1)).
    sweep_at_len: usize,
    /// While full of live subjects, refuse newcomers without sweeping until then.
    full_until_ms: u64,
}

impl Shard {
    /// Removes subjects with nothing counted. Returns how many, and when the next live one
    /// expires.
    fn sweep(&mut self, cur: u64, g: &Geometry) -> (usize, u64) {
        let before = self.subjects.len();
        let mut next_expiry = u64::MAX;
        self.subjects.retain(|_, w| {
            w.advance(cur, g);
            match w.oldest_counted(g) {
                None => false,
                Some(s) => {
                    next_expiry = next_expiry.min(g.expiry_ms(s));
                    true
                }
            }
        });
        let len = self.subjects.len();
        if self.subjects.capacity() > 4 * len.max(64) {
            self.subjects.shrink_to(2 * len);
        }
        self.sweep_at_len = (2 * len).max(64);
        if len < before {
            self.full_until_ms = 0;
        }
        (before - len, next_expiry)
    }
}

/// Counters the running gateway reads for metrics and tests read for their assertions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimiterStats {
    /// Subjects held now.
    pub subjects: usize,
    /// Slots allocated in the shard maps (memory follows this, not `subjects`).
    pub capacity: usize,
    /// Locked leases, give-backs, reservations and settlements since creation.
    pub shared_ops: u64,
}

/// The shared budget of one `(plugin instance, dimension)`: every worker's leases come from
/// here. Get one from a [`Registry`]; share it by `Arc`.
pub struct Limiter {
    /// Unique per limiter for the life of the process: workers key their buckets by it.
    serial: u64,
    dimension: Dimension,
    geometry: Geometry,
    tuning: Tuning,
    hasher: RandomState,
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    shard_cap: usize,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("serial", &self.serial)
            .field("dimension", &self.dimension)
            .field("limit", &self.geometry.limit)
            .field("window_ms", &self.geometry.window_ms)
            .field("slot_ms", &self.geometry.slot_ms)
            .finish_non_exhaustive()
    }
}

impl Limiter {
    fn new(
        serial: u64,
        dimension: Dimension,
        geometry: Geometry,
        tuning: Tuning,
        hasher: RandomState,
    ) -> Limiter {
        let shards = (0..tuning.shards)
            .map(|_| {
                CachePadded::new(Mutex::new(Shard {
                    subjects: HashMap::default(),
                    shared_ops: 0,
                    sweep_at_len: 64,
                    full_until_ms: 0,
                }))
            })
            .collect();
        Limiter {
            serial,
            dimension,
            geometry,
            tuning,
            hasher,
            shards,
            shard_cap: tuning.max_subjects.div_ceil(tuning.shards).max(1),
        }
    }

    /// The dimension this limiter enforces.
    pub fn dimension(&self) -> Dimension {
        self.dimension
    }

    /// The enforced limit per window (the configured one, at most `u32::MAX`).
    pub fn limit(&self) -> u64 {
        self.geometry.limit
    }

    /// The window length in milliseconds.
    pub fn window_ms(&self) -> u64 {
        self.geometry.window_ms
    }

    /// Slot length: the granularity at which capacity comes back (the error bound).
    pub fn slot_ms(&self) -> u64 {
        self.geometry.slot_ms
    }

    /// The key of `subject` in this limiter (and in every limiter of the same [`Registry`]).
    pub fn key(&self, subject: Subject<'_>) -> SubjectKey {
        // One whole-word write per address: SipHash is cheapest fed words, not byte slices.
        // IPs and user ids never share a limiter, so their encodings need not be disjoint.
        let mut h = self.hasher.build_hasher();
        match subject {
            Subject::Global => return SubjectKey::GLOBAL,
            Subject::Ip(ip) => match ip.to_canonical() {
                IpAddr::V4(a) => h.write_u64(u64::from(a.to_bits())),
                IpAddr::V6(a) => h.write_u128(a.to_bits()),
            },
            Subject::User(bytes) => {
                h.write(bytes);
                h.write_u8(0xff);
            }
        }
        SubjectKey(h.finish())
    }

    /// What the shared counters hold for `key` at `now_ms`, including tokens leased but not
    /// yet used. Takes the shard lock; for diagnostics and tests, not the request path.
    pub fn used(&self, key: SubjectKey, now_ms: u64) -> u64 {
        let g = &self.geometry;
        let shard = self.shard(key).lock();
        shard.subjects.get(&key).map_or(0, |w| {
            let mut w = *w;
            w.advance(g.slot_of(now_ms), g);
            w.used(g)
        })
    }

    /// Removes every subject with nothing counted at `now_ms`; returns how many. The gateway
    /// does not need to call it (inserts and `flush_idle` sweep incrementally).
    pub fn sweep(&self, now_ms: u64) -> usize {
        (0..self.shards.len())
            .map(|i| self.sweep_shard(i, now_ms))
            .sum()
    }

    /// Subjects, map capacity and locked operations, summed over the shards (locks each).
    pub fn stats(&self) -> LimiterStats {
        let mut stats = LimiterStats::default();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            stats.subjects += shard.subjects.len();
            stats.capacity += shard.subjects.capacity();
            stats.shared_ops += shard.shared_ops;
        }
        stats
    }

    fn shard(&self, key: SubjectKey) -> &Mutex<Shard> {
        // High bits pick the shard; the map's hasher re-mixes, so buckets still spread.
        &self.shards[(key.0 >> 40) as usize & (self.shards.len() - 1)]
    }

    fn sweep_shard(&self, index: usize, now_ms: u64) -> usize {
        let g = &self.geometry;
        let mut shard = self.shards[index % self.shards.len()].lock();
        shard.sweep(g.slot_of(now_ms), g).0
    }

    /// One locked operation: give back `give_back = (slot, tokens)` if any, then lease up to
    /// `want` tokens (at least 1, at most `remaining / lease_divisor`).
    fn exchange(
        &self,
        key: SubjectKey,
        give_back: Option<(u64, u64)>,
        want: u64,
        now_ms: u64,
    ) -> Grant {
        let g = &self.geometry;
        let mut guard = self.shard(key).lock();
        let shard = &mut *guard;
        shard.shared_ops += 1;
        if let Err(retry_at_ms) = self.make_room(shard, key, now_ms) {
            return Grant::Denied {
                reason: RejectReason::SubjectTableFull,
                retry_at_ms,
            };
        }
        let w = Self::window(shard, key, g, now_ms);
        if let Some((slot, tokens)) = give_back {
            w.give_back(slot, tokens, g);
        }
        let used = w.used(g);
        if used >= g.limit {
            return Grant::Denied {
                reason: RejectReason::Limited,
                retry_at_ms: w.reset_at_ms(g, now_ms),
            };
        }
        let remaining = g.limit - used;
        let tokens = want
            .min(self.tuning.max_lease)
            .min(remaining / self.tuning.lease_divisor)
            .max(1);
        w.charge(tokens, g);
        Grant::Leased {
            slot: w.newest,
            tokens,
            used: used + tokens,
            reset_at_ms: w.reset_at_ms(g, now_ms),
        }
    }

    /// Un-counts `tokens` leased in `slot` and never used; drops the subject if that leaves
    /// nothing counted.
    fn give_back(&self, key: SubjectKey, slot: u64, tokens: u64, now_ms: u64) {
        let g = &self.geometry;
        let mut guard = self.shard(key).lock();
        let shard = &mut *guard;
        shard.shared_ops += 1;
        if let Some(w) = shard.subjects.get_mut(&key) {
            w.advance(g.slot_of(now_ms), g);
            w.give_back(slot, tokens, g);
            if w.used(g) == 0 {
                shard.subjects.remove(&key);
                shard.full_until_ms = 0;
            }
        }
    }

    /// Makes sure `key` may be inserted into `shard` if it is new: sweeps when the shard is
    /// full or has doubled since its last sweep. `Err` carries when a live subject of a shard
    /// still full of them expires.
    fn make_room(&self, shard: &mut Shard, key: SubjectKey, now_ms: u64) -> Result<(), u64> {
        if shard.subjects.contains_key(&key) {
            return Ok(());
        }
        let g = &self.geometry;
        let full = shard.subjects.len() >= self.shard_cap;
        if full && now_ms < shard.full_until_ms {
            return Err(shard.full_until_ms);
        }
        if full || shard.subjects.len() >= shard.sweep_at_len {
            let (_, next_expiry) = shard.sweep(g.slot_of(now_ms), g);
            if shard.subjects.len() >= self.shard_cap {
                shard.full_until_ms = next_expiry;
                return Err(next_expiry);
            }
        }
        Ok(())
    }

    /// `key`'s window in `shard` (inserted if new), advanced to `now_ms`.
    fn window<'s>(
        shard: &'s mut Shard,
        key: SubjectKey,
        g: &Geometry,
        now_ms: u64,
    ) -> &'s mut Window {
        let cur = g.slot_of(now_ms);
        let w = shard
            .subjects
            .entry(key)
            .or_insert_with(|| Window::new(cur));
        w.advance(cur, g);
        w
    }

    /// Reserves `tokens` for one request of `key`: admitted iff the subject's counted total
    /// plus `tokens` stays ≤ [`limit`](Limiter::limit), and then charged in full to the
    /// current slot, in one locked operation (see the module doc, *Token reservations*).
    ///
    /// Refused with [`RejectReason::ExceedsLimit`] (no lock taken) when `tokens` alone is over
    /// the limit, with [`RejectReason::Limited`] and the time until enough capacity for
    /// `tokens` comes back, or with [`RejectReason::SubjectTableFull`] as for request tokens.
    /// Settle the reservation with [`Limiter::settle`] when the real count is known.
    pub fn reserve(
        &self,
        key: SubjectKey,
        tokens: u64,
        now_ms: u64,
    ) -> Result<Reservation, Rejected> {
        let g = &self.geometry;
        if tokens > g.limit {
            return Err(Rejected {
                dimension: self.dimension,
                reason: RejectReason::ExceedsLimit { tokens },
                limit: g.limit,
                retry_after_secs: 0,
                reset_secs: 0,
                window_secs: g.window_secs(),
            });
        }
        let mut guard = self.shard(key).lock();
        let shard = &mut *guard;
        shard.shared_ops += 1;
        if tokens == 0 && !shard.subjects.contains_key(&key) {
            // Nothing to count, and no entry to make for it.
            return Ok(Reservation {
                slot: g.slot_of(now_ms),
                tokens: 0,
                used: 0,
                remaining: g.limit,
                reset_secs: 0,
            });
        }
        if let Err(retry_at_ms) = self.make_room(shard, key, now_ms) {
            return Err(self.rejected(RejectReason::SubjectTableFull, retry_at_ms, now_ms));
        }
        let w = Self::window(shard, key, g, now_ms);
        let used = w.used(g);
        // No overflow: `used` is at most `RING_MAX` `u32` counters, `tokens ≤ limit ≤ u32::MAX`.
        if used + tokens > g.limit {
            let retry_at_ms = w.fits_at_ms(tokens, g, now_ms);
            return Err(self.rejected(RejectReason::Limited, retry_at_ms, now_ms));
        }
        w.charge(tokens, g);
        let used = used + tokens;
        Ok(Reservation {
            slot: w.newest,
            tokens,
            used,
            remaining: g.limit - used,
            reset_secs: Geometry::secs_until(w.reset_at_ms(g, now_ms), now_ms),
        })
    }

    /// Settles `reservation` (made by [`Limiter::reserve`] for `key` on this limiter) to the
    /// request's real count `actual`, in one locked operation (none when `actual` equals the
    /// estimate). Less than the estimate: the difference goes back to the reservation's slot
    /// if that slot is still counted (else the window has already forgotten it). More: the
    /// extra is charged to the current slot unconditionally — even over the limit, even for
    /// a subject the full table would refuse — because it was consumed. A subject left with
    /// nothing counted is dropped. Settle each reservation once.
    pub fn settle(&self, key: SubjectKey, reservation: &Reservation, actual: u64, now_ms: u64) {
        let g = &self.geometry;
        if actual == reservation.tokens {
            return;
        }
        let mut guard = self.shard(key).lock();
        let shard = &mut *guard;
        shard.shared_ops += 1;
        if actual < reservation.tokens {
            if let Some(w) = shard.subjects.get_mut(&key) {
                w.advance(g.slot_of(now_ms), g);
                w.give_back(reservation.slot, reservation.tokens - actual, g);
                if w.used(g) == 0 {
                    shard.subjects.remove(&key);
                    shard.full_until_ms = 0;
                }
            }
        } else {
            // Over the cap or not, the subject is counted: at most one subject past the cap
            // per request in flight, while refusing it would forget consumed tokens.
            let _over_cap = self.make_room(shard, key, now_ms).is_err();
            Self::window(shard, key, g, now_ms).charge(actual - reservation.tokens, g);
        }
    }

    /// What is left of `key`'s budget at `now_ms` and the seconds until its oldest counted
    /// slot leaves the window: `(remaining, reset_secs)`, for response headers. Takes the
    /// shard lock (changes nothing).
    pub fn remaining(&self, key: SubjectKey, now_ms: u64) -> (u64, u64) {
        let g = &self.geometry;
        let shard = self.shard(key).lock();
        shard.subjects.get(&key).map_or((g.limit, 0), |w| {
            let mut w = *w;
            w.advance(g.slot_of(now_ms), g);
            (
                g.limit.saturating_sub(w.used(g)),
                Geometry::secs_until(w.reset_at_ms(g, now_ms), now_ms),
            )
        })
    }

    fn rejected(&self, reason: RejectReason, retry_at_ms: u64, now_ms: u64) -> Rejected {
        let secs = Geometry::secs_until(retry_at_ms, now_ms).max(1);
        Rejected {
            dimension: self.dimension,
            reason,
            limit: self.geometry.limit,
            retry_after_secs: secs,
            reset_secs: secs,
            window_secs: self.geometry.window_secs(),
        }
    }
}

// --- the registry ------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct LimiterId {
    instance: u64,
    dimension: Dimension,
    limit: u64,
    window_ms: u64,
}

#[derive(Debug)]
struct RegistryTable {
    limiters: HashMap<LimiterId, Weak<Limiter>>,
    /// Drop dead entries once the map reaches this size (doubling: amortised O(1)).
    prune_at_len: usize,
}

/// The limiters of one gateway process, shared by the admin thread and every worker.
///
/// Asked for `(instance, dimension, limit, window)` it returns the limiter it returned
/// before while that one is still referenced — counters survive snapshots that do not change
/// the settings — and a fresh one otherwise. It holds limiters weakly: a limiter is freed
/// when the last snapshot and worker bucket referencing it are gone.
#[derive(Debug)]
pub struct Registry {
    tuning: Tuning,
    hasher: RandomState,
    next_serial: AtomicU64,
    table: Mutex<RegistryTable>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new(Tuning::default())
    }
}

impl Registry {
    /// An empty registry; `tuning` is normalised (every knob in its working range).
    pub fn new(tuning: Tuning) -> Registry {
        Registry {
            tuning: tuning.normalised(),
            hasher: RandomState::new(),
            next_serial: AtomicU64::new(1),
            table: Mutex::new(RegistryTable {
                limiters: HashMap::new(),
                prune_at_len: 64,
            }),
        }
    }

    /// The tuning every limiter and worker table of this registry uses.
    pub fn tuning(&self) -> Tuning {
        self.tuning
    }

    /// The limiter for `dimension` of plugin instance `instance` (a stable id the caller
    /// derives, e.g. a hash of the plugin's position and settings) with `limit`.
    pub fn limiter(&self, instance: u64, dimension: Dimension, limit: &Limit) -> Arc<Limiter> {
        let window_ms = u64::try_from(limit.window.as_duration().as_millis()).unwrap_or(u64::MAX);
        let id = LimiterId {
            instance,
            dimension,
            limit: limit.limit,
            window_ms,
        };
        let mut table = self.table.lock();
        if let Some(live) = table.limiters.get(&id).and_then(Weak::upgrade) {
            return live;
        }
        if table.limiters.len() >= table.prune_at_len {
            table.limiters.retain(|_, l| l.strong_count() > 0);
            table.prune_at_len = (2 * table.limiters.len()).max(64);
        }
        let limiter = Arc::new(Limiter::new(
            self.next_serial.fetch_add(1, Ordering::Relaxed),
            dimension,
            Geometry::new(limit.limit, window_ms),
            self.tuning,
            self.hasher.clone(),
        ));
        table.limiters.insert(id, Arc::downgrade(&limiter));
        limiter
    }

    /// The limiters of every dimension `limits` configures.
    pub fn limiter_set(&self, instance: u64, limits: &Limits) -> LimiterSet {
        let get = |dim, l: &Option<Limit>| l.as_ref().map(|l| self.limiter(instance, dim, l));
        LimiterSet {
            global: get(Dimension::Global, &limits.global),
            per_ip: get(Dimension::PerIp, &limits.per_ip),
            per_user: get(Dimension::PerUser, &limits.per_user),
        }
    }

    /// Limiters still referenced somewhere (drops the registry's dead entries).
    pub fn live_limiters(&self) -> usize {
        let mut table = self.table.lock();
        table.limiters.retain(|_, l| l.strong_count() > 0);
        table.limiters.len()
    }

    /// A worker's empty bucket table, with this registry's tuning.
    pub fn worker(&self) -> WorkerBuckets {
        WorkerBuckets::new(self.tuning)
    }
}

/// The limiters of one `rate_limiter` plugin instance, one per configured dimension.
/// Compiled into the snapshot; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct LimiterSet {
    /// The `global` limiter, if configured.
    pub global: Option<Arc<Limiter>>,
    /// The `per_ip` limiter, if configured.
    pub per_ip: Option<Arc<Limiter>>,
    /// The `per_user` limiter, if configured.
    pub per_user: Option<Arc<Limiter>>,
}

impl LimiterSet {
    /// The limiter of `dimension`, if configured.
    pub fn get(&self, dimension: Dimension) -> Option<&Arc<Limiter>> {
        match dimension {
            Dimension::Global => self.global.as_ref(),
            Dimension::PerIp => self.per_ip.as_ref(),
            Dimension::PerUser => self.per_user.as_ref(),
        }
    }

    /// Reserves `tokens` ([`Limiter::reserve`]) in every configured dimension that has a
    /// subject in `subjects` (no user identity: per_user is skipped), or in none. Order:
    /// per_user, per_ip, global — most specific first, so a client over its own limit never
    /// touches the global counters; on the first rejection the reservations already made are
    /// settled with 0 (a full refund) and that rejection is returned.
    pub fn reserve_all(
        &self,
        subjects: Subjects<'_>,
        tokens: u64,
        now_ms: u64,
    ) -> Result<Reservations, Rejected> {
        let mut held: [Option<Held>; 3] = [None, None, None];
        for dimension in [Dimension::PerUser, Dimension::PerIp, Dimension::Global] {
            let Some(limiter) = self.get(dimension) else {
                continue;
            };
            let Some(subject) = subjects.subject(dimension) else {
                continue;
            };
            let key = limiter.key(subject);
            match limiter.reserve(key, tokens, now_ms) {
                Ok(reservation) => {
                    held[dimension.index()] = Some(Held {
                        limiter: Arc::clone(limiter),
                        key,
                        reservation,
                    });
                }
                Err(rejected) => {
                    for h in held.iter_mut().filter_map(Option::take) {
                        h.settle(0, now_ms);
                    }
                    return Err(rejected);
                }
            }
        }
        Ok(Reservations { held })
    }
}

/// One dimension's part of a [`Reservations`].
#[derive(Debug)]
struct Held {
    limiter: Arc<Limiter>,
    key: SubjectKey,
    reservation: Reservation,
}

impl Held {
    fn settle(&self, actual: u64, now_ms: u64) {
        self.limiter
            .settle(self.key, &self.reservation, actual, now_ms);
    }

    fn quota(&self) -> Quota {
        let g = &self.limiter.geometry;
        Quota {
            dimension: self.limiter.dimension,
            limit: g.limit,
            remaining: self.reservation.remaining,
            reset_secs: self.reservation.reset_secs,
            window_secs: g.window_secs(),
        }
    }
}

/// One request's token reservations, one per dimension that admitted it
/// ([`LimiterSet::reserve_all`]). `Send` (and `'static`): hold it across the request's
/// awaits, then [`settle`](Reservations::settle) it with the real count. Dropped unsettled,
/// every estimate stays charged in full — the safe side: as if the request had cost it.
#[derive(Debug)]
#[must_use = "settle the reservations with the real token count; dropped, the estimates stay charged"]
pub struct Reservations {
    held: [Option<Held>; 3],
}

impl Reservations {
    /// Settles every dimension's reservation to the request's real count
    /// ([`Limiter::settle`]): refunds what was over-estimated, charges what was under.
    pub fn settle(self, actual: u64, now_ms: u64) {
        for h in self.held.iter().flatten() {
            h.settle(actual, now_ms);
        }
    }

    /// The reservation made in `dimension`, if that dimension was checked.
    pub fn reservation(&self, dimension: Dimension) -> Option<Reservation> {
        self.held[dimension.index()].as_ref().map(|h| h.reservation)
    }

    /// The numbers for `dimension`'s headers, as of the reservation, if it was checked.
    pub fn get(&self, dimension: Dimension) -> Option<Quota> {
        self.held[dimension.index()].as_ref().map(Held::quota)
    }

    /// Every checked dimension's numbers, in [`Dimension::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = Quota> + '_ {
        self.held.iter().flatten().map(Held::quota)
    }

    /// The quota with the least remaining (the later reset breaking ties), for the combined
    /// `X-RateLimit-*` headers; `None` when no dimension applied.
    pub fn tightest(&self) -> Option<Quota> {
        self.iter()
            .min_by_key(|q| (q.remaining, std::cmp::Reverse(q.reset_secs)))
    }
}

// --- the worker side ---------------------------------------------------------------------

/// One worker's lease on one subject. Lives in a [`WorkerBuckets`]; never shared.
#[derive(Debug, Clone, Copy)]
struct LeasedBucket {
    /// The slot the lease is charged to.
    slot: u64,
    /// The end of that slot: tokens are handed out only before it.
    valid_until_ms: u64,
    /// Leased tokens not handed out yet.
    available: u64,
    /// Size to ask for on the next lease (slow start: 1, 2, 4, … `max_lease`).
    next_lease: u64,
    last_used_ms: u64,
    /// The shared total right after the last lease, and when its oldest slot expires.
    used: u64,
    reset_at_ms: u64,
}

impl LeasedBucket {
    fn quota(&self, limiter: &Limiter, now_ms: u64) -> Quota {
        let g = &limiter.geometry;
        Quota {
            dimension: limiter.dimension,
            limit: g.limit,
            remaining: g.limit.saturating_sub(self.used) + self.available,
            reset_secs: Geometry::secs_until(self.reset_at_ms, now_ms),
            window_secs: g.window_secs(),
        }
    }
}

#[derive(Debug)]
struct LocalTable {
    limiter: Arc<Limiter>,
    buckets: HashMap<SubjectKey, LeasedBucket, KeyBuild>,
    last_used_ms: u64,
    sweep_cursor: usize,
}

/// What one `flush_idle` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Tokens given back to the shared counters.
    pub returned_tokens: u64,
    /// Idle buckets dropped.
    pub dropped_buckets: usize,
    /// Expired subjects removed from the shared tables.
    pub swept_subjects: usize,
}

/// A worker's leased buckets, for every limiter it has used. One per worker; `Send`, not
/// `Sync` (it is the worker's private state and takes `&mut self` on every call).
#[derive(Debug)]
pub struct WorkerBuckets {
    tuning: Tuning,
    tables: HashMap<u64, LocalTable, KeyBuild>,
    _not_sync: PhantomData<Cell<()>>,
}

impl WorkerBuckets {
    /// An empty table. Use [`Registry::worker`] so the tuning matches the limiters'.
    pub fn new(tuning: Tuning) -> WorkerBuckets {
        WorkerBuckets {
            tuning: tuning.normalised(),
            tables: HashMap::default(),
            _not_sync: PhantomData,
        }
    }

    /// Takes one token for `key` from `limiter`: locally when this worker's lease has one,
    /// otherwise by a shared lease.
    pub fn try_acquire(
        &mut self,
        limiter: &Arc<Limiter>,
        key: SubjectKey,
        now_ms: u64,
    ) -> Result<Token, Rejected> {
        let serial = limiter.serial;
        let table = self.tables.entry(serial).or_insert_with(|| LocalTable {
            limiter: Arc::clone(limiter),
            buckets: HashMap::default(),
            last_used_ms: now_ms,
            sweep_cursor: 0,
        });
        table.last_used_ms = now_ms;
        let g = &limiter.geometry;

        if let Some(b) = table.buckets.get_mut(&key)
            && b.available > 0
            && now_ms < b.valid_until_ms
        {
            // The common case: no shared memory touched.
            b.available -= 1;
            b.last_used_ms = now_ms;
            return Ok(Token {
                serial,
                key,
                slot: b.slot,
                direct: false,
                quota: b.quota(limiter, now_ms),
            });
        }
        if table.buckets.len() >= self.tuning.max_local_subjects
            && !table.buckets.contains_key(&key)
        {
            // The worker's table is full: one token, nothing kept locally.
            return match limiter.exchange(key, None, 1, now_ms) {
                Grant::Leased {
                    slot,
                    used,
                    reset_at_ms,
                    ..
                } => Ok(Token {
                    serial,
                    key,
                    slot,
                    direct: true,
                    quota: Quota {
                        dimension: limiter.dimension,
                        limit: g.limit,
                        remaining: g.limit.saturating_sub(used),
                        reset_secs: Geometry::secs_until(reset_at_ms, now_ms),
                        window_secs: g.window_secs(),
                    },
                }),
                Grant::Denied {
                    reason,
                    retry_at_ms,
                } => Err(limiter.rejected(reason, retry_at_ms, now_ms)),
            };
        }
        let bucket = table.buckets.entry(key).or_insert(LeasedBucket {
            slot: 0,
            valid_until_ms: 0,
            available: 0,
            next_lease: 1,
            last_used_ms: now_ms,
            used: 0,
            reset_at_ms: now_ms,
        });

        // Refill: give back what is left of a past slot's lease and lease anew, in one lock.
        let give_back = (bucket.available > 0).then_some((bucket.slot, bucket.available));
        bucket.available = 0;
        bucket.last_used_ms = now_ms;
        match limiter.exchange(key, give_back, bucket.next_lease, now_ms) {
            Grant::Leased {
                slot,
                tokens,
                used,
                reset_at_ms,
            } => {
                bucket.slot = slot;
                bucket.valid_until_ms = g.end_ms(slot);
                bucket.available = tokens - 1;
                bucket.next_lease = bucket
                    .next_lease
                    .saturating_mul(2)
                    .min(self.tuning.max_lease);
                bucket.used = used;
                bucket.reset_at_ms = reset_at_ms;
                Ok(Token {
                    serial,
                    key,
                    slot,
                    direct: false,
                    quota: bucket.quota(limiter, now_ms),
                })
            }
            Grant::Denied {
                reason,
                retry_at_ms,
            } => Err(limiter.rejected(reason, retry_at_ms, now_ms)),
        }
    }

    /// Puts a token back, as if it had never been taken. Local unless the token was taken
    /// without a bucket (worker table full). A token whose lease has since been given back
    /// is dropped: that can only under-admit.
    pub fn cancel(&mut self, token: Token) {
        let Some(table) = self.tables.get_mut(&token.serial) else {
            return;
        };
        if token.direct {
            let limiter = &table.limiter;
            let slot_start = token.slot.saturating_mul(limiter.geometry.slot_ms);
            limiter.give_back(token.key, token.slot, 1, slot_start);
        } else if let Some(b) = table.buckets.get_mut(&token.key)
            && b.slot == token.slot
        {
            b.available += 1;
        }
    }

    /// Takes a token in every dimension of `set` that has a subject in `subjects`, or in
    /// none: on the first rejection the tokens already taken go back to their buckets.
    /// Order: per_user, per_ip, global.
    pub fn try_acquire_all(
        &mut self,
        set: &LimiterSet,
        subjects: Subjects<'_>,
        now_ms: u64,
    ) -> Result<Admitted, Rejected> {
        let mut taken: [Option<Token>; 3] = [None, None, None];
        for dimension in [Dimension::PerUser, Dimension::PerIp, Dimension::Global] {
            let Some(limiter) = set.get(dimension) else {
                continue;
            };
            let Some(subject) = subjects.subject(dimension) else {
                continue;
            };
            match self.try_acquire(limiter, limiter.key(subject), now_ms) {
                Ok(token) => taken[dimension.index()] = Some(token),
                Err(rejected) => {
                    for token in taken.iter_mut().filter_map(Option::take) {
                        self.cancel(token);
                    }
                    return Err(rejected);
                }
            }
        }
        Ok(Admitted {
            quotas: taken.map(|t| t.map(|t| t.quota)),
        })
    }

    /// The worker's timer (every 10–50 ms): gives back leases idle for `idle_ms` or charged
    /// to a past slot, drops idle buckets, drops tables that are empty and whose limiter is
    /// gone from the configuration or unused for a minute, and sweeps one shard of every
    /// limiter in use.
    pub fn flush_idle(&mut self, now_ms: u64) -> Flushed {
        let idle_ms = self.tuning.idle_ms;
        let mut report = Flushed::default();
        self.tables.retain(|_, table| {
            let limiter = &table.limiter;
            let g = &limiter.geometry;
            let before = table.buckets.len();
            table.buckets.retain(|&key, b| {
                let idle = now_ms.saturating_sub(b.last_used_ms) >= idle_ms;
                let past_slot = now_ms >= b.valid_until_ms;
                if (idle || past_slot) && b.available > 0 {
                    // A slot already out of the window needs no give-back (and gets none).
                    if now_ms < g.expiry_ms(b.slot) {
                        limiter.give_back(key, b.slot, b.available, now_ms);
                        report.returned_tokens += b.available;
                    }
                    b.available = 0;
                }
                !idle
            });
            report.dropped_buckets += before - table.buckets.len();
            let len = table.buckets.len();
            if table.buckets.capacity() > 4 * len.max(64) {
                table.buckets.shrink_to(2 * len);
            }
            report.swept_subjects += limiter.sweep_shard(table.sweep_cursor, now_ms);
            table.sweep_cursor = table.sweep_cursor.wrapping_add(1);
            // An empty table is kept (with its capacity) while its limiter is in the
            // configuration and has been used lately, so a lull longer than `idle_ms` does not
            // make the next request allocate the table again.
            len > 0
                || (Arc::strong_count(limiter) > 1
                    && now_ms.saturating_sub(table.last_used_ms) < TABLE_KEEP_MS)
        });
        report
    }

    /// Buckets held for `limiter` (tests and metrics).
    pub fn local_subjects(&self, limiter: &Limiter) -> usize {
        self.tables
            .get(&limiter.serial)
            .map_or(0, |t| t.buckets.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::Span;
    use std::net::Ipv4Addr;
    use std::sync::Barrier;

    fn limit(limit: u64, window: &str) -> Limit {
        Limit {
            limit,
            window: Span::parse(window).expect("test window parses"),
        }
    }

    fn global(registry: &Registry, l: u64, window: &str) -> Arc<Limiter> {
        registry.limiter(1, Dimension::Global, &limit(l, window))
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    /// Takes one token that must be granted; returns its quota.
    fn admit(w: &mut WorkerBuckets, l: &Arc<Limiter>, key: SubjectKey, now: u64) -> Quota {
        w.try_acquire(l, key, now)
            .expect("the request is admitted")
            .quota()
    }

    /// Takes tokens until the first rejection; returns how many were admitted.
    fn admit_until_rejected(
        w: &mut WorkerBuckets,
        l: &Arc<Limiter>,
        key: SubjectKey,
        now: u64,
    ) -> u64 {
        let mut n = 0;
        while w.try_acquire(l, key, now).is_ok() {
            n += 1;
            assert!(n <= l.limit(), "admitted past the limit");
        }
        n
    }

    #[test]
    fn four_threads_hammering_one_subject_admit_exactly_the_limit() {
        let registry = Registry::default();
        let limiter = global(&registry, 100, "1m");
        let barrier = Barrier::new(4);
        let admitted: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let mut worker = registry.worker();
                        barrier.wait();
                        (0..2_000)
                            .filter(|_| {
                                worker
                                    .try_acquire(&limiter, SubjectKey::GLOBAL, 5_000)
                                    .is_ok()
                            })
                            .count() as u64
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("worker thread"))
                .sum()
        });
        assert_eq!(admitted, 100);
        assert_eq!(limiter.used(SubjectKey::GLOBAL, 5_000), 100);
    }

    #[test]
    fn requests_spread_round_robin_over_four_workers_get_990_of_1000_before_the_first_reject() {
        let registry = Registry::default();
        let limiter = global(&registry, 1_000, "1m");
        let mut workers: Vec<_> = (0..4).map(|_| registry.worker()).collect();
        let mut admitted = 0u64;
        // 4 requests per ms, one per worker; each worker's timer fires every 10 ms.
        for i in 0u64.. {
            let now = 1_000 + i / 4;
            let w = &mut workers[(i % 4) as usize];
            if i % 40 < 4 {
                w.flush_idle(now);
            }
            if w.try_acquire(&limiter, SubjectKey::GLOBAL, now).is_err() {
                break;
            }
            admitted += 1;
        }
        assert!(
            admitted >= 990,
            "only {admitted} admitted before the first reject"
        );
        assert!(admitted <= 1_000);
    }

    #[test]
    fn requests_spread_over_four_worker_threads_get_990_of_1000_before_the_first_reject() {
        // Real threads in lock-step rounds: each worker serves one request per round, and
        // the first round with a rejection ends the test for everyone.
        let registry = Registry::default();
        let limiter = global(&registry, 1_000, "1m");
        let round = Barrier::new(4);
        let admitted = AtomicU64::new(0);
        let rejected = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let mut worker = registry.worker();
                    for r in 0..1_000u64 {
                        let now = 1_000 + r;
                        if r % 10 == 0 {
                            worker.flush_idle(now);
                        }
                        match worker.try_acquire(&limiter, SubjectKey::GLOBAL, now) {
                            Ok(_) => admitted.fetch_add(1, Ordering::Relaxed),
                            Err(_) => rejected.fetch_add(1, Ordering::Relaxed),
                        };
                        round.wait();
                        let stop = rejected.load(Ordering::Relaxed) > 0;
                        round.wait();
                        if stop {
                            break;
                        }
                    }
                });
            }
        });
        let admitted = admitted.into_inner();
        assert!(
            admitted >= 990,
            "only {admitted} admitted before the first reject"
        );
        assert!(admitted <= 1_000);
    }

    #[test]
    fn windows_in_seconds_minutes_hours_and_days_admit_the_limit_and_refill_after_the_window() {
        for window in ["2s", "1m", "1h", "1d"] {
            let registry = Registry::default();
            let l = global(&registry, 3, window);
            let w_ms = Span::parse(window)
                .expect("parses")
                .as_duration()
                .as_millis() as u64;
            assert_eq!(l.window_ms(), w_ms);
            assert_eq!(l.slot_ms(), w_ms / 16, "{window} is cut into 16 slots");
            let mut worker = registry.worker();
            let t0 = 7 * w_ms;
            assert_eq!(
                admit_until_rejected(&mut worker, &l, SubjectKey::GLOBAL, t0),
                3
            );
            let back = t0 + w_ms + l.slot_ms();
            assert!(
                worker
                    .try_acquire(&l, SubjectKey::GLOBAL, back - 1)
                    .is_err(),
                "{window}: still counted within one slot after the window"
            );
            assert_eq!(
                admit_until_rejected(&mut worker, &l, SubjectKey::GLOBAL, back),
                3,
                "{window}: the budget comes back after the window"
            );
        }
    }

    #[test]
    fn a_two_second_window_gives_the_budget_back_and_says_when() {
        let registry = Registry::default();
        let l = global(&registry, 5, "2s"); // 16 slots of 125 ms
        let mut worker = registry.worker();
        assert_eq!(
            admit_until_rejected(&mut worker, &l, SubjectKey::GLOBAL, 0),
            5
        );
        let r = worker
            .try_acquire(&l, SubjectKey::GLOBAL, 1_000)
            .expect_err("over the limit");
        assert_eq!(r.reason, RejectReason::Limited);
        assert_eq!(r.limit, 5);
        // Slot 0 leaves the 17-slot ring at 17 × 125 ms = 2 125 ms.
        assert_eq!(r.retry_after_secs, 2, "⌈(2125 - 1000) / 1000⌉");
        assert_eq!(r.reset_secs, 2);
        assert_eq!(r.window_secs, 2);
        assert_eq!(r.to_string(), "global rate limit exceeded");
        assert!(worker.try_acquire(&l, SubjectKey::GLOBAL, 2_124).is_err());
        assert_eq!(
            admit_until_rejected(&mut worker, &l, SubjectKey::GLOBAL, 2_125),
            5
        );
    }

    #[test]
    fn capacity_returns_slot_by_slot_as_old_slots_leave_the_window() {
        let registry = Registry::default();
        let l = global(&registry, 5, "1600ms"); // 16 slots of 100 ms, ring of 17
        let mut worker = registry.worker();
        let key = SubjectKey::GLOBAL;
        for _ in 0..3 {
            admit(&mut worker, &l, key, 50);
        }
        for _ in 0..2 {
            admit(&mut worker, &l, key, 550);
        }
        assert!(
            worker.try_acquire(&l, key, 1_650).is_err(),
            "slot 16: 0 still counted"
        );
        // Slot 17: slot 0's three come back, slot 5's two are still counted.
        assert_eq!(admit_until_rejected(&mut worker, &l, key, 1_700), 3);
        let r = worker.try_acquire(&l, key, 1_700).expect_err("full again");
        assert_eq!(r.retry_after_secs, 1, "slot 5 leaves at 2 200 ms");
        // Slot 22: slot 5 leaves too.
        assert!(worker.try_acquire(&l, key, 2_199).is_err());
        assert_eq!(admit_until_rejected(&mut worker, &l, key, 2_200), 2);
    }

    #[test]
    fn no_window_of_the_configured_length_ever_holds_more_than_the_limit() {
        // Four workers reading one clock up to 1 ms late, random gaps, timers and idle
        // periods; every admission's reading is logged and every window checked.
        let registry = Registry::default();
        let l = global(&registry, 20, "1s");
        let window = l.window_ms();
        let mut workers: Vec<_> = (0..4).map(|_| registry.worker()).collect();
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut clock = 0u64;
        let mut log = Vec::new();
        for _ in 0..50_000 {
            clock += next() % 3;
            let w = (next() % 4) as usize;
            let now = clock.saturating_sub(next() % 2); // a worker may read the clock late
            if next() % 16 == 0 {
                workers[w].flush_idle(now);
            }
            if workers[w].try_acquire(&l, SubjectKey::GLOBAL, now).is_ok() {
                log.push(now);
            }
        }
        log.sort_unstable();
        let mut start = 0;
        for end in 0..log.len() {
            while log[end] - log[start] >= window {
                start += 1;
            }
            assert!(
                end - start < 20,
                "{} admitted within {window} ms",
                end - start + 1
            );
        }
        // ~50 s at 20 per ~1.07 s: the limiter keeps admitting close to the limit.
        assert!(log.len() > 800, "only {} admitted", log.len());
    }

    #[test]
    fn a_per_ip_rejection_does_not_charge_the_global_dimension() {
        // The seed: global 15/1m, per_ip 5/1m; client A hammers past its limit.
        let registry = Registry::default();
        let set = registry.limiter_set(
            9,
            &Limits {
                global: Some(limit(15, "1m")),
                per_ip: Some(limit(5, "1m")),
                per_user: None,
            },
        );
        let mut workers: Vec<_> = (0..4).map(|_| registry.worker()).collect();
        let now = 60_000;
        let client = |n| Subjects {
            ip: Some(ip(n)),
            user: None,
        };
        let mut outcome = |i: usize, n| workers[i % 4].try_acquire_all(&set, client(n), now);
        for i in 0..5 {
            let ok = outcome(i, 2).expect("A's first five pass");
            let per_ip = ok.get(Dimension::PerIp).expect("per_ip checked");
            assert_eq!(per_ip.remaining, 4 - i as u64);
            assert!(
                ok.get(Dimension::PerUser).is_none(),
                "no user: per_user skipped"
            );
        }
        for i in 0..20 {
            let r = outcome(i, 2).expect_err("A is over its per_ip limit");
            assert_eq!(r.dimension, Dimension::PerIp);
            assert_eq!(r.to_string(), "per_ip rate limit exceeded");
        }
        let global_limiter = set.global.as_ref().expect("global configured");
        assert_eq!(global_limiter.used(SubjectKey::GLOBAL, now), 5);
        for client_ip in [3, 4] {
            for i in 0..5 {
                outcome(i, client_ip).expect("other clients still get five each");
            }
        }
        let r = outcome(0, 5).expect_err("the 16th request is refused");
        assert_eq!(r.dimension, Dimension::Global);
    }

    #[test]
    fn when_global_rejects_the_per_ip_token_goes_back_locally_without_a_shared_operation() {
        let registry = Registry::default();
        let set = registry.limiter_set(
            9,
            &Limits {
                global: Some(limit(2, "1m")),
                per_ip: Some(limit(1_000, "1m")),
                per_user: None,
            },
        );
        let per_ip = set.per_ip.clone().expect("per_ip configured");
        let subjects = Subjects {
            ip: Some(ip(1)),
            user: None,
        };
        let mut worker = registry.worker();
        worker
            .try_acquire_all(&set, subjects, 0)
            .expect("first request passes (per_ip leases 1)");
        worker
            .try_acquire_all(&set, subjects, 0)
            .expect("second passes (per_ip leases 2, one stays local)");
        let ops_before = per_ip.stats().shared_ops;
        // per_ip takes its local token, global rejects, per_ip gets the token back.
        for _ in 0..10 {
            let r = worker.try_acquire_all(&set, subjects, 0);
            assert_eq!(r.map_err(|r| r.dimension), Err(Dimension::Global));
        }
        assert_eq!(per_ip.stats().shared_ops, ops_before, "no shared write");
        let key = per_ip.key(Subject::Ip(ip(1)));
        let t = worker
            .try_acquire(&per_ip, key, 0)
            .expect("the token is still local");
        assert_eq!(per_ip.stats().shared_ops, ops_before);
        assert_eq!(
            t.quota().remaining,
            1_000 - 3,
            "3 leased, none left locally"
        );
        worker.cancel(t);
    }

    #[test]
    fn a_subject_far_below_its_limit_touches_shared_state_on_under_one_percent_of_requests() {
        let registry = Registry::default();
        let l = registry.limiter(3, Dimension::PerIp, &limit(10_000_000, "1m"));
        let key = l.key(Subject::Ip(ip(7)));
        let mut worker = registry.worker();
        let requests = 100_000u64;
        // 10 requests per ms for 10 s (crossing two slot boundaries), timer every 10 ms.
        for i in 0..requests {
            let now = 1_000_000 + i / 10;
            if i % 100 == 0 {
                worker.flush_idle(now);
            }
            admit(&mut worker, &l, key, now);
        }
        let ops = l.stats().shared_ops;
        assert!(
            ops * 100 < requests,
            "{ops} shared operations for {requests} requests"
        );
    }

    #[test]
    fn idle_leases_flow_back_so_another_worker_can_use_the_whole_budget() {
        let registry = Registry::default();
        let l = global(&registry, 1_000, "1h");
        let (mut a, mut b) = (registry.worker(), registry.worker());
        for _ in 0..100 {
            admit(&mut a, &l, SubjectKey::GLOBAL, 0);
        }
        assert!(l.used(SubjectKey::GLOBAL, 0) > 100, "a holds a lease");
        let flushed = a.flush_idle(10);
        assert!(flushed.returned_tokens > 0);
        assert_eq!(l.used(SubjectKey::GLOBAL, 10), 100);
        assert_eq!(
            admit_until_rejected(&mut b, &l, SubjectKey::GLOBAL, 11),
            900
        );
    }

    #[test]
    fn tokens_given_back_to_a_slot_that_left_the_window_inflate_nothing() {
        let registry = Registry::default();
        let l = global(&registry, 100, "1600ms"); // 16 slots of 100 ms, ring of 17
        let (mut a, mut b) = (registry.worker(), registry.worker());
        for _ in 0..4 {
            admit(&mut a, &l, SubjectKey::GLOBAL, 0); // leases of 1, 2 and 4
        }
        assert_eq!(l.used(SubjectKey::GLOBAL, 0), 7, "4 used, 3 leased");
        assert_eq!(
            admit_until_rejected(&mut b, &l, SubjectKey::GLOBAL, 1_650),
            93
        );
        // Slot 17 reuses slot 0's counter; b fills it with the 7 that came back.
        assert_eq!(
            admit_until_rejected(&mut b, &l, SubjectKey::GLOBAL, 1_700),
            7
        );
        // a, its clock a millisecond behind, gives its 3 back to slot 0: already gone.
        assert_eq!(a.flush_idle(1_699).returned_tokens, 3);
        assert_eq!(l.used(SubjectKey::GLOBAL, 1_700), 100);
        assert!(b.try_acquire(&l, SubjectKey::GLOBAL, 1_700).is_err());
    }

    #[test]
    fn a_lease_is_not_handed_out_after_its_slot_ends() {
        let registry = Registry::default();
        let l = global(&registry, 100, "1600ms"); // 16 slots of 100 ms, ring of 17
        let (mut a, mut b) = (registry.worker(), registry.worker());
        for _ in 0..8 {
            admit(&mut a, &l, SubjectKey::GLOBAL, 0); // leases 1 + 2 + 4 + 8: 7 left over
        }
        // In slot 1 a's 7 leftovers go back to slot 0, and a leases 11 charged to slot 1.
        for _ in 0..7 {
            admit(&mut a, &l, SubjectKey::GLOBAL, 150);
        }
        let in_slot_1 = 7 + admit_until_rejected(&mut b, &l, SubjectKey::GLOBAL, 150);
        // Slot 0 leaves: only the 8 admitted in it come back. Had a handed out 7 stale
        // tokens of slot 0 in slot 1, 15 would come back and overfill [150, 1750).
        let in_slot_17 = admit_until_rejected(&mut b, &l, SubjectKey::GLOBAL, 1_700);
        assert!(in_slot_1 + in_slot_17 <= 100, "{in_slot_1} + {in_slot_17}");
        assert_eq!(in_slot_17, 8);
    }

    #[test]
    fn a_lagging_worker_clock_is_charged_to_the_newest_slot() {
        let registry = Registry::default();
        let l = global(&registry, 2, "1600ms");
        let (mut a, mut b) = (registry.worker(), registry.worker());
        admit(&mut a, &l, SubjectKey::GLOBAL, 1_000); // slot 10
        admit(&mut b, &l, SubjectKey::GLOBAL, 950); // reads slot 9, charged to 10
        // Had b been charged to slot 9, one token would come back at slot 26.
        assert!(a.try_acquire(&l, SubjectKey::GLOBAL, 2_650).is_err());
        assert_eq!(
            admit_until_rejected(&mut a, &l, SubjectKey::GLOBAL, 2_700),
            2
        );
    }

    #[test]
    fn idle_subjects_expire_and_memory_stays_bounded_under_a_million_distinct_subjects() {
        let registry = Registry::default();
        let l = registry.limiter(4, Dimension::PerIp, &limit(10, "1s"));
        let mut worker = registry.worker();
        let (mut max_shared, mut max_local) = (0, 0);
        // A million distinct clients, 10 new ones per ms for 100 s, one request each.
        for i in 0..1_000_000u32 {
            let now = 10_000 + u64::from(i) / 10;
            admit(&mut worker, &l, l.key(Subject::Ip(ip(i))), now);
            if i % 100 == 0 {
                worker.flush_idle(now);
                max_local = max_local.max(worker.local_subjects(&l));
            }
            if i % 20_000 == 0 {
                max_shared = max_shared.max(l.stats().subjects);
            }
        }
        // One window plus one slot of clients (~10.6k) is live at a time; sweeps lag a bit.
        assert!(
            max_shared <= 30_000,
            "shared subjects peaked at {max_shared}"
        );
        assert!(max_local <= 200, "local buckets peaked at {max_local}");
        worker.flush_idle(200_000);
        l.sweep(200_000);
        let stats = l.stats();
        assert_eq!(stats.subjects, 0);
        assert!(stats.capacity <= 64 * 256, "maps shrink: {stats:?}");
        assert_eq!(worker.local_subjects(&l), 0);
    }

    #[test]
    fn a_full_subject_table_refuses_new_subjects_rather_than_forgetting_live_ones() {
        let registry = Registry::new(Tuning {
            max_subjects: 1_024,
            shards: 4,
            max_local_subjects: 16,
            ..Tuning::default()
        });
        let l = registry.limiter(4, Dimension::PerIp, &limit(1, "1m"));
        let mut worker = registry.worker();
        let mut admitted = Vec::new();
        for i in 0..100_000 {
            match worker.try_acquire(&l, l.key(Subject::Ip(ip(i))), 1_000) {
                Ok(_) => admitted.push(i),
                Err(r) => {
                    assert_eq!(r.reason, RejectReason::SubjectTableFull);
                    assert!(r.retry_after_secs >= 60);
                }
            }
        }
        assert_eq!(admitted.len(), l.stats().subjects);
        assert!(admitted.len() <= 1_024 && admitted.len() > 900);
        assert!(worker.local_subjects(&l) <= 16);
        // Every admitted client is still counted: its second request is refused.
        for &i in &admitted {
            let r = worker
                .try_acquire(&l, l.key(Subject::Ip(ip(i))), 2_000)
                .expect_err("limit 1");
            assert_eq!(r.reason, RejectReason::Limited, "client {i}");
        }
        // Once the window has passed, newcomers get in again.
        let later = 1_000 + 60_000 + l.slot_ms();
        admit(&mut worker, &l, l.key(Subject::Ip(ip(500_000))), later);
    }

    #[test]
    fn unchanged_settings_keep_counters_and_changed_settings_start_fresh() {
        let registry = Registry::default();
        let mut worker = registry.worker();
        let v1 = registry.limiter_set(
            42,
            &Limits {
                global: Some(limit(10, "1m")),
                per_ip: None,
                per_user: None,
            },
        );
        let g1 = v1.global.clone().expect("configured");
        for _ in 0..4 {
            admit(&mut worker, &g1, SubjectKey::GLOBAL, 0);
        }
        // A new snapshot with the same settings: the same limiter, the same counters.
        let v2 = registry.limiter(42, Dimension::Global, &limit(10, "1m"));
        assert!(Arc::ptr_eq(&g1, &v2));
        assert_eq!(
            admit_until_rejected(&mut worker, &v2, SubjectKey::GLOBAL, 1),
            6
        );
        // Changed settings: fresh counters.
        let v3 = registry.limiter(42, Dimension::Global, &limit(12, "1m"));
        assert!(!Arc::ptr_eq(&g1, &v3));
        assert_eq!(
            admit_until_rejected(&mut worker, &v3, SubjectKey::GLOBAL, 2),
            12
        );
        // Old snapshots dropped: the old limiter goes once the worker lets go of it.
        drop((v1, g1, v2));
        worker.flush_idle(1_000);
        drop(v3);
        worker.flush_idle(2_000);
        assert_eq!(registry.live_limiters(), 0);
    }

    #[test]
    fn remaining_and_reset_describe_the_subject_budget() {
        let registry = Registry::default();
        let l = global(&registry, 100, "1m"); // slots of 3.75 s
        let mut worker = registry.worker();
        let quotas: Vec<_> = (0..10)
            .map(|_| admit(&mut worker, &l, SubjectKey::GLOBAL, 0))
            .collect();
        let q = quotas[9];
        assert_eq!(q.limit, 100);
        assert_eq!(q.remaining, 90);
        assert_eq!(q.reset_secs, 64, "slot 0 leaves at 17 × 3.75 s = 63.75 s");
        assert_eq!(q.window_secs, 60);
    }
    // --- token reservations ---------------------------------------------------------------

    /// Reserves `tokens` that must be admitted.
    fn reserve(l: &Limiter, key: SubjectKey, tokens: u64, now: u64) -> Reservation {
        l.reserve(key, tokens, now)
            .expect("the reservation is admitted")
    }

    #[test]
    fn concurrent_reservations_never_hold_more_than_the_limit_at_once() {
        let registry = Registry::default();
        let l = global(&registry, 1_000, "1h"); // nothing expires during the test
        let now = 10_000;
        // `charged` trails the limiter: raised after a reservation is admitted, lowered
        // before its refund, so it never exceeds what the limiter counts.
        let charged = AtomicU64::new(0);
        let barrier = Barrier::new(4);
        let admitted: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4u64)
                .map(|t| {
                    let (l, charged, barrier) = (&l, &charged, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        let mut admitted = 0;
                        for i in 0..5_000u64 {
                            let tokens = 1 + (i * 7 + t * 13) % 40;
                            let Ok(r) = l.reserve(SubjectKey::GLOBAL, tokens, now) else {
                                continue;
                            };
                            admitted += 1;
                            let before = charged.fetch_add(tokens, Ordering::SeqCst);
                            assert!(before + tokens <= 1_000, "{} held", before + tokens);
                            // Most requests cost nothing in the end; one in 50 keeps 1 token.
                            let actual = u64::from(i % 50 == 0);
                            charged.fetch_sub(tokens - actual, Ordering::SeqCst);
                            l.settle(SubjectKey::GLOBAL, &r, actual, now);
                        }
                        admitted
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("reserving thread"))
                .sum()
        });
        assert!(admitted > 400, "only {admitted} admitted");
        assert_eq!(l.used(SubjectKey::GLOBAL, now), charged.into_inner());
        assert!(l.used(SubjectKey::GLOBAL, now) <= 1_000);
    }

    #[test]
    fn concurrent_unsettled_reservations_fill_the_limit_and_no_more() {
        let registry = Registry::default();
        let l = global(&registry, 100, "1m");
        let barrier = Barrier::new(4);
        let admitted: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        (0..100)
                            .filter(|_| l.reserve(SubjectKey::GLOBAL, 7, 5_000).is_ok())
                            .count() as u64
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("reserving thread"))
                .sum()
        });
        assert_eq!(admitted, 14, "14 × 7 = 98 fit, a 15th would make 105");
        assert_eq!(l.used(SubjectKey::GLOBAL, 5_000), 98);
        reserve(&l, SubjectKey::GLOBAL, 2, 5_000);
        assert_eq!(l.remaining(SubjectKey::GLOBAL, 5_000).0, 0);
    }

    #[test]
    fn a_refund_on_settle_makes_room_at_once() {
        let registry = Registry::default();
        let l = global(&registry, 1_000, "1m");
        let key = SubjectKey::GLOBAL;
        let r = reserve(&l, key, 800, 0);
        assert_eq!((r.tokens, r.used, r.remaining), (800, 800, 200));
        assert_eq!(r.reset_secs, 64, "slot 0 leaves at 17 × 3.75 s = 63.75 s");
        let refused = l.reserve(key, 300, 1_000).expect_err("800 + 300 > 1000");
        assert_eq!(refused.reason, RejectReason::Limited);
        l.settle(key, &r, 100, 2_000);
        assert_eq!(l.used(key, 2_000), 100);
        assert_eq!(l.remaining(key, 2_000), (900, 62));
        let r2 = reserve(&l, key, 300, 2_000);
        assert_eq!(r2.used, 400);
        // Settling to exactly the estimate changes nothing and takes no lock.
        let ops = l.stats().shared_ops;
        l.settle(key, &r2, 300, 3_000);
        assert_eq!(l.stats().shared_ops, ops);
        assert_eq!(l.used(key, 3_000), 400);
    }

    #[test]
    fn a_full_refund_drops_the_subject() {
        let registry = Registry::default();
        let l = registry.limiter(5, Dimension::PerUser, &limit(100, "1m"));
        let key = l.key(Subject::User(b"alice"));
        let r = reserve(&l, key, 60, 0);
        assert_eq!(l.stats().subjects, 1);
        l.settle(key, &r, 0, 10);
        assert_eq!(l.stats().subjects, 0);
        assert_eq!(l.remaining(key, 10), (100, 0));
    }

    #[test]
    fn settling_over_the_estimate_counts_the_extra_in_the_current_slot() {
        let registry = Registry::default();
        let l = global(&registry, 100, "1600ms"); // 16 slots of 100 ms, ring of 17
        let key = SubjectKey::GLOBAL;
        let r = reserve(&l, key, 100, 50); // slot 0
        assert_eq!(r.slot, 0);
        l.settle(key, &r, 150, 550); // the 50 extra go to slot 5
        assert_eq!(
            l.used(key, 550),
            150,
            "counted over the limit: it was consumed"
        );
        assert_eq!(l.remaining(key, 550).0, 0);
        let refused = l.reserve(key, 1, 600).expect_err("over the limit");
        assert_eq!(refused.reason, RejectReason::Limited);
        assert_eq!(
            refused.retry_after_secs, 2,
            "slot 0 leaves at 1 700 ms: 150 − 100 = 50"
        );
        // Slot 0's 100 leave at 1 700 ms; slot 5's extra 50 stay until 2 200 ms.
        assert_eq!(l.used(key, 1_700), 50);
        reserve(&l, key, 50, 1_700);
        assert!(l.reserve(key, 1, 2_199).is_err());
        assert_eq!(l.used(key, 2_200), 50);
    }

    #[test]
    fn a_reservation_whose_slot_left_the_window_refunds_nothing() {
        let registry = Registry::default();
        let l = global(&registry, 100, "1600ms"); // 16 slots of 100 ms, ring of 17
        let key = SubjectKey::GLOBAL;
        let old = reserve(&l, key, 50, 0); // slot 0
        let new = reserve(&l, key, 60, 1_700); // slot 17: slot 0's counter, reused
        assert_eq!(new.used, 60, "slot 0's 50 are forgotten");
        l.settle(key, &old, 0, 1_700);
        assert_eq!(l.used(key, 1_700), 60, "the stale refund touches nothing");
        // A settle whose subject was dropped in the meantime refunds nothing either.
        l.settle(key, &new, 0, 1_800);
        assert_eq!(l.stats().subjects, 0);
        l.settle(key, &old, 10, 1_800);
        assert_eq!((l.used(key, 1_800), l.stats().subjects), (0, 0));
    }

    #[test]
    fn a_request_over_the_whole_limit_is_refused_as_exceeds_limit() {
        let registry = Registry::default();
        let l = registry.limiter(5, Dimension::PerUser, &limit(4_000, "1m"));
        let key = l.key(Subject::User(b"bob"));
        let r = l.reserve(key, 4_001, 0).expect_err("can never fit");
        assert_eq!(r.reason, RejectReason::ExceedsLimit { tokens: 4_001 });
        assert_eq!(r.dimension, Dimension::PerUser);
        assert_eq!((r.limit, r.retry_after_secs, r.reset_secs), (4_000, 0, 0));
        assert_eq!(r.window_secs, 60);
        assert_eq!(
            r.to_string(),
            "per_user rate limit: request needs 4001 tokens, more than the limit 4000 per \
             window, so it can never be admitted (retrying does not help)"
        );
        assert_eq!(l.stats(), LimiterStats::default(), "refused without a lock");
        // Exactly the limit fits an empty window; then even one token is only Limited.
        reserve(&l, key, 4_000, 0);
        let r = l.reserve(key, 1, 0).expect_err("full");
        assert_eq!(r.reason, RejectReason::Limited);
        assert_eq!(r.to_string(), "per_user rate limit exceeded");
    }

    #[test]
    fn retry_after_waits_until_enough_capacity_for_the_request_comes_back() {
        let registry = Registry::default();
        let l = global(&registry, 100, "1600ms"); // 16 slots of 100 ms, ring of 17
        let key = SubjectKey::GLOBAL;
        reserve(&l, key, 30, 50); // slot 0, leaves at 1 700 ms
        reserve(&l, key, 30, 550); // slot 5, leaves at 2 200 ms
        reserve(&l, key, 40, 1_050); // slot 10, leaves at 2 700 ms
        // 20 fit once slot 0 leaves; 50 need slot 5 gone too; 100 need all three.
        for (tokens, retry_after_secs, fits_at) in [(20, 1, 1_700), (50, 2, 2_200), (100, 2, 2_700)]
        {
            let r = l.reserve(key, tokens, 1_100).expect_err("full");
            assert_eq!(r.reason, RejectReason::Limited);
            assert_eq!(r.retry_after_secs, retry_after_secs, "{tokens} tokens");
            assert_eq!(r.reset_secs, retry_after_secs);
            assert!(
                l.reserve(key, tokens, fits_at - 1).is_err(),
                "{tokens} tokens"
            );
        }
        let r = reserve(&l, key, 20, 1_700);
        l.settle(key, &r, 0, 1_700);
        let r = reserve(&l, key, 50, 2_200);
        l.settle(key, &r, 0, 2_200);
        reserve(&l, key, 100, 2_700);
    }

    #[test]
    fn a_zero_token_reservation_leaves_no_subject_behind() {
        let registry = Registry::default();
        let l = registry.limiter(5, Dimension::PerIp, &limit(10, "1m"));
        let key = l.key(Subject::Ip(ip(1)));
        let r = reserve(&l, key, 0, 0);
        assert_eq!((r.used, r.remaining), (0, 10));
        assert_eq!(l.stats().subjects, 0);
        l.settle(key, &r, 4, 100);
        assert_eq!(l.used(key, 100), 4);
    }

    fn token_set(registry: &Registry, global: u64, per_ip: u64, per_user: u64) -> LimiterSet {
        registry.limiter_set(
            11,
            &Limits {
                global: Some(limit(global, "1m")),
                per_ip: Some(limit(per_ip, "1m")),
                per_user: Some(limit(per_user, "1m")),
            },
        )
    }

    fn used_in(set: &LimiterSet, dimension: Dimension, subject: Subject<'_>, now: u64) -> u64 {
        let l = set.get(dimension).expect("configured");
        l.used(l.key(subject), now)
    }

    #[test]
    fn reserve_all_is_all_or_nothing_across_dimensions() {
        let registry = Registry::default();
        let set = token_set(&registry, 1_000, 100, 500);
        let alice = Subjects {
            ip: Some(ip(1)),
            user: Some(b"alice"),
        };
        let r = set.reserve_all(alice, 80, 0).expect("fits everywhere");
        let tight = r.tightest().expect("three dimensions");
        assert_eq!(tight.dimension, Dimension::PerIp);
        assert_eq!((tight.limit, tight.remaining), (100, 20));
        assert_eq!(r.iter().count(), 3);
        assert_eq!(r.get(Dimension::PerUser).map(|q| q.remaining), Some(420));
        assert_eq!(r.reservation(Dimension::Global).map(|r| r.used), Some(80));

        // per_ip refuses: per_user's reservation is refunded, global never touched.
        let ops = set.global.as_ref().expect("configured").stats().shared_ops;
        let refused = set
            .reserve_all(alice, 30, 10)
            .expect_err("per_ip 80 + 30 > 100");
        assert_eq!(refused.dimension, Dimension::PerIp);
        assert_eq!(
            used_in(&set, Dimension::PerUser, Subject::User(b"alice"), 10),
            80
        );
        assert_eq!(used_in(&set, Dimension::Global, Subject::Global, 10), 80);
        assert_eq!(
            set.global.as_ref().expect("configured").stats().shared_ops,
            ops
        );

        // Settling refunds every dimension.
        r.settle(20, 20);
        for (dimension, subject) in [
            (Dimension::PerUser, Subject::User(b"alice")),
            (Dimension::PerIp, Subject::Ip(ip(1))),
            (Dimension::Global, Subject::Global),
        ] {
            assert_eq!(used_in(&set, dimension, subject, 20), 20, "{dimension}");
        }
    }

    #[test]
    fn when_global_refuses_reserve_all_refunds_per_user_and_per_ip() {
        let registry = Registry::default();
        let set = token_set(&registry, 100, 1_000, 1_000);
        let client = |n, user: &'static [u8]| Subjects {
            ip: Some(ip(n)),
            user: Some(user),
        };
        let _held = set.reserve_all(client(1, b"a"), 80, 0).expect("fits");
        let refused = set
            .reserve_all(client(2, b"b"), 30, 0)
            .expect_err("global 80 + 30 > 100");
        assert_eq!(refused.dimension, Dimension::Global);
        assert_eq!(used_in(&set, Dimension::PerUser, Subject::User(b"b"), 0), 0);
        assert_eq!(used_in(&set, Dimension::PerIp, Subject::Ip(ip(2)), 0), 0);
        for dimension in [Dimension::PerUser, Dimension::PerIp] {
            let l = set.get(dimension).expect("configured");
            assert_eq!(l.stats().subjects, 1, "{dimension}: only client 1 is left");
        }
        assert_eq!(used_in(&set, Dimension::Global, Subject::Global, 0), 80);
        // ExceedsLimit in one dimension is all-or-nothing too.
        let refused = set
            .reserve_all(client(3, b"c"), 101, 0)
            .expect_err("over global's whole limit");
        assert_eq!(refused.reason, RejectReason::ExceedsLimit { tokens: 101 });
        assert_eq!(used_in(&set, Dimension::PerIp, Subject::Ip(ip(3)), 0), 0);
    }

    #[test]
    fn reserve_all_skips_per_user_without_a_user_and_is_send() {
        fn assert_send<T: Send + 'static>(_: &T) {}
        let registry = Registry::default();
        let set = token_set(&registry, 1_000, 100, 10);
        let anonymous = Subjects {
            ip: Some(ip(1)),
            user: None,
        };
        let r = set
            .reserve_all(anonymous, 50, 0)
            .expect("per_user (10) is skipped");
        assert_send(&r);
        assert!(r.get(Dimension::PerUser).is_none());
        assert_eq!(r.tightest().map(|q| q.dimension), Some(Dimension::PerIp));
        assert_eq!(
            set.per_user.as_ref().expect("configured").stats().subjects,
            0
        );
        r.settle(50, 10);
        assert_eq!(used_in(&set, Dimension::PerIp, Subject::Ip(ip(1)), 10), 50);
        let none = LimiterSet::default()
            .reserve_all(anonymous, 50, 0)
            .expect("no limits");
        assert!(none.tightest().is_none());
        none.settle(0, 0);
    }

    #[test]
    fn a_full_subject_table_refuses_new_reservations_but_settles_count_their_extra() {
        let registry = Registry::new(Tuning {
            max_subjects: 4,
            shards: 1,
            ..Tuning::default()
        });
        let l = registry.limiter(4, Dimension::PerIp, &limit(100, "1600ms"));
        let key = |n| l.key(Subject::Ip(ip(n)));
        let a = reserve(&l, key(0), 10, 0); // slot 0, leaves at 1 700 ms
        for n in 1..4 {
            reserve(&l, key(n), 10, 1_650);
        }
        let r = l
            .reserve(key(4), 10, 1_650)
            .expect_err("four live subjects");
        assert_eq!(r.reason, RejectReason::SubjectTableFull);
        assert_eq!(r.retry_after_secs, 1, "client 0's slot leaves at 1 700 ms");
        // Known subjects still reserve, and a full refund frees a place.
        let b = reserve(&l, key(1), 10, 1_660);
        l.settle(key(1), &b, 0, 1_660);
        let c = l.reserve(key(3), 10, 1_660).expect("known subject");
        l.settle(key(3), &c, 0, 1_660);
        assert!(
            l.reserve(key(4), 10, 1_660).is_err(),
            "still four live subjects"
        );
        // Client 0's slot leaves; client 4 takes its place.
        reserve(&l, key(4), 10, 1_700);
        assert_eq!(l.stats().subjects, 4);
        assert!(l.reserve(key(5), 10, 1_700).is_err());
        // Client 0's request ends costing 25: its 10 left with slot 0, but the 15 extra
        // were consumed and are counted, table full or not.
        l.settle(key(0), &a, 25, 1_700);
        assert_eq!(l.used(key(0), 1_700), 15);
        assert_eq!(l.stats().subjects, 5);
    }
}
