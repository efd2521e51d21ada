//! The admin thread: opens the store, serves the REST API, compiles and broadcasts snapshots.
//!
//! Life cycle: [`Admin::open`] runs on the main thread before any worker exists — it takes
//! the data directory's lock, recovers checkpoint + journal (refusing to start when they are
//! damaged beyond a torn tail) and compiles the first snapshot, which workers start with.
//! [`Admin::spawn`] binds the listener (so a bad address fails start-up, not a thread) and
//! runs the API on its own thread with its own monoio runtime; every mutation is handled
//! there, one at a time, which is what serializes writes.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use shardgate_core::ratelimit::Registry;
use shardgate_core::snapshot::Snapshot;
use shardgate_core::state::{ApplyError, Mutation, State};

use crate::api::Api;
use crate::broadcast::Broadcaster;
use crate::devcert;
use crate::health::ProbeTlsMaker;
use crate::http::{self, ServerLimits};
use crate::resolve::CompileEnv;
use crate::store::{Durable, Store, StoreOptions};
use crate::usage::UsageTracker;

impl Durable for State {
    type Mutation = Mutation;
    type Error = ApplyError;

    fn apply(&mut self, m: &Mutation) -> Result<(), ApplyError> {
        State::apply(self, m)
    }
}

/// Everything the admin thread needs from the command line.
#[derive(Clone)]
pub struct AdminOptions {
    pub listen: SocketAddr,
    /// When set, every route but `/health` requires `Authorization: Bearer <token>`.
    pub token: Option<String>,
    pub data_dir: PathBuf,
    pub base_domain: String,
    /// fsync every write (default). Off only for benchmarks that measure everything else.
    pub fsync: bool,
    /// Shared rate-limit counters; the workers hold the same registry.
    pub rate_limits: Arc<Registry>,
    /// Serve a development certificate ([`crate::devcert`]) when no uploaded certificate
    /// covers `*.<base_domain>`: set when the HTTPS listener is on.
    pub dev_certificate: bool,
    /// The workers' traffic counters, rendered on `/metrics`; their usage deltas, flushed
    /// into the usage book once a second.
    pub telemetry: Arc<shardgate_core::metrics::Telemetry>,
    /// `--usage`: the workers count usage (the book is opened and exported either way).
    pub usage: bool,
    /// `--usage-day-retention`.
    pub usage_day_retention: Duration,
}

impl std::fmt::Debug for AdminOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminOptions")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("data_dir", &self.data_dir)
            .field("base_domain", &self.base_domain)
            .field("fsync", &self.fsync)
            .field("dev_certificate", &self.dev_certificate)
            .finish_non_exhaustive()
    }
}

/// Why the admin side could not start.
#[derive(Debug)]
pub struct AdminError(pub String);

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AdminError {}

/// The opened (recovered) store and state, before the admin thread runs.
#[derive(Debug)]
pub struct Admin {
    opts: AdminOptions,
    store: Store<State>,
    state: State,
    snapshot: Arc<Snapshot>,
    env: CompileEnv,
    usage: UsageTracker,
}

impl Admin {
    /// Opens the data directory and recovers it; refuses (Err) when it is corrupt.
    pub fn open(opts: AdminOptions) -> Result<Admin, AdminError> {
        let store_opts = StoreOptions {
            fsync: opts.fsync,
            ..StoreOptions::default()
        };
        let (store, mut state) = Store::<State>::open(&opts.data_dir, store_opts)
            .map_err(|e| AdminError(format!("cannot open the data directory: {e}")))?;
        // Loaded whenever the listener is on, so deleting the upload that covers the base
        // domain brings the development certificate back at once, not at the next restart.
        let mut fallback = None;
        if opts.dev_certificate {
            let cert = devcert::load_or_create(&opts.data_dir, &opts.base_domain)
                .map_err(|e| AdminError(format!("development certificate: {e}")))?;
            fallback = Some(cert);
        }
        if let Some(cert) = fallback
            .as_ref()
            .filter(|_| !devcert::covered(&state, &opts.base_domain))
        {
            tracing::warn!(
                names = ?cert.info.sans,
                not_after = %shardgate_core::certs::rfc3339(cert.info.not_after),
                path = %opts.data_dir.join(devcert::DEV_CERT_FILE).display(),
                "the HTTPS listener serves a self-signed DEVELOPMENT certificate to names no \
                 uploaded certificate covers; upload one (POST /api/v1/certificates) for production"
            );
        }
        state.set_tls_default(&opts.base_domain, fallback);
        let recovery = store.stats().recovery;
        tracing::info!(
            data_dir = %opts.data_dir.display(),
            gateways = state.gateways().len(),
            checkpoint_generation = recovery.checkpoint_generation,
            replayed_records = recovery.replayed_records,
            torn_tail = recovery.torn_tail.is_some(),
            "store recovered"
        );
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let usage = UsageTracker::open(
            &opts.data_dir,
            opts.fsync,
            i64::try_from(opts.usage_day_retention.as_secs()).unwrap_or(i64::MAX),
            opts.telemetry.workers.len(),
            now,
        )
        .map_err(|e| AdminError(format!("cannot open the usage store: {e}")))?;
        let env = CompileEnv::new(opts.rate_limits.clone());
        seed_budgets(&state, &usage, &env, now);
        let snapshot = Arc::new(Snapshot::compile(1, &state, &env));
        for g in state.gateways() {
            if let Some(compiled) = snapshot.gateway_by_id(g.gateway.id)
                && let Some(reason) = &compiled.broken
            {
                tracing::error!(gateway = %g.gateway.id, %reason, "stored gateway no longer compiles; it answers 503 until fixed");
            }
        }
        Ok(Admin {
            opts,
            store,
            state,
            snapshot,
            env,
            usage,
        })
    }

    /// The snapshot compiled from the recovered state: workers start with it.
    pub fn initial_snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.clone()
    }

    /// Binds the admin listener (bind errors surface here) and runs the API on its own
    /// thread; `probe_tls` makes, on that thread, the TLS clients of health probes to
    /// `https` targets.
    pub fn spawn(
        self,
        broadcaster: Broadcaster,
        probe_tls: ProbeTlsMaker,
    ) -> Result<AdminThread, AdminError> {
        let listen = self.opts.listen;
        let listener = std::net::TcpListener::bind(listen)
            .map_err(|e| AdminError(format!("cannot listen on {listen} (admin API): {e}")))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| AdminError(format!("admin listener: {e}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| AdminError(format!("admin listener: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let api = Api::new(
            self.state,
            self.store,
            self.snapshot,
            broadcaster,
            self.opts.token.as_deref(),
            self.env,
            (self.opts.telemetry.clone(), self.usage),
        );
        let join = std::thread::Builder::new()
            .name("shardgate-admin".into())
            .spawn(move || run(listener, api, stop_flag, probe_tls))
            .map_err(|e| AdminError(format!("cannot start the admin thread: {e}")))?;
        Ok(AdminThread {
            local_addr,
            stop,
            join: Some(join),
        })
    }
}

fn run(listener: std::net::TcpListener, api: Api, stop: Arc<AtomicBool>, probe_tls: ProbeTlsMaker) {
    let runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build();
    let mut runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "admin thread: cannot build its runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match monoio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "admin thread: cannot register its listener");
                return;
            }
        };
        // One thread, so the API handler (synchronous) and the health checker (between its
        // awaits) take turns on the same state without locks.
        let api = Rc::new(RefCell::new(api));
        monoio::spawn(crate::health::run(api.clone(), stop.clone(), probe_tls()));
        monoio::spawn(flush_usage(api.clone(), stop.clone()));
        let serving = api.clone();
        http::serve(
            listener,
            ServerLimits::default(),
            move |req| serving.borrow_mut().handle(req),
            http::until_flag_set(stop, Duration::from_millis(50)),
        )
        .await;
        // The workers have stopped (they are shut down first): this flush takes the last
        // of their counts, so a clean shutdown loses no usage.
        api.borrow_mut().flush_usage();
    });
}

/// How often the workers' usage is taken into the book.
const USAGE_FLUSH: Duration = Duration::from_secs(1);

async fn flush_usage(api: Rc<RefCell<Api>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Acquire) {
        monoio::time::sleep(USAGE_FLUSH).await;
        api.borrow_mut().flush_usage();
    }
}

/// A running admin thread.
#[derive(Debug)]
pub struct AdminThread {
    pub local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
}

impl AdminThread {
    /// Stops serving (in-flight requests are answered) and joins the thread.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(join) = self.join.take()
            && join.join().is_err()
        {
            tracing::error!("admin thread panicked");
        }
    }

    /// Whether the admin thread has stopped on its own (it only does on a fatal error).
    pub fn is_finished(&self) -> bool {
        self.join.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

/// Gives each key with a budget what the usage store holds for its current period, so a
/// restart does not hand out a spent budget again.
fn seed_budgets(
    state: &shardgate_core::state::State,
    usage: &UsageTracker,
    env: &CompileEnv,
    now: i64,
) {
    for g in state.gateways() {
        for (id, record) in &g.keys {
            let Some(budget) = &record.spec.spec.budget else {
                continue;
            };
            let (start, _) = budget.period_at(record.created_at.unix_timestamp(), now);
            let (tokens, cost) = usage.spent_since(g.gateway.id, *id, start);
            if tokens > 0 || cost > 0 {
                env.budgets.seed(*id, start, tokens, cost);
            }
        }
    }
}
