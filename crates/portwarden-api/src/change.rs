//! `change request|list|show|approve|reject|apply|rollback`: change requests and their
//! pre-flight.
#![allow(missing_docs)]

use serde::{Deserialize, Serialize};

/// What a change would do, judged when it is asked for.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PreflightDoc {
    /// nft's own check of the ruleset (`ok`, or why it was not run).
    pub nft_check: String,
    /// The host's exposure score, and its ports reachable from anywhere, now and after.
    pub exposure_before: f64,
    pub exposure_after: f64,
    pub external_ports_before: usize,
    pub external_ports_after: usize,
    /// Listeners the new policy would leave unmanaged (`PORT/PROTO`), that are not now.
    pub unmanaged: Vec<String>,
    /// Declared services with no listener under the new policy.
    pub down: Vec<String>,
    /// From the version in force to the proposed one.
    pub diff: crate::policy::PolicyDiffDoc,
}

/// One change request.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ChangeDoc {
    pub api: u32,
    pub id: i64,
    /// `requested`, `approved`, `rejected`, `applying`, `applied-pending-confirm`,
    /// `applied`, `rolled-back`, `expired`.
    pub state: String,
    pub requester: String,
    pub reason: String,
    pub ticket: Option<String>,
    /// The proposed version, and the one in force when it was asked for.
    pub version: String,
    pub base: Option<String>,
    pub source: String,
    /// Who approved it, and how many it needs.
    pub approvals: Vec<String>,
    pub needed: u32,
    pub require_approval: bool,
    /// The confirm deadline of an apply awaiting confirmation (unix seconds).
    pub confirm_by: Option<i64>,
    /// The firewall transaction that applied it.
    pub txn: Option<i64>,
    pub created: i64,
    pub updated: i64,
    /// The pre-flight made when it was asked for.
    pub preflight: Option<PreflightDoc>,
    /// Whether this host's key vouches for the row (false: altered in the store; no step
    /// is taken with it).
    pub vouched: bool,
}

/// `change list`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ChangesDoc {
    pub api: u32,
    /// Oldest first, without their pre-flight.
    pub changes: Vec<ChangeDoc>,
}
