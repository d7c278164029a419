//! The daemon's own documents: request bodies of the HTTP API's mutations (unknown
//! fields refused), its error body, and `/api/v1/health`.

use portwarden_core::auth::Role;
use serde::{Deserialize, Serialize};

/// Every error the HTTP API answers with (4xx, 5xx).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ErrorDoc {
    pub api: u32,
    /// A short fixed word: `unauthorized`, `forbidden`, `bad-request`, `not-found`,
    /// `conflict`, `too-large`, `rate-limited`, `internal`.
    pub error: String,
    /// What was wrong, for a person.
    pub detail: String,
}

/// One periodic job of the daemon.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct JobDoc {
    pub name: String,
    pub interval_secs: u64,
    pub runs: u64,
    pub failures: u64,
    /// Unix seconds of the last run's start.
    pub last_run: Option<i64>,
    pub last_duration_ms: Option<u64>,
    /// The last run's error; `None` when it succeeded.
    pub last_error: Option<String>,
}

/// `GET /api/v1/health`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct HealthDoc {
    pub api: u32,
    /// `ok`, or `degraded` when a job's last run failed.
    pub status: String,
    pub version: String,
    /// The policy in force.
    pub policy: String,
    pub uptime_secs: u64,
    /// The ledger's head as the daemon last saw it, so an outside copy can show truncation.
    pub ledger_head: Option<crate::log::Head>,
    pub jobs: Vec<JobDoc>,
}

/// `GET /api/v1/whoami`: the caller as the daemon sees it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct WhoamiDoc {
    pub api: u32,
    /// The token's name, or the local user's.
    pub name: String,
    /// `read`, `operate` or `admin`.
    pub role: String,
}

/// `POST /api/v1/leases`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AllocBody {
    pub service: String,
    pub pool: Option<String>,
    pub port: Option<u16>,
    /// How many leases (1 to 1024).
    pub count: Option<u32>,
    /// A duration (`1h`, `30m`).
    pub ttl: Option<String>,
    /// The owner label [default: the token's name].
    pub owner: Option<String>,
}

/// `POST /api/v1/leases/{id}/renew`.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewBody {
    pub ttl: Option<String>,
    pub owner: Option<String>,
}

/// `POST /api/v1/leases/{id}/release`.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    pub owner: Option<String>,
}

/// `POST /api/v1/fw/apply`.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyBody {
    /// The commit-confirm window [default: 60s]; `0` applies without confirmation.
    pub confirm_within: Option<String>,
    /// `auto`, `nft` or `iptables` [default: auto].
    pub backend: Option<String>,
    #[serde(default)]
    pub allow_missing_interface: bool,
}

/// `POST /api/v1/changes`: a change request.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeBody {
    /// The proposed policy's text (TOML).
    pub policy: String,
    /// Why.
    pub reason: String,
    /// A ticket in the operator's tracker.
    pub ticket: Option<String>,
}

/// `POST /api/v1/changes/ID/reject`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectBody {
    /// Why.
    pub reason: String,
}

/// `POST /api/v1/changes/ID/apply`.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeApplyBody {
    /// The commit-confirm window [default: 60s]; `0` applies without confirmation.
    pub confirm_within: Option<String>,
    /// `auto`, `nft` or `iptables` [default: auto].
    pub backend: Option<String>,
    /// Keep it applied when its `post_apply` hook fails.
    #[serde(default)]
    pub keep_on_hook_failure: bool,
}

/// `POST /api/v1/fw/grants` (with `for`) and `DELETE /api/v1/fw/grants` (without).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    /// `PORT` or `PORT/PROTO`.
    pub port: String,
    /// The source address.
    pub from: String,
    /// How long (`2h`): required to grant, refused to revoke.
    #[serde(rename = "for")]
    pub duration: Option<String>,
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    pub name: String,
    pub role: Role,
}

/// `POST /api/v1/scans`: a scan of targets the policy's `[scan]` allows.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScanBody {
    /// Addresses, CIDR blocks and names, as `scan` takes them.
    pub targets: Vec<String>,
    /// A port spec (`22,80,8000-8100`); without it the `top` most common ports.
    pub ports: Option<String>,
    /// The most common ports [default: 100].
    pub top: Option<usize>,
    /// UDP instead of TCP.
    #[serde(default)]
    pub udp: bool,
    /// Service and TLS detection (`-sV`).
    #[serde(default)]
    pub service: bool,
    /// Probes per second.
    pub rate: Option<u32>,
    /// The longest a probe waits (`1s`) [default: 1s].
    pub timeout: Option<String>,
}

/// One scan the daemon ran or runs: `POST /api/v1/scans` (202), `GET /api/v1/scans/ID`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ScanJobDoc {
    pub api: u32,
    pub id: u64,
    /// `running`, `done`, `interrupted` (the daemon was stopped; `result` holds what was
    /// settled) or `failed`.
    pub state: String,
    /// Who asked (the token's name).
    pub actor: String,
    /// The addresses scanned (names resolved when the scan was asked for).
    pub targets: Vec<std::net::IpAddr>,
    /// Unix seconds.
    pub started: i64,
    pub finished: Option<i64>,
    /// Probes settled and to settle, while running.
    pub done: u64,
    pub total: u64,
    pub error: Option<String>,
    /// The scan's document, once done (absent in lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<crate::scan::ScanDoc>,
}

/// `GET /api/v1/scans`: the scans kept (the most recent first; results in memory only).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ScansDoc {
    pub api: u32,
    pub scans: Vec<ScanJobDoc>,
}

/// What `[alerts] webhook` receives: one alert raised or cleared (`POST`,
/// `Content-Type: application/json`).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct AlertEvent {
    pub api: u32,
    /// `alert.raise` or `alert.clear`.
    pub kind: String,
    /// The host's name.
    pub host: String,
    /// Unix seconds.
    pub at: i64,
    /// `port-utilisation-high` or `port-error-rate-high`.
    pub rule: String,
    pub severity: String,
    pub service: String,
    pub protocol: String,
    pub port: u16,
    /// The value that decided it (a fraction) and the threshold it was held against.
    pub value: f64,
    pub threshold: f64,
    /// A line for a person.
    pub summary: String,
}
