//! The AI stream relay's own work per event, hot in cache (what `bench/src/bin/ai_bench.rs`
//! measures end to end, kernel and wake-ups included): one provider read holding one
//! OpenAI chunk, de-chunked, parsed as SSE, read, its text masked by `pii_masking`
//! (default entities, 256-byte window) and written out as SSE in an HTTP chunk.
//!
//! - `plain`: the plain proxy path's work on the same read (the chunked-framing scan);
//! - `view`: the relay as it is (`ai::event::EventView`: typed, borrowing reads, the
//!   provider's bytes passed through with only the text's JSON string replaced);
//! - `document`: the relay as it was, and as it still is for translated streams: a
//!   `serde_json::Value` per event, written back out with `to_string`.
//!
//! `cargo bench -p shardgate-bench --bench ai_relay -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::io::Write as _;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::Value;
use shardgate_core::ai::api::{self, Api};
use shardgate_core::ai::event::{EventView, with_text};
use shardgate_core::ai::pii::{PiiMasker, PiiSettings, StreamMasker};
use shardgate_core::ai::sse::{SseParser, write_event};
use shardgate_core::http1::ChunkedScanner;

/// Events per stream: the masker's window fills after the first ~40, as in a real answer.
const EVENTS: usize = 64;

/// One provider read per event: an HTTP chunk holding one SSE event, as `ai_bench`'s
/// provider (and OpenAI) writes them.
fn reads() -> Vec<Vec<u8>> {
    (0..EVENTS)
        .map(|i| {
            let event = format!(
                "data: {{\"id\":\"chatcmpl-{i:08}\",\"object\":\"chat.completion.chunk\",\"created\":1732400000,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" lorem\"}},\"finish_reason\":null}}]}}\n\n"
            );
            format!("{:x}\r\n{event}\r\n", event.len()).into_bytes()
        })
        .collect()
}

/// The relay's side of one stream; `view` picks the path.
fn relay(reads: &[Vec<u8>], masker: &Arc<PiiMasker>, view: bool) -> usize {
    let mut scanner = ChunkedScanner::default();
    let mut parser = SseParser::new(1 << 20);
    let mut mask = StreamMasker::new(masker.clone());
    let (mut decoded, mut out, mut frame) = (Vec::new(), Vec::new(), Vec::new());
    let mut scratch = String::new();
    let mut written = 0;
    for read in reads {
        decoded.clear();
        let _ = scanner.decode(read, &mut decoded);
        let _ = parser.push(&decoded);
        while let Some(event) = parser.next_event() {
            if view {
                let Some(v) = EventView::parse(Api::OpenAi, &event.data) else {
                    continue;
                };
                match v.text {
                    Some(delta) => {
                        let text = mask.push(&delta.text);
                        with_text(&mut scratch, &event.data, &delta.span, &text);
                        write_event(&mut out, None, &scratch);
                    }
                    None => write_event(&mut out, None, &event.data),
                }
            } else {
                let Ok(mut doc) = serde_json::from_str::<Value>(&event.data) else {
                    continue;
                };
                let _ = api::usage_of(Api::OpenAi, &doc);
                if let Some(text) = api::text_delta_mut(Api::OpenAi, &mut doc) {
                    let t = std::mem::take(text);
                    *text = mask.push(&t);
                }
                let _ = api::ends_text(Api::OpenAi, &doc);
                write_event(&mut out, None, &doc.to_string());
            }
        }
        frame.clear();
        let _ = write!(frame, "{:x}\r\n", out.len());
        frame.extend_from_slice(&out);
        frame.extend_from_slice(b"\r\n");
        written += frame.len();
        out.clear();
    }
    written
}

fn plain(reads: &[Vec<u8>]) -> usize {
    let mut scanner = ChunkedScanner::default();
    reads
        .iter()
        .map(|r| scanner.scan(r).map_or(0, |s| s.consumed))
        .sum()
}

fn relay_per_event(c: &mut Criterion) {
    let masker = Arc::new(PiiMasker::new(&PiiSettings::default()).expect("default settings"));
    let reads = reads();
    let mut g = c.benchmark_group("ai_relay_64_events");
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.bench_function("plain", |b| b.iter(|| plain(black_box(&reads))));
    g.bench_function("view", |b| {
        b.iter(|| relay(black_box(&reads), &masker, true))
    });
    g.bench_function("document", |b| {
        b.iter(|| relay(black_box(&reads), &masker, false))
    });
    g.finish();
}

criterion_group!(benches, relay_per_event);
criterion_main!(benches);
