//! Hostile clients against the real proxy (issue 3, "Limits and hostile input"): every
//! request-smuggling shape gets 400, the connection is closed and nothing after it reaches
//! the upstream; over-long URIs and heads get 414 and 431; a thousand slowloris
//! connections neither starve a normal client nor outlive the header timeout.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use shardgate_tests::connection::Closed;
use shardgate_tests::tenant::Tenant;
use shardgate_tests::upstream::CountingServer;
use shardgate_tests::{Options, Shardgate, io_drivers, json, parse_response};

/// The request-smuggling shapes of issue 3, each a request head (and body) that follows
/// a valid request on the same connection, and ends with a request for `/x/smuggled`
/// that a desynchronised upstream would take for a second request.
fn smuggling_shapes(host: &str, key: &str) -> Vec<(&'static str, String)> {
    let auth = format!("Host: {host}\r\nX-API-Key: {key}\r\n");
    let smuggled = format!("GET /x/smuggled HTTP/1.1\r\n{auth}\r\n");
    vec![
        (
            "Content-Length and Transfer-Encoding together",
            format!(
                "POST /x/a HTTP/1.1\r\n{auth}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
                 0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "Transfer-Encoding and Content-Length together",
            format!(
                "POST /x/a HTTP/1.1\r\n{auth}Transfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n\
                 0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "differing duplicate Content-Length",
            format!(
                "POST /x/a HTTP/1.1\r\n{auth}Content-Length: 5\r\nContent-Length: 60\r\n\r\n\
                 hello{smuggled}"
            ),
        ),
        (
            "differing Content-Length list",
            format!("POST /x/a HTTP/1.1\r\n{auth}Content-Length: 5, 60\r\n\r\nhello{smuggled}"),
        ),
        (
            "non-numeric Content-Length",
            format!("POST /x/a HTTP/1.1\r\n{auth}Content-Length: 5x\r\n\r\nhello{smuggled}"),
        ),
        (
            "signed Content-Length",
            format!("POST /x/a HTTP/1.1\r\n{auth}Content-Length: +5\r\n\r\nhello{smuggled}"),
        ),
        (
            "Transfer-Encoding whose final coding is not chunked",
            format!(
                "POST /x/a HTTP/1.1\r\n{auth}Transfer-Encoding: chunked, identity\r\n\r\n\
                 0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "Transfer-Encoding identity",
            format!(
                "POST /x/a HTTP/1.1\r\n{auth}Transfer-Encoding: identity\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "Transfer-Encoding chunked with a parameter",
            format!(
                "POST /x/a HTTP/1.1\r\n{auth}Transfer-Encoding: chunked;x=1\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "invalid chunk size",
            format!(
                "POST /x/a HTTP/1.1\r\n{auth}Transfer-Encoding: chunked\r\n\r\n\
                 zz\r\nhello\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "chunk size with a 0x prefix",
            format!(
                "POST /x/a HTTP/1.1\r\n{auth}Transfer-Encoding: chunked\r\n\r\n\
                 0x5\r\nhello\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "bare LF ending a header line",
            format!("GET /x/a HTTP/1.1\r\n{auth}X-Note: a\n{smuggled}"),
        ),
        (
            "bare LF line endings throughout",
            format!(
                "GET /x/a HTTP/1.1\n{}\n{smuggled}",
                auth.replace("\r\n", "\n")
            ),
        ),
        (
            "obs-fold continuation line",
            format!(
                "GET /x/a HTTP/1.1\r\n{auth}X-Folded: a\r\n b\r\nTransfer-Encoding: chunked\r\n\r\n\
                 0\r\n\r\n{smuggled}"
            ),
        ),
    ]
}

/// The responses in `raw`, in order (a small reader for what a bad request gets back).
fn responses(raw: &[u8]) -> Vec<shardgate_tests::Resp> {
    let mut out = Vec::new();
    let mut rest = raw;
    // Bounded: each round consumes at least one head.
    for _ in 0..16 {
        let Some(start) = rest.windows(5).position(|w| w == b"HTTP/") else {
            break;
        };
        rest = &rest[start..];
        let Ok(resp) = parse_response(rest, false) else {
            break;
        };
        out.push(resp);
        rest = &rest[5..];
    }
    out
}

#[test]
fn every_smuggling_shape_gets_400_and_a_closed_connection_and_never_reaches_the_upstream() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let up = CountingServer::start("victim");
        let tenant = Tenant::create(&sg, "smuggle");
        tenant.route(
            "victim",
            "/x/*",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );
        let mut failures = Vec::new();
        for (shape, bad) in smuggling_shapes(&tenant.host(), &tenant.key) {
            up.clear();
            let mut conn = tenant.client().open();
            // A valid request first, then the shape, in one write: the valid one is
            // answered; the shape is refused and ends the connection.
            let mut bytes = conn.request_bytes("GET", "/x/first", &[], b"");
            bytes.extend_from_slice(bad.as_bytes());
            conn.write(&bytes);
            let (closed, raw) = conn.wait_for_close(Duration::from_secs(5));
            let got = responses(&raw);
            let statuses: Vec<u16> = got.iter().map(|r| r.status).collect();
            let targets: Vec<String> = up.requests().iter().map(|r| r.target.clone()).collect();
            let json_error = got
                .get(1)
                .and_then(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
                .is_some_and(|v| v["error"].is_string());
            if statuses != [200, 400]
                || closed != Closed::Yes
                || targets != ["/x/first"]
                || !json_error
            {
                failures.push(format!(
                    "{shape}: statuses {statuses:?}, closed {closed:?}, upstream saw \
                     {targets:?}, raw {:?}",
                    String::from_utf8_lossy(&raw)
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "[{driver}] smuggling shapes not refused:\n{}",
            failures.join("\n")
        );
    }
}

#[test]
fn long_uri_gets_414_and_huge_head_gets_431() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let up = CountingServer::start("limits");
        let tenant = Tenant::create(&sg, "limits");
        tenant.route(
            "limits",
            "/x/*",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );
        let client = tenant.client();

        let long_path = format!("/x/{}", "a".repeat(9 * 1024));
        let resp = client.get(&long_path).expect_status(414);
        assert!(!resp.error().is_empty(), "[{driver}]");

        let big = "b".repeat(20 * 1024);
        let resp = client
            .request("GET", "/x/ok", &[("X-Big", &big)], b"")
            .expect_status(431);
        assert!(!resp.error().is_empty(), "[{driver}]");

        let many: Vec<(String, String)> = (0..150)
            .map(|i| (format!("X-Field-{i}"), "v".to_owned()))
            .collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        client
            .request("GET", "/x/ok", &many, b"")
            .expect_status(431);

        assert_eq!(up.count(), 0, "[{driver}] nothing reached the upstream");
        client.get("/x/ok").expect_status(200);
    }
}

/// The soft limit on open files of this process, raised to at least `want` with
/// `prlimit(1)` (the workspace denies `unsafe`, so no `setrlimit` here); `Err` says why it
/// could not be.
fn ensure_open_files(want: u64) -> Result<u64, String> {
    let soft = || -> Result<(u64, String), String> {
        let limits = std::fs::read_to_string("/proc/self/limits")
            .map_err(|e| format!("read /proc/self/limits: {e}"))?;
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .ok_or("no 'Max open files' in /proc/self/limits")?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let soft = fields
            .get(3)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("cannot read {line:?}"))?;
        let hard = fields.get(4).map(|s| s.to_string()).unwrap_or_default();
        Ok((soft, hard))
    };
    let (current, hard) = soft()?;
    if current >= want {
        return Ok(current);
    }
    let status = Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={want}:{hard}"))
        .status()
        .map_err(|e| format!("run prlimit: {e}"))?;
    let (now, _) = soft()?;
    if status.success() && now >= want {
        Ok(now)
    } else {
        Err(format!(
            "the open-files limit is {current} (hard {hard}) and prlimit could not raise it \
             to {want}"
        ))
    }
}

/// One slowloris connection and when the proxy closed it.
struct Slow {
    stream: TcpStream,
    opened: Instant,
    sent: usize,
    closed: Option<Instant>,
}

impl Slow {
    /// Whether the proxy has closed the connection (EOF, reset, or its 408 then EOF).
    fn poll_closed(&mut self) -> bool {
        let mut buf = [0u8; 1024];
        // Bounded: a 408 answer is a few hundred bytes.
        for _ in 0..64 {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return true,
            }
        }
        false
    }
}

#[test]
fn slowloris_connections_do_not_starve_a_normal_client_and_close_at_the_header_timeout() {
    const SLOW: usize = 1000;
    const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
    // The timer starts when a worker accepts, a little after connect returns, and the
    // closes are seen by polling every 50 ms: allow this much after the timeout.
    const SLACK: Duration = Duration::from_millis(1500);
    if let Err(why) = ensure_open_files(4096) {
        eprintln!("SKIPPED: slowloris needs 1000+ sockets: {why}");
        return;
    }
    for driver in io_drivers() {
        let sg = Shardgate::start(
            Options::new()
                .io_driver(driver)
                .arg("--header-timeout")
                .arg("2s"),
        );
        let up = CountingServer::start("patient");
        let tenant = Tenant::create(&sg, "slow");
        tenant.route(
            "patient",
            "/x",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );
        let request = format!(
            "GET /x HTTP/1.1\r\nHost: {}\r\nX-API-Key: {}\r\n\r\n",
            tenant.host(),
            tenant.key
        )
        .into_bytes();

        let mut slow: Vec<Slow> = (0..SLOW)
            .map(|i| {
                let mut stream = tenant.client().connect();
                let opened = Instant::now();
                stream
                    .write_all(&request[..1])
                    .unwrap_or_else(|e| panic!("[{driver}] slow connection {i}: {e}"));
                stream.set_nonblocking(true).expect("non-blocking socket");
                Slow {
                    stream,
                    opened,
                    sent: 1,
                    closed: None,
                }
            })
            .collect();

        // A normal client keeps asking meanwhile.
        let stop = Arc::new(AtomicBool::new(false));
        let normal = {
            let (client, stop) = (tenant.client(), stop.clone());
            thread::spawn(move || {
                let mut answers = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    let status = client.try_request("GET", "/x", &[], b"").map(|r| r.status);
                    answers.push((status, started.elapsed()));
                    thread::sleep(Duration::from_millis(100));
                }
                answers
            })
        };

        // One byte per second on every open connection; watch for closes every 50 ms.
        let deadline = Instant::now() + HEADER_TIMEOUT + SLACK + Duration::from_secs(2);
        let mut next_byte = Instant::now() + Duration::from_secs(1);
        while slow.iter().any(|s| s.closed.is_none()) && Instant::now() < deadline {
            let now = Instant::now();
            for s in slow.iter_mut().filter(|s| s.closed.is_none()) {
                if s.poll_closed() {
                    s.closed = Some(now);
                }
            }
            if now >= next_byte {
                next_byte += Duration::from_secs(1);
                for s in slow.iter_mut().filter(|s| s.closed.is_none()) {
                    let byte = &request[s.sent % (request.len() - 4)..][..1];
                    match s.stream.write(byte) {
                        Ok(_) => s.sent += 1,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => s.closed = Some(now),
                    }
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::SeqCst);
        let answers = normal.join().expect("the normal client panicked");

        let still_open = slow.iter().filter(|s| s.closed.is_none()).count();
        assert_eq!(
            still_open, 0,
            "[{driver}] {still_open} of {SLOW} slowloris connections outlived the header timeout"
        );
        let lifetimes: Vec<Duration> = slow
            .iter()
            .filter_map(|s| s.closed.map(|c| c - s.opened))
            .collect();
        let shortest = lifetimes.iter().min().copied().unwrap_or_default();
        let longest = lifetimes.iter().max().copied().unwrap_or_default();
        eprintln!(
            "[{driver}] slowloris: closed after {shortest:?} .. {longest:?}; normal client got \
             {} answers",
            answers.len()
        );
        assert!(
            shortest >= HEADER_TIMEOUT - Duration::from_millis(200),
            "[{driver}] a slow connection was closed after {shortest:?}, before the header \
             timeout"
        );
        assert!(
            longest <= HEADER_TIMEOUT + SLACK,
            "[{driver}] a slow connection lived {longest:?}, header timeout {HEADER_TIMEOUT:?}"
        );

        let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
        for (status, _) in &answers {
            *outcomes.entry(format!("{status:?}")).or_insert(0) += 1;
        }
        assert!(
            answers.len() >= 10,
            "[{driver}] the normal client got only {} answers: {outcomes:?}",
            answers.len()
        );
        for (status, took) in &answers {
            assert_eq!(
                status.as_ref().ok(),
                Some(&200),
                "[{driver}] normal client: {outcomes:?}"
            );
            assert!(
                *took < Duration::from_secs(1),
                "[{driver}] a normal request took {took:?} among the slowloris connections"
            );
        }
    }
}

#[test]
fn request_body_over_max_body_gets_413_whether_framed_by_length_or_chunked() {
    const LIMIT: usize = 1000;
    for driver in io_drivers() {
        let sg = Shardgate::start(
            Options::new()
                .io_driver(driver)
                .arg("--max-body")
                .arg(LIMIT.to_string()),
        );
        let up = CountingServer::start("guarded");
        let tenant = Tenant::create(&sg, "limit");
        tenant.route(
            "guarded",
            "/x",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );
        let client = tenant.client();
        client
            .request("POST", "/x", &[], &[b'a'; LIMIT])
            .expect_status(200);
        up.clear();

        // Content-Length over the limit: refused from the head.
        client
            .request("POST", "/x", &[], &[b'a'; LIMIT + 1])
            .expect_status(413);

        // Chunked, the whole body in one write.
        let mut chunked = format!("{:x}\r\n", 2 * LIMIT).into_bytes();
        chunked.extend_from_slice(&[b'b'; 2 * LIMIT]);
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        let mut conn = client.open();
        conn.send("POST", "/x", &[("Transfer-Encoding", "chunked")], &chunked);
        let (_, raw) = conn.wait_for_close(Duration::from_secs(5));
        let whole = parse_response(&raw, false).map(|r| r.status);

        // Chunked, streamed in small chunks past the limit.
        let mut conn = client.open();
        conn.send("POST", "/x", &[("Transfer-Encoding", "chunked")], b"");
        for _ in 0..(2 * LIMIT / 100) {
            let piece = [&b"64\r\n"[..], &[b'c'; 100], b"\r\n"].concat();
            if conn.try_write(&piece).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(2));
        }
        let _ = conn.try_write(b"0\r\n\r\n");
        let (_, raw) = conn.wait_for_close(Duration::from_secs(5));
        let streamed = parse_response(&raw, false).map(|r| r.status);

        let forwarded: Vec<usize> = up.requests().iter().map(|r| r.body.len()).collect();
        assert!(
            whole == Ok(413) && streamed == Ok(413) && forwarded.is_empty(),
            "[{driver}] with --max-body {LIMIT}: a {}-byte chunked body in one write got \
             {whole:?}, one streamed in 100-byte chunks got {streamed:?}; the upstream \
             received bodies of {forwarded:?} bytes",
            2 * LIMIT
        );
    }
}

/// A keep-alive connection that sends its requests back to back is waited for with a
/// receive already posted (`connection::hot_wait`); one that pauses has that receive
/// cancelled and waits as an idle one. Whatever the timing around that switch — a request
/// just before, during or after the cancel, a head in two pieces, two requests in one
/// write — every request is answered, in order, with its own response, and the connection
/// still closes at the keep-alive timeout.
#[test]
fn a_busy_connection_that_pauses_loses_no_request_and_still_idles_out() {
    for driver in io_drivers() {
        let sg = Shardgate::start(
            Options::new()
                .io_driver(driver)
                .arg("--keepalive-timeout")
                .arg("1s"),
        );
        let up = CountingServer::start("hot");
        let tenant = Tenant::create(&sg, "hot");
        tenant.route(
            "hot",
            "/x",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );
        let client = tenant.client();
        let mut conn = client.open();
        let mut sent = 0;
        let expect = |conn: &mut shardgate_tests::connection::Connection, n: usize| {
            let resp = conn.read_response(false);
            let want = format!("hot GET /x?n={n}");
            assert!(
                resp.status == 200 && resp.body == want.as_bytes(),
                "[{driver}] request {n}: {resp}"
            );
        };
        // Back to back (hot), then after pauses around the window (10 ms, cancelled at
        // 10–30 ms) and well past it.
        let pauses_ms = [
            0, 0, 0, 0, 5, 9, 11, 15, 20, 25, 30, 35, 40, 60, 0, 0, 100, 0, 0,
        ];
        for pause in pauses_ms {
            thread::sleep(Duration::from_millis(pause));
            sent += 1;
            conn.send("GET", &format!("/x?n={sent}"), &[], b"");
            expect(&mut conn, sent);
        }
        // A head in two pieces, the second after the window passed.
        for _ in 0..3 {
            sent += 1;
            conn.send("GET", &format!("/x?n={sent}"), &[], b"");
            expect(&mut conn, sent);
        }
        sent += 1;
        let whole = client.request_bytes("GET", &format!("/x?n={sent}"), &[], b"");
        let (first, rest) = whole.split_at(10);
        conn.write(first);
        thread::sleep(Duration::from_millis(50));
        conn.write(rest);
        expect(&mut conn, sent);
        // Two requests in one write, after a hot wait and after a cancelled one.
        for pause in [0, 60] {
            thread::sleep(Duration::from_millis(pause));
            let mut both = client.request_bytes("GET", &format!("/x?n={}", sent + 1), &[], b"");
            both.extend(client.request_bytes("GET", &format!("/x?n={}", sent + 2), &[], b""));
            conn.write(&both);
            expect(&mut conn, sent + 1);
            expect(&mut conn, sent + 2);
            sent += 2;
        }
        let paths: Vec<String> = up.requests().iter().map(|r| r.target.clone()).collect();
        let want: Vec<String> = (1..=sent).map(|n| format!("/x?n={n}")).collect();
        assert_eq!(paths, want, "[{driver}] what the upstream received");

        // Busy, then idle: closed at the keep-alive timeout, not before.
        for _ in 0..5 {
            sent += 1;
            conn.send("GET", &format!("/x?n={sent}"), &[], b"");
            expect(&mut conn, sent);
        }
        let idle_since = Instant::now();
        let (closed, rest) = conn.wait_for_close(Duration::from_secs(4));
        let lived = idle_since.elapsed();
        assert!(
            closed == Closed::Yes && rest.is_empty(),
            "[{driver}] busy-then-idle connection: {closed:?}, {:?}",
            String::from_utf8_lossy(&rest)
        );
        assert!(
            lived >= Duration::from_millis(900) && lived < Duration::from_millis(2500),
            "[{driver}] busy-then-idle connection closed after {lived:?}, keep-alive timeout 1 s"
        );

        // A busy client that closes: the worker goes on serving others.
        let mut gone = client.open();
        for n in 0..5 {
            gone.send("GET", &format!("/x?gone={n}"), &[], b"");
            assert_eq!(gone.read_response(false).status, 200, "[{driver}]");
        }
        drop(gone);
        let mut next = client.open();
        assert_eq!(next.get("/x?after=1").status, 200, "[{driver}]");
    }
}

#[test]
fn idle_keep_alive_connection_closes_after_the_keepalive_timeout() {
    for driver in io_drivers() {
        let sg = Shardgate::start(
            Options::new()
                .io_driver(driver)
                .arg("--keepalive-timeout")
                .arg("1s")
                .arg("--header-timeout")
                .arg("1s"),
        );
        let up = CountingServer::start("idle");
        let tenant = Tenant::create(&sg, "idle");
        tenant.route(
            "idle",
            "/x",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );
        // Idle after a request: closed at the keep-alive timeout, not before.
        let mut conn = tenant.client().open();
        assert_eq!(conn.get("/x").status, 200, "[{driver}]");
        let idle_since = Instant::now();
        let (closed, rest) = conn.wait_for_close(Duration::from_secs(4));
        let lived = idle_since.elapsed();
        assert_eq!(closed, Closed::Yes, "[{driver}] idle connection kept open");
        assert!(
            rest.is_empty(),
            "[{driver}] {:?}",
            String::from_utf8_lossy(&rest)
        );
        assert!(
            lived >= Duration::from_millis(900) && lived < Duration::from_millis(2500),
            "[{driver}] idle connection closed after {lived:?}, keep-alive timeout 1 s"
        );

        // A second head trickled on a kept-alive connection gets the header timeout too.
        let mut conn = tenant.client().open();
        assert_eq!(conn.get("/x").status, 200, "[{driver}]");
        let started = Instant::now();
        conn.write(b"GET /x HTTP/1.1\r\n");
        let mut closed = Closed::No;
        let mut seen = Vec::new();
        for byte in b"Host: trickle\r\n".iter().cycle().take(6) {
            let (c, bytes) = conn.wait_for_close(Duration::from_millis(400));
            seen.extend(bytes);
            if c == Closed::Yes || conn.try_write(&[*byte]).is_err() {
                closed = Closed::Yes;
                break;
            }
        }
        if closed == Closed::No {
            closed = conn.wait_for_close(Duration::from_secs(2)).0;
        }
        let lived = started.elapsed();
        assert_eq!(
            closed,
            Closed::Yes,
            "[{driver}] trickled head never timed out"
        );
        assert!(
            lived < Duration::from_millis(2500),
            "[{driver}] trickled second head lived {lived:?}, header timeout 1 s"
        );
        if let Ok(resp) = parse_response(&seen, false) {
            assert_eq!(resp.status, 408, "[{driver}] {resp}");
        }
    }
}

#[test]
fn connections_over_max_connections_get_503_and_the_rest_are_served() {
    for driver in io_drivers() {
        let sg = Shardgate::start(
            Options::new()
                .io_driver(driver)
                .workers(1)
                .arg("--max-connections")
                .arg("4"),
        );
        let up = CountingServer::start("busy");
        let tenant = Tenant::create(&sg, "busy");
        tenant.route(
            "busy",
            "/x",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );
        let mut held: Vec<_> = (0..4)
            .map(|_| {
                let mut conn = tenant.client().open();
                assert_eq!(conn.get("/x").status, 200, "[{driver}]");
                conn
            })
            .collect();
        let refused = tenant.client().try_request("GET", "/x", &[], b"");
        let refused = refused.unwrap_or_else(|e| panic!("[{driver}] no clean refusal: {e}"));
        assert_eq!(refused.status, 503, "[{driver}] {refused}");
        assert!(
            refused.header("retry-after").is_some(),
            "[{driver}] {refused}"
        );
        // The held connections still work, and a freed slot is usable again.
        for conn in &mut held {
            assert_eq!(conn.get("/x").status, 200, "[{driver}]");
        }
        drop(held.pop());
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut status = 0;
        while Instant::now() < deadline {
            status = tenant
                .client()
                .try_request("GET", "/x", &[], b"")
                .map(|r| r.status)
                .unwrap_or(0);
            if status == 200 {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(status, 200, "[{driver}] a freed slot was not reused");
    }
}
