//! The daemon's API tokens: `token create|list|revoke`, and the lookup the daemon's auth
//! makes for every request.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use portwarden_api::API_VERSION;
use portwarden_api::token::{TokenDoc, TokenInfo, TokenRevokeDoc, TokensDoc};
use portwarden_core::auth::{Role, check_token_name};
use portwarden_core::time::utc;
use portwarden_store::{Journal, TokenRecord};
use sha2::{Digest, Sha256};

use crate::Ctx;

/// What every secret starts with, so a leaked one is recognisable (secret scanners key
/// on such prefixes).
pub const PREFIX: &str = "pwt_";

/// The SHA-256 of a secret, lowercase hex: all the store keeps.
pub fn digest(secret: &str) -> String {
    let mut out = String::with_capacity(64);
    for b in Sha256::digest(secret.as_bytes()) {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A new secret: the prefix and 32 bytes from the kernel's CSPRNG, in hex.
fn secret() -> anyhow::Result<String> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("cannot read random bytes: {e}"))?;
    let mut s = String::from(PREFIX);
    for b in raw {
        let _ = write!(s, "{b:02x}");
    }
    Ok(s)
}

/// `token create NAME --role R`: the secret is in the document and nowhere else.
pub fn create(ctx: &Ctx, state_dir: &Path, name: &str, role: Role) -> anyhow::Result<TokenDoc> {
    check_token_name(name).map_err(|e| anyhow::anyhow!("invalid token name {name:?}: {e}"))?;
    let token = secret()?;
    let now = ctx.clock.now();
    let mut s = crate::store::open(ctx, state_dir, true)?;
    s.token_create(
        now,
        &TokenRecord {
            name: name.to_string(),
            role,
            sha256: digest(&token),
            created_at: now,
            actor: ctx.actor.clone(),
        },
    )?;
    Ok(TokenDoc {
        api: API_VERSION,
        name: name.to_string(),
        role,
        token,
    })
}

/// `token list`.
pub fn list(ctx: &Ctx, state_dir: &Path) -> anyhow::Result<TokensDoc> {
    let tokens = match crate::store::open_existing(ctx, state_dir)? {
        Some(s) => s.tokens()?,
        None => Vec::new(),
    };
    Ok(TokensDoc {
        api: API_VERSION,
        tokens: tokens
            .into_iter()
            .map(|t| TokenInfo {
                created: utc(t.created_at),
                name: t.name,
                role: t.role,
                created_at: t.created_at,
                actor: t.actor,
            })
            .collect(),
    })
}

/// `token revoke NAME`: `revoked` is false when there was none of that name.
pub fn revoke(ctx: &Ctx, state_dir: &Path, name: &str) -> anyhow::Result<TokenRevokeDoc> {
    let revoked = match crate::store::open_existing(ctx, state_dir)? {
        Some(mut s) => s
            .token_revoke(ctx.clock.now(), &ctx.actor, name)
            .context("cannot revoke the token")?,
        None => false,
    };
    Ok(TokenRevokeDoc {
        api: API_VERSION,
        name: name.to_string(),
        revoked,
    })
}

/// The token a request presents, looked up by its digest; `None` for an unknown,
/// revoked or unvouched one. The digest is compared again in constant time, so the
/// answer's timing says nothing about how much of it matched.
pub fn authenticate<J: Journal + ?Sized>(
    store: &J,
    presented: &str,
) -> anyhow::Result<Option<TokenRecord>> {
    if !presented.starts_with(PREFIX) || presented.len() > 256 {
        return Ok(None);
    }
    let d = digest(presented);
    let Some(t) = store.token_by_hash(&d)? else {
        return Ok(None);
    };
    let same = t
        .sha256
        .bytes()
        .zip(d.bytes())
        .fold(t.sha256.len() ^ d.len(), |acc, (a, b)| {
            acc | usize::from(a ^ b)
        });
    Ok((same == 0).then_some(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_prefixed_random_and_hashed() {
        let (a, b) = (secret().unwrap(), secret().unwrap());
        assert!(a.starts_with(PREFIX) && a.len() == PREFIX.len() + 64);
        assert_ne!(a, b);
        assert_eq!(
            digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
