//! Active health checks (upstream `health_checks.active`): the admin thread probes each
//! target, takes one out after `unhealthy_threshold` failed probes and brings it back after
//! `healthy_threshold` good ones; workers then route around it without any retry.

use std::time::{Duration, Instant};

use shardgate_tests::tenant::{Tenant, merge};
use shardgate_tests::tls::{TestCa, TlsUpstream};
use shardgate_tests::upstream::{CountingServer, DeadPort};
use shardgate_tests::{Options, Shardgate, io_drivers, json};

fn active_check() -> shardgate_tests::Value {
    json!({"health_checks": {"active": {
        "path": "/health", "interval": "100ms", "timeout": "200ms",
        "unhealthy_threshold": 2, "healthy_threshold": 1
    }}})
}

/// Polls `check` every 50 ms for up to `limit`.
fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A service on `upstream` with no retries (so only health checks can keep requests off a
/// bad target) at `/x`; waits until six requests in a row succeed, then sends `n` more,
/// each of which must get 200: the client, for more checks.
fn only_healthy_targets_serve(
    tenant: &Tenant,
    upstream: &str,
    n: usize,
    driver: &str,
) -> shardgate_tests::Client {
    let service = tenant.service("svc", upstream, json!({"retries": 0}));
    tenant.rule(json!({"path": "/x", "service_id": service}));
    let client = tenant.client();
    let healthy = eventually(Duration::from_secs(5), || {
        (0..6).all(|_| client.get("/x").status == 200)
    });
    assert!(
        healthy,
        "[{driver}] the bad target was never taken out of rotation"
    );
    for i in 0..n {
        let resp = client.get("/x");
        assert_eq!(resp.status, 200, "[{driver}] request {i}: {resp}");
    }
    client
}

#[test]
fn a_target_failing_active_checks_gets_no_traffic_even_without_retries() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver).workers(2));
        let tenant = Tenant::create(&sg, "health");
        let live = CountingServer::start("live");
        let dead = DeadPort::reserve();
        let upstream = tenant.upstream(
            "pool",
            vec![live.target(json!({})), dead.target(json!({}))],
            active_check(),
        );
        only_healthy_targets_serve(&tenant, &upstream, 50, driver);
        // The probes themselves reach the live target at its health path.
        assert!(
            live.requests().iter().any(|seen| seen.target == "/health"),
            "[{driver}] no probe reached the live target"
        );
    }
}

#[test]
fn a_target_that_fails_its_checks_and_recovers_comes_back() {
    let sg = Shardgate::start(Options::new().workers(2));
    let tenant = Tenant::create(&sg, "recover");
    // The target's address is held for the whole test: the server behind it can stop and
    // start again while the configuration never changes.
    let address = DeadPort::reserve();
    let failing = CountingServer::builder("only")
        .status(503)
        .start_on(&address);
    let upstream = tenant.upstream("pool", vec![address.target(json!({}))], active_check());
    let service = tenant.service("svc", &upstream, json!({"retries": 0}));
    tenant.rule(json!({"path": "/x", "service_id": service}));
    let client = tenant.client();
    let no_healthy_target = |resp: &shardgate_tests::Resp| {
        resp.status == 503 && resp.text().contains("no healthy upstream target")
    };

    // A target answering 503 to its probes is down: the gateway says so itself.
    let down = eventually(Duration::from_secs(5), || {
        no_healthy_target(&client.get("/x"))
    });
    assert!(down, "the failing target was never marked down");

    // Its server stops: connections to the target are refused, and it stays down.
    drop(failing);
    let resp = client.get("/x");
    assert!(
        no_healthy_target(&resp),
        "a stopped target is still down: {resp}"
    );

    // A healthy server starts at the same address: its probes pass and it gets traffic.
    let restarted = CountingServer::builder("only").start_on(&address);
    let back = eventually(Duration::from_secs(5), || client.get("/x").status == 200);
    assert!(
        back,
        "the target never came back after its server recovered"
    );
    let seen: Vec<String> = restarted.requests().into_iter().map(|r| r.target).collect();
    assert!(
        seen.iter().any(|t| t == "/health") && seen.iter().any(|t| t == "/x"),
        "the restarted server was probed and then served: {seen:?}"
    );
}

#[test]
fn http_checks_on_https_targets_speak_http_over_tls_verified_as_requests_are() {
    // Both targets accept TCP connections and TLS handshakes; the bad one's certificate is
    // signed by a CA the upstream does not trust. Probes that only connected would keep it
    // in rotation, and with no retries some requests would get its 502.
    let ca = TestCa::new("probe root");
    let stranger = TestCa::new("stranger root");
    let good = TlsUpstream::start("good", &ca.server_cert(&["127.0.0.1"]));
    let bad = TlsUpstream::start("bad", &stranger.server_cert(&["127.0.0.1"]));
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver).workers(2));
        let tenant = Tenant::create(&sg, "tlshealth");
        let mut settings = active_check();
        merge(&mut settings, json!({"tls": {"ca_pem": ca.cert_pem()}}));
        let upstream = tenant.upstream("pool", vec![good.target(), bad.target()], settings);
        let client = only_healthy_targets_serve(&tenant, &upstream, 0, driver);
        for i in 0..20 {
            let resp = client.get("/x");
            assert_eq!(resp.text(), "good GET /x", "[{driver}] request {i}: {resp}");
        }
        // The probes are HTTP requests inside TLS, verified with the upstream's CA.
        assert!(
            good.requests().iter().any(|seen| seen.target == "/health"
                && seen.header("user-agent") == Some("shardgate-health-check")),
            "[{driver}] no probe reached the good target over TLS"
        );
        assert!(
            bad.wait_for_handshake_failures(1, Duration::from_secs(2)),
            "[{driver}] the probes' handshakes with the untrusted target failed"
        );
        let metrics = sg.admin().get("/metrics").expect_status(200).text();
        let healthy_of = |port: u16| {
            metrics
                .lines()
                .find(|l| {
                    l.starts_with("shardgate_upstream_target_healthy{")
                        && l.contains(&format!("target=\"127.0.0.1:{port}\""))
                })
                .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
        };
        assert_eq!(
            healthy_of(good.addr().port()).as_deref(),
            Some("1"),
            "[{driver}] {metrics}"
        );
        assert_eq!(
            healthy_of(bad.addr().port()).as_deref(),
            Some("0"),
            "[{driver}] {metrics}"
        );
    }
}
