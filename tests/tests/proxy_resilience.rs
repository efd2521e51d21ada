//! Surviving failing upstreams: the per-target circuit breaker (closed → open → half-open
//! → closed, driven by a real upstream that fails and recovers, whose own request count
//! proves an open circuit sends nothing), the service's retry policy and retry budget,
//! per-target `max_connections`, and TCP health checks bringing the same target back.

use std::thread;
use std::time::{Duration, Instant};

use shardgate_tests::tenant::Tenant;
use shardgate_tests::upstream::{CountingServer, DeadPort};
use shardgate_tests::{Options, Resp, Shardgate, io_drivers, json};

/// Polls `check` every 50 ms for up to `limit`.
fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

fn circuit_open(resp: &Resp) -> bool {
    resp.status == 503 && resp.text().contains("circuit breaker is open")
}

#[test]
fn an_open_circuit_sends_nothing_then_probes_and_closes_when_the_target_recovers() {
    for driver in io_drivers() {
        // One worker: the breaker is per worker, and this test follows one.
        let sg = Shardgate::start(Options::new().io_driver(driver).workers(1));
        let tenant = Tenant::create(&sg, "breaker");
        let address = DeadPort::reserve();
        let failing = CountingServer::builder("only")
            .status(500)
            .start_on(&address);
        let upstream = tenant.upstream(
            "pool",
            vec![address.target(json!({}))],
            json!({"circuit_breaker": {
                "failure_threshold": 3, "open_duration": "1s", "half_open_probes": 1
            }}),
        );
        let service = tenant.service("svc", &upstream, json!({"retries": 0}));
        tenant.rule(json!({"path": "/x", "service_id": service}));
        let client = tenant.client();

        // Closed: the failures reach the target and are relayed as they are.
        for i in 0..3 {
            let resp = client.get("/x");
            assert_eq!(
                resp.status, 500,
                "[{driver}] failure {i} is relayed: {resp}"
            );
        }
        assert_eq!(failing.count(), 3, "[{driver}]");

        // Open: the gateway answers itself and the target sees nothing.
        for i in 0..5 {
            let resp = client.get("/x");
            assert!(
                circuit_open(&resp),
                "[{driver}] request {i} while open: {resp}"
            );
        }
        assert_eq!(
            failing.count(),
            3,
            "[{driver}] an open circuit sent requests to the target"
        );
        let metrics = sg.admin().get("/metrics").expect_status(200).text();
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("shardgate_circuit_state{")
                    && l.contains("state=\"open\"")
                    && l.ends_with(" 1")),
            "[{driver}] /metrics shows the open circuit:\n{metrics}"
        );

        // Half-open after open_duration: one probe goes through, fails, and reopens it.
        thread::sleep(Duration::from_millis(1100));
        let probe = client.get("/x");
        assert_eq!(
            probe.status, 500,
            "[{driver}] the probe reached the target: {probe}"
        );
        assert_eq!(failing.count(), 4, "[{driver}] exactly one probe");
        let resp = client.get("/x");
        assert!(
            circuit_open(&resp),
            "[{driver}] a failed probe reopens: {resp}"
        );
        assert_eq!(failing.count(), 4, "[{driver}]");

        // The target recovers at the same address: the next probe closes the circuit.
        drop(failing);
        let healthy = CountingServer::builder("only").start_on(&address);
        thread::sleep(Duration::from_millis(1100));
        for i in 0..5 {
            let resp = client.get("/x");
            assert_eq!(
                resp.status, 200,
                "[{driver}] request {i} after recovery: {resp}"
            );
        }
        assert_eq!(healthy.count(), 5, "[{driver}]");
        let metrics = sg.admin().get("/metrics").expect_status(200).text();
        assert!(
            !metrics.contains("state=\"open\"") && !metrics.contains("state=\"half_open\""),
            "[{driver}] the circuit is closed again:\n{metrics}"
        );
    }
}

#[test]
fn an_error_rate_opens_the_circuit_without_consecutive_failures() {
    let sg = Shardgate::start(Options::new().workers(1));
    let tenant = Tenant::create(&sg, "rate");
    let failing = CountingServer::builder("bad").status(503).start();
    let upstream = tenant.upstream(
        "pool",
        vec![failing.target(json!({}))],
        json!({"circuit_breaker": {
            "failure_threshold": 1000, "open_duration": "30s",
            "error_rate": {"percent": 50, "window": "10s", "min_requests": 4}
        }}),
    );
    let service = tenant.service("svc", &upstream, json!({"retries": 0}));
    tenant.rule(json!({"path": "/x", "service_id": service}));
    let client = tenant.client();
    for _ in 0..4 {
        assert_eq!(client.get("/x").status, 503);
    }
    let resp = client.get("/x");
    assert!(circuit_open(&resp), "4 of 4 failed (≥ 50 %): open: {resp}");
    assert_eq!(failing.count(), 4);
}

#[test]
fn retries_stay_within_the_budget_when_every_attempt_fails() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver).workers(2));
        let tenant = Tenant::create(&sg, "budget");
        let a = CountingServer::builder("a").status(503).start();
        let b = CountingServer::builder("b").status(503).start();
        let upstream = tenant.upstream(
            "pool",
            vec![a.target(json!({})), b.target(json!({}))],
            json!({}),
        );
        let service = tenant.service(
            "svc",
            &upstream,
            json!({"retries": 3, "retry_policy": {
                "budget_percent": 20, "min_retries_per_second": 0,
                "backoff_base": "1ms", "backoff_max": "5ms"
            }}),
        );
        tenant.rule(json!({"path": "/x", "service_id": service}));
        let requests = 60;
        let clients: Vec<_> = (0..3).map(|_| tenant.client()).collect();
        for i in 0..requests {
            let resp = clients[i % 3].get("/x");
            assert_eq!(resp.status, 503, "[{driver}] request {i}: {resp}");
        }
        let attempts = a.count() + b.count();
        // Each worker allows retries up to 20 % of its own requests: so does their sum.
        assert!(
            attempts <= requests + requests / 5,
            "[{driver}] {attempts} upstream attempts for {requests} requests: over the 20 % budget"
        );
        assert!(
            attempts > requests,
            "[{driver}] some retries were made within the budget ({attempts})"
        );
        let metrics = sg.admin().get("/metrics").expect_status(200).text();
        let exhausted = metrics
            .lines()
            .find(|l| {
                l.starts_with("shardgate_upstream_retry_budget_exhausted_total{gateway=\"budget\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(
            exhausted > 0,
            "[{driver}] the budget ran out and was counted:\n{metrics}"
        );
    }
}

#[test]
fn the_retry_policy_chooses_statuses_and_methods() {
    let sg = Shardgate::start(Options::new().workers(1));
    let tenant = Tenant::create(&sg, "policy");
    let bad = CountingServer::builder("bad").status(504).start();
    let good = CountingServer::builder("good").start();
    let targets = || vec![bad.target(json!({})), good.target(json!({}))];
    let generous =
        json!({"min_retries_per_second": 100, "backoff_base": "1ms", "backoff_max": "1ms"});

    // The default policy retries 502 and 503, not 504: the 504 is relayed.
    let default = tenant.upstream("default", targets(), json!({}));
    let service = tenant.service(
        "default",
        &default,
        json!({"retries": 1, "retry_policy": generous}),
    );
    tenant.rule(json!({"path": "/default", "service_id": service}));
    // 504 listed: GETs move on to the good target; POSTs only with non_idempotent.
    let listed = tenant.upstream("listed", targets(), json!({}));
    let mut policy = generous.clone();
    policy["on"] = json!(["connect-failure", 504]);
    let service = tenant.service(
        "listed",
        &listed,
        json!({"retries": 1, "retry_policy": policy}),
    );
    tenant.rule(json!({"path": "/listed", "service_id": service}));
    let anything = tenant.upstream("anything", targets(), json!({}));
    let mut policy = generous.clone();
    policy["on"] = json!([504]);
    policy["non_idempotent"] = json!(true);
    let service = tenant.service(
        "anything",
        &anything,
        json!({"retries": 1, "retry_policy": policy}),
    );
    tenant.rule(json!({"path": "/anything", "service_id": service}));

    let client = tenant.client();
    // Round-robin starts anywhere: two requests see the bad target first once.
    let statuses = |path: &str, method: &str| -> Vec<u16> {
        (0..2)
            .map(|_| client.request(method, path, &[], b"{}").status)
            .collect()
    };
    assert!(
        statuses("/default", "GET").contains(&504),
        "504 is not retried by default"
    );
    assert_eq!(
        statuses("/listed", "GET"),
        vec![200, 200],
        "504 listed: retried"
    );
    assert!(
        statuses("/listed", "POST").contains(&504),
        "a POST is not retried after it was sent"
    );
    assert_eq!(
        statuses("/anything", "POST"),
        vec![200, 200],
        "non_idempotent: a POST is retried too"
    );

    // Bad policies are refused with the field named.
    let resp = sg.admin().post_json(
        &tenant.collection("services"),
        &json!({"name": "x", "upstream_id": default, "retry_policy": {"on": ["sometimes"]}}),
    );
    assert_eq!(resp.status, 400, "{resp}");
    assert!(resp.error().contains("retry_policy"), "{resp}");
    let resp = sg.admin().post_json(
        &tenant.collection("services"),
        &json!({"name": "y", "upstream_id": default, "retry_policy": {"on": [404]}}),
    );
    assert_eq!(resp.status, 400, "{resp}");
}

#[test]
fn a_target_at_max_connections_makes_the_next_request_wait_then_503() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver).workers(1));
        let tenant = Tenant::create(&sg, "maxconn");
        let slow = CountingServer::builder("slow")
            .delay(Duration::from_millis(600))
            .start();
        let target = slow.target(json!({"max_connections": 1}));
        // Waits for a place are bounded by connect_timeout.
        let short = tenant.upstream(
            "short",
            vec![target.clone()],
            json!({"connect_timeout": "200ms"}),
        );
        let service = tenant.service("short", &short, json!({}));
        tenant.rule(json!({"path": "/short", "service_id": service}));
        let long = tenant.upstream("long", vec![target], json!({"connect_timeout": "3s"}));
        let service = tenant.service("long", &long, json!({}));
        tenant.rule(json!({"path": "/long", "service_id": service}));

        let run_pair = |path: &'static str| -> Vec<Resp> {
            let first = {
                let client = tenant.client();
                thread::spawn(move || client.get(path))
            };
            thread::sleep(Duration::from_millis(150));
            let second = tenant.client().get(path);
            let first = first.join().expect("first request");
            vec![first, second]
        };
        let short = run_pair("/short");
        assert_eq!(short[0].status, 200, "[{driver}] {}", short[0]);
        assert_eq!(short[1].status, 503, "[{driver}] {}", short[1]);
        assert!(
            short[1].text().contains("connection limit"),
            "[{driver}] {}",
            short[1]
        );
        let long = run_pair("/long");
        assert!(
            long.iter().all(|r| r.status == 200),
            "[{driver}] the second request waited for the place: {} / {}",
            long[0],
            long[1]
        );
        assert_eq!(
            slow.count(),
            3,
            "[{driver}] the refused request never reached it"
        );
    }
}

#[test]
fn a_tcp_checked_target_goes_down_when_its_server_stops_and_comes_back_when_it_restarts() {
    let sg = Shardgate::start(Options::new().workers(2));
    let tenant = Tenant::create(&sg, "tcpcheck");
    let address = DeadPort::reserve();
    let server = CountingServer::builder("only").start_on(&address);
    let upstream = tenant.upstream(
        "pool",
        vec![address.target(json!({}))],
        json!({"health_checks": {"active": {
            "type": "tcp", "interval": "100ms", "timeout": "200ms",
            "unhealthy_threshold": 2, "healthy_threshold": 3
        }}}),
    );
    let service = tenant.service("svc", &upstream, json!({"retries": 0}));
    tenant.rule(json!({"path": "/x", "service_id": service}));
    let client = tenant.client();
    assert!(eventually(Duration::from_secs(5), || client
        .get("/x")
        .status
        == 200));
    // TCP probes only connect: the server saw no probe request.
    assert!(server.requests().iter().all(|r| r.target == "/x"));

    drop(server);
    let down = eventually(Duration::from_secs(5), || {
        let resp = client.get("/x");
        resp.status == 503 && resp.text().contains("no healthy upstream target")
    });
    assert!(
        down,
        "a target whose port refuses connections was never marked down"
    );

    let restarted = CountingServer::builder("only").start_on(&address);
    let started = Instant::now();
    let back = eventually(Duration::from_secs(5), || client.get("/x").status == 200);
    assert!(back, "the same target never came back");
    // healthy_threshold 3 at a 100 ms interval: not before the third good probe.
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "back after {:?}, before three good probes",
        started.elapsed()
    );
    assert!(restarted.count() >= 1);
}
