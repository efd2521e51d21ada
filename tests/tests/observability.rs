//! What the gateway tells its operator about the traffic, end to end: the traffic metrics
//! on the admin API's `/metrics` (read with Prometheus' own parser, and `promtool` where it
//! is installed), the request id every answer carries, and the JSON access log (its lines,
//! logrotate's rename-then-SIGHUP, and a destination nobody reads).
//!
//! The metrics test keeps a ledger of every request it sends (the labels the gateway should
//! count it under, and the exact bytes that went each way on the socket) and then requires
//! the scrape to equal the ledger, series by series: no sampling, nothing lost, nothing
//! extra. A request is counted right after its response is written, so the tests poll
//! `/metrics` until the counts settle (bounded) instead of sleeping. Other tests pin what the
//! ledger cannot show alone: retries and failures by cause, a client that leaves before its
//! answer (HTTP/1.1 reset, HTTP/2 RST_STREAM: 499), and request bodies that stream in after
//! their head (their bytes count too).
//!
//! Every test runs under each io driver; no test asserts a speed (the blocked-log test
//! prints its latencies as a measurement only).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use shardgate_tests::tenant::Tenant;
use shardgate_tests::upstream::{CountingServer, DeadPort};
use shardgate_tests::{
    Client, Options, Resp, Shardgate, Value, io_drivers, json, parse_response, python,
};

/// How long the counts may take to settle after the last response was read.
const SETTLE: Duration = Duration::from_secs(5);

/// The histograms' bucket bounds, in order (`+Inf` last).
const BUCKETS: [&str; 17] = [
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
    "2.5", "5", "10", "30", "60", "+Inf",
];

/// Every failure cause of an upstream attempt.
const CAUSES: [&str; 9] = [
    "connect",
    "tls",
    "timeout",
    "reset",
    "invalid_response",
    "status_5xx",
    "circuit_open",
    "max_connections",
    "refused",
];

/// `127.0.0.<last>`: a distinct client IP on loopback.
fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

// ---------------------------------------------------------------------------------------------
// Scrapes, parsed by Prometheus' own parser

type Labels = BTreeMap<String, String>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn show(labels: &Labels) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(","))
}

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

/// One `/metrics` answer: its text, and what `prometheus_client` made of it.
#[derive(Debug)]
struct Scrape {
    text: String,
    /// Family name (as the parser names it: a counter without `_total`) → type.
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    /// Every sample named `name`, by label set.
    fn series(&self, name: &str) -> BTreeMap<Labels, f64> {
        let mut out = BTreeMap::new();
        for s in self.samples.iter().filter(|s| s.name == name) {
            let earlier = out.insert(s.labels.clone(), s.value);
            assert!(
                earlier.is_none(),
                "{name}{} appears twice in one scrape",
                show(&s.labels)
            );
        }
        out
    }

    /// The sum of every sample named `name`.
    fn total(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    }

    /// The one sample named `name` with exactly `labels`.
    fn value(&self, name: &str, labels: &Labels) -> Option<f64> {
        self.series(name).get(labels).copied()
    }
}

/// Parses an exposition with `prometheus_client`'s `text_string_to_metric_families`
/// (tests/python/prometheus_parse.py); panics with the parser's message when it rejects it.
fn parse_exposition(text: &str) -> Scrape {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/prometheus_parse.py");
    let mut child = Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the Prometheus parser (tests/run installs prometheus_client)");
    // The script reads all of stdin before it writes anything, so this cannot deadlock.
    child
        .stdin
        .take()
        .expect("the parser's stdin is piped")
        .write_all(text.as_bytes())
        .expect("hand the scrape to the parser");
    let output = child.wait_with_output().expect("wait for the parser");
    assert!(
        output.status.success(),
        "prometheus_client could not parse the scrape ({}; is prometheus_client installed? \
         tests/run installs it): {}\n--- scrape ---\n{text}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let parsed: Value =
        serde_json::from_slice(&output.stdout).expect("the parser prints one JSON object");
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for family in parsed["families"].as_array().expect("families") {
        let name = family["name"].as_str().expect("family name").to_owned();
        let kind = family["type"].as_str().expect("family type").to_owned();
        for s in family["samples"].as_array().expect("samples") {
            samples.push(Sample {
                name: s["name"].as_str().expect("sample name").to_owned(),
                labels: s["labels"]
                    .as_object()
                    .expect("sample labels")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().expect("label value").to_owned()))
                    .collect(),
                value: s["value"].as_f64().expect("sample value"),
            });
        }
        assert!(
            types.insert(name.clone(), kind).is_none(),
            "family {name} appears twice"
        );
    }
    Scrape {
        text: text.to_owned(),
        types,
        samples,
    }
}

/// `GET /metrics` on the admin API, parsed.
fn scrape(sg: &Shardgate) -> Scrape {
    let resp = sg.admin().get("/metrics").expect_status(200);
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; version=0.0.4"),
        "{}",
        resp.status
    );
    parse_exposition(&resp.text())
}

/// Scrapes until `ready` holds (at most [`SETTLE`]) and returns the last scrape either way:
/// the assertions that follow say what is missing.
fn settled(sg: &Shardgate, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + SETTLE;
    loop {
        let s = scrape(sg);
        if ready(&s) || Instant::now() >= deadline {
            return s;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// `promtool check metrics` on the scrape, when promtool is installed (tests/run does not
/// install it: Debian's `prometheus` package is 96 MB).
fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            eprintln!(
                "note: promtool is not on PATH; the scrape was checked with prometheus_client's \
                 parser only"
            );
            return;
        }
        Err(e) => panic!("run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .expect("promtool's stdin is piped")
        .write_all(text.as_bytes())
        .expect("hand the scrape to promtool");
    let output = child.wait_with_output().expect("wait for promtool");
    assert!(
        output.status.success(),
        "promtool check metrics failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Collects every mismatch between a scrape and what was sent, so that one failing run
/// shows all of them.
#[derive(Debug, Default)]
struct Mismatches(Vec<String>);

impl Mismatches {
    /// Series `name` must be exactly `want`: the same label sets with the same values.
    fn series(&mut self, scrape: &Scrape, name: &str, want: &BTreeMap<Labels, f64>) {
        let got = scrape.series(name);
        for (l, w) in want {
            match got.get(l) {
                None => self.0.push(format!("{name}{} missing (want {w})", show(l))),
                Some(g) if g != w => self.0.push(format!("{name}{} = {g}, want {w}", show(l))),
                Some(_) => {}
            }
        }
        for (l, g) in &got {
            if !want.contains_key(l) {
                self.0
                    .push(format!("{name}{} = {g} was not expected", show(l)));
            }
        }
    }

    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    #[track_caller]
    fn finish(self, context: &str, scrape: &Scrape) {
        assert!(
            self.0.is_empty(),
            "{context}: the scrape differs from what was sent:\n  {}\n--- scrape ---\n{}",
            self.0.join("\n  "),
            scrape.text
        );
    }
}

/// Every histogram in the scrape has the documented buckets in order, cumulative counts,
/// and `+Inf` equal to `_count`. Returns how many histogram families it checked.
fn check_histograms(scrape: &Scrape, m: &mut Mismatches) -> usize {
    let mut checked = 0;
    for (family, kind) in &scrape.types {
        if kind != "histogram" {
            continue;
        }
        checked += 1;
        let mut buckets: BTreeMap<Labels, Vec<(String, f64)>> = BTreeMap::new();
        for s in scrape
            .samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
        {
            let mut l = s.labels.clone();
            let le = l.remove("le").unwrap_or_default();
            buckets.entry(l).or_default().push((le, s.value));
        }
        let counts = scrape.series(&format!("{family}_count"));
        m.check(buckets.len() == counts.len(), || {
            format!("{family}: bucket label sets differ from _count's")
        });
        for (l, series) in &buckets {
            let les: Vec<&str> = series.iter().map(|(le, _)| le.as_str()).collect();
            m.check(les == BUCKETS, || {
                format!("{family}{} buckets {les:?}", show(l))
            });
            m.check(series.windows(2).all(|w| w[0].1 <= w[1].1), || {
                format!("{family}{} buckets not cumulative: {series:?}", show(l))
            });
            let inf = series.last().map(|(_, v)| *v);
            m.check(inf == counts.get(l).copied(), || {
                format!(
                    "{family}{}: +Inf bucket {inf:?}, _count {:?}",
                    show(l),
                    counts.get(l)
                )
            });
        }
    }
    checked
}

// ---------------------------------------------------------------------------------------------
// Client connections that count their bytes

/// What one request and its response moved.
#[derive(Debug)]
struct Exchange {
    resp: Resp,
    /// Bytes of the request as written on the socket.
    sent: u64,
    /// Bytes of the response as read off the socket.
    received: u64,
    /// The client's end of the connection (the access log's `client`).
    local: SocketAddr,
}

impl Exchange {
    fn request_id(&self) -> String {
        self.resp
            .header("x-request-id")
            .unwrap_or_else(|| panic!("no X-Request-Id on {}", self.resp))
            .to_owned()
    }
}

/// One client connection (keep-alive) that knows exactly how many bytes it moved.
#[derive(Debug)]
struct Wire {
    stream: TcpStream,
    client: Client,
    buf: Vec<u8>,
}

impl Wire {
    fn open(client: &Client) -> Wire {
        Wire {
            stream: client.connect(),
            client: client.clone(),
            buf: Vec::new(),
        }
    }

    /// Sends one request (the client's Host and headers, then `headers`) and reads its
    /// response, which must be `Content-Length` framed (every answer in these tests is).
    fn exchange(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Exchange {
        self.exchange_in_parts(method, path, headers, body, None)
    }

    /// Like [`Wire::exchange`]; with `pause`, the head goes first and the body that long
    /// after it, in a write of its own.
    fn exchange_in_parts(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        pause: Option<Duration>,
    ) -> Exchange {
        let what = format!("{method} {path}");
        let bytes = self.client.request_bytes(method, path, headers, body);
        let (head, rest) = match pause {
            Some(_) => bytes.split_at(bytes.len() - body.len()),
            None => (&bytes[..], &[][..]),
        };
        self.stream
            .write_all(head)
            .unwrap_or_else(|e| panic!("{what}: write: {e}"));
        if let Some(pause) = pause {
            thread::sleep(pause);
            self.stream
                .write_all(rest)
                .unwrap_or_else(|e| panic!("{what}: write the body: {e}"));
        }
        let local = self.stream.local_addr().expect("the local address");
        let (resp, received) = self.read_response(&what);
        Exchange {
            resp,
            sent: bytes.len() as u64,
            received,
            local,
        }
    }

    /// Reads one `Content-Length` framed response; returns it and its size on the wire.
    fn read_response(&mut self, what: &str) -> (Resp, u64) {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = parse_response(&self.buf[..end + 4], true)
                    .unwrap_or_else(|e| panic!("{what}: bad response head: {e}"));
                let len: usize = head
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{what}: no Content-Length: {head}"));
                let total = end + 4 + len;
                if self.buf.len() >= total {
                    let resp = parse_response(&self.buf[..total], false)
                        .unwrap_or_else(|e| panic!("{what}: bad response: {e}"));
                    self.buf.drain(..total);
                    return (resp, total as u64);
                }
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!(
                    "{what}: the connection closed before a whole response: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("{what}: read: {e}"),
            }
        }
    }
}

/// One request on a connection of its own.
fn once(
    client: &Client,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Exchange {
    Wire::open(client).exchange(method, path, headers, body)
}

// ---------------------------------------------------------------------------------------------
// What the gateway should count

/// The labels one request should be counted under.
#[derive(Debug, Clone, Copy)]
struct Expect<'a> {
    gateway: &'a str,
    rule: &'a str,
    rule_id: &'a str,
    service: &'a str,
    code: u16,
    /// An upstream attempt was made (so the upstream histogram observes it).
    attempted: bool,
}

/// Every request sent, as the metrics should show it.
#[derive(Debug, Default)]
struct Ledger {
    requests: BTreeMap<Labels, f64>,
    durations: BTreeMap<Labels, f64>,
    upstream_times: BTreeMap<Labels, f64>,
    bytes_in: BTreeMap<Labels, f64>,
    bytes_out: BTreeMap<Labels, f64>,
}

impl Ledger {
    #[track_caller]
    fn note(&mut self, e: Expect<'_>, method: &str, x: &Exchange) {
        assert_eq!(x.resp.status, e.code, "{method}: {}", x.resp);
        let code = e.code.to_string();
        let series = labels(&[
            ("gateway", e.gateway),
            ("rule", e.rule),
            ("rule_id", e.rule_id),
            ("service", e.service),
            ("method", method),
            ("code", &code),
        ]);
        *self.requests.entry(series).or_default() += 1.0;
        let pair = labels(&[("gateway", e.gateway), ("service", e.service)]);
        *self.durations.entry(pair.clone()).or_default() += 1.0;
        *self.upstream_times.entry(pair.clone()).or_default() += f64::from(u8::from(e.attempted));
        *self.bytes_in.entry(pair.clone()).or_default() += x.sent as f64;
        *self.bytes_out.entry(pair).or_default() += x.received as f64;
    }

    fn total(&self) -> f64 {
        self.requests.values().sum()
    }
}

/// A `rate_limiter` in `pre_request` with these `limits`.
fn rate_limiter(limits: Value) -> Value {
    json!({
        "name": "rate_limiter",
        "enabled": true,
        "stage": "pre_request",
        "priority": 1,
        "settings": {"limits": limits, "actions": {"type": "reject", "retry_after": "60"}}
    })
}

// ---------------------------------------------------------------------------------------------
// Metrics

#[test]
fn metrics_count_exactly_the_requests_that_were_sent() {
    const N: usize = 3;
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().workers(2).io_driver(driver));
        let up = CountingServer::start("backend");
        let dead = DeadPort::reserve();
        let port = sg.proxy_addr().port();

        // Gateway `shop` (keyed): /items/* and a /limited rule with a per-IP limit of 3 a
        // minute on one upstream, and /broken/* on a closed port with no retries.
        let shop = Tenant::create(&sg, "shop");
        let backend = shop.upstream("backend", vec![up.target(json!({}))], json!({}));
        let catalog = shop.service("catalog", &backend, json!({}));
        let limited = shop.service("limited", &backend, json!({}));
        let items_rule = shop.rule(json!({
            "path": "/items/*", "methods": ["GET", "POST"], "service_id": catalog
        }));
        let limited_rule = shop.rule(json!({
            "path": "/limited", "methods": ["GET"], "service_id": limited,
            "plugin_chain": [rate_limiter(json!({"per_ip": {"limit": 3, "window": "1m"}}))]
        }));
        let gone = shop.upstream("gone", vec![dead.target(json!({}))], json!({}));
        let dead_service = shop.service("dead", &gone, json!({"retries": 0}));
        let broken_rule = shop.rule(json!({
            "path": "/broken/*", "methods": ["GET"], "service_id": dead_service
        }));

        // Gateway `open`: a public rule behind a gateway-wide limit of 4 a minute.
        let open = Tenant::create(&sg, "open");
        open.update_gateway(&json!({
            "name": "gw-open",
            "subdomain": "open",
            "required_plugins": [rate_limiter(json!({"global": {"limit": 4, "window": "1m"}}))]
        }));
        let open_backend = open.upstream("open-backend", vec![up.target(json!({}))], json!({}));
        let public = open.service("public", &open_backend, json!({}));
        let pub_rule = open.rule(json!({
            "path": "/pub/*", "methods": ["GET"], "public": true, "service_id": public
        }));

        let items = Expect {
            gateway: "shop",
            rule: "/items/*",
            rule_id: &items_rule,
            service: "catalog",
            code: 200,
            attempted: true,
        };
        let limited_ok = Expect {
            rule: "/limited",
            rule_id: &limited_rule,
            service: "limited",
            ..items
        };
        // Refused by the rule's limiter before a service was picked.
        let limited_refused = Expect {
            service: "",
            code: 429,
            attempted: false,
            ..limited_ok
        };
        // Refused before routing: no rule, no service.
        let shop_refused = |code| Expect {
            gateway: "shop",
            rule: "",
            rule_id: "",
            service: "",
            code,
            attempted: false,
        };
        let no_gateway = Expect {
            gateway: "",
            ..shop_refused(404)
        };
        let broken = Expect {
            rule: "/broken/*",
            rule_id: &broken_rule,
            service: "dead",
            code: 502,
            ..items
        };
        let pub_ok = Expect {
            gateway: "open",
            rule: "/pub/*",
            rule_id: &pub_rule,
            service: "public",
            code: 200,
            attempted: true,
        };
        let pub_refused = Expect {
            gateway: "open",
            ..shop_refused(429)
        };

        let mut ledger = Ledger::default();
        // N GETs on one kept-alive connection, with X-API-Key.
        let mut wire = Wire::open(&shop.client());
        for i in 0..N {
            let x = wire.exchange("GET", &format!("/items/{i}?page={i}"), &[], b"");
            ledger.note(items, "GET", &x);
        }
        drop(wire);
        // N POSTs from another client IP, each on its own connection, with a Bearer key
        // and a small body (streamed bodies: see
        // `request_bytes_count_a_body_that_streams_in_after_the_head`).
        let body = br#"{"name":"teapot","price":42}"#;
        let bearer = shop.anonymous().bearer(&shop.key).source_ip(loopback(2));
        for _ in 0..N {
            let x = once(&bearer, "POST", "/items/new", &[], body);
            ledger.note(items, "POST", &x);
        }
        // Two client IPs, a connection each: 3 admitted, then 2 refused per IP.
        for ip in [loopback(2), loopback(3)] {
            let mut wire = Wire::open(&shop.client().source_ip(ip));
            for i in 0..5 {
                let x = wire.exchange("GET", "/limited", &[], b"");
                ledger.note(if i < 3 { limited_ok } else { limited_refused }, "GET", &x);
            }
        }
        for i in 0..N {
            // No key: 401 (before the path is even looked up).
            let x = once(&shop.anonymous(), "GET", &format!("/items/{i}"), &[], b"");
            ledger.note(shop_refused(401), "GET", &x);
            // A valid key, a path no rule has: 404.
            let x = once(
                &shop.client().source_ip(loopback(3)),
                "GET",
                "/nowhere",
                &[],
                b"",
            );
            ledger.note(shop_refused(404), "GET", &x);
            // A Host no gateway has: 404 with no gateway.
            let stranger = Client::new(sg.proxy_addr()).host(&format!("nosuch.localhost:{port}"));
            let x = once(&stranger, "GET", "/items/1", &[], b"");
            ledger.note(no_gateway, "GET", &x);
            // The closed port: 502 after one failed connect.
            let x = once(
                &shop.client().source_ip(loopback(3)),
                "GET",
                &format!("/broken/{i}"),
                &[],
                b"",
            );
            ledger.note(broken, "GET", &x);
        }
        // The gateway-wide limit: 4 admitted, then 2 refused.
        let mut wire = Wire::open(&open.anonymous().source_ip(loopback(4)));
        for i in 0..6 {
            let x = wire.exchange("GET", "/pub/a", &[], b"");
            ledger.note(if i < 4 { pub_ok } else { pub_refused }, "GET", &x);
        }
        drop(wire);
        assert_eq!(
            up.count(),
            2 * N + 6 + 4,
            "[{driver}] admitted requests upstream"
        );

        let want_total = ledger.total();
        let s = settled(&sg, |s| {
            s.total("shardgate_http_requests_total") >= want_total
                && s.total("shardgate_client_connections") == 0.0
        });
        let context = format!("[{driver}]");
        let mut m = Mismatches::default();

        m.series(&s, "shardgate_http_requests_total", &ledger.requests);
        m.series(
            &s,
            "shardgate_http_request_duration_seconds_count",
            &ledger.durations,
        );
        m.series(
            &s,
            "shardgate_upstream_duration_seconds_count",
            &ledger.upstream_times,
        );
        m.series(&s, "shardgate_http_request_bytes_total", &ledger.bytes_in);
        m.series(&s, "shardgate_http_response_bytes_total", &ledger.bytes_out);
        let histograms = check_histograms(&s, &mut m);
        m.check(histograms == 2, || {
            format!("{histograms} histogram families, want 2 (request and upstream durations)")
        });

        m.series(
            &s,
            "shardgate_rate_limit_rejections_total",
            &BTreeMap::from([
                (labels(&[("gateway", "shop"), ("dimension", "per_ip")]), 4.0),
                (labels(&[("gateway", "open"), ("dimension", "global")]), 2.0),
            ]),
        );

        let backend_l = labels(&[("gateway", "shop"), ("upstream", "backend")]);
        let gone_l = labels(&[("gateway", "shop"), ("upstream", "gone")]);
        let open_l = labels(&[("gateway", "open"), ("upstream", "open-backend")]);
        let per_upstream = |backend: f64, gone: f64, open: f64| {
            BTreeMap::from([
                (backend_l.clone(), backend),
                (gone_l.clone(), gone),
                (open_l.clone(), open),
            ])
        };
        m.series(
            &s,
            "shardgate_upstream_attempts_total",
            &per_upstream((2 * N + 6) as f64, N as f64, 4.0),
        );
        m.series(
            &s,
            "shardgate_upstream_retries_total",
            &per_upstream(0.0, 0.0, 0.0),
        );
        m.series(
            &s,
            "shardgate_upstream_retry_budget_exhausted_total",
            &per_upstream(0.0, 0.0, 0.0),
        );
        let mut failures = BTreeMap::new();
        for l in [&backend_l, &gone_l, &open_l] {
            for cause in CAUSES {
                let mut with_cause = l.clone();
                with_cause.insert("cause".into(), cause.into());
                let n = if l == &gone_l && cause == "connect" {
                    N as f64
                } else {
                    0.0
                };
                failures.insert(with_cause, n);
            }
        }
        m.series(&s, "shardgate_upstream_failures_total", &failures);

        let up_target = format!("127.0.0.1:{}", up.addr().port());
        let dead_target = format!("127.0.0.1:{}", dead.port());
        m.series(
            &s,
            "shardgate_upstream_target_healthy",
            &BTreeMap::from([
                (
                    labels(&[
                        ("gateway", "shop"),
                        ("upstream", "backend"),
                        ("target", &up_target),
                    ]),
                    1.0,
                ),
                (
                    labels(&[
                        ("gateway", "shop"),
                        ("upstream", "gone"),
                        ("target", &dead_target),
                    ]),
                    1.0,
                ),
                (
                    labels(&[
                        ("gateway", "open"),
                        ("upstream", "open-backend"),
                        ("target", &up_target),
                    ]),
                    1.0,
                ),
            ]),
        );

        // Per-worker series: one per worker, and every client connection is closed now.
        for name in [
            "shardgate_client_connections",
            "shardgate_upstream_pool_idle_connections",
            "shardgate_upstream_h2_connections",
            "shardgate_access_log_lines_dropped_total",
        ] {
            let workers: BTreeSet<String> = s
                .series(name)
                .keys()
                .map(|l| l.get("worker").cloned().unwrap_or_default())
                .collect();
            m.check(workers == BTreeSet::from(["0".into(), "1".into()]), || {
                format!("{name}: workers {workers:?}, want 0 and 1")
            });
        }
        m.check(s.total("shardgate_client_connections") == 0.0, || {
            "shardgate_client_connections: connections still open".into()
        });
        for (name, want) in [
            ("shardgate_access_log_lines_dropped_total", 0.0),
            ("shardgate_access_log_lines_written_total", 0.0),
            ("shardgate_access_log_write_errors_total", 0.0),
            ("shardgate_metrics_overflow_total", 0.0),
        ] {
            let got = s.total(name);
            m.check(got == want, || format!("{name} = {got}, want {want}"));
        }
        let apply = s.value("shardgate_config_apply_seconds", &Labels::new());
        m.check(apply.is_some_and(|v| v.is_finite() && v >= 0.0), || {
            format!("shardgate_config_apply_seconds = {apply:?}")
        });

        for (family, kind) in [
            ("shardgate_http_requests", "counter"),
            ("shardgate_http_request_duration_seconds", "histogram"),
            ("shardgate_upstream_duration_seconds", "histogram"),
            ("shardgate_http_request_bytes", "counter"),
            ("shardgate_http_response_bytes", "counter"),
            ("shardgate_upstream_attempts", "counter"),
            ("shardgate_upstream_retries", "counter"),
            ("shardgate_upstream_retry_budget_exhausted", "counter"),
            ("shardgate_upstream_failures", "counter"),
            ("shardgate_rate_limit_rejections", "counter"),
            ("shardgate_upstream_target_healthy", "gauge"),
            ("shardgate_circuit_state", "gauge"),
            ("shardgate_client_connections", "gauge"),
            ("shardgate_upstream_pool_idle_connections", "gauge"),
            ("shardgate_upstream_h2_connections", "gauge"),
            ("shardgate_access_log_lines_dropped", "counter"),
            ("shardgate_access_log_lines_written", "counter"),
            ("shardgate_access_log_write_errors", "counter"),
            ("shardgate_metrics_overflow", "counter"),
            ("shardgate_config_apply_seconds", "gauge"),
        ] {
            let got = s.types.get(family).map(String::as_str);
            m.check(got == Some(kind), || {
                format!("family {family}: type {got:?}, want {kind}")
            });
        }
        m.finish(&context, &s);
        promtool_check(&s.text);
    }
}

#[test]
fn upstream_attempts_retries_and_failures_are_counted_by_cause() {
    const N: usize = 3;
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().workers(2).io_driver(driver));
        let (dead_a, dead_b) = (DeadPort::reserve(), DeadPort::reserve());
        let failing = CountingServer::builder("failing").status(503).start();
        let shop = Tenant::create(&sg, "shop");
        // Two closed ports and one retry: each request tries both, and gets 502.
        let closed = shop.upstream(
            "closed",
            vec![dead_a.target(json!({})), dead_b.target(json!({}))],
            json!({}),
        );
        let twice = shop.service("twice", &closed, json!({"retries": 1}));
        shop.rule(json!({"path": "/twice", "methods": ["GET"], "service_id": twice}));
        // An upstream that answers 503, no retries: its answer is relayed, and counted as a
        // failed attempt.
        let unwell = shop.upstream("unwell", vec![failing.target(json!({}))], json!({}));
        let once_only = shop.service("once", &unwell, json!({"retries": 0}));
        shop.rule(json!({"path": "/once", "methods": ["GET"], "service_id": once_only}));

        for _ in 0..N {
            shop.client().get("/twice").expect_status(502);
            shop.client().get("/once").expect_status(503);
        }
        assert_eq!(failing.count(), N, "[{driver}]");

        let s = settled(&sg, |s| {
            s.total("shardgate_http_requests_total") >= (2 * N) as f64
        });
        let closed_l = labels(&[("gateway", "shop"), ("upstream", "closed")]);
        let unwell_l = labels(&[("gateway", "shop"), ("upstream", "unwell")]);
        let n = N as f64;
        let mut failures = BTreeMap::new();
        for cause in CAUSES {
            for (l, want) in [
                (&closed_l, if cause == "connect" { 2.0 * n } else { 0.0 }),
                (&unwell_l, if cause == "status_5xx" { n } else { 0.0 }),
            ] {
                let mut with_cause = l.clone();
                with_cause.insert("cause".into(), cause.into());
                failures.insert(with_cause, want);
            }
        }
        let mut m = Mismatches::default();
        m.series(
            &s,
            "shardgate_upstream_attempts_total",
            &BTreeMap::from([(closed_l.clone(), 2.0 * n), (unwell_l.clone(), n)]),
        );
        m.series(
            &s,
            "shardgate_upstream_retries_total",
            &BTreeMap::from([(closed_l.clone(), n), (unwell_l.clone(), 0.0)]),
        );
        m.series(&s, "shardgate_upstream_failures_total", &failures);
        m.series(
            &s,
            "shardgate_upstream_duration_seconds_count",
            &BTreeMap::from([
                (labels(&[("gateway", "shop"), ("service", "twice")]), n),
                (labels(&[("gateway", "shop"), ("service", "once")]), n),
            ]),
        );
        m.finish(&format!("[{driver}] upstream attempts"), &s);
    }
}

#[test]
fn a_request_whose_client_leaves_before_the_answer_is_counted_as_499() {
    for driver in io_drivers() {
        let dir = tempfile::tempdir().expect("a directory for the access log");
        let log = dir.path().join("access.log");
        let sg = Shardgate::start(
            Options::new()
                .workers(2)
                .io_driver(driver)
                .arg("--access-log")
                .arg(&log),
        );
        let slow = CountingServer::builder("slow")
            .delay(Duration::from_millis(500))
            .start();
        let shop = Tenant::create(&sg, "shop");
        let route = shop.route(
            "slow",
            "/slow",
            vec![slow.target(json!({}))],
            json!({}),
            json!({"methods": ["GET"]}),
        );

        let stream = shop.client().connect();
        let request = shop.client().request_bytes(
            "GET",
            "/slow",
            &[("X-Request-Id", "the-client-left")],
            b"",
        );
        (&stream).write_all(&request).expect("send the request");
        assert!(
            slow.wait_for(1, Duration::from_secs(5)),
            "[{driver}] the request reached the upstream"
        );
        // The client vanishes while the upstream is still thinking: it resets the
        // connection (SO_LINGER 0), so the gateway's answer cannot reach it.
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER 0");
        drop(stream);

        let want = BTreeMap::from([(
            labels(&[
                ("gateway", "shop"),
                ("rule", "/slow"),
                ("rule_id", &route.rule_id),
                ("service", "slow"),
                ("method", "GET"),
                ("code", "499"),
            ]),
            1.0,
        )]);
        let s = settled(&sg, |s| {
            slow.in_flight() == 0 && s.total("shardgate_http_requests_total") >= 1.0
        });
        let lines = wait_for_lines(&log, 1);
        let mut m = Mismatches::default();
        m.series(&s, "shardgate_http_requests_total", &want);
        let line: Value = lines
            .first()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .unwrap_or(Value::Null);
        m.check(
            line["request_id"] == json!("the-client-left") && line["status"] == json!(499),
            || format!("the access log says {line}, want status 499"),
        );
        m.finish(&format!("[{driver}] a client that left"), &s);
    }
}

/// The time a request reads is taken once per poll of its connection's task
/// (`proxy/src/clock.rs`); the durations the access log reports still span the I/O between
/// the steps: an upstream that takes 300 ms before answering shows as at least that, in
/// `upstream_time` and in `total_time`, and the second request on the same connection
/// starts its own clock.
#[test]
fn logged_times_span_a_slow_upstreams_wait() {
    let wait = Duration::from_millis(300);
    for driver in io_drivers() {
        let dir = tempfile::tempdir().expect("a directory for the access log");
        let log = dir.path().join("access.log");
        let sg = Shardgate::start(
            Options::new()
                .workers(1)
                .io_driver(driver)
                .arg("--access-log")
                .arg(&log),
        );
        let slow = CountingServer::builder("slow").delay(wait).start();
        let shop = Tenant::create(&sg, "shop");
        shop.route(
            "slow",
            "/slow",
            vec![slow.target(json!({}))],
            json!({}),
            json!({"methods": ["GET"]}),
        );
        let client = shop.client();
        let mut wire = Wire::open(&client);
        let first = wire.exchange("GET", "/slow", &[("X-Request-Id", "slow-1")], b"");
        let second = wire.exchange("GET", "/slow", &[("X-Request-Id", "slow-2")], b"");
        assert_eq!(
            (first.resp.status, second.resp.status),
            (200, 200),
            "[{driver}] both answered"
        );
        let lines = wait_for_lines(&log, 2);
        let by_id = by_request_id(&lines, &format!("[{driver}] slow upstream"));
        for id in ["slow-1", "slow-2"] {
            let line = by_id
                .get(id)
                .unwrap_or_else(|| panic!("[{driver}] no access-log line for {id}: {lines:?}"));
            let upstream = line["upstream_time"].as_f64().unwrap_or(-1.0);
            let total = line["total_time"].as_f64().unwrap_or(-1.0);
            assert!(
                upstream >= wait.as_secs_f64() && upstream < 5.0,
                "[{driver}] {id}: upstream_time {upstream} for a {wait:?} wait: {line}"
            );
            assert!(
                total >= upstream && total < 5.0,
                "[{driver}] {id}: total_time {total} against upstream_time {upstream}: {line}"
            );
        }
    }
}

/// `tests/python/h2_request.py` against `sg`'s plain listener as the tenant's gateway.
fn h2_request(sg: &Shardgate, tenant: &Tenant, path: &str, id: &str, mode: &str) -> Child {
    let port = sg.proxy_addr().port().to_string();
    Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/python/h2_request.py"))
        .args(["127.0.0.1", &port])
        .arg(format!("{}.localhost:{port}", tenant.subdomain))
        .args([path, &tenant.key, id, mode])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the h2 client (tests/run installs h2)")
}

/// The h2 client's JSON line, once it has exited.
fn h2_result(child: Child) -> Value {
    let output = child.wait_with_output().expect("wait for the h2 client");
    let text = String::from_utf8_lossy(&output.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("no JSON from the h2 client ({e}): {text}"))
}

#[test]
fn http2_requests_are_counted_and_a_stream_the_client_resets_is_counted_as_499() {
    for driver in io_drivers() {
        let dir = tempfile::tempdir().expect("a directory for the access log");
        let log = dir.path().join("access.log");
        let sg = Shardgate::start(
            Options::new()
                .workers(2)
                .io_driver(driver)
                .arg("--access-log")
                .arg(&log),
        );
        let fast = CountingServer::start("fast");
        let slow = CountingServer::builder("slow")
            .delay(Duration::from_millis(500))
            .start();
        let shop = Tenant::create(&sg, "shop");
        let fast_route = shop.route(
            "fast",
            "/fast",
            vec![fast.target(json!({}))],
            json!({}),
            json!({"methods": ["GET"]}),
        );
        let slow_route = shop.route(
            "slow",
            "/slow",
            vec![slow.target(json!({}))],
            json!({}),
            json!({"methods": ["GET"]}),
        );

        let done = h2_result(h2_request(&sg, &shop, "/fast", "h2-answered", "complete"));
        assert_eq!(done["status"], json!(200), "[{driver}] {done}");
        assert_eq!(
            done["headers"]["x-request-id"],
            json!("h2-answered"),
            "[{driver}] {done}"
        );
        assert_eq!(
            fast.last().header("x-request-id"),
            Some("h2-answered"),
            "[{driver}]"
        );

        // The client resets its stream while the upstream is still thinking.
        let mut leaving = h2_request(&sg, &shop, "/slow", "h2-left", "reset");
        let mut stdout = leaving.stdout.take().expect("the client's stdout is piped");
        let mut sent = [0u8; 5];
        stdout
            .read_exact(&mut sent)
            .expect("the h2 client says it sent the request");
        assert!(
            slow.wait_for(1, Duration::from_secs(5)),
            "[{driver}] the request reached the upstream"
        );
        leaving
            .stdin
            .take()
            .expect("the client's stdin is piped")
            .write_all(b"reset\n")
            .expect("tell the h2 client to reset its stream");
        let status = leaving.wait().expect("wait for the h2 client");
        assert!(status.success(), "[{driver}] the h2 client: {status}");

        let series = |route: &shardgate_tests::tenant::Route, rule: &str, code: &str| {
            labels(&[
                ("gateway", "shop"),
                ("rule", rule),
                ("rule_id", &route.rule_id),
                ("service", rule.trim_start_matches('/')),
                ("method", "GET"),
                ("code", code),
            ])
        };
        let want = BTreeMap::from([
            (series(&fast_route, "/fast", "200"), 1.0),
            (series(&slow_route, "/slow", "499"), 1.0),
        ]);
        let s = settled(&sg, |s| {
            slow.in_flight() == 0 && s.total("shardgate_http_requests_total") >= 2.0
        });
        let lines = wait_for_lines(&log, 2);
        let logged = by_request_id(&lines, &format!("[{driver}]"));
        let mut m = Mismatches::default();
        m.series(&s, "shardgate_http_requests_total", &want);
        for (id, status) in [("h2-answered", 200), ("h2-left", 499)] {
            let got = logged.get(id).map(|l| l["status"].clone());
            m.check(got == Some(json!(status)), || {
                format!("access log: request {id} has status {got:?}, want {status}")
            });
        }
        m.finish(&format!("[{driver}] HTTP/2"), &s);
    }
}

#[test]
fn request_bytes_count_a_body_that_streams_in_after_the_head() {
    for driver in io_drivers() {
        let dir = tempfile::tempdir().expect("a directory for the access log");
        let log = dir.path().join("access.log");
        let sg = Shardgate::start(
            Options::new()
                .workers(2)
                .io_driver(driver)
                .arg("--access-log")
                .arg(&log),
        );
        let up = CountingServer::builder("sink").body(b"stored").start();
        let shop = Tenant::create(&sg, "shop");
        shop.route(
            "sink",
            "/upload",
            vec![up.target(json!({}))],
            json!({}),
            json!({"methods": ["POST"]}),
        );

        // A body larger than any read buffer, and a small one that arrives 100 ms after its
        // head: in both, most or all of the body comes in reads after the head's.
        let big = vec![b'u'; 256 * 1024];
        let sent = [
            once(&shop.client(), "POST", "/upload", &[], &big),
            Wire::open(&shop.client()).exchange_in_parts(
                "POST",
                "/upload",
                &[],
                b"late body",
                Some(Duration::from_millis(100)),
            ),
        ];
        for x in &sent {
            assert_eq!(x.resp.status, 200, "[{driver}] {}", x.resp);
        }
        assert_eq!(up.requests()[0].body.len(), big.len(), "[{driver}]");
        assert_eq!(up.requests()[1].body, b"late body", "[{driver}]");

        let pair = labels(&[("gateway", "shop"), ("service", "sink")]);
        let s = settled(&sg, |s| s.total("shardgate_http_requests_total") >= 2.0);
        let lines = wait_for_lines(&log, sent.len());
        let logged = by_request_id(&lines, &format!("[{driver}]"));
        let mut m = Mismatches::default();
        m.series(
            &s,
            "shardgate_http_request_bytes_total",
            &BTreeMap::from([(pair.clone(), sent.iter().map(|x| x.sent as f64).sum())]),
        );
        m.series(
            &s,
            "shardgate_http_response_bytes_total",
            &BTreeMap::from([(pair, sent.iter().map(|x| x.received as f64).sum())]),
        );
        for x in &sent {
            let line = logged.get(&x.request_id()).cloned().unwrap_or(Value::Null);
            m.check(line["bytes_in"] == json!(x.sent), || {
                format!(
                    "access log bytes_in {} for a request of {} bytes",
                    line["bytes_in"], x.sent
                )
            });
            m.check(line["bytes_out"] == json!(x.received), || {
                format!(
                    "access log bytes_out {} for a response of {} bytes",
                    line["bytes_out"], x.received
                )
            });
        }
        m.finish(&format!("[{driver}] streamed request bodies"), &s);
    }
}

// ---------------------------------------------------------------------------------------------
// Request ids

/// Whether `id` looks like one the gateway made: 32 hex digits.
fn generated(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[test]
fn request_ids_are_kept_when_valid_replaced_otherwise_and_sent_both_ways() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().workers(2).io_driver(driver));
        // The upstream sends an id of its own, which the gateway's replaces.
        let up = CountingServer::builder("ids")
            .header("X-Request-Id", "upstream-made-this")
            .start();
        let shop = Tenant::create(&sg, "shop");
        shop.route(
            "ids",
            "/ids/*",
            vec![up.target(json!({}))],
            json!({}),
            json!({"methods": ["GET"]}),
        );

        // SIGHUP with no access log changes nothing (its default action would end the
        // process).
        let hup = Command::new("kill")
            .arg("-HUP")
            .arg(sg.pid().to_string())
            .status()
            .expect("run kill -HUP");
        assert!(hup.success(), "[{driver}] kill -HUP: {hup}");

        let max = "m".repeat(128);
        for id in [
            "abc-123_x.y:z+w=/v@u",
            "0",
            max.as_str(),
            "7b6a1c1e-9a3c-4a43-8f2b-1b6f0f6a3e11",
        ] {
            let resp = shop
                .client()
                .get_with_id("/ids/kept", Some(id))
                .expect_status(200);
            let ids: Vec<&str> = resp
                .headers
                .iter()
                .filter(|(n, _)| n == "x-request-id")
                .map(|(_, v)| v.as_str())
                .collect();
            assert_eq!(ids, [id], "[{driver}] a valid id comes back, alone: {resp}");
            let seen = up.last();
            assert_eq!(
                seen.header("x-request-id"),
                Some(id),
                "[{driver}] the upstream sees the client's id"
            );
            assert_eq!(seen.header_count("x-request-id"), 1, "[{driver}]");
        }

        let long = "a".repeat(200);
        let just_over = "a".repeat(129);
        let mut made = BTreeSet::new();
        for bad in [
            Some("has space"),
            Some(long.as_str()),
            Some(just_over.as_str()),
            Some("quote\"d"),
            Some("semi;colon"),
            Some("percent%20"),
            Some(""),
            None,
        ] {
            let resp = shop
                .client()
                .get_with_id("/ids/replaced", bad)
                .expect_status(200);
            let id = resp.header("x-request-id").unwrap_or_default().to_owned();
            assert!(
                generated(&id),
                "[{driver}] {bad:?} is replaced by 32 hex digits, got {id:?}: {resp}"
            );
            assert_eq!(
                up.last().header("x-request-id"),
                Some(id.as_str()),
                "[{driver}] the upstream sees the id the client gets back ({bad:?})"
            );
            assert_eq!(up.last().header_count("x-request-id"), 1, "[{driver}]");
            made.insert(id);
        }
        assert_eq!(made.len(), 8, "[{driver}] every generated id differs");
    }
}

#[test]
fn gateway_error_bodies_carry_the_request_id_of_the_header() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().workers(2).io_driver(driver));
        let dead = DeadPort::reserve();
        let shop = Tenant::create(&sg, "shop");
        let up = CountingServer::start("errors");
        let upstream = shop.upstream("errors", vec![up.target(json!({}))], json!({}));
        let service = shop.service("errors", &upstream, json!({}));
        shop.rule(json!({
            "path": "/limited", "methods": ["GET"], "service_id": service,
            "plugin_chain": [rate_limiter(json!({"per_ip": {"limit": 1, "window": "1m"}}))]
        }));
        shop.route(
            "gone",
            "/broken",
            vec![dead.target(json!({}))],
            json!({}),
            json!({"methods": ["GET"]}),
        );
        shop.client().get("/limited").expect_status(200);
        let stranger = Client::new(sg.proxy_addr())
            .host(&format!("nosuch.localhost:{}", sg.proxy_addr().port()));

        let cases: Vec<(&str, Client, &str, u16)> = vec![
            ("no key", shop.anonymous(), "/limited", 401),
            ("no rule", shop.client(), "/nowhere", 404),
            ("no gateway", stranger, "/limited", 404),
            ("rate limited", shop.client(), "/limited", 429),
            ("closed port", shop.client(), "/broken", 502),
        ];
        for (what, client, path, status) in cases {
            for given in [Some("client-chosen-id"), None] {
                let resp = client.get_with_id(path, given).expect_status(status);
                let header = resp.header("x-request-id").unwrap_or_default().to_owned();
                match given {
                    Some(id) => assert_eq!(header, id, "[{driver}] {what}: {resp}"),
                    None => assert!(generated(&header), "[{driver}] {what}: {resp}"),
                }
                let body = resp.json();
                assert_eq!(
                    body["request_id"].as_str(),
                    Some(header.as_str()),
                    "[{driver}] {what}: the body's request_id is the header's: {resp}"
                );
                assert!(
                    body["error"].as_str().is_some_and(|e| !e.is_empty()),
                    "[{driver}] {what}: {resp}"
                );
            }
        }

        // A head the gateway cannot parse gets an id too.
        let raw = format!(
            "GET /limited HTTP/1.1\r\nHost: shop.localhost:{}\r\nX-Request-Id: for-a-bad-head\r\nConnection: close\r\nno colon here\r\n\r\n",
            sg.proxy_addr().port()
        );
        let resp = Client::new(sg.proxy_addr()).raw_request(raw.as_bytes());
        assert_eq!(resp.status, 400, "[{driver}] {resp}");
        let header = resp.header("x-request-id").unwrap_or_default().to_owned();
        assert!(!header.is_empty(), "[{driver}] a 400 has an id: {resp}");
        assert_eq!(
            resp.json()["request_id"].as_str(),
            Some(header.as_str()),
            "[{driver}] {resp}"
        );
    }
}

/// `GET path` with `X-Request-Id: id` (none when `None`).
trait WithId {
    fn get_with_id(&self, path: &str, id: Option<&str>) -> Resp;
}

impl WithId for Client {
    fn get_with_id(&self, path: &str, id: Option<&str>) -> Resp {
        match id {
            Some(id) => self.request("GET", path, &[("X-Request-Id", id)], b""),
            None => self.get(path),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The access log

/// The fields of every access-log line.
const FIELDS: [&str; 18] = [
    "time",
    "request_id",
    "worker",
    "client",
    "gateway",
    "rule",
    "rule_id",
    "service",
    "target",
    "method",
    "path",
    "status",
    "bytes_in",
    "bytes_out",
    "upstream_time",
    "total_time",
    "key_id",
    "reason",
];

/// The whole lines of the file at `path` (none when it does not exist).
fn log_lines(path: &Path) -> Vec<String> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("read {}: {e}", path.display()),
    };
    // A line still being written has no newline yet.
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    whole
        .split('\n')
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Waits (at most [`SETTLE`]) until the file has at least `n` lines; returns its lines.
fn wait_for_lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let lines = log_lines(path);
        if lines.len() >= n || Instant::now() >= deadline {
            return lines;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// One request and the access-log line it should produce.
#[derive(Debug)]
struct Logged {
    x: Exchange,
    method: &'static str,
    path: &'static str,
    gateway: Value,
    rule: Value,
    rule_id: Value,
    service: Value,
    target: Value,
    key_id: Value,
    /// The gateway answered itself (`reason` is its message).
    gateway_answered: bool,
    /// An upstream attempt was made (`upstream_time` is a number).
    attempted: bool,
}

fn check_line(line: &Value, want: &Logged, workers: u64, context: &str) {
    let fields: BTreeSet<&str> = line
        .as_object()
        .unwrap_or_else(|| panic!("{context}: not a JSON object: {line}"))
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(fields, BTreeSet::from(FIELDS), "{context}: {line}");
    let time = line["time"].as_str().unwrap_or_default();
    let at = time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{context}: time {time:?} is not RFC 3339 ({e}): {line}"));
    let age = time::OffsetDateTime::now_utc() - at;
    assert!(
        age.abs() < time::Duration::minutes(10),
        "{context}: time {time} is not the time of the request: {line}"
    );
    assert_eq!(line["request_id"], json!(want.x.request_id()), "{context}");
    assert!(
        line["worker"].as_u64().is_some_and(|w| w < workers),
        "{context}: worker: {line}"
    );
    assert_eq!(line["client"], json!(want.x.local.to_string()), "{context}");
    for (field, value) in [
        ("gateway", &want.gateway),
        ("rule", &want.rule),
        ("rule_id", &want.rule_id),
        ("service", &want.service),
        ("target", &want.target),
        ("key_id", &want.key_id),
    ] {
        assert_eq!(&line[field], value, "{context}: {field}: {line}");
    }
    assert_eq!(line["method"], json!(want.method), "{context}: {line}");
    assert_eq!(line["path"], json!(want.path), "{context}: {line}");
    assert_eq!(
        line["status"],
        json!(want.x.resp.status),
        "{context}: {line}"
    );
    assert_eq!(
        line["bytes_in"],
        json!(want.x.sent),
        "{context}: bytes_in: {line}"
    );
    assert_eq!(
        line["bytes_out"],
        json!(want.x.received),
        "{context}: bytes_out: {line}"
    );
    assert!(
        line["total_time"].as_f64().is_some_and(|t| t >= 0.0),
        "{context}: total_time: {line}"
    );
    if want.attempted {
        assert!(
            line["upstream_time"].as_f64().is_some_and(|t| t >= 0.0),
            "{context}: upstream_time: {line}"
        );
    } else {
        assert_eq!(line["upstream_time"], Value::Null, "{context}: {line}");
    }
    if want.gateway_answered {
        let reason = line["reason"].as_str().unwrap_or_default();
        assert!(!reason.is_empty(), "{context}: reason: {line}");
        assert_eq!(
            Some(reason),
            want.x.resp.json()["error"].as_str(),
            "{context}: the reason is the error the client got: {line}"
        );
    } else {
        assert_eq!(line["reason"], Value::Null, "{context}: {line}");
    }
}

/// The lines by request id; panics on a line that is not JSON or an id seen twice.
fn by_request_id(lines: &[String], context: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for line in lines {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{context}: a line is not JSON ({e}): {line}"));
        let id = value["request_id"].as_str().unwrap_or_default().to_owned();
        assert!(
            out.insert(id.clone(), value).is_none(),
            "{context}: request id {id:?} logged twice"
        );
    }
    out
}

#[test]
fn access_log_has_one_json_line_per_request_and_reopens_on_sighup() {
    for driver in io_drivers() {
        let dir = tempfile::tempdir().expect("a directory for the access log");
        let log = dir.path().join("access.log");
        let sg = Shardgate::start(
            Options::new()
                .workers(2)
                .io_driver(driver)
                .arg("--access-log")
                .arg(&log),
        );
        let up = CountingServer::start("logged");
        let dead = DeadPort::reserve();
        let port = sg.proxy_addr().port();
        let shop = Tenant::create(&sg, "shop");
        let items = shop.route(
            "backend",
            "/items/*",
            vec![up.target(json!({}))],
            json!({}),
            json!({"methods": ["GET", "POST"]}),
        );
        let broken = shop.route(
            "gone",
            "/broken/*",
            vec![dead.target(json!({}))],
            json!({}),
            json!({"methods": ["GET"]}),
        );
        let up_target = json!(format!("127.0.0.1:{}", up.addr().port()));
        let dead_target = json!(format!("127.0.0.1:{}", dead.port()));
        let key_id = json!(shop.key_id);
        let wrong_key = "sgk_this-is-not-a-key-of-this-gateway-0123456789";

        let proxied = |x: Exchange, method, path| Logged {
            x,
            method,
            path,
            gateway: json!("shop"),
            rule: json!("/items/*"),
            rule_id: json!(items.rule_id),
            service: json!("backend"),
            target: up_target.clone(),
            key_id: key_id.clone(),
            gateway_answered: false,
            attempted: true,
        };
        let refused = |x: Exchange, path, key: Value| Logged {
            x,
            method: "GET",
            path,
            gateway: json!("shop"),
            rule: Value::Null,
            rule_id: Value::Null,
            service: Value::Null,
            target: Value::Null,
            key_id: key,
            gateway_answered: true,
            attempted: false,
        };
        let mut sent = vec![
            // The key in each place a client may put it.
            proxied(
                once(
                    &shop.client(),
                    "GET",
                    "/items/1?token=secret-query",
                    &[],
                    b"",
                ),
                "GET",
                "/items/1",
            ),
            proxied(
                once(
                    &shop.anonymous().bearer(&shop.key).source_ip(loopback(2)),
                    "GET",
                    "/items/2",
                    &[],
                    b"",
                ),
                "GET",
                "/items/2",
            ),
            proxied(
                once(
                    &shop.anonymous().header("X-TG-API-Key", &shop.key),
                    "POST",
                    "/items/3",
                    &[],
                    b"{\"n\":3}",
                ),
                "POST",
                "/items/3",
            ),
            proxied(
                once(
                    &shop.client().source_ip(loopback(3)),
                    "GET",
                    "/items/4",
                    &[("X-Request-Id", "client-chose-this")],
                    b"",
                ),
                "GET",
                "/items/4",
            ),
            refused(
                once(&shop.anonymous(), "GET", "/items/5", &[], b""),
                "/items/5",
                Value::Null,
            ),
            refused(
                once(
                    &shop.anonymous().header("X-API-Key", wrong_key),
                    "GET",
                    "/items/6",
                    &[],
                    b"",
                ),
                "/items/6",
                Value::Null,
            ),
            refused(
                once(&shop.client(), "GET", "/nowhere", &[], b""),
                "/nowhere",
                key_id.clone(),
            ),
            Logged {
                gateway: Value::Null,
                ..refused(
                    once(
                        &Client::new(sg.proxy_addr()).host(&format!("nosuch.localhost:{port}")),
                        "GET",
                        "/items/7",
                        &[],
                        b"",
                    ),
                    "/items/7",
                    Value::Null,
                )
            },
            Logged {
                rule: json!("/broken/*"),
                rule_id: json!(broken.rule_id),
                service: json!("gone"),
                target: dead_target.clone(),
                attempted: true,
                ..refused(
                    once(&shop.client(), "GET", "/broken/8", &[], b""),
                    "/broken/8",
                    key_id.clone(),
                )
            },
        ];
        let statuses: Vec<u16> = sent.iter().map(|l| l.x.resp.status).collect();
        assert_eq!(
            statuses,
            [200, 200, 200, 200, 401, 401, 404, 404, 502],
            "[{driver}]"
        );
        assert_eq!(sent[3].x.request_id(), "client-chose-this", "[{driver}]");

        let lines = wait_for_lines(&log, sent.len());
        assert_eq!(
            lines.len(),
            sent.len(),
            "[{driver}] one line per request: {lines:#?}"
        );
        let logged = by_request_id(&lines, &format!("[{driver}]"));
        for (i, want) in sent.iter().enumerate() {
            let id = want.x.request_id();
            let line = logged
                .get(&id)
                .unwrap_or_else(|| panic!("[{driver}] request {i} ({id}) is not in the log"));
            check_line(line, want, 2, &format!("[{driver}] request {i}"));
        }
        let text = fs::read_to_string(&log).expect("read the access log");
        for secret in [shop.key.as_str(), wrong_key, "secret-query"] {
            assert!(
                !text.contains(secret),
                "[{driver}] {secret:?} is in the access log:\n{text}"
            );
        }

        // logrotate: rename, SIGHUP, and the gateway writes to a new file at the path.
        let rotated = dir.path().join("access.log.1");
        fs::rename(&log, &rotated).expect("rename the access log");
        let status = Command::new("kill")
            .arg("-HUP")
            .arg(sg.pid().to_string())
            .status()
            .expect("run kill -HUP");
        assert!(status.success(), "[{driver}] kill -HUP: {status}");
        let deadline = Instant::now() + SETTLE;
        while !log.exists() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        assert!(
            log.exists(),
            "[{driver}] SIGHUP reopened the access log at its path"
        );
        let mut after = Vec::new();
        for path in ["/items/10", "/items/11", "/items/12", "/items/13"] {
            after.push(proxied(
                once(&shop.client(), "GET", path, &[], b""),
                "GET",
                path,
            ));
        }
        let new_lines = wait_for_lines(&log, after.len());
        assert_eq!(
            new_lines.len(),
            after.len(),
            "[{driver}] the new file has the new requests: {new_lines:#?}"
        );
        let new_logged = by_request_id(&new_lines, &format!("[{driver}] new file"));
        for (i, want) in after.iter().enumerate() {
            let id = want.x.request_id();
            let line = new_logged.get(&id).unwrap_or_else(|| {
                panic!("[{driver}] request {id} after SIGHUP is not in the new file")
            });
            check_line(line, want, 2, &format!("[{driver}] after SIGHUP {i}"));
        }
        assert_eq!(
            fs::read_to_string(&rotated).expect("read the rotated log"),
            text,
            "[{driver}] the rotated file keeps exactly its old lines"
        );
        sent.append(&mut after);

        let s = settled(&sg, |s| {
            s.total("shardgate_access_log_lines_written_total") >= sent.len() as f64
        });
        let mut m = Mismatches::default();
        for (name, want) in [
            (
                "shardgate_access_log_lines_written_total",
                sent.len() as f64,
            ),
            ("shardgate_access_log_lines_dropped_total", 0.0),
            ("shardgate_access_log_write_errors_total", 0.0),
        ] {
            let got = s.total(name);
            m.check(got == want, || format!("{name} = {got}, want {want}"));
        }
        m.finish(&format!("[{driver}] access-log counters"), &s);
    }
}

/// `threads` keep-alive connections each sending `per_thread` GETs of `path`; returns
/// every status and the mean time from writing a request to reading its response.
fn load(client: &Client, path: &str, threads: usize, per_thread: usize) -> (Vec<u16>, Duration) {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let client = client.clone().source_ip(loopback(2 + t as u8));
            let path = path.to_owned();
            thread::spawn(move || {
                let mut wire = Wire::open(&client);
                let mut statuses = Vec::with_capacity(per_thread);
                let mut spent = Duration::ZERO;
                for _ in 0..per_thread {
                    let began = Instant::now();
                    let x = wire.exchange("GET", &path, &[], b"");
                    spent += began.elapsed();
                    statuses.push(x.resp.status);
                }
                (statuses, spent)
            })
        })
        .collect();
    let mut statuses = Vec::new();
    let mut spent = Duration::ZERO;
    for h in handles {
        let (s, d) = h.join().expect("a load thread panicked");
        statuses.extend(s);
        spent += d;
    }
    let mean = spent / statuses.len().max(1) as u32;
    (statuses, mean)
}

#[test]
fn a_blocked_access_log_drops_lines_and_never_delays_requests() {
    // Lines of ~3.5 KB (the path is logged): 2,500 of them exceed the writer's channel
    // (512 buffers of 16 KiB) plus the pipe (64 KiB), so 4 × 1,000 requests must overflow.
    const THREADS: usize = 4;
    const PER_THREAD: usize = 1_000;
    let path = format!("/items/{}", "p".repeat(3_000));
    for driver in io_drivers() {
        let dir = tempfile::tempdir().expect("a directory for the FIFO");
        let fifo = dir.path().join("access.fifo");
        let made = Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("run mkfifo");
        assert!(made.success(), "mkfifo: {made}");
        // A reader that never reads: the gateway can open the FIFO, and its writes block once
        // the pipe is full.
        let _reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .expect("open the FIFO's read end");

        let up = CountingServer::builder("fifo").body(b"ok").start();
        let mut sg = Shardgate::start(
            Options::new()
                .workers(2)
                .io_driver(driver)
                .arg("--access-log")
                .arg(&fifo),
        );
        let shop = Tenant::create(&sg, "shop");
        shop.route(
            "fifo",
            "/items/*",
            vec![up.target(json!({}))],
            json!({}),
            json!({"methods": ["GET"]}),
        );

        let (statuses, blocked_mean) = load(&shop.client(), &path, THREADS, PER_THREAD);
        let sent = statuses.len();
        let answered = statuses.iter().filter(|s| **s == 200).count();
        assert_eq!(
            answered, sent,
            "[{driver}] every request is answered 200 while the log is blocked"
        );

        let s = settled(&sg, |s| {
            s.total("shardgate_http_requests_total") >= sent as f64
                && s.total("shardgate_access_log_lines_dropped_total") > 0.0
        });
        let dropped = s.total("shardgate_access_log_lines_dropped_total");
        let written = s.total("shardgate_access_log_lines_written_total");
        assert_eq!(
            s.total("shardgate_http_requests_total"),
            sent as f64,
            "[{driver}] every request is counted"
        );
        assert!(
            dropped > 0.0,
            "[{driver}] lines the blocked writer could not take are dropped and counted \
             (written {written})"
        );
        assert!(
            dropped + written <= sent as f64,
            "[{driver}] no line is both written and dropped: dropped {dropped}, written \
             {written}, requests {sent}"
        );
        // Shutting down is not held up by the writer stuck on the FIFO.
        let status = sg.terminate();
        assert!(status.success(), "[{driver}] exit after SIGTERM: {status}");

        // The same load with no access log, for comparison (printed, never asserted).
        let plain = Shardgate::start(Options::new().workers(2).io_driver(driver));
        let shop = Tenant::create(&plain, "shop");
        shop.route(
            "fifo",
            "/items/*",
            vec![up.target(json!({}))],
            json!({}),
            json!({"methods": ["GET"]}),
        );
        let (statuses, plain_mean) = load(&shop.client(), &path, THREADS, PER_THREAD);
        assert!(statuses.iter().all(|s| *s == 200), "[{driver}] no log");
        eprintln!(
            "measurement [{driver}]: {sent} requests over {THREADS} connections, mean latency \
             {blocked_mean:?} with the access log blocked on a FIFO ({dropped} lines dropped, \
             {written} written) vs {plain_mean:?} with no access log"
        );
    }
}
