//! Pure decisions: from what was read and parsed to a [`Finding`] with its fix. What
//! shardgate needs of the host (backlog, descriptors, ring memory, disk space, the io_uring
//! opcodes monoio uses) is stated here, next to the verdicts that measure against it.

use std::path::{Path, PathBuf};

use super::Finding;
use super::parse::{FsKind, IoUringDisabled, Limit, ParseError};
use crate::shell::cli::IoDriver;

/// Listen backlog each worker asks for ([`crate::accept`]); the kernel caps it at
/// `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u64 = 4096;
/// File descriptors the process holds whatever its load: stdio, the admin listener and a
/// few admin connections, the journal and checkpoint, the signal pipe, tracing.
pub const PROCESS_FDS: u64 = 64;
/// File descriptors each worker holds besides its connections: listener, ring or epoll
/// fd, eventfd, stop and snapshot sockets, timer; rounded up.
pub const WORKER_FDS: u64 = 8;
/// Idle upstream connections one worker may keep for one target (`pool.max_idle`'s
/// default); the formula assumes one target with a full pool per worker.
pub const POOLED_FDS_PER_WORKER: u64 = 64;
/// Entries of each worker's io_uring (monoio's default): [`super::probe`] opens rings of
/// this size so that a probe costs what a worker's ring costs.
pub const RING_ENTRIES: u32 = 1024;
/// Locked memory one such ring is charged: 1024 SQEs × 64 B + 2048 CQEs × 16 B + ring
/// headers = 26 pages. Measured on Linux 6.18 as the smallest RLIMIT_MEMLOCK one ring
/// fits in. Kernels before 5.12 charged the limit too, 5.12 was documented to charge the
/// memory cgroup instead, 6.18 charges the limit: doctor opens the rings rather than
/// trusting a kernel version.
pub const RING_BYTES_PER_WORKER: u64 = 104 * 1024;
/// Below this much free space in the data directory's filesystem, admin writes are about
/// to fail with ENOSPC.
pub const DISK_FAIL_BYTES: u64 = 100 * 1024 * 1024;
/// Below this much free space, warn: the journal and checkpoint of a large configuration
/// (100 000 keys) take tens of MiB, twice during a checkpoint rewrite.
pub const DISK_WARN_BYTES: u64 = 1024 * 1024 * 1024;

/// The opcodes `monoio::utils::detect_uring` requires (monoio 0.2, without `splice`).
pub const MONOIO_OPCODES: &[(u8, &str)] = {
    use io_uring::opcode::*;
    &[
        (Accept::CODE, "accept"),
        (AsyncCancel::CODE, "async_cancel"),
        (Close::CODE, "close"),
        (Connect::CODE, "connect"),
        (Fsync::CODE, "fsync"),
        (OpenAt::CODE, "openat"),
        (PollAdd::CODE, "poll_add"),
        (ProvideBuffers::CODE, "provide_buffers"),
        (Read::CODE, "read"),
        (Readv::CODE, "readv"),
        (Recv::CODE, "recv"),
        (Send::CODE, "send"),
        (SendMsg::CODE, "sendmsg"),
        (RecvMsg::CODE, "recvmsg"),
        (Timeout::CODE, "timeout"),
        (Write::CODE, "write"),
        (Writev::CODE, "writev"),
    ]
};

impl Finding {
    /// `warn` under `--io-driver auto` (the workers fall back to epoll), `fail` under
    /// `uring` (start-up refuses), `ok` under `epoll` (io_uring is not used).
    fn by_driver(
        requested: IoDriver,
        check: &'static str,
        finding: String,
        fix: impl Into<String>,
    ) -> Finding {
        match requested {
            IoDriver::Auto => Finding::warn(check, finding, fix),
            IoDriver::Uring => Finding::fail(check, finding, fix),
            IoDriver::Epoll => Finding::ok(check, format!("{finding} (unused: --io-driver epoll)")),
        }
    }
}

/// What an io_uring ring probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingProbe {
    /// `IORING_FEAT_*` flags the kernel reported, by short name.
    pub features: Vec<&'static str>,
    /// monoio's opcodes the kernel lacks; `Err(errno)` when IORING_REGISTER_PROBE itself
    /// failed (kernels before 5.6).
    pub missing_ops: Result<Vec<&'static str>, i32>,
}

/// Everything the io_uring verdict depends on.
#[derive(Debug)]
pub struct UringInputs<'a> {
    pub requested: IoDriver,
    /// `/proc/sys/kernel/osrelease`, for the message.
    pub kernel: Option<&'a str>,
    /// `None`: the sysctl does not exist (kernels before 6.6); `Some(Err)`: unparsable.
    pub disabled: Option<Result<IoUringDisabled, String>>,
    /// `kernel.io_uring_group` (-1: none).
    pub group: Option<i64>,
    /// `Seccomp:` of /proc/self/status.
    pub seccomp: Option<u8>,
    /// `MONOIO_FORCE_LEGACY_DRIVER` is set.
    pub forced_legacy: bool,
    /// The ring probe, or the errno of `io_uring_setup`.
    pub probe: &'a Result<RingProbe, i32>,
}

/// Whether the workers will get io_uring, and if not, why and what to do.
pub fn judge_io_uring(i: &UringInputs<'_>) -> Finding {
    const CHECK: &str = "io_uring";
    let kernel = i.kernel.unwrap_or("unknown kernel");
    let epoll_instead = "or run with --io-driver epoll";
    if i.forced_legacy {
        return Finding::by_driver(
            i.requested,
            CHECK,
            "MONOIO_FORCE_LEGACY_DRIVER is set: monoio reports io_uring unavailable and workers use epoll".into(),
            "unset MONOIO_FORCE_LEGACY_DRIVER in the service's environment",
        );
    }
    match i.probe {
        Ok(probe) => {
            let features = if probe.features.is_empty() {
                "none".to_owned()
            } else {
                probe.features.join(" ")
            };
            match &probe.missing_ops {
                Ok(missing) if missing.is_empty() => {
                    let base = format!(
                        "usable (kernel {kernel}): all {} opcodes monoio uses are supported; features: {features}",
                        MONOIO_OPCODES.len()
                    );
                    if matches!(i.disabled, Some(Ok(IoUringDisabled::GroupOnly))) {
                        // Allowed for *this* process (root, or in the group); the service
                        // user may not be.
                        let (who, fix) = group_clause(i.group);
                        Finding::warn(
                            CHECK,
                            format!(
                                "{base}; but kernel.io_uring_disabled = 1 allows it only to {who}, so the service user may be refused"
                            ),
                            format!(
                                "run doctor as the service user; {fix}, or sysctl -w kernel.io_uring_disabled=0"
                            ),
                        )
                    } else if i.requested == IoDriver::Epoll {
                        Finding::ok(CHECK, format!("{base} (unused: --io-driver epoll)"))
                    } else {
                        Finding::ok(CHECK, base)
                    }
                }
                Ok(missing) => Finding::by_driver(
                    i.requested,
                    CHECK,
                    format!(
                        "kernel {kernel} lacks io_uring opcodes monoio needs ({}): workers would use epoll",
                        missing.join(", ")
                    ),
                    format!("a kernel ≥ 5.10 (LTS), {epoll_instead}"),
                ),
                Err(errno) => Finding::by_driver(
                    i.requested,
                    CHECK,
                    format!(
                        "kernel {kernel} cannot report io_uring opcodes (IORING_REGISTER_PROBE: {}): monoio treats io_uring as unavailable",
                        errno_name(*errno)
                    ),
                    format!("a kernel ≥ 5.10 (LTS), {epoll_instead}"),
                ),
            }
        }
        Err(errno) => {
            let (finding, fix) = why_setup_failed(i, *errno, kernel);
            Finding::by_driver(
                i.requested,
                CHECK,
                finding,
                format!("{fix}, {epoll_instead}"),
            )
        }
    }
}

/// Under `io_uring_disabled = 1`: who besides CAP_SYS_ADMIN may use io_uring, and how to
/// let the service user in.
fn group_clause(group: Option<i64>) -> (String, String) {
    match group {
        Some(gid) if gid >= 0 => (
            format!("CAP_SYS_ADMIN and members of group {gid} (kernel.io_uring_group)"),
            format!(
                "add the service user to group {gid} (SupplementaryGroups= in shardgate.service)"
            ),
        ),
        _ => (
            "CAP_SYS_ADMIN (kernel.io_uring_group = -1: no group)".to_owned(),
            "sysctl -w kernel.io_uring_group=<gid> and put the service user in that group (SupplementaryGroups=)".to_owned(),
        ),
    }
}

/// Explains a failed `io_uring_setup`, using what else is known about the host.
fn why_setup_failed(i: &UringInputs<'_>, errno: i32, kernel: &str) -> (String, String) {
    let setup = format!("io_uring_setup failed with {}", errno_name(errno));
    match (&i.disabled, errno) {
        (Some(Ok(IoUringDisabled::Disabled)), _) => (
            format!("{setup}: kernel.io_uring_disabled = 2 disables io_uring for every process"),
            "sysctl -w kernel.io_uring_disabled=0 and persist it in /etc/sysctl.d/99-shardgate.conf".into(),
        ),
        (Some(Ok(IoUringDisabled::GroupOnly)), libc::EPERM) => {
            let (who, fix) = group_clause(i.group);
            (
                format!("{setup}: kernel.io_uring_disabled = 1 allows io_uring only to {who}"),
                format!("{fix}, or sysctl -w kernel.io_uring_disabled=0"),
            )
        }
        (_, libc::EPERM) => {
            let filter = if i.seccomp == Some(2) {
                "this process runs under a seccomp filter (Seccomp: 2)"
            } else {
                "a seccomp filter or LSM policy forbids it"
            };
            (
                format!(
                    "{setup}: {filter}; container runtimes' default profiles (Docker ≥ 25, containerd) and systemd SystemCallFilter= block io_uring"
                ),
                "allow io_uring_setup, io_uring_enter and io_uring_register (docker run --security-opt seccomp=<profile>, or SystemCallFilter=@system-service io_uring_setup io_uring_enter io_uring_register; see tuning/TUNING.md)".into(),
            )
        }
        (_, libc::ENOSYS) => (
            format!(
                "{setup}: kernel {kernel} has no io_uring (older than 5.1, built without CONFIG_IO_URING) or a seccomp filter answers ENOSYS"
            ),
            "a kernel ≥ 5.10 with CONFIG_IO_URING=y, or allow the io_uring syscalls in the seccomp profile".into(),
        ),
        (_, libc::ENOMEM) => (
            format!(
                "{setup}: not even one {RING_ENTRIES}-entry ring fits the locked-memory limit (RLIMIT_MEMLOCK, charged per user) or memory is exhausted"
            ),
            "LimitMEMLOCK=infinity in shardgate.service, or `ulimit -l unlimited`".into(),
        ),
        (_, libc::EMFILE | libc::ENFILE) => (
            format!("{setup}: out of file descriptors"),
            "raise LimitNOFILE in shardgate.service".into(),
        ),
        _ => (
            setup,
            "check dmesg and the kernel's io_uring settings".into(),
        ),
    }
}

fn errno_name(errno: i32) -> String {
    match errno {
        libc::EPERM => "EPERM".into(),
        libc::ENOSYS => "ENOSYS".into(),
        libc::ENOMEM => "ENOMEM".into(),
        libc::EMFILE => "EMFILE".into(),
        libc::ENFILE => "ENFILE".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::EACCES => "EACCES".into(),
        libc::EFAULT => "EFAULT".into(),
        _ => format!("errno {errno}"),
    }
}

fn bytes(n: u64) -> String {
    const KIB: u64 = 1024;
    match n {
        n if n >= KIB * KIB * KIB && n % (KIB * KIB * KIB) == 0 => {
            format!("{} GiB", n / (KIB * KIB * KIB))
        }
        n if n >= KIB * KIB * KIB => format!("{:.1} GiB", n as f64 / (KIB * KIB * KIB) as f64),
        n if n >= KIB * KIB && n % (KIB * KIB) == 0 => format!("{} MiB", n / (KIB * KIB)),
        n if n >= KIB * KIB => format!("{:.1} MiB", n as f64 / (KIB * KIB) as f64),
        n if n >= KIB && n % KIB == 0 => format!("{} KiB", n / KIB),
        n => format!("{n} B"),
    }
}

fn count(n: u64) -> String {
    n.to_string()
}

/// How many of the workers' rings could be held open at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingCount {
    pub opened: usize,
    pub wanted: usize,
    /// The errno that stopped the count short (or stopped the first ring).
    pub error: Option<i32>,
}

/// RLIMIT_MEMLOCK against the workers' rings. The kernel charges ring memory to the
/// limit per *user* (before 5.12, and again on recent kernels such as 6.18) unless the
/// process has CAP_IPC_LOCK; so the verdict rests on opening the rings, and on whether
/// this process was exempt while doing it.
pub fn judge_memlock(
    requested: IoDriver,
    memlock: Limit,
    ipc_lock: bool,
    rings: &RingCount,
) -> Finding {
    const CHECK: &str = "memlock";
    let soft = memlock.soft.describe(bytes);
    if requested == IoDriver::Epoll {
        return Finding::ok(
            CHECK,
            format!("not needed with --io-driver epoll (soft limit {soft})"),
        );
    }
    let fix = "LimitMEMLOCK=infinity in shardgate.service, or `ulimit -l unlimited` (memlock in /etc/security/limits.conf)";
    let RingCount {
        opened,
        wanted,
        error,
    } = *rings;
    let needed = RING_BYTES_PER_WORKER * wanted as u64;
    match error {
        Some(libc::ENOMEM) => {
            let rest = if requested == IoDriver::Auto && opened > 0 {
                "; the other workers would fall back to epoll"
            } else {
                ""
            };
            Finding::by_driver(
                requested,
                CHECK,
                format!(
                    "only {opened} of {wanted} io_uring rings ({RING_ENTRIES} entries, one per worker) could be held open before ENOMEM: this kernel charges ring memory (about {} each) to RLIMIT_MEMLOCK, soft limit {soft}, shared by all of this user's processes{rest}",
                    bytes(RING_BYTES_PER_WORKER)
                ),
                fix,
            )
        }
        Some(errno) if opened == 0 => Finding::ok(
            CHECK,
            format!(
                "not checked: no io_uring ring could be created ({}; see io_uring)",
                errno_name(errno)
            ),
        ),
        Some(errno) => Finding::by_driver(
            requested,
            CHECK,
            format!(
                "only {opened} of {wanted} io_uring rings could be held open: {}",
                errno_name(errno)
            ),
            "check the limits of this user (ulimit -a) and dmesg",
        ),
        None if ipc_lock && !memlock.soft.at_least(needed) => Finding::warn(
            CHECK,
            format!(
                "{wanted} rings of {RING_ENTRIES} entries opened, but only because this process has CAP_IPC_LOCK (root?), which RLIMIT_MEMLOCK does not bind; an unprivileged service user needs about {} ({wanted} × {}) and the soft limit is {soft}",
                bytes(needed),
                bytes(RING_BYTES_PER_WORKER)
            ),
            format!("{fix}; run doctor as the service user to see its real limit"),
        ),
        None => Finding::ok(
            CHECK,
            format!(
                "{wanted} rings of {RING_ENTRIES} entries (one per worker) held open at once, about {} locked (soft limit {soft})",
                bytes(needed)
            ),
        ),
    }
}

/// File descriptors `shardgate run` needs at `connections` concurrent client connections:
/// 2 per connection (client + upstream) + per worker ([`WORKER_FDS`] +
/// [`POOLED_FDS_PER_WORKER`] idle pooled upstream connections) + [`PROCESS_FDS`].
pub fn nofile_needed(workers: usize, connections: u64) -> u64 {
    let workers = workers as u64;
    connections
        .saturating_mul(2)
        .saturating_add(workers.saturating_mul(WORKER_FDS + POOLED_FDS_PER_WORKER))
        .saturating_add(PROCESS_FDS)
}

/// RLIMIT_NOFILE (the soft limit applies: shardgate does not raise it itself) against
/// [`nofile_needed`], with the system-wide ceilings that bound a fix.
pub fn judge_nofile(
    nofile: Limit,
    needed: u64,
    connections: u64,
    nr_open: Option<u64>,
    file_max: Option<u64>,
) -> Finding {
    const CHECK: &str = "nofile";
    let formula = format!(
        "{} needed for {} connections (2 per connection + {} per worker + {})",
        count(needed),
        count(connections),
        WORKER_FDS + POOLED_FDS_PER_WORKER,
        PROCESS_FDS
    );
    let soft = nofile.soft.describe(count);
    let hard = nofile.hard.describe(count);
    let setting = needed.max(65_536).next_power_of_two();
    if let Some(max) = file_max
        && max < needed
    {
        return Finding::fail(
            CHECK,
            format!("fs.file-max = {max} system-wide < {formula}"),
            format!("sysctl -w fs.file-max={setting} (tuning/apply), then LimitNOFILE={setting}"),
        );
    }
    if nofile.soft.at_least(needed) {
        return Finding::ok(
            CHECK,
            format!("soft limit {soft} (hard {hard}) ≥ {formula}"),
        );
    }
    let fix = if nofile.hard.at_least(needed) {
        format!(
            "LimitNOFILE={setting} in shardgate.service, or `ulimit -n {setting}` before starting (the hard limit {hard} allows it)"
        )
    } else if nr_open.is_some_and(|max| max < setting) {
        format!(
            "sysctl -w fs.nr_open={setting} (tuning/apply: it caps every hard limit), then LimitNOFILE={setting} in shardgate.service"
        )
    } else {
        format!(
            "LimitNOFILE={setting} in shardgate.service (or `nofile` in /etc/security/limits.conf; the hard limit {hard} is too low for `ulimit -n`)"
        )
    };
    Finding::fail(
        CHECK,
        format!(
            "soft limit {soft} (hard {hard}) < {formula}: accept() fails with EMFILE under load"
        ),
        fix,
    )
}

/// `net.core.somaxconn` caps each worker's listen backlog of [`LISTEN_BACKLOG`].
pub fn judge_somaxconn(value: Option<u64>) -> Finding {
    const CHECK: &str = "somaxconn";
    match value {
        Some(v) if v >= LISTEN_BACKLOG => Finding::ok(
            CHECK,
            format!("net.core.somaxconn = {v} ≥ the listen backlog of {LISTEN_BACKLOG}"),
        ),
        Some(v) => Finding::warn(
            CHECK,
            format!(
                "net.core.somaxconn = {v} caps the listen backlog of {LISTEN_BACKLOG}: connection bursts overflow the accept queue and clients retry SYNs after 1 s"
            ),
            format!("sysctl -w net.core.somaxconn={LISTEN_BACKLOG} (tuning/apply)"),
        ),
        None => Finding::warn(
            CHECK,
            "cannot read /proc/sys/net/core/somaxconn",
            "check `sysctl net.core.somaxconn` by hand",
        ),
    }
}

/// `net.ipv4.tcp_max_syn_backlog`: half-open connections queued per listener.
pub fn judge_syn_backlog(value: Option<u64>) -> Finding {
    const CHECK: &str = "tcp_max_syn_backlog";
    match value {
        Some(v) if v >= LISTEN_BACKLOG => Finding::ok(
            CHECK,
            format!("net.ipv4.tcp_max_syn_backlog = {v} ≥ {LISTEN_BACKLOG}"),
        ),
        Some(v) => Finding::warn(
            CHECK,
            format!(
                "net.ipv4.tcp_max_syn_backlog = {v} < {LISTEN_BACKLOG}: SYN bursts are dropped (or answered with syncookies) before accept"
            ),
            "sysctl -w net.ipv4.tcp_max_syn_backlog=8192 (tuning/apply)",
        ),
        None => Finding::warn(
            CHECK,
            "cannot read /proc/sys/net/ipv4/tcp_max_syn_backlog",
            "check `sysctl net.ipv4.tcp_max_syn_backlog` by hand",
        ),
    }
}

/// `net.ipv4.ip_local_port_range`: every upstream connection to one upstream address
/// takes its own local port.
pub fn judge_port_range(range: Option<(u16, u16)>, connections: u64) -> Finding {
    const CHECK: &str = "ip_local_port_range";
    let Some((low, high)) = range else {
        return Finding::warn(
            CHECK,
            "cannot read /proc/sys/net/ipv4/ip_local_port_range",
            "check `sysctl net.ipv4.ip_local_port_range` by hand",
        );
    };
    let ports = u64::from(high - low) + 1;
    if ports >= connections {
        Finding::ok(
            CHECK,
            format!(
                "{low}-{high}: {ports} ports ≥ {connections} connections to a single upstream address"
            ),
        )
    } else {
        Finding::warn(
            CHECK,
            format!(
                "{low}-{high}: {ports} ports < {connections} connections: upstream connects to a single upstream address fail with EADDRNOTAVAIL"
            ),
            "sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\" (tuning/apply), or spread traffic over more upstream addresses",
        )
    }
}

/// `--workers` against the CPUs this process may use (`allowed`: affinity mask) and the
/// CPU time it may get (`parallelism`: also the cgroup quota). 0 means unknown.
pub fn judge_cpus(workers: usize, allowed: usize, parallelism: usize) -> Finding {
    const CHECK: &str = "cpus";
    let cpus = if allowed == 0 { parallelism } else { allowed };
    if cpus == 0 {
        return Finding::warn(
            CHECK,
            format!("{workers} workers; cannot tell how many CPUs this process may use"),
            "check `nproc` and pass --workers <that>",
        );
    }
    if workers > cpus {
        return Finding::warn(
            CHECK,
            format!(
                "{workers} workers on {cpus} allowed CPUs: event loops share cores and context-switch, adding latency"
            ),
            format!("--workers {cpus}"),
        );
    }
    if parallelism != 0 && workers > parallelism {
        return Finding::warn(
            CHECK,
            format!(
                "{workers} workers, but the CPU quota (cgroup cpu.max) allows about {parallelism} CPUs: workers get throttled in bursts"
            ),
            format!("--workers {parallelism}, or raise the quota (CPUQuota=, docker --cpus)"),
        );
    }
    let spare = cpus - workers;
    let rest = if spare == 0 {
        "none left for IRQs, the load generator or the upstream on this host".to_owned()
    } else {
        format!("{spare} left for IRQs and other processes")
    };
    Finding::ok(
        CHECK,
        format!("{workers} workers on {cpus} allowed CPUs ({rest})"),
    )
}

/// The data directory itself: a directory, or absent (start-up creates it).
pub fn judge_data_dir(path: &Path, exists: bool, is_dir: bool, existing: &Path) -> Finding {
    const CHECK: &str = "data_dir";
    match (exists, is_dir) {
        (true, true) => Finding::ok(CHECK, format!("{} exists", path.display())),
        (true, false) => Finding::fail(
            CHECK,
            format!("{} exists but is not a directory", path.display()),
            "pass a directory as --data-dir, or move the file away",
        ),
        (false, _) => Finding::ok(
            CHECK,
            format!(
                "{} does not exist yet; start-up creates it (under {}, which the service user must be able to write)",
                path.display(),
                existing.display()
            ),
        ),
    }
}

/// What doctor knows about the data directory's filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    pub kind: FsKind,
    pub mount_point: Option<PathBuf>,
    pub source: Option<String>,
    pub read_only: bool,
}

/// Whether the store's fsyncs make admin writes durable on this filesystem.
pub fn judge_filesystem(fs: Option<&FsInfo>) -> Finding {
    const CHECK: &str = "fsync";
    let Some(fs) = fs else {
        return Finding::warn(
            CHECK,
            "cannot tell which filesystem holds the data directory",
            "check `findmnt -T <data-dir>`: use a local disk filesystem (ext4, xfs)",
        );
    };
    let at = match (&fs.mount_point, &fs.source) {
        (Some(point), Some(source)) => format!(" ({source} on {})", point.display()),
        (Some(point), None) => format!(" (on {})", point.display()),
        _ => String::new(),
    };
    if fs.read_only {
        return Finding::fail(
            CHECK,
            format!(
                "the data directory's filesystem{at} is mounted read-only: the store cannot write its journal"
            ),
            "put --data-dir on a writable filesystem (ReadWritePaths= in shardgate.service under ProtectSystem=strict)",
        );
    }
    match &fs.kind {
        FsKind::Durable(name) => Finding::ok(
            CHECK,
            format!("data directory on {name}{at}: fsync reaches the disk"),
        ),
        FsKind::Memory(name) => Finding::warn(
            CHECK,
            format!(
                "data directory on {name}{at}: fsync is a no-op and every gateway, key and rule is lost at reboot"
            ),
            "put --data-dir on a disk filesystem, e.g. /var/lib/shardgate (StateDirectory=shardgate)",
        ),
        FsKind::Overlay => Finding::warn(
            CHECK,
            format!(
                "data directory on overlayfs{at}: a container's writable layer, lost when the container is removed"
            ),
            "mount a volume at the data directory (docker run -v shardgate-data:/var/lib/shardgate)",
        ),
        FsKind::Network(name) => Finding::warn(
            CHECK,
            format!(
                "data directory on network filesystem {name}{at}: fsync durability and latency depend on the server and mount options (async exports lie)"
            ),
            "put --data-dir on a local disk filesystem",
        ),
        FsKind::Fuse(name) => Finding::warn(
            CHECK,
            format!(
                "data directory on FUSE filesystem {name}{at}: fsync does what its daemon does"
            ),
            "put --data-dir on a local disk filesystem",
        ),
        FsKind::Other(name) => Finding::ok(
            CHECK,
            format!(
                "data directory on {name}{at} (not one shardgate knows; make sure it honours fsync)"
            ),
        ),
    }
}

/// Free space of the data directory's filesystem (for the unprivileged user).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    pub available: u64,
    pub total: u64,
}

/// Free space against [`DISK_FAIL_BYTES`] and [`DISK_WARN_BYTES`] (or 5 % of the disk).
pub fn judge_disk_space(space: Option<DiskSpace>) -> Finding {
    const CHECK: &str = "disk_space";
    let Some(DiskSpace { available, total }) = space else {
        return Finding::warn(
            CHECK,
            "cannot statvfs the data directory",
            "check `df -h <data-dir>` by hand",
        );
    };
    let what = format!("{} free of {}", bytes(available), bytes(total));
    if available < DISK_FAIL_BYTES {
        Finding::fail(
            CHECK,
            format!("{what}: admin writes fail with ENOSPC soon"),
            "free space on that filesystem or move --data-dir",
        )
    } else if available < DISK_WARN_BYTES || available < total / 20 {
        Finding::warn(
            CHECK,
            format!("{what}: little headroom for the journal and checkpoint rewrites"),
            "free space on that filesystem or move --data-dir",
        )
    } else {
        Finding::ok(CHECK, what)
    }
}

/// One stored certificate, as the expiry check sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertExpiry {
    pub name: String,
    pub not_after: time::OffsetDateTime,
}

/// Certificates expiring within this many days are listed.
pub const CERT_WARN_DAYS: i64 = 14;

/// Lists the certificates that expire within [`CERT_WARN_DAYS`] of `now` (or have).
pub fn judge_certificates(certs: &[CertExpiry], now: time::OffsetDateTime) -> Finding {
    const CHECK: &str = "certificates";
    if certs.is_empty() {
        return Finding::ok(CHECK, "no certificates uploaded");
    }
    let soon = now + time::Duration::days(CERT_WARN_DAYS);
    let mut expiring: Vec<&CertExpiry> = certs.iter().filter(|c| c.not_after <= soon).collect();
    expiring.sort_by_key(|c| c.not_after);
    let date = |t: time::OffsetDateTime| shardgate_core::certs::rfc3339(t);
    if expiring.is_empty() {
        let next = certs.iter().map(|c| c.not_after).min().unwrap_or(soon);
        return Finding::ok(
            CHECK,
            format!(
                "{} certificate{}; none expires within {CERT_WARN_DAYS} days (next: {})",
                count(certs.len() as u64),
                if certs.len() == 1 { "" } else { "s" },
                date(next)
            ),
        );
    }
    let list = expiring
        .iter()
        .map(|c| {
            let days = (c.not_after - now).whole_days();
            if c.not_after <= now {
                format!("{:?} expired {}", c.name, date(c.not_after))
            } else {
                format!(
                    "{:?} expires {} (in {days} days)",
                    c.name,
                    date(c.not_after)
                )
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    Finding::warn(
        CHECK,
        format!(
            "{} of {} certificates expire within {CERT_WARN_DAYS} days: {list}",
            expiring.len(),
            certs.len()
        ),
        "upload renewed certificates: PUT /api/v1/certificates/{id} (open connections are kept)",
    )
}

/// Whether the HTTPS listener would serve the self-signed development certificate, and for
/// which base domain: fine for `localhost`, a warning for any real domain.
pub fn judge_dev_certificate(tls_on: bool, base_domain: &str, covered: bool) -> Finding {
    const CHECK: &str = "dev_certificate";
    if !tls_on {
        return Finding::ok(CHECK, "the HTTPS listener is off");
    }
    if covered {
        return Finding::ok(
            CHECK,
            format!(
                "an uploaded certificate covers *.{base_domain}; no development certificate is served"
            ),
        );
    }
    if base_domain == "localhost" {
        return Finding::ok(
            CHECK,
            "a self-signed development certificate serves localhost and *.localhost (local use)",
        );
    }
    Finding::warn(
        CHECK,
        format!(
            "the HTTPS listener would serve a self-signed development certificate for \
             *.{base_domain}: clients will refuse it"
        ),
        format!("upload a certificate covering *.{base_domain} (POST /api/v1/certificates)"),
    )
}

/// The data directory has no existing ancestor at all (not even `/`).
pub fn judge_no_existing_ancestor(path: &Path) -> Finding {
    Finding::fail(
        "data_dir",
        format!("no ancestor of {} exists", path.display()),
        "pass an absolute --data-dir on a mounted filesystem",
    )
}

/// `/proc/self/limits` could not be read (`None`) or parsed: both limit checks are left to
/// the operator.
pub fn judge_unknown_limits(error: Option<&ParseError>) -> [Finding; 2] {
    let why = match error {
        Some(e) => format!("cannot parse /proc/self/limits: {e}"),
        None => "cannot read /proc/self/limits".to_owned(),
    };
    ["memlock", "nofile"].map(|check| {
        Finding::warn(
            check,
            why.clone(),
            "check `ulimit -l` and `ulimit -n` by hand",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::super::Level;
    use super::super::parse::LimitValue;
    use super::*;

    fn usable_probe() -> Result<RingProbe, i32> {
        Ok(RingProbe {
            features: vec!["nodrop", "ext_arg"],
            missing_ops: Ok(vec![]),
        })
    }

    fn uring<'a>(
        requested: IoDriver,
        disabled: Option<IoUringDisabled>,
        seccomp: Option<u8>,
        probe: &'a Result<RingProbe, i32>,
    ) -> UringInputs<'a> {
        UringInputs {
            requested,
            kernel: Some("6.8.0-45-generic"),
            disabled: disabled.map(Ok),
            group: Some(-1),
            seccomp,
            forced_legacy: false,
            probe,
        }
    }

    fn line(finding: &Finding) -> String {
        finding.to_string()
    }

    // --- judging: io_uring

    #[test]
    fn usable_io_uring_is_ok_and_names_its_features() {
        let probe = usable_probe();
        let f = judge_io_uring(&uring(
            IoDriver::Auto,
            Some(IoUringDisabled::Enabled),
            Some(0),
            &probe,
        ));
        assert_eq!(f.level, Level::Ok);
        assert!(f.finding.contains("all 17 opcodes"), "{f}");
        assert!(f.finding.contains("ext_arg"), "{f}");
        assert_eq!(f.fix, None);
    }

    #[test]
    fn io_uring_disabled_2_is_reported_with_the_sysctl_fix() {
        let probe = Err(libc::EPERM);
        let auto = judge_io_uring(&uring(
            IoDriver::Auto,
            Some(IoUringDisabled::Disabled),
            Some(0),
            &probe,
        ));
        assert_eq!(auto.level, Level::Warn, "auto falls back to epoll: {auto}");
        assert!(auto.finding.contains("io_uring_disabled = 2"), "{auto}");
        assert!(
            line(&auto).contains("fix: sysctl -w kernel.io_uring_disabled=0"),
            "{auto}"
        );

        let strict = judge_io_uring(&uring(
            IoDriver::Uring,
            Some(IoUringDisabled::Disabled),
            Some(0),
            &probe,
        ));
        assert_eq!(
            strict.level,
            Level::Fail,
            "--io-driver uring refuses to start"
        );

        let epoll = judge_io_uring(&uring(
            IoDriver::Epoll,
            Some(IoUringDisabled::Disabled),
            Some(0),
            &probe,
        ));
        assert_eq!(epoll.level, Level::Ok);
    }

    #[test]
    fn io_uring_disabled_1_names_the_group_when_refused_and_warns_when_allowed() {
        let mut inputs = uring(
            IoDriver::Auto,
            Some(IoUringDisabled::GroupOnly),
            Some(0),
            &Err(libc::EPERM),
        );
        inputs.group = Some(990);
        let refused = judge_io_uring(&inputs);
        assert_eq!(refused.level, Level::Warn);
        assert!(refused.finding.contains("group 990"), "{refused}");
        assert!(line(&refused).contains("SupplementaryGroups="), "{refused}");

        // Root passes the probe; the service user might not.
        let probe = usable_probe();
        let allowed = judge_io_uring(&uring(
            IoDriver::Uring,
            Some(IoUringDisabled::GroupOnly),
            Some(0),
            &probe,
        ));
        assert_eq!(allowed.level, Level::Warn);
        assert!(
            allowed.finding.contains("io_uring_disabled = 1"),
            "{allowed}"
        );
    }

    #[test]
    fn seccomp_blocked_probe_is_explained_with_the_profile_fix() {
        // Docker's default profile answers EPERM for io_uring_setup.
        let probe = Err(libc::EPERM);
        let f = judge_io_uring(&uring(
            IoDriver::Auto,
            Some(IoUringDisabled::Enabled),
            Some(2),
            &probe,
        ));
        assert_eq!(f.level, Level::Warn);
        assert!(f.finding.contains("EPERM"), "{f}");
        assert!(f.finding.contains("seccomp filter (Seccomp: 2)"), "{f}");
        let text = line(&f);
        assert!(
            text.contains("io_uring_setup, io_uring_enter and io_uring_register"),
            "{text}"
        );
        assert!(text.contains("--security-opt seccomp="), "{text}");
        assert!(text.contains("--io-driver epoll"), "{text}");

        let strict = judge_io_uring(&uring(IoDriver::Uring, None, Some(2), &probe));
        assert_eq!(strict.level, Level::Fail);
    }

    #[test]
    fn enosys_means_no_io_uring_in_this_kernel() {
        let probe = Err(libc::ENOSYS);
        let f = judge_io_uring(&uring(IoDriver::Uring, None, Some(0), &probe));
        assert_eq!(f.level, Level::Fail);
        assert!(f.finding.contains("ENOSYS"), "{f}");
        assert!(f.finding.contains("CONFIG_IO_URING"), "{f}");
    }

    #[test]
    fn enomem_points_at_memlock() {
        let f = judge_io_uring(&uring(IoDriver::Auto, None, Some(0), &Err(libc::ENOMEM)));
        assert_eq!(f.level, Level::Warn);
        assert!(line(&f).contains("LimitMEMLOCK=infinity"), "{f}");
    }

    #[test]
    fn missing_opcodes_or_no_probe_support_mean_epoll() {
        let old = Ok(RingProbe {
            features: vec![],
            missing_ops: Ok(vec!["openat", "provide_buffers"]),
        });
        let f = judge_io_uring(&uring(IoDriver::Uring, None, Some(0), &old));
        assert_eq!(f.level, Level::Fail);
        assert!(f.finding.contains("openat, provide_buffers"), "{f}");

        let older = Ok(RingProbe {
            features: vec![],
            missing_ops: Err(libc::EINVAL),
        });
        let f = judge_io_uring(&uring(IoDriver::Auto, None, Some(0), &older));
        assert_eq!(f.level, Level::Warn);
        assert!(f.finding.contains("IORING_REGISTER_PROBE"), "{f}");
    }

    #[test]
    fn forced_legacy_driver_is_reported() {
        let probe = usable_probe();
        let mut inputs = uring(
            IoDriver::Auto,
            Some(IoUringDisabled::Enabled),
            Some(0),
            &probe,
        );
        inputs.forced_legacy = true;
        let f = judge_io_uring(&inputs);
        assert_eq!(f.level, Level::Warn);
        assert!(line(&f).contains("unset MONOIO_FORCE_LEGACY_DRIVER"), "{f}");
    }

    // --- judging: limits

    fn limit(soft: u64, hard: u64) -> Limit {
        Limit {
            soft: LimitValue::Finite(soft),
            hard: LimitValue::Finite(hard),
        }
    }

    fn rings(opened: usize, wanted: usize, error: Option<i32>) -> RingCount {
        RingCount {
            opened,
            wanted,
            error,
        }
    }

    #[test]
    fn memlock_is_judged_by_the_rings_that_could_be_opened() {
        let tiny = limit(64 * 1024, 64 * 1024);
        let all = rings(8, 8, None);
        assert_eq!(
            judge_memlock(IoDriver::Uring, tiny, false, &all).level,
            Level::Ok
        );

        let short = rings(2, 8, Some(libc::ENOMEM));
        let strict = judge_memlock(IoDriver::Uring, tiny, false, &short);
        assert_eq!(strict.level, Level::Fail);
        assert!(strict.finding.contains("only 2 of 8"), "{strict}");
        assert!(line(&strict).contains("LimitMEMLOCK=infinity"), "{strict}");
        let auto = judge_memlock(IoDriver::Auto, tiny, false, &short);
        assert_eq!(auto.level, Level::Warn);
        assert!(auto.finding.contains("fall back to epoll"), "{auto}");

        let none = rings(0, 8, Some(libc::ENOMEM));
        assert_eq!(
            judge_memlock(IoDriver::Uring, tiny, false, &none).level,
            Level::Fail
        );
        // No ring at all for another reason: the io_uring line explains it.
        let blocked = rings(0, 8, Some(libc::EPERM));
        assert_eq!(
            judge_memlock(IoDriver::Uring, tiny, false, &blocked).level,
            Level::Ok
        );
        assert_eq!(
            judge_memlock(IoDriver::Epoll, tiny, false, &short).level,
            Level::Ok
        );
    }

    #[test]
    fn memlock_exempt_root_warns_when_the_service_user_would_not_fit() {
        let all = rings(8, 8, None);
        let tiny = limit(64 * 1024, 64 * 1024);
        let root = judge_memlock(IoDriver::Auto, tiny, true, &all);
        assert_eq!(root.level, Level::Warn);
        assert!(root.finding.contains("CAP_IPC_LOCK"), "{root}");
        assert!(root.finding.contains("832 KiB"), "8 × 104 KiB: {root}");
        let enough = limit(8 << 20, 8 << 20);
        assert_eq!(
            judge_memlock(IoDriver::Auto, enough, true, &all).level,
            Level::Ok
        );
        let unlimited = Limit {
            soft: LimitValue::Unlimited,
            hard: LimitValue::Unlimited,
        };
        assert_eq!(
            judge_memlock(IoDriver::Auto, unlimited, true, &all).level,
            Level::Ok
        );
    }

    #[test]
    fn nofile_formula_is_two_per_connection_plus_per_worker_and_process_overhead() {
        assert_eq!(nofile_needed(1, 0), 72 + 64);
        assert_eq!(nofile_needed(4, 10_000), 20_000 + 4 * 72 + 64);
    }

    #[test]
    fn nofile_below_need_fails_with_the_right_fix() {
        let needed = nofile_needed(2, 10_000);
        let ok = judge_nofile(limit(1 << 20, 1 << 20), needed, 10_000, Some(1 << 20), None);
        assert_eq!(ok.level, Level::Ok);

        let soft_only = judge_nofile(limit(1024, 524_288), needed, 10_000, Some(1 << 20), None);
        assert_eq!(soft_only.level, Level::Fail);
        assert!(soft_only.finding.contains("EMFILE"), "{soft_only}");
        assert!(
            line(&soft_only).contains("LimitNOFILE=65536"),
            "{soft_only}"
        );
        assert!(line(&soft_only).contains("ulimit -n"), "{soft_only}");

        let hard_too = judge_nofile(limit(1024, 4096), needed, 10_000, Some(1 << 20), None);
        assert!(line(&hard_too).contains("limits.conf"), "{hard_too}");

        let capped = judge_nofile(limit(1024, 4096), 2_000_000, 1_000_000, Some(1 << 20), None);
        assert!(line(&capped).contains("fs.nr_open="), "{capped}");

        let system = judge_nofile(limit(1 << 20, 1 << 20), needed, 10_000, None, Some(8192));
        assert_eq!(system.level, Level::Fail);
        assert!(line(&system).contains("fs.file-max="), "{system}");

        let unlimited = Limit {
            soft: LimitValue::Unlimited,
            hard: LimitValue::Unlimited,
        };
        assert_eq!(
            judge_nofile(unlimited, needed, 10_000, None, None).level,
            Level::Ok
        );
    }

    // --- judging: network, CPUs, disk

    #[test]
    fn somaxconn_and_syn_backlog_below_4096_warn() {
        assert_eq!(judge_somaxconn(Some(4096)).level, Level::Ok);
        let low = judge_somaxconn(Some(128));
        assert_eq!(low.level, Level::Warn);
        assert!(line(&low).contains("sysctl -w net.core.somaxconn=4096"));
        assert_eq!(judge_somaxconn(None).level, Level::Warn);
        assert_eq!(judge_syn_backlog(Some(8192)).level, Level::Ok);
        assert_eq!(judge_syn_backlog(Some(512)).level, Level::Warn);
    }

    #[test]
    fn port_range_smaller_than_connections_warns() {
        assert_eq!(
            judge_port_range(Some((1024, 65535)), 10_000).level,
            Level::Ok
        );
        let narrow = judge_port_range(Some((60000, 60999)), 10_000);
        assert_eq!(narrow.level, Level::Warn);
        assert!(narrow.finding.contains("1000 ports"), "{narrow}");
        assert_eq!(judge_port_range(None, 1).level, Level::Warn);
    }

    #[test]
    fn more_workers_than_cpus_or_quota_warns() {
        assert_eq!(judge_cpus(2, 4, 4).level, Level::Ok);
        assert!(judge_cpus(2, 4, 4).finding.contains("2 left"));
        let over = judge_cpus(8, 2, 2);
        assert_eq!(over.level, Level::Warn);
        assert!(line(&over).contains("--workers 2"));
        let quota = judge_cpus(4, 8, 2);
        assert_eq!(quota.level, Level::Warn);
        assert!(quota.finding.contains("cpu.max"), "{quota}");
        assert_eq!(judge_cpus(1, 0, 0).level, Level::Warn);
    }

    #[test]
    fn data_dir_that_is_a_file_fails_and_a_missing_one_is_created() {
        let p = Path::new("/var/lib/shardgate");
        assert_eq!(judge_data_dir(p, true, true, p).level, Level::Ok);
        assert_eq!(judge_data_dir(p, true, false, p).level, Level::Fail);
        let missing = judge_data_dir(p, false, false, Path::new("/var/lib"));
        assert_eq!(missing.level, Level::Ok);
        assert!(missing.finding.contains("creates it"), "{missing}");
    }

    fn fs(kind: FsKind, read_only: bool) -> FsInfo {
        FsInfo {
            kind,
            mount_point: Some("/".into()),
            source: Some("/dev/vda".into()),
            read_only,
        }
    }

    #[test]
    fn memory_overlay_and_network_filesystems_warn_read_only_fails() {
        assert_eq!(
            judge_filesystem(Some(&fs(FsKind::Durable("ext4".into()), false))).level,
            Level::Ok
        );
        let tmp = judge_filesystem(Some(&fs(FsKind::Memory("tmpfs".into()), false)));
        assert_eq!(tmp.level, Level::Warn);
        assert!(tmp.finding.contains("lost at reboot"), "{tmp}");
        let overlay = judge_filesystem(Some(&fs(FsKind::Overlay, false)));
        assert_eq!(overlay.level, Level::Warn);
        assert!(line(&overlay).contains("volume"), "{overlay}");
        assert_eq!(
            judge_filesystem(Some(&fs(FsKind::Network("nfs4".into()), false))).level,
            Level::Warn
        );
        assert_eq!(
            judge_filesystem(Some(&fs(FsKind::Fuse("fuse.sshfs".into()), false))).level,
            Level::Warn
        );
        assert_eq!(
            judge_filesystem(Some(&fs(FsKind::Durable("xfs".into()), true))).level,
            Level::Fail
        );
        assert_eq!(judge_filesystem(None).level, Level::Warn);
    }

    #[test]
    fn disk_space_thresholds() {
        let gib = 1024 * 1024 * 1024;
        let space = |available, total| judge_disk_space(Some(DiskSpace { available, total }));
        assert_eq!(space(50 * gib, 100 * gib).level, Level::Ok);
        assert_eq!(space(gib / 2, 100 * gib).level, Level::Warn);
        assert_eq!(space(2 * gib, 100 * gib).level, Level::Warn, "under 5 %");
        assert_eq!(space(10 * 1024 * 1024, 100 * gib).level, Level::Fail);
        assert_eq!(judge_disk_space(None).level, Level::Warn);
    }

    #[test]
    fn unreadable_limits_warn_for_memlock_and_nofile() {
        let [memlock, nofile] = judge_unknown_limits(None);
        assert_eq!((memlock.check, memlock.level), ("memlock", Level::Warn));
        assert_eq!((nofile.check, nofile.level), ("nofile", Level::Warn));
        let garbled = ParseError("no \"Max open files\" row".into());
        let [memlock, _] = judge_unknown_limits(Some(&garbled));
        assert!(memlock.finding.contains("cannot parse"), "{memlock}");
    }

    #[test]
    fn certificates_expiring_within_14_days_are_listed() {
        let now = time::OffsetDateTime::now_utc();
        let cert = |name: &str, days: i64| CertExpiry {
            name: name.into(),
            not_after: now + time::Duration::days(days),
        };
        assert_eq!(judge_certificates(&[], now).level, Level::Ok);
        let fine = judge_certificates(&[cert("a", 90), cert("b", 30)], now);
        assert_eq!(fine.level, Level::Ok, "{fine}");
        let soon = judge_certificates(&[cert("a", 90), cert("soon", 3), cert("gone", -1)], now);
        assert_eq!(soon.level, Level::Warn);
        let line = soon.to_string();
        assert!(line.contains("\"soon\" expires"), "{line}");
        assert!(line.contains("\"gone\" expired"), "{line}");
        assert!(!line.contains("\"a\""), "{line}");
    }

    #[test]
    fn the_development_certificate_is_only_fine_for_localhost() {
        assert_eq!(
            judge_dev_certificate(true, "localhost", false).level,
            Level::Ok
        );
        assert_eq!(
            judge_dev_certificate(true, "example.com", false).level,
            Level::Warn
        );
        assert_eq!(
            judge_dev_certificate(true, "example.com", true).level,
            Level::Ok
        );
        assert_eq!(
            judge_dev_certificate(false, "example.com", false).level,
            Level::Ok
        );
    }

    #[test]
    fn a_data_dir_without_any_existing_ancestor_fails() {
        let f = judge_no_existing_ancestor(Path::new("/nowhere/data"));
        assert_eq!(f.level, Level::Fail);
        assert!(line(&f).contains("absolute --data-dir"), "{f}");
    }
}
