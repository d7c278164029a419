//! Renders a validated policy into one nftables table, `table inet portwarden`: a model of
//! sets and rules (so tests can ask what it admits) and its text, deterministic and
//! golden-tested. Runs nothing.
#![deny(missing_docs)]

pub mod iptables;

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use portwarden_core::addr::{AddrSet, Cidr};
use portwarden_core::policy::{FirewallMode, IcmpPolicy, Placement, Policy, ZoneKind};
use portwarden_core::{Port, PortRange, Protocol};

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
    /// Unexpired grants, re-added inside the same transaction so an apply never changes
    /// who is granted.
    pub grants: Vec<Grant>,
    /// Active leases of pool services: their ports are admitted for the service's sources.
    pub leases: Vec<LeasedPort>,
}

/// A time-limited grant: `addr` may reach `port`/`protocol` for `left` more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Source address (an IPv4-mapped IPv6 address is its IPv4 address).
    pub addr: IpAddr,
    /// Protocol.
    pub protocol: Protocol,
    /// Port.
    pub port: Port,
    /// Time left.
    pub left: Duration,
}

/// A leased port of a pool service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasedPort {
    /// The service the lease serves.
    pub service: String,
    /// Protocol.
    pub protocol: Protocol,
    /// Port.
    pub port: Port,
}

/// The longest comment nft keeps.
pub const COMMENT_MAX: usize = 128;

/// The one way a string from a policy, a peer or the store enters nft or
/// `iptables-restore` text: a double-quoted string whose bytes are only
/// `[A-Za-z0-9 _.,:/@+=*-]`; every other byte becomes `%XX` (so `%`, `"`, `\`, `;`,
/// `#`, newlines and control bytes can never end the string or start a statement), cut to
/// [`COMMENT_MAX`] bytes inside the quotes.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for b in s.bytes() {
        let piece = if b.is_ascii_alphanumeric() || b" _.,:/@+=*-".contains(&b) {
            (b as char).to_string()
        } else {
            format!("%{b:02X}")
        };
        if out.len() - 1 + piece.len() > COMMENT_MAX {
            break;
        }
        out.push_str(&piece);
    }
    out.push('"');
    out
}

/// An injective map from policy names to nft identifier text (`[a-z0-9_]`): `_` becomes
/// `__`, `-` `_d`, `.` `_p`, an upper-case letter `_u` and the letter, anything else
/// `_x<hex>_`. Distinct names give distinct identifiers (`a-b`, `a_b`, `DB` and `db`
/// included), and since no escape starts with `_v`, `_t` or `_l`, a suffix such as
/// `_v4` can never be read as part of a name.
pub fn ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            'a'..='z' | '0'..='9' => out.push(c),
            'A'..='Z' => {
                out.push_str("_u");
                out.push(c.to_ascii_lowercase());
            }
            '_' => out.push_str("__"),
            '-' => out.push_str("_d"),
            '.' => out.push_str("_p"),
            c => {
                let _ = write!(out, "_x{:x}_", c as u32);
            }
        }
    }
    out
}

/// The name of the set holding a pool service's leased ports.
pub fn lease_set(service: &str) -> String {
    format!("lease_{}", ident(service))
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
    /// Elements, as nft text (CIDRs, grants, leased ports).
    pub elements: Vec<String>,
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
    /// Accept the (protocol, port) pairs of a named set (a pool service's leased ports,
    /// changed live by `alloc`/`release`) from `sources` of `fam`.
    AcceptLeased {
        /// Family.
        fam: Fam,
        /// The set of `inet_proto . inet_service` pairs.
        set: String,
        /// Its elements at render time.
        ports: Vec<(Protocol, Port)>,
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
        let from = |sources: &Sources| match sources {
            Sources::Any => true,
            Sources::Addr(a) => *a == src,
            Sources::Set(_, cidrs) => cidrs.iter().any(|c| c.contains(src)),
        };
        self.rules.iter().any(|r| match r {
            Rule::AcceptLeased {
                fam: f,
                ports,
                sources,
                iifnames,
                ..
            } => {
                *f == fam
                    && iifnames.is_empty()
                    && ports.iter().any(|(p, n)| *p == proto && n.get() == port)
                    && from(sources)
            }
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
                    && from(sources)
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
                let _ = write!(s, " elements = {{ {} }};", set.elements.join(", "));
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
                    let _ = writeln!(
                        s,
                        "    {}{proto} dport {} counter accept comment {}",
                        match_prefix(*fam, sources, iifnames),
                        ports_text(ports),
                        quote(comment)
                    );
                }
                Rule::AcceptLeased {
                    fam,
                    set,
                    sources,
                    iifnames,
                    comment,
                    ..
                } => {
                    let _ = writeln!(
                        s,
                        "    {}meta l4proto . th dport @{set} counter accept comment {}",
                        match_prefix(*fam, sources, iifnames),
                        quote(comment)
                    );
                }
            }
        }
        let _ = writeln!(s, "  }}");
        let _ = writeln!(s, "}}");
        s
    }
}

/// The interface and source matches that open an accept rule.
fn match_prefix(fam: Fam, sources: &Sources, iifnames: &[String]) -> String {
    let mut line = String::new();
    if !iifnames.is_empty() {
        let names: Vec<String> = iifnames.iter().map(|n| quote(n)).collect();
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
    line
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
        elements: cidrs.iter().map(|c| c.to_string()).collect(),
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
        let mut elements: Vec<String> = opts
            .grants
            .iter()
            .map(|g| (canonical(g.addr), g))
            .filter(|(a, g)| {
                (if a.is_ipv4() { Fam::V4 } else { Fam::V6 }) == fam && !g.left.is_zero()
            })
            .map(|(a, g)| grant_element(a, g.protocol, g.port.get(), g.left))
            .collect();
        elements.sort();
        elements.dedup();
        sets.push(Set {
            name: format!("grants_{}", fam.suffix()),
            decl: format!(
                "type {} . inet_proto . inet_service; flags timeout;",
                fam.addr_type()
            ),
            elements,
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
        /// `svc_<ident>` or `bal_<ident>`: services and balance groups never share sets.
        id: String,
        comment: String,
        specs: Vec<(Protocol, PortRange)>,
        /// Pool services: the set of their leased ports.
        leased: Option<(String, Vec<(Protocol, Port)>)>,
        sources: AddrSet,
        iifnames: Vec<String>,
        limit: Option<u32>,
    }
    let mut entries: Vec<Entry> = Vec::new();
    for s in &policy.services {
        let Some(sources) = portwarden_core::policy::service_sources(s, &policy.zones) else {
            continue;
        };
        let specs: Vec<(Protocol, PortRange)> = s
            .fixed_ports()
            .iter()
            .map(|p| (p.protocol, p.range))
            .collect();
        let leased = match &s.placement {
            Placement::Pool(pool) => Some(policy.pool(pool)),
            Placement::Fixed(_) => None,
        }
        .map(|pool| {
            // Only what the pool could have handed out: a lease row naming another port
            // (an edited store, an older policy) is not admitted.
            let mut ports: Vec<(Protocol, Port)> = opts
                .leases
                .iter()
                .filter(|l| l.service == s.name)
                .filter(|l| {
                    pool.is_some_and(|p| p.protocol == l.protocol && p.range.contains(l.port))
                })
                .map(|l| (l.protocol, l.port))
                .collect();
            ports.sort();
            ports.dedup();
            (lease_set(&s.name), ports)
        });
        entries.push(Entry {
            id: format!("svc_{}", ident(&s.name)),
            comment: format!("service {}", s.name),
            specs,
            leased,
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
                id: format!("bal_{}", ident(&b.name)),
                comment: format!("balance {}", b.name),
                specs: vec![(
                    match b.protocol {
                        portwarden_core::policy::BalanceProtocol::Tcp => Protocol::Tcp,
                        portwarden_core::policy::BalanceProtocol::Udp => Protocol::Udp,
                    },
                    PortRange::single(p),
                )],
                leased: None,
                sources: AddrSet::any(),
                iifnames: vec![],
                limit: b.max_conn_per_source,
            });
        }
    }
    for e in entries {
        let id = &e.id;
        if let Some((set, ports)) = &e.leased {
            sets.push(Set {
                name: set.clone(),
                decl: "type inet_proto . inet_service;".into(),
                elements: ports.iter().map(|(p, n)| format!("{p} . {n}")).collect(),
            });
        }
        for fam in [Fam::V4, Fam::V6] {
            let cidrs = by_family(&e.sources, fam);
            if cidrs.is_empty() {
                continue;
            }
            let sources = sources_for(&mut sets, id, fam, cidrs);
            if let Some((set, ports)) = &e.leased {
                rules.push(Rule::AcceptLeased {
                    fam,
                    set: set.clone(),
                    ports: ports.clone(),
                    sources: sources.clone(),
                    iifnames: e.iifnames.clone(),
                    comment: e.comment.clone(),
                });
            }
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
                    comment: e.comment.clone(),
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

/// An address as the firewall matches it: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
/// is the IPv4 address its packets carry.
pub fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

fn grant_element(a: IpAddr, p: Protocol, port: u16, left: Duration) -> String {
    format!("{a} . {p} . {port} timeout {}", nft_duration(left))
}

fn fam_of(a: IpAddr) -> &'static str {
    if a.is_ipv4() { "v4" } else { "v6" }
}

/// `nft add element` lines for grants, one transaction.
pub fn grant_commands(grants: &[Grant]) -> String {
    let mut s = String::new();
    for g in grants {
        let a = canonical(g.addr);
        let _ = writeln!(
            s,
            "add element {TABLE} grants_{} {{ {} }}",
            fam_of(a),
            grant_element(a, g.protocol, g.port.get(), g.left)
        );
    }
    s
}

/// `nft delete element` lines for revocations: (source, protocol, port).
pub fn revoke_commands(grants: &[(IpAddr, Protocol, Port)]) -> String {
    let mut s = String::new();
    for (a, p, port) in grants {
        let a = canonical(*a);
        let _ = writeln!(
            s,
            "delete element {TABLE} grants_{} {{ {a} . {p} . {port} }}",
            fam_of(a)
        );
    }
    s
}

/// One nft transaction that admits newly leased ports and stops admitting released ones:
/// `add element` / `delete element` on the services' lease sets (no full re-apply).
pub fn lease_commands(added: &[LeasedPort], removed: &[LeasedPort]) -> String {
    let mut s = String::new();
    for (verb, list) in [("add", added), ("delete", removed)] {
        for l in list {
            let _ = writeln!(
                s,
                "{verb} element {TABLE} {} {{ {} . {} }}",
                lease_set(&l.service),
                l.protocol,
                l.port
            );
        }
    }
    s
}

/// The name prefix of the tables SYN scans use while they run (`portwarden_scan_PORT`,
/// family inet), apart from the firewall's own table (which `fw apply` replaces whole).
pub const SCAN_TABLE_PREFIX: &str = "portwarden_scan_";

/// The table of the SYN scan from source port `sport`: one per scan, so concurrent
/// scans never remove each other's.
pub fn scan_table(sport: u16) -> String {
    format!("inet {SCAN_TABLE_PREFIX}{sport}")
}

/// One transaction that (re)creates [`scan_table`] dropping this host's RSTs from
/// `sport`: the kernel would otherwise answer every SYN-ACK a SYN scan gets, since no
/// socket of its own made the SYN.
pub fn scan_rst_rule(sport: u16) -> String {
    let t = scan_table(sport);
    format!(
        "table {t}\ndelete table {t}\ntable {t} {{\n  chain out {{\n    type filter hook output priority filter; policy accept;\n    tcp sport {sport} tcp flags & rst == rst drop comment \"portwarden scan\"\n  }}\n}}\n"
    )
}

/// The names of the sets a listing of our table (`nft list table inet portwarden`)
/// declares: `set NAME {` directly inside the table, outside strings and comments, and
/// only names our renderer makes (`[a-z0-9_]`), so nothing a snapshot holds can reach the
/// commands built from them. Empty when the listing does not tokenize.
pub fn listed_sets(listing: &str) -> std::collections::BTreeSet<String> {
    let Ok(toks) = tokens(listing) else {
        return Default::default();
    };
    toks.windows(3)
        .filter_map(|w| match w {
            [(1, Tok::Word(set)), (1, Tok::Word(name)), (1, Tok::Open)]
                if set == "set"
                    && !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') =>
            {
                Some(name.clone())
            }
            _ => None,
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Open,
    Close,
    Semi,
}

/// nft text as (depth, token): quoted strings and `#` comments dropped, words split at
/// blanks, `;` and braces. An unterminated string or unbalanced braces are errors.
fn tokens(text: &str) -> Result<Vec<(usize, Tok)>, String> {
    let b = text.as_bytes();
    let (mut i, mut depth) = (0usize, 0usize);
    let mut out = Vec::new();
    let mut word = String::new();
    let flush = |word: &mut String, depth: usize, out: &mut Vec<(usize, Tok)>| {
        if !word.is_empty() {
            out.push((depth, Tok::Word(std::mem::take(word))));
        }
    };
    while i < b.len() {
        match b[i] {
            b'"' => {
                flush(&mut word, depth, &mut out);
                if depth == 0 {
                    return Err("the snapshot has a string outside our table".into());
                }
                match b[i + 1..].iter().position(|&x| x == b'"') {
                    Some(n) => i += n + 1,
                    None => return Err("the snapshot has an unterminated string".into()),
                }
            }
            b'#' => {
                flush(&mut word, depth, &mut out);
                i += b[i..]
                    .iter()
                    .position(|&x| x == b'\n')
                    .unwrap_or(b.len() - i);
                continue;
            }
            b'{' => {
                flush(&mut word, depth, &mut out);
                out.push((depth, Tok::Open));
                depth += 1;
            }
            b'}' => {
                flush(&mut word, depth, &mut out);
                depth = depth
                    .checked_sub(1)
                    .ok_or("the snapshot closes a block it never opened")?;
                out.push((depth, Tok::Close));
            }
            b';' => {
                flush(&mut word, depth, &mut out);
                out.push((depth, Tok::Semi));
            }
            c if c.is_ascii_whitespace() => flush(&mut word, depth, &mut out),
            c => word.push(c as char),
        }
        i += 1;
    }
    flush(&mut word, depth, &mut out);
    if depth != 0 {
        return Err("the snapshot leaves a block open".into());
    }
    Ok(out)
}

/// Commands that make the grant and lease sets of a table that declares `present` hold
/// exactly `grants` and `leases` (those whose set it has): appended to a rollback, so an
/// older table comes back with the store's grants and leases, not the ones it had then.
pub fn state_commands(
    present: &std::collections::BTreeSet<String>,
    grants: &[Grant],
    leases: &[LeasedPort],
) -> String {
    let mut s = String::new();
    let lease_sets: std::collections::BTreeSet<String> = present
        .iter()
        .filter(|n| n.starts_with("lease_"))
        .cloned()
        .collect();
    for set in ["grants_v4", "grants_v6"]
        .iter()
        .map(|n| n.to_string())
        .filter(|n| present.contains(n))
        .chain(lease_sets.iter().cloned())
    {
        let _ = writeln!(s, "flush set {TABLE} {set}");
    }
    let grants: Vec<Grant> = grants
        .iter()
        .filter(|g| present.contains(&format!("grants_{}", fam_of(canonical(g.addr)))))
        .filter(|g| !g.left.is_zero())
        .cloned()
        .collect();
    s.push_str(&grant_commands(&grants));
    let leases: Vec<LeasedPort> = leases
        .iter()
        .filter(|l| lease_sets.contains(&lease_set(&l.service)))
        .cloned()
        .collect();
    s.push_str(&lease_commands(&leases, &[]));
    s
}

/// Refuses a rollback snapshot that is anything but one definition of our table: a
/// snapshot comes from the store, and a store is not trusted to name other tables,
/// include files or define variables. Quoted strings and `#` comments are skipped; the
/// only top-level words allowed are `table inet portwarden`, before its block.
pub fn check_snapshot(text: &str) -> Result<(), String> {
    let toks = tokens(text)?;
    let mut top: Vec<&str> = Vec::new();
    let mut tables = 0;
    for (depth, t) in &toks {
        if let Tok::Word(w) = t {
            if ["include", "define", "redefine", "undefine"].contains(&w.as_str()) {
                return Err(format!("the snapshot uses `{w}`"));
            }
        }
        if *depth != 0 {
            continue;
        }
        match t {
            Tok::Word(w) => top.push(w),
            Tok::Open => {
                if top != ["table", "inet", "portwarden"] || tables > 0 {
                    return Err(format!(
                        "the snapshot defines `{}`, not one `table inet portwarden`",
                        top.join(" ")
                    ));
                }
                tables += 1;
                top.clear();
            }
            Tok::Semi if !top.is_empty() => {
                return Err(format!("the snapshot runs `{}`", top.join(" ")));
            }
            Tok::Semi | Tok::Close => {}
        }
    }
    if !top.is_empty() {
        return Err(format!("the snapshot runs `{}`", top.join(" ")));
    }
    if tables != 1 {
        return Err("the snapshot does not define our table".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
