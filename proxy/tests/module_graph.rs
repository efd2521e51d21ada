//! The import graph of `proxy/src` has no cycle: each stage of the request flow can be read
//! (and changed) knowing only the modules it imports, never the ones that call it
//! (issue: "an acyclic proxy"). A module is a file of `proxy/src` or a folder (`shell/`);
//! an edge `a → b` is a `crate::b` path in `a`'s code (comments are not imports).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).expect("read proxy/src") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// Module name → the modules it names as `crate::x`.
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&src) {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("a UTF-8 path");
        let module = first.trim_end_matches(".rs").to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = fs::read_to_string(&file).expect("read a source file");
        let edges = graph.entry(module.clone()).or_default();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or_default();
            let mut rest = code;
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    edges.insert(name);
                }
            }
            // `use crate::{a, b}` names several at once.
            if let Some(group) = code.trim().strip_prefix("use crate::{") {
                for name in group.split([',', '}', ' ', ':']) {
                    if !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    {
                        edges.insert(name.to_owned());
                    }
                }
            }
        }
    }
    graph
}

/// A cycle through `node`, if the graph has one reachable from it.
fn find_cycle(
    graph: &BTreeMap<String, BTreeSet<String>>,
    node: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|n| n == node) {
        let mut cycle = path[at..].to_vec();
        cycle.push(node.to_owned());
        return Some(cycle);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_owned());
    for next in graph.get(node).into_iter().flatten() {
        if let Some(cycle) = find_cycle(graph, next, path, done) {
            return Some(cycle);
        }
    }
    path.pop();
    done.insert(node.to_owned());
    None
}

#[test]
fn the_proxy_modules_import_each_other_without_a_cycle() {
    let graph = import_graph();
    assert!(graph.len() >= 20, "found the modules: {graph:?}");
    assert!(
        graph["request"].contains("forward") && graph["forward"].contains("respond"),
        "the import scan sees `use crate::` lines: {graph:?}"
    );
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(cycle) = find_cycle(&graph, module, &mut Vec::new(), &mut done) {
            panic!("import cycle in proxy/src: {}", cycle.join(" → "));
        }
    }
}

#[test]
fn the_hot_path_never_imports_the_process_shell() {
    let graph = import_graph();
    for (module, imports) in &graph {
        if module != "shell" {
            assert!(
                !imports.contains("shell"),
                "{module} imports the shell (CLI/doctor/process)"
            );
        }
    }
}
