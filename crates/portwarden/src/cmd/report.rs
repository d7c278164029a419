//! `portwarden report`: the compliance report in md, html, json or csv.

use portwarden_core::Catalog;
use portwarden_core::report::{Input, build, to_csv, to_html, to_markdown};

use crate::cli::{Global, ReportArgs, ReportFormat};
use crate::{Status, output};

pub fn run(g: &Global, a: &ReportArgs) -> anyhow::Result<Status> {
    let e = super::check::evaluate(g)?;
    let r = build(&Input {
        policy: &e.loaded.policy,
        policy_name: &e.loaded.name,
        host: &e.host,
        catalog: Catalog::builtin(),
        facts: &e.facts,
        findings: &e.findings,
        last_change: &e.last_change,
        now: super::now(),
    });
    // `--json` is the JSON report, as on every other command.
    let format = if g.json { ReportFormat::Json } else { a.format };
    let text = match format {
        ReportFormat::Md => to_markdown(&r),
        ReportFormat::Html => to_html(&r),
        ReportFormat::Csv => to_csv(&r),
        ReportFormat::Json => serde_json::to_string_pretty(&r)? + "\n",
    };
    match &a.output {
        None => output::text(&text)?,
        Some(path) => {
            output::write_output(path, text.as_bytes(), a.force)?;
            if path.as_os_str() != "-" {
                output::note(g.quiet, &format!("wrote {}", path.display()));
            }
        }
    }
    Ok(Status::Ok)
}
