//! The proxy's request flow against the real binary and real upstreams (DESIGN.md §4, issue
//! 3): Host → gateway → API key → rule → service → upstream → target, what the upstream
//! receives (forwarding headers in, key and hop-by-hop headers out), who learns which
//! paths exist, read-your-writes of admin changes, and the 502/503/504 answers.
//!
//! Every test runs under each io driver and over each listener (issue 10): the plain one,
//! and the TLS one with the development certificate, where the flow must be the same but
//! for `X-Forwarded-Proto: https`.

use std::thread;
use std::time::{Duration, Instant};

use shardgate_tests::tenant::Tenant;
use shardgate_tests::upstream::{CountingServer, DeadPort};
use shardgate_tests::{
    Listener, Options, Shardgate, Via, drivers_and_listeners, json, repeat, rfc3339_in,
};

#[test]
fn seed_flow_routes_a_keyed_request_to_the_upstream_and_refuses_without_a_key() {
    for (driver, listener) in drivers_and_listeners() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let via = sg.via(listener);
        let up = CountingServer::start("seed-upstream");
        let tenant = Tenant::create(&sg, "api");
        tenant.route(
            "seed",
            "/v1/*",
            vec![up.target(json!({}))],
            json!({}),
            json!({"methods": ["GET", "POST"]}),
        );

        // curl http://api.localhost:<port>/v1/chat -H "X-API-Key: <key>"
        let ok = via.client(&tenant).get("/v1/chat").expect_status(200);
        assert_eq!(
            ok.text(),
            "seed-upstream GET /v1/chat",
            "[{driver} {listener}] {ok}"
        );
        assert_eq!(
            ok.header("x-upstream"),
            Some("seed-upstream"),
            "[{driver} {listener}]"
        );
        let body = br#"{"messages":[]}"#;
        let posted = via
            .client(&tenant)
            .request("POST", "/v1/chat", &[], body)
            .expect_status(200);
        assert_eq!(
            posted.text(),
            "seed-upstream POST /v1/chat",
            "[{driver} {listener}]"
        );
        assert_eq!(
            up.last().body,
            body,
            "[{driver} {listener}] the body reached the upstream"
        );

        let missing = via.anonymous(&tenant).get("/v1/chat").expect_status(401);
        let challenge = missing.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer"),
            "[{driver} {listener}] 401 without a key carries a Bearer challenge: {missing}"
        );
        assert!(!missing.error().is_empty(), "[{driver} {listener}]");

        let wrong = via
            .anonymous(&tenant)
            .header("X-API-Key", "sgk_not-a-key-of-this-gateway")
            .get("/v1/chat")
            .expect_status(401);
        assert!(
            wrong
                .header("www-authenticate")
                .is_some_and(|c| c.contains("invalid_token")),
            "[{driver} {listener}] {wrong}"
        );

        let other_host = via.host_for("nope");
        let unknown = via
            .client(&tenant)
            .host(&other_host)
            .get("/v1/chat")
            .expect_status(404);
        assert_eq!(unknown.error_json(), json!({"error": "gateway not found"}));

        assert_eq!(
            up.count(),
            2,
            "[{driver} {listener}] only the two keyed requests reached the upstream"
        );
    }
}

#[test]
fn api_key_is_accepted_from_each_header_and_never_forwarded() {
    for (driver, listener) in drivers_and_listeners() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let via = sg.via(listener);
        let up = CountingServer::start("keys");
        let tenant = Tenant::create(&sg, "keys");
        tenant.route(
            "keys",
            "/k",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );

        let anonymous = via.anonymous(&tenant);
        for (name, value) in [
            ("X-API-Key", tenant.key.clone()),
            ("X-TG-API-Key", tenant.key.clone()),
            ("Authorization", format!("Bearer {}", tenant.key)),
        ] {
            anonymous
                .request("GET", "/k", &[(name, &value)], b"")
                .expect_status(200);
            let seen = up.last();
            for stripped in ["x-api-key", "x-tg-api-key", "authorization"] {
                assert!(
                    !seen.has_header(stripped),
                    "[{driver} {listener}] key sent in {name}: the upstream saw {stripped}: {:?}",
                    seen.headers
                );
            }
            assert!(
                !seen.headers.iter().any(|(_, v)| v.contains(&tenant.key)),
                "[{driver} {listener}] the key's plaintext reached the upstream: {:?}",
                seen.headers
            );
        }
    }
}

#[test]
fn forwarding_headers_are_set_and_hop_by_hop_headers_are_dropped() {
    for (driver, listener) in drivers_and_listeners() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let via = sg.via(listener);
        let up = CountingServer::start("hops");
        let tenant = Tenant::create(&sg, "hops");
        tenant.route(
            "hops",
            "/h",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );

        let mut conn = via.client(&tenant).keep_alive();
        let resp = conn.request(
            "GET",
            "/h",
            &[
                ("X-Forwarded-For", "203.0.113.7"),
                ("Connection", "keep-alive, X-Hop-Secret"),
                ("X-Hop-Secret", "must-not-pass"),
                ("Keep-Alive", "timeout=5"),
                ("TE", "trailers"),
                ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
                ("Proxy-Connection", "keep-alive"),
                ("X-End-To-End", "kept"),
            ],
            b"",
        );
        assert_eq!(resp.status, 200, "[{driver} {listener}] {resp}");
        assert!(
            resp.header("via").is_some_and(|v| v.contains("shardgate")),
            "[{driver} {listener}] the response carries Via: {resp}"
        );

        let seen = up.last();
        let header = |name: &str| seen.header(name).unwrap_or_default().to_owned();
        assert_eq!(
            header("x-forwarded-for"),
            "203.0.113.7, 127.0.0.1",
            "[{driver} {listener}] the client address is appended"
        );
        assert_eq!(
            header("x-forwarded-proto"),
            listener.scheme(),
            "[{driver} {listener}] the scheme the client used"
        );
        assert_eq!(
            header("x-forwarded-host"),
            via.host(&tenant),
            "[{driver} {listener}]"
        );
        assert!(
            header("via").contains("1.1 shardgate"),
            "[{driver} {listener}]"
        );
        assert_eq!(
            header("host"),
            up.addr().to_string(),
            "[{driver} {listener}] Host is the target's"
        );
        assert_eq!(header("x-end-to-end"), "kept", "[{driver} {listener}]");
        for hop in [
            "x-hop-secret",
            "keep-alive",
            "te",
            "proxy-authorization",
            "proxy-connection",
        ] {
            assert!(
                !seen.has_header(hop),
                "[{driver} {listener}] hop-by-hop {hop} was forwarded: {:?}",
                seen.headers
            );
        }
        assert!(
            !header("connection").to_ascii_lowercase().contains("x-hop"),
            "[{driver} {listener}] the client's Connection header was forwarded: {:?}",
            seen.headers
        );
        assert_eq!(
            seen.header_count("x-forwarded-for"),
            1,
            "[{driver} {listener}]"
        );
    }
}

#[test]
fn strip_path_removes_the_matched_prefix_and_keeps_the_query() {
    for (driver, listener) in drivers_and_listeners() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let via = sg.via(listener);
        let up = CountingServer::start("paths");
        let tenant = Tenant::create(&sg, "paths");
        let target = vec![up.target(json!({}))];
        tenant.route(
            "stripped",
            "/v1/*",
            target.clone(),
            json!({}),
            json!({"strip_path": true}),
        );
        tenant.route("kept", "/keep/*", target, json!({}), json!({}));

        let client = via.client(&tenant);
        client
            .get("/v1/chat/completions?model=a&stream=true")
            .expect_status(200);
        assert_eq!(
            up.last().target,
            "/chat/completions?model=a&stream=true",
            "[{driver} {listener}]"
        );
        client.get("/v1?x=1").expect_status(200);
        assert_eq!(up.last().target, "/?x=1", "[{driver} {listener}]");
        client.get("/keep/this?q=1").expect_status(200);
        assert_eq!(up.last().target, "/keep/this?q=1", "[{driver} {listener}]");
    }
}

#[test]
fn preserve_host_forwards_the_clients_host_otherwise_the_targets() {
    for (driver, listener) in drivers_and_listeners() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let via = sg.via(listener);
        let up = CountingServer::start("hosts");
        let tenant = Tenant::create(&sg, "hosts");
        let target = vec![up.target(json!({}))];
        tenant.route(
            "preserved",
            "/preserved",
            target.clone(),
            json!({}),
            json!({"preserve_host": true}),
        );
        tenant.route("rewritten", "/rewritten", target, json!({}), json!({}));

        via.client(&tenant).get("/preserved").expect_status(200);
        assert_eq!(
            up.last().header("host"),
            Some(via.host(&tenant).as_str()),
            "[{driver} {listener}]"
        );
        via.client(&tenant).get("/rewritten").expect_status(200);
        assert_eq!(
            up.last().header("host"),
            Some(up.addr().to_string().as_str()),
            "[{driver} {listener}]"
        );
    }
}

#[test]
fn public_rule_needs_no_key_and_other_paths_stay_hidden_without_one() {
    for (driver, listener) in drivers_and_listeners() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let via = sg.via(listener);
        let up = CountingServer::start("public");
        let tenant = Tenant::create(&sg, "pub");
        let target = vec![up.target(json!({}))];
        tenant.route(
            "open",
            "/status",
            target.clone(),
            json!({}),
            json!({"public": true, "methods": ["GET"]}),
        );
        tenant.route(
            "closed",
            "/private",
            target,
            json!({}),
            json!({"methods": ["GET"]}),
        );

        let anonymous = via.anonymous(&tenant);
        let open = anonymous.get("/status").expect_status(200);
        assert_eq!(open.text(), "public GET /status", "[{driver} {listener}]");

        // Without a key, nothing tells an existing path from a missing one.
        anonymous.get("/private").expect_status(401);
        anonymous.get("/no-such-path").expect_status(401);
        anonymous
            .request("POST", "/private", &[], b"x")
            .expect_status(401);

        // With a key, the router answers.
        let client = via.client(&tenant);
        let missing = client.get("/no-such-path").expect_status(404);
        assert!(!missing.error().is_empty(), "[{driver} {listener}]");
        let wrong_method = client
            .request("POST", "/private", &[], b"x")
            .expect_status(405);
        let allow = wrong_method.header("allow").unwrap_or_default();
        assert!(
            allow.split(',').any(|m| m.trim() == "GET"),
            "[{driver} {listener}] 405 names the allowed methods: {wrong_method}"
        );
        assert!(!wrong_method.error().is_empty(), "[{driver} {listener}]");
        assert_eq!(
            up.count(),
            1,
            "[{driver} {listener}] only the public request was forwarded"
        );
    }
}

#[test]
fn inactive_gateway_answers_503_until_reactivated() {
    for (driver, listener) in drivers_and_listeners() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let via = sg.via(listener);
        let up = CountingServer::start("inactive");
        let tenant = Tenant::create(&sg, "sleepy");
        tenant.route("r", "/x", vec![up.target(json!({}))], json!({}), json!({}));
        via.client(&tenant).get("/x").expect_status(200);

        tenant.update_gateway(
            &json!({"name": "gw-sleepy", "subdomain": "sleepy", "status": "inactive"}),
        );
        let off = via.client(&tenant).get("/x").expect_status(503);
        assert!(!off.error().is_empty(), "[{driver} {listener}]");

        tenant.update_gateway(
            &json!({"name": "gw-sleepy", "subdomain": "sleepy", "status": "active"}),
        );
        via.client(&tenant).get("/x").expect_status(200);
        assert_eq!(up.count(), 2, "[{driver} {listener}]");
    }
}

#[test]
fn expired_and_disabled_keys_get_401() {
    // Every driver and listener shares one wait for the expiry.
    let servers: Vec<(Shardgate, CountingServer, Tenant, Via, String)> = drivers_and_listeners()
        .into_iter()
        .map(|(driver, listener)| {
            let sg = Shardgate::start(Options::new().io_driver(driver));
            let via = sg.via(listener);
            let up = CountingServer::start("expiry");
            let tenant = Tenant::create(&sg, "exp");
            tenant.route("r", "/x", vec![up.target(json!({}))], json!({}), json!({}));
            let soon = tenant
                .admin
                .post_json(
                    &tenant.collection("keys"),
                    &json!({"name": "short-lived", "expires_at": rfc3339_in(2)}),
                )
                .expect_status(201)
                .json();
            let soon = soon["key"].as_str().expect("plaintext").to_owned();
            (sg, up, tenant, via, soon)
        })
        .collect();
    let expires = Instant::now() + Duration::from_secs(2);

    for ((driver, listener), (_, _, tenant, via, soon)) in
        drivers_and_listeners().into_iter().zip(&servers)
    {
        via.anonymous(tenant)
            .header("X-API-Key", soon)
            .get("/x")
            .expect_status(200);

        // Disabling a key takes effect on the next request.
        tenant
            .admin
            .put_json(
                &tenant.item("keys", &tenant.key_id),
                &json!({"name": "test-key", "active": false}),
            )
            .expect_status(200);
        let disabled = via.client(tenant).get("/x").expect_status(401);
        assert!(
            disabled.header("www-authenticate").is_some(),
            "[{driver} {listener}] {disabled}"
        );
        assert!(!disabled.error().is_empty(), "[{driver} {listener}]");
    }

    // Whole seconds: expiry is compared at one-second resolution.
    thread::sleep(expires.saturating_duration_since(Instant::now()) + Duration::from_millis(1100));
    for ((driver, listener), (_, up, tenant, via, soon)) in
        drivers_and_listeners().into_iter().zip(&servers)
    {
        let expired = via
            .anonymous(tenant)
            .header("X-API-Key", soon)
            .get("/x")
            .expect_status(401);
        assert!(
            expired.header("www-authenticate").is_some(),
            "[{driver} {listener}] {expired}"
        );
        assert!(
            expired.error().contains("expired"),
            "[{driver} {listener}] {expired}"
        );
        assert_eq!(up.count(), 1, "[{driver} {listener}]");
    }
}

#[test]
fn admin_writes_are_visible_to_the_next_proxied_request_on_every_worker() {
    // Race-prone by nature: the write's answer must wait for every worker to swap its
    // snapshot, and a missed wake-up shows only when the next request happens to land on the
    // late worker. Hunt it with SHARDGATE_REPEAT=50 (fresh servers each time). Over TLS
    // fewer rounds: the snapshot swap is the listener-independent part, and each of the
    // three requests a round makes pays a full handshake.
    repeat(|_| {
        for (driver, listener) in drivers_and_listeners() {
            let iterations = match listener {
                Listener::Plain => 200,
                Listener::Tls => 50,
            };
            admin_writes_are_visible_at_once(driver, listener, iterations);
        }
    });
}

/// Creates, changes and deletes a rule `iterations` times, each change checked by the very
/// next proxied request.
fn admin_writes_are_visible_at_once(driver: &str, listener: Listener, iterations: usize) {
    let sg = Shardgate::start(Options::new().io_driver(driver));
    let via = sg.via(listener);
    let up = CountingServer::start("ryw");
    let tenant = Tenant::create(&sg, "ryw");
    let upstream = tenant.upstream("ryw", vec![up.target(json!({}))], json!({}));
    let service = tenant.service("ryw", &upstream, json!({}));
    // Every proxied request opens a fresh connection, so SO_REUSEPORT spreads them
    // over the workers: each worker must already run the snapshot the write made.
    let client = via.client(&tenant);
    for i in 0..iterations {
        let path = format!("/ryw/{i}");
        let rule = tenant.rule(json!({"path": path, "methods": ["GET"], "service_id": service}));
        let created = client.get(&path);
        assert_eq!(
            created.status, 200,
            "[{driver} {listener}] iteration {i}: a created rule routes at once: {created}"
        );
        assert_eq!(
            created.text(),
            format!("ryw GET {path}"),
            "[{driver} {listener}]"
        );

        tenant
            .admin
            .put_json(
                &tenant.item("rules", &rule),
                &json!({"path": path, "methods": ["POST"], "service_id": service}),
            )
            .expect_status(200);
        let updated = client.get(&path);
        assert_eq!(
            updated.status, 405,
            "[{driver} {listener}] iteration {i}: an updated rule applies at once: {updated}"
        );
        assert_eq!(updated.header("allow").map(str::trim), Some("POST"));

        tenant
            .admin
            .delete(&tenant.item("rules", &rule))
            .expect_status(204);
        let deleted = client.get(&path);
        assert_eq!(
            deleted.status, 404,
            "[{driver} {listener}] iteration {i}: a deleted rule is gone at once: {deleted}"
        );
    }
    assert_eq!(up.count(), iterations, "[{driver} {listener}]");
}

#[test]
fn dead_only_target_gives_502() {
    for (driver, listener) in drivers_and_listeners() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let via = sg.via(listener);
        let tenant = Tenant::create(&sg, "dead");
        let dead = DeadPort::reserve();
        tenant.route(
            "dead",
            "/x",
            vec![dead.target(json!({}))],
            json!({}),
            json!({}),
        );
        let resp = via.client(&tenant).get("/x").expect_status(502);
        assert!(!resp.error().is_empty(), "[{driver} {listener}]");
        assert_eq!(
            resp.header("content-type"),
            Some("application/json"),
            "[{driver} {listener}]"
        );
    }
}

#[test]
fn upstream_slower_than_read_timeout_gives_504() {
    // One upstream for every run: stopping it waits for its sleeping handler, once.
    let slow = CountingServer::builder("slow")
        .delay(Duration::from_millis(2500))
        .start();
    for (driver, listener) in drivers_and_listeners() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let via = sg.via(listener);
        let tenant = Tenant::create(&sg, "slow");
        tenant.route(
            "slow",
            "/x",
            vec![slow.target(json!({}))],
            json!({"read_timeout": "1s"}),
            json!({}),
        );
        let started = Instant::now();
        let resp = via.client(&tenant).get("/x").expect_status(504);
        let took = started.elapsed();
        assert!(!resp.error().is_empty(), "[{driver} {listener}]");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(2400),
            "[{driver} {listener}] 504 after the 1 s read timeout, not the upstream's 2.5 s: {took:?}"
        );
    }
}

#[test]
fn hop_by_hop_response_headers_are_dropped() {
    for (driver, listener) in drivers_and_listeners() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let via = sg.via(listener);
        let up = CountingServer::builder("hops")
            .header("Connection", "X-Up-Secret")
            .header("X-Up-Secret", "must-not-pass")
            .header("Keep-Alive", "timeout=5, max=100")
            .header("Proxy-Authenticate", "Basic realm=\"upstream\"")
            .header("X-Up-Visible", "yes")
            .start();
        let tenant = Tenant::create(&sg, "hops");
        tenant.route(
            "hops",
            "/h",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );
        let mut conn = via.client(&tenant).keep_alive();
        for _ in 0..2 {
            let resp = conn.get("/h");
            assert_eq!(resp.status, 200, "[{driver} {listener}] {resp}");
            assert_eq!(
                resp.header("x-up-visible"),
                Some("yes"),
                "[{driver} {listener}]"
            );
            for hop in ["x-up-secret", "keep-alive", "proxy-authenticate"] {
                assert!(
                    resp.header(hop).is_none(),
                    "[{driver} {listener}] hop-by-hop {hop} reached the client: {resp}"
                );
            }
            assert!(
                resp.header("connection")
                    .is_none_or(|c| !c.to_ascii_lowercase().contains("x-up-secret")),
                "[{driver} {listener}] {resp}"
            );
        }
    }
}

#[test]
fn upstream_key_and_gateway_changes_apply_to_the_next_request() {
    for (driver, listener) in drivers_and_listeners() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let via = sg.via(listener);
        let a = CountingServer::start("a");
        let b = CountingServer::start("b");
        let tenant = Tenant::create(&sg, "moving");
        let route = tenant.route(
            "moving",
            "/x",
            vec![a.target(json!({}))],
            json!({}),
            json!({}),
        );
        // A kept-alive client connection stays on one worker, whose pool holds a warm
        // connection to the old target: the change must still win.
        let mut conn = via.client(&tenant).keep_alive();
        for i in 0..20 {
            let (to, expected) = if i % 2 == 0 { (&b, "b") } else { (&a, "a") };
            tenant
                .admin
                .put_json(
                    &tenant.item("upstreams", &route.upstream_id),
                    &json!({"name": "moving", "targets": [to.target(json!({}))]}),
                )
                .expect_status(200);
            let kept = conn.get("/x");
            assert_eq!(
                kept.header("x-upstream"),
                Some(expected),
                "[{driver} {listener}] change {i}, kept-alive connection: {kept}"
            );
            let fresh = via.client(&tenant).get("/x");
            assert_eq!(
                fresh.header("x-upstream"),
                Some(expected),
                "[{driver} {listener}] change {i}, fresh connection: {fresh}"
            );
        }

        // A renamed subdomain moves the gateway at once.
        tenant.update_gateway(&json!({"name": "gw-moving", "subdomain": "moved"}));
        let old = conn.get("/x");
        assert_eq!(old.status, 404, "[{driver} {listener}] {old}");
        assert_eq!(old.error_json(), json!({"error": "gateway not found"}));
        let moved_host = via.host_for("moved");
        let moved = via.client(&tenant).host(&moved_host);
        moved.get("/x").expect_status(200);

        // A deleted key is refused on the next request.
        tenant
            .admin
            .delete(&tenant.item("keys", &tenant.key_id))
            .expect_status(204);
        moved.get("/x").expect_status(401);

        // A deleted gateway is gone.
        tenant
            .admin
            .delete(&format!(
                "{}/{}",
                shardgate_tests::GATEWAYS,
                tenant.gateway_id
            ))
            .expect_status(204);
        let gone = moved.get("/x").expect_status(404);
        assert_eq!(gone.error_json(), json!({"error": "gateway not found"}));
    }
}
