//! The host against its policy: where each listener is reachable from, what it is, how it
//! protects its traffic, and the rules over those facts. Also the exposure score
//! (docs/exposure.md).

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde::Serialize;

use crate::catalog::{Catalog, CatalogEntry, Sensitivity};
use crate::facts::{ExeIdentity, FirewallFacts, Interface, Socket, SocketState, Sysctls};
use crate::findings::{Finding, RuleId, Severity};
use crate::policy::{Policy, Service, TlsRequirement, ZoneKind};
use crate::port::{Port, Protocol};

/// What a probe said about encryption (a mirror of the network adapter's verdict).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsFact {
    /// Only TLS is spoken.
    Required,
    /// The protocol's own encryption (SSH).
    Native,
    /// Offered, plaintext still possible.
    Offered,
    /// Plaintext.
    None,
    /// Not probed, or the probe could not tell.
    Unknown,
}

/// A probe's outcome, as a fact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeFact {
    /// Catalog name it looked like.
    pub identified: Option<String>,
    /// Encryption verdict.
    pub tls: TlsFact,
    /// It accepted but said nothing in time.
    pub stalled: bool,
    /// First line it sent.
    pub banner: Option<String>,
}

/// A listening socket with everything known about it.
#[derive(Debug, Clone, Serialize)]
pub struct Listener {
    /// The socket (owners resolved).
    pub socket: Socket,
    /// Identities of its owning processes.
    pub identities: Vec<ExeIdentity>,
    /// The probe, for TCP listeners.
    pub probe: Option<ProbeFact>,
}

/// Everything `check` gathered.
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// Listening sockets (TCP LISTEN, unconnected bound UDP).
    pub listeners: Vec<Listener>,
    /// Interfaces and addresses.
    pub interfaces: Vec<Interface>,
    /// Kernel settings.
    pub sysctls: Sysctls,
    /// `ListenOverflows`/`ListenDrops` at the start and the end of the check.
    pub overflows: Option<((u64, u64), (u64, u64))>,
    /// Firewall state.
    pub firewall: FirewallFacts,
    /// Ports held by leases (they belong to pooled services).
    pub leased: BTreeSet<(Protocol, u16)>,
}

/// From where a listener can be reached.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Loopback only.
    Loopback,
    /// The site's own networks.
    Internal,
    /// Anyone.
    External,
}

fn in_zone(policy: &Policy, zone: ZoneKind, addr: IpAddr, iface: Option<&str>) -> bool {
    policy.zones.get(&zone).is_some_and(|z| {
        z.cidrs.contains(addr) || iface.is_some_and(|i| z.interfaces.iter().any(|n| n == i))
    })
}

/// Where a listener is reachable from, by its bind address and the policy's zones. A
/// wildcard bind is external unless every non-loopback interface is internal. Docker's
/// proxy always counts as external (published ports bypass INPUT rules).
pub fn visibility(policy: &Policy, interfaces: &[Interface], l: &Listener) -> Visibility {
    let s = &l.socket;
    if s.is_loopback_only() {
        return Visibility::Loopback;
    }
    if s.owners.iter().flatten().any(|o| o.comm == "docker-proxy") {
        return Visibility::External;
    }
    let iface_of = |a: IpAddr| {
        interfaces
            .iter()
            .find(|i| i.addrs.contains(&a))
            .map(|i| i.name.as_str())
    };
    if s.local_addr.is_unspecified() {
        let outward: Vec<&Interface> = interfaces
            .iter()
            .filter(|i| i.name != "lo" && !i.addrs.iter().all(|a| a.is_loopback()))
            .collect();
        let all_internal = !outward.is_empty()
            && outward.iter().all(|i| {
                i.addrs
                    .iter()
                    .all(|a| in_zone(policy, ZoneKind::Internal, *a, Some(&i.name)))
            });
        return if all_internal {
            Visibility::Internal
        } else {
            Visibility::External
        };
    }
    if in_zone(
        policy,
        ZoneKind::Internal,
        s.local_addr,
        iface_of(s.local_addr),
    ) {
        Visibility::Internal
    } else {
        Visibility::External
    }
}

/// The declared service owning a port, if any.
pub fn service_for(policy: &Policy, proto: Protocol, port: u16) -> Option<&Service> {
    let p = Port::new(port)?;
    policy.services.iter().find(|s| {
        s.fixed_ports()
            .iter()
            .any(|spec| spec.protocol == proto && spec.range.contains(p))
    })
}

/// The catalog entry that describes a listener: its declared service's, the probe's
/// identification, else the most frequent entry for its port.
pub fn catalog_for<'c>(
    catalog: &'c Catalog,
    policy: &Policy,
    l: &Listener,
) -> Option<&'c CatalogEntry> {
    let s = &l.socket;
    service_for(policy, s.protocol, s.local_port)
        .and_then(|svc| svc.catalog.as_deref())
        .and_then(|c| catalog.get(c))
        .or_else(|| {
            l.probe
                .as_ref()
                .and_then(|p| p.identified.as_deref())
                .and_then(|c| catalog.get(c))
        })
        .or_else(|| catalog.by_port(Port::new(s.local_port)?, s.protocol))
}

fn owners_text(l: &Listener) -> String {
    let v: Vec<String> = l
        .socket
        .owners
        .iter()
        .flatten()
        .map(|o| format!("{}/{}", o.comm, o.pid))
        .collect();
    if v.is_empty() {
        "unknown owner".into()
    } else {
        v.join(", ")
    }
}

fn subject(l: &Listener) -> String {
    format!("{}/{}", l.socket.local_port, l.socket.protocol)
}

fn owner_matches(expected: &str, l: &Listener) -> bool {
    l.socket.owners.iter().flatten().any(|o| o.runs(expected))
}

/// Every host rule, over the gathered facts.
pub fn host_findings(policy: &Policy, catalog: &Catalog, f: &HostFacts) -> Vec<Finding> {
    let mut out = Vec::new();
    let mgmt: BTreeSet<(Protocol, u16)> = policy
        .host
        .management
        .ports
        .iter()
        .flat_map(|s| s.range.iter().map(move |p| (s.protocol, p.get())))
        .collect();
    let balance: BTreeSet<u16> = policy.balance.iter().map(|b| b.listen.port()).collect();
    let mut external: BTreeSet<(Protocol, u16)> = BTreeSet::new();
    let enforced = f.firewall.our_table == Some(true)
        && policy.firewall.mode == crate::policy::FirewallMode::Enforce;
    let mut seen: BTreeSet<(Protocol, u16)> = BTreeSet::new();

    for l in &f.listeners {
        let s = &l.socket;
        let key = (s.protocol, s.local_port);
        let vis = visibility(policy, &f.interfaces, l);
        let svc = service_for(policy, s.protocol, s.local_port);
        let entry = catalog_for(catalog, policy, l);
        let managed = svc.is_some()
            || mgmt.contains(&key)
            || (s.protocol == Protocol::Tcp && balance.contains(&s.local_port))
            || f.leased.contains(&key);
        if vis == Visibility::External && (managed || !enforced) {
            external.insert(key);
        }
        let first = seen.insert(key);
        if vis != Visibility::Loopback && !managed && first {
            let risky = entry.is_some_and(|e| e.high_risk);
            out.push(Finding {
                id: RuleId::UnmanagedListener,
                severity: if risky {
                    Severity::High
                } else {
                    Severity::Medium
                },
                subject: subject(l),
                evidence: format!(
                    "{} listens on {} ({}){}",
                    owners_text(l),
                    s.local_addr,
                    match vis {
                        Visibility::External => "external",
                        _ => "internal",
                    },
                    entry.map_or(String::new(), |e| format!(", looks like {}", e.name))
                ),
                why: "a port nobody declared is a port nobody reviews, patches or firewalls".into(),
                remedy:
                    "declare it as a [[service]] in the policy, bind it to loopback, or stop it"
                        .into(),
            });
        }
        if let Some(svc) = svc {
            if let Some(expected) = &svc.process {
                let known = s.owners.as_ref().is_some_and(|o| !o.is_empty());
                if known && !owner_matches(expected, l) {
                    let ids: Vec<String> = l
                        .identities
                        .iter()
                        .map(|i| {
                            format!(
                                "{} sha256:{}",
                                i.path,
                                i.sha256.as_deref().map_or("?", |h| &h[..12.min(h.len())])
                            )
                        })
                        .collect();
                    out.push(Finding {
                        id: RuleId::ListenerIdentityChanged,
                        severity: Severity::High,
                        subject: format!("service {} ({})", svc.name, subject(l)),
                        evidence: format!(
                            "expected {expected}, held by {} [{}]",
                            owners_text(l),
                            ids.join("; ")
                        ),
                        why: "another program on a managed port can intercept or impersonate the service (port hijack)".into(),
                        remedy: format!("stop the foreign listener and start {expected}, or update the policy's `process` if the change was intended"),
                    });
                }
            }
        }
        if vis != Visibility::Loopback && first {
            if let Some(e) = entry.filter(|e| e.high_risk) {
                out.push(Finding {
                    id: RuleId::HighRiskExposed,
                    severity: if vis == Visibility::External {
                        Severity::High
                    } else {
                        Severity::Medium
                    },
                    subject: subject(l),
                    evidence: format!(
                        "{} ({}) reachable {}",
                        e.name,
                        owners_text(l),
                        match vis {
                            Visibility::External => "from outside",
                            _ => "internally",
                        }
                    ),
                    why: e.note.clone(),
                    remedy: "bind it to loopback, firewall it to named sources, or replace it"
                        .into(),
                });
            }
            tls_rules(l, svc, entry, vis, &mut out);
            if l.probe.as_ref().is_some_and(|p| p.stalled) {
                out.push(Finding {
                    id: RuleId::StalledService,
                    severity: Severity::Low,
                    subject: subject(l),
                    evidence: format!(
                        "{} accepted a connection but did not answer the probe in time",
                        owners_text(l)
                    ),
                    why: "a stalled listener holds clients' connections and may be hung".into(),
                    remedy: "check the service's health and logs".into(),
                });
            }
        }
        // Protocol mixing: the port is declared for the other protocol only.
        let other = match s.protocol {
            Protocol::Tcp => Protocol::Udp,
            Protocol::Udp => Protocol::Tcp,
        };
        if svc.is_none() && first {
            if let Some(o) = service_for(policy, other, s.local_port) {
                out.push(Finding {
                    id: RuleId::ProtocolMixing,
                    severity: Severity::Medium,
                    subject: subject(l),
                    evidence: format!("service {} declares {}/{other} only; {} has a {} socket there", o.name, s.local_port, owners_text(l), s.protocol),
                    why: "a protocol the policy did not ask for widens exposure (UDP is spoofable and amplifies)".into(),
                    remedy: format!("disable {} on the service, or declare it in the policy", s.protocol),
                });
            }
        }
    }

    // Declared services that do not listen.
    for svc in &policy.services {
        for spec in svc.fixed_ports() {
            let up = f.listeners.iter().any(|l| {
                l.socket.protocol == spec.protocol
                    && Port::new(l.socket.local_port).is_some_and(|p| spec.range.contains(p))
            });
            if !up {
                out.push(Finding {
                    id: RuleId::ServiceNotListening,
                    severity: Severity::Medium,
                    subject: format!("service {}", svc.name),
                    evidence: format!("nothing listens on {spec}"),
                    why: "a declared mirror or replica that is down breaks replication and leaves the policy stale".into(),
                    remedy: format!("start {}, or remove it from the policy", svc.name),
                });
            }
        }
    }

    let limit = policy.compliance.max_external_ports;
    if external.len() as u32 > limit {
        let list: Vec<String> = external.iter().map(|(p, n)| format!("{n}/{p}")).collect();
        out.push(Finding {
            id: RuleId::TooManyExternalPorts,
            severity: Severity::High,
            subject: "host".into(),
            evidence: format!(
                "{} ports reachable from outside (limit {limit}): {}",
                external.len(),
                list.join(", ")
            ),
            why: "every exposed port is attack surface; the compliance profile caps it".into(),
            remedy:
                "bind internal services to internal addresses or loopback, and enforce the firewall"
                    .into(),
        });
    }

    for p in &policy.pools {
        if p.allow_ephemeral {
            continue;
        }
        let n = p
            .range
            .iter()
            .filter(|&port| f.sysctls.is_ephemeral(port))
            .count();
        if n > 0 {
            out.push(Finding {
                id: RuleId::PoolInEphemeralRange,
                severity: Severity::Medium,
                subject: format!("pool {}", p.name),
                evidence: format!(
                    "{n} of its ports lie in net.ipv4.ip_local_port_range {} and are not reserved",
                    f.sysctls.ip_local_port_range.map_or("?".into(), |r| r.to_string())
                ),
                why: "the kernel hands those ports to outgoing connections, so allocated services fail to bind at random".into(),
                remedy: "run `portwarden pools reserve`, or move the pool below the ephemeral range".into(),
            });
        }
    }

    tcp_settings(policy, f, &mut out);

    if let Some(((o0, d0), (o1, d1))) = f.overflows {
        if o1 > o0 || d1 > d0 {
            out.push(Finding {
                id: RuleId::ListenOverflow,
                severity: Severity::Medium,
                subject: "host".into(),
                evidence: format!(
                    "ListenOverflows +{}, ListenDrops +{} during the check",
                    o1 - o0,
                    d1 - d0
                ),
                why: "accept queues are overflowing now: clients see connection timeouts".into(),
                remedy:
                    "raise the service's listen backlog and net.core.somaxconn, or add capacity"
                        .into(),
            });
        } else if o1 > 0 || d1 > 0 {
            out.push(Finding {
                id: RuleId::ListenOverflow,
                severity: Severity::Info,
                subject: "host".into(),
                evidence: format!("ListenOverflows {o1}, ListenDrops {d1} since boot (not rising)"),
                why: "accept queues overflowed at some point".into(),
                remedy: "watch the counters; raise backlogs if they rise".into(),
            });
        }
    }

    if !f.firewall.managers.is_empty() {
        out.push(Finding {
            id: RuleId::OtherFirewallManager,
            severity: Severity::Info,
            subject: "firewall".into(),
            evidence: format!("active: {}", f.firewall.managers.join(", ")),
            why: "an accept in portwarden's table cannot override their drops, nor their accepts ours; Docker-published ports bypass INPUT".into(),
            remedy: "make sure only one manager decides each port".into(),
        });
    }
    out
}

fn tls_rules(
    l: &Listener,
    svc: Option<&Service>,
    entry: Option<&CatalogEntry>,
    vis: Visibility,
    out: &mut Vec<Finding>,
) {
    let Some(probe) = &l.probe else { return };
    let sensitivity = svc
        .map(|s| s.sensitivity)
        .or(entry.map(|e| e.sensitivity))
        .unwrap_or(Sensitivity::Medium);
    let required = svc.is_some_and(|s| s.tls == TlsRequirement::Required);
    if sensitivity < Sensitivity::High && !required {
        return;
    }
    let can = entry.is_none_or(|e| e.tls.can_encrypt());
    let name = svc.map_or_else(
        || subject(l),
        |s| format!("service {} ({})", s.name, subject(l)),
    );
    match probe.tls {
        TlsFact::None if can => out.push(Finding {
            id: RuleId::SensitiveWithoutTls,
            severity: if vis == Visibility::External || required { Severity::High } else { Severity::Medium },
            subject: name,
            evidence: format!("the probe got a plaintext answer{}", probe.banner.as_deref().map_or(String::new(), |b| format!(": {b}"))),
            why: "credentials and data cross the network readable by anyone on the path".into(),
            remedy: "enable TLS on the service and refuse plaintext connections".into(),
        }),
        TlsFact::Offered => out.push(Finding {
            id: RuleId::TlsNotRequired,
            severity: if required { Severity::Medium } else { Severity::Low },
            subject: name,
            evidence: "TLS is offered, but the protocol lets clients continue in plaintext; the probe cannot prove it is required".into(),
            why: "a client (or an attacker in the middle) that skips the upgrade talks in cleartext".into(),
            remedy: "enforce TLS on the server side (require_secure_transport, hostssl in pg_hba.conf, smtpd_tls_security_level=encrypt)".into(),
        }),
        // A requirement nobody could check is not a pass.
        TlsFact::Unknown if required => out.push(Finding {
            id: RuleId::TlsUnverified,
            severity: Severity::Medium,
            subject: name,
            evidence: match (&probe.identified, probe.stalled, &probe.banner) {
                (_, true, _) => "the service accepted the probe but said nothing in time, so TLS could not be checked".into(),
                (Some(id), _, _) => format!("the probe recognised {id} but could not tell whether TLS is required"),
                (None, _, Some(b)) => format!("the probe could not read the answer, so TLS could not be checked: {b}"),
                (None, _, None) => "the probe got no answer (refused, closed or timed out), so TLS could not be checked".into(),
            },
            why: "the policy requires TLS here, and nothing shows the service enforces it".into(),
            remedy: "make sure the listener answers this host's probe (or probe it from an allowed source), and check that it refuses plaintext".into(),
        }),
        _ => {}
    }
}

fn tcp_settings(policy: &Policy, f: &HostFacts, out: &mut Vec<Finding>) {
    let s = &f.sysctls;
    let mut push = |what: &str, sev: Severity, evidence: String, why: &str, remedy: String| {
        out.push(Finding {
            id: RuleId::TcpSettings,
            severity: sev,
            subject: what.to_string(),
            evidence,
            why: why.to_string(),
            remedy,
        });
    };
    if s.tcp_window_scaling == Some(false) {
        push(
            "net.ipv4.tcp_window_scaling",
            Severity::High,
            "window scaling is off".into(),
            "without it a TCP window cannot exceed 64 KiB: one mirror transfer over 40 ms moves at most 13 Mbit/s",
            "sysctl -w net.ipv4.tcp_window_scaling=1".into(),
        );
    }
    let Some(t) = policy.transfer else { return };
    let bdp = t.bandwidth.bdp_bytes(t.rtt.get());
    for (name, key, max, auto) in [
        (
            "net.core.rmem_max / net.ipv4.tcp_rmem",
            "tcp_rmem",
            s.rmem_max,
            s.tcp_rmem.map(|v| v[2]),
        ),
        (
            "net.core.wmem_max / net.ipv4.tcp_wmem",
            "tcp_wmem",
            s.wmem_max,
            s.tcp_wmem.map(|v| v[2]),
        ),
    ] {
        // Autotuning is bounded by tcp_[rw]mem max; rmem_max bounds explicit setsockopt.
        let limit = auto.unwrap_or(0).max(max.unwrap_or(0));
        if limit > 0 && limit < bdp {
            push(
                name,
                Severity::Medium,
                format!(
                    "largest buffer {limit} bytes, bandwidth-delay product of {} × {} is {bdp} bytes",
                    t.bandwidth, t.rtt
                ),
                "a buffer smaller than the BDP caps every transfer below the link speed",
                format!(
                    "raise the max to at least {bdp} (e.g. sysctl -w net.ipv4.{key}='4096 131072 {bdp}')"
                ),
            );
        }
    }
    if let Some(somax) = s.somaxconn {
        let capped: Vec<String> = f
            .listeners
            .iter()
            .filter(|l| l.socket.state == SocketState::Listen && l.socket.send_q >= somax)
            .map(subject)
            .collect();
        if !capped.is_empty() {
            push(
                "net.core.somaxconn",
                Severity::Low,
                format!(
                    "somaxconn {somax} caps the backlog of {}",
                    capped.join(", ")
                ),
                "the kernel silently truncates larger listen backlogs; bursts of replica reconnects overflow",
                format!("raise net.core.somaxconn above {somax} if those services ask for more"),
            );
        }
    }
    if let Some(k) = s.tcp_keepalive_time {
        if k > 600 {
            push(
                "net.ipv4.tcp_keepalive_time",
                Severity::Low,
                format!("{k} s before the first keepalive probe"),
                "a replication link through a NAT or firewall that forgets idle flows dies silently long before that",
                "set it to 300 or less (or enable keepalives in the replication software)".into(),
            );
        }
    }
}

/// One port's exposure score and its parts.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Exposure {
    /// Port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Visibility.
    pub visibility: Visibility,
    /// Catalog name, if known.
    pub service: Option<String>,
    /// The score (0 for loopback).
    pub score: f64,
}

/// The exposure score of every listening port, and the host total (docs/exposure.md):
/// `visibility × protocol × (risk + sensitivity) × encryption`.
pub fn exposure(policy: &Policy, catalog: &Catalog, f: &HostFacts) -> (Vec<Exposure>, f64) {
    let mut seen = BTreeSet::new();
    let mut rows = Vec::new();
    for l in &f.listeners {
        let s = &l.socket;
        if !seen.insert((s.protocol, s.local_port)) {
            continue;
        }
        let vis = visibility(policy, &f.interfaces, l);
        let entry = catalog_for(catalog, policy, l);
        let svc = service_for(policy, s.protocol, s.local_port);
        let v = match vis {
            Visibility::Loopback => 0.0_f64,
            Visibility::Internal => 1.0,
            Visibility::External => 3.0,
        };
        let p = match s.protocol {
            Protocol::Tcp => 1.0,
            Protocol::Udp => 1.5,
        };
        let r = match entry {
            Some(e) if e.high_risk => 3.0,
            Some(_) => 1.0,
            None => 2.0,
        };
        let sens = svc
            .map(|s| s.sensitivity)
            .or(entry.map(|e| e.sensitivity))
            .unwrap_or(Sensitivity::Medium);
        let sv = match sens {
            Sensitivity::Low => 1.0,
            Sensitivity::Medium => 2.0,
            Sensitivity::High => 3.0,
        };
        let e = match l.probe.as_ref().map(|p| p.tls) {
            Some(TlsFact::Required | TlsFact::Native) => 0.5,
            Some(TlsFact::Offered) => 0.75,
            _ => 1.0,
        };
        let score = (v * p * (r + sv) * e * 10.0).round() / 10.0;
        rows.push(Exposure {
            port: s.local_port,
            protocol: s.protocol,
            visibility: vis,
            service: entry.map(|e| e.name.clone()),
            score,
        });
    }
    let total = (rows.iter().map(|r| r.score).sum::<f64>() * 10.0).round() / 10.0;
    (rows, total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::*;

    fn ids(f: &HostFacts) -> Vec<(RuleId, String)> {
        let mut v: Vec<(RuleId, String)> = host_findings(&policy(), Catalog::builtin(), f)
            .into_iter()
            .map(|f| (f.id, f.subject))
            .collect();
        v.sort();
        v
    }

    /// Findings that every scenario shares (the TCP buffers are below the 50 MB BDP and
    /// keepalive is 2 h on the test host).
    fn baseline_noise() -> Vec<(RuleId, String)> {
        ids(&facts(healthy()))
    }

    #[test]
    fn the_healthy_host_only_has_its_tcp_advice() {
        let got = baseline_noise();
        let rules: BTreeSet<RuleId> = got.iter().map(|(r, _)| *r).collect();
        assert_eq!(
            rules,
            [RuleId::TcpSettings, RuleId::PoolInEphemeralRange].into(),
            "{got:?}"
        );
    }

    fn extra(mutate: impl FnOnce(&mut HostFacts)) -> Vec<(RuleId, String)> {
        let mut f = facts(healthy());
        mutate(&mut f);
        let base: BTreeSet<_> = baseline_noise().into_iter().collect();
        ids(&f).into_iter().filter(|x| !base.contains(x)).collect()
    }

    #[test]
    fn each_rule_fires_exactly_when_it_should() {
        type Case = (
            &'static str,
            Box<dyn FnOnce(&mut HostFacts)>,
            Vec<(RuleId, &'static str)>,
        );
        let cases: Vec<Case> = vec![
            (
                "unmanaged external listener",
                Box::new(|f: &mut HostFacts| {
                    f.listeners.push(listener(
                        Protocol::Tcp,
                        "0.0.0.0",
                        8080,
                        "python3",
                        Some((TlsFact::None, Some("http"))),
                    ))
                }),
                vec![(RuleId::UnmanagedListener, "8080/tcp")],
            ),
            (
                "loopback listener is not unmanaged",
                Box::new(|f: &mut HostFacts| {
                    f.listeners
                        .push(listener(Protocol::Tcp, "127.0.0.1", 8081, "python3", None))
                }),
                vec![],
            ),
            (
                "leased port is managed",
                Box::new(|f: &mut HostFacts| {
                    f.leased.insert((Protocol::Tcp, 32001));
                    f.listeners
                        .push(listener(Protocol::Tcp, "10.0.0.5", 32001, "cache", None));
                }),
                vec![],
            ),
            (
                "declared service down",
                Box::new(|f: &mut HostFacts| f.listeners.retain(|l| l.socket.local_port != 873)),
                vec![(RuleId::ServiceNotListening, "service mirror")],
            ),
            (
                "hijacked port",
                Box::new(|f: &mut HostFacts| {
                    f.listeners[0] = listener(
                        Protocol::Tcp,
                        "10.0.0.5",
                        3306,
                        "nc",
                        Some((TlsFact::Required, None)),
                    );
                }),
                vec![(RuleId::ListenerIdentityChanged, "service db (3306/tcp)")],
            ),
            (
                "high-risk service exposed",
                Box::new(|f: &mut HostFacts| {
                    f.listeners
                        .push(listener(Protocol::Tcp, "0.0.0.0", 23, "telnetd", None))
                }),
                vec![
                    (RuleId::HighRiskExposed, "23/tcp"),
                    (RuleId::UnmanagedListener, "23/tcp"),
                ],
            ),
            (
                "plaintext mysql where TLS is required",
                Box::new(|f: &mut HostFacts| {
                    f.listeners[0].probe = Some(ProbeFact {
                        identified: Some("mysql".into()),
                        tls: TlsFact::None,
                        stalled: false,
                        banner: None,
                    })
                }),
                vec![(RuleId::SensitiveWithoutTls, "service db (3306/tcp)")],
            ),
            (
                "mysql offers TLS but may not require it",
                Box::new(|f: &mut HostFacts| {
                    f.listeners[0].probe = Some(ProbeFact {
                        identified: Some("mysql".into()),
                        tls: TlsFact::Offered,
                        stalled: false,
                        banner: None,
                    })
                }),
                vec![(RuleId::TlsNotRequired, "service db (3306/tcp)")],
            ),
            (
                "required TLS the probe could not settle",
                Box::new(|f: &mut HostFacts| {
                    f.listeners[0].probe = Some(ProbeFact {
                        identified: None,
                        tls: TlsFact::Unknown,
                        stalled: false,
                        banner: None,
                    })
                }),
                vec![(RuleId::TlsUnverified, "service db (3306/tcp)")],
            ),
            (
                "udp on a tcp-only port",
                Box::new(|f: &mut HostFacts| {
                    f.listeners
                        .push(listener(Protocol::Udp, "10.0.0.5", 873, "rsync", None))
                }),
                vec![
                    (RuleId::ProtocolMixing, "873/udp"),
                    (RuleId::UnmanagedListener, "873/udp"),
                ],
            ),
            (
                "window scaling off",
                Box::new(|f: &mut HostFacts| f.sysctls.tcp_window_scaling = Some(false)),
                vec![(RuleId::TcpSettings, "net.ipv4.tcp_window_scaling")],
            ),
            (
                "overflows rising",
                Box::new(|f: &mut HostFacts| f.overflows = Some(((5, 5), (9, 9)))),
                vec![(RuleId::ListenOverflow, "host")],
            ),
            (
                "stalled service",
                Box::new(|f: &mut HostFacts| f.listeners[1].probe.as_mut().unwrap().stalled = true),
                vec![(RuleId::StalledService, "873/tcp")],
            ),
            (
                "other firewall manager",
                Box::new(|f: &mut HostFacts| f.firewall.managers = vec!["docker".into()]),
                vec![(RuleId::OtherFirewallManager, "firewall")],
            ),
        ];
        for (name, mutate, want) in cases {
            let got = extra(mutate);
            let mut want: Vec<(RuleId, String)> =
                want.into_iter().map(|(r, s)| (r, s.to_string())).collect();
            want.sort();
            assert_eq!(got, want, "{name}");
        }
    }

    /// Issue 10, item 16: `tls = "required"` and a probe that settled nothing.
    #[test]
    fn r_tls_unverified() {
        let unsettled = |identified: Option<&str>, stalled: bool, banner: Option<&str>| ProbeFact {
            identified: identified.map(str::to_string),
            tls: TlsFact::Unknown,
            stalled,
            banner: banner.map(str::to_string),
        };
        // Refused or closed at once; timed out; a banner the probe cannot read; a service
        // recognised but whose TLS the probe could not tell.
        let cases = [
            (unsettled(None, false, None), "no answer"),
            (unsettled(None, true, None), "said nothing in time"),
            (
                unsettled(None, false, Some("?junk")),
                "could not read the answer",
            ),
            (unsettled(Some("mysql"), false, None), "recognised mysql"),
        ];
        for (probe, evidence) in cases {
            let mut f = facts(healthy());
            f.listeners[0].probe = Some(probe);
            let got: Vec<Finding> = host_findings(&policy(), Catalog::builtin(), &f)
                .into_iter()
                .filter(|x| x.id == RuleId::TlsUnverified)
                .collect();
            assert_eq!(got.len(), 1, "{evidence}: {got:?}");
            assert_eq!(got[0].severity, Severity::Medium);
            assert_eq!(got[0].subject, "service db (3306/tcp)");
            assert!(got[0].evidence.contains(evidence), "{}", got[0].evidence);
        }
        // A service that does not require TLS is not judged on an unknown answer.
        let mut f = facts(healthy());
        f.listeners[1].probe = Some(unsettled(None, false, None));
        assert!(
            !host_findings(&policy(), Catalog::builtin(), &f)
                .iter()
                .any(|x| x.id == RuleId::TlsUnverified)
        );
    }

    #[test]
    fn too_many_external_ports_counts_what_is_reachable() {
        let mut f = facts(healthy());
        for p in 0..10 {
            f.listeners
                .push(listener(Protocol::Tcp, "0.0.0.0", 9000 + p, "x", None));
        }
        let got = ids(&f);
        assert!(
            got.contains(&(RuleId::TooManyExternalPorts, "host".into())),
            "{got:?}"
        );
        // Internal binds do not count.
        let mut f = facts(healthy());
        for p in 0..10 {
            f.listeners
                .push(listener(Protocol::Tcp, "10.0.0.5", 9000 + p, "x", None));
        }
        assert!(
            !ids(&f)
                .iter()
                .any(|(r, _)| *r == RuleId::TooManyExternalPorts)
        );
    }

    #[test]
    fn visibility_follows_bind_address_and_zones() {
        let p = policy();
        let f = facts(vec![]);
        let v = |addr: &str| {
            visibility(
                &p,
                &f.interfaces,
                &listener(Protocol::Tcp, addr, 1, "x", None),
            )
        };
        assert_eq!(v("127.0.0.1"), Visibility::Loopback);
        assert_eq!(v("::1"), Visibility::Loopback);
        assert_eq!(v("10.0.0.5"), Visibility::Internal);
        assert_eq!(v("192.0.2.10"), Visibility::External);
        assert_eq!(v("0.0.0.0"), Visibility::External, "eth0 is not internal");
        let mut docker = listener(Protocol::Tcp, "10.0.0.5", 8080, "docker-proxy", None);
        docker.socket.owners.as_mut().unwrap()[0].comm = "docker-proxy".into();
        assert_eq!(visibility(&p, &f.interfaces, &docker), Visibility::External);
    }

    #[test]
    fn exposure_score_follows_the_formula() {
        let p = policy();
        let f = facts(healthy());
        let (rows, total) = exposure(&p, Catalog::builtin(), &f);
        let score = |port: u16| rows.iter().find(|r| r.port == port).unwrap().score;
        // rsync: external 3 × tcp 1 × (risk 1 + low 1) × plaintext 1 = 6
        assert_eq!(score(873), 6.0);
        // mysql: internal 1 × tcp 1 × (1 + high 3) × required 0.5 = 2
        assert_eq!(score(3306), 2.0);
        // dns: internal 1 × udp 1.5 × (1 + low 1) × unprobed 1 = 3
        assert_eq!(score(53), 3.0);
        // redis on loopback: 0
        assert_eq!(score(6379), 0.0);
        // ssh: external 3 × 1 × (1 + 3) × native 0.5 = 6
        assert_eq!(score(22), 6.0);
        assert_eq!(total, 17.0);
    }
}

/// The executable now owning a managed port, as recorded between checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortIdentity {
    /// Protocol.
    pub protocol: Protocol,
    /// Port.
    pub port: u16,
    /// Executable path.
    pub exe: String,
    /// SHA-256 of the executable.
    pub sha256: Option<String>,
}

/// The identities to record: the first owner of every managed (declared or leased) port.
pub fn managed_identities(policy: &Policy, f: &HostFacts) -> Vec<PortIdentity> {
    let mut out: Vec<PortIdentity> = Vec::new();
    for l in &f.listeners {
        let s = &l.socket;
        let managed = service_for(policy, s.protocol, s.local_port).is_some()
            || f.leased.contains(&(s.protocol, s.local_port));
        if !managed
            || out
                .iter()
                .any(|i| i.protocol == s.protocol && i.port == s.local_port)
        {
            continue;
        }
        if let Some(id) = l.identities.first() {
            out.push(PortIdentity {
                protocol: s.protocol,
                port: s.local_port,
                exe: id.path.clone(),
                sha256: id.sha256.clone(),
            });
        }
    }
    out
}

/// Findings for managed ports whose executable changed since it was last recorded.
pub fn identity_change_findings(
    policy: &Policy,
    changes: &[(PortIdentity, PortIdentity)],
) -> Vec<Finding> {
    let short = |h: &Option<String>| {
        h.as_deref()
            .map_or("?".to_string(), |h| h[..12.min(h.len())].to_string())
    };
    changes
        .iter()
        .map(|(old, new)| {
            let svc = service_for(policy, new.protocol, new.port)
                .map_or(String::new(), |s| format!("service {} ", s.name));
            let what = if old.exe == new.exe {
                "the same path with a different digest (replaced binary)"
            } else {
                "a different executable"
            };
            Finding {
                id: RuleId::ListenerIdentityChanged,
                severity: Severity::High,
                subject: format!("{svc}({}/{})", new.port, new.protocol),
                evidence: format!(
                    "{what}: was {} sha256:{}, now {} sha256:{}",
                    old.exe,
                    short(&old.sha256),
                    new.exe,
                    short(&new.sha256)
                ),
                why: "the program answering on a managed port changed since the last check: an upgrade, or a hijack".into(),
                remedy: "confirm the change was a planned upgrade (the ledger records it); otherwise stop the listener and investigate".into(),
            }
        })
        .collect()
}
