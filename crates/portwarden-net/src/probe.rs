//! Protocol-aware probes of one TCP listener: what speaks there, and whether it offers or
//! requires encryption. MySQL and PostgreSQL negotiate TLS inside their own protocols, so
//! a bare TLS ClientHello would call them plaintext; each protocol gets its own question.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// How long a probe waits for each answer, in `check` and in `scan -sV`.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(400);

/// Which question to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeKind {
    /// A TLS ClientHello (HTTPS, LDAPS, implicit-TLS anything).
    Tls,
    /// Read MySQL's greeting and its `CLIENT_SSL` capability.
    Mysql,
    /// Send PostgreSQL's `SSLRequest`.
    Postgres,
    /// SMTP greeting, `EHLO`, look for `STARTTLS`.
    Smtp,
    /// FTP greeting, `FEAT`, look for `AUTH TLS`.
    Ftp,
    /// IMAP greeting, `CAPABILITY`, look for `STARTTLS`.
    Imap,
    /// Read an SSH banner.
    Ssh,
    /// Send `HEAD /`.
    Http,
    /// Send `PING`.
    Redis,
    /// Read whatever the server says first, then try TLS.
    Banner,
}

/// What the probe learned about encryption on the port: core's fact type, so the rules
/// read probe results directly.
pub use portwarden_core::hostcheck::TlsFact as TlsVerdict;

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeResult {
    /// The probe asked.
    pub kind: ProbeKind,
    /// Whether a connection was made.
    pub connected: bool,
    /// The service it looks like (catalog name), when recognised.
    pub identified: Option<String>,
    /// Encryption verdict.
    pub tls: TlsVerdict,
    /// The first line the server sent, sanitised and cut short.
    pub banner: Option<String>,
    /// The server accepted the connection but said nothing in time.
    pub stalled: bool,
    /// Product and version, where what it said names them.
    pub product: Option<crate::fingerprint::Product>,
}

impl ProbeResult {
    fn new(kind: ProbeKind) -> ProbeResult {
        ProbeResult {
            kind,
            connected: false,
            identified: None,
            tls: TlsVerdict::Unknown,
            banner: None,
            stalled: false,
            product: None,
        }
    }
}

/// The probe for a catalog service name, falling back to the banner grab.
pub fn kind_for(catalog: Option<&str>, tls_implicit: bool) -> ProbeKind {
    match catalog {
        Some("mysql" | "mysqlx" | "mysql-group-replication") => ProbeKind::Mysql,
        Some("postgresql" | "pgbouncer" | "cockroachdb") => ProbeKind::Postgres,
        Some("smtp" | "submission") => ProbeKind::Smtp,
        Some("ftp") => ProbeKind::Ftp,
        Some("imap") => ProbeKind::Imap,
        Some("ssh") => ProbeKind::Ssh,
        Some("http" | "http-alt" | "apt-cacher-ng" | "squid") => ProbeKind::Http,
        Some("redis" | "redis-sentinel") => ProbeKind::Redis,
        _ if tls_implicit => ProbeKind::Tls,
        _ => ProbeKind::Banner,
    }
}

/// A TLS 1.2/1.3 ClientHello that common servers answer with a ServerHello.
pub fn client_hello() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&[0x03, 0x03]); // legacy version TLS 1.2
    body.extend((0..32u8).map(|i| i.wrapping_mul(73).wrapping_add(11))); // random
    body.push(32); // legacy session id, for middlebox compatibility
    body.extend((0..32u8).map(|i| i.wrapping_mul(29).wrapping_add(5)));
    let suites: [u16; 13] = [
        0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0x009c, 0x009d,
        0x002f, 0x0035,
    ];
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[0x01, 0x00]); // compression: null
    let mut ext = Vec::new();
    let mut add = |typ: u16, data: &[u8]| {
        ext.extend_from_slice(&typ.to_be_bytes());
        ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
        ext.extend_from_slice(data);
    };
    add(0x002b, &[0x04, 0x03, 0x04, 0x03, 0x03]); // supported_versions: 1.3, 1.2
    add(0x000a, &[0x00, 0x06, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18]); // groups
    add(
        0x000d,
        &[
            0x00, 0x12, 0x04, 0x03, 0x05, 0x03, 0x06, 0x03, 0x08, 0x04, 0x08, 0x05, 0x08, 0x06,
            0x04, 0x01, 0x05, 0x01, 0x06, 0x01,
        ],
    ); // signature_algorithms
    add(0x000b, &[0x01, 0x00]); // ec_point_formats
    let mut ks = vec![0x00, 0x24, 0x00, 0x1d, 0x00, 0x20];
    ks.extend((0..32u8).map(|i| i.wrapping_mul(101).wrapping_add(9)));
    add(0x0033, &ks); // key_share: x25519
    add(0xff01, &[0x00]); // renegotiation_info
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// Whether the first bytes of an answer are a TLS handshake or alert record.
pub fn is_tls_answer(b: &[u8]) -> bool {
    b.len() >= 5 && matches!(b[0], 0x15 | 0x16) && b[1] == 0x03 && b[2] <= 0x04
}

/// MySQL's `CLIENT_SSL` capability bit.
pub const CLIENT_SSL: u16 = 0x0800;

/// Reads a MySQL initial handshake packet: (server version, capability flags low word).
pub fn parse_mysql_greeting(b: &[u8]) -> Option<(String, u16)> {
    if b.len() < 5 {
        return None;
    }
    let len = usize::from(b[0]) | usize::from(b[1]) << 8 | usize::from(b[2]) << 16;
    let p = b.get(4..4 + len.min(b.len() - 4))?;
    if p.first() != Some(&10) {
        return None; // protocol version 10, or an error packet (0xff)
    }
    let nul = p[1..].iter().position(|&c| c == 0)? + 1;
    let version = String::from_utf8_lossy(&p[1..nul]).into_owned();
    // thread id (4), auth-plugin-data-part-1 (8), filler (1), capability flags (2).
    let at = nul + 1 + 4 + 8 + 1;
    let caps = u16::from_le_bytes([*p.get(at)?, *p.get(at + 1)?]);
    Some((version, caps))
}

/// A banner as text: its first line, control bytes (and invalid UTF-8) as `\xNN`, cut
/// to 120 characters; a binary answer (mostly unprintable) as its length and first bytes.
pub fn sanitize(b: &[u8]) -> String {
    let line = b.split(|&c| c == b'\n').next().unwrap_or(b);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let unprintable = line
        .iter()
        .filter(|&&c| c < 0x20 && c != b'\t' || c == 0x7f)
        .count();
    if !line.is_empty() && unprintable * 4 > line.len() {
        let head: String = b.iter().take(16).map(|c| format!("{c:02x}")).collect();
        return format!("binary, {} bytes: {head}", b.len());
    }
    let mut out = String::new();
    for chunk in line.utf8_chunks() {
        for c in chunk.valid().chars() {
            if portwarden_core::diag::is_unsafe_char(c) {
                let mut buf = [0u8; 4];
                for byte in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\x{byte:02x}"));
                }
            } else {
                out.push(c);
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    let out: String = out.chars().take(120).collect();
    out.trim().to_string()
}

/// PostgreSQL's answer to `SSLRequest` is exactly one byte: `S` (TLS offered) or `N`.
/// Anything else (an SSH banner starts with `S` too) is not PostgreSQL.
pub fn postgres_ssl_reply(b: &[u8]) -> Option<TlsVerdict> {
    match b {
        [b'S'] => Some(TlsVerdict::Offered),
        [b'N'] => Some(TlsVerdict::None),
        _ => None,
    }
}

/// Whether a reply to `PING` is Redis: `+PONG`, or an error Redis gives before auth or
/// in protected mode.
pub fn is_redis_reply(b: &[u8]) -> bool {
    [
        b"+PONG".as_slice(),
        b"-NOAUTH",
        b"-DENIED",
        b"-WRONGPASS",
        b"-ERR",
    ]
    .iter()
    .any(|p| b.starts_with(p))
}

/// Whether a RESP bulk string (`$N\r\n` and N bytes) has all arrived, or is an error.
fn redis_bulk_complete(b: &[u8]) -> bool {
    if b.starts_with(b"-") {
        return b.contains(&b'\n');
    }
    let Some(nl) = b.iter().position(|&c| c == b'\n') else {
        return false;
    };
    let n: usize = std::str::from_utf8(&b[1..nl])
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    b.len() >= nl + 1 + n
}

/// One read: `Ok(n)` bytes appended (0 at end of stream), `Err(())` when time ran out.
async fn read_once(s: &mut TcpStream, t: Duration, buf: &mut Vec<u8>) -> Result<usize, ()> {
    let mut chunk = [0u8; 4096];
    match timeout(t, s.read(&mut chunk)).await {
        Ok(Ok(n)) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(n)
        }
        Ok(Err(_)) => Ok(0),
        Err(_) => Err(()),
    }
}

async fn read_some(s: &mut TcpStream, t: Duration, buf: &mut Vec<u8>) -> Option<usize> {
    read_once(s, t, buf).await.ok().filter(|&n| n > 0)
}

/// What a read loop ended with.
struct Read {
    buf: Vec<u8>,
    timed_out: bool,
}

/// Reads until `done(buf)`, the end of the stream, or the time runs out.
async fn read_until_t(s: &mut TcpStream, t: Duration, done: impl Fn(&[u8]) -> bool) -> Read {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + t;
    let mut timed_out = false;
    while !done(&buf) && buf.len() < 64 * 1024 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            timed_out = true;
            break;
        }
        match read_once(s, left, &mut buf).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(()) => {
                timed_out = true;
                break;
            }
        }
    }
    Read { buf, timed_out }
}

async fn read_until(s: &mut TcpStream, t: Duration, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    read_until_t(s, t, done).await.buf
}

fn line_complete(code: &str) -> impl Fn(&[u8]) -> bool + '_ {
    move |b: &[u8]| {
        String::from_utf8_lossy(b)
            .lines()
            .any(|l| l.starts_with(code) && l.as_bytes().get(code.len()) == Some(&b' '))
    }
}

/// Probes one listener with the given question; never takes much longer than `t` per
/// exchange.
pub async fn probe(addr: SocketAddr, kind: ProbeKind, t: Duration) -> ProbeResult {
    let mut r = ProbeResult::new(kind);
    let Ok(Ok(mut s)) = timeout(t, TcpStream::connect(addr)).await else {
        return r;
    };
    r.connected = true;
    match kind {
        ProbeKind::Tls => tls(&mut s, t, &mut r).await,
        ProbeKind::Mysql => {
            // The packet length is three bytes, little-endian.
            let b = read_until(&mut s, t, |b| {
                b.len() >= 4
                    && b.len()
                        >= 4 + (usize::from(b[0])
                            | usize::from(b[1]) << 8
                            | usize::from(b[2]) << 16)
            })
            .await;
            if !mysql_verdict(&b, &mut r) {
                r.stalled = b.is_empty();
            }
        }
        ProbeKind::Postgres => {
            let req = [0u8, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]; // length 8, code 80877103
            if s.write_all(&req).await.is_ok() {
                let mut b = Vec::new();
                if read_some(&mut s, t, &mut b).await.is_some() {
                    match postgres_ssl_reply(&b) {
                        Some(v) => {
                            r.identified = Some("postgresql".into());
                            r.tls = v;
                            r.product = Some(crate::fingerprint::Product {
                                product: "PostgreSQL DB".into(),
                                version: None,
                                extrainfo: None,
                            });
                        }
                        None => identify_banner(&b, &mut r),
                    }
                } else {
                    r.stalled = true;
                }
            }
        }
        ProbeKind::Smtp | ProbeKind::Ftp | ProbeKind::Imap => {
            starttls(&mut s, kind, t, &mut r).await
        }
        ProbeKind::Ssh => {
            let b = read_until(&mut s, t, |b| b.contains(&b'\n')).await;
            if b.starts_with(b"SSH-") {
                r.identified = Some("ssh".into());
                r.tls = TlsVerdict::Native;
                r.banner = Some(sanitize(&b));
                r.product = crate::fingerprint::ssh(&String::from_utf8_lossy(&b));
            } else {
                r.stalled = b.is_empty();
                r.banner = (!b.is_empty()).then(|| sanitize(&b));
            }
        }
        ProbeKind::Http => {
            let _ = s.write_all(&http_head(addr)).await;
            let b = read_until(&mut s, t, |b| b.windows(4).any(|w| w == b"\r\n\r\n")).await;
            classify_http(&b, &mut r);
        }
        ProbeKind::Redis => {
            let _ = s.write_all(b"PING\r\n").await;
            let b = read_until(&mut s, t, |b| b.contains(&b'\n')).await;
            if is_redis_reply(&b) {
                r.identified = Some("redis".into());
                r.tls = TlsVerdict::None;
                r.banner = Some(sanitize(&b));
                // Without a password, `INFO server` answers before any AUTH: the version.
                let mut info = String::new();
                if b.starts_with(b"+PONG") && s.write_all(b"INFO server\r\n").await.is_ok() {
                    let got = read_until(&mut s, t, redis_bulk_complete).await;
                    info = String::from_utf8_lossy(&got).into_owned();
                }
                r.product = Some(crate::fingerprint::redis_info(&info));
            } else if is_tls_answer(&b) {
                r.tls = TlsVerdict::Required;
            } else {
                r.stalled = b.is_empty();
            }
        }
        ProbeKind::Banner => {
            // Ask both questions at once so a silent service costs one timeout, not two:
            // read what the server says first, and send a ClientHello on a second
            // connection in case it waits for one.
            let second = async {
                let mut t2 = ProbeResult::new(ProbeKind::Tls);
                if let Ok(Ok(mut s2)) = timeout(t, TcpStream::connect(addr)).await {
                    tls(&mut s2, t, &mut t2).await;
                }
                t2
            };
            let (first, t2) = tokio::join!(read_until_t(&mut s, t, |b| b.contains(&b'\n')), second);
            let b = first.buf;
            if !b.is_empty() {
                identify_banner(&b, &mut r);
            } else if t2.tls == TlsVerdict::Required {
                r.tls = TlsVerdict::Required;
            } else if t2.identified.is_some() {
                r.identified = t2.identified;
                r.tls = t2.tls;
                r.banner = t2.banner;
            } else {
                // Silent until the timeout: stalled. Closed at once: it refuses to talk.
                r.stalled = first.timed_out && t2.stalled;
            }
        }
    }
    r
}

async fn tls(s: &mut TcpStream, t: Duration, r: &mut ProbeResult) {
    if s.write_all(&client_hello()).await.is_err() {
        return;
    }
    let read = read_until_t(s, t, |b| b.len() >= 5).await;
    let b = read.buf;
    if is_tls_answer(&b) {
        r.tls = TlsVerdict::Required;
    } else if b.is_empty() {
        r.stalled = read.timed_out;
    } else {
        r.tls = TlsVerdict::None;
        r.banner = Some(sanitize(&b));
    }
}

fn classify_http(b: &[u8], r: &mut ProbeResult) {
    if b.starts_with(b"HTTP/") {
        r.identified = Some("http".into());
        r.tls = TlsVerdict::None;
        r.banner = Some(sanitize(b));
        r.product = crate::fingerprint::http(&String::from_utf8_lossy(b));
    } else if b.is_empty() {
        r.stalled = true;
    } else if is_tls_answer(b) {
        r.tls = TlsVerdict::Required;
    }
}

/// Product and version from a text greeting, whichever protocol it is.
fn greeting_product(text: &str) -> Option<crate::fingerprint::Product> {
    use crate::fingerprint as f;
    let line = text.lines().next().unwrap_or("");
    if line.starts_with("SSH-") {
        f::ssh(line)
    } else if line.starts_with("@RSYNCD") {
        f::rsync(line)
    } else if line.starts_with("220") {
        f::ftp(line).or_else(|| f::smtp(line))
    } else if line.starts_with("* OK") {
        f::imap(line)
    } else {
        None
    }
}

/// A well-formed `HEAD /` (HTTP/1.1 with `Host`, which servers such as nginx insist on).
pub fn http_head(addr: SocketAddr) -> Vec<u8> {
    let host = match addr {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    format!(
        "HEAD / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: portwarden\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// A MySQL error packet (sequence 0, `0xff`, a two-byte code, the message): what a
/// server sends a client it refuses before the greeting.
pub fn parse_mysql_error(b: &[u8]) -> Option<(u16, String)> {
    let len = usize::from(*b.first()?) | usize::from(*b.get(1)?) << 8;
    if *b.get(2)? != 0 || *b.get(3)? != 0 || *b.get(4)? != 0xff || len < 3 {
        return None;
    }
    let body = b.get(5..(4 + len).min(b.len()))?;
    let code = u16::from_le_bytes([*body.first()?, *body.get(1)?]);
    // A 4.1+ server puts `#` and a five-character SQL state before the message.
    let msg = body.get(2..)?;
    let msg = match msg.first() {
        Some(b'#') => msg.get(6..).unwrap_or_default(),
        _ => msg,
    };
    let text = String::from_utf8_lossy(msg);
    // A real refusal is text about a host or a connection; anything else is not MySQL.
    (text.contains("connect") || text.contains("Host") || text.contains("host"))
        .then(|| (code, text.into_owned()))
}

/// A MySQL/MariaDB greeting is binary: what it says is its version and CLIENT_SSL, not
/// its bytes. Whether `b` was one (or the error packet of a refusal).
fn mysql_verdict(b: &[u8], r: &mut ProbeResult) -> bool {
    if let Some((code, msg)) = parse_mysql_error(b) {
        r.identified = Some("mysql".into());
        r.banner = Some(sanitize(msg.as_bytes()));
        r.product = Some(crate::fingerprint::mysql_refusal(code, &msg));
        return true;
    }
    let Some((version, caps)) = parse_mysql_greeting(b) else {
        return false;
    };
    r.identified = Some("mysql".into());
    r.banner = Some(sanitize(version.as_bytes()));
    r.product = Some(crate::fingerprint::mysql(&version));
    r.tls = if caps & CLIENT_SSL != 0 {
        TlsVerdict::Offered
    } else {
        TlsVerdict::None
    };
    true
}

fn identify_banner(b: &[u8], r: &mut ProbeResult) {
    if mysql_verdict(b, r) {
        return;
    }
    r.banner = Some(sanitize(b));
    let text = String::from_utf8_lossy(b);
    r.product = greeting_product(&text);
    let (id, tls) = if text.starts_with("SSH-") {
        ("ssh", TlsVerdict::Native)
    } else if text.starts_with("@RSYNCD") {
        ("rsync", TlsVerdict::None)
    } else if text.starts_with("220") && text.to_ascii_lowercase().contains("ftp") {
        ("ftp", TlsVerdict::Unknown)
    } else if let Some(p) = crate::fingerprint::vsftpd_oops(&text) {
        r.product = Some(p);
        ("ftp", TlsVerdict::Unknown)
    } else if text.starts_with("220") {
        ("smtp", TlsVerdict::Unknown)
    } else if text.starts_with("* OK") {
        ("imap", TlsVerdict::Unknown)
    } else {
        return;
    };
    r.identified = Some(id.into());
    r.tls = tls;
}

async fn starttls(s: &mut TcpStream, kind: ProbeKind, t: Duration, r: &mut ProbeResult) {
    let (greet_ok, cmd, done_code, marker, id): (&[u8], &[u8], &str, &str, &str) = match kind {
        ProbeKind::Smtp => (
            b"220",
            b"EHLO portwarden.invalid\r\n",
            "250",
            "STARTTLS",
            "smtp",
        ),
        ProbeKind::Ftp => (b"220", b"FEAT\r\n", "211", "AUTH TLS", "ftp"),
        _ => (b"* OK", b"a1 CAPABILITY\r\n", "a1", "STARTTLS", "imap"),
    };
    let greeting = read_until(s, t, |b| b.contains(&b'\n')).await;
    if greeting.is_empty() {
        r.stalled = true;
        return;
    }
    r.banner = Some(sanitize(&greeting));
    if !greeting.starts_with(greet_ok) {
        return;
    }
    r.product = greeting_product(&String::from_utf8_lossy(&greeting));
    r.identified = Some(id.into());
    if kind == ProbeKind::Imap && String::from_utf8_lossy(&greeting).contains(marker) {
        r.tls = TlsVerdict::Offered;
        return;
    }
    if s.write_all(cmd).await.is_err() {
        return;
    }
    let b = read_until(s, t, line_complete(done_code)).await;
    let text = String::from_utf8_lossy(&b).to_ascii_uppercase();
    r.tls = if text.contains(marker) {
        TlsVerdict::Offered
    } else if b.is_empty() {
        TlsVerdict::Unknown
    } else {
        TlsVerdict::None
    };
}

/// The banner grab (raced against a ClientHello), HTTP, Redis and PostgreSQL questions,
/// all at once on separate connections, so a silent service costs one timeout instead of
/// one per question.
async fn identify_all(addr: SocketAddr, t: Duration) -> ProbeResult {
    let (banner, http, redis, pg) = tokio::join!(
        probe(addr, ProbeKind::Banner, t),
        probe(addr, ProbeKind::Http, t),
        probe(addr, ProbeKind::Redis, t),
        probe(addr, ProbeKind::Postgres, t),
    );
    if banner.identified.is_some() || banner.tls == TlsVerdict::Required {
        return banner;
    }
    for r in [http, redis, pg] {
        if r.identified.is_some() {
            return r;
        }
    }
    banner
}

/// Identifies a service on an unknown port ([`identify_all`]), then asks a text
/// protocol recognised by its greeting its own TLS question: FTP `FEAT` for `AUTH TLS`,
/// SMTP `EHLO` and IMAP `CAPABILITY` for `STARTTLS`.
pub async fn identify(addr: SocketAddr, t: Duration) -> ProbeResult {
    let r = identify_all(addr, t).await;
    let kind = match r.identified.as_deref() {
        Some("ftp") => ProbeKind::Ftp,
        Some("smtp") => ProbeKind::Smtp,
        Some("imap") => ProbeKind::Imap,
        _ => return r,
    };
    if r.tls != TlsVerdict::Unknown {
        return r;
    }
    let asked = probe(addr, kind, t).await;
    ProbeResult {
        tls: asked.tls,
        ..r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_hello_is_well_formed() {
        let h = client_hello();
        assert_eq!(h[0], 0x16);
        let rec_len = usize::from(u16::from_be_bytes([h[3], h[4]]));
        assert_eq!(rec_len + 5, h.len());
        assert_eq!(h[5], 0x01);
        let hs_len = usize::from(h[6]) << 16 | usize::from(h[7]) << 8 | usize::from(h[8]);
        assert_eq!(hs_len + 4, rec_len);
    }

    #[test]
    fn mysql_greetings_parse() {
        let mut p = vec![10u8];
        p.extend_from_slice(b"10.11.6-MariaDB\0");
        p.extend_from_slice(&[1, 0, 0, 0]);
        p.extend_from_slice(b"abcdefgh");
        p.push(0);
        p.extend_from_slice(&(0xf7ffu16 | CLIENT_SSL).to_le_bytes());
        let mut pkt = vec![p.len() as u8, 0, 0, 0];
        pkt.extend_from_slice(&p);
        let (v, caps) = parse_mysql_greeting(&pkt).unwrap();
        assert_eq!(v, "10.11.6-MariaDB");
        assert_ne!(caps & CLIENT_SSL, 0);
        assert!(parse_mysql_greeting(b"\x05\0\0\0\xffhello").is_none());
    }

    #[test]
    fn r_detection_by_content_not_port() {
        // An SSH banner on a PostgreSQL port is not PostgreSQL.
        assert_eq!(
            postgres_ssl_reply(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"),
            None
        );
        assert_eq!(postgres_ssl_reply(b"S"), Some(TlsVerdict::Offered));
        assert_eq!(postgres_ssl_reply(b"N"), Some(TlsVerdict::None));
        let mut r = ProbeResult::new(ProbeKind::Postgres);
        identify_banner(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", &mut r);
        assert_eq!(r.identified.as_deref(), Some("ssh"));
        // MariaDB's greeting through the banner path: its version and TLS verdict.
        let mut p = vec![10u8];
        p.extend_from_slice(b"5.5.5-10.11.6-MariaDB-0+deb12u1\0");
        p.extend_from_slice(&[1, 0, 0, 0]);
        p.extend_from_slice(b"abcdefgh");
        p.push(0);
        p.extend_from_slice(&0xf7ffu16.to_le_bytes()); // every capability but CLIENT_SSL
        let mut pkt = vec![p.len() as u8, 0, 0, 0];
        pkt.extend_from_slice(&p);
        let mut r = ProbeResult::new(ProbeKind::Banner);
        identify_banner(&pkt, &mut r);
        assert_eq!(r.identified.as_deref(), Some("mysql"));
        assert_eq!(r.banner.as_deref(), Some("5.5.5-10.11.6-MariaDB-0+deb12u1"));
        assert_eq!(r.tls, TlsVerdict::None);
        let n = pkt.len();
        pkt[n - 1] |= 0x08; // CLIENT_SSL set
        let mut r = ProbeResult::new(ProbeKind::Banner);
        identify_banner(&pkt, &mut r);
        assert_eq!(r.tls, TlsVerdict::Offered);
        // Redis in protected mode.
        assert!(is_redis_reply(
            b"-DENIED Redis is running in protected mode\r\n"
        ));
        // A well-formed request.
        let h = String::from_utf8(http_head("10.0.0.1:8080".parse().unwrap())).unwrap();
        assert!(
            h.starts_with("HEAD / HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n"),
            "{h}"
        );
    }

    #[test]
    fn r_banners_escape_control_bytes() {
        assert_eq!(
            sanitize(b"220 ftp\x1b[31m ready\r\n"),
            "220 ftp\\x1b[31m ready"
        );
        assert_eq!(sanitize(b"ok \xff\xfe end"), "ok \\xff\\xfe end");
        assert!(sanitize(&[0u8, 1, 2, 3, 4, 5, 6, 7, b'a']).starts_with("binary, 9 bytes: 0001"));
    }

    #[test]
    fn tls_answers_are_recognised() {
        assert!(is_tls_answer(&[0x16, 0x03, 0x03, 0x00, 0x5a]));
        assert!(is_tls_answer(&[0x15, 0x03, 0x01, 0x00, 0x02]));
        assert!(!is_tls_answer(b"HTTP/1.1 400"));
    }
}
