//! Targets with `"protocol": "https"` of an upstream without `tls` settings are reached
//! over TLS, verified against the system's root store (issue 10, item 4; per-upstream
//! settings are `proxy_https_upstream.rs`). The tests make the "system" store a test CA with
//! `SSL_CERT_FILE`, which rustls-native-certs honours, and run a real rustls HTTPS server on
//! loopback (`shardgate_tests::tls`).

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use shardgate_tests::tenant::Tenant;
use shardgate_tests::tls::{TestCa, TlsUpstream, Validity};
use shardgate_tests::{Options, Resp, Shardgate, io_drivers, json};

/// A shardgate whose root store is exactly `ca` (written to a file in a temp dir kept alive
/// by the returned guard).
fn trusting(ca: &TestCa, driver: &str) -> (Shardgate, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temp dir for the CA file");
    let path: PathBuf = dir.path().join("roots.pem");
    fs::write(&path, ca.cert_pem()).expect("write the CA file");
    let sg = Shardgate::start(
        Options::new()
            .io_driver(driver)
            .env("SSL_CERT_FILE", path.as_os_str())
            .env("SSL_CERT_DIR", dir.path().as_os_str()),
    );
    (sg, dir)
}

/// A 502 whose `error` names `cause`.
#[track_caller]
fn assert_bad_gateway(resp: &Resp, cause: &str, what: &str) {
    assert_eq!(resp.status, 502, "{what}: {resp}");
    let error = resp.error();
    assert!(
        error.contains(cause),
        "{what}: the 502 must name {cause:?}, got {error:?}"
    );
}

#[test]
fn an_https_target_with_a_trusted_certificate_answers_and_its_connection_is_pooled() {
    let ca = TestCa::new("shardgate test root");
    let up = TlsUpstream::start("secure", &ca.server_cert(&["127.0.0.1"]));
    for driver in io_drivers() {
        let (sg, _roots) = trusting(&ca, driver);
        let tenant = Tenant::create(&sg, "tls");
        tenant.route("secure", "/s/*", vec![up.target()], json!({}), json!({}));

        let before = up.connections();
        let mut conn = tenant.client().open();
        let first = conn.get("/s/one");
        assert_eq!(first.status, 200, "[{driver}] {first}");
        assert_eq!(first.text(), "secure GET /s/one", "[{driver}]");
        let second = conn.get("/s/two");
        assert_eq!(second.text(), "secure GET /s/two", "[{driver}]");
        assert_eq!(
            up.connections() - before,
            1,
            "[{driver}] both requests went over one pooled TLS connection"
        );
        let seen = up.requests();
        let last = seen.last().expect("the upstream saw the request");
        assert_eq!(
            last.header("x-forwarded-proto"),
            Some("http"),
            "[{driver}] the client side was plain"
        );
    }
}

#[test]
fn certificate_errors_are_502_naming_the_cause() {
    let ca = TestCa::new("trusted root");
    let stranger = TestCa::new("unknown root");
    let foreign = TlsUpstream::start("foreign", &stranger.server_cert(&["127.0.0.1"]));
    let misnamed = TlsUpstream::start("misnamed", &ca.server_cert(&["upstream.test"]));
    let expired = TlsUpstream::start(
        "expired",
        &ca.server_cert_valid(&["127.0.0.1"], Validity::expired()),
    );
    for driver in io_drivers() {
        let (sg, _roots) = trusting(&ca, driver);
        let tenant = Tenant::create(&sg, "bad");
        tenant.route(
            "foreign",
            "/f/*",
            vec![foreign.target()],
            json!({}),
            json!({}),
        );
        tenant.route(
            "misnamed",
            "/m/*",
            vec![misnamed.target()],
            json!({}),
            json!({}),
        );
        tenant.route(
            "expired",
            "/e/*",
            vec![expired.target()],
            json!({}),
            json!({}),
        );

        let resp = tenant.client().get("/f/x");
        assert_bad_gateway(&resp, "unknown CA", &format!("[{driver}] foreign CA"));
        let resp = tenant.client().get("/m/x");
        assert_bad_gateway(&resp, "name mismatch", &format!("[{driver}] wrong name"));
        let resp = tenant.client().get("/e/x");
        assert_bad_gateway(&resp, "expired", &format!("[{driver}] expired"));
        assert_eq!(
            foreign.count() + misnamed.count() + expired.count(),
            0,
            "[{driver}] no request crossed an unverified connection"
        );
    }
}

#[test]
fn a_target_with_a_bad_certificate_is_passed_over_for_a_good_one() {
    let ca = TestCa::new("trusted root");
    let stranger = TestCa::new("unknown root");
    let bad = TlsUpstream::start("bad", &stranger.server_cert(&["127.0.0.1"]));
    let good = TlsUpstream::start("good", &ca.server_cert(&["127.0.0.1"]));
    for driver in io_drivers() {
        let (sg, _roots) = trusting(&ca, driver);
        let tenant = Tenant::create(&sg, "pair");
        tenant.route(
            "pair",
            "/p/*",
            vec![bad.target(), good.target()],
            json!({}),
            json!({}),
        );
        for i in 0..4 {
            // POST too: a failed handshake sent nothing, so any method may move on.
            let resp = tenant
                .client()
                .request("POST", &format!("/p/{i}"), &[], b"{}");
            assert_eq!(resp.status, 200, "[{driver}] request {i}: {resp}");
            assert_eq!(resp.text(), format!("good POST /p/{i}"), "[{driver}]");
        }
        assert!(
            bad.wait_for_handshake_failures(1, Duration::from_secs(2)),
            "[{driver}] the bad target was tried"
        );
    }
}
