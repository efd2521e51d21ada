//! The HTTPS load generator of `bench/run`'s TLS scenarios: a closed loop of `--connections`
//! clients on `--threads` monoio threads (io_uring when the kernel offers it), each sending
//! `GET --path` and reading the whole response before the next, for `--seconds`.
//!
//! Usage: `tls_load --addr ADDR --ca FILE [--sni NAME] [--path P] [-H 'Name: value']...
//! [--connections N] [--threads N] [--seconds N] [--timeout SECS] [--new-connection-per-request]`
//!
//! Two modes:
//!
//! - keep-alive (the default): each client opens one connection and sends its requests on
//!   it, as wrk does for plain HTTP; the cost measured is the TLS record layer's.
//! - `--new-connection-per-request`: each request opens a new TCP connection, makes a full
//!   TLS 1.3 handshake (nothing to resume with: see `shardgate_bench::tls`), sends the
//!   request, reads the response, sends `close_notify` and closes (so the client, not the
//!   server, holds TIME_WAIT; Linux reuses those ports on loopback). The cost measured is
//!   the handshake's; latency covers connect + handshake + request.
//!
//! Why not wrk or h2load: wrk sends the URL's host as SNI (there is no flag to send
//! `bench.localhost` while connecting to 127.0.0.1), never verifies the certificate, and
//! keeps the OpenSSL session across reconnects (`SSL_clear`), so its "new connections" may
//! resume; h2load is not installed by default and keeps one connection per client for that
//! client's share of the requests, so it has no closed loop of new connections. This one
//! sends the gateway's name as SNI, verifies the chain against the run's CA, counts full,
//! retried (HelloRetryRequest) and resumed handshakes and the tickets servers send, and
//! prints the same summary as bench/run's wrk script (`shardgate_bench::summary`), prefixed
//! `LOADJSON `.
//!
//! Only `Content-Length` responses are read (both proxies send one for the bench upstream's
//! fixed bodies); anything else counts as a read error and closes the connection.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};
use serde_json::json;
use shardgate_bench::cli::num;
use shardgate_bench::summary;
use shardgate_bench::tls::{self, Negotiated, TicketCounter};

/// Most response header fields read.
const MAX_HEADERS: usize = 64;
/// A response head larger than this is a read error.
const MAX_HEAD: usize = 64 * 1024;
/// Pause after a failed connect, so a refusing server is not hammered in a tight loop.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);

#[derive(Debug, Clone)]
struct Args {
    addr: SocketAddr,
    ca: std::path::PathBuf,
    sni: String,
    path: String,
    headers: Vec<(String, String)>,
    connections: usize,
    threads: usize,
    seconds: f64,
    timeout: Duration,
    new_connection_per_request: bool,
}

const USAGE: &str = "usage: tls_load --addr ADDR --ca FILE [--sni NAME] [--path P] [-H 'Name: value']... \
[--connections N] [--threads N] [--seconds N] [--timeout SECS] [--new-connection-per-request]";

fn parse_args() -> Result<Args, String> {
    let mut addr = None;
    let mut ca = None;
    let mut a = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        ca: Default::default(),
        sni: tls::SERVER_NAME.into(),
        path: "/".into(),
        headers: Vec::new(),
        connections: 64,
        threads: 1,
        seconds: 8.0,
        timeout: Duration::from_secs(5),
        new_connection_per_request: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => addr = Some(value()?.parse().map_err(|e| format!("--addr: {e}"))?),
            "--ca" => ca = Some(std::path::PathBuf::from(value()?)),
            "--sni" => a.sni = value()?,
            "--path" => a.path = value()?,
            "-H" | "--header" => {
                let h = value()?;
                let (n, v) = h
                    .split_once(':')
                    .ok_or_else(|| format!("-H {h:?}: expected 'Name: value'"))?;
                a.headers.push((n.trim().to_string(), v.trim().to_string()));
            }
            "--connections" => a.connections = num(&flag, value()?)?,
            "--threads" => a.threads = num(&flag, value()?)?,
            "--seconds" => a.seconds = num(&flag, value()?)?,
            "--timeout" => {
                a.timeout = Duration::try_from_secs_f64(num(&flag, value()?)?)
                    .map_err(|e| format!("--timeout: {e}"))?
            }
            "--new-connection-per-request" => a.new_connection_per_request = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    a.addr = addr.ok_or("--addr is required")?;
    a.ca = ca.ok_or("--ca is required")?;
    if a.connections == 0 || a.threads == 0 || a.seconds.is_nan() || a.seconds <= 0.0 {
        return Err("--connections, --threads and --seconds must be positive".into());
    }
    a.threads = a.threads.min(a.connections);
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tls_load: {e}");
            std::process::exit(2);
        }
    };
    match run(&args) {
        Ok(line) => println!("{}{line}", summary::TLS_LOAD_PREFIX),
        Err(e) => {
            eprintln!("tls_load: {e}");
            std::process::exit(1);
        }
    }
}

/// Why a request failed, by wrk's categories plus `tls` (handshake refused or broken).
#[derive(Debug, Clone, Copy)]
enum Failure {
    Connect,
    Tls,
    Read,
    Write,
    Status,
    Timeout,
}

/// What one thread counted. Latencies in microseconds, as wrk's.
struct Stats {
    latency: Histogram<u64>,
    requests: u64,
    bytes: u64,
    errors: [u64; 6],
    handshakes: u64,
    resumed: u64,
    hello_retries: u64,
    negotiated: Option<Negotiated>,
    first_error: Option<String>,
}

impl Stats {
    fn new() -> Result<Stats, String> {
        Ok(Stats {
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3).map_err(|e| e.to_string())?,
            requests: 0,
            bytes: 0,
            errors: [0; 6],
            handshakes: 0,
            resumed: 0,
            hello_retries: 0,
            negotiated: None,
            first_error: None,
        })
    }

    fn fail(&mut self, f: Failure, detail: impl FnOnce() -> String) {
        self.errors[f as usize] += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{f:?}: {}", detail()));
        }
    }

    fn handshake(&mut self, n: Negotiated) {
        self.handshakes += 1;
        match n.handshake.as_str() {
            "Resumed" => self.resumed += 1,
            "FullWithHelloRetryRequest" => self.hello_retries += 1,
            _ => {}
        }
        if self.negotiated.is_none() {
            self.negotiated = Some(n);
        }
    }

    fn merge(&mut self, o: &Stats) -> Result<(), String> {
        self.latency.add(&o.latency).map_err(|e| e.to_string())?;
        self.requests += o.requests;
        self.bytes += o.bytes;
        for (a, b) in self.errors.iter_mut().zip(o.errors) {
            *a += b;
        }
        self.handshakes += o.handshakes;
        self.resumed += o.resumed;
        self.hello_retries += o.hello_retries;
        if self.negotiated.is_none() {
            self.negotiated.clone_from(&o.negotiated);
        }
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
        Ok(())
    }
}

/// Everything a thread's clients share.
struct Shared {
    args: Args,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    request: Vec<u8>,
    deadline: Instant,
    stats: RefCell<Stats>,
}

fn run(args: &Args) -> Result<String, String> {
    let ca =
        std::fs::read_to_string(&args.ca).map_err(|e| format!("{}: {e}", args.ca.display()))?;
    let name = tls::server_name(&args.sni)?;
    let mut request = format!("GET {} HTTP/1.1\r\n", args.path);
    for (n, v) in &args.headers {
        request.push_str(&format!("{n}: {v}\r\n"));
    }
    request.push_str("\r\n");

    let window =
        Duration::try_from_secs_f64(args.seconds).map_err(|e| format!("--seconds: {e}"))?;
    let start = Instant::now();
    let deadline = start + window;
    let mut handles = Vec::new();
    let mut tickets = Vec::new();
    for t in 0..args.threads {
        let clients =
            args.connections / args.threads + usize::from(t < args.connections % args.threads);
        let counter = Arc::new(TicketCounter::default());
        tickets.push(counter.clone());
        let shared = Shared {
            args: args.clone(),
            config: Arc::new(tls::client_config(&ca, counter)?),
            name: name.clone(),
            request: request.clone().into_bytes(),
            deadline,
            stats: RefCell::new(Stats::new()?),
        };
        handles.push(
            std::thread::Builder::new()
                .name(format!("tls_load-{t}"))
                .spawn(move || thread_main(shared, clients))
                .map_err(|e| format!("spawn a thread: {e}"))?,
        );
    }
    let mut total = Stats::new()?;
    for h in handles {
        let stats = h.join().map_err(|_| "a load thread panicked")??;
        total.merge(&stats)?;
    }
    let tickets: u64 = tickets.iter().map(|t| t.tickets()).sum();
    let e = &total.errors;
    let n = total.negotiated.clone().unwrap_or_default();
    let out = json!({
        "requests": total.requests,
        "duration_us": window.as_micros() as u64,
        "bytes": total.bytes,
        "errors": {
            "connect": e[Failure::Connect as usize],
            "read": e[Failure::Read as usize],
            "write": e[Failure::Write as usize],
            "status": e[Failure::Status as usize],
            "timeout": e[Failure::Timeout as usize],
            "tls": e[Failure::Tls as usize],
        },
        "mean_us": total.latency.mean(),
        "max_us": total.latency.max(),
        "percentiles": summary::percentiles(&total.latency),
        "tls": {
            "mode": if args.new_connection_per_request { "handshake" } else { "keep-alive" },
            "handshakes": total.handshakes,
            "resumed": total.resumed,
            "hello_retries": total.hello_retries,
            "tickets": tickets,
            "version": n.version,
            "cipher_suite": n.cipher_suite,
            "kx_group": n.kx_group,
            "first_error": total.first_error,
        },
    });
    Ok(out.to_string())
}

/// One thread: `clients` closed-loop clients on one monoio runtime until the deadline, then
/// what they counted up to it (requests still in flight are dropped with the runtime, as
/// wrk drops its own).
fn thread_main(shared: Shared, clients: usize) -> Result<Stats, String> {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .map_err(|e| format!("build the runtime: {e}"))?;
    let shared = Rc::new(shared);
    rt.block_on(async move {
        for _ in 0..clients {
            monoio::spawn(client(shared.clone()));
        }
        let now = Instant::now();
        if shared.deadline > now {
            monoio::time::sleep(shared.deadline - now).await;
        }
        let done = std::mem::replace(&mut *shared.stats.borrow_mut(), Stats::new()?);
        Ok::<Stats, String>(done)
    })
}

async fn client(shared: Rc<Shared>) {
    let timeout = shared.args.timeout;
    let per_request = shared.args.new_connection_per_request;
    let mut conn: Option<TlsConn> = None;
    while Instant::now() < shared.deadline {
        // Keep-alive latency starts at the request, as wrk's; a handshake's at the connect.
        let mut start = Instant::now();
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match monoio::time::timeout(timeout, TlsConn::open(&shared)).await {
                Ok(Ok(c)) => {
                    if !per_request {
                        start = Instant::now();
                    }
                    conn.insert(c)
                }
                Ok(Err((f, detail))) => {
                    shared.stats.borrow_mut().fail(f, || detail);
                    if matches!(f, Failure::Connect) {
                        monoio::time::sleep(CONNECT_BACKOFF).await;
                    }
                    continue;
                }
                Err(_) => {
                    let detail = || "connect + handshake".to_string();
                    shared.stats.borrow_mut().fail(Failure::Timeout, detail);
                    continue;
                }
            },
        };
        let outcome = monoio::time::timeout(timeout, c.exchange(&shared.request)).await;
        let finished = Instant::now();
        if finished > shared.deadline {
            // Completed after the measured window, which the summary's duration ends at.
            break;
        }
        let keep = match outcome {
            Ok(Ok(reply)) => {
                let mut stats = shared.stats.borrow_mut();
                stats.requests += 1;
                stats.bytes += reply.bytes as u64;
                let _ = stats
                    .latency
                    .record((finished - start).as_micros().max(1) as u64);
                if !(200..300).contains(&reply.status) {
                    stats.fail(Failure::Status, || format!("status {}", reply.status));
                }
                !reply.close && !per_request
            }
            Ok(Err((f, detail))) => {
                shared.stats.borrow_mut().fail(f, || detail);
                false
            }
            Err(_) => {
                let detail = || "request".to_string();
                shared.stats.borrow_mut().fail(Failure::Timeout, detail);
                false
            }
        };
        if !keep && let Some(c) = conn.take() {
            c.close().await;
        }
    }
}

/// A response read off the connection.
struct Reply {
    status: u16,
    bytes: usize,
    close: bool,
}

/// A rustls client connection over a monoio TCP stream, driven by hand (monoio-rustls's
/// stream hides the session, whose handshake kind the report needs).
struct TlsConn {
    tcp: TcpStream,
    tls: ClientConnection,
    /// TLS bytes read off the socket (reused buffer).
    inbound: Vec<u8>,
    /// TLS bytes to write (reused buffer).
    outbound: Vec<u8>,
    /// Decrypted bytes not yet consumed.
    plain: Vec<u8>,
}

type Failed = (Failure, String);

impl TlsConn {
    /// Connects and completes the handshake.
    async fn open(shared: &Shared) -> Result<TlsConn, Failed> {
        let tcp = TcpStream::connect(shared.args.addr)
            .await
            .map_err(|e| (Failure::Connect, e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let tls = ClientConnection::new(shared.config.clone(), shared.name.clone())
            .map_err(|e| (Failure::Tls, e.to_string()))?;
        let mut c = TlsConn {
            tcp,
            tls,
            inbound: Vec::with_capacity(64 * 1024),
            outbound: Vec::with_capacity(16 * 1024),
            plain: Vec::with_capacity(32 * 1024),
        };
        while c.tls.is_handshaking() {
            if c.tls.wants_write() {
                c.send().await.map_err(|e| (Failure::Tls, e))?;
            } else {
                c.receive().await.map_err(|(_, e)| (Failure::Tls, e))?;
            }
        }
        // The client's Finished goes out with the first request.
        shared.stats.borrow_mut().handshake(Negotiated::of(&c.tls));
        Ok(c)
    }

    /// Writes what rustls has queued.
    async fn send(&mut self) -> Result<(), String> {
        while self.tls.wants_write() {
            self.outbound.clear();
            self.tls
                .write_tls(&mut self.outbound)
                .map_err(|e| e.to_string())?;
            let buf = std::mem::take(&mut self.outbound);
            let (res, buf) = self.tcp.write_all(buf).await;
            self.outbound = buf;
            res.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Reads once from the socket and decrypts what arrived into `plain`.
    async fn receive(&mut self) -> Result<(), Failed> {
        let mut buf = std::mem::take(&mut self.inbound);
        buf.clear();
        let (res, buf) = self.tcp.read(buf).await;
        self.inbound = buf;
        let n = res.map_err(|e| (Failure::Read, e.to_string()))?;
        if n == 0 {
            return Err((Failure::Read, "connection closed".into()));
        }
        let mut rest = &self.inbound[..n];
        while !rest.is_empty() {
            let taken = self
                .tls
                .read_tls(&mut rest)
                .map_err(|e| (Failure::Read, e.to_string()))?;
            let state = self
                .tls
                .process_new_packets()
                .map_err(|e| (Failure::Tls, e.to_string()))?;
            // Drain as we go: rustls holds a bounded amount of plaintext.
            let have = state.plaintext_bytes_to_read();
            if have > 0 {
                let old = self.plain.len();
                self.plain.resize(old + have, 0);
                self.tls
                    .reader()
                    .read_exact(&mut self.plain[old..])
                    .map_err(|e| (Failure::Read, e.to_string()))?;
            }
            if taken == 0 {
                // After close_notify rustls takes nothing more; the next read sees the end.
                break;
            }
        }
        Ok(())
    }

    /// Sends one request and reads its whole response.
    async fn exchange(&mut self, request: &[u8]) -> Result<Reply, Failed> {
        self.tls
            .writer()
            .write_all(request)
            .map_err(|e| (Failure::Write, e.to_string()))?;
        self.send().await.map_err(|e| (Failure::Write, e))?;
        loop {
            if let Some(reply) = parse_head(&self.plain).map_err(|e| (Failure::Read, e))? {
                let total = reply.bytes;
                while self.plain.len() < total {
                    self.receive().await?;
                }
                self.plain.drain(..total);
                return Ok(reply);
            }
            if self.plain.len() > MAX_HEAD {
                return Err((Failure::Read, "response head too large".into()));
            }
            self.receive().await?;
        }
    }

    /// Sends `close_notify` and closes.
    async fn close(mut self) {
        self.tls.send_close_notify();
        let _ = self.send().await;
    }
}

/// Parses a response head at the start of `buf`: `None` while incomplete; the reply's
/// `bytes` is head + body.
fn parse_head(buf: &[u8]) -> Result<Option<Reply>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad response head: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    let mut length = None;
    let mut close = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = h.value.eq_ignore_ascii_case(b"close");
        }
    }
    let length = length.ok_or("response without a valid Content-Length")?;
    Ok(Some(Reply {
        status,
        bytes: head + length,
        close,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_head_is_read_once_complete_with_its_total_length() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        assert!(matches!(parse_head(&head[..10]), Ok(None)));
        let mut full = head.to_vec();
        full.extend_from_slice(b"hello");
        let reply = parse_head(&full).expect("parse").expect("complete");
        assert_eq!(
            (reply.status, reply.bytes, reply.close),
            (200, full.len(), false)
        );
    }

    #[test]
    fn connection_close_is_noticed_and_a_missing_length_refused() {
        let close = b"HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        let reply = parse_head(close).expect("parse").expect("complete");
        assert_eq!((reply.status, reply.close), (503, true));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(parse_head(chunked).is_err());
    }
}
