//! `check`: the findings against a policy, the exposure score, and what makes it fail.

use portwarden_core::findings::{Finding, Severity};
use portwarden_core::hostcheck::Exposure;
use serde::Serialize;

/// The `check --json` document.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct CheckDoc {
    /// [`crate::API_VERSION`].
    pub api: u32,
    /// The policy's name in messages: its path, or "the built-in baseline policy".
    pub policy: String,
    /// The host's name.
    pub host: String,
    /// The lowest severity that makes `check` exit 1.
    pub fail_on: Severity,
    /// The exposure score (docs/exposure.md), and its parts per listener.
    pub exposure_total: f64,
    pub exposure: Vec<Exposure>,
    /// Every finding, most severe first.
    pub findings: Vec<Finding>,
}
