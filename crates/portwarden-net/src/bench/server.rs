//! `portwarden bench server`: many tests at once (iperf3 3.12 refuses a second client),
//! each a control connection and its streams on one port; streams find their test by
//! cookie. Bounded: concurrent tests, each test's duration and bytes, a silent control
//! connection's idle time. A malformed control message ends that test, never the server.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::iperf::{self, COOKIE_LEN, Cookie, MAX_STREAMS, Params, Results, State, StreamResult};
use super::stream::{self, SendOpts, Shared, Sock, Stream};
use super::udp;

/// The server's limits.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Tests running at once; one more is refused ("busy").
    pub max_tests: usize,
    /// The longest a test may run; past it the server ends the test.
    pub max_duration: Duration,
    /// The most bytes a test may move (both ways together).
    pub max_bytes: Option<u64>,
    /// A control connection silent this long is closed.
    pub idle_timeout: Duration,
    /// Serve one test, then return.
    pub one_off: bool,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            max_tests: 16,
            max_duration: Duration::from_secs(600),
            max_bytes: None,
            idle_timeout: Duration::from_secs(30),
            one_off: false,
        }
    }
}

/// What the server tells its operator.
#[derive(Debug, Clone)]
pub enum ServerEvent {
    /// A test's streams are connected and data flows.
    Started {
        /// The client.
        peer: SocketAddr,
        /// Its streams.
        streams: u32,
        /// Which way the bytes go: "client → server", "server → client" or "both ways".
        direction: &'static str,
    },
    /// A test ended.
    Finished {
        /// The client.
        peer: SocketAddr,
        /// Bytes the server received.
        received: u64,
        /// Bytes the server sent.
        sent: u64,
        /// Seconds the data flowed.
        seconds: f64,
        /// Why it ended early, if it did.
        error: Option<String>,
    },
    /// A client was turned away before its test started.
    Refused {
        /// The client.
        peer: SocketAddr,
        /// Why.
        why: String,
    },
}

/// How long every stream of a test has to connect.
const STREAMS_TIMEOUT: Duration = Duration::from_secs(10);
/// The server's own patience after a test's announced time (a client that never ends it).
const END_SLACK: Duration = Duration::from_secs(10);

struct Tests {
    pending: Mutex<HashMap<Cookie, mpsc::Sender<(u64, TcpStream)>>>,
    running: AtomicUsize,
    /// The UDP side of the port: UDP tests' streams open there.
    udp: Arc<udp::Acceptor>,
}

/// A bound server.
pub struct Server {
    listener: TcpListener,
    opts: ServerOptions,
    tests: Arc<Tests>,
    stop: Arc<AtomicBool>,
}

impl Server {
    /// Binds the server's port.
    pub fn bind(addr: SocketAddr, opts: ServerOptions) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        let udp = udp::Acceptor::bind(listener.local_addr()?)?;
        Ok(Server {
            listener,
            opts,
            tests: Arc::new(Tests {
                pending: Mutex::new(HashMap::new()),
                running: AtomicUsize::new(0),
                udp,
            }),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Set it to stop accepting (running tests finish).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Serves until the stop flag is set (or, `one_off`, one test has ended).
    pub fn run(self, events: impl Fn(ServerEvent) + Send + Sync + 'static) -> io::Result<()> {
        let events: Arc<dyn Fn(ServerEvent) + Send + Sync> = Arc::new(events);
        let (done_tx, done_rx) = mpsc::channel::<()>();
        // Connections are numbered as accepted: a test's streams are put back in the
        // order the client opened them (their ids must match on both ends), whichever
        // thread reads its cookie first.
        let mut seq = 0u64;
        let udp = std::thread::Builder::new()
            .name("bench-udp".into())
            .spawn({
                let (tests, stop) = (self.tests.clone(), self.stop.clone());
                move || tests.udp.run(&stop)
            })?;
        let r = self.serve(&events, &done_tx, &done_rx, &mut seq);
        self.stop.store(true, Ordering::SeqCst);
        let _ = udp.join();
        r
    }

    fn serve(
        &self,
        events: &Arc<dyn Fn(ServerEvent) + Send + Sync>,
        done_tx: &mpsc::Sender<()>,
        done_rx: &mpsc::Receiver<()>,
        seq: &mut u64,
    ) -> io::Result<()> {
        while !self.stop.load(Ordering::Relaxed) {
            if self.opts.one_off && done_rx.try_recv().is_ok() {
                break;
            }
            if !readable(&self.listener, 200)? {
                continue;
            }
            let (conn, peer) = match self.listener.accept() {
                Ok(c) => c,
                // Out of descriptors: the client waits in the backlog a moment.
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            };
            *seq += 1;
            let n = *seq;
            let (tests, opts, ev, done) = (
                self.tests.clone(),
                self.opts.clone(),
                events.clone(),
                done_tx.clone(),
            );
            let _ = std::thread::Builder::new()
                .name("bench-conn".into())
                .spawn(move || {
                    if first(conn, n, peer, &tests, &opts, &*ev) {
                        let _ = done.send(());
                    }
                });
        }
        // One-off: the test's threads have ended when it reported done.
        Ok(())
    }
}

/// Whether the listener has a connection within `ms`.
fn readable(l: &TcpListener, ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: l.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one descriptor we hold.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(r > 0)
}

/// A new connection: a stream of a test waiting for it, or a new test's control
/// connection. Returns whether a test ran (for one-off).
fn first(
    mut conn: TcpStream,
    seq: u64,
    peer: SocketAddr,
    tests: &Tests,
    opts: &ServerOptions,
    events: &(dyn Fn(ServerEvent) + Send + Sync),
) -> bool {
    let _ = conn.set_read_timeout(Some(opts.idle_timeout));
    let mut cookie = [0u8; COOKIE_LEN];
    if conn.read_exact(&mut cookie).is_err() {
        return false;
    }
    let waiting = tests
        .pending
        .lock()
        .ok()
        .and_then(|p| p.get(&cookie).cloned());
    if let Some(tx) = waiting {
        let _ = tx.send((seq, conn));
        return false;
    }
    if tests.running.fetch_add(1, Ordering::SeqCst) >= opts.max_tests {
        tests.running.fetch_sub(1, Ordering::SeqCst);
        let _ = iperf::send_state(&mut conn, State::AccessDenied);
        events(ServerEvent::Refused {
            peer,
            why: format!("{} tests are running (--max-tests)", opts.max_tests),
        });
        return false;
    }
    let r = run_test(conn, peer, cookie, tests, opts, events);
    tests.running.fetch_sub(1, Ordering::SeqCst);
    if let Ok(mut p) = tests.pending.lock() {
        p.remove(&cookie);
    }
    r
}

/// A refusal: the iperf3 error state and numbers, and the operator's line.
fn refuse(
    conn: &mut TcpStream,
    code: i32,
    peer: SocketAddr,
    why: String,
    events: &(dyn Fn(ServerEvent) + Send + Sync),
) {
    let mut msg = vec![State::ServerError.byte()];
    msg.extend_from_slice(&code.to_be_bytes());
    msg.extend_from_slice(&0i32.to_be_bytes());
    let _ = std::io::Write::write_all(conn, &msg);
    events(ServerEvent::Refused { peer, why });
}

/// Checks a client's parameters against what the server allows.
pub fn validate(p: &Params, opts: &ServerOptions) -> Result<(), String> {
    if !p.tcp && !p.udp {
        return Err("the test names no protocol this server serves".into());
    }
    if p.parallel == 0 || p.parallel > MAX_STREAMS {
        return Err(format!("{} streams (1 to {MAX_STREAMS})", p.parallel));
    }
    if let Some(len) = p.len
        && (len == 0 || len > 16 << 20)
    {
        return Err(format!("a block of {len} bytes (1 to 16 MiB)"));
    }
    if let Some(t) = p.time
        && Duration::from_secs(u64::from(t) + u64::from(p.omit)) > opts.max_duration
    {
        return Err(format!(
            "a test of {t} s (the server allows {} s, --max-duration)",
            opts.max_duration.as_secs()
        ));
    }
    if let (Some(n), Some(max)) = (p.bytes(), opts.max_bytes)
        && n > max
    {
        return Err(format!(
            "a test of {n} bytes (the server allows {max}, --max-bytes)"
        ));
    }
    Ok(())
}

/// Asks for the test's `n` streams and waits for them: TCP ones by their cookie, in the
/// order the client opened them; UDP ones by the client's address, as they greet.
fn streams_of(
    conn: &mut TcpStream,
    peer: SocketAddr,
    cookie: Cookie,
    params: &Params,
    n: usize,
    tests: &Tests,
    events: &(dyn Fn(ServerEvent) + Send + Sync),
) -> Option<Vec<Sock>> {
    let test = u64::from_be_bytes(cookie[..8].try_into().unwrap_or_default());
    let deadline = Instant::now() + STREAMS_TIMEOUT;
    let late = |conn: &mut TcpStream, got: usize| {
        refuse(
            conn,
            iperf::errno::STREAMS,
            peer,
            format!("{got} of {n} streams connected in time"),
            events,
        );
    };
    if params.udp {
        let rx = tests
            .udp
            .expect(test, portwarden_core::addr::unmapped(peer).ip(), n);
        let ok = iperf::send_state(conn, State::CreateStreams).is_ok();
        let mut socks = Vec::with_capacity(n);
        while ok && socks.len() < n {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(s) => socks.push(Sock::Udp(s)),
                Err(_) => break,
            }
        }
        tests.udp.forget(test);
        if socks.len() < n {
            if ok {
                late(conn, socks.len());
            }
            return None;
        }
        return Some(socks);
    }
    let (tx, rx) = mpsc::channel();
    if let Ok(mut m) = tests.pending.lock() {
        m.insert(cookie, tx);
    }
    if iperf::send_state(conn, State::CreateStreams).is_err() {
        return None;
    }
    let mut socks = Vec::with_capacity(n);
    while socks.len() < n {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(s) => socks.push(s),
            Err(_) => {
                late(conn, socks.len());
                return None;
            }
        }
    }
    if let Ok(mut m) = tests.pending.lock() {
        m.remove(&cookie);
    }
    socks.sort_by_key(|(seq, _)| *seq);
    Some(socks.into_iter().map(|(_, s)| Sock::Tcp(s)).collect())
}

fn run_test(
    mut conn: TcpStream,
    peer: SocketAddr,
    cookie: Cookie,
    tests: &Tests,
    opts: &ServerOptions,
    events: &(dyn Fn(ServerEvent) + Send + Sync),
) -> bool {
    if iperf::send_state(&mut conn, State::ParamExchange).is_err() {
        return false;
    }
    let params: Params = match iperf::read_json(&mut conn) {
        Ok(p) => p,
        Err(e) => {
            refuse(&mut conn, iperf::errno::PARAMS, peer, e.to_string(), events);
            return false;
        }
    };
    if let Err(why) = validate(&params, opts) {
        refuse(&mut conn, iperf::errno::PARAMS, peer, why, events);
        return false;
    }
    let p = params.parallel as usize;
    let n = if params.bidirectional { 2 * p } else { p };
    let socks = match streams_of(&mut conn, peer, cookie, &params, n, tests, events) {
        Some(s) => s,
        None => return false,
    };
    // Bytes the server may send: the test's count, within the server's limit.
    let budget = match (params.bytes(), opts.max_bytes) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let shared = Shared::new(budget);
    // UDP: nothing is sent before the client has been told the test runs.
    shared.open.store(!params.udp, Ordering::Release);
    let len = params
        .len
        .unwrap_or(if params.udp { 1460 } else { 128 * 1024 }) as usize;
    let send = SendOpts {
        len,
        zerocopy: false,
    };
    let udp_send = udp::UdpSend {
        len,
        rate: params.bandwidth.unwrap_or(udp::DEFAULT_RATE),
        counters_64bit: params.udp_counters_64bit.unwrap_or(0) != 0,
    };
    let mut streams = Vec::with_capacity(n);
    for (i, s) in socks.into_iter().enumerate() {
        // The first `p` carry the client's bytes (all of them, unless reversed).
        let client_sends = if params.bidirectional {
            i < p
        } else {
            !params.reverse
        };
        let started = match s {
            Sock::Tcp(s) => {
                super::tune(
                    &s,
                    params.window,
                    params.congestion.as_deref(),
                    params.nodelay,
                );
                Stream::start(s, !client_sends, send, shared.clone())
            }
            Sock::Udp(s) => Stream::start_udp(s, !client_sends, udp_send, shared.clone()),
        };
        match started {
            Ok(st) => streams.push(st),
            Err(e) => {
                shared.stop.store(true, Ordering::SeqCst);
                refuse(
                    &mut conn,
                    iperf::errno::STREAMS,
                    peer,
                    e.to_string(),
                    events,
                );
                return false;
            }
        }
    }
    if iperf::send_state(&mut conn, State::TestStart).is_err()
        || iperf::send_state(&mut conn, State::TestRunning).is_err()
    {
        shared.stop.store(true, Ordering::SeqCst);
        return false;
    }
    shared.open.store(true, Ordering::Release);
    let direction = match (params.bidirectional, params.reverse) {
        (true, _) => "both ways",
        (false, true) => "server → client",
        (false, false) => "client → server",
    };
    events(ServerEvent::Started {
        peer,
        streams: params.parallel,
        direction,
    });
    let t0 = Instant::now();
    let cpu0 = stream::cpu_seconds();
    let limit = match params.time {
        Some(t) => opts
            .max_duration
            .min(Duration::from_secs(u64::from(t) + u64::from(params.omit)) + END_SLACK),
        None => opts.max_duration,
    };
    let error = watch(&mut conn, &streams, t0, limit, opts.max_bytes);
    shared.stop.store(true, Ordering::SeqCst);
    for s in &mut streams {
        let _ = s.join();
    }
    // The data's time: to the last byte any stream moved (not the drain after it).
    let secs = streams
        .iter()
        .map(|s| s.c.seconds())
        .fold(0.0, f64::max)
        .max(1e-6);
    let cpu_secs = t0.elapsed().as_secs_f64();
    let cpu1 = stream::cpu_seconds();
    let (received, sent) = streams.iter().fold((0, 0), |(r, s), st| {
        let b = st.c.bytes.load(Ordering::SeqCst);
        if st.sender { (r, s + b) } else { (r + b, s) }
    });
    let finished = |error: Option<String>| ServerEvent::Finished {
        peer,
        received,
        sent,
        seconds: secs,
        error,
    };
    if let Some(e) = error {
        if e != "the client ended the test" {
            refuse(&mut conn, iperf::errno::LIMIT, peer, e.clone(), &|_| {});
        }
        events(finished(Some(e)));
        return true;
    }
    let results = Results {
        cpu_util_total: 100.0 * ((cpu1.0 - cpu0.0) + (cpu1.1 - cpu0.1)) / cpu_secs,
        cpu_util_user: 100.0 * (cpu1.0 - cpu0.0) / cpu_secs,
        cpu_util_system: 100.0 * (cpu1.1 - cpu0.1) / cpu_secs,
        sender_has_retransmits: i64::from(streams.iter().any(|s| s.sender)),
        congestion_used: params.congestion.clone(),
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
    let exchanged = (|| -> io::Result<()> {
        conn.set_read_timeout(Some(opts.idle_timeout))?;
        iperf::send_state(&mut conn, State::ExchangeResults)?;
        let _client: Results = iperf::read_json(&mut conn)?;
        iperf::send_json(&mut conn, &results)?;
        iperf::send_state(&mut conn, State::DisplayResults)?;
        // IPERF_DONE, or the client's close: either ends it.
        let _ = iperf::read_state(&mut conn);
        Ok(())
    })();
    events(finished(exchanged.err().map(|e| format!("results: {e}"))));
    true
}

/// Watches the control connection while data flows: the client's TEST_END ends the
/// test; its close, a malformed state, or the server's limits end it early (the
/// reason returned).
fn watch(
    conn: &mut TcpStream,
    streams: &[Stream],
    t0: Instant,
    limit: Duration,
    max_bytes: Option<u64>,
) -> Option<String> {
    if conn
        .set_read_timeout(Some(Duration::from_millis(100)))
        .is_err()
    {
        return Some("the control connection failed".into());
    }
    loop {
        match iperf::read_state(conn) {
            Ok(State::TestEnd) => return None,
            Ok(State::ClientTerminate) => return Some("the client ended the test".into()),
            Ok(s) => return Some(format!("the client sent {s:?} while the test ran")),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Some(format!("the control connection: {e}")),
        }
        if t0.elapsed() > limit {
            return Some(format!(
                "the test ran past {} s (--max-duration, or its own time and {} s)",
                limit.as_secs(),
                END_SLACK.as_secs()
            ));
        }
        if let Some(max) = max_bytes {
            let moved: u64 = streams
                .iter()
                .map(|s| s.c.bytes.load(Ordering::Relaxed))
                .sum();
            if moved > max {
                return Some(format!(
                    "the test moved more than {max} bytes (--max-bytes)"
                ));
            }
        }
    }
}
