//! Admin write-to-live latency: how long `POST /api/v1/gateways/{id}/keys` takes to return
//! (journal append + fsync, apply, incremental snapshot compile, broadcast, and every
//! worker acknowledging) with 100 000 keys already in the gateway.
//!
//! Usage: `admin_write [--binary PATH] [--keys N] [--writes N] [--workers N]`
//!
//! The data directory is pre-populated through the real `Store` (a checkpoint of a state
//! with N keys), then the real `shardgate` binary is started on it and timed over one
//! keep-alive connection. As the baseline in the same run it times, in-process, the naive
//! full snapshot rebuild the incremental compile avoids.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use shardgate_admin::store::{Store, StoreOptions};
use shardgate_bench::client::Client;
use shardgate_bench::fixture;
use shardgate_bench::ready::{addr_after, first_line};
use shardgate_core::keys::{KeyEntry, KeyTable};
use shardgate_core::snapshot::{LiteralOnly, Snapshot};
use shardgate_core::state::State;

struct Args {
    binary: PathBuf,
    keys: usize,
    writes: usize,
    workers: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        binary: default_binary(),
        keys: 100_000,
        writes: 1_000,
        workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--binary" => args.binary = PathBuf::from(value()?),
            "--keys" => args.keys = value()?.parse().map_err(|e| format!("--keys: {e}"))?,
            "--writes" => args.writes = value()?.parse().map_err(|e| format!("--writes: {e}"))?,
            "--workers" => {
                args.workers = value()?.parse().map_err(|e| format!("--workers: {e}"))?
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

fn default_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("shardgate")))
        .unwrap_or_else(|| PathBuf::from("target/release/shardgate"))
}

fn main() {
    if let Err(e) = run() {
        eprintln!("admin_write: {e}");
        std::process::exit(1);
    }
}

fn percentiles(h: &Histogram<u64>) -> String {
    format!(
        "p50 {:.2} ms | p90 {:.2} ms | p99 {:.2} ms | p99.9 {:.2} ms | max {:.2} ms",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.9) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    )
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (state, gateway_id, _) = fixture::gateway_with(100, args.keys);

    // Baseline in the same run: the naive full rebuild per write.
    let mut naive = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    for _ in 0..20 {
        let t = Instant::now();
        let s = Snapshot::compile(2, &state, &LiteralOnly);
        // A naive compile also rebuilds the key table instead of sharing it.
        let table = state.gateway(gateway_id).map(|g| {
            KeyTable::from_entries(g.keys.values().map(|k| {
                let entry = KeyEntry::new(k.id, None, k.spec.spec.active);
                (k.spec.hash, entry)
            }))
        });
        naive
            .record(t.elapsed().as_micros() as u64)
            .map_err(|e| e.to_string())?;
        drop((s, table));
    }

    {
        let (mut store, _) =
            Store::<State>::open(dir.path(), StoreOptions::default()).map_err(|e| e.to_string())?;
        store.checkpoint(&state).map_err(|e| e.to_string())?;
    }
    drop(state);

    let mut cmd = Command::new(&args.binary);
    if shardgate_bench::tls::shardgate_has_tls_listener(&args.binary) {
        // The HTTPS listener's default (0.0.0.0:8443) is not ours to take.
        cmd.args(["--tls-listen", "off"]);
    }
    let mut child = cmd
        .args([
            "--admin-listen",
            "127.0.0.1:0",
            "--proxy-listen",
            "127.0.0.1:0",
            "--log",
            "warn",
        ])
        .arg("--workers")
        .arg(args.workers.to_string())
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", args.binary.display()))?;
    let admin = first_line(&mut child, Duration::from_secs(60))
        .and_then(|line| addr_after(&line, "admin="))?;

    let result = (|| -> Result<Histogram<u64>, String> {
        let mut client = Client::connect(admin).map_err(|e| e.to_string())?;
        let path = format!("/api/v1/gateways/{gateway_id}/keys");
        let mut hist = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
        for i in 0..(args.writes + 50) {
            let body = format!(r#"{{"name":"bench-write-{i}"}}"#);
            let t = Instant::now();
            let resp = client
                .request("POST", &path, Some(&body))
                .map_err(|e| e.to_string())?;
            let micros = t.elapsed().as_micros() as u64;
            if resp.status != 201 {
                return Err(format!(
                    "write {i}: status {} {}",
                    resp.status,
                    String::from_utf8_lossy(&resp.body)
                ));
            }
            if i >= 50 {
                hist.record(micros).map_err(|e| e.to_string())?;
            }
        }
        Ok(hist)
    })();
    let _ = child.kill();
    let _ = child.wait();
    let hist = result?;

    println!(
        "admin write-to-live, {} keys present, {} workers, {} writes (fsync on):",
        args.keys, args.workers, args.writes
    );
    println!("  POST /keys end to end : {}", percentiles(&hist));
    println!(
        "  baseline, naive full snapshot rebuild alone (in-process): {}",
        percentiles(&naive)
    );
    println!(
        "  target p99 <= 10 ms: {}",
        if hist.value_at_quantile(0.99) <= Duration::from_millis(10).as_micros() as u64 {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}
