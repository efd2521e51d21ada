//! What the admin side must keep secret and whom it must refuse: API key plaintexts never
//! leave the create response; the admin token guards every route but `/health`; a
//! non-loopback admin listener without a token does not start.

use shardgate_tests::{
    GATEWAYS, Options, Shardgate, children, contains_bytes, create_gateway, create_key,
    files_under, id_of, json,
};

#[test]
fn key_plaintext_never_appears_on_disk_in_logs_or_in_any_get() {
    let mut sg = Shardgate::start(Options::new().log("debug"));
    let admin = sg.admin();
    let gid = id_of(&create_gateway(&admin, "api"));
    let other = id_of(&create_gateway(&admin, "other"));
    let mut plaintexts = Vec::new();
    for (gateway, name) in [(&gid, "k1"), (&gid, "k2"), (&other, "k3")] {
        let created = create_key(&admin, gateway, name);
        let key = created["key"]
            .as_str()
            .expect("plaintext in the create response");
        plaintexts.push(key.to_owned());
    }
    // A key update must not bring it back either.
    let first = id_of(&admin.get(&children(&gid, "keys")).expect_status(200).json()["keys"][0]);
    admin
        .put_json(
            &format!("{}/{first}", children(&gid, "keys")),
            &json!({"name": "k1-renamed", "active": false}),
        )
        .expect_status(200);

    let mut responses = Vec::new();
    for path in [
        GATEWAYS.to_owned(),
        format!("{GATEWAYS}/{gid}"),
        children(&gid, "keys"),
        children(&other, "keys"),
        "/metrics".to_owned(),
        "/api/v1/version".to_owned(),
    ] {
        responses.push((path.clone(), admin.get(&path).expect_status(200)));
    }
    for gateway in [&gid, &other] {
        let listed = admin
            .get(&children(gateway, "keys"))
            .expect_status(200)
            .json();
        for key in listed["keys"].as_array().expect("keys list") {
            let path = format!("{}/{}", children(gateway, "keys"), id_of(key));
            responses.push((path.clone(), admin.get(&path).expect_status(200)));
        }
    }
    assert!(sg.terminate().success());

    let files = files_under(sg.data_dir());
    assert!(!files.is_empty(), "the data dir holds the store");
    let stderr = sg.stderr_contents();
    assert!(
        stderr.contains("DEBUG") || stderr.contains("debug"),
        "debug logging is on"
    );
    for key in &plaintexts {
        // The part after the shown prefix is the secret; search for it alone too, in case
        // it was stored or logged split from the prefix.
        let secret = &key[12..];
        for (path, bytes) in &files {
            assert!(
                !contains_bytes(bytes, key.as_bytes()) && !contains_bytes(bytes, secret.as_bytes()),
                "a key's plaintext is in {}",
                path.display()
            );
        }
        assert!(!stderr.contains(secret), "a key's plaintext is in the log");
        for (path, r) in &responses {
            assert!(
                !contains_bytes(&r.body, secret.as_bytes()),
                "GET {path} shows a key's plaintext"
            );
        }
    }
}

const TOKEN: &str = "s3cret-admin-token-0123456789";

#[test]
fn admin_token_is_required_on_every_route_but_health() {
    let mut sg = Shardgate::start(Options::new().admin_token(TOKEN).log("debug"));
    let anonymous = sg.admin();
    let authorized = sg.admin().bearer(TOKEN);
    let wrong = sg.admin().bearer("s3cret-admin-token-0123456788");

    anonymous.get("/health").expect_status(200);
    let body = json!({"name": "g", "subdomain": "api"});
    for client in [&anonymous, &wrong] {
        for path in [GATEWAYS, "/api/v1/version", "/api/v1/plugins", "/metrics"] {
            let r = client.get(path).expect_status(401);
            assert!(!r.error().is_empty());
        }
        client.post_json(GATEWAYS, &body).expect_status(401);
        client
            .get(&format!("{GATEWAYS}/0190b7a4-0000-7000-8000-000000000000"))
            .expect_status(401);
    }
    assert_eq!(
        anonymous
            .request(
                "GET",
                GATEWAYS,
                &[("Authorization", "Basic YWRtaW46YWRtaW4=")],
                b""
            )
            .status,
        401
    );
    assert_eq!(
        anonymous
            .request("GET", GATEWAYS, &[("Authorization", "Bearer")], b"")
            .status,
        401
    );

    let gid = id_of(
        &authorized
            .post_json(GATEWAYS, &body)
            .expect_status(201)
            .json(),
    );
    authorized
        .get(&format!("{GATEWAYS}/{gid}"))
        .expect_status(200);
    authorized.get("/api/v1/version").expect_status(200);
    authorized
        .delete(&format!("{GATEWAYS}/{gid}"))
        .expect_status(204);
    // Nothing the refused requests sent was applied.
    assert_eq!(
        authorized.get(GATEWAYS).expect_status(200).json()["count"],
        0
    );

    sg.terminate();
    assert!(
        !sg.stderr_contents().contains(TOKEN),
        "the token is never logged"
    );
}

#[test]
fn admin_token_from_the_environment_is_enforced() {
    let sg = Shardgate::start(Options::new().env("SHARDGATE_ADMIN_TOKEN", TOKEN));
    sg.admin().get(GATEWAYS).expect_status(401);
    sg.admin().bearer(TOKEN).get(GATEWAYS).expect_status(200);
}

#[test]
fn non_loopback_admin_listen_without_a_token_refuses_to_start() {
    let failure = match Shardgate::try_start(Options::new().admin_listen("0.0.0.0:0")) {
        Ok(_) => panic!("shardgate exposed an unauthenticated admin API on 0.0.0.0"),
        Err(f) => f,
    };
    assert!(!failure.status.success(), "exit status {}", failure.status);
    let stderr = failure.stderr.to_lowercase();
    assert!(
        stderr.contains("token"),
        "the message mentions the token: {}",
        failure.stderr
    );
}
