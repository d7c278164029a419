//! Command dispatch: each command turns validated arguments into a plan, runs it through the
//! libraries and hands the result to `output`.

mod balance;
mod bench;
mod catalog;
mod change;
mod check;
pub mod fw;
mod lease;
mod log;
mod ls;
mod meta;
mod policy;
mod report;
pub mod scan;
mod serve;
mod storm;

use std::path::Path;

use anyhow::Context;

use crate::Status;
use crate::cli::{Cli, Command};

/// Runs one command.
pub fn run(cli: Cli) -> anyhow::Result<Status> {
    let g = &cli.global;
    crate::output::verbose(
        g.verbose,
        &format!(
            "policy: {}; state: {}; acting as {}",
            g.policy
                .as_ref()
                .map_or("the built-in baseline".into(), |p| p.display().to_string()),
            state_dir(g).display(),
            portwarden_os::identity::actor()
        ),
    );
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
        Command::Serve(a) => serve::serve(g, a),
        Command::Balance(a) => balance::run(g, a),
        Command::Bench(c) => bench::run(g, c),
        Command::Token(c) => serve::token(g, c),
        Command::Change(c) => change::run(g, c),
    }
}

/// Gives a pending firewall apply whose rollback watcher died a new one; a store that
/// refuses writes must not stop the command, so a failure is a warning.
pub fn rearm(ctx: &portwarden_ops::Ctx, state_dir: &Path) {
    if let Err(e) = portwarden_ops::fw::recover_expired(ctx, state_dir) {
        ctx.notes.warn(&format!(
            "cannot re-arm the firewall rollback watcher: {e:#}"
        ));
    }
}

/// The use-cases' context for this invocation: the system clock, notes on the terminal
/// (`-q`, `-v`), no progress display, who acts.
pub fn ctx(g: &crate::cli::Global) -> portwarden_ops::Ctx {
    // Set only while a command holds `signals::catch()`'s guard: a command without one
    // is killed by the signal as usual.
    let mut c = portwarden_ops::Ctx::quiet(&crate::signals::STOP);
    c.notes = std::sync::Arc::new(crate::output::CliNotes::new(g));
    c.actor = portwarden_os::identity::actor();
    c
}

/// What most use-cases take: the context, the `--policy` file and the state directory.
pub struct Site {
    pub ctx: portwarden_ops::Ctx,
    pub policy: Option<std::path::PathBuf>,
    pub dir: std::path::PathBuf,
}

impl Site {
    pub fn policy(&self) -> Option<&Path> {
        self.policy.as_deref()
    }
}

/// This invocation's [`Site`].
pub fn site(g: &crate::cli::Global) -> Site {
    Site {
        ctx: ctx(g),
        policy: g.policy.clone(),
        dir: state_dir(g),
    }
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

/// Runs a use-case that does no network I/O (the store, the socket table) to completion
/// on a single-threaded runtime.
pub fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?
        .block_on(f)
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
