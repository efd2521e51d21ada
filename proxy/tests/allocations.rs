//! A proxied keep-alive request in steady state allocates nothing on the worker (issue 11):
//! the gateway runs inside this test process (`run_embedded`, one worker, the real
//! listeners and admin API, a real data directory) under a counting global allocator that
//! counts only on the worker threads (`shardgate-w*`), and a plain `std` client and
//! upstream exchange keep-alive requests with it over 127.0.0.1. After a warm-up (pools
//! filled, buffers at size) the count over the next requests must be zero — under each io
//! driver, for a public route and for one behind key auth and the rate limiter.
//!
//! Why `unsafe`: a global allocator is an `unsafe impl GlobalAlloc`; this one only forwards
//! to `System` and bumps a counter, in this test binary alone.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use shardgate_proxy::shell::process::{Ready, run_embedded};

struct Counting;

static WORKER_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// 0: not yet known; 1: a worker thread (counted); 2: another thread; 3: being decided
    /// (an allocation made while reading the thread's name is not counted).
    static ROLE: Cell<u8> = const { Cell::new(0) };
}

fn on_worker_thread() -> bool {
    ROLE.try_with(|role| match role.get() {
        1 => true,
        2 | 3 => false,
        _ => {
            role.set(3);
            let worker = std::thread::current()
                .name()
                .is_some_and(|name| name.starts_with("shardgate-w"));
            role.set(if worker { 1 } else { 2 });
            worker
        }
    })
    .unwrap_or(false)
}

/// The size of the latest counted allocation, for the failure message.
static LAST_SIZE: AtomicU64 = AtomicU64::new(0);

fn count(size: usize) {
    if on_worker_thread() {
        WORKER_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LAST_SIZE.store(size as u64, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const BODY: usize = 1024;
/// The body of `/…/big` requests: more than one head buffer's worth comes with the head.
const BIG_BODY: usize = 16 * 1024;
const WARM_UP: usize = 2_000;
const MEASURED: usize = 2_000;

/// A keep-alive upstream answering every request with a fixed 1 KiB body (16 KiB for a
/// path ending in `big`); one thread per connection, reading into a fixed buffer.
fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the upstream");
    let addr = listener.local_addr().expect("upstream address");
    let response = |len: usize| {
        let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").into_bytes();
        r.resize(r.len() + len, b'x');
        r
    };
    let (small, big) = (response(BODY), response(BIG_BODY));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (small, big) = (small.clone(), big.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                let mut have = 0;
                loop {
                    match read_some(&mut stream, &mut buf[have..]) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have += n,
                    }
                    while let Some(end) = find(&buf[..have], b"\r\n\r\n") {
                        let line_end = find(&buf[..end], b" HTTP/").unwrap_or(0);
                        let response = if buf[..line_end].ends_with(b"big") {
                            &big
                        } else {
                            &small
                        };
                        if stream.write_all(response).is_err() {
                            return;
                        }
                        buf.copy_within(end + 4..have, 0);
                        have -= end + 4;
                    }
                    if have == buf.len() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// `read`, retried when a signal interrupts it (the embedded gateway's signal thread).
fn read_some(stream: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One request over a fresh connection (the admin API closes nothing we keep).
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn post(admin: SocketAddr, path: &str, body: serde_json::Value) -> serde_json::Value {
    let (status, text) = http(admin, "POST", path, &body.to_string());
    assert!(
        status == 201 || status == 200,
        "POST {path} {body}: {status} {text}"
    );
    serde_json::from_str(&text).expect("a JSON answer")
}

fn id(v: &serde_json::Value) -> String {
    v["id"].as_str().expect("an id").to_owned()
}

/// A gateway with a public route `/open/*` and a keyed, rate-limited `/keyed/*`; returns
/// the key.
fn configure(admin: SocketAddr, upstream: SocketAddr) -> String {
    let limiter = serde_json::json!({
        "name": "rate_limiter",
        "stage": "pre_request",
        "priority": 1,
        "settings": {"limits": {
            "global": {"limit": 1_000_000_000u64, "window": "1m"},
            "per_ip": {"limit": 1_000_000_000u64, "window": "1m"},
            "per_user": {"limit": 1_000_000_000u64, "window": "1m"},
        }}
    });
    let gw = id(&post(
        admin,
        "/api/v1/gateways",
        serde_json::json!({"name": "alloc", "subdomain": "alloc"}),
    ));
    let base = format!("/api/v1/gateways/{gw}");
    let up = id(&post(
        admin,
        &format!("{base}/upstreams"),
        serde_json::json!({"name": "origin", "targets": [{"host": "127.0.0.1", "port": upstream.port()}]}),
    ));
    let svc = id(&post(
        admin,
        &format!("{base}/services"),
        serde_json::json!({"name": "svc", "upstream_id": up}),
    ));
    post(
        admin,
        &format!("{base}/rules"),
        serde_json::json!({"path": "/open/*", "service_id": svc, "public": true}),
    );
    post(
        admin,
        &format!("{base}/rules"),
        serde_json::json!({"path": "/keyed/*", "service_id": svc, "plugin_chain": [limiter]}),
    );
    let key = post(
        admin,
        &format!("{base}/keys"),
        serde_json::json!({"name": "k"}),
    );
    key["key"].as_str().expect("a key").to_owned()
}

/// Sends `n` requests over `stream` one after another, reading each whole response into a
/// fixed buffer; panics on anything but a 200 with the 1 KiB body.
fn exchange(stream: &mut TcpStream, request: &[u8], body: usize, n: usize) {
    let mut buf = vec![0u8; 64 * 1024];
    for i in 0..n {
        stream.write_all(request).expect("send a request");
        let mut have = 0;
        let end = loop {
            let got = read_some(stream, &mut buf[have..]).expect("read a response");
            assert!(got > 0, "the proxy closed the connection at request {i}");
            have += got;
            if let Some(end) = find(&buf[..have], b"\r\n\r\n") {
                break end + 4;
            }
        };
        assert!(
            buf.starts_with(b"HTTP/1.1 200"),
            "request {i}: {}",
            String::from_utf8_lossy(&buf[..end])
        );
        while have < end + body {
            let got = read_some(stream, &mut buf[have..]).expect("read the body");
            assert!(got > 0, "the proxy closed mid-body at request {i}");
            have += got;
        }
        assert_eq!(have, end + body, "request {i}: one response, nothing more");
    }
}

fn start_gateway(driver: &str, data_dir: &std::path::Path) -> Ready {
    let (tx, rx) = mpsc::channel();
    let data_dir = data_dir.to_str().expect("a UTF-8 temp path").to_owned();
    let driver = driver.to_owned();
    std::thread::spawn(move || {
        let args = [
            "shardgate",
            "--data-dir",
            &data_dir,
            "--admin-listen",
            "127.0.0.1:0",
            "--proxy-listen",
            "127.0.0.1:0",
            "--tls-listen",
            "off",
            "--workers",
            "1",
            "--io-driver",
            &driver,
            "--log",
            "warn",
        ];
        let code = run_embedded(&args, |ready| {
            let _ = tx.send(ready);
        });
        panic!("the embedded gateway exited with {code}");
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the embedded gateway did not become ready")
}

/// Requests in steady state and the worker's allocations while they ran.
fn measure(proxy: SocketAddr, request: &[u8], body: usize) -> u64 {
    let mut stream = TcpStream::connect(proxy).expect("connect to the proxy");
    stream.set_nodelay(true).expect("nodelay");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    exchange(&mut stream, request, body, WARM_UP);
    let before = WORKER_ALLOCATIONS.load(Ordering::Relaxed);
    exchange(&mut stream, request, body, MEASURED);
    WORKER_ALLOCATIONS.load(Ordering::Relaxed) - before
}

/// One test for both drivers: the gateway's process-wide parts (logging, the signal
/// thread) start once per process.
#[test]
fn a_steady_state_keep_alive_request_allocates_nothing() {
    let upstream = start_upstream();
    // The epoll driver always works; io_uring where the kernel lets us have a ring.
    let drivers: &[&str] = if io_uring_available() {
        &["uring", "epoll"]
    } else {
        eprintln!("io_uring unavailable here: measuring the epoll driver only");
        &["epoll"]
    };
    let mut report = Vec::new();
    // Kept to the end: the gateways keep running (on their own threads) until the process exits.
    let mut dirs = Vec::new();
    for driver in drivers {
        let dir = tempfile::tempdir().expect("a data directory");
        let ready = start_gateway(driver, dir.path());
        let key = configure(ready.admin, upstream);
        // The configuration reaches the worker asynchronously; wait until it serves.
        let open = b"GET /open/item?x=1 HTTP/1.1\r\nHost: alloc.localhost\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n";
        wait_until_served(ready.proxy, open);
        let keyed = |path: &str| {
            format!(
                "GET /keyed/{path} HTTP/1.1\r\nHost: alloc.localhost\r\nX-API-Key: {key}\r\n\
                 X-Forwarded-For: 203.0.113.9\r\nAccept: */*\r\n\r\n"
            )
        };
        let (keyed_small, keyed_big) = (keyed("item"), keyed("big"));
        for (route, request, body) in [
            ("public", &open[..], BODY),
            ("key + rate limiter", keyed_small.as_bytes(), BODY),
            // The rate limiter's response headers and a 16 KiB body: more than the head
            // buffer holds comes with the head.
            ("key + rate limiter, 16 KiB", keyed_big.as_bytes(), BIG_BODY),
        ] {
            let allocations = measure(ready.proxy, request, body);
            report.push(format!(
                "{driver}, {route}: {allocations} allocations in {MEASURED} requests"
            ));
            assert_eq!(
                allocations,
                0,
                "a proxied keep-alive request allocates on the worker ({driver}, {route}): \
                 {allocations} allocations in {MEASURED} requests (the last of {} bytes); so far: \
                 {report:?}",
                LAST_SIZE.load(Ordering::Relaxed)
            );
        }
        dirs.push(dir);
    }
    eprintln!("{report:#?}");
}

fn wait_until_served(proxy: SocketAddr, request: &[u8]) {
    for _ in 0..200 {
        if let Ok(mut stream) = TcpStream::connect(proxy) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = stream.write_all(request);
            let mut buf = [0u8; 12];
            if stream.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("the route never served a 200");
}

fn io_uring_available() -> bool {
    io_uring::IoUring::new(8).is_ok()
}
