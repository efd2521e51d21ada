//! AI services end to end (issue 15), against fake OpenAI and Anthropic providers the tests
//! start (tests/python/fake_ai.py: real HTTP and SSE with usage fields) and through the
//! official OpenAI and Anthropic SDKs (tests/python/ai_client.py): native and translated
//! calls, streaming and not, with the gateway's credentials injected and the client's never
//! passed on; exact metering into the usage export (aborted streams marked estimated); the
//! token limiter under 50 concurrent requests; key budgets across a restart; fallback on a
//! provider's 429 and an error event when a stream breaks; guardrails, including PII split
//! across SSE events. Every test runs under each io driver.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use shardgate_tests::ai::{FakeProvider, sdk_call};
use shardgate_tests::tenant::{Tenant, merge};
use shardgate_tests::{Options, Shardgate, Value, io_drivers, json};

const OPENAI_KEY: &str = "sk-upstream-openai-7f3a9c2e";
const ANTHROPIC_KEY: &str = "sk-ant-upstream-5d1b8e40";

/// How long usage may take to reach the export.
const SETTLE: Duration = Duration::from_secs(10);

/// A gateway with an OpenAI-backed service at `/openai/*` and an Anthropic-backed one at
/// `/claude/*`, both `type: ai`; `rule_extra` goes on both rules (plugins).
struct Setup {
    tenant: Tenant,
    openai: FakeProvider,
    anthropic: FakeProvider,
}

fn setup(sg: &Shardgate, subdomain: &str, rule_extra: Value) -> Setup {
    let openai = FakeProvider::start("openai", "oa", &[]);
    let anthropic = FakeProvider::start("anthropic", "an", &[]);
    let tenant = Tenant::create(sg, subdomain);
    for (name, fake, provider, key) in [
        ("openai", &openai, "openai", OPENAI_KEY),
        ("claude", &anthropic, "anthropic", ANTHROPIC_KEY),
    ] {
        let upstream =
            tenant.upstream(name, vec![fake.target(provider, key, json!({}))], json!({}));
        let service = tenant.service(name, &upstream, json!({"type": "ai"}));
        let mut rule = json!({"path": format!("/{name}/*"), "service_id": service});
        merge(&mut rule, rule_extra.clone());
        tenant.rule(rule);
    }
    Setup {
        tenant,
        openai,
        anthropic,
    }
}

fn call(s: &Setup, sdk: &str, base: &str, key: &str, args: &[&str]) -> Value {
    sdk_call(sdk, s.tenant.proxy, &s.tenant.host(), base, key, args)
}

#[test]
fn native_and_translated_calls_stream_or_not_carry_the_providers_content_and_only_its_credentials()
{
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver).workers(2));
        let s = setup(&sg, "llm", json!({}));
        let key = s.tenant.key.clone();
        // (sdk, base, what serves it)
        let routes = [
            ("openai", "/openai/v1", "native OpenAI"),
            ("openai", "/claude/v1", "OpenAI → Anthropic"),
            ("anthropic", "/claude", "native Anthropic"),
            ("anthropic", "/openai", "Anthropic → OpenAI"),
        ];
        for (sdk, base, what) in routes {
            for stream in [false, true] {
                let mut args = vec!["--message", "tell me a story", "--max-tokens", "50"];
                if stream {
                    args.push("--stream");
                    args.push("--include-usage");
                }
                let out = call(&s, sdk, base, &key, &args);
                assert_eq!(out["ok"], true, "[{driver}] {what} stream={stream}: {out}");
                assert_eq!(
                    out["text"], "echo: tell me a story",
                    "[{driver}] {what} stream={stream}: the provider's words, unchanged"
                );
                let usage = &out["usage"];
                let (prompt, completion) = if sdk == "openai" {
                    (&usage["prompt_tokens"], &usage["completion_tokens"])
                } else {
                    (&usage["input_tokens"], &usage["output_tokens"])
                };
                assert_eq!(
                    (prompt.as_u64(), completion.as_u64()),
                    (Some(4), Some(5)),
                    "[{driver}] {what} stream={stream}: the provider's usage: {out}"
                );
            }
        }
        // Tool calls, translated both ways.
        for (sdk, base) in [("openai", "/claude/v1"), ("anthropic", "/openai")] {
            let out = call(
                &s,
                sdk,
                base,
                &key,
                &["--tools", "--message", "what is the weather", "--stream"],
            );
            assert_eq!(out["ok"], true, "[{driver}] {sdk} via {base}: {out}");
            assert_eq!(out["tool_calls"][0]["name"], "get_weather", "{out}");
            assert_eq!(out["tool_calls"][0]["arguments"]["city"], "Paris", "{out}");
        }

        // Each provider saw only the gateway's credential, never the client's key.
        for (fake, credential) in [(&s.openai, OPENAI_KEY), (&s.anthropic, ANTHROPIC_KEY)] {
            let seen = fake.seen();
            assert!(!seen.is_empty(), "[{driver}] {} was called", fake.name);
            for request in &seen {
                assert_eq!(request["key"], credential, "[{driver}] {request}");
                let headers = request["headers"].to_string();
                assert!(
                    !headers.contains(&key),
                    "[{driver}] the client's gateway key reached {}: {headers}",
                    fake.name
                );
            }
        }
        // `GET …/models` lists the service's default and each provider's allowed models and
        // aliases (the service allows any), once each, sorted.
        let listed = s.tenant.upstream(
            "listed",
            vec![s.openai.target(
                "openai",
                OPENAI_KEY,
                json!({"models": {"allow": ["gpt-4o-mini"], "aliases": {"fast": "gpt-4o-mini"}}}),
            )],
            json!({}),
        );
        let service = s.tenant.service(
            "listed",
            &listed,
            json!({"type": "ai", "ai": {"models": {"default": "gpt-4o-mini"}}}),
        );
        s.tenant
            .rule(json!({"path": "/listed/*", "service_id": service}));
        let models = s
            .tenant
            .anonymous()
            .header("Authorization", &format!("Bearer {key}"))
            .get("/listed/v1/models")
            .expect_status(200)
            .json();
        assert_eq!(models["object"], "list", "[{driver}] {models}");
        let ids: Vec<&str> = models["data"]
            .as_array()
            .map(|d| d.iter().filter_map(|m| m["id"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(ids, ["fast", "gpt-4o-mini"], "[{driver}] {models}");

        // The credential is never shown by the admin API.
        let upstreams = s
            .tenant
            .admin
            .get(&s.tenant.collection("upstreams"))
            .expect_status(200)
            .text();
        assert!(!upstreams.contains(OPENAI_KEY) && !upstreams.contains(ANTHROPIC_KEY));
        assert!(upstreams.contains("<redacted>"), "{upstreams}");
        assert!(!sg.stderr_contents().contains(OPENAI_KEY));
    }
}

/// Sums of the usage export's token totals for one key.
fn key_usage(s: &Setup, key_id: &str, expect_requests: u64) -> Value {
    let path = format!("{}/usage", s.tenant.item("keys", key_id));
    let deadline = Instant::now() + SETTLE;
    loop {
        let body = s.tenant.admin.get(&path).expect_status(200).json();
        if body["totals"]["requests"].as_u64() == Some(expect_requests) || Instant::now() > deadline
        {
            return body["totals"].clone();
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// A streaming chat request on a raw socket that reads the first event and hangs up.
fn abort_stream(s: &Setup, path: &str, key: &str) {
    let body = json!({
        "model": "m", "stream": true, "max_tokens": 40,
        "messages": [{"role": "user", "content": "one two three four five six seven eight"}],
    })
    .to_string();
    let mut conn = TcpStream::connect(s.tenant.proxy).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {key}\r\nContent-Type: \
         application/json\r\nx-fake-delay-ms: 200\r\nContent-Length: {}\r\n\r\n{body}",
        s.tenant.host(),
        body.len()
    );
    conn.write_all(head.as_bytes()).expect("send");
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("data:") {
        let n = conn.read(&mut buf).expect("read the first event");
        assert!(n > 0, "stream closed before its first event");
        got.extend_from_slice(&buf[..n]);
    }
    drop(conn);
}

#[test]
fn metering_is_exact_and_streams_the_client_left_are_estimated() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver).workers(2));
        let s = setup(&sg, "meter", json!({}));
        let (key, key_id) = (s.tenant.key.clone(), s.tenant.key_id.clone());
        let mut sent = 0;
        for (sdk, base) in [
            ("openai", "/openai/v1"),
            ("openai", "/claude/v1"),
            ("anthropic", "/claude"),
            ("anthropic", "/openai"),
        ] {
            for (i, stream) in [false, true, true].into_iter().enumerate() {
                let message = format!("count these {} words please", "x ".repeat(i + 1));
                let mut args = vec!["--message", message.as_str(), "--max-tokens", "30"];
                if stream {
                    args.push("--stream");
                }
                let out = call(&s, sdk, base, &key, &args);
                assert_eq!(out["ok"], true, "[{driver}] {out}");
                sent += 1;
            }
        }
        let totals = key_usage(&s, &key_id, sent);
        let (oa, an) = (s.openai.usage(), s.anthropic.usage());
        let sum = |field: &str| oa[field].as_u64().unwrap_or(0) + an[field].as_u64().unwrap_or(0);
        assert_eq!(
            totals["requests"].as_u64(),
            Some(sent),
            "[{driver}] {totals}"
        );
        assert_eq!(
            totals["tokens"]["prompt"].as_u64(),
            Some(sum("prompt_tokens")),
            "[{driver}] prompt tokens: the export {totals} vs the providers {oa} {an}"
        );
        assert_eq!(
            totals["tokens"]["completion"].as_u64(),
            Some(sum("completion_tokens")),
            "[{driver}] completion tokens: the export {totals} vs the providers {oa} {an}"
        );
        assert_eq!(totals["estimated_requests"], 0, "[{driver}] {totals}");

        // Streams the client abandons are counted, by estimate, and marked so.
        let (other, other_id) = {
            let created = s
                .tenant
                .admin
                .post_json(&s.tenant.collection("keys"), &json!({"name": "aborts"}))
                .expect_status(201)
                .json();
            (
                created["key"].as_str().expect("key").to_owned(),
                created["id"].as_str().expect("id").to_owned(),
            )
        };
        abort_stream(&s, "/openai/v1/chat/completions", &other);
        abort_stream(&s, "/claude/v1/messages", &other);
        let deadline = Instant::now() + SETTLE;
        let totals = loop {
            let t = key_usage(&s, &other_id, 2);
            if t["estimated_requests"] == 2 || Instant::now() > deadline {
                break t;
            }
            thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(totals["estimated_requests"], 2, "[{driver}] {totals}");
        assert!(
            totals["tokens"]["completion"].as_u64().unwrap_or(0) > 0,
            "[{driver}] what was streamed counts: {totals}"
        );
        // Prometheus says the same.
        let metrics = sg.admin().get("/metrics").expect_status(200).text();
        assert!(
            metrics.contains("shardgate_ai_tokens_total{gateway=\"meter\",service=\"openai\",provider=\"openai\",kind=\"prompt\"}"),
            "{metrics}"
        );
        assert!(metrics.contains("metering=\"estimated\"} 1"), "{metrics}");
    }
}

/// One raw chat request; (status, response headers and body as text).
fn raw_chat(s: &Setup, path: &str, body: &Value) -> (u16, String) {
    let resp = s
        .tenant
        .anonymous()
        .header("Authorization", &format!("Bearer {}", s.tenant.key))
        .post_json(path, body);
    let headers: String = resp
        .headers
        .iter()
        .map(|(n, v)| format!("{n}: {v}\n"))
        .collect();
    (resp.status, headers + &resp.text())
}

#[test]
fn fifty_concurrent_requests_never_pass_the_token_limit_and_429s_say_so_in_token_headers() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver).workers(2));
        let limiter = json!({"plugin_chain": [{
            "name": "token_rate_limiter", "enabled": true, "stage": "pre_request", "priority": 1,
            "settings": {"limits": {"global": {"limit": 10000, "window": "1m"}}},
        }]});
        let s = setup(&sg, "tokens", limiter);
        // Each request really spends 400 prompt + 401 completion tokens: 50 would spend
        // ~40 000, four times the limit.
        let words = "lorem ipsum ".repeat(200);
        let body = json!({
            "model": "m", "max_tokens": 500,
            "messages": [{"role": "user", "content": words}],
        });
        let results: Vec<(u16, String)> = thread::scope(|scope| {
            let handles: Vec<_> = (0..50)
                .map(|i| {
                    // One rule, one limiter: both ingress APIs through it.
                    let path = if i % 2 == 0 {
                        "/openai/v1/chat/completions"
                    } else {
                        "/openai/v1/messages"
                    };
                    let (s, body) = (&s, &body);
                    scope.spawn(move || raw_chat(s, path, body))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("client thread"))
                .collect()
        });
        let admitted = results.iter().filter(|(status, _)| *status == 200).count();
        let limited: Vec<&String> = results
            .iter()
            .filter(|(status, _)| *status == 429)
            .map(|(_, text)| text)
            .collect();
        assert_eq!(
            admitted + limited.len(),
            50,
            "[{driver}] only 200s and 429s"
        );
        assert!(
            admitted > 0 && !limited.is_empty(),
            "[{driver}] {admitted} admitted"
        );
        for text in &limited {
            let lower = text.to_ascii_lowercase();
            assert!(lower.contains("x-ratelimit-limit-tokens: 10000"), "{text}");
            assert!(lower.contains("x-ratelimit-remaining-tokens: 0"), "{text}");
            assert!(lower.contains("retry-after: "), "{text}");
        }
        // What the providers really spent for the admitted requests stays within the limit
        // (the documented bound is 0: each reservation is an upper bound of its cost).
        assert!(
            s.anthropic.seen().is_empty(),
            "only the /openai rule was called"
        );
        let spent: u64 = [s.openai.usage()]
            .iter()
            .map(|u| {
                u["prompt_tokens"].as_u64().unwrap_or(0)
                    + u["completion_tokens"].as_u64().unwrap_or(0)
            })
            .sum();
        assert!(spent > 0 && spent <= 10_000, "[{driver}] spent {spent}");
        let headers_of_a_200 = &results
            .iter()
            .find(|(status, _)| *status == 200)
            .expect("an admitted request")
            .1;
        assert!(
            headers_of_a_200
                .to_ascii_lowercase()
                .contains("x-ratelimit-remaining-tokens: "),
            "{headers_of_a_200}"
        );
    }
}

#[test]
fn a_key_over_its_budget_gets_429_even_after_a_restart() {
    for driver in io_drivers() {
        let data = tempfile::tempdir().expect("data dir");
        let opts = || {
            Options::new()
                .io_driver(driver)
                .workers(2)
                .data_dir(data.path())
        };
        let mut sg = Shardgate::start(opts());
        let s = setup(&sg, "budget", json!({}));
        let created = s
            .tenant
            .admin
            .post_json(
                &s.tenant.collection("keys"),
                &json!({"name": "capped", "budget": {"tokens": 1500, "period": "30d"}}),
            )
            .expect_status(201)
            .json();
        let capped = created["key"].as_str().expect("key").to_owned();
        let message = "word ".repeat(150);
        let args = ["--message", message.as_str(), "--max-tokens", "300"];
        // Each request reserves its ~0.8 KB body + 300 and spends 150 + 151: the third
        // (602 spent + its reservation) would pass 1500.
        for i in 0..2 {
            let out = call(&s, "openai", "/openai/v1", &capped, &args);
            assert_eq!(out["ok"], true, "[{driver}] request {i} fits: {out}");
        }
        let out = call(&s, "openai", "/openai/v1", &capped, &args);
        assert_eq!(out["status"], 429, "[{driver}] {out}");
        assert!(
            out["message"]
                .as_str()
                .unwrap_or_default()
                .contains("budget"),
            "[{driver}] {out}"
        );
        sg.terminate();
        let sg = Shardgate::start(opts());
        let s2 = Setup {
            tenant: Tenant {
                proxy: sg.proxy_addr(),
                admin: sg.admin(),
                ..s.tenant.clone()
            },
            openai: s.openai,
            anthropic: s.anthropic,
        };
        let out = call(&s2, "openai", "/openai/v1", &capped, &args);
        assert_eq!(
            out["status"], 429,
            "[{driver}] the spent budget survived the restart: {out}"
        );
        let shown = s2
            .tenant
            .admin
            .get(&s2.tenant.collection("keys"))
            .expect_status(200)
            .text();
        assert!(shown.contains("\"budget_usage\""), "{shown}");
        assert!(
            shown.contains("\"tokens\":602"),
            "the spending is shown: {shown}"
        );
    }
}

#[test]
fn a_provider_answering_429_falls_back_before_the_first_byte_and_a_broken_stream_ends_in_an_error_event()
 {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let busy = FakeProvider::start("openai", "busy", &["--status", "429"]);
        let spare = FakeProvider::start("anthropic", "spare", &[]);
        let broken = FakeProvider::start("openai", "broken", &["--fail-after", "2"]);
        let t = Tenant::create(&sg, "fallback");
        let upstream = t.upstream(
            "chain",
            vec![
                busy.target("openai", OPENAI_KEY, json!({"priority": 0})),
                spare.target("anthropic", ANTHROPIC_KEY, json!({"priority": 1})),
            ],
            json!({}),
        );
        let service = t.service("chain", &upstream, json!({"type": "ai"}));
        t.rule(json!({"path": "/chain/*", "service_id": service}));
        let up2 = t.upstream(
            "broken",
            vec![broken.target("openai", OPENAI_KEY, json!({}))],
            json!({}),
        );
        let svc2 = t.service("broken", &up2, json!({"type": "ai"}));
        t.rule(json!({"path": "/broken/*", "service_id": svc2}));
        let host = t.host();

        for stream in [false, true] {
            let mut args = vec!["--message", "hello fallback"];
            if stream {
                args.push("--stream");
            }
            let out = sdk_call("openai", t.proxy, &host, "/chain/v1", &t.key, &args);
            assert_eq!(out["ok"], true, "[{driver}] {out}");
            assert_eq!(out["text"], "echo: hello fallback", "[{driver}] {out}");
            assert!(
                out["id"].as_str().unwrap_or_default().contains("spare"),
                "[{driver}] the spare provider answered: {out}"
            );
        }
        assert_eq!(
            busy.seen().len(),
            2,
            "[{driver}] the busy provider was tried first"
        );

        let out = sdk_call(
            "openai",
            t.proxy,
            &host,
            "/broken/v1",
            &t.key,
            &["--message", "one two three four five", "--stream"],
        );
        assert_eq!(out["ok"], false, "[{driver}] not a silent success: {out}");
        // The raw stream: the partial text, then an error event, then a clean end.
        let resp = t
            .anonymous()
            .header("Authorization", &format!("Bearer {}", t.key))
            .post_json(
                "/broken/v1/chat/completions",
                &json!({"model": "m", "stream": true,
                        "messages": [{"role": "user", "content": "one two three four five"}]}),
            );
        assert_eq!(resp.status, 200);
        let text = resp.text();
        assert!(text.contains("echo: "), "{text}");
        assert!(
            text.trim_end().ends_with('}') && text.contains("\"error\""),
            "[{driver}] the stream ends with an error event: {text}"
        );
        let metrics = sg.admin().get("/metrics").expect_status(200).text();
        for outcome in ["status_429", "ok", "failed_mid_stream"] {
            assert!(
                metrics.contains(&format!("outcome=\"{outcome}\"")),
                "[{driver}] {outcome}: {metrics}"
            );
        }
    }
}

#[test]
fn guardrails_block_prompts_by_rule_and_mask_pii_split_across_stream_events() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let plugins = json!({"plugin_chain": [
            {"name": "prompt_guard", "enabled": true, "stage": "pre_request", "priority": 1,
             "settings": {"deny": [{"name": "no-passwords", "pattern": "(?i)password"}]}},
            {"name": "pii_masking", "enabled": true, "stage": "pre_request", "priority": 2,
             "settings": {"apply_to": "response"}},
        ]});
        let s = setup(&sg, "guard", plugins);
        let key = s.tenant.key.clone();
        let out = call(
            &s,
            "openai",
            "/openai/v1",
            &key,
            &["--message", "my Password is x"],
        );
        assert_eq!(out["status"], 400, "[{driver}] {out}");
        assert!(
            out["message"]
                .as_str()
                .unwrap_or_default()
                .contains("no-passwords"),
            "[{driver}] {out}"
        );
        assert!(
            s.openai.seen().is_empty(),
            "[{driver}] a blocked prompt never leaves"
        );

        // The fake streams one word per event: the card number spans four events.
        for (sdk, base) in [
            ("openai", "/openai/v1"),
            ("anthropic", "/openai"),
            ("openai", "/claude/v1"),
        ] {
            for stream in [true, false] {
                let mut args = vec![
                    "--message",
                    "card 4111 1111 1111 1111 and mail bob@example.com ok",
                ];
                if stream {
                    args.push("--stream");
                }
                let out = call(&s, sdk, base, &key, &args);
                assert_eq!(out["ok"], true, "[{driver}] {out}");
                let text = out["text"].as_str().unwrap_or_default();
                assert!(
                    text.contains("[CREDIT_CARD]") && text.contains("[EMAIL]"),
                    "[{driver}] {sdk} via {base} stream={stream}: {text}"
                );
                assert!(!text.contains("4111") && !text.contains("bob@"), "{text}");
                assert!(
                    text.ends_with(" ok"),
                    "[{driver}] nothing after the mask is lost: {text}"
                );
            }
        }
    }
}
