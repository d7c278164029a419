//! CLI integration tests: spawn the built binary, assert on `--json` output and exit codes.
//! The shared harness is here; the tests are in one file per theme.

mod balance;
mod bench;
mod check_host;
mod dashboard;
mod firewall;
mod general;
mod inventory;
mod json;
mod leases;
mod netns;
mod outputs;
mod scan;
mod serve;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use portwarden_testkit::{Netns, tempdir};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_portwarden"));
    c.env_remove("PORTWARDEN_POLICY")
        .env_remove("PORTWARDEN_STATE");
    c
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("spawn portwarden")
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited normally")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Makes a schema strict: an object with declared properties allows no others, so a
/// field a command prints but its document does not declare fails the check.
fn strict(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if m.contains_key("properties") && !m.contains_key("additionalProperties") {
                m.insert("additionalProperties".into(), Value::Bool(false));
            }
            m.values_mut().for_each(strict);
        }
        Value::Array(a) => a.iter_mut().for_each(strict),
        _ => {}
    }
}

/// Parses `stdout` and checks it against the JSON Schema of document `name`, as
/// `portwarden schema NAME` prints it (made strict); every violation is reported.
fn assert_schema(name: &str, stdout: &[u8]) -> Value {
    let o = run(&["schema", name]);
    assert_eq!(code(&o), 0, "schema {name}: {}", stderr(&o));
    let mut schema: Value = serde_json::from_slice(&o.stdout).unwrap();
    strict(&mut schema);
    let v: Value = serde_json::from_slice(stdout).unwrap_or_else(|e| {
        panic!(
            "{name}: not JSON ({e}): {}",
            String::from_utf8_lossy(stdout)
        )
    });
    let validator = jsonschema::validator_for(&schema).expect("a valid schema");
    let errors: Vec<String> = validator
        .iter_errors(&v)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{name}: {errors:#?}\n{v:#}");
    assert_eq!(v["api"], 1, "{name}: no \"api\": 1");
    v
}
