//! Change requests: a proposed policy is requested (with its pre-flight), reviewed by
//! other actors, applied with commit-confirm, and rolled back to any earlier version.
//! Core's `change::step` decides every transition; the store records it in the ledger.

use std::path::Path;

use anyhow::{Context as _, bail};
use portwarden_api::API_VERSION;
use portwarden_api::change::{ChangeDoc, ChangesDoc, PreflightDoc};
use portwarden_core::change::{ChangeEvent, ChangeState, short_hash};
use portwarden_core::findings::RuleId;
use portwarden_core::hostcheck::Visibility;
use portwarden_store::{ChangeRecord, FwState, Journal as _, StoreError};

use crate::Ctx;
use crate::policy::{LoadedPolicy, Side};

/// Where a proposed policy comes from.
#[derive(Debug, Clone)]
pub enum Proposed {
    /// A file.
    File(std::path::PathBuf),
    /// `DIR[@REV[:PATH]]` of a git repository.
    Git(String),
    /// A text in hand (an API request's body), and how it is named.
    Text {
        /// The policy.
        text: String,
        /// Its name in messages and records.
        label: String,
    },
}

/// `change request`: what is asked for.
#[derive(Debug, Clone)]
pub struct RequestReq {
    /// The proposed policy.
    pub source: Proposed,
    /// Why.
    pub reason: String,
    /// A ticket in the operator's tracker.
    pub ticket: Option<String>,
}

fn doc(r: &ChangeRecord, with_preflight: bool) -> ChangeDoc {
    ChangeDoc {
        api: API_VERSION,
        id: r.id,
        state: r.change.state.as_str().into(),
        requester: r.change.requester.clone(),
        reason: r.reason.clone(),
        ticket: r.ticket.clone(),
        version: r.version.clone(),
        base: r.base.clone(),
        source: r.source.clone(),
        approvals: r.change.approvals.clone(),
        needed: r.change.needed,
        require_approval: r.change.require_approval,
        confirm_by: r.change.confirm_by,
        txn: r.txn,
        created: r.created,
        updated: r.updated,
        vouched: r.vouched,
        preflight: with_preflight
            .then(|| serde_json::from_str(&r.preflight).ok())
            .flatten(),
    }
}

/// The policy in force: the version adopted last (not rolled back), else the one the
/// caller runs under (`--policy`, the baseline).
fn in_force(ctx: &Ctx, state_dir: &Path) -> anyhow::Result<(Side, Option<String>)> {
    match crate::policy::current_side(ctx, state_dir)? {
        Some(s) => {
            let v = s.version.clone();
            Ok((s, Some(v)))
        }
        None => {
            let l = crate::policy::load(ctx, None)?;
            Ok((Side::of_text(l.name, l.text.to_string())?, None))
        }
    }
}

/// The pre-flight of `new` against the version in force: the lock-out guard and nft's
/// check (either refuses the request), and a dry `check` of both on this host.
async fn preflight(
    ctx: &Ctx,
    state_dir: &Path,
    old: Side,
    new: Side,
    bootstrap: bool,
) -> anyhow::Result<PreflightDoc> {
    // The lock-out guard: a policy that would drop the management path or the SSH peer
    // is refused here, not at apply time.
    // With no version in force yet the old side is the baseline, whose management path
    // (open to all) is no one's: only the SSH peer is guarded then.
    let guard_old = if bootstrap { &new.policy } else { &old.policy };
    crate::fw::lockout_check(ctx, guard_old, &new.policy, state_dir)?;
    let ruleset = crate::fw::ruleset_of(ctx, &new.policy, state_dir)
        .with_context(|| format!("pre-flight of {}", new.label))?;
    let nft_check = if crate::fw::nft_installed() {
        use crate::fw::Firewall as _;
        crate::fw::Nft
            .check(&ruleset)
            .with_context(|| format!("pre-flight of {}: nft -c refuses its ruleset", new.label))?;
        "ok".to_string()
    } else {
        "not run: nft is not installed".to_string()
    };
    let before = crate::check::evaluate_dry(ctx, old.loaded(), state_dir).await?;
    let after = crate::check::evaluate_dry(ctx, new.loaded(), state_dir).await?;
    let external = |e: &crate::check::Evaluation| {
        e.exposure
            .iter()
            .filter(|x| x.visibility == Visibility::External)
            .count()
    };
    let subjects = |e: &crate::check::Evaluation, rule: RuleId| -> Vec<String> {
        let mut v: Vec<String> = e
            .findings
            .iter()
            .filter(|f| f.id == rule)
            .map(|f| f.subject.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let was = subjects(&before, RuleId::UnmanagedListener);
    let unmanaged = subjects(&after, RuleId::UnmanagedListener)
        .into_iter()
        .filter(|s| !was.contains(s))
        .collect();
    Ok(PreflightDoc {
        nft_check,
        exposure_before: before.exposure_total,
        exposure_after: after.exposure_total,
        external_ports_before: external(&before),
        external_ports_after: external(&after),
        unmanaged,
        down: subjects(&after, RuleId::ServiceNotListening),
        diff: crate::policy::diff_sides(ctx, state_dir, old, new),
    })
}

/// `change request`: validates the proposed policy, runs the pre-flight, and records
/// the request with its diff against the version in force.
pub async fn request(ctx: &Ctx, state_dir: &Path, req: &RequestReq) -> anyhow::Result<ChangeDoc> {
    if req.reason.trim().is_empty() {
        bail!("a change request needs a reason: --reason \"…\"");
    }
    let (text, label) = match &req.source {
        Proposed::File(p) => (
            crate::policy::read_policy_text(p)?.1,
            p.display().to_string(),
        ),
        Proposed::Git(spec) => crate::policy::from_git(spec)?,
        Proposed::Text { text, label } => {
            if text.len() as u64 > crate::policy::POLICY_MAX_BYTES {
                bail!("the proposed policy is larger than the 16 MiB limit");
            }
            (text.clone(), label.clone())
        }
    };
    let new = Side::of_text(label.clone(), text.clone())?;
    let (old, base) = in_force(ctx, state_dir)?;
    if base.as_deref() == Some(new.version.as_str()) {
        bail!(
            "{label} is the version in force ({}): nothing to change",
            short_hash(&new.version)
        );
    }
    // The review the policy in force asks for (a proposal cannot lower it for itself),
    // or the proposal's, whichever is stricter.
    let needed = old.policy.change.approvals.max(new.policy.change.approvals);
    let require = old.policy.change.require_approval || new.policy.change.require_approval;
    let pre = preflight(ctx, state_dir, old, new, base.is_none()).await?;
    let pre_json = serde_json::to_string(&pre).context("the pre-flight report")?;
    let mut s = crate::store::open(ctx, state_dir, true)?;
    let r = s.change_create(
        ctx.clock.now(),
        portwarden_store::NewChange {
            requester: &ctx.actor,
            reason: req.reason.trim(),
            ticket: req.ticket.as_deref(),
            text: &text,
            source: &label,
            base: base.as_deref(),
            needed,
            require_approval: require,
            preflight: &pre_json,
        },
    )?;
    Ok(doc(&r, true))
}

/// How long an apply may stay without an outcome before it counts as interrupted.
const STUCK_SECS: i64 = 600;

/// Brings the requests awaiting confirmation up to date with their firewall
/// transactions (confirmed by `fw confirm`, rolled back by the watcher or `fw rollback`).
fn settle(ctx: &Ctx, s: &mut portwarden_store::SqliteStore) -> anyhow::Result<()> {
    let txns = s.fw_txns()?;
    for c in s.changes()? {
        // An apply that never recorded its outcome (the process was killed): after ten
        // minutes it has failed, so the request can be applied again or expire.
        if c.change.state == ChangeState::Applying && ctx.clock.now() - c.updated > STUCK_SECS {
            let _ = s.change_step(
                ctx.clock.now(),
                c.id,
                "portwarden",
                &ChangeEvent::Failed,
                Some("no outcome was recorded within ten minutes: the apply was interrupted; check `fw status`"),
                None,
            );
            continue;
        }
        if c.change.state != ChangeState::AppliedPendingConfirm {
            continue;
        }
        let Some(t) = c.txn.and_then(|id| txns.iter().find(|t| t.id == id)) else {
            continue;
        };
        let now = ctx.clock.now();
        let event = match t.state {
            FwState::Confirmed => ChangeEvent::Confirm,
            FwState::RolledBack if c.change.confirm_by.is_some_and(|by| now >= by) => {
                ChangeEvent::Deadline
            }
            FwState::RolledBack => ChangeEvent::RollBack,
            FwState::Pending => continue,
        };
        // A late confirmation the state machine refuses is recorded by the store.
        let _ = s.change_step(
            now,
            c.id,
            "portwarden",
            &event,
            Some(&format!("firewall transaction {}", t.id)),
            None,
        );
    }
    Ok(())
}

/// `change list`.
pub fn list(ctx: &Ctx, state_dir: &Path) -> anyhow::Result<ChangesDoc> {
    let changes = match crate::store::open_existing(ctx, state_dir)? {
        Some(mut s) => {
            // On a store that refuses writes the list is as recorded.
            let _ = settle(ctx, &mut s);
            s.changes()?
        }
        None => Vec::new(),
    };
    Ok(ChangesDoc {
        api: API_VERSION,
        changes: changes.iter().map(|c| doc(c, false)).collect(),
    })
}

/// `change show ID`.
pub fn show(ctx: &Ctx, state_dir: &Path, id: i64) -> anyhow::Result<ChangeDoc> {
    let Some(mut s) = crate::store::open_existing(ctx, state_dir)? else {
        bail!(StoreError::NoChange(id));
    };
    let _ = settle(ctx, &mut s);
    let r = s.change_get(id)?.ok_or(StoreError::NoChange(id))?;
    Ok(doc(&r, true))
}

/// `change approve ID` by an actor other than the requester.
pub fn approve(ctx: &Ctx, state_dir: &Path, id: i64) -> anyhow::Result<ChangeDoc> {
    let mut s = crate::store::open(ctx, state_dir, false)?;
    let r = s.change_step(
        ctx.clock.now(),
        id,
        &ctx.actor,
        &ChangeEvent::Approve {
            actor: ctx.actor.clone(),
        },
        None,
        None,
    )?;
    Ok(doc(&r, false))
}

/// `change reject ID --reason`.
pub fn reject(ctx: &Ctx, state_dir: &Path, id: i64, reason: &str) -> anyhow::Result<ChangeDoc> {
    if reason.trim().is_empty() {
        bail!("a rejection needs a reason: --reason \"…\"");
    }
    let mut s = crate::store::open(ctx, state_dir, false)?;
    let r = s.change_step(
        ctx.clock.now(),
        id,
        &ctx.actor,
        &ChangeEvent::Reject {
            actor: ctx.actor.clone(),
        },
        Some(reason.trim()),
        None,
    )?;
    Ok(doc(&r, false))
}

/// The environment a hook runs with.
fn hook_env(r: &ChangeRecord, phase: &str, txn: Option<i64>) -> Vec<(String, String)> {
    const DIFF_MAX: usize = 64 << 10;
    let diff = serde_json::from_str::<PreflightDoc>(&r.preflight)
        .map(|p| p.diff.lines.join("\n"))
        .unwrap_or_default();
    let diff = if diff.len() > DIFF_MAX {
        let mut end = DIFF_MAX;
        while !diff.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}\n… (cut at {DIFF_MAX} bytes)", &diff[..end])
    } else {
        diff
    };
    let mut env = vec![
        ("PORTWARDEN_PHASE".to_string(), phase.to_string()),
        ("PORTWARDEN_CHANGE_ID".to_string(), r.id.to_string()),
        ("PORTWARDEN_VERSION".to_string(), r.version.clone()),
        (
            "PORTWARDEN_BASE".to_string(),
            r.base.clone().unwrap_or_default(),
        ),
        ("PORTWARDEN_DIFF".to_string(), diff),
    ];
    if let Some(t) = txn {
        env.push(("PORTWARDEN_TXN".to_string(), t.to_string()));
    }
    env
}

/// Runs a `[change]` hook (none: `Ok(None)`); `Err` says how it failed.
fn hook(
    ctx: &Ctx,
    which: &str,
    argv: &[String],
    timeout: std::time::Duration,
    env: &[(String, String)],
) -> Result<Option<String>, String> {
    if argv.is_empty() {
        return Ok(None);
    }
    ctx.notes.verbose(&format!("{which}: {}", argv.join(" ")));
    match portwarden_os::hook::run(argv, env, timeout) {
        Ok(r) if r.ok() => Ok(Some(format!("{which} ok in {} ms", r.elapsed.as_millis()))),
        Ok(r) => {
            let how = if r.timed_out {
                format!(
                    "ran past its {} and was killed",
                    portwarden_core::units::HumanDuration(timeout)
                )
            } else {
                match r.code {
                    Some(c) => format!("exited {c}"),
                    None => "was killed by a signal".to_string(),
                }
            };
            let out = portwarden_core::diag::strip_unsafe(r.output.trim(), 400);
            Err(if out.is_empty() {
                format!("the {which} hook {how}")
            } else {
                format!("the {which} hook {how}: {out}")
            })
        }
        Err(e) => Err(format!("the {which} hook `{}` cannot run: {e}", argv[0])),
    }
}

/// `change apply ID`: the approved version through `fw apply` (pre-flight, commit-confirm,
/// ledger), between its `pre_apply` and `post_apply` hooks (the proposed version's: they
/// are reviewed with it). A failed apply or pre-apply hook returns the request to where
/// its approvals put it; a failed post-apply hook rolls it back unless
/// `keep_on_hook_failure`.
pub fn apply(
    ctx: &Ctx,
    state_dir: &Path,
    id: i64,
    mut req: crate::fw::ApplyReq,
    keep_on_hook_failure: bool,
) -> anyhow::Result<ChangeDoc> {
    let mut s = crate::store::open(ctx, state_dir, false)?;
    let r = s.change_step(
        ctx.clock.now(),
        id,
        &ctx.actor,
        &ChangeEvent::Apply,
        None,
        None,
    )?;
    // From here on, any error returns the request to where its approvals put it.
    let fail = |e: anyhow::Error| -> anyhow::Error {
        if let Ok(mut s) = crate::store::open(ctx, state_dir, false) {
            let _ = s.change_step(
                ctx.clock.now(),
                id,
                &ctx.actor,
                &ChangeEvent::Failed,
                Some(&format!("{e:#}")),
                None,
            );
        }
        e.context(format!("change {id} was not applied"))
    };
    let v = s.policy_version(&r.version).map_err(|e| fail(e.into()))?;
    drop(s);
    let side = Side::of_text(
        format!("change {id} (version {})", short_hash(&v.hash)),
        v.text,
    )
    .map_err(fail)?;
    let hooks = side.policy.change.clone();
    let timeout = hooks.hook_timeout.get();
    let applied = match hook(
        ctx,
        "pre_apply",
        &hooks.pre_apply,
        timeout,
        &hook_env(&r, "pre-apply", None),
    ) {
        Err(why) => Err(anyhow::anyhow!("{why}: nothing was applied")),
        Ok(pre_note) => {
            let mut c = ctx.clone();
            c.policy = Some(std::sync::Arc::new(side.loaded()));
            req.how = "change apply";
            crate::fw::apply(&c, None, state_dir, req).map(|a| (a, pre_note))
        }
    };
    let (a, pre_note) = applied.map_err(fail)?;
    let mut s = crate::store::open(ctx, state_dir, false)?;
    let mut note = format!("firewall transaction {}", a.txn);
    if let Some(p) = pre_note {
        note = format!("{note}; {p}");
    }
    let r = s.change_step(
        ctx.clock.now(),
        id,
        &ctx.actor,
        &ChangeEvent::Loaded {
            confirm_by: a.deadline,
        },
        Some(&note),
        Some(a.txn),
    )?;
    let Err(why) = hook(
        ctx,
        "post_apply",
        &hooks.post_apply,
        timeout,
        &hook_env(&r, "post-apply", Some(a.txn)),
    ) else {
        return Ok(doc(&r, false));
    };
    if keep_on_hook_failure {
        ctx.notes.warn(&format!(
            "{why}; the change stays applied (--keep-on-hook-failure)"
        ));
        s.record(
            ctx.clock.now(),
            portwarden_store::Change {
                actor: ctx.actor.clone(),
                action: "change.hook-failed".into(),
                subject: format!("change:{id}"),
                before: None,
                after: None,
                reason: Some(format!("{why}; kept (--keep-on-hook-failure)")),
            },
        )?;
        return Ok(doc(&r, false));
    }
    drop(s);
    undo(ctx, state_dir, &r, &a, &why)?;
    bail!("{why}: change {id} was rolled back")
}

/// Undoes a change whose post-apply hook failed: a pending apply goes back to its
/// snapshot; a confirmed one is replaced by the version it replaced.
fn undo(
    ctx: &Ctx,
    state_dir: &Path,
    r: &ChangeRecord,
    a: &portwarden_api::fw::ApplyDoc,
    why: &str,
) -> anyhow::Result<()> {
    if a.deadline.is_some() {
        crate::fw::rollback(ctx, state_dir)?;
        let mut s = crate::store::open(ctx, state_dir, false)?;
        s.change_step(
            ctx.clock.now(),
            r.id,
            &ctx.actor,
            &ChangeEvent::RollBack,
            Some(why),
            None,
        )?;
        return Ok(());
    }
    let Some(base) = &r.base else {
        bail!(
            "{why}; there is no earlier version to return to: change {} stays applied",
            r.id
        );
    };
    let req = crate::fw::ApplyReq {
        confirm_within: std::time::Duration::ZERO,
        backend: crate::fw::Backend::Auto,
        allow_missing_interface: false,
        how: "change rollback",
    };
    rollback(ctx, state_dir, Some(base), req).map(drop)
}

/// `change rollback [--to VERSION]`: back to an earlier applied version (the one before
/// the version in force when none is named) through `fw apply`; the change that brought
/// the version in force is marked rolled back.
pub fn rollback(
    ctx: &Ctx,
    state_dir: &Path,
    to: Option<&str>,
    mut req: crate::fw::ApplyReq,
) -> anyhow::Result<portwarden_api::fw::ApplyDoc> {
    let s = crate::store::open(ctx, state_dir, false)?;
    let current = s.policy_current()?;
    // Rolled back to: a version a firewall apply loaded and that was confirmed (not one a
    // daemon only ran, nor one whose apply was itself rolled back).
    let history = s.policy_history()?;
    let was_applied = |hash: &str| {
        history.iter().any(|a| {
            a.hash == hash
                && a.vouched
                && a.txn.is_some()
                && a.txn_state.as_deref() == Some("confirmed")
        })
    };
    let target = match to {
        Some(v) => s.policy_version(v)?,
        None => {
            let now = current.as_ref().map(|c| c.hash.clone());
            let Some(prev) = history
                .iter()
                .rev()
                .find(|a| Some(&a.hash) != now.as_ref() && was_applied(&a.hash))
            else {
                bail!("no earlier applied version to roll back to (`portwarden policy history`)");
            };
            s.policy_version(&prev.hash)?
        }
    };
    if !was_applied(&target.hash) {
        bail!(
            "version {} was never applied and confirmed here: only those are rolled back to (`portwarden policy history`)",
            short_hash(&target.hash)
        );
    }
    if current.as_ref().is_some_and(|c| c.hash == target.hash) {
        bail!(
            "version {} is the version in force",
            short_hash(&target.hash)
        );
    }
    drop(s);
    let side = Side::of_text(format!("version {}", short_hash(&target.hash)), target.text)?;
    let mut c = ctx.clone();
    c.policy = Some(std::sync::Arc::new(side.loaded()));
    req.how = "change rollback";
    let a = crate::fw::apply(&c, None, state_dir, req)?;
    // The change whose version this replaces is rolled back.
    let mut s = crate::store::open(ctx, state_dir, false)?;
    if let Some(cur) = current {
        for r in s.changes()? {
            if r.version == cur.hash
                && matches!(
                    r.change.state,
                    ChangeState::Applied | ChangeState::AppliedPendingConfirm
                )
            {
                s.change_step(
                    ctx.clock.now(),
                    r.id,
                    &ctx.actor,
                    &ChangeEvent::RollBack,
                    Some(&format!(
                        "rolled back to version {} (firewall transaction {})",
                        short_hash(&target.hash),
                        a.txn
                    )),
                    None,
                )?;
            }
        }
    }
    Ok(a)
}

/// `[change] require_approval`: an apply of a policy no approved change proposes is
/// refused (the policy in force's setting, or the one applied). A change's own apply
/// and a rollback to an applied version pass.
pub(crate) fn approval_gate(
    ctx: &Ctx,
    state_dir: &Path,
    loaded: &LoadedPolicy,
    how: &str,
) -> anyhow::Result<()> {
    if how != "fw apply" {
        return Ok(());
    }
    let Some(s) = crate::store::open_existing(ctx, state_dir)? else {
        return if loaded.policy.change.require_approval {
            bail!(refused(loaded))
        } else {
            Ok(())
        };
    };
    // What the firewall carries (a daemon's adoption alone does not lower the bar): the
    // last adoption a firewall transaction loaded and that was not rolled back.
    let history = s.policy_history()?;
    let on_firewall = history
        .iter()
        .rev()
        .find(|a| a.vouched && a.txn.is_some() && a.txn_state.as_deref() != Some("rolled-back"));
    let in_force_requires = match on_firewall {
        Some(c) => {
            let v = s.policy_version(&c.hash)?;
            Side::of_text(String::new(), v.text).is_ok_and(|x| x.policy.change.require_approval)
        }
        None => false,
    };
    if !(in_force_requires || loaded.policy.change.require_approval) {
        return Ok(());
    }
    let version = portwarden_store::policy_version_of(&loaded.text);
    // Approved, and against the version in force now (a stale approval does not count).
    let now = s.policy_current()?.map(|c| c.hash);
    let approved = s.changes()?.iter().any(|c| {
        c.version == version
            && c.change.state == ChangeState::Approved
            && c.base == now
            && c.vouched
    });
    if approved {
        return Ok(());
    }
    bail!(refused(loaded))
}

fn refused(loaded: &LoadedPolicy) -> String {
    format!(
        "refusing to apply {}: the policy requires approval ([change] require_approval) and no approved change proposes version {}; request one: `portwarden change request --policy {} --reason \"…\"`",
        loaded.name,
        short_hash(&portwarden_store::policy_version_of(&loaded.text)),
        loaded.name
    )
}
