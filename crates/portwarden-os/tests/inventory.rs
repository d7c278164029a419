//! The socket reader against sockets this test opens on loopback, cross-checked with
//! `ss -tanup` from iproute2 reading the same kernel.

use std::collections::BTreeSet;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::Command;

use portwarden_core::Protocol;
use portwarden_core::facts::SocketState;
use portwarden_os::{Query, Walk, attach_owners, sockets};

/// (protocol, state, local port, remote port)
type Row = (String, String, u16, u16);

struct Opened {
    _keep: Vec<Box<dyn std::any::Any>>,
    ports: BTreeSet<u16>,
    expected: BTreeSet<Row>,
}

fn row(p: &str, s: &str, l: u16, r: u16) -> Row {
    (p.to_string(), s.to_string(), l, r)
}

fn open_known_sockets() -> Opened {
    let mut keep: Vec<Box<dyn std::any::Any>> = Vec::new();
    let mut expected = BTreeSet::new();
    let mut ports = BTreeSet::new();

    let l4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let l4p = l4.local_addr().unwrap().port();
    expected.insert(row("tcp", "LISTEN", l4p, 0));
    ports.insert(l4p);

    let client = TcpStream::connect(("127.0.0.1", l4p)).unwrap();
    let (server, _) = l4.accept().unwrap();
    let cp = client.local_addr().unwrap().port();
    expected.insert(row("tcp", "ESTAB", cp, l4p));
    expected.insert(row("tcp", "ESTAB", l4p, cp));
    ports.insert(cp);

    let u4 = UdpSocket::bind("127.0.0.1:0").unwrap();
    let u4p = u4.local_addr().unwrap().port();
    expected.insert(row("udp", "UNCONN", u4p, 0));
    ports.insert(u4p);

    let uc = UdpSocket::bind("127.0.0.1:0").unwrap();
    uc.connect(("127.0.0.1", u4p)).unwrap();
    let ucp = uc.local_addr().unwrap().port();
    expected.insert(row("udp", "ESTAB", ucp, u4p));
    ports.insert(ucp);

    match (TcpListener::bind("[::1]:0"), UdpSocket::bind("[::1]:0")) {
        (Ok(l6), Ok(u6)) => {
            let l6p = l6.local_addr().unwrap().port();
            let u6p = u6.local_addr().unwrap().port();
            expected.insert(row("tcp", "LISTEN", l6p, 0));
            expected.insert(row("udp", "UNCONN", u6p, 0));
            ports.insert(l6p);
            ports.insert(u6p);
            keep.push(Box::new(l6));
            keep.push(Box::new(u6));
        }
        _ => eprintln!("SKIP: IPv6 loopback is unavailable; checking IPv4 sockets only"),
    }
    keep.push(Box::new(l4));
    keep.push(Box::new(client));
    keep.push(Box::new(server));
    keep.push(Box::new(u4));
    keep.push(Box::new(uc));
    Opened {
        _keep: keep,
        ports,
        expected,
    }
}

fn ss_rows(ports: &BTreeSet<u16>) -> BTreeSet<(Row, Option<u32>)> {
    let out = Command::new("ss")
        .args(["-tanupH"])
        .output()
        .expect("ss from iproute2 is installed");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows = BTreeSet::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 {
            continue;
        }
        let port = |ep: &str| -> u16 {
            ep.rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0)
        };
        let local = port(f[4]);
        if !ports.contains(&local) || !(f[4].starts_with("127.") || f[4].starts_with("[::1]")) {
            continue;
        }
        let pid = line
            .split("pid=")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok());
        rows.insert((row(f[0], f[1], local, port(f[5])), pid));
    }
    rows
}

#[test]
fn reports_exactly_the_sockets_we_opened_and_agrees_with_ss() {
    let opened = open_known_sockets();
    let mut inv = sockets(&Query::default()).unwrap();
    assert!(inv.warnings.is_empty(), "{:?}", inv.warnings);
    attach_owners(&mut inv, Walk::FirstOwner).unwrap();
    let me = std::process::id();
    // Our sockets are the ones our process holds; TIME-WAIT leftovers of other tests may
    // reuse the same port numbers, but nobody holds those.
    let ours: Vec<_> = inv
        .sockets
        .iter()
        .filter(|s| {
            s.owners
                .as_ref()
                .is_some_and(|o| o.iter().any(|o| o.pid == me))
        })
        .collect();
    let got: BTreeSet<Row> = ours
        .iter()
        .map(|s| {
            (
                s.protocol.to_string(),
                s.state.to_string(),
                s.local_port,
                s.remote_port,
            )
        })
        .collect();
    assert_eq!(got, opened.expected);
    assert_eq!(ours.len(), opened.expected.len(), "no duplicates");
    // Every socket we opened that the kernel lists on our ports is attributed to us.
    let unattributed: Vec<_> = inv
        .sockets
        .iter()
        .filter(|s| opened.ports.contains(&s.local_port) && s.inode != 0)
        .filter(|s| {
            !s.owners
                .as_ref()
                .is_some_and(|o| o.iter().any(|o| o.pid == me))
        })
        .filter(|s| s.local_addr.is_loopback())
        .collect();
    assert!(unattributed.is_empty(), "{unattributed:?}");

    let ss = ss_rows(&opened.ports);
    let ss_ours: BTreeSet<Row> = ss
        .iter()
        .filter(|(_, pid)| *pid == Some(me))
        .map(|(r, _)| r.clone())
        .collect();
    assert_eq!(ss_ours, got, "portwarden and ss disagree");
}

#[test]
fn listener_query_is_filtered_by_the_kernel() {
    let opened = open_known_sockets();
    let q = Query {
        protocols: vec![Protocol::Tcp],
        states: Some(vec![SocketState::Listen]),
        ..Query::default()
    };
    let inv = sockets(&q).unwrap();
    assert!(inv.sockets.iter().all(|s| s.state == SocketState::Listen));
    let mine: BTreeSet<u16> = inv
        .sockets
        .iter()
        .filter(|s| opened.ports.contains(&s.local_port) && s.local_addr.is_loopback())
        .map(|s| s.local_port)
        .collect();
    let want: BTreeSet<u16> = opened
        .expected
        .iter()
        .filter(|r| r.1 == "LISTEN")
        .map(|r| r.2)
        .collect();
    assert_eq!(mine, want);
    // A listener's send queue is its backlog limit.
    assert!(inv.sockets.iter().all(|s| s.send_q > 0));
}
