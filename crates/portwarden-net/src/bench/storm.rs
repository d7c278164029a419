//! `bench storm`: connection concurrency and churn against one TCP port, on raw
//! non-blocking sockets and one edge-triggered epoll loop per thread (the connect-scan
//! engine's sockets).
//!
//! A connection is: `connect()`, the payload written at once (on loopback the handshake is
//! over when `connect()` returns `EINPROGRESS`, so the write succeeds; elsewhere it says
//! `EAGAIN` and waits for writability), the expected answer read, `close()`. Churn runs
//! that in a closed loop (`concurrency` in flight, each slot starting the next as soon as
//! one ends) or an open loop (`rate` per second on a fixed schedule, latency counted from
//! the scheduled start, so a stalled server is not hidden by fewer arrivals). Hold opens
//! connections a window at a time and keeps them until told to let go.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use portwarden_core::histogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::connect::{Sock, connect, errno, new_socket, so_error};

/// Where and what a storm connection is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    /// The port under test.
    pub dst: SocketAddr,
    /// Source addresses used in turn (none: the kernel's choice). On loopback, each of
    /// 127.0.0.x has its own ephemeral ports towards one destination.
    pub sources: Vec<IpAddr>,
    /// Written once connected.
    pub send: Vec<u8>,
    /// Read back before the connection counts as a success (a prefix of the answer).
    pub expect: Vec<u8>,
    /// A connection not done within this fails as a timeout.
    pub timeout_ms: u64,
}

/// Failed connections by what went wrong.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Errors {
    /// `ECONNREFUSED`: nothing listens (or the backlog overflowed and the server resets).
    pub refused: u64,
    /// `ECONNRESET`, `EPIPE`, `ECONNABORTED`.
    pub reset: u64,
    /// No answer within the timeout (or `ETIMEDOUT`).
    pub timeout: u64,
    /// `EADDRNOTAVAIL`/`EADDRINUSE`: the source ports towards the target are used up.
    pub addr_not_avail: u64,
    /// `EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`.
    pub no_descriptors: u64,
    /// The peer closed before the expected answer.
    pub closed_early: u64,
    /// The answer differs from the expected one.
    pub mismatch: u64,
    /// Any other errno.
    pub other: u64,
}

impl Errors {
    /// All failed connections.
    pub fn total(&self) -> u64 {
        self.refused
            + self.reset
            + self.timeout
            + self.addr_not_avail
            + self.no_descriptors
            + self.closed_early
            + self.mismatch
            + self.other
    }

    /// Adds another count.
    pub fn merge(&mut self, o: &Errors) {
        self.refused += o.refused;
        self.reset += o.reset;
        self.timeout += o.timeout;
        self.addr_not_avail += o.addr_not_avail;
        self.no_descriptors += o.no_descriptors;
        self.closed_early += o.closed_early;
        self.mismatch += o.mismatch;
        self.other += o.other;
    }

    fn count(&mut self, f: Fail) {
        let slot = match f {
            Fail::Errno(libc::ECONNREFUSED) => &mut self.refused,
            Fail::Errno(libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED) => &mut self.reset,
            Fail::Errno(libc::ETIMEDOUT) | Fail::Timeout => &mut self.timeout,
            Fail::Errno(libc::EADDRNOTAVAIL | libc::EADDRINUSE) => &mut self.addr_not_avail,
            Fail::Errno(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                &mut self.no_descriptors
            }
            Fail::ClosedEarly => &mut self.closed_early,
            Fail::Mismatch => &mut self.mismatch,
            Fail::Errno(_) => &mut self.other,
        };
        *slot += 1;
    }
}

#[derive(Debug, Clone, Copy)]
enum Fail {
    Errno(i32),
    Timeout,
    ClosedEarly,
    Mismatch,
}

/// What a run has done so far, read by whoever shows progress.
#[derive(Debug, Default)]
pub struct Progress {
    /// Connections that succeeded (churn: ended; hold: established).
    pub ok: AtomicU64,
    /// Connections that failed.
    pub failed: AtomicU64,
    /// Hold: [`Phase`] as a number.
    pub phase: AtomicU8,
}

/// Where a hold is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Connections being opened.
    Opening = 0,
    /// All open (or failed), held.
    Holding = 1,
    /// Being closed.
    Releasing = 2,
    /// Closed.
    Done = 3,
}

impl Progress {
    /// Where the run is.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Opening,
            1 => Phase::Holding,
            2 => Phase::Releasing,
            _ => Phase::Done,
        }
    }

    fn set(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Release);
    }
}

/// A churn run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChurnPlan {
    /// Connections in flight at most (closed loop: always, while running).
    pub concurrency: u32,
    /// New connections per second on a fixed schedule (open loop); none: closed loop.
    pub rate: Option<f64>,
    /// Stop starting connections after this many.
    pub count: Option<u64>,
    /// Stop starting connections after this long.
    pub duration_ms: Option<u64>,
    /// Event loops (threads).
    pub threads: u32,
}

/// What a churn run did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChurnReport {
    /// Connections that did all they should.
    pub completed: u64,
    /// The ones that failed, by kind.
    pub errors: Errors,
    /// Microseconds from (scheduled) start to close, of the successful connections.
    pub latency_us: Histogram,
    /// From the first start to the last connection's end.
    pub seconds: f64,
    /// Open loop: connections started more than a millisecond after their schedule
    /// (every slot was busy, or the loop fell behind).
    pub late: u64,
}

impl ChurnReport {
    /// Adds another loop's (or process's) report.
    pub fn merge(&mut self, o: &ChurnReport) {
        self.completed += o.completed;
        self.errors.merge(&o.errors);
        self.latency_us.merge(&o.latency_us);
        self.seconds = self.seconds.max(o.seconds);
        self.late += o.late;
    }
}

/// A hold run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HoldPlan {
    /// Connections to open and keep.
    pub connections: u64,
    /// Connections being opened at once at most (the listen backlog is finite).
    pub window: u32,
    /// How long to keep them once all are open (or failed).
    pub hold_ms: u64,
}

/// What a hold run did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HoldReport {
    /// Connections tried.
    pub attempted: u64,
    /// Connections that opened (and answered, with an expectation).
    pub established: u64,
    /// The ones that failed, by kind.
    pub errors: Errors,
    /// Microseconds to establish (and exchange the payload on) each connection.
    pub connect_us: Histogram,
    /// From the first connect to the last connection open or failed.
    pub establish_seconds: f64,
    /// How long they were held.
    pub held_seconds: f64,
    /// Held connections the peer closed (or reset) while they were held.
    pub closed_by_peer: u64,
    /// Connections closed by us at the end.
    pub released: u64,
}

impl HoldReport {
    /// Adds another process's report.
    pub fn merge(&mut self, o: &HoldReport) {
        self.attempted += o.attempted;
        self.established += o.established;
        self.errors.merge(&o.errors);
        self.connect_us.merge(&o.connect_us);
        self.establish_seconds = self.establish_seconds.max(o.establish_seconds);
        self.held_seconds = self.held_seconds.max(o.held_seconds);
        self.closed_by_peer += o.closed_by_peer;
        self.released += o.released;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Connecting,
    Sending(usize),
    Receiving(usize),
    Held,
}

struct Conn {
    sock: Sock,
    /// When it was meant to start (latency counts from here).
    start: Instant,
    stage: Stage,
    generation: u64,
}

enum Step {
    Done,
    Pending,
    Fail(Fail),
}

/// One event loop's connections, in slots whose index is the epoll token.
struct Lp<'a> {
    t: &'a Target,
    ep: Sock,
    slots: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// (deadline, slot, generation) in start order: every connection has the same timeout.
    deadlines: VecDeque<(Instant, usize, u64)>,
    generation: u64,
    next_source: usize,
    live: usize,
    buf: Vec<u8>,
}

impl<'a> Lp<'a> {
    fn new(t: &'a Target, offset: usize) -> std::io::Result<Self> {
        // SAFETY: epoll_create1 with a valid flag.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Lp {
            t,
            ep: Sock(ep),
            slots: Vec::new(),
            free: Vec::new(),
            deadlines: VecDeque::new(),
            generation: 0,
            next_source: offset,
            live: 0,
            buf: vec![0; t.expect.len().clamp(64, 64 * 1024)],
        })
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.t.timeout_ms.max(1))
    }

    /// Starts a connection meant to start at `start`; Err when it failed at once.
    fn start(&mut self, start: Instant, now: Instant) -> Result<(), Fail> {
        let src = if self.t.sources.is_empty() {
            None
        } else {
            let s = self.t.sources[self.next_source % self.t.sources.len()];
            self.next_source = self.next_source.wrapping_add(1);
            Some(s)
        };
        let sock = new_socket(self.t.dst, src).map_err(Fail::Errno)?;
        let stage = match connect(sock.0, self.t.dst) {
            0 | libc::EINPROGRESS => Stage::Connecting,
            e => return Err(Fail::Errno(e)),
        };
        let mut c = Conn {
            sock,
            start,
            stage,
            generation: 0,
        };
        // On loopback the handshake is already over: try the payload now.
        if !self.t.send.is_empty() {
            match self.write(&mut c, 0) {
                Step::Fail(Fail::Errno(libc::EAGAIN)) => {}
                Step::Fail(f) => return Err(f),
                _ => {}
            }
        }
        let mut events = libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET;
        if c.stage == Stage::Connecting || matches!(c.stage, Stage::Sending(_)) {
            events |= libc::EPOLLOUT;
        }
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let mut ev = libc::epoll_event {
            events: events as u32,
            u64: slot as u64,
        };
        // SAFETY: both descriptors are ours; `ev` is a valid event.
        if unsafe { libc::epoll_ctl(self.ep.0, libc::EPOLL_CTL_ADD, c.sock.0, &mut ev) } != 0 {
            self.free.push(slot);
            return Err(Fail::Errno(errno()));
        }
        self.generation += 1;
        c.generation = self.generation;
        self.deadlines
            .push_back((now + self.timeout(), slot, c.generation));
        self.slots[slot] = Some(c);
        self.live += 1;
        Ok(())
    }

    /// Writes the rest of the payload from `from`.
    fn write(&self, c: &mut Conn, from: usize) -> Step {
        let mut at = from;
        while at < self.t.send.len() {
            let rest = &self.t.send[at..];
            // SAFETY: `rest` is valid for `rest.len()` bytes.
            let n = unsafe {
                libc::send(
                    c.sock.0,
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                let e = errno();
                // Still connecting with nothing written: the connect's writability comes
                // first.
                if e == libc::EAGAIN && (at > 0 || c.stage != Stage::Connecting) {
                    c.stage = Stage::Sending(at);
                }
                return Step::Fail(Fail::Errno(e));
            }
            at += n as usize;
        }
        c.stage = Stage::Receiving(0);
        Step::Pending
    }

    /// Moves a connection on after epoll said `ev`.
    fn advance(&mut self, slot: usize, ev: u32) -> Step {
        let Some(mut c) = self.slots[slot].take() else {
            return Step::Pending;
        };
        let step = self.step(&mut c, ev);
        self.slots[slot] = Some(c);
        step
    }

    fn step(&mut self, c: &mut Conn, ev: u32) -> Step {
        let trouble = (libc::EPOLLERR | libc::EPOLLHUP | libc::EPOLLRDHUP) as u32;
        if c.stage == Stage::Connecting {
            if ev & (libc::EPOLLOUT as u32 | trouble) == 0 {
                return Step::Pending;
            }
            match so_error(c.sock.0) {
                0 => c.stage = Stage::Sending(0),
                e => return Step::Fail(Fail::Errno(e)),
            }
        }
        if let Stage::Sending(at) = c.stage {
            match self.write(c, at) {
                Step::Fail(Fail::Errno(libc::EAGAIN)) => return Step::Pending,
                Step::Fail(f) => return Step::Fail(f),
                _ => {}
            }
            // The answer comes with a later event (edge-triggered: it cannot be missed).
            if !self.t.expect.is_empty() && ev & (libc::EPOLLIN as u32 | trouble) == 0 {
                return Step::Pending;
            }
        }
        match c.stage {
            Stage::Receiving(got) => {
                if got >= self.t.expect.len() {
                    return Step::Done;
                }
                if ev & (libc::EPOLLIN as u32 | trouble) == 0 {
                    return Step::Pending;
                }
                let mut got = got;
                loop {
                    let want = (self.t.expect.len() - got).min(self.buf.len());
                    // SAFETY: `buf` is valid for `want` bytes.
                    let n = unsafe { libc::read(c.sock.0, self.buf.as_mut_ptr().cast(), want) };
                    if n == 0 {
                        return Step::Fail(Fail::ClosedEarly);
                    }
                    if n < 0 {
                        let e = errno();
                        if e == libc::EAGAIN {
                            c.stage = Stage::Receiving(got);
                            return Step::Pending;
                        }
                        return Step::Fail(Fail::Errno(e));
                    }
                    let n = n as usize;
                    if self.buf[..n] != self.t.expect[got..got + n] {
                        return Step::Fail(Fail::Mismatch);
                    }
                    got += n;
                    if got == self.t.expect.len() {
                        c.stage = Stage::Receiving(got);
                        return Step::Done;
                    }
                }
            }
            Stage::Held => {
                // Whatever the peer sends is read and dropped; its close ends the hold.
                loop {
                    // SAFETY: `buf` is valid for its length.
                    let n = unsafe {
                        libc::read(c.sock.0, self.buf.as_mut_ptr().cast(), self.buf.len())
                    };
                    match n {
                        0 => return Step::Fail(Fail::ClosedEarly),
                        n if n < 0 => {
                            let e = errno();
                            return if e == libc::EAGAIN {
                                Step::Pending
                            } else {
                                Step::Fail(Fail::Errno(e))
                            };
                        }
                        _ => {}
                    }
                }
            }
            _ => Step::Pending,
        }
    }

    /// Closes the connection in `slot` and frees the slot.
    fn close(&mut self, slot: usize) -> Option<Conn> {
        let c = self.slots[slot].take()?;
        self.free.push(slot);
        self.live -= 1;
        Some(c)
    }

    /// The connections whose deadline passed (not yet held), closed.
    fn expired(&mut self, now: Instant) -> u64 {
        let mut n = 0;
        while let Some(&(at, slot, g)) = self.deadlines.front() {
            if at > now {
                break;
            }
            self.deadlines.pop_front();
            let current = self.slots[slot]
                .as_ref()
                .is_some_and(|c| c.generation == g && c.stage != Stage::Held);
            if current {
                self.close(slot);
                n += 1;
            }
        }
        n
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|d| d.0)
    }

    fn wait(&mut self, events: &mut [libc::epoll_event], ms: i32) -> usize {
        // SAFETY: `events` is writable for its length.
        let n =
            unsafe { libc::epoll_wait(self.ep.0, events.as_mut_ptr(), events.len() as i32, ms) };
        n.max(0) as usize
    }
}

fn wait_ms(now: Instant, until: Option<Instant>, cap: Duration) -> i32 {
    let d = until.map_or(cap, |u| u.saturating_duration_since(now).min(cap));
    // Rounded up: waking a little early would only spin.
    d.as_micros().div_ceil(1000) as i32
}

/// Runs a churn on `plan.threads` event loops; `stop` ends it early.
pub fn churn(
    t: &Target,
    plan: &ChurnPlan,
    progress: &Progress,
    stop: &AtomicBool,
) -> std::io::Result<ChurnReport> {
    let threads = plan.threads.clamp(1, plan.concurrency.max(1));
    let started = AtomicU64::new(0);
    let t0 = Instant::now();
    let reports: Vec<std::io::Result<ChurnReport>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|i| {
                let conc = plan.concurrency / threads + u32::from(i < plan.concurrency % threads);
                let rate = plan.rate.map(|r| r / f64::from(threads));
                let started = &started;
                s.spawn(move || {
                    churn_loop(t, plan, conc, rate, i as usize, t0, started, progress, stop)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("a churn loop panicked"))
            .collect()
    });
    let mut out = ChurnReport::default();
    for r in reports {
        out.merge(&r?);
    }
    out.seconds = t0.elapsed().as_secs_f64();
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn churn_loop(
    t: &Target,
    plan: &ChurnPlan,
    conc: u32,
    rate: Option<f64>,
    index: usize,
    t0: Instant,
    started: &AtomicU64,
    progress: &Progress,
    stop: &AtomicBool,
) -> std::io::Result<ChurnReport> {
    let mut lp = Lp::new(t, index)?;
    let mut out = ChurnReport::default();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let end = plan.duration_ms.map(|ms| t0 + Duration::from_millis(ms));
    let interval = rate.map(|r| Duration::from_secs_f64(1.0 / r.max(1e-3)));
    // Each loop's schedule starts at a different offset within one interval.
    let mut next_at = t0 + interval.map_or(Duration::ZERO, |iv| iv.mul_f64(index as f64 / 8.0));
    let mut starting = true;
    let fail = |out: &mut ChurnReport, f: Fail| {
        out.errors.count(f);
        progress.failed.fetch_add(1, Ordering::Relaxed);
    };
    loop {
        let now = Instant::now();
        if starting && (stop.load(Ordering::Relaxed) || end.is_some_and(|e| now >= e)) {
            starting = false;
        }
        // At most `conc` starts a turn: starts that fail at once (no descriptors, no
        // source port) must not spin here without ever waiting.
        let mut tries = 0;
        while starting && lp.live < conc as usize && tries < conc {
            tries += 1;
            let at = match interval {
                Some(iv) => {
                    if next_at > now {
                        break;
                    }
                    let at = next_at;
                    next_at += iv;
                    at
                }
                None => now,
            };
            if plan
                .count
                .is_some_and(|c| started.fetch_add(1, Ordering::Relaxed) >= c)
            {
                starting = false;
                break;
            }
            if now.duration_since(at) > Duration::from_millis(1) {
                out.late += 1;
            }
            if let Err(f) = lp.start(at, now) {
                fail(&mut out, f);
            }
        }
        if !starting && lp.live == 0 {
            break;
        }
        let mut until = lp.next_deadline();
        if starting {
            let wake = [interval.map(|_| next_at), end];
            for w in wake.into_iter().flatten() {
                until = Some(until.map_or(w, |u| u.min(w)));
            }
        }
        let n = lp.wait(&mut events, wait_ms(now, until, Duration::from_millis(100)));
        for ev in &events[..n] {
            let slot = ev.u64 as usize;
            match lp.advance(slot, ev.events) {
                Step::Pending => {}
                Step::Done => {
                    if let Some(c) = lp.close(slot) {
                        out.latency_us.record(c.start.elapsed().as_micros() as u64);
                        out.completed += 1;
                        progress.ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Step::Fail(f) => {
                    lp.close(slot);
                    fail(&mut out, f);
                }
            }
            // Closed loop: the slot starts its next connection at once, as a client's
            // loop would, not after the rest of the batch (that wait would be latency).
            if interval.is_none() && starting && lp.live < conc as usize {
                if plan
                    .count
                    .is_some_and(|c| started.fetch_add(1, Ordering::Relaxed) >= c)
                {
                    starting = false;
                } else {
                    let now = Instant::now();
                    if let Err(f) = lp.start(now, now) {
                        fail(&mut out, f);
                    }
                }
            }
        }
        for _ in 0..lp.expired(Instant::now()) {
            fail(&mut out, Fail::Timeout);
        }
    }
    Ok(out)
}

/// Opens `plan.connections`, holds them `plan.hold_ms` (or until `stop`), closes them.
pub fn hold(
    t: &Target,
    plan: &HoldPlan,
    progress: &Progress,
    stop: &AtomicBool,
) -> std::io::Result<HoldReport> {
    let mut lp = Lp::new(t, 0)?;
    let mut out = HoldReport::default();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 512];
    let window = plan.window.max(1) as usize;
    let t0 = Instant::now();
    let mut opening = 0usize;
    progress.set(Phase::Opening);
    let mut held_since = None;
    loop {
        let now = Instant::now();
        let stopping = stop.load(Ordering::Relaxed);
        while !stopping && out.attempted < plan.connections && opening < window {
            out.attempted += 1;
            match lp.start(now, now) {
                Ok(()) => opening += 1,
                Err(f) => {
                    out.errors.count(f);
                    progress.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if held_since.is_none() && opening == 0 && (out.attempted == plan.connections || stopping) {
            out.establish_seconds = t0.elapsed().as_secs_f64();
            held_since = Some(Instant::now());
            progress.set(Phase::Holding);
        }
        if let Some(h) = held_since {
            if stopping || h.elapsed() >= Duration::from_millis(plan.hold_ms) {
                out.held_seconds = h.elapsed().as_secs_f64();
                break;
            }
        }
        let until = match held_since {
            Some(h) => Some(h + Duration::from_millis(plan.hold_ms)),
            None => lp.next_deadline(),
        };
        let n = lp.wait(&mut events, wait_ms(now, until, Duration::from_millis(100)));
        for ev in &events[..n] {
            let slot = ev.u64 as usize;
            let was_held = lp.slots[slot]
                .as_ref()
                .is_some_and(|c| c.stage == Stage::Held);
            match lp.advance(slot, ev.events) {
                Step::Pending => {}
                Step::Done => {
                    if let Some(c) = lp.slots[slot].as_mut() {
                        c.stage = Stage::Held;
                        out.connect_us.record(c.start.elapsed().as_micros() as u64);
                    }
                    opening -= 1;
                    out.established += 1;
                    progress.ok.fetch_add(1, Ordering::Relaxed);
                    // The peer's close may have come with the answer, on the edge just
                    // taken: look once now, as no later edge would tell.
                    if let Step::Fail(_) = lp.advance(slot, libc::EPOLLIN as u32) {
                        lp.close(slot);
                        out.closed_by_peer += 1;
                    }
                }
                Step::Fail(f) => {
                    lp.close(slot);
                    if was_held {
                        out.closed_by_peer += 1;
                    } else {
                        opening -= 1;
                        out.errors.count(f);
                        progress.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        let gone = lp.expired(Instant::now());
        opening -= gone as usize;
        out.errors.timeout += gone;
        progress.failed.fetch_add(gone, Ordering::Relaxed);
    }
    progress.set(Phase::Releasing);
    for slot in 0..lp.slots.len() {
        if lp.close(slot).is_some() {
            out.released += 1;
        }
    }
    progress.set(Phase::Done);
    Ok(out)
}
