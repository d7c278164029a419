//! The change ledger's hash chain: canonical record bytes, `hash = SHA-256(prev_hash ||
//! canonical record)`, and verification of a chain of records. Pure: no database here.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first record ever written.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The action name of a retention checkpoint.
pub const CHECKPOINT: &str = "ledger.checkpoint";

/// One ledger record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Sequence number, from 1, contiguous.
    pub seq: i64,
    /// Unix seconds.
    pub ts: i64,
    /// Who did it.
    pub actor: String,
    /// What kind of change (`lease.alloc`, `lease.release`, ...).
    pub action: String,
    /// What it is about (`20001/tcp`, a lease id, a pool).
    pub subject: String,
    /// State before, as JSON.
    pub before: Option<String>,
    /// State after, as JSON.
    pub after: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// Hash of the previous record (hex).
    pub prev_hash: String,
    /// Hash of this record (hex).
    pub hash: String,
}

/// A change to record, before it gets its place in the chain.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// Who.
    pub actor: String,
    /// What kind.
    pub action: String,
    /// About what.
    pub subject: String,
    /// Before, as JSON.
    pub before: Option<String>,
    /// After, as JSON.
    pub after: Option<String>,
    /// Why.
    pub reason: Option<String>,
}

/// The bytes a record's hash covers: a JSON array of every field but the hashes, in a
/// fixed order, so the encoding is canonical.
pub fn canonical(seq: i64, ts: i64, c: &Change) -> Vec<u8> {
    serde_json::to_vec(&(
        seq, ts, &c.actor, &c.action, &c.subject, &c.before, &c.after, &c.reason,
    ))
    .unwrap_or_default()
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(D[(b >> 4) as usize] as char);
        s.push(D[(b & 15) as usize] as char);
    }
    s
}

/// `SHA-256(prev_hash || canonical record)`, hex.
pub fn chain_hash(prev_hash: &str, seq: i64, ts: i64, c: &Change) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical(seq, ts, c));
    hex(&h.finalize())
}

/// Builds the next record after `head` (`None`: the chain is empty).
pub fn next_entry(head: Option<(i64, &str)>, ts: i64, c: Change) -> Entry {
    let (seq, prev) = match head {
        Some((s, h)) => (s + 1, h.to_string()),
        None => (1, GENESIS.to_string()),
    };
    let hash = chain_hash(&prev, seq, ts, &c);
    Entry {
        seq,
        ts,
        actor: c.actor,
        action: c.action,
        subject: c.subject,
        before: c.before,
        after: c.after,
        reason: c.reason,
        prev_hash: prev,
        hash,
    }
}

/// What a checkpoint record says about the records it replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// Last deleted sequence number.
    pub through_seq: i64,
    /// Its hash: the `prev_hash` of the first kept record.
    pub through_hash: String,
    /// How many records were deleted.
    pub deleted: i64,
}

/// `(seq, hash)` as `{"seq": …, "hash": …}`.
fn seq_and<S: serde::Serializer>(v: &Option<(i64, String)>, s: S) -> Result<S::Ok, S::Error> {
    pair(v, "hash", s)
}

/// `(seq, why)` as `{"seq": …, "why": …}`.
fn seq_and_why<S: serde::Serializer>(v: &Option<(i64, String)>, s: S) -> Result<S::Ok, S::Error> {
    pair(v, "why", s)
}

fn pair<S: serde::Serializer>(
    v: &Option<(i64, String)>,
    name: &'static str,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    match v {
        None => s.serialize_none(),
        Some((seq, text)) => {
            let mut m = s.serialize_map(Some(2))?;
            m.serialize_entry("seq", seq)?;
            m.serialize_entry(name, text)?;
            m.end()
        }
    }
}

/// The outcome of walking a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Records walked.
    pub records: usize,
    /// First sequence number present.
    pub first_seq: Option<i64>,
    /// Head: last sequence number and its hash (`{"seq", "hash"}`, as `log head` prints
    /// it).
    #[serde(serialize_with = "seq_and")]
    pub head: Option<(i64, String)>,
    /// The first broken link: its sequence number and what is wrong (`{"seq", "why"}`).
    #[serde(serialize_with = "seq_and_why")]
    pub broken: Option<(i64, String)>,
    /// What else is wrong around the chain: a head anchor or exported head it does not
    /// reach, dropped append-only triggers, leases or transactions that refer to records
    /// beyond the head.
    pub problems: Vec<String>,
}

impl Verification {
    /// Whether nothing is wrong.
    pub fn ok(&self) -> bool {
        self.broken.is_none() && self.problems.is_empty()
    }

    /// Checks that the chain reaches `head` (seq and hash, from an anchor or an exported
    /// copy) and holds that record unchanged; `what` names where the head came from.
    pub fn check_head(&mut self, entries: &[Entry], seq: i64, hash: &str, what: &str) {
        let end = self.head.as_ref().map_or(0, |h| h.0);
        if seq > end {
            self.problems.push(if end == 0 {
                format!("the ledger is empty, but {what} says it reached seq {seq}: records were deleted")
            } else {
                format!("the ledger ends at seq {end}, but {what} says it reached seq {seq}: records were deleted from the end")
            });
            return;
        }
        if seq == 0 {
            return;
        }
        match entries.iter().find(|e| e.seq == seq) {
            Some(e) if e.hash != hash => self.problems.push(format!(
                "record {seq} has hash {}, but {what} says {hash}: the chain was rewritten",
                e.hash
            )),
            Some(_) => {}
            // Pruned: only a checkpoint that names this very record confirms it.
            None if self.first_seq.is_some_and(|f| seq < f) => {
                let vouched = entries.iter().filter(|e| e.action == CHECKPOINT).any(|e| {
                    e.after
                        .as_deref()
                        .and_then(|a| serde_json::from_str::<Checkpoint>(a).ok())
                        .is_some_and(|c| c.through_seq == seq && c.through_hash == hash)
                });
                if !vouched {
                    self.problems.push(format!(
                        "record {seq}, which {what} names, was pruned and no checkpoint names it: cannot confirm {what}"
                    ));
                }
            }
            None => self
                .problems
                .push(format!("record {seq}, which {what} names, is missing")),
        }
    }
}

/// Walks every link: recomputes each hash, checks each `prev_hash` and that sequence
/// numbers are contiguous; a chain that does not start at 1 must be explained by a
/// checkpoint record.
pub fn verify(entries: &[Entry]) -> Verification {
    let mut v = Verification {
        records: entries.len(),
        first_seq: entries.first().map(|e| e.seq),
        head: entries.last().map(|e| (e.seq, e.hash.clone())),
        broken: None,
        problems: Vec::new(),
    };
    let Some(first) = entries.first() else {
        return v;
    };
    // Any checkpoint in the chain may explain its start (a later one, appended after
    // another prune or by hand, does not hide the one that does).
    let start_ok = if first.seq == 1 {
        first.prev_hash == GENESIS
    } else {
        entries
            .iter()
            .filter(|e| e.action == CHECKPOINT)
            .filter_map(|e| {
                e.after
                    .as_deref()
                    .and_then(|a| serde_json::from_str::<Checkpoint>(a).ok())
            })
            .any(|c| c.through_seq + 1 == first.seq && c.through_hash == first.prev_hash)
    };
    if !start_ok {
        v.broken = Some((
            first.seq,
            if first.seq == 1 {
                "first record does not start from the genesis hash".to_string()
            } else {
                format!(
                    "chain starts at seq {} but no checkpoint accounts for the records before it (truncated?)",
                    first.seq
                )
            },
        ));
        return v;
    }
    let mut prev: Option<&Entry> = None;
    for e in entries {
        if let Some(p) = prev {
            if e.seq != p.seq + 1 {
                v.broken = Some((
                    p.seq + 1,
                    format!("records {} to {} are missing", p.seq + 1, e.seq - 1),
                ));
                return v;
            }
            if e.prev_hash != p.hash {
                v.broken = Some((
                    e.seq,
                    "prev_hash does not match the previous record's hash".into(),
                ));
                return v;
            }
        }
        let c = Change {
            actor: e.actor.clone(),
            action: e.action.clone(),
            subject: e.subject.clone(),
            before: e.before.clone(),
            after: e.after.clone(),
            reason: e.reason.clone(),
        };
        if chain_hash(&e.prev_hash, e.seq, e.ts, &c) != e.hash {
            v.broken = Some((e.seq, "record content does not match its hash".into()));
            return v;
        }
        prev = Some(e);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(i: i64) -> Change {
        Change {
            actor: "root".into(),
            action: "lease.alloc".into(),
            subject: format!("{}/tcp", 20000 + i),
            before: None,
            after: Some(format!("{{\"port\":{}}}", 20000 + i)),
            reason: None,
        }
    }

    fn chain(n: i64) -> Vec<Entry> {
        let mut v: Vec<Entry> = Vec::new();
        for i in 0..n {
            let head = v.last().map(|e| (e.seq, e.hash.as_str()));
            let e = next_entry(head, 1000 + i, change(i));
            v.push(e);
        }
        v
    }

    #[test]
    fn a_fresh_chain_verifies() {
        let v = verify(&chain(5));
        assert_eq!(v.broken, None);
        assert_eq!(v.records, 5);
        assert_eq!(v.head.unwrap().0, 5);
        assert_eq!(verify(&[]).broken, None);
    }

    #[test]
    fn every_field_change_is_caught_at_its_seq() {
        let base = chain(6);
        type Tamper = fn(&mut Entry);
        let tampers: &[Tamper] = &[
            |e| e.ts += 1,
            |e| e.actor.push('x'),
            |e| e.action = "lease.release".into(),
            |e| e.subject = "1/tcp".into(),
            |e| e.after = None,
            |e| e.reason = Some("why".into()),
            |e| e.hash.replace_range(0..1, "f"),
            |e| e.prev_hash.replace_range(0..1, "f"),
        ];
        for (t, tamper) in tampers.iter().enumerate() {
            for k in 0..base.len() {
                let mut c = base.clone();
                tamper(&mut c[k]);
                if c[k] == base[k] {
                    continue;
                }
                let v = verify(&c);
                assert_eq!(
                    v.broken.as_ref().map(|b| b.0),
                    Some(c[k].seq),
                    "tamper {t} at {k}"
                );
            }
        }
    }

    #[test]
    fn deletions_and_truncation_are_caught() {
        let mut c = chain(6);
        c.remove(3);
        assert_eq!(verify(&c).broken.unwrap().0, 4);
        let c = chain(6)[2..].to_vec();
        assert!(verify(&c).broken.unwrap().1.contains("no checkpoint"));
    }

    #[test]
    fn a_checkpoint_explains_pruned_records() {
        let mut c = chain(6);
        let cp = Checkpoint {
            through_seq: 3,
            through_hash: c[2].hash.clone(),
            deleted: 3,
        };
        let head = c.last().map(|e| (e.seq, e.hash.clone())).unwrap();
        let e = next_entry(
            Some((head.0, &head.1)),
            2000,
            Change {
                actor: "portwarden".into(),
                action: CHECKPOINT.into(),
                subject: "ledger".into(),
                after: Some(serde_json::to_string(&cp).unwrap()),
                ..Change::default()
            },
        );
        c.push(e);
        let kept = c[3..].to_vec();
        assert_eq!(verify(&kept).broken, None);
    }
}
