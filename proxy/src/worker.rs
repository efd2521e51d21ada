//! Worker threads: one per core, each pinned, with its own monoio runtime, its own
//! SO_REUSEPORT listener and its own copy of the current [`Snapshot`]. Nothing on a
//! worker's request path is shared with another core.
//!
//! Life of a worker:
//! 1. `main` binds its listener ([`crate::accept::bind_listeners`]) and calls [`spawn`].
//! 2. The thread pins itself, builds its runtime (io_uring or epoll), adopts its listener,
//!    snapshot wake-up socket and stop socket, reports [`WorkerEvent::Ready`], and runs:
//!    - the accept loop ([`crate::accept`]), one task per connection;
//!    - a snapshot follower that awaits the wake-up socket and installs the newest snapshot;
//!    - a stop watcher that awaits the stop socket.
//! 3. [`WorkerHandle::stop`] closes the stop socket: the worker cancels its accept, closes
//!    its listener, waits up to the grace period for in-flight connections, and exits,
//!    reporting [`WorkerEvent::Exited`] (also when it panics).

use std::fmt;
use std::io;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use monoio::io::{AsyncReadRent, Canceller};
use monoio::time::TimeDriver;
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};
use shardgate_admin::broadcast::WorkerLink;

use socket2::SockRef;

use clap::ValueEnum;
use serde::Deserialize;

use crate::accept::{Listener, accept_loop};
use crate::plane::WorkerContext;
use crate::settings::ProxySettings;
use crate::shutdown::InFlight;

/// Which event-loop driver the workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoDriver {
    /// io_uring when available, else epoll.
    Auto,
    /// io_uring or refuse to start.
    Uring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

impl fmt::Display for IoDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoDriver::Auto => "auto",
            IoDriver::Uring => "uring",
            IoDriver::Epoll => "epoll",
        })
    }
}

/// The event-loop driver a worker actually runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    IoUring,
    /// monoio's "legacy" driver: epoll readiness plus non-blocking syscalls.
    Epoll,
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DriverKind::IoUring => "io_uring",
            DriverKind::Epoll => "epoll",
        })
    }
}

/// The driver plan for all workers, decided once at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverChoice {
    pub kind: DriverKind,
    /// `--io-driver auto`: if building an io_uring runtime fails anyway (e.g. memlock
    /// limits), fall back to epoll instead of failing.
    pub fallback_to_epoll: bool,
}

/// Turns `--io-driver` into a plan. `uring` without kernel support is an error whose
/// message says what to do about it.
pub fn choose_driver(requested: IoDriver) -> Result<DriverChoice, String> {
    let uring = monoio::utils::detect_uring();
    match requested {
        IoDriver::Auto if uring => Ok(DriverChoice {
            kind: DriverKind::IoUring,
            fallback_to_epoll: true,
        }),
        IoDriver::Auto => {
            tracing::info!("io_uring is not available; workers use epoll");
            Ok(DriverChoice {
                kind: DriverKind::Epoll,
                fallback_to_epoll: false,
            })
        }
        IoDriver::Uring if uring => Ok(DriverChoice {
            kind: DriverKind::IoUring,
            fallback_to_epoll: false,
        }),
        IoDriver::Uring => Err(
            "--io-driver uring was requested but io_uring is not available here: \
             the kernel is older than 5.6, io_uring is disabled (sysctl kernel.io_uring_disabled, \
             or a seccomp profile such as a container runtime's default), or \
             MONOIO_FORCE_LEGACY_DRIVER is set. Use --io-driver auto (falls back to epoll) or \
             --io-driver epoll"
                .into(),
        ),
        IoDriver::Epoll => Ok(DriverChoice {
            kind: DriverKind::Epoll,
            fallback_to_epoll: false,
        }),
    }
}

/// The CPUs this process may run on, from the `Cpus_allowed_list` line of
/// `/proc/self/status` (affinity set by taskset, cpusets or systemd's `CPUAffinity=`).
/// Empty when unknown; workers then go unpinned rather than onto a CPU they may not use.
pub fn allowed_cpus() -> Vec<usize> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
                .and_then(parse_cpu_list)
        })
        .unwrap_or_default()
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (first.parse::<usize>().ok()?, last.parse::<usize>().ok()?);
                if first > last {
                    return None;
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// What one worker thread needs.
#[derive(Debug)]
pub struct WorkerSpec {
    pub id: usize,
    /// The CPU to pin to; `None` leaves the thread unpinned.
    pub cpu: Option<usize>,
    pub driver: DriverChoice,
    /// This worker's own SO_REUSEPORT listener, already bound.
    pub listener: std::net::TcpListener,
    /// Its HTTPS listener, when `--tls-listen` is on.
    pub tls_listener: Option<std::net::TcpListener>,
    pub link: WorkerLink,
    /// How long in-flight connections may take after shutdown begins.
    pub grace: Duration,
    /// Data-plane limits and timeouts.
    pub settings: Arc<ProxySettings>,
}

/// What a worker thread tells `main`.
#[derive(Debug)]
pub enum WorkerEvent {
    /// Running and accepting on the given driver.
    Ready { id: usize, driver: DriverKind },
    /// Could not start; the thread exits (an `Exited` follows).
    Failed { id: usize, error: String },
    /// The thread is finishing; `panicked` when it ends by a panic.
    Exited { id: usize, panicked: bool },
}

/// `main`'s handle on a running worker.
#[derive(Debug)]
pub struct WorkerHandle {
    id: usize,
    /// `main`'s end of the stop socket; closing it tells the worker to stop.
    stop: Option<UnixStream>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    pub fn id(&self) -> usize {
        self.id
    }

    /// Tells the worker to stop accepting and drain (returns at once). Idempotent.
    pub fn stop(&mut self) {
        // Dropping our end gives the worker EOF. Dropping `main`'s handles (even by a
        // panic) therefore also stops the workers.
        self.stop = None;
    }

    /// Waits for the thread to end. Call it only after its `Exited` event arrived: a
    /// worker that is stuck is better left to the process exit than joined.
    pub fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts a worker thread. Its outcome arrives on `events`.
pub fn spawn(spec: WorkerSpec, events: Sender<WorkerEvent>) -> io::Result<WorkerHandle> {
    let (main_end, worker_end) = UnixStream::pair()?;
    let id = spec.id;
    let thread = std::thread::Builder::new()
        .name(format!("shardgate-w{id}"))
        .spawn(move || worker_thread(spec, worker_end, events))?;
    Ok(WorkerHandle {
        id,
        stop: Some(main_end),
        thread: Some(thread),
    })
}

/// Sends `Exited` when the worker thread ends, however it ends.
struct ExitNotice {
    id: usize,
    events: Sender<WorkerEvent>,
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let panicked = std::thread::panicking();
        let _ = self.events.send(WorkerEvent::Exited {
            id: self.id,
            panicked,
        });
    }
}

type WorkerRuntime = monoio::FusionRuntime<TimeDriver<IoUringDriver>, TimeDriver<LegacyDriver>>;

fn build_runtime(kind: DriverKind) -> io::Result<WorkerRuntime> {
    match kind {
        DriverKind::IoUring => {
            // Cooperative task running: completions are posted when this thread next enters
            // the kernel (every loop turn does) instead of by an interrupt that preempts it;
            // single issuer: only this thread submits. 10–20 % less CPU per proxied request
            // on the bench VM (docs/RUNTIME.md). Tried in order: both flags (kernel 6.0+),
            // COOP_TASKRUN alone (5.19+), then a ring without them.
            for single_issuer in [true, false] {
                let mut tuned = io_uring::IoUring::builder();
                tuned.setup_coop_taskrun();
                if single_issuer {
                    tuned.setup_single_issuer();
                }
                match RuntimeBuilder::<IoUringDriver>::new()
                    .enable_timer()
                    .uring_builder(tuned)
                    .build()
                {
                    Ok(runtime) => return Ok(runtime.into()),
                    Err(e) => tracing::debug!(
                        error = %e,
                        single_issuer,
                        "the kernel refused COOP_TASKRUN (with SINGLE_ISSUER when true)"
                    ),
                }
            }
            RuntimeBuilder::<IoUringDriver>::new()
                .enable_timer()
                .build()
                .map(Into::into)
        }
        DriverKind::Epoll => RuntimeBuilder::<LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(Into::into),
    }
}

fn worker_thread(spec: WorkerSpec, stop: UnixStream, events: Sender<WorkerEvent>) {
    let id = spec.id;
    // Declared first so it is dropped last: `Exited` is sent after the runtime is gone.
    let _exit = ExitNotice {
        id,
        events: events.clone(),
    };

    if let Some(cpu) = spec.cpu
        && let Err(e) = monoio::utils::bind_to_cpu_set([cpu])
    {
        tracing::warn!(worker = id, cpu, error = %e, "could not pin worker to its CPU; running unpinned");
    }

    let (mut runtime, driver) = match build_runtime(spec.driver.kind) {
        Ok(runtime) => (runtime, spec.driver.kind),
        Err(e) if spec.driver.kind == DriverKind::IoUring && spec.driver.fallback_to_epoll => {
            tracing::warn!(worker = id, error = %e, "could not build an io_uring runtime; falling back to epoll");
            match build_runtime(DriverKind::Epoll) {
                Ok(runtime) => (runtime, DriverKind::Epoll),
                Err(e) => return fail(&events, id, format!("cannot build an epoll runtime: {e}")),
            }
        }
        Err(e) => {
            return fail(
                &events,
                id,
                format!("cannot build an {} runtime: {e}", spec.driver.kind),
            );
        }
    };
    runtime.block_on(run(spec, stop, driver, events));
}

fn fail(events: &Sender<WorkerEvent>, id: usize, error: String) {
    let _ = events.send(WorkerEvent::Failed { id, error });
}

/// The fds a worker adopts into its runtime.
struct Adopted {
    listener: monoio::net::TcpListener,
    tls_listener: Option<monoio::net::TcpListener>,
    wakeup: monoio::net::UnixStream,
    stop: monoio::net::UnixStream,
}

/// Registers the std sockets with this thread's runtime (must run inside `block_on`).
fn adopt(
    listener: std::net::TcpListener,
    tls_listener: Option<std::net::TcpListener>,
    wakeup: Option<UnixStream>,
    stop: UnixStream,
    driver: DriverKind,
) -> io::Result<Adopted> {
    let wakeup =
        wakeup.ok_or_else(|| io::Error::other("the snapshot wake-up socket was already taken"))?;
    // The epoll driver needs non-blocking fds (as monoio's own bind does); io_uring
    // handles blocking sockets itself.
    if driver == DriverKind::Epoll {
        listener.set_nonblocking(true)?;
        if let Some(tls) = &tls_listener {
            tls.set_nonblocking(true)?;
        }
        wakeup.set_nonblocking(true)?;
        stop.set_nonblocking(true)?;
    }
    Ok(Adopted {
        listener: monoio::net::TcpListener::from_std(listener)?,
        tls_listener: tls_listener
            .map(monoio::net::TcpListener::from_std)
            .transpose()?,
        wakeup: monoio::net::UnixStream::from_std(wakeup)?,
        stop: monoio::net::UnixStream::from_std(stop)?,
    })
}

async fn run(spec: WorkerSpec, stop: UnixStream, driver: DriverKind, events: Sender<WorkerEvent>) {
    let WorkerSpec {
        id,
        cpu,
        listener,
        tls_listener,
        mut link,
        grace,
        settings,
        ..
    } = spec;
    // A second fd for the listening socket, to take it out of the SO_REUSEPORT group
    // synchronously at shutdown (see `stop_listening`).
    let control = match listener.try_clone() {
        Ok(control) => control,
        Err(e) => return fail(&events, id, format!("cannot duplicate the listener: {e}")),
    };
    let tls_control = match tls_listener.as_ref().map(|l| l.try_clone()).transpose() {
        Ok(control) => control,
        Err(e) => {
            return fail(
                &events,
                id,
                format!("cannot duplicate the HTTPS listener: {e}"),
            );
        }
    };
    let wakeup = link.take_wakeup();
    let Adopted {
        listener,
        tls_listener,
        wakeup,
        stop,
    } = match adopt(listener, tls_listener, wakeup, stop, driver) {
        Ok(adopted) => adopted,
        Err(e) => {
            return fail(
                &events,
                id,
                format!("cannot register sockets with the runtime: {e}"),
            );
        }
    };

    let initial = link.try_latest().unwrap_or_else(|| link.initial());
    let version = initial.version;
    let ctx = Rc::new(WorkerContext::new(id, initial, settings));
    ctx.plane().hot_wait_on.set(driver == DriverKind::Epoll);
    link.report_applied(version);

    let canceller = Canceller::new();
    let accept_cancel = canceller.handle();
    monoio::spawn(follow_snapshots(link, wakeup, ctx.clone()));
    monoio::spawn(watch_stop(stop, ctx.clone(), canceller));
    monoio::spawn(sweep_pools(ctx.clone()));
    monoio::spawn(crate::deadline::tick(ctx.plane().wheel.clone()));

    let _ = events.send(WorkerEvent::Ready { id, driver });
    tracing::info!(worker = id, %driver, cpu = ?cpu, snapshot = version, "worker started");

    let in_flight = InFlight::new();
    let plain = accept_loop(
        &listener,
        Listener::Plain,
        accept_cancel.clone(),
        &ctx,
        &in_flight,
    );
    let tls = async {
        if let Some(tls_listener) = &tls_listener {
            accept_loop(tls_listener, Listener::Tls, accept_cancel, &ctx, &in_flight).await;
        }
    };
    monoio::join!(plain, tls);
    stop_listening(id, &control);
    if let Some(tls_control) = &tls_control {
        stop_listening(id, tls_control);
    }
    drop((control, tls_control));
    drop((listener, tls_listener));

    let open = in_flight.count();
    if open > 0 {
        tracing::info!(
            worker = id,
            open,
            ?grace,
            "stopped accepting; waiting for in-flight connections"
        );
        if monoio::time::timeout(grace, in_flight.drained())
            .await
            .is_err()
        {
            tracing::warn!(
                worker = id,
                open = in_flight.count(),
                "grace period over; closing the remaining connections"
            );
        }
    }
    let plane = ctx.plane();
    if let Some(log) = &plane.access_log {
        log.flush(&plane.metrics);
    }
    tracing::debug!(worker = id, "worker stopped");
}

/// Takes the listening socket out of the kernel's SO_REUSEPORT rotation now, so no new
/// connection is queued on a worker that will never accept it (and reset at exit).
///
/// Dropping the monoio listener is not enough: under io_uring its close is an operation
/// queued on the ring, which is only submitted when the runtime next parks; a worker with
/// nothing to drain leaves `block_on` first, and the socket would stay listening.
/// `shutdown(SHUT_RD)` on a listening socket stops it listening synchronously (Linux).
fn stop_listening(id: usize, listener: &std::net::TcpListener) {
    if let Err(e) = SockRef::from(listener).shutdown(std::net::Shutdown::Read) {
        tracing::warn!(worker = id, error = %e, "could not shut the listener down; it closes at exit");
    }
}

/// Worker housekeeping: gives idle rate-limit leases back every 20 ms (so traffic spread
/// over workers is not under-admitted); once a second, closes expired idle upstream
/// connections and frees the request slots the last second did not need.
async fn sweep_pools(ctx: Rc<WorkerContext>) {
    let mut ticks = 0u32;
    while !ctx.shutdown().is_triggered() {
        monoio::time::sleep(Duration::from_millis(20)).await;
        ctx.plane()
            .rate_limits
            .borrow_mut()
            .flush_idle(crate::plane::now_ms());
        ticks += 1;
        let plane = ctx.plane();
        if ticks.is_multiple_of(5)
            && let Some(log) = &plane.access_log
        {
            log.flush(&plane.metrics);
        }
        if ticks.is_multiple_of(50) {
            crate::connection::RequestSlot::trim();
            plane.upstreams.sweep();
            plane.h2_upstreams.sweep();
            let metrics = &plane.metrics;
            let idle = plane.upstreams.idle_count() as u64;
            metrics.pool_idle.store(idle, Ordering::Relaxed);
            let h2 = plane.h2_upstreams.len() as u64;
            metrics.h2_connections.store(h2, Ordering::Relaxed);
        }
    }
}

/// Installs every snapshot the admin thread publishes, as soon as its wake-up byte arrives.
async fn follow_snapshots(
    link: WorkerLink,
    mut wakeup: monoio::net::UnixStream,
    ctx: Rc<WorkerContext>,
) {
    let apply = |link: &WorkerLink| {
        if let Some(snapshot) = link.try_latest() {
            let version = snapshot.version;
            ctx.install(snapshot);
            link.report_applied(version);
            tracing::debug!(worker = ctx.id(), version, "applied snapshot");
        }
    };
    let mut buf = vec![0u8; 64];
    loop {
        let (read, returned) = wakeup.read(buf).await;
        buf = returned;
        match read {
            Ok(0) => {
                // The broadcaster is gone: anything it sent before is still in the channel.
                apply(&link);
                // The broadcaster is dropped when the admin thread ends; `main` notices
                // that and shuts everything down, so warn only if that does not follow.
                let shutdown_follows =
                    monoio::time::timeout(Duration::from_secs(3), ctx.shutdown().triggered())
                        .await
                        .is_ok();
                if !shutdown_follows {
                    tracing::warn!(
                        worker = ctx.id(),
                        version = ctx.snapshot().version,
                        "the admin thread closed the snapshot channel; serving the current snapshot from now on"
                    );
                }
                return;
            }
            Ok(_) => apply(&link),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::error!(worker = ctx.id(), error = %e, "snapshot wake-up socket failed; no further config updates on this worker");
                return;
            }
        }
    }
}

/// Waits for `main` to close (or write to) the stop socket, then starts the shutdown.
async fn watch_stop(
    mut stop: monoio::net::UnixStream,
    ctx: Rc<WorkerContext>,
    canceller: Canceller,
) {
    let (read, _) = stop.read(vec![0u8; 8]).await;
    if let Err(e) = read {
        tracing::warn!(worker = ctx.id(), error = %e, "stop socket failed; stopping");
    }
    ctx.shutdown().trigger();
    // Cancels the pending accept; the accept loop then sees the flag and returns.
    let _ = canceller.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_like_the_kernel_writes_them() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list("\t5"), Some(vec![5]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn this_process_has_at_least_one_allowed_cpu() {
        assert!(!allowed_cpus().is_empty());
    }
}
