//! Command dispatch: each command turns validated arguments into a plan, runs it through the
//! libraries and hands the result to `output`.

mod catalog;
mod check;
pub mod facts;
pub mod fw;
mod lease;
mod log;
mod ls;
mod meta;
mod policy;
mod report;
pub mod scan;

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
        Command::Alloc(a) => lease::alloc(g, a),
        Command::Renew(a) => lease::renew(g, a),
        Command::Release(a) => lease::release(g, a),
        Command::Leases => lease::list(g),
        Command::Reclaim(a) => lease::reclaim(g, a),
        Command::Pools(a) => lease::pools(g, a),
        Command::Log(a) => log::run(g, a),
        Command::Report(a) => report::run(g, a),
        Command::Fw(c) => fw::run(g, c),
        Command::Grant(a) => fw::grant(g, a),
        Command::Revoke(a) => fw::revoke(g, a),
        Command::Scan(a) => scan::run(g, a),
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

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The invoking user, for lease owners and ledger actors.
pub fn user() -> String {
    for k in ["SUDO_USER", "USER", "LOGNAME"] {
        if let Ok(v) = std::env::var(k) {
            if !v.is_empty() {
                return v;
            }
        }
    }
    // SAFETY: getuid has no preconditions.
    format!("uid:{}", unsafe { libc::getuid() })
}

/// The state directory: `--state-dir`, or the default for this user.
pub fn state_dir(g: &crate::cli::Global) -> std::path::PathBuf {
    if let Some(d) = &g.state_dir {
        return d.clone();
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    portwarden_store::default_state_dir(
        root,
        std::env::var("XDG_STATE_HOME").ok().as_deref(),
        std::env::var("HOME").ok().as_deref(),
    )
}

/// Opens the embedded store; `create` makes it when missing.
pub fn open_store(
    g: &crate::cli::Global,
    create: bool,
) -> Result<portwarden_store::SqliteStore, portwarden_store::StoreError> {
    portwarden_store::SqliteStore::open(&state_dir(g), "local", create)
}

/// Writes beside the target and renames, so a failure never leaves half a file.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map_or("out".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}
