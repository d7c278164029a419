//! `portwarden fw plan|diff|apply|confirm|rollback|status|watch`, `grant`, `revoke` (the
//! use-cases are `portwarden_ops::fw`).

use portwarden_ops::fw::{self, ApplyReq, grants};

use crate::Status;
use crate::cli::{FwCommand, Global, GrantArgs, RevokeArgs};
use crate::output::{self, Printer};

pub fn run(g: &Global, c: &FwCommand) -> anyhow::Result<Status> {
    let (s, out) = (super::site(g), Printer::stdout(g));
    let (ctx, dir) = (&s.ctx, &s.dir);
    if !matches!(c, FwCommand::Watch { .. } | FwCommand::Plan { .. }) {
        super::rearm(ctx, dir);
    }
    let done = |ok: bool| if ok { Status::Ok } else { Status::Negative };
    match c {
        FwCommand::Plan { format } => {
            out.doc(&fw::plan(ctx, s.policy(), dir, (*format).into())?)?
        }
        FwCommand::Diff => {
            let d = fw::diff(ctx, s.policy(), dir)?;
            out.doc(&d)?;
            return Ok(done(d.changes.is_empty()));
        }
        FwCommand::Apply {
            confirm_within,
            backend,
            allow_missing_interface,
        } => {
            let req = ApplyReq {
                confirm_within: confirm_within.get(),
                backend: (*backend).into(),
                allow_missing_interface: *allow_missing_interface,
                how: "fw apply",
            };
            out.doc(&fw::apply(ctx, s.policy(), dir, req)?)?;
        }
        FwCommand::Confirm | FwCommand::Rollback => {
            let d = if matches!(c, FwCommand::Confirm) {
                fw::confirm(ctx, dir)?
            } else {
                fw::rollback(ctx, dir)?
            };
            // Nothing pending, or too late: a refusal on stderr (the document with --json).
            if d.done || out.json() {
                out.doc(&d)?;
            } else {
                output::refusal(&d.detail);
            }
            return Ok(done(d.done));
        }
        FwCommand::Status => out.doc(&fw::status(ctx, dir)?)?,
        FwCommand::Watch { txn } => return Ok(done(fw::watch(ctx, dir, *txn)?)),
    }
    Ok(Status::Ok)
}

/// `--file`'s items, or the one on the command line (clap has required the flags).
fn items(
    file: Option<&std::path::Path>,
    port: Option<&str>,
    from: Option<&str>,
    duration: Option<&str>,
    with_duration: bool,
) -> anyhow::Result<Vec<grants::Item>> {
    match file {
        Some(f) => grants::read_items(f, with_duration),
        None => Ok(vec![grants::parse_item(
            port.unwrap_or_default(),
            from.unwrap_or_default(),
            duration,
        )?]),
    }
}

pub fn grant(g: &Global, a: &GrantArgs) -> anyhow::Result<Status> {
    let (p, from) = (a.port.as_deref(), a.from.as_deref());
    let list = items(a.file.as_deref(), p, from, a.duration.as_deref(), true)?;
    let s = super::site(g);
    Printer::stdout(g).doc(&grants::grant(&s.ctx, &s.dir, &list)?)?;
    Ok(Status::Ok)
}

pub fn revoke(g: &Global, a: &RevokeArgs) -> anyhow::Result<Status> {
    let (p, from) = (a.port.as_deref(), a.from.as_deref());
    let list = items(a.file.as_deref(), p, from, None, false)?;
    let s = super::site(g);
    Printer::stdout(g).doc(&grants::revoke(&s.ctx, &s.dir, &list)?)?;
    Ok(Status::Ok)
}
