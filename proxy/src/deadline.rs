//! Deadlines without a timer per operation: one [`Timer`] per connection, checked by one
//! coarse [`Wheel`] per worker (what nginx and HAProxy do: a timer per connection, armed
//! lazily), instead of a `monoio::time::timeout` — a timer-wheel insert and remove, a
//! `clock_gettime` and ~700 bytes of future state — around every read and write.
//!
//! Arming a timer is a few stores into the connection's own cells: the expiry tick is
//! computed from the wheel's coarse clock, and the timer is put into a wheel slot only when
//! it is not in one for an earlier tick already. The worker's ticker task wakes every
//! [`TICK`] while any timer is in the wheel (and parks while none is), visits the slot of
//! each tick that passed, fires the timers whose expiry has come and moves the others on
//! to their current expiry. So a connection that keeps being armed for the same timeouts
//! costs the wheel one visit per timeout period, not work per operation, and an expiry
//! fires between its timeout and its timeout plus two ticks.
//!
//! A leaf: it knows nothing of connections or requests.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The wheel's resolution.
pub const TICK: Duration = Duration::from_millis(10);
/// Slots in the wheel: a horizon of 10.24 s; timers further out are revisited once per
/// turn.
const SLOTS: usize = 1024;
const NEVER: u64 = u64::MAX;
/// Entries each slot has room for before it first grows (8 bytes each: 32 KiB a wheel).
const SLOT_ROOM: usize = 4;

/// One worker's deadline wheel.
pub struct Wheel {
    start: Instant,
    /// Ticks since `start` the wheel has processed.
    now: Cell<u64>,
    slots: RefCell<Vec<Vec<Weak<TimerState>>>>,
    /// Entries in the slots (some may be stale: a timer that moved or was dropped).
    entries: Cell<usize>,
    /// The ticker, while it is parked on an empty wheel.
    ticker: Cell<Option<Waker>>,
}

impl std::fmt::Debug for Wheel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wheel")
            .field("now", &self.now.get())
            .field("entries", &self.entries.get())
            .finish_non_exhaustive()
    }
}

impl Default for Wheel {
    fn default() -> Wheel {
        Wheel {
            start: Instant::now(),
            now: Cell::new(0),
            // Room in every slot from the start: a connection waiting hot
            // (`connection::hot_wait`) puts its timer a tick or two ahead every tick, so a
            // fresh wheel would otherwise allocate into each slot on its first turn.
            slots: RefCell::new((0..SLOTS).map(|_| Vec::with_capacity(SLOT_ROOM)).collect()),
            entries: Cell::new(0),
            ticker: Cell::new(None),
        }
    }
}

impl Wheel {
    /// Ticks of real time since the wheel started.
    fn elapsed_ticks(&self) -> u64 {
        (self.start.elapsed().as_nanos() / TICK.as_nanos()) as u64
    }

    fn schedule(&self, timer: &Rc<TimerState>, at: u64) {
        let now = self.now.get();
        // Never into the current slot (already visited) nor a full turn ahead.
        let at = at.clamp(now + 1, now + SLOTS as u64 - 1);
        if at >= timer.scheduled.get() {
            return;
        }
        timer.scheduled.set(at);
        self.slots.borrow_mut()[at as usize % SLOTS].push(Rc::downgrade(timer));
        let entries = self.entries.get();
        self.entries.set(entries + 1);
        if entries == 0
            && let Some(ticker) = self.ticker.take()
        {
            ticker.wake();
        }
    }

    /// Processes every tick up to the present: fires what expired, moves the rest on.
    fn advance(&self) {
        let target = self.elapsed_ticks();
        let behind = target.saturating_sub(self.now.get());
        if behind > SLOTS as u64 {
            // The ticker was starved for more than a turn: one pass over every slot, at
            // the present.
            self.now.set(target - SLOTS as u64);
        }
        while self.now.get() < target {
            let tick = self.now.get() + 1;
            self.now.set(tick);
            self.visit(tick);
        }
    }

    fn visit(&self, tick: u64) {
        let index = tick as usize % SLOTS;
        let mut due = std::mem::take(&mut self.slots.borrow_mut()[index]);
        self.entries.set(self.entries.get() - due.len());
        for entry in due.drain(..) {
            let Some(timer) = entry.upgrade() else {
                continue;
            };
            if timer.scheduled.get() != tick {
                // A stale entry: the timer was put into an earlier slot since.
                continue;
            }
            timer.scheduled.set(NEVER);
            match timer.expires.get() {
                NEVER => {}
                expires if expires <= tick => timer.fire(),
                expires => self.schedule(&timer, expires),
            }
        }
        // The emptied vector keeps its capacity for the slot's next turn.
        let mut slots = self.slots.borrow_mut();
        if slots[index].is_empty() {
            slots[index] = due;
        }
    }
}

/// The worker's ticker: drives `wheel` while it holds timers, parks while it is empty.
/// Runs for the worker's life.
pub async fn tick(wheel: Rc<Wheel>) {
    loop {
        if wheel.entries.get() == 0 {
            std::future::poll_fn(|cx| {
                if wheel.entries.get() > 0 {
                    Poll::Ready(())
                } else {
                    wheel.ticker.set(Some(cx.waker().clone()));
                    Poll::Pending
                }
            })
            .await;
        }
        monoio::time::sleep(TICK).await;
        wheel.advance();
    }
}

struct TimerState {
    wheel: Rc<Wheel>,
    /// The tick at which the armed operation times out; `NEVER` when disarmed.
    expires: Cell<u64>,
    /// The tick of the slot this timer is in; `NEVER` when in none.
    scheduled: Cell<u64>,
    fired: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl std::fmt::Debug for TimerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timer")
            .field("expires", &self.expires.get())
            .field("scheduled", &self.scheduled.get())
            .field("fired", &self.fired.get())
            .finish_non_exhaustive()
    }
}

impl TimerState {
    fn fire(&self) {
        self.fired.set(true);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// One connection's deadline. Cloning shares it (the client and upstream sides of one
/// exchange, which never wait at the same time).
#[derive(Debug, Clone)]
pub struct Timer(Rc<TimerState>);

/// The operation did not finish within its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl Timer {
    pub fn new(wheel: &Rc<Wheel>) -> Timer {
        Timer(Rc::new(TimerState {
            wheel: wheel.clone(),
            expires: Cell::new(NEVER),
            scheduled: Cell::new(NEVER),
            fired: Cell::new(false),
            waker: Cell::new(None),
        }))
    }

    fn arm(&self, timeout: Duration) {
        let state = &self.0;
        let wheel = &state.wheel;
        if wheel.entries.get() == 0 {
            // The ticker has been parked: its clock may be behind.
            wheel.now.set(wheel.now.get().max(wheel.elapsed_ticks()));
        }
        // Rounded up, plus the tick in progress: never early.
        let ticks = timeout.as_nanos().div_ceil(TICK.as_nanos()) as u64 + 1;
        let expires = wheel.now.get().saturating_add(ticks);
        state.expires.set(expires);
        state.fired.set(false);
        wheel.schedule(state, expires);
    }

    fn disarm(&self) {
        self.0.expires.set(NEVER);
        self.0.fired.set(false);
    }

    /// Runs `operation`, giving up on it (dropping it) after `timeout`, counted from the
    /// first poll. A future struct, not an `async fn`, so the operation is stored once.
    pub fn within<F: Future>(&self, timeout: Duration, operation: F) -> Within<'_, F> {
        Within {
            timer: self,
            timeout: Some(timeout),
            operation,
        }
    }
}

pin_project_lite::pin_project! {
    /// [`Timer::within`]'s future.
    pub struct Within<'a, F> {
        timer: &'a Timer,
        // `None` once armed.
        timeout: Option<Duration>,
        #[pin]
        operation: F,
    }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let timer = *this.timer;
        if let Some(timeout) = this.timeout.take() {
            timer.arm(timeout);
        }
        if let Poll::Ready(out) = this.operation.poll(cx) {
            timer.disarm();
            return Poll::Ready(Ok(out));
        }
        let state = &timer.0;
        if state.fired.get() {
            timer.disarm();
            return Poll::Ready(Err(Elapsed));
        }
        match state.waker.take() {
            Some(waker) if waker.will_wake(cx.waker()) => state.waker.set(Some(waker)),
            _ => state.waker.set(Some(cx.waker().clone())),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: Future>(f: F) -> F::Output {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("a runtime");
        rt.block_on(f)
    }

    #[test]
    fn an_operation_that_finishes_in_time_is_not_cut() {
        block_on(async {
            let wheel = Rc::new(Wheel::default());
            monoio::spawn(tick(wheel.clone()));
            let timer = Timer::new(&wheel);
            for _ in 0..3 {
                let out = timer
                    .within(Duration::from_millis(200), async {
                        monoio::time::sleep(Duration::from_millis(20)).await;
                        7
                    })
                    .await;
                assert_eq!(out, Ok(7));
            }
        });
    }

    #[test]
    fn a_stalled_operation_times_out_within_two_ticks_of_its_timeout() {
        block_on(async {
            let wheel = Rc::new(Wheel::default());
            monoio::spawn(tick(wheel.clone()));
            let timer = Timer::new(&wheel);
            // A long timeout first, then a short one: the short one must not wait for the
            // long one's slot.
            let _ = timer.within(Duration::from_secs(30), async {}).await;
            let started = Instant::now();
            let out = timer
                .within(Duration::from_millis(100), std::future::pending::<()>())
                .await;
            let took = started.elapsed();
            assert_eq!(out, Err(Elapsed));
            assert!(took >= Duration::from_millis(100), "fired early: {took:?}");
            assert!(
                took < Duration::from_millis(100) + 10 * TICK,
                "fired late: {took:?}"
            );
        });
    }

    #[test]
    fn a_timer_armed_again_and_again_stays_in_one_slot() {
        block_on(async {
            let wheel = Rc::new(Wheel::default());
            monoio::spawn(tick(wheel.clone()));
            let timer = Timer::new(&wheel);
            for _ in 0..1000 {
                let _ = timer.within(Duration::from_secs(5), async {}).await;
            }
            assert_eq!(wheel.entries.get(), 1, "one entry, not one per arming");
            drop(timer);
            // A dropped connection's entry leaves at its slot's visit; nothing fires.
            wheel.advance();
        });
    }

    #[test]
    fn the_ticker_resumes_after_parking_on_an_empty_wheel() {
        block_on(async {
            let wheel = Rc::new(Wheel::default());
            monoio::spawn(tick(wheel.clone()));
            monoio::time::sleep(Duration::from_millis(50)).await;
            let timer = Timer::new(&wheel);
            let out = timer
                .within(Duration::from_millis(30), std::future::pending::<()>())
                .await;
            assert_eq!(out, Err(Elapsed));
            // Empty again (the fired timer left its slot); a later arm still fires.
            monoio::time::sleep(Duration::from_millis(100)).await;
            let started = Instant::now();
            let out = timer
                .within(Duration::from_millis(30), std::future::pending::<()>())
                .await;
            assert_eq!(out, Err(Elapsed));
            assert!(started.elapsed() >= Duration::from_millis(30));
        });
    }
}
