//! CLI integration tests: spawn the built binary, assert on `--json` output and exit codes.
//! The shared harness is here; the tests are in one file per theme.

mod check_host;
mod firewall;
mod general;
mod inventory;
mod leases;
mod netns;
mod outputs;
mod scan;

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
