//! tokio engines that touch the network: protocol-aware probes (used by `check`, and by
//! the scanner), the balancer and its health checks, the benchmark. Never
//! prints, never reads config files.
#![deny(missing_docs)]

pub mod balance;
pub mod bench;
pub mod cert;
pub mod connect;
pub mod fingerprint;
pub mod probe;
pub mod probedb;
pub mod scan;
pub mod syn;

pub use probe::{ProbeKind, ProbeResult, TlsVerdict, probe};
