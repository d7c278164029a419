//! How the `check` document reads on a terminal: findings grouped by severity.

use portwarden_api::check::CheckDoc;
use portwarden_core::findings::{Finding, Severity};

use super::cell;
use super::printer::Render;

/// The `check` report as a table grouped by severity, with why and remedy.
fn findings(findings: &[Finding], policy_name: &str, fail_on: Severity) -> String {
    let mut s = String::new();
    if findings.is_empty() {
        s.push_str(&format!("no findings against {}\n", cell(policy_name)));
        return s;
    }
    for sev in Severity::ALL.iter().rev() {
        let group: Vec<&Finding> = findings.iter().filter(|f| f.severity == *sev).collect();
        if group.is_empty() {
            continue;
        }
        s.push_str(&format!(
            "{} ({})\n",
            sev.as_str().to_uppercase(),
            group.len()
        ));
        for f in group {
            s.push_str(&format!("  {}  {}\n", f.id.as_str(), cell(&f.subject)));
            s.push_str(&format!("    seen: {}\n", cell(&f.evidence)));
            s.push_str(&format!("    why:  {}\n", cell(&f.why)));
            s.push_str(&format!("    fix:  {}\n", cell(&f.remedy)));
        }
        s.push('\n');
    }
    let failing = findings.iter().filter(|f| f.severity >= fail_on).count();
    s.push_str(&format!(
        "{} finding{} against {}; {failing} at or above {fail_on}\n",
        findings.len(),
        if findings.len() == 1 { "" } else { "s" },
        cell(policy_name),
    ));
    s
}

impl Render for CheckDoc {
    fn human(&self, _: u8) -> String {
        let mut s = findings(&self.findings, &self.policy, self.fail_on);
        s.push_str(&format!(
            "exposure score {} over {} listening port{} (docs/exposure.md)\n",
            self.exposure_total,
            self.exposure.len(),
            if self.exposure.len() == 1 { "" } else { "s" }
        ));
        s
    }
}
