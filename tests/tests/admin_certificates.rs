//! The certificates admin entity (issue 10, items 3, 6, 7): `/api/v1/certificates` CRUD and
//! what each certificate reports (SANs, validity, SHA-256 fingerprint), the 400/404/409
//! answers, durability across a `kill -9`, read-your-writes on every worker, the expiry
//! gauge in `/metrics`, `shardgate doctor`'s expiry warning, and the private key never
//! coming back out: not in a GET, an error, or a debug log.

use std::process::Command;

use shardgate_tests::certs::{
    CERTIFICATES, TlsClient, Trust, fingerprint_sha256, no_san_cert, upload, upload_body,
};
use shardgate_tests::tls::{Issued, TestCa, Validity};
use shardgate_tests::{
    DAY_SECS, Options, Resp, Shardgate, Value, binary, id_of, io_drivers, json, list_all,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The fields every certificate shows, and no others (never `key_pem`, never `cert_pem`).
const FIELDS: [&str; 8] = [
    "created_at",
    "fingerprint_sha256",
    "id",
    "name",
    "not_after",
    "not_before",
    "sans",
    "updated_at",
];

/// `/api/v1/certificates/<id>`.
fn item(id: &str) -> String {
    format!("{CERTIFICATES}/{id}")
}

/// An RFC 3339 field as a time; panics when it is not one.
fn time_of(entity: &Value, field: &str) -> OffsetDateTime {
    let text = entity[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not a string: {entity}"));
    OffsetDateTime::parse(text, &Rfc3339)
        .unwrap_or_else(|e| panic!("{field} is not RFC 3339 ({e}): {text:?}"))
}

/// The SANs as a sorted list.
fn sans_of(entity: &Value) -> Vec<String> {
    let mut sans: Vec<String> = entity["sans"]
        .as_array()
        .unwrap_or_else(|| panic!("sans is not a list: {entity}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("a SAN that is not a string: {entity}"))
                .to_owned()
        })
        .collect();
    sans.sort();
    sans
}

/// What the API must say about `issued`, made `now` with [`Validity::current`].
#[track_caller]
fn assert_describes(entity: &Value, name: &str, issued: &Issued, sans: &[&str], now: i64) {
    let mut fields: Vec<&str> = entity
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {entity}"))
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, FIELDS, "{entity}");
    assert!(!id_of(entity).is_empty());
    assert_eq!(entity["name"], name);
    let mut expected: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
    expected.sort();
    assert_eq!(sans_of(entity), expected);
    assert_eq!(
        entity["fingerprint_sha256"],
        fingerprint_sha256(issued.cert_der()),
        "the SHA-256 of the DER leaf, lowercase hex"
    );
    let validity = Validity::current();
    for (field, offset) in [
        ("not_before", validity.not_before_secs),
        ("not_after", validity.not_after_secs),
    ] {
        let at = time_of(entity, field).unix_timestamp();
        assert!(
            (at - (now + offset)).abs() <= 60,
            "{field} is the certificate's: {entity}"
        );
    }
    time_of(entity, "created_at");
    time_of(entity, "updated_at");
}

fn now_unix() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

#[test]
fn certificate_is_created_fetched_listed_replaced_and_deleted() {
    let ca = TestCa::new("lifecycle root");
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let admin = sg.admin();
        let now = now_unix();
        let first = ca.server_cert(&["api.localhost", "*.api.localhost"]);

        // curl -X POST /api/v1/certificates -d '{"name", "cert_pem", "key_pem"}'
        let created = admin
            .post_json(CERTIFICATES, &upload_body("api", &first))
            .expect_status(201)
            .json();
        assert_describes(
            &created,
            "api",
            &first,
            &["api.localhost", "*.api.localhost"],
            now,
        );
        let id = id_of(&created);
        let fetched = admin.get(&item(&id)).expect_status(200).json();
        assert_eq!(
            fetched, created,
            "[{driver}] GET shows what create returned"
        );
        let list = admin.get(CERTIFICATES).expect_status(200).json();
        assert_eq!(list["certificates"], json!([created]), "[{driver}] {list}");
        assert_eq!(list["count"], 1, "[{driver}] {list}");
        assert_eq!(list["offset"], 0, "[{driver}] {list}");
        assert!(list["limit"].as_u64().is_some(), "[{driver}] {list}");

        // PUT replaces everything: name, certificate (here with its chain) and key.
        let second = ca.server_cert(&["www.localhost"]);
        let mut body = upload_body("www", &second);
        body["cert_pem"] = json!(format!("{}{}", second.cert_pem(), ca.cert_pem()));
        let replaced = admin.put_json(&item(&id), &body).expect_status(200).json();
        assert_describes(&replaced, "www", &second, &["www.localhost"], now);
        assert_eq!(id_of(&replaced), id, "[{driver}]");
        assert_eq!(replaced["created_at"], created["created_at"], "[{driver}]");
        assert!(
            time_of(&replaced, "updated_at") >= time_of(&created, "updated_at"),
            "[{driver}] {replaced}"
        );
        assert_eq!(
            admin.get(&item(&id)).expect_status(200).json(),
            replaced,
            "[{driver}]"
        );

        admin.delete(&item(&id)).expect_status(204);
        admin.get(&item(&id)).expect_status(404);
        let list = admin.get(CERTIFICATES).expect_status(200).json();
        assert_eq!(list["count"], 0, "[{driver}] {list}");
        assert_eq!(list["certificates"], json!([]), "[{driver}] {list}");
    }
}

#[test]
fn unusable_certificates_are_400_naming_the_field_and_create_nothing() {
    let sg = Shardgate::start(Options::new());
    let admin = sg.admin();
    let ca = TestCa::new("validation root");
    let good = ca.server_cert(&["api.localhost"]);
    let stranger = ca.server_cert(&["api.localhost"]);
    let expired = ca.server_cert_valid(&["api.localhost"], Validity::expired());
    let (no_san_pem, no_san_key) = no_san_cert("nosan.localhost");
    let garbled_cert = "-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n";
    let garbled_key = "-----BEGIN PRIVATE KEY-----\nAAAAAAAA\n-----END PRIVATE KEY-----\n";

    let cases: Vec<(&str, Value, &[&str], &[&str])> = vec![
        (
            "text that is not PEM",
            json!({"name": "c", "cert_pem": "not a certificate", "key_pem": good.key_pem()}),
            &["cert_pem: "],
            &[],
        ),
        (
            "a PEM block that is not a certificate",
            json!({"name": "c", "cert_pem": garbled_cert, "key_pem": good.key_pem()}),
            &["cert_pem: "],
            &[],
        ),
        (
            "a key that is not PEM",
            json!({"name": "c", "cert_pem": good.cert_pem(), "key_pem": "not a key"}),
            &["key_pem: "],
            &[],
        ),
        (
            "a PEM block that is not a key",
            json!({"name": "c", "cert_pem": good.cert_pem(), "key_pem": garbled_key}),
            &["key_pem: "],
            &[],
        ),
        (
            "a key of another certificate",
            json!({"name": "c", "cert_pem": good.cert_pem(), "key_pem": stranger.key_pem()}),
            &["key_pem: ", "cert_pem: "],
            &["match"],
        ),
        (
            "an expired certificate",
            json!({"name": "c", "cert_pem": expired.cert_pem(), "key_pem": expired.key_pem()}),
            &["cert_pem: "],
            &["expire"],
        ),
        (
            "a certificate without any SAN",
            json!({"name": "c", "cert_pem": no_san_pem, "key_pem": no_san_key}),
            &["cert_pem: "],
            &["san", "subject alt", "subjectalt"],
        ),
    ];
    for (what, body, fields, words) in &cases {
        let error = admin
            .post_json(CERTIFICATES, body)
            .expect_status(400)
            .error();
        assert!(
            fields.iter().any(|f| error.starts_with(f)),
            "{what}: the error names the field ({fields:?}): {error:?}"
        );
        let lower = error.to_ascii_lowercase();
        assert!(
            words.is_empty() || words.iter().any(|w| lower.contains(w)),
            "{what}: the error says why ({words:?}): {error:?}"
        );
    }
    let list = admin.get(CERTIFICATES).expect_status(200).json();
    assert_eq!(list["count"], 0, "nothing was created: {list}");

    // The same checks guard a replacement, which then changes nothing.
    let id = id_of(&upload(&admin, "kept", &good));
    let before = admin.get(&item(&id)).expect_status(200).json();
    for (what, body, fields, _) in &cases {
        let error = admin.put_json(&item(&id), body).expect_status(400).error();
        assert!(
            fields.iter().any(|f| error.starts_with(f)),
            "PUT {what}: {error:?}"
        );
    }
    assert_eq!(admin.get(&item(&id)).expect_status(200).json(), before);
}

#[test]
fn duplicate_names_are_409_and_unknown_ids_are_404() {
    let sg = Shardgate::start(Options::new());
    let admin = sg.admin();
    let ca = TestCa::new("conflict root");
    let api = ca.server_cert(&["api.localhost"]);
    let www = ca.server_cert(&["www.localhost"]);
    upload(&admin, "api", &api);
    let error = admin
        .post_json(CERTIFICATES, &upload_body("api", &www))
        .expect_status(409)
        .error();
    assert!(error.contains("api"), "names the taken name: {error:?}");

    let www_id = id_of(&upload(&admin, "www", &www));
    admin
        .put_json(&item(&www_id), &upload_body("api", &www))
        .expect_status(409);
    // Keeping its own name is no conflict.
    admin
        .put_json(&item(&www_id), &upload_body("www", &www))
        .expect_status(200);

    let unknown = "0190b7a4-0000-7000-8000-000000000000";
    admin.get(&item(unknown)).expect_status(404);
    admin
        .put_json(&item(unknown), &upload_body("ghost", &www))
        .expect_status(404);
    admin.delete(&item(unknown)).expect_status(404);
    let list = admin.get(CERTIFICATES).expect_status(200).json();
    assert_eq!(list["count"], 2, "{list}");
}

#[test]
fn certificates_survive_kill_9_and_are_served_after_the_restart() {
    let dir = tempfile::tempdir().expect("data dir");
    let ca = TestCa::new("durable root");
    let (api, api2) = (
        ca.server_cert(&["api.localhost"]),
        ca.server_cert(&["api.localhost"]),
    );
    let (www, wildcard) = (
        ca.server_cert(&["www.localhost"]),
        ca.server_cert(&["*.localhost"]),
    );
    let mut first = Shardgate::start(Options::new().data_dir(dir.path()));
    let admin = first.admin();
    let api_id = id_of(&upload(&admin, "api", &api));
    let www_id = id_of(&upload(&admin, "www", &www));
    admin
        .put_json(&item(&api_id), &upload_body("api", &api2))
        .expect_status(200);
    admin.delete(&item(&www_id)).expect_status(204);
    upload(&admin, "wildcard", &wildcard);
    let before = list_all(&admin, CERTIFICATES, "certificates");
    assert_eq!(before.len(), 2);
    // Every acknowledged write is durable: no goodbye.
    first.kill9();

    let second = Shardgate::start(Options::new().data_dir(dir.path()));
    assert_eq!(
        list_all(&second.admin(), CERTIFICATES, "certificates"),
        before,
        "the same certificates, field for field"
    );
    let tls = second.expect_tls_addr();
    let fingerprint = |name: &str| {
        TlsClient::new(Trust::Any)
            .handshake(tls, name)
            .unwrap_or_else(|e| panic!("{e}"))
            .fingerprint()
    };
    assert_eq!(
        fingerprint("api.localhost"),
        fingerprint_sha256(api2.cert_der())
    );
    assert_eq!(
        fingerprint("www.localhost"),
        fingerprint_sha256(wildcard.cert_der()),
        "the deleted exact certificate stays deleted; the wildcard covers the name"
    );
}

#[test]
fn a_certificate_write_is_served_by_every_worker_once_it_returns() {
    const CONNECTIONS: usize = 8;
    let ca = TestCa::new("ryw root");
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver).workers(2));
        let tls = sg.expect_tls_addr();
        let admin = sg.admin();
        // Fresh connections (and clients: no session to resume) land on either worker.
        let all_serve = |expected: &str, what: &str| {
            for i in 0..CONNECTIONS {
                let served = TlsClient::new(Trust::Any)
                    .handshake(tls, "api.localhost")
                    .unwrap_or_else(|e| panic!("[{driver}] {what}, connection {i}: {e}"));
                assert_eq!(
                    served.fingerprint(),
                    expected,
                    "[{driver}] {what}: connection {i} got another certificate"
                );
            }
        };
        let default = TlsClient::new(Trust::Any)
            .handshake(tls, "api.localhost")
            .unwrap_or_else(|e| panic!("{e}"))
            .fingerprint();

        let issued = ca.server_cert(&["api.localhost"]);
        let id = id_of(&upload(&admin, "api", &issued));
        all_serve(&fingerprint_sha256(issued.cert_der()), "after the POST");
        for round in 0..3 {
            let issued = ca.server_cert(&["api.localhost"]);
            admin
                .put_json(&item(&id), &upload_body("api", &issued))
                .expect_status(200);
            all_serve(
                &fingerprint_sha256(issued.cert_der()),
                &format!("after PUT {round}"),
            );
        }
        admin.delete(&item(&id)).expect_status(204);
        all_serve(&default, "after the DELETE");
    }
}

#[test]
fn metrics_give_each_certificates_expiry_in_unix_seconds() {
    let sg = Shardgate::start(Options::new());
    let admin = sg.admin();
    let ca = TestCa::new("metrics root");
    let soon = ca.server_cert_valid(
        &["soon.localhost"],
        Validity::from_now(-DAY_SECS, 3 * DAY_SECS),
    );
    let later = ca.server_cert(&["later.localhost"]);
    let uploaded = [
        upload(&admin, "expires-soon", &soon),
        upload(&admin, "expires-later", &later),
    ];
    let metrics = admin.get("/metrics").expect_status(200).text();
    for cert in &uploaded {
        let name = cert["name"].as_str().expect("a name");
        let prefix = format!("shardgate_certificate_expiry_timestamp_seconds{{name=\"{name}\"}} ");
        let value = metrics
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in /metrics:\n{metrics}"));
        let seconds: f64 = value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{prefix}{value} is not a number"));
        assert_eq!(
            seconds,
            time_of(cert, "not_after").unix_timestamp() as f64,
            "{name}: not_after in Unix seconds"
        );
    }
}

#[test]
fn doctor_names_certificates_that_expire_within_14_days() {
    let dir = tempfile::tempdir().expect("data dir");
    let ca = TestCa::new("doctor root");
    let mut sg = Shardgate::start(Options::new().data_dir(dir.path()));
    let admin = sg.admin();
    upload(
        &admin,
        "expires-in-three-days",
        &ca.server_cert_valid(
            &["soon.localhost"],
            Validity::from_now(-DAY_SECS, 3 * DAY_SECS),
        ),
    );
    upload(
        &admin,
        "expires-in-sixty-days",
        &ca.server_cert_valid(
            &["later.localhost"],
            Validity::from_now(-DAY_SECS, 60 * DAY_SECS),
        ),
    );
    assert!(sg.terminate().success());

    let data = dir.path().to_str().expect("a UTF-8 temp path");
    let output = Command::new(binary())
        .args(["doctor", "--data-dir", data, "--workers", "1"])
        .env_remove("SHARDGATE_WORKERS")
        .env_remove("SHARDGATE_DATA_DIR")
        .env_remove("SHARDGATE_IO_DRIVER")
        .output()
        .expect("run shardgate doctor");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let named: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("expires-in-three-days"))
        .collect();
    assert!(
        !named.is_empty(),
        "doctor names the certificate expiring in 3 days:\n{stdout}"
    );
    assert!(
        named.iter().all(|l| !l.starts_with("ok")),
        "a certificate about to expire is not ok: {named:?}"
    );
    assert!(
        !stdout.contains("expires-in-sixty-days"),
        "nor one with 60 days left:\n{stdout}"
    );
}

#[test]
fn private_keys_never_come_back_in_answers_errors_or_debug_logs() {
    let mut sg = Shardgate::start(Options::new().log("debug"));
    let admin = sg.admin();
    let ca = TestCa::new("secrets root");
    let first = ca.server_cert(&["api.localhost"]);
    let second = ca.server_cert(&["api.localhost"]);
    let stranger = ca.server_cert(&["api.localhost"]);
    let expired = ca.server_cert_valid(&["api.localhost"], Validity::expired());
    let truncated = ca.server_cert(&["api.localhost"]);
    let other = ca.server_cert(&["www.localhost"]);
    let keys = [&first, &second, &stranger, &expired, &truncated, &other];

    let mut answers: Vec<(String, Resp)> = Vec::new();
    let created = admin.post_json(CERTIFICATES, &upload_body("api", &first));
    let id = id_of(&created.json());
    answers.push(("POST".into(), created));
    answers.push((
        "PUT".into(),
        admin.put_json(&item(&id), &upload_body("api", &second)),
    ));
    // The refused PUTs go to another certificate, so that "api" is a taken name there too.
    let other_id = id_of(&upload(&admin, "www", &other));
    let refused = [
        (
            "a key of another certificate",
            json!({"name": "x", "cert_pem": second.cert_pem(), "key_pem": stranger.key_pem()}),
        ),
        ("an expired certificate", upload_body("x", &expired)),
        ("a taken name", upload_body("api", &stranger)),
        (
            "a key missing its last line",
            json!({"name": "x", "cert_pem": truncated.cert_pem(), "key_pem": without_last_body_line(truncated.key_pem())}),
        ),
    ];
    for (what, body) in refused {
        let resp = admin.post_json(CERTIFICATES, &body);
        assert!(
            (400..500).contains(&resp.status),
            "{what} is refused: {}",
            resp.status
        );
        answers.push((format!("POST {what}"), resp.clone()));
        let resp = admin.put_json(&item(&other_id), &body);
        assert!((400..500).contains(&resp.status), "PUT {what}");
        answers.push((format!("PUT {what}"), resp));
    }
    for path in [CERTIFICATES.to_owned(), item(&id), "/metrics".to_owned()] {
        answers.push((format!("GET {path}"), admin.get(&path).expect_status(200)));
    }
    // The listener serves it, so its debug logging runs too.
    TlsClient::new(Trust::Any)
        .handshake(sg.expect_tls_addr(), "api.localhost")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(sg.terminate().success());

    let stderr = sg.stderr_contents();
    assert!(
        stderr.contains("DEBUG") || stderr.contains("debug"),
        "the log is at debug level"
    );
    for issued in keys {
        for fragment in issued.key_fragments() {
            for (what, resp) in &answers {
                assert!(
                    !resp.text().contains(&fragment),
                    "{what}: the answer ({}) holds a piece of a private key",
                    resp.status
                );
            }
            assert!(
                !stderr.contains(&fragment),
                "the debug log holds a piece of a private key"
            );
        }
    }
}

/// `pem` without the last line of its base64 body: still PEM-shaped, no longer a key.
fn without_last_body_line(pem: &str) -> String {
    let lines: Vec<&str> = pem.lines().collect();
    let end = lines
        .iter()
        .position(|l| l.starts_with("-----END"))
        .expect("a PEM end line");
    let mut kept: Vec<&str> = lines[..end - 1].to_vec();
    kept.extend(&lines[end..]);
    kept.join("\n") + "\n"
}
