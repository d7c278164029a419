//! Whether a state directory may be trusted, as sshd's StrictModes decides for `~/.ssh`:
//! when running as root, the directory and every store file in it must belong to root
//! and be writable by nobody else, or whoever can write them can make root load any
//! firewall on rollback and rewrite the change ledger.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Why `path` (a directory or a store file) cannot be trusted by a process with effective
/// uid `euid`, with the command that fixes it; `None` when it can (or does not exist).
pub fn distrust(path: &Path, euid: u32, is_dir: bool) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if euid != 0 {
        return None;
    }
    let what = if is_dir {
        "state directory"
    } else {
        "store file"
    };
    let shown = path.display();
    if meta.uid() != 0 && meta.uid() != euid {
        return Some(format!(
            "refusing to use {what} {shown}: it belongs to uid {}, not root; fix with `chown root:root {shown}`",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        let want = if is_dir { "700" } else { "600" };
        return Some(format!(
            "refusing to use {what} {shown}: it is writable by {} (mode {mode:04o}); fix with `chmod {want} {shown}`",
            match (mode & 0o020 != 0, mode & 0o002 != 0) {
                (true, true) => "group and others",
                (true, false) => "its group",
                _ => "others",
            }
        ));
    }
    if is_dir {
        return distrust_ancestors(path, euid);
    }
    None
}

/// Why the host key cannot be trusted as a secret: as root, readable by anyone else.
pub fn distrust_secret(path: &Path, euid: u32) -> Option<String> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if euid != 0 {
        return None;
    }
    let shown = path.display();
    if !meta.is_file() {
        return Some(format!(
            "refusing to use the host key {shown}: it is not a regular file; remove it and run `portwarden log verify --repair`"
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Some(format!(
            "refusing to use the host key {shown}: others can read it (mode {mode:04o}), so they could vouch for anything; fix with `chmod 600 {shown}`"
        ));
    }
    None
}

/// The directories above the state directory (after links are resolved): whoever can
/// rename one of them can swap the whole state directory. Each must belong to root and
/// be writable by nobody else, unless it is sticky like `/tmp`, where only an entry's
/// owner may rename it.
fn distrust_ancestors(path: &Path, euid: u32) -> Option<String> {
    let real = std::fs::canonicalize(path).ok()?;
    for a in real.ancestors().skip(1) {
        let Ok(m) = std::fs::metadata(a) else {
            continue;
        };
        let shown = a.display();
        if m.uid() != 0 && m.uid() != euid {
            return Some(format!(
                "refusing to use state directory {}: its parent {shown} belongs to uid {}, who could replace it; fix with `chown root:root {shown}`",
                path.display(),
                m.uid()
            ));
        }
        let mode = m.mode() & 0o7777;
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Some(format!(
                "refusing to use state directory {}: its parent {shown} is writable by others (mode {mode:04o}), who could replace it; fix with `chmod go-w {shown}`",
                path.display()
            ));
        }
    }
    None
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}
