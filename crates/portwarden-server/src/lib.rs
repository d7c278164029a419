//! The daemon: the axum HTTP API with auth, `/metrics`, the dashboard and periodic jobs,
//! wiring adapters together. Contains no domain logic.
//!
//! Empty until the daemon issue lands.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![deny(missing_docs)]
