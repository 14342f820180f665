//! No import circles between the top-level modules of each crate of the workspace
//! (common, worker, producer, benches, cli): each module may use
//! the ones below it, never one that uses it back (`job` → `kinds` → `storage` → `job` was
//! one: the HTTP kinds now reach the database through `kinds::flow_store`, and requests are
//! checked against `job::KindRules`; in the ingress, `state` → `dashboard` → `state` was
//! one: the dashboard's caches are now modules of their own under `state`).
//!
//! The graph is read from the sources: an edge `a → b` for every `crate::b` in a
//! non-comment line of module `a` outside its `#[cfg(test)]` part (tests may use anything).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading a source folder") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a source file belongs to (`None` for the crate root).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).expect("a file under src");
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// The `crate::NAME` references of one line.
fn crate_references(line: &str) -> Vec<String> {
    line.match_indices("crate::")
        .filter(|(at, _)| {
            // `surge_common::…` or `$crate::…` are not this crate's paths.
            !line[..*at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == '$')
        })
        .filter_map(|(at, token)| {
            let rest = &line[at + token.len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

fn graph_of(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let Some(module) = top_module(src, &file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("reading a source file");
        for line in text.lines() {
            let line = line.trim_start();
            if line.starts_with("#[cfg(test)]") {
                break;
            }
            if line.starts_with("//") {
                continue;
            }
            for used in crate_references(line) {
                if used != module {
                    graph.entry(module.clone()).or_default().insert(used);
                }
            }
        }
    }
    graph
}

/// One cycle of `graph`, as the path of modules around it, if it has any.
fn a_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = path.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = path[from..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_owned(), Mark::Open);
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut marks, &mut Vec::new()))
}

fn assert_no_cycle(crate_dir: &Path) {
    let src = crate_dir.join("src");
    let graph = graph_of(&src);
    assert!(
        graph.len() > 3,
        "read too few modules from {}: {graph:?}",
        src.display()
    );
    if let Some(cycle) = a_cycle(&graph) {
        panic!(
            "{}: the modules import each other in a circle: {}",
            crate_dir.display(),
            cycle.join(" → ")
        );
    }
}

#[test]
fn the_checker_finds_a_circle() {
    let mut graph = Graph::new();
    for (from, to) in [("job", "kinds"), ("kinds", "storage"), ("storage", "job")] {
        graph
            .entry(from.to_owned())
            .or_default()
            .insert(to.to_owned());
    }
    let cycle = a_cycle(&graph).expect("a circle");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4, "{cycle:?}");
    graph.get_mut("storage").unwrap().clear();
    assert_eq!(a_cycle(&graph), None);
    assert_eq!(
        crate_references("use crate::kinds::x; surge_common::job; $crate::y; crate::z"),
        vec!["kinds".to_owned(), "z".to_owned()]
    );
}

/// Every crate of the workspace, by its folder beside `common`.
const CRATES: [&str; 5] = [".", "../worker", "../producer", "../benches", "../cli"];

#[test]
fn no_crate_has_modules_importing_each_other_in_a_circle() {
    for folder in CRATES {
        assert_no_cycle(&Path::new(env!("CARGO_MANIFEST_DIR")).join(folder));
    }
}
