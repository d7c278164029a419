//! Socket dumps over netlink `NETLINK_SOCK_DIAG` (inet_diag), as `ss` reads them: one
//! request per (family, protocol) with the kernel-side state filter, then a stream of
//! `inet_diag_msg` records.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use portwarden_core::Protocol;
use portwarden_core::facts::{Family, Socket, SocketState};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDRLEN: usize = 16;
const INET_DIAG_MSG_LEN: usize = 72;
const REQ_LEN: usize = NLMSG_HDRLEN + 56;

/// A netlink sock_diag socket.
pub struct DiagSocket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl DiagSocket {
    /// Opens the netlink socket. Fails where netlink is refused (restricted containers).
    pub fn open() -> io::Result<DiagSocket> {
        // SAFETY: plain socket(2) call; the returned descriptor is owned below.
        let fd = cvt(unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        })?;
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let size: libc::c_int = 1 << 20;
        // A larger receive buffer lets the kernel queue more of a dump between our reads;
        // failure only costs speed.
        // SAFETY: valid fd, pointer to a c_int of the stated size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        Ok(DiagSocket {
            fd,
            seq: 0,
            buf: vec![0u8; 64 * 1024],
        })
    }

    /// Dumps the sockets of one family and protocol whose kernel state number is in
    /// `states` (a bitmask of `1 << TCP_*`), appending them to `out`.
    pub fn dump(
        &mut self,
        family: Family,
        protocol: Protocol,
        states: u32,
        out: &mut Vec<Socket>,
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let req = request(family, protocol, states, self.seq);
        // SAFETY: the kernel address is a zeroed sockaddr_nl with nl_family set; `req` is a
        // valid buffer of REQ_LEN bytes.
        let sent = unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            libc::sendto(
                self.fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            // SAFETY: `buf` is a valid writable buffer of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Ok(());
            }
            if parse_messages(&self.buf[..n as usize], self.seq, protocol, out)? {
                return Ok(());
            }
        }
    }
}

fn request(family: Family, protocol: Protocol, states: u32, seq: u32) -> [u8; REQ_LEN] {
    let mut r = [0u8; REQ_LEN];
    r[0..4].copy_from_slice(&(REQ_LEN as u32).to_ne_bytes());
    r[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    r[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    r[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: the kernel.
    r[16] = match family {
        Family::Inet => libc::AF_INET as u8,
        Family::Inet6 => libc::AF_INET6 as u8,
    };
    r[17] = match protocol {
        Protocol::Tcp => libc::IPPROTO_TCP as u8,
        Protocol::Udp => libc::IPPROTO_UDP as u8,
    };
    // idiag_ext 0: no extensions; the base message has queues, uid and inode.
    r[20..24].copy_from_slice(&states.to_ne_bytes());
    r
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn addr(family: u8, raw: &[u8]) -> Option<IpAddr> {
    if family == libc::AF_INET as u8 {
        Some(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])))
    } else if family == libc::AF_INET6 as u8 {
        let mut o = [0u8; 16];
        o.copy_from_slice(&raw[..16]);
        Some(IpAddr::V6(Ipv6Addr::from(o)))
    } else {
        None
    }
}

/// Parses one datagram of a dump. Returns `Ok(true)` when the dump is complete.
pub(crate) fn parse_messages(
    mut b: &[u8],
    seq: u32,
    protocol: Protocol,
    out: &mut Vec<Socket>,
) -> io::Result<bool> {
    while b.len() >= NLMSG_HDRLEN {
        let len = u32_at(b, 0) as usize;
        let kind = u16_at(b, 4);
        let msg_seq = u32_at(b, 8);
        if len < NLMSG_HDRLEN || len > b.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated netlink message",
            ));
        }
        let payload = &b[NLMSG_HDRLEN..len];
        if msg_seq == seq {
            match kind {
                NLMSG_DONE => return Ok(true),
                NLMSG_ERROR => {
                    let errno = if payload.len() >= 4 {
                        -(u32_at(payload, 0) as i32)
                    } else {
                        libc::EIO
                    };
                    if errno == 0 {
                        return Ok(true);
                    }
                    return Err(io::Error::from_raw_os_error(errno));
                }
                SOCK_DIAG_BY_FAMILY if payload.len() >= INET_DIAG_MSG_LEN => {
                    if let Some(s) = socket_from_msg(payload, protocol) {
                        out.push(s);
                    }
                }
                _ => {}
            }
        }
        let aligned = (len + 3) & !3;
        if aligned >= b.len() {
            break;
        }
        b = &b[aligned..];
    }
    Ok(false)
}

fn socket_from_msg(m: &[u8], protocol: Protocol) -> Option<Socket> {
    let fam = m[0];
    let family = if fam == libc::AF_INET as u8 {
        Family::Inet
    } else {
        Family::Inet6
    };
    let state = SocketState::from_kernel(m[1], protocol)?;
    // inet_diag_sockid at offset 4: sport, dport (big-endian), src[16], dst[16], if, cookie.
    let sport = u16::from_be_bytes([m[4], m[5]]);
    let dport = u16::from_be_bytes([m[6], m[7]]);
    let local_addr = addr(fam, &m[8..24])?;
    let remote_addr = addr(fam, &m[24..40])?;
    let interface = u32_at(m, 40);
    Some(Socket {
        protocol,
        family,
        state,
        local_addr,
        local_port: sport,
        remote_addr,
        remote_port: dport,
        interface,
        recv_q: u32_at(m, 56),
        send_q: u32_at(m, 60),
        uid: u32_at(m, 64),
        inode: u64::from(u32_at(m, 68)),
        owners: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u32, kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload.len();
        let mut v = Vec::new();
        v.extend_from_slice(&(len as u32).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(&0u16.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn parses_a_listener_record_and_done() {
        let mut p = vec![0u8; INET_DIAG_MSG_LEN];
        p[0] = libc::AF_INET as u8;
        p[1] = 10; // LISTEN
        p[4..6].copy_from_slice(&8080u16.to_be_bytes());
        p[8..12].copy_from_slice(&[127, 0, 0, 1]);
        p[56..60].copy_from_slice(&3u32.to_ne_bytes());
        p[60..64].copy_from_slice(&4096u32.to_ne_bytes());
        p[64..68].copy_from_slice(&1000u32.to_ne_bytes());
        p[68..72].copy_from_slice(&424242u32.to_ne_bytes());
        let mut buf = msg(7, SOCK_DIAG_BY_FAMILY, &p);
        buf.extend(msg(6, SOCK_DIAG_BY_FAMILY, &p)); // another dump's record: ignored
        buf.extend(msg(7, NLMSG_DONE, &[0, 0, 0, 0]));
        let mut out = Vec::new();
        assert!(parse_messages(&buf, 7, Protocol::Tcp, &mut out).unwrap());
        assert_eq!(out.len(), 1);
        let s = &out[0];
        assert_eq!(s.state, SocketState::Listen);
        assert_eq!(s.local_port, 8080);
        assert_eq!(s.local_addr.to_string(), "127.0.0.1");
        assert_eq!(
            (s.recv_q, s.send_q, s.uid, s.inode),
            (3, 4096, 1000, 424242)
        );
    }

    #[test]
    fn kernel_errors_surface_as_io_errors() {
        let buf = msg(1, NLMSG_ERROR, &(-libc::ENOENT).to_ne_bytes());
        let e = parse_messages(&buf, 1, Protocol::Udp, &mut Vec::new()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn truncated_messages_are_refused() {
        let mut buf = msg(1, SOCK_DIAG_BY_FAMILY, &[0u8; INET_DIAG_MSG_LEN]);
        buf[0..4].copy_from_slice(&9999u32.to_ne_bytes());
        assert!(parse_messages(&buf, 1, Protocol::Tcp, &mut Vec::new()).is_err());
    }
}
