//! The summary a load run of `bench/run` ends with: one JSON line on stdout, the same shape
//! whichever load generator made it — wrk (its Lua `done()` hook prints `WRKJSON {...}`) or
//! `tls_load` (`LOADJSON {...}`), so the driver measures and reports both alike:
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
}
