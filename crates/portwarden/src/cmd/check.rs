//! `portwarden check`: this host against its policy.

use portwarden_core::Catalog;
use portwarden_core::findings::{Finding, Severity, policy_findings};
use portwarden_store::Store;
use serde::Serialize;

use crate::cli::{CheckArgs, Global, SeverityArg};
use crate::{Status, output};

#[derive(Serialize)]
struct Report<'a> {
    policy: &'a str,
    host: String,
    fail_on: Severity,
    exposure_total: f64,
    exposure: &'a [portwarden_core::hostcheck::Exposure],
    findings: &'a [Finding],
}

pub fn severity(s: SeverityArg) -> Severity {
    match s {
        SeverityArg::Info => Severity::Info,
        SeverityArg::Low => Severity::Low,
        SeverityArg::Medium => Severity::Medium,
        SeverityArg::High => Severity::High,
        SeverityArg::Critical => Severity::Critical,
    }
}

/// Lease, pool and ledger rules, over the embedded store when it exists.
#[allow(clippy::type_complexity)]
fn store_rules(
    g: &Global,
    policy: &portwarden_core::Policy,
) -> anyhow::Result<(
    Vec<Finding>,
    std::collections::BTreeSet<(portwarden_core::Protocol, u16)>,
)> {
    let (leases, broken) = match super::open_store(g, false) {
        Ok(s) => {
            let v = s.verify_ledger()?;
            (s.leases()?, v.broken)
        }
        Err(portwarden_store::StoreError::Missing(_)) => (Vec::new(), None),
        Err(e) => return Err(e.into()),
    };
    let facts = super::lease::lease_facts(&leases);
    let listeners = if leases.iter().any(|l| l.process.is_some()) {
        let mut inv = portwarden_os::sockets(&portwarden_os::Query {
            states: Some(vec![
                portwarden_core::facts::SocketState::Listen,
                portwarden_core::facts::SocketState::Unconn,
            ]),
            ..portwarden_os::Query::default()
        })?;
        portwarden_os::attach_owners(&mut inv, portwarden_os::Walk::AllOwners)?;
        for w in &inv.warnings {
            output::warn(g.quiet, w);
        }
        inv.sockets
    } else {
        Vec::new()
    };
    let sysctls = portwarden_os::sysctl::read_host();
    let leased = leases.iter().map(|l| (l.protocol, l.port.get())).collect();
    Ok((
        portwarden_core::findings::store_findings(
            policy,
            &portwarden_core::findings::StoreFacts {
                now: super::now(),
                leases: &facts,
                listeners: &listeners,
                sysctls: &sysctls,
                ledger_broken: broken.as_ref().map(|(s, w)| (*s, w.as_str())),
            },
        ),
        leased,
    ))
}

pub fn run(g: &Global, a: &CheckArgs) -> anyhow::Result<Status> {
    let loaded = super::load_policy(g.policy.as_deref())?;
    let fail_on = severity(a.fail_on);
    let mut findings = policy_findings(&loaded.policy, Catalog::builtin());
    let (store_findings, leased) = store_rules(g, &loaded.policy)?;
    findings.extend(store_findings);
    let facts = super::facts::gather(&loaded.policy, leased, |w| output::warn(g.quiet, w))?;
    findings.extend(portwarden_core::hostcheck::host_findings(
        &loaded.policy,
        Catalog::builtin(),
        &facts,
    ));
    let (exposure, exposure_total) =
        portwarden_core::hostcheck::exposure(&loaded.policy, Catalog::builtin(), &facts);
    portwarden_core::findings::sort(&mut findings);
    let host = loaded
        .policy
        .host
        .name
        .clone()
        .or_else(|| portwarden_os::hostname().ok())
        .unwrap_or_else(|| "unknown".to_string());
    if g.json {
        output::json(&Report {
            policy: &loaded.name,
            host,
            fail_on,
            exposure_total,
            exposure: &exposure,
            findings: &findings,
        })?;
    } else if !g.quiet {
        output::findings(&findings, &loaded.name, fail_on)?;
        output::text(&format!(
            "exposure score {exposure_total} over {} listening ports (docs/exposure.md)\n",
            exposure.len()
        ))?;
    }
    Ok(if findings.iter().any(|f| f.severity >= fail_on) {
        Status::Negative
    } else {
        Status::Ok
    })
}
