//! The admin REST API against the real binary: the seed's getting-started curl flow, CRUD
//! of every entity, the status-code contract (DESIGN.md §3) and pagination bounds.

use shardgate_tests::{
    Client, DAY_SECS, GATEWAYS, Options, Resp, Shardgate, Value, children, create_gateway,
    create_key, create_rule, create_service, create_upstream, id_of, io_drivers, json, rfc3339_in,
    seed_gateway,
};

fn assert_rfc3339(entity: &Value, field: &str) {
    let text = entity[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not a string: {entity}"));
    let b = text.as_bytes();
    let shaped = b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && (text.ends_with('Z') || text[19..].contains(['+', '-']));
    assert!(shaped, "{field} is not RFC 3339: {text:?}");
}

fn assert_uuid(entity: &Value) {
    let id = id_of(entity);
    let groups: Vec<usize> = id.split('-').map(str::len).collect();
    assert_eq!(groups, [8, 4, 4, 4, 12], "id is not a UUID: {id}");
    assert!(
        id.chars().all(|c| c.is_ascii_hexdigit() || c == '-'),
        "{id}"
    );
}

/// Every field the client sent comes back as sent: objects of `expected` are subsets of
/// those in `actual` (the server may add defaults), arrays match element by element.
#[track_caller]
fn assert_contains_fields(actual: &Value, expected: &Value) {
    fn check(actual: &Value, expected: &Value, path: &str) -> Result<(), String> {
        match (actual, expected) {
            (Value::Object(a), Value::Object(e)) => e.iter().try_for_each(|(name, value)| {
                let field = format!("{path}.{name}");
                match a.get(name) {
                    Some(got) => check(got, value, &field),
                    None => Err(format!("{field} is missing")),
                }
            }),
            (Value::Array(a), Value::Array(e)) if a.len() == e.len() => a
                .iter()
                .zip(e)
                .enumerate()
                .try_for_each(|(i, (got, want))| check(got, want, &format!("{path}[{i}]"))),
            _ if actual == expected => Ok(()),
            _ => Err(format!("{path} is {actual}, sent {expected}")),
        }
    }
    if let Err(e) = check(actual, expected, "") {
        panic!("{e}\nin {actual}");
    }
}

#[test]
fn seed_curl_flow_creates_gets_and_lists_a_gateway_and_creates_a_key() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let admin = sg.admin();

        // curl -X POST /api/v1/gateways -d '{"name": "my-first-gateway", ...}'
        let created = admin
            .post_json(GATEWAYS, &seed_gateway())
            .expect_status(201);
        let gateway = created.json();
        assert_uuid(&gateway);
        let id = id_of(&gateway);
        assert_eq!(
            created.header("location"),
            Some(format!("/api/v1/gateways/{id}").as_str()),
            "[{driver}]"
        );
        assert_eq!(gateway["name"], "my-first-gateway");
        assert_eq!(gateway["subdomain"], "api");
        let plugin = &gateway["required_plugins"][0];
        assert_eq!(plugin["name"], "rate_limiter");
        assert_eq!(plugin["stage"], "pre_request");
        assert_eq!(plugin["priority"], 1);
        assert_eq!(plugin["enabled"], true);
        let settings = &plugin["settings"];
        assert_eq!(
            settings["limits"]["global"],
            json!({"limit": 15, "window": "1m"})
        );
        assert_eq!(
            settings["limits"]["per_ip"],
            json!({"limit": 5, "window": "1m"})
        );
        assert_eq!(
            settings["limits"]["per_user"],
            json!({"limit": 5, "window": "1m"})
        );
        assert_eq!(settings["actions"]["type"], "reject");
        assert_eq!(settings["actions"]["retry_after"], "60");
        assert_rfc3339(&gateway, "created_at");
        assert_rfc3339(&gateway, "updated_at");

        // curl /api/v1/gateways/{gateway-id}
        let fetched = admin
            .get(&format!("{GATEWAYS}/{id}"))
            .expect_status(200)
            .json();
        assert_eq!(
            fetched, gateway,
            "[{driver}] GET shows what create returned"
        );

        // curl /api/v1/gateways
        let list = admin.get(GATEWAYS).expect_status(200).json();
        assert_eq!(list["gateways"], json!([gateway]), "[{driver}]");
        assert_eq!(list["count"], 1);

        // curl -X POST /api/v1/gateways/{gateway-id}/keys -d '{"name": "test-key", ...}'
        // (the README's fixed date would expire; a year from now never does)
        let expires_at = rfc3339_in(365 * DAY_SECS);
        let created = admin
            .post_json(
                &children(&id, "keys"),
                &json!({"name": "test-key", "expires_at": expires_at}),
            )
            .expect_status(201);
        let key = created.json();
        let key_id = id_of(&key);
        assert_eq!(
            created.header("location"),
            Some(format!("/api/v1/gateways/{id}/keys/{key_id}").as_str()),
            "[{driver}]"
        );
        let plaintext = key["key"]
            .as_str()
            .expect("the create response carries the key");
        assert!(plaintext.starts_with("sgk_"), "{plaintext}");
        assert!(
            plaintext.len() >= 4 + 43,
            "256 bits in URL-safe base64: {plaintext}"
        );
        assert!(
            plaintext[4..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "URL-safe: {plaintext}"
        );
        assert_eq!(key["name"], "test-key");
        assert_eq!(key["expires_at"], expires_at.as_str());
        assert_eq!(key["active"], true);
    }
}

/// Create → get → list → update → delete → 404, for one collection.
struct Crud<'a> {
    admin: &'a Client,
    collection: String,
    field: &'a str,
    create: Value,
    update: Value,
}

impl Crud<'_> {
    fn run(self) {
        let Crud {
            admin,
            collection,
            field,
            create,
            update,
        } = self;

        let created = admin.post_json(&collection, &create).expect_status(201);
        let body = created.json();
        assert_uuid(&body);
        let id = id_of(&body);
        let location = format!("{collection}/{id}");
        assert_eq!(created.header("location"), Some(location.as_str()));
        assert_contains_fields(&body, &create);
        assert_rfc3339(&body, "created_at");
        assert_rfc3339(&body, "updated_at");

        let fetched = admin.get(&location).expect_status(200).json();
        if field == "keys" {
            // The create response alone also carries the plaintext key.
            let mut without_key = body.clone();
            let map = without_key.as_object_mut().expect("an object");
            map.remove("key");
            map.remove("warning");
            assert_eq!(fetched, without_key);
        } else {
            assert_eq!(fetched, body, "GET shows what create returned");
        }

        let list = admin.get(&collection).expect_status(200).json();
        assert_eq!(list[field], json!([fetched]));
        assert_eq!(list["count"], 1);
        assert_eq!(list["offset"], 0);
        assert_eq!(list["limit"], 100);

        let updated = admin.put_json(&location, &update).expect_status(200).json();
        assert_contains_fields(&updated, &update);
        assert_eq!(id_of(&updated), id);
        assert_eq!(updated["created_at"], fetched["created_at"]);
        let refetched = admin.get(&location).expect_status(200).json();
        assert_eq!(refetched, updated, "the update is visible in GET");

        let deleted = admin.delete(&location).expect_status(204);
        assert!(deleted.body.is_empty(), "204 has no body: {deleted}");
        let gone = admin.get(&location).expect_status(404);
        assert!(!gone.error().is_empty());
        admin.delete(&location).expect_status(404);
        admin.put_json(&location, &update).expect_status(404);
        let list = admin.get(&collection).expect_status(200).json();
        assert_eq!(list[field], json!([]));
        assert_eq!(list["count"], 0);
    }
}

#[test]
fn gateway_create_get_list_update_delete() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        Crud {
            admin: &sg.admin(),
            collection: GATEWAYS.to_owned(),
            field: "gateways",
            create: seed_gateway(),
            update: json!({"name": "renamed", "subdomain": "api-v2", "status": "inactive"}),
        }
        .run();
    }
}

#[test]
fn upstream_create_get_list_update_delete() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let admin = sg.admin();
        let gid = id_of(&create_gateway(&admin, "api"));
        Crud {
            admin: &admin,
            collection: children(&gid, "upstreams"),
            field: "upstreams",
            create: json!({
                "name": "llm-pool",
                "algorithm": "weighted-round-robin",
                "targets": [
                    {"host": "127.0.0.1", "port": 8001, "protocol": "http", "weight": 3, "priority": 0},
                    {"host": "backend.internal", "port": 443, "protocol": "https", "weight": 1, "priority": 1}
                ],
                "tags": ["ai"]
            }),
            update: json!({
                "name": "llm-pool-2",
                "algorithm": "least-connections",
                "targets": [{"host": "127.0.0.1", "port": 8002, "protocol": "http", "weight": 100, "priority": 0}],
                "tags": []
            }),
        }
        .run();
    }
}

#[test]
fn service_create_get_list_update_delete() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let admin = sg.admin();
        let gid = id_of(&create_gateway(&admin, "api"));
        let first = id_of(&create_upstream(&admin, &gid, "first"));
        let second = id_of(&create_upstream(&admin, &gid, "second"));
        Crud {
            admin: &admin,
            collection: children(&gid, "services"),
            field: "services",
            create: json!({
                "name": "chat",
                "type": "ai",
                "upstream_id": first,
                "description": "chat completions",
                "metadata": {"owner": "team-a", "version": 2}
            }),
            update: json!({
                "name": "chat-v2",
                "type": "rest",
                "upstream_id": second,
                "fallback_upstream_ids": [first],
                "description": "moved",
                "metadata": {}
            }),
        }
        .run();
    }
}

#[test]
fn rule_create_get_list_update_delete() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let admin = sg.admin();
        let gid = id_of(&create_gateway(&admin, "api"));
        let upstream = id_of(&create_upstream(&admin, &gid, "pool"));
        let service = id_of(&create_service(&admin, &gid, "chat", &upstream));
        Crud {
            admin: &admin,
            collection: children(&gid, "rules"),
            field: "rules",
            create: json!({
                "path": "/v1/chat",
                "methods": ["POST"],
                "headers": {"x-tenant": "a"},
                "service_id": service,
                "strip_path": false,
                "preserve_host": true,
                "priority": 5,
                "plugin_chain": [{
                    "name": "rate_limiter",
                    "enabled": true,
                    "stage": "pre_request",
                    "priority": 0,
                    "parallel": false,
                    "settings": {"limits": {"per_ip": {"limit": 10, "window": "30s"}}}
                }],
                "active": true,
                "public": false
            }),
            update: json!({
                "path": "/v1/*",
                "methods": ["GET", "POST"],
                "service_id": service,
                "strip_path": true,
                "plugin_chain": [],
                "active": false,
                "public": true
            }),
        }
        .run();
    }
}

#[test]
fn key_create_get_list_update_delete() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let admin = sg.admin();
        let gid = id_of(&create_gateway(&admin, "api"));
        Crud {
            admin: &admin,
            collection: children(&gid, "keys"),
            field: "keys",
            create: json!({"name": "test-key", "expires_at": rfc3339_in(365 * DAY_SECS)}),
            update: json!({
                "name": "renamed-key", "expires_at": rfc3339_in(547 * DAY_SECS), "active": false
            }),
        }
        .run();
    }
}

#[test]
fn key_get_shows_id_name_prefix_expiry_active_and_created_at_but_never_the_key() {
    let sg = Shardgate::start(Options::new());
    let admin = sg.admin();
    let gid = id_of(&create_gateway(&admin, "api"));
    let created = create_key(&admin, &gid, "k");
    let plaintext = created["key"]
        .as_str()
        .expect("plaintext in the create response");
    let shown = admin
        .get(&format!("{}/{}", children(&gid, "keys"), id_of(&created)))
        .expect_status(200)
        .json();
    for field in ["id", "name", "prefix", "expires_at", "active", "created_at"] {
        assert!(!shown[field].is_null(), "GET lacks {field}: {shown}");
    }
    let prefix = shown["prefix"].as_str().expect("prefix is a string");
    assert!(
        prefix.starts_with("sgk_") && plaintext.starts_with(prefix),
        "{prefix}"
    );
    assert!(
        prefix.len() < plaintext.len() / 2,
        "the prefix is short: {prefix}"
    );
    assert!(
        shown.get("key").is_none() && shown.get("hash").is_none(),
        "{shown}"
    );
}

// -- errors ------------------------------------------------------------------------------------

#[test]
fn malformed_json_is_400_with_line_and_column() {
    let sg = Shardgate::start(Options::new());
    let r = sg
        .admin()
        .send_json_text(
            "POST",
            GATEWAYS,
            "{\n  \"name\": \"x\",\n  \"subdomain\": \n}",
        )
        .expect_status(400);
    let error = r.error();
    assert!(
        error.contains("line 4") && error.contains("column"),
        "{error}"
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[test]
fn unknown_field_plugins_chain_is_400_pointing_at_plugin_chain() {
    let sg = Shardgate::start(Options::new());
    let admin = sg.admin();
    let gid = id_of(&create_gateway(&admin, "api"));
    let upstream = id_of(&create_upstream(&admin, &gid, "pool"));
    let service = id_of(&create_service(&admin, &gid, "svc", &upstream));
    let error = admin
        .post_json(
            &children(&gid, "rules"),
            &json!({"path": "/v1/*", "service_id": service, "plugins_chain": []}),
        )
        .expect_status(400)
        .error();
    assert!(
        error.contains("plugins_chain"),
        "names the unknown field: {error}"
    );
    assert!(
        error.contains("`plugin_chain`"),
        "points at the right name: {error}"
    );
    let list = admin
        .get(&children(&gid, "rules"))
        .expect_status(200)
        .json();
    assert_eq!(list["count"], 0, "nothing was created");
}

#[test]
fn bad_rate_limit_window_is_400_naming_the_full_field_path() {
    let sg = Shardgate::start(Options::new());
    let mut gateway = seed_gateway();
    gateway["required_plugins"][0]["settings"]["limits"]["global"]["window"] = json!("1x");
    let error = sg
        .admin()
        .post_json(GATEWAYS, &gateway)
        .expect_status(400)
        .error();
    assert!(
        error.contains("required_plugins[0].settings.limits.global.window"),
        "{error}"
    );
    assert!(error.contains("\"1x\""), "{error}");
}

#[test]
fn subdomain_that_is_not_a_dns_label_is_400() {
    let sg = Shardgate::start(Options::new());
    let admin = sg.admin();
    let too_long = "a".repeat(64);
    for bad in [
        "Api",
        "my_api",
        "-api",
        "api-",
        "",
        "a.b",
        too_long.as_str(),
    ] {
        let error = admin
            .post_json(GATEWAYS, &json!({"name": "g", "subdomain": bad}))
            .expect_status(400)
            .error();
        assert!(error.contains("subdomain"), "{bad:?}: {error}");
    }
    let max = "a".repeat(63);
    admin
        .post_json(GATEWAYS, &json!({"name": "g", "subdomain": max}))
        .expect_status(201);
}

#[test]
fn service_pointing_to_a_missing_upstream_is_400() {
    let sg = Shardgate::start(Options::new());
    let admin = sg.admin();
    let gid = id_of(&create_gateway(&admin, "api"));
    let error = admin
        .post_json(
            &children(&gid, "services"),
            &json!({"name": "svc", "upstream_id": "0190b7a4-0000-7000-8000-000000000000"}),
        )
        .expect_status(400)
        .error();
    assert!(error.contains("upstream_id"), "{error}");
}

#[test]
fn upstream_of_another_gateway_is_not_a_valid_reference() {
    let sg = Shardgate::start(Options::new());
    let admin = sg.admin();
    let a = id_of(&create_gateway(&admin, "a"));
    let b = id_of(&create_gateway(&admin, "b"));
    let upstream_in_a = id_of(&create_upstream(&admin, &a, "pool"));
    admin
        .post_json(
            &children(&b, "services"),
            &json!({"name": "svc", "upstream_id": upstream_in_a}),
        )
        .expect_status(400);
}

#[test]
fn unknown_ids_are_404_with_an_error_body() {
    let sg = Shardgate::start(Options::new());
    let admin = sg.admin();
    let missing = "0190b7a4-0000-7000-8000-000000000000";
    let gid = id_of(&create_gateway(&admin, "api"));
    let paths = [
        format!("{GATEWAYS}/{missing}"),
        format!("{GATEWAYS}/not-a-uuid"),
        children(missing, "upstreams"),
        children(missing, "keys"),
        format!("{}/{missing}", children(&gid, "upstreams")),
        format!("{}/{missing}", children(&gid, "services")),
        format!("{}/{missing}", children(&gid, "rules")),
        format!("{}/{missing}", children(&gid, "keys")),
        format!("{}/not-a-uuid", children(&gid, "rules")),
        children(&gid, "widgets"),
        "/api/v1/nothing-here".to_owned(),
    ];
    for path in &paths {
        let error = admin.get(path).expect_status(404).error();
        assert!(!error.is_empty(), "{path}");
    }
    admin
        .delete(&format!("{GATEWAYS}/{missing}"))
        .expect_status(404);
    admin
        .put_json(
            &format!("{GATEWAYS}/{missing}"),
            &json!({"name": "g", "subdomain": "x"}),
        )
        .expect_status(404);
    admin
        .post_json(
            &children(missing, "upstreams"),
            &json!({"name": "u", "targets": []}),
        )
        .expect_status(404);
}

#[test]
fn wrong_method_is_405_with_allow() {
    let sg = Shardgate::start(Options::new());
    let admin = sg.admin();
    let gid = id_of(&create_gateway(&admin, "api"));
    let cases = [
        ("DELETE", GATEWAYS.to_owned(), ["GET", "POST"].as_slice()),
        (
            "PATCH",
            format!("{GATEWAYS}/{gid}"),
            &["GET", "PUT", "DELETE"],
        ),
        ("PUT", children(&gid, "upstreams"), &["GET", "POST"]),
        ("POST", "/api/v1/plugins".to_owned(), &["GET"]),
        ("POST", "/health".to_owned(), &["GET"]),
    ];
    for (method, path, allowed) in cases {
        let r = admin.request(method, &path, &[], b"");
        assert_eq!(r.status, 405, "{method} {path}: {r}");
        let allow = r
            .header("allow")
            .unwrap_or_else(|| panic!("{method} {path}: no Allow: {r}"));
        for m in allowed {
            assert!(
                allow.contains(m),
                "{method} {path}: Allow {allow:?} lacks {m}"
            );
        }
        assert!(!allow.contains(method), "{method} {path}: Allow {allow:?}");
        assert!(!r.error().is_empty());
    }
}

#[test]
fn duplicate_subdomain_is_409() {
    let sg = Shardgate::start(Options::new());
    let admin = sg.admin();
    create_gateway(&admin, "api");
    let error = admin
        .post_json(GATEWAYS, &json!({"name": "other", "subdomain": "api"}))
        .expect_status(409)
        .error();
    assert!(error.contains("api"), "{error}");
    let other = id_of(&create_gateway(&admin, "web"));
    admin
        .put_json(
            &format!("{GATEWAYS}/{other}"),
            &json!({"name": "other", "subdomain": "api"}),
        )
        .expect_status(409);
    assert_eq!(admin.get(GATEWAYS).expect_status(200).json()["count"], 2);
}

#[test]
fn duplicate_name_within_a_gateway_is_409() {
    let sg = Shardgate::start(Options::new());
    let admin = sg.admin();
    let a = id_of(&create_gateway(&admin, "a"));
    let b = id_of(&create_gateway(&admin, "b"));
    create_upstream(&admin, &a, "pool");
    admin
        .post_json(
            &children(&a, "upstreams"),
            &json!({"name": "pool", "targets": [{"host": "127.0.0.1", "port": 1}]}),
        )
        .expect_status(409);
    // Names are unique per gateway, not globally.
    create_upstream(&admin, &b, "pool");
    create_key(&admin, &a, "k");
    admin
        .post_json(&children(&a, "keys"), &json!({"name": "k"}))
        .expect_status(409);
}

#[test]
fn deleting_an_upstream_a_service_uses_or_a_service_a_rule_uses_is_409() {
    let sg = Shardgate::start(Options::new());
    let admin = sg.admin();
    let gid = id_of(&create_gateway(&admin, "api"));
    let upstream = id_of(&create_upstream(&admin, &gid, "pool"));
    let service = id_of(&create_service(&admin, &gid, "svc", &upstream));
    let rule = id_of(&create_rule(&admin, &gid, "/v1/*", &service));
    let upstream_path = format!("{}/{upstream}", children(&gid, "upstreams"));
    let service_path = format!("{}/{service}", children(&gid, "services"));
    let rule_path = format!("{}/{rule}", children(&gid, "rules"));

    let error = admin.delete(&service_path).expect_status(409).error();
    assert!(
        error.contains(&rule),
        "names the rule that uses it: {error}"
    );
    let error = admin.delete(&upstream_path).expect_status(409).error();
    assert!(
        error.contains(&service),
        "names the service that uses it: {error}"
    );
    admin.get(&service_path).expect_status(200);
    admin.get(&upstream_path).expect_status(200);

    // Once nothing refers to them, they go.
    admin.delete(&rule_path).expect_status(204);
    admin.delete(&service_path).expect_status(204);
    admin.delete(&upstream_path).expect_status(204);
}

#[test]
fn body_over_one_mebibyte_is_413() {
    let sg = Shardgate::start(Options::new());
    let admin = sg.admin();
    let padding = "x".repeat(1024 * 1024);
    let body = format!(r#"{{"name": "g", "subdomain": "api", "pad": "{padding}"}}"#);
    let r = admin
        .send_json_text("POST", GATEWAYS, &body)
        .expect_status(413);
    assert!(!r.error().is_empty());
    assert_eq!(admin.get(GATEWAYS).expect_status(200).json()["count"], 0);
    // The server is still serving.
    admin.get("/health").expect_status(200);
}

#[test]
fn form_or_missing_content_type_is_415() {
    let sg = Shardgate::start(Options::new());
    let admin = sg.admin();
    let body = br#"{"name": "g", "subdomain": "api"}"#;
    let form = admin.request(
        "POST",
        GATEWAYS,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body,
    );
    assert_eq!(form.status, 415, "{form}");
    assert!(form.error().contains("application/json"), "{form}");
    let none = admin.request("POST", GATEWAYS, &[], body);
    assert_eq!(none.status, 415, "{none}");
    let charset = admin.request(
        "POST",
        GATEWAYS,
        &[("Content-Type", "application/json; charset=utf-8")],
        body,
    );
    assert_eq!(charset.status, 201, "{charset}");
}

#[test]
fn key_with_past_expires_at_is_400() {
    let sg = Shardgate::start(Options::new());
    let admin = sg.admin();
    let gid = id_of(&create_gateway(&admin, "api"));
    let error = admin
        .post_json(
            &children(&gid, "keys"),
            &json!({"name": "old", "expires_at": rfc3339_in(-DAY_SECS)}),
        )
        .expect_status(400)
        .error();
    assert!(error.contains("expires_at"), "{error}");
    let error = admin
        .post_json(
            &children(&gid, "keys"),
            &json!({"name": "bad", "expires_at": "tomorrow"}),
        )
        .expect_status(400)
        .error();
    assert!(error.contains("expires_at"), "{error}");
}

#[test]
fn deleting_a_gateway_deletes_its_children_and_frees_its_subdomain() {
    let sg = Shardgate::start(Options::new());
    let admin = sg.admin();
    let gid = id_of(&create_gateway(&admin, "api"));
    let keep = id_of(&create_gateway(&admin, "keep"));
    let upstream = id_of(&create_upstream(&admin, &gid, "pool"));
    let service = id_of(&create_service(&admin, &gid, "svc", &upstream));
    let rule = id_of(&create_rule(&admin, &gid, "/v1/*", &service));
    let key = id_of(&create_key(&admin, &gid, "k"));
    let kept_upstream = id_of(&create_upstream(&admin, &keep, "pool"));

    admin
        .delete(&format!("{GATEWAYS}/{gid}"))
        .expect_status(204);

    admin.get(&format!("{GATEWAYS}/{gid}")).expect_status(404);
    for (collection, id) in [
        ("upstreams", &upstream),
        ("services", &service),
        ("rules", &rule),
        ("keys", &key),
    ] {
        admin
            .get(&format!("{}/{id}", children(&gid, collection)))
            .expect_status(404);
        admin.get(&children(&gid, collection)).expect_status(404);
    }
    // Other gateways are untouched; the subdomain can be used again.
    admin
        .get(&format!("{}/{kept_upstream}", children(&keep, "upstreams")))
        .expect_status(200);
    let again = id_of(&create_gateway(&admin, "api"));
    let list = admin
        .get(&children(&again, "upstreams"))
        .expect_status(200)
        .json();
    assert_eq!(list["count"], 0, "a new gateway starts empty: {list}");
}

#[test]
fn changing_id_or_gateway_id_in_a_put_body_is_400() {
    let sg = Shardgate::start(Options::new());
    let admin = sg.admin();
    let gid = id_of(&create_gateway(&admin, "api"));
    let upstream = create_upstream(&admin, &gid, "pool");
    let path = format!("{}/{}", children(&gid, "upstreams"), id_of(&upstream));
    // GET → edit → PUT round-trips, server-owned fields included.
    let mut edited = upstream.clone();
    edited["name"] = json!("pool-2");
    let updated = admin.put_json(&path, &edited).expect_status(200).json();
    assert_eq!(updated["name"], "pool-2");
    edited["id"] = json!("0190b7a4-0000-7000-8000-000000000000");
    let error = admin.put_json(&path, &edited).expect_status(400).error();
    assert!(error.contains("id"), "{error}");
}

// -- pagination -----------------------------------------------------------------------------

fn list(admin: &Client, query: &str) -> Resp {
    admin.get(&format!("{GATEWAYS}?{query}"))
}

#[test]
fn pagination_limit_must_be_between_1_and_100() {
    let sg = Shardgate::start(Options::new());
    let admin = sg.admin();
    create_gateway(&admin, "api");
    for query in ["limit=0", "limit=101", "limit=1000", "limit=-1"] {
        let error = list(&admin, query).expect_status(400).error();
        assert!(error.contains("limit"), "{query}: {error}");
    }
    for query in ["limit=1", "limit=100"] {
        list(&admin, query).expect_status(200);
    }
}

#[test]
fn pagination_rejects_non_numeric_offset_and_limit() {
    let sg = Shardgate::start(Options::new());
    let admin = sg.admin();
    for (query, field) in [
        ("limit=abc", "limit"),
        ("limit=", "limit"),
        ("offset=abc", "offset"),
        ("offset=-1", "offset"),
        ("offset=1.5", "offset"),
    ] {
        let error = list(&admin, query).expect_status(400).error();
        assert!(error.contains(field), "{query}: {error}");
    }
}

#[test]
fn pagination_pages_in_creation_order_and_past_the_end_is_empty_with_the_count() {
    let sg = Shardgate::start(Options::new());
    let admin = sg.admin();
    let ids: Vec<String> = (0..5)
        .map(|i| id_of(&create_gateway(&admin, &format!("gw{i}"))))
        .collect();

    let page = list(&admin, "offset=1&limit=2").expect_status(200).json();
    let page_ids: Vec<String> = page["gateways"]
        .as_array()
        .expect("a list")
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(page_ids, ids[1..3].to_vec());
    assert_eq!(
        (&page["count"], &page["offset"], &page["limit"]),
        (&json!(5), &json!(1), &json!(2))
    );

    let last = list(&admin, "offset=4&limit=2").expect_status(200).json();
    assert_eq!(last["gateways"].as_array().map(Vec::len), Some(1));

    let past = list(&admin, "offset=10").expect_status(200).json();
    assert_eq!(past["gateways"], json!([]));
    assert_eq!(past["count"], 5);
    assert_eq!(past["offset"], 10);

    let default = list(&admin, "").expect_status(200).json();
    assert_eq!(
        (&default["offset"], &default["limit"]),
        (&json!(0), &json!(100))
    );
}

#[test]
fn child_collections_paginate_with_the_same_shape() {
    let sg = Shardgate::start(Options::new());
    let admin = sg.admin();
    let gid = id_of(&create_gateway(&admin, "api"));
    for i in 0..3 {
        create_key(&admin, &gid, &format!("k{i}"));
    }
    let page = admin
        .get(&format!("{}?offset=2&limit=5", children(&gid, "keys")))
        .expect_status(200)
        .json();
    assert_eq!(page["keys"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        (&page["count"], &page["offset"], &page["limit"]),
        (&json!(3), &json!(2), &json!(5))
    );
    admin
        .get(&format!("{}?limit=0", children(&gid, "keys")))
        .expect_status(400);
}

// -- service routes ---------------------------------------------------------------------------

#[test]
fn health_version_and_plugin_catalogue_answer() {
    let sg = Shardgate::start(Options::new());
    let admin = sg.admin();
    admin.get("/health").expect_status(200);

    let version = admin.get("/api/v1/version").expect_status(200).json();
    let v = version["version"].as_str().expect("version is a string");
    assert!(!v.is_empty() && v.contains('.'), "{version}");

    let catalogue = admin.get("/api/v1/plugins").expect_status(200).json();
    let plugins = catalogue["plugins"].as_array().expect("plugins is a list");
    let limiter = plugins
        .iter()
        .find(|p| p["name"] == "rate_limiter")
        .unwrap_or_else(|| panic!("rate_limiter not in the catalogue: {catalogue}"));
    assert_eq!(limiter["stages"], json!(["pre_request"]));
    let settings = limiter["settings"].as_array().expect("settings is a list");
    let paths: Vec<&str> = settings.iter().filter_map(|s| s["path"].as_str()).collect();
    for expected in [
        "limits.global.limit",
        "limits.global.window",
        "limits.per_ip.limit",
        "limits.per_user.window",
        "actions.type",
        "actions.retry_after",
    ] {
        assert!(
            paths.contains(&expected),
            "catalogue lacks {expected}: {paths:?}"
        );
    }
    for s in settings {
        assert!(
            s["default"].is_string() && s["description"].as_str().is_some_and(|d| !d.is_empty()),
            "every setting documents its default and meaning: {s}"
        );
    }
}

#[test]
fn every_write_answer_and_error_is_json() {
    let sg = Shardgate::start(Options::new());
    let admin = sg.admin();
    let ok = admin
        .post_json(GATEWAYS, &seed_gateway())
        .expect_status(201);
    assert_eq!(ok.header("content-type"), Some("application/json"));
    let err = admin.get(&format!("{GATEWAYS}/nope")).expect_status(404);
    assert_eq!(err.header("content-type"), Some("application/json"));
    let body = err.json();
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(1),
        "only `error`: {body}"
    );
}

#[test]
fn chunked_request_body_is_accepted() {
    let sg = Shardgate::start(Options::new());
    let json = br#"{"name": "g", "subdomain": "api"}"#;
    let (a, b) = json.split_at(10);
    let mut body = format!("{:x}\r\n", a.len()).into_bytes();
    body.extend_from_slice(a);
    body.extend_from_slice(format!("\r\n{:x}\r\n", b.len()).as_bytes());
    body.extend_from_slice(b);
    body.extend_from_slice(b"\r\n0\r\n\r\n");
    let r = sg.admin().request(
        "POST",
        GATEWAYS,
        &[
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
        ],
        &body,
    );
    assert_eq!(r.status, 201, "{r}");
    assert_eq!(r.json()["subdomain"], "api");
}

#[test]
fn malformed_http_is_400_and_the_server_keeps_serving() {
    let sg = Shardgate::start(Options::new());
    let admin = sg.admin();
    let garbage = admin.raw_request(b"HELLO\r\n\r\n");
    assert_eq!(garbage.status, 400, "{garbage}");
    let smuggle = admin.raw_request(
        b"POST /api/v1/gateways HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 2\r\nContent-Length: 40\r\n\r\n{}",
    );
    assert_eq!(smuggle.status, 400, "conflicting Content-Length: {smuggle}");
    admin.get("/health").expect_status(200);
    assert_eq!(admin.get(GATEWAYS).expect_status(200).json()["count"], 0);
}
