//! Facts about a host, as plain values: sockets and their owners, and the kernel settings
//! that matter for ports and transfers. Adapters fill them; rules read them.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use crate::port::{Port, PortRange, Protocol};

/// A socket's state, as the kernel names TCP states (UDP uses `Unconn` and `Established`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum SocketState {
    /// Connection established (or a connected UDP socket).
    Established,
    /// SYN sent, awaiting answer.
    SynSent,
    /// SYN received (half-open, including request sockets).
    SynRecv,
    /// FIN-WAIT-1.
    FinWait1,
    /// FIN-WAIT-2.
    FinWait2,
    /// TIME-WAIT.
    TimeWait,
    /// Closed (for UDP: bound, not connected — shown as `Unconn`).
    Close,
    /// CLOSE-WAIT: peer closed, we have not.
    CloseWait,
    /// LAST-ACK.
    LastAck,
    /// Listening for connections.
    Listen,
    /// CLOSING.
    Closing,
    /// A bound, unconnected UDP socket.
    Unconn,
}

impl SocketState {
    /// Every state, in kernel order.
    pub const ALL: [SocketState; 12] = [
        SocketState::Established,
        SocketState::SynSent,
        SocketState::SynRecv,
        SocketState::FinWait1,
        SocketState::FinWait2,
        SocketState::TimeWait,
        SocketState::Close,
        SocketState::CloseWait,
        SocketState::LastAck,
        SocketState::Listen,
        SocketState::Closing,
        SocketState::Unconn,
    ];

    /// The state from the kernel's `TCP_*` number; UDP's `TCP_CLOSE` becomes `Unconn`.
    pub fn from_kernel(n: u8, protocol: Protocol) -> Option<SocketState> {
        Some(match n {
            1 => SocketState::Established,
            2 => SocketState::SynSent,
            3 | 12 => SocketState::SynRecv,
            4 => SocketState::FinWait1,
            5 => SocketState::FinWait2,
            6 => SocketState::TimeWait,
            7 if protocol == Protocol::Udp => SocketState::Unconn,
            7 => SocketState::Close,
            8 => SocketState::CloseWait,
            9 => SocketState::LastAck,
            10 => SocketState::Listen,
            11 => SocketState::Closing,
            _ => return None,
        })
    }

    /// Kernel `TCP_*` numbers that carry this state (for kernel-side filters).
    pub fn kernel_numbers(self) -> &'static [u8] {
        match self {
            SocketState::Established => &[1],
            SocketState::SynSent => &[2],
            SocketState::SynRecv => &[3, 12],
            SocketState::FinWait1 => &[4],
            SocketState::FinWait2 => &[5],
            SocketState::TimeWait => &[6],
            SocketState::Close | SocketState::Unconn => &[7],
            SocketState::CloseWait => &[8],
            SocketState::LastAck => &[9],
            SocketState::Listen => &[10],
            SocketState::Closing => &[11],
        }
    }

    /// Name as `ss` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            SocketState::Established => "ESTAB",
            SocketState::SynSent => "SYN-SENT",
            SocketState::SynRecv => "SYN-RECV",
            SocketState::FinWait1 => "FIN-WAIT-1",
            SocketState::FinWait2 => "FIN-WAIT-2",
            SocketState::TimeWait => "TIME-WAIT",
            SocketState::Close => "CLOSE",
            SocketState::CloseWait => "CLOSE-WAIT",
            SocketState::LastAck => "LAST-ACK",
            SocketState::Listen => "LISTEN",
            SocketState::Closing => "CLOSING",
            SocketState::Unconn => "UNCONN",
        }
    }

    /// Parses a user-typed state: `ss` names or their lowercase, `established`, `listen`, …
    pub fn parse(s: &str) -> Option<SocketState> {
        let norm = s.to_ascii_lowercase().replace('_', "-");
        let alias = match norm.as_str() {
            "established" | "estab" => "estab",
            "listening" => "listen",
            "syn-received" => "syn-recv",
            "time-wait" | "timewait" => "time-wait",
            "close-wait" | "closewait" => "close-wait",
            "unconnected" => "unconn",
            other => other,
        };
        SocketState::ALL
            .into_iter()
            .find(|st| st.as_str().to_ascii_lowercase() == alias)
    }

    /// Whether the socket accepts traffic on its own: a TCP listener or an unconnected
    /// UDP socket.
    pub fn is_listening(self) -> bool {
        matches!(self, SocketState::Listen | SocketState::Unconn)
    }
}

impl fmt::Display for SocketState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Address family.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4.
    Inet,
    /// IPv6.
    Inet6,
}

/// One socket as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Socket {
    /// tcp or udp.
    pub protocol: Protocol,
    /// IPv4 or IPv6.
    pub family: Family,
    /// State.
    pub state: SocketState,
    /// Local address.
    pub local_addr: IpAddr,
    /// Local port (0 when unbound).
    pub local_port: u16,
    /// Remote address (unspecified when none).
    pub remote_addr: IpAddr,
    /// Remote port (0 when none).
    pub remote_port: u16,
    /// Interface the socket is bound to, 0 when none.
    pub interface: u32,
    /// Receive queue; for a listener, connections waiting in the accept queue.
    pub recv_q: u32,
    /// Send queue; for a listener, the backlog limit.
    pub send_q: u32,
    /// Owning user id.
    pub uid: u32,
    /// Socket inode (0 for TIME-WAIT and request sockets).
    pub inode: u64,
    /// Processes holding the socket open, when owners were resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owners: Option<Vec<Owner>>,
}

impl Socket {
    /// The local port, when bound.
    pub fn port(&self) -> Option<Port> {
        Port::new(self.local_port)
    }

    /// Whether it is bound to a loopback address only.
    pub fn is_loopback_only(&self) -> bool {
        self.local_addr.is_loopback()
            || matches!(self.local_addr, IpAddr::V6(a) if a.to_ipv4_mapped().is_some_and(|v| v.is_loopback()))
    }
}

/// A process holding a socket.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, schemars::JsonSchema)]
pub struct Owner {
    /// Process id.
    pub pid: u32,
    /// The file descriptor number in that process.
    pub fd: u32,
    /// Short command name (`/proc/PID/comm`).
    pub comm: String,
    /// Executable path, when readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// Command line, when readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Real user id of the process.
    pub uid: u32,
}

/// Which executable a process runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExeIdentity {
    /// Executable path.
    pub path: String,
    /// SHA-256 of the running image, when it could be read.
    pub sha256: Option<String>,
    /// The process's user id.
    pub uid: u32,
}

/// A network interface and its addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interface {
    /// Name (`eth0`).
    pub name: String,
    /// Addresses.
    pub addrs: Vec<IpAddr>,
}

/// What the host's firewall looks like from portwarden's side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FirewallFacts {
    /// Whether `table inet portwarden` exists (`None`: nft is not installed).
    pub our_table: Option<bool>,
    /// Other managers active: firewalld, ufw, docker.
    pub managers: Vec<String>,
}

impl Owner {
    /// Whether the process runs `name`: its command name, executable path, or the file
    /// name of its executable.
    pub fn runs(&self, name: &str) -> bool {
        self.comm == name
            || self
                .exe
                .as_deref()
                .is_some_and(|e| e == name || e.rsplit('/').next() == Some(name))
    }
}

/// Kernel settings that decide port allocation and transfer performance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Sysctls {
    /// `net.ipv4.ip_local_port_range`: the ephemeral range.
    pub ip_local_port_range: Option<PortRange>,
    /// `net.ipv4.ip_local_reserved_ports`.
    pub ip_local_reserved_ports: Vec<PortRange>,
    /// `net.core.somaxconn`.
    pub somaxconn: Option<u32>,
    /// `net.ipv4.tcp_window_scaling`.
    pub tcp_window_scaling: Option<bool>,
    /// `net.core.rmem_max`.
    pub rmem_max: Option<u64>,
    /// `net.core.wmem_max`.
    pub wmem_max: Option<u64>,
    /// `net.ipv4.tcp_rmem` (min, default, max).
    pub tcp_rmem: Option<[u64; 3]>,
    /// `net.ipv4.tcp_wmem` (min, default, max).
    pub tcp_wmem: Option<[u64; 3]>,
    /// `net.ipv4.tcp_keepalive_time`, seconds.
    pub tcp_keepalive_time: Option<u32>,
    /// `net.ipv4.tcp_keepalive_intvl`, seconds.
    pub tcp_keepalive_intvl: Option<u32>,
    /// `net.ipv4.tcp_keepalive_probes`.
    pub tcp_keepalive_probes: Option<u32>,
    /// `net.ipv4.tcp_fastopen` bitmask.
    pub tcp_fastopen: Option<u32>,
    /// `net.ipv4.tcp_tw_reuse` (0, 1 or 2).
    pub tcp_tw_reuse: Option<u32>,
}

impl Sysctls {
    /// Whether the port lies in the ephemeral range and is not reserved.
    pub fn is_ephemeral(&self, p: Port) -> bool {
        self.ip_local_port_range.is_some_and(|r| r.contains(p))
            && !self.ip_local_reserved_ports.iter().any(|r| r.contains(p))
    }
}

/// Parses `ip_local_reserved_ports` text: `"8080,20000-20999"` (empty means none).
pub fn parse_port_list(s: &str) -> Result<Vec<PortRange>, crate::port::PortError> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip() {
        for st in SocketState::ALL {
            assert_eq!(SocketState::parse(st.as_str()), Some(st));
        }
        assert_eq!(
            SocketState::parse("established"),
            Some(SocketState::Established)
        );
        assert_eq!(SocketState::parse("time_wait"), Some(SocketState::TimeWait));
        assert_eq!(SocketState::parse("bogus"), None);
        assert_eq!(
            SocketState::from_kernel(7, Protocol::Udp),
            Some(SocketState::Unconn)
        );
        assert_eq!(
            SocketState::from_kernel(12, Protocol::Tcp),
            Some(SocketState::SynRecv)
        );
    }

    #[test]
    fn reserved_port_lists() {
        let v = parse_port_list("8080,20000-20999\n").unwrap();
        assert_eq!(v.len(), 2);
        assert!(parse_port_list("").unwrap().is_empty());
        let s = Sysctls {
            ip_local_port_range: Some("32768-60999".parse().unwrap()),
            ip_local_reserved_ports: parse_port_list("40000-40099").unwrap(),
            ..Sysctls::default()
        };
        assert!(s.is_ephemeral(Port::new(33000).unwrap()));
        assert!(!s.is_ephemeral(Port::new(40050).unwrap()));
        assert!(!s.is_ephemeral(Port::new(22).unwrap()));
    }
}

/// What `ls` keeps, decided once from the user's flags.
#[derive(Debug, Clone, Default)]
pub struct SocketFilter {
    /// Only these protocols (empty: all).
    pub protocols: Vec<Protocol>,
    /// Only these families (empty: all).
    pub families: Vec<Family>,
    /// Only these states (empty: all).
    pub states: Vec<SocketState>,
    /// Only sockets whose local port lies here.
    pub ports: Option<PortRange>,
    /// Only sockets held by this process id.
    pub pid: Option<u32>,
    /// Only sockets held by a process with this command name or executable file name.
    pub process: Option<String>,
}

impl SocketFilter {
    /// Whether the filter needs owners resolved.
    pub fn needs_owners(&self) -> bool {
        self.pid.is_some() || self.process.is_some()
    }

    /// Whether the socket passes.
    pub fn matches(&self, s: &Socket) -> bool {
        (self.protocols.is_empty() || self.protocols.contains(&s.protocol))
            && (self.families.is_empty() || self.families.contains(&s.family))
            && (self.states.is_empty() || self.states.contains(&s.state))
            && self
                .ports
                .is_none_or(|r| s.port().is_some_and(|p| r.contains(p)))
            && self.pid.is_none_or(|pid| {
                s.owners
                    .as_ref()
                    .is_some_and(|o| o.iter().any(|o| o.pid == pid))
            })
            && self.process.as_ref().is_none_or(|name| {
                s.owners
                    .as_ref()
                    .is_some_and(|o| o.iter().any(|o| o.runs(name)))
            })
    }
}

/// Connections per state on one listening port: the `ls --summary` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct PortSummary {
    /// The port.
    pub port: u16,
    /// Its protocol.
    pub protocol: Protocol,
    /// Addresses the listeners are bound to.
    pub addresses: Vec<IpAddr>,
    /// Processes holding the listeners (pid, comm), when owners were resolved.
    pub owners: Vec<(u32, String)>,
    /// Accept-queue length summed over the listeners (TCP).
    pub accept_queue: u32,
    /// Backlog limit, the largest of the listeners' (TCP).
    pub backlog: u32,
    /// Non-listening sockets on the port, by state.
    pub states: std::collections::BTreeMap<SocketState, u32>,
}

/// Groups sockets by listening port: each listener (TCP LISTEN, unconnected UDP) starts a
/// row, and every other socket whose local port matches is counted in it by state.
pub fn summarize(sockets: &[Socket]) -> Vec<PortSummary> {
    use std::collections::BTreeMap;
    let mut rows: BTreeMap<(Protocol, u16), PortSummary> = BTreeMap::new();
    for s in sockets
        .iter()
        .filter(|s| s.state.is_listening() && s.local_port != 0)
    {
        let row = rows
            .entry((s.protocol, s.local_port))
            .or_insert_with(|| PortSummary {
                port: s.local_port,
                protocol: s.protocol,
                addresses: Vec::new(),
                owners: Vec::new(),
                accept_queue: 0,
                backlog: 0,
                states: BTreeMap::new(),
            });
        if !row.addresses.contains(&s.local_addr) {
            row.addresses.push(s.local_addr);
        }
        for o in s.owners.iter().flatten() {
            if !row.owners.iter().any(|(p, _)| *p == o.pid) {
                row.owners.push((o.pid, o.comm.clone()));
            }
        }
        if s.state == SocketState::Listen {
            row.accept_queue += s.recv_q;
            row.backlog = row.backlog.max(s.send_q);
        }
    }
    for s in sockets.iter().filter(|s| !s.state.is_listening()) {
        if let Some(row) = rows.get_mut(&(s.protocol, s.local_port)) {
            *row.states.entry(s.state).or_default() += 1;
        }
    }
    let mut v: Vec<PortSummary> = rows.into_values().collect();
    for r in &mut v {
        r.addresses.sort();
        r.owners.sort();
    }
    v
}

#[cfg(test)]
mod filter_tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn sock(protocol: Protocol, state: SocketState, lport: u16, rport: u16) -> Socket {
        Socket {
            protocol,
            family: Family::Inet,
            state,
            local_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: lport,
            remote_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            remote_port: rport,
            interface: 0,
            recv_q: 1,
            send_q: 128,
            uid: 0,
            inode: 1,
            owners: Some(vec![Owner {
                pid: 42,
                fd: 3,
                comm: "rsync".into(),
                exe: Some("/usr/bin/rsync".into()),
                cmdline: None,
                uid: 0,
            }]),
        }
    }

    #[test]
    fn filters_as_table() {
        let s = sock(Protocol::Tcp, SocketState::Listen, 873, 0);
        let cases: Vec<(SocketFilter, bool)> = vec![
            (SocketFilter::default(), true),
            (
                SocketFilter {
                    protocols: vec![Protocol::Udp],
                    ..Default::default()
                },
                false,
            ),
            (
                SocketFilter {
                    states: vec![SocketState::Listen],
                    ..Default::default()
                },
                true,
            ),
            (
                SocketFilter {
                    ports: Some("800-900".parse().unwrap()),
                    ..Default::default()
                },
                true,
            ),
            (
                SocketFilter {
                    ports: Some("22".parse().unwrap()),
                    ..Default::default()
                },
                false,
            ),
            (
                SocketFilter {
                    pid: Some(42),
                    ..Default::default()
                },
                true,
            ),
            (
                SocketFilter {
                    pid: Some(7),
                    ..Default::default()
                },
                false,
            ),
            (
                SocketFilter {
                    process: Some("rsync".into()),
                    ..Default::default()
                },
                true,
            ),
            (
                SocketFilter {
                    process: Some("/usr/bin/rsync".into()),
                    ..Default::default()
                },
                true,
            ),
            (
                SocketFilter {
                    process: Some("nginx".into()),
                    ..Default::default()
                },
                false,
            ),
            (
                SocketFilter {
                    families: vec![Family::Inet6],
                    ..Default::default()
                },
                false,
            ),
        ];
        for (i, (f, want)) in cases.iter().enumerate() {
            assert_eq!(f.matches(&s), *want, "case {i}: {f:?}");
        }
    }

    #[test]
    fn summary_counts_connections_per_listener() {
        let v = vec![
            sock(Protocol::Tcp, SocketState::Listen, 873, 0),
            sock(Protocol::Tcp, SocketState::Established, 873, 40000),
            sock(Protocol::Tcp, SocketState::Established, 873, 40001),
            sock(Protocol::Tcp, SocketState::TimeWait, 873, 40002),
            sock(Protocol::Tcp, SocketState::Established, 40000, 873),
            sock(Protocol::Udp, SocketState::Unconn, 53, 0),
        ];
        let s = summarize(&v);
        assert_eq!(s.len(), 2);
        let rsync = s.iter().find(|r| r.port == 873).unwrap();
        assert_eq!(rsync.states[&SocketState::Established], 2);
        assert_eq!(rsync.states[&SocketState::TimeWait], 1);
        assert_eq!((rsync.accept_queue, rsync.backlog), (1, 128));
        assert_eq!(rsync.owners, vec![(42, "rsync".to_string())]);
        assert!(s.iter().find(|r| r.port == 53).unwrap().states.is_empty());
    }
}
