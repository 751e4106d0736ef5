//! The seam, checked: the call core depends on no transport or storage crate, and its modules
//! import each other without a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const FORBIDDEN: [&str; 9] = [
    "axum",
    "rsipstack",
    "socketioxide",
    "sqlx",
    "reqwest",
    "hyper",
    "tokio-tungstenite",
    "str0m",
    "voxgate-rtp",
];

#[test]
fn no_transport_crate_is_a_dependency() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let mut section = String::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        if !section.contains("dependencies") || line.starts_with('#') {
            continue;
        }
        let name = line.split(['=', ' ']).next().unwrap_or_default();
        assert!(
            !FORBIDDEN.contains(&name),
            "voxgate-call must not depend on `{name}` ({section}): adapters depend on the core, never the reverse"
        );
    }
}

#[test]
fn modules_import_each_other_without_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut imports: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let module = path.file_stem().unwrap().to_string_lossy().to_string();
        if module == "lib" || module == "tests" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let deps = imports.entry(module.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != module && src.join(format!("{name}.rs")).exists() {
                deps.insert(name);
            }
        }
    }
    // Depth-first search for a cycle.
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(i) = path.iter().position(|p| p == m) {
            panic!(
                "modules import each other in a circle: {}",
                path[i..].join(" -> ") + " -> " + m
            );
        }
        path.push(m.to_string());
        for d in g.get(m).into_iter().flatten() {
            visit(d, g, path, done);
        }
        path.pop();
        done.insert(m.to_string());
    }
    let mut done = BTreeSet::new();
    for m in imports.keys() {
        visit(m, &imports, &mut Vec::new(), &mut done);
    }
    assert!(imports.len() >= 6, "{imports:?}");
}
