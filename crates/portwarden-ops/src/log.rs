//! The ledger's use-cases: `log`, `log verify [--expect-head] [--repair]`, `log head`,
//! `log export`, `log prune`.

use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use portwarden_api::API_VERSION;
use portwarden_api::log::{Broken, Head, HeadDoc, LedgerDoc, PruneDoc, Record, VerifyDoc};
use portwarden_core::time::utc;
use portwarden_store::{Entry, Journal};

use crate::Ctx;

/// A ledger record as the documents carry it.
pub fn record(e: &Entry) -> Record {
    Record {
        seq: e.seq,
        ts: e.ts,
        time: utc(e.ts),
        actor: e.actor.clone(),
        action: e.action.clone(),
        subject: e.subject.clone(),
        before: e.before.clone(),
        after: e.after.clone(),
        reason: e.reason.clone(),
        prev_hash: e.prev_hash.clone(),
        hash: e.hash.clone(),
    }
}

use crate::store::open_existing as open;

/// The cutoff of `log --since D`: `0` is since the epoch (everything), as is anything
/// longer than the epoch; under a second is the last second.
pub fn since_cutoff(now: i64, since: Duration) -> i64 {
    if since.is_zero() {
        return 0;
    }
    let secs = i64::try_from(since.as_secs().max(1)).unwrap_or(i64::MAX);
    now.saturating_sub(secs).max(0)
}

/// `log [--since D]`.
pub fn list(ctx: &Ctx, state_dir: &Path, since: Option<Duration>) -> anyhow::Result<LedgerDoc> {
    let since = since.map(|d| since_cutoff(ctx.clock.now(), d));
    let records = match open(ctx, state_dir)? {
        Some(s) => s.ledger(since)?.iter().map(record).collect(),
        None => Vec::new(),
    };
    Ok(LedgerDoc {
        api: API_VERSION,
        since,
        records,
    })
}

/// Every record, oldest first (`log export`).
pub fn export(ctx: &Ctx, state_dir: &Path) -> anyhow::Result<Vec<Record>> {
    Ok(list(ctx, state_dir, None)?.records)
}

/// `--expect-head SEQ:HASH` (or `SEQ HASH`, as older `log head` printed it).
pub fn parse_head(h: &str) -> anyhow::Result<Head> {
    let parsed = h
        .trim()
        .split_once([':', ' '])
        .and_then(|(seq, hash)| Some((seq.parse::<i64>().ok()?, hash)))
        .filter(|(seq, hash)| {
            *seq >= 0 && hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())
        });
    match parsed {
        Some((seq, hash)) => Ok(Head {
            seq,
            hash: hash.to_ascii_lowercase(),
        }),
        None => bail!(
            "invalid --expect-head `{h}`: expected SEQ:HASH as `portwarden log head` prints it (e.g. 42:9f86…, 64 hex digits)"
        ),
    }
}

/// `log verify`: walks the chain, checks the head anchor (and `expect`, a head kept
/// elsewhere); `repair` first mends what can be mended without hiding anything.
pub fn verify(
    ctx: &Ctx,
    state_dir: &Path,
    expect: Option<&Head>,
    repair: bool,
) -> anyhow::Result<VerifyDoc> {
    let mut store = open(ctx, state_dir)?;
    let mut repaired = Vec::new();
    if repair {
        if let Some(s) = store.as_mut() {
            repaired = s.repair_ledger(ctx.clock.now(), &ctx.actor)?;
            for done in &repaired {
                ctx.notes.warn(&format!("repaired: {done}"));
            }
        }
    }
    let expect = expect.map(|h| (h.seq, h.hash.as_str()));
    let v = match &store {
        Some(s) => s.verify_ledger_expecting(expect)?,
        None => {
            // Nothing to verify is not a verified ledger: an audit of the wrong
            // --state-dir must not pass.
            let mut v = portwarden_store::ledger::verify(&[]);
            v.problems.push(format!(
                "no ledger at {}: nothing was ever recorded there (a wrong --state-dir?)",
                state_dir.display()
            ));
            if let Some((seq, hash)) = expect {
                v.check_head(&[], seq, hash, "the expected head");
            }
            v
        }
    };
    Ok(VerifyDoc {
        api: API_VERSION,
        ok: v.ok(),
        records: v.records,
        first_seq: v.first_seq,
        head: v.head.map(|(seq, hash)| Head { seq, hash }),
        broken: v.broken.map(|(seq, why)| Broken { seq, why }),
        problems: v.problems,
        repaired,
    })
}

/// `log head`.
pub fn head(ctx: &Ctx, state_dir: &Path) -> anyhow::Result<HeadDoc> {
    let head = match open(ctx, state_dir)? {
        Some(s) => s.ledger(None)?.last().map(|e| Head {
            seq: e.seq,
            hash: e.hash.clone(),
        }),
        None => None,
    };
    Ok(HeadDoc {
        api: API_VERSION,
        head,
    })
}

/// `log prune`: deletes the leading run of records older than the policy's
/// `ledger_retention_days`, through a checkpoint that keeps the chain verifiable.
pub fn prune(
    ctx: &Ctx,
    policy: Option<&Path>,
    state_dir: &Path,
    dry_run: bool,
) -> anyhow::Result<PruneDoc> {
    let loaded = crate::policy::load(ctx, policy)?;
    let days = i64::from(loaded.policy.compliance.ledger_retention_days);
    let now = ctx.clock.now();
    let cutoff = now - days * 86_400;
    let doc = |records: usize, deleted: bool, empty: bool| PruneDoc {
        api: API_VERSION,
        records,
        before: utc(cutoff),
        retention_days: days,
        deleted,
        empty,
    };
    let Some(mut store) = open(ctx, state_dir)? else {
        return Ok(doc(0, false, true));
    };
    if dry_run {
        // As `prune_ledger` cuts: the leading run of old records only.
        let n = store
            .ledger(None)?
            .iter()
            .take_while(|e| e.ts < cutoff)
            .count();
        return Ok(doc(n, false, false));
    }
    let n = store.prune_ledger(cutoff, now, &ctx.actor)?;
    Ok(doc(usize::try_from(n).unwrap_or(0), true, false))
}

/// Appends one record for a change made outside the store (the daemon's policy reload,
/// an alert's raise or clear).
pub fn record_change(
    ctx: &Ctx,
    state_dir: &Path,
    change: portwarden_store::Change,
) -> anyhow::Result<Record> {
    let mut s = crate::store::open(ctx, state_dir, true)?;
    Ok(record(&s.record(ctx.clock.now(), change)?))
}
