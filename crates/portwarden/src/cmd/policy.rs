//! `portwarden policy check|init`.

use std::path::Path;

use anyhow::{Context, bail};
use portwarden_core::diag::{Located, SourceErrors};
use portwarden_core::policy::STARTER_TOML;
use serde::Serialize;

use crate::cli::{Global, PolicyCommand};
use crate::{Status, output};

#[derive(Serialize)]
struct FileResult {
    file: String,
    valid: bool,
    errors: Vec<Located>,
}

pub fn run(g: &Global, cmd: &PolicyCommand) -> anyhow::Result<Status> {
    match cmd {
        PolicyCommand::Check { files } => check(g, files),
        PolicyCommand::Init {
            output,
            force,
            from_host,
        } => init(g, output.as_deref(), *force, *from_host),
    }
}

fn check(g: &Global, files: &[std::path::PathBuf]) -> anyhow::Result<Status> {
    let mut results = Vec::new();
    let mut status = Status::Ok;
    for f in files {
        match super::read_policy(f) {
            Ok(p) => {
                if !g.json && !g.quiet {
                    output::text(&format!(
                        "{}: ok (services: {}, pools: {}, balance groups: {})\n",
                        f.display(),
                        p.services.len(),
                        p.pools.len(),
                        p.balance.len()
                    ))?;
                }
                results.push(FileResult {
                    file: f.display().to_string(),
                    valid: true,
                    errors: Vec::new(),
                });
            }
            Err(e) => {
                status = Status::Error;
                match e.downcast::<SourceErrors>() {
                    Ok(diags) => {
                        if !g.json {
                            output::error(&anyhow::Error::new(diags.clone()));
                        }
                        results.push(FileResult {
                            file: f.display().to_string(),
                            valid: false,
                            errors: diags.errors,
                        });
                    }
                    Err(other) => {
                        if g.json {
                            results.push(FileResult {
                                file: f.display().to_string(),
                                valid: false,
                                errors: Vec::new(),
                            });
                        }
                        output::error(&other);
                    }
                }
            }
        }
    }
    if g.json {
        output::json(&results)?;
    }
    Ok(status)
}

/// A draft from the host's listeners (owners resolved), or the commented starter.
fn initial_text(g: &Global, from_host: bool) -> anyhow::Result<String> {
    if !from_host {
        return Ok(STARTER_TOML.to_string());
    }
    let mut inv = portwarden_os::sockets(&portwarden_os::Query {
        states: Some(vec![
            portwarden_core::facts::SocketState::Listen,
            portwarden_core::facts::SocketState::Unconn,
        ]),
        ..portwarden_os::Query::default()
    })
    .context("cannot read the socket table")?;
    portwarden_os::attach_owners(&mut inv, portwarden_os::Walk::FirstOwner)?;
    for w in &inv.warnings {
        output::warn(g.quiet, w);
    }
    let host = portwarden_os::hostname().unwrap_or_else(|_| "this-host".into());
    Ok(portwarden_core::draft::draft(
        &host,
        &inv.sockets,
        portwarden_core::Catalog::builtin(),
    ))
}

fn init(g: &Global, path: Option<&Path>, force: bool, from_host: bool) -> anyhow::Result<Status> {
    let text = initial_text(g, from_host)?;
    let Some(path) = path else {
        output::text(&text)?;
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
