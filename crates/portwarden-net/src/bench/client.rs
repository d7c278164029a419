//! `portwarden bench client`: one test against our server or `iperf3 -s`, over the iperf3
//! control protocol. Streams run on threads of their own; the calling thread watches the
//! control connection, takes the interval figures (bytes, and TCP_INFO's retransmits,
//! congestion window and RTT of sending streams) and ends the test.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::iperf::{self, Params, Results, State, StreamResult};
use super::stream::{self, SendOpts, Shared, Sock, Stream, TcpInfo};

/// A test to run.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The server.
    pub server: SocketAddr,
    /// Parallel streams (each way, with `bidir`).
    pub parallel: u32,
    /// How long the test runs (ignored when `bytes` is given).
    pub duration: Duration,
    /// Bytes the test moves in total (`-n`), instead of a duration.
    pub bytes: Option<u64>,
    /// The server sends (`-R`).
    pub reverse: bool,
    /// Both send (`--bidir`).
    pub bidir: bool,
    /// `sendfile(2)` instead of `write(2)` (`-Z`).
    pub zerocopy: bool,
    /// Socket buffer size (`-w`).
    pub window: Option<u32>,
    /// Bytes per write (`-l`).
    pub len: u32,
    /// Congestion control (`-C`).
    pub congestion: Option<String>,
    /// Interval reports every this long (`-i`); zero: none.
    pub interval: Duration,
    /// `TCP_NODELAY` on the streams.
    pub nodelay: bool,
    /// How long to wait for the server at each step before the test runs.
    pub connect_timeout: Duration,
    /// UDP instead of TCP.
    pub udp: bool,
    /// UDP: bits per second per stream (0: unlimited; none: iperf3's 1 Mbit/s).
    pub rate: Option<u64>,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            server: SocketAddr::from(([127, 0, 0, 1], 5201)),
            parallel: 1,
            duration: Duration::from_secs(10),
            bytes: None,
            reverse: false,
            bidir: false,
            zerocopy: false,
            window: None,
            len: 128 * 1024,
            congestion: None,
            interval: Duration::from_secs(1),
            nodelay: false,
            connect_timeout: Duration::from_secs(5),
            udp: false,
            rate: None,
        }
    }
}

/// Why a test did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached.
    #[error("cannot reach {addr}: {source}")]
    Connect {
        /// The server.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// The server turned the test away or failed.
    #[error("{0}")]
    Refused(String),
    /// The control connection broke or carried something unexpected.
    #[error("the control connection: {0}")]
    Protocol(String),
    /// A stream failed.
    #[error("a stream failed: {0}")]
    Stream(io::Error),
}

/// One stream's figures over an interval.
#[derive(Debug, Clone)]
pub struct IntervalStream {
    /// Its id (iperf3's numbering).
    pub id: i64,
    /// Whether this end sends on it.
    pub sender: bool,
    /// Bytes in the interval.
    pub bytes: u64,
    /// TCP_INFO at the interval's end (sending streams).
    pub info: Option<TcpInfo>,
    /// Retransmits in the interval (sending streams).
    pub retransmits: Option<u64>,
}

/// An interval's report.
#[derive(Debug, Clone)]
pub struct Interval {
    /// Seconds from the start.
    pub start: f64,
    /// Seconds from the start.
    pub end: f64,
    /// Every stream.
    pub streams: Vec<IntervalStream>,
}

/// One stream's totals, from both ends.
#[derive(Debug, Clone)]
pub struct StreamTotal {
    /// Its id.
    pub id: i64,
    /// Whether the client sent on it.
    pub client_sends: bool,
    /// Bytes the sending end sent.
    pub sent: u64,
    /// Bytes the receiving end received.
    pub received: u64,
    /// Retransmits of the sending end (-1: unknown).
    pub retransmits: i64,
    /// Seconds the sending end sent; the receiving end received.
    pub sender_seconds: f64,
    /// Seconds the receiving end counted.
    pub receiver_seconds: f64,
    /// The largest congestion window seen (bytes; sent by us).
    pub max_snd_cwnd: u64,
    /// Smallest, largest and mean RTT seen (µs; sent by us).
    pub rtt_us: Option<(u32, u32, u32)>,
    /// UDP: the receiving end's figures.
    pub udp: Option<UdpTotal>,
}

/// A UDP stream's figures, as its receiver counted them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UdpTotal {
    /// Datagrams the sender sent.
    pub sent_packets: u64,
    /// The highest packet number received (iperf3's total).
    pub packets: u64,
    /// Datagrams lost.
    pub lost: i64,
    /// Datagrams after a later one.
    pub out_of_order: u64,
    /// Seconds.
    pub jitter: f64,
}

/// A finished test.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The control connection's ends.
    pub local: SocketAddr,
    /// The server.
    pub remote: SocketAddr,
    /// The cookie (iperf3 shows it).
    pub cookie: String,
    /// Seconds data flowed.
    pub seconds: f64,
    /// Interval reports.
    pub intervals: Vec<Interval>,
    /// Every stream.
    pub streams: Vec<StreamTotal>,
    /// This process's CPU, percent of one core: total, user, system.
    pub cpu_local: (f64, f64, f64),
    /// The server's.
    pub cpu_remote: (f64, f64, f64),
    /// Congestion control here and there.
    pub congestion: (Option<String>, Option<String>),
}

fn proto(e: io::Error) -> ClientError {
    ClientError::Protocol(e.to_string())
}

/// Reads the codes after a `ServerError` state and says what they mean.
fn server_error(conn: &mut TcpStream) -> ClientError {
    let mut b = [0u8; 8];
    match conn.read_exact(&mut b) {
        Ok(()) => {
            let code = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            ClientError::Refused(format!("{} (error {code})", iperf::errno_text(code)))
        }
        Err(_) => ClientError::Refused("the server failed".into()),
    }
}

fn unexpected(conn: &mut TcpStream, s: State, when: &str) -> ClientError {
    match s {
        State::AccessDenied => {
            ClientError::Refused("the server is busy running a test (access denied)".into())
        }
        State::ServerError => server_error(conn),
        State::ServerTerminate => ClientError::Refused("the server ended the test".into()),
        s => ClientError::Protocol(format!("the server sent {s:?} {when}")),
    }
}

/// Runs one test; `on_interval` sees each interval as it ends.
pub fn run(
    opts: &ClientOptions,
    mut on_interval: impl FnMut(&Interval),
) -> Result<Outcome, ClientError> {
    let connect = |addr: SocketAddr| {
        TcpStream::connect_timeout(&addr, opts.connect_timeout)
            .map_err(|source| ClientError::Connect { addr, source })
    };
    let mut conn = connect(opts.server)?;
    let _ = conn.set_nodelay(true);
    conn.set_read_timeout(Some(opts.connect_timeout))
        .map_err(proto)?;
    let cookie = iperf::cookie().map_err(proto)?;
    conn.write_all(&cookie).map_err(proto)?;
    let params = Params {
        tcp: !opts.udp,
        udp: opts.udp,
        bandwidth: opts
            .udp
            .then(|| opts.rate.unwrap_or(super::udp::DEFAULT_RATE)),
        omit: 0,
        time: if opts.bytes.is_some() {
            None
        } else {
            Some(opts.duration.as_secs().max(1) as u32)
        },
        num: opts.bytes,
        parallel: opts.parallel,
        reverse: opts.reverse && !opts.bidir,
        bidirectional: opts.bidir,
        window: opts.window,
        len: Some(opts.len),
        nodelay: opts.nodelay,
        congestion: opts.congestion.clone(),
        client_version: Some(format!("portwarden {}", env!("CARGO_PKG_VERSION"))),
        ..Params::default()
    };
    let p = opts.parallel as usize;
    let n = if opts.bidir { 2 * p } else { p };
    let mut socks = Vec::new();
    loop {
        let s = iperf::read_state(&mut conn).map_err(proto)?;
        match s {
            State::ParamExchange => iperf::send_json(&mut conn, &params).map_err(proto)?,
            State::CreateStreams => {
                for _ in 0..n {
                    if opts.udp {
                        let u = super::udp::open(opts.server, opts.connect_timeout).map_err(
                            |source| ClientError::Connect {
                                addr: opts.server,
                                source,
                            },
                        )?;
                        socks.push(Sock::Udp(u));
                        continue;
                    }
                    let mut d = connect(opts.server)?;
                    super::tune(&d, opts.window, opts.congestion.as_deref(), opts.nodelay);
                    d.write_all(&cookie).map_err(proto)?;
                    socks.push(Sock::Tcp(d));
                }
            }
            State::TestStart => {}
            State::TestRunning => break,
            s => return Err(unexpected(&mut conn, s, "before the test ran")),
        }
    }
    let congestion_local = socks.first().and_then(|s| match s {
        Sock::Tcp(t) => super::congestion(t),
        Sock::Udp(_) => None,
    });
    let udp_send = super::udp::UdpSend {
        len: opts.len as usize,
        rate: opts.rate.unwrap_or(super::udp::DEFAULT_RATE),
        counters_64bit: false,
    };
    let shared = Shared::new(opts.bytes);
    let send = SendOpts {
        len: opts.len as usize,
        zerocopy: opts.zerocopy,
    };
    let t0 = Instant::now();
    let cpu0 = stream::cpu_seconds();
    let mut streams = Vec::with_capacity(n);
    for (i, s) in socks.into_iter().enumerate() {
        let client_sends = if opts.bidir { i < p } else { !opts.reverse };
        let st = match s {
            Sock::Tcp(s) => Stream::start(s, client_sends, send, shared.clone()),
            Sock::Udp(s) => Stream::start_udp(s, client_sends, udp_send, shared.clone()),
        }
        .map_err(ClientError::Stream)?;
        streams.push(st);
    }
    let watched = watch(opts, &mut conn, &streams, t0, &mut on_interval);
    shared.stop.store(true, Ordering::SeqCst);
    // Senders first (each ends with its FIN), then the end goes to the server, whose
    // senders then end theirs: a receiver here counts up to that FIN.
    let mut failed = None;
    for s in streams.iter_mut().filter(|s| s.sender) {
        if let Err(e) = s.join() {
            failed.get_or_insert(e);
        }
    }
    let ended = iperf::send_state(&mut conn, State::TestEnd);
    for s in streams.iter_mut().filter(|s| !s.sender) {
        if let Err(e) = s.join() {
            failed.get_or_insert(e);
        }
    }
    let (mut intervals, mut peaks) = watched?;
    ended.map_err(proto)?;
    let cpu_secs = t0.elapsed().as_secs_f64();
    // The data's time: to the last byte any stream moved.
    let seconds = streams
        .iter()
        .map(|s| s.c.seconds())
        .fold(0.0, f64::max)
        .max(1e-6);
    // The last, partial interval.
    if let Some(iv) = take_interval(&streams, &mut peaks, cpu_secs) {
        on_interval(&iv);
        intervals.push(iv);
    }
    if let Some(e) = failed {
        return Err(ClientError::Stream(e));
    }
    let cpu1 = stream::cpu_seconds();
    let ours = Results {
        cpu_util_total: 100.0 * ((cpu1.0 - cpu0.0) + (cpu1.1 - cpu0.1)) / cpu_secs,
        cpu_util_user: 100.0 * (cpu1.0 - cpu0.0) / cpu_secs,
        cpu_util_system: 100.0 * (cpu1.1 - cpu0.1) / cpu_secs,
        sender_has_retransmits: i64::from(streams.iter().any(|s| s.sender)),
        congestion_used: congestion_local.clone(),
        streams: streams
            .iter()
            .enumerate()
            .map(|(i, s)| StreamResult {
                id: iperf::stream_id(i),
                bytes: s.c.bytes.load(Ordering::SeqCst),
                retransmits: if s.sender {
                    s.tcp_info().map_or(-1, |t| i64::from(t.total_retrans))
                } else {
                    -1
                },
                start_time: 0.0,
                end_time: s.c.seconds(),
                jitter: s.udp().3,
                errors: s.udp().1,
                packets: s.udp().0 as i64,
                ..StreamResult::default()
            })
            .collect(),
    };
    conn.set_read_timeout(Some(opts.connect_timeout + stream::DRAIN_MAX))
        .map_err(proto)?;
    let mut theirs: Option<Results> = None;
    loop {
        match iperf::read_state(&mut conn).map_err(proto)? {
            State::ExchangeResults => {
                iperf::send_json(&mut conn, &ours).map_err(proto)?;
                theirs = Some(iperf::read_json(&mut conn).map_err(proto)?);
            }
            State::DisplayResults => {
                let _ = iperf::send_state(&mut conn, State::IperfDone);
                break;
            }
            s => return Err(unexpected(&mut conn, s, "after the test")),
        }
    }
    let theirs =
        theirs.ok_or_else(|| ClientError::Protocol("the server sent no results".into()))?;
    let totals = streams
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let id = iperf::stream_id(i);
            let mine = s.c.bytes.load(Ordering::SeqCst);
            let other = theirs.streams.iter().find(|r| r.id == id);
            let other_bytes = other.map_or(0, |r| r.bytes);
            let other_secs = other.map_or(0.0, |r| (r.end_time - r.start_time).max(0.0));
            let pk = &peaks[i];
            StreamTotal {
                id,
                client_sends: s.sender,
                sent: if s.sender { mine } else { other_bytes },
                received: if s.sender { other_bytes } else { mine },
                retransmits: if s.sender {
                    s.tcp_info().map_or(-1, |t| i64::from(t.total_retrans))
                } else {
                    other.map_or(-1, |r| r.retransmits)
                },
                sender_seconds: if s.sender { s.c.seconds() } else { other_secs },
                receiver_seconds: if s.sender { other_secs } else { s.c.seconds() },
                max_snd_cwnd: pk.max_cwnd,
                udp: opts.udp.then(|| {
                    let (sent_packets, packets, lost, jitter) = if s.sender {
                        let r = other.cloned().unwrap_or_default();
                        (s.udp().0, r.packets.max(0) as u64, r.errors, r.jitter)
                    } else {
                        let (pk, lost, _, j) = s.udp();
                        (other.map_or(0, |r| r.packets.max(0) as u64), pk, lost, j)
                    };
                    UdpTotal {
                        sent_packets,
                        packets,
                        lost,
                        out_of_order: if s.sender { 0 } else { s.udp().2 },
                        jitter,
                    }
                }),
                rtt_us: (pk.rtt_n > 0).then(|| {
                    (
                        pk.rtt_min,
                        pk.rtt_max,
                        (pk.rtt_sum / u64::from(pk.rtt_n)) as u32,
                    )
                }),
            }
        })
        .collect();
    Ok(Outcome {
        local: conn.local_addr().map_err(proto)?,
        remote: opts.server,
        cookie: String::from_utf8_lossy(&cookie[..iperf::COOKIE_LEN - 1]).into_owned(),
        seconds,
        intervals,
        streams: totals,
        cpu_local: ours_cpu(&ours),
        cpu_remote: ours_cpu(&theirs),
        congestion: (congestion_local, theirs.congestion_used.clone()),
    })
}

fn ours_cpu(r: &Results) -> (f64, f64, f64) {
    (r.cpu_util_total, r.cpu_util_user, r.cpu_util_system)
}

/// Per stream: bytes and retransmits at the last interval, and the peaks seen.
#[derive(Debug, Default, Clone)]
struct Peak {
    bytes: u64,
    retrans: u32,
    last_end: f64,
    max_cwnd: u64,
    rtt_min: u32,
    rtt_max: u32,
    rtt_sum: u64,
    rtt_n: u32,
}

fn take_interval(streams: &[Stream], peaks: &mut [Peak], now: f64) -> Option<Interval> {
    let start = peaks.first().map_or(0.0, |p| p.last_end);
    let moved = streams
        .iter()
        .zip(peaks.iter())
        .any(|(s, p)| s.c.bytes.load(Ordering::Relaxed) != p.bytes);
    if now - start < 0.001 && !moved {
        return None;
    }
    let mut out = Vec::with_capacity(streams.len());
    for (i, (s, pk)) in streams.iter().zip(peaks.iter_mut()).enumerate() {
        let b = s.c.bytes.load(Ordering::Relaxed);
        let info = if s.sender { s.tcp_info() } else { None };
        let retransmits = info.map(|t| u64::from(t.total_retrans.saturating_sub(pk.retrans)));
        if let Some(t) = info {
            pk.retrans = t.total_retrans;
            pk.max_cwnd = pk.max_cwnd.max(t.snd_cwnd);
            if t.rtt_us > 0 {
                pk.rtt_min = if pk.rtt_n == 0 {
                    t.rtt_us
                } else {
                    pk.rtt_min.min(t.rtt_us)
                };
                pk.rtt_max = pk.rtt_max.max(t.rtt_us);
                pk.rtt_sum += u64::from(t.rtt_us);
                pk.rtt_n += 1;
            }
        }
        out.push(IntervalStream {
            id: iperf::stream_id(i),
            sender: s.sender,
            bytes: b - pk.bytes,
            info,
            retransmits,
        });
        pk.bytes = b;
        pk.last_end = now;
    }
    Some(Interval {
        start,
        end: now,
        streams: out,
    })
}

/// Runs the test to its end: time, or the byte count sent (or, reversed, received).
/// Meanwhile a message from the server (an error, its end) fails the test.
fn watch(
    opts: &ClientOptions,
    conn: &mut TcpStream,
    streams: &[Stream],
    t0: Instant,
    on_interval: &mut impl FnMut(&Interval),
) -> Result<(Vec<Interval>, Vec<Peak>), ClientError> {
    let mut peaks = vec![Peak::default(); streams.len()];
    let mut intervals = Vec::new();
    conn.set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(proto)?;
    let mut next = opts.interval;
    loop {
        let mut b = [0u8; 1];
        match conn.read(&mut b) {
            Ok(0) => return Err(ClientError::Protocol("the server closed it".into())),
            Ok(_) => {
                let s = State::from_byte(b[0]).ok_or_else(|| {
                    ClientError::Protocol(format!("unknown control state {}", b[0] as i8))
                })?;
                return Err(unexpected(conn, s, "while the test ran"));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(proto(e)),
        }
        if let Some(st) = streams.iter().find(|s| {
            s.c.done.load(Ordering::SeqCst) && !s.sender && !s.c.eof.load(Ordering::SeqCst)
        }) {
            let _ = st;
            return Err(ClientError::Stream(io::Error::other(
                "a receiving stream broke",
            )));
        }
        let elapsed = t0.elapsed();
        if !opts.interval.is_zero() && elapsed >= next {
            if let Some(iv) = take_interval(streams, &mut peaks, elapsed.as_secs_f64()) {
                on_interval(&iv);
                intervals.push(iv);
            }
            next += opts.interval;
        }
        let ended = match opts.bytes {
            None => elapsed >= opts.duration,
            Some(n) => {
                let senders_done = streams
                    .iter()
                    .filter(|s| s.sender)
                    .all(|s| s.c.done.load(Ordering::SeqCst));
                let recv: Vec<&Stream> = streams.iter().filter(|s| !s.sender).collect();
                let received: u64 = recv.iter().map(|s| s.c.bytes.load(Ordering::Relaxed)).sum();
                // A UDP receiver has no FIN: lost datagrams never come, so a second
                // without any is its end.
                let quiet = opts.udp
                    && received > 0
                    && recv
                        .iter()
                        .all(|s| elapsed.as_secs_f64() - s.c.seconds() >= 1.0);
                let receivers_done = recv.is_empty()
                    || received >= n
                    || quiet
                    || recv.iter().all(|s| s.c.eof.load(Ordering::SeqCst));
                senders_done && receivers_done
            }
        };
        if ended {
            return Ok((intervals, peaks));
        }
    }
}
