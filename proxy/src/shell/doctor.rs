//! `shardgate doctor`: checks this host against what `shardgate run` will need and prints
//! one line per check, with the fix for anything that is not right:
//!
//! ```text
//! ok    io_uring: usable (kernel 6.8.0): all 17 opcodes monoio uses; features: nodrop ext_arg …
//! warn  somaxconn: net.core.somaxconn = 128 caps the listen backlog of 4096 … — fix: sysctl -w …
//! fail  nofile: soft limit 1024 < 20 704 needed … — fix: LimitNOFILE=… in shardgate.service
//! ```
//!
//! `fail` means something breaks at load (or at start-up) and makes the exit code 1;
//! `warn` works but costs performance, durability or headroom; exit code 0 otherwise.
//!
//! Shape of the code: [`checks`] is the only part that touches the host. It reads each
//! input (`/proc` files, an io_uring ring probe, statvfs) and hands it, unparsed, to a pure
//! `parse_*` function and then to a pure `judge_*` function that returns a [`Finding`]. The
//! tests feed those functions every input shape they can meet, including the failures that
//! cannot be produced on a test machine (io_uring disabled by sysctl, a seccomp filter
//! answering EPERM, a locked-memory limit too small for the workers' rings).

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use crate::shell::cli::{IoDriver, MAX_WORKERS, default_workers};

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
/// Entries of each worker's io_uring (monoio's default): doctor probes with rings of this
/// size so that a probe costs what a worker's ring costs.
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

/// Flags of `shardgate doctor`. Pass the values you give (or will give) `shardgate run`;
/// the same environment variables apply.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// Workers `shardgate run` will start. Default: the CPUs available to this process.
    #[arg(long, env = "SHARDGATE_WORKERS", value_name = "N", default_value_t = default_workers(), value_parser = parse_workers)]
    pub workers: usize,

    /// Data directory `shardgate run` will use (need not exist yet).
    #[arg(
        long,
        env = "SHARDGATE_DATA_DIR",
        value_name = "DIR",
        default_value = "./data"
    )]
    pub data_dir: PathBuf,

    /// Peak concurrent client connections you expect, all workers together. Sizes the
    /// file-descriptor and ephemeral-port checks. Default 10000 (the classic C10k).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub expected_connections: u64,

    /// The `--io-driver` `shardgate run` will use: decides whether io_uring problems are
    /// fatal (`uring`), a fallback to epoll (`auto`), or irrelevant (`epoll`).
    #[arg(long, env = "SHARDGATE_IO_DRIVER", value_enum, value_name = "DRIVER", default_value_t = IoDriver::Auto)]
    pub io_driver: IoDriver,
}

fn parse_workers(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_WORKERS).contains(&n) => Ok(n),
        _ => Err(format!("must be a number between 1 and {MAX_WORKERS}")),
    }
}

// ---------------------------------------------------------------------------------------
// Findings

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    /// Works, at a cost (performance, durability, headroom).
    Warn,
    /// Breaks at start-up or at load.
    Fail,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so that `{:<4}` aligns the columns.
        f.pad(match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "fail",
        })
    }
}

/// One checked fact about the host. A `warn` or `fail` always carries its fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub check: &'static str,
    pub finding: String,
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: &'static str, finding: impl Into<String>) -> Finding {
        Finding {
            level: Level::Ok,
            check,
            finding: finding.into(),
            fix: None,
        }
    }

    fn warn(check: &'static str, finding: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            level: Level::Warn,
            check,
            finding: finding.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(check: &'static str, finding: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            level: Level::Fail,
            check,
            finding: finding.into(),
            fix: Some(fix.into()),
        }
    }

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

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<4}  {}: {}", self.level, self.check, self.finding)?;
        if let Some(fix) = &self.fix {
            write!(f, " — fix: {fix}")?;
        }
        Ok(())
    }
}

/// 1 when any finding is `fail`, else 0.
pub fn exit_code(findings: &[Finding]) -> u8 {
    u8::from(findings.iter().any(|f| f.level == Level::Fail))
}

/// Runs `shardgate doctor`: prints every finding on stdout.
pub fn main(args: &DoctorArgs) -> ExitCode {
    use std::io::Write;
    let findings = checks(args);
    let mut stdout = std::io::stdout().lock();
    for finding in &findings {
        if writeln!(stdout, "{finding}").is_err() {
            break;
        }
    }
    let _ = stdout.flush();
    ExitCode::from(exit_code(&findings))
}

// ---------------------------------------------------------------------------------------
// The only part that touches the host

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn read_sysctl(path: &str) -> Option<u64> {
    read(path).and_then(|text| parse_sysctl_value(&text).ok())
}

/// Reads every input and judges it.
pub fn checks(args: &DoctorArgs) -> Vec<Finding> {
    let kernel = read("/proc/sys/kernel/osrelease");
    let status = read("/proc/self/status");
    let disabled = read("/proc/sys/kernel/io_uring_disabled")
        .map(|text| parse_io_uring_disabled(&text).map_err(|e| e.to_string()));
    let group = read("/proc/sys/kernel/io_uring_group").and_then(|t| t.trim().parse::<i64>().ok());
    let seccomp = status.as_deref().and_then(parse_seccomp_mode);
    let ipc_lock = status
        .as_deref()
        .and_then(parse_effective_caps)
        .is_some_and(|caps| caps & CAP_IPC_LOCK != 0);
    let forced_legacy =
        force_legacy_driver(std::env::var("MONOIO_FORCE_LEGACY_DRIVER").ok().as_deref());
    let (probe, rings) = probe_rings(args.io_driver, args.workers);
    let uring = UringInputs {
        requested: args.io_driver,
        kernel: kernel.as_deref().map(str::trim),
        disabled,
        group,
        seccomp,
        forced_legacy,
        probe: &probe,
    };
    let mut findings = vec![judge_io_uring(&uring)];

    let limits = read("/proc/self/limits").map(|t| parse_limits(&t));
    match limits {
        Some(Ok(limits)) => {
            findings.push(judge_memlock(
                args.io_driver,
                limits.memlock,
                ipc_lock,
                &rings,
            ));
            findings.push(judge_nofile(
                limits.nofile,
                nofile_needed(args.workers, args.expected_connections),
                args.expected_connections,
                read_sysctl("/proc/sys/fs/nr_open"),
                read_sysctl("/proc/sys/fs/file-max"),
            ));
        }
        other => {
            let why = match other {
                Some(Err(e)) => format!("cannot parse /proc/self/limits: {e}"),
                _ => "cannot read /proc/self/limits".to_owned(),
            };
            for check in ["memlock", "nofile"] {
                findings.push(Finding::warn(
                    check,
                    why.clone(),
                    "check `ulimit -l` and `ulimit -n` by hand",
                ));
            }
        }
    }

    findings.push(judge_somaxconn(read_sysctl("/proc/sys/net/core/somaxconn")));
    findings.push(judge_syn_backlog(read_sysctl(
        "/proc/sys/net/ipv4/tcp_max_syn_backlog",
    )));
    findings.push(judge_port_range(
        read("/proc/sys/net/ipv4/ip_local_port_range").and_then(|t| parse_port_range(&t).ok()),
        args.expected_connections,
    ));
    findings.push(judge_cpus(
        args.workers,
        crate::worker::allowed_cpus().len(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    ));
    findings.extend(data_dir_checks(&args.data_dir));
    findings
}

/// Opens a ring the size monoio's are, asks the kernel which opcodes it supports, then
/// holds open as many more as there will be workers (one ring each), to see whether they
/// fit the locked-memory limit together. `Err` carries the errno of `io_uring_setup`.
fn probe_rings(requested: IoDriver, workers: usize) -> (Result<RingProbe, i32>, RingCount) {
    let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(0);
    let wanted = if requested == IoDriver::Epoll {
        1
    } else {
        workers
    };
    let first = match io_uring::IoUring::new(RING_ENTRIES) {
        Ok(ring) => ring,
        Err(e) => {
            let error = errno(e);
            let count = RingCount {
                opened: 0,
                wanted,
                error: Some(error),
            };
            return (Err(error), count);
        }
    };
    let probe = describe_ring(&first);
    let mut rings = vec![first];
    let mut error = None;
    while rings.len() < wanted {
        match io_uring::IoUring::new(RING_ENTRIES) {
            Ok(ring) => rings.push(ring),
            Err(e) => {
                error = Some(errno(e));
                break;
            }
        }
    }
    let count = RingCount {
        opened: rings.len(),
        wanted,
        error,
    };
    (Ok(probe), count)
}

fn describe_ring(ring: &io_uring::IoUring) -> RingProbe {
    let params = ring.params();
    let features = [
        ("single_mmap", params.is_feature_single_mmap()),
        ("nodrop", params.is_feature_nodrop()),
        ("submit_stable", params.is_feature_submit_stable()),
        ("fast_poll", params.is_feature_fast_poll()),
        ("ext_arg", params.is_feature_ext_arg()),
        ("native_workers", params.is_feature_native_workers()),
        (
            "skip_cqe_on_success",
            params.is_feature_skip_cqe_on_success(),
        ),
        ("linked_file", params.is_feature_linked_file()),
    ]
    .into_iter()
    .filter_map(|(name, has)| has.then_some(name))
    .collect();
    let mut probe = io_uring::Probe::new();
    let missing_ops = match ring.submitter().register_probe(&mut probe) {
        Ok(()) => Ok(MONOIO_OPCODES
            .iter()
            .filter(|(code, _)| !probe.is_supported(*code))
            .map(|(_, name)| *name)
            .collect()),
        Err(e) => Err(e.raw_os_error().unwrap_or(0)),
    };
    RingProbe {
        features,
        missing_ops,
    }
}

/// The opcodes `monoio::utils::detect_uring` requires (monoio 0.2, without `splice`).
const MONOIO_OPCODES: &[(u8, &str)] = {
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

fn data_dir_checks(data_dir: &Path) -> Vec<Finding> {
    let joined = match std::env::current_dir() {
        Ok(cwd) => cwd.join(data_dir),
        Err(_) => data_dir.to_path_buf(),
    };
    // `./data` reads better as `/srv/data` than `/srv/./data`.
    let absolute: PathBuf = joined
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect();
    let Some(existing) = nearest_existing(&absolute) else {
        return vec![Finding::fail(
            "data_dir",
            format!("no ancestor of {} exists", absolute.display()),
            "pass an absolute --data-dir on a mounted filesystem",
        )];
    };
    let existing = existing.canonicalize().unwrap_or(existing);
    let meta = std::fs::metadata(&existing).ok();
    let exists = existing == absolute || absolute.canonicalize().ok().as_ref() == Some(&existing);
    let mut findings = vec![judge_data_dir(
        &absolute,
        exists,
        meta.map(|m| m.is_dir()).unwrap_or(false),
        &existing,
    )];

    let vfs = rustix::fs::statvfs(&existing).ok();
    let read_only = vfs
        .as_ref()
        .is_some_and(|v| v.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY));
    let mounts = read("/proc/self/mountinfo").map(|t| parse_mountinfo(&t));
    let fs = match mounts
        .as_deref()
        .and_then(|m| mount_containing(m, &existing))
    {
        Some(mount) => Some(FsInfo {
            kind: fs_kind(&mount.fs_type),
            mount_point: Some(mount.mount_point.clone()),
            source: Some(mount.source.clone()),
            read_only: read_only || mount.read_only,
        }),
        // No mountinfo (unusual /proc): fall back to the filesystem's magic number.
        None => rustix::fs::statfs(&existing).ok().map(|st| FsInfo {
            kind: fs_kind_from_magic(st.f_type as u64),
            mount_point: None,
            source: None,
            read_only,
        }),
    };
    findings.push(judge_filesystem(fs.as_ref()));
    findings.push(judge_disk_space(vfs.map(|v| DiskSpace {
        available: v.f_bavail.saturating_mul(v.f_frsize),
        total: v.f_blocks.saturating_mul(v.f_frsize),
    })));
    findings
}

fn nearest_existing(path: &Path) -> Option<PathBuf> {
    path.ancestors().find(|p| p.exists()).map(Path::to_path_buf)
}

// ---------------------------------------------------------------------------------------
// Parsing: pure functions over the text of each input

/// An input that did not have the expected shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

/// `/proc/sys/kernel/io_uring_disabled` (Linux ≥ 6.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoUringDisabled {
    /// 0: every process may create rings.
    Enabled,
    /// 1: only processes in group `kernel.io_uring_group` or with CAP_SYS_ADMIN.
    GroupOnly,
    /// 2: no process may create rings.
    Disabled,
}

/// Parses `/proc/sys/kernel/io_uring_disabled`: `0`, `1` or `2` and a newline.
pub fn parse_io_uring_disabled(text: &str) -> Result<IoUringDisabled, ParseError> {
    match text.trim() {
        "0" => Ok(IoUringDisabled::Enabled),
        "1" => Ok(IoUringDisabled::GroupOnly),
        "2" => Ok(IoUringDisabled::Disabled),
        other => Err(ParseError(format!(
            "io_uring_disabled is {other:?}, expected 0, 1 or 2"
        ))),
    }
}

/// Parses a single-number sysctl such as `/proc/sys/net/core/somaxconn` (`4096\n`).
pub fn parse_sysctl_value(text: &str) -> Result<u64, ParseError> {
    let text = text.trim();
    text.parse()
        .map_err(|_| ParseError(format!("{text:?} is not a non-negative integer")))
}

/// Parses `/proc/sys/net/ipv4/ip_local_port_range` (`32768\t60999\n`) into (low, high).
pub fn parse_port_range(text: &str) -> Result<(u16, u16), ParseError> {
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(low)), Some(Ok(high)), None) if low <= high => Ok((low, high)),
        _ => Err(ParseError(format!(
            "{:?} is not a port range `LOW HIGH`",
            text.trim()
        ))),
    }
}

/// CAP_IPC_LOCK's bit in a capability mask: its holder is exempt from RLIMIT_MEMLOCK.
pub const CAP_IPC_LOCK: u64 = 1 << 14;

/// The `CapEff:` field of `/proc/self/status`: the effective capabilities, in hex.
pub fn parse_effective_caps(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|value| u64::from_str_radix(value.trim(), 16).ok())
}

/// The `Seccomp:` field of `/proc/self/status`: 0 none, 1 strict, 2 filter.
pub fn parse_seccomp_mode(status: &str) -> Option<u8> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Seccomp:"))
        .and_then(|value| value.trim().parse().ok())
}

/// Whether monoio's `MONOIO_FORCE_LEGACY_DRIVER` forces epoll (it accepts 1, true, yes).
pub fn force_legacy_driver(value: Option<&str>) -> bool {
    value.is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
}

/// One resource limit value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LimitValue {
    Finite(u64),
    Unlimited,
}

impl LimitValue {
    fn at_least(self, needed: u64) -> bool {
        match self {
            LimitValue::Finite(v) => v >= needed,
            LimitValue::Unlimited => true,
        }
    }

    fn describe(self, unit: fn(u64) -> String) -> String {
        match self {
            LimitValue::Finite(v) => unit(v),
            LimitValue::Unlimited => "unlimited".to_owned(),
        }
    }
}

/// Soft and hard value of one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub soft: LimitValue,
    pub hard: LimitValue,
}

/// The limits of `/proc/self/limits` doctor cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcLimits {
    /// RLIMIT_NOFILE, in descriptors.
    pub nofile: Limit,
    /// RLIMIT_MEMLOCK, in bytes.
    pub memlock: Limit,
}

/// Parses `/proc/self/limits`: a header, then `Name  Soft  Hard  [Units]` rows whose name
/// has spaces (`Max open files            1024   524288   files`).
pub fn parse_limits(text: &str) -> Result<ProcLimits, ParseError> {
    let find = |name: &str| -> Result<Limit, ParseError> {
        let row = text
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .ok_or_else(|| ParseError(format!("no {name:?} row")))?;
        let mut values = row.split_whitespace().map(|v| match v {
            "unlimited" => Ok(LimitValue::Unlimited),
            number => number
                .parse()
                .map(LimitValue::Finite)
                .map_err(|_| ParseError(format!("{name:?}: {number:?} is not a limit"))),
        });
        match (values.next(), values.next()) {
            (Some(soft), Some(hard)) => Ok(Limit {
                soft: soft?,
                hard: hard?,
            }),
            _ => Err(ParseError(format!("{name:?}: no soft and hard values"))),
        }
    };
    Ok(ProcLimits {
        nofile: find("Max open files")?,
        memlock: find("Max locked memory")?,
    })
}

/// One row of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
    /// `ro` in the per-mount or the superblock options.
    pub read_only: bool,
}

/// Parses `/proc/self/mountinfo` (proc(5)): `id parent maj:min root mount-point options
/// [optional fields…] - fstype source super-options`. Rows that do not have that shape
/// are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mut left = before.split(' ');
            let mount_point = left.nth(4)?;
            let options = left.next()?;
            let mut right = after.split(' ');
            let fs_type = right.next()?;
            let source = right.next()?;
            let super_options = right.next().unwrap_or("");
            let ro = |opts: &str| opts.split(',').any(|o| o == "ro");
            Some(MountEntry {
                mount_point: PathBuf::from(unescape_mount_field(mount_point)),
                fs_type: fs_type.to_owned(),
                source: unescape_mount_field(source),
                read_only: ro(options) || ro(super_options),
            })
        })
        .collect()
}

/// The kernel writes space, tab, newline and backslash in mount fields as `\ooo` octal.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            digits.iter().all(|d| (b'0'..=b'7').contains(d)).then(|| {
                digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'))
            })
        });
        match (bytes[i], octal.and_then(|v| u8::try_from(v).ok())) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount `path` lives on: the longest mount point that is a path prefix of it (the
/// last one listed when several are stacked on the same point).
pub fn mount_containing<'a>(mounts: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    mounts
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| {
            m.mount_point
                .components()
                .filter(|c| *c != Component::RootDir)
                .count()
        })
        .and_then(|best| {
            // Stacked mounts on the same point: the last one shadows the rest.
            mounts
                .iter()
                .rev()
                .find(|m| m.mount_point == best.mount_point)
        })
}

/// What a filesystem means for the durability of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsKind {
    /// A local disk filesystem: fsync reaches the device.
    Durable(String),
    /// tmpfs/ramfs: fsync is a no-op and everything is gone at reboot.
    Memory(String),
    /// overlayfs: a container's writable layer, gone with the container.
    Overlay,
    /// NFS, CIFS/SMB, 9p, Ceph…: fsync semantics depend on the server and mount options.
    Network(String),
    /// FUSE: fsync does whatever the userspace daemon does.
    Fuse(String),
    /// Anything else, by name.
    Other(String),
}

/// Classifies a filesystem by its mountinfo type name (`ext4`, `tmpfs`, `fuse.sshfs`…).
pub fn fs_kind(name: &str) -> FsKind {
    match name {
        "ext2" | "ext3" | "ext4" | "xfs" | "btrfs" | "zfs" | "f2fs" | "bcachefs" | "jfs"
        | "reiserfs" => FsKind::Durable(name.to_owned()),
        "tmpfs" | "ramfs" => FsKind::Memory(name.to_owned()),
        "overlay" | "overlayfs" => FsKind::Overlay,
        "nfs" | "nfs4" | "cifs" | "smb3" | "9p" | "ceph" | "glusterfs" | "lustre" | "afs" => {
            FsKind::Network(name.to_owned())
        }
        fuse if fuse == "fuse" || fuse.starts_with("fuse.") || fuse == "fuseblk" => {
            FsKind::Fuse(name.to_owned())
        }
        other => FsKind::Other(other.to_owned()),
    }
}

/// Classifies a filesystem by `statfs(2)`'s `f_type` magic number (linux/magic.h), for
/// when mountinfo is unavailable.
pub fn fs_kind_from_magic(magic: u64) -> FsKind {
    match magic {
        0xEF53 => FsKind::Durable("ext2/3/4".into()),
        0x5846_5342 => FsKind::Durable("xfs".into()),
        0x9123_683E => FsKind::Durable("btrfs".into()),
        0x2FC1_2FC1 => FsKind::Durable("zfs".into()),
        0xF2F5_2010 => FsKind::Durable("f2fs".into()),
        0x0102_1994 => FsKind::Memory("tmpfs".into()),
        0x8584_58F6 => FsKind::Memory("ramfs".into()),
        0x794C_7630 => FsKind::Overlay,
        0x6969 => FsKind::Network("nfs".into()),
        0xFF53_4D42 => FsKind::Network("cifs".into()),
        0xFE53_4D42 => FsKind::Network("smb2".into()),
        0x0102_1997 => FsKind::Network("9p".into()),
        0x00C3_6400 => FsKind::Network("ceph".into()),
        0x6573_5546 => FsKind::Fuse("fuse".into()),
        other => FsKind::Other(format!("magic {other:#x}")),
    }
}

// ---------------------------------------------------------------------------------------
// Judging: pure functions from parsed inputs to findings

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

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str = "\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max open files            1024                 524288               files     
Max locked memory         8388608              unlimited            bytes     
Max address space         unlimited            unlimited            bytes     
";

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

    // --- parsing

    #[test]
    fn io_uring_disabled_parses_each_documented_value() {
        assert_eq!(parse_io_uring_disabled("0\n"), Ok(IoUringDisabled::Enabled));
        assert_eq!(
            parse_io_uring_disabled("1\n"),
            Ok(IoUringDisabled::GroupOnly)
        );
        assert_eq!(
            parse_io_uring_disabled("2\n"),
            Ok(IoUringDisabled::Disabled)
        );
        assert!(parse_io_uring_disabled("3\n").is_err());
        assert!(parse_io_uring_disabled("").is_err());
    }

    #[test]
    fn sysctl_values_parse_with_or_without_newline() {
        assert_eq!(parse_sysctl_value("4096\n"), Ok(4096));
        assert_eq!(parse_sysctl_value("  1048576"), Ok(1_048_576));
        assert!(parse_sysctl_value("-1\n").is_err());
        assert!(parse_sysctl_value("4096 8192\n").is_err());
        assert!(parse_sysctl_value("").is_err());
    }

    #[test]
    fn port_range_parses_tab_separated_pair() {
        assert_eq!(parse_port_range("32768\t60999\n"), Ok((32768, 60999)));
        assert_eq!(parse_port_range("1024 65535"), Ok((1024, 65535)));
        assert!(parse_port_range("60999\t32768\n").is_err());
        assert!(parse_port_range("32768\n").is_err());
        assert!(parse_port_range("1 2 3").is_err());
        assert!(parse_port_range("1024 70000").is_err());
    }

    #[test]
    fn effective_caps_come_from_the_status_file() {
        let root = "CapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffffff\n";
        let caps = parse_effective_caps(root);
        assert_eq!(caps, Some(0x1ff_feff_ffff));
        assert!(caps.is_some_and(|c| c & CAP_IPC_LOCK != 0));
        let user = parse_effective_caps("CapEff:\t0000000000000000\n");
        assert_eq!(user, Some(0));
        assert_eq!(parse_effective_caps("Name:\tx\n"), None);
        assert_eq!(parse_effective_caps("CapEff:\tzz\n"), None);
    }

    #[test]
    fn seccomp_mode_comes_from_the_status_file() {
        let status = "Name:\tshardgate\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n";
        assert_eq!(parse_seccomp_mode(status), Some(2));
        assert_eq!(parse_seccomp_mode("Seccomp:\t0\n"), Some(0));
        assert_eq!(parse_seccomp_mode("Name:\tx\n"), None);
    }

    #[test]
    fn force_legacy_accepts_what_monoio_accepts() {
        for on in ["1", "true", "YES", "True"] {
            assert!(force_legacy_driver(Some(on)), "{on}");
        }
        for off in ["0", "false", "", "no"] {
            assert!(!force_legacy_driver(Some(off)), "{off}");
        }
        assert!(!force_legacy_driver(None));
    }

    #[test]
    fn limits_parse_soft_and_hard_including_unlimited() {
        let limits = parse_limits(LIMITS).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            limits.nofile,
            Limit {
                soft: LimitValue::Finite(1024),
                hard: LimitValue::Finite(524_288)
            }
        );
        assert_eq!(
            limits.memlock,
            Limit {
                soft: LimitValue::Finite(8_388_608),
                hard: LimitValue::Unlimited
            }
        );
    }

    #[test]
    fn limits_without_a_needed_row_or_with_garbage_are_refused() {
        assert!(parse_limits("Limit Soft Hard Units\nMax open files 1024 4096 files\n").is_err());
        let garbage = LIMITS.replace("1024 ", "lots ");
        assert!(parse_limits(&garbage).is_err());
        assert!(parse_limits("Max open files\nMax locked memory 1 1 bytes\n").is_err());
    }

    const MOUNTINFO: &str = "\
22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
25 22 0:22 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw,size=1600000k,mode=755
30 22 0:25 / /var/lib/my\\040data rw,relatime - nfs4 server:/export rw,vers=4.2
31 22 0:26 / /srv ro,relatime shared:9 - xfs /dev/vdb rw
32 22 0:27 / /mnt rw - tmpfs tmpfs rw
33 22 0:28 / /mnt rw - ext4 /dev/vdc rw
malformed line without separator
";

    #[test]
    fn mountinfo_parses_type_source_escapes_and_read_only() {
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!(mounts.len(), 6);
        assert_eq!(mounts[0].mount_point, PathBuf::from("/"));
        assert_eq!(mounts[0].fs_type, "ext4");
        assert_eq!(mounts[0].source, "/dev/vda1");
        assert_eq!(mounts[2].mount_point, PathBuf::from("/var/lib/my data"));
        assert_eq!(mounts[2].fs_type, "nfs4");
        assert!(mounts[3].read_only, "per-mount ro");
        assert!(!mounts[1].read_only);
    }

    #[test]
    fn data_dir_resolves_to_the_longest_and_last_stacked_mount() {
        let mounts = parse_mountinfo(MOUNTINFO);
        let on = |p: &str| mount_containing(&mounts, Path::new(p)).map(|m| m.fs_type.clone());
        assert_eq!(on("/var/lib/shardgate").as_deref(), Some("ext4"));
        assert_eq!(on("/run/shardgate").as_deref(), Some("tmpfs"));
        assert_eq!(on("/var/lib/my data/x").as_deref(), Some("nfs4"));
        // Component-wise prefix: /running is not under /run.
        assert_eq!(on("/running").as_deref(), Some("ext4"));
        // /mnt has tmpfs under ext4: the later mount shadows the earlier one.
        assert_eq!(on("/mnt/data").as_deref(), Some("ext4"));
        assert_eq!(mount_containing(&[], Path::new("/x")), None);
    }

    #[test]
    fn filesystems_are_classified_by_name_and_by_magic() {
        assert_eq!(fs_kind("ext4"), FsKind::Durable("ext4".into()));
        assert_eq!(fs_kind("tmpfs"), FsKind::Memory("tmpfs".into()));
        assert_eq!(fs_kind("ramfs"), FsKind::Memory("ramfs".into()));
        assert_eq!(fs_kind("overlay"), FsKind::Overlay);
        assert_eq!(fs_kind("nfs4"), FsKind::Network("nfs4".into()));
        assert_eq!(fs_kind("fuse.sshfs"), FsKind::Fuse("fuse.sshfs".into()));
        assert_eq!(fs_kind("virtiofs"), FsKind::Other("virtiofs".into()));
        assert_eq!(
            fs_kind_from_magic(0xEF53),
            FsKind::Durable("ext2/3/4".into())
        );
        assert_eq!(
            fs_kind_from_magic(0x0102_1994),
            FsKind::Memory("tmpfs".into())
        );
        assert_eq!(
            fs_kind_from_magic(0x8584_58F6),
            FsKind::Memory("ramfs".into())
        );
        assert_eq!(fs_kind_from_magic(0x794C_7630), FsKind::Overlay);
        assert_eq!(fs_kind_from_magic(0x6969), FsKind::Network("nfs".into()));
        assert_eq!(
            fs_kind_from_magic(0x1234),
            FsKind::Other("magic 0x1234".into())
        );
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

    // --- output

    #[test]
    fn lines_have_level_check_finding_and_fix_for_non_ok() {
        let ok = Finding::ok("cpus", "2 workers on 2 allowed CPUs");
        assert_eq!(ok.to_string(), "ok    cpus: 2 workers on 2 allowed CPUs");
        let warn = Finding::warn("somaxconn", "128", "sysctl -w net.core.somaxconn=4096");
        assert_eq!(
            warn.to_string(),
            "warn  somaxconn: 128 — fix: sysctl -w net.core.somaxconn=4096"
        );
        let fail = Finding::fail("nofile", "too low", "LimitNOFILE=65536");
        assert!(fail.to_string().starts_with("fail  nofile: "));
    }

    #[test]
    fn exit_code_is_1_only_when_something_fails() {
        let ok = Finding::ok("a", "x");
        let warn = Finding::warn("b", "y", "z");
        let fail = Finding::fail("c", "y", "z");
        assert_eq!(exit_code(&[ok.clone(), warn.clone()]), 0);
        assert_eq!(exit_code(&[ok, warn, fail]), 1);
        assert_eq!(exit_code(&[]), 0);
    }

    #[test]
    fn workers_flag_is_range_checked() {
        assert_eq!(parse_workers("4"), Ok(4));
        assert!(parse_workers("0").is_err());
        assert!(parse_workers("1025").is_err());
        assert!(parse_workers("many").is_err());
    }
}
