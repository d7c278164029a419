//! Running `nft`: check a ruleset, apply it in one transaction, read our table back.
//! The binary is `nft` from PATH, or `$PORTWARDEN_NFT`.

use std::io::{self, Write};
use std::process::{Command, Stdio};

/// What went wrong running nft.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// nft is not installed.
    #[error("`{0}` not found: install nftables (apt-get install nftables)")]
    Missing(String),
    /// nft refused the input or the operation.
    #[error("nft {what} failed: {message}")]
    Failed {
        /// check, apply or list.
        what: &'static str,
        /// nft's own message, first lines.
        message: String,
    },
    /// Starting or talking to nft failed.
    #[error("running nft: {0}")]
    Io(io::Error),
}

impl From<io::Error> for NftError {
    fn from(e: io::Error) -> Self {
        NftError::Io(e)
    }
}

fn binary() -> String {
    std::env::var("PORTWARDEN_NFT").unwrap_or_else(|_| "nft".to_string())
}

fn run(args: &[&str], input: Option<&str>, what: &'static str) -> Result<String, NftError> {
    run_tool(&binary(), args, input, what)
}

/// Runs a firewall tool (nft, iptables-restore, …) with optional standard input; its
/// stdout on success, its first error lines otherwise.
pub(crate) fn run_tool(
    bin: &str,
    args: &[&str],
    input: Option<&str>,
    what: &'static str,
) -> Result<String, NftError> {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => NftError::Missing(bin.to_string()),
        _ => NftError::Io(e),
    })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        // A tool that exits before reading all its input says why in its status and
        // stderr; its broken pipe must not pass for ours (main exits 0 on a broken pipe).
        match stdin.write_all(text.as_bytes()) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
            r => r?,
        }
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let mut message: String = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(4)
        .collect::<Vec<_>>()
        .join(" / ");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        message.push_str(" (changing the firewall needs CAP_NET_ADMIN: run as root)");
    }
    Err(NftError::Failed { what, message })
}

/// `nft -c -f -`: would the kernel accept this ruleset?
pub fn check(ruleset: &str) -> Result<(), NftError> {
    run(&["-c", "-f", "-"], Some(ruleset), "check").map(drop)
}

/// `nft -f -`: applies in one atomic transaction.
pub fn apply(ruleset: &str) -> Result<(), NftError> {
    run(&["-f", "-"], Some(ruleset), "apply").map(drop)
}

/// Every table as (family, name), from `nft -j list tables`.
pub fn tables() -> Result<Vec<(String, String)>, NftError> {
    let out = run(&["-j", "list", "tables"], None, "list")?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| NftError::Failed {
        what: "list",
        message: format!("unreadable JSON: {e}"),
    })?;
    Ok(v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| {
            Some((
                i["table"]["family"].as_str()?.to_string(),
                i["table"]["name"].as_str()?.to_string(),
            ))
        })
        .collect())
}

/// Whether `table inet portwarden` exists (from `nft -j list tables`).
pub fn table_exists() -> Result<bool, NftError> {
    let out = run(&["-j", "list", "tables"], None, "list")?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| NftError::Failed {
        what: "list",
        message: format!("unreadable JSON: {e}"),
    })?;
    Ok(v["nftables"].as_array().is_some_and(|items| {
        items
            .iter()
            .any(|i| i["table"]["family"] == "inet" && i["table"]["name"] == "portwarden")
    }))
}

/// The live table as nft prints it, or `None` when there is none.
pub fn list_table() -> Result<Option<String>, NftError> {
    if !table_exists()? {
        return Ok(None);
    }
    run(&["list", "table", "inet", "portwarden"], None, "list").map(Some)
}

/// Lease set name → its elements (protocol name, port).
pub type LeaseSets = std::collections::BTreeMap<String, std::collections::BTreeSet<(String, u16)>>;

/// The lease sets of our live table and their elements (protocol name, port), or `None`
/// when there is no table: lease changes are carried to what the kernel holds, whatever
/// policy the caller has at hand.
pub fn lease_sets() -> Result<Option<LeaseSets>, NftError> {
    if !table_exists()? {
        return Ok(None);
    }
    let out = run(&["-j", "list", "table", "inet", "portwarden"], None, "list")?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| NftError::Failed {
        what: "list",
        message: format!("unreadable JSON: {e}"),
    })?;
    let mut sets = std::collections::BTreeMap::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let set = &item["set"];
        let Some(name) = set["name"].as_str().filter(|n| n.starts_with("lease_")) else {
            continue;
        };
        let elems = sets
            .entry(name.to_string())
            .or_insert_with(std::collections::BTreeSet::new);
        for e in set["elem"].as_array().into_iter().flatten() {
            let c = &e["concat"];
            if let (Some(p), Some(n)) = (c[0].as_str(), c[1].as_u64()) {
                if let Ok(port) = u16::try_from(n) {
                    elems.insert((p.to_string(), port));
                }
            }
        }
    }
    Ok(Some(sets))
}

/// Removes our table (nothing else).
pub fn delete_table() -> Result<(), NftError> {
    if table_exists()? {
        apply("delete table inet portwarden\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_a_tool_that_exits_before_reading_fails_with_its_own_message() {
        // 1 MiB of input to a tool that refuses at once: our write meets a broken pipe,
        // which must not hide the refusal (main would exit 0 on a broken pipe).
        let input = "x".repeat(1 << 20);
        let e = run_tool(
            "sh",
            &["-c", "echo 'Error: refused' >&2; exit 1"],
            Some(&input),
            "check",
        )
        .unwrap_err();
        match e {
            NftError::Failed { what, message } => {
                assert_eq!(what, "check");
                assert!(message.contains("Error: refused"), "{message}");
            }
            other => panic!("{other}"),
        }
    }
}
