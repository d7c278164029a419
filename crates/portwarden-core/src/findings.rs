//! Findings and the rules that produce them. Each rule is a pure function from the policy
//! (and, as adapters arrive, host facts) to findings; `check` runs them all.

use std::fmt;

use serde::Serialize;

use crate::catalog::{Catalog, Sensitivity};
use crate::policy::{FirewallMode, Policy, TlsRequirement, ZoneKind};

/// How bad a finding is. Ordered: `Info < Low < Medium < High < Critical`.
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
    schemars::JsonSchema,
    strum::IntoStaticStr,
    strum::EnumIter,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Fix when convenient.
    Low,
    /// Fix soon.
    Medium,
    /// Fix now.
    High,
    /// Actively dangerous.
    Critical,
}

impl Severity {
    /// All severities, lowest first.
    pub const ALL: [Severity; 5] = [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Parses a lowercase name.
    pub fn parse(s: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The closed set of rules.
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
    schemars::JsonSchema,
    strum::IntoStaticStr,
    strum::EnumIter,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum RuleId {
    /// More externally exposed ports declared than the compliance limit.
    TooManyExternalPorts,
    /// A sensitive service that does not require TLS.
    SensitiveWithoutTls,
    /// A high-risk service declared in the external zone.
    HighRiskExposed,
    /// A high-sensitivity service open to every address.
    SensitiveOpenToAll,
    /// An external service without a per-source connection limit.
    NoConnectionLimit,
    /// The management path is open to every address.
    ManagementOpenToAll,
    /// The firewall only monitors.
    FirewallMonitorOnly,
    /// A pool is nearly full.
    PoolUtilisation,
    /// The policy keeps the ledger for less than the 180-day minimum.
    RetentionBelowMinimum,
    /// The ledger's hash chain does not verify.
    LedgerBroken,
    /// A leased port is held by another executable than the lease expects.
    LeaseHeldByOther,
    /// A lease is past its expiry and has not been reclaimed.
    ExpiredLease,
    /// A listener reachable from the network that the policy does not declare.
    UnmanagedListener,
    /// A declared service with no listener.
    ServiceNotListening,
    /// A managed port held by another executable than declared.
    ListenerIdentityChanged,
    /// A listener that accepted but did not answer the probe.
    StalledService,
    /// TLS offered but not provably required.
    TlsNotRequired,
    /// TLS is required by the policy, but the probe got no answer that settles it
    /// (the server refused to talk, timed out, or spoke a protocol the probe cannot read).
    TlsUnverified,
    /// A socket of the other protocol on a declared port.
    ProtocolMixing,
    /// A pool overlapping the unreserved ephemeral range.
    PoolInEphemeralRange,
    /// TCP settings unfit for the declared mirror links.
    TcpSettings,
    /// Accept queues overflowed.
    ListenOverflow,
    /// Other firewall managers are active.
    OtherFirewallManager,
    /// A managed port's connections or accept queue near their limit, sample after sample.
    PortUtilisationHigh,
    /// Health probes of a managed port failing above the alert rate.
    PortErrorRateHigh,
}

impl RuleId {
    /// Stable id as shown to operators.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// One thing wrong, why it matters and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Finding {
    /// Which rule.
    pub id: RuleId,
    /// How bad.
    pub severity: Severity,
    /// What it is about: a service, port or the host.
    pub subject: String,
    /// What was seen.
    pub evidence: String,
    /// Why it matters.
    pub why: String,
    /// What to do.
    pub remedy: String,
}

/// Runs every policy-level rule; findings come sorted, most severe first.
pub fn policy_findings(policy: &Policy, catalog: &Catalog) -> Vec<Finding> {
    let mut out = Vec::new();
    external_port_budget(policy, &mut out);
    for s in &policy.services {
        let entry = s.catalog.as_deref().and_then(|c| catalog.get(c));
        let can_encrypt = entry.is_none_or(|e| e.tls.can_encrypt());
        let reachable = s.zone != ZoneKind::Localhost;
        if reachable
            && s.sensitivity == Sensitivity::High
            && s.tls != TlsRequirement::Required
            && can_encrypt
        {
            out.push(Finding {
                id: RuleId::SensitiveWithoutTls,
                severity: if s.zone == ZoneKind::External {
                    Severity::High
                } else {
                    Severity::Medium
                },
                subject: format!("service {}", s.name),
                evidence: format!(
                    "sensitivity high, zone {}, tls = \"{}\"",
                    s.zone,
                    s.tls.as_str()
                ),
                why: "credentials and data of a high-sensitivity service cross the network readable by anyone on the path".into(),
                remedy: "enable TLS on the service and set tls = \"required\"".into(),
            });
        }
        if let Some(e) = entry {
            if e.high_risk && s.zone == ZoneKind::External {
                out.push(Finding {
                    id: RuleId::HighRiskExposed,
                    severity: Severity::High,
                    subject: format!("service {}", s.name),
                    evidence: format!("catalog {} in zone external", e.name),
                    why: e.note.clone(),
                    remedy: format!(
                        "move `{}` to zone internal or localhost, or reach it over a VPN or ssh",
                        s.name
                    ),
                });
            }
        }
        let open_to_all = match (&s.allow_from, s.zone) {
            (Some(set), _) => set.has_any(),
            (None, z) => z == ZoneKind::External,
        };
        if reachable && open_to_all && s.sensitivity == Sensitivity::High {
            out.push(Finding {
                id: RuleId::SensitiveOpenToAll,
                severity: Severity::High,
                subject: format!("service {}", s.name),
                evidence: "allow_from admits every address".into(),
                why: "a high-sensitivity service open to the world invites credential stuffing and exploits".into(),
                remedy: "narrow allow_from to the networks that replicate from it".into(),
            });
        }
        if s.zone == ZoneKind::External && s.max_conn_per_source.is_none() {
            out.push(Finding {
                id: RuleId::NoConnectionLimit,
                severity: Severity::Low,
                subject: format!("service {}", s.name),
                evidence: "zone external, no max_conn_per_source".into(),
                why: "one client can exhaust the service's connection slots".into(),
                remedy: "set max_conn_per_source (e.g. 20 for rsync, 50 for HTTP)".into(),
            });
        }
    }
    if policy.host.management.from.has_any() {
        let ports: Vec<String> = policy
            .host
            .management
            .ports
            .iter()
            .map(|p| p.to_string())
            .collect();
        out.push(Finding {
            id: RuleId::ManagementOpenToAll,
            severity: Severity::Low,
            subject: "host management".into(),
            evidence: format!("{} admitted from every address", ports.join(", ")),
            why: "the management path is the most attacked port on any host".into(),
            remedy: "set [host] management.from to the networks operators connect from".into(),
        });
    }
    if policy.firewall.mode == FirewallMode::Monitor {
        out.push(Finding {
            id: RuleId::FirewallMonitorOnly,
            severity: Severity::Info,
            subject: "firewall".into(),
            evidence: "[firewall] mode = \"monitor\"".into(),
            why: "undeclared ports are counted, not dropped".into(),
            remedy: "set mode = \"enforce\" once the policy lists every service".into(),
        });
    }
    sort(&mut out);
    out
}

/// The ledger retention the compliance profile requires at least (the seed's 180 days).
pub const MIN_LEDGER_RETENTION_DAYS: u32 = 180;

/// What the store and the host say, for the lease and ledger rules.
#[derive(Debug, Clone, Copy)]
pub struct StoreFacts<'a> {
    /// Now, unix seconds.
    pub now: i64,
    /// Every lease.
    pub leases: &'a [crate::alloc::LeaseFact],
    /// Listening sockets with owners resolved.
    pub listeners: &'a [crate::facts::Socket],
    /// Kernel settings.
    pub sysctls: &'a crate::facts::Sysctls,
    /// The first broken ledger link, if the chain does not verify.
    pub ledger_broken: Option<(i64, &'a str)>,
}

/// Rules over leases, pools and the ledger.
pub fn store_findings(policy: &Policy, f: &StoreFacts<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    let alert = policy.compliance.pool_utilisation_alert;
    for u in crate::alloc::pool_usage(policy, f.leases, f.sysctls) {
        if u.utilisation >= alert {
            out.push(Finding {
                id: RuleId::PoolUtilisation,
                severity: if u.utilisation >= 0.95 {
                    Severity::High
                } else {
                    Severity::Medium
                },
                subject: format!("pool {}", u.name),
                evidence: format!(
                    "{} of {} ports leased ({:.0} %), alert at {:.0} %",
                    u.leased,
                    u.size,
                    u.utilisation * 100.0,
                    alert * 100.0
                ),
                why: "an exhausted pool refuses new mirror services and replicas".into(),
                remedy: "run `portwarden reclaim`, release unused leases, or widen the pool range"
                    .into(),
            });
        }
    }
    let days = policy.compliance.ledger_retention_days;
    if days < MIN_LEDGER_RETENTION_DAYS {
        out.push(Finding {
            id: RuleId::RetentionBelowMinimum,
            severity: Severity::Medium,
            subject: "ledger".into(),
            evidence: format!("ledger_retention_days = {days}"),
            why: format!("the compliance baseline keeps port changes for at least {MIN_LEDGER_RETENTION_DAYS} days"),
            remedy: format!("set [compliance] ledger_retention_days to {MIN_LEDGER_RETENTION_DAYS} or more"),
        });
    }
    if let Some((seq, why)) = f.ledger_broken {
        out.push(Finding {
            id: RuleId::LedgerBroken,
            severity: Severity::Critical,
            subject: "ledger".into(),
            evidence: format!("chain broken at seq {seq}: {why}"),
            why: "the change record can no longer prove what happened: it was edited, truncated or damaged".into(),
            remedy: "compare with an exported copy (`portwarden log export`) and investigate who had write access to the store".into(),
        });
    }
    for l in f.leases {
        if l.expires_at <= f.now {
            out.push(Finding {
                id: RuleId::ExpiredLease,
                severity: Severity::Low,
                subject: format!("lease {} ({}/{})", l.id, l.port, l.protocol),
                evidence: format!(
                    "service {} expired {} s ago",
                    l.service,
                    f.now - l.expires_at
                ),
                why: "expired leases keep ports out of the pool".into(),
                remedy: "run `portwarden reclaim`, or `portwarden renew` if it is still needed"
                    .into(),
            });
        }
        let Some(expected) = &l.process else { continue };
        let holders: Vec<&crate::facts::Owner> = f
            .listeners
            .iter()
            .filter(|s| s.protocol == l.protocol && s.local_port == l.port.get())
            .flat_map(|s| s.owners.iter().flatten())
            .collect();
        if !holders.is_empty() && !holders.iter().any(|o| o.runs(expected)) {
            let who: Vec<String> = holders
                .iter()
                .map(|o| format!("{}/{}", o.comm, o.pid))
                .collect();
            out.push(Finding {
                id: RuleId::LeaseHeldByOther,
                severity: Severity::High,
                subject: format!("lease {} ({}/{})", l.id, l.port, l.protocol),
                evidence: format!("service {} expects {expected}, held by {}", l.service, who.join(", ")),
                why: "another program on a leased port can intercept the mirror's traffic (port hijack)".into(),
                remedy: "stop the foreign listener, or release the lease and allocate the service anew".into(),
            });
        }
    }
    out
}

/// Sorts findings most severe first, then by rule and subject.
pub fn sort(findings: &mut [Finding]) {
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.id.cmp(&b.id))
            .then(a.subject.cmp(&b.subject))
    });
}

fn external_port_budget(policy: &Policy, out: &mut Vec<Finding>) {
    let count: u32 = policy
        .services
        .iter()
        .filter(|s| s.zone == ZoneKind::External)
        .map(|s| match &s.placement {
            crate::policy::Placement::Fixed(specs) => specs.iter().map(|p| p.range.len()).sum(),
            crate::policy::Placement::Pool(_) => 1,
        })
        .sum::<u32>()
        + policy.balance.len() as u32;
    let limit = policy.compliance.max_external_ports;
    if count > limit {
        out.push(Finding {
            id: RuleId::TooManyExternalPorts,
            severity: Severity::High,
            subject: "host".into(),
            evidence: format!("{count} externally exposed ports declared, limit {limit}"),
            why: "every exposed port is attack surface; the compliance profile caps it".into(),
            remedy: "move services to the internal zone, put mirrors behind one balanced port, or raise max_external_ports with a reason".into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn findings(src: &str) -> Vec<(RuleId, Severity)> {
        let p = Policy::parse("t.toml", src, Catalog::builtin()).unwrap();
        policy_findings(&p, Catalog::builtin())
            .into_iter()
            .map(|f| (f.id, f.severity))
            .collect()
    }

    #[test]
    fn baseline_reports_only_advice() {
        let p = Policy::baseline();
        let f = policy_findings(&p, Catalog::builtin());
        assert!(f.iter().all(|f| f.severity <= Severity::Low), "{f:?}");
        assert!(f.iter().any(|f| f.id == RuleId::ManagementOpenToAll));
    }

    #[test]
    fn rules_fire_when_they_should() {
        let src = r#"
version = 1
[host]
management = { ports = ["22/tcp"], from = ["10.0.0.0/8"] }
[zones]
internal = { cidrs = ["10.0.0.0/8"] }
[[service]]
name = "db"
catalog = "postgresql"
zone = "external"
allow_from = ["0.0.0.0/0"]
max_conn_per_source = 5
[[service]]
name = "remote"
catalog = "vnc"
zone = "external"
allow_from = ["192.0.2.0/24"]
max_conn_per_source = 5
[[service]]
name = "cache"
catalog = "redis"
zone = "internal"
tls = "required"
"#;
        let f = findings(src);
        assert!(
            f.contains(&(RuleId::SensitiveWithoutTls, Severity::High)),
            "{f:?}"
        );
        assert!(f.contains(&(RuleId::SensitiveOpenToAll, Severity::High)));
        assert!(f.contains(&(RuleId::HighRiskExposed, Severity::High)));
        assert!(!f.iter().any(|(id, _)| *id == RuleId::ManagementOpenToAll));
        assert!(!f.iter().any(|(id, _)| *id == RuleId::NoConnectionLimit));
        assert_eq!(f.len(), 3, "{f:?}"); // vnc cannot encrypt: high-risk-exposed covers it
    }

    #[test]
    fn external_budget_counts_ranges() {
        let src = r#"
version = 1
[compliance]
max_external_ports = 3
[[service]]
name = "x11"
port = "6000-6003"
zone = "external"
max_conn_per_source = 1
"#;
        let f = findings(src);
        assert!(
            f.contains(&(RuleId::TooManyExternalPorts, Severity::High)),
            "{f:?}"
        );
    }
}
