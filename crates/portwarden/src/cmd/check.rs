//! `portwarden check`: this host against its policy.

use portwarden_core::Catalog;
use portwarden_core::findings::{Finding, Severity, policy_findings};
use serde::Serialize;

use crate::cli::{CheckArgs, Global, SeverityArg};
use crate::{Status, output};

#[derive(Serialize)]
struct Report<'a> {
    policy: &'a str,
    host: String,
    fail_on: Severity,
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

pub fn run(g: &Global, a: &CheckArgs) -> anyhow::Result<Status> {
    let loaded = super::load_policy(g.policy.as_deref())?;
    let fail_on = severity(a.fail_on);
    let findings = policy_findings(&loaded.policy, Catalog::builtin());
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
            findings: &findings,
        })?;
    } else if !g.quiet {
        output::findings(&findings, &loaded.name, fail_on)?;
    }
    Ok(if findings.iter().any(|f| f.severity >= fail_on) {
        Status::Negative
    } else {
        Status::Ok
    })
}
