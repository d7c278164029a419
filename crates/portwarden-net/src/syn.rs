//! The SYN scan (`-sS`): raw-socket sender and receiver, no socket per probe. Each SYN
//! carries a stateless cookie in its sequence number (a keyed hash of the four-tuple,
//! like masscan), so an answer is recognised by its acknowledgement number alone; a
//! SYN-ACK is open, a RST closed, an ICMP unreachable or silence after the retries
//! filtered. Pacing is the connect scan's loss-driven window, or a fixed `--rate`.
//!
//! The source port is held by a bound TCP socket for the whole scan, so no other socket
//! of this host can use it; the kernel's RSTs to the SYN-ACKs it did not expect are left
//! to the caller to suppress (a firewall rule, `portwarden-os`), since this crate never
//! changes the host.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use portwarden_core::Protocol;

use crate::scan::{
    PortResult, PortState, ScanConfig, ScanOutcome, Timing, Window, setsockopt_int, sockaddr,
};

/// The least a host that has not answered yet waits on the group's RTT.
const GROUP_MIN_TIMEOUT: Duration = Duration::from_millis(100);

/// The fastest `--rate` accepted, in packets per second.
pub const RATE_MAX: u32 = 1_000_000;

/// Why a SYN scan cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SynError {
    /// Raw sockets need CAP_NET_RAW.
    #[error(
        "a SYN scan needs raw sockets (CAP_NET_RAW: run as root); `-sT` (the connect scan, which needs no privilege) scans without them"
    )]
    Privilege,
    /// Anything else the kernel refused.
    #[error("cannot set up the SYN scan: {0}")]
    Io(io::Error),
}

impl From<io::Error> for SynError {
    fn from(e: io::Error) -> Self {
        SynError::Io(e)
    }
}

struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the descriptor is owned by this value and closed once.
        unsafe { libc::close(self.0) };
    }
}

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

fn raw_socket(fam: libc::c_int, proto: libc::c_int) -> Result<Fd, SynError> {
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            fam,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            proto,
        )
    };
    if fd < 0 {
        let e = last_err();
        return Err(match e.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => SynError::Privilege,
            _ => SynError::Io(e),
        });
    }
    let fd = Fd(fd);
    // Large buffers: answers arrive in bursts at high rates, and every probe to a host
    // whose address does not resolve stays charged to the socket until the neighbour
    // lookup fails (seconds), which would otherwise starve the probes to live hosts.
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        setsockopt_int(fd.0, libc::SOL_SOCKET, opt, 16 << 20);
    }
    Ok(fd)
}

/// One datagram on a raw socket to `dst`.
fn send_to(fd: &Fd, bytes: &[u8], dst: IpAddr) -> io::Result<()> {
    let sa = sockaddr(SocketAddr::new(dst, 0));
    // SAFETY: a valid buffer and sockaddr of the stated lengths.
    let n = unsafe {
        libc::sendto(
            fd.0,
            bytes.as_ptr().cast(),
            bytes.len(),
            0,
            sa.as_ptr(),
            sa.len(),
        )
    };
    if n < 0 { Err(last_err()) } else { Ok(()) }
}

/// The source address the kernel routes to `dst` from (a connected UDP socket's name).
fn route_source(dst: IpAddr) -> io::Result<IpAddr> {
    let bind: SocketAddr = if dst.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(bind)?;
    s.connect((dst, 9))?;
    Ok(s.local_addr()?.ip())
}

/// The Internet checksum of `parts`, concatenated.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for p in parts {
        for &b in *p {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP SYN with an MSS option (what nmap sends), checksummed for IPv4; for IPv6 the
/// kernel fills the checksum (`IPV6_CHECKSUM`).
pub fn syn_segment(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, seq: u32) -> Vec<u8> {
    let mut t = Vec::with_capacity(24);
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes()); // ack
    t.push(6 << 4); // data offset: 6 words
    t.push(0x02); // SYN
    t.extend_from_slice(&1024u16.to_be_bytes()); // window
    t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    t.extend_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
    if let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) {
        let mut pseudo = Vec::with_capacity(12);
        pseudo.extend_from_slice(&s.octets());
        pseudo.extend_from_slice(&d.octets());
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&(t.len() as u16).to_be_bytes());
        let c = checksum(&[&pseudo, &t]);
        t[16..18].copy_from_slice(&c.to_be_bytes());
    }
    t
}

/// What one TCP segment from a target says about the probe it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// The target (the segment's source).
    pub addr: IpAddr,
    /// The target port (the segment's source port).
    pub port: u16,
    /// The port it was sent to (our source port).
    pub to_port: u16,
    /// Its acknowledgement number.
    pub ack: u32,
    /// SYN-ACK (open) or RST (closed); `None` for anything else.
    pub state: Option<PortState>,
}

/// Reads a TCP segment `tcp` that came from `from`.
pub fn parse_reply(tcp: &[u8], from: IpAddr) -> Option<Reply> {
    if tcp.len() < 20 {
        return None;
    }
    let flags = tcp[13];
    let state = if flags & 0x12 == 0x12 {
        Some(PortState::Open)
    } else if flags & 0x04 != 0 {
        Some(PortState::Closed)
    } else {
        None
    };
    Some(Reply {
        addr: from,
        port: u16::from_be_bytes([tcp[0], tcp[1]]),
        to_port: u16::from_be_bytes([tcp[2], tcp[3]]),
        ack: u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
        state,
    })
}

/// An IPv4 packet's source and payload when it carries `proto`.
fn ipv4_payload(pkt: &[u8], proto: u8) -> Option<(IpAddr, &[u8])> {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 || pkt[9] != proto {
        return None;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
    Some((IpAddr::V4(src), pkt.get(ihl..)?))
}

/// The ICMP echo request of a host ping: identifier `id` (our source port), sequence
/// `seq`, checksummed.
pub fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut m = vec![8, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(b"portwarden ping");
    let c = checksum(&[&m]);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// The ICMPv6 echo request (type 128) of a host ping; the kernel fills the checksum.
pub fn echo_request6(id: u16, seq: u16) -> Vec<u8> {
    let mut m = vec![128, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(b"portwarden ping");
    m
}

/// An ICMP echo reply to one of our pings: (the host that answered, identifier).
fn parse_echo_reply(pkt: &[u8]) -> Option<(IpAddr, u16)> {
    let (from, icmp) = ipv4_payload(pkt, 1)?;
    if icmp.len() < 8 || icmp[0] != 0 {
        return None;
    }
    Some((from, u16::from_be_bytes([icmp[4], icmp[5]])))
}

/// An ICMP destination-unreachable about one of our SYNs: (target, port, our port, seq).
fn parse_icmp_unreachable(pkt: &[u8]) -> Option<(IpAddr, u16, u16, u32)> {
    let (_, icmp) = ipv4_payload(pkt, 1)?;
    if icmp.len() < 8 || icmp[0] != 3 {
        return None;
    }
    let inner = &icmp[8..];
    if inner.len() < 20 || inner[0] >> 4 != 4 || inner[9] != 6 {
        return None;
    }
    let ihl = usize::from(inner[0] & 0x0f) * 4;
    let dst = Ipv4Addr::new(inner[16], inner[17], inner[18], inner[19]);
    let tcp = inner.get(ihl..ihl + 8)?;
    Some((
        IpAddr::V4(dst),
        u16::from_be_bytes([tcp[2], tcp[3]]),
        u16::from_be_bytes([tcp[0], tcp[1]]),
        u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
    ))
}

/// The keyed cookie of one probe: what its SYN's sequence number is, and what a reply's
/// acknowledgement number must be minus one.
#[derive(Clone)]
struct Cookie(std::collections::hash_map::RandomState);

impl Cookie {
    fn of(&self, dst: IpAddr, dport: u16, sport: u16) -> u32 {
        let mut h = self.0.build_hasher();
        match dst {
            IpAddr::V4(a) => h.write(&a.octets()),
            IpAddr::V6(a) => h.write(&a.octets()),
        }
        h.write_u16(dport);
        h.write_u16(sport);
        h.finish() as u32
    }
}

/// A SYN scan set up and ready: raw sockets open, the source port held.
pub struct SynScanner {
    v4: Option<Fd>,
    v6: Option<Fd>,
    icmp: Option<Fd>,
    icmp6: Option<Fd>,
    /// Holds the source port (never listens, never connects).
    _hold: Vec<std::net::TcpListener>,
    sport: u16,
    sources: HashMap<IpAddr, IpAddr>,
}

fn hold_port() -> io::Result<(Vec<std::net::TcpListener>, u16)> {
    use std::os::fd::FromRawFd;
    // A bound, never-listening socket reserves the port for both families.
    let mut tries = 0;
    loop {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(last_err());
        }
        let sa = sockaddr((Ipv4Addr::UNSPECIFIED, 0).into());
        // SAFETY: `sa` holds a valid sockaddr of `sa.len()` bytes.
        if unsafe { libc::bind(fd, sa.as_ptr(), sa.len()) } != 0 {
            let e = last_err();
            // SAFETY: closing the descriptor we just made.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        // SAFETY: `fd` is a valid, owned socket descriptor.
        let v4 = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        let port = v4.local_addr()?.port();
        let mut held = vec![v4];
        // SAFETY: plain socket(2).
        let fd6 =
            unsafe { libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd6 >= 0 {
            setsockopt_int(fd6, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1);
            let sa = sockaddr((Ipv6Addr::UNSPECIFIED, port).into());
            // SAFETY: as above.
            if unsafe { libc::bind(fd6, sa.as_ptr(), sa.len()) } == 0 {
                // SAFETY: `fd6` is a valid, owned socket descriptor.
                held.push(unsafe { std::net::TcpListener::from_raw_fd(fd6) });
            } else {
                // SAFETY: closing the descriptor we just made.
                unsafe { libc::close(fd6) };
                tries += 1;
                if tries < 20 {
                    continue; // taken for IPv6: another port
                }
            }
        }
        return Ok((held, port));
    }
}

impl SynScanner {
    /// Opens the raw sockets the targets need and holds a source port; `Privilege`
    /// without CAP_NET_RAW.
    pub fn new(targets: &[IpAddr]) -> Result<SynScanner, SynError> {
        let want4 = targets.iter().any(|a| a.is_ipv4());
        let want6 = targets.iter().any(|a| a.is_ipv6());
        let v4 = want4
            .then(|| raw_socket(libc::AF_INET, libc::IPPROTO_TCP))
            .transpose()?;
        let icmp = want4
            .then(|| raw_socket(libc::AF_INET, libc::IPPROTO_ICMP))
            .transpose()?;
        let v6 = want6
            .then(|| raw_socket(libc::AF_INET6, libc::IPPROTO_TCP))
            .transpose()?;
        // The kernel fills ICMPv6 checksums itself.
        let icmp6 = want6
            .then(|| raw_socket(libc::AF_INET6, libc::IPPROTO_ICMPV6))
            .transpose()?;
        if let Some(fd) = &v6 {
            // The kernel computes (and checks) the TCP checksum at offset 16.
            setsockopt_int(fd.0, libc::IPPROTO_IPV6, libc::IPV6_CHECKSUM, 16);
        }
        // A target with no route (or a broadcast address, which a socket may not reach
        // without asking) gets no source: its probes fail at once, as filtered.
        let mut sources = HashMap::new();
        for &t in targets {
            if let Ok(src) = route_source(t) {
                sources.insert(t, src);
            }
        }
        let (hold, sport) = hold_port()?;
        Ok(SynScanner {
            v4,
            v6,
            icmp,
            icmp6,
            _hold: hold,
            sport,
            sources,
        })
    }

    /// Sends two ICMP (or ICMPv6) echo requests to each target (the answers are read by the next
    /// `run`, into `echoed`): the ICMP half of host discovery.
    pub fn ping(&self, targets: &[IpAddr]) {
        // Twice: one lost request must not hide a host that answers only pings.
        for (i, t) in targets.iter().chain(targets.iter()).enumerate() {
            let (fd, m) = match t {
                IpAddr::V4(_) => (&self.icmp, echo_request(self.sport, i as u16)),
                IpAddr::V6(_) => (&self.icmp6, echo_request6(self.sport, i as u16)),
            };
            let Some(fd) = fd else {
                continue;
            };
            // A lost ping is what the second one is for.
            let _ = send_to(fd, &m, *t);
        }
    }

    /// The source port every probe uses (for a rule that drops the kernel's RSTs from it).
    pub fn source_port(&self) -> u16 {
        self.sport
    }

    fn send(&self, dst: IpAddr, dport: u16, seq: u32) -> io::Result<()> {
        let src = self
            .sources
            .get(&dst)
            .copied()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENETUNREACH))?;
        let seg = syn_segment(src, dst, self.sport, dport, seq);
        let fd = match dst {
            IpAddr::V4(_) => self.v4.as_ref(),
            IpAddr::V6(_) => self.v6.as_ref(),
        }
        .ok_or_else(|| io::Error::other("no raw socket for this family"))?;
        send_to(fd, &seg, dst)
    }

    /// Scans every (address, port) until done or `stop` is set (then what was learnt so
    /// far comes back, unfinished ports left out, `interrupted` set).
    pub fn run(
        &self,
        targets: &[IpAddr],
        ports: &[u16],
        cfg: &ScanConfig,
        progress: Arc<dyn Fn(u64, u64) + Send + Sync>,
        stop: &AtomicBool,
    ) -> ScanOutcome {
        use std::cmp::Reverse;
        struct Probe {
            tries: u32,
            sent: Instant,
            seq: u64,
        }
        struct Host {
            timing: Timing,
            max_answered_try: u32,
        }
        let cookie = Cookie(std::collections::hash_map::RandomState::new());
        let total = (targets.len() * ports.len()) as u64;
        let mut out = ScanOutcome::default();
        // Ports interleaved across hosts, so no host sees a burst.
        let mut queue: VecDeque<(IpAddr, u16, u32)> = ports
            .iter()
            .flat_map(|&p| targets.iter().map(move |&a| (a, p, 0)))
            .collect();
        let mut pending: HashMap<(IpAddr, u16), Probe> = HashMap::new();
        let mut deadlines: BinaryHeap<Reverse<(Instant, u64, IpAddr, u16)>> = BinaryHeap::new();
        let mut hosts: HashMap<IpAddr, Host> = targets
            .iter()
            .map(|&a| {
                (
                    a,
                    Host {
                        timing: Timing::new(),
                        max_answered_try: 0,
                    },
                )
            })
            .collect();
        let mut win = Window::starting(cfg.initial_window, cfg.max_window.max(1));
        let mut next_seq = 0u64;
        let mut done = 0u64;
        let mut reported = 0u64;
        progress(0, total);
        // Token bucket for --rate.
        let rate = cfg.rate.map(|r| f64::from(r.clamp(1, RATE_MAX)));
        let mut tokens = 1.0f64;
        let mut last_fill = Instant::now();
        let mut buf = vec![0u8; 65_536];
        let fds: Vec<(libc::c_int, u8)> = [
            (&self.v4, 4u8),
            (&self.v6, 6),
            (&self.icmp, 1),
            (&self.icmp6, 58),
        ]
        .iter()
        .filter_map(|(f, k)| f.as_ref().map(|f| (f.0, *k)))
        .collect();

        let retries = |hosts: &HashMap<IpAddr, Host>, a: IpAddr| {
            hosts
                .get(&a)
                .map_or(1, |h| h.max_answered_try + 1)
                .min(cfg.retries)
        };
        // Every first-try answer, from any host: the timeout of hosts that have not
        // answered yet, like nmap's group timing, so a /24 of mostly silent addresses is
        // not waited on at the initial timeout once its live hosts have shown the RTT.
        let mut group = Timing::new();
        let mut group_applied = false;
        // Not below nmap's -T4 minimum of 100 ms: a host farther away than the ones that
        // answered still answers within its second try.
        let group_timeout = |group: &Timing| {
            if group.measured() {
                group
                    .timeout(cfg)
                    .max(GROUP_MIN_TIMEOUT.min(cfg.initial_timeout))
            } else {
                cfg.initial_timeout
            }
        };
        let timeout = |hosts: &HashMap<IpAddr, Host>, group: &Timing, a: IpAddr| match hosts.get(&a)
        {
            Some(h) if h.timing.measured() => h.timing.timeout(cfg),
            _ => group_timeout(group),
        };

        loop {
            if stop.load(Ordering::Relaxed) {
                out.interrupted = true;
                break;
            }
            // Send while the window (and the rate) allow.
            if let Some(r) = rate {
                let now = Instant::now();
                tokens = (tokens + now.duration_since(last_fill).as_secs_f64() * r)
                    .min((r / 100.0).max(1.0));
                last_fill = now;
            }
            while pending.len() < win.get() && (rate.is_none() || tokens >= 1.0) {
                let Some((addr, port, tries)) = queue.pop_front() else {
                    break;
                };
                // This host's own address, our own source port: bound by us, listening
                // for nobody, and its RST is the one we suppress. It is closed.
                if port == self.sport && self.sources.get(&addr) == Some(&addr) {
                    out.probes += 1;
                    out.closed += 1;
                    done += 1;
                    continue;
                }
                let c = cookie.of(addr, port, self.sport);
                match self.send(addr, port, c) {
                    // ENOBUFS: this destination's neighbour queue is full (it does not
                    // resolve yet): the packet is lost for this host alone, and its
                    // deadline retries it. Not a reason to hold back everyone else.
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOMEM)) => {
                        // The queue is full: wait for answers, send less.
                        queue.push_front((addr, port, tries));
                        win.cap(pending.len() / 2);
                        break;
                    }
                    Err(_) => {
                        // Unreachable from here (no route): filtered, at once.
                        out.probes += 1;
                        out.ports.push(PortResult {
                            addr,
                            port,
                            protocol: Protocol::Tcp,
                            state: PortState::Filtered,
                        });
                        done += 1;
                        continue;
                    }
                }
                out.probes += 1;
                tokens -= 1.0;
                let now = Instant::now();
                next_seq += 1;
                deadlines.push(Reverse((
                    now + timeout(&hosts, &group, addr),
                    next_seq,
                    addr,
                    port,
                )));
                pending.insert(
                    (addr, port),
                    Probe {
                        tries,
                        sent: now,
                        seq: next_seq,
                    },
                );
            }
            if pending.is_empty() && queue.is_empty() {
                break;
            }
            // Wait for answers until the next deadline (or the next token).
            while let Some(Reverse((_, seq, a, p))) = deadlines.peek() {
                if pending.get(&(*a, *p)).is_some_and(|x| x.seq == *seq) {
                    break;
                }
                deadlines.pop();
            }
            let now = Instant::now();
            let mut wait = deadlines
                .peek()
                .map_or(Duration::from_millis(50), |Reverse((d, ..))| {
                    d.saturating_duration_since(now)
                });
            if rate.is_some() && !queue.is_empty() && pending.len() < win.get() {
                wait = wait.min(Duration::from_millis(1));
            }
            let mut pfds: Vec<libc::pollfd> = fds
                .iter()
                .map(|(fd, _)| libc::pollfd {
                    fd: *fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            let ms = wait.as_millis().min(100) as libc::c_int;
            // SAFETY: `pfds` is a valid array of its length.
            unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
            for (i, (fd, kind)) in fds.iter().enumerate() {
                if pfds[i].revents == 0 {
                    continue;
                }
                // Bounded per round: a flood of other traffic must not keep the loop
                // from its deadlines or from a stop.
                for _ in 0..4096 {
                    // SAFETY: recvfrom writes at most the buffer's length, and fills at
                    // most the address storage and length socket2 hands it.
                    let got = unsafe {
                        socket2::SockAddr::try_init(|ss, sl| {
                            Ok(libc::recvfrom(
                                *fd,
                                buf.as_mut_ptr().cast(),
                                buf.len(),
                                0,
                                ss.cast(),
                                sl,
                            ))
                        })
                    };
                    let Ok((n, from)) = got else { break };
                    let from = from.as_socket().map(|a| a.ip());
                    if n <= 0 {
                        break;
                    }
                    let pkt = &buf[..n as usize];
                    // (target, port, state, whether the reply checks out)
                    let checked = |r: Reply| {
                        let ours = r.to_port == self.sport
                            && r.ack == cookie.of(r.addr, r.port, self.sport).wrapping_add(1);
                        (r.addr, r.port, r.state, ours)
                    };
                    let got = match kind {
                        4 => ipv4_payload(pkt, 6)
                            .and_then(|(from, tcp)| parse_reply(tcp, from))
                            .map(checked),
                        6 => from.and_then(|from| parse_reply(pkt, from)).map(checked),
                        58 => {
                            // An ICMPv6 echo reply (type 129) to one of our pings.
                            if pkt.len() >= 8
                                && pkt[0] == 129
                                && u16::from_be_bytes([pkt[4], pkt[5]]) == self.sport
                            {
                                out.echoed.extend(from);
                            }
                            None
                        }
                        _ if parse_echo_reply(pkt).is_some_and(|(_, id)| id == self.sport) => {
                            if let Some((a, _)) = parse_echo_reply(pkt) {
                                out.echoed.push(a);
                            }
                            None
                        }
                        _ => parse_icmp_unreachable(pkt).map(|(a, p, sp, seq)| {
                            let ours = sp == self.sport && seq == cookie.of(a, p, self.sport);
                            // The target itself saying "unreachable" (port or protocol
                            // unreachable) is alive, as nmap counts it.
                            if ours && ipv4_payload(pkt, 1).is_some_and(|(from, _)| from == a) {
                                out.echoed.push(a);
                            }
                            (a, p, Some(PortState::Filtered), ours)
                        }),
                    };
                    let Some((addr, port, Some(state), true)) = got else {
                        continue;
                    };
                    let Some(probe) = pending.remove(&(addr, port)) else {
                        continue; // a duplicate, or an answer after we gave up
                    };
                    if state != PortState::Filtered {
                        if let Some(h) = hosts.get_mut(&addr) {
                            if probe.tries == 0 {
                                h.timing.sample(probe.sent.elapsed());
                                group.sample(probe.sent.elapsed());
                            }
                            h.max_answered_try = h.max_answered_try.max(probe.tries);
                        }
                        if probe.tries > 0 {
                            win.loss(timeout(&hosts, &group, addr));
                        } else {
                            win.grow();
                        }
                    }
                    done += 1;
                    if state == PortState::Closed {
                        out.closed += 1;
                    } else {
                        out.ports.push(PortResult {
                            addr,
                            port,
                            protocol: Protocol::Tcp,
                            state,
                        });
                    }
                }
            }
            // The first RTT measured: the probes in flight to hosts that have said
            // nothing yet wait the group's timeout from when they were sent, not the
            // initial one.
            if group.measured() && !group_applied {
                group_applied = true;
                for (&(a, p), probe) in pending.iter_mut() {
                    if hosts.get(&a).is_some_and(|h| !h.timing.measured()) {
                        next_seq += 1;
                        probe.seq = next_seq;
                        let d = probe.sent + group_timeout(&group);
                        deadlines.push(Reverse((d, next_seq, a, p)));
                    }
                }
            }
            // Unanswered past their deadline: retransmit or call it filtered.
            let now = Instant::now();
            while let Some(Reverse((d, seq, a, p))) = deadlines.peek().copied() {
                if d > now {
                    break;
                }
                deadlines.pop();
                if pending.get(&(a, p)).is_none_or(|x| x.seq != seq) {
                    continue;
                }
                let Some(probe) = pending.remove(&(a, p)) else {
                    continue;
                };
                win.grow();
                if probe.tries < retries(&hosts, a) {
                    queue.push_front((a, p, probe.tries + 1));
                } else {
                    done += 1;
                    out.ports.push(PortResult {
                        addr: a,
                        port: p,
                        protocol: Protocol::Tcp,
                        state: PortState::Filtered,
                    });
                }
            }
            // Paced, every settled probe is news (a slow scan shows it moves).
            if done - reported >= 512 || (rate.is_some() && done > reported) {
                reported = done;
                progress(done, total);
            }
        }
        progress(done, total);
        out.ports.sort_by_key(|r| (r.addr, r.port));
        out.srtt_us = hosts
            .values()
            .map(|h| h.timing.srtt_us())
            .max()
            .unwrap_or(0);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_segments_checksum_to_zero_with_their_pseudo_header() {
        let (s, d) = (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 1));
        let seg = syn_segment(s.into(), d.into(), 40_000, 22, 0xdead_beef);
        assert_eq!(seg.len(), 24);
        assert_eq!(seg[13], 0x02);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&s.octets());
        pseudo.extend_from_slice(&d.octets());
        pseudo.extend_from_slice(&[0, 6, 0, 24]);
        assert_eq!(checksum(&[&pseudo, &seg]), 0);
    }

    #[test]
    fn replies_are_read_by_their_flags() {
        let mut t = syn_segment(
            Ipv4Addr::LOCALHOST.into(),
            Ipv4Addr::LOCALHOST.into(),
            22,
            40_000,
            7,
        );
        t[8..12].copy_from_slice(&8u32.to_be_bytes());
        t[13] = 0x12;
        let r = parse_reply(&t, Ipv4Addr::LOCALHOST.into()).unwrap();
        assert_eq!(
            (r.port, r.to_port, r.ack, r.state),
            (22, 40_000, 8, Some(PortState::Open))
        );
        t[13] = 0x14;
        assert_eq!(
            parse_reply(&t, Ipv4Addr::LOCALHOST.into()).unwrap().state,
            Some(PortState::Closed)
        );
        t[13] = 0x10;
        assert_eq!(
            parse_reply(&t, Ipv4Addr::LOCALHOST.into()).unwrap().state,
            None
        );
        assert!(parse_reply(&t[..10], Ipv4Addr::LOCALHOST.into()).is_none());
    }
}
