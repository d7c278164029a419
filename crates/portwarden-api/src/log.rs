//! `log`, `log verify`, `log head`, `log prune`: the change ledger.
#![allow(missing_docs)]

use serde::Serialize;

/// One ledger record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Record {
    /// From 1, contiguous.
    pub seq: i64,
    /// Unix seconds.
    pub ts: i64,
    /// `ts` in RFC 3339 (UTC).
    pub time: String,
    /// Who acted: user and uid, the `sudo` caller, the API token's name.
    pub actor: String,
    /// What kind of change (`lease.alloc`, `fw.apply`, …).
    pub action: String,
    /// What it is about (`20001/tcp`, `fw txn 3`, …).
    pub subject: String,
    pub before: Option<String>,
    pub after: Option<String>,
    pub reason: Option<String>,
    /// The previous record's hash (hex).
    pub prev_hash: String,
    /// This record's hash (hex).
    pub hash: String,
}

/// `log`: records, oldest first.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct LedgerDoc {
    pub api: u32,
    /// `--since`: the records from this time on (unix seconds), else null (all).
    pub since: Option<i64>,
    pub records: Vec<Record>,
}

/// The last record: what an auditor keeps to check later that nothing was cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Head {
    pub seq: i64,
    pub hash: String,
}

/// `log head` (`head` is null for an empty ledger).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct HeadDoc {
    pub api: u32,
    pub head: Option<Head>,
}

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Broken {
    pub seq: i64,
    pub why: String,
}

/// `log verify`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct VerifyDoc {
    pub api: u32,
    /// Whether the chain is whole and nothing else is wrong.
    pub ok: bool,
    /// Records walked.
    pub records: usize,
    pub first_seq: Option<i64>,
    /// In the shape `log head` prints.
    pub head: Option<Head>,
    pub broken: Option<Broken>,
    /// What else is wrong: a head anchor the chain does not reach, dropped append-only
    /// triggers, references beyond the head.
    pub problems: Vec<String>,
    /// What `--repair` mended.
    pub repaired: Vec<String>,
}

/// `log prune`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct PruneDoc {
    pub api: u32,
    /// Records deleted (or, with `deleted: false`, that would be).
    pub records: usize,
    /// The cutoff, RFC 3339.
    pub before: String,
    pub retention_days: i64,
    pub deleted: bool,
    /// The ledger is empty.
    pub empty: bool,
}
