//! `-o FILE` outputs (`scan -oG/-oX`, `report -o`): written to whatever is at the path
//! the way a careful tool would, never replacing a device or following a planted link.

use std::path::Path;

use anyhow::Context;

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
        return super::Printer::plain()
            .text(&String::from_utf8_lossy(bytes))
            .context("cannot write stdout");
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
/// directory is fsynced so the rename survives a crash. A new file gets the usual
/// `0666 & !umask`; a replaced one keeps its permission bits.
fn write_atomically(
    path: &Path,
    bytes: &[u8],
    mode: Option<std::fs::Permissions>,
) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let r = (|| {
        // tempfile creates a fresh, unpredictable name with O_EXCL: nothing planted is
        // followed or reused, and the file is removed if anything below fails.
        let mut f = tempfile::Builder::new()
            .prefix(&format!(
                ".{}.tmp-",
                path.file_name()
                    .map_or("out".into(), |n| n.to_string_lossy())
            ))
            .permissions(mode.unwrap_or_else(|| std::fs::Permissions::from_mode(0o666)))
            .tempfile_in(dir)?;
        f.write_all(bytes)?;
        f.as_file().sync_all()?;
        f.persist(path).map_err(|e| e.error)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    r.with_context(|| format!("cannot write {}", path.display()))
}
