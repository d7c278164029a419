//! `portwarden bench` client and server over loopback: exact byte counts each way, the
//! iperf3 protocol against Debian's real `iperf3` in both roles, limits, and a server
//! that survives malformed control messages.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portwarden_net::bench::client::{self, ClientError, ClientOptions, Outcome};
use portwarden_net::bench::iperf::{self, State};
use portwarden_net::bench::server::{Server, ServerEvent, ServerOptions};

/// A server on a loopback port 0, and what it reported.
fn server(opts: ServerOptions) -> (SocketAddr, Arc<Mutex<Vec<ServerEvent>>>) {
    let s = Server::bind("127.0.0.1:0".parse().unwrap(), opts).unwrap();
    let addr = s.local_addr().unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    std::thread::spawn(move || s.run(move |e| ev.lock().unwrap().push(e)));
    (addr, events)
}

fn opts(addr: SocketAddr) -> ClientOptions {
    ClientOptions {
        server: addr,
        duration: Duration::from_secs(1),
        interval: Duration::from_millis(250),
        ..ClientOptions::default()
    }
}

fn sums(o: &Outcome) -> (u64, u64) {
    o.streams
        .iter()
        .fold((0, 0), |(s, r), t| (s + t.sent, r + t.received))
}

#[test]
fn byte_counts_are_exact_each_way_and_streams_sum_to_the_total() {
    let (addr, _) = server(ServerOptions::default());
    // An odd count and block size: the last block is cut to fit.
    const N: u64 = 50_000_017;
    for (reverse, bidir, parallel) in [(false, false, 1), (true, false, 3), (false, true, 2)] {
        let o = client::run(
            &ClientOptions {
                bytes: Some(N),
                reverse,
                bidir,
                parallel,
                len: 100_003,
                ..opts(addr)
            },
            |_| {},
        )
        .unwrap();
        let case = format!("reverse {reverse} bidir {bidir} -P {parallel}");
        assert_eq!(
            o.streams.len(),
            if bidir { 4 } else { parallel as usize },
            "{case}"
        );
        for t in &o.streams {
            assert_eq!(t.sent, t.received, "{case}: stream {} lost bytes", t.id);
        }
        let (sent, received) = sums(&o);
        let each_way = if bidir { 2 * N } else { N };
        assert_eq!((sent, received), (each_way, each_way), "{case}");
        // Interval bytes add up to each stream's total on this end.
        for t in &o.streams {
            let mine: u64 = o
                .intervals
                .iter()
                .flat_map(|i| &i.streams)
                .filter(|s| s.id == t.id)
                .map(|s| s.bytes)
                .sum();
            assert_eq!(
                mine,
                if t.client_sends { t.sent } else { t.received },
                "{case}"
            );
        }
        let ids: Vec<i64> = o.streams.iter().map(|t| t.id).collect();
        assert_eq!(ids[0], 1);
        assert!(o.seconds > 0.0 && o.cpu_remote.0 >= 0.0);
    }
}

#[test]
fn a_timed_test_reports_intervals_and_tcp_info_of_sending_streams() {
    let (addr, _) = server(ServerOptions::default());
    let o = client::run(
        &ClientOptions {
            parallel: 2,
            ..opts(addr)
        },
        |_| {},
    )
    .unwrap();
    assert!(o.intervals.len() >= 4, "{}", o.intervals.len());
    let (sent, received) = sums(&o);
    assert!(
        sent > 0 && received > 0 && received <= sent,
        "{sent} {received}"
    );
    // Our server shuts its reading side only at our FIN: it counted every byte.
    assert_eq!(sent, received);
    assert!(
        o.intervals[0]
            .streams
            .iter()
            .all(|s| s.info.is_some_and(|i| i.snd_cwnd > 0))
    );
    assert!((0.9..3.0).contains(&o.seconds), "{}", o.seconds);
}

#[test]
fn limits_refuse_with_a_reason_and_the_server_goes_on() {
    let (addr, events) = server(ServerOptions {
        max_duration: Duration::from_secs(5),
        max_bytes: Some(1_000_000),
        ..ServerOptions::default()
    });
    let long = client::run(
        &ClientOptions {
            duration: Duration::from_secs(60),
            ..opts(addr)
        },
        |_| {},
    );
    match long {
        Err(ClientError::Refused(m)) => assert!(m.contains("parameters"), "{m}"),
        other => panic!("{other:?}"),
    }
    let many = client::run(
        &ClientOptions {
            bytes: Some(2_000_000),
            ..opts(addr)
        },
        |_| {},
    );
    assert!(matches!(many, Err(ClientError::Refused(_))), "{many:?}");
    // A timed test that would move more than the limit is ended by the server.
    let cut = client::run(&opts(addr), |_| {});
    match cut {
        Err(ClientError::Refused(m)) => assert!(m.contains("limit"), "{m}"),
        other => panic!("{other:?}"),
    }
    let ev = events.lock().unwrap();
    assert!(
        ev.iter().any(
            |e| matches!(e, ServerEvent::Refused { why, .. } if why.contains("--max-duration"))
        ),
        "{ev:?}"
    );
    drop(ev);
    // Still serving.
    let ok = client::run(
        &ClientOptions {
            bytes: Some(500_000),
            ..opts(addr)
        },
        |_| {},
    )
    .unwrap();
    assert_eq!(sums(&ok), (500_000, 500_000));
}

#[test]
fn a_busy_server_says_so() {
    let (addr, _) = server(ServerOptions {
        max_tests: 1,
        ..ServerOptions::default()
    });
    let first = std::thread::spawn(move || client::run(&opts(addr), |_| {}));
    // Real time: the first test must be running before the second asks.
    std::thread::sleep(Duration::from_millis(300));
    match client::run(&opts(addr), |_| {}) {
        Err(ClientError::Refused(m)) => assert!(m.contains("busy"), "{m}"),
        other => panic!("{other:?}"),
    }
    first.join().unwrap().unwrap();
}

#[test]
fn malformed_control_messages_end_their_test_not_the_server() {
    let (addr, _) = server(ServerOptions {
        idle_timeout: Duration::from_millis(500),
        ..ServerOptions::default()
    });
    let cookie = iperf::cookie().unwrap();
    let hostile: Vec<Vec<u8>> = vec![
        vec![],                                            // closes at once
        b"short".to_vec(),                                 // half a cookie
        [&cookie[..], &[0xff, 0xff, 0xff, 0xff]].concat(), // a 4 GiB message
        [&cookie[..], &[0, 0, 0, 5], b"{{{{{"].concat(),   // not JSON
        [&cookie[..], &[0, 0, 0, 17], br#"{"parallel":-1} "#].concat(),
        [&cookie[..], &[0, 0, 0, 14], br#"{"parallel":0}"#].concat(),
        [
            &cookie[..],
            &[0, 0, 0, 30],
            br#"{"tcp":true,"parallel":100000}"#,
        ]
        .concat(),
    ];
    for (i, h) in hostile.iter().enumerate() {
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(h);
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        if h.len() > iperf::COOKIE_LEN {
            assert_eq!(buf.first(), Some(&State::ParamExchange.byte()), "case {i}");
        }
    }
    // Random bytes after a cookie, bounded: each ends its own connection.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..50 {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut junk = cookie.to_vec();
        for _ in 0..64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            junk.push(seed as u8);
        }
        let _ = s.write_all(&junk);
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    }
    let ok = client::run(
        &ClientOptions {
            bytes: Some(1_000_000),
            ..opts(addr)
        },
        |_| {},
    )
    .unwrap();
    assert_eq!(sums(&ok), (1_000_000, 1_000_000));
}

/// Debian's iperf3, or a visible skip where it is missing.
fn iperf3() -> Option<&'static str> {
    let ok = Command::new("iperf3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIP: iperf3 is not installed");
    }
    ok.then_some("iperf3")
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `iperf3 -s` on a free loopback port, listening (killed on drop).
fn iperf3_server(bin: &str) -> (Killed, SocketAddr) {
    let port = free_port();
    let child = Command::new(bin)
        .args(["-s", "-B", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let srv = Killed(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let t0 = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "iperf3 -s did not listen"
        );
        // Real time: iperf3 starts in its own process.
        std::thread::sleep(Duration::from_millis(20));
    }
    // iperf3 takes a probe connection for a control one and drops it; give it a moment.
    // Real time: iperf3's server loop.
    std::thread::sleep(Duration::from_millis(200));
    (srv, addr)
}

#[test]
fn our_client_tests_against_a_real_iperf3_server() {
    let Some(bin) = iperf3() else { return };
    let (_srv, addr) = iperf3_server(bin);
    for (reverse, parallel) in [(false, 1), (true, 2)] {
        let o = client::run(
            &ClientOptions {
                reverse,
                parallel,
                ..opts(addr)
            },
            |_| {},
        )
        .unwrap_or_else(|e| panic!("reverse {reverse}: {e}"));
        let (sent, received) = sums(&o);
        assert!(
            sent > 0 && received > 0,
            "reverse {reverse}: {sent} {received}"
        );
        assert!(
            received as f64 >= 0.9 * sent as f64,
            "reverse {reverse}: {sent} {received}"
        );
        assert_eq!(o.streams.len(), parallel as usize);
        // Real time: iperf3 -s serves one test at a time and resets between them.
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_real_iperf3_client_tests_against_our_server() {
    let Some(bin) = iperf3() else { return };
    let (addr, events) = server(ServerOptions::default());
    for extra in [
        &[][..],
        &["-R", "-P", "2"][..],
        &["--bidir"][..],
        &["-n", "3000000"][..],
    ] {
        let out = Command::new(bin)
            .args(["-c", "127.0.0.1", "-p", &addr.port().to_string(), "-J"])
            .args(if extra.contains(&"-n") {
                &[][..]
            } else {
                &["-t", "1"][..]
            })
            .args(extra)
            .output()
            .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{extra:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)));
        assert!(doc.get("error").is_none(), "{extra:?}: {}", doc["error"]);
        let sent = doc["end"]["sum_sent"]["bytes"].as_u64().unwrap();
        let received = doc["end"]["sum_received"]["bytes"].as_u64().unwrap();
        assert!(
            sent > 0 && received > 0,
            "{extra:?}: {sent} {received}: {}",
            doc["end"]
        );
        assert!(
            received as f64 >= 0.9 * sent as f64,
            "{extra:?}: {sent} {received}"
        );
        if extra.contains(&"-n") {
            assert!(sent >= 3_000_000, "{sent}");
        }
    }
    // The client may exit before the server's test thread has said it finished.
    let finished = || {
        let ev = events.lock().unwrap();
        let n = ev
            .iter()
            .filter(|e| matches!(e, ServerEvent::Finished { error: None, .. }))
            .count();
        (n, format!("{ev:?}"))
    };
    let t0 = std::time::Instant::now();
    while finished().0 < 4 && t0.elapsed() < Duration::from_secs(5) {
        // Real time: the server's last test thread ending.
        std::thread::sleep(Duration::from_millis(20));
    }
    let (n, ev) = finished();
    assert_eq!(n, 4, "{ev}");
}

fn udp_opts(addr: SocketAddr, rate: u64) -> ClientOptions {
    ClientOptions {
        udp: true,
        rate: Some(rate),
        len: 1400,
        ..opts(addr)
    }
}

#[test]
fn udp_at_a_modest_rate_loses_nothing_on_loopback_each_way() {
    let (addr, _events) = server(ServerOptions::default());
    for (reverse, parallel) in [(false, 1), (true, 2)] {
        let o = client::run(
            &ClientOptions {
                reverse,
                parallel,
                ..udp_opts(addr, 20_000_000)
            },
            |_| {},
        )
        .unwrap_or_else(|e| panic!("reverse {reverse}: {e}"));
        assert_eq!(o.streams.len(), parallel as usize);
        for s in &o.streams {
            let u = s.udp.expect("UDP figures");
            // 20 Mbit/s of 1400-byte datagrams for a second: about 1,800 of them.
            assert!(u.sent_packets > 1000, "reverse {reverse}: {u:?}");
            assert_eq!(u.lost, 0, "reverse {reverse}: {u:?}");
            assert_eq!(u.packets, u.sent_packets, "reverse {reverse}: {u:?}");
            assert_eq!(s.sent, s.received, "reverse {reverse}");
            assert!(u.jitter >= 0.0 && u.jitter < 0.01, "{u:?}");
        }
        // The rate was kept: not the link's, the one asked.
        let (sent, _) = sums(&o);
        let bps = sent as f64 * 8.0 / o.seconds / f64::from(parallel);
        assert!(bps < 30e6 && bps > 10e6, "reverse {reverse}: {bps}");
    }
}

#[test]
fn udp_interoperates_with_a_real_iperf3_in_both_roles() {
    let Some(bin) = iperf3() else { return };
    // Their client, our server.
    let (addr, _events) = server(ServerOptions::default());
    let out = Command::new(bin)
        .args([
            "-c",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "-J",
            "-u",
        ])
        .args(["-b", "10M", "-l", "1400", "-t", "1"])
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc.get("error").is_none(), "{}", doc["error"]);
    let sum = &doc["end"]["sum"];
    assert!(sum["packets"].as_u64().unwrap() > 500, "{sum}");
    assert_eq!(sum["lost_packets"], 0, "{sum}");
    // Our client, their server.
    let (_srv, theirs) = iperf3_server(bin);
    for reverse in [false, true] {
        let o = client::run(
            &ClientOptions {
                reverse,
                ..udp_opts(theirs, 10_000_000)
            },
            |_| {},
        )
        .unwrap_or_else(|e| panic!("reverse {reverse}: {e}"));
        let u = o.streams[0].udp.expect("UDP figures");
        assert!(u.packets > 500, "reverse {reverse}: {u:?}");
        assert_eq!(u.lost, 0, "reverse {reverse}: {u:?}");
        // Real time: iperf3 -s serves one test at a time and resets between them.
        std::thread::sleep(Duration::from_millis(300));
    }
}
