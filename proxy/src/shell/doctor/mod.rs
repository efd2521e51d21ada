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
//! Shape of the code, in the order an input travels:
//! - [`probe`] is the only part that touches the host: it reads each input (`/proc` files,
//!   an io_uring ring probe, statvfs) and hands it back unparsed;
//! - [`parse`] turns that text into values, purely;
//! - [`judge`] decides, purely, and returns a [`Finding`] with its fix;
//! - this module runs the checks in order ([`checks`]), prints the report and sets the exit
//!   code.
//!
//! The tests feed `parse` and `judge` every input shape they can meet, including the
//! failures that cannot be produced on a test machine (io_uring disabled by sysctl, a
//! seccomp filter answering EPERM, a locked-memory limit too small for the workers' rings).

pub mod judge;
pub mod parse;
pub mod probe;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::shell::cli::{
    DEFAULT_DATA_DIR, DEFAULT_IO_DRIVER, IoDriver, MAX_WORKERS, default_workers,
};
use judge::{
    CertExpiry, FsInfo, UringInputs, judge_certificates, judge_cpus, judge_data_dir,
    judge_dev_certificate, judge_disk_space, judge_filesystem, judge_io_uring, judge_memlock,
    judge_no_existing_ancestor, judge_nofile, judge_port_range, judge_somaxconn, judge_syn_backlog,
    judge_unknown_limits, nofile_needed,
};
use parse::{
    CAP_IPC_LOCK, force_legacy_driver, fs_kind, fs_kind_from_magic, mount_containing,
    parse_effective_caps, parse_io_uring_disabled, parse_io_uring_group, parse_limits,
    parse_mountinfo, parse_port_range, parse_seccomp_mode, parse_sysctl_value,
};

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
        default_value = DEFAULT_DATA_DIR
    )]
    pub data_dir: PathBuf,

    /// Peak concurrent client connections you expect, all workers together. Sizes the
    /// file-descriptor and ephemeral-port checks. Default 10000 (the classic C10k).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub expected_connections: u64,

    /// The `--base-domain` `shardgate run` will use (for the development-certificate check).
    #[arg(
        long,
        env = "SHARDGATE_BASE_DOMAIN",
        value_name = "DOMAIN",
        default_value = "localhost"
    )]
    pub base_domain: String,

    /// The `--tls-listen` `shardgate run` will use (`off`: no certificate checks).
    #[arg(
        long,
        env = "SHARDGATE_TLS_LISTEN",
        value_name = "ADDR|off",
        default_value = "0.0.0.0:8443"
    )]
    pub tls_listen: String,

    /// The `--io-driver` `shardgate run` will use: decides whether io_uring problems are
    /// fatal (`uring`), a fallback to epoll (`auto`), or irrelevant (`epoll`).
    #[arg(long, env = "SHARDGATE_IO_DRIVER", value_enum, value_name = "DRIVER", default_value_t = DEFAULT_IO_DRIVER)]
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

/// Reads every input, parses it and judges it, in the order the report lists them.
pub fn checks(args: &DoctorArgs) -> Vec<Finding> {
    let kernel = probe::read("/proc/sys/kernel/osrelease");
    let status = probe::read("/proc/self/status");
    let disabled = probe::read("/proc/sys/kernel/io_uring_disabled")
        .map(|text| parse_io_uring_disabled(&text).map_err(|e| e.to_string()));
    let group =
        probe::read("/proc/sys/kernel/io_uring_group").and_then(|t| parse_io_uring_group(&t));
    let seccomp = status.as_deref().and_then(parse_seccomp_mode);
    let ipc_lock = status
        .as_deref()
        .and_then(parse_effective_caps)
        .is_some_and(|caps| caps & CAP_IPC_LOCK != 0);
    let forced_legacy = force_legacy_driver(probe::env("MONOIO_FORCE_LEGACY_DRIVER").as_deref());
    let (ring_probe, rings) = probe::probe_rings(args.io_driver, args.workers);
    let uring = UringInputs {
        requested: args.io_driver,
        kernel: kernel.as_deref().map(str::trim),
        disabled,
        group,
        seccomp,
        forced_legacy,
        probe: &ring_probe,
    };
    let mut findings = vec![judge_io_uring(&uring)];

    match probe::read("/proc/self/limits").map(|t| parse_limits(&t)) {
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
                sysctl("/proc/sys/fs/nr_open"),
                sysctl("/proc/sys/fs/file-max"),
            ));
        }
        Some(Err(e)) => findings.extend(judge_unknown_limits(Some(&e))),
        None => findings.extend(judge_unknown_limits(None)),
    }

    findings.push(judge_somaxconn(sysctl("/proc/sys/net/core/somaxconn")));
    findings.push(judge_syn_backlog(sysctl(
        "/proc/sys/net/ipv4/tcp_max_syn_backlog",
    )));
    findings.push(judge_port_range(
        probe::read("/proc/sys/net/ipv4/ip_local_port_range")
            .and_then(|t| parse_port_range(&t).ok()),
        args.expected_connections,
    ));
    findings.push(judge_cpus(
        args.workers,
        probe::allowed_cpus(),
        probe::parallelism(),
    ));
    findings.extend(data_dir_checks(&args.data_dir));
    findings.extend(certificate_checks(args));
    findings
}

/// A single-number sysctl, when it can be read and parsed.
fn sysctl(path: &str) -> Option<u64> {
    probe::read(path).and_then(|text| parse_sysctl_value(&text).ok())
}

/// The stored certificates' expiry, and whether the development certificate would serve a
/// real domain. Reads the data directory without taking its lock (a running gateway may
/// hold it).
fn certificate_checks(args: &DoctorArgs) -> Vec<Finding> {
    let tls_on = !args.tls_listen.trim().eq_ignore_ascii_case("off");
    let base_domain = args.base_domain.trim().to_ascii_lowercase();
    match shardgate_admin::devcert::stored_certificates(&args.data_dir) {
        Ok(stored) => {
            let wildcard = format!("*.{base_domain}");
            let covered = stored.iter().any(|c| c.sans.contains(&wildcard));
            let expiries: Vec<CertExpiry> = stored
                .into_iter()
                .map(|c| CertExpiry {
                    name: c.name,
                    not_after: c.not_after,
                })
                .collect();
            vec![
                judge_certificates(&expiries, time::OffsetDateTime::now_utc()),
                judge_dev_certificate(tls_on, &base_domain, covered),
            ]
        }
        Err(e) => vec![Finding::warn(
            "certificates",
            format!("cannot read the stored certificates: {e}"),
            "check the data directory (shardgate run reports what is wrong with it)",
        )],
    }
}

/// The data directory, its filesystem and its free space.
fn data_dir_checks(data_dir: &Path) -> Vec<Finding> {
    let place = probe::locate_data_dir(data_dir);
    let Some(existing) = &place.existing else {
        return vec![judge_no_existing_ancestor(&place.absolute)];
    };
    let mut findings = vec![judge_data_dir(
        &place.absolute,
        place.exists,
        place.is_dir,
        existing,
    )];

    let vfs = probe::statvfs(existing);
    let read_only = vfs.is_some_and(|v| v.read_only);
    let mounts = probe::read("/proc/self/mountinfo").map(|t| parse_mountinfo(&t));
    let fs = match mounts
        .as_deref()
        .and_then(|m| mount_containing(m, existing))
    {
        Some(mount) => Some(FsInfo {
            kind: fs_kind(&mount.fs_type),
            mount_point: Some(mount.mount_point.clone()),
            source: Some(mount.source.clone()),
            read_only: read_only || mount.read_only,
        }),
        // No mountinfo (unusual /proc): fall back to the filesystem's magic number.
        None => probe::statfs_magic(existing).map(|magic| FsInfo {
            kind: fs_kind_from_magic(magic),
            mount_point: None,
            source: None,
            read_only,
        }),
    };
    findings.push(judge_filesystem(fs.as_ref()));
    findings.push(judge_disk_space(vfs.map(|v| v.space)));
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

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
