//! Drafts a policy from what listens on the host: one `[[service]]` per listening port
//! reachable from the network, named after its catalog entry, with its owner as the
//! expected process. The operator reviews and narrows it; it validates as written.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::catalog::Catalog;
use crate::facts::Socket;
use crate::port::{Port, Protocol};

fn private(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => v.is_private() || v.is_link_local(),
        IpAddr::V6(v) => {
            (v.segments()[0] & 0xfe00) == 0xfc00 || (v.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// The draft's text. `host` names the machine; `management` are the SSH-like ports kept
/// out of the services (they belong to `[host] management`).
pub fn draft(host: &str, listeners: &[Socket], catalog: &Catalog) -> String {
    // (protocol, port) → (bound addresses, owners)
    let mut ports: BTreeMap<(u16, Protocol), (Vec<IpAddr>, Vec<String>)> = BTreeMap::new();
    for s in listeners
        .iter()
        .filter(|s| s.state.is_listening() && s.local_port != 0 && !s.is_loopback_only())
    {
        let e = ports.entry((s.local_port, s.protocol)).or_default();
        if !e.0.contains(&s.local_addr) {
            e.0.push(s.local_addr);
        }
        for o in s.owners.iter().flatten() {
            if !e.1.contains(&o.comm) {
                e.1.push(o.comm.clone());
            }
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# portwarden policy drafted from the listeners of {host}."
    );
    let _ = writeln!(
        out,
        "# Review every service: narrow allow_from, set tls and sensitivity, remove what should not run."
    );
    let _ = writeln!(out, "version = 1\n");
    let _ = writeln!(out, "[host]\nname = \"{host}\"");
    let _ = writeln!(
        out,
        "# Narrow `from` to the networks operators connect from."
    );
    let _ = writeln!(
        out,
        "management = {{ ports = [\"22/tcp\"], from = [\"0.0.0.0/0\", \"::/0\"] }}\n"
    );
    let any_private = ports
        .values()
        .any(|(addrs, _)| addrs.iter().all(|a| private(*a)));
    if any_private {
        let _ = writeln!(
            out,
            "[zones]\n# Add the interfaces of the site's own networks.\ninternal = {{ cidrs = [\"10.0.0.0/8\", \"172.16.0.0/12\", \"192.168.0.0/16\", \"fc00::/7\"] }}\n"
        );
    }
    let mut used: BTreeMap<String, u32> = BTreeMap::new();
    for ((port, proto), (addrs, owners)) in &ports {
        if *port == 22 && *proto == Protocol::Tcp {
            continue; // the management path
        }
        let entry = Port::new(*port).and_then(|p| catalog.by_port(p, *proto));
        let base = entry.map_or(format!("port-{port}"), |e| e.name.clone());
        let n = used.entry(base.clone()).or_insert(0);
        *n += 1;
        let name = if *n == 1 { base } else { format!("{base}-{n}") };
        let zone = if addrs.iter().all(|a| private(*a)) {
            "internal"
        } else {
            "external"
        };
        let _ = writeln!(out, "[[service]]");
        let _ = writeln!(out, "name = \"{name}\"");
        if let Some(e) = entry {
            let _ = writeln!(out, "catalog = \"{}\"                # {}", e.name, e.title);
        }
        let _ = writeln!(out, "port = {port}");
        let _ = writeln!(out, "protocol = \"{proto}\"");
        let _ = writeln!(out, "zone = \"{zone}\"");
        let shown: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(out, "# bound to {}", shown.join(", "));
        if zone == "external" {
            let _ = writeln!(
                out,
                "allow_from = [\"0.0.0.0/0\", \"::/0\"]   # narrow this"
            );
        }
        if let Some(first) = owners.first() {
            let _ = writeln!(out, "process = \"{first}\"");
        }
        if entry.is_some_and(|e| e.high_risk) {
            let _ = writeln!(
                out,
                "# high risk: {}",
                entry.map_or("", |e| e.note.as_str())
            );
        }
        let _ = writeln!(out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use crate::testkit::*;

    #[test]
    fn a_draft_validates_and_covers_every_network_listener() {
        let f = facts(healthy());
        let sockets: Vec<Socket> = f.listeners.iter().map(|l| l.socket.clone()).collect();
        let text = draft("mirror-01", &sockets, Catalog::builtin());
        let p = Policy::parse("draft.toml", &text, Catalog::builtin())
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let names: Vec<&str> = p.services.iter().map(|s| s.name.as_str()).collect();
        // sshd on 22 is the management path; redis on loopback needs no service.
        assert_eq!(names, ["dns", "rsync", "mysql"], "{text}");
        let mysql = p.service("mysql").unwrap();
        assert_eq!(mysql.zone, crate::policy::ZoneKind::Internal);
        assert_eq!(mysql.process.as_deref(), Some("mariadbd"));
        assert_eq!(
            p.service("rsync").unwrap().zone,
            crate::policy::ZoneKind::External
        );
    }
}
