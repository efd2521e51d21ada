//! Issue 13: the cost of request metrics. `scrape_10k_rules`: one `/metrics` render (every
//! worker's registry summed and named) after traffic on each of 10 000 rules, with two
//! workers and two status codes per rule (40 000 series counted, 20 000 rendered) — the
//! issue asks for under 50 ms. `record`: what one request adds to a worker (one lock,
//! three map updates, two histogram observations).

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use shardgate_bench::fixture;
use shardgate_core::metrics::{self, Observation, Telemetry};
use shardgate_core::snapshot::{LiteralOnly, Snapshot};

const RULES: usize = 10_000;

fn scrape(c: &mut Criterion) {
    let (state, gateway_id, _) = fixture::gateway_with(RULES, 0);
    let snapshot = Snapshot::compile(1, &state, &LiteralOnly);
    let Some(gateway) = snapshot.gateway_by_id(gateway_id) else {
        panic!("the fixture's gateway compiled");
    };
    let service = gateway.services.keys().next().copied().unwrap_or_default();
    let upstream = gateway.upstreams.keys().next().copied().unwrap_or_default();
    let telemetry = Telemetry::new(2);
    for (w, worker) in telemetry.workers.iter().enumerate() {
        for (i, rule) in gateway.rules.iter().enumerate() {
            for status in [200, 502] {
                worker.record(
                    &Observation {
                        gateway: gateway_id,
                        rule: rule.id,
                        service,
                        method: 0,
                        status,
                        total_us: (i as u64 * 37 + w as u64) % 100_000,
                        upstream_us: Some(i as u64 % 50_000),
                        bytes_in: 100,
                        bytes_out: 1024,
                        upstream,
                        attempts: 1,
                        ..Observation::default()
                    },
                    true,
                    false,
                );
            }
        }
    }
    let dimensions = ["global", "per_ip", "per_user"];
    let mut out = String::new();
    metrics::render(&mut out, &telemetry, &snapshot, &dimensions);
    let series = out
        .lines()
        .filter(|l| l.starts_with("shardgate_http_requests_total{"))
        .count();
    assert_eq!(series, RULES * 2, "every rule × status is rendered once");

    let mut group = c.benchmark_group("metrics");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("scrape_10k_rules", |b| {
        b.iter(|| {
            let mut out = String::with_capacity(8 << 20);
            metrics::render(&mut out, &telemetry, &snapshot, &dimensions);
            out.len()
        })
    });
    let worker = &telemetry.workers[0];
    let one = Observation {
        gateway: gateway_id,
        rule: gateway.rules[0].id,
        service,
        status: 200,
        total_us: 180,
        upstream_us: Some(120),
        bytes_in: 100,
        bytes_out: 1024,
        upstream,
        attempts: 1,
        ..Observation::default()
    };
    group.bench_function("record", |b| b.iter(|| worker.record(&one, true, false)));
    // The same request also counted for its key's usage (one lock for both).
    let keyed = Observation {
        key: uuid::Uuid::from_u128(42),
        client_ip: Some(std::net::IpAddr::from([127, 0, 0, 2])),
        ..one.clone()
    };
    group.bench_function("record_with_usage", |b| {
        b.iter(|| worker.record(&keyed, true, true))
    });
    group.finish();
}

criterion_group!(benches, scrape);
criterion_main!(benches);
