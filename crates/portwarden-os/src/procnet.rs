//! The `/proc/net/{tcp,tcp6,udp,udp6}` fallback, for when netlink sock_diag is refused.
//! Slower (the kernel formats text, quadratic at scale), but always there.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use portwarden_core::Protocol;
use portwarden_core::facts::{Family, Socket, SocketState};

/// Parses one `/proc/net/*` table. Malformed lines are skipped.
pub fn parse(text: &str, protocol: Protocol, family: Family) -> Vec<Socket> {
    text.lines()
        .skip(1)
        .filter_map(|l| parse_line(l, protocol, family))
        .collect()
}

fn parse_line(line: &str, protocol: Protocol, family: Family) -> Option<Socket> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 {
        return None;
    }
    let (local_addr, local_port) = endpoint(f[1], family)?;
    let (remote_addr, remote_port) = endpoint(f[2], family)?;
    let state = SocketState::from_kernel(u8::from_str_radix(f[3], 16).ok()?, protocol)?;
    let (tx, rx) = f[4].split_once(':')?;
    let uid = f[7].parse().ok()?;
    let inode = f[9].parse().ok()?;
    Some(Socket {
        protocol,
        family,
        state,
        local_addr,
        local_port,
        remote_addr,
        remote_port,
        interface: 0,
        recv_q: u32::from_str_radix(rx, 16).ok()?,
        send_q: u32::from_str_radix(tx, 16).ok()?,
        uid,
        inode,
        owners: None,
    })
}

/// `0100007F:0016` → 127.0.0.1:22. Addresses are printed as the host-order hex of
/// network-order words.
fn endpoint(s: &str, family: Family) -> Option<(IpAddr, u16)> {
    let (a, p) = s.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let addr = match family {
        Family::Inet if a.len() == 8 => {
            let w = u32::from_str_radix(a, 16).ok()?;
            IpAddr::V4(Ipv4Addr::from(w.to_ne_bytes()))
        }
        Family::Inet6 if a.len() == 32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                let w = u32::from_str_radix(&a[i * 8..i * 8 + 8], 16).ok()?;
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some((addr, port))
}

/// Reads one table from `/proc/net`.
pub fn read(protocol: Protocol, family: Family) -> io::Result<Vec<Socket>> {
    let name = match (protocol, family) {
        (Protocol::Tcp, Family::Inet) => "tcp",
        (Protocol::Tcp, Family::Inet6) => "tcp6",
        (Protocol::Udp, Family::Inet) => "udp",
        (Protocol::Udp, Family::Inet6) => "udp6",
    };
    let text = std::fs::read_to_string(format!("/proc/net/{name}"))?;
    Ok(parse(&text, protocol, family))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fixture_tables() {
        let tcp = parse(
            include_str!("../tests/data/proc_net_tcp"),
            Protocol::Tcp,
            Family::Inet,
        );
        assert_eq!(tcp.len(), 3);
        assert_eq!(tcp[0].state, SocketState::Listen);
        assert_eq!(tcp[0].local_addr.to_string(), "127.0.0.1");
        assert_eq!(tcp[0].local_port, 22);
        assert_eq!(tcp[0].send_q, 0);
        assert_eq!(tcp[1].state, SocketState::Established);
        assert_eq!(tcp[1].remote_addr.to_string(), "10.0.2.2");
        assert_eq!(tcp[1].remote_port, 51234);
        assert_eq!(tcp[1].uid, 1000);
        assert_eq!(tcp[1].inode, 98765);
        assert_eq!(tcp[2].state, SocketState::TimeWait);

        let tcp6 = parse(
            include_str!("../tests/data/proc_net_tcp6"),
            Protocol::Tcp,
            Family::Inet6,
        );
        assert_eq!(tcp6.len(), 2);
        assert_eq!(tcp6[0].local_addr.to_string(), "::");
        assert_eq!(tcp6[0].local_port, 443);
        assert_eq!(tcp6[1].local_addr.to_string(), "::1");

        let udp = parse(
            include_str!("../tests/data/proc_net_udp"),
            Protocol::Udp,
            Family::Inet,
        );
        assert_eq!(udp.len(), 1);
        assert_eq!(udp[0].state, SocketState::Unconn);
        assert_eq!(udp[0].local_port, 53);
    }
}
