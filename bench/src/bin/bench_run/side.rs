//! Side by side: the cost of one feature (issue 13's metrics and access log, issue 14's
//! usage tracking) as the CPU per request of two shardgates that differ only in it,
//! measured *at the same time*.
//!
//! Measured one after the other, two runs of the same configuration on a shared VM differ
//! by ±10 % (neighbours come and go on the host), which hides a 2–3 % cost. Here both
//! gateways run on the proxy CPUs together, each under its own wrk (half the connections
//! each) on the load CPUs, for the same seconds: whatever slows the machine down slows
//! both, and the ratio of their CPU per request keeps only what differs between them. The
//! gateways share the proxy CPUs' caches and time, the same for both; neither is saturated
//! the way a run alone is, so the absolute figures are not comparable with the sequential
//! rounds', only the ratio is the point. The wrk started first alternates by round. The
//! HTTP/2 pair (`h2`, `h2-twin`) runs the same way under two h2loads.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::{Value, json};
use shardgate_bench::cpu::threads_cpu_ns_split;

use crate::load::{H2loadJob, Running, WrkJob};
use crate::report::median;

/// A comparison: `candidate` costs at most `limit` more CPU per request than `baseline`
/// (`None`: an A/A check, two identical gateways, where anything but 0 is the method's
/// own bias).
pub struct Comparison {
    pub what: &'static str,
    pub baseline: &'static str,
    pub candidate: &'static str,
    pub limit: Option<f64>,
}

pub const COMPARISONS: [Comparison; 7] = [
    Comparison {
        what: "metrics + access log",
        baseline: "full-quiet",
        candidate: "full-logged",
        limit: Some(0.03),
    },
    // Issue 13's budget split: the request metrics alone (`full` has them on, no log).
    Comparison {
        what: "request metrics alone",
        baseline: "full-quiet",
        candidate: "full",
        limit: Some(0.03),
    },
    Comparison {
        what: "usage tracking",
        baseline: "full-untracked",
        candidate: "full",
        limit: Some(0.02),
    },
    Comparison {
        what: "nothing (A/A: the method's bias)",
        baseline: "full-quiet",
        candidate: "full-quiet-twin",
        limit: None,
    },
    Comparison {
        what: "nothing, access log on (A/A: the method's bias)",
        baseline: "full-logged",
        candidate: "full-logged-twin",
        limit: None,
    },
    Comparison {
        what: "nothing, epoll driver (A/A: the method's bias)",
        baseline: "full-epoll",
        candidate: "full-epoll-twin",
        limit: None,
    },
    // Over HTTP/2 (TLS, h2load): each side gets half of the `h2` scenario's load.
    Comparison {
        what: "nothing, HTTP/2 (A/A: the method's bias)",
        baseline: "h2",
        candidate: "h2-twin",
        limit: None,
    },
];

/// One gateway: where its load goes, with which headers, and its process.
pub struct Side {
    pub addr: SocketAddr,
    pub headers: Vec<(String, String)>,
    pub pid: u32,
    /// HTTP/2 over TLS (h2load) instead of HTTP/1.1 (wrk).
    pub h2: bool,
}

/// Each side's h2load load: half of the `h2` scenario's 10 connections × 100 streams.
const H2_CONNECTIONS: usize = 5;
const H2_STREAMS: usize = 100;

/// The load both sides get (each its own wrk with these settings).
pub struct Load<'a> {
    pub wrk: &'a Path,
    pub script: &'a Path,
    pub cpus: &'a [usize],
    pub connections: usize,
    pub seconds: u64,
    pub path: &'a str,
}

/// The access-log writer thread's name as `/proc/<pid>/task/<tid>/comm` shows it (15 bytes
/// of `shardgate-access-log`).
const LOG_WRITER: &str = "shardgate-acces";

/// What one side did in one round (`cpu_ns`: the whole process, and its access-log writer
/// thread).
fn measured(wrk: &Value, (cpu_ns, writer_ns): (u64, u64)) -> Value {
    let requests = wrk["requests"].as_u64().unwrap_or(0);
    let duration_s = wrk["duration_us"].as_f64().unwrap_or(0.0) / 1e6;
    let errors: u64 = ["connect", "read", "write", "status", "timeout"]
        .iter()
        .map(|k| wrk["errors"][k].as_u64().unwrap_or(0))
        .sum();
    json!({
        "requests": requests,
        "rps": if duration_s > 0.0 { requests as f64 / duration_s } else { 0.0 },
        "cpu_s": cpu_ns as f64 / 1e9,
        "cpu_us_per_req": if requests > 0 { cpu_ns as f64 / 1e3 / requests as f64 } else { f64::NAN },
        // The writer's share: whether a round's cost moved with the log's own thread.
        "log_writer_us_per_req": if requests > 0 { writer_ns as f64 / 1e3 / requests as f64 } else { f64::NAN },
        "errors": errors,
    })
}

fn cpu_ns(pid: u32) -> Result<(u64, u64), String> {
    threads_cpu_ns_split(pid, LOG_WRITER).map_err(|e| format!("CPU time of {pid}: {e}"))
}

fn since((total, writer): (u64, u64), (total0, writer0): (u64, u64)) -> (u64, u64) {
    (total.saturating_sub(total0), writer.saturating_sub(writer0))
}

/// One round: both sides under load at once. Returns (baseline, candidate).
pub fn round(
    load: &Load<'_>,
    baseline: &Side,
    candidate: &Side,
    baseline_first: bool,
) -> Result<(Value, Value), String> {
    fn spawn(load: &Load<'_>, side: &Side) -> Result<Running, String> {
        if side.h2 {
            return H2loadJob {
                cpus: load.cpus,
                threads: 1,
                connections: H2_CONNECTIONS,
                streams: H2_STREAMS,
                seconds: load.seconds,
                addr: side.addr,
                path: load.path,
                headers: &side.headers,
            }
            .spawn();
        }
        WrkJob {
            wrk: load.wrk,
            script: load.script,
            cpus: load.cpus,
            threads: 1,
            connections: load.connections,
            seconds: load.seconds,
            addr: side.addr,
            path: load.path,
            headers: &side.headers,
        }
        .spawn()
    }
    let (b0, c0) = (cpu_ns(baseline.pid)?, cpu_ns(candidate.pid)?);
    let (first, second) = if baseline_first {
        (spawn(load, baseline)?, spawn(load, candidate)?)
    } else {
        (spawn(load, candidate)?, spawn(load, baseline)?)
    };
    let (first, second) = (first.finish()?, second.finish()?);
    let (b1, c1) = (cpu_ns(baseline.pid)?, cpu_ns(candidate.pid)?);
    let (b_wrk, c_wrk) = if baseline_first {
        (first, second)
    } else {
        (second, first)
    };
    Ok((
        measured(&b_wrk, since(b1, b0)),
        measured(&c_wrk, since(c1, c0)),
    ))
}

/// What `candidate` adds to `baseline`'s CPU per request (0.02: 2 % more).
pub fn added(baseline: &Value, candidate: &Value) -> f64 {
    let cpu = |v: &Value| v["cpu_us_per_req"].as_f64().unwrap_or(f64::NAN);
    cpu(candidate) / cpu(baseline) - 1.0
}

/// The comparison's record: every round and the median added CPU per request. `twin`: the
/// other build the A/A pair's candidate ran (`--twin-bin`), which makes it an A/B.
pub fn summary(c: &Comparison, rounds: Vec<(Value, Value)>, twin: Option<&Path>) -> Value {
    let added: Vec<f64> = rounds.iter().map(|(b, c)| added(b, c)).collect();
    let median_added = median(added.clone());
    let errors: u64 = rounds
        .iter()
        .map(|(b, c)| b["errors"].as_u64().unwrap_or(0) + c["errors"].as_u64().unwrap_or(0))
        .sum();
    let twin = twin.filter(|_| c.limit.is_none());
    json!({
        "what": match twin {
            Some(path) => format!("another build (A/B: `{}`)", path.display()),
            None => c.what.to_string(),
        },
        "twin_bin": twin.map(|path| path.display().to_string()),
        "baseline": c.baseline,
        "candidate": c.candidate,
        "limit": c.limit,
        "rounds": rounds.iter().map(|(b, c)| json!({"baseline": b, "candidate": c})).collect::<Vec<_>>(),
        "added": added,
        "median_added": median_added,
        "errors": errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_reports_the_median_of_the_rounds_ratios() {
        let side = |cpu: f64| json!({"cpu_us_per_req": cpu, "errors": 0});
        let c = &COMPARISONS[0];
        let s = summary(
            c,
            vec![
                (side(10.0), side(10.5)),
                (side(20.0), side(20.2)),
                (side(10.0), side(9.0)),
            ],
            // A twin build makes only the A/A pair an A/B.
            Some(Path::new("/tmp/other")),
        );
        let m = s["median_added"].as_f64().expect("a median");
        assert!((m - 0.01).abs() < 1e-9, "{m}");
        assert_eq!(s["added"].as_array().map(Vec::len), Some(3));
        assert_eq!(s["what"], "metrics + access log");
        assert!(s["twin_bin"].is_null());
    }

    #[test]
    fn the_a_a_pair_is_an_a_b_of_two_builds_with_a_twin_binary() {
        let side = |cpu: f64| json!({"cpu_us_per_req": cpu, "errors": 0});
        let twin = COMPARISONS
            .iter()
            .find(|c| c.limit.is_none())
            .expect("the A/A pair");
        let rounds = || vec![(side(10.0), side(9.9)), (side(10.0), side(9.8))];
        let a_a = summary(twin, rounds(), None);
        assert_eq!(a_a["what"], "nothing (A/A: the method's bias)");
        assert!(a_a["twin_bin"].is_null());
        let a_b = summary(twin, rounds(), Some(Path::new("/tmp/other")));
        assert_eq!(a_b["what"], "another build (A/B: `/tmp/other`)");
        assert_eq!(a_b["twin_bin"], "/tmp/other");
    }
}
