//! CPU time of a process (the calling one, or another), for benchmarks that report CPU per unit of work
//! (`src/bin/runtimes.rs`, `src/bin/splice.rs`).

use std::io;
use std::time::Duration;

/// User + system CPU time of this process so far, from `/proc/self/stat` (utime and stime,
/// fields 14 and 15, in USER_HZ ticks, which are 1/100 s on every Linux ABI).
pub fn process_cpu() -> io::Result<Duration> {
    cpu_from_stat("/proc/self/stat")
}

/// The same for another process (`pid`), e.g. a server the benchmark started.
pub fn process_cpu_of(pid: u32) -> io::Result<Duration> {
    cpu_from_stat(&format!("/proc/{pid}/stat"))
}

/// User and system CPU time of `pid` so far, apart (10 ms ticks, as [`process_cpu_of`]).
pub fn user_system_of(pid: u32) -> io::Result<(Duration, Duration)> {
    let (user, system) = ticks_from_stat(&format!("/proc/{pid}/stat"))?;
    Ok((
        Duration::from_millis(user * 10),
        Duration::from_millis(system * 10),
    ))
}

fn cpu_from_stat(path: &str) -> io::Result<Duration> {
    let (user, system) = ticks_from_stat(path)?;
    Ok(Duration::from_millis((user + system) * 10))
}

fn ticks_from_stat(path: &str) -> io::Result<(u64, u64)> {
    let stat = std::fs::read_to_string(path)?;
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("unexpected /proc/self/stat"))?;
    // Fields after the command name start at field 3 (state).
    let mut fields = after_name.split_whitespace().skip(11);
    let mut tick = || -> io::Result<u64> {
        fields
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("unexpected /proc/self/stat"))
    };
    Ok((tick()?, tick()?))
}

/// CPU time of every thread of `pid` so far, in nanoseconds, from each thread's
/// `/proc/<pid>/task/<tid>/schedstat` (time on CPU, first field). Finer than
/// [`process_cpu_of`]'s 10 ms ticks: what a benchmark needs when the process under test is
/// mostly idle. Threads that already exited are not counted (the gateway's live for as
/// long as the process).
pub fn threads_cpu_ns_of(pid: u32) -> io::Result<u64> {
    threads_cpu_ns_split(pid, "").map(|(total, _)| total)
}

/// [`threads_cpu_ns_of`], and the part of it spent by the threads whose name (`comm`, at
/// most 15 bytes) starts with `prefix` (an empty prefix names none).
pub fn threads_cpu_ns_split(pid: u32, prefix: &str) -> io::Result<(u64, u64)> {
    let (mut total, mut named) = (0u64, 0u64);
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = task?.path();
        let path = dir.join("schedstat");
        // A thread may exit between the listing and the read.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let ns = text
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(|| io::Error::other(format!("unexpected {}", path.display())))?;
        total += ns;
        if !prefix.is_empty()
            && std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.starts_with(prefix))
        {
            named += ns;
        }
    }
    Ok((total, named))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_threads_share_is_part_of_the_total() {
        let handle = std::thread::Builder::new()
            .name("cpu-test-spin".into())
            .spawn(|| {
                let start = std::time::Instant::now();
                let mut x = 0u64;
                while start.elapsed() < std::time::Duration::from_millis(30) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            })
            .expect("spawn");
        std::thread::sleep(std::time::Duration::from_millis(100));
        let pid = std::process::id();
        let (total, named) = threads_cpu_ns_split(pid, "cpu-test-spin").expect("schedstat");
        assert!(
            named >= 10_000_000,
            "the spinning thread's ~30 ms: {named} ns"
        );
        assert!(total >= named);
        let (_, none) = threads_cpu_ns_split(pid, "").expect("schedstat");
        assert_eq!(none, 0, "an empty prefix names no thread");
        handle.join().expect("join");
    }
}
