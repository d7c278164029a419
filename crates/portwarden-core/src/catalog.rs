//! The service catalog: well-known services with their ports, TLS style, sensitivity and risk,
//! compiled in from `data/catalog.toml`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::port::{Port, PortSpec, Protocol};

/// How a protocol protects its traffic, when it does.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    strum::IntoStaticStr,
    strum::EnumIter,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum TlsStyle {
    /// No encryption exists in the protocol.
    None,
    /// Its own cryptography rather than TLS (SSH, WireGuard, SMB3).
    Native,
    /// TLS from the first byte.
    Implicit,
    /// A plaintext greeting, then an upgrade command (SMTP, IMAP, FTP `AUTH TLS`).
    Starttls,
    /// TLS negotiated inside the protocol's own handshake (MySQL, PostgreSQL).
    InProtocol,
}

impl TlsStyle {
    /// Whether traffic of this protocol can be encrypted at all.
    pub fn can_encrypt(self) -> bool {
        self != TlsStyle::None
    }

    /// Lowercase name as in the catalog file.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl fmt::Display for TlsStyle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much harm disclosure of a service's data would do.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    strum::IntoStaticStr,
    strum::EnumIter,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Sensitivity {
    /// Public data (package mirrors).
    Low,
    /// Internal data.
    #[default]
    Medium,
    /// Credentials, personal or business data, cluster control.
    High,
}

impl Sensitivity {
    /// Lowercase name as written in policies.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl fmt::Display for Sensitivity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Sensitivity {
    type Err = ();
    fn from_str(s: &str) -> Result<Sensitivity, ()> {
        match s {
            "low" => Ok(Sensitivity::Low),
            "medium" => Ok(Sensitivity::Medium),
            "high" => Ok(Sensitivity::High),
            _ => Err(()),
        }
    }
}

/// One catalog entry.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct CatalogEntry {
    /// Unique name, as referenced by `catalog = "..."`.
    pub name: String,
    /// Other accepted names.
    pub aliases: Vec<String>,
    /// Human name.
    pub title: String,
    /// Ports and protocols the service uses by default.
    #[schemars(with = "Vec<String>")]
    pub ports: Vec<PortSpec>,
    /// How the protocol does TLS (or its own encryption).
    pub tls: TlsStyle,
    /// Default data sensitivity.
    pub sensitivity: Sensitivity,
    /// Whether auditors flag the service when exposed.
    pub high_risk: bool,
    /// Why it matters.
    pub note: String,
    /// Position by frequency, 1 = most often met.
    pub rank: usize,
}

impl CatalogEntry {
    /// Whether the entry uses `port`/`protocol` by default.
    pub fn uses(&self, port: Port, protocol: Protocol) -> bool {
        self.ports
            .iter()
            .any(|s| s.protocol == protocol && s.range.contains(port))
    }

    /// Transport protocols the entry uses.
    pub fn protocols(&self) -> Vec<Protocol> {
        let mut v: Vec<Protocol> = self.ports.iter().map(|s| s.protocol).collect();
        v.sort();
        v.dedup();
        v
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    service: Vec<RawEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: String,
    #[serde(default)]
    aliases: Vec<String>,
    title: String,
    ports: Vec<String>,
    tls: TlsStyle,
    sensitivity: Sensitivity,
    #[serde(default)]
    high_risk: bool,
    note: String,
}

/// The whole catalog, with lookups by name, alias and port.
#[derive(Debug)]
pub struct Catalog {
    entries: Vec<CatalogEntry>,
    by_name: BTreeMap<String, usize>,
}

/// A fault in a catalog data file.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// TOML syntax or shape.
    #[error("catalog: {0}")]
    Toml(String),
    /// A bad port spec in an entry.
    #[error("catalog entry `{name}`: {source}")]
    Port {
        /// Entry name.
        name: String,
        /// The port error.
        #[source]
        source: crate::port::PortError,
    },
    /// Two entries (or an alias) share a name.
    #[error("catalog: name `{0}` is defined twice")]
    Duplicate(String),
}

const CATALOG_TOML: &str = include_str!("../data/catalog.toml");

impl Catalog {
    /// Parses a catalog file's text.
    pub fn parse(text: &str) -> Result<Catalog, CatalogError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| CatalogError::Toml(e.to_string()))?;
        let mut entries = Vec::with_capacity(raw.service.len());
        let mut by_name = BTreeMap::new();
        for (i, r) in raw.service.into_iter().enumerate() {
            let ports = r
                .ports
                .iter()
                .map(|p| p.parse())
                .collect::<Result<Vec<PortSpec>, _>>()
                .map_err(|source| CatalogError::Port {
                    name: r.name.clone(),
                    source,
                })?;
            for n in std::iter::once(&r.name).chain(&r.aliases) {
                if by_name.insert(n.clone(), i).is_some() {
                    return Err(CatalogError::Duplicate(n.clone()));
                }
            }
            entries.push(CatalogEntry {
                name: r.name,
                aliases: r.aliases,
                title: r.title,
                ports,
                tls: r.tls,
                sensitivity: r.sensitivity,
                high_risk: r.high_risk,
                note: r.note,
                rank: i + 1,
            });
        }
        Ok(Catalog { entries, by_name })
    }

    /// The catalog compiled into the binary.
    pub fn builtin() -> &'static Catalog {
        static CATALOG: OnceLock<Catalog> = OnceLock::new();
        CATALOG.get_or_init(|| {
            // The data file is checked by a unit test; a broken one cannot ship.
            Catalog::parse(CATALOG_TOML).expect("built-in catalog is valid")
        })
    }

    /// Entry by name or alias (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&CatalogEntry> {
        self.by_name
            .get(&name.to_ascii_lowercase())
            .map(|&i| &self.entries[i])
    }

    /// All entries, by rank.
    pub fn entries(&self) -> &[CatalogEntry] {
        &self.entries
    }

    /// The most frequent entry that uses `port`/`protocol`, if any.
    pub fn by_port(&self, port: Port, protocol: Protocol) -> Option<&CatalogEntry> {
        self.entries.iter().find(|e| e.uses(port, protocol))
    }

    /// Names close to `name`, for "did you mean" hints.
    pub fn suggest(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.by_name
            .keys()
            .map(|k| (edit_distance(&name, k), k))
            .filter(|(d, k)| *d <= 2.max(k.len() / 4))
            .min()
            .map(|(_, k)| k.as_str())
    }
}

/// Levenshtein distance, for suggestions.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_parses_and_is_large_enough() {
        let c = Catalog::parse(CATALOG_TOML).unwrap();
        assert!(c.entries().len() >= 60, "{}", c.entries().len());
        for must in [
            "rsync",
            "http",
            "https",
            "ftp",
            "ftps",
            "ssh",
            "mysql",
            "postgresql",
            "redis",
            "mongodb",
            "etcd",
            "consul",
            "zookeeper",
            "kafka",
            "elasticsearch",
            "minio",
            "ceph-mon",
            "ceph-osd",
            "glusterfs",
            "drbd",
            "iscsi",
            "nfs",
            "rpcbind",
            "smb",
            "ntp",
            "dns",
            "snmp",
            "syslog",
            "node-exporter",
            "telnet",
            "rsh",
            "rlogin",
            "tftp",
            "vnc",
            "rdp",
            "x11",
            "netbios",
            "memcached",
        ] {
            assert!(c.get(must).is_some(), "catalog lacks {must}");
        }
    }

    #[test]
    fn lookups() {
        let c = Catalog::builtin();
        assert_eq!(c.get("MariaDB").unwrap().name, "mysql");
        let p = Port::new(5432).unwrap();
        assert_eq!(c.by_port(p, Protocol::Tcp).unwrap().name, "postgresql");
        assert!(c.by_port(p, Protocol::Udp).is_none());
        let osd = Port::new(6900).unwrap();
        assert_eq!(c.by_port(osd, Protocol::Tcp).unwrap().name, "ceph-osd");
        assert_eq!(c.get("mysql").unwrap().tls, TlsStyle::InProtocol);
        assert!(!c.get("telnet").unwrap().tls.can_encrypt());
        assert!(c.get("telnet").unwrap().high_risk);
        assert_eq!(c.suggest("postgress"), Some("postgres"));
        assert_eq!(c.suggest("zzzzzzzz"), None);
    }

    #[test]
    fn duplicates_are_refused() {
        let text = r#"
[[service]]
name = "a"
title = "A"
ports = ["1/tcp"]
tls = "none"
sensitivity = "low"
note = ""
[[service]]
name = "b"
aliases = ["a"]
title = "B"
ports = ["2/tcp"]
tls = "none"
sensitivity = "low"
note = ""
"#;
        assert!(matches!(
            Catalog::parse(text),
            Err(CatalogError::Duplicate(n)) if n == "a"
        ));
    }
}
