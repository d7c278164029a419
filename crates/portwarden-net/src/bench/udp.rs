//! UDP streams as iperf3 runs them: a stream opens with a 4-byte datagram the server
//! answers (both in host byte order: iperf3 3.12 writes 0x36373839 and expects
//! 0x39383736, older ones 123456789/987654321), then every datagram starts with the
//! sender's clock (seconds, microseconds) and a packet number from 1, network order. The
//! receiver counts loss from gaps in the numbers (a late packet un-counts one), and jitter
//! as RFC 3550 does: the mean deviation of transit-time differences, smoothed by 1/16.
//!
//! On the server, one unconnected socket on the test port takes the opening datagrams;
//! each stream gets a socket of its own bound to the same port and connected to the
//! client's, which the kernel then prefers for that client's datagrams.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::iperf::{
    UDP_CONNECT_MSG, UDP_CONNECT_MSG_NEW, UDP_CONNECT_REPLY, UDP_CONNECT_REPLY_NEW,
};
use super::stream::{Counters, Shared};

/// Bytes of a datagram's header (32-bit packet numbers).
pub const HEADER: usize = 12;
/// With `udp_counters_64bit`.
pub const HEADER_64: usize = 16;
/// iperf3's default rate for UDP, bits per second.
pub const DEFAULT_RATE: u64 = 1_000_000;

fn reuse_socket(local: SocketAddr) -> io::Result<UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(local),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    s.set_reuse_address(true)?;
    s.bind(&local.into())?;
    Ok(s.into())
}

/// The receive buffer a UDP stream asks for: a few milliseconds of a fast stream, so that
/// a receiver scheduled out for a moment does not drop what the link carried (the
/// kernel's default, 208 KiB, is about 50 loopback datagrams).
pub const RECV_BUFFER: usize = 8 << 20;

/// Raises a socket's receive buffer to `want` bytes: past `rmem_max` where allowed
/// (`SO_RCVBUFFORCE`, CAP_NET_ADMIN), else as far as it lets.
pub fn grow(s: &UdpSocket, want: usize) {
    use std::os::fd::AsRawFd;
    let v = want.min(i32::MAX as usize) as libc::c_int;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt with an int of the stated size on a socket we hold.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return;
        }
    }
}

/// The client's end of a stream: connected to the server's port, opened with the
/// greeting and its answer (three tries within `timeout`).
pub fn open(server: SocketAddr, timeout: Duration) -> io::Result<UdpSocket> {
    let any: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(any)?;
    grow(&s, RECV_BUFFER);
    s.connect(server)?;
    s.set_read_timeout(Some((timeout / 3).max(Duration::from_millis(10))))?;
    let mut b = [0u8; 64];
    for _ in 0..3 {
        s.send(&UDP_CONNECT_MSG_NEW.to_ne_bytes())?;
        match s.recv(&mut b) {
            Ok(4) => {
                let v = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
                if v == UDP_CONNECT_REPLY_NEW || v == UDP_CONNECT_REPLY {
                    return Ok(s);
                }
            }
            Ok(_) => {}
            Err(e) if super::stream::transient(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{server} did not answer the UDP stream's greeting"),
    ))
}

/// A stream a test waits for: from this client address.
struct Waiting {
    test: u64,
    from: IpAddr,
    tx: mpsc::Sender<UdpSocket>,
}

/// The server's UDP side of the test port.
pub struct Acceptor {
    sock: UdpSocket,
    local: SocketAddr,
    waiting: Mutex<VecDeque<Waiting>>,
}

impl Acceptor {
    /// Binds the port (shared with the streams' sockets).
    pub fn bind(local: SocketAddr) -> io::Result<Arc<Acceptor>> {
        let sock = reuse_socket(local)?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let local = sock.local_addr()?;
        Ok(Arc::new(Acceptor {
            sock,
            local,
            waiting: Mutex::new(VecDeque::new()),
        }))
    }

    /// Test `test` waits for `n` streams from `from`: they come on the receiver.
    pub fn expect(&self, test: u64, from: IpAddr, n: usize) -> mpsc::Receiver<UdpSocket> {
        let (tx, rx) = mpsc::channel();
        if let Ok(mut w) = self.waiting.lock() {
            for _ in 0..n {
                w.push_back(Waiting {
                    test,
                    from,
                    tx: tx.clone(),
                });
            }
        }
        rx
    }

    /// Test `test` waits no longer.
    pub fn forget(&self, test: u64) {
        if let Ok(mut w) = self.waiting.lock() {
            w.retain(|x| x.test != test);
        }
    }

    /// Takes greetings until `stop`: each one from an address a test waits for gets its
    /// stream socket and the answer; others are dropped.
    pub fn run(&self, stop: &AtomicBool) {
        let mut b = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, peer)) = self.sock.recv_from(&mut b) else {
                continue;
            };
            if n != 4 {
                continue;
            }
            let v = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
            let reply = match v {
                UDP_CONNECT_MSG_NEW => UDP_CONNECT_REPLY_NEW,
                UDP_CONNECT_MSG => UDP_CONNECT_REPLY,
                _ => continue,
            };
            let peer_ip = portwarden_core::addr::unmapped(peer).ip();
            let slot = self.waiting.lock().ok().and_then(|mut w| {
                let i = w.iter().position(|x| x.from == peer_ip)?;
                w.remove(i)
            });
            let Some(slot) = slot else { continue };
            let stream = reuse_socket(self.local).and_then(|s| {
                grow(&s, RECV_BUFFER);
                s.connect(peer)?;
                s.send(&reply.to_ne_bytes())?;
                Ok(s)
            });
            match stream {
                Ok(s) => {
                    let _ = slot.tx.send(s);
                }
                // Put back: the client tries again.
                Err(_) => {
                    if let Ok(mut w) = self.waiting.lock() {
                        w.push_front(slot);
                    }
                }
            }
        }
    }
}

/// How a UDP sender sends.
#[derive(Debug, Clone, Copy)]
pub struct UdpSend {
    /// Bytes per datagram (header included).
    pub len: usize,
    /// Bits per second (0: as fast as the socket takes them).
    pub rate: u64,
    /// 64-bit packet numbers.
    pub counters_64bit: bool,
}

fn header_len(counters_64bit: bool) -> usize {
    if counters_64bit { HEADER_64 } else { HEADER }
}

/// Sends paced datagrams until told to stop or the byte budget is spent.
pub fn send(s: &UdpSocket, o: UdpSend, shared: &Shared, c: &Counters) -> io::Result<()> {
    let hl = header_len(o.counters_64bit);
    let len = o.len.max(hl);
    let mut buf: Vec<u8> = (0..len).map(|i| b"0123456789abcdef"[i % 16]).collect();
    while !shared.open.load(Ordering::Acquire) && !shared.stop.load(Ordering::Relaxed) {
        // Real time: the test's start, a few milliseconds away.
        std::thread::sleep(Duration::from_millis(1));
    }
    let start = Instant::now();
    let mut sent_bits: u128 = 0;
    let mut seq: u64 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        if o.rate > 0 {
            // When the bits sent so far are due at the rate asked.
            let due = Duration::from_nanos((sent_bits * 1_000_000_000 / u128::from(o.rate)) as u64);
            let now = start.elapsed();
            if due > now {
                std::thread::sleep((due - now).min(Duration::from_millis(100)));
                continue;
            }
        }
        let n = shared.take(len);
        if n == 0 {
            break;
        }
        let n = n.max(hl);
        seq += 1;
        let t = shared.t0.elapsed();
        buf[0..4].copy_from_slice(&(t.as_secs() as u32).to_be_bytes());
        buf[4..8].copy_from_slice(&t.subsec_micros().to_be_bytes());
        if o.counters_64bit {
            buf[8..16].copy_from_slice(&seq.to_be_bytes());
        } else {
            buf[8..12].copy_from_slice(&(seq as u32).to_be_bytes());
        }
        match s.send(&buf[..n]) {
            Ok(k) => {
                c.moved(k, shared);
                c.packets.fetch_add(1, Ordering::Relaxed);
                sent_bits += (k as u128) * 8;
            }
            // A full buffer: the datagram is not sent (and not numbered).
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => seq -= 1,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => seq -= 1,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What a UDP receiver tracks.
#[derive(Debug, Default)]
struct Track {
    /// The highest packet number seen.
    highest: u64,
    lost: i64,
    out_of_order: u64,
    jitter: f64,
    last_transit: Option<f64>,
}

impl Track {
    fn packet(&mut self, seq: u64, sent: f64, arrived: f64) {
        let transit = arrived - sent;
        if let Some(prev) = self.last_transit {
            let d = (transit - prev).abs();
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
        if seq > self.highest {
            self.lost += (seq - self.highest - 1) as i64;
            self.highest = seq;
        } else {
            self.out_of_order += 1;
            if self.lost > 0 {
                self.lost -= 1;
            }
        }
    }
}

/// Receives datagrams until the test has ended and the socket has been quiet a moment.
pub fn recv(s: &UdpSocket, counters_64bit: bool, shared: &Shared, c: &Counters) -> io::Result<()> {
    s.set_read_timeout(Some(Duration::from_millis(50)))?;
    let hl = header_len(counters_64bit);
    let mut buf = vec![0u8; 65536];
    let mut t = Track::default();
    let mut drain = super::stream::Drain::default();
    loop {
        match s.recv(&mut buf) {
            Ok(n) if n >= hl => {
                let be = |r: std::ops::Range<usize>| {
                    buf[r].iter().fold(0u64, |a, b| a << 8 | u64::from(*b))
                };
                let sent = be(0..4) as f64 + be(4..8) as f64 / 1e6;
                let seq = if counters_64bit { be(8..16) } else { be(8..12) };
                t.packet(seq, sent, shared.t0.elapsed().as_secs_f64());
                c.moved(n, shared);
                c.packets.store(t.highest, Ordering::Relaxed);
                c.lost.store(t.lost, Ordering::Relaxed);
                c.out_of_order.store(t.out_of_order, Ordering::Relaxed);
                c.jitter_ns
                    .store((t.jitter * 1e9) as u64, Ordering::Relaxed);
                if drain.data(shared) {
                    return Ok(());
                }
            }
            // A repeated greeting or a runt: not data.
            Ok(_) => {}
            Err(e) if super::stream::transient(&e) => {
                if drain.idle(shared) {
                    return Ok(());
                }
            }
            // The sender's port went away (ICMP unreachable): it has ended.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                if shared.stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_and_reordering_are_counted_as_iperf3_does() {
        let mut t = Track::default();
        for seq in [1, 2, 3, 5, 6, 4, 9] {
            t.packet(seq, 0.0, 0.0);
        }
        // 4 came late (un-counting one), 7 and 8 never did.
        assert_eq!((t.highest, t.lost, t.out_of_order), (9, 2, 1));
        assert_eq!(t.jitter, 0.0);
        let mut j = Track::default();
        for (i, d) in [0.0, 0.001, 0.0, 0.001].iter().enumerate() {
            j.packet(i as u64 + 1, i as f64, i as f64 + d);
        }
        assert!(j.jitter > 0.0 && j.jitter < 0.001, "{}", j.jitter);
    }
}
