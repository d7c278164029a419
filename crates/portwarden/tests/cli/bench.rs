//! `portwarden bench` as operators run it: a server with `--one-off`, a client's JSON in
//! iperf3's names against its schema, the verdict against the policy's `[transfer]`
//! (`--fail-below`, exit 1), and bad input (exit 2 before anything runs).

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::Duration;

use super::{assert_schema, bin, code, run, stderr, tempdir};

struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `bench server` on a free loopback port; waits for its "listening" line.
fn server(extra: &[&str]) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = bin()
        .args([
            "bench",
            "server",
            "--bind",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening on"), "{line}");
    Server(child, port)
}

#[test]
fn a_client_run_is_iperf3_shaped_json_and_the_one_off_server_exits() {
    let s = server(&["--one-off"]);
    let port = s.1.to_string();
    let o = run(&[
        "bench",
        "client",
        "127.0.0.1",
        "-p",
        &port,
        "-n",
        "20M",
        "-P",
        "2",
        "-R",
        "--json",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = assert_schema("bench-client", &o.stdout);
    let n = 20u64 << 20;
    assert_eq!(v["end"]["sum_sent"]["bytes"], n);
    assert_eq!(v["end"]["sum_received"]["bytes"], n);
    let streams = v["end"]["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 2);
    let total: u64 = streams
        .iter()
        .map(|s| s["receiver"]["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(total, n);
    assert_eq!(v["start"]["test_start"]["reverse"], 1);
    // One test, then the server exits by itself.
    let mut child = s;
    let t0 = std::time::Instant::now();
    loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            assert!(st.success(), "{st:?}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the one-off server still runs"
        );
        // Real time: the server process ends on its own.
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_verdict_judges_the_policy_link_and_fail_below_exits_one() {
    let s = server(&[]);
    let port = s.1.to_string();
    let dir = tempdir("bench-verdict");
    let p = dir.join("policy.toml");
    // A link no loopback reaches, and one it always does.
    for (bw, want) in [("1000Gbit", 1), ("1Mbit", 0)] {
        std::fs::write(
            &p,
            format!("version = 1\n\n[transfer]\nbandwidth = \"{bw}\"\nrtt = \"1ms\"\n"),
        )
        .unwrap();
        let o = run(&[
            "--policy",
            p.to_str().unwrap(),
            "--state-dir",
            dir.join("s").to_str().unwrap(),
            "bench",
            "client",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "1",
            "--fail-below",
            "0.5",
            "--json",
        ]);
        assert_eq!(code(&o), want, "{bw}: {}", stderr(&o));
        let v = assert_schema("bench-client", &o.stdout);
        assert_eq!(v["verdict"]["ok"], want == 0, "{bw}");
        assert!(v["verdict"]["fraction_of_link"].as_f64().unwrap() > 0.0);
    }
    // The human form says where it stands.
    let o = run(&[
        "--policy",
        p.to_str().unwrap(),
        "--state-dir",
        dir.join("s").to_str().unwrap(),
        "bench",
        "client",
        "127.0.0.1",
        "-p",
        &port,
        "-t",
        "1",
        "-i",
        "0",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("receiver") && text.contains("of the policy's 1.00 Mbit/s link"),
        "{text}"
    );
}

#[test]
fn bad_input_is_exit_two_with_a_reason() {
    let s = server(&[]);
    let port = s.1.to_string();
    for (args, says) in [
        (vec!["-P", "0"], "0 is not in 1..=128"),
        (vec!["-t", "0"], "0 is not in 1..=86400"),
        (vec!["-n", "0"], "at least one byte"),
        (vec!["-l", "32M"], "16 MiB"),
        (vec!["--fail-below", "0.8"], "no [transfer]"),
        (vec!["--fail-below", "7"], "a fraction is over 0"),
        (
            vec!["-C", "no-such-algorithm", "-t", "1", "-w", "10"],
            "-w 10",
        ),
    ] {
        let mut a = vec!["bench", "client", "127.0.0.1", "-p", &port];
        a.extend(args.iter().copied());
        let o = run(&a);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
    // Nobody listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let o = run(&["bench", "client", "127.0.0.1", "-p", &dead, "-t", "1"]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("cannot reach 127.0.0.1"),
        "{}",
        stderr(&o)
    );
    // A server that refuses: a test longer than it allows.
    let short = server(&["--max-duration", "2s"]);
    let o = run(&[
        "bench",
        "client",
        "127.0.0.1",
        "-p",
        &short.1.to_string(),
        "-t",
        "30",
    ]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("refused the test's parameters"),
        "{}",
        stderr(&o)
    );
}
