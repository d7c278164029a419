//! Everything the binary prints: tables, `--json` documents and error messages. Only this
//! module writes to stdout or stderr.

mod file;
mod fw;
pub mod lease;
pub mod printer;

use std::io::{self, Write};

pub use file::write_output;
pub use printer::Printer;

use portwarden_core::catalog::CatalogEntry;
use portwarden_core::diag::SourceErrors;
use portwarden_core::facts::{PortSummary, Socket, SocketState};
use portwarden_core::findings::{Finding, Severity};
use serde::Serialize;

/// The one terminal sanitiser: control characters (C0, DEL, C1: ESC, BEL, CSI, ...) are
/// shown as `\x1b`-style escapes, so nothing printed (a process name from /proc, a
/// banner, a ledger reason, a file name) can drive the terminal. Multi-line text keeps
/// its newlines and tabs; a table cell or one-line message keeps none.
fn clean(s: &str, multi_line: bool) -> std::borrow::Cow<'_, str> {
    portwarden_core::diag::escape_controls(s, if multi_line { &['\n', '\t'] } else { &[] })
}

/// One cell or one-line value.
fn cell(s: &str) -> String {
    clean(s, false).into_owned()
}

/// Prints an error chain as `portwarden: error: outer: inner`, or policy diagnostics as
/// they are.
pub fn error(e: &anyhow::Error) {
    let mut err = io::stderr().lock();
    if let Some(diags) = e.downcast_ref::<SourceErrors>() {
        let _ = writeln!(err, "{}", clean(&diags.to_string(), true));
        let n = diags.errors.len();
        let _ = writeln!(
            err,
            "portwarden: error: policy has {n} error{}",
            if n == 1 { "" } else { "s" }
        );
        return;
    }
    // One line: a newline in a value the user gave (an owner, a service name) is escaped.
    let _ = writeln!(
        err,
        "portwarden: error: {}",
        clean(&format!("{e:#}"), false)
    );
}

/// A usage error as clap renders it, as one line: `portwarden: error: …` (clap's hint
/// lines, such as `For more information, try '--help'`, dropped; `--help` says it all).
pub fn usage_error(rendered: &str) {
    // clap's message over several lines (the missing arguments, the possible values),
    // folded into one; its usage and `--help` hint lines left out.
    let parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .collect();
    let joined = if parts.is_empty() {
        "invalid usage".to_string()
    } else {
        parts.join(" ")
    };
    let msg = joined.strip_prefix("error: ").unwrap_or(&joined);
    let _ = writeln!(
        io::stderr().lock(),
        "portwarden: error: {}",
        clean(msg, false)
    );
}

/// Prints what is being done, on stderr, with `-v`.
pub fn verbose(level: u8, msg: &str) {
    if level > 0 {
        let _ = writeln!(io::stderr().lock(), "portwarden: {}", clean(msg, false));
    }
}

/// A use-case's notes for the terminal: warnings unless `-q`, detail with `-v`, and the
/// progress line cleared when it is done.
pub struct CliNotes {
    quiet: bool,
    verbose: u8,
    no_progress: bool,
}

impl CliNotes {
    pub fn new(g: &crate::cli::Global) -> CliNotes {
        CliNotes {
            quiet: g.quiet,
            verbose: g.verbose,
            no_progress: g.quiet || g.json,
        }
    }
}

impl portwarden_ops::Notes for CliNotes {
    fn warn(&self, msg: &str) {
        warn(self.quiet, msg);
    }
    fn verbose(&self, msg: &str) {
        verbose(self.verbose, msg);
    }
    fn progress_done(&self) {
        progress_done(self.no_progress);
    }
}

/// Prints a note on stderr unless quiet.
pub fn note(quiet: bool, msg: &str) {
    if !quiet {
        let _ = writeln!(io::stderr().lock(), "portwarden: {}", clean(msg, false));
    }
}

/// Prints a value as pretty JSON on stdout.
pub fn json<T: Serialize>(value: &T) -> io::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).map_err(io::Error::from)?;
    writeln!(out)
}

/// Prints text on stdout, control characters other than newline and tab escaped.
pub fn text(s: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(clean(s, true).as_bytes())?;
    out.flush()
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with a header row.
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|s| s.to_string()).collect()],
        }
    }

    /// Adds a row; its cells are sanitised.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|c| cell(c)).collect());
    }

    /// Renders the table.
    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut s = String::new();
        for r in &self.rows {
            let mut line = String::new();
            for (c, cell) in r.iter().enumerate() {
                if c + 1 == r.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
                }
            }
            s.push_str(line.trim_end());
            s.push('\n');
        }
        s
    }
}

/// The `check` report as a table grouped by severity, with why and remedy.
pub fn findings(findings: &[Finding], policy_name: &str, fail_on: Severity) -> io::Result<()> {
    let mut s = String::new();
    if findings.is_empty() {
        s.push_str(&format!("no findings against {}\n", cell(policy_name)));
        return text(&s);
    }
    for sev in Severity::ALL.iter().rev() {
        let group: Vec<&Finding> = findings.iter().filter(|f| f.severity == *sev).collect();
        if group.is_empty() {
            continue;
        }
        s.push_str(&format!(
            "{} ({})\n",
            sev.as_str().to_uppercase(),
            group.len()
        ));
        for f in group {
            s.push_str(&format!("  {}  {}\n", f.id.as_str(), cell(&f.subject)));
            s.push_str(&format!("    seen: {}\n", cell(&f.evidence)));
            s.push_str(&format!("    why:  {}\n", cell(&f.why)));
            s.push_str(&format!("    fix:  {}\n", cell(&f.remedy)));
        }
        s.push('\n');
    }
    let failing = findings.iter().filter(|f| f.severity >= fail_on).count();
    s.push_str(&format!(
        "{} finding{} against {}; {failing} at or above {fail_on}\n",
        findings.len(),
        if findings.len() == 1 { "" } else { "s" },
        cell(policy_name),
    ));
    text(&s)
}

/// The catalog as a table.
pub fn catalog_list(entries: &[CatalogEntry]) -> io::Result<()> {
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
    text(&t.render())
}

fn ports(e: &CatalogEntry) -> String {
    e.ports
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// One catalog entry in full.
pub fn catalog_entry(e: &CatalogEntry) -> io::Result<()> {
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
    text(&s)
}

/// Prints a warning on stderr unless quiet.
pub fn warn(quiet: bool, msg: &str) {
    if !quiet {
        let _ = writeln!(
            io::stderr().lock(),
            "portwarden: warning: {}",
            clean(msg, false)
        );
    }
}

fn endpoint(addr: std::net::IpAddr, port: u16) -> String {
    let p = if port == 0 {
        "*".to_string()
    } else {
        port.to_string()
    };
    match addr {
        std::net::IpAddr::V4(a) => format!("{a}:{p}"),
        std::net::IpAddr::V6(a) => format!("[{a}]:{p}"),
    }
}

fn owners_cell(s: &Socket) -> String {
    match s.owners.as_deref() {
        None | Some([]) => "-".to_string(),
        Some(o) => o
            .iter()
            .map(|o| format!("{}/{}", cell(&o.comm), o.pid))
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// The socket table, like `ss -tanu` (`-p` adds the process column).
pub fn sockets(socks: &[Socket], with_owners: bool) -> io::Result<()> {
    let locals: Vec<String> = socks
        .iter()
        .map(|s| endpoint(s.local_addr, s.local_port))
        .collect();
    let peers: Vec<String> = socks
        .iter()
        .map(|s| endpoint(s.remote_addr, s.remote_port))
        .collect();
    let wl = locals.iter().map(String::len).max().unwrap_or(0).max(5);
    let wp = peers.iter().map(String::len).max().unwrap_or(0).max(4);
    let out = io::stdout().lock();
    let mut w = io::BufWriter::with_capacity(1 << 16, out);
    write!(
        w,
        "{:<5} {:<10} {:>6} {:>6} {:<wl$} {:<wp$}",
        "NETID", "STATE", "RECV-Q", "SEND-Q", "LOCAL", "PEER"
    )?;
    if with_owners {
        write!(w, " PROCESS")?;
    }
    writeln!(w)?;
    for (i, s) in socks.iter().enumerate() {
        write!(
            w,
            "{:<5} {:<10} {:>6} {:>6} {:<wl$} {:<wp$}",
            s.protocol.as_str(),
            s.state.as_str(),
            s.recv_q,
            s.send_q,
            locals[i],
            peers[i]
        )?;
        if with_owners {
            write!(w, " {}", owners_cell(s))?;
        }
        writeln!(w)?;
    }
    w.flush()
}

/// One row per listening port with its connections per state.
pub fn port_summary(rows: &[PortSummary], with_owners: bool) -> io::Result<()> {
    let mut t = Table::new(&[
        "PORT",
        "PROTO",
        "ADDRESSES",
        "BACKLOG",
        "ESTAB",
        "SYN-RECV",
        "TIME-WAIT",
        "CLOSE-WAIT",
        "OTHER",
        "PROCESS",
    ]);
    for r in rows {
        let count = |st: SocketState| r.states.get(&st).copied().unwrap_or(0);
        let named = [
            SocketState::Established,
            SocketState::SynRecv,
            SocketState::TimeWait,
            SocketState::CloseWait,
        ];
        let other: u32 = r
            .states
            .iter()
            .filter(|(k, _)| !named.contains(k))
            .map(|(_, v)| v)
            .sum();
        let backlog = if r.protocol == portwarden_core::Protocol::Tcp {
            format!("{}/{}", r.accept_queue, r.backlog)
        } else {
            "-".to_string()
        };
        let procs = if !with_owners || r.owners.is_empty() {
            "-".to_string()
        } else {
            r.owners
                .iter()
                .map(|(pid, c)| format!("{c}/{pid}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        t.row(vec![
            r.port.to_string(),
            r.protocol.to_string(),
            r.addresses
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(","),
            backlog,
            count(SocketState::Established).to_string(),
            count(SocketState::SynRecv).to_string(),
            count(SocketState::TimeWait).to_string(),
            count(SocketState::CloseWait).to_string(),
            other.to_string(),
            procs,
        ]);
    }
    text(&t.render())
}

/// The holders of one port, one row per (protocol, state, local address, owner) with a
/// count, so thousands of accepted connections fold into one line.
pub fn who(socks: &[Socket]) -> io::Result<()> {
    use std::collections::BTreeMap;
    /// (protocol, state, local, pid, uid, comm, exe)
    type Key = (String, String, String, u32, String, String, String);
    let mut rows: BTreeMap<Key, u32> = BTreeMap::new();
    for s in socks {
        let local = endpoint(s.local_addr, s.local_port);
        let owners = s.owners.clone().unwrap_or_default();
        if owners.is_empty() {
            *rows
                .entry((
                    s.protocol.to_string(),
                    s.state.to_string(),
                    local,
                    0,
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ))
                .or_default() += 1;
            continue;
        }
        for o in owners {
            *rows
                .entry((
                    s.protocol.to_string(),
                    s.state.to_string(),
                    local.clone(),
                    o.pid,
                    o.uid.to_string(),
                    o.comm.clone(),
                    o.exe.clone().unwrap_or_else(|| "-".into()),
                ))
                .or_default() += 1;
        }
    }
    let mut t = Table::new(&[
        "PROTO", "STATE", "LOCAL", "COUNT", "PID", "UID", "PROCESS", "EXE",
    ]);
    for ((proto, state, local, pid, uid, comm, exe), n) in rows {
        t.row(vec![
            proto,
            state,
            local,
            n.to_string(),
            if pid == 0 {
                "-".into()
            } else {
                pid.to_string()
            },
            uid,
            comm,
            exe,
        ]);
    }
    text(&t.render())
}

/// A negative answer (port busy, pool exhausted): one line on stderr.
pub fn refusal(msg: &str) {
    let _ = writeln!(io::stderr().lock(), "portwarden: {}", clean(msg, false));
}

/// Unix seconds as `2026-11-28T18:24:47Z`.
pub fn utc(secs: i64) -> String {
    portwarden_core::report::utc(secs)
}

fn ago(secs: i64) -> String {
    let s = secs.unsigned_abs();
    let t = portwarden_core::units::HumanDuration(std::time::Duration::from_secs(s)).to_string();
    if secs < 0 {
        format!("in {t}")
    } else {
        format!("{t} ago")
    }
}

/// Ledger records as a table.
pub fn ledger(entries: &[portwarden_store::Entry]) -> io::Result<()> {
    if entries.is_empty() {
        return text("the ledger is empty\n");
    }
    let mut t = Table::new(&["SEQ", "TIME", "ACTOR", "ACTION", "SUBJECT", "REASON"]);
    for e in entries {
        t.row(vec![
            e.seq.to_string(),
            utc(e.ts),
            e.actor.clone(),
            e.action.clone(),
            e.subject.clone(),
            e.reason.clone().unwrap_or_default(),
        ]);
    }
    text(&t.render())
}

/// One JSON object per line.
pub fn jsonl<T: Serialize>(items: &[T]) -> io::Result<()> {
    let out = io::stdout().lock();
    let mut w = io::BufWriter::new(out);
    for i in items {
        serde_json::to_writer(&mut w, i).map_err(io::Error::from)?;
        writeln!(w)?;
    }
    w.flush()
}

/// The result of `log verify`.
pub fn verification(v: &portwarden_store::Verification) -> io::Result<()> {
    let mut out = match (&v.broken, &v.head) {
        (Some((seq, why)), _) => format!("ledger broken at seq {seq}: {why}\n"),
        (None, _) if !v.problems.is_empty() => "ledger not ok:\n".to_string(),
        (None, None) => "ledger ok: empty\n".to_string(),
        (None, Some((seq, hash))) => format!(
            "ledger ok: {} records, seq {}..{seq}, head {hash}\n",
            v.records,
            v.first_seq.unwrap_or(*seq)
        ),
    };
    for p in &v.problems {
        out.push_str(&format!("  {p}\n"));
    }
    text(&out)
}

fn stderr_is_tty() -> bool {
    // SAFETY: isatty has no preconditions.
    unsafe { libc::isatty(2) == 1 }
}

/// A progress bar on stderr, only when stderr is a terminal.
pub struct Progress {
    on: bool,
    last: std::sync::atomic::AtomicU64,
}

impl Progress {
    /// A bar, silent when `quiet` or when stderr is not a terminal.
    pub fn new(quiet: bool) -> Progress {
        Progress {
            on: !quiet && stderr_is_tty(),
            last: std::sync::atomic::AtomicU64::new(u64::MAX),
        }
    }

    /// Redraws at most once per percent.
    pub fn update(&self, done: u64, total: u64) {
        if !self.on || total == 0 {
            return;
        }
        let pct = done * 100 / total;
        if self.last.swap(pct, std::sync::atomic::Ordering::Relaxed) == pct {
            return;
        }
        let filled = (pct / 4) as usize;
        let _ = write!(
            io::stderr().lock(),
            "\r[{}{}] {pct:3}% {done}/{total}",
            "#".repeat(filled),
            ".".repeat(25 - filled)
        );
    }
}

/// Clears the progress line.
pub fn progress_done(quiet: bool) {
    if !quiet && stderr_is_tty() {
        let _ = write!(io::stderr().lock(), "\r{}\r", " ".repeat(60));
    }
}

/// Open (and filtered) ports as a table, then a summary line and any diff.
pub fn scan_table(d: &portwarden_api::scan::ScanDoc) -> io::Result<()> {
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
                    .map(|(s, e)| format!("cert {s}, expires {e}")),
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
    text(&s)
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
