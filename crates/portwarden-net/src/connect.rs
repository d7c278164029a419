//! The TCP connect-scan engine: one hand-rolled loop per core over raw non-blocking
//! sockets and epoll, measurably faster than a task per probe (BENCHMARKS.md).
//!
//! On loopback the kernel answers a SYN synchronously, so a second `connect()` right after
//! `EINPROGRESS` already reports the outcome: `ECONNREFUSED` (closed — and the socket is
//! reset by the kernel and reused for the next port, saving `socket()`/`close()`), `0`
//! (open), or `EALREADY` (still in flight: handed to epoll with a deadline). Remote
//! targets therefore take the epoll path, loopback ones mostly never touch it.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use portwarden_core::Protocol;

use crate::scan::{
    Pacer, PortResult, PortState, ScanConfig, ScanOutcome, Timing, Window, loopback_source,
    setsockopt_int, sockaddr,
};

/// A raw socket closed on drop (with a reset when it was connected).
pub(crate) struct Sock(pub(crate) libc::c_int);

impl Drop for Sock {
    fn drop(&mut self) {
        // SAFETY: the descriptor is owned by this value and closed once.
        unsafe { libc::close(self.0) };
    }
}

pub(crate) fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn linger_zero(fd: libc::c_int) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid descriptor and a pointer to a linger struct of the stated size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// A fresh non-blocking socket for `dst`, bound to `src` (port chosen at connect time).
pub(crate) fn new_socket(dst: SocketAddr, src: Option<IpAddr>) -> Result<Sock, i32> {
    let fam = if dst.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            fam,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(errno());
    }
    let s = Sock(fd);
    if let Some(src) = src {
        setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1);
        let sa = sockaddr(SocketAddr::new(src, 0));
        // SAFETY: `sa` holds a valid sockaddr of `sa.len()` bytes.
        if unsafe { libc::bind(fd, sa.as_ptr(), sa.len()) } != 0 {
            return Err(errno());
        }
    }
    Ok(s)
}

pub(crate) fn connect(fd: libc::c_int, dst: SocketAddr) -> i32 {
    let sa = sockaddr(dst);
    // SAFETY: `sa` holds a valid sockaddr of `sa.len()` bytes.
    let r = unsafe { libc::connect(fd, sa.as_ptr(), sa.len()) };
    if r == 0 { 0 } else { errno() }
}

pub(crate) fn so_error(fd: libc::c_int) -> i32 {
    let mut e: libc::c_int = 0;
    let mut l = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid descriptor and a writable c_int with its length.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut e as *mut libc::c_int).cast(),
            &mut l,
        )
    };
    e
}

/// Whether a connected socket connected to itself (local address == remote address).
fn self_connected(fd: libc::c_int, dst: SocketAddr) -> bool {
    // SAFETY: getsockname fills at most the storage and length socket2 hands it.
    let local = unsafe {
        socket2::SockAddr::try_init(|ss, len| {
            if libc::getsockname(fd, ss.cast(), len) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    local
        .ok()
        .and_then(|(_, a)| a.as_socket())
        .is_some_and(|a| a.ip() == dst.ip() && a.port() == dst.port())
}

enum Outcome {
    Open,
    Closed,
    SelfConnect,
    Retry,
    Filtered,
}

struct InFlight {
    sock: Sock,
    dst: SocketAddr,
    tries: u32,
    started: Instant,
    /// Matches the deadline heap's entry (a descriptor number is reused).
    seq: u64,
}

/// What the scan has learnt about one host, shared by the workers.
struct HostStats {
    timing: Timing,
    /// The highest try that was ever answered (nmap's `max_successful_tryno`): a host that
    /// never answers a retransmission gets one, not `retries`.
    max_answered_try: u32,
}

/// Probes a worker settles between two progress reports.
const PROGRESS_EVERY: u64 = 64;

/// Shared between the workers.
struct Shared<'a> {
    cfg: ScanConfig,
    hosts: Mutex<HashMap<IpAddr, HostStats>>,
    done: AtomicU64,
    total: u64,
    progress: Arc<dyn Fn(u64, u64) + Send + Sync>,
    /// `--rate`, across the workers.
    pacer: Option<Pacer>,
    /// Set: the workers stop sending and return what they settled.
    stop: &'a AtomicBool,
}

impl Shared<'_> {
    fn with_host<R>(&self, a: IpAddr, f: impl FnOnce(&mut HostStats) -> R) -> Option<R> {
        let mut m = self.hosts.lock().ok()?;
        let h = m.entry(a).or_insert_with(|| HostStats {
            timing: Timing::new(),
            max_answered_try: 0,
        });
        Some(f(h))
    }

    fn timeout(&self, a: IpAddr) -> std::time::Duration {
        self.with_host(a, |h| h.timing.timeout(&self.cfg))
            .unwrap_or(self.cfg.initial_timeout)
    }

    /// How many retransmissions an unanswered probe to `a` gets.
    fn retries(&self, a: IpAddr) -> u32 {
        self.with_host(a, |h| h.max_answered_try + 1)
            .unwrap_or(1)
            .min(self.cfg.retries)
    }
}

fn worker(jobs: Vec<SocketAddr>, window: usize, sh: &Shared<'_>) -> ScanOutcome {
    use std::cmp::Reverse;
    let mut out = ScanOutcome::default();
    // SAFETY: epoll_create1 with a valid flag.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    let ep = Sock(ep);
    let mut queue: std::collections::VecDeque<(SocketAddr, u32)> =
        jobs.into_iter().map(|d| (d, 0)).collect();
    let mut inflight: HashMap<libc::c_int, InFlight> = HashMap::new();
    let mut deadlines: std::collections::BinaryHeap<Reverse<(Instant, u64, libc::c_int)>> =
        std::collections::BinaryHeap::new();
    let mut next_seq = 0u64;
    let mut spare: HashMap<(bool, Option<IpAddr>), Sock> = HashMap::new();
    let mut win = Window::new(window.max(1));
    let mut events: Vec<libc::epoll_event> = vec![libc::epoll_event { events: 0, u64: 0 }; 512];
    let mut since_progress = 0u64;

    let mut finish = |out: &mut ScanOutcome,
                      dst: SocketAddr,
                      o: Outcome,
                      queue: &mut std::collections::VecDeque<(SocketAddr, u32)>,
                      tries: u32|
     -> bool {
        out.probes += 1;
        let state = match o {
            Outcome::Open => PortState::Open,
            Outcome::Closed => PortState::Closed,
            Outcome::SelfConnect => {
                out.self_connects += 1;
                PortState::Closed
            }
            Outcome::Retry => {
                // Retransmissions go first: they settle ports instead of opening new ones.
                queue.push_front((dst, tries + 1));
                return false;
            }
            Outcome::Filtered => PortState::Filtered,
        };
        if state == PortState::Closed {
            out.closed += 1;
        } else {
            out.ports.push(PortResult {
                addr: dst.ip(),
                port: dst.port(),
                protocol: Protocol::Tcp,
                state,
            });
        }
        since_progress += 1;
        // Paced, every settled probe is news (a slow scan shows it moves).
        if since_progress >= PROGRESS_EVERY || sh.pacer.is_some() {
            let n = sh.done.fetch_add(since_progress, Ordering::Relaxed) + since_progress;
            since_progress = 0;
            (sh.progress)(n, sh.total);
        }
        true
    };
    // An answer: a sample for the host's RTT (first tries only, as Karn's rule says), and
    // loss evidence when a retransmission was what got it.
    let answered = |f: &InFlight, win: &mut Window| {
        let rto = sh.timeout(f.dst.ip());
        sh.with_host(f.dst.ip(), |h| {
            if f.tries == 0 {
                h.timing.sample(f.started.elapsed());
            }
            h.max_answered_try = h.max_answered_try.max(f.tries);
        });
        if f.tries > 0 {
            win.loss(rto);
        } else {
            win.grow();
        }
    };

    loop {
        if sh.stop.load(Ordering::Relaxed) {
            out.interrupted = true;
            break;
        }
        // Start probes while the window (and the rate) allow.
        let mut paced = None;
        while inflight.len() < win.get() && !queue.is_empty() {
            if let Some(Err(wait)) = sh.pacer.as_ref().map(Pacer::take) {
                paced = Some(wait);
                break;
            }
            let Some((dst, tries)) = queue.pop_front() else {
                break;
            };
            let src = loopback_source(dst.ip());
            let key = (dst.is_ipv4(), src);
            let sock = match spare.remove(&key) {
                Some(s) => s,
                None => match new_socket(dst, src) {
                    Ok(s) => s,
                    Err(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                        // Out of descriptors: back-pressure, never a panic.
                        out.emfile += 1;
                        queue.push_front((dst, tries));
                        win.cap(inflight.len() / 2);
                        break;
                    }
                    Err(_) => {
                        finish(&mut out, dst, Outcome::Filtered, &mut queue, tries);
                        continue;
                    }
                },
            };
            let started = Instant::now();
            let mut r = connect(sock.0, dst);
            if r == libc::EINPROGRESS {
                r = connect(sock.0, dst);
            }
            match r {
                0 => {
                    let o = if self_connected(sock.0, dst) {
                        Outcome::SelfConnect
                    } else {
                        Outcome::Open
                    };
                    linger_zero(sock.0);
                    drop(sock);
                    finish(&mut out, dst, o, &mut queue, tries);
                }
                libc::ECONNREFUSED => {
                    // The kernel reset the socket: reuse it for the next port.
                    spare.insert(key, sock);
                    finish(&mut out, dst, Outcome::Closed, &mut queue, tries);
                }
                libc::EALREADY | libc::EINPROGRESS => {
                    let mut ev = libc::epoll_event {
                        events: (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32,
                        u64: sock.0 as u64,
                    };
                    // SAFETY: valid epoll and socket descriptors, a valid event.
                    unsafe { libc::epoll_ctl(ep.0, libc::EPOLL_CTL_ADD, sock.0, &mut ev) };
                    let t = sh.timeout(dst.ip());
                    next_seq += 1;
                    deadlines.push(Reverse((started + t, next_seq, sock.0)));
                    inflight.insert(
                        sock.0,
                        InFlight {
                            sock,
                            dst,
                            tries,
                            started,
                            seq: next_seq,
                        },
                    );
                }
                libc::EADDRNOTAVAIL | libc::EAGAIN => {
                    // Ephemeral ports exhausted for now: wait for in-flight probes.
                    queue.push_front((dst, tries));
                    win.cap(inflight.len());
                    break;
                }
                libc::ETIMEDOUT | libc::EHOSTUNREACH | libc::ENETUNREACH => {
                    let o = if tries < sh.retries(dst.ip()) {
                        Outcome::Retry
                    } else {
                        Outcome::Filtered
                    };
                    finish(&mut out, dst, o, &mut queue, tries);
                }
                _ => {
                    finish(&mut out, dst, Outcome::Filtered, &mut queue, tries);
                }
            }
        }
        if inflight.is_empty() {
            if queue.is_empty() {
                break;
            }
            if let Some(wait) = paced {
                // At most a tenth of a second: a stop waits no longer at a slow rate.
                std::thread::sleep(wait.min(std::time::Duration::from_millis(100)));
            }
            continue;
        }
        // Wait for answers, at most until the earliest live deadline.
        while let Some(Reverse((_, seq, fd))) = deadlines.peek() {
            if inflight.get(fd).is_some_and(|f| f.seq == *seq) {
                break;
            }
            deadlines.pop();
        }
        let now = Instant::now();
        let next = deadlines.peek().map_or(now, |Reverse((d, _, _))| *d);
        let mut wait = next.saturating_duration_since(now);
        if let Some(p) = paced {
            wait = wait.min(p);
        }
        // Rounded up: a wait shorter than a millisecond is not a busy loop; at most a
        // tenth of a second, the longest a stop waits.
        let wait_ms = wait.as_micros().div_ceil(1000).clamp(0, 100) as i32;
        // SAFETY: `events` is a writable buffer of its length.
        let n =
            unsafe { libc::epoll_wait(ep.0, events.as_mut_ptr(), events.len() as i32, wait_ms) };
        for ev in events.iter().take(n.max(0) as usize) {
            let fd = ev.u64 as libc::c_int;
            let Some(f) = inflight.remove(&fd) else {
                continue;
            };
            let err = so_error(fd);
            let o = match err {
                0 if self_connected(fd, f.dst) => Outcome::SelfConnect,
                0 => Outcome::Open,
                libc::ECONNREFUSED => Outcome::Closed,
                _ if f.tries < sh.retries(f.dst.ip()) => Outcome::Retry,
                _ => Outcome::Filtered,
            };
            if matches!(o, Outcome::Open | Outcome::Closed) {
                answered(&f, &mut win);
            }
            linger_zero(fd);
            drop(f.sock);
            finish(&mut out, f.dst, o, &mut queue, f.tries);
        }
        // Unanswered past their deadline: retransmit (as often as this host ever needed,
        // plus one) or call it filtered.
        let now = Instant::now();
        while let Some(Reverse((d, seq, fd))) = deadlines.peek().copied() {
            if d > now {
                break;
            }
            deadlines.pop();
            if inflight.get(&fd).is_none_or(|f| f.seq != seq) {
                continue;
            }
            let Some(f) = inflight.remove(&fd) else {
                continue;
            };
            let o = if f.tries < sh.retries(f.dst.ip()) {
                Outcome::Retry
            } else {
                Outcome::Filtered
            };
            win.grow();
            drop(f.sock);
            finish(&mut out, f.dst, o, &mut queue, f.tries);
        }
    }
    if since_progress > 0 {
        let n = sh.done.fetch_add(since_progress, Ordering::Relaxed) + since_progress;
        (sh.progress)(n, sh.total);
    }
    out
}

/// Connect-scans every (address, port), one worker per core; `stop` ends it within a
/// tenth of a second (`interrupted`, with what was settled).
pub fn scan_tcp(
    targets: &[IpAddr],
    ports: &[u16],
    cfg: &ScanConfig,
    progress: Arc<dyn Fn(u64, u64) + Send + Sync>,
    stop: &AtomicBool,
) -> ScanOutcome {
    let limit = crate::scan::raise_nofile();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let window = cfg
        .max_window
        .min((limit.saturating_sub(64) as usize / threads).max(4));
    let total = ports.len() * targets.len();
    let mut shares: Vec<Vec<SocketAddr>> = (0..threads)
        .map(|_| Vec::with_capacity(total / threads + 1))
        .collect();
    // Interleave ports across workers, and targets within a port, to spread load.
    let jobs = ports
        .iter()
        .flat_map(|&p| targets.iter().map(move |&a| SocketAddr::new(a, p)));
    for (i, j) in jobs.enumerate() {
        shares[i % threads].push(j);
    }
    let sh = Shared {
        cfg: cfg.clone(),
        hosts: Mutex::new(HashMap::new()),
        done: AtomicU64::new(0),
        total: total as u64,
        progress,
        pacer: Pacer::new(cfg.rate),
        stop,
    };
    (sh.progress)(0, sh.total);
    let mut all = ScanOutcome::default();
    std::thread::scope(|s| {
        let hs: Vec<_> = shares
            .into_iter()
            .map(|share| {
                let sh = &sh;
                s.spawn(move || worker(share, window, sh))
            })
            .collect();
        for h in hs {
            if let Ok(o) = h.join() {
                all.ports.extend(o.ports);
                all.closed += o.closed;
                all.probes += o.probes;
                all.self_connects += o.self_connects;
                all.emfile += o.emfile;
                all.interrupted |= o.interrupted;
            }
        }
    });
    all.ports.sort_by_key(|r| (r.addr, r.port));
    // The slowest host's smoothed RTT: the one the scan waited for.
    all.srtt_us = sh
        .hosts
        .lock()
        .map(|m| m.values().map(|h| h.timing.srtt_us()).max().unwrap_or(0))
        .unwrap_or_default();
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_rate_paces_every_worker_together_and_progress_starts_at_zero() {
        // 60 probes at 100 per second (a burst of one): at least 0.59 s, whatever the
        // workers. A lower bound: what pacing guarantees, not a speed claim.
        let cfg = ScanConfig {
            rate: Some(100),
            ..ScanConfig::default()
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let ports: Vec<u16> = (1..=60).collect();
        let t0 = Instant::now();
        let o = scan_tcp(
            &["127.0.0.1".parse().expect("addr")],
            &ports,
            &cfg,
            Arc::new(move |d, t| s2.lock().expect("lock").push((d, t))),
            &AtomicBool::new(false),
        );
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(580), "{took:?}");
        assert_eq!(o.closed as usize + o.ports.len(), 60);
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.first(), Some(&(0, 60)));
        assert_eq!(seen.iter().map(|p| p.0).max(), Some(60));
        // Without a rate the same scan is not paced.
        let t0 = Instant::now();
        scan_tcp(
            &["127.0.0.1".parse().expect("addr")],
            &ports,
            &ScanConfig::default(),
            Arc::new(|_, _| {}),
            &AtomicBool::new(false),
        );
        assert!(t0.elapsed() < took, "{:?} unpaced", t0.elapsed());
    }

    #[test]
    fn a_stop_ends_a_paced_scan_with_what_it_settled() {
        // 60 probes at 10 a second would take six seconds.
        let cfg = ScanConfig {
            rate: Some(10),
            ..ScanConfig::default()
        };
        let stop = AtomicBool::new(false);
        let ports: Vec<u16> = (1..=60).collect();
        let t0 = Instant::now();
        let o = std::thread::scope(|s| {
            s.spawn(|| {
                // Real time: a stop arriving while the scan runs.
                std::thread::sleep(Duration::from_millis(300));
                stop.store(true, Ordering::Relaxed);
            });
            scan_tcp(
                &["127.0.0.1".parse().expect("addr")],
                &ports,
                &cfg,
                Arc::new(|_, _| {}),
                &stop,
            )
        });
        assert!(o.interrupted);
        let settled = o.closed as usize + o.ports.len();
        assert!((1..60).contains(&settled), "{settled}");
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    }

    #[test]
    fn a_pacer_allows_a_hundredth_of_a_second_in_a_burst() {
        let p = Pacer::new(Some(1000)).expect("pacer");
        let t0 = Instant::now();
        let ok = (0..1000).filter(|_| p.take().is_ok()).count();
        let ms = t0.elapsed().as_millis() as usize;
        assert!(ok >= 10 && ok <= 11 + ms + 1, "{ok} in {ms} ms");
        let wait = (0..100_000).find_map(|_| p.take().err()).expect("spent");
        assert!(wait <= Duration::from_millis(1), "{wait:?}");
        assert!(Pacer::new(None).is_none());
    }

    #[test]
    fn timeouts_grow_the_window_and_answered_retransmissions_halve_it_once_per_rto() {
        let mut w = Window::new(4096);
        assert_eq!(w.get(), 32);
        // A silent host: every probe times out, the window still opens (slow start).
        for _ in 0..1000 {
            w.grow();
        }
        assert_eq!(w.get(), 1032);
        // Loss evidence halves it, and a burst of such answers counts once per RTO.
        w.loss(Duration::from_secs(1));
        assert_eq!(w.get(), 516);
        w.loss(Duration::from_secs(1));
        assert_eq!(w.get(), 516);
        // Past ssthresh the window grows by about one per window of answers.
        for _ in 0..600 {
            w.grow();
        }
        assert_eq!(w.get(), 517);
        // Never beyond the descriptor bound, never below one.
        let mut small = Window::new(8);
        for _ in 0..100 {
            small.grow();
        }
        assert_eq!(small.get(), 8);
        small.cap(0);
        assert_eq!(small.get(), 1);
    }
}
