//! The command line as clap sees it: only what the user typed, checked for shape.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Governs the ports of mirror and replication servers from one declarative policy.
#[derive(Debug, Parser)]
#[command(name = "portwarden", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Policy file; without it the built-in baseline policy applies.
    #[arg(long, global = true, value_name = "FILE", env = "PORTWARDEN_POLICY")]
    pub policy: Option<PathBuf>,
    /// State directory for the embedded store [default: /var/lib/portwarden as root,
    /// else $XDG_STATE_HOME/portwarden].
    #[arg(long, global = true, value_name = "DIR", env = "PORTWARDEN_STATE")]
    pub state: Option<PathBuf>,
    /// Print machine-readable JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Say more about what is being done (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check this host against the policy; exit 1 if findings at or above --fail-on exist.
    Check(CheckArgs),
    /// Draft or validate policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// List the service catalog, or show one entry.
    Catalog(CatalogArgs),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to stdout.
    Man,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Lowest severity that makes the command exit 1.
    #[arg(long, value_enum, default_value_t = SeverityArg::High, value_name = "SEVERITY")]
    pub fail_on: SeverityArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SeverityArg {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files; every error is reported with file:line:col.
    Check {
        /// Files to validate.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Write a commented starter policy to stdout or a file.
    Init {
        /// Write here instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Overwrite an existing file.
        #[arg(long, requires = "output")]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct CatalogArgs {
    /// A catalog name or alias to show in full.
    pub name: Option<String>,
}
