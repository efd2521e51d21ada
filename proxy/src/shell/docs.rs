//! The README's two reference tables, rendered from what they describe: the flags of
//! `shardgate run` from clap's [`Command`](clap::Command) (flag, environment variable,
//! default, first sentence of the help) and the plugins from
//! [`shardgate_core::plugins::CATALOGUE`] (name, stages, description, setting paths).
//!
//! README.md holds each table between `<!-- generated:NAME -->` and
//! `<!-- /generated:NAME -->`. A test fails when they differ from the sources; run it with
//! `SHARDGATE_UPDATE_README=1` to rewrite them:
//!
//! ```sh
//! SHARDGATE_UPDATE_README=1 cargo test -p shardgate-proxy --lib readme
//! ```

use clap::{Arg, CommandFactory};
use shardgate_core::plugins::CATALOGUE;

use crate::shell::cli::{Cli, run_settings};

/// The generated sections of README.md, by marker name.
pub const SECTIONS: [&str; 2] = ["flags", "plugins"];

/// Where a section comes from and how to regenerate it, written into the section so
/// that an editor of README.md sees it.
fn provenance(source: &str) -> String {
    format!(
        "<!-- This table is rendered from {source}: edit it there, then run \
         `SHARDGATE_UPDATE_README=1 cargo test -p shardgate-proxy --lib readme` -->"
    )
}

/// The body of section `name` (between its markers, without them).
pub fn section(name: &str) -> Option<String> {
    let (source, table) = match name {
        "flags" => (
            "the flags' clap definitions (proxy/src/shell/cli.rs)",
            flags_table(),
        ),
        "plugins" => (
            "shardgate_core::plugins::CATALOGUE (core/src/plugins/)",
            plugins_table(),
        ),
        _ => return None,
    };
    Some(format!("{}\n{table}", provenance(source)))
}

/// One row per flag of `shardgate run`, in declaration order.
pub fn flags_table() -> String {
    let command = Cli::command();
    let mut out = String::from("| flag | environment | default | meaning |\n|---|---|---|---|\n");
    for arg in run_settings(&command) {
        let flag = arg.get_long().unwrap_or_default();
        let env = arg
            .get_env()
            .map(|var| format!("`{}`", var.to_string_lossy()))
            .unwrap_or_default();
        out.push_str(&format!(
            "| `--{flag}` | {env} | {} | {} |\n",
            cell(&default_of(arg)),
            cell(first_sentence(&help_of(arg)))
        ));
    }
    out
}

/// One row per plugin, in catalogue order.
pub fn plugins_table() -> String {
    let mut out =
        String::from("| plugin | stages | what it does | settings |\n|---|---|---|---|\n");
    for plugin in CATALOGUE {
        let stages: Vec<&str> = plugin.stages.iter().map(|stage| stage.as_str()).collect();
        let settings: Vec<String> = plugin
            .settings
            .iter()
            .map(|setting| format!("`{}`", setting.path))
            .collect();
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            plugin.name,
            stages.join(", "),
            cell(plugin.description),
            settings.join(", ")
        ));
    }
    out
}

/// `text` with section `name`'s body replaced by `body`; `None` when the markers are
/// missing or out of order.
pub fn replace_section(text: &str, name: &str, body: &str) -> Option<String> {
    let open = format!("<!-- generated:{name} -->\n");
    let close = format!("<!-- /generated:{name} -->");
    let start = text.find(&open)? + open.len();
    let end = start + text[start..].find(&close)?;
    Some(format!("{}{body}{}", &text[..start], &text[end..]))
}

/// The help as `--help` shows it (all paragraphs), on one line.
fn help_of(arg: &Arg) -> String {
    arg.get_long_help()
        .or_else(|| arg.get_help())
        .map(|help| help.to_string())
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The sentences of `help`: it is split after each `.` that a space follows.
fn sentences(help: &str) -> impl Iterator<Item = &str> {
    help.split(". ")
        .map(|sentence| sentence.trim().trim_end_matches('.'))
}

fn first_sentence(help: &str) -> &str {
    sentences(help).next().unwrap_or_default()
}

/// A `Default: ...` sentence of the help, for a default clap cannot show (none, or one
/// computed on the host).
fn stated_default(help: &str) -> Option<&str> {
    sentences(help).find_map(|sentence| sentence.strip_prefix("Default: "))
}

/// The default column: the help's `Default:` sentence if it has one, else the value
/// clap falls back to, `none` for no value or an empty one.
fn default_of(arg: &Arg) -> String {
    let help = help_of(arg);
    if let Some(stated) = stated_default(&help) {
        return stated.to_owned();
    }
    let values: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|value| value.to_string_lossy().into_owned())
        .collect();
    match values.as_slice() {
        [] => "none".to_owned(),
        [value] if value.is_empty() => "none".to_owned(),
        values => format!("`{}`", values.join(",")),
    }
}

/// Text as a Markdown table cell: one line, `|` escaped.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");

    /// README.md's flag and plugin tables are exactly what their sources render.
    #[test]
    fn readme_tables_are_generated_from_the_flags_and_the_plugin_catalogue() {
        let readme = match std::fs::read_to_string(README) {
            Ok(text) => text,
            Err(e) => panic!("cannot read {README}: {e}"),
        };
        let mut expected = readme.clone();
        for name in SECTIONS {
            let Some(body) = section(name) else {
                panic!("no generator for section {name}");
            };
            expected = replace_section(&expected, name, &body).unwrap_or_else(|| {
                panic!(
                    "README.md lacks the markers <!-- generated:{name} --> (on a line of its own) \
                     ... <!-- /generated:{name} -->"
                )
            });
        }
        if expected == readme {
            return;
        }
        if std::env::var_os("SHARDGATE_UPDATE_README").is_some() {
            if let Err(e) = std::fs::write(README, &expected) {
                panic!("cannot write {README}: {e}");
            }
            return;
        }
        let (line, (want, have)) = expected
            .lines()
            .zip(readme.lines())
            .enumerate()
            .find(|(_, (want, have))| want != have)
            .unwrap_or((0, ("(length differs)", "")));
        panic!(
            "README.md's generated tables are out of date (first difference at line {}):\n  \
             README: {have}\n  source: {want}\nRegenerate them with \
             `SHARDGATE_UPDATE_README=1 cargo test -p shardgate-proxy --lib readme`",
            line + 1
        );
    }

    /// A default is stated once: by clap, or (where clap shows none) by one `Default:`
    /// sentence of the help.
    #[test]
    fn every_flag_states_its_default_exactly_once() {
        let command = Cli::command();
        for arg in run_settings(&command) {
            let help = help_of(arg);
            let shown = !arg.get_default_values().is_empty() && !arg.is_hide_default_value_set();
            let stated = stated_default(&help).is_some();
            assert!(
                shown != stated,
                "--{}: default {} (clap shows one: {shown}; help has a `Default:` sentence: \
                 {stated})",
                arg.get_long().unwrap_or_default(),
                if shown { "stated twice" } else { "not stated" }
            );
            assert!(
                !first_sentence(&help).is_empty(),
                "--{} has no help",
                arg.get_long().unwrap_or_default()
            );
        }
    }

    #[test]
    fn tables_have_a_row_per_flag_and_per_plugin() {
        let command = Cli::command();
        let flags = flags_table();
        assert_eq!(flags.lines().count(), 2 + run_settings(&command).count());
        assert!(
            flags.contains(
                "| `--header-timeout` | `SHARDGATE_HEADER_TIMEOUT` | `10s` | A client must send \
                 a whole request head within this once it starts one; slower clients get 408 and \
                 are closed |"
            ),
            "{flags}"
        );
        assert!(
            flags.contains(
                "| `--workers` | `SHARDGATE_WORKERS` | the CPUs available to this process |"
            ),
            "{flags}"
        );
        assert!(flags.contains("| `--trusted-proxies` | `SHARDGATE_TRUSTED_PROXIES` | none |"));
        let plugins = plugins_table();
        assert_eq!(plugins.lines().count(), 2 + CATALOGUE.len());
        assert!(
            plugins.contains("| `cors` | pre_request, pre_response | Cross-Origin"),
            "{plugins}"
        );
    }

    #[test]
    fn sections_are_replaced_between_their_markers_only() {
        let text = "a\n<!-- generated:x -->\nold\n<!-- /generated:x -->\nb\n";
        assert_eq!(
            replace_section(text, "x", "new\n").as_deref(),
            Some("a\n<!-- generated:x -->\nnew\n<!-- /generated:x -->\nb\n")
        );
        assert_eq!(replace_section(text, "y", "new\n"), None);
        assert_eq!(
            replace_section("<!-- /generated:x -->\n<!-- generated:x -->\n", "x", ""),
            None
        );
    }

    #[test]
    fn cells_are_one_line_with_pipes_escaped() {
        assert_eq!(cell("a |\n  b"), "a \\| b");
        assert_eq!(first_sentence("One. Two."), "One");
        assert_eq!(first_sentence("Range 1..=1024. Two"), "Range 1..=1024");
        assert_eq!(stated_default("X. Default: none (y)."), Some("none (y)"));
    }
}
