//! Renders a validated policy into one nftables table, `table inet portwarden`: a model of
//! sets and rules (so tests can ask what it admits) and its text, deterministic and
//! golden-tested. Runs nothing.
#![deny(missing_docs)]

pub mod iptables;

use std::fmt::Write as _;
use std::net::IpAddr;

use portwarden_core::addr::{AddrSet, Cidr};
use portwarden_core::policy::{FirewallMode, IcmpPolicy, Policy, Service, ZoneKind};
use portwarden_core::{PortRange, Protocol};

/// The one table portwarden owns; other managers' tables are never touched.
pub const TABLE: &str = "inet portwarden";

/// What the renderer needs besides the policy.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The operator's SSH connection (`SSH_CONNECTION`): client address and server port,
    /// always admitted.
    pub ssh_peer: Option<(IpAddr, u16)>,
    /// The host's interfaces; zone interfaces must be among them (`None`: not checked).
    pub interfaces: Option<Vec<String>>,
}

/// Why a policy cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A zone names an interface the host does not have.
    #[error("zone `{zone}` names interface `{iface}`, which this host does not have")]
    NoSuchInterface {
        /// Zone.
        zone: String,
        /// Interface.
        iface: String,
    },
}

/// Address family of a set or rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fam {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Fam {
    fn suffix(self) -> &'static str {
        match self {
            Fam::V4 => "v4",
            Fam::V6 => "v6",
        }
    }
    fn saddr(self) -> &'static str {
        match self {
            Fam::V4 => "ip saddr",
            Fam::V6 => "ip6 saddr",
        }
    }
    fn addr_type(self) -> &'static str {
        match self {
            Fam::V4 => "ipv4_addr",
            Fam::V6 => "ipv6_addr",
        }
    }
    fn nfproto(self) -> &'static str {
        match self {
            Fam::V4 => "ipv4",
            Fam::V6 => "ipv6",
        }
    }
    fn of(c: &Cidr) -> Fam {
        if c.is_ipv4() { Fam::V4 } else { Fam::V6 }
    }
}

/// A named set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    /// Name.
    pub name: String,
    /// Its declaration body (type, flags, timeout).
    pub decl: String,
    /// Static elements (CIDRs).
    pub elements: Vec<Cidr>,
}

/// Where a rule's sources come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sources {
    /// Any address of the family.
    Any,
    /// The addresses of a named set (kept here too, for `admits`).
    Set(String, Vec<Cidr>),
    /// One address.
    Addr(IpAddr),
}

/// One accept rule of the model; other statements are kept as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// Accept `proto dport ports` from `sources` of `fam`, arriving on `iifnames` (empty:
    /// any).
    Accept {
        /// Family.
        fam: Fam,
        /// Protocol.
        proto: Protocol,
        /// Destination ports.
        ports: Vec<PortRange>,
        /// Sources.
        sources: Sources,
        /// Input interfaces (empty: any).
        iifnames: Vec<String>,
        /// Comment.
        comment: String,
    },
    /// A statement as text (state tracking, ICMP, limits, guards, logging).
    Raw(String),
}

/// The rendered table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// Named sets.
    pub sets: Vec<Set>,
    /// The input chain's rules, in order.
    pub rules: Vec<Rule>,
    /// Chain policy: drop (enforce) or accept (monitor).
    pub enforce: bool,
}

fn ports_text(ports: &[PortRange]) -> String {
    if ports.len() == 1 {
        ports[0].to_string()
    } else {
        format!(
            "{{ {} }}",
            ports
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

fn ident(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn by_family(set: &AddrSet, fam: Fam) -> Vec<Cidr> {
    set.cidrs()
        .iter()
        .copied()
        .filter(|c| Fam::of(c) == fam)
        .collect()
}

impl Ruleset {
    /// Whether a new connection from `src` to `port`/`proto` (arriving on an interface not
    /// named by any zone) is accepted by an accept rule or the loopback rule.
    pub fn admits(&self, src: IpAddr, proto: Protocol, port: u16) -> bool {
        let fam = if src.is_ipv4() { Fam::V4 } else { Fam::V6 };
        if src.is_loopback() {
            return true;
        }
        self.rules.iter().any(|r| match r {
            Rule::Accept {
                fam: f,
                proto: p,
                ports,
                sources,
                iifnames,
                ..
            } => {
                *f == fam
                    && *p == proto
                    && iifnames.is_empty()
                    && ports
                        .iter()
                        .any(|r| portwarden_core::Port::new(port).is_some_and(|x| r.contains(x)))
                    && match sources {
                        Sources::Any => true,
                        Sources::Addr(a) => *a == src,
                        Sources::Set(_, cidrs) => cidrs.iter().any(|c| c.contains(src)),
                    }
            }
            Rule::Raw(_) => false,
        })
    }

    /// The `nft -f` text: create-then-delete-then-define, one atomic transaction that
    /// replaces only our table.
    pub fn to_nft(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# generated by portwarden; do not edit: `portwarden fw plan` shows it"
        );
        let _ = writeln!(s, "table {TABLE}");
        let _ = writeln!(s, "delete table {TABLE}");
        let _ = writeln!(s, "table {TABLE} {{");
        for set in &self.sets {
            let _ = write!(s, "  set {} {{ {}", set.name, set.decl);
            if !set.elements.is_empty() {
                let els: Vec<String> = set.elements.iter().map(|c| c.to_string()).collect();
                let _ = write!(s, " elements = {{ {} }};", els.join(", "));
            }
            let _ = writeln!(s, " }}");
        }
        let _ = writeln!(s, "  chain input {{");
        let _ = writeln!(
            s,
            "    type filter hook input priority filter; policy {};",
            if self.enforce { "drop" } else { "accept" }
        );
        for r in &self.rules {
            match r {
                Rule::Raw(t) => {
                    let _ = writeln!(s, "    {t}");
                }
                Rule::Accept {
                    fam,
                    proto,
                    ports,
                    sources,
                    iifnames,
                    comment,
                } => {
                    let mut line = String::from("    ");
                    if !iifnames.is_empty() {
                        let names: Vec<String> =
                            iifnames.iter().map(|n| format!("\"{n}\"")).collect();
                        let _ = write!(line, "iifname {{ {} }} ", names.join(", "));
                    }
                    match sources {
                        Sources::Any => {
                            let _ = write!(line, "meta nfproto {} ", fam.nfproto());
                        }
                        Sources::Set(name, _) => {
                            let _ = write!(line, "{} @{name} ", fam.saddr());
                        }
                        Sources::Addr(a) => {
                            let _ = write!(line, "{} {a} ", fam.saddr());
                        }
                    }
                    let _ = write!(
                        line,
                        "{proto} dport {} counter accept comment \"{comment}\"",
                        ports_text(ports)
                    );
                    let _ = writeln!(s, "{line}");
                }
            }
        }
        let _ = writeln!(s, "  }}");
        let _ = writeln!(s, "}}");
        s
    }
}

/// Sources a service admits: its `allow_from`, else its zone's networks, else anyone
/// (external) or nobody beyond loopback (localhost).
fn service_sources(policy: &Policy, s: &Service) -> Option<AddrSet> {
    match (&s.allow_from, s.zone) {
        (Some(set), _) => Some(set.clone()),
        (None, ZoneKind::Localhost) => None,
        (None, ZoneKind::Internal) => policy
            .zones
            .get(&ZoneKind::Internal)
            .filter(|z| !z.cidrs.is_empty())
            .map(|z| z.cidrs.clone())
            .or_else(|| Some(AddrSet::any())),
        (None, ZoneKind::External) => Some(AddrSet::any()),
    }
}

/// Sources as a rule sees them: any address of the family, or a named interval set
/// `{prefix}_{v4|v6}` declared alongside (O(1) lookups however long the list).
fn sources_for(sets: &mut Vec<Set>, prefix: &str, fam: Fam, cidrs: Vec<Cidr>) -> Sources {
    if cidrs.iter().any(|c| c.is_any()) {
        return Sources::Any;
    }
    let name = format!("{prefix}_{}", fam.suffix());
    sets.push(Set {
        name: name.clone(),
        decl: format!("type {}; flags interval;", fam.addr_type()),
        elements: cidrs.clone(),
    });
    Sources::Set(name, cidrs)
}

/// Renders the policy.
pub fn render(policy: &Policy, opts: &Options) -> Result<Ruleset, RenderError> {
    if let Some(have) = &opts.interfaces {
        for (kind, zone) in &policy.zones {
            for i in &zone.interfaces {
                if !have.contains(i) && *kind != ZoneKind::Localhost {
                    return Err(RenderError::NoSuchInterface {
                        zone: kind.to_string(),
                        iface: i.clone(),
                    });
                }
            }
        }
    }
    let enforce = policy.firewall.mode == FirewallMode::Enforce;
    let mut sets = Vec::new();
    let mut rules = vec![
        Rule::Raw("ct state established,related accept".into()),
        Rule::Raw("ct state invalid counter drop".into()),
        Rule::Raw("iif \"lo\" accept".into()),
    ];
    // The management path first: nothing below can shadow it.
    let mgmt = &policy.host.management;
    for fam in [Fam::V4, Fam::V6] {
        let cidrs = by_family(&mgmt.from, fam);
        if cidrs.is_empty() {
            continue;
        }
        let sources = sources_for(&mut sets, "mgmt", fam, cidrs);
        for proto in Protocol::ALL {
            let ports: Vec<PortRange> = mgmt
                .ports
                .iter()
                .filter(|p| p.protocol == proto)
                .map(|p| p.range)
                .collect();
            if !ports.is_empty() {
                rules.push(Rule::Accept {
                    fam,
                    proto,
                    ports,
                    sources: sources.clone(),
                    iifnames: vec![],
                    comment: "management".into(),
                });
            }
        }
    }
    if let Some((peer, port)) = opts.ssh_peer {
        let fam = if peer.is_ipv4() { Fam::V4 } else { Fam::V6 };
        if let Some(p) = portwarden_core::Port::new(port) {
            rules.push(Rule::Accept {
                fam,
                proto: Protocol::Tcp,
                ports: vec![PortRange::single(p)],
                sources: Sources::Addr(peer),
                iifnames: vec![],
                comment: "current ssh session".into(),
            });
        }
    }
    // ICMP: IPv6 cannot live without neighbour discovery and packet-too-big.
    rules.push(Rule::Raw(
        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert, packet-too-big, destination-unreachable, time-exceeded, parameter-problem } accept".into(),
    ));
    match policy.firewall.icmp {
        IcmpPolicy::Essential => {
            rules.push(Rule::Raw(
                "icmp type { destination-unreachable, time-exceeded, parameter-problem } accept"
                    .into(),
            ));
            rules.push(Rule::Raw(
                "icmp type echo-request limit rate 10/second accept".into(),
            ));
            rules.push(Rule::Raw(
                "icmpv6 type echo-request limit rate 10/second accept".into(),
            ));
        }
        IcmpPolicy::Allow => {
            rules.push(Rule::Raw("meta l4proto { icmp, ipv6-icmp } accept".into()));
        }
        IcmpPolicy::Deny => {}
    }
    let guard = policy.firewall.scan_guard;
    if let Some(g) = guard {
        for fam in [Fam::V4, Fam::V6] {
            sets.push(Set {
                name: format!("blocked_{}", fam.suffix()),
                decl: format!(
                    "type {}; flags dynamic, timeout; timeout {};",
                    fam.addr_type(),
                    nft_duration(g.block.get())
                ),
                elements: vec![],
            });
            sets.push(Set {
                name: format!("scanrate_{}", fam.suffix()),
                decl: format!(
                    "type {}; flags dynamic, timeout; timeout {};",
                    fam.addr_type(),
                    nft_duration(g.window.get())
                ),
                elements: vec![],
            });
            let verdict = if enforce { "drop" } else { "" };
            rules.push(Rule::Raw(
                format!(
                    "{} @blocked_{} counter {verdict}",
                    fam.saddr(),
                    fam.suffix()
                )
                .trim_end()
                .to_string(),
            ));
        }
    }
    // Grants: per-element timeouts, changed without reloading the ruleset.
    for fam in [Fam::V4, Fam::V6] {
        sets.push(Set {
            name: format!("grants_{}", fam.suffix()),
            decl: format!(
                "type {} . inet_proto . inet_service; flags timeout;",
                fam.addr_type()
            ),
            elements: vec![],
        });
        rules.push(Rule::Raw(format!(
            "{} . meta l4proto . th dport @grants_{} counter accept comment \"grants\"",
            fam.saddr(),
            fam.suffix()
        )));
    }
    // Services: only their declared protocols, only from their sources.
    let zone_ifaces = |z: ZoneKind| -> Vec<String> {
        policy
            .zones
            .get(&z)
            .map(|z| z.interfaces.clone())
            .unwrap_or_default()
    };
    struct Entry {
        name: String,
        specs: Vec<(Protocol, PortRange)>,
        sources: AddrSet,
        iifnames: Vec<String>,
        limit: Option<u32>,
    }
    let mut entries: Vec<Entry> = Vec::new();
    for s in &policy.services {
        let Some(sources) = service_sources(policy, s) else {
            continue;
        };
        let specs: Vec<(Protocol, PortRange)> = s
            .fixed_ports()
            .iter()
            .map(|p| (p.protocol, p.range))
            .collect();
        if specs.is_empty() {
            continue; // pooled: admitted through grants or a later apply once leased
        }
        entries.push(Entry {
            name: s.name.clone(),
            specs,
            sources,
            iifnames: if s.allow_from.is_none() {
                zone_ifaces(s.zone)
            } else {
                vec![]
            },
            limit: s.max_conn_per_source,
        });
    }
    for b in &policy.balance {
        if let Some(p) = portwarden_core::Port::new(b.listen.port()) {
            entries.push(Entry {
                name: b.name.clone(),
                specs: vec![(Protocol::Tcp, PortRange::single(p))],
                sources: AddrSet::any(),
                iifnames: vec![],
                limit: b.max_conn_per_source,
            });
        }
    }
    for e in entries {
        let id = ident(&e.name);
        for fam in [Fam::V4, Fam::V6] {
            let cidrs = by_family(&e.sources, fam);
            if cidrs.is_empty() {
                continue;
            }
            let sources = sources_for(&mut sets, &format!("svc_{id}"), fam, cidrs);
            for proto in Protocol::ALL {
                let ports: Vec<PortRange> = e
                    .specs
                    .iter()
                    .filter(|(p, _)| *p == proto)
                    .map(|(_, r)| *r)
                    .collect();
                if ports.is_empty() {
                    continue;
                }
                if let (Some(n), Protocol::Tcp) = (e.limit, proto) {
                    let set = format!("conn_{id}_{}", fam.suffix());
                    sets.push(Set {
                        name: set.clone(),
                        decl: format!("type {}; flags dynamic;", fam.addr_type()),
                        elements: vec![],
                    });
                    let verdict = if enforce {
                        "reject with tcp reset"
                    } else {
                        "log prefix \"portwarden-monitor conn-limit \""
                    };
                    rules.push(Rule::Raw(format!(
                        "meta nfproto {} tcp dport {} ct state new add @{set} {{ {} ct count over {n} }} counter {verdict}",
                        fam.nfproto(),
                        ports_text(&ports),
                        fam.saddr()
                    )));
                }
                rules.push(Rule::Accept {
                    fam,
                    proto,
                    ports,
                    sources: sources.clone(),
                    iifnames: e.iifnames.clone(),
                    comment: e.name.clone(),
                });
            }
        }
    }
    if let Some(g) = guard {
        let secs = g.window.get().as_secs().max(1);
        let per_sec = u64::from(g.threshold).div_ceil(secs).max(1);
        for fam in [Fam::V4, Fam::V6] {
            let verdict = if enforce {
                "drop"
            } else {
                "log prefix \"portwarden-monitor scan-guard \""
            };
            rules.push(Rule::Raw(format!(
                "meta nfproto {} ct state new add @scanrate_{s} {{ {} limit rate over {per_sec}/second burst {} packets }} add @blocked_{s} {{ {} }} counter {verdict}",
                fam.nfproto(),
                fam.saddr(),
                g.threshold,
                fam.saddr(),
                s = fam.suffix()
            )));
        }
    }
    if !enforce {
        rules.push(Rule::Raw(
            "ct state new counter log prefix \"portwarden-monitor would-drop \"".into(),
        ));
    } else {
        rules.push(Rule::Raw("counter comment \"default drop\"".into()));
    }
    sets.sort_by(|a, b| a.name.cmp(&b.name));
    sets.dedup_by(|a, b| a.name == b.name);
    Ok(Ruleset {
        sets,
        rules,
        enforce,
    })
}

/// An nft duration: `10s`, `10m`, `1h`, `2d`.
fn nft_duration(d: std::time::Duration) -> String {
    let s = d.as_secs().max(1);
    if s % 86_400 == 0 {
        format!("{}d", s / 86_400)
    } else if s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// `nft add element` lines for grants: (source, protocol, port, lifetime).
pub fn grant_commands(grants: &[(IpAddr, Protocol, u16, std::time::Duration)]) -> String {
    let mut s = String::new();
    for (a, p, port, d) in grants {
        let fam = if a.is_ipv4() { "v4" } else { "v6" };
        let _ = writeln!(
            s,
            "add element {TABLE} grants_{fam} {{ {a} . {p} . {port} timeout {} }}",
            nft_duration(*d)
        );
    }
    s
}

/// `nft delete element` lines for revocations.
pub fn revoke_commands(grants: &[(IpAddr, Protocol, u16)]) -> String {
    let mut s = String::new();
    for (a, p, port) in grants {
        let fam = if a.is_ipv4() { "v4" } else { "v6" };
        let _ = writeln!(
            s,
            "delete element {TABLE} grants_{fam} {{ {a} . {p} . {port} }}"
        );
    }
    s
}

#[cfg(test)]
mod tests;
