//! The storm engine against real loopback servers on port 0: churn closed and open loop
//! with exact counts, every error kind it names (refused, closed early, mismatch, timeout,
//! source addresses exhausted), and a hold that releases every descriptor.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use portwarden_net::bench::storm::{self, ChurnPlan, HoldPlan, Progress, Target};

/// A tokio echo server on a free loopback port, on its own runtime thread.
fn echo() -> (SocketAddr, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let l = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = l.local_addr().unwrap();
    rt.spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, rt)
}

/// A server that answers every connection with `answer` and closes it (after `delay`).
fn answering(answer: &'static [u8], delay: Duration) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                use std::io::Write;
                // Real time: the server that is slower than the client's timeout.
                std::thread::sleep(delay);
                let _ = s.write_all(answer);
            });
        }
    });
    addr
}

fn target(dst: SocketAddr, send: &[u8], expect: &[u8], timeout_ms: u64) -> Target {
    Target {
        dst,
        sources: Vec::new(),
        send: send.to_vec(),
        expect: expect.to_vec(),
        timeout_ms,
    }
}

fn plan(concurrency: u32, count: u64) -> ChurnPlan {
    ChurnPlan {
        concurrency,
        rate: None,
        count: Some(count),
        duration_ms: Some(30_000),
        threads: 2,
    }
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_closed_loop_churn_does_exactly_the_connections_asked_for() {
    let (addr, _rt) = echo();
    let payload = [b'x'; 32];
    let t = target(addr, &payload, &payload, 5000);
    let p = Progress::default();
    let r = storm::churn(&t, &plan(16, 3000), &p, &AtomicBool::new(false)).unwrap();
    assert_eq!(r.errors.total(), 0, "{:?}", r.errors);
    assert_eq!(r.completed, 3000);
    assert_eq!(r.latency_us.count(), 3000);
    assert_eq!(p.ok.load(std::sync::atomic::Ordering::Relaxed), 3000);
    let (p50, p99) = (r.latency_us.quantile(0.5), r.latency_us.quantile(0.99));
    assert!(p50 <= p99 && p99 <= r.latency_us.max(), "{p50:?} {p99:?}");
    // Connect-only: no payload, no expectation.
    let t = target(addr, b"", b"", 5000);
    let r = storm::churn(&t, &plan(4, 500), &p, &AtomicBool::new(false)).unwrap();
    assert_eq!((r.completed, r.errors.total()), (500, 0));
}

#[test]
fn an_open_loop_keeps_its_schedule() {
    let (addr, _rt) = echo();
    let t = target(addr, b"ping", b"ping", 5000);
    let mut pl = plan(64, 400);
    pl.rate = Some(400.0);
    let t0 = Instant::now();
    let r = storm::churn(&t, &pl, &Progress::default(), &AtomicBool::new(false)).unwrap();
    let took = t0.elapsed();
    assert_eq!((r.completed, r.errors.total()), (400, 0), "{:?}", r.errors);
    // 400 at 400/s: about a second, not as fast as the server allows.
    assert!(took >= Duration::from_millis(900), "{took:?}");
}

#[test]
fn each_kind_of_failure_is_counted_as_its_own() {
    let stop = AtomicBool::new(false);
    let p = Progress::default();
    // Nothing listens.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = free.local_addr().unwrap();
    drop(free);
    let r = storm::churn(
        &target(closed, b"hi", b"hi", 2000),
        &plan(8, 200),
        &p,
        &stop,
    )
    .unwrap();
    assert_eq!((r.completed, r.errors.refused), (0, 200), "{:?}", r.errors);
    // Wrong answer, and a close before the whole answer.
    let wrong = answering(b"NO", Duration::ZERO);
    let r = storm::churn(&target(wrong, b"", b"OK", 2000), &plan(4, 50), &p, &stop).unwrap();
    assert_eq!(r.errors.mismatch, 50, "{:?}", r.errors);
    let r = storm::churn(
        &target(wrong, b"", b"NO MORE", 2000),
        &plan(4, 50),
        &p,
        &stop,
    )
    .unwrap();
    assert_eq!(r.errors.closed_early, 50, "{:?}", r.errors);
    // Too slow.
    let slow = answering(b"OK", Duration::from_millis(1500));
    let t0 = Instant::now();
    let r = storm::churn(&target(slow, b"", b"OK", 200), &plan(4, 8), &p, &stop).unwrap();
    assert_eq!(r.errors.timeout, 8, "{:?}", r.errors);
    assert!(
        t0.elapsed() < Duration::from_millis(1400),
        "{:?}",
        t0.elapsed()
    );
    // A source address this host does not have.
    let mut t = target(closed, b"", b"", 2000);
    t.sources = vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))];
    let r = storm::churn(&t, &plan(2, 10), &p, &stop).unwrap();
    assert_eq!(r.errors.addr_not_avail, 10, "{:?}", r.errors);
}

#[test]
fn a_hold_opens_keeps_and_releases_every_connection() {
    let (addr, _rt) = echo();
    let before = fds();
    let mut t = target(addr, b"hello", b"hello", 5000);
    // Spread over three loopback sources, as a hold beyond one source's ports would be.
    t.sources = (1..=3)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect();
    let p = Progress::default();
    let r = storm::hold(
        &t,
        &HoldPlan {
            connections: 2000,
            window: 128,
            hold_ms: 300,
        },
        &p,
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(r.errors.total(), 0, "{:?}", r.errors);
    assert_eq!((r.attempted, r.established, r.released), (2000, 2000, 2000));
    assert_eq!(r.closed_by_peer, 0);
    assert_eq!(r.connect_us.count(), 2000);
    assert!(r.held_seconds >= 0.3, "{}", r.held_seconds);
    assert_eq!(p.phase(), storm::Phase::Done);
    // The echo server is in this process too: its ends close as it sees ours go.
    let t0 = Instant::now();
    while fds() != before && t0.elapsed() < Duration::from_secs(5) {
        // Real time: the server's tasks closing their ends.
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fds(), before, "descriptors back to where they were");
}

#[test]
fn a_hold_sees_the_server_close_what_it_held() {
    // Answers then closes: every held connection is closed by the peer while held.
    let addr = answering(b"OK", Duration::ZERO);
    let r = storm::hold(
        &target(addr, b"", b"OK", 5000),
        &HoldPlan {
            connections: 20,
            window: 8,
            hold_ms: 500,
        },
        &Progress::default(),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!((r.established, r.closed_by_peer, r.released), (20, 20, 0));
}
