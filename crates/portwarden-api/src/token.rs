//! `token create|list|revoke`: the daemon's API tokens.

use portwarden_core::auth::Role;
use serde::Serialize;

/// `token create`: the secret, shown this once (the store keeps its SHA-256 only).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct TokenDoc {
    pub api: u32,
    pub name: String,
    pub role: Role,
    pub token: String,
}

/// One token as `token list` shows it: never the secret.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    /// Unix seconds.
    pub created_at: i64,
    /// The same instant in RFC 3339.
    pub created: String,
    /// Who made it.
    pub actor: String,
}

/// `token list`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct TokensDoc {
    pub api: u32,
    pub tokens: Vec<TokenInfo>,
}

/// `token revoke`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct TokenRevokeDoc {
    pub api: u32,
    pub name: String,
    /// False when there was no token of that name.
    pub revoked: bool,
}
