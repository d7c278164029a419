//! Everything the binary prints: tables, `--json` documents and error messages. Only this
//! module writes to stdout or stderr.

mod balance;
pub mod bench;
mod catalog;
mod change;
mod check;
mod file;
mod fw;
#[cfg(test)]
mod golden;
mod inventory;
pub mod lease;
mod log;
mod policy;
pub mod printer;
mod scan;
mod token;

use std::io::{self, Write};

pub use file::write_output;
pub use printer::Printer;
pub use scan::{scan_grepable, scan_xml};

use portwarden_core::diag::SourceErrors;

/// The one terminal sanitiser: control characters (C0, DEL, C1: ESC, BEL, CSI, ...) are
/// shown as `\x1b`-style escapes, so nothing printed (a process name from /proc, a
/// banner, a ledger reason, a file name) can drive the terminal. Multi-line text keeps
/// its newlines and tabs; a table cell or one-line message keeps none.
fn clean(s: &str, multi_line: bool) -> std::borrow::Cow<'_, str> {
    portwarden_core::diag::escape_controls(s, if multi_line { &['\n', '\t'] } else { &[] })
}

/// One cell or one-line value.
fn cell(s: &str) -> String {
    clean(s, false).into_owned()
}

/// Prints an error chain as `portwarden: error: outer: inner`, or policy diagnostics as
/// they are.
pub fn error(e: &anyhow::Error) {
    let mut err = io::stderr().lock();
    if let Some(diags) = e.downcast_ref::<SourceErrors>() {
        let _ = writeln!(err, "{}", clean(&diags.to_string(), true));
        let n = diags.errors.len();
        let _ = writeln!(
            err,
            "portwarden: error: policy has {n} error{}",
            if n == 1 { "" } else { "s" }
        );
        return;
    }
    // One line: a newline in a value the user gave (an owner, a service name) is escaped.
    let _ = writeln!(
        err,
        "portwarden: error: {}",
        clean(&format!("{e:#}"), false)
    );
}

/// A usage error as clap renders it, as one line: `portwarden: error: …` (clap's hint
/// lines, such as `For more information, try '--help'`, dropped; `--help` says it all).
pub fn usage_error(rendered: &str) {
    // clap's message over several lines (the missing arguments, the possible values),
    // folded into one; its usage and `--help` hint lines left out.
    let parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .collect();
    let joined = if parts.is_empty() {
        "invalid usage".to_string()
    } else {
        parts.join(" ")
    };
    let msg = joined.strip_prefix("error: ").unwrap_or(&joined);
    let _ = writeln!(
        io::stderr().lock(),
        "portwarden: error: {}",
        clean(msg, false)
    );
}

/// Prints what is being done, on stderr, with `-v`.
pub fn verbose(level: u8, msg: &str) {
    if level > 0 {
        let _ = writeln!(io::stderr().lock(), "portwarden: {}", clean(msg, false));
    }
}

/// A use-case's notes for the terminal: warnings unless `-q`, detail with `-v`, and the
/// progress line cleared when it is done.
pub struct CliNotes {
    quiet: bool,
    verbose: u8,
    /// The progress bar the use-case feeds, finished when it says it is done.
    pub progress: Option<Progress>,
}

impl CliNotes {
    pub fn new(g: &crate::cli::Global) -> CliNotes {
        CliNotes {
            quiet: g.quiet,
            verbose: g.verbose,
            progress: None,
        }
    }
}

impl portwarden_ops::Notes for CliNotes {
    fn warn(&self, msg: &str) {
        warn(self.quiet, msg);
    }
    fn verbose(&self, msg: &str) {
        verbose(self.verbose, msg);
    }
    fn progress_done(&self) {
        if let Some(p) = &self.progress {
            p.finish();
        }
    }
}

/// Prints a note on stderr unless quiet.
pub fn note(quiet: bool, msg: &str) {
    if !quiet {
        let _ = writeln!(io::stderr().lock(), "portwarden: {}", clean(msg, false));
    }
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with a header row.
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|s| s.to_string()).collect()],
        }
    }

    /// Adds a row; its cells are sanitised.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|c| cell(c)).collect());
    }

    /// Renders the table.
    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut s = String::new();
        for r in &self.rows {
            let mut line = String::new();
            for (c, cell) in r.iter().enumerate() {
                if c + 1 == r.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
                }
            }
            s.push_str(line.trim_end());
            s.push('\n');
        }
        s
    }
}

/// Prints a warning on stderr unless quiet.
pub fn warn(quiet: bool, msg: &str) {
    if !quiet {
        let _ = writeln!(
            io::stderr().lock(),
            "portwarden: warning: {}",
            clean(msg, false)
        );
    }
}

/// A negative answer (port busy, pool exhausted): one line on stderr.
pub fn refusal(msg: &str) {
    let _ = writeln!(io::stderr().lock(), "portwarden: {}", clean(msg, false));
}

/// Unix seconds as `2026-11-28T18:24:47Z`.
pub fn utc(secs: i64) -> String {
    portwarden_core::time::utc(secs)
}

fn ago(secs: i64) -> String {
    let s = secs.unsigned_abs();
    let t = portwarden_core::units::HumanDuration(std::time::Duration::from_secs(s)).to_string();
    if secs < 0 {
        format!("in {t}")
    } else {
        format!("{t} ago")
    }
}

/// A progress bar on stderr (indicatif), only when stderr is a terminal and neither
/// `-q` nor `--json` is given. Cloned into the use-case's progress callback; finished
/// (drawn at its last count, then cleared) by the notes' `progress_done`.
#[derive(Clone)]
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    /// A bar, or nothing when `quiet` or when stderr is not a terminal.
    pub fn new(quiet: bool) -> Progress {
        use std::io::IsTerminal;
        let on = !quiet && io::stderr().is_terminal();
        Progress {
            bar: on.then(|| {
                let style = indicatif::ProgressStyle::with_template(
                    "[{bar:25}] {percent:>3}% {pos}/{len} {elapsed}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("#>.");
                indicatif::ProgressBar::with_draw_target(
                    None,
                    indicatif::ProgressDrawTarget::stderr(),
                )
                .with_style(style)
            }),
        }
    }

    /// Moves the bar to `done` of `total`.
    pub fn update(&self, done: u64, total: u64) {
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(done);
        }
    }

    /// Draws the last count and leaves it on its line (a record of what was done, as
    /// nmap's last stats line).
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
            // indicatif leaves the cursor at the end of the bar.
            let _ = writeln!(io::stderr().lock());
        }
    }
}
