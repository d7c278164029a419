//! A test's data streams on both ends: a sender writes blocks until told to stop or until
//! the test's byte budget is spent (exactly: the last block is cut to fit), a receiver
//! reads until the sender's FIN, or, once the test has ended, until the socket has been
//! quiet a moment. Each stream runs on a thread of its own with blocking sockets (one
//! stream per core, not one core for every stream as in iperf3 3.12).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a receiver waits for more bytes after the test has ended.
pub const DRAIN_QUIET: Duration = Duration::from_millis(200);
/// The longest a receiver drains after the end, however fast bytes still come.
pub const DRAIN_MAX: Duration = Duration::from_secs(2);
/// Buffers start on a page boundary.
const PAGE: usize = 4096;
/// A blocked write gives up this often to look at the stop flag.
const POLL: Duration = Duration::from_millis(100);

/// What every stream of a test shares.
#[derive(Debug)]
pub struct Shared {
    /// When the test's data started to flow: streams time their last byte from it.
    pub t0: std::time::Instant,
    /// Set: senders stop (and half-close), receivers drain and stop.
    pub stop: AtomicBool,
    /// Bytes the senders may still send, when the test is counted in bytes.
    pub budget: Option<AtomicI64>,
    /// Clear: UDP senders wait (the other end's receivers are not reading yet, and
    /// datagrams, unlike TCP's bytes, are dropped when its buffer is full).
    pub open: AtomicBool,
}

impl Shared {
    /// A test without a byte budget, or with one.
    pub fn new(bytes: Option<u64>) -> Arc<Shared> {
        Arc::new(Shared {
            t0: std::time::Instant::now(),
            stop: AtomicBool::new(false),
            budget: bytes.map(|b| AtomicI64::new(i64::try_from(b).unwrap_or(i64::MAX))),
            open: AtomicBool::new(true),
        })
    }

    /// Takes up to `want` bytes of the budget; 0 once it is spent.
    pub(crate) fn take(&self, want: usize) -> usize {
        let Some(b) = &self.budget else { return want };
        let want = want as i64;
        let before = b.fetch_sub(want, Ordering::Relaxed);
        if before <= 0 {
            0
        } else {
            before.min(want) as usize
        }
    }
}

/// One stream's live counters.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes moved so far.
    pub bytes: AtomicU64,
    /// The receiver saw the sender's FIN.
    pub eof: AtomicBool,
    /// The stream has finished (its thread returned).
    pub done: AtomicBool,
    /// Microseconds from the test's start to the last byte moved.
    pub last_us: AtomicU64,
    /// UDP: datagrams sent (sender), the highest packet number seen (receiver).
    pub packets: AtomicU64,
    /// UDP receiver: datagrams lost.
    pub lost: AtomicI64,
    /// UDP receiver: datagrams that came after a later one.
    pub out_of_order: AtomicU64,
    /// UDP receiver: jitter, nanoseconds.
    pub jitter_ns: AtomicU64,
}

impl Counters {
    pub(crate) fn moved(&self, n: usize, shared: &Shared) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        self.last_us
            .store(shared.t0.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    /// Seconds from the test's start to the last byte this stream moved.
    pub fn seconds(&self) -> f64 {
        self.last_us.load(Ordering::SeqCst) as f64 / 1e6
    }
}

/// A stream's socket as it connected.
pub enum Sock {
    /// A TCP stream.
    Tcp(TcpStream),
    /// A UDP socket connected to the other end.
    Udp(std::net::UdpSocket),
}

/// A running stream.
pub struct Stream {
    /// Whether this end sends on it.
    pub sender: bool,
    /// Its socket (for TCP_INFO); none for UDP.
    pub sock: Option<Arc<TcpStream>>,
    /// Its counters.
    pub c: Arc<Counters>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

/// How a sender writes.
#[derive(Debug, Clone, Copy)]
pub struct SendOpts {
    /// Bytes per write.
    pub len: usize,
    /// `sendfile(2)` from a memory file instead of `write(2)` from a buffer (`-Z`).
    pub zerocopy: bool,
}

impl Stream {
    /// Starts a stream on `sock`.
    pub fn start(
        sock: TcpStream,
        sender: bool,
        opts: SendOpts,
        shared: Arc<Shared>,
    ) -> io::Result<Stream> {
        let sock = Arc::new(sock);
        let c = Arc::new(Counters::default());
        let (s, cc) = (sock.clone(), c.clone());
        let thread = std::thread::Builder::new()
            .name(if sender { "bench-send" } else { "bench-recv" }.into())
            .spawn(move || {
                let r = if sender {
                    send(&s, opts, &shared, &cc)
                } else {
                    recv(&s, &shared, &cc)
                };
                cc.done.store(true, Ordering::SeqCst);
                r
            })?;
        Ok(Stream {
            sender,
            sock: Some(sock),
            c,
            thread: Some(thread),
        })
    }

    /// Starts a UDP stream on `sock` (connected to the other end).
    pub fn start_udp(
        sock: std::net::UdpSocket,
        sender: bool,
        opts: super::udp::UdpSend,
        shared: Arc<Shared>,
    ) -> io::Result<Stream> {
        let c = Arc::new(Counters::default());
        let cc = c.clone();
        let thread = std::thread::Builder::new()
            .name(if sender { "bench-usend" } else { "bench-urecv" }.into())
            .spawn(move || {
                let r = if sender {
                    super::udp::send(&sock, opts, &shared, &cc)
                } else {
                    super::udp::recv(&sock, opts.counters_64bit, &shared, &cc)
                };
                // A UDP receiver has no FIN to see: its end is the test's.
                cc.eof.store(true, Ordering::SeqCst);
                cc.done.store(true, Ordering::SeqCst);
                r
            })?;
        Ok(Stream {
            sender,
            sock: None,
            c,
            thread: Some(thread),
        })
    }

    /// UDP figures: (packets, lost, out of order, jitter seconds).
    pub fn udp(&self) -> (u64, i64, u64, f64) {
        (
            self.c.packets.load(Ordering::SeqCst),
            self.c.lost.load(Ordering::SeqCst),
            self.c.out_of_order.load(Ordering::SeqCst),
            self.c.jitter_ns.load(Ordering::SeqCst) as f64 / 1e9,
        )
    }

    /// Waits for the stream's thread; its error, if it failed.
    pub fn join(&mut self) -> io::Result<()> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a stream's thread panicked"))),
            None => Ok(()),
        }
    }

    /// The kernel's TCP_INFO of the stream's socket.
    pub fn tcp_info(&self) -> Option<TcpInfo> {
        self.sock.as_deref().and_then(tcp_info)
    }
}

/// The TCP_INFO figures a report shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpInfo {
    /// Segments retransmitted over the connection's life.
    pub total_retrans: u32,
    /// Congestion window, bytes.
    pub snd_cwnd: u64,
    /// Smoothed RTT, microseconds.
    pub rtt_us: u32,
    /// RTT variance, microseconds.
    pub rttvar_us: u32,
    /// Path MTU.
    pub pmtu: u32,
}

/// TCP_INFO of a socket.
pub fn tcp_info(s: &TcpStream) -> Option<TcpInfo> {
    // SAFETY: a zeroed tcp_info is valid (plain integers).
    let mut ti: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `ti`.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut ti as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (r == 0).then(|| TcpInfo {
        total_retrans: ti.tcpi_total_retrans,
        snd_cwnd: u64::from(ti.tcpi_snd_cwnd) * u64::from(ti.tcpi_snd_mss),
        rtt_us: ti.tcpi_rtt,
        rttvar_us: ti.tcpi_rttvar,
        pmtu: ti.tcpi_pmtu,
    })
}

/// A memory file of `len` bytes to `sendfile` from.
fn memfd(len: usize) -> io::Result<OwnedFd> {
    // SAFETY: memfd_create with a NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"portwarden-bench".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor memfd_create just gave us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut f = std::fs::File::from(fd);
    f.write_all(&pattern(len))?;
    Ok(OwnedFd::from(f))
}

/// The bytes a sender sends: a repeating pattern (not zeros, which a compressing path
/// would flatter).
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| b"0123456789abcdef"[i % 16]).collect()
}

fn send(s: &TcpStream, opts: SendOpts, shared: &Shared, c: &Counters) -> io::Result<()> {
    s.set_write_timeout(Some(POLL))?;
    // Page-aligned, as iperf3's mmap'd buffer is (glibc returns a 128 KiB block 16 bytes
    // past a page boundary, and the kernel's copy out of it is slower).
    let storage = pattern(opts.len + PAGE);
    let at = storage.as_ptr().align_offset(PAGE).min(PAGE);
    let buf = &storage[at..at + opts.len];
    let file = if opts.zerocopy {
        Some(memfd(opts.len)?)
    } else {
        None
    };
    let mut w = s;
    'blocks: while !shared.stop.load(Ordering::Relaxed) {
        let n = shared.take(opts.len);
        if n == 0 {
            break;
        }
        let mut off = 0;
        while off < n {
            let r = match &file {
                Some(f) => {
                    let mut pos = off as libc::off_t;
                    // SAFETY: sendfile from our memory file to our socket.
                    let k =
                        unsafe { libc::sendfile(s.as_raw_fd(), f.as_raw_fd(), &mut pos, n - off) };
                    if k < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(k as usize)
                    }
                }
                None => w.write(&buf[off..n]),
            };
            match r {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => {
                    off += k;
                    c.moved(k, shared);
                }
                Err(e) if transient(&e) => {
                    if shared.stop.load(Ordering::Relaxed) {
                        break 'blocks;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
    // The receiver counts to our FIN: every byte sent is a byte it can count.
    let _ = s.shutdown(std::net::Shutdown::Write);
    Ok(())
}

/// When a receiver ends once the test has: its socket quiet a moment, or bytes still
/// coming after the longest drain.
#[derive(Debug, Default)]
pub(crate) struct Drain {
    quiet_since: Option<std::time::Instant>,
    stopped: Option<std::time::Instant>,
}

impl Drain {
    /// Bytes came: whether to end (a peer that goes on sending after the end is cut off).
    pub(crate) fn data(&mut self, shared: &Shared) -> bool {
        self.quiet_since = None;
        shared.stop.load(Ordering::Relaxed)
            && self
                .stopped
                .get_or_insert_with(std::time::Instant::now)
                .elapsed()
                >= DRAIN_MAX
    }

    /// Nothing came within the read timeout: whether to end.
    pub(crate) fn idle(&mut self, shared: &Shared) -> bool {
        shared.stop.load(Ordering::Relaxed)
            && self
                .quiet_since
                .get_or_insert_with(std::time::Instant::now)
                .elapsed()
                >= DRAIN_QUIET
    }
}

/// Whether a read or write error only means "nothing now".
pub(crate) fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

fn recv(s: &TcpStream, shared: &Shared, c: &Counters) -> io::Result<()> {
    s.set_read_timeout(Some(POLL))?;
    let mut storage = vec![0u8; 256 * 1024 + PAGE];
    let at = storage.as_ptr().align_offset(PAGE).min(PAGE);
    let buf = &mut storage[at..at + 256 * 1024];
    let mut r = s;
    let mut drain = Drain::default();
    loop {
        match r.read(buf) {
            Ok(0) => {
                c.eof.store(true, Ordering::SeqCst);
                return Ok(());
            }
            Ok(n) => {
                c.moved(n, shared);
                if drain.data(shared) {
                    return Ok(());
                }
            }
            Err(e) if transient(&e) => {
                if drain.idle(shared) {
                    return Ok(());
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// CPU time of this process: (user, system) seconds.
pub fn cpu_seconds() -> (f64, f64) {
    // SAFETY: a zeroed rusage is valid; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (t(ru.ru_utime), t(ru.ru_stime))
}
