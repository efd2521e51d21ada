//! Snapshot broadcast: the admin thread hands every worker the newest [`Snapshot`] and
//! waits until each one reports it applied (DESIGN.md §2, read-your-writes).
//!
//! Lifecycle:
//! 1. `main` calls [`channels`] once: one [`Broadcaster`] (moved into the admin thread) and
//!    one [`WorkerLink`] per worker (moved into that worker's thread).
//! 2. The worker takes its wake-up socket ([`WorkerLink::take_wakeup`]), turns it into a
//!    monoio `UnixStream` and awaits readability; when it wakes it calls
//!    [`WorkerLink::try_latest`], swaps the snapshot in, and [`WorkerLink::report_applied`].
//! 3. On each config change the admin thread calls [`Broadcaster::publish`], which sends
//!    the `Arc<Snapshot>` over each worker's own channel, writes one wake-up byte, and
//!    blocks (on a channel, not spinning) until every worker's applied version has caught
//!    up or the timeout passes.
//! 4. Dropping the [`Broadcaster`] closes the wake-up sockets: workers read EOF and keep
//!    serving their last snapshot.
//!
//! Why a socket and not only the channel: a worker idle in `io_uring_enter`/`epoll_wait`
//! cannot be woken by a crossbeam channel; a readable fd wakes it immediately without a
//! polling timer.

use std::fmt;
use std::io;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use shardgate_core::snapshot::Snapshot;
use socket2::SockRef;

/// Keeps each worker's applied-version counter on its own cache line (128 bytes covers
/// the adjacent-line prefetcher on x86 and the 128-byte lines of some ARM cores), so a
/// worker's report does not invalidate its neighbours' lines.
#[repr(align(128))]
#[derive(Debug, Default)]
struct CachePadded<T>(T);

/// Per-worker applied versions, shared by the broadcaster (reads) and the workers (each
/// writes only its own slot).
type AppliedVersions = Arc<[CachePadded<AtomicU64>]>;

/// Creates the broadcast plumbing for `workers` workers that start on `initial`.
///
/// Fails only when the OS refuses a socket pair (file-descriptor limit).
pub fn channels(
    workers: usize,
    initial: Arc<Snapshot>,
) -> io::Result<(Broadcaster, Vec<WorkerLink>)> {
    let applied: AppliedVersions = (0..workers)
        .map(|_| CachePadded(AtomicU64::new(0)))
        .collect();
    // Capacity 1 is enough: an ack carries no data, it only says "re-read the atomics".
    // If the slot is full a wake-up is already pending and the admin re-reads every
    // worker's version after consuming it, so no report is missed.
    let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);

    let mut senders = Vec::with_capacity(workers);
    let mut wakeups = Vec::with_capacity(workers);
    let mut links = Vec::with_capacity(workers);
    for id in 0..workers {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (admin_end, worker_end) = UnixStream::pair()?;
        senders.push(tx);
        wakeups.push(admin_end);
        links.push(WorkerLink {
            id,
            initial: initial.clone(),
            snapshots: rx,
            applied: applied.clone(),
            acks: ack_tx.clone(),
            wakeup: Some(worker_end),
        });
    }
    let broadcaster = Broadcaster {
        senders,
        wakeups,
        applied,
        acks: ack_rx,
        last_apply: None,
    };
    Ok((broadcaster, links))
}

/// The admin thread's end: publishes snapshots and waits for every worker to apply them.
#[derive(Debug)]
pub struct Broadcaster {
    senders: Vec<Sender<Arc<Snapshot>>>,
    /// Our ends of the wake-up socket pairs; dropping them gives the workers EOF.
    wakeups: Vec<UnixStream>,
    applied: AppliedVersions,
    acks: Receiver<()>,
    last_apply: Option<Duration>,
}

impl Broadcaster {
    /// Sends `snap` to every worker over its own channel, wakes it, then blocks until
    /// every worker has reported applying `snap.version` (or newer), or `timeout` passes.
    ///
    /// On error nothing is rolled back: workers that did apply keep the new snapshot, and
    /// the laggards will apply it when they next wake. The error names them.
    pub fn publish(
        &mut self,
        snap: Arc<Snapshot>,
        timeout: Duration,
    ) -> Result<(), BroadcastError> {
        let started = Instant::now();
        let version = snap.version;
        // Acks left over from an earlier publish that timed out would only cause one
        // extra re-check; drain them so the wait below starts clean.
        while self.acks.try_recv().is_ok() {}

        let mut gone = Vec::new();
        for (id, (tx, wakeup)) in self.senders.iter().zip(&self.wakeups).enumerate() {
            if tx.send(snap.clone()).is_err() {
                // The worker dropped its link: it has exited.
                gone.push(id);
                continue;
            }
            if let Err(e) = wake(wakeup) {
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) {
                    gone.push(id);
                } else {
                    // The snapshot is in the channel; the worker will still see it on its
                    // next wake-up. The wait below reports it if it does not.
                    tracing::warn!(worker = id, error = %e, "could not wake worker for a new snapshot");
                }
            }
        }
        drop(snap);

        let deadline = started.checked_add(timeout);
        loop {
            let lagging: Vec<usize> = (0..self.workers())
                .filter(|id| !gone.contains(id) && self.applied_version(*id) < version)
                .collect();
            if lagging.is_empty() {
                self.last_apply = Some(started.elapsed());
                return if gone.is_empty() {
                    Ok(())
                } else {
                    Err(BroadcastError {
                        version,
                        lagging,
                        gone,
                        waited: started.elapsed(),
                    })
                };
            }
            let remaining = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::MAX,
            };
            if remaining.is_zero() {
                return Err(BroadcastError {
                    version,
                    lagging,
                    gone,
                    waited: started.elapsed(),
                });
            }
            match self.acks.recv_timeout(remaining) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // Every worker link is gone: nobody can report any more.
                    gone.extend(lagging.iter().copied());
                    gone.sort_unstable();
                    return Err(BroadcastError {
                        version,
                        lagging: Vec::new(),
                        gone,
                        waited: started.elapsed(),
                    });
                }
            }
        }
    }

    /// The version each worker last reported applying, indexed by worker id (0 until a
    /// worker has started).
    /// How long the newest successful publish took until every worker had applied it.
    pub fn last_apply(&self) -> Option<Duration> {
        self.last_apply
    }

    pub fn applied_versions(&self) -> Vec<u64> {
        (0..self.workers())
            .map(|id| self.applied_version(id))
            .collect()
    }

    /// How many workers this broadcaster serves.
    pub fn workers(&self) -> usize {
        self.senders.len()
    }

    fn applied_version(&self, id: usize) -> u64 {
        self.applied[id].0.load(Ordering::Acquire)
    }
}

/// Writes one wake-up byte without blocking and without risking SIGPIPE.
fn wake(wakeup: &UnixStream) -> io::Result<()> {
    match SockRef::from(wakeup).send_with_flags(&[1], libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) {
        Ok(_) => Ok(()),
        // The socket buffer is full of unread wake-ups: the worker will wake anyway.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// A worker's end: receives snapshots, reports the applied version.
#[derive(Debug)]
pub struct WorkerLink {
    id: usize,
    initial: Arc<Snapshot>,
    snapshots: Receiver<Arc<Snapshot>>,
    applied: AppliedVersions,
    acks: Sender<()>,
    wakeup: Option<UnixStream>,
}

impl WorkerLink {
    /// This worker's index (0-based), the one [`BroadcastError`] names.
    pub fn id(&self) -> usize {
        self.id
    }

    /// The snapshot the worker starts with (compiled from the recovered store).
    pub fn initial(&self) -> Arc<Snapshot> {
        self.initial.clone()
    }

    /// Non-blocking: drains the channel and returns the newest snapshot, if any arrived.
    pub fn try_latest(&self) -> Option<Arc<Snapshot>> {
        self.snapshots.try_iter().last()
    }

    /// Publishes that this worker now serves `version`, and wakes a waiting publisher.
    pub fn report_applied(&self, version: u64) {
        // Release pairs with the publisher's Acquire load: once it sees `version`, it may
        // answer the client, and every later request on this worker uses the snapshot.
        self.applied[self.id].0.store(version, Ordering::Release);
        match self.acks.try_send(()) {
            // Full: an ack is already pending and the publisher re-reads all versions.
            // Disconnected: the broadcaster is gone, nobody is waiting.
            Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
        }
    }

    /// The worker's end of the wake-up socket pair (once; `None` afterwards). It becomes
    /// readable when a snapshot was sent, and reads EOF once the [`Broadcaster`] is dropped.
    /// The bytes carry no meaning: read and discard them, then call [`Self::try_latest`].
    /// The socket is in blocking mode; set it non-blocking for an epoll-based runtime.
    pub fn take_wakeup(&mut self) -> Option<UnixStream> {
        self.wakeup.take()
    }
}

/// A publish that did not reach every worker in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BroadcastError {
    /// The snapshot version that was published.
    pub version: u64,
    /// Workers still alive that had not reported `version` when the wait ended.
    pub lagging: Vec<usize>,
    /// Workers that have exited (their link was dropped), so will never report.
    pub gone: Vec<usize>,
    /// How long `publish` waited.
    pub waited: Duration,
}

impl fmt::Display for BroadcastError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "snapshot v{} was not applied by every worker",
            self.version
        )?;
        if !self.lagging.is_empty() {
            write!(
                f,
                "; still lagging after {:?}: worker(s) {:?}",
                self.waited, self.lagging
            )?;
        }
        if !self.gone.is_empty() {
            write!(f, "; exited: worker(s) {:?}", self.gone)?;
        }
        Ok(())
    }
}

impl std::error::Error for BroadcastError {}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::thread;

    use super::*;

    fn snapshot(version: u64) -> Arc<Snapshot> {
        let mut snap = Snapshot::default();
        snap.version = version;
        Arc::new(snap)
    }

    /// A plain thread standing in for a worker: waits for wake-ups, applies the newest
    /// snapshot after `delay`, reports it; returns at EOF.
    fn spawn_worker(mut link: WorkerLink, delay: Duration) -> thread::JoinHandle<Vec<u64>> {
        thread::spawn(move || {
            let mut seen = Vec::new();
            let Some(mut wakeup) = link.take_wakeup() else {
                return seen;
            };
            link.report_applied(link.initial().version);
            let mut buf = [0u8; 64];
            while let Ok(n) = wakeup.read(&mut buf) {
                if n == 0 {
                    break;
                }
                thread::sleep(delay);
                if let Some(snap) = link.try_latest() {
                    seen.push(snap.version);
                    link.report_applied(snap.version);
                }
            }
            seen
        })
    }

    #[test]
    fn publish_returns_only_after_every_worker_reported() -> Result<(), BroadcastError> {
        let Ok((mut broadcaster, links)) = channels(4, snapshot(1)) else {
            panic!("socketpair failed");
        };
        let workers: Vec<_> = links
            .into_iter()
            .map(|link| {
                let delay = Duration::from_millis(10 * link.id() as u64);
                spawn_worker(link, delay)
            })
            .collect();

        broadcaster.publish(snapshot(2), Duration::from_secs(10))?;
        // The slowest worker sleeps 30 ms before reporting; publish waited for it.
        assert_eq!(broadcaster.applied_versions(), vec![2, 2, 2, 2]);

        broadcaster.publish(snapshot(3), Duration::from_secs(10))?;
        assert_eq!(broadcaster.applied_versions(), vec![3, 3, 3, 3]);

        drop(broadcaster);
        for worker in workers {
            let seen = worker.join().unwrap_or_default();
            assert_eq!(
                seen,
                vec![2, 3],
                "each worker applied each version once, at EOF it stopped"
            );
        }
        Ok(())
    }

    #[test]
    fn publish_times_out_naming_the_stuck_worker() {
        let Ok((mut broadcaster, mut links)) = channels(3, snapshot(1)) else {
            panic!("socketpair failed");
        };
        // Worker 1 holds its link but never reads nor reports.
        let stuck = links.remove(1);
        let workers: Vec<_> = links
            .into_iter()
            .map(|link| spawn_worker(link, Duration::ZERO))
            .collect();

        let started = Instant::now();
        let err = broadcaster.publish(snapshot(2), Duration::from_millis(100));
        let waited = started.elapsed();

        let Err(err) = err else {
            panic!("publish succeeded although worker 1 never reported");
        };
        assert_eq!(err.version, 2);
        assert_eq!(err.lagging, vec![1]);
        assert!(err.gone.is_empty());
        assert!(
            waited >= Duration::from_millis(100),
            "returned after {waited:?}"
        );
        assert!(waited < Duration::from_secs(5), "returned after {waited:?}");
        assert!(err.to_string().contains("worker(s) [1]"), "{err}");
        assert_eq!(broadcaster.applied_versions(), vec![2, 0, 2]);

        drop(broadcaster);
        drop(stuck);
        for worker in workers {
            let _ = worker.join();
        }
    }

    #[test]
    fn publish_names_a_worker_that_has_exited() {
        let Ok((mut broadcaster, mut links)) = channels(2, snapshot(1)) else {
            panic!("socketpair failed");
        };
        drop(links.remove(1));
        let worker = spawn_worker(links.remove(0), Duration::ZERO);

        let Err(err) = broadcaster.publish(snapshot(2), Duration::from_secs(10)) else {
            panic!("publish succeeded although worker 1 is gone");
        };
        assert_eq!(err.gone, vec![1]);
        assert!(err.lagging.is_empty(), "worker 0 applied: {err}");
        assert_eq!(broadcaster.applied_versions()[0], 2);

        drop(broadcaster);
        let _ = worker.join();
    }

    #[test]
    fn dropping_the_broadcaster_gives_workers_eof() {
        let Ok((broadcaster, mut links)) = channels(1, snapshot(1)) else {
            panic!("socketpair failed");
        };
        let Some(mut wakeup) = links[0].take_wakeup() else {
            panic!("wake-up socket already taken");
        };
        assert!(
            links[0].take_wakeup().is_none(),
            "the wake-up socket is handed out once"
        );
        drop(broadcaster);
        let mut buf = [0u8; 8];
        assert!(matches!(wakeup.read(&mut buf), Ok(0)));
        assert!(links[0].try_latest().is_none());
    }

    #[test]
    fn try_latest_skips_to_the_newest_snapshot() {
        let Ok((mut broadcaster, mut links)) = channels(1, snapshot(1)) else {
            panic!("socketpair failed");
        };
        let link = links.remove(0);
        // Nobody reports: each publish times out at once, but the snapshots are queued.
        for version in 2..=5 {
            let _ = broadcaster.publish(snapshot(version), Duration::ZERO);
        }
        assert_eq!(link.try_latest().map(|s| s.version), Some(5));
        assert!(link.try_latest().is_none(), "the channel was drained");
        assert_eq!(link.initial().version, 1);
    }
}
