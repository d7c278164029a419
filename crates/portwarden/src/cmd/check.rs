//! `portwarden check`: this host against its policy (the use-case is `portwarden-ops`).

use crate::cli::{CheckArgs, Global};
use crate::{Status, output};

/// Runs the evaluation on a runtime of its own (the probes are async).
pub fn evaluate(g: &Global) -> anyhow::Result<portwarden_ops::check::Evaluation> {
    let ctx = super::ctx(g);
    let state_dir = super::state_dir(g);
    super::runtime()?.block_on(portwarden_ops::check::evaluate(
        &ctx,
        g.policy.as_deref(),
        &state_dir,
    ))
}

pub fn run(g: &Global, a: &CheckArgs) -> anyhow::Result<Status> {
    let fail_on = portwarden_core::findings::Severity::from(a.fail_on);
    let e = evaluate(g)?;
    let doc = e.doc(fail_on);
    output::Printer::stdout(g).doc(&doc)?;
    Ok(if doc.findings.iter().any(|f| f.severity >= fail_on) {
        Status::Negative
    } else {
        Status::Ok
    })
}
