//! Checks of the workspace's shape that the compiler does not make: the host crates form layers
//! (no crate depends on one above it, and the policy side never depends on the data plane), and
//! inside each host crate the modules import each other without cycles.
//!
//! Run as unit tests of `cargo xtask` (`cargo test -p xtask layers`). This module only reads
//! manifests and sources as text; it builds nothing and judges nothing but the import graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The host crates from the bottom layer up. A crate may depend only on crates of lower layers.
const LAYERS: &[&[&str]] = &[
    &["sluice-config", "sluice-forecast", "sluice-geyser"],
    &["sluice-contract", "sluice-feed"],
    &["sluice-proxy", "sluice-policy"],
    &["sluice-scorer", "sluice-analytics", "sluice-cluster"],
    &["sluice-admin"],
    &["sluice"],
];

/// Crates that speak for the policies and must build without the HTTP/2 data plane.
const POLICY_SIDE: &[&str] = &["sluice-contract", "sluice-policy", "sluice-scorer"];

/// The repository root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The layer of a host crate, if it is one.
fn layer_of(name: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&name))
}

/// The `sluice-*` crates named in the `[dependencies]` table of `manifest` (not dev or build
/// dependencies).
fn sluice_dependencies(manifest: &str) -> Vec<String> {
    let mut in_dependencies = false;
    let mut found = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]";
            continue;
        }
        if in_dependencies && line.starts_with("sluice") {
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            found.push(name);
        }
    }
    found
}

/// The top-level module a `crate::` path names, from the text that follows `crate::`.
fn first_segment(text: &str) -> Option<String> {
    let name: String = text
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// The modules of `prefix` (`crate::` or `super::`) that `source` refers to, comments left out
/// (doc links are not imports). `use crate::{a, b::c}` names `a` and `b`.
fn referenced(source: &str, prefix: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let after = &rest[at + prefix.len()..];
            if let Some(group) = after.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or_default();
                names.extend(
                    inner
                        .split(',')
                        .filter_map(|item| first_segment(item.trim())),
                );
            } else if let Some(name) = first_segment(after) {
                names.insert(name);
            }
            rest = after;
        }
    }
    names
}

/// Every `.rs` file below `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(next) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// The child modules of the module folder `dir` (`x.rs` and `x/` give `x`), without `mod.rs`.
fn children(dir: &Path) -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let path = entry.path();
            let stem = path.file_stem()?.to_str()?.to_owned();
            let module = path.is_dir() || path.extension().is_some_and(|e| e == "rs");
            (module && !["mod", "lib", "main", "tests"].contains(&stem.as_str())).then_some(stem)
        })
        .collect()
}

/// The sources of child module `name` of the folder `dir`: `name.rs` and everything in `name/`.
fn sources_of(dir: &Path, name: &str) -> Vec<String> {
    let mut paths = vec![dir.join(format!("{name}.rs"))];
    paths.extend(rust_files(&dir.join(name)));
    paths
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .collect()
}

/// A cycle in `edges`, as the modules along it, if there is one.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
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
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

/// The import graph among the child modules of the module folder `dir`, as `prefix` paths
/// (`crate::` at a crate's root, `super::` one level down) name them.
fn module_graph(dir: &Path, prefix: &str) -> BTreeMap<String, BTreeSet<String>> {
    let modules = children(dir);
    modules
        .iter()
        .map(|module| {
            let targets = sources_of(dir, module)
                .iter()
                .flat_map(|source| referenced(source, prefix))
                .filter(|target| target != module && modules.contains(target))
                .collect();
            (module.clone(), targets)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every host crate's folder and name.
    fn host_crates() -> Vec<(String, PathBuf)> {
        let mut crates: Vec<(String, PathBuf)> = std::fs::read_dir(root().join("host"))
            .expect("host/ is readable")
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.join("Cargo.toml").is_file())
            .map(|path| {
                let name = path.file_name().expect("a folder name");
                (name.to_string_lossy().into_owned(), path)
            })
            .collect();
        crates.sort();
        crates
    }

    #[test]
    fn host_crates_depend_only_on_lower_layers() {
        let mut problems = Vec::new();
        for (name, dir) in host_crates() {
            let Some(layer) = layer_of(&name) else {
                problems.push(format!("{name} is in no layer of xtask/src/layers.rs"));
                continue;
            };
            let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("manifest");
            for dependency in sluice_dependencies(&manifest) {
                match layer_of(&dependency) {
                    Some(below) if below < layer => {}
                    _ => problems.push(format!("{name} depends on {dependency}")),
                }
                if POLICY_SIDE.contains(&name.as_str()) && dependency == "sluice-proxy" {
                    problems.push(format!("{name} builds against the data plane"));
                }
            }
        }
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn modules_of_every_host_crate_import_each_other_without_cycles() {
        let mut problems = Vec::new();
        for (name, dir) in host_crates() {
            let src = dir.join("src");
            if let Some(cycle) = find_cycle(&module_graph(&src, "crate::")) {
                problems.push(format!("{name}: {}", cycle.join(" -> ")));
            }
            for parent in children(&src) {
                let folder = src.join(&parent);
                if let Some(cycle) = find_cycle(&module_graph(&folder, "super::")) {
                    problems.push(format!("{name}::{parent}: {}", cycle.join(" -> ")));
                }
            }
        }
        assert!(problems.is_empty(), "import cycles: {problems:#?}");
    }

    #[test]
    fn references_are_read_from_code_and_grouped_imports() {
        let source = "use crate::{pool::Pool, health};\n\
                      // crate::front is only mentioned\n\
                      /// [`crate::route`] is a doc link\n\
                      let x = crate::grpc::Status::ok(); // crate::tls\n";
        let names: Vec<String> = referenced(source, "crate::").into_iter().collect();
        assert_eq!(names, ["grpc", "health", "pool"]);
    }

    #[test]
    fn a_cycle_is_found_and_named() {
        let edge = |a: &str, b: &[&str]| {
            (
                a.to_owned(),
                b.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>(),
            )
        };
        let acyclic: BTreeMap<_, _> = [edge("a", &["b"]), edge("b", &["c"]), edge("c", &[])]
            .into_iter()
            .collect();
        assert_eq!(find_cycle(&acyclic), None);
        let cyclic: BTreeMap<_, _> = [edge("a", &["b"]), edge("b", &["c"]), edge("c", &["a"])]
            .into_iter()
            .collect();
        assert_eq!(
            find_cycle(&cyclic).map(|c| c.join(" -> ")),
            Some("a -> b -> c -> a".to_owned())
        );
    }

    #[test]
    fn only_the_dependencies_table_counts() {
        let manifest = "[dependencies]\nsluice-config.workspace = true\nserde = \"1\"\n\
                        [dev-dependencies]\nsluice-tests = { path = \"x\" }\n";
        assert_eq!(sluice_dependencies(manifest), ["sluice-config"]);
    }
}
