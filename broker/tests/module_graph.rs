//! The broker's modules import each other in one direction only (shell -> engine -> planes ->
//! pure cores -> protocol): no circle among the top-level modules, none among the engine's
//! planes, and no file over the size where it should be split. Read from the sources, so a
//! new `use` that closes a circle fails here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Files longer than this should be split by job (STYLE.md and issue 10: "about 600").
const MAX_LINES: usize = 650;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a file belongs to at `depth` below `root` (`engine/flow.rs` -> `engine` at
/// depth 0, `flow` at depth 1).
fn module_of(root: &Path, file: &Path, depth: usize) -> Option<String> {
    let rel = file.strip_prefix(root).ok()?;
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    let name = parts.get(depth)?.clone();
    (name != "mod" && name != "lib" && name != "bin").then_some(name)
}

/// Names after `prefix` in the file's text (`crate::exchange::...` -> `exchange`).
fn referenced(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices(prefix) {
        let rest = &text[at + prefix.len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && name.chars().next().is_some_and(|c| c.is_lowercase()) {
            found.insert(name);
        }
    }
    found
}

/// A circle in `graph`, if there is one (iterative depth-first search).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark: BTreeMap<&String, Mark> = graph.keys().map(|k| (k, Mark::New)).collect();
    for start in graph.keys() {
        if mark[start] != Mark::New {
            continue;
        }
        let mut stack: Vec<(&String, Vec<&String>)> = vec![(start, graph[start].iter().collect())];
        mark.insert(start, Mark::Open);
        while let Some((node, next)) = stack.last_mut() {
            match next.pop() {
                Some(to) if graph.contains_key(to) => match mark[to] {
                    Mark::Open => {
                        let mut path: Vec<String> =
                            stack.iter().map(|(n, _)| (*n).clone()).collect();
                        let from = path.iter().position(|n| n == to).unwrap_or(0);
                        path.drain(..from);
                        path.push(to.clone());
                        return Some(path);
                    }
                    Mark::New => {
                        mark.insert(to, Mark::Open);
                        stack.push((to, graph[to].iter().collect()));
                    }
                    Mark::Done => {}
                },
                Some(_) => {}
                None => {
                    mark.insert(node, Mark::Done);
                    stack.pop();
                }
            }
        }
    }
    None
}

#[test]
fn modules_import_in_one_direction_and_files_stay_small() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut engine: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let lines = text.lines().count();
        assert!(
            lines <= MAX_LINES,
            "{} has {lines} lines: split it by job",
            file.display()
        );
        if let Some(module) = module_of(&src, file, 0) {
            let uses = referenced(&text, "crate::");
            top.entry(module.clone())
                .or_default()
                .extend(uses.into_iter().filter(|m| *m != module));
        }
        if module_of(&src, file, 0).as_deref() == Some("engine") {
            if let Some(plane) = module_of(&src, file, 1) {
                let uses = referenced(&text, "super::");
                engine.entry(plane.clone()).or_default().extend(
                    uses.into_iter().filter(|m| {
                        *m != plane && m.chars().next().is_some_and(char::is_lowercase)
                    }),
                );
            }
        }
    }
    assert!(top.len() >= 10, "found only {:?}", top.keys());
    assert_eq!(
        find_cycle(&top),
        None,
        "top-level modules import each other in a circle"
    );
    assert!(engine.contains_key("plans") && engine.contains_key("scheduler"));
    assert_eq!(
        find_cycle(&engine),
        None,
        "engine planes import each other in a circle"
    );
    // The planes stand alone: neither knows the other, nor the engine's edges.
    for plane in ["plans", "scheduler", "failure", "clients", "counters"] {
        for edge in ["requests", "workers", "flow", "time", "status"] {
            assert!(
                !engine[plane].contains(edge),
                "plane `{plane}` reaches into `{edge}`"
            );
        }
    }
    assert!(
        !engine["plans"].contains("scheduler"),
        "the plan plane must not know the scheduler: {:?}",
        engine["plans"]
    );
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    let cycle = find_cycle(&graph).unwrap();
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4);
}
