//! Port health: what the daemon samples per managed port (declared services and
//! leases) for `/metrics`, `/api/v1/ports` and the dashboard.

use serde::Serialize;

/// One managed port at one instant.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct PortHealth {
    /// The service it belongs to.
    pub service: String,
    /// `service` (declared in the policy) or `lease`.
    pub source: String,
    pub protocol: String,
    pub port: u16,
    /// Whether something listens on it.
    pub listening: bool,
    /// Established connections to it (TCP).
    pub established: u64,
    /// Connections waiting in the listener's accept queue.
    pub accept_queue: u64,
    /// The listener's backlog (the accept queue's limit).
    pub backlog: u64,
    /// The service's `max_conn`, if it declares one.
    pub max_conn: Option<u32>,
    /// The larger of established over `max_conn` and accept queue over backlog.
    pub utilisation: Option<f64>,
    /// Failed health probes over probes in the last five minutes (the daemon's monitor).
    pub error_rate: Option<f64>,
    /// The alerts that stand (`port-utilisation-high`, `port-error-rate-high`).
    pub alerts: Vec<String>,
    /// The service's zone and TLS requirement in the policy.
    pub zone: String,
    pub tls: String,
    /// The listener's process (`comm`), where the daemon resolved owners.
    pub process: Option<String>,
    /// Established connections of the monitor's recent samples, oldest first.
    pub recent: Vec<u64>,
}

/// `GET /api/v1/ports`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct PortsDoc {
    pub api: u32,
    /// Unix seconds of the sample.
    pub at: i64,
    pub ports: Vec<PortHealth>,
}

/// Findings of one rule and severity.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct FindingCount {
    pub rule: String,
    pub severity: String,
    pub count: u64,
}

/// What the dashboard shows, sent on `GET /api/v1/events` after each health sample.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct OverviewDoc {
    pub api: u32,
    /// Unix seconds of the sample.
    pub at: i64,
    /// The policy in force.
    pub policy: String,
    /// The exposure score of the last inventory (none before its first run).
    pub exposure: Option<f64>,
    /// The last inventory's findings with the standing port alerts, counted.
    pub findings: Vec<FindingCount>,
    pub ports: Vec<PortHealth>,
}
