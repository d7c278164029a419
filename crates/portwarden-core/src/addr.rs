//! CIDR blocks and address sets (IPv4 and IPv6) used for sources, zones and management access.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// An IP network `ADDR/PREFIX` whose host bits are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a CIDR did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not an IPv4 or IPv6 address.
    #[error("`{0}` is not an IP address or CIDR block")]
    Address(String),
    /// The prefix length is not a number or too long for the family.
    #[error("prefix /{prefix} is invalid for {family}: at most /{max}")]
    Prefix {
        /// Prefix as written.
        prefix: String,
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// 32 or 128.
        max: u8,
    },
    /// Bits set below the prefix: `10.1.0.1/16`.
    #[error("`{given}` has host bits set: did you mean {suggest}?")]
    HostBits {
        /// As written.
        given: String,
        /// The network it probably meant.
        suggest: String,
    },
}

impl Cidr {
    /// A network from an address and prefix, masking nothing: host bits must be zero.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let max = max_prefix(addr);
        if prefix > max {
            return Err(CidrError::Prefix {
                prefix: prefix.to_string(),
                family: family(addr),
                max,
            });
        }
        let masked = mask(addr, prefix);
        if masked != addr {
            return Err(CidrError::HostBits {
                given: format!("{addr}/{prefix}"),
                suggest: format!("{masked}/{prefix}"),
            });
        }
        Ok(Cidr { addr, prefix })
    }

    /// A single host (`/32` or `/128`).
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr {
            addr,
            prefix: max_prefix(addr),
        }
    }

    /// Network address.
    pub fn addr(self) -> IpAddr {
        self.addr
    }

    /// Prefix length.
    pub fn prefix(self) -> u8 {
        self.prefix
    }

    /// Whether the address lies in this network (families never mix).
    pub fn contains(self, ip: IpAddr) -> bool {
        same_family(self.addr, ip) && mask(ip, self.prefix) == self.addr
    }

    /// Whether this is `0.0.0.0/0` or `::/0`.
    pub fn is_any(self) -> bool {
        self.prefix == 0
    }

    /// Whether `other` lies inside this network.
    pub fn covers(self, other: Cidr) -> bool {
        same_family(self.addr, other.addr)
            && self.prefix <= other.prefix
            && self.contains(other.addr)
    }

    /// Whether the network is IPv4.
    pub fn is_ipv4(self) -> bool {
        self.addr.is_ipv4()
    }
}

fn family(a: IpAddr) -> &'static str {
    if a.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn max_prefix(a: IpAddr) -> u8 {
    if a.is_ipv4() { 32 } else { 128 }
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

fn mask(a: IpAddr, prefix: u8) -> IpAddr {
    match a {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    /// `ADDR/PREFIX`, or a bare address meaning one host.
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let s = s.trim();
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| CidrError::Address(s.to_string()))?;
        match p {
            None => Ok(Cidr::host(addr)),
            Some(p) => {
                let prefix: u8 = p.parse().map_err(|_| CidrError::Prefix {
                    prefix: p.to_string(),
                    family: family(addr),
                    max: max_prefix(addr),
                })?;
                Cidr::new(addr, prefix)
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A set of networks of either family, kept sorted and without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct AddrSet(Vec<Cidr>);

impl AddrSet {
    /// A set from networks; duplicates are dropped.
    pub fn new(mut nets: Vec<Cidr>) -> AddrSet {
        nets.sort();
        nets.dedup();
        AddrSet(nets)
    }

    /// `0.0.0.0/0` and `::/0`.
    pub fn any() -> AddrSet {
        AddrSet::new(vec![
            Cidr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).expect("any v4"),
            Cidr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0).expect("any v6"),
        ])
    }

    /// The loopback networks `127.0.0.0/8` and `::1/128`.
    pub fn loopback() -> AddrSet {
        AddrSet::new(vec![
            Cidr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8).expect("lo v4"),
            Cidr::host(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ])
    }

    /// Whether any network holds the address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// Whether the set admits every address of some family.
    pub fn has_any(&self) -> bool {
        self.0.iter().any(|c| c.is_any())
    }

    /// The networks, sorted.
    pub fn cidrs(&self) -> &[Cidr] {
        &self.0
    }

    /// Whether the set holds no network.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The address itself, or the IPv4 address an IPv4-mapped IPv6 one (`::ffff:a.b.c.d`)
/// stands for: one spelling per endpoint, for comparing and for the PROXY protocol.
pub fn unmapped(a: std::net::SocketAddr) -> std::net::SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

/// Whether `a` can never be the source of a connection: unspecified, multicast or
/// broadcast (also as an IPv4-mapped IPv6 address). A grant from one opens nothing.
pub fn never_a_source(a: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    let a = match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    };
    a.is_unspecified() || a.is_multicast() || matches!(a, IpAddr::V4(v4) if v4.is_broadcast())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_that_are_never_a_source() {
        for a in [
            "0.0.0.0",
            "::",
            "255.255.255.255",
            "224.0.0.1",
            "ff02::1",
            "::ffff:0.0.0.0",
        ] {
            assert!(never_a_source(a.parse().unwrap()), "{a}");
        }
        for a in ["10.0.0.1", "::1", "fd00::2", "::ffff:10.0.0.1"] {
            assert!(!never_a_source(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn cidrs_parse_as_table() {
        let ok = [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.1.2.3", "10.1.2.3/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("::1", "::1/128"),
        ];
        for (i, want) in ok {
            assert_eq!(i.parse::<Cidr>().unwrap().to_string(), want);
        }
        assert_eq!(
            "10.1.0.1/16".parse::<Cidr>(),
            Err(CidrError::HostBits {
                given: "10.1.0.1/16".into(),
                suggest: "10.1.0.0/16".into()
            })
        );
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::Prefix { max: 32, .. })
        ));
        assert!(matches!(
            "10.0.0/8".parse::<Cidr>(),
            Err(CidrError::Address(_))
        ));
    }

    #[test]
    fn containment() {
        let n: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(n.contains("10.1.200.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(!n.contains("::ffff:10.1.0.1".parse().unwrap()));
        let any = AddrSet::any();
        assert!(any.contains("8.8.8.8".parse().unwrap()));
        assert!(any.contains("2001:db8::1".parse().unwrap()));
        assert!(AddrSet::loopback().contains("127.3.4.5".parse().unwrap()));
        assert!("10.0.0.0/8".parse::<Cidr>().unwrap().covers(n));
    }
}
