//! The process lifecycle: start-up order, the ready line, signals, graceful shutdown and
//! exit codes. `main.rs` only calls [`main`].
//!
//! Start-up (DESIGN.md §2), each step failing with a clear message and no panic:
//! parse CLI → tracing → signal handlers → open the store (`Admin::open`, recovery) →
//! choose the I/O driver → bind all proxy listeners → snapshot channels → spawn workers and
//! wait until each is accepting → start the admin thread (binds the admin port) → print
//! `shardgate ready admin=<addr> proxy=<addr> tls=<addr|off>` on stdout (the only stdout line; logs go to
//! stderr).
//!
//! Shutdown on SIGTERM/SIGINT: every worker closes its listener and drains in-flight
//! connections for up to `--shutdown-grace`; then the admin thread stops; exit 0.
//! A second signal exits at once (1). A worker that dies on its own also shuts the rest
//! down (1).
//!
//! Exit codes: 0 clean shutdown; 1 runtime or start-up failure (port in use, io_uring
//! unavailable, ...); 2 bad command line or configuration, or an unusable data directory.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, select};
use shardgate_admin::broadcast;
use shardgate_admin::server::{Admin, AdminOptions, AdminThread};
use shardgate_core::metrics::Telemetry;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::accept::bind_listeners;
use crate::access_log;
use crate::shell::cli::{self, CliError, Config, Invocation};
use crate::worker::{self, WorkerEvent, WorkerHandle, WorkerSpec};

/// How long workers may take to build their runtimes and report ready.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Slack on top of `--shutdown-grace` for workers to exit after their drain ends.
const EXIT_SLACK: Duration = Duration::from_secs(2);
/// How often the main thread checks that the admin thread is still alive.
const ADMIN_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A start-up or shutdown failure: what to tell the user, and the exit code.
#[derive(Debug)]
struct Fatal {
    code: u8,
    message: String,
}

impl Fatal {
    fn runtime(message: impl Into<String>) -> Self {
        Fatal {
            code: 1,
            message: message.into(),
        }
    }

    fn usage(message: impl Into<String>) -> Self {
        Fatal {
            code: 2,
            message: message.into(),
        }
    }
}

/// Runs `shardgate` with the process's arguments and environment.
pub fn main() -> ExitCode {
    let invocation = match cli::parse() {
        Ok(invocation) => invocation,
        Err(CliError::Clap(e)) => {
            // --help and --version land here too, with exit code 0.
            let _ = e.print();
            return exit_code(e.exit_code());
        }
        Err(e) => return report(Fatal::usage(e.to_string())),
    };
    match invocation {
        Invocation::Run(config) => match run(config) {
            Ok(code) => ExitCode::from(code),
            Err(fatal) => report(fatal),
        },
        Invocation::Doctor(args) => crate::shell::doctor::main(&args),
    }
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Prints a fatal error to stderr (never panics, even if stderr is closed).
fn report(fatal: Fatal) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "shardgate: error: {}", fatal.message);
    ExitCode::from(fatal.code)
}

fn init_tracing(filter: &str) -> Result<(), Fatal> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| Fatal::usage(format!("invalid --log filter {filter:?}: {e}")))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_thread_names(true)
        .try_init()
        .or_else(|e| {
            // A gateway embedded a second time in one process (tests) keeps the first's.
            if tracing::dispatcher::has_been_set() {
                Ok(())
            } else {
                Err(Fatal::runtime(format!("cannot initialise logging: {e}")))
            }
        })
}

/// Forwards SIGTERM/SIGINT to a channel from a dedicated thread, so the main thread can
/// wait on signals and worker events together.
/// SIGHUP sets `hangup` (the access log reopens its file) and is not forwarded.
fn watch_signals(hangup: Arc<AtomicBool>) -> Result<Receiver<i32>, Fatal> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| Fatal::runtime(format!("cannot install signal handlers: {e}")))?;
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("shardgate-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    tracing::info!("SIGHUP: reopening the access log");
                    hangup.store(true, Ordering::Release);
                    continue;
                }
                if tx.send(signal).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| Fatal::runtime(format!("cannot start the signal thread: {e}")))?;
    Ok(rx)
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        _ => "signal",
    }
}

/// Where a started gateway listens.
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    pub admin: SocketAddr,
    pub proxy: SocketAddr,
    pub tls: Option<SocketAddr>,
}

/// Runs the gateway inside the calling process, as `shardgate` would with `args`
/// (`args[0]` is the program name): for tests that must look inside the process, such as
/// the heap-allocation count of `proxy/tests/allocations.rs`. `ready` is called once,
/// when the ready line is printed. Returns the exit code of the shutdown (signals are the
/// process's, as for the binary).
pub fn run_embedded(args: &[&str], ready: impl FnOnce(Ready)) -> u8 {
    let config = match cli::parse_from(args) {
        Ok(Invocation::Run(config)) => config,
        Ok(Invocation::Doctor(_)) => return 2,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "shardgate: error: {e}");
            return 2;
        }
    };
    let mut ready = Some(ready);
    match run_with(config, &mut |addrs| {
        if let Some(ready) = ready.take() {
            ready(addrs);
        }
    }) {
        Ok(code) => code,
        Err(fatal) => {
            let _ = writeln!(std::io::stderr(), "shardgate: error: {}", fatal.message);
            fatal.code
        }
    }
}

/// `shardgate run`: returns the exit code of a shutdown, or a start-up failure.
fn run(config: Config) -> Result<u8, Fatal> {
    run_with(config, &mut |_| {})
}

fn run_with(config: Config, on_ready: &mut dyn FnMut(Ready)) -> Result<u8, Fatal> {
    init_tracing(&config.log)?;
    let hangup = Arc::new(AtomicBool::new(false));
    let signals = watch_signals(hangup.clone())?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        workers = config.workers,
        io_driver = %config.io_driver,
        data_dir = %config.data_dir.display(),
        admin_token = config.admin_token.is_some(),
        "starting shardgate"
    );

    // Cheap checks before the store is opened (and its lock taken).
    let driver = worker::choose_driver(config.io_driver).map_err(Fatal::runtime)?;
    let mut settings = config.proxy_settings();
    let telemetry = Arc::new(Telemetry::new(config.workers));
    settings.telemetry = telemetry.clone();
    let mut log_writer = None;
    if let Some(path) = &config.access_log {
        let destination = access_log::Destination::parse(&path.to_string_lossy());
        let (log, writer) =
            access_log::start(destination, telemetry.clone(), hangup).map_err(|e| {
                Fatal::usage(format!(
                    "cannot open the access log {}: {e}",
                    path.display()
                ))
            })?;
        settings.access_log = Some(log);
        log_writer = Some(writer);
    }
    let settings = Arc::new(settings);
    // The system's root store is read here, once, not by a worker on its first https request.
    let roots = crate::tls::init();
    tracing::info!(roots, "loaded root certificates for https upstreams");
    let admin = Admin::open(AdminOptions {
        listen: config.admin_listen,
        token: config
            .admin_token
            .as_ref()
            .map(|t| t.expose_secret().to_owned()),
        data_dir: config.data_dir.clone(),
        base_domain: config.base_domain.clone(),
        fsync: true,
        rate_limits: settings.rate_limits.clone(),
        dev_certificate: config.tls_listen.addr().is_some(),
        telemetry,
        usage: config.usage,
        usage_day_retention: config.usage_day_retention,
    })
    // The admin's message names the directory and what is wrong with it (e.g. a
    // corrupt journal); it must reach the user as is.
    .map_err(|e| Fatal::usage(e.to_string()))?;

    let listeners = bind_listeners(config.proxy_listen, config.workers)
        .map_err(|e| Fatal::runtime(listen_error("proxy", config.proxy_listen, &e)))?;
    let proxy_addr = listeners
        .first()
        .map(|l| l.local_addr())
        .transpose()
        .map_err(|e| Fatal::runtime(format!("cannot read the proxy listener's address: {e}")))?
        .unwrap_or(config.proxy_listen);

    let tls_listeners = match config.tls_listen.addr() {
        Some(addr) => Some(
            bind_listeners(addr, config.workers)
                .map_err(|e| Fatal::runtime(listen_error("HTTPS", addr, &e)))?,
        ),
        None => None,
    };
    let tls_addr = tls_listeners
        .as_ref()
        .and_then(|l| l.first())
        .map(|l| l.local_addr())
        .transpose()
        .map_err(|e| Fatal::runtime(format!("cannot read the HTTPS listener's address: {e}")))?;
    crate::downstream::init();

    let (broadcaster, links) = broadcast::channels(config.workers, admin.initial_snapshot())
        .map_err(|e| Fatal::runtime(format!("cannot create the snapshot channels: {e}")))?;

    let mut workers = Workers::start(&config, &settings, driver, listeners, tls_listeners, links)?;
    if let Err(stop) = workers.wait_ready(&signals) {
        workers.shutdown(&signals, config.shutdown_grace);
        return match stop {
            StartupStop::Signal(signal) => {
                tracing::info!("{} during start-up; stopped", signal_name(signal));
                Ok(0)
            }
            StartupStop::Failed(fatal) => Err(fatal),
        };
    }

    let admin_thread = match admin.spawn(broadcaster, crate::tls::probe_tls()) {
        Ok(admin_thread) => admin_thread,
        Err(e) => {
            workers.shutdown(&signals, config.shutdown_grace);
            // The admin's message names the address and the cause.
            return Err(Fatal::runtime(e.to_string()));
        }
    };

    announce_ready(&admin_thread, proxy_addr, tls_addr);
    on_ready(Ready {
        admin: admin_thread.local_addr,
        proxy: proxy_addr,
        tls: tls_addr,
    });
    let code = match workers.wait_for_stop(&signals, &admin_thread) {
        Stop::Signal(signal) => {
            tracing::info!(
                grace = ?config.shutdown_grace,
                "{} received: closing listeners and draining in-flight connections",
                signal_name(signal)
            );
            0
        }
        Stop::WorkerDied(id) => {
            tracing::error!(worker = id, "worker exited unexpectedly; shutting down");
            1
        }
        Stop::AdminDied => {
            tracing::error!("the admin thread exited unexpectedly; shutting down");
            1
        }
        Stop::AllWorkersGone => {
            tracing::error!("every worker has exited; shutting down");
            1
        }
    };
    let code = match workers.shutdown(&signals, config.shutdown_grace) {
        Drain::Complete => code,
        Drain::Forced => return Ok(1),
        Drain::Stuck => 1,
    };
    admin_thread.shutdown();
    if let Some(writer) = log_writer {
        // The workers handed over what they held when they stopped.
        drop((workers, settings));
        writer.finish(EXIT_SLACK);
    }
    tracing::info!("shutdown complete");
    Ok(code)
}

/// The machine-readable start-up line (tests and scripts wait for it).
fn announce_ready(admin: &AdminThread, proxy: SocketAddr, tls: Option<SocketAddr>) {
    let tls = tls.map_or_else(|| "off".to_owned(), |addr| addr.to_string());
    let mut stdout = std::io::stdout().lock();
    let printed = writeln!(
        stdout,
        "shardgate ready admin={} proxy={proxy} tls={tls}",
        admin.local_addr
    )
    .and_then(|()| stdout.flush());
    if let Err(e) = printed {
        tracing::warn!(error = %e, "could not print the ready line to stdout");
    }
    tracing::info!(admin = %admin.local_addr, %proxy, %tls, "ready");
}

fn listen_error(what: &str, addr: SocketAddr, e: &std::io::Error) -> String {
    let hint = match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "; another process (possibly another shardgate) is listening there: stop it or choose another --proxy-listen"
        }
        std::io::ErrorKind::PermissionDenied => {
            "; ports below 1024 need root or CAP_NET_BIND_SERVICE"
        }
        std::io::ErrorKind::AddrNotAvailable => "; no local interface has that address",
        _ => "",
    };
    format!("cannot listen for {what} traffic on {addr}: {e}{hint}")
}

enum StartupStop {
    Signal(i32),
    Failed(Fatal),
}

enum Stop {
    Signal(i32),
    WorkerDied(usize),
    AllWorkersGone,
    AdminDied,
}

enum Drain {
    /// Every worker exited within the bound.
    Complete,
    /// A second signal asked to exit immediately.
    Forced,
    /// Some worker did not exit within grace + slack.
    Stuck,
}

/// `main`'s view of the worker threads.
struct Workers {
    handles: Vec<WorkerHandle>,
    events: Receiver<WorkerEvent>,
    exited: Vec<bool>,
}

impl Workers {
    fn start(
        config: &Config,
        settings: &std::sync::Arc<crate::settings::ProxySettings>,
        driver: worker::DriverChoice,
        listeners: Vec<std::net::TcpListener>,
        tls_listeners: Option<Vec<std::net::TcpListener>>,
        links: Vec<broadcast::WorkerLink>,
    ) -> Result<Workers, Fatal> {
        let cpus = worker::allowed_cpus();
        let (tx, events) = crossbeam_channel::unbounded();
        let mut workers = Workers {
            handles: Vec::new(),
            events,
            exited: Vec::new(),
        };
        let mut tls_listeners = tls_listeners.map(Vec::into_iter);
        for (id, (listener, link)) in listeners.into_iter().zip(links).enumerate() {
            let spec = WorkerSpec {
                id,
                cpu: (!cpus.is_empty()).then(|| cpus[id % cpus.len()]),
                driver,
                listener,
                tls_listener: tls_listeners.as_mut().and_then(Iterator::next),
                link,
                grace: config.shutdown_grace,
                settings: settings.clone(),
            };
            match worker::spawn(spec, tx.clone()) {
                Ok(handle) => {
                    workers.handles.push(handle);
                    workers.exited.push(false);
                }
                Err(e) => {
                    drop(tx);
                    workers.stop_all();
                    return Err(Fatal::runtime(format!(
                        "cannot start worker thread {id}: {e}"
                    )));
                }
            }
        }
        // Only the workers hold senders now: the channel disconnects when all have exited.
        drop(tx);
        Ok(workers)
    }

    fn wait_ready(&mut self, signals: &Receiver<i32>) -> Result<(), StartupStop> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut ready = 0;
        while ready < self.handles.len() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            select! {
                recv(self.events) -> event => match event {
                    Ok(WorkerEvent::Ready { .. }) => ready += 1,
                    Ok(WorkerEvent::Failed { id, error }) => {
                        return Err(StartupStop::Failed(Fatal::runtime(format!("worker {id}: {error}"))));
                    }
                    Ok(WorkerEvent::Exited { id, panicked }) => {
                        self.mark_exited(id);
                        let how = if panicked { "panicked" } else { "exited" };
                        return Err(StartupStop::Failed(Fatal::runtime(format!("worker {id} {how} during start-up"))));
                    }
                    Err(_) => return Err(StartupStop::Failed(Fatal::runtime("every worker exited during start-up"))),
                },
                recv(signals) -> signal => return Err(StartupStop::Signal(signal.unwrap_or(SIGTERM))),
                default(remaining) => {
                    return Err(StartupStop::Failed(Fatal::runtime(format!(
                        "workers did not start within {STARTUP_TIMEOUT:?} ({ready} of {} ready)",
                        self.handles.len()
                    ))));
                }
            }
        }
        Ok(())
    }

    /// Blocks until a shutdown signal, or until a worker or the admin thread dies.
    fn wait_for_stop(&mut self, signals: &Receiver<i32>, admin: &AdminThread) -> Stop {
        loop {
            if admin.is_finished() {
                return Stop::AdminDied;
            }
            select! {
                recv(signals) -> signal => return Stop::Signal(signal.unwrap_or(SIGTERM)),
                recv(self.events) -> event => match event {
                    Ok(WorkerEvent::Exited { id, panicked }) => {
                        self.mark_exited(id);
                        if panicked {
                            tracing::error!(worker = id, "worker panicked");
                        }
                        return Stop::WorkerDied(id);
                    }
                    Ok(WorkerEvent::Failed { id, error }) => {
                        tracing::error!(worker = id, "{error}");
                    }
                    Ok(WorkerEvent::Ready { .. }) => {}
                    Err(_) => return Stop::AllWorkersGone,
                },
                // The admin thread has no event channel; check on it now and then.
                default(ADMIN_CHECK_INTERVAL) => {}
            }
        }
    }

    fn stop_all(&mut self) {
        for handle in &mut self.handles {
            handle.stop();
        }
    }

    fn mark_exited(&mut self, id: usize) {
        if let Some(exited) = self.exited.get_mut(id) {
            *exited = true;
        }
    }

    /// Stops every worker and waits (bounded) for them to drain and exit.
    fn shutdown(&mut self, signals: &Receiver<i32>, grace: Duration) -> Drain {
        self.stop_all();
        let deadline = Instant::now() + grace + EXIT_SLACK;
        while self.exited.iter().any(|exited| !exited) {
            let remaining = deadline.saturating_duration_since(Instant::now());
            select! {
                recv(self.events) -> event => match event {
                    Ok(WorkerEvent::Exited { id, .. }) => self.mark_exited(id),
                    Ok(_) => {}
                    // Every worker's sender is gone: all have exited.
                    Err(_) => self.exited.iter_mut().for_each(|exited| *exited = true),
                },
                recv(signals) -> signal => {
                    tracing::warn!(
                        "second {}: exiting without waiting for in-flight connections",
                        signal_name(signal.unwrap_or(SIGTERM))
                    );
                    return Drain::Forced;
                }
                default(remaining) => {
                    let stuck: Vec<usize> = (0..self.exited.len()).filter(|id| !self.exited[*id]).collect();
                    tracing::error!(?stuck, "workers did not exit within the shutdown grace period; exiting anyway");
                    return Drain::Stuck;
                }
            }
        }
        for handle in self.handles.drain(..) {
            // Every worker sent `Exited` from its thread's last drop: joins return at once.
            handle.join();
        }
        Drain::Complete
    }
}
