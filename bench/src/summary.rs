//! The summary a load run of `bench/run` ends with: one JSON line on stdout, the same shape
//! whichever load generator made it — wrk (its Lua `done()` hook prints `WRKJSON {...}`) or
//! `tls_load` (`LOADJSON {...}`), or h2load (its text report, read by [`h2load_summary`]), so
//! the driver measures and reports them alike:
//!
//! ```text
//! {"requests": N, "duration_us": N, "bytes": N,
//!  "errors": {"connect": N, "read": N, "write": N, "status": N, "timeout": N[, "tls": N]},
//!  "mean_us": F, "max_us": N, "percentiles": [[quantile %, latency µs], ...][, "tls": {...}]}
//! ```

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// The line prefix of wrk's summary (written by bench/run's Lua script).
pub const WRK_PREFIX: &str = "WRKJSON ";
/// The line prefix of `tls_load`'s summary.
pub const TLS_LOAD_PREFIX: &str = "LOADJSON ";

/// Quantiles (in percent) every summary reports: the percentile curve from 0 % to 99.99 %
/// in steps of a tenth of a decade of `1 / (1 - q)`, plus the named ones and the maximum.
pub fn quantiles() -> Vec<f64> {
    let mut qs: Vec<f64> = (0..=40)
        .map(|k| 100.0 * (1.0 - 10f64.powf(-(k as f64) / 10.0)))
        .collect();
    qs.extend([50.0, 75.0, 90.0, 99.0, 99.9, 99.99, 100.0]);
    qs.sort_by(f64::total_cmp);
    qs.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
    qs
}

/// `[[q, µs], ...]` at [`quantiles`] from a histogram of latencies in microseconds.
pub fn percentiles(hist: &Histogram<u64>) -> Value {
    Value::Array(
        quantiles()
            .into_iter()
            .map(|q| json!([q, hist.value_at_quantile(q / 100.0)]))
            .collect(),
    )
}

/// h2load's text report (it prints no JSON) as the same summary: requests (2xx), duration, mean and
/// max request time; no percentile curve (h2load prints none), errors for the rest.
pub fn h2load_summary(text: &str) -> Result<Value, String> {
    let field = |line: &str, after: &str| -> Option<f64> {
        let rest = &line[line.find(after)? + after.len()..];
        rest.split(|c: char| c == ',' || c.is_whitespace())
            .find(|w| !w.is_empty())?
            .parse()
            .ok()
    };
    let secs = |token: &str| -> Option<f64> {
        let (n, unit) = token.split_at(token.find(|c: char| c.is_ascii_alphabetic())?);
        let n: f64 = n.parse().ok()?;
        Some(match unit {
            "s" => n,
            "ms" => n / 1e3,
            "us" => n / 1e6,
            _ => return None,
        })
    };
    let mut finished = None;
    let (mut succeeded, mut failed, mut errored, mut timeout, mut ok2xx) =
        (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut mean_us, mut max_us) = (f64::NAN, f64::NAN);
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("finished in ") {
            finished = rest.split(',').next().and_then(|t| secs(t.trim()));
        } else if line.starts_with("requests:") {
            succeeded = field(line, "done, ").unwrap_or(0.0);
            failed = field(line, "succeeded, ").unwrap_or(0.0);
            errored = field(line, "failed, ").unwrap_or(0.0);
            timeout = field(line, "errored, ").unwrap_or(0.0);
        } else if line.starts_with("status codes:") {
            ok2xx = field(line, "status codes: ").unwrap_or(0.0);
        } else if let Some(rest) = line.strip_prefix("time for request:") {
            let t: Vec<f64> = rest.split_whitespace().filter_map(secs).collect();
            if t.len() >= 3 {
                max_us = t[1] * 1e6;
                mean_us = t[2] * 1e6;
            }
        }
    }
    let duration = finished.ok_or_else(|| format!("h2load printed no summary:\n{text}"))?;
    Ok(json!({
        "requests": ok2xx as u64,
        "duration_us": (duration * 1e6) as u64,
        "errors": {
            "connect": errored as u64,
            "read": failed as u64,
            "status": (succeeded - ok2xx).max(0.0) as u64,
            "timeout": timeout as u64,
        },
        "mean_us": mean_us,
        "max_us": max_us,
        "percentiles": [],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_run_from_zero_to_the_maximum_with_the_named_ones() {
        let qs = quantiles();
        assert_eq!(qs.first(), Some(&0.0));
        assert_eq!(qs.last(), Some(&100.0));
        for named in [50.0, 90.0, 99.0, 99.9, 99.99] {
            assert!(qs.iter().any(|q| (q - named).abs() < 1e-6), "{named}");
        }
        assert!(qs.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn percentiles_pair_each_quantile_with_its_latency() {
        let mut h = Histogram::<u64>::new(3).expect("histogram");
        for us in 1..=1000 {
            h.record(us).expect("record");
        }
        let p = percentiles(&h);
        let at = |q: f64| {
            p.as_array()
                .and_then(|a| a.iter().find(|x| x[0].as_f64() == Some(q)))
                .and_then(|x| x[1].as_u64())
        };
        assert_eq!(at(50.0), Some(500));
        assert_eq!(at(100.0), Some(1000));
    }

    #[test]
    fn h2loads_report_reads_as_a_load_summary() -> Result<(), String> {
        let text = "\
starting benchmark...
finished in 8.00s, 41234.50 req/s, 44.16MB/s
requests: 329876 total, 329876 started, 329876 done, 329870 succeeded, 6 failed, 0 errored, 0 timeout
status codes: 329870 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 353.25MB (370408340) total, 1.59MB (1666285) headers (space savings 95.45%), 322.14MB (337787104) data
                     min         max         mean         sd        +/- sd
time for request:      227us     51.61ms     23.91ms      4.12ms    71.23%
";
        let v = h2load_summary(text)?;
        assert_eq!(v["requests"], 329_870);
        assert_eq!(v["duration_us"], 8_000_000);
        assert_eq!(v["errors"]["read"], 6);
        assert_eq!(v["errors"]["status"], 0);
        assert!((v["mean_us"].as_f64().unwrap_or(0.0) - 23_910.0).abs() < 1.0);
        assert!((v["max_us"].as_f64().unwrap_or(0.0) - 51_610.0).abs() < 1.0);
        assert!(h2load_summary("connect failed").is_err());
        Ok(())
    }
}
