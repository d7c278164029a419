//! How the firewall documents read on a terminal.

use portwarden_api::fw::{ApplyDoc, DiffDoc, GrantDoc, PlanDoc, RevokeDoc, StatusDoc, TxnDoc};

use super::printer::Render;
use super::utc;
use portwarden_core::change::short_hash;

impl Render for PlanDoc {
    fn human(&self, _: u8) -> String {
        self.ruleset.clone()
    }
    fn quiet(&self) -> String {
        self.ruleset.clone()
    }
}

impl Render for DiffDoc {
    fn human(&self, _: u8) -> String {
        let mut out = match (self.since_transaction, self.since_at) {
            (Some(id), Some(at)) => format!("since transaction {id} ({}):\n", utc(at)),
            (Some(id), None) => format!("since transaction {id}:\n"),
            _ => "nothing applied yet; `fw apply` would load:\n".to_string(),
        };
        if self.changes.is_empty() {
            out.push_str("  the policy renders the same ruleset\n");
        }
        for l in &self.changes {
            out.push_str(l);
            out.push('\n');
        }
        match &self.live_changed {
            _ if !self.live_table => out.push_str("the live table is absent\n"),
            Some(lines) => {
                out.push_str("the live table changed since it was applied (someone edited it):\n");
                for l in lines {
                    out.push_str(l);
                    out.push('\n');
                }
            }
            None => out.push_str("the live table is as applied\n"),
        }
        out
    }
    fn quiet(&self) -> String {
        self.human(0)
    }
}

impl Render for ApplyDoc {
    fn human(&self, _: u8) -> String {
        match self.deadline {
            Some(d) => format!(
                "applied firewall transaction {} ({}, policy version {}); confirm before {} with `portwarden fw confirm` from a new connection, or it rolls back\n",
                self.txn,
                self.target,
                short_hash(&self.version),
                utc(d)
            ),
            None => format!(
                "applied firewall transaction {} ({}, policy version {})\n",
                self.txn,
                self.target,
                short_hash(&self.version)
            ),
        }
    }
}

impl Render for TxnDoc {
    fn human(&self, _: u8) -> String {
        match (self.done, self.txn, self.action.as_str()) {
            (true, Some(id), "confirm") => format!("confirmed firewall transaction {id}\n"),
            (true, Some(id), _) => {
                format!("rolled back firewall transaction {id}: {}\n", self.detail)
            }
            _ => format!("{}\n", self.detail),
        }
    }
}

impl Render for StatusDoc {
    fn human(&self, _: u8) -> String {
        let mut s = format!(
            "{}: {}\n",
            self.target,
            if self.table { "present" } else { "absent" }
        );
        if let Some(w) = &self.warning {
            s.push_str(&format!("warning: {w}\n"));
        }
        if let Some(t) = &self.last {
            s.push_str(&format!(
                "last transaction {}: {}, applied at {}{}\n",
                t.id,
                t.state,
                utc(t.created),
                t.deadline
                    .filter(|_| t.state == "pending")
                    .map_or(String::new(), |d| format!(", rolls back at {}", utc(d)))
            ));
        }
        s
    }
    fn quiet(&self) -> String {
        self.human(0)
    }
}

fn sources(n: usize) -> &'static str {
    if n == 1 { "source" } else { "sources" }
}

impl Render for GrantDoc {
    fn human(&self, verbose: u8) -> String {
        let mut s = format!(
            "granted {} {}\n",
            self.granted.len(),
            sources(self.granted.len())
        );
        if verbose > 0 {
            for g in &self.granted {
                let until = g.expires_at.map(utc).unwrap_or_default();
                s.push_str(&format!(
                    "  {}/{} from {} until {until}\n",
                    g.port, g.protocol, g.addr
                ));
            }
        }
        s
    }
}

impl Render for RevokeDoc {
    fn human(&self, verbose: u8) -> String {
        let mut s = format!("revoked {}\n", self.revoked.len());
        if verbose > 0 {
            for g in &self.revoked {
                s.push_str(&format!("  {}/{} from {}\n", g.port, g.protocol, g.addr));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use portwarden_api::API_VERSION;
    use portwarden_api::fw::FwTxnView;

    use super::*;
    use crate::output::printer::Mode;
    use crate::output::printer::tests::printed;

    fn status(state: &str, deadline: Option<i64>) -> StatusDoc {
        StatusDoc {
            api: API_VERSION,
            backend: "nftables".into(),
            target: "table inet portwarden".into(),
            table: true,
            last: Some(FwTxnView {
                id: 7,
                created: 0,
                deadline,
                state: state.into(),
                actor: "root (uid 0)".into(),
                ruleset: String::new(),
                watcher_pid: None,
            }),
            warning: None,
        }
    }

    #[test]
    fn status_reads_in_the_words_of_its_json() {
        let d = status("pending", Some(60));
        let t = printed(&d, Mode::Human);
        assert_eq!(
            t,
            "table inet portwarden: present\nlast transaction 7: pending, applied at 1970-01-01T00:00:00Z, rolls back at 1970-01-01T00:01:00Z\n"
        );
        let j: serde_json::Value = serde_json::from_str(&printed(&d, Mode::Json)).unwrap();
        assert_eq!(j["last"]["state"], "pending");
        assert!(t.contains(j["last"]["state"].as_str().unwrap()));
        // A confirmed transaction's deadline is not a rollback time.
        let t = printed(&status("confirmed", Some(60)), Mode::Human);
        assert!(!t.contains("rolls back"), "{t}");
        assert_eq!(printed(&d, Mode::Quiet), printed(&d, Mode::Human));
    }

    #[test]
    fn diff_says_what_changed_and_whether_the_live_table_drifted() {
        let d = DiffDoc {
            api: API_VERSION,
            since_transaction: Some(3),
            since_at: Some(0),
            changes: vec!["- a".into(), "+ b".into()],
            live_table: true,
            live_changed: Some(vec!["+ c".into()]),
        };
        assert_eq!(
            printed(&d, Mode::Human),
            "since transaction 3 (1970-01-01T00:00:00Z):\n- a\n+ b\nthe live table changed since it was applied (someone edited it):\n+ c\n"
        );
        let none = DiffDoc {
            since_transaction: None,
            since_at: None,
            changes: vec![],
            live_table: false,
            live_changed: None,
            ..d
        };
        assert_eq!(
            printed(&none, Mode::Human),
            "nothing applied yet; `fw apply` would load:\n  the policy renders the same ruleset\nthe live table is absent\n"
        );
    }

    #[test]
    fn apply_and_grant_are_silent_with_quiet_and_json_is_the_document() {
        let a = ApplyDoc {
            api: API_VERSION,
            txn: 2,
            deadline: None,
            watcher_pid: None,
            backend: "nftables".into(),
            target: "table inet portwarden".into(),
            version: "0123456789abcdef".into(),
        };
        assert_eq!(
            printed(&a, Mode::Human),
            "applied firewall transaction 2 (table inet portwarden, policy version 0123456789ab)\n"
        );
        assert_eq!(printed(&a, Mode::Quiet), "");
        let j: serde_json::Value = serde_json::from_str(&printed(&a, Mode::Json)).unwrap();
        assert_eq!(j["txn"], 2);
        assert_eq!(j["api"], API_VERSION);
        let g = GrantDoc {
            api: API_VERSION,
            granted: vec![],
        };
        assert_eq!(printed(&g, Mode::Human), "granted 0 sources\n");
        assert_eq!(printed(&g, Mode::Quiet), "");
    }
}
