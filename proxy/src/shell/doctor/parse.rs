//! Pure parsing of what [`super::probe`] read: the text of `/proc` files and sysctls,
//! into the values [`super::judge`] decides on. Nothing here touches the host, so the tests
//! can feed every shape an input takes, including ones no test machine produces.

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// An input that did not have the expected shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub(super) String);

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

/// Parses `/proc/sys/kernel/io_uring_group` (Linux ≥ 6.6): a group id, or -1 for none.
pub fn parse_io_uring_group(text: &str) -> Option<i64> {
    text.trim().parse().ok()
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
    pub(super) fn at_least(self, needed: u64) -> bool {
        match self {
            LimitValue::Finite(v) => v >= needed,
            LimitValue::Unlimited => true,
        }
    }

    pub(super) fn describe(self, unit: fn(u64) -> String) -> String {
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

    #[test]
    fn io_uring_group_is_a_gid_or_minus_one() {
        assert_eq!(parse_io_uring_group("990\n"), Some(990));
        assert_eq!(parse_io_uring_group("-1\n"), Some(-1));
        assert_eq!(parse_io_uring_group("wheel\n"), None);
    }
}
