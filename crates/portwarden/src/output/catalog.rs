//! How the catalog documents read on a terminal.

use portwarden_api::catalog::{CatalogDoc, EntryDoc};
use portwarden_core::catalog::CatalogEntry;

use super::Table;
use super::printer::Render;

fn catalog_list(entries: &[CatalogEntry]) -> String {
    let mut t = Table::new(&["NAME", "PORTS", "TLS", "SENSITIVITY", "RISK", "TITLE"]);
    for e in entries {
        t.row(vec![
            e.name.clone(),
            ports(e),
            e.tls.to_string(),
            e.sensitivity.to_string(),
            if e.high_risk { "high" } else { "-" }.to_string(),
            e.title.clone(),
        ]);
    }
    t.render()
}

fn ports(e: &CatalogEntry) -> String {
    e.ports
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// One catalog entry in full.
fn catalog_entry(e: &CatalogEntry) -> String {
    let mut s = format!("{} — {}\n", e.name, e.title);
    if !e.aliases.is_empty() {
        s.push_str(&format!("  aliases:     {}\n", e.aliases.join(", ")));
    }
    s.push_str(&format!("  ports:       {}\n", ports(e)));
    s.push_str(&format!("  tls:         {}\n", e.tls));
    s.push_str(&format!("  sensitivity: {}\n", e.sensitivity));
    s.push_str(&format!(
        "  risk:        {}\n",
        if e.high_risk {
            "high — flagged when exposed"
        } else {
            "normal"
        }
    ));
    s.push_str(&format!("  note:        {}\n", e.note));
    s
}

impl Render for CatalogDoc {
    fn human(&self, _: u8) -> String {
        catalog_list(&self.entries)
    }
    fn quiet(&self) -> String {
        self.human(0)
    }
}

impl Render for EntryDoc {
    fn human(&self, _: u8) -> String {
        catalog_entry(&self.entry)
    }
    fn quiet(&self) -> String {
        self.human(0)
    }
}
