//! The `portwarden` binary: parses flags, wires the libraries together and prints.
//! No domain logic lives here.

mod cli;
pub mod cmd;
mod output;
mod signals;

use std::io;
use std::process::ExitCode;

use clap::Parser;

/// Exit status: 0 ok, 1 a negative answer, 2 usage or runtime error (as grep and ripgrep).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Success.
    Ok,
    /// A negative answer: findings, port busy, nothing found.
    Negative,
    /// Usage or runtime error.
    Error,
}

impl From<Status> for ExitCode {
    fn from(s: Status) -> ExitCode {
        match s {
            Status::Ok => ExitCode::from(0),
            Status::Negative => ExitCode::from(1),
            Status::Error => ExitCode::from(2),
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

fn main() -> ExitCode {
    // nmap spells its output and scan-type options -oG/-oX/-sS…; clap's short options
    // are one letter.
    let args = std::env::args_os().map(|a| match a.to_str() {
        Some("-oG") => "--oG".into(),
        Some("-oX") => "--oX".into(),
        Some("-sS") => "--syn".into(),
        Some("-sT") => "--connect".into(),
        Some("-sU") => "--udp".into(),
        Some("-sV") => "--service".into(),
        Some("-Pn") => "--no-ping".into(),
        _ => a,
    });
    // clap would drop an escape sequence from a value before quoting it back, so the
    // message would name a value nobody typed: such an argument is refused here, shown
    // escaped.
    let args: Vec<std::ffi::OsString> = args.collect();
    if let Some(bad) = args
        .iter()
        .skip(1)
        .filter_map(|a| a.to_str())
        .find(|a| a.chars().any(portwarden_core::diag::is_unsafe_char))
    {
        output::usage_error(&format!(
            "error: an argument holds a control or format character: `{bad}`"
        ));
        return Status::Error.into();
    }
    // Usage errors are one line in our own format, exit 2; help and version as clap has
    // them.
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e)
            if !e.use_stderr()
                || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        Err(e) => {
            output::usage_error(&e.render().to_string());
            return Status::Error.into();
        }
    };
    match cmd::run(cli) {
        Ok(status) => status.into(),
        Err(e) if is_broken_pipe(&e) => ExitCode::from(0),
        Err(e) => {
            output::error(&e);
            Status::Error.into()
        }
    }
}
