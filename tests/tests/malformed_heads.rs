//! One table of malformed and request-smuggling requests, sent to both listeners of a real
//! `shardgate` — the admin API and the proxy — under every io driver. Both parse heads and
//! chunked bodies with the same codec (`core/src/http1.rs`), so every row must get the same
//! status from both, with a `{"error": ...}` body, and the connection must be closed after
//! it: once a message's boundary is in doubt, nothing after it on that connection can be
//! trusted. Each row ends with a well-formed request that a desynchronised server would
//! answer as a second response; none may come.
//!
//! Only malformed input belongs here. Well-formed requests the listeners legitimately
//! answer differently (the proxy's 404 for an unknown gateway, the admin's routes) are
//! covered by their own suites.

use std::net::SocketAddr;
use std::time::Duration;

use shardgate_tests::connection::Closed;
use shardgate_tests::tenant::Tenant;
use shardgate_tests::upstream::CountingServer;
use shardgate_tests::{Client, Options, Shardgate, io_drivers, json, parse_response};

/// One listener under test and what a request to it needs to get past everything that is
/// not parsing: the proxy only reads a body (where the chunked rows fail) for a request it
/// routes, so its rows carry a routed gateway's Host and key.
struct Listener {
    name: &'static str,
    client: Client,
    /// The Host field value.
    host: String,
    /// Extra header lines (each ending in CRLF) that authorize the request.
    auth: String,
}

/// A row: what the request is, its bytes, and the status both listeners must answer.
struct Row {
    shape: &'static str,
    request: Vec<u8>,
    status: u16,
}

/// The table, rendered for one listener. Statuses are `HeadError::status()` (and
/// `ChunkError::status()`) of core's codec.
fn table(l: &Listener) -> Vec<Row> {
    let host = &l.host;
    let auth = &l.auth;
    let fields = format!("Host: {host}\r\n{auth}");
    let lf_fields = fields.replace("\r\n", "\n");
    let many: String = (0..100).map(|i| format!("X-Field-{i}: v\r\n")).collect();
    let rows: Vec<(&'static str, String, u16)> = vec![
        (
            "bare LF line endings throughout",
            format!("GET /x/a HTTP/1.1\n{lf_fields}\n"),
            400,
        ),
        (
            "bare LF ending one header line",
            format!("GET /x/a HTTP/1.1\r\n{fields}X-Note: a\n\r\n"),
            400,
        ),
        (
            "duplicate Host",
            format!("GET /x/a HTTP/1.1\r\n{fields}Host: other.localhost\r\n\r\n"),
            400,
        ),
        (
            "duplicate identical Host",
            format!("GET /x/a HTTP/1.1\r\n{fields}Host: {host}\r\n\r\n"),
            400,
        ),
        (
            "HTTP/1.1 without Host",
            format!("GET /x/a HTTP/1.1\r\n{auth}\r\n"),
            400,
        ),
        (
            "Content-Length and Transfer-Encoding together",
            format!(
                "POST /x/a HTTP/1.1\r\n{fields}Content-Length: 5\r\n\
                 Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
            400,
        ),
        (
            "Transfer-Encoding and Content-Length together",
            format!(
                "POST /x/a HTTP/1.1\r\n{fields}Transfer-Encoding: chunked\r\n\
                 Content-Length: 60\r\n\r\n0\r\n\r\n"
            ),
            400,
        ),
        (
            "two differing Content-Length fields",
            format!(
                "POST /x/a HTTP/1.1\r\n{fields}Content-Length: 5\r\nContent-Length: 60\r\n\r\n\
                 hello"
            ),
            400,
        ),
        (
            "differing Content-Length list",
            format!("POST /x/a HTTP/1.1\r\n{fields}Content-Length: 5, 60\r\n\r\nhello"),
            400,
        ),
        (
            "non-numeric Content-Length",
            format!("POST /x/a HTTP/1.1\r\n{fields}Content-Length: 5x\r\n\r\nhello"),
            400,
        ),
        (
            "signed Content-Length",
            format!("POST /x/a HTTP/1.1\r\n{fields}Content-Length: +5\r\n\r\nhello"),
            400,
        ),
        (
            "Transfer-Encoding: chunked, identity",
            format!(
                "POST /x/a HTTP/1.1\r\n{fields}Transfer-Encoding: chunked, identity\r\n\r\n\
                 0\r\n\r\n"
            ),
            400,
        ),
        (
            "Transfer-Encoding split over two fields, not ending in chunked",
            format!(
                "POST /x/a HTTP/1.1\r\n{fields}Transfer-Encoding: chunked\r\n\
                 Transfer-Encoding: identity\r\n\r\n0\r\n\r\n"
            ),
            400,
        ),
        (
            "Transfer-Encoding: chunked twice",
            format!(
                "POST /x/a HTTP/1.1\r\n{fields}Transfer-Encoding: chunked\r\n\
                 Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
            400,
        ),
        (
            "Transfer-Encoding: identity",
            format!("POST /x/a HTTP/1.1\r\n{fields}Transfer-Encoding: identity\r\n\r\n0\r\n\r\n"),
            400,
        ),
        (
            "Transfer-Encoding: chunked with a parameter",
            format!(
                "POST /x/a HTTP/1.1\r\n{fields}Transfer-Encoding: chunked;x=1\r\n\r\n0\r\n\r\n"
            ),
            400,
        ),
        (
            "Transfer-Encoding in an HTTP/1.0 request",
            format!("POST /x/a HTTP/1.0\r\n{fields}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            400,
        ),
        (
            "a transfer coding before chunked",
            format!(
                "POST /x/a HTTP/1.1\r\n{fields}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
            ),
            501,
        ),
        (
            "obs-fold continuation line",
            format!(
                "GET /x/a HTTP/1.1\r\n{fields}X-Folded: a\r\n b\r\n\
                 Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
            400,
        ),
        (
            "space between field name and colon",
            format!(
                "POST /x/a HTTP/1.1\r\n{fields}Transfer-Encoding : chunked\r\n\
                 Content-Length: 5\r\n\r\nhello"
            ),
            400,
        ),
        (
            "NUL in a field value",
            format!("GET /x/a HTTP/1.1\r\n{fields}X-Note: a\0b\r\n\r\n"),
            400,
        ),
        (
            "field line without a colon",
            format!("GET /x/a HTTP/1.1\r\n{fields}no colon here\r\n\r\n"),
            400,
        ),
        (
            "invalid chunk size",
            format!(
                "POST /x/a HTTP/1.1\r\n{fields}Transfer-Encoding: chunked\r\n\r\n\
                 zz\r\nhello\r\n0\r\n\r\n"
            ),
            400,
        ),
        (
            "chunk size with a 0x prefix",
            format!(
                "POST /x/a HTTP/1.1\r\n{fields}Transfer-Encoding: chunked\r\n\r\n\
                 0x5\r\nhello\r\n0\r\n\r\n"
            ),
            400,
        ),
        (
            "chunk data longer than its size",
            format!(
                "POST /x/a HTTP/1.1\r\n{fields}Transfer-Encoding: chunked\r\n\r\n\
                 5\r\nhello!\r\n0\r\n\r\n"
            ),
            400,
        ),
        (
            "bare LF after a chunk size",
            format!(
                "POST /x/a HTTP/1.1\r\n{fields}Transfer-Encoding: chunked\r\n\r\n\
                 5\nhello\r\n0\r\n\r\n"
            ),
            400,
        ),
        (
            "HTTP/1.2",
            format!("GET /x/a HTTP/1.2\r\n{fields}\r\n"),
            505,
        ),
        (
            "garbage version",
            format!("GET /x/a HTTX/1.1\r\n{fields}\r\n"),
            400,
        ),
        (
            "request line without a version",
            format!("GET /x/a\r\n{fields}\r\n"),
            400,
        ),
        (
            "request target that is not origin, absolute or asterisk form",
            format!("GET x/a HTTP/1.1\r\n{fields}\r\n"),
            400,
        ),
        (
            "CONNECT",
            format!("CONNECT {host} HTTP/1.1\r\n{fields}\r\n"),
            405,
        ),
        (
            "request target over 8 KiB",
            format!("GET /x/{} HTTP/1.1\r\n{fields}\r\n", "a".repeat(9 * 1024)),
            414,
        ),
        (
            "head over 16 KiB",
            format!(
                "GET /x/a HTTP/1.1\r\n{fields}X-Big: {}\r\n\r\n",
                "b".repeat(20 * 1024)
            ),
            431,
        ),
        (
            "more than 100 header fields",
            format!("GET /x/a HTTP/1.1\r\n{fields}{many}\r\n"),
            431,
        ),
    ];
    // What a server that lost the message boundary would take for a second request.
    let follow_up = format!("GET /x/smuggled HTTP/1.1\r\n{fields}\r\n");
    rows.into_iter()
        .map(|(shape, request, status)| Row {
            shape,
            request: [request.as_bytes(), follow_up.as_bytes()].concat(),
            status,
        })
        .collect()
}

/// What one row got from one listener: `None` when it is as the table says.
fn check(l: &Listener, row: &Row) -> Option<String> {
    let mut conn = l.client.open();
    conn.write(&row.request);
    let (closed, raw) = conn.wait_for_close(Duration::from_secs(5));
    let text = || {
        String::from_utf8_lossy(&raw)
            .chars()
            .take(300)
            .collect::<String>()
    };
    let resp = match parse_response(&raw, false) {
        Ok(resp) => resp,
        Err(e) => return Some(format!("no response ({e}): {:?}", text())),
    };
    let json_error = serde_json::from_slice::<serde_json::Value>(&resp.body)
        .is_ok_and(|v| v["error"].is_string());
    // Error messages never contain a status line, so each one is a response.
    let responses = raw.windows(9).filter(|w| w == b"HTTP/1.1 ").count();
    (resp.status != row.status || closed != Closed::Yes || !json_error || responses != 1).then(
        || {
            format!(
                "status {} (want {}), closed {closed:?}, JSON error {json_error}, \
                 {responses} responses: {:?}",
                resp.status,
                row.status,
                text()
            )
        },
    )
}

#[test]
fn every_malformed_request_gets_the_same_status_from_admin_and_proxy_and_is_closed() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let up = CountingServer::start("victim");
        let tenant = Tenant::create(&sg, "malformed");
        tenant.route(
            "victim",
            "/x/*",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );
        let admin_addr: SocketAddr = sg.admin_addr();
        let listeners = [
            Listener {
                name: "admin",
                client: sg.admin(),
                host: admin_addr.to_string(),
                auth: String::new(),
            },
            Listener {
                name: "proxy",
                client: tenant.anonymous(),
                host: tenant.host(),
                auth: format!("X-API-Key: {}\r\n", tenant.key),
            },
        ];

        let mut checked = 0;
        let mut failures = Vec::new();
        let rows = table(&listeners[0]).len();
        for l in &listeners {
            for row in table(l) {
                checked += 1;
                if let Some(failure) = check(l, &row) {
                    failures.push(format!("{} / {}: {failure}", l.name, row.shape));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "[{driver}] {} of {checked} checks failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
        // Every row was sent to both listeners; none can have been skipped.
        assert_eq!(checked, 2 * rows, "[{driver}]");
        assert_eq!(up.count(), 0, "[{driver}] nothing reached the upstream");

        // Both listeners still serve well-formed requests.
        sg.admin().get("/health").expect_status(200);
        tenant.client().get("/x/ok").expect_status(200);
        assert_eq!(up.count(), 1, "[{driver}]");
    }
}
