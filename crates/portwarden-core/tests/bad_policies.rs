//! The malformed-policy corpus: every file under `tests/data/bad-policies/` names, on its
//! first line, the exact `line:col: message` diagnostics it must produce (`;;` between
//! several; a trailing `*` matches any rest of the message).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests read their fixtures

use std::path::PathBuf;

use portwarden_core::{Catalog, Policy};

fn corpus() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/bad-policies");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn matches(want: &str, got: &str) -> bool {
    match want.strip_suffix('*') {
        Some(prefix) => got.starts_with(prefix),
        None => want == got,
    }
}

#[test]
fn corpus_is_large_enough() {
    assert!(corpus().len() >= 30, "{} files", corpus().len());
}

#[test]
fn every_bad_policy_gives_its_diagnostics() {
    let mut failures = Vec::new();
    for path in corpus() {
        let src = std::fs::read_to_string(&path).unwrap();
        let header = src.lines().next().unwrap();
        let want: Vec<&str> = header
            .strip_prefix("# expect: ")
            .unwrap_or_else(|| panic!("{}: first line must be `# expect: ...`", path.display()))
            .split(" ;; ")
            .collect();
        let got: Vec<String> = match Policy::parse("f.toml", &src, Catalog::builtin()) {
            Ok(_) => vec!["<accepted>".to_string()],
            Err(e) => e
                .errors
                .iter()
                .map(|l| format!("{}:{}: {}", l.line, l.col, l.message))
                .collect(),
        };
        let ok = want.len() == got.len() && want.iter().zip(&got).all(|(w, g)| matches(w, g));
        if !ok {
            failures.push(format!(
                "{}:\n  want {want:?}\n  got  {got:?}",
                path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
