//! The policy model: what an operator declares about a host's ports, and its validation.
//!
//! Text becomes a [`Policy`] in two stages, like ripgrep's flags: [`tree`] turns TOML into a
//! span-carrying tree, [`parse`] reads that tree into typed values collecting every error
//! with its position, and cross-field rules run last. All errors of a file are reported.

pub mod diff;
mod parse;
pub use parse::reaches;
mod tree;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::Serialize;

use crate::addr::AddrSet;
use crate::catalog::{Catalog, Sensitivity};
use crate::diag::{SourceErrors, Span};
use crate::port::{PortRange, PortSpec, Protocol};
use crate::units::{Bandwidth, HumanDuration};

/// The policy that applies when no file is given: management SSH admitted, compliance defaults.
pub const BASELINE_TOML: &str = include_str!("../../data/baseline.toml");

/// A commented starter policy for `policy init`.
pub const STARTER_TOML: &str = include_str!("../../data/starter.toml");

/// The starter with its zones on this host's interfaces (loopback left out): the first
/// is external, the second internal; a zone with no interface to name keeps only its
/// networks (or is commented out), so `fw apply` works on any host as written.
pub fn starter_for(interfaces: &[String]) -> String {
    let quoted = |i: &str| format!("{:?}", i);
    let external = match interfaces.first() {
        Some(i) => format!("external = {{ interfaces = [{}] }}", quoted(i)),
        None => "# external = { interfaces = [\"eth0\"] }   # no interface found here".into(),
    };
    let internal = match interfaces.get(1) {
        Some(i) => format!(
            "internal = {{ interfaces = [{}], cidrs = [\"10.0.0.0/8\"] }}",
            quoted(i)
        ),
        None => "internal = { cidrs = [\"10.0.0.0/8\"] }".into(),
    };
    STARTER_TOML
        .replace(r#"external = { interfaces = ["eth0"] }"#, &external)
        .replace(
            r#"internal = { interfaces = ["eth1"], cidrs = ["10.0.0.0/8"] }"#,
            &internal,
        )
}

/// Policy language versions this build reads.
pub const SUPPORTED_VERSION: i64 = 1;

/// A validated policy.
#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    /// Language version (1).
    pub version: u32,
    /// The host itself and its management path.
    pub host: Host,
    /// Network zones by kind.
    pub zones: BTreeMap<ZoneKind, Zone>,
    /// Mirror link characteristics, for TCP buffer checks.
    pub transfer: Option<Transfer>,
    /// Port pools.
    pub pools: Vec<Pool>,
    /// Declared services.
    pub services: Vec<Service>,
    /// Compliance rule settings.
    pub compliance: Compliance,
    /// Firewall behaviour.
    pub firewall: Firewall,
    /// Load-balanced mirror groups.
    pub balance: Vec<Balance>,
    /// What the daemon may be asked to scan.
    pub scan: ScanPolicy,
    /// Where port health alerts are sent.
    pub alerts: Alerts,
    /// How changes to this policy are reviewed.
    pub change: ChangeSettings,
}

/// `[change]`: the review a change request needs.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeSettings {
    /// Approvals by actors other than the requester (1-10, default 1).
    pub approvals: u32,
    /// Whether `fw apply` of a policy no approved change proposes is refused (default
    /// false: a single administrator can still work).
    pub require_approval: bool,
    /// Run before `change apply` loads the firewall (argv, no shell); failing aborts.
    pub pre_apply: Vec<String>,
    /// Run after it; failing rolls the change back.
    pub post_apply: Vec<String>,
    /// How long a hook may run (default 60 s); past it, it is killed and has failed.
    pub hook_timeout: HumanDuration,
}

impl Default for ChangeSettings {
    fn default() -> ChangeSettings {
        ChangeSettings {
            approvals: 1,
            require_approval: false,
            pre_apply: Vec::new(),
            post_apply: Vec::new(),
            hook_timeout: HumanDuration(std::time::Duration::from_secs(60)),
        }
    }
}

/// `[host]`.
#[derive(Debug, Clone, Serialize)]
pub struct Host {
    /// Host name; `None` means the machine's own.
    pub name: Option<String>,
    /// The management path, always admitted by the firewall.
    pub management: Management,
}

/// `[host].management`.
#[derive(Debug, Clone, Serialize)]
pub struct Management {
    /// Management ports, e.g. `22/tcp`.
    pub ports: Vec<PortSpec>,
    /// Sources allowed to reach them.
    pub from: AddrSet,
}

/// The three kinds of zone exposure is judged by.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    strum::IntoStaticStr,
    strum::EnumIter,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum ZoneKind {
    /// Reachable from outside the site.
    External,
    /// Reachable from the site's own networks.
    Internal,
    /// Loopback only.
    Localhost,
}

impl ZoneKind {
    /// All kinds.
    pub const ALL: [ZoneKind; 3] = [ZoneKind::External, ZoneKind::Internal, ZoneKind::Localhost];

    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Parses a zone name.
    pub fn parse(s: &str) -> Option<ZoneKind> {
        ZoneKind::ALL.into_iter().find(|z| z.as_str() == s)
    }
}

impl fmt::Display for ZoneKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A zone: interfaces and/or networks.
#[derive(Debug, Clone, Serialize)]
pub struct Zone {
    /// Interface names (`eth0`).
    pub interfaces: Vec<String>,
    /// Networks.
    pub cidrs: AddrSet,
}

/// `[transfer]`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Transfer {
    /// Link speed.
    pub bandwidth: Bandwidth,
    /// Round-trip time.
    pub rtt: HumanDuration,
}

/// `[[pool]]`.
#[derive(Debug, Clone, Serialize)]
pub struct Pool {
    /// Unique name.
    pub name: String,
    /// All ports of the pool.
    pub range: PortRange,
    /// Protocol of its ports.
    pub protocol: Protocol,
    /// Pinned band inside `range`; automatic picks prefer the rest.
    #[serde(rename = "static")]
    pub static_band: Option<PortRange>,
    /// Lease lifetime.
    pub lease_ttl: HumanDuration,
    /// A lease with no listener this long is reclaimed.
    pub reclaim_idle: Option<HumanDuration>,
    /// Whether ports in the kernel's ephemeral range may be handed out.
    pub allow_ephemeral: bool,
    /// Where the pool is declared.
    #[serde(skip)]
    pub span: Span,
}

/// Where a service's ports come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Fixed ports.
    Fixed(Vec<PortSpec>),
    /// Allocated from the named pool.
    Pool(String),
}

/// `tls = ...` on a service.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    strum::IntoStaticStr,
    strum::EnumIter,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum TlsRequirement {
    /// Plaintext is acceptable.
    None,
    /// TLS offered, plaintext tolerated.
    Optional,
    /// Only encrypted connections.
    Required,
}

impl TlsRequirement {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// `[[service]]`.
#[derive(Debug, Clone, Serialize)]
pub struct Service {
    /// Unique name.
    pub name: String,
    /// Catalog entry name, canonical (aliases resolved).
    pub catalog: Option<String>,
    /// Ports, fixed or from a pool.
    pub placement: Placement,
    /// Transport protocols.
    pub protocols: Vec<Protocol>,
    /// Exposure zone.
    pub zone: ZoneKind,
    /// Allowed sources; `None` means the zone's own default.
    pub allow_from: Option<AddrSet>,
    /// TLS requirement.
    pub tls: TlsRequirement,
    /// Concurrent connections allowed per source address.
    pub max_conn_per_source: Option<u32>,
    /// The connections the service is built for: its ports' utilisation is counted
    /// against it (without it, only the accept queue against the backlog).
    pub max_conn: Option<u32>,
    /// Data sensitivity.
    pub sensitivity: Sensitivity,
    /// Expected owning executable (name or absolute path).
    pub process: Option<String>,
    /// Free-text owner (team, person).
    pub owner: Option<String>,
    /// Where the service is declared.
    #[serde(skip)]
    pub span: Span,
}

impl Service {
    /// Fixed ports, empty for pooled services.
    pub fn fixed_ports(&self) -> &[PortSpec] {
        match &self.placement {
            Placement::Fixed(p) => p,
            Placement::Pool(_) => &[],
        }
    }
}

/// `[compliance]`.
#[derive(Debug, Clone, Serialize)]
pub struct Compliance {
    /// Most ports reachable from outside.
    pub max_external_ports: u32,
    /// Days the ledger keeps records.
    pub ledger_retention_days: u32,
    /// Catalog names that must run with TLS.
    pub require_tls: Vec<String>,
    /// Catalog names that must not run.
    pub forbid: Vec<String>,
    /// Transport protocols that may be used.
    pub protocols: Vec<Protocol>,
    /// Pool utilisation (0-1) that raises a finding.
    pub pool_utilisation_alert: f64,
    /// A port's utilisation (0-1) that raises `port-utilisation-high`.
    pub port_utilisation_alert: f64,
    /// A port's error rate (0-1) above which `port-error-rate-high` is raised.
    pub port_error_rate_alert: f64,
}

impl Default for Compliance {
    fn default() -> Compliance {
        Compliance {
            max_external_ports: 10,
            ledger_retention_days: 180,
            require_tls: Vec::new(),
            forbid: Vec::new(),
            protocols: Protocol::ALL.to_vec(),
            pool_utilisation_alert: 0.70,
            port_utilisation_alert: 0.70,
            port_error_rate_alert: 0.01,
        }
    }
}

/// `[firewall].mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FirewallMode {
    /// Drop what the policy does not admit.
    Enforce,
    /// Count and log only.
    Monitor,
}

/// `[firewall].icmp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IcmpPolicy {
    /// The ICMP that TCP and IPv6 need (PMTU, neighbour discovery, errors, rate-limited echo).
    Essential,
    /// All ICMP.
    Allow,
    /// None beyond what IPv6 cannot live without.
    Deny,
}

/// `[firewall].scan_guard`: block sources that touch too many closed ports.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ScanGuard {
    /// New connections to distinct ports that trip the guard.
    pub threshold: u32,
    /// Within this window.
    pub window: HumanDuration,
    /// Block for this long.
    pub block: HumanDuration,
}

/// `[firewall]`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Firewall {
    /// Enforce or monitor.
    pub mode: FirewallMode,
    /// ICMP handling.
    pub icmp: IcmpPolicy,
    /// Scan guard, when set.
    pub scan_guard: Option<ScanGuard>,
}

impl Default for Firewall {
    fn default() -> Firewall {
        Firewall {
            mode: FirewallMode::Enforce,
            icmp: IcmpPolicy::Essential,
            scan_guard: None,
        }
    }
}

/// `[[balance]].algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Each backend in turn.
    RoundRobin,
    /// The backend with fewest active connections.
    LeastConn,
    /// Consistent hash of the source address.
    SourceHash,
}

impl Algorithm {
    /// The name the policy writes.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round-robin",
            Algorithm::LeastConn => "least-conn",
            Algorithm::SourceHash => "source-hash",
        }
    }
}

/// `[[balance]].health`: an active check every `interval`; `fall` failures in a row mark a
/// backend down, `rise` successes up again.
#[derive(Debug, Clone, Serialize)]
pub struct HealthCheck {
    /// Time between checks.
    pub interval: HumanDuration,
    /// Time a check may take.
    pub timeout: HumanDuration,
    /// Consecutive failures that mark a backend down.
    pub fall: u32,
    /// Consecutive successes that mark it up.
    pub rise: u32,
    /// Bytes written once connected (`"PING\r\n"`).
    pub send: Option<String>,
    /// Bytes the backend must send (first, or in answer to `send`), e.g. `@RSYNCD`.
    pub expect: Option<String>,
    /// An HTTP `GET` of this path whose status must be `status` (or 2xx/3xx).
    pub http: Option<String>,
    /// The status `http` must answer.
    pub status: Option<u16>,
}

impl Default for HealthCheck {
    fn default() -> HealthCheck {
        HealthCheck {
            interval: HumanDuration(std::time::Duration::from_secs(2)),
            timeout: HumanDuration(std::time::Duration::from_secs(1)),
            fall: 3,
            rise: 2,
            send: None,
            expect: None,
            http: None,
            status: None,
        }
    }
}

/// `[[balance]].protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BalanceProtocol {
    /// Connections, proxied.
    Tcp,
    /// Datagrams, in sessions by source.
    Udp,
}

impl BalanceProtocol {
    /// The name the policy writes.
    pub fn as_str(self) -> &'static str {
        match self {
            BalanceProtocol::Tcp => "tcp",
            BalanceProtocol::Udp => "udp",
        }
    }
}

/// `[[balance]].proxy_protocol`: the PROXY protocol header sent to backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// The text header.
    V1,
    /// The binary header.
    V2,
}

/// One node of a balance group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Relative share (default 1).
    pub weight: u32,
    /// Concurrent connections it is given at most (default: the group's `max_conn`).
    pub max_conn: Option<u32>,
}

/// `[[balance]]`: mirror nodes behind one port.
#[derive(Debug, Clone, Serialize)]
pub struct Balance {
    /// Unique name.
    pub name: String,
    /// Address the balancer listens on.
    pub listen: SocketAddr,
    /// `tcp` (the default) or `udp`.
    pub protocol: BalanceProtocol,
    /// Backend choice.
    pub algorithm: Algorithm,
    /// Primary backends.
    pub backends: Vec<Backend>,
    /// Used only when every primary is down.
    pub backup: Vec<Backend>,
    /// Health check.
    pub health: HealthCheck,
    /// Concurrent connections per source.
    pub max_conn_per_source: Option<u32>,
    /// New connections per second per source.
    pub max_rate_per_source: Option<u32>,
    /// Concurrent connections per backend (each backend's own `max_conn` wins).
    pub max_conn: Option<u32>,
    /// How long a connection waits for a backend below its `max_conn`.
    pub queue_timeout: HumanDuration,
    /// How long a connection to a backend may take.
    pub connect_timeout: HumanDuration,
    /// A connection (TCP) or session (UDP) with no bytes either way this long is closed.
    pub idle_timeout: HumanDuration,
    /// How long established connections may finish on stop.
    pub drain_timeout: HumanDuration,
    /// `TCP_NODELAY` on both sides.
    pub nodelay: bool,
    /// The PROXY protocol header sent to backends.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Clients come through a fronting balancer that sends a PROXY header (v1 or v2).
    pub accept_proxy: bool,
}

impl Balance {
    /// Primaries then backups, each with whether it is a backup.
    pub fn nodes(&self) -> impl Iterator<Item = (&Backend, bool)> {
        self.backends
            .iter()
            .map(|b| (b, false))
            .chain(self.backup.iter().map(|b| (b, true)))
    }
}

/// `[scan]`: the targets the daemon's API may be asked to scan (`POST /api/v1/scans`);
/// the CLI's `scan` is the operator's own act and is not limited by it.
#[derive(Debug, Clone, Serialize)]
pub struct ScanPolicy {
    /// Networks every scanned address must lie in (default: loopback only).
    pub targets: AddrSet,
    /// The most addresses one scan may cover.
    pub max_hosts: u32,
}

impl Default for ScanPolicy {
    fn default() -> ScanPolicy {
        ScanPolicy {
            targets: AddrSet::loopback(),
            max_hosts: 256,
        }
    }
}

/// `[alerts]`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Alerts {
    /// A URL each alert raise and clear is posted to, as JSON.
    pub webhook: Option<Webhook>,
}

/// `[alerts] webhook = "…"` and how it is delivered.
#[derive(Debug, Clone, Serialize)]
pub struct Webhook {
    /// Where.
    pub url: WebhookUrl,
    /// How long one attempt may take (connect, TLS, answer).
    pub timeout: HumanDuration,
    /// Attempts after the first, backing off 1 s, 2 s, 4 s … (at most a minute apart).
    pub retries: u32,
    /// Events waiting for delivery; more are dropped (and counted).
    pub queue: u32,
    /// Extra trust anchors (PEM) besides the system's, for a private CA.
    pub ca: Option<std::path::PathBuf>,
}

/// An `http://` or `https://` URL, parsed strictly: a host name or address, an optional
/// port, a path of visible ASCII; no credentials (they would end up in logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// `https://`.
    pub tls: bool,
    /// The host name or address (an IPv6 address without brackets).
    pub host: String,
    /// The port (443 or 80 when not written).
    pub port: u16,
    /// The path and query, starting with `/`.
    pub path: String,
}

impl std::str::FromStr for WebhookUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<WebhookUrl, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!(
                "`{}` is not an http:// or https:// URL",
                s.escape_debug()
            ));
        };
        let (auth, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if auth.contains('@') {
            return Err("credentials in a webhook URL would be written to logs and the ledger; put a secret in the path instead".into());
        }
        if path.contains('#') {
            return Err("a webhook URL has no #fragment".into());
        }
        if let Some(c) = path.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "the URL's path holds `{}`: percent-encode it",
                c.escape_debug()
            ));
        }
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = auth.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or("an IPv6 address in a URL ends with `]`")?;
            h.parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("`{}` is not an IPv6 address", h.escape_debug()))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or("`]` is followed by `:PORT`")?),
            };
            (h.to_string(), port)
        } else {
            match auth.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (auth.to_string(), None),
            }
        };
        let port = match port {
            None => default_port,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(format!("`{}` is not a port", p.escape_debug())),
            },
        };
        let host_ok = !host.is_empty()
            && (host.contains(':')
                || host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
        if !host_ok {
            return Err(format!(
                "`{}` is not a host name or address",
                host.escape_debug()
            ));
        }
        Ok(WebhookUrl {
            tls,
            host: host.to_ascii_lowercase(),
            port,
            path,
        })
    }
}

impl std::fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            write!(f, "{scheme}://{host}{}", self.path)
        } else {
            write!(f, "{scheme}://{host}:{}{}", self.port, self.path)
        }
    }
}

impl Serialize for WebhookUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Policy {
    /// Parses and validates policy text; `file` names it in diagnostics.
    pub fn parse(file: &str, src: &str, catalog: &Catalog) -> Result<Policy, SourceErrors> {
        parse::parse(src, catalog).map_err(|d| SourceErrors::new(file, src, d))
    }

    /// The built-in baseline policy.
    pub fn baseline() -> Policy {
        // A unit test proves the embedded baseline parses.
        Policy::parse("<baseline>", BASELINE_TOML, Catalog::builtin())
            .expect("built-in baseline policy is valid")
    }

    /// A service by name.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// A pool by name.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests;

/// Why `name` is not an identifier (`[A-Za-z0-9][A-Za-z0-9_.-]{0,62}`), the only names
/// the policy accepts for services, pools, balance groups and the host: they become nft
/// set names, comments and file names, so nothing in them may be syntax anywhere.
pub fn check_identifier(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    match chars.next() {
        None => return Err("it is empty".into()),
        Some(c) if !c.is_ascii_alphanumeric() => {
            return Err(format!("it starts with `{}`", c.escape_debug()));
        }
        _ => {}
    }
    if let Some(c) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(format!("`{}` is not allowed", c.escape_debug()));
    }
    if name.len() > 63 {
        return Err(format!("it is {} characters long", name.len()));
    }
    Ok(())
}

/// Why `name` is not an interface name we accept (1-15 bytes of `[A-Za-z0-9_.@-]`, not `.`
/// or `..`; no `+`, which iptables reads as a wildcard), or an nft wildcard of one (`eth*`).
pub fn check_interface(name: &str) -> Result<(), String> {
    let stem = name.strip_suffix('*').unwrap_or(name);
    if stem.is_empty() && name.is_empty() {
        return Err("it is empty".into());
    }
    if let Some(c) = stem
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '@')))
    {
        return Err(format!("`{}` is not allowed", c.escape_debug()));
    }
    if name.len() > 15 {
        return Err(format!("it is {} bytes long (at most 15)", name.len()));
    }
    if stem == "." || stem == ".." {
        return Err("`.` and `..` are not interface names".into());
    }
    Ok(())
}

/// The sources a service admits: its `allow_from`, else its zone's networks, else anyone
/// (external, or an internal zone without networks); `None` for localhost services, which
/// admit nobody beyond loopback.
pub fn service_sources(s: &Service, zones: &BTreeMap<ZoneKind, Zone>) -> Option<AddrSet> {
    match (&s.allow_from, s.zone) {
        (Some(set), _) => Some(set.clone()),
        (None, ZoneKind::Localhost) => None,
        (None, ZoneKind::Internal) => zones
            .get(&ZoneKind::Internal)
            .filter(|z| !z.cidrs.is_empty())
            .map(|z| z.cidrs.clone())
            .or_else(|| Some(AddrSet::any())),
        (None, ZoneKind::External) => Some(AddrSet::any()),
    }
}
