//! Security defects found by trying the proxy as an attacker would (issue 8), each pinned
//! by a test under both io drivers: path confusion against a real nginx upstream, gateway
//! keys leaking upstream, an unsolicited `101`, and rule paths that can never match.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::thread;
use std::time::Duration;

use shardgate_tests::connection::find;
use shardgate_tests::nginx::Nginx;
use shardgate_tests::tenant::Tenant;
use shardgate_tests::upstream::{CountingServer, Seen};
use shardgate_tests::{Options, Shardgate, io_drivers, json};

/// nginx with default URI handling: `/admin/` is the secret, everything else public. Each
/// answer names the request-target nginx received, so a test sees what was forwarded.
const NGINX_SITE: &str = r#"
    location /admin/ { return 200 "ADMIN-SECRET $request_uri"; }
    location / { return 200 "PUBLIC $request_uri"; }
"#;

/// A public `/*` rule and a key-protected `/admin/*` rule, both to one nginx service.
fn public_site_with_protected_admin(sg: &Shardgate, nginx: &Nginx) -> Tenant {
    let tenant = Tenant::create(sg, "site");
    let route = tenant.route(
        "site",
        "/*",
        vec![nginx.target()],
        json!({}),
        json!({"public": true}),
    );
    tenant.rule(json!({"path": "/admin/*", "service_id": route.service_id}));
    tenant.rule(json!({"path": "/files/%5Bid%5D/*", "service_id": route.service_id}));
    tenant
}

#[test]
fn path_confusion_cannot_reach_a_key_protected_rule_behind_nginx() {
    let nginx = Nginx::start(NGINX_SITE);
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let tenant = public_site_with_protected_admin(&sg, &nginx);

        // Spellings of /admin/x that nginx serves as /admin/x: the protected rule's.
        let protected = [
            "/admin/x",
            "//admin/x",
            "///admin/x",
            "/.//admin/x",
            "/./admin/x",
            "/public/../admin/x",
            "/public//../admin/x",
            "/%2e/admin/x",
            "/%2E%2E/admin/x",
            "/x/%2e%2e/admin/x",
            "/%61dmin/x",
            "/adm%69n/x",
            "/admin/./x",
            "//admin//x",
            "/admin",
            // A character that may be sent raw or escaped has one spelling for the router.
            "/files/[id]/x",
            "/files/%5bid%5D/x",
        ];
        for target in protected {
            let resp = tenant.anonymous().get(target);
            assert_eq!(
                resp.status, 401,
                "[{driver}] {target} without a key must meet the /admin/* rule: {resp}"
            );
            assert!(!resp.text().contains("ADMIN-SECRET"), "[{driver}] {target}");
        }

        // Shapes whose meaning depends on the upstream: refused before routing.
        let refused = [
            "/%2Fadmin/x",
            "/%2F%2Fadmin/x",
            "/admin%2Fx",
            "/admin%2fx",
            "/x/..%2Fadmin/x",
            "/x/..%2fadmin/x",
            "/admin%5Cx",
            "/x/..%5Cadmin/x",
            "/public/..;/admin/x",
            "/public/..%3B/admin/x",
            "/admin%zz/x",
            "/admin%00/x",
        ];
        for target in refused {
            let resp = tenant.anonymous().get(target);
            assert_eq!(resp.status, 400, "[{driver}] {target}: {resp}");
            assert!(!resp.error().is_empty(), "[{driver}] {target} says why");
            assert!(!resp.text().contains("ADMIN-SECRET"), "[{driver}] {target}");
        }

        // What reaches nginx is the normalized path, so both sides agree on it.
        let keyed = tenant.client().get("//admin/%7Ex/./y").expect_status(200);
        assert_eq!(keyed.text(), "ADMIN-SECRET /admin/~x/y", "[{driver}]");
        let public = tenant
            .anonymous()
            .get("/docs//a/./b%3Ac")
            .expect_status(200);
        assert_eq!(
            public.text(),
            "PUBLIC /docs/a/b%3Ac",
            "[{driver}] reserved escapes are forwarded as sent"
        );
    }
}

#[test]
fn encoded_slashes_pass_encoded_only_when_the_operator_opts_in() {
    for driver in io_drivers() {
        let up = CountingServer::start("files");
        let sg = Shardgate::start(
            Options::new()
                .io_driver(driver)
                .arg("--encoded-slashes")
                .arg("keep"),
        );
        let tenant = Tenant::create(&sg, "files");
        tenant.route(
            "files",
            "/files/*",
            vec![up.target(json!({}))],
            json!({}),
            json!({"strip_path": true}),
        );
        tenant
            .client()
            .get("/files/a%2fb%5Cc?x=1")
            .expect_status(200);
        assert_eq!(up.last().target, "/a%2Fb%5Cc?x=1", "[{driver}]");
    }
}

#[test]
fn strip_path_forwards_the_rest_of_the_normalized_path_with_its_escapes() {
    for driver in io_drivers() {
        let up = CountingServer::start("models");
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let tenant = Tenant::create(&sg, "ai");
        tenant.route(
            "models",
            "/v1/models/*",
            vec![up.target(json!({}))],
            json!({}),
            json!({"strip_path": true}),
        );
        tenant
            .client()
            .get("/v1//models/m%3Apredict/%7Ea?q=%2F")
            .expect_status(200);
        assert_eq!(up.last().target, "/m%3Apredict/~a?q=%2F", "[{driver}]");
    }
}

#[test]
fn rule_paths_that_no_request_could_match_are_refused_naming_the_field() {
    let sg = Shardgate::start(Options::new());
    let tenant = Tenant::create(&sg, "rules");
    let up = CountingServer::start("rules");
    let route = tenant.route(
        "rules",
        "/ok",
        vec![up.target(json!({}))],
        json!({}),
        json!({}),
    );
    for (path, says) in [
        ("//a", "write it as \"/a\""),
        ("/a/../b", "write it as \"/b\""),
        ("/a/./b", "write it as \"/a/b\""),
        ("/%61dmin", "write it as \"/admin\""),
        ("/v1/m%3Apredict", "write it as \"/v1/m:predict\""),
        ("/%zz", "malformed percent-encoding"),
        ("/a%2Fb", "encoded slash"),
        ("/ä", "ASCII"),
    ] {
        let resp = tenant
            .admin
            .post_json(
                &tenant.collection("rules"),
                &json!({"path": path, "service_id": route.service_id}),
            )
            .expect_status(400);
        let error = resp.error();
        assert!(
            error.starts_with("path: ") && error.contains(says),
            "{path}: {error}"
        );
    }
    let rules = tenant
        .admin
        .get(&tenant.collection("rules"))
        .expect_status(200);
    assert_eq!(rules.json()["count"], 1, "nothing was stored: {rules}");
}

/// Every header an upstream saw that carries a gateway credential.
fn leaked(seen: &Seen) -> Vec<(String, String)> {
    seen.headers
        .iter()
        .filter(|(name, value)| name == "x-tg-api-key" || value.contains("sgk_"))
        .cloned()
        .collect()
}

#[test]
fn gateway_keys_never_reach_the_upstream_whichever_headers_carry_them() {
    for driver in io_drivers() {
        let up = CountingServer::start("backend");
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let tenant = Tenant::create(&sg, "keys");
        let route = tenant.route(
            "backend",
            "/k/*",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );
        tenant.rule(json!({"path": "/p/*", "service_id": route.service_id, "public": true}));
        let second = tenant
            .admin
            .post_json(&tenant.collection("keys"), &json!({"name": "second"}))
            .expect_status(201)
            .json()["key"]
            .as_str()
            .expect("plaintext key")
            .to_owned();
        let wrong = "sgk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned();
        let values = [None, Some(&tenant.key), Some(&second), Some(&wrong)];

        let mut requests = 0;
        for tg in values {
            for api in values {
                for bearer in values {
                    if tg.is_none() && api.is_none() && bearer.is_none() {
                        continue;
                    }
                    let bearer_value = bearer.map(|k| format!("Bearer {k}"));
                    let mut headers = Vec::new();
                    if let Some(k) = tg {
                        headers.push(("X-TG-API-Key", k.as_str()));
                    }
                    if let Some(k) = api {
                        headers.push(("X-API-Key", k.as_str()));
                    }
                    if let Some(v) = &bearer_value {
                        headers.push(("Authorization", v.as_str()));
                    }
                    // The first header present decides.
                    let decisive = tg.or(api).or(bearer).expect("one header is set");
                    let expected = if *decisive == wrong { 401 } else { 200 };
                    for path in ["/k/x", "/p/x"] {
                        let expected = if path == "/p/x" { 200 } else { expected };
                        up.clear();
                        let resp = tenant.anonymous().request("GET", path, &headers, b"");
                        assert_eq!(resp.status, expected, "[{driver}] {path} {headers:?}");
                        requests += 1;
                        if expected == 200 {
                            let seen = up.last();
                            assert_eq!(
                                leaked(&seen),
                                Vec::<(String, String)>::new(),
                                "[{driver}] {path} {headers:?}"
                            );
                        } else {
                            assert_eq!(up.count(), 0, "[{driver}] {headers:?}");
                        }
                    }
                }
            }
        }
        assert_eq!(requests, 126, "[{driver}] every combination was tried");

        // The upstream's own credentials still pass.
        tenant
            .client()
            .request("GET", "/k/x", &[("Authorization", "Basic dXA6cHc=")], b"")
            .expect_status(200);
        assert_eq!(
            up.last().header("authorization"),
            Some("Basic dXA6cHc="),
            "[{driver}]"
        );
        tenant
            .client()
            .bearer(&tenant.key)
            .request("GET", "/k/x", &[], b"")
            .expect_status(200);
        assert_eq!(up.last().header("authorization"), None, "[{driver}]");
        tenant
            .anonymous()
            .request(
                "GET",
                "/p/x",
                &[
                    ("X-API-Key", "upstream-own-key"),
                    ("Authorization", "Bearer upstream-token"),
                ],
                b"",
            )
            .expect_status(200);
        let seen = up.last();
        assert_eq!(
            seen.header("x-api-key"),
            Some("upstream-own-key"),
            "[{driver}]"
        );
        assert_eq!(
            seen.header("authorization"),
            Some("Bearer upstream-token"),
            "[{driver}]"
        );

        // Other spellings of a header carrying a gateway key are removed too.
        let odd_bearer = format!("Bearer\t{}", tenant.key);
        let token = format!("Token {}", tenant.key);
        let listed = format!("upstream-own-key, {}", tenant.key);
        for headers in [
            [("Authorization", odd_bearer.as_str())],
            [("Authorization", token.as_str())],
            [("X-API-Key", listed.as_str())],
        ] {
            tenant
                .anonymous()
                .request("GET", "/p/x", &headers, b"")
                .expect_status(200);
            assert_eq!(
                leaked(&up.last()),
                Vec::<(String, String)>::new(),
                "[{driver}] {headers:?}"
            );
        }
    }
}

/// An upstream that answers every request with `101 Switching Protocols` to `protocol`,
/// then speaks that protocol's bytes.
struct Switcher {
    addr: SocketAddr,
}

impl Switcher {
    fn start(protocol: &'static str) -> Switcher {
        Switcher::start_with(format!("Upgrade: {protocol}\r\n"))
    }

    /// Answers 101 with `upgrade_fields` (each a whole header line) as its Upgrade headers.
    fn start_with(upgrade_fields: String) -> Switcher {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the switcher");
        let addr = listener.local_addr().expect("its address");
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let upgrade_fields = upgrade_fields.clone();
                thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while find(&buf, b"\r\n\r\n").is_none() {
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 101 Switching Protocols\r\n{upgrade_fields}\
                         Connection: Upgrade\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n\
                         SMUGGLED"
                    );
                    let _ = stream.write_all(answer.as_bytes());
                    thread::sleep(Duration::from_secs(2));
                });
            }
        });
        Switcher { addr }
    }

    fn target(&self) -> serde_json::Value {
        json!({"host": "127.0.0.1", "port": self.addr.port()})
    }
}

#[test]
fn an_unsolicited_101_is_a_502_and_the_client_connection_stays_in_step() {
    for driver in io_drivers() {
        let up = CountingServer::start("normal");
        let websocket = Switcher::start("websocket");
        let twice = Switcher::start_with("Upgrade: websocket\r\nUpgrade: h2c\r\n".into());
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let tenant = Tenant::create(&sg, "switch");
        tenant.route(
            "switcher",
            "/switch/*",
            vec![websocket.target()],
            json!({}),
            json!({}),
        );
        tenant.route(
            "twice",
            "/twice/*",
            vec![twice.target()],
            json!({}),
            json!({}),
        );
        tenant.route(
            "normal",
            "/ok/*",
            vec![up.target(json!({}))],
            json!({}),
            json!({}),
        );

        let mut conn = tenant.client().open();
        let resp = conn.get("/switch/x");
        assert_eq!(
            resp.status, 502,
            "[{driver}] a 101 nobody asked for: {resp}"
        );
        assert!(!resp.text().contains("SMUGGLED"), "[{driver}]");
        let next = conn.get("/ok/y");
        assert_eq!(
            next.status, 200,
            "[{driver}] the next request on the connection"
        );
        assert_eq!(next.text(), "normal GET /ok/y", "[{driver}]");

        // Asked for h2c, the upstream switched to websocket: not what the client asked.
        let mut conn = tenant.client().open();
        let resp = conn.request(
            "GET",
            "/switch/x",
            &[("Connection", "Upgrade"), ("Upgrade", "h2c")],
            b"",
        );
        assert_eq!(
            resp.status, 502,
            "[{driver}] a 101 to another protocol: {resp}"
        );
        let next = conn.get("/ok/z");
        assert_eq!(next.text(), "normal GET /ok/z", "[{driver}]");
    }
}
