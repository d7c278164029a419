//! Architecture invariant check: reads `cargo metadata` and fails when a dependency edge
//! breaks the layering described in ARCHITECTURE.md.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

const CORE: &str = "portwarden-core";
const ADAPTERS: &[&str] = &[
    "portwarden-nft",
    "portwarden-os",
    "portwarden-store",
    "portwarden-net",
];
const API: &str = "portwarden-api";
const OPS: &str = "portwarden-ops";
const SERVER: &str = "portwarden-server";
const TESTKIT: &str = "portwarden-testkit";
const BINARY: &str = "portwarden";

fn metadata() -> Value {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--filter-platform",
            env!("TARGET_TRIPLE"),
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("metadata is JSON")
}

/// Internal crate → the internal crates it names in any dependency table.
fn internal_edges(meta: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut edges = BTreeMap::new();
    for p in meta["packages"].as_array().unwrap() {
        if !members.contains(p["id"].as_str().unwrap()) {
            continue;
        }
        let name = p["name"].as_str().unwrap().to_string();
        // The test helpers are a dev-dependency of anyone (a normal one is an edge).
        let deps: BTreeSet<String> = p["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| !(d["name"] == TESTKIT && d["kind"] == "dev"))
            .map(|d| d["name"].as_str().unwrap().to_string())
            .filter(|n| n.starts_with("portwarden"))
            .collect();
        edges.insert(name, deps);
    }
    edges
}

/// Every package reachable from `root` through normal (non-dev) dependencies.
fn normal_closure(meta: &Value, root: &str) -> BTreeSet<String> {
    let nodes = meta["resolve"]["nodes"].as_array().unwrap();
    let id_of_name: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let by_id: BTreeMap<&str, &Value> = nodes
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let root_id = id_of_name
        .iter()
        .find(|(_, n)| **n == root)
        .map(|(id, _)| *id)
        .unwrap();
    let mut seen = BTreeSet::new();
    let mut stack = vec![root_id];
    while let Some(id) = stack.pop() {
        for d in by_id[id]["deps"].as_array().unwrap() {
            let normal = d["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null());
            let pkg = d["pkg"].as_str().unwrap();
            if normal && seen.insert(id_of_name[pkg].to_string()) {
                stack.push(pkg);
            }
        }
    }
    seen
}

#[test]
fn dependencies_point_down() {
    let meta = metadata();
    let edges = internal_edges(&meta);
    let mut broken = Vec::new();
    for (krate, deps) in &edges {
        for d in deps {
            let ok = match krate.as_str() {
                CORE => false,
                k if ADAPTERS.contains(&k) => d == CORE,
                // The documents: plain data over core's types.
                API => d == CORE,
                // The use-cases: over the adapters, returning documents.
                OPS => d == CORE || d == API || ADAPTERS.contains(&d.as_str()),
                // The daemon: over ops; of the adapters only the store's and the OS's
                // types (errors, user names), never nft or the network engines.
                SERVER => {
                    [CORE, API, OPS, "portwarden-store", "portwarden-os"].contains(&d.as_str())
                }
                // Test helpers depend on no crate of ours; others use them only as a
                // dev-dependency (filtered out above).
                TESTKIT => false,
                BINARY => d != BINARY,
                other => panic!("unknown workspace crate {other}: place it in the layering"),
            };
            if !ok {
                broken.push(format!("{krate} -> {d}"));
            }
        }
    }
    assert!(broken.is_empty(), "layering broken by: {broken:?}");
    for expected in [CORE, API, OPS, SERVER, BINARY, TESTKIT]
        .iter()
        .chain(ADAPTERS)
    {
        assert!(edges.contains_key(*expected), "crate {expected} is missing");
    }
}

#[test]
fn core_does_no_async_io() {
    let meta = metadata();
    let closure = normal_closure(&meta, CORE);
    for banned in [
        "tokio", "mio", "rusqlite", "libc", "nix", "reqwest", "hyper",
    ] {
        assert!(
            !closure.contains(banned),
            "portwarden-core must not depend on {banned} (found in its dependency tree)"
        );
    }
}

/// The documents carry no engine: nothing async, no database, no system calls.
#[test]
fn api_is_plain_data() {
    let meta = metadata();
    let closure = normal_closure(&meta, API);
    for banned in ["tokio", "rusqlite", "libc", "pcre2"] {
        assert!(
            !closure.contains(banned),
            "portwarden-api must not depend on {banned} (found in its dependency tree)"
        );
    }
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
    out
}

/// The printer never reaches back into the commands (no import circle), and commands
/// print through `output` only.
#[test]
fn output_never_imports_cmd_and_cmd_never_prints() {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    for path in rust_files(&std::path::Path::new(src).join("output")) {
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("crate::cmd") && !text.contains("super::cmd"),
            "{} imports from cmd",
            path.display()
        );
    }
    for path in rust_files(&std::path::Path::new(src).join("cmd")) {
        let text = std::fs::read_to_string(&path).unwrap();
        for banned in [
            "println!",
            "eprintln!",
            "print!(",
            "eprint!(",
            "stdout().lock",
        ] {
            assert!(
                !text.contains(banned),
                "{} uses {banned}: commands print through output",
                path.display()
            );
        }
    }
}

/// No use-case prints: ops never names the terminal (its notes go to `Ctx::notes`).
#[test]
fn ops_never_prints() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../portwarden-ops/src");
    for path in rust_files(std::path::Path::new(dir)) {
        let text = std::fs::read_to_string(&path).unwrap();
        for banned in [
            "println!",
            "eprintln!",
            "print!(",
            "eprint!(",
            "stdout()",
            "stderr()",
        ] {
            assert!(
                !text.contains(banned),
                "{} uses {banned}: a use-case returns documents and notes",
                path.display()
            );
        }
    }
}

#[test]
fn architecture_md_names_every_crate() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../ARCHITECTURE.md");
    let doc = std::fs::read_to_string(path).expect("ARCHITECTURE.md exists");
    for c in [CORE, API, OPS, SERVER, BINARY, TESTKIT]
        .iter()
        .chain(ADAPTERS)
    {
        assert!(
            doc.contains(&format!("`{c}`")),
            "ARCHITECTURE.md does not name `{c}`"
        );
    }
    assert!(doc.contains("**Architecture Invariant:**"));
    assert!(
        doc.lines().count() < 150,
        "ARCHITECTURE.md should stay under 150 lines"
    );
}

/// No test waits on the wall clock for a TTL or a deadline (those run on a manual clock):
/// every sleep left in a test is commented `// Real time: …` with the real timer or
/// process it waits for.
#[test]
fn every_sleep_in_a_test_waits_for_something_real() {
    let crates = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut bare = Vec::new();
    for c in std::fs::read_dir(crates).unwrap() {
        let tests = c.unwrap().path().join("tests");
        if !tests.is_dir() {
            continue;
        }
        for path in rust_files(&tests) {
            let text = std::fs::read_to_string(&path).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            for (i, l) in lines.iter().enumerate() {
                // Spelt in two pieces, so this line does not match itself.
                let sleeps = [concat!("thread::", "sleep("), concat!("time::", "sleep(")];
                if sleeps.iter().any(|s| l.contains(s))
                    && !(i > 0 && lines[i - 1].trim_start().starts_with("// Real time:"))
                {
                    bare.push(format!("{}:{}", path.display(), i + 1));
                }
            }
        }
    }
    assert!(
        bare.is_empty(),
        "sleeps without a `// Real time:` reason: {bare:#?}"
    );
}

/// Commands stay thin: flags to a request, the use-case, the printer. A file that grows
/// past this holds logic that belongs in ops or core.
#[test]
fn command_files_stay_thin() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/cmd");
    for path in rust_files(std::path::Path::new(dir)) {
        if path.file_name().is_some_and(|n| n == "mod.rs") {
            continue;
        }
        let n = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(n <= 100, "{} has {n} lines", path.display());
    }
}
