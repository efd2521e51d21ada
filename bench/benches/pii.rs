//! `pii_masking` on the AI answer path: one pass over 4 KiB of clean prose (the common case:
//! a `RegexSet` pass that finds nothing and allocates nothing), the same text with entities
//! in it, and a stream of 4-character deltas through a `StreamMasker` (what a streamed
//! answer costs per event), against the naive alternative of one `Regex` pass per entity.
//!
//! `cargo bench -p shardgate-bench --bench pii -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use regex::Regex;
use shardgate_core::ai::pii::{PiiMasker, PiiSettings, StreamMasker};

const PROSE: &str = "The quick brown fox jumps over the lazy dog while the committee reviews \
                     the quarterly plan, and nobody mentions the weather or the schedule. ";

fn text(with_entities: bool) -> String {
    let mut text = String::new();
    while text.len() < 4096 {
        text.push_str(PROSE);
        if with_entities {
            text.push_str("Mail bob@example.com or pay 4111 1111 1111 1111. ");
        }
    }
    text.truncate(4096);
    text
}

fn masking(c: &mut Criterion) {
    let masker = Arc::new(PiiMasker::new(&PiiSettings::default()).expect("default settings"));
    // The naive version: every entity its own pass (no checks, so it does less work).
    let naive: Vec<Regex> = [
        r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
        r"\+?\d[\d .-]{6,}\d",
        r"\b(?:\d[ -]?){13,19}\b",
        r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
        r"\b(?:\d{1,3}\.){3}\d{1,3}\b",
        r"\b[0-9A-Fa-f:]*::?[0-9A-Fa-f:]+\b",
    ]
    .iter()
    .map(|p| Regex::new(p).expect("pattern"))
    .collect();
    let mut g = c.benchmark_group("pii_4k");
    g.throughput(Throughput::Bytes(4096));
    let clean = text(false);
    let dirty = text(true);
    g.bench_function("mask_clean", |b| b.iter(|| masker.mask(black_box(&clean))));
    g.bench_function("naive_clean", |b| {
        b.iter(|| {
            naive
                .iter()
                .filter(|r| r.is_match(black_box(&clean)))
                .count()
        })
    });
    g.bench_function("mask_with_entities", |b| {
        b.iter(|| masker.mask(black_box(&dirty)))
    });
    g.finish();

    let deltas: Vec<String> = clean
        .chars()
        .collect::<Vec<_>>()
        .chunks(4)
        .map(|c| c.iter().collect())
        .collect();
    let mut g = c.benchmark_group("pii_stream");
    g.throughput(Throughput::Elements(deltas.len() as u64));
    g.bench_function("push_4_char_deltas", |b| {
        b.iter(|| {
            let mut s = StreamMasker::new(masker.clone());
            let mut out = 0;
            for d in &deltas {
                out += s.push(black_box(d)).len();
            }
            out + s.finish().len()
        })
    });
    g.finish();
}

criterion_group!(benches, masking);
criterion_main!(benches);
