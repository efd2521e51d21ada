//! HTTPS upstreams with per-upstream `tls` settings ("TLS on both sides", item 4), against
//! the real binary under every io driver: a target with `"protocol": "https"` is reached
//! over TLS, verified against the upstream's `tls.ca_pem` (or the system's roots) for
//! `tls.server_name` (or the target's host); certificate errors are 502s that name the
//! cause; `verify: false` is an explicit opt-out; mTLS presents `tls.client_cert_pem` /
//! `tls.client_key_pem`, and that key never comes back out of the admin API, its errors or
//! the logs; TLS connections are pooled like plain ones, but never across upstreams whose
//! TLS settings differ.
//!
//! Every certificate is made by the test ([`TestCa`], validity computed from now) and every
//! upstream is a [`TlsUpstream`] on a free loopback port.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use shardgate_tests::tenant::Tenant;
use shardgate_tests::tls::{Issued, TestCa, TlsUpstream, Validity};
use shardgate_tests::upstream::target_json;
use shardgate_tests::{Options, Resp, Shardgate, Value, id_of, io_drivers, json, list_all};

const REDACTED: &str = "<redacted>";

fn start(driver: &str) -> Shardgate {
    Shardgate::start(Options::new().io_driver(driver))
}

/// Routes `<prefix>/*` of `tenant` to `up` through an upstream named `name` with these
/// `tls` settings; returns the upstream's id.
fn route_tls(tenant: &Tenant, name: &str, prefix: &str, up: &TlsUpstream, tls: Value) -> String {
    tenant
        .route(
            name,
            &format!("{prefix}/*"),
            vec![up.target()],
            json!({"tls": tls}),
            json!({}),
        )
        .upstream_id
}

/// A 502 whose `error` names `cause`.
#[track_caller]
fn assert_bad_gateway(resp: &Resp, cause: &str, what: &str) {
    assert_eq!(resp.status, 502, "{what}: {resp}");
    let error = resp.error();
    assert!(
        error.contains(cause),
        "{what}: the 502 must name the cause {cause:?}, got {error:?}"
    );
}

/// `text` holds no piece of `key`'s private key.
#[track_caller]
fn assert_no_key(text: &str, key: &Issued, place: &str) {
    for fragment in key.key_fragments() {
        let shown: String = fragment.chars().take(12).collect();
        assert!(
            !text.contains(&fragment),
            "{place} contains the client private key (a line starting {shown:?})"
        );
    }
}

#[test]
fn https_upstream_with_its_ca_answers_200() {
    let ca = TestCa::new("upstream-ca");
    let cert = ca.server_cert(&["127.0.0.1"]);
    for driver in io_drivers() {
        let up = TlsUpstream::start("secure", &cert);
        let sg = start(driver);
        let tenant = Tenant::create(&sg, "secure");
        route_tls(
            &tenant,
            "secure",
            "/tls",
            &up,
            json!({"ca_pem": ca.cert_pem()}),
        );

        let mut conn = tenant.client().open();
        let first = conn.get("/tls/a");
        assert_eq!(first.status, 200, "[{driver}] {first}");
        assert_eq!(first.text(), "secure GET /tls/a", "[{driver}]");
        let second = conn.get("/tls/b?x=1");
        assert_eq!(second.status, 200, "[{driver}] {second}");
        assert_eq!(second.text(), "secure GET /tls/b?x=1", "[{driver}]");

        assert_eq!(
            up.count(),
            2,
            "[{driver}] both requests reached the upstream"
        );
        assert_eq!(
            up.connections(),
            1,
            "[{driver}] the second request reused the pooled TLS connection: {:?}",
            up.handshakes()
        );
        assert_eq!(up.handshakes().len(), 1, "[{driver}] one handshake");
    }
}

#[test]
fn server_name_is_sent_and_verified() {
    let ca = TestCa::new("upstream-ca");
    // Valid for the DNS name only: the target's host (127.0.0.1) does not match it.
    let cert = ca.server_cert(&["upstream.test"]);
    for driver in io_drivers() {
        let up = TlsUpstream::start("named", &cert);
        let sg = start(driver);
        let tenant = Tenant::create(&sg, "named");
        route_tls(
            &tenant,
            "by-ip",
            "/by-ip",
            &up,
            json!({"ca_pem": ca.cert_pem()}),
        );
        route_tls(
            &tenant,
            "by-name",
            "/by-name",
            &up,
            json!({"ca_pem": ca.cert_pem(), "server_name": "upstream.test"}),
        );

        // Without server_name the target's host is verified, and the certificate is not
        // valid for 127.0.0.1. (First, so no pooled connection exists yet.)
        let mismatch = tenant.client().get("/by-ip/x");
        assert_bad_gateway(&mismatch, "name mismatch", &format!("[{driver}] by IP"));
        assert_eq!(up.count(), 0, "[{driver}] nothing was sent to the upstream");

        let ok = tenant.client().get("/by-name/x");
        assert_eq!(ok.status, 200, "[{driver}] {ok}");
        assert_eq!(ok.text(), "named GET /by-name/x", "[{driver}]");
        let handshakes = up.handshakes();
        assert_eq!(handshakes.len(), 1, "[{driver}] {handshakes:?}");
        assert_eq!(
            handshakes[0].server_name.as_deref(),
            Some("upstream.test"),
            "[{driver}] the SNI is tls.server_name"
        );
    }
}

#[test]
fn wrong_ca_is_502_unknown_ca() {
    let (ca, other) = (TestCa::new("upstream-ca"), TestCa::new("unrelated-ca"));
    let cert = ca.server_cert(&["127.0.0.1"]);
    for driver in io_drivers() {
        let up = TlsUpstream::start("wrong-ca", &cert);
        let sg = start(driver);
        let tenant = Tenant::create(&sg, "wrongca");
        route_tls(
            &tenant,
            "other",
            "/other",
            &up,
            json!({"ca_pem": other.cert_pem()}),
        );
        // No ca_pem: the system's root store, which never trusts a test CA.
        route_tls(&tenant, "system", "/system", &up, json!({}));

        let resp = tenant.client().get("/other/x");
        assert_bad_gateway(&resp, "unknown CA", &format!("[{driver}] another CA"));
        let resp = tenant.client().get("/system/x");
        assert_bad_gateway(&resp, "unknown CA", &format!("[{driver}] system roots"));
        assert_eq!(up.count(), 0, "[{driver}] nothing was sent to the upstream");
        assert!(
            up.handshakes().is_empty(),
            "[{driver}] no handshake completed"
        );
    }
}

#[test]
fn expired_certificate_is_502_expired() {
    let ca = TestCa::new("upstream-ca");
    let cert = ca.server_cert_valid(&["127.0.0.1"], Validity::expired());
    for driver in io_drivers() {
        let up = TlsUpstream::start("expired", &cert);
        let sg = start(driver);
        let tenant = Tenant::create(&sg, "expired");
        route_tls(
            &tenant,
            "expired",
            "/tls",
            &up,
            json!({"ca_pem": ca.cert_pem()}),
        );

        let resp = tenant.client().get("/tls/x");
        assert_bad_gateway(&resp, "expired", &format!("[{driver}]"));
        assert_eq!(up.count(), 0, "[{driver}] nothing was sent to the upstream");
    }
}

#[test]
fn verify_false_accepts_any_certificate() {
    let stranger = TestCa::new("stranger-ca");
    // Self-signed, for another name: unknown issuer and name mismatch at once.
    let self_signed = Issued::self_signed(&["elsewhere.test"]);
    let expired = stranger.server_cert_valid(&["elsewhere.test"], Validity::expired());
    for driver in io_drivers() {
        let lax = TlsUpstream::start("self-signed", &self_signed);
        let stale = TlsUpstream::start("stale", &expired);
        let sg = start(driver);
        let tenant = Tenant::create(&sg, "lax");
        route_tls(&tenant, "checked", "/checked", &lax, json!({}));
        route_tls(&tenant, "lax", "/lax", &lax, json!({"verify": false}));
        route_tls(&tenant, "stale", "/stale", &stale, json!({"verify": false}));

        // Verification is on by default: the same server is refused without the opt-out.
        let refused = tenant.client().get("/checked/x");
        assert_bad_gateway(&refused, "unknown CA", &format!("[{driver}] verified"));

        let ok = tenant.client().get("/lax/x");
        assert_eq!(ok.status, 200, "[{driver}] {ok}");
        assert_eq!(ok.text(), "self-signed GET /lax/x", "[{driver}]");
        let ok = tenant.client().get("/stale/x");
        assert_eq!(
            ok.status, 200,
            "[{driver}] an expired certificate too: {ok}"
        );
        assert_eq!(ok.text(), "stale GET /stale/x", "[{driver}]");
    }
}

#[test]
fn mtls_upstream_gets_the_client_certificate() {
    let (server_ca, client_ca) = (TestCa::new("upstream-ca"), TestCa::new("client-ca"));
    let cert = server_ca.server_cert(&["127.0.0.1"]);
    let client = client_ca.client_cert("shardgate-proxy");
    for driver in io_drivers() {
        let up = TlsUpstream::builder("mtls", &cert)
            .require_client_cert(&client_ca)
            .start();
        let sg = start(driver);
        let tenant = Tenant::create(&sg, "mtls");
        route_tls(
            &tenant,
            "anonymous",
            "/anonymous",
            &up,
            json!({"ca_pem": server_ca.cert_pem()}),
        );
        route_tls(
            &tenant,
            "mtls",
            "/mtls",
            &up,
            json!({
                "ca_pem": server_ca.cert_pem(),
                "client_cert_pem": client.cert_pem(),
                "client_key_pem": client.key_pem(),
            }),
        );

        // Without a client certificate the upstream refuses the handshake. (First, so no
        // pooled connection exists yet.)
        let refused = tenant.client().get("/anonymous/x");
        assert_bad_gateway(&refused, "TLS", &format!("[{driver}] no client cert"));
        assert_eq!(
            up.count(),
            0,
            "[{driver}] nothing was served without a cert"
        );

        let ok = tenant.client().get("/mtls/x");
        assert_eq!(ok.status, 200, "[{driver}] {ok}");
        assert_eq!(ok.text(), "mtls GET /mtls/x", "[{driver}]");
        let handshakes = up.handshakes();
        assert!(!handshakes.is_empty(), "[{driver}]");
        for handshake in &handshakes {
            assert_eq!(
                handshake.client_cert.as_deref(),
                Some(client.cert_der()),
                "[{driver}] the upstream saw tls.client_cert_pem"
            );
        }
    }
}

#[test]
fn client_key_is_never_returned_or_logged() {
    let (server_ca, client_ca) = (TestCa::new("upstream-ca"), TestCa::new("client-ca"));
    let cert = server_ca.server_cert(&["127.0.0.1"]);
    let client = client_ca.client_cert("shardgate-proxy");
    let tls = json!({
        "ca_pem": server_ca.cert_pem(),
        "client_cert_pem": client.cert_pem(),
        "client_key_pem": client.key_pem(),
    });
    for driver in io_drivers() {
        // A fresh handshake per request, so each one shows the key in use.
        let up = TlsUpstream::builder("keyed", &cert)
            .require_client_cert(&client_ca)
            .close_after_each_response()
            .start();
        let sg = Shardgate::start(Options::new().io_driver(driver).log("debug"));
        let tenant = Tenant::create(&sg, "keyed");
        let admin = &tenant.admin;
        let upstreams = tenant.collection("upstreams");

        let created = admin
            .post_json(
                &upstreams,
                &json!({"name": "keyed", "targets": [up.target()], "tls": tls}),
            )
            .expect_status(201);
        assert_no_key(&created.text(), &client, &format!("[{driver}] the 201"));
        assert_eq!(
            created.json()["tls"]["client_key_pem"],
            REDACTED,
            "[{driver}]"
        );
        let upstream_id = id_of(&created.json());
        let item = tenant.item("upstreams", &upstream_id);
        let service_id = tenant.service("keyed", &upstream_id, json!({}));
        tenant.rule(json!({"path": "/keyed/*", "service_id": service_id}));

        let got = admin.get(&item).expect_status(200);
        assert_no_key(&got.text(), &client, &format!("[{driver}] GET"));
        let entity = got.json();
        assert_eq!(entity["tls"]["client_key_pem"], REDACTED, "[{driver}]");
        assert_eq!(
            entity["tls"]["client_cert_pem"],
            client.cert_pem(),
            "[{driver}] the certificate is not a secret"
        );
        let listed = admin.get(&upstreams).expect_status(200);
        assert_no_key(&listed.text(), &client, &format!("[{driver}] the list"));
        let listed = list_all(admin, &upstreams, "upstreams");
        assert_eq!(listed[0]["tls"]["client_key_pem"], REDACTED, "[{driver}]");

        // An upstream without a key shows none (absent or null), not "<redacted>".
        let keyless = tenant.upstream(
            "keyless",
            vec![up.target()],
            json!({"tls": {"ca_pem": server_ca.cert_pem()}}),
        );
        let keyless = admin
            .get(&tenant.item("upstreams", &keyless))
            .expect_status(200)
            .json();
        assert!(
            keyless["tls"]["client_key_pem"].is_null(),
            "[{driver}] no key set: {keyless}"
        );

        let ok = tenant.client().get("/keyed/1");
        assert_eq!(ok.status, 200, "[{driver}] {ok}");

        // GET → edit → PUT with "<redacted>" keeps the stored key.
        let mut edited = entity.clone();
        edited["tags"] = json!(["edited"]);
        let put = admin.put_json(&item, &edited).expect_status(200);
        assert_no_key(&put.text(), &client, &format!("[{driver}] the PUT answer"));
        assert_eq!(put.json()["tls"]["client_key_pem"], REDACTED, "[{driver}]");
        assert_eq!(put.json()["tags"], json!(["edited"]), "[{driver}]");
        let ok = tenant.client().get("/keyed/2");
        assert_eq!(
            ok.status, 200,
            "[{driver}] mTLS still works after the PUT: {ok}"
        );
        let handshakes = up.handshakes();
        assert_eq!(handshakes.len(), 2, "[{driver}] {handshakes:?}");
        assert_eq!(
            handshakes[1].client_cert.as_deref(),
            Some(client.cert_der()),
            "[{driver}] the kept key signed the second handshake"
        );

        // Refused writes that carry the key never echo it.
        let mut no_cert = json!({"name": "no-cert", "targets": [up.target()], "tls": tls});
        if let Some(settings) = no_cert["tls"].as_object_mut() {
            settings.remove("client_cert_pem");
        }
        let mut bad_version = edited.clone();
        bad_version["tls"]["client_key_pem"] = json!(client.key_pem());
        bad_version["tls"]["min_version"] = json!("1.1");
        let mut bad_cert = bad_version.clone();
        bad_cert["tls"]["min_version"] = json!("1.2");
        bad_cert["tls"]["client_cert_pem"] = json!("not a certificate");
        for (method, path, body) in [
            ("POST", &upstreams, &no_cert),
            ("PUT", &item, &bad_version),
            ("PUT", &item, &bad_cert),
        ] {
            let resp = admin.send_json(method, path, body);
            assert_eq!(resp.status, 400, "[{driver}] {method} {path}: {resp}");
            assert_no_key(&resp.text(), &client, &format!("[{driver}] a 400"));
        }
        // A key that does not parse is not echoed either, whatever the answer.
        let mut garbled = json!({"name": "garbled", "targets": [up.target()], "tls": tls});
        garbled["tls"]["client_key_pem"] = json!(
            "-----BEGIN PRIVATE KEY-----\nTOPSECRETxNOTxAxKEYxTOPSECRET\n-----END PRIVATE KEY-----\n"
        );
        let resp = admin.post_json(&upstreams, &garbled);
        assert!(
            !resp.text().contains("TOPSECRETxNOTxAxKEY"),
            "[{driver}] an unparsable key is echoed: {}",
            resp.status
        );

        let log = sg.stderr_contents();
        assert!(
            !log.trim().is_empty(),
            "[{driver}] --log debug wrote nothing, so the log check below would be vacuous"
        );
        assert_no_key(&log, &client, &format!("[{driver}] stderr at --log debug"));
        assert!(
            !log.contains("TOPSECRETxNOTxAxKEY"),
            "[{driver}] stderr holds the unparsable key"
        );
    }
}

#[test]
fn invalid_tls_settings_are_400_naming_the_field() {
    let (ca, client_ca) = (TestCa::new("upstream-ca"), TestCa::new("client-ca"));
    let client = client_ca.client_cert("shardgate-proxy");
    let sg = Shardgate::start(Options::new());
    let tenant = Tenant::create(&sg, "invalid");
    let upstreams = tenant.collection("upstreams");
    let body = |tls: Value| {
        json!({
            "name": "checked",
            "targets": [target_json(443, json!({"protocol": "https"}))],
            "tls": tls,
        })
    };

    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "ca_pem that is not PEM",
            json!({"ca_pem": "not a certificate"}),
            "tls.ca_pem",
        ),
        (
            "ca_pem with no certificate in it",
            json!({"ca_pem": client.key_pem()}),
            "tls.ca_pem",
        ),
        (
            "ca_pem whose certificate does not parse",
            json!({"ca_pem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}),
            "tls.ca_pem",
        ),
        (
            "a client key without its certificate",
            json!({"client_key_pem": client.key_pem()}),
            "tls.client_cert_pem",
        ),
        (
            "a client certificate without its key",
            json!({"client_cert_pem": client.cert_pem()}),
            "tls.client_key_pem",
        ),
        (
            "a client certificate that does not parse",
            json!({"client_cert_pem": "not a certificate", "client_key_pem": client.key_pem()}),
            "tls.client_cert_pem",
        ),
        (
            "min_version 1.1",
            json!({"min_version": "1.1"}),
            "tls.min_version",
        ),
        (
            "min_version 1.4",
            json!({"min_version": "1.4"}),
            "tls.min_version",
        ),
        (
            "min_version as a number",
            json!({"min_version": 1.3}),
            "tls.min_version",
        ),
        ("verify as a string", json!({"verify": "yes"}), "tls.verify"),
    ];
    for (what, tls, field) in &cases {
        let resp = tenant.admin.post_json(&upstreams, &body(tls.clone()));
        assert_eq!(resp.status, 400, "POST {what}: {resp}");
        let error = resp.error();
        assert!(
            error.contains(field),
            "POST {what}: the 400 must name {field}, got {error:?}"
        );
    }
    assert!(
        list_all(&tenant.admin, &upstreams, "upstreams").is_empty(),
        "no refused upstream was stored"
    );

    // Valid settings are stored and shown; updates are checked like creates.
    let valid = json!({
        "verify": true,
        "ca_pem": ca.cert_pem(),
        "server_name": "upstream.test",
        "min_version": "1.3",
    });
    let created = tenant
        .admin
        .post_json(&upstreams, &body(valid.clone()))
        .expect_status(201)
        .json();
    for field in ["verify", "ca_pem", "server_name", "min_version"] {
        assert_eq!(created["tls"][field], valid[field], "tls.{field} is shown");
    }
    let item = tenant.item("upstreams", &id_of(&created));
    for (what, tls, field) in &cases {
        let resp = tenant.admin.put_json(&item, &body(tls.clone()));
        assert_eq!(resp.status, 400, "PUT {what}: {resp}");
        let error = resp.error();
        assert!(
            error.contains(field),
            "PUT {what}: the 400 must name {field}, got {error:?}"
        );
    }
    let kept = tenant.admin.get(&item).expect_status(200).json();
    assert_eq!(kept["tls"], created["tls"], "refused PUTs changed nothing");
}

#[test]
fn other_handshake_failures_are_502_naming_tls() {
    let ca = TestCa::new("upstream-ca");
    let cert = ca.server_cert(&["127.0.0.1"]);
    for driver in io_drivers() {
        let old = TlsUpstream::builder("tls12", &cert).tls12_only().start();
        let plain = PlainHttpListener::start();
        let sg = start(driver);
        let tenant = Tenant::create(&sg, "handshake");
        route_tls(
            &tenant,
            "tls13-only",
            "/tls13",
            &old,
            json!({"ca_pem": ca.cert_pem(), "min_version": "1.3"}),
        );
        route_tls(
            &tenant,
            "tls12-ok",
            "/tls12",
            &old,
            json!({"ca_pem": ca.cert_pem()}),
        );
        tenant.route(
            "plain",
            "/plain/*",
            vec![target_json(plain.port, json!({"protocol": "https"}))],
            json!({"tls": {"ca_pem": ca.cert_pem()}}),
            json!({}),
        );

        let resp = tenant.client().get("/tls13/x");
        assert_bad_gateway(&resp, "TLS", &format!("[{driver}] min_version 1.3"));
        assert_eq!(old.count(), 0, "[{driver}]");
        // The default minimum is 1.2, so the same server is fine without min_version.
        let ok = tenant.client().get("/tls12/x");
        assert_eq!(ok.status, 200, "[{driver}] {ok}");
        assert_eq!(
            old.handshakes()[0].version,
            "TLSv1_2",
            "[{driver}] negotiated TLS 1.2"
        );

        let resp = tenant.client().get("/plain/x");
        assert_bad_gateway(&resp, "TLS", &format!("[{driver}] a plain HTTP server"));
    }
}

#[test]
fn a_connection_verified_for_a_lax_upstream_is_not_reused_for_a_strict_one() {
    let (ca, other) = (TestCa::new("upstream-ca"), TestCa::new("unrelated-ca"));
    let cert = ca.server_cert(&["127.0.0.1"]);
    for driver in io_drivers() {
        let up = TlsUpstream::start("shared", &cert);
        let sg = start(driver);
        let tenant = Tenant::create(&sg, "shared");
        route_tls(&tenant, "lax", "/lax", &up, json!({"verify": false}));
        route_tls(
            &tenant,
            "strict",
            "/strict",
            &up,
            json!({"ca_pem": other.cert_pem()}),
        );

        // One client connection, so both requests are on one worker and its pool.
        let mut conn = tenant.client().open();
        let ok = conn.get("/lax/x");
        assert_eq!(ok.status, 200, "[{driver}] {ok}");
        let strict = conn.get("/strict/x");
        assert_bad_gateway(
            &strict,
            "unknown CA",
            &format!("[{driver}] the lax upstream's pooled connection is not the strict one's"),
        );
        assert_eq!(up.count(), 1, "[{driver}] only the lax request was served");
    }
}

/// A TCP server on a free loopback port that answers whatever arrives with a plaintext
/// HTTP response and closes: what a TLS client meets when `https` points at plain HTTP.
/// Stopped on drop.
struct PlainHttpListener {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl PlainHttpListener {
    fn start() -> PlainHttpListener {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a plain HTTP listener");
        let port = listener.local_addr().expect("its address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(mut stream) = stream else { continue };
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut hello = [0u8; 512];
                    let _ = stream.read(&mut hello);
                    let _ = stream.write_all(
                        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                }
            })
        };
        PlainHttpListener {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for PlainHttpListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
