//! `portwarden log [verify|head|export|prune]`: the change ledger.

use anyhow::bail;
use portwarden_store::{Store, StoreError};

use crate::cli::{ExportFormat, Global, LogArgs, LogCommand};
use crate::{Status, output};

pub fn run(g: &Global, a: &LogArgs) -> anyhow::Result<Status> {
    let store = match super::open_store(g, false) {
        Ok(s) => Some(s),
        Err(StoreError::Missing(_)) => None,
        Err(e) => return Err(e.into()),
    };
    match &a.command {
        None => {
            // `--since 0` is since the epoch: everything; anything longer than the epoch
            // is too; under a second is the last second.
            let since = a.since.map(|d| {
                if d.get().is_zero() {
                    0
                } else {
                    let secs = i64::try_from(d.get().as_secs().max(1)).unwrap_or(i64::MAX);
                    super::now().saturating_sub(secs).max(0)
                }
            });
            let entries = match &store {
                Some(s) => s.ledger(since)?,
                None => Vec::new(),
            };
            if g.json {
                output::json(&entries)?;
            } else {
                output::ledger(&entries)?;
            }
            Ok(Status::Ok)
        }
        Some(LogCommand::Verify {
            expect_head,
            repair,
        }) => {
            let expect = match expect_head {
                None => None,
                Some(h) => {
                    // `SEQ:HASH`, or `SEQ HASH` as older `log head` printed it.
                    let parsed = h
                        .trim()
                        .split_once([':', ' '])
                        .and_then(|(seq, hash)| Some((seq.parse::<i64>().ok()?, hash)))
                        .filter(|(seq, hash)| {
                            *seq >= 0
                                && hash.len() == 64
                                && hash.bytes().all(|b| b.is_ascii_hexdigit())
                        });
                    match parsed {
                        Some((seq, hash)) => Some((seq, hash.to_ascii_lowercase())),
                        None => bail!(
                            "invalid --expect-head `{h}`: expected SEQ:HASH as `portwarden log head` prints it (e.g. 42:9f86…, 64 hex digits)"
                        ),
                    }
                }
            };
            let mut store = store;
            if *repair {
                if let Some(s) = store.as_mut() {
                    for done in s.repair_ledger(super::now(), &super::actor())? {
                        output::warn(g.quiet, &format!("repaired: {done}"));
                    }
                }
            }
            let v = match &store {
                Some(s) => {
                    s.verify_ledger_expecting(expect.as_ref().map(|(n, h)| (*n, h.as_str())))?
                }
                None => {
                    let mut v = portwarden_store::ledger::verify(&[]);
                    if let Some((seq, hash)) = &expect {
                        v.check_head(&[], *seq, hash, "the expected head");
                    }
                    v
                }
            };
            if g.json {
                output::json(&v)?;
            } else if !g.quiet {
                output::verification(&v)?;
            }
            Ok(if v.ok() { Status::Ok } else { Status::Negative })
        }
        Some(LogCommand::Head) => {
            let head = match &store {
                Some(s) => s.ledger(None)?.last().map(|e| (e.seq, e.hash.clone())),
                None => None,
            };
            if g.json {
                output::json(&serde_json::json!({
                    "seq": head.as_ref().map(|h| h.0),
                    "hash": head.as_ref().map(|h| h.1.clone()),
                }))?;
            } else {
                match head {
                    Some((seq, hash)) => output::text(&format!("{seq}:{hash}\n"))?,
                    None => output::text("0 (empty ledger)\n")?,
                }
            }
            Ok(Status::Ok)
        }
        Some(LogCommand::Export { format }) => {
            let entries = match &store {
                Some(s) => s.ledger(None)?,
                None => Vec::new(),
            };
            match format {
                ExportFormat::Jsonl => output::jsonl(&entries)?,
            }
            Ok(Status::Ok)
        }
        Some(LogCommand::Prune { dry_run }) => {
            let loaded = super::load_policy(g.policy.as_deref())?;
            let days = i64::from(loaded.policy.compliance.ledger_retention_days);
            let now = super::now();
            let cutoff = now - days * 86_400;
            let doc = |n: usize, done: bool| {
                output::json(&serde_json::json!({
                    "api": portwarden_api::API_VERSION,
                    "records": n,
                    "before": output::utc(cutoff),
                    "retention_days": days,
                    "deleted": done,
                }))
            };
            let Some(mut store) = store else {
                if g.json {
                    doc(0, false)?;
                } else {
                    output::text("empty ledger: nothing to prune\n")?;
                }
                return Ok(Status::Ok);
            };
            if *dry_run {
                // As `prune_ledger` cuts: the leading run of old records only.
                let n = store
                    .ledger(None)?
                    .iter()
                    .take_while(|e| e.ts < cutoff)
                    .count();
                if g.json {
                    doc(n, false)?;
                } else {
                    output::text(&format!(
                        "would delete {n} records older than {days} days (before {})\n",
                        output::utc(cutoff)
                    ))?;
                }
                return Ok(Status::Ok);
            }
            let n = store.prune_ledger(cutoff, now, &super::actor())?;
            if g.json {
                doc(usize::try_from(n).unwrap_or(0), true)?;
            } else if !g.quiet {
                output::text(&format!(
                    "deleted {n} records older than {days} days through a checkpoint\n"
                ))?;
            }
            Ok(Status::Ok)
        }
    }
}
