//! Command dispatch: each command turns validated arguments into a plan, runs it through the
//! libraries and hands the result to `output`.

mod catalog;
mod check;
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

use crate::Status;
use crate::cli::{Cli, Command};

/// Runs one command.
pub fn run(cli: Cli) -> anyhow::Result<Status> {
    let g = &cli.global;
    // A pending firewall apply whose watcher died (killed, a reboot) gets a new one from
    // whichever command opens the store next; the firewall's own commands insist on it.
    if matches!(
        cli.command,
        Command::Check(_)
            | Command::Alloc(_)
            | Command::Renew(_)
            | Command::Release(_)
            | Command::Leases
            | Command::Reclaim(_)
            | Command::Pools(_)
            | Command::Log(_)
            | Command::Report(_)
            | Command::Grant(_)
            | Command::Revoke(_)
    ) {
        rearm(&ctx(g), &state_dir(g));
    }
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
        Command::Schema { name } => meta::schema(g, name.as_deref()),
    }
}

pub use portwarden_ops::policy::{LoadedPolicy, POLICY_MAX_BYTES, load_policy, read_policy};

/// Gives a pending firewall apply whose rollback watcher died a new one; a store that
/// refuses writes must not stop the command, so a failure is a warning.
pub fn rearm(ctx: &portwarden_ops::Ctx, state_dir: &Path) {
    if let Err(e) = portwarden_ops::fw::recover_expired(ctx, state_dir) {
        ctx.notes.warn(&format!(
            "cannot re-arm the firewall rollback watcher: {e:#}"
        ));
    }
}

/// Carries lease changes into the live firewall table (`portwarden_ops::fw::sync_leases`).
pub fn sync_leases(
    g: &crate::cli::Global,
    added: &[portwarden_store::Lease],
    removed: &[portwarden_store::Lease],
) -> anyhow::Result<()> {
    portwarden_ops::fw::sync_leases(&ctx(g), &state_dir(g), added, removed)
}

/// Never set: the stop flag of commands no signal stops early.
static NEVER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The use-cases' context for this invocation: the system clock, notes on the terminal
/// (`-q`, `-v`), no progress display, who acts.
pub fn ctx(g: &crate::cli::Global) -> portwarden_ops::Ctx {
    let mut c = portwarden_ops::Ctx::quiet(&NEVER);
    c.notes = std::sync::Arc::new(crate::output::CliNotes::new(g));
    c.actor = actor();
    c
}

/// The runtime a command runs its use-case on (up to four workers).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .min(4),
        )
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The invoking user's name, the default `--owner` label of a lease.
pub fn user() -> String {
    for k in ["SUDO_USER", "USER", "LOGNAME"] {
        if let Ok(v) = std::env::var(k) {
            let v = portwarden_core::diag::strip_unsafe(&v, 64);
            if !v.is_empty() {
                return v;
            }
        }
    }
    // SAFETY: getuid has no preconditions.
    format!("uid:{}", unsafe { libc::getuid() })
}

/// Who acts, for the ledger: the real user's name from the password database (not the
/// environment, which anyone sets) and uid, and the `sudo` caller when there is one:
/// `root (uid 0, sudo from alice)`. `--owner` is only a label on a lease; this is who did it.
pub fn actor() -> String {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let name = user_name(uid);
    let sudo = std::env::var("SUDO_USER")
        .ok()
        .filter(|s| !s.is_empty() && uid == 0)
        .map(|s| {
            format!(
                ", sudo from {}",
                portwarden_core::diag::strip_unsafe(&s, 64)
            )
        })
        .unwrap_or_default();
    match name {
        Some(n) => format!("{n} (uid {uid}{sudo})"),
        None => format!("uid {uid}{sudo}"),
    }
}

/// The password database's name for `uid`.
fn user_name(uid: libc::uid_t) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: zeroed passwd is a valid out-parameter; getpwuid_r writes at most
    // `buf.len()` bytes into `buf` and sets `result` to null or to `pw`.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: as above; every pointer is valid for the call.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() || pw.pw_name.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded: pw_name points at a NUL-terminated string in `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
    Some(name.to_string_lossy().into_owned())
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
    let mut s = portwarden_store::SqliteStore::open(&state_dir(g), "local", create)?;
    // Shown even with --quiet: a committed change whose anchor did not move matters.
    s.on_warning(|m| crate::output::warn(false, m));
    Ok(s)
}
