//! How the scan document reads: the table, nmap's grepable (`-oG`) and XML (`-oX`).

use portwarden_api::scan::ScanDoc;

use super::printer::Render;
use super::{Table, clean, utc};

/// Open (and filtered) ports as a table, then a summary line and any diff.
fn scan_table(d: &ScanDoc) -> String {
    let mut s = String::new();
    let multi = d.hosts.len() > 1;
    let mut t = Table::new(&["HOST", "PORT", "STATE", "SERVICE", "TLS", "DETAIL"]);
    for p in &d.ports {
        t.row(vec![
            p.addr.to_string(),
            format!("{}/{}", p.port, p.protocol),
            p.state.clone(),
            match (&p.service, p.method.as_str()) {
                (Some(n), "table") => format!("{n}?"),
                (Some(n), _) => n.clone(),
                (None, _) => "-".into(),
            },
            p.tls.clone().unwrap_or_else(|| "-".into()),
            [
                p.version_line(),
                p.cert_subject
                    .as_ref()
                    .zip(p.cert_expires.as_ref())
                    .map(|(s, e)| match p.cert_names.as_slice() {
                        [] => format!("cert {s}, expires {e}"),
                        n => format!("cert {s} ({}), expires {e}", n.join(" ")),
                    }),
            ]
            .into_iter()
            .flatten()
            .reduce(|a, b| format!("{a}; {b}"))
            .or_else(|| p.banner.clone())
            .unwrap_or_default(),
        ]);
    }
    if !d.ports.is_empty() {
        let rendered = t.render();
        if multi {
            s.push_str(&rendered);
        } else {
            // One host: drop the HOST column.
            for line in rendered.lines() {
                let cut = line.find("  ").map_or(line, |i| line[i..].trim_start());
                s.push_str(cut);
                s.push('\n');
            }
        }
    }
    let open = d.ports.iter().filter(|p| p.state == "open").count();
    s.push_str(&format!(
        "{} {} {} ports on {} host{} in {:.2} s: {open} open, {} closed, {} filtered{}\n",
        if d.interrupted {
            "interrupted: settled part of"
        } else {
            "scanned"
        },
        d.ports_scanned,
        d.protocol,
        d.hosts.len(),
        if d.hosts.len() == 1 { "" } else { "s" },
        d.elapsed_ms as f64 / 1000.0,
        d.closed,
        d.ports.len() - open,
        if d.self_connects > 0 {
            format!(" ({} self-connects discarded)", d.self_connects)
        } else {
            String::new()
        }
    ));
    if !d.hosts_down.is_empty() {
        s.push_str(&format!(
            "{} host{} down (no answer to an ICMP echo or a SYN to 80/443; -Pn scans them anyway)\n",
            d.hosts_down.len(),
            if d.hosts_down.len() == 1 { "" } else { "s" }
        ));
    }
    if let Some(diff) = &d.diff {
        for p in &diff.added {
            s.push_str(&format!(
                "+ {} {}/{} {}\n",
                p.addr,
                p.port,
                p.protocol,
                p.service.clone().unwrap_or_default()
            ));
        }
        for p in &diff.removed {
            s.push_str(&format!(
                "- {} {}/{} {}\n",
                p.addr,
                p.port,
                p.protocol,
                p.service.clone().unwrap_or_default()
            ));
        }
        if diff.added.is_empty() && diff.removed.is_empty() {
            s.push_str("no change in open ports since the previous scan\n");
        }
    }
    s
}

/// nmap's greppable output (`-oG`).
pub fn scan_grepable(d: &portwarden_api::scan::ScanDoc) -> String {
    let mut s = format!(
        "# portwarden {} scan initiated {} as: portwarden {}\n",
        env!("CARGO_PKG_VERSION"),
        utc(d.started),
        d.args
    );
    for h in &d.hosts {
        s.push_str(&format!("Host: {h} ()\tStatus: Up\n"));
        let ports: Vec<String> = d
            .ports
            .iter()
            .filter(|p| p.addr == *h)
            .map(|p| {
                format!(
                    "{}/{}/{}//{}//{}/",
                    p.port,
                    p.state,
                    p.protocol,
                    // nmap's escape: `/` in a field is `|`, and `,` separates ports.
                    p.service
                        .clone()
                        .unwrap_or_default()
                        .replace('/', "|")
                        .replace(',', " "),
                    p.version_line()
                        .or_else(|| p.banner.clone())
                        .unwrap_or_default()
                        .replace(['/', ','], " ")
                )
            })
            .collect();
        let closed =
            d.ports_scanned as u64 - d.ports.iter().filter(|p| p.addr == *h).count() as u64;
        s.push_str(&format!(
            "Host: {h} ()\tPorts: {}\tIgnored State: closed ({closed})\n",
            ports.join(", ")
        ));
    }
    s.push_str(&format!(
        "# portwarden done at {} -- {} IP address{} ({} host{} up) scanned in {:.2} seconds\n",
        utc(d.started + (d.elapsed_ms / 1000) as i64),
        d.hosts.len(),
        if d.hosts.len() == 1 { "" } else { "es" },
        d.hosts.len(),
        if d.hosts.len() == 1 { "" } else { "s" },
        d.elapsed_ms as f64 / 1000.0
    ));
    s
}

/// Text for an XML attribute or element: markup escaped, and every character XML 1.0
/// forbids (or a terminal should not get raw) shown as `\xNN` / `\u{NNNN}`.
fn xml_esc(s: &str) -> String {
    clean(s, false)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// nmap's XML output (`-oX`), the subset tools read: hosts, ports, states, services.
pub fn scan_xml(d: &portwarden_api::scan::ScanDoc) -> String {
    let kind = if d.protocol == "udp" {
        "udp"
    } else {
        "connect"
    };
    let mut s = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<nmaprun scanner=\"portwarden\" args=\"portwarden {}\" start=\"{}\" version=\"{}\" xmloutputversion=\"1.05\">\n<scaninfo type=\"{kind}\" protocol=\"{}\" numservices=\"{}\"/>\n",
        xml_esc(&d.args),
        d.started,
        env!("CARGO_PKG_VERSION"),
        d.protocol,
        d.ports_scanned
    );
    for h in &d.hosts {
        let fam = if h.is_ipv4() { "ipv4" } else { "ipv6" };
        s.push_str(&format!(
            "<host><status state=\"up\" reason=\"user-set\"/>\n<address addr=\"{h}\" addrtype=\"{fam}\"/>\n<ports>"
        ));
        let mine: Vec<&portwarden_api::scan::ScannedPort> =
            d.ports.iter().filter(|p| p.addr == *h).collect();
        let closed = d.ports_scanned - mine.len();
        if closed > 0 {
            s.push_str(&format!(
                "<extraports state=\"closed\" count=\"{closed}\"/>\n"
            ));
        }
        for p in mine {
            s.push_str(&format!(
                "<port protocol=\"{}\" portid=\"{}\"><state state=\"{}\" reason=\"{}\"/>",
                p.protocol,
                p.port,
                p.state,
                if p.state == "open" {
                    "syn-ack"
                } else {
                    "no-response"
                }
            ));
            if let Some(name) = &p.service {
                // nmap's names: TLS is a tunnel, the service inside it is the name
                // (`https` is `http` in a tunnel, `imap (tls)` is `imap`).
                let tls = p.tls.as_deref() == Some("required");
                let tunnel = if tls { " tunnel=\"ssl\"" } else { "" };
                let name = match name.as_str() {
                    "https" if tls => "http",
                    n if tls => n.strip_suffix(" (tls)").unwrap_or(n),
                    n => n,
                };
                // nmap's attributes: product, version, extrainfo (the banner where
                // nothing better is known).
                let attr = |k: &str, v: Option<&str>| {
                    v.map_or(String::new(), |v| format!(" {k}=\"{}\"", xml_esc(v)))
                };
                let cpe: String = p
                    .cpe
                    .iter()
                    .map(|c| format!("<cpe>{}</cpe>", xml_esc(c)))
                    .collect();
                s.push_str(&format!(
                    "<service name=\"{}\"{}{}{}{}{}{}{tunnel} method=\"{}\" conf=\"{}\"{}",
                    xml_esc(name),
                    attr("product", p.product.as_deref()),
                    attr("version", p.version.as_deref()),
                    attr(
                        "extrainfo",
                        p.extrainfo
                            .as_deref()
                            .or(p.banner.as_deref().filter(|_| p.product.is_none()))
                    ),
                    attr("hostname", p.hostname.as_deref()),
                    attr("ostype", p.ostype.as_deref()),
                    attr("devicetype", p.devicetype.as_deref()),
                    p.method,
                    if p.method == "probed" { 10 } else { 3 },
                    if cpe.is_empty() {
                        "/>".to_string()
                    } else {
                        format!(">{cpe}</service>")
                    },
                ));
            }
            s.push_str("</port>\n");
        }
        s.push_str("</ports></host>\n");
    }
    s.push_str(&format!(
        "<runstats><finished time=\"{}\" elapsed=\"{:.2}\"/><hosts up=\"{}\" down=\"0\" total=\"{}\"/></runstats>\n</nmaprun>\n",
        d.started + (d.elapsed_ms / 1000) as i64,
        d.elapsed_ms as f64 / 1000.0,
        d.hosts.len(),
        d.hosts.len()
    ));
    s
}

impl Render for ScanDoc {
    fn human(&self, _: u8) -> String {
        scan_table(self)
    }
}
