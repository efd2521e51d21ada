//! The HTTPS listener (issue 10, items 1, 2, 4, 5) seen by real clients: curl with a test
//! CA as an operator would use it, and a rustls client that records which certificate
//! each handshake was served. The request flow behind TLS is the plain one (proxy_flow.rs
//! runs every flow test over both listeners); these tests are about what TLS adds: SNI
//! certificate selection, the development certificate, protocol versions and ALPN,
//! handshake stalls, `X-Forwarded-Proto`, and certificate replacement under open
//! connections.

use std::fs;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use shardgate_tests::certs::{
    CERTIFICATES, Served, TlsClient, Trust, client_hello, fingerprint_sha256, has_dns_san,
    pem_certificates, upload, upload_body,
};
use shardgate_tests::connection::Closed;
use shardgate_tests::tenant::Tenant;
use shardgate_tests::tls::{Issued, TestCa};
use shardgate_tests::upstream::CountingServer;
use shardgate_tests::{Client, Listener, Options, Shardgate, files_under, id_of, io_drivers, json};

/// Runs `curl -sS` against loopback only (no proxy from the environment, a 10 s cap) with
/// `args`; returns the status code curl reports and the body. Panics when curl is missing
/// or fails (a failed handshake included), with its stderr.
fn curl(args: &[&str]) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--noproxy", "*"])
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("CURL_CA_BUNDLE")
        .output()
        .expect("run curl (tests/run installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl {args:?} failed ({}): {}{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let (body, code) = stdout
        .rsplit_once('\n')
        .expect("curl wrote the status line");
    let code = code
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl's status code {code:?}"));
    (code, body.to_owned())
}

/// `api.localhost:<port>:127.0.0.1`, curl's `--resolve` for a name on the TLS listener.
fn resolve(name: &str, tls: SocketAddr) -> String {
    format!("{name}:{}:127.0.0.1", tls.port())
}

/// The certificate a handshake for `server_name` was served ("" sends no SNI).
fn served(tls: SocketAddr, server_name: &str) -> Served {
    TlsClient::new(Trust::Any)
        .handshake(tls, server_name)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn fingerprint(issued: &Issued) -> String {
    fingerprint_sha256(issued.cert_der())
}

#[test]
fn curl_with_the_test_ca_reaches_the_upstream_through_an_uploaded_certificate() {
    let ca = TestCa::new("shardgate e2e root");
    let cert = ca.server_cert(&["api.localhost"]);
    let dir = tempfile::tempdir().expect("a temp dir for the CA file");
    let ca_file = dir.path().join("ca.pem");
    fs::write(&ca_file, ca.cert_pem()).expect("write the CA file");
    let ca_file = ca_file.to_str().expect("a UTF-8 temp path");
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let tls = sg.expect_tls_addr();
        let up = CountingServer::start("tls-flow");
        let tenant = Tenant::create(&sg, "api");
        tenant.route(
            "tls-flow",
            "/v1/*",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );
        upload(&sg.admin(), "api", &cert);

        // curl --cacert ca.pem --resolve api.localhost:<port>:127.0.0.1 \
        //      https://api.localhost:<port>/v1/chat?x=1 -H "X-API-Key: <key>"
        let url = format!("https://api.localhost:{}/v1/chat?x=1", tls.port());
        let key = format!("X-API-Key: {}", tenant.key);
        let (status, body) = curl(&[
            "--cacert",
            ca_file,
            "--resolve",
            &resolve("api.localhost", tls),
            "-H",
            &key,
            &url,
        ]);
        assert_eq!(status, 200, "[{driver}] {body}");
        assert_eq!(body, "tls-flow GET /v1/chat?x=1", "[{driver}]");
        let seen = up.last();
        assert_eq!(
            seen.header("x-forwarded-proto"),
            Some("https"),
            "[{driver}] {:?}",
            seen.headers
        );
        assert_eq!(
            seen.header("x-forwarded-host"),
            Some(format!("api.localhost:{}", tls.port()).as_str()),
            "[{driver}]"
        );

        // Without the key, auth answers over TLS as it does in plain.
        let (status, _) = curl(&[
            "--cacert",
            ca_file,
            "--resolve",
            &resolve("api.localhost", tls),
            &url,
        ]);
        assert_eq!(status, 401, "[{driver}]");

        // The same gateway through the plain listener says http.
        sg.via(Listener::Plain)
            .client(&tenant)
            .get("/v1/plain")
            .expect_status(200);
        assert_eq!(
            up.last().header("x-forwarded-proto"),
            Some("http"),
            "[{driver}]"
        );
        assert_eq!(up.count(), 2, "[{driver}]");
    }
}

#[test]
fn the_ready_line_names_the_tls_listener_and_off_disables_it() {
    let on = Shardgate::start(Options::new());
    let tls = on.expect_tls_addr();
    assert!(
        on.ready_line().ends_with(&format!(" tls={tls}")),
        "{}",
        on.ready_line()
    );
    assert_eq!(
        tls.ip().to_string(),
        "127.0.0.1",
        "the harness's --tls-listen"
    );

    let off = Shardgate::start(Options::new().tls_listen("off"));
    assert!(
        off.ready_line().ends_with(" tls=off"),
        "{}",
        off.ready_line()
    );
    assert_eq!(off.tls_addr(), None);
    // The plain listener answers as ever.
    let resp = off
        .via(Listener::Plain)
        .client_for("nope.localhost")
        .get("/")
        .expect_status(404);
    assert_eq!(resp.error_json(), json!({"error": "gateway not found"}));
}

#[test]
fn sni_picks_the_exact_name_then_the_wildcard_then_the_default_certificate() {
    let ca = TestCa::new("sni root");
    let exact = ca.server_cert(&["api.localhost"]);
    let wildcard = ca.server_cert(&["*.localhost"]);
    let later_exact = ca.server_cert(&["www.localhost"]);
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let tls = sg.expect_tls_addr();
        let admin = sg.admin();
        let default = served(tls, "");
        assert!(
            has_dns_san(&default.leaf, "*.localhost"),
            "[{driver}] the default certificate is the development one"
        );
        let default = default.fingerprint();
        let development = default.clone();
        let fp = |name: &str| served(tls, name).fingerprint();

        upload(&admin, "api-exact", &exact);
        assert_eq!(fp("api.localhost"), fingerprint(&exact), "[{driver}]");
        assert_eq!(
            fp("other.localhost"),
            default,
            "[{driver}] a name no upload covers gets the default certificate"
        );
        assert_eq!(fp(""), default, "[{driver}] no SNI gets the default");

        let wildcard_id = upload(&admin, "wildcard", &wildcard)["id"]
            .as_str()
            .expect("the created certificate has an id")
            .to_owned();
        assert_eq!(
            fp("api.localhost"),
            fingerprint(&exact),
            "[{driver}] the exact name wins over the wildcard"
        );
        assert_eq!(fp("other.localhost"), fingerprint(&wildcard), "[{driver}]");
        upload(&admin, "www-exact", &later_exact);
        assert_eq!(
            fp("www.localhost"),
            fingerprint(&later_exact),
            "[{driver}] the exact name wins whatever the upload order"
        );
        // Once an upload covers *.<base-domain>, it is the default certificate: the
        // development one is only there while nothing covers the base domain (and a
        // restart would not generate it), so what unmatched names get does not depend on
        // whether the process restarted since.
        let default = fingerprint(&wildcard);
        assert_eq!(
            fp("deep.api.localhost"),
            default,
            "[{driver}] a wildcard covers one label only: the default, not by name"
        );
        assert_eq!(
            fp("nobody.example"),
            default,
            "[{driver}] a name nothing covers gets the default certificate"
        );
        assert_eq!(
            fp(""),
            default,
            "[{driver}] no SNI (an IP address) gets the default certificate"
        );
        let deleted = admin.delete(&format!("/api/v1/certificates/{wildcard_id}"));
        assert_eq!(deleted.status, 204, "[{driver}] {deleted}");
        assert_eq!(
            fp("nobody.example"),
            development,
            "[{driver}] without the wildcard upload the development certificate is the default again"
        );
    }
}

#[test]
fn a_restart_serves_every_name_the_certificate_it_was_served_before() {
    // With an upload that covers *.localhost as the development certificate does: which
    // certificate is the default must not depend on whether the process restarted since.
    let ca = TestCa::new("restart root");
    let wildcard = ca.server_cert(&["*.localhost"]);
    let exact = ca.server_cert(&["api.localhost"]);
    let names = [
        "",
        "nobody.example",
        "localhost",
        "other.localhost",
        "api.localhost",
    ];
    for driver in io_drivers() {
        let dir = tempfile::tempdir().expect("data dir");
        let mut sg = Shardgate::start(Options::new().io_driver(driver).data_dir(dir.path()));
        upload(&sg.admin(), "wildcard", &wildcard);
        upload(&sg.admin(), "api", &exact);
        let tls = sg.expect_tls_addr();
        let before: Vec<String> = names.iter().map(|n| served(tls, n).fingerprint()).collect();
        assert!(sg.terminate().success(), "[{driver}]");

        let again = Shardgate::start(Options::new().io_driver(driver).data_dir(dir.path()));
        let tls = again.expect_tls_addr();
        for (name, before) in names.iter().zip(&before) {
            let after = TlsClient::new(Trust::Any)
                .handshake(tls, name)
                .unwrap_or_else(|e| {
                    panic!("[{driver}] SNI {name:?} was served before the restart, not after: {e}")
                })
                .fingerprint();
            assert_eq!(&after, before, "[{driver}] SNI {name:?}");
        }
    }
}

#[test]
fn tls_12_and_13_are_spoken_with_alpn_h2_or_http_11_and_older_versions_get_no_server_hello() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let tls = sg.expect_tls_addr();
        for (version, expected) in [
            (&rustls::version::TLS12, "TLSv1_2"),
            (&rustls::version::TLS13, "TLSv1_3"),
        ] {
            // A client offering both gets h2 (issue 12); one offering HTTP/1.1 only keeps it.
            for (offered, picked) in [
                (&["h2", "http/1.1"][..], "h2"),
                (&["http/1.1"][..], "http/1.1"),
            ] {
                let client = TlsClient::with(Trust::Any, &[version], offered);
                let served = client
                    .handshake(tls, "api.localhost")
                    .unwrap_or_else(|e| panic!("[{driver}] {expected}: {e}"));
                assert_eq!(served.version, expected, "[{driver}]");
                assert_eq!(
                    served.alpn.as_deref(),
                    Some(picked),
                    "[{driver}] {expected}: ALPN for {offered:?}"
                );
            }
        }

        // A TLS 1.1 ClientHello (no supported_versions extension) is refused: an alert at
        // most, never a ServerHello.
        let mut conn = Client::new(tls).open();
        conn.write(&tls11_client_hello());
        let (closed, answer) = conn.wait_for_close(Duration::from_secs(5));
        assert_eq!(closed, Closed::Yes, "[{driver}] closed after refusing");
        assert!(
            answer.first().is_none_or(|&t| t == 0x15),
            "[{driver}] a TLS 1.1 hello must get an alert or nothing, got {answer:02x?}"
        );
    }
}

/// A ClientHello of TLS 1.1: legacy version 3.2, two CBC suites, no extensions.
fn tls11_client_hello() -> Vec<u8> {
    let mut hello = vec![0x03, 0x02];
    hello.extend([0x5a; 32]);
    hello.push(0);
    hello.extend([0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]);
    hello.extend([0x01, 0x00]);
    let mut handshake = vec![0x01, 0x00, 0x00, hello.len() as u8];
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, handshake.len() as u8];
    record.extend(handshake);
    record
}

/// A client may send its first request in the same segment as its Finished: the bytes
/// the handshake's last read brought behind the Finished must reach HTTP/1.1 or HTTP/2,
/// whichever ALPN chose (here over 4 KiB of them, more than one handshake read).
#[test]
fn a_request_in_the_same_write_as_the_clients_finished_is_answered() {
    let pad = "p".repeat(6000);
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let tls = sg.expect_tls_addr();

        let client = TlsClient::with(Trust::Any, &[&rustls::version::TLS13], &["http/1.1"]);
        let request = format!(
            "GET /first HTTP/1.1\r\nHost: api.localhost\r\nX-Pad: {pad}\r\nConnection: close\r\n\r\n"
        );
        let mut stream = client
            .connect_sending(tls, "api.localhost", request.as_bytes())
            .unwrap_or_else(|e| panic!("[{driver}] handshake: {e}"));
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 404"),
            "[{driver}] HTTP/1.1 answer to the request sent with the Finished: {:?}",
            &answer[..answer.len().min(200)]
        );

        // HTTP/2: the preface, SETTINGS and a GET whose header block is over 5 KiB.
        let client = TlsClient::with(Trust::Any, &[&rustls::version::TLS13], &["h2"]);
        let mut block = vec![0x82, 0x87, 0x84, 0x41, 13];
        block.extend(b"api.localhost");
        // x-pad: 5000 bytes, a literal without indexing (HPACK integer 5000 = 127 + 4873).
        block.extend([0x00, 5]);
        block.extend(b"x-pad");
        block.extend([0x7f, 0x89, 0x26]);
        block.extend(std::iter::repeat_n(b'p', 5000));
        let mut first = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        first.extend([0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        let len = block.len() as u32;
        first.extend(&len.to_be_bytes()[1..]);
        // HEADERS, END_STREAM | END_HEADERS, stream 1.
        first.extend([0x1, 0x5, 0, 0, 0, 1]);
        first.extend(block);
        let mut stream = client
            .connect_sending(tls, "api.localhost", &first)
            .unwrap_or_else(|e| panic!("[{driver}] h2 handshake: {e}"));
        assert_eq!(stream.served().alpn.as_deref(), Some("h2"), "[{driver}]");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        let mut answered = false;
        while !answered && Instant::now() < deadline {
            let mut buf = [0u8; 4096];
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend(&buf[..n]),
            }
            // Walk the frames: a HEADERS frame (type 1) on stream 1 is the answer.
            let mut at = 0;
            while got.len() >= at + 9 {
                let len = u32::from_be_bytes([0, got[at], got[at + 1], got[at + 2]]) as usize;
                let stream_id =
                    u32::from_be_bytes([got[at + 5], got[at + 6], got[at + 7], got[at + 8]]);
                if got[at + 3] == 0x1 && stream_id & 0x7fff_ffff == 1 {
                    answered = true;
                }
                at += 9 + len;
            }
        }
        assert!(
            answered,
            "[{driver}] HTTP/2 answer (HEADERS on stream 1) to the request sent with the Finished; got {} bytes",
            got.len()
        );
    }
}

#[test]
fn a_stalled_handshake_is_closed_after_the_header_timeout() {
    const TIMEOUT: Duration = Duration::from_secs(1);
    for driver in io_drivers() {
        let sg = Shardgate::start(
            Options::new()
                .io_driver(driver)
                .arg("--header-timeout")
                .arg("1s"),
        );
        let tls = sg.expect_tls_addr();
        let hello = client_hello("api.localhost");
        let half = hello[..hello.len() / 2].to_vec();

        // Three stalls at once: nothing at all, half a ClientHello, and a ClientHello
        // trickled a byte every 200 ms (a slowloris on the handshake).
        let stalls: Vec<(&str, thread::JoinHandle<(Closed, Duration)>)> = vec![
            ("silent", {
                thread::spawn(move || {
                    let started = Instant::now();
                    let mut conn = Client::new(tls).open();
                    let (closed, _) = conn.wait_for_close(TIMEOUT * 6);
                    (closed, started.elapsed())
                })
            }),
            ("half a ClientHello", {
                thread::spawn(move || {
                    let started = Instant::now();
                    let mut conn = Client::new(tls).open();
                    conn.write(&half);
                    let (closed, _) = conn.wait_for_close(TIMEOUT * 6);
                    (closed, started.elapsed())
                })
            }),
            ("a trickled ClientHello", {
                let hello = hello.clone();
                thread::spawn(move || {
                    let started = Instant::now();
                    let mut conn = Client::new(tls).open();
                    let mut writer = conn.stream().try_clone().expect("clone the socket");
                    let trickle = thread::spawn(move || {
                        for byte in hello {
                            if writer.write_all(&[byte]).is_err() {
                                break;
                            }
                            thread::sleep(Duration::from_millis(200));
                            if started.elapsed() > TIMEOUT * 6 {
                                break;
                            }
                        }
                    });
                    let (closed, _) = conn.wait_for_close(TIMEOUT * 6);
                    let took = started.elapsed();
                    let _ = conn.stream().shutdown(std::net::Shutdown::Both);
                    let _ = trickle.join();
                    (closed, took)
                })
            }),
        ];
        for (what, stall) in stalls {
            let (closed, took) = stall.join().expect("the stalled client thread");
            assert_eq!(
                closed,
                Closed::Yes,
                "[{driver}] {what}: still open after {took:?}"
            );
            assert!(
                took >= TIMEOUT * 7 / 10 && took <= TIMEOUT * 7 / 2,
                "[{driver}] {what}: closed after {took:?}, expected about the 1 s header timeout"
            );
        }
        served(tls, "api.localhost");
    }
}

#[test]
fn development_certificate_is_made_on_a_fresh_data_dir_kept_0600_and_reused_after_restart() {
    for driver in io_drivers() {
        let dir = tempfile::tempdir().expect("data dir");
        let mut sg = Shardgate::start(Options::new().io_driver(driver).data_dir(dir.path()));
        let tls = sg.expect_tls_addr();
        let dev = served(tls, "");
        assert!(
            has_dns_san(&dev.leaf, "localhost") && has_dns_san(&dev.leaf, "*.localhost"),
            "[{driver}] the development certificate names localhost and *.localhost"
        );
        assert_eq!(
            served(tls, "api.localhost").fingerprint(),
            dev.fingerprint(),
            "[{driver}] and is what any *.localhost name gets"
        );

        // On disk under <data-dir>/tls/: every file with a private key is 0600, and the
        // certificate served is one of the files there.
        let files = files_under(&dir.path().join("tls"));
        let keys: Vec<_> = files
            .iter()
            .filter(|(_, bytes)| String::from_utf8_lossy(bytes).contains("PRIVATE KEY"))
            .collect();
        assert!(
            !keys.is_empty(),
            "[{driver}] a private key under tls/: {:?}",
            files.iter().map(|(p, _)| p).collect::<Vec<_>>()
        );
        for (path, _) in &keys {
            let mode = fs::metadata(path).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "[{driver}] {} is {mode:o}", path.display());
        }
        assert!(
            files.iter().any(|(_, bytes)| {
                pem_certificates(&String::from_utf8_lossy(bytes))
                    .iter()
                    .any(|der| der.as_ref() == dev.leaf.as_slice())
            }),
            "[{driver}] the served development certificate is kept under tls/"
        );

        // curl -k --resolve api.localhost:<port>:127.0.0.1 https://api.localhost:<port>/...
        let up = CountingServer::start("dev");
        let tenant = Tenant::create(&sg, "api");
        tenant.route(
            "dev",
            "/v1/*",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );
        let key = format!("X-API-Key: {}", tenant.key);
        let url = format!("https://api.localhost:{}/v1/models", tls.port());
        let (status, body) = curl(&[
            "-k",
            "--resolve",
            &resolve("api.localhost", tls),
            "-H",
            &key,
            &url,
        ]);
        assert_eq!(
            (status, body.as_str()),
            (200, "dev GET /v1/models"),
            "[{driver}]"
        );

        assert!(sg.terminate().success(), "[{driver}]");
        let again = Shardgate::start(Options::new().io_driver(driver).data_dir(dir.path()));
        assert_eq!(
            served(again.expect_tls_addr(), "").fingerprint(),
            dev.fingerprint(),
            "[{driver}] the restart serves the same development certificate"
        );
    }
}

#[test]
fn replacing_a_certificate_keeps_open_connections_and_new_ones_get_the_new_certificate() {
    let ca = TestCa::new("rotation root");
    let old = ca.server_cert(&["api.localhost"]);
    let new = ca.server_cert(&["api.localhost"]);
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let tls = sg.expect_tls_addr();
        let up = CountingServer::start("rotated");
        let tenant = Tenant::create(&sg, "api");
        tenant.route(
            "rotated",
            "/r/*",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );
        let id = id_of(&upload(&sg.admin(), "api", &old));
        let by_ca = || TlsClient::new(Trust::Roots(vec![ca.cert_pem()]));
        let client = Client::new(tls)
            .host(&format!("api.localhost:{}", tls.port()))
            .tls(by_ca())
            .header("X-API-Key", &tenant.key);

        let mut open = client.keep_alive();
        assert_eq!(open.get("/r/before").status, 200, "[{driver}]");
        sg.admin()
            .put_json(&format!("{CERTIFICATES}/{id}"), &upload_body("api", &new))
            .expect_status(200);
        for i in 0..3 {
            let resp = open
                .try_request("GET", &format!("/r/after/{i}"), &[], b"")
                .unwrap_or_else(|e| panic!("[{driver}] the open connection broke: {e}"));
            assert_eq!(resp.status, 200, "[{driver}] {resp}");
        }
        let kept = open.served().expect("a TLS connection");
        assert_eq!(
            kept.fingerprint(),
            fingerprint(&old),
            "[{driver}] the open one still runs on its handshake"
        );

        // A client without the old session (one that resumed it would see no certificate
        // at all: resumption skips it).
        let mut fresh = client.clone().tls(by_ca()).keep_alive();
        assert_eq!(
            fresh.served().expect("a TLS connection").fingerprint(),
            fingerprint(&new),
            "[{driver}] a new connection gets the new certificate"
        );
        assert_eq!(fresh.get("/r/fresh").status, 200, "[{driver}]");
        assert_eq!(up.count(), 5, "[{driver}]");
    }
}

#[test]
fn handshakes_in_progress_count_against_max_connections_and_free_their_place() {
    for driver in io_drivers() {
        let sg = Shardgate::start(
            Options::new()
                .io_driver(driver)
                .workers(1)
                .arg("--max-connections")
                .arg("1"),
        );
        let tls = sg.expect_tls_addr();
        // A client that connects and never says hello holds the worker's only place.
        let stalled = std::net::TcpStream::connect(tls).expect("connect");
        thread::sleep(Duration::from_millis(300));
        let refused = TlsClient::new(Trust::Any).handshake(tls, "api.localhost");
        assert!(
            refused.is_err(),
            "[{driver}] a second connection must be closed unanswered while the first \
             handshake holds the only place"
        );
        // Once the stalled client goes, its place is free again.
        drop(stalled);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match TlsClient::new(Trust::Any).handshake(tls, "api.localhost") {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("[{driver}] the place was never given back: {e}"),
            }
        }
    }
}
