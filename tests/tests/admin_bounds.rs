//! Admin input bounds against the real binary (docs/SECURITY.md, "Admin input bounds"):
//! every field and list of an entity has a documented maximum, refused with 400 naming the
//! field path; a body with a duplicate key, at any depth, is refused rather than guessed at;
//! a deeply nested body is a 400, not a crash. A refused write changes nothing: the entity
//! reads back as before and the data directory is byte-for-byte unchanged.
//!
//! The bounds are read from their one definition, `pub mod limits` in
//! `core/src/model.rs`, so these tests cannot drift from the server they run against.

use std::fs;
use std::path::{Path, PathBuf};

use shardgate_tests::{
    Client, GATEWAYS, Options, Resp, Shardgate, Value, children, create_gateway, create_service,
    create_upstream, files_under, id_of, io_drivers, json, seed_gateway,
};

// ---------------------------------------------------------------------------------------------
// Helpers

/// The value of `pub const <name>: usize = <expr>;` in `core/src/model.rs`, where `<expr>`
/// is a product of integer literals and other such constants (`8 * 1024`, `10_000`).
fn limit(name: &str) -> usize {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/src/model.rs");
    let source =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let needle = format!("pub const {name}: usize = ");
    let start = source
        .find(&needle)
        .unwrap_or_else(|| panic!("{name} is not defined in {}", path.display()))
        + needle.len();
    let expr = source[start..]
        .split(';')
        .next()
        .unwrap_or_else(|| panic!("{name} has no value"));
    expr.split('*')
        .map(|factor| {
            let factor = factor.trim();
            if factor.starts_with(|c: char| c.is_ascii_digit()) {
                factor
                    .replace('_', "")
                    .parse::<usize>()
                    .unwrap_or_else(|e| panic!("{name}: {factor:?} is not a number ({e})"))
            } else {
                limit(factor)
            }
        })
        .product()
}

/// Every file of the server's data directory with its contents, in path order.
fn data_files(sg: &Shardgate) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = files_under(sg.data_dir());
    files.sort();
    files
}

/// Nothing reached the journal (or a checkpoint) since `before` was taken.
#[track_caller]
fn assert_nothing_journaled(sg: &Shardgate, before: &[(PathBuf, Vec<u8>)]) {
    let after = data_files(sg);
    let sizes = |files: &[(PathBuf, Vec<u8>)]| -> Vec<(PathBuf, usize)> {
        files.iter().map(|(p, b)| (p.clone(), b.len())).collect()
    };
    assert!(
        after == before,
        "the data directory changed: before {:?}, after {:?}",
        sizes(before),
        sizes(&after)
    );
}

/// A 400 whose `error` starts with `prefix` (the field path) and is short: it names the
/// field and the bound, never echoes a huge value back.
#[track_caller]
fn assert_400_naming(resp: Resp, prefix: &str) -> String {
    assert_eq!(resp.status, 400, "{resp}");
    let error = resp.error();
    assert!(
        error.starts_with(prefix),
        "the error names {prefix:?}: {error}"
    );
    assert!(error.len() < 300, "the error is short: {error}");
    error
}

fn get(admin: &Client, path: &str) -> Value {
    admin.get(path).expect_status(200).json()
}

/// A gateway with an upstream and a service; returns (gateway id, service id).
fn gateway_with_service(admin: &Client) -> (String, String) {
    let gid = id_of(&create_gateway(admin, "api"));
    let upstream = id_of(&create_upstream(admin, &gid, "pool"));
    let service = id_of(&create_service(admin, &gid, "svc", &upstream));
    (gid, service)
}

// ---------------------------------------------------------------------------------------------
// Lengths

#[test]
fn a_one_megabyte_rule_path_is_400_naming_path_and_nothing_is_journaled() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let admin = sg.admin();
        let (gid, service) = gateway_with_service(&admin);
        let before = data_files(&sg);
        assert!(
            before.iter().map(|(_, bytes)| bytes.len()).sum::<usize>() > 0,
            "[{driver}] the setup writes are on disk: {:?}",
            before.iter().map(|(p, _)| p).collect::<Vec<_>>()
        );

        let path = format!("/{}", "a".repeat(1_000_000));
        assert_eq!(path.len(), 1_000_001);
        let error = assert_400_naming(
            admin.post_json(
                &children(&gid, "rules"),
                &json!({"path": path, "service_id": service}),
            ),
            "path: ",
        );
        let max = limit("MAX_PATH_BYTES");
        assert!(
            error.contains("1000001 bytes") && error.contains(&format!("maximum is {max}")),
            "[{driver}] states the length and the bound: {error}"
        );

        assert_eq!(
            get(&admin, &children(&gid, "rules"))["count"],
            0,
            "[{driver}]"
        );
        assert_nothing_journaled(&sg, &before);
    }
}

#[test]
fn a_rule_path_of_exactly_the_maximum_is_accepted_and_one_byte_more_is_400() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let admin = sg.admin();
        let (gid, service) = gateway_with_service(&admin);
        let max = limit("MAX_PATH_BYTES");

        let at_max = format!("/{}", "a".repeat(max - 1));
        let created = admin
            .post_json(
                &children(&gid, "rules"),
                &json!({"path": at_max, "service_id": service}),
            )
            .expect_status(201)
            .json();
        assert_eq!(created["path"], at_max.as_str(), "[{driver}]");

        let before = data_files(&sg);
        let over = format!("/b{}", "a".repeat(max - 1));
        assert_eq!(over.len(), max + 1);
        assert_400_naming(
            admin.post_json(
                &children(&gid, "rules"),
                &json!({"path": over, "service_id": service}),
            ),
            "path: ",
        );
        // The same bound on an update: the stored rule stays as it was.
        let rule_path = format!("{}/{}", children(&gid, "rules"), id_of(&created));
        assert_400_naming(
            admin.put_json(&rule_path, &json!({"path": over, "service_id": service})),
            "path: ",
        );
        assert_eq!(get(&admin, &rule_path), created, "[{driver}]");
        assert_eq!(
            get(&admin, &children(&gid, "rules"))["count"],
            1,
            "[{driver}]"
        );
        assert_nothing_journaled(&sg, &before);
    }
}

#[test]
fn an_over_long_gateway_name_is_400_naming_name_and_an_update_leaves_the_gateway_unchanged() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let admin = sg.admin();
        let max = limit("MAX_NAME_BYTES");

        let created = admin
            .post_json(
                GATEWAYS,
                &json!({"name": "n".repeat(max), "subdomain": "api"}),
            )
            .expect_status(201)
            .json();
        let before = data_files(&sg);

        let error = assert_400_naming(
            admin.post_json(
                GATEWAYS,
                &json!({"name": "n".repeat(max + 1), "subdomain": "other"}),
            ),
            "name: ",
        );
        assert!(
            error.contains(&format!("maximum is {max}")),
            "[{driver}] {error}"
        );
        let gateway_path = format!("{GATEWAYS}/{}", id_of(&created));
        assert_400_naming(
            admin.put_json(
                &gateway_path,
                &json!({"name": "n".repeat(1_000_000), "subdomain": "api"}),
            ),
            "name: ",
        );

        assert_eq!(get(&admin, &gateway_path), created, "[{driver}]");
        assert_eq!(get(&admin, GATEWAYS)["count"], 1, "[{driver}]");
        assert_nothing_journaled(&sg, &before);
    }
}

#[test]
fn an_over_long_string_inside_plugin_settings_is_400_naming_its_full_path() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let admin = sg.admin();
        let before = data_files(&sg);
        let mut gateway = seed_gateway();
        gateway["required_plugins"][0]["settings"]["limits"]["global"]["window"] =
            json!("1".repeat(limit("MAX_JSON_STRING_BYTES") + 1));

        assert_400_naming(
            admin.post_json(GATEWAYS, &gateway),
            "required_plugins[0].settings.limits.global.window: too long",
        );
        assert_eq!(get(&admin, GATEWAYS)["count"], 0, "[{driver}]");
        assert_nothing_journaled(&sg, &before);
    }
}

// ---------------------------------------------------------------------------------------------
// Counts inside one entity

#[test]
fn a_chain_at_the_maximum_is_accepted_and_one_more_plugin_is_400_leaving_the_gateway_unchanged() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let admin = sg.admin();
        let max = limit("MAX_PLUGINS_PER_CHAIN");
        let plugin = seed_gateway()["required_plugins"][0].clone();

        let mut gateway = json!({"name": "g", "subdomain": "api"});
        gateway["required_plugins"] = json!(vec![plugin.clone(); max]);
        let created = admin
            .post_json(GATEWAYS, &gateway)
            .expect_status(201)
            .json();
        let gateway_path = format!("{GATEWAYS}/{}", id_of(&created));
        let before = data_files(&sg);

        gateway["required_plugins"] = json!(vec![plugin; max + 1]);
        let error = assert_400_naming(
            admin.put_json(&gateway_path, &gateway),
            "required_plugins: ",
        );
        assert!(
            error.contains(&format!("{}", max + 1)) && error.contains(&format!("maximum is {max}")),
            "[{driver}] {error}"
        );

        let stored = get(&admin, &gateway_path);
        assert_eq!(stored, created, "[{driver}]");
        assert_eq!(
            stored["required_plugins"].as_array().map(Vec::len),
            Some(max),
            "[{driver}]"
        );
        assert_nothing_journaled(&sg, &before);
    }
}

#[test]
fn an_upstream_with_more_than_the_maximum_targets_is_400_naming_targets() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let admin = sg.admin();
        let gid = id_of(&create_gateway(&admin, "api"));
        let before = data_files(&sg);
        let target = json!({"host": "127.0.0.1", "port": 9});
        let targets = vec![target; limit("MAX_TARGETS_PER_UPSTREAM") + 1];

        assert_400_naming(
            admin.post_json(
                &children(&gid, "upstreams"),
                &json!({"name": "pool", "targets": targets}),
            ),
            "targets: too many",
        );
        assert_eq!(
            get(&admin, &children(&gid, "upstreams"))["count"],
            0,
            "[{driver}]"
        );
        assert_nothing_journaled(&sg, &before);
    }
}

#[test]
fn an_error_quoting_client_input_is_cut_to_a_kibibyte() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let admin = sg.admin();
        // serde names an unknown enum variant by quoting it; 100 KB of it is not repeated.
        let mut gateway = seed_gateway();
        gateway["required_plugins"][0]["stage"] = json!("s".repeat(100_000));
        let resp = admin.post_json(GATEWAYS, &gateway);
        assert_eq!(resp.status, 400, "[{driver}] {resp}");
        let error = resp.error();
        assert!(
            error.starts_with("required_plugins[0].stage"),
            "[{driver}] {error}"
        );
        assert!(
            error.len() <= 1024 + '…'.len_utf8(),
            "[{driver}] {} bytes",
            error.len()
        );
        assert_eq!(get(&admin, GATEWAYS)["count"], 0, "[{driver}]");
    }
}

// ---------------------------------------------------------------------------------------------
// Duplicate keys and nesting

#[test]
fn a_duplicate_top_level_key_is_400_naming_the_key_and_nothing_is_created() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let admin = sg.admin();
        let before = data_files(&sg);

        let error = assert_400_naming(
            admin.send_json_text(
                "POST",
                GATEWAYS,
                r#"{"name": "a", "subdomain": "api", "name": "b"}"#,
            ),
            r#"duplicate key "name""#,
        );
        assert!(error.contains("line 1 column"), "[{driver}] {error}");

        // Equal after unescaping is equal: a proxy comparing raw bytes would miss it.
        assert_400_naming(
            admin.send_json_text(
                "POST",
                GATEWAYS,
                r#"{"subdomain": "api", "subdomain": "admin", "name": "g"}"#,
            ),
            r#"duplicate key "subdomain""#,
        );
        assert_400_naming(
            admin.send_json_text(
                "POST",
                GATEWAYS,
                r#"{"name": "a", "subdomain": "api", "n\u0061me": "b"}"#,
            ),
            r#"duplicate key "name""#,
        );

        assert_eq!(get(&admin, GATEWAYS)["count"], 0, "[{driver}]");
        assert_nothing_journaled(&sg, &before);
    }
}

#[test]
fn a_duplicate_key_inside_plugin_settings_is_400_naming_where_it_is() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let admin = sg.admin();
        let before = data_files(&sg);
        let body = r#"{
            "name": "g",
            "subdomain": "api",
            "required_plugins": [{
                "name": "rate_limiter",
                "stage": "pre_request",
                "settings": {
                    "limits": {"global": {"limit": 1000, "window": "1m"}},
                    "limits": {"global": {"limit": 1, "window": "1m"}}
                }
            }]
        }"#;

        assert_400_naming(
            admin.send_json_text("POST", GATEWAYS, body),
            r#"required_plugins[0].settings: duplicate key "limits""#,
        );
        assert_eq!(get(&admin, GATEWAYS)["count"], 0, "[{driver}]");
        assert_nothing_journaled(&sg, &before);
    }
}

#[test]
fn a_duplicate_key_in_a_rule_update_is_400_and_the_rule_is_unchanged() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let admin = sg.admin();
        let (gid, service) = gateway_with_service(&admin);
        let created = admin
            .post_json(
                &children(&gid, "rules"),
                &json!({"path": "/v1/*", "service_id": service, "headers": {"x-tier": "free"}}),
            )
            .expect_status(201)
            .json();
        let rule_path = format!("{}/{}", children(&gid, "rules"), id_of(&created));
        let before = data_files(&sg);

        let body = format!(
            r#"{{"path": "/v1/*", "service_id": "{service}",
                 "headers": {{"x-tier": "free", "x-tier": "paid"}}}}"#
        );
        assert_400_naming(
            admin.send_json_text("PUT", &rule_path, &body),
            r#"headers: duplicate key "x-tier""#,
        );
        assert_eq!(get(&admin, &rule_path), created, "[{driver}]");
        assert_nothing_journaled(&sg, &before);
    }
}

#[test]
fn a_deeply_nested_body_is_400_and_the_server_keeps_serving() {
    for driver in io_drivers() {
        let sg = Shardgate::start(Options::new().io_driver(driver));
        let admin = sg.admin();
        let before = data_files(&sg);
        let depth = 100_000;
        let body = format!(
            r#"{{"name": "g", "subdomain": "api", "required_plugins": [{{"name": "rate_limiter",
                "stage": "pre_request", "settings": {}1{}}}]}}"#,
            r#"{"a":"#.repeat(depth),
            "}".repeat(depth)
        );
        assert!(body.len() < 1024 * 1024, "under the body limit");

        let error = assert_400_naming(
            admin.send_json_text("POST", GATEWAYS, &body),
            "required_plugins[0].settings.a.a",
        );
        assert!(
            error.contains(&format!("more than {} levels", limit("MAX_JSON_DEPTH"))),
            "[{driver}] {error}"
        );
        let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let error = admin
            .send_json_text("POST", GATEWAYS, &arrays)
            .expect_status(400)
            .error();
        assert!(error.contains("nested too deeply"), "[{driver}] {error}");

        admin.get("/health").expect_status(200);
        assert_eq!(get(&admin, GATEWAYS)["count"], 0, "[{driver}]");
        assert_nothing_journaled(&sg, &before);
    }
}

// ---------------------------------------------------------------------------------------------
// The documentation

#[test]
fn docs_security_md_lists_every_bound_with_its_value() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = fs::read_to_string(root.join("core/src/model.rs")).expect("read model.rs");
    let doc = fs::read_to_string(root.join("docs/SECURITY.md")).expect("read docs/SECURITY.md");
    let names: Vec<&str> = model
        .lines()
        .filter_map(|line| line.trim().strip_prefix("pub const "))
        .filter_map(|rest| rest.split(':').next())
        .filter(|name| name.starts_with("MAX_"))
        .collect();
    assert!(names.len() > 20, "found the limits: {names:?}");
    for name in names {
        let value = limit(name);
        let row = doc
            .lines()
            .find(|line| line.starts_with('|') && line.contains(&format!("`{name}`")))
            .unwrap_or_else(|| panic!("docs/SECURITY.md has no table row for {name}"));
        let digits: String = row
            .chars()
            .filter(|c| c.is_ascii_digit() || *c == '|')
            .collect();
        assert!(
            digits.split('|').any(|cell| cell == value.to_string()),
            "docs/SECURITY.md gives {name} another value than {value}: {row}"
        );
    }
}
