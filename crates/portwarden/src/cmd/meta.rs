//! `portwarden completions SHELL` and `portwarden man`.

use clap::CommandFactory;

use crate::cli::Cli;
use crate::{Status, output};

pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<Status> {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "portwarden", &mut buf);
    output::text(&String::from_utf8_lossy(&buf))?;
    Ok(Status::Ok)
}

pub fn man() -> anyhow::Result<Status> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut buf)?;
    output::text(&String::from_utf8_lossy(&buf))?;
    Ok(Status::Ok)
}
