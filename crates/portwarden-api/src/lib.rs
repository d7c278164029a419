//! The documents every command returns: `--json` serialises exactly one of them, the
//! table renders exactly it, and the HTTP API will serve exactly it. Versioned by
//! [`API_VERSION`]; plain serde data, no I/O, no logic beyond small views of the data.

pub mod balance;
pub mod bench;
pub mod catalog;
pub mod change;
pub mod check;
pub mod fw;
pub mod health;
pub mod inventory;
pub mod lease;
pub mod log;
pub mod policy;
pub mod report;
pub mod scan;
pub mod serve;
pub mod token;

/// The version of every document's shape (`"api": 1`): bumped when a field changes its
/// meaning or goes away; adding a field does not bump it.
pub const API_VERSION: u32 = 1;

/// One document shape: its name (`portwarden schema NAME`), the commands whose `--json`
/// prints it, and its JSON Schema (2020-12).
pub struct Document {
    pub name: &'static str,
    pub commands: &'static str,
    pub schema: serde_json::Value,
}

fn doc<T: schemars::JsonSchema>(name: &'static str, commands: &'static str) -> Document {
    let schema = schemars::SchemaGenerator::default().into_root_schema_for::<T>();
    Document {
        name,
        commands,
        schema: serde_json::to_value(&schema).unwrap_or_default(),
    }
}

/// Every document, in the order `portwarden schema` lists them.
pub fn documents() -> Vec<Document> {
    vec![
        doc::<check::CheckDoc>("check", "check"),
        doc::<report::ReportDoc>("report", "report --json, report --format json"),
        doc::<inventory::SocketsDoc>("sockets", "ls"),
        doc::<inventory::SummaryDoc>("summary", "ls --summary"),
        doc::<inventory::WhoDoc>("who", "who"),
        doc::<scan::ScanDoc>("scan", "scan"),
        doc::<lease::AllocDoc>("alloc", "alloc"),
        doc::<lease::LeaseOpDoc>("lease-op", "renew, release"),
        doc::<lease::LeasesDoc>("leases", "leases"),
        doc::<lease::ReclaimDoc>("reclaim", "reclaim"),
        doc::<lease::PoolsDoc>("pools", "pools"),
        doc::<lease::ReserveDoc>("reserve", "pools reserve"),
        doc::<fw::PlanDoc>("fw-plan", "fw plan"),
        doc::<fw::DiffDoc>("fw-diff", "fw diff"),
        doc::<fw::ApplyDoc>("fw-apply", "fw apply, change rollback"),
        doc::<fw::TxnDoc>("fw-txn", "fw confirm, fw rollback"),
        doc::<fw::StatusDoc>("fw-status", "fw status"),
        doc::<fw::GrantDoc>("grant", "grant"),
        doc::<fw::RevokeDoc>("revoke", "revoke"),
        doc::<log::LedgerDoc>("log", "log"),
        doc::<log::Record>("log-record", "log export --format jsonl (one per line)"),
        doc::<log::HeadDoc>("log-head", "log head"),
        doc::<log::VerifyDoc>("log-verify", "log verify"),
        doc::<log::PruneDoc>("log-prune", "log prune"),
        doc::<balance::BalanceStatusDoc>("balance-status", "balance status"),
        doc::<balance::BalanceRunDoc>("balance-run", "balance (when it stops)"),
        doc::<bench::BenchClientDoc>("bench-client", "bench client"),
        doc::<bench::BenchStormDoc>("bench-storm", "bench storm"),
        doc::<catalog::CatalogDoc>("catalog", "catalog"),
        doc::<catalog::EntryDoc>("catalog-entry", "catalog NAME"),
        doc::<policy::PolicyCheckDoc>("policy-check", "policy check"),
        doc::<policy::PolicyHistoryDoc>("policy-history", "policy history"),
        doc::<policy::PolicyVersionDoc>("policy-version", "policy show VERSION"),
        doc::<policy::PolicyDiffDoc>("policy-diff", "policy diff A B"),
        doc::<change::ChangeDoc>("change", "change request, show, approve, reject, apply"),
        doc::<change::ChangesDoc>("changes", "change list"),
        doc::<serve::HealthDoc>("health", "GET /api/v1/health"),
        doc::<health::PortsDoc>("ports", "GET /api/v1/ports"),
        doc::<health::OverviewDoc>("overview", "GET /api/v1/overview, GET /api/v1/events"),
        doc::<serve::WhoamiDoc>("whoami", "GET /api/v1/whoami"),
        doc::<serve::ScanJobDoc>("scan-job", "POST /api/v1/scans, GET /api/v1/scans/ID"),
        doc::<serve::ScansDoc>("scans", "GET /api/v1/scans"),
        doc::<serve::AlertEvent>("alert-event", "what [alerts] webhook receives"),
        doc::<serve::ErrorDoc>("error", "any HTTP API error (4xx, 5xx)"),
        doc::<token::TokenDoc>("token", "token create"),
        doc::<token::TokensDoc>("tokens", "token list"),
        doc::<token::TokenRevokeDoc>("token-revoke", "token revoke"),
    ]
}
