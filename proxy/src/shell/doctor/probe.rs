//! The only part of doctor that touches the host: `/proc` files, environment variables,
//! io_uring rings, statvfs/statfs and the data directory's ancestors. Each function hands
//! back what it saw, unparsed and unjudged.

use std::path::{Component, Path, PathBuf};

use super::judge::{DiskSpace, MONOIO_OPCODES, RING_ENTRIES, RingCount, RingProbe};
use crate::shell::cli::IoDriver;

/// The text of a file (a `/proc` entry or a sysctl); `None` when it cannot be read.
pub fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// An environment variable of this process, when set and UTF-8.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// CPUs in this process's affinity mask (0: unknown).
pub fn allowed_cpus() -> usize {
    crate::worker::allowed_cpus().len()
}

/// The parallelism the process may use, which also reflects a cgroup CPU quota (0:
/// unknown).
pub fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// Opens a ring the size monoio's are, asks the kernel which opcodes it supports, then
/// holds open as many more as there will be workers (one ring each), to see whether they
/// fit the locked-memory limit together. `Err` carries the errno of `io_uring_setup`.
pub fn probe_rings(requested: IoDriver, workers: usize) -> (Result<RingProbe, i32>, RingCount) {
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

/// Where the data directory is, as far as the filesystem can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDirPlace {
    /// The directory as an absolute path, without `.` components.
    pub absolute: PathBuf,
    /// The nearest ancestor that exists (the directory itself when it exists),
    /// canonicalized; `None` when not even `/` does.
    pub existing: Option<PathBuf>,
    /// The directory itself exists.
    pub exists: bool,
    /// `existing` is a directory.
    pub is_dir: bool,
}

/// Resolves `data_dir` against the current directory and finds what of it exists.
pub fn locate_data_dir(data_dir: &Path) -> DataDirPlace {
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
        return DataDirPlace {
            absolute,
            existing: None,
            exists: false,
            is_dir: false,
        };
    };
    let existing = existing.canonicalize().unwrap_or(existing);
    let meta = std::fs::metadata(&existing).ok();
    let exists = existing == absolute || absolute.canonicalize().ok().as_ref() == Some(&existing);
    DataDirPlace {
        exists,
        is_dir: meta.map(|m| m.is_dir()).unwrap_or(false),
        existing: Some(existing),
        absolute,
    }
}

fn nearest_existing(path: &Path) -> Option<PathBuf> {
    path.ancestors().find(|p| p.exists()).map(Path::to_path_buf)
}

/// What statvfs(2) says about the filesystem holding `path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statvfs {
    pub read_only: bool,
    pub space: DiskSpace,
}

pub fn statvfs(path: &Path) -> Option<Statvfs> {
    let vfs = rustix::fs::statvfs(path).ok()?;
    Some(Statvfs {
        read_only: vfs.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY),
        space: DiskSpace {
            available: vfs.f_bavail.saturating_mul(vfs.f_frsize),
            total: vfs.f_blocks.saturating_mul(vfs.f_frsize),
        },
    })
}

/// statfs(2)'s `f_type` magic number of the filesystem holding `path`.
pub fn statfs_magic(path: &Path) -> Option<u64> {
    rustix::fs::statfs(path).ok().map(|st| st.f_type as u64)
}
