//! Graceful shutdown of the proxy (issue 3, "Graceful shutdown and restart"): on SIGTERM
//! shardgate stops accepting, lets in-flight requests finish, closes idle keep-alive
//! connections at once, and exits 0 as soon as it is drained.

use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use shardgate_tests::connection::Closed;
use shardgate_tests::tenant::Tenant;
use shardgate_tests::upstream::CountingServer;
use shardgate_tests::{Options, Shardgate, io_drivers, json};

/// The upstream's answer time: long enough to send SIGTERM while the request is in flight.
const SLOW: Duration = Duration::from_secs(2);

#[test]
fn in_flight_request_completes_after_sigterm_and_the_process_exits_0() {
    for driver in io_drivers() {
        let mut sg = Shardgate::start(Options::new().io_driver(driver));
        let slow = CountingServer::builder("slow").delay(SLOW).start();
        let tenant = Tenant::create(&sg, "drain");
        tenant.route(
            "slow",
            "/slow",
            vec![slow.target(json!({}))],
            json!({}),
            json!({}),
        );
        // On a keep-alive connection: the answer must also say that it is the last.
        let mut conn = tenant.client().open();
        let in_flight = thread::spawn(move || {
            conn.send("GET", "/slow", &[], b"");
            let resp = conn.try_read_response(false);
            let closed = conn.wait_for_close(Duration::from_secs(3)).0;
            resp.map(|r| (r, closed))
        });
        assert!(
            slow.wait_for(1, Duration::from_secs(5)),
            "[{driver}] the request never reached the upstream"
        );

        sg.send_sigterm();
        let signalled = Instant::now();
        // New connections are refused while the request is still in flight.
        let mut refused = false;
        while signalled.elapsed() < Duration::from_secs(1) {
            if TcpStream::connect_timeout(&sg.proxy_addr(), Duration::from_millis(200)).is_err() {
                refused = true;
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        assert!(
            refused,
            "[{driver}] the proxy still accepts connections 1 s after SIGTERM"
        );
        assert!(
            !in_flight.is_finished(),
            "[{driver}] the in-flight request ended before its upstream answered"
        );

        let (resp, closed) = in_flight
            .join()
            .expect("the client thread panicked")
            .unwrap_or_else(|e| panic!("[{driver}] the in-flight request was cut: {e}"));
        assert_eq!(resp.status, 200, "[{driver}] {resp}");
        assert_eq!(resp.text(), "slow GET /slow", "[{driver}]");
        assert!(
            resp.header("connection")
                .is_some_and(|c| c.eq_ignore_ascii_case("close")),
            "[{driver}] the last answer before shutdown says Connection: close: {resp}"
        );
        assert_eq!(
            closed,
            Closed::Yes,
            "[{driver}] the connection is closed after the in-flight answer"
        );

        let status = sg.terminate();
        let took = signalled.elapsed();
        assert!(
            status.success(),
            "[{driver}] exit status {status} after SIGTERM; stderr:\n{}",
            sg.stderr_contents()
        );
        // Drained after the slow answer, long before the 10 s grace period ends.
        assert!(
            took < SLOW + Duration::from_secs(3),
            "[{driver}] exited {took:?} after SIGTERM"
        );
    }
}

#[test]
fn idle_keep_alive_connections_close_at_once_on_sigterm() {
    for driver in io_drivers() {
        let mut sg = Shardgate::start(Options::new().io_driver(driver));
        let up = CountingServer::start("idle");
        let tenant = Tenant::create(&sg, "idle");
        tenant.route(
            "idle",
            "/x",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );
        let mut idle = tenant.client().open();
        assert_eq!(idle.get("/x").status, 200, "[{driver}]");

        sg.send_sigterm();
        let signalled = Instant::now();
        let (closed, rest) = idle.wait_for_close(Duration::from_secs(3));
        assert_eq!(
            closed,
            Closed::Yes,
            "[{driver}] an idle keep-alive connection stayed open after SIGTERM"
        );
        assert!(
            rest.is_empty(),
            "[{driver}] unexpected bytes on an idle connection: {:?}",
            String::from_utf8_lossy(&rest)
        );
        let status = sg.terminate();
        assert!(status.success(), "[{driver}] exit status {status}");
        assert!(
            signalled.elapsed() < Duration::from_secs(2),
            "[{driver}] an idle connection held the shutdown for {:?}",
            signalled.elapsed()
        );
    }
}
