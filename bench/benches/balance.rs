//! `Balancer::pick` for every algorithm with 2, 16 and 256 targets, beside the naive
//! alternatives for the weighted ones:
//!
//! - weighted random: build the cumulative-weight `Vec` of the eligible targets on every
//!   pick, then binary-search it (what a balancer without a compiled snapshot does);
//! - consistent hash: weighted rendezvous hashing, which hashes the key with every target on
//!   every pick and keeps the best score (no ring, no memory, O(n) per pick).
//!
//! Weights cycle 100, 150, 200, 250; every target is healthy; nothing is excluded. Hash keys
//! cycle over 1 024 precomputed client IPs so that the ring lookup does not hit one cache
//! line only. `pick_one_down` adds the common degraded case: target 0 unhealthy.
//!
//! `cargo bench -p shardgate-bench --bench balance -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use shardgate_core::balance::{Balancer, Cursor, TargetWeight, hash_bytes};
use shardgate_core::model::Algorithm;

const SIZES: [usize; 3] = [2, 16, 256];

const ALGORITHMS: [(&str, Algorithm); 5] = [
    ("round-robin", Algorithm::RoundRobin),
    ("weighted-round-robin", Algorithm::WeightedRoundRobin),
    ("least-connections", Algorithm::LeastConnections),
    ("random", Algorithm::Random),
    ("consistent-hash", Algorithm::ConsistentHash),
];

fn targets(n: usize) -> Vec<TargetWeight> {
    (0..n)
        .map(|i| TargetWeight {
            weight: 100 + 50 * (i as u32 % 4),
            priority: 0,
        })
        .collect()
}

fn client_keys() -> Vec<u64> {
    (0..1024u32)
        .map(|k| hash_bytes(format!("10.1.{}.{}", k / 256, k % 256).as_bytes()))
        .collect()
}

// --- the naive alternatives --------------------------------------------------------------

/// wyrand, as the cursor uses, so both sides pay the same for randomness.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        let r = (t >> 64) as u64 ^ t as u64;
        ((u128::from(r) * u128::from(n)) >> 64) as u64
    }
}

/// Weighted random with a cumulative `Vec` built per pick.
fn naive_random(
    weights: &[TargetWeight],
    rng: &mut Rng,
    usable: impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut running = 0u64;
    let cumulative: Vec<(u64, usize)> = weights
        .iter()
        .enumerate()
        .filter(|&(i, t)| t.weight > 0 && usable(i))
        .map(|(i, t)| {
            running += u64::from(t.weight);
            (running, i)
        })
        .collect();
    let draw = rng.below(running);
    let pos = cumulative.partition_point(|&(c, _)| c <= draw);
    cumulative.get(pos).map(|&(_, i)| i)
}

/// Weighted rendezvous hashing: score = weight / -ln(u), u = hash(key, target) in (0, 1).
fn naive_rendezvous(
    weights: &[TargetWeight],
    key: u64,
    usable: impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut best: Option<(f64, usize)> = None;
    for (i, t) in weights.iter().enumerate() {
        if t.weight == 0 || !usable(i) {
            continue;
        }
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&key.to_le_bytes());
        bytes[8..].copy_from_slice(&(i as u64).to_le_bytes());
        let h = hash_bytes(&bytes);
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = f64::from(t.weight) / -u.ln();
        if best.is_none_or(|(b, _)| score > b) {
            best = Some((score, i));
        }
    }
    best.map(|(_, i)| i)
}

// --- benchmarks --------------------------------------------------------------------------

fn pick(c: &mut Criterion) {
    let keys = client_keys();
    for (group_name, down) in [("pick", None), ("pick_one_down", Some(0usize))] {
        let mut group = c.benchmark_group(group_name);
        for (name, algorithm) in ALGORITHMS {
            for n in SIZES {
                let balancer = Balancer::new(algorithm, &targets(n));
                let mut cursor = Cursor::with_seed(&balancer, 1);
                let usable = |i: usize| Some(i) != down;
                let mut k = 0usize;
                group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                    b.iter(|| {
                        k = (k + 1) & 1023;
                        let hash = Some(keys[k]);
                        let i = balancer.pick(&mut cursor, black_box(hash), usable, &[]);
                        if let Some(i) = i {
                            // Keep least-connections honest: some requests stay in flight.
                            cursor.started(i);
                            if k & 3 != 0 {
                                cursor.finished(i);
                            }
                        }
                        i
                    })
                });
            }
        }
        group.finish();
    }
}

fn naive(c: &mut Criterion) {
    let keys = client_keys();
    let mut group = c.benchmark_group("naive");
    for n in SIZES {
        let weights = targets(n);
        let mut rng = Rng(1);
        group.bench_with_input(BenchmarkId::new("random_cumulative_vec", n), &n, |b, _| {
            b.iter(|| naive_random(black_box(&weights), &mut rng, |_| true))
        });
        let mut k = 0usize;
        group.bench_with_input(BenchmarkId::new("rendezvous_hash", n), &n, |b, _| {
            b.iter(|| {
                k = (k + 1) & 1023;
                naive_rendezvous(black_box(&weights), keys[k], |_| true)
            })
        });
    }
    group.finish();
}

/// Building the balancer happens once per snapshot, not per request; shown for scale.
fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("build");
    for n in SIZES {
        let weights = targets(n);
        group.bench_with_input(BenchmarkId::new("consistent-hash", n), &n, |b, _| {
            b.iter(|| Balancer::new(Algorithm::ConsistentHash, black_box(&weights)))
        });
    }
    group.finish();
}

criterion_group!(benches, pick, naive, build);
criterion_main!(benches);
