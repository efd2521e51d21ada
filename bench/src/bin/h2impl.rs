//! HTTP/2 implementation choice on record (issue 12, docs/RUNTIME.md): the same h2c server
//! — every stream answered 200 with a fixed body, one monoio thread on io_uring — written
//! once on hyperium's `h2` over monoio's poll-io sockets (what the gateway uses) and once
//! on monoio-http's fork of `h2` over monoio's completion sockets, loaded by h2load with
//! 10 connections × 100 concurrent streams. What differs is the implementation, so the
//! CPU per request of the server process is the implementation's cost.
//!
//! The server runs in a child process pinned to CPU 0 (`h2impl serve <impl>`), h2load on
//! the other CPUs; implementations alternate (A B A B …) over `--reps` runs after a warm-up,
//! and the table shows the median and the min–max.
//!
//! Usage: `h2impl [--requests N] [--reps R] [--size BYTES]`

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};

use bytes::Bytes;
use shardgate_bench::cpu::process_cpu_of;
use shardgate_bench::summary::h2load_summary;

const IMPLS: [&str; 2] = ["h2", "monoio-http"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => serve(
            args.get(1).map(String::as_str).unwrap_or(""),
            size_arg(&args),
        ),
        _ => drive(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("h2impl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn size_arg(args: &[String]) -> usize {
    flag(args, "--size").unwrap_or(1024)
}

fn flag(args: &[String], name: &str) -> Option<usize> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------------------------------
// The servers

fn serve(which: &str, size: usize) -> Result<(), String> {
    let body = Bytes::from(vec![b'x'; size]);
    let mut runtime = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build()
        .map_err(|e| format!("io_uring runtime: {e}"))?;
    let which = which.to_owned();
    runtime.block_on(async move {
        let listener =
            monoio::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        println!("ready {addr}");
        loop {
            let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let _ = tcp.set_nodelay(true);
            let body = body.clone();
            match which.as_str() {
                "h2" => monoio::spawn(hyperium(tcp, body)),
                "monoio-http" => monoio::spawn(monoio_http(tcp, body)),
                other => return Err(format!("unknown implementation {other:?}")),
            };
        }
    })
}

async fn hyperium(tcp: monoio::net::TcpStream, body: Bytes) {
    use monoio::io::IntoPollIo;
    let Ok(io) = tcp.into_poll_io() else {
        return;
    };
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    while let Some(Ok((_request, mut respond))) = conn.accept().await {
        let body = body.clone();
        monoio::spawn(async move {
            let response = http::Response::builder()
                .status(200)
                .header("content-length", body.len())
                .body(());
            if let Ok(response) = response
                && let Ok(mut send) = respond.send_response(response, false)
            {
                let _ = send.send_data(body, true);
            }
        });
    }
}

async fn monoio_http(tcp: monoio::net::TcpStream, body: Bytes) {
    let Ok(mut conn) = monoio_http::h2::server::handshake(tcp).await else {
        return;
    };
    while let Some(Ok((_request, mut respond))) = conn.accept().await {
        let body = body.clone();
        monoio::spawn(async move {
            let response = http::Response::builder()
                .status(200)
                .header("content-length", body.len())
                .body(());
            if let Ok(response) = response
                && let Ok(mut send) = respond.send_response(response, false)
            {
                let _ = send.send_data(body, true);
            }
        });
    }
}

// ---------------------------------------------------------------------------------------
// The driver

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(which: &str, size: usize) -> Result<Server, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new("taskset")
        .args(["-c", "0"])
        .arg(exe)
        .args(["serve", which, "--size", &size.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start the {which} server: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let addr = line
        .trim()
        .strip_prefix("ready ")
        .ok_or_else(|| format!("{which} server: {line:?}"))?
        .to_owned();
    Ok(Server { child, addr })
}

/// One h2load run against `server`: (CPU µs per request, requests per second).
fn run(server: &Server, requests: usize) -> Result<(f64, f64), String> {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let load = if cpus > 2 {
        format!("1-{}", cpus - 1)
    } else {
        "1".into()
    };
    let cpu_of = |pid| process_cpu_of(pid).map_err(|e| e.to_string());
    let before = cpu_of(server.child.id())?;
    let out = Command::new("taskset")
        .args(["-c", &load])
        .arg("h2load")
        .args([
            "-n",
            &requests.to_string(),
            "-c",
            "10",
            "-m",
            "100",
            "-t",
            "1",
        ])
        .arg(format!("http://{}/", server.addr))
        .output()
        .map_err(|e| format!("h2load (Debian: nghttp2-client): {e}"))?;
    let after = cpu_of(server.child.id())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = h2load_summary(&text)?;
    let errors: u64 = ["connect", "read", "status", "timeout"]
        .iter()
        .map(|k| summary["errors"][k].as_u64().unwrap_or(0))
        .sum();
    if summary["requests"].as_u64() != Some(requests as u64) || errors > 0 {
        return Err(format!("h2load did not succeed:\n{text}"));
    }
    let seconds = summary["duration_us"].as_f64().unwrap_or(f64::NAN) / 1e6;
    let rps = requests as f64 / seconds;
    let cpu = (after - before).as_secs_f64() * 1e6 / requests as f64;
    Ok((cpu, rps))
}

fn drive(args: &[String]) -> Result<(), String> {
    let requests = flag(args, "--requests").unwrap_or(200_000);
    let reps = flag(args, "--reps").unwrap_or(5);
    let size = size_arg(args);
    let servers: Vec<Server> = IMPLS
        .iter()
        .map(|which| start(which, size))
        .collect::<Result<_, _>>()?;
    for server in &servers {
        run(server, requests / 4)?;
    }
    let mut results: Vec<Vec<(f64, f64)>> = vec![Vec::new(); IMPLS.len()];
    for _ in 0..reps {
        for (i, server) in servers.iter().enumerate() {
            results[i].push(run(server, requests)?);
        }
    }
    println!(
        "h2c, {requests} requests of {size} B per run, h2load -c 10 -m 100, {reps} runs each, \
         server on CPU 0 (one monoio io_uring thread)\n"
    );
    println!("| implementation | CPU per request (median, min–max) | req/s (median) |");
    println!("|---|---|---|");
    for (i, which) in IMPLS.iter().enumerate() {
        let mut cpu: Vec<f64> = results[i].iter().map(|r| r.0).collect();
        let mut rps: Vec<f64> = results[i].iter().map(|r| r.1).collect();
        cpu.sort_by(f64::total_cmp);
        rps.sort_by(f64::total_cmp);
        println!(
            "| {which} | {:.2} µs ({:.2}–{:.2}) | {:.0} |",
            cpu[cpu.len() / 2],
            cpu[0],
            cpu[cpu.len() - 1],
            rps[rps.len() / 2]
        );
    }
    Ok(())
}
