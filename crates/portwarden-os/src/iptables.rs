//! Running iptables for hosts without nftables: our chain `PORTWARDEN-INPUT` only,
//! loaded with `iptables-restore --noflush` (one commit per family), jumped to from INPUT.

use crate::nft::NftError;

/// Our chain.
pub const CHAIN: &str = "PORTWARDEN-INPUT";

/// The two families' tools.
#[derive(Debug, Clone, Copy)]
pub enum Fam {
    /// iptables.
    V4,
    /// ip6tables.
    V6,
}

impl Fam {
    fn tool(self, suffix: &str) -> String {
        let base = match self {
            Fam::V4 => "iptables",
            Fam::V6 => "ip6tables",
        };
        format!("{base}{suffix}")
    }
}

fn run(
    prog: &str,
    args: &[&str],
    input: Option<&str>,
    what: &'static str,
) -> Result<String, NftError> {
    crate::nft::run_tool(prog, args, input, what)
}

/// `iptables-restore --test --noflush`.
pub fn check(fam: Fam, rules: &str) -> Result<(), NftError> {
    run(
        &fam.tool("-restore"),
        &["--test", "--noflush"],
        Some(rules),
        "check",
    )
    .map(drop)
}

/// Loads our chain and makes sure INPUT jumps to it.
pub fn apply(fam: Fam, rules: &str) -> Result<(), NftError> {
    run(&fam.tool("-restore"), &["--noflush"], Some(rules), "apply")?;
    let tool = fam.tool("");
    if run(&tool, &["-C", "INPUT", "-j", CHAIN], None, "check jump").is_err() {
        run(
            &tool,
            &["-I", "INPUT", "1", "-j", CHAIN],
            None,
            "insert jump",
        )?;
    }
    Ok(())
}

/// Our chain's rules (`-A PORTWARDEN-INPUT …` lines), or `None` when it does not exist.
pub fn snapshot(fam: Fam) -> Result<Option<String>, NftError> {
    let out = run(&fam.tool("-save"), &["-t", "filter"], None, "save")?;
    if !out
        .lines()
        .any(|l| l == format!(":{CHAIN} - [0:0]") || l.starts_with(&format!(":{CHAIN} ")))
    {
        return Ok(None);
    }
    let rules: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with(&format!("-A {CHAIN} ")))
        .collect();
    Ok(Some(rules.join("\n")))
}

/// Restores our chain from a snapshot, or removes it (and the jump) when there was none.
pub fn restore(fam: Fam, snap: Option<&str>) -> Result<(), NftError> {
    match snap {
        Some(rules) => {
            let text = format!("*filter\n:{CHAIN} - [0:0]\n-F {CHAIN}\n{rules}\nCOMMIT\n");
            apply(fam, &text)
        }
        None => {
            let tool = fam.tool("");
            while run(&tool, &["-D", "INPUT", "-j", CHAIN], None, "delete jump").is_ok() {}
            let _ = run(&tool, &["-F", CHAIN], None, "flush");
            let _ = run(&tool, &["-X", CHAIN], None, "delete chain");
            Ok(())
        }
    }
}
