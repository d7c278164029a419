//! tokio engines that touch the network: the scanner, protocol-aware probes, the balancer,
//! health checks and the throughput benchmark. Never prints, never reads config files.
//!
//! Empty until the check and scan issues land.
#![deny(missing_docs)]
