//! Loading the policy: the `--policy` file (a bounded read of a regular file, every
//! diagnostic collected), or the built-in baseline.

use std::path::Path;

use portwarden_core::{Catalog, Policy};

/// A policy with the name it is known by in messages.
pub struct LoadedPolicy {
    pub name: String,
    pub policy: Policy,
}

/// The largest policy file read, in bytes (docs/policy.md).
pub const POLICY_MAX_BYTES: u64 = 16 << 20;

/// Reads and validates a policy file; diagnostics come back as a `SourceErrors` error.
/// Only a regular file (or a link to one) of at most [`POLICY_MAX_BYTES`] is read, and
/// through a bounded reader, so a device, a FIFO or a file that grows while it is read
/// cannot make the reader grow with it.
pub fn read_policy(path: &Path) -> anyhow::Result<Policy> {
    use std::io::ErrorKind;
    let shown = path.display();
    let bytes = crate::files::read_regular(path, POLICY_MAX_BYTES).map_err(|e| match e.kind() {
        ErrorKind::InvalidInput => {
            anyhow::anyhow!("cannot read policy {shown}: not a regular file")
        }
        ErrorKind::FileTooLarge => anyhow::anyhow!(
            "cannot read policy {shown}: larger than the {} MiB limit",
            POLICY_MAX_BYTES >> 20
        ),
        _ => anyhow::Error::new(e).context(format!("cannot read policy {shown}")),
    })?;
    let src = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("cannot read policy {shown}: not UTF-8 text"))?;
    Ok(Policy::parse(&shown.to_string(), &src, Catalog::builtin())?)
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
