//! Product and version from what a service says before authentication, like nmap
//! `-sV`: the SSH identification string, HTTP's `Server` header, the MySQL/MariaDB
//! greeting, and FTP, SMTP, IMAP and rsync greetings. Pure text parsing, no I/O.

use serde::Serialize;

/// What runs there, as precisely as the protocol says before authentication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Product {
    /// Product name, in nmap's spelling where it has one (`OpenSSH`, `nginx`,
    /// `Apache httpd`, `MariaDB`, `vsftpd`, `Postfix smtpd`, …).
    pub product: String,
    /// Version, when said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Anything else said: distribution patch level, protocol version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extrainfo: Option<String>,
}

fn p(product: &str, version: Option<&str>, extrainfo: Option<&str>) -> Product {
    // Every field, the product name included: it comes from the peer.
    let clean = |s: &str| {
        let t = portwarden_core::diag::strip_unsafe(s, 80)
            .trim()
            .to_string();
        (!t.is_empty()).then_some(t)
    };
    Product {
        product: clean(product).unwrap_or_else(|| "unknown".into()),
        version: version.and_then(clean),
        extrainfo: extrainfo.and_then(clean),
    }
}

/// An SSH identification string: `SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3`.
pub fn ssh(banner: &str) -> Option<Product> {
    let rest = banner.trim().strip_prefix("SSH-")?;
    let (proto, soft) = rest.split_once('-')?;
    let (software, comment) = match soft.split_once(' ') {
        Some((s, c)) => (s, Some(c)),
        None => (soft, None),
    };
    let (name, version) = match software.split_once('_') {
        Some((n, v)) => (n, Some(v)),
        None => (software, None),
    };
    let product = match name {
        "OpenSSH" => "OpenSSH",
        "dropbear" => "Dropbear sshd",
        other => other,
    };
    // nmap writes the distribution comment into the version, its dash as a space:
    // `9.2p1 Debian 2+deb12u3`.
    let version = match (version, comment) {
        (Some(v), Some(c)) => Some(format!("{v} {}", c.replacen('-', " ", 1))),
        (v, _) => v.map(String::from),
    };
    Some(p(
        product,
        version.as_deref(),
        Some(&format!("protocol {proto}")),
    ))
}

/// HTTP's `Server` header from a response head: `nginx/1.22.1`, `Apache/2.4.57 (Debian)`.
pub fn http(response: &str) -> Option<Product> {
    let server = response.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("server").then(|| v.trim())
    })?;
    let (token, extra) = match server.split_once(' ') {
        Some((t, e)) => (t, Some(e)),
        None => (server, None),
    };
    let (name, version) = match token.split_once('/') {
        Some((n, v)) => (n, Some(v)),
        None => (token, None),
    };
    let product = match name {
        "Apache" => "Apache httpd",
        "lighttpd" => "lighttpd",
        other => other,
    };
    Some(p(product, version, extra))
}

/// A MySQL protocol-10 greeting's version string: `8.0.36`, or MariaDB's
/// `5.5.5-10.11.6-MariaDB-0+deb12u1` (the `5.5.5-` prefix is for old clients).
pub fn mysql(version: &str) -> Product {
    let v = version.strip_prefix("5.5.5-").unwrap_or(version);
    match v.split_once("-MariaDB") {
        Some((num, rest)) => p(
            "MariaDB",
            Some(num),
            rest.strip_prefix('-').filter(|r| !r.is_empty()),
        ),
        None => {
            let (num, extra) = match v.split_once('-') {
                Some((n, e)) => (n, Some(e)),
                None => (v, None),
            };
            p("MySQL", Some(num), extra)
        }
    }
}

/// A MySQL/MariaDB error packet sent instead of the greeting (`Host … is not allowed to
/// connect`, `blocked because of many connection errors`): which server, and why.
pub fn mysql_refusal(code: u16, message: &str) -> Product {
    let name = if message.contains("MariaDB") {
        "MariaDB"
    } else {
        "MySQL"
    };
    let why = match code {
        1130 => Some("unauthorized"),
        1129 => Some("blocked - too many connection errors"),
        _ => None,
    };
    p(name, None, why)
}

/// vsftpd's `500 OOPS: …` instead of a greeting: a broken configuration.
pub fn vsftpd_oops(line: &str) -> Option<Product> {
    let why = line.trim().strip_prefix("500 OOPS: ")?;
    let why = why.strip_prefix("vsftpd: ").unwrap_or(why);
    Some(p("vsftpd", None, Some(&format!("broken: {why}"))))
}

/// Redis's `INFO server` answer (given before authentication when none is set):
/// `redis_version:7.0.15`.
pub fn redis_info(info: &str) -> Product {
    let version = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("redis_version:"));
    p("Redis key-value store", version, None)
}

/// The word after `key` in `text` (case-insensitive), if it looks like a version.
fn version_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let at = text.to_ascii_lowercase().find(&key.to_ascii_lowercase())? + key.len();
    let word = text[at..]
        .trim_start_matches([' ', '/'])
        .split(|c: char| c.is_whitespace() || c == ')' || c == ']')
        .next()?;
    word.starts_with(|c: char| c.is_ascii_digit())
        .then_some(word)
}

/// What stands in parentheses right after `word`: `Postfix (Debian/GNU)` → `Debian/GNU`.
fn paren_after<'a>(text: &'a str, word: &str) -> Option<&'a str> {
    let (_, rest) = text.split_once(word)?;
    let (inside, _) = rest.trim().strip_prefix('(')?.split_once(')')?;
    Some(inside)
}

/// An FTP `220` greeting: vsftpd, ProFTPD, Pure-FTPd.
pub fn ftp(greeting: &str) -> Option<Product> {
    let g = greeting.trim();
    if g.to_ascii_lowercase().contains("vsftpd") {
        return Some(p("vsftpd", version_after(g, "vsftpd"), None));
    }
    if g.contains("ProFTPD") {
        return Some(p("ProFTPD", version_after(g, "ProFTPD"), None));
    }
    if g.contains("Pure-FTPd") {
        return Some(p("Pure-FTPd", None, None));
    }
    None
}

/// An SMTP `220` greeting: Postfix, Exim, Sendmail.
pub fn smtp(greeting: &str) -> Option<Product> {
    let g = greeting.trim();
    if g.contains("Postfix") {
        return Some(p("Postfix smtpd", None, paren_after(g, "Postfix")));
    }
    if g.contains("Exim") {
        return Some(p("Exim smtpd", version_after(g, "Exim"), None));
    }
    if g.contains("Sendmail") {
        return Some(p("Sendmail", version_after(g, "Sendmail"), None));
    }
    None
}

/// An IMAP greeting: Dovecot, Cyrus.
pub fn imap(greeting: &str) -> Option<Product> {
    let g = greeting.trim();
    if g.contains("Dovecot") {
        return Some(p("Dovecot imapd", None, paren_after(g, "Dovecot")));
    }
    if g.contains("Cyrus") {
        return Some(p("Cyrus imapd", version_after(g, "v"), None));
    }
    None
}

/// rsync's `@RSYNCD: 31.0` greeting: the protocol version.
pub fn rsync(greeting: &str) -> Option<Product> {
    // `@RSYNCD: 32.0 sha512 sha256 …`: the protocol's major number, as nmap gives it.
    let v = greeting.trim().strip_prefix("@RSYNCD:")?.trim();
    let major = v.split(['.', ' ']).next().unwrap_or(v);
    Some(p("rsync", None, Some(&format!("protocol version {major}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pv(x: Option<Product>) -> (String, Option<String>, Option<String>) {
        let x = x.expect("recognised");
        (x.product, x.version, x.extrainfo)
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn products_and_versions_as_nmap_names_them() {
        assert_eq!(
            pv(ssh("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")),
            (
                "OpenSSH".into(),
                s("9.2p1 Debian 2+deb12u3"),
                s("protocol 2.0")
            )
        );
        assert_eq!(
            pv(ssh("SSH-2.0-dropbear_2022.83")),
            ("Dropbear sshd".into(), s("2022.83"), s("protocol 2.0"))
        );
        assert_eq!(
            pv(http("HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n")),
            ("nginx".into(), s("1.22.1"), None)
        );
        assert_eq!(
            pv(http(
                "HTTP/1.1 200 OK\r\nDate: x\r\nserver: Apache/2.4.57 (Debian)\r\n"
            )),
            ("Apache httpd".into(), s("2.4.57"), s("(Debian)"))
        );
        assert!(http("HTTP/1.1 200 OK\r\n").is_none());
        assert_eq!(
            pv(Some(mysql("5.5.5-10.11.6-MariaDB-0+deb12u1"))),
            ("MariaDB".into(), s("10.11.6"), s("0+deb12u1"))
        );
        assert_eq!(
            pv(Some(mysql("8.0.36-0ubuntu0.22.04.1"))),
            ("MySQL".into(), s("8.0.36"), s("0ubuntu0.22.04.1"))
        );
        assert_eq!(
            pv(ftp("220 (vsFTPd 3.0.3)")),
            ("vsftpd".into(), s("3.0.3"), None)
        );
        assert_eq!(
            pv(ftp("220 ProFTPD 1.3.8 Server (Debian) [::ffff:10.0.0.1]")),
            ("ProFTPD".into(), s("1.3.8"), None)
        );
        assert_eq!(
            pv(smtp("220 mx.example ESMTP Postfix (Debian/GNU)")),
            ("Postfix smtpd".into(), None, s("Debian/GNU"))
        );
        assert_eq!(
            pv(smtp("220 mx.example ESMTP Exim 4.96 Tue, 1 Dec 2026")),
            ("Exim smtpd".into(), s("4.96"), None)
        );
        assert_eq!(
            pv(imap(
                "* OK [CAPABILITY IMAP4rev1 STARTTLS] Dovecot (Debian) ready."
            )),
            ("Dovecot imapd".into(), None, s("Debian"))
        );
        assert_eq!(
            pv(rsync("@RSYNCD: 31.0\n")),
            ("rsync".into(), None, s("protocol version 31"))
        );
        assert_eq!(
            pv(rsync("@RSYNCD: 32.0 sha512 sha256 sha1 md5 md4\n")).2,
            s("protocol version 32")
        );
        assert_eq!(
            pv(Some(mysql_refusal(
                1130,
                "Host '10.0.0.2' is not allowed to connect to this MariaDB server"
            ))),
            ("MariaDB".into(), None, s("unauthorized"))
        );
        assert_eq!(
            pv(vsftpd_oops(
                "500 OOPS: vsftpd: both local and anonymous access disabled!"
            ))
            .2,
            s("broken: both local and anonymous access disabled!")
        );
        assert_eq!(
            pv(Some(redis_info(
                "$100\r\n# Server\r\nredis_version:7.0.15\r\n"
            )))
            .1,
            s("7.0.15")
        );
        assert!(ftp("220 welcome").is_none());
        // Control and format characters never reach the fields, the product included,
        // and no field is longer than 80 characters.
        assert_eq!(
            pv(ssh("SSH-2.0-Evil_1\x1b[31m")).1.as_deref(),
            Some("1[31m")
        );
        assert_eq!(pv(ssh("SSH-2.0-Op\x01en\u{202e}SSH_9.6")).0, "OpenSSH");
        let long = format!("HTTP/1.1 200 OK\r\nServer: {}\r\n", "x".repeat(20_000));
        assert_eq!(pv(http(&long)).0.len(), 80);
    }
}
