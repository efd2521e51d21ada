//! Relaying a large response body: copying through user space (what the proxy does: read
//! into a pooled 64 KiB buffer, write it out) against `splice(2)` through a pipe (no copy
//! into user space), at 16 KiB and 1 MiB responses (issue 11, docs/RUNTIME.md).
//!
//! One monoio io_uring thread runs three roles over 127.0.0.1: a source that answers each
//! one-byte request with `size` bytes, a relay (the part that differs), and a sink that
//! sends a request and reads the whole response. Each run measures the process's CPU time
//! (user + system, `/proc/self/stat`) over a fixed number of bytes; the modes are
//! interleaved (copy, splice, copy, …) and the medians reported. Source and sink cost the
//! same in both modes, so the difference between the two is the relay's.
//!
//! `cargo run --release -p shardgate-bench --bin splice [-- --quick]`

use std::io;
use std::time::{Duration, Instant};

use shardgate_bench::cpu::process_cpu;

use monoio::buf::IoBufMut;
use monoio::io::splice::{SpliceDestination, SpliceSource};
use monoio::io::{AsyncReadRent, AsyncReadRentExt, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Copy,
    Splice,
}

const CHUNK: usize = 64 * 1024;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, bytes) = if quick {
        (1, 256 << 20)
    } else {
        (5, 4u64 << 30)
    };
    println!(
        "relay of {} MiB per run, {rounds} rounds, modes interleaved",
        bytes >> 20
    );
    println!("| response | mode | CPU ms per GiB (median) | min–max | GiB/s (median) |");
    println!("|---|---|--:|--:|--:|");
    for size in [16 * 1024usize, 1024 * 1024] {
        let mut samples: Vec<(Mode, f64, f64)> = Vec::new();
        for _ in 0..rounds {
            for mode in [Mode::Copy, Mode::Splice] {
                match measure(mode, size, bytes) {
                    Ok((cpu, wall)) => {
                        let gib = bytes as f64 / (1u64 << 30) as f64;
                        samples.push((
                            mode,
                            cpu.as_secs_f64() * 1000.0 / gib,
                            gib / wall.as_secs_f64(),
                        ));
                    }
                    Err(e) => {
                        eprintln!("{mode:?} at {size} B: {e}");
                        std::process::exit(1);
                    }
                }
            }
        }
        for mode in [Mode::Copy, Mode::Splice] {
            let mut cpu: Vec<f64> = samples
                .iter()
                .filter(|s| s.0 == mode)
                .map(|s| s.1)
                .collect();
            let mut rate: Vec<f64> = samples
                .iter()
                .filter(|s| s.0 == mode)
                .map(|s| s.2)
                .collect();
            cpu.sort_by(f64::total_cmp);
            rate.sort_by(f64::total_cmp);
            let label = if size >= 1 << 20 {
                "1 MiB".to_string()
            } else {
                format!("{} KiB", size >> 10)
            };
            println!(
                "| {label} | {} | {:.0} | {:.0}–{:.0} | {:.2} |",
                match mode {
                    Mode::Copy => "copy (read + write, 64 KiB buffer)",
                    Mode::Splice => "splice through a pipe",
                },
                cpu[cpu.len() / 2],
                cpu[0],
                cpu[cpu.len() - 1],
                rate[rate.len() / 2]
            );
        }
    }
}

/// CPU and wall time to relay `bytes` in responses of `size`.
fn measure(mode: Mode, size: usize, bytes: u64) -> io::Result<(Duration, Duration)> {
    let mut runtime = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build()?;
    runtime.block_on(async move {
        let source = TcpListener::bind("127.0.0.1:0")?;
        let source_addr = source.local_addr()?;
        let relay = TcpListener::bind("127.0.0.1:0")?;
        let relay_addr = relay.local_addr()?;
        let exchanges = bytes / size as u64;

        monoio::spawn(async move {
            let Ok((mut up, _)) = source.accept().await else {
                return;
            };
            let _ = up.set_nodelay(true);
            let mut body = vec![b'x'; size];
            let mut req = vec![0u8; 1];
            loop {
                let (res, r) = up.read_exact(req).await;
                req = r;
                if res.is_err() {
                    return;
                }
                let (res, b) = up.write_all(body).await;
                body = b;
                if res.is_err() {
                    return;
                }
            }
        });
        let sink = monoio::spawn(async move {
            let mut down = TcpStream::connect(relay_addr).await?;
            let _ = down.set_nodelay(true);
            let mut buf = vec![0u8; CHUNK];
            let started = Instant::now();
            let cpu_before = process_cpu()?;
            for _ in 0..exchanges {
                let (res, _) = down.write_all(vec![1u8]).await;
                res?;
                let mut left = size;
                while left > 0 {
                    let want = left.min(CHUNK);
                    buf.clear();
                    let (res, b) = down.read(buf.slice_mut(0..want)).await;
                    buf = b.into_inner();
                    match res? {
                        0 => return Err(io::Error::other("relay closed")),
                        n => left -= n,
                    }
                }
            }
            Ok::<_, io::Error>((process_cpu()? - cpu_before, started.elapsed()))
        });

        let (mut client, _) = relay.accept().await?;
        let _ = client.set_nodelay(true);
        let mut up = TcpStream::connect(source_addr).await?;
        let _ = up.set_nodelay(true);
        let (mut pipe_r, mut pipe_w) = monoio::net::unix::new_pipe()?;
        let mut buf = Vec::with_capacity(CHUNK);
        let mut req = vec![0u8; 1];
        for _ in 0..exchanges {
            let (res, r) = client.read_exact(req).await;
            req = r;
            res?;
            let (res, r) = up.write_all(req).await;
            req = r;
            res?;
            let mut left = size;
            while left > 0 {
                let want = left.min(CHUNK);
                match mode {
                    Mode::Copy => {
                        buf.clear();
                        let (res, b) = up.read(buf.slice_mut(0..want)).await;
                        buf = b.into_inner();
                        let n = res?;
                        if n == 0 {
                            return Err(io::Error::other("source closed"));
                        }
                        let (res, b) = client.write_all(buf).await;
                        buf = b;
                        res?;
                        left -= n;
                    }
                    Mode::Splice => {
                        let n = up.splice_to_pipe(&mut pipe_w, want as u32).await? as usize;
                        if n == 0 {
                            return Err(io::Error::other("source closed"));
                        }
                        let mut in_pipe = n;
                        while in_pipe > 0 {
                            let m = client.splice_from_pipe(&mut pipe_r, in_pipe as u32).await?;
                            in_pipe -= m as usize;
                        }
                        left -= n;
                    }
                }
            }
        }
        sink.await
    })
}
