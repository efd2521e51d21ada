//! The report: medians over rounds, ratios to the paired nginx run, the DESIGN.md §7
//! targets, as Markdown, JSON and one SVG latency percentile plot per body size. Works from
//! the results JSON alone, so `bench_run --from-json FILE` re-renders an old run.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

use crate::size_label;

/// The median of the finite values (NaN when there are none).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n.is_multiple_of(2) {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    } else {
        v[n / 2]
    }
}

fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

/// Medians of one (proxy, scenario, size) over its runs, with the median ratio of each
/// metric to the nginx run paired with it.
#[derive(Debug, Clone)]
struct Row {
    proxy: String,
    scenario: String,
    /// `keep-alive` or `handshake` for the HTTPS scenarios (and their nginx baselines).
    tls: Option<String>,
    size: usize,
    runs: usize,
    values: Vec<(&'static str, f64)>,
    ratios: Vec<(&'static str, f64)>,
    errors: u64,
}

const METRICS: &[&str] = &[
    "rps",
    "p50_us",
    "p99_us",
    "p999_us",
    "cpu_us_per_req",
    "rss_kib",
    "pss_kib",
    "proxy_cpus_busy",
    "load_cpus_busy",
    "proxy_cpus_steal",
    "other_cpus",
    "bytes_per_response",
];

impl Row {
    fn get(&self, m: &str) -> f64 {
        self.values
            .iter()
            .find(|(k, _)| *k == m)
            .map_or(f64::NAN, |(_, v)| *v)
    }
    fn ratio(&self, m: &str) -> f64 {
        self.ratios
            .iter()
            .find(|(k, _)| *k == m)
            .map_or(f64::NAN, |(_, v)| *v)
    }
}

fn rows(results: &Value) -> Vec<Row> {
    let empty = Vec::new();
    let runs = results["runs"].as_array().unwrap_or(&empty);
    let mut keys: Vec<(String, String, usize)> = Vec::new();
    for r in runs {
        let k = (
            r["proxy"].as_str().unwrap_or("").to_string(),
            r["scenario"].as_str().unwrap_or("").to_string(),
            r["size"].as_u64().unwrap_or(0) as usize,
        );
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    // nginx first within each size, sizes ascending, scenarios in run order.
    keys.sort_by_key(|(p, _, size)| (*size, p != "nginx"));
    keys.into_iter()
        .map(|(proxy, scenario, size)| {
            let mine: Vec<&Value> = runs
                .iter()
                .filter(|r| {
                    r["proxy"] == proxy.as_str()
                        && r["scenario"] == scenario.as_str()
                        && r["size"].as_u64() == Some(size as u64)
                })
                .collect();
            let values = METRICS
                .iter()
                .map(|m| (*m, median(mine.iter().map(|r| f(r, m)).collect())))
                .collect();
            let ratios = METRICS
                .iter()
                .map(|m| {
                    let v = mine
                        .iter()
                        .filter_map(|r| {
                            let pair = r["paired_nginx_seq"].as_u64()?;
                            let base = runs.iter().find(|b| b["seq"].as_u64() == Some(pair))?;
                            Some(f(r, m) / f(base, m))
                        })
                        .collect::<Vec<_>>();
                    let ratio = if proxy == "nginx" { 1.0 } else { median(v) };
                    (*m, ratio)
                })
                .collect();
            Row {
                tls: mine
                    .first()
                    .and_then(|r| r["tls_mode"].as_str())
                    .map(str::to_string),
                errors: mine.iter().map(|r| r["errors"].as_u64().unwrap_or(0)).sum(),
                runs: mine.len(),
                proxy,
                scenario,
                size,
                values,
                ratios,
            }
        })
        .collect()
}

pub fn group(n: f64) -> String {
    if !n.is_finite() {
        return "–".into();
    }
    let s = format!("{:.0}", n);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(us: f64) -> String {
    if !us.is_finite() {
        "–".into()
    } else if us < 10_000.0 {
        format!("{:.2}", us / 1000.0)
    } else {
        format!("{:.1}", us / 1000.0)
    }
}

fn with_ratio(text: String, ratio: f64, show: bool) -> String {
    if show && ratio.is_finite() {
        format!("{text} ({ratio:.2}×)")
    } else {
        text
    }
}

fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.0} %", x * 100.0)
    } else {
        "–".into()
    }
}

fn machine_line(m: &Value) -> String {
    let s = |k: &str| m[k].as_str().unwrap_or("?").to_string();
    let virt = if m["virtualised"].as_bool().unwrap_or(false) {
        format!(
            "virtual machine ({} hypervisor) — a shared VM: neighbours and CPU steal add noise",
            m["hypervisor"].as_str().unwrap_or("unknown")
        )
    } else {
        "bare metal (no hypervisor flag)".into()
    };
    format!(
        "{} × {} ({} socket(s), {} core(s)/socket, {} thread(s)/core), {}; {} GiB RAM; \
         Linux {} ({}); cpufreq governor: {}; kernel.io_uring_disabled = {}",
        s("cpus"),
        s("cpu_model"),
        s("sockets"),
        s("cores_per_socket"),
        s("threads_per_core"),
        virt,
        m["mem_gib"],
        s("kernel"),
        s("os"),
        s("cpufreq_governor"),
        s("io_uring_disabled_sysctl"),
    )
}

fn list(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.to_string().trim_matches('"').to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// Renders the Markdown report.
pub fn markdown(results: &Value, stem: &str) -> String {
    let mut md = String::new();
    let m = &results["machine"];
    let c = &results["config"];
    let rows = rows(results);
    let smoke = c["smoke"].as_bool().unwrap_or(false);
    let _ = writeln!(
        md,
        "# bench/run — {} on `{}`{}\n",
        results["date"]
            .as_str()
            .map(|d| format!(
                "{} {} UTC",
                &d[..10.min(d.len())],
                d.get(11..16).unwrap_or("")
            ))
            .unwrap_or_else(|| "?".into()),
        m["host"].as_str().unwrap_or("?"),
        if smoke {
            " (SMOKE: tiny durations, numbers not meaningful)"
        } else {
            ""
        }
    );
    let _ = writeln!(md, "**Machine**: {}.\n", machine_line(m));
    let _ = writeln!(
        md,
        "**Software**: shardgate `{}`, release build (fat LTO) (workers: {}); nginx {}; {}; {}.\n",
        m["git"].as_str().unwrap_or("?"),
        list(&results["shardgate_workers"]).replace(',', "; "),
        match m["nginx_tls_library"].as_str() {
            Some(tls) if !tls.is_empty() =>
                format!("{} ({tls})", m["nginx"].as_str().unwrap_or("?")),
            _ => m["nginx"].as_str().unwrap_or("?").to_string(),
        },
        m["wrk"]
            .as_str()
            .unwrap_or("?")
            .split(" Copyright")
            .next()
            .unwrap_or("?"),
        m["rustc"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(
        md,
        "**Method**: proxy on CPU(s) {} (shardgate `--workers {w}`, nginx `worker_processes {w}`), \
         wrk (`-t{} -c{}`) and the upstream (one monoio thread per load CPU) on CPU(s) {}. Each round, for each \
         body size, runs nginx then one shardgate scenario, for every scenario (A B A C A D …); \
         {} round(s) × {} s per run after a {} s warm-up of every target. Cells are medians over \
         rounds; `(×)` is the median ratio to the nginx run just before (lower is better except \
         req/s). CPU µs/req = proxy utime+stime (`/proc/<pid>/stat`, all threads, nginx master + \
         workers) ÷ requests. RSS = resident memory mid-run (nginx: master + workers summed).\n",
        list(&c["proxy_cpus"]),
        c["threads"],
        c["connections"],
        list(&c["load_cpus"]),
        c["rounds"],
        c["duration_s"],
        c["warmup_s"],
        w = c["workers"],
    );

    let _ = writeln!(md, "## Throughput, latency, CPU and memory\n");
    if rows.iter().all(|r| r.tls.is_some()) {
        let _ = writeln!(md, "No plain-HTTP scenario in this run (`--scenarios`).");
    } else {
        let _ = writeln!(
            md,
            "| proxy | scenario | body | req/s | p50 ms | p99 ms | p99.9 ms | CPU µs/req | RSS MiB | proxy CPUs busy | load CPUs busy | other procs (CPUs) | errors |"
        );
        let _ = writeln!(md, "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    }
    for r in rows.iter().filter(|r| r.tls.is_none()) {
        let sg = r.proxy != "nginx";
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} |",
            r.proxy,
            if sg {
                r.scenario.as_str()
            } else {
                "proxy_pass"
            },
            size_label(r.size),
            with_ratio(group(r.get("rps")), r.ratio("rps"), sg),
            with_ratio(ms(r.get("p50_us")), r.ratio("p50_us"), sg),
            with_ratio(ms(r.get("p99_us")), r.ratio("p99_us"), sg),
            with_ratio(ms(r.get("p999_us")), r.ratio("p999_us"), sg),
            with_ratio(
                format!("{:.2}", r.get("cpu_us_per_req")),
                r.ratio("cpu_us_per_req"),
                sg
            ),
            with_ratio(
                format!("{:.1}", r.get("rss_kib") / 1024.0),
                r.ratio("rss_kib"),
                sg
            ),
            pct(r.get("proxy_cpus_busy")),
            pct(r.get("load_cpus_busy")),
            r.get("other_cpus"),
            r.errors,
        );
    }
    let _ = writeln!(md);
    let sizes: Vec<usize> = {
        let mut s: Vec<usize> = rows.iter().map(|r| r.size).collect();
        s.dedup();
        s
    };
    let noisy = rows
        .iter()
        .map(|r| r.get("other_cpus"))
        .filter(|x| x.is_finite())
        .fold(0.0f64, f64::max);
    if noisy >= 0.05 {
        let _ = writeln!(
            md,
            "Processes outside the harness used up to {noisy:.2} CPUs (median per run) while it \
             measured: on a machine this small that disturbs every figure; rerun on a quiet \
             machine before drawing conclusions.\n"
        );
    }
    let steal = rows
        .iter()
        .map(|r| r.get("proxy_cpus_steal"))
        .filter(|x| x.is_finite())
        .fold(0.0f64, f64::max);
    if steal >= 0.01 {
        let _ = writeln!(
            md,
            "The hypervisor stole up to {:.1} % of the proxy CPUs' time.\n",
            steal * 100.0
        );
    }
    let load_bound = rows.iter().any(|r| r.get("load_cpus_busy") >= 0.95);
    if load_bound {
        let _ = writeln!(
            md,
            "Load CPUs at ≥ 95 % busy: the load generator (wrk, or tls_load for HTTPS) + \
             upstream, not the proxy, set the pace in those runs, so req/s and latency ratios \
             understate the faster proxy; CPU µs/req is the figure that compares the proxies \
             there.\n"
        );
    }
    https_section(&mut md, results, &rows);
    for size in plotted_sizes(&rows) {
        let _ = writeln!(
            md,
            "![latency percentiles, {}]({stem}-latency-{}.svg)\n",
            size_label(size),
            size_label(size).replace(' ', "")
        );
    }

    // Cost of each feature relative to bare shardgate.
    let find = |scenario: &str, size: usize| {
        rows.iter()
            .find(|r| r.proxy == "shardgate" && r.scenario == scenario && r.size == size)
    };
    let plain_sizes: Vec<usize> = {
        let mut s: Vec<usize> = rows
            .iter()
            .filter(|r| r.tls.is_none())
            .map(|r| r.size)
            .collect();
        s.dedup();
        s
    };
    let _ = writeln!(
        md,
        "## Cost of the plugin chain (vs `bare` shardgate, same run)\n"
    );
    let _ = writeln!(
        md,
        "Each scenario's ratio to its paired nginx run ÷ `bare`'s ratio to its own, so drift \
         between the two runs cancels.\n"
    );
    let _ = writeln!(
        md,
        "| scenario | body | req/s vs bare | CPU µs/req vs bare |"
    );
    let _ = writeln!(md, "|---|---|--:|--:|");
    for &size in &sizes {
        let Some(bare) = find("bare", size) else {
            continue;
        };
        for r in rows.iter().filter(|r| {
            r.proxy == "shardgate" && r.size == size && r.scenario != "bare" && r.tls.is_none()
        }) {
            let _ = writeln!(
                md,
                "| {} | {} | {:+.1} % | {:+.1} % |",
                r.scenario,
                size_label(size),
                (r.ratio("rps") / bare.ratio("rps") - 1.0) * 100.0,
                (r.ratio("cpu_us_per_req") / bare.ratio("cpu_us_per_req") - 1.0) * 100.0,
            );
        }
    }
    let _ = writeln!(md);

    let _ = writeln!(md, "## Idle keep-alive connections\n");
    let idle = results["idle"].as_array().cloned().unwrap_or_default();
    if idle.is_empty() {
        let _ = writeln!(md, "Not measured (`--idle-conns 0`).\n");
    } else {
        let _ = writeln!(
            md,
            "Fresh processes; each connection made one request (body {}) and then stayed open and idle. \
             Memory is user space only (socket buffers are kernel memory).\n",
            size_label(c["sizes"][0].as_u64().unwrap_or(0) as usize)
        );
        let _ = writeln!(
            md,
            "| proxy | connections | still open | RSS before MiB | RSS after MiB | bytes/connection (RSS) | bytes/connection (PSS) |"
        );
        let _ = writeln!(md, "|---|--:|--:|--:|--:|--:|--:|");
        for i in &idle {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.1} | {:.1} | {:.0} | {:.0} |",
                i["proxy"].as_str().unwrap_or("?"),
                group(f(i, "connections")),
                group(f(i, "still_open")),
                f(i, "rss_before_kib") / 1024.0,
                f(i, "rss_after_kib") / 1024.0,
                f(i, "bytes_per_conn_rss"),
                f(i, "bytes_per_conn_pss"),
            );
        }
        let _ = writeln!(md);
    }

    if let Some(sides) = results["side_by_side"].as_array()
        && !sides.is_empty()
    {
        let _ = writeln!(
            md,
            "## Side by side: what observing a request costs
"
        );
        let _ = writeln!(
            md,
            "Each pair of shardgates that differ in one feature runs **at the same time** on the \
             proxy CPUs, each under its own wrk (`-t1 -c{}`) on the load CPUs, {} s per round; \
             whatever slows the machine slows both, so the ratio of their CPU per request keeps \
             only the feature's cost (`bench/src/bin/bench_run/side.rs`). Neither gateway is \
             saturated as in a run alone: compare the ratios, not the absolute figures, with \
             the table above. CPU from `schedstat`, all threads.\n",
            sides[0]["connections_each"], c["duration_s"]
        );
        let _ = writeln!(
            md,
            "| feature | baseline → with it | CPU µs/req per round (baseline → with) | added per round | median added | target | met? |"
        );
        let _ = writeln!(md, "|---|---|---|---|--:|--:|---|");
        for side in sides {
            let rounds = side["rounds"].as_array().cloned().unwrap_or_default();
            let cpus: Vec<String> = rounds
                .iter()
                .map(|r| {
                    format!(
                        "{:.2} → {:.2}",
                        f(&r["baseline"], "cpu_us_per_req"),
                        f(&r["candidate"], "cpu_us_per_req")
                    )
                })
                .collect();
            let added: Vec<String> = side["added"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| format!("{:+.1} %", x.as_f64().unwrap_or(f64::NAN) * 100.0))
                        .collect()
                })
                .unwrap_or_default();
            let median = f(side, "median_added");
            let limit = side["limit"].as_f64();
            // No limit: an A/A check of the method, or an A/B of two builds (`--twin-bin`).
            let ab = side["twin_bin"].is_string();
            let _ = writeln!(
                md,
                "| {} | `{}` → `{}` | {} | {} | **{:+.1} %** | {} | {} |",
                side["what"].as_str().unwrap_or("?"),
                side["baseline"].as_str().unwrap_or("?"),
                side["candidate"].as_str().unwrap_or("?"),
                cpus.join(", "),
                added.join(", "),
                median * 100.0,
                match limit {
                    Some(l) => format!("≤ {:.0} %", l * 100.0),
                    None if ab => "–".to_string(),
                    None => "0 (A/A)".to_string(),
                },
                if !median.is_finite() || side["errors"].as_u64().unwrap_or(0) > 0 {
                    "not measured"
                } else if limit.is_none() && ab {
                    "A/B: the twin build's cost"
                } else if limit.is_none() {
                    "the other rows' error bar"
                } else if side["candidate"] == "full-logged" && results["access_log"].is_string() {
                    "not judged (`--access-log`)"
                } else if limit.is_some_and(|l| median <= l) {
                    "met"
                } else {
                    "**not met**"
                }
            );
        }
        let _ = writeln!(md);
    }

    let ai = &results["ai"];
    if let Some(section) = ai["markdown"].as_str() {
        let _ = writeln!(md, "{}", section.trim_end());
        let _ = writeln!(md);
    } else if let Some(e) = ai["error"].as_str() {
        let _ = writeln!(md, "## AI gateway: SSE relay and chat completion cost\n");
        let _ = writeln!(md, "Failed: `{}`\n", e.lines().next().unwrap_or(e));
    }

    let _ = writeln!(md, "## Admin write-to-live\n");
    let a = &results["admin_write"];
    if let Some(e) = a["error"].as_str() {
        let _ = writeln!(md, "Failed: `{}`\n", e.lines().next().unwrap_or(e));
    } else if a["skipped"].as_bool() == Some(true) {
        let _ = writeln!(md, "Not run (`--admin-writes 0`).\n");
    } else {
        let e = &a["end_to_end"];
        let n = &a["naive_full_rebuild"];
        let _ = writeln!(
            md,
            "`POST /api/v1/gateways/{{id}}/keys` timed end to end (journal fsync, apply, \
             incremental snapshot, every worker acknowledging) by `bench/src/bin/admin_write.rs`, \
             {} writes with {} keys present, {} worker(s).\n",
            group(f(a, "writes")),
            group(f(a, "keys")),
            a["workers"]
        );
        let _ = writeln!(md, "| | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |");
        let _ = writeln!(md, "|---|--:|--:|--:|--:|--:|");
        for (name, v) in [
            ("admin write, end to end", e),
            ("naive full snapshot rebuild alone (baseline)", n),
        ] {
            let _ = writeln!(
                md,
                "| {name} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                f(v, "p50_ms"),
                f(v, "p90_ms"),
                f(v, "p99_ms"),
                f(v, "p99.9_ms"),
                f(v, "max_ms")
            );
        }
        let _ = writeln!(md);
    }

    let _ = writeln!(md, "## DESIGN.md §7 targets\n");
    let _ = writeln!(md, "| target | measured | met? |");
    let _ = writeln!(md, "|---|---|---|");
    let per_size = |scenario: &str, metric: &str, ratio: bool| -> Vec<(usize, f64)> {
        plain_sizes
            .iter()
            .filter_map(|&s| {
                find(scenario, s).map(|r| {
                    (
                        s,
                        if ratio {
                            r.ratio(metric)
                        } else {
                            r.get(metric)
                        },
                    )
                })
            })
            .collect()
    };
    let show = |v: &[(usize, f64)], fmt: &dyn Fn(f64) -> String| {
        if v.is_empty() {
            return "–".to_string();
        }
        v.iter()
            .map(|(s, x)| format!("{} {}", size_label(*s), fmt(*x)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let verdict = |v: &[(usize, f64)], ok: &dyn Fn(f64) -> bool| {
        if v.is_empty() || v.iter().any(|(_, x)| !x.is_finite()) {
            "not measured"
        } else if v.iter().all(|(_, x)| ok(*x)) {
            "met"
        } else {
            "**not met**"
        }
    };
    let cpu = per_size("full", "cpu_us_per_req", true);
    let _ = writeln!(
        md,
        "| proxy CPU/request, `full`, ≤ 0.8 × nginx | {} | {} |",
        show(&cpu, &|x| format!("{x:.2}×")),
        verdict(&cpu, &|x| x <= 0.8)
    );
    let tput = per_size("full", "rps", true);
    let _ = writeln!(
        md,
        "| throughput per worker, `full`, ≥ 1.25 × nginx | {}{} | {} |",
        show(&tput, &|x| format!("{x:.2}×")),
        if load_bound {
            " (load-generator bound, see above)"
        } else {
            ""
        },
        verdict(&tput, &|x| x >= 1.25)
    );
    let chain: Vec<(usize, f64)> = plain_sizes
        .iter()
        .filter_map(|&s| {
            let (b, fu) = (find("bare", s)?, find("full", s)?);
            Some((s, 1.0 - fu.ratio("rps") / b.ratio("rps")))
        })
        .collect();
    let _ = writeln!(
        md,
        "| full plugin chain costs ≤ 5 % of bare throughput | {} | {} |",
        show(&chain, &|x| format!("{:.1} % loss", x * 100.0)),
        verdict(&chain, &|x| x <= 0.05)
    );
    // Issue 13: request metrics and the access log on (`full-logged`) against both off
    // (`full-quiet`); issue 14: usage tracking on (`full`, as shipped) against off
    // (`full-untracked`). Medians of the same run.
    let cost = |base: &str, with: &str| -> Vec<(usize, f64)> {
        plain_sizes
            .iter()
            .filter_map(|&s| {
                let (off, on) = (find(base, s)?, find(with, s)?);
                Some((
                    s,
                    on.get("cpu_us_per_req") / off.get("cpu_us_per_req") - 1.0,
                ))
            })
            .collect()
    };
    // The side-by-side figure when the run has one (it resolves a few per cent; the
    // medians of sequential runs on a shared VM do not).
    for (what, base, with, limit) in [
        ("metrics + access log", "full-quiet", "full-logged", 0.03),
        ("usage tracking", "full-untracked", "full", 0.02),
    ] {
        let side = results["side_by_side"].as_array().and_then(|a| {
            a.iter()
                .find(|x| x["baseline"] == base && x["candidate"] == with)
        });
        let (measured, how) = match side {
            Some(x) if x["errors"].as_u64() == Some(0) => (
                vec![(
                    x["size"].as_u64().unwrap_or(0) as usize,
                    f(x, "median_added"),
                )],
                " side by side",
            ),
            _ => (cost(base, with), ""),
        };
        // A log sent elsewhere than a file (`--access-log /dev/null`) measures part of
        // the cost: shown, not judged.
        let judged = match results["access_log"].as_str() {
            Some(path) if with == "full-logged" => {
                format!("not judged (access log to {path})")
            }
            _ => verdict(&measured, &|x| x <= limit).to_string(),
        };
        let _ = writeln!(
            md,
            "| {what} cost ≤ {:.0} % CPU/request (`{with}` vs `{base}`) | {}{how} | {judged} |",
            limit * 100.0,
            show(&measured, &|x| format!("{:+.1} %", x * 100.0)),
        );
    }
    let admin_p99 = a["end_to_end"]["p99_ms"].as_f64();
    let _ = writeln!(
        md,
        "| admin write live on every worker, p99 ≤ 10 ms with 100k keys | {} | {} |",
        admin_p99.map_or("–".into(), |p| format!(
            "p99 {p:.2} ms with {} keys",
            group(f(a, "keys"))
        )),
        match admin_p99 {
            None => "not measured",
            Some(_) if a["keys"].as_u64().unwrap_or(0) < 100_000 => "not measured (fewer keys)",
            Some(p) if p <= 10.0 => "met",
            Some(_) => "**not met**",
        }
    );
    let idle_sg = idle
        .iter()
        .find(|i| i["proxy"] == "shardgate")
        .map(|i| f(i, "bytes_per_conn_rss"));
    let idle_ng = idle
        .iter()
        .find(|i| i["proxy"] == "nginx")
        .map(|i| f(i, "bytes_per_conn_rss"));
    let _ = writeln!(
        md,
        "| idle keep-alive connection ≤ 1 KiB (nginx ≈ 0.5 KiB) | {} | {} |",
        match (idle_sg, idle_ng) {
            (Some(s), Some(n)) => format!("shardgate {s:.0} B, nginx {n:.0} B"),
            _ => "–".into(),
        },
        match idle_sg {
            None => "not measured",
            Some(s) if s <= 1024.0 => "met",
            Some(_) => "**not met**",
        }
    );
    let _ = writeln!(
        md,
        "| throughput scales ≥ 0.9 × linear with workers | not measured in this run (a scaling run \
         measures it: e.g. `bench/run --proxy-cpus 0-7 --load-cpus 8-15 --workers 1,2,4,8`) | – |"
    );
    // Issue 10: the HTTPS listener against nginx with the same certificate.
    let tls_sizes = |scenario: &str| -> Vec<(usize, f64)> {
        rows.iter()
            .filter(|r| r.proxy == "shardgate" && r.scenario == scenario)
            .map(|r| (r.size, r.ratio("cpu_us_per_req")))
            .collect()
    };
    let https = tls_sizes("https");
    let _ = writeln!(
        md,
        "| CPU per HTTPS request (keep-alive) ≤ 0.9 × nginx (issue 10) | {} | {} |",
        show(&https, &|x| format!("{x:.2}×")),
        verdict(&https, &|x| x <= 0.9)
    );
    let handshake = tls_sizes("https-handshake");
    let _ = writeln!(
        md,
        "| CPU per TLS 1.3 handshake ≤ 1.0 × nginx (issue 10) | {} | {} |",
        show(&handshake, &|x| format!("{x:.2}×")),
        verdict(&handshake, &|x| x <= 1.0)
    );
    let h2 = tls_sizes("h2");
    let _ = writeln!(
        md,
        "| CPU per HTTP/2 request (TLS, h2load 10 connections × 100 streams) ≤ 0.8 × nginx \
         (issue 12) | {} | {} |\n",
        show(&h2, &|x| format!("{x:.2}×")),
        verdict(&h2, &|x| x <= 0.8)
    );

    let notes = results["notes"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(md, "## Notes\n");
    match results["rate_limiter_enforced"].as_bool() {
        Some(true) => {
            let _ = writeln!(
                md,
                "- The rate_limiter plugin is enforced by this build (responses carry \
                 X-RateLimit-* headers); its limits (10⁹/min per dimension) never reject, so \
                 `auth+ratelimit` and `full` measure its per-request cost."
            );
        }
        Some(false) => {
            let _ = writeln!(
                md,
                "- The rate_limiter plugin is configured (the admin API accepts it) but this \
                 build does not enforce it: responses carry no X-RateLimit-* headers, so \
                 `auth+ratelimit` and `full` measure its configuration only — it costs nothing \
                 per request yet."
            );
        }
        None => {}
    }
    for n in &notes {
        let _ = writeln!(md, "- {}", n.as_str().unwrap_or(""));
    }
    for r in rows.iter().filter(|r| r.errors > 0) {
        let _ = writeln!(
            md,
            "- {} `{}` {}: {} wrk errors (connect/read/write/timeouts or non-2xx) over {} run(s)",
            r.proxy,
            r.scenario,
            size_label(r.size),
            r.errors,
            r.runs
        );
    }
    let _ = writeln!(
        md,
        "- wrk is closed-loop: its latencies omit queueing a real open-loop client would see \
         (coordinated omission); compare them between proxies, not with SLOs."
    );
    let _ = writeln!(
        md,
        "- Reproduce: `bench/run` (flags in bench/README.md). This run took {:.0} s{}.",
        f(results, "elapsed_s"),
        c["build_seconds"]
            .as_f64()
            .map_or(String::new(), |b| format!(" after a {b:.0} s build"))
    );
    md
}

/// Sum of `tls.<key>` over the runs of one (proxy, scenario).
fn tls_sum(results: &Value, proxy: &str, scenario: &str, key: &str) -> u64 {
    results["runs"]
        .as_array()
        .map(|runs| {
            runs.iter()
                .filter(|r| r["proxy"] == proxy && r["scenario"] == scenario)
                .map(|r| r["tls"][key].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

/// The HTTPS scenarios: keep-alive requests and new connections (one full handshake each),
/// each beside nginx serving the same certificate, and what the handshakes negotiated.
fn https_section(md: &mut String, results: &Value, rows: &[Row]) {
    let tls = &results["tls"];
    let https: Vec<&Row> = rows.iter().filter(|r| r.tls.is_some()).collect();
    if https.is_empty() && tls["skipped"].is_null() {
        return;
    }
    let _ = writeln!(
        md,
        "## HTTPS: TLS 1.3, same ECDSA P-256 certificate on both\n"
    );
    if https.is_empty() {
        let _ = writeln!(
            md,
            "Not measured: {}\n",
            tls["skipped"]
                .as_str()
                .unwrap_or("no HTTPS scenario asked for")
        );
        return;
    }
    let _ = writeln!(
        md,
        "Both proxies serve one certificate made for this run ({}); nginx with `ssl_protocols \
         TLSv1.3` and otherwise its defaults, shardgate through its HTTPS listener (rustls, \
         ring provider) with the certificate uploaded by the admin API. Load: `tls_load` ({}), same closed loop as wrk \
         (`-c` connections) on the load CPUs. **keep-alive**: requests on open connections — \
         the record layer's cost. **handshake**: a new TCP connection and a full handshake for \
         every request, then `close_notify` — CPU µs/req is the cost of one new connection \
         (handshake + one request), and \"per CPU-second\" (10⁶ ÷ that) is how many new \
         connections one fully busy core of the proxy would complete per second. **h2**: \
         HTTP/2 over the same TLS (ALPN h2; nginx `listen ... ssl http2`), h2load with 10 \
         connections × 100 concurrent streams on the load CPUs (h2load prints no latency \
         percentiles). `(×)`: median ratio to the nginx run just before, as above.\n",
        tls["certificate"].as_str().unwrap_or("?"),
        tls["client"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(
        md,
        "| proxy | mode | body | req/s | p50 ms | p99 ms | CPU µs/req | per CPU-second | RSS MiB | proxy CPUs busy | load CPUs busy | tickets/handshake | errors |"
    );
    let _ = writeln!(md, "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for r in &https {
        let sg = r.proxy != "nginx";
        let handshakes = tls_sum(results, &r.proxy, &r.scenario, "handshakes");
        let tickets = tls_sum(results, &r.proxy, &r.scenario, "tickets");
        let cpu = r.get("cpu_us_per_req");
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.proxy,
            r.tls.as_deref().unwrap_or("?"),
            size_label(r.size),
            with_ratio(group(r.get("rps")), r.ratio("rps"), sg),
            with_ratio(ms(r.get("p50_us")), r.ratio("p50_us"), sg),
            with_ratio(ms(r.get("p99_us")), r.ratio("p99_us"), sg),
            with_ratio(format!("{cpu:.2}"), r.ratio("cpu_us_per_req"), sg),
            group(1e6 / cpu),
            with_ratio(
                format!("{:.1}", r.get("rss_kib") / 1024.0),
                r.ratio("rss_kib"),
                sg
            ),
            pct(r.get("proxy_cpus_busy")),
            pct(r.get("load_cpus_busy")),
            if handshakes > 0 {
                format!("{:.1}", tickets as f64 / handshakes as f64)
            } else {
                "–".into()
            },
            r.errors,
        );
    }
    let _ = writeln!(md);
    let checks = tls["checks"].as_array().cloned().unwrap_or_default();
    let mut negotiated: Vec<String> = Vec::new();
    for c in &checks {
        let line = format!(
            "{} {}, {}, {}",
            c["proxy"].as_str().unwrap_or("?"),
            c["version"].as_str().unwrap_or("?"),
            c["cipher_suite"].as_str().unwrap_or("?"),
            c["kx_group"].as_str().unwrap_or("?"),
        );
        if !negotiated.contains(&line) {
            negotiated.push(line);
        }
    }
    let mut counts: Vec<String> = Vec::new();
    for r in https
        .iter()
        .filter(|r| r.tls.as_deref() == Some("handshake"))
    {
        let sum = |key: &str| tls_sum(results, &r.proxy, &r.scenario, key);
        let (all, resumed, retried) = (sum("handshakes"), sum("resumed"), sum("hello_retries"));
        counts.push(format!(
            "{} {} full, {resumed} resumed, {retried} after a HelloRetryRequest",
            r.proxy,
            group(all.saturating_sub(resumed + retried) as f64),
        ));
    }
    let _ = writeln!(
        md,
        "Negotiated (checked before the runs): {}. Handshake runs: {}. Tickets/handshake: TLS \
         1.3 session tickets each server sent per new connection (issuing them is part of its \
         handshake cost; the client never uses them).\n",
        negotiated.join("; "),
        if counts.is_empty() {
            "–".into()
        } else {
            counts.join("; ")
        }
    );
}

/// Median percentile curve of one target: (x = 1/(1-q), latency ms).
fn curve(results: &Value, proxy: &str, scenario: &str, size: usize) -> Vec<(f64, f64)> {
    let empty = Vec::new();
    let runs: Vec<&Value> = results["runs"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter(|r| {
            r["proxy"] == proxy
                && r["scenario"] == scenario
                && r["size"].as_u64() == Some(size as u64)
        })
        .collect();
    let Some(first) = runs.first().and_then(|r| r["curve"].as_array()) else {
        return Vec::new();
    };
    first
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let q = p[0].as_f64()?;
            if q > 99.995 {
                return None;
            }
            let lat = median(
                runs.iter()
                    .filter_map(|r| r["curve"][i][1].as_f64())
                    .collect(),
            );
            Some((100.0 / (100.0 - q), lat / 1000.0))
        })
        .collect()
}

fn plot(results: &Value, size: usize, path: &Path) -> Result<(), String> {
    let rows = rows(results);
    // Plain HTTP only: a handshake's latency would flatten every other curve.
    let series: Vec<(String, Vec<(f64, f64)>)> = rows
        .iter()
        .filter(|r| r.size == size && r.tls.is_none())
        .map(|r| {
            let name = if r.proxy == "nginx" {
                "nginx proxy_pass".to_string()
            } else {
                format!("shardgate {}", r.scenario)
            };
            (name, curve(results, &r.proxy, &r.scenario, size))
        })
        .filter(|(_, c)| !c.is_empty())
        .collect();
    let ymax = series
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1))
        .filter(|y| y.is_finite())
        .fold(0.0f64, f64::max)
        * 1.08;
    let ymax = if ymax > 0.0 { ymax } else { 1.0 };
    let e = |e: &dyn std::fmt::Display| format!("plot {}: {e}", path.display());
    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Latency by percentile, {} body (median of rounds; wrk, closed loop)",
                size_label(size)
            ),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d((1f64..10_000f64).log_scale(), 0f64..ymax)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| {
            let q = 100.0 - 100.0 / x;
            if q < 0.5 {
                "0%".into()
            } else {
                format!("{}%", (q * 1000.0).round() / 1000.0)
            }
        })
        .draw()
        .map_err(|x| e(&x))?;
    let palette = [
        RGBColor(0, 0, 0),
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    for (i, (name, points)) in series.iter().enumerate() {
        let color = palette[i % palette.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|x| e(&x))?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// Body sizes with a latency plot: those with plain-HTTP runs (the plots leave HTTPS out).
fn plotted_sizes(rows: &[Row]) -> Vec<usize> {
    let mut sizes: Vec<usize> = rows
        .iter()
        .filter(|r| r.tls.is_none())
        .map(|r| r.size)
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// Writes `<stem>.md`, the SVG plots and (when `json`) `<stem>.json` into `dir`; returns
/// the Markdown.
pub fn write_all(results: &Value, dir: &Path, stem: &str, json: bool) -> Result<String, String> {
    let md = markdown(results, stem);
    let w = |name: String, text: &str| {
        let p = dir.join(&name);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))
    };
    if json {
        w(
            format!("{stem}.json"),
            &serde_json::to_string_pretty(results).map_err(|e| e.to_string())?,
        )?;
    }
    w(format!("{stem}.md"), &md)?;
    for size in plotted_sizes(&rows(results)) {
        let name = format!("{stem}-latency-{}.svg", size_label(size).replace(' ', ""));
        plot(results, size, &dir.join(name))?;
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(seq: u64, proxy: &str, scenario: &str, mode: Option<&str>, cpu: f64) -> Value {
        let mut r = json!({
            "proxy": proxy, "scenario": scenario, "tls_mode": mode, "size": 1024, "seq": seq,
            "rps": 1000.0, "cpu_us_per_req": cpu, "errors": 0,
            "tls": {"handshakes": 100, "tickets": 200, "resumed": 0, "hello_retries": 0},
        });
        if proxy == "shardgate" {
            r["paired_nginx_seq"] = json!(seq - 1);
        }
        r
    }

    fn results() -> Value {
        json!({
            "config": {"sizes": [1024], "smoke": false},
            "machine": {},
            "runs": [
                run(1, "nginx", "nginx", None, 16.0),
                run(2, "shardgate", "bare", None, 15.0),
                run(3, "nginx", "https", Some("keep-alive"), 20.0),
                run(4, "shardgate", "https", Some("keep-alive"), 17.0),
                run(5, "nginx", "https-handshake", Some("handshake"), 400.0),
                run(6, "shardgate", "https-handshake", Some("handshake"), 440.0),
            ],
            "tls": {"checks": [
                {"proxy": "nginx", "version": "TLSv1_3", "cipher_suite": "TLS13_AES_256_GCM_SHA384", "kx_group": "X25519"},
            ]},
        })
    }

    #[test]
    fn https_runs_get_their_own_table_and_the_issue_10_verdicts() {
        let md = markdown(&results(), "x");
        let section = md.split("## HTTPS").nth(1).expect("an HTTPS section");
        assert!(section.contains("| shardgate | keep-alive | 1 KiB |"));
        assert!(section.contains("| 17.00 (0.85×) |"));
        assert!(section.contains("| 440.00 (1.10×) | 2,273 |"));
        assert!(section.contains("TLSv1_3, TLS13_AES_256_GCM_SHA384, X25519"));
        assert!(md.contains("≤ 0.9 × nginx (issue 10) | 1 KiB 0.85× | met |"));
        assert!(md.contains("≤ 1.0 × nginx (issue 10) | 1 KiB 1.10× | **not met** |"));
        // The plain table and the plugin-cost table leave the HTTPS runs out.
        let plain = md.split("## HTTPS").next().expect("plain part");
        assert!(!plain.contains("https"));
    }

    #[test]
    fn the_median_of_odd_even_and_empty_sets() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(vec![]).is_nan());
        assert_eq!(median(vec![f64::NAN, 1.0]), 1.0);
    }

    /// One side-by-side round: the baseline's and the candidate's CPU per request.
    fn side(base: f64, with: f64) -> (Value, Value) {
        (
            json!({"cpu_us_per_req": base, "errors": 0}),
            json!({"cpu_us_per_req": with, "errors": 0}),
        )
    }

    #[test]
    fn the_a_a_and_a_b_rows_are_an_error_bar_and_a_build_s_cost_not_judged() {
        let mut r = results();
        let pair = crate::side::COMPARISONS
            .iter()
            .find(|c| c.limit.is_none())
            .expect("the A/A pair");
        let rounds = || vec![side(10.0, 10.03), side(20.0, 20.06)];
        let mut a_a = crate::side::summary(pair, rounds(), None);
        a_a["connections_each"] = json!(32);
        r["side_by_side"] = json!([a_a]);
        let md = markdown(&r, "x");
        assert!(
            md.contains("| **+0.3 %** | 0 (A/A) | the other rows' error bar |"),
            "{md}"
        );
        let twin = std::path::Path::new("/tmp/other");
        let mut a_b = crate::side::summary(pair, rounds(), Some(twin));
        a_b["connections_each"] = json!(32);
        r["side_by_side"] = json!([a_b]);
        let md = markdown(&r, "x");
        assert!(md.contains("| another build (A/B: `/tmp/other`) |"), "{md}");
        assert!(
            md.contains("| **+0.3 %** | – | A/B: the twin build's cost |"),
            "{md}"
        );
    }

    #[test]
    fn side_by_side_rounds_are_listed_and_judge_the_issue_13_and_14_targets() {
        let mut r = results();
        let mut logged = crate::side::summary(
            &crate::side::COMPARISONS[0],
            vec![side(10.0, 10.2), side(20.0, 20.8), side(10.0, 10.1)],
            None,
        );
        logged["size"] = json!(1024);
        logged["connections_each"] = json!(32);
        let mut usage = crate::side::summary(
            &crate::side::COMPARISONS[2],
            vec![side(10.0, 10.3), side(10.0, 10.4), side(10.0, 10.3)],
            None,
        );
        usage["size"] = json!(1024);
        r["side_by_side"] = json!([logged, usage]);
        let md = markdown(&r, "x");
        assert!(md.contains("## Side by side"), "{md}");
        assert!(md.contains("| 10.00 → 10.20, 20.00 → 20.80, 10.00 → 10.10 | +2.0 %, +4.0 %, +1.0 % | **+2.0 %** | ≤ 3 % | met |"), "{md}");
        assert!(
            md.contains("(`full-logged` vs `full-quiet`) | 1 KiB +2.0 % side by side | met |"),
            "{md}"
        );
        assert!(
            md.contains("(`full` vs `full-untracked`) | 1 KiB +3.0 % side by side | **not met** |"),
            "{md}"
        );
        // A log sent to /dev/null measures only part of the cost: shown, not judged.
        r["access_log"] = json!("/dev/null");
        let md = markdown(&r, "x");
        assert!(
            md.contains("| **+2.0 %** | ≤ 3 % | not judged (`--access-log`) |"),
            "{md}"
        );
        assert!(
            md.contains(
                "(`full-logged` vs `full-quiet`) | 1 KiB +2.0 % side by side | not judged (access log to /dev/null) |"
            ),
            "{md}"
        );
        assert!(
            md.contains("(`full` vs `full-untracked`) | 1 KiB +3.0 % side by side | **not met** |"),
            "{md}"
        );
    }

    #[test]
    fn skipped_https_scenarios_say_why() {
        let mut r = results();
        r["runs"] = json!([
            run(1, "nginx", "nginx", None, 16.0),
            run(2, "shardgate", "bare", None, 15.0)
        ]);
        r["tls"] = json!({"skipped": "HTTPS scenarios skipped: no listener"});
        let md = markdown(&r, "x");
        assert!(md.contains("Not measured: HTTPS scenarios skipped: no listener"));
        assert!(md.contains("(issue 10) | – | not measured |"));
    }
}
