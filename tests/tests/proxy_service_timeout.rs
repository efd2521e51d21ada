//! A service's `timeout` is a whole-request deadline, connect to last response byte
//! (DESIGN.md's "timeout values" of services): past it before the response head the client
//! gets 504 and no retry is tried; past it mid-body the client connection is closed.

use std::time::{Duration, Instant};

use shardgate_tests::connection::Closed;
use shardgate_tests::tenant::Tenant;
use shardgate_tests::upstream::{CountingServer, SseServer};
use shardgate_tests::{Options, Shardgate, io_drivers, json};

#[test]
fn a_service_timeout_answers_504_and_is_not_retried() {
    for driver in io_drivers() {
        let slow = CountingServer::builder("slow")
            .delay(Duration::from_secs(3))
            .start();
        let also_slow = CountingServer::builder("also-slow")
            .delay(Duration::from_secs(3))
            .start();
        let quick = CountingServer::builder("quick")
            .delay(Duration::from_millis(50))
            .start();
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let tenant = Tenant::create(&sg, "deadline");
        let slow_up = tenant.upstream(
            "slow",
            vec![slow.target(json!({})), also_slow.target(json!({}))],
            json!({}),
        );
        let slow_service =
            tenant.service("slow", &slow_up, json!({"timeout": "400ms", "retries": 2}));
        tenant.rule(json!({"path": "/slow", "service_id": slow_service}));
        let quick_up = tenant.upstream("quick", vec![quick.target(json!({}))], json!({}));
        let quick_service = tenant.service("quick", &quick_up, json!({"timeout": "5s"}));
        tenant.rule(json!({"path": "/quick", "service_id": quick_service}));

        let started = Instant::now();
        let resp = tenant.client().get("/slow");
        let took = started.elapsed();
        assert_eq!(resp.status, 504, "[{driver}] {resp}");
        assert_eq!(resp.error(), "service timeout exceeded", "[{driver}]");
        assert!(
            took >= Duration::from_millis(350) && took < Duration::from_millis(2500),
            "[{driver}] answered after {took:?}: the deadline, not a retry per target"
        );
        assert_eq!(
            slow.count() + also_slow.count(),
            1,
            "[{driver}] a request past its deadline is not retried"
        );

        let ok = tenant.client().get("/quick").expect_status(200);
        assert_eq!(ok.text(), "quick GET /quick", "[{driver}]");
    }
}

#[test]
fn a_service_timeout_mid_body_closes_the_client_connection() {
    for driver in io_drivers() {
        let events = SseServer::start(20, Duration::from_millis(100));
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let tenant = Tenant::create(&sg, "stream");
        let up = tenant.upstream("events", vec![events.target()], json!({}));
        let service = tenant.service("events", &up, json!({"timeout": "500ms"}));
        tenant.rule(json!({"path": "/events", "service_id": service}));

        let mut conn = tenant.client().open();
        let started = Instant::now();
        conn.send("GET", "/events", &[], b"");
        let head = conn.read_head();
        assert_eq!(
            head.status, 200,
            "[{driver}] the head came before the deadline"
        );
        let mut body = conn.take_buffered();
        let (closed, rest) = conn.wait_for_close(Duration::from_secs(5));
        body.extend_from_slice(&rest);
        let took = started.elapsed();
        assert!(
            matches!(closed, Closed::Yes),
            "[{driver}] the connection closes at the deadline"
        );
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("event-0") && !text.contains("event-19"),
            "[{driver}] part of the stream, not all of it: {text}"
        );
        assert!(
            took < Duration::from_millis(1800),
            "[{driver}] closed after {took:?}, the whole stream takes 2 s"
        );
    }
}
