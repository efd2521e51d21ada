//! Pick target: which service (for weighted rules), which upstream (primary, then
//! fallbacks), which target (the upstream's algorithm), with this worker's view of target
//! health.
//!
//! Everything here is per worker: balancer cursors (round-robin positions, smooth-WRR
//! weights, least-connections counts) and passive health. Cursors are keyed by upstream id
//! and keep their state across snapshots while the upstream's targets are unchanged.
//! Passive health is keyed by target identity. It is per worker by design: a worker that
//! sees a target fail stops using it at once, without a cross-core write per failure.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use shardgate_core::balance::{Balancer, Cursor};
use shardgate_core::snapshot::{CompiledRule, CompiledService, CompiledUpstream, RuleTarget};
use uuid::Uuid;

#[derive(Debug, Default, Clone, Copy)]
struct Passive {
    consecutive_failures: u32,
    down_until: Option<Instant>,
}

/// One worker's balancer cursors and health view.
#[derive(Debug)]
pub struct Picker {
    seed: u64,
    cursors: RefCell<HashMap<Uuid, Cursor>>,
    health: RefCell<HashMap<u64, Passive>>,
}

impl Picker {
    pub fn new(worker: usize) -> Picker {
        Picker {
            seed: worker as u64,
            cursors: RefCell::new(HashMap::new()),
            health: RefCell::new(HashMap::new()),
        }
    }

    fn with_cursor<R>(&self, id: Uuid, balancer: &Balancer, f: impl FnOnce(&mut Cursor) -> R) -> R {
        let mut cursors = self.cursors.borrow_mut();
        let cursor = cursors
            .entry(id)
            .or_insert_with(|| Cursor::with_seed(balancer, self.seed));
        cursor.adopt(balancer);
        f(cursor)
    }

    /// The service a request matching `rule` goes to.
    pub fn service<'r>(&self, rule: &'r CompiledRule) -> Option<&'r Arc<CompiledService>> {
        match &rule.target {
            RuleTarget::One(service) => Some(service),
            RuleTarget::Weighted { services, balancer } => {
                let i =
                    self.with_cursor(rule.id, balancer, |c| balancer.pick(c, None, |_| true, &[]))?;
                services.get(i)
            }
        }
    }

    fn usable(&self, upstream: &CompiledUpstream, i: usize, now: Instant) -> bool {
        let Some(target) = upstream.targets.get(i) else {
            return false;
        };
        if target.addr.is_none() || target.down {
            return false;
        }
        match self.health.borrow().get(&target.key) {
            Some(Passive {
                down_until: Some(until),
                ..
            }) => *until <= now,
            _ => true,
        }
    }

    /// A target of `upstream` not in `exclude`, or `None` when none is usable.
    pub fn target(
        &self,
        upstream: &CompiledUpstream,
        hash: Option<u64>,
        exclude: &[usize],
    ) -> Option<usize> {
        let now = Instant::now();
        self.with_cursor(upstream.id, &upstream.balancer, |cursor| {
            upstream
                .balancer
                .pick(cursor, hash, |i| self.usable(upstream, i, now), exclude)
        })
    }

    /// Least-connections accounting: a request to target `i` started; it finishes when the
    /// guard drops (also when the request's future is dropped midway: an HTTP/2 stream the
    /// client reset, a timeout).
    pub fn started<'a>(&'a self, upstream: &'a CompiledUpstream, i: usize) -> Started<'a> {
        self.with_cursor(upstream.id, &upstream.balancer, |c| c.started(i));
        Started {
            picker: self,
            upstream,
            i,
        }
    }

    fn finished(&self, upstream: &CompiledUpstream, i: usize) {
        self.with_cursor(upstream.id, &upstream.balancer, |c| c.finished(i));
    }

    /// Passive health: the outcome of one attempt at target `i`. Only upstreams with
    /// `health_checks.passive` configured take targets out.
    pub fn report(&self, upstream: &CompiledUpstream, i: usize, ok: bool) {
        let (Some(passive), Some(target)) = (
            upstream.spec.spec.health_checks.passive.as_ref(),
            upstream.targets.get(i),
        ) else {
            return;
        };
        let mut health = self.health.borrow_mut();
        let state = health.entry(target.key).or_default();
        if ok {
            *state = Passive::default();
            return;
        }
        state.consecutive_failures += 1;
        if state.consecutive_failures >= passive.max_failures {
            state.down_until = Some(Instant::now() + passive.cooldown.as_duration());
            state.consecutive_failures = 0;
            tracing::warn!(
                upstream = %upstream.id,
                target = %target.host_header,
                cooldown = %passive.cooldown,
                "target marked down after consecutive failures"
            );
        }
    }
}

/// A request in flight to one target (see [`Picker::started`]).
#[derive(Debug)]
#[must_use = "the request counts as in flight until this guard drops"]
pub struct Started<'a> {
    picker: &'a Picker,
    upstream: &'a CompiledUpstream,
    i: usize,
}

impl Drop for Started<'_> {
    fn drop(&mut self) {
        self.picker.finished(self.upstream, self.i);
    }
}
