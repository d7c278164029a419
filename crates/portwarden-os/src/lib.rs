//! Linux facts and effects: sockets via netlink sock_diag (with a `/proc/net` fallback),
//! inode→process maps from `/proc`, sysctls, and (later) bind probes and running `nft`.
//! Gathers facts; never decides policy.
#![deny(missing_docs)]

pub mod git;
pub mod hook;
pub mod host;
pub mod identity;
pub mod inventory;
pub mod iptables;
mod netlink;
pub mod nft;
pub mod owners;
pub mod procnet;
pub mod sysctl;

use std::io;

pub use inventory::{Inventory, Query, Source, attach_owners, sockets};
pub use owners::Walk;

/// The machine's host name, from `/proc/sys/kernel/hostname`.
pub fn hostname() -> io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn hostname_is_not_empty() {
        assert!(!super::hostname().unwrap().is_empty());
    }
}
