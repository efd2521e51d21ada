//! HTTP/2 from clients (issue 12, item 1), with the clients users have: curl with
//! `--http2-prior-knowledge` (h2c on the plain listener) and `--http2` over TLS (ALPN),
//! and h2load with 10 connections × 100 concurrent streams. Every stream goes through the
//! HTTP/1.1 request flow, so the flow's answers (auth, 401/404/429, strip_path, weighted
//! balancing, streamed bodies both ways) are checked over h2 here against real upstreams.

use std::fs;
use std::net::SocketAddr;
use std::process::Command;

use shardgate_tests::tenant::Tenant;
use shardgate_tests::upstream::CountingServer;
use shardgate_tests::{Options, Shardgate, io_drivers, json};

/// How a test reaches the proxy over HTTP/2.
#[derive(Debug, Clone, Copy)]
enum Way {
    /// h2c with prior knowledge on the plain listener.
    H2c,
    /// ALPN h2 on the TLS listener (the development certificate; curl `-k`).
    H2,
}

const WAYS: [Way; 2] = [Way::H2c, Way::H2];

/// What curl saw: the HTTP version it spoke, the status, the body, the response headers.
#[derive(Debug)]
struct Seen {
    version: String,
    status: u16,
    body: String,
    headers: String,
}

/// `curl` over `way` to `host` (a name under `localhost`) at `path`, with `args` before the
/// URL. Panics when curl fails.
fn curl(sg: &Shardgate, way: Way, host: &str, path: &str, args: &[&str]) -> Seen {
    let dir = tempfile::tempdir().expect("temp dir for curl's headers");
    let headers = dir.path().join("headers");
    let (url, mut base): (String, Vec<String>) = match way {
        Way::H2c => {
            let addr = sg.proxy_addr();
            (
                format!("http://{host}:{}{path}", addr.port()),
                vec![
                    "--http2-prior-knowledge".into(),
                    "--resolve".into(),
                    resolve(host, addr),
                ],
            )
        }
        Way::H2 => {
            let addr = sg.expect_tls_addr();
            (
                format!("https://{host}:{}{path}", addr.port()),
                vec![
                    "--http2".into(),
                    "-k".into(),
                    "--resolve".into(),
                    resolve(host, addr),
                ],
            )
        }
    };
    base.extend(["-D".into(), headers.display().to_string()]);
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--noproxy", "*"])
        .args(["-w", "\n%{http_version} %{http_code}"])
        .args(&base)
        .args(args)
        .arg(&url)
        .output()
        .expect("run curl (tests/run installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl {way:?} {url} {args:?} failed ({}): {}{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let (body, tail) = stdout.rsplit_once('\n').expect("curl's -w line");
    let (version, code) = tail.split_once(' ').expect("version and status");
    // Every exchange here must be HTTP/2: over TLS, curl would quietly fall back to
    // HTTP/1.1 if the listener stopped choosing h2.
    assert_eq!(version, "2", "curl {way:?} {url} spoke HTTP/{version}");
    Seen {
        version: version.to_owned(),
        status: code.trim().parse().expect("a status code"),
        body: body.to_owned(),
        headers: fs::read_to_string(&headers).unwrap_or_default(),
    }
}

fn resolve(host: &str, addr: SocketAddr) -> String {
    format!("{host}:{}:127.0.0.1", addr.port())
}

#[test]
fn curl_over_h2c_and_h2_gets_the_request_flows_answers() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let up = CountingServer::start("h2-flow");
        let tenant = Tenant::create(&sg, "api");
        tenant.route(
            "flow",
            "/v1/*",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );
        tenant.route(
            "strip",
            "/strip/*",
            vec![up.target(json!({}))],
            json!({}),
            json!({"strip_path": true}),
        );
        let key = format!("X-API-Key: {}", tenant.key);
        for way in WAYS {
            let seen = curl(&sg, way, "api.localhost", "/v1/chat?x=1", &["-H", &key]);
            assert_eq!(seen.version, "2", "[{driver} {way:?}] {seen:?}");
            assert_eq!(seen.status, 200, "[{driver} {way:?}] {seen:?}");
            assert_eq!(seen.body, "h2-flow GET /v1/chat?x=1", "[{driver} {way:?}]");
            assert!(
                seen.headers.contains("x-upstream: h2-flow"),
                "[{driver} {way:?}] {}",
                seen.headers
            );
            let last = up.last();
            let scheme = match way {
                Way::H2c => "http",
                Way::H2 => "https",
            };
            assert_eq!(
                last.header("x-forwarded-proto"),
                Some(scheme),
                "[{driver} {way:?}]"
            );
            assert!(
                last.header("host").is_some(),
                "[{driver} {way:?}] {:?}",
                last.headers
            );

            // No key: 401; a key and no route: 404; strip_path strips.
            let seen = curl(&sg, way, "api.localhost", "/v1/chat", &[]);
            assert_eq!(
                (seen.version.as_str(), seen.status),
                ("2", 401),
                "[{driver} {way:?}]"
            );
            assert!(
                seen.body.contains("API key"),
                "[{driver} {way:?}] {}",
                seen.body
            );
            let seen = curl(&sg, way, "api.localhost", "/nowhere", &["-H", &key]);
            assert_eq!(seen.status, 404, "[{driver} {way:?}] {seen:?}");
            let seen = curl(&sg, way, "api.localhost", "/strip/rest?q=2", &["-H", &key]);
            assert_eq!(seen.status, 200, "[{driver} {way:?}] {seen:?}");
            assert_eq!(up.last().target, "/rest?q=2", "[{driver} {way:?}]");
            // An unknown gateway: 404 from the gateway lookup.
            let seen = curl(&sg, way, "nobody.localhost", "/v1/x", &["-H", &key]);
            assert_eq!(seen.status, 404, "[{driver} {way:?}] {seen:?}");
        }
    }
}

#[test]
fn request_and_response_bodies_stream_through_h2_both_ways() {
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 7).map(|i| (i % 251) as u8).collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let upload = dir.path().join("upload.bin");
    fs::write(&upload, &big).expect("write the upload");
    let upload_arg = format!("@{}", upload.display());
    let download: Vec<u8> = (0..2 * 1024 * 1024)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let echo = CountingServer::start("h2-body");
        let large = CountingServer::builder("h2-large").body(&download).start();
        let tenant = Tenant::create(&sg, "bodies");
        tenant.route(
            "up",
            "/up/*",
            vec![echo.target(json!({}))],
            json!({}),
            json!({}),
        );
        tenant.route(
            "down",
            "/down/*",
            vec![large.target(json!({}))],
            json!({}),
            json!({}),
        );
        let key = format!("X-API-Key: {}", tenant.key);
        for way in WAYS {
            // A 3 MiB upload: more than the stream and connection windows, so it can only
            // arrive if the gateway hands credit back as it forwards.
            let seen = curl(
                &sg,
                way,
                "bodies.localhost",
                "/up/file",
                &["-H", &key, "--data-binary", &upload_arg],
            );
            assert_eq!(seen.status, 200, "[{driver} {way:?}] {seen:?}");
            let last = echo.last();
            assert_eq!(last.method, "POST");
            assert_eq!(last.body.len(), big.len(), "[{driver} {way:?}]");
            assert!(
                last.body == big,
                "[{driver} {way:?}] the body changed on the way"
            );

            // The same without curl's content-length: the upstream gets it chunked.
            let seen = curl(
                &sg,
                way,
                "bodies.localhost",
                "/up/chunked",
                &[
                    "-H",
                    &key,
                    "-H",
                    "Transfer-Encoding:",
                    "-H",
                    "Content-Length:",
                    "--data-binary",
                    &upload_arg,
                ],
            );
            assert_eq!(seen.status, 200, "[{driver} {way:?}] {seen:?}");
            assert!(
                echo.last().body == big,
                "[{driver} {way:?}] chunked body changed"
            );

            // A 2 MiB download, well past the client's initial window.
            let out = dir.path().join("download.bin");
            let out_arg = out.display().to_string();
            let seen = curl(
                &sg,
                way,
                "bodies.localhost",
                "/down/file",
                &["-H", &key, "-o", &out_arg],
            );
            assert_eq!(seen.status, 200, "[{driver} {way:?}] {seen:?}");
            let got = fs::read(&out).expect("the download");
            assert_eq!(got.len(), download.len(), "[{driver} {way:?}]");
            assert!(got == download, "[{driver} {way:?}] the download changed");
        }
    }
}

#[test]
fn weighted_balancing_and_rate_limits_count_streams() {
    for driver in io_drivers() {
        // One worker: each worker keeps its own weighted cursor, and h2c's connections (one
        // per curl) may land on either.
        let sg = Shardgate::start(Options::new().io_driver(driver).workers(1));
        let heavy = CountingServer::start("heavy");
        let light = CountingServer::start("light");
        let tenant = Tenant::create(&sg, "lb");
        tenant.route(
            "lb",
            "/lb/*",
            vec![
                heavy.target(json!({"weight": 300})),
                light.target(json!({"weight": 100})),
            ],
            json!({"algorithm": "weighted-round-robin"}),
            json!({}),
        );
        let key = format!("X-API-Key: {}", tenant.key);
        for way in WAYS {
            heavy.clear();
            light.clear();
            // Eight requests. Over TLS: eight streams of one connection, one curl. Over
            // h2c: one curl each (curl 7.88 cannot reuse a prior-knowledge connection:
            // "Error in the HTTP2 framing layer" before it sends; nghttp and h2load can).
            match way {
                Way::H2 => {
                    let port = sg.expect_tls_addr().port();
                    let mut args = vec!["-H".to_owned(), key.clone()];
                    for i in 1..8 {
                        args.push(format!("https://lb.localhost:{port}/lb/{i}"));
                    }
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let seen = curl(&sg, way, "lb.localhost", "/lb/0", &args);
                    assert_eq!(seen.status, 200, "[{driver} {way:?}] {seen:?}");
                }
                Way::H2c => {
                    for i in 0..8 {
                        let path = format!("/lb/{i}");
                        let seen = curl(&sg, way, "lb.localhost", &path, &["-H", &key]);
                        assert_eq!(seen.status, 200, "[{driver} {way:?}] {seen:?}");
                    }
                }
            }
            assert_eq!(
                (heavy.count(), light.count()),
                (6, 2),
                "[{driver} {way:?}] weights 3:1 over 8 streams"
            );
        }

        // A global limit of 3 per minute: the fourth stream is refused with 429, however
        // the streams share connections.
        let limited = Tenant::create(&sg, "limited");
        limited.update_gateway(&json!({
            "name": "gw-limited",
            "subdomain": "limited",
            "required_plugins": [{
                "name": "rate_limiter", "enabled": true, "stage": "pre_request", "priority": 1,
                "settings": {"limits": {"global": {"limit": 3, "window": "1m"}},
                             "actions": {"type": "reject"}}
            }]
        }));
        let up = CountingServer::start("limited");
        limited.route(
            "r",
            "/r/*",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );
        let key = format!("X-API-Key: {}", limited.key);
        let statuses: Vec<u16> = (0..5)
            .map(|i| {
                let way = WAYS[i % 2];
                curl(&sg, way, "limited.localhost", "/r/x", &["-H", &key]).status
            })
            .collect();
        assert_eq!(statuses, [200, 200, 200, 429, 429], "[{driver}]");
    }
}

#[test]
fn h2load_ten_connections_of_a_hundred_streams_all_succeed() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver).workers(2));
        let up = CountingServer::builder("load").body(b"ok").start();
        let tenant = Tenant::create(&sg, "load");
        tenant.route(
            "load",
            "/load/*",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );
        for (scheme, addr) in [("http", sg.proxy_addr()), ("https", sg.expect_tls_addr())] {
            let url = format!("{scheme}://127.0.0.1:{}/load/x", addr.port());
            let output = Command::new("h2load")
                .args(["-n", "2000", "-c", "10", "-m", "100", "-T", "20"])
                .args(["-H", ":authority: load.localhost"])
                .args(["-H", &format!("x-api-key: {}", tenant.key)])
                .arg(&url)
                .output()
                .expect("run h2load (tests/run installs nghttp2-client)");
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            assert!(
                output.status.success(),
                "[{driver} {scheme}] h2load failed: {text}"
            );
            assert!(
                text.contains("2000 succeeded, 0 failed, 0 errored")
                    && text.contains("status codes: 2000 2xx"),
                "[{driver} {scheme}] {text}"
            );
        }
    }
}
