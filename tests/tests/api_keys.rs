//! API keys as the product documents describe them (issue 14), end to end: scopes (403
//! outside them, references checked, deleted rules leave them without widening a key),
//! rotation with a grace period (both secrets work, then only the new one; a kill -9 in the
//! grace period changes nothing; usage stays with the key id), expiry warnings (header,
//! listing, gauge), exact usage export (every request and byte the test put on the wire, by
//! key, status class and rate-limit dimension, over several workers and connections, the same
//! in CSV and JSON, and after a restart and a kill -9), and the anomaly detector (a spike, a
//! 401 burst, a key from many addresses).
//!
//! Usage is flushed from the workers once a second, so tests poll the export until it
//! settles (bounded) instead of sleeping. Every test runs under each io driver.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::thread;
use std::time::{Duration, Instant};

use shardgate_tests::tenant::Tenant;
use shardgate_tests::upstream::CountingServer;
use shardgate_tests::{Client, Options, Resp, Shardgate, Value, io_drivers, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// How long usage may take to reach the export after the last response was read.
const SETTLE: Duration = Duration::from_secs(10);

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn in_future(secs: i64) -> String {
    (OffsetDateTime::now_utc() + time::Duration::seconds(secs))
        .format(&Rfc3339)
        .expect("format")
}

/// A new key on the tenant's gateway with `extra` fields; (id, plaintext).
fn new_key(t: &Tenant, name: &str, extra: Value) -> (String, String) {
    let mut body = json!({"name": name});
    shardgate_tests::tenant::merge(&mut body, extra);
    let created = t
        .admin
        .post_json(&t.collection("keys"), &body)
        .expect_status(201)
        .json();
    (
        created["id"].as_str().expect("id").to_owned(),
        created["key"].as_str().expect("plaintext").to_owned(),
    )
}

fn with_key(t: &Tenant, key: &str) -> Client {
    t.anonymous().header("X-API-Key", key)
}

fn get(t: &Tenant, key: &str, path: &str) -> Resp {
    with_key(t, key).get(path)
}

// ---------------------------------------------------------------------------------------------
// Scopes

#[test]
fn scopes_admit_their_rules_services_and_methods_and_refuse_the_rest_with_403() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let t = Tenant::create(&sg, "scoped");
        let a = CountingServer::start("a");
        let b = CountingServer::start("b");
        let ra = t.route("a", "/a", vec![a.target(json!({}))], json!({}), json!({}));
        let rb = t.route("b", "/b", vec![b.target(json!({}))], json!({}), json!({}));

        let (rules_id, rules_only) =
            new_key(&t, "rules", json!({"scopes": {"rules": [ra.rule_id]}}));
        let (_, svc_get) = new_key(
            &t,
            "svc-get",
            json!({"scopes": {"services": [rb.service_id], "methods": ["GET"]}}),
        );
        get(&t, &rules_only, "/a").expect_status(200);
        let refused = get(&t, &rules_only, "/b").expect_status(403);
        assert_eq!(
            refused.error_json()["error"],
            "key not allowed for this route",
            "{refused}"
        );
        get(&t, &svc_get, "/b").expect_status(200);
        get(&t, &svc_get, "/a").expect_status(403);
        with_key(&t, &svc_get)
            .request("POST", "/b", &[], b"x")
            .expect_status(403);
        // An unscoped key still reaches everything; a refused request never reaches the
        // upstream.
        t.client().get("/b").expect_status(200);
        assert_eq!((a.count(), b.count()), (1, 2), "{driver}");

        // References are checked, naming the field.
        let bad = t.admin.post_json(
            &t.collection("keys"),
            &json!({"name": "x", "scopes": {"rules": [rb.rule_id, ra.service_id]}}),
        );
        assert_eq!(bad.status, 400, "{bad}");
        assert!(bad.error().contains("scopes.rules[1]"), "{bad}");
        let bad = t.admin.post_json(
            &t.collection("keys"),
            &json!({"name": "x", "scopes": {"methods": ["FETCH"]}}),
        );
        assert_eq!(bad.status, 400, "{bad}");
        assert!(bad.error().contains("scopes.methods[0]"), "{bad}");

        // Deleting the only rule a key was scoped to removes it from the scopes in the same
        // write and disables the key rather than widening it to every rule.
        t.admin
            .delete(&t.item("rules", &ra.rule_id))
            .expect_status(204);
        let key = t
            .admin
            .get(&t.item("keys", &rules_id))
            .expect_status(200)
            .json();
        assert_eq!(key["scopes"]["rules"], json!([]), "{key}");
        assert_eq!(key["active"], false, "{key}");
        get(&t, &rules_only, "/b").expect_status(401);
    }
}

// ---------------------------------------------------------------------------------------------
// Rotation

/// Requests `path` with `key` and expects `status`.
fn expect(t: &Tenant, key: &str, status: u16) -> Resp {
    get(t, key, "/r").expect_status(status)
}

#[test]
fn rotation_keeps_the_old_secret_for_its_grace_period_even_across_kill_9() {
    for driver in io_drivers() {
        let dir = tempfile::tempdir().expect("data dir");
        let mut sg = Shardgate::start(Options::new().io_driver(driver).data_dir(dir.path()));
        let t = Tenant::create(&sg, "rotate");
        let up = CountingServer::start("r");
        t.route("r", "/r", vec![up.target(json!({}))], json!({}), json!({}));
        let (id, first) = new_key(&t, "rotating", json!({}));
        expect(&t, &first, 200);

        let rotate = |admin: &Client, body: Value| {
            admin.post_json(&format!("{}/rotate", t.item("keys", &id)), &body)
        };
        let bad = rotate(&t.admin, json!({"grace_period": "soon"}));
        assert_eq!(bad.status, 400, "{bad}");
        assert!(bad.error().contains("grace_period"), "{bad}");

        let grace = 8;
        let rotated = rotate(&t.admin, json!({"grace_period": format!("{grace}s")}))
            .expect_status(200)
            .json();
        let rotated_at = Instant::now();
        assert_eq!(rotated["id"], id.as_str(), "the same key id: {rotated}");
        let second = rotated["key"].as_str().expect("new plaintext").to_owned();
        assert_ne!(second, first);
        let shown = t.admin.get(&t.item("keys", &id)).expect_status(200).json();
        assert!(shown["rotated_at"].is_string(), "{shown}");
        assert!(shown["previous_valid_until"].is_string(), "{shown}");
        assert!(
            shown.get("key").is_none(),
            "a GET never shows a secret: {shown}"
        );
        expect(&t, &first, 200);
        expect(&t, &second, 200);

        // A kill -9 in the grace period (once the usage so far is flushed): both secrets
        // still work after the restart.
        settle_usage(&t, &id, up.count() as u64);
        sg.kill9();
        let sg = Shardgate::start(Options::new().io_driver(driver).data_dir(dir.path()));
        let t = Tenant {
            admin: sg.admin(),
            proxy: sg.proxy_addr(),
            ..t.clone()
        };
        assert!(
            rotated_at.elapsed() < Duration::from_secs(grace - 2),
            "the restart took most of the grace period"
        );
        expect(&t, &first, 200);
        expect(&t, &second, 200);

        // After the grace period only the new secret works.
        thread::sleep(Duration::from_secs(grace).saturating_sub(rotated_at.elapsed()));
        thread::sleep(Duration::from_millis(1100));
        let old = expect(&t, &first, 401);
        assert!(old.error().contains("rotated"), "{old}");
        expect(&t, &second, 200);

        // A second rotation during a grace period ends that grace at once.
        let third = rotate(&t.admin, json!({"grace_period": "1h"}))
            .expect_status(200)
            .json()["key"]
            .as_str()
            .expect("plaintext")
            .to_owned();
        expect(&t, &second, 200);
        let fourth = rotate(&t.admin, json!({})).expect_status(200).json()["key"]
            .as_str()
            .expect("plaintext")
            .to_owned();
        expect(&t, &second, 401);
        expect(&t, &third, 200);
        expect(&t, &fourth, 200);
        // `0s`: no grace at all.
        let fifth = rotate(&t.admin, json!({"grace_period": "0s"}))
            .expect_status(200)
            .json()["key"]
            .as_str()
            .expect("plaintext")
            .to_owned();
        expect(&t, &fourth, 401);
        expect(&t, &fifth, 200);

        // Every secret's requests count for the one key id (a refused old secret counts
        // as `unauthenticated`, not for the key).
        let admitted = up.count() as u64;
        let usage = settle_usage(&t, &id, admitted);
        assert_eq!(usage["totals"]["requests"], admitted, "{usage}");
        assert_eq!(usage["totals"]["status"]["2xx"], admitted, "{usage}");
    }
}

// ---------------------------------------------------------------------------------------------
// Expiry warnings

#[test]
fn keys_near_expiry_are_announced_listed_and_counted() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let t = Tenant::create(&sg, "expiring");
        let up = CountingServer::start("e");
        t.route("e", "/e", vec![up.target(json!({}))], json!({}), json!({}));
        let (_, soon) = new_key(&t, "soon", json!({"expires_at": in_future(2 * 86_400)}));
        let (_, later) = new_key(&t, "later", json!({"expires_at": in_future(30 * 86_400)}));

        let r = get(&t, &soon, "/e").expect_status(200);
        let left: i64 = r
            .header("x-api-key-expires-in")
            .unwrap_or_else(|| panic!("no expiry header: {r}"))
            .parse()
            .expect("seconds");
        assert!((2 * 86_400 - 120..=2 * 86_400).contains(&left), "{left}");
        let r = get(&t, &later, "/e").expect_status(200);
        assert!(r.header("x-api-key-expires-in").is_none(), "{r}");
        t.client().get("/e").expect_status(200);

        let listed = t
            .admin
            .get(&format!("{}?expiring_within=7d", t.collection("keys")))
            .expect_status(200)
            .json();
        assert_eq!(listed["count"], 1, "{listed}");
        assert_eq!(listed["keys"][0]["name"], "soon", "{listed}");
        let listed = t
            .admin
            .get(&format!("{}?expiring_within=60d", t.collection("keys")))
            .expect_status(200)
            .json();
        assert_eq!(listed["count"], 2, "{listed}");
        let bad = t
            .admin
            .get(&format!("{}?expiring_within=soon", t.collection("keys")));
        assert_eq!(bad.status, 400, "{bad}");
        assert!(bad.error().contains("expiring_within"), "{bad}");
        assert_eq!(expiring_gauge(&sg, "expiring"), 1);

        // A longer warning on the gateway covers the second key too.
        t.update_gateway(&json!({
            "name": "gw-expiring", "subdomain": "expiring", "key_expiry_warning": "45d"
        }));
        let r = get(&t, &later, "/e").expect_status(200);
        assert!(r.header("x-api-key-expires-in").is_some(), "{r}");
        assert_eq!(expiring_gauge(&sg, "expiring"), 2);
    }
}

fn expiring_gauge(sg: &Shardgate, gateway: &str) -> u64 {
    let text = sg.admin().get("/metrics").expect_status(200).text();
    let series = format!("shardgate_api_keys_expiring{{gateway=\"{gateway}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .trim()
        .parse()
        .expect("a count")
}

// ---------------------------------------------------------------------------------------------
// Usage

/// What the test put on the wire for one key slot.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Sent {
    requests: u64,
    s2xx: u64,
    s4xx: u64,
    bytes_in: u64,
    bytes_out: u64,
    per_ip_limited: u64,
}

impl std::ops::AddAssign for Sent {
    fn add_assign(&mut self, o: Sent) {
        self.requests += o.requests;
        self.s2xx += o.s2xx;
        self.s4xx += o.s4xx;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.per_ip_limited += o.per_ip_limited;
    }
}

/// Sends `paths` on one connection, pipelined (the last asks to close), and returns what
/// went each way, with each response's status.
fn pipelined(client: &Client, host: &str, key: Option<&str>, paths: &[&str]) -> Sent {
    let mut bytes = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let close = if i + 1 == paths.len() {
            "Connection: close\r\n"
        } else {
            ""
        };
        let auth = key
            .map(|k| format!("X-API-Key: {k}\r\n"))
            .unwrap_or_default();
        bytes.extend_from_slice(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}{close}\r\n").as_bytes(),
        );
    }
    let answer = client.raw(&bytes);
    let text = String::from_utf8_lossy(&answer);
    let mut sent = Sent {
        requests: paths.len() as u64,
        bytes_in: bytes.len() as u64,
        bytes_out: answer.len() as u64,
        ..Sent::default()
    };
    let statuses: Vec<u16> = text
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect();
    assert_eq!(statuses.len(), paths.len(), "{text}");
    for s in statuses {
        match s {
            200..=299 => sent.s2xx += 1,
            429 => {
                sent.s4xx += 1;
                sent.per_ip_limited += 1;
            }
            400..=499 => sent.s4xx += 1,
            other => panic!("unexpected status {other}: {text}"),
        }
    }
    sent
}

/// Polls a key's usage export (minute buckets, today) until it counts `requests`.
fn settle_usage(t: &Tenant, key_id: &str, requests: u64) -> Value {
    let path = format!(
        "{}/usage?granularity=minute&from={}",
        t.item("keys", key_id),
        in_future(-3_600)
    );
    let deadline = Instant::now() + SETTLE;
    loop {
        let body = t.admin.get(&path).expect_status(200).json();
        if body["totals"]["requests"].as_u64() == Some(requests) || Instant::now() > deadline {
            return body;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn gateway_usage(t: &Tenant, query: &str) -> Resp {
    t.admin
        .get(&format!(
            "{}/usage?from={}&{query}",
            t.collection("").trim_end_matches('/'),
            in_future(-3_600)
        ))
        .expect_status(200)
}

/// The totals of one key slot in a gateway JSON export.
fn key_totals(export: &Value, key: &str) -> Sent {
    let mut sum = Sent::default();
    for bucket in export["buckets"].as_array().expect("buckets") {
        for k in bucket["keys"].as_array().expect("keys") {
            if k["key_id"] == key {
                sum += Sent {
                    requests: k["requests"].as_u64().unwrap_or(0),
                    s2xx: k["status"]["2xx"].as_u64().unwrap_or(0),
                    s4xx: k["status"]["4xx"].as_u64().unwrap_or(0),
                    bytes_in: k["bytes_in"].as_u64().unwrap_or(0),
                    bytes_out: k["bytes_out"].as_u64().unwrap_or(0),
                    per_ip_limited: k["rate_limited"]["per_ip"].as_u64().unwrap_or(0),
                };
            }
        }
    }
    sum
}

/// The same totals from the CSV export.
fn csv_totals(csv: &str) -> BTreeMap<String, Sent> {
    let mut lines = csv.split("\r\n").filter(|l| !l.is_empty());
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no column {name}"))
    };
    let (key, req, s2, s4, bin, bout, lim) = (
        col("key_id"),
        col("requests"),
        col("status_2xx"),
        col("status_4xx"),
        col("bytes_in"),
        col("bytes_out"),
        col("rate_limited_per_ip"),
    );
    let mut out: BTreeMap<String, Sent> = BTreeMap::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), header.len(), "{line}");
        let n = |i: usize| f[i].parse::<u64>().expect("a count");
        *out.entry(f[key].to_owned()).or_default() += Sent {
            requests: n(req),
            s2xx: n(s2),
            s4xx: n(s4),
            bytes_in: n(bin),
            bytes_out: n(bout),
            per_ip_limited: n(lim),
        };
    }
    out
}

#[test]
fn usage_export_counts_every_request_and_byte_and_survives_restarts() {
    for driver in io_drivers() {
        let dir = tempfile::tempdir().expect("data dir");
        let opts = || {
            Options::new()
                .io_driver(driver)
                .workers(2)
                .data_dir(dir.path())
        };
        let mut sg = Shardgate::start(opts());
        let t = Tenant::create(&sg, "billing");
        let up = CountingServer::builder("u").body(&[b'x'; 700]).start();
        t.route(
            "ok",
            "/ok",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );
        let limited = t.route(
            "limited",
            "/limited",
            vec![up.target(json!({}))],
            json!({}),
            json!({"plugin_chain": [{
                "name": "rate_limiter", "enabled": true, "stage": "pre_request", "priority": 1,
                "settings": {"limits": {"per_ip": {"limit": 3, "window": "1h"}}}
            }]}),
        );
        let (other_id, other) = new_key(&t, "other", json!({}));
        let host = t.host();

        // Several connections from several addresses, in parallel.
        let work: Vec<(u8, Option<String>, Vec<&'static str>)> = vec![
            (2, Some(t.key.clone()), vec!["/ok"; 7]),
            (3, Some(t.key.clone()), vec!["/ok", "/limited", "/ok"]),
            (3, Some(t.key.clone()), vec!["/limited"; 4]),
            (4, Some(other.clone()), vec!["/ok"; 5]),
            (5, Some("sgk_not-a-key".to_owned()), vec!["/ok"; 3]),
            (5, None, vec!["/ok", "/limited"]),
        ];
        let results: Vec<(String, Sent)> = thread::scope(|s| {
            let handles: Vec<_> = work
                .iter()
                .map(|(ip, key, paths)| {
                    let client = Client::new(t.proxy).source_ip(loopback(*ip));
                    let host = host.clone();
                    let (t, other, other_id) = (&t, &other, &other_id);
                    s.spawn(move || {
                        let slot = match key.as_deref() {
                            Some(k) if k == t.key => t.key_id.clone(),
                            Some(k) if k == other.as_str() => other_id.clone(),
                            _ => "unauthenticated".to_owned(),
                        };
                        (slot, pipelined(&client, &host, key.as_deref(), paths))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("client"))
                .collect()
        });
        let mut expected: BTreeMap<String, Sent> = BTreeMap::new();
        for (slot, sent) in results {
            *expected.entry(slot).or_default() += sent;
        }
        let main = expected[&t.key_id];
        assert_eq!(
            main.per_ip_limited, 2,
            "3 of 5 /limited from 127.0.0.3 pass"
        );
        let total: u64 = expected.values().map(|s| s.requests).sum();

        let check = |t: &Tenant, when: &str| {
            let usage = settle_usage(t, &t.key_id, main.requests);
            let totals = &usage["totals"];
            assert_eq!(totals["requests"], main.requests, "{when}: {usage}");
            assert_eq!(totals["bytes_in"], main.bytes_in, "{when}: {usage}");
            assert_eq!(totals["bytes_out"], main.bytes_out, "{when}: {usage}");
            assert_eq!(totals["status"]["2xx"], main.s2xx, "{when}");
            assert_eq!(totals["status"]["4xx"], main.s4xx, "{when}");
            assert_eq!(totals["rate_limited"]["per_ip"], 2, "{when}");
            // Per rule: /limited got 5 requests from this key.
            let on_limited: u64 = usage["buckets"]
                .as_array()
                .expect("buckets")
                .iter()
                .flat_map(|b| b["rules"].as_array().cloned().unwrap_or_default())
                .filter(|r| r["rule_id"] == limited.rule_id.as_str())
                .map(|r| r["requests"].as_u64().unwrap_or(0))
                .sum();
            assert_eq!(on_limited, 5, "{when}: {usage}");
            assert_eq!(
                totals["upstream_latency"]["count"], main.s2xx,
                "{when}: every admitted request reached the upstream"
            );

            let export = gateway_usage(t, "granularity=minute").json();
            assert_eq!(export["totals"]["requests"], total, "{when}: {export}");
            // Every key slot, the keyless and wrong-key requests (401) as `unauthenticated`.
            for (slot, sent) in &expected {
                assert_eq!(key_totals(&export, slot), *sent, "{when}: {slot}");
            }
            // CSV and JSON agree, row for row summed by key (both Accept and ?format).
            let csv = t
                .admin
                .request(
                    "GET",
                    &format!(
                        "{}/usage?granularity=minute&from={}",
                        t.collection("").trim_end_matches('/'),
                        in_future(-3_600)
                    ),
                    &[("Accept", "text/csv")],
                    b"",
                )
                .expect_status(200);
            assert!(
                csv.header("content-type")
                    .is_some_and(|c| c.starts_with("text/csv")),
                "{csv}"
            );
            let by_csv = csv_totals(&csv.text());
            assert_eq!(by_csv.get(&t.key_id), Some(&main), "{when}");
            assert_eq!(
                by_csv.get("unauthenticated"),
                expected.get("unauthenticated")
            );
            let same = gateway_usage(t, "granularity=hour&format=csv").text();
            assert_eq!(csv_totals(&same), by_csv, "{when}: hour and minute agree");
        };
        check(&t, "live");

        // A clean restart keeps everything.
        sg.terminate();
        let mut sg = Shardgate::start(opts());
        let t = Tenant {
            admin: sg.admin(),
            proxy: sg.proxy_addr(),
            ..t.clone()
        };
        check(&t, "after a restart");

        // More traffic, then kill -9 once it has been flushed (at most a second later).
        let more = pipelined(
            &Client::new(t.proxy).source_ip(loopback(2)),
            &t.host(),
            Some(&t.key),
            &["/ok"; 4],
        );
        let usage = settle_usage(&t, &t.key_id, main.requests + more.requests);
        assert_eq!(usage["totals"]["requests"], main.requests + more.requests);
        sg.kill9();
        let sg = Shardgate::start(opts());
        let t = Tenant {
            admin: sg.admin(),
            proxy: sg.proxy_addr(),
            ..t.clone()
        };
        let usage = settle_usage(&t, &t.key_id, main.requests + more.requests);
        assert_eq!(
            usage["totals"]["bytes_out"],
            main.bytes_out + more.bytes_out,
            "after kill -9: {usage}"
        );

        // Bad queries are refused by name.
        for (query, field) in [
            ("granularity=week", "granularity"),
            ("format=xml", "format"),
            ("to=yesterday", "to"),
        ] {
            let r = t
                .admin
                .get(&format!("{}/usage?{query}", t.item("keys", &t.key_id)));
            assert_eq!(r.status, 400, "{query}: {r}");
            assert!(r.error().contains(field), "{r}");
        }
        let r = t.admin.get(&format!(
            "{}/usage?granularity=minute&from={}",
            t.item("keys", &t.key_id),
            in_future(-30 * 86_400)
        ));
        assert_eq!(r.status, 400, "more than 10 000 minutes: {r}");
    }
}

// ---------------------------------------------------------------------------------------------
// Anomalies

#[test]
fn a_spike_a_401_burst_and_a_key_from_many_addresses_are_found_logged_and_counted() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver).workers(2));
        let t = Tenant::create(&sg, "watched");
        t.update_gateway(&json!({
            "name": "gw-watched", "subdomain": "watched",
            "anomaly_detection": {
                "spike_floor": 40, "unauthorized_burst": 15,
                "distinct_addresses": 4, "address_window": "5m"
            }
        }));
        let up = CountingServer::start("w");
        t.route("w", "/w", vec![up.target(json!({}))], json!({}), json!({}));
        let (wide_id, wide) = new_key(&t, "wide", json!({}));
        let host = t.host();

        // A spike: 45 requests from a key with no history.
        let paths = vec!["/w"; 45];
        pipelined(&Client::new(t.proxy), &host, Some(&t.key), &paths);
        // Key guessing: 20 unknown keys from 127.0.0.9.
        for _ in 0..4 {
            pipelined(
                &Client::new(t.proxy).source_ip(loopback(9)),
                &host,
                Some("sgk_guess"),
                &["/w"; 5],
            );
        }
        // One key from six addresses.
        for ip in 20..26 {
            pipelined(
                &Client::new(t.proxy).source_ip(loopback(ip)),
                &host,
                Some(&wide),
                &["/w"],
            );
        }

        let deadline = Instant::now() + SETTLE;
        let found = loop {
            let found = t
                .admin
                .get(&t.collection("anomalies"))
                .expect_status(200)
                .json();
            if found["count"].as_u64() >= Some(3) || Instant::now() > deadline {
                break found;
            }
            thread::sleep(Duration::from_millis(200));
        };
        let list = found["anomalies"].as_array().expect("anomalies");
        let of = |kind: &str| {
            list.iter()
                .find(|f| f["kind"] == kind)
                .unwrap_or_else(|| panic!("no {kind} in {found}"))
        };
        let spike = of("request_spike");
        assert_eq!(spike["key_id"], t.key_id.as_str(), "{spike}");
        assert!(spike["observed"].as_u64() >= Some(40), "{spike}");
        assert!(spike["window_start"].is_string() && spike["expected"].is_number());
        let burst = of("unauthorized_burst");
        assert_eq!(burst["source"], "127.0.0.9", "{burst}");
        assert!(burst["key_id"].is_null());
        assert!(burst["observed"].as_u64() >= Some(15), "{burst}");
        let many = of("many_addresses");
        assert_eq!(many["key_id"], wide_id.as_str(), "{many}");
        assert!(many["observed"].as_u64() >= Some(5), "{many}");
        assert_eq!(list.len(), 3, "each reported once: {found}");

        let filtered = t
            .admin
            .get(&format!(
                "{}?kind=unauthorized_burst",
                t.collection("anomalies")
            ))
            .expect_status(200)
            .json();
        assert_eq!(filtered["count"], 1, "{filtered}");

        let metrics = sg.admin().get("/metrics").expect_status(200).text();
        for kind in ["request_spike", "unauthorized_burst", "many_addresses"] {
            let series =
                format!("shardgate_anomalies_total{{gateway=\"watched\",kind=\"{kind}\"}} 1");
            assert!(metrics.contains(&series), "no {series}");
        }
        let log = sg.stderr_contents();
        assert!(
            log.contains("usage anomaly") && log.contains("request_spike"),
            "the finding is logged at warn"
        );
        assert!(
            !log.contains(&t.key) && !log.contains(&wide),
            "no secret in the log"
        );
    }
}
