//! `scan`.

use super::*;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;

/// TCP listeners on 0.0.0.0/[::] or `addr` per `ss`: what a scan of `addr` may also see.
fn other_listeners(addr: &str) -> BTreeSet<u16> {
    let o = Command::new("ss").args(["-tlnH"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(String::from))
        .filter(|local| {
            local.starts_with("0.0.0.0:")
                || local.starts_with("*:")
                || local.starts_with("[::]:")
                || local.starts_with(&format!("{addr}:"))
        })
        .filter_map(|local| local.rsplit(':').next().and_then(|p| p.parse().ok()))
        .collect()
}

/// Listeners on `addr`: every third sends a banner, the rest stay silent.
fn listeners(addr: &str, n: usize) -> (Vec<TcpListener>, BTreeSet<u16>) {
    let mut ls = Vec::new();
    let mut ports = BTreeSet::new();
    for i in 0..n {
        let l = TcpListener::bind((addr, 0)).unwrap();
        ports.insert(l.local_addr().unwrap().port());
        if i % 3 == 0 {
            let c = l.try_clone().unwrap();
            std::thread::spawn(move || {
                for mut s in c.incoming().take(64).flatten() {
                    let _ = s.write_all(b"SSH-2.0-fake\r\n");
                }
            });
        }
        ls.push(l);
    }
    (ls, ports)
}

fn open_ports(o: &Output) -> BTreeSet<u16> {
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["state"] == "open")
        .map(|p| p["port"].as_u64().unwrap() as u16)
        .collect()
}

#[test]
fn r5_full_range_scan_finds_exactly_the_listeners() {
    // 127.0.0.5: other tests' listeners live on 127.0.0.1; wildcard ones are allowed.
    let (_ls, mine) = listeners("127.0.0.5", 40);
    for round in 0..3 {
        let before = other_listeners("127.0.0.5");
        let o = run(&["scan", "127.0.0.5", "-p-", "--json"]);
        let after = other_listeners("127.0.0.5");
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let found = open_ports(&o);
        let missed: Vec<&u16> = mine.difference(&found).collect();
        assert!(missed.is_empty(), "round {round}: missed {missed:?}");
        let extra: Vec<&u16> = found
            .difference(&mine)
            .filter(|p| !before.contains(p) && !after.contains(p))
            .collect();
        assert!(
            extra.is_empty(),
            "round {round}: phantom or false open ports {extra:?}"
        );
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["ports_scanned"], 65535);
    }
}

#[test]
fn r5_ipv6_loopback_self_connects_are_never_open() {
    if TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIP: no IPv6 loopback");
        return;
    }
    let l = TcpListener::bind("[::1]:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let o = run(&["scan", "::1", "-p", "32768-60999", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let found = open_ports(&o);
    let others: BTreeSet<u16> = Command::new("ss")
        .args(["-tlnH"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| {
                    l.split_whitespace()
                        .nth(3)
                        .and_then(|a| a.rsplit(':').next()?.parse().ok())
                })
                .collect()
        })
        .unwrap_or_default();
    for p in &found {
        assert!(
            *p == port || others.contains(p),
            "port {p} reported open but nothing listens ({v})"
        );
    }
    if (32768..=60999).contains(&port) {
        assert!(found.contains(&port));
    }
}

/// With nmap's database (installed by .ci/run): its hard match names the service over
/// the built-in guess (a `220` greeting is not always SMTP), the TLS question is asked
/// in that service's protocol, and a port that closes at once is `tcpwrapped`.
#[test]
fn r_nmaps_hard_match_names_the_service_over_a_guess() {
    let serve = |greeting: &'static [u8]| {
        let l = TcpListener::bind("127.0.0.8:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming().take(200) {
                let Ok(mut s) = s else { continue };
                std::thread::spawn(move || {
                    let _ = s.write_all(greeting);
                    if !greeting.is_empty() {
                        // Real time: a fake server holding its connection open while the scanner reads.
                        std::thread::sleep(std::time::Duration::from_millis(300));
                    }
                });
            }
        });
        port
    };
    let ftp = serve(b"220-FileZilla Server version 0.9.60 beta\r\n");
    let wrapped = serve(b"");
    let o = run(&[
        "scan",
        "127.0.0.8",
        "-p",
        &format!("{ftp},{wrapped}"),
        "-sV",
        "--json",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let find = |port: u16| {
        v["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["port"] == port)
            .unwrap()
            .clone()
    };
    let f = find(ftp);
    assert_eq!(f["service"], "ftp", "{f}");
    assert!(f["product"].as_str().unwrap().contains("FileZilla"), "{f}");
    let w = find(wrapped);
    assert_eq!(w["service"], "tcpwrapped", "{w}");
}

/// A probe database that cannot be used is a warning; the built-in probes carry on
/// and the exit code is the scan's. A file with bad lines names each by
/// file:line:col, and its good lines still match.
#[test]
fn r_unusable_probe_databases_warn_and_fall_back() {
    let l = TcpListener::bind("127.0.0.7:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    std::thread::spawn(move || {
        for s in l.incoming().take(64) {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n");
                // Real time: a fake server holding its connection open while the scanner reads.
                std::thread::sleep(std::time::Duration::from_millis(200));
            });
        }
    });
    let dir = tempdir("probesdb");
    let scan = |db: &str| {
        let o = run(&[
            "scan",
            "127.0.0.7",
            "-p",
            &port,
            "-sV",
            "--json",
            "--probes-db",
            db,
        ]);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        (o, v)
    };
    let missing = dir.join("missing");
    let empty = dir.join("empty");
    std::fs::write(&empty, "# nothing\n").unwrap();
    for (db, says) in [
        (
            missing.display().to_string(),
            "cannot read the probes database",
        ),
        (dir.display().to_string(), "cannot read the probes database"),
        (empty.display().to_string(), "no usable probes"),
    ] {
        let (o, v) = scan(&db);
        assert_eq!(code(&o), 0, "{db}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{db}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("using the built-in probes"),
            "{}",
            stderr(&o)
        );
        assert_eq!(v["ports"][0]["service"], "ssh", "{db}: {v}");
        assert_eq!(v["ports"][0]["product"], "OpenSSH", "{db}: {v}");
    }
    let bad = dir.join("bad");
    std::fs::write(
            &bad,
            "Probe TCP NULL q||\nmatch x m|(unclosed| p/x/\nmatch ssh m|^SSH-([\\d.]+)-OpenSSH_(\\S+)| p/TestSSH/ v/$2/\nmatch broken m|unclosed\nwhat is this\n",
        )
        .unwrap();
    let (o, v) = scan(bad.to_str().unwrap());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("2 lines of the probes database skipped")
            && err.contains(&format!("{}:4:14:", bad.display())),
        "{err}"
    );
    // A pattern PCRE2 refuses is named too, once it was needed.
    assert!(
        err.contains("1 pattern of the probes database refused by PCRE2")
            && err.contains(&format!("{}:2:", bad.display())),
        "{err}"
    );
    // The good line matched: the database's product, over the built-in one.
    assert_eq!(v["ports"][0]["product"], "TestSSH", "{v}");
    assert_eq!(v["ports"][0]["version"], "9.2p1", "{v}");
}

#[test]
fn r5_service_detection_names_fake_servers() {
    let addr = "127.0.0.6";
    let mut specs: Vec<(u16, &str)> = Vec::new();
    let serve = |reply: &'static [u8], wait_first: bool| -> u16 {
        let l = TcpListener::bind((addr, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming().take(32) {
                let Ok(mut s) = s else { continue };
                std::thread::spawn(move || {
                    s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                        .ok();
                    if wait_first {
                        let mut b = [0u8; 256];
                        if !matches!(s.read(&mut b), Ok(n) if n > 0) {
                            return;
                        }
                        if reply == b"N" && !b.starts_with(&[0, 0, 0, 8, 4, 210, 22, 47]) {
                            return;
                        }
                        if reply.starts_with(b"+PONG") && !b.starts_with(b"PING") {
                            return;
                        }
                        if reply.starts_with(b"HTTP") && !b.starts_with(b"HEAD") {
                            return;
                        }
                    }
                    let _ = s.write_all(reply);
                    // Real time: a fake server holding its connection open while the scanner reads.
                    std::thread::sleep(std::time::Duration::from_millis(300));
                });
            }
        });
        port
    };
    specs.push((serve(b"SSH-2.0-OpenSSH_9.2\r\n", false), "ssh"));
    specs.push((
        serve(b"HTTP/1.0 200 OK\r\nServer: nginx/1.22.1\r\n\r\n", true),
        "http",
    ));
    specs.push((serve(b"+PONG\r\n", true), "redis"));
    specs.push((serve(b"N", true), "postgresql"));
    let silent = TcpListener::bind((addr, 0)).unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let list: Vec<String> = specs
        .iter()
        .map(|(p, _)| p.to_string())
        .chain([silent_port.to_string()])
        .collect();
    let t0 = std::time::Instant::now();
    let o = run(&["scan", addr, "-s", "-p", &list.join(","), "--json"]);
    let took = t0.elapsed();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    for (port, name) in &specs {
        let p = v["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["port"] == *port)
            .unwrap();
        assert_eq!(p["service"], *name, "{p}");
        assert_eq!(p["method"], "probed");
        // Product and version where the service names them (nmap -sV's fields).
        let want = match *name {
            "ssh" => Some(("OpenSSH", Some("9.2"))),
            "http" => Some(("nginx", Some("1.22.1"))),
            "redis" => Some(("Redis key-value store", None)),
            "postgresql" => Some(("PostgreSQL DB", None)),
            _ => None,
        };
        if let Some((product, version)) = want {
            assert_eq!(p["product"], product, "{p}");
            assert_eq!(p["version"].as_str(), version, "{p}");
        }
    }
    let s = v["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == silent_port)
        .unwrap();
    assert_eq!(s["state"], "open");
    assert!(
        took < std::time::Duration::from_secs(3),
        "service detection took {took:?}"
    );
    drop(silent);
}

#[test]
fn r5_diff_grepable_and_xml() {
    let dir = tempdir("scandiff");
    let (_a, first) = listeners("127.0.0.7", 2);
    let list = |extra: &BTreeSet<u16>| -> String {
        first
            .iter()
            .chain(extra)
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let old = dir.join("old.json");
    let o = run(&["scan", "127.0.0.7", "-p", &list(&BTreeSet::new()), "--json"]);
    std::fs::write(&old, &o.stdout).unwrap();
    let (_b, more) = listeners("127.0.0.7", 1);
    let g = dir.join("scan.gnmap");
    let x = dir.join("scan.xml");
    let o = run(&[
        "scan",
        "127.0.0.7",
        "-p",
        &list(&more),
        "--diff",
        old.to_str().unwrap(),
        "-oG",
        g.to_str().unwrap(),
        "-oX",
        x.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let added = *more.iter().next().unwrap();
    assert!(out.contains(&format!("+ 127.0.0.7 {added}/tcp")), "{out}");
    let grep = std::fs::read_to_string(&g).unwrap();
    assert!(grep.contains(&format!("{added}/open/tcp//")), "{grep}");
    let xml = std::fs::read_to_string(&x).unwrap();
    assert!(xml.contains(&format!("portid=\"{added}\"")), "{xml}");
    // Well-formed, as tools that read nmap XML need.
    let st = Command::new("python3")
            .args(["-c", "import sys,xml.etree.ElementTree as E; r=E.parse(sys.argv[1]).getroot(); assert r.tag=='nmaprun'; print(len(r.findall('.//port')))", x.to_str().unwrap()])
            .output()
            .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&st.stdout).trim(), "3");
}

#[test]
fn r5_bad_scan_input_exits_2() {
    for (args, msg) in [
        (
            &["scan", "127.0.0.1", "-p", "0"][..],
            "port 0 is out of range",
        ),
        (
            &["scan", "127.0.0.1", "-p", "70000"],
            "port 70000 is out of range",
        ),
        (&["scan", "127.0.0.1", "-p", "10-5"], "reversed"),
        (&["scan", "10.0.0.0/8"], "more than --max-hosts 256"),
        (
            &["scan", "127.0.0.1", "--timeout", "soon"],
            "invalid value 'soon' for '--timeout <DURATION>'",
        ),
    ] {
        let o = run(args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(msg), "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    }
    // Nothing open: a negative answer.
    let free = {
        let t = TcpListener::bind("127.0.0.8:0").unwrap();
        t.local_addr().unwrap().port()
    };
    let o = run(&["scan", "127.0.0.8", "-p", &free.to_string()]);
    assert_eq!(code(&o), 1);
}

#[test]
fn r5_udp_scan_tells_open_from_closed() {
    use std::net::UdpSocket;
    let srv = UdpSocket::bind("127.0.0.9:0").unwrap();
    let open = srv.local_addr().unwrap().port();
    let closed = {
        let t = UdpSocket::bind("127.0.0.9:0").unwrap();
        t.local_addr().unwrap().port()
    };
    std::thread::spawn(move || {
        let mut b = [0u8; 512];
        for _ in 0..8 {
            if let Ok((_, from)) = srv.recv_from(&mut b) {
                let _ = srv.send_to(b"pong", from);
            }
        }
    });
    let o = run(&[
        "scan",
        "127.0.0.9",
        "-u",
        "-p",
        &format!("{open},{closed}"),
        "--json",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let ports = v["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1, "{v}");
    assert_eq!(ports[0]["port"], open);
    assert_eq!(ports[0]["state"], "open");
    assert_eq!(v["closed"], 1);
}

#[test]
fn r5_a_tiny_descriptor_limit_is_back_pressure_not_a_panic() {
    use std::os::unix::process::CommandExt;
    let l = std::net::TcpListener::bind("127.0.0.10:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let mut c = bin();
    c.args(["scan", "127.0.0.10", "-p", "1-20000", "--json"]);
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        c.pre_exec(|| {
            let r = libc::rlimit {
                rlim_cur: 24,
                rlim_max: 24,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = c.output().unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let open: Vec<u64> = v["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    if port <= 20000 {
        assert!(open.contains(&u64::from(port)), "{v}");
    }
    assert_eq!(v["ports_scanned"], 20000);
}
