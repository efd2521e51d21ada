//! HTTP/1.1 through the proxy as a client and an upstream see it (issue 3, "HTTP/1.1 server
//! and client"): keep-alive on both sides, pipelining, 100 MiB bodies streamed both ways in
//! bounded memory, chunked request bodies, SSE events passed on as they are sent,
//! `Expect: 100-continue`, and a WebSocket upgrade tunnelled both ways.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use shardgate_tests::connection::find;
use shardgate_tests::tenant::Tenant;
use shardgate_tests::upstream::{
    CountingServer, DownloadServer, SseServer, UpgradeEchoServer, UploadSink, pattern_block,
    pattern_crc, sse_event,
};
use shardgate_tests::{Options, Shardgate, io_drivers, json};

/// 100 MiB.
const BIG: u64 = 100 * 1024 * 1024;

/// How much the proxy's resident memory may grow while 100 MiB pass through it. A proxy
/// that streams holds a few buffers of tens of KiB per connection (measured growth: well
/// under 1 MiB); glibc's per-thread arenas can still touch a few MiB more when a buffer
/// is freed on one worker and reallocated on another. 16 MiB leaves room for that and is
/// still a sixth of the 100 MiB that buffering the body, or letting it pile up behind a
/// stalled peer (both big-body tests stall one side for 500 ms), would cost.
const RSS_GROWTH_BOUND_KIB: u64 = 16 * 1024;

/// How often (in bytes moved) RSS is sampled during a transfer.
const SAMPLE_EVERY: u64 = 4 * 1024 * 1024;

#[test]
fn keep_alive_serves_many_requests_on_one_connection_and_reuses_upstream_connections() {
    const N: usize = 200;
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let up = CountingServer::start("ka");
        let tenant = Tenant::create(&sg, "ka");
        tenant.route(
            "ka",
            "/ka/*",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );
        let mut conn = tenant.client().open();
        for i in 0..N {
            let resp = conn.get(&format!("/ka/{i}"));
            assert_eq!(resp.status, 200, "[{driver}] request {i}: {resp}");
            assert_eq!(resp.text(), format!("ka GET /ka/{i}"), "[{driver}]");
            assert!(
                resp.header("connection")
                    .is_none_or(|c| !c.eq_ignore_ascii_case("close")),
                "[{driver}] the proxy closes a keep-alive connection: {resp}"
            );
        }
        // One client connection is served by one worker, which parks the upstream
        // connection after each response and takes it again for the next request.
        let ports: BTreeSet<u16> = up.requests().iter().map(|r| r.peer.port()).collect();
        assert_eq!(up.count(), N, "[{driver}]");
        assert_eq!(
            ports.len(),
            1,
            "[{driver}] {N} sequential requests used {} upstream connections",
            ports.len()
        );
    }
}

#[test]
fn upstream_closing_an_idle_pooled_connection_is_retried_transparently() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        // Closes kept-alive connections after 50 ms idle, without a word.
        let up = CountingServer::builder("brisk")
            .idle_timeout(Duration::from_millis(50))
            .start();
        let tenant = Tenant::create(&sg, "brisk");
        tenant.route(
            "brisk",
            "/b",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );
        let mut conn = tenant.client().open();
        for i in 0..6 {
            // Each request finds the parked connection closed by the upstream.
            thread::sleep(Duration::from_millis(150));
            let resp = if i % 2 == 0 {
                conn.get("/b")
            } else {
                conn.request("POST", "/b", &[], b"payload")
            };
            assert_eq!(resp.status, 200, "[{driver}] request {i}: {resp}");
        }
        let methods: Vec<String> = up.requests().iter().map(|r| r.method.clone()).collect();
        assert_eq!(
            methods,
            ["GET", "POST", "GET", "POST", "GET", "POST"],
            "[{driver}] each request reached the upstream exactly once"
        );
    }
}

#[test]
fn http_1_0_client_is_answered_and_closed() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let up = CountingServer::start("old");
        let tenant = Tenant::create(&sg, "old");
        tenant.route(
            "old",
            "/o",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );
        let raw = format!(
            "GET /o HTTP/1.0\r\nHost: {}\r\nX-API-Key: {}\r\n\r\n",
            tenant.host(),
            tenant.key
        );
        let mut conn = tenant.client().open();
        conn.write(raw.as_bytes());
        let (closed, bytes) = conn.wait_for_close(Duration::from_secs(5));
        assert_eq!(
            closed,
            shardgate_tests::connection::Closed::Yes,
            "[{driver}] an HTTP/1.0 request without keep-alive ends the connection"
        );
        let resp = shardgate_tests::parse_response(&bytes, false)
            .unwrap_or_else(|e| panic!("[{driver}] {e}: {:?}", String::from_utf8_lossy(&bytes)));
        assert_eq!(resp.status, 200, "[{driver}] {resp}");
        assert_eq!(resp.text(), "old GET /o", "[{driver}]");
        assert!(
            resp.header("transfer-encoding").is_none(),
            "[{driver}] no chunked body for an HTTP/1.0 client: {resp}"
        );
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let up = CountingServer::start("pipe");
        let tenant = Tenant::create(&sg, "pipe");
        tenant.route(
            "pipe",
            "/p/*",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );
        let mut conn = tenant.client().open();
        let mut burst = conn.request_bytes("GET", "/p/1", &[], b"");
        burst.extend(conn.request_bytes("POST", "/p/2", &[], b"second body"));
        burst.extend(conn.request_bytes("GET", "/p/3", &[], b""));
        conn.write(&burst);
        for (i, expected) in ["pipe GET /p/1", "pipe POST /p/2", "pipe GET /p/3"]
            .iter()
            .enumerate()
        {
            let resp = conn.read_response(false);
            assert_eq!(resp.status, 200, "[{driver}] response {i}: {resp}");
            assert_eq!(
                &resp.text(),
                expected,
                "[{driver}] response {i} out of order"
            );
        }
        let seen: Vec<String> = up.requests().iter().map(|r| r.target.clone()).collect();
        assert_eq!(seen, ["/p/1", "/p/2", "/p/3"], "[{driver}]");
        assert_eq!(up.requests()[1].body, b"second body", "[{driver}]");
    }
}

#[test]
fn pipelined_requests_the_gateway_refuses_keep_their_place_in_line() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let up = CountingServer::start("line");
        let tenant = Tenant::create(&sg, "line");
        tenant.route(
            "line",
            "/x",
            vec![up.target(json!({}))],
            json!({}),
            json!({"methods": ["GET"]}),
        );
        let mut conn = tenant.client().open();
        let anonymous = tenant.anonymous();
        let burst = [
            conn.request_bytes("GET", "/nope", &[], b""),
            conn.request_bytes("GET", "/x", &[], b""),
            anonymous.request_bytes("GET", "/x", &[], b""),
            conn.request_bytes("DELETE", "/x", &[], b""),
            conn.request_bytes("GET", "/x", &[("X-N", "last")], b""),
        ]
        .concat();
        conn.write(&burst);
        let statuses: Vec<u16> = (0..5).map(|_| conn.read_response(false).status).collect();
        assert_eq!(statuses, [404, 200, 401, 405, 200], "[{driver}]");
        assert_eq!(up.count(), 2, "[{driver}]");
        assert_eq!(up.last().header("x-n"), Some("last"), "[{driver}]");
        assert_eq!(
            conn.get("/x").status,
            200,
            "[{driver}] the connection was kept"
        );
    }
}

#[test]
fn absolute_form_request_is_routed_by_its_authority_and_forwarded_in_origin_form() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let up = CountingServer::start("abs");
        let tenant = Tenant::create(&sg, "abs");
        tenant.route(
            "abs",
            "/x/*",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );
        let mut conn = tenant.client().open();
        let url = format!("http://{}/x/y?q=1", tenant.host());
        let resp = conn.get(&url);
        assert_eq!(resp.status, 200, "[{driver}] {resp}");
        assert_eq!(up.last().target, "/x/y?q=1", "[{driver}]");
    }
}

#[test]
fn hundred_mib_download_streams_with_bounded_proxy_memory() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let down = DownloadServer::start(BIG);
        let small = CountingServer::start("warm-up");
        let tenant = Tenant::create(&sg, "down");
        tenant.route("big", "/big", vec![down.target()], json!({}), json!({}));
        tenant.route(
            "small",
            "/small",
            vec![small.target(json!({}))],
            json!({}),
            json!({}),
        );
        // Warm the worker's pools up before the baseline.
        let mut conn = tenant.client().open();
        conn.get("/small");
        let baseline = sg.rss_kib();

        conn.send("GET", "/big", &[], b"");
        let head = conn.read_head();
        assert_eq!(head.status, 200, "[{driver}] {head}");
        assert_eq!(
            head.header("content-length"),
            Some(BIG.to_string().as_str()),
            "[{driver}]"
        );
        let mut crc = crc32fast::Hasher::new();
        let first = conn.take_buffered();
        crc.update(&first);
        let mut received = first.len() as u64;
        let mut peak = baseline;
        let mut next_sample = 0;
        let mut stalled = false;
        let mut buf = vec![0u8; 256 * 1024];
        let stream = conn.stream();
        while received < BIG {
            if received >= next_sample {
                peak = peak.max(sg.rss_kib());
                next_sample += SAMPLE_EVERY;
            }
            // Stop reading for a while: a proxy that reads ahead of its client would now
            // pile the body up in memory.
            if !stalled && received > 1024 * 1024 {
                stalled = true;
                thread::sleep(Duration::from_millis(500));
                peak = peak.max(sg.rss_kib());
            }
            let want = (buf.len() as u64).min(BIG - received) as usize;
            let n = stream
                .read(&mut buf[..want])
                .unwrap_or_else(|e| panic!("[{driver}] read the body at {received}: {e}"));
            assert!(n > 0, "[{driver}] the body ended at {received} of {BIG}");
            crc.update(&buf[..n]);
            received += n as u64;
        }
        peak = peak.max(sg.rss_kib());
        assert_eq!(
            crc.finalize(),
            pattern_crc(BIG),
            "[{driver}] body corrupted"
        );
        let growth = peak.saturating_sub(baseline);
        eprintln!("[{driver}] download: RSS {baseline} KiB → peak {peak} KiB");
        assert!(
            growth < RSS_GROWTH_BOUND_KIB,
            "[{driver}] proxy RSS grew by {growth} KiB (from {baseline}) while streaming \
             100 MiB; bound {RSS_GROWTH_BOUND_KIB} KiB"
        );
        // The connection is still usable.
        let after = conn.get("/small");
        assert_eq!(after.status, 200, "[{driver}] {after}");
    }
}

#[test]
fn hundred_mib_upload_streams_with_bounded_proxy_memory() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        // The sink waits 500 ms before it reads the body.
        let sink = UploadSink::start(Duration::from_millis(500));
        let tenant = Tenant::create(&sg, "up");
        tenant.route(
            "sink",
            "/upload",
            vec![sink.target()],
            json!({}),
            json!({"methods": ["POST"]}),
        );
        let mut conn = tenant.client().open();
        let warm = conn.request("POST", "/upload", &[], b"warm-up");
        assert_eq!(warm.status, 200, "[{driver}] {warm}");
        let baseline = sg.rss_kib();

        let length = BIG.to_string();
        let head = conn.request_bytes(
            "POST",
            "/upload",
            &[
                ("Content-Length", &length),
                ("Content-Type", "application/octet-stream"),
            ],
            b"",
        );
        conn.write(&head);
        let block = pattern_block();
        let mut sent = 0u64;
        let mut peak = baseline;
        let mut next_sample = 0;
        let stream = conn.stream();
        while sent < BIG {
            if sent >= next_sample {
                peak = peak.max(sg.rss_kib());
                next_sample += SAMPLE_EVERY;
            }
            let take = (block.len() as u64).min(BIG - sent) as usize;
            stream
                .write_all(&block[..take])
                .unwrap_or_else(|e| panic!("[{driver}] write the body at {sent}: {e}"));
            sent += take as u64;
        }
        stream.flush().expect("flush");
        let resp = conn.read_response(false);
        peak = peak.max(sg.rss_kib());
        assert_eq!(resp.status, 200, "[{driver}] {resp}");
        assert_eq!(
            resp.json(),
            json!({"bytes": BIG, "crc32": pattern_crc(BIG)}),
            "[{driver}] the upstream received the body intact"
        );
        let growth = peak.saturating_sub(baseline);
        eprintln!("[{driver}] upload: RSS {baseline} KiB → peak {peak} KiB");
        assert!(
            growth < RSS_GROWTH_BOUND_KIB,
            "[{driver}] proxy RSS grew by {growth} KiB (from {baseline}) while streaming \
             100 MiB up; bound {RSS_GROWTH_BOUND_KIB} KiB"
        );
    }
}

#[test]
fn chunked_request_body_is_forwarded_as_it_arrives() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let up = CountingServer::start("chunks");
        let tenant = Tenant::create(&sg, "chunks");
        tenant.route(
            "chunks",
            "/c",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );
        let mut conn = tenant.client().open();
        conn.send("POST", "/c", &[("Transfer-Encoding", "chunked")], b"");
        // Piece by piece, so the proxy cannot have the whole body when it starts.
        for piece in [
            &b"5\r\nhello\r\n"[..],
            b"6;ext=1\r\n world\r\n",
            b"1\r\n!\r\n",
            b"0\r\n\r\n",
        ] {
            thread::sleep(Duration::from_millis(30));
            conn.write(piece);
        }
        let resp = conn.read_response(false);
        assert_eq!(resp.status, 200, "[{driver}] {resp}");
        let seen = up.last();
        assert_eq!(seen.body, b"hello world!", "[{driver}]");
        assert!(
            seen.chunked,
            "[{driver}] the body went up chunked: {:?}",
            seen.headers
        );
        assert!(!seen.has_header("content-length"), "[{driver}]");
        // The connection carries on.
        assert_eq!(conn.get("/c").status, 200, "[{driver}]");
    }
}

const SSE_EVENTS: usize = 5;
const SSE_GAP: Duration = Duration::from_millis(200);

/// Reads an SSE response's events on `conn` (its head already read, `stream_bytes` what
/// followed it) and asserts that each arrived soon after `sse` sent it. Returns the bytes
/// read after the head.
fn assert_events_arrive_as_sent(
    driver: &str,
    conn: &mut shardgate_tests::connection::Connection,
    sse: &SseServer,
) -> Vec<u8> {
    // Loopback and a proxy that forwards each read at once: well under this.
    const LAG: Duration = Duration::from_millis(150);
    let mut stream_bytes = conn.take_buffered();
    let mut arrived: Vec<Instant> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while arrived.len() < SSE_EVENTS && Instant::now() < deadline {
        while arrived.len() < SSE_EVENTS
            && find(&stream_bytes, sse_event(arrived.len()).as_bytes()).is_some()
        {
            arrived.push(Instant::now());
        }
        if arrived.len() < SSE_EVENTS {
            stream_bytes.extend(conn.read_available(Duration::from_millis(20)));
        }
    }
    assert_eq!(
        arrived.len(),
        SSE_EVENTS,
        "[{driver}] events seen: {:?}",
        String::from_utf8_lossy(&stream_bytes)
    );
    let sent = sse.sent();
    assert_eq!(sent.len(), SSE_EVENTS, "[{driver}]");
    for i in 0..SSE_EVENTS {
        let lag = arrived[i].saturating_duration_since(sent[i]);
        assert!(
            lag < LAG,
            "[{driver}] event {i} reached the client {lag:?} after it was sent"
        );
    }
    assert!(
        arrived[0] + SSE_GAP * 2 < sent[SSE_EVENTS - 1],
        "[{driver}] the first event arrived only near the end of the stream"
    );
    stream_bytes
}

#[test]
fn sse_events_reach_the_client_as_they_are_sent() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let sse = SseServer::start(SSE_EVENTS, SSE_GAP);
        let tenant = Tenant::create(&sg, "sse");
        tenant.route("sse", "/events", vec![sse.target()], json!({}), json!({}));

        let mut conn = tenant.client().open();
        conn.send("GET", "/events", &[("Accept", "text/event-stream")], b"");
        let head = conn.read_head();
        assert_eq!(head.status, 200, "[{driver}] {head}");
        assert_eq!(
            head.header("content-type"),
            Some("text/event-stream"),
            "[{driver}]"
        );
        assert_events_arrive_as_sent(driver, &mut conn, &sse);
    }
}

#[test]
fn close_delimited_sse_is_rechunked_as_it_arrives_and_the_connection_kept() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let sse = SseServer::start_close_delimited(SSE_EVENTS, SSE_GAP);
        let tenant = Tenant::create(&sg, "sse");
        tenant.route("sse", "/events", vec![sse.target()], json!({}), json!({}));

        let mut conn = tenant.client().open();
        conn.send("GET", "/events", &[("Accept", "text/event-stream")], b"");
        let head = conn.read_head();
        assert_eq!(head.status, 200, "[{driver}] {head}");
        assert!(
            head.header("transfer-encoding")
                .is_some_and(|te| te.eq_ignore_ascii_case("chunked")),
            "[{driver}] an HTTP/1.1 client gets the close-delimited body chunked: {head}"
        );
        let mut body = assert_events_arrive_as_sent(driver, &mut conn, &sse);
        // The upstream's close ends the body with the last chunk; the client connection
        // stays open for the next request.
        let deadline = Instant::now() + Duration::from_secs(5);
        while find(&body, b"0\r\n\r\n").is_none() && Instant::now() < deadline {
            body.extend(conn.read_available(Duration::from_millis(50)));
        }
        assert!(
            body.ends_with(b"0\r\n\r\n"),
            "[{driver}] no last chunk: {:?}",
            String::from_utf8_lossy(&body)
        );
        conn.send("GET", "/events", &[], b"");
        let again = conn.read_head();
        assert_eq!(
            again.status, 200,
            "[{driver}] the connection was kept: {again}"
        );
    }
}

#[test]
fn expect_100_continue_gets_100_before_the_body_is_sent() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let up = CountingServer::start("expect");
        let tenant = Tenant::create(&sg, "expect");
        tenant.route(
            "expect",
            "/e",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );
        let mut conn = tenant.client().open();
        conn.send(
            "POST",
            "/e",
            &[("Expect", "100-continue"), ("Content-Length", "11")],
            b"",
        );
        conn.stream()
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("set a read timeout");
        let interim = conn
            .try_read_response(false)
            .unwrap_or_else(|e| panic!("[{driver}] no 100 Continue before the body: {e}"));
        assert_eq!(interim.status, 100, "[{driver}] {interim}");
        conn.write(b"hello world");
        let resp = conn.read_response(false);
        assert_eq!(resp.status, 200, "[{driver}] {resp}");
        let seen = up.last();
        assert_eq!(seen.body, b"hello world", "[{driver}]");
        assert!(
            !seen.has_header("expect"),
            "[{driver}] the proxy answered the expectation itself"
        );
    }
}

#[test]
fn websocket_upgrade_tunnels_bytes_both_ways() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let echo = UpgradeEchoServer::start();
        let tenant = Tenant::create(&sg, "ws");
        tenant.route(
            "ws",
            "/ws",
            vec![echo.target()],
            json!({}),
            json!({"methods": ["GET"]}),
        );
        let mut conn = tenant.client().open();
        // The first message goes right behind the upgrade request, before the 101.
        let mut upgrade = conn.request_bytes(
            "GET",
            "/ws",
            &[
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("Sec-WebSocket-Version", "13"),
            ],
            b"",
        );
        upgrade.extend_from_slice(b"early");
        conn.write(&upgrade);
        let head = conn.read_head();
        assert_eq!(head.status, 101, "[{driver}] {head}");
        assert!(
            head.header("upgrade")
                .is_some_and(|u| u.eq_ignore_ascii_case("websocket")),
            "[{driver}] {head}"
        );
        assert!(
            head.header("connection")
                .is_some_and(|c| c.to_ascii_lowercase().contains("upgrade")),
            "[{driver}] {head}"
        );
        let upstream_head = &echo.heads()[0];
        assert!(
            upstream_head
                .header("connection")
                .is_some_and(|c| c.to_ascii_lowercase().contains("upgrade")),
            "[{driver}] the upstream was asked to upgrade: {upstream_head:?}"
        );
        assert_eq!(
            upstream_head.header("upgrade"),
            Some("websocket"),
            "[{driver}]"
        );
        assert!(upstream_head.header("x-api-key").is_none(), "[{driver}]");

        let early = conn.read_exact_within(5, Duration::from_secs(5));
        assert_eq!(
            early, b"early",
            "[{driver}] bytes sent before the 101 are tunnelled"
        );

        // Small messages, then a big one in both directions at once.
        for message in [&b"ping-1"[..], b"\x81\x05hello", b"ping-3"] {
            conn.write(message);
            let back = conn.read_exact_within(message.len(), Duration::from_secs(5));
            assert_eq!(back, message, "[{driver}] echo through the tunnel");
        }
        let big: Vec<u8> = pattern_block()
            .into_iter()
            .cycle()
            .take(512 * 1024)
            .collect();
        let mut writer = conn.stream().try_clone().expect("clone the socket");
        let to_send = big.clone();
        let sender = thread::spawn(move || writer.write_all(&to_send));
        let back = conn.read_exact_within(big.len(), Duration::from_secs(10));
        sender
            .join()
            .expect("the writer thread panicked")
            .expect("write 512 KiB into the tunnel");
        assert!(
            back == big,
            "[{driver}] 512 KiB echoed intact ({} bytes back)",
            back.len()
        );
    }
}

#[test]
fn head_204_and_interim_responses_keep_the_connection_in_step() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let plain = CountingServer::start("plain");
        let empty = CountingServer::builder("empty").status(204).start();
        let hints = CountingServer::builder("hints").early_hints().start();
        let tenant = Tenant::create(&sg, "step");
        for (name, server) in [("plain", &plain), ("empty", &empty), ("hints", &hints)] {
            tenant.route(
                name,
                &format!("/{name}"),
                vec![server.target(json!({}))],
                json!({}),
                json!({}),
            );
        }
        let mut conn = tenant.client().open();
        // A desynchronised proxy would leave a read hanging: fail fast instead.
        conn.stream()
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("set a read timeout");
        let check_plain = |conn: &mut shardgate_tests::connection::Connection, when: &str| {
            let resp = conn
                .try_read_response(false)
                .unwrap_or_else(|e| panic!("[{driver}] GET /plain after {when}: {e}"));
            assert_eq!(resp.status, 200, "[{driver}] after {when}: {resp}");
            assert_eq!(resp.text(), "plain GET /plain", "[{driver}] after {when}");
        };

        conn.send("HEAD", "/plain", &[], b"");
        let head = conn
            .try_read_response(true)
            .unwrap_or_else(|e| panic!("[{driver}] HEAD: {e}"));
        assert_eq!(head.status, 200, "[{driver}] {head}");
        assert_eq!(
            head.header("content-length"),
            Some("plain HEAD /plain".len().to_string().as_str()),
            "[{driver}] HEAD keeps the length of the body it does not send"
        );
        conn.send("GET", "/plain", &[], b"");
        check_plain(&mut conn, "HEAD");

        conn.send("GET", "/empty", &[], b"");
        let no_content = conn
            .try_read_response(false)
            .unwrap_or_else(|e| panic!("[{driver}] 204: {e}"));
        assert_eq!(no_content.status, 204, "[{driver}] {no_content}");
        conn.send("GET", "/plain", &[], b"");
        check_plain(&mut conn, "204");

        conn.send("GET", "/hints", &[], b"");
        let interim = conn
            .try_read_response(false)
            .unwrap_or_else(|e| panic!("[{driver}] 103: {e}"));
        assert_eq!(interim.status, 103, "[{driver}] {interim}");
        assert!(interim.header("link").is_some(), "[{driver}] {interim}");
        let last = conn
            .try_read_response(false)
            .unwrap_or_else(|e| panic!("[{driver}] after 103: {e}"));
        assert_eq!(last.status, 200, "[{driver}] {last}");
        assert_eq!(last.text(), "hints GET /hints", "[{driver}]");
        conn.send("GET", "/plain", &[], b"");
        check_plain(&mut conn, "103 + 200");
    }
}

#[test]
fn request_after_a_streamed_body_on_the_same_connection_is_answered() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let up = CountingServer::start("pipe");
        let tenant = Tenant::create(&sg, "stream");
        tenant.route(
            "pipe",
            "/p/*",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );
        let mut conn = tenant.client().open();
        // The head and part of the body first, so the proxy streams the rest; then the
        // body's end and the next request in one write.
        let next = conn.request_bytes("GET", "/p/2", &[], b"");
        conn.send("POST", "/p/1", &[("Content-Length", "10")], b"0123");
        thread::sleep(Duration::from_millis(50));
        conn.write(&[&b"456789"[..], &next].concat());
        let next = conn.request_bytes("GET", "/p/4", &[], b"");
        conn.send(
            "POST",
            "/p/3",
            &[("Transfer-Encoding", "chunked")],
            b"5\r\nhello\r\n",
        );
        thread::sleep(Duration::from_millis(50));
        conn.write(&[&b"0\r\n\r\n"[..], &next].concat());

        for expected in [
            "pipe POST /p/1",
            "pipe GET /p/2",
            "pipe POST /p/3",
            "pipe GET /p/4",
        ] {
            let resp = conn.read_response(false);
            assert_eq!(resp.status, 200, "[{driver}] {expected}: {resp}");
            assert_eq!(resp.text(), expected, "[{driver}]");
        }
        let seen = up.requests();
        let targets: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
        assert_eq!(targets, ["/p/1", "/p/2", "/p/3", "/p/4"], "[{driver}]");
        assert_eq!(seen[0].body, b"0123456789", "[{driver}]");
        assert_eq!(seen[2].body, b"hello", "[{driver}]");
    }
}

#[test]
fn client_leaving_mid_download_does_not_disturb_the_proxy() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let down = DownloadServer::start(BIG);
        let small = CountingServer::start("small");
        let tenant = Tenant::create(&sg, "abort");
        tenant.route("big", "/big", vec![down.target()], json!({}), json!({}));
        tenant.route(
            "small",
            "/small",
            vec![small.target(json!({}))],
            json!({}),
            json!({}),
        );
        for _ in 0..3 {
            let mut conn = tenant.client().open();
            conn.send("GET", "/big", &[], b"");
            assert_eq!(conn.read_head().status, 200, "[{driver}]");
            let got = conn.read_exact_within(1024 * 1024, Duration::from_secs(5));
            assert_eq!(got.len(), 1024 * 1024, "[{driver}]");
            drop(conn);
        }
        for i in 0..20 {
            let resp = tenant.client().get("/small");
            assert_eq!(
                resp.status, 200,
                "[{driver}] request {i} after the aborts: {resp}"
            );
        }
        let mut conn = tenant.client().open();
        conn.send("GET", "/big", &[], b"");
        assert_eq!(conn.read_head().status, 200, "[{driver}]");
        let got = conn.read_exact_within(4 * 1024 * 1024, Duration::from_secs(5));
        assert_eq!(
            got.len(),
            4 * 1024 * 1024,
            "[{driver}] a new download flows"
        );
    }
}
