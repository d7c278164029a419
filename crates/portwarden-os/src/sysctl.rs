//! Kernel settings from `/proc/sys` that decide port allocation and transfer speed.

use std::path::Path;

use portwarden_core::PortRange;
use portwarden_core::facts::{Sysctls, parse_port_list};

fn read(root: &Path, key: &str) -> Option<String> {
    std::fs::read_to_string(root.join(key.replace('.', "/")))
        .ok()
        .map(|s| s.trim().to_string())
}

fn num<T: std::str::FromStr>(root: &Path, key: &str) -> Option<T> {
    read(root, key)?.parse().ok()
}

fn triple(root: &Path, key: &str) -> Option<[u64; 3]> {
    let s = read(root, key)?;
    let v: Vec<u64> = s
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    (v.len() == 3).then(|| [v[0], v[1], v[2]])
}

/// Reads the settings from a `/proc/sys`-shaped tree (the real one, or a fixture).
pub fn read_from(root: &Path) -> Sysctls {
    let range = read(root, "net.ipv4.ip_local_port_range").and_then(|s| {
        let mut it = s.split_whitespace();
        let a = it.next()?.parse().ok()?;
        let b = it.next()?.parse().ok()?;
        PortRange::new(a, b)
    });
    Sysctls {
        ip_local_port_range: range,
        ip_local_reserved_ports: read(root, "net.ipv4.ip_local_reserved_ports")
            .and_then(|s| parse_port_list(&s).ok())
            .unwrap_or_default(),
        somaxconn: num(root, "net.core.somaxconn"),
        tcp_window_scaling: num::<u8>(root, "net.ipv4.tcp_window_scaling").map(|v| v != 0),
        rmem_max: num(root, "net.core.rmem_max"),
        wmem_max: num(root, "net.core.wmem_max"),
        tcp_rmem: triple(root, "net.ipv4.tcp_rmem"),
        tcp_wmem: triple(root, "net.ipv4.tcp_wmem"),
        tcp_keepalive_time: num(root, "net.ipv4.tcp_keepalive_time"),
        tcp_keepalive_intvl: num(root, "net.ipv4.tcp_keepalive_intvl"),
        tcp_keepalive_probes: num(root, "net.ipv4.tcp_keepalive_probes"),
        tcp_fastopen: num(root, "net.ipv4.tcp_fastopen"),
        tcp_tw_reuse: num(root, "net.ipv4.tcp_tw_reuse"),
    }
}

/// Reads the running kernel's settings.
pub fn read_host() -> Sysctls {
    read_from(Path::new("/proc/sys"))
}

/// Writes `net.ipv4.ip_local_reserved_ports` (of the current network namespace).
pub fn write_reserved_ports(value: &str) -> std::io::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_local_reserved_ports", value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_fixture_tree() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sys");
        let s = read_from(&root);
        assert_eq!(s.ip_local_port_range.unwrap().to_string(), "32768-60999");
        assert_eq!(s.ip_local_reserved_ports.len(), 2);
        assert_eq!(s.somaxconn, Some(4096));
        assert_eq!(s.tcp_window_scaling, Some(true));
        assert_eq!(s.tcp_rmem, Some([4096, 131072, 6291456]));
        assert_eq!(s.rmem_max, Some(212992));
        assert_eq!(s.tcp_keepalive_time, Some(7200));
        assert_eq!(s.tcp_fastopen, Some(1));
    }

    #[test]
    fn reads_the_host() {
        let s = read_host();
        assert!(s.ip_local_port_range.is_some());
        assert!(s.somaxconn.is_some());
    }
}
