//! Test fixtures shared by the host-rule and report tests: a policy, listeners and facts.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use crate::catalog::Catalog;
use crate::facts::{Family, FirewallFacts, Interface, Owner, Socket, SocketState, Sysctls};
use crate::hostcheck::{HostFacts, Listener, ProbeFact, TlsFact};
use crate::policy::Policy;
use crate::port::Protocol;

pub const POLICY: &str = r#"
version = 1
[zones]
internal = { interfaces = ["eth1"], cidrs = ["10.0.0.0/8"] }
[transfer]
bandwidth = "10Gbit"
rtt = "40ms"
[[pool]]
name = "dyn"
range = "32000-32999"
[[service]]
name = "db"
catalog = "mysql"
zone = "internal"
tls = "required"
process = "mariadbd"
[[service]]
name = "mirror"
catalog = "rsync"
zone = "external"
[[service]]
name = "dns"
catalog = "dns"
protocol = "udp"
zone = "internal"
"#;

pub fn policy() -> Policy {
    Policy::parse("t.toml", POLICY, Catalog::builtin()).unwrap_or_else(|e| panic!("{e}"))
}

pub fn listener(
    proto: Protocol,
    addr: &str,
    port: u16,
    comm: &str,
    probe: Option<(TlsFact, Option<&str>)>,
) -> Listener {
    let local_addr: IpAddr = addr.parse().unwrap();
    Listener {
        socket: Socket {
            protocol: proto,
            family: if local_addr.is_ipv4() {
                Family::Inet
            } else {
                Family::Inet6
            },
            state: if proto == Protocol::Tcp {
                SocketState::Listen
            } else {
                SocketState::Unconn
            },
            local_addr,
            local_port: port,
            remote_addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            remote_port: 0,
            interface: 0,
            recv_q: 0,
            send_q: 128,
            uid: 0,
            inode: u64::from(port),
            owners: Some(vec![Owner {
                pid: 100 + u32::from(port % 100),
                fd: 3,
                comm: comm.into(),
                exe: Some(format!("/usr/sbin/{comm}")),
                cmdline: None,
                uid: 0,
            }]),
        },
        identities: vec![],
        probe: probe.map(|(tls, id)| ProbeFact {
            identified: id.map(String::from),
            tls,
            stalled: false,
            banner: None,
        }),
    }
}

pub fn facts(listeners: Vec<Listener>) -> HostFacts {
    HostFacts {
        listeners,
        interfaces: vec![
            Interface {
                name: "lo".into(),
                addrs: vec!["127.0.0.1".parse().unwrap()],
            },
            Interface {
                name: "eth0".into(),
                addrs: vec!["192.0.2.10".parse().unwrap()],
            },
            Interface {
                name: "eth1".into(),
                addrs: vec!["10.0.0.5".parse().unwrap()],
            },
        ],
        sysctls: Sysctls {
            ip_local_port_range: Some("32768-60999".parse().unwrap()),
            tcp_window_scaling: Some(true),
            rmem_max: Some(212_992),
            wmem_max: Some(212_992),
            tcp_rmem: Some([4096, 131_072, 6_291_456]),
            tcp_wmem: Some([4096, 16_384, 4_194_304]),
            somaxconn: Some(4096),
            tcp_keepalive_time: Some(7200),
            ..Sysctls::default()
        },
        overflows: Some(((0, 0), (0, 0))),
        firewall: FirewallFacts::default(),
        leased: BTreeSet::new(),
    }
}

/// The healthy host: every declared service up, right owner, TLS as declared.
pub fn healthy() -> Vec<Listener> {
    vec![
        listener(
            Protocol::Tcp,
            "10.0.0.5",
            3306,
            "mariadbd",
            Some((TlsFact::Required, Some("mysql"))),
        ),
        listener(
            Protocol::Tcp,
            "0.0.0.0",
            873,
            "rsync",
            Some((TlsFact::None, Some("rsync"))),
        ),
        listener(Protocol::Udp, "10.0.0.5", 53, "named", None),
        listener(
            Protocol::Tcp,
            "0.0.0.0",
            22,
            "sshd",
            Some((TlsFact::Native, Some("ssh"))),
        ),
        listener(
            Protocol::Tcp,
            "127.0.0.1",
            6379,
            "redis-server",
            Some((TlsFact::None, Some("redis"))),
        ),
    ]
}
