//! Scan targets and port lists as nmap takes them: `-p 22,80,1000-2000`, `-p-`,
//! `--top N` by catalog frequency, `--exclude-ports`, addresses and CIDRs with a host
//! limit. Pure: host names are resolved by the caller.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::addr::Cidr;
use crate::catalog::Catalog;
use crate::port::{PortError, PortRange, Protocol};

/// Why a target or port list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// A bad port or range in a list.
    #[error("invalid port list `{spec}`: {source}")]
    Ports {
        /// The list as given.
        spec: String,
        /// What was wrong.
        #[source]
        source: PortError,
    },
    /// An empty selection.
    #[error("the port selection is empty")]
    NoPorts,
    /// A CIDR larger than allowed.
    #[error("{cidr} holds {hosts} addresses, more than --max-hosts {max}")]
    TooManyHosts {
        /// The block.
        cidr: String,
        /// Its size.
        hosts: u128,
        /// The limit.
        max: u64,
    },
}

/// Parses `22,80,1000-2000` or `-` (every port).
pub fn parse_ports(spec: &str) -> Result<BTreeSet<u16>, TargetError> {
    let spec = spec.trim();
    if spec == "-" {
        return Ok((1..=65535).collect());
    }
    let mut out = BTreeSet::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        // nmap allows open-ended ranges: `-1024`, `60000-`.
        let part = if let Some(rest) = part.strip_prefix('-') {
            format!("1-{rest}")
        } else if let Some(rest) = part.strip_suffix('-') {
            format!("{rest}-65535")
        } else {
            part.to_string()
        };
        let r: PortRange = part.parse().map_err(|source| TargetError::Ports {
            spec: spec.to_string(),
            source,
        })?;
        out.extend(r.iter().map(|p| p.get()));
    }
    if out.is_empty() {
        return Err(TargetError::NoPorts);
    }
    Ok(out)
}

/// The `n` most frequently met ports of the catalog for a protocol, in catalog order.
pub fn top_ports(catalog: &Catalog, protocol: Protocol, n: usize) -> BTreeSet<u16> {
    let mut out = BTreeSet::new();
    for e in catalog.entries() {
        for s in e.ports.iter().filter(|s| s.protocol == protocol) {
            for p in s.range.iter() {
                if out.len() >= n {
                    return out;
                }
                out.insert(p.get());
            }
        }
    }
    out
}

/// nmap's `--top-ports N` from the text of its `nmap-services` (`name port/proto
/// frequency …` lines): the `n` ports of `protocol` with the highest open frequency,
/// ties by port number. Lines that do not parse are skipped. Pure: the caller reads the
/// file.
pub fn top_ports_from_services(text: &str, protocol: Protocol, n: usize) -> BTreeSet<u16> {
    let proto = match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    let mut ranked: Vec<(f64, u16)> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let _name = f.next()?;
            let (port, p) = f.next()?.split_once('/')?;
            let freq: f64 = f.next()?.parse().ok()?;
            let port: u16 = port.parse().ok().filter(|&p| p > 0)?;
            (p == proto && freq.is_finite()).then_some((freq, port))
        })
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    ranked.dedup_by_key(|r| r.1);
    ranked.into_iter().take(n).map(|(_, p)| p).collect()
}

/// One target as written: an address, a CIDR block, or a name to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An address.
    Addr(IpAddr),
    /// A block of addresses.
    Block(Cidr),
    /// A host name.
    Name(String),
}

/// Classifies a target argument.
pub fn parse_target(s: &str) -> Target {
    if let Ok(a) = s.parse::<IpAddr>() {
        return Target::Addr(a);
    }
    if s.contains('/') {
        if let Ok(c) = s.parse::<Cidr>() {
            return Target::Block(c);
        }
    }
    Target::Name(s.to_string())
}

/// The addresses of a block, refusing blocks above `max` addresses.
pub fn expand(c: Cidr, max: u64) -> Result<Vec<IpAddr>, TargetError> {
    let bits = if c.is_ipv4() { 32 } else { 128 } - u32::from(c.prefix());
    let hosts: u128 = if bits >= 128 {
        u128::MAX
    } else {
        1u128 << bits
    };
    if hosts > u128::from(max) {
        return Err(TargetError::TooManyHosts {
            cidr: c.to_string(),
            hosts,
            max,
        });
    }
    Ok(match c.addr() {
        IpAddr::V4(a) => {
            let base = u32::from(a);
            (0..hosts as u32)
                .map(|i| IpAddr::V4((base + i).into()))
                .collect()
        }
        IpAddr::V6(a) => {
            let base = u128::from(a);
            (0..hosts).map(|i| IpAddr::V6((base + i).into())).collect()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_ports_follow_nmaps_frequencies() {
        let text = "# comment\nhttp\t80/tcp\t0.484143\t# WWW\nssh\t22/tcp\t0.182286\nx\t22/udp\t0.9\ntelnet\t23/tcp\t0.221265\nbad line\nzero\t0/tcp\t0.9\n";
        let top = top_ports_from_services(text, Protocol::Tcp, 2);
        assert_eq!(top, BTreeSet::from([80, 23]));
        assert_eq!(
            top_ports_from_services(text, Protocol::Udp, 5),
            BTreeSet::from([22])
        );
    }

    #[test]
    fn port_lists_as_table() {
        let ok: &[(&str, &[u16])] = &[
            ("22", &[22]),
            ("22,80", &[22, 80]),
            ("1000-1002,80", &[80, 1000, 1001, 1002]),
            ("-3", &[1, 2, 3]),
            ("65534-", &[65534, 65535]),
        ];
        for (spec, want) in ok {
            let got: Vec<u16> = parse_ports(spec).unwrap().into_iter().collect();
            assert_eq!(&got, want, "{spec}");
        }
        assert_eq!(parse_ports("-").unwrap().len(), 65535);
        for bad in ["0", "70000", "10-5", "http", ",", ""] {
            assert!(parse_ports(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn top_ports_follow_catalog_order() {
        let t = top_ports(Catalog::builtin(), Protocol::Tcp, 3);
        assert_eq!(t.into_iter().collect::<Vec<_>>(), vec![22, 80, 443]);
        assert_eq!(top_ports(Catalog::builtin(), Protocol::Tcp, 100).len(), 100);
    }

    #[test]
    fn targets_and_blocks() {
        assert_eq!(
            parse_target("127.0.0.1"),
            Target::Addr("127.0.0.1".parse().unwrap())
        );
        assert!(matches!(parse_target("127.0.0.0/30"), Target::Block(_)));
        assert_eq!(parse_target("localhost"), Target::Name("localhost".into()));
        let c: Cidr = "127.0.0.0/30".parse().unwrap();
        assert_eq!(expand(c, 256).unwrap().len(), 4);
        let big: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(matches!(
            expand(big, 256),
            Err(TargetError::TooManyHosts { .. })
        ));
    }
}
