//! `portwarden balance` (what a run served when it stopped) and `balance status` (the
//! running balancer's groups, summed over its worker processes).

use portwarden_core::balance::GroupStatus;
use serde::{Deserialize, Serialize};

/// One worker process of a running balancer, as its status file says.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WorkerDoc {
    /// 0 is the one that was started (it starts the others and writes the ledger).
    pub index: u32,
    pub pid: u32,
    /// Unix seconds it started.
    pub started: i64,
    /// Unix seconds of its last status write (every second).
    pub updated: i64,
    /// The policy it runs.
    pub policy: String,
    /// Alive: the process exists and wrote within the last five seconds.
    pub alive: bool,
    /// Its own groups (the document's `groups` sum every worker's).
    pub groups: Vec<GroupStatus>,
}

/// `portwarden balance status`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct BalanceStatusDoc {
    pub api: u32,
    /// Some worker is alive.
    pub running: bool,
    pub workers: Vec<WorkerDoc>,
    /// Per group, counters summed over the live workers; a backend is up when every live
    /// worker's checks say so.
    pub groups: Vec<GroupStatus>,
}

/// `portwarden balance` when it stops: what it served.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct BalanceRunDoc {
    pub api: u32,
    pub workers: u32,
    pub reloads: u32,
    /// Summed over the workers as they stopped.
    pub groups: Vec<GroupStatus>,
}
