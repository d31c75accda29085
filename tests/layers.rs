//! The layers point one way. Each top-level module of `src/` may name only the layers below
//! it, `core` and `ledger` never import `worker`, and no module is pulled in by `#[path]`:
//!
//! core ← ledger ← runtime ← { objects, shell }
//!
//! `objects` and `shell` never import each other: the shell reaches the objects through their
//! stubs and the messages of `ledger::protocol`.

use std::fs;
use std::path::{Path, PathBuf};

/// The crate modules each layer may name, besides itself.
const ALLOWED: &[(&str, &[&str])] = &[
    ("core", &[]),
    ("ledger", &["core"]),
    ("runtime", &["core", "ledger"]),
    ("objects", &["core", "ledger", "runtime"]),
    ("shell", &["core", "ledger", "runtime"]),
];
const LAYERS: [&str; 5] = ["core", "ledger", "runtime", "objects", "shell"];
/// Layers that must build and test natively: no Workers runtime.
const PURE: [&str; 2] = ["core", "ledger"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("readable source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::<module>` a source file names.
fn crate_references(text: &str) -> Vec<&str> {
    text.match_indices("crate::")
        .map(|(i, _)| {
            let rest = &text[i + "crate::".len()..];
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

#[test]
fn layers_point_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let text = fs::read_to_string(file).expect("readable");
        if text.contains("#[path") {
            violations.push(format!("{}: #[path] hides where a module lives", relative.display()));
        }
        let Some(layer) = relative.iter().next().and_then(|c| c.to_str()).filter(|c| LAYERS.contains(c)) else {
            continue; // lib.rs wires the layers together
        };
        let allowed = ALLOWED.iter().find(|(l, _)| *l == layer).map(|(_, a)| *a).unwrap_or(&[]);
        for named in crate_references(&text) {
            if named != layer && LAYERS.contains(&named) && !allowed.contains(&named) {
                violations.push(format!("{}: the {layer} layer names crate::{named}", relative.display()));
            }
        }
        if PURE.contains(&layer) && (text.contains("use worker") || text.contains("worker::")) {
            violations.push(format!("{}: the {layer} layer imports worker", relative.display()));
        }
    }
    assert!(files.len() > 20, "found the sources");
    assert!(violations.is_empty(), "layering violations:\n{}", violations.join("\n"));
}

/// The modules of one layer's folder name each other without a cycle (`mod.rs` counts as the
/// layer itself, and names its children by declaring them).
fn cycle_within(layer: &str) -> Option<Vec<String>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(layer);
    let mut edges: Vec<(String, Vec<String>)> = Vec::new();
    for entry in fs::read_dir(&dir).expect("layer dir") {
        let path = entry.expect("dir entry").path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()).map(String::from) else { continue };
        let file = if path.is_dir() { path.join("mod.rs") } else { path.clone() };
        let Ok(text) = fs::read_to_string(&file) else { continue };
        let node = if stem == "mod" { layer.to_string() } else { stem };
        let prefix = format!("crate::{layer}::");
        let mut named: Vec<String> = text
            .match_indices(&prefix)
            .map(|(i, _)| {
                let rest = &text[i + prefix.len()..];
                let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
                rest[..end].to_string()
            })
            .collect();
        if node == layer {
            named.extend(
                text.lines().filter_map(|l| l.trim().strip_prefix("mod ")?.strip_suffix(';').map(String::from)),
            );
        } else if text.contains(&format!("crate::{layer}::{{")) || text.contains(&format!("use crate::{layer};")) {
            named.push(layer.to_string());
        }
        edges.push((node, named));
    }
    // Items of mod.rs named as crate::<layer>::item point at the layer node itself.
    let nodes: Vec<String> = edges.iter().map(|(n, _)| n.clone()).collect();
    for (_, named) in &mut edges {
        for n in named.iter_mut() {
            if !nodes.contains(n) {
                *n = layer.to_string();
            }
        }
    }
    fn visit(
        n: &str,
        edges: &[(String, Vec<String>)],
        path: &mut Vec<String>,
        done: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            return Some(path[i..].to_vec());
        }
        if done.iter().any(|d| d == n) {
            return None;
        }
        path.push(n.to_string());
        let next = edges.iter().find(|(m, _)| m == n).map(|(_, v)| v.clone()).unwrap_or_default();
        for m in next.iter().filter(|m| *m != n) {
            if let Some(cycle) = visit(m, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.push(n.to_string());
        None
    }
    let (mut path, mut done) = (Vec::new(), Vec::new());
    nodes.iter().find_map(|n| visit(n, &edges, &mut path, &mut done))
}

#[test]
fn modules_within_a_layer_do_not_import_each_other_in_a_circle() {
    for layer in ["shell", "objects", "runtime"] {
        assert_eq!(cycle_within(layer), None, "a cycle in {layer}");
    }
}

#[test]
fn the_check_can_fail() {
    assert_eq!(crate_references("use crate::shell::proxy; crate::core::x"), vec!["shell", "core"]);
}
