//! The plugin documentation says what the plugins accept. Every setting path the catalogue
//! documents (`GET /api/v1/plugins`, and README's plugin table, which is rendered from it)
//! must be a field the plugin's settings parser knows, and every field the parser knows
//! must be documented. The parsers refuse unknown fields by name, and their refusal lists
//! the fields they expect: that list is what the catalogue is held against, level by level.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};
use shardgate_core::plugins::{CATALOGUE, PluginDef, parse_settings};

const BOGUS: &str = "no_such_setting";

/// `{"a": {"b": leaf}}` for the path `a.b`.
fn nested(path: &[&str], leaf: Value) -> Value {
    path.iter().rev().fold(leaf, |inner, key| {
        Value::Object(Map::from_iter([((*key).to_owned(), inner)]))
    })
}

/// Why `settings` is refused, when it is refused as having an unknown field.
fn unknown_field(plugin: &PluginDef, settings: &Value) -> Option<String> {
    match parse_settings(plugin.name, settings) {
        Err(e) if e.message.contains("unknown field") => Some(format!("{}: {}", e.path, e.message)),
        _ => None,
    }
}

/// The fields a parser expects at one level, read from its refusal of a bogus field
/// (serde: "unknown field `x`, expected one of `a`, `b`" / "expected `a` or `b`").
fn expected_fields(refusal: &str) -> BTreeSet<String> {
    let Some((_, expected)) = refusal.split_once("expected") else {
        return BTreeSet::new();
    };
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The object levels a plugin's documented paths pass through: `""` (the settings
/// object) and each proper prefix (`limits`, `limits.global`, ...).
fn levels(plugin: &PluginDef) -> BTreeSet<String> {
    let mut levels = BTreeSet::from([String::new()]);
    for setting in plugin.settings {
        let segments: Vec<&str> = setting.path.split('.').collect();
        for end in 1..segments.len() {
            levels.insert(segments[..end].join("."));
        }
    }
    levels
}

#[test]
fn every_documented_plugin_setting_is_a_field_its_parser_accepts() {
    let mut checked = 0;
    for plugin in CATALOGUE {
        for setting in plugin.settings {
            let path: Vec<&str> = setting.path.split('.').collect();
            // The value may well be refused (wrong type, a required sibling missing): what
            // matters is that the field itself is known.
            for value in [Value::Null, json!(1), json!("1s"), json!([]), json!({})] {
                let settings = nested(&path, value);
                assert_eq!(
                    unknown_field(plugin, &settings),
                    None,
                    "{}: the catalogue documents `{}`, which the parser does not know",
                    plugin.name,
                    setting.path
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} documented settings");
}

#[test]
fn every_field_a_plugin_parser_accepts_is_documented() {
    for plugin in CATALOGUE {
        for level in levels(plugin) {
            let mut path: Vec<&str> = if level.is_empty() {
                Vec::new()
            } else {
                level.split('.').collect()
            };
            path.push(BOGUS);
            let Some(refusal) = unknown_field(plugin, &nested(&path, json!(1))) else {
                panic!(
                    "{}: `{}` accepts unknown fields, so the catalogue cannot be checked against \
                     it",
                    plugin.name,
                    path.join(".")
                );
            };
            let expected = expected_fields(&refusal);
            assert!(
                !expected.is_empty(),
                "{}: cannot read the expected fields from {refusal:?}",
                plugin.name
            );
            for field in expected {
                let full = if level.is_empty() {
                    field
                } else {
                    format!("{level}.{field}")
                };
                let documented = plugin.settings.iter().any(|setting| {
                    setting.path == full || setting.path.starts_with(&format!("{full}."))
                });
                assert!(
                    documented,
                    "{}: the parser accepts `{full}`, which the catalogue does not document",
                    plugin.name
                );
            }
        }
    }
}

#[test]
fn expected_fields_are_read_from_each_shape_of_serde_refusal() {
    let read = |text: &str| expected_fields(text).into_iter().collect::<Vec<_>>();
    assert_eq!(
        read("unknown field `x`, expected one of `a`, `b`, `c`"),
        ["a", "b", "c"]
    );
    assert_eq!(read("unknown field `x`, expected `a` or `b`"), ["a", "b"]);
    assert_eq!(read("unknown field `x`, expected `a`"), ["a"]);
    assert!(read("unknown field `x`, there are no fields").is_empty());
}
