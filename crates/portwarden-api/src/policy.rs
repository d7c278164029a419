//! `policy check`: each file's verdict.
#![allow(missing_docs)]

use portwarden_core::diag::Located;
use serde::Serialize;

/// One policy file.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct FileCheck {
    pub file: String,
    pub valid: bool,
    /// Counts, for a valid file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pools: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance_groups: Option<usize>,
    /// Every diagnostic, each with its `file:line:col`.
    pub errors: Vec<Located>,
    /// Why a file could not be read at all (not UTF-8, too large, missing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

/// `policy check FILE…`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct PolicyCheckDoc {
    pub api: u32,
    pub files: Vec<FileCheck>,
}
