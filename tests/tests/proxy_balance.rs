//! Load balancing through the real proxy (issue 3, "Services and upstreams"): each
//! algorithm's distribution over ≥ 1000 requests, weight 0, priority tiers, retries past a
//! dead target, fallback upstreams and weighted services (traffic shifting).
//!
//! Every request opens a fresh connection, so SO_REUSEPORT spreads them over the workers,
//! and each worker keeps its own balancer cursor (DESIGN.md §2): a deterministic algorithm
//! is exact per worker, and the tolerances below add one worker's rounding per worker.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use shardgate_tests::tenant::Tenant;
use shardgate_tests::upstream::{CountingServer, DeadPort};
use shardgate_tests::{Client, Options, Shardgate, Value, io_drivers, json};

const WORKERS: usize = 2;

fn start(driver: &str) -> Shardgate {
    Shardgate::start(Options::new().io_driver(driver).workers(WORKERS))
}

/// Sends `n` GETs for `path`, each on a fresh connection, and counts which upstream
/// (`X-Upstream`) answered; every answer must be 200.
fn tally(client: &Client, path: &str, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let resp = client.get(path);
        assert_eq!(resp.status, 200, "request {i} to {path}: {resp}");
        let who = resp
            .header("x-upstream")
            .unwrap_or_else(|| panic!("no X-Upstream in {resp}"))
            .to_owned();
        *counts.entry(who).or_insert(0) += 1;
    }
    counts
}

fn count(counts: &BTreeMap<String, usize>, who: &str) -> usize {
    counts.get(who).copied().unwrap_or(0)
}

#[track_caller]
fn assert_near(actual: usize, expected: f64, tolerance: f64, what: &str) {
    assert!(
        (actual as f64 - expected).abs() <= tolerance,
        "{what}: got {actual}, expected {expected} ± {tolerance}"
    );
}

/// Three counting servers `a`, `b`, `c` and their targets with these weights.
fn three(weights: [u32; 3]) -> (Vec<CountingServer>, Vec<Value>) {
    let servers: Vec<CountingServer> = ["a", "b", "c"]
        .into_iter()
        .map(CountingServer::start)
        .collect();
    let targets = servers
        .iter()
        .zip(weights)
        .map(|(s, w)| s.target(json!({"weight": w})))
        .collect();
    (servers, targets)
}

#[test]
fn round_robin_spreads_requests_equally() {
    const N: usize = 1200;
    for driver in io_drivers() {
        let sg = start(driver);
        let tenant = Tenant::create(&sg, "rr");
        let (_servers, targets) = three([100, 100, 100]);
        tenant.route(
            "rr",
            "/rr",
            targets,
            json!({"algorithm": "round-robin"}),
            json!({}),
        );
        let counts = tally(&tenant.client(), "/rr", N);
        // Exact per worker: each worker's share splits into equal thirds ± 1.
        for who in ["a", "b", "c"] {
            assert_near(
                count(&counts, who),
                N as f64 / 3.0,
                WORKERS as f64,
                &format!("[{driver}] round-robin share of {who} in {counts:?}"),
            );
        }
    }
}

#[test]
fn weight_zero_target_receives_nothing() {
    const N: usize = 1000;
    for driver in io_drivers() {
        let sg = start(driver);
        let tenant = Tenant::create(&sg, "drain");
        let (servers, targets) = three([100, 100, 0]);
        tenant.route(
            "drain",
            "/d",
            targets,
            json!({"algorithm": "round-robin"}),
            json!({}),
        );
        let counts = tally(&tenant.client(), "/d", N);
        assert_eq!(
            servers[2].count(),
            0,
            "[{driver}] the weight-0 target got traffic: {counts:?}"
        );
        for who in ["a", "b"] {
            assert_near(
                count(&counts, who),
                N as f64 / 2.0,
                WORKERS as f64,
                &format!("[{driver}] share of {who} in {counts:?}"),
            );
        }
    }
}

#[test]
fn weighted_round_robin_matches_weights() {
    const N: usize = 1000;
    for driver in io_drivers() {
        let sg = start(driver);
        let tenant = Tenant::create(&sg, "wrr");
        let (_servers, targets) = three([50, 30, 20]);
        tenant.route(
            "wrr",
            "/w",
            targets,
            json!({"algorithm": "weighted-round-robin"}),
            json!({}),
        );
        let counts = tally(&tenant.client(), "/w", N);
        // Smooth WRR is exact over every cycle of 5+3+2 = 10 picks per worker; each
        // worker's last, partial cycle is off by less than a cycle: ± 10 per worker.
        let tolerance = (10 * WORKERS) as f64;
        for (who, share) in [("a", 0.5), ("b", 0.3), ("c", 0.2)] {
            assert_near(
                count(&counts, who),
                N as f64 * share,
                tolerance,
                &format!("[{driver}] weighted-round-robin share of {who} in {counts:?}"),
            );
        }
    }
}

#[test]
fn random_matches_weights_within_five_percent() {
    const N: usize = 2000;
    for driver in io_drivers() {
        let sg = start(driver);
        let tenant = Tenant::create(&sg, "rand");
        let (_servers, targets) = three([50, 30, 20]);
        tenant.route(
            "rand",
            "/r",
            targets,
            json!({"algorithm": "random"}),
            json!({}),
        );
        let counts = tally(&tenant.client(), "/r", N);
        // ± 5 % of the total = 100 requests; the largest standard deviation of a share
        // (p = 0.5) is √(2000 · 0.25) ≈ 22, so this is ≥ 4.5 σ: not flaky.
        for (who, share) in [("a", 0.5), ("b", 0.3), ("c", 0.2)] {
            assert_near(
                count(&counts, who),
                N as f64 * share,
                N as f64 * 0.05,
                &format!("[{driver}] random share of {who} in {counts:?}"),
            );
        }
    }
}

#[test]
fn least_connections_steers_away_from_a_slow_target() {
    const N: usize = 1000;
    const CLIENTS: usize = 4;
    for driver in io_drivers() {
        let sg = start(driver);
        let tenant = Tenant::create(&sg, "lc");
        let slow = CountingServer::builder("slow")
            .delay(Duration::from_millis(100))
            .start();
        let fast = CountingServer::start("fast");
        tenant.route(
            "lc",
            "/lc",
            vec![slow.target(json!({})), fast.target(json!({}))],
            json!({"algorithm": "least-connections"}),
            json!({}),
        );
        // Concurrent clients: a request stuck on the slow target keeps its in-flight count
        // up, so each worker sends the next ones to the fast target. Round-robin would give
        // the slow one half.
        let sent = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (client, sent) = (tenant.client(), sent.clone());
                thread::spawn(move || {
                    while sent.fetch_add(1, Ordering::SeqCst) < N {
                        client.get("/lc").expect_status(200);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("a client thread panicked");
        }
        let (s, f) = (slow.count(), fast.count());
        eprintln!("[{driver}] least-connections: slow {s}, fast {f}");
        assert_eq!(s + f, N, "[{driver}]");
        assert!(
            s * 5 < N,
            "[{driver}] least-connections sent {s} of {N} requests to the slow target \
             (fast got {f}); expected under 20 %"
        );
    }
}

#[test]
fn consistent_hash_keeps_each_client_ip_on_one_target() {
    const PER_IP: usize = 53;
    for driver in io_drivers() {
        let sg = start(driver);
        let tenant = Tenant::create(&sg, "ch");
        let (_servers, targets) = three([100, 100, 100]);
        tenant.route(
            "ch",
            "/ch",
            targets,
            json!({"algorithm": "consistent-hash"}),
            json!({}),
        );
        let mut by_ip = BTreeMap::new();
        // 19 client addresses × 53 = 1007 requests, each on a fresh connection (so both
        // workers serve every address: the mapping must not depend on the worker).
        for last in 2..=20u8 {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
            let counts = tally(&tenant.client().source_ip(ip), "/ch", PER_IP);
            assert_eq!(
                counts.len(),
                1,
                "[{driver}] requests from {ip} went to several targets: {counts:?}"
            );
            let who = counts.keys().next().cloned().unwrap_or_default();
            by_ip.insert(ip, who);
        }
        let used: std::collections::BTreeSet<&String> = by_ip.values().collect();
        assert!(
            used.len() >= 2,
            "[{driver}] 19 client addresses all hashed to one target: {by_ip:?}"
        );
    }
}

#[test]
fn priority_tiers_fail_over_to_the_next_tier() {
    const N: usize = 100;
    for driver in io_drivers() {
        let sg = start(driver);
        let tenant = Tenant::create(&sg, "tiers");
        let primary = CountingServer::start("primary");
        let backup = CountingServer::start("backup");
        let last_resort = CountingServer::start("last-resort");

        // Healthy tier 0 takes everything.
        tenant.route(
            "healthy",
            "/healthy",
            vec![
                primary.target(json!({"priority": 0})),
                backup.target(json!({"priority": 1})),
            ],
            json!({}),
            json!({}),
        );
        let counts = tally(&tenant.client(), "/healthy", N);
        assert_eq!(count(&counts, "primary"), N, "[{driver}] {counts:?}");

        // Tier 0 dead: tier 1 takes everything, tier 2 nothing.
        let dead = DeadPort::reserve();
        tenant.route(
            "failover",
            "/failover",
            vec![
                dead.target(json!({"priority": 0})),
                backup.target(json!({"priority": 1})),
                last_resort.target(json!({"priority": 2})),
            ],
            json!({}),
            json!({}),
        );
        let counts = tally(&tenant.client(), "/failover", N);
        assert_eq!(count(&counts, "backup"), N, "[{driver}] {counts:?}");
        assert_eq!(last_resort.count(), 0, "[{driver}]");
    }
}

#[test]
fn dead_target_is_skipped_via_retry() {
    const N: usize = 300;
    for driver in io_drivers() {
        let sg = start(driver);
        let tenant = Tenant::create(&sg, "retry");
        let a = CountingServer::start("a");
        let b = CountingServer::start("b");
        let dead = DeadPort::reserve();
        tenant.route(
            "retry",
            "/x",
            vec![
                dead.target(json!({})),
                a.target(json!({})),
                b.target(json!({})),
            ],
            json!({"algorithm": "round-robin"}),
            json!({}),
        );
        // Non-idempotent requests are retried after a connect failure too: nothing was sent.
        let counts = tally(&tenant.client(), "/x", N);
        let posted = tenant
            .client()
            .request("POST", "/x", &[], b"once")
            .expect_status(200);
        assert!(posted.text().contains("POST /x"), "[{driver}] {posted}");
        assert_eq!(count(&counts, "a") + count(&counts, "b"), N, "[{driver}]");
        assert!(
            count(&counts, "a") > 0 && count(&counts, "b") > 0,
            "[{driver}] {counts:?}"
        );
        let posts = a
            .requests()
            .into_iter()
            .chain(b.requests())
            .filter(|r| r.method == "POST")
            .count();
        assert_eq!(posts, 1, "[{driver}] the POST reached an upstream once");
    }
}

#[test]
fn fallback_upstream_serves_when_every_primary_target_is_dead() {
    const N: usize = 100;
    for driver in io_drivers() {
        let sg = start(driver);
        let tenant = Tenant::create(&sg, "fallback");
        let spare = CountingServer::start("spare");
        let (dead1, dead2) = (DeadPort::reserve(), DeadPort::reserve());
        let primary = tenant.upstream(
            "primary",
            vec![dead1.target(json!({})), dead2.target(json!({}))],
            json!({}),
        );
        let fallback = tenant.upstream("fallback", vec![spare.target(json!({}))], json!({}));
        let service = tenant.service(
            "svc",
            &primary,
            json!({"fallback_upstream_ids": [fallback]}),
        );
        tenant.rule(json!({"path": "/x", "service_id": service}));
        let counts = tally(&tenant.client(), "/x", N);
        assert_eq!(count(&counts, "spare"), N, "[{driver}] {counts:?}");
    }
}

#[test]
fn weighted_services_shift_traffic_by_weight() {
    const N: usize = 1000;
    for driver in io_drivers() {
        let sg = start(driver);
        let tenant = Tenant::create(&sg, "shift");
        let blue = CountingServer::start("blue");
        let green = CountingServer::start("green");
        let blue_up = tenant.upstream("blue", vec![blue.target(json!({}))], json!({}));
        let green_up = tenant.upstream("green", vec![green.target(json!({}))], json!({}));
        let blue_svc = tenant.service("blue", &blue_up, json!({}));
        let green_svc = tenant.service("green", &green_up, json!({}));
        tenant.rule(json!({"path": "/canary", "services": [
            {"service_id": blue_svc, "weight": 90},
            {"service_id": green_svc, "weight": 10},
        ]}));
        tenant.rule(json!({"path": "/drained", "services": [
            {"service_id": blue_svc, "weight": 100},
            {"service_id": green_svc, "weight": 0},
        ]}));

        let counts = tally(&tenant.client(), "/canary", N);
        // Smooth weighted round-robin over services: exact per cycle of 9+1 = 10 picks per
        // worker, ± 10 per worker for the partial last cycle.
        assert_near(
            count(&counts, "green"),
            N as f64 * 0.1,
            (10 * WORKERS) as f64,
            &format!("[{driver}] canary share in {counts:?}"),
        );
        green.clear();
        let counts = tally(&tenant.client(), "/drained", 200);
        assert_eq!(count(&counts, "blue"), 200, "[{driver}] {counts:?}");
        assert_eq!(green.count(), 0, "[{driver}]");
    }
}

#[test]
fn idempotent_requests_retry_an_upstream_503_on_another_target_and_posts_do_not() {
    const N: usize = 100;
    for driver in io_drivers() {
        let sg = start(driver);
        let tenant = Tenant::create(&sg, "flaky");
        let broken = CountingServer::builder("broken").status(503).start();
        let good = CountingServer::start("good");
        tenant.route(
            "flaky",
            "/x",
            vec![broken.target(json!({})), good.target(json!({}))],
            json!({"algorithm": "round-robin"}),
            json!({}),
        );
        let counts = tally(&tenant.client(), "/x", N);
        assert_eq!(count(&counts, "good"), N, "[{driver}] {counts:?}");
        assert!(
            broken.count() > 0,
            "[{driver}] round-robin never tried the broken target"
        );

        // A POST may have had effects: the 503 is relayed, never retried elsewhere.
        let mut relayed = 0;
        for i in 0..N {
            let resp = tenant
                .client()
                .request("POST", "/x", &[], format!("post {i}").as_bytes());
            match resp.status {
                200 => {}
                503 => {
                    relayed += 1;
                    assert_eq!(resp.header("x-upstream"), Some("broken"), "[{driver}]");
                }
                other => panic!("[{driver}] POST got {other}: {resp}"),
            }
        }
        let posts: usize = [&broken, &good]
            .iter()
            .map(|s| s.requests().iter().filter(|r| r.method == "POST").count())
            .sum();
        assert_eq!(
            posts, N,
            "[{driver}] each POST reached an upstream exactly once"
        );
        assert!(relayed > 0, "[{driver}] no POST went to the broken target");
    }
}
