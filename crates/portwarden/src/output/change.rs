//! How the change documents read on a terminal.

use portwarden_api::change::{ChangeDoc, ChangesDoc};
use portwarden_core::change::short_hash;

use super::printer::Render;
use super::{Table, utc};

impl Render for ChangeDoc {
    fn human(&self, verbose: u8) -> String {
        let mut out = format!(
            "change {}: {} (version {}, by {}, {})\n  reason: {}\n",
            self.id,
            self.state,
            short_hash(&self.version),
            self.requester,
            utc(self.created),
            self.reason
        );
        if !self.vouched {
            out.push_str(
                "  ALTERED: this host's key does not vouch for the row; nothing is done with it\n",
            );
        }
        if let Some(t) = &self.ticket {
            out.push_str(&format!("  ticket: {t}\n"));
        }
        out.push_str(&format!(
            "  approvals: {} of {}{}{}\n",
            self.approvals.len(),
            self.needed,
            if self.approvals.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.approvals.join(", "))
            },
            if self.require_approval {
                "; required before it is applied"
            } else {
                ""
            }
        ));
        if let Some(by) = self.confirm_by {
            out.push_str(&format!(
                "  confirm before {} with `portwarden fw confirm`, or it rolls back\n",
                utc(by)
            ));
        }
        if let Some(p) = &self.preflight {
            out.push_str(&format!(
                "  pre-flight: nft check {}; exposure {:.1} -> {:.1}; ports open to anyone {} -> {}\n",
                p.nft_check,
                p.exposure_before,
                p.exposure_after,
                p.external_ports_before,
                p.external_ports_after
            ));
            for u in &p.unmanaged {
                out.push_str(&format!("  becomes unmanaged: {u}\n"));
            }
            for d in &p.down {
                out.push_str(&format!("  declared but not listening: {d}\n"));
            }
            out.push('\n');
            out.push_str(&p.diff.human(verbose));
        }
        out
    }
}

impl Render for ChangesDoc {
    fn human(&self, _: u8) -> String {
        if self.changes.is_empty() {
            return "no change requests\n".into();
        }
        let mut t = Table::new(&[
            "ID",
            "STATE",
            "VERSION",
            "BY",
            "APPROVALS",
            "CREATED",
            "REASON",
        ]);
        for c in &self.changes {
            t.row(vec![
                c.id.to_string(),
                c.state.clone(),
                short_hash(&c.version).into(),
                c.requester.clone(),
                format!("{}/{}", c.approvals.len(), c.needed),
                utc(c.created),
                c.reason.clone(),
            ]);
        }
        t.render()
    }
}
