//! How the lease documents read on a terminal.

use portwarden_api::lease::{
    AllocDoc, Lease, LeaseOpDoc, LeasesDoc, PoolsDoc, ReclaimDoc, ReserveDoc,
};

use super::printer::Render;
use super::{Table, ago, clean, utc};

/// The header of `alloc`'s rows (fixed widths: rows are printed as leases are granted).
pub fn alloc_header() -> String {
    format!(
        "{:<8} {:<6} {:<5} {:<16} {:<10} EXPIRES\n",
        "ID", "PORT", "PROTO", "SERVICE", "POOL"
    )
}

/// One granted lease.
pub fn alloc_row(l: &Lease) -> String {
    format!(
        "{:<8} {:<6} {:<5} {:<16} {:<10} {}\n",
        l.id,
        l.port,
        l.protocol,
        clean(&l.service, false),
        clean(l.pool.as_deref().unwrap_or("-"), false),
        utc(l.expires_at)
    )
}

impl Render for AllocDoc {
    /// The whole table (the command prints rows as they come instead).
    fn human(&self, _: u8) -> String {
        if self.leases.is_empty() {
            return String::new();
        }
        let mut s = alloc_header();
        for l in &self.leases {
            s.push_str(&alloc_row(l));
        }
        s
    }
    /// The ports alone, one per line, for `PORT=$(portwarden -q alloc svc)`.
    fn quiet(&self) -> String {
        self.leases
            .iter()
            .map(|l| format!("{}\n", l.port))
            .collect()
    }
}

impl Render for LeaseOpDoc {
    fn human(&self, _: u8) -> String {
        let l = &self.lease;
        if self.action == "renew" {
            format!(
                "lease {} ({}/{}) renewed until {}\n",
                l.id,
                l.port,
                l.protocol,
                utc(l.expires_at)
            )
        } else {
            format!("released lease {} ({}/{})\n", l.id, l.port, l.protocol)
        }
    }
}

impl Render for LeasesDoc {
    fn human(&self, verbose: u8) -> String {
        if self.leases.is_empty() {
            return "no leases\n".into();
        }
        let mut head = vec![
            "ID",
            "PORT",
            "PROTO",
            "SERVICE",
            "POOL",
            "OWNER",
            "STATE",
            "EXPIRES",
            "LAST-SEEN",
        ];
        if verbose > 0 {
            head.extend(["PROCESS", "CREATED", "MISSED"]);
        }
        let mut t = Table::new(&head);
        for l in &self.leases {
            let mut row = vec![
                l.id.to_string(),
                l.port.to_string(),
                l.protocol.clone(),
                l.service.clone(),
                l.pool.clone().unwrap_or_else(|| "-".into()),
                l.owner.clone(),
                l.state.clone(),
                ago(self.now - l.expires_at),
                l.last_seen_listening
                    .map_or("never".to_string(), |t| ago(self.now - t)),
            ];
            if verbose > 0 {
                row.extend([
                    l.process.clone().unwrap_or_else(|| "-".into()),
                    utc(l.created_at),
                    l.missed.to_string(),
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

impl Render for ReclaimDoc {
    fn human(&self, _: u8) -> String {
        if self.reclaimed.is_empty() {
            return "nothing to reclaim\n".into();
        }
        let mut s = String::new();
        for r in &self.reclaimed {
            s.push_str(&format!(
                "{}lease {} {}/{} ({}, {}): {} ({})\n",
                if self.dry_run { "would " } else { "" },
                r.lease.id,
                r.lease.port,
                r.lease.protocol,
                r.lease.service,
                r.lease.owner,
                r.action,
                r.reason
            ));
        }
        s
    }
}

impl Render for PoolsDoc {
    fn human(&self, _: u8) -> String {
        if self.pools.is_empty() {
            return "the policy declares no pools\n".into();
        }
        let mut t = Table::new(&[
            "POOL",
            "RANGE",
            "PROTO",
            "SIZE",
            "LEASED",
            "FREE",
            "USED",
            "EPHEMERAL-OVERLAP",
        ]);
        for u in &self.pools {
            t.row(vec![
                u.name.clone(),
                u.range.clone(),
                u.protocol.clone(),
                u.size.to_string(),
                u.leased.to_string(),
                u.free.to_string(),
                format!("{:.1}%", u.utilisation * 100.0),
                u.ephemeral_overlap.to_string(),
            ]);
        }
        t.render()
    }
    fn quiet(&self) -> String {
        self.human(0)
    }
}

impl Render for ReserveDoc {
    fn human(&self, _: u8) -> String {
        if self.unchanged {
            "ip_local_reserved_ports already covers every pool\n".into()
        } else {
            format!("{} = {}\n", self.sysctl, self.value)
        }
    }
    /// What was not written is the answer; a write is silent.
    fn quiet(&self) -> String {
        if self.written {
            String::new()
        } else {
            self.human(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use portwarden_api::API_VERSION;
    use portwarden_api::lease::Reclaimed;

    use super::*;
    use crate::output::printer::Mode;
    use crate::output::printer::tests::printed;

    fn lease(id: i64, port: u16) -> Lease {
        Lease {
            id,
            scope: "local".into(),
            protocol: "tcp".into(),
            port,
            service: "bulk\x1b[31m".into(),
            pool: Some("transfer".into()),
            owner: "alice".into(),
            process: None,
            state: "planned".into(),
            created_at: 0,
            expires_at: 3600,
            last_seen_listening: None,
            missed: 0,
            ttl_max: Some(3600),
        }
    }

    #[test]
    fn alloc_prints_rows_with_the_id_and_quiet_prints_ports() {
        let d = AllocDoc {
            api: API_VERSION,
            leases: vec![lease(1, 50000), lease(2, 50001)],
            refused: None,
        };
        let t = printed(&d, Mode::Human);
        assert!(t.starts_with("ID "), "{t}");
        assert!(t.contains("1        50000  tcp   bulk\\x1b[31m"), "{t}");
        assert_eq!(printed(&d, Mode::Quiet), "50000\n50001\n");
        let j: serde_json::Value = serde_json::from_str(&printed(&d, Mode::Json)).unwrap();
        assert_eq!(j["leases"][1]["port"], 50001);
        assert_eq!(j["refused"], serde_json::Value::Null);
    }

    #[test]
    fn leases_table_counts_from_the_documents_now() {
        let d = LeasesDoc {
            api: API_VERSION,
            now: 1800,
            leases: vec![lease(1, 50000)],
        };
        let t = printed(&d, Mode::Human);
        assert!(t.contains("in 30m"), "{t}");
        assert!(t.contains("never"), "{t}");
        assert!(!t.contains("PROCESS"));
        let p = Printer::new(Mode::Human, 1, Vec::new());
        p.doc(&d).unwrap();
        assert!(
            String::from_utf8(p.into_inner())
                .unwrap()
                .contains("PROCESS")
        );
        let empty = LeasesDoc {
            leases: vec![],
            ..d
        };
        assert_eq!(printed(&empty, Mode::Human), "no leases\n");
    }

    #[test]
    fn reclaim_says_what_it_would_do() {
        let d = ReclaimDoc {
            api: API_VERSION,
            dry_run: true,
            reclaimed: vec![Reclaimed {
                lease: lease(4, 50003),
                action: "retire".into(),
                reason: "idle".into(),
            }],
        };
        assert_eq!(
            printed(&d, Mode::Human),
            "would lease 4 50003/tcp (bulk\\x1b[31m, alice): retire (idle)\n"
        );
    }

    use crate::output::Printer;
}
