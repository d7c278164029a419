//! How the ledger documents read on a terminal.

use portwarden_api::log::{HeadDoc, LedgerDoc, PruneDoc, VerifyDoc};

use super::Table;
use super::printer::Render;

impl Render for LedgerDoc {
    fn human(&self, verbose: u8) -> String {
        if self.records.is_empty() {
            return match self.since {
                Some(t) => format!("no records since {}\n", super::utc(t)),
                None => "the ledger is empty\n".into(),
            };
        }
        let mut head = vec!["SEQ", "TIME", "ACTOR", "ACTION", "SUBJECT", "REASON"];
        if verbose > 0 {
            head.extend(["BEFORE", "AFTER", "HASH"]);
        }
        let mut t = Table::new(&head);
        for e in &self.records {
            let mut row = vec![
                e.seq.to_string(),
                e.time.clone(),
                e.actor.clone(),
                e.action.clone(),
                e.subject.clone(),
                e.reason.clone().unwrap_or_default(),
            ];
            if verbose > 0 {
                row.extend([
                    e.before.clone().unwrap_or_else(|| "-".into()),
                    e.after.clone().unwrap_or_else(|| "-".into()),
                    e.hash.chars().take(16).collect(),
                ]);
            }
            t.row(row);
        }
        t.render()
    }
    fn quiet(&self) -> String {
        self.human(0)
    }
}

impl Render for VerifyDoc {
    fn human(&self, _: u8) -> String {
        let mut out = match (&self.broken, &self.head) {
            (Some(b), _) => format!("ledger broken at seq {}: {}\n", b.seq, b.why),
            (None, _) if !self.problems.is_empty() => "ledger not ok:\n".to_string(),
            (None, None) => "ledger ok: empty\n".to_string(),
            (None, Some(h)) => format!(
                "ledger ok: {} records, seq {}..{}, head {}\n",
                self.records,
                self.first_seq.unwrap_or(h.seq),
                h.seq,
                h.hash
            ),
        };
        for p in &self.problems {
            out.push_str(&format!("  {p}\n"));
        }
        out
    }
}

impl Render for HeadDoc {
    /// `SEQ:HASH`, what `log verify --expect-head` takes.
    fn human(&self, _: u8) -> String {
        match &self.head {
            Some(h) => format!("{}:{}\n", h.seq, h.hash),
            None => "0 (empty ledger)\n".into(),
        }
    }
    fn quiet(&self) -> String {
        self.human(0)
    }
}

impl Render for PruneDoc {
    fn human(&self, _: u8) -> String {
        if self.empty {
            "empty ledger: nothing to prune\n".into()
        } else if self.deleted {
            format!(
                "deleted {} records older than {} days through a checkpoint\n",
                self.records, self.retention_days
            )
        } else {
            format!(
                "would delete {} records older than {} days (before {})\n",
                self.records, self.retention_days, self.before
            )
        }
    }
    fn quiet(&self) -> String {
        if self.deleted {
            String::new()
        } else {
            self.human(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use portwarden_api::API_VERSION;
    use portwarden_api::log::Head;

    use super::*;
    use crate::output::printer::Mode;
    use crate::output::printer::tests::printed;

    #[test]
    fn head_and_verify_show_the_head_alike() {
        let h = Head {
            seq: 3,
            hash: "ab".repeat(32),
        };
        let head = HeadDoc {
            api: API_VERSION,
            head: Some(h.clone()),
        };
        let v = VerifyDoc {
            api: API_VERSION,
            ok: true,
            records: 3,
            first_seq: Some(1),
            head: Some(h),
            broken: None,
            problems: vec![],
            repaired: vec![],
        };
        let hj: serde_json::Value = serde_json::from_str(&printed(&head, Mode::Json)).unwrap();
        let vj: serde_json::Value = serde_json::from_str(&printed(&v, Mode::Json)).unwrap();
        assert_eq!(hj["head"], vj["head"]);
        assert_eq!(
            printed(&head, Mode::Human),
            format!("3:{}\n", "ab".repeat(32))
        );
        assert!(printed(&v, Mode::Human).starts_with("ledger ok: 3 records, seq 1..3"));
        assert_eq!(printed(&v, Mode::Quiet), "");
    }

    #[test]
    fn an_empty_window_is_not_an_empty_ledger() {
        let mut d = LedgerDoc {
            api: API_VERSION,
            since: Some(0),
            records: vec![],
        };
        assert_eq!(
            printed(&d, Mode::Human),
            "no records since 1970-01-01T00:00:00Z\n"
        );
        d.since = None;
        assert_eq!(printed(&d, Mode::Human), "the ledger is empty\n");
    }

    #[test]
    fn a_ledger_reason_cannot_drive_the_terminal() {
        let d = LedgerDoc {
            api: API_VERSION,
            since: None,
            records: vec![portwarden_api::log::Record {
                seq: 1,
                ts: 0,
                time: "1970-01-01T00:00:00Z".into(),
                actor: "root (uid 0)".into(),
                action: "lease.alloc".into(),
                subject: "20000/tcp".into(),
                before: None,
                after: None,
                reason: Some("\x1b]0;pwned\x07\nnext".into()),
                prev_hash: String::new(),
                hash: String::new(),
            }],
        };
        let t = printed(&d, Mode::Human);
        assert!(!t.contains('\x1b') && !t.contains('\x07'), "{t}");
        assert_eq!(t.lines().count(), 2, "{t}");
    }
}
