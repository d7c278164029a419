//! The `report` use-case: what `check` computes, as the compliance report.

use std::path::Path;

use portwarden_api::API_VERSION;
use portwarden_api::report::ReportDoc;
use portwarden_core::Catalog;
use portwarden_core::report::{Input, build};

use crate::Ctx;

/// Evaluates the host against the policy and builds the report.
pub async fn report(
    ctx: &Ctx,
    policy: Option<&Path>,
    state_dir: &Path,
) -> anyhow::Result<ReportDoc> {
    let e = crate::check::evaluate(ctx, policy, state_dir).await?;
    let report = build(&Input {
        policy: &e.loaded.policy,
        policy_name: &e.loaded.name,
        host: &e.host,
        catalog: Catalog::builtin(),
        facts: &e.facts,
        findings: &e.findings,
        last_change: &e.last_change,
        now: ctx.clock.now(),
    });
    Ok(ReportDoc {
        api: API_VERSION,
        report,
    })
}
