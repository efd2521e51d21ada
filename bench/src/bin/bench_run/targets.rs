//! The processes under test: the upstream, shardgate per scenario (configured through its
//! admin API), and the nginx baseline. Every process is pinned with `taskset` and stopped
//! when its handle drops, so a failing run leaves nothing behind.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shardgate_bench::client::Client;
use shardgate_bench::ready::{addr_after, first_line};
use shardgate_bench::tls::{BenchPki, PkiFiles};

use crate::sys;

/// A child process that is stopped on drop: SIGTERM first (nginx's master must take its
/// workers down with it), SIGKILL after a grace period.
#[derive(Debug)]
pub struct Managed {
    pub name: String,
    child: Child,
}

impl Managed {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        if !self.alive() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pinned(cpus: &[usize], program: &Path) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(sys::cpu_list_string(cpus)).arg(program);
    cmd
}

/// The HTTPS address in shardgate's ready line: `tls=<addr>`, or `None` for `tls=off` and
/// for builds without the HTTPS listener (no `tls=` at all).
fn tls_addr(line: &str) -> Result<Option<SocketAddr>, String> {
    match line.split_whitespace().find_map(|w| w.strip_prefix("tls=")) {
        None | Some("off") => Ok(None),
        Some(_) => addr_after(line, "tls=").map(Some),
    }
}

#[derive(Debug)]
pub struct Upstream {
    /// Held for its `Drop`, which stops the process.
    _process: Managed,
    pub addr: SocketAddr,
    pub driver: String,
}

pub fn start_upstream(
    binary: &Path,
    cpus: &[usize],
    sizes: &[usize],
    log: &Path,
) -> Result<Upstream, String> {
    let sizes = sizes
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut child = pinned(cpus, binary)
        .args(["--listen", "127.0.0.1:0", "--sizes", &sizes])
        .args(["--threads", &cpus.len().to_string()])
        .stdout(Stdio::piped())
        .stderr(log_file(log)?)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let line = first_line(&mut child, Duration::from_secs(10));
    let process = Managed {
        name: "upstream".into(),
        child,
    };
    let line = line.map_err(|e| format!("upstream: {e}"))?;
    Ok(Upstream {
        addr: addr_after(&line, "addr=")?,
        driver: line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("driver="))
            .unwrap_or("?")
            .to_string(),
        _process: process,
    })
}

fn log_file(path: &Path) -> Result<fs::File, String> {
    fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// How an HTTPS scenario's client uses its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Many requests per connection: the TLS record layer's cost per request.
    KeepAlive,
    /// One request per connection, each a full TLS 1.3 handshake: the handshake's cost.
    Handshake,
    /// HTTP/2 over TLS (ALPN h2), h2load with 10 connections × 100 concurrent streams:
    /// the cost of an HTTP/2 request (issue 12).
    H2,
}

impl TlsMode {
    /// The name runs and report rows carry (for nginx's paired runs too).
    pub fn scenario(self) -> &'static str {
        match self {
            TlsMode::KeepAlive => "https",
            TlsMode::Handshake => "https-handshake",
            TlsMode::H2 => "h2",
        }
    }

    /// The `tls_mode` field of a run in the results JSON.
    pub fn label(self) -> &'static str {
        match self {
            TlsMode::KeepAlive => "keep-alive",
            TlsMode::Handshake => "handshake",
            TlsMode::H2 => "h2",
        }
    }
}

/// One shardgate configuration under test.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub auth: bool,
    pub rate_limit: bool,
    pub rules: usize,
    pub keys: usize,
    /// HTTPS scenarios: `bare`'s configuration behind the TLS listener, with the run's
    /// certificate uploaded; measured against nginx's TLS server with the same certificate.
    pub tls: Option<TlsMode>,
    /// Workers on monoio's epoll driver (`--io-driver epoll`) instead of io_uring.
    pub epoll: bool,
    /// Request metrics and the access log (issue 13's cost).
    pub observe: Observe,
}

/// What a scenario records about each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observe {
    /// As shipped: request metrics on, access log off.
    Default,
    /// Request metrics off (`--request-metrics off`), access log off: the baseline of
    /// the observability cost.
    Quiet,
    /// Request metrics on and the access log on, to a file in the work directory.
    Logged,
    /// As shipped but without usage tracking (`--usage off`): the baseline of issue 14's
    /// cost.
    Untracked,
}

pub fn scenarios(rules: usize, keys: usize) -> Vec<Scenario> {
    let full = Scenario {
        name: "full",
        auth: true,
        rate_limit: true,
        rules: rules.max(1),
        keys: keys.max(1),
        tls: None,
        epoll: false,
        observe: Observe::Default,
    };
    let h2 = Scenario {
        name: TlsMode::H2.scenario(),
        auth: false,
        rate_limit: false,
        rules: 1,
        keys: 0,
        tls: Some(TlsMode::H2),
        epoll: false,
        observe: Observe::Default,
    };
    vec![
        Scenario {
            name: "bare",
            auth: false,
            rate_limit: false,
            rules: 1,
            keys: 0,
            tls: None,
            epoll: false,
            observe: Observe::Default,
        },
        Scenario {
            name: "auth",
            auth: true,
            rate_limit: false,
            rules: 1,
            keys: 1,
            tls: None,
            epoll: false,
            observe: Observe::Default,
        },
        Scenario {
            name: "auth+ratelimit",
            auth: true,
            rate_limit: true,
            rules: 1,
            keys: 1,
            tls: None,
            epoll: false,
            observe: Observe::Default,
        },
        full.clone(),
        Scenario {
            name: TlsMode::KeepAlive.scenario(),
            auth: false,
            rate_limit: false,
            rules: 1,
            keys: 0,
            tls: Some(TlsMode::KeepAlive),
            epoll: false,
            observe: Observe::Default,
        },
        Scenario {
            name: TlsMode::Handshake.scenario(),
            auth: false,
            rate_limit: false,
            rules: 1,
            keys: 0,
            tls: Some(TlsMode::Handshake),
            epoll: false,
            observe: Observe::Default,
        },
        h2.clone(),
        // `h2` again (opt-in: --scenarios h2,h2-twin): side by side with `h2` under h2load,
        // the A/A check of the method over HTTP/2, and with --twin-bin an A/B of two builds'
        // HTTP/2 path.
        Scenario {
            name: "h2-twin",
            ..h2
        },
        // The same as `bare` and `full`, on the epoll driver (opt-in: --scenarios).
        Scenario {
            name: "bare-epoll",
            auth: false,
            rate_limit: false,
            rules: 1,
            keys: 0,
            tls: None,
            epoll: true,
            observe: Observe::Default,
        },
        Scenario {
            name: "full-epoll",
            epoll: true,
            ..full.clone()
        },
        // `full-epoll` again (opt-in: --scenarios full-epoll,full-epoll-twin): the A/A check
        // on the epoll driver, and with --twin-bin an A/B of two builds' epoll path.
        Scenario {
            name: "full-epoll-twin",
            epoll: true,
            ..full.clone()
        },
        // `full` with request metrics and the access log both off, and both on (opt-in:
        // --scenarios full-quiet,full-logged): what observing each request costs.
        Scenario {
            name: "full-quiet",
            observe: Observe::Quiet,
            ..full.clone()
        },
        Scenario {
            name: "full-logged",
            observe: Observe::Logged,
            ..full.clone()
        },
        // `full-quiet` again, a second gateway (opt-in: --scenarios full-quiet,full-quiet-twin):
        // side by side with `full-quiet` it measures the side-by-side method's own bias (A/A),
        // which should be 0.
        Scenario {
            name: "full-quiet-twin",
            observe: Observe::Quiet,
            ..full.clone()
        },
        // `full-logged` again (opt-in: --scenarios full-logged,full-logged-twin): the A/A
        // check with the access log on, and with --twin-bin an A/B of the logging path.
        Scenario {
            name: "full-logged-twin",
            observe: Observe::Logged,
            ..full.clone()
        },
        // `full` without per-key usage tracking (opt-in: --scenarios full,full-untracked):
        // what counting usage costs.
        Scenario {
            name: "full-untracked",
            observe: Observe::Untracked,
            ..full
        },
    ]
}

/// Whether `name` is a twin scenario (a second `full-quiet`, `full-logged` or `h2`,
/// opt-in), the one `--twin-bin` runs.
pub fn is_twin(name: &str) -> bool {
    name.ends_with("-twin")
}

/// The rate limiter with limits no benchmark reaches (10⁹ per minute per dimension).
pub fn rate_limiter_plugin() -> Value {
    json!({
        "name": "rate_limiter",
        "stage": "pre_request",
        "priority": 1,
        "settings": {"limits": {
            "global": {"limit": 1_000_000_000u64, "window": "1m"},
            "per_ip": {"limit": 1_000_000_000u64, "window": "1m"},
            "per_user": {"limit": 1_000_000_000u64, "window": "1m"},
        }}
    })
}

#[derive(Debug)]
pub struct Shardgate {
    pub process: Managed,
    pub scenario: Scenario,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// The HTTPS listener (HTTPS scenarios only; the others run with `--tls-listen off`).
    pub tls: Option<SocketAddr>,
    /// The API key requests carry (auth scenarios).
    pub key: Option<String>,
    /// Seconds it took to create the keys through the admin API.
    pub keys_seconds: f64,
    pub log: PathBuf,
}

pub struct ShardgateOptions<'a> {
    pub binary: &'a Path,
    pub cpus: &'a [usize],
    pub workers: usize,
    pub work_dir: &'a Path,
    /// Where `full-logged` writes (`None`: a file in `work_dir`).
    pub access_log: Option<&'a Path>,
    pub upstream: SocketAddr,
    /// Whether the binary has `--tls-listen` (builds from before the HTTPS listener do
    /// not, and refuse the flag).
    pub has_tls_listener: bool,
    /// The certificate HTTPS scenarios upload.
    pub pki: Option<&'a BenchPki>,
}

pub fn start_shardgate(
    opt: &ShardgateOptions<'_>,
    scenario: &Scenario,
) -> Result<Shardgate, String> {
    let slug = scenario.name.replace('+', "-");
    let data_dir = opt.work_dir.join(format!("data-{slug}"));
    let log = opt.work_dir.join(format!("shardgate-{slug}.log"));
    let pki = match (scenario.tls, opt.has_tls_listener, opt.pki) {
        (None, _, _) => None,
        (Some(_), true, Some(pki)) => Some(pki),
        (Some(_), false, _) => {
            return Err(format!(
                "{}: this shardgate has no --tls-listen (no HTTPS listener)",
                scenario.name
            ));
        }
        (Some(_), true, None) => return Err(format!("{}: no certificate", scenario.name)),
    };
    let mut cmd = pinned(opt.cpus, opt.binary);
    cmd.args([
        "--admin-listen",
        "127.0.0.1:0",
        "--proxy-listen",
        "127.0.0.1:0",
        "--log",
        "info",
    ]);
    if opt.has_tls_listener {
        // Never the default 0.0.0.0:8443: that port is not ours to take.
        cmd.arg("--tls-listen")
            .arg(if pki.is_some() { "127.0.0.1:0" } else { "off" });
    }
    if scenario.epoll {
        cmd.args(["--io-driver", "epoll"]);
    }
    match scenario.observe {
        Observe::Default => {}
        Observe::Quiet => {
            cmd.args(["--request-metrics", "off"]);
        }
        Observe::Untracked => {
            cmd.args(["--usage", "off"]);
        }
        Observe::Logged => {
            let path = match opt.access_log {
                // Two gateways side by side do not share one file (`/dev/null` they may).
                Some(path) if is_twin(scenario.name) && path.is_file() => {
                    let mut twin = path.as_os_str().to_owned();
                    twin.push(".twin");
                    PathBuf::from(twin)
                }
                Some(path) => path.to_path_buf(),
                None => opt.work_dir.join(format!("access-{slug}.log")),
            };
            cmd.arg("--access-log").arg(path);
        }
    }
    let mut child = cmd
        .arg("--workers")
        .arg(opt.workers.to_string())
        .arg("--data-dir")
        .arg(&data_dir)
        .stdout(Stdio::piped())
        .stderr(log_file(&log)?)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", opt.binary.display()))?;
    let line = first_line(&mut child, Duration::from_secs(30));
    let process = Managed {
        name: format!("shardgate {}", scenario.name),
        child,
    };
    let line = line.map_err(|e| {
        format!(
            "shardgate ({}): {e}; log {}:\n{}",
            scenario.name,
            log.display(),
            fs::read_to_string(&log).unwrap_or_default()
        )
    })?;
    let admin = addr_after(&line, "admin=")?;
    let proxy = addr_after(&line, "proxy=")?;
    let tls = tls_addr(&line)?;
    if pki.is_some() && tls.is_none() {
        return Err(format!(
            "shardgate ({}) was started with --tls-listen 127.0.0.1:0 but its ready line names              no HTTPS address: {line:?}",
            scenario.name
        ));
    }
    let mut api = Api::connect(admin)?;
    let (key, keys_seconds) = api
        .configure(scenario, opt.upstream)
        .map_err(|e| format!("configuring shardgate ({}): {e}", scenario.name))?;
    if let Some(pki) = pki {
        api.upload_certificate(pki).map_err(|e| {
            format!(
                "uploading the certificate to shardgate ({}): {e}",
                scenario.name
            )
        })?;
    }
    Ok(Shardgate {
        process,
        scenario: scenario.clone(),
        proxy,
        admin,
        tls,
        key,
        keys_seconds,
        log,
    })
}

/// The admin API over one keep-alive connection.
struct Api {
    client: Client,
}

impl Api {
    fn connect(addr: SocketAddr) -> Result<Api, String> {
        Ok(Api {
            client: Client::connect(addr).map_err(|e| format!("admin {addr}: {e}"))?,
        })
    }

    fn post(&mut self, path: &str, body: &Value) -> Result<Value, String> {
        self.post_shown_as(path, body, &body.to_string())
    }

    /// `POST path body`; an error shows the request as `shown`.
    fn post_shown_as(&mut self, path: &str, body: &Value, shown: &str) -> Result<Value, String> {
        let resp = self
            .client
            .request("POST", path, Some(&body.to_string()))
            .map_err(|e| format!("POST {path}: {e}"))?;
        if resp.status != 201 && resp.status != 200 {
            return Err(format!(
                "POST {path} {shown}: {} {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            ));
        }
        serde_json::from_slice(&resp.body).map_err(|e| format!("POST {path}: {e}"))
    }

    /// `POST /api/v1/certificates`; an error never echoes the request (it holds the key).
    fn upload_certificate(&mut self, pki: &BenchPki) -> Result<(), String> {
        let body = json!({"name": "bench", "cert_pem": pki.cert_pem, "key_pem": pki.key_pem});
        self.post_shown_as("/api/v1/certificates", &body, "(certificate and key)")
            .map(drop)
    }

    fn id(v: &Value) -> Result<String, String> {
        v.get("id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("no id in {v}"))
    }

    fn configure(
        &mut self,
        s: &Scenario,
        upstream: SocketAddr,
    ) -> Result<(Option<String>, f64), String> {
        let plugins = if s.rate_limit {
            vec![rate_limiter_plugin()]
        } else {
            Vec::new()
        };
        let gw = Self::id(&self.post(
            "/api/v1/gateways",
            &json!({"name": "bench", "subdomain": "bench", "required_plugins": plugins}),
        )?)?;
        let base = format!("/api/v1/gateways/{gw}");
        let up = Self::id(&self.post(
            &format!("{base}/upstreams"),
            // Idle upstream connections kept: 1024, nginx's `keepalive 1024`. The h2 scenario
            // has 1000 streams in flight, each on an upstream HTTP/1.1 connection; a pool
            // smaller than that closes and reopens connections at a rate set by each
            // proxy's burst pattern, and the run measures that churn (docs/RUNTIME.md).
            &json!({"name": "origin", "targets": [{"host": upstream.ip().to_string(), "port": upstream.port()}],
                    "pool": {"max_idle": 1024}}),
        )?)?;
        let svc = Self::id(&self.post(
            &format!("{base}/services"),
            &json!({"name": "svc", "upstream_id": up}),
        )?)?;
        self.post(
            &format!("{base}/rules"),
            &json!({"path": "/bench/*", "service_id": svc, "public": !s.auth}),
        )?;
        // The other rules: a mix of prefix, parameter and exact paths, as the fixture uses.
        for i in 1..s.rules {
            let path = match i % 10 {
                0 => format!("/p{i}/*"),
                1 => format!("/users{i}/{{id}}"),
                _ => format!("/api/v1/r{i}"),
            };
            self.post(
                &format!("{base}/rules"),
                &json!({"path": path, "service_id": svc}),
            )?;
        }
        let mut key = None;
        let t = Instant::now();
        if s.auth {
            for i in 0..s.keys {
                let v = self.post(&format!("{base}/keys"), &json!({"name": format!("k{i}")}))?;
                // Use a key from the middle of the table, not the newest one.
                if i == s.keys / 2 {
                    key = v.get("key").and_then(Value::as_str).map(str::to_string);
                }
            }
            if key.is_none() {
                return Err("the key response carried no \"key\"".into());
            }
        }
        Ok((key, t.elapsed().as_secs_f64()))
    }
}

/// The io driver and CPU each worker reported in the log (`worker started ... driver=..`).
pub fn worker_drivers(log: &Path) -> Vec<String> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("worker started"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("driver="))
                .map(str::to_string)
        })
        .collect()
}

#[derive(Debug)]
pub struct Nginx {
    pub process: Managed,
    /// Its one server: plain HTTP, or HTTPS when [`NginxOptions::tls`] was given.
    pub addr: SocketAddr,
    pub tls: bool,
    pub dir: PathBuf,
}

pub struct NginxOptions<'a> {
    pub binary: &'a Path,
    pub cpus: &'a [usize],
    pub workers: usize,
    pub work_dir: &'a Path,
    pub upstream: SocketAddr,
    /// Client connections each worker must hold (the idle-connection test).
    pub connections: usize,
    /// Serve HTTPS (TLS 1.3 only) with this certificate and key instead of plain HTTP.
    /// A separate nginx from the plain baseline, so the plain runs' memory carries no TLS
    /// state (shardgate's plain scenarios run without their HTTPS listener too).
    pub tls: Option<&'a PkiFiles>,
}

/// Whether this nginx was built with the SSL module (`nginx -V`). Without it the TLS
/// server block would stop nginx from starting at all, so the harness asks first.
pub fn nginx_has_ssl(binary: &Path) -> bool {
    Command::new(binary).arg("-V").output().is_ok_and(|o| {
        let text = String::from_utf8_lossy(&o.stderr) + String::from_utf8_lossy(&o.stdout);
        text.contains("--with-http_ssl_module")
    })
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Where an nginx keeps its config, pid and logs (the plain and the HTTPS one apart).
fn nginx_dir(opt: &NginxOptions<'_>) -> PathBuf {
    opt.work_dir.join(match opt.tls {
        None => "nginx",
        Some(_) => "nginx-https",
    })
}

/// nginx.conf for a plain `proxy_pass` with upstream keep-alive: the baseline the design
/// targets compare with. Defaults are nginx's own except what a fair comparison needs:
/// worker count = shardgate's, SO_REUSEPORT like shardgate, no access log (shardgate has
/// none), keep-alive requests unlimited on both sides (shardgate does not cap them).
///
/// With [`NginxOptions::tls`] the server speaks HTTPS instead: the run's ECDSA P-256
/// certificate, `ssl_protocols TLSv1.3` (what the bench client speaks); everything else is
/// nginx's default — no session cache, session tickets on (OpenSSL then sends two per
/// handshake, which the bench client counts and never uses), OpenSSL's cipher suites and
/// key-exchange groups.
pub fn nginx_conf(opt: &NginxOptions<'_>, port: u16) -> String {
    let dir = nginx_dir(opt);
    let d = dir.display();
    let nofile = 2 * (opt.connections + 1024);
    let user = if is_root() { "user root;\n" } else { "" };
    let (what, listen, ssl) = match opt.tls {
        None => ("plain", format!("127.0.0.1:{port}"), String::new()),
        Some(files) => (
            "HTTPS (TLS 1.3)",
            // `http2` serves ALPN h2 to h2load (the h2 scenario); tls_load offers no ALPN
            // and keeps HTTP/1.1 (nginx 1.22's syntax; 1.25+ accepts it with a warning).
            format!("127.0.0.1:{port} ssl http2"),
            format!(
                "        ssl_certificate {};\n        ssl_certificate_key {};\n        \
                 ssl_protocols TLSv1.3;\n",
                files.cert.display(),
                files.key.display()
            ),
        ),
    };
    format!(
        "# Written by bench/run: {what} proxy_pass with upstream keep-alive.\n\
{user}worker_processes {workers};\n\
worker_rlimit_nofile {nofile};\n\
daemon off;\n\
master_process on;\n\
pid {d}/nginx.pid;\n\
error_log {d}/error.log warn;\n\
events {{\n    worker_connections {conns};\n}}\n\
http {{\n\
    access_log off;\n\
    tcp_nodelay on;\n\
    keepalive_timeout 60s;\n\
    keepalive_requests 1000000000;\n\
    client_body_temp_path {d}/client_body;\n\
    proxy_temp_path {d}/proxy;\n\
    fastcgi_temp_path {d}/fastcgi;\n\
    uwsgi_temp_path {d}/uwsgi;\n\
    scgi_temp_path {d}/scgi;\n\
    upstream origin {{\n\
        server {up};\n\
        keepalive 1024;\n\
        keepalive_requests 1000000000;\n\
    }}\n\
    server {{\n\
        listen {listen} reuseport backlog=4096;\n\
        server_name _;\n\
{ssl}\
        location / {{\n\
            proxy_pass http://origin;\n\
            proxy_http_version 1.1;\n\
            proxy_set_header Connection \"\";\n\
        }}\n\
    }}\n\
}}\n",
        workers = opt.workers,
        conns = opt.connections + 2048,
        up = opt.upstream,
    )
}

pub fn start_nginx(opt: &NginxOptions<'_>) -> Result<Nginx, String> {
    let dir = nginx_dir(opt);
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let port = free_port()?;
    let conf = dir.join("nginx.conf");
    fs::write(&conf, nginx_conf(opt, port)).map_err(|e| format!("{}: {e}", conf.display()))?;
    let child = pinned(opt.cpus, opt.binary)
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdout(Stdio::null())
        .stderr(log_file(&dir.join("stderr.log"))?)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", opt.binary.display()))?;
    let mut process = Managed {
        name: "nginx".into(),
        child,
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect(addr).is_ok() {
            break;
        }
        if !process.alive() || Instant::now() > deadline {
            let log = fs::read_to_string(dir.join("error.log")).unwrap_or_default()
                + &fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
            return Err(format!("nginx did not start listening on {addr}:\n{log}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Wait until every worker exists, so CPU and memory samples see them all.
    let deadline = Instant::now() + Duration::from_secs(5);
    while sys::proc_tree(process.pid()).len() < opt.workers + 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Nginx {
        process,
        addr,
        tls: opt.tls.is_some(),
        dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_tls_field_is_an_address_off_or_absent() {
        let line = "shardgate ready admin=127.0.0.1:1 proxy=127.0.0.1:2 tls=127.0.0.1:3\n";
        assert_eq!(
            tls_addr(line),
            Ok(Some(SocketAddr::from(([127, 0, 0, 1], 3))))
        );
        let off = "shardgate ready admin=127.0.0.1:1 proxy=127.0.0.1:2 tls=off";
        assert_eq!(tls_addr(off), Ok(None));
        let before = "shardgate ready admin=127.0.0.1:1 proxy=127.0.0.1:2";
        assert_eq!(tls_addr(before), Ok(None));
        assert!(tls_addr("shardgate ready tls=nonsense").is_err());
    }

    fn options<'a>(dir: &'a Path, tls: Option<&'a PkiFiles>) -> NginxOptions<'a> {
        NginxOptions {
            binary: Path::new("nginx"),
            cpus: &[0],
            workers: 2,
            work_dir: dir,
            upstream: SocketAddr::from(([127, 0, 0, 1], 9000)),
            connections: 64,
            tls,
        }
    }

    #[test]
    fn nginx_https_uses_the_certificate_over_tls13_only_and_is_otherwise_the_plain_baseline() {
        let dir = Path::new("/tmp/bench");
        let files = PkiFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        };
        let https = nginx_conf(&options(dir, Some(&files)), 8443);
        let plain = nginx_conf(&options(dir, None), 8081);
        assert!(https.contains("listen 127.0.0.1:8443 ssl http2 reuseport backlog=4096;"));
        assert!(https.contains("ssl_certificate /tmp/bench/server.pem;"));
        assert!(https.contains("ssl_certificate_key /tmp/bench/server.key;"));
        assert!(https.contains("ssl_protocols TLSv1.3;"));
        assert!(https.contains("pid /tmp/bench/nginx-https/nginx.pid;"));
        assert_eq!(https.matches('{').count(), https.matches('}').count());
        // Everything but the listener is the plain baseline's.
        let strip = |c: &str| -> Vec<String> {
            c.lines()
                .filter(|l| !l.contains("ssl") && !l.contains("listen") && !l.starts_with('#'))
                .map(|l| l.replace("nginx-https", "nginx"))
                .collect()
        };
        assert_eq!(strip(&https), strip(&plain));
    }

    #[test]
    fn plain_nginx_has_no_tls() {
        let conf = nginx_conf(&options(Path::new("/tmp/bench"), None), 8081);
        assert!(conf.contains("listen 127.0.0.1:8081 reuseport backlog=4096;"));
        assert!(!conf.contains("ssl"));
    }

    #[test]
    fn https_scenarios_are_bare_behind_the_tls_listener() {
        let all = scenarios(100, 10_000);
        let bare = all.iter().find(|s| s.name == "bare").expect("bare");
        for mode in [TlsMode::KeepAlive, TlsMode::Handshake, TlsMode::H2] {
            let s = all
                .iter()
                .find(|s| s.name == mode.scenario())
                .expect("HTTPS scenario");
            assert_eq!(s.tls, Some(mode));
            assert_eq!(
                (s.auth, s.rate_limit, s.rules, s.keys),
                (bare.auth, bare.rate_limit, bare.rules, bare.keys)
            );
        }
        assert!(all.iter().filter(|s| s.tls.is_none()).count() == 12);
    }

    #[test]
    fn epoll_scenarios_are_bare_and_full_on_the_other_driver() {
        let all = scenarios(100, 10_000);
        for (name, twin) in [
            ("bare-epoll", "bare"),
            ("full-epoll", "full"),
            ("full-epoll-twin", "full"),
        ] {
            let find = |n: &str| all.iter().find(|s| s.name == n).expect("a scenario");
            let (s, t) = (find(name), find(twin));
            assert!(s.epoll && !t.epoll);
            assert_eq!(
                (s.auth, s.rate_limit, s.rules, s.keys, s.tls),
                (t.auth, t.rate_limit, t.rules, t.keys, t.tls)
            );
        }
        assert_eq!(all.iter().filter(|s| s.epoll).count(), 3);
    }

    #[test]
    fn each_twin_is_its_scenario_again() {
        let all = scenarios(100, 10_000);
        let find = |n: &str| all.iter().find(|s| s.name == n).expect("a scenario");
        for base in ["full-quiet", "full-logged", "full-epoll"] {
            let (s, t) = (find(base), find(&format!("{base}-twin")));
            assert_eq!(
                (
                    s.auth,
                    s.rate_limit,
                    s.rules,
                    s.keys,
                    s.tls,
                    s.epoll,
                    s.observe
                ),
                (
                    t.auth,
                    t.rate_limit,
                    t.rules,
                    t.keys,
                    t.tls,
                    t.epoll,
                    t.observe
                )
            );
        }
    }
}
