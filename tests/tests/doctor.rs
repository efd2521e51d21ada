//! `shardgate doctor` as an operator runs it: one `ok|warn|fail  <check>: <finding>` line
//! per check on stdout, a fix on every line that is not `ok`, and exit code 1 exactly when
//! a line says `fail`. The host decides most verdicts, so these tests assert the contract
//! and force the verdicts they can (a data directory that is a file, io_uring forbidden by
//! a real seccomp filter).

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use shardgate_tests::binary;

/// Every check doctor runs, in its order.
const CHECKS: &[&str] = &[
    "io_uring",
    "memlock",
    "nofile",
    "somaxconn",
    "tcp_max_syn_backlog",
    "ip_local_port_range",
    "cpus",
    "data_dir",
    "fsync",
    "disk_space",
    "certificates",
    "dev_certificate",
];

struct Line {
    level: String,
    check: String,
    text: String,
}

fn doctor(args: &[&str]) -> Output {
    doctor_with(Command::new(binary()).arg("doctor").args(args))
}

fn doctor_with(cmd: &mut Command) -> Output {
    cmd.env_remove("SHARDGATE_WORKERS")
        .env_remove("SHARDGATE_DATA_DIR")
        .env_remove("SHARDGATE_IO_DRIVER")
        .env_remove("MONOIO_FORCE_LEGACY_DRIVER")
        .output()
        .expect("run shardgate doctor")
}

/// Parses stdout, asserting the line format on the way.
fn parse_lines(output: &Output) -> Vec<Line> {
    let stdout = String::from_utf8(output.stdout.clone()).expect("stdout is UTF-8");
    stdout
        .lines()
        .map(|line| {
            let (level, rest) = line.split_once("  ").unwrap_or_else(|| {
                panic!("no level column in {line:?}");
            });
            assert!(
                ["ok", "warn", "fail"].contains(&level),
                "level {level:?} in {line:?}"
            );
            let rest = rest.trim_start();
            let (check, _) = rest
                .split_once(": ")
                .unwrap_or_else(|| panic!("no `<check>: ` in {line:?}"));
            assert!(
                check.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "check name {check:?} in {line:?}"
            );
            let has_fix = line.contains(" — fix: ");
            assert_eq!(
                has_fix,
                level != "ok",
                "a fix on every warn/fail line and on no ok line: {line:?}"
            );
            Line {
                level: level.to_owned(),
                check: check.to_owned(),
                text: line.to_owned(),
            }
        })
        .collect()
}

fn line<'a>(lines: &'a [Line], check: &str) -> &'a Line {
    lines
        .iter()
        .find(|l| l.check == check)
        .unwrap_or_else(|| panic!("no {check} line"))
}

fn assert_exit_code_matches(output: &Output, lines: &[Line]) {
    let failed = lines.iter().any(|l| l.level == "fail");
    assert_eq!(
        output.status.code(),
        Some(i32::from(failed)),
        "exit code 1 exactly when a line says fail; stdout:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn doctor_prints_every_check_once_and_exits_1_only_on_fail() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().to_str().expect("UTF-8 temp path");
    let output = doctor(&["--data-dir", data, "--workers", "1"]);
    assert!(
        output.stderr.is_empty(),
        "doctor writes nothing to stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines = parse_lines(&output);
    let checks: Vec<&str> = lines.iter().map(|l| l.check.as_str()).collect();
    assert_eq!(checks, CHECKS, "one line per check, in order");
    assert_exit_code_matches(&output, &lines);

    let data_dir = line(&lines, "data_dir");
    assert_eq!(data_dir.level, "ok", "{}", data_dir.text);
    assert!(data_dir.text.contains("exists"), "{}", data_dir.text);
}

#[test]
fn doctor_fails_when_the_data_dir_is_a_file() {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let path = file.path().to_str().expect("UTF-8 temp path");
    let output = doctor(&["--data-dir", path]);
    let lines = parse_lines(&output);
    let data_dir = line(&lines, "data_dir");
    assert_eq!(data_dir.level, "fail", "{}", data_dir.text);
    assert!(
        data_dir.text.contains("not a directory"),
        "{}",
        data_dir.text
    );
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn doctor_under_epoll_never_judges_io_uring_a_problem() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().to_str().expect("UTF-8 temp path");
    let output = doctor(&["--data-dir", data, "--io-driver", "epoll"]);
    let lines = parse_lines(&output);
    for check in ["io_uring", "memlock"] {
        let l = line(&lines, check);
        assert_eq!(l.level, "ok", "{}", l.text);
    }
    assert_exit_code_matches(&output, &lines);
}

#[test]
fn doctor_refuses_bad_flags_with_usage_exit_code() {
    for args in [
        &["--workers", "0"][..],
        &["--io-driver", "kqueue"],
        &["--bogus"],
    ] {
        let output = doctor(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?}: no findings printed");
    }
}

/// A seccomp filter that answers `io_uring_setup` with EPERM, as Docker's default profile
/// does, installed in the child between fork and exec.
#[allow(unsafe_code)]
fn forbid_io_uring(cmd: &mut Command) -> &mut Command {
    // io_uring_setup has number 425 on every architecture (it came after the syscall
    // tables were unified).
    const IO_URING_SETUP: u32 = 425;
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let filter = [
        // Load the syscall number (offset 0 of struct seccomp_data).
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        // If io_uring_setup, fall through to EPERM; else skip it.
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: IO_URING_SETUP,
        },
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    // SAFETY: the closure runs in the forked child before exec and only makes two prctl
    // system calls (async-signal-safe; no allocation, no locks). `filter` is owned by the
    // closure and outlives the `sock_fprog` that points into it, which the kernel copies
    // during the call. Failure is reported as an error, which makes `output()` fail.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr().cast_mut(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

#[test]
fn doctor_under_a_seccomp_filter_reports_io_uring_blocked_and_the_fix() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().to_str().expect("UTF-8 temp path");

    let mut auto = Command::new(binary());
    auto.args(["doctor", "--data-dir", data]);
    let output = doctor_with(forbid_io_uring(&mut auto));
    let lines = parse_lines(&output);
    let uring = line(&lines, "io_uring");
    // `auto` falls back to epoll: a warning, not a failure.
    assert_eq!(uring.level, "warn", "{}", uring.text);
    assert!(uring.text.contains("EPERM"), "{}", uring.text);
    // Where the sysctl forbids io_uring anyway, doctor names the sysctl instead.
    let sysctl_off = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .is_ok_and(|v| v.trim() != "0");
    if !sysctl_off {
        assert!(uring.text.contains("Seccomp: 2"), "{}", uring.text);
        assert!(
            uring
                .text
                .contains("io_uring_setup, io_uring_enter and io_uring_register"),
            "{}",
            uring.text
        );
    }
    assert_exit_code_matches(&output, &lines);

    let mut strict = Command::new(binary());
    strict.args(["doctor", "--data-dir", data, "--io-driver", "uring"]);
    let output = doctor_with(forbid_io_uring(&mut strict));
    let lines = parse_lines(&output);
    let uring = line(&lines, "io_uring");
    assert_eq!(uring.level, "fail", "{}", uring.text);
    assert_eq!(
        output.status.code(),
        Some(1),
        "uring without io_uring breaks start-up"
    );
}
