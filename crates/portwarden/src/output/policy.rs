//! How the `policy` documents read on a terminal (the diagnostics of an invalid file are
//! on stderr, with their source lines).

use portwarden_api::policy::{PolicyCheckDoc, PolicyDiffDoc, PolicyHistoryDoc, PolicyVersionDoc};
use portwarden_core::change::short_hash;

use super::Table;
use super::printer::Render;

impl Render for PolicyCheckDoc {
    fn human(&self, _: u8) -> String {
        self.files
            .iter()
            .filter(|f| f.valid)
            .map(|f| {
                format!(
                    "{}: ok (services: {}, pools: {}, balance groups: {})\n",
                    f.file,
                    f.services.unwrap_or(0),
                    f.pools.unwrap_or(0),
                    f.balance_groups.unwrap_or(0)
                )
            })
            .collect()
    }
}

impl Render for PolicyHistoryDoc {
    fn human(&self, verbose: u8) -> String {
        if self.adoptions.is_empty() {
            return "no policy version kept yet: `fw apply` and `serve` keep the policy they run\n"
                .into();
        }
        let mut t = Table::new(&["", "VERSION", "TIME", "BY", "HOW", "FIREWALL", "SOURCE"]);
        for a in &self.adoptions {
            let fw = match (a.txn, &a.txn_state) {
                (Some(id), Some(st)) => format!("txn {id} {st}"),
                (Some(id), None) => format!("txn {id}"),
                _ => "-".into(),
            };
            let mut source = a.source.clone();
            if let Some(r) = &a.reason {
                source = format!("{source}: {r}");
            }
            t.row(vec![
                if a.in_force { "*" } else { "" }.into(),
                if verbose > 0 {
                    a.version.clone()
                } else {
                    short_hash(&a.version).into()
                },
                a.time.clone(),
                a.actor.clone(),
                a.how.clone(),
                fw,
                source,
            ]);
        }
        t.render() + "* the version in force\n"
    }
}

impl Render for PolicyVersionDoc {
    fn human(&self, _: u8) -> String {
        self.text.clone()
    }
    fn quiet(&self) -> String {
        self.text.clone()
    }
}

impl Render for PolicyDiffDoc {
    fn human(&self, _: u8) -> String {
        if self.lines.is_empty() {
            return format!(
                "{} and {} are the same policy (version {})\n",
                self.from,
                self.to,
                short_hash(&self.to_version)
            );
        }
        // A file side says its version; a version side is one already.
        let side = |label: &str, version: &str| {
            let v = short_hash(version);
            if label.contains(v) {
                label.to_string()
            } else {
                format!("{label} (version {v})")
            }
        };
        let mut out = format!(
            "--- {}\n+++ {}\n",
            side(&self.from, &self.from_version),
            side(&self.to, &self.to_version)
        );
        for l in &self.lines {
            out.push_str(l);
            out.push('\n');
        }
        out.push_str("\nwhat changes:\n");
        if self.changes.is_empty() {
            out.push_str("  nothing but comments and layout\n");
        }
        for c in &self.changes {
            let what = match (&c.from, &c.to) {
                (Some(f), Some(t)) => format!(": {f} -> {t}"),
                (None, Some(t)) => format!(": {t}"),
                (Some(f), None) => format!(": was {f}"),
                (None, None) => String::new(),
            };
            out.push_str(&format!("  {:8} {}{what}\n", c.op.as_str(), c.path));
        }
        out.push_str("\nfirewall rules:\n");
        if self.rules.is_empty() {
            out.push_str("  the same ruleset\n");
        }
        for l in &self.rules {
            out.push_str("  ");
            out.push_str(l);
            out.push('\n');
        }
        out
    }
}
