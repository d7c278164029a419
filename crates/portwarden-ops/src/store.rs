//! Opening the embedded store, its warnings going to the caller's notes.

use std::path::Path;

use crate::Ctx;

/// Opens the store in `state_dir`; `create` makes it when missing. Warnings (a committed
/// change whose anchor did not move) go to `ctx.notes`.
pub fn open(
    ctx: &Ctx,
    state_dir: &Path,
    create: bool,
) -> Result<portwarden_store::SqliteStore, portwarden_store::StoreError> {
    let mut s = portwarden_store::SqliteStore::open(state_dir, "local", create)?;
    let notes = ctx.notes.clone();
    s.on_warning(move |m| notes.warn(m));
    Ok(s)
}

/// The store in `state_dir` when there is one: `None` before the first write made it
/// (every read of an empty host is then an empty answer, not an error).
pub fn open_existing(
    ctx: &Ctx,
    state_dir: &Path,
) -> Result<Option<portwarden_store::SqliteStore>, portwarden_store::StoreError> {
    // A file where the directory should be is a mistake to say, not an empty host.
    if state_dir.exists() && !state_dir.is_dir() {
        return Err(portwarden_store::StoreError::Io {
            context: format!("state directory {}", state_dir.display()),
            cause: std::io::Error::from(std::io::ErrorKind::NotADirectory),
        });
    }
    match open(ctx, state_dir, false) {
        Ok(s) => Ok(Some(s)),
        Err(portwarden_store::StoreError::Missing(_)) => Ok(None),
        Err(e) => Err(e),
    }
}
