//! The documents every command returns: `--json` serialises exactly one of them, the
//! table renders exactly it, and the HTTP API will serve exactly it. Versioned by
//! [`API_VERSION`]; plain serde data, no I/O, no logic beyond small views of the data.

pub mod catalog;
pub mod check;
pub mod fw;
pub mod inventory;
pub mod lease;
pub mod log;
pub mod policy;
pub mod report;
pub mod scan;

/// The version of every document's shape (`"api": 1`): bumped when a field changes its
/// meaning or goes away; adding a field does not bump it.
pub const API_VERSION: u32 = 1;
