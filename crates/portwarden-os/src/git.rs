//! The `git` binary, for the policy history operators keep in a repository: one file
//! committed per version, and a file read back at a revision. Every call runs with the
//! system and user configuration ignored, so hooks, pagers and signing settings of the
//! machine never run.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{Context as _, bail};

fn git(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("-C")
        .arg(dir)
        .args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "commit.gpgSign=false",
        ])
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .stdin(Stdio::null());
    c
}

fn checked(what: &str, o: std::io::Result<Output>) -> anyhow::Result<Vec<u8>> {
    let o = o.with_context(|| format!("cannot run git ({what})"))?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        bail!(
            "git {what} failed: {}",
            portwarden_core::diag::strip_unsafe(err.trim(), 300)
        );
    }
    Ok(o.stdout)
}

/// Makes `dir` a repository unless it is one.
pub fn init(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if dir.join(".git").exists() {
        return Ok(());
    }
    checked("init", git(dir).args(["init", "-q", "-b", "main"]).output()).map(drop)
}

/// The message of the last commit whose message holds `grep` (`None`: no such commit, or
/// none at all).
pub fn last_message(dir: &Path, grep: &str) -> anyhow::Result<Option<String>> {
    let o = git(dir)
        .args([
            "log",
            "-1",
            "--fixed-strings",
            &format!("--grep={grep}"),
            "--format=%B",
        ])
        .output()
        .context("cannot run git (log)")?;
    if !o.status.success() {
        // No commit yet.
        return Ok(None);
    }
    let m = String::from_utf8_lossy(&o.stdout).into_owned();
    Ok((!m.trim().is_empty()).then_some(m))
}

/// One commit of `file` (relative to `dir`) holding `text`, by `author` at `at` (unix
/// seconds), with `message`.
pub fn commit(
    dir: &Path,
    file: &str,
    text: &str,
    author: &str,
    at: i64,
    message: &str,
) -> anyhow::Result<()> {
    std::fs::write(dir.join(file), text)
        .with_context(|| format!("cannot write {}", dir.join(file).display()))?;
    checked("add", git(dir).args(["add", "--", file]).output())?;
    let name = portwarden_core::diag::strip_unsafe(author, 200);
    let date = format!("@{at} +0000");
    checked(
        "commit",
        git(dir)
            .args(["commit", "-q", "--allow-empty", "-F", "-"])
            .env("GIT_AUTHOR_NAME", &name)
            .env("GIT_AUTHOR_EMAIL", "portwarden@localhost")
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_NAME", "portwarden")
            .env("GIT_COMMITTER_EMAIL", "portwarden@localhost")
            .env("GIT_COMMITTER_DATE", &date)
            .stdin(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                if let Some(mut i) = c.stdin.take() {
                    i.write_all(message.as_bytes())?;
                }
                c.wait_with_output()
            }),
    )
    .map(drop)
}

/// `path` as it is at `rev` in the repository at `dir`.
pub fn show(dir: &Path, rev: &str, path: &str) -> anyhow::Result<String> {
    if rev.starts_with('-') || path.starts_with('-') {
        bail!("`{rev}:{path}` is not a revision and path");
    }
    let out = checked(
        "show",
        git(dir)
            .args(["show", "--no-textconv", &format!("{rev}:{path}")])
            .output(),
    )?;
    String::from_utf8(out).map_err(|_| anyhow::anyhow!("{path} at {rev} is not UTF-8 text"))
}
