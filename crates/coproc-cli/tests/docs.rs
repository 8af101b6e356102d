//! The docs name what the code has: every verb and benchmark of the CLI in
//! the README, every crate in the README and ARCHITECTURE.md, every module
//! and test suite of every crate in ARCHITECTURE.md's code map. Names only:
//! what the docs say about them is for a reader to check, but a new verb,
//! bench, module or crate that the docs do not mention fails here.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `coproc ARGS --help`.
fn help(args: &[&str]) -> String {
    // `coproc bench` and `demo` run coproc-bench: have it built.
    common::coprocd_bin();
    let out = Command::new(common::coproc_bin())
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// The values `coproc bench --help` lists for the benchmark's name.
fn benches() -> Vec<String> {
    help(&["bench"])
        .lines()
        .skip_while(|l| !l.starts_with("Arguments:"))
        .take_while(|l| !l.starts_with("Options:"))
        .filter_map(|l| l.trim().strip_prefix("- ")?.split(':').next())
        .map(str::to_string)
        .collect()
}

/// The subcommands `coproc ARGS --help` lists (hidden ones are not listed).
fn subcommands(args: &[&str]) -> Vec<String> {
    help(args)
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// The names in `names` that `doc` does not mention as `` `name` ``.
fn missing(doc: &str, names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| !doc.contains(&format!("`{n}`")))
        .cloned()
        .collect()
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut v: Vec<PathBuf> = rd.filter_map(|e| Some(e.ok()?.path())).collect();
    v.sort();
    v
}

#[test]
fn readme_lists_every_verb_and_bench() {
    let readme = read("README.md");
    let verbs = subcommands(&[]);
    assert!(verbs.iter().any(|v| v == "list"), "{verbs:?}");
    let benches = benches();
    assert!(benches.iter().any(|b| b == "ring"), "{benches:?}");
    assert_eq!(
        missing(&readme, &verbs),
        Vec::<String>::new(),
        "verbs missing from README.md"
    );
    assert_eq!(
        missing(&readme, &benches),
        Vec::<String>::new(),
        "benches missing from README.md"
    );
    let perf = read("docs/performance.md");
    assert_eq!(
        missing(&perf, &benches),
        Vec::<String>::new(),
        "benches missing from docs/performance.md"
    );
}

#[test]
fn architecture_maps_every_crate_module_and_test_suite() {
    let arch = read("ARCHITECTURE.md");
    let readme = read("README.md");
    let mut gaps = Vec::new();
    for krate in entries(&root().join("crates")) {
        let name = krate.file_name().unwrap().to_string_lossy().to_string();
        for (doc, text) in [("README.md", &readme), ("ARCHITECTURE.md", &arch)] {
            if !text.contains(&format!("crates/{name}")) && !text.contains(&format!("{name}/")) {
                gaps.push(format!("{doc}: crate {name}"));
            }
        }
        // Modules: every file and folder under src (recursively), by name.
        let mut dirs = vec![krate.join("src")];
        while let Some(d) = dirs.pop() {
            for p in entries(&d) {
                let stem = p.file_stem().unwrap().to_string_lossy().to_string();
                if p.is_dir() {
                    dirs.push(p.clone());
                } else if p.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                if ["lib", "main", "mod", "tests"].contains(&stem.as_str()) {
                    continue;
                }
                if !arch.contains(&format!("`{stem}`")) {
                    gaps.push(format!("ARCHITECTURE.md: module {name}::{stem}"));
                }
            }
        }
        // Test suites.
        for p in entries(&krate.join("tests")) {
            if p.extension().is_some_and(|e| e == "rs") {
                let stem = p.file_stem().unwrap().to_string_lossy().to_string();
                if !arch.contains(&format!("{stem}.rs")) {
                    gaps.push(format!(
                        "ARCHITECTURE.md: test suite {name}/tests/{stem}.rs"
                    ));
                }
            }
        }
    }
    assert!(gaps.is_empty(), "docs miss:\n{}", gaps.join("\n"));
}

#[test]
fn docs_do_not_call_what_exists_planned() {
    for doc in ["README.md", "ARCHITECTURE.md"] {
        let text = read(doc).to_lowercase();
        for word in ["planned", "not yet implemented", "todo"] {
            assert!(!text.contains(word), "{doc} says {word:?}");
        }
    }
}
