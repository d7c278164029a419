//! The balancer over loopback with real backends on port 0: in-process tokio servers, and
//! python processes where a test kills or stops one (SIGKILL, SIGSTOP) by its PID.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use portwarden_core::catalog::Catalog;
use portwarden_core::policy::{Balance, Policy};
use portwarden_net::balance::proxyproto::{self, Header, Parse};
use portwarden_net::balance::{Balancer, Options, StartError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

/// A group from policy text (`listen` is replaced by a port-0 loopback address).
fn group(body: &str, backends: &[SocketAddr], backup: &[SocketAddr]) -> Balance {
    let list = |v: &[SocketAddr]| {
        v.iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = format!(
        "version = 1\n[[balance]]\nname = \"g\"\nlisten = \"127.0.0.1:9\"\nbackends = [{}]\nbackup = [{}]\ndrain_timeout = \"1s\"\n{body}\n",
        list(backends),
        list(backup)
    );
    let p = Policy::parse("t.toml", &text, Catalog::builtin())
        .unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    let mut b = p.balance[0].clone();
    b.listen = "127.0.0.1:0".parse().unwrap();
    b
}

fn start(b: &Balance) -> (Balancer, SocketAddr) {
    let (bal, _events) = Balancer::start(std::slice::from_ref(b), Options::default()).unwrap();
    let addr = bal.local_addrs()[0].1;
    (bal, addr)
}

/// An echo backend that answers `ID:` + what it read, and counts its connections.
async fn backend(id: &'static str) -> (SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let n = Arc::new(AtomicU64::new(0));
    let count = n.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => {
                            let mut out = format!("{id}:").into_bytes();
                            out.extend_from_slice(&buf[..k]);
                            if s.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, n)
}

/// One request through the balancer: which backend answered.
async fn ask(addr: SocketAddr, from: Option<IpAddr>) -> std::io::Result<String> {
    let s = match from {
        Some(ip) => {
            let sock = TcpSocket::new_v4()?;
            sock.bind(SocketAddr::new(ip, 0))?;
            sock.connect(addr).await?
        }
        None => TcpStream::connect(addr).await?,
    };
    let mut s = s;
    s.write_all(b"hello").await?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    match text.split_once(':') {
        Some((id, "hello")) => Ok(id.to_string()),
        _ => Err(std::io::Error::other(format!("answer {text:?}"))),
    }
}

async fn wait_until(what: &str, limit: Duration, f: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        // Real time: the balancer's checks run on their own interval.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_and_weights_spread_connections() {
    let (a, _) = backend("a").await;
    let (b, _) = backend("b").await;
    let (c, _) = backend("c").await;
    let g = group("", &[a, b, c], &[]);
    let (bal, vip) = start(&g);
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..60 {
        *counts.entry(ask(vip, None).await.unwrap()).or_default() += 1;
    }
    assert_eq!(
        counts,
        HashMap::from([("a".into(), 20), ("b".into(), 20), ("c".into(), 20)])
    );
    // Weights: 3:1 after a reload.
    let text = format!("backends = [{{ addr = \"{a}\", weight = 3 }}, \"{b}\"]");
    let mut g2 = group("", &[a], &[]);
    g2.backends = Policy::parse(
        "t.toml",
        &format!("version = 1\n[[balance]]\nname = \"g\"\nlisten = \"127.0.0.1:9\"\n{text}\n"),
        Catalog::builtin(),
    )
    .unwrap()
    .balance[0]
        .backends
        .clone();
    g2.listen = vip;
    bal.reload(&[g2]).unwrap();
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..40 {
        *counts.entry(ask(vip, None).await.unwrap()).or_default() += 1;
    }
    assert_eq!(counts, HashMap::from([("a".into(), 30), ("b".into(), 10)]));
    let st = &bal.status()[0];
    assert_eq!(st.accepted, 100);
    let totals: Vec<u64> = st.backends.iter().map(|b| b.total).collect();
    assert_eq!(
        totals,
        vec![50, 30],
        "a and b keep their counters over the reload"
    );
    assert!(st.backends[0].bytes_in >= 50 * 5, "{st:?}");
    bal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_fills_the_idlest() {
    let (a, _) = backend("a").await;
    let (b, _) = backend("b").await;
    let g = group("algorithm = \"least-conn\"", &[a, b], &[]);
    let (bal, vip) = start(&g);
    // Three held on whichever; then every new one goes to the one with fewer.
    let mut held = Vec::new();
    for _ in 0..6 {
        let mut s = TcpStream::connect(vip).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 8];
        let n = s.read(&mut buf).await.unwrap();
        held.push((String::from_utf8_lossy(&buf[..n]).to_string(), s));
    }
    let on_a = held.iter().filter(|(id, _)| id.starts_with("a:")).count();
    assert_eq!(on_a, 3, "least-conn alternates while equal");
    // Free two of a's: the next two go to a.
    let mut i = 0;
    held.retain(|(id, _)| {
        let drop_it = id.starts_with("a:") && i < 2;
        if drop_it {
            i += 1;
        }
        !drop_it
    });
    wait_until("slots freed", Duration::from_secs(5), || {
        bal.status()[0].backends[0].active == 1
    })
    .await;
    assert_eq!(ask(vip, None).await.unwrap(), "a");
    bal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_hash_keeps_a_source_on_its_node_and_removing_one_moves_only_its_sources() {
    let mut addrs = Vec::new();
    let ids = ["a", "b", "c", "d"];
    for id in ids {
        addrs.push(backend(id).await.0);
    }
    let g = group("algorithm = \"source-hash\"", &addrs, &[]);
    let (bal, vip) = start(&g);
    let sources: Vec<IpAddr> = (1..=120)
        .map(|i| {
            format!("127.0.{}.{}", i / 200, 1 + i % 200)
                .parse()
                .unwrap()
        })
        .collect();
    let mut first = Vec::new();
    for s in &sources {
        let x = ask(vip, Some(*s)).await.unwrap();
        assert_eq!(ask(vip, Some(*s)).await.unwrap(), x, "sticky");
        first.push(x);
    }
    for id in ids {
        let n = first.iter().filter(|x| x.as_str() == id).count();
        assert!((15..=45).contains(&n), "{id}: {n} of 120");
    }
    // Remove d: d's sources move, and (Maglev's bound) at most 5 % of the others.
    let mut g2 = g.clone();
    g2.backends.pop();
    g2.listen = vip;
    bal.reload(&[g2]).unwrap();
    let mut strays = 0;
    for (s, before) in sources.iter().zip(&first) {
        let now = ask(vip, Some(*s)).await.unwrap();
        if before != "d" {
            strays += usize::from(&now != before);
        } else {
            assert_ne!(now, "d");
        }
    }
    assert!(
        strays <= sources.len() / 20,
        "{strays} of {} moved though their node stayed",
        sources.len()
    );
    bal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_both_ways() {
    // The backend reads to the client's FIN, then answers with the byte count and closes.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let be = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut all = Vec::new();
                s.read_to_end(&mut all).await.unwrap();
                // The client's half is closed; ours still carries the answer.
                s.write_all(format!("got {}", all.len()).as_bytes())
                    .await
                    .unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
    let (bal, vip) = start(&group("", &[be], &[]));
    for size in [0usize, 1, 300_000, 3_000_000] {
        let mut c = TcpStream::connect(vip).await.unwrap();
        c.write_all(&vec![7u8; size]).await.unwrap();
        c.shutdown().await.unwrap();
        let mut ans = String::new();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_string(&mut ans))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ans, format!("got {size}"));
    }
    // The other way: the backend speaks first and half-closes; the client then answers.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let be2 = l.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        // Every connection (the health check's too) gets the banner and a half-close.
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = s.write_all(b"banner").await;
                let _ = s.shutdown().await;
                let mut all = Vec::new();
                let _ = s.read_to_end(&mut all).await;
                let _ = tx.send(all);
            });
        }
    });
    let mut g = group("", &[be2], &[]);
    g.listen = vip;
    bal.reload(&[g]).unwrap();
    let mut c = TcpStream::connect(vip).await.unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"banner");
    c.write_all(b"reply").await.unwrap();
    c.shutdown().await.unwrap();
    loop {
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        if got == b"reply" {
            break;
        }
    }
    bal.stop().await;
}

/// A backend that reads a PROXY header and answers with the source it names.
async fn proxy_reader() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 512];
                loop {
                    // The health check connects and sends nothing.
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    match proxyproto::parse(&buf) {
                        Parse::Done(_, len) if buf.len() == len => continue,
                        Parse::Done(Header::Proxied { src, dst }, len) => {
                            let rest = String::from_utf8_lossy(&buf[len..]).to_string();
                            let v = if buf.starts_with(b"PROXY") { 1 } else { 2 };
                            let _ = s
                                .write_all(format!("v{v} {src} {dst} {rest}").as_bytes())
                                .await;
                            return;
                        }
                        Parse::Incomplete => continue,
                        other => panic!("{other:?}"),
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v1_and_v2_name_the_real_client() {
    let be = proxy_reader().await;
    for v in ["v1", "v2"] {
        let (bal, vip) = start(&group(&format!("proxy_protocol = \"{v}\""), &[be], &[]));
        let mut c = TcpStream::connect(vip).await.unwrap();
        let me = c.local_addr().unwrap();
        c.write_all(b"data").await.unwrap();
        let mut ans = String::new();
        c.read_to_string(&mut ans).await.unwrap();
        assert_eq!(ans, format!("{v} {me} {vip} data"));
        drop(c);
        bal.stop().await;
    }
    // Accepting a fronting balancer's header: the backend sees the client it names.
    let (bal, vip) = start(&group(
        "accept_proxy = true\nproxy_protocol = \"v1\"",
        &[be],
        &[],
    ));
    let real: SocketAddr = "192.0.2.44:5555".parse().unwrap();
    let mut c = TcpStream::connect(vip).await.unwrap();
    let mut h = proxyproto::v2(real, "198.51.100.1:873".parse().unwrap());
    h.extend_from_slice(b"after");
    // Split mid-header: the balancer waits for the rest.
    c.write_all(&h[..10]).await.unwrap();
    // Real time: a header in two segments.
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.write_all(&h[10..]).await.unwrap();
    let mut ans = String::new();
    c.read_to_string(&mut ans).await.unwrap();
    assert_eq!(ans, "v1 192.0.2.44:5555 198.51.100.1:873 after");
    // No header, or garbage: closed and counted.
    let mut c = TcpStream::connect(vip).await.unwrap();
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut ans = Vec::new();
    // Closed with our request unread: a reset, or an end if the kernel was quick.
    let r = c.read_to_end(&mut ans).await;
    assert!(r.is_err() || ans.is_empty(), "{r:?} {ans:?}");
    assert_eq!(bal.status()[0].bad_proxy_header, 1);
    bal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_source_limit_holds_three_of_five_and_serves_others() {
    let (a, _) = backend("a").await;
    let (bal, vip) = start(&group("max_conn_per_source = 3", &[a], &[]));
    let mut ok = Vec::new();
    let mut refused = 0;
    for _ in 0..5 {
        let mut s = TcpStream::connect(vip).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 8];
        match s.read(&mut buf).await {
            Ok(n) if n > 0 => ok.push(s),
            _ => refused += 1,
        }
    }
    assert_eq!((ok.len(), refused), (3, 2));
    assert_eq!(bal.status()[0].refused_source_conn, 2);
    // Another source is served meanwhile.
    assert_eq!(
        ask(vip, Some("127.0.0.9".parse().unwrap())).await.unwrap(),
        "a"
    );
    drop(ok);
    wait_until("slots back", Duration::from_secs(5), || {
        bal.status()[0].active == 0
    })
    .await;
    assert_eq!(ask(vip, None).await.unwrap(), "a");
    bal.stop().await;

    // The rate: 5 per second from one source, a burst of 5.
    let (bal, vip) = start(&group("max_rate_per_source = 5", &[a], &[]));
    let mut served = 0;
    for _ in 0..8 {
        if ask(vip, None).await.is_ok() {
            served += 1;
        }
    }
    assert!((5..=6).contains(&served), "{served} of 8 within the burst");
    assert!(bal.status()[0].refused_source_rate >= 2);
    bal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_keeps_a_hundred_established_connections() {
    let (a, _) = backend("a").await;
    let (b, _) = backend("b").await;
    let g = group("", &[a], &[]);
    let (bal, vip) = start(&g);
    let mut conns = Vec::new();
    for _ in 0..100 {
        let mut s = TcpStream::connect(vip).await.unwrap();
        s.write_all(b"1").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(s.read(&mut buf).await.unwrap(), 3);
        conns.push(s);
    }
    let mut g2 = group(
        "algorithm = \"least-conn\"\nmax_conn_per_source = 500",
        &[a, b],
        &[],
    );
    g2.listen = vip;
    bal.reload(&[g2]).unwrap();
    for s in &mut conns {
        s.write_all(b"2").await.unwrap();
        let mut buf = [0u8; 8];
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(
            &buf[..n],
            b"a:2",
            "an established connection survives the reload"
        );
    }
    // New connections see the new node (least-conn: b has none).
    assert_eq!(ask(vip, None).await.unwrap(), "b");
    wait_until("the asking one closed", Duration::from_secs(5), || {
        bal.status()[0].active == 100
    })
    .await;
    bal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connects_are_redispatched_and_mark_the_node_down() {
    // A port nobody listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (a, _) = backend("a").await;
    let (bal, vip) = start(&group(
        "health = { interval = \"10s\", timeout = \"1s\", fall = 2, rise = 1 }",
        &[dead, a],
        &[],
    ));
    for _ in 0..10 {
        assert_eq!(
            ask(vip, None).await.unwrap(),
            "a",
            "the client never sees the refusal"
        );
    }
    let st = &bal.status()[0];
    assert!(!st.backends[0].up, "{st:?}");
    assert!(
        st.redispatched >= 1 && st.backends[0].failed_connects <= 2,
        "{st:?}"
    );
    bal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_serve_only_when_every_primary_is_down_and_primaries_come_back_after_rise() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = l.local_addr().unwrap();
    drop(l);
    let (bk, _) = backend("backup").await;
    let (bal, vip) = start(&group(
        "health = { interval = \"100ms\", timeout = \"100ms\", fall = 1, rise = 2 }",
        &[p],
        &[bk],
    ));
    wait_until("primary down", Duration::from_secs(3), || {
        !bal.status()[0].backends[0].up
    })
    .await;
    assert_eq!(ask(vip, None).await.unwrap(), "backup");
    // The primary comes back on its port: after `rise` checks it takes the traffic again.
    let l = TcpListener::bind(p).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0
                        || s.write_all(&[b"primary:", &buf[..n]].concat())
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    let t0 = Instant::now();
    wait_until("primary up", Duration::from_secs(3), || {
        bal.status()[0].backends[0].up
    })
    .await;
    assert!(
        t0.elapsed() >= Duration::from_millis(100),
        "rise = 2 needs two checks"
    );
    assert_eq!(ask(vip, None).await.unwrap(), "primary");
    assert_eq!(bal.status()[0].backends[0].transitions, 2);
    bal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_waits_for_a_slot_then_gives_up() {
    let (a, _) = backend("a").await;
    let (bal, vip) = start(&group("max_conn = 1\nqueue_timeout = \"300ms\"", &[a], &[]));
    let mut first = TcpStream::connect(vip).await.unwrap();
    first.write_all(b"1").await.unwrap();
    let mut buf = [0u8; 8];
    assert!(first.read(&mut buf).await.unwrap() > 0);
    // The second waits; freeing the slot lets it through.
    let waiter = tokio::spawn(ask(vip, None));
    // Real time: the second is queued.
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(first);
    assert_eq!(waiter.await.unwrap().unwrap(), "a");
    wait_until("idle", Duration::from_secs(5), || {
        bal.status()[0].active == 0
    })
    .await;
    // Held past the queue timeout: closed.
    let mut hold = TcpStream::connect(vip).await.unwrap();
    hold.write_all(b"1").await.unwrap();
    assert!(hold.read(&mut buf).await.unwrap() > 0);
    let t0 = Instant::now();
    assert!(ask(vip, None).await.is_err());
    assert!(t0.elapsed() >= Duration::from_millis(250));
    let st = &bal.status()[0];
    assert_eq!((st.queued, st.queue_timeouts), (2, 1), "{st:?}");
    bal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_are_closed_and_counted() {
    let (a, _) = backend("a").await;
    let (bal, vip) = start(&group("idle_timeout = \"200ms\"", &[a], &[]));
    let mut c = TcpStream::connect(vip).await.unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(3), c.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);
    assert!(t0.elapsed() >= Duration::from_millis(180));
    wait_until("counted", Duration::from_secs(1), || {
        bal.status()[0].idle_closed == 1
    })
    .await;
    bal.stop().await;
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_leak_no_descriptor() {
    let (a, _) = backend("a").await;
    let (b, _) = backend("b").await;
    let (bal, vip) = start(&group("", &[a, b], &[]));
    // Warm the pipe pool so that pooled pipes do not count as a leak.
    for _ in 0..64 {
        ask(vip, None).await.unwrap();
    }
    wait_until("idle", Duration::from_secs(5), || {
        bal.status()[0].active == 0
    })
    .await;
    let before = open_fds();
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            while done.fetch_add(1, Ordering::SeqCst) < 10_000 {
                ask(vip, None).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    wait_until("idle", Duration::from_secs(5), || {
        bal.status()[0].active == 0
    })
    .await;
    let after = open_fds();
    assert!(after <= before + 64, "descriptors {before} → {after}");
    assert!(portwarden_net::balance::forward::pooled_pipes() <= 256);
    assert_eq!(bal.status()[0].accepted, 10_064);
    bal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_in_use_and_loops_are_clear_errors() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (a, _) = backend("a").await;
    let mut g = group("", &[a], &[]);
    g.listen = taken.local_addr().unwrap();
    let e = Balancer::start(&[g.clone()], Options::default())
        .err()
        .unwrap();
    assert!(e.in_use().is_some(), "{e}");
    assert!(e.to_string().contains("cannot listen on"), "{e}");
    let mut lp = g.clone();
    lp.listen = "0.0.0.0:48123".parse().unwrap();
    lp.backends[0].addr = "127.0.0.1:48123".parse().unwrap();
    let e = Balancer::start(&[lp], Options::default()).err().unwrap();
    assert!(matches!(e, StartError::Loop { .. }), "{e}");
    // Two groups forwarding to each other through other local addresses than their own.
    let mut x = g.clone();
    x.name = "x".into();
    x.listen = "0.0.0.0:48124".parse().unwrap();
    x.backends[0].addr = "127.0.0.2:48125".parse().unwrap();
    let mut y = x.clone();
    y.name = "y".into();
    y.listen = "0.0.0.0:48125".parse().unwrap();
    y.backends[0].addr = "127.0.0.3:48124".parse().unwrap();
    let e = Balancer::start(&[x, y], Options::default()).err().unwrap();
    assert!(matches!(e, StartError::Loop { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_sessions_by_source_with_idle_expiry() {
    let mut backs = Vec::new();
    for id in ["u1", "u2"] {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        backs.push(s.local_addr().unwrap());
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let out = [id.as_bytes(), b":", &buf[..n]].concat();
                let _ = s.send_to(&out, from).await;
            }
        });
    }
    let (bal, vip) = start(&group(
        "protocol = \"udp\"\nalgorithm = \"source-hash\"\nidle_timeout = \"300ms\"",
        &backs,
        &[],
    ));
    let mut seen = HashMap::new();
    for i in 1..=20u8 {
        let c = UdpSocket::bind(format!("127.0.1.{i}:0")).await.unwrap();
        let mut ids = Vec::new();
        for k in 0..3 {
            c.send_to(format!("q{k}").as_bytes(), vip).await.unwrap();
            let mut buf = [0u8; 64];
            let (n, from) = tokio::time::timeout(Duration::from_secs(3), c.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(from, vip, "answers come from the group's address");
            let t = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(t.ends_with(&format!(":q{k}")), "{t}");
            ids.push(t.split(':').next().unwrap().to_string());
        }
        assert!(ids.iter().all(|x| *x == ids[0]), "one session, one node");
        *seen.entry(ids[0].clone()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(bal.status()[0].accepted, 20);
    wait_until("sessions expire", Duration::from_secs(3), || {
        bal.status()[0].active == 0
    })
    .await;
    assert_eq!(bal.status()[0].idle_closed, 20);
    bal.stop().await;
}

/// A python backend process: `ID:` + echo, and `+PONG ID` to `PING`.
struct PyBackend {
    child: Child,
    addr: SocketAddr,
}

const PY_BACKEND: &str = r#"
import socket, sys, threading
ident = sys.argv[1].encode()
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", 0))
l.listen(1024)
print(l.getsockname()[1], flush=True)
def serve(c):
    try:
        while True:
            d = c.recv(65536)
            if not d:
                break
            if d.startswith(b"PING"):
                c.sendall(b"+PONG " + ident + b"\r\n")
            else:
                c.sendall(ident + b":" + d)
    except OSError:
        pass
    finally:
        c.close()
while True:
    c, _ = l.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

impl PyBackend {
    fn spawn(id: &str) -> PyBackend {
        let mut child = Command::new("python3")
            .args(["-c", PY_BACKEND, id])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().unwrap();
        PyBackend {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: a signal to the child we started, by its PID.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for PyBackend {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Closed-loop clients until `until`: each connection's start and whether it failed.
async fn closed_loop(
    vip: SocketAddr,
    clients: usize,
    until: Instant,
) -> Vec<(Instant, Result<String, String>)> {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while Instant::now() < until && out.len() < 100_000 {
                let t = Instant::now();
                out.push((t, ask(vip, None).await.map_err(|e| e.to_string())));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_fails_only_the_connections_it_held() {
    let mut a = PyBackend::spawn("a");
    let b = PyBackend::spawn("b");
    let (bal, vip) = start(&group(
        "health = { interval = \"250ms\", timeout = \"200ms\", fall = 2, rise = 2, send = \"PING\\r\\n\", expect = \"+PONG\" }",
        &[a.addr, b.addr],
        &[],
    ));
    let until = Instant::now() + Duration::from_millis(2500);
    let run = tokio::spawn(closed_loop(vip, 8, until));
    // Real time: traffic before the kill.
    tokio::time::sleep(Duration::from_millis(800)).await;
    a.signal(libc::SIGKILL);
    a.child.wait().unwrap();
    let killed = Instant::now();
    let all = run.await.unwrap();
    let after: Vec<_> = all
        .iter()
        .filter(|(t, r)| *t > killed && r.is_err())
        .collect();
    let before_fail = all
        .iter()
        .filter(|(t, r)| *t <= killed && r.is_err())
        .count();
    assert!(
        after.is_empty(),
        "{} connections opened after the kill failed: {:?}",
        after.len(),
        after.first()
    );
    assert!(
        before_fail <= 8,
        "only those in flight at the kill may fail: {before_fail}"
    );
    let served_after = all.iter().filter(|(t, r)| *t > killed && r.is_ok()).count();
    assert!(served_after > 50, "{served_after}");
    let st = &bal.status()[0];
    assert!(!st.backends[0].up, "the dead node is down: {st:?}");
    bal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_backend_is_down_within_a_second_and_gets_nothing_after() {
    let a = PyBackend::spawn("a");
    let b = PyBackend::spawn("b");
    let (bal, vip) = start(&group(
        "health = { interval = \"250ms\", timeout = \"200ms\", fall = 2, rise = 2, send = \"PING\\r\\n\", expect = \"+PONG\" }",
        &[a.addr, b.addr],
        &[],
    ));
    wait_until("a checked", Duration::from_secs(3), || {
        bal.status()[0].backends[0].check_ms.is_some()
    })
    .await;
    a.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    wait_until("a down", Duration::from_millis(1500), || {
        !bal.status()[0].backends[0].up
    })
    .await;
    let took = stopped.elapsed();
    assert!(
        took <= Duration::from_millis(1000),
        "marked down after {took:?}"
    );
    let total_a = bal.status()[0].backends[0].total;
    for _ in 0..50 {
        assert_eq!(ask(vip, None).await.unwrap(), "b");
    }
    assert_eq!(
        bal.status()[0].backends[0].total,
        total_a,
        "nothing new sent to the hung node"
    );
    // It comes back after `rise` checks.
    a.signal(libc::SIGCONT);
    wait_until("a up", Duration::from_secs(3), || {
        bal.status()[0].backends[0].up
    })
    .await;
    bal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_whose_expect_never_matches_takes_the_node_out_and_says_why() {
    // Each answers every connection with its banner, then keeps it open.
    async fn banner(text: &'static [u8]) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let _ = s.write_all(text).await;
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }
    let wrong = banner(b"@WRONGD: 31.0\n").await;
    let good = banner(b"@RSYNCD: 31.0\n").await;
    let (bal, vip) = start(&group(
        "health = { interval = \"100ms\", timeout = \"100ms\", fall = 2, rise = 1, expect = \"@RSYNCD\" }",
        &[wrong, good],
        &[],
    ));
    wait_until("the wrong one down", Duration::from_secs(3), || {
        !bal.status()[0].backends[0].up
    })
    .await;
    let st = &bal.status()[0];
    assert!(st.backends[1].up, "{st:?}");
    assert!(
        st.backends[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .ends_with("got `@WRONGD: 31.0\\n`"),
        "{st:?}"
    );
    for _ in 0..5 {
        // The wrong node is never chosen.
        let mut c = TcpStream::connect(vip).await.unwrap();
        let mut buf = [0u8; 14];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"@RSYNCD: 31.0\n");
    }
    bal.stop().await;
}

/// Runs `f` on a thread of its own inside network namespace `ns` (every socket the
/// thread's runtime opens is the namespace's), on a current-thread runtime.
fn in_netns<F: std::future::Future<Output = ()>>(ns: &str, f: impl FnOnce() -> F + Send + 'static) {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let h = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on this thread only, with a namespace descriptor we hold.
        assert_eq!(unsafe { libc::setns(h.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f());
    })
    .join()
    .unwrap();
}

/// A backend behind a DROP firewall: its SYNs vanish, so a connect times out instead of
/// being refused. Clients are redispatched after `connect_timeout` and never see it; the
/// node goes down saying why.
#[test]
fn a_backend_behind_a_drop_firewall_times_out_and_its_clients_are_redispatched() {
    let Some(ns) = portwarden_testkit::Netns::new("bdrop") else {
        return;
    };
    ns.run(&["ip", "link", "set", "lo", "up"]);
    const SILENT: u16 = 27_811;
    let rules = portwarden_testkit::tempdir("bdrop");
    let file = rules.join("drop.nft");
    std::fs::write(
        &file,
        format!(
            "table inet t {{\n chain in {{\n  type filter hook input priority 0;\n  tcp dport {SILENT} drop\n }}\n}}\n"
        ),
    )
    .unwrap();
    ns.run(&["nft", "-f", file.to_str().unwrap()]);
    in_netns(&ns.name, || async {
        let silent: SocketAddr = format!("127.0.0.1:{SILENT}").parse().unwrap();
        let (a, _) = backend("a").await;
        let (bal, vip) = start(&group(
            "connect_timeout = \"300ms\"\nhealth = { interval = \"1h\", timeout = \"200ms\", fall = 3, rise = 1 }",
            &[silent, a],
            &[],
        ));
        // Round-robin sends the first connections to the silent node, until it is down.
        let t0 = Instant::now();
        for _ in 0..6 {
            assert_eq!(
                ask(vip, None).await.unwrap(),
                "a",
                "the client never sees the timeout"
            );
        }
        let st = &bal.status()[0];
        assert!(!st.backends[0].up, "{st:?}");
        let why = st.backends[0].last_error.clone().unwrap_or_default();
        assert!(why.contains("no answer within 300ms"), "{why}");
        assert!(st.redispatched >= 1, "{st:?}");
        assert!(st.backends[0].failed_connects >= 1, "{st:?}");
        // At most the connects before it went down waited (three at most: fall 3, the
        // first check's failure among them), each bounded by the connect timeout.
        assert!(
            t0.elapsed() < Duration::from_millis(300 * 3 + 1500),
            "{:?}",
            t0.elapsed()
        );
        bal.stop().await;
    });
}
