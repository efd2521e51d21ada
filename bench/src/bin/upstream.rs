//! The fast upstream behind every proxy that `bench/run` measures: a single-threaded monoio
//! HTTP/1.1 server (io_uring when the kernel offers it, else epoll) that answers every
//! request with a fixed body. It must cost far less per request than the proxies in front
//! of it, so it does no routing, no allocation per request and no header building: the
//! responses are built once at start-up.
//!
//! Usage: `upstream [--listen ADDR] [--sizes 1024,16384] [--threads N]`
//!
//! The body size is picked by the last path segment (`GET /bench/16384` → 16 384 bytes) when
//! it names one of `--sizes`, else the first size. Keep-alive, pipelining and request bodies
//! (Content-Length or chunked — the latter is drained, not interpreted beyond framing) are
//! handled; anything unparsable closes the connection. Prints
//! `upstream ready addr=<addr> driver=<io_uring|epoll>` on stdout once it accepts.
//!
//! The caller pins it (`taskset`). It runs `--threads` threads (default 1), each its own
//! runtime with its own SO_REUSEPORT listener on the one port, so a scaling run's upstream
//! keeps up with many proxy workers.

use std::io::Write;
use std::net::SocketAddr;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

/// Most header fields a request may carry before we give up on it.
const MAX_HEADERS: usize = 64;
/// A request head larger than this closes the connection.
const MAX_HEAD: usize = 64 * 1024;

struct Args {
    listen: SocketAddr,
    sizes: Vec<usize>,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        sizes: vec![1024],
        threads: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => {
                args.listen = value()?.parse().map_err(|e| format!("--listen: {e}"))?;
            }
            "--sizes" | "--body-size" => {
                args.sizes = value()?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("{flag}: {e}"))?;
                if args.sizes.is_empty() {
                    return Err(format!("{flag}: no size"));
                }
            }
            "--threads" => {
                args.threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?;
                if args.threads == 0 {
                    return Err("--threads: at least 1".into());
                }
            }
            "-h" | "--help" => {
                println!(
                    "usage: upstream [--listen ADDR] [--sizes BYTES[,BYTES...]] [--threads N]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// A prebuilt response per size, leaked so the write path can hand out `&'static [u8]`
/// (monoio's owned-buffer writes need `'static` buffers) without copying.
struct Responses {
    by_size: Vec<(usize, &'static [u8])>,
}

impl Responses {
    fn new(sizes: &[usize]) -> Responses {
        let by_size = sizes
            .iter()
            .map(|&size| {
                let mut r = Vec::with_capacity(size + 128);
                let _ = write!(
                    r,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
                );
                r.extend((0..size).map(|i| b'a' + (i % 26) as u8));
                (size, &*Box::leak(r.into_boxed_slice()))
            })
            .collect();
        Responses { by_size }
    }

    fn for_path(&self, path: &str) -> &'static [u8] {
        let path = path.split('?').next().unwrap_or(path);
        let last = path.rsplit('/').next().unwrap_or("");
        if let Ok(n) = last.parse::<usize>()
            && let Some(&(_, r)) = self.by_size.iter().find(|(s, _)| *s == n)
        {
            return r;
        }
        self.by_size[0].1
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("upstream: {e}");
            std::process::exit(2);
        }
    };
    let responses: &'static Responses = Box::leak(Box::new(Responses::new(&args.sizes)));
    let driver = if monoio::utils::detect_uring() {
        "io_uring"
    } else {
        "epoll"
    };
    let listeners = match bind_listeners(args.listen, args.threads) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("upstream: bind {}: {e}", args.listen);
            std::process::exit(1);
        }
    };
    let addr = match listeners[0].local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("upstream: {e}");
            std::process::exit(1);
        }
    };
    // The ready line only once every thread has its runtime: a harness that reads it may
    // send load at once.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            let ready = ready_tx.clone();
            std::thread::spawn(move || serve_listener(listener, responses, ready))
        })
        .collect();
    drop(ready_tx);
    for _ in 0..threads.len() {
        // A thread that died without a word counts as a failure too.
        let started = ready_rx
            .recv()
            .unwrap_or_else(|_| Err("a thread ended before starting".to_string()));
        if let Err(e) = started {
            eprintln!("upstream: {e}");
            std::process::exit(1);
        }
    }
    println!(
        "upstream ready addr={addr} driver={driver} threads={}",
        args.threads
    );
    let _ = std::io::stdout().flush();
    for t in threads {
        if let Ok(Err(e)) = t.join() {
            eprintln!("upstream: {e}");
            std::process::exit(1);
        }
    }
}

/// `count` listeners on one port, all with SO_REUSEPORT (the kernel spreads connections
/// over them); with port 0 the first picks the port and the rest join it.
fn bind_listeners(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut listeners: Vec<std::net::TcpListener> = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// One thread's runtime: reports on `ready` whether it could start, then accepts on its
/// own listener and serves each connection.
fn serve_listener(
    listener: std::net::TcpListener,
    responses: &'static Responses,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) -> std::io::Result<()> {
    let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .build()
        .map_err(|e| std::io::Error::other(format!("cannot build the runtime: {e}")));
    let mut rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return Err(e);
        }
    };
    rt.block_on(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => {
                let _ = ready.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = ready.send(Err(e.to_string()));
                return Err(e);
            }
        };
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    eprintln!("upstream: accept: {e}");
                    monoio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            monoio::spawn(serve(stream, responses));
        }
    })
}

/// How much of a request body is still to be skipped.
enum Body {
    None,
    Length(u64),
    /// Chunked: drained by scanning for the terminating `0\r\n\r\n` (good enough for a
    /// benchmark upstream; trailers are not supported).
    Chunked,
}

async fn serve(mut stream: TcpStream, responses: &'static Responses) {
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut body = Body::None;
    loop {
        // Answer every complete request already buffered (pipelining), then write once.
        let mut out: Option<&'static [u8]> = None;
        let mut batch: Vec<u8> = Vec::new();
        let mut consumed = 0;
        loop {
            match body {
                Body::Length(0) => body = Body::None,
                Body::Length(n) => {
                    let take = (n as usize).min(buf.len() - consumed);
                    consumed += take;
                    body = Body::Length(n - take as u64);
                    if take == 0 {
                        break;
                    }
                    continue;
                }
                Body::Chunked => {
                    match memchr::memmem::find(&buf[consumed..], b"0\r\n\r\n") {
                        Some(i) => {
                            consumed += i + 5;
                            body = Body::None;
                        }
                        None => {
                            // Keep the last 4 bytes: the terminator may straddle reads.
                            consumed = buf.len().saturating_sub(4).max(consumed);
                            break;
                        }
                    }
                    continue;
                }
                Body::None => {}
            }
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf[consumed..]) {
                Ok(httparse::Status::Complete(n)) => {
                    let response = responses.for_path(req.path.unwrap_or("/"));
                    for h in req.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            let Some(len) = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<u64>().ok())
                            else {
                                return;
                            };
                            body = Body::Length(len);
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            body = Body::Chunked;
                        }
                    }
                    consumed += n;
                    match out {
                        None if batch.is_empty() => out = Some(response),
                        _ => {
                            if let Some(first) = out.take() {
                                batch.extend_from_slice(first);
                            }
                            batch.extend_from_slice(response);
                        }
                    }
                }
                Ok(httparse::Status::Partial) => {
                    if buf.len() - consumed > MAX_HEAD {
                        return;
                    }
                    break;
                }
                Err(_) => return,
            }
        }
        if consumed > 0 {
            buf.drain(..consumed);
        }
        if let Some(r) = out {
            let (res, _) = stream.write_all(r).await;
            if res.is_err() {
                return;
            }
        } else if !batch.is_empty() {
            let (res, _) = stream.write_all(batch).await;
            if res.is_err() {
                return;
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        // Read into the spare capacity after what is buffered (a plain `Vec` read would
        // overwrite from offset 0).
        let (len, cap) = (buf.len(), buf.capacity());
        let (res, slice) = stream.read(buf.slice_mut(len..cap)).await;
        buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
