//! shardgate's end-to-end test harness: it runs the real `shardgate` binary as a child
//! process and talks to it over real sockets on loopback. It never mocks the proxy or the
//! store (DESIGN.md §1); the tests in `tests/tests/` read as specifications on top of it.
//!
//! What it provides:
//! - [`binary`]: the path of `shardgate`, built once per test process with the same cargo
//!   profile as the tests (`$SHARDGATE_BIN` overrides it).
//! - [`Shardgate`]: one server process with its own free ports (`127.0.0.1:0`, read back
//!   from the `shardgate ready admin=<addr> proxy=<addr> tls=<addr|off>` line), its own
//!   data directory and its stderr captured in a file; terminated with SIGTERM or SIGKILL,
//!   killed on drop.
//! - [`Client`], [`Resp`]: a small blocking HTTP/1.1 client with 10 s timeouts (so no test
//!   can hang), an optional source address on 127.0.0.0/8 ("another client IP"), a raw
//!   mode for malformed requests, and HTTPS through a [`certs::TlsClient`]
//!   ([`Client::tls`]); [`KeepAlive`] is one persistent connection over either.
//! - [`io_drivers`]: the event-loop drivers end-to-end tests run under; [`Listener`] and
//!   [`drivers_and_listeners`]: the proxy listeners (plain and TLS) the request-flow tests
//!   run over, reached through a [`Via`].
//! - [`connection::Connection`]: one persistent client connection (keep-alive,
//!   pipelining, raw bytes, timed reads) for the proxy tests.
//! - [`upstream`]: real upstream servers on loopback (counting, SSE, big download, upload
//!   sink, upgrade echo), each stopped on drop.
//! - [`tenant::Tenant`]: a gateway with an API key and shorthands to route a path to
//!   upstream servers, and proxy clients that send the gateway's Host and key.
//! - [`nginx::Nginx`]: a real nginx upstream with its default URI handling.
//! - [`tls`]: a per-test certificate authority and an HTTPS upstream ([`tls::TlsUpstream`]).
//! - [`certs`]: the client side of the proxy's TLS listener (which certificate it served,
//!   pinned or CA trust) and certificate facts (SHA-256 fingerprints, SANs).
//! - [`rfc3339_in`]: timestamps computed from now (no date in a test can pass);
//!   [`repeat`]: run a race-prone test body `SHARDGATE_REPEAT` times.
//!
//! Lint policy: the workspace's (`clippy::all`, `unwrap_used`); failures here are test
//! failures, so they `panic!`/`expect` with a message that says what went wrong.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Once, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

pub use serde_json::{Value, json};

pub mod ai;
pub mod certs;
pub mod connection;
pub mod nginx;
pub mod tenant;
pub mod tls;
pub mod upstream;

/// How long a server may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to exit after SIGTERM.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// Connect, read and write timeout of every client socket.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The binary

static BUILD: Once = Once::new();

/// The `shardgate` binary to test: `$SHARDGATE_BIN` when set, else `shardgate` in the
/// profile directory of this test executable (`target/<profile>/deps/xxx` →
/// `target/<profile>/shardgate`), built on first use by `cargo build -p shardgate-proxy`
/// with the matching profile. Cargo does nothing when it is fresh, so this costs one
/// no-op build per test process.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SHARDGATE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test executable has a path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps")
        .to_path_buf();
    BUILD.call_once(|| build_binary(&profile_dir));
    let bin = profile_dir.join("shardgate");
    assert!(
        bin.is_file(),
        "{} does not exist after cargo build -p shardgate-proxy",
        bin.display()
    );
    bin
}

fn build_binary(profile_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "shardgate-proxy",
        "--bin",
        "shardgate",
    ]);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    if let Some(target_dir) = profile_dir.parent() {
        cmd.arg("--target-dir").arg(target_dir);
    }
    let status = cmd
        .status()
        .expect("run cargo to build the shardgate binary (set $CARGO or put cargo on PATH)");
    assert!(
        status.success(),
        "cargo build -p shardgate-proxy --bin shardgate failed: {status}"
    );
}

// ---------------------------------------------------------------------------------------------
// I/O drivers

/// The `--io-driver` values end-to-end tests run under: `uring` and `epoll` when io_uring
/// is usable here, else `epoll` alone (with a note on stderr). "Usable" means the kernel
/// does not disable it (`/proc/sys/kernel/io_uring_disabled` absent or 0) *and* the binary
/// starts with `--io-driver uring` (containers often forbid the syscalls by seccomp).
/// Probed once per test process.
///
/// ```no_run
/// use shardgate_tests::{Options, Shardgate, io_drivers};
///
/// for driver in io_drivers() {
///     let sg = Shardgate::start(Options::new().io_driver(driver));
///     // ...
/// }
/// ```
pub fn io_drivers() -> &'static [&'static str] {
    static DRIVERS: OnceLock<Vec<&'static str>> = OnceLock::new();
    DRIVERS.get_or_init(|| {
        if let Ok(text) = fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
            && text.trim() != "0"
        {
            eprintln!(
                "note: io_uring is disabled by the kernel (io_uring_disabled = {}); \
                 end-to-end tests run under epoll only",
                text.trim()
            );
            return vec!["epoll"];
        }
        match Shardgate::try_start(Options::new().io_driver("uring")) {
            Ok(probe) => {
                drop(probe);
                vec!["uring", "epoll"]
            }
            Err(failure) => {
                eprintln!(
                    "note: shardgate does not start with --io-driver uring here ({}); \
                     end-to-end tests run under epoll only. Its stderr:\n{}",
                    failure.status, failure.stderr
                );
                vec!["epoll"]
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Proxy listeners

/// A proxy listener the request-flow tests run over: the plain HTTP one
/// (`--proxy-listen`) or the HTTPS one (`--tls-listen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Plain,
    Tls,
}

impl Listener {
    /// What the proxy sends upstream as `X-Forwarded-Proto`.
    pub fn scheme(self) -> &'static str {
        match self {
            Listener::Plain => "http",
            Listener::Tls => "https",
        }
    }
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Listener::Plain => "plain",
            Listener::Tls => "tls",
        })
    }
}

/// Every listener.
pub const LISTENERS: [Listener; 2] = [Listener::Plain, Listener::Tls];

/// Every `(io driver, listener)` pair: what a request-flow test loops over.
pub fn drivers_and_listeners() -> Vec<(&'static str, Listener)> {
    io_drivers()
        .iter()
        .flat_map(|driver| LISTENERS.map(|listener| (*driver, listener)))
        .collect()
}

/// The way into a running proxy through one listener ([`Shardgate::via`]): its address
/// and, for TLS, a client pinned to the certificate the server presents by default, with
/// SNI taken from each request's `Host`. Its clients send `Host:
/// <subdomain>.localhost:<this listener's port>`, like curl with `--resolve`.
#[derive(Debug, Clone)]
pub struct Via {
    listener: Listener,
    addr: SocketAddr,
    tls: Option<certs::TlsClient>,
}

impl Via {
    pub fn listener(&self) -> Listener {
        self.listener
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `<subdomain>.localhost:<port>`.
    pub fn host_for(&self, subdomain: &str) -> String {
        format!("{subdomain}.localhost:{}", self.addr.port())
    }

    /// The `Host` the tenant's clients send through this listener.
    pub fn host(&self, tenant: &tenant::Tenant) -> String {
        self.host_for(&tenant.subdomain)
    }

    /// A client for `host` through this listener.
    pub fn client_for(&self, host: &str) -> Client {
        let client = Client::new(self.addr).host(host);
        match &self.tls {
            None => client,
            Some(tls) => client.tls(tls.clone()),
        }
    }

    /// The tenant's gateway without a key.
    pub fn anonymous(&self, tenant: &tenant::Tenant) -> Client {
        self.client_for(&self.host(tenant))
    }

    /// The tenant's gateway with its `X-API-Key`.
    pub fn client(&self, tenant: &tenant::Tenant) -> Client {
        self.anonymous(tenant).header("X-API-Key", &tenant.key)
    }
}

// ---------------------------------------------------------------------------------------------
// The server process

/// How to start a [`Shardgate`]. Every server listens on `127.0.0.1:0` (free ports) unless
/// `admin_listen` or `tls_listen` says otherwise; a fixed port is never used (in
/// particular never the TLS listener's default 8443).
#[derive(Debug, Clone)]
pub struct Options {
    workers: usize,
    io_driver: Option<String>,
    admin_token: Option<String>,
    admin_listen: String,
    tls_listen: String,
    log: Option<String>,
    data_dir: Option<PathBuf>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl Default for Options {
    fn default() -> Self {
        Options::new()
    }
}

impl Options {
    /// Two workers, the binary's default io driver, no admin token, a fresh data directory.
    pub fn new() -> Options {
        Options {
            workers: 2,
            io_driver: None,
            admin_token: None,
            admin_listen: "127.0.0.1:0".to_owned(),
            tls_listen: "127.0.0.1:0".to_owned(),
            log: None,
            data_dir: None,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn workers(mut self, n: usize) -> Options {
        self.workers = n;
        self
    }

    /// `--io-driver auto|uring|epoll`.
    pub fn io_driver(mut self, driver: &str) -> Options {
        self.io_driver = Some(driver.to_owned());
        self
    }

    /// `--admin-token`.
    pub fn admin_token(mut self, token: &str) -> Options {
        self.admin_token = Some(token.to_owned());
        self
    }

    /// `--admin-listen` (default `127.0.0.1:0`).
    pub fn admin_listen(mut self, addr: &str) -> Options {
        self.admin_listen = addr.to_owned();
        self
    }

    /// `--tls-listen` (default `127.0.0.1:0`; `off` disables the TLS listener). An
    /// `--tls-listen` given with [`Options::arg`] wins over this.
    pub fn tls_listen(mut self, addr: &str) -> Options {
        self.tls_listen = addr.to_owned();
        self
    }

    /// `--log` filter, e.g. `debug`.
    pub fn log(mut self, filter: &str) -> Options {
        self.log = Some(filter.to_owned());
        self
    }

    /// Use this data directory (which the caller owns, e.g. to restart on it) instead of a
    /// fresh temporary one.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Options {
        self.data_dir = Some(dir.into());
        self
    }

    /// One more command-line argument, after the harness's own.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Options {
        self.args.push(arg.into());
        self
    }

    /// An environment variable for the child. Inherited `SHARDGATE_*` variables are always
    /// removed, so the outer environment cannot change what a test means.
    pub fn env(mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> Options {
        self.env.push((name.into(), value.into()));
        self
    }
}

/// A server that exited (or never printed its ready line) instead of starting.
#[derive(Debug)]
pub struct StartFailure {
    pub status: ExitStatus,
    pub stderr: String,
}

/// Where the data directory lives: owned by the server (fresh, removed on drop) or by
/// the caller (kept, for restarts).
#[derive(Debug)]
enum DataDir {
    Owned(tempfile::TempDir),
    Borrowed(PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            DataDir::Owned(t) => t.path(),
            DataDir::Borrowed(p) => p,
        }
    }
}

/// One running `shardgate` process. Dropping it kills the process (SIGKILL).
#[derive(Debug)]
pub struct Shardgate {
    child: Option<Child>,
    admin: SocketAddr,
    proxy: SocketAddr,
    /// `None` when the ready line says `tls=off` (or says nothing about TLS).
    tls: Option<SocketAddr>,
    /// The ready line as printed.
    ready_line: String,
    data_dir: DataDir,
    /// Holds the stderr file; separate from the data directory so that a test can search
    /// one without the other.
    logs: tempfile::TempDir,
    exit: Option<ExitStatus>,
    /// SIGTERM was sent by [`Shardgate::send_sigterm`]; a second one would mean "exit now".
    term_sent: bool,
}

const READY_PREFIX: &str = "shardgate ready ";

/// The addresses of a `shardgate ready admin=<addr> proxy=<addr> tls=<addr|off>` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ready {
    admin: SocketAddr,
    proxy: SocketAddr,
    /// `tls=off`, or no `tls=` field: `None`.
    tls: Option<SocketAddr>,
}

fn parse_ready(line: &str) -> Option<Ready> {
    let rest = line.trim_end().strip_prefix(READY_PREFIX)?;
    let mut admin = None;
    let mut proxy = None;
    let mut tls = None;
    for field in rest.split_whitespace() {
        match field.split_once('=') {
            Some(("admin", a)) => admin = a.parse().ok(),
            Some(("proxy", p)) => proxy = p.parse().ok(),
            Some(("tls", t)) => tls = t.parse().ok(),
            _ => {}
        }
    }
    Some(Ready {
        admin: admin?,
        proxy: proxy?,
        tls,
    })
}

impl Shardgate {
    /// Starts a server and waits for its ready line; panics with its stderr if it exits
    /// first or is not ready within [`READY_TIMEOUT`].
    pub fn start(opts: Options) -> Shardgate {
        match Shardgate::try_start(opts) {
            Ok(sg) => sg,
            Err(f) => panic!(
                "shardgate did not start ({}); its stderr:\n{}",
                f.status, f.stderr
            ),
        }
    }

    /// Starts a server; `Err` with its exit status and stderr when it exits before it is
    /// ready (what a refusal to start looks like). Panics when it neither exits nor becomes
    /// ready within [`READY_TIMEOUT`].
    pub fn try_start(opts: Options) -> Result<Shardgate, StartFailure> {
        let logs = tempfile::Builder::new()
            .prefix("shardgate-logs-")
            .tempdir()
            .expect("create a temporary directory for the server's stderr");
        let data_dir = match opts.data_dir {
            Some(p) => DataDir::Borrowed(p),
            None => DataDir::Owned(
                tempfile::Builder::new()
                    .prefix("shardgate-data-")
                    .tempdir()
                    .expect("create a temporary data directory"),
            ),
        };
        let stderr_path = logs.path().join("stderr.log");
        let stderr_file = File::create(&stderr_path).expect("create the stderr file");

        let mut cmd = Command::new(binary());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SHARDGATE_") {
                cmd.env_remove(&name);
            }
        }
        cmd.arg("--admin-listen")
            .arg(&opts.admin_listen)
            .arg("--proxy-listen")
            .arg("127.0.0.1:0");
        let own_tls_listen = opts
            .args
            .iter()
            .any(|a| a.to_string_lossy().starts_with("--tls-listen"));
        if !own_tls_listen {
            cmd.arg("--tls-listen").arg(&opts.tls_listen);
        }
        cmd.arg("--workers")
            .arg(opts.workers.to_string())
            .arg("--data-dir")
            .arg(data_dir.path());
        if let Some(driver) = &opts.io_driver {
            cmd.arg("--io-driver").arg(driver);
        }
        if let Some(token) = &opts.admin_token {
            cmd.arg("--admin-token").arg(token);
        }
        if let Some(log) = &opts.log {
            cmd.arg("--log").arg(log);
        }
        cmd.args(&opts.args);
        for (name, value) in &opts.env {
            cmd.env(name, value);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr_file));
        let mut child = cmd.spawn().expect("spawn the shardgate binary");

        // A thread owns stdout for the child's whole life (so it never blocks on a full
        // pipe) and forwards each line; the channel closing means stdout hit EOF.
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel::<String>();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more; keep draining so the child never blocks.
                }
            }
        });

        let deadline = Instant::now() + READY_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(ready) = parse_ready(&line) {
                        return Ok(Shardgate {
                            child: Some(child),
                            admin: ready.admin,
                            proxy: ready.proxy,
                            tls: ready.tls,
                            ready_line: line,
                            data_dir,
                            logs,
                            exit: None,
                            term_sent: false,
                        });
                    }
                    seen.push(line);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: the process is exiting (or closed stdout, a bug).
                    let status = wait_bounded(&mut child, EXIT_TIMEOUT);
                    let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
                    return Err(StartFailure { status, stderr });
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
                    panic!(
                        "shardgate printed no ready line within {READY_TIMEOUT:?}; stdout so \
                         far: {seen:?}; stderr:\n{stderr}"
                    );
                }
            }
        }
    }

    /// `http://<admin addr>`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy
    }

    /// The `shardgate ready ...` line the server printed.
    pub fn ready_line(&self) -> &str {
        &self.ready_line
    }

    /// The TLS listener's address; `None` when it is off.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls
    }

    /// The TLS listener's address; panics when the ready line named none.
    pub fn expect_tls_addr(&self) -> SocketAddr {
        self.tls.unwrap_or_else(|| {
            panic!(
                "shardgate's ready line named no tls=<addr> (is --tls-listen off?); stderr:\n{}",
                self.stderr_contents()
            )
        })
    }

    /// How a request-flow test reaches the proxy through `listener`; see [`Via`].
    pub fn via(&self, listener: Listener) -> Via {
        match listener {
            Listener::Plain => Via {
                listener,
                addr: self.proxy,
                tls: None,
            },
            Listener::Tls => {
                let addr = self.expect_tls_addr();
                // Trust on first use: whatever the server presents without SNI is its
                // default certificate (the development one unless a test changed it).
                let served = certs::TlsClient::new(certs::Trust::Any)
                    .handshake(addr, "")
                    .unwrap_or_else(|e| panic!("{e}"));
                Via {
                    listener,
                    addr,
                    tls: Some(certs::TlsClient::new(certs::Trust::Pinned(served.leaf))),
                }
            }
        }
    }

    /// A client for the admin API.
    pub fn admin(&self) -> Client {
        Client::new(self.admin)
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr_contents(&self) -> String {
        fs::read_to_string(self.logs.path().join("stderr.log")).expect("read the stderr file")
    }

    /// The process id, e.g. for sending signals.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Sends SIGTERM and returns at once (e.g. to keep a request in flight meanwhile);
    /// [`Shardgate::terminate`] then waits without signalling again (shardgate takes a
    /// second signal as "exit now").
    pub fn send_sigterm(&mut self) {
        if self.term_sent || self.exit.is_some() {
            return;
        }
        let child = self.child.as_ref().expect("the server is running");
        signal(child.id(), "TERM");
        self.term_sent = true;
    }

    /// Resident memory of the process in KiB (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// Sends SIGTERM (unless [`Shardgate::send_sigterm`] already did) and waits (at most
    /// [`EXIT_TIMEOUT`], then SIGKILL and panic) for the process to exit; returns its exit
    /// status.
    pub fn terminate(&mut self) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        let mut child = self.child.take().expect("the server is running");
        if !self.term_sent {
            signal(child.id(), "TERM");
            self.term_sent = true;
        }
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the server") {
                self.exit = Some(status);
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "shardgate did not exit within {EXIT_TIMEOUT:?} of SIGTERM; stderr:\n{}",
                    self.stderr_contents()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGKILL (no chance to flush or clean up) and reaps the process.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            self.exit = child.wait().ok();
        }
    }
}

impl Drop for Shardgate {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn signal(pid: u32, name: &str) {
    // `kill(1)` rather than libc::kill: the workspace denies `unsafe`.
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill(1)");
    assert!(status.success(), "kill -{name} {pid} failed: {status}");
}

fn wait_bounded(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for the server") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            return child.wait().expect("reap the killed server");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Every file under `dir` (recursively), with its contents.
pub fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).expect("list a directory") {
            let path = entry.expect("read a directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = fs::read(&path).expect("read a file");
                out.push((path, bytes));
            }
        }
    }
    out
}

/// Resident memory of process `pid` in KiB (`VmRSS` of `/proc/<pid>/status`); panics when
/// it cannot be read (the process is gone, or this is not Linux).
pub fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status:\n{status}"))
}

/// Whether `needle` occurs in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// The HTTP client

/// A response: status, headers (names lowercased, in order), body (chunked framing removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics (showing the response) when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {self}"))
    }

    /// A gateway error body without its `request_id`, after checking that the id is the
    /// one the `X-Request-Id` header carries (every error body the proxy writes has it).
    pub fn error_json(&self) -> Value {
        let mut body = self.json();
        let id = body
            .as_object_mut()
            .and_then(|o| o.remove("request_id"))
            .unwrap_or_else(|| panic!("no request_id in the error body: {self}"));
        assert_eq!(
            id.as_str(),
            self.header("x-request-id"),
            "the body's request_id is the X-Request-Id header: {self}"
        );
        body
    }

    /// The `error` string of a `{"error": "..."}` body; panics when the body has another
    /// shape (every admin error must have this one).
    pub fn error(&self) -> String {
        match self.json().get("error") {
            Some(Value::String(s)) => s.clone(),
            _ => panic!("expected a {{\"error\": \"...\"}} body: {self}"),
        }
    }

    /// Panics with the response unless the status is `status`; returns `self` for chaining.
    #[track_caller]
    pub fn expect_status(self, status: u16) -> Resp {
        assert_eq!(self.status, status, "unexpected status: {self}");
        self
    }
}

impl std::fmt::Display for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} ", self.status)?;
        for (n, v) in &self.headers {
            write!(f, "[{n}: {v}] ")?;
        }
        let body = String::from_utf8_lossy(&self.body);
        let shown: String = body.chars().take(2000).collect();
        f.write_str(&shown)?;
        if shown.len() < body.len() {
            f.write_str("…")?;
        }
        Ok(())
    }
}

/// Where a request goes: a socket address, or a URL of the form `http://host:port[/…]`.
pub trait Target {
    fn socket_addr(&self) -> SocketAddr;
}

impl Target for SocketAddr {
    fn socket_addr(&self) -> SocketAddr {
        *self
    }
}

impl Target for &str {
    fn socket_addr(&self) -> SocketAddr {
        let rest = self.strip_prefix("http://").unwrap_or(self);
        let authority = rest.split('/').next().unwrap_or(rest);
        authority
            .parse()
            .unwrap_or_else(|e| panic!("{self:?} is not http://<ip>:<port> ({e})"))
    }
}

impl Target for String {
    fn socket_addr(&self) -> SocketAddr {
        self.as_str().socket_addr()
    }
}

impl Target for &String {
    fn socket_addr(&self) -> SocketAddr {
        self.as_str().socket_addr()
    }
}

/// One request on a fresh connection (`Connection: close`), from 127.0.0.1.
pub fn request(
    method: &str,
    target: impl Target,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    Client::new(target.socket_addr()).request(method, path, headers, body)
}

/// A blocking HTTP/1.1 client bound to one server address; each request opens a new
/// connection and closes it, so requests never interfere. With [`Client::tls`] it speaks
/// HTTPS: every connection starts with a handshake whose SNI is the `Host` header's name.
#[derive(Debug, Clone)]
pub struct Client {
    addr: SocketAddr,
    source: Option<IpAddr>,
    /// The `Host` header; the server address when `None`.
    host: Option<String>,
    headers: Vec<(String, String)>,
    tls: Option<certs::TlsClient>,
}

impl Client {
    pub fn new(target: impl Target) -> Client {
        Client {
            addr: target.socket_addr(),
            source: None,
            host: None,
            headers: Vec::new(),
            tls: None,
        }
    }

    /// Speak HTTPS through `tls` (SNI: the name of [`Client::host_header`]; none for an
    /// IP address).
    pub fn tls(mut self, tls: certs::TlsClient) -> Client {
        self.tls = Some(tls);
        self
    }

    /// The name part of the `Host` header: what a TLS client sends as SNI.
    pub fn server_name(&self) -> String {
        let host = self.host_header();
        if let Ok(addr) = host.parse::<SocketAddr>() {
            return addr.ip().to_string();
        }
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name.to_owned(),
            _ => host,
        }
    }

    /// Send `Host: <host>` instead of the server address (e.g. `api.localhost:8081` to
    /// reach a gateway through the proxy).
    pub fn host(mut self, host: &str) -> Client {
        self.host = Some(host.to_owned());
        self
    }

    /// The `Host` header value this client sends.
    pub fn host_header(&self) -> String {
        self.host.clone().unwrap_or_else(|| self.addr.to_string())
    }

    /// The source address requests are sent from, when one was chosen.
    pub fn source(&self) -> Option<IpAddr> {
        self.source
    }

    /// Connect from this local address (e.g. `127.0.0.2`): a different client IP.
    pub fn source_ip(mut self, ip: IpAddr) -> Client {
        self.source = Some(ip);
        self
    }

    /// Send `Authorization: Bearer <token>` with every request.
    pub fn bearer(self, token: &str) -> Client {
        self.header("Authorization", &format!("Bearer {token}"))
    }

    /// Send this header with every request.
    pub fn header(mut self, name: &str, value: &str) -> Client {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Opens a connection with [`IO_TIMEOUT`] on connect, reads and writes; panics when
    /// it cannot.
    pub fn connect(&self) -> TcpStream {
        self.try_connect()
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.addr))
    }

    /// Opens a TCP connection with [`IO_TIMEOUT`] on connect, reads and writes. A TLS
    /// client refuses (plain bytes on it would not be HTTPS): use
    /// [`Client::try_open_stream`] or [`Client::keep_alive`].
    pub fn try_connect(&self) -> io::Result<TcpStream> {
        if self.tls.is_some() {
            return Err(io::Error::other(
                "a TLS client has no plain TCP stream: use keep_alive() or try_open_stream()",
            ));
        }
        self.try_connect_tcp()
    }

    /// A connection ready for HTTP: TCP, plus a completed handshake for a TLS client (a
    /// failed handshake is an error, like a refused connect).
    pub fn try_open_stream(&self) -> io::Result<Stream> {
        let tcp = self.try_connect_tcp()?;
        match &self.tls {
            None => Ok(Stream::Plain(tcp)),
            Some(tls) => Ok(Stream::Tls(tls.wrap(tcp, &self.server_name())?)),
        }
    }

    /// One persistent connection (keep-alive) over TCP or TLS; panics when it cannot open.
    pub fn keep_alive(&self) -> KeepAlive {
        match &self.tls {
            None => KeepAlive::Plain(self.open()),
            Some(tls) => KeepAlive::Tls {
                stream: self
                    .try_connect_tcp()
                    .and_then(|tcp| tls.wrap(tcp, &self.server_name()))
                    .unwrap_or_else(|e| panic!("open a TLS connection to {}: {e}", self.addr)),
                buf: Vec::new(),
                client: self.clone(),
            },
        }
    }

    fn try_connect_tcp(&self) -> io::Result<TcpStream> {
        let stream = match self.source {
            None => TcpStream::connect_timeout(&self.addr, IO_TIMEOUT)?,
            Some(ip) => {
                let socket = socket2::Socket::new(
                    socket2::Domain::for_address(self.addr),
                    socket2::Type::STREAM,
                    Some(socket2::Protocol::TCP),
                )?;
                socket.bind(&SocketAddr::new(ip, 0).into())?;
                socket.connect_timeout(&self.addr.into(), IO_TIMEOUT)?;
                TcpStream::from(socket)
            }
        };
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(stream)
    }

    /// Sends one request and reads its response; panics when there is no (valid) response.
    /// `Host`, `Content-Length` (for a body or POST/PUT/PATCH) and `Connection: close` are
    /// added; `headers` come after the client's own.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.try_request(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Like [`Client::request`], but a refused connection or a missing or malformed
    /// response is an `Err` (e.g. when the server is being killed).
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Resp, String> {
        let bytes = self.encode_request(method, path, headers, body, true);
        let raw = self
            .try_raw(&bytes)
            .map_err(|e| format!("connect to {}: {e}", self.addr))?;
        parse_response(&raw, method == "HEAD")
            .map_err(|e| format!("bad response ({e}): {:?}", String::from_utf8_lossy(&raw)))
    }

    /// Writes `bytes` as they are and returns everything the server sends until it closes
    /// the connection (or [`IO_TIMEOUT`] passes without data); panics when it cannot
    /// connect.
    pub fn raw(&self, bytes: &[u8]) -> Vec<u8> {
        self.try_raw(bytes)
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.addr))
    }

    /// Like [`Client::raw`]; only a failed connect (or TLS handshake) is an error. A failed
    /// write (the server answered early and closed, e.g. with 413) is not: the answer is
    /// still read.
    pub fn try_raw(&self, bytes: &[u8]) -> io::Result<Vec<u8>> {
        let mut stream = self.try_open_stream()?;
        let _ = stream.write_all(bytes).and_then(|()| stream.flush());
        let mut out = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A reset after the answer, or a timeout: return what arrived.
                Err(_) => break,
            }
        }
        Ok(out)
    }

    /// Writes `bytes` and parses the first response that comes back.
    pub fn raw_request(&self, bytes: &[u8]) -> Resp {
        let raw = self.raw(bytes);
        parse_response(&raw, false)
            .unwrap_or_else(|e| panic!("bad response ({e}): {:?}", String::from_utf8_lossy(&raw)))
    }

    pub fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[], b"")
    }

    pub fn delete(&self, path: &str) -> Resp {
        self.request("DELETE", path, &[], b"")
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Resp {
        self.send_json("POST", path, body)
    }

    pub fn put_json(&self, path: &str, body: &Value) -> Resp {
        self.send_json("PUT", path, body)
    }

    /// `method` with `body` serialized and `Content-Type: application/json`.
    pub fn send_json(&self, method: &str, path: &str, body: &Value) -> Resp {
        let bytes = serde_json::to_vec(body).expect("serialize the request body");
        self.request(
            method,
            path,
            &[("Content-Type", "application/json")],
            &bytes,
        )
    }

    /// `method` with a body given as text and `Content-Type: application/json`.
    pub fn send_json_text(&self, method: &str, path: &str, body: &str) -> Resp {
        self.request(
            method,
            path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    }
}

/// A client connection: TCP, or TLS after a completed handshake.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(certs::TlsStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// One keep-alive connection ([`Client::keep_alive`]) through either listener, sending the
/// client's `Host` and headers with every request. The plain one is a full
/// [`connection::Connection`] (pipelining, raw bytes, timed reads); the TLS one does
/// request/response in turn, which is what the request-flow tests need of it.
#[derive(Debug)]
pub enum KeepAlive {
    Plain(connection::Connection),
    Tls {
        stream: certs::TlsStream,
        /// Bytes read past the last response.
        buf: Vec<u8>,
        client: Client,
    },
}

impl KeepAlive {
    /// Sends one request and reads its response; panics when none arrives.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        self.try_request(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path} on a kept-alive connection: {e}"))
    }

    pub fn get(&mut self, path: &str) -> Resp {
        self.request("GET", path, &[], b"")
    }

    /// Like [`KeepAlive::request`], with a failed write or a missing response as an `Err`
    /// (e.g. the server closed the connection).
    pub fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Resp, String> {
        let head_request = method == "HEAD";
        match self {
            KeepAlive::Plain(conn) => {
                let bytes = conn.request_bytes(method, path, headers, body);
                conn.try_write(&bytes)
                    .map_err(|e| format!("write the request: {e}"))?;
                conn.try_read_response(head_request)
            }
            KeepAlive::Tls {
                stream,
                buf,
                client,
            } => {
                let bytes = client.request_bytes(method, path, headers, body);
                stream
                    .write_all(&bytes)
                    .and_then(|()| stream.flush())
                    .map_err(|e| format!("write the request: {e}"))?;
                read_one_response(stream, buf, head_request)
            }
        }
    }

    /// What the TLS handshake served; `None` on a plain connection.
    pub fn served(&self) -> Option<certs::Served> {
        match self {
            KeepAlive::Plain(_) => None,
            KeepAlive::Tls { stream, .. } => Some(stream.served()),
        }
    }
}

/// Reads one whole response off `stream` (bytes after it stay in `buf`).
fn read_one_response(
    stream: &mut impl Read,
    buf: &mut Vec<u8>,
    head_request: bool,
) -> Result<Resp, String> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(len) = whole_response_len(buf, head_request)? {
            let resp = parse_response(&buf[..len], head_request)?;
            buf.drain(..len);
            return Ok(resp);
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                // A body without framing ends with the connection.
                if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let resp = parse_response(buf, head_request)?;
                    buf.clear();
                    return Ok(resp);
                }
                return Err(format!(
                    "connection closed before a whole response; got {:?}",
                    String::from_utf8_lossy(buf)
                ));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(format!(
                    "read a response: {e}; got {:?}",
                    String::from_utf8_lossy(buf)
                ));
            }
        }
    }
}

/// The length of the first whole response in `buf`; `None` while more bytes are needed
/// (or its body ends with the connection).
fn whole_response_len(buf: &[u8], head_request: bool) -> Result<Option<usize>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head_len = end + 4;
    let head = parse_response(&buf[..head_len], true)?;
    if head_request || matches!(head.status, 204 | 304) || (100..200).contains(&head.status) {
        return Ok(Some(head_len));
    }
    if head
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        // Chunks, then the last chunk and the (empty) trailer section.
        let mut at = head_len;
        loop {
            let Some(line_end) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
                return Ok(None);
            };
            let line = String::from_utf8_lossy(&buf[at..at + line_end]).into_owned();
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| format!("bad chunk size {line:?}"))?;
            at += line_end + 2;
            if size == 0 {
                loop {
                    let Some(line_end) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
                        return Ok(None);
                    };
                    at += line_end + 2;
                    if line_end == 0 {
                        return Ok(Some(at));
                    }
                }
            }
            if buf.len() < at + size + 2 {
                return Ok(None);
            }
            at += size + 2;
        }
    }
    match head.header("content-length") {
        Some(len) => {
            let len: usize = len
                .parse()
                .map_err(|_| format!("bad Content-Length {len:?}"))?;
            Ok((buf.len() >= head_len + len).then_some(head_len + len))
        }
        None => Ok(None),
    }
}

/// Parses one HTTP/1.1 response: status line, headers, then a body framed by
/// `Transfer-Encoding: chunked`, `Content-Length`, or the end of the connection.
pub fn parse_response(raw: &[u8], head_request: bool) -> Result<Resp, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of head")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|e| format!("head is not UTF-8: {e}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty head")?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x status line: {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (n, v) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let rest = &raw[end + 4..];
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let body = if head_request || matches!(status, 204 | 304) || (100..200).contains(&status) {
        Vec::new()
    } else if find("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        decode_chunked(rest)?
    } else if let Some(len) = find("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad Content-Length {len:?}"))?;
        rest.get(..len)
            .ok_or_else(|| format!("body has {} of {len} bytes", rest.len()))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Resp {
        status,
        headers,
        body,
    })
}

fn decode_chunked(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line not ended")?;
        let line = std::str::from_utf8(&rest[..line_end]).map_err(|_| "chunk size not UTF-8")?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(size_text, 16).map_err(|_| format!("bad chunk size {line:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest.get(..size).ok_or("chunk runs past the end")?;
        body.extend_from_slice(chunk);
        rest = rest
            .get(size..)
            .and_then(|r| r.strip_prefix(b"\r\n"))
            .ok_or("chunk not followed by CRLF")?;
    }
}

// ---------------------------------------------------------------------------------------------
// Dates relative to now

/// Seconds in a day, for [`rfc3339_in`].
pub const DAY_SECS: i64 = 24 * 60 * 60;

/// The UTC time `secs` seconds from now (negative: ago) in RFC 3339, whole seconds, as the
/// admin API writes it back (`YYYY-MM-DDThh:mm:ssZ`). Every `expires_at` in the tests comes
/// from here, so no test starts failing the day a date written into it has passed.
pub fn rfc3339_in(secs: i64) -> String {
    let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
    let at = at.replace_nanosecond(0).expect("zero nanoseconds is valid");
    at.format(&time::format_description::well_known::Rfc3339)
        .expect("format an RFC 3339 timestamp")
}

// ---------------------------------------------------------------------------------------------
// Race-prone tests

/// How many times [`repeat`] runs a test body: `$SHARDGATE_REPEAT`, default 1, so the suite
/// stays fast and a suspected race can be hunted on demand:
/// `SHARDGATE_REPEAT=50 cargo test -p shardgate-tests --test proxy_flow admin_writes`.
pub fn repeat_count() -> usize {
    match std::env::var("SHARDGATE_REPEAT") {
        Err(_) => 1,
        Ok(text) => text
            .trim()
            .parse()
            .ok()
            .filter(|&n: &usize| n > 0)
            .unwrap_or_else(|| panic!("SHARDGATE_REPEAT={text:?} is not a whole number above 0")),
    }
}

/// Runs a race-prone test body [`repeat_count`] times (like Sozu's e2e
/// `repeat_until_error_or`), passing the iteration number (0-based). It stops at the first
/// failure and says which iteration failed; the body's own panic message is printed just
/// above. Each iteration should set up its own servers, so that one run's leftovers cannot
/// hide or cause the next one's failure.
pub fn repeat(body: impl FnMut(usize)) {
    repeat_n(repeat_count(), body);
}

/// [`repeat`] with an explicit number of iterations.
pub fn repeat_n(times: usize, mut body: impl FnMut(usize)) {
    for i in 0..times {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(i)));
        if let Err(panic) = run {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(a panic without a message)");
            panic!("iteration {} of {times} failed: {message}", i + 1);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Admin API shorthands

pub const GATEWAYS: &str = "/api/v1/gateways";

/// Another loopback address, for "a different client IP".
pub const OTHER_CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// The seed's gateway (`my-first-gateway` on `api`) with its rate limiter, as valid JSON.
pub fn seed_gateway() -> Value {
    json!({
        "name": "my-first-gateway",
        "subdomain": "api",
        "required_plugins": [{
            "name": "rate_limiter",
            "enabled": true,
            "stage": "pre_request",
            "priority": 1,
            "settings": {
                "limits": {
                    "global": {"limit": 15, "window": "1m"},
                    "per_ip": {"limit": 5, "window": "1m"},
                    "per_user": {"limit": 5, "window": "1m"}
                },
                "actions": {"type": "reject", "retry_after": "60"}
            }
        }]
    })
}

/// The `id` string of a JSON entity; panics when it has none.
pub fn id_of(entity: &Value) -> String {
    entity
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("entity has no string id: {entity}"))
        .to_owned()
}

/// A gateway's child collection path: `/api/v1/gateways/<id>/<collection>`.
pub fn children(gateway_id: &str, collection: &str) -> String {
    format!("{GATEWAYS}/{gateway_id}/{collection}")
}

/// Creates a gateway with `subdomain` (no plugins) and returns its JSON.
pub fn create_gateway(admin: &Client, subdomain: &str) -> Value {
    admin
        .post_json(
            GATEWAYS,
            &json!({"name": format!("gw-{subdomain}"), "subdomain": subdomain}),
        )
        .expect_status(201)
        .json()
}

/// Creates an upstream with one target and returns its JSON.
pub fn create_upstream(admin: &Client, gateway_id: &str, name: &str) -> Value {
    admin
        .post_json(
            &children(gateway_id, "upstreams"),
            &json!({"name": name, "targets": [{"host": "127.0.0.1", "port": 9}]}),
        )
        .expect_status(201)
        .json()
}

/// Creates a service on `upstream_id` and returns its JSON.
pub fn create_service(admin: &Client, gateway_id: &str, name: &str, upstream_id: &str) -> Value {
    admin
        .post_json(
            &children(gateway_id, "services"),
            &json!({"name": name, "upstream_id": upstream_id}),
        )
        .expect_status(201)
        .json()
}

/// Creates a rule for `path` on `service_id` and returns its JSON.
pub fn create_rule(admin: &Client, gateway_id: &str, path: &str, service_id: &str) -> Value {
    admin
        .post_json(
            &children(gateway_id, "rules"),
            &json!({"path": path, "methods": ["GET"], "service_id": service_id}),
        )
        .expect_status(201)
        .json()
}

/// Creates an API key expiring in a year and returns the create response's JSON (which has
/// the plaintext).
pub fn create_key(admin: &Client, gateway_id: &str, name: &str) -> Value {
    admin
        .post_json(
            &children(gateway_id, "keys"),
            &json!({"name": name, "expires_at": rfc3339_in(365 * DAY_SECS)}),
        )
        .expect_status(201)
        .json()
}

/// Everything a server holds, as the admin API lists it: gateway id → the gateway and each
/// of its collections (lists sorted by id). Used to compare before and after a restart.
pub fn dump(admin: &Client) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for gateway in list_all(admin, GATEWAYS, "gateways") {
        let id = id_of(&gateway);
        let mut entry = serde_json::Map::new();
        entry.insert("gateway".into(), gateway);
        for collection in ["upstreams", "services", "rules", "keys"] {
            let items = list_all(admin, &children(&id, collection), collection);
            entry.insert(collection.into(), Value::Array(items));
        }
        out.insert(id, Value::Object(entry));
    }
    out
}

/// Every item of a paginated collection, following `offset` until `count` is reached.
pub fn list_all(admin: &Client, path: &str, field: &str) -> Vec<Value> {
    let mut items = Vec::new();
    // Bounded: 1000 pages of 100 is far beyond any test.
    for _ in 0..1000 {
        let page = admin
            .get(&format!("{path}?offset={}&limit=100", items.len()))
            .expect_status(200)
            .json();
        let count = page["count"]
            .as_u64()
            .unwrap_or_else(|| panic!("list without count: {page}")) as usize;
        let batch = page[field]
            .as_array()
            .unwrap_or_else(|| panic!("list without {field}: {page}"))
            .clone();
        let empty = batch.is_empty();
        items.extend(batch);
        if items.len() >= count || empty {
            return items;
        }
    }
    panic!("{path}: more than 1000 pages")
}

/// The Python the HTTP/2, gRPC and observability tests run their clients, servers and the
/// Prometheus text parser with (grpcio, h2, prometheus_client):
/// `$SHARDGATE_TEST_PYTHON` (tests/run's virtual environment), else that environment if it
/// exists, else `python3`.
pub fn python() -> String {
    std::env::var("SHARDGATE_TEST_PYTHON").unwrap_or_else(|_| {
        let venv = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/test-venv/bin/python"
        );
        if Path::new(venv).exists() {
            venv.to_owned()
        } else {
            "python3".to_owned()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_is_parsed_with_or_without_a_tls_listener() {
        let ready = parse_ready(
            "shardgate ready admin=127.0.0.1:4000 proxy=127.0.0.1:4001 tls=127.0.0.1:4002\n",
        )
        .expect("a ready line");
        assert_eq!(ready.admin.port(), 4000);
        assert_eq!(ready.proxy.port(), 4001);
        assert_eq!(ready.tls.map(|t| t.port()), Some(4002));
        let off = parse_ready("shardgate ready admin=127.0.0.1:4000 proxy=127.0.0.1:4001 tls=off")
            .expect("a ready line with tls=off");
        assert_eq!(off.tls, None);
        let before = parse_ready("shardgate ready admin=127.0.0.1:4000 proxy=127.0.0.1:4001")
            .expect("a ready line without tls=");
        assert_eq!((before.proxy.port(), before.tls), (4001, None));
        assert!(parse_ready("shardgate starting").is_none());
    }

    #[test]
    fn server_name_is_the_host_headers_name() {
        let addr: SocketAddr = "127.0.0.1:8443".parse().expect("an address");
        assert_eq!(Client::new(addr).server_name(), "127.0.0.1");
        let client = Client::new(addr).host("api.localhost:8443");
        assert_eq!(client.server_name(), "api.localhost");
        assert_eq!(client.host("api.localhost").server_name(), "api.localhost");
    }

    #[test]
    fn whole_response_len_waits_for_the_framed_end() {
        let cl = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
        assert_eq!(whole_response_len(&cl[..cl.len() - 1], false), Ok(None));
        assert_eq!(whole_response_len(cl, false), Ok(Some(cl.len())));
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\nNEXT";
        assert_eq!(
            whole_response_len(chunked, false),
            Ok(Some(chunked.len() - 4))
        );
        assert_eq!(whole_response_len(&chunked[..40], false), Ok(None));
    }

    #[test]
    fn responses_with_content_length_and_chunked_bodies_parse() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiXX", false)
            .expect("content-length");
        assert_eq!(r.body, b"hi");
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3;x=y\r\nllo\r\n0\r\n\r\n",
            false,
        )
        .expect("chunked");
        assert_eq!(r.body, b"hello");
        let r =
            parse_response(b"HTTP/1.1 204 No Content\r\nAllow: GET\r\n\r\n", false).expect("204");
        assert_eq!(r.header("allow"), Some("GET"));
    }

    #[test]
    fn client_can_connect_from_another_loopback_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a listener");
        let addr = listener.local_addr().expect("listener address");
        let stream = Client::new(addr).source_ip(OTHER_CLIENT_IP).connect();
        let (_, peer) = listener.accept().expect("accept");
        assert_eq!(peer.ip(), OTHER_CLIENT_IP);
        drop(stream);
    }

    #[test]
    fn repeat_runs_every_iteration_and_names_the_one_that_failed() {
        let mut seen = Vec::new();
        repeat_n(3, |i| seen.push(i));
        assert_eq!(seen, [0, 1, 2]);
        let failed = std::panic::catch_unwind(|| repeat_n(5, |i| assert!(i < 2, "boom")))
            .expect_err("the third iteration fails");
        let message = failed
            .downcast_ref::<String>()
            .expect("a formatted message");
        assert!(
            message.starts_with("iteration 3 of 5 failed: boom"),
            "{message}"
        );
    }

    #[test]
    fn rfc3339_in_is_relative_to_now_in_whole_seconds() {
        let parse = |text: &str| {
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .expect("RFC 3339")
        };
        let now = time::OffsetDateTime::now_utc();
        let later = parse(&rfc3339_in(DAY_SECS));
        let earlier = parse(&rfc3339_in(-DAY_SECS));
        assert_eq!(later.nanosecond(), 0);
        assert!((later - now - time::Duration::days(1)).abs() < time::Duration::seconds(5));
        assert!((now - earlier - time::Duration::days(1)).abs() < time::Duration::seconds(5));
        assert!(rfc3339_in(0).ends_with('Z'));
    }

    #[test]
    fn targets_accept_urls_and_addresses() {
        assert_eq!("http://127.0.0.1:80/x".socket_addr().port(), 80);
        assert_eq!("127.0.0.1:81".socket_addr().port(), 81);
    }
}
