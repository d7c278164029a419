//! Loading the policy: the `--policy` file (a bounded read of a regular file, every
//! diagnostic collected), or the built-in baseline.

use std::path::Path;

use portwarden_core::{Catalog, Policy};

/// A policy with the name it is known by in messages, and the text it was read from
/// (what its version hashes).
#[derive(Debug, Clone)]
pub struct LoadedPolicy {
    pub name: String,
    pub policy: Policy,
    pub text: std::sync::Arc<str>,
}

/// What the built-in baseline policy is called in messages and records.
pub const BASELINE_NAME: &str = "the built-in baseline policy";

/// The largest policy file read, in bytes (docs/policy.md).
pub const POLICY_MAX_BYTES: u64 = 16 << 20;

/// Reads and validates a policy file; diagnostics come back as a `SourceErrors` error.
/// Only a regular file (or a link to one) of at most [`POLICY_MAX_BYTES`] is read, and
/// through a bounded reader, so a device, a FIFO or a file that grows while it is read
/// cannot make the reader grow with it.
pub fn read_policy(path: &Path) -> anyhow::Result<Policy> {
    read_policy_text(path).map(|(p, _)| p)
}

/// [`read_policy`], and the text read.
pub fn read_policy_text(path: &Path) -> anyhow::Result<(Policy, String)> {
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
    let mut policy = Policy::parse(&shown.to_string(), &src, Catalog::builtin())?;
    // A file the policy names is found beside it, wherever the reader runs.
    if let (Some(hook), Some(dir)) = (policy.alerts.webhook.as_mut(), path.parent()) {
        if let Some(ca) = hook.ca.as_mut().filter(|c| c.is_relative()) {
            *ca = dir.join(&*ca);
        }
    }
    Ok((policy, src))
}

/// The `--policy` file, or the built-in baseline.
pub fn load_policy(path: Option<&Path>) -> anyhow::Result<LoadedPolicy> {
    match path {
        Some(p) => {
            let (policy, text) = read_policy_text(p)?;
            Ok(LoadedPolicy {
                name: p.display().to_string(),
                policy,
                text: text.into(),
            })
        }
        None => Ok(LoadedPolicy {
            name: BASELINE_NAME.to_string(),
            policy: Policy::baseline(),
            text: portwarden_core::policy::BASELINE_TOML.into(),
        }),
    }
}

/// The policy a use-case runs under: the one the caller holds ([`Ctx::policy`], the
/// daemon's, replaced only by a valid one on SIGHUP), else the `--policy` file or the
/// baseline.
pub fn load(ctx: &crate::Ctx, path: Option<&Path>) -> anyhow::Result<LoadedPolicy> {
    match &ctx.policy {
        Some(p) => Ok(LoadedPolicy::clone(p)),
        None => load_policy(path),
    }
}

/// `policy check` of one file: its verdict, and the error to show a person (the
/// diagnostics with their source lines) when it is not valid.
pub fn check_file(path: &Path) -> (portwarden_api::policy::FileCheck, Option<anyhow::Error>) {
    use portwarden_api::policy::FileCheck;
    let file = path.display().to_string();
    match read_policy(path) {
        Ok(p) => (
            FileCheck {
                file,
                valid: true,
                services: Some(p.services.len()),
                pools: Some(p.pools.len()),
                balance_groups: Some(p.balance.len()),
                errors: Vec::new(),
                unreadable: None,
            },
            None,
        ),
        Err(e) => {
            let (errors, unreadable) = match e.downcast_ref::<portwarden_core::diag::SourceErrors>()
            {
                Some(d) => (d.errors.clone(), None),
                None => (Vec::new(), Some(format!("{e:#}"))),
            };
            (
                FileCheck {
                    file,
                    valid: false,
                    services: None,
                    pools: None,
                    balance_groups: None,
                    errors,
                    unreadable,
                },
                Some(e),
            )
        }
    }
}

/// A draft policy from the host's listeners (owners resolved), or the commented starter.
pub fn draft(ctx: &crate::Ctx, from_host: bool) -> anyhow::Result<String> {
    use anyhow::Context;
    if !from_host {
        let names: Vec<String> = portwarden_os::host::interfaces()
            .into_iter()
            .filter(|i| i.name != "lo" && !i.addrs.iter().all(|a| a.is_loopback()))
            .map(|i| i.name)
            .collect();
        return Ok(portwarden_core::policy::starter_for(&names));
    }
    let mut inv = portwarden_os::sockets(&portwarden_os::Query {
        states: Some(vec![
            portwarden_core::facts::SocketState::Listen,
            portwarden_core::facts::SocketState::Unconn,
        ]),
        ..portwarden_os::Query::default()
    })
    .context("cannot read the socket table")?;
    portwarden_os::attach_owners(&mut inv, portwarden_os::Walk::FirstOwner)?;
    for w in &inv.warnings {
        ctx.notes.warn(w);
    }
    let host = portwarden_os::hostname().unwrap_or_else(|_| "this-host".into());
    Ok(portwarden_core::draft::draft(
        &host,
        &inv.sockets,
        Catalog::builtin(),
    ))
}

/// Records that `loaded` is the policy in force (`how`: `serve`, `serve (SIGHUP)` …): its
/// text kept as a version, a `policy.adopt` ledger record. `None` when it was already.
pub fn adopt(
    ctx: &crate::Ctx,
    state_dir: &Path,
    loaded: &LoadedPolicy,
    how: &str,
) -> anyhow::Result<Option<portwarden_store::PolicyAdoption>> {
    use portwarden_store::Journal as _;
    let mut s = crate::store::open(ctx, state_dir, true)?;
    Ok(s.policy_adopt(
        ctx.clock.now(),
        portwarden_store::NewAdoption {
            actor: &ctx.actor,
            how,
            source: &loaded.name,
            text: &loaded.text,
            reason: None,
            txn: None,
        },
    )?)
}
