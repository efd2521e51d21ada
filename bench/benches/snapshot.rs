//! Snapshot compilation after one admin write, with 100 000 keys and 100 rules present:
//! the incremental path the admin thread takes (`Snapshot::next`, which recompiles one
//! gateway and clones its key table's small delta) against the naive full rebuild
//! (`Snapshot::compile` of everything).

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use shardgate_bench::fixture;
use shardgate_core::snapshot::{LiteralOnly, Snapshot};
use shardgate_core::state::{Child, Mutation};
use uuid::Uuid;

fn compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_after_key_write_100k_keys");
    group.sample_size(20);
    let (mut state, gateway_id, _) = fixture::gateway_with(100, 100_000);
    let base = Snapshot::compile(1, &state, &LiteralOnly);
    let mut n = 1_000_000usize;

    group.bench_function("incremental_next", |b| {
        b.iter_batched(
            || {
                n += 1;
                Mutation::Put {
                    gateway_id,
                    entity: Child::Key(fixture::record(Uuid::now_v7(), fixture::stored_key(n))),
                }
            },
            |m| {
                if let Err(e) = state.apply(&m) {
                    panic!("{e}");
                }
                base.next(2, &state, Some(gateway_id), &LiteralOnly)
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("naive_full_compile", |b| {
        b.iter(|| Snapshot::compile(2, &state, &LiteralOnly))
    });
    group.finish();
}

criterion_group!(benches, compile);
criterion_main!(benches);
