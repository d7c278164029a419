//! `fw plan|diff|apply|confirm|rollback|status`, `grant` and `revoke`.
#![allow(missing_docs)]

use std::net::IpAddr;

use serde::Serialize;

/// `fw plan`: the ruleset the policy renders to.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct PlanDoc {
    pub api: u32,
    /// `nft` or `iptables`.
    pub format: String,
    /// `nft -f` input, or `iptables-restore --noflush` input for IPv4 then IPv6.
    pub ruleset: String,
}

/// `fw diff`: the rendered ruleset against the last one applied, and the live table
/// against what was listed right after that apply.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct DiffDoc {
    pub api: u32,
    /// The last transaction not rolled back (`None`: nothing applied yet).
    pub since_transaction: Option<i64>,
    /// When it was applied, unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_at: Option<i64>,
    /// A line diff (`+`/`-`/` ` prefixed) from the last applied ruleset to the rendered one;
    /// empty when they are the same.
    pub changes: Vec<String>,
    /// Whether our table exists in the kernel.
    pub live_table: bool,
    /// A line diff from the listing at apply time to the live one, when someone changed it.
    pub live_changed: Option<Vec<String>>,
}

/// `fw apply`: the transaction it opened.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ApplyDoc {
    pub api: u32,
    pub txn: i64,
    /// The rollback deadline, unix seconds (`None`: applied without confirmation).
    pub deadline: Option<i64>,
    /// The process that rolls back at the deadline.
    pub watcher_pid: Option<u32>,
    /// `nftables` or `iptables`.
    pub backend: String,
    /// What of ours is in the kernel: `table inet portwarden`, or the iptables chain.
    pub target: String,
    /// The policy version applied: the SHA-256 of its text (`portwarden policy history`).
    pub version: String,
}

/// `fw confirm` and `fw rollback`: what happened to the pending transaction.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct TxnDoc {
    pub api: u32,
    /// `confirm` or `rollback`.
    pub action: String,
    /// The pending transaction acted on (`None`: nothing was pending).
    pub txn: Option<i64>,
    /// Whether it was confirmed (or rolled back) by this command.
    pub done: bool,
    /// How the rollback restored the firewall, or why nothing was done.
    pub detail: String,
}

/// A firewall transaction as `fw status` shows it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct FwTxnView {
    pub id: i64,
    /// When applied, unix seconds.
    pub created: i64,
    pub deadline: Option<i64>,
    /// `pending`, `confirmed` or `rolled-back`.
    pub state: String,
    pub actor: String,
    /// The ruleset applied.
    pub ruleset: String,
    pub watcher_pid: Option<u32>,
}

/// `fw status`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct StatusDoc {
    pub api: u32,
    /// The backend of the last transaction: `nftables` or `iptables`.
    pub backend: String,
    /// `table inet portwarden` or the iptables chain.
    pub target: String,
    /// Whether it exists in the kernel.
    pub table: bool,
    pub last: Option<FwTxnView>,
    /// Said when the live table is still the one a transaction marked rolled back applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// One source admitted to one port.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct GrantItem {
    pub addr: IpAddr,
    pub protocol: String,
    pub port: u16,
    /// Unix seconds (absent in a revocation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// `grant`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct GrantDoc {
    pub api: u32,
    pub granted: Vec<GrantItem>,
}

/// `revoke`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct RevokeDoc {
    pub api: u32,
    pub revoked: Vec<GrantItem>,
}
