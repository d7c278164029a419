//! Command dispatch: each command turns validated arguments into a plan, runs it through the
//! libraries and hands the result to `output`.

mod catalog;
mod check;
mod ls;
mod meta;
mod policy;

use std::path::Path;

use anyhow::Context;
use portwarden_core::{Catalog, Policy};

use crate::Status;
use crate::cli::{Cli, Command};

/// Runs one command.
pub fn run(cli: Cli) -> anyhow::Result<Status> {
    let g = &cli.global;
    match &cli.command {
        Command::Check(a) => check::run(g, a),
        Command::Ls(a) => ls::ls(g, a),
        Command::Who(a) => ls::who(g, a),
        Command::Policy(p) => policy::run(g, p),
        Command::Catalog(a) => catalog::run(g, a),
        Command::Completions { shell } => meta::completions(*shell),
        Command::Man => meta::man(),
    }
}

/// A policy with the name it is known by in messages.
pub struct LoadedPolicy {
    pub name: String,
    pub policy: Policy,
}

/// Reads and validates a policy file; diagnostics come back as a `SourceErrors` error.
pub fn read_policy(path: &Path) -> anyhow::Result<Policy> {
    let src = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read policy {}", path.display()))?;
    Ok(Policy::parse(
        &path.display().to_string(),
        &src,
        Catalog::builtin(),
    )?)
}

/// The `--policy` file, or the built-in baseline.
pub fn load_policy(path: Option<&Path>) -> anyhow::Result<LoadedPolicy> {
    match path {
        Some(p) => Ok(LoadedPolicy {
            name: p.display().to_string(),
            policy: read_policy(p)?,
        }),
        None => Ok(LoadedPolicy {
            name: "the built-in baseline policy".to_string(),
            policy: Policy::baseline(),
        }),
    }
}
