//! `alloc`, `renew`, `release`, `leases`, `reclaim` and `pools`.
#![allow(missing_docs)]

use serde::Serialize;

/// A port lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Lease {
    pub id: i64,
    /// `local`, or a fleet scope.
    pub scope: String,
    pub protocol: String,
    pub port: u16,
    pub service: String,
    pub pool: Option<String>,
    /// The `--owner` label renew and release check (a label, not an identity).
    pub owner: String,
    /// The executable expected to listen on it.
    pub process: Option<String>,
    /// `planned`, `active` or `draining`.
    pub state: String,
    /// Unix seconds.
    pub created_at: i64,
    pub expires_at: i64,
    /// The last time a listener was seen on the port, unix seconds.
    pub last_seen_listening: Option<i64>,
    /// Consecutive observations without a listener.
    pub missed: u32,
    /// The longest lifetime a renewal may give it, in seconds.
    pub ttl_max: Option<i64>,
}

/// `leases`: every lease in the store.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct LeasesDoc {
    pub api: u32,
    /// When the list was read, unix seconds (what "expires in" counts from).
    pub now: i64,
    pub leases: Vec<Lease>,
}

/// `alloc`: the leases granted, and why the next one was refused, if one was.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct AllocDoc {
    pub api: u32,
    pub leases: Vec<Lease>,
    /// Why no (further) lease was granted: the pool is exhausted, the port is busy.
    pub refused: Option<String>,
}

/// `renew` and `release`: the lease after the operation.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct LeaseOpDoc {
    pub api: u32,
    /// `renew` or `release`.
    pub action: String,
    pub lease: Lease,
}

/// One lease `reclaim` retired or drained.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Reclaimed {
    /// The lease before.
    pub lease: Lease,
    /// `retire` or `drain`.
    pub action: String,
    /// `expired` or `idle` for a retirement; `expired, still listened on` for a drain.
    pub reason: String,
}

/// `reclaim`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ReclaimDoc {
    pub api: u32,
    /// Nothing was changed: this is what would be done.
    pub dry_run: bool,
    pub reclaimed: Vec<Reclaimed>,
}

/// One pool's occupation.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Pool {
    pub name: String,
    /// `START-END`.
    pub range: String,
    pub protocol: String,
    pub size: u32,
    pub leased: u32,
    /// Neither leased nor otherwise unusable.
    pub free: u32,
    /// leased / size, 0 to 1.
    pub utilisation: f64,
    /// Ports inside the kernel's ephemeral range and not reserved.
    pub ephemeral_overlap: u32,
}

/// `pools`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct PoolsDoc {
    pub api: u32,
    pub pools: Vec<Pool>,
}

/// `pools reserve`: the pools added to `net.ipv4.ip_local_reserved_ports`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ReserveDoc {
    pub api: u32,
    pub sysctl: String,
    pub before: String,
    pub value: String,
    /// Whether the value was written (false: `--dry-run`, or nothing to add).
    pub written: bool,
    /// Whether the pools were covered already.
    pub unchanged: bool,
}
