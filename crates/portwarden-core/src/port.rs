//! Ports, port ranges, transport protocols and endpoints: the vocabulary every other part speaks.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU16;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// A TCP or UDP port, 1-65535. Zero is unrepresentable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(NonZeroU16);

/// Why a port, range or port/protocol pair did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// The number is outside 1-65535.
    #[error("port {0} is out of range 1-65535")]
    OutOfRange(i64),
    /// The text is not a number.
    #[error("`{0}` is not a port number")]
    NotANumber(String),
    /// A range whose start lies after its end.
    #[error("range {start}-{end} is reversed: start is greater than end")]
    Reversed {
        /// First port as written.
        start: u16,
        /// Last port as written.
        end: u16,
    },
    /// A protocol other than tcp or udp.
    #[error("unknown protocol `{0}`: expected tcp or udp")]
    Protocol(String),
    /// `PORT/PROTO` text without the slash where one is required.
    #[error("`{0}` must be written PORT/PROTO, e.g. 22/tcp")]
    MissingProtocol(String),
}

impl Port {
    /// Builds a port from a number, refusing 0.
    pub const fn new(n: u16) -> Option<Port> {
        match NonZeroU16::new(n) {
            Some(p) => Some(Port(p)),
            None => None,
        }
    }

    /// Builds a port from any integer, with the range error operators expect.
    pub fn from_i64(n: i64) -> Result<Port, PortError> {
        u16::try_from(n)
            .ok()
            .and_then(Port::new)
            .ok_or(PortError::OutOfRange(n))
    }

    /// The port number.
    pub const fn get(self) -> u16 {
        self.0.get()
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.get())
    }
}

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.get())
    }
}

impl FromStr for Port {
    type Err = PortError;
    fn from_str(s: &str) -> Result<Port, PortError> {
        let t = s.trim();
        let n: i64 = t
            .parse()
            .map_err(|_| PortError::NotANumber(t.to_string()))?;
        Port::from_i64(n)
    }
}

/// An inclusive range of ports, `start <= end`, validated once at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    start: Port,
    end: Port,
}

impl PortRange {
    /// A range from `start` to `end` inclusive; `None` when reversed.
    pub fn new(start: Port, end: Port) -> Option<PortRange> {
        (start <= end).then_some(PortRange { start, end })
    }

    /// A range holding one port.
    pub fn single(p: Port) -> PortRange {
        PortRange { start: p, end: p }
    }

    /// First port.
    pub fn start(self) -> Port {
        self.start
    }

    /// Last port.
    pub fn end(self) -> Port {
        self.end
    }

    /// Number of ports in the range.
    pub fn len(self) -> u32 {
        u32::from(self.end.get()) - u32::from(self.start.get()) + 1
    }

    /// A range is never empty; present for clippy's `len_without_is_empty`.
    pub fn is_empty(self) -> bool {
        false
    }

    /// Whether `p` lies in the range.
    pub fn contains(self, p: Port) -> bool {
        self.start <= p && p <= self.end
    }

    /// Whether the two ranges share at least one port.
    pub fn overlaps(self, other: PortRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    /// Whether `other` lies entirely inside this range.
    pub fn covers(self, other: PortRange) -> bool {
        self.start <= other.start && other.end <= self.end
    }

    /// Iterates the ports of the range in order.
    pub fn iter(self) -> impl Iterator<Item = Port> {
        (self.start.get()..=self.end.get()).filter_map(Port::new)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for PortRange {
    type Err = PortError;
    /// `N` or `A-B`.
    fn from_str(s: &str) -> Result<PortRange, PortError> {
        match s.split_once('-') {
            None => Ok(PortRange::single(s.parse()?)),
            Some((a, b)) => {
                let (a, b): (Port, Port) = (a.parse()?, b.parse()?);
                PortRange::new(a, b).ok_or(PortError::Reversed {
                    start: a.get(),
                    end: b.get(),
                })
            }
        }
    }
}

/// A transport protocol that ports belong to.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    schemars::JsonSchema,
    strum::IntoStaticStr,
    strum::EnumIter,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Protocol {
    /// Transmission Control Protocol.
    Tcp,
    /// User Datagram Protocol.
    Udp,
}

impl Protocol {
    /// Both protocols, in display order.
    pub const ALL: [Protocol; 2] = [Protocol::Tcp, Protocol::Udp];

    /// Lowercase name, as written in policies.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = PortError;
    fn from_str(s: &str) -> Result<Protocol, PortError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            other => Err(PortError::Protocol(other.to_string())),
        }
    }
}

/// A port range with its protocol: `22/tcp`, `6800-7300/tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    /// The ports.
    pub range: PortRange,
    /// Their protocol.
    pub protocol: Protocol,
}

impl PortSpec {
    /// Whether two specs share a port of the same protocol.
    pub fn overlaps(self, other: PortSpec) -> bool {
        self.protocol == other.protocol && self.range.overlaps(other.range)
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.range, self.protocol)
    }
}

impl Serialize for PortSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for PortSpec {
    type Err = PortError;
    /// `PORT/PROTO` or `A-B/PROTO`; the protocol is required.
    fn from_str(s: &str) -> Result<PortSpec, PortError> {
        let (r, p) = s
            .split_once('/')
            .ok_or_else(|| PortError::MissingProtocol(s.to_string()))?;
        Ok(PortSpec {
            range: r.parse()?,
            protocol: p.parse()?,
        })
    }
}

/// A port with its protocol, as `who 80/tcp` takes it; the protocol defaults to tcp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortProto {
    /// The port.
    pub port: Port,
    /// Its protocol.
    pub protocol: Protocol,
}

impl FromStr for PortProto {
    type Err = PortError;
    fn from_str(s: &str) -> Result<PortProto, PortError> {
        match s.split_once('/') {
            None => Ok(PortProto {
                port: s.parse()?,
                protocol: Protocol::Tcp,
            }),
            Some((p, proto)) => Ok(PortProto {
                port: p.parse()?,
                protocol: proto.parse()?,
            }),
        }
    }
}

impl fmt::Display for PortProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol)
    }
}

/// An address, port and protocol: one side of a socket, or a balancer backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Endpoint {
    /// IP address (v4 or v6).
    pub addr: IpAddr,
    /// Port; `None` for an unbound or wildcard port (`*`).
    pub port: Option<Port>,
    /// Transport protocol.
    pub protocol: Protocol,
}

impl Endpoint {
    /// A TCP endpoint from a socket address (port 0 becomes `None`).
    pub fn tcp(sa: SocketAddr) -> Endpoint {
        Endpoint {
            addr: sa.ip(),
            port: Port::new(sa.port()),
            protocol: Protocol::Tcp,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let port = self.port.map_or("*".to_string(), |p| p.to_string());
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{port}"),
            IpAddr::V6(a) => write!(f, "[{a}]:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_as_table() {
        let cases: &[(&str, Result<u16, PortError>)] = &[
            ("1", Ok(1)),
            ("65535", Ok(65535)),
            ("0", Err(PortError::OutOfRange(0))),
            ("70000", Err(PortError::OutOfRange(70000))),
            ("-3", Err(PortError::OutOfRange(-3))),
            ("http", Err(PortError::NotANumber("http".into()))),
        ];
        for (input, want) in cases {
            let got = input.parse::<Port>().map(Port::get);
            assert_eq!(&got, want, "{input}");
        }
    }

    #[test]
    fn ranges_parse_and_compare() {
        let r: PortRange = "20000-29999".parse().unwrap();
        assert_eq!(r.len(), 10000);
        assert!(r.contains(Port::new(20000).unwrap()));
        assert!(!r.contains(Port::new(30000).unwrap()));
        assert_eq!(
            "5-3".parse::<PortRange>(),
            Err(PortError::Reversed { start: 5, end: 3 })
        );
        let s: PortRange = "29999-31000".parse().unwrap();
        assert!(r.overlaps(s) && s.overlaps(r));
        assert!(!r.covers(s));
        assert_eq!(r.to_string(), "20000-29999");
        assert_eq!("80".parse::<PortRange>().unwrap().to_string(), "80");
    }

    #[test]
    fn specs_and_portproto() {
        let s: PortSpec = "6800-7300/tcp".parse().unwrap();
        assert_eq!(s.to_string(), "6800-7300/tcp");
        assert_eq!(
            "22".parse::<PortSpec>(),
            Err(PortError::MissingProtocol("22".into()))
        );
        assert_eq!(
            "80/sctp".parse::<PortProto>(),
            Err(PortError::Protocol("sctp".into()))
        );
        let p: PortProto = "53/udp".parse().unwrap();
        assert_eq!(p.to_string(), "53/udp");
        assert_eq!("443".parse::<PortProto>().unwrap().protocol, Protocol::Tcp);
    }

    #[test]
    fn endpoints_display() {
        let e = Endpoint::tcp("[::1]:8080".parse().unwrap());
        assert_eq!(e.to_string(), "[::1]:8080");
        let e = Endpoint::tcp("0.0.0.0:0".parse().unwrap());
        assert_eq!(e.to_string(), "0.0.0.0:*");
    }
}
