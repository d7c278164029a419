//! Linux facts and effects: sockets via netlink sock_diag, inode→process maps from `/proc`,
//! sysctls, bind probes, and running `nft`. Gathers facts; never decides policy.
#![deny(missing_docs)]

use std::io;

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
