//! The worker's clock, read once per poll of a connection's task.
//!
//! A request reads the time at many steps: its start, the rate limiter's slot, the retry
//! budget, the pool's idle stamps, its upstream attempt, the response head, its end — about
//! nine `Instant::now()` calls, each a vDSO call (1.3–1.4 % of a worker in the `full`
//! profile, `docs/RUNTIME.md`). Within one poll of the connection's task those steps are
//! microseconds apart, so a connection's task is polled inside a [`PollScope`]
//! (`unwind::CatchUnwind`): the first [`now`] of the poll reads the clock and the others in
//! that poll reuse the reading, like nginx's time cached per event-loop turn but never older
//! than the poll. Steps in different polls (the attempt and the response head; the start
//! and the end) still read the clock apart, so the durations the metrics and the access log
//! report are unchanged. Outside a scope (the admin thread, housekeeping tasks, tests)
//! every [`now`] reads the clock.
//!
//! [`unix_now`] derives wall-clock seconds from the same reading, from a base the worker
//! takes from the system clock at most once a second (so a step of the system clock shows
//! within a second, as in the access log's timestamps).

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a wall-clock base is used before the system clock is read again.
const WALL_BASE_FOR: Duration = Duration::from_secs(1);

/// The current poll's clock: `Outside` when no [`PollScope`] is entered.
#[derive(Debug, Clone, Copy)]
enum Scope {
    Outside,
    Unread,
    Read(Instant),
}

thread_local! {
    static SCOPE: Cell<Scope> = const { Cell::new(Scope::Outside) };
    /// A monotonic instant and the system time (since the Unix epoch) read with it.
    static WALL_BASE: Cell<Option<(Instant, Duration)>> = const { Cell::new(None) };
}

/// The time: read once per [`PollScope`], fresh outside one.
#[inline]
pub fn now() -> Instant {
    SCOPE.with(|scope| match scope.get() {
        Scope::Read(at) => at,
        Scope::Unread => {
            let at = Instant::now();
            scope.set(Scope::Read(at));
            at
        }
        Scope::Outside => Instant::now(),
    })
}

/// Wall-clock Unix seconds at [`now`].
pub fn unix_now() -> i64 {
    let at = now();
    let base = WALL_BASE.with(|base| match base.get() {
        Some((mono, wall)) if at >= mono && at - mono < WALL_BASE_FOR => (mono, wall),
        _ => {
            let wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let fresh = (at, wall);
            base.set(Some(fresh));
            fresh
        }
    });
    (base.1 + (at - base.0)).as_secs() as i64
}

/// One poll of a task: [`now`] reads the clock at most once while it lives. Restores the
/// scope it found when dropped (so scopes may nest).
#[derive(Debug)]
pub struct PollScope {
    outer: Scope,
}

impl PollScope {
    #[inline]
    pub fn enter() -> PollScope {
        let outer = SCOPE.with(|scope| scope.replace(Scope::Unread));
        PollScope { outer }
    }
}

impl Drop for PollScope {
    #[inline]
    fn drop(&mut self) {
        SCOPE.with(|scope| scope.set(self.outer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_reading_per_scope_and_fresh_readings_outside() {
        let before = Instant::now();
        let (first, second) = {
            let _scope = PollScope::enter();
            let first = now();
            std::thread::sleep(Duration::from_millis(5));
            (first, now())
        };
        assert_eq!(first, second, "one reading within a poll");
        assert!(first >= before);
        // Outside: fresh.
        let outside = now();
        assert!(outside >= first + Duration::from_millis(5));
        std::thread::sleep(Duration::from_millis(2));
        assert!(now() > outside);
        // A new scope reads again.
        let _scope = PollScope::enter();
        assert!(now() >= outside + Duration::from_millis(2));
    }

    #[test]
    fn nested_scopes_restore_the_outer_one() {
        let _outer = PollScope::enter();
        let outer = now();
        {
            let _inner = PollScope::enter();
            std::thread::sleep(Duration::from_millis(2));
            assert!(now() > outer);
        }
        assert_eq!(now(), outer);
    }

    #[test]
    fn unix_seconds_follow_the_system_clock() {
        let system = || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        };
        let before = system();
        let ours = unix_now();
        let after = system();
        assert!(
            (before..=after).contains(&ours),
            "{before} <= {ours} <= {after}"
        );
        // Past the base's second, it is read again (and still agrees).
        std::thread::sleep(WALL_BASE_FOR + Duration::from_millis(10));
        let before = system();
        let ours = unix_now();
        assert!((before..=system()).contains(&ours));
    }
}
