//! Target selection for an upstream: pure, I/O-free, allocation-free per pick.
//!
//! Two halves, split by who may mutate them:
//!
//! - [`Balancer`] is compiled once per config snapshot from the upstream's algorithm and its
//!   targets' weights and priority tiers. It is immutable (`Send + Sync`), so one `Arc` of it
//!   serves every worker.
//! - [`Cursor`] is the small mutable part: each worker thread owns one per upstream
//!   (round-robin positions, smooth-WRR current weights, in-flight counts, a PRNG). Nothing
//!   in it is shared across cores. When a new snapshot arrives, [`Cursor::adopt`] keeps the
//!   state if [`Balancer::fingerprint`] is unchanged and resets it otherwise.
//!
//! A pick first chooses the **priority tier**: the lowest `priority` value with at least one
//! *eligible* target (weight > 0, `usable`, not in `exclude`); then the algorithm runs over
//! that tier's eligible targets only. Weight 0 drains a target: it is in no tier and never
//! picked. No eligible target in any tier gives `None` (the caller answers 503 or tries a
//! fallback upstream).
//!
//! # Algorithms and their trade-offs
//!
//! - **round-robin**: next eligible target after the last one picked; weights are ignored
//!   (except 0). O(1) when all are healthy, no state beyond one position per tier. Each
//!   cursor starts at a seed-derived position so that N workers do not all send their first
//!   request to target 0.
//! - **weighted-round-robin**: nginx's *smooth* weighted round-robin. Every pick adds each
//!   eligible target's weight to its current weight, takes the largest and subtracts the
//!   total; weights 5,1,1 give `a a b a c a a` (interleaved, not `a a a a a b c`), and every
//!   full cycle of Σweight picks has exactly the configured proportions. O(n) per pick.
//! - **least-connections**: fewest in-flight requests *as counted by this cursor*
//!   ([`Cursor::started`] / [`Cursor::finished`]); ties go to the higher weight, then
//!   round-robin, so equal load spreads evenly. O(n) per pick.
//! - **random**: weighted random (probability ∝ weight) from a per-cursor wyrand PRNG
//!   ([`Cursor::with_seed`]: seed each worker differently). Stateless apart from the PRNG,
//!   O(log n) by binary search over precomputed cumulative weights; when the drawn target
//!   is ineligible it draws again among the eligible ones only (O(n)), which keeps the
//!   shares exactly proportional to the eligible weights.
//! - **consistent-hash**: a hash ring per tier with virtual nodes ∝ weight
//!   ([`VNODES_PER_UNIT`] per unit of weight normalised to the tier's lightest target,
//!   at most [`MAX_RING_POINTS`] in all), looked up by binary search. Adding one target to n
//!   equal ones moves about 1/(n+1) of the keys, all of them *to* the new target. An
//!   unusable or excluded target's keys walk clockwise to the next eligible target; the
//!   other keys stay put. Without a hash input it falls back to round-robin. Ring points
//!   derive from each target's identity: with [`Balancer::new`] that is its index, so
//!   removing a target from the middle of the list remaps everything after it; with
//!   [`Balancer::for_upstream`] it is `protocol://host:port`, so only that target's keys
//!   move.
//!
//! # Least-connections is per worker, hence an approximation
//!
//! Each worker counts only the requests *it* has in flight. The true load on a target is
//! the sum over N workers, which no worker sees (sharing it would put a cross-core atomic on
//! every request, which DESIGN.md §2 rules out). What that means:
//!
//! - Since SO_REUSEPORT spreads connections over workers, each worker balances its own ~1/N
//!   of the traffic and keeps *its* counts level. The global counts are then level only to
//!   within about one request per worker per target (up to ~N apart), where one shared
//!   counter would keep them within one; and N workers may each send their next request to
//!   the same target that just became least loaded.
//! - At low concurrency (fewer than one request in flight per target per worker) every
//!   count is 0 or 1, and the algorithm degrades to "higher weight, then round-robin" — it
//!   cannot avoid a target that is slow because of *other* workers' requests.
//! - A slow target still accumulates in-flight requests on every worker that uses it, so
//!   each worker steers away from it independently; that is the case least-connections is
//!   for, and it works without coordination.
//!
//! # Hashing
//!
//! [`hash_bytes`] (FNV-1a, then a splitmix64 finaliser) is stable: the same on every worker,
//! machine and restart, so a client IP or header value maps to the same target everywhere.
//! Changing it would remap every client; a test pins its output.

use std::collections::HashMap;

use crate::model::{Algorithm, Protocol, Target, UpstreamSpec};

/// Virtual nodes on the consistent-hash ring per unit of normalised weight (the tier's
/// lightest target counts as one unit). More points even out the shares (the spread of a
/// target's share shrinks like 1/√points) but cost memory (8 bytes each) and a slightly
/// deeper binary search. 160 is ketama's choice: four equal targets get 25 % ± ~3 points.
pub const VNODES_PER_UNIT: u64 = 160;

/// Bound on ring points over all tiers of one balancer (8 bytes each: 512 KiB). When
/// weights are very uneven (1 and 65535) the per-target counts are scaled down
/// proportionally to fit, keeping at least one point per target (so the bound is exceeded by
/// at most the number of targets); then adding a target can also move keys between existing
/// targets, because their counts are rescaled.
pub const MAX_RING_POINTS: u64 = 1 << 16;

/// One target as the balancer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TargetWeight {
    /// Relative share of traffic; 0 drains the target (never picked).
    pub weight: u32,
    /// Failover tier: the lowest tier with an eligible target gets all traffic.
    pub priority: u32,
}

impl From<&Target> for TargetWeight {
    fn from(target: &Target) -> TargetWeight {
        TargetWeight {
            weight: target.weight,
            priority: target.priority,
        }
    }
}

/// The targets of one priority tier: ranges into the balancer's flat arrays.
#[derive(Debug, Clone)]
struct Tier {
    /// `members[start..end]`, `cumulative[start..end]`.
    start: usize,
    end: usize,
    /// `ring_points[ring_start..ring_end]`, `ring_owners[..]` (consistent-hash only).
    ring_start: usize,
    ring_end: usize,
    /// Σ weight of the tier's members; > 0 because weight-0 targets are in no tier.
    total_weight: u64,
}

/// The immutable, per-snapshot half of target selection. See the module docs.
#[derive(Debug, Clone)]
pub struct Balancer {
    algorithm: Algorithm,
    /// Per target, by the index the caller uses.
    weights: Vec<u32>,
    /// Target indices with weight > 0, grouped by tier (ascending priority), ascending
    /// index within a tier.
    members: Vec<u32>,
    /// Parallel to `members`: the member's weight (> 0), contiguous for the O(n) scans.
    member_weights: Vec<u32>,
    /// Parallel to `members`: running Σ weight within the member's tier, inclusive.
    cumulative: Vec<u64>,
    tiers: Vec<Tier>,
    /// Ring positions, sorted within each tier's range.
    ring_points: Vec<u32>,
    /// Parallel to `ring_points`: the target index owning each point.
    ring_owners: Vec<u32>,
    fingerprint: u64,
}

impl Balancer {
    /// A balancer whose targets are identified by their index (see the module docs on what
    /// that means for consistent hashing when the target list changes).
    pub fn new(algorithm: Algorithm, targets: &[TargetWeight]) -> Balancer {
        Balancer::with_ids(algorithm, targets, &[])
    }

    /// A balancer for an upstream's targets, identified by `protocol://host:port`, so that
    /// the consistent-hash ring moves only the keys of targets that were added or removed.
    pub fn for_upstream(upstream: &UpstreamSpec) -> Balancer {
        let weights: Vec<TargetWeight> = upstream.targets.iter().map(TargetWeight::from).collect();
        let ids: Vec<u64> = upstream.targets.iter().map(target_id).collect();
        Balancer::with_ids(upstream.algorithm, &weights, &ids)
    }

    /// A balancer whose target `i` has the stable identity `ids[i]` (for example
    /// [`hash_bytes`] of its address); a missing id falls back to the index. Duplicate ids
    /// are told apart by their order of appearance.
    pub fn with_ids(algorithm: Algorithm, targets: &[TargetWeight], ids: &[u64]) -> Balancer {
        let ids = distinct_ids(targets.len(), ids);
        let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();

        let mut members: Vec<u32> = (0..targets.len())
            .filter(|&i| targets[i].weight > 0)
            .filter_map(|i| u32::try_from(i).ok())
            .collect();
        members.sort_by_key(|&i| (targets[i as usize].priority, i));

        let mut cumulative = Vec::with_capacity(members.len());
        let mut tiers: Vec<Tier> = Vec::new();
        let mut tier_priority = None;
        let mut running = 0u64;
        for (pos, &i) in members.iter().enumerate() {
            let target = targets[i as usize];
            if tier_priority != Some(target.priority) {
                tier_priority = Some(target.priority);
                running = 0;
                tiers.push(Tier {
                    start: pos,
                    end: pos,
                    ring_start: 0,
                    ring_end: 0,
                    total_weight: 0,
                });
            }
            running += u64::from(target.weight);
            cumulative.push(running);
            if let Some(tier) = tiers.last_mut() {
                tier.end = pos + 1;
                tier.total_weight = running;
            }
        }

        let member_weights = members.iter().map(|&i| weights[i as usize]).collect();
        let mut balancer = Balancer {
            algorithm,
            weights,
            members,
            member_weights,
            cumulative,
            tiers,
            ring_points: Vec::new(),
            ring_owners: Vec::new(),
            fingerprint: fingerprint(algorithm, targets, &ids),
        };
        if algorithm == Algorithm::ConsistentHash {
            balancer.build_rings(&ids);
        }
        balancer
    }

    /// Builds one ring per tier; see [`VNODES_PER_UNIT`] and [`MAX_RING_POINTS`].
    fn build_rings(&mut self, ids: &[u64]) {
        // Desired points per member, normalised to the lightest member of its tier.
        let mut counts = vec![0u64; self.members.len()];
        for tier in &self.tiers {
            let tier_members = &self.members[tier.start..tier.end];
            let lightest = tier_members
                .iter()
                .map(|&i| u64::from(self.weights[i as usize]))
                .min()
                .unwrap_or(1)
                .max(1);
            for (pos, &i) in tier_members.iter().enumerate() {
                let weight = u64::from(self.weights[i as usize]);
                counts[tier.start + pos] = (VNODES_PER_UNIT * weight).div_ceil(lightest);
            }
        }
        let total: u64 = counts.iter().sum();
        if total > MAX_RING_POINTS {
            for count in &mut counts {
                *count = (*count * MAX_RING_POINTS / total).max(1);
            }
        }

        for tier in &mut self.tiers {
            // Packed `point << 32 | owner`: sorting plain u64s is about twice as fast as pairs.
            let mut ring: Vec<u64> = Vec::new();
            let tier_members = &self.members[tier.start..tier.end];
            let tier_counts = &counts[tier.start..tier.end];
            for (&target, &count) in tier_members.iter().zip(tier_counts) {
                let id_hash = mix64(ids[target as usize]);
                for vnode in 0..count {
                    let point = ring_position(mix64(id_hash ^ vnode));
                    ring.push(u64::from(point) << 32 | u64::from(target));
                }
            }
            ring.sort_unstable();
            tier.ring_start = self.ring_points.len();
            self.ring_points
                .extend(ring.iter().map(|&packed| (packed >> 32) as u32));
            self.ring_owners
                .extend(ring.iter().map(|&packed| packed as u32));
            tier.ring_end = self.ring_points.len();
        }
    }

    /// The algorithm this balancer runs.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// How many targets (including drained ones) it was built from.
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// Points on the consistent-hash rings (0 for other algorithms).
    pub fn ring_len(&self) -> usize {
        self.ring_points.len()
    }

    /// Identifies the algorithm and every target's identity, weight and priority: equal
    /// fingerprints mean a [`Cursor`] built for one is valid, with the same meaning, for the
    /// other (see [`Cursor::adopt`]).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Picks a target index, or `None` when no tier has an eligible target.
    ///
    /// `hash` is the consistent-hash key (e.g. [`hash_bytes`] of the client IP or of the
    /// `hash_header` value; any `u64` works, it is mixed again); other algorithms ignore it.
    /// `usable(i)` is the caller's health view of target `i`; `exclude` lists targets already
    /// tried for this request, so that a retry goes to another one.
    ///
    /// Allocates nothing, unless `cursor` was built for a balancer with another fingerprint:
    /// then it is reset first (as by [`Cursor::adopt`]).
    pub fn pick(
        &self,
        cursor: &mut Cursor,
        hash: Option<u64>,
        usable: impl Fn(usize) -> bool,
        exclude: &[usize],
    ) -> Option<usize> {
        cursor.adopt(self);
        let eligible = |i: usize| usable(i) && !exclude.contains(&i);
        self.tiers
            .iter()
            .enumerate()
            .find_map(|(t, tier)| match (self.algorithm, hash) {
                (Algorithm::RoundRobin, _) | (Algorithm::ConsistentHash, None) => {
                    self.round_robin(t, tier, cursor, &eligible)
                }
                (Algorithm::WeightedRoundRobin, _) => self.smooth_weighted(tier, cursor, &eligible),
                (Algorithm::LeastConnections, _) => {
                    self.least_connections(t, tier, cursor, &eligible)
                }
                (Algorithm::Random, _) => self.weighted_random(tier, cursor, &eligible),
                (Algorithm::ConsistentHash, Some(hash)) => self.ring_lookup(tier, hash, &eligible),
            })
    }

    fn round_robin(
        &self,
        t: usize,
        tier: &Tier,
        cursor: &mut Cursor,
        eligible: &impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let members = &self.members[tier.start..tier.end];
        let start = cursor.rr[t] % members.len().max(1);
        let (pos, target) = rotation(members, start).find(|&(_, i)| eligible(i))?;
        cursor.rr[t] = pos + 1;
        Some(target)
    }

    fn smooth_weighted(
        &self,
        tier: &Tier,
        cursor: &mut Cursor,
        eligible: &impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let members = &self.members[tier.start..tier.end];
        let weights = &self.member_weights[tier.start..tier.end];
        let current = &mut cursor.current[tier.start..tier.end];
        let mut total = 0i64;
        let mut best: Option<(i64, usize)> = None;
        let entries = members.iter().zip(weights).zip(current.iter_mut());
        for (pos, ((&member, &weight), current)) in entries.enumerate() {
            if !eligible(member as usize) {
                continue;
            }
            *current += i64::from(weight);
            total += i64::from(weight);
            if best.is_none_or(|(value, _)| *current > value) {
                best = Some((*current, pos));
            }
        }
        let (_, pos) = best?;
        current[pos] -= total;
        Some(members[pos] as usize)
    }

    fn least_connections(
        &self,
        t: usize,
        tier: &Tier,
        cursor: &mut Cursor,
        eligible: &impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let members = &self.members[tier.start..tier.end];
        let weights = &self.member_weights[tier.start..tier.end];
        let k = members.len();
        let start = cursor.rr[t] % k.max(1);
        // Smaller is better: in-flight, then heavier, then first in rotation order from
        // `start`; packed into one integer so the scan is a single compare per target.
        let mut best: Option<(u128, usize)> = None;
        for (pos, (&member, &weight)) in members.iter().zip(weights).enumerate() {
            let i = member as usize;
            if !eligible(i) {
                continue;
            }
            let in_flight = cursor.in_flight.get(i).copied().unwrap_or(0);
            let distance = if pos >= start {
                pos - start
            } else {
                pos + k - start
            };
            let rank = u128::from(in_flight) << 96
                | u128::from(u32::MAX - weight) << 64
                | distance as u128;
            if best.is_none_or(|(b, _)| rank < b) {
                best = Some((rank, pos));
            }
        }
        let (_, pos) = best?;
        cursor.rr[t] = pos + 1;
        Some(members[pos] as usize)
    }

    fn weighted_random(
        &self,
        tier: &Tier,
        cursor: &mut Cursor,
        eligible: &impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let members = &self.members[tier.start..tier.end];
        let cumulative = &self.cumulative[tier.start..tier.end];
        let draw = cursor.below(tier.total_weight);
        let pos = cumulative.partition_point(|&c| c <= draw);
        if let Some(&member) = members.get(pos)
            && eligible(member as usize)
        {
            return Some(member as usize);
        }
        // The drawn target is out: draw again among the eligible ones. Overall each eligible
        // target is still picked with probability weight / Σ eligible weight.
        let weight = |i: usize| u64::from(self.weights[i]);
        let eligible_total: u64 = members
            .iter()
            .map(|&m| m as usize)
            .filter(|&i| eligible(i))
            .map(weight)
            .sum();
        let mut draw = cursor.below(eligible_total);
        for i in members.iter().map(|&m| m as usize).filter(|&i| eligible(i)) {
            if draw < weight(i) {
                return Some(i);
            }
            draw -= weight(i);
        }
        None
    }

    fn ring_lookup(
        &self,
        tier: &Tier,
        hash: u64,
        eligible: &impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let points = &self.ring_points[tier.ring_start..tier.ring_end];
        let owners = &self.ring_owners[tier.ring_start..tier.ring_end];
        let key = ring_position(mix64(hash));
        let start = points.partition_point(|&p| p < key);
        let mut rejected = None;
        for (_, owner) in rotation(owners, start % owners.len().max(1)) {
            // Consecutive points often share an owner; ask about each owner once per run.
            if rejected == Some(owner) {
                continue;
            }
            if eligible(owner) {
                return Some(owner);
            }
            rejected = Some(owner);
        }
        None
    }
}

/// `(position, target)` for every entry of `members`, starting at `start` and wrapping.
fn rotation(members: &[u32], start: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let (head, tail) = members.split_at(start.min(members.len()));
    tail.iter()
        .enumerate()
        .map(move |(k, &m)| (start + k, m as usize))
        .chain(head.iter().enumerate().map(|(k, &m)| (k, m as usize)))
}

/// The per-worker, mutable half of target selection for one upstream. See the module docs.
#[derive(Debug, Clone)]
pub struct Cursor {
    /// The [`Balancer::fingerprint`] this state belongs to.
    fingerprint: u64,
    /// Per tier: the member position to start the next round-robin (and least-connections
    /// tie-break) scan at.
    rr: Vec<usize>,
    /// Per tier member (parallel to the balancer's `members`): smooth weighted
    /// round-robin's current weight.
    current: Vec<i64>,
    /// Per target: requests this worker has in flight (least-connections).
    in_flight: Vec<u32>,
    /// wyrand state (random algorithm, start positions).
    rng: u64,
}

impl Cursor {
    /// A cursor with seed 0. Workers should prefer [`Cursor::with_seed`] with their index.
    pub fn new(balancer: &Balancer) -> Cursor {
        Cursor::with_seed(balancer, 0)
    }

    /// A cursor whose PRNG (weighted random, round-robin start positions) is seeded with
    /// `seed`; the same seed gives the same picks.
    pub fn with_seed(balancer: &Balancer, seed: u64) -> Cursor {
        let mut cursor = Cursor {
            fingerprint: 0,
            rr: Vec::new(),
            current: Vec::new(),
            in_flight: Vec::new(),
            rng: mix64(seed),
        };
        cursor.reset(balancer);
        cursor
    }

    /// Moves this cursor to `balancer` (typically the same upstream in a newer snapshot).
    /// Keeps all state and returns `true` when the fingerprints match; otherwise resets
    /// positions, weights and in-flight counts (the PRNG continues) and returns `false`.
    ///
    /// After a reset, [`Cursor::finished`] calls for requests started under the old
    /// balancer may hit the wrong index; counts saturate at 0, so the skew is bounded by
    /// what was in flight and disappears as the target goes idle.
    pub fn adopt(&mut self, balancer: &Balancer) -> bool {
        let fits = self.fingerprint == balancer.fingerprint
            && self.rr.len() == balancer.tiers.len()
            && self.current.len() == balancer.members.len()
            && self.in_flight.len() == balancer.weights.len();
        if !fits {
            self.reset(balancer);
        }
        fits
    }

    fn reset(&mut self, balancer: &Balancer) {
        self.fingerprint = balancer.fingerprint;
        let starts: Vec<usize> = balancer
            .tiers
            .iter()
            .map(|tier| self.below((tier.end - tier.start) as u64) as usize)
            .collect();
        self.rr = starts;
        self.current = vec![0; balancer.members.len()];
        self.in_flight = vec![0; balancer.weights.len()];
    }

    /// A request to target `i` has started (least-connections accounting).
    pub fn started(&mut self, i: usize) {
        if let Some(n) = self.in_flight.get_mut(i) {
            *n = n.saturating_add(1);
        }
    }

    /// A request to target `i` has finished, successfully or not.
    pub fn finished(&mut self, i: usize) {
        if let Some(n) = self.in_flight.get_mut(i) {
            *n = n.saturating_sub(1);
        }
    }

    /// Requests this cursor counts in flight to target `i`.
    pub fn in_flight(&self, i: usize) -> u32 {
        self.in_flight.get(i).copied().unwrap_or(0)
    }

    /// wyrand: fast, 64-bit state, passes BigCrush; not for secrets.
    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.rng) * u128::from(self.rng ^ 0xe703_7ed1_a0b4_28db);
        (t >> 64) as u64 ^ t as u64
    }

    /// Uniform in `0..n` (0 when `n` is 0), by multiply-high: no modulo, negligible bias.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// A stable 64-bit hash of `bytes` (client IP, header value) for consistent hashing:
/// FNV-1a with a splitmix64 finaliser, identical on every worker and across restarts.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(hash)
}

/// splitmix64's finaliser: a bijection with full avalanche.
fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Ring positions are 32-bit: half the memory of 64-bit points; with ≤ 64k points, a
/// collision is rare and harmless (both points stay, ordered by owner).
fn ring_position(mixed: u64) -> u32 {
    (mixed >> 32) as u32
}

/// A target's identity for the ring: `protocol://host:port`.
fn target_id(target: &Target) -> u64 {
    let scheme: &[u8] = match target.protocol {
        Protocol::Http => b"http",
        Protocol::Https => b"https",
    };
    let mut hash = hash_bytes(scheme);
    hash = mix64(hash ^ hash_bytes(target.host.as_bytes()));
    mix64(hash ^ u64::from(target.port))
}

/// `ids[i]`, or `i` where missing; a repeated id is mixed with its occurrence number so that
/// two targets never share ring points.
fn distinct_ids(n: usize, ids: &[u64]) -> Vec<u64> {
    let mut seen: HashMap<u64, u64> = HashMap::new();
    (0..n)
        .map(|i| {
            let id = ids.get(i).copied().unwrap_or(i as u64);
            let occurrence = seen.entry(id).or_insert(0);
            *occurrence += 1;
            match *occurrence {
                1 => id,
                k => mix64(id ^ mix64(k)),
            }
        })
        .collect()
}

fn fingerprint(algorithm: Algorithm, targets: &[TargetWeight], ids: &[u64]) -> u64 {
    let tag = match algorithm {
        Algorithm::RoundRobin => 1,
        Algorithm::WeightedRoundRobin => 2,
        Algorithm::LeastConnections => 3,
        Algorithm::Random => 4,
        Algorithm::ConsistentHash => 5,
    };
    let mut hash = mix64(tag ^ ((targets.len() as u64) << 8));
    for (target, &id) in targets.iter().zip(ids) {
        hash = mix64(hash ^ id);
        hash = mix64(hash ^ (u64::from(target.weight) << 32 | u64::from(target.priority)));
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn equal(n: usize) -> Vec<TargetWeight> {
        vec![
            TargetWeight {
                weight: 100,
                priority: 0
            };
            n
        ]
    }

    fn weighted(weights: &[u32]) -> Vec<TargetWeight> {
        weights
            .iter()
            .map(|&weight| TargetWeight {
                weight,
                priority: 0,
            })
            .collect()
    }

    fn all(_: usize) -> bool {
        true
    }

    const ALL_ALGORITHMS: [Algorithm; 5] = [
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::LeastConnections,
        Algorithm::Random,
        Algorithm::ConsistentHash,
    ];

    /// Picks `n` times (hash = pick number for consistent-hash) and counts per target.
    fn counts(
        balancer: &Balancer,
        cursor: &mut Cursor,
        n: u64,
        usable: impl Fn(usize) -> bool + Copy,
    ) -> Vec<u64> {
        let mut counts = vec![0u64; balancer.len()];
        for k in 0..n {
            let hash = Some(hash_bytes(&k.to_le_bytes()));
            let i = balancer
                .pick(cursor, hash, usable, &[])
                .expect("an eligible target exists");
            counts[i] += 1;
        }
        counts
    }

    // --- priority tiers and draining ---------------------------------------------------------

    #[test]
    fn only_the_lowest_tier_with_an_eligible_target_gets_traffic() {
        let targets = [
            TargetWeight {
                weight: 1,
                priority: 1,
            },
            TargetWeight {
                weight: 1,
                priority: 0,
            },
            TargetWeight {
                weight: 1,
                priority: 0,
            },
            TargetWeight {
                weight: 1,
                priority: 2,
            },
        ];
        for algorithm in ALL_ALGORITHMS {
            let b = Balancer::new(algorithm, &targets);
            let mut c = Cursor::new(&b);
            let c0 = counts(&b, &mut c, 1000, all);
            assert_eq!(
                (c0[0], c0[3]),
                (0, 0),
                "{algorithm:?}: tier 0 takes all: {c0:?}"
            );
            // Tier 0 unhealthy → tier 1.
            let c1 = counts(&b, &mut c, 1000, |i| i != 1 && i != 2);
            assert_eq!(c1, [1000, 0, 0, 0], "{algorithm:?}");
            // Tier 0 down, tier 1 already tried for this request → tier 2.
            let pick = b.pick(&mut c, Some(7), |i| i != 1 && i != 2, &[0]);
            assert_eq!(pick, Some(3), "{algorithm:?}");
            // One of tier 0 down → only the other member of tier 0.
            let c2 = counts(&b, &mut c, 1000, |i| i != 1);
            assert_eq!(c2, [0, 0, 1000, 0], "{algorithm:?}");
            // Nothing eligible anywhere → None.
            assert_eq!(b.pick(&mut c, Some(7), |_| false, &[]), None);
            assert_eq!(b.pick(&mut c, Some(7), all, &[0, 1, 2, 3]), None);
        }
    }

    #[test]
    fn a_tier_of_only_drained_targets_fails_over() {
        let targets = [
            TargetWeight {
                weight: 0,
                priority: 0,
            },
            TargetWeight {
                weight: 5,
                priority: 1,
            },
        ];
        for algorithm in ALL_ALGORITHMS {
            let b = Balancer::new(algorithm, &targets);
            let mut c = Cursor::new(&b);
            assert_eq!(counts(&b, &mut c, 1000, all), [0, 1000], "{algorithm:?}");
        }
        let b = Balancer::new(Algorithm::Random, &[TargetWeight::default()]);
        assert_eq!(b.pick(&mut Cursor::new(&b), None, all, &[]), None);
        let b = Balancer::new(Algorithm::RoundRobin, &[]);
        assert_eq!(b.pick(&mut Cursor::new(&b), None, all, &[]), None);
    }

    #[test]
    fn weight_zero_is_never_picked_by_any_algorithm() {
        let targets = weighted(&[3, 0, 1, 0, 2]);
        for algorithm in ALL_ALGORITHMS {
            let b = Balancer::new(algorithm, &targets);
            let mut c = Cursor::with_seed(&b, 3);
            let mut n = [0u32; 5];
            for k in 0..6000u64 {
                let hash = Some(hash_bytes(&k.to_le_bytes()));
                let i = b.pick(&mut c, hash, all, &[]).expect("pick");
                n[i] += 1;
                c.started(i); // never finished: least-connections spreads over all of them
            }
            assert_eq!((n[1], n[3]), (0, 0), "{algorithm:?}: {n:?}");
            assert!(n[0] > 0 && n[2] > 0 && n[4] > 0, "{algorithm:?}: {n:?}");
            // Even with every weighted target excluded, a drained one is not a fallback.
            assert_eq!(b.pick(&mut c, Some(1), all, &[0, 2, 4]), None);
        }
    }

    #[test]
    fn a_retry_never_returns_an_excluded_target() {
        for algorithm in ALL_ALGORITHMS {
            let b = Balancer::new(algorithm, &weighted(&[1, 1, 1, 1]));
            let mut c = Cursor::new(&b);
            for k in 0..1000u64 {
                let hash = Some(hash_bytes(&k.to_le_bytes()));
                let first = b.pick(&mut c, hash, all, &[]).expect("first");
                let second = b.pick(&mut c, hash, all, &[first]).expect("second");
                let third = b.pick(&mut c, hash, all, &[first, second]).expect("third");
                assert!(second != first && third != first && third != second);
            }
        }
    }

    // --- round-robin ---------------------------------------------------------------------

    #[test]
    fn round_robin_cycles_over_eligible_targets_equally_ignoring_weights() {
        let b = Balancer::new(Algorithm::RoundRobin, &weighted(&[1, 50, 7]));
        let mut c = Cursor::with_seed(&b, 11);
        // Exact: 3000 picks → 1000 each, in strict rotation.
        let mut last = None;
        let mut n = [0u32; 3];
        for _ in 0..3000 {
            let i = b.pick(&mut c, None, all, &[]).expect("pick");
            if let Some(prev) = last {
                assert_eq!(i, (prev + 1) % 3);
            }
            last = Some(i);
            n[i] += 1;
        }
        assert_eq!(n, [1000, 1000, 1000]);
        // A dead target's turns go to the others equally, not to its successor only.
        assert_eq!(counts(&b, &mut c, 3000, |i| i != 1), [1500, 0, 1500]);
    }

    #[test]
    fn cursors_with_different_seeds_start_round_robin_at_different_targets() {
        let b = Balancer::new(Algorithm::RoundRobin, &equal(16));
        let firsts: std::collections::HashSet<usize> = (0..16)
            .map(|seed| b.pick(&mut Cursor::with_seed(&b, seed), None, all, &[]))
            .map(|pick| pick.expect("pick"))
            .collect();
        assert!(firsts.len() >= 6, "16 workers all start on {firsts:?}");
    }

    // --- smooth weighted round-robin -----------------------------------------------------

    #[test]
    fn smooth_weighted_round_robin_interleaves_like_nginx() {
        let b = Balancer::new(Algorithm::WeightedRoundRobin, &weighted(&[5, 1, 1]));
        let mut c = Cursor::new(&b);
        let seq: String = (0..14)
            .map(|_| match b.pick(&mut c, None, all, &[]) {
                Some(0) => 'a',
                Some(1) => 'b',
                Some(2) => 'c',
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(seq, "aabacaaaabacaa");
    }

    #[test]
    fn smooth_weighted_round_robin_is_exact_over_every_full_cycle() {
        let weights = [3u32, 2, 7, 1, 0, 4];
        let b = Balancer::new(Algorithm::WeightedRoundRobin, &weighted(&weights));
        let mut c = Cursor::new(&b);
        let cycle: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        for _ in 0..100 {
            let n = counts(&b, &mut c, cycle, all);
            let want: Vec<u64> = weights.iter().map(|&w| u64::from(w)).collect();
            assert_eq!(n, want, "tolerance: exact, per cycle of {cycle} picks");
        }
        // With target 2 down, every cycle of the remaining weights is exact again.
        let cycle = cycle - 7;
        for _ in 0..100 {
            assert_eq!(counts(&b, &mut c, cycle, |i| i != 2), [3, 2, 0, 1, 0, 4]);
        }
    }

    // --- least-connections ---------------------------------------------------------------

    #[test]
    fn least_connections_picks_the_target_with_fewest_in_flight() {
        let b = Balancer::new(Algorithm::LeastConnections, &equal(3));
        let mut c = Cursor::new(&b);
        for _ in 0..5 {
            c.started(0);
        }
        for _ in 0..2 {
            c.started(1);
        }
        c.started(2);
        c.started(2);
        c.started(2);
        assert_eq!(b.pick(&mut c, None, all, &[]), Some(1));
        c.finished(0);
        c.finished(0);
        c.finished(0);
        c.finished(0);
        assert_eq!(b.pick(&mut c, None, all, &[]), Some(0));
        assert_eq!(c.in_flight(0), 1);
        // Unusable targets are skipped even when idle.
        c.finished(0);
        assert_eq!(b.pick(&mut c, None, |i| i != 0, &[]), Some(1));
    }

    #[test]
    fn least_connections_breaks_ties_by_weight_then_round_robin() {
        let b = Balancer::new(Algorithm::LeastConnections, &weighted(&[1, 9, 9, 1]));
        let mut c = Cursor::new(&b);
        // All idle: the two heavy targets alternate; the light ones get nothing.
        assert_eq!(counts(&b, &mut c, 1000, all), [0, 500, 500, 0]);
        // Load the heavy ones: the light ones now have fewer in flight.
        c.started(1);
        c.started(2);
        assert_eq!(counts(&b, &mut c, 1000, all), [500, 0, 0, 500]);
    }

    #[test]
    fn least_connections_spreads_concurrent_load_evenly() {
        let b = Balancer::new(Algorithm::LeastConnections, &equal(4));
        let mut c = Cursor::with_seed(&b, 5);
        // 1000 requests started and none finished: the in-flight counts stay level.
        for _ in 0..1000 {
            let i = b.pick(&mut c, None, all, &[]).expect("pick");
            c.started(i);
        }
        assert_eq!((0..4).map(|i| c.in_flight(i)).collect::<Vec<_>>(), [250; 4]);
        // Target 3 is slow: its requests never finish, the others' finish at once. After
        // its first request it is never picked again while the others sit idle.
        let mut c = Cursor::with_seed(&b, 5);
        let mut n = [0u32; 4];
        for _ in 0..1000 {
            let i = b.pick(&mut c, None, all, &[]).expect("pick");
            n[i] += 1;
            c.started(i);
            if i != 3 {
                c.finished(i);
            }
        }
        assert_eq!(n[3], 1, "{n:?}");
        assert_eq!(n[..3], [333, 333, 333]);
    }

    // --- weighted random -----------------------------------------------------------------

    /// Tolerance: each target's share within ±5 % (relative) of weight / Σ weight over
    /// 100 000 picks — ≥ 5 standard deviations for the smallest share here, so it holds for
    /// any seed; checked for 8 seeds.
    #[test]
    fn weighted_random_shares_match_weights_within_5_percent() {
        let weights = [1u32, 2, 3, 4, 10];
        let b = Balancer::new(Algorithm::Random, &weighted(&weights));
        let total: u32 = weights.iter().sum();
        for seed in 0..8 {
            let mut c = Cursor::with_seed(&b, seed);
            let n = counts(&b, &mut c, 100_000, all);
            for (i, &w) in weights.iter().enumerate() {
                let expected = 100_000.0 * f64::from(w) / f64::from(total);
                let got = n[i] as f64;
                assert!(
                    (got - expected).abs() <= 0.05 * expected,
                    "seed {seed}, target {i}: {got} vs {expected}"
                );
            }
        }
    }

    #[test]
    fn weighted_random_stays_proportional_among_the_healthy_targets() {
        // Target 2 (the heaviest) is down: 1:3 between the rest, ±5 % relative, 100 000 picks.
        let b = Balancer::new(Algorithm::Random, &weighted(&[1, 3, 6]));
        let mut c = Cursor::with_seed(&b, 42);
        let n = counts(&b, &mut c, 100_000, |i| i != 2);
        assert_eq!(n[2], 0);
        assert!((23_750..=26_250).contains(&n[0]), "{n:?}");
        assert!((71_250..=78_750).contains(&n[1]), "{n:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_random_sequence() {
        let b = Balancer::new(Algorithm::Random, &equal(8));
        let run = |seed| {
            let mut c = Cursor::with_seed(&b, seed);
            (0..1000)
                .map(|_| b.pick(&mut c, None, all, &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }

    // --- consistent hash -----------------------------------------------------------------

    fn keys(n: u64) -> impl Iterator<Item = u64> {
        (0..n).map(|k| hash_bytes(format!("10.0.{}.{}", k / 256, k % 256).as_bytes()))
    }

    #[test]
    fn adding_a_fifth_target_remaps_at_most_30_percent_and_only_to_it() {
        let four = Balancer::new(Algorithm::ConsistentHash, &equal(4));
        let five = Balancer::new(Algorithm::ConsistentHash, &equal(5));
        let (mut c4, mut c5) = (Cursor::new(&four), Cursor::new(&five));
        let mut moved = 0;
        for key in keys(10_000) {
            let before = four.pick(&mut c4, Some(key), all, &[]).expect("4");
            let after = five.pick(&mut c5, Some(key), all, &[]).expect("5");
            if before != after {
                assert_eq!(after, 4, "a key moved between old targets");
                moved += 1;
            }
        }
        // Ideal 1/5 = 20 %; tolerance: ≤ 30 %, and ≥ 10 % so the new target is really used.
        assert!((1_000..=3_000).contains(&moved), "moved {moved} of 10 000");
    }

    #[test]
    fn removing_a_middle_target_moves_only_its_keys_when_targets_have_identities() {
        let ids = [
            hash_bytes(b"a"),
            hash_bytes(b"b"),
            hash_bytes(b"c"),
            hash_bytes(b"d"),
        ];
        let before = Balancer::with_ids(Algorithm::ConsistentHash, &equal(4), &ids);
        let kept = [ids[0], ids[2], ids[3]]; // "b" removed; indices shift
        let after = Balancer::with_ids(Algorithm::ConsistentHash, &equal(3), &kept);
        let (mut cb, mut ca) = (Cursor::new(&before), Cursor::new(&after));
        for key in keys(10_000) {
            let old = before.pick(&mut cb, Some(key), all, &[]).expect("before");
            let new = after.pick(&mut ca, Some(key), all, &[]).expect("after");
            if old != 1 {
                assert_eq!(ids[old], kept[new], "a key of a surviving target moved");
            }
        }
    }

    /// Tolerance: with 160 virtual nodes each, every one of 4 equal targets gets 25 % ± 5
    /// percentage points of 10 000 keys; weights 1:3 give 25 % / 75 % ± 5 points.
    #[test]
    fn the_ring_shares_keys_in_proportion_to_weight() {
        let b = Balancer::new(Algorithm::ConsistentHash, &equal(4));
        assert_eq!(b.ring_len(), 4 * 160);
        let mut c = Cursor::new(&b);
        let mut n = [0u32; 4];
        for key in keys(10_000) {
            n[b.pick(&mut c, Some(key), all, &[]).expect("pick")] += 1;
        }
        assert!(n.iter().all(|&k| (2_000..=3_000).contains(&k)), "{n:?}");

        let b = Balancer::new(Algorithm::ConsistentHash, &weighted(&[100, 300]));
        assert_eq!(b.ring_len(), 160 + 480);
        let mut c = Cursor::new(&b);
        let mut n = [0u32; 2];
        for key in keys(10_000) {
            n[b.pick(&mut c, Some(key), all, &[]).expect("pick")] += 1;
        }
        assert!((2_000..=3_000).contains(&n[0]), "{n:?}");
    }

    #[test]
    fn a_down_target_sends_only_its_own_keys_elsewhere() {
        let b = Balancer::new(Algorithm::ConsistentHash, &equal(5));
        let mut c = Cursor::new(&b);
        let mut spread = [0u32; 5];
        for key in keys(10_000) {
            let healthy = b.pick(&mut c, Some(key), all, &[]).expect("healthy");
            let degraded = b
                .pick(&mut c, Some(key), |i| i != 2, &[])
                .expect("degraded");
            if healthy == 2 {
                assert_ne!(degraded, 2);
                spread[degraded] += 1;
            } else {
                assert_eq!(healthy, degraded, "a key of a healthy target moved");
            }
            // A retry with the chosen target excluded goes to another target.
            let retry = b.pick(&mut c, Some(key), all, &[healthy]).expect("retry");
            assert_ne!(retry, healthy);
        }
        // The dead target's keys spread over several survivors, not all onto one.
        assert!(spread.iter().filter(|&&k| k > 0).count() >= 3, "{spread:?}");
    }

    #[test]
    fn the_same_key_maps_to_the_same_target_on_every_worker() {
        let b1 = Balancer::new(Algorithm::ConsistentHash, &equal(16));
        let b2 = Balancer::new(Algorithm::ConsistentHash, &equal(16));
        let (mut w1, mut w2) = (Cursor::with_seed(&b1, 1), Cursor::with_seed(&b2, 2));
        for key in keys(1000) {
            assert_eq!(
                b1.pick(&mut w1, Some(key), all, &[]),
                b2.pick(&mut w2, Some(key), all, &[])
            );
        }
    }

    #[test]
    fn consistent_hash_without_a_key_falls_back_to_round_robin() {
        let b = Balancer::new(Algorithm::ConsistentHash, &weighted(&[1, 5, 1]));
        let mut c = Cursor::new(&b);
        let mut n = [0u32; 3];
        for _ in 0..3000 {
            n[b.pick(&mut c, None, all, &[]).expect("pick")] += 1;
        }
        assert_eq!(n, [1000, 1000, 1000]);
    }

    #[test]
    fn the_ring_stays_bounded_with_extreme_weights() {
        let mut targets = equal(256);
        targets[0].weight = 1;
        targets[1].weight = 65_535;
        let b = Balancer::new(Algorithm::ConsistentHash, &targets);
        assert!(
            b.ring_len() as u64 <= MAX_RING_POINTS + 256,
            "{}",
            b.ring_len()
        );
        let mut c = Cursor::new(&b);
        let n = counts(&b, &mut c, 10_000, all);
        assert!(n[1] > 5_000, "the heavy target gets most keys: {}", n[1]);
        // Every target still owns at least one point: all reachable by walking.
        for i in 0..256 {
            assert_eq!(b.pick(&mut c, Some(1), |j| j == i, &[]), Some(i));
        }
    }

    #[test]
    fn duplicate_target_addresses_still_share_the_ring() {
        let spec: UpstreamSpec = serde_json::from_value(serde_json::json!({
            "name": "u", "algorithm": "consistent-hash",
            "targets": [{"host": "10.0.0.1", "port": 80}, {"host": "10.0.0.1", "port": 80}]
        }))
        .expect("upstream");
        let b = Balancer::for_upstream(&spec);
        let mut c = Cursor::new(&b);
        let mut n = [0u32; 2];
        for key in keys(10_000) {
            n[b.pick(&mut c, Some(key), all, &[]).expect("pick")] += 1;
        }
        assert!(n.iter().all(|&k| k >= 3_500), "{n:?}");
    }

    // --- snapshots, fingerprints, hashing ------------------------------------------------

    #[test]
    fn a_cursor_survives_a_snapshot_with_unchanged_targets_and_resets_otherwise() {
        let spec = |weight: u32| -> UpstreamSpec {
            serde_json::from_value(serde_json::json!({
                "name": "u", "algorithm": "weighted-round-robin",
                "targets": [{"host": "a", "port": 80, "weight": weight},
                            {"host": "b", "port": 80}]
            }))
            .expect("upstream")
        };
        let v1 = Balancer::for_upstream(&spec(300));
        let v2 = Balancer::for_upstream(&spec(300));
        let v3 = Balancer::for_upstream(&spec(200));
        assert_eq!(v1.fingerprint(), v2.fingerprint());
        assert_ne!(v1.fingerprint(), v3.fingerprint());
        let mut c = Cursor::new(&v1);
        let mut n = [0u32; 2];
        for _ in 0..2 {
            n[v1.pick(&mut c, None, all, &[]).expect("pick")] += 1;
        }
        c.started(1);
        assert!(c.adopt(&v2));
        assert_eq!(c.in_flight(1), 1);
        // Smooth WRR continues mid-cycle: two more picks complete the exact 3:1 cycle.
        for _ in 0..2 {
            n[v2.pick(&mut c, None, all, &[]).expect("pick")] += 1;
        }
        assert_eq!(n, [3, 1]);
        assert!(!c.adopt(&v3));
        assert_eq!(c.in_flight(1), 0);
        // pick() also resets a cursor it was not built for, instead of misbehaving.
        let other = Balancer::new(Algorithm::RoundRobin, &equal(7));
        assert!(other.pick(&mut c, None, all, &[]).is_some_and(|i| i < 7));
    }

    #[test]
    fn hash_bytes_is_pinned_because_changing_it_remaps_every_client() {
        assert_eq!(hash_bytes(b""), mix64(0xcbf2_9ce4_8422_2325));
        // Reference value computed independently (FNV-1a 64 + splitmix64 finaliser).
        assert_eq!(hash_bytes(b"192.168.1.10"), 0xfd89_8227_797c_b752);
        assert_ne!(hash_bytes(b"10.0.0.1"), hash_bytes(b"10.0.0.2"));
    }
}
