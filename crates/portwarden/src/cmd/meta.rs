//! `portwarden completions SHELL` and `portwarden man`.

use clap::CommandFactory;

use crate::cli::Cli;
use crate::{Status, output};

pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<Status> {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "portwarden", &mut buf);
    output::Printer::plain().text(&String::from_utf8_lossy(&buf))?;
    Ok(Status::Ok)
}

/// `portwarden schema [NAME]`: the documents and the commands that print them, or one
/// document's JSON Schema.
pub fn schema(g: &crate::cli::Global, name: Option<&str>) -> anyhow::Result<Status> {
    let docs = portwarden_api::documents();
    let out = output::Printer::stdout(g);
    let Some(name) = name else {
        if out.json() {
            let list: Vec<_> = docs
                .iter()
                .map(|d| serde_json::json!({"name": d.name, "commands": d.commands}))
                .collect();
            out.json_value(
                &serde_json::json!({"api": portwarden_api::API_VERSION, "documents": list}),
            )?;
            return Ok(Status::Ok);
        }
        let mut t = output::Table::new(&["DOCUMENT", "PRINTED BY"]);
        for d in &docs {
            t.row(vec![d.name.to_string(), d.commands.to_string()]);
        }
        out.text(&t.render())?;
        return Ok(Status::Ok);
    };
    match docs.iter().find(|d| d.name == name) {
        Some(d) => out.json_value(&d.schema)?,
        None => anyhow::bail!(
            "unknown document `{name}`: one of {}",
            docs.iter().map(|d| d.name).collect::<Vec<_>>().join(", ")
        ),
    }
    Ok(Status::Ok)
}

/// One page for every command (there are no per-command pages to refer to), with the
/// sections a man page is expected to have.
pub fn man() -> anyhow::Result<Status> {
    let cmd = Cli::command();
    let man = clap_mangen::Man::new(cmd.clone());
    let mut buf = Vec::new();
    man.render_title(&mut buf)?;
    man.render_name_section(&mut buf)?;
    man.render_synopsis_section(&mut buf)?;
    man.render_description_section(&mut buf)?;
    man.render_options_section(&mut buf)?;
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    text.push_str(".SH COMMANDS\n");
    for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        text.push_str(&format!(
            ".TP\n\\fBportwarden {}\\fR\n{}\n",
            roff(sub.get_name()),
            roff(&about)
        ));
    }
    text.push_str(MAN_TAIL);
    let mut version = Vec::new();
    man.render_version_section(&mut version)?;
    text.push_str(&String::from_utf8_lossy(&version));
    output::Printer::plain().text(&text)?;
    Ok(Status::Ok)
}

/// Text safe inside a roff line: backslashes and hyphens escaped, no line starting with
/// a control character.
fn roff(s: &str) -> String {
    let t = s.replace('\\', "\\e").replace('-', "\\-");
    match t.chars().next() {
        Some('.' | '\'') => format!("\\&{t}"),
        _ => t,
    }
}

/// The sections clap_mangen does not write: EXIT STATUS, ENVIRONMENT, FILES, SEE ALSO.
const MAN_TAIL: &str = include_str!("man_tail.roff");
