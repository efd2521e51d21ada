//! What one worker owns for the data plane: settings, buffer pools, upstream connection
//! pools, balancer cursors and health ([`Plane`]), the snapshot it serves and its shutdown
//! flag ([`WorkerContext`]), and the process-wide clock the rate limiters agree on
//! ([`now_ms`]). Nothing here is shared with another core. Every stage reads it; of the
//! stages it imports only the balancer state of [`crate::pick`] that it holds (and the leaves
//! `buffer`, `pool`, `settings`, `shutdown`, `tls`).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use shardgate_core::metrics::WorkerMetrics;
use shardgate_core::ratelimit::WorkerBuckets;
use shardgate_core::snapshot::{CompiledUpstream, Snapshot};

use crate::access_log::WorkerLog;
use crate::buffer::{BODY_BUFFER, BufferPool, HEAD_BUFFER, LINE_BUFFER, REPLY_BUFFER};
use crate::deadline::Wheel;
use crate::downstream::ListenerTls;
use crate::pick::Picker;
use crate::pool::ConnPool;
use crate::settings::ProxySettings;
use crate::shutdown::Shutdown;
use crate::tls::UpstreamTls;
use crate::vectored::Vectors;

/// One worker's data-plane state.
#[derive(Debug)]
pub struct Plane {
    pub settings: Arc<ProxySettings>,
    /// Buffers for request and response heads.
    pub heads: Rc<BufferPool>,
    /// Buffers for the client's response head and the first body bytes.
    pub replies: BufferPool,
    /// Buffers for the upstream request line and header block.
    pub lines: BufferPool,
    /// Buffers for streaming bodies.
    pub bodies: BufferPool,
    /// iovec pairs for writing a response head and its first body bytes at once.
    pub vectors: Vectors,
    pub upstreams: ConnPool,
    pub picker: Picker,
    /// Open client connections on this worker.
    pub connections: Cell<usize>,
    /// Keep-alive connections waiting for their next request with a head buffer at hand
    /// (`connection::hot_wait`).
    pub hot_waits: Cell<usize>,
    /// Whether keep-alive connections may wait hot: on the epoll driver only (set by the
    /// worker when its runtime is built; see `connection::hot_wait`).
    pub hot_wait_on: Cell<bool>,
    /// This worker's leased rate-limit buckets.
    pub rate_limits: RefCell<WorkerBuckets>,
    /// This worker's TLS client for https targets.
    pub upstream_tls: Option<UpstreamTls>,
    /// This worker's TLS server for the HTTPS listener.
    pub listener_tls: ListenerTls,
    /// The deadline wheel every connection's timer is on (its ticker is a worker task).
    pub wheel: Rc<Wheel>,
    /// This worker's HTTP/2 connections to upstream targets.
    pub h2_upstreams: crate::pool::H2Pool,
    /// This worker's traffic counters.
    pub metrics: Arc<WorkerMetrics>,
    /// This worker's access-log buffer, when the log is on.
    pub access_log: Option<WorkerLog>,
}

impl Plane {
    pub fn new(worker: usize, settings: Arc<ProxySettings>) -> Plane {
        Plane {
            metrics: settings
                .telemetry
                .workers
                .get(worker)
                .cloned()
                .unwrap_or_default(),
            access_log: settings.access_log.clone().map(WorkerLog::new),
            rate_limits: RefCell::new(settings.rate_limits.worker()),
            settings,
            heads: Rc::new(BufferPool::new(HEAD_BUFFER, 1024)),
            replies: BufferPool::new(REPLY_BUFFER, 1024),
            lines: BufferPool::new(LINE_BUFFER, 2048),
            bodies: BufferPool::new(BODY_BUFFER, 256),
            vectors: Vectors::default(),
            upstreams: ConnPool::default(),
            picker: Picker::new(worker),
            connections: Cell::new(0),
            hot_waits: Cell::new(0),
            hot_wait_on: Cell::new(false),
            upstream_tls: UpstreamTls::for_worker(),
            listener_tls: ListenerTls::default(),
            wheel: Rc::new(Wheel::default()),
            h2_upstreams: Default::default(),
        }
    }
}

impl Plane {
    /// One attempt's outcome for target `i`'s circuit breaker (see `Picker::circuit`); a
    /// change of state also goes to this worker's metrics.
    pub fn circuit(&self, upstream: &CompiledUpstream, i: usize, ok: bool) {
        if let Some(state) = self.picker.circuit(upstream, i, ok) {
            self.metrics.circuit(upstream.id, i as u32, state);
        }
    }
}

/// Wall-clock Unix seconds (key expiry, budget periods, `created` of translated answers).
pub fn unix_now() -> i64 {
    crate::clock::unix_now()
}

/// Milliseconds of one process-wide monotonic clock: what every worker passes to the rate
/// limiters, so their slots agree (read through [`crate::clock::now`]).
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let now = crate::clock::now();
    now.saturating_duration_since(*EPOCH.get_or_init(Instant::now))
        .as_millis() as u64
}

/// What a worker's tasks share: its id, its current snapshot, its shutdown flag.
///
/// The snapshot is held as `RefCell<Rc<Arc<Snapshot>>>`: a request takes an `Rc` clone
/// (a plain increment on memory only this core touches). Cloning the `Arc` per request
/// instead would make every request on every core do an atomic read-modify-write on the
/// one cache line holding the `Arc`'s refcount, and that line would bounce between cores.
/// The `Arc` is cloned once per snapshot per worker, when it is installed.
#[allow(
    clippy::redundant_allocation,
    reason = "the Rc layer is the point: a per-core refcount in front of the shared Arc's"
)]
pub struct WorkerContext {
    id: usize,
    snapshot: RefCell<Rc<Arc<Snapshot>>>,
    shutdown: Shutdown,
    plane: Plane,
}

impl WorkerContext {
    pub(crate) fn new(id: usize, snapshot: Arc<Snapshot>, settings: Arc<ProxySettings>) -> Self {
        crate::tls::warn_unverified(None, &snapshot);
        WorkerContext {
            id,
            snapshot: RefCell::new(Rc::new(snapshot)),
            shutdown: Shutdown::new(),
            plane: Plane::new(id, settings),
        }
    }

    /// This worker's data-plane state (pools, cursors, settings).
    pub fn plane(&self) -> &Plane {
        &self.plane
    }

    /// This worker's index.
    pub fn id(&self) -> usize {
        self.id
    }

    /// The newest snapshot this worker has applied. Hold it for the whole request: a
    /// request keeps the snapshot it started with.
    #[allow(clippy::redundant_allocation, reason = "see the type's documentation")]
    pub fn snapshot(&self) -> Rc<Arc<Snapshot>> {
        self.snapshot.borrow().clone()
    }

    /// This worker's shutdown flag: connections close after their current response once
    /// it is triggered, and idle ones can await it.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    pub(crate) fn install(&self, snapshot: Arc<Snapshot>) {
        crate::tls::warn_unverified(Some(&self.snapshot.borrow()), &snapshot);
        *self.snapshot.borrow_mut() = Rc::new(snapshot);
    }
}

impl fmt::Debug for WorkerContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerContext")
            .field("id", &self.id)
            .field("snapshot_version", &self.snapshot.borrow().version)
            .field("shutdown", &self.shutdown)
            .finish()
    }
}
