//! nmap's service probe database (`nmap-service-probes`, as Debian's `nmap` package
//! installs it; the caller reads it at run time, nothing is copied): its `Probe`s are sent and their
//! answers matched against its `match`/`softmatch` lines with PCRE2, the engine nmap
//! itself uses, so every service nmap knows is named the way nmap names it.
//!
//! The engine differs from nmap's in one way that matters: each probe goes on its own
//! connection, a few at a time, instead of one after another, so a silent port costs one
//! timeout rather than one per probe. Answers are still judged in nmap's order (the NULL
//! probe, the probes that list the port, then the others not rarer than the intensity),
//! so the first hard match in that order wins, as in nmap.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Where distributions install the database; the first that exists is the default.
pub const DEFAULT_PATHS: &[&str] = &[
    "/usr/share/nmap/nmap-service-probes",
    "/usr/local/share/nmap/nmap-service-probes",
];

/// nmap's default `--version-intensity`: probes rarer than this are sent only to the
/// ports they list.
pub const INTENSITY: u8 = 7;

/// Probes in flight at once for one port.
pub const PER_PORT: usize = 6;

/// The most of an answer kept and matched (nmap keeps about as much).
const MAX_ANSWER: usize = 32 * 1024;

/// The largest database read (nmap's own is about 2.5 MB).
pub const MAX_DB_BYTES: u64 = 32 * 1024 * 1024;

/// How often a growing answer is judged at most, after its first read.
const JUDGE_EVERY: Duration = Duration::from_millis(50);

/// Why a database cannot be used (the caller warns and uses its built-in probes).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Nothing in it parsed as a probe.
    #[error("{path}: no usable probes in the probes database")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// A probe's transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP (parsed; the UDP scan does not send these yet).
    Udp,
}

/// One `Probe` section.
#[derive(Debug)]
pub struct DbProbe {
    /// TCP or UDP.
    pub protocol: Proto,
    /// Its name (`NULL`, `GetRequest`, …).
    pub name: String,
    /// What it sends.
    pub payload: Vec<u8>,
    /// 1 (common) to 9 (rare).
    pub rarity: u8,
    ports: Vec<(u16, u16)>,
    sslports: Vec<(u16, u16)>,
    fallback: Vec<String>,
    matches: Vec<DbMatch>,
}

/// One `match` or `softmatch` line.
#[derive(Debug)]
struct DbMatch {
    service: String,
    soft: bool,
    pattern: String,
    caseless: bool,
    dotall: bool,
    /// `p`, `v`, `i`, `h`, `o`, `d` templates.
    fields: [Option<String>; 6],
    cpe: Vec<String>,
    line: usize,
    /// Compiled on first use; PCRE2's message when it refuses the pattern.
    regex: OnceLock<Result<pcre2::bytes::Regex, String>>,
}

/// What a match line says about an answer, its templates filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hit {
    /// nmap's service name (`ssh`, `http`, `mysql`, `ssl/sophos`, …).
    pub service: String,
    /// A `softmatch`: the service, without product or version.
    pub soft: bool,
    /// `p/…/`: the product.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// `v/…/`: its version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `i/…/`: anything else it said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extrainfo: Option<String>,
    /// `h/…/`: the host name it gave.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `o/…/`: the operating system it implies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ostype: Option<String>,
    /// `d/…/`: the kind of device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devicetype: Option<String>,
    /// `cpe:/…/` names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cpe: Vec<String>,
    /// The probe whose answer matched.
    pub probe: String,
    /// The database line that matched it.
    pub line: usize,
}

/// The parsed database.
#[derive(Debug)]
pub struct ProbeDb {
    /// Where it was read from.
    pub path: PathBuf,
    probes: Vec<DbProbe>,
    by_name: HashMap<String, usize>,
    null: Option<usize>,
    exclude: Vec<(Proto, u16, u16)>,
    /// Lines that did not parse, as `file:line:col: message` (skipped, like the rest of
    /// the file is not).
    pub skipped: Vec<String>,
}

/// Undoes nmap's C-like escapes in a probe string: `\0 \a \b \f \n \r \t \v \\ \xHH`.
/// An unknown escape stands for the character after the backslash.
pub fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let Some(&c) = b.get(i + 1) else {
            return Err("a backslash at the end of the probe string".into());
        };
        i += 2;
        out.push(match c {
            b'0' => 0,
            b'a' => 7,
            b'b' => 8,
            b'f' => 12,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'v' => 11,
            b'x' => {
                let hex = b
                    .get(i..i + 2)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("`\\x` needs two hex digits at byte {i}"))?;
                i += 2;
                hex
            }
            other => other,
        });
    }
    Ok(out)
}

/// Reads `<delim>text<delim>` at the start of `s`: (text, the rest after the closing
/// delimiter). nmap has no escape for the delimiter: the next one closes.
fn delimited(s: &str) -> Option<(&str, &str)> {
    let d = s.chars().next()?;
    let body = &s[d.len_utf8()..];
    let end = body.find(d)?;
    Some((&body[..end], &body[end + d.len_utf8()..]))
}

/// A port list like `-p`'s: `21,80-85`, with `T:`/`U:` naming the protocol of what
/// follows (for `Exclude`; `ports` lines have no prefixes).
fn port_list(s: &str) -> Result<Vec<(Proto, u16, u16)>, String> {
    let mut proto = None;
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let item = if let Some(r) = item.strip_prefix("T:") {
            proto = Some(Proto::Tcp);
            r
        } else if let Some(r) = item.strip_prefix("U:") {
            proto = Some(Proto::Udp);
            r
        } else {
            item
        };
        let (lo, hi) = item.split_once('-').unwrap_or((item, item));
        let lo: u16 = lo.parse().map_err(|_| format!("bad port `{item}`"))?;
        let hi: u16 = hi.parse().map_err(|_| format!("bad port `{item}`"))?;
        if lo > hi {
            return Err(format!("bad port range `{item}`"));
        }
        match proto {
            Some(p) => out.push((p, lo, hi)),
            None => {
                out.push((Proto::Tcp, lo, hi));
                out.push((Proto::Udp, lo, hi));
            }
        }
    }
    Ok(out)
}

fn in_ranges(r: &[(u16, u16)], port: u16) -> bool {
    r.iter().any(|&(lo, hi)| (lo..=hi).contains(&port))
}

/// Parses the rest of a `match`/`softmatch` line: `service m<d>regex<d>[flags] fields…`.
fn parse_match(rest: &str, soft: bool, line: usize) -> Result<DbMatch, (usize, String)> {
    let (service, after) = rest
        .split_once(' ')
        .ok_or((0, "a service name and a pattern expected".to_string()))?;
    let at = rest.len() - after.len();
    let after = after.trim_start();
    let at = at + (rest.len() - at - after.len());
    let pat = after
        .strip_prefix('m')
        .ok_or((at, "the pattern must start with `m`".to_string()))?;
    let (pattern, mut tail) =
        delimited(pat).ok_or((at, "the pattern has no closing delimiter".to_string()))?;
    let mut caseless = false;
    let mut dotall = false;
    while let Some(c) = tail.chars().next().filter(|c| !c.is_whitespace()) {
        match c {
            'i' => caseless = true,
            's' => dotall = true,
            _ => {
                return Err((
                    rest.len() - tail.len(),
                    format!("unknown pattern flag `{c}`"),
                ));
            }
        }
        tail = &tail[c.len_utf8()..];
    }
    let mut fields: [Option<String>; 6] = Default::default();
    let mut cpe = Vec::new();
    loop {
        tail = tail.trim_start();
        if tail.is_empty() {
            break;
        }
        let col = rest.len() - tail.len();
        if let Some(r) = tail.strip_prefix("cpe:") {
            let (v, r) = delimited(r).ok_or((col, "unclosed cpe".to_string()))?;
            cpe.push(format!("cpe:/{}", v.trim_start_matches('/')));
            tail = r.strip_prefix('a').unwrap_or(r);
            continue;
        }
        let key = tail.chars().next().unwrap_or(' ');
        let slot = match key {
            'p' => 0,
            'v' => 1,
            'i' => 2,
            'h' => 3,
            'o' => 4,
            'd' => 5,
            _ => return Err((col, format!("unknown version field `{key}`"))),
        };
        let (v, r) = delimited(&tail[1..]).ok_or((col, format!("unclosed `{key}` field")))?;
        fields[slot] = Some(v.to_string());
        tail = r;
    }
    Ok(DbMatch {
        service: service.to_string(),
        soft,
        pattern: pattern.to_string(),
        caseless,
        dotall,
        fields,
        cpe,
        line,
        regex: OnceLock::new(),
    })
}

impl ProbeDb {
    /// The database in `bytes` (read by the caller from `path`, at most
    /// [`MAX_DB_BYTES`]). Lines that do not parse are skipped and listed in `skipped`; a
    /// file that holds no probe is an error.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<ProbeDb, DbError> {
        let db = ProbeDb::parse(path, bytes);
        if db.probes.is_empty() {
            return Err(DbError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(db)
    }

    /// The first of [`DEFAULT_PATHS`] that exists.
    pub fn default_path() -> Option<PathBuf> {
        DEFAULT_PATHS.iter().map(PathBuf::from).find(|p| p.exists())
    }

    /// Parses a database's bytes (`path` names it in messages).
    pub fn parse(path: &Path, bytes: &[u8]) -> ProbeDb {
        let mut db = ProbeDb {
            path: path.to_path_buf(),
            probes: Vec::new(),
            by_name: HashMap::new(),
            null: None,
            exclude: Vec::new(),
            skipped: Vec::new(),
        };
        for (n, raw) in bytes.split(|&c| c == b'\n').enumerate() {
            let line = n + 1;
            // Invalid UTF-8 (a raw byte in a pattern) becomes the `\xNN` escape PCRE
            // reads as that byte.
            let mut text = String::new();
            for chunk in raw.utf8_chunks() {
                text.push_str(chunk.valid());
                for b in chunk.invalid() {
                    text.push_str(&format!("\\x{b:02x}"));
                }
            }
            let text = text.trim_end_matches('\r');
            if text.trim().is_empty() || text.starts_with('#') {
                continue;
            }
            if let Err((col, msg)) = db.line(text, line) {
                db.skipped
                    .push(format!("{}:{line}:{}: {msg}", path.display(), col + 1));
            }
        }
        db
    }

    fn line(&mut self, text: &str, line: usize) -> Result<(), (usize, String)> {
        let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
        let rest = rest.trim();
        let at = text.len() - rest.len();
        let err = |m: String| (at, m);
        if word == "Probe" {
            let mut it = rest.splitn(3, ' ');
            let protocol = match it.next() {
                Some("TCP") => Proto::Tcp,
                Some("UDP") => Proto::Udp,
                _ => return Err(err("`Probe TCP|UDP NAME q|…|` expected".into())),
            };
            let name = it
                .next()
                .ok_or_else(|| err("the probe has no name".into()))?;
            let q = it
                .next()
                .and_then(|q| q.strip_prefix('q'))
                .ok_or_else(|| err("the probe string must start with `q`".into()))?;
            let (body, _) = delimited(q).ok_or_else(|| err("unclosed probe string".into()))?;
            let payload = unescape(body).map_err(err)?;
            let i = self.probes.len();
            if name == "NULL" && protocol == Proto::Tcp {
                self.null = Some(i);
            }
            self.by_name.insert(name.to_string(), i);
            self.probes.push(DbProbe {
                protocol,
                name: name.to_string(),
                payload,
                rarity: 1,
                ports: Vec::new(),
                sslports: Vec::new(),
                fallback: Vec::new(),
                matches: Vec::new(),
            });
            return Ok(());
        }
        if word == "Exclude" {
            self.exclude = port_list(rest).map_err(err)?;
            return Ok(());
        }
        let Some(probe) = self.probes.last_mut() else {
            return Err((0, format!("`{word}` before any Probe")));
        };
        match word {
            "match" | "softmatch" => {
                let m =
                    parse_match(rest, word == "softmatch", line).map_err(|(c, m)| (at + c, m))?;
                probe.matches.push(m);
            }
            "ports" | "sslports" => {
                let r: Vec<(u16, u16)> = port_list(rest)
                    .map_err(err)?
                    .into_iter()
                    .filter(|p| p.0 == Proto::Tcp)
                    .map(|(_, lo, hi)| (lo, hi))
                    .collect();
                if word == "ports" {
                    probe.ports = r;
                } else {
                    probe.sslports = r;
                }
            }
            "rarity" => {
                probe.rarity = rest
                    .parse()
                    .ok()
                    .filter(|r| (1..=9).contains(r))
                    .ok_or_else(|| err(format!("rarity `{rest}` is not 1 to 9")))?;
            }
            "fallback" => {
                probe.fallback = rest.split(',').map(|s| s.trim().to_string()).collect();
            }
            // nmap's waits; ours is the caller's timeout, matched on every read.
            "totalwaitms" | "tcpwrappedms" => {}
            _ => return Err((0, format!("unknown directive `{word}`"))),
        }
        Ok(())
    }

    /// Probes and match lines, for the summary.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.probes.len(),
            self.probes.iter().map(|p| p.matches.len()).sum(),
        )
    }

    /// Compiles every pattern: those PCRE2 refuses (they never match), as
    /// `file:line: message`.
    pub fn uncompilable(&self) -> Vec<String> {
        for m in self.probes.iter().flat_map(|p| &p.matches) {
            m.regex();
        }
        self.refused()
    }

    /// The patterns PCRE2 refused so far (they are compiled when first needed), as
    /// `file:line: message`.
    pub fn refused(&self) -> Vec<String> {
        self.probes
            .iter()
            .flat_map(|p| &p.matches)
            .filter_map(|m| match m.regex.get() {
                Some(Err(e)) => Some(format!("{}:{}: {e}", self.path.display(), m.line)),
                _ => None,
            })
            .collect()
    }

    /// Whether the database excludes a TCP port from version detection (printers, which
    /// print whatever they are sent).
    pub fn excluded(&self, port: u16) -> bool {
        self.exclude
            .iter()
            .any(|&(p, lo, hi)| p == Proto::Tcp && (lo..=hi).contains(&port))
    }

    /// The TCP probes for a port, in the order nmap judges them: NULL, the probes that
    /// list the port (`sslports` inside TLS), then the rest not rarer than `intensity`.
    pub fn order(&self, port: u16, tls: bool, intensity: u8) -> Vec<usize> {
        let tcp = |i: &usize| self.probes[*i].protocol == Proto::Tcp && Some(*i) != self.null;
        let lists = |i: &usize| {
            let p = &self.probes[*i];
            in_ranges(if tls { &p.sslports } else { &p.ports }, port)
        };
        let mut out: Vec<usize> = self.null.into_iter().collect();
        out.extend((0..self.probes.len()).filter(tcp).filter(lists));
        out.extend(
            (0..self.probes.len())
                .filter(tcp)
                .filter(|i| !lists(i) && self.probes[*i].rarity <= intensity),
        );
        out
    }

    /// Whether a probe (with its fallbacks) has a match line for `service`.
    fn can_match(&self, probe: usize, service: &str) -> bool {
        self.chain(probe)
            .iter()
            .any(|&i| self.probes[i].matches.iter().any(|m| m.service == service))
    }

    /// The probe, its fallbacks, and for TCP the NULL probe, as nmap falls back.
    fn chain(&self, probe: usize) -> Vec<usize> {
        let p = &self.probes[probe];
        let mut out = vec![probe];
        out.extend(
            p.fallback
                .iter()
                .filter_map(|n| self.by_name.get(n).copied()),
        );
        if p.protocol == Proto::Tcp {
            out.extend(self.null.filter(|&n| n != probe));
        }
        out.dedup();
        out
    }

    /// Matches an answer to `probe`: the first hard match along its fallback chain, or
    /// else the first soft one.
    pub fn judge(&self, probe: usize, answer: &[u8]) -> Option<Hit> {
        let mut soft = None;
        for i in self.chain(probe) {
            for m in &self.probes[i].matches {
                if soft.is_some() && m.soft {
                    continue;
                }
                let Some(caps) = m.regex().and_then(|r| r.captures(answer).ok().flatten()) else {
                    continue;
                };
                let hit = m.hit(&caps, &self.probes[probe].name);
                if !m.soft {
                    return Some(hit);
                }
                soft = Some(hit);
            }
        }
        soft
    }

    /// Identifies the service at `addr` (inside TLS when `tls`): every probe nmap would
    /// send at [`INTENSITY`], [`PER_PORT`] at a time, each answer matched on every read
    /// and judged in nmap's order. `None` when nothing matched, or the port is excluded.
    pub async fn identify(
        self: Arc<Self>,
        addr: SocketAddr,
        tls: bool,
        t: Duration,
    ) -> Option<Hit> {
        if self.excluded(addr.port()) {
            return None;
        }
        let order = self.order(addr.port(), tls, INTENSITY);
        let mut results: Vec<Option<Option<Hit>>> = vec![None; order.len()];
        // The NULL probe's connection closed by the peer without a byte: nmap's
        // `tcpwrapped`, when nothing else matches.
        let mut wrapped = false;
        let mut set = tokio::task::JoinSet::new();
        let mut next = 0; // next to send
        let mut judged = 0; // next to judge
        let mut soft: Option<Hit> = None;
        loop {
            while next < order.len() && set.len() < PER_PORT {
                let i = next;
                next += 1;
                // After a soft match, only probes that can say more about that service.
                if let Some(s) = &soft {
                    if !self.can_match(order[i], &s.service) {
                        results[i] = Some(None);
                        continue;
                    }
                }
                let db = self.clone();
                let probe = order[i];
                set.spawn(async move { (i, exchange(&db, probe, addr, tls, t).await) });
            }
            while judged < order.len() {
                let Some(r) = &results[judged] else { break };
                match r {
                    Some(h) if !h.soft => {
                        let keep = soft.as_ref().is_none_or(|s| s.service == h.service);
                        if keep {
                            set.abort_all();
                            return Some(h.clone());
                        }
                    }
                    Some(h) if soft.is_none() => soft = Some(h.clone()),
                    _ => {}
                }
                judged += 1;
            }
            if judged == order.len() {
                return soft.or_else(|| wrapped.then(Hit::tcpwrapped));
            }
            match set.join_next().await {
                Some(Ok((i, Answer::Hit(hit)))) => results[i] = Some(hit.map(|h| *h)),
                Some(Ok((i, Answer::ClosedEmpty))) => {
                    wrapped |= i == 0 && Some(order[0]) == self.null;
                    results[i] = Some(None);
                }
                Some(Err(_)) => {}
                None => {
                    // Every sent probe came back; the unsent ones were skipped.
                    for r in results.iter_mut().filter(|r| r.is_none()) {
                        *r = Some(None);
                    }
                }
            }
        }
    }
}

impl Hit {
    /// nmap's name for a port that accepts and closes without a word (TCP wrappers, a
    /// firewall in front of the service, a server refusing our address).
    fn tcpwrapped() -> Hit {
        Hit {
            service: "tcpwrapped".into(),
            soft: true,
            product: None,
            version: None,
            extrainfo: None,
            hostname: None,
            ostype: None,
            devicetype: None,
            cpe: Vec::new(),
            probe: "NULL".into(),
            line: 0,
        }
    }
}

impl DbMatch {
    fn regex(&self) -> Option<&pcre2::bytes::Regex> {
        self.regex
            .get_or_init(|| {
                pcre2::bytes::RegexBuilder::new()
                    .caseless(self.caseless)
                    .dotall(self.dotall)
                    .build(&self.pattern)
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .ok()
    }

    fn hit(&self, caps: &pcre2::bytes::Captures<'_>, probe: &str) -> Hit {
        let fill = |k: usize| {
            self.fields[k]
                .as_deref()
                .map(|t| expand(t, caps))
                .filter(|s| !s.is_empty())
        };
        Hit {
            service: safe(&self.service),
            soft: self.soft,
            product: fill(0),
            version: fill(1),
            extrainfo: fill(2),
            hostname: fill(3),
            ostype: fill(4),
            devicetype: fill(5),
            cpe: self
                .cpe
                .iter()
                .map(|c| expand(c, caps))
                .filter(|c| !c.is_empty())
                .collect(),
            probe: probe.to_string(),
            line: self.line,
        }
    }
}

/// A captured group as text: printable ASCII kept, everything else `\xNN` (or dropped,
/// for `$P`), so what a peer sends cannot reach a terminal or a document raw.
fn text(b: &[u8], drop_unprintable: bool) -> String {
    let mut s = String::new();
    for &c in b {
        if (0x20..0x7f).contains(&c) {
            s.push(char::from(c));
        } else if !drop_unprintable {
            s.push_str(&format!("\\x{c:02x}"));
        }
    }
    s
}

/// Fills a version template: `$1`…`$9`, `$P(n)` (printable bytes only),
/// `$SUBST(n,"from","to")`, `$I(n,"<"|">")` (an unsigned integer of the captured bytes).
pub fn expand(template: &str, caps: &pcre2::bytes::Captures<'_>) -> String {
    let group = |n: usize| caps.get(n).map_or(&[][..], |m| m.as_bytes());
    let mut out = String::new();
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        let digit = |s: &str| {
            s.chars()
                .next()
                .and_then(|c| c.to_digit(10))
                .map(|d| d as usize)
        };
        if let Some(n) = digit(rest) {
            out.push_str(&text(group(n), false));
            rest = &rest[1..];
        } else if let Some(args) = call(rest, "P") {
            if let Some(n) = args.0.first().and_then(|a| a.parse().ok()) {
                out.push_str(&text(group(n), true));
            }
            rest = args.1;
        } else if let Some(args) = call(rest, "SUBST") {
            if let [n, from, to] = args.0.as_slice() {
                if let Ok(n) = n.parse() {
                    let s = text(group(n), false);
                    out.push_str(&if from.is_empty() {
                        s
                    } else {
                        s.replace(from.as_str(), to)
                    });
                }
            }
            rest = args.1;
        } else if let Some(args) = call(rest, "I") {
            if let [n, order] = args.0.as_slice() {
                let g = n.parse().map(group).unwrap_or(&[]);
                if !g.is_empty() && g.len() <= 8 {
                    let mut v: u64 = 0;
                    let bytes: Vec<u8> = if order == "<" {
                        g.iter().rev().copied().collect()
                    } else {
                        g.to_vec()
                    };
                    for b in bytes {
                        v = v << 8 | u64::from(b);
                    }
                    out.push_str(&v.to_string());
                }
            }
            rest = args.1;
        } else {
            out.push('$');
        }
    }
    out.push_str(rest);
    safe(out.trim())
}

/// The database's own text without control or format characters (the peer's bytes are
/// already `\xNN`): a hostile database file cannot reach a terminal or a document either.
fn safe(s: &str) -> String {
    portwarden_core::diag::strip_unsafe(s, usize::MAX)
}

/// `NAME(a,"b",…)` at the start of `s`: (arguments, unquoted; the rest after `)`).
fn call<'a>(s: &'a str, name: &str) -> Option<(Vec<String>, &'a str)> {
    let r = s.strip_prefix(name)?.strip_prefix('(')?;
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for (i, c) in r.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => args.push(std::mem::take(&mut cur)),
            ')' if !quoted => {
                args.push(cur);
                return Some((args, &r[i + 1..]));
            }
            _ => cur.push(c),
        }
    }
    None
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One probe on its own connection: sends it, reads, and matches after every read; the
/// first hard match ends it early.
async fn exchange(db: &ProbeDb, probe: usize, addr: SocketAddr, tls: bool, t: Duration) -> Answer {
    let Some(mut s) = open(addr, tls, t).await else {
        return Answer::Hit(None);
    };
    let p = &db.probes[probe];
    if !p.payload.is_empty() && !matches!(timeout(t, s.write_all(&p.payload)).await, Ok(Ok(()))) {
        return Answer::Hit(None);
    }
    let deadline = tokio::time::Instant::now() + t;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    // Judged after a read that doubles the answer, or 50 ms after the last judgement: a
    // peer that drips one byte at a time cannot make us run thousands of patterns per
    // byte. Whatever is left unjudged is judged at the end.
    let mut judged_len = 0;
    let mut judged_at = tokio::time::Instant::now();
    let mut closed_empty = false;
    while answer.len() < MAX_ANSWER {
        // Checked before each read: a peer that keeps sending must not outlast the
        // timeout (a ready read would win the race against an expired timer).
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&chunk[..n]),
            Ok(_) => {
                closed_empty = answer.is_empty();
                break;
            }
            Err(_) => break,
        }
        answer.truncate(MAX_ANSWER);
        if answer.len() >= judged_len * 2 || judged_at.elapsed() >= JUDGE_EVERY {
            judged_len = answer.len();
            judged_at = tokio::time::Instant::now();
            let hit = db.judge(probe, &answer);
            if hit.as_ref().is_some_and(|h| !h.soft) {
                return Answer::Hit(hit.map(Box::new));
            }
        }
    }
    if closed_empty {
        return Answer::ClosedEmpty;
    }
    Answer::Hit(
        (!answer.is_empty())
            .then(|| db.judge(probe, &answer))
            .flatten()
            .map(Box::new),
    )
}

/// A connection to `addr`, inside TLS when `tls`.
async fn open(addr: SocketAddr, tls: bool, t: Duration) -> Option<Box<dyn Stream>> {
    let tcp = timeout(t, TcpStream::connect(addr)).await.ok()?.ok()?;
    if !tls {
        return Some(Box::new(tcp));
    }
    let connector = crate::cert::connector(None)?;
    let name = tokio_rustls::rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    Some(Box::new(
        timeout(t, connector.connect(name, tcp)).await.ok()?.ok()?,
    ))
}

/// What one probe got.
enum Answer {
    /// What its answer matched, if anything.
    Hit(Option<Box<Hit>>),
    /// The peer closed the connection without a byte.
    ClosedEmpty,
}

#[cfg(test)]
mod tests {
    use super::*;

    const DB: &str = r#"# a comment
Exclude T:9100-9107
Probe TCP NULL q||
totalwaitms 6000
match ssh m|^SSH-([\d.]+)-OpenSSH_([\w._-]+) Debian-(\S+)\r?\n| p/OpenSSH/ v/$2 Debian $3/ i/protocol $1/ o/Linux/ cpe:/a:openbsd:openssh:$2/ cpe:/o:linux:linux_kernel/a
softmatch ftp m/^220 [-.\w ]+ftp.*\r\n$/i
match mysql m=^.\0\0\0\x0a([\w._-]+)\0=s p/MySQL/ v/$1/
match weird m|^X(..)| p/Weird/ v/$I(1,">")/ i/$P(1)/
match subst m|^V([\d_]+)\r\n| p/Subst/ v/$SUBST(1,"_",".")/
Probe TCP GetRequest q|GET / HTTP/1.0\r\n\r\n|
rarity 1
ports 80,8000-8010
sslports 443
match http m|^HTTP/1\.[01] \d\d\d .*\r\nServer: nginx/([\d.]+)|s p/nginx/ v/$1/ cpe:/a:igor_sysoev:nginx:$1/
Probe TCP Rare q|\x01\x02|
rarity 9
ports 7777
fallback GetRequest
bogus line here
match broken m|unclosed
"#;

    fn db() -> ProbeDb {
        ProbeDb::parse(Path::new("test-probes"), DB.as_bytes())
    }

    #[test]
    fn parses_probes_matches_and_reports_bad_lines_with_position() {
        let db = db();
        assert_eq!(db.counts(), (3, 6));
        assert_eq!(db.probes[1].payload, b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(db.probes[2].payload, [1, 2]);
        assert!(db.excluded(9100) && !db.excluded(9108));
        assert_eq!(db.skipped.len(), 2, "{:?}", db.skipped);
        assert!(
            db.skipped[0].starts_with("test-probes:19:1: unknown directive"),
            "{:?}",
            db.skipped
        );
        assert!(
            db.skipped[1].starts_with("test-probes:20:14: the pattern has no closing"),
            "{:?}",
            db.skipped
        );
    }

    #[test]
    fn order_is_null_then_listed_then_common() {
        let db = db();
        assert_eq!(db.order(8005, false, INTENSITY), [0, 1]);
        assert_eq!(db.order(7777, false, INTENSITY), [0, 2, 1]);
        assert_eq!(db.order(443, true, INTENSITY), [0, 1]);
        assert_eq!(db.order(1234, false, 9), [0, 1, 2]);
    }

    #[test]
    fn matches_fill_templates_and_fall_back() {
        let db = db();
        let h = db
            .judge(0, b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")
            .unwrap();
        assert_eq!(h.service, "ssh");
        assert!(!h.soft);
        assert_eq!(h.product.as_deref(), Some("OpenSSH"));
        assert_eq!(h.version.as_deref(), Some("9.2p1 Debian 2+deb12u3"));
        assert_eq!(h.extrainfo.as_deref(), Some("protocol 2.0"));
        assert_eq!(h.ostype.as_deref(), Some("Linux"));
        assert_eq!(
            h.cpe,
            ["cpe:/a:openbsd:openssh:9.2p1", "cpe:/o:linux:linux_kernel"]
        );
        let s = db.judge(0, b"220 my FTP server\r\n").unwrap();
        assert!(s.soft && s.service == "ftp");
        // Binary: `\0` in the pattern, `s` flag, the length byte any value.
        let m = db.judge(0, b"\x4a\0\0\0\x0a10.11.6-MariaDB\0rest").unwrap();
        assert_eq!(m.version.as_deref(), Some("10.11.6-MariaDB"));
        let w = db.judge(0, b"X\x01\x02").unwrap();
        assert_eq!(w.version.as_deref(), Some("258"));
        assert_eq!(w.extrainfo, None, "$P drops unprintable bytes");
        let s = db.judge(0, b"V1_2_3\r\n").unwrap();
        assert_eq!(s.version.as_deref(), Some("1.2.3"));
        // The Rare probe falls back to GetRequest's matches, then NULL's.
        let h = db
            .judge(2, b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n\r\n")
            .unwrap();
        assert_eq!((h.service.as_str(), h.probe.as_str()), ("http", "Rare"));
        assert_eq!(
            db.judge(2, b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
                .unwrap()
                .service,
            "ssh"
        );
        assert!(db.judge(1, b"nothing known").is_none());
    }

    #[test]
    fn r_peer_bytes_in_templates_are_escaped() {
        let db = ProbeDb::parse(
            Path::new("t"),
            b"Probe TCP NULL q||\nmatch x m|^(.*)$|s p/x/ v/$1/\n",
        );
        let h = db.judge(0, b"1\x1b[31m\xff").unwrap();
        assert_eq!(h.version.as_deref(), Some("1\\x1b[31m\\xff"));
    }

    #[test]
    fn a_database_without_probes_is_refused() {
        let e = ProbeDb::from_bytes(Path::new("t"), b"# nothing\n").unwrap_err();
        assert!(e.to_string().contains("no usable probes"), "{e}");
    }

    /// A peer that keeps sending cannot hold a probe past its timeout, however fast it
    /// drips (a ready read used to win every race against the expired timer).
    #[tokio::test]
    async fn r_a_dripping_peer_does_not_outlast_the_timeout() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            for _ in 0..64 {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let _ = s.write_all(b"HTTP/1.0 ").await;
                    // At most 20 s of one byte per millisecond.
                    for _ in 0..20_000 {
                        if s.write_all(b"a").await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                });
            }
        });
        let db = Arc::new(db());
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            db.identify(addr, false, Duration::from_millis(200)),
        )
        .await;
        assert!(r.is_ok(), "the probes outlasted their 200 ms by far");
    }

    #[test]
    fn unescape_rejects_short_hex() {
        assert_eq!(unescape(r"a\x41\0\r\n\\").unwrap(), b"aA\0\r\n\\");
        assert!(unescape(r"\x4").is_err());
        assert!(unescape("\\").is_err());
    }
}
