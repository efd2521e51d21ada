//! Per-worker graceful-shutdown primitives: a [`Shutdown`] flag that tasks can await, and an
//! [`InFlight`] connection counter whose drain the worker awaits.
//!
//! Both are single-threaded (`Rc`/`Cell`): each worker owns its own, so nothing here touches
//! a cache line another core writes. The main thread reaches a worker only through its
//! stop socket (see `worker.rs`); the worker then triggers its local [`Shutdown`].
//!
//! Shutdown sequence inside a worker: stop socket readable → [`Shutdown::trigger`] →
//! the accept loop's pending accept is cancelled and the listener closed → connection
//! handlers see [`Shutdown::is_triggered`] (or were awaiting [`Shutdown::triggered`]) and
//! finish their current request → [`InFlight::drained`] resolves, or the grace period ends.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use shardgate_core::fxhash::FxMap;

/// A one-way "stop now" flag for the tasks of one worker.
#[derive(Clone, Default)]
pub struct Shutdown {
    state: Rc<ShutdownState>,
}

#[derive(Default)]
struct ShutdownState {
    triggered: Cell<bool>,
    next_waiter: Cell<u64>,
    waiters: RefCell<FxMap<u64, Waker>>,
}

impl Shutdown {
    /// A flag that is not triggered yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the flag and wakes every task awaiting [`Self::triggered`]. Idempotent.
    pub fn trigger(&self) {
        if self.state.triggered.replace(true) {
            return;
        }
        let waiters = std::mem::take(&mut *self.state.waiters.borrow_mut());
        for (_, waker) in waiters {
            waker.wake();
        }
    }

    /// Whether shutdown has begun: a keep-alive connection should close after the
    /// response it is writing.
    pub fn is_triggered(&self) -> bool {
        self.state.triggered.get()
    }

    /// Resolves once shutdown begins. Cheap to create per request: an idle keep-alive
    /// connection can race it against the read of its next request, so that idle
    /// connections close at once instead of holding the drain for the whole grace period.
    pub fn triggered(&self) -> Triggered {
        Triggered {
            state: self.state.clone(),
            id: None,
        }
    }
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("triggered", &self.is_triggered())
            .finish()
    }
}

/// Future returned by [`Shutdown::triggered`]; unregisters its waker when dropped, so a
/// connection that creates one per request does not grow the waiter set.
#[must_use = "futures do nothing unless awaited"]
pub struct Triggered {
    state: Rc<ShutdownState>,
    id: Option<u64>,
}

impl Future for Triggered {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.state.triggered.get() {
            return Poll::Ready(());
        }
        let id = match self.id {
            Some(id) => id,
            None => {
                let id = self.state.next_waiter.get();
                self.state.next_waiter.set(id.wrapping_add(1));
                self.id = Some(id);
                id
            }
        };
        self.state
            .waiters
            .borrow_mut()
            .insert(id, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Triggered {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.state.waiters.borrow_mut().remove(&id);
        }
    }
}

impl fmt::Debug for Triggered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Triggered").field("id", &self.id).finish()
    }
}

/// Counts the connections a worker is serving; the worker awaits [`InFlight::drained`]
/// during graceful shutdown.
#[derive(Clone, Default)]
pub struct InFlight {
    state: Rc<InFlightState>,
}

#[derive(Default)]
struct InFlightState {
    count: Cell<usize>,
    /// The one task awaiting the drain (the worker's main loop).
    drain_waiter: RefCell<Option<Waker>>,
}

impl InFlight {
    /// An empty counter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one connection until the returned guard is dropped (also on panic).
    pub fn enter(&self) -> InFlightGuard {
        self.state.count.set(self.state.count.get() + 1);
        InFlightGuard {
            state: self.state.clone(),
        }
    }

    /// Connections being served right now.
    pub fn count(&self) -> usize {
        self.state.count.get()
    }

    /// Resolves when no connection is in flight.
    pub fn drained(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.state.count.get() == 0 {
                Poll::Ready(())
            } else {
                *self.state.drain_waiter.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("count", &self.count())
            .finish()
    }
}

/// One in-flight connection; see [`InFlight::enter`].
pub struct InFlightGuard {
    state: Rc<InFlightState>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let left = self.state.count.get().saturating_sub(1);
        self.state.count.set(left);
        if left == 0
            && let Some(waker) = self.state.drain_waiter.borrow_mut().take()
        {
            waker.wake();
        }
    }
}

impl fmt::Debug for InFlightGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InFlightGuard")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;

    struct CountingWaker(AtomicUsize);
    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll_once<F: Future + Unpin>(fut: &mut F, waker: &Arc<CountingWaker>) -> Poll<F::Output> {
        let waker = Waker::from(waker.clone());
        Pin::new(fut).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn triggered_wakes_waiters_and_stays_ready() {
        let shutdown = Shutdown::new();
        let waker = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let mut waiting = shutdown.triggered();
        assert!(poll_once(&mut waiting, &waker).is_pending());
        assert!(
            poll_once(&mut waiting, &waker).is_pending(),
            "re-polling keeps one registration"
        );
        assert_eq!(shutdown.state.waiters.borrow().len(), 1);

        shutdown.trigger();
        assert_eq!(waker.0.load(Ordering::SeqCst), 1);
        assert!(poll_once(&mut waiting, &waker).is_ready());
        assert!(poll_once(&mut shutdown.triggered(), &waker).is_ready());
        assert!(shutdown.is_triggered());
    }

    #[test]
    fn dropped_waiters_unregister() {
        let shutdown = Shutdown::new();
        let waker = Arc::new(CountingWaker(AtomicUsize::new(0)));
        for _ in 0..100 {
            let mut waiting = shutdown.triggered();
            assert!(poll_once(&mut waiting, &waker).is_pending());
        }
        assert!(shutdown.state.waiters.borrow().is_empty());
    }

    #[test]
    fn drained_resolves_when_the_last_guard_drops() {
        let in_flight = InFlight::new();
        let waker = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let first = in_flight.enter();
        let second = in_flight.enter();
        assert_eq!(in_flight.count(), 2);

        let mut drained = Box::pin(in_flight.drained());
        assert!(poll_once(&mut drained, &waker).is_pending());
        drop(first);
        assert_eq!(
            waker.0.load(Ordering::SeqCst),
            0,
            "one connection still open"
        );
        drop(second);
        assert_eq!(waker.0.load(Ordering::SeqCst), 1);
        assert!(poll_once(&mut drained, &waker).is_ready());
    }
}
