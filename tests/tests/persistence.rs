//! Durability of the admin store (DESIGN.md §6) seen from outside: restarts, `kill -9`
//! during writes, a torn journal tail, and a corrupted record in the middle of the journal.
//!
//! The journal format these tests damage is the one `admin/src/store.rs` documents:
//! `journal.log` = 24-byte header (magic `SGJOURNL`, ...), then frames of
//! `length u32 LE | crc32 u32 LE | payload`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use shardgate_tests::{
    DAY_SECS, GATEWAYS, Options, Shardgate, children, create_gateway, create_key, create_rule,
    create_service, create_upstream, dump, id_of, json, rfc3339_in, seed_gateway,
};

const JOURNAL: &str = "journal.log";
const JOURNAL_HEADER_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 8;

/// Whether [`populate`] gives its API keys an `expires_at`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyExpiry {
    Set,
    /// For tests about something else: keeps them independent of
    /// `api_key_with_expires_at_is_still_there_after_a_restart`.
    Never,
}

/// Creates one of everything (plus an update and a delete, so replay covers every kind of
/// mutation) and returns the gateway id.
fn populate(sg: &Shardgate, expiry: KeyExpiry) -> String {
    let admin = sg.admin();
    let gateway = admin
        .post_json(GATEWAYS, &seed_gateway())
        .expect_status(201)
        .json();
    let gid = id_of(&gateway);
    let upstream = id_of(&create_upstream(&admin, &gid, "pool"));
    let service = id_of(&create_service(&admin, &gid, "svc", &upstream));
    create_rule(&admin, &gid, "/v1/*", &service);
    let key = |name: &str| {
        let body = match expiry {
            KeyExpiry::Set => json!({"name": name, "expires_at": rfc3339_in(365 * DAY_SECS)}),
            KeyExpiry::Never => json!({"name": name}),
        };
        admin
            .post_json(&children(&gid, "keys"), &body)
            .expect_status(201)
            .json()
    };
    key("k1");
    let doomed = id_of(&key("k2"));
    admin
        .delete(&format!("{}/{doomed}", children(&gid, "keys")))
        .expect_status(204);
    admin
        .put_json(
            &format!("{}/{upstream}", children(&gid, "upstreams")),
            &json!({"name": "pool-renamed", "targets": [{"host": "127.0.0.1", "port": 8080}]}),
        )
        .expect_status(200);
    create_gateway(&admin, "second");
    let temporary = id_of(&create_gateway(&admin, "temporary"));
    create_upstream(&admin, &temporary, "pool");
    admin
        .delete(&format!("{GATEWAYS}/{temporary}"))
        .expect_status(204);
    gid
}

/// Start offsets of every frame in `journal`, checking the documented layout.
fn frame_offsets(journal: &[u8]) -> Vec<usize> {
    assert!(
        journal.starts_with(b"SGJOURNL"),
        "journal.log does not start with the documented magic"
    );
    let mut offsets = Vec::new();
    let mut pos = JOURNAL_HEADER_LEN;
    while pos < journal.len() {
        let len_bytes: [u8; 4] = journal[pos..pos + 4].try_into().expect("4 bytes");
        let len = u32::from_le_bytes(len_bytes) as usize;
        offsets.push(pos);
        pos += FRAME_HEADER_LEN + len;
    }
    assert_eq!(
        pos,
        journal.len(),
        "frames end exactly at the end of the journal"
    );
    offsets
}

#[test]
fn everything_is_still_there_after_sigterm_and_restart() {
    let dir = tempfile::tempdir().expect("data dir");
    let mut first = Shardgate::start(Options::new().data_dir(dir.path()));
    populate(&first, KeyExpiry::Set);
    let before = dump(&first.admin());
    let status = first.terminate();
    assert!(status.success(), "SIGTERM exits 0: {status}");

    let mut second = Shardgate::start(Options::new().data_dir(dir.path()));
    assert_eq!(dump(&second.admin()), before, "same state, field for field");

    // The recovered store keeps working and keeps what it is given.
    create_gateway(&second.admin(), "after-restart");
    let after = dump(&second.admin());
    second.terminate();
    let third = Shardgate::start(Options::new().data_dir(dir.path()));
    assert_eq!(dump(&third.admin()), after);
}

#[test]
fn api_key_with_expires_at_is_still_there_after_a_restart() {
    let dir = tempfile::tempdir().expect("data dir");
    let mut sg = Shardgate::start(Options::new().data_dir(dir.path()));
    let gid = id_of(&create_gateway(&sg.admin(), "api"));
    let key = create_key(&sg.admin(), &gid, "test-key");
    let path = format!("{}/{}", children(&gid, "keys"), id_of(&key));
    let before = sg.admin().get(&path).expect_status(200).json();
    sg.terminate();

    let restarted = match Shardgate::try_start(Options::new().data_dir(dir.path())) {
        Ok(sg) => sg,
        Err(f) => panic!(
            "the store does not reopen after creating a key with expires_at ({}):\n{}",
            f.status, f.stderr
        ),
    };
    let after = restarted.admin().get(&path).expect_status(200).json();
    assert_eq!(after, before);
    assert!(
        key["expires_at"].is_string(),
        "create_key sets an expiry: {key}"
    );
    assert_eq!(after["expires_at"], key["expires_at"]);
}

/// What the writer thread saw acknowledged.
enum Acked {
    Upstream(String),
    Renamed(u32),
}

#[test]
fn every_acknowledged_write_survives_kill_9_during_a_stream_of_writes() {
    const ACKS_BEFORE_KILL: usize = 40;
    let dir = tempfile::tempdir().expect("data dir");
    let mut sg = Shardgate::start(Options::new().data_dir(dir.path()));
    let admin = sg.admin();
    let gid = id_of(&create_gateway(&admin, "stream"));

    let (tx, rx) = mpsc::channel();
    let writer = {
        let admin = admin.clone();
        let gid = gid.clone();
        thread::spawn(move || {
            // Bounded; the kill ends it long before.
            for i in 0..10_000u32 {
                let (path, body, method) = if i % 2 == 0 {
                    (
                        children(&gid, "upstreams"),
                        json!({"name": format!("u{i}"), "targets": [{"host": "127.0.0.1", "port": 9000}]}),
                        "POST",
                    )
                } else {
                    (
                        format!("{GATEWAYS}/{gid}"),
                        json!({"name": format!("v{i}"), "subdomain": "stream"}),
                        "PUT",
                    )
                };
                let bytes = serde_json::to_vec(&body).expect("serialize");
                let Ok(r) = admin.try_request(
                    method,
                    &path,
                    &[("Content-Type", "application/json")],
                    &bytes,
                ) else {
                    return;
                };
                let acked = match r.status {
                    201 => Acked::Upstream(id_of(&r.json())),
                    200 => Acked::Renamed(i),
                    _ => return,
                };
                if tx.send(acked).is_err() {
                    return;
                }
            }
        })
    };

    let mut acked = Vec::new();
    while acked.len() < ACKS_BEFORE_KILL {
        let a = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the writer keeps getting acknowledgements");
        acked.push(a);
    }
    sg.kill9();
    writer
        .join()
        .expect("the writer ends once the server is gone");
    acked.extend(rx.try_iter());

    let restarted = Shardgate::start(Options::new().data_dir(dir.path()));
    let admin = restarted.admin();
    let mut upstreams = 0;
    let mut last_rename = None;
    for a in &acked {
        match a {
            Acked::Upstream(id) => {
                upstreams += 1;
                admin
                    .get(&format!("{}/{id}", children(&gid, "upstreams")))
                    .expect_status(200);
            }
            Acked::Renamed(i) => last_rename = Some(*i),
        }
    }
    let listed = admin
        .get(&children(&gid, "upstreams"))
        .expect_status(200)
        .json();
    let count = listed["count"].as_u64().expect("count") as usize;
    assert!(
        (upstreams..=upstreams + 1).contains(&count),
        "{upstreams} acknowledged creates, at most one unacknowledged in flight; found {count}"
    );
    let gateway = admin
        .get(&format!("{GATEWAYS}/{gid}"))
        .expect_status(200)
        .json();
    let name = gateway["name"].as_str().expect("name");
    let version: u32 = name
        .strip_prefix('v')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("gateway name {name:?} is not one the writer set"));
    let last = last_rename.expect("at least one rename was acknowledged");
    assert!(
        version >= last,
        "rename v{last} was acknowledged but the store came back with {name}"
    );
}

/// Stops a populated server cleanly, appends `tail` to its journal, restarts and checks
/// that everything acknowledged is there and that new writes stick.
fn recovers_from_torn_tail(tail: &[u8]) {
    let dir = tempfile::tempdir().expect("data dir");
    let mut sg = Shardgate::start(Options::new().data_dir(dir.path()));
    populate(&sg, KeyExpiry::Never);
    let before = dump(&sg.admin());
    sg.terminate();
    let journal = dir.path().join(JOURNAL);
    let clean_len = fs::metadata(&journal).expect("journal.log exists").len();
    append(&journal, tail);

    let mut sg = Shardgate::start(Options::new().data_dir(dir.path()));
    assert_eq!(dump(&sg.admin()), before);
    create_gateway(&sg.admin(), "after-recovery");
    let after = dump(&sg.admin());
    sg.terminate();
    let journal_bytes = fs::read(&journal).expect("read journal.log");
    assert!(
        journal_bytes.len() as u64 > clean_len,
        "the new write is journaled after the good records"
    );
    frame_offsets(&journal_bytes);

    let sg = Shardgate::start(Options::new().data_dir(dir.path()));
    assert_eq!(dump(&sg.admin()), after);
}

fn append(path: &Path, bytes: &[u8]) {
    let mut file = OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open journal.log for appending");
    file.write_all(bytes).expect("append to journal.log");
}

#[test]
fn journal_ending_in_a_partial_frame_header_recovers_everything_acknowledged() {
    recovers_from_torn_tail(&[0x5e, 0x01, 0x00]);
}

#[test]
fn journal_whose_last_frame_runs_past_the_end_recovers_everything_acknowledged() {
    let mut tail = 1000u32.to_le_bytes().to_vec();
    tail.extend_from_slice(&0xdead_beef_u32.to_le_bytes());
    tail.extend_from_slice(b"half a rec");
    recovers_from_torn_tail(&tail);
}

#[test]
fn journal_ending_in_zeroed_bytes_recovers_everything_acknowledged() {
    recovers_from_torn_tail(&[0u8; 37]);
}

#[test]
fn corrupted_middle_record_refuses_to_start_naming_the_file_and_offset() {
    let dir = tempfile::tempdir().expect("data dir");
    let mut sg = Shardgate::start(Options::new().data_dir(dir.path()));
    let admin = sg.admin();
    let gid = id_of(&create_gateway(&admin, "api"));
    for i in 0..4 {
        create_upstream(&admin, &gid, &format!("u{i}"));
    }
    sg.terminate();

    let path = dir.path().join(JOURNAL);
    let mut journal = fs::read(&path).expect("read journal.log");
    let offsets = frame_offsets(&journal);
    assert!(offsets.len() >= 5, "one record per write: {offsets:?}");
    // Damage the second record; three or more intact ones follow it, so this cannot be
    // mistaken for a torn final write.
    let victim = offsets[1];
    let payload_len = offsets[2] - victim - FRAME_HEADER_LEN;
    journal[victim + FRAME_HEADER_LEN + payload_len / 2] ^= 0x40;
    fs::write(&path, &journal).expect("write the damaged journal");

    let failure = match Shardgate::try_start(Options::new().data_dir(dir.path())) {
        Ok(_) => panic!("shardgate started on a journal with a corrupted middle record"),
        Err(f) => f,
    };
    assert!(!failure.status.success(), "exit status {}", failure.status);
    assert!(
        failure.stderr.contains(JOURNAL),
        "names the file: {}",
        failure.stderr
    );
    assert!(
        failure.stderr.contains("offset") && failure.stderr.contains(&victim.to_string()),
        "names the record's offset {victim}: {}",
        failure.stderr
    );
    assert_eq!(
        fs::read(&path).expect("read journal.log"),
        journal,
        "a refused start leaves the journal as it found it (no silent reset)"
    );
}

#[test]
fn second_server_on_the_same_data_dir_refuses_to_start() {
    let dir = tempfile::tempdir().expect("data dir");
    let first = Shardgate::start(Options::new().data_dir(dir.path()));
    create_gateway(&first.admin(), "api");
    let failure = match Shardgate::try_start(Options::new().data_dir(dir.path())) {
        Ok(_) => panic!("two servers opened one data directory"),
        Err(f) => f,
    };
    assert!(!failure.status.success());
    assert!(
        failure.stderr.to_lowercase().contains("lock"),
        "says the directory is locked: {}",
        failure.stderr
    );
    // The first server is unaffected.
    assert_eq!(
        first.admin().get(GATEWAYS).expect_status(200).json()["count"],
        1
    );
}
