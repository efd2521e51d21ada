//! The HTTP/2 attack surface (issue 12, item 4) under a real attack: rapid reset
//! (CVE-2023-44487) with Python's `h2` (tests/python/rapid_reset.py). The attacker is sent
//! GOAWAY (ENHANCE_YOUR_CALM) and closed after its reset allowance, while another client
//! on the same (single) worker keeps being served; the gateway's memory stays bounded.

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use shardgate_tests::tenant::Tenant;
use shardgate_tests::upstream::CountingServer;
use shardgate_tests::{Options, Shardgate, Value, io_drivers, json, python};

/// ENHANCE_YOUR_CALM (RFC 9113 §7).
const ENHANCE_YOUR_CALM: u64 = 0xb;

#[test]
fn a_rapid_reset_client_gets_goaway_while_another_client_is_served() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver).workers(1));
        let up = CountingServer::builder("calm").body(b"ok").start();
        let tenant = Tenant::create(&sg, "calm");
        tenant.route(
            "calm",
            "/*",
            vec![up.target(json!({}))],
            json!({}),
            json!({"public": true}),
        );
        let rss_before = sg.rss_kib();

        // A well-behaved client on the same worker, requesting all through the attack.
        let served = thread::scope(|s| {
            let attack = s.spawn(|| {
                let output = Command::new(python())
                    .arg(concat!(
                        env!("CARGO_MANIFEST_DIR"),
                        "/python/rapid_reset.py"
                    ))
                    .args(["127.0.0.1", &sg.proxy_addr().port().to_string()])
                    .args(["calm.localhost", "/x", "100000"])
                    .output()
                    .expect("run the rapid-reset script (tests/run installs h2)");
                let text = String::from_utf8_lossy(&output.stdout).into_owned();
                let verdict: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
                    panic!(
                        "no verdict from the attack ({e}): {text}{}",
                        String::from_utf8_lossy(&output.stderr)
                    )
                });
                verdict
            });
            let client = tenant.anonymous();
            let mut ok = 0;
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until || !attack.is_finished() {
                if client.get("/fine").status == 200 {
                    ok += 1;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let verdict = attack.join().expect("the attack thread");
            (ok, verdict)
        });
        let (ok, verdict) = served;
        assert_eq!(
            verdict["goaway"].as_u64(),
            Some(ENHANCE_YOUR_CALM),
            "[{driver}] {verdict}"
        );
        assert_eq!(verdict["closed"], true, "[{driver}] {verdict}");
        let opened = verdict["opened"].as_u64().unwrap_or(0);
        assert!(
            opened < 100_000,
            "[{driver}] the attack ran its course: {verdict}"
        );
        assert!(
            ok >= 10,
            "[{driver}] the other client was served {ok} times"
        );
        let rss_after = sg.rss_kib();
        eprintln!(
            "[{driver}] rapid reset: {opened} streams opened before GOAWAY; other client \
             served {ok} times; RSS {rss_before} KiB -> {rss_after} KiB"
        );
        assert!(
            rss_after < rss_before + 64 * 1024,
            "[{driver}] RSS grew from {rss_before} to {rss_after} KiB"
        );
        // The gateway still answers HTTP/2 afterwards.
        let again = tenant.anonymous().get("/after");
        assert_eq!(again.status, 200, "[{driver}]");
    }
}
