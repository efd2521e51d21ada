//! The `bench/run` driver: starts the upstream, shardgate in each scenario and the nginx
//! baseline, measures them with wrk (plain HTTP) and `tls_load` (the HTTPS scenarios: keep-
//! alive requests and one full handshake per request, both proxies serving the same ECDSA
//! P-256 certificate) in interleaved rounds, measures idle keep-alive connection memory and
//! admin write-to-live latency, and writes the report (Markdown on stdout and in the results
//! directory, JSON, SVG percentile plots).
//!
//! `bench/run` (the shell script beside this crate) builds the binaries, installs wrk and
//! nginx when missing, raises the open-files limit and then runs this program; see
//! bench/README.md for the flags. It exits non-zero only when the harness itself breaks
//! (a process does not start, a configured route does not answer 200, wrk prints nothing),
//! never because of the numbers.

mod load;
mod report;
mod scaling;
mod side;
mod sys;
mod targets;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shardgate_bench::cli::num;
use shardgate_bench::tls::{self, BenchPki, PkiFiles, TicketCounter};

use targets::{Nginx, Shardgate, TlsMode};

#[derive(Debug, Clone)]
pub struct Config {
    pub smoke: bool,
    pub proxy_cpus: Vec<usize>,
    pub load_cpus: Vec<usize>,
    pub workers: usize,
    /// `--workers 1,2,4`: more than one count is a scaling run (`scaling.rs`).
    pub worker_counts: Vec<usize>,
    pub duration: u64,
    pub warmup: u64,
    pub rounds: usize,
    pub connections: usize,
    pub threads: usize,
    pub sizes: Vec<usize>,
    pub scenarios: Vec<String>,
    pub rules: usize,
    pub keys: usize,
    pub idle_conns: usize,
    pub admin_keys: usize,
    pub admin_writes: usize,
    /// `--ai on|off`: the AI gateway's cost (`ai_bench`).
    pub ai: bool,
    pub out: PathBuf,
    pub bin_dir: PathBuf,
    pub wrk: PathBuf,
    pub nginx: PathBuf,
    pub build_seconds: Option<f64>,
    pub from_json: Option<PathBuf>,
    pub quiet_wait: u64,
    /// `--access-log PATH`: where `full-logged` writes (default: the run's work directory).
    pub access_log: Option<PathBuf>,
    /// `--twin-bin PATH`: the shardgate binary the `*-twin` scenarios run (default: the
    /// same), so that their side-by-side runs with their own scenario compare two builds.
    pub twin_bin: Option<PathBuf>,
}

const USAGE: &str = "\
usage: bench/run [--smoke] [flags]   (this binary: bench_run, started by bench/run)

  --smoke               tiny durations, one round, results to target/bench-smoke/ (CI)
  --proxy-cpus LIST     CPUs for the proxy under test (default: first half; CPU 0 on 2 cores)
  --load-cpus LIST      CPUs for wrk and the upstream (default: the rest; CPU 1 on 2 cores)
  --workers N[,N...]    shardgate workers = nginx worker_processes (default: # proxy CPUs);
                        a list (e.g. 1,2,4,8,14) runs `bare` once per count on the first N
                        proxy CPUs and writes a scaling table (<date>-<host>-scaling.md)
  --duration SECS       measured seconds per run (default 8; smoke 1)
  --warmup SECS         warm-up seconds per target and body size (default 2; smoke 1)
  --rounds N            rounds of (nginx, scenario) pairs (default 3; smoke 1)
  --connections N       wrk connections (default 64)
  --threads N           wrk threads (default: # load CPUs)
  --sizes LIST          response body sizes in bytes (default 1024,16384)
  --scenarios LIST      shardgate scenarios (default bare,auth,auth+ratelimit,full,https,
                        https-handshake,h2,bare-epoll,full-epoll,full-quiet,full-logged,
                        full-untracked;
                        https* and h2 over TLS 1.3 at the first size, h2 with h2load -c 10
                        -m 100; *-epoll on the epoll driver, the others on io_uring;
                        full-quiet without request metrics, full-logged with the access log,
                        full-untracked without per-key usage tracking; opt-in:
                        full-quiet-twin, a second full-quiet whose side-by-side run with
                        full-quiet measures the method's own bias; full-logged-twin,
                        full-epoll-twin and h2-twin, the same for full-logged,
                        full-epoll and h2)
  --rules N             rules in the `full` scenario (default 100)
  --keys N              API keys in the `full` scenario (default 10000)
  --idle-conns N        idle keep-alive connections for the memory test (default 10000)
  --admin-keys N        keys present for admin write-to-live (default 100000)
  --admin-writes N      admin writes timed (default 1000; smoke 200)
  --ai on|off           the AI gateway's cost: SSE relay and chat completions through an
                        AI service against the plain proxy path (ai_bench; default on)
  --out DIR             results directory (default bench/results; smoke target/bench-smoke)
  --bin-dir DIR         where shardgate, upstream and admin_write are (default: beside this)
  --wrk PATH, --nginx PATH
  --quiet-wait SECS     on a shared machine, wait before a run while other processes use
                        > 0.15 CPU, at most this many seconds in all (default 240; smoke 0)
  --from-json FILE      only re-render the report (Markdown, SVG) from a results JSON
  --access-log PATH     where full-logged writes its access log (default: a file in the
                        run's temporary directory; /dev/null leaves the file system out)
  --twin-bin PATH       the shardgate binary the *-twin scenarios run (default: the
                        same one): side by side with full-quiet, full-logged,
                        full-epoll or h2 they
                        compare two builds (A/B)
";

fn parse_args() -> Result<Config, String> {
    parse_args_from(std::env::args().skip(1).collect())
}

fn parse_args_from(argv: Vec<String>) -> Result<Config, String> {
    let smoke = argv.iter().any(|a| a == "--smoke");
    let allowed = sys::allowed_cpus();
    let (default_proxy, default_load) = if allowed.len() >= 2 {
        let half = allowed.len() / 2;
        (allowed[..half].to_vec(), allowed[half..].to_vec())
    } else {
        (allowed.clone(), allowed.clone())
    };
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target/release"));
    let mut c = Config {
        smoke,
        proxy_cpus: default_proxy,
        load_cpus: default_load,
        workers: 0,
        worker_counts: Vec::new(),
        duration: if smoke { 1 } else { 8 },
        warmup: if smoke { 1 } else { 2 },
        rounds: if smoke { 1 } else { 3 },
        connections: 64,
        threads: 0,
        sizes: vec![1024, 16384],
        // Every scenario but the A/A twins (checks of the side-by-side method, asked for
        // by name).
        scenarios: targets::scenarios(0, 0)
            .iter()
            .map(|s| s.name.to_string())
            .filter(|name| !targets::is_twin(name))
            .collect(),
        rules: 100,
        keys: 10_000,
        idle_conns: 10_000,
        admin_keys: 100_000,
        admin_writes: if smoke { 200 } else { 1_000 },
        ai: true,
        out: PathBuf::from(if smoke {
            "target/bench-smoke"
        } else {
            "bench/results"
        }),
        bin_dir: exe_dir,
        wrk: PathBuf::from("wrk"),
        nginx: PathBuf::from("nginx"),
        build_seconds: None,
        from_json: None,
        quiet_wait: if smoke { 0 } else { 240 },
        access_log: None,
        twin_bin: None,
    };
    let mut it = argv.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--smoke" => {}
            "--proxy-cpus" => c.proxy_cpus = sys::parse_cpu_list(&value()?)?,
            "--load-cpus" => c.load_cpus = sys::parse_cpu_list(&value()?)?,
            "--workers" => {
                c.worker_counts = value()?
                    .split(',')
                    .map(|s| num(&flag, s.trim().to_string()))
                    .collect::<Result<_, _>>()?;
                c.workers = c.worker_counts.first().copied().unwrap_or(0);
            }
            "--duration" => c.duration = num(&flag, value()?)?,
            "--warmup" => c.warmup = num(&flag, value()?)?,
            "--rounds" => c.rounds = num(&flag, value()?)?,
            "--connections" => c.connections = num(&flag, value()?)?,
            "--threads" => c.threads = num(&flag, value()?)?,
            "--sizes" => {
                c.sizes = value()?
                    .split(',')
                    .map(|s| num(&flag, s.trim().to_string()))
                    .collect::<Result<_, _>>()?
            }
            "--scenarios" => {
                c.scenarios = value()?.split(',').map(|s| s.trim().to_string()).collect()
            }
            "--rules" => c.rules = num(&flag, value()?)?,
            "--keys" => c.keys = num(&flag, value()?)?,
            "--idle-conns" => c.idle_conns = num(&flag, value()?)?,
            "--admin-keys" => c.admin_keys = num(&flag, value()?)?,
            "--admin-writes" => c.admin_writes = num(&flag, value()?)?,
            "--ai" => {
                c.ai = match value()?.as_str() {
                    "on" => true,
                    "off" => false,
                    other => return Err(format!("--ai: {other:?} is neither on nor off")),
                }
            }
            "--out" => c.out = PathBuf::from(value()?),
            "--bin-dir" => c.bin_dir = PathBuf::from(value()?),
            "--wrk" => c.wrk = PathBuf::from(value()?),
            "--nginx" => c.nginx = PathBuf::from(value()?),
            "--build-seconds" => c.build_seconds = Some(num(&flag, value()?)?),
            "--from-json" => c.from_json = Some(PathBuf::from(value()?)),
            "--quiet-wait" => c.quiet_wait = num(&flag, value()?)?,
            "--access-log" => c.access_log = Some(PathBuf::from(value()?)),
            "--twin-bin" => c.twin_bin = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    if c.workers == 0 {
        c.workers = c.proxy_cpus.len();
    }
    if c.threads == 0 {
        c.threads = c.load_cpus.len().max(1);
    }
    let known: Vec<&str> = targets::scenarios(0, 0).iter().map(|s| s.name).collect();
    if let Some(bad) = c.scenarios.iter().find(|s| !known.contains(&s.as_str())) {
        return Err(format!(
            "unknown scenario {bad:?}; known: {}",
            known.join(",")
        ));
    }
    if c.duration == 0 || c.rounds == 0 || c.sizes.is_empty() || c.connections == 0 {
        return Err("--duration, --rounds, --connections and --sizes must be positive".into());
    }
    let asked = |name: &str| c.scenarios.iter().any(|s| s == name);
    // The twins are the candidates of the comparisons without a limit (A/A, or A/B with
    // --twin-bin).
    let mut pairs = side::COMPARISONS.iter().filter(|p| p.limit.is_none());
    if c.twin_bin.is_some() && !pairs.any(|p| asked(p.baseline) && asked(p.candidate)) {
        let names: Vec<String> = side::COMPARISONS
            .iter()
            .filter(|p| p.limit.is_none())
            .map(|p| format!("{},{}", p.baseline, p.candidate))
            .collect();
        return Err(format!(
            "--twin-bin is the binary of the twin scenarios, compared side by side with \
             their own: add one pair with --scenarios: {}",
            names.join(" or ")
        ));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_twin_binary_needs_the_pair_it_is_compared_in() {
        let err = parse_args_from(args(&["--twin-bin", "/tmp/other"]))
            .expect_err("the default scenarios have no twin");
        assert!(err.contains("full-quiet,full-quiet-twin"), "{err}");
        let with_twin = |scenarios: &str| {
            parse_args_from(args(&[
                "--twin-bin",
                "/tmp/other",
                "--scenarios",
                scenarios,
            ]))
        };
        for pair in [
            "full-quiet,full-quiet-twin",
            "full-logged,full-logged-twin",
            "full-epoll,full-epoll-twin",
        ] {
            let c = with_twin(pair).expect("the pair is asked for");
            assert_eq!(c.twin_bin, Some(PathBuf::from("/tmp/other")), "{pair}");
        }
        let err =
            with_twin("full-quiet,full-logged-twin").expect_err("a twin without its own scenario");
        assert!(err.contains("full-logged,full-logged-twin"), "{err}");
    }
}

fn main() {
    let config = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench_run: {e}");
            std::process::exit(2);
        }
    };
    let result = match &config.from_json {
        Some(path) => rerender(path),
        None if config.worker_counts.len() > 1 => scaling::run(&config, &config.worker_counts),
        None => run(&config),
    };
    if let Err(e) = result {
        eprintln!("bench_run: harness failure: {e}");
        std::process::exit(1);
    }
}

fn rerender(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let results: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or("bad file name")?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let md = report::write_all(&results, dir, stem, false)?;
    println!("{md}");
    Ok(())
}

/// The proxy behind a [`Target`].
#[derive(Debug, Clone, Copy)]
pub enum Proxy<'a> {
    Nginx(&'a Nginx),
    Shardgate(&'a Shardgate),
}

/// Something that serves proxied requests: nginx (plain, or the HTTPS nginx in one of the
/// two TLS modes) or one shardgate scenario.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    proxy: Proxy<'a>,
    /// Where the load goes: the plain or the HTTPS listener.
    addr: SocketAddr,
    tls: Option<TlsMode>,
}

impl<'a> Target<'a> {
    fn nginx(n: &'a Nginx) -> Target<'a> {
        Target {
            proxy: Proxy::Nginx(n),
            addr: n.addr,
            tls: None,
        }
    }

    /// The HTTPS nginx, as the baseline of the `mode` scenario.
    fn nginx_tls(n: &'a Nginx, mode: TlsMode) -> Result<Target<'a>, String> {
        if !n.tls {
            return Err("the HTTPS baseline is a plain nginx".into());
        }
        Ok(Target {
            proxy: Proxy::Nginx(n),
            addr: n.addr,
            tls: Some(mode),
        })
    }

    fn shardgate(s: &'a Shardgate) -> Result<Target<'a>, String> {
        let addr = match s.scenario.tls {
            None => s.proxy,
            Some(_) => s
                .tls
                .ok_or_else(|| format!("shardgate `{}` has no HTTPS listener", s.scenario.name))?,
        };
        Ok(Target {
            proxy: Proxy::Shardgate(s),
            addr,
            tls: s.scenario.tls,
        })
    }

    fn name(&self) -> String {
        match (self.proxy, self.tls) {
            (Proxy::Nginx(_), None) => "nginx".into(),
            (Proxy::Nginx(_), Some(mode)) => mode.scenario().into(),
            (Proxy::Shardgate(s), _) => s.scenario.name.into(),
        }
    }
    fn proxy(&self) -> &'static str {
        match self.proxy {
            Proxy::Nginx(_) => "nginx",
            Proxy::Shardgate(_) => "shardgate",
        }
    }
    fn shardgate_scenario(&self) -> Option<&'a Shardgate> {
        match self.proxy {
            Proxy::Nginx(_) => None,
            Proxy::Shardgate(s) => Some(s),
        }
    }
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn pids(&self) -> Vec<u32> {
        match self.proxy {
            Proxy::Nginx(n) => sys::proc_tree(n.process.pid()),
            Proxy::Shardgate(s) => vec![s.process.pid()],
        }
    }
    fn headers(&self, with_key: bool) -> Vec<(String, String)> {
        let mut h = vec![("Host".to_string(), tls::SERVER_NAME.to_string())];
        if with_key
            && let Some(s) = self.shardgate_scenario()
            && let Some(k) = &s.key
        {
            h.push(("X-API-Key".into(), k.clone()));
        }
        h
    }
    /// Body sizes this target is measured at: all for plain HTTP, the first for HTTPS
    /// (the TLS scenarios measure the handshake and the record layer at 1 KiB).
    fn sizes<'c>(&self, config: &'c Config) -> &'c [usize] {
        match self.tls {
            None => &config.sizes,
            Some(_) => &config.sizes[..1],
        }
    }
}

fn path_for(size: usize) -> String {
    format!("/bench/{size}")
}

pub fn size_label(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

struct Progress {
    start: Instant,
}

impl Progress {
    fn say(&self, msg: &str) {
        eprintln!("[{:>4}s] {msg}", self.start.elapsed().as_secs());
    }
}

fn run(config: &Config) -> Result<(), String> {
    let started = Instant::now();
    let progress = Progress { start: started };
    let date = time::OffsetDateTime::now_utc();
    let work = tempfile::Builder::new()
        .prefix("shardgate-bench-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let work_dir = work.path();
    let bin = |name: &str| config.bin_dir.join(name);
    let machine = sys::machine(
        &config.nginx.to_string_lossy(),
        &config.wrk.to_string_lossy(),
    );
    let mut notes: Vec<String> = Vec::new();
    if config
        .proxy_cpus
        .iter()
        .any(|c| config.load_cpus.contains(c))
    {
        notes.push(format!(
            "proxy CPUs {} and load CPUs {} overlap: the proxy competes with wrk and the upstream; \
             compare CPU µs/request rather than requests/s",
            sys::cpu_list_string(&config.proxy_cpus),
            sys::cpu_list_string(&config.load_cpus)
        ));
    }
    progress.say(&format!(
        "proxy CPUs {} ({} workers), load CPUs {} (wrk -t{} -c{}), {} round(s) x {} s, sizes {:?}",
        sys::cpu_list_string(&config.proxy_cpus),
        config.workers,
        sys::cpu_list_string(&config.load_cpus),
        config.threads,
        config.connections,
        config.rounds,
        config.duration,
        config.sizes
    ));

    // The upstream: one thread per load CPU (one on the 2-core layout), so that it keeps up
    // with the proxy at every worker count of a scaling run.
    let upstream = targets::start_upstream(
        &bin("upstream"),
        &config.load_cpus,
        &config.sizes,
        &work_dir.join("upstream.log"),
    )?;
    for &size in &config.sizes {
        let r = load::get(
            upstream.addr,
            &path_for(size),
            &[("Host".into(), "origin".into())],
        )?;
        if r.status != 200 || r.body_len != size {
            return Err(format!(
                "upstream answered {} with {} bytes for {size}",
                r.status, r.body_len
            ));
        }
    }
    progress.say(&format!(
        "upstream on {} ({})",
        upstream.addr, upstream.driver
    ));

    // Idle connections need one descriptor each here and in the proxy.
    let nofile = sys::nofile_limit();
    let mut idle_conns = config.idle_conns;
    if (idle_conns as u64) + 512 > nofile {
        let fit = nofile.saturating_sub(512) as usize;
        notes.push(format!(
            "open-files limit {nofile}: idle-connection test uses {fit} connections instead of {idle_conns} \
             (raise it with `ulimit -n`)"
        ));
        idle_conns = fit;
    }

    let all = targets::scenarios(config.rules, config.keys);
    let mut wanted: Vec<_> = all
        .iter()
        .filter(|s| config.scenarios.iter().any(|n| n == s.name))
        .cloned()
        .collect();

    // HTTPS: both proxies serve one certificate made for this run; the scenarios are
    // skipped (with a note saying why) where either proxy cannot serve TLS.
    let has_tls_listener = tls::shardgate_has_tls_listener(&bin("shardgate"));
    let mut tls_setup: Option<(BenchPki, PkiFiles)> = None;
    let mut tls_skipped: Option<String> = None;
    if wanted.iter().any(|s| s.tls.is_some()) {
        let missing = if !targets::nginx_has_ssl(&config.nginx) {
            Some(format!(
                "{} was built without the SSL module (`nginx -V` shows no --with-http_ssl_module)",
                config.nginx.display()
            ))
        } else if !has_tls_listener {
            Some(
                "this shardgate build has no HTTPS listener (`shardgate --help` shows no \
                 --tls-listen)"
                    .to_string(),
            )
        } else {
            None
        };
        match missing {
            Some(why) => {
                let skipped: Vec<&str> = wanted
                    .iter()
                    .filter(|s| s.tls.is_some())
                    .map(|s| s.name)
                    .collect();
                let msg = format!("HTTPS scenarios ({}) skipped: {why}", skipped.join(", "));
                progress.say(&msg);
                notes.push(msg.clone());
                tls_skipped = Some(msg);
                wanted.retain(|s| s.tls.is_none());
            }
            None => {
                let pki = BenchPki::generate(&[tls::SERVER_NAME])?;
                let dir = work_dir.join("tls");
                std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                let files = pki.write(&dir)?;
                tls_setup = Some((pki, files));
            }
        }
    }
    // HTTP/2 needs h2load (Debian: nghttp2-client).
    if wanted.iter().any(|s| s.tls == Some(TlsMode::H2))
        && Command::new("h2load").arg("--version").output().is_err()
    {
        let msg =
            "scenario h2 skipped: h2load is not installed (Debian: nghttp2-client)".to_string();
        progress.say(&msg);
        notes.push(msg.clone());
        wanted.retain(|s| s.tls != Some(TlsMode::H2));
        tls_skipped.get_or_insert(msg);
    }
    if wanted.is_empty() {
        return Err(match &tls_skipped {
            Some(why) => format!("no scenario left to run: {why}"),
            None => "no scenario".into(),
        });
    }
    let tls_client = match &tls_setup {
        Some((pki, _)) => Some(load::TlsClient {
            config: Arc::new(tls::client_config(
                &pki.ca_pem,
                Arc::new(TicketCounter::default()),
            )?),
            name: tls::server_name(tls::SERVER_NAME)?,
        }),
        None => None,
    };
    // The idle test measures plain keep-alive connections: a plain scenario's
    // configuration (`bare` when only HTTPS scenarios were asked for).
    let idle_scenario = wanted
        .iter()
        .find(|s| s.tls.is_none())
        .or_else(|| all.first())
        .ok_or("no scenario")?;

    // The idle-connection test gets its own fresh processes (shardgate `bare` and nginx),
    // stopped afterwards: the memory they keep would otherwise show in the load runs' RSS.
    let mut idle = Vec::new();
    if idle_conns > 0 {
        let idle_dir = work_dir.join("idle");
        std::fs::create_dir_all(&idle_dir).map_err(|e| format!("{}: {e}", idle_dir.display()))?;
        let sg = targets::start_shardgate(
            &targets::ShardgateOptions {
                binary: &bin("shardgate"),
                cpus: &config.proxy_cpus,
                workers: config.workers,
                work_dir: &idle_dir,
                access_log: None,
                upstream: upstream.addr,
                has_tls_listener,
                pki: None,
            },
            idle_scenario,
        )?;
        idle.push(idle_test(
            &Target::shardgate(&sg)?,
            config.sizes[0],
            idle_conns,
            &progress,
        )?);
        drop(sg);
        let ng = targets::start_nginx(&targets::NginxOptions {
            binary: &config.nginx,
            cpus: &config.proxy_cpus,
            workers: config.workers,
            work_dir: &idle_dir,
            upstream: upstream.addr,
            connections: idle_conns,
            tls: None,
        })?;
        idle.push(idle_test(
            &Target::nginx(&ng),
            config.sizes[0],
            idle_conns,
            &progress,
        )?);
        drop(ng);
    }

    let nginx_options = |tls| targets::NginxOptions {
        binary: &config.nginx,
        cpus: &config.proxy_cpus,
        workers: config.workers,
        work_dir,
        upstream: upstream.addr,
        connections: config.connections,
        tls,
    };
    let nginx = targets::start_nginx(&nginx_options(None))?;
    progress.say(&format!("nginx on {}", nginx.addr));
    let nginx_https = match &tls_setup {
        Some((_, files)) => {
            let n = targets::start_nginx(&nginx_options(Some(files)))?;
            progress.say(&format!("nginx (HTTPS) on {}", n.addr));
            Some(n)
        }
        None => None,
    };

    let sg_opts = targets::ShardgateOptions {
        binary: &bin("shardgate"),
        cpus: &config.proxy_cpus,
        workers: config.workers,
        work_dir,
        access_log: config.access_log.as_deref(),
        upstream: upstream.addr,
        has_tls_listener,
        pki: tls_setup.as_ref().map(|(pki, _)| pki),
    };
    let mut shardgates: Vec<Shardgate> = Vec::new();
    for s in &wanted {
        progress.say(&format!(
            "configuring shardgate `{}` ({} rules, {} keys{}) through the admin API",
            s.name,
            s.rules,
            if s.auth { s.keys } else { 0 },
            if s.tls.is_some() {
                ", the run's certificate"
            } else {
                ""
            }
        ));
        let sg = match &config.twin_bin {
            Some(twin) if targets::is_twin(s.name) => {
                progress.say(&format!("  running {}", twin.display()));
                let opts = targets::ShardgateOptions {
                    binary: twin,
                    ..sg_opts
                };
                targets::start_shardgate(&opts, s)?
            }
            _ => targets::start_shardgate(&sg_opts, s)?,
        };
        if s.auth && s.keys > 1 {
            progress.say(&format!(
                "  {} keys created in {:.1} s ({:.2} ms per key, each an fsynced admin write)",
                s.keys,
                sg.keys_seconds,
                sg.keys_seconds * 1000.0 / s.keys as f64
            ));
        }
        shardgates.push(sg);
    }
    // The drivers the workers reported, per distinct set (`*-epoll` scenarios differ).
    let mut by_driver: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    for sg in &shardgates {
        let reported = targets::worker_drivers(&sg.log);
        progress.say(&format!(
            "shardgate {} workers: {reported:?}",
            sg.scenario.name
        ));
        if sg.scenario.epoll != reported.iter().all(|d| d == "epoll") {
            return Err(format!(
                "shardgate {}: workers run on {reported:?}",
                sg.scenario.name
            ));
        }
        by_driver
            .entry(reported.join(", "))
            .or_default()
            .push(sg.scenario.name);
    }
    let drivers: Vec<String> = by_driver
        .iter()
        .map(|(driver, names)| format!("{driver} for {}", names.join(" ")))
        .collect();

    // Every scenario is measured right after its own baseline: plain nginx for the plain
    // scenarios, nginx's HTTPS server (same mode) for the HTTPS ones.
    let mut pairs: Vec<(Target, Target)> = Vec::new();
    for sg in &shardgates {
        let candidate = Target::shardgate(sg)?;
        let baseline = match (sg.scenario.tls, &nginx_https) {
            (None, _) => Target::nginx(&nginx),
            (Some(mode), Some(n)) => Target::nginx_tls(n, mode)?,
            (Some(_), None) => return Err("HTTPS scenario without the HTTPS nginx".into()),
        };
        pairs.push((baseline, candidate));
    }
    // Every distinct target once, baselines first (for the checks, warm-up and memory).
    let mut targets_list: Vec<Target> = Vec::new();
    for (b, _) in &pairs {
        if !targets_list
            .iter()
            .any(|t| t.name() == b.name() && t.proxy() == b.proxy())
        {
            targets_list.push(*b);
        }
    }
    targets_list.extend(pairs.iter().map(|(_, c)| *c));

    // Every target must answer the benchmark request correctly before it is measured.
    let mut rate_limit_headers = None;
    let mut tls_checks: Vec<Value> = Vec::new();
    for t in &targets_list {
        for &size in t.sizes(config) {
            let r = match (t.tls, &tls_client) {
                (None, _) => load::get(t.addr(), &path_for(size), &t.headers(true))?,
                (Some(_), Some(client)) => {
                    let (r, negotiated) =
                        load::tls_get(client, t.addr(), &path_for(size), &t.headers(true))
                            .map_err(|e| format!("{} ({}): {e}", t.name(), t.proxy()))?;
                    if negotiated.version != "TLSv1_3" {
                        return Err(format!(
                            "{} ({}) negotiated {} instead of TLS 1.3",
                            t.name(),
                            t.proxy(),
                            negotiated.version
                        ));
                    }
                    tls_checks.push(json!({
                        "proxy": t.proxy(),
                        "scenario": t.name(),
                        "version": negotiated.version,
                        "cipher_suite": negotiated.cipher_suite,
                        "kx_group": negotiated.kx_group,
                        "handshake": negotiated.handshake,
                    }));
                    r
                }
                (Some(_), None) => return Err("HTTPS target without a TLS client".into()),
            };
            if r.status != 200 || r.body_len != size {
                return Err(format!(
                    "{} answered GET {} with {} and {} body bytes, expected 200 and {size}; \
                     the scenario is misconfigured",
                    t.name(),
                    path_for(size),
                    r.status,
                    r.body_len
                ));
            }
            if let Some(s) = t.shardgate_scenario() {
                if s.scenario.auth {
                    let anon = load::get(t.addr(), &path_for(size), &t.headers(false))?;
                    if anon.status != 401 {
                        notes.push(format!(
                            "WARNING: shardgate `{}` answered {} (not 401) without an API key",
                            s.scenario.name, anon.status
                        ));
                    }
                }
                if s.scenario.rate_limit && rate_limit_headers.is_none() {
                    rate_limit_headers = Some(
                        r.header("x-ratelimit-limit").is_some() || r.header("ratelimit").is_some(),
                    );
                }
            }
        }
    }
    for s in &shardgates {
        if s.scenario.keys > 1 && s.scenario.auth {
            notes.push(format!(
                "`{}`: {} keys created through the admin API in {:.1} s ({:.2} ms per fsynced write, one keep-alive connection)",
                s.scenario.name,
                report::group(s.scenario.keys as f64),
                s.keys_seconds,
                s.keys_seconds * 1000.0 / s.scenario.keys as f64
            ));
        }
    }

    let script = load::write_script(work_dir)?;
    let clk = sys::clk_tck();
    let tls_load_bin = bin("tls_load");
    let measure = |t: &Target, size: usize, seconds: u64| -> Result<Value, String> {
        let path = path_for(size);
        let headers = t.headers(true);
        let pids = t.pids();
        let host0 = sys::host_procs();
        let cpu0 = sys::cpu_times();
        let before = sys::sample(&pids);
        let t0 = Instant::now();
        let running = match (t.tls, &tls_setup) {
            (None, _) => load::WrkJob {
                wrk: &config.wrk,
                script: &script,
                cpus: &config.load_cpus,
                threads: config.threads,
                connections: config.connections,
                seconds,
                addr: t.addr(),
                path: &path,
                headers: &headers,
            }
            .spawn()?,
            // HTTP/2: h2load's 10 connections × 100 streams (issue 12's load).
            (Some(TlsMode::H2), Some(_)) => load::H2loadJob {
                cpus: &config.load_cpus,
                threads: config.threads,
                connections: 10,
                streams: 100,
                seconds,
                addr: t.addr(),
                path: &path,
                headers: &headers,
            }
            .spawn()?,
            (Some(mode), Some((_, files))) => load::TlsJob {
                binary: &tls_load_bin,
                ca: &files.ca,
                cpus: &config.load_cpus,
                threads: config.threads,
                connections: config.connections,
                seconds,
                addr: t.addr(),
                path: &path,
                headers: &headers,
                mode,
            }
            .spawn()?,
            (Some(_), None) => return Err("HTTPS target without a certificate".into()),
        };
        std::thread::sleep(Duration::from_millis(seconds * 500));
        let mid = sys::sample(&pids);
        let wrk = running.finish()?;
        let after = sys::sample(&pids);
        let cpu1 = sys::cpu_times();
        let host1 = sys::host_procs();
        let wall = t0.elapsed().as_secs_f64();
        let other_cpus = host0.foreign_ticks(&host1) as f64 / clk as f64 / wall;
        let (proxy_busy, proxy_steal) = cpu0.busy_between(&cpu1, &config.proxy_cpus);
        let (load_busy, _) = cpu0.busy_between(&cpu1, &config.load_cpus);
        let requests = wrk["requests"].as_u64().unwrap_or(0);
        let duration_s = wrk["duration_us"].as_f64().unwrap_or(0.0) / 1e6;
        let cpu_s = after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / clk as f64;
        let pct = |q: f64| -> f64 {
            wrk["percentiles"]
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .find(|p| p[0].as_f64().is_some_and(|x| (x - q).abs() < 1e-6))
                })
                .and_then(|p| p[1].as_f64())
                .unwrap_or(f64::NAN)
        };
        let errors: u64 = ["connect", "read", "write", "status", "timeout", "tls"]
            .iter()
            .map(|k| wrk["errors"][k].as_u64().unwrap_or(0))
            .sum();
        Ok(json!({
            "proxy": t.proxy(),
            "scenario": t.name(),
            "tls_mode": t.tls.map(TlsMode::label),
            "size": size,
            "requests": requests,
            "duration_s": duration_s,
            "rps": if duration_s > 0.0 { requests as f64 / duration_s } else { 0.0 },
            "p50_us": pct(50.0),
            "p75_us": pct(75.0),
            "p90_us": pct(90.0),
            "p99_us": pct(99.0),
            "p999_us": pct(99.9),
            "p9999_us": pct(99.99),
            "max_us": wrk["max_us"],
            "mean_us": wrk["mean_us"],
            "errors": errors,
            "wrk_errors": wrk["errors"],
            "bytes_per_response": if requests > 0 { wrk["bytes"].as_f64().unwrap_or(0.0) / requests as f64 } else { 0.0 },
            "proxy_cpu_s": cpu_s,
            "cpu_us_per_req": if requests > 0 { cpu_s * 1e6 / requests as f64 } else { f64::NAN },
            "proxy_cpus_busy": proxy_busy,
            "proxy_cpus_steal": proxy_steal,
            "load_cpus_busy": load_busy,
            "other_cpus": other_cpus,
            "rss_kib": mid.rss_kib,
            "pss_kib": mid.pss_kib,
            "curve": wrk["percentiles"],
            "tls": wrk["tls"],
        }))
    };

    // Warm-up: every target at every size it is measured at, not recorded.
    progress.say(&format!(
        "warming up ({} s per target and size)",
        config.warmup
    ));
    if config.warmup > 0 {
        for &size in &config.sizes {
            for t in targets_list
                .iter()
                .filter(|t| t.sizes(config).contains(&size))
            {
                measure(t, size, config.warmup)?;
            }
        }
    }

    // Rounds: per body size, each scenario right after its baseline's run (A B A C ...),
    // so every scenario has its own paired baseline and drift cancels in the ratios.
    let mut runs: Vec<Value> = Vec::new();
    let mut seq = 0;
    let mut quiet_budget = Duration::from_secs(config.quiet_wait);
    let mut waited_total = Duration::ZERO;
    for round in 1..=config.rounds {
        for &size in &config.sizes {
            for (baseline, candidate) in pairs
                .iter()
                .filter(|(_, c)| c.sizes(config).contains(&size))
            {
                for (t, is_candidate) in [(baseline, false), (candidate, true)] {
                    let waited = wait_for_quiet(&mut quiet_budget, clk);
                    waited_total += waited;
                    let mut r = measure(t, size, config.duration)?;
                    r["waited_for_quiet_s"] = json!(waited.as_secs_f64());
                    seq += 1;
                    r["round"] = json!(round);
                    r["seq"] = json!(seq);
                    if is_candidate {
                        r["paired_nginx_seq"] = json!(seq - 1);
                    }
                    progress.say(&format!(
                        "round {round}/{} {:>6} {:<9} {:<15} {:>9.0} req/s  p99 {:>6.2} ms  {:>7.2} µs CPU/req  proxy CPUs {:>3.0}% busy, load CPUs {:>3.0}%, others {:.2} CPUs{}",
                        config.rounds,
                        size_label(size),
                        t.proxy(),
                        t.name(),
                        r["rps"].as_f64().unwrap_or(0.0),
                        r["p99_us"].as_f64().unwrap_or(0.0) / 1000.0,
                        r["cpu_us_per_req"].as_f64().unwrap_or(0.0),
                        r["proxy_cpus_busy"].as_f64().unwrap_or(0.0) * 100.0,
                        r["load_cpus_busy"].as_f64().unwrap_or(0.0) * 100.0,
                        r["other_cpus"].as_f64().unwrap_or(0.0),
                        match r["errors"].as_u64() {
                            Some(0) | None => String::new(),
                            Some(n) => format!("  {n} ERRORS"),
                        }
                    ));
                    runs.push(r);
                }
            }
        }
    }

    // Side by side (issues 13 and 14, and A/Bs of two builds): each feature's two
    // configurations at the same time, when both were asked for (the first size).
    let mut side_by_side: Vec<Value> = Vec::new();
    for c in &side::COMPARISONS {
        let find = |name: &str| shardgates.iter().find(|s| s.scenario.name == name);
        let (Some(b), Some(k)) = (find(c.baseline), find(c.candidate)) else {
            continue;
        };
        let side_of = |s: &Shardgate| -> Result<side::Side, String> {
            let t = Target::shardgate(s)?;
            Ok(side::Side {
                addr: t.addr(),
                headers: t.headers(true),
                pid: s.process.pid(),
                h2: s.scenario.tls == Some(TlsMode::H2),
            })
        };
        let (b, k) = (side_of(b)?, side_of(k)?);
        let size = config.sizes[0];
        let path = path_for(size);
        let side_load = side::Load {
            wrk: &config.wrk,
            script: &script,
            cpus: &config.load_cpus,
            connections: (config.connections / 2).max(1),
            seconds: config.duration,
            path: &path,
        };
        let mut rounds = Vec::new();
        for round in 1..=config.rounds {
            waited_total += wait_for_quiet(&mut quiet_budget, clk);
            let (rb, rk) = side::round(&side_load, &b, &k, round % 2 == 1)?;
            progress.say(&format!(
                "side by side {round}/{} {:>6} {:<15} {:>7.2} µs CPU/req ({:>6.0} req/s)  {:<15} {:>7.2} µs CPU/req ({:>6.0} req/s)  {:+.1} %",
                config.rounds,
                size_label(size),
                c.baseline,
                rb["cpu_us_per_req"].as_f64().unwrap_or(f64::NAN),
                rb["rps"].as_f64().unwrap_or(0.0),
                c.candidate,
                rk["cpu_us_per_req"].as_f64().unwrap_or(f64::NAN),
                rk["rps"].as_f64().unwrap_or(0.0),
                side::added(&rb, &rk) * 100.0
            ));
            // The access-log writer thread's own CPU, when a side has one.
            let writer = |r: &Value| r["log_writer_us_per_req"].as_f64().filter(|w| *w > 0.0);
            if writer(&rb).is_some() || writer(&rk).is_some() {
                progress.say(&format!(
                    "  of which the access-log writer thread: {} {:.3} µs/req, {} {:.3} µs/req",
                    c.baseline,
                    writer(&rb).unwrap_or(0.0),
                    c.candidate,
                    writer(&rk).unwrap_or(0.0),
                ));
            }
            rounds.push((rb, rk));
        }
        let mut summary = side::summary(c, rounds, config.twin_bin.as_deref());
        summary["size"] = json!(size);
        summary["connections_each"] = json!(side_load.connections);
        side_by_side.push(summary);
    }

    if let Some(path) = &config.access_log
        && wanted.iter().any(|s| s.observe == targets::Observe::Logged)
    {
        notes.push(format!(
            "`full-logged` wrote its access log to {} (--access-log)",
            path.display()
        ));
    }
    if waited_total >= Duration::from_secs(1) {
        notes.push(format!(
            "the harness waited {:.0} s in all for other processes on this machine to go quiet \
             before runs (--quiet-wait {}{})",
            waited_total.as_secs_f64(),
            config.quiet_wait,
            if quiet_budget.is_zero() {
                ", budget used up"
            } else {
                ""
            }
        ));
    }
    let mut memory_end = Vec::new();
    for t in &targets_list {
        let s = sys::sample(&t.pids());
        memory_end.push(json!({"proxy": t.proxy(), "scenario": t.name(), "rss_kib": s.rss_kib, "pss_kib": s.pss_kib}));
    }
    drop(pairs);
    drop(targets_list);
    drop(shardgates);
    drop(nginx);
    drop(nginx_https);
    drop(upstream);

    // `--admin-writes 0` (scaling runs) skips the phase.
    let admin = if config.admin_writes == 0 {
        json!({"skipped": true})
    } else {
        admin_write(config, &progress)
    };
    if let Some(e) = admin.get("error").and_then(Value::as_str) {
        notes.push(format!("admin write-to-live failed: {e}"));
    }
    let ai = if config.ai {
        ai_bench(config, &progress)
    } else {
        json!({"skipped": true})
    };
    if let Some(e) = ai.get("error").and_then(Value::as_str) {
        notes.push(format!("AI gateway bench failed: {e}"));
    }

    let results = json!({
        "schema": 1,
        "date": date.format(&time::format_description::well_known::Rfc3339).map_err(|e| e.to_string())?,
        "machine": machine,
        "config": {
            "smoke": config.smoke,
            "proxy_cpus": config.proxy_cpus,
            "load_cpus": config.load_cpus,
            "workers": config.workers,
            "duration_s": config.duration,
            "warmup_s": config.warmup,
            "rounds": config.rounds,
            "connections": config.connections,
            "threads": config.threads,
            "sizes": config.sizes,
            "scenarios": config.scenarios,
            "rules": config.rules,
            "keys": config.keys,
            "idle_conns": idle_conns,
            "admin_keys": config.admin_keys,
            "admin_writes": config.admin_writes,
            "ai": config.ai,
            "build_seconds": config.build_seconds,
        },
        "shardgate_workers": drivers,
        "upstream_driver": upstream_driver_note(),
        "rate_limiter_enforced": rate_limit_headers,
        "tls": {
            "skipped": tls_skipped,
            "certificate": tls_setup.as_ref().map(|_| "ECDSA P-256 (SHA-256), issued by the run's own CA (ECDSA P-256), SAN bench.localhost; chain sent: the certificate alone"),
            "client": "src/bin/tls_load.rs: rustls (ring), TLS 1.3 only, SNI bench.localhost, chain verified against the run's CA, no resumption",
            "checks": tls_checks,
        },
        "runs": runs,
        "side_by_side": side_by_side,
        "access_log": config.access_log.as_ref().map(|p| p.display().to_string()),
        "twin_bin": config.twin_bin.as_ref().map(|p| p.display().to_string()),
        "memory_end": memory_end,
        "idle": idle,
        "admin_write": admin,
        "ai": ai,
        "notes": notes,
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    let stem = format!(
        "{:04}-{:02}-{:02}-{}",
        date.year(),
        date.month() as u8,
        date.day(),
        sys::hostname()
    );
    std::fs::create_dir_all(&config.out).map_err(|e| format!("{}: {e}", config.out.display()))?;
    let md = report::write_all(&results, &config.out, &stem, true)?;
    println!("{md}");
    progress.say(&format!(
        "results: {}/{stem}.md, .json, -latency-*.svg",
        config.out.display()
    ));
    if let Some(e) = results["admin_write"]["error"].as_str() {
        return Err(format!("admin_write failed (report written anyway): {e}"));
    }
    if let Some(e) = results["ai"]["error"].as_str() {
        return Err(format!("ai_bench failed (report written anyway): {e}"));
    }
    Ok(())
}

/// Waits (within `budget`) until processes outside the harness use less than 0.15 CPU
/// over half a second; returns how long it waited.
fn wait_for_quiet(budget: &mut Duration, clk: u64) -> Duration {
    let start = Instant::now();
    while !budget.is_zero() {
        let t = Instant::now();
        let a = sys::host_procs();
        std::thread::sleep(Duration::from_millis(500));
        let b = sys::host_procs();
        let busy = a.foreign_ticks(&b) as f64 / clk as f64 / t.elapsed().as_secs_f64();
        if busy < 0.15 {
            break;
        }
        *budget = budget.saturating_sub(t.elapsed());
    }
    start.elapsed()
}

fn upstream_driver_note() -> &'static str {
    if std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").is_ok_and(|s| s.trim() != "0")
    {
        "epoll (io_uring disabled by sysctl)"
    } else {
        "monoio FusionDriver (io_uring when available)"
    }
}

/// Opens `count` idle keep-alive connections (one request each) to a fresh proxy and
/// measures its memory before and after.
fn idle_test(
    target: &Target,
    size: usize,
    count: usize,
    progress: &Progress,
) -> Result<Value, String> {
    let path = path_for(size);
    let headers = target.headers(true);
    // One request first so lazily built per-worker state exists before the baseline.
    load::get(target.addr(), &path, &headers)?;
    std::thread::sleep(Duration::from_millis(300));
    let pids = target.pids();
    let before = sys::sample(&pids);
    let t = Instant::now();
    let conns = load::open_idle(target.addr(), &path, &headers, count)
        .map_err(|e| format!("idle connections to {}: {e}", target.proxy()))?;
    let open_s = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(1000));
    let after = sys::sample(&target.pids());
    // Are they still open? A proxy that closed them would look cheap.
    let still_open = conns
        .iter()
        .filter(|c| {
            c.set_nonblocking(true).is_ok() && {
                let mut b = [0u8; 1];
                matches!(c.peek(&mut b), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
        })
        .count();
    drop(conns);
    let per_conn = |a: u64, b: u64| (a as f64 - b as f64) * 1024.0 / count as f64;
    let v = json!({
        "proxy": target.proxy(),
        "scenario": target.name(),
        "connections": count,
        "still_open": still_open,
        "open_seconds": open_s,
        "rss_before_kib": before.rss_kib,
        "rss_after_kib": after.rss_kib,
        "pss_before_kib": before.pss_kib,
        "pss_after_kib": after.pss_kib,
        "bytes_per_conn_rss": per_conn(after.rss_kib, before.rss_kib),
        "bytes_per_conn_pss": per_conn(after.pss_kib, before.pss_kib),
    });
    progress.say(&format!(
        "idle keep-alive: {} x{count} ({still_open} still open): RSS {} -> {} KiB = {:.0} B/connection",
        target.proxy(),
        before.rss_kib,
        after.rss_kib,
        v["bytes_per_conn_rss"].as_f64().unwrap_or(0.0)
    ));
    // Let the proxy notice the closes before the next phase.
    std::thread::sleep(Duration::from_millis(500));
    Ok(v)
}

/// Runs `ai_bench` (bench/src/bin/ai_bench.rs) on the same CPUs: its Markdown section goes
/// into the report as it is, its figures into the JSON.
fn ai_bench(config: &Config, progress: &Progress) -> Value {
    progress.say("AI gateway: SSE relay and chat completions, ai vs plain (ai_bench)");
    let json_path = std::env::temp_dir().join(format!("ai_bench-{}.json", std::process::id()));
    let mut cmd = Command::new(config.bin_dir.join("ai_bench"));
    cmd.arg("--binary")
        .arg(config.bin_dir.join("shardgate"))
        .args(["--proxy-cpus", &sys::cpu_list_string(&config.proxy_cpus)])
        .args(["--load-cpus", &sys::cpu_list_string(&config.load_cpus)])
        .args(["--workers", &config.workers.to_string()])
        .arg("--json")
        .arg(&json_path);
    if config.smoke {
        cmd.arg("--smoke");
    } else {
        cmd.args(["--rounds", &config.rounds.to_string()]);
    }
    let out = match cmd.stderr(Stdio::inherit()).output() {
        Ok(o) => o,
        Err(e) => return json!({"error": format!("cannot run ai_bench: {e}")}),
    };
    let markdown = String::from_utf8_lossy(&out.stdout).into_owned();
    let data = std::fs::read_to_string(&json_path)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok());
    let _ = std::fs::remove_file(&json_path);
    match (out.status.success(), data) {
        (true, Some(data)) => json!({"markdown": markdown, "data": data}),
        (true, None) => json!({"error": "ai_bench wrote no figures"}),
        (false, _) => json!({"error": format!("ai_bench exited {:?}", out.status.code())}),
    }
}

/// Runs `admin_write` (bench/src/bin/admin_write.rs) and parses its percentiles.
fn admin_write(config: &Config, progress: &Progress) -> Value {
    progress.say(&format!(
        "admin write-to-live: {} writes with {} keys present",
        config.admin_writes, config.admin_keys
    ));
    let out = Command::new(config.bin_dir.join("admin_write"))
        .arg("--binary")
        .arg(config.bin_dir.join("shardgate"))
        .args(["--keys", &config.admin_keys.to_string()])
        .args(["--writes", &config.admin_writes.to_string()])
        .args(["--workers", &config.workers.to_string()])
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => return json!({"error": format!("cannot run admin_write: {e}")}),
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return json!({"error": format!("admin_write exited {:?}: {}{}", out.status.code(), text, String::from_utf8_lossy(&out.stderr))});
    }
    let parse = |prefix: &str| -> Option<Value> {
        let line = text.lines().find(|l| l.trim_start().starts_with(prefix))?;
        let mut m = serde_json::Map::new();
        for part in line.split(':').nth(1)?.split('|') {
            let mut w = part.split_whitespace();
            let (name, value, unit) = (w.next()?, w.next()?, w.next()?);
            if unit != "ms" {
                return None;
            }
            m.insert(format!("{name}_ms"), json!(value.parse::<f64>().ok()?));
        }
        Some(Value::Object(m))
    };
    let (Some(end_to_end), Some(naive)) = (parse("POST /keys"), parse("baseline")) else {
        return json!({"error": format!("admin_write output not understood:\n{text}")});
    };
    progress.say(&format!("  {}", text.lines().nth(1).unwrap_or("").trim()));
    json!({
        "keys": config.admin_keys,
        "writes": config.admin_writes,
        "workers": config.workers,
        "end_to_end": end_to_end,
        "naive_full_rebuild": naive,
        "output": text,
    })
}
