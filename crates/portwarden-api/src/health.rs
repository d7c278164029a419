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
}

/// `GET /api/v1/ports`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct PortsDoc {
    pub api: u32,
    /// Unix seconds of the sample.
    pub at: i64,
    pub ports: Vec<PortHealth>,
}
