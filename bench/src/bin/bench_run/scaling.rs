//! `bench/run --workers 1,2,4,8,14`: multi-core scaling of shardgate `bare` against nginx
//! with the same worker counts. Each count is its own `bench_run` (this binary, as a child):
//! `--workers N` and the first N proxy CPUs, plain `bare` scenario at the first body size,
//! the same rounds, durations and load CPUs, no idle, admin or AI phase; then one table of
//! req/s per count and the scaling efficiency `rps(N) ÷ (N/N₀ · rps(N₀))` against the
//! smallest count N₀ (1 in the usual list), for both proxies. Every count must fit the
//! proxy CPUs: on a 2-core machine only `--workers 1` does, and the run says so.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::Config;

pub fn run(config: &Config, counts: &[usize]) -> Result<(), String> {
    let mut counts = counts.to_vec();
    counts.sort_unstable();
    counts.dedup();
    if let Some(&too_many) = counts
        .iter()
        .find(|&&n| n == 0 || n > config.proxy_cpus.len())
    {
        return Err(format!(
            "--workers {too_many}: every count needs that many proxy CPUs and this run has {} \
             (--proxy-cpus {:?}); on this machine scaling cannot be measured beyond that",
            config.proxy_cpus.len(),
            config.proxy_cpus
        ));
    }
    let exe = std::env::current_exe().map_err(|e| format!("this binary: {e}"))?;
    let date = time::OffsetDateTime::now_utc();
    let stem = format!(
        "{:04}-{:02}-{:02}-{}-scaling",
        date.year(),
        date.month() as u8,
        date.day(),
        crate::sys::hostname()
    );
    let root = config.out.join(&stem);
    let mut rows = Vec::new();
    for &n in &counts {
        let out = root.join(format!("workers-{n}"));
        let cpus = |list: &[usize]| {
            list.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        eprintln!(
            "bench_run: scaling: {n} worker(s) on CPUs {}",
            cpus(&config.proxy_cpus[..n])
        );
        let status = Command::new(&exe)
            .args(["--workers", &n.to_string()])
            .args(["--proxy-cpus", &cpus(&config.proxy_cpus[..n])])
            .args(["--load-cpus", &cpus(&config.load_cpus)])
            .args([
                "--scenarios",
                "bare",
                "--idle-conns",
                "0",
                "--admin-writes",
                "0",
                "--ai",
                "off",
            ])
            .args(["--sizes", &config.sizes[0].to_string()])
            .args(["--duration", &config.duration.to_string()])
            .args(["--warmup", &config.warmup.to_string()])
            .args(["--rounds", &config.rounds.to_string()])
            .args(["--connections", &config.connections.to_string()])
            .args(["--threads", &config.threads.to_string()])
            .args(["--quiet-wait", &config.quiet_wait.to_string()])
            .arg("--bin-dir")
            .arg(&config.bin_dir)
            .arg("--wrk")
            .arg(&config.wrk)
            .arg("--nginx")
            .arg(&config.nginx)
            .arg("--out")
            .arg(&out)
            .status()
            .map_err(|e| format!("{}: {e}", exe.display()))?;
        if !status.success() {
            return Err(format!(
                "the {n}-worker run failed ({status}); its output is above"
            ));
        }
        rows.push((n, medians(&out)?));
    }
    let md = table(&rows, config);
    std::fs::write(config.out.join(format!("{stem}.md")), &md)
        .map_err(|e| format!("{}: {e}", config.out.display()))?;
    println!("{md}");
    eprintln!(
        "bench_run: results: {}/{stem}.md (each count's own report under {stem}/)",
        config.out.display()
    );
    Ok(())
}

/// Median req/s and CPU µs/request of nginx and shardgate in one child run's JSON.
fn medians(dir: &Path) -> Result<[(f64, f64); 2], String> {
    let json = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .ok_or_else(|| format!("no results JSON in {}", dir.display()))?;
    let text = std::fs::read_to_string(&json).map_err(|e| format!("{}: {e}", json.display()))?;
    let results: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let runs = results["runs"].as_array().cloned().unwrap_or_default();
    // The report's median (an even count's is the mean of the middle two).
    let median = |proxy: &str, field: &str| -> Result<f64, String> {
        let v: Vec<f64> = runs
            .iter()
            .filter(|r| r["proxy"] == proxy && r["tls_mode"].is_null())
            .filter_map(|r| r[field].as_f64())
            .collect();
        Some(crate::report::median(v))
            .filter(|m| m.is_finite())
            .ok_or_else(|| format!("no {proxy} {field} in {}", json.display()))
    };
    Ok([
        (median("nginx", "rps")?, median("nginx", "cpu_us_per_req")?),
        (
            median("shardgate", "rps")?,
            median("shardgate", "cpu_us_per_req")?,
        ),
    ])
}

fn table(rows: &[(usize, [(f64, f64); 2])], config: &Config) -> String {
    let mut md = format!(
        "# bench/run scaling: shardgate `bare` vs nginx, {} B bodies\n\n\
         Each row is its own run (`--workers N`, proxy on the first N of CPUs {:?}, load on \
         {:?}, {} round(s) × {} s, medians). Efficiency = req/s ÷ (N/N₀ × req/s at the \
         smallest count N₀); ≥ 0.9 is the target. A load generator that cannot keep up \
         caps both proxies alike: see each run's own report for its load CPUs' busy share.\n\n\
         | workers | nginx req/s | nginx efficiency | nginx CPU µs/req | shardgate req/s | \
         shardgate efficiency | shardgate CPU µs/req | shardgate ÷ nginx req/s |\n\
         |--:|--:|--:|--:|--:|--:|--:|--:|\n",
        config.sizes[0], config.proxy_cpus, config.load_cpus, config.rounds, config.duration
    );
    let Some(&(n0, [(nginx0, _), (sg0, _)])) = rows.first() else {
        return md;
    };
    for &(n, [(nginx, nginx_cpu), (sg, sg_cpu)]) in rows {
        let scale = n as f64 / n0 as f64;
        md.push_str(&format!(
            "| {n} | {nginx:.0} | {:.2} | {nginx_cpu:.2} | {sg:.0} | {:.2} | {sg_cpu:.2} | {:.2}× |\n",
            nginx / (scale * nginx0),
            sg / (scale * sg0),
            sg / nginx
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn efficiency_is_against_the_smallest_count() {
        let mut config = crate::parse_args_from(Vec::new()).expect("defaults");
        config.sizes = vec![1024];
        let rows = [
            (1, [(100.0, 10.0), (120.0, 8.0)]),
            (2, [(180.0, 11.0), (240.0, 8.0)]),
            (4, [(400.0, 10.0), (420.0, 9.0)]),
        ];
        let md = table(&rows, &config);
        assert!(
            md.contains("| 1 | 100 | 1.00 | 10.00 | 120 | 1.00 | 8.00 | 1.20× |"),
            "{md}"
        );
        assert!(
            md.contains("| 2 | 180 | 0.90 | 11.00 | 240 | 1.00 | 8.00 | 1.33× |"),
            "{md}"
        );
        assert!(
            md.contains("| 4 | 400 | 1.00 | 10.00 | 420 | 0.88 | 9.00 | 1.05× |"),
            "{md}"
        );
    }

    #[test]
    fn medians_of_an_even_count_are_the_mean_of_the_middle_two() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let run = |proxy: &str, rps: f64, cpu: f64| serde_json::json!({"proxy": proxy, "tls_mode": null, "rps": rps, "cpu_us_per_req": cpu});
        let results = serde_json::json!({"runs": [
            run("nginx", 100.0, 10.0), run("shardgate", 90.0, 12.0),
            run("nginx", 120.0, 8.0), run("shardgate", 110.0, 11.0),
            // An HTTPS run is not a plain one: left out.
            {"proxy": "nginx", "tls_mode": "keep-alive", "rps": 1.0, "cpu_us_per_req": 1.0},
        ]});
        std::fs::write(dir.path().join("r.json"), results.to_string()).expect("the JSON");
        let [nginx, shardgate] = medians(dir.path()).expect("medians");
        assert_eq!(nginx, (110.0, 9.0));
        assert_eq!(shardgate, (100.0, 11.5));
    }
}
