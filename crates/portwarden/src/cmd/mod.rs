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
        if let Err(e) = fw::recover_expired(g) {
            crate::output::warn(
                g.quiet,
                &format!("cannot re-arm the firewall rollback watcher: {e:#}"),
            );
        }
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
    }
}

pub use portwarden_ops::policy::{LoadedPolicy, POLICY_MAX_BYTES, load_policy, read_policy};

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

/// Writes a `-o FILE` output, deciding by what is at the path (never following a link):
///
/// - `-` is stdout;
/// - nothing, or a regular file: written beside it, fsynced, renamed over it, and the
///   directory fsynced, so a failure never leaves half a file (an existing file keeps its
///   permission bits);
/// - a character device, FIFO or socket: opened and written in place, never replaced
///   (`-oX /dev/null` keeps `/dev/null`);
/// - `/dev/stdout` (a link to whatever stdout is) is stdout, `/dev/stderr` stderr;
/// - any other symbolic link: refused unless `force`, which replaces the link itself
///   (never its target) — a planted link must not aim root's write at a disk or a tty;
/// - a directory: an error.
pub fn write_output(path: &Path, bytes: &[u8], force: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    if path.as_os_str() == "-" || path == Path::new("/dev/stdout") {
        return crate::output::text(&String::from_utf8_lossy(bytes)).context("cannot write stdout");
    }
    if path == Path::new("/dev/stderr") {
        use std::io::Write;
        return std::io::stderr()
            .lock()
            .write_all(bytes)
            .context("cannot write stderr");
    }
    let shown = path.display();
    let existing = match std::fs::symlink_metadata(path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {shown}")),
    };
    match existing {
        None => write_atomically(path, bytes, None),
        Some(m) if m.file_type().is_symlink() => {
            if !force {
                anyhow::bail!(
                    "{shown} is a symbolic link: pass --force to replace the link (its target is left alone)"
                );
            }
            write_atomically(path, bytes, None)
        }
        Some(m) if m.is_dir() => anyhow::bail!("cannot write {shown}: it is a directory"),
        Some(m) if m.is_file() => write_atomically(path, bytes, Some(m.permissions())),
        Some(m) => {
            let t = m.file_type();
            if !(t.is_char_device() || t.is_fifo() || t.is_socket() || t.is_block_device()) {
                anyhow::bail!("cannot write {shown}: not a file, device or FIFO");
            }
            write_in_place(path, bytes).with_context(|| format!("cannot write {shown}"))
        }
    }
}

/// Writes into an existing device or FIFO without creating, truncating or following.
fn write_in_place(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    // O_NONBLOCK: a FIFO nobody reads is an error (ENXIO), not a hang.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)?;
    {
        use std::os::fd::AsRawFd;
        // SAFETY: fcntl on a descriptor we own; clears O_NONBLOCK for the writes.
        unsafe {
            let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
    }
    // Between the look and the open, the path could have become something else.
    let t = f.metadata()?.file_type();
    if !(t.is_char_device() || t.is_fifo() || t.is_socket() || t.is_block_device()) {
        return Err(std::io::Error::other(
            "the path changed while it was opened",
        ));
    }
    f.write_all(bytes)?;
    f.flush()
}

/// Writes beside the target and renames, so a failure never leaves half a file; the
/// directory is fsynced so the rename survives a crash.
fn write_atomically(
    path: &Path,
    bytes: &[u8],
    mode: Option<std::fs::Permissions>,
) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{stamp}",
        path.file_name()
            .map_or("out".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let mut created = false;
    let r = (|| {
        // create_new: never follow or reuse something planted at the temporary name.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        created = true;
        if let Some(mode) = mode {
            f.set_permissions(mode)?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        created = false;
        std::fs::File::open(dir)?.sync_all()
    })();
    if created {
        let _ = std::fs::remove_file(&tmp);
    }
    r.with_context(|| format!("cannot write {}", path.display()))
}
