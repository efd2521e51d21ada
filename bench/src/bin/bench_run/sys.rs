//! What the harness reads from the host: `/proc` (process CPU time and memory, per-CPU
//! busy time), the machine description, CPU lists and limits. Linux only, no `unsafe`.

use std::fs;
use std::process::Command;

use serde_json::{Value, json};

/// The CPU time (user + system, in clock ticks) and memory of a set of processes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    pub cpu_ticks: u64,
    pub rss_kib: u64,
    pub pss_kib: u64,
}

/// `root` and its direct children (nginx's workers; shardgate has none).
pub fn proc_tree(root: u32) -> Vec<u32> {
    let mut pids = vec![root];
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != root && stat_fields(pid).is_some_and(|f| f.ppid == root) {
                pids.push(pid);
            }
        }
    }
    pids
}

struct StatFields {
    ppid: u32,
    ticks: u64,
}

/// `/proc/<pid>/stat`: the fields after the parenthesised command name start at field 3
/// (state); ppid is field 4, utime 14, stime 15 (proc(5)). They cover every thread of the
/// process, including threads that have exited.
fn stat_fields(pid: u32) -> Option<StatFields> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(StatFields {
        ppid: f.get(1)?.parse().ok()?,
        ticks: f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
    })
}

fn kib_field(path: &str, name: &str) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// CPU ticks and parent of every process on the host, to tell how much CPU processes
/// outside the harness (other users of a shared machine) took during a run.
#[derive(Debug, Clone, Default)]
pub struct HostProcs {
    procs: std::collections::HashMap<u32, (u32, u64)>,
}

pub fn host_procs() -> HostProcs {
    let mut procs = std::collections::HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            if let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
                && let Some(f) = stat_fields(pid)
            {
                procs.insert(pid, (f.ppid, f.ticks));
            }
        }
    }
    HostProcs { procs }
}

impl HostProcs {
    fn descends_from(&self, mut pid: u32, root: u32) -> bool {
        for _ in 0..64 {
            if pid == root {
                return true;
            }
            match self.procs.get(&pid) {
                Some(&(ppid, _)) if ppid != 0 && ppid != pid => pid = ppid,
                _ => return false,
            }
        }
        false
    }

    /// Ticks used between `self` (earlier) and `later` by processes that are not this
    /// process or its descendants. Processes that started and ended in between are missed.
    pub fn foreign_ticks(&self, later: &HostProcs) -> u64 {
        let me = std::process::id();
        later
            .procs
            .iter()
            .filter(|(pid, _)| !later.descends_from(**pid, me) && !self.descends_from(**pid, me))
            .map(|(pid, &(_, t1))| {
                let t0 = self.procs.get(pid).map_or(0, |&(_, t)| t);
                t1.saturating_sub(t0)
            })
            .sum()
    }
}

/// Sums CPU ticks, RSS and PSS over `pids`.
pub fn sample(pids: &[u32]) -> ProcSample {
    let mut s = ProcSample::default();
    for &pid in pids {
        if let Some(f) = stat_fields(pid) {
            s.cpu_ticks += f.ticks;
        }
        s.rss_kib += kib_field(&format!("/proc/{pid}/status"), "VmRSS:");
        s.pss_kib += kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:");
    }
    s
}

/// Clock ticks per second for `/proc/<pid>/stat` times.
pub fn clk_tck() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// Per-CPU counters from `/proc/stat` (in ticks): busy, total, steal.
#[derive(Debug, Clone, Default)]
pub struct CpuTimes {
    per_cpu: Vec<(usize, u64, u64, u64)>,
}

pub fn cpu_times() -> CpuTimes {
    let mut per_cpu = Vec::new();
    if let Ok(text) = fs::read_to_string("/proc/stat") {
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let Some(name) = parts.next() else { continue };
            let Some(cpu) = name
                .strip_prefix("cpu")
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            let v: Vec<u64> = parts.filter_map(|p| p.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal (guest time is inside user).
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            let steal = v.get(7).copied().unwrap_or(0);
            per_cpu.push((cpu, total - idle - steal, total, steal));
        }
    }
    CpuTimes { per_cpu }
}

impl CpuTimes {
    /// Busy and steal share (0..=1) of `cpus` between `self` (earlier) and `later`.
    pub fn busy_between(&self, later: &CpuTimes, cpus: &[usize]) -> (f64, f64) {
        let (mut busy, mut total, mut steal) = (0u64, 0u64, 0u64);
        for &(cpu, b1, t1, s1) in &later.per_cpu {
            if !cpus.contains(&cpu) {
                continue;
            }
            if let Some(&(_, b0, t0, s0)) = self.per_cpu.iter().find(|p| p.0 == cpu) {
                busy += b1.saturating_sub(b0);
                total += t1.saturating_sub(t0);
                steal += s1.saturating_sub(s0);
            }
        }
        if total == 0 {
            (0.0, 0.0)
        } else {
            (busy as f64 / total as f64, steal as f64 / total as f64)
        }
    }
}

pub use shardgate_bench::cpus::{allowed_cpus, cpu_list_string, parse_cpu_list};

/// The soft RLIMIT_NOFILE of this process.
pub fn nofile_limit() -> u64 {
    fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024)
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success() || cmd != "git")
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.trim().to_string()
        })
        .unwrap_or_default()
}

pub fn hostname() -> String {
    let raw = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
    let clean: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "host".into()
    } else {
        clean
    }
}

/// What a reader needs to judge the numbers: CPU model and count, virtualisation, kernel,
/// memory, io_uring availability, tool versions.
pub fn machine(nginx: &str, wrk: &str) -> Value {
    let lscpu = command_line("lscpu", &[]);
    let field = |name: &str| {
        lscpu
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    let hypervisor = field("Hypervisor vendor:");
    let cpuinfo_flags = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let virtualised = !hypervisor.is_empty()
        || cpuinfo_flags
            .lines()
            .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor"));
    let mem_kib = kib_field("/proc/meminfo", "MemTotal:");
    let os = fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_default();
    let governor = fs::read_to_string("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "n/a (no cpufreq)".into());
    let io_uring_disabled = fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "absent".into());
    json!({
        "host": hostname(),
        "cpu_model": field("Model name:"),
        "cpus_online": field("On-line CPU(s) list:"),
        "cpus": field("CPU(s):"),
        "threads_per_core": field("Thread(s) per core:"),
        "cores_per_socket": field("Core(s) per socket:"),
        "sockets": field("Socket(s):"),
        "hypervisor": if hypervisor.is_empty() { Value::Null } else { Value::from(hypervisor) },
        "virtualised": virtualised,
        "kernel": command_line("uname", &["-r"]),
        "os": os,
        "mem_gib": (mem_kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "cpufreq_governor": governor,
        "io_uring_disabled_sysctl": io_uring_disabled,
        "nginx": command_line(nginx, &["-v"]).trim_start_matches("nginx version: ").to_string(),
        // The TLS library nginx runs with, for the HTTPS scenarios (`built with OpenSSL 3.0.x
        // ... (running with OpenSSL 3.0.y ...)`).
        "nginx_tls_library": command_line(nginx, &["-V"])
            .lines()
            .find_map(|l| l.strip_prefix("built with "))
            .unwrap_or("")
            .to_string(),
        "wrk": command_line(wrk, &["-v"])
            .lines()
            .next()
            .unwrap_or("")
            .split(" Copyright")
            .next()
            .unwrap_or("")
            .to_string(),
        "rustc": command_line("rustc", &["-V"]),
        "git": Some(command_line("git", &["describe", "--always", "--dirty"]))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown (not a git checkout)".into()),
    })
}
