//! The PROXY protocol (HAProxy's spec, versions 1 and 2): the header a balancer sends a
//! backend first so that the backend logs the real client, and the parser for the header a
//! fronting balancer sends us.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use portwarden_core::addr::unmapped;

/// The twelve bytes a version 2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 header (the spec's 107 bytes).
pub const V1_MAX: usize = 107;
/// The longest version 2 header we accept (16 bytes, addresses and TLVs).
pub const V2_MAX: usize = 16 + 1024;

/// Both ends in one family: IPv4 when both are (or map to) IPv4, else both as IPv6.
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (s, d) = (unmapped(src), unmapped(dst));
    match (s.ip(), d.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => (s, d),
        _ => {
            let six = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
                IpAddr::V6(_) => a,
            };
            (six(s), six(d))
        }
    }
}

/// The version 1 header for a TCP connection from `src` to `dst`.
pub fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (s, d) = same_family(src, dst);
    let fam = if s.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {fam} {} {} {} {}\r\n",
        s.ip(),
        d.ip(),
        s.port(),
        d.port()
    )
    .into_bytes()
}

/// The version 2 header (command PROXY, stream transport) for `src` to `dst`.
pub fn v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (s, d) = same_family(src, dst);
    let mut h = V2_SIGNATURE.to_vec();
    h.push(0x21);
    match (s.ip(), d.ip()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            h.push(0x11);
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&a.octets());
            h.extend_from_slice(&b.octets());
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            h.push(0x21);
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&a.octets());
            h.extend_from_slice(&b.octets());
        }
        _ => unreachable!("same_family returns one family"),
    }
    h.extend_from_slice(&s.port().to_be_bytes());
    h.extend_from_slice(&d.port().to_be_bytes());
    h
}

/// What a received header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The client and the address it connected to.
    Proxied {
        /// The client.
        src: SocketAddr,
        /// Where it connected.
        dst: SocketAddr,
    },
    /// `UNKNOWN` (v1) or `LOCAL` (v2), or a family we do not proxy: the connection's own
    /// addresses stand.
    Local,
}

/// Parsing a received header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// A whole header of this many bytes.
    Done(Header, usize),
    /// Too few bytes yet to tell.
    Incomplete,
    /// Not a PROXY header, or a malformed one.
    Bad(&'static str),
}

/// Reads a header from the first bytes of a connection (v1 or v2).
pub fn parse(buf: &[u8]) -> Parse {
    if buf.starts_with(b"PROXY") || (!buf.is_empty() && b"PROXY".starts_with(buf)) {
        return parse_v1(buf);
    }
    let n = buf.len().min(12);
    if buf[..n] != V2_SIGNATURE[..n] {
        return Parse::Bad("not a PROXY protocol header");
    }
    if buf.len() < 16 {
        return Parse::Incomplete;
    }
    parse_v2(buf)
}

fn parse_v1(buf: &[u8]) -> Parse {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Parse::Bad("PROXY v1 header without CRLF in 107 bytes")
        } else {
            Parse::Incomplete
        };
    };
    if end + 2 > V1_MAX {
        return Parse::Bad("PROXY v1 header longer than 107 bytes");
    }
    let Ok(line) = std::str::from_utf8(&buf[..end]) else {
        return Parse::Bad("PROXY v1 header is not text");
    };
    let f: Vec<&str> = line.split(' ').collect();
    if f.len() >= 2 && f[0] == "PROXY" && f[1] == "UNKNOWN" {
        return Parse::Done(Header::Local, end + 2);
    }
    if f.len() != 6 || f[0] != "PROXY" {
        return Parse::Bad("PROXY v1 header is not `PROXY TCP4|TCP6 SRC DST SPORT DPORT`");
    }
    let ip = |s: &str, v6: bool| -> Option<IpAddr> {
        if v6 {
            s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
        } else {
            s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
        }
    };
    // Ports are decimal without sign or leading zeros (the spec); `u16` parsing would
    // accept `+80`.
    let port = |s: &str| -> Option<u16> {
        if s.is_empty()
            || !s.bytes().all(|b| b.is_ascii_digit())
            || (s.len() > 1 && s.starts_with('0'))
        {
            return None;
        }
        s.parse().ok()
    };
    let v6 = match f[1] {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Parse::Bad("PROXY v1 family is not TCP4, TCP6 or UNKNOWN"),
    };
    match (ip(f[2], v6), ip(f[3], v6), port(f[4]), port(f[5])) {
        (Some(s), Some(d), Some(sp), Some(dp)) => Parse::Done(
            Header::Proxied {
                src: SocketAddr::new(s, sp),
                dst: SocketAddr::new(d, dp),
            },
            end + 2,
        ),
        _ => Parse::Bad("PROXY v1 header has a bad address or port"),
    }
}

fn parse_v2(buf: &[u8]) -> Parse {
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Parse::Bad("PROXY v2 header with another version");
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if 16 + len > V2_MAX {
        return Parse::Bad("PROXY v2 header longer than we accept");
    }
    if buf.len() < 16 + len {
        return Parse::Incomplete;
    }
    let total = 16 + len;
    match ver_cmd & 0x0f {
        0 => return Parse::Done(Header::Local, total),
        1 => {}
        _ => return Parse::Bad("PROXY v2 command is neither LOCAL nor PROXY"),
    }
    let body = &buf[16..total];
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    match buf[13] {
        0x11 | 0x12 if len >= 12 => {
            let s = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let d = Ipv4Addr::new(body[4], body[5], body[6], body[7]);
            Parse::Done(
                Header::Proxied {
                    src: SocketAddr::new(IpAddr::V4(s), port(&body[8..])),
                    dst: SocketAddr::new(IpAddr::V4(d), port(&body[10..])),
                },
                total,
            )
        }
        0x21 | 0x22 if len >= 36 => {
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&body[..16]);
            d.copy_from_slice(&body[16..32]);
            Parse::Done(
                Header::Proxied {
                    src: SocketAddr::new(IpAddr::V6(Ipv6Addr::from(s)), port(&body[32..])),
                    dst: SocketAddr::new(IpAddr::V6(Ipv6Addr::from(d)), port(&body[34..])),
                },
                total,
            )
        }
        0x11 | 0x12 | 0x21 | 0x22 => Parse::Bad("PROXY v2 address block too short"),
        // AF_UNSPEC or AF_UNIX: the connection's own addresses stand.
        _ => Parse::Done(Header::Local, total),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_round_trips() {
        let h = v1(a("192.0.2.7:40000"), a("198.51.100.1:873"));
        assert_eq!(h, b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 873\r\n");
        assert_eq!(
            parse(&h),
            Parse::Done(
                Header::Proxied {
                    src: a("192.0.2.7:40000"),
                    dst: a("198.51.100.1:873")
                },
                h.len()
            )
        );
        let h6 = v1(a("[2001:db8::7]:1"), a("[::ffff:10.0.0.1]:2"));
        assert!(h6.starts_with(b"PROXY TCP6 2001:db8::7 ::ffff:10.0.0.1 1 2\r\n"));
        let m = v1(a("[::ffff:10.0.0.2]:5"), a("10.0.0.1:6"));
        assert_eq!(
            m, b"PROXY TCP4 10.0.0.2 10.0.0.1 5 6\r\n",
            "mapped addresses are IPv4"
        );
    }

    #[test]
    fn v2_round_trips() {
        for (s, d) in [
            ("192.0.2.7:40000", "198.51.100.1:873"),
            ("[2001:db8::7]:1", "[2001:db8::1]:873"),
        ] {
            let mut h = v2(a(s), a(d));
            let n = h.len();
            h.extend_from_slice(b"payload");
            assert_eq!(
                parse(&h),
                Parse::Done(
                    Header::Proxied {
                        src: a(s),
                        dst: a(d)
                    },
                    n
                )
            );
        }
    }

    #[test]
    fn hostile_headers_are_refused_or_wait() {
        assert_eq!(parse(b"PRO"), Parse::Incomplete);
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Parse::Incomplete);
        assert_eq!(
            parse(b"GET / HTTP/1.0\r\n"),
            Parse::Bad("not a PROXY protocol header")
        );
        assert!(matches!(parse(&[b'P'; 200]), Parse::Bad(_)));
        assert!(matches!(parse(&[b'A'; 200]), Parse::Bad(_)));
        let long = format!("PROXY TCP4 {} 1.1.1.1 1 2\r\n", "1".repeat(120));
        assert!(matches!(parse(long.as_bytes()), Parse::Bad(_)));
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n"),
            Parse::Bad(_)
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"),
            Parse::Bad(_)
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n"),
            Parse::Bad(_)
        ));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Parse::Done(Header::Local, 15));
        // v2: a length past what we accept, a short address block, a LOCAL command.
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(parse(&big), Parse::Bad(_)));
        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(matches!(parse(&short), Parse::Bad(_)));
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local), Parse::Done(Header::Local, 16));
        assert_eq!(parse(&V2_SIGNATURE[..7]), Parse::Incomplete);
        // Any prefix of a good header is incomplete, never bad.
        let h = v2(a("192.0.2.7:40000"), a("198.51.100.1:873"));
        for i in 1..h.len() {
            assert_eq!(parse(&h[..i]), Parse::Incomplete, "prefix {i}");
        }
        let h = v1(a("192.0.2.7:40000"), a("198.51.100.1:873"));
        for i in 1..h.len() {
            assert_eq!(parse(&h[..i]), Parse::Incomplete, "prefix {i}");
        }
    }
}
