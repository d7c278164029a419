//! `ls` and `who`: the socket inventory.

use super::*;
use std::collections::BTreeSet;
use std::net::{TcpListener, TcpStream, UdpSocket};

fn json_of(args: &[&str]) -> (i32, Value) {
    let o = run(args);
    let v = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", stderr(&o)));
    (code(&o), v)
}

#[test]
fn ls_json_reports_our_sockets_with_pids_and_states() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let lp = l.local_addr().unwrap().port();
    let c = TcpStream::connect(("127.0.0.1", lp)).unwrap();
    let (_s, _) = l.accept().unwrap();
    let cp = c.local_addr().unwrap().port();
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    let up = u.local_addr().unwrap().port();
    let me = std::process::id().to_string();

    let (status, v) = json_of(&["ls", "--json", "--pid", &me]);
    assert_eq!(status, 0);
    let got: BTreeSet<(String, String, u64, u64)> = v["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["local_addr"].as_str().unwrap().starts_with("127."))
        .map(|s| {
            (
                s["protocol"].as_str().unwrap().to_string(),
                s["state"].as_str().unwrap().to_string(),
                s["local_port"].as_u64().unwrap(),
                s["remote_port"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String, u64, u64)> = [
        ("tcp", "listen", lp, 0),
        ("tcp", "established", cp, lp),
        ("tcp", "established", lp, cp),
        ("udp", "unconn", up, 0),
    ]
    .into_iter()
    .map(|(a, b, c, d)| (a.to_string(), b.to_string(), u64::from(c), u64::from(d)))
    .collect();
    assert_eq!(got, want);
    for s in v["sockets"].as_array().unwrap() {
        let pids: Vec<u64> = s["owners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["pid"].as_u64().unwrap())
            .collect();
        assert!(pids.contains(&u64::from(std::process::id())), "{s}");
    }

    // Listeners only, TCP only, by port.
    let port = lp.to_string();
    let (_, v) = json_of(&["ls", "--json", "-l", "-t", "--port", &port]);
    let states: Vec<&str> = v["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["listen"]);

    // Summary: the listener's row counts its one accepted connection.
    let (_, v) = json_of(&["ls", "--json", "--summary", "--port", &port]);
    assert_eq!(v["ports"][0]["port"], lp);
    assert_eq!(v["ports"][0]["states"]["established"], 1);
    drop((l, c, u));
}

#[test]
fn who_finds_the_listener_owner_and_exits_1_on_a_free_port() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let (status, v) = json_of(&["who", &format!("{port}/tcp"), "--json"]);
    assert_eq!(status, 0);
    let owners = &v["sockets"][0]["owners"];
    assert_eq!(owners[0]["pid"], std::process::id());
    let o = run(&["who", &port]);
    assert_eq!(code(&o), 0);
    assert!(String::from_utf8_lossy(&o.stdout).contains("LISTEN"));

    // A port we held and released is free (nothing else binds loopback ports here).
    let free = {
        let t = TcpListener::bind("127.0.0.1:0").unwrap();
        t.local_addr().unwrap().port()
    };
    let o = run(&["who", &format!("{free}/tcp")]);
    assert_eq!(code(&o), 1, "{}", String::from_utf8_lossy(&o.stdout));
    drop(l);
}

#[test]
fn r3_bad_inventory_input_exits_2_with_one_message() {
    for (args, msg) in [
        (&["who", "0"][..], "port 0 is out of range 1-65535"),
        (&["who", "70000"], "port 70000 is out of range 1-65535"),
        (&["who", "80/sctp"], "unknown protocol `sctp`"),
        (&["ls", "--port", "5-3"], "range 5-3 is reversed"),
        (
            &["ls", "--state", "sleepy"],
            "unknown socket state `sleepy`",
        ),
    ] {
        let o = run(args);
        assert_eq!(code(&o), 2, "{args:?}");
        let e = stderr(&o);
        assert!(e.contains(msg), "{args:?}: {e}");
        assert_eq!(e.lines().count(), 1, "{args:?}: one message: {e}");
    }
}

#[test]
fn ls_into_a_closed_pipe_exits_0_quietly() {
    let _l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut child = bin()
        .args(["ls", "-p"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(!e.contains("error"), "{e}");
}

#[test]
fn r3_proc_net_fallback_reports_the_same_sockets_with_a_warning() {
    use std::net::TcpListener;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let me = std::process::id().to_string();
    let netlink = run(&["ls", "--json", "--pid", &me]);
    let fallback = bin()
        .args(["ls", "--json", "--pid", &me])
        .env("PORTWARDEN_FORCE_PROCNET", "1")
        .output()
        .unwrap();
    assert_eq!(code(&fallback), 0);
    assert!(
        stderr(&fallback).contains("reading /proc/net instead"),
        "{}",
        stderr(&fallback)
    );
    let key = |o: &Output| {
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let mut k: Vec<String> = v["sockets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                format!(
                    "{} {} {}:{}",
                    s["protocol"], s["state"], s["local_addr"], s["local_port"]
                )
            })
            .collect();
        k.sort();
        k
    };
    assert_eq!(key(&netlink), key(&fallback));
    assert!(
        key(&fallback)
            .iter()
            .any(|k| k.ends_with(&format!(":{port}")))
    );
}
