//! `report`: the compliance report.
#![allow(missing_docs)]

use portwarden_core::report::Report;
use serde::Serialize;

/// The `report --json` document: the report's fields beside `api`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ReportDoc {
    pub api: u32,
    #[serde(flatten)]
    pub report: Report,
}
