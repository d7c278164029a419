//! `portwarden fw plan|diff|apply|confirm|rollback|status|watch`, `grant`, `revoke` (the
//! use-cases are `portwarden_ops::fw`).

use portwarden_ops::fw::{self, ApplyReq, Backend, grants};

use crate::cli::{FwBackend, FwCommand, FwFormat, Global, GrantArgs, RevokeArgs};
use crate::{Status, output};

fn backend(b: FwBackend) -> Backend {
    match b {
        FwBackend::Auto => Backend::Auto,
        FwBackend::Nft => Backend::Nft,
        FwBackend::Iptables => Backend::Iptables,
    }
}

pub fn run(g: &Global, c: &FwCommand) -> anyhow::Result<Status> {
    let ctx = super::ctx(g);
    let dir = super::state_dir(g);
    let policy = g.policy.as_deref();
    if !matches!(c, FwCommand::Watch { .. } | FwCommand::Plan { .. }) {
        // A store that refuses writes must not also stop `fw status` or a rollback.
        super::rearm(&ctx, &dir);
    }
    let out = output::Printer::stdout(g);
    match c {
        FwCommand::Plan { format } => {
            let b = match format {
                FwFormat::Nft => Backend::Nft,
                FwFormat::Iptables => Backend::Iptables,
            };
            out.doc(&fw::plan(&ctx, policy, &dir, b)?)?;
            Ok(Status::Ok)
        }
        FwCommand::Diff => {
            let d = fw::diff(&ctx, policy, &dir)?;
            out.doc(&d)?;
            Ok(status(d.changes.is_empty()))
        }
        FwCommand::Apply {
            confirm_within,
            backend: b,
            allow_missing_interface,
        } => {
            let req = ApplyReq {
                confirm_within: confirm_within.get(),
                backend: backend(*b),
                allow_missing_interface: *allow_missing_interface,
            };
            out.doc(&fw::apply(&ctx, policy, &dir, req)?)?;
            Ok(Status::Ok)
        }
        FwCommand::Confirm => txn(&out, fw::confirm(&ctx, &dir)?),
        FwCommand::Rollback => txn(&out, fw::rollback(&ctx, &dir)?),
        FwCommand::Status => {
            out.doc(&fw::status(&ctx, &dir)?)?;
            Ok(Status::Ok)
        }
        FwCommand::Watch { txn } => Ok(status(fw::watch(&ctx, &dir, *txn)?)),
    }
}

fn status(ok: bool) -> Status {
    if ok { Status::Ok } else { Status::Negative }
}

/// Confirm and rollback: the document, or the refusal on stderr and exit 1.
fn txn(
    out: &output::Printer<std::io::Stdout>,
    d: portwarden_api::fw::TxnDoc,
) -> anyhow::Result<Status> {
    if !d.done && !out.json() {
        output::refusal(&d.detail);
    } else {
        out.doc(&d)?;
    }
    Ok(status(d.done))
}

/// The items of `--file`, or the one on the command line.
fn items(
    file: Option<&std::path::Path>,
    one: (Option<&str>, Option<&str>, Option<&str>),
    with_duration: bool,
) -> anyhow::Result<Vec<grants::Item>> {
    match file {
        Some(f) => grants::read_items(f, with_duration),
        None => Ok(vec![grants::parse_item(
            one.0.unwrap_or_default(),
            one.1.unwrap_or_default(),
            one.2,
        )?]),
    }
}

pub fn grant(g: &Global, a: &GrantArgs) -> anyhow::Result<Status> {
    let one = (a.port.as_deref(), a.from.as_deref(), a.duration.as_deref());
    let list = items(a.file.as_deref(), one, true)?;
    let d = grants::grant(&super::ctx(g), &super::state_dir(g), &list)?;
    output::Printer::stdout(g).doc(&d)?;
    Ok(Status::Ok)
}

pub fn revoke(g: &Global, a: &RevokeArgs) -> anyhow::Result<Status> {
    let list = items(
        a.file.as_deref(),
        (a.port.as_deref(), a.from.as_deref(), None),
        false,
    )?;
    let d = grants::revoke(&super::ctx(g), &super::state_dir(g), &list)?;
    output::Printer::stdout(g).doc(&d)?;
    Ok(Status::Ok)
}
