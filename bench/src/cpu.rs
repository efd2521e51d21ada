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

fn cpu_from_stat(path: &str) -> io::Result<Duration> {
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
    let ticks = tick()? + tick()?;
    Ok(Duration::from_millis(ticks * 10))
}
