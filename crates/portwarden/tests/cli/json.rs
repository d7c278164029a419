//! Every `--json` output validates against its document's schema (`portwarden schema`);
//! the firewall's documents are checked in `firewall.rs`, inside a namespace.

use super::*;

const POLICY: &str = r#"version = 1
[[pool]]
name = "transfer"
range = "20000-20099"
lease_ttl = "1h"
[[service]]
name = "bulk"
pool = "transfer"
zone = "localhost"
"#;

#[test]
fn every_read_and_lease_command_prints_its_documented_shape() {
    let dir = tempdir("json-schema");
    let policy = dir.join("p.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let state = dir.join("state");
    let pw = |args: &[&str]| {
        bin()
            .arg("--state-dir")
            .arg(&state)
            .arg("--policy")
            .arg(&policy)
            .arg("--json")
            .args(args)
            .env("USER", "alice")
            .output()
            .unwrap()
    };
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let me = std::process::id().to_string();
    let alloc = assert_schema("alloc", &pw(&["alloc", "bulk", "--no-probe"]).stdout);
    let id = alloc["leases"][0]["id"].to_string();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("leases", vec!["leases"]),
        ("lease-op", vec!["renew", &id, "--ttl", "30m"]),
        ("pools", vec!["pools"]),
        ("reserve", vec!["pools", "reserve", "--dry-run"]),
        ("reclaim", vec!["reclaim", "--dry-run"]),
        ("sockets", vec!["ls", "-p", "--pid", &me]),
        ("summary", vec!["ls", "--summary", "-p", "--port", &port]),
        ("who", vec!["who", &port]),
        ("check", vec!["check", "--fail-on", "critical"]),
        ("report", vec!["report"]),
        ("log", vec!["log"]),
        ("log-head", vec!["log", "head"]),
        ("log-verify", vec!["log", "verify"]),
        ("log-prune", vec!["log", "prune", "--dry-run"]),
        ("catalog", vec!["catalog"]),
        ("catalog-entry", vec!["catalog", "rsync"]),
        ("fw-plan", vec!["fw", "plan"]),
        ("fw-plan", vec!["fw", "plan", "--format", "iptables"]),
        ("scan", vec!["scan", "127.0.0.1", "-p", &port]),
        ("lease-op", vec!["release", &id]),
    ];
    for (name, args) in cases {
        let o = pw(&args);
        assert!(code(&o) < 2, "{args:?}: {}", stderr(&o));
        assert_schema(name, &o.stdout);
    }
    // `policy check` of a good and a bad file.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "version = 1\n[[service]]\nname = 7\n").unwrap();
    let o = run(&[
        "--json",
        "policy",
        "check",
        policy.to_str().unwrap(),
        bad.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 2);
    let v = assert_schema("policy-check", &o.stdout);
    assert_eq!(v["files"][0]["valid"], true);
    assert_eq!(v["files"][1]["valid"], false);
    // The export is a stream of records, one per line.
    let o = pw(&["log", "export", "--format", "jsonl"]);
    let lines: Vec<&[u8]> = o
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.len(), 3, "alloc, renew, release");
    for l in lines {
        // A stream record carries no envelope (no "api").
        assert_schema_value("log-record", &serde_json::from_slice(l).unwrap());
    }
    drop(l);
}

/// [`assert_schema`] of a value already parsed.
fn assert_schema_value(name: &str, v: &Value) {
    let o = run(&["schema", name]);
    let mut schema: Value = serde_json::from_slice(&o.stdout).unwrap();
    strict(&mut schema);
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(v).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{name}: {errors:?}");
}

#[test]
fn schema_lists_every_document_and_refuses_an_unknown_one() {
    let o = run(&["schema"]);
    assert_eq!(code(&o), 0);
    let t = String::from_utf8_lossy(&o.stdout);
    for d in ["check", "scan", "fw-status", "log-verify", "policy-check"] {
        assert!(t.contains(d), "{t}");
    }
    let o = run(&["schema", "nope"]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("unknown document `nope`"),
        "{}",
        stderr(&o)
    );
}

/// The check itself can fail: a field the document does not declare, a missing one and
/// a wrong type are each caught.
#[test]
fn the_schema_check_catches_undeclared_missing_and_mistyped_fields() {
    let o = run(&["--json", "catalog", "rsync"]);
    let good: Value = serde_json::from_slice(&o.stdout).unwrap();
    let o = run(&["schema", "catalog-entry"]);
    let mut schema: Value = serde_json::from_slice(&o.stdout).unwrap();
    strict(&mut schema);
    let v = jsonschema::validator_for(&schema).unwrap();
    assert!(v.is_valid(&good));
    let mut extra = good.clone();
    extra["entry"]["bogus"] = 1.into();
    assert!(!v.is_valid(&extra), "an undeclared field passed");
    let mut missing = good.clone();
    missing["entry"].as_object_mut().unwrap().remove("name");
    assert!(!v.is_valid(&missing), "a missing field passed");
    let mut mistyped = good;
    mistyped["entry"]["high_risk"] = "yes".into();
    assert!(!v.is_valid(&mistyped), "a mistyped field passed");
}
