//! `portwarden balance` as operators run it: two workers sharing the port, status summed
//! over them, SIGHUP reloads, SIGTERM drains, every step in the ledger; the errors a
//! listen address in use, a missing group or a dead leader give.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{assert_schema, bin, code, run, stderr, tempdir};

/// A threaded echo backend answering `ID:` + what it read; lives until the test ends.
fn backend(id: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0
                        || s.write_all(&[id.as_bytes(), b":", &buf[..n]].concat())
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ask(vip: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&vip, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"hi")?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n])
        .split(':')
        .next()
        .unwrap_or("")
        .to_string())
}

struct Running {
    child: Child,
    state: String,
}

impl Running {
    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of the child this test spawned.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    fn status(&self) -> (i32, Value) {
        let o = run(&["--state-dir", &self.state, "--json", "balance", "status"]);
        (code(&o), assert_schema("balance-status", &o.stdout))
    }

    fn wait_status(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let t0 = Instant::now();
        loop {
            let (_, v) = self.status();
            if f(&v) {
                return v;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "{what}: {v:#}");
            // Real time: the workers write their status each second.
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn policy(port: u16, backends: &[SocketAddr]) -> String {
    let list: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "version = 1\n[[balance]]\nname = \"mirror\"\nlisten = \"127.0.0.1:{port}\"\nbackends = [{}]\ndrain_timeout = \"2s\"\nhealth = {{ interval = \"200ms\", timeout = \"200ms\", fall = 1, rise = 1 }}\n",
        list.join(", ")
    )
}

fn spawn(dir: &std::path::Path, extra: &[&str]) -> Running {
    let state = dir.join("state").display().to_string();
    let p = dir.join("p.toml").display().to_string();
    let child = bin()
        .args(["--state-dir", &state, "--policy", &p, "--json", "balance"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Running { child, state }
}

#[test]
fn two_workers_share_the_port_reload_on_sighup_and_drain_on_sigterm() {
    let dir = tempdir("bal-cli");
    let (a, b) = (backend("a"), backend("b"));
    let port = free_port();
    std::fs::write(dir.join("p.toml"), policy(port, &[a])).unwrap();
    let r = spawn(&dir, &["--workers", "2"]);
    let v = r.wait_status("two workers", |v| {
        v["workers"]
            .as_array()
            .is_some_and(|w| w.iter().filter(|w| w["alive"] == true).count() == 2)
    });
    assert_eq!(v["running"], true);
    // A second balancer: refused on the same state directory (its lock), and on another
    // one too (the port is held, though ours set SO_REUSEPORT).
    let p = dir.join("p.toml").display().to_string();
    let o = run(&["--state-dir", &r.state, "--policy", &p, "balance"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("another `portwarden balance` runs"),
        "{}",
        stderr(&o)
    );
    let other = dir.join("other").display().to_string();
    let o = run(&[
        "--state-dir",
        &other,
        "--policy",
        &p,
        "balance",
        "--workers",
        "2",
    ]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "127.0.0.1:{port}/tcp is already held by portwarden (pid {})",
            r.child.id()
        )),
        "{}",
        stderr(&o)
    );
    let vip: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..40 {
        assert_eq!(ask(vip).unwrap(), "a");
    }
    let v = r.wait_status("counted", |v| v["groups"][0]["accepted"] == 40);
    // Both workers took some (the kernel spreads SO_REUSEPORT accepts by hash).
    let per: Vec<u64> = v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["groups"][0]["accepted"].as_u64().unwrap())
        .collect();
    assert_eq!(per.iter().sum::<u64>(), 40, "{per:?}");
    // Reload: b joins, established connections stay.
    let mut held = TcpStream::connect(vip).unwrap();
    held.write_all(b"1").unwrap();
    let mut buf = [0u8; 16];
    assert!(held.read(&mut buf).unwrap() > 0);
    std::fs::write(dir.join("p.toml"), policy(port, &[a, b])).unwrap();
    r.signal(libc::SIGHUP);
    r.wait_status("b in every worker", |v| {
        v["groups"][0]["backends"]
            .as_array()
            .is_some_and(|b| b.len() == 2)
            && v["workers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|w| w["groups"][0]["backends"].as_array().unwrap().len() == 2)
    });
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        seen.insert(ask(vip).unwrap());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec!["a", "b"]);
    held.write_all(b"2").unwrap();
    let n = held.read(&mut buf).unwrap();
    assert_eq!(
        &buf[..n],
        b"a:2",
        "the connection from before the reload still works"
    );
    drop(held);
    // SIGTERM: both drain and exit; the last document sums them.
    r.signal(libc::SIGTERM);
    let mut r = r;
    let out = r.child.wait_with_output_bounded();
    assert_eq!(out.0, 0, "{}", out.2);
    let doc = assert_schema("balance-run", &out.1);
    assert_eq!(doc["reloads"], 1);
    assert!(
        doc["groups"][0]["accepted"].as_u64().unwrap() >= 61,
        "{doc:#}"
    );
    let (c, v) = r.status();
    assert_eq!((c, v["running"].clone()), (1, Value::Bool(false)), "{v:#}");
    // The ledger: start, reload, stop (worker 0 only writes).
    let o = run(&["--state-dir", &r.state, "--json", "log"]);
    let log: Value = serde_json::from_slice(&o.stdout).unwrap();
    let actions: Vec<&str> = log["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        vec!["balance.start", "balance.reload", "balance.stop"],
        "{log:#}"
    );
    let o = run(&["--state-dir", &r.state, "log", "verify"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

trait Bounded {
    fn wait_with_output_bounded(&mut self) -> (i32, Vec<u8>, String);
}

impl Bounded for Child {
    /// Waits at most 20 s for the exit, then reads what it printed.
    fn wait_with_output_bounded(&mut self) -> (i32, Vec<u8>, String) {
        let t0 = Instant::now();
        let st = loop {
            if let Some(st) = self.try_wait().unwrap() {
                break st;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "did not exit");
            // Real time: the drain.
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut out = Vec::new();
        self.stdout.take().unwrap().read_to_end(&mut out).unwrap();
        let mut err = String::new();
        self.stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (st.code().unwrap_or(-1), out, err)
    }
}

#[test]
fn a_backend_going_down_is_in_the_ledger_and_status_exits_one() {
    let dir = tempdir("bal-down");
    let a = backend("a");
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let port = free_port();
    std::fs::write(dir.join("p.toml"), policy(port, &[a, dead])).unwrap();
    let r = spawn(&dir, &[]);
    let v = r.wait_status("dead one down", |v| {
        v["groups"][0]["backends"][1]["up"] == false
    });
    assert_eq!(v["groups"][0]["backends"][0]["up"], true);
    let (c, _) = r.status();
    assert_eq!(c, 0, "a group with a backend up is serving");
    r.signal(libc::SIGTERM);
    let mut r = r;
    let (c, _, err) = r.child.wait_with_output_bounded();
    assert_eq!(c, 0, "{err}");
    assert!(err.contains(&format!("backend {dead} is down")), "{err}");
    let o = run(&["--state-dir", &r.state, "--json", "log"]);
    let log: Value = serde_json::from_slice(&o.stdout).unwrap();
    let down = log["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["action"] == "balance.backend-down")
        .expect("recorded");
    assert_eq!(down["subject"], format!("mirror/{dead}"));
    assert!(
        down["reason"].as_str().unwrap().contains("refused"),
        "{down}"
    );
}

#[test]
fn a_listen_address_in_use_names_its_holder_and_bad_requests_exit_two() {
    let dir = tempdir("bal-bad");
    let a = backend("a");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    std::fs::write(dir.join("p.toml"), policy(port, &[a])).unwrap();
    let state = dir.join("state").display().to_string();
    let p = dir.join("p.toml").display().to_string();
    let o = run(&["--state-dir", &state, "--policy", &p, "balance"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let me = std::fs::read_to_string("/proc/self/comm").unwrap();
    assert!(
        stderr(&o).contains(&format!(
            "127.0.0.1:{port}/tcp is already held by {} (pid {})",
            me.trim(),
            std::process::id()
        )),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "--state-dir",
        &state,
        "--policy",
        &p,
        "balance",
        "--group",
        "nope",
    ]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("no balance group `nope` (it has: mirror)"),
        "{}",
        stderr(&o)
    );
    let o = run(&["--state-dir", &state, "balance"]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("no [[balance]] groups"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "--state-dir",
        &state,
        "--policy",
        &p,
        "balance",
        "--workers",
        "0",
    ]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let o = run(&["--state-dir", &state, "balance", "status"]);
    assert_eq!(code(&o), 1);
    assert!(String::from_utf8_lossy(&o.stdout).contains("no balancer is running"));
}

#[test]
fn workers_stop_when_their_leader_is_killed() {
    let dir = tempdir("bal-kill");
    let a = backend("a");
    let port = free_port();
    std::fs::write(dir.join("p.toml"), policy(port, &[a])).unwrap();
    let mut r = spawn(&dir, &["--workers", "2"]);
    let v = r.wait_status("two workers", |v| {
        v["workers"]
            .as_array()
            .is_some_and(|w| w.iter().filter(|w| w["alive"] == true).count() == 2)
    });
    let worker = v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["index"] == 1)
        .unwrap()["pid"]
        .as_i64()
        .unwrap() as i32;
    r.signal(libc::SIGKILL);
    r.child.wait().unwrap();
    let t0 = Instant::now();
    // Gone, or a zombie waiting for whoever inherited it to reap it.
    let running = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
            st.rsplit(") ")
                .next()
                .is_some_and(|rest| !rest.starts_with('Z'))
        })
    };
    while running(worker) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "worker {worker} outlived its leader"
        );
        // Real time: the worker notices within a second, then drains.
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn serve_runs_the_groups_with_metrics_per_backend_and_reloads_them_on_sighup() {
    let (a, b) = (backend("a"), backend("b"));
    let port = free_port();
    let d = super::serve::Daemon::start_with("bal-serve", &policy(port, &[a]), &["--balance"]);
    let vip: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..5 {
        assert_eq!(ask(vip).unwrap(), "a");
    }
    let (st, body) = d.req("GET", "/api/v1/balance", Some(&d.read), None);
    assert_eq!(st, 200, "{body}");
    let v = assert_schema("balance-status", body.as_bytes());
    assert_eq!(v["groups"][0]["accepted"], 5);
    let (st, text) = d.req("GET", "/metrics", Some(&d.read), None);
    assert_eq!(st, 200);
    for want in [
        format!("portwarden_balance_backend_up{{group=\"mirror\",backend=\"{a}\"}} 1"),
        format!("portwarden_balance_backend_connections{{group=\"mirror\",backend=\"{a}\"}} 5"),
        "portwarden_balance_refused_connections{group=\"mirror\",reason=\"no-backend\"} 0"
            .to_string(),
    ] {
        assert!(text.contains(&want), "{want} not in\n{text}");
    }
    std::fs::write(d.dir.join("policy.toml"), policy(port, &[a, b])).unwrap();
    d.signal(libc::SIGHUP);
    let t0 = Instant::now();
    loop {
        let (_, body) = d.req("GET", "/api/v1/balance", Some(&d.read), None);
        let v: Value = serde_json::from_str(&body).unwrap();
        if v["groups"][0]["backends"]
            .as_array()
            .is_some_and(|x| x.len() == 2)
        {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{v:#}");
        // Real time: the reload runs on the daemon's blocking thread.
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen: std::collections::BTreeSet<String> = (0..10).map(|_| ask(vip).unwrap()).collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[test]
fn serve_without_balance_groups_answers_404() {
    let d = super::serve::Daemon::start_with("bal-none", "version = 1\n", &["--balance"]);
    let (st, body) = d.req("GET", "/api/v1/balance", Some(&d.read), None);
    assert_eq!(st, 404, "{body}");
}
