//! Runtime choice on record: the same two workloads on monoio's io_uring driver, monoio's
//! epoll ("legacy") driver and glommio, on 1 and 2 pinned cores. docs/RUNTIME.md quotes
//! its table.
//!
//! Workloads, shard-per-core like shardgate (each core runs every role of its own
//! connections; nothing crosses cores):
//! * **ping-pong** — K connections to an echo server; each client writes 64 bytes and
//!   reads the 64-byte echo, N round trips in all.
//! * **HTTP/1.1 forward** — K keep-alive clients → a tiny proxy (reads a request head,
//!   forwards it on its own upstream connection, reads the `Content-Length` response,
//!   writes it back) → a tiny upstream answering a fixed 64-byte body.
//!
//! Every role is written once, generic over [`Conn`] (read into a buffer at an offset,
//! write a prefix), so the runtimes run the same code and differ only in the I/O
//! underneath: what is measured is the runtime. Each configuration is warmed up, then run
//! `--reps` times, runtimes interleaved (A B C A B C …) so machine drift spreads evenly; the
//! table shows the median and the min–max.
//!
//! Usage: `runtimes [--round-trips N] [--requests N] [--connections K] [--reps R]
//! [--cores 1,2] [--quick]`

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Instant;

use shardgate_bench::cpu::process_cpu;

/// Bytes per ping and per pong.
const MSG: usize = 64;
/// Every buffer: larger than any message here.
const BUF: usize = 4096;
const REQUEST: &[u8] =
    b"GET /bench HTTP/1.1\r\nHost: upstream.bench\r\nUser-Agent: runtimes\r\n\r\n";
const RESPONSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 64\r\n\r\n";
const RESPONSE_BODY: [u8; 64] = [b'x'; 64];

// ---------------------------------------------------------------------------------------
// What each runtime implements

/// The connection I/O every role needs. Buffers are owned and handed back (monoio's
/// io_uring model needs ownership; glommio just borrows them), so the same role code
/// runs on both.
trait Conn {
    /// Reads what is available into `buf[from..]`; 0 at end of stream.
    async fn read_at(&mut self, buf: Vec<u8>, from: usize) -> (io::Result<usize>, Vec<u8>);
    /// Writes all of `buf[..len]`.
    async fn write_prefix(&mut self, buf: Vec<u8>, len: usize) -> (io::Result<()>, Vec<u8>);
}

impl Conn for monoio::net::TcpStream {
    async fn read_at(&mut self, buf: Vec<u8>, from: usize) -> (io::Result<usize>, Vec<u8>) {
        use monoio::buf::{IoBufMut, SliceMut};
        use monoio::io::AsyncReadRent;
        let end = buf.capacity();
        let (result, slice): (_, SliceMut<Vec<u8>>) =
            AsyncReadRent::read(self, buf.slice_mut(from..end)).await;
        (result, slice.into_inner())
    }

    async fn write_prefix(&mut self, buf: Vec<u8>, len: usize) -> (io::Result<()>, Vec<u8>) {
        use monoio::buf::IoBuf;
        use monoio::io::AsyncWriteRentExt;
        let (result, slice) = AsyncWriteRentExt::write_all(self, buf.slice(..len)).await;
        (result.map(|_| ()), slice.into_inner())
    }
}

impl Conn for glommio::net::TcpStream {
    async fn read_at(&mut self, mut buf: Vec<u8>, from: usize) -> (io::Result<usize>, Vec<u8>) {
        use futures_lite::AsyncReadExt;
        let result = AsyncReadExt::read(self, &mut buf[from..]).await;
        (result, buf)
    }

    async fn write_prefix(&mut self, buf: Vec<u8>, len: usize) -> (io::Result<()>, Vec<u8>) {
        use futures_lite::AsyncWriteExt;
        let result = AsyncWriteExt::write_all(self, &buf[..len]).await;
        (result, buf)
    }
}

/// A zeroed buffer of [`BUF`] bytes (len = capacity, so both runtimes may read anywhere).
fn buffer() -> Vec<u8> {
    vec![0; BUF]
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed mid-message")
}

/// Reads until `done(&buf[..filled])` says how long the message is; returns that length
/// and the bytes filled (a pipelined peer could have sent more; ours never do).
async fn read_message<C: Conn>(
    conn: &mut C,
    mut buf: Vec<u8>,
    done: impl Fn(&[u8]) -> Option<usize>,
) -> (io::Result<usize>, Vec<u8>) {
    let mut filled = 0;
    loop {
        if let Some(len) = done(&buf[..filled])
            && len <= filled
        {
            return (Ok(len), buf);
        }
        if filled == buf.len() {
            return (Err(io::Error::other("message larger than the buffer")), buf);
        }
        let (result, back) = conn.read_at(buf, filled).await;
        buf = back;
        match result {
            Ok(0) => return (Err(eof()), buf),
            Ok(n) => filled += n,
            Err(e) => return (Err(e), buf),
        }
    }
}

/// Where a head ends (after `\r\n\r\n`).
fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// The length of a whole response: head + `Content-Length` body.
fn response_len(bytes: &[u8]) -> Option<usize> {
    let end = head_end(bytes)?;
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    let length = head.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    })?;
    Some(end + length)
}

// ---------------------------------------------------------------------------------------
// The roles, the same for every runtime

async fn echo<C: Conn>(mut conn: C) {
    let mut buf = buffer();
    loop {
        let (result, back) =
            read_message(&mut conn, buf, |b| (b.len() >= MSG).then_some(MSG)).await;
        buf = back;
        if result.is_err() {
            return;
        }
        let (result, back) = conn.write_prefix(buf, MSG).await;
        buf = back;
        if result.is_err() {
            return;
        }
    }
}

async fn ping<C: Conn>(mut conn: C, round_trips: u64) -> io::Result<()> {
    let mut out = buffer();
    out[..MSG].fill(b'p');
    let mut buf = buffer();
    for _ in 0..round_trips {
        let (result, back) = conn.write_prefix(out, MSG).await;
        out = back;
        result?;
        let (result, back) =
            read_message(&mut conn, buf, |b| (b.len() >= MSG).then_some(MSG)).await;
        buf = back;
        result?;
    }
    Ok(())
}

async fn upstream<C: Conn>(mut conn: C) {
    let mut response = buffer();
    let len = RESPONSE_HEAD.len() + RESPONSE_BODY.len();
    response[..RESPONSE_HEAD.len()].copy_from_slice(RESPONSE_HEAD);
    response[RESPONSE_HEAD.len()..len].copy_from_slice(&RESPONSE_BODY);
    let mut buf = buffer();
    loop {
        let (result, back) = read_message(&mut conn, buf, head_end).await;
        buf = back;
        if result.is_err() {
            return;
        }
        let (result, back) = conn.write_prefix(response, len).await;
        response = back;
        if result.is_err() {
            return;
        }
    }
}

/// One client connection's proxy: request head to the upstream, response back.
async fn proxy<C: Conn>(mut client: C, mut upstream: C) {
    let mut request = buffer();
    let mut response = buffer();
    loop {
        let (result, back) = read_message(&mut client, request, head_end).await;
        request = back;
        let Ok(len) = result else { return };
        let (result, back) = upstream.write_prefix(request, len).await;
        request = back;
        if result.is_err() {
            return;
        }
        let (result, back) = read_message(&mut upstream, response, response_len).await;
        response = back;
        let Ok(len) = result else { return };
        let (result, back) = client.write_prefix(response, len).await;
        response = back;
        if result.is_err() {
            return;
        }
    }
}

async fn http_client<C: Conn>(mut conn: C, requests: u64) -> io::Result<()> {
    let mut out = buffer();
    out[..REQUEST.len()].copy_from_slice(REQUEST);
    let mut buf = buffer();
    for _ in 0..requests {
        let (result, back) = conn.write_prefix(out, REQUEST.len()).await;
        out = back;
        result?;
        let (result, back) = read_message(&mut conn, buf, response_len).await;
        buf = back;
        let len = result?;
        if !buf[..len].starts_with(b"HTTP/1.1 200 ") {
            return Err(io::Error::other("unexpected response"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// One shard (one pinned thread) per runtime

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    PingPong,
    HttpForward,
}

/// What one shard does: `connections` clients, `per_connection` exchanges each.
#[derive(Debug, Clone, Copy)]
struct ShardWork {
    workload: Workload,
    connections: usize,
    per_connection: u64,
}

const LOOPBACK: &str = "127.0.0.1:0";

/// The starting gate: a shard reports that its connections are up and waits for the go.
/// A shard that fails during set-up reports the error instead (see [`measure`]), so no
/// shard waits for one that will never arrive.
struct Gate {
    ready: mpsc::Sender<io::Result<()>>,
    go: mpsc::Receiver<()>,
}

impl Gate {
    fn pass(&self) -> io::Result<()> {
        self.ready
            .send(Ok(()))
            .map_err(|_| io::Error::other("the run was abandoned"))?;
        self.go
            .recv()
            .map_err(|_| io::Error::other("another shard failed to start"))
    }
}

fn other(e: impl fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

mod on_monoio {
    use super::*;
    use monoio::net::{TcpListener, TcpStream};

    /// Runs one shard on the monoio runtime `build` makes, pinned to `cpu`; returns when
    /// its clients finished.
    pub fn shard<D: monoio::Driver>(
        cpu: usize,
        work: ShardWork,
        gate: &Gate,
        build: fn() -> io::Result<monoio::Runtime<D>>,
    ) -> io::Result<Instant> {
        monoio::utils::bind_to_cpu_set([cpu]).map_err(other)?;
        let mut runtime = build()?;
        runtime.block_on(async move {
            let addr = match work.workload {
                Workload::PingPong => serve(|s| monoio::spawn(echo(s)))?,
                Workload::HttpForward => {
                    let upstream_addr = serve(|s| monoio::spawn(upstream(s)))?;
                    serve(move |client| {
                        monoio::spawn(async move {
                            if let Ok(up) = TcpStream::connect(upstream_addr).await {
                                let _ = up.set_nodelay(true);
                                proxy(client, up).await;
                            }
                        })
                    })?
                }
            };
            let mut clients = Vec::with_capacity(work.connections);
            for _ in 0..work.connections {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                clients.push(stream);
            }
            gate.pass()?;
            let tasks: Vec<_> = clients
                .into_iter()
                .map(|conn| match work.workload {
                    Workload::PingPong => monoio::spawn(ping(conn, work.per_connection)),
                    Workload::HttpForward => monoio::spawn(http_client(conn, work.per_connection)),
                })
                .collect();
            for task in tasks {
                task.await?;
            }
            Ok(Instant::now())
        })
    }

    /// Binds a loopback listener and spawns its accept loop.
    fn serve<T: 'static>(
        handle: impl Fn(TcpStream) -> monoio::task::JoinHandle<T> + 'static,
    ) -> io::Result<SocketAddr> {
        let listener = TcpListener::bind(LOOPBACK)?;
        let addr = listener.local_addr()?;
        monoio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                drop(handle(stream));
            }
        });
        Ok(addr)
    }
}

mod on_glommio {
    use super::*;
    use glommio::net::{TcpListener, TcpStream};
    use glommio::{LocalExecutorBuilder, Placement};

    /// Runs one shard on a glommio executor pinned to `cpu`.
    pub fn shard(cpu: usize, work: ShardWork, gate: Gate) -> io::Result<Instant> {
        LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name("runtimes-glommio")
            .spawn(move || async move { run(work, &gate).await })
            .map_err(other)?
            .join()
            .map_err(other)?
    }

    async fn run(work: ShardWork, gate: &Gate) -> io::Result<Instant> {
        let addr = match work.workload {
            Workload::PingPong => serve(|s| glommio::spawn_local(echo(s)).detach())?,
            Workload::HttpForward => {
                let upstream_addr = serve(|s| glommio::spawn_local(upstream(s)).detach())?;
                serve(move |client| {
                    glommio::spawn_local(async move {
                        if let Ok(up) = TcpStream::connect(upstream_addr).await {
                            let _ = up.set_nodelay(true);
                            proxy(client, up).await;
                        }
                    })
                    .detach()
                })?
            }
        };
        let mut clients = Vec::with_capacity(work.connections);
        for _ in 0..work.connections {
            let stream = TcpStream::connect(addr).await.map_err(other)?;
            stream.set_nodelay(true).map_err(other)?;
            clients.push(stream);
        }
        gate.pass()?;
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|conn| match work.workload {
                Workload::PingPong => glommio::spawn_local(ping(conn, work.per_connection)),
                Workload::HttpForward => {
                    glommio::spawn_local(http_client(conn, work.per_connection))
                }
            })
            .collect();
        for task in tasks {
            task.await?;
        }
        Ok(Instant::now())
    }

    fn serve<T: 'static>(
        handle: impl Fn(TcpStream) -> glommio::task::JoinHandle<T> + 'static,
    ) -> io::Result<SocketAddr> {
        let listener = TcpListener::bind(LOOPBACK).map_err(other)?;
        let addr = listener.local_addr().map_err(other)?;
        glommio::spawn_local(async move {
            while let Ok(stream) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                drop(handle(stream));
            }
        })
        .detach();
        Ok(addr)
    }
}

// ---------------------------------------------------------------------------------------
// Driving runs

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runtime {
    MonoioUring,
    MonoioEpoll,
    Glommio,
}

impl Runtime {
    const ALL: [Runtime; 3] = [Runtime::MonoioUring, Runtime::MonoioEpoll, Runtime::Glommio];

    fn name(self) -> &'static str {
        match self {
            Runtime::MonoioUring => "monoio io_uring",
            Runtime::MonoioEpoll => "monoio epoll (legacy)",
            Runtime::Glommio => "glommio 0.9",
        }
    }
}

/// One measured run.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Exchanges (round trips or requests) per second of wall time.
    rate: f64,
    /// CPU time the whole process spent per exchange, in µs (user + system, all threads,
    /// io_uring workers included). Unlike the rate, other load on the machine barely
    /// moves it: it is what the runtime costs, not what it got.
    cpu_us: f64,
}

/// Runs `total` exchanges over `connections` connections spread over `cpus`.
fn measure(
    runtime: Runtime,
    workload: Workload,
    cpus: &[usize],
    connections: usize,
    total: u64,
) -> io::Result<Sample> {
    let per_shard = (connections / cpus.len()).max(1);
    let per_connection = (total / (per_shard * cpus.len()) as u64).max(1);
    let work = ShardWork {
        workload,
        connections: per_shard,
        per_connection,
    };
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut go = Vec::with_capacity(cpus.len());
    let mut threads = Vec::with_capacity(cpus.len());
    for &cpu in cpus {
        let (go_tx, go_rx) = mpsc::channel();
        go.push(go_tx);
        let gate = Gate {
            ready: ready_tx.clone(),
            go: go_rx,
        };
        let report = ready_tx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("runtimes-{cpu}"))
            .spawn(move || {
                let result = match runtime {
                    Runtime::MonoioUring => on_monoio::shard(cpu, work, &gate, || {
                        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().build()
                    }),
                    Runtime::MonoioEpoll => on_monoio::shard(cpu, work, &gate, || {
                        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().build()
                    }),
                    Runtime::Glommio => on_glommio::shard(cpu, work, gate),
                };
                // A set-up failure must reach `measure`, which may be waiting for this
                // shard to be ready (after the start, nobody reads this any more).
                if let Err(e) = &result {
                    let _ = report.send(Err(io::Error::new(e.kind(), e.to_string())));
                }
                result
            })?;
        threads.push(thread);
    }
    drop(ready_tx);
    let mut setup = Ok(());
    for _ in cpus {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                setup = Err(e);
                break;
            }
            Err(_) => {
                setup = Err(io::Error::other("every shard exited during set-up"));
                break;
            }
        }
    }
    if let Err(e) = setup {
        // Dropping the go senders releases the shards that are waiting.
        drop(go);
        for thread in threads {
            let _ = thread.join();
        }
        return Err(e);
    }
    for go in &go {
        let _ = go.send(());
    }
    let began = Instant::now();
    let cpu_before = process_cpu()?;
    let mut finished = began;
    for thread in threads {
        let done = thread
            .join()
            .map_err(|_| io::Error::other("shard thread panicked"))??;
        finished = finished.max(done);
    }
    let cpu = process_cpu()?.saturating_sub(cpu_before);
    let exchanges = per_connection * (per_shard * cpus.len()) as u64;
    let secs = finished.duration_since(began).as_secs_f64().max(1e-9);
    Ok(Sample {
        rate: exchanges as f64 / secs,
        cpu_us: cpu.as_secs_f64() * 1e6 / exchanges as f64,
    })
}

#[derive(Debug)]
struct Args {
    round_trips: u64,
    requests: u64,
    connections: usize,
    reps: usize,
    cores: Vec<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        round_trips: 200_000,
        requests: 100_000,
        connections: 64,
        reps: 5,
        cores: vec![1, 2],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--round-trips" => args.round_trips = number(&value()?)?,
            "--requests" => args.requests = number(&value()?)?,
            "--connections" => args.connections = number(&value()?)?,
            "--reps" => args.reps = number(&value()?)?,
            "--cores" => {
                args.cores = value()?.split(',').map(number).collect::<Result<_, _>>()?;
            }
            "--quick" => {
                args.round_trips = 50_000;
                args.requests = 20_000;
                args.reps = 1;
            }
            "-h" | "--help" => {
                return Err(
                    "usage: runtimes [--round-trips N] [--requests N] [--connections K] \
                            [--reps R] [--cores 1,2] [--quick]"
                        .into(),
                );
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.connections == 0 || args.reps == 0 || args.cores.contains(&0) {
        return Err("--connections, --reps and --cores must be positive".into());
    }
    Ok(args)
}

fn number<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a positive number"))
}

/// The CPUs this process may run on, from `/proc/self/status`.
fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(list) = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
    else {
        return vec![0];
    };
    let mut cpus = Vec::new();
    for part in list.trim().split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    cpus.extend(a..=b);
                }
            }
            None => cpus.extend(part.parse::<usize>().ok()),
        }
    }
    if cpus.is_empty() { vec![0] } else { cpus }
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {} CPUs allowed, Linux {}",
        allowed_cpus().len(),
        kernel.trim()
    )
}

/// Median, min and max of a non-empty sample.
fn summary(samples: &mut [f64]) -> Option<(f64, f64, f64)> {
    samples.sort_by(f64::total_cmp);
    let median = *samples.get(samples.len() / 2)?;
    Some((median, *samples.first()?, *samples.last()?))
}

/// `median (min–max)` of the rates.
fn rate_cell(samples: &[Sample], error: Option<&String>) -> String {
    if let Some(error) = error {
        return format!("failed: {error}");
    }
    let mut rates: Vec<f64> = samples.iter().map(|s| s.rate).collect();
    match summary(&mut rates) {
        Some((median, min, max)) if rates.len() > 1 => format!(
            "{} ({}–{})",
            thousands(median),
            thousands(min),
            thousands(max)
        ),
        Some((median, _, _)) => thousands(median),
        None => "—".into(),
    }
}

/// Median CPU µs per exchange.
fn cpu_cell(samples: &[Sample], error: Option<&String>) -> String {
    let mut cpu: Vec<f64> = samples.iter().map(|s| s.cpu_us).collect();
    match (error, summary(&mut cpu)) {
        (None, Some((median, _, _))) => format!("{median:.1}"),
        _ => "—".into(),
    }
}

fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// The 1-minute load average: other work on the machine skews the rates.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

struct Row {
    runtime: Runtime,
    cores: usize,
    ping: Vec<Sample>,
    http: Vec<Sample>,
    error: Option<String>,
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let cpus = allowed_cpus();
    let uring = monoio::utils::detect_uring();
    println!("# runtimes: {}", machine());
    println!(
        "# {} connections; ping-pong {} round trips of {MSG} B; HTTP forward {} requests; \
         median of {} runs (min–max); io_uring usable: {uring}; load average at start {}",
        args.connections,
        args.round_trips,
        args.requests,
        args.reps,
        load_average()
    );

    let mut rows: Vec<Row> = Vec::new();
    for &cores in &args.cores {
        if cores > cpus.len() {
            eprintln!("skipping {cores} cores: only {} allowed", cpus.len());
            continue;
        }
        let set = &cpus[..cores];
        let first = rows.len();
        for runtime in Runtime::ALL {
            let error = (!uring && runtime != Runtime::MonoioEpoll)
                .then(|| "io_uring unavailable".to_owned());
            rows.push(Row {
                runtime,
                cores,
                ping: Vec::new(),
                http: Vec::new(),
                error,
            });
        }
        // Warm-up (discarded), then interleaved measured runs.
        for rep in 0..=args.reps {
            let scale = if rep == 0 { 10 } else { 1 };
            for row in rows[first..].iter_mut().filter(|r| r.error.is_none()) {
                let ping = measure(
                    row.runtime,
                    Workload::PingPong,
                    set,
                    args.connections,
                    args.round_trips / scale,
                );
                let http = measure(
                    row.runtime,
                    Workload::HttpForward,
                    set,
                    args.connections,
                    args.requests / scale,
                );
                match (ping, http) {
                    (Ok(ping), Ok(http)) if rep > 0 => {
                        eprintln!(
                            "{} × {cores} core(s), run {rep}: {:.0} round trips/s ({:.1} CPU µs each), \
                             {:.0} requests/s ({:.1} CPU µs each); load {}",
                            row.runtime.name(),
                            ping.rate,
                            ping.cpu_us,
                            http.rate,
                            http.cpu_us,
                            load_average()
                        );
                        row.ping.push(ping);
                        row.http.push(http);
                    }
                    (Ok(_), Ok(_)) => {}
                    (Err(e), _) | (_, Err(e)) => {
                        eprintln!("{} × {cores} core(s): {e}", row.runtime.name());
                        row.error = Some(e.to_string());
                    }
                }
            }
        }
    }

    println!("# load average at end {}", load_average());
    println!();
    println!(
        "| runtime | cores | ping-pong round trips/s | CPU µs per round trip | \
         HTTP forward requests/s | CPU µs per request |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for row in &rows {
        let error = row.error.as_ref();
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            row.runtime.name(),
            row.cores,
            rate_cell(&row.ping, error),
            cpu_cell(&row.ping, error),
            rate_cell(&row.http, error),
            cpu_cell(&row.http, error),
        );
    }
    if rows.iter().any(|r| r.error.is_some()) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_length_is_head_plus_content_length() {
        let mut whole = RESPONSE_HEAD.to_vec();
        whole.extend_from_slice(&RESPONSE_BODY);
        assert_eq!(response_len(&whole), Some(whole.len()));
        assert_eq!(response_len(&whole[..10]), None);
        assert_eq!(head_end(REQUEST), Some(REQUEST.len()));
    }

    #[test]
    fn every_runtime_completes_both_workloads_on_one_core() {
        let cpus = allowed_cpus();
        let runtimes: &[Runtime] = if monoio::utils::detect_uring() {
            &Runtime::ALL
        } else {
            &[Runtime::MonoioEpoll]
        };
        for &runtime in runtimes {
            for workload in [Workload::PingPong, Workload::HttpForward] {
                let rate = measure(runtime, workload, &cpus[..1], 4, 400);
                assert!(
                    rate.as_ref().is_ok_and(|r| r.rate > 0.0),
                    "{} {workload:?}: {rate:?}",
                    runtime.name()
                );
            }
        }
    }
}
