//! `tuning/check` runs without root, reports every recommended sysctl beside its current
//! value, and changes nothing (issue 5: "tuning/check runs without root and changes
//! nothing"). `tuning/apply --dry-run` prints what it would write and writes nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

fn tuning_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tuning")
}

fn sysctl_values(keys: &[&str]) -> Vec<Option<String>> {
    keys.iter()
        .map(|key| {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            std::fs::read_to_string(path).ok()
        })
        .collect()
}

#[test]
fn check_reports_every_recommended_setting_and_changes_nothing() {
    let keys = [
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "fs.file-max",
    ];
    let before = sysctl_values(&keys);
    let out = Command::new("bash")
        .arg(tuning_dir().join("check"))
        .output()
        .expect("run tuning/check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tuning/check failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conf = std::fs::read_to_string(tuning_dir().join("sysctl.conf")).expect("sysctl.conf");
    for line in conf.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = line.split('=').next().unwrap_or("").trim();
        // A leading `-` is sysctl.d syntax for "ignore if this kernel lacks the key".
        let key = key.trim_start_matches('-');
        assert!(
            text.contains(key),
            "tuning/check does not report {key}:\n{text}"
        );
    }
    assert_eq!(
        sysctl_values(&keys),
        before,
        "tuning/check changed a sysctl"
    );
}

#[test]
fn apply_dry_run_prints_the_file_it_would_write_and_writes_nothing() {
    let target = Path::new("/etc/sysctl.d/99-shardgate.conf");
    let existed = target.exists();
    let out = Command::new("bash")
        .arg(tuning_dir().join("apply"))
        .arg("--dry-run")
        .output()
        .expect("run tuning/apply --dry-run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dry run failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("net.core.somaxconn"), "{text}");
    assert_eq!(
        target.exists(),
        existed,
        "--dry-run wrote {}",
        target.display()
    );
}
