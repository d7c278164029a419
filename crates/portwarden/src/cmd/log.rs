//! `portwarden log [verify|head|export|prune]` (the use-cases are `portwarden_ops::log`).

use portwarden_ops::log;

use crate::Status;
use crate::cli::{ExportFormat, Global, LogArgs, LogCommand};
use crate::output::Printer;

pub fn run(g: &Global, a: &LogArgs) -> anyhow::Result<Status> {
    let (ctx, dir, out) = (super::ctx(g), super::state_dir(g), Printer::stdout(g));
    match &a.command {
        None => out.doc(&log::list(&ctx, &dir, a.since.map(|d| d.get()))?)?,
        Some(LogCommand::Verify {
            expect_head,
            repair,
        }) => {
            let expect = expect_head.as_deref().map(log::parse_head).transpose()?;
            let v = log::verify(&ctx, &dir, expect.as_ref(), *repair)?;
            out.doc(&v)?;
            return Ok(if v.ok { Status::Ok } else { Status::Negative });
        }
        Some(LogCommand::Head) => out.doc(&log::head(&ctx, &dir)?)?,
        Some(LogCommand::Export {
            format: ExportFormat::Jsonl,
        }) => out.jsonl(&log::export(&ctx, &dir)?)?,
        Some(LogCommand::Prune { dry_run }) => {
            out.doc(&log::prune(&ctx, g.policy.as_deref(), &dir, *dry_run)?)?
        }
    }
    Ok(Status::Ok)
}
