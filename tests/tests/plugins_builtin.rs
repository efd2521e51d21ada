//! The plugin chain and the built-in plugins other than `rate_limiter`, end to end (issue 4):
//! stage and priority order as the upstream and the client see it, `request_transformer`
//! and `response_transformer`, `request_size_limiter` (413, 431, 411), `cors` (preflights
//! answered at the gateway), `ip_restriction`, and the `GET /api/v1/plugins` catalogue.
//! Every refusal is checked not to have reached the counting upstream.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use shardgate_tests::tenant::Tenant;
use shardgate_tests::upstream::CountingServer;
use shardgate_tests::{Options, Resp, Shardgate, Value, io_drivers, json};

/// `127.0.0.<last>`: a distinct client IP on loopback.
fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// An enabled plugin entry.
fn plugin(name: &str, stage: &str, priority: i32, settings: Value) -> Value {
    json!({
        "name": name,
        "enabled": true,
        "stage": stage,
        "priority": priority,
        "settings": settings
    })
}

/// Replaces the tenant's gateway with one that has these `required_plugins`.
fn set_gateway_plugins(tenant: &Tenant, plugins: Value) {
    tenant.update_gateway(&json!({
        "name": format!("gw-{}", tenant.subdomain),
        "subdomain": tenant.subdomain,
        "required_plugins": plugins
    }));
}

/// A keyed rule for `path` (any method) to `up` with this `plugin_chain`.
fn route_with_chain(tenant: &Tenant, up: &CountingServer, path: &str, chain: Value) {
    tenant.route(
        up.identity(),
        path,
        vec![up.target(json!({}))],
        json!({}),
        json!({"plugin_chain": chain}),
    );
}

/// Every value of header `name`, in order.
fn all_values<'a>(resp: &'a Resp, name: &str) -> Vec<&'a str> {
    resp.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The comma-separated tokens of every `name` header, lower-cased.
fn tokens(resp: &Resp, name: &str) -> Vec<String> {
    all_values(resp, name)
        .iter()
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

// -- the chain ---------------------------------------------------------------------------------

#[test]
fn request_transformers_run_by_priority_gateway_first_and_disabled_ones_never() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let up = CountingServer::start("order");
        let tenant = Tenant::create(&sg, "order");
        let set = |headers: Value| json!({"set_headers": headers});
        set_gateway_plugins(
            &tenant,
            json!([plugin(
                "request_transformer",
                "pre_request",
                50,
                set(json!({"X-Scope": "gateway", "X-Gateway-Only": "yes"}))
            )]),
        );
        let mut disabled = plugin(
            "request_transformer",
            "pre_request",
            1000,
            set(json!({"X-Order": "disabled", "X-Disabled": "ran"})),
        );
        disabled["enabled"] = json!(false);
        route_with_chain(
            &tenant,
            &up,
            "/order",
            json!([
                // Listed first, but priority 10 runs after priority 1: its value wins.
                plugin(
                    "request_transformer",
                    "pre_request",
                    10,
                    set(json!({"X-Order": "ten"}))
                ),
                plugin(
                    "request_transformer",
                    "pre_request",
                    1,
                    set(json!({"X-Order": "one"}))
                ),
                // Equal priorities keep configuration order: the second one writes last.
                plugin(
                    "request_transformer",
                    "pre_request",
                    5,
                    set(json!({"X-Tie": "first"}))
                ),
                plugin(
                    "request_transformer",
                    "pre_request",
                    5,
                    set(json!({"X-Tie": "second"}))
                ),
                // A rule plugin runs after every gateway plugin, whatever its priority.
                plugin(
                    "request_transformer",
                    "pre_request",
                    -100,
                    set(json!({"X-Scope": "rule"}))
                ),
                disabled,
            ]),
        );

        tenant.client().get("/order").expect_status(200);
        let seen = up.last();
        assert_eq!(
            seen.header("x-order"),
            Some("ten"),
            "[{driver}] {:?}",
            seen.headers
        );
        assert_eq!(
            seen.header("x-tie"),
            Some("second"),
            "[{driver}] {:?}",
            seen.headers
        );
        assert_eq!(
            seen.header("x-scope"),
            Some("rule"),
            "[{driver}] {:?}",
            seen.headers
        );
        assert_eq!(seen.header("x-gateway-only"), Some("yes"), "[{driver}]");
        assert!(
            !seen.has_header("x-disabled"),
            "[{driver}] a disabled plugin ran: {:?}",
            seen.headers
        );
        assert_eq!(seen.header_count("x-order"), 1, "[{driver}] set replaces");
    }
}

#[test]
fn response_transformers_run_by_priority_with_the_gateway_first() {
    let sg = Shardgate::start(Options::new());
    let up = CountingServer::start("resp-order");
    let tenant = Tenant::create(&sg, "resporder");
    let set = |value: &str| json!({"set_headers": {"X-Resp": value}});
    set_gateway_plugins(
        &tenant,
        json!([
            plugin(
                "response_transformer",
                "pre_response",
                90,
                set("gateway-90")
            ),
            plugin(
                "response_transformer",
                "pre_response",
                10,
                set("gateway-10")
            ),
        ]),
    );
    let upstream = tenant.upstream("resp-order", vec![up.target(json!({}))], json!({}));
    let service = tenant.service("resp-order", &upstream, json!({}));
    tenant.rule(json!({
        "path": "/r",
        "service_id": service,
        "plugin_chain": [
            plugin("response_transformer", "pre_response", 3, set("rule-3")),
            plugin("response_transformer", "pre_response", -5, set("rule-minus-5")),
        ]
    }));
    tenant.rule(json!({"path": "/g", "service_id": service}));

    // The rule's transformers run after the gateway's; among them priority 3 runs last.
    let resp = tenant.client().get("/r").expect_status(200);
    assert_eq!(all_values(&resp, "x-resp"), ["rule-3"], "{resp}");
    // Without rule transformers the gateway's higher priority number wins.
    let resp = tenant.client().get("/g").expect_status(200);
    assert_eq!(all_values(&resp, "x-resp"), ["gateway-90"], "{resp}");
}

#[test]
fn request_transformer_edits_headers_and_appends_query_parameters_upstream() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let up = CountingServer::start("rq");
        let tenant = Tenant::create(&sg, "rq");
        route_with_chain(
            &tenant,
            &up,
            "/rq",
            json!([plugin(
                "request_transformer",
                "pre_request",
                0,
                json!({
                    "remove_headers": ["X-Drop"],
                    "rename_headers": {"X-From": "X-To"},
                    "set_headers": {"X-Set": "gateway"},
                    "add_headers": {"X-Add": "added", "X-Keep": "not-this"},
                    "add_query": {"tenant": "acme", "q": "x y&z"}
                })
            )]),
        );
        tenant
            .client()
            .request(
                "GET",
                "/rq?a=1",
                &[
                    ("X-Drop", "secret"),
                    ("X-From", "moved"),
                    ("X-Set", "client"),
                    ("X-Keep", "client"),
                ],
                b"",
            )
            .expect_status(200);
        let seen = up.last();
        assert_eq!(seen.target, "/rq?a=1&tenant=acme&q=x%20y%26z", "[{driver}]");
        assert!(!seen.has_header("x-drop"), "[{driver}] {:?}", seen.headers);
        assert!(!seen.has_header("x-from"), "[{driver}] {:?}", seen.headers);
        assert_eq!(seen.header("x-to"), Some("moved"), "[{driver}]");
        assert_eq!(seen.header("x-set"), Some("gateway"), "[{driver}]");
        assert_eq!(seen.header("x-add"), Some("added"), "[{driver}]");
        assert_eq!(
            seen.header("x-keep"),
            Some("client"),
            "[{driver}] add never overrides"
        );
    }
}

#[test]
fn response_transformer_edits_the_headers_the_client_sees() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let up = CountingServer::builder("rs")
            .header("X-Internal", "secret")
            .header("X-Old", "renamed")
            .start();
        let tenant = Tenant::create(&sg, "rs");
        route_with_chain(
            &tenant,
            &up,
            "/rs",
            json!([plugin(
                "response_transformer",
                "pre_response",
                0,
                json!({
                    "remove_headers": ["X-Internal"],
                    "rename_headers": {"X-Old": "X-New"},
                    "set_headers": {"X-Upstream": "masked"},
                    "add_headers": {"X-Added": "yes", "Content-Type": "not-this"}
                })
            )]),
        );
        let resp = tenant.client().get("/rs").expect_status(200);
        assert_eq!(resp.header("x-internal"), None, "[{driver}] {resp}");
        assert_eq!(resp.header("x-old"), None, "[{driver}] {resp}");
        assert_eq!(resp.header("x-new"), Some("renamed"), "[{driver}] {resp}");
        assert_eq!(
            all_values(&resp, "x-upstream"),
            ["masked"],
            "[{driver}] {resp}"
        );
        assert_eq!(resp.header("x-added"), Some("yes"), "[{driver}] {resp}");
        assert_eq!(
            resp.header("content-type"),
            Some("text/plain"),
            "[{driver}] {resp}"
        );
        assert_eq!(
            resp.text(),
            "rs GET /rs",
            "[{driver}] the body is untouched"
        );
    }
}

// -- request_size_limiter ----------------------------------------------------------------------

/// A tenant whose `/upload` rule (any method) carries a `request_size_limiter` with
/// `settings`.
fn size_limited(sg: &Shardgate, up: &CountingServer, settings: Value) -> Tenant {
    let tenant = Tenant::create(sg, "size");
    route_with_chain(
        &tenant,
        up,
        "/upload",
        json!([plugin("request_size_limiter", "pre_request", 0, settings)]),
    );
    tenant
}

/// A keyed chunked POST to `/upload` with `body` in chunks of `chunk` bytes, all in one write.
fn chunked_post(tenant: &Tenant, body: &[u8], chunk: usize) -> Resp {
    let mut bytes = format!(
        "POST /upload HTTP/1.1\r\nHost: {}\r\nX-API-Key: {}\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n",
        tenant.host(),
        tenant.key
    )
    .into_bytes();
    for piece in body.chunks(chunk) {
        bytes.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        bytes.extend_from_slice(piece);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    tenant.client().raw_request(&bytes)
}

#[test]
fn body_over_max_body_bytes_by_content_length_is_413_before_the_upstream() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let up = CountingServer::start("size-cl");
        let tenant = size_limited(&sg, &up, json!({"max_body_bytes": 16}));
        let client = tenant.client();

        let over = client.request("POST", "/upload", &[], &[b'x'; 17]);
        assert_eq!(over.status, 413, "[{driver}] {over}");
        assert_eq!(
            over.error_json(),
            json!({"error": "request body too large"}),
            "[{driver}]"
        );
        client
            .request("POST", "/upload", &[], &[b'x'; 16])
            .expect_status(200);
        assert_eq!(
            up.count(),
            1,
            "[{driver}] only the body at the limit went upstream"
        );
        assert_eq!(up.last().body, [b'x'; 16], "[{driver}]");
    }
}

#[test]
fn chunked_body_over_max_body_bytes_is_413_and_never_reaches_the_upstream() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let up = CountingServer::start("size-chunked");
        let tenant = size_limited(&sg, &up, json!({"max_body_bytes": 1024}));

        // The limit counts body bytes, not the chunk framing around them.
        let at_limit = chunked_post(&tenant, &[b'a'; 1024], 100);
        assert_eq!(at_limit.status, 200, "[{driver}] at the limit: {at_limit}");
        assert_eq!(up.count(), 1, "[{driver}]");
        assert_eq!(up.last().body.len(), 1024, "[{driver}]");

        // Over the limit and small enough to arrive with the head in one read.
        let over = chunked_post(&tenant, &[b'b'; 2000], 100);
        assert_eq!(
            over.status, 413,
            "[{driver}] chunked body of 2000 > 1024 bytes: {over}"
        );
        // Over the limit and streamed: counted while it flows.
        let streamed = chunked_post(&tenant, &vec![b'c'; 512 * 1024], 8192);
        assert_eq!(
            streamed.status, 413,
            "[{driver}] streamed 512 KiB: {streamed}"
        );
        assert_eq!(
            up.count(),
            1,
            "[{driver}] no over-limit body reached the upstream whole: {:?}",
            up.requests()
                .iter()
                .map(|s| (s.method.clone(), s.body.len()))
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn head_over_max_header_bytes_is_431_before_the_upstream() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let up = CountingServer::start("size-head");
        let tenant = size_limited(&sg, &up, json!({"max_header_bytes": 1024}));
        let client = tenant.client();

        let big = "v".repeat(2000);
        let over = client.request("GET", "/upload", &[("X-Big", &big)], b"");
        assert_eq!(over.status, 431, "[{driver}] {over}");
        assert_eq!(
            over.error_json(),
            json!({"error": "request header fields too large"}),
            "[{driver}]"
        );
        client
            .request("GET", "/upload", &[("X-Small", "v")], b"")
            .expect_status(200);
        assert_eq!(up.count(), 1, "[{driver}]");
    }
}

#[test]
fn chunked_body_is_411_when_content_length_is_required() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let up = CountingServer::start("size-411");
        let tenant = size_limited(&sg, &up, json!({"require_content_length": true}));

        let chunked = chunked_post(&tenant, b"hello", 5);
        assert_eq!(chunked.status, 411, "[{driver}] {chunked}");
        assert_eq!(
            chunked.error_json(),
            json!({"error": "Content-Length required"}),
            "[{driver}]"
        );
        let client = tenant.client();
        client
            .request("POST", "/upload", &[], b"hello")
            .expect_status(200);
        client.get("/upload").expect_status(200);
        assert_eq!(
            up.count(),
            2,
            "[{driver}] the chunked body never went upstream"
        );
    }
}

// -- cors ----------------------------------------------------------------------------------------

const APP: &str = "https://app.example.com";

/// `cors` settings for the tests: one exact origin and every subdomain of example.org.
fn cors_settings() -> Value {
    json!({
        "allowed_origins": [APP, "https://*.example.org"],
        "allowed_methods": ["GET", "POST"],
        "allowed_headers": ["Content-Type", "X-Trace"],
        "exposed_headers": ["X-RateLimit-Remaining"],
        "max_age": 600
    })
}

/// A tenant with `cors` on its gateway in both stages (as the catalogue says to configure it)
/// and a keyed `/cors` rule (GET, POST) to `up`.
fn cors_tenant(sg: &Shardgate, up: &CountingServer) -> Tenant {
    let tenant = Tenant::create(sg, "cors");
    set_gateway_plugins(
        &tenant,
        json!([
            plugin("cors", "pre_request", 0, cors_settings()),
            plugin("cors", "pre_response", 0, cors_settings()),
        ]),
    );
    tenant.route(
        up.identity(),
        "/cors",
        vec![up.target(json!({}))],
        json!({}),
        json!({"methods": ["GET", "POST"]}),
    );
    tenant
}

/// A preflight for `method` from `origin`, without an API key.
fn preflight(tenant: &Tenant, origin: &str, method: &str) -> Resp {
    tenant.anonymous().request(
        "OPTIONS",
        "/cors",
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", method),
            ("Access-Control-Request-Headers", "content-type, x-trace"),
        ],
        b"",
    )
}

#[test]
fn cors_preflight_is_answered_204_at_the_gateway_without_a_key_or_the_upstream() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let up = CountingServer::start("cors-preflight");
        let tenant = cors_tenant(&sg, &up);

        let answer = preflight(&tenant, APP, "POST");
        assert_eq!(answer.status, 204, "[{driver}] {answer}");
        assert!(answer.body.is_empty(), "[{driver}]");
        assert_eq!(
            answer.header("access-control-allow-origin"),
            Some(APP),
            "[{driver}] {answer}"
        );
        let methods = tokens(&answer, "access-control-allow-methods");
        assert!(methods.contains(&"post".to_owned()), "[{driver}] {answer}");
        let headers = tokens(&answer, "access-control-allow-headers");
        for h in ["content-type", "x-trace"] {
            assert!(headers.contains(&h.to_owned()), "[{driver}] {h}: {answer}");
        }
        assert_eq!(
            answer.header("access-control-max-age"),
            Some("600"),
            "[{driver}]"
        );
        assert!(
            tokens(&answer, "vary").contains(&"origin".to_owned()),
            "[{driver}]"
        );
        assert_eq!(
            up.count(),
            0,
            "[{driver}] the upstream never saw the preflight"
        );
    }
}

#[test]
fn cors_preflight_from_a_disallowed_origin_method_or_header_is_403() {
    let sg = Shardgate::start(Options::new());
    let up = CountingServer::start("cors-refused");
    let tenant = cors_tenant(&sg, &up);

    let origin = preflight(&tenant, "https://evil.example.net", "GET");
    assert_eq!(origin.status, 403, "{origin}");
    assert_eq!(origin.error(), "CORS origin not allowed");
    assert_eq!(
        origin.header("access-control-allow-origin"),
        None,
        "{origin}"
    );

    let method = preflight(&tenant, APP, "DELETE");
    assert_eq!(method.status, 403, "{method}");
    assert!(method.error().contains("DELETE"), "{method}");

    let header = tenant.anonymous().request(
        "OPTIONS",
        "/cors",
        &[
            ("Origin", APP),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "x-secret"),
        ],
        b"",
    );
    assert_eq!(header.status, 403, "{header}");
    assert!(header.error().contains("x-secret"), "{header}");
    assert_eq!(up.count(), 0);
}

#[test]
fn cors_wildcard_subdomain_allows_subdomains_over_its_scheme_only() {
    let sg = Shardgate::start(Options::new());
    let up = CountingServer::start("cors-wildcard");
    let tenant = cors_tenant(&sg, &up);

    for allowed in ["https://shop.example.org", "https://a.b.example.org"] {
        let answer = preflight(&tenant, allowed, "GET");
        assert_eq!(answer.status, 204, "{allowed}: {answer}");
        assert_eq!(
            answer.header("access-control-allow-origin"),
            Some(allowed),
            "{answer}"
        );
    }
    for refused in [
        "https://example.org",
        "http://shop.example.org",
        "https://shop.example.org:8443",
        "https://evil-example.org",
        "https://example.org.evil.com",
    ] {
        let answer = preflight(&tenant, refused, "GET");
        assert_eq!(answer.status, 403, "{refused}: {answer}");
    }
    assert_eq!(up.count(), 0);
}

#[test]
fn cors_actual_request_gets_allow_origin_and_vary_origin() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let up = CountingServer::builder("cors-actual")
            .header("Vary", "Accept-Encoding")
            .header("Access-Control-Allow-Origin", "*")
            .start();
        let tenant = cors_tenant(&sg, &up);

        let allowed = tenant
            .client()
            .request("GET", "/cors", &[("Origin", APP)], b"")
            .expect_status(200);
        assert_eq!(
            allowed.header("access-control-allow-origin"),
            Some(APP),
            "[{driver}] the gateway's value replaces the upstream's: {allowed}"
        );
        assert!(
            !all_values(&allowed, "access-control-allow-origin").contains(&"*"),
            "[{driver}] {allowed}"
        );
        assert_eq!(
            allowed.header("access-control-expose-headers"),
            Some("X-RateLimit-Remaining"),
            "[{driver}] {allowed}"
        );
        let vary = tokens(&allowed, "vary");
        assert!(vary.contains(&"origin".to_owned()), "[{driver}] {allowed}");
        assert!(
            vary.contains(&"accept-encoding".to_owned()),
            "[{driver}] the upstream's Vary is kept: {allowed}"
        );

        let other = tenant
            .client()
            .request(
                "GET",
                "/cors",
                &[("Origin", "https://evil.example.net")],
                b"",
            )
            .expect_status(200);
        assert_ne!(
            other.header("access-control-allow-origin"),
            Some("https://evil.example.net"),
            "[{driver}] {other}"
        );
        assert!(
            tokens(&other, "vary").contains(&"origin".to_owned()),
            "[{driver}] every response varies by origin: {other}"
        );
        assert_eq!(up.count(), 2, "[{driver}]");
    }
}

#[test]
fn cors_disallowed_origin_gets_no_allow_origin_even_when_the_upstream_sends_one() {
    let sg = Shardgate::start(Options::new());
    let up = CountingServer::builder("cors-leak")
        .header("Access-Control-Allow-Origin", "*")
        .start();
    let tenant = cors_tenant(&sg, &up);
    let other = tenant
        .client()
        .request(
            "GET",
            "/cors",
            &[("Origin", "https://evil.example.net")],
            b"",
        )
        .expect_status(200);
    // The cors plugin owns Access-Control-* on the way out (cors.rs module doc): an
    // upstream's wildcard must not open the API to origins the gateway refuses.
    assert!(
        all_values(&other, "access-control-allow-origin").is_empty(),
        "a disallowed origin gets no Allow-Origin: {other}"
    );
}

#[test]
fn cors_configured_in_both_stages_sends_each_header_once() {
    let sg = Shardgate::start(Options::new());
    let up = CountingServer::start("cors-once");
    let tenant = cors_tenant(&sg, &up);
    let resp = tenant
        .client()
        .request("GET", "/cors", &[("Origin", APP)], b"")
        .expect_status(200);
    // Browsers refuse a response with more than one Access-Control-Allow-Origin.
    assert_eq!(
        all_values(&resp, "access-control-allow-origin"),
        [APP],
        "{resp}"
    );
    assert_eq!(
        all_values(&resp, "access-control-expose-headers").len(),
        1,
        "{resp}"
    );
    let origin_in_vary = tokens(&resp, "vary")
        .iter()
        .filter(|t| *t == "origin")
        .count();
    assert_eq!(origin_in_vary, 1, "{resp}");
}

// -- ip_restriction ------------------------------------------------------------------------------

#[test]
fn ip_restriction_deny_list_refuses_listed_clients_with_403() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let up = CountingServer::start("deny");
        let tenant = Tenant::create(&sg, "deny");
        set_gateway_plugins(
            &tenant,
            json!([plugin(
                "ip_restriction",
                "pre_request",
                0,
                json!({"deny": ["127.0.0.3", "127.0.0.8/29"]})
            )]),
        );
        route_with_chain(&tenant, &up, "/d", json!([]));

        for last in [1, 2, 4, 7, 16] {
            let ok = tenant.client().source_ip(loopback(last)).get("/d");
            assert_eq!(ok.status, 200, "[{driver}] 127.0.0.{last}: {ok}");
        }
        for last in [3, 8, 15] {
            let refused = tenant.client().source_ip(loopback(last)).get("/d");
            assert_eq!(refused.status, 403, "[{driver}] 127.0.0.{last}: {refused}");
            assert_eq!(
                refused.error_json(),
                json!({"error": "client IP not allowed"})
            );
        }
        assert_eq!(
            up.count(),
            5,
            "[{driver}] refused clients never reached the upstream"
        );
    }
}

#[test]
fn ip_restriction_allow_list_admits_only_listed_clients() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let up = CountingServer::start("allow");
        let tenant = Tenant::create(&sg, "allow");
        route_with_chain(
            &tenant,
            &up,
            "/a",
            json!([plugin(
                "ip_restriction",
                "pre_request",
                0,
                json!({"allow": ["127.0.0.2", "127.0.0.4/31"], "deny": ["127.0.0.5"]})
            )]),
        );

        for last in [2, 4] {
            let ok = tenant.client().source_ip(loopback(last)).get("/a");
            assert_eq!(ok.status, 200, "[{driver}] 127.0.0.{last}: {ok}");
        }
        // Not listed, or listed but denied (deny wins).
        for last in [1, 3, 5, 6] {
            let refused = tenant.client().source_ip(loopback(last)).get("/a");
            assert_eq!(refused.status, 403, "[{driver}] 127.0.0.{last}: {refused}");
        }
        assert_eq!(up.count(), 2, "[{driver}]");
    }
}

#[test]
fn ip_restriction_judges_the_forwarded_client_only_behind_a_trusted_proxy() {
    let sg = Shardgate::start(Options::new().arg("--trusted-proxies").arg("127.0.0.2/32"));
    let up = CountingServer::start("ip-xff");
    let tenant = Tenant::create(&sg, "ipxff");
    route_with_chain(
        &tenant,
        &up,
        "/x",
        json!([plugin(
            "ip_restriction",
            "pre_request",
            0,
            json!({"allow": ["127.0.0.0/8"], "deny": ["198.51.100.0/24"]})
        )]),
    );
    let via_proxy = tenant.client().source_ip(loopback(2));
    let denied = via_proxy.request("GET", "/x", &[("X-Forwarded-For", "198.51.100.7")], b"");
    assert_eq!(
        denied.status, 403,
        "the forwarded client is denied: {denied}"
    );
    let outside = via_proxy.request("GET", "/x", &[("X-Forwarded-For", "203.0.113.1")], b"");
    assert_eq!(outside.status, 403, "not in the allow list: {outside}");
    via_proxy.get("/x").expect_status(200);

    // An untrusted peer cannot borrow an address, allowed or not.
    let direct = tenant.client().source_ip(loopback(3));
    direct
        .request("GET", "/x", &[("X-Forwarded-For", "198.51.100.7")], b"")
        .expect_status(200);
    assert_eq!(up.count(), 2);
}

// -- the catalogue and validation ----------------------------------------------------------------

#[test]
fn plugin_catalogue_lists_every_plugin_with_stages_and_documented_settings() {
    let sg = Shardgate::start(Options::new());
    let catalogue = sg.admin().get("/api/v1/plugins").expect_status(200).json();
    let plugins = catalogue["plugins"].as_array().expect("plugins is a list");
    assert_eq!(catalogue["count"], json!(plugins.len()), "{catalogue}");

    let expected: [(&str, &[&str], &[&str]); 9] = [
        (
            "rate_limiter",
            &["pre_request"],
            &[
                "limits.global.limit",
                "limits.global.window",
                "limits.per_ip.limit",
                "limits.per_ip.window",
                "limits.per_user.limit",
                "limits.per_user.window",
                "actions.type",
                "actions.retry_after",
                "user_header",
            ],
        ),
        (
            "request_size_limiter",
            &["pre_request"],
            &[
                "max_body_bytes",
                "max_header_bytes",
                "require_content_length",
            ],
        ),
        ("ip_restriction", &["pre_request"], &["allow", "deny"]),
        (
            "cors",
            &["pre_request", "pre_response"],
            &[
                "allowed_origins",
                "allowed_methods",
                "allowed_headers",
                "exposed_headers",
                "allow_credentials",
                "max_age",
            ],
        ),
        (
            "request_transformer",
            &["pre_request"],
            &[
                "remove_headers",
                "rename_headers",
                "set_headers",
                "add_headers",
                "add_query",
            ],
        ),
        (
            "response_transformer",
            &["pre_response"],
            &[
                "remove_headers",
                "rename_headers",
                "set_headers",
                "add_headers",
            ],
        ),
        (
            "token_rate_limiter",
            &["pre_request"],
            &[
                "limits.global.limit",
                "limits.global.window",
                "limits.per_ip.limit",
                "limits.per_ip.window",
                "limits.per_user.limit",
                "limits.per_user.window",
                "user_header",
            ],
        ),
        ("prompt_guard", &["pre_request"], &["deny", "allow"]),
        (
            "pii_masking",
            &["pre_request"],
            &["entities", "custom", "action", "apply_to", "stream_window"],
        ),
    ];
    let names: BTreeSet<&str> = plugins.iter().filter_map(|p| p["name"].as_str()).collect();
    let expected_names: BTreeSet<&str> = expected.iter().map(|(n, _, _)| *n).collect();
    assert_eq!(names, expected_names, "{catalogue}");

    for (name, stages, paths) in expected {
        let entry = plugins
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert!(
            entry["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{name} has a description: {entry}"
        );
        assert_eq!(entry["stages"], json!(stages), "{name}");
        let settings = entry["settings"].as_array().expect("settings is a list");
        let listed: Vec<&str> = settings.iter().filter_map(|s| s["path"].as_str()).collect();
        assert_eq!(listed, paths, "{name}: every setting, in order");
        for setting in settings {
            for field in ["type", "default", "description"] {
                assert!(
                    setting[field].as_str().is_some_and(|v| !v.is_empty()),
                    "{name}: {field} documented: {setting}"
                );
            }
        }
    }
}

#[test]
fn plugin_in_a_stage_it_cannot_run_in_or_with_bad_settings_is_400_naming_the_field() {
    let sg = Shardgate::start(Options::new());
    let tenant = Tenant::create(&sg, "invalid");
    let path = format!("/api/v1/gateways/{}", tenant.gateway_id);
    let body = |plugin: Value| json!({"name": "gw-invalid", "subdomain": "invalid", "required_plugins": [plugin]});
    for (bad, field) in [
        (
            plugin(
                "response_transformer",
                "pre_request",
                0,
                json!({"set_headers": {"X-A": "b"}}),
            ),
            "required_plugins[0].stage",
        ),
        (
            plugin(
                "cors",
                "pre_request",
                0,
                json!({"allowed_origins": ["null"]}),
            ),
            "required_plugins[0].settings.allowed_origins[0]",
        ),
        (
            plugin(
                "ip_restriction",
                "pre_request",
                0,
                json!({"deny": ["10.1.2.3/16"]}),
            ),
            "required_plugins[0].settings.deny[0]",
        ),
        (
            plugin(
                "request_transformer",
                "pre_request",
                0,
                json!({"set_headers": {"Content-Length": "0"}}),
            ),
            "required_plugins[0].settings.set_headers.Content-Length",
        ),
        (
            plugin("request_size_limiter", "pre_request", 0, json!({})),
            "required_plugins[0].settings",
        ),
    ] {
        let error = tenant
            .admin
            .put_json(&path, &body(bad.clone()))
            .expect_status(400)
            .error();
        assert!(error.contains(field), "{bad}: {error}");
    }
}
