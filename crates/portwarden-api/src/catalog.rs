//! `catalog [NAME]`: the built-in service catalog.
#![allow(missing_docs)]

use portwarden_core::catalog::CatalogEntry;
use serde::Serialize;

/// `catalog`: every entry.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct CatalogDoc {
    pub api: u32,
    pub entries: Vec<CatalogEntry>,
}

/// `catalog NAME`: one entry.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct EntryDoc {
    pub api: u32,
    pub entry: CatalogEntry,
}
