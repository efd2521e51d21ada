//! API-key lookup per request: hash the presented key (SHA-256) and find it in the
//! gateway's `KeyTable` (digest-keyed, base + delta), for 10 and 1 000 000 keys, against
//! the naive table a first version would write: `HashMap<String, Entry>` keyed by the
//! plaintext with std's SipHash (which also keeps the secrets in memory), and a linear scan
//! for the small case.

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use shardgate_core::keys::{KeyEntry, KeyTable, hash_key};
use uuid::Uuid;

fn plaintext(i: usize) -> String {
    format!("sgk_{i:043}")
}

fn entry(i: usize) -> KeyEntry {
    KeyEntry::new(Uuid::from_u128(i as u128), None, true)
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("key_lookup");
    for n in [10usize, 1_000_000] {
        let table =
            KeyTable::from_entries((0..n).map(|i| (hash_key(plaintext(i).as_bytes()), entry(i))));
        let naive: HashMap<String, KeyEntry> = (0..n).map(|i| (plaintext(i), entry(i))).collect();
        let probe = plaintext(n / 2);
        let miss = plaintext(n + 7);

        group.bench_with_input(
            BenchmarkId::new("keytable_sha256_hit", n),
            &probe,
            |b, key| {
                b.iter(|| {
                    table
                        .get(&hash_key(black_box(key.as_bytes())))
                        .map(|e| e.active)
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("keytable_sha256_miss", n),
            &miss,
            |b, key| b.iter(|| table.get(&hash_key(black_box(key.as_bytes()))).is_some()),
        );
        let digest = hash_key(probe.as_bytes());
        group.bench_with_input(
            BenchmarkId::new("keytable_lookup_only", n),
            &digest,
            |b, d| b.iter(|| table.get(black_box(d)).map(|e| e.active)),
        );
        group.bench_with_input(
            BenchmarkId::new("naive_plaintext_siphash", n),
            &probe,
            |b, key| b.iter(|| naive.get(black_box(key.as_str())).map(|e| e.active)),
        );
        if n <= 10 {
            let list: Vec<(String, KeyEntry)> = (0..n).map(|i| (plaintext(i), entry(i))).collect();
            group.bench_with_input(
                BenchmarkId::new("naive_linear_scan", n),
                &probe,
                |b, key| {
                    b.iter(|| {
                        list.iter()
                            .find(|(k, _)| k == black_box(key))
                            .map(|(_, e)| e.active)
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
