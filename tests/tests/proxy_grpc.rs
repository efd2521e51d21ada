//! gRPC through the gateway (issue 12, items 2 and 3) with a real gRPC implementation on
//! both ends: Python's grpcio as server and client (tests/python/grpc_echo.py, generic
//! handlers, no protoc), the client speaking h2c with prior knowledge to the proxy and the
//! gateway speaking h2c to the server. Unary, server-streaming and ping-pong bidirectional
//! calls with their trailers; and the gateway's own errors as gRPC statuses: no key
//! (UNAUTHENTICATED), a rate limit (RESOURCE_EXHAUSTED), a dead upstream (UNAVAILABLE),
//! `grpc-timeout` (DEADLINE_EXCEEDED).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use shardgate_tests::tenant::Tenant;
use shardgate_tests::tls::TestCa;
use shardgate_tests::upstream::DeadPort;
use shardgate_tests::{Options, Shardgate, Value, io_drivers, json, python};

fn script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/python/grpc_echo.py")
}

/// The grpcio server, stopped on drop.
struct GrpcServer {
    child: Child,
    port: u16,
}

impl GrpcServer {
    fn start() -> GrpcServer {
        GrpcServer::start_with(&[])
    }

    /// Over TLS with the certificate and key in these PEM files.
    fn start_tls(cert: &str, key: &str) -> GrpcServer {
        GrpcServer::start_with(&[cert, key])
    }

    /// Over TLS with a certificate for `name` from `ca` (its files live in the returned
    /// directory).
    fn start_tls_for(ca: &TestCa, name: &str) -> (GrpcServer, tempfile::TempDir) {
        let cert = ca.server_cert(&[name]);
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_file, cert.cert_pem()).expect("write the certificate");
        std::fs::write(&key_file, cert.key_pem()).expect("write the key");
        let server = GrpcServer::start_tls(
            cert_file.to_str().expect("UTF-8 path"),
            key_file.to_str().expect("UTF-8 path"),
        );
        (server, dir)
    }

    /// One that takes PINGs as often as they come (see `http2_keepalive` below).
    fn start_permitting_pings() -> GrpcServer {
        GrpcServer::spawn(&[], true)
    }

    fn start_with(args: &[&str]) -> GrpcServer {
        GrpcServer::spawn(args, false)
    }

    fn spawn(args: &[&str], permit_pings: bool) -> GrpcServer {
        let mut child = Command::new(python())
            .args([script(), "server"])
            .args(args)
            .env(
                "GRPC_ECHO_PERMIT_PINGS",
                if permit_pings { "1" } else { "0" },
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the grpcio server (tests/run installs grpcio)");
        let stdout = child.stdout.take().expect("server stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the server's port line");
        let port = line.trim().parse().unwrap_or_else(|_| {
            panic!(
                "grpcio server did not start: {line:?} (is grpcio installed? tests/run installs it)"
            )
        });
        GrpcServer { child, port }
    }
}

impl GrpcServer {
    /// A command line to the server (`not_serving`, `serving`).
    fn say(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("the server's stdin");
        writeln!(stdin, "{line}").expect("write to the server");
        stdin.flush().expect("flush");
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One call through the gateway at `sg` as `authority` with `key` ("-" for none).
fn call(sg: &Shardgate, authority: &str, key: &str, what: &str) -> Value {
    let addr = format!("127.0.0.1:{}", sg.proxy_addr().port());
    let output = Command::new(python())
        .args([script(), "client", &addr, key, authority, what])
        .output()
        .expect("run the grpcio client");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "{what}: no JSON from the client ({e}): {text}{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// A gateway `subdomain` whose `/test.Echo/*` goes to a `grpc` service at `port`.
fn grpc_route(sg: &Shardgate, subdomain: &str, port: u16, plugins: Value) -> Tenant {
    grpc_route_to(
        sg,
        subdomain,
        json!({"host": "127.0.0.1", "port": port}),
        json!({}),
        plugins,
    )
}

/// Like [`grpc_route`], to `target` with `upstream_extra` on the upstream.
fn grpc_route_to(
    sg: &Shardgate,
    subdomain: &str,
    target: Value,
    upstream_extra: Value,
    plugins: Value,
) -> Tenant {
    let tenant = Tenant::create(sg, subdomain);
    if plugins != json!([]) {
        tenant.update_gateway(&json!({
            "name": format!("gw-{subdomain}"),
            "subdomain": subdomain,
            "required_plugins": plugins
        }));
    }
    let upstream = tenant.upstream("grpc", vec![target], upstream_extra);
    let service = tenant.service("echo", &upstream, json!({"type": "grpc"}));
    tenant.rule(json!({"path": "/test.Echo/*", "methods": ["POST"], "service_id": service}));
    tenant
}

#[test]
fn grpc_calls_pass_with_trailers_and_gateway_errors_are_grpc_statuses() {
    let server = GrpcServer::start();
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let echo = grpc_route(&sg, "grpc", server.port, json!([]));
        let host = "grpc.localhost";

        let unary = call(&sg, host, &echo.key, "unary");
        assert_eq!(unary["code"], "OK", "[{driver}] {unary}");
        assert_eq!(unary["messages"], json!(["echo:hi"]), "[{driver}]");
        assert_eq!(
            unary["trailers"]["x-trailer"], "unary-done",
            "[{driver}] {unary}"
        );

        let stream = call(&sg, host, &echo.key, "server_stream");
        assert_eq!(stream["code"], "OK", "[{driver}] {stream}");
        assert_eq!(
            stream["messages"],
            json!(["item0", "item1", "item2", "item3", "item4"]),
            "[{driver}]"
        );
        assert_eq!(
            stream["trailers"]["x-trailer"], "stream-done",
            "[{driver}] {stream}"
        );

        let bidi = call(&sg, host, &echo.key, "bidi");
        assert_eq!(bidi["code"], "OK", "[{driver}] {bidi}");
        assert_eq!(
            bidi["messages"],
            json!(["re:m0", "re:m1", "re:m2", "re:m3"]),
            "[{driver}]"
        );

        let anonymous = call(&sg, host, "-", "unary");
        assert_eq!(
            anonymous["code"], "UNAUTHENTICATED",
            "[{driver}] {anonymous}"
        );
        assert!(
            anonymous["details"]
                .as_str()
                .is_some_and(|d| d.contains("API key")),
            "[{driver}] {anonymous}"
        );

        let deadline = call(&sg, host, &echo.key, "deadline");
        assert_eq!(
            deadline["code"], "DEADLINE_EXCEEDED",
            "[{driver}] {deadline}"
        );

        // Two calls a minute: the third is refused by the gateway.
        let limited = grpc_route(
            &sg,
            "limited",
            server.port,
            json!([{
                "name": "rate_limiter", "enabled": true, "stage": "pre_request", "priority": 1,
                "settings": {"limits": {"global": {"limit": 2, "window": "1m"}},
                             "actions": {"type": "reject"}}
            }]),
        );
        let codes: Vec<Value> = (0..3)
            .map(|_| call(&sg, "limited.localhost", &limited.key, "unary")["code"].clone())
            .collect();
        assert_eq!(
            codes,
            [json!("OK"), json!("OK"), json!("RESOURCE_EXHAUSTED")],
            "[{driver}]"
        );

        // Nothing listens on the upstream's port.
        let dead_port = DeadPort::reserve();
        let dead = grpc_route(&sg, "dead", dead_port.port(), json!([]));
        let unavailable = call(&sg, "dead.localhost", &dead.key, "unary");
        assert_eq!(
            unavailable["code"], "UNAVAILABLE",
            "[{driver}] {unavailable}"
        );
    }
}

/// A gRPC message as it travels: uncompressed flag, 4-byte length, payload.
fn grpc_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

#[test]
fn an_http11_client_reaches_an_http2_upstream_with_trailers_as_chunked_trailers() {
    let server = GrpcServer::start();
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let tenant = grpc_route(&sg, "grpc1", server.port, json!([]));
        let message = grpc_frame(b"hi");
        // Content-Length framed, then chunked (the body arrives in two chunks).
        let mut chunked = Vec::new();
        for part in [&message[..3], &message[3..]] {
            chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            chunked.extend_from_slice(part);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        for (framing, body) in [
            (
                format!("Content-Length: {}", message.len()),
                message.clone(),
            ),
            ("Transfer-Encoding: chunked".to_owned(), chunked),
        ] {
            let mut request = format!(
                "POST /test.Echo/Unary HTTP/1.1\r\nHost: grpc1.localhost\r\n\
                 X-API-Key: {}\r\nContent-Type: application/grpc\r\nTE: trailers\r\n\
                 {framing}\r\nConnection: close\r\n\r\n",
                tenant.key
            )
            .into_bytes();
            request.extend_from_slice(&body);
            let raw = tenant.client().raw(&request);
            let text = String::from_utf8_lossy(&raw);
            assert!(
                text.starts_with("HTTP/1.1 200 "),
                "[{driver} {framing}] {text}"
            );
            let lower = text.to_ascii_lowercase();
            assert!(
                lower.contains("transfer-encoding: chunked"),
                "[{driver} {framing}] {text}"
            );
            let answer = grpc_frame(b"echo:hi");
            assert!(
                raw.windows(answer.len()).any(|w| w == answer.as_slice()),
                "[{driver} {framing}] the echoed message: {text}"
            );
            // The trailers come after the last chunk.
            let last_chunk = lower
                .find("\r\n0\r\n")
                .unwrap_or_else(|| panic!("[{driver}] {text}"));
            let trailers = &lower[last_chunk..];
            assert!(
                trailers.contains("grpc-status: 0"),
                "[{driver} {framing}] {text}"
            );
            assert!(
                trailers.contains("x-trailer: unary-done"),
                "[{driver} {framing}] {text}"
            );
        }
    }
}

#[test]
fn grpc_reaches_a_tls_upstream_over_h2_with_alpn() {
    let ca = TestCa::new("grpc-upstream-ca");
    let (server, _files) = GrpcServer::start_tls_for(&ca, "grpc.upstream.test");
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let tenant = grpc_route_to(
            &sg,
            "secure",
            json!({"host": "127.0.0.1", "port": server.port, "protocol": "https"}),
            json!({"tls": {"ca_pem": ca.cert_pem(), "server_name": "grpc.upstream.test"}}),
            json!([]),
        );
        let unary = call(&sg, "secure.localhost", &tenant.key, "unary");
        assert_eq!(unary["code"], "OK", "[{driver}] {unary}");
        assert_eq!(unary["messages"], json!(["echo:hi"]), "[{driver}]");
        assert_eq!(
            unary["trailers"]["x-trailer"], "unary-done",
            "[{driver}] {unary}"
        );
        let stream = call(&sg, "secure.localhost", &tenant.key, "server_stream");
        assert_eq!(stream["code"], "OK", "[{driver}] {stream}");

        // Without the CA the certificate is refused: UNAVAILABLE, the cause in the message.
        let untrusted = grpc_route_to(
            &sg,
            "untrusted",
            json!({"host": "127.0.0.1", "port": server.port, "protocol": "https"}),
            json!({"tls": {"server_name": "grpc.upstream.test"}}),
            json!([]),
        );
        let refused = call(&sg, "untrusted.localhost", &untrusted.key, "unary");
        assert_eq!(refused["code"], "UNAVAILABLE", "[{driver}] {refused}");
        assert!(
            refused["details"]
                .as_str()
                .is_some_and(|d| d.contains("unknown CA")),
            "[{driver}] {refused}"
        );
    }
}

#[test]
fn a_grpc_request_body_over_the_body_limit_is_resource_exhausted() {
    let server = GrpcServer::start();
    for driver in io_drivers() {
        // 1000 bytes at most; gRPC clients send no content-length, so the limit is counted
        // as the body streams.
        let sg = Shardgate::start(
            Options::new()
                .io_driver(driver)
                .arg("--max-body")
                .arg("1000"),
        );
        let tenant = grpc_route(&sg, "small", server.port, json!([]));
        let fits = call(&sg, "small.localhost", &tenant.key, "unary");
        assert_eq!(fits["code"], "OK", "[{driver}] {fits}");
        let big = call(&sg, "small.localhost", &tenant.key, "big");
        assert_eq!(big["code"], "RESOURCE_EXHAUSTED", "[{driver}] {big}");
    }
}

/// Sends `signal` (`STOP`, `CONT`) to the process `pid`.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

#[test]
fn http2_keepalive_pings_close_a_connection_to_an_upstream_that_stopped_answering() {
    let server = GrpcServer::start_permitting_pings();
    let pid = server.child.id();
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver).workers(1));
        let slow = json!({"read_timeout": "20s"});
        let mut pinged = slow.clone();
        pinged["http2_keepalive"] = json!({"interval": "200ms", "timeout": "300ms"});
        let target = json!({"host": "127.0.0.1", "port": server.port});
        let watched = grpc_route_to(&sg, "pinged", target.clone(), pinged, json!([]));
        let unwatched = grpc_route_to(&sg, "unpinged", target, slow, json!([]));
        // Both have a pooled connection, and pings flow on the watched one.
        for (tenant, host) in [
            (&watched, "pinged.localhost"),
            (&unwatched, "unpinged.localhost"),
        ] {
            let ok = call(&sg, host, &tenant.key, "unary_3s");
            assert_eq!(ok["code"], "OK", "[{driver}] {host}: {ok}");
        }
        std::thread::sleep(std::time::Duration::from_millis(700));
        let ok = call(&sg, "pinged.localhost", &watched.key, "unary_3s");
        assert_eq!(
            ok["code"], "OK",
            "[{driver}] answered pings keep the connection: {ok}"
        );

        assert!(
            !sg.stderr_contents().contains("did not answer a PING"),
            "[{driver}] an answering upstream's connection is never cut"
        );
        // The server stops (its kernel still accepts connections and takes bytes).
        signal(pid, "STOP");
        let started = std::time::Instant::now();
        let cut = call(&sg, "pinged.localhost", &watched.key, "unary_3s");
        let took = started.elapsed();
        // Without pings the call waits for an answer until the client gives up.
        let waited = call(&sg, "unpinged.localhost", &unwatched.key, "unary_3s");
        signal(pid, "CONT");
        assert_eq!(cut["code"], "UNAVAILABLE", "[{driver}] {cut}");
        assert!(
            took < std::time::Duration::from_millis(2500),
            "[{driver}] the unanswered PING ends the call in about interval + timeout, \
             not read_timeout: {took:?}"
        );
        assert_eq!(waited["code"], "DEADLINE_EXCEEDED", "[{driver}] {waited}");
        let log = sg.stderr_contents();
        assert!(
            log.contains("did not answer a PING in time"),
            "[{driver}] the gateway says why: {log}"
        );

        // The server is back: the next calls open a new connection.
        let back = call(&sg, "pinged.localhost", &watched.key, "unary_3s");
        assert_eq!(back["code"], "OK", "[{driver}] {back}");
    }
}

/// Calls until the answer's code is `code` (at most 15 s); the last answer.
fn call_until(sg: &Shardgate, host: &str, key: &str, code: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let answer = call(sg, host, key, "unary_3s");
        if answer["code"] == code || std::time::Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_grpc_health_check_takes_a_not_serving_target_out_and_brings_it_back() {
    let mut server = GrpcServer::start();
    // A second server for the unknown service: health is kept per target address, so two
    // upstreams checking one address differently would overwrite each other's verdict.
    let other = GrpcServer::start();
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let check = |service: &str| {
            json!({"health_checks": {"active": {
                "type": "grpc", "grpc_service": service, "interval": "200ms", "timeout": "1s",
                "healthy_threshold": 1, "unhealthy_threshold": 1
            }}})
        };
        let target = json!({"host": "127.0.0.1", "port": server.port});
        let checked = grpc_route_to(&sg, "checked", target, check("test.Echo"), json!([]));
        // A server asked about a service it does not have (NOT_FOUND): down.
        let target = json!({"host": "127.0.0.1", "port": other.port});
        let unknown = grpc_route_to(&sg, "unknown", target, check("missing.Svc"), json!([]));

        let up = call_until(&sg, "checked.localhost", &checked.key, "OK");
        assert_eq!(up["code"], "OK", "[{driver}] {up}");
        let down = call_until(&sg, "unknown.localhost", &unknown.key, "UNAVAILABLE");
        assert_eq!(
            down["code"],
            "UNAVAILABLE",
            "[{driver}] {down}\n{}",
            sg.stderr_contents()
        );
        assert!(
            down["details"]
                .as_str()
                .is_some_and(|d| d.contains("no healthy upstream target")),
            "[{driver}] {down}"
        );

        server.say("not_serving");
        let out = call_until(&sg, "checked.localhost", &checked.key, "UNAVAILABLE");
        server.say("serving");
        assert_eq!(
            out["code"], "UNAVAILABLE",
            "[{driver}] NOT_SERVING takes it out: {out}"
        );
        let back = call_until(&sg, "checked.localhost", &checked.key, "OK");
        assert_eq!(
            back["code"], "OK",
            "[{driver}] SERVING brings it back: {back}"
        );
        let log = sg.stderr_contents();
        assert!(
            log.contains("active health check changed a target's state"),
            "[{driver}] {log}"
        );
    }
}

/// The faulty HTTP/2 upstream (tests/python/h2_faulty.py), stopped on drop.
struct FaultyServer {
    child: Child,
    lines: BufReader<std::process::ChildStdout>,
    port: u16,
}

impl FaultyServer {
    /// Fails the first stream of each of its first `faults` connections, as `mode` says
    /// (`goaway`, `reset`, `reset_late`, `status503`, `reset_error`).
    fn start(mode: &str, faults: u32) -> FaultyServer {
        FaultyServer::spawn(&[mode, &faults.to_string()])
    }

    /// Fails every stream, as `mode` says.
    fn failing_every_stream(mode: &str) -> FaultyServer {
        FaultyServer::spawn(&[mode, "1000000", "every"])
    }

    fn spawn(args: &[&str]) -> FaultyServer {
        let mut child = Command::new(python())
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/python/h2_faulty.py"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the refusing h2 server (tests/run installs h2)");
        let mut lines = BufReader::new(child.stdout.take().expect("server stdout"));
        let mut line = String::new();
        lines.read_line(&mut line).expect("the server's port line");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the refusing server did not start: {line:?}"));
        FaultyServer { child, lines, port }
    }

    /// Connections, refused streams, served streams, and the body bytes each refused
    /// stream had brought.
    fn stats(&mut self) -> Value {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("the server's stdin");
        writeln!(stdin, "stats").expect("ask the server");
        stdin.flush().expect("flush");
        let mut line = String::new();
        self.lines.read_line(&mut line).expect("the stats line");
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("stats {line:?}: {e}"))
    }
}

impl Drop for FaultyServer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `curl` POSTing `body` (from a file) to `http://<host>/refusing/order` on the plain proxy
/// port, over HTTP/2 with prior knowledge or HTTP/1.1: the status, the body and the headers.
fn curl_post(
    sg: &Shardgate,
    h2: bool,
    host: &str,
    key: &str,
    body: &[u8],
) -> (u16, String, String) {
    curl_refusing(sg, h2, host, key, Some(body))
}

/// `curl` GET of `/refusing/x`, as [`curl_post`]: the status and the body.
fn curl_get(sg: &Shardgate, h2: bool, host: &str, key: &str) -> (u16, String) {
    let (status, text, _) = curl_refusing(sg, h2, host, key, None);
    (status, text)
}

fn curl_refusing(
    sg: &Shardgate,
    h2: bool,
    host: &str,
    key: &str,
    body: Option<&[u8]>,
) -> (u16, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (file, headers) = (dir.path().join("body"), dir.path().join("headers"));
    let port = sg.proxy_addr().port();
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--max-time", "20", "--noproxy", "*"])
        .arg(if h2 {
            "--http2-prior-knowledge"
        } else {
            "--http1.1"
        })
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(["-H", &format!("X-API-Key: {key}")])
        .args(["-D", &headers.display().to_string()])
        .args(["-w", "\n%{http_code}"]);
    let path = match body {
        Some(body) => {
            std::fs::write(&file, body).expect("write the body");
            curl.args(["-H", "Content-Type: application/octet-stream"])
                .arg("--data-binary")
                .arg(format!("@{}", file.display()));
            "/refusing/order"
        }
        None => "/refusing/x",
    };
    let output = curl
        .arg(format!("http://{host}:{port}{path}"))
        .output()
        .expect("run curl (tests/run installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (text, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let headers = std::fs::read_to_string(&headers)
        .unwrap_or_default()
        .to_ascii_lowercase();
    (code.trim().parse().unwrap_or(0), text.to_owned(), headers)
}

/// A gateway `subdomain` whose `/refusing/*` (any method) goes to an `http2: true` upstream
/// at `port` (a REST service: HTTP/1.1 and HTTP/2 clients both reach it).
fn refusing_route(sg: &Shardgate, subdomain: &str, port: u16) -> Tenant {
    let tenant = Tenant::create(sg, subdomain);
    tenant.route(
        "refusing",
        "/refusing/*",
        vec![json!({"host": "127.0.0.1", "port": port})],
        json!({"http2": true}),
        json!({}),
    );
    tenant
}

/// The `refused` count of `shardgate_upstream_failures_total`, all series summed.
fn refused_failures(sg: &Shardgate) -> f64 {
    let metrics = sg.admin().get("/metrics").expect_status(200).text();
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("shardgate_upstream_failures_total{") && l.contains("cause=\"refused\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_stream_the_upstream_refuses_unprocessed_is_sent_again_with_its_body() {
    // A POST (not idempotent: only a refusal proves the upstream did nothing with it),
    // from an HTTP/2 client and an HTTP/1.1 client, refused three ways: GOAWAY below the
    // stream (a server shutting down), REFUSED_STREAM at once, and REFUSED_STREAM after
    // the whole body arrived. Each time the upstream's own counts show one refused stream
    // and one served, and the client gets the answer to its whole body.
    let body: Vec<u8> = (0..20_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    for driver in io_drivers() {
        for mode in ["goaway", "reset", "reset_late"] {
            for h2 in [true, false] {
                let mut server = FaultyServer::start(mode, 1);
                let sg = Shardgate::start(Options::new().io_driver(driver));
                let tenant = refusing_route(&sg, "refuse", server.port);
                let (status, text, headers) =
                    curl_post(&sg, h2, "refuse.localhost", &tenant.key, &body);
                let what = format!("[{driver} {mode} h2={h2}]");
                assert_eq!(status, 200, "{what} {text}");
                assert_eq!(
                    text.as_bytes(),
                    [b"echo:".as_slice(), &body].concat(),
                    "{what}"
                );
                let stats = server.stats();
                assert_eq!(stats["refused"], 1, "{what} {stats}");
                assert_eq!(stats["served"], 1, "{what} {stats}");
                // GOAWAY: the connection is not reused, the second stream goes on a new
                // one; a refused stream leaves its connection open for the next.
                let (connections, served_by) = match mode {
                    "goaway" => (2, "c2s1"),
                    _ => (1, "c1s3"),
                };
                assert_eq!(stats["connections"], connections, "{what} {stats}");
                assert!(
                    headers.contains(&format!("x-served-by: {served_by}")),
                    "{what} {headers}"
                );
                if mode == "reset_late" {
                    // The whole body had reached the refused stream before it went again.
                    assert_eq!(stats["refused_body_bytes"][0], body.len(), "{what} {stats}");
                }
                assert_eq!(refused_failures(&sg), 1.0, "{what}");
            }
        }
    }
}

#[test]
fn a_refused_stream_whose_body_was_not_kept_or_refused_every_time_is_503() {
    for driver in io_drivers() {
        // 200 KiB, all of it on the stream before the refusal: past the 64 KiB kept to
        // send again, so it cannot go again.
        let big = vec![b'x'; 200 * 1024];
        let mut server = FaultyServer::start("reset_late", 1);
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let tenant = refusing_route(&sg, "big", server.port);
        for h2 in [true, false] {
            let (status, text, _) = curl_post(&sg, h2, "big.localhost", &tenant.key, &big);
            // The first request's stream is refused; the second's (on the same connection)
            // is served.
            let want = if h2 { 503 } else { 200 };
            assert_eq!(status, want, "[{driver} h2={h2}] {text}");
            if h2 {
                assert!(text.contains("refused the request"), "[{driver}] {text}");
            }
        }
        let stats = server.stats();
        assert_eq!(stats["refused"], 1, "[{driver}] {stats}");
        assert_eq!(
            stats["refused_body_bytes"][0],
            big.len(),
            "[{driver}] {stats}"
        );
        drop(server);

        // An upstream that refuses every stream: the request went three times (once and
        // twice more), then 503.
        let mut server = FaultyServer::start("goaway", 100);
        let tenant = refusing_route(&sg, "always", server.port);
        let (status, text, _) = curl_post(&sg, true, "always.localhost", &tenant.key, b"x");
        assert_eq!(status, 503, "[{driver}] {text}");
        let stats = server.stats();
        assert_eq!(stats["refused"], 3, "[{driver}] {stats}");
        assert_eq!(stats["served"], 0, "[{driver}] {stats}");
    }
}

#[test]
fn a_grpc_health_check_on_a_tls_target_speaks_h2_over_tls_with_the_upstreams_settings() {
    // The server's certificate names `grpc.upstream.test` and is signed by a CA only the
    // upstream's `tls` settings trust: a probe that did not use them could not pass.
    let ca = TestCa::new("grpc-health-ca");
    let (mut server, _files) = GrpcServer::start_tls_for(&ca, "grpc.upstream.test");
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let tenant = grpc_route_to(
            &sg,
            "tlscheck",
            json!({"host": "127.0.0.1", "port": server.port, "protocol": "https"}),
            json!({
                "tls": {"ca_pem": ca.cert_pem(), "server_name": "grpc.upstream.test"},
                "health_checks": {"active": {
                    "type": "grpc", "grpc_service": "test.Echo", "interval": "200ms",
                    "timeout": "1s", "healthy_threshold": 1, "unhealthy_threshold": 1
                }}
            }),
            json!([]),
        );
        let up = call_until(&sg, "tlscheck.localhost", &tenant.key, "OK");
        assert_eq!(up["code"], "OK", "[{driver}] {up}");
        // Only a probe that reaches the health service over TLS sees NOT_SERVING (a
        // connect-only probe would keep the target in).
        server.say("not_serving");
        let out = call_until(&sg, "tlscheck.localhost", &tenant.key, "UNAVAILABLE");
        server.say("serving");
        assert_eq!(out["code"], "UNAVAILABLE", "[{driver}] {out}");
        assert!(
            out["details"]
                .as_str()
                .is_some_and(|d| d.contains("no healthy upstream target")),
            "[{driver}] taken out by its probe: {out}"
        );
        let back = call_until(&sg, "tlscheck.localhost", &tenant.key, "OK");
        assert_eq!(back["code"], "OK", "[{driver}] {back}");
    }
}

#[test]
fn the_retry_policy_moves_an_http2_request_that_failed_before_its_answer_to_another_target() {
    // Target `bad` fails every stream after taking its whole body (503, or RST_STREAM
    // INTERNAL_ERROR: processed, then failed); `good` answers. The balancer sends some of
    // each run's requests to `bad` first; the upstreams' own counts say how many.
    let body = b"order=42".to_vec();
    for driver in io_drivers() {
        for mode in ["status503", "reset_error"] {
            let mut bad = FaultyServer::failing_every_stream(mode);
            let mut good = FaultyServer::start("reset", 0);
            let sg = Shardgate::start(Options::new().io_driver(driver).workers(1));
            let (bad_port, good_port) = (bad.port, good.port);
            let route = |subdomain: &str, policy: Value| {
                let tenant = Tenant::create(&sg, subdomain);
                let upstream = tenant.upstream(
                    "pair",
                    vec![
                        json!({"host": "127.0.0.1", "port": bad_port}),
                        json!({"host": "127.0.0.1", "port": good_port}),
                    ],
                    json!({"http2": true}),
                );
                let service = tenant.service("pair", &upstream, policy);
                tenant.rule(json!({"path": "/refusing/*", "service_id": service}));
                tenant
            };
            let what = format!("[{driver} {mode}]");
            let mut failed_so_far = 0;
            let mut failed_since = |bad: &mut FaultyServer| {
                let failed = bad.stats()["failed"].as_u64().unwrap_or_default();
                let since = failed - failed_so_far;
                failed_so_far = failed;
                since
            };
            // Default policy: GET is idempotent, so a failure goes to the other target.
            let idempotent = route("get", json!({"retries": 1}));
            for i in 0..6 {
                let (status, text) = curl_get(&sg, i % 2 == 0, "get.localhost", &idempotent.key);
                assert_eq!(status, 200, "{what} GET {i}: {text}");
            }
            let failed = failed_since(&mut bad);
            assert!(failed >= 1, "{what} some GETs failed on `bad` first");
            assert_eq!(
                good.stats()["served"],
                6,
                "{what} and were retried on `good`"
            );
            // POST is not idempotent: a failure after the upstream took it is answered.
            let post = route("post", json!({"retries": 1}));
            let statuses: Vec<u16> = (0..6)
                .map(|i| curl_post(&sg, i % 2 == 0, "post.localhost", &post.key, &body).0)
                .collect();
            let failed = failed_since(&mut bad) as usize;
            let want = if mode == "status503" { 503 } else { 502 };
            assert!(failed >= 1, "{what} {statuses:?}");
            assert_eq!(
                statuses.iter().filter(|&&s| s == want).count(),
                failed,
                "{what} {statuses:?}"
            );
            assert_eq!(
                statuses.iter().filter(|&&s| s == 200).count(),
                6 - failed,
                "{what} {statuses:?}"
            );
            // Unless the policy says `non_idempotent`: then the kept body goes again.
            let policy = json!({"retries": 1, "retry_policy": {"non_idempotent": true}});
            let anyway = route("anyway", policy);
            for i in 0..6 {
                let (status, text, _) =
                    curl_post(&sg, i % 2 == 0, "anyway.localhost", &anyway.key, &body);
                assert_eq!(status, 200, "{what} POST {i}: {text}");
                assert_eq!(
                    text.as_bytes(),
                    [b"echo:".as_slice(), &body].concat(),
                    "{what}"
                );
            }
            assert!(
                failed_since(&mut bad) >= 1,
                "{what} some POSTs were retried"
            );
            // Each failed POST had brought its whole body.
            let stats = bad.stats();
            assert!(
                stats["failed_body_bytes"]
                    .as_array()
                    .is_some_and(|b| b.iter().all(|n| n == 0 || n == body.len())),
                "{what} {stats}"
            );
        }
    }
}
