//! Loading the policy: the `--policy` file (a bounded read of a regular file, every
//! diagnostic collected), or the built-in baseline.

use std::path::Path;

use anyhow::Context as _;

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

/// `policy history`: every adoption kept in the store, oldest first.
pub fn history(
    ctx: &crate::Ctx,
    state_dir: &Path,
) -> anyhow::Result<portwarden_api::policy::PolicyHistoryDoc> {
    use portwarden_store::Journal as _;
    let (adoptions, current) = match crate::store::open_existing(ctx, state_dir)? {
        Some(s) => (s.policy_history()?, s.policy_current()?),
        None => (Vec::new(), None),
    };
    let current_id = current.as_ref().map(|c| c.id);
    Ok(portwarden_api::policy::PolicyHistoryDoc {
        api: portwarden_api::API_VERSION,
        exported: None,
        current: current.map(|c| c.hash),
        adoptions: adoptions
            .into_iter()
            .map(|a| portwarden_api::policy::AdoptionDoc {
                in_force: Some(a.id) == current_id,
                id: a.id,
                version: a.hash,
                previous: a.previous,
                at: a.at,
                time: portwarden_core::time::utc(a.at),
                actor: a.actor,
                how: a.how,
                source: a.source,
                reason: a.reason,
                txn: a.txn,
                txn_state: a.txn_state,
                seq: a.seq,
                vouched: a.vouched,
            })
            .collect(),
    })
}

/// `policy show VERSION`: the text of a version kept in the store.
pub fn show(
    ctx: &crate::Ctx,
    state_dir: &Path,
    version: &str,
) -> anyhow::Result<portwarden_api::policy::PolicyVersionDoc> {
    let v = stored(ctx, state_dir, version)?;
    Ok(portwarden_api::policy::PolicyVersionDoc {
        api: portwarden_api::API_VERSION,
        version: v.hash,
        first_seen: v.first_seen,
        author: v.author,
        text: v.text,
    })
}

/// A version by (a prefix of) its hash, or `current`: the version in force.
fn stored(
    ctx: &crate::Ctx,
    state_dir: &Path,
    version: &str,
) -> anyhow::Result<portwarden_store::PolicyVersion> {
    use portwarden_store::Journal as _;
    let Some(s) = crate::store::open_existing(ctx, state_dir)? else {
        anyhow::bail!(
            "no policy version is kept yet (no store at {}): `fw apply` or `serve` keeps the policy they run",
            state_dir.display()
        );
    };
    if version == "current" {
        let Some(c) = s.policy_current()? else {
            anyhow::bail!(
                "no policy version is in force yet: `fw apply` or `serve` keeps the policy they run"
            );
        };
        return Ok(s.policy_version(&c.hash)?);
    }
    Ok(s.policy_version(version)?)
}

/// One side of a diff: a policy file (a path that exists, or one with a `/` or `.toml`),
/// or a version in the store (`current`, or a prefix of its hash).
pub(crate) struct Side {
    pub(crate) label: String,
    pub(crate) version: String,
    pub(crate) text: String,
    pub(crate) policy: Policy,
}

impl Side {
    /// A side from a text in hand (a stored version, a proposed file).
    pub(crate) fn of_text(label: String, text: String) -> anyhow::Result<Side> {
        let policy = Policy::parse(&label, &text, Catalog::builtin())
            .map_err(|e| anyhow::anyhow!("{label} is not a valid policy: {e}"))?;
        Ok(Side {
            version: portwarden_store::policy_version_of(&text),
            label,
            text,
            policy,
        })
    }

    /// The policy as a use-case runs it.
    pub(crate) fn loaded(&self) -> LoadedPolicy {
        LoadedPolicy {
            name: self.label.clone(),
            policy: self.policy.clone(),
            text: self.text.as_str().into(),
        }
    }
}

/// The version in force as a side (`None`: none adopted yet).
pub(crate) fn current_side(ctx: &crate::Ctx, state_dir: &Path) -> anyhow::Result<Option<Side>> {
    use portwarden_store::Journal as _;
    let Some(s) = crate::store::open_existing(ctx, state_dir)? else {
        return Ok(None);
    };
    let Some(c) = s.policy_current()? else {
        return Ok(None);
    };
    let v = s.policy_version(&c.hash)?;
    Side::of_text(
        format!("version {}", portwarden_core::change::short_hash(&v.hash)),
        v.text,
    )
    .map(Some)
}

pub(crate) fn side(ctx: &crate::Ctx, state_dir: &Path, spec: &str) -> anyhow::Result<Side> {
    let path = Path::new(spec);
    // `current` and hex digits name a version (a file of that name is `./NAME`).
    let version_like = spec == "current"
        || (spec.len() >= 6 && spec.len() <= 64 && spec.bytes().all(|b| b.is_ascii_hexdigit()));
    let (label, text) = if !version_like {
        let (_, text) = read_policy_text(path)?;
        (spec.to_string(), text)
    } else {
        let v = stored(ctx, state_dir, spec)?;
        (
            format!("version {}", portwarden_core::change::short_hash(&v.hash)),
            v.text,
        )
    };
    Side::of_text(label, text)
}

/// `policy diff A B`: the line diff of the texts, what changes by meaning, and the nft
/// rules that change as a result. `B` alone (`from` `None`) compares the version in force
/// with it.
pub fn diff(
    ctx: &crate::Ctx,
    state_dir: &Path,
    from: Option<&str>,
    to: &str,
) -> anyhow::Result<portwarden_api::policy::PolicyDiffDoc> {
    let a = side(ctx, state_dir, from.unwrap_or("current"))?;
    let b = side(ctx, state_dir, to)?;
    Ok(diff_sides(ctx, state_dir, a, b))
}

/// The diff of two sides: lines, meaning, and the rules (a side the lock-out guard
/// refuses says so in `rules`).
pub(crate) fn diff_sides(
    ctx: &crate::Ctx,
    state_dir: &Path,
    a: Side,
    b: Side,
) -> portwarden_api::policy::PolicyDiffDoc {
    let rules = match (
        crate::fw::ruleset_of(ctx, &a.policy, state_dir),
        crate::fw::ruleset_of(ctx, &b.policy, state_dir),
    ) {
        (Ok(x), Ok(y)) => crate::fw::line_diff(&x, &y),
        (Err(e), _) => vec![format!("! {}: {e:#}", a.label)],
        (_, Err(e)) => vec![format!("! {}: {e:#}", b.label)],
    };
    portwarden_api::policy::PolicyDiffDoc {
        api: portwarden_api::API_VERSION,
        lines: crate::fw::line_diff(&a.text, &b.text),
        changes: portwarden_core::policy::diff::semantic_diff(&a.policy, &b.policy),
        rules,
        from: a.label,
        from_version: a.version,
        to: b.label,
        to_version: b.version,
    }
}

/// The trailer naming the adoption a commit of `--export-git` holds.
const ADOPTION_TRAILER: &str = "Portwarden-Adoption:";

/// `policy history --export-git DIR`: each adoption not yet in the repository at `dir`
/// (made if missing) becomes a commit of `policy.toml`, by its actor at its time, its
/// message saying how, why, the versions and the ledger record.
pub fn export_git(
    ctx: &crate::Ctx,
    state_dir: &Path,
    dir: &Path,
) -> anyhow::Result<portwarden_api::policy::PolicyHistoryDoc> {
    use portwarden_store::Journal as _;
    let mut doc = history(ctx, state_dir)?;
    portwarden_os::git::init(dir)?;
    let done: i64 = portwarden_os::git::last_message(dir, ADOPTION_TRAILER)?
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix(ADOPTION_TRAILER))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0);
    let s = crate::store::open_existing(ctx, state_dir)?;
    let mut n = 0;
    for a in doc.adoptions.iter().filter(|a| a.id > done) {
        let Some(s) = &s else { break };
        let v = s.policy_version(&a.version)?;
        let mut msg = format!("{} of {}", a.how, a.source);
        if let Some(r) = &a.reason {
            msg = format!("{msg}: {r}");
        }
        let msg = portwarden_core::diag::strip_unsafe(&msg, 500);
        let fw = match (a.txn, &a.txn_state) {
            (Some(t), Some(st)) => format!("\nFirewall-Transaction: {t} ({st})"),
            (Some(t), None) => format!("\nFirewall-Transaction: {t}"),
            _ => String::new(),
        };
        let message = format!(
            "{msg}\n\nVersion: {}\nPrevious: {}{fw}\nLedger-Seq: {}\n{ADOPTION_TRAILER} {}\n",
            a.version,
            a.previous.as_deref().unwrap_or("none"),
            a.seq,
            a.id
        );
        portwarden_os::git::commit(dir, "policy.toml", &v.text, &a.actor, a.at, &message)?;
        n += 1;
    }
    doc.exported = Some(n);
    Ok(doc)
}

/// `--from-git DIR[@REV[:PATH]]`: the repository, the revision (`HEAD`) and the file
/// (`policy.toml`); the file's text and how it is named.
pub fn from_git(spec: &str) -> anyhow::Result<(String, String)> {
    let (dir, at) = match spec.rsplit_once('@') {
        Some((d, r)) if !d.is_empty() => (d, r),
        _ => (spec, ""),
    };
    let (rev, path) = match at.split_once(':') {
        Some((r, p)) => (r, p),
        None => (at, "policy.toml"),
    };
    let rev = if rev.is_empty() { "HEAD" } else { rev };
    let path = if path.is_empty() { "policy.toml" } else { path };
    let text = portwarden_os::git::show(Path::new(dir), rev, path)
        .with_context(|| format!("--from-git {spec}"))?;
    if text.len() as u64 > POLICY_MAX_BYTES {
        anyhow::bail!(
            "--from-git {spec}: larger than the {} MiB limit",
            POLICY_MAX_BYTES >> 20
        );
    }
    Ok((text, format!("git {dir}@{rev}:{path}")))
}
