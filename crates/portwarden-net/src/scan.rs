//! What both scan engines share — port states, configuration, outcomes, the descriptor
//! limit, RTT timing, the loopback source address — and the UDP scan on tokio, with an
//! in-flight window bounded by the descriptor limit and nmap-like timeouts and retries.
//! The TCP connect scan is `connect::scan_tcp`.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portwarden_core::Protocol;
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio::time::timeout;

/// What a port answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PortState {
    /// Connected (TCP) or answered (UDP).
    Open,
    /// Refused: RST, or ICMP port unreachable.
    Closed,
    /// No answer after every retry (TCP).
    Filtered,
    /// No answer (UDP): open and silent, or filtered.
    OpenFiltered,
}

impl PortState {
    /// nmap's name for the state.
    pub fn as_str(self) -> &'static str {
        match self {
            PortState::Open => "open",
            PortState::Closed => "closed",
            PortState::Filtered => "filtered",
            PortState::OpenFiltered => "open|filtered",
        }
    }
}

/// How to scan.
#[derive(Debug, Clone)]
pub struct ScanConfig {
    /// Protocol.
    pub protocol: Protocol,
    /// Timeout of the first probe, before any RTT was measured.
    pub initial_timeout: Duration,
    /// Lower bound of the adaptive timeout.
    pub min_timeout: Duration,
    /// Upper bound of the adaptive timeout.
    pub max_timeout: Duration,
    /// Retries for unanswered probes.
    pub retries: u32,
    /// Largest in-flight window (further bounded by the descriptor limit).
    pub max_window: usize,
    /// Probes per second (`--rate`); `None`: paced by the loss-driven window alone.
    pub rate: Option<u32>,
    /// Probes in flight at the start (the window grows from there); host discovery
    /// starts with one per host, since each host gets only a couple.
    pub initial_window: usize,
}

impl Default for ScanConfig {
    fn default() -> ScanConfig {
        ScanConfig {
            protocol: Protocol::Tcp,
            initial_timeout: Duration::from_millis(500),
            min_timeout: Duration::from_millis(50),
            max_timeout: Duration::from_millis(1000),
            retries: 2,
            max_window: 4096,
            rate: None,
            initial_window: 32,
        }
    }
}

/// One port that did not answer "closed".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortResult {
    /// Target address.
    pub addr: IpAddr,
    /// Port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// State.
    pub state: PortState,
}

/// The outcome of a scan.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScanOutcome {
    /// Open and filtered ports, sorted.
    pub ports: Vec<PortResult>,
    /// Closed ports counted, not listed.
    pub closed: u64,
    /// Probes sent, retries included.
    pub probes: u64,
    /// Self-connects detected and discarded (never reported as open).
    pub self_connects: u64,
    /// Times the descriptor limit was hit and the window shrank.
    pub emfile: u64,
    /// The smoothed RTT at the end, microseconds.
    pub srtt_us: u64,
    /// Stopped before the end (SIGINT): the ports not yet settled are missing.
    pub interrupted: bool,
    /// Hosts that answered an ICMP echo request of ours meanwhile (host discovery).
    pub echoed: Vec<IpAddr>,
}

/// Raises the soft descriptor limit to the hard one; returns the soft limit now in force.
pub fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r.rlim_cur = r.rlim_max;
            }
        }
    }
    r.rlim_cur
}

/// RTT estimator and timeout, like TCP's (and nmap's): srtt + 4 × rttvar, clamped.
pub(crate) struct Timing {
    srtt: f64,
    rttvar: f64,
    measured: bool,
}

impl Timing {
    pub(crate) fn new() -> Timing {
        Timing {
            srtt: 0.0,
            rttvar: 0.0,
            measured: false,
        }
    }

    pub(crate) fn measured(&self) -> bool {
        self.measured
    }

    pub(crate) fn srtt_us(&self) -> u64 {
        (self.srtt * 1e6) as u64
    }

    pub(crate) fn timeout(&self, c: &ScanConfig) -> Duration {
        if !self.measured {
            return c.initial_timeout;
        }
        let t = Duration::from_secs_f64((self.srtt + 4.0 * self.rttvar).max(0.0));
        t.clamp(c.min_timeout, c.max_timeout)
    }

    pub(crate) fn sample(&mut self, rtt: Duration) {
        let r = rtt.as_secs_f64();
        if !self.measured {
            self.srtt = r;
            self.rttvar = r / 2.0;
            self.measured = true;
        } else {
            self.rttvar = 0.75 * self.rttvar + 0.25 * (self.srtt - r).abs();
            self.srtt = 0.875 * self.srtt + 0.125 * r;
        }
    }
}

/// The in-flight window: slow start, then congestion avoidance, halved (at most once per
/// timeout) on evidence of loss, which is an answer to a retransmission (the earlier try
/// was lost). A probe that times out is not evidence: behind a DROP firewall that is the
/// answer, so it lets the window grow like an answer does (nmap grows its window the same
/// way through its timing pings), and a silent host never costs ports × timeout.
pub(crate) struct Window {
    cwnd: f64,
    ssthresh: f64,
    max: usize,
    last_cut: Option<Instant>,
}

impl Window {
    const INITIAL: f64 = 32.0;

    pub(crate) fn new(max: usize) -> Window {
        Self::starting(Self::INITIAL as usize, max)
    }

    pub(crate) fn starting(initial: usize, max: usize) -> Window {
        Window {
            cwnd: (initial.max(1) as f64).min(max as f64),
            ssthresh: max as f64,
            max,
            last_cut: None,
        }
    }

    pub(crate) fn get(&self) -> usize {
        (self.cwnd as usize).clamp(1, self.max)
    }

    pub(crate) fn grow(&mut self) {
        self.cwnd += if self.cwnd < self.ssthresh {
            1.0
        } else {
            1.0 / self.cwnd
        };
        self.cwnd = self.cwnd.min(self.max as f64);
    }

    pub(crate) fn loss(&mut self, rto: std::time::Duration) {
        let now = Instant::now();
        if self.last_cut.is_some_and(|t| now.duration_since(t) < rto) {
            return;
        }
        self.last_cut = Some(now);
        self.ssthresh = (self.cwnd / 2.0).max(2.0);
        self.cwnd = self.ssthresh;
    }

    /// Out of descriptors or source ports: no more than what is in flight.
    pub(crate) fn cap(&mut self, inflight: usize) {
        self.cwnd = (inflight.max(1) as f64).min(self.cwnd);
        self.ssthresh = self.cwnd;
    }
}

/// `--rate` for engines with several senders (the connect scan's workers, the UDP scan's
/// tasks): a token bucket they share, holding at most a hundredth of a second's worth.
#[derive(Debug)]
pub(crate) struct Pacer {
    interval: Duration,
    burst: Duration,
    next: Mutex<Instant>,
}

impl Pacer {
    /// A pacer for `rate` probes per second; none without a rate.
    pub(crate) fn new(rate: Option<u32>) -> Option<Pacer> {
        let r = rate?.clamp(1, crate::syn::RATE_MAX);
        let interval = Duration::from_secs(1) / r;
        let burst = interval * (r / 100).max(1);
        // It starts with a full bucket.
        let now = Instant::now();
        Some(Pacer {
            interval,
            burst,
            next: Mutex::new(now.checked_sub(burst).unwrap_or(now)),
        })
    }

    /// Takes the right to send one probe now, or says how long until there is one.
    pub(crate) fn take(&self) -> Result<(), Duration> {
        let now = Instant::now();
        let mut next = match self.next.lock() {
            Ok(n) => n,
            Err(p) => p.into_inner(),
        };
        // Idle time earns at most the burst.
        let floor = now.checked_sub(self.burst).unwrap_or(now);
        if *next < floor {
            *next = floor;
        }
        if *next <= now {
            *next += self.interval;
            Ok(())
        } else {
            Err(*next - now)
        }
    }
}

/// Sets an integer socket option (errors ignored: every caller has a fallback).
pub(crate) fn setsockopt_int(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) {
    // SAFETY: a valid descriptor and a pointer to a c_int of the stated size.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// The kernel's form of an address (`SockAddr::as_ptr`, `len` for bind, connect,
/// sendto).
pub(crate) fn sockaddr(a: SocketAddr) -> socket2::SockAddr {
    socket2::SockAddr::from(a)
}

/// For a 127.0.0.0/8 target, a different loopback source address makes a self-connect
/// (source == destination) impossible.
pub(crate) fn loopback_source(target: IpAddr) -> Option<IpAddr> {
    match target {
        IpAddr::V4(a) if a.is_loopback() => {
            let alt = if a == Ipv4Addr::new(127, 0, 0, 2) {
                Ipv4Addr::new(127, 0, 0, 3)
            } else {
                Ipv4Addr::new(127, 0, 0, 2)
            };
            Some(IpAddr::V4(alt))
        }
        _ => None,
    }
}

enum Attempt {
    Open,
    Closed,
    NoAnswer,
    OutOfDescriptors,
    Unreachable,
}

fn is_emfile(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS)
    )
}

/// A payload that makes a common UDP service answer.
pub fn udp_payload(port: u16) -> &'static [u8] {
    match port {
        // DNS: a query for the root's NS records.
        53 | 5353 => &[
            0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x02, 0x00, 0x01,
        ],
        // NTP: a version-3 client request.
        123 => &[
            0x1b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
        // SNMP v2c GetRequest for sysDescr.0 with community "public".
        161 => &[
            0x30, 0x29, 0x02, 0x01, 0x01, 0x04, 0x06, b'p', b'u', b'b', b'l', b'i', b'c', 0xa0,
            0x1c, 0x02, 0x04, 0x12, 0x34, 0x56, 0x78, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00, 0x30,
            0x0e, 0x30, 0x0c, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x02, 0x01, 0x01, 0x01, 0x00, 0x05,
            0x00,
        ],
        // memcached: "stats" with the UDP frame header.
        11211 => b"\x00\x01\x00\x00\x00\x01\x00\x00stats\r\n",
        _ => b"",
    }
}

async fn udp_attempt(dst: SocketAddr, t: Duration) -> Attempt {
    let bind: SocketAddr = if dst.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = match UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) if is_emfile(&e) => return Attempt::OutOfDescriptors,
        Err(_) => return Attempt::Unreachable,
    };
    // A connected socket receives ICMP port-unreachable as ECONNREFUSED.
    if sock.connect(dst).await.is_err() {
        return Attempt::Unreachable;
    }
    if sock.send(udp_payload(dst.port())).await.is_err() {
        return Attempt::Closed;
    }
    let mut buf = [0u8; 1500];
    match timeout(t, sock.recv(&mut buf)).await {
        Ok(Ok(_)) => Attempt::Open,
        Ok(Err(e)) if e.raw_os_error() == Some(libc::ECONNREFUSED) => Attempt::Closed,
        Ok(Err(_)) => Attempt::Unreachable,
        Err(_) => Attempt::NoAnswer,
    }
}

/// UDP-scans every (address, port) pair with a task per probe (UDP answers come slowly
/// enough that this is not the bottleneck; TCP has `connect::scan_tcp`); `progress(done,
/// total)` is called as ports finish.
pub async fn scan_udp(
    targets: &[IpAddr],
    ports: &[u16],
    cfg: &ScanConfig,
    progress: Arc<dyn Fn(u64, u64) + Send + Sync>,
    stop: &std::sync::atomic::AtomicBool,
) -> ScanOutcome {
    // How often a wait looks at `stop`.
    const TICK: Duration = Duration::from_millis(50);
    let limit = raise_nofile();
    // Keep headroom for the process's own descriptors.
    let by_fd = (limit.saturating_sub(64) as usize).max(8);
    let window = cfg.max_window.min(by_fd).max(1);
    let sem = Arc::new(Semaphore::new(window));
    let shrink = Arc::new(AtomicUsize::new(0));
    let timing = Arc::new(Mutex::new(Timing::new()));
    let out = Arc::new(Mutex::new(ScanOutcome::default()));
    let done = Arc::new(AtomicU64::new(0));
    let total = (targets.len() * ports.len()) as u64;
    progress(0, total);
    let pacer = Pacer::new(cfg.rate);
    let cfg = Arc::new(cfg.clone());

    let mut queue: VecDeque<(SocketAddr, u32)> = targets
        .iter()
        .flat_map(|&a| ports.iter().map(move |&p| (SocketAddr::new(a, p), 0u32)))
        .collect();
    let (retry_tx, mut retry_rx) = tokio::sync::mpsc::unbounded_channel::<(SocketAddr, u32)>();
    let mut tasks = tokio::task::JoinSet::new();
    let mut interrupted = false;
    loop {
        if stop.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        while let Ok(r) = retry_rx.try_recv() {
            queue.push_back(r);
        }
        let Some((dst, tries)) = queue.pop_front() else {
            // Wait for in-flight probes; they may queue retries.
            match timeout(TICK, tasks.join_next()).await {
                Err(_) | Ok(Some(_)) => continue,
                Ok(None) => {
                    if let Ok(r) = retry_rx.try_recv() {
                        queue.push_back(r);
                        continue;
                    }
                    break;
                }
            }
        };
        // Out of descriptors earlier: give back permits to shrink the window.
        while shrink.load(Ordering::Relaxed) > 0 && sem.available_permits() > 0 {
            if let Ok(p) = sem.clone().try_acquire_owned() {
                p.forget();
                shrink.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let permit = match timeout(TICK, sem.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => break,
            Err(_) => {
                // The window is full: look at `stop`, then wait again.
                queue.push_front((dst, tries));
                continue;
            }
        };
        if let Some(p) = &pacer {
            while let Err(wait) = p.take() {
                tokio::time::sleep(wait.min(TICK)).await;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        }
        while tasks.try_join_next().is_some() {}
        let (cfg, timing, out, done, progress, retry_tx, shrink) = (
            cfg.clone(),
            timing.clone(),
            out.clone(),
            done.clone(),
            progress.clone(),
            retry_tx.clone(),
            shrink.clone(),
        );
        tasks.spawn(async move {
            let t = timing
                .lock()
                .map(|t| t.timeout(&cfg))
                .unwrap_or(cfg.initial_timeout);
            let started = Instant::now();
            let attempt = udp_attempt(dst, t).await;
            drop(permit);
            let mut o = match out.lock() {
                Ok(o) => o,
                Err(p) => p.into_inner(),
            };
            o.probes += 1;
            let state = match attempt {
                Attempt::Open => Some(PortState::Open),
                Attempt::Closed => Some(PortState::Closed),
                Attempt::OutOfDescriptors => {
                    o.emfile += 1;
                    shrink.fetch_add(1, Ordering::Relaxed);
                    let _ = retry_tx.send((dst, tries));
                    return;
                }
                Attempt::NoAnswer if tries < cfg.retries => {
                    let _ = retry_tx.send((dst, tries + 1));
                    return;
                }
                Attempt::NoAnswer => Some(PortState::OpenFiltered),
                Attempt::Unreachable => Some(PortState::Filtered),
            };
            if matches!(state, Some(PortState::Open | PortState::Closed)) {
                if let Ok(mut tm) = timing.lock() {
                    tm.sample(started.elapsed());
                }
            }
            match state {
                Some(PortState::Closed) => o.closed += 1,
                Some(s) => o.ports.push(PortResult {
                    addr: dst.ip(),
                    port: dst.port(),
                    protocol: Protocol::Udp,
                    state: s,
                }),
                None => {}
            }
            drop(o);
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            progress(n, total);
        });
    }
    // Stopped: the probes in flight are dropped; what was settled stays.
    tasks.shutdown().await;
    let mut o = match Arc::try_unwrap(out) {
        Ok(m) => m.into_inner().unwrap_or_else(|p| p.into_inner()),
        Err(arc) => arc.lock().map(|o| o.clone()).unwrap_or_default(),
    };
    o.interrupted = interrupted;
    o.ports.sort_by_key(|r| (r.addr, r.port));
    o.srtt_us = timing.lock().map(|t| t.srtt_us()).unwrap_or_default();
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_udp_scan_keeps_what_it_settled() {
        // 60 closed ports at 10 a second: six seconds, stopped after half of one.
        let cfg = ScanConfig {
            protocol: Protocol::Udp,
            rate: Some(10),
            ..ScanConfig::default()
        };
        static STOP: AtomicBool = AtomicBool::new(false);
        let ports: Vec<u16> = (1..=60).collect();
        let t0 = Instant::now();
        let stopper = tokio::spawn(async {
            // Real time: a stop arriving while the scan runs.
            tokio::time::sleep(Duration::from_millis(500)).await;
            STOP.store(true, Ordering::Relaxed);
        });
        let o = scan_udp(
            &["127.0.0.1".parse().expect("addr")],
            &ports,
            &cfg,
            Arc::new(|_, _| {}),
            &STOP,
        )
        .await;
        let _ = stopper.await;
        assert!(o.interrupted);
        let settled = o.closed as usize + o.ports.len();
        assert!((1..60).contains(&settled), "{settled}: {o:?}");
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    }
}
