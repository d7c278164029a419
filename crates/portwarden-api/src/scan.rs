//! `scan`: what a scan found, per port, as `--json` prints it and `--diff` reads it back.
#![allow(missing_docs)]

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// One reported port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct ScannedPort {
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: String,
    pub state: String,
    pub service: Option<String>,
    /// Whether the service name comes from a probe (`probed`) or the port number (`table`).
    pub method: String,
    pub tls: Option<String>,
    pub banner: Option<String>,
    /// Certificate subject, where TLS was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_subject: Option<String>,
    /// Certificate expiry (UTC), where TLS was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_expires: Option<String>,
    /// The certificate's subject alternative names (DNS names, IP addresses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cert_names: Vec<String>,
    /// Product, version and extra information, where what the service said names them
    /// (nmap's `product`, `version`, `extrainfo`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extrainfo: Option<String>,
    /// What nmap's probe database adds (its `h/`, `o/`, `d/` and `cpe:` fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ostype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devicetype: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpe: Vec<String>,
}

impl ScannedPort {
    /// nmap's VERSION column: product, version and `(extrainfo)`.
    pub fn version_line(&self) -> Option<String> {
        let parts: Vec<String> = [
            self.product.clone(),
            self.version.clone(),
            self.extrainfo.as_ref().map(|x| format!("({x})")),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!parts.is_empty()).then(|| parts.join(" "))
    }
}

/// The `--json` document (also what `--diff` reads back).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ScanDoc {
    /// The document's version ([`crate::API_VERSION`]); absent in documents written
    /// before it was versioned.
    #[serde(default)]
    pub api: u32,
    pub args: String,
    pub protocol: String,
    pub started: i64,
    pub elapsed_ms: u64,
    pub hosts: Vec<IpAddr>,
    /// Targets that answered no discovery probe and were not scanned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts_down: Vec<IpAddr>,
    pub ports_scanned: usize,
    pub ports: Vec<ScannedPort>,
    pub closed: u64,
    pub probes: u64,
    pub self_connects: u64,
    /// Stopped by a signal before every port was settled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<Diff>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct Diff {
    pub added: Vec<ScannedPort>,
    pub removed: Vec<ScannedPort>,
}
