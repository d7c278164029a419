//! `portwarden change request|list|show|approve|reject|apply|rollback` (the use-cases are
//! `portwarden_ops::change`).

use anyhow::bail;
use portwarden_ops::change;
use portwarden_ops::fw::{ApplyReq, Backend};

use crate::Status;
use crate::cli::{ChangeCommand, Global};
use crate::output::Printer;

pub fn run(g: &Global, c: &ChangeCommand) -> anyhow::Result<Status> {
    let (s, out) = (super::site(g), Printer::stdout(g));
    let (ctx, dir) = (&s.ctx, &s.dir);
    let apply_req = |within: std::time::Duration| ApplyReq {
        confirm_within: within,
        backend: Backend::Auto,
        allow_missing_interface: false,
        how: "change apply",
    };
    match c {
        ChangeCommand::Request {
            reason,
            ticket,
            from_git,
        } => {
            let source = match (from_git, s.policy()) {
                (Some(spec), _) => change::Proposed::Git(spec.clone()),
                (None, Some(p)) => change::Proposed::File(p.to_path_buf()),
                (None, None) => bail!(
                    "name the proposed policy: `portwarden change request --policy NEW.toml --reason \"…\"` (or --from-git DIR@REV)"
                ),
            };
            let req = change::RequestReq {
                source,
                reason: reason.clone(),
                ticket: ticket.clone(),
            };
            out.doc(&super::runtime()?.block_on(change::request(ctx, dir, &req))?)?;
        }
        ChangeCommand::List => out.doc(&change::list(ctx, dir)?)?,
        ChangeCommand::Show { id } => out.doc(&change::show(ctx, dir, *id)?)?,
        ChangeCommand::Approve { id } => out.doc(&change::approve(ctx, dir, *id)?)?,
        ChangeCommand::Reject { id, reason } => out.doc(&change::reject(ctx, dir, *id, reason)?)?,
        ChangeCommand::Apply {
            id,
            confirm_within,
            keep_on_hook_failure,
        } => {
            super::rearm(ctx, dir);
            out.doc(&change::apply(
                ctx,
                dir,
                *id,
                apply_req(confirm_within.get()),
                *keep_on_hook_failure,
            )?)?
        }
        ChangeCommand::Rollback { to, confirm_within } => {
            super::rearm(ctx, dir);
            out.doc(&change::rollback(
                ctx,
                dir,
                to.as_deref(),
                apply_req(confirm_within.get()),
            )?)?
        }
    }
    Ok(Status::Ok)
}
