//! `portwarden report`: the compliance report in md, html, json or csv (the use-case is
//! `portwarden_ops::report`).

use portwarden_core::report::{to_csv, to_html, to_markdown};

use crate::Status;
use crate::cli::{Global, ReportArgs, ReportFormat};
use crate::output::{self, Printer};

pub fn run(g: &Global, a: &ReportArgs) -> anyhow::Result<Status> {
    let other = match a.format {
        ReportFormat::Html => Some("html"),
        ReportFormat::Csv => Some("csv"),
        _ => None,
    };
    if let Some(f) = other.filter(|_| g.json) {
        anyhow::bail!("--json and --format {f} ask for two formats: give one");
    }
    let ctx = super::ctx(g);
    let d = super::runtime()?.block_on(portwarden_ops::report::report(
        &ctx,
        g.policy.as_deref(),
        &super::state_dir(g),
    ))?;
    // `--json` is the JSON report, as on every other command.
    let format = if g.json { ReportFormat::Json } else { a.format };
    let text = match format {
        ReportFormat::Md => to_markdown(&d.report),
        ReportFormat::Html => to_html(&d.report),
        ReportFormat::Csv => to_csv(&d.report),
        ReportFormat::Json => serde_json::to_string_pretty(&d)? + "\n",
    };
    match &a.output {
        None => Printer::stdout(g).text(&text)?,
        Some(path) => {
            output::write_output(path, text.as_bytes(), a.force)?;
            if path.as_os_str() != "-" {
                output::note(g.quiet, &format!("wrote {}", path.display()));
            }
        }
    }
    Ok(Status::Ok)
}
