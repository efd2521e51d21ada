//! What one worker owns for the data plane: settings, buffer pools, upstream connection
//! pools, balancer cursors and health. Nothing here is shared with another core.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use shardgate_core::ratelimit::WorkerBuckets;

use crate::buffer::{BODY_BUFFER, BufferPool, HEAD_BUFFER};
use crate::pick::Picker;
use crate::pool::ConnPool;
use crate::settings::ProxySettings;

/// One worker's data-plane state.
#[derive(Debug)]
pub struct Plane {
    pub settings: Arc<ProxySettings>,
    /// Buffers for request and response heads.
    pub heads: BufferPool,
    /// Buffers for streaming bodies.
    pub bodies: BufferPool,
    pub upstreams: ConnPool,
    pub picker: Picker,
    /// Open client connections on this worker.
    pub connections: Cell<usize>,
    /// This worker's leased rate-limit buckets.
    pub rate_limits: RefCell<WorkerBuckets>,
}

impl Plane {
    pub fn new(worker: usize, settings: Arc<ProxySettings>) -> Plane {
        Plane {
            rate_limits: RefCell::new(settings.rate_limits.worker()),
            settings,
            heads: BufferPool::new(HEAD_BUFFER, 1024),
            bodies: BufferPool::new(BODY_BUFFER, 256),
            upstreams: ConnPool::default(),
            picker: Picker::new(worker),
            connections: Cell::new(0),
        }
    }
}
