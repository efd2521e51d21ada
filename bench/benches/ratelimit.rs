//! The per-request rate-limit check for one subject far below its limit, on 1, 2 and all
//! available cores (one thread per core, every thread hitting the *same* subject), against
//! the naive alternatives:
//!
//! - `naive_log`: `Mutex<HashMap<IpAddr, VecDeque<u64>>>`, an exact sliding log (lock, drop
//!   timestamps older than the window, push one);
//! - `shared_atomic`: one `AtomicU64` counter, `fetch_add` and compare (a fixed window with
//!   no reset: the cheapest shared check there is, and not exact across windows);
//! - `leased_ip`: [`WorkerBuckets::try_acquire`] for a per-IP subject, keying included
//!   (SipHash of the address, as the naive map pays too);
//! - `leased_global`: the same for the global subject (no keying), the like-for-like
//!   comparison with the atomic.
//!
//! Limit 10⁹ per minute, so every check admits. Simulated time advances 1 ms every 16
//! requests per thread (so leases roll over slots, 3.75 s, as they would). Each thread runs
//! `iters` checks; the reported time is the slowest thread's, per check: the latency of one
//! check while all threads run. Throughput (elements) is checks per second over all threads.
//! After the leased runs the share of checks that took a shared lock is printed.
//!
//! `cargo bench -p shardgate-bench --bench ratelimit -- --warm-up-time 1 --measurement-time 3`

use std::collections::{HashMap, VecDeque};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shardgate_core::duration::Span;
use shardgate_core::plugins::Limit;
use shardgate_core::ratelimit::{Dimension, Limiter, Registry, Subject, SubjectKey};

const LIMIT: u64 = 1_000_000_000;
const WINDOW_MS: u64 = 60_000;
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));

fn thread_counts() -> Vec<usize> {
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut counts = vec![1, 2, all];
    counts.retain(|&n| n <= all);
    counts.dedup();
    counts
}

/// Simulated milliseconds, continuing across samples so windows keep sliding.
static CLOCK: AtomicU64 = AtomicU64::new(1_000_000);

/// Runs `check(thread, now)` `iters` times on each of `threads` threads started together;
/// returns the slowest thread's time.
fn run_threads<S: Sync>(
    threads: usize,
    iters: u64,
    state: &S,
    per_thread: impl Fn(&S) -> Box<dyn FnMut(u64) -> bool + '_> + Sync,
) -> Duration {
    let base = CLOCK.fetch_add(iters / 16 + 1, Ordering::Relaxed);
    let start = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut check = per_thread(state);
                    start.wait();
                    let t = Instant::now();
                    let mut admitted = 0u64;
                    for i in 0..iters {
                        admitted += u64::from(check(base + (i >> 4)));
                    }
                    assert_eq!(admitted, iters, "far below the limit: all admitted");
                    t.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .max()
            .unwrap_or_default()
    })
}

/// The exact sliding log.
struct NaiveLog(Mutex<HashMap<IpAddr, VecDeque<u64>>>);

impl NaiveLog {
    fn check(&self, subject: IpAddr, now: u64) -> bool {
        let Ok(mut map) = self.0.lock() else {
            return false;
        };
        let log = map.entry(subject).or_default();
        while log.front().is_some_and(|&t| t + WINDOW_MS <= now) {
            log.pop_front();
        }
        if (log.len() as u64) < LIMIT {
            log.push_back(now);
            true
        } else {
            false
        }
    }
}

fn leased_limiter(registry: &Registry, instance: u64, dimension: Dimension) -> Arc<Limiter> {
    let window = Span::parse("1m").expect("valid window");
    registry.limiter(
        instance,
        dimension,
        &Limit {
            limit: LIMIT,
            window,
        },
    )
}

fn bench_check(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratelimit_check_far_below_limit");
    let registry = Registry::default();
    let per_ip = leased_limiter(&registry, 1, Dimension::PerIp);
    let global = leased_limiter(&registry, 2, Dimension::Global);
    let naive = NaiveLog(Mutex::new(HashMap::new()));
    let atomic = AtomicU64::new(0);
    let leased_checks = AtomicU64::new(0);

    for threads in thread_counts() {
        group.throughput(Throughput::Elements(threads as u64));

        group.bench_function(BenchmarkId::new("naive_log", threads), |b| {
            b.iter_custom(|iters| {
                run_threads(threads, iters, &naive, |naive| {
                    Box::new(move |now| naive.check(black_box(CLIENT), now))
                })
            })
        });

        group.bench_function(BenchmarkId::new("shared_atomic", threads), |b| {
            b.iter_custom(|iters| {
                run_threads(threads, iters, &atomic, |atomic| {
                    Box::new(move |_now| atomic.fetch_add(1, Ordering::Relaxed) < u64::MAX)
                })
            })
        });

        group.bench_function(BenchmarkId::new("leased_ip", threads), |b| {
            b.iter_custom(|iters| {
                leased_checks.fetch_add(iters * threads as u64, Ordering::Relaxed);
                run_threads(threads, iters, &per_ip, |limiter| {
                    let mut worker = registry.worker();
                    Box::new(move |now| {
                        let key = limiter.key(Subject::Ip(black_box(CLIENT)));
                        worker.try_acquire(limiter, key, now).is_ok()
                    })
                })
            })
        });

        group.bench_function(BenchmarkId::new("leased_global", threads), |b| {
            b.iter_custom(|iters| {
                leased_checks.fetch_add(iters * threads as u64, Ordering::Relaxed);
                run_threads(threads, iters, &global, |limiter| {
                    let mut worker = registry.worker();
                    Box::new(move |now| {
                        worker.try_acquire(limiter, SubjectKey::GLOBAL, now).is_ok()
                    })
                })
            })
        });
    }
    group.finish();

    let shared = per_ip.stats().shared_ops + global.stats().shared_ops;
    let checks = leased_checks.load(Ordering::Relaxed).max(1);
    println!(
        "leased checks that took a shared lock: {shared} of {checks} ({:.3} %)",
        100.0 * shared as f64 / checks as f64
    );
}

criterion_group!(benches, bench_check);
criterion_main!(benches);
