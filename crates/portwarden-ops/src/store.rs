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
