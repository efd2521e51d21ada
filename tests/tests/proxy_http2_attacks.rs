//! The HTTP/2 attack surface (issue 12, item 4) under a real attack: rapid reset
//! (CVE-2023-44487) with Python's `h2` (tests/python/rapid_reset.py). The attacker is sent
//! GOAWAY (ENHANCE_YOUR_CALM) and closed after its reset allowance, while another client
//! on the same (single) worker keeps being served; the gateway's memory stays bounded.
//! And the timeouts and shutdown of HTTP/1.1, over HTTP/2: an idle connection gets GOAWAY
//! after the keep-alive timeout; a stream in flight at SIGTERM is answered.

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

/// Runs the Python `h2` client snippet `code` (it prints one JSON line) with `args`.
fn h2_script(code: &str, args: &[&str]) -> Value {
    let output = Command::new(python())
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("run Python h2 (tests/run installs it)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "no JSON from the h2 script ({e}): {text}{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Opens an h2c connection, sends nothing after the preface and SETTINGS, and reports
/// what the server sent and when the connection ended (seconds after the start).
const IDLE_CLIENT: &str = r#"
import json, socket, sys, time
import h2.config, h2.connection, h2.events, h2.exceptions
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.settimeout(10)
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
c.initiate_connection()
s.sendall(c.data_to_send())
start = time.time()
goaway = None
try:
    while True:
        data = s.recv(65536)
        if not data:
            break
        try:
            events = c.receive_data(data)
        except h2.exceptions.ProtocolError:
            # Frames after GOAWAY (h2's closing PING): this client's side is closed.
            continue
        for e in events:
            if isinstance(e, h2.events.ConnectionTerminated):
                goaway = int(e.error_code)
        s.sendall(c.data_to_send())
except OSError:
    pass
print(json.dumps({"goaway": goaway, "after": time.time() - start}))
"#;

#[test]
fn an_idle_h2_connection_gets_goaway_and_closes_after_the_keepalive_timeout() {
    for driver in io_drivers() {
        let sg = Shardgate::start(
            Options::new()
                .io_driver(driver)
                .arg("--keepalive-timeout")
                .arg("1s"),
        );
        let port = sg.proxy_addr().port().to_string();
        let verdict = h2_script(IDLE_CLIENT, &[&port]);
        assert_eq!(
            verdict["goaway"].as_u64(),
            Some(0),
            "[{driver}] NO_ERROR: {verdict}"
        );
        let after = verdict["after"].as_f64().unwrap_or(f64::MAX);
        assert!(
            (0.9..5.0).contains(&after),
            "[{driver}] closed {after:.2} s after opening, keep-alive timeout 1 s: {verdict}"
        );
    }
}

#[test]
fn an_h2_stream_in_flight_completes_after_sigterm() {
    for driver in io_drivers() {
        let mut sg = Shardgate::start(Options::new().io_driver(driver));
        let slow = CountingServer::builder("slow")
            .delay(Duration::from_millis(1500))
            .start();
        let tenant = Tenant::create(&sg, "drain2");
        tenant.route(
            "slow",
            "/slow",
            vec![slow.target(json!({}))],
            json!({}),
            json!({"public": true}),
        );
        let port = sg.proxy_addr().port();
        let in_flight = thread::spawn(move || {
            Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "10",
                    "--http2-prior-knowledge",
                    "--noproxy",
                    "*",
                ])
                .args(["-w", "\n%{http_version} %{http_code}"])
                .args(["-H", "Host: drain2.localhost"])
                .arg(format!("http://127.0.0.1:{port}/slow"))
                .output()
        });
        assert!(
            slow.wait_for(1, Duration::from_secs(5)),
            "[{driver}] the request never reached the upstream"
        );
        sg.send_sigterm();
        let output = in_flight
            .join()
            .expect("the curl thread")
            .expect("run curl");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            text.ends_with("\n2 200"),
            "[{driver}] the stream in flight was answered over HTTP/2: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let status = sg.terminate();
        assert!(status.success(), "[{driver}] exit status {status}");
    }
}
