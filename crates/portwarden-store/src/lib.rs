//! The `Store` trait and its implementations: SQLite (default) and etcd (feature `etcd`);
//! leases, the hash-chained ledger, firewall transactions. Knows no policy rules.
#![deny(missing_docs)]

use std::path::PathBuf;

/// Where the embedded store lives when `--state` is not given: `/var/lib/portwarden` for
/// root, else `$XDG_STATE_HOME/portwarden` (or `~/.local/state/portwarden`).
pub fn default_state_dir(
    is_root: bool,
    xdg_state_home: Option<&str>,
    home: Option<&str>,
) -> PathBuf {
    if is_root {
        return PathBuf::from("/var/lib/portwarden");
    }
    match (xdg_state_home.filter(|s| !s.is_empty()), home) {
        (Some(x), _) => PathBuf::from(x).join("portwarden"),
        (None, Some(h)) => PathBuf::from(h).join(".local/state/portwarden"),
        (None, None) => PathBuf::from(".portwarden"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_follows_design() {
        assert_eq!(
            default_state_dir(true, Some("/x"), None),
            PathBuf::from("/var/lib/portwarden")
        );
        assert_eq!(
            default_state_dir(false, Some("/x"), Some("/h")),
            PathBuf::from("/x/portwarden")
        );
        assert_eq!(
            default_state_dir(false, None, Some("/h")),
            PathBuf::from("/h/.local/state/portwarden")
        );
    }
}
