//! Renders a validated policy into the text of one nftables table, `table inet portwarden`:
//! deterministic output, golden-tested.
//!
//! Nothing is rendered yet; the firewall issue fills this crate.
#![deny(missing_docs)]

/// The one table portwarden owns; other managers' tables are never touched.
pub const TABLE: &str = "inet portwarden";
