//! Pick target: which service (for weighted rules), which upstream (primary, then
//! fallbacks), which target (the upstream's algorithm), with this worker's view of target
//! health.
//!
//! Everything here is per worker: balancer cursors (round-robin positions, smooth-WRR
//! weights, least-connections counts) and passive health. Cursors are keyed by upstream id
//! and keep their state across snapshots while the upstream's targets are unchanged.
//! Passive health is keyed by target identity. It is per worker by design: a worker that
//! sees a target fail stops using it at once, without a cross-core write per failure.

use std::cell::{OnceCell, RefCell};
use std::future::Future;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use shardgate_core::balance::{Balancer, Cursor};
use shardgate_core::fxhash::{FxMap, IdMap};
use shardgate_core::metrics::Circuit;
use shardgate_core::model::{CircuitBreaker, RetryPolicy};
use shardgate_core::snapshot::{CompiledRule, CompiledService, CompiledUpstream, RuleTarget};
use uuid::Uuid;

#[derive(Debug, Default, Clone, Copy)]
struct Passive {
    consecutive_failures: u32,
    down_until: Option<Instant>,
}

/// A circuit breaker's state for one target (see `CircuitBreaker` in the model).
#[derive(Debug, Clone, Copy)]
enum Breaker {
    Closed {
        consecutive: u32,
        /// Attempts and failures in the current and the previous error-rate window.
        window: RateWindow,
    },
    Open {
        until: Instant,
    },
    HalfOpen {
        /// Probes let through and not yet reported.
        in_flight: u32,
        successes: u32,
        /// When the last probe was let through: a probe that never reports (its request
        /// was dropped) stops blocking others after `open_duration`.
        since: Instant,
    },
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker::Closed {
            consecutive: 0,
            window: RateWindow::default(),
        }
    }
}

/// Attempt and failure counts over a sliding window, as two fixed halves.
#[derive(Debug, Clone, Copy, Default)]
struct RateWindow {
    started: Option<Instant>,
    attempts: u32,
    failures: u32,
    previous_attempts: u32,
    previous_failures: u32,
}

impl RateWindow {
    /// Counts one attempt; returns (attempts, failures) over about the last `window`.
    fn count(&mut self, failed: bool, now: Instant, window: Duration) -> (u32, u32) {
        let half = window / 2;
        let started = *self.started.get_or_insert(now);
        let elapsed = now.saturating_duration_since(started);
        if elapsed >= window {
            *self = RateWindow {
                started: Some(now),
                ..RateWindow::default()
            };
        } else if elapsed >= half {
            self.previous_attempts = self.attempts;
            self.previous_failures = self.failures;
            self.attempts = 0;
            self.failures = 0;
            self.started = Some(started + half);
        }
        self.attempts += 1;
        self.failures += u32::from(failed);
        (
            self.attempts + self.previous_attempts,
            self.failures + self.previous_failures,
        )
    }
}

/// A service's retry budget on this worker: requests and retries per slot, over
/// `budget_window` in ten slots.
#[derive(Debug, Default)]
struct Budget {
    slots: [(u32, u32); 10],
    /// The slot index (time / slot length) the newest entry is in.
    current: u64,
}

impl Budget {
    fn advance(&mut self, now_ms: u64, slot_ms: u64) {
        let slot = now_ms / slot_ms.max(1);
        if slot > self.current {
            let stale = (slot - self.current).min(10);
            for k in 1..=stale {
                self.slots[((self.current + k) % 10) as usize] = (0, 0);
            }
            self.current = slot;
        }
    }

    fn totals(&self) -> (u64, u64) {
        self.slots.iter().fold((0, 0), |(r, t), (a, b)| {
            (r + u64::from(*a), t + u64::from(*b))
        })
    }
}

/// One worker's balancer cursors and health view.
#[derive(Debug)]
pub struct Picker {
    seed: u64,
    cursors: RefCell<IdMap<Cursor>>,
    health: RefCell<FxMap<u64, Passive>>,
    /// Circuit breakers by target identity.
    breakers: RefCell<FxMap<u64, Breaker>>,
    /// Requests in flight per target identity (for `max_connections`).
    active: RefCell<FxMap<u64, u32>>,
    /// Requests waiting for a target under `max_connections` to free a place.
    waiters: RefCell<Vec<Waker>>,
    /// Retry budgets by service id.
    budgets: RefCell<IdMap<Budget>>,
}

impl Picker {
    pub fn new(worker: usize) -> Picker {
        Picker {
            seed: worker as u64,
            cursors: RefCell::new(IdMap::default()),
            health: RefCell::new(FxMap::default()),
            breakers: RefCell::new(FxMap::default()),
            active: RefCell::new(FxMap::default()),
            waiters: RefCell::new(Vec::new()),
            budgets: RefCell::new(IdMap::default()),
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

    /// Whether target `i` of `upstream` may be tried now: resolved, not held down by active
    /// or passive health checks, not behind an open circuit, under its `max_connections`.
    /// (The AI fallback walks targets in priority order instead of balancing.)
    pub fn available(&self, upstream: &CompiledUpstream, i: usize) -> bool {
        self.usable(upstream, i, &OnceCell::new())
    }

    /// `now` is read from the clock only when a circuit or a passive-health hold needs it
    /// (most targets have neither: a saturated core's profile showed `clock_gettime` as
    /// shardgate's largest user-space item), then shared by the targets one pick looks at.
    fn usable(&self, upstream: &CompiledUpstream, i: usize, now: &OnceCell<Instant>) -> bool {
        let now = || *now.get_or_init(crate::clock::now);
        let Some(target) = upstream.targets.get(i) else {
            return false;
        };
        if target.addr.is_none() || target.down || self.full(upstream, i) {
            return false;
        }
        if let Some(breaker) = &upstream.spec.spec.circuit_breaker
            && !self.circuit_admits(target.key, breaker, now())
        {
            return false;
        }
        match self.health.borrow().get(&target.key) {
            Some(Passive {
                down_until: Some(until),
                ..
            }) => *until <= now(),
            _ => true,
        }
    }

    /// Whether target `i` is at its `max_connections` on this worker.
    fn full(&self, upstream: &CompiledUpstream, i: usize) -> bool {
        let (Some(max), Some(target)) = (
            upstream
                .spec
                .spec
                .targets
                .get(i)
                .and_then(|t| t.max_connections),
            upstream.targets.get(i),
        ) else {
            return false;
        };
        self.active.borrow().get(&target.key).copied().unwrap_or(0) >= max
    }

    fn circuit_admits(&self, key: u64, settings: &CircuitBreaker, now: Instant) -> bool {
        match self.breakers.borrow().get(&key) {
            None | Some(Breaker::Closed { .. }) => true,
            Some(Breaker::Open { until }) => *until <= now,
            Some(Breaker::HalfOpen {
                in_flight, since, ..
            }) => {
                *in_flight < settings.half_open_probes
                    || now.saturating_duration_since(*since) >= settings.open_duration.as_duration()
            }
        }
    }

    /// Why `upstream` has no usable target left beside `exclude`: every one that would
    /// otherwise serve is behind an open circuit (`Some(true)`), or at its
    /// `max_connections` (`Some(false)`); `None` for any other reason.
    pub fn blocked(&self, upstream: &CompiledUpstream, exclude: &[usize]) -> Option<bool> {
        let now = crate::clock::now();
        let mut open = false;
        let mut full = false;
        for (i, target) in upstream.targets.iter().enumerate() {
            if exclude.contains(&i) || target.addr.is_none() || target.down {
                continue;
            }
            if self.full(upstream, i) {
                full = true;
            } else if let Some(settings) = &upstream.spec.spec.circuit_breaker
                && !self.circuit_admits(target.key, settings, now)
            {
                open = true;
            } else {
                return None;
            }
        }
        match (full, open) {
            (true, _) => Some(false),
            (false, true) => Some(true),
            _ => None,
        }
    }

    /// Waits until a request to some target finishes (a place may have freed).
    pub fn freed(&self) -> impl Future<Output = ()> + '_ {
        let mut registered = false;
        std::future::poll_fn(move |cx| {
            if registered {
                return Poll::Ready(());
            }
            registered = true;
            self.waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
    }

    /// The circuit outcome of one attempt at target `i`: `ok` unless it failed to connect,
    /// timed out, failed before answering, or answered 5xx. Returns the new state when it
    /// changed.
    pub fn circuit(&self, upstream: &CompiledUpstream, i: usize, ok: bool) -> Option<Circuit> {
        let (Some(settings), Some(target)) =
            (&upstream.spec.spec.circuit_breaker, upstream.targets.get(i))
        else {
            return None;
        };
        let now = crate::clock::now();
        let open_for = settings.open_duration.as_duration();
        let mut breakers = self.breakers.borrow_mut();
        let breaker = breakers.entry(target.key).or_default();
        let (next, changed) = match *breaker {
            Breaker::Closed {
                consecutive,
                mut window,
            } => {
                let consecutive = if ok { 0 } else { consecutive + 1 };
                let rate_trips = settings.error_rate.as_ref().is_some_and(|rate| {
                    let (attempts, failures) = window.count(!ok, now, rate.window.as_duration());
                    attempts >= rate.min_requests
                        && u64::from(failures) * 100
                            >= u64::from(rate.percent) * u64::from(attempts)
                });
                if consecutive >= settings.failure_threshold || rate_trips {
                    (
                        Breaker::Open {
                            until: now + open_for,
                        },
                        Some(Circuit::Open),
                    )
                } else {
                    (
                        Breaker::Closed {
                            consecutive,
                            window,
                        },
                        None,
                    )
                }
            }
            // A request picked before the circuit opened: its outcome changes nothing.
            Breaker::Open { .. } => (*breaker, None),
            Breaker::HalfOpen {
                in_flight,
                successes,
                since,
            } if ok => {
                if successes + 1 >= settings.half_open_probes {
                    (Breaker::default(), Some(Circuit::Closed))
                } else {
                    (
                        Breaker::HalfOpen {
                            in_flight: in_flight.saturating_sub(1),
                            successes: successes + 1,
                            since,
                        },
                        None,
                    )
                }
            }
            Breaker::HalfOpen { .. } => (
                Breaker::Open {
                    until: now + open_for,
                },
                Some(Circuit::Open),
            ),
        };
        *breaker = next;
        if let Some(state) = changed {
            tracing::warn!(
                upstream = %upstream.id,
                target = %target.host_header,
                state = state.as_str(),
                "circuit breaker changed state"
            );
        }
        changed
    }

    /// The service's retry budget: counts a request (`retry` false) or asks for a retry
    /// (`retry` true: `true` when the budget allows one, which is then counted).
    /// `now_ms`: the worker's clock (`plane::now_ms`).
    pub fn budget(&self, service: Uuid, policy: &RetryPolicy, retry: bool, now_ms: u64) -> bool {
        let window_ms = policy.budget_window.as_duration().as_millis() as u64;
        let now = now_ms;
        let mut budgets = self.budgets.borrow_mut();
        let budget = budgets.entry(service).or_default();
        budget.advance(now, window_ms / 10);
        let slot = (budget.current % 10) as usize;
        if !retry {
            budget.slots[slot].0 = budget.slots[slot].0.saturating_add(1);
            return true;
        }
        let (requests, retries) = budget.totals();
        let floor = u64::from(policy.min_retries_per_second) * window_ms / 1000;
        let allowed = (requests * u64::from(policy.budget_percent) / 100).max(floor);
        if retries < allowed {
            budget.slots[slot].1 = budget.slots[slot].1.saturating_add(1);
            true
        } else {
            false
        }
    }

    /// A target of `upstream` not in `exclude`, or `None` when none is usable.
    pub fn target(
        &self,
        upstream: &CompiledUpstream,
        hash: Option<u64>,
        exclude: &[usize],
    ) -> Option<usize> {
        let now = OnceCell::new();
        self.with_cursor(upstream.id, &upstream.balancer, |cursor| {
            upstream
                .balancer
                .pick(cursor, hash, |i| self.usable(upstream, i, &now), exclude)
        })
    }

    /// Least-connections accounting: a request to target `i` started; it finishes when the
    /// guard drops (also when the request's future is dropped midway: an HTTP/2 stream the
    /// client reset, a timeout).
    pub fn started<'a>(&'a self, upstream: &'a CompiledUpstream, i: usize) -> Started<'a> {
        self.with_cursor(upstream.id, &upstream.balancer, |c| c.started(i));
        if let Some(target) = upstream.targets.get(i) {
            *self.active.borrow_mut().entry(target.key).or_default() += 1;
            // An open circuit whose time is up lets this request through as a probe (the
            // clock is read only for a circuit that is not closed).
            if let Some(breaker) = self.breakers.borrow_mut().get_mut(&target.key)
                && !matches!(breaker, Breaker::Closed { .. })
            {
                let now = crate::clock::now();
                match breaker {
                    Breaker::Open { until } if *until <= now => {
                        *breaker = Breaker::HalfOpen {
                            in_flight: 1,
                            successes: 0,
                            since: now,
                        };
                    }
                    Breaker::HalfOpen {
                        in_flight, since, ..
                    } => {
                        *in_flight += 1;
                        *since = now;
                    }
                    _ => {}
                }
            }
        }
        Started {
            picker: self,
            upstream,
            i,
        }
    }

    fn finished(&self, upstream: &CompiledUpstream, i: usize) {
        self.with_cursor(upstream.id, &upstream.balancer, |c| c.finished(i));
        if let Some(target) = upstream.targets.get(i) {
            let mut active = self.active.borrow_mut();
            if let Some(n) = active.get_mut(&target.key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    active.remove(&target.key);
                }
            }
        }
        for waiter in self.waiters.borrow_mut().drain(..) {
            waiter.wake();
        }
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
            state.down_until = Some(crate::clock::now() + passive.cooldown.as_duration());
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
