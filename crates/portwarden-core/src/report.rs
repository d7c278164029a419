//! The compliance report: host summary, exposure score, the audit table (port, protocol,
//! service, zone, allowed sources, TLS verdict, owner, security policy, last updated) and
//! the findings, rendered as Markdown, CSV, JSON or one self-contained HTML page. Pure:
//! the caller passes the facts, the ledger's last change per port, and `now`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::catalog::Catalog;
use crate::findings::{Finding, Severity};
use crate::hostcheck::{
    HostFacts, TlsFact, Visibility, catalog_for, exposure, service_for, visibility,
};
use crate::policy::{Placement, Policy, Service};
use crate::port::Protocol;

/// One audit-table row.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct AuditRow {
    /// Port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Declared service name, else `unmanaged (catalog guess)`.
    pub service: String,
    /// Declared zone, else the observed visibility.
    pub zone: String,
    /// Allowed sources.
    pub allowed_sources: String,
    /// What the probe found.
    pub tls: String,
    /// Owning processes (`comm (exe)`).
    pub owner: String,
    /// The policy that applies: tls, limits, sensitivity, expected process.
    pub security_policy: String,
    /// Whether something listens.
    pub listening: bool,
    /// Exposure score.
    pub exposure: f64,
    /// Last recorded change (ledger), else when first seen.
    pub last_updated: String,
}

/// The audit table's columns, in the order every format prints them.
pub const COLUMNS: [&str; 11] = [
    "port",
    "protocol",
    "service",
    "zone",
    "allowed_sources",
    "tls",
    "owner",
    "security_policy",
    "listening",
    "exposure",
    "last_updated",
];

impl AuditRow {
    /// The row's cells, in `COLUMNS` order.
    pub fn cells(&self) -> [String; 11] {
        [
            self.port.to_string(),
            self.protocol.to_string(),
            self.service.clone(),
            self.zone.clone(),
            self.allowed_sources.clone(),
            self.tls.clone(),
            self.owner.clone(),
            self.security_policy.clone(),
            self.listening.to_string(),
            self.exposure.to_string(),
            self.last_updated.clone(),
        ]
    }
}

/// A column name as a table heading: `allowed_sources` → `Allowed sources`.
fn heading(c: &str) -> String {
    if c == "tls" {
        return "TLS".into();
    }
    let t = c.replace('_', " ");
    let mut ch = t.chars();
    ch.next().map_or(String::new(), |f| {
        f.to_uppercase().collect::<String>() + ch.as_str()
    })
}

fn numeric(c: &str) -> bool {
    matches!(c, "port" | "exposure")
}

fn severity_counts(r: &Report) -> String {
    Severity::ALL
        .iter()
        .rev()
        .map(|sev| format!("{} {}", r.summary.get(sev).copied().unwrap_or(0), sev))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Report {
    /// Host name.
    pub host: String,
    /// Policy name.
    pub policy: String,
    /// When it was generated (UTC, RFC 3339).
    pub generated: String,
    /// Host exposure score.
    pub exposure_total: f64,
    /// Findings per severity.
    pub summary: BTreeMap<Severity, usize>,
    /// The audit table.
    pub ports: Vec<AuditRow>,
    /// The findings.
    pub findings: Vec<Finding>,
}

pub use crate::time::utc;

fn policy_text(s: &Service) -> String {
    let mut parts = vec![
        format!("tls={}", s.tls.as_str()),
        format!("sensitivity={}", s.sensitivity),
    ];
    if let Some(m) = s.max_conn_per_source {
        parts.push(format!("max_conn_per_source={m}"));
    }
    if let Some(p) = &s.process {
        parts.push(format!("process={p}"));
    }
    if let Placement::Pool(p) = &s.placement {
        parts.push(format!("pool={p}"));
    }
    parts.join(", ")
}

fn sources(policy: &Policy, s: &Service) -> String {
    match &s.allow_from {
        Some(set) => set
            .cidrs()
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(" "),
        None => match policy.zones.get(&s.zone) {
            Some(z) if !z.cidrs.is_empty() => z
                .cidrs
                .cidrs()
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            _ => format!("zone {}", s.zone),
        },
    }
}

fn tls_text(t: Option<TlsFact>) -> &'static str {
    match t {
        Some(TlsFact::Required) => "TLS required",
        Some(TlsFact::Native) => "encrypted (native)",
        Some(TlsFact::Offered) => "TLS offered, not proven required",
        Some(TlsFact::None) => "plaintext",
        Some(TlsFact::Unknown) => "unknown",
        None => "not probed",
    }
}

/// What a report is made from.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The policy.
    pub policy: &'a Policy,
    /// Its name (file path or "the built-in baseline policy").
    pub policy_name: &'a str,
    /// Host name.
    pub host: &'a str,
    /// The catalog.
    pub catalog: &'a Catalog,
    /// Host facts.
    pub facts: &'a HostFacts,
    /// Findings, sorted.
    pub findings: &'a [Finding],
    /// `PORT/PROTO` → the last ledger timestamp that touched it.
    pub last_change: &'a BTreeMap<String, i64>,
    /// Now, unix seconds.
    pub now: i64,
}

/// Assembles the report.
pub fn build(i: &Input<'_>) -> Report {
    let (policy, catalog, facts, findings, last_change, now) = (
        i.policy,
        i.catalog,
        i.facts,
        i.findings,
        i.last_change,
        i.now,
    );
    let (exp, total) = exposure(policy, catalog, facts);
    let mut rows = Vec::new();
    let mut seen = BTreeSet::new();
    for l in &facts.listeners {
        let s = &l.socket;
        if !seen.insert((s.protocol, s.local_port)) {
            continue;
        }
        let svc = service_for(policy, s.protocol, s.local_port);
        let entry = catalog_for(catalog, policy, l);
        let vis = visibility(policy, &facts.interfaces, l);
        let owners: BTreeSet<String> = facts
            .listeners
            .iter()
            .filter(|o| o.socket.protocol == s.protocol && o.socket.local_port == s.local_port)
            .flat_map(|o| o.socket.owners.iter().flatten())
            .map(|o| match &o.exe {
                Some(e) => format!("{} ({e})", o.comm),
                None => o.comm.clone(),
            })
            .collect();
        let key = format!("{}/{}", s.local_port, s.protocol);
        // The management path is managed, by `[host] management`, not by a service.
        let mgmt = svc.is_none()
            && policy.host.management.ports.iter().any(|m| {
                m.protocol == s.protocol && m.range.iter().any(|p| p.get() == s.local_port)
            });
        let leased = facts.leased.contains(&(s.protocol, s.local_port));
        let guess = entry.map_or(String::new(), |e| format!(" ({})", e.name));
        rows.push(AuditRow {
            port: s.local_port,
            protocol: s.protocol,
            service: match svc {
                Some(svc) => svc.name.clone(),
                None if mgmt => format!("host management{guess}"),
                None if leased => format!("leased{guess}"),
                None => format!("unmanaged{guess}"),
            },
            zone: match svc {
                Some(svc) => svc.zone.to_string(),
                None => match vis {
                    Visibility::Loopback => "localhost (observed)".into(),
                    Visibility::Internal => "internal (observed)".into(),
                    Visibility::External => "external (observed)".into(),
                },
            },
            allowed_sources: match svc {
                Some(svc) => sources(policy, svc),
                None if mgmt => policy
                    .host
                    .management
                    .from
                    .cidrs()
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
                None => "-".into(),
            },
            tls: tls_text(l.probe.as_ref().map(|p| p.tls)).into(),
            owner: if owners.is_empty() {
                "unknown".into()
            } else {
                owners.into_iter().collect::<Vec<_>>().join(", ")
            },
            security_policy: match svc {
                Some(svc) => policy_text(svc),
                None if mgmt => "management path (never locked out)".into(),
                None if leased => "leased from a pool".into(),
                None => "undeclared".into(),
            },
            listening: true,
            exposure: exp
                .iter()
                .find(|e| e.port == s.local_port && e.protocol == s.protocol)
                .map_or(0.0, |e| e.score),
            last_updated: match last_change.get(&key) {
                Some(ts) => utc(*ts),
                None => format!("first seen {}", utc(now)),
            },
        });
    }
    for svc in &policy.services {
        for spec in svc.fixed_ports() {
            let port = spec.range.start().get();
            if seen.contains(&(spec.protocol, port)) {
                continue;
            }
            let key = format!("{port}/{}", spec.protocol);
            rows.push(AuditRow {
                port,
                protocol: spec.protocol,
                service: svc.name.clone(),
                zone: svc.zone.to_string(),
                allowed_sources: sources(policy, svc),
                tls: "not listening".into(),
                owner: "-".into(),
                security_policy: policy_text(svc),
                listening: false,
                exposure: 0.0,
                last_updated: last_change
                    .get(&key)
                    .map_or_else(|| "never".into(), |t| utc(*t)),
            });
        }
    }
    rows.sort_by_key(|r| (r.port, r.protocol));
    let mut summary = BTreeMap::new();
    for f in findings {
        *summary.entry(f.severity).or_insert(0) += 1;
    }
    Report {
        host: i.host.to_string(),
        policy: i.policy_name.to_string(),
        generated: utc(now),
        exposure_total: total,
        summary,
        ports: rows,
        findings: findings.to_vec(),
    }
}

/// The one Markdown escaper: text from the host (names, banners, process names) can
/// never open a table cell, code span, link, emphasis or HTML tag, nor start a heading or
/// list; control characters are shown as `\x1b` and newlines become spaces.
fn md_cell(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for (i, c) in s.chars().enumerate() {
        match c {
            '\n' | '\r' => out.push(' '),
            '\\' | '`' | '|' | '*' | '_' | '[' | ']' | '<' | '>' | '&' | '~' => {
                out.push('\\');
                out.push(c);
            }
            // Block syntax only counts at the start of a line or cell.
            '#' | '-' | '+' | '=' | '!' if i == 0 => {
                out.push('\\');
                out.push(c);
            }
            c => crate::diag::show_char(c, &mut out),
        }
    }
    out
}

/// Markdown.
pub fn to_markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Port compliance report: {}\n", md_cell(&r.host));
    let _ = writeln!(s, "- Policy: {}", md_cell(&r.policy));
    let _ = writeln!(s, "- Generated: {}", r.generated);
    let _ = writeln!(s, "- Exposure score: {}", r.exposure_total);
    let _ = writeln!(s, "- Findings: {}\n", severity_counts(r));
    let _ = writeln!(s, "## Ports\n");
    let heads: Vec<String> = COLUMNS.iter().map(|c| heading(c)).collect();
    let _ = writeln!(s, "| {} |", heads.join(" | "));
    let aligns: Vec<&str> = COLUMNS
        .iter()
        .map(|c| if numeric(c) { "---:" } else { "---" })
        .collect();
    let _ = writeln!(s, "|{}|", aligns.join("|"));
    for p in &r.ports {
        let cells: Vec<String> = p.cells().iter().map(|c| md_cell(c)).collect();
        let _ = writeln!(s, "| {} |", cells.join(" | "));
    }
    let _ = writeln!(s, "\n## Findings\n");
    if r.findings.is_empty() {
        let _ = writeln!(s, "None.");
    }
    for f in &r.findings {
        let _ = writeln!(
            s,
            "### [{}] {} — {}\n",
            f.severity,
            f.id.as_str(),
            md_cell(&f.subject)
        );
        let _ = writeln!(s, "- Seen: {}", md_cell(&f.evidence));
        let _ = writeln!(s, "- Why: {}", md_cell(&f.why));
        let _ = writeln!(s, "- Fix: {}\n", md_cell(&f.remedy));
    }
    s
}

/// The one CSV escaper: RFC 4180 quoting, control characters other than a newline shown
/// as `\x1b`, and a cell that a spreadsheet would run as a formula (leading `=`, `+`,
/// `-`, `@`) prefixed with `'` (a lone `-`, the table's "none", cannot be one).
fn csv_field(s: &str) -> String {
    let mut v = crate::diag::escape_controls(s, &['\n']).into_owned();
    if v.len() > 1 && v.starts_with(['=', '+', '-', '@']) {
        v.insert(0, '\'');
    }
    if v.contains([',', '"', '\n']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v
    }
}

/// CSV of the audit table (one row per port).
pub fn to_csv(r: &Report) -> String {
    let mut s = COLUMNS.join(",");
    s.push('\n');
    for p in &r.ports {
        let line: Vec<String> = p.cells().iter().map(|f| csv_field(f)).collect();
        s.push_str(&line.join(","));
        s.push('\n');
    }
    s
}

/// The one HTML escaper (text and quoted attributes); control characters are shown as
/// `\x1b`.
fn esc(s: &str) -> String {
    crate::diag::escape_controls(s, &['\n'])
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// One self-contained HTML page (inline CSS, no scripts) that prints well.
pub fn to_html(r: &Report) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Port compliance report: {host}</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#111}}
h1{{font-size:1.5em;margin:0 0 .3em}} h2{{font-size:1.2em;margin-top:1.5em}}
table{{border-collapse:collapse;width:100%;font-size:12px}}
th,td{{border:1px solid #999;padding:3px 6px;text-align:left;vertical-align:top}}
th{{background:#eee}} td.num{{text-align:right}}
.sev{{font-weight:bold;text-transform:uppercase}}
.critical,.high{{color:#a00}} .medium{{color:#a60}} .low{{color:#555}} .info{{color:#357}}
dl{{display:grid;grid-template-columns:max-content auto;gap:2px 12px}} dt{{font-weight:bold}}
@media print{{body{{margin:0}} tr{{break-inside:avoid}} h2{{break-after:avoid}}}}
</style></head><body>
<h1>Port compliance report: {host}</h1>
<dl><dt>Policy</dt><dd>{policy}</dd><dt>Generated</dt><dd>{gen}</dd><dt>Exposure score</dt><dd>{total}</dd>
"#,
        host = esc(&r.host),
        policy = esc(&r.policy),
        gen = esc(&r.generated),
        total = r.exposure_total
    );
    let _ = writeln!(
        s,
        "<dt>Findings</dt><dd>{}</dd></dl>",
        esc(&severity_counts(r))
    );
    let heads: String = COLUMNS
        .iter()
        .map(|c| format!("<th>{}</th>", heading(c)))
        .collect();
    let _ = writeln!(
        s,
        "<h2>Ports</h2>\n<table><thead><tr>{heads}</tr></thead><tbody>"
    );
    for p in &r.ports {
        let cells: String = p
            .cells()
            .iter()
            .zip(COLUMNS)
            .map(|(v, c)| {
                let class = if numeric(c) { " class=\"num\"" } else { "" };
                format!("<td{class}>{}</td>", esc(v))
            })
            .collect();
        let _ = writeln!(s, "<tr>{cells}</tr>");
    }
    let _ = writeln!(s, "</tbody></table>\n<h2>Findings</h2>");
    if r.findings.is_empty() {
        let _ = writeln!(s, "<p>None.</p>");
    } else {
        let _ = writeln!(
            s,
            "<table><thead><tr><th>Severity</th><th>Rule</th><th>Subject</th><th>Seen</th><th>Why</th><th>Fix</th></tr></thead><tbody>"
        );
        for f in &r.findings {
            let _ = writeln!(
                s,
                "<tr><td class=\"sev {sev}\">{sev}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                f.id.as_str(),
                esc(&f.subject),
                esc(&f.evidence),
                esc(&f.why),
                esc(&f.remedy),
                sev = f.severity
            );
        }
        let _ = writeln!(s, "</tbody></table>");
    }
    s.push_str("</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::*;

    /// Compares with `tests/golden/NAME`; `UPDATE_GOLDEN=1` rewrites it.
    fn golden(name: &str, text: &str) {
        portwarden_testkit::golden(env!("CARGO_MANIFEST_DIR"), name, text);
    }

    fn report() -> Report {
        let p = policy();
        let mut f = facts(healthy());
        f.listeners.retain(|l| l.socket.local_port != 873); // mirror is down
        f.listeners.push(listener(
            Protocol::Tcp,
            "0.0.0.0",
            23,
            "telnetd",
            Some((TlsFact::None, None)),
        ));
        let mut findings = crate::findings::policy_findings(&p, Catalog::builtin());
        findings.extend(crate::hostcheck::host_findings(&p, Catalog::builtin(), &f));
        crate::findings::sort(&mut findings);
        let last: BTreeMap<String, i64> = [("3306/tcp".to_string(), 1_790_000_000)].into();
        build(&Input {
            policy: &p,
            policy_name: "mirror.toml",
            host: "mirror-01",
            catalog: Catalog::builtin(),
            facts: &f,
            findings: &findings,
            last_change: &last,
            now: 1_795_000_000,
        })
    }

    #[test]
    fn report_formats_match_their_goldens() {
        let r = report();
        golden("report.md", &to_markdown(&r));
        golden("report.csv", &to_csv(&r));
        golden(
            "report.json",
            &(serde_json::to_string_pretty(&r).unwrap() + "\n"),
        );
        golden("report.html", &to_html(&r));
    }

    #[test]
    fn the_audit_table_has_every_port_and_every_declared_service() {
        let r = report();
        let rows: Vec<(u16, &str, bool)> = r
            .ports
            .iter()
            .map(|p| (p.port, p.service.as_str(), p.listening))
            .collect();
        assert!(rows.contains(&(873, "mirror", false)), "{rows:?}");
        assert!(rows.contains(&(23, "unmanaged (telnet)", true)), "{rows:?}");
        // The management path is managed, by [host] management.
        assert!(
            rows.contains(&(22, "host management (ssh)", true)),
            "{rows:?}"
        );
        let db = r.ports.iter().find(|p| p.port == 3306).unwrap();
        assert_eq!(db.last_updated, "2026-09-21T14:13:20Z");
        assert!(db.security_policy.contains("tls=required"));
        assert_eq!(db.allowed_sources, "10.0.0.0/8");
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_795_000_000), "2026-11-18T11:06:40Z");
    }

    /// Issue 10, item 14: host text cannot change the structure of a report.
    #[test]
    fn r_report_cells_escaped() {
        let table: &[(&str, &str)] = &[
            ("a|b", "a\\|b"),
            ("`rm -rf`", "\\`rm -rf\\`"),
            ("# title", "\\# title"),
            ("- item", "\\- item"),
            ("a\nb\r\n", "a b  "),
            ("x\x1b[2Jy\x07", "x\\x1b\\[2Jy\\x07"),
            ("<img src=x>", "\\<img src=x\\>"),
            ("[a](http://e)", "\\[a\\](http://e)"),
            ("a-b #c", "a-b #c"),
        ];
        for (input, want) in table {
            assert_eq!(md_cell(input), *want, "{input:?}");
            assert!(!md_cell(input).contains(['\n', '\r', '\x1b']));
        }
        let table: &[(&str, &str)] = &[
            (
                "=HYPERLINK(\"http://e\")",
                "\"'=HYPERLINK(\"\"http://e\"\")\"",
            ),
            ("+1", "'+1"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("-", "-"),
            ("a\x1bb", "a\\x1bb"),
            ("two\nlines", "\"two\nlines\""),
        ];
        for (input, want) in table {
            assert_eq!(csv_field(input), *want, "{input:?}");
        }
        assert_eq!(
            esc("<b a='1' b=\"2\">&\x1b"),
            "&lt;b a=&#39;1&#39; b=&quot;2&quot;&gt;&amp;\\x1b"
        );
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
