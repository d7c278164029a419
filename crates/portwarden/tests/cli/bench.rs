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
        (vec!["-b", "5M"], "--udp"),
        (vec!["-u", "-l", "70000"], "12 to 65507"),
        (vec!["-u", "-b", "fast"], "fast"),
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

/// A tokio echo server on a free loopback port, in this (the test's) process.
fn echo() -> (u16, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let l = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = l.local_addr().unwrap().port();
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
    (port, rt)
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_storm_holds_ten_thousand_connections_in_two_processes_and_lets_them_all_go() {
    let (port, _rt) = echo();
    let before = fds();
    let dir = tempdir("bench-storm-hold");
    let p = dir.join("policy.toml");
    std::fs::write(
        &p,
        format!(
            "version = 1\n[[service]]\nname = \"rsync-mirror\"\nport = {port}\nzone = \"localhost\"\nmax_conn = 10000\n"
        ),
    )
    .unwrap();
    let o = run(&[
        "--policy",
        p.to_str().unwrap(),
        "--state-dir",
        dir.join("s").to_str().unwrap(),
        "bench",
        "storm",
        &format!("127.0.0.1:{port}"),
        "--hold",
        "10000",
        "--hold-for",
        "1s",
        "--processes",
        "2",
        "--send",
        "hi\\n",
        "--echo",
        "--json",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = assert_schema("bench-storm", &o.stdout);
    let h = &v["hold"];
    assert_eq!(h["established"], 10_000, "{v}");
    assert_eq!(h["released"], 10_000);
    assert_eq!(h["closed_by_peer"], 0);
    assert_eq!(v["errors"]["total"], 0);
    assert_eq!(v["processes"], 2);
    assert_eq!(h["connect_us"]["count"], 10_000);
    // The server is this process: found, and its memory read while it held them.
    assert_eq!(v["server"]["pid"], std::process::id());
    assert_eq!(v["verdict"]["ok"], true);
    assert_eq!(v["verdict"]["service"], "rsync-mirror");
    assert_eq!(v["verdict"]["max_conn"], 10_000);
    // Every end closed: the server's descriptors are back where they were.
    let t0 = std::time::Instant::now();
    while fds() != before && t0.elapsed() < Duration::from_secs(10) {
        // Real time: the server's tasks see their peers go.
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(fds(), before);
}

#[test]
fn a_storm_churns_and_judges_max_conn() {
    let (port, _rt) = echo();
    let target = format!("127.0.0.1:{port}");
    let o = run(&[
        "bench", "storm", &target, "--churn", "-n", "2000", "-c", "32", "--send", "ping", "--echo",
        "--json",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = assert_schema("bench-storm", &o.stdout);
    assert_eq!(v["churn"]["completed"], 2000);
    assert_eq!(v["churn"]["latency_us"]["count"], 2000);
    assert!(v["churn"]["latency_us"]["p99"].as_u64().unwrap() > 0);
    // A hold below the service's max_conn does not prove it: exit 1, and why.
    let dir = tempdir("bench-storm-verdict");
    let p = dir.join("policy.toml");
    std::fs::write(
        &p,
        format!(
            "version = 1\n[[service]]\nname = \"rsync-mirror\"\nport = {port}\nzone = \"localhost\"\nmax_conn = 500\n"
        ),
    )
    .unwrap();
    let o = run(&[
        "--policy",
        p.to_str().unwrap(),
        "--state-dir",
        dir.join("s").to_str().unwrap(),
        "bench",
        "storm",
        &target,
        "--hold",
        "100",
        "--hold-for",
        "100ms",
    ]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("below its max_conn 500"), "{text}");
}

#[test]
fn bad_storms_are_exit_two_before_anything_runs() {
    let (port, _rt) = echo();
    let target = format!("127.0.0.1:{port}");
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("127.0.0.1:{dead}");
    // The descriptors one process may hold (its hard limit, less what it keeps).
    let hard: u64 = std::fs::read_to_string("/proc/self/limits")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4)?.parse().ok())
        .unwrap();
    let procs = format!("give --processes {}", 50_000u64.div_ceil(hard - 100));
    for (args, says) in [
        (
            vec![
                target.as_str(),
                "--hold",
                "50000",
                "--sources",
                "127.0.0.1-127.0.0.2",
            ],
            procs.as_str(),
        ),
        (
            vec![target.as_str(), "--hold", "30000", "--processes", "2"],
            "needs 2 source addresses",
        ),
        (vec![target.as_str(), "--hold", "0"], "0 is not in"),
        (vec![target.as_str()], "--hold"),
        (
            vec![target.as_str(), "--hold", "5", "--churn"],
            "cannot be used with",
        ),
        (vec![target.as_str(), "--churn", "--rate=-1"], "--rate"),
        (vec![target.as_str(), "--churn", "--echo"], "give --send"),
        (
            vec![target.as_str(), "--churn", "--send", "\\q"],
            "unknown escape",
        ),
        (vec!["127.0.0.1", "--churn"], "HOST:PORT"),
        (vec![dead.as_str(), "--churn"], "cannot reach"),
        (
            vec![
                target.as_str(),
                "--churn",
                "--sources",
                "127.0.0.9-127.0.0.1",
            ],
            "goes up",
        ),
    ] {
        let mut a = vec!["bench", "storm"];
        a.extend(args.iter().copied());
        let o = run(&a);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
}

/// Waits (bounded) for a child to exit by itself.
fn exits_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < limit {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        // Real time: the process handling its signal.
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn sigterm_stops_the_server_and_a_storm_with_its_workers() {
    let mut s = server(&[]);
    // SAFETY: kill has no memory preconditions; the pid is our own child's.
    unsafe { libc::kill(s.0.id() as i32, libc::SIGTERM) };
    let st = exits_within(&mut s.0, Duration::from_secs(3)).expect("the server still runs");
    assert!(st.success(), "{st:?}");
    let (port, _rt) = echo();
    let before = fds();
    let mut storm = bin()
        .args([
            "bench",
            "storm",
            &format!("127.0.0.1:{port}"),
            "--churn",
            "-t",
            "60s",
        ])
        .args([
            "-c",
            "8",
            "--processes",
            "2",
            "--send",
            "x",
            "--echo",
            "--json",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Real time: the storm under way in its two workers.
    std::thread::sleep(Duration::from_millis(700));
    // SAFETY: as above.
    unsafe { libc::kill(storm.id() as i32, libc::SIGTERM) };
    let st = exits_within(&mut storm, Duration::from_secs(5)).expect("the storm still runs");
    assert!(st.success(), "{st:?}");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut storm.stdout.take().unwrap(), &mut out).unwrap();
    let v = assert_schema("bench-storm", out.as_bytes());
    assert!(v["churn"]["completed"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["processes"], 2);
    // No worker is left behind: nothing connects to the echo server any more.
    let t0 = std::time::Instant::now();
    while fds() != before && t0.elapsed() < Duration::from_secs(5) {
        // Real time: the server's tasks see their peers go.
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(fds(), before);
}

#[test]
fn a_udp_test_reports_jitter_and_loss_in_iperf3_names_and_a_rate_above_the_link_is_refused() {
    let s = server(&[]);
    let port = s.1.to_string();
    let o = run(&[
        "bench",
        "client",
        "127.0.0.1",
        "-p",
        &port,
        "-u",
        "-b",
        "20M",
        "-t",
        "1",
        "-R",
        "--json",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = assert_schema("bench-client", &o.stdout);
    assert_eq!(v["start"]["test_start"]["protocol"], "UDP");
    let sum = &v["end"]["sum"];
    assert_eq!(sum["lost_packets"], 0, "{sum}");
    assert!(sum["packets"].as_u64().unwrap() > 1000, "{sum}");
    assert!(sum["jitter_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(v["end"]["sum_received"]["packets"], sum["packets"]);
    // A policy whose link is slower than the rate asked: UDP would measure only drops.
    let dir = tempdir("bench-udp-link");
    let p = dir.join("policy.toml");
    std::fs::write(
        &p,
        "version = 1\n\n[transfer]\nbandwidth = \"10Mbit\"\nrtt = \"1ms\"\n",
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
        "-u",
        "-b",
        "20M",
    ]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("above the policy's [transfer] bandwidth"),
        "{}",
        stderr(&o)
    );
}
