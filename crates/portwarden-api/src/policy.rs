//! `policy check`: each file's verdict; `policy history|show|diff`: the versions kept.
#![allow(missing_docs)]

use portwarden_core::diag::Located;
use serde::Serialize;

/// One policy file.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct FileCheck {
    pub file: String,
    pub valid: bool,
    /// Counts, for a valid file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pools: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance_groups: Option<usize>,
    /// Every diagnostic, each with its `file:line:col`.
    pub errors: Vec<Located>,
    /// Why a file could not be read at all (not UTF-8, too large, missing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

/// `policy check FILE…`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct PolicyCheckDoc {
    pub api: u32,
    pub files: Vec<FileCheck>,
}

/// One adoption of a policy version: `policy history`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct AdoptionDoc {
    pub id: i64,
    /// The version: the SHA-256 of the policy's text.
    pub version: String,
    /// The version in force before, if any.
    pub previous: Option<String>,
    /// Unix seconds, and the same in RFC 3339.
    pub at: i64,
    pub time: String,
    pub actor: String,
    /// `fw apply`, `serve`, `serve (SIGHUP)` …
    pub how: String,
    /// The file it was read from.
    pub source: String,
    pub reason: Option<String>,
    /// The firewall transaction that applied it, and that transaction's state
    /// (`pending`, `confirmed`, `rolled-back`).
    pub txn: Option<i64>,
    pub txn_state: Option<String>,
    /// Whether it is the version in force now (the last one not rolled back).
    pub in_force: bool,
    /// Its ledger record.
    pub seq: i64,
    /// Whether this host's key vouches for it (false: altered in the store; never the
    /// version in force).
    pub vouched: bool,
}

/// `policy history`: every adoption, oldest first.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct PolicyHistoryDoc {
    pub api: u32,
    /// The version in force, if any was adopted.
    pub current: Option<String>,
    pub adoptions: Vec<AdoptionDoc>,
    /// With `--export-git DIR`: the commits written (the adoptions not yet in it).
    pub exported: Option<usize>,
}

/// `policy show VERSION`: a version's text.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct PolicyVersionDoc {
    pub api: u32,
    pub version: String,
    /// When it was first kept (unix seconds), and by whom.
    pub first_seen: i64,
    pub author: String,
    pub text: String,
}

/// `policy diff A B`: from one policy to another (versions in the store, or files).
#[derive(Debug, Clone, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct PolicyDiffDoc {
    pub api: u32,
    /// What each side is: `version HASH` or the file's path, and its version.
    pub from: String,
    pub from_version: String,
    pub to: String,
    pub to_version: String,
    /// The text's lines removed (`- `) and added (`+ `), in order.
    pub lines: Vec<String>,
    /// What changes by meaning: items added or removed, settings changed.
    pub changes: Vec<portwarden_core::policy::diff::PolicyChange>,
    /// The nft ruleset's lines removed and added as a result (with this host's grants and
    /// leases in both).
    pub rules: Vec<String>,
}
