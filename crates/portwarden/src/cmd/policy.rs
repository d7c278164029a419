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
        PolicyCommand::Init { output, force } => init(g, output.as_deref(), *force),
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

fn init(g: &Global, path: Option<&Path>, force: bool) -> anyhow::Result<Status> {
    let Some(path) = path else {
        output::text(STARTER_TOML)?;
        return Ok(Status::Ok);
    };
    if path.exists() && !force {
        bail!(
            "{} already exists: pass --force to overwrite it",
            path.display()
        );
    }
    super::write_atomically(path, STARTER_TOML.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    output::note(
        g.quiet,
        &format!("wrote starter policy to {}", path.display()),
    );
    Ok(Status::Ok)
}
