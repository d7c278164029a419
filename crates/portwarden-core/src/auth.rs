//! Who may do what through the daemon: API token roles and token names.

use serde::{Deserialize, Serialize};

/// What a token may do; each role may do what the ones below it may.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    strum::IntoStaticStr,
    strum::EnumIter,
    strum::EnumString,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Role {
    /// Reads: findings, sockets, leases, the ledger, metrics, the report.
    Read,
    /// Reads and makes changes: leases, scans, firewall applies, grants.
    Operate,
    /// Everything, including what changes who may act.
    Admin,
}

impl Role {
    /// The role's name, as the store and the JSON carry it.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether a token of this role may do what needs `needed`.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

/// The longest token name.
pub const TOKEN_NAME_MAX: usize = 64;

/// Checks a token's name: 1 to 64 of `A-Z a-z 0-9 . _ -`, starting with a letter or a
/// digit. The name is the actor the ledger records for the token's requests, so it must
/// read the same in every place it is shown.
pub fn check_token_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > TOKEN_NAME_MAX {
        return Err(format!(
            "a token name is 1 to {TOKEN_NAME_MAX} characters, not {}",
            name.chars().count()
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err("a token name starts with a letter or a digit".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "a token name holds only letters, digits, `.`, `_` and `-`, not {c:?}"
        ));
    }
    Ok(())
}

/// Checks a lease's owner label (the CLI's `--owner`, the API's `owner`): 1 to 64
/// characters, not only spaces, no control or format characters.
pub fn check_owner_label(s: &str) -> Result<(), String> {
    if s.trim().is_empty() || s.chars().count() > 64 {
        return Err("an owner label is 1 to 64 characters, not only spaces".into());
    }
    if crate::diag::strip_unsafe(s, 64) != s {
        return Err("an owner label has no control or format characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_order_by_power() {
        assert!(Role::Admin.allows(Role::Operate));
        assert!(Role::Operate.allows(Role::Read));
        assert!(!Role::Read.allows(Role::Operate));
        assert!(!Role::Operate.allows(Role::Admin));
        assert_eq!("operate".parse::<Role>().unwrap(), Role::Operate);
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn token_names() {
        for ok in ["ci", "backup-01", "mirror.eu_2", "7"] {
            assert!(check_token_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", ".x", "a b", "a\nb", "é", "a/b", &"x".repeat(65)] {
            assert!(check_token_name(bad).is_err(), "{bad:?}");
        }
    }
}
