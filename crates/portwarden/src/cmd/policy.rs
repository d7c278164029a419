//! `portwarden policy check|init|history|show|diff`.

use std::path::Path;

use anyhow::bail;
use portwarden_api::API_VERSION;
use portwarden_api::policy::PolicyCheckDoc;

use crate::Status;
use crate::cli::{Global, PolicyCommand};
use crate::output::{self, Printer};

pub fn run(g: &Global, cmd: &PolicyCommand) -> anyhow::Result<Status> {
    match cmd {
        PolicyCommand::Check { files } => check(g, files),
        PolicyCommand::Init {
            output,
            force,
            from_host,
        } => init(g, output.as_deref(), *force, *from_host),
        PolicyCommand::History { export_git } => {
            let (ctx, dir) = (super::ctx(g), super::state_dir(g));
            let doc = match export_git {
                Some(repo) => portwarden_ops::policy::export_git(&ctx, &dir, repo)?,
                None => portwarden_ops::policy::history(&ctx, &dir)?,
            };
            Printer::stdout(g).doc(&doc)?;
            Ok(Status::Ok)
        }
        PolicyCommand::Show { version } => {
            let doc = portwarden_ops::policy::show(&super::ctx(g), &super::state_dir(g), version)?;
            Printer::stdout(g).doc(&doc)?;
            Ok(Status::Ok)
        }
        PolicyCommand::Diff { a, b } => {
            let (from, to) = match b {
                Some(b) => (Some(a.as_str()), b.as_str()),
                None => (None, a.as_str()),
            };
            let doc = portwarden_ops::policy::diff(&super::ctx(g), &super::state_dir(g), from, to)?;
            Printer::stdout(g).doc(&doc)?;
            // Like diff(1): 1 when the two differ.
            Ok(if doc.lines.is_empty() {
                Status::Ok
            } else {
                Status::Negative
            })
        }
    }
}

/// Every file checked; each invalid one's diagnostics on stderr (a person reads them with
/// their source lines), the verdicts on stdout. Exit 2 when any is invalid.
fn check(g: &Global, files: &[std::path::PathBuf]) -> anyhow::Result<Status> {
    let mut doc = PolicyCheckDoc {
        api: API_VERSION,
        files: Vec::new(),
    };
    for f in files {
        let (verdict, err) = portwarden_ops::policy::check_file(f);
        if let Some(e) = err {
            if !g.json || verdict.unreadable.is_some() {
                output::error(&e);
            }
        }
        doc.files.push(verdict);
    }
    Printer::stdout(g).doc(&doc)?;
    Ok(if doc.files.iter().all(|f| f.valid) {
        Status::Ok
    } else {
        Status::Error
    })
}

fn init(g: &Global, path: Option<&Path>, force: bool, from_host: bool) -> anyhow::Result<Status> {
    let text = portwarden_ops::policy::draft(&super::ctx(g), from_host)?;
    let Some(path) = path else {
        Printer::stdout(g).text(&text)?;
        return Ok(Status::Ok);
    };
    let stdout = path.as_os_str() == "-";
    // symlink_metadata: a dangling link is something there too.
    if !stdout && std::fs::symlink_metadata(path).is_ok() && !force {
        bail!(
            "{} already exists: pass --force to overwrite it",
            path.display()
        );
    }
    output::write_output(path, text.as_bytes(), force)?;
    if !stdout {
        output::note(g.quiet, &format!("wrote {}", path.display()));
    }
    Ok(Status::Ok)
}
