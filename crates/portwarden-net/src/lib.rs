//! tokio engines that touch the network: protocol-aware probes (used by `check`, and by
//! the scanner to come), later the balancer, health checks and the benchmark. Never
//! prints, never reads config files.
#![deny(missing_docs)]

pub mod cert;
pub mod connect;
pub mod fingerprint;
pub mod probe;
pub mod probedb;
pub mod scan;
pub mod syn;

pub use probe::{ProbeKind, ProbeResult, TlsVerdict, probe};
